"""Ctrl-C during a sweep: one line saying how many cells are saved, exit 130, ``--resume`` works.

In-process, a cell kind that raises KeyboardInterrupt stops the sweep at a known cell. From a
terminal, Ctrl-C signals the whole process group: the subprocess tests start ``mcroute sweep``
in a new session and send SIGINT to its group once a part is on disk, locally and with a local
Dask cluster (whose worker processes are in that group too and must print nothing).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import xarray as xr

import mcroute as mr
from mcroute.cli import main
from mcroute.sweeps import core as S
from mcroute.sweeps.run import SweepInterrupted

#: In-process sweeps of the "interrupting" kind stop at the cell x == STOP_AT: the cells before
#: it (SAVED of them, one part each) are on disk.
XS = [1, 2, 3, 4, 5, 6]
STOP_AT = 4
SAVED = 3
N_CELLS = len(XS)


def _interrupting_kind(how):
    """A kind whose cell x = STOP_AT raises KeyboardInterrupt (as Ctrl-C does), or a
    SystemError caused by one (what numba raises when Ctrl-C arrives inside a kernel)."""
    def run(p, *, rng, n_trials, ci_prob, quantiles):
        if p["x"] == STOP_AT:
            if how == "numba":
                try:
                    raise KeyboardInterrupt
                except KeyboardInterrupt as exc:
                    raise SystemError("CPUDispatcher returned a result with an exception "
                                      "set") from exc
            raise KeyboardInterrupt
        return xr.Dataset({"y": ((), float(p["x"]), {"units": "1"})})

    return S.CellKind("interrupting", (S.Param("x", "int", 1),), run)


def _finishing_kind():
    def run(p, *, rng, n_trials, ci_prob, quantiles):
        return xr.Dataset({"y": ((), float(p["x"]), {"units": "1"})})

    return S.CellKind("interrupting", (S.Param("x", "int", 1),), run)


SPEC = {"kind": "interrupting", "seed": 1, "n_trials": 2, "cells_per_task": 1,
        "axes": {"x": XS}}


@pytest.fixture
def interrupting_kind():
    def register(kind):
        S.register_cell_kind(kind)

    yield register
    S.CELL_KINDS.pop("interrupting", None)


@pytest.mark.parametrize("how", ["python", "numba"])
def test_interrupt_keeps_the_saved_cells_and_resume_continues(tmp_path, interrupting_kind,
                                                              how):
    interrupting_kind(_interrupting_kind(how))
    out = tmp_path / "o.nc"
    with pytest.raises(SweepInterrupted) as err:
        mr.sweep(SPEC, out, progress=False)
    exc = err.value
    assert isinstance(exc, KeyboardInterrupt)  # callers that catch Ctrl-C still do
    assert (exc.saved, exc.total, exc.folder) == (SAVED, N_CELLS, tmp_path / "o.nc.parts")
    manifest = json.loads((exc.folder / "manifest.json").read_text())
    assert sum(e["n_cells"] for e in manifest["parts"].values()) == SAVED
    assert f"{SAVED} of {N_CELLS} cells saved in {exc.folder}" in str(exc)
    assert "--resume" in str(exc) and not out.exists()
    interrupting_kind(_finishing_kind())
    ds = mr.sweep(SPEC, out, resume=True, progress=False)
    assert ds["y"].values.tolist() == [float(x) for x in XS]
    assert not exc.folder.exists()


def test_interrupt_before_any_part_or_without_output_keeps_nothing(tmp_path,
                                                                    interrupting_kind):
    interrupting_kind(_interrupting_kind("python"))
    out = tmp_path / "o.nc"
    with pytest.raises(SweepInterrupted) as err:
        mr.sweep({**SPEC, "axes": {"x": [STOP_AT, 5]}}, out, progress=False)
    assert err.value.saved == 0 and "nothing to resume" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # the parts folder it created is gone
    with pytest.raises(SweepInterrupted) as err:
        mr.sweep(SPEC, progress=False)
    assert err.value.folder is None and "none kept" in str(err.value)


def test_cli_interrupt_prints_one_line_and_exits_130(tmp_path, interrupting_kind, capsys):
    interrupting_kind(_interrupting_kind("numba"))
    spec = tmp_path / "s.toml"
    spec.write_text('kind = "interrupting"\nseed = 1\ncells_per_task = 1\n'
                    f'[axes]\nx = {XS}\n')
    out = tmp_path / "o.nc"
    assert main(["sweep", str(spec), "--output", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"mcroute sweep: interrupted: {SAVED} of {N_CELLS} cells saved in "
                   f"{out}.parts; run the same command with --resume (resume=True) to continue"]


# -- a real SIGINT to the process group, as Ctrl-C in a terminal sends ---------------------------
SLOW_SPEC = """\
kind = "simulate"
seed = 5
n_trials = 400
cells_per_task = 1
[axes]
routing = ["uniform", "zipf:1.2", "lognormal:1.0", "zipf:0.8"]
batch_size = [256, 512, 1024, 2048]
[fixed]
n_experts = 256
top_k = 8
n_layers = 4
"""


def _recorded_cells(parts) -> int:
    """Cells of the parts the manifest records (a part is saved once it is recorded there)."""
    try:
        manifest = json.loads((parts / "manifest.json").read_text())
    except (OSError, ValueError):  # not written yet
        return 0
    return sum(e["n_cells"] for e in manifest["parts"].values())


def _ctrl_c(tmp_path, *extra, timeout=120):
    """Start a sweep in its own process group, SIGINT the group once a part is written.

    Returns (exit status, stderr lines, cells in the manifest, output path).
    """
    spec = tmp_path / "slow.toml"
    spec.write_text(SLOW_SPEC)
    out = tmp_path / "slow.nc"
    parts = tmp_path / "slow.nc.parts"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "mcroute", "sweep", str(spec), "--output",
                             str(out), "--quiet", *extra], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _recorded_cells(parts):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        # every process of the group (Dask workers included) is gone within a few seconds
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("processes of the sweep are still running after Ctrl-C")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.returncode, err.strip().splitlines(), _recorded_cells(parts), out


def _check_interrupted(status, err, saved, out):
    assert status == 130, err
    assert len(err) == 1, "\n".join(err)  # one line: no traceback, no worker log
    m = re.fullmatch(r"mcroute sweep: interrupted: (\d+) of 16 cells saved in (.+); run the "
                     r"same command with --resume \(resume=True\) to continue", err[0])
    assert m, err[0]
    assert int(m.group(1)) == saved and 1 <= saved < 16
    assert m.group(2) == f"{out}.parts" and not out.exists()


def test_ctrl_c_on_a_local_sweep(tmp_path):
    """(That --resume then continues is tested in-process above.)"""
    status, err, saved, out = _ctrl_c(tmp_path)
    _check_interrupted(status, err, saved, out)


@pytest.mark.slow
def test_ctrl_c_on_a_dask_sweep(tmp_path, port_8787_taken):
    """--workers 2: the workers ignore the signal, this process cancels them; one line."""
    pytest.importorskip("distributed", reason="the 'distributed' extra is not installed")
    status, err, saved, out = _ctrl_c(tmp_path, "--workers", "2")
    _check_interrupted(status, err, saved, out)

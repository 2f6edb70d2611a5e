"""Sweep engine: spec validation, reproducibility per cell, the part store, resume, Dask."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import mcroute as mr
from mcroute._routing.spec import normalize_routing_text, parse_routing
from mcroute.cli import main
from mcroute.sweeps import core as S
from mcroute.sweeps import kinds, params, parts, run
from mcroute.sweeps import spec as SP

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("sweep_*.toml"))

SIM = {
    "kind": "simulate", "seed": 11, "n_trials": 48,
    "axes": {"routing": ["uniform", "zipf:1.2"], "batch_size": [1, 8, 64]},
    "fixed": {"n_experts": 32, "top_k": 4, "n_layers": 2, "n_devices": 4},
}


def _without_time(ds):
    ds = ds.copy()
    ds.attrs.pop("created_at", None)
    return ds


def _write(tmp_path, text, name="spec.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


# -- spec validation ---------------------------------------------------------------------------
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load(path):
    spec = mr.load_sweep_spec(path)
    assert spec.n_cells >= 2 and spec.kind in S.CELL_KINDS


def test_spec_canonical_values():
    spec = mr.load_sweep_spec({
        "kind": "throughput", "seed": 0,
        "axes": {"context": ["4k", 8192], "routing": ["Zipf:1.20", "uniform"]},
        "fixed": {"model": "mixtral-8x7b", "hardware": "h100-sxm", "n_gpus": 2}})
    assert spec.axes == (("context", (4096, 8192)), ("routing", ("zipf:1.2", "uniform")))
    assert spec.shape == (2, 2) and spec.n_cells == 4
    assert spec.cell_params(3) == {"context": 8192, "routing": "uniform", "hardware": "h100-sxm",
                                   "model": "mixtral-8x7b", "n_gpus": 2}


@pytest.mark.parametrize("text, words", [
    ('kind = "simulate"\nseed = 1\ncolour = 3\n', ["unknown key 'colour'"]),
    ('kind = "simulate"\nseed = 1\n[axes]\nn_expert = [4]\n[fixed]\ntop_k = 1\nbatch_size = 2\n',
     ["unknown key 'n_expert' in [axes]", "n_experts"]),
    ('kind = "simulate"\nseed = 1\n[fixed]\nn_experts = 4\ntop_k = 1\nbatch_size = 2\nfoo = 1\n',
     ["unknown key 'foo' in [fixed]"]),
    ('kind = "simulate"\n[fixed]\nn_experts = 4\n', ["'seed' is required"]),
    ('seed = 1\n', ["'kind' is required"]),
    ('kind = "nope"\nseed = 1\n', ["kind must be one of", "'nope'"]),
    ('kind = "simulate"\nseed = 1\n[fixed]\nn_experts = 4\ntop_k = 1\n',
     ["'batch_size'", "required"]),
    ('kind = "simulate"\nseed = 1\n[axes]\nbatch_size = [1, 2]\n[fixed]\nbatch_size = 1\n'
     'n_experts = 4\ntop_k = 1\n', ["'batch_size' is in both"]),
    ('kind = "simulate"\nseed = 1\n[axes]\nbatch_size = [1, 1]\n[fixed]\nn_experts = 4\n'
     'top_k = 1\n', ["[axes] batch_size", "repeated"]),
    ('kind = "simulate"\nseed = 1\n[axes]\nbatch_size = []\n[fixed]\nn_experts = 4\ntop_k = 1\n',
     ["[axes] batch_size", "non-empty list"]),
    ('kind = "simulate"\nseed = 1\n[axes]\nbatch_size = [0]\n[fixed]\nn_experts = 4\n'
     'top_k = 1\n', ["batch_size[0]", "in [1, "]),
    ('kind = "simulate"\nseed = 1\n[fixed]\nn_experts = [4, 8]\ntop_k = 1\nbatch_size = 1\n',
     ["[fixed] n_experts", "lists go in [axes]"]),
    ('kind = "simulate"\nseed = 1\n[axes]\nrouting = ["zipf"]\n[fixed]\nn_experts = 4\n'
     'top_k = 1\nbatch_size = 1\n', ["routing[0]", "zipf:ALPHA"]),
    ('kind = "simulate"\nseed = -1\n', ["seed must be an integer"]),
    ('kind = "simulate"\nseed = 1\nn_trials = 1\n', ["n_trials must be an integer >= 2"]),
    ('kind = "throughput"\nseed = 1\n[axes]\nbatch_size = ["max", 4]\n[fixed]\nmodel = "x"\n'
     'hardware = "h200"\nn_gpus = 1\ncontext = 8\n', ["'max' is only allowed in [fixed]"]),
    ('kind = "simulate"\nseed = 1\n[axes\n', ["malformed TOML", "line"]),
])
def test_bad_specs_name_file_and_key(tmp_path, text, words):
    path = _write(tmp_path, text)
    with pytest.raises(mr.McrouteError) as err:
        mr.load_sweep_spec(path)
    msg = str(err.value)
    assert str(path) in msg
    for w in words:
        assert w in msg


def test_bad_cell_is_reported_before_any_work(tmp_path):
    spec = {**SIM, "axes": {"top_k": [2, 64]}, "fixed": {"n_experts": 32, "batch_size": 4}}
    with pytest.raises(mr.McrouteError, match=r"cell top_k=64: top_k \(64\) must be <= n_exp"):
        mr.sweep(spec, tmp_path / "out.nc", progress=False)
    assert not (tmp_path / "out.nc.parts").exists()


def test_deployment_params_are_deployments_declarations():
    """The sweep's Deployment parameters are Deployment's own declarations, every option but
    those each kind declares itself (model, hardware, n_gpus) and expert_placement."""
    from mcroute._cost.deployment import DEPLOYMENT_OPTIONS

    declared = {o.name: o for o in DEPLOYMENT_OPTIONS}
    assert set(kinds.DEPLOYMENT_KEYS) == set(declared) - {"model", "hardware", "n_gpus",
                                                          "expert_placement"}
    for p in kinds.DEPLOYMENT_PARAMS:
        assert p is declared[p.name], p.name
    for kind in ("throughput", "qs"):
        for name in ("model", "hardware", "n_gpus"):
            p = S.CELL_KINDS[kind].param(name)
            assert (p.type, p.required, p.minimum, p.maximum) == (
                declared[name].type, True, declared[name].minimum, declared[name].maximum)


def _bounds():
    """(option, value, Deployment accepts it) at each end of every declared numeric range."""
    from mcroute._cost.deployment import DEPLOYMENT_OPTIONS

    out = []
    for o in DEPLOYMENT_OPTIONS:
        if o.type not in ("int", "float", "tokens") or o.name == "n_gpus":
            continue
        kind = float if o.type == "float" else int
        step = kind(0.25 if o.type == "float" else 1)
        if o.minimum is not None:
            out.append((o.name, kind(o.minimum), not o.open_min))
            out.append((o.name, kind(o.minimum) - step, False))
        if o.maximum is not None:
            out.append((o.name, kind(o.maximum) + step, False))
            if kind is float:  # (integer maxima such as MAX_GPUS break cross-field rules)
                out.append((o.name, o.maximum, True))
    assert any(name == "hbm_fraction" and v == 0 and not ok for name, v, ok in out)
    return out


@pytest.mark.parametrize("name, value, ok", _bounds())
def test_sweep_accepts_what_deployment_accepts(name, value, ok):
    """Range rules agree (issue 12: the sweep used to accept hbm_fraction = 0, which Deployment
    refuses): at each end of a declared range, the spec and Deployment say the same."""
    spec = {"kind": "throughput", "seed": 0, "axes": {name: [value]},
            "fixed": {"model": "mixtral-8x7b", "hardware": "h100-sxm", "n_gpus": 8,
                      "context": 4096}}
    try:
        mr.Deployment("mixtral-8x7b", "h100-sxm", 8, **{name: value})
        deployment_ok = True
    except mr.McrouteError as exc:
        deployment_ok = False
        assert name in str(exc)  # refused for this option, not for another reason
    assert deployment_ok == ok, name
    if ok:
        mr.load_sweep_spec(spec)
    else:
        assert not deployment_ok
        with pytest.raises(mr.McrouteError, match=rf"\[axes\] {name}\[0\]: {name} must be"):
            mr.load_sweep_spec(spec)


def test_param_defaults_are_the_functions_defaults():
    """The defaults a sweep documents are those the cell functions really apply."""
    import inspect

    funcs = {"simulate": [mr.simulate], "throughput": [mr.decode_throughput, mr.Deployment],
             "qs": [mr.qs_analysis, mr.Deployment]}
    doc = (ROOT / "docs" / "sweeps.md").read_text()
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 4 and cells[1].startswith("`"):
            rows.setdefault(cells[1].strip("`"), set()).add(cells[3])
    checked = 0
    for kind in S.CELL_KINDS.values():
        for p in kind.params:
            if p.default is None or p.required or p.type == "routing":
                continue  # routing: the string is turned into the function's routing object
            for f in funcs[kind.name]:
                params = inspect.signature(f).parameters
                if p.name in params:
                    assert params[p.name].default == p.default, (kind.name, p.name)
                    checked += 1
            shown = (str(p.default).lower() if isinstance(p.default, bool) else
                     f'`"{p.default}"`' if isinstance(p.default, str) else str(p.default))
            assert shown in rows[p.name], (kind.name, p.name, shown, rows[p.name])
    assert checked >= 30


def test_docs_list_every_key():
    doc = (ROOT / "docs" / "sweeps.md").read_text()
    for key in SP.TOP_LEVEL_KEYS:
        assert f"`{key}`" in doc or f"`[{key}]`" in doc, key
    for kind in S.CELL_KINDS.values():
        assert f"Kind `{kind.name}`" in doc
        for p in kind.params:
            assert f"| `{p.name}` |" in doc, (kind.name, p.name)


# -- seeds and reproducibility -------------------------------------------------------------------
def test_cell_seed_properties():
    a = S.cell_seed(5, {"routing": "uniform", "batch_size": 8})
    assert a == S.cell_seed(5, {"batch_size": 8, "routing": "uniform"})
    assert 0 <= a < 2**63
    seeds = {S.cell_seed(5, {"batch_size": b}) for b in range(200)}
    assert len(seeds) == 200
    assert S.cell_seed(5, {"q": 2.0}) != S.cell_seed(5, {"q": "2"})
    # Pinned: the derivation is part of the file format of resumed sweeps (and of every
    # published number); changing it must be deliberate.
    assert S.cell_seed(0, {}) == S.cell_seed(0, {})
    assert S.cell_seed(1, {"batch_size": 8}) == 2532181437422014942


@pytest.fixture(scope="module")
def sim_full():
    return mr.sweep(SIM, progress=False)


def test_result_layout_and_units(sim_full):
    ds = sim_full
    assert list(ds["active_experts_mean"].dims) == ["routing", "batch_size", "layer"]
    assert ds["routing"].values.tolist() == ["uniform", "zipf:1.2"]
    assert ds["batch_size"].attrs["units"] == "tokens"
    assert "trial" not in ds.dims and "active_experts" not in ds
    for name, var in ds.variables.items():
        assert "units" in var.attrs, name
    for dim in ds.dims:
        assert dim in ds.coords
    spec = json.loads(ds.attrs["sweep_spec"])
    assert spec["seed"] == 11 and ds.attrs["seed"] == 11 and ds.attrs["n_trials"] == 48
    assert ds.attrs["n_layers"] == 2  # a cell attr common to every cell


def test_each_cell_is_reproducible_alone(sim_full):
    """The cell function called with the cell's seed gives the sweep's numbers exactly."""
    for routing, b in [("zipf:1.2", 64), ("uniform", 8)]:
        seed = int(sim_full["cell_seed"].sel(routing=routing, batch_size=b))
        assert seed == S.cell_seed(11, {"routing": routing, "batch_size": b})
        r = mr.Zipf(32, 4, 1.2) if routing != "uniform" else mr.Uniform(32, 4)
        direct = mr.simulate(r, b, 48, n_layers=2, n_devices=4, rng=seed)
        cell = sim_full.sel(routing=routing, batch_size=b)
        for name in ("active_experts_mean", "max_device_load_ci", "device_imbalance_q",
                     "hot_expert"):
            np.testing.assert_array_equal(cell[name].values, direct[name].values)


def test_subset_and_axis_order_reproduce_full_run(sim_full):
    sub = {**SIM, "axes": {"batch_size": [64, 1], "routing": ["zipf:1.2"]}}
    part = mr.sweep(sub, progress=False)
    expect = sim_full.sel(batch_size=[64, 1], routing=["zipf:1.2"])
    for name in ("active_experts_mean", "max_expert_load_ci", "cell_seed"):
        xr.testing.assert_identical(part[name], expect[name].transpose(*part[name].dims))


def test_keep_trials_and_ragged_dims():
    spec = {"kind": "simulate", "seed": 3, "n_trials": 20, "keep_trials": True,
            "axes": {"n_experts": [8, 16]}, "fixed": {"top_k": 2, "batch_size": [4, 32]}}
    ds = mr.sweep(spec, progress=False)
    assert ds["active_experts"].sizes == {"n_experts": 2, "batch_size": 2, "trial": 20,
                                          "layer": 1}
    # hot_expert has a rank dim of E: the E = 8 cell is padded with NaN beyond rank 7.
    assert ds.sizes["rank"] == 16
    he = ds["hot_expert"].sel(n_experts=8)
    assert np.isnan(he.sel(rank=slice(8, None))).all()
    seed = int(ds["cell_seed"].sel(n_experts=8))
    direct = mr.simulate(mr.Uniform(8, 2), [4, 32], 20, rng=seed)
    np.testing.assert_array_equal(he.sel(rank=slice(0, 7)).values, direct["hot_expert"].values)
    np.testing.assert_array_equal(ds["active_experts"].sel(n_experts=8).values,
                                  direct["active_experts"].values)


def test_throughput_and_qs_kinds_match_direct_calls():
    thr = {"kind": "throughput", "seed": 4, "n_trials": 16,
           "axes": {"n_gpus": [1, 2], "routing": ["uniform", "zipf:1.0"]},
           "fixed": {"model": "mixtral-8x7b", "hardware": "h100-sxm", "context": ["4k", "32k"]}}
    ds = mr.sweep(thr, progress=False)
    assert not ds["feasible"].sel(n_gpus=1).any()  # 8x7B in bf16 does not fit one H100
    seed = int(ds["cell_seed"].sel(n_gpus=2, routing="zipf:1.0"))
    dep = mr.Deployment("mixtral-8x7b", "h100-sxm", 2)
    direct = mr.decode_throughput(dep, [4096, 32768], routing=mr.Zipf(8, 2, 1.0), n_trials=16,
                                  rng=seed)
    np.testing.assert_array_equal(ds["throughput_mean"].sel(n_gpus=2, routing="zipf:1.0"),
                                  direct["throughput_mean"])

    qs = {"kind": "qs", "seed": 4, "n_trials": 16, "axes": {"q": [2.0, 4.0]},
          "fixed": {"model": "mixtral-8x7b", "hardware": "h100-sxm", "n_gpus": 2,
                    "context": ["4k", "32k"]}}
    ds = mr.sweep(qs, progress=False)
    seed = int(ds["cell_seed"].sel(q=4.0))
    direct = mr.qs_analysis("mixtral-8x7b", "h100-sxm", 2, 4.0, [4096, 32768], n_trials=16,
                            rng=seed)
    np.testing.assert_array_equal(ds["penalty_mean"].sel(q=4.0), direct["penalty_mean"])
    assert ds["penalty_mean"].dims == ("q", "context")


def test_cells_without_routing_use_the_model_cards_routing_as_the_api_does():
    """One set of defaults (issue 12): a throughput cell for DeepSeek-V3 with no routing key
    routes group-limited, like ``decode_throughput`` and the CLI, and gives the same numbers."""
    spec = {"kind": "throughput", "seed": 1, "n_trials": 4,
            "fixed": {"model": "deepseek-v3", "hardware": "h200", "n_gpus": 8, "batch_size": 8,
                      "context": "4k"}}
    ds = mr.sweep(spec, progress=False)
    assert json.loads(ds.attrs["routing"])["kind"] == "group_limited"
    direct = mr.decode_throughput(mr.Deployment("deepseek-v3", "h200", 8), 4096, 8, n_trials=4,
                                  rng=int(ds["cell_seed"]))
    np.testing.assert_array_equal(ds["throughput_mean"], direct["throughput_mean"])


def test_register_a_kind_is_one_function():
    def run(p, *, rng, n_trials, ci_prob, quantiles):
        x = np.random.default_rng(rng).normal(p["mu"], size=n_trials)
        ds = xr.Dataset({"x": ("trial", x, {"units": "1"})},
                        coords={"trial": ("trial", np.arange(n_trials), {"units": "1"})})
        return mr._labeled.results.summarize(ds, ["x"], ci_prob=ci_prob, quantiles=quantiles)

    S.register_cell_kind(S.CellKind("normal", (S.Param("mu", "float", params.REQUIRED),), run))
    try:
        ds = mr.sweep({"kind": "normal", "seed": 2, "n_trials": 400,
                       "axes": {"mu": [0.0, 5.0]}}, progress=False)
    finally:
        del S.CELL_KINDS["normal"]
    # the mean of 400 unit normals is within 5 standard errors (0.25) of mu
    np.testing.assert_allclose(ds["x_mean"].values, [0.0, 5.0], atol=0.25)


# -- store, outputs, resume ---------------------------------------------------------------------
def test_outputs_and_parts_cleanup(tmp_path, sim_full):
    out = tmp_path / "r.nc"
    ds = mr.sweep(SIM, out, progress=False)
    assert out.exists() and not (tmp_path / "r.nc.parts").exists()
    xr.testing.assert_identical(_without_time(ds), _without_time(sim_full))
    back = xr.load_dataset(out)
    np.testing.assert_array_equal(back["active_experts_mean"], ds["active_experts_mean"])
    csv = tmp_path / "r.csv"
    mr.sweep(SIM, csv, progress=False)
    frame = pd.read_csv(csv, comment="#")
    rows = frame[(frame["variable"] == "active_experts_mean") & (frame["routing"] == "uniform")
                 & (frame["batch_size"] == 1)]
    assert len(rows) == 2 and set(rows["units"]) == {"experts"}  # one row per layer
    js = tmp_path / "r.json"
    mr.sweep(SIM, js, progress=False)
    back = xr.Dataset.from_dict(json.loads(js.read_text()))
    assert back["routing"].values.tolist() == ["uniform", "zipf:1.2"]
    np.testing.assert_array_equal(back["max_device_load_ci"], ds["max_device_load_ci"])


def test_resume_refuses_other_spec_and_needs_flag(tmp_path):
    out = tmp_path / "r.nc"
    store = parts.PartStore(tmp_path / "r.nc.parts")
    spec = mr.load_sweep_spec(SIM)
    store.start(spec, resume=False)
    store.write(run._run_task(spec, [0, 1]))
    with pytest.raises(mr.McrouteError, match="unfinished sweep; pass --resume"):
        mr.sweep(SIM, out, progress=False)
    with pytest.raises(mr.McrouteError, match=r"spec differs.*n_trials: 48 then, 64 now"):
        mr.sweep(SIM, out, resume=True, n_trials=64, progress=False)
    ds, info = run.run_sweep(SIM, out, resume=True, progress=False)
    assert info == {**info, "resumed": 2, "computed": 4}
    assert not (tmp_path / "r.nc.parts").exists()
    # resuming a finished sweep returns the output without computing anything
    ds2, info2 = run.run_sweep(SIM, out, resume=True, progress=False)
    assert info2["computed"] == 0
    np.testing.assert_array_equal(ds2["active_experts_mean"], ds["active_experts_mean"])


KILL_SPEC = """\
kind = "simulate"
seed = 99
n_trials = 1000
cells_per_task = 1
[axes]
routing = ["uniform", "zipf:1.1", "lognormal:1.0", "zipf:0.6"]
batch_size = [16, 128, 512, 1024]
[fixed]
n_experts = 64
top_k = 4
n_layers = 6
n_devices = 4
"""


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_same_dataset(tmp_path):
    spec = _write(tmp_path, KILL_SPEC)
    out = tmp_path / "killed.nc"
    parts = tmp_path / "killed.nc.parts"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "mcroute", "sweep", str(spec), "--output",
                             str(out), "--quiet"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(parts.glob("part-*.nc"))) >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    n_done = len(list(parts.glob("part-*.nc")))
    # The run was really interrupted: no output, some but not all cells kept.
    assert proc.returncode == -signal.SIGKILL, err.decode()
    assert not out.exists()
    assert 2 <= n_done < 16
    assert main(["sweep", str(spec), "--output", str(out), "--resume", "--quiet"]) == 0
    assert out.exists() and not parts.exists()
    whole = tmp_path / "whole.nc"
    assert main(["sweep", str(spec), "--output", str(whole), "--quiet"]) == 0
    xr.testing.assert_identical(_without_time(xr.load_dataset(out)),
                                _without_time(xr.load_dataset(whole)))


# -- CLI and progress ---------------------------------------------------------------------------
def test_cli_sweep(tmp_path, capsys):
    spec = _write(tmp_path, 'kind = "simulate"\nseed = 1\nn_trials = 8\n[axes]\n'
                  'batch_size = [1, 4]\n[fixed]\nn_experts = 8\ntop_k = 2\n')
    assert main(["sweep", str(spec), "--output", str(tmp_path / "o.nc"), "--n-trials", "16"]) == 0
    err = capsys.readouterr().err
    assert "2 cells (batch_size 2), 2 computed, 0 resumed" in err and "\r" not in err
    assert xr.load_dataset(tmp_path / "o.nc").attrs["n_trials"] == 16
    assert main(["sweep", str(spec), "--output", str(tmp_path / "q.nc"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    bad = _write(tmp_path, 'kind = "simulate"\nseed = 1\nbogus = 2\n', "bad.toml")
    assert main(["sweep", str(bad), "--output", str(tmp_path / "b.nc")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key 'bogus'" in err[0]
    assert main(["sweep", str(spec), "--output", str(tmp_path / "o.txt")]) == 2
    assert main(["sweep", str(spec), "--output", "o.nc", "--workers", "2",
                 "--scheduler", "tcp://x:1"]) == 2


def test_progress_bar():
    buf = io.StringIO()
    bar = run._Progress(10, 2, True, stream=buf)
    bar.advance(3)
    time.sleep(0.11)
    bar.advance(5)
    bar.close()
    text = buf.getvalue()
    assert "2/10 cells" in text and "10/10 cells" in text and "cells/s" in text
    assert text.endswith("\n")
    quiet = io.StringIO()
    bar = run._Progress(10, 0, False, stream=quiet)
    bar.advance(10)
    bar.close()
    assert quiet.getvalue() == ""


# -- Dask -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_dask_local_cluster_equals_in_process(tmp_path, sim_full, port_8787_taken):
    """--workers 2: a local cluster of two worker processes gives the in-process result."""
    pytest.importorskip("distributed", reason="the 'distributed' extra is not installed")
    spec = {**SIM, "cells_per_task": 1}
    ds = mr.sweep(spec, tmp_path / "d.nc", workers=2, progress=False)
    xr.testing.assert_identical(_without_time(ds), _without_time(sim_full))


@pytest.mark.slow
def test_cli_scheduler_address_equals_in_process(tmp_path, sim_full, port_8787_taken):
    """--scheduler ADDRESS sends the cells to an existing cluster (here two local processes)."""
    distributed = pytest.importorskip("distributed",
                                      reason="the 'distributed' extra is not installed")
    spec = _write(tmp_path, KILL_SPEC.replace("n_trials = 1000", "n_trials = 24"))
    ref = mr.sweep(spec, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster:
        out = tmp_path / "s.nc"
        assert main(["sweep", str(spec), "--output", str(out), "--quiet",
                     "--scheduler", cluster.scheduler_address]) == 0
    xr.testing.assert_identical(_without_time(xr.load_dataset(out)),
                                _without_time(xr.load_dataset(_save(ref, tmp_path / "r.nc"))))


def _save(ds, path):
    mr.save_dataset(ds, path)
    return path


@pytest.mark.slow
def test_bench_sweep_runs(monkeypatch, capsys, port_8787_taken):
    """`mcroute bench --sweep` end to end on a tiny grid (the code path, not the speed)."""
    pytest.importorskip("distributed", reason="the 'distributed' extra is not installed")
    from mcroute.bench import sweep_bench as _sweep_bench

    tiny = mr.load_sweep_spec({**SIM, "n_trials": 16})
    monkeypatch.setattr(_sweep_bench, "bench_spec", lambda quick=False: tiny)
    assert main(["bench", "--sweep", "--quick"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "results identical: yes" in out[0]
    assert out[1].startswith("sweep speed-up, 2 Dask workers / in-process")
    assert "target >= 1.6" in out[1]
    assert float(out[3].split()[-1]) > 0  # cells/s of the Dask run


# -- issue 13/14: routing strings and the calibrated cost model's options ------------------------
@pytest.mark.parametrize("text, canonical", [
    ("uniform", "uniform"),
    ("Zipf:1.20", "zipf:1.2"),
    ("zipf:1.2+correlated:0.2", "zipf:1.2+correlated:0.2"),
    ("uniform+group:8,4", "uniform+group:8,4"),
    (" uniform + GROUP:8, 4 + Correlated:0.50 ", "uniform+correlated:0.5+group:8,4"),
    ("lognormal:1+group:4,1+correlated:0", "lognormal:1.0+correlated:0.0+group:4,1"),
])
def test_routing_spellings_canonical(text, canonical):
    assert normalize_routing_text(text) == canonical
    assert normalize_routing_text(canonical) == canonical  # canonical is a fixed point


def test_routing_strings_build_the_routing_classes():
    r = parse_routing("zipf:1.2+correlated:0.3+group:8,4", 64, 4)
    assert isinstance(r, mr.GroupLimited) and (r.n_groups, r.topk_groups) == (8, 4)
    assert isinstance(r.base, mr.Correlated) and r.base.sigma == 0.3
    assert r.base.base == mr.Zipf(64, 4, 1.2)
    c = parse_routing("uniform+correlated:0.1", 16, 2)
    assert isinstance(c, mr.Correlated) and c.base == mr.Uniform(16, 2)
    # the CLI's --routing is the same parser
    from mcroute.cli.common import parse_routing as cli_parse_routing

    assert repr(cli_parse_routing("zipf:1.2+correlated:0.3+group:8,4", 64, 4)) == repr(r)


@pytest.mark.parametrize("text, words", [
    ("zipf", ["zipf needs zipf:ALPHA"]),
    ("uniform:1", ["uniform takes no parameter"]),
    ("gauss:1", ["must be BASE[+correlated:SIGMA][+group:NG,TG]"]),
    ("uniform+correlated", ["correlated:SIGMA or group:NG,TG"]),
    ("uniform+correlated:x", ["correlated sigma", "'x'"]),
    ("uniform+correlated:-0.1", ["correlated sigma", ">= 0"]),
    ("uniform+correlated:nan", ["correlated sigma"]),
    ("uniform+group:8", ["group:NG,TG"]),
    ("uniform+group:8,x", ["group TG", "integer >= 1"]),
    ("uniform+group:0,1", ["group NG", "integer >= 1"]),
    ("uniform+group:4,8", ["TG <= NG"]),
    ("uniform+group:8,4+group:8,2", ["group given twice"]),
    ("uniform+zipf:1.2", ["after '+'"]),
    ("uniform+", ["after '+'"]),
    ("x" * 300, ["short string"]),
])
def test_bad_routing_spellings(text, words):
    with pytest.raises(mr.McrouteError) as err:
        normalize_routing_text(text, param="routing[0]")
    msg = str(err.value)
    assert msg.startswith("routing[0]")
    for w in words:
        assert w in msg


def test_routing_needing_e_is_refused_before_any_work(tmp_path):
    """NG must divide E: found when the cells are prepared, naming the cell and the string."""
    spec = {**SIM, "axes": {"routing": ["uniform", "uniform+group:5,2"]},
            "fixed": {**SIM["fixed"], "batch_size": 8}}
    with pytest.raises(mr.McrouteError, match=r"uniform\+group:5,2.*n_groups must divide"):
        mr.sweep(spec, tmp_path / "out.nc", progress=False)
    assert not (tmp_path / "out.nc.parts").exists()


def test_new_routings_in_a_sweep_match_direct_calls():
    spec = {**SIM, "axes": {"routing": ["uniform+group:8,2", "zipf:1.2+correlated:0.4"],
                            "batch_size": [8, 64]}}
    ds = mr.sweep(spec, progress=False)
    assert ds["routing"].values.tolist() == ["uniform+group:8,2", "zipf:1.2+correlated:0.4"]
    for text, routing in (("uniform+group:8,2", mr.GroupLimited(mr.Uniform(32, 4), 8, 2)),
                          ("zipf:1.2+correlated:0.4", mr.Correlated(mr.Zipf(32, 4, 1.2), 0.4))):
        for b in (8, 64):
            seed = int(ds["cell_seed"].sel(routing=text, batch_size=b))
            direct = mr.simulate(routing, b, 48, n_layers=2, n_devices=4, rng=seed)
            np.testing.assert_array_equal(
                ds["active_experts_mean"].sel(routing=text, batch_size=b).values,
                direct["active_experts_mean"].values)


def test_calibrated_options_in_throughput_sweep_match_direct_calls():
    spec = {"kind": "throughput", "seed": 9, "n_trials": 8,
            "axes": {"kernels": ["calibrated", "roofline"], "mtp_depth": [0, 1]},
            "fixed": {"model": "mixtral-8x7b", "hardware": "h100-sxm", "n_gpus": 2,
                      "context": "4k", "batch_per_gpu": 8, "all_to_all": "overlap",
                      "redundant_experts": 2, "attention_compute_dtype": "bf16",
                      "mtp_acceptance": "beta:8,2", "routing": "zipf:1.1+correlated:0.2"}}
    ds = mr.sweep(spec, progress=False)
    for kernels in ("calibrated", "roofline"):
        for depth in (0, 1):
            seed = int(ds["cell_seed"].sel(kernels=kernels, mtp_depth=depth))
            dep = mr.Deployment("mixtral-8x7b", "h100-sxm", 2, kernels=kernels,
                                mtp_depth=depth, mtp_acceptance="beta:8,2",
                                all_to_all="overlap", redundant_experts=2,
                                attention_compute_dtype="bf16")
            direct = mr.decode_throughput(
                dep, 4096, routing=mr.Correlated(mr.Zipf(8, 2, 1.1), 0.2), n_trials=8,
                rng=seed, batch_per_gpu=8)
            cell = ds.sel(kernels=kernels, mtp_depth=depth)
            for v in ("throughput_mean", "throughput_bound_mean"):
                np.testing.assert_array_equal(cell[v].values, direct[v].values)
            assert cell["batch_size"].values.ravel().tolist() == [16]


def test_tpot_cell_and_batch_policy_conflict(tmp_path):
    spec = {"kind": "throughput", "seed": 1, "n_trials": 4,
            "axes": {"tpot": ["40ms", 0.08]},
            "fixed": {"model": "llama-3.1-70b", "hardware": "h100-sxm", "n_gpus": 4,
                      "context": "8k"}}
    loaded = mr.load_sweep_spec(spec)
    assert loaded.axes == (("tpot", (0.04, 0.08)),)
    ds = mr.sweep(spec, progress=False)
    b = ds["batch_size"].values.ravel()
    assert b[0] <= b[1]  # a looser target admits at least the same batch
    bad = {**spec, "fixed": {**spec["fixed"], "batch_size": 8}}
    with pytest.raises(mr.McrouteError, match="one of batch_size, batch_per_gpu and tpot"):
        mr.sweep(bad, tmp_path / "o.nc", progress=False)


@pytest.mark.parametrize("key, value, words", [
    ("kernels", "exact", ["kernels must be one of"]),
    ("all_to_all", "always", ["all_to_all must be one of"]),
    ("redundant_experts", -1, ["redundant_experts must be an integer in [0, "]),
    ("mtp_depth", 1.5, ["mtp_depth must be an integer"]),
    ("mtp_acceptance", 1.5, ["mtp_acceptance must be a number in [0, 1] or 'beta:A,B'"]),
    ("mtp_acceptance", "beta:1", ["mtp_acceptance must be"]),
    ("tpot", "soon", ["tpot must be a time"]),
    ("tpot", 0, ["tpot must be a time"]),
    ("calibration_uncertainty", "yes", ["true or false"]),
])
def test_bad_calibrated_options_name_the_key(key, value, words):
    spec = {"kind": "throughput", "seed": 1,
            "fixed": {"model": "mixtral-8x7b", "hardware": "h100-sxm", "n_gpus": 2,
                      "context": "4k", key: value}}
    with pytest.raises(mr.McrouteError) as err:
        mr.load_sweep_spec(spec)
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize("kind, module", [("simulate", "simulate"),
                                          ("throughput", "throughput"), ("qs", "qs")])
def test_cells_draw_no_progress_line_of_their_own(monkeypatch, kind, module):
    """On a terminal the labeled functions draw a progress line; inside a sweep, whose bar
    covers every cell, each cell is called with progress=False."""
    import importlib

    mod = importlib.import_module(f"mcroute._labeled.{module}")
    seen = []
    real = mod.progress_callback

    def spy(progress, label):
        seen.append(progress)
        return real(progress, label)

    monkeypatch.setattr(mod, "progress_callback", spy)
    spec = {"simulate": {**SIM, "axes": {"batch_size": [4]}},
            "throughput": {"kind": "throughput", "seed": 1, "n_trials": 8,
                           "fixed": {"model": "mixtral-8x7b", "hardware": "h100-sxm",
                                     "n_gpus": 2, "context": 4096, "batch_size": 8}},
            "qs": {"kind": "qs", "seed": 1, "n_trials": 8,
                   "fixed": {"model": "mixtral-8x7b", "hardware": "h100-sxm", "n_gpus": 2,
                             "context": 4096, "q": 2.0}}}[kind]
    mr.sweep(spec, progress=False)
    assert seen and all(p is False for p in seen), seen

"""Sweep parts are data only: checksums, validation, --recompute-bad, no debris, limits.

Issue 11: a part file must never run code (nothing read from disk is unpickled), corrupt parts
are errors naming the file, a failed validation leaves nothing behind, huge grids are refused
before any work, local Dask clusters do not need port 8787, and the numbers do not depend on
the thread count.
"""

import hashlib
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import mcroute as mr
from mcroute._base import atomic as _atomic
from mcroute.cli import main
from mcroute.sweeps import core as S
from mcroute.sweeps import parts, run

ROOT = Path(__file__).resolve().parent.parent

SMALL = {
    "kind": "simulate", "seed": 5, "n_trials": 16, "cells_per_task": 2,
    "axes": {"routing": ["uniform", "zipf:1.2"], "batch_size": [1, 8, 64]},
    "fixed": {"n_experts": 16, "top_k": 2, "n_layers": 2, "n_devices": 2},
}


def _without_time(ds):
    ds = ds.copy()
    ds.attrs.pop("created_at", None)
    return ds


class _Payload:
    """Unpickling this creates (opens for writing) the marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_bytes(marker) -> bytes:
    return pickle.dumps({"format": 1, "cells": [0, 1], "dataset": _Payload(marker)})


def test_payload_really_runs_code_when_unpickled(tmp_path):
    """Control: the payload used below does write its marker when unpickled."""
    marker = tmp_path / "control"
    pickle.loads(_malicious_bytes(marker)).get("dataset").close()
    assert marker.exists()


def _partial(tmp_path, spec=SMALL, n_parts=2, name="r.nc"):
    """An interrupted sweep: the first ``n_parts`` tasks of ``spec`` written to the store."""
    spec = mr.load_sweep_spec(spec)
    out = tmp_path / name
    store = parts.PartStore(out.with_name(out.name + ".parts"))
    store.start(spec, resume=False)
    tasks = run._tasks(list(range(spec.n_cells)), spec.cells_per_task, 1)
    for cells in tasks[:n_parts]:
        store.write(run._run_task(spec, cells))
    return out, store.folder, sorted(store.folder.glob("part-*.nc"))


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def _set_manifest(folder, m):
    (folder / "manifest.json").write_text(json.dumps(m))


def _record_checksum(folder, part: Path):
    """Update the manifest as if ``part``'s current bytes were what was written."""
    m = _manifest(folder)
    m["parts"][part.name]["sha256"] = hashlib.sha256(part.read_bytes()).hexdigest()
    _set_manifest(folder, m)


@pytest.fixture(scope="module")
def clean_run():
    return mr.sweep(SMALL, progress=False)


# -- item 1: no code from data files -----------------------------------------------------------
def test_no_pickle_anywhere_in_the_package():
    """Nothing in mcroute imports pickle or loads arrays with allow_pickle=True."""
    offenders = []
    for path in (ROOT / "mcroute").rglob("*.py"):
        text = path.read_text()
        for needle in ("import pickle", "from pickle", "allow_pickle=True", "cloudpickle",
                       "pickle.load", "joblib", "dill", "shelve", "marshal.load"):
            if needle in text:
                offenders.append(f"{path.name}: {needle}")
    assert offenders == []


def test_old_format_manifest_with_pickled_part_is_refused_unrun(tmp_path, capsys):
    """A pickle part plus a manifest of the old (pickle) format whose hash matches the spec."""
    spec = mr.load_sweep_spec(SMALL)
    out = tmp_path / "r.nc"
    folder = tmp_path / "r.nc.parts"
    folder.mkdir()
    marker = tmp_path / "pwned"
    (folder / "manifest.json").write_text(json.dumps({
        "spec_hash": spec.spec_hash(), "spec": spec.to_dict(),
        "mcroute_version": mr.__version__, "n_cells": spec.n_cells}))
    (folder / "part-000000000-0123456789.pkl").write_bytes(_malicious_bytes(marker))
    with pytest.raises(mr.McrouteError, match=r"manifest\.json: manifest of an older mcroute"):
        mr.sweep(spec, out, resume=True, progress=False)
    spec_file = tmp_path / "s.toml"
    spec_file.write_text(_toml(SMALL))
    assert main(["sweep", str(spec_file), "--output", str(out), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest.json" in err[0]
    assert not marker.exists() and not out.exists()


def test_pickle_with_matching_checksum_is_refused_unrun(tmp_path):
    """A part replaced by a pickle whose SHA-256 is recorded: parsed as NetCDF, refused."""
    out, folder, parts = _partial(tmp_path)
    marker = tmp_path / "pwned"
    parts[0].write_bytes(_malicious_bytes(marker))
    _record_checksum(folder, parts[0])
    for recompute in (False, True):
        if not recompute:
            with pytest.raises(mr.McrouteError) as err:
                mr.sweep(SMALL, out, resume=True, progress=False)
            msg = str(err.value)
            assert str(parts[0]) in msg and "not a readable NetCDF part" in msg
        else:  # --recompute-bad deletes it and computes its cells
            mr.sweep(SMALL, out, resume=True, recompute_bad=True, progress=False)
        assert not marker.exists()
    assert out.exists()


def test_stray_pickle_in_parts_folder_is_refused_unrun(tmp_path):
    out, folder, _ = _partial(tmp_path)
    marker = tmp_path / "pwned"
    stray = folder / "part-000000004-0123456789.pkl"
    stray.write_bytes(_malicious_bytes(marker))
    with pytest.raises(mr.McrouteError, match="unexpected file") as err:
        mr.sweep(SMALL, out, resume=True, progress=False)
    assert str(stray) in str(err.value)
    assert not marker.exists()


# -- item 2: corrupt parts are detected by name; --recompute-bad recovers ----------------------
def _flip_bytes(path: Path, n=8, seed=0):
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(data), size=n, replace=False):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _rewrite(path: Path, folder: Path, change):
    """Rewrite a part as valid NetCDF after ``change(ds)``, with its checksum recorded."""
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        ds = change(ds.load())
    data = bytes(ds.to_netcdf(engine="h5netcdf"))
    path.write_bytes(data)
    _record_checksum(folder, path)


def _drop_variable(path, folder):
    _rewrite(path, folder, lambda ds: ds.drop_vars("active_experts_mean"))


def _drop_variable_keep_checksum(path, folder):
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        ds = ds.load().drop_vars("active_experts_mean")
    path.write_bytes(bytes(ds.to_netcdf(engine="h5netcdf")))


def _cell_out_of_range(path, folder):
    _rewrite(path, folder, lambda ds: ds.assign_coords(cell=ds["cell"].values + 1000))


def _string_dataset(path, folder):
    _rewrite(path, folder, lambda ds: ds.assign(
        active_experts_mean=ds["active_experts_mean"].astype(str)))


def _nan_coordinate(path, folder):
    _rewrite(path, folder, lambda ds: ds.assign_coords(quantile=[0.05, np.nan, 0.95]))


def _extra_dim(path, folder):
    _rewrite(path, folder, lambda ds: ds.assign(
        active_experts_mean=ds["active_experts_mean"].expand_dims("extra")))


def _garbage(path, folder):
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200))
    _record_checksum(folder, path)


@pytest.mark.parametrize("corrupt, words", [
    (lambda p, f: _flip_bytes(p), "checksum mismatch"),
    (lambda p, f: _truncate(p), "checksum mismatch"),
    (_drop_variable_keep_checksum, "checksum mismatch"),
    (_drop_variable, "variable 'active_experts_mean' is missing"),
    (_cell_out_of_range, "cell index out of range"),
    (_string_dataset, "'active_experts_mean' has dtype"),
    (_nan_coordinate, "coordinate 'quantile' holds non-finite values"),
    (_extra_dim, "'active_experts_mean' has dims"),
    (_garbage, "not a readable NetCDF part"),
], ids=["byte-flips", "truncated", "dropped-var-old-checksum", "dropped-var", "cell-range",
        "string-data", "nan-coordinate", "extra-dim", "garbage"])
def test_corrupt_part_is_named_then_recomputed(tmp_path, clean_run, corrupt, words):
    out, folder, parts = _partial(tmp_path)
    bad = parts[1]
    corrupt(bad, folder)
    with pytest.raises(mr.McrouteError) as err:
        mr.sweep(SMALL, out, resume=True, progress=False)
    msg = str(err.value)
    assert msg.startswith(str(bad)) and words in msg and "--recompute-bad" in msg
    assert "\n" not in msg
    assert bad.exists() and not out.exists()  # nothing changed by the refusal
    ds, info = run.run_sweep(SMALL, out, resume=True, recompute_bad=True, progress=False)
    assert info["resumed"] == 2 and info["computed"] == 4  # the good part was kept
    xr.testing.assert_identical(_without_time(ds), _without_time(clean_run))
    xr.testing.assert_identical(_without_time(xr.load_dataset(out)),
                                _without_time(xr.load_dataset(_save(clean_run, tmp_path))))


def _save(ds, tmp_path):
    path = tmp_path / "clean.nc"
    mr.save_dataset(ds, path)
    return path


def test_cli_corrupt_part_one_line_then_recompute_bad(tmp_path, capsys, clean_run):
    out, folder, parts = _partial(tmp_path)
    _flip_bytes(parts[0])
    spec = tmp_path / "s.toml"
    spec.write_text(_toml(SMALL))
    args = ["sweep", str(spec), "--output", str(out), "--quiet"]
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(parts[0]) in err[0] and "checksum mismatch" in err[0]
    assert main([*args, "--recompute-bad"]) == 2  # needs --resume
    assert "--recompute-bad needs --resume" in capsys.readouterr().err
    assert main([*args, "--resume", "--recompute-bad"]) == 0
    np.testing.assert_array_equal(xr.load_dataset(out)["active_experts_mean"],
                                  clean_run["active_experts_mean"])


def test_uncommitted_and_deleted_parts_are_recomputed(tmp_path, clean_run):
    """A part renamed into place but not yet in the manifest (killed in between) is deleted;
    a part deleted by hand is dropped from the manifest; both are computed again."""
    out, folder, parts = _partial(tmp_path)
    m = _manifest(folder)
    del m["parts"][parts[1].name]
    _set_manifest(folder, m)
    parts[0].unlink()
    ds, info = run.run_sweep(SMALL, out, resume=True, progress=False)
    assert info["resumed"] == 0 and info["computed"] == 6
    xr.testing.assert_identical(_without_time(ds), _without_time(clean_run))


def test_stale_temporary_files_are_removed(tmp_path):
    out, folder, _ = _partial(tmp_path, n_parts=1)
    stale = [folder / ".part-000000002-0123456789.nc.abcd1234.nc",
             folder / ".manifest.json.zz9_ab12.json"]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    out_tmp = tmp_path / f".r.nc{_atomic.TMP_TAG}{_atomic._host()}.{dead}.k2j4h6g8.nc"
    for f in [*stale, out_tmp]:
        f.write_bytes(b"x" * 1000)
    keep = tmp_path / ".r.nc.notmine.nc"  # not a name atomic writes use
    keep.write_bytes(b"y")
    mr.sweep(SMALL, out, resume=True, progress=False)
    assert not any(f.exists() for f in [*stale, out_tmp])
    assert keep.exists() and not folder.exists()


def test_resume_of_unreadable_finished_output(tmp_path, capsys):
    """--resume with no parts folder reads the existing .nc output: a bad one is named."""
    out = tmp_path / "r.nc"
    out.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(mr.McrouteError, match=r"r\.nc: --resume cannot read the existing"):
        mr.sweep(SMALL, out, resume=True, progress=False)
    assert not (tmp_path / "r.nc.parts").exists()


@pytest.mark.parametrize("output", [3, b"o.nc", ["o.nc"]])
def test_output_of_wrong_type(output):
    with pytest.raises(mr.McrouteError, match="output must be a path"):
        mr.sweep(SMALL, output, progress=False)


# -- manifest structure --------------------------------------------------------------------------
@pytest.mark.parametrize("content, words", [
    ("[1, 2, 3]", "a JSON object is expected, got list"),
    ('"manifest"', "a JSON object is expected, got str"),
    ("17", "a JSON object is expected, got int"),
    ("null", "a JSON object is expected, got NoneType"),
    ("{not json", "unreadable manifest"),
    ("", "unreadable manifest"),
    ("[" * 100000, "unreadable manifest"),
], ids=["list", "string", "number", "null", "malformed", "empty", "deep"])
def test_manifest_not_an_object(tmp_path, capsys, content, words):
    out, folder, _ = _partial(tmp_path, n_parts=1)
    (folder / "manifest.json").write_text(content)
    with pytest.raises(mr.McrouteError) as err:
        mr.sweep(SMALL, out, resume=True, progress=False)
    assert str(folder / "manifest.json") in str(err.value) and words in str(err.value)
    spec = tmp_path / "s.toml"
    spec.write_text(_toml(SMALL))
    assert main(["sweep", str(spec), "--output", str(out), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest.json" in err[0]


def _edit(key, value):
    def f(m):
        m[key] = value
    return f


def _edit_entry(key, value):
    def f(m):
        name = sorted(m["parts"])[0]
        m["parts"][name][key] = value
    return f


def _rename_entry(new):
    def f(m):
        name = sorted(m["parts"])[0]
        m["parts"][new] = m["parts"].pop(name)
    return f


@pytest.mark.parametrize("edit, words", [
    (_edit("parts", []), "'parts' must be dict, got list"),
    (_edit("schemas", {}), "'schemas' must be list, got dict"),
    (_edit("n_cells", True), "'n_cells' must be int, got bool"),
    (_edit("spec_hash", 3), "'spec_hash' must be str"),
    (_edit("format", 1), "format 1"),
    (lambda m: m.pop("parts"), "key 'parts' is missing"),
    (_edit_entry("sha256", "abc"), "entry of"),
    (_edit_entry("schema", 7), "entry of"),
    (_edit_entry("n_cells", "2"), "entry of"),
    (_rename_entry("../../evil.nc"), "is not part-NNNNNNNNN-TAG.nc"),
    (_edit("schemas", [{"x": "f"}]), "schemas[0]"),
], ids=["parts-list", "schemas-dict", "bool", "hash-int", "format", "no-parts", "sha",
        "schema-index", "n-cells-str", "traversal", "schema-shape"])
def test_manifest_wrong_structure(tmp_path, edit, words):
    out, folder, _ = _partial(tmp_path, n_parts=1)
    m = _manifest(folder)
    edit(m)
    _set_manifest(folder, m)
    with pytest.raises(mr.McrouteError) as err:
        mr.sweep(SMALL, out, resume=True, recompute_bad=True, progress=False)
    assert str(folder / "manifest.json") in str(err.value) and words in str(err.value)


# -- spec checks, debris, limits -----------------------------------------------------------------
def _toml(spec: dict) -> str:
    def val(v):
        if isinstance(v, dict):  # an inline table
            return "{" + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + "}"
        return json.dumps(v)

    lines = [f"{k} = {val(v)}" for k, v in spec.items() if k not in ("axes", "fixed")]
    for table in ("axes", "fixed"):
        if table in spec:
            lines.append(f"[{table}]")
            lines += [f"{k} = {val(v)}" for k, v in spec[table].items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("kind", [["simulate"], {"a": 1}, 3, True])
def test_kind_of_wrong_type(tmp_path, capsys, kind):
    with pytest.raises(mr.McrouteError, match="kind must be one of"):
        mr.load_sweep_spec({**SMALL, "kind": kind})
    spec = tmp_path / "s.toml"
    spec.write_text(_toml({**SMALL, "kind": kind}))
    assert main(["sweep", str(spec), "--output", str(tmp_path / "o.nc")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "kind must be one of" in err[0] and str(spec) in err[0]


def _runtime_failure_kind():
    def run(p, *, rng, n_trials, ci_prob, quantiles):
        raise mr.McrouteError("this cell cannot be computed")

    return S.CellKind("failing", (S.Param("x", "int", 1),), run)


@pytest.mark.parametrize("case", ["bad-cell", "bad-method", "extension", "no-folder",
                                  "is-dir", "fifo", "workers", "recompute-without-resume",
                                  "runtime"])
def test_failed_sweep_leaves_nothing(tmp_path, case):
    out = tmp_path / "o.nc"
    spec, kw = SMALL, {}
    if case == "bad-cell":
        spec = {**SMALL, "axes": {"top_k": [2, 64]}, "fixed": {"n_experts": 16,
                                                                "batch_size": 4}}
    elif case == "bad-method":  # counts space is exact only for uniform or top-1 routing
        spec = {**SMALL, "fixed": {**SMALL["fixed"], "method": "counts"}}
    elif case == "extension":
        out = tmp_path / "o.txt"
    elif case == "no-folder":
        out = tmp_path / "nope" / "o.nc"
    elif case == "is-dir":
        out.mkdir()
    elif case == "fifo":
        os.mkfifo(out)
    elif case == "workers":
        kw = {"workers": 0}
    elif case == "recompute-without-resume":
        kw = {"recompute_bad": True}
    elif case == "runtime":
        S.register_cell_kind(_runtime_failure_kind())
        spec = {"kind": "failing", "seed": 1, "axes": {"x": [1, 2]}}
    before = sorted(p.name for p in tmp_path.iterdir())
    try:
        with pytest.raises(mr.McrouteError):
            mr.sweep(spec, out, progress=False, **kw)
    finally:
        S.CELL_KINDS.pop("failing", None)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if case == "bad-cell":  # and the corrected rerun is not refused as "unfinished"
        mr.sweep(SMALL, out, progress=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_unwritable_output_folder_is_refused_first(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(mr.McrouteError, match="not writable"):
            mr.sweep(SMALL, ro / "o.nc", progress=False)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_billion_cell_grid_is_refused_at_once(tmp_path, capsys):
    axes = {"batch_size": list(range(1, 1001)), "n_experts": list(range(8, 1008)),
            "n_layers": list(range(1, 1001))}
    spec = {"kind": "simulate", "seed": 1, "axes": axes, "fixed": {"top_k": 2}}
    t0 = time.perf_counter()
    with pytest.raises(mr.McrouteError, match=r"1,000,000,000 cells.*more than the 100,000"):
        mr.sweep(spec, tmp_path / "o.nc", progress=False)
    assert time.perf_counter() - t0 < 0.5  # the product of 3 lengths, no cell is looked at
    path = tmp_path / "big.toml"
    path.write_text(_toml(spec))
    t0 = time.perf_counter()
    assert main(["sweep", str(path), "--output", str(tmp_path / "o.nc")]) == 2
    assert time.perf_counter() - t0 < 0.5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1,000,000,000 cells" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.toml"]


def test_spec_file_size_and_type_limits(tmp_path):
    big = tmp_path / "big.toml"
    big.write_text('kind = "simulate"\nseed = 1\ndescription = "' + "x" * (1 << 20) + '"\n')
    with pytest.raises(mr.McrouteError, match="at most 1048576 bytes"):
        mr.load_sweep_spec(big)
    if Path("/dev/zero").exists():
        t0 = time.perf_counter()
        with pytest.raises(mr.McrouteError, match="not a regular file"):
            mr.load_sweep_spec("/dev/zero")
        assert time.perf_counter() - t0 < 1
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"kind = \xff\xfe\n")
    with pytest.raises(mr.McrouteError, match="not UTF-8"):
        mr.load_sweep_spec(binary)
    with pytest.raises(mr.McrouteError, match="is a folder"):
        mr.load_sweep_spec(tmp_path)


def test_repeated_quantiles_refused():
    with pytest.raises(mr.McrouteError, match="quantiles: repeated level"):
        mr.load_sweep_spec({**SMALL, "quantiles": [0.5, 0.5]})


# -- item 10: Dask without port 8787 -------------------------------------------------------------
@pytest.mark.slow
def test_local_cluster_with_port_8787_taken(tmp_path, port_8787_taken, clean_run, capsys):
    """--workers 2 while 8787 is in use: no warning (warnings are errors here), same numbers."""
    pytest.importorskip("distributed", reason="the 'distributed' extra is not installed")
    ds = mr.sweep(SMALL, tmp_path / "d.nc", workers=2, progress=False)
    xr.testing.assert_identical(_without_time(ds), _without_time(clean_run))
    spec = tmp_path / "s.toml"
    spec.write_text(_toml(SMALL))
    assert main(["sweep", str(spec), "--output", str(tmp_path / "c.nc"), "--workers", "2",
                 "--quiet"]) == 0
    assert capsys.readouterr().err == ""  # no "port 8787 in use" for users either


# -- thread determinism ----------------------------------------------------------------------------
DETERMINISM_SCRIPT = r"""
import hashlib, sys, mcroute as mr
spec = {"kind": "simulate", "seed": 3, "n_trials": 40, "cells_per_task": 3,
        "axes": {"routing": ["uniform", "zipf:1.1", "lognormal:1.0"], "batch_size": [2, 4096]},
        "fixed": {"n_experts": 64, "top_k": 4, "n_layers": 2, "n_devices": 4,
                  "method": sys.argv[1]}}
ds = mr.sweep(spec, sys.argv[2], progress=False)
h = hashlib.sha256()
for name in sorted(ds.variables):
    h.update(name.encode() + ds[name].values.tobytes())
print(h.hexdigest())
"""


def _sweep_digest(threads: int, method: str, out: Path) -> str:
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads)}
    res = subprocess.run([sys.executable, "-c", DETERMINISM_SCRIPT, method, str(out)], env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


@pytest.mark.parametrize("method", ["assignment", "auto"])
def test_sweep_identical_on_one_and_two_threads(tmp_path, method):
    one = _sweep_digest(1, method, tmp_path / "one.nc")
    two = _sweep_digest(2, method, tmp_path / "two.nc")
    assert len(one) == 64 and one == two
    a, b = xr.load_dataset(tmp_path / "one.nc"), xr.load_dataset(tmp_path / "two.nc")
    xr.testing.assert_identical(_without_time(a), _without_time(b))

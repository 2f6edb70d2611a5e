"""The parts of a running sweep: checksummed NetCDF files and a manifest in ``<output>.parts/``.

Completed cells are written, a task (a group of cells) at a time, as NetCDF part files (each
written to a temporary name and renamed), next to a ``manifest.json`` holding the hash of the
spec and each part's SHA-256. Reading back (resume) checks the manifest, then each part's
checksum before parsing it, then its content. Nothing read from disk is ever unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import stat
import sys
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from mcroute._base.atomic import atomic_path
from mcroute._base.validate import McrouteError
from mcroute._labeled.results import attr_value
from mcroute._version import __version__

__all__ = ["MAX_MANIFEST_BYTES", "MAX_PART_BYTES", "PART_FORMAT", "PartStore"]

#: How cells and parts are concatenated on the ``cell`` dim (own dims may differ in length).
_CONCAT = {"data_vars": "all", "coords": "different", "compat": "equals", "join": "outer",
           "combine_attrs": "drop_conflicts"}

# -- the store --------------------------------------------------------------------------------
#: Version of the part and manifest format (1 was pickled parts, never read any more).
PART_FORMAT = 2
#: Largest manifest.json read back (bytes); a sweep of MAX_CELLS one-cell parts needs ~15 MB.
MAX_MANIFEST_BYTES = 64 << 20
#: Largest part file read back (bytes).
MAX_PART_BYTES = 8 << 30
_PART_NAME = re.compile(r"part-[0-9]{9}-[0-9a-f]{10}\.nc")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MANIFEST_TYPES = {"format": int, "mcroute_version": str, "spec_hash": str, "spec": dict,
                   "n_cells": int, "schemas": list, "parts": dict}
_DTYPE_CLASSES = {"f": "float", "i": "int", "u": "int", "b": "bool", "U": "str", "S": "str",
                  "O": "str"}


def _dtype_class(dtype) -> str:
    return _DTYPE_CLASSES.get(np.dtype(dtype).kind, f"other:{np.dtype(dtype).str}")


def _normalize_part(ds: xr.Dataset) -> xr.Dataset:
    """The in-memory form of a part, identical whether just computed or read back from disk."""
    ds = ds.copy()
    ds.attrs = {}
    for v in ds.variables.values():
        v.attrs = {k: attr_value(a) for k, a in v.attrs.items()}
        v.encoding = {}
    return ds


def _part_schema(ds: xr.Dataset) -> dict:
    """``{variable: [dims, dtype class]}`` for every variable (coordinates included)."""
    return {name: [list(v.dims), _dtype_class(v.dtype)]
            for name, v in sorted(ds.variables.items())}


def _encode_part(part: xr.Dataset, spec_hash: str) -> tuple[xr.Dataset, bytes, dict]:
    """``(normalized dataset, NetCDF-4 bytes, schema)`` of one task's cells."""
    ds = _normalize_part(part)
    out = ds.copy()
    out.attrs = {"mcroute_part_format": PART_FORMAT, "mcroute_version": __version__,
                 "spec_hash": spec_hash}
    with _local_locks():
        data = bytes(out.to_netcdf(engine="h5netcdf"))
    return ds, data, _part_schema(ds)


@contextlib.contextmanager
def _local_locks():
    """Make xarray use a process-local write lock, also inside a Dask worker.

    In a worker xarray would take a Dask-distributed lock keyed by the target, which fails
    for an in-memory buffer; the part is written by this thread alone.
    """
    if "dask" not in sys.modules:
        yield
        return
    import dask

    with dask.config.set(scheduler="synchronous"):
        yield


def _decode_part(data: bytes) -> xr.Dataset:
    """Parse NetCDF bytes (data only: no pickle, no code). Any warning is an error here."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with xr.open_dataset(io.BytesIO(data), engine="h5netcdf", decode_times=False,
                             decode_timedelta=False, cache=False) as ds:
            return ds.load()


class _BadPart(Exception):
    """A part file that fails its checksum or validation (message: the problem)."""


class PartStore:
    """``<output>.parts/``: ``manifest.json`` plus one NetCDF file per finished task.

    A part ``part-<first cell>-<tag>.nc`` holds the task's cells stacked on a ``cell`` dim
    (the flat cell indices are the ``cell`` coordinate) and the cells' attrs as JSON strings
    (``cell_attrs``). It is written to a temporary name, flushed and renamed; then its SHA-256,
    its number of cells and its variables (names, dims, dtype classes; stored once per distinct
    set in ``schemas``) are added to the manifest, which is itself replaced atomically. Reading
    back (``--resume``) checks the manifest's structure, then each part's checksum *before*
    parsing it, then its content against the manifest and the spec's grid. Nothing is ever
    unpickled; a file that fails is an error naming it, or, with ``recompute_bad``, is deleted
    and its cells are computed again. The checksums detect corruption (bit rot, truncation, a
    partial copy), not deliberate edits by someone who can rewrite the manifest too.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.manifest_path = self.folder / "manifest.json"
        self.created = False  # this run created the folder
        self.datasets: dict[str, xr.Dataset] = {}  # name -> normalized part, validated
        self.manifest: dict = {}

    # ---- starting / resuming
    def start(self, spec,  resume: bool, recompute_bad: bool = False) -> set:
        """Create or reopen the folder; return the flat indices of completed cells."""
        self.spec = spec
        h = spec.spec_hash()
        if not self.folder.exists():
            self.folder.mkdir()
            self.created = True
            self.manifest = {"format": PART_FORMAT, "mcroute_version": __version__,
                             "spec_hash": h, "spec": spec.to_dict(), "n_cells": spec.n_cells,
                             "schemas": [], "parts": {}}
            self._write_manifest()
            return set()
        if not resume:
            raise McrouteError(
                f"{self.folder} holds the parts of an unfinished sweep; pass --resume "
                "(resume=True) to continue it, or delete the folder to start again")
        if not self.folder.is_dir() or self.folder.is_symlink():
            raise McrouteError(f"{self.folder} is not a folder of sweep parts; delete it")
        old = self._read_manifest()
        if old["spec_hash"] != h:
            diff = _spec_difference(old["spec"], spec.to_dict(), old["mcroute_version"])
            raise McrouteError(f"--resume: the spec differs from the interrupted run's "
                               f"({diff}); use the same spec and --n-trials, or delete "
                               f"{self.folder}")
        if old["n_cells"] != spec.n_cells:
            raise McrouteError(f"{self.manifest_path}: n_cells is {old['n_cells']}, the spec "
                               f"has {spec.n_cells} cells; delete {self.folder}")
        self.manifest = old
        changed = self._sweep_folder(recompute_bad)
        done: dict[int, str] = {}
        for name in sorted(self.manifest["parts"]):
            try:
                ds = self._read_part(name, done)
            except _BadPart as exc:
                path = self.folder / name
                if not recompute_bad:
                    raise McrouteError(
                        f"{path}: {exc}; rerun with --resume --recompute-bad "
                        f"(recompute_bad=True) to recompute its cells, or delete "
                        f"{self.folder} to start again") from None
                path.unlink(missing_ok=True)
                del self.manifest["parts"][name]
                changed = True
                continue
            self.datasets[name] = ds
            for c in ds["cell"].values:
                done[int(c)] = name
        if changed:
            self._write_manifest()
        return set(done)

    def _sweep_folder(self, recompute_bad: bool) -> bool:
        """Delete temporary files and uncommitted parts; drop entries of deleted parts."""
        changed = False
        entries = self.manifest["parts"]
        for f in sorted(self.folder.iterdir()):
            name = f.name
            if name == "manifest.json":
                continue
            if name.startswith("."):  # temporary file of an interrupted write
                if f.is_file() or f.is_symlink():
                    f.unlink(missing_ok=True)
                continue
            if _PART_NAME.fullmatch(name) and not f.is_symlink():
                if name not in entries:  # renamed into place, killed before the manifest
                    f.unlink(missing_ok=True)
                continue
            if recompute_bad and (f.is_file() or f.is_symlink()):
                f.unlink(missing_ok=True)
                continue
            raise McrouteError(f"{f}: unexpected file in the parts folder (not a part written "
                               f"by this mcroute version; parts are never unpickled); delete "
                               f"it, or delete {self.folder} to start again")
        for name in list(entries):
            if not (self.folder / name).exists():  # deleted by hand: its cells are recomputed
                del entries[name]
                changed = True
        return changed

    def _read_manifest(self) -> dict:
        path = self.manifest_path
        where = f"{path}"
        try:
            st = path.lstat()
        except OSError:
            raise McrouteError(f"{where} is missing; delete {self.folder} to start "
                               "again") from None
        if not stat.S_ISREG(st.st_mode):
            raise McrouteError(f"{where} is not a regular file; delete {self.folder}")
        if st.st_size > MAX_MANIFEST_BYTES:
            raise McrouteError(f"{where} is {st.st_size} bytes, more than the "
                               f"{MAX_MANIFEST_BYTES} a manifest may have; delete {self.folder}")
        try:
            m = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise McrouteError(f"{where}: unreadable manifest ({type(exc).__name__}: "
                               f"{_short(exc)}); delete {self.folder} to start again") from None
        bad = f"{where}: malformed manifest: "
        tail = f"; delete {self.folder} to start again"
        if not isinstance(m, dict):
            raise McrouteError(f"{bad}a JSON object is expected, got {type(m).__name__}{tail}")
        if "format" not in m:
            raise McrouteError(f"{where}: manifest of an older mcroute (pickled parts, which "
                               f"are never loaded){tail}")
        for key, typ in _MANIFEST_TYPES.items():
            if key not in m:
                raise McrouteError(f"{bad}key {key!r} is missing{tail}")
            val = m[key]
            if not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
                raise McrouteError(f"{bad}{key!r} must be {typ.__name__}, got "
                                   f"{type(val).__name__}{tail}")
        if m["format"] != PART_FORMAT:
            raise McrouteError(f"{bad}format {m['format']} (this mcroute reads "
                               f"{PART_FORMAT}){tail}")
        _check_manifest_entries(m, bad, tail)
        return m

    def _read_part(self, name: str, done: dict) -> xr.Dataset:
        """Checksum, parse and validate one part; raise _BadPart naming the problem."""
        entry = self.manifest["parts"][name]
        path = self.folder / name
        try:
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode):
                raise _BadPart("not a regular file")
            if st.st_size > MAX_PART_BYTES:
                raise _BadPart(f"{st.st_size} bytes, more than the {MAX_PART_BYTES} allowed")
            data = path.read_bytes()
        except OSError as exc:
            raise _BadPart(f"unreadable ({_short(exc)})") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry["sha256"]:
            raise _BadPart(f"checksum mismatch (SHA-256 {digest[:12]}…, the manifest recorded "
                           f"{entry['sha256'][:12]}…): the file is corrupt or truncated")
        try:
            ds = _decode_part(data)
        except Exception as exc:  # noqa: BLE001 - any parser failure means a bad file
            raise _BadPart(f"not a readable NetCDF part ({type(exc).__name__}: "
                           f"{_short(exc)})") from None
        self._check_part(ds, entry, done)
        return _normalize_part(ds)

    def _check_part(self, ds: xr.Dataset, entry: dict, done: dict) -> None:
        if ds.attrs.get("mcroute_part_format") != PART_FORMAT:
            raise _BadPart(f"attribute mcroute_part_format is "
                           f"{ds.attrs.get('mcroute_part_format')!r}, expected {PART_FORMAT}")
        if ds.attrs.get("spec_hash") != self.manifest["spec_hash"]:
            raise _BadPart("written for another spec (spec_hash attribute differs)")
        _check_schema(ds, self.manifest["schemas"][entry["schema"]])
        _check_dims(ds, self.spec.axis_names)
        _check_cells(ds, entry, done, self.spec.n_cells)

    # ---- writing
    def write(self, part: xr.Dataset) -> Path:
        """Encode and write one task's cells (see :meth:`add`)."""
        return self.add(*_encode_part(part, self.spec.spec_hash()))

    def add(self, ds: xr.Dataset, data: bytes, schema: dict) -> Path:
        """Write one encoded part atomically, then record it in the manifest (atomically)."""
        cells = [int(c) for c in ds["cell"].values]
        tag = hashlib.sha256(np.asarray(cells, dtype=np.int64).tobytes()).hexdigest()[:10]
        name = f"part-{min(cells):09d}-{tag}.nc"
        path = self.folder / name
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        schemas = self.manifest["schemas"]
        if schema not in schemas:
            schemas.append(schema)
        self.manifest["parts"][name] = {"sha256": hashlib.sha256(data).hexdigest(),
                                        "n_cells": len(cells), "schema": schemas.index(schema)}
        self._write_manifest()
        self.datasets[name] = ds
        return path

    def _write_manifest(self) -> None:
        text = json.dumps(self.manifest, separators=(",", ":"), sort_keys=True)
        with atomic_path(self.manifest_path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    def saved_cells(self) -> int:
        """Cells of the parts recorded in the manifest on disk (what a resume finds).

        The manifest on disk is the commit point: a part renamed into place but not yet
        recorded (an interruption between the two writes) is deleted on resume.
        """
        try:
            parts = json.loads(self.manifest_path.read_bytes().decode("utf-8"))["parts"]
            return sum(int(e["n_cells"]) for e in parts.values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return 0  # missing or malformed: nothing a resume would use

    def parts(self) -> list[Path]:
        """The part files recorded in the manifest, in name order."""
        return [self.folder / n for n in sorted(self.manifest.get("parts", {}))]

    def load(self) -> xr.Dataset:
        """All parts (validated on resume, or written by this run) concatenated on ``cell``."""
        parts = [self.datasets[n] for n in sorted(self.datasets)]
        if not parts:
            raise McrouteError(f"{self.folder}: no parts to merge")
        allds = parts[0] if len(parts) == 1 else xr.concat(parts, dim="cell", **_CONCAT)
        return allds.isel(cell=np.argsort(allds["cell"].values, kind="stable"))

    def remove(self) -> None:
        """Delete the folder (after the output is in place)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _short(exc, n: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= n else text[:n] + "…"


def _spec_difference(old: dict, new: dict, old_version) -> str:
    if old_version is not None and old_version != __version__:
        return f"parts written by mcroute {old_version}, this is {__version__}"
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{key}: {old.get(key)!r} then, {new.get(key)!r} now"
    return "unknown difference"  # pragma: no cover


def _check_manifest_entries(m: dict, bad: str, tail: str) -> None:
    """The manifest's ``schemas`` and ``parts`` entries are well formed."""
    for i, s in enumerate(m["schemas"]):
        if not isinstance(s, dict) or not all(
                isinstance(k, str) and isinstance(v, list) and len(v) == 2
                and isinstance(v[0], list) and all(isinstance(d, str) for d in v[0])
                and isinstance(v[1], str) for k, v in s.items()):
            raise McrouteError(f"{bad}schemas[{i}] must map variable names to "
                               f"[dims, dtype]{tail}")
    for name, e in m["parts"].items():
        if not _PART_NAME.fullmatch(name):
            raise McrouteError(f"{bad}part name {name!r} is not part-NNNNNNNNN-TAG.nc{tail}")
        if (not isinstance(e, dict) or set(e) != {"sha256", "n_cells", "schema"}
                or not isinstance(e["sha256"], str) or not _SHA256.fullmatch(e["sha256"])
                or any(isinstance(e[k], bool) or not isinstance(e[k], int)
                       for k in ("n_cells", "schema"))
                or e["n_cells"] < 1 or not 0 <= e["schema"] < len(m["schemas"])):
            raise McrouteError(f"{bad}entry of {name!r} must be {{'sha256': 64 hex digits, "
                               f"'n_cells': int >= 1, 'schema': index into schemas}}{tail}")


def _check_schema(ds: xr.Dataset, expected: dict) -> None:
    """The part holds exactly the manifest's variables, with their dims and dtype classes."""
    have = _part_schema(ds)
    for var in sorted(set(expected) - set(have)):
        raise _BadPart(f"variable {var!r} is missing")
    for var in sorted(set(have) - set(expected)):
        raise _BadPart(f"unexpected variable {var!r}")
    for var, (dims, cls) in expected.items():
        if have[var][0] != dims:
            raise _BadPart(f"variable {var!r} has dims {tuple(have[var][0])}, expected "
                           f"{tuple(dims)}")
        if have[var][1] != cls:
            raise _BadPart(f"variable {var!r} has dtype {ds[var].dtype}, expected {cls}")


def _check_dims(ds: xr.Dataset, axis_names: tuple) -> None:
    """A ``cell`` dim first in every variable; every dim a coordinate of unique finite values."""
    if "cell" not in ds.dims or "cell" not in ds.coords:
        raise _BadPart("no cell coordinate")
    for var, v in ds.data_vars.items():
        if not v.dims or v.dims[0] != "cell":
            raise _BadPart(f"variable {var!r} has dims {v.dims}; the first must be 'cell'")
    for dim in ds.dims:
        if dim in axis_names:
            raise _BadPart(f"dim {dim!r} is an axis of the sweep")
        if dim not in ds.coords:
            raise _BadPart(f"dim {dim!r} has no coordinate")
        c = ds[dim].values
        if c.dtype.kind == "f" and not np.isfinite(c).all():
            raise _BadPart(f"coordinate {dim!r} holds non-finite values")
        if len(np.unique(c)) != c.size:
            raise _BadPart(f"coordinate {dim!r} holds repeated values")


def _check_cells(ds: xr.Dataset, entry: dict, done: dict, n_cells: int) -> None:
    """Cell indices in range, as many as recorded, in no other part; attrs JSON objects."""
    cells = ds["cell"].values
    if cells.dtype.kind != "i":
        raise _BadPart(f"cell indices have dtype {cells.dtype}, expected integers")
    if cells.size != entry["n_cells"]:
        raise _BadPart(f"holds {cells.size} cells, the manifest recorded {entry['n_cells']}")
    if cells.size and (cells.min() < 0 or cells.max() >= n_cells):
        raise _BadPart(f"cell index out of range [0, {n_cells}): "
                       f"{int(cells.min())}..{int(cells.max())}")
    for c in cells:
        if int(c) in done:
            raise _BadPart(f"cell {int(c)} is also in {done[int(c)]}")
    if "cell_attrs" not in ds or ds["cell_attrs"].dims != ("cell",):
        raise _BadPart("variable 'cell_attrs' (dim cell) is missing")
    for s in ds["cell_attrs"].values:
        try:
            ok = isinstance(json.loads(str(s)), dict)
        except (ValueError, RecursionError):
            ok = False
        if not ok:
            raise _BadPart("cell_attrs must hold JSON objects")

"""Running a sweep: computing cells, in-process or on Dask, and merging them into one Dataset.

Each cell is seeded with :func:`~mcroute.sweeps.spec.cell_seed` and nothing else, so any subset
of cells, in any order, on any number of workers, gives the same numbers as the full run.
Finished cells go to the parts folder (:mod:`mcroute.sweeps.parts`) as they complete; at the end
the parts are merged into the full grid, the output is written atomically and only then is the
parts folder removed. Ctrl-C stops the sweep with :class:`SweepInterrupted`, which says how
many cells are saved for ``resume``. Dask (``distributed``) is imported only when asked for.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from mcroute._base.atomic import remove_stale_temporaries
from mcroute._base.validate import McrouteError
from mcroute._labeled.export import save_dataset
from mcroute._labeled.results import attr_value, provenance
from mcroute.sweeps.kinds import CELL_KINDS
from mcroute.sweeps.parts import _CONCAT, PartStore, _encode_part, _short
from mcroute.sweeps.spec import SweepSpec, _check_n_cells, cell_seed, load_sweep_spec

__all__ = ["SweepInterrupted", "dask_client", "run_sweep"]

#: Cell attrs that are not carried into the sweep's attrs (the sweep sets its own).
_OWN_ATTRS = {"mcroute_version", "created_at", "n_trials", "ci_prob", "seed"}


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C (or another KeyboardInterrupt) stopped a sweep; the finished cells are kept.

    Attributes
    ----------
    saved : int
        Cells saved in the parts folder (0 without an output file: the parts were temporary).
    total : int
        Cells of the grid.
    folder : pathlib.Path or None
        The parts folder ``resume`` continues from (None without an output file).
    """

    def __init__(self, saved: int, total: int, folder: Path | None) -> None:
        self.saved, self.total, self.folder = saved, total, folder
        if folder is None:
            text = (f"interrupted: {total} cells, none kept (no output file: the parts were "
                    "temporary)")
        elif saved == 0:
            text = (f"interrupted before any of the {total} cells was saved; nothing to "
                    "resume (run the sweep again)")
        else:
            text = (f"interrupted: {saved} of {total} cells saved in {folder}; run the same "
                    "command with --resume (resume=True) to continue")
        super().__init__(text)


# -- computing cells --------------------------------------------------------------------------
def _describe_cell(coords: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in coords.items()) or "the single cell"


def _compute_cell(spec: SweepSpec, index: int) -> tuple[xr.Dataset, dict]:
    """Run one cell; return its reduced Dataset (no axis coords) and its attrs."""
    kind = CELL_KINDS[spec.kind]
    coords = spec.cell_coords(index)
    try:
        ds = kind.run(spec.cell_params(index), rng=cell_seed(spec.seed, coords),
                      n_trials=spec.n_trials, ci_prob=spec.ci_prob, quantiles=spec.quantiles)
    except McrouteError as exc:
        raise McrouteError(f"cell {_describe_cell(coords)}: {exc}") from exc
    attrs = {k: attr_value(v) for k, v in ds.attrs.items()}
    if not spec.keep_trials and "trial" in ds.dims:
        ds = ds.drop_dims("trial")
    for name in spec.axis_names:
        if name in ds.dims:  # pragma: no cover - the kinds get scalars
            raise McrouteError(f"cell function returned a dim {name!r} named like an axis")
        if name in ds.coords:
            ds = ds.drop_vars(name)
        elif name in ds.data_vars:
            ds = ds.rename_vars({name: f"{name}_value"})
    ds.attrs = {}
    return ds, attrs


def _run_task(spec: SweepSpec, cells, on_cell=None) -> xr.Dataset:
    """Compute ``cells`` (flat indices) and stack them on a ``cell`` dim (one part file)."""
    results, attrs = [], []
    for i in cells:
        ds, a = _compute_cell(spec, int(i))
        results.append(ds)
        attrs.append(json.dumps(a, sort_keys=True, default=str))
        if on_cell is not None:
            on_cell(1)
    part = xr.concat(results, dim=pd.Index(np.asarray(cells, dtype=np.int64), name="cell"),
                     **_CONCAT)
    part["cell_attrs"] = ("cell", np.asarray(attrs, dtype=str), {"units": "1"})
    return part


def _worker_task(spec: SweepSpec, cells, numba_threads=None):
    """Entry point on Dask workers (module level, so Dask ships it by reference).

    Returns ``(dataset, data, schema)`` as :func:`_encode_part` does: the part is serialised
    to NetCDF on the worker, so the process that writes the files only hashes and writes bytes.

    ``numba_threads``: cap on the numba threads of this task's thread (local clusters run one
    single-threaded worker process per core, so 1 avoids oversubscription). The cap is set with
    ``numba.set_num_threads`` rather than the ``NUMBA_NUM_THREADS`` environment variable, which
    numba refuses to see change once its threads run. Results do not depend on it.
    """
    if numba_threads is not None:
        import numba

        numba.set_num_threads(max(1, min(int(numba_threads), numba.config.NUMBA_NUM_THREADS)))
    return _encode_part(_run_task(spec, cells), spec.spec_hash())


# -- merging ----------------------------------------------------------------------------------
def _merge(spec: SweepSpec, allds: xr.Dataset) -> xr.Dataset:
    """Reshape the ``cell`` dim of the concatenated parts into the grid of axes."""
    kind = CELL_KINDS[spec.kind]
    cells = allds["cell"].values
    if cells.size != spec.n_cells or np.any(cells != np.arange(spec.n_cells)):
        missing = sorted(set(range(spec.n_cells)) - set(int(c) for c in cells))
        raise McrouteError(f"the parts do not hold every cell exactly once (missing "
                           f"{len(missing)}, found {cells.size} of {spec.n_cells})")
    shape, names = spec.shape, spec.axis_names
    cell_attrs = [json.loads(s) for s in allds["cell_attrs"].values]
    allds = allds.drop_vars("cell_attrs")
    coords = {}
    for name, values in spec.axes:
        p = kind.param(name)
        arr = np.asarray(values, dtype=str if isinstance(values[0], str) else None)
        coords[name] = (name, arr, {"units": p.units, "long_name": p.doc})
    for name, c in allds.coords.items():
        if name == "cell":
            continue
        if "cell" in c.dims:  # a coordinate that differs between cells
            c = c.transpose("cell", ...)
            coords[name] = (names + c.dims[1:], c.values.reshape(shape + c.shape[1:]),
                            c.attrs)
        else:
            coords[name] = c.variable
    data = {}
    for name, v in allds.data_vars.items():
        v = v.transpose("cell", ...)
        data[name] = (names + v.dims[1:], v.values.reshape(shape + v.shape[1:]), v.attrs)
    seeds = np.array([cell_seed(spec.seed, spec.cell_coords(i)) for i in range(spec.n_cells)],
                     dtype=np.int64).reshape(shape)
    data["cell_seed"] = (names, seeds, {
        "units": "1", "long_name": "seed of the cell: rng= for the cell function repeats it"})
    ds = xr.Dataset(data, coords=coords)
    for v in ds.variables.values():
        v.encoding = {}
    common = dict(cell_attrs[0]) if cell_attrs else {}
    for a in cell_attrs[1:]:
        common = {k: v for k, v in common.items() if k in a and a[k] == v}
    common = {k: v for k, v in common.items() if k not in _OWN_ATTRS}
    ds.attrs = provenance(
        seed=spec.seed, n_trials=spec.n_trials, ci_prob=spec.ci_prob,
        sweep_kind=spec.kind, sweep_axes=list(names), sweep_spec=spec.to_dict(),
        sweep_spec_hash=spec.spec_hash(),
        **({"description": spec.description} if spec.description else {}), **common)
    return ds


# -- progress ---------------------------------------------------------------------------------
class _Progress:
    """A one-line progress bar on stderr: cells done, rate and time left."""

    def __init__(self, total: int, done: int, enabled: bool, stream=None):
        self.total, self.done, self.start_done = total, done, done
        self.enabled = enabled
        self.stream = sys.stderr if stream is None else stream
        self.t0 = time.perf_counter()
        self.last = 0.0
        self._draw(force=True)

    def advance(self, n: int) -> None:
        self.done += n
        self._draw()

    def _draw(self, force=False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self.last < 0.1 and self.done < self.total:
            return
        self.last = now
        width = 30
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        new, dt = self.done - self.start_done, now - self.t0
        if new > 0 and dt > 0:
            rate = new / dt
            left = _fmt_time((self.total - self.done) / rate)
            tail = f"{rate:.3g} cells/s, {left} left"
        else:
            tail = "estimating time left"
        self.stream.write(f"\rsweep [{bar}] {self.done}/{self.total} cells {frac:4.0%}  "
                          f"{tail}   ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()


def _fmt_time(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


# -- execution --------------------------------------------------------------------------------
def _tasks(remaining: list, per_task: int | None, n_workers: int) -> list:
    if per_task is None:
        # ~8 tasks per worker (load balance, little lost on interruption), capped so that a
        # task stays short; each task is one part file (one NetCDF write).
        per_task = max(1, min(256, math.ceil(len(remaining) / (8 * max(n_workers, 1)))))
    return [remaining[i:i + per_task] for i in range(0, len(remaining), per_task)]


@contextlib.contextmanager
def _workers_ignore_sigint():
    """Ignore SIGINT while a local cluster starts its worker processes, which inherit that.

    Ctrl-C in a terminal signals the whole process group; workers that ignore it keep quiet
    while this process cancels their tasks and closes the cluster. The handler of this process
    is restored once the workers run (a Ctrl-C during the few seconds of start-up is lost).
    Only the main thread may change signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@contextlib.contextmanager
def dask_client(workers, scheduler, client):
    """A Dask client: ``client`` itself, one connected to ``scheduler``, or a local cluster.

    A local cluster has ``workers`` single-threaded worker processes on the loopback interface;
    they ignore SIGINT, so Ctrl-C reaches this process alone (which cancels the tasks and
    closes the cluster) and no worker prints a traceback.
    """
    if client is not None:
        yield client
        return
    try:
        import distributed
    except ImportError:
        raise McrouteError("workers/scheduler need Dask: pip install 'mcroute[distributed]'"
                           ) from None
    import logging

    if scheduler is not None:
        c = distributed.Client(scheduler, timeout="30s")
        try:
            yield c
        finally:
            c.close()
        return
    # The scheduler always serves HTTP; dashboard_address=None still binds port 8787 (and warns
    # when it is taken), so bind a free port on the loopback interface instead.
    with _workers_ignore_sigint():
        cluster = distributed.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
    try:
        c = distributed.Client(cluster)
        try:
            yield c
        finally:
            c.close()
    finally:
        cluster.close()


def _run_dask(client, spec, tasks, store, progress, numba_threads=None) -> None:
    from distributed import as_completed

    remote_spec = client.scatter(spec, broadcast=True)
    futures = [client.submit(_worker_task, remote_spec, cells, numba_threads, pure=False)
               for cells in tasks]
    try:
        for fut in as_completed(futures):
            ds, data, schema = fut.result()
            store.add(ds, data, schema)
            progress.advance(ds.sizes["cell"])
            fut.release()
    finally:
        client.cancel(futures)


def _check_output(output) -> Path:
    """Validate the output path (extension, folder, writability) without creating anything."""
    if not isinstance(output, (str, os.PathLike)):
        raise McrouteError(f"output must be a path (str or os.PathLike), got "
                           f"{type(output).__name__}")
    output = Path(output)
    if output.suffix.lower() not in {".nc", ".csv", ".json"}:
        raise McrouteError(f"output must end in .nc, .csv or .json, got {str(output)!r}")
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        raise McrouteError(f"output folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise McrouteError(f"output folder {str(folder)!r} is not writable")
    try:
        st = os.stat(output)  # through a symbolic link: its target is what gets replaced
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise McrouteError(f"cannot write output {str(output)!r}: {exc.strerror}") from None
    else:
        if stat.S_ISDIR(st.st_mode):
            raise McrouteError(f"output {str(output)!r} is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise McrouteError(f"output {str(output)!r} is not a regular file (a device, FIFO "
                               "or socket); refusing to replace it")
    parts = output.with_name(output.name + ".parts")
    if parts.exists() and not parts.is_dir():
        raise McrouteError(f"{parts} exists and is not a folder of sweep parts; delete it")
    return output


def _finished_output(output: Path, spec: SweepSpec):
    """The finished ``.nc`` output of the same spec, or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with xr.open_dataset(output, engine="h5netcdf", decode_times=False,
                                 decode_timedelta=False) as old:
                if old.attrs.get("sweep_spec_hash") != spec.spec_hash():
                    return None
                return old.load()
    except Exception as exc:  # noqa: BLE001 - any parser failure means a bad file
        raise McrouteError(f"{output}: --resume cannot read the existing output "
                           f"({type(exc).__name__}: {_short(exc)}); move it away or run "
                           "without --resume") from None




def _check_where(workers, scheduler, client) -> int:
    """Check where the cells run; return how many of workers, scheduler, client are given."""
    n_dask = sum(x is not None for x in (workers, scheduler, client))
    if n_dask > 1:
        raise McrouteError("give at most one of workers, scheduler and client")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise McrouteError(f"workers must be an integer >= 1, got {workers!r}")
    if scheduler is not None and not isinstance(scheduler, str):
        raise McrouteError(f"scheduler must be an address string, got {scheduler!r}")
    if workers is not None or scheduler is not None:
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise McrouteError("workers/scheduler need Dask: pip install "
                               "'mcroute[distributed]'") from None
    return n_dask


def _check_resume(resume, recompute_bad, output) -> None:
    if not isinstance(resume, bool) or not isinstance(recompute_bad, bool):
        raise McrouteError("resume and recompute_bad must be true or false")
    if resume and output is None:
        raise McrouteError("resume needs an output path (its parts folder holds the cells)")
    if recompute_bad and not resume:
        raise McrouteError("recompute_bad (--recompute-bad) only applies with resume "
                           "(--resume)")


def _prepare_cells(spec: SweepSpec) -> None:
    """The kind's cheap check of every cell, before any file is created."""
    kind = CELL_KINDS[spec.kind]
    if kind.prepare is None:
        return
    for i in range(spec.n_cells):
        try:
            kind.prepare(spec.cell_params(i))
        except McrouteError as exc:
            raise McrouteError(f"{spec.source}: cell "
                               f"{_describe_cell(spec.cell_coords(i))}: {exc}") from None
        except (ValueError, TypeError, OverflowError, MemoryError) as exc:
            raise McrouteError(f"{spec.source}: cell {_describe_cell(spec.cell_coords(i))}"
                               f": {type(exc).__name__}: {_short(exc)}") from None


def _run_local(spec: SweepSpec, remaining: list, store: PartStore, show: bool) -> None:
    bar = _Progress(spec.n_cells, spec.n_cells - len(remaining), show)
    try:
        for cells in _tasks(remaining, spec.cells_per_task, 1):
            store.write(_run_task(spec, cells, on_cell=bar.advance))
    finally:
        bar.close()


def _run_on_dask(spec, remaining, store, show, where, numba_threads) -> None:
    workers, scheduler, client = where
    with dask_client(workers, scheduler, client) as c:
        n_workers = max(1, sum(c.nthreads().values()))
        bar = _Progress(spec.n_cells, spec.n_cells - len(remaining), show)  # cluster is up
        try:
            if numba_threads is None and workers is not None:
                numba_threads = 1
            _run_dask(c, spec, _tasks(remaining, spec.cells_per_task, n_workers), store, bar,
                      numba_threads=numba_threads)
        finally:
            bar.close()


def _is_interrupt(exc: BaseException) -> bool:
    """A KeyboardInterrupt, also one that arrived inside a numba kernel.

    Numba turns an exception set while its compiled code runs into a ``SystemError`` whose
    cause is the KeyboardInterrupt.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        if not isinstance(exc, SystemError):
            return False
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def run_sweep(spec, output=None, *, resume=False, workers=None, scheduler=None, client=None,
              progress=None, n_trials=None, numba_threads=None, recompute_bad=False):
    """:func:`mcroute.sweep` returning ``(dataset, info)``; info: cells, computed, resumed, seconds.

    ``numba_threads``: numba threads per Dask task (default 1 on a cluster started with
    ``workers``, else the workers' own setting). Everything is validated before the parts
    folder is created; a run that fails before writing any part removes the folder it created.
    A KeyboardInterrupt (Ctrl-C) while cells run becomes :class:`SweepInterrupted`, naming how
    many cells are saved.
    """
    spec = load_sweep_spec(spec)
    if n_trials is not None:
        spec = spec.with_trials(n_trials)
    _check_n_cells(spec.n_cells, spec.source)
    n_dask = _check_where(workers, scheduler, client)
    _check_resume(resume, recompute_bad, output)
    if output is not None:
        output = _check_output(output)
    _prepare_cells(spec)
    # -- validated: from here on files are created
    t0 = time.perf_counter()
    tmpdir = None
    if output is not None:
        folder = output.with_name(output.name + ".parts")
        remove_stale_temporaries(output)  # of a killed earlier write of the output
        if resume and not folder.exists() and output.suffix.lower() == ".nc" and output.exists():
            ds = _finished_output(output, spec)
            if ds is not None:
                return ds, {"cells": spec.n_cells, "computed": 0, "resumed": spec.n_cells,
                            "seconds": 0.0}
    else:
        tmpdir = tempfile.mkdtemp(prefix="mcroute-sweep-")
        folder = Path(tmpdir) / "parts"
    store = PartStore(folder)
    try:
        done = store.start(spec, resume, recompute_bad)
        remaining = [i for i in range(spec.n_cells) if i not in done]
        show = (_stderr_is_tty() if progress is None else bool(progress)) and bool(remaining)
        if n_dask == 0:
            _run_local(spec, remaining, store, show)
        elif remaining:
            _run_on_dask(spec, remaining, store, show, (workers, scheduler, client),
                         numba_threads)
        ds = _merge(spec, store.load())
        if output is not None:
            save_dataset(ds, output)
            store.remove()
    except BaseException as exc:
        saved = store.saved_cells()
        if store.created and saved == 0:  # nothing worth keeping: leave no debris
            store.remove()
        if _is_interrupt(exc) and not isinstance(exc, SweepInterrupted):
            raise SweepInterrupted(saved if tmpdir is None else 0, spec.n_cells,
                                   folder if tmpdir is None else None) from None
        raise
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    info = {"cells": spec.n_cells, "computed": len(remaining), "resumed": len(done),
            "seconds": time.perf_counter() - t0}
    return ds, info


def _stderr_is_tty() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())

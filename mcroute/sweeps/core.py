"""Parameter sweeps: a grid of cells from a TOML spec, run in-process or on Dask, resumable.

The public entry points :func:`sweep` and :func:`load_sweep_spec`; the rest lives in
:mod:`~mcroute.sweeps.params` (parameter types and the routing string),
:mod:`~mcroute.sweeps.kinds` (the built-in cell kinds), :mod:`~mcroute.sweeps.spec` (specs and
cell seeds), :mod:`~mcroute.sweeps.parts` (the checksummed parts folder) and
:mod:`~mcroute.sweeps.run` (execution and merging).

A sweep spec (docs/sweeps.md) names a cell *kind* (a labeled function), the *axes* of a grid
(parameter → list of values) and *fixed* settings. A *cell* is one point of the grid: the
kind's function is called once per cell with scalar axis values, its Dataset is reduced to the
summary variables and the cells are assembled into one Dataset with one dim per axis.

Reproducibility: each cell is seeded with :func:`cell_seed` ``(seed, coords)`` — a 63-bit
integer derived from the spec's ``seed`` and a SHA-256 of the cell's axis (name, value) pairs —
and nothing else, so any subset of cells, in any order, on any number of workers, gives the same
numbers as the full run.

Storage: completed cells are written, a task (a group of cells) at a time, as NetCDF part
files in ``<output>.parts/`` next to a ``manifest.json`` holding the hash of the spec and each
part's SHA-256. ``resume=True`` checks and skips the cells found there and refuses a different
spec. Nothing read from disk is ever unpickled. At the end the parts are merged into the full
grid, the output is written atomically and only then is the parts folder removed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import xarray as xr

from mcroute.sweeps.kinds import CELL_KINDS, register_cell_kind
from mcroute.sweeps.params import CellKind, Param
from mcroute.sweeps.run import SweepInterrupted, run_sweep
from mcroute.sweeps.spec import SweepSpec, cell_seed, load_sweep_spec

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping

    from distributed import Client

__all__ = ["CELL_KINDS", "CellKind", "Param", "SweepInterrupted", "SweepSpec", "cell_seed",
           "load_sweep_spec", "register_cell_kind", "sweep"]


def sweep(spec: SweepSpec | str | os.PathLike | Mapping, output: str | os.PathLike | None = None,
          *, resume: bool = False, workers: int | None = None, scheduler: str | None = None,
          client: Client | None = None, progress: bool | None = None, n_trials: int | None = None,
          recompute_bad: bool = False) -> xr.Dataset:
    """Run a parameter sweep: every cell of the spec's grid, in-process or on Dask.

    Parameters
    ----------
    spec : SweepSpec, str, os.PathLike or Mapping
        The sweep (see :func:`load_sweep_spec` and docs/sweeps.md).
    output : str or os.PathLike, optional
        Result file (``.nc``, ``.csv`` or ``.json``), written atomically at the end. Finished
        cells are kept in ``<output>.parts/`` while the sweep runs (removed after the output is
        in place). Without it the parts go to a temporary folder and only the Dataset is
        returned.
    resume : bool
        Continue an interrupted sweep: cells found in ``<output>.parts/`` are not recomputed.
        The spec (and ``n_trials``) must be the same; a different one is refused. Every part
        is checked (SHA-256 against the manifest, then its content) before use; a bad part is
        an error naming it.
    recompute_bad : bool
        With ``resume``: delete the parts that fail their check and compute their cells again.
    workers : int, optional
        Start a local Dask cluster of this many single-threaded worker processes.
    scheduler : str, optional
        Address of an existing Dask scheduler (its workers need mcroute installed).
    client : distributed.Client, optional
        An existing Dask client to use (not closed).
    progress : bool, optional
        Show a progress bar on stderr; default: only when stderr is a terminal.
    n_trials : int, optional
        Override the spec's ``n_trials``.

    Returns
    -------
    xarray.Dataset
        One dim per axis (in the spec's order, coordinates = the canonical axis values, with
        units), then each cell's own dims (``ci_bound``, ``quantile``, ``layer``, ``context``…).
        The cell function's summary variables (``<name>_mean``, ``_se``, ``_ci``, ``_q`` and
        the deterministic ones); per-trial variables only with ``keep_trials``; ``cell_seed``
        (axes): the seed that repeats a cell alone. Cells whose own dims are shorter than
        others' are padded with NaN. Attrs: provenance, ``sweep_spec`` (JSON),
        ``sweep_spec_hash``, ``sweep_kind``, ``sweep_axes``, and the cell attrs that are the
        same for every cell.

    Raises
    ------
    SweepInterrupted
        A KeyboardInterrupt (Ctrl-C) while cells run: a subclass of KeyboardInterrupt whose
        ``saved`` cells stay in ``<output>.parts/`` for ``resume=True``.

    Examples
    --------
    >>> import mcroute as mr
    >>> spec = {"kind": "simulate", "seed": 7, "n_trials": 32,
    ...         "axes": {"routing": ["uniform", "zipf:1.2"], "batch_size": [1, 16]},
    ...         "fixed": {"n_experts": 32, "top_k": 2}}
    >>> ds = mr.sweep(spec, progress=False)
    >>> dict(ds["active_experts_mean"].sizes)
    {'routing': 2, 'batch_size': 2, 'layer': 1}
    >>> float(ds["active_experts_mean"].sel(routing="uniform", batch_size=1).item())
    2.0
    """
    ds, _ = run_sweep(spec, output, resume=resume, workers=workers, scheduler=scheduler,
                      client=client, progress=progress, n_trials=n_trials,
                      recompute_bad=recompute_bad)
    return ds

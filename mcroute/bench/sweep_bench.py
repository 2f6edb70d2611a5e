"""``mcroute bench --sweep``: speed-up of a 2-worker local Dask cluster over in-process sweeps.

May import: everything below the CLI (``mcroute.sweeps``). Needs the ``distributed`` extra.

Both modes compute the same sweep (256 ``simulate`` cells) from the same process, interleaved
(three times each, or once with ``--quick``; the median ratio is reported), after a warm-up that
starts the cluster and compiles/imports everything in the workers; cluster start-up is not
timed. On a shared machine, other processes' load lowers the figure. Each time is the
wall-clock time of the whole :func:`mcroute.sweep` call (computing, writing the parts,
merging), and the results of the two modes are checked to be identical. Parts are NetCDF
files: in-process the one process encodes them; on Dask each worker encodes its own parts and
this process only checksums and writes the bytes.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

from mcroute._base.validate import McrouteError
from mcroute.sweeps.run import dask_client, run_sweep
from mcroute.sweeps.spec import load_sweep_spec

#: Target of the issue: >= 1.6x with 2 workers.
TARGET_SPEEDUP = 1.6


def bench_spec(quick: bool = False):
    """The benchmark sweep: 4 routings x 8 batch sizes x 2 expert counts x 4 device counts."""
    return load_sweep_spec({
        "kind": "simulate", "seed": 2024, "n_trials": 100 if quick else 200,
        "axes": {
            "routing": ["uniform", "zipf:0.8", "zipf:1.2", "lognormal:1.0"],
            "batch_size": [1, 2, 4, 8, 16, 32, 64, 128],
            "n_experts": [64, 128],
            "n_devices": [1, 2, 4, 8],
        },
        "fixed": {"top_k": 4, "n_layers": 4},
    })


def _identical(a: xr.Dataset, b: xr.Dataset) -> bool:
    a, b = a.copy(), b.copy()
    a.attrs.pop("created_at", None)
    b.attrs.pop("created_at", None)
    return a.identical(b)


def run(quick: bool = False, out=print) -> list[tuple[str, float, str, bool]]:
    """Run the sweep benchmark; print and return ``(name, value, target, met)`` per figure."""
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise McrouteError("bench --sweep needs Dask: pip install 'mcroute[distributed]'"
                           ) from None
    spec = bench_spec(quick)
    warm = load_sweep_spec({
        "kind": "simulate", "seed": 1, "n_trials": 32, "cells_per_task": 1,
        "axes": {"routing": ["uniform", "zipf:1.2", "lognormal:1.0"], "batch_size": [4, 16]},
        "fixed": {"n_experts": 64, "top_k": 4},
    })
    results = []

    def report(name, value, target_op, target, detail=""):
        met = value >= target if target_op == ">=" else True
        results.append((name, value, f"{target_op} {target:g}" if target_op else "", met))
        verdict = ("ok" if met else "MISSED") if target_op else ""
        tgt = f"target {target_op} {target:<5g}" if target_op else " " * 14
        out(f"{name:<48} {value:10.3f}  {tgt} {verdict}  {detail}".rstrip())

    reps = 1 if quick else 3
    t_local, t_dask, same = [], [], True
    with tempfile.TemporaryDirectory(prefix="mcroute-bench-") as tmp:
        with dask_client(2, None, None) as client:
            run_sweep(warm, progress=False)
            run_sweep(warm, client=client, progress=False, numba_threads=1)
            for r in range(reps):  # interleaved, so that a load change hits both alike
                t0 = time.perf_counter()
                local, _ = run_sweep(spec, Path(tmp) / f"local{r}.nc", progress=False)
                t_local.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                dask, _ = run_sweep(spec, Path(tmp) / f"dask{r}.nc", client=client,
                                    progress=False, numba_threads=1)
                t_dask.append(time.perf_counter() - t0)
                same = same and _identical(local, dask)
    n = spec.n_cells
    ratio = float(np.median(np.asarray(t_local) / np.asarray(t_dask)))
    tl, td = float(np.median(t_local)), float(np.median(t_dask))
    out(f"sweep of {n} simulate cells ({spec.n_trials} trials each), median of {reps} "
        f"interleaved run(s); results identical: {'yes' if same else 'NO'}")
    report("sweep speed-up, 2 Dask workers / in-process", ratio, ">=", TARGET_SPEEDUP,
           f"{tl:.2f} s vs {td:.2f} s")
    report("sweep cells/s in-process", n / tl, "", 0)
    report("sweep cells/s 2 local Dask workers", n / td, "", 0)
    if not same:
        raise McrouteError("bench --sweep: the Dask result differs from the in-process one")
    return results

"""``mcroute bench``: sampler benchmark (ratios measured side by side in one run)."""

from __future__ import annotations


def register(sub) -> None:
    """Add the ``bench`` subcommand."""
    p = sub.add_parser(
        "bench",
        help="measure sampler speed against NumPy, the RNG floor, threads and count-space",
        description="Prints one figure per line: name, measured ratio, target, ok/MISSED.",
    )
    p.add_argument("--quick", action="store_true", help="fewer and smaller repetitions")
    p.add_argument("--sweep", action="store_true",
                   help="instead: speed-up of a 2-worker local Dask cluster over in-process "
                   "sweeps, and cells per second (needs the 'distributed' extra)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``mcroute bench``."""
    if getattr(args, "sweep", False):
        from ._sweep_bench import run as run_sweep_bench

        run_sweep_bench(quick=args.quick)
        return 0
    from ._bench import run as run_bench

    run_bench(quick=args.quick)
    return 0

"""``mcroute bench``: sampler and cost-model benchmark (ratios measured side by side in one run)."""

from __future__ import annotations

from mcroute._base.validate import McrouteError


def register(sub) -> None:
    """Add the ``bench`` subcommand."""
    p = sub.add_parser(
        "bench",
        help="measure sampler speed against NumPy, the RNG floor, threads and count-space, "
        "and the calibrated cost model against the roofline path",
        description="Prints one figure per line: name, measured ratio, target, ok/MISSED.",
    )
    p.add_argument("--quick", action="store_true", help="fewer and smaller repetitions")
    p.add_argument("--sweep", action="store_true",
                   help="instead: speed-up of a 2-worker local Dask cluster over in-process "
                   "sweeps, and cells per second (needs the 'distributed' extra)")
    p.add_argument("--answers", action="store_true",
                   help="instead: how fast answers come (a dense decode_throughput point and "
                   "qs_analysis against their bare arithmetic, cold start, import, caching)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``mcroute bench``."""
    if args.sweep and args.answers:
        raise McrouteError("--sweep and --answers are separate benchmarks: give one")
    if args.answers:
        from mcroute.bench.core import run_answers

        run_answers(quick=args.quick)
        return 0
    if args.sweep:
        from mcroute.bench.sweep_bench import run as run_sweep_bench

        run_sweep_bench(quick=args.quick)
        return 0
    from mcroute.bench.core import run as run_bench

    run_bench(quick=args.quick)
    return 0

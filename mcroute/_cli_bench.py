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
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``mcroute bench``."""
    from ._bench import run as run_bench

    run_bench(quick=args.quick)
    return 0

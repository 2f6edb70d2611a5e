"""``mcroute sweep``: run a parameter sweep from a TOML spec (docs/sweeps.md).

May import: the front-end ``mcroute.sweeps`` package, the floors below, ``mcroute.cli.common``.
"""

from __future__ import annotations

import sys

from mcroute._base.validate import McrouteError
from mcroute.cli.common import is_tty, parse_int, refuse_renamed

#: Most local Dask worker processes ``--workers`` starts (each is a Python process with its own
#: memory; more than this is a typo, not a cluster; use --scheduler for a real cluster).
MAX_WORKERS = 1024
#: Exit status after Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130


def register(sub) -> None:
    """Add the ``sweep`` subcommand."""
    p = sub.add_parser(
        "sweep",
        help="run a grid of simulations / throughput / qs analyses from a TOML spec",
        description="Run every cell of the grid named by SPEC (a TOML file; format in "
        "docs/sweeps.md) and write one Dataset with a dim per swept axis. Finished cells are "
        "kept in OUTPUT.parts/ while it runs, so an interrupted sweep continues with "
        "--resume. Each cell's random stream comes from the spec's seed and the cell's "
        "coordinates only, so the result does not depend on how or where cells run.",
    )
    p.add_argument("spec", help="sweep spec (.toml)")
    p.add_argument("--output", required=True, metavar="FILE",
                   help="result file: .nc (NetCDF), .csv (tidy) or .json")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", default=None, metavar="N",
                       help="start a local Dask cluster with N worker processes, 1..1024 "
                       "(needs the 'distributed' extra)")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="send cells to the Dask scheduler at ADDRESS (e.g. "
                       "tcp://10.0.0.1:8786); its workers need mcroute installed")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted sweep: check the parts in OUTPUT.parts/ "
                   "(checksums, then content) and skip their cells")
    p.add_argument("--recompute-bad", action="store_true",
                   help="with --resume: delete parts that fail their check and compute their "
                   "cells again (default: a bad part is an error naming it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument("-n", "--n-trials", default=None, metavar="N",
                   help="override the spec's n_trials")
    refuse_renamed(p, "--trials")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``mcroute sweep``."""
    # Loaded here, not at the top: the cell kinds import every labeled function, which would
    # slow down ``mcroute --help`` (front ends may load a command's modules lazily).
    from mcroute.sweeps.run import SweepInterrupted, run_sweep
    from mcroute.sweeps.spec import load_sweep_spec

    if args.recompute_bad and not args.resume:
        raise McrouteError("--recompute-bad needs --resume")
    workers = None if args.workers is None else parse_int(args.workers, "--workers", 1,
                                                          MAX_WORKERS)
    trials = None if args.n_trials is None else parse_int(args.n_trials, "--n-trials", 2)
    spec = load_sweep_spec(args.spec)
    try:
        ds, info = run_sweep(spec, args.output, resume=args.resume, workers=workers,
                             scheduler=args.scheduler, progress=not args.quiet and is_tty(),
                             n_trials=trials, recompute_bad=args.recompute_bad)
    except SweepInterrupted as exc:  # Ctrl-C: one line, how many cells are saved, exit 130
        print(f"mcroute sweep: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:  # while the cells were checked, before any file was created
        print("mcroute sweep: interrupted before any cell was computed", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not args.quiet:
        dims = " x ".join(f"{n} {len(ds[n])}" for n in spec.axis_names) or "1 cell"
        print(f"sweep {spec.kind}: {info['cells']} cells ({dims}), {info['computed']} "
              f"computed, {info['resumed']} resumed, in {info['seconds']:.1f} s; seed "
              f"{spec.seed}; wrote {args.output}", file=sys.stderr)
    return 0

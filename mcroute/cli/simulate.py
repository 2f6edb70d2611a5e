"""``mcroute simulate``: routing fragmentation statistics over batch sizes.

May import: every floor below (front end); ``mcroute.cli.common``.
"""

from __future__ import annotations

from mcroute._base.validate import (
    MAX_BATCH_SIZE,
    MAX_CAPACITY_FACTOR,
    MAX_EXPERTS,
    MAX_LAYERS,
    check_int,
    check_prob,
)
from mcroute._labeled.simulate import simulate
from mcroute.cli.common import (
    ROUTING_HELP,
    check_output_path,
    parse_int,
    parse_int_list,
    parse_real,
    parse_routing,
    refuse_renamed,
    write_output,
)
from mcroute.cli.output import Column, Est, Printer, add_output_flags, fmt_value

#: Columns of the printed table: (variable, header).
_SHOWN = [
    ("active_experts", "active experts"),
    ("tokens_per_active_expert", "tokens/expert"),
    ("max_device_load", "max dev load"),
    ("device_imbalance", "dev imbalance"),
]


def register(sub) -> None:
    """Add the ``simulate`` subcommand."""
    p = sub.add_parser(
        "simulate",
        help="Monte Carlo of expert routing in decode microbatches",
        description="Draw token-to-expert routing for decode microbatches and report distinct "
        "experts touched, weight reuse and per-device load, with confidence intervals of the "
        "mean and 5-95%% bands of single microbatches.",
    )
    p.add_argument("-E", "--n-experts", required=True, metavar="E",
                   help="routed experts per layer")
    p.add_argument("-k", "--top-k", required=True, metavar="K", help="experts per token")
    p.add_argument("-b", "--batch-size", default="1,8,64,512,4096", metavar="B[,B...]",
                   help="comma-separated batch sizes (tokens per microbatch), e.g. 1,8,64,4k "
                   "(default 1,8,64,512,4096)")
    p.add_argument("-r", "--routing", default="uniform",
                   help=ROUTING_HELP + " (default uniform)")
    p.add_argument("-n", "--n-trials", default="2000", metavar="N",
                   help="microbatches per batch size (default 2000)")
    p.add_argument("--n-layers", default="1", metavar="L",
                   help="MoE layers per microbatch (default 1)")
    p.add_argument("--n-devices", default="1", metavar="D",
                   help="devices for expert parallelism (default 1)")
    p.add_argument("--capacity-factor", default="1.0",
                   help="expert capacity factor for the overflow fraction, in (0, "
                   f"{MAX_CAPACITY_FACTOR:g}] (default 1.0)")
    p.add_argument("--method", default="auto", choices=["auto", "assignment", "counts"],
                   help="sampling method (default auto)")
    p.add_argument("--ci-prob", default=0.95, type=float, help="confidence level (default 0.95)")
    p.add_argument("-s", "--seed", default=None, help="seed (default: fresh entropy, printed)")
    p.add_argument("-o", "--output", default=None,
                   help="write results to FILE.nc, .csv or .json")
    add_output_flags(p)
    refuse_renamed(p, "--experts", "--batch", "--trials", "--layers", "--devices")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``mcroute simulate``."""
    check_output_path(args.output)
    e = parse_int(args.n_experts, "--n-experts", minimum=1, maximum=MAX_EXPERTS)
    k = check_int("--top-k", parse_int(args.top_k, "--top-k"), minimum=1, maximum=e)
    routing = parse_routing(args.routing, e, k)
    batches = parse_int_list("--batch-size", args.batch_size, maximum=MAX_BATCH_SIZE)
    trials = parse_int(args.n_trials, "--n-trials", minimum=2)
    layers = parse_int(args.n_layers, "--n-layers", minimum=1, maximum=MAX_LAYERS)
    devices = parse_int(args.n_devices, "--n-devices", minimum=1, maximum=MAX_EXPERTS)
    ci_prob = check_prob("--ci-prob", args.ci_prob)
    cf = parse_real(args.capacity_factor, "--capacity-factor", minimum=0.0,
                    maximum=MAX_CAPACITY_FACTOR, open_min=True)
    seed = None if args.seed is None else parse_int(args.seed, "--seed", minimum=0)
    ds = simulate(routing, batches, trials, layers, devices, rng=seed, ci_prob=ci_prob,
                  capacity_factor=cf, method=args.method)
    out = Printer(args)
    out.line(f"{routing!r}, {trials} trials, {layers} layer(s), {devices} device(s), "
             f"seed {ds.attrs['seed']}")
    out.line(f"mean [{ci_prob:.0%} CI of the mean]; p5-p95 of single microbatches"
             + (" (mean over layers)" if layers > 1 else ""))
    columns = [Column("batch_size", "batch", "int")]
    for name, header in _SHOWN:
        columns += [Column(name, header, band=False),
                    Column(f"{name}_band", "p5-p95", "text", drop=1, machine=False)]
    rows = []
    for b in ds["batch_size"].values:
        sel = ds.sel(batch_size=b).mean("layer")
        row = {"batch_size": int(b)}
        for name, _ in _SHOWN:
            lo, hi = (float(x) for x in sel[f"{name}_ci"].values)
            q = sel[f"{name}_q"]
            p5, p95 = float(q.isel(quantile=0)), float(q.isel(quantile=-1))
            row[name] = Est(float(sel[f"{name}_mean"]), lo, hi, p5, p95)
            row[f"{name}_band"] = f"{fmt_value(p5)}-{fmt_value(p95)}"
        rows.append(row)
    out.table(columns, rows)
    out.close()
    if args.output:
        write_output(ds, args.output, quiet=args.quiet)
    return 0



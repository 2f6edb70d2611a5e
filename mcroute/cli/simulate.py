"""``mcroute simulate``: routing fragmentation statistics over batch sizes.

May import: every floor below (front end); ``mcroute.cli.common``.
"""

from __future__ import annotations

from mcroute._base.validate import check_int
from mcroute._labeled.options import SIMULATE_OPTIONS
from mcroute._labeled.simulate import simulate
from mcroute.cli.common import check_output_path, parse_routing, refuse_renamed, write_output
from mcroute.cli.deployment import add_option_flags, option_values
from mcroute.cli.output import Column, Est, Printer, add_output_flags, fmt_value

#: Columns of the printed table: (variable, header).
_SHOWN = [
    ("active_experts", "active experts"),
    ("tokens_per_active_expert", "tokens/expert"),
    ("max_device_load", "max dev load"),
    ("device_imbalance", "dev imbalance"),
]


#: The command's defaults where they differ from the API's (mcroute._labeled.options).
_CLI_DEFAULTS = {"batch_size": "1,8,64,512,4096", "n_trials": 2000}


def register(sub) -> None:
    """Add the ``simulate`` subcommand (its flags generated from SIMULATE_OPTIONS)."""
    p = sub.add_parser(
        "simulate",
        help="Monte Carlo of expert routing in decode microbatches",
        description="Draw token-to-expert routing for decode microbatches and report distinct "
        "experts touched, weight reuse and per-device load, with confidence intervals of the "
        "mean and 5-95%% bands of single microbatches.",
    )
    add_option_flags(p, SIMULATE_OPTIONS, defaults=_CLI_DEFAULTS,
                     notes={"seed": "default: fresh entropy, printed",
                            "batch_size": "comma-separated, e.g. 1,8,64,4k"})
    p.add_argument("-o", "--output", default=None,
                   help="write results to FILE.nc, .csv or .json")
    add_output_flags(p)
    refuse_renamed(p, "--experts", "--batch", "--trials", "--layers", "--devices")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``mcroute simulate``."""
    check_output_path(args.output)
    v = option_values(args, SIMULATE_OPTIONS)  # each checked against its declaration
    e = v["n_experts"]
    k = check_int("--top-k", v["top_k"], minimum=1, maximum=e)
    routing = parse_routing(v["routing"], e, k)
    trials, layers, devices, ci_prob = (v[n] for n in ("n_trials", "n_layers", "n_devices",
                                                       "ci_prob"))
    ds = simulate(routing, v["batch_size"], trials, layers, devices, rng=v["seed"],
                  ci_prob=ci_prob, capacity_factor=v["capacity_factor"], method=v["method"])
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



"""``mcroute throughput``: decode throughput of a model on a GPU deployment, with intervals.

Front end (5). May import: every floor below; ``mcroute.cli`` helpers.
"""

from __future__ import annotations

import sys

from mcroute._base.validate import McrouteError
from mcroute._cards.cards import load_hardware, load_model
from mcroute._cost.deployment import DEPLOYMENT_OPTIONS, Deployment
from mcroute._labeled.options import THROUGHPUT_OPTIONS
from mcroute._labeled.throughput import decode_throughput
from mcroute.cli.common import (
    check_input_path,
    check_output_path,
    is_tty,
    name_flags,
    parse_int,
    parse_routing,
    refuse_renamed,
    write_output,
)
from mcroute.cli.deployment import (
    FLAG_NAMES,
    add_deployment_flags,
    add_option_flags,
    batch_policy_flags,
    deployment_flags,
    flag_spec,
    kernels_line,
    option_values,
    placement_error,
)
from mcroute.cli.output import Column, Est, Printer, add_output_flags, fmt_tokens

_OPT = {o.name: o for o in DEPLOYMENT_OPTIONS}
#: Help of the flags whose declared default means "resolved": what it resolves to.
_NOTES = {"routing": "default: the model card's routing (uniform, group-limited for "
                     "DeepSeek-V2/V3)",
          "seed": "default: fresh entropy, printed",
          "batch_per_gpu": "batch = B x --n-gpus"}


def register(sub) -> None:
    """Add the ``throughput`` subcommand."""
    p = sub.add_parser(
        "throughput",
        help="decode throughput of a model on N GPUs (calibrated kernels + routing Monte "
        "Carlo, with the roofline bound)",
        description="Decode step time and throughput of MODEL served on --n-gpus GPUs of "
        "--hardware, at each --context, with the batch the KV cache admits (or --batch-size, "
        "--batch-per-gpu, --tpot), by Monte Carlo over expert routing. The estimate uses "
        "kernel efficiencies fitted on measured kernels (--kernels calibrated, the default); "
        "the roofline bound from the same sampled routing is printed beside it. Every "
        "modelling assumption is an option; see docs/assumptions.md. Infeasible points are "
        "reported with the reason.",
    )
    p.add_argument("model", help="model card name (e.g. deepseek-v3), a .toml card, or a "
                   "Hugging Face config.json (or its folder)")
    for name in ("hardware", "n_gpus"):  # required here; spelled as declared
        names, kw = flag_spec(_OPT[name])
        p.add_argument(*names, **kw, required=True)
    add_option_flags(p, THROUGHPUT_OPTIONS, defaults={"context": "4k,32k,128k"},
                     notes=_NOTES)
    add_deployment_flags(p)
    p.add_argument("-o", "--output", default=None,
                   help="write results to FILE.nc, .csv or .json")
    add_output_flags(p)
    refuse_renamed(p, "--gpus", "--batch", "--trials", "--attention")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``mcroute throughput``."""
    check_output_path(args.output)
    check_input_path("MODEL", args.model)
    check_input_path("--hardware", args.hardware)
    model = load_model(args.model)
    hardware = load_hardware(args.hardware)
    gpus = parse_int(args.n_gpus, "--n-gpus", 1, int(_OPT["n_gpus"].maximum))
    v = option_values(args, THROUGHPUT_OPTIONS)  # each checked against its declaration
    policy = batch_policy_flags(v)
    options = deployment_flags(args)
    try:
        dep = Deployment(model, hardware, gpus, **options)
    except McrouteError as exc:
        raise placement_error(exc, args) from None
    routing = None
    if model.is_moe:
        routing = (model.default_routing() if v["routing"] is None
                   else parse_routing(v["routing"], model.n_experts, model.top_k))
    elif v["routing"] is not None and str(v["routing"]).strip().lower() != "uniform":
        raise McrouteError(f"--routing: model {model.name!r} is dense (no routed experts)")
    show = is_tty() and not args.quiet

    def progress(frac):
        print(f"\r  {frac:6.1%} of trials", end="", file=sys.stderr, flush=True)

    batch, trials, ci_prob = v["batch_size"], v["n_trials"], v["ci_prob"]
    ds = decode_throughput(dep, v["context"], batch, routing, trials, rng=v["seed"],
                           ci_prob=ci_prob, method=v["method"],
                           progress=progress if show else None, **policy)
    if show:
        print("\r" + " " * 20 + "\r", end="", file=sys.stderr, flush=True)
    out = Printer(args)
    _print(out, ds, dep, routing, trials, ci_prob,
           batch == "max" and "batch_per_gpu" not in policy)
    out.close()
    if args.output:
        write_output(ds, args.output, quiet=args.quiet)
    return 0


#: The printed table: step time with its p5-p95 band, throughput with the interval of its mean,
#: the roofline bound of the same steps; bound, tok/s/GPU and bytes are hidden first to fit.
_COLUMNS = [
    Column("context", "context", "tokens"),
    Column("batch_size", "batch", "int"),
    Column("step_time_ms", "step [ms]"),
    Column("throughput", "tok/s [CI]", "rate"),
    Column("throughput_bound", "bound", "rate", drop=2),
    Column("accepted_tokens", "acc/step", "ratio"),
    Column("throughput_per_gpu", "tok/s/GPU", "rate", drop=3),
    Column("gb_per_step", "GB/step W+KV", "text", drop=1, machine=False),
    Column("weight_gb_per_step", "weight GB/step", shown=False),
    Column("kv_gb_per_step", "KV GB/step", shown=False),
    Column("limit", "limit", "text"),
    Column("feasible", "feasible", "text", shown=False),  # True or False
    Column("reason", "reason", "text", shown=False),
]


def _row(sel, c, mtp: bool) -> dict:
    """One table row (a dict keyed by column) of the point ``sel``."""
    batch = int(sel["batch_size"])
    row = {"context": int(c), "batch_size": batch or None, "feasible": True}
    if not bool(sel["feasible"]):
        row.update(step_time_ms="infeasible", feasible=False, reason=str(sel["reason"].values))
        return row
    step = sel["step_time_q"].values * 1e3
    lo, hi = (float(x) for x in sel["throughput_ci"].values)
    w_gb = float(sel["weight_bytes_per_step_mean"]) / 1e9
    kv_gb = float(sel["kv_bytes_per_step"]) / 1e9
    row.update(
        step_time_ms=Est(float(sel["step_time_mean"]) * 1e3, p5=float(step[0]),
                         p95=float(step[-1])),
        throughput=Est(float(sel["throughput_mean"]), lo, hi),
        throughput_bound=float(sel["throughput_bound_mean"]),
        throughput_per_gpu=float(sel["throughput_per_gpu_mean"]),
        gb_per_step=f"{w_gb:.4g}+{kv_gb:.3g}", weight_gb_per_step=w_gb,
        kv_gb_per_step=kv_gb, limit=str(sel["bound"].values),
    )
    if mtp:
        row["accepted_tokens"] = float(sel["accepted_tokens_mean"])
    return row


def _print(out, ds, dep, routing, trials, ci_prob, b_max_mode) -> None:
    what = repr(routing) if routing is not None else "dense model (no routing)"
    out.line(f"{dep.model.name} on {dep.n_gpus} x {dep.hardware.name}, weights "
             f"{dep.weight_dtype}, KV {dep.kv_dtype}; {what}; {trials} trials, seed "
             f"{ds.attrs['seed']}")
    out.line(kernels_line(ds, ci_prob))
    out.line(f"weights {dep.weight_bytes_per_gpu / 1e9:.4g} GB on the fullest GPU of "
             f"{dep.usable_bytes_per_gpu / 1e9:.4g} GB usable"
             + (f"; target TPOT {float(ds.attrs['tpot']) * 1e3:.4g} ms" if "tpot" in ds.attrs
                else ""))
    out.line("step: mean (p5-p95 of single steps); tok/s: mean [CI of the mean]; bound: "
             "roofline tok/s\nof the same sampled steps (an upper bound); limit: the larger "
             "roofline term")
    mtp = bool(int(getattr(dep, "mtp_depth", 0) or 0))
    flat = ds
    for dim in ("context", "batch_size"):
        if dim not in flat.dims and dim in flat.coords:
            flat = flat.expand_dims(dim)
    if b_max_mode:
        points = [(c, None) for c in flat["context"].values]
    else:
        points = [(c, b) for c in flat["context"].values for b in flat["batch_size"].values]
    rows = []
    for c, b in points:
        sel = flat.sel(context=c) if b is None else flat.sel(context=c, batch_size=b)
        rows.append(_row(sel, c, mtp))
    out.table([col for col in _COLUMNS if mtp or col.key != "accepted_tokens"], rows)
    for r in rows:
        if not r["feasible"]:
            where = f"context {fmt_tokens(r['context'])}" + (
                f", batch {r['batch_size']}" if r["batch_size"] else "")
            out.line(f"infeasible: {where}: {name_flags(r['reason'], FLAG_NAMES)}")
    for c, flag in zip(flat["context"].values, flat["exceeds_max_context"].values, strict=True):
        if flag:
            out.line(f"note: context {fmt_tokens(c)} exceeds the model's max_context "
                     f"{fmt_tokens(dep.model.max_context)}")

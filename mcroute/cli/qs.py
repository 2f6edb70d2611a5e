"""``mcroute qs``: the MoE's decode penalty against its quality-matched dense twin.

With no model: the paper's four models (DeepSeek-V3, Qwen3-235B-A22B, Grok-1, Switch-C) on the
documented default deployment (``PAPER_CASES``), contexts 4k → 128k. This is the README's
main job.

Front end (5). May import: every floor below; ``mcroute.cli`` helpers.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import xarray as xr

from mcroute._base.validate import MAX_Q, McrouteError
from mcroute._cards.cards import load_hardware, load_model
from mcroute._cost.deployment import DEPLOYMENT_OPTIONS
from mcroute._labeled.options import QS_OPTIONS
from mcroute._labeled.qs import (
    PAPER_CASES,
    PAPER_CONTEXTS,
    PAPER_GPUS,
    PAPER_HARDWARE,
    default_q,
    qs_analysis,
)
from mcroute._quality.quality import as_q, parse_q
from mcroute.cli.common import (
    check_input_path,
    check_output_path,
    parse_int,
    parse_real,
    parse_routing,
    refuse_renamed,
    write_output,
)
from mcroute.cli.deployment import (
    add_deployment_flags,
    add_option_flags,
    deployment_flags,
    flag_spec,
    kernels_line,
    option_values,
    placement_error,
)
from mcroute.cli.output import Column, Est, Printer, add_output_flags, fmt_tokens, fmt_value

_OPT = {o.name: o for o in DEPLOYMENT_OPTIONS}
#: The command's defaults where they differ from the API's (mcroute._labeled.options): the
#: paper's contexts written as typed, fewer trials per context, a fixed seed.
_DEFAULT_CONTEXTS = "4k,8k,16k,32k,64k,128k"
_CLI_DEFAULTS = {"context": _DEFAULT_CONTEXTS, "n_trials": 400, "seed": 0}
#: Help of the flags whose declared default means "resolved": what it resolves to.
_NOTES = {"q": "lognormal:MEDIAN,SIGMA, uniform:LO,HI, estimate, ...; default: benchmark "
               "estimate, else scaling law",
          "routing": "default: the model card's routing (uniform, group-limited for "
                     "DeepSeek-V2/V3)",
          "dense_style": "widen: same attention and KV"}


def register(sub) -> None:
    """Add the ``qs`` subcommand."""
    p = sub.add_parser(
        "qs",
        help="MoE vs quality-matched dense twin: decode penalty with intervals",
        description="Decode throughput of a Mixture-of-Experts model against a dense model of "
        "q x its active parameters, with confidence intervals from the routing Monte Carlo, "
        "the kernel calibration and the uncertainty of q; the penalty under the roofline "
        "bound is printed beside it. Without MODEL: the paper's four models on 8 x H200.",
    )
    p.add_argument("model", nargs="?", help="MoE model card name, .toml card or config.json "
                   "(default: the paper's four models)")
    for name, default in (("hardware", "h200"), ("n_gpus", "8")):  # spelled as declared
        names, kw = flag_spec(_OPT[name])
        p.add_argument(*names, **(kw | {"help": f"{kw['help']} (default {default})"}))
    add_option_flags(p, QS_OPTIONS, defaults=_CLI_DEFAULTS, notes=_NOTES)
    add_deployment_flags(p)
    p.add_argument("-o", "--output", default=None,
                   help="write results to FILE.nc, .csv or .json")
    add_output_flags(p)
    refuse_renamed(p, "--gpus", "--dense-gpus", "--trials", "--q-samples", "--attention")
    p.set_defaults(func=run)


def _est(c, name, band: bool = False):
    """An estimate of a summarised variable (mean, interval, p5-p95 of single steps)."""
    m = float(c[f"{name}_mean"])
    if np.isnan(m):
        return None
    lo, hi = (float(x) for x in c[f"{name}_ci"].values)
    if not band:
        return Est(m, lo, hi)
    q = c[f"{name}_q"].values
    return Est(m, lo, hi, float(q[0]), float(q[-1]))


def _columns(ci_prob) -> list:
    """The printed table (bound, reuse and B ratio are hidden first to fit)."""
    return [
        Column("model", "model", "text", shown=False),
        Column("context", "context", "tokens"),
        Column("moe_batch_size", "MoE B", "int"),
        Column("dense_batch_size", "dense B", "int"),
        Column("moe_throughput", "MoE tok/s", "rate"),
        Column("dense_throughput", "dense tok/s", "rate"),
        Column("penalty", f"penalty [{ci_prob:.0%} CI] (p5-p95)", "ratio"),
        Column("penalty_bound", "bound", "ratio", drop=2),
        Column("reuse_penalty", "reuse", "ratio", drop=1),
        Column("batch_ratio", "B ratio", "ratio", drop=3),
        Column("moe_feasible", "MoE feasible", "text", shown=False),
        Column("dense_feasible", "dense feasible", "text", shown=False),
        Column("s", "s", shown=False),
        Column("q", "q", shown=False),
        Column("qs", "q*s", shown=False),
    ]


def _case_row(c, L) -> dict:
    """One context of one model as a table row."""
    moe_ok = bool(c["moe_feasible"])
    dense_ok = bool(np.all(c["dense_feasible"].values))
    db = c["dense_batch_size"].values

    def mean(name):
        v = float(c[f"{name}_mean"])
        return None if np.isnan(v) else v

    return {
        "context": int(L), "moe_feasible": moe_ok, "dense_feasible": dense_ok,
        "moe_batch_size": int(c["moe_batch_size"]) if moe_ok else None,
        "dense_batch_size": int(np.median(db)) if dense_ok else None,
        "moe_throughput": float(c["moe_throughput_mean"]) if moe_ok else None,
        "dense_throughput": float(c["dense_throughput_mean"]) if dense_ok else None,
        "penalty": _est(c, "penalty", band=not np.isnan(c["penalty_q"].values).all()),
        "penalty_bound": mean("penalty_bound"), "reuse_penalty": mean("reuse_penalty"),
        "batch_ratio": (float(np.nanmean(c["capacity_penalty"].values))
                        if moe_ok and dense_ok else None),
    }


def _print_case(out, ds, name, q_note, dep_note, ci_prob=0.95) -> None:
    s = float(ds["s"])
    qs = float(ds["qs_mean"]) if "qs_mean" in ds else float(ds["qs"])
    qv = float(ds["q_mean"]) if "q_mean" in ds else float(ds["q"])
    moe_min = int(ds["moe_min_gpus"])
    out.line(f"\n== {name}: s = {s:.4f}, q = {qv:.3g}, q·s = {qs:.3g} "
             f"({'< 1: MoE structurally disadvantaged' if qs < 1 else '>= 1'})")
    out.line(f"   q: {q_note}")
    out.line(f"   {dep_note}")
    out.line(f"   MoE needs >= {moe_min if moe_min > 0 else 'none of 1..4096'} GPUs at the "
             "longest context")
    out.line(f"   {kernels_line(ds, ci_prob)}")
    rows, notes = [], {}
    for L in np.atleast_1d(ds["context"].values):
        c = ds.sel(context=L) if ds["context"].ndim else ds
        row = _case_row(c, L)
        row.update(model=name, s=s, q=qv, qs=qs)
        if not row["moe_feasible"]:
            key = "MoE infeasible" + ("" if not row["dense_feasible"] else "; dense twin fits")
            notes.setdefault(key, []).append(fmt_tokens(L))
        elif not row["dense_feasible"]:
            notes.setdefault("dense twin infeasible", []).append(fmt_tokens(L))
        rows.append(row)
    out.table(_columns(ci_prob), rows)
    for note, where in notes.items():
        out.line(f"   {note} (context {', '.join(where)})")
    out.line(f"   crossover: {str(ds['crossover_note'].values)}"
             + ("" if np.isnan(float(ds["crossover_context"])) else
                f" at {fmt_value(float(ds['crossover_context']), 'rate')} tokens"))


def _parse_q(text: str):
    """``--q`` as a QSpec, refused when its upper end exceeds :data:`MAX_Q`."""
    kind, sep, arg = text.strip().partition(":")
    if kind.strip().lower() == "samples" and sep:
        check_input_path("--q samples", arg.strip())
    q = as_q(parse_q(text, "--q"))
    with np.errstate(over="ignore", invalid="ignore"):  # a huge sigma: the quantile is inf
        hi = q.median() if q.is_point else q.interval(1 - 1e-6)[1]
    if not hi <= MAX_Q:
        raise McrouteError(f"--q must stay <= {MAX_Q:g} (MAX_Q: its value, or "
                           f"the 1 - 1e-6 quantile of its distribution), got {text.strip()!r} "
                           f"reaching {hi:.3g}")
    return q


def _checked(args) -> dict:
    """Every flag of ``qs`` parsed and checked, before any work (errors name the flag)."""
    check_output_path(args.output)
    for flag, value in (("MODEL", args.model), ("--dense-model", args.dense_model),
                        ("--hardware", args.hardware)):
        if value is not None:
            check_input_path(flag, value)
    max_gpus = int(_OPT["n_gpus"].maximum)
    if args.hardware is not None:
        load_hardware(args.hardware)  # an unknown name fails here, before anything is printed
    v = option_values(args, QS_OPTIONS, skip=("q",))  # each checked against its declaration
    return {
        "contexts": v["context"], "trials": v["n_trials"], "q_samples": v["n_q_samples"],
        "seed": v["seed"], "ci_prob": v["ci_prob"], "method": v["method"],
        "hardware": PAPER_HARDWARE if args.hardware is None else args.hardware,
        "gpus": (PAPER_GPUS if args.n_gpus is None
                 else parse_int(args.n_gpus, "--n-gpus", 1, max_gpus)),
        "dense_gpus": v["dense_n_gpus"],
        "options": deployment_flags(args),
        "q": _given_q(args),
    }


def _given_q(args):
    """``--q`` parsed once, before any work (None: the default, or per-model ``estimate``)."""
    if args.q is None:
        return None
    if args.dense_model is not None:
        return parse_real(args.q, "--q", minimum=0.0, maximum=MAX_Q, open_min=True)
    if args.q.strip().lower() == "estimate":
        return None
    return _parse_q(args.q)


def _cases(args, run) -> list:
    """(model name, its paper defaults) per case; every model and routing checked first."""
    if args.model:
        # a paper model named alone keeps its documented defaults (fp8 weights and
        # data-parallel attention for DeepSeek-V3); flags override them
        cases = [(args.model, dict(dict(PAPER_CASES).get(args.model, {})))]
    else:
        cases = list(PAPER_CASES)
        if args.context == _DEFAULT_CONTEXTS:
            run["contexts"] = list(PAPER_CONTEXTS)
    run["routings"] = {}
    for name, _ in cases:
        moe = load_model(name)
        if not moe.is_moe:
            raise McrouteError(f"model {moe.name!r} is dense; the qs analysis needs a "
                               "Mixture-of-Experts model (its dense twin is built from it)")
        run["routings"][name] = (None if args.routing is None else
                                 parse_routing(args.routing, moe.n_experts, moe.top_k))
    return cases


def _q_of(args, run, moe):
    """The q of one case and where it came from."""
    if args.dense_model is not None:
        return run["q"], f"dense model {args.dense_model}"
    if args.q is None:
        return default_q(moe)
    q = run["q"] if run["q"] is not None else _parse_q(f"estimate:{moe.name}")
    return q, args.q


def _one_case(args, run, out, name, defaults):
    """Run and print one model; return its Dataset with a ``model`` dim."""
    moe = load_model(name)
    opts = dict(defaults) | run["options"]
    q, q_note = _q_of(args, run, moe)
    try:
        ds = qs_analysis(moe, run["hardware"], run["gpus"], q, run["contexts"],
                         run["routings"][name], n_trials=run["trials"], rng=run["seed"],
                         ci_prob=run["ci_prob"], dense_style=args.dense_style,
                         dense_n_gpus=run["dense_gpus"], n_q_samples=run["q_samples"],
                         dense_model=args.dense_model, method=run["method"], **opts)
    except McrouteError as exc:
        raise placement_error(exc, args) from None
    dep = json.loads(ds.attrs.get("deployment", "{}"))
    dep_note = (f"{run['gpus']} x {run['hardware']}, weights "
                f"{dep.get('weight_dtype') or opts.get('weight_dtype', 'bf16')}, KV "
                f"{dep.get('kv_dtype') or opts.get('kv_dtype', 'bf16')}, "
                f"{dep.get('attention_parallel', 'tensor')}-parallel attention, dense twin: "
                f"{args.dense_model or args.dense_style}")
    _print_case(out, ds, moe.name, q_note, dep_note, run["ci_prob"])
    sys.stdout.flush()
    return ds.expand_dims(model=[moe.name])


def _merged(results):
    """One Dataset of every case (per-draw variables dropped when several models)."""
    if len(results) == 1:
        return results[0]
    keep = [r.drop_vars([v for v in r.data_vars if "q_draw" in r[v].dims or v in
                         ("q_samples",)], errors="ignore") for r in results]
    return xr.concat(keep, dim="model", coords="minimal", compat="override",
                     combine_attrs="drop_conflicts")


def run(args) -> int:
    """Run ``mcroute qs``."""
    run = _checked(args)
    cases = _cases(args, run)
    out = Printer(args)
    out.line(f"mcroute qs: {len(cases)} model(s) on {run['gpus']} x {run['hardware']}, "
             f"{run['trials']} trials, seed {run['seed']}")
    out.line("penalty = dense / MoE throughput, each at its admissible batch: mean [CI of the "
             "mean]\n(p5-p95 of single steps); bound: the penalty under the roofline bound of "
             "both models;\nreuse: both at the smaller batch; B ratio: dense / MoE admissible "
             "batch")
    sys.stdout.flush()
    results = [_one_case(args, run, out, name, defaults) for name, defaults in cases]
    out.close()
    if args.output:
        write_output(_merged(results), args.output, quiet=args.quiet)
    return 0

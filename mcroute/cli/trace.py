"""``mcroute trace {convert,inspect,fit,check}``: real router logs.

May import: every floor below (front end); ``mcroute.cli.common``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from mcroute._base.validate import MAX_EXPERTS, McrouteError, check_prob
from mcroute._labeled.trace_fit import fit_routing, inspect_trace, real_batch_check
from mcroute._traces.io import FORMATS, load_trace, save_trace
from mcroute._traces.trace import PopularityTrace
from mcroute.cli.common import (
    check_input_path,
    check_output_path,
    parse_int,
    refuse_renamed,
    write_output,
)
from mcroute.cli.output import Column, Est, Printer, add_output_flags

#: ``--format NAME`` with a trace format NAME: the hint (``--format`` is the printed format).
_FORMAT_HINTS = {f: f"--format is how results are printed (table, csv or json); give the trace "
                 f"file's format as --input-format {f}" for f in FORMATS}


def _load_args(p, table: bool = True) -> None:
    p.add_argument("path", nargs="+", help="trace file(s) or folder")
    p.add_argument("--input-format", default=None, choices=list(FORMATS),
                   help="the trace file's format (default: guessed from the content; the "
                   "format= keyword of mcroute.load_trace)")
    p.add_argument("-E", "--n-experts", default=None, metavar="E",
                   help="routed experts per layer (checks ids)")
    p.add_argument("--model", default=None, help="model name; selects a histogram in a CSV")
    p.add_argument("--domain", default=None, help="histogram CSV: domain to read")
    p.add_argument("--selection", default="topk", choices=["topk", "top1"],
                   help="histogram CSV: selection (default topk)")
    p.add_argument("--missing-layers", default="error", choices=["error", "drop"],
                   help="tokens lacking some layers: fail (default) or drop them")
    p.add_argument("--max-records", default=None, help="read at most this many records per file")
    add_output_flags(p, table=table, other_formats=_FORMAT_HINTS)
    refuse_renamed(p, "--experts")


def _is_zip(path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def _load(args):
    check_output_path(args.output, (".npz",) if args.action == "convert" else
                      (".nc", ".csv", ".json"))
    e = None if args.n_experts is None else parse_int(args.n_experts, "--n-experts", 1,
                                                       MAX_EXPERTS)
    mr_ = None if args.max_records is None else parse_int(args.max_records, "--max-records", 1)
    for p in args.path:
        check_input_path("trace path", p)
    fmt = args.input_format
    if fmt == "array" and len(args.path) == 1 and _is_zip(args.path[0]):
        # "array" covers a .npz holding one [tokens, layers, k] array, which the npz reader
        # handles (it also recognises a canonical trace).
        fmt = "npz"
    path = args.path if len(args.path) > 1 else args.path[0]
    try:
        trace = load_trace(path, fmt, n_experts=e, model=args.model, domain=args.domain,
                           selection=args.selection, missing_layers=args.missing_layers,
                           max_records=mr_)
    except OverflowError:
        raise McrouteError(f"{', '.join(args.path)}: a number in the trace does not fit a 64-bit "
                           "integer (expert ids, layers and positions must be below 2**63)"
                           ) from None
    if e is not None:
        _check_experts(trace, e)
    return trace


def _print_notes(trace, quiet: bool = False) -> None:
    """The loader's notes, printed once the command has succeeded (a failure stays one line)."""
    for note in ([] if quiet else trace.notes):
        print(f"note: {note}", file=sys.stderr)


def _check_experts(trace, e: int) -> None:
    """Apply ``--n-experts`` to every format, including those that record E themselves."""
    where = trace.source or "the trace"
    if isinstance(trace, PopularityTrace):
        if trace.n_experts != e:
            raise McrouteError(f"{where}: --n-experts {e}, but the histogram has "
                               f"{trace.n_experts} experts")
        return
    hi = int(trace.experts.max()) if trace.experts.size else -1
    if hi >= e:
        raise McrouteError(f"{where}: expert id {hi} outside 0..{e - 1} (--n-experts {e})")
    if trace.n_experts != e:
        raise McrouteError(f"{where}: --n-experts {e}, but the file records "
                           f"{trace.n_experts} experts")


def _convert_format(text: str) -> str:
    raise argparse.ArgumentTypeError("convert prints no table; give the trace file's format as "
                                     f"--input-format {text}")


def register(sub) -> None:
    """Add the ``trace`` subcommand with its actions."""
    p = sub.add_parser("trace", help="read, convert, inspect and fit real router logs",
                       description="Real router logs: convert them to the canonical .npz "
                       "format, inspect their skew and correlation, fit Zipf / log-normal "
                       "popularity and overdispersion, and check models against real batches.")
    act = p.add_subparsers(dest="action", metavar="ACTION", parser_class=type(p))
    c = act.add_parser("convert", help="write a trace in the canonical .npz format")
    _load_args(c, table=False)
    c.add_argument("--format", type=_convert_format, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # refused with a hint: convert prints no table
    c.add_argument("--output", "-o", required=True, help="output FILE.npz")
    c.set_defaults(func=run_convert)
    i = act.add_parser("inspect", help="per-layer skew, entropy, Gini and correlations")
    _load_args(i)
    i.add_argument("-o", "--output", default=None,
                   help="write the table to FILE.nc, .csv or .json")
    i.set_defaults(func=run_inspect)
    f = act.add_parser("fit", help="fit Zipf alpha, log-normal sigma and overdispersion")
    _load_args(f)
    f.add_argument("--n-boot", default="200", metavar="N",
                   help="bootstrap replicates (default 200)")
    f.add_argument("--ci-prob", default=0.95, type=float, help="interval level (default 0.95)")
    f.add_argument("--decode-only", action="store_true", help="fit the decode tokens only")
    f.add_argument("-s", "--seed", default=None, help="seed (default: fresh entropy, printed)")
    f.add_argument("-o", "--output", default=None,
                   help="write results to FILE.nc, .csv or .json")
    refuse_renamed(f, "--boot")
    f.set_defaults(func=run_fit)
    k = act.add_parser("check", help="real decode batches against the routing models")
    _load_args(k)
    k.add_argument("-n", "--n-trials", default="400", metavar="N",
                   help="simulated microbatches per size (default 400)")
    k.add_argument("--ci-prob", default=0.95, type=float, help="interval level (default 0.95)")
    k.add_argument("-s", "--seed", default=None, help="seed (default: fresh entropy, printed)")
    k.add_argument("--holdout", default=None, choices=["second-half"],
                   help="also fit on the first half of the decode steps and predict the second "
                   "half (held-out errors with intervals)")
    k.add_argument("--holdout-routing", default=None, choices=["correlated", "token"],
                   help="with --holdout: the model whose held-out errors are reported "
                   "(default correlated)")
    k.add_argument("-o", "--output", default=None,
                   help="write results to FILE.nc, .csv or .json")
    refuse_renamed(k, "--trials")
    k.set_defaults(func=run_check)
    p.set_defaults(func=_no_action)


def _no_action(args) -> int:
    raise McrouteError("give an ACTION: convert, inspect, fit or check "
                       "(mcroute trace --help describes them)")


def run_convert(args) -> int:
    """Run ``mcroute trace convert``."""
    trace = _load(args)
    if isinstance(trace, PopularityTrace):
        raise McrouteError("histograms have no per-token data; only per-token traces convert "
                           "to the canonical .npz")
    out = save_trace(trace, args.output)
    _print_notes(trace, args.quiet)
    if not args.quiet:
        print(f"wrote {out}: {trace!r}", file=sys.stderr)
    return 0


def _f(x, fmt=".3g"):
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, fmt)


def run_inspect(args) -> int:
    """Run ``mcroute trace inspect``."""
    trace = _load(args)
    ds = inspect_trace(trace)
    _print_notes(trace, args.quiet)
    out = Printer(args)
    out.line(f"{trace!r}  (E={trace.n_experts}, k={trace.top_k}; "
             f"uniform share {1 / trace.n_experts:.3g})")
    columns = [Column("layer", "layer", "int"), Column("n_tokens", "tokens", "int"),
               Column("hottest_share", "hottest share", "ratio"),
               Column("entropy", "entropy [nat]", "ratio", drop=2),
               Column("effective_experts", "eff. experts", "ratio", drop=1),
               Column("gini", "Gini", "ratio"),
               Column("layer_correlation", "corr next layer", "ratio"),
               Column("step_overlap", "step overlap", "ratio"),
               Column("step_overlap_chance", "(chance)", "ratio")]
    rows = []
    for i, layer in enumerate(ds["layer"].values):
        row = {c.key: float(ds[c.key].values[i]) for c in columns[2:]}
        rows.append(row | {"layer": int(layer), "n_tokens": int(ds["n_tokens"].values[i])})
    out.table(columns, rows)
    out.line("corr next layer: bias-corrected Cramér's V of the first choice with the next trace "
             "layer; step overlap: share of k experts repeated from the same sequence's previous "
             "step (chance: for independent tokens)")
    out.close()
    if args.output:
        write_output(ds, args.output, quiet=args.quiet)
    return 0


def run_fit(args) -> int:
    """Run ``mcroute trace fit``."""
    boot = parse_int(args.n_boot, "--n-boot", minimum=10)
    ci_prob = check_prob("--ci-prob", args.ci_prob)
    seed = None if args.seed is None else parse_int(args.seed, "--seed", minimum=0)
    trace = _load(args)
    if args.decode_only and not isinstance(trace, PopularityTrace):
        trace = trace.decode_only()
    ds = fit_routing(trace, n_boot=boot, ci_prob=ci_prob, rng=seed)
    _print_notes(trace, args.quiet)
    out = Printer(args)
    out.line(f"{trace!r}, {boot} bootstrap replicates, seed {ds.attrs['seed']}")
    out.line(f"estimate [{ci_prob:.0%} interval]; gof = bootstrap p-value of the deviance")
    columns = [Column("layer", "layer", "int"), Column("n_tokens", "tokens", "int"),
               Column("alpha", "zipf alpha", "ratio"),
               Column("gof_zipf", "gof", "ratio", drop=2),
               Column("sigma", "lognormal sigma", "ratio"),
               Column("gof_lognormal", "gof", "ratio", drop=2),
               Column("better_family", "better", "text"),
               Column("delta_loglik", "dloglik", drop=1)]
    if "rho" in ds:
        columns.append(Column("rho", "overdispersion rho", "ratio"))
    rows = []
    for i, layer in enumerate(ds["layer"].values):
        r = ds.isel(layer=i)
        row = {"layer": int(layer), "n_tokens": int(r["n_tokens"]),
               "better_family": str(r["better_family"].values),
               "delta_loglik": float(r["delta_loglik"])}
        for name in ("alpha", "sigma") + (("rho",) if "rho" in ds else ()):
            lo, hi = (float(x) for x in r[f"{name}_ci"].values)
            row[name] = Est(float(r[name]), lo, hi)
        for fam in ("zipf", "lognormal"):
            row[f"gof_{fam}"] = float(r["gof_pvalue"].sel(family=fam))
        rows.append(row)
    out.table(columns, rows)
    if "rho_pooled" in ds:
        lo, hi = ds["rho_pooled_ci"].values
        out.line(f"overdispersion pooled over layers: rho = {float(ds['rho_pooled']):.4f} "
                 f"[{lo:.4f}, {hi:.4f}]  ({ds.attrs['overdispersion']})")
    else:
        out.line(ds.attrs["overdispersion"])
    out.close()
    if args.output:
        write_output(ds, args.output, quiet=args.quiet)
    return 0


def _pct(x) -> str:
    return "n/a" if x is None or np.isnan(float(x)) else f"{float(x):+.1%}"


def _print_holdout(out, attrs, ci_prob) -> None:
    """The held-out errors of :func:`real_batch_check` (its attrs), with intervals."""
    routing = attrs.get("holdout_routing", "correlated")
    warm = int(attrs.get("holdout_warmup_steps", 0))
    sigma = float(attrs.get("holdout_sigma", np.nan))
    s_lo = float(attrs.get("holdout_sigma_ci_lower", np.nan))
    s_hi = float(attrs.get("holdout_sigma_ci_upper", np.nan))
    out.line(f"held out ({attrs.get('holdout', 'second-half')}): fitted on the first "
             f"{int(attrs.get('holdout_fit_steps', 0))} decode steps, predicting the "
             f"{int(attrs.get('holdout_steps', 0))} steps after them; warm-up steps left out of "
             f"the sigma fit: {warm}")
    out.line(f"fitted sigma (correlated) = {_f(sigma, '.3f')} [{_f(s_lo, '.3f')}, "
             f"{_f(s_hi, '.3f')}]; reported model: {routing}")
    out.line(f"held-out error, predicted / observed - 1 [{ci_prob:.0%} interval] (Monte Carlo "
             "SE):")
    for key, label in (("active_experts", "distinct experts"),
                       ("max_expert_load", "busiest expert load")):
        name = f"holdout_{key}_error"
        se = attrs.get(f"{name}_mc_se", np.nan)
        out.line(f"  {label:<20} {_pct(attrs.get(name, np.nan))} "
                 f"[{_pct(attrs.get(name + '_ci_lower', np.nan))}, "
                 f"{_pct(attrs.get(name + '_ci_upper', np.nan))}]  "
                 f"({'n/a' if np.isnan(float(se)) else f'{float(se):.1%}'})")


def run_check(args) -> int:
    """Run ``mcroute trace check``."""
    trials = parse_int(args.n_trials, "--n-trials", minimum=2)
    ci_prob = check_prob("--ci-prob", args.ci_prob)
    seed = None if args.seed is None else parse_int(args.seed, "--seed", minimum=0)
    if args.holdout_routing is not None and args.holdout is None:
        raise McrouteError("--holdout-routing needs --holdout second-half")
    holdout_kw = {}
    if args.holdout is not None:
        holdout_kw = {"holdout": args.holdout, "routing": args.holdout_routing or "correlated"}
    trace = _load(args)
    if isinstance(trace, PopularityTrace):
        raise McrouteError("the real-batch check needs a per-token trace with microbatch ids")
    ds = real_batch_check(trace, n_trials=trials, ci_prob=ci_prob, rng=seed, **holdout_kw)
    _print_notes(trace, args.quiet)
    sizes = ds["batch_size"].values
    out = Printer(args)
    out.line(f"{trace!r}: {sizes.size} real decode steps of {sizes.min()}-{sizes.max()} tokens, "
             f"{trials} simulated microbatches per size, seed {ds.attrs['seed']}")
    out.line(f"observed (mean over steps and layers): distinct experts "
             f"{float(ds['observed_active_experts_mean'].mean()):.2f}, busiest expert "
             f"{float(ds['observed_max_expert_load_mean'].mean()):.2f} tokens")
    out.line(f"predicted / observed - 1, pooled over layers [{ci_prob:.0%} interval]:")
    columns = [Column("routing", "routing", "text"),
               Column("active_experts_rel_error", "distinct experts", "pct"),
               Column("max_expert_load_rel_error", "busiest expert load", "pct")]
    rows = []
    for r in ds["routing"].values:
        row = {"routing": str(r)}
        for s in ("active_experts", "max_expert_load"):
            lo, hi = (float(x) for x in ds[f"{s}_rel_error_all_ci"].sel(routing=r).values)
            row[f"{s}_rel_error"] = Est(float(ds[f"{s}_rel_error_all"].sel(routing=r)), lo, hi)
        rows.append(row)
    out.table(columns, rows)
    lo, hi = ds["rho_matching_active_experts_ci"].values
    gap = float(ds["gap_closed"])
    out.line(f"overdispersed uses the fitted rho = {float(ds['rho']):.4f}; the rho that "
             f"reproduces the observed distinct experts is "
             f"{float(ds['rho_matching_active_experts']):.4f} [{lo:.4f}, {hi:.4f}]; share of the "
             "token-mode error removed: "
             f"{'n/a (token mode has no error to remove)' if np.isnan(gap) else f'{gap:.0%}'}")
    if args.holdout is not None:
        _print_holdout(out, ds.attrs, ci_prob)
    out.close()
    if args.output:
        write_output(ds, args.output, quiet=args.quiet)
    return 0

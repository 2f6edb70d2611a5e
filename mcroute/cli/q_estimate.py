"""``mcroute q-estimate``: estimate the quality-equivalence factor q from benchmark tables.

Front end (5). May import: every floor below; ``mcroute.cli`` helpers.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import math
import sys
from pathlib import Path

from mcroute._base.atomic import atomic_path
from mcroute._base.rng import resolve_seed
from mcroute._base.validate import MAX_BOOT_DRAWS, McrouteError, check_prob, check_real
from mcroute._cards.cards import list_models
from mcroute._labeled.q_estimate import estimate_q, q_summary
from mcroute._quality.estimate import check_benchmark_names, model_card
from mcroute._quality.tables import card_name, list_moe_models, load_quality_tables
from mcroute._version import __version__
from mcroute.cli.common import (
    check_input_path,
    check_output_path,
    parse_int,
    refuse_renamed,
    write_output,
)
from mcroute.cli.output import Column, Printer, add_output_flags

#: Columns of the summary CSV written by ``--output FILE.csv``.
SUMMARY_COLUMNS = ["model", "method", "q_median", "q_ci_lower", "q_ci_upper", "ci_prob",
                   "q_point", "n_benchmarks", "n_cross_family", "families_used", "tables_used",
                   "n_boot", "seed"]


def register(sub) -> None:
    """Add the ``q-estimate`` subcommand."""
    p = sub.add_parser(
        "q-estimate",
        help="estimate the quality-equivalence factor q of MoE models from benchmark tables",
        description="Fit score = a + b*log10(N) to the dense models of each report, per "
        "benchmark; invert at the MoE's score to a dense-equivalent size N_dense; "
        "q = N_dense / N_active; combine benchmarks with a bootstrap. Tables are read from "
        "<shared data>/quality (MCROUTE_SHARED_DATA, default ../shared/data). "
        "See docs/quality.md.",
    )
    p.add_argument("models", nargs="*", metavar="MODEL",
                   help="MoE models (card names such as deepseek-v3, or names as printed)")
    p.add_argument("--all", action="store_true",
                   help="every MoE scored in the tables (and, with --method scaling_law or "
                   "both, every MoE model card)")
    p.add_argument("--list", action="store_true", help="list the MoE models in the tables")
    p.add_argument("--table", action="append", default=None, metavar="NAME",
                   help="only this table (file stem or path); repeatable")
    p.add_argument("--benchmarks", default=None,
                   help="comma-separated benchmarks to use (names as printed)")
    p.add_argument("--family", default="auto",
                   help="dense family: auto (the MoE's own family if scored, else all), all, "
                   "or a family name such as qwen2.5 (default auto)")
    p.add_argument("--method", default="fit", choices=["fit", "scaling_law", "both"],
                   help="fit: invert dense fits (default); scaling_law: Clark et al. 2022 "
                   "effective parameter count; both")
    p.add_argument("--n-boot", default="2000", metavar="N",
                   help="bootstrap replicates (default 2000)")
    p.add_argument("-s", "--seed", default=None, help="seed (default: fresh entropy, printed)")
    p.add_argument("--ci-prob", default=0.95, type=float, help="confidence level (default 0.95)")
    p.add_argument("--max-extrapolation", default=2.0, type=float,
                   help="largest factor beyond the dense size range accepted (default 2)")
    p.add_argument("--allow-extrapolation", action="store_true",
                   help="include benchmarks that extrapolate beyond --max-extrapolation")
    p.add_argument("--min-sizes", default="3", help="fewest dense sizes for a fit (default 3)")
    p.add_argument("--resample", default="both", choices=["both", "benchmarks", "fit"],
                   help="what the bootstrap resamples (default both)")
    p.add_argument("--combine", default="mean", choices=["mean", "median"],
                   help="combine benchmarks by the mean (default) or median of log q")
    p.add_argument("--n-active-source", default="table", choices=["table", "card"],
                   help="active parameters from the table as printed (default) or the card")
    p.add_argument("--summary", action="store_true",
                   help="print only the combined q per model, not the per-benchmark fits")
    p.add_argument("-o", "--output", default=None,
                   help="FILE.csv: one summary row per model and method, with provenance; "
                   "FILE.nc or .json: the full Dataset (one model, one method)")
    add_output_flags(p)
    refuse_renamed(p, "--boot")
    p.set_defaults(func=run)


def _b(x) -> str:
    """Parameters as billions, compactly."""
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x / 1e9:.3g}B"


def _command_line(args, seed) -> str:
    """Return the canonical command that reproduces this run (for the provenance line)."""
    parts = ["mcroute", "q-estimate"]
    parts += ["--all"] if args.all else list(args.models)
    for t in args.table or []:
        parts += ["--table", t]
    if args.benchmarks:
        parts += ["--benchmarks", args.benchmarks]
    if args.family != "auto":
        parts += ["--family", args.family]
    if args.method != "fit":
        parts += ["--method", args.method]
    parts += ["--n-boot", str(args.n_boot), "--seed", str(seed)]
    if args.ci_prob != 0.95:
        parts += ["--ci-prob", f"{args.ci_prob:g}"]
    if args.max_extrapolation != 2.0:
        parts += ["--max-extrapolation", f"{args.max_extrapolation:g}"]
    if args.allow_extrapolation:
        parts.append("--allow-extrapolation")
    if str(args.min_sizes) != "3":
        parts += ["--min-sizes", str(args.min_sizes)]
    if args.resample != "both":
        parts += ["--resample", args.resample]
    if args.combine != "mean":
        parts += ["--combine", args.combine]
    if args.n_active_source != "table":
        parts += ["--n-active-source", args.n_active_source]
    if args.output:
        parts += ["--output", str(args.output)]
    return " ".join(parts)


_FIT_COLUMNS = [
    Column("row", "row", "text", shown=False),
    Column("model", "model", "text", shown=False),
    Column("table", "table", "text", drop=4),
    Column("family", "family", "text"),
    Column("benchmark", "benchmark", "text"),
    Column("intercept", "a", drop=3),
    Column("slope", "b/decade", drop=3),
    Column("r_squared", "R²", "ratio"),
    Column("dense_sizes", "dense sizes", "text", drop=2, machine=False),
    Column("size_min", "smallest dense", "params", shown=False),
    Column("size_max", "largest dense", "params", shown=False),
    Column("n_sizes", "dense sizes", "int", shown=False),
    Column("moe_score", "MoE score", drop=1),
    Column("n_dense_equiv", "N_dense", "params"),
    Column("q_fit", "q_b", "ratio"),
    Column("extrapolation", "extrap.", "ratio", drop=1),
    Column("status", "status", "text"),
]

_COMBINED_COLUMNS = [Column("row", "row", "text")] + [
    Column(k, k, "text" if k in ("model", "method", "families_used", "tables_used") else "num")
    for k in SUMMARY_COLUMNS if k not in ("n_boot", "seed")]


def _fit_row(f, model) -> dict:
    status = "used" if int(f["used"]) else "excluded"
    why = str(f["reason"].values).split(" (")[0].split(";")[0]
    if why:
        status += f": {why}"
    flags = [name for name, var in (("x-family", "cross_family"),
                                    ("lower=better", "lower_is_better")) if int(f[var])]
    size_min, size_max = float(f["size_min"]), float(f["size_max"])
    return {
        "row": "fit", "model": model, "table": str(f["table"].values),
        "family": str(f["family"].values), "benchmark": str(f["benchmark"].values)[:40],
        "intercept": float(f["intercept"]), "slope": float(f["slope"]),
        "r_squared": float(f["r_squared"]), "size_min": size_min, "size_max": size_max,
        "n_sizes": int(f["n_sizes"]),
        "dense_sizes": f"{_b(size_min)}-{_b(size_max)} (n={int(f['n_sizes'])})",
        "moe_score": float(f["moe_score"]), "n_dense_equiv": float(f["n_dense_equiv"]),
        "q_fit": float(f["q_fit"]), "extrapolation": float(f["extrapolation"]),
        "status": (" ".join(flags) + " " if flags else "") + status,
    }


def _print_fits(out, ds) -> None:
    model = str(q_summary(ds)["model"])
    rows = [_fit_row(ds.isel(fit=i), model) for i in range(ds.sizes["fit"])]
    if rows:
        out.table(_FIT_COLUMNS, rows)


def _print_combined(out, ds) -> None:
    s = q_summary(ds)
    if out.format != "table":  # csv/json: the combined estimate as a row of its own
        out.table(_COMBINED_COLUMNS, [dict(s, row="combined")])
        return
    if not math.isfinite(s["q_median"]):
        notes = ds.attrs.get("excluded_tables", "")
        extra = f"; tables without a usable fit: {notes}" if notes not in ("", "{}") else ""
        out.line(f"{s['model']} [{s['method']}]: no estimate (no benchmark could be "
                 f"used){extra}")
        return
    if s["method"] == "scaling_law":
        out.line(f"{s['model']} [scaling_law]: q = {s['q_median']:.3g} (point value; "
                 f"N_active {_b(float(ds['n_active']))}, E = n_experts/top_k = "
                 f"{float(ds['expansion']):g}; {ds.attrs.get('law', '')})")
        notes = ds.attrs.get("notes", "[]")
        if notes not in ("", "[]"):
            out.line(f"  notes: {notes}")
        return
    out.line(f"{s['model']} [fit]: q = {s['q_median']:.3g}  "
             f"[{s['ci_prob']:.0%} CI {s['q_ci_lower']:.3g}, {s['q_ci_upper']:.3g}]  "
             f"point {s['q_point']:.3g}; {s['n_benchmarks']} benchmark fits "
             f"({s['n_cross_family']} against another family), tables: {s['tables_used']}")
    spread = ds["q_fit_q"]
    levels = ", ".join(f"p{100 * float(q):g} {float(v):.3g}"
                       for q, v in zip(spread["quantile"].values, spread.values, strict=True))
    out.line(f"  spread of single-benchmark q (not an uncertainty): {levels}")


def _write_summary_csv(rows, path, command, tables) -> Path:
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise McrouteError(f"output folder {str(folder)!r} does not exist")
    buf = io.StringIO()
    buf.write("# Quality-equivalence factor q per MoE model, derived by mcroute (not a copy of "
              "the source tables)\n")
    buf.write(f"# produced by: {command}\n")
    buf.write(f"# mcroute_version: {__version__}\n")
    buf.write(f"# created_at: {_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds')}\n")
    buf.write("# source tables (sha256 prefix): "
              + "; ".join(f"{t.name} {t.sha256[:16]}" for t in tables) + "\n")
    buf.write("# method and assumptions: docs/quality.md\n")
    w = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n",
                       extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    return path


def _check_benchmarks(text: str, tables) -> list[str]:
    """Parse ``--benchmarks``; refuse names that no table scores, before any work.

    The names are checked by the API's own rule (``estimate_q`` refuses them too), so that the
    CLI and the API accept the same names.
    """
    wanted = [b.strip() for b in text.split(",") if b.strip()]
    if not wanted:
        raise McrouteError(f"--benchmarks must be a comma-separated list of names, got {text!r}")
    try:
        check_benchmark_names(wanted, tables)
    except McrouteError as exc:
        raise McrouteError(f"--{exc}" if str(exc).startswith("benchmarks") else str(exc)) \
            from None
    return wanted


def _settings(args, tables) -> dict:
    """Every option checked before any work (errors name the flag)."""
    if args.all and args.models:
        raise McrouteError("give MODEL names or --all, not both")
    if not args.all and not args.models:
        raise McrouteError("give at least one MODEL (or --all, or --list)")
    seed = None if args.seed is None else parse_int(args.seed, "--seed", minimum=0)
    return {
        "n_boot": parse_int(args.n_boot, "--n-boot", minimum=2, maximum=MAX_BOOT_DRAWS),
        "min_sizes": parse_int(args.min_sizes, "--min-sizes", minimum=2),
        "ci_prob": check_prob("--ci-prob", args.ci_prob),
        "max_extrapolation": check_real("--max-extrapolation", args.max_extrapolation,
                                        minimum=1.0),
        "seed": resolve_seed(seed),
        "benchmarks": (None if args.benchmarks is None
                       else _check_benchmarks(args.benchmarks, tables)),
        "methods": ["fit", "scaling_law"] if args.method == "both" else [args.method],
    }


def _names(args, method, tables) -> list:
    if not args.all:
        return list(args.models)
    if method == "fit":
        return list_moe_models(tables)
    return [n for n in list_models() if getattr(model_card(n), "is_moe", False)]


def _estimate(args, st, name, method, tables):
    if method != "fit":
        return estimate_q(name, method=method, rng=st["seed"], ci_prob=st["ci_prob"])
    return estimate_q(
        name, tables, method=method, benchmarks=st["benchmarks"], family=args.family,
        n_boot=st["n_boot"], rng=st["seed"], ci_prob=st["ci_prob"],
        max_extrapolation=st["max_extrapolation"], allow_extrapolation=args.allow_extrapolation,
        min_sizes=st["min_sizes"], resample=args.resample, combine=args.combine,
        n_active_source=args.n_active_source)


def _write(args, results, seed, tables) -> None:
    out = args.output
    ext = Path(out).suffix.lower()
    if ext == ".csv":
        rows = []
        for ds in results:
            s = q_summary(ds)
            if not math.isfinite(s["q_median"]):
                continue
            s["model"] = card_name(s["model"])
            s["n_boot"] = ds.attrs.get("n_trials", "")
            s["seed"] = ds.attrs.get("seed", "")
            rows.append(s)
        path = _write_summary_csv(rows, out, _command_line(args, seed), tables)
        if not args.quiet:
            print(f"wrote {path}", file=sys.stderr)
        return
    if len(results) != 1:
        raise McrouteError(f"--output {ext} holds one model and one method; got "
                           f"{len(results)} results (use .csv for several)")
    write_output(results[0], out, quiet=args.quiet)


def run(args) -> int:
    """Run ``mcroute q-estimate``."""
    check_output_path(args.output, (".csv", ".nc", ".json"))
    for t in args.table or []:
        check_input_path("--table", t)
    tables = load_quality_tables(args.table)
    out = Printer(args)
    if args.list:  # one name a line (csv/json: a "model" column)
        names = list_moe_models(tables)
        if out.format == "table":
            for name in names:
                out.line(name)
        else:
            out.table([Column("model", "model", "text")], [{"model": n} for n in names])
        out.close()
        return 0
    st = _settings(args, tables)
    header = (f"seed {st['seed']}; {st['n_boot']} bootstrap replicates; tables from "
              f"{', '.join(sorted({str(t.path.parent) for t in tables}))}")
    results = []
    for method in st["methods"]:
        for name in _names(args, method, tables):
            ds = _estimate(args, st, name, method, tables)
            if method == "fit" and args.all and int(ds["n_benchmarks"]) == 0:
                continue  # --all lists only the models that have an estimate
            if header is not None:  # printed once the first estimate succeeded, so that an
                out.line(header)    # error found by estimate_q stays the only line
                header = None
            out.line()
            if method == "fit" and not args.summary:
                _print_fits(out, ds)
            _print_combined(out, ds)
            results.append(ds)
    if header is not None:
        out.line(header)
    out.close()
    if args.output:
        _write(args, results, st["seed"], tables)
    return 0

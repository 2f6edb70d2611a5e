"""The q estimate from benchmark tables, as arrays (the Dataset is built by the labeled floor).

May import: the standard library, numpy, ``mcroute._base``, ``mcroute._cards``, the modules of
``mcroute._quality``.

Per benchmark a dense family's scores are fitted with ``score = a + b·log10 N``, inverted at
the MoE's score and divided by the MoE's active parameters; the benchmarks combine by a
bootstrap (:func:`estimate_by_fit`). ``method="scaling_law"`` evaluates Clark et al. (2022)
instead (:func:`estimate_by_scaling_law`). :func:`estimate_samples` gives only the bootstrap
draws, for ``q="estimate"`` (no Dataset is built and unpacked). The public
:func:`mcroute.estimate_q` (``mcroute._labeled.q_estimate``) returns the full result as a
Dataset. See docs/quality.md for the method and its assumptions.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from mcroute._base.rng import generator, resolve_seed
from mcroute._base.validate import (
    MAX_BOOT_DRAWS,
    McrouteError,
    check_bytes,
    check_int,
    check_prob,
    check_real,
    check_unique,
    short_repr,
)
from mcroute._cards.cards import load_model
from mcroute._quality.fits import (
    clark_constants,
    clark_effective_params,
    direction,
    fit_loglinear,
)
from mcroute._quality.tables import (
    card_name,
    family_key,
    load_quality_tables,
    moe_prefix,
    quality_dir,
)
from mcroute._version import __version__

__all__ = ["FIT_META", "DEFAULT_ESTIMATE_SEED", "EstimateOptions", "FitEstimate",
           "ScalingLawEstimate", "model_card", "check_benchmark_names", "check_estimate_options",
           "estimate_by_fit", "estimate_by_scaling_law", "estimate_samples"]

#: Bootstrap seed used when q = "estimate" is resolved without a seed (as in data/q_estimates.csv).
DEFAULT_ESTIMATE_SEED = 0

FIT_META = {
    "intercept": ("score", "fitted score at N = 1 parameter (a in score = a + b·log10 N)"),
    "slope": ("score per decade", "fitted score gain per tenfold parameters (b)"),
    "slope_se": ("score per decade", "standard error of the slope"),
    "r_squared": ("1", "coefficient of determination of the dense fit"),
    "resid_sd": ("score", "residual standard deviation of the dense fit (n - 2 dof)"),
    "n_sizes": ("1", "distinct dense sizes in the fit"),
    "size_min": ("parameters", "smallest dense model in the fit"),
    "size_max": ("parameters", "largest dense model in the fit"),
    "moe_score": ("score", "the MoE's score as printed"),
    "n_active": ("parameters", "active parameters per token of the MoE"),
    "n_dense_equiv": ("parameters", "dense size whose fitted score equals the MoE's"),
    "q_fit": ("1", "q of this benchmark: n_dense_equiv / n_active"),
    "extrapolation": ("1", "how far n_dense_equiv lies outside [size_min, size_max] (1 = inside)"),
    "lower_is_better": ("1", "1 if a lower score is better (loss, BPB)"),
    "cross_family": ("1", "1 if the dense family is not the MoE's own family"),
    "used": ("1", "1 if the benchmark enters the combined q"),
}


def _reject(name, value, why):
    raise McrouteError(f"{name} must be {why}, got {short_repr(value)}")


def model_card(name):
    """Return the model card of ``name``, or None when there is no such card."""
    try:
        return load_model(name)
    except McrouteError:
        return None


def _match(moe: str, row_model: str) -> bool:
    m = moe.strip().lower()
    return card_name(row_model) == card_name(m) or row_model.strip().lower() == m


@dataclass
class EstimateOptions:
    """Validated options of an estimate (see :func:`mcroute.estimate_q` for their meaning)."""

    method: str = "fit"
    benchmarks: list | None = None
    family: str = "auto"
    n_boot: int = 2000
    ci_prob: float = 0.95
    max_extrapolation: float = 2.0
    allow_extrapolation: bool = False
    min_sizes: int = 3
    min_slope_t: float = 2.0
    resample: str = "both"
    combine: str = "mean"
    n_active: float | None = None
    n_active_source: str = "table"
    n_experts: int | None = None
    top_k: int | None = None
    quantiles: np.ndarray = field(default_factory=lambda: np.array([0.1, 0.5, 0.9]))


def _check_choices(method, resample, combine, n_active_source):
    if method not in ("fit", "scaling_law"):
        _reject("method", method, "'fit' or 'scaling_law'")
    if resample not in ("both", "benchmarks", "fit"):
        _reject("resample", resample, "'both', 'benchmarks' or 'fit'")
    if combine not in ("mean", "median"):
        _reject("combine", combine, "'mean' or 'median'")
    if n_active_source not in ("table", "card"):
        _reject("n_active_source", n_active_source, "'table' or 'card'")


def _check_benchmark_list(benchmarks):
    if isinstance(benchmarks, str):
        benchmarks = [benchmarks]
    if benchmarks is not None and (
            not isinstance(benchmarks, (list, tuple)) or not benchmarks
            or not all(isinstance(b, str) and b.strip() for b in benchmarks)):
        _reject("benchmarks", benchmarks, "a non-empty list of benchmark names")
    return benchmarks


def _check_levels(quantiles):
    try:
        qlev = np.asarray(quantiles, dtype=float)
    except (TypeError, ValueError, OverflowError):
        qlev = np.asarray([np.nan])
    if qlev.ndim != 1 or qlev.size == 0 or not np.all((qlev >= 0) & (qlev <= 1)):
        _reject("quantiles", quantiles, "a non-empty list of levels in [0, 1]")
    check_unique("quantiles", qlev.tolist())
    return qlev


def check_estimate_options(moe, *, method="fit", benchmarks=None, family="auto", n_boot=2000,
                           ci_prob=0.95, max_extrapolation=2.0, allow_extrapolation=False,
                           min_sizes=3, min_slope_t=2.0, resample="both", combine="mean",
                           n_active=None, n_active_source="table", n_experts=None, top_k=None,
                           quantiles=(0.1, 0.5, 0.9)) -> EstimateOptions:
    """Check the MoE name and the options of an estimate; raise naming the bad one."""
    if not isinstance(moe, str) or not moe.strip():
        _reject("moe", moe, "a model name such as 'deepseek-v3'")
    if method not in ("fit", "scaling_law"):
        _reject("method", method, "'fit' or 'scaling_law'")
    n_boot = check_int("n_boot", n_boot, minimum=2, maximum=MAX_BOOT_DRAWS)
    ci_prob = check_prob("ci_prob", ci_prob)
    max_extrapolation = check_real("max_extrapolation", max_extrapolation, minimum=1.0)
    min_sizes = check_int("min_sizes", min_sizes, minimum=2)
    min_slope_t = check_real("min_slope_t", min_slope_t, minimum=0.0)
    _check_choices(method, resample, combine, n_active_source)
    if n_active is not None:
        n_active = check_real("n_active", n_active, minimum=0.0, open_min=True)
    benchmarks = _check_benchmark_list(benchmarks)
    if not isinstance(family, str) or not family.strip():
        _reject("family", family, "'auto', 'all' or a family name")
    if not isinstance(allow_extrapolation, (bool, np.bool_)):
        _reject("allow_extrapolation", allow_extrapolation, "True or False")
    qlev = _check_levels(quantiles)
    return EstimateOptions(
        method=method, benchmarks=benchmarks, family=family, n_boot=n_boot, ci_prob=ci_prob,
        max_extrapolation=max_extrapolation, allow_extrapolation=allow_extrapolation,
        min_sizes=min_sizes, min_slope_t=min_slope_t, resample=resample, combine=combine,
        n_active=n_active, n_active_source=n_active_source, n_experts=n_experts, top_k=top_k,
        quantiles=qlev)


# --------------------------------------------------------------------------------------------
# Fit candidates: one per (table, dense family, benchmark)
# --------------------------------------------------------------------------------------------


class _Cards:
    """The MoE's card, loaded at most once per estimate."""

    def __init__(self, moe):
        self.moe, self.loaded, self.card = moe, False, None

    def get(self):
        if not self.loaded:
            self.card, self.loaded = model_card(card_name(self.moe)), True
        return self.card


def _active_params(mrows, opts, cards):
    """(N_active, where it comes from) of the MoE rows of one benchmark."""
    act = [r.active_params for r in mrows if np.isfinite(r.active_params)]
    if opts.n_active is not None:
        return float(opts.n_active), "argument"
    if opts.n_active_source == "card" or not act:
        card = cards.get()
        if card is None and act and opts.n_active_source == "card":
            raise McrouteError(f"n_active_source='card': no model card for {cards.moe!r}")
        return (float(card.active_params), "card") if card is not None else (math.nan, "none")
    return float(np.mean(act)), "table"


def _dense_families(rows):
    """{family key: (prefix, {model: [rows]})} of the dense rows with a stated size."""
    fams: dict = {}
    for r in rows:
        if r.arch != "dense" or not np.isfinite(r.active_params):
            continue
        key, prefix = family_key(r.model)
        fams.setdefault(key, (prefix, {}))[1].setdefault(r.model, []).append(r)
    return fams


def _family_keys(fams, family, moe_pref):
    if family == "auto":
        own = [k for k, (p, _) in fams.items() if p == moe_pref]
        return own or list(fams)
    if family == "all":
        return list(fams)
    f = family.strip().lower()
    return [k for k, (p, _) in fams.items() if f in (k, p)]


def _group_candidates(t, bench, setting, label, rows, mrows, moe_pref, opts, cards):
    n_act, src = _active_params(mrows, opts, cards)
    sign, why = direction(bench, setting)
    moe_score = float(np.mean([r.score for r in mrows]))
    fams = _dense_families(rows)
    out = []
    for key in _family_keys(fams, opts.family.strip().lower(), moe_pref):
        prefix, models = fams[key]
        sizes = np.array([np.mean([r.active_params for r in rs]) for rs in models.values()])
        scores = np.array([np.mean([r.score for r in rs]) for rs in models.values()])
        n_sizes = np.unique(sizes).size
        if n_sizes < 2:
            continue
        reason = why
        if not np.isfinite(n_act):
            reason = reason or "active parameters not stated in the table and no card"
        if not reason and n_sizes < opts.min_sizes:
            reason = f"only {n_sizes} dense sizes (< min_sizes={opts.min_sizes})"
        out.append(dict(
            table=t.name, family=key, benchmark=label, setting=setting,
            sign=sign, moe_score=moe_score, n_active=n_act, n_active_source=src,
            sizes=sizes, scores=scores, models=list(models), reason=reason,
            cross_family=int(prefix != moe_pref), moe_rows=len(mrows),
        ))
    return out


def _table_candidates(moe, t, bench_filter, opts, cards):
    moe_rows = [r for r in t.rows if r.arch == "moe" and _match(moe, r.model)]
    if not moe_rows:
        return None
    moe_ids = {id(r) for r in moe_rows}
    groups: dict = {}
    for r in t.rows:
        groups.setdefault((r.benchmark, r.setting), []).append(r)
    settings_per_bench: dict = {}
    for b, s in groups:
        settings_per_bench.setdefault(b, set()).add(s)
    moe_pref = moe_prefix(moe_rows[0].model)
    cands = []
    for (bench, setting), rows in groups.items():
        mrows = [r for r in rows if id(r) in moe_ids]
        if not mrows:
            continue
        label = bench if len(settings_per_bench[bench]) == 1 else f"{bench} [{setting}]"
        if bench_filter is not None and bench.lower() not in bench_filter \
                and label.lower() not in bench_filter:
            continue
        cands += _group_candidates(t, bench, setting, label, rows, mrows, moe_pref, opts, cards)
    return cands


def _candidates(moe, tabs, opts):
    """Per (table, family, benchmark) fit candidates and table-level notes."""
    cands, notes = [], {}
    bench_filter = (None if opts.benchmarks is None
                    else {b.strip().lower() for b in opts.benchmarks})
    cards = _Cards(moe)
    for t in tabs:
        found = _table_candidates(moe, t, bench_filter, opts, cards)
        if found is None:
            continue
        if not found:
            notes[t.name] = "no dense family with >= 2 sizes scored on the MoE's benchmarks"
        cands += found
    return cands, notes


def _invert(c, *, max_extrapolation, allow_extrapolation, min_slope_t):
    """Fit one candidate, invert at the MoE's score and decide whether it is used."""
    out = {k: math.nan for k in FIT_META}
    out.update(n_sizes=int(np.unique(c["sizes"]).size), size_min=float(c["sizes"].min()),
               size_max=float(c["sizes"].max()), moe_score=c["moe_score"],
               n_active=c["n_active"], lower_is_better=int(c["sign"] < 0),
               cross_family=c["cross_family"], used=0)
    fit = fit_loglinear(c["sizes"], c["scores"])
    c["fit"] = fit
    out.update(intercept=fit["a"], slope=fit["b"], slope_se=fit["b_se"],
               r_squared=fit["r_squared"], resid_sd=fit["resid_sd"])
    reason = c["reason"]
    sb = c["sign"] * fit["b"] if c["sign"] else fit["b"]
    if not reason:
        if not sb > 0:
            reason = "slope has the wrong sign or is zero (score does not improve with size)"
        elif np.isfinite(fit["b_se"]) and fit["b_se"] > 0 and sb / fit["b_se"] < min_slope_t:
            reason = (f"flat fit: slope/se = {sb / fit['b_se']:.2f} < min_slope_t={min_slope_t:g} "
                      "(saturated or noisy)")
    if fit["b"] != 0 and np.isfinite(c["n_active"]):
        logn = (c["moe_score"] - fit["a"]) / fit["b"]
        n_eq = 10.0**logn
        out["n_dense_equiv"] = n_eq
        out["q_fit"] = n_eq / c["n_active"]
        out["extrapolation"] = max(1.0, n_eq / out["size_max"], out["size_min"] / n_eq)
        if not reason and sb > 0 and out["extrapolation"] > max_extrapolation:
            side = "above the largest" if n_eq > out["size_max"] else "below the smallest"
            msg = (f"extrapolates {out['extrapolation']:.3g}x {side} dense size "
                   f"(> max_extrapolation={max_extrapolation:g})")
            if allow_extrapolation:
                c["note"] = msg + "; included (allow_extrapolation=True)"
            else:
                reason = msg
    out["used"] = int(not reason)
    return out, reason


def _bootstrap(used, *, n_boot, entropy, resample, combine):
    """Bootstrap samples of the combined q from the used fits; returns (samples, n_dropped)."""
    j = len(used)
    logq = np.empty((j, n_boot))
    for i, c in enumerate(used):
        fit = c["fit"]
        lq_hat = math.log(c["q_fit"])
        n = fit["x"].size
        if resample == "benchmarks" or n <= 2:
            logq[i] = lq_hat
            continue
        # Residual bootstrap of the dense fit; the MoE's score gets a resampled residual too,
        # since it is measured with the same noise. Residuals are rescaled by sqrt(n/(n-2)) so
        # that their variance matches the unbiased residual variance.
        gen = generator(entropy, (1, i))
        res = fit["residuals"] * math.sqrt(n / (n - 2))
        draw = res[gen.integers(0, n, size=(n_boot, n + 1))]
        xd = np.column_stack([np.ones(n), fit["x"]])
        h = np.linalg.pinv(xd)  # (2, n): beta = h @ y
        delta = draw[:, :n] @ h.T
        a = fit["a"] + delta[:, 0]
        b = fit["b"] + delta[:, 1]
        ymoe = c["moe_score"] + draw[:, n]
        sign = c["sign"] or 1
        with np.errstate(divide="ignore", invalid="ignore"):
            logn = (ymoe - a) / b
            lq = logn * math.log(10.0) - math.log(c["n_active"])
        logq[i] = np.where(sign * b > 0, lq, np.nan)
    if resample == "fit":
        idx = np.broadcast_to(np.arange(j), (n_boot, j))
    else:
        idx = generator(entropy, (0,)).integers(0, j, size=(n_boot, j))
    picked = logq[idx, np.arange(n_boot)[:, None]]
    with np.errstate(invalid="ignore"), _quiet_nan():
        comb = np.nanmean(picked, axis=1) if combine == "mean" else np.nanmedian(picked, axis=1)
    ok = np.isfinite(comb)
    return np.exp(comb[ok]), int((~ok).sum()), float(np.isnan(picked).mean())


class _quiet_nan:
    """Silence numpy's 'Mean of empty slice' RuntimeWarning (all-NaN rows are handled)."""

    def __enter__(self):
        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def check_benchmark_names(benchmarks, tabs) -> None:
    """Refuse benchmark names that no table scores, listing the names the tables have."""
    known = set()
    for t in tabs:
        for r in t.rows:
            known.add(r.benchmark.lower())
            known.add(f"{r.benchmark} [{r.setting}]".lower())
    unknown = [b for b in benchmarks if b.strip().lower() not in known]
    if unknown:
        plain = sorted({r.benchmark for t in tabs for r in t.rows}, key=str.lower)
        raise McrouteError(f"benchmarks: unknown {', '.join(map(repr, unknown))}; the tables "
                           f"score: {'; '.join(plain)} (a setting can be added as "
                           "'NAME [SETTING]')")


# --------------------------------------------------------------------------------------------
# The estimates
# --------------------------------------------------------------------------------------------


@dataclass
class FitEstimate:
    """Everything :func:`mcroute.estimate_q` reports for ``method="fit"``, as arrays.

    ``cands`` (one dict per fit: table, family, benchmark, setting, sizes, scores, models...),
    ``rows`` (the :data:`FIT_META` values of each fit), ``reasons`` (why a fit is excluded or
    flagged), ``used`` (the fits entering q), ``samples`` (bootstrap draws of q), ``q_point``,
    ``spread`` (quantiles of single-benchmark q), ``ci`` (lower, median, upper), ``notes``
    (tables without a usable fit), ``tabs`` (the tables read).
    """

    cands: list
    rows: list
    reasons: list
    used: list
    samples: np.ndarray
    n_dropped: int
    frac_nan: float
    q_point: float
    spread: np.ndarray
    ci: tuple
    notes: dict
    tabs: list


def estimate_by_fit(moe, tables, opts: EstimateOptions, entropy: int) -> FitEstimate:
    """The fit estimate of q for ``moe`` from ``tables`` (options already checked)."""
    tabs = load_quality_tables(tables)
    if not any(r.arch == "moe" and _match(moe, r.model) for t in tabs for r in t.rows):
        known = sorted({card_name(r.model) for t in tabs for r in t.rows if r.arch == "moe"})
        raise McrouteError(f"moe {moe!r} is not scored in the tables; known MoEs: "
                           f"{', '.join(known)}")
    if opts.benchmarks is not None:
        check_benchmark_names(opts.benchmarks, tabs)
    cands, notes = _candidates(moe, tabs, opts)
    rows, reasons = [], []
    for c in cands:
        r, why = _invert(c, max_extrapolation=opts.max_extrapolation,
                         allow_extrapolation=opts.allow_extrapolation,
                         min_slope_t=opts.min_slope_t)
        c["q_fit"] = r["q_fit"]
        rows.append(r)
        reasons.append(why or c.get("note", ""))
    used = [c for c, r in zip(cands, rows, strict=True) if r["used"]]
    qlev, n_boot = opts.quantiles, opts.n_boot
    if used:
        n_max = max(c["fit"]["x"].size for c in used)
        check_bytes(f"the bootstrap ({n_boot} replicates x {len(used)} benchmark fits and "
                    f"{n_max + 1} residual draws, float64)",
                    n_boot * (3 * len(used) + n_max + 1) * 8, "n_boot")
        samples, n_dropped, frac_nan = _bootstrap(used, n_boot=n_boot, entropy=entropy,
                                                  resample=opts.resample, combine=opts.combine)
        lq = np.log([c["q_fit"] for c in used])
        q_point = float(np.exp(lq.mean() if opts.combine == "mean" else np.median(lq)))
        spread = np.quantile(np.exp(lq), qlev)
    else:
        samples, n_dropped, frac_nan = np.empty(0), 0, 0.0
        q_point, spread = math.nan, np.full(qlev.size, math.nan)
    if samples.size:
        p = opts.ci_prob
        ci = tuple(np.quantile(samples, [(1 - p) / 2, 0.5, (1 + p) / 2]))
    else:
        ci = (math.nan, math.nan, math.nan)
    return FitEstimate(cands=cands, rows=rows, reasons=reasons, used=used, samples=samples,
                       n_dropped=n_dropped, frac_nan=frac_nan, q_point=q_point, spread=spread,
                       ci=ci, notes=notes, tabs=tabs)


@dataclass
class ScalingLawEstimate:
    """The q of Clark et al. (2022) for one MoE, with what it was computed from."""

    q: float
    n_active: float
    expansion: float
    n_dense_equiv: float
    constants: dict
    constants_source: str
    notes: list
    layout_source: str


def estimate_by_scaling_law(moe, opts: EstimateOptions) -> ScalingLawEstimate:
    """Q = N_effective / N_active with ``E = n_experts / top_k`` (layout from the card)."""
    card = None
    if opts.n_active is None or opts.n_experts is None or opts.top_k is None:
        card = model_card(card_name(moe))
        if card is None:
            raise McrouteError(
                f"method='scaling_law' needs n_active, n_experts and top_k for {moe!r} "
                "(no model card found)"
            )
    n_act = float(opts.n_active if opts.n_active is not None else card.active_params)
    e = check_int("n_experts", opts.n_experts if opts.n_experts is not None else card.n_experts,
                  minimum=2)
    k = check_int("top_k", opts.top_k if opts.top_k is not None else card.top_k, minimum=1,
                  maximum=e)
    expansion = e / k
    consts, where = clark_constants()
    n_bar = float(clark_effective_params(n_act, expansion, consts))
    notes = []
    if expansion > consts["E_max"]:
        notes.append(f"E = n_experts/top_k = {expansion:g} is above E_max = {consts['E_max']:g}: "
                     "the law saturates there")
    if n_act > 937e9:
        notes.append("N is above the S-BASE cutoff N_cutoff = 937B where routing stops helping")
    if k > 1 or e > consts["E_max"]:
        notes.append("the law was fitted with experts of dense-FFN size and 130B training "
                     "tokens; E = n_experts/top_k is mcroute's mapping for other layouts "
                     "(Krajewski et al. 2024 argue the law undercounts fine-grained MoE)")
    return ScalingLawEstimate(q=n_bar / n_act, n_active=n_act, expansion=expansion,
                              n_dense_equiv=n_bar, constants=consts, constants_source=where,
                              notes=notes, layout_source="arguments" if card is None
                              else "model card")


#: Bootstrap draws of q already computed, keyed by value: (moe, entropy, options, and the name
#: and SHA-256 of every shared table, a few kB each). Bounded in size.
_SAMPLES_CACHE: dict = {}
_SAMPLES_CACHE_SIZE = 32


def _tables_stamp():
    try:
        files = sorted(f for f in quality_dir().glob("*.csv"))
    except McrouteError:
        return None
    try:
        return tuple((str(f), hashlib.sha256(f.read_bytes()).hexdigest()) for f in files)
    except OSError:
        return None


def estimate_samples(moe, tables=None, *, rng=DEFAULT_ESTIMATE_SEED, **options):
    """Bootstrap draws of q for ``moe`` and their provenance, without building a Dataset.

    The same draws as ``estimate_q(moe, tables, rng=rng, **options)["q_samples"]``. With the
    shared tables (``tables=None``) the result is cached by value (the tables' names and
    contents are part of the key), so resolving ``q="estimate"`` twice runs the
    estimator once.

    Returns
    -------
    (ndarray, dict)
        The draws (read-only; empty if no benchmark could be used) and
        ``{"moe", "method", "seed", "mcroute_version"}``.
    """
    opts = check_estimate_options(moe, **options)
    entropy = resolve_seed(rng)
    key = None
    if tables is None:
        stamp = _tables_stamp()
        if stamp is not None:
            key = (moe, entropy, repr(sorted(options.items())), stamp)
            if key in _SAMPLES_CACHE:
                return _SAMPLES_CACHE[key]
    if opts.method == "scaling_law":
        samples = np.array([estimate_by_scaling_law(moe, opts).q])
    else:
        samples = estimate_by_fit(moe, tables, opts, entropy).samples
    samples = np.array(samples, dtype=float)
    samples.setflags(write=False)
    out = samples, {"moe": moe, "method": opts.method, "seed": int(entropy),
                    "mcroute_version": __version__}
    if key is not None:
        if len(_SAMPLES_CACHE) >= _SAMPLES_CACHE_SIZE:
            _SAMPLES_CACHE.pop(next(iter(_SAMPLES_CACHE)))
        _SAMPLES_CACHE[key] = out
    return out

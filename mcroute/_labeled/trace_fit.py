"""Fitting, inspecting and checking routing traces (labeled layer).

May import: numpy, scipy, xarray, and the array layer (``_traces``, ``_routing``, ``_sampling``,
``_results``, ``_rng``, ``_validate``).

* :func:`fit_routing` — per layer, maximum-likelihood Zipf α and log-normal σ of the popularity
  ranked by frequency, with bootstrap confidence intervals and goodness of fit, and the
  overdispersion ρ of microbatch loads when the trace records microbatches.
* :func:`inspect_trace` — per layer: tokens, hottest expert's share, entropy, effective number
  of experts, Gini, and correlations between consecutive layers and decode steps.
* :func:`real_batch_check` — real decode batches against what the routing models predict.
"""

from __future__ import annotations

import functools

import numpy as np
import xarray as xr
from scipy import interpolate, stats

from mcroute._base.rng import generator, resolve_seed
from mcroute._base.validate import (
    MAX_BOOT_DRAWS,
    McrouteError,
    check_bytes,
    check_choice,
    check_int,
    check_prob,
)
from mcroute._labeled.results import provenance
from mcroute._routing.composite import Correlated
from mcroute._routing.distributions import LogNormal, Uniform, Zipf
from mcroute._routing.sampling import microbatch_stats, sample_counts
from mcroute._traces.overdispersed import Overdispersed
from mcroute._traces.trace import LayeredPopularity, PopularityTrace, Trace

__all__ = ["fit_routing", "fitted_routing", "overdispersion", "inspect_trace",
           "real_batch_check", "fit_correlated", "FIT_GRID", "CORRELATED_SIGMA_GRID"]

#: Parameter grid [start, stop, step] of the Zipf α and log-normal σ fits. Inclusion
#: probabilities are computed exactly at these points and interpolated in between by a cubic
#: spline of log π (per rank) evaluated on a grid 20 times finer, where the likelihood is
#: maximised (refined by a parabola through the three best fine points).
FIT_GRID = (0.0, 5.0, 0.05)
_FINE = 20

#: Above this many simulated top-k draws (tokens · k · bootstrap replicates) the parametric
#: bootstrap draws each expert's count as an independent Binomial(N, π_e) (exact marginals, the
#: fixed total N·k relaxed) instead of simulating every token.
_EXACT_BOOTSTRAP_DRAWS = 20_000_000

_FAMILIES = ("zipf", "lognormal")


def _family_routing(family, n_experts, top_k, theta):
    cls = Zipf if family == "zipf" else LogNormal
    return cls(n_experts, top_k, float(theta), permute=False)


@functools.lru_cache(maxsize=32)
def _rank_grid(family, n_experts, top_k):
    """Fine grid of θ and log of the rank-ordered inclusion probabilities (grid, rank)."""
    theta = np.arange(FIT_GRID[0], FIT_GRID[1] + FIT_GRID[2] / 2, FIT_GRID[2])
    logpi = np.empty((theta.size, n_experts))
    for i, t in enumerate(theta):
        r = _family_routing(family, n_experts, top_k, t)
        pi = np.sort(r.inclusion_probabilities(1)[0])[::-1]
        logpi[i] = np.log(np.clip(pi, 1e-300, 1.0))
    fine = np.linspace(theta[0], theta[-1], (theta.size - 1) * _FINE + 1)
    lf = interpolate.CubicSpline(theta, logpi, axis=0)(fine)
    # Renormalise so each row's inclusion probabilities sum to k exactly after interpolation.
    lf -= np.log(np.exp(lf).sum(axis=1, keepdims=True) / top_k)
    fine.setflags(write=False)
    lf.setflags(write=False)
    return fine, lf


def _grid_fit(sorted_counts, family, n_experts, top_k):
    """ML θ for each row of ``sorted_counts`` (rep, rank): fine-grid argmax + parabola.

    The log-likelihood treats the selections as draws from π_r / k, r the rank by frequency
    (the profile likelihood over the unknown expert-to-rank assignment).
    """
    theta, logpi = _rank_grid(family, n_experts, top_k)
    ll = (logpi - np.log(top_k)) @ np.asarray(sorted_counts, dtype=float).T  # (grid, rep)
    i = np.argmax(ll, axis=0)
    j = np.clip(i, 1, theta.size - 2)
    cols = np.arange(ll.shape[1])
    y0, y1, y2 = ll[j - 1, cols], ll[j, cols], ll[j + 1, cols]
    den = y0 - 2 * y1 + y2
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(den < 0, 0.5 * (y0 - y2) / den, 0.0)
    h = theta[1] - theta[0]
    edge = (i == 0) | (i == theta.size - 1)
    est = np.where(edge, theta[i], theta[j] + np.clip(off, -1, 1) * h)
    return est, ll[i, cols], edge


def _deviance(sorted_counts, family, n_experts, top_k, theta_hat, n_tok):
    """G² = 2 Σ c log(c / (N π_r(θ))) of ranked counts (rep, rank) against the family at θ (rep,).

    π_r(θ) is read off the fine spline grid at the nearest point.
    """
    theta, logpi = _rank_grid(family, n_experts, top_k)
    th = np.atleast_1d(np.asarray(theta_hat, dtype=float))
    idx = np.clip(np.rint((th - theta[0]) / (theta[1] - theta[0])).astype(int), 0, theta.size - 1)
    p = np.exp(logpi[idx])
    c = np.atleast_2d(np.asarray(sorted_counts, dtype=float))
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(c > 0, c * np.log(c / (n_tok * p)), 0.0)
    return 2.0 * term.sum(axis=-1)


def _boot_counts(family, n_experts, top_k, theta, n_tok, n_boot, entropy, key):
    r = _family_routing(family, n_experts, top_k, theta)
    if n_tok * top_k * n_boot <= _EXACT_BOOTSTRAP_DRAWS:
        c = sample_counts(r, n_tok, n_boot, rng=int(generator(entropy, key).integers(2**62)),
                          method="assignment" if top_k > 1 else "auto")[:, 0, :]
        return c, "exact"
    pi = r.inclusion_probabilities(1)[0]
    c = generator(entropy, key).binomial(n_tok, np.clip(pi, 0, 1), size=(n_boot, n_experts))
    return c, "binomial"


def _layer_data(trace):
    if isinstance(trace, Trace):
        return trace.layer_counts(), trace.layer_n_tokens()
    if isinstance(trace, PopularityTrace):
        return trace.layer_counts(), trace.layer_n_tokens()
    raise McrouteError(f"trace must be a Trace or PopularityTrace, got {type(trace).__name__}")


def overdispersion(trace, *, n_boot=1000, ci_prob=0.95, rng=None, block=None):
    """Overdispersion ρ of per-expert microbatch loads, per layer and pooled, with intervals.

    Parameters
    ----------
    trace : Trace
        Must record microbatches (``batch`` ids; prefill tokens are left out).
    n_boot : int
        Bootstrap replicates of the moving-block bootstrap over microbatches.
    ci_prob : float
        Interval level.
    rng : None, int, SeedSequence or Generator
        Seed of the bootstrap.
    block : int, optional
        Block length in consecutive microbatches (default ⌈G^(1/3)⌉ for G microbatches):
        consecutive decode steps share sequences, so they are not independent.

    Returns
    -------
    dict
        ``rho`` (layer,), ``rho_ci`` (layer, 2), ``rho_pooled``, ``rho_pooled_ci`` (2,),
        ``n_batches``, ``batch_sizes`` (G,), ``block``.

    Notes
    -----
    Microbatch b holds n_b tokens, x_be of which include expert e; π̂_e = Σ_b x_be / N. If each
    microbatch's inclusion probability of e varies around π_e with variance ρ·π_e(1 − π_e)
    (tokens independent given it), then E[(x_be − n_b π_e)²] = n_b π_e(1−π_e)(1 + (n_b−1)ρ), and
    with π̂ in place of π the Pearson statistic Q = Σ_e Σ_b (x_be − n_b π̂_e)² / (n_b v̂_e) has
    expectation E'·[(G − 1)(1 − ρ) + ρ·(N − Σ n_b² / N)] over the E' experts with v̂_e > 0.
    Solving for ρ gives the moment estimator (the ANOVA estimator of an intra-class
    correlation). Independent tokens give ρ = 0; the :class:`~mcroute.Overdispersed` routing
    with the same ρ reproduces this load variance.
    """
    if not isinstance(trace, Trace):
        raise McrouteError("overdispersion needs a Trace with microbatch (batch) ids")
    n_boot = check_int("n_boot", n_boot, minimum=10, maximum=MAX_BOOT_DRAWS)
    ci_prob = check_prob("ci_prob", ci_prob)
    check_bytes(f"the bootstrap ({n_boot} replicates x {trace.n_trace_layers} layers, float64)",
                n_boot * (trace.n_trace_layers + 1) * 8, "n_boot")
    keep = (trace.batch >= 0) & ~trace.prefill
    if not np.any(keep):
        raise McrouteError("the trace records no microbatches (batch ids) of decode tokens")
    bids, inv = np.unique(trace.batch[keep], return_inverse=True)
    sizes = np.bincount(inv)
    if bids.size < 3 or sizes.max() < 2:
        raise McrouteError("overdispersion needs at least 3 microbatches with 2 or more tokens")
    ex = trace.experts[keep]
    n_lay, e = trace.n_trace_layers, trace.n_experts
    g = bids.size
    x = np.zeros((n_lay, g, e))
    for layer in range(n_lay):
        for j in range(trace.top_k):
            np.add.at(x[layer], (inv, ex[:, layer, j]), 1.0)
    block = max(1, int(np.ceil(g ** (1 / 3)))) if block is None else check_int("block", block,
                                                                               minimum=1)

    def estimate(xs, ns):
        n_tot = ns.sum()
        pi = xs.sum(axis=1) / n_tot  # (layer, e)
        v = pi * (1 - pi)
        ok = v > 0
        dev = (xs - ns[None, :, None] * pi[:, None, :]) ** 2 / ns[None, :, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(ok, dev.sum(axis=1) / np.where(ok, v, 1.0), 0.0).sum(axis=1)
        ep = ok.sum(axis=1)
        gg = ns.size
        nc = n_tot - (ns ** 2).sum() / n_tot
        rho = (q / ep - (gg - 1)) / (nc - (gg - 1))
        pooled = (q.sum() / ep.sum() - (gg - 1)) / (nc - (gg - 1))
        return rho, pooled

    rho, pooled = estimate(x, sizes.astype(float))
    gen = generator(resolve_seed(rng), (7,))
    n_blocks = -(-g // block)
    reps = np.empty((n_boot, n_lay))
    reps_p = np.empty(n_boot)
    for i in range(n_boot):
        starts = gen.integers(0, g, size=n_blocks)
        idx = ((starts[:, None] + np.arange(block)[None, :]) % g).ravel()[:g]
        reps[i], reps_p[i] = estimate(x[:, idx], sizes[idx].astype(float))
    a = (1 - ci_prob) / 2
    # Basic (reflected) bootstrap interval, clipped to the parameter range [0, 1).
    ci = np.stack([2 * rho - np.quantile(reps, 1 - a, axis=0),
                   2 * rho - np.quantile(reps, a, axis=0)], axis=-1)
    ci_p = np.array([2 * pooled - np.quantile(reps_p, 1 - a), 2 * pooled - np.quantile(reps_p, a)])
    return {"rho": rho, "rho_ci": np.clip(ci, 0, 1), "rho_pooled": float(pooled),
            "rho_pooled_ci": np.clip(ci_p, 0, 1), "n_batches": int(g), "batch_sizes": sizes,
            "block": block}


def fit_routing(trace, *, n_boot=200, ci_prob=0.95, rng=None):
    """Fit Zipf and log-normal popularity per layer, and the overdispersion, to a trace.

    Parameters
    ----------
    trace : Trace or PopularityTrace
        Per-token trace or per-layer histograms.
    n_boot : int
        Parametric bootstrap replicates for the intervals, bias and goodness of fit.
    ci_prob : float
        Interval level.
    rng : None, int, SeedSequence or Generator
        Seed of the bootstrap; stored as ``attrs["seed"]``.

    Returns
    -------
    xarray.Dataset
        Dims ``layer`` (model layer ids of the trace), ``family`` (``zipf``, ``lognormal``),
        ``ci_bound``. Variables: ``n_tokens``; ``alpha`` (bias-corrected), ``alpha_ml``,
        ``alpha_ci``, ``alpha_bias``, and the same for ``sigma``; per family ``loglik``,
        ``deviance``, ``gof_pvalue``, ``at_grid_edge``; ``better_family`` and ``delta_loglik``
        (Zipf minus log-normal); and, for traces with microbatches, ``rho``, ``rho_ci``,
        ``rho_pooled``, ``rho_pooled_ci``.

    Notes
    -----
    The model is the package's own: a token picks k distinct experts by successive sampling
    (Plackett–Luce) from rank weights ``r^-α`` (Zipf) or ``exp(σ z_r)`` (log-normal, z_r the
    standard-normal quantiles, as in :class:`~mcroute.LogNormal`). Its inclusion probabilities
    π_r(θ) are matched to the experts ranked by observed frequency with the multinomial
    likelihood ``Σ_r c_(r) log(π_r(θ) / k)`` of the N·k selections. Ranking by the observed
    counts maximises over the unknown expert-to-rank assignment (a profile likelihood), which
    biases θ upwards when counts are small; a parametric bootstrap (re-simulating N tokens from
    the fitted model and refitting, ranks included) estimates that bias (``*_bias``); the
    reported ``alpha`` / ``sigma`` are bias-corrected (``θ̂ − bias``, clipped at 0) and the
    intervals are basic bootstrap intervals ``[2θ̂ − q_hi, 2θ̂ − q_lo]``, which correct the bias
    to first order too.
    Goodness of fit: the deviance G² of the ranked counts, with the bootstrap p-value (share of
    replicates with a larger deviance). ``better_family`` is the one with the larger likelihood
    (both have one parameter). For large traces (N·k·n_boot > 2·10⁷ draws) the bootstrap draws
    each expert's count as Binomial(N, π_e) (``attrs["bootstrap"]``).

    Examples
    --------
    >>> import mcroute as mr
    >>> counts = mr.sample_counts(mr.Zipf(16, 2, 1.0), batch_size=4000, n_trials=1, rng=3)[0]
    >>> p = mr.PopularityTrace(counts, n_tokens=4000, top_k=2)
    >>> fit = mr.fit_routing(p, n_boot=50, rng=0)
    >>> bool(abs(float(fit["alpha"][0]) - 1.0) < 0.1), str(fit["better_family"].values[0])
    (True, 'zipf')
    """
    counts, ntok = _layer_data(trace)
    n_boot = check_int("n_boot", n_boot, minimum=10, maximum=MAX_BOOT_DRAWS)
    ci_prob = check_prob("ci_prob", ci_prob)
    entropy = resolve_seed(rng)
    e, k = trace.n_experts, trace.top_k
    check_bytes(f"the bootstrap counts ({n_boot} replicates x {e} experts, int64)",
                n_boot * e * 8 * 2, "n_boot")
    n_lay = counts.shape[0]
    a = (1 - ci_prob) / 2
    res = {name: np.full(n_lay, np.nan) for name in ("alpha", "alpha_ml", "alpha_bias", "sigma",
                                                     "sigma_ml", "sigma_bias")}
    ci = {name: np.full((n_lay, 2), np.nan) for name in ("alpha", "sigma")}
    loglik = np.full((2, n_lay), np.nan)
    dev = np.full((2, n_lay), np.nan)
    pval = np.full((2, n_lay), np.nan)
    edge = np.zeros((2, n_lay), dtype=bool)
    boot_kind = set()
    for layer in range(n_lay):
        c = np.sort(counts[layer])[::-1]
        for fi, fam in enumerate(_FAMILIES):
            th, ll, ed = _grid_fit(c[None, :], fam, e, k)
            th = float(th[0])
            loglik[fi, layer] = float(ll[0])
            edge[fi, layer] = bool(ed[0])
            d0 = float(_deviance(c, fam, e, k, th, ntok[layer])[0])
            bc, kind = _boot_counts(fam, e, k, th, int(ntok[layer]), n_boot, entropy, (layer, fi))
            boot_kind.add(kind)
            bs = -np.sort(-bc, axis=1)
            tb, _, _ = _grid_fit(bs, fam, e, k)
            db = _deviance(bs, fam, e, k, tb, ntok[layer])
            name = "alpha" if fam == "zipf" else "sigma"
            res[f"{name}_ml"][layer] = th
            res[f"{name}_bias"][layer] = float(tb.mean() - th)
            res[name][layer] = max(th - float(tb.mean() - th), 0.0)
            lo = max(2 * th - np.quantile(tb, 1 - a), 0.0)
            ci[name][layer] = [lo, 2 * th - np.quantile(tb, a)]
            dev[fi, layer] = d0
            pval[fi, layer] = float((np.sum(db >= d0) + 1) / (n_boot + 1))
    better = np.where(loglik[0] >= loglik[1], "zipf", "lognormal")
    coords = {
        "layer": ("layer", trace.layer_ids, {"units": "1", "long_name": "model layer index"}),
        "family": ("family", list(_FAMILIES), {"units": "1", "long_name": "popularity family"}),
        "ci_bound": ("ci_bound", ["lower", "upper"],
                     {"units": "1", "long_name": "bound of a confidence interval"}),
    }
    ci_attrs = {"ci_kind": "basic parametric bootstrap", "ci_prob": ci_prob}
    data = {
        "n_tokens": ("layer", ntok, {"units": "tokens", "long_name": "tokens behind the fit"}),
        "alpha": ("layer", res["alpha"], {"units": "1", "long_name":
                                          "Zipf exponent (ML, bootstrap bias-corrected)"}),
        "alpha_ml": ("layer", res["alpha_ml"], {"units": "1", "long_name":
                                                "maximum-likelihood Zipf exponent"}),
        "alpha_ci": (("layer", "ci_bound"), ci["alpha"],
                     {"units": "1", "long_name": "confidence interval of the Zipf exponent",
                      **ci_attrs}),
        "alpha_bias": ("layer", res["alpha_bias"],
                       {"units": "1", "long_name": "bootstrap estimate of the bias of alpha"}),
        "sigma": ("layer", res["sigma"], {"units": "1", "long_name":
                                          "log-normal shape (ML, bootstrap bias-corrected)"}),
        "sigma_ml": ("layer", res["sigma_ml"], {"units": "1", "long_name":
                                                "maximum-likelihood log-normal shape"}),
        "sigma_ci": (("layer", "ci_bound"), ci["sigma"],
                     {"units": "1", "long_name": "confidence interval of the log-normal shape",
                      **ci_attrs}),
        "sigma_bias": ("layer", res["sigma_bias"],
                       {"units": "1", "long_name": "bootstrap estimate of the bias of sigma"}),
        "loglik": (("family", "layer"), loglik,
                   {"units": "1", "long_name": "maximised log-likelihood of the ranked counts"}),
        "deviance": (("family", "layer"), dev,
                     {"units": "1", "long_name": "deviance G2 of the ranked counts"}),
        "gof_pvalue": (("family", "layer"), pval,
                       {"units": "1", "long_name": "bootstrap p-value of the deviance"}),
        "at_grid_edge": (("family", "layer"), edge.astype(np.int8),
                         {"units": "1", "long_name": "1 if the estimate is at the edge of "
                                                     f"the grid {FIT_GRID[:2]}"}),
        "better_family": ("layer", better.astype(str),
                          {"units": "1", "long_name": "family with the larger likelihood"}),
        "delta_loglik": ("layer", loglik[0] - loglik[1],
                         {"units": "1", "long_name": "log-likelihood of Zipf minus log-normal"}),
    }
    od_note = "no microbatch structure: overdispersion not estimated"
    if isinstance(trace, Trace) and np.any((trace.batch >= 0) & ~trace.prefill):
        try:
            od = overdispersion(trace, ci_prob=ci_prob, rng=entropy)
        except McrouteError as exc:
            od_note = f"overdispersion not estimated: {exc}"
        else:
            od_note = (f"overdispersion from {od['n_batches']} microbatches, moving-block "
                       f"bootstrap with blocks of {od['block']}")
            data["rho"] = ("layer", od["rho"], {"units": "1", "long_name": "overdispersion "
                                                "(intra-microbatch correlation of inclusion)"})
            data["rho_ci"] = (("layer", "ci_bound"), od["rho_ci"],
                              {"units": "1", "long_name": "confidence interval of rho",
                               "ci_kind": "basic block bootstrap", "ci_prob": ci_prob})
            data["rho_pooled"] = ((), od["rho_pooled"],
                                  {"units": "1", "long_name": "overdispersion pooled over layers"})
            data["rho_pooled_ci"] = ("ci_bound", od["rho_pooled_ci"],
                                     {"units": "1", "long_name": "confidence interval of "
                                      "rho_pooled", "ci_kind": "basic block bootstrap",
                                      "ci_prob": ci_prob})
    ds = xr.Dataset(data, coords=coords)
    ds.attrs = provenance(seed=entropy, n_trials=n_boot, ci_prob=ci_prob,
                          trace=trace.describe(), bootstrap=",".join(sorted(boot_kind)),
                          overdispersion=od_note, n_experts=e, top_k=k)
    return ds


def fitted_routing(trace, fit, family):
    """Routing with the fitted popularity per trace layer, on the experts' observed ranks.

    Parameters
    ----------
    trace : Trace or PopularityTrace
        The trace that was fitted (its expert ranking places the fitted weights).
    fit : xarray.Dataset
        From :func:`fit_routing`.
    family : {"zipf", "lognormal"}

    Returns
    -------
    Popularity
        Weights (trace_layer, expert): the family's rank weights at the fitted parameter, the
        hottest on the most frequent expert; sample it with ``n_layers`` = trace layers.
    """
    if not isinstance(family, str) or family not in _FAMILIES:
        raise McrouteError(f"family must be 'zipf' or 'lognormal', got {family!r}"[:200])
    if not isinstance(fit, xr.Dataset) or not {"alpha", "sigma"} <= set(fit.data_vars):
        raise McrouteError("fit must be the dataset fit_routing returns (with 'alpha' and "
                           f"'sigma'), got {type(fit).__name__}")
    counts, _ = _layer_data(trace)
    theta = fit["alpha" if family == "zipf" else "sigma"].values
    if theta.size != counts.shape[0]:
        raise McrouteError("fit and trace have different numbers of layers")
    w = np.empty(counts.shape, dtype=float)
    for layer in range(counts.shape[0]):
        rw = _family_routing(family, trace.n_experts, trace.top_k, theta[layer]).popularity(1)[0]
        order = np.argsort(-counts[layer], kind="stable")
        w[layer, order] = np.sort(rw)[::-1]
    return LayeredPopularity(w, top_k=trace.top_k)


# ---------------------------------------------------------------------------------------------
# Inspection
# ---------------------------------------------------------------------------------------------


def _cramers_v(a, b, n_a, n_b):
    """Bias-corrected Cramér's V (Bergsma 2013) of two categorical arrays."""
    n = a.size
    if n < 2:
        return np.nan
    table = np.zeros((n_a, n_b))
    np.add.at(table, (a, b), 1.0)
    table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
    r, c = table.shape
    if r < 2 or c < 2:
        return np.nan
    exp = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / n
    phi2 = float(((table - exp) ** 2 / exp).sum() / n)
    phi2c = max(0.0, phi2 - (r - 1) * (c - 1) / (n - 1))
    rc = r - (r - 1) ** 2 / (n - 1)
    cc = c - (c - 1) ** 2 / (n - 1)
    d = min(rc - 1, cc - 1)
    return float(np.sqrt(phi2c / d)) if d > 0 else np.nan


def inspect_trace(trace) -> xr.Dataset:
    """Per-layer summary of a trace: skew, spread and correlation of the choices.

    Returns
    -------
    xarray.Dataset
        Dim ``layer`` (model layer ids). ``n_tokens``; ``hottest_share`` (share of all
        selections taken by the most popular expert; uniform is 1/E); ``entropy`` [nat] of the
        selection shares and ``effective_experts`` = exp(entropy) (E when uniform);
        ``gini`` of the shares (0 uniform); ``layer_correlation``: bias-corrected Cramér's V
        between the first-choice expert at this layer and at the next trace layer (0:
        independent, 1: determined); ``step_overlap``: mean share of a token's k experts also
        chosen by the previous token of the same sequence at this layer, and
        ``step_overlap_chance``: the same for independent tokens, Σ_e π_e² / k. NaN where the
        trace lacks the data (histograms, no sequence ids).

    Examples
    --------
    >>> import numpy as np, mcroute as mr
    >>> ex = np.array([[[0, 1]], [[0, 1]], [[2, 3]], [[2, 3]]])
    >>> ds = mr.inspect_trace(mr.Trace(ex, 4, sequence=[0, 0, 0, 0], step=[0, 1, 2, 3]))
    >>> float(ds["effective_experts"][0]), float(ds["step_overlap"][0])
    (4.0, 0.6666666666666666)
    """
    counts, ntok = _layer_data(trace)
    e, k = trace.n_experts, trace.top_k
    n_lay = counts.shape[0]
    share = counts / counts.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(share > 0, share * np.log(share), 0.0).sum(axis=1)
    srt = np.sort(share, axis=1)
    i = np.arange(1, e + 1)
    gini = ((2 * i - e - 1) * srt).sum(axis=1) / (e * srt.sum(axis=1))
    layer_corr = np.full(n_lay, np.nan)
    overlap = np.full(n_lay, np.nan)
    chance = (counts / ntok[:, None].astype(float)) ** 2
    chance = chance.sum(axis=1) / k
    if isinstance(trace, Trace):
        ex = trace.experts
        for layer in range(n_lay - 1):
            layer_corr[layer] = _cramers_v(ex[:, layer, 0], ex[:, layer + 1, 0], e, e)
        seq, step = trace.sequence, trace.step
        known = (seq >= 0) & (step >= 0)
        if np.any(known):
            idx = np.nonzero(known)[0]
            order = idx[np.lexsort((step[idx], seq[idx]))]
            prev, nxt = order[:-1], order[1:]
            pair = (seq[prev] == seq[nxt]) & (step[nxt] == step[prev] + 1)
            prev, nxt = prev[pair], nxt[pair]
            if prev.size:
                for layer in range(n_lay):
                    a = ex[prev, layer, :]
                    b = ex[nxt, layer, :]
                    same = (a[:, :, None] == b[:, None, :]).any(axis=1).sum(axis=1)
                    overlap[layer] = float(same.mean() / k)
    data = {
        "n_tokens": ("layer", ntok, {"units": "tokens", "long_name": "tokens"}),
        "n_experts": ((), e, {"units": "experts", "long_name": "routed experts per layer"}),
        "top_k": ((), k, {"units": "experts", "long_name": "experts per token"}),
        "hottest_share": ("layer", share.max(axis=1),
                          {"units": "1", "long_name": "share of selections of the hottest expert"}),
        "entropy": ("layer", ent, {"units": "nat", "long_name": "entropy of selection shares"}),
        "effective_experts": ("layer", np.exp(ent),
                              {"units": "experts", "long_name": "exp(entropy)"}),
        "gini": ("layer", gini, {"units": "1", "long_name": "Gini coefficient of shares"}),
        "layer_correlation": ("layer", layer_corr, {
            "units": "1", "long_name": "bias-corrected Cramér's V of the first choice with the "
                                       "next trace layer"}),
        "step_overlap": ("layer", overlap, {
            "units": "1", "long_name": "share of k experts repeated from the previous decode "
                                       "step of the same sequence"}),
        "step_overlap_chance": ("layer", chance, {
            "units": "1", "long_name": "step_overlap expected for independent tokens"}),
    }
    coords = {"layer": ("layer", trace.layer_ids, {"units": "1", "long_name": "model layer"})}
    ds = xr.Dataset(data, coords=coords)
    ds.attrs = {"trace": str(trace.describe()), "model": trace.model}
    return ds


# ---------------------------------------------------------------------------------------------
# Real decode batches against the models
# ---------------------------------------------------------------------------------------------

#: Routings compared by :func:`real_batch_check`.
CHECK_ROUTINGS = ("token", "marginal", "zipf", "lognormal", "uniform", "overdispersed",
                  "correlated")


def _pooled_exact_active(tok, rhos, uniq, pos, n_lay):
    """Exact mean distinct experts over steps and layers under Overdispersed(tok, rho), per rho.

    A microbatch with K fresh tokens touches as many experts as K independent tokens:
    Σ_n P(K = n) f(n), f(n) = Σ_e 1 − (1 − π_e)^n, with the Chinese-restaurant law of K.
    """
    rhos = np.atleast_1d(np.asarray(rhos, dtype=float))
    bmax = int(uniq.max())
    pi = tok.inclusion_probabilities(n_lay)
    with np.errstate(divide="ignore"):
        lg = np.log1p(-np.minimum(pi, 1.0))
    n = np.arange(bmax + 1, dtype=float)
    f = (-np.expm1(lg[:, None, :] * n[None, :, None])).sum(axis=2).mean(axis=0)  # (n,)
    p = np.zeros((rhos.size, bmax + 1))
    p[:, 1] = 1.0
    per_size = np.empty((rhos.size, uniq.size))
    if uniq[0] == 1:
        per_size[:, 0] = p @ f
    for j in range(1, bmax):
        fr = ((1.0 - rhos) / (1.0 - rhos + j * rhos))[:, None]  # c / (c + j), c = 1/rho - 1
        p[:, 1:] = p[:, 1:] * (1.0 - fr) + p[:, :-1] * fr
        hit = np.nonzero(uniq == j + 1)[0]
        if hit.size:
            per_size[:, hit[0]] = p @ f
    return per_size[:, pos].mean(axis=1)


def real_batch_check(trace, *, n_trials=400, n_boot=1000, ci_prob=0.95, rng=None, fit=None,
                     holdout=None, routing="correlated"):
    """Distinct experts and busiest-expert load of real decode batches vs. model predictions.

    For every real decode step (a microbatch of n_b tokens, ``trace.batch``), the observed
    number of distinct experts and the busiest expert's load are compared, layer by layer, with
    what each routing predicts for microbatches of the same sizes: ``token`` and ``marginal``
    resampling of the decode tokens, the fitted ``zipf`` and ``lognormal`` popularity (placed
    on the observed expert ranking), ``uniform``, ``overdispersed`` (token resampling with
    the fitted pooled overdispersion ρ, :class:`~mcroute.Overdispersed`) and ``correlated``
    (:class:`~mcroute.Correlated` with σ fitted by :func:`fit_correlated` to all steps).

    With ``holdout="second-half"`` it also fits on the first half of the decode steps (the
    decode tokens of those steps, and σ by :func:`fit_correlated` with its warm-up
    detection) and predicts every step of the second half, layer by layer, with intervals;
    ``routing`` chooses which model's pooled errors go to ``attrs``.

    Parameters
    ----------
    trace : Trace
        With microbatch ids for its decode tokens (e.g. the Qwen1.5-MoE logs).
    n_trials : int
        Simulated microbatches per batch size and routing.
    n_boot : int
        Replicates of the moving-block bootstrap over decode steps (consecutive steps share
        sequences, so blocks of ⌈G^(1/3)⌉ steps are resampled together).
    ci_prob : float
        Interval level.
    rng : None, int, SeedSequence or Generator
        Seed (stored in ``attrs["seed"]``).
    fit : xarray.Dataset, optional
        A :func:`fit_routing` result of ``trace.decode_only()``; computed if None.
    holdout : None or "second-half"
        Also check predictions on held-out steps (fit on the first half of the steps).
    routing : {"correlated", "token"}
        The held-out model reported in ``attrs["holdout_active_experts_error"]`` and
        ``attrs["holdout_max_expert_load_error"]`` (both models are in the variables).

    Returns
    -------
    xarray.Dataset
        Dims ``step`` (real decode steps), ``layer``, ``routing``, ``ci_bound``.
        ``batch_size`` (step); ``observed_active_experts`` and ``observed_max_expert_load``
        (step, layer); their means over steps (``*_mean``, layer) with intervals; predicted
        means (routing, layer); ``active_experts_rel_error`` and
        ``max_expert_load_rel_error`` (routing, layer): predicted / observed − 1 (positive:
        the model over-predicts), and the same pooled over layers (``*_rel_error_all``,
        routing), all with ``_ci``; ``gap_closed`` and ``gap_closed_ci``: the share of the
        token-mode error in distinct experts (pooled over layers) that the overdispersed
        routing removes; ``rho_matching_active_experts`` (with ``_ci``): the ρ at which the
        overdispersed routing's exact expected distinct experts equal the observed mean, to
        compare with the fitted ``rho``; ``overdispersed_rel_error_at_rho_ci``: its relative
        error at the ends of the fitted ρ's interval; ``correlated_sigma`` (with ``_ci``):
        the σ of the ``correlated`` routing.
        With ``holdout``: dims ``holdout_step`` and ``holdout_routing`` (``correlated``,
        ``token``); ``holdout_batch_size``; ``holdout_observed_*`` (holdout_step, layer);
        ``holdout_predicted_*`` (holdout_routing, holdout_step, layer) with
        ``_interval`` (prediction interval of one step); ``holdout_*_rel_error`` (routing,
        layer) and ``holdout_*_rel_error_all`` (routing) with ``_ci`` and ``_mc_se``; attrs
        ``holdout_active_experts_error`` and ``holdout_max_expert_load_error`` (pooled
        predicted / observed − 1 of the chosen ``routing``) with ``_ci_lower``,
        ``_ci_upper`` and ``_mc_se``, ``holdout_sigma`` (with ``_ci_lower``/``_ci_upper``),
        ``holdout_warmup_steps``, ``holdout_fit_steps``,
        ``holdout_steps``.

    Notes
    -----
    Intervals combine the block-bootstrap spread of the relative errors (prediction and
    observation averaged over the same resampled steps) with the Monte Carlo standard error of
    the predictions (normal approximation). The predictions resample the same
    decode tokens that are being checked (in-sample); their own sampling error is not included.
    """
    if not isinstance(trace, Trace):
        raise McrouteError("real_batch_check needs a per-token Trace with microbatch ids")
    n_trials = check_int("n_trials", n_trials, minimum=2)
    n_boot = check_int("n_boot", n_boot, minimum=10, maximum=MAX_BOOT_DRAWS)
    ci_prob = check_prob("ci_prob", ci_prob)
    if holdout is not None:
        check_choice("holdout", holdout, ("second-half",))
    check_choice("routing", routing, HOLDOUT_ROUTINGS)
    entropy = resolve_seed(rng)
    dec = trace.decode_only() if np.any(trace.prefill) else trace
    n_mb = int(np.unique(dec.batch).size)
    check_bytes(f"the bootstrap indices ({n_boot} replicates x {n_mb} microbatches, int64)",
                n_boot * n_mb * 8, "n_boot")
    check_bytes(f"the predicted counts of one batch size ({n_trials} trials x "
                f"{dec.n_trace_layers} layers x {dec.n_experts} experts, int64)",
                n_trials * dec.n_trace_layers * dec.n_experts * 8, "n_trials")
    if np.any(dec.batch < 0):
        raise McrouteError("real_batch_check needs microbatch (batch) ids for every decode token")
    bids, inv = np.unique(dec.batch, return_inverse=True)
    sizes = np.bincount(inv)
    g, n_lay, e = bids.size, dec.n_trace_layers, dec.n_experts
    if g < 3:
        raise McrouteError("real_batch_check needs at least 3 decode microbatches")
    counts = np.zeros((g, n_lay, e), dtype=np.int64)
    for j in range(dec.top_k):
        for layer in range(n_lay):
            np.add.at(counts[:, layer], (inv, dec.experts[:, layer, j]), 1)
    st = microbatch_stats(counts)
    obs = {"active_experts": st["active_experts"], "max_expert_load": st["max_expert_load"]}
    if fit is None:
        fit = fit_routing(dec, rng=entropy, ci_prob=ci_prob)
    elif not isinstance(fit, xr.Dataset) or not {"alpha", "sigma"} <= set(fit.data_vars):
        raise McrouteError("fit must be the dataset fit_routing returns (with 'alpha' and "
                           f"'sigma'), got {type(fit).__name__}")
    rho = float(fit["rho_pooled"]) if "rho_pooled" in fit else overdispersion(
        dec, rng=entropy)["rho_pooled"]
    tok = dec.with_mode("token")
    routings = {
        "token": tok,
        "marginal": dec.with_mode("marginal"),
        "zipf": fitted_routing(dec, fit, "zipf"),
        "lognormal": fitted_routing(dec, fit, "lognormal"),
        "uniform": Uniform(e, dec.top_k),
        "overdispersed": Overdispersed(tok, max(rho, 0.0)),
    }
    if holdout is not None and g < 12:
        raise McrouteError(f"holdout='second-half' needs at least 12 decode steps, got {g}")
    cf = fit_correlated(dec, warmup=0, n_trials=min(n_trials, 200), n_boot=n_boot,
                        ci_prob=ci_prob, rng=entropy)
    routings["correlated"] = cf["routing"]
    uniq = np.unique(sizes)
    n_r = len(routings)
    pred = {s: np.zeros((n_r, uniq.size, n_lay)) for s in obs}
    pse = {s: np.zeros((n_r, uniq.size, n_lay)) for s in obs}
    for ri, r in enumerate(routings.values()):
        for ui, b in enumerate(uniq):
            c = sample_counts(r, int(b), n_trials, n_lay,
                              rng=int(generator(entropy, (ri, int(b))).integers(2**62)))
            ms = microbatch_stats(c)
            for s in obs:
                pred[s][ri, ui] = ms[s].mean(axis=0)
                pse[s][ri, ui] = ms[s].std(axis=0, ddof=1) / np.sqrt(n_trials)
    pos = np.searchsorted(uniq, sizes)
    weight = np.bincount(pos, minlength=uniq.size) / g  # share of steps with each size
    gen = generator(entropy, (11,))
    block = max(1, int(np.ceil(g ** (1 / 3))))
    n_blocks = -(-g // block)
    boot_idx = np.empty((n_boot, g), dtype=np.int64)
    for i in range(n_boot):
        starts = gen.integers(0, g, size=n_blocks)
        boot_idx[i] = ((starts[:, None] + np.arange(block)[None, :]) % g).ravel()[:g]
    z = stats.norm.ppf(0.5 + ci_prob / 2)
    a = (1 - ci_prob) / 2
    data = {}
    units = {"active_experts": "experts", "max_expert_load": "tokens"}
    rel_all_reps = {}
    for s, o in obs.items():
        p_step = pred[s][:, pos, :]  # (routing, step, layer)
        p_mean = p_step.mean(axis=1)  # (routing, layer)
        p_se = np.sqrt(((weight[None, :, None] * pse[s]) ** 2).sum(axis=1))
        o_mean = o.mean(axis=0)
        o_reps = o[boot_idx].mean(axis=1)  # (boot, layer)
        o_ci = np.stack([np.quantile(o_reps, a, axis=0), np.quantile(o_reps, 1 - a, axis=0)], -1)
        rel = p_mean / o_mean[None, :] - 1.0
        # The prediction is averaged over the same resampled steps as the observation (their
        # batch sizes), so the interval does not count the batch-size mix as error.
        p_reps = np.moveaxis(p_step[:, boot_idx].mean(axis=2), 0, 1)  # (boot, routing, layer)
        rel_reps = p_reps / o_reps[:, None, :] - 1.0
        rel_se = np.sqrt(rel_reps.std(axis=0, ddof=1) ** 2 + (p_se / o_mean[None, :]) ** 2)
        all_p = p_mean.mean(axis=1)
        all_o = o_mean.mean()
        rel_all = all_p / all_o - 1.0
        reps_all = p_reps.mean(axis=2) / o_reps.mean(axis=1)[:, None] - 1.0
        rel_all_reps[s] = reps_all
        all_se = np.sqrt(reps_all.std(axis=0, ddof=1) ** 2
                         + (np.sqrt((p_se ** 2).sum(axis=1)) / n_lay / all_o) ** 2)
        u = units[s]
        data[f"observed_{s}"] = (("step", "layer"), o, {"units": u, "long_name": f"observed {s}"})
        data[f"observed_{s}_mean"] = ("layer", o_mean, {"units": u, "long_name":
                                                        f"mean over real decode steps of {s}"})
        data[f"observed_{s}_ci"] = (("layer", "ci_bound"), o_ci, {
            "units": u, "long_name": "block-bootstrap interval of the observed mean",
            "ci_prob": ci_prob})
        data[f"predicted_{s}_mean"] = (("routing", "layer"), p_mean, {
            "units": u, "long_name": f"predicted mean {s} for the real batch sizes"})
        data[f"predicted_{s}_se"] = (("routing", "layer"), p_se, {
            "units": u, "long_name": "Monte Carlo standard error of the prediction"})
        data[f"{s}_rel_error"] = (("routing", "layer"), rel, {
            "units": "1", "long_name": f"predicted / observed - 1 of mean {s}"})
        data[f"{s}_rel_error_ci"] = (("routing", "layer", "ci_bound"),
                                     np.stack([rel - z * rel_se, rel + z * rel_se], -1),
                                     {"units": "1", "long_name": "interval of the relative error",
                                      "ci_prob": ci_prob})
        data[f"{s}_rel_error_all"] = ("routing", rel_all, {
            "units": "1", "long_name": f"predicted / observed - 1 of {s}, pooled over layers"})
        data[f"{s}_rel_error_all_ci"] = (("routing", "ci_bound"),
                                         np.stack([rel_all - z * all_se, rel_all + z * all_se], -1),
                                         {"units": "1", "long_name": "interval of the pooled "
                                          "relative error", "ci_prob": ci_prob})
    names = list(routings)
    it, io = names.index("token"), names.index("overdispersed")
    ra = data["active_experts_rel_error_all"][1]
    reps = rel_all_reps["active_experts"]
    # undefined (NaN) where token mode has no error to remove
    with np.errstate(divide="ignore", invalid="ignore"):
        closed = float(np.where(ra[it] != 0, 1.0 - ra[io] / ra[it], np.nan))
        closed_reps = np.where(reps[:, it] != 0, 1.0 - reps[:, io] / reps[:, it], np.nan)
    closed_reps = closed_reps[np.isfinite(closed_reps)]
    if closed_reps.size == 0:
        closed_reps = np.array([np.nan])
    data["gap_closed"] = ((), closed, {"units": "1", "long_name": "share of the token-mode "
                                       "error in distinct experts removed by the overdispersed "
                                       "routing (pooled over layers)"})
    data["gap_closed_ci"] = ("ci_bound", np.quantile(closed_reps, [a, 1 - a]), {
        "units": "1", "long_name": "block-bootstrap interval of gap_closed (observed-side "
                                   "uncertainty only)", "ci_prob": ci_prob})
    # Exact (Chinese-restaurant) predictions of the overdispersed routing on a grid of rho:
    # the rho that reproduces the observed distinct experts, and the error at rho's interval.
    rho_grid = np.linspace(0.0, 0.5, 501)
    exact = _pooled_exact_active(tok, rho_grid, uniq, pos, n_lay)
    obs_all = obs["active_experts"].mean()
    obs_all_reps = obs["active_experts"][boot_idx].mean(axis=(1, 2))

    def invert(v):
        return np.interp(v, exact[::-1], rho_grid[::-1], left=rho_grid[-1], right=0.0)

    rho_match = float(invert(obs_all))
    match_reps = invert(obs_all_reps)
    data["rho_matching_active_experts"] = ((), rho_match, {
        "units": "1", "long_name": "rho for which the overdispersed routing's exact expected "
                                   "distinct experts equal the observed mean (pooled)"})
    data["rho_matching_active_experts_ci"] = ("ci_bound", np.quantile(match_reps, [a, 1 - a]), {
        "units": "1", "long_name": "block-bootstrap interval of rho_matching_active_experts",
        "ci_prob": ci_prob})
    rho_ci = (np.asarray(fit["rho_pooled_ci"].values) if "rho_pooled_ci" in fit
              else overdispersion(dec, rng=entropy, ci_prob=ci_prob)["rho_pooled_ci"])
    at_ci = _pooled_exact_active(tok, rho_ci[::-1], uniq, pos, n_lay) / obs_all - 1.0
    data["overdispersed_rel_error_at_rho_ci"] = ("ci_bound", np.array(at_ci), {
        "units": "1", "long_name": "exact relative error in distinct experts (pooled) of the "
                                   "overdispersed routing at the ends of rho's interval "
                                   "(upper rho gives the lower bound)", "ci_prob": ci_prob})
    data["batch_size"] = ("step", sizes, {"units": "tokens", "long_name": "real batch size"})
    data["rho"] = ((), rho, {"units": "1", "long_name": "overdispersion used (pooled fit)"})
    data["correlated_sigma"] = ((), cf["sigma"], {
        "units": "1", "long_name": "shared logit noise of the correlated routing (fitted to the "
                                   "distinct experts of all steps)"})
    data["correlated_sigma_ci"] = ("ci_bound", cf["sigma_ci"], {
        "units": "1", "long_name": "block-bootstrap interval of correlated_sigma",
        "ci_prob": ci_prob})
    coords = {
        "step": ("step", np.arange(g), {"units": "1", "long_name": "real decode step"}),
        "layer": ("layer", dec.layer_ids, {"units": "1", "long_name": "model layer"}),
        "routing": ("routing", names, {"units": "1", "long_name": "routing model"}),
        "ci_bound": ("ci_bound", ["lower", "upper"], {"units": "1",
                                                      "long_name": "interval bound"}),
    }
    h_attrs = {}
    if holdout is not None:
        _, _, step_counts = _step_counts(dec)
        h_data, h_coords, h_attrs = _holdout(dec, bids, sizes, step_counts, routing, n_trials,
                                             n_boot, ci_prob, entropy)
        data.update(h_data)
        coords.update(h_coords)
    ds = xr.Dataset(data, coords=coords)
    ds.attrs = provenance(seed=entropy, n_trials=n_trials, ci_prob=ci_prob,
                          trace=trace.describe(), n_boot=n_boot, bootstrap_block=block,
                          routings={k: v.describe() for k, v in routings.items()}, **h_attrs)
    return ds


# ---------------------------------------------------------------------------------------------
# Correlated microbatches: fitting the shared logit noise, held-out check
# ---------------------------------------------------------------------------------------------

#: Grid [start, stop, step] of the shared-logit-noise σ on which :func:`fit_correlated`
#: simulates the distinct experts (common random numbers across σ, linear interpolation).
CORRELATED_SIGMA_GRID = (0.0, 1.5, 0.05)

#: :func:`fit_correlated` declares a warm-up when the decode steps before the best single
#: changepoint (searched over the first half of the steps) touch fewer experts, relative to
#: independent tokens, than the later steps by at least this many standard errors (a scan over
#: ≤ G/2 positions; at 4 the false-alarm rate for independent steps is below 1 %).
WARMUP_Z = 4.0

#: Routings :func:`real_batch_check` can fit on the first half and check on the second.
HOLDOUT_ROUTINGS = ("correlated", "token")


def _step_counts(dec):
    """Step ids (batch ids in order), sizes (step,) and per-step counts (step, layer, expert)."""
    bids, inv = np.unique(dec.batch, return_inverse=True)
    sizes = np.bincount(inv)
    counts = np.zeros((bids.size, dec.n_trace_layers, dec.n_experts), dtype=np.int64)
    for j in range(dec.top_k):
        for layer in range(dec.n_trace_layers):
            np.add.at(counts[:, layer], (inv, dec.experts[:, layer, j]), 1)
    return bids, sizes, counts


def _independent_active(counts, sizes, steps):
    """Exact expected distinct experts (step, layer) of independent tokens.

    At the batch sizes of ``steps``, with the inclusion probabilities of those steps' tokens.
    """
    pi = counts[steps].sum(axis=0) / float(sizes[steps].sum())
    with np.errstate(divide="ignore"):
        lg = np.log1p(-np.minimum(pi, 1.0))
    return (-np.expm1(lg[None] * sizes[steps][:, None, None].astype(float))).sum(axis=2)


def _block_indices(gen, g, n_boot):
    """Moving-block bootstrap indices (n_boot, g), blocks of ⌈g^(1/3)⌉ consecutive steps."""
    block = max(1, int(np.ceil(g ** (1 / 3))))
    n_blocks = -(-g // block)
    idx = np.empty((n_boot, g), dtype=np.int64)
    for i in range(n_boot):
        starts = gen.integers(0, g, size=n_blocks)
        idx[i] = ((starts[:, None] + np.arange(block)[None, :]) % g).ravel()[:g]
    return idx, block


def _warmup_changepoint(d):
    """Best single changepoint S in 2..G/2 of the per-step series ``d``, and its t statistic.

    t: later mean minus earlier mean, in standard errors from the later steps' spread.
    """
    g = d.size
    best = (np.inf, 0, 0.0)
    for s in range(2, g // 2 + 1):
        a, b = d[:s], d[s:]
        sse = ((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()
        sd = b.std(ddof=1) if b.size > 1 else 0.0
        t = (b.mean() - a.mean()) / (sd * np.sqrt(1 / s + 1 / (g - s))) if sd > 0 else 0.0
        if sse < best[0]:
            best = (sse, s, float(t))
    return best[1], best[2]


def _invert_ratio(grid, ratio, target):
    """σ at which the (non-increasing) ratio curve equals ``target`` (clipped to the grid)."""
    r = np.minimum.accumulate(ratio)
    return float(np.interp(target, r[::-1], grid[::-1], left=grid[-1], right=0.0))


def _simulate_grid(centre, grid, sizes, n_layers, n_trials, entropy, key, stats_of=("active",)):
    """Means and standard errors of statistics (grid, size, layer) under Correlated(centre, σ).

    Common random numbers across σ: the same stream for every σ at a given size.
    """
    out = {s: np.empty((grid.size, sizes.size, n_layers)) for s in stats_of}
    se = {s: np.empty((grid.size, sizes.size, n_layers)) for s in stats_of}
    names = {"active": "active_experts", "max": "max_expert_load"}
    for ui, b in enumerate(sizes):
        seed = int(generator(entropy, (*key, int(b))).integers(2**62))
        for gi, sg in enumerate(grid):
            c = sample_counts(Correlated(centre, float(sg)), int(b), n_trials, n_layers,
                              rng=seed, method="assignment")
            ms = microbatch_stats(c)
            for s in stats_of:
                v = ms[names[s]]
                out[s][gi, ui] = v.mean(axis=0)
                se[s][gi, ui] = v.std(axis=0, ddof=1) / np.sqrt(n_trials)
    return out, se


def fit_correlated(trace, *, warmup="auto", n_trials=200, n_boot=500, ci_prob=0.95, rng=None):
    """Fit the shared logit noise σ of :class:`~mcroute.Correlated` to real decode steps.

    Parameters
    ----------
    trace : Trace
        With microbatch (forward-pass) ids for its decode tokens; prefill tokens are dropped.
    warmup : "auto" or int
        Decode steps at the start to leave out of the steady-state fit. ``"auto"``: the best
        single changepoint of the per-step deficit of distinct experts, kept only if the
        steps before it are more correlated by :data:`WARMUP_Z` standard errors (a batch of
        requests submitted together starts with the same boilerplate tokens); 0: use all
        steps.
    n_trials : int
        Simulated microbatches per batch size and grid point.
    n_boot : int
        Moving-block bootstrap replicates over the steady steps.
    ci_prob : float
        Interval level.
    rng : None, int, SeedSequence or Generator
        Seed.

    Returns
    -------
    dict
        ``sigma`` (float), ``sigma_ci`` (2,), ``sigma_boot`` (n_boot,), ``sigma_mc_se``,
        ``at_grid_edge``; ``routing`` (the fitted :class:`~mcroute.Correlated`) and ``centre``
        (the marginal-mode trace of the steady decode tokens); ``warmup_steps``,
        ``warmup_t`` (the changepoint's t statistic, NaN if not searched), ``sigma_warmup``
        (σ fitted to the warm-up steps alone, NaN without a warm-up), ``deficit`` (step,):
        observed / independent − 1 of the distinct experts per step (layer mean);
        ``grid``, ``ratio``: the simulated E_σ[active] / E_0[active] curve; ``n_steps``,
        ``block``, ``seed``.

    Notes
    -----
    The estimator is a simulated method of moments on the mean number of distinct experts per
    step: σ̂ solves R(σ) = T, with T = observed mean / exact independent-token mean (same
    tokens, same batch sizes) and R(σ) = E_σ[active] / E_0[active] simulated with the
    :class:`~mcroute.Correlated` sampler on the grid :data:`CORRELATED_SIGMA_GRID` (common
    random numbers, so R is smooth in σ; made non-increasing). The interval is the percentile
    interval of σ̂ over a moving-block bootstrap of the steps (blocks of ⌈G^(1/3)⌉): each
    replicate recomputes T (observed mean and the independent prediction from its own tokens)
    and R at its own batch sizes; the centre law is not re-calibrated per replicate (its
    effect enters through T's denominator). The busiest-expert load is not used by the fit, so
    it stays an independent check (:func:`real_batch_check`).
    """
    if not isinstance(trace, Trace):
        raise McrouteError("fit_correlated needs a per-token Trace with microbatch ids, got "
                           f"{type(trace).__name__}")
    n_trials = check_int("n_trials", n_trials, minimum=2, maximum=100_000)
    n_boot = check_int("n_boot", n_boot, minimum=10, maximum=MAX_BOOT_DRAWS)
    ci_prob = check_prob("ci_prob", ci_prob)
    entropy = resolve_seed(rng)
    dec = trace.decode_only() if np.any(trace.prefill) else trace
    if np.any(dec.batch < 0):
        raise McrouteError("fit_correlated needs microbatch (batch) ids for every decode token")
    bids, sizes, counts = _step_counts(dec)
    g = bids.size
    if g < 6:
        raise McrouteError(f"fit_correlated needs at least 6 decode steps, got {g}")
    steps = np.arange(g)
    d = ((counts > 0).sum(axis=2).mean(axis=1)
         / _independent_active(counts, sizes, steps).mean(axis=1) - 1.0)
    w_t = np.nan
    if isinstance(warmup, str):
        check_choice("warmup", warmup, ("auto",))
        s_cp, w_t = _warmup_changepoint(d)
        n_warm = s_cp if w_t >= WARMUP_Z else 0
    else:
        n_warm = check_int("warmup", warmup, minimum=0, maximum=g - 3)
    steady = steps[n_warm:]
    lo, hi, step = CORRELATED_SIGMA_GRID
    grid = np.round(np.arange(lo, hi + step / 2, step), 10)
    n_lay = dec.n_trace_layers

    def fit_part(part, key):
        toks = np.isin(dec.batch, bids[part])
        centre = dec.select(toks).with_mode("marginal")
        uniq, pos = np.unique(sizes[part], return_inverse=True)
        sim, sim_se = _simulate_grid(centre, grid, uniq, n_lay, n_trials, entropy, key)
        a = sim["active"]  # (grid, size, layer)
        obs = (counts[part] > 0).sum(axis=2).mean(axis=1)  # (step,)
        target = obs.mean() / _independent_active(counts, sizes, part).mean()
        m = a[:, pos].mean(axis=(1, 2))
        sig = _invert_ratio(grid, m / m[0], target)
        return centre, uniq, pos, a, sim_se["active"], obs, sig

    centre, uniq, pos, a, a_se, obs, sigma = fit_part(steady, (41,))
    # Monte Carlo error of σ̂: the curve's standard error over its slope at σ̂.
    gi = int(np.clip(np.searchsorted(grid, sigma), 1, grid.size - 1))
    m = a[:, pos].mean(axis=(1, 2))
    slope = (m[gi] - m[gi - 1]) / (grid[gi] - grid[gi - 1])
    weight = np.bincount(pos, minlength=uniq.size) / pos.size
    m_se = np.sqrt(((weight[:, None] * a_se[gi]) ** 2).sum()) / n_lay
    mc_se = float(m_se / abs(slope)) if slope < 0 else float("nan")
    gen = generator(entropy, (43,))
    idx, block = _block_indices(gen, steady.size, n_boot)
    boot = np.empty(n_boot)
    for i in range(n_boot):
        part = steady[idx[i]]
        target = obs[idx[i]].mean() / _independent_active(counts, sizes, part).mean()
        mb = a[:, pos[idx[i]]].mean(axis=(1, 2))
        boot[i] = _invert_ratio(grid, mb / mb[0], target)
    al = (1 - ci_prob) / 2
    ci = np.quantile(boot, [al, 1 - al])
    sigma_warm = float("nan")
    if n_warm >= 2:
        sigma_warm = fit_part(steps[:n_warm], (42,))[-1]
    return {
        "sigma": sigma, "sigma_ci": ci, "sigma_boot": boot, "sigma_mc_se": mc_se,
        "at_grid_edge": bool(sigma >= grid[-1]), "routing": Correlated(centre, sigma),
        "centre": centre, "warmup_steps": int(n_warm), "warmup_t": float(w_t),
        "sigma_warmup": sigma_warm, "deficit": d, "grid": grid, "ratio": m / m[0],
        "n_steps": int(steady.size), "block": block, "seed": entropy, "ci_prob": ci_prob,
    }


def _holdout(dec, bids, sizes, counts, routing, n_trials, n_boot, ci_prob, entropy):
    """Fit on the first half of the decode steps, predict the second half (data vars, attrs)."""
    g = bids.size
    h = g // 2
    first, second = np.arange(h), np.arange(h, g)
    fit_dec = dec.select(np.isin(dec.batch, bids[first]))
    cf = fit_correlated(fit_dec, warmup="auto", n_trials=n_trials, n_boot=n_boot,
                        ci_prob=ci_prob, rng=entropy)
    n_lay = dec.n_trace_layers
    uniq, pos = np.unique(sizes[second], return_inverse=True)
    names = list(HOLDOUT_ROUTINGS)
    obs = {"active_experts": (counts[second] > 0).sum(axis=2).astype(float),
           "max_expert_load": counts[second].max(axis=2).astype(float)}
    short = {"active_experts": "active", "max_expert_load": "max"}
    al = (1 - ci_prob) / 2
    # Correlated: on the σ grid (for σ's bootstrap replicates) and at σ̂ itself.
    grid = cf["grid"]
    sim, _ = _simulate_grid(cf["centre"], grid, uniq, n_lay, n_trials, entropy, (51,),
                            ("active", "max"))
    models = {"correlated": cf["routing"], "token": fit_dec.with_mode("token")}
    mean = {s: np.empty((len(names), uniq.size, n_lay)) for s in obs}
    se = {s: np.empty((len(names), uniq.size, n_lay)) for s in obs}
    band = {s: np.empty((len(names), uniq.size, n_lay, 2)) for s in obs}
    for ri, name in enumerate(names):
        for ui, b in enumerate(uniq):
            c = sample_counts(models[name], int(b), n_trials, n_lay,
                              rng=int(generator(entropy, (52, ri, int(b))).integers(2**62)))
            ms = microbatch_stats(c)
            for s in obs:
                v = ms[s]
                mean[s][ri, ui] = v.mean(axis=0)
                se[s][ri, ui] = v.std(axis=0, ddof=1) / np.sqrt(n_trials)
                band[s][ri, ui] = np.moveaxis(np.quantile(v, [al, 1 - al], axis=0), 0, -1)
    gen = generator(entropy, (53,))
    idx, block = _block_indices(gen, second.size, n_boot)
    noise = gen.standard_normal((n_boot, len(names), 2))
    data, attrs = {}, {}
    weight = np.bincount(pos, minlength=uniq.size) / pos.size
    units = {"active_experts": "experts", "max_expert_load": "tokens"}
    for si, (s, o) in enumerate(obs.items()):
        p_step = mean[s][:, pos]  # (routing, step, layer)
        p_layer = p_step.mean(axis=1)
        p_se = np.sqrt(((weight[None, :, None] * se[s]) ** 2).sum(axis=1))  # (routing, layer)
        o_layer = o.mean(axis=0)
        rel = p_layer / o_layer[None] - 1.0
        rel_all = p_layer.mean(axis=1) / o_layer.mean() - 1.0
        mc_rel_all = np.sqrt((p_se ** 2).sum(axis=1)) / n_lay / p_layer.mean(axis=1)
        # Replicates: observed side by block bootstrap of the held-out steps; predicted side
        # at the bootstrap σ of the first half (correlated) and with its Monte Carlo error.
        # The predicted side is averaged over the same resampled steps (their batch sizes),
        # the correlated one rescaled by the grid curve from σ̂ to the replicate's σ.
        o_reps = o[idx].mean(axis=1)  # (boot, layer)
        curve = sim[short[s]][:, pos].mean(axis=1)  # (grid, layer)
        p_reps = np.empty((n_boot, len(names), n_lay))
        for ri, name in enumerate(names):
            p_reps[:, ri] = p_step[ri][idx].mean(axis=1)
            if name == "correlated":
                for layer in range(n_lay):
                    p_reps[:, ri, layer] *= (np.interp(cf["sigma_boot"], grid, curve[:, layer])
                                             / np.interp(cf["sigma"], grid, curve[:, layer]))
        # Monte Carlo error of the fitted σ carried through the curve's slope at σ̂.
        pooled = curve.mean(axis=1)
        gi = int(np.clip(np.searchsorted(grid, cf["sigma"]), 1, grid.size - 1))
        slope = (pooled[gi] - pooled[gi - 1]) / (grid[gi] - grid[gi - 1])
        s_mc = cf["sigma_mc_se"] if np.isfinite(cf["sigma_mc_se"]) else 0.0
        ci_ = names.index("correlated")
        mc_rel_all[ci_] = np.hypot(mc_rel_all[ci_], slope * s_mc / pooled[gi])
        rel_reps = p_reps / o_reps[:, None, :] - 1.0
        all_reps = (p_reps.mean(axis=2) * (1 + noise[:, :, si] * mc_rel_all[None])
                    / o_reps.mean(axis=1)[:, None] - 1.0)
        u = units[s]
        data[f"holdout_observed_{s}"] = (("holdout_step", "layer"), o, {
            "units": u, "long_name": f"observed {s} of the held-out (second-half) steps"})
        data[f"holdout_predicted_{s}"] = (("holdout_routing", "holdout_step", "layer"), p_step, {
            "units": u, "long_name": f"predicted mean {s} of each held-out step (its batch "
                                    "size), from the first half"})
        data[f"holdout_predicted_{s}_interval"] = (
            ("holdout_routing", "holdout_step", "layer", "ci_bound"), band[s][:, pos], {
                "units": u, "long_name": "prediction interval of one step (quantiles of the "
                                         "simulated microbatches)", "ci_prob": ci_prob})
        data[f"holdout_{s}_rel_error"] = (("holdout_routing", "layer"), rel, {
            "units": "1", "long_name": f"predicted / observed - 1 of mean {s} over the "
                                       "held-out steps"})
        data[f"holdout_{s}_rel_error_ci"] = (
            ("holdout_routing", "layer", "ci_bound"),
            np.moveaxis(np.quantile(rel_reps, [al, 1 - al], axis=0), 0, -1),
            {"units": "1", "long_name": "bootstrap interval (held-out steps; first-half sigma)",
             "ci_prob": ci_prob})
        data[f"holdout_{s}_rel_error_all"] = ("holdout_routing", rel_all, {
            "units": "1", "long_name": f"predicted / observed - 1 of {s} over the held-out "
                                       "steps, pooled over layers"})
        data[f"holdout_{s}_rel_error_all_ci"] = (
            ("holdout_routing", "ci_bound"), np.quantile(all_reps, [al, 1 - al], axis=0).T,
            {"units": "1", "long_name": "bootstrap interval of the pooled held-out error "
                                        "(held-out steps, first-half sigma, Monte Carlo)",
             "ci_prob": ci_prob})
        data[f"holdout_{s}_rel_error_all_mc_se"] = ("holdout_routing", mc_rel_all, {
            "units": "1", "long_name": "Monte Carlo standard error of the pooled held-out "
                                       "error (prediction and, for correlated, the fit of "
                                       "sigma)"})
        ri = names.index(routing)
        attrs[f"holdout_{s}_error"] = float(rel_all[ri])
        lo_hi = np.quantile(all_reps[:, ri], [al, 1 - al])
        attrs[f"holdout_{s}_error_ci_lower"] = float(lo_hi[0])
        attrs[f"holdout_{s}_error_ci_upper"] = float(lo_hi[1])
        attrs[f"holdout_{s}_error_mc_se"] = float(mc_rel_all[ri])
    data["holdout_batch_size"] = ("holdout_step", sizes[second], {
        "units": "tokens", "long_name": "batch size of the held-out step"})
    coords = {
        "holdout_step": ("holdout_step", second, {"units": "1", "long_name":
                                                  "real decode step (held-out half)"}),
        "holdout_routing": ("holdout_routing", names, {"units": "1", "long_name":
                                                       "routing fitted on the first half"}),
    }
    attrs.update(holdout="second-half", holdout_routing=routing, holdout_fit_steps=int(h),
                 holdout_steps=int(g - h), holdout_warmup_steps=cf["warmup_steps"],
                 holdout_warmup_t=cf["warmup_t"], holdout_sigma=cf["sigma"],
                 holdout_sigma_ci_lower=float(cf["sigma_ci"][0]),
                 holdout_sigma_ci_upper=float(cf["sigma_ci"][1]),
                 holdout_sigma_mc_se=cf["sigma_mc_se"],
                 holdout_sigma_warmup=cf["sigma_warmup"], holdout_bootstrap_block=block)
    return data, coords, attrs

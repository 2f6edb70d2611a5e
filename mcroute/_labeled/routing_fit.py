"""Fitting routing laws to traces: Zipf α and log-normal σ per layer, and overdispersion ρ.

May import: numpy, scipy, xarray, the array floor (``mcroute._traces``, ``mcroute._routing``),
``mcroute._base``, the modules of ``mcroute._labeled``.

* :func:`fit_routing` — per layer, maximum-likelihood Zipf α and log-normal σ of the popularity
  ranked by frequency, with bootstrap confidence intervals and goodness of fit, and the
  overdispersion ρ of microbatch loads when the trace records microbatches.
* :func:`fitted_routing` — the fitted popularity as a routing, on the observed ranking.
* :func:`overdispersion` — ρ alone.
"""

from __future__ import annotations

import functools

import numpy as np
import xarray as xr
from scipy import interpolate

from mcroute._base.rng import generator, resolve_seed
from mcroute._base.validate import (
    MAX_BOOT_DRAWS,
    McrouteError,
    check_bytes,
    check_int,
    check_prob,
)
from mcroute._labeled.results import provenance
from mcroute._routing.distributions import LogNormal, Popularity, Zipf
from mcroute._routing.sampling import sample_counts
from mcroute._traces.trace import LayeredPopularity, PopularityTrace, Trace

__all__ = ["fit_routing", "fitted_routing", "overdispersion", "layer_data", "FIT_GRID"]

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


def layer_data(trace):
    """Per-layer expert counts (layer, expert) and tokens (layer,) of a trace."""
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


def fit_routing(trace: Trace | PopularityTrace, *, n_boot: int = 200, ci_prob: float = 0.95,
                rng: int | np.random.SeedSequence | np.random.Generator | None = None
                ) -> xr.Dataset:
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
    counts, ntok = layer_data(trace)
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


def fitted_routing(trace: Trace | PopularityTrace, fit: xr.Dataset, family: str) -> Popularity:
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
    counts, _ = layer_data(trace)
    theta = fit["alpha" if family == "zipf" else "sigma"].values
    if theta.size != counts.shape[0]:
        raise McrouteError("fit and trace have different numbers of layers")
    w = np.empty(counts.shape, dtype=float)
    for layer in range(counts.shape[0]):
        rw = _family_routing(family, trace.n_experts, trace.top_k, theta[layer]).popularity(1)[0]
        order = np.argsort(-counts[layer], kind="stable")
        w[layer, order] = np.sort(rw)[::-1]
    return LayeredPopularity(w, top_k=trace.top_k)

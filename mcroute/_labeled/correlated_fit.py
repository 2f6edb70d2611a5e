"""Correlated microbatches in traces: fitting the shared logit noise σ, and a held-out check.

May import: numpy, scipy, xarray, the array floor (``mcroute._traces``, ``mcroute._routing``),
``mcroute._base``, the modules of ``mcroute._labeled``.

:func:`fit_correlated` fits the σ of :class:`~mcroute.Correlated` to the distinct experts of
real decode steps; ``_holdout`` predicts held-out steps for
:func:`~mcroute.real_batch_check`.
"""

from __future__ import annotations

import numpy as np

from mcroute._base.rng import generator, resolve_seed
from mcroute._base.validate import (
    MAX_BOOT_DRAWS,
    McrouteError,
    check_choice,
    check_int,
    check_prob,
)
from mcroute._routing.composite import Correlated
from mcroute._routing.sampling import microbatch_stats, sample_counts
from mcroute._traces.trace import Trace

__all__ = ["fit_correlated", "CORRELATED_SIGMA_GRID", "HOLDOUT_ROUTINGS", "WARMUP_Z"]



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


def fit_correlated(trace: Trace, *, warmup: str | int = "auto", n_trials: int = 200,
                   n_boot: int = 500, ci_prob: float = 0.95,
                   rng: int | np.random.SeedSequence | np.random.Generator | None = None
                   ) -> dict:
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

"""Fitting, inspecting and checking routing traces (labeled layer).

May import: numpy, scipy, xarray, the array floor (``mcroute._traces``, ``mcroute._routing``),
``mcroute._base``, the modules of ``mcroute._labeled``.

* :func:`fit_routing`, :func:`fitted_routing`, :func:`overdispersion` — per-layer Zipf α,
  log-normal σ and overdispersion ρ (:mod:`mcroute._labeled.routing_fit`).
* :func:`inspect_trace` — per layer: tokens, hottest expert's share, entropy, effective number
  of experts, Gini, and correlations between consecutive layers and decode steps
  (:mod:`mcroute._labeled.trace_inspect`).
* :func:`fit_correlated` — the shared logit noise σ of correlated microbatches
  (:mod:`mcroute._labeled.correlated_fit`).
* :func:`real_batch_check` — real decode batches against what the routing models predict
  (here).
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import stats

from mcroute._base.rng import generator, resolve_seed
from mcroute._base.validate import (
    MAX_BOOT_DRAWS,
    McrouteError,
    check_bytes,
    check_choice,
    check_int,
    check_prob,
)
from mcroute._labeled.correlated_fit import (
    CORRELATED_SIGMA_GRID,
    HOLDOUT_ROUTINGS,
    _holdout,
    _step_counts,
    fit_correlated,
)
from mcroute._labeled.results import provenance
from mcroute._labeled.routing_fit import FIT_GRID, fit_routing, fitted_routing, overdispersion
from mcroute._labeled.trace_inspect import inspect_trace
from mcroute._routing.distributions import Uniform
from mcroute._routing.sampling import microbatch_stats, sample_counts
from mcroute._traces.overdispersed import Overdispersed
from mcroute._traces.trace import Trace

__all__ = ["fit_routing", "fitted_routing", "overdispersion", "inspect_trace",
           "real_batch_check", "fit_correlated", "FIT_GRID", "CORRELATED_SIGMA_GRID",
           "CHECK_ROUTINGS"]

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


def real_batch_check(trace: Trace, *, n_trials: int = 400, n_boot: int = 1000,
                     ci_prob: float = 0.95,
                     rng: int | np.random.SeedSequence | np.random.Generator | None = None,
                     fit: xr.Dataset | None = None, holdout: str | None = None,
                     routing: str = "correlated") -> xr.Dataset:
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
    n_trials, n_boot, ci_prob = _check_options(trace, n_trials, n_boot, ci_prob, holdout,
                                               routing)
    entropy = resolve_seed(rng)
    dec = trace.decode_only() if np.any(trace.prefill) else trace
    _check_sizes(dec, n_trials, n_boot)
    bids, sizes, obs = _observed(dec)
    g, n_lay = bids.size, dec.n_trace_layers
    fit = _checked_fit(dec, fit, entropy, ci_prob)
    rho = float(fit["rho_pooled"]) if "rho_pooled" in fit else overdispersion(
        dec, rng=entropy)["rho_pooled"]
    tok = dec.with_mode("token")
    routings = _compared_routings(dec, fit, tok, rho)
    if holdout is not None and g < 12:
        raise McrouteError(f"holdout='second-half' needs at least 12 decode steps, got {g}")
    cf = fit_correlated(dec, warmup=0, n_trials=min(n_trials, 200), n_boot=n_boot,
                        ci_prob=ci_prob, rng=entropy)
    routings["correlated"] = cf["routing"]
    uniq = np.unique(sizes)
    pred, pse = _predictions(routings, uniq, n_trials, n_lay, entropy, obs)
    pos = np.searchsorted(uniq, sizes)
    block, boot_idx = _block_bootstrap(entropy, g, n_boot)
    data, rel_all_reps = _error_vars(obs, pred, pse, pos, np.bincount(pos, minlength=uniq.size)
                                     / g, boot_idx, ci_prob, n_lay)
    names = list(routings)
    data.update(_gap_closed_vars(data, rel_all_reps, names, ci_prob))
    data.update(_rho_vars(dec, fit, tok, obs, uniq, pos, n_lay, boot_idx, entropy, ci_prob))
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


def _check_options(trace, n_trials, n_boot, ci_prob, holdout, routing):
    if not isinstance(trace, Trace):
        raise McrouteError("real_batch_check needs a per-token Trace with microbatch ids")
    n_trials = check_int("n_trials", n_trials, minimum=2)
    n_boot = check_int("n_boot", n_boot, minimum=10, maximum=MAX_BOOT_DRAWS)
    ci_prob = check_prob("ci_prob", ci_prob)
    if holdout is not None:
        check_choice("holdout", holdout, ("second-half",))
    check_choice("routing", routing, HOLDOUT_ROUTINGS)
    return n_trials, n_boot, ci_prob


def _check_sizes(dec, n_trials, n_boot):
    n_mb = int(np.unique(dec.batch).size)
    check_bytes(f"the bootstrap indices ({n_boot} replicates x {n_mb} microbatches, int64)",
                n_boot * n_mb * 8, "n_boot")
    check_bytes(f"the predicted counts of one batch size ({n_trials} trials x "
                f"{dec.n_trace_layers} layers x {dec.n_experts} experts, int64)",
                n_trials * dec.n_trace_layers * dec.n_experts * 8, "n_trials")
    if np.any(dec.batch < 0):
        raise McrouteError("real_batch_check needs microbatch (batch) ids for every decode token")


def _observed(dec):
    """(microbatch ids, their sizes, observed statistics (step, layer)) of the decode steps."""
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
    return bids, sizes, {"active_experts": st["active_experts"],
                         "max_expert_load": st["max_expert_load"]}


def _checked_fit(dec, fit, entropy, ci_prob):
    if fit is None:
        return fit_routing(dec, rng=entropy, ci_prob=ci_prob)
    if not isinstance(fit, xr.Dataset) or not {"alpha", "sigma"} <= set(fit.data_vars):
        raise McrouteError("fit must be the dataset fit_routing returns (with 'alpha' and "
                           f"'sigma'), got {type(fit).__name__}")
    return fit


def _compared_routings(dec, fit, tok, rho):
    return {
        "token": tok,
        "marginal": dec.with_mode("marginal"),
        "zipf": fitted_routing(dec, fit, "zipf"),
        "lognormal": fitted_routing(dec, fit, "lognormal"),
        "uniform": Uniform(dec.n_experts, dec.top_k),
        "overdispersed": Overdispersed(tok, max(rho, 0.0)),
    }


def _predictions(routings, uniq, n_trials, n_lay, entropy, obs):
    """Predicted means and their Monte Carlo errors, (routing, batch size, layer) per statistic."""
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
    return pred, pse


def _block_bootstrap(entropy, g, n_boot):
    """(block length, indices (boot, step)) of the moving-block bootstrap over steps."""
    gen = generator(entropy, (11,))
    block = max(1, int(np.ceil(g ** (1 / 3))))
    n_blocks = -(-g // block)
    boot_idx = np.empty((n_boot, g), dtype=np.int64)
    for i in range(n_boot):
        starts = gen.integers(0, g, size=n_blocks)
        boot_idx[i] = ((starts[:, None] + np.arange(block)[None, :]) % g).ravel()[:g]
    return block, boot_idx


def _error_vars(obs, pred, pse, pos, weight, boot_idx, ci_prob, n_lay):
    """Observed and predicted means and their relative errors, per statistic."""
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
    return data, rel_all_reps


def _gap_closed_vars(data, rel_all_reps, names, ci_prob):
    a = (1 - ci_prob) / 2
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
    return {
        "gap_closed": ((), closed, {"units": "1", "long_name": "share of the token-mode "
                                    "error in distinct experts removed by the overdispersed "
                                    "routing (pooled over layers)"}),
        "gap_closed_ci": ("ci_bound", np.quantile(closed_reps, [a, 1 - a]), {
            "units": "1", "long_name": "block-bootstrap interval of gap_closed (observed-side "
                                       "uncertainty only)", "ci_prob": ci_prob}),
    }


def _rho_vars(dec, fit, tok, obs, uniq, pos, n_lay, boot_idx, entropy, ci_prob):
    """The rho that reproduces the observed distinct experts, and the error at rho's interval.

    From exact (Chinese-restaurant) predictions of the overdispersed routing on a grid of rho.
    """
    a = (1 - ci_prob) / 2
    rho_grid = np.linspace(0.0, 0.5, 501)
    exact = _pooled_exact_active(tok, rho_grid, uniq, pos, n_lay)
    obs_all = obs["active_experts"].mean()
    obs_all_reps = obs["active_experts"][boot_idx].mean(axis=(1, 2))

    def invert(v):
        return np.interp(v, exact[::-1], rho_grid[::-1], left=rho_grid[-1], right=0.0)

    rho_match = float(invert(obs_all))
    match_reps = invert(obs_all_reps)
    rho_ci = (np.asarray(fit["rho_pooled_ci"].values) if "rho_pooled_ci" in fit
              else overdispersion(dec, rng=entropy, ci_prob=ci_prob)["rho_pooled_ci"])
    at_ci = _pooled_exact_active(tok, rho_ci[::-1], uniq, pos, n_lay) / obs_all - 1.0
    return {
        "rho_matching_active_experts": ((), rho_match, {
            "units": "1", "long_name": "rho for which the overdispersed routing's exact "
                                       "expected distinct experts equal the observed mean "
                                       "(pooled)"}),
        "rho_matching_active_experts_ci": ("ci_bound", np.quantile(match_reps, [a, 1 - a]), {
            "units": "1", "long_name": "block-bootstrap interval of rho_matching_active_experts",
            "ci_prob": ci_prob}),
        "overdispersed_rel_error_at_rho_ci": ("ci_bound", np.array(at_ci), {
            "units": "1", "long_name": "exact relative error in distinct experts (pooled) of the "
                                       "overdispersed routing at the ends of rho's interval "
                                       "(upper rho gives the lower bound)", "ci_prob": ci_prob}),
    }

"""The Dataset of :func:`mcroute.qs_analysis`, built once from arrays summarised in NumPy.

Labeled floor (4). May import: numpy, xarray, the floors below, and the labeled modules
``results`` and ``throughput``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from mcroute._labeled.results import (
    build_dataset,
    provenance,
    squeeze_variables,
    summary_arrays,
    summary_coords,
    summary_variables,
    summary_variables_many,
)
from mcroute._labeled.throughput import uncertainty_sources

__all__ = ["crossover_context", "qs_dataset"]


def crossover_context(contexts, penalty):
    """Context where ``penalty`` crosses 1, by linear interpolation in log(context).

    Returns NaN if the penalty does not cross 1 on the grid (see :func:`qs_analysis` for the
    note saying on which side it stays).
    """
    x = np.log(np.asarray(contexts, dtype=float))
    y = np.asarray(penalty, dtype=float) - 1.0
    for i in range(len(x) - 1):
        a, b = y[i], y[i + 1]
        if np.isnan(a) or np.isnan(b):
            continue
        if a == 0:
            return float(np.exp(x[i]))
        if a * b < 0:
            return float(np.exp(x[i] + (x[i + 1] - x[i]) * a / (a - b)))
    if len(y) and y[-1] == 0:
        return float(np.exp(x[-1]))
    return float("nan")


def _crossover_note(penalty):
    p = np.asarray(penalty, dtype=float)
    p = p[~np.isnan(p)]
    if p.size == 0:
        return "no feasible point"
    if np.all(p > 1):
        return "dense twin ahead at every context on the grid (crossover below it)"
    if np.all(p < 1):
        return "MoE ahead at every context on the grid (crossover above it)"
    return "crosses 1 on the grid"


def _cluster_summaries(data, names, cluster, n_clusters, ci_prob):
    """Replace ``_mean``, ``_se`` and ``_ci`` by their values over clusters of trials.

    With fewer draws of q than trials, trials that share a draw are not independent; the mean
    is then taken over the per-draw means and its standard error from their spread (a
    cluster-robust interval), so the interval carries the uncertainty of q.
    """
    onehot = (cluster[:, None] == np.arange(n_clusters)[None, :]).astype(float)
    for name in names:
        x = data[name].values  # trial last
        valid = ~np.isnan(x)
        sums = np.where(valid, x, 0.0) @ onehot
        counts = valid.astype(float) @ onehot
        with np.errstate(invalid="ignore", divide="ignore"):
            cm = np.where(counts > 0, sums / counts, np.nan)
        mean, se, ci, _ = summary_arrays(cm, ci_prob, np.asarray([0.5]))
        for suffix, value in (("mean", mean), ("se", se), ("ci", ci)):
            old = data[f"{name}_{suffix}"]
            attrs = dict(old.attrs)
            if suffix == "ci":
                attrs["ci_kind"] = f"student-t over {n_clusters} draws of q (clustered)"
            data[f"{name}_{suffix}"] = xr.Variable(old.dims, value, attrs)


def _per_trial(req, moe, tw, same, draw_of_trial):
    """Per-trial arrays, their dims, the capacity penalty and the reuse batch."""
    both, b_same = same["both"], same["b_same"]
    capq = np.where(both, tw["b"] / np.maximum(moe["b"][None], 1), np.nan)
    if req.q_spec is None:  # (q, context, trial)
        nq = len(tw["b"])
        shape = (nq, *moe["thr"].shape)
        t = {"moe": np.broadcast_to(moe["thr"], shape),
             "moe_b": np.broadcast_to(moe["thr_bound"], shape),
             "dense": tw["thr"], "dense_b": tw["thr_bound"],
             "dense_same": same["dense_same"], "moe_same": same["moe_same"]}
        dims = ("q", "context", "trial")
        cap = (("q", "context"), capq)
        same_b = (("q", "context"), b_same)
    else:  # trial i uses draw draw_of_trial[i] of q: (context, trial)
        trials = np.arange(req.n_trials)
        t = {"moe": moe["thr"], "moe_b": moe["thr_bound"],
             "dense": tw["thr"][draw_of_trial, :, trials].T,
             "dense_b": tw["thr_bound"][draw_of_trial, :, trials].T,
             "dense_same": same["dense_same"][draw_of_trial, :, trials].T,
             "moe_same": same["moe_same"]}
        dims = ("context", "trial")
        cap = (("context", "trial"), capq[draw_of_trial].T)
        same_b = (("context",), b_same[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        t["penalty"] = t["dense"] / t["moe"]
        t["penalty_bound"] = t["dense_b"] / t["moe_b"]
        t["reuse"] = t["dense_same"] / t["moe_same"]
        t["cap_factor"] = t["penalty"] / t["reuse"]
    return t, dims, cap, same_b


def _V(dims, values, units, long_name):
    return xr.Variable(dims, values, {"units": units, "long_name": long_name})


def _main_variables(req, moe, t, dims, cap, same_b, s) -> dict:
    return {
        "moe_throughput": _V(dims, np.array(t["moe"]), "tokens/s",
                             "MoE decode throughput at its admissible batch"),
        "dense_throughput": _V(dims, np.array(t["dense"]), "tokens/s",
                               "dense twin decode throughput at its admissible batch"),
        "penalty": _V(dims, t["penalty"], "1",
                      "penalty: dense / MoE throughput, each at its admissible batch"),
        "moe_throughput_bound": _V(dims, np.array(t["moe_b"]), "tokens/s",
                                   "MoE roofline throughput (bound) at its admissible batch, "
                                   "same sampled counts"),
        "dense_throughput_bound": _V(dims, np.array(t["dense_b"]), "tokens/s",
                                     "dense twin roofline throughput (bound) at its admissible "
                                     "batch"),
        "penalty_bound": _V(dims, t["penalty_bound"], "1",
                            "roofline penalty: dense / MoE bound throughput at the same batches"),
        "reuse_penalty": _V(dims, t["reuse"], "1",
                            "reuse penalty: dense / MoE throughput at the same batch (the "
                            "smaller admissible one, reuse_batch_size)"),
        "reuse_batch_size": _V(*same_b, "sequences",
                               "batch at which the reuse penalty compares the models"),
        "capacity_factor": _V(dims, t["cap_factor"], "1",
                              "what the admissible batches add: penalty / reuse_penalty"),
        "capacity_penalty": _V(*cap, "1", "capacity penalty: admissible batch, dense / MoE"),
        "s": _V((), s, "1", "sparsity s = N_active / N_total"),
        "moe_batch_size": _V("context", moe["b"], "sequences", "MoE admissible batch"),
        "moe_feasible": _V("context", moe["ok"], "1", "MoE can run"),
        "moe_reason": _V("context", moe["reason"], "1",
                         "why the MoE cannot run (empty if it can)"),
    }


def _q_variables(req, tw, q_values, draw_of_trial, s) -> dict:
    """The dense twin's batches and feasibility, and q, per value or per draw of q."""
    point = req.q_spec is None
    qd = ("q", "context") if point else ("q_draw", "context")
    per = "" if point else " per draw of q"
    out = {} if point else {"q_samples": _V("q_draw", q_values, "1", "draws of q used")}
    out |= {
        "dense_batch_size": _V(qd, tw["b"], "sequences", f"dense twin admissible batch{per}"),
        "dense_feasible": _V(qd, tw["ok"], "1",
                             "dense twin can run" + (", per draw of q" if per else "")),
        "dense_reason": _V(qd, tw["reason"].astype(str), "1",
                           "why the dense twin cannot run (empty if it can)"),
    }
    if point:
        out["qs"] = _V("q", q_values * s, "1", "q·s")
        out["first_order_disadvantaged"] = _V("q", q_values * s < 1, "1",
                                              "first-order criterion q·s < 1")
        out["dense_min_gpus"] = _V("q", np.array([-1 if v is None else v
                                                  for v in tw["min_gpus"]]), "GPUs",
                                   "smallest power-of-two GPU count fitting the dense twin at "
                                   "the longest context (-1: none)")
    else:
        out["q"] = _V("trial", q_values[draw_of_trial], "1",
                      "quality-equivalence factor q used by each trial")
        out["qs"] = _V("trial", q_values[draw_of_trial] * s, "1", "q·s")
    return out


def _coords(req, q_values, nq) -> dict:
    coords = {
        "context": _V("context", np.asarray(req.contexts, dtype=np.int64), "tokens",
                      "context length L"),
        "trial": _V("trial", np.arange(req.n_trials), "1", "Monte Carlo step"),
    }
    if req.q_spec is None:
        coords["q"] = _V("q", q_values, "1", "quality-equivalence factor q")
    else:
        coords["q_draw"] = _V("q_draw", np.arange(nq), "1", "draw of q")
    return {**coords, **summary_coords(req.quantiles)}


def _crossover_variables(req, data) -> dict:
    """First-order agreement and the crossover context (with its interval and a note)."""
    pm = data["penalty_mean"].values  # (..., context)
    lead = data["penalty_mean"].dims[:-1]
    ci = data["penalty_ci"].values  # (..., context, ci_bound)
    if req.q_spec is not None:
        data["first_order_disadvantaged"] = _V((), bool(data["qs_mean"].values < 1), "1",
                                               "first-order criterion q·s < 1 (at the mean q·s)")
    fod = np.asarray(data["first_order_disadvantaged"].values)
    fod = fod[..., None] if fod.ndim else fod
    agrees = np.where(np.isnan(pm), False, (pm > 1) == fod)
    flat = pm.reshape(-1, pm.shape[-1])
    # the upper penalty curve crosses 1 earliest
    up = ci[..., 1].reshape(flat.shape)
    lo = ci[..., 0].reshape(flat.shape)
    shape = pm.shape[:-1]
    cross = np.array([crossover_context(req.contexts, p) for p in flat]).reshape(shape)
    cross_ci = np.stack([np.array([crossover_context(req.contexts, p) for p in up]),
                         np.array([crossover_context(req.contexts, p) for p in lo])],
                        axis=-1).reshape((*shape, 2))
    notes = np.array([_crossover_note(p) for p in flat]).reshape(shape)
    return {
        "agrees_with_first_order": _V(data["penalty_mean"].dims, agrees, "1",
                                      "simulated penalty > 1 exactly when q·s < 1"),
        "crossover_context": _V(lead, cross, "tokens",
                                "context where the mean penalty crosses 1 (log interpolation)"),
        "crossover_context_ci": xr.Variable((*lead, "ci_bound"), cross_ci, {
            "units": "tokens",
            "long_name": "crossover of the upper and lower CI bounds of the penalty",
            "ci_kind": data["penalty_ci"].attrs["ci_kind"],
            "ci_prob": data["penalty_ci"].attrs["ci_prob"]}),
        "crossover_note": _V(lead, notes, "1", "where the penalty crosses 1"),
    }


#: Per-trial variables summarised (``_mean``, ``_se``, ``_ci``, ``_q``).
_SUMMARISED = ("moe_throughput", "dense_throughput", "penalty", "reuse_penalty",
               "capacity_factor", "moe_throughput_bound", "dense_throughput_bound",
               "penalty_bound")


def qs_dataset(req, moe_dep, moe, tw, same, q_values, draw_of_trial, moe_min) -> xr.Dataset:
    """The result of :func:`mcroute.qs_analysis` from the arrays of its steps, built once."""
    s = req.moe.sparsity
    nq = len(q_values)
    t, dims, cap, same_b = _per_trial(req, moe, tw, same, draw_of_trial)
    data = _main_variables(req, moe, t, dims, cap, same_b, s)
    data.update(_q_variables(req, tw, q_values, draw_of_trial, s))
    data["moe_min_gpus"] = _V((), -1 if moe_min is None else moe_min, "GPUs",
                              "smallest power-of-two GPU count fitting the MoE at the longest "
                              "context (-1: none)")
    names = list(_SUMMARISED) + (["q", "qs", "capacity_penalty"] if req.q_spec is not None
                                 else [])
    data.update(summary_variables_many(
        _SUMMARISED, [data[n].values for n in _SUMMARISED], data[_SUMMARISED[0]].dims[:-1],
        {n: data[n].attrs for n in _SUMMARISED}, req.ci_prob, req.quantiles))
    for name in names[len(_SUMMARISED):]:
        var = data[name]
        data.update(summary_variables(name, var.values, var.dims[:-1], var.attrs,
                                      req.ci_prob, req.quantiles))
    if req.q_spec is not None and nq < req.n_trials:
        _cluster_summaries(data, names, draw_of_trial, nq, req.ci_prob)
    data.update(_crossover_variables(req, data))
    coords = _coords(req, q_values, nq)
    if req.ctx_scalar:
        data = squeeze_variables(data, "context", drop=False)
        coords = squeeze_variables(coords, "context", drop=False)
    if req.q_spec is None and req.q_scalar:
        data = squeeze_variables(data, "q", drop=False)
        coords = squeeze_variables(coords, "q", drop=False)
    twin0 = tw["models"][0]
    attrs = provenance(
        seed=req.entropy, n_trials=req.n_trials, ci_prob=req.ci_prob,
        model=req.moe.describe(), hardware=req.hw.describe(), deployment=moe_dep.describe(),
        dense_deployment={"n_gpus": req.dense_n, **req.dense_options},
        dense_style=req.dense_style if req.dense_model is None else "given dense_model",
        dense_twin_example=twin0.describe(), routing=moe["routing"],
        q=req.q_spec.describe() if req.q_spec is not None else {"kind": "points",
                                                                "values": q_values.tolist()},
        n_q_samples=req.n_q_samples if req.q_spec is not None else 0,
        kernels=moe_dep.kernels, kernel_card=moe_dep.kernel_card_name or "none (roofline)",
        uncertainty_sources=(uncertainty_sources(moe_dep, "routing")
                             + (["q"] if req.q_spec is not None else [])),
    )
    return build_dataset(data, coords, attrs)

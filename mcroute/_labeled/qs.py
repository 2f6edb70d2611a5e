"""The qs analysis: the MoE's decode penalty against its quality-matched dense twin.

Labeled floor (4). May import: numpy, xarray, and the floors below (``mcroute._base``,
``_cards``, ``_cost``, ``_quality``, ``_twin``), and the labeled modules ``throughput``,
``results`` and ``paper``.

Science (docs/qs.md). With s = N_active / N_total and q the factor by which a dense model must
exceed the MoE's active parameters to match its quality, the dense twin has q·N_active = q·s·N_total
parameters (``mcroute._twin``). When decode is bandwidth-bound and every expert is touched, the
MoE streams ≈ b·N_total weight bytes per step and the twin b·q·s·N_total, and the twin leaves
more HBM for the KV cache: q·s < 1 marks the MoE as structurally disadvantaged (the *first-order
criterion*). The simulated **penalty** is dense throughput / MoE throughput, each at its own
admissible batch. It splits exactly into

* the **reuse penalty** — dense / MoE throughput at the *same* batch, the smaller of the two
  admissible ones (``reuse_batch_size``): weight bytes and reuse fragmentation;
* the **capacity factor** — penalty / reuse penalty: what running each model at its own
  admissible batch adds (the dense twin's larger KV headroom),

so that ``penalty = reuse_penalty × capacity_factor``. ``capacity_penalty`` is the ratio of the
admissible batch sizes themselves (dense / MoE).

:func:`qs_analysis` runs in steps: validate the request (:func:`_request`), the MoE's Monte
Carlo (:func:`decode_throughput`), the draws of q, the twins (one per value of q, their
admissible batches over all contexts at once), the reuse batch, and one Dataset built from
arrays already summarised in NumPy (``qs_dataset.py``).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import TYPE_CHECKING, Any

import numpy as np

from mcroute import _kernels as K
from mcroute._base.progress import compile_notice, progress_callback
from mcroute._base.rng import generator, resolve_seed
from mcroute._base.validate import (
    MAX_CONTEXT,
    MAX_GPUS,
    MAX_Q,
    McrouteError,
    check_bytes,
    check_int,
    check_int_list,
    check_unique,
)
from mcroute._cards.cards import ModelSpec, load_hardware, load_model
from mcroute._cost.deployment import Deployment, check_deployment_options
from mcroute._labeled.options import QS_OPTIONS, by_name, check_sizes
from mcroute._labeled.paper import (
    PAPER_CASES,
    PAPER_CONTEXTS,
    PAPER_GPUS,
    PAPER_HARDWARE,
    SCALING_LAW_LOG_SD,
    default_q,
    paper_cases,
)
from mcroute._labeled.qs_dataset import crossover_context, qs_dataset
from mcroute._labeled.results import DEFAULT_QUANTILES, check_quantiles
from mcroute._labeled.throughput import _run_context, decode_throughput
from mcroute._quality.quality import QSpec, as_q
from mcroute._twin import DENSE_STYLES, check_moe, check_q_value, dense_twin, twin_for

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import xarray as xr
    from numpy.typing import ArrayLike
    from scipy.stats.distributions import rv_frozen

    from mcroute._cards.hardware import HardwareSpec
    from mcroute._quality.quality import EstimateQ
    from mcroute._routing.distributions import Routing

__all__ = ["DENSE_STYLES", "dense_twin", "qs_analysis", "min_gpus", "crossover_context",
           "default_q", "paper_cases", "PAPER_CASES", "PAPER_CONTEXTS", "PAPER_GPUS",
           "PAPER_HARDWARE", "SCALING_LAW_LOG_SD"]

#: Draws of an uncertain q come from this stream of the seed (``generator(seed, Q_STREAM)``).
Q_STREAM = (7,)
#: Share of the progress line given to the MoE's Monte Carlo (the rest: the twins).
_MOE_SHARE = 0.8


def min_gpus(model: str | ModelSpec, hardware: str | HardwareSpec, context: int, *,
             candidates: int | Sequence[int] | None = None,
             **deployment_options: Any) -> int | None:
    """Smallest GPU count on which ``model`` can decode one sequence at ``context``.

    Tries ``candidates`` (default powers of two 1 … 4096) in increasing order; counts for which
    the deployment cannot be built (e.g. expert_parallel not dividing the GPUs, or more than
    one node on a card without a scale-out network) are skipped.
    Returns None if none fits.

    Examples
    --------
    >>> import mcroute as mr
    >>> mr.min_gpus("llama-3.1-70b", "h100-sxm", 8192)
    2
    """
    check_deployment_options(deployment_options, exclude=("model", "hardware", "n_gpus"))
    cands = [2**i for i in range(13)] if candidates is None else check_int_list(
        "candidates", candidates, minimum=1, maximum=MAX_GPUS)[0]
    check_int("context", context, minimum=1, maximum=MAX_CONTEXT)
    for n in sorted(cands):
        try:
            dep = Deployment(model, hardware, n, **deployment_options)
        except McrouteError as exc:
            if any(w in str(exc) for w in ("divide", "placement", "scale-out", "expert slots")):
                continue
            raise
        if dep.feasible(context):
            return n
    return None


def _parse_q_arg(q):
    """Point values (list → q dim) or one uncertain QSpec."""
    if isinstance(q, (list, tuple)):
        if not q:
            raise McrouteError("q must not be an empty list")
        values = [check_q_value(v) for v in q]
        check_unique("q", values)
        return values, None, False
    if isinstance(q, numbers.Real) and not isinstance(q, bool):
        return [check_q_value(q)], None, True
    spec = q if isinstance(q, QSpec) else as_q(q)
    if spec.is_point:
        return [check_q_value(spec.median())], None, True
    return None, spec, True


#: Arrays of (q, context, trial) values held by qs_analysis (throughputs, penalties and their
#: summaries' working copies), for the memory check before starting.
_QS_ARRAYS = 14

#: qs_analysis's options, declared once (range, type, doc): the checks below use them.
_OPT = by_name(QS_OPTIONS)


@dataclasses.dataclass
class _Request:
    """A validated :func:`qs_analysis` request."""

    moe: ModelSpec
    hw: object
    n_gpus: int
    dense_n: int
    contexts: list
    ctx_scalar: bool
    routing: object
    n_trials: int
    ci_prob: float
    quantiles: np.ndarray
    dense_style: str
    n_q_samples: int
    method: str
    dense_model: ModelSpec | None
    q_points: list | None
    q_spec: QSpec | None
    q_scalar: bool
    entropy: int
    options: dict
    dense_options: dict


def _check_dense_model(dense_model):
    dense_model = load_model(dense_model) if isinstance(dense_model, str) else dense_model
    if not isinstance(dense_model, ModelSpec) or dense_model.is_moe:
        raise McrouteError(
            f"dense_model must be a dense model card, got "
            f"{getattr(dense_model, 'name', type(dense_model).__name__)!r}, which is a "
            "Mixture-of-Experts model" if isinstance(dense_model, ModelSpec)
            else f"dense_model must be a model card name or ModelSpec, got "
            f"{type(dense_model).__name__}")
    return dense_model


def _resolve_q(q, moe, dense_model):
    """The q to use: as given; N_dense / N_active with a dense model; else the estimate."""
    if dense_model is not None:
        if q is None:
            return dense_model.total_params / moe.active_params
        return q
    if q is None:
        return default_q(moe)[0]
    return q


def _dense_options(options: dict) -> dict:
    """The twin's deployment options: the MoE's, less those of routed experts."""
    dense = {k: v for k, v in options.items()
             if k not in ("redundant_experts", "expert_placement", "expert_parallel")}
    # a dense model's FFNs are most of its weights: engines split them over the GPUs (SGLang's
    # data-parallel attention keeps the MLPs tensor-parallel), so the twin does not replicate
    # them unless asked
    dense.setdefault("replicate_dense", False)
    return dense


def _request(model, hardware, n_gpus, q, context, routing, n_trials, rng, ci_prob, quantiles,
             dense_style, dense_n_gpus, n_q_samples, method, dense_model, options) -> _Request:
    """Validate the arguments of :func:`qs_analysis` (the public edge), before any work."""
    check_deployment_options(options, exclude=("model", "hardware", "n_gpus"))
    moe = check_moe(model)
    if dense_model is not None:
        dense_model = _check_dense_model(dense_model)
    q = _resolve_q(q, moe, dense_model)
    hw = load_hardware(hardware) if isinstance(hardware, str) else hardware
    n_gpus = check_int("n_gpus", n_gpus, minimum=1, maximum=MAX_GPUS)
    dense_n = n_gpus if dense_n_gpus is None else _OPT["dense_n_gpus"].check(dense_n_gpus)
    contexts, ctx_scalar = check_sizes(_OPT["context"], context)  # the one declaration
    n_trials = _OPT["n_trials"].check(n_trials)
    n_q_samples = _OPT["n_q_samples"].check(n_q_samples)
    dense_style = _OPT["dense_style"].check(dense_style)
    method = _OPT["method"].check(method)
    q_points, q_spec, q_scalar = _parse_q_arg(q)
    if q_spec is not None and dense_model is not None:
        raise McrouteError("with dense_model, q must be a number (it is only reported)")
    nq_max = len(q_points) if q_spec is None else n_q_samples
    check_bytes(f"the per-trial results ({nq_max} values of q x {len(contexts)} contexts x "
                f"{n_trials} trials x {_QS_ARRAYS} arrays, float64)",
                nq_max * len(contexts) * n_trials * _QS_ARRAYS * 8,
                "n_trials, the number of q values or the number of contexts")
    return _Request(
        moe=moe, hw=hw, n_gpus=n_gpus, dense_n=dense_n, contexts=contexts,
        ctx_scalar=ctx_scalar, routing=routing, n_trials=n_trials,
        ci_prob=_OPT["ci_prob"].check(ci_prob), quantiles=check_quantiles(quantiles),
        dense_style=dense_style, n_q_samples=n_q_samples, method=method,
        dense_model=dense_model, q_points=q_points, q_spec=q_spec, q_scalar=q_scalar,
        entropy=resolve_seed(rng), options=dict(options), dense_options=_dense_options(options))


def _q_values(req: _Request):
    """``(q values, draw of each trial)``: the points, or ``n_q_samples`` draws of q."""
    if req.q_spec is None:
        return np.asarray(req.q_points, dtype=float), None
    q_values = np.asarray(req.q_spec.sample(req.n_q_samples, generator(req.entropy, Q_STREAM)),
                          dtype=float)
    bad = ~(np.isfinite(q_values) & (q_values > 0) & (q_values <= MAX_Q))
    if bad.any():
        raise McrouteError(
            f"q: {int(bad.sum())} of {req.n_q_samples} draws of {req.q_spec!r} fall outside "
            f"(0, {MAX_Q:g}] (mcroute._base.validate.MAX_Q), e.g. {q_values[bad][0]:g}; give "
            "a narrower distribution of q")
    return q_values, np.arange(req.n_trials) % req.n_q_samples


def _dense_throughput_at(dep, contexts, batch, run, trials=None):
    """Dense throughput per trial [tokens/s] at given (context, batch) pairs (NaN if not).

    Returns (chosen kernels, roofline bound), each (context, trial). ``run`` holds the run's
    per-trial kernel parameters and MTP acceptances (the same draws as the MoE's trials).
    ``trials``: only these trials are computed (the others are NaN), e.g. the trials that use
    one draw of an uncertain q. Feasibility is decided for all contexts at once.
    """
    n_trials = len(run["accepted"])
    idx = np.arange(n_trials) if trials is None else np.asarray(trials)
    out = np.full((len(contexts), n_trials), np.nan)
    out_bound = np.full((len(contexts), n_trials), np.nan)
    batch = np.asarray(batch, dtype=np.int64)
    live = np.flatnonzero(batch >= 1)
    if idx.size == 0 or live.size == 0:
        return out, out_bound
    L = np.asarray(contexts, dtype=np.int64)
    ok = np.zeros(len(contexts), dtype=bool)
    ok[live] = dep.feasible(L[live], batch[live])
    params = run["params"]
    if params is not None:
        params = {k: (np.asarray(v)[idx] if np.ndim(v) else v) for k, v in params.items()}
    acc = run["accepted"][idx]
    for i in np.flatnonzero(ok):
        B = int(batch[i])
        ev = dep._evaluate(int(L[i]), B, None, params, None, idx.size)
        out[i, idx] = B * acc / ev["step_time"]
        out_bound[i, idx] = B * acc / ev["step_time_bound"]
    return out, out_bound


def _twins(req: _Request, q_values, draw_of_trial, tick) -> dict:
    """Each value of q: its twin's deployment, run, admissible batches and throughputs."""
    nq, nc, nt = len(q_values), len(req.contexts), req.n_trials
    L = np.asarray(req.contexts, dtype=np.int64)
    tw = {"thr": np.full((nq, nc, nt), np.nan), "thr_bound": np.full((nq, nc, nt), np.nan),
          "b": np.zeros((nq, nc), dtype=np.int64), "ok": np.zeros((nq, nc), dtype=bool),
          "reason": np.full((nq, nc), "", dtype=object), "min_gpus": np.zeros(nq, dtype=object),
          "models": [], "deps": [], "runs": [], "trials": []}
    for iq, qv in enumerate(q_values):
        twin = (req.dense_model if req.dense_model is not None
                else twin_for(req.moe, qv, req.dense_style))
        dep = Deployment(twin, req.hw, req.dense_n, **req.dense_options)
        run = _run_context(dep, None, nt, req.entropy)
        why = np.asarray(dep.infeasibility(L), dtype=object)
        tw["reason"][iq] = why
        tw["ok"][iq] = why == ""
        if tw["ok"][iq].any():
            tw["b"][iq] = np.where(tw["ok"][iq], dep.max_batch_size(L), 0)
        mine = None if draw_of_trial is None else np.flatnonzero(draw_of_trial == iq)
        tw["thr"][iq], tw["thr_bound"][iq] = _dense_throughput_at(dep, req.contexts, tw["b"][iq],
                                                                  run, mine)
        if req.q_spec is None:
            tw["min_gpus"][iq] = min_gpus(twin, req.hw, max(req.contexts), **req.dense_options)
        for key, value in (("models", twin), ("deps", dep), ("runs", run), ("trials", mine)):
            tw[key].append(value)
        tick((iq + 1) / nq)
    return tw


def _moe_at(req, moe_dep, moe, ic, b, cache):
    """MoE throughput per trial at batch b (the admissible-batch run when b = B_max)."""
    if b == moe["b"][ic]:
        return moe["thr"][ic]
    if b < 1:
        return np.full(req.n_trials, np.nan)
    if (ic, b) not in cache:
        run = decode_throughput(moe_dep, req.contexts[ic], int(b), req.routing, req.n_trials,
                                rng=req.entropy, ci_prob=req.ci_prob, method=req.method,
                                progress=False)
        cache[ic, b] = run["throughput"].values.reshape(req.n_trials)
    return cache[ic, b]


def _reuse(req: _Request, moe_dep, moe, tw) -> dict:
    """Both models at one batch both can run, for the reuse penalty.

    The batch is the smaller admissible one (for an uncertain q, the smallest over its draws).
    """
    nq, nc = tw["b"].shape
    both = tw["ok"] & moe["ok"][None]
    b_same = np.where(both, np.minimum(moe["b"][None], tw["b"]), 0)
    if req.q_spec is not None:
        common = np.where(both.all(axis=0), b_same.min(axis=0), 0)
        b_same = np.broadcast_to(common, (nq, nc)).copy()
    dense_same = np.stack([_dense_throughput_at(tw["deps"][iq], req.contexts, b_same[iq],
                                                tw["runs"][iq], tw["trials"][iq])[0]
                           for iq in range(nq)])
    cache = {}
    if req.q_spec is None:
        moe_same = np.stack([np.stack([_moe_at(req, moe_dep, moe, ic, b_same[iq, ic], cache)
                                       for ic in range(nc)]) for iq in range(nq)])
    else:
        moe_same = np.stack([_moe_at(req, moe_dep, moe, ic, b_same[0, ic], cache)
                             for ic in range(nc)])
    return {"both": both, "b_same": b_same, "dense_same": dense_same, "moe_same": moe_same}


def _moe_step(req: _Request, moe_dep, progress):
    """The MoE's Monte Carlo at its admissible batches: throughputs, batches, feasibility."""
    nc = len(req.contexts)
    ds = decode_throughput(moe_dep, req.contexts, "max", req.routing, req.n_trials,
                           rng=req.entropy, ci_prob=req.ci_prob, method=req.method,
                           progress=progress)
    return {"thr": ds["throughput"].values.reshape(nc, req.n_trials),
            "thr_bound": ds["throughput_bound"].values.reshape(nc, req.n_trials),
            "b": ds["batch_size"].values.reshape(nc).astype(np.int64),
            "ok": ds["feasible"].values.reshape(nc).astype(bool),
            "reason": ds["reason"].values.reshape(nc).astype(str),
            "routing": ds.attrs.get("routing", "")}


def _scaled(progress, lo: float, hi: float):
    """A progress callback mapping [0, 1] onto [lo, hi] of ``progress`` (None: None)."""
    if progress is None:
        return False
    return lambda f: progress(lo + (hi - lo) * f)


def qs_analysis(
    model: str | ModelSpec,
    hardware: str | HardwareSpec,
    n_gpus: int,
    q: float | Sequence[float] | ArrayLike | rv_frozen | str | QSpec | EstimateQ | xr.Dataset
    | None = None,
    context: int | str | Sequence[int | str] = PAPER_CONTEXTS,
    routing: Routing | str | None = None,
    *,
    n_trials: int = 1000,
    rng: int | np.random.SeedSequence | np.random.Generator | None = None,
    ci_prob: float = 0.95,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    dense_style: str = "widen",
    dense_n_gpus: int | None = None,
    n_q_samples: int = 256,
    method: str = "auto",
    dense_model: str | ModelSpec | None = None,
    progress: bool | Callable[[float], object] | None = None,
    **deployment_options: Any,
) -> xr.Dataset:
    """MoE vs quality-matched dense twin at decode: throughput penalty with intervals.

    Parameters
    ----------
    model : str or ModelSpec
        The Mixture-of-Experts model (a dense model is an error).
    hardware : str or HardwareSpec
        GPU card; both models run on it.
    n_gpus : int
        GPUs serving the MoE (and the twin, unless ``dense_n_gpus``).
    q : float, list of float, or uncertain q, optional
        Quality-equivalence factor. Default (None): the estimate, as ``mcroute qs`` uses it
        (:func:`mcroute._labeled.paper.default_q`: the benchmark fit where the shared tables
        score the model, else the scaling law widened to a log-normal); with ``dense_model``,
        N_dense / N_active. A number or a list of numbers (→ the ``q`` dim) are exact;
        an ``ndarray`` of samples, a frozen ``scipy.stats`` distribution, a
        :func:`mcroute.estimate_q` result, a ``QSpec`` or a :func:`mcroute.parse_q` string are
        uncertain: trial i then uses one of ``n_q_samples`` draws of q (drawn from the seed), so
        intervals carry both the routing Monte Carlo and the uncertainty of q.
    context : int, str or sequence, optional
        Context length(s) [tokens]; ``"128k"`` = 131072, ``"4k,32k"`` a list. Default: the
        main job's 4k, 8k, 16k, 32k, 64k and 128k.
    routing : Routing or str, optional
        Routing of the MoE's layers (a routing string such as ``"zipf:1.2"`` as on the command
        line). Default: as :func:`decode_throughput`, uniform over its E
        experts, top-k, group-limited when the model card says so (DeepSeek-V2/V3).
    n_trials : int
        Monte Carlo decode steps per context, >= 2 (intervals need two).
    rng : None, int, SeedSequence or Generator
        Seed (stored in ``attrs["seed"]``).
    ci_prob : float
        Level of the confidence intervals of the means.
    quantiles : sequence of float
        Levels of the single-step quantile bands.
    dense_style : {"widen", "llama"}
        How the twin is built, see :func:`dense_twin`. Reported in the attrs.
    dense_n_gpus : int, optional
        GPUs of the twin (default ``n_gpus``).
    n_q_samples : int
        Draws of an uncertain q (each needs one dense twin per context). With fewer draws than
        trials, trial i uses draw ``i mod n_q_samples`` and the means, standard errors and
        intervals are taken over the per-draw means (trials sharing a draw are not independent).
    method : {"auto", "assignment", "counts"}
        Sampling method of the routing Monte Carlo.
    dense_model : str or ModelSpec, optional
        Compare against this dense model instead of a built twin (e.g. ``"llama-3.1-405b"``).
        Then ``q`` may be None and is taken as ``N_dense / N_active``; a given q is only
        reported.
    progress : None, bool or callable
        None (default): a progress line on stderr when it is a terminal and the work takes
        more than about 2 s; False: none; a callable is called with the fraction done.
    **deployment_options
        Passed to both :class:`mcroute.Deployment` s (weight_dtype, kv_dtype, hbm_fraction,
        kernels, all_to_all, mtp_depth, …), except that the options of routed experts
        (``redundant_experts``, ``expert_placement``, ``expert_parallel``) apply to the MoE only
        and the twin keeps its dense layers split over the GPUs (``replicate_dense=False``)
        unless ``replicate_dense`` is given.

    Returns
    -------
    xarray.Dataset
        Dims ``context`` (and ``q`` for a list of point values), ``trial``, ``ci_bound``,
        ``quantile``. Per-trial ``moe_throughput``, ``dense_throughput``, ``penalty`` (dense /
        MoE throughput at their own admissible batches) and ``reuse_penalty`` (both at
        ``reuse_batch_size``, the smaller admissible batch; for an uncertain q the smallest
        over its draws) with ``_mean``, ``_se``, ``_ci``, ``_q``; ``capacity_factor`` (penalty /
        reuse penalty), ``capacity_penalty`` (ratio of admissible batches, dense / MoE),
        ``moe_batch_size``, ``dense_batch_size``, ``moe_feasible``, ``dense_feasible``,
        ``moe_reason``, ``dense_reason``, ``s``, ``q`` (``q_mean`` for uncertain q), ``qs``,
        ``first_order_disadvantaged`` (q·s < 1), ``agrees_with_first_order`` (the simulated
        penalty's mean is > 1 exactly when q·s < 1), ``crossover_context`` with
        ``crossover_context_ci`` (from the CI bounds of the penalty) and ``crossover_note``,
        ``moe_min_gpus`` and ``dense_min_gpus`` (smallest power-of-two GPU count that fits one
        sequence). Beside the estimate under the deployment's kernels (``kernels``, default
        calibrated), the roofline bound from the same sampled counts and batches:
        ``moe_throughput_bound``, ``dense_throughput_bound`` and ``penalty_bound`` (with their
        summaries). The dense twin's trial i uses the same kernel-parameter and MTP draws as
        the MoE's trial i (common random numbers). Infeasible points have NaN throughputs and
        penalties. Attrs ``kernels``, ``kernel_card`` and ``uncertainty_sources`` (routing,
        calibration, mtp_acceptance, q: what the intervals carry).

    Examples
    --------
    >>> import mcroute as mr
    >>> ds = mr.qs_analysis("qwen3-235b-a22b", "h200", 8, q=4.0, context=["8k", "128k"],
    ...                     n_trials=32, rng=0)
    >>> float(ds["qs"].round(3))
    0.378
    >>> bool((ds["penalty_mean"] > 1).all())
    True
    """
    req = _request(model, hardware, n_gpus, q, context, routing, n_trials, rng, ci_prob,
                   quantiles, dense_style, dense_n_gpus, n_q_samples, method, dense_model,
                   deployment_options)
    if progress is not None and progress is not False and not callable(progress):
        raise McrouteError(f"progress must be a callable, True, False or None, got {progress!r}")
    compile_notice(K)
    callback, owned = progress_callback(progress, f"qs_analysis {req.moe.name}")
    try:
        moe_dep = Deployment(req.moe, req.hw, req.n_gpus, **req.options)
        moe = _moe_step(req, moe_dep, _scaled(callback, 0.0, _MOE_SHARE))
        q_values, draw_of_trial = _q_values(req)
        tw = _twins(req, q_values, draw_of_trial, _scaled(callback, _MOE_SHARE, 1.0)
                    or (lambda f: None))
        same = _reuse(req, moe_dep, moe, tw)
        moe_min = min_gpus(req.moe, req.hw, max(req.contexts), **req.options)
    finally:
        if owned is not None:
            owned.close()
    return qs_dataset(req, moe_dep, moe, tw, same, q_values, draw_of_trial, moe_min)



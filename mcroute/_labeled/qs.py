"""The qs analysis: a quality-matched dense twin, and the MoE's decode penalty against it.

May import: numpy, xarray, and the layers below (``_cards``, ``_cost``, ``_throughput``,
``_quality``, ``_results``, ``_rng``, ``_validate``).

Science (DESIGN.md §1). With s = N_active / N_total and q the factor by which a dense model must
exceed the MoE's active parameters to match its quality, the dense twin has q·N_active = q·s·N_total
parameters. When decode is bandwidth-bound and every expert is touched, the MoE streams ≈ b·N_total
weight bytes per step and the twin b·q·s·N_total, and the twin leaves more HBM for the KV cache:
q·s < 1 marks the MoE as structurally disadvantaged (the *first-order criterion*). The simulated
**penalty** is dense throughput / MoE throughput, each at its own admissible batch. It splits
exactly into

* the **reuse penalty** — dense / MoE throughput at the *same* batch, the smaller of the two
  admissible ones (``reuse_batch_size``): weight bytes and reuse fragmentation;
* the **capacity factor** — penalty / reuse penalty: what running each model at its own
  admissible batch adds (the dense twin's larger KV headroom),

so that ``penalty = reuse_penalty × capacity_factor``. ``capacity_penalty`` is the ratio of the
admissible batch sizes themselves (dense / MoE), as in DESIGN.md.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np
import xarray as xr

from mcroute._base.rng import generator, resolve_seed
from mcroute._base.validate import (
    MAX_CONTEXT,
    MAX_GPUS,
    MAX_Q,
    MAX_Q_SAMPLES,
    McrouteError,
    check_bytes,
    check_int,
    check_int_list,
    check_prob,
    check_unique,
)
from mcroute._cards.cards import LayerSpec, ModelSpec, load_hardware, load_model
from mcroute._cost.deployment import Deployment, check_deployment_options
from mcroute._labeled.results import DEFAULT_QUANTILES, _summary_arrays, provenance, summarize
from mcroute._labeled.throughput import (
    _run_context,
    _token_list,
    _uncertainty_sources,
    decode_throughput,
)
from mcroute._quality.quality import QSpec, as_q

__all__ = ["DENSE_STYLES", "dense_twin", "qs_analysis", "min_gpus", "crossover_context"]

#: Dense-twin construction styles (see :func:`dense_twin`).
DENSE_STYLES = ("widen", "llama")

# Llama-3.1 family shapes (hidden, layers) used by style="llama" to set the depth for a width:
# 8B 4096/32, 70B 8192/80, 405B 16384/126 (shared/reference/models.md [S17]-[S19]; 8B: Meta
# model card). The FFN is 3.5 × hidden (70B: 28672 = 3.5 × 8192), GQA with 8 KV heads of 128.
_LLAMA_SHAPES = np.array([[4096, 32], [8192, 80], [16384, 126]], dtype=float)
_LLAMA_FFN_RATIO = 3.5
_LLAMA_KV_HEADS = 8
_HEAD_DIM = 128


def _check_moe(model) -> ModelSpec:
    if isinstance(model, str):
        model = load_model(model)
    if not isinstance(model, ModelSpec):
        raise McrouteError(f"model must be a model card name or a ModelSpec, got "
                           f"{type(model).__name__}")
    if not model.is_moe:
        raise McrouteError(f"model {model.name!r} is dense; the qs analysis needs a "
                           "Mixture-of-Experts model (its dense twin is built from it)")
    return model


def _check_q_value(q, name="q") -> float:
    """A point value of q: finite, > 0 and at most MAX_Q (see mcroute._base.validate)."""
    try:
        ok = (not isinstance(q, bool) and isinstance(q, numbers.Real) and math.isfinite(q)
              and 0 < q <= MAX_Q)
    except OverflowError:  # an int beyond the float range
        ok = False
    if not ok:
        shown = f"{q!r}"[:40] if not isinstance(q, int) or abs(q) < 10**30 else "a huge integer"
        raise McrouteError(f"{name} must be a finite number in (0, {MAX_Q:g}] "
                           f"(mcroute._base.validate.MAX_Q), got {shown}")
    return float(q)


def _dense_layer(index, hidden, n_heads, n_kv, ffn):
    """A GQA decoder block with a dense SwiGLU FFN of width ``ffn``."""
    q_dim = n_heads * _HEAD_DIM
    kv_dim = n_kv * _HEAD_DIM
    attn = hidden * q_dim + 2 * hidden * kv_dim + q_dim * hidden
    return LayerSpec(
        index=index, attention="gqa" if n_kv < n_heads else "mha", attn_params=attn,
        kv_values_per_token=2 * kv_dim, sliding_window=0,
        attn_flops_per_token_per_ctx=4 * q_dim, cross_kv_values_per_token=0, ffn="dense",
        dense_ffn_params=3 * hidden * ffn, n_experts=0, top_k=0, expert_params=0,
        n_shared_experts=0, shared_expert_params=0, router_params=0, n_kv_heads=n_kv,
    )


def _llama_params(hidden, vocab, tied):
    """Parameters and layer count of a Llama-3-shaped model of this width."""
    # depth: piecewise power law through the family's (hidden, layers) points, extended with the
    # end segments' slopes
    lx, ly = np.log(_LLAMA_SHAPES[:, 0]), np.log(_LLAMA_SHAPES[:, 1])
    x = math.log(hidden)
    i = int(np.clip(np.searchsorted(lx, x) - 1, 0, len(lx) - 2))
    y = ly[i] + (ly[i + 1] - ly[i]) * (x - lx[i]) / (lx[i + 1] - lx[i])
    layers = max(1, int(round(math.exp(y))))
    ffn = int(round(_LLAMA_FFN_RATIO * hidden / 256)) * 256
    n_heads = max(1, int(hidden // _HEAD_DIM))
    n_kv = min(_LLAMA_KV_HEADS, n_heads)
    per_layer = (_dense_layer(0, hidden, n_heads, n_kv, ffn).attn_params + 3 * hidden * ffn)
    emb = vocab * hidden * (1 if tied else 2)
    return layers * per_layer + emb, layers, ffn, n_heads, n_kv


def dense_twin(model, q, style="widen", *, name=None) -> ModelSpec:
    """A dense model with ``q · N_active`` parameters, the MoE's quality-matched twin.

    Parameters
    ----------
    model : str or ModelSpec
        The Mixture-of-Experts model.
    q : float
        Quality-equivalence factor, > 0 [1].
    style : {"widen", "llama"}
        ``"widen"`` (default) keeps the MoE's decode blocks, attention and KV cache exactly and
        replaces every FFN (routed, shared and dense) by one dense FFN whose width makes the
        total q·N_active; embeddings and head are kept. Encoder weights of an encoder-decoder
        MoE are not kept (the twin is decoder-only). Needs q·N_active above the attention and
        embedding parameters. ``"llama"`` builds a Llama-3-shaped model (GQA with 8 KV heads of
        128, FFN 3.5 × hidden, depth interpolated between the Llama-3.1 family's (width, depth)
        points as a piecewise power law) of the size
        q·N_active, keeping the MoE's vocabulary; its KV cache per token differs from the MoE's.
    name : str, optional
        Name of the twin (default ``"<model>-dense-q<q>-<style>"``).

    Returns
    -------
    ModelSpec
        A dense model with ``total_params ≈ q · model.active_params`` (widen: within one FFN
        column per layer; llama: within a few percent, limited by integer widths and depth).

    Examples
    --------
    >>> import mcroute as mr
    >>> moe = mr.load_model("qwen3-235b-a22b")
    >>> twin = mr.dense_twin(moe, 4.0)
    >>> round(twin.total_params / (4.0 * moe.active_params), 4), twin.is_moe
    (1.0, False)
    >>> twin.kv_bytes_per_token() == moe.kv_bytes_per_token()
    True
    """
    moe = _check_moe(model)
    q = _check_q_value(q)
    if not isinstance(style, str) or style not in DENSE_STYLES:
        raise McrouteError(f"style must be one of {DENSE_STYLES}, got {style!r}")
    if name is not None and not (isinstance(name, str) and name.strip()):
        raise McrouteError(f"name must be a non-empty string or None, got {name!r}")
    target = q * moe.active_params
    tag = name or f"{moe.name}-dense-q{q:g}-{style}"
    if style == "widen":
        layers = moe.decode_layers
        fixed = (moe.embedding_params + moe.lm_head_params
                 + sum(la.attn_params for la in layers))
        budget = target - fixed
        if budget <= 0:
            raise McrouteError(
                f"q={q:g} gives a dense twin of {target / 1e9:.3g}B parameters, no more than the "
                f"MoE's attention and embeddings ({fixed / 1e9:.3g}B): style='widen' cannot "
                "build it; use a larger q or style='llama'")
        ffn = budget / (3 * moe.hidden * len(layers))
        new = []
        for la in layers:
            new.append(dataclasses.replace(
                la, ffn="dense", dense_ffn_params=int(round(3 * moe.hidden * ffn)), n_experts=0,
                top_k=0, expert_params=0, n_shared_experts=0, shared_expert_params=0,
                router_params=0))
        return dataclasses.replace(
            moe, name=tag, display_name=f"dense twin of {moe.display_name} (q={q:g}, widen)",
            decode_layers=tuple(new), other_resident_params=0,
            published_total_params=None, published_active_params=None, card=None,
            source=(f"mcroute.dense_twin({moe.name!r}, q={q:g}, style='widen')",))
    # style == "llama": bisection on the width (multiple of 128)
    tied = moe.lm_head_params == 0
    lo, hi = 128, 128
    while _llama_params(hi, moe.vocab, tied)[0] < target:
        hi *= 2
        if hi > 2**20:
            raise McrouteError(f"q={q:g}: dense twin too large for style='llama'")
    while hi - lo > 128:
        mid = (lo + hi) // 2 // 128 * 128
        if _llama_params(mid, moe.vocab, tied)[0] < target:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda h: abs(_llama_params(h, moe.vocab, tied)[0] - target))
    _, n_layers, ffn, n_heads, n_kv = _llama_params(best, moe.vocab, tied)
    # fine-tune the depth so the total is as close as possible to the target
    per = _llama_params(best, moe.vocab, tied)
    per_layer = (per[0] - moe.vocab * best * (1 if tied else 2)) / n_layers
    n_layers = max(1, int(round((target - moe.vocab * best * (1 if tied else 2)) / per_layer)))
    layers = tuple(_dense_layer(i, best, n_heads, n_kv, ffn) for i in range(n_layers))
    emb = moe.vocab * best
    return ModelSpec(
        name=tag, display_name=f"dense twin of {moe.display_name} (q={q:g}, llama)",
        decode_layers=layers, hidden=best, vocab=moe.vocab, embedding_params=emb,
        lm_head_params=0 if tied else emb, other_resident_params=0,
        max_context=moe.max_context,
        source=(f"mcroute.dense_twin({moe.name!r}, q={q:g}, style='llama')",),
        published_total_params=None, published_active_params=None,
    )


def min_gpus(model, hardware, context, *, candidates=None, **deployment_options) -> int | None:
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


def _dense_throughput_at(dep, contexts, batch, run, trials=None):
    """Dense throughput per trial [tokens/s] at given (context, batch) pairs (NaN if not).

    Returns (chosen kernels, roofline bound), each (context, trial). ``run`` holds the run's
    per-trial kernel parameters and MTP acceptances (the same draws as the MoE's trials).
    ``trials``: only these trials are computed (the others are NaN), e.g. the trials that use
    one draw of an uncertain q.
    """
    n_trials = len(run["accepted"])
    idx = np.arange(n_trials) if trials is None else np.asarray(trials)
    params = run["params"]
    if params is not None:
        params = {k: (np.asarray(v)[idx] if np.ndim(v) else v) for k, v in params.items()}
    acc = run["accepted"][idx]
    out = np.full((len(contexts), n_trials), np.nan)
    out_bound = np.full((len(contexts), n_trials), np.nan)
    if idx.size == 0:
        return out, out_bound
    for i, (L, B) in enumerate(zip(contexts, batch, strict=True)):
        if B >= 1 and dep.feasible(L, int(B)):
            ev = dep._evaluate(L, int(B), None, params, None, idx.size)
            out[i, idx] = B * acc / ev["step_time"]
            out_bound[i, idx] = B * acc / ev["step_time_bound"]
    return out, out_bound


def _cluster_intervals(ds, names, cluster, n_clusters, ci_prob):
    """Replace ``_mean``, ``_se`` and ``_ci`` by their values over clusters of trials.

    With fewer draws of q than trials, trials that share a draw are not independent; the mean
    is then taken over the per-draw means and its standard error from their spread (a
    cluster-robust interval), so the interval carries the uncertainty of q.
    """
    onehot = (cluster[:, None] == np.arange(n_clusters)[None, :]).astype(float)
    for name in names:
        da = ds[name]
        x = da.transpose(..., "trial").values
        valid = ~np.isnan(x)
        sums = np.where(valid, x, 0.0) @ onehot
        counts = valid.astype(float) @ onehot
        with np.errstate(invalid="ignore", divide="ignore"):
            cm = np.where(counts > 0, sums / counts, np.nan)
        mean, se, ci, _ = _summary_arrays(cm, ci_prob, np.asarray([0.5]))
        ds[f"{name}_mean"].values = mean
        ds[f"{name}_se"].values = se
        ds[f"{name}_ci"].values = ci
        ds[f"{name}_ci"].attrs["ci_kind"] = f"student-t over {n_clusters} draws of q (clustered)"


def _parse_q_arg(q):
    """Point values (list → q dim) or one uncertain QSpec."""
    if isinstance(q, (list, tuple)):
        if not q:
            raise McrouteError("q must not be an empty list")
        values = [_check_q_value(v) for v in q]
        check_unique("q", values)
        return values, None, False
    if isinstance(q, numbers.Real) and not isinstance(q, bool):
        return [_check_q_value(q)], None, True
    spec = q if isinstance(q, QSpec) else as_q(q)
    if spec.is_point:
        return [_check_q_value(spec.median())], None, True
    return None, spec, True


#: Arrays of (q, context, trial) values held by qs_analysis (throughputs, penalties and their
#: summaries' working copies), for the memory check before starting.
_QS_ARRAYS = 14


def qs_analysis(
    model,
    hardware,
    n_gpus,
    q,
    context,
    routing=None,
    *,
    n_trials=1000,
    rng=None,
    ci_prob=0.95,
    quantiles=DEFAULT_QUANTILES,
    dense_style="widen",
    dense_n_gpus=None,
    n_q_samples=256,
    method="auto",
    dense_model=None,
    **deployment_options,
):
    """MoE vs quality-matched dense twin at decode: throughput penalty with intervals.

    Parameters
    ----------
    model : str or ModelSpec
        The Mixture-of-Experts model (a dense model is an error).
    hardware : str or HardwareSpec
        GPU card; both models run on it.
    n_gpus : int
        GPUs serving the MoE (and the twin, unless ``dense_n_gpus``).
    q : float, list of float, or uncertain q
        Quality-equivalence factor. A number or a list of numbers (→ the ``q`` dim) are exact;
        an ``ndarray`` of samples, a frozen ``scipy.stats`` distribution, a
        :func:`mcroute.estimate_q` result, a ``QSpec`` or a :func:`mcroute.parse_q` string are
        uncertain: trial i then uses one of ``n_q_samples`` draws of q (drawn from the seed), so
        intervals carry both the routing Monte Carlo and the uncertainty of q.
    context : int, str or sequence
        Context length(s) [tokens]; ``"128k"`` = 131072.
    routing : Routing, optional
        Routing of the MoE's layers. Default: as :func:`decode_throughput`, uniform over its E
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
    check_deployment_options(deployment_options, exclude=("model", "hardware", "n_gpus"))
    moe = _check_moe(model)
    if dense_model is not None:
        dense_model = load_model(dense_model) if isinstance(dense_model, str) else dense_model
        if not isinstance(dense_model, ModelSpec) or dense_model.is_moe:
            raise McrouteError(
                f"dense_model must be a dense model card, got "
                f"{getattr(dense_model, 'name', type(dense_model).__name__)!r}, which is a "
                "Mixture-of-Experts model" if isinstance(dense_model, ModelSpec)
                else f"dense_model must be a model card name or ModelSpec, got "
                f"{type(dense_model).__name__}")
        if q is None:
            q = dense_model.total_params / moe.active_params
    elif q is None:
        raise McrouteError("q is required (a number, a list, a distribution or 'estimate') "
                           "unless dense_model is given")
    hw = load_hardware(hardware) if isinstance(hardware, str) else hardware
    n_gpus = check_int("n_gpus", n_gpus, minimum=1, maximum=MAX_GPUS)
    dense_n = n_gpus if dense_n_gpus is None else check_int("dense_n_gpus", dense_n_gpus,
                                                            minimum=1, maximum=MAX_GPUS)
    contexts, ctx_scalar = _token_list("context", context)
    n_trials = check_int("n_trials", n_trials, minimum=2)
    ci_prob = check_prob("ci_prob", ci_prob)
    n_q_samples = check_int("n_q_samples", n_q_samples, minimum=1, maximum=MAX_Q_SAMPLES)
    if not isinstance(dense_style, str) or dense_style not in DENSE_STYLES:
        raise McrouteError(f"dense_style must be one of {DENSE_STYLES}, got {dense_style!r}")
    q_points, q_spec, q_scalar = _parse_q_arg(q)
    nq_max = len(q_points) if q_spec is None else n_q_samples
    check_bytes(f"the per-trial results ({nq_max} values of q x {len(contexts)} contexts x "
                f"{n_trials} trials x {_QS_ARRAYS} arrays, float64)",
                nq_max * len(contexts) * n_trials * _QS_ARRAYS * 8,
                "n_trials, the number of q values or the number of contexts")
    entropy = resolve_seed(rng)
    moe_dep = Deployment(moe, hw, n_gpus, **deployment_options)
    # options that only concern routed experts do not apply to the dense twin
    dense_options = {k: v for k, v in deployment_options.items()
                     if k not in ("redundant_experts", "expert_placement", "expert_parallel")}
    # a dense model's FFNs are most of its weights: engines split them over the GPUs (SGLang's
    # data-parallel attention keeps the MLPs tensor-parallel), so the twin does not replicate them
    # unless asked
    dense_options.setdefault("replicate_dense", False)

    moe_ds = decode_throughput(moe_dep, contexts, "max", routing, n_trials, rng=entropy,
                               ci_prob=ci_prob, method=method)
    moe_thr = moe_ds["throughput"].values.reshape(len(contexts), n_trials)
    moe_thr_bound = moe_ds["throughput_bound"].values.reshape(len(contexts), n_trials)
    moe_b = moe_ds["batch_size"].values.reshape(len(contexts)).astype(np.int64)
    moe_ok = moe_ds["feasible"].values.reshape(len(contexts)).astype(bool)
    moe_reason = moe_ds["reason"].values.reshape(len(contexts)).astype(str)

    if q_spec is None:
        q_values = np.asarray(q_points, dtype=float)
        draw_of_trial = None
    elif dense_model is not None:
        raise McrouteError("with dense_model, q must be a number (it is only reported)")
    else:
        q_values = np.asarray(q_spec.sample(n_q_samples, generator(entropy, (7,))), dtype=float)
        bad = ~(np.isfinite(q_values) & (q_values > 0) & (q_values <= MAX_Q))
        if bad.any():
            raise McrouteError(
                f"q: {int(bad.sum())} of {n_q_samples} draws of {q_spec!r} fall outside "
                f"(0, {MAX_Q:g}] (mcroute._base.validate.MAX_Q), e.g. {q_values[bad][0]:g}; give a "
                "narrower distribution of q")
        draw_of_trial = np.arange(n_trials) % n_q_samples

    nq, nc = len(q_values), len(contexts)
    d_thr = np.full((nq, nc, n_trials), np.nan)       # dense at its own admissible batch
    d_thr_bound = np.full((nq, nc, n_trials), np.nan)
    d_b = np.zeros((nq, nc), dtype=np.int64)
    d_ok = np.zeros((nq, nc), dtype=bool)
    d_reason = np.full((nq, nc), "", dtype=object)
    d_min = np.zeros(nq, dtype=object)
    twins, deps, runs = {}, {}, {}
    for iq, qv in enumerate(q_values):
        twin = dense_model if dense_model is not None else dense_twin(moe, qv, dense_style)
        twins[iq] = twin
        dep = deps[iq] = Deployment(twin, hw, dense_n, **dense_options)
        runs[iq] = _run_context(dep, None, n_trials, entropy)
        for ic, L in enumerate(contexts):
            why = dep.infeasibility(L)
            d_reason[iq, ic] = why
            if why:
                continue
            d_ok[iq, ic] = True
            d_b[iq, ic] = dep.max_batch_size(L)
        mine = None if draw_of_trial is None else np.flatnonzero(draw_of_trial == iq)
        d_thr[iq], d_thr_bound[iq] = _dense_throughput_at(dep, contexts, d_b[iq], runs[iq], mine)
        if q_spec is None:
            d_min[iq] = min_gpus(twin, hw, max(contexts), **dense_options)

    # The reuse penalty compares both models at one batch both can run: the smaller admissible
    # batch (for an uncertain q, the smallest over the draws of q).
    both = d_ok & moe_ok[None]
    b_same = np.where(both, np.minimum(moe_b[None], d_b), 0)
    if q_spec is not None:
        common = np.where(both.all(axis=0), b_same.min(axis=0), 0)
        b_same = np.broadcast_to(common, (nq, nc)).copy()
    d_thr_same = np.stack([_dense_throughput_at(
        deps[iq], contexts, b_same[iq], runs[iq],
        None if draw_of_trial is None else np.flatnonzero(draw_of_trial == iq))[0]
        for iq in range(nq)])
    moe_runs = {}

    def moe_at(ic, b):
        """MoE throughput per trial at batch b (the admissible-batch run when b = B_max)."""
        if b == moe_b[ic]:
            return moe_thr[ic]
        if b < 1:
            return np.full(n_trials, np.nan)
        if (ic, b) not in moe_runs:
            run = decode_throughput(moe_dep, contexts[ic], int(b), routing, n_trials,
                                    rng=entropy, ci_prob=ci_prob, method=method)
            moe_runs[ic, b] = run["throughput"].values.reshape(n_trials)
        return moe_runs[ic, b]

    trials = np.arange(n_trials)
    if q_spec is None:
        # (q, context, trial)
        moe_t = np.broadcast_to(moe_thr, (nq, nc, n_trials))
        moe_tb = np.broadcast_to(moe_thr_bound, (nq, nc, n_trials))
        moe_same = np.stack([np.stack([moe_at(ic, b_same[iq, ic]) for ic in range(nc)])
                             for iq in range(nq)])
        dense_t = d_thr
        dense_tb = d_thr_bound
        dense_same = d_thr_same
        dims = ("q", "context", "trial")
        cap = np.where(both, d_b / np.maximum(moe_b[None], 1), np.nan)
        cap_dims = ("q", "context")
        same_b = (("q", "context"), b_same)
    else:
        # trial i uses draw draw_of_trial[i] of q: (context, trial)
        dense_t = d_thr[draw_of_trial, :, trials].T
        dense_tb = d_thr_bound[draw_of_trial, :, trials].T
        dense_same = d_thr_same[draw_of_trial, :, trials].T
        moe_t = moe_thr
        moe_tb = moe_thr_bound
        moe_same = np.stack([moe_at(ic, b_same[0, ic]) for ic in range(nc)])
        dims = ("context", "trial")
        capq = np.where(both, d_b / np.maximum(moe_b[None], 1), np.nan)
        cap = capq[draw_of_trial].T
        cap_dims = ("context", "trial")
        same_b = (("context",), b_same[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        penalty = dense_t / moe_t
        penalty_bound = dense_tb / moe_tb
        reuse = dense_same / moe_same
        cap_factor = penalty / reuse

    s = moe.sparsity
    coords = {
        "context": ("context", np.asarray(contexts, dtype=np.int64),
                    {"units": "tokens", "long_name": "context length L"}),
        "trial": ("trial", np.arange(n_trials), {"units": "1", "long_name": "Monte Carlo step"}),
    }
    if q_spec is None:
        coords["q"] = ("q", q_values, {"units": "1", "long_name": "quality-equivalence factor q"})
    data = {
        "moe_throughput": (dims, np.array(moe_t), {"units": "tokens/s",
                           "long_name": "MoE decode throughput at its admissible batch"}),
        "dense_throughput": (dims, np.array(dense_t), {"units": "tokens/s",
                             "long_name": "dense twin decode throughput at its admissible batch"}),
        "penalty": (dims, penalty, {"units": "1",
                    "long_name": "penalty: dense / MoE throughput, each at its admissible batch"}),
        "moe_throughput_bound": (dims, np.array(moe_tb), {
            "units": "tokens/s", "long_name": "MoE roofline throughput (bound) at its admissible "
                                              "batch, same sampled counts"}),
        "dense_throughput_bound": (dims, np.array(dense_tb), {
            "units": "tokens/s", "long_name": "dense twin roofline throughput (bound) at its "
                                              "admissible batch"}),
        "penalty_bound": (dims, penalty_bound, {
            "units": "1", "long_name": "roofline penalty: dense / MoE bound throughput at the "
                                       "same batches"}),
        "reuse_penalty": (dims, reuse, {"units": "1",
                          "long_name": "reuse penalty: dense / MoE throughput at the same batch "
                                       "(the smaller admissible one, reuse_batch_size)"}),
        "reuse_batch_size": (*same_b, {"units": "sequences",
                             "long_name": "batch at which the reuse penalty compares the models"}),
        "capacity_factor": (dims, cap_factor, {"units": "1",
                            "long_name": "what the admissible batches add: penalty / "
                                         "reuse_penalty"}),
        "capacity_penalty": (cap_dims, cap, {"units": "1",
                             "long_name": "capacity penalty: admissible batch, dense / MoE"}),
        "s": ((), s, {"units": "1", "long_name": "sparsity s = N_active / N_total"}),
        "moe_batch_size": ("context", moe_b, {"units": "sequences",
                           "long_name": "MoE admissible batch"}),
        "moe_feasible": ("context", moe_ok, {"units": "1", "long_name": "MoE can run"}),
        "moe_reason": ("context", moe_reason, {"units": "1",
                       "long_name": "why the MoE cannot run (empty if it can)"}),
    }
    qd = ("q", "context") if q_spec is None else ("q_draw", "context")
    if q_spec is None:
        data["dense_batch_size"] = (qd, d_b, {"units": "sequences",
                                    "long_name": "dense twin admissible batch"})
        data["dense_feasible"] = (qd, d_ok, {"units": "1", "long_name": "dense twin can run"})
        data["dense_reason"] = (qd, d_reason.astype(str), {"units": "1",
                                "long_name": "why the dense twin cannot run (empty if it can)"})
        data["qs"] = ("q", q_values * s, {"units": "1", "long_name": "q·s"})
        data["first_order_disadvantaged"] = ("q", q_values * s < 1, {
            "units": "1", "long_name": "first-order criterion q·s < 1"})
        data["dense_min_gpus"] = ("q", np.array([-1 if v is None else v for v in d_min]),
                                  {"units": "GPUs", "long_name": "smallest power-of-two GPU count "
                                   "fitting the dense twin at the longest context (-1: none)"})
    else:
        coords["q_draw"] = ("q_draw", np.arange(nq), {"units": "1", "long_name": "draw of q"})
        data["q_samples"] = ("q_draw", q_values, {"units": "1", "long_name": "draws of q used"})
        data["dense_batch_size"] = (qd, d_b, {"units": "sequences",
                                    "long_name": "dense twin admissible batch per draw of q"})
        data["dense_feasible"] = (qd, d_ok, {"units": "1",
                                  "long_name": "dense twin can run, per draw of q"})
        data["dense_reason"] = (qd, d_reason.astype(str), {"units": "1",
                                "long_name": "why the dense twin cannot run (empty if it can)"})
        data["q"] = ("trial", q_values[draw_of_trial], {"units": "1",
                     "long_name": "quality-equivalence factor q used by each trial"})
        data["qs"] = ("trial", q_values[draw_of_trial] * s, {"units": "1", "long_name": "q·s"})
    moe_min = min_gpus(moe, hw, max(contexts), **deployment_options)
    data["moe_min_gpus"] = ((), -1 if moe_min is None else moe_min, {
        "units": "GPUs", "long_name": "smallest power-of-two GPU count fitting the MoE at the "
        "longest context (-1: none)"})
    ds = xr.Dataset(data, coords=coords)
    names = ["moe_throughput", "dense_throughput", "penalty", "reuse_penalty", "capacity_factor",
             "moe_throughput_bound", "dense_throughput_bound", "penalty_bound"]
    if q_spec is not None:
        names += ["q", "qs", "capacity_penalty"]
    ds = summarize(ds, names, ci_prob=ci_prob, quantiles=quantiles)
    if q_spec is not None and nq < n_trials:
        _cluster_intervals(ds, names, draw_of_trial, nq, ci_prob)
    if q_spec is not None:
        ds["first_order_disadvantaged"] = ((), bool(ds["qs_mean"] < 1), {
            "units": "1", "long_name": "first-order criterion q·s < 1 (at the mean q·s)"})
    pm = ds["penalty_mean"]
    ds["agrees_with_first_order"] = xr.where(
        np.isnan(pm), False, (pm > 1) == ds["first_order_disadvantaged"]).assign_attrs(
        units="1", long_name="simulated penalty > 1 exactly when q·s < 1")
    # crossover context along the context grid, per q
    def _cross(p):
        return np.array(crossover_context(contexts, p))

    lo = ds["penalty_ci"].sel(ci_bound="upper")  # the upper penalty curve crosses 1 earliest
    hi = ds["penalty_ci"].sel(ci_bound="lower")
    cross = xr.apply_ufunc(_cross, pm, input_core_dims=[["context"]], vectorize=True)
    cross_lo = xr.apply_ufunc(_cross, lo, input_core_dims=[["context"]], vectorize=True)
    cross_hi = xr.apply_ufunc(_cross, hi, input_core_dims=[["context"]], vectorize=True)
    ds["crossover_context"] = cross.assign_attrs(
        units="tokens", long_name="context where the mean penalty crosses 1 (log interpolation)")
    ds["crossover_context_ci"] = xr.concat([cross_lo, cross_hi], dim="ci_bound").transpose(
        ..., "ci_bound").assign_coords(ci_bound=["lower", "upper"]).assign_attrs(
        units="tokens", long_name="crossover of the upper and lower CI bounds of the penalty")
    notes = xr.apply_ufunc(lambda p: np.array(_crossover_note(p), dtype=object), pm,
                           input_core_dims=[["context"]], vectorize=True, output_dtypes=[object])
    ds["crossover_note"] = notes.astype(str).assign_attrs(units="1",
                                                          long_name="where the penalty crosses 1")
    twin0 = twins[0]
    ds.attrs = provenance(
        seed=entropy, n_trials=n_trials, ci_prob=ci_prob, model=moe.describe(),
        hardware=hw.describe(), deployment=moe_dep.describe(),
        dense_deployment={"n_gpus": dense_n, **dense_options},
        dense_style=dense_style if dense_model is None else "given dense_model",
        dense_twin_example=twin0.describe(),
        routing=moe_ds.attrs.get("routing", ""),
        q=q_spec.describe() if q_spec is not None else {"kind": "points",
                                                        "values": q_values.tolist()},
        n_q_samples=n_q_samples if q_spec is not None else 0,
        kernels=moe_dep.kernels, kernel_card=moe_dep.kernel_card_name or "none (roofline)",
        uncertainty_sources=(_uncertainty_sources(moe_dep, "routing")
                             + (["q"] if q_spec is not None else [])),
    )
    for cname, (_, _, cattrs) in coords.items():  # xr.where / apply_ufunc drop coord attrs
        ds[cname].attrs.update(cattrs)
    ds["ci_bound"].attrs.update(units="1", long_name="bound of a confidence interval of a mean")
    if ctx_scalar:
        ds = ds.squeeze("context", drop=False)
    if q_spec is None and q_scalar:
        ds = ds.squeeze("q", drop=False)
    return ds


#: The paper's four models on the default deployment of ``mcroute qs`` (docs/qs.md): one 8-GPU
#: H200 node (141 GiB HBM, 4.8 TB/s each), bf16 weights and KV cache except DeepSeek-V3, whose
#: released weights are fp8 and whose MLA attention runs data-parallel, as engines serve it:
#: under tensor-parallel attention every rank holds the whole latent cache (the calibrated
#: model's engine memory layout), which cuts the admissible batch 8x. Its dense twin (same
#: attention) runs the same way. Switch-C (1.57T parameters) does not fit on the node, which is
#: the feasibility question the paper raises.
PAPER_CASES = (
    ("deepseek-v3", {"weight_dtype": "fp8", "attention_parallel": "data"}),
    ("qwen3-235b-a22b", {}),
    ("grok-1", {}),
    ("switch-c-2048", {}),
)
PAPER_HARDWARE = "h200"
PAPER_GPUS = 8
PAPER_CONTEXTS = (4096, 8192, 16384, 32768, 65536, 131072)
#: Log-sd given to a scaling-law point estimate of q when no benchmark fit exists.
SCALING_LAW_LOG_SD = 0.5


def default_q(model):
    """The q used when none is given: the benchmark-fit estimate, else the scaling law.

    1. :func:`mcroute.estimate_q` from the shared benchmark tables (a bootstrap distribution),
       when the tables score the model;
    2. otherwise the scaling-law point estimate in the project's ``data/q_estimates.csv``
       (Clark et al. 2022 effective parameters), widened to a log-normal with log-sd
       :data:`SCALING_LAW_LOG_SD` to say that it is a model, not a measurement.

    Returns
    -------
    (QSpec, str)
        The q and a one-line description of where it came from.
    """
    import csv

    from mcroute._base.resources import project_data_dir
    from mcroute._quality.quality import parse_q

    name = model if isinstance(model, str) else model.name
    try:
        q = as_q(parse_q(f"estimate:{name}"))
        if not q.is_point:
            lo, hi = q.interval(0.95)
            return q, f"benchmark fit (median {q.median():.3g}, 95% {lo:.3g}-{hi:.3g})"
    except McrouteError:
        pass
    path = project_data_dir() / "q_estimates.csv"
    with path.open() as fh:
        rows = [r for r in csv.DictReader(line for line in fh if not line.startswith("#"))]
    for r in rows:
        if r["model"] == name and r["method"] == "scaling_law":
            med = float(r["q_median"])
            q = as_q(f"lognormal:{med},{SCALING_LAW_LOG_SD}")
            return q, f"scaling law (Clark et al. 2022) {med:.3g}, log-sd {SCALING_LAW_LOG_SD}"
    raise McrouteError(f"no default q for {name!r}: give --q (a number, lognormal:MEDIAN,SIGMA "
                       "or estimate)")

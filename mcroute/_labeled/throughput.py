"""Labeled decode throughput: :func:`decode_throughput` returns an ``xarray.Dataset``.

May import: numpy, xarray, ``_kernels`` (``count_stats``) and the array layer (``_cost``,
``_calibrated``, ``_sampling``, ``_routing``, ``_results``, ``_rng``, ``_validate``).
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from mcroute import _kernels as K
from mcroute._base.progress import compile_notice, progress_callback
from mcroute._base.rng import CHUNK_TRIALS, generator, resolve_seed
from mcroute._base.units import parse_size
from mcroute._base.validate import (
    MAX_BATCH_SIZE,
    McrouteError,
    check_bytes,
    check_int,
    check_work,
)
from mcroute._cost.calibrated import MTP_STREAM, accepted_tokens, draw_acceptance
from mcroute._cost.deployment import OPERATORS, Deployment
from mcroute._labeled.options import THROUGHPUT_OPTIONS, by_name, check_sizes
from mcroute._labeled.results import (
    DEFAULT_QUANTILES,
    build_dataset,
    check_quantiles,
    provenance,
    squeeze_variables,
    summary_coords,
    summary_variables_many,
)
from mcroute._routing import as_routing

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from mcroute._routing.distributions import Routing
from mcroute._routing.sampling import (
    check_routing,
    check_sampling_request,
    draw_counts,
    expected_active_experts,
    sampling_draws,
)

__all__ = ["decode_throughput", "parse_tokens", "parse_tpot", "THROUGHPUT_VARIABLES"]

#: Cap on the count array held at once (elements); trials are processed in blocks below it.
_BLOCK_ELEMENTS = 4_000_000
#: The same cap under calibrated kernels, whose per-expert pricing holds several arrays of the
#: size of the counts at once.
_CAL_BLOCK_ELEMENTS = 1_000_000
#: Trials per evaluation of the bisection of ``tpot=`` (the mean step time of a candidate batch).
TPOT_SEARCH_TRIALS = 32
#: Per-operator times reported by ``operator_time_mean`` (the calibrated extras last).
REPORTED_OPERATORS = (*OPERATORS, "all_reduce", "overhead")

#: Per-trial variables of ``decode_throughput`` (each summarised): units and meaning.
THROUGHPUT_VARIABLES = {
    "step_time": ("s", "decode step time under the chosen kernels (1 + mtp_depth tokens for "
                       "each sequence of the batch)"),
    "throughput": ("tokens/s", "decode throughput of the deployment under the chosen kernels, "
                               "batch_size x accepted_tokens / step_time"),
    "throughput_per_gpu": ("tokens/s/GPU", "decode throughput per GPU (chosen kernels)"),
    "weight_bytes_per_step": ("B", "weight bytes read from HBM in one step, all GPUs"),
    "step_time_bound": ("s", "roofline step time from the same sampled counts (the bound)"),
    "throughput_bound": ("tokens/s", "roofline throughput from the same sampled counts (the "
                                     "bound: never below throughput)"),
    "accepted_tokens": ("tokens", "accepted tokens per sequence per step, 1 + sum_i a^i "
                                  "(1 without MTP)"),
}

#: The one parser of token counts like "128k" (mcroute._base.units), under the name this module
#: has always exported.
parse_tokens = parse_size


def _resolve_routing(dep: Deployment, routing):
    if dep.n_moe_layers == 0:
        return None
    if routing is None:  # the card's routing: group-limited (DeepSeek-V2/V3), else uniform
        return dep.model.default_routing()
    if isinstance(routing, str):  # the CLI's routing strings, e.g. "zipf:1.2"
        routing = as_routing(routing, dep.n_experts, dep.top_k)
    check_routing(routing)
    if routing.n_experts != dep.n_experts or routing.top_k != dep.top_k:
        raise McrouteError(
            f"routing has n_experts={routing.n_experts}, top_k={routing.top_k} but model "
            f"{dep.model.name!r} has n_experts={dep.n_experts}, top_k={dep.top_k}"
        )
    return routing


def _spec_dict(spec):
    for method in ("describe", "to_dict"):
        f = getattr(spec, method, None)
        if callable(f):
            return f()
    if dataclasses.is_dataclass(spec):
        return dataclasses.asdict(spec)
    return {"name": getattr(spec, "name", str(spec))}


#: Arrays of n_trials values per (context, batch size) point held by decode_throughput: six
#: per-trial terms and the seven summarised variables built from them.
_PER_TRIAL_ARRAYS = 13

#: decode_throughput's options, declared once (range, type, doc): the checks below use them.
_OPT = by_name(THROUGHPUT_OPTIONS)


def parse_tpot(value) -> float:
    """Parse a time-per-output-token target [s]: a number of seconds or ``"50ms"`` / ``"0.05s"``.

    Examples
    --------
    >>> parse_tpot("50ms"), parse_tpot(0.02)
    (0.05, 0.02)
    """
    v = value
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s)?\s*", value)
        if not m:
            raise McrouteError(f"tpot must be a time like 0.05, '50ms' or '0.05s', got "
                               f"{value[:40]!r}")
        v = float(m.group(1)) * (1e-3 if m.group(2) == "ms" else 1.0)
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise McrouteError(f"tpot must be a time in seconds (> 0), got {value!r}")
    v = float(v)
    if not (0 < v < 3600 and np.isfinite(v)):
        raise McrouteError(f"tpot must be in (0, 3600) seconds, got {value!r}")
    return v


def _run_context(dep, routing, n_trials, entropy):
    """Per-run draws shared by every point: kernel parameters, MTP acceptance, expert layout."""
    acc = draw_acceptance(dep._acceptance, n_trials, generator(entropy, MTP_STREAM))
    return {"params": dep.kernel_params(n_trials, entropy),
            "accepted": np.asarray(accepted_tokens(acc, dep.mtp_depth), dtype=float)
            * np.ones(n_trials),
            "layout": dep.expert_layout(routing)}


def _slice_params(params, t0, nt):
    if params is None:
        return None
    return {k: (v[t0:t0 + nt] if np.ndim(v) else v) for k, v in params.items()}


def uncertainty_sources(dep, routing) -> list:
    out = []
    if routing is not None:
        out.append("routing")
    if dep._calibrated and dep.calibration_uncertainty:
        out.append("calibration")
    if dep.mtp_depth and isinstance(dep._acceptance, tuple):
        out.append("mtp_acceptance")
    return out


def _check_request(dep, routing, contexts, batches, b_max_mode, n_trials, method):
    """Refuse, before any draw, a request whose results or sampling work exceed the limits."""
    npts = len(contexts) * len(batches)
    check_bytes(f"the per-trial results ({npts} points x {n_trials} trials x "
                f"{_PER_TRIAL_ARRAYS} arrays, float64)", npts * n_trials * _PER_TRIAL_ARRAYS * 8,
                "n_trials, or the number of contexts and batch sizes")
    if routing is None:
        return
    check_sampling_request(routing, [1], n_trials, dep.n_moe_layers, method,
                           params="n_trials or batch_size")
    draws = 0
    for L in contexts:
        bmax = dep.max_batch_size(L)
        for b in batches:
            B = bmax if b_max_mode else b
            if 1 <= B <= bmax:
                draws += sampling_draws(routing, B * dep.tokens_per_seq, n_trials,
                                        dep.n_moe_layers, method)
    check_work("the routing Monte Carlo over all (context, batch size) points", draws,
               "n_trials, batch_size or the number of contexts")


_TERMS = ("step_time", "step_time_bound", "weight_bytes_per_step", "memory_time", "compute_time",
          "all_to_all_time")


def _point(dep, routing, L, B, n_trials, entropy, method, tick, run):
    """Per-trial terms at one (L, B) and the mean time of each operator.

    Returns a dict of (trial,) arrays (step times under the chosen kernels and the bound,
    weight bytes, memory/compute/all-to-all times) and the operators' mean times.
    """
    params = run["params"]
    ops = np.zeros(len(REPORTED_OPERATORS))
    if routing is None:
        ev = dep._evaluate(L, B, None, _slice_params(params, 0, n_trials), None, n_trials)
        wbytes = dep.weight_bytes_per_step(B)
        tick(n_trials)
        out = {"step_time": ev["step_time"], "step_time_bound": ev["step_time_bound"],
               "weight_bytes_per_step": np.full(n_trials, wbytes),
               "memory_time": ev["memory_time"], "compute_time": ev["compute_time"],
               "all_to_all_time": ev["all_to_all"]}
        for i, op in enumerate(REPORTED_OPERATORS):
            if ("op", op) in ev:
                ops[i] = np.mean(ev[("op", op)])
        return {k: np.array(v, dtype=float) for k, v in out.items()}, ops
    m, e = dep.n_moe_layers, dep.n_experts
    cap = _CAL_BLOCK_ELEMENTS if dep._calibrated else _BLOCK_ELEMENTS
    per_block = max(CHUNK_TRIALS, (cap // (m * e)) // CHUNK_TRIALS * CHUNK_TRIALS)
    out = {name: np.empty(n_trials) for name in _TERMS}
    tokens = B * dep.tokens_per_seq
    for t0 in range(0, n_trials, per_block):
        nt = min(per_block, n_trials - t0)
        counts = draw_counts(routing, tokens, nt, m, entropy, (L, B), method, first_trial=t0)
        ev = dep._evaluate(L, B, counts, _slice_params(params, t0, nt), run["layout"], nt)
        sl = slice(t0, t0 + nt)
        out["step_time"][sl] = ev["step_time"]
        out["step_time_bound"][sl] = ev["step_time_bound"]
        out["weight_bytes_per_step"][sl] = dep.weight_bytes_per_step(B, ev["active"])
        out["memory_time"][sl] = ev["memory_time"]
        out["compute_time"][sl] = ev["compute_time"]
        out["all_to_all_time"][sl] = ev["all_to_all"]
        for i, op in enumerate(REPORTED_OPERATORS):
            if ("op", op) in ev:
                ops[i] += float(np.sum(ev[("op", op)]))
        tick(nt)
    return out, ops / n_trials


def _tpot_batch(dep, routing, L, b_max, tpot, entropy, method, run):
    """Largest B in [1, b_max] whose mean time per output token meets ``tpot`` (0 if none).

    Time per output token of a trial = step time / accepted tokens per sequence; its mean over
    the first :data:`TPOT_SEARCH_TRIALS` trials of the point's own streams is taken as a
    non-decreasing function of B, and the largest B meeting the target is found by bisection
    over the integers (about log2(b_max) evaluations).
    """
    n = min(TPOT_SEARCH_TRIALS, len(run["accepted"]))
    acc = run["accepted"][:n]
    sub = {"params": _slice_params(run["params"], 0, n), "layout": run["layout"]}

    def ok(b):
        terms, _ = _point(dep, routing, L, b, n, entropy, method, lambda _: None, sub)
        return float(np.mean(terms["step_time"] / acc)) <= tpot

    if b_max < 1 or not ok(1):
        return 0
    if ok(b_max):
        return b_max
    lo, hi = 1, b_max
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


def decode_throughput(
    deployment: Deployment,
    context: int | str | Sequence[int | str],
    batch_size: str | int | Sequence[int] = "max",
    routing: Routing | str | None = None,
    n_trials: int = 1000,
    *,
    rng: int | np.random.SeedSequence | np.random.Generator | None = None,
    ci_prob: float = 0.95,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    method: str = "auto",
    progress: bool | Callable[[float], object] | None = None,
    batch_per_gpu: int | Sequence[int] | None = None,
    tpot: float | str | None = None,
) -> xr.Dataset:
    """Decode throughput of a deployment, by Monte Carlo over routing, with intervals.

    For each context L (and batch size B) the step time is the sum over decode layers and
    operators of the time of each operator on the busiest GPU (see :class:`mcroute.Deployment`
    and docs/assumptions.md). Under ``kernels="calibrated"`` (the default) every operator is
    priced with kernel efficiencies fitted on measured kernels, each routed expert from its own
    sampled load, with communication charged and engine memory layout
    (``mcroute._cost.calibrated``); the roofline ``max(FLOPs / F, bytes / BW)`` of the same sampled
    counts is reported beside it as the bound. Under the roofline the routed experts of each MoE
    layer take the time of the slowest expert-parallel group,
    ``max(tokens · 2 · P_expert / F, distinct experts · P_expert · b / BW)``.

    Parameters
    ----------
    deployment : Deployment
        Model, hardware, GPU count and every modelling assumption.
    context : int, str or sequence
        Context length(s) L [tokens]; strings like ``"128k"`` (k = 1024) are accepted. A
        sequence becomes the ``context`` dim.
    batch_size : "max", int or sequence of int
        Sequences per model replica. ``"max"`` (default): the admissible batch at each context
        (as many sequences as the KV cache allows), reported as the variable ``batch_size``
        over ``context``. Integers become the ``batch_size`` dim; a batch above the admissible
        one is reported infeasible.
    routing : Routing or str, optional
        Routing distribution of the MoE layers, or a routing string as on the command line
        (``"zipf:1.2"``, ``"uniform+group:8,4"``; E and k are the model's). Default: the
        model card's routing,
        ``GroupLimited(Uniform(E, k), n_groups, topk_groups)`` for a card with group-limited
        routing (DeepSeek-V2/V3, ``ModelSpec.n_groups``), else ``Uniform(E, k)``; the one used
        is in ``attrs["routing"]``. Its E and k must match the model. Ignored for a dense model.
    n_trials : int
        Monte Carlo steps per point, >= 2 (intervals need two). Requests whose per-trial
        results or random draws exceed the limits of mcroute._base.validate (``MAX_RESULT_BYTES``,
        ``MAX_DRAWS``) are refused before anything is computed.
    rng : None, int, SeedSequence or Generator
        Seed; stored as ``attrs["seed"]``. Each (context, batch size) draws its routing from the
        stream keyed by their values, so any subset of the grid reproduces the same numbers;
        the kernel parameters and MTP acceptances of trial i come from streams keyed by the seed
        only (the same at every point).
    ci_prob : float
        Level of the confidence intervals of the means, in (0, 1).
    quantiles : sequence of float
        Levels of the single-step quantile bands.
    method : {"auto", "assignment", "counts"}
        Sampling method, see :func:`mcroute.sample_counts`.
    progress : callable, optional
        Called as ``progress(fraction_done)`` after each block of trials (the CLI uses it to
        show progress on a terminal).
    batch_per_gpu : int or sequence of int, optional
        Batch per GPU instead of per replica: ``batch_size = batch_per_gpu · n_gpus`` (the
        ``batch_size`` dim holds the per-replica values). Excludes ``batch_size`` and ``tpot``.
    tpot : float or str, optional
        Time-per-output-token target [s] (``0.05``, ``"50ms"``): at each context the largest
        batch (up to the admissible one) whose mean step time per accepted token meets it,
        found by bisection on :data:`TPOT_SEARCH_TRIALS` trials (the step time is taken as
        non-decreasing in B); reported like ``"max"``. A context where even B = 1 misses the
        target is infeasible. Excludes ``batch_size`` and ``batch_per_gpu``.

    Returns
    -------
    xarray.Dataset
        Dims ``context``, ``trial`` (``batch_size`` for integer batch sizes), ``ci_bound``,
        ``quantile``, ``operator``. Per-trial ``step_time`` [s], ``throughput`` [tokens/s],
        ``throughput_per_gpu`` [tokens/s/GPU], ``weight_bytes_per_step`` [B], the roofline
        ``step_time_bound`` and ``throughput_bound`` from the same sampled counts, and
        ``accepted_tokens`` [tokens per sequence per step], each with ``_mean``, ``_se``,
        ``_ci`` (interval of the mean) and ``_q`` (spread of single steps);
        ``weight_bytes_per_step_exact`` [B] (its exact expectation for independent-token
        routing); ``batch_size``, ``max_batch_size`` [sequences]; ``kv_bytes_per_step`` and
        ``kv_bytes_per_sequence`` [B]; ``memory_time_mean``, ``compute_time_mean`` (roofline
        terms) and ``all_to_all_time_mean`` [s]; ``operator_time_mean`` [s] per operator;
        ``feasible``, ``reason`` (why not, else ""), ``exceeds_max_context`` and ``bound``
        ("memory" or "compute": the larger of the summed roofline byte and FLOP terms of the
        mean step; "" if infeasible). Infeasible points have NaN trials. Attrs: seed, trials,
        ``kernels``, ``kernel_card``, ``uncertainty_sources`` (which of routing, calibration,
        mtp_acceptance the intervals carry), and the deployment (with
        ``weight_bytes_per_gpu`` and ``usable_bytes_per_gpu``), model, hardware and routing
        specs.

    Examples
    --------
    >>> import mcroute as mr
    >>> dep = mr.Deployment("deepseek-v3", "h200", 8, weight_dtype="fp8")
    >>> ds = mr.decode_throughput(dep, ["4k", "128k"], n_trials=64, rng=0)
    >>> ds["feasible"].values.tolist(), ds["bound"].values.tolist()
    ([True, True], ['memory', 'memory'])
    >>> bool(ds["batch_size"].sel(context=4096) > ds["batch_size"].sel(context=131072))
    True
    >>> bool((ds["throughput"] <= ds["throughput_bound"]).all())
    True
    """
    req = _request(deployment, context, batch_size, routing, n_trials, rng, ci_prob, quantiles,
                   method, batch_per_gpu, tpot)
    if progress is not None and progress is not False and not callable(progress):
        raise McrouteError(f"progress must be a callable, True, False or None, got {progress!r}")
    _check_request(req.dep, req.routing, req.contexts, req.batches, req.b_max_mode,
                   req.n_trials, method)
    compile_notice(K)
    callback, owned = progress_callback(progress, f"decode_throughput {req.dep.model.name}")
    try:
        run = _run_context(req.dep, req.routing, req.n_trials, req.entropy)
        res = _compute(req, run, _ticker(callback, len(req.contexts) * len(req.batches)
                                         * req.n_trials))
    finally:
        if owned is not None:
            owned.close()
    return _dataset(req, run, res)


@dataclasses.dataclass
class _Request:
    """A validated :func:`decode_throughput` request."""

    dep: Deployment
    contexts: list
    ctx_scalar: bool
    batches: list
    b_scalar: bool
    b_max_mode: bool
    mode: str
    tpot_s: float | None
    n_trials: int
    ci_prob: float
    quantiles: np.ndarray
    routing: object
    entropy: int
    method: str


def _batches(dep, batch_size, batch_per_gpu, tpot_s):
    """``(batches, given_as_one, "max" mode, mode name)`` of the batch arguments."""
    if batch_per_gpu is not None:
        per_gpu, b_scalar = check_sizes(_OPT["batch_per_gpu"], batch_per_gpu)
        batches = [b * dep.n_gpus for b in per_gpu]
        for b in batches:
            check_int("batch_per_gpu x n_gpus", b, minimum=1, maximum=MAX_BATCH_SIZE)
        return batches, b_scalar, False, "per_gpu"
    if isinstance(batch_size, str) and batch_size.strip().lower() == "max":
        return [None], True, True, "max" if tpot_s is None else "tpot"
    if isinstance(batch_size, str) and not any(c.isdigit() for c in batch_size):
        raise McrouteError(f"batch_size must be 'max', an integer or a list of integers, "
                           f"got {batch_size!r}")
    batches, b_scalar = check_sizes(_OPT["batch_size"], batch_size)
    return batches, b_scalar, False, "given"


def _request(deployment, context, batch_size, routing, n_trials, rng, ci_prob, quantiles,
             method, batch_per_gpu, tpot) -> _Request:
    """Validate the arguments of :func:`decode_throughput` (the public edge)."""
    if not isinstance(deployment, Deployment):
        raise McrouteError(
            f"deployment must be a mcroute.Deployment, got {type(deployment).__name__}")
    dep = deployment
    contexts, ctx_scalar = check_sizes(_OPT["context"], context)  # the one declaration
    given_batch = not (isinstance(batch_size, str) and batch_size.strip().lower() == "max")
    if sum([given_batch, batch_per_gpu is not None, tpot is not None]) > 1:
        raise McrouteError("give one of batch_size (other than 'max'), batch_per_gpu and tpot")
    tpot_s = None if tpot is None else parse_tpot(tpot)
    batches, b_scalar, b_max_mode, mode = _batches(dep, batch_size, batch_per_gpu, tpot_s)
    return _Request(
        dep=dep, contexts=contexts, ctx_scalar=ctx_scalar, batches=batches, b_scalar=b_scalar,
        b_max_mode=b_max_mode, mode=mode, tpot_s=tpot_s,
        n_trials=_OPT["n_trials"].check(n_trials),
        ci_prob=_OPT["ci_prob"].check(ci_prob), quantiles=check_quantiles(quantiles),
        routing=_resolve_routing(dep, routing), method=_OPT["method"].check(method),
        entropy=resolve_seed(rng))


def _ticker(progress, total: int):
    """``tick(n)``: count ``n`` more trials done and report the fraction to ``progress``."""
    done = [0]

    def tick(n):
        done[0] += n
        if progress is not None:
            progress(done[0] / total)

    return tick


def _exact_weight_bytes(dep, routing, B):
    """Exact expected weight bytes per step for independent-token routing (NaN with replicas)."""
    if routing is None:
        return dep.weight_bytes_per_step(B)
    if dep.redundant_experts:
        return np.nan  # replicas: no closed form for the touched slots
    act = np.atleast_1d(expected_active_experts(routing, B * dep.tokens_per_seq,
                                                dep.n_moe_layers))
    return dep.weight_bytes_per_step(B, act)


def _compute(req: _Request, run, tick) -> dict:
    """Per-trial terms and per-point values of every (context, batch size) of the request."""
    dep, n_trials = req.dep, req.n_trials
    nc, nb = len(req.contexts), len(req.batches)
    res = {name: np.full((nc, nb, n_trials), np.nan) for name in _TERMS}
    res["op_mean"] = np.full((nc, nb, len(REPORTED_OPERATORS)), np.nan)
    res["batch"] = np.zeros((nc, nb), dtype=np.int64)
    res["feasible"] = np.zeros((nc, nb), dtype=bool)
    res["reason"] = np.full((nc, nb), "", dtype=object)
    res["bound"] = np.full((nc, nb), "", dtype=object)
    res["w_exact"] = np.full((nc, nb), np.nan)
    res["kv_step"] = np.full((nc, nb), np.nan)
    L_all = np.asarray(req.contexts, dtype=np.int64)
    res["kv_seq"] = np.asarray(dep.kv_bytes_per_sequence(L_all), dtype=float)
    res["exceeds"] = np.asarray(dep.exceeds_max_context(L_all), dtype=bool)
    res["bmax"] = np.asarray(dep.max_batch_size(L_all), dtype=np.int64)
    for i, L in enumerate(req.contexts):
        for j, b in enumerate(req.batches):
            _compute_point(req, run, tick, res, i, j, L, b)
    return res


def _compute_point(req: _Request, run, tick, res, i, j, L, b) -> None:
    """Fill cell (i, j) of ``res``: context L at batch b (None: the admissible batch)."""
    dep, n_trials = req.dep, req.n_trials
    B = int(res["bmax"][i]) if req.b_max_mode else b
    why = dep.infeasibility(L, None if req.b_max_mode else B)
    if not why and req.mode == "tpot":
        B = _tpot_batch(dep, req.routing, L, B, req.tpot_s, req.entropy, req.method, run)
        if B < 1:
            why = (f"no batch meets tpot={req.tpot_s:g} s at context {L} (B = 1 takes longer "
                   "per output token)")
    res["batch"][i, j] = B
    if why:
        res["reason"][i, j] = why
        tick(n_trials)
        return
    res["feasible"][i, j] = True
    vals, ops = _point(dep, req.routing, L, B, n_trials, req.entropy, req.method, tick, run)
    for name in _TERMS:
        res[name][i, j] = vals[name]
    res["op_mean"][i, j] = ops
    mem = res["memory_time"][i, j].mean()
    comp = res["compute_time"][i, j].mean()
    res["bound"][i, j] = "memory" if mem >= comp else "compute"
    res["w_exact"][i, j] = _exact_weight_bytes(dep, req.routing, B)
    res["kv_step"][i, j] = B * res["kv_seq"][i]


#: Per-point variables over (context, batch_size): the result key, units and meaning.
_POINT_VARIABLES = {
    "weight_bytes_per_step_exact": ("w_exact", "B", "exact expected weight bytes per step "
                                                    "(independent tokens)"),
    "kv_bytes_per_step": ("kv_step", "B", "KV cache bytes read in one step"),
    "feasible": ("feasible", "1", "whether the point can run"),
    "reason": ("reason", "1", "why the point cannot run (empty if it can)"),
    "bound": ("bound", "1", "what limits the mean roofline step: memory or compute (larger of "
                            "the summed byte and FLOP terms)"),
    "batch_size_used": ("batch", "sequences", "sequences in the decode batch (B)"),
}

#: Monte Carlo means over (context, batch_size) of roofline terms: the term, units and meaning.
_MEAN_TERMS = {
    "memory_time_mean": ("memory_time", "s", "Monte Carlo mean of the summed roofline byte "
                                             "terms bytes / BW of all operators"),
    "compute_time_mean": ("compute_time", "s", "Monte Carlo mean of the summed roofline FLOP "
                                               "terms FLOPs / F of all operators"),
    "all_to_all_time_mean": ("all_to_all_time", "s", "Monte Carlo mean of the expert all-to-all "
                                                     "time (dispatch + combine before overlap; "
                                                     "0 unless charged)"),
}


def _coords(req: _Request) -> dict:
    coords = {
        "context": xr.Variable("context", np.asarray(req.contexts, dtype=np.int64), {
            "units": "tokens", "long_name": "context length L (cached tokens per sequence)"}),
        "trial": xr.Variable("trial", np.arange(req.n_trials), {
            "units": "1", "long_name": "Monte Carlo step"}),
        "operator": xr.Variable("operator", np.array(REPORTED_OPERATORS), {
            "units": "1", "long_name": "operator of the decode step"}),
    }
    if req.b_max_mode:
        coords["batch_size"] = xr.Variable("batch_size", np.array([0]), {"units": "sequences"})
    else:
        coords["batch_size"] = xr.Variable(
            "batch_size", np.asarray(req.batches, dtype=np.int64),
            {"units": "sequences", "long_name": "sequences in the decode batch (B)"})
    return {**coords, **summary_coords(req.quantiles)}


def _data(req: _Request, run, res) -> dict:
    """Every variable of the result as ``xarray.Variable`` s, summaries included (full dims)."""
    dep = req.dep
    step = res["step_time"]
    acc = run["accepted"]
    bs = res["batch"]
    thr = bs[..., None] * acc / step
    values = {
        "step_time": step,
        "throughput": thr,
        "throughput_per_gpu": thr / dep.n_gpus,
        "weight_bytes_per_step": res["weight_bytes_per_step"],
        "step_time_bound": res["step_time_bound"],
        "throughput_bound": bs[..., None] * acc / res["step_time_bound"],
        "accepted_tokens": np.where(res["feasible"][..., None],
                                    np.broadcast_to(acc, step.shape), np.nan),
    }
    dims = ("context", "batch_size", "trial")
    d2 = ("context", "batch_size")
    data = {name: xr.Variable(dims, values[name], {"units": u, "long_name": d})
            for name, (u, d) in THROUGHPUT_VARIABLES.items()}
    for name, (term, units, desc) in _MEAN_TERMS.items():
        data[name] = xr.Variable(d2, res[term].mean(axis=-1), {"units": units, "long_name": desc})
    data["operator_time_mean"] = xr.Variable(
        (*d2, "operator"), res["op_mean"],
        {"units": "s", "long_name": "Monte Carlo mean time of each operator in one step under "
                                    "the chosen kernels, summed over layers (and micro-batches)"})
    for name, (key, units, desc) in _POINT_VARIABLES.items():
        arr = res[key].astype(str) if res[key].dtype == object else res[key]
        data[name] = xr.Variable(d2, arr, {"units": units, "long_name": desc})
    data["max_batch_size"] = xr.Variable("context", res["bmax"], {
        "units": "sequences", "long_name": "admissible batch: sequences whose KV cache fits"})
    data["kv_bytes_per_sequence"] = xr.Variable("context", res["kv_seq"], {
        "units": "B", "long_name": "KV cache of one sequence at this context"})
    data["exceeds_max_context"] = xr.Variable("context", res["exceeds"], {
        "units": "1", "long_name": "context above the model card's max_context"})
    names = list(THROUGHPUT_VARIABLES)
    data.update(summary_variables_many(names, [values[n] for n in names], d2,
                                       {n: data[n].attrs for n in names}, req.ci_prob,
                                       req.quantiles))
    return data


def _dataset(req: _Request, run, res) -> xr.Dataset:
    """The result Dataset, built once (squeezed dims dropped in NumPy, not by xarray)."""
    data, coords = _data(req, run, res), _coords(req)
    if req.b_max_mode:
        data = squeeze_variables(data, "batch_size", drop=True)
        data = {("batch_size" if k == "batch_size_used" else k): v for k, v in data.items()}
        del coords["batch_size"]
    else:
        del data["batch_size_used"]
    if req.ctx_scalar:
        data = squeeze_variables(data, "context", drop=False)
        coords = squeeze_variables(coords, "context", drop=False)
    if req.b_scalar and not req.b_max_mode:
        data = squeeze_variables(data, "batch_size", drop=False)
        coords = squeeze_variables(coords, "batch_size", drop=False)
    dep, routing = req.dep, req.routing
    attrs = provenance(
        seed=req.entropy, n_trials=req.n_trials, ci_prob=req.ci_prob,
        deployment=dep.describe(), model=_spec_dict(dep.model),
        hardware=_spec_dict(dep.hardware),
        routing=routing.describe() if routing is not None else "none (dense model)",
        batch_size_mode=req.mode, method=req.method, kernels=dep.kernels,
        kernel_card=dep.kernel_card_name or "none (roofline)",
        uncertainty_sources=uncertainty_sources(dep, routing),
        **({"tpot": req.tpot_s} if req.tpot_s is not None else {}),
    )
    return build_dataset(data, coords, attrs)

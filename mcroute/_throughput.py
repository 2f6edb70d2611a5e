"""Labeled decode throughput: :func:`decode_throughput` returns an ``xarray.Dataset``.

May import: numpy, xarray, ``_kernels`` (``count_stats``) and the array layer (``_cost``,
``_sampling``, ``_routing``, ``_results``, ``_rng``, ``_validate``).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import xarray as xr

from . import _kernels as K
from ._cost import Deployment
from ._results import DEFAULT_QUANTILES, provenance, summarize
from ._rng import CHUNK_TRIALS, resolve_seed
from ._routing import Uniform
from ._sampling import (
    check_routing,
    check_sampling_request,
    draw_counts,
    expected_active_experts,
    sampling_draws,
)
from ._validate import (
    MAX_BATCH_SIZE,
    MAX_CONTEXT,
    McrouteError,
    check_bytes,
    check_int,
    check_prob,
    check_unique,
    check_work,
)

__all__ = ["decode_throughput", "parse_tokens", "THROUGHPUT_VARIABLES"]

#: Cap on the count array held at once (elements); trials are processed in blocks below it.
_BLOCK_ELEMENTS = 4_000_000

#: Per-trial variables of ``decode_throughput`` (each summarised): units and meaning.
THROUGHPUT_VARIABLES = {
    "step_time": ("s", "decode step time (one token for each sequence of the batch)"),
    "throughput": ("tokens/s", "decode throughput of the deployment, batch_size / step_time"),
    "throughput_per_gpu": ("tokens/s/GPU", "decode throughput per GPU"),
    "weight_bytes_per_step": ("B", "weight bytes read from HBM in one step, all GPUs"),
}

_SUFFIX = {"": 1, "k": 1024, "m": 1024**2}


#: Upper limit of each token parameter parsed by :func:`parse_tokens` (``context``,
#: ``batch_size``); see mcroute._validate.
_TOKEN_MAX = {"context": MAX_CONTEXT, "batch_size": MAX_BATCH_SIZE}


def parse_tokens(name: str, value, maximum: int | None = None) -> int:
    """Parse a token count: an int or a string like ``"4096"``, ``"4k"``, ``"128K"`` (k = 1024).

    ``maximum`` defaults to the limit of the parameter (``MAX_CONTEXT`` for ``context``,
    ``MAX_BATCH_SIZE`` for ``batch_size``, see mcroute._validate).

    Examples
    --------
    >>> parse_tokens("context", "128k"), parse_tokens("context", 4096)
    (131072, 4096)
    """
    if maximum is None:
        maximum = _TOKEN_MAX.get(name.split("[")[0])
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d{1,30})\s*([kKmM]?)\s*", value)
        if not m:
            raise McrouteError(
                f"{name} must be a positive integer like 4096 or 128k"
                f"{'' if maximum is None else f' (at most {maximum})'}, got {value[:40]!r}")
        value = int(m.group(1)) * _SUFFIX[m.group(2).lower()]
    return check_int(name, value, minimum=1, maximum=maximum)


def _token_list(name: str, value) -> tuple[list[int], bool]:
    if isinstance(value, str) or np.ndim(value) == 0:
        return [parse_tokens(name, value)], True
    try:
        values = list(np.asarray(value, dtype=object).ravel())
    except (ValueError, TypeError):
        raise McrouteError(f"{name} must be a token count or a list of them") from None
    if not values:
        raise McrouteError(f"{name} must not be empty")
    out = [parse_tokens(f"{name}[{i}]", v) for i, v in enumerate(values)]
    check_unique(name, out)
    return out, False


def _resolve_routing(dep: Deployment, routing):
    if dep.n_moe_layers == 0:
        return None
    if routing is None:
        return Uniform(dep.n_experts, dep.top_k)
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


#: Arrays of n_trials values per (context, batch size) point held by decode_throughput: five
#: per-trial terms and the four summarised variables built from them.
_PER_TRIAL_ARRAYS = 9


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
                draws += sampling_draws(routing, B, n_trials, dep.n_moe_layers, method)
    check_work("the routing Monte Carlo over all (context, batch size) points", draws,
               "n_trials, batch_size or the number of contexts")


def _point(dep, routing, L, B, n_trials, entropy, method, tick):
    """Per-trial step time, weight bytes, memory/compute/all-to-all times at one (L, B)."""
    if routing is None:
        t = dep._terms(L, B)
        wbytes = dep.weight_bytes_per_step(B)
        ones = np.ones(n_trials)
        tick(n_trials)
        return (t["step_time"][0] * ones, wbytes * ones, t["memory_time"][0] * ones,
                t["compute_time"][0] * ones, t["all_to_all"][0] * ones)
    m, e = dep.n_moe_layers, dep.n_experts
    per_block = max(CHUNK_TRIALS, (_BLOCK_ELEMENTS // (m * e)) // CHUNK_TRIALS * CHUNK_TRIALS)
    out = [np.empty(n_trials) for _ in range(5)]
    for t0 in range(0, n_trials, per_block):
        nt = min(per_block, n_trials - t0)
        counts = draw_counts(routing, B, nt, m, entropy, (L, B), method, first_trial=t0)
        active, _, max_tok, max_act, _ = K.count_stats(
            counts, dep._group, dep.expert_groups, B * dep.top_k
        )
        t = dep._terms(L, B, max_tok, max_act)
        sl = slice(t0, t0 + nt)
        out[0][sl] = t["step_time"]
        out[1][sl] = dep.weight_bytes_per_step(B, active)
        out[2][sl] = t["memory_time"]
        out[3][sl] = t["compute_time"]
        out[4][sl] = t["all_to_all"]
        tick(nt)
    return tuple(out)


def decode_throughput(
    deployment,
    context,
    batch_size="max",
    routing=None,
    n_trials=1000,
    *,
    rng=None,
    ci_prob=0.95,
    quantiles=DEFAULT_QUANTILES,
    method="auto",
    progress=None,
):
    """Decode throughput of a deployment, by Monte Carlo over routing, with intervals.

    For each context L (and batch size B) the step time is the sum over decode layers and
    operators of roofline times ``max(FLOPs / F, bytes / BW)`` on the busiest GPU (see
    :class:`mcroute.Deployment` and docs/assumptions.md). The routed experts of each MoE layer
    take the time of the slowest expert-parallel group, from sampled per-expert token counts:
    ``max(tokens · 2 · P_expert / F, distinct experts · P_expert · b / BW)`` per group.

    Parameters
    ----------
    deployment : Deployment
        Model, hardware, GPU count and every modelling assumption.
    context : int, str or sequence
        Context length(s) L [tokens]; strings like ``"128k"`` (k = 1024) are accepted. A
        sequence becomes the ``context`` dim.
    batch_size : "max", int or sequence of int
        ``"max"`` (default): the admissible batch at each context (as many sequences as the KV
        cache allows), reported as the variable ``batch_size`` over ``context``. Integers
        become the ``batch_size`` dim; a batch above the admissible one is reported infeasible.
    routing : Routing, optional
        Routing distribution of the MoE layers; default ``Uniform(E, k)`` of the model. Its E and
        k must match the model. Ignored for a dense model.
    n_trials : int
        Monte Carlo steps per point, >= 2 (intervals need two). Requests whose per-trial
        results or random draws exceed the limits of mcroute._validate (``MAX_RESULT_BYTES``,
        ``MAX_DRAWS``) are refused before anything is computed.
    rng : None, int, SeedSequence or Generator
        Seed; stored as ``attrs["seed"]``. Each (context, batch size) draws from the stream keyed
        by their values, so any subset of the grid reproduces the same numbers.
    ci_prob : float
        Level of the confidence intervals of the means, in (0, 1).
    quantiles : sequence of float
        Levels of the single-step quantile bands.
    method : {"auto", "assignment", "counts"}
        Sampling method, see :func:`mcroute.sample_counts`.
    progress : callable, optional
        Called as ``progress(fraction_done)`` after each block of trials (the CLI uses it to
        show progress on a terminal).

    Returns
    -------
    xarray.Dataset
        Dims ``context``, ``trial`` (``batch_size`` for integer batch sizes), ``ci_bound``,
        ``quantile``. Per-trial ``step_time`` [s], ``throughput`` [tokens/s],
        ``throughput_per_gpu`` [tokens/s/GPU] and ``weight_bytes_per_step`` [B], each with
        ``_mean``, ``_se``, ``_ci`` (interval of the mean) and ``_q`` (spread of single steps);
        ``weight_bytes_per_step_exact`` [B] (its exact expectation for independent-token
        routing); ``batch_size``, ``max_batch_size`` [sequences]; ``kv_bytes_per_step`` and
        ``kv_bytes_per_sequence`` [B]; ``memory_time_mean``, ``compute_time_mean`` and
        ``all_to_all_time_mean`` [s]; ``feasible``, ``reason`` (why not, else ""),
        ``exceeds_max_context`` and ``bound`` ("memory" or "compute": the larger of the summed
        byte and FLOP terms of the mean step; "" if infeasible). Infeasible points have NaN
        trials. Attrs: seed, trials, and the deployment (with ``weight_bytes_per_gpu`` and
        ``usable_bytes_per_gpu``), model, hardware and routing specs.

    Examples
    --------
    >>> import mcroute as mr
    >>> dep = mr.Deployment("deepseek-v3", "h200", 8, weight_dtype="fp8")
    >>> ds = mr.decode_throughput(dep, ["4k", "128k"], n_trials=64, rng=0)
    >>> ds["feasible"].values.tolist(), ds["bound"].values.tolist()
    ([True, True], ['memory', 'memory'])
    >>> bool(ds["batch_size"].sel(context=4096) > ds["batch_size"].sel(context=131072))
    True
    """
    if not isinstance(deployment, Deployment):
        raise McrouteError(
            f"deployment must be a mcroute.Deployment, got {type(deployment).__name__}"
        )
    dep = deployment
    contexts, ctx_scalar = _token_list("context", context)
    if isinstance(batch_size, str):
        if batch_size.strip().lower() != "max":
            raise McrouteError(f"batch_size must be 'max', an integer or a list of integers, "
                               f"got {batch_size!r}")
        batches, b_scalar, b_max_mode = [None], True, True
    else:
        batches, b_scalar = _token_list("batch_size", batch_size)
        b_max_mode = False
    n_trials = check_int("n_trials", n_trials, minimum=2)
    ci_prob = check_prob("ci_prob", ci_prob)
    routing = _resolve_routing(dep, routing)
    entropy = resolve_seed(rng)
    if progress is not None and not callable(progress):
        raise McrouteError(f"progress must be a callable or None, got {progress!r}")
    _check_request(dep, routing, contexts, batches, b_max_mode, n_trials, method)
    total = len(contexts) * len(batches) * n_trials
    done = [0]

    def tick(n):
        done[0] += n
        if progress is not None:
            progress(done[0] / total)

    nc, nb = len(contexts), len(batches)
    per_trial = {name: np.full((nc, nb, n_trials), np.nan)
                 for name in ("step_time", "weight_bytes_per_step", "memory_time", "compute_time",
                              "all_to_all_time")}
    bs = np.zeros((nc, nb), dtype=np.int64)
    bmax = np.zeros(nc, dtype=np.int64)
    kv_seq = np.zeros(nc)
    exceeds = np.zeros(nc, dtype=bool)
    feasible = np.zeros((nc, nb), dtype=bool)
    reason = np.full((nc, nb), "", dtype=object)
    bound = np.full((nc, nb), "", dtype=object)
    w_exact = np.full((nc, nb), np.nan)
    kv_step = np.full((nc, nb), np.nan)
    for i, L in enumerate(contexts):
        kv_seq[i] = dep.kv_bytes_per_sequence(L)
        exceeds[i] = dep.exceeds_max_context(L)
        bmax[i] = dep.max_batch_size(L)
        for j, b in enumerate(batches):
            B = int(bmax[i]) if b_max_mode else b
            bs[i, j] = B
            why = dep.infeasibility(L, None if b_max_mode else B)
            if why:
                reason[i, j] = why
                tick(n_trials)
                continue
            feasible[i, j] = True
            vals = _point(dep, routing, L, B, n_trials, entropy, method, tick)
            for name, v in zip(per_trial, vals, strict=True):
                per_trial[name][i, j] = v
            mem = per_trial["memory_time"][i, j].mean()
            comp = per_trial["compute_time"][i, j].mean()
            bound[i, j] = "memory" if mem >= comp else "compute"
            if routing is None:
                w_exact[i, j] = dep.weight_bytes_per_step(B)
            else:
                act = np.atleast_1d(expected_active_experts(routing, B, dep.n_moe_layers))
                w_exact[i, j] = dep.weight_bytes_per_step(B, act)
            kv_step[i, j] = B * kv_seq[i]

    step = per_trial["step_time"]
    thr = bs[..., None] / step
    dims = ("context", "batch_size", "trial")
    coords = {
        "context": ("context", np.asarray(contexts, dtype=np.int64),
                    {"units": "tokens",
                     "long_name": "context length L (cached tokens per sequence)"}),
        "trial": ("trial", np.arange(n_trials), {"units": "1", "long_name": "Monte Carlo step"}),
    }
    if b_max_mode:
        coords["batch_size"] = ("batch_size", np.array([0]), {"units": "sequences"})
    else:
        coords["batch_size"] = ("batch_size", np.asarray(batches, dtype=np.int64),
                                {"units": "sequences",
                                 "long_name": "sequences in the decode batch (B)"})
    values = {
        "step_time": step,
        "throughput": thr,
        "throughput_per_gpu": thr / dep.n_gpus,
        "weight_bytes_per_step": per_trial["weight_bytes_per_step"],
    }
    data = {name: (dims, values[name], {"units": u, "long_name": d})
            for name, (u, d) in THROUGHPUT_VARIABLES.items()}
    d2 = ("context", "batch_size")
    for name, arr, units, desc in (
        ("memory_time_mean", per_trial["memory_time"], "s",
         "Monte Carlo mean of the summed byte terms bytes / BW of all operators"),
        ("compute_time_mean", per_trial["compute_time"], "s",
         "Monte Carlo mean of the summed FLOP terms FLOPs / F of all operators"),
        ("all_to_all_time_mean", per_trial["all_to_all_time"], "s",
         "Monte Carlo mean of the expert all-to-all time (0 unless charged)"),
    ):
        data[name] = (d2, arr.mean(axis=-1), {"units": units, "long_name": desc})
    data["weight_bytes_per_step_exact"] = (
        d2, w_exact,
        {"units": "B", "long_name": "exact expected weight bytes per step (independent tokens)"})
    data["kv_bytes_per_step"] = (d2, kv_step,
                                 {"units": "B", "long_name": "KV cache bytes read in one step"})
    data["feasible"] = (d2, feasible, {"units": "1", "long_name": "whether the point can run"})
    data["reason"] = (d2, reason.astype(str),
                      {"units": "1", "long_name": "why the point cannot run (empty if it can)"})
    data["bound"] = (d2, bound.astype(str),
                     {"units": "1", "long_name": "what limits the mean step: memory or compute "
                                                 "(larger of the summed byte and FLOP terms)"})
    data["batch_size_used"] = (d2, bs, {"units": "sequences",
                                        "long_name": "sequences in the decode batch (B)"})
    data["max_batch_size"] = ("context", bmax, {
        "units": "sequences", "long_name": "admissible batch: sequences whose KV cache fits"})
    data["kv_bytes_per_sequence"] = ("context", kv_seq, {
        "units": "B", "long_name": "KV cache of one sequence at this context"})
    data["exceeds_max_context"] = ("context", exceeds, {
        "units": "1", "long_name": "context above the model card's max_context"})
    ds = xr.Dataset(data, coords=coords)
    ds = summarize(ds, list(THROUGHPUT_VARIABLES), ci_prob=ci_prob, quantiles=quantiles)
    if b_max_mode:
        ds = ds.squeeze("batch_size", drop=True).rename({"batch_size_used": "batch_size"})
    else:
        ds = ds.drop_vars("batch_size_used")
    if ctx_scalar:
        ds = ds.squeeze("context", drop=False)
    if b_scalar and not b_max_mode:
        ds = ds.squeeze("batch_size", drop=False)
    ds.attrs = provenance(
        seed=entropy, n_trials=n_trials, ci_prob=ci_prob,
        deployment=dep.describe(), model=_spec_dict(dep.model),
        hardware=_spec_dict(dep.hardware),
        routing=routing.describe() if routing is not None else "none (dense model)",
        batch_size_mode="max" if b_max_mode else "given", method=method,
    )
    return ds

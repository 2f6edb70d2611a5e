"""Calibrated decode step time: the roofline's work priced with measured-kernel efficiencies.

May import: numpy, and the array layer (``_calibration``, ``_validate``).

The roofline (:meth:`mcroute.Deployment._terms`) prices each operator of a decode step at
``max(FLOPs / F, bytes / BW)``. This module prices the same step the way the kernels of a real
engine run it (issue 13, docs/assumptions.md "Calibrated kernels"):

* **Kernel efficiencies** from a kernel card (:mod:`mcroute._cost.calibration`): dense GEMMs
  at small M, decode attention (MLA / GQA), HBM streaming, a per-layer fixed overhead.
  Parameters are either point values (floats) or per-trial draws (arrays ``(trial,)``),
  aligned with the leading (trial) axis of every input.
* **Expert GEMMs from each expert's sampled load.** The routed tokens of every expert-parallel
  group are gathered per expert (``group_loads``: ``(trial, moe_layer, group, slot)``) and
  priced with :func:`~mcroute._cost.calibration.expert_gemm_time`, which costs every touched expert
  from its own load m_e; the MoE layer waits for its slowest group.
* **Redundant experts** (EPLB-style): ``N`` extra expert slots hold replicas of the hottest
  experts of each MoE layer; a replicated expert's sampled tokens are split evenly among its
  replicas (:func:`expert_layout`, :func:`slot_loads`).
* **Communication**: expert dispatch + combine (:func:`~mcroute._cost.calibration.all_to_all_time`,
  NVLink inside a node, the scale-out network across nodes) and the tensor-parallel
  all-reduces (:func:`~mcroute._cost.calibration.all_reduce_time`), with the overlap modes of
  :data:`ALL_TO_ALL_MODES`.
* **Engine memory layout** is resolved by the Deployment; here it decides which GPU reads what:
  under data-parallel attention with replicated dense weights every GPU runs the dense FFN,
  shared experts, router and LM head on its own sequences with the full weights; under
  tensor-parallel attention each GPU reads its share of every sequence's cache (the whole MLA
  latent, ``ceil(kv_heads / n) / kv_heads`` of a GQA cache).
* **MTP / speculative decoding**: every sequence carries ``r = 1 + mtp_depth`` tokens through
  every operator (verification), attention reads each sequence's cache once for its r queries.

Every calibrated operator time is at least the roofline time of the same operator (each kernel
function of :mod:`mcroute._cost.calibration` is, and the calibrated work per GPU is never less than
the roofline's), and communication, all-reduces and overheads only add time, so the calibrated
step time is never shorter than the roofline step time computed from the same sampled counts
(tested as a Hypothesis property in tests/test_calibrated.py).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from mcroute._base.validate import McrouteError
from mcroute._cost import calibration as C

__all__ = [
    "ALL_TO_ALL_MODES",
    "CALIBRATION_STREAM",
    "MTP_STREAM",
    "ExpertLayout",
    "balanced_placement",
    "expert_layout",
    "slot_loads",
    "group_loads",
    "split_two",
    "calibrated_step",
    "parse_acceptance",
    "draw_acceptance",
    "accepted_tokens",
]

#: How the expert dispatch/combine is charged: ``"off"`` (not charged), ``"none"`` (no overlap:
#: added to its MoE layer), ``"overlap"`` (ideal: the MoE layer takes max(work, communication)),
#: ``"two-batch"`` (two micro-batches; the compute of one hides the communication of the other).
ALL_TO_ALL_MODES = ("off", "none", "overlap", "two-batch")

#: Stream key of the per-trial kernel-parameter draws (independent of the routing streams, which
#: are keyed by (context, batch)); the same trial gets the same draw at every point.
CALIBRATION_STREAM = (13, 1)
#: Stream key of the per-trial MTP acceptance draws.
MTP_STREAM = (13, 2)


# ---------------------------------------------------------------------------------------------
# Expert placement and redundant experts
# ---------------------------------------------------------------------------------------------


def balanced_placement(n_experts: int, n_groups: int) -> np.ndarray:
    """Balanced contiguous placement: group of each expert, ``floor(e · D / E)``.

    Group sizes differ by at most one expert; when D divides E this is the usual contiguous
    blocks of E / D experts (``mcroute.device_map``).

    Examples
    --------
    >>> balanced_placement(10, 4).tolist()
    [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    >>> balanced_placement(8, 4).tolist()
    [0, 0, 1, 1, 2, 2, 3, 3]
    """
    if n_experts < 1 or n_groups < 1:
        raise McrouteError(f"n_experts and n_groups must be >= 1, got {n_experts}, {n_groups}")
    return (np.arange(n_experts, dtype=np.int64) * n_groups) // n_experts


@dataclasses.dataclass(frozen=True)
class ExpertLayout:
    """Expert slots of every MoE layer and the expert-parallel group holding each slot.

    Attributes
    ----------
    slot_expert : ndarray int64 (moe_layer, slot)
        Expert whose weights the slot holds (S = E + redundant slots).
    slot_rank : ndarray int64 (moe_layer, slot)
        Index of the slot among the replicas of its expert (0 .. replicas - 1).
    slot_replicas : ndarray int64 (moe_layer, slot)
        Replicas of the slot's expert.
    slot_group : ndarray int64 (moe_layer, slot)
        Expert-parallel group of the slot.
    gather : ndarray int64 (moe_layer, group, capacity)
        Slots of each group, padded with the index S (a zero column).
    n_groups : int
        Expert-parallel degree D.
    redundant : int
        Extra slots N.
    """

    slot_expert: np.ndarray
    slot_rank: np.ndarray
    slot_replicas: np.ndarray
    slot_group: np.ndarray
    gather: np.ndarray
    n_groups: int
    redundant: int

    @property
    def slots_per_group(self) -> np.ndarray:
        """Slots held by each group, int64 (moe_layer, group)."""
        return (self.gather < self.slot_expert.shape[1]).sum(axis=2)


def _gather_index(slot_group: np.ndarray, n_groups: int) -> np.ndarray:
    m, s = slot_group.shape
    per = np.stack([np.bincount(row, minlength=n_groups) for row in slot_group])
    cap = int(per.max()) if per.size else 0
    out = np.full((m, n_groups, cap), s, dtype=np.int64)
    for j in range(m):
        order = np.argsort(slot_group[j], kind="stable")
        start = 0
        for g in range(n_groups):
            k = int(per[j, g])
            out[j, g, :k] = order[start:start + k]
            start += k
    return out


def expert_layout(group_of_expert, n_groups: int, n_layers: int, redundant: int = 0,
                  popularity=None) -> ExpertLayout:
    """Expert slots per MoE layer: one per expert, plus ``redundant`` replicas of hot experts.

    Parameters
    ----------
    group_of_expert : array of int (expert,)
        The placement without redundancy (used as is when ``redundant == 0``).
    n_groups : int
        Expert-parallel degree D.
    n_layers : int
        MoE layers.
    redundant : int
        Extra slots N >= 0.
    popularity : array (moe_layer, expert), optional
        Expected share of tokens of each expert per layer (the routing's popularity), needed
        when ``redundant > 0``.

    Returns
    -------
    ExpertLayout

    Notes
    -----
    With ``redundant > 0`` the placement of every layer is rebuilt EPLB-style (DeepSeek's
    expert-parallel load balancer does the same two steps): (1) N times, give one more replica
    to the expert with the largest expected load per replica ``popularity_e / replicas_e``
    (ties: lowest expert id); (2) sort the S = E + N slots by expected load per replica
    (descending, stable) and put each on the group with the least expected load that still has
    room, each group holding ``floor(S / D)`` or ``ceil(S / D)`` slots (the first ``S mod D``
    groups one more). Tokens of a replicated expert are split evenly among its replicas
    (:func:`slot_loads`).

    Examples
    --------
    >>> lay = expert_layout(balanced_placement(4, 2), 2, 1, redundant=2,
    ...                     popularity=[[0.4, 0.3, 0.2, 0.1]])
    >>> lay.slot_expert.tolist(), lay.slot_replicas.tolist()
    ([[0, 0, 2, 1, 1, 3]], [[2, 2, 1, 2, 2, 1]])
    >>> lay.slot_group.tolist(), lay.slots_per_group.tolist()
    ([[0, 1, 0, 1, 1, 0]], [[3, 3]])
    """
    g0 = np.asarray(group_of_expert, dtype=np.int64)
    e = g0.shape[0]
    if redundant == 0:
        slot_expert = np.broadcast_to(np.arange(e, dtype=np.int64), (n_layers, e)).copy()
        slot_group = np.broadcast_to(g0, (n_layers, e)).copy()
        ones = np.ones((n_layers, e), dtype=np.int64)
        return ExpertLayout(slot_expert, np.zeros_like(ones), ones, slot_group,
                            _gather_index(slot_group, n_groups), n_groups, 0)
    if popularity is None:
        raise McrouteError("redundant experts need the routing's expert popularity")
    pop = np.asarray(popularity, dtype=float)
    if pop.shape != (n_layers, e):
        raise McrouteError(f"popularity must have shape ({n_layers}, {e}), got {pop.shape}")
    s = e + redundant
    cap = np.full(n_groups, s // n_groups, dtype=np.int64)
    cap[: s % n_groups] += 1
    slot_expert = np.zeros((n_layers, s), dtype=np.int64)
    slot_rank = np.zeros((n_layers, s), dtype=np.int64)
    slot_reps = np.zeros((n_layers, s), dtype=np.int64)
    slot_group = np.zeros((n_layers, s), dtype=np.int64)
    for j in range(n_layers):
        lam = pop[j]
        reps = np.ones(e, dtype=np.int64)
        for _ in range(redundant):
            reps[int(np.argmax(lam / reps))] += 1
        ex = np.repeat(np.arange(e, dtype=np.int64), reps)
        rank = np.concatenate([np.arange(r, dtype=np.int64) for r in reps])
        load = lam[ex] / reps[ex]
        order = np.argsort(-load, kind="stable")
        ex, rank, load = ex[order], rank[order], load[order]
        g_load = np.zeros(n_groups)
        g_fill = np.zeros(n_groups, dtype=np.int64)
        grp = np.empty(s, dtype=np.int64)
        for i in range(s):
            free = g_fill < cap
            cand = np.where(free, g_load, np.inf)
            g = int(np.argmin(cand))
            grp[i] = g
            g_load[g] += load[i]
            g_fill[g] += 1
        slot_expert[j], slot_rank[j], slot_reps[j], slot_group[j] = ex, rank, reps[ex], grp
    return ExpertLayout(slot_expert, slot_rank, slot_reps, slot_group,
                        _gather_index(slot_group, n_groups), n_groups, redundant)


def slot_loads(counts, layout: ExpertLayout) -> np.ndarray:
    """Tokens of each expert slot, int64 (trial, moe_layer, slot), from counts per expert.

    A slot of an expert with r replicas takes ``floor(m / r)`` of the expert's m tokens, plus one
    for the first ``m mod r`` replicas (an even split). Without redundancy the counts are
    returned as they are.

    Examples
    --------
    >>> lay = expert_layout([0, 1], 2, 1, redundant=1, popularity=[[0.9, 0.1]])
    >>> slot_loads(np.array([[[5, 2]]]), lay).tolist()
    [[[3, 2, 2]]]
    """
    c = np.asarray(counts)
    if layout.redundant == 0:
        return c
    idx = np.broadcast_to(layout.slot_expert[None], (c.shape[0],) + layout.slot_expert.shape)
    m = np.take_along_axis(c, idx, axis=2)
    q, rem = np.divmod(m, layout.slot_replicas[None])
    return q + (layout.slot_rank[None] < rem)


def group_loads(slots, layout: ExpertLayout) -> np.ndarray:
    """Per-slot loads gathered by group, (trial, moe_layer, group, capacity), zero-padded.

    When every group holds the same number of consecutive slots (the default placement with D
    dividing E) this is a reshaped view of ``slots``.

    Examples
    --------
    >>> lay = expert_layout(balanced_placement(3, 2), 2, 1)
    >>> group_loads(np.array([[[4, 0, 7]]]), lay).tolist()
    [[[[4, 0], [7, 0]]]]
    """
    x = np.asarray(slots)
    nt, m, s = x.shape
    g = layout.gather
    if g.shape[1] * g.shape[2] == s and np.array_equal(
            g, np.broadcast_to(np.arange(s).reshape(1, g.shape[1], g.shape[2]), g.shape)):
        return x.reshape(nt, m, g.shape[1], g.shape[2])
    padded = np.concatenate([x, np.zeros((nt, m, 1), dtype=x.dtype)], axis=2)
    g = layout.gather
    idx = np.broadcast_to(g.reshape(1, m, -1), (nt, m, g.shape[1] * g.shape[2]))
    return np.take_along_axis(padded, idx, axis=2).reshape(nt, m, g.shape[1], g.shape[2])


def split_two(loads) -> tuple[np.ndarray, np.ndarray]:
    """Split per-expert loads between two micro-batches (two-batch overlap).

    Deterministic halves: along the last (expert) axis, even positions give the first
    micro-batch ``ceil(m / 2)``, odd positions ``floor(m / 2)``; the second gets the rest (an
    approximation of the hypergeometric split of a real batch halved by sequences).

    Examples
    --------
    >>> a, b = split_two(np.array([3, 3, 0, 1]))
    >>> a.tolist(), b.tolist()
    ([2, 1, 0, 0], [1, 2, 0, 1])
    """
    x = np.asarray(loads)
    parity = (np.arange(x.shape[-1]) % 2 == 0).astype(x.dtype)
    a = (x + parity) // 2
    return a, x - a


# ---------------------------------------------------------------------------------------------
# MTP acceptance
# ---------------------------------------------------------------------------------------------


def parse_acceptance(value):
    """Validate an MTP acceptance: a number in [0, 1] or ``"beta:A,B"`` (A, B > 0).

    Returns a float, or the tuple ``("beta", A, B)``.

    Examples
    --------
    >>> parse_acceptance(0.8), parse_acceptance("beta:8,2")
    (0.8, ('beta', 8.0, 2.0))
    """
    if isinstance(value, bool):
        raise McrouteError(f"mtp_acceptance must be a number in [0, 1] or 'beta:A,B', "
                           f"got {value!r}")
    if isinstance(value, (int, float, np.integer, np.floating)):
        v = float(value)
        if not (0.0 <= v <= 1.0):
            raise McrouteError(f"mtp_acceptance must be in [0, 1], got {value!r}")
        return v
    if isinstance(value, str):
        s = value.strip().lower()
        if s.startswith("beta:"):
            parts = s[5:].split(",")
            try:
                a, b = (float(x) for x in parts)
            except ValueError:
                a = b = float("nan")
            if len(parts) == 2 and a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b):
                return ("beta", a, b)
        else:
            try:
                return parse_acceptance(float(s))
            except ValueError:
                pass
    raise McrouteError(f"mtp_acceptance must be a number in [0, 1] or 'beta:A,B' with A, B > 0, "
                       f"got {value!r}")


def draw_acceptance(spec, n_trials: int, rng: np.random.Generator) -> np.ndarray:
    """Per-trial acceptance rates, (trial,): the number itself, or Beta(A, B) draws."""
    if isinstance(spec, tuple):
        return rng.beta(spec[1], spec[2], size=n_trials)
    return np.full(n_trials, float(spec))


def accepted_tokens(acceptance, depth: int):
    """Accepted tokens per sequence per step, ``1 + Σ_{i=1..depth} a^i``.

    Examples
    --------
    >>> accepted_tokens(0.5, 2), accepted_tokens(0.9, 0), accepted_tokens(0.0, 3)
    (1.75, 1.0, 1.0)
    """
    a = np.asarray(acceptance, dtype=float)
    out = np.ones_like(a)
    term = np.ones_like(a)
    for _ in range(int(depth)):
        term = term * a
        out = out + term
    return float(out) if out.ndim == 0 else out


# ---------------------------------------------------------------------------------------------
# The calibrated step
# ---------------------------------------------------------------------------------------------


def _pv(p, name, nd):
    """Kernel parameter as a float or a (trial, 1, ..., 1) array of ``nd`` dims."""
    v = np.asarray(p[name], dtype=float)
    return float(v) if v.ndim == 0 else v.reshape((-1,) + (1,) * (nd - 1))


def expert_times(loads, weight_bytes, flops_per_token, act_bytes_per_token, *, bw, peak_flops,
                 p):
    """:func:`~mcroute._cost.calibration.expert_gemm_time` of every group, via a table of loads.

    ``loads``: int (trial, moe_layer, group, capacity); the expert sizes are per MoE layer
    (arrays (moe_layer,)). Returns (trial, moe_layer, group): the layer floor plus the sum over
    touched experts of :func:`~mcroute._cost.calibration.expert_cost` of each expert's own load.
    The cost of every load value 1 .. max is computed once per trial (and expert size) and
    gathered, which gives the same numbers as pricing every expert separately (the same
    elementwise operations on the same values) at a fraction of the work.
    """
    x = np.asarray(loads)
    nt = x.shape[0]
    out = np.zeros(x.shape[:3])
    sizes = np.stack([weight_bytes, flops_per_token, act_bytes_per_token], axis=1)
    floor = np.clip(np.asarray(p["moe_layer_floor_s"], dtype=float), 0.0, None)
    floor = float(floor) if floor.ndim == 0 else floor.reshape(-1, 1)
    top = int(x.max()) if x.size else 0
    grid = np.arange(top + 1, dtype=float)[None, :]
    kw = {k: _pv(p, name, 2) for k, name in (
        ("eta_max", "moe_stream_eta_max"), ("m_half", "moe_stream_m_half"),
        ("eta_c", "moe_compute_eta"), ("p", "moe_overlap_p"), ("tau", "moe_expert_overhead_s"))}
    for w, f, a in np.unique(sizes, axis=0):
        layers = np.flatnonzero((sizes == (w, f, a)).all(axis=1))
        tab = C.expert_cost(np.where(grid > 0, grid, 1.0), w, f, a, bw=bw, peak_flops=peak_flops,
                            **kw)
        tab = np.where(grid > 0, np.broadcast_to(tab, (nt, top + 1)), 0.0)
        sub = x[:, layers].reshape(nt, -1).astype(np.intp)
        cost = np.take_along_axis(tab, sub, axis=1).reshape(x[:, layers].shape)
        out[:, layers] = cost.sum(axis=-1) + (floor[:, :, None] if np.ndim(floor) else floor)
    return out


def _attended(context, window):
    w = np.asarray(window, dtype=np.int64)
    return np.where(w > 0, np.minimum(context, w), context).astype(float)


def _gemm(m, params, wb, F, BW, p, nt):
    """Calibrated dense GEMMs of a per-layer parameter array, (trial, layer); 0 where P = 0.

    Priced once per distinct parameter count (layers are mostly alike) and spread back.
    """
    params = np.asarray(params, dtype=float)
    if m <= 0:
        return np.zeros((nt, params.shape[-1]))
    u, inv = np.unique(params, return_inverse=True)
    t = C.dense_gemm_time(m, (u * wb)[None], (2.0 * m * u)[None], bw=BW, peak_flops=F, p=p)
    t = np.broadcast_to(np.where(u[None] > 0, t, 0.0), (nt, u.shape[0]))
    return t[:, inv.ravel()]


def _attention_core(dep, L, n_seq, r, p, nt):
    """Attention over the cache of one (micro-)batch, per layer ``(trial, layer)`` [s]."""
    n = dep.n_gpus
    layers = len(dep._layers)
    pos = _attended(L, dep._window)
    enc = float(dep._encoder_context(L))
    kv_seq = dep._kv_token_bytes * pos + dep._cross_kv * enc * dep._kvb     # [B] per sequence
    fl_seq = dep._attn_flops * pos + dep._cross_flops * enc                 # per query token
    if dep.attention_parallel == "data":
        seq_local = math.ceil(n_seq / n)      # sequences of one GPU under data parallelism
        kv_gpu = seq_local * kv_seq
        fl_gpu = seq_local * r * fl_seq
    else:
        kv_gpu = n_seq * dep._kv_share * kv_seq
        fl_gpu = n_seq * r * fl_seq / n
    att = np.zeros((nt, layers))
    if n_seq > 0:
        for kind in ("mla", "gqa"):
            mask = dep._attn_kind_mla if kind == "mla" else ~dep._attn_kind_mla
            if not mask.any():
                continue
            t = C.attention_time(kind, kv_gpu[None], fl_gpu[None], bw=dep._BW,
                                 peak_flops=dep._F_attn, p=p)
            att = att + np.where(mask[None], np.broadcast_to(t, (nt, layers)), 0.0)
    return att


def _sub_batch(dep, L, n_seq, r, gl, p, nt):
    """Work of one (micro-)batch of ``n_seq`` sequences on the busiest GPU.

    Returns per-layer times ``(trial, layer)`` by operator, edge times ``(trial,)``, the
    communication per MoE layer ``(trial, moe_layer)`` and the busiest group's tokens.
    """
    n = dep.n_gpus
    layers = len(dep._layers)
    T = n_seq * r
    data = dep.attention_parallel == "data"
    rep = dep._replicate_dense
    F, BW = dep._F, dep._BW
    wb = dep._wb
    hidden = dep.model.hidden
    seq_local = math.ceil(n_seq / n)          # sequences of one GPU under data parallelism
    out = {}
    # attention projections
    if data:
        out["attention_projections"] = _gemm(seq_local * r, dep._attn_params, wb, F, BW, p, nt)
    else:
        out["attention_projections"] = _gemm(T, dep._attn_params / n, wb, F, BW, p, nt)
    out["attention_kv"] = _attention_core(dep, L, n_seq, r, p, nt)
    # dense FFN, shared experts, router: replicated (data attention, engine layout) or sharded
    for op, prm in (("dense_ffn", dep._dense_params), ("shared_experts", dep._shared_params),
                    ("router", dep._router_params)):
        if rep:
            out[op] = _gemm(seq_local * r, prm, wb, F, BW, p, nt)
        else:
            out[op] = _gemm(T, prm / n, wb, F, BW, p, nt)
    # tensor-parallel all-reduces (one per sharded block per layer)
    ar = np.zeros((nt, layers))
    if n > 1 and T > 0:
        link = dep._nvlink if n <= dep._gpus_per_node else (dep._scaleout or dep._nvlink)
        msg = np.full((1, 1), T * hidden * dep._combine_b)
        one = np.broadcast_to(C.all_reduce_time(msg, n, link_bw=link, p=p), (nt, 1))
        blocks = np.zeros(layers)
        if not data:
            blocks += 1.0                                             # attention output
        if not rep:
            blocks += ((dep._dense_params + dep._shared_params) > 0)  # FFN output
        ar = ar + one * blocks[None]
    # routed experts: every group from its per-expert loads; the layer waits for the slowest
    exp = np.zeros((nt, dep.n_moe_layers))
    tok_max = np.zeros((nt, dep.n_moe_layers))
    tp = dep.expert_tensor_parallel
    if dep.n_moe_layers and gl is not None:
        pe = dep._expert_params
        w_e = (pe * wb / tp).reshape(1, -1, 1, 1)
        f_e = (2.0 * pe / tp).reshape(1, -1, 1, 1)
        a_e = (dep._expert_act_bytes / tp).reshape(1, -1, 1, 1)
        t = expert_times(gl, w_e.ravel(), f_e.ravel(), a_e.ravel(), bw=BW, peak_flops=F, p=p)
        busy = gl.sum(axis=-1) > 0
        t = np.where(busy, t, 0.0)  # a group with no tokens launches nothing
        exp = t.max(axis=-1)
        tok_max = gl.sum(axis=-1).max(axis=-1).astype(float)
        if tp > 1:
            link = dep._nvlink if tp <= dep._gpus_per_node else (dep._scaleout or dep._nvlink)
            ar_e = C.all_reduce_time(tok_max * hidden * dep._combine_b, tp, link_bw=link, p=p)
            ar[:, dep._is_moe] += ar_e
    out["all_reduce"] = ar
    over = C.layer_overhead(p)
    ov = np.asarray(over, dtype=float).reshape(-1, 1) * np.ones((1, layers))
    out["overhead"] = np.broadcast_to(ov, (nt, layers)) if n_seq > 0 else np.zeros((nt, layers))
    # edges: embedding gather and LM head
    if rep:
        rows = min(seq_local * r, dep.model.vocab)
        emb = C.hbm_time(np.full((1,), rows * hidden * wb), bw=BW, p=p)
        head = _gemm(seq_local * r, np.array([dep._head_params]), wb, F, BW, p, nt)[:, 0]
    else:
        rows = min(T, dep.model.vocab)
        emb = C.hbm_time(np.full((1,), rows * hidden * wb / n), bw=BW, p=p)
        head = _gemm(T, np.array([dep._head_params / n]), wb, F, BW, p, nt)[:, 0]
    edges = {"embedding": np.broadcast_to(emb if n_seq > 0 else np.zeros(1), (nt,)),
             "lm_head": head}
    # expert dispatch + combine
    comm = np.zeros((nt, dep.n_moe_layers))
    D = dep.expert_groups
    if dep._all_to_all != "off" and D > 1 and dep.n_moe_layers and T > 0:
        tpr = np.full((nt,), float(math.ceil(T / n)))
        disp, comb = C.all_to_all_time(
            tpr, hidden, dep.top_k, ep=D, gpus_per_node=max(1, dep._gpus_per_node // tp),
            dispatch_bytes_per_value=dep._dispatch_b, combine_bytes_per_value=dep._combine_b,
            nvlink_bw=dep._nvlink, scaleout_bw=dep._scaleout or dep._nvlink, p=p)
        # the busiest group must receive its tokens: the roofline transfer time is a floor
        floor = 2.0 * tok_max * hidden * dep._ab * (D - 1) / D / tp / dep._link
        if dep.n_gpus > dep._gpus_per_node:  # across nodes: at least one network latency each
            floor = np.maximum(floor, 2.0 * getattr(dep, "_scaleout_latency", 0.0))
        comm = np.maximum((disp + comb)[:, None], floor)
    return out, edges, exp, comm


def calibrated_step(dep, context, batch_size, gl, p, *, n_trials, tokens_per_seq=1):
    """Calibrated decode step on the busiest GPU, per trial and operator.

    Parameters
    ----------
    dep : Deployment
        Resolved deployment (uses its per-layer arrays and resolved options).
    context : int
        Context L [tokens].
    batch_size : int
        Sequences B in the step.
    gl : ndarray (trial, moe_layer, group, capacity) or None
        Routed tokens of every expert slot, gathered by expert-parallel group
        (:func:`group_loads`); None for a dense model.
    p : mapping
        Kernel parameters: floats, or ``(trial,)`` arrays.
    n_trials : int
        Trials (the leading axis of ``gl`` and of the parameter arrays).
    tokens_per_seq : int
        Tokens each sequence carries through the step (``1 + mtp_depth``).

    Returns
    -------
    dict of ndarray (trial,)
        Time [s] of every operator of :data:`mcroute._cost.deployment.OPERATORS` (summed over layers
        and micro-batches), ``"all_to_all"`` (dispatch + combine, all MoE layers, before
        overlap),
        ``"all_reduce"``, ``"overhead"`` and ``"step_time"``.
    """
    nt = int(n_trials)
    r = int(tokens_per_seq)
    mode = dep._all_to_all
    if mode == "two-batch":
        b1 = math.ceil(batch_size / 2)
        parts = [(b1, None), (batch_size - b1, None)]
        if gl is not None:
            ga, gb = split_two(gl)
            parts = [(b1, ga), (batch_size - b1, gb)]
    else:
        parts = [(batch_size, gl)]
    res = [_sub_batch(dep, context, b, r, g, p, nt) for b, g in parts]
    is_moe = dep._is_moe
    out = {}
    work = np.zeros((nt, len(dep._layers)))
    for ops, _, exp, _ in res:
        for op in ("attention_projections", "attention_kv", "dense_ffn", "shared_experts",
                   "router", "all_reduce", "overhead"):
            out[op] = out.get(op, 0.0) + ops[op].sum(axis=1)
            work = work + ops[op]
        out["routed_experts"] = out.get("routed_experts", 0.0) + exp.sum(axis=1)
        work[:, is_moe] += exp
    edges = sum(e["embedding"] + e["lm_head"] for _, e, _, _ in res)
    for key in ("embedding", "lm_head"):
        out[key] = sum(e[key] for _, e, _, _ in res)
    comm = sum(c for _, _, _, c in res)
    out["all_to_all"] = comm.sum(axis=1) if np.ndim(comm) == 2 else np.zeros(nt)
    moe_work = work[:, is_moe]
    if mode in ("off",) or not dep.n_moe_layers:
        moe = moe_work
    elif mode == "none":
        moe = moe_work + comm
    else:  # "overlap" and "two-batch": compute hides communication up to the larger of the two
        moe = np.maximum(moe_work, comm)
    out["step_time"] = work[:, ~is_moe].sum(axis=1) + moe.sum(axis=1) + edges
    return {k: np.broadcast_to(np.asarray(v, dtype=float), (nt,)).copy() for k, v in out.items()}

"""Calibrated kernel model: fitted kernel-efficiency cards and pure decode-time functions.

May import: numpy, the standard library, ``mcroute._base`` and ``mcroute._cost.kernel_cards``
(array floor; NOT xarray).

The kernel cards themselves (:class:`KernelCard`, :func:`load_kernel_card`, ...) live in
:mod:`mcroute._cost.kernel_cards` and are re-exported here.

The roofline prices an operator at ``max(flops / F, bytes / BW)``. Measured kernels are slower:
they have launch and latency floors, stream weights below peak bandwidth when few tokens share
them, and reach only part of the tensor-core peak. This module prices the same work with
efficiencies and overheads fitted to public kernel measurements (``models/kernels/*.toml``, written
by :mod:`mcroute._cost.fit_kernels`; the numbers, their source rows and residuals are in
``docs/calibration.md``). Every efficiency is clipped to ``(0, 1]`` and every overhead to ``>= 0``,
and the overlap exponent ``p >= 1``, so each time below is never shorter than the roofline time of
the same work (tested as a property).

Parameter names (each card's ``[params.<name>]``; times in s, bandwidths in B/s)
-------------------------------------------------------------------------------
Expert (grouped / fused MoE) GEMMs, per MoE layer on one GPU::

    t = moe_layer_floor_s
        + sum over touched experts e (m_e > 0) of
          [ moe_expert_overhead_s
            + ( t_mem(m_e)**p + t_cmp(m_e)**p ) ** (1/p) ]          p = moe_overlap_p >= 1
    t_mem(m) = (W + m a) / (bw * eta_s(m))
    eta_s(m) = moe_stream_eta_max * m / (m + moe_stream_m_half)
    t_cmp(m) = m f / (peak_flops * moe_compute_eta)

  with W the expert's weight bytes, a the activation bytes per token, f the FLOPs per token of
  the expert. Each expert is costed from its own load m_e.

Dense GEMM with M = m rows: ``dense_floor_s + (t_mem**p + t_cmp**p)**(1/p)`` with
``t_mem = bytes / (bw * dense_stream_eta)``, ``t_cmp = flops / (peak_flops * dense_compute_eta)``,
``p = dense_overlap_p``; zero when m == 0.

Decode attention:
``max(kv_bytes / (bw * <kind>_eta_bw), flops / (peak_flops * <kind>_eta_compute))``
for kind ``mla`` or ``gqa`` (MHA is GQA with one query head per KV head).

HBM streaming: ``nbytes / (bw * hbm_eta)``. Per-layer fixed overhead: ``layer_overhead_s``.

Expert-parallel dispatch and combine (each separately): with ``V = tokens_per_rank * top_k *
hidden * bytes_per_value`` bytes sent per rank (one copy per selected expert, as DeepEP's
low-latency kernels send) and ``r = max(0, ep - gpus_per_node) / ep`` the share of destination
ranks outside the node::

    t = L + max(V r / (scaleout_bw * a2a_eta_scaleout), V (1 - r) / (nvlink_bw * a2a_eta_scaleup))
    L = a2a_latency_scaleup_s if ep <= gpus_per_node else a2a_latency_scaleout_s

  zero when ep == 1.

Tensor-parallel all-reduce of S bytes on n GPUs of one node:
``allreduce_latency_s + 2 (n - 1) / n * S / (link_bw * allreduce_eta)``; zero when n == 1.

Parameter values broadcast: each may be a float or an array of shape ``(trial,)`` (from
:meth:`KernelCard.draw`); it is aligned with the LEADING axis of the inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mcroute._base.validate import McrouteError
from mcroute._cost.kernel_cards import (
    _LIMITS,
    GENERIC_CARD,
    PARAM_NAMES,
    KernelCard,
    KernelParam,
    kernel_card_for,
    list_kernel_cards,
    load_kernel_card,
)

__all__ = [
    "KernelParam",
    "KernelCard",
    "PARAM_NAMES",
    "list_kernel_cards",
    "load_kernel_card",
    "kernel_card_for",
    "expert_gemm_time",
    "dense_gemm_time",
    "attention_time",
    "hbm_time",
    "layer_overhead",
    "all_to_all_time",
    "all_reduce_time",
    "GENERIC_CARD",
]


# --------------------------------------------------------------------------------------------
# Time functions
# --------------------------------------------------------------------------------------------

def _param(p: Mapping, name: str, ndim: int):
    """Parameter ``name`` as a float or as an array shaped ``(trial, 1, ..., 1)`` of ``ndim``."""
    try:
        v = p[name]
    except KeyError:
        raise McrouteError(f"kernel parameters lack {name!r}") from None
    lo, hi = _LIMITS[name]
    a = np.clip(np.asarray(v, dtype=float), lo, hi)
    if a.ndim == 0:
        return float(a)
    if a.ndim != 1:
        raise McrouteError(f"kernel parameter {name!r} must be a float or a (trial,) array, "
                           f"got shape {a.shape}")
    if ndim == 0:
        raise McrouteError(f"kernel parameter {name!r} is a (trial,) array but the inputs have "
                           "no leading trial axis")
    return a.reshape((-1,) + (1,) * (ndim - 1))


def _nonneg(name: str, x) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    # two reductions (NaN fails both comparisons); this runs on every call of the kernel model
    if a.size and not (a.min() >= 0.0 and a.max() < math.inf):
        raise McrouteError(f"{name} must be finite and >= 0")
    return a


def _pos(name: str, x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise McrouteError(f"{name} must be a positive number, got {x!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise McrouteError(f"{name} must be a positive finite number, got {x!r}")
    return v


def _pnorm(a, b, p):
    """``(a**p + b**p)**(1/p)`` for a, b >= 0 and p >= 1, computed without overflow."""
    hi = np.maximum(a, b)
    lo = np.minimum(a, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(hi > 0, lo / np.where(hi > 0, hi, 1.0), 0.0)
    return hi * (1.0 + ratio ** p) ** (1.0 / p)


def expert_cost(m, weight_bytes, flops_per_token, act_bytes_per_token, *, bw, peak_flops,
                eta_max, m_half, eta_c, p, tau):
    """Time of ONE touched expert with load ``m`` (> 0), without the layer floor [s].

    Shared by :func:`expert_gemm_time` and the fit (which averages it over the binomial law of
    the loads). All arguments broadcast.
    """
    m = np.asarray(m, dtype=float)
    eta_s = eta_max * m / (m + m_half)
    t_mem = (weight_bytes + m * act_bytes_per_token) / (bw * eta_s)
    t_cmp = m * flops_per_token / (peak_flops * eta_c)
    return tau + _pnorm(t_mem, t_cmp, p)


def expert_gemm_time(loads, weight_bytes_per_expert, flops_per_token_per_expert, *, bw,
                     peak_flops, p, act_bytes_per_token=0.0):
    """Calibrated time of the routed-expert GEMMs of one MoE layer on one GPU [s].

    Parameters
    ----------
    loads : array_like, shape (..., n_experts)
        Tokens routed to each expert held by this GPU (0 = expert not touched: costs nothing but
        the layer floor). With per-trial parameters the leading axis is the trial axis.
    weight_bytes_per_expert : float or array broadcasting against ``loads``
        Bytes of one expert's weights (all its projections) [B].
    flops_per_token_per_expert : float or array
        FLOPs one token costs in one expert (2 x parameters for gate/up/down) [FLOP].
    bw : float
        Peak HBM bandwidth of one GPU [B/s].
    peak_flops : float
        Peak dense FLOP/s of one GPU in the GEMM's dtype [FLOP/s].
    p : mapping
        Kernel parameters (:meth:`KernelCard.point` or :meth:`KernelCard.draw`).
    act_bytes_per_token : float, optional
        Activation bytes one token moves through one expert [B] (default 0).

    Returns
    -------
    numpy.ndarray, shape loads.shape[:-1]
        ``moe_layer_floor_s + sum_e [tau + ((t_mem(m_e))**p + (t_cmp(m_e))**p)**(1/p)]`` over
        touched experts (module docstring). Always >= the roofline
        ``sum_e max(m_e f / F, (W + m_e a) / BW)``.

    Examples
    --------
    >>> par = load_kernel_card("hopper").point()
    >>> t = expert_gemm_time([[1, 0, 3]], 44e6, 88e6, bw=3.35e12, peak_flops=1.98e15, p=par)
    >>> bool(t[0] > 2 * 44e6 / 3.35e12)
    True
    """
    loads = _nonneg("loads", loads)
    if loads.ndim < 1:
        raise McrouteError("loads must have an expert axis (shape (..., n_experts))")
    w = _nonneg("weight_bytes_per_expert", weight_bytes_per_expert)
    f = _nonneg("flops_per_token_per_expert", flops_per_token_per_expert)
    a = _nonneg("act_bytes_per_token", act_bytes_per_token)
    bw = _pos("bw", bw)
    pf = _pos("peak_flops", peak_flops)
    nd = loads.ndim
    names = ("moe_stream_eta_max", "moe_stream_m_half", "moe_compute_eta", "moe_overlap_p",
             "moe_expert_overhead_s")
    kw = dict(bw=bw, peak_flops=pf)
    top = int(loads.max()) if loads.size else 0
    lead = max((np.size(p[k]) for k in names if k in p), default=1)
    if (w.ndim == f.ndim == a.ndim == 0 and loads.size and top <= 65536
            and lead * top * 4 <= loads.size and np.array_equal(loads, np.floor(loads))):
        # Integer loads: cost(m) depends on m (and the trial's parameters) only, so tabulate it
        # for m = 0..max once per parameter row and gather (same numbers, far fewer powers).
        ms = np.arange(1, top + 1, dtype=float)[None, :]
        g = expert_cost(ms, w, f, a, eta_max=_param(p, names[0], 2), m_half=_param(p, names[1], 2),
                        eta_c=_param(p, names[2], 2), p=_param(p, names[3], 2),
                        tau=_param(p, names[4], 2), **kw)
        table = np.concatenate([np.zeros((g.shape[0], 1)), g], axis=1)
        idx = loads.astype(np.int64)
        if table.shape[0] == 1:
            per = table[0][idx]
        else:
            if loads.shape[0] != table.shape[0]:
                raise McrouteError(f"per-trial kernel parameters have {table.shape[0]} trials but "
                                   f"loads have {loads.shape[0]} on the leading axis")
            rows = np.arange(table.shape[0]).reshape((-1,) + (1,) * (nd - 1))
            per = table[rows, idx]
        total = per.sum(axis=-1)
    else:
        touched = loads > 0
        m = np.where(touched, loads, 1.0)
        cost = expert_cost(m, w, f, a, eta_max=_param(p, names[0], nd),
                           m_half=_param(p, names[1], nd), eta_c=_param(p, names[2], nd),
                           p=_param(p, names[3], nd), tau=_param(p, names[4], nd), **kw)
        total = np.where(touched, cost, 0.0).sum(axis=-1)
    return total + _param(p, "moe_layer_floor_s", nd - 1)


def dense_gemm_time(m, weight_bytes, flops, *, bw, peak_flops, p, act_bytes=0.0):
    """Calibrated time of a dense GEMM (or a sum of them, charged one floor) with M = m rows [s].

    Parameters
    ----------
    m : array_like
        Rows (tokens) of the GEMM; 0 means the GEMM is not run (time 0).
    weight_bytes, flops : array_like
        Weight bytes [B] and FLOPs [FLOP] of the work (broadcast with ``m``).
    bw, peak_flops : float
        Peak HBM bandwidth [B/s] and dense FLOP/s in the GEMM's dtype of one GPU.
    p : mapping
        Kernel parameters.
    act_bytes : array_like, optional
        Activation bytes in and out [B] (default 0).

    Returns
    -------
    numpy.ndarray
        ``dense_floor_s + (t_mem**p + t_cmp**p)**(1/p)`` (module docstring), 0 where m == 0.

    Examples
    --------
    >>> par = load_kernel_card("hopper").point()
    >>> t = dense_gemm_time(64, 7168 * 2048, 2 * 64 * 7168 * 2048, bw=3.35e12,
    ...                     peak_flops=1.98e15, p=par)
    >>> bool(t > 7168 * 2048 / 3.35e12)
    True
    """
    m = _nonneg("m", m)
    wb = _nonneg("weight_bytes", weight_bytes)
    fl = _nonneg("flops", flops)
    ab = _nonneg("act_bytes", act_bytes)
    bw = _pos("bw", bw)
    pf = _pos("peak_flops", peak_flops)
    shape = np.broadcast_shapes(m.shape, wb.shape, fl.shape, ab.shape)
    nd = len(shape)
    t_mem = (wb + ab) / (bw * _param(p, "dense_stream_eta", nd))
    t_cmp = fl / (pf * _param(p, "dense_compute_eta", nd))
    t = _param(p, "dense_floor_s", nd) + _pnorm(t_mem, t_cmp, _param(p, "dense_overlap_p", nd))
    return np.where(m > 0, t, 0.0)


def attention_time(kind, kv_bytes, flops, *, bw, peak_flops, p):
    """Calibrated decode-attention time [s].

    Parameters
    ----------
    kind : {"mla", "gqa", "mha"}
        Attention kind; ``"mha"`` uses the GQA parameters.
    kv_bytes : array_like
        KV-cache (and query/output) bytes read [B].
    flops : array_like
        Attention FLOPs [FLOP].
    bw, peak_flops : float
        Peak HBM bandwidth [B/s] and FLOP/s of the attention's compute dtype.
    p : mapping
        Kernel parameters.

    Returns
    -------
    numpy.ndarray
        ``max(kv_bytes / (bw eta_bw), flops / (peak_flops eta_compute))``.

    Examples
    --------
    >>> par = load_kernel_card("hopper").point()
    >>> bool(attention_time("mla", 1e9, 1e12, bw=3.35e12, peak_flops=9.9e14, p=par) > 1e9 / 3.35e12)
    True
    """
    k = str(kind).strip().lower()
    if k == "mha":
        k = "gqa"
    if k not in ("mla", "gqa"):
        raise McrouteError(f"attention kind must be one of mla, gqa, mha, got {kind!r}")
    kv = _nonneg("kv_bytes", kv_bytes)
    fl = _nonneg("flops", flops)
    bw = _pos("bw", bw)
    pf = _pos("peak_flops", peak_flops)
    nd = len(np.broadcast_shapes(kv.shape, fl.shape))
    return np.maximum(kv / (bw * _param(p, f"{k}_eta_bw", nd)),
                      fl / (pf * _param(p, f"{k}_eta_compute", nd)))


def hbm_time(nbytes, *, bw, p):
    """Time to stream ``nbytes`` at the achievable HBM bandwidth ``bw * hbm_eta`` [s].

    Examples
    --------
    >>> par = load_kernel_card("hopper").point()
    >>> bool(hbm_time(3.35e12, bw=3.35e12, p=par) >= 1.0)
    True
    """
    b = _nonneg("nbytes", nbytes)
    return b / (_pos("bw", bw) * _param(p, "hbm_eta", b.ndim))


def layer_overhead(p):
    """Per-layer fixed time (kernels the model does not price one by one) [s].

    Returns a float, or a ``(trial,)`` array for drawn parameters.

    Examples
    --------
    >>> layer_overhead(load_kernel_card("hopper").point()) >= 0
    True
    """
    v = p["layer_overhead_s"] if "layer_overhead_s" in p else None
    if v is None:
        raise McrouteError("kernel parameters lack 'layer_overhead_s'")
    a = np.clip(np.asarray(v, dtype=float), 0.0, None)
    return float(a) if a.ndim == 0 else a


def a2a_bytes(tokens_per_rank, hidden, top_k, bytes_per_value):
    """Bytes one rank sends in a dispatch (or receives back in a combine) [B]."""
    return tokens_per_rank * top_k * hidden * bytes_per_value


def all_to_all_time(tokens_per_rank, hidden, top_k, *, ep, gpus_per_node,
                    dispatch_bytes_per_value, combine_bytes_per_value, nvlink_bw, scaleout_bw, p):
    """Calibrated expert-parallel dispatch and combine times [s].

    Parameters
    ----------
    tokens_per_rank : array_like
        Decode tokens on each rank (the leading axis may be the trial axis).
    hidden : int
        Hidden size (values per token).
    top_k : int
        Experts per token.
    ep : int
        Expert-parallel size (ranks), >= 1.
    gpus_per_node : int
        GPUs in one scale-up domain (NVLink / Infinity Fabric), >= 1.
    dispatch_bytes_per_value, combine_bytes_per_value : float
        Bytes per value sent (e.g. 1 + 4/128 for FP8 with one float32 scale per 128 values, 2
        for BF16).
    nvlink_bw, scaleout_bw : float
        Scale-up (one direction) and scale-out (NIC) bandwidth per GPU [B/s].
    p : mapping
        Kernel parameters.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Dispatch and combine time: ``L + max(V r / (scaleout_bw eta_o), V (1-r) / (nvlink_bw
        eta_u))`` (module docstring); zeros when ep == 1.

    Examples
    --------
    >>> par = load_kernel_card("hopper").point()
    >>> d, c = all_to_all_time(128, 7168, 8, ep=256, gpus_per_node=8,
    ...                        dispatch_bytes_per_value=1 + 4 / 128, combine_bytes_per_value=2,
    ...                        nvlink_bw=200e9, scaleout_bw=50e9, p=par)
    >>> 150e-6 < float(d) < 250e-6, 300e-6 < float(c) < 450e-6
    (True, True)
    """
    tok = _nonneg("tokens_per_rank", tokens_per_rank)
    for name, v in (("hidden", hidden), ("top_k", top_k), ("ep", ep),
                    ("gpus_per_node", gpus_per_node)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise McrouteError(f"{name} must be an integer >= 1, got {v!r}")
    db = _pos("dispatch_bytes_per_value", dispatch_bytes_per_value)
    cb = _pos("combine_bytes_per_value", combine_bytes_per_value)
    nv = _pos("nvlink_bw", nvlink_bw)
    so = _pos("scaleout_bw", scaleout_bw)
    nd = tok.ndim
    if ep == 1:
        z = np.zeros(tok.shape)
        return z, z.copy()
    r = max(0, ep - gpus_per_node) / ep
    lat = _param(p, "a2a_latency_scaleup_s" if ep <= gpus_per_node else "a2a_latency_scaleout_s",
                 nd)
    eu = _param(p, "a2a_eta_scaleup", nd)
    eo = _param(p, "a2a_eta_scaleout", nd)
    out = []
    for b in (db, cb):
        v = a2a_bytes(tok, hidden, top_k, b)
        t = lat + np.maximum(v * r / (so * eo), v * (1 - r) / (nv * eu))
        out.append(np.where(tok > 0, t, 0.0) + np.zeros(np.shape(t)))
    return out[0], out[1]


def all_reduce_time(message_bytes, n_gpus, *, link_bw, p):
    """Calibrated tensor-parallel all-reduce time inside one node [s].

    Parameters
    ----------
    message_bytes : array_like
        Bytes of the tensor reduced (per rank) [B].
    n_gpus : int
        Ranks in the all-reduce, >= 1.
    link_bw : float
        Scale-up bandwidth per GPU, one direction [B/s].
    p : mapping
        Kernel parameters.

    Returns
    -------
    numpy.ndarray
        ``allreduce_latency_s + 2 (n-1)/n S / (link_bw allreduce_eta)``; 0 when n == 1 or S == 0.

    Examples
    --------
    >>> par = load_kernel_card("hopper").point()
    >>> bool(all_reduce_time(2**30, 8, link_bw=450e9, p=par) > 2 * 7 / 8 * 2**30 / 450e9)
    True
    """
    s = _nonneg("message_bytes", message_bytes)
    if isinstance(n_gpus, bool) or not isinstance(n_gpus, (int, np.integer)) or n_gpus < 1:
        raise McrouteError(f"n_gpus must be an integer >= 1, got {n_gpus!r}")
    lb = _pos("link_bw", link_bw)
    nd = s.ndim
    if n_gpus == 1:
        return np.zeros(s.shape)
    t = (_param(p, "allreduce_latency_s", nd)
         + 2 * (n_gpus - 1) / n_gpus * s / (lb * _param(p, "allreduce_eta", nd)))
    return np.where(s > 0, t, 0.0)

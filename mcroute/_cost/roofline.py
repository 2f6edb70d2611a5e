"""Roofline arithmetic of decode in SI units: pure functions of arrays (array floor, 3).

May import: numpy, ``mcroute._base``, ``mcroute._cards``.

:func:`roofline_time`, :func:`max_batch_size`, :func:`attended_positions` and
:func:`kv_bytes_per_sequence` take and return SI units (FLOP, B, s, tokens) and broadcast over
arrays; :class:`mcroute._cost.deployment.Deployment` binds them to a model, a GPU and its options.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mcroute._base.validate import MAX_BATCH_SIZE, McrouteError, check_int, check_real
from mcroute._cards.cards import dtype_bytes

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = [
    "roofline_time",
    "max_batch_size",
    "attended_positions",
    "kv_bytes_per_sequence",
    "OPERATORS",
]

#: Operators of a decode step, in the order of :meth:`Deployment.step_breakdown`.
OPERATORS = (
    "embedding",
    "attention_projections",
    "attention_kv",
    "dense_ffn",
    "shared_experts",
    "router",
    "routed_experts",
    "lm_head",
)


def _dtype_bytes(dtype: str) -> float:
    """Bytes per value of a dtype (the cards module owns the dtype table)."""
    return float(dtype_bytes(dtype))


def _nonneg_array(name: str, x) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=float)
    except (TypeError, ValueError, OverflowError):
        a = np.asarray(np.nan)
    if np.any(~np.isfinite(a)) or np.any(a < 0):
        shown = repr(x) if not isinstance(x, int) or abs(x) < 10**30 else "a huge integer"
        raise McrouteError(f"{name} must be finite numbers >= 0, got {shown[:80]}")
    return a


def _out(a: np.ndarray):
    return float(a) if np.ndim(a) == 0 else a


def roofline_time(flops: ArrayLike, bytes_moved: ArrayLike, *, peak_flops: float,
                  mem_bandwidth: float) -> float | np.ndarray:
    """Roofline time of one operator: ``max(flops / peak_flops, bytes_moved / mem_bandwidth)``.

    Parameters
    ----------
    flops : float or array
        Floating-point operations [FLOP], >= 0.
    bytes_moved : float or array
        Bytes read from or written to memory [B], >= 0.
    peak_flops : float
        Usable FLOP rate of the device(s) doing the work [FLOP/s], > 0.
    mem_bandwidth : float
        Usable memory bandwidth of the device(s) [B/s], > 0.

    Returns
    -------
    float or ndarray
        Time [s], broadcast over the inputs.

    Examples
    --------
    >>> roofline_time(4e12, 1e9, peak_flops=1e15, mem_bandwidth=4e12)
    0.004
    """
    f = _nonneg_array("flops", flops)
    b = _nonneg_array("bytes_moved", bytes_moved)
    pf = check_real("peak_flops", peak_flops, minimum=0.0, open_min=True)
    bw = check_real("mem_bandwidth", mem_bandwidth, minimum=0.0, open_min=True)
    return _out(np.maximum(f / pf, b / bw))


def max_batch_size(memory_bytes, weight_bytes, kv_bytes_per_sequence, *, max_batch=None):
    """Largest number of sequences whose KV caches fit next to the weights.

    ``floor((memory_bytes - weight_bytes) / kv_bytes_per_sequence)``, at least 0, at most
    ``max_batch``.

    Parameters
    ----------
    memory_bytes : float or array
        Usable memory [B] (e.g. the usable HBM of all GPUs together).
    weight_bytes : float or array
        Resident weights in that memory [B].
    kv_bytes_per_sequence : float or array
        KV cache of one sequence [B], > 0.
    max_batch : int, optional
        Cap on the batch (e.g. a serving limit); none by default.

    Returns
    -------
    int or ndarray of int64
        Admissible batch size [sequences]; 0 when the weights alone do not fit; at most
        :data:`mcroute._base.validate.MAX_BATCH_SIZE` (2**40).

    Examples
    --------
    >>> max_batch_size(100e9, 40e9, 7e9)
    8
    >>> max_batch_size(100e9, 120e9, 7e9)
    0
    """
    m = _nonneg_array("memory_bytes", memory_bytes)
    w = _nonneg_array("weight_bytes", weight_bytes)
    kv = _nonneg_array("kv_bytes_per_sequence", kv_bytes_per_sequence)
    if np.any(kv <= 0):
        raise McrouteError(f"kv_bytes_per_sequence must be > 0, got {kv_bytes_per_sequence!r}")
    b = _admissible(m, w, kv)
    if max_batch is not None:
        b = np.minimum(b, check_int("max_batch", max_batch, minimum=1, maximum=MAX_BATCH_SIZE))
    b = b.astype(np.int64)
    return int(b) if b.ndim == 0 else b


def _admissible(m, w, kv) -> np.ndarray:
    """``floor(max(m - w, 0) / kv)`` capped at MAX_BATCH_SIZE, as float (inputs trusted)."""
    # Capped at MAX_BATCH_SIZE (far above any real decode batch) so that it fits int64.
    return np.minimum(np.floor(np.maximum(m - w, 0.0) / kv), MAX_BATCH_SIZE)


def attended_positions(context, sliding_window=0):
    """Context positions one token attends to (and that are cached): ``min(L, window)``.

    Parameters
    ----------
    context : int or array
        Context length L [tokens], >= 0.
    sliding_window : int or array
        Attention window [tokens]; 0 means full attention.

    Returns
    -------
    int or ndarray
        [tokens].

    Examples
    --------
    >>> attended_positions(131072, 128), attended_positions(100, 0)
    (128, 100)
    """
    L = np.asarray(context, dtype=np.int64)
    w = np.asarray(sliding_window, dtype=np.int64)
    out = np.where(w > 0, np.minimum(L, w), L)
    return int(out) if out.ndim == 0 else out


def kv_bytes_per_sequence(layers, context, *, kv_bytes, encoder_context=0) -> float:
    """KV cache of one sequence [B]: Σ_layers (kv_values·min(L, window) + cross_kv·L_enc)·kv_bytes.

    Parameters
    ----------
    layers : sequence of LayerSpec
        The decode layers (``kv_values_per_token``, ``sliding_window``,
        ``cross_kv_values_per_token``).
    context : int
        Cached context L [tokens].
    kv_bytes : float
        Bytes per cached value [B] (e.g. 2 for bf16).
    encoder_context : int
        Encoder tokens held in the cross-attention cache [tokens] (encoder-decoder models).
    """
    total = 0
    for ly in layers:
        total += ly.kv_values_per_token * attended_positions(context, ly.sliding_window)
        total += ly.cross_kv_values_per_token * encoder_context
    return float(total) * kv_bytes



def _gb(x: float) -> str:
    return f"{x / 1e9:.4g} GB"

"""The dense twin: a dense model with q · N_active parameters, the MoE's quality-matched twin.

Array floor (3). May import: numpy, ``mcroute._base`` and ``mcroute._cards``.

Science (docs/qs.md): with s = N_active / N_total and q the factor by which a dense model must
exceed the MoE's active parameters to match its quality, the twin has q·N_active = q·s·N_total
parameters. :func:`dense_twin` builds it (two styles); :func:`twin_for` is the same, remembered
per value of (model, q, style), because an uncertain q asks for one twin per draw and repeated
analyses ask for the same twins again.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers

import numpy as np

from mcroute._base.validate import MAX_Q, McrouteError
from mcroute._cards.cards import LayerSpec, ModelSpec, load_model

__all__ = ["DENSE_STYLES", "check_moe", "check_q_value", "dense_twin", "twin_for"]

#: Dense-twin construction styles (see :func:`dense_twin`).
DENSE_STYLES = ("widen", "llama")

# Llama-3.1 family shapes (hidden, layers) used by style="llama" to set the depth for a width:
# 8B 4096/32, 70B 8192/80, 405B 16384/126 (shared/reference/models.md [S17]-[S19]; 8B: Meta
# model card). The FFN is 3.5 × hidden (70B: 28672 = 3.5 × 8192), GQA with 8 KV heads of 128.
_LLAMA_SHAPES = np.array([[4096, 32], [8192, 80], [16384, 126]], dtype=float)
_LLAMA_FFN_RATIO = 3.5
_LLAMA_KV_HEADS = 8
_HEAD_DIM = 128


def check_moe(model) -> ModelSpec:
    if isinstance(model, str):
        model = load_model(model)
    if not isinstance(model, ModelSpec):
        raise McrouteError(f"model must be a model card name or a ModelSpec, got "
                           f"{type(model).__name__}")
    if not model.is_moe:
        raise McrouteError(f"model {model.name!r} is dense; the qs analysis needs a "
                           "Mixture-of-Experts model (its dense twin is built from it)")
    return model


def check_q_value(q, name="q") -> float:
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


def dense_twin(model: str | ModelSpec, q: float, style: str = "widen", *,
               name: str | None = None) -> ModelSpec:
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
    moe = check_moe(model)
    q = check_q_value(q)
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


#: Twins remembered by :func:`twin_for`: an uncertain q asks for one per draw (the main job:
#: 4 models x 256 draws); a twin card takes about 17 KB, so the cache stays under 20 MB.
TWIN_CACHE_SIZE = 1024


@functools.lru_cache(maxsize=TWIN_CACHE_SIZE)
def _cached_twin(moe: ModelSpec, q: float, style: str) -> ModelSpec:
    return dense_twin(moe, q, style)


def twin_for(moe: ModelSpec, q: float, style: str = "widen") -> ModelSpec:
    """:func:`dense_twin` of an already checked MoE card, remembered per value.

    The key is the card's value (``ModelSpec`` is a frozen dataclass: equal cards share their
    twins), the float q and the style; twins are immutable, so sharing them is safe.
    """
    try:
        return _cached_twin(moe, float(q), style)
    except TypeError:  # an unhashable card (e.g. built by hand with list fields)
        return dense_twin(moe, q, style)

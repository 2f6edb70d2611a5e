"""Capacity of a deployment: weights, KV cache, admissible batch, feasibility (array floor, 3).

May import: numpy, ``mcroute._base``, ``mcroute._cost.roofline``.

:class:`MemoryMixin` holds the memory methods of :class:`mcroute._cost.deployment.Deployment`;
they read the per-layer arrays that ``Deployment.__post_init__`` resolves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mcroute._base.units import parse_size
from mcroute._base.validate import MAX_BATCH_SIZE, MAX_CONTEXT, McrouteError, check_int

if TYPE_CHECKING:
    from numpy.typing import ArrayLike
from mcroute._cost.roofline import (
    _admissible,
    _gb,
    attended_positions,
    kv_bytes_per_sequence,
)

#: Integers up to 2**53 are exact in float64: integer byte counts summed below it are exact.
_EXACT = 2.0**53
#: Contexts whose admissible batch one Deployment remembers (scalar queries).
_MEMO_SIZE = 65536


class MemoryMixin:
    """Memory methods of ``Deployment`` (weights, KV cache, admissible batch, feasibility)."""

    # -- capacity ------------------------------------------------------------------------------
    def _component_params(self) -> dict:
        """Resident parameters by component (all layers, all experts)."""
        m = self.model
        emb = float(m.embedding_params)
        return {
            "attention": float(self._attn_params.sum()),
            "dense_ffn": float(self._dense_params.sum()),
            "shared_experts": float(self._shared_params.sum()),
            "router": float(self._router_params.sum()),
            "routed_experts": float((self._E + self.redundant_experts)
                                    * self._expert_params.sum()),
            "embedding": emb,
            "lm_head": float(m.lm_head_params),
            "other_resident": float(getattr(m, "other_resident_params", 0) or 0),
        }

    @property
    def weight_bytes(self) -> float:
        """Resident weights of the whole model, all GPUs together [B].

        One copy of every parameter, plus the replicas of ``redundant_experts``.
        """
        return sum(self._component_params().values()) * self._wb

    @property
    def weight_bytes_per_gpu(self) -> float:
        """Resident weights on the most loaded GPU [B] (computed once, at construction).

        Everything but the routed experts is split evenly over the GPUs, except attention
        weights under ``attention_parallel="data"`` (a full copy on each GPU) and, with
        ``replicate_dense``, the dense FFNs, shared experts, routers, embedding and LM head (a
        full copy on each GPU too); routed experts follow the placement (the GPU of the group
        holding the most expert slots).
        """
        return self._w_gpu

    def _weight_bytes_per_gpu(self) -> float:
        c = self._component_params()
        n = self.n_gpus
        attn = c.pop("attention")
        c.pop("routed_experts")
        if self._replicate_dense:
            other = c.pop("other_resident")
            even = other / n
            attn_gpu = attn + sum(c.values())
        else:
            even = sum(c.values()) / n
            attn_gpu = attn if self.attention_parallel == "data" else attn / n
        exp_gpu = 0.0
        if self._E:
            exp_gpu = (self._experts_per_group.max() * self._expert_params.sum()
                       / self.expert_tensor_parallel)
        return float((even + attn_gpu + exp_gpu) * self._wb)

    @property
    def usable_bytes_per_gpu(self) -> float:
        """HBM usable for weights and KV cache on each GPU, ``hbm_fraction · hbm_bytes`` [B]."""
        return self.hbm_fraction * float(self.hardware.hbm_bytes)

    # -- KV cache: per-layer constants, arrays of contexts ------------------------------------
    def _init_memory(self, put) -> None:
        """Cache the per-model constants of the memory arithmetic (called by ``__post_init__``).

        Byte counts of a cache without the FP8 engine layout are integers; they are summed in
        float64, which is exact (in any order) while every sum stays below 2**53
        (:data:`_EXACT`): ``_kv_exact_max`` bounds the largest context for which that holds.
        Above it (or with non-integral layer values) the sum falls back to the per-layer Python
        loop of the scalar formula.
        """
        vals = np.concatenate([self._kv_values, self._cross_kv])
        ints = bool(np.all(vals == np.floor(vals)))
        per_pos = float(self._kv_values.sum() + self._cross_kv.sum())
        put("_kv_exact_max", _EXACT / max(per_pos, 1.0) if ints else 0.0)
        put("_kv_fp8", bool(np.any(self._kv_token_bytes != self._kv_values * self._kvb)))
        put("_w_gpu", self._weight_bytes_per_gpu())
        put("_fits", self._w_gpu <= self.usable_bytes_per_gpu)
        put("_b_max_memo", {})

    def _encoder_context(self, context):
        return context if self.encoder_context is None else self.encoder_context

    def _fp8_layout(self) -> bool:
        return self._kv_fp8

    def _kv_layer_bytes(self, L):
        """KV cache of one sequence per layer with the engine's KV layout [B].

        ``L``: a context (returns (layer,)) or an int64 array (n,) of contexts (returns
        (n, layer)); the same arithmetic element by element.
        """
        L = np.asarray(L, dtype=np.int64)
        col = L[..., None]
        pos = attended_positions(col, self._window).astype(float)
        enc = np.asarray(self._encoder_context(col), dtype=float)
        return self._kv_token_bytes * pos + self._cross_kv * enc * self._kvb

    def _kv_seq(self, L: np.ndarray) -> np.ndarray:
        """KV cache of one sequence, all layers, at each context of the (n,) int64 array [B]."""
        if self._kv_fp8:
            return self._kv_layer_bytes(L).sum(axis=-1)
        top = max(int(L.max(initial=0)), int(self._encoder_context(0) or 0))
        if top > self._kv_exact_max:  # float64 sums may round: the exact integer formula
            return np.array([kv_bytes_per_sequence(self._layers, int(x), kv_bytes=self._kvb,
                                                   encoder_context=self._encoder_context(int(x)))
                             for x in L], dtype=float)
        col = L[:, None]
        pos = attended_positions(col, self._window).astype(float)
        enc = np.asarray(self._encoder_context(col), dtype=float)
        return (self._kv_values * pos + self._cross_kv * enc).sum(axis=-1) * self._kvb

    def _kv_seq_gpu(self, L: np.ndarray) -> np.ndarray:
        """KV cache of one sequence held by one GPU at each context of the (n,) array [B]."""
        if self.attention_parallel == "data":
            return self._kv_seq(L)
        return (self._kv_share * self._kv_layer_bytes(L)).sum(axis=-1)

    def kv_bytes_per_sequence(self, context: int | str | ArrayLike) -> float | np.ndarray:
        """KV cache of one sequence at context L, all layers (windows and cross-attention) [B].

        Under ``memory_layout="engine"`` with an FP8 cache, the model card's
        ``fp8_kv_bytes_per_token`` (the kernel's layout: values, scales and padding, per layer)
        replaces ``kv_values · 1 B``. ``context``: an int (returns a float) or an array of ints
        (returns an array of that shape, the same values element by element).
        """
        L, shape = _contexts(context)
        return _shaped(self._kv_seq(L), shape, float)

    def kv_bytes_per_sequence_per_gpu(self, context: int | str | ArrayLike) -> float | np.ndarray:
        """KV cache of one sequence held by one GPU at context L [B] (int or array of ints).

        Data-parallel attention: the whole sequence (on the GPU serving it). Tensor-parallel
        attention: Σ_layers share · cache, the share being 1/n under ``memory_layout="ideal"``;
        under ``"engine"`` 1 for MLA (every rank keeps the whole latent) and
        ``ceil(kv_heads / n) / kv_heads`` for GQA/MHA.
        """
        L, shape = _contexts(context)
        return _shaped(self._kv_seq_gpu(L), shape, float)

    def kv_bytes_per_token(self, context: int | str | ArrayLike | None = None
                           ) -> float | np.ndarray:
        """KV cache per context token [B/token].

        Without ``context``: the full-attention rate Σ_layers kv_values · kv_bytes (a sliding
        window layer counted as if it cached everything, no cross-attention). With ``context``
        (int or array of ints): the average over the L tokens, ``kv_bytes_per_sequence(L) / L``.
        """
        if context is None:
            return float(self._kv_values.sum()) * self._kvb
        L, shape = _contexts(context)
        return _shaped(self._kv_seq(L) / L, shape, float)

    def kv_bytes_by_attention(self, context: int | str) -> dict:
        """KV cache of one sequence at context L split by attention kind (``"mla"``, ...) [B]."""
        L = parse_size("context", context, MAX_CONTEXT)
        out = {}
        per = self._kv_layer_bytes(L) if self._kv_fp8 else None
        for i, ly in enumerate(self._layers):
            v = (float(per[i]) if per is not None else
                 kv_bytes_per_sequence((ly,), L, kv_bytes=self._kvb,
                                       encoder_context=self._encoder_context(L)))
            out[ly.attention] = out.get(ly.attention, 0.0) + v
        return out

    def weights_fit(self) -> bool:
        """Whether the weights alone fit in the usable HBM of every GPU."""
        return self._fits

    # -- admissible batch and feasibility, closed form over arrays of contexts ----------------
    def _b_max(self, L: np.ndarray) -> np.ndarray:
        """Admissible batch (int64) at each context of the (n,) int64 array.

        One context at a time (the scalar methods) is remembered per context value: the
        answer is a pure function of the context for a given Deployment.
        """
        if L.size == 1:
            key = int(L[0])
            hit = self._b_max_memo.get(key)
            if hit is None:
                hit = self._b_max_of(L)
                if len(self._b_max_memo) < _MEMO_SIZE:
                    self._b_max_memo[key] = hit
            return hit
        return self._b_max_of(L)

    def _b_max_of(self, L: np.ndarray) -> np.ndarray:
        kv = self._kv_seq(L)
        n = self.n_gpus
        free_gpu = self.usable_bytes_per_gpu
        w_gpu = self._w_gpu
        if np.any(kv <= 0):
            raise McrouteError(f"model {self.model.name!r} caches no KV values; B_max is unbounded")
        # the formula of mcroute._cost.roofline.max_batch_size (inputs valid by construction)
        if self.attention_parallel == "data":
            b = n * _admissible(free_gpu, w_gpu, kv).astype(np.int64)
        elif self._layout == "engine":
            b = _admissible(free_gpu, w_gpu, self._kv_seq_gpu(L)).astype(np.int64)
        else:
            b = _admissible(n * free_gpu, n * w_gpu, kv).astype(np.int64)
        if self.max_batch is not None:
            b = np.minimum(b, self.max_batch)
        b.setflags(write=False)
        return b

    def max_batch_size(self, context: int | str | ArrayLike) -> int | np.ndarray:
        """Admissible batch at context L: most sequences whose KV caches fit next to the weights.

        ``attention_parallel="tensor"``: under ``memory_layout="ideal"`` each GPU holds 1/n of
        every sequence's cache, so B_max = floor(n · (usable − weights on the fullest GPU) /
        kv_bytes_per_sequence(L)), which is ⌊(M_usable − W) / (L·κ)⌋ for even shards; under
        ``"engine"`` B_max = floor((usable − weights on the fullest GPU) /
        kv_bytes_per_sequence_per_gpu(L)) (MLA: every GPU holds every sequence's latent, so about
        1/n of the data-parallel batch). ``"data"``: each GPU holds whole sequences,
        B_max = n · floor((usable − weights per GPU) / kv_bytes_per_sequence(L)).
        Capped by ``max_batch``; 0 when nothing fits. ``context``: an int (returns an int) or an
        array of ints (returns an int64 array of that shape).
        """
        L, shape = _contexts(context)
        return _shaped(self._b_max(L), shape, int)

    def _exceeds(self, L: np.ndarray) -> np.ndarray:
        mc = getattr(self.model, "max_context", 0) or 0
        return (L > mc) if mc else np.zeros(L.shape, dtype=bool)

    def exceeds_max_context(self, context: int | str | ArrayLike) -> bool | np.ndarray:
        """Whether L is above the model card's ``max_context`` (int, or array of ints)."""
        L, shape = _contexts(context)
        return _shaped(self._exceeds(L), shape, bool)

    def _feasibility(self, L: np.ndarray, batch_size):
        """Stage of each of the (n,) contexts, admissible batch and batch sizes (or None).

        Stage 0 feasible, 1 weights do not fit, 2 context above max_context (enforced), 3 no
        sequence fits, 4 batch above the admissible one; the first that applies, in that order.
        """
        stage = np.zeros(L.shape, dtype=np.int8)
        b_max = np.zeros(L.shape, dtype=np.int64)
        if not self._fits:
            stage[:] = 1
            return stage, b_max, None
        if self.enforce_max_context:
            stage[self._exceeds(L)] = 2
        live = stage == 0
        b_max[live] = self._b_max(L[live])
        stage[live & (b_max < 1)] = 3
        b = None
        if batch_size is not None:
            b, _ = _ints("batch_size", batch_size, maximum=MAX_BATCH_SIZE)
            b = np.broadcast_to(b, L.shape) if b.size == 1 else b
            if b.shape != L.shape:
                raise McrouteError(f"batch_size must be one integer or one per context "
                                   f"({L.size}), got {b.size}")
            stage[(stage == 0) & (b > b_max)] = 4
        return stage, b_max, b

    def infeasibility(self, context: int | str | ArrayLike,
                      batch_size: int | str | ArrayLike | None = None) -> str | np.ndarray:
        """Why (context, batch_size) cannot run, or ``""`` if it can.

        ``batch_size=None`` asks whether any batch (B >= 1) fits. ``context`` (and
        ``batch_size``) may be arrays of ints of one shape (or a single batch size): the result
        is then an object array of strings of that shape.
        """
        L, shape = _contexts(context)
        if shape is not None and batch_size is not None and np.ndim(batch_size):
            batch_size = np.ravel(batch_size)
        stage, b_max, b = self._feasibility(L, batch_size)
        why = np.full(L.shape, "", dtype=object)
        for i in np.flatnonzero(stage):
            why[i] = self._reason(int(stage[i]), int(L[i]), int(b_max[i]),
                                  None if b is None else int(b[i]))
        return why[0] if shape is None else why.reshape(shape)

    def _reason(self, stage: int, L: int, b_max: int, b) -> str:
        if stage == 1:
            return (
                f"weights need {_gb(self.weight_bytes_per_gpu)} on the fullest GPU but only "
                f"{_gb(self.usable_bytes_per_gpu)} is usable per GPU (hbm_fraction="
                f"{self.hbm_fraction:g}); use more GPUs or a smaller weight_dtype"
            )
        if stage == 2:
            return f"context {L} exceeds the model's max_context {self.model.max_context}"
        if stage == 3:
            return (
                f"one sequence's KV cache at context {L} needs "
                f"{_gb(self.kv_bytes_per_sequence(L))}, more than is left after the weights"
            )
        return f"batch_size {b} exceeds the admissible {b_max} at context {L}"

    def feasible(self, context: int | str | ArrayLike,
                 batch_size: int | str | ArrayLike | None = None) -> bool | np.ndarray:
        """Whether (context, batch_size) fits; see :meth:`infeasibility` for the reason.

        ``context`` (and ``batch_size``) may be arrays of ints: a bool array of that shape.
        """
        L, shape = _contexts(context)
        if shape is not None and batch_size is not None and np.ndim(batch_size):
            batch_size = np.ravel(batch_size)
        stage, _, _ = self._feasibility(L, batch_size)
        return _shaped(stage == 0, shape, bool)


def _ints(name: str, value, *, maximum: int):
    """``value`` (an int or an array of ints in [1, maximum]): flat int64 array, shape or None.

    The shape is None for a scalar. Size strings (``"128k"``, as the CLI accepts them) are
    parsed by the one size parser, :func:`mcroute._base.units.parse_size`; the first bad
    element is refused with its message, naming ``name``.
    """
    if np.ndim(value) == 0:
        return np.array([parse_size(name, value, maximum)], dtype=np.int64), None
    a = np.asarray(value)
    flat = a.ravel()
    if a.dtype.kind in "iu":
        ok = (flat >= 1) & (flat <= maximum)
    elif a.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(flat) & (flat == np.floor(flat)) & (flat >= 1) & (flat <= maximum)
    else:  # objects, bools, strings: element by element (parse_size says what is wrong)
        return np.array([parse_size(name, v, maximum) for v in flat.tolist()],
                        dtype=np.int64), a.shape
    if not ok.all():
        check_int(name, flat[np.argmin(ok)].item(), minimum=1, maximum=maximum)
    return flat.astype(np.int64), a.shape


def _contexts(context):
    return _ints("context", context, maximum=MAX_CONTEXT)


def _shaped(values: np.ndarray, shape, kind):
    """A Python scalar of ``kind`` for scalar input (shape None), else the array reshaped."""
    return kind(values[0]) if shape is None else np.array(values).reshape(shape)

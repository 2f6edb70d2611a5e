"""Capacity of a deployment: weights, KV cache, admissible batch, feasibility (array floor, 3).

May import: numpy, ``mcroute._base``, ``mcroute._cost.roofline``.

:class:`MemoryMixin` holds the memory methods of :class:`mcroute._cost.deployment.Deployment`;
they read the per-layer arrays that ``Deployment.__post_init__`` resolves.
"""

from __future__ import annotations

import numpy as np

from mcroute._base.validate import MAX_BATCH_SIZE, MAX_CONTEXT, McrouteError, check_int
from mcroute._cost.roofline import (
    _gb,
    attended_positions,
    kv_bytes_per_sequence,
    max_batch_size,
)


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
        """Resident weights on the most loaded GPU [B].

        Everything but the routed experts is split evenly over the GPUs, except attention
        weights under ``attention_parallel="data"`` (a full copy on each GPU) and, with
        ``replicate_dense``, the dense FFNs, shared experts, routers, embedding and LM head (a
        full copy on each GPU too); routed experts follow the placement (the GPU of the group
        holding the most expert slots).
        """
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

    def _encoder_context(self, context: int) -> int:
        return context if self.encoder_context is None else self.encoder_context

    def _fp8_layout(self) -> bool:
        return bool(np.any(self._kv_token_bytes != self._kv_values * self._kvb))

    def _kv_layer_bytes(self, L: int) -> np.ndarray:
        """KV cache of one sequence at context L per layer, with the engine's KV layout [B]."""
        pos = attended_positions(L, self._window).astype(float)
        return (self._kv_token_bytes * pos
                + self._cross_kv * float(self._encoder_context(L)) * self._kvb)

    def kv_bytes_per_sequence(self, context) -> float:
        """KV cache of one sequence at context L, all layers (windows and cross-attention) [B].

        Under ``memory_layout="engine"`` with an FP8 cache, the model card's
        ``fp8_kv_bytes_per_token`` (the kernel's layout: values, scales and padding, per layer)
        replaces ``kv_values · 1 B``.
        """
        L = check_int("context", context, minimum=1, maximum=MAX_CONTEXT)
        if self._fp8_layout():
            return float(self._kv_layer_bytes(L).sum())
        return kv_bytes_per_sequence(self._layers, L, kv_bytes=self._kvb,
                                     encoder_context=self._encoder_context(L))

    def kv_bytes_per_sequence_per_gpu(self, context) -> float:
        """KV cache of one sequence held by one GPU at context L [B].

        Data-parallel attention: the whole sequence (on the GPU serving it). Tensor-parallel
        attention: Σ_layers share · cache, the share being 1/n under ``memory_layout="ideal"``;
        under ``"engine"`` 1 for MLA (every rank keeps the whole latent) and
        ``ceil(kv_heads / n) / kv_heads`` for GQA/MHA.
        """
        L = check_int("context", context, minimum=1, maximum=MAX_CONTEXT)
        if self.attention_parallel == "data":
            return self.kv_bytes_per_sequence(L)
        return float((self._kv_share * self._kv_layer_bytes(L)).sum())

    def kv_bytes_per_token(self, context=None) -> float:
        """KV cache per context token [B/token].

        Without ``context``: the full-attention rate Σ_layers kv_values · kv_bytes (a sliding
        window layer counted as if it cached everything, no cross-attention). With ``context``:
        the average over the L tokens, ``kv_bytes_per_sequence(L) / L``.
        """
        if context is None:
            return float(self._kv_values.sum()) * self._kvb
        L = check_int("context", context, minimum=1, maximum=MAX_CONTEXT)
        return self.kv_bytes_per_sequence(L) / L

    def kv_bytes_by_attention(self, context) -> dict:
        """KV cache of one sequence at context L split by attention kind (``"mla"``, ...) [B]."""
        L = check_int("context", context, minimum=1, maximum=MAX_CONTEXT)
        out = {}
        per = self._kv_layer_bytes(L) if self._fp8_layout() else None
        for i, ly in enumerate(self._layers):
            v = (float(per[i]) if per is not None else
                 kv_bytes_per_sequence((ly,), L, kv_bytes=self._kvb,
                                       encoder_context=self._encoder_context(L)))
            out[ly.attention] = out.get(ly.attention, 0.0) + v
        return out

    def weights_fit(self) -> bool:
        """Whether the weights alone fit in the usable HBM of every GPU."""
        return self.weight_bytes_per_gpu <= self.usable_bytes_per_gpu

    def max_batch_size(self, context) -> int:
        """Admissible batch at context L: most sequences whose KV caches fit next to the weights.

        ``attention_parallel="tensor"``: under ``memory_layout="ideal"`` each GPU holds 1/n of
        every sequence's cache, so B_max = floor(n · (usable − weights on the fullest GPU) /
        kv_bytes_per_sequence(L)), which is ⌊(M_usable − W) / (L·κ)⌋ for even shards; under
        ``"engine"`` B_max = floor((usable − weights on the fullest GPU) /
        kv_bytes_per_sequence_per_gpu(L)) (MLA: every GPU holds every sequence's latent, so about
        1/n of the data-parallel batch). ``"data"``: each GPU holds whole sequences,
        B_max = n · floor((usable − weights per GPU) / kv_bytes_per_sequence(L)).
        Capped by ``max_batch``; 0 when nothing fits.
        """
        kv = self.kv_bytes_per_sequence(context)
        n = self.n_gpus
        free_gpu = self.usable_bytes_per_gpu
        w_gpu = self.weight_bytes_per_gpu
        if kv <= 0:
            raise McrouteError(f"model {self.model.name!r} caches no KV values; B_max is unbounded")
        if self.attention_parallel == "data":
            b = n * max_batch_size(free_gpu, w_gpu, kv)
        elif self._layout == "engine":
            b = max_batch_size(free_gpu, w_gpu, self.kv_bytes_per_sequence_per_gpu(context))
        else:
            b = max_batch_size(n * free_gpu, n * w_gpu, kv)
        if self.max_batch is not None:
            b = min(b, self.max_batch)
        return int(b)

    def exceeds_max_context(self, context) -> bool:
        """Whether L is above the model card's ``max_context``."""
        L = check_int("context", context, minimum=1, maximum=MAX_CONTEXT)
        mc = getattr(self.model, "max_context", 0) or 0
        return bool(mc and L > mc)

    def infeasibility(self, context, batch_size=None) -> str:
        """Why (context, batch_size) cannot run, or ``""`` if it can.

        ``batch_size=None`` asks whether any batch (B >= 1) fits.
        """
        L = check_int("context", context, minimum=1, maximum=MAX_CONTEXT)
        if not self.weights_fit():
            return (
                f"weights need {_gb(self.weight_bytes_per_gpu)} on the fullest GPU but only "
                f"{_gb(self.usable_bytes_per_gpu)} is usable per GPU (hbm_fraction="
                f"{self.hbm_fraction:g}); use more GPUs or a smaller weight_dtype"
            )
        if self.enforce_max_context and self.exceeds_max_context(L):
            return f"context {L} exceeds the model's max_context {self.model.max_context}"
        b_max = self.max_batch_size(L)
        if b_max < 1:
            return (
                f"one sequence's KV cache at context {L} needs "
                f"{_gb(self.kv_bytes_per_sequence(L))}, more than is left after the weights"
            )
        if batch_size is not None:
            b = check_int("batch_size", batch_size, minimum=1, maximum=MAX_BATCH_SIZE)
            if b > b_max:
                return f"batch_size {b} exceeds the admissible {b_max} at context {L}"
        return ""

    def feasible(self, context, batch_size=None) -> bool:
        """Whether (context, batch_size) fits; see :meth:`infeasibility` for the reason."""
        return not self.infeasibility(context, batch_size)

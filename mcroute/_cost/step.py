"""Decode step time of a deployment: roofline bound and calibrated kernels (array floor, 3).

May import: numpy, ``mcroute._kernels``, ``mcroute._base``, ``mcroute._cost.roofline``,
``mcroute._cost.calibrated`` (and, for type hints only, ``mcroute._routing``).

:class:`StepMixin` holds the step-time methods of :class:`mcroute._cost.deployment.Deployment`
(and the expert layout and kernel parameters they use).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from mcroute import _kernels as K
from mcroute._base.rng import generator
from mcroute._base.units import parse_size
from mcroute._base.validate import MAX_BATCH_SIZE, MAX_CONTEXT, McrouteError, check_int
from mcroute._cost.calibrated import (
    CALIBRATION_STREAM,
    ExpertLayout,
    _gather_index,
    accepted_tokens,
    calibrated_step,
    expert_layout,
    group_loads,
    slot_loads,
)
from mcroute._cost.roofline import OPERATORS, _nonneg_array, _out, attended_positions

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from mcroute._routing.distributions import Routing


class StepMixin:
    """Step-time methods of ``Deployment`` (roofline terms, calibrated step, breakdown)."""

    # -- calibrated kernels ----------------------------------------------------------------------
    @property
    def kernel_card_name(self) -> str:
        """Name of the kernel card used (``""`` under roofline kernels)."""
        return self._kcard.name if self._kcard is not None else ""

    @property
    def tokens_per_seq(self) -> int:
        """Tokens each sequence carries through a step, ``1 + mtp_depth``."""
        return 1 + self.mtp_depth

    def kernel_params(self, n_trials: int, entropy: int) -> dict | None:
        """Kernel parameters for ``n_trials`` trials of a run with seed ``entropy``.

        Per-trial draws (``KernelCard.draw``) from the stream keyed by the seed and the fixed
        tag :data:`mcroute._cost.calibrated.CALIBRATION_STREAM` (independent of the routing streams
        and of the point), so that trial i uses the same kernel draw at every point and for
        every deployment of the run; the central values with
        ``calibration_uncertainty=False``; None under roofline kernels.
        """
        if self._kcard is None:
            return None
        if not self.calibration_uncertainty:
            return self._kcard.point()
        return self._kcard.draw(int(n_trials), generator(int(entropy), CALIBRATION_STREAM))

    def expert_layout(self, routing: Routing | None = None) -> ExpertLayout | None:
        """Expert slots and their groups per MoE layer (``ExpertLayout``).

        With ``redundant_experts`` the replicas go to the hottest experts of each layer under
        ``routing`` (its popularity; uniform when None).
        """
        if not self.n_moe_layers:
            return None
        if self._placed is not None:
            return self._placed_layout()
        pop = None
        if self.redundant_experts:
            m = self.n_moe_layers
            pop = (np.full((m, self._E), 1.0 / self._E) if routing is None
                   else routing.popularity(m))
        return expert_layout(self._group, self._ep, self.n_moe_layers, self.redundant_experts,
                             pop)

    def _placed_layout(self):
        """The :class:`~mcroute._cost.calibrated.ExpertLayout` of a given Placement."""
        p, m = self._placed, self.n_moe_layers
        shape = (m, p.slot_expert.shape[1])
        ex, rank, reps, dev = (np.broadcast_to(np.asarray(a, dtype=np.int64), shape).copy()
                               for a in (p.slot_expert, p.slot_rank, p.slot_replicas,
                                         p.slot_device))
        if p.redundant_experts == 0:
            # one slot per expert: index slots by expert (the layout's identity convention)
            order = np.argsort(ex, axis=1, kind="stable")
            dev = np.take_along_axis(dev, order, axis=1)
            ex = np.broadcast_to(np.arange(shape[1], dtype=np.int64), shape).copy()
            rank, reps = np.zeros(shape, dtype=np.int64), np.ones(shape, dtype=np.int64)
        return ExpertLayout(ex, rank, reps, dev, _gather_index(dev, self._ep), self._ep,
                            p.redundant_experts)

    # -- step cost -----------------------------------------------------------------------------
    def weight_bytes_per_step(self, batch_size: int,
                              active_experts: ArrayLike | None = None) -> float | np.ndarray:
        """Weights read from HBM in one step, all GPUs together [B].

        All non-expert weights of the decode layers and the LM head, the B embedding rows
        gathered, and ``active_experts`` (distinct experts touched, per MoE layer: array
        (..., moe_layer)) times each expert's bytes. Under ``attention_parallel="data"`` each of
        the min(n, B) GPUs with sequences reads all attention weights.
        """
        b = check_int("batch_size", batch_size, minimum=1, maximum=MAX_BATCH_SIZE)
        n = self.n_gpus
        attn_copies = min(n, b) if self.attention_parallel == "data" else 1
        if self._replicate_dense:
            fixed = attn_copies * (self._attn_params.sum() + self._dense_params.sum()
                                   + self._shared_params.sum() + self._router_params.sum()
                                   + self._head_params)
        else:
            fixed = (attn_copies * self._attn_params.sum() + self._dense_params.sum()
                     + self._shared_params.sum() + self._router_params.sum() + self._head_params)
        fixed += min(b * self.tokens_per_seq, self.model.vocab) * self.model.hidden
        fixed *= self._wb
        if self.n_moe_layers == 0:
            return float(fixed)
        if active_experts is None:
            raise McrouteError("active_experts (per MoE layer) is needed for an MoE model")
        act = _nonneg_array("active_experts", active_experts)
        if act.shape[-1:] != (self.n_moe_layers,):
            raise McrouteError(f"active_experts must end in the MoE layer axis "
                               f"({self.n_moe_layers}), got shape {act.shape}")
        return _out(fixed + (act * self._expert_params).sum(axis=-1) * self._wb)

    def _terms(self, context: int, batch_size: int, max_tokens=None, max_active=None,
               tokens_per_seq: int = 1) -> dict:
        """Per-operator roofline (flops, bytes, time) on the busiest GPU, summed over layers.

        The roofline time model (the bound): every operator at ``max(FLOPs / F, bytes / BW)``,
        whatever ``kernels`` is. ``max_tokens`` / ``max_active``: (trial, moe_layer) arrays of
        the busiest expert-parallel group's routed tokens and distinct experts (slots).
        ``tokens_per_seq`` (``1 + mtp_depth``) multiplies the FLOPs of every operator (and the
        embedding rows); the KV cache is read once per sequence. The attention core uses the
        FLOP rate of ``attention_compute_dtype``. Returns arrays of shape (trial,) (1 for a
        dense model) under keys ``(operator, "flops"|"bytes"|"time")``, plus ``"all_to_all"``,
        ``"memory_time"``, ``"compute_time"`` and ``"step_time"``.
        """
        L, B = context, batch_size
        r = int(tokens_per_seq)
        n = self.n_gpus
        F, BW, wb, kvb = self._F, self._BW, self._wb, self._kvb
        F_attn = self._F_attn
        if self.attention_parallel == "data":
            seq_gpu = float(math.ceil(B / n))
            attn_share = 1.0
        else:
            seq_gpu = B / n
            attn_share = 1.0 / n
        pos = attended_positions(L, self._window).astype(float)
        enc = float(self._encoder_context(L))
        T = B * r
        per_layer = {
            "attention_projections": (2.0 * (seq_gpu * r) * self._attn_params,
                                      attn_share * self._attn_params * wb),
            "attention_kv": ((seq_gpu * r) * (self._attn_flops * pos + self._cross_flops * enc),
                             seq_gpu * (self._kv_values * pos + self._cross_kv * enc) * kvb),
            "dense_ffn": (2.0 * T * self._dense_params / n, self._dense_params * wb / n),
            "shared_experts": (2.0 * T * self._shared_params / n, self._shared_params * wb / n),
            "router": (2.0 * T * self._router_params / n, self._router_params * wb / n),
        }
        out = {}
        layer_time = np.zeros(len(self._layers))
        mem = comp = 0.0
        for op, (fl, by) in per_layer.items():
            Fop = F_attn if op == "attention_kv" else F
            t = np.maximum(fl / Fop, by / BW)
            layer_time += t
            mem += float((by / BW).sum())
            comp += float((fl / Fop).sum())
            out[(op, "flops")] = np.array([fl.sum()])
            out[(op, "bytes")] = np.array([by.sum()])
            out[(op, "time")] = np.array([t.sum()])
        rows = min(T, self.model.vocab)
        edge = {
            "embedding": (0.0, rows * self.model.hidden * wb / n),
            "lm_head": (2.0 * T * self._head_params / n, self._head_params * wb / n),
        }
        edge_time = 0.0
        for op, (fl, by) in edge.items():
            t = max(fl / F, by / BW)
            edge_time += t
            mem += by / BW
            comp += fl / F
            out[(op, "flops")] = np.array([fl])
            out[(op, "bytes")] = np.array([by])
            out[(op, "time")] = np.array([t])

        dense_part = float(layer_time[~self._is_moe].sum()) + edge_time
        if self.n_moe_layers == 0:
            step = np.array([dense_part])
            out[("routed_experts", "flops")] = np.zeros(1)
            out[("routed_experts", "bytes")] = np.zeros(1)
            out[("routed_experts", "time")] = np.zeros(1)
            out["all_to_all"] = np.zeros(1)
            out["memory_time"] = np.array([mem])
            out["compute_time"] = np.array([comp])
            out["step_time"] = step
            return out
        if max_tokens is None or max_active is None:
            raise McrouteError("an MoE model needs the routed tokens and active experts of the "
                               "busiest expert-parallel group per MoE layer")
        tok = np.atleast_2d(np.asarray(max_tokens, dtype=float))
        act = np.atleast_2d(np.asarray(max_active, dtype=float))
        if tok.shape != act.shape or tok.shape[1] != self.n_moe_layers:
            raise McrouteError(f"max_tokens and max_active must be (trial, {self.n_moe_layers}), "
                               f"got {tok.shape} and {act.shape}")
        tp = self.expert_tensor_parallel
        pe = self._expert_params
        e_fl = 2.0 * tok * pe / tp
        e_by = act * pe * wb / tp
        e_t = np.maximum(e_fl / F, e_by / BW)
        moe_time = layer_time[self._is_moe][None, :] + e_t
        ep = self._ep
        if self._all_to_all != "off" and ep > 1:
            # dispatch + combine of the busiest group's tokens, the off-group share (D-1)/D,
            # split over the group's tp GPUs, each sending at the usable link rate
            a2a = 2.0 * tok * self.model.hidden * self._ab * (ep - 1) / ep / tp / self._link
            overlap = self._all_to_all in ("overlap", "two-batch")
            moe_time = np.maximum(moe_time, a2a) if overlap else moe_time + a2a
        else:
            a2a = np.zeros_like(tok)
        out[("routed_experts", "flops")] = e_fl.sum(axis=1)
        out[("routed_experts", "bytes")] = e_by.sum(axis=1)
        out[("routed_experts", "time")] = e_t.sum(axis=1)
        out["all_to_all"] = a2a.sum(axis=1)
        out["memory_time"] = mem + (e_by / BW).sum(axis=1)
        out["compute_time"] = comp + (e_fl / F).sum(axis=1)
        out["step_time"] = dense_part + moe_time.sum(axis=1)
        return out

    def _group_stats(self, counts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Busiest group's tokens and active experts, and all active experts, per MoE layer."""
        c = np.asarray(counts)
        if c.ndim != 2 or c.shape != (self.n_moe_layers, self._E) or not (
                np.issubdtype(c.dtype, np.integer)):
            raise McrouteError(f"counts must be an integer array (moe_layer, expert) of shape "
                               f"({self.n_moe_layers}, {self._E}), got {c.shape}")
        if np.any(c < 0):
            raise McrouteError("counts must be >= 0")
        ep = self._ep
        tok = np.stack([np.bincount(self._group, weights=row, minlength=ep) for row in c])
        act = np.stack([np.bincount(self._group, weights=(row > 0).astype(float), minlength=ep)
                        for row in c])
        return tok.max(axis=1), act.max(axis=1), (c > 0).sum(axis=1)

    def _evaluate(self, context: int, batch_size: int, counts=None, params=None,
                  layout=None, n_trials: int = 1) -> dict:
        """Step times of a block of trials: the chosen kernels and the roofline bound.

        ``counts``: int (trial, moe_layer, expert) routed tokens (for ``batch_size ·
        tokens_per_seq`` tokens), None for a dense model. ``params``: kernel parameters
        (:meth:`kernel_params`, sliced to the block) or None under roofline kernels. ``layout``:
        :meth:`expert_layout`. Returns (trial,) arrays: ``step_time`` (chosen kernels),
        ``step_time_bound`` (roofline), ``memory_time``, ``compute_time`` (roofline terms),
        ``all_to_all``, ``active`` (touched expert slots, (trial, moe_layer)) and
        ``("op", name)`` per-operator times of the chosen kernels.
        """
        r = self.tokens_per_seq
        gl = None
        active = None
        if self.n_moe_layers:
            c = np.asarray(counts)
            nt = c.shape[0]
            if layout is None:
                layout = self.expert_layout()
            if self._calibrated or self.redundant_experts or self._placed is not None:
                slots = slot_loads(c, layout)
                gl = group_loads(slots, layout)
                gsum = gl.sum(axis=-1)
                tok = gsum.max(axis=-1).astype(float)
                act = (gl > 0).sum(axis=-1).max(axis=-1).astype(float)
                active = (slots > 0).sum(axis=-1)
            else:
                active, _, tok, act, _ = K.count_stats(c, self._group, self._ep,
                                                       batch_size * r * self._k)
            bound = self._terms(context, batch_size, tok, act, tokens_per_seq=r)
        else:
            nt = int(n_trials)
            bound = self._terms(context, batch_size, tokens_per_seq=r)
        out = {"step_time_bound": np.broadcast_to(bound["step_time"], (nt,)),
               "memory_time": np.broadcast_to(bound["memory_time"], (nt,)),
               "compute_time": np.broadcast_to(bound["compute_time"], (nt,)),
               "active": active}
        if not self._calibrated:
            out["step_time"] = out["step_time_bound"]
            out["all_to_all"] = np.broadcast_to(bound["all_to_all"], (nt,))
            for op in OPERATORS:
                out[("op", op)] = np.broadcast_to(bound[(op, "time")], (nt,))
            return out
        if params is None:
            raise McrouteError("calibrated kernels need kernel parameters (kernel_params)")
        cal = calibrated_step(self, context, batch_size, gl, params, n_trials=nt,
                              tokens_per_seq=r)
        out["step_time"] = cal["step_time"]
        out["all_to_all"] = cal["all_to_all"]
        for op in (*OPERATORS, "all_reduce", "overhead"):
            out[("op", op)] = cal[op]
        return out

    def step_breakdown(self, context: int | str, batch_size: int | str,
                       counts: ArrayLike | None = None, *,
                       routing: Routing | None = None) -> dict:
        """Cost of one decode step by operator, on the busiest GPU, summed over layers.

        Parameters
        ----------
        context : int
            Context L [tokens].
        batch_size : int
            Sequences B in the step (``1 + mtp_depth`` tokens each).
        counts : array of int (moe_layer, expert), optional
            Tokens routed to each expert in each MoE layer (required for an MoE model), e.g.
            one trial of ``mcroute.sample_counts`` for ``B · (1 + mtp_depth)`` tokens.
        routing : Routing, optional
            Only with ``redundant_experts``: whose hottest experts get the replicas (default
            uniform).

        Returns
        -------
        dict
            ``{operator: {"flops" [FLOP], "bytes" [B], "time" [s], "time_bound" [s]}}`` for
            every operator in :data:`OPERATORS`: FLOPs and bytes of the roofline, ``time`` under
            the chosen kernels (calibrated kernels: central parameter values) and
            ``time_bound`` the roofline ``max(flops / F, bytes / BW)`` per layer summed over
            layers; and ``"all_to_all"`` [s] (calibrated: dispatch + combine before overlap),
            ``"memory_time"`` and ``"compute_time"`` [s] (sums of the roofline byte and FLOP
            terms of all operators), ``"step_time"`` and ``"step_time_bound"`` [s],
            ``"throughput"`` and ``"throughput_bound"`` [accepted tokens/s, at the central
            acceptance] and ``"weight_bytes_per_step"`` [B] (all GPUs). Under calibrated kernels
            also ``"all_reduce"`` and ``"overhead"`` [s].
        """
        L = parse_size("context", context, MAX_CONTEXT)  # "128k" as the CLI accepts it
        B = parse_size("batch_size", batch_size, MAX_BATCH_SIZE)
        tok = act = active = None
        if self.n_moe_layers:
            if counts is None:
                raise McrouteError("counts (moe_layer, expert) are needed for an MoE model")
            tok, act, active = self._group_stats(counts)
            tok, act = tok[None, :], act[None, :]
        r = self.tokens_per_seq
        if self.redundant_experts or self._calibrated or self._placed is not None:
            c = None if counts is None else np.asarray(counts)[None]
            ev = self._evaluate(L, B, c, self._kcard.point() if self._calibrated else None,
                                self.expert_layout(routing))
            if ev["active"] is not None:
                active = ev["active"][0]
            # the roofline FLOPs and bytes of the same slots
            if self.n_moe_layers:
                lay = self.expert_layout(routing)
                gl = group_loads(slot_loads(c, lay), lay)
                tok = gl.sum(axis=-1).max(axis=-1).astype(float)
                act = (gl > 0).sum(axis=-1).max(axis=-1).astype(float)
        terms = self._terms(L, B, tok, act, tokens_per_seq=r)
        out = {op: {q: float(terms[(op, q)][0]) for q in ("flops", "bytes", "time")}
               for op in OPERATORS}
        for op in OPERATORS:
            out[op]["time_bound"] = out[op]["time"]
        for key in ("all_to_all", "memory_time", "compute_time", "step_time"):
            out[key] = float(terms[key][0])
        out["step_time_bound"] = out["step_time"]
        if self._calibrated:
            for op in OPERATORS:
                out[op]["time"] = float(ev[("op", op)][0])
            out["all_reduce"] = float(ev[("op", "all_reduce")][0])
            out["overhead"] = float(ev[("op", "overhead")][0])
            out["all_to_all"] = float(ev["all_to_all"][0])
            out["step_time"] = float(ev["step_time"][0])
        acc = self.accepted_tokens_point
        out["throughput"] = B * acc / out["step_time"]
        out["throughput_bound"] = B * acc / out["step_time_bound"]
        out["weight_bytes_per_step"] = float(self.weight_bytes_per_step(B, active))
        return out

    @property
    def accepted_tokens_point(self) -> float:
        """Accepted tokens per sequence per step at the central acceptance (1 without MTP)."""
        a = self._acceptance
        if isinstance(a, tuple):  # Beta(A, B): its mean
            a = a[1] / (a[1] + a[2])
        return float(accepted_tokens(a, self.mtp_depth))

    def step_time(self, context: int | str, batch_size: int | str,
                  max_tokens: ArrayLike | None = None,
                  max_active: ArrayLike | None = None) -> np.ndarray:
        """Roofline (bound) decode step time [s] per trial, from the busiest group's statistics.

        The roofline model whatever ``kernels`` is (the calibrated time needs the per-expert
        loads: use :meth:`step_breakdown` or :func:`mcroute.decode_throughput`).
        ``max_tokens`` and ``max_active`` are (trial, moe_layer) arrays (or (moe_layer,)); both
        are ignored (may be None) for a dense model. Returns an array (trial,) (length 1 for a
        dense model).
        """
        L = parse_size("context", context, MAX_CONTEXT)  # "128k" as the CLI accepts it
        B = parse_size("batch_size", batch_size, MAX_BATCH_SIZE)
        return self._terms(L, B, max_tokens, max_active,
                           tokens_per_seq=self.tokens_per_seq)["step_time"]

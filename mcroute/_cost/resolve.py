"""Construction of a Deployment: options checked from their declarations, defaults resolved (3).

May import: numpy, ``mcroute._base``, ``mcroute._cards``, ``mcroute._routing`` and the other
modules of ``mcroute._cost`` below :mod:`mcroute._cost.deployment`.

:class:`ResolveMixin` holds the steps of ``Deployment.__post_init__``: each declared option is
checked by its :class:`~mcroute._base.options.Option` (type, range, choices); what remains here
are the rules that tie options together or to the cards (expert-parallel degree and placement,
dtypes and rates of the hardware, the KV layout, the kernel card), one method per concern.
Resolved values are stored as private attributes (``_ep``, ``_layout``, ``_wb``, ...).
"""

from __future__ import annotations

import math

import numpy as np

from mcroute._base.options import SIMPLE_TYPES, options_of
from mcroute._base.validate import (
    BANDWIDTH_RANGE,
    PEAK_FLOPS_RANGE,
    McrouteError,
    check_int,
)
from mcroute._cards.cards import load_hardware, load_model
from mcroute._cost.calibrated import balanced_placement, parse_acceptance
from mcroute._cost.calibration import kernel_card_for, load_kernel_card
from mcroute._cost.roofline import _dtype_bytes
from mcroute._routing.placement import Placement
from mcroute._routing.sampling import device_map

#: Scale-up domain assumed for a HardwareSpec without ``gpus_per_node`` (hand-built specs; every
#: shipped card gives it).
_DEFAULT_GPUS_PER_NODE = 8

#: Range of any rate (FLOP/s, B/s) a Deployment accepts from a HardwareSpec: from one per second
#: (below that the roofline times of real models overflow) to the top of the card range.
_MIN_RATE = 1.0
_MAX_RATE = max(PEAK_FLOPS_RANGE[1], BANDWIDTH_RANGE[1])

_MODEL_ATTRS = ("decode_layers", "hidden", "vocab", "embedding_params", "lm_head_params")
_HARDWARE_ATTRS = ("hbm_bytes", "hbm_bandwidth", "peak_flops")
#: Per-layer parameter counts and values (float arrays, no bytes yet), by LayerSpec attribute.
_LAYER_ARRAYS = {
    "_attn_params": "attn_params", "_kv_values": "kv_values_per_token",
    "_attn_flops": "attn_flops_per_token_per_ctx", "_cross_kv": "cross_kv_values_per_token",
    "_dense_params": "dense_ffn_params", "_shared_params": "shared_expert_params",
    "_router_params": "router_params",
}


class ResolveMixin:
    """The steps of ``Deployment.__post_init__`` (see the module docstring)."""

    def _resolve(self, put) -> None:
        """Check every option and resolve every default; ``put(name, value)`` stores."""
        self._resolve_cards(put)
        for opt in options_of(type(self)):
            if opt.type in SIMPLE_TYPES:
                put(opt.name, opt.check(getattr(self, opt.name)))
        cal = self.kernels == "calibrated"
        put("_calibrated", cal)
        self._resolve_dtypes(put, cal)
        put("_all_to_all", self._resolve_all_to_all(cal))
        self._resolve_layout(put, cal)
        self._resolve_mtp(put)
        layers = tuple(self.model.decode_layers)
        if not layers:
            raise McrouteError(f"model {self.model.name!r} has no decode layers")
        self._resolve_experts(put, layers)
        self._resolve_layers(put, layers)
        self._resolve_rates(put)
        self._resolve_links(put, cal)
        self._resolve_kv_layout(put, layers)
        put("_kcard", self._resolve_kernel_card(cal))
        if not (self._F > 0 and self._BW > 0 and float(self.hardware.hbm_bytes) > 0):
            raise McrouteError(
                f"hardware {self.hardware.name!r} must have positive HBM size, bandwidth and "
                "FLOP/s"
            )

    def _resolve_cards(self, put) -> None:
        if isinstance(self.model, str):
            put("model", load_model(self.model))
        if isinstance(self.hardware, str):
            put("hardware", load_hardware(self.hardware))
        if not all(hasattr(self.model, a) for a in _MODEL_ATTRS):
            raise McrouteError(
                f"model must be a ModelSpec (or a card name), got {type(self.model).__name__}")
        if not all(hasattr(self.hardware, a) for a in _HARDWARE_ATTRS):
            raise McrouteError("hardware must be a HardwareSpec (or a card name), got "
                               f"{type(self.hardware).__name__}")

    def _resolve_dtypes(self, put, cal: bool) -> None:
        """Known dtypes; activation, compute and attention dtypes resolved."""
        wd = self.weight_dtype
        put("_weight_dtype_given", wd)
        if wd is None:  # the dtype the model's weights were released in
            wd = getattr(self.model, "release_dtype", None) or "bf16"
            put("weight_dtype", wd)
        for name in ("weight_dtype", "kv_dtype", "activation_dtype", "attention_compute_dtype"):
            if getattr(self, name) is not None:
                _dtype_bytes(getattr(self, name))  # raises listing the known dtypes
        ad = self.activation_dtype
        if ad is None:
            ad = "fp8" if cal and _dtype_bytes(wd) <= 1 else "bf16"
        put("_activation_dtype", ad)
        cd = self.compute_dtype
        if cd is None:
            known = getattr(self.hardware, "flops", {}) or {}
            cd = wd if wd in known else "bf16"
        put("_compute_dtype", cd)
        acd = self.attention_compute_dtype
        put("_attention_dtype", ("bf16" if cal else cd) if acd is None else acd)

    def _resolve_all_to_all(self, calibrated: bool) -> str:
        """One all-to-all mode from ``all_to_all`` and the two older booleans (which must agree)."""
        mode, charge, overlap = self.all_to_all, self.charge_all_to_all, self.overlap_all_to_all
        if mode is not None:
            clash = ((charge is not None and charge != (mode != "off"))
                     or (overlap is not None and mode != "off"
                         and overlap != (mode in ("overlap", "two-batch"))))
            if clash:
                raise McrouteError(
                    f"all_to_all={mode!r} contradicts charge_all_to_all={charge!r} / "
                    f"overlap_all_to_all={overlap!r}; give all_to_all alone")
            return mode
        if charge is not None:
            if not charge:
                return "off"
            return "none" if overlap is False else "overlap"
        if not calibrated:
            return "off"
        return "overlap" if overlap else "none"

    def _resolve_layout(self, put, cal: bool) -> None:
        ml = self.memory_layout
        if ml is None:
            ml = "engine" if cal else "ideal"
        put("_layout", ml)
        rd = self.replicate_dense
        if rd is None:
            rd = ml == "engine" and self.attention_parallel == "data"
        elif rd and self.attention_parallel != "data":
            raise McrouteError("replicate_dense=True needs attention_parallel='data' (under "
                               "tensor-parallel attention the dense layers are split)")
        put("_replicate_dense", bool(rd))

    def _resolve_mtp(self, put) -> None:
        if self.mtp_acceptance is None:
            if self.mtp_depth > 0:
                raise McrouteError("mtp_acceptance is required when mtp_depth > 0 (a number in "
                                   "[0, 1] or 'beta:A,B')")
            put("_acceptance", 0.0)
        else:
            put("_acceptance", parse_acceptance(self.mtp_acceptance))

    # -- experts -------------------------------------------------------------------------------
    def _resolve_experts(self, put, layers) -> None:
        """Expert-parallel degree, the placement of the experts and the slots per group."""
        n = self.n_gpus
        moe = tuple(ly for ly in layers if ly.ffn == "moe")
        ep = n if self.expert_parallel is None else check_int(
            "expert_parallel", self.expert_parallel, minimum=1, maximum=n)
        if n % ep:
            raise McrouteError(f"expert_parallel must divide n_gpus={n}, got {ep}")
        put("_ep", ep)
        placed = self.expert_placement if isinstance(self.expert_placement, Placement) else None
        self._check_redundant(put, placed, moe)
        if not moe:
            if self.expert_placement is not None:
                raise McrouteError("expert_placement is given but the model has no MoE layers")
            put("_placed", None)
            put("_group", np.zeros(0, dtype=np.int64))
            put("_experts_per_group", np.zeros(ep, dtype=np.int64))
            put("_E", 0)
            put("_k", 0)
            return
        es = {ly.n_experts for ly in moe}
        ks = {ly.top_k for ly in moe}
        if len(es) != 1 or len(ks) != 1:
            raise McrouteError(
                f"model {self.model.name!r}: MoE layers disagree on n_experts {sorted(es)} "
                f"or top_k {sorted(ks)}; one routing cannot describe them"
            )
        e_count = es.pop()
        if ep > e_count + self.redundant_experts:
            raise McrouteError(
                f"expert_parallel={ep} exceeds the expert slots ({e_count} experts + "
                f"{self.redundant_experts} redundant); some groups would hold no expert")
        group, slot_group = self._expert_groups(e_count, ep, placed, len(moe))
        if placed is None:
            put("expert_placement",
                None if self.expert_placement is None else tuple(int(g) for g in group))
        put("_placed", placed)
        put("_group", group)
        put("_experts_per_group", self._slots_per_group(group, slot_group, e_count, ep))
        put("_E", e_count)
        put("_k", ks.pop())

    def _check_redundant(self, put, placed, moe) -> None:
        if placed is not None:
            if self.redundant_experts not in (0, placed.redundant_experts):
                raise McrouteError(
                    f"redundant_experts={self.redundant_experts} disagrees with the placement's "
                    f"redundant_experts={placed.redundant_experts}; give 0 or the same number")
            put("redundant_experts", placed.redundant_experts)
        if self.redundant_experts and not moe:
            raise McrouteError("redundant_experts is given but the model has no MoE layers")
        if placed is None and self.redundant_experts and self.expert_placement is not None:
            raise McrouteError("redundant_experts and expert_placement cannot be combined: "
                               "with redundant experts the placement is rebuilt per layer "
                               "(EPLB-style)")

    def _expert_groups(self, e_count: int, ep: int, placed, n_moe: int):
        """Group of each expert, and the group of each slot per MoE layer (Placement) or None."""
        if self.expert_placement is None:
            return balanced_placement(e_count, ep), None
        if placed is not None:
            slot_group = self._check_placement(placed, e_count, ep, n_moe)
            # per-expert group (the device of replica 0, first layer): the roofline per-expert
            # statistics; costing uses the slots of every layer
            first = placed.slot_rank[0] == 0
            group = np.empty(e_count, dtype=np.int64)
            group[placed.slot_expert[0][first]] = slot_group[0][first]
            return group, slot_group
        try:
            return device_map(e_count, ep, self.expert_placement), None
        except McrouteError as exc:
            raise McrouteError(
                f"expert placement: {exc} (n_experts={e_count}, expert_parallel={ep})"
            ) from None

    def _slots_per_group(self, group, slot_group, e_count: int, ep: int) -> np.ndarray:
        """Expert slots held by each group (the most over the MoE layers, for a Placement)."""
        if slot_group is not None:
            return np.stack([np.bincount(row, minlength=ep) for row in slot_group]).max(axis=0)
        if self.redundant_experts:
            s = e_count + self.redundant_experts
            per_group = np.full(ep, s // ep, dtype=np.int64)
            per_group[: s % ep] += 1
            return per_group
        return np.bincount(group, minlength=ep)

    @staticmethod
    def _check_placement(p, e_count, ep, n_moe) -> np.ndarray:
        """Validate a :class:`~mcroute.Placement`; its slot devices (moe_layer, slot)."""
        if p.n_devices != ep:
            raise McrouteError(f"expert_placement: the Placement is for n_devices={p.n_devices} "
                               f"but the expert-parallel degree is {ep}")
        if p.n_experts != e_count:
            raise McrouteError(f"expert_placement: the Placement has n_experts={p.n_experts} "
                               f"but the model has {e_count} routed experts per layer")
        if p.n_layers not in (1, n_moe):
            raise McrouteError(f"expert_placement: the Placement has {p.n_layers} layers; "
                               f"give 1 (used for every MoE layer) or {n_moe} (the MoE layers)")
        return np.broadcast_to(np.asarray(p.slot_device, dtype=np.int64),
                               (n_moe, p.slot_device.shape[1]))

    # -- layers, rates, links, KV layout, kernel card ------------------------------------------
    def _resolve_layers(self, put, layers) -> None:
        """Per-layer arrays, in parameter counts and values (no bytes yet)."""
        moe = [ly for ly in layers if ly.ffn == "moe"]
        put("_layers", layers)
        put("_is_moe", np.array([ly.ffn == "moe" for ly in layers]))
        for key, attr in _LAYER_ARRAYS.items():
            put(key, np.array([getattr(ly, attr) for ly in layers], dtype=float))
        put("_window", np.array([ly.sliding_window for ly in layers], dtype=np.int64))
        put("_cross_flops", np.array(
            [getattr(ly, "cross_attn_flops_per_token_per_ctx", 0) for ly in layers], dtype=float))
        put("_expert_params", np.array([ly.expert_params for ly in moe], dtype=float))
        for name in (*_LAYER_ARRAYS, "_cross_flops", "_expert_params"):
            if np.any(getattr(self, name) < 0):
                raise McrouteError(f"model {self.model.name!r}: negative {name[1:]} in a layer")
        if np.any(self._window < 0):
            raise McrouteError(f"model {self.model.name!r}: negative sliding_window in a layer")
        head = self.model.lm_head_params or self.model.embedding_params
        put("_head_params", float(head))

    def _resolve_rates(self, put) -> None:
        """Bytes per value of each dtype and the usable FLOP/s and bandwidth per GPU."""
        cd, acd = self._compute_dtype, self._attention_dtype
        put("_wb", _dtype_bytes(self.weight_dtype))
        put("_kvb", _dtype_bytes(self.kv_dtype))
        put("_ab", _dtype_bytes(self._activation_dtype))
        # dispatch in the activation dtype (8-bit: plus one float32 scale per 128 values, as
        # DeepEP's FP8 dispatch); combine and all-reduces in bf16 or the activation dtype if wider
        put("_dispatch_b", self._ab + (4.0 / 128.0 if self._ab <= 1 else 0.0))
        put("_combine_b", max(2.0, self._ab))
        peak, bw = float(self.hardware.peak_flops(cd)), float(self.hardware.hbm_bandwidth)
        peak_attn = float(self.hardware.peak_flops(acd))
        # Card files are held to the realistic PEAK_FLOPS_RANGE / BANDWIDTH_RANGE when loaded;
        # a HardwareSpec built by hand (toy cards in tests) only needs rates of at least one per
        # second, so that no roofline time overflows to inf.
        for what, v in ((f"peak FLOP/s ({cd})", peak), ("HBM bandwidth", bw),
                        (f"peak FLOP/s ({acd})", peak_attn)):
            if not (math.isfinite(v) and _MIN_RATE <= v <= _MAX_RATE):
                raise McrouteError(
                    f"hardware {self.hardware.name!r}: {what} per GPU must be in "
                    f"[{_MIN_RATE:g}, {_MAX_RATE:g}], got {v:g}")
        put("_F", peak * self.flops_efficiency)
        put("_F_attn", peak_attn * self.flops_efficiency)
        put("_BW", bw * self.bandwidth_efficiency)
        for what, v, eff in (("usable FLOP/s", self._F, "flops_efficiency"),
                             ("usable HBM bandwidth", self._BW, "bandwidth_efficiency")):
            if v < _MIN_RATE:
                raise McrouteError(
                    f"{eff}={getattr(self, eff):g} leaves a {what} of {v:g} per GPU, below "
                    f"{_MIN_RATE:g}; give an efficiency of a sensible size")

    def _resolve_links(self, put, cal: bool) -> None:
        """Interconnect: NVLink inside a node of gpus_per_node GPUs, scale-out across nodes."""
        n, ep = self.n_gpus, self._ep
        link = float(getattr(self.hardware, "interconnect_bandwidth", 0.0) or 0.0)
        if self._all_to_all != "off" and ep > 1 and link <= 0:
            raise McrouteError(
                f"charging the expert all-to-all needs the interconnect bandwidth of "
                f"{self.hardware.name!r}, which the card does not give (all_to_all='off')"
            )
        put("_link", link * self.interconnect_efficiency)
        gpn = int(getattr(self.hardware, "gpus_per_node", 0) or _DEFAULT_GPUS_PER_NODE)
        scale_out = float(getattr(self.hardware, "scaleout_bandwidth", 0.0) or 0.0)
        put("_gpus_per_node", gpn)
        put("_nvlink", self._link)
        put("_scaleout", scale_out * self.interconnect_efficiency)
        put("_scaleout_latency", float(getattr(self.hardware, "scaleout_latency", 0.0) or 0.0))
        if cal and n > 1 and link <= 0:
            raise McrouteError(
                f"calibrated kernels charge tensor-parallel and expert communication, which "
                f"needs the interconnect bandwidth of {self.hardware.name!r}; the card does not "
                "give it (use kernels='roofline')")
        if cal and n > gpn and scale_out <= 0:
            raise McrouteError(
                f"{n} GPUs span more than one node of {gpn} ({self.hardware.name!r}), but the "
                "card gives no scale-out bandwidth (scaleout_bandwidth_bytes_per_s)")

    def _resolve_kv_layout(self, put, layers) -> None:
        """Attention kinds, KV bytes per cached token of each layer, and cache shares per GPU.

        The share is that of each sequence's cache one GPU keeps under tensor-parallel attention.
        """
        n, ml = self.n_gpus, self._layout
        put("_attn_kind_mla", np.array([ly.attention == "mla" for ly in layers]))
        kvtok = self._kv_values * self._kvb
        fp8_layout = getattr(self.model, "fp8_kv_bytes_per_token", None)
        if ml == "engine" and fp8_layout and self._kvb == 1:
            kvtok = np.where(self._kv_values > 0, float(fp8_layout), 0.0)
        put("_kv_token_bytes", kvtok)
        share = np.full(len(layers), 1.0 / n)
        if ml == "engine":
            for i, ly in enumerate(layers):
                kvh = int(getattr(ly, "n_kv_heads", 0) or 0)
                if ly.attention == "mla":
                    share[i] = 1.0
                elif kvh > 0:
                    share[i] = math.ceil(kvh / n) / kvh
        put("_kv_share", share)
        # Activation bytes one token moves through one expert (the fit's vLLM fused-MoE
        # convention: x in, gate/up out and activation in bf16, w2 in/out), N = P_e / (3 h).
        h = float(self.model.hidden)
        n_int = self._expert_params / (3.0 * h)
        ab_e = 1.0 if self._wb <= 1 else 2.0
        put("_expert_act_bytes", h * ab_e + 8.0 * n_int + 2.0 * n_int * ab_e + 2.0 * h)

    def _resolve_kernel_card(self, cal: bool):
        if not cal:
            return None
        if self.kernel_card is None:
            return kernel_card_for(self.hardware)
        return load_kernel_card(self.kernel_card)

"""Roofline cost model of decode: HBM capacity and step time of a deployment (array floor, 3).

May import: numpy, ``mcroute._base``, ``mcroute._cards``, ``mcroute._routing`` and the other
modules of ``mcroute._cost``.

The pure functions live in :mod:`mcroute._cost.roofline` (re-exported here), the memory methods
in :mod:`mcroute._cost.memory` and the step-time methods in :mod:`mcroute._cost.step`, as mixins
that :class:`Deployment` inherits. Everything here is deterministic. The pure functions
(:func:`roofline_time`, :func:`max_batch_size`, :func:`attended_positions`,
:func:`kv_bytes_per_sequence`) take and return SI units. :class:`Deployment` binds a model
card, a hardware card and a GPU count together with
every modelling assumption as an explicit, documented, overridable field, and evaluates the
capacity (weights, KV cache, admissible batch) and the decode step time given the statistics of
one routed microbatch (busiest expert-parallel group's tokens and distinct experts per MoE layer).
Monte Carlo over routing is done one layer up, in :func:`mcroute.decode_throughput`.
docs/assumptions.md lists every assumption and how to change it.

Two time models (``Deployment.kernels``): ``"roofline"`` prices every operator at
``max(FLOPs / F, bytes / BW)`` (:meth:`Deployment._terms`, the bound, unchanged since before
issue 13); ``"calibrated"`` (default) prices the same work with measured-kernel efficiencies,
charges communication and lays memory out as real engines do (:mod:`mcroute._cost.calibrated`,
:meth:`Deployment._calibrated_terms`). The roofline is always computed beside it as the bound.

Conventions: a weight matrix of P parameters applied to one token costs 2·P FLOPs; one decode
step generates one token for each of the B sequences of the microbatch; the context L is the
number of cached tokens each sequence attends to in that step.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from mcroute._base.validate import (
    BANDWIDTH_RANGE,
    MAX_BATCH_SIZE,
    MAX_CONTEXT,
    MAX_GPUS,
    PEAK_FLOPS_RANGE,
    McrouteError,
    check_int,
    check_real,
)
from mcroute._cards.cards import load_hardware, load_model
from mcroute._cost.calibrated import (
    ALL_TO_ALL_MODES,
    balanced_placement,
    parse_acceptance,
)
from mcroute._cost.calibration import kernel_card_for, load_kernel_card
from mcroute._cost.memory import MemoryMixin
from mcroute._cost.roofline import (
    OPERATORS,
    _dtype_bytes,
    attended_positions,
    kv_bytes_per_sequence,
    max_batch_size,
    roofline_time,
)
from mcroute._cost.step import StepMixin
from mcroute._routing.placement import Placement
from mcroute._routing.sampling import device_map

__all__ = [
    "roofline_time",
    "max_batch_size",
    "attended_positions",
    "kv_bytes_per_sequence",
    "Deployment",
    "OPERATORS",
    "KERNEL_MODELS",
    "MEMORY_LAYOUTS",
]


def check_deployment_options(options: dict, what: str = "deployment option",
                             exclude=()) -> None:
    """Raise unless every key of ``options`` is a field of :class:`Deployment` (not excluded)."""
    known = [f.name for f in dataclasses.fields(Deployment) if f.name not in exclude]
    for key in options:
        if key not in known:
            raise McrouteError(f"unknown {what} {key!r}; known: {', '.join(known)}")


_ATTENTION_PARALLEL = ("tensor", "data")
#: Time models of a Deployment (``kernels``).
KERNEL_MODELS = ("calibrated", "roofline")
#: Memory layouts (``memory_layout``): ``"engine"`` as real engines lay weights and caches out,
#: ``"ideal"`` everything split evenly (the pre-issue-13 capacity model).
MEMORY_LAYOUTS = ("engine", "ideal")
#: Most MTP draft tokens per step accepted by ``mtp_depth``.
MAX_MTP_DEPTH = 16
#: Scale-up domain and scale-out bandwidth assumed for a HardwareSpec without those fields
#: (hand-built specs; every shipped card gives them).
_DEFAULT_GPUS_PER_NODE = 8

#: Range of any rate (FLOP/s, B/s) a Deployment accepts from a HardwareSpec: from one per second
#: (below that the roofline times of real models overflow) to the top of the card range.
_MIN_RATE = 1.0
_MAX_RATE = max(PEAK_FLOPS_RANGE[1], BANDWIDTH_RANGE[1])


@dataclasses.dataclass(frozen=True)
class Deployment(MemoryMixin, StepMixin):
    """A model served for decode on ``n_gpus`` GPUs, with every modelling assumption explicit.

    Every field below has a documented default; docs/assumptions.md explains each and how to
    change it. :meth:`describe` returns them (resolved) for provenance; :meth:`replace` gives a
    variant (defaults left as None are resolved again for the variant).

    Parameters
    ----------
    model : ModelSpec or str
        The model card (or its name / path, loaded with ``mcroute.load_model``).
    hardware : HardwareSpec or str
        The GPU card (or its name / path, loaded with ``mcroute.load_hardware``); all GPUs alike.
    n_gpus : int
        GPUs serving one model replica, >= 1.
    weight_dtype : str
        Storage type of all weights (``"bf16"``, ``"fp8"``, ``"fp4"``, ...), default ``"bf16"``.
    kv_dtype : str
        Storage type of the KV cache, default ``"bf16"``.
    compute_dtype : str, optional
        Type whose peak FLOP/s applies to every operator. Default (None): ``weight_dtype`` if
        the hardware card lists a peak for it, else ``"bf16"``; the resolved value is
        :attr:`flops_dtype`.
    activation_dtype : str, optional
        Type of activations sent in the expert all-to-all (the dispatch; the combine and the
        all-reduces are in bf16, or this type when it is wider). Default (None): ``"bf16"``
        under roofline kernels; under calibrated kernels ``"fp8"`` when the weights are 8-bit
        or narrower (DeepEP's FP8 dispatch, with one float32 scale per 128 values), else
        ``"bf16"``.
    hbm_fraction : float
        Share of each GPU's HBM usable for weights and KV cache, in (0, 1], default 0.9; the
        rest is the runtime / activation / fragmentation reserve.
    bandwidth_efficiency : float
        Achievable share of peak HBM bandwidth, in (0, 1], default 1.0 (roofline upper bound).
    flops_efficiency : float
        Achievable share of peak FLOP/s, in (0, 1], default 1.0 (roofline upper bound).
    attention_parallel : {"tensor", "data"}
        ``"tensor"`` (default): attention weights are split over all GPUs (heads), and so is
        each sequence's KV cache under ``memory_layout="ideal"``; under ``"engine"`` every GPU
        keeps the whole MLA latent of every sequence, and ``ceil(kv_heads / n) / kv_heads`` of
        a GQA/MHA cache (KV heads replicated when there are fewer than GPUs). ``"data"``: every
        GPU holds all attention weights and serves ceil(B / n_gpus) whole sequences
        (data-parallel attention, as used for MLA).
    expert_parallel : int, optional
        Expert-parallel degree D: the routed experts are spread over D groups of
        n_gpus / D GPUs, and each expert is tensor-split within its group. Default: n_gpus
        (every GPU is its own group; the resolved value is :attr:`expert_groups`). Must divide
        n_gpus; need not divide E.
    expert_placement : sequence of int or Placement, optional
        Group id (0 .. D-1) of each routed expert. Default: balanced contiguous blocks, expert
        e in group ``floor(e · D / E)`` (E / D experts each when D divides E, else group sizes
        differing by one). Or a :class:`~mcroute.Placement` from
        :func:`mcroute.balanced_placement` with ``n_devices`` = D and the model's E: its slots
        (with their replicas) and devices are used for every MoE layer (a one-layer placement)
        or layer by layer (one per MoE layer), and its ``redundant_experts`` are charged in
        memory (``redundant_experts`` must then be 0 or the same number).
    max_batch : int, optional
        Cap on the batch size (e.g. a scheduler limit); none by default.
    encoder_context : int, optional
        Encoder tokens in the cross-attention cache of encoder-decoder models. Default: equal to
        the decode context L. Ignored by decoder-only models.
    charge_all_to_all : bool, optional
        Older spelling of ``all_to_all`` (kept): False is ``"off"``; True is ``"overlap"``, or
        ``"none"`` with ``overlap_all_to_all=False``. Resolved to ``all_to_all != "off"``.
    overlap_all_to_all : bool, optional
        Older spelling (kept): with ``charge_all_to_all=True``, True is ``"overlap"`` and False
        ``"none"``. Resolved to ``all_to_all in ("overlap", "two-batch")``.
    interconnect_efficiency : float
        Achievable share of the interconnect bandwidths (NVLink and scale-out), in (0, 1],
        default 1.0.
    enforce_max_context : bool
        Treat contexts above the model's ``max_context`` as infeasible. Default False: they are
        evaluated and flagged (``exceeds_max_context``) only.
    kernels : {"calibrated", "roofline"}
        Time model. ``"calibrated"`` (default): kernel efficiencies fitted on measured kernels
        (the kernel card), communication charged, engine memory layout
        (:mod:`mcroute._cost.calibrated`, docs/assumptions.md "Calibrated kernels"). ``"roofline"``:
        ``max(FLOPs / F, bytes / BW)`` per operator, no communication by default, ideal memory
        layout (the numbers of mcroute before issue 13, exactly). Results report the roofline
        beside the calibrated estimate as the bound.
    kernel_card : str, path or KernelCard, optional
        Kernel-efficiency card (``models/kernels/<name>.toml``). Default: the card listing the
        hardware (``mcroute._cost.calibration.kernel_card_for``), else ``"generic"``; the resolved
        name is in :meth:`describe`. Ignored under roofline kernels.
    calibration_uncertainty : bool
        Draw the kernel parameters per trial from their fitted uncertainty (default True), so
        that intervals carry it; False uses the central values.
    all_to_all : {"off", "none", "overlap", "two-batch"}, optional
        Expert dispatch + combine: ``"off"`` not charged; ``"none"`` charged without overlap
        (added to the MoE layer); ``"overlap"`` ideal overlap (the MoE layer takes the larger
        of its work and its communication); ``"two-batch"`` the batch runs as two
        micro-batches and the compute of one hides the communication of the other (weights are
        read by each micro-batch; the roofline bound treats it as ``"overlap"``). Default:
        ``"none"`` under calibrated kernels, ``"off"`` under roofline (or from the two
        booleans above).
    memory_layout : {"engine", "ideal"}, optional
        ``"engine"``: caches and weights as engines lay them out (MLA/GQA cache replication
        under tensor-parallel attention, replicated dense weights under data-parallel
        attention, FP8 KV layout overhead from the model card). ``"ideal"``: everything split
        evenly. Default: ``"engine"`` under calibrated kernels, ``"ideal"`` under roofline.
    replicate_dense : bool, optional
        Under ``attention_parallel="data"``: every GPU keeps the dense FFNs, shared experts,
        router, embedding and LM head whole and runs them on its own sequences (True), or they
        are split over the GPUs (False). Default: True with ``memory_layout="engine"`` and
        data-parallel attention, else False. Needs ``attention_parallel="data"``.
    redundant_experts : int
        Extra expert slots N >= 0 per MoE layer holding replicas of the hottest experts
        (EPLB-style, :func:`mcroute._cost.calibrated.expert_layout`); their memory is counted and a
        replicated expert's tokens are split among its replicas. Default 0.
    attention_compute_dtype : str, optional
        Dtype whose peak FLOP/s applies to the attention core (scores and values over the
        cache). Default: ``"bf16"`` under calibrated kernels (FlashMLA / FlashAttention decode
        kernels compute in bf16 even over an FP8 cache), the GEMMs' :attr:`flops_dtype` under
        roofline. The roofline bound uses the same dtype.
    mtp_depth : int
        Draft tokens per step of multi-token prediction / speculative decoding, 0 .. 16
        (default 0: none). Each sequence carries ``1 + mtp_depth`` tokens through every
        operator (verification) and the routing is sampled for ``B · (1 + mtp_depth)`` tokens.
    mtp_acceptance : float or str, optional
        Acceptance rate a of a draft token: a number in [0, 1] or ``"beta:A,B"`` (drawn per
        trial). Accepted tokens per step per sequence are ``1 + Σ_{i=1..depth} a^i``; throughput
        counts accepted tokens. Required when ``mtp_depth > 0``.

    Examples
    --------
    >>> import mcroute as mr
    >>> dep = mr.Deployment("llama-3.1-70b", "h100-sxm", 4)
    >>> dep.feasible(8192), dep.max_batch_size(8192) > dep.max_batch_size(131072)
    (True, True)
    >>> mr.Deployment("llama-3.1-70b", "h100-sxm", 1).infeasibility(8192)[:13]
    'weights need '
    """

    model: object
    hardware: object
    n_gpus: int
    weight_dtype: str = "bf16"
    kv_dtype: str = "bf16"
    compute_dtype: str | None = None
    activation_dtype: str | None = None
    hbm_fraction: float = 0.9
    bandwidth_efficiency: float = 1.0
    flops_efficiency: float = 1.0
    attention_parallel: str = "tensor"
    expert_parallel: int | None = None
    expert_placement: tuple | None = None
    max_batch: int | None = None
    encoder_context: int | None = None
    charge_all_to_all: bool | None = None
    overlap_all_to_all: bool | None = None
    interconnect_efficiency: float = 1.0
    enforce_max_context: bool = False
    kernels: str = "calibrated"
    kernel_card: object = None
    calibration_uncertainty: bool = True
    all_to_all: str | None = None
    memory_layout: str | None = None
    replicate_dense: bool | None = None
    redundant_experts: int = 0
    attention_compute_dtype: str | None = None
    mtp_depth: int = 0
    mtp_acceptance: object = None

    # -- construction and validation -----------------------------------------------------------
    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        if isinstance(self.model, str):
            put("model", load_model(self.model))
        if isinstance(self.hardware, str):
            put("hardware", load_hardware(self.hardware))
        for attr in ("decode_layers", "hidden", "vocab", "embedding_params", "lm_head_params"):
            if not hasattr(self.model, attr):
                raise McrouteError(
                    f"model must be a ModelSpec (or a card name), got {type(self.model).__name__}"
                )
        for attr in ("hbm_bytes", "hbm_bandwidth", "peak_flops"):
            if not hasattr(self.hardware, attr):
                raise McrouteError(
                    "hardware must be a HardwareSpec (or a card name), got "
                    f"{type(self.hardware).__name__}"
                )
        n = check_int("n_gpus", self.n_gpus, minimum=1, maximum=MAX_GPUS)
        put("n_gpus", n)
        if not isinstance(self.kernels, str) or self.kernels not in KERNEL_MODELS:
            raise McrouteError(f"kernels must be 'calibrated' or 'roofline', got "
                               f"{self.kernels!r}")
        cal = self.kernels == "calibrated"
        put("_calibrated", cal)
        for name in ("weight_dtype", "kv_dtype", "activation_dtype", "attention_compute_dtype"):
            value = getattr(self, name)
            if value is None and name in ("activation_dtype", "attention_compute_dtype"):
                continue
            if not isinstance(value, str):
                raise McrouteError(f"{name} must be a dtype name like 'bf16', got {value!r}")
            _dtype_bytes(value)  # raises listing the known dtypes
        ad = self.activation_dtype
        if ad is None:
            ad = "fp8" if cal and _dtype_bytes(self.weight_dtype) <= 1 else "bf16"
        put("_activation_dtype", ad)
        cd = self.compute_dtype
        if cd is None:
            known = getattr(self.hardware, "flops", {}) or {}
            cd = self.weight_dtype if self.weight_dtype in known else "bf16"
        if not isinstance(cd, str):
            raise McrouteError(f"compute_dtype must be a dtype name like 'bf16', got {cd!r}")
        put("_compute_dtype", cd)
        acd = self.attention_compute_dtype
        if acd is None:
            acd = "bf16" if cal else cd
        put("_attention_dtype", acd)
        for name in ("hbm_fraction", "bandwidth_efficiency", "flops_efficiency",
                     "interconnect_efficiency"):
            put(name, check_real(name, getattr(self, name), minimum=0.0, maximum=1.0,
                                 open_min=True))
        if (not isinstance(self.attention_parallel, str)
                or self.attention_parallel not in _ATTENTION_PARALLEL):
            raise McrouteError(
                f"attention_parallel must be 'tensor' or 'data', got {self.attention_parallel!r}"
            )
        for name in ("charge_all_to_all", "overlap_all_to_all", "enforce_max_context",
                     "calibration_uncertainty", "replicate_dense"):
            v = getattr(self, name)
            if v is None and name in ("charge_all_to_all", "overlap_all_to_all",
                                      "replicate_dense"):
                continue
            if not isinstance(v, (bool, np.bool_)):
                raise McrouteError(f"{name} must be True or False, got {v!r}")
            put(name, bool(v))
        put("_all_to_all", self._resolve_all_to_all(cal))
        ml = self.memory_layout
        if ml is None:
            ml = "engine" if cal else "ideal"
        if ml not in MEMORY_LAYOUTS:
            raise McrouteError(f"memory_layout must be 'engine' or 'ideal', got "
                               f"{self.memory_layout!r}")
        put("_layout", ml)
        rd = self.replicate_dense
        if rd is None:
            rd = ml == "engine" and self.attention_parallel == "data"
        elif rd and self.attention_parallel != "data":
            raise McrouteError("replicate_dense=True needs attention_parallel='data' (under "
                               "tensor-parallel attention the dense layers are split)")
        put("_replicate_dense", bool(rd))
        put("redundant_experts", check_int("redundant_experts", self.redundant_experts,
                                           minimum=0, maximum=1_000_000))
        put("mtp_depth", check_int("mtp_depth", self.mtp_depth, minimum=0,
                                   maximum=MAX_MTP_DEPTH))
        if self.mtp_acceptance is None:
            if self.mtp_depth > 0:
                raise McrouteError("mtp_acceptance is required when mtp_depth > 0 (a number in "
                                   "[0, 1] or 'beta:A,B')")
            put("_acceptance", 0.0)
        else:
            put("_acceptance", parse_acceptance(self.mtp_acceptance))
        if self.max_batch is not None:
            put("max_batch", check_int("max_batch", self.max_batch, minimum=1,
                                         maximum=MAX_BATCH_SIZE))
        if self.encoder_context is not None:
            put("encoder_context", check_int("encoder_context", self.encoder_context, minimum=0,
                                               maximum=MAX_CONTEXT))

        layers = tuple(self.model.decode_layers)
        if not layers:
            raise McrouteError(f"model {self.model.name!r} has no decode layers")
        moe = tuple(ly for ly in layers if ly.ffn == "moe")
        ep = n if self.expert_parallel is None else check_int(
            "expert_parallel", self.expert_parallel, minimum=1, maximum=n)
        if n % ep:
            raise McrouteError(f"expert_parallel must divide n_gpus={n}, got {ep}")
        put("_ep", ep)
        placed = self.expert_placement if isinstance(self.expert_placement, Placement) else None
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
        if moe:
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
            slot_group = None
            if self.expert_placement is None:
                group = balanced_placement(e_count, ep)
            elif placed is not None:
                slot_group = self._check_placement(placed, e_count, ep, len(moe))
                # per-expert group (the device of replica 0, first layer): the roofline
                # per-expert statistics; costing uses the slots of every layer
                first = placed.slot_rank[0] == 0
                group = np.empty(e_count, dtype=np.int64)
                group[placed.slot_expert[0][first]] = slot_group[0][first]
            else:
                try:
                    group = device_map(e_count, ep, self.expert_placement)
                except McrouteError as exc:
                    raise McrouteError(
                        f"expert placement: {exc} (n_experts={e_count}, expert_parallel={ep})"
                    ) from None
            if placed is None:
                put("expert_placement",
                    None if self.expert_placement is None else tuple(int(g) for g in group))
            put("_placed", placed)
            put("_group", group)
            per_group = np.bincount(group, minlength=ep)
            if placed is not None:
                per_group = np.stack([np.bincount(row, minlength=ep)
                                      for row in slot_group]).max(axis=0)
            elif self.redundant_experts:
                s = e_count + self.redundant_experts
                per_group = np.full(ep, s // ep, dtype=np.int64)
                per_group[: s % ep] += 1
            put("_experts_per_group", per_group)
            put("_E", e_count)
            put("_k", ks.pop())
        else:
            if self.expert_placement is not None:
                raise McrouteError("expert_placement is given but the model has no MoE layers")
            put("_placed", None)
            put("_group", np.zeros(0, dtype=np.int64))
            put("_experts_per_group", np.zeros(ep, dtype=np.int64))
            put("_E", 0)
            put("_k", 0)

        # Per-layer arrays, in parameter counts and values (no bytes yet).
        def arr(attr, lys=layers):
            return np.array([getattr(ly, attr) for ly in lys], dtype=float)

        put("_layers", layers)
        put("_is_moe", np.array([ly.ffn == "moe" for ly in layers]))
        put("_attn_params", arr("attn_params"))
        put("_kv_values", arr("kv_values_per_token"))
        put("_window", np.array([ly.sliding_window for ly in layers], dtype=np.int64))
        put("_attn_flops", arr("attn_flops_per_token_per_ctx"))
        put("_cross_kv", arr("cross_kv_values_per_token"))
        put("_cross_flops", np.array(
            [getattr(ly, "cross_attn_flops_per_token_per_ctx", 0) for ly in layers], dtype=float))
        put("_dense_params", arr("dense_ffn_params"))
        put("_shared_params", arr("shared_expert_params"))
        put("_router_params", arr("router_params"))
        put("_expert_params", arr("expert_params", moe))
        for name in ("_attn_params", "_kv_values", "_attn_flops", "_cross_kv", "_cross_flops",
                     "_dense_params",
                     "_shared_params", "_router_params", "_expert_params"):
            if np.any(getattr(self, name) < 0):
                raise McrouteError(f"model {self.model.name!r}: negative {name[1:]} in a layer")
        if np.any(self._window < 0):
            raise McrouteError(f"model {self.model.name!r}: negative sliding_window in a layer")
        head = self.model.lm_head_params or self.model.embedding_params
        put("_head_params", float(head))

        # Dtypes and rates.
        put("_wb", _dtype_bytes(self.weight_dtype))
        put("_kvb", _dtype_bytes(self.kv_dtype))
        put("_ab", _dtype_bytes(ad))
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
        link = float(getattr(self.hardware, "interconnect_bandwidth", 0.0) or 0.0)
        if self._all_to_all != "off" and ep > 1 and link <= 0:
            raise McrouteError(
                f"charging the expert all-to-all needs the interconnect bandwidth of "
                f"{self.hardware.name!r}, which the card does not give (all_to_all='off')"
            )
        put("_link", link * self.interconnect_efficiency)
        # Two-tier interconnect (calibrated kernels): NVLink inside a node of gpus_per_node GPUs,
        # the scale-out network across nodes.
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
        # Attention kinds, the KV bytes per cached token of each layer, and the share of each
        # sequence's cache one GPU keeps under tensor-parallel attention.
        put("_attn_kind_mla", np.array([ly.attention == "mla" for ly in layers]))
        kvtok = self._kv_values * self._kvb
        fp8_layout = getattr(self.model, "fp8_kv_bytes_per_token", None)
        if ml == "engine" and fp8_layout and _dtype_bytes(self.kv_dtype) == 1:
            kvtok = np.where(self._kv_values > 0, float(fp8_layout), 0.0)
        put("_kv_token_bytes", kvtok)
        share = np.full(len(layers), 1.0 / n)
        if ml == "engine":
            for i, ly in enumerate(layers):
                if ly.attention == "mla":
                    share[i] = 1.0
                else:
                    kvh = int(getattr(ly, "n_kv_heads", 0) or 0)
                    if kvh > 0:
                        share[i] = math.ceil(kvh / n) / kvh
        put("_kv_share", share)
        # Activation bytes one token moves through one expert (the fit's vLLM fused-MoE
        # convention: x in, gate/up out and activation in bf16, w2 in/out), N = P_e / (3 h).
        h = float(self.model.hidden)
        n_int = self._expert_params / (3.0 * h)
        ab_e = 1.0 if self._wb <= 1 else 2.0
        put("_expert_act_bytes", h * ab_e + 8.0 * n_int + 2.0 * n_int * ab_e + 2.0 * h)
        if cal:
            kc = (kernel_card_for(self.hardware) if self.kernel_card is None
                  else load_kernel_card(self.kernel_card))
        else:
            kc = None
        put("_kcard", kc)
        if not (self._F > 0 and self._BW > 0 and float(self.hardware.hbm_bytes) > 0):
            raise McrouteError(
                f"hardware {self.hardware.name!r} must have positive HBM size, bandwidth and "
                "FLOP/s"
            )
        self._init_memory(put)

    def _resolve_all_to_all(self, calibrated: bool) -> str:
        """One all-to-all mode from ``all_to_all`` and the two older booleans (which must agree)."""
        mode, charge, overlap = self.all_to_all, self.charge_all_to_all, self.overlap_all_to_all
        if mode is not None:
            if not isinstance(mode, str) or mode not in ALL_TO_ALL_MODES:
                raise McrouteError(f"all_to_all must be one of {', '.join(ALL_TO_ALL_MODES)}, "
                                   f"got {mode!r}")
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

    # -- description ---------------------------------------------------------------------------
    def describe(self) -> dict:
        """Return the deployment's assumptions, resolved (JSON-able), for provenance."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "model":
                v = self.model.name
            elif f.name == "hardware":
                v = self.hardware.name
            elif f.name == "expert_placement":
                if isinstance(v, Placement):
                    v = v.describe()
                else:
                    v = ("contiguous" if not self.redundant_experts else "eplb") if v is None \
                        else list(v)
            elif f.name == "compute_dtype":
                v = self.flops_dtype
            elif f.name == "expert_parallel":
                v = self.expert_groups
            elif f.name == "activation_dtype":
                v = self._activation_dtype
            elif f.name == "attention_compute_dtype":
                v = self._attention_dtype
            elif f.name == "kernel_card":
                v = self._kcard.name if self._kcard is not None else "none (roofline)"
            elif f.name == "all_to_all":
                v = self._all_to_all
            elif f.name == "charge_all_to_all":
                v = self._all_to_all != "off"
            elif f.name == "overlap_all_to_all":
                v = self._all_to_all in ("overlap", "two-batch")
            elif f.name == "memory_layout":
                v = self._layout
            elif f.name == "replicate_dense":
                v = self._replicate_dense
            elif f.name == "mtp_acceptance":
                v = (self.mtp_acceptance if isinstance(self.mtp_acceptance, str)
                     else float(self._acceptance))
            out[f.name] = v
        out["expert_tensor_parallel"] = self.expert_tensor_parallel
        out["usable_flops_per_gpu"] = self._F
        out["usable_bandwidth_per_gpu"] = self._BW
        out["usable_bytes_per_gpu"] = self.usable_bytes_per_gpu
        out["weight_bytes"] = self.weight_bytes
        out["weight_bytes_per_gpu"] = float(self.weight_bytes_per_gpu)
        if self._kcard is not None:
            out["kernel_card_origin"] = self._kcard.origin
        out["gpus_per_node"] = self._gpus_per_node
        out["scaleout_bandwidth_per_gpu"] = self._scaleout
        return out


    @property
    def n_experts(self) -> int:
        """Routed experts per MoE layer (0 for a dense model)."""
        return int(self._E)

    @property
    def top_k(self) -> int:
        """Experts per token (0 for a dense model)."""
        return int(self._k)

    @property
    def n_moe_layers(self) -> int:
        """Number of MoE layers run per decode step."""
        return int(self._is_moe.sum())

    @property
    def flops_dtype(self) -> str:
        """The dtype whose peak FLOP/s is used: ``compute_dtype`` resolved."""
        return self._compute_dtype

    @property
    def expert_groups(self) -> int:
        """Expert-parallel degree D: ``expert_parallel`` resolved (n_gpus by default)."""
        return int(self._ep)

    def replace(self, **changes) -> Deployment:
        """Return a copy with fields changed (defaults left as None are resolved again)."""
        check_deployment_options(changes)
        return dataclasses.replace(self, **changes)

    @property
    def expert_tensor_parallel(self) -> int:
        """GPUs that split each expert within its expert-parallel group, n_gpus / D."""
        return self.n_gpus // self._ep

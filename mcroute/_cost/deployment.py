"""Roofline cost model of decode: HBM capacity and step time of a deployment (array layer).

May import: numpy, and the array layer (``_validate``, ``_sampling``, ``_cards``,
``_placement``).

Everything here is deterministic. The pure functions (:func:`roofline_time`,
:func:`max_batch_size`, :func:`attended_positions`, :func:`kv_bytes_per_sequence`) take and return
SI units. :class:`Deployment` binds a model card, a hardware card and a GPU count together with
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
from mcroute._cost.calibrated import (
    ALL_TO_ALL_MODES,
    CALIBRATION_STREAM,
    ExpertLayout,
    _gather_index,
    balanced_placement,
    calibrated_step,
    expert_layout,
    parse_acceptance,
)
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
    from mcroute._cards.cards import dtype_bytes  # the cards module owns the dtype table

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


def roofline_time(flops, bytes_moved, *, peak_flops, mem_bandwidth):
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
    # Capped at MAX_BATCH_SIZE (far above any real decode batch) so that it fits int64.
    b = np.minimum(np.floor(np.maximum(m - w, 0.0) / kv), MAX_BATCH_SIZE)
    if max_batch is not None:
        b = np.minimum(b, check_int("max_batch", max_batch, minimum=1, maximum=MAX_BATCH_SIZE))
    b = b.astype(np.int64)
    return int(b) if b.ndim == 0 else b


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


def check_deployment_options(options: dict, what: str = "deployment option",
                             exclude=()) -> None:
    """Raise unless every key of ``options`` is a field of :class:`Deployment` (not excluded)."""
    known = [f.name for f in dataclasses.fields(Deployment) if f.name not in exclude]
    for key in options:
        if key not in known:
            raise McrouteError(f"unknown {what} {key!r}; known: {', '.join(known)}")


def _gb(x: float) -> str:
    return f"{x / 1e9:.4g} GB"


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
class Deployment:
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
            from mcroute._cards.cards import load_model

            put("model", load_model(self.model))
        if isinstance(self.hardware, str):
            from mcroute._cards.cards import load_hardware

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
            from mcroute._cost.calibration import kernel_card_for, load_kernel_card

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

    # -- calibrated kernels ----------------------------------------------------------------------
    @property
    def kernel_card_name(self) -> str:
        """Name of the kernel card used (``""`` under roofline kernels)."""
        return self._kcard.name if self._kcard is not None else ""

    @property
    def tokens_per_seq(self) -> int:
        """Tokens each sequence carries through a step, ``1 + mtp_depth``."""
        return 1 + self.mtp_depth

    def kernel_params(self, n_trials: int, entropy: int):
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
        from mcroute._base.rng import generator

        return self._kcard.draw(int(n_trials), generator(int(entropy), CALIBRATION_STREAM))

    def expert_layout(self, routing=None):
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

    # -- step cost -----------------------------------------------------------------------------
    def weight_bytes_per_step(self, batch_size, active_experts=None):
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
                from mcroute._cost.calibrated import group_loads, slot_loads

                slots = slot_loads(c, layout)
                gl = group_loads(slots, layout)
                gsum = gl.sum(axis=-1)
                tok = gsum.max(axis=-1).astype(float)
                act = (gl > 0).sum(axis=-1).max(axis=-1).astype(float)
                active = (slots > 0).sum(axis=-1)
            else:
                from mcroute import _kernels as K

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

    def step_breakdown(self, context, batch_size, counts=None, *, routing=None) -> dict:
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
        L = check_int("context", context, minimum=1, maximum=MAX_CONTEXT)
        B = check_int("batch_size", batch_size, minimum=1, maximum=MAX_BATCH_SIZE)
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
                from mcroute._cost.calibrated import group_loads, slot_loads

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
        from mcroute._cost.calibrated import accepted_tokens

        a = self._acceptance
        if isinstance(a, tuple):  # Beta(A, B): its mean
            a = a[1] / (a[1] + a[2])
        return float(accepted_tokens(a, self.mtp_depth))

    def step_time(self, context, batch_size, max_tokens=None, max_active=None):
        """Roofline (bound) decode step time [s] per trial, from the busiest group's statistics.

        The roofline model whatever ``kernels`` is (the calibrated time needs the per-expert
        loads: use :meth:`step_breakdown` or :func:`mcroute.decode_throughput`).
        ``max_tokens`` and ``max_active`` are (trial, moe_layer) arrays (or (moe_layer,)); both
        are ignored (may be None) for a dense model. Returns an array (trial,) (length 1 for a
        dense model).
        """
        L = check_int("context", context, minimum=1, maximum=MAX_CONTEXT)
        B = check_int("batch_size", batch_size, minimum=1, maximum=MAX_BATCH_SIZE)
        return self._terms(L, B, max_tokens, max_active,
                           tokens_per_seq=self.tokens_per_seq)["step_time"]

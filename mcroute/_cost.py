"""Roofline cost model of decode: HBM capacity and step time of a deployment (array layer).

May import: numpy, and the array layer (``_validate``, ``_sampling``, ``_cards``).

Everything here is deterministic. The pure functions (:func:`roofline_time`,
:func:`max_batch_size`, :func:`attended_positions`, :func:`kv_bytes_per_sequence`) take and return
SI units. :class:`Deployment` binds a model card, a hardware card and a GPU count together with
every modelling assumption as an explicit, documented, overridable field, and evaluates the
capacity (weights, KV cache, admissible batch) and the decode step time given the statistics of
one routed microbatch (busiest expert-parallel group's tokens and distinct experts per MoE layer).
Monte Carlo over routing is done one layer up, in :func:`mcroute.decode_throughput`.
docs/assumptions.md lists every assumption and how to change it.

Conventions: a weight matrix of P parameters applied to one token costs 2·P FLOPs; one decode
step generates one token for each of the B sequences of the microbatch; the context L is the
number of cached tokens each sequence attends to in that step.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ._sampling import device_map
from ._validate import (
    BANDWIDTH_RANGE,
    MAX_BATCH_SIZE,
    MAX_CONTEXT,
    MAX_GPUS,
    PEAK_FLOPS_RANGE,
    McrouteError,
    check_int,
    check_real,
)

__all__ = [
    "roofline_time",
    "max_batch_size",
    "attended_positions",
    "kv_bytes_per_sequence",
    "Deployment",
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
    from ._cards import dtype_bytes  # the cards module owns the dtype table

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
        :data:`mcroute._validate.MAX_BATCH_SIZE` (2**40).

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
    activation_dtype : str
        Type of activations sent in the expert all-to-all, default ``"bf16"``.
    hbm_fraction : float
        Share of each GPU's HBM usable for weights and KV cache, in (0, 1], default 0.9; the
        rest is the runtime / activation / fragmentation reserve.
    bandwidth_efficiency : float
        Achievable share of peak HBM bandwidth, in (0, 1], default 1.0 (roofline upper bound).
    flops_efficiency : float
        Achievable share of peak FLOP/s, in (0, 1], default 1.0 (roofline upper bound).
    attention_parallel : {"tensor", "data"}
        ``"tensor"`` (default): attention weights and each sequence's KV cache are split evenly
        over all GPUs (ideal tensor parallelism; KV-head replication when a model has fewer KV
        heads than GPUs is not modelled). ``"data"``: every GPU holds all attention weights and
        serves ceil(B / n_gpus) whole sequences (data-parallel attention, as used for MLA).
    expert_parallel : int, optional
        Expert-parallel degree D: the routed experts are spread over D groups of
        n_gpus / D GPUs, and each expert is tensor-split within its group. Default: n_gpus
        (every GPU is its own group; the resolved value is :attr:`expert_groups`). Must divide
        n_gpus.
    expert_placement : sequence of int, optional
        Group id (0 .. D-1) of each routed expert. Default: contiguous blocks of E / D experts
        (``mcroute.device_map``), which needs D to divide E.
    max_batch : int, optional
        Cap on the batch size (e.g. a scheduler limit); none by default.
    encoder_context : int, optional
        Encoder tokens in the cross-attention cache of encoder-decoder models. Default: equal to
        the decode context L. Ignored by decoder-only models.
    charge_all_to_all : bool
        Charge the expert all-to-all (dispatch + combine of activations) over the interconnect.
        Default False (a roofline upper bound that ignores communication).
    overlap_all_to_all : bool
        When charged, overlap the all-to-all with the MoE layer's work (layer time = max of the
        two, default True) or add it (False).
    interconnect_efficiency : float
        Achievable share of the interconnect bandwidth, in (0, 1], default 1.0.
    enforce_max_context : bool
        Treat contexts above the model's ``max_context`` as infeasible. Default False: they are
        evaluated and flagged (``exceeds_max_context``) only.

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
    activation_dtype: str = "bf16"
    hbm_fraction: float = 0.9
    bandwidth_efficiency: float = 1.0
    flops_efficiency: float = 1.0
    attention_parallel: str = "tensor"
    expert_parallel: int | None = None
    expert_placement: tuple | None = None
    max_batch: int | None = None
    encoder_context: int | None = None
    charge_all_to_all: bool = False
    overlap_all_to_all: bool = True
    interconnect_efficiency: float = 1.0
    enforce_max_context: bool = False

    # -- construction and validation -----------------------------------------------------------
    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        if isinstance(self.model, str):
            from ._cards import load_model

            put("model", load_model(self.model))
        if isinstance(self.hardware, str):
            from ._cards import load_hardware

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
        for name in ("weight_dtype", "kv_dtype", "activation_dtype"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise McrouteError(f"{name} must be a dtype name like 'bf16', got {value!r}")
            _dtype_bytes(value)  # raises listing the known dtypes
        cd = self.compute_dtype
        if cd is None:
            known = getattr(self.hardware, "flops", {}) or {}
            cd = self.weight_dtype if self.weight_dtype in known else "bf16"
        if not isinstance(cd, str):
            raise McrouteError(f"compute_dtype must be a dtype name like 'bf16', got {cd!r}")
        put("_compute_dtype", cd)
        for name in ("hbm_fraction", "bandwidth_efficiency", "flops_efficiency",
                     "interconnect_efficiency"):
            put(name, check_real(name, getattr(self, name), minimum=0.0, maximum=1.0,
                                 open_min=True))
        if (not isinstance(self.attention_parallel, str)
                or self.attention_parallel not in _ATTENTION_PARALLEL):
            raise McrouteError(
                f"attention_parallel must be 'tensor' or 'data', got {self.attention_parallel!r}"
            )
        for name in ("charge_all_to_all", "overlap_all_to_all", "enforce_max_context"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise McrouteError(f"{name} must be True or False, got {getattr(self, name)!r}")
            put(name, bool(getattr(self, name)))
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
        if moe:
            es = {ly.n_experts for ly in moe}
            ks = {ly.top_k for ly in moe}
            if len(es) != 1 or len(ks) != 1:
                raise McrouteError(
                    f"model {self.model.name!r}: MoE layers disagree on n_experts {sorted(es)} "
                    f"or top_k {sorted(ks)}; one routing cannot describe them"
                )
            e_count = es.pop()
            try:
                group = device_map(e_count, ep, self.expert_placement)
            except McrouteError as exc:
                raise McrouteError(
                    f"expert placement: {exc} (n_experts={e_count}, expert_parallel={ep}; set "
                    "expert_parallel to a divisor of n_experts, or pass expert_placement)"
                ) from None
            put("expert_placement",
                None if self.expert_placement is None else tuple(int(g) for g in group))
            put("_group", group)
            put("_experts_per_group", np.bincount(group, minlength=ep))
            put("_E", e_count)
            put("_k", ks.pop())
        else:
            if self.expert_placement is not None:
                raise McrouteError("expert_placement is given but the model has no MoE layers")
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
        put("_ab", _dtype_bytes(self.activation_dtype))
        peak, bw = float(self.hardware.peak_flops(cd)), float(self.hardware.hbm_bandwidth)
        # Card files are held to the realistic PEAK_FLOPS_RANGE / BANDWIDTH_RANGE when loaded;
        # a HardwareSpec built by hand (toy cards in tests) only needs rates of at least one per
        # second, so that no roofline time overflows to inf.
        for what, v in ((f"peak FLOP/s ({cd})", peak), ("HBM bandwidth", bw)):
            if not (math.isfinite(v) and _MIN_RATE <= v <= _MAX_RATE):
                raise McrouteError(
                    f"hardware {self.hardware.name!r}: {what} per GPU must be in "
                    f"[{_MIN_RATE:g}, {_MAX_RATE:g}], got {v:g}")
        put("_F", peak * self.flops_efficiency)
        put("_BW", bw * self.bandwidth_efficiency)
        for what, v, eff in (("usable FLOP/s", self._F, "flops_efficiency"),
                             ("usable HBM bandwidth", self._BW, "bandwidth_efficiency")):
            if v < _MIN_RATE:
                raise McrouteError(
                    f"{eff}={getattr(self, eff):g} leaves a {what} of {v:g} per GPU, below "
                    f"{_MIN_RATE:g}; give an efficiency of a sensible size")
        link = float(getattr(self.hardware, "interconnect_bandwidth", 0.0) or 0.0)
        if self.charge_all_to_all and ep > 1 and link <= 0:
            raise McrouteError(
                f"charge_all_to_all needs the interconnect bandwidth of {self.hardware.name!r}, "
                "which the card does not give"
            )
        put("_link", link * self.interconnect_efficiency)
        if not (self._F > 0 and self._BW > 0 and float(self.hardware.hbm_bytes) > 0):
            raise McrouteError(
                f"hardware {self.hardware.name!r} must have positive HBM size, bandwidth and "
                "FLOP/s"
            )

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
                v = "contiguous" if v is None else list(v)
            elif f.name == "compute_dtype":
                v = self.flops_dtype
            elif f.name == "expert_parallel":
                v = self.expert_groups
            out[f.name] = v
        out["expert_tensor_parallel"] = self.expert_tensor_parallel
        out["usable_flops_per_gpu"] = self._F
        out["usable_bandwidth_per_gpu"] = self._BW
        out["usable_bytes_per_gpu"] = self.usable_bytes_per_gpu
        out["weight_bytes"] = self.weight_bytes
        out["weight_bytes_per_gpu"] = float(self.weight_bytes_per_gpu)
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
            "routed_experts": float(self._E * self._expert_params.sum()),
            "embedding": emb,
            "lm_head": float(m.lm_head_params),
            "other_resident": float(getattr(m, "other_resident_params", 0) or 0),
        }

    @property
    def weight_bytes(self) -> float:
        """Resident weights of the whole model, all GPUs together (one copy) [B]."""
        return sum(self._component_params().values()) * self._wb

    @property
    def weight_bytes_per_gpu(self) -> float:
        """Resident weights on the most loaded GPU [B].

        Everything but the routed experts is split evenly over the GPUs, except attention
        weights under ``attention_parallel="data"`` (a full copy on each GPU); routed experts
        follow the placement (the GPU of the group holding the most experts).
        """
        c = self._component_params()
        n = self.n_gpus
        attn = c.pop("attention")
        c.pop("routed_experts")
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

    def kv_bytes_per_sequence(self, context) -> float:
        """KV cache of one sequence at context L, all layers (windows and cross-attention) [B]."""
        L = check_int("context", context, minimum=1, maximum=MAX_CONTEXT)
        return kv_bytes_per_sequence(self._layers, L, kv_bytes=self._kvb,
                                     encoder_context=self._encoder_context(L))

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
        for ly in self._layers:
            v = kv_bytes_per_sequence((ly,), L, kv_bytes=self._kvb,
                                      encoder_context=self._encoder_context(L))
            out[ly.attention] = out.get(ly.attention, 0.0) + v
        return out

    def weights_fit(self) -> bool:
        """Whether the weights alone fit in the usable HBM of every GPU."""
        return self.weight_bytes_per_gpu <= self.usable_bytes_per_gpu

    def max_batch_size(self, context) -> int:
        """Admissible batch at context L: most sequences whose KV caches fit next to the weights.

        ``attention_parallel="tensor"``: each GPU holds 1/n of every sequence's cache, so
        B_max = floor(n · (usable − weights on the fullest GPU) / kv_bytes_per_sequence(L)),
        which is ⌊(M_usable − W) / (L·κ)⌋ for even shards. ``"data"``: each GPU holds whole
        sequences, B_max = n · floor((usable − weights per GPU) / kv_bytes_per_sequence(L)).
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
        fixed = (attn_copies * self._attn_params.sum() + self._dense_params.sum()
                 + self._shared_params.sum() + self._router_params.sum() + self._head_params
                 + min(b, self.model.vocab) * self.model.hidden)
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

    def _terms(self, context: int, batch_size: int, max_tokens=None, max_active=None) -> dict:
        """Per-operator (flops, bytes, time) on the busiest GPU, each summed over layers.

        ``max_tokens`` / ``max_active``: (trial, moe_layer) arrays of the busiest expert-parallel
        group's routed tokens and distinct experts. Returns arrays of shape (trial,) (1 for a
        dense model) under keys ``(operator, "flops"|"bytes"|"time")``, plus ``"all_to_all"``,
        ``"memory_time"``, ``"compute_time"`` and ``"step_time"``.
        """
        L, B = context, batch_size
        n = self.n_gpus
        F, BW, wb, kvb = self._F, self._BW, self._wb, self._kvb
        if self.attention_parallel == "data":
            seq_gpu = float(math.ceil(B / n))
            attn_share = 1.0
        else:
            seq_gpu = B / n
            attn_share = 1.0 / n
        pos = attended_positions(L, self._window).astype(float)
        enc = float(self._encoder_context(L))
        per_layer = {
            "attention_projections": (2.0 * seq_gpu * self._attn_params,
                                      attn_share * self._attn_params * wb),
            "attention_kv": (seq_gpu * (self._attn_flops * pos + self._cross_flops * enc),
                             seq_gpu * (self._kv_values * pos + self._cross_kv * enc) * kvb),
            "dense_ffn": (2.0 * B * self._dense_params / n, self._dense_params * wb / n),
            "shared_experts": (2.0 * B * self._shared_params / n, self._shared_params * wb / n),
            "router": (2.0 * B * self._router_params / n, self._router_params * wb / n),
        }
        out = {}
        layer_time = np.zeros(len(self._layers))
        mem = comp = 0.0
        for op, (fl, by) in per_layer.items():
            t = np.maximum(fl / F, by / BW)
            layer_time += t
            mem += float((by / BW).sum())
            comp += float((fl / F).sum())
            out[(op, "flops")] = np.array([fl.sum()])
            out[(op, "bytes")] = np.array([by.sum()])
            out[(op, "time")] = np.array([t.sum()])
        rows = min(B, self.model.vocab)
        edge = {
            "embedding": (0.0, rows * self.model.hidden * wb / n),
            "lm_head": (2.0 * B * self._head_params / n, self._head_params * wb / n),
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
        if self.charge_all_to_all and ep > 1:
            # dispatch + combine of the busiest group's tokens, the off-group share (D-1)/D,
            # split over the group's tp GPUs, each sending at the usable link rate
            a2a = 2.0 * tok * self.model.hidden * self._ab * (ep - 1) / ep / tp / self._link
            moe_time = np.maximum(moe_time, a2a) if self.overlap_all_to_all else moe_time + a2a
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

    def step_breakdown(self, context, batch_size, counts=None) -> dict:
        """Cost of one decode step by operator, on the busiest GPU, summed over layers.

        Parameters
        ----------
        context : int
            Context L [tokens].
        batch_size : int
            Sequences B in the step (one new token each).
        counts : array of int (moe_layer, expert), optional
            Tokens routed to each expert in each MoE layer (required for an MoE model), e.g.
            one trial of ``mcroute.sample_counts``.

        Returns
        -------
        dict
            ``{operator: {"flops" [FLOP], "bytes" [B], "time" [s]}}`` for every operator in
            :data:`OPERATORS`, each a roofline time ``max(flops / F, bytes / BW)`` per layer
            summed over layers; and ``"all_to_all"`` [s], ``"memory_time"`` and
            ``"compute_time"`` [s] (sums of the byte and FLOP terms of all operators),
            ``"step_time"`` [s], ``"throughput"`` [tokens/s] and ``"weight_bytes_per_step"``
            [B] (all GPUs).
        """
        L = check_int("context", context, minimum=1, maximum=MAX_CONTEXT)
        B = check_int("batch_size", batch_size, minimum=1, maximum=MAX_BATCH_SIZE)
        tok = act = active = None
        if self.n_moe_layers:
            if counts is None:
                raise McrouteError("counts (moe_layer, expert) are needed for an MoE model")
            tok, act, active = self._group_stats(counts)
            tok, act = tok[None, :], act[None, :]
        terms = self._terms(L, B, tok, act)
        out = {op: {q: float(terms[(op, q)][0]) for q in ("flops", "bytes", "time")}
               for op in OPERATORS}
        for key in ("all_to_all", "memory_time", "compute_time", "step_time"):
            out[key] = float(terms[key][0])
        out["throughput"] = B / out["step_time"]
        out["weight_bytes_per_step"] = float(self.weight_bytes_per_step(B, active))
        return out

    def step_time(self, context, batch_size, max_tokens=None, max_active=None):
        """Decode step time [s] per trial, from the busiest group's statistics per MoE layer.

        ``max_tokens`` and ``max_active`` are (trial, moe_layer) arrays (or (moe_layer,)); both
        are ignored (may be None) for a dense model. Returns an array (trial,) (length 1 for a
        dense model).
        """
        L = check_int("context", context, minimum=1, maximum=MAX_CONTEXT)
        B = check_int("batch_size", batch_size, minimum=1, maximum=MAX_BATCH_SIZE)
        return self._terms(L, B, max_tokens, max_active)["step_time"]

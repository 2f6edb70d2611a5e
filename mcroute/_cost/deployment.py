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
from typing import Any

from mcroute._base.options import option, options_of
from mcroute._base.validate import MAX_BATCH_SIZE, MAX_CONTEXT, MAX_GPUS, McrouteError
from mcroute._cost.calibrated import ALL_TO_ALL_MODES
from mcroute._cost.memory import MemoryMixin
from mcroute._cost.resolve import ResolveMixin
from mcroute._cost.roofline import (
    OPERATORS,
    attended_positions,
    kv_bytes_per_sequence,
    max_batch_size,
    roofline_time,
)
from mcroute._cost.step import StepMixin
from mcroute._routing.placement import Placement

__all__ = [
    "roofline_time",
    "max_batch_size",
    "attended_positions",
    "kv_bytes_per_sequence",
    "Deployment",
    "OPERATORS",
    "KERNEL_MODELS",
    "MEMORY_LAYOUTS",
    "DEPLOYMENT_OPTIONS",
]


def check_deployment_options(options: dict, what: str = "deployment option",
                             exclude=()) -> None:
    """Raise unless every key of ``options`` is a field of :class:`Deployment` (not excluded)."""
    known = [f.name for f in dataclasses.fields(Deployment) if f.name not in exclude]
    for key in options:
        if key not in known:
            raise McrouteError(f"unknown {what} {key!r}; known: {', '.join(known)}")


#: Attention parallelism (``attention_parallel``).
ATTENTION_PARALLEL = ("tensor", "data")
#: Time models of a Deployment (``kernels``).
KERNEL_MODELS = ("calibrated", "roofline")
#: Memory layouts (``memory_layout``): ``"engine"`` as real engines lay weights and caches out,
#: ``"ideal"`` everything split evenly (the pre-issue-13 capacity model).
MEMORY_LAYOUTS = ("engine", "ideal")
#: Most MTP draft tokens per step accepted by ``mtp_depth``.
MAX_MTP_DEPTH = 16
#: Most redundant expert slots per MoE layer accepted by ``redundant_experts``.
MAX_REDUNDANT_EXPERTS = 1_000_000
#: Options that :meth:`Deployment.describe` reports resolved: the attribute holding the value.
_RESOLVED_AS = {
    "compute_dtype": "flops_dtype", "expert_parallel": "expert_groups",
    "activation_dtype": "_activation_dtype", "attention_compute_dtype": "_attention_dtype",
    "all_to_all": "_all_to_all", "memory_layout": "_layout",
    "replicate_dense": "_replicate_dense",
}


@dataclasses.dataclass(frozen=True)
class Deployment(ResolveMixin, MemoryMixin, StepMixin):
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
    weight_dtype : str, optional
        Storage type of all weights (``"bf16"``, ``"fp8"``, ``"fp4"``, ...). Default (None): the
        dtype the model card says the weights were released in (``ModelSpec.release_dtype``,
        e.g. ``"fp8"`` for DeepSeek-V3, ``"bf16"`` for most cards and for specs without it);
        the resolved value is stored in ``weight_dtype`` and shown by :meth:`describe`.
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

    model: object = option(type="model", doc="model card name, path or ModelSpec", cli=False)
    hardware: object = option(type="hardware", doc="GPU card name, path or HardwareSpec",
                              short="-H", metavar="NAME|PATH")
    n_gpus: int = option(type="int", units="GPUs", doc="GPUs serving one model replica",
                         minimum=1, maximum=MAX_GPUS, short="-g", metavar="N")
    weight_dtype: str | None = option(
        None, type="dtype", metavar="DTYPE",
        doc="weight storage dtype (default: the dtype the model card's weights were released "
            "in, e.g. fp8 for DeepSeek-V3)")
    kv_dtype: str = option("bf16", type="dtype", metavar="DTYPE", doc="KV cache dtype")
    compute_dtype: str | None = option(
        None, type="dtype", metavar="DTYPE",
        doc="dtype whose peak FLOP/s applies (default: weight dtype if listed, else bf16)")
    activation_dtype: str | None = option(
        None, type="dtype", metavar="DTYPE",
        doc="activation dtype of the all-to-all dispatch (default: fp8 under calibrated "
            "kernels with 8-bit or narrower weights, else bf16)")
    hbm_fraction: float = option(0.9, type="float", doc="usable share of HBM", minimum=0.0,
                                 maximum=1.0, open_min=True)
    bandwidth_efficiency: float = option(
        1.0, type="float", doc="achievable share of peak HBM bandwidth", minimum=0.0,
        maximum=1.0, open_min=True)
    flops_efficiency: float = option(
        1.0, type="float", doc="achievable share of peak FLOP/s", minimum=0.0, maximum=1.0,
        open_min=True)
    attention_parallel: str = option("tensor", type="str", doc="attention parallelism",
                                     choices=ATTENTION_PARALLEL)
    expert_parallel: int | None = option(
        None, type="int", units="GPUs", doc="expert-parallel degree (default: n_gpus)",
        minimum=1, maximum=MAX_GPUS, metavar="D")
    expert_placement: tuple | None = option(
        None, type="placement", doc="group of each routed expert, or a Placement (default: "
        "balanced contiguous blocks)", metavar="balanced|FILE")
    max_batch: int | None = option(
        None, type="int", units="sequences", doc="cap on the batch size (default: none)",
        minimum=1, maximum=MAX_BATCH_SIZE, metavar="B")
    encoder_context: int | None = option(
        None, type="tokens", units="tokens", minimum=0, maximum=MAX_CONTEXT, metavar="L",
        doc="encoder tokens of encoder-decoder models (default: the context)")
    charge_all_to_all: bool | None = option(
        None, type="bool", cli=False,
        doc="older spelling of all_to_all: False is 'off', True 'overlap' (or 'none' with "
            "overlap_all_to_all=False)")
    overlap_all_to_all: bool | None = option(
        None, type="bool", cli=False,
        doc="older spelling of all_to_all, with charge_all_to_all=True")
    interconnect_efficiency: float = option(
        1.0, type="float", doc="achievable share of interconnect bandwidth", minimum=0.0,
        maximum=1.0, open_min=True)
    enforce_max_context: bool = option(
        False, type="bool", doc="treat contexts above the model's max_context as infeasible")
    kernels: str = option("calibrated", type="str", choices=KERNEL_MODELS,
                          doc="time model: calibrated kernel efficiencies, or the roofline")
    kernel_card: object = option(
        None, type="path", metavar="NAME|PATH",
        doc="kernel-efficiency card name or path (default: the card listing the hardware, "
            "else generic)")
    calibration_uncertainty: bool = option(
        True, type="bool", doc="draw the kernel parameters per trial from their fitted "
                               "uncertainty")
    all_to_all: str | None = option(
        None, type="str", choices=ALL_TO_ALL_MODES,
        doc="expert dispatch + combine (default: none under calibrated kernels, off under "
            "roofline)")
    memory_layout: str | None = option(
        None, type="str", choices=MEMORY_LAYOUTS,
        doc="engine or ideal memory layout (default: engine under calibrated kernels)")
    replicate_dense: bool | None = option(
        None, type="bool", doc="under data-parallel attention, keep dense layers whole on "
                               "every GPU")
    redundant_experts: int = option(
        0, type="int", units="experts", minimum=0, maximum=MAX_REDUNDANT_EXPERTS, metavar="N",
        doc="extra expert slots holding replicas of the hottest experts (EPLB-style)")
    attention_compute_dtype: str | None = option(
        None, type="dtype", metavar="DTYPE",
        doc="dtype whose peak FLOP/s applies to the attention core (default: bf16 under "
            "calibrated kernels)")
    mtp_depth: int = option(
        0, type="int", units="tokens", minimum=0, maximum=MAX_MTP_DEPTH, metavar="D",
        doc="draft tokens per step (MTP / speculative decoding)")
    mtp_acceptance: object = option(
        None, type="acceptance", metavar="A|beta:A,B",
        doc="acceptance rate of a draft token: a number in [0, 1] or 'beta:A,B' (required "
            "with mtp_depth > 0)")

    # -- construction and validation -----------------------------------------------------------
    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        # each option checked by its declaration, then the rules between options
        # (mcroute._cost.resolve), then the per-model constants of the memory arithmetic
        self._resolve(put)
        self._init_memory(put)

    # -- description ---------------------------------------------------------------------------
    def describe(self) -> dict:
        """Return the deployment's assumptions, resolved (JSON-able), for provenance."""
        out = {f.name: self._described(f.name) for f in dataclasses.fields(self)}
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

    def _described(self, name: str):
        """One option as :meth:`describe` reports it: resolved, JSON-able."""
        if name in _RESOLVED_AS:
            return getattr(self, _RESOLVED_AS[name])
        v = getattr(self, name)
        if name in ("model", "hardware"):
            return v.name
        if name == "expert_placement":
            if isinstance(v, Placement):
                return v.describe()
            if v is None:
                return "eplb" if self.redundant_experts else "contiguous"
            return list(v)
        if name == "kernel_card":
            return self._kcard.name if self._kcard is not None else "none (roofline)"
        if name == "charge_all_to_all":
            return self._all_to_all != "off"
        if name == "overlap_all_to_all":
            return self._all_to_all in ("overlap", "two-batch")
        if name == "mtp_acceptance":
            return v if isinstance(v, str) else float(self._acceptance)
        return v

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

    def replace(self, **changes: Any) -> Deployment:
        """Return a copy with fields changed (defaults left as None are resolved again)."""
        check_deployment_options(changes)
        if "weight_dtype" not in changes and self._weight_dtype_given is None:
            changes["weight_dtype"] = None  # the variant's model decides again
        return dataclasses.replace(self, **changes)

    @property
    def expert_tensor_parallel(self) -> int:
        """GPUs that split each expert within its expert-parallel group, n_gpus / D."""
        return self.n_gpus // self._ep


#: Every option of :class:`Deployment`, declared once (name, type, default, units, range, doc):
#: the source of the sweep parameters and the CLI flags.
DEPLOYMENT_OPTIONS = options_of(Deployment)

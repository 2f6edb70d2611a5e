"""Model and hardware cards: architecture and datasheet numbers as frozen dataclasses.

May import: the standard library, ``_validate`` and ``_resources`` (array layer; no numpy needed).

A *model card* (``models/llm/<name>.toml``) describes a transformer's architecture: layers,
widths, attention kind and sizes, FFN kind, the MoE layout, vocabulary and context length, the
published totals and the sources. :class:`ModelSpec` turns it into one :class:`LayerSpec` per
block that runs for every generated token, with parameter counts *computed* from the
architecture (the published totals are only checked in the tests). A *hardware card*
(``models/hardware/<name>.toml``) holds one GPU's HBM size and bandwidth, dense peak FLOP/s per
dtype and interconnect bandwidth (:class:`HardwareSpec`). The card format is documented in
``docs/cards.md``.

Parameter-count conventions (see ``docs/cards.md``):

* a weight matrix of ``m x n`` has ``m*n`` parameters and costs ``2*m*n`` FLOPs per token;
* layer norms, QK-norms, biases, attention sinks and position-bias tables are ignored (each
  < 0.1 % of every reference model);
* attention ``mha``/``gqa``: ``h*n_q*d + 2*h*n_kv*d + n_q*d*h``; ``mla``: the q path
  (``h*r_q + r_q*n*(d_nope+d_rope)``, or ``h*n*(d_nope+d_rope)`` when ``r_q = 0``), the kv path
  ``h*(r_kv+d_rope) + r_kv*n*(d_nope+d_v)`` and the output ``n*d_v*h``;
* FFN: gated (``swiglu``, ``geglu``) ``3*h*f``; plain (``relu``, ``gelu``) ``2*h*f``;
  router ``h*E`` per MoE layer;
* "active" parameters count the input embedding and the LM head (as DeepSeek does), all attention,
  dense FFNs, ``top_k`` routed experts, every shared expert and the router of each layer.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from mcroute._base.resources import hardware_dir, models_dir
from mcroute._base.validate import (
    BANDWIDTH_RANGE,
    HBM_BYTES_RANGE,
    INTERCONNECT_RANGE,
    MAX_CARD_INT,
    MAX_CONTEXT,
    MAX_EXPERTS,
    MAX_LAYERS,
    PEAK_FLOPS_RANGE,
    McrouteError,
    read_bounded,
    short_repr,
)

__all__ = [
    "DTYPE_BYTES",
    "HardwareSpec",
    "LayerSpec",
    "ModelSpec",
    "dtype_bytes",
    "list_hardware",
    "list_models",
    "load_hardware",
    "load_model",
]

#: Bytes per stored value of each supported dtype.
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "fp4": 0.5, "int4": 0.5}

ATTENTION_KINDS = ("mha", "gqa", "mla")
#: FFN activations and the number of ``hidden x intermediate`` matrices each uses.
FFN_MATRICES = {"swiglu": 3, "geglu": 3, "relu": 2, "gelu": 2}


def dtype_bytes(dtype) -> float:
    """Bytes per value of ``dtype`` [B].

    Parameters
    ----------
    dtype : str
        One of ``fp32, bf16, fp16, fp8, int8, fp4, int4`` (case-insensitive).

    Returns
    -------
    float
        Bytes per value, e.g. 2 for ``bf16`` and 0.5 for ``fp4``.

    Examples
    --------
    >>> dtype_bytes("bf16"), dtype_bytes("FP4")
    (2, 0.5)
    """
    key = str(dtype).strip().lower() if isinstance(dtype, str) else None
    if key not in DTYPE_BYTES:
        raise McrouteError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    return DTYPE_BYTES[key]


# ---------------------------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSpec:
    """One transformer block that runs for every generated token.

    Attributes
    ----------
    index : int
        Position of the block among the decode blocks (0-based).
    attention : str
        ``"mha"``, ``"gqa"`` or ``"mla"``.
    attn_params : int
        Weight parameters of the attention projections run per generated token [params]. For
        a decoder block of an encoder-decoder model this includes the cross-attention query and
        output projections (its key/value projections run once over the encoded input and are
        counted in :attr:`ModelSpec.other_resident_params`).
    kv_values_per_token : int
        Cached values per context token in this block [values]: ``2*n_kv*head_dim`` for
        MHA/GQA, ``kv_lora_rank + qk_rope_head_dim`` for MLA.
    sliding_window : int
        0 for full attention, else the window [tokens]: ``min(context, window)`` positions are
        attended and cached.
    attn_flops_per_token_per_ctx : int
        FLOPs per generated token per attended context position [FLOP]: ``QK^T`` plus ``AV``,
        ``4*n_q*head_dim`` for MHA/GQA; for MLA the absorbed form over the latent,
        ``2*n*(r_kv + d_rope) + 2*n*r_kv``.
    cross_kv_values_per_token : int
        Cross-attention cache per *encoder* token [values] (encoder-decoder models; else 0).
    ffn : str
        ``"dense"`` or ``"moe"``.
    dense_ffn_params : int
        Dense FFN parameters (0 for MoE blocks) [params].
    n_experts, top_k : int
        Routed experts and experts per token (0 for dense blocks).
    expert_params : int
        Parameters of ONE routed expert [params].
    n_shared_experts : int
        Shared experts every token passes through.
    shared_expert_params : int
        Parameters of all shared experts of the block together [params].
    router_params : int
        ``hidden * n_experts`` (0 for dense blocks) [params].
    cross_attn_flops_per_token_per_ctx : int
        FLOPs per generated token per *encoder* position of the cross-attention [FLOP] (0 unless
        encoder-decoder).
    n_kv_heads : int
        Heads of the cached keys/values: ``n_kv_heads`` for MHA/GQA, 1 for MLA (one latent
        shared by every head), 0 when unknown. Decides how much of the cache each GPU keeps
        under tensor-parallel attention (``Deployment(memory_layout="engine")``).
    """

    index: int
    attention: str
    attn_params: int
    kv_values_per_token: int
    sliding_window: int
    attn_flops_per_token_per_ctx: int
    cross_kv_values_per_token: int
    ffn: str
    dense_ffn_params: int
    n_experts: int
    top_k: int
    expert_params: int
    n_shared_experts: int
    shared_expert_params: int
    router_params: int
    cross_attn_flops_per_token_per_ctx: int = 0
    n_kv_heads: int = 0

    @property
    def total_params(self) -> int:
        """Resident parameters of the block (all experts) [params]."""
        return (self.attn_params + self.dense_ffn_params + self.n_experts * self.expert_params
                + self.shared_expert_params + self.router_params)

    @property
    def active_params(self) -> int:
        """Parameters one token touches in this block (``top_k`` routed experts) [params]."""
        return (self.attn_params + self.dense_ffn_params + self.top_k * self.expert_params
                + self.shared_expert_params + self.router_params)


@dataclass(frozen=True)
class ModelSpec:
    """A model: its decode blocks and everything else resident in memory.

    Build one with :func:`load_model` (a card by name or path), :meth:`from_dict` (a card
    dictionary) or :meth:`from_hf_config` (a Hugging Face ``config.json``).

    Attributes
    ----------
    name, display_name : str
        Card name as users type it (``"deepseek-v3"``) and a human-readable name.
    decode_layers : tuple of LayerSpec
        Blocks run per generated token, in order.
    hidden, vocab : int
        Model width and vocabulary size.
    embedding_params : int
        Input embedding table ``vocab*hidden`` [params].
    lm_head_params : int
        Output projection ``vocab*hidden``, 0 if tied to the embedding [params].
    other_resident_params : int
        Resident but not run per generated token [params]: the encoder and the cross-attention
        key/value projections of an encoder-decoder model, plus the card's
        ``extra_resident_params``.
    max_context : int
        Longest supported context [tokens].
    source : tuple of str
        Where the numbers come from.
    published_total_params, published_active_params : float or None
        The totals the authors publish [params] (compared with the computed ones in the tests).
    card : dict
        The card this spec was built from (used by :meth:`to_dict`; not compared).
    fp8_kv_bytes_per_token : int or None
        Bytes one cached token takes in ONE layer with an FP8 KV cache, as the attention kernel
        lays it out (values, scales, padding), e.g. 656 for DeepSeek-V3 with FlashMLA (card
        field ``attention.fp8_kv_bytes_per_token``); None: ``kv_values_per_token`` x 1 B. Used
        by ``Deployment(memory_layout="engine", kv_dtype="fp8")``.
    n_groups, topk_groups : int
        Group-limited routing of the card (``moe.n_groups`` / ``moe.topk_groups``, as in
        DeepSeek-V2/V3): the routed experts form ``n_groups`` contiguous groups and each token
        uses experts of at most ``topk_groups`` of them. 0 when the model does not route this
        way. :func:`mcroute.decode_throughput` then defaults to
        ``GroupLimited(Uniform(E, k), n_groups, topk_groups)`` (see :meth:`default_routing`).
    release_dtype : str
        The dtype the authors released the weights in (card key ``release_dtype``, default
        ``"bf16"``; e.g. ``"fp8"`` for DeepSeek-V3). ``Deployment(weight_dtype=None)`` stores
        the weights in this dtype.
    """

    name: str
    display_name: str
    decode_layers: tuple
    hidden: int
    vocab: int
    embedding_params: int
    lm_head_params: int
    other_resident_params: int
    max_context: int
    source: tuple
    published_total_params: float | None
    published_active_params: float | None
    card: dict | None = field(default=None, compare=False, repr=False)
    fp8_kv_bytes_per_token: int | None = None
    n_groups: int = 0
    topk_groups: int = 0
    release_dtype: str = "bf16"

    # -- derived ---------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        """Number of decode blocks."""
        return len(self.decode_layers)

    @property
    def total_params(self) -> int:
        """Everything resident: embeddings, head, all blocks with all experts, other [params]."""
        return (self.embedding_params + self.lm_head_params + self.other_resident_params
                + sum(la.total_params for la in self.decode_layers))

    @property
    def active_params(self) -> int:
        """Parameters touched per generated token, embedding and head included [params].

        Counts all attention, dense FFNs, ``top_k`` routed experts, all shared experts and the
        routers of every decode block, plus the input embedding and the LM head (DeepSeek's
        convention; with tied embeddings the table is counted once).
        """
        return (self.embedding_params + self.lm_head_params
                + sum(la.active_params for la in self.decode_layers))

    @property
    def sparsity(self) -> float:
        """``active_params / total_params``."""
        return self.active_params / self.total_params

    @property
    def moe_layers(self) -> tuple:
        """Indices of the decode blocks with a routed-expert FFN."""
        return tuple(la.index for la in self.decode_layers if la.ffn == "moe")

    @property
    def is_moe(self) -> bool:
        """Whether any decode block has routed experts."""
        return bool(self.moe_layers)

    def _moe_value(self, attr: str) -> int:
        values = {getattr(la, attr) for la in self.decode_layers if la.ffn == "moe"}
        if not values:
            return 0
        if len(values) > 1:
            raise McrouteError(f"model {self.name!r}: MoE layers disagree on {attr} "
                               f"({sorted(values)}); use decode_layers[i].{attr}")
        return values.pop()

    @property
    def n_experts(self) -> int:
        """Routed experts per MoE block (0 for a dense model)."""
        return self._moe_value("n_experts")

    @property
    def top_k(self) -> int:
        """Routed experts per token per MoE block (0 for a dense model)."""
        return self._moe_value("top_k")

    @property
    def n_shared_experts(self) -> int:
        """Shared experts per MoE block (0 for a dense model)."""
        return self._moe_value("n_shared_experts")

    @property
    def expert_params(self) -> int:
        """Parameters of one routed expert (0 for a dense model) [params]."""
        return self._moe_value("expert_params")

    @property
    def group_limited(self) -> bool:
        """Whether the card routes group-limited (``n_groups`` > 0)."""
        return self.n_groups > 0

    def default_routing(self):
        """The routing assumed when none is given: uniform, group-limited when the card says so.

        ``GroupLimited(Uniform(E, k), n_groups, topk_groups)`` for a group-limited card,
        ``Uniform(E, k)`` for another MoE model, None for a dense one.

        Examples
        --------
        >>> load_model("deepseek-v3").default_routing()
        GroupLimited(base=Uniform(n_experts=256, top_k=8), n_groups=8, topk_groups=4)
        """
        if not self.is_moe:
            return None
        from mcroute._routing.distributions import GroupLimited, Uniform

        base = Uniform(self.n_experts, self.top_k)
        if self.n_groups:
            return GroupLimited(base, self.n_groups, self.topk_groups)
        return base

    @property
    def attention_kind(self) -> str:
        """The attention kind of the decode blocks (``"mixed"`` if they differ)."""
        kinds = {la.attention for la in self.decode_layers}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    @property
    def is_encoder_decoder(self) -> bool:
        """Whether the decode blocks cross-attend to an encoded input."""
        return any(la.cross_kv_values_per_token for la in self.decode_layers)

    def kv_bytes_per_token(self, dtype="bf16", context=None) -> float:
        """KV-cache bytes per context token, summed over the decode blocks [B].

        Parameters
        ----------
        dtype : str
            Cache dtype (see :data:`DTYPE_BYTES`).
        context : int, optional
            Context length [tokens]. When given, a sliding-window block counts
            ``min(context, window) / context`` of a token, so the result is the average per
            token of a sequence of that length. When omitted, every block counts a full token
            (exact for ``context <= window``).

        Returns
        -------
        float
            Bytes per token [B]. Cross-attention caches (per *encoder* token) are not included;
            see :meth:`kv_bytes`.

        Examples
        --------
        >>> m = load_model("llama-3.1-70b")
        >>> m.kv_bytes_per_token("bf16")  # 2 (K,V) * 8 heads * 128 * 80 layers * 2 B
        327680.0
        """
        b = dtype_bytes(dtype)
        if context is not None:
            context = _pos_int("context", context)
        total = 0.0
        for la in self.decode_layers:
            frac = 1.0
            if context is not None and la.sliding_window:
                frac = min(context, la.sliding_window) / context
            total += la.kv_values_per_token * frac
        return total * b

    def kv_bytes(self, context, dtype="bf16", encoder_tokens=0) -> float:
        """KV-cache bytes of ONE sequence of ``context`` tokens [B].

        Parameters
        ----------
        context : int
            Decoder context length [tokens].
        dtype : str
            Cache dtype.
        encoder_tokens : int
            Encoded input length for encoder-decoder models [tokens] (cross-attention cache);
            ignored (must be 0 or omitted) otherwise.

        Returns
        -------
        float
            ``sum_layers values * min(context, window) * bytes`` plus the cross-attention cache
            ``sum_layers cross_values * encoder_tokens * bytes`` [B].
        """
        context = _pos_int("context", context)
        if isinstance(encoder_tokens, bool) or not isinstance(encoder_tokens, int) \
                or encoder_tokens < 0:
            raise McrouteError(f"encoder_tokens must be an integer >= 0, got {encoder_tokens!r}")
        b = dtype_bytes(dtype)
        total = 0
        for la in self.decode_layers:
            n = min(context, la.sliding_window) if la.sliding_window else context
            total += la.kv_values_per_token * n + la.cross_kv_values_per_token * encoder_tokens
        return float(total) * b

    # -- construction / conversion -----------------------------------------------------------
    def replace(self, **changes) -> ModelSpec:
        """Return a copy with fields replaced (:func:`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)

    def with_name(self, name: str, display_name: str | None = None) -> ModelSpec:
        """Return a copy under another name (e.g. a variant card)."""
        return dataclasses.replace(self, name=str(name),
                                   display_name=str(display_name or name))

    def describe(self) -> dict:
        """Return a small JSON-able summary (for provenance attrs)."""
        return {
            "name": self.name, "total_params": self.total_params,
            "active_params": self.active_params, "n_layers": self.n_layers,
            "n_experts": self.n_experts, "top_k": self.top_k,
            "n_shared_experts": self.n_shared_experts, "attention": self.attention_kind,
            "kv_bytes_per_token_bf16": self.kv_bytes_per_token("bf16"),
            "max_context": self.max_context,
            "n_groups": self.n_groups, "topk_groups": self.topk_groups,
            "release_dtype": self.release_dtype,
        }

    @classmethod
    def from_dict(cls, card: dict, origin: str = "<dict>") -> ModelSpec:
        """Build a spec from a card dictionary (the parsed TOML), validating every key.

        Parameters
        ----------
        card : dict
            Card contents; see ``docs/cards.md`` for the keys.
        origin : str
            Name of the file (or other origin) used in error messages.
        """
        with _malformed(origin):
            card = _validate_model_card(card, origin)
            return _build_model(card, origin)

    def to_dict(self) -> dict:
        """Return the card dictionary of this spec (``from_dict(spec.to_dict()) == spec``).

        Raises
        ------
        McrouteError
            If the spec was not built from a card, or its blocks were replaced so that they no
            longer follow from the card.
        """
        if self.card is None:
            raise McrouteError(f"model {self.name!r} was not built from a card; no card to return")
        out = copy.deepcopy(self.card)
        out["name"] = self.name
        out["display_name"] = self.display_name
        out["source"] = list(self.source)
        for key, value in (("published_total_params", self.published_total_params),
                           ("published_active_params", self.published_active_params)):
            out.pop(key, None)
            if value is not None:
                out[key] = value
        out["max_context_tokens"] = self.max_context
        rebuilt = ModelSpec.from_dict(out, origin=f"model {self.name!r}")
        if rebuilt != self:
            raise McrouteError(f"model {self.name!r}: its layers or sizes were replaced and no "
                               "longer follow from its card; cannot write it as a card")
        return out

    @classmethod
    def from_hf_config(cls, path_or_dict, name: str | None = None) -> ModelSpec:
        """Build a spec from a Hugging Face ``config.json``.

        Supported ``model_type`` values: ``deepseek_v2``, ``deepseek_v3``, ``qwen3_moe``,
        ``qwen3``, ``mixtral``, ``olmoe``, ``gpt_oss``, ``llama``.

        Parameters
        ----------
        path_or_dict : str, os.PathLike or dict
            Path to ``config.json`` (or to the folder holding it), or the parsed dictionary.
        name : str, optional
            Card name; default the config's ``_name_or_path`` or its ``model_type``.

        Returns
        -------
        ModelSpec
            With ``published_*`` set to None and ``source`` naming the config.

        Raises
        ------
        McrouteError
            Unknown ``model_type``, or a missing or inconsistent field (named).

        Notes
        -----
        DeepSeek-V3's multi-token-prediction module (``num_nextn_predict_layers``) is not part
        of the main model and is excluded. gpt-oss marks its sliding-window blocks in
        ``layer_types`` (else even blocks slide, as in the reference implementation).
        """
        cfg, origin = _read_hf(path_or_dict)
        with _malformed(origin):
            card = _hf_to_card(cfg, origin, name)
            return cls.from_dict(card, origin=origin)


@dataclass(frozen=True)
class HardwareSpec:
    """One accelerator (per-GPU numbers).

    Attributes
    ----------
    name, display_name : str
        Card name (``"h100-sxm"``) and a human-readable name.
    hbm_bytes : float
        HBM capacity per GPU [B].
    hbm_bandwidth : float
        HBM bandwidth per GPU [B/s].
    flops : dict
        Dense (non-sparse) peak FLOP/s per dtype, keys among ``bf16, fp8, fp4, ...`` [FLOP/s].
    interconnect_bandwidth : float
        Scale-up interconnect (NVLink / Infinity Fabric) bandwidth per GPU, one direction [B/s].
    gpus_per_node : int
        GPUs in one scale-up domain (NVLink / Infinity Fabric node), default 8.
    scaleout_bandwidth : float
        Scale-out network (NIC, e.g. 400 Gb/s InfiniBand NDR = 50e9 B/s) bandwidth per GPU, one
        direction [B/s]; 0 when unknown.
    scaleout_latency : float
        One-way latency of a small message over the scale-out network [s]; 0 when unknown.
    source : tuple of str
        Datasheets the numbers come from.
    notes : str
        Conventions and caveats from the card.
    """

    name: str
    display_name: str
    hbm_bytes: float
    hbm_bandwidth: float
    flops: dict = field(hash=False)
    interconnect_bandwidth: float
    source: tuple
    notes: str = field(default="", compare=False)
    gpus_per_node: int = 8
    scaleout_bandwidth: float = 0.0
    scaleout_latency: float = 0.0

    def peak_flops(self, dtype="bf16") -> float:
        """Dense peak FLOP/s for ``dtype`` [FLOP/s]; error naming the dtypes this GPU has.

        Examples
        --------
        >>> load_hardware("h100-sxm").peak_flops("bf16")
        989400000000000.0
        """
        key = str(dtype).strip().lower()
        if key not in self.flops:
            raise McrouteError(f"hardware {self.name!r} has no peak FLOP/s for dtype {dtype!r}; "
                               f"known: {', '.join(self.flops)}")
        return self.flops[key]

    def replace(self, **changes) -> HardwareSpec:
        """Return a copy with fields replaced (:func:`dataclasses.replace`)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> dict:
        """Return a small JSON-able summary (for provenance attrs)."""
        return {"name": self.name, "hbm_bytes": self.hbm_bytes,
                "hbm_bandwidth_bytes_per_s": self.hbm_bandwidth,
                "peak_dense_flops_per_s": dict(self.flops),
                "interconnect_bandwidth_bytes_per_s": self.interconnect_bandwidth,
                "gpus_per_node": self.gpus_per_node,
                "scaleout_bandwidth_bytes_per_s": self.scaleout_bandwidth,
                "scaleout_latency_s": self.scaleout_latency}

    @classmethod
    def from_dict(cls, card: dict, origin: str = "<dict>") -> HardwareSpec:
        """Build a spec from a hardware card dictionary, validating every key."""
        with _malformed(origin):
            return cls._from_dict(card, origin)

    @classmethod
    def _from_dict(cls, card: dict, origin: str) -> HardwareSpec:
        c = _validate(card, _HW_SCHEMA, origin, "")
        flops = c["peak_dense_flops_per_s"]
        for k in flops:
            if k not in DTYPE_BYTES:
                raise McrouteError(f"{origin}: unknown key 'peak_dense_flops_per_s.{k}' "
                                   f"(allowed dtypes: {', '.join(DTYPE_BYTES)})")
        if "bf16" not in flops:
            raise McrouteError(f"{origin}: missing required field 'peak_dense_flops_per_s.bf16'")
        return cls(
            name=c["name"], display_name=c["display_name"], hbm_bytes=float(c["hbm_bytes"]),
            hbm_bandwidth=float(c["hbm_bandwidth_bytes_per_s"]),
            flops={k: float(v) for k, v in flops.items()},
            interconnect_bandwidth=float(c["interconnect_bandwidth_bytes_per_s"]),
            source=tuple(c["source"]), notes=c.get("notes", ""),
            gpus_per_node=int(c["gpus_per_node"]),
            scaleout_bandwidth=float(c["scaleout_bandwidth_bytes_per_s"]),
            scaleout_latency=float(c["scaleout_latency_s"]),
        )

    def to_dict(self) -> dict:
        """Return the hardware card dictionary of this spec."""
        out = {"name": self.name, "display_name": self.display_name,
               "source": list(self.source), "hbm_bytes": self.hbm_bytes,
               "hbm_bandwidth_bytes_per_s": self.hbm_bandwidth,
               "interconnect_bandwidth_bytes_per_s": self.interconnect_bandwidth,
               "gpus_per_node": self.gpus_per_node,
               "scaleout_bandwidth_bytes_per_s": self.scaleout_bandwidth,
               "scaleout_latency_s": self.scaleout_latency,
               "peak_dense_flops_per_s": dict(self.flops)}
        if self.notes:
            out["notes"] = self.notes
        return out


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


class _malformed:
    """Turn any stray Python error while reading a card into a McrouteError naming its origin.

    The validators raise McrouteError for every case they know; this is the safety net for
    inputs they do not foresee (issue 11: no traceback for a malformed card).
    """

    def __init__(self, origin):
        self.origin = origin

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None or isinstance(exc, McrouteError):
            return False
        if isinstance(exc, (TypeError, ValueError, AttributeError, KeyError, IndexError,
                            OverflowError, RecursionError, ZeroDivisionError)):
            raise McrouteError(f"{self.origin}: malformed card ({type(exc).__name__}: "
                               f"{str(exc)[:120]})") from None
        return False


def _card_names(folder) -> list[str]:
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def list_models() -> list[str]:
    """Names of the model cards shipped with mcroute, sorted.

    Examples
    --------
    >>> "deepseek-v3" in list_models()
    True
    """
    return _card_names(models_dir())


def list_hardware() -> list[str]:
    """Names of the hardware cards shipped with mcroute, sorted.

    Examples
    --------
    >>> "h100-sxm" in list_hardware()
    True
    """
    return _card_names(hardware_dir())


def _is_path(x) -> bool:
    if isinstance(x, os.PathLike):
        return True
    s = str(x)
    return s.endswith(".toml") or os.sep in s or "/" in s


def _read_card(name_or_path, folder, known, kind):
    if isinstance(name_or_path, (dict, ModelSpec, HardwareSpec)):
        raise McrouteError(f"{kind} must be a card name or a path to a .toml file, "
                           f"got {type(name_or_path).__name__}")
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise McrouteError(f"{kind} must be a card name or a path to a .toml file, "
                           f"got {type(name_or_path).__name__}")
    if _is_path(name_or_path):
        path = Path(name_or_path)
        text = read_bounded(path, f"{kind} card {str(path)!r}")
        origin, expect = str(path), None
    else:
        key = str(name_or_path).strip().lower()
        if key not in known:
            raise McrouteError(f"unknown {kind} {str(name_or_path)!r}; known: {', '.join(known)}")
        res = folder.joinpath(key + ".toml")
        text = res.read_text(encoding="utf-8")
        origin, expect = f"{kind} card {key}.toml", key
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:  # ValueError: an int of > 4300 digits
        raise McrouteError(f"{origin}: not valid TOML: {str(exc)[:200]}") from None
    except RecursionError:
        raise McrouteError(f"{origin}: not valid TOML: nested too deeply") from None
    if expect is not None and data.get("name") != expect:
        raise McrouteError(f"{origin}: field 'name' must equal the file name {expect!r}, "
                           f"got {data.get('name')!r}")
    return data, origin


def load_model(name_or_path) -> ModelSpec:
    """Load a model card by name (see :func:`list_models`) or from a ``.toml`` path.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        Card name such as ``"deepseek-v3"`` (case-insensitive), or a path to a card file.

    Returns
    -------
    ModelSpec

    Raises
    ------
    McrouteError
        Unknown name (the message lists the known ones), unreadable file, invalid TOML, or a
        card field that is missing, unknown, of the wrong type or out of range (named with the
        file).

    Examples
    --------
    >>> m = load_model("deepseek-v3")
    >>> m.n_layers, m.n_experts, m.top_k, m.n_shared_experts, len(m.moe_layers)
    (61, 256, 8, 1, 58)
    >>> round(m.total_params / 1e9, 1), round(m.active_params / 1e9, 1)
    (671.0, 37.6)
    """
    data, origin = _read_card(name_or_path, models_dir(),
                              list_models() if not _is_path(name_or_path) else [], "model")
    return ModelSpec.from_dict(data, origin=origin)


def load_hardware(name_or_path) -> HardwareSpec:
    """Load a hardware card by name (see :func:`list_hardware`) or from a ``.toml`` path.

    Examples
    --------
    >>> h = load_hardware("h200")
    >>> h.hbm_bandwidth / 1e12
    4.8
    """
    data, origin = _read_card(name_or_path, hardware_dir(),
                              list_hardware() if not _is_path(name_or_path) else [], "hardware")
    return HardwareSpec.from_dict(data, origin=origin)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------

_REQ = object()  # marks a required key


class _T:
    """Schema entry: kind in {int, num, bool, str, strlist, intlist, window_layers, table}."""

    def __init__(self, kind, default=_REQ, minimum=None, choices=None, sub=None, maximum=None):
        self.kind, self.default, self.minimum, self.choices, self.sub = \
            kind, default, minimum, choices, sub
        # Every integer field is bounded (mcroute._base.validate.MAX_CARD_INT unless tighter), so
        # that no product of card numbers overflows or allocates absurdly.
        self.maximum = MAX_CARD_INT if maximum is None and kind in ("int", "intlist") \
            else maximum


_ATTN_SCHEMA = {
    "kind": _T("str", choices=ATTENTION_KINDS),
    "n_heads": _T("int", minimum=1),
    "n_kv_heads": _T("int", None, minimum=1),
    "head_dim": _T("int", None, minimum=1),
    "q_lora_rank": _T("int", None, minimum=0),
    "kv_lora_rank": _T("int", None, minimum=1),
    "qk_nope_head_dim": _T("int", None, minimum=0),
    "qk_rope_head_dim": _T("int", None, minimum=0),
    "v_head_dim": _T("int", None, minimum=1),
    "sliding_window_tokens": _T("int", None, minimum=0),
    "sliding_window_layers": _T("window_layers", None),
    "fp8_kv_bytes_per_token": _T("int", None, minimum=1, maximum=1 << 20),
}
_MHA_KEYS = ("n_kv_heads", "head_dim")
_MLA_KEYS = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")

_FFN_SCHEMA = {
    "activation": _T("str", choices=tuple(FFN_MATRICES)),
    "intermediate": _T("int", None, minimum=1),
}
_MOE_SCHEMA = {
    "n_routed_experts": _T("int", minimum=1, maximum=MAX_EXPERTS),
    "top_k": _T("int", minimum=1),
    "expert_intermediate": _T("int", minimum=1),
    "n_shared_experts": _T("int", 0, minimum=0),
    "shared_expert_intermediate": _T("int", None, minimum=1),
    "dense_layers": _T("intlist", [], minimum=0),
    "n_groups": _T("int", None, minimum=1),
    "topk_groups": _T("int", None, minimum=1),
}
_ENC_SCHEMA = {
    "n_layers": _T("int", minimum=1, maximum=MAX_LAYERS),
    "dense_layers": _T("intlist", [], minimum=0),
}
_MODEL_SCHEMA = {
    "name": _T("str"),
    "display_name": _T("str"),
    "source": _T("strlist"),
    "notes": _T("str", None),
    "published_total_params": _T("num", None, minimum=0),
    "published_active_params": _T("num", None, minimum=0),
    "n_layers": _T("int", minimum=1, maximum=MAX_LAYERS),
    "hidden": _T("int", minimum=1),
    "vocab": _T("int", minimum=1),
    "tie_word_embeddings": _T("bool"),
    "max_context_tokens": _T("int", minimum=1, maximum=MAX_CONTEXT),
    "release_dtype": _T("str", "bf16", choices=tuple(DTYPE_BYTES)),
    "extra_resident_params": _T("int", 0, minimum=0),
    "attention": _T("table", sub=_ATTN_SCHEMA),
    "ffn": _T("table", sub=_FFN_SCHEMA),
    "moe": _T("table", None, sub=_MOE_SCHEMA),
    "encoder": _T("table", None, sub=_ENC_SCHEMA),
}
_HW_SCHEMA = {
    "name": _T("str"),
    "display_name": _T("str"),
    "source": _T("strlist"),
    "notes": _T("str", None),
    "hbm_bytes": _T("num", minimum=HBM_BYTES_RANGE[0], maximum=HBM_BYTES_RANGE[1]),
    "hbm_bandwidth_bytes_per_s": _T("num", minimum=BANDWIDTH_RANGE[0],
                                    maximum=BANDWIDTH_RANGE[1]),
    "interconnect_bandwidth_bytes_per_s": _T("num", minimum=INTERCONNECT_RANGE[0],
                                             maximum=INTERCONNECT_RANGE[1]),
    "gpus_per_node": _T("int", 8, minimum=1, maximum=1 << 16),
    "scaleout_bandwidth_bytes_per_s": _T("num", 0.0, minimum=INTERCONNECT_RANGE[0],
                                         maximum=INTERCONNECT_RANGE[1]),
    "scaleout_latency_s": _T("num", 0.0, minimum=0.0, maximum=1.0),
    "peak_dense_flops_per_s": _T("flopstable"),
}

_TYPE_WORDS = {"int": "an integer", "num": "a number", "bool": "true or false", "str": "a string",
               "strlist": "a non-empty list of strings", "intlist": "a list of integers",
               "table": "a table", "flopstable": "a table of dtype = FLOP/s",
               "window_layers": "\"all\", \"even\", \"odd\" or a list of layer indices"}


def _bad(origin, key, spec, value, extra=""):
    lim = ""
    if spec.kind in ("int", "num", "intlist"):
        if spec.minimum is not None and spec.maximum is not None:
            lim = f" in [{spec.minimum:g}, {spec.maximum:g}]" if spec.kind == "num" else \
                f" in [{spec.minimum}, {spec.maximum}]"
        elif spec.minimum is not None:
            lim = f" >= {spec.minimum}"
    if spec.choices:
        lim = f" (one of {', '.join(spec.choices)})"
    return McrouteError(f"{origin}: field '{key}' must be {_TYPE_WORDS[spec.kind]}{lim}{extra}, "
                        f"got {short_repr(value)}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_value(origin, key, spec, v):
    k = spec.kind
    if k == "int":
        if not _is_int(v) or (spec.minimum is not None and v < spec.minimum) \
                or (spec.maximum is not None and v > spec.maximum):
            raise _bad(origin, key, spec, v)
    elif k == "num":
        try:
            ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
        except OverflowError:  # an int beyond the float range
            ok = False
        if not ok or (spec.minimum is not None and v < spec.minimum) \
                or (spec.maximum is not None and v > spec.maximum):
            raise _bad(origin, key, spec, v)
    elif k == "bool":
        if not isinstance(v, bool):
            raise _bad(origin, key, spec, v)
    elif k == "str":
        if not isinstance(v, str) or not v.strip() or (spec.choices and v not in spec.choices):
            raise _bad(origin, key, spec, v)
    elif k == "strlist":
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not v or not all(isinstance(s, str) and s for s in v):
            raise _bad(origin, key, spec, v)
        v = list(v)
    elif k == "intlist":
        if not isinstance(v, list) or not all(
                _is_int(i) and (spec.minimum or 0) <= i <= spec.maximum for i in v):
            raise _bad(origin, key, spec, v)
        if len(set(v)) != len(v):
            raise _bad(origin, key, spec, v, " without repeats")
        v = sorted(v)
    elif k == "window_layers":
        ok = (isinstance(v, str) and v in ("all", "even", "odd")) or (
            isinstance(v, list) and all(_is_int(i) and 0 <= i < MAX_LAYERS for i in v))
        if not ok:
            raise _bad(origin, key, spec, v)
        v = sorted(set(v)) if isinstance(v, list) else v
    elif k == "flopstable":
        if not isinstance(v, dict) or not v:
            raise _bad(origin, key, spec, v)
        lo, hi = PEAK_FLOPS_RANGE
        for dt, f in v.items():
            try:
                ok = (not isinstance(f, bool) and isinstance(f, (int, float))
                      and math.isfinite(f) and lo <= f <= hi)
            except OverflowError:  # an int beyond the float range
                ok = False
            if not ok:
                raise McrouteError(
                    f"{origin}: field '{key}.{dt}' must be a number in [{lo:g}, {hi:g}] "
                    f"[FLOP/s per GPU] (mcroute._base.validate.PEAK_FLOPS_RANGE), got "
                    f"{short_repr(f)}")
        v = dict(v)
    return v


def _validate(data, schema, origin, prefix):
    """Check keys and types against ``schema``; return a new dict with defaults filled in."""
    if not isinstance(data, dict):
        raise McrouteError(f"{origin}: {'field ' + repr(prefix[:-1]) if prefix else 'card'} "
                           f"must be a table, got {type(data).__name__}")
    for key in data:
        if key not in schema:
            raise McrouteError(f"{origin}: unknown key '{prefix}{key}' (allowed: "
                               f"{', '.join(schema)})")
    out = {}
    for key, spec in schema.items():
        full = prefix + key
        if key not in data:
            if spec.default is _REQ:
                raise McrouteError(f"{origin}: missing required field '{full}'")
            if spec.default is not None:
                out[key] = copy.copy(spec.default)
            continue
        v = data[key]
        if spec.kind == "table":
            v = _validate(v, spec.sub, origin, full + ".")
        else:
            v = _check_value(origin, full, spec, v)
        out[key] = v
    return out


def _validate_model_card(card, origin) -> dict:
    c = _validate(card, _MODEL_SCHEMA, origin, "")
    L = c["n_layers"]
    att = c["attention"]
    kind = att["kind"]
    need = _MLA_KEYS if kind == "mla" else _MHA_KEYS
    other = _MHA_KEYS if kind == "mla" else _MLA_KEYS
    for key in other:
        if key in att:
            raise McrouteError(f"{origin}: key 'attention.{key}' does not apply to attention "
                               f"kind {kind!r}")
    for key in need:
        if key not in att:
            if kind == "mha" and key == "n_kv_heads":
                att["n_kv_heads"] = att["n_heads"]
                continue
            raise McrouteError(f"{origin}: missing required field 'attention.{key}' "
                               f"(attention kind {kind!r})")
    if kind == "mha" and att["n_kv_heads"] != att["n_heads"]:
        raise McrouteError(f"{origin}: field 'attention.n_kv_heads' must equal "
                           f"attention.n_heads ({att['n_heads']}) for kind 'mha' (use 'gqa'), "
                           f"got {att['n_kv_heads']}")
    if kind == "gqa" and att["n_heads"] % att["n_kv_heads"]:
        raise McrouteError(f"{origin}: field 'attention.n_kv_heads' must divide "
                           f"attention.n_heads ({att['n_heads']}), got {att['n_kv_heads']}")
    win = att.get("sliding_window_tokens", 0)
    wl = att.get("sliding_window_layers")
    if wl is not None and not win:
        raise McrouteError(f"{origin}: field 'attention.sliding_window_layers' needs "
                           "attention.sliding_window_tokens > 0")
    if isinstance(wl, list) and wl and wl[-1] >= L:
        raise McrouteError(f"{origin}: field 'attention.sliding_window_layers' has layer "
                           f"{wl[-1]}, but n_layers = {L}")
    moe = c.get("moe")
    ffn = c["ffn"]
    if moe is not None:
        if moe["top_k"] > moe["n_routed_experts"]:
            raise McrouteError(f"{origin}: field 'moe.top_k' must be <= moe.n_routed_experts "
                               f"({moe['n_routed_experts']}), got {moe['top_k']}")
        if moe["n_shared_experts"] > 0 and "shared_expert_intermediate" not in moe:
            raise McrouteError(f"{origin}: missing required field "
                               "'moe.shared_expert_intermediate' (moe.n_shared_experts > 0)")
        if moe["n_shared_experts"] == 0 and "shared_expert_intermediate" in moe:
            raise McrouteError(f"{origin}: field 'moe.shared_expert_intermediate' given but "
                               "moe.n_shared_experts = 0")
        dense = moe["dense_layers"]
        if dense and dense[-1] >= L:
            raise McrouteError(f"{origin}: field 'moe.dense_layers' has layer {dense[-1]}, but "
                               f"n_layers = {L}")
        if ("n_groups" in moe) != ("topk_groups" in moe):
            raise McrouteError(f"{origin}: fields 'moe.n_groups' and 'moe.topk_groups' must be "
                               "given together")
        if "n_groups" in moe and (moe["n_routed_experts"] % moe["n_groups"]
                                  or moe["topk_groups"] > moe["n_groups"]):
            raise McrouteError(f"{origin}: field 'moe.n_groups' must divide "
                               "moe.n_routed_experts and be >= moe.topk_groups")
        if "n_groups" in moe and (moe["topk_groups"] * (moe["n_routed_experts"]
                                                        // moe["n_groups"]) < moe["top_k"]):
            raise McrouteError(f"{origin}: fields 'moe.topk_groups' x experts per group must be "
                               ">= moe.top_k (a token needs top_k experts in its groups)")
        has_dense = bool(dense)
    else:
        has_dense = True
    enc = c.get("encoder")
    if enc is not None:
        if enc["dense_layers"] and moe is None:
            raise McrouteError(f"{origin}: field 'encoder.dense_layers' needs a [moe] table")
        if enc["dense_layers"] and enc["dense_layers"][-1] >= enc["n_layers"]:
            raise McrouteError(f"{origin}: field 'encoder.dense_layers' has layer "
                               f"{enc['dense_layers'][-1]}, but encoder.n_layers = "
                               f"{enc['n_layers']}")
        if moe is None or enc["dense_layers"]:
            has_dense = True
        if kind == "mla":
            raise McrouteError(f"{origin}: encoder-decoder models with attention kind 'mla' are "
                               "not supported")
    if has_dense and "intermediate" not in ffn:
        raise McrouteError(f"{origin}: missing required field 'ffn.intermediate' (the model has "
                           "dense FFN layers)")
    return c


# ---------------------------------------------------------------------------------------------
# Building a ModelSpec from a validated card
# ---------------------------------------------------------------------------------------------


def _attention_numbers(att, h):
    """Return (params, kv values per token, FLOPs per token per context position)."""
    n = att["n_heads"]
    if att["kind"] == "mla":
        qr, kr = att["q_lora_rank"], att["kv_lora_rank"]
        dn, dr, dv = att["qk_nope_head_dim"], att["qk_rope_head_dim"], att["v_head_dim"]
        q = h * qr + qr * n * (dn + dr) if qr > 0 else h * n * (dn + dr)
        kv = h * (kr + dr) + kr * n * (dn + dv)
        o = n * dv * h
        return q + kv + o, kr + dr, 2 * n * (kr + dr) + 2 * n * kr
    nkv, d = att["n_kv_heads"], att["head_dim"]
    return 2 * h * n * d + 2 * h * nkv * d, 2 * nkv * d, 4 * n * d


def _sliding_set(att, L):
    win = att.get("sliding_window_tokens", 0)
    if not win:
        return set(), 0
    wl = att.get("sliding_window_layers", "all")
    if wl == "all":
        return set(range(L)), win
    if wl == "even":
        return set(range(0, L, 2)), win
    if wl == "odd":
        return set(range(1, L, 2)), win
    return set(wl), win


def _ffn_numbers(c):
    """Return a function layer_is_dense -> dict of the FFN fields of LayerSpec."""
    h = c["hidden"]
    mult = FFN_MATRICES[c["ffn"]["activation"]]
    dense = {"ffn": "dense", "dense_ffn_params": mult * h * c["ffn"].get("intermediate", 0),
             "n_experts": 0, "top_k": 0, "expert_params": 0, "n_shared_experts": 0,
             "shared_expert_params": 0, "router_params": 0}
    moe = c.get("moe")
    if moe is None:
        return dense, None
    e = moe["n_routed_experts"]
    sparse = {"ffn": "moe", "dense_ffn_params": 0, "n_experts": e, "top_k": moe["top_k"],
              "expert_params": mult * h * moe["expert_intermediate"],
              "n_shared_experts": moe["n_shared_experts"],
              "shared_expert_params": moe["n_shared_experts"] * mult * h
              * moe.get("shared_expert_intermediate", 0),
              "router_params": h * e}
    return dense, sparse


def _build_model(c, origin) -> ModelSpec:
    h, L, V = c["hidden"], c["n_layers"], c["vocab"]
    att = c["attention"]
    a_params, kv_vals, a_flops = _attention_numbers(att, h)
    sliding, win = _sliding_set(att, L)
    dense_ffn, moe_ffn = _ffn_numbers(c)
    moe_dense = set(c["moe"]["dense_layers"]) if "moe" in c else set()
    enc = c.get("encoder")
    cross_kv = cross_flops = cross_qo = 0
    other = c.get("extra_resident_params", 0)
    if enc is not None:
        n, nkv, d = att["n_heads"], att["n_kv_heads"], att["head_dim"]
        cross_kv = 2 * nkv * d
        cross_flops = 4 * n * d
        cross_qo = 2 * h * n * d            # query and output projections run per token
        other += L * 2 * h * nkv * d        # key/value projections run once over the input
        enc_dense = set(enc["dense_layers"])
        for i in range(enc["n_layers"]):
            ffn = dense_ffn if (moe_ffn is None or i in enc_dense) else moe_ffn
            other += a_params + ffn["dense_ffn_params"] + ffn["n_experts"] * ffn["expert_params"] \
                + ffn["shared_expert_params"] + ffn["router_params"]
    layers = []
    for i in range(L):
        ffn = dense_ffn if (moe_ffn is None or i in moe_dense) else moe_ffn
        layers.append(LayerSpec(
            index=i, attention=att["kind"], attn_params=a_params + cross_qo,
            kv_values_per_token=kv_vals, sliding_window=win if i in sliding else 0,
            attn_flops_per_token_per_ctx=a_flops, cross_kv_values_per_token=cross_kv,
            cross_attn_flops_per_token_per_ctx=cross_flops,
            n_kv_heads=1 if att["kind"] == "mla" else att["n_kv_heads"], **ffn,
        ))
    fp8_kv = att.get("fp8_kv_bytes_per_token")
    if fp8_kv is not None and fp8_kv < kv_vals:
        raise McrouteError(f"{origin}: field 'attention.fp8_kv_bytes_per_token' ({fp8_kv}) must "
                           f"be at least the {kv_vals} cached values per token x 1 B")
    pub_t, pub_a = c.get("published_total_params"), c.get("published_active_params")
    return ModelSpec(
        name=c["name"], display_name=c["display_name"], decode_layers=tuple(layers), hidden=h,
        vocab=V, embedding_params=V * h, lm_head_params=0 if c["tie_word_embeddings"] else V * h,
        other_resident_params=other, max_context=c["max_context_tokens"],
        source=tuple(c["source"]),
        published_total_params=None if pub_t is None else float(pub_t),
        published_active_params=None if pub_a is None else float(pub_a),
        card=c, fp8_kv_bytes_per_token=fp8_kv,
        n_groups=int(c.get("moe", {}).get("n_groups", 0)),
        topk_groups=int(c.get("moe", {}).get("topk_groups", 0)),
        release_dtype=c["release_dtype"],
    )


def _pos_int(name, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        try:
            ok = float(v).is_integer() and float(v) >= 1 and not isinstance(v, bool)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise McrouteError(f"{name} must be an integer >= 1 [tokens], got {v!r}")
        v = int(v)
    return v


# ---------------------------------------------------------------------------------------------
# Hugging Face config.json -> card
# ---------------------------------------------------------------------------------------------

HF_MODEL_TYPES = ("deepseek_v2", "deepseek_v3", "qwen3_moe", "qwen3", "mixtral", "olmoe",
                  "gpt_oss", "llama")
_MISSING = object()
#: Hugging Face ``torch_dtype`` (newer configs: ``dtype``) values and the dtype each names.
HF_TORCH_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
#: ``quantization_config.quant_method`` values whose stored weight dtype is known: DeepSeek-V3's
#: config says ``"fp8"`` (block-scaled e4m3), gpt-oss's ``"mxfp4"`` (MoE weights in MXFP4).
HF_QUANT_METHODS = {"fp8": "fp8", "mxfp4": "fp4"}


def _read_hf(path_or_dict):
    if isinstance(path_or_dict, dict):
        return path_or_dict, "HF config <dict>"
    if not isinstance(path_or_dict, (str, os.PathLike)):
        raise McrouteError("path_or_dict must be a path to config.json (or its folder) or a "
                           f"dict, got {type(path_or_dict).__name__}")
    try:
        path = Path(path_or_dict)
        if path.is_dir():
            path = path / "config.json"
    except (TypeError, ValueError, OSError) as exc:  # e.g. a NUL byte in the path
        raise McrouteError(f"cannot read HF config {short_repr(path_or_dict)}: {exc}") from None
    text = read_bounded(path, f"HF config {str(path)!r}")
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise McrouteError(f"{path}: not valid JSON: {exc}") from None
    except ValueError as exc:  # an int of more than 4300 digits
        raise McrouteError(f"{path}: not valid JSON: {str(exc)[:120]}") from None
    except RecursionError:
        raise McrouteError(f"{path}: not valid JSON: nested too deeply") from None
    if not isinstance(cfg, dict):
        raise McrouteError(f"{path}: HF config must be a JSON object")
    return cfg, str(path)


class _HF:
    """Typed access to HF config fields with errors naming the field and the file."""

    def __init__(self, cfg, origin):
        self.cfg, self.origin = cfg, origin
        self.mt = cfg.get("model_type")

    def err(self, key, what):
        return McrouteError(f"{self.origin}: field '{key}' {what} (model_type "
                            f"{short_repr(self.mt)})")

    def int(self, key, default=_MISSING, minimum=1, maximum=MAX_CARD_INT):
        v = self.cfg.get(key, _MISSING)
        if v is _MISSING or v is None:
            if default is _MISSING:
                raise self.err(key, "is missing")
            return default
        if not _is_int(v) or not minimum <= v <= maximum:
            raise self.err(key, f"must be an integer in [{minimum}, {maximum}], got "
                                f"{short_repr(v)}")
        return v

    def intlist(self, key, default=_MISSING):
        v = self.cfg.get(key, _MISSING)
        if v is _MISSING or v is None:
            if default is _MISSING:
                raise self.err(key, "is missing")
            return default
        if not isinstance(v, list) or not all(_is_int(i) and 0 <= i < MAX_LAYERS for i in v):
            raise self.err(key, f"must be a list of layer indices, got {short_repr(v)}")
        return v

    def bool(self, key, default):
        v = self.cfg.get(key, default)
        if not isinstance(v, bool):
            raise self.err(key, f"must be true or false, got {short_repr(v)}")
        return v

    def head_dim(self, n_heads, hidden):
        hd = self.cfg.get("head_dim")
        if hd is None:
            if hidden % n_heads:
                raise self.err("head_dim", f"is missing and hidden_size {hidden} is not a "
                                           f"multiple of num_attention_heads {n_heads}")
            return hidden // n_heads
        return self.int("head_dim")


def _hf_gqa(hf, h):
    n = hf.int("num_attention_heads")
    nkv = hf.int("num_key_value_heads", n)
    if n % nkv:
        raise hf.err("num_key_value_heads", f"must divide num_attention_heads ({n}), got {nkv}")
    att = {"kind": "mha" if nkv == n else "gqa", "n_heads": n, "head_dim": hf.head_dim(n, h)}
    if nkv != n:
        att["n_kv_heads"] = nkv
    return att


def _hf_check_layers(hf, key, layers, L):
    bad = [i for i in layers if i >= L]
    if bad:
        raise hf.err(key, f"lists layer {bad[0]} but num_hidden_layers = {L}")


def _hf_to_card(cfg, origin, name):
    hf = _HF(cfg, origin)
    mt = hf.mt
    if mt not in HF_MODEL_TYPES:
        raise McrouteError(f"{origin}: field 'model_type' {short_repr(mt)} is not supported; "
                           "supported: "
                           f"{', '.join(HF_MODEL_TYPES)}")
    h = hf.int("hidden_size")
    L = hf.int("num_hidden_layers", maximum=MAX_LAYERS)
    nm = name or cfg.get("_name_or_path") or mt
    nm = str(nm).rstrip("/").split("/")[-1]
    card = {
        "name": str(nm).lower(), "display_name": str(nm),
        "source": [f"Hugging Face config.json ({origin}, model_type {mt})"],
        "n_layers": L, "hidden": h, "vocab": hf.int("vocab_size"),
        "tie_word_embeddings": hf.bool("tie_word_embeddings", False),
        "max_context_tokens": hf.int("max_position_embeddings"),
        "ffn": {"activation": "swiglu"},
    }
    if mt in ("deepseek_v2", "deepseek_v3"):
        n = hf.int("num_attention_heads")
        card["attention"] = {
            "kind": "mla", "n_heads": n, "q_lora_rank": hf.int("q_lora_rank", 0, minimum=0),
            "kv_lora_rank": hf.int("kv_lora_rank"),
            "qk_nope_head_dim": hf.int("qk_nope_head_dim", minimum=0),
            "qk_rope_head_dim": hf.int("qk_rope_head_dim", minimum=0),
            "v_head_dim": hf.int("v_head_dim"),
        }
        card["ffn"]["intermediate"] = hf.int("intermediate_size")
        e = hf.int("n_routed_experts", None, maximum=MAX_EXPERTS)
        if e is not None:
            first = hf.int("first_k_dense_replace", 0, minimum=0)
            freq = hf.int("moe_layer_freq", 1)
            if first > L:
                raise hf.err("first_k_dense_replace", f"({first}) exceeds num_hidden_layers ({L})")
            dense = [i for i in range(L) if not (i >= first and i % freq == 0)]
            if len(dense) == L:
                raise hf.err("first_k_dense_replace", "leaves no MoE layer")
            moe = {"n_routed_experts": e, "top_k": hf.int("num_experts_per_tok"),
                   "expert_intermediate": hf.int("moe_intermediate_size"),
                   "dense_layers": dense}
            ns = hf.int("n_shared_experts", 0, minimum=0)
            if ns:
                moe["n_shared_experts"] = ns
                moe["shared_expert_intermediate"] = moe["expert_intermediate"]
            ng, tg = hf.int("n_group", None), hf.int("topk_group", None)
            if ng is not None and tg is not None and ng > 1:
                moe["n_groups"], moe["topk_groups"] = ng, tg
            card["moe"] = moe
    elif mt in ("qwen3_moe", "qwen3", "llama"):
        card["attention"] = _hf_gqa(hf, h)
        if cfg.get("use_sliding_window"):
            raise hf.err("use_sliding_window", "is true; Qwen sliding-window layouts are not "
                                               "supported")
        e = hf.int("num_experts", 0, minimum=0, maximum=MAX_EXPERTS) if mt == "qwen3_moe" else 0
        inter = hf.int("intermediate_size", None if e else _MISSING)
        if inter is not None:
            card["ffn"]["intermediate"] = inter
        if e:
            step = hf.int("decoder_sparse_step", 1)
            only = hf.intlist("mlp_only_layers", [])
            _hf_check_layers(hf, "mlp_only_layers", only, L)
            dense = [i for i in range(L) if i in only or (i + 1) % step != 0]
            if dense and inter is None:
                raise hf.err("intermediate_size", "is missing but some layers are dense")
            if len(dense) == L:
                raise hf.err("mlp_only_layers", "leaves no MoE layer")
            card["moe"] = {"n_routed_experts": e, "top_k": hf.int("num_experts_per_tok"),
                           "expert_intermediate": hf.int("moe_intermediate_size"),
                           "dense_layers": dense}
    elif mt in ("mixtral", "olmoe", "gpt_oss"):
        card["attention"] = _hf_gqa(hf, h)
        key_e = "num_experts" if mt == "olmoe" else "num_local_experts"
        if mt == "gpt_oss" and "num_experts_per_tok" not in cfg and "experts_per_token" in cfg:
            k = hf.int("experts_per_token")
        else:
            k = hf.int("num_experts_per_tok")
        card["moe"] = {"n_routed_experts": hf.int(key_e, maximum=MAX_EXPERTS), "top_k": k,
                       "expert_intermediate": hf.int("intermediate_size")}
        win = hf.int("sliding_window", 0, minimum=0)
        if win:
            card["attention"]["sliding_window_tokens"] = win
            if mt == "gpt_oss":
                card["attention"]["sliding_window_layers"] = _gpt_oss_sliding(hf, L)
            else:
                card["attention"]["sliding_window_layers"] = "all"
    card["release_dtype"] = _hf_release_dtype(hf)
    if "moe" in card and card["moe"]["top_k"] > card["moe"]["n_routed_experts"]:
        raise hf.err("num_experts_per_tok", f"({card['moe']['top_k']}) exceeds the number of "
                                            f"routed experts ({card['moe']['n_routed_experts']})")
    return card


def _hf_release_dtype(hf):
    """The released weight dtype: the quantization method if any, else ``torch_dtype``."""
    q = hf.cfg.get("quantization_config")
    if q is not None:
        method = q.get("quant_method") if isinstance(q, dict) else q
        if method not in HF_QUANT_METHODS:
            raise hf.err("quantization_config.quant_method",
                         f"must be one of {', '.join(HF_QUANT_METHODS)}, got {short_repr(method)}")
        return HF_QUANT_METHODS[method]
    key = "torch_dtype" if "torch_dtype" in hf.cfg else "dtype"
    value = hf.cfg.get(key)
    if value is None:
        return "bf16"
    if value not in HF_TORCH_DTYPES:
        raise hf.err(key, f"must be one of {', '.join(HF_TORCH_DTYPES)}, got {short_repr(value)}")
    return HF_TORCH_DTYPES[value]


def _gpt_oss_sliding(hf, L):
    types = hf.cfg.get("layer_types")
    if types is None:
        return "even"
    if not isinstance(types, list) or len(types) != L:
        raise hf.err("layer_types", f"must list one type per layer ({L}), got "
                                    f"{short_repr(types)}")
    allowed = ("sliding_attention", "full_attention")
    if any(t not in allowed for t in types):
        raise hf.err("layer_types", f"entries must be one of {allowed}")
    idx = [i for i, t in enumerate(types) if t == "sliding_attention"]
    if idx == list(range(0, L, 2)):
        return "even"
    if idx == list(range(L)):
        return "all"
    return idx

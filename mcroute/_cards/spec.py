"""Model specs: the architecture of a model card as frozen dataclasses, with computed sizes.

A *model card* (``models/llm/<name>.toml``) describes a transformer's architecture: layers,
widths, attention kind and sizes, FFN kind, the MoE layout, vocabulary and context length, the
published totals and the sources. :class:`ModelSpec` turns it into one :class:`LayerSpec` per
block that runs for every generated token, with parameter counts *computed* from the
architecture (the published totals are only checked in the tests). The card format is
documented in ``docs/cards.md``; its schema is in :mod:`mcroute._cards.schema`.

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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mcroute._base.validate import McrouteError
from mcroute._cards.dtypes import dtype_bytes
from mcroute._cards.hf import _hf_to_card, _read_hf
from mcroute._cards.schema import FFN_MATRICES, _malformed, _validate_model_card
from mcroute._routing.composite import GroupLimited
from mcroute._routing.distributions import Uniform

if TYPE_CHECKING:
    import os

__all__ = ["LayerSpec", "ModelSpec"]


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

    def default_routing(self) -> Uniform | GroupLimited | None:
        """The routing assumed when none is given: uniform, group-limited when the card says so.

        ``GroupLimited(Uniform(E, k), n_groups, topk_groups)`` for a group-limited card,
        ``Uniform(E, k)`` for another MoE model, None for a dense one.

        Examples
        --------
        >>> from mcroute import load_model
        >>> load_model("deepseek-v3").default_routing()
        GroupLimited(base=Uniform(n_experts=256, top_k=8), n_groups=8, topk_groups=4)
        """
        if not self.is_moe:
            return None
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

    def kv_bytes_per_token(self, dtype: str = "bf16", context: int | None = None) -> float:
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
        >>> from mcroute import load_model
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

    def kv_bytes(self, context: int, dtype: str = "bf16", encoder_tokens: int = 0) -> float:
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
    def replace(self, **changes: Any) -> ModelSpec:
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
    def from_hf_config(cls, path_or_dict: str | os.PathLike | dict,
                       name: str | None = None) -> ModelSpec:
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


"""Hugging Face ``config.json`` -> model card dictionary.

Supported ``model_type`` values are in :data:`HF_MODEL_TYPES`; a missing or inconsistent field is
an error naming the field and the file. The card dictionary is then validated and built like any
TOML card (:meth:`mcroute.ModelSpec.from_hf_config`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mcroute._base.validate import (
    MAX_CARD_INT,
    MAX_EXPERTS,
    MAX_LAYERS,
    McrouteError,
    read_bounded,
    short_repr,
)
from mcroute._cards.schema import _is_int

__all__ = ["HF_MODEL_TYPES", "HF_QUANT_METHODS", "HF_TORCH_DTYPES"]

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


def _hf_deepseek(hf, card, L):
    """DeepSeek-V2/V3: MLA attention, dense first layers, shared experts, expert groups."""
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
    if e is None:
        return
    first = hf.int("first_k_dense_replace", 0, minimum=0)
    freq = hf.int("moe_layer_freq", 1)
    if first > L:
        raise hf.err("first_k_dense_replace", f"({first}) exceeds num_hidden_layers ({L})")
    dense = [i for i in range(L) if not (i >= first and i % freq == 0)]
    if len(dense) == L:
        raise hf.err("first_k_dense_replace", "leaves no MoE layer")
    moe = {"n_routed_experts": e, "top_k": hf.int("num_experts_per_tok"),
           "expert_intermediate": hf.int("moe_intermediate_size"), "dense_layers": dense}
    ns = hf.int("n_shared_experts", 0, minimum=0)
    if ns:
        moe["n_shared_experts"] = ns
        moe["shared_expert_intermediate"] = moe["expert_intermediate"]
    ng, tg = hf.int("n_group", None), hf.int("topk_group", None)
    if ng is not None and tg is not None and ng > 1:
        moe["n_groups"], moe["topk_groups"] = ng, tg
    card["moe"] = moe


def _hf_qwen_llama(hf, card, L):
    """Qwen3 (dense and MoE) and Llama: GQA, optional sparse step and dense layer list."""
    card["attention"] = _hf_gqa(hf, card["hidden"])
    if hf.cfg.get("use_sliding_window"):
        raise hf.err("use_sliding_window", "is true; Qwen sliding-window layouts are not "
                                           "supported")
    e = hf.int("num_experts", 0, minimum=0, maximum=MAX_EXPERTS) if hf.mt == "qwen3_moe" else 0
    inter = hf.int("intermediate_size", None if e else _MISSING)
    if inter is not None:
        card["ffn"]["intermediate"] = inter
    if not e:
        return
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


def _hf_all_moe(hf, card, L):
    """Mixtral, OLMoE, gpt-oss: every layer MoE, optional sliding window."""
    mt, cfg = hf.mt, hf.cfg
    card["attention"] = _hf_gqa(hf, card["hidden"])
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
        card["attention"]["sliding_window_layers"] = (_gpt_oss_sliding(hf, L) if mt == "gpt_oss"
                                                      else "all")


#: The converter of each family of ``model_type`` values.
_HF_FAMILIES = {"deepseek_v2": _hf_deepseek, "deepseek_v3": _hf_deepseek,
                "qwen3_moe": _hf_qwen_llama, "qwen3": _hf_qwen_llama, "llama": _hf_qwen_llama,
                "mixtral": _hf_all_moe, "olmoe": _hf_all_moe, "gpt_oss": _hf_all_moe}


def _hf_to_card(cfg, origin, name):
    """Return the card dictionary of a parsed HF config (not yet validated as a card)."""
    hf = _HF(cfg, origin)
    mt = hf.mt
    if mt not in HF_MODEL_TYPES:
        raise McrouteError(f"{origin}: field 'model_type' {short_repr(mt)} is not supported; "
                           f"supported: {', '.join(HF_MODEL_TYPES)}")
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
    _HF_FAMILIES[mt](hf, card, L)
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

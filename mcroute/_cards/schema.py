"""The card schema: keys, types and ranges of model and hardware cards, and their checks.

Every check raises a :class:`McrouteError` naming the card (file or other origin) and the field.
The keys are documented in ``docs/cards.md``.
"""

from __future__ import annotations

import copy
import math

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
    short_repr,
)
from mcroute._cards.dtypes import DTYPE_BYTES

__all__ = ["ATTENTION_KINDS", "FFN_MATRICES"]

ATTENTION_KINDS = ("mha", "gqa", "mla")
#: FFN activations and the number of ``hidden x intermediate`` matrices each uses.
FFN_MATRICES = {"swiglu": 3, "geglu": 3, "relu": 2, "gelu": 2}


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


def _finite_number(v) -> bool:
    try:
        return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
    except OverflowError:  # an int beyond the float range
        return False


def _in_range(spec, v) -> bool:
    return ((spec.minimum is None or v >= spec.minimum)
            and (spec.maximum is None or v <= spec.maximum))


def _check_int(origin, key, spec, v):
    if not _is_int(v) or not _in_range(spec, v):
        raise _bad(origin, key, spec, v)
    return v


def _check_num(origin, key, spec, v):
    if not _finite_number(v) or not _in_range(spec, v):
        raise _bad(origin, key, spec, v)
    return v


def _check_bool(origin, key, spec, v):
    if not isinstance(v, bool):
        raise _bad(origin, key, spec, v)
    return v


def _check_str(origin, key, spec, v):
    if not isinstance(v, str) or not v.strip() or (spec.choices and v not in spec.choices):
        raise _bad(origin, key, spec, v)
    return v


def _check_strlist(origin, key, spec, v):
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(s, str) and s for s in v):
        raise _bad(origin, key, spec, v)
    return list(v)


def _check_intlist(origin, key, spec, v):
    if not isinstance(v, list) or not all(
            _is_int(i) and (spec.minimum or 0) <= i <= spec.maximum for i in v):
        raise _bad(origin, key, spec, v)
    if len(set(v)) != len(v):
        raise _bad(origin, key, spec, v, " without repeats")
    return sorted(v)


def _check_window_layers(origin, key, spec, v):
    ok = (isinstance(v, str) and v in ("all", "even", "odd")) or (
        isinstance(v, list) and all(_is_int(i) and 0 <= i < MAX_LAYERS for i in v))
    if not ok:
        raise _bad(origin, key, spec, v)
    return sorted(set(v)) if isinstance(v, list) else v


def _check_flopstable(origin, key, spec, v):
    if not isinstance(v, dict) or not v:
        raise _bad(origin, key, spec, v)
    lo, hi = PEAK_FLOPS_RANGE
    for dt, f in v.items():
        if not (_finite_number(f) and lo <= f <= hi):
            raise McrouteError(
                f"{origin}: field '{key}.{dt}' must be a number in [{lo:g}, {hi:g}] "
                f"[FLOP/s per GPU] (mcroute._base.validate.PEAK_FLOPS_RANGE), got "
                f"{short_repr(f)}")
    return dict(v)


#: The check of each schema kind (``table`` is recursed into by :func:`_validate`).
_CHECKS = {"int": _check_int, "num": _check_num, "bool": _check_bool, "str": _check_str,
           "strlist": _check_strlist, "intlist": _check_intlist,
           "window_layers": _check_window_layers, "flopstable": _check_flopstable}


def _check_value(origin, key, spec, v):
    """Check one value against its schema entry; return it normalised (lists sorted)."""
    return _CHECKS[spec.kind](origin, key, spec, v)


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


def _check_attention(att, L, origin):
    """Cross-field checks of ``[attention]``; fills ``n_kv_heads`` of an ``mha`` card."""
    kind = att["kind"]
    need = _MLA_KEYS if kind == "mla" else _MHA_KEYS
    other = _MHA_KEYS if kind == "mla" else _MLA_KEYS
    for key in other:
        if key in att:
            raise McrouteError(f"{origin}: key 'attention.{key}' does not apply to attention "
                               f"kind {kind!r}")
    if kind == "mha":
        att.setdefault("n_kv_heads", att["n_heads"])
    for key in need:
        if key not in att:
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


def _check_groups(moe, origin):
    if ("n_groups" in moe) != ("topk_groups" in moe):
        raise McrouteError(f"{origin}: fields 'moe.n_groups' and 'moe.topk_groups' must be "
                           "given together")
    if "n_groups" not in moe:
        return
    e, ng, tg = moe["n_routed_experts"], moe["n_groups"], moe["topk_groups"]
    if e % ng or tg > ng:
        raise McrouteError(f"{origin}: field 'moe.n_groups' must divide "
                           "moe.n_routed_experts and be >= moe.topk_groups")
    if tg * (e // ng) < moe["top_k"]:
        raise McrouteError(f"{origin}: fields 'moe.topk_groups' x experts per group must be "
                           ">= moe.top_k (a token needs top_k experts in its groups)")


def _check_moe(moe, L, origin):
    """Cross-field checks of ``[moe]``."""
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
    _check_groups(moe, origin)


def _check_encoder(enc, moe, kind, origin):
    """Cross-field checks of ``[encoder]``."""
    if enc["dense_layers"] and moe is None:
        raise McrouteError(f"{origin}: field 'encoder.dense_layers' needs a [moe] table")
    if enc["dense_layers"] and enc["dense_layers"][-1] >= enc["n_layers"]:
        raise McrouteError(f"{origin}: field 'encoder.dense_layers' has layer "
                           f"{enc['dense_layers'][-1]}, but encoder.n_layers = "
                           f"{enc['n_layers']}")
    if kind == "mla":
        raise McrouteError(f"{origin}: encoder-decoder models with attention kind 'mla' are "
                           "not supported")


def _validate_model_card(card, origin) -> dict:
    """Check a model card (keys, types, ranges, cross-field rules); return it with defaults."""
    c = _validate(card, _MODEL_SCHEMA, origin, "")
    _check_attention(c["attention"], c["n_layers"], origin)
    moe, enc = c.get("moe"), c.get("encoder")
    if moe is not None:
        _check_moe(moe, c["n_layers"], origin)
    if enc is not None:
        _check_encoder(enc, moe, c["attention"]["kind"], origin)
    has_dense = (moe is None or bool(moe["dense_layers"])
                 or (enc is not None and bool(enc["dense_layers"])))
    if has_dense and "intermediate" not in c["ffn"]:
        raise McrouteError(f"{origin}: missing required field 'ffn.intermediate' (the model has "
                           "dense FFN layers)")
    return c

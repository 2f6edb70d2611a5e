"""``mcroute models`` and ``mcroute hardware``: list the model and hardware cards.

May import: every floor below (front end); ``mcroute.cli.common``.
"""

from __future__ import annotations

from mcroute._cards.cards import list_hardware, list_models, load_hardware, load_model
from mcroute.cli.common import check_input_path
from mcroute.cli.output import Column, Printer, add_output_flags, fmt_value


def register(sub) -> None:
    """Add the ``models`` and ``hardware`` subcommands."""
    p = sub.add_parser(
        "models",
        help="list the model cards (parameters, MoE layout, attention, KV cache)",
        description="List the model cards shipped with mcroute, or show one card in detail. "
        "Parameter counts are computed from the architecture (embedding and LM head "
        "counted in both total and active); s = active / total; KV bytes per token in bf16, "
        "averaged over a sequence of the maximum context (sliding-window layers count "
        "min(context, window) / context).",
    )
    p.add_argument("name", nargs="?", default=None,
                   help="show one card (a card name, a .toml card or a config.json)")
    add_output_flags(p)
    p.set_defaults(func=run_models)
    h = sub.add_parser(
        "hardware",
        help="list the hardware cards (HBM, bandwidth, peak FLOP/s, interconnect)",
        description="List the hardware cards shipped with mcroute. HBM capacity in GiB "
        "(2^30 B), bandwidths in decimal TB/s and GB/s, dense (non-sparse) peak TFLOP/s, "
        "interconnect per GPU in one direction.",
    )
    h.add_argument("name", nargs="?", default=None,
                   help="show one card (a card name, a .toml card or a config.json)")
    add_output_flags(h)
    h.set_defaults(func=run_hardware)


_MODEL_COLUMNS = [
    Column("name", "name", "text"),
    Column("total_params", "total", "params"),
    Column("active_params", "active", "params"),
    Column("sparsity", "s", "share"),
    Column("n_layers", "layers", "int"),
    Column("moe", "MoE E/k/shared", "text"),
    Column("attention", "attention", "text", drop=1),
    Column("kv_bytes_per_token", "KV B/tok", "int", drop=2),  # bf16 (the description)
    Column("max_context", "max ctx", "tokens"),
    Column("release_dtype", "dtype", "text", drop=3),  # hidden first
]

_HARDWARE_COLUMNS = [
    Column("name", "name", "text"),
    Column("hbm_gib", "HBM GiB", "g"),
    Column("hbm_tb_s", "HBM TB/s", "g"),
    Column("bf16_tflops", "bf16 TFLOP/s", "g"),
    Column("fp8_tflops", "fp8 TFLOP/s", "g"),
    Column("fp4_tflops", "fp4 TFLOP/s", "g"),
    Column("link_gb_s", "link GB/s (1 dir)", "g"),
]


def _b(x) -> str:
    return fmt_value(x, "params")


def _model_row(m) -> dict:
    if m.is_moe:
        moe = f"{m.n_experts}/{m.top_k}/{m.n_shared_experts}"
        dense = m.n_layers - len(m.moe_layers)
        if dense:
            moe += f" ({dense} dense)"
    else:
        moe = "dense"
    attn = m.attention_kind
    if any(la.sliding_window for la in m.decode_layers):
        attn += "+swa"
    if m.is_encoder_decoder:
        attn += " enc-dec"
    return {"name": m.name, "total_params": m.total_params, "active_params": m.active_params,
            "sparsity": m.sparsity, "n_layers": m.n_layers, "moe": moe, "attention": attn,
            "kv_bytes_per_token": int(round(m.kv_bytes_per_token("bf16",
                                                                 context=m.max_context))),
            "max_context": m.max_context,
            "release_dtype": getattr(m, "release_dtype", None)}


def run_models(args) -> int:
    """Run ``mcroute models``."""
    if args.name is not None:
        check_input_path("NAME", args.name)
    models = [load_model(n) for n in ([args.name] if args.name else list_models())]
    out = Printer(args)
    out.table(_MODEL_COLUMNS, [_model_row(m) for m in models])
    if args.name:
        m = models[0]
        out.line(f"\n{m.display_name}")
        for s in m.source:
            out.line(f"  source: {s}")
        if m.card and m.card.get("notes"):
            out.line(f"  notes: {m.card['notes']}")
        pt, pa = m.published_total_params, m.published_active_params
        out.line(f"  published total: {_b(pt) if pt else '—'}, published active: "
                 f"{_b(pa) if pa else '—'}")
        if m.other_resident_params:
            out.line(f"  resident but not run per token: {_b(m.other_resident_params)}")
    out.close()
    return 0


def run_hardware(args) -> int:
    """Run ``mcroute hardware``."""
    if args.name is not None:
        check_input_path("NAME", args.name)
    cards = [load_hardware(n) for n in ([args.name] if args.name else list_hardware())]
    rows = []
    for h in cards:
        row = {"name": h.name, "hbm_gib": h.hbm_bytes / 2**30, "hbm_tb_s": h.hbm_bandwidth / 1e12,
               "link_gb_s": h.interconnect_bandwidth / 1e9}
        for d in ("bf16", "fp8", "fp4"):
            row[f"{d}_tflops"] = h.flops[d] / 1e12 if d in h.flops else None
        rows.append(row)
    out = Printer(args)
    out.table(_HARDWARE_COLUMNS, rows)
    if args.name:
        h = cards[0]
        out.line(f"\n{h.display_name}")
        for s in h.source:
            out.line(f"  source: {s}")
        if h.notes:
            out.line(f"  notes: {h.notes}")
    out.close()
    return 0

"""``mcroute models`` and ``mcroute hardware``: list the model and hardware cards.

May import: every floor below (front end); ``mcroute.cli.common``.
"""

from __future__ import annotations

from mcroute._cards.cards import list_hardware, list_models, load_hardware, load_model
from mcroute.cli.common import check_input_path, format_table


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
                   help="show one card (a card name or a path to a .toml card)")
    p.set_defaults(func=run_models)
    h = sub.add_parser(
        "hardware",
        help="list the hardware cards (HBM, bandwidth, peak FLOP/s, interconnect)",
        description="List the hardware cards shipped with mcroute. HBM capacity in GiB "
        "(2^30 B), bandwidths in decimal TB/s and GB/s, dense (non-sparse) peak TFLOP/s, "
        "interconnect per GPU in one direction.",
    )
    h.add_argument("name", nargs="?", default=None,
                   help="show one card (a card name or a path to a .toml card)")
    h.set_defaults(func=run_hardware)


def _b(x) -> str:
    return f"{x / 1e9:.2f}B" if x < 1e11 else f"{x / 1e9:.0f}B"


def _model_row(m) -> list:
    if m.is_moe:
        moe = f"{m.n_experts}/{m.top_k}/{m.n_shared_experts}"
        dense = m.n_layers - len(m.moe_layers)
        if dense:
            moe += f" ({dense} dense)"
    else:
        moe = "dense"
    ctx = m.max_context
    ctx_s = f"{ctx // 1024}k" if ctx % 1024 == 0 else str(ctx)
    attn = m.attention_kind
    if any(la.sliding_window for la in m.decode_layers):
        attn += "+swa"
    if m.is_encoder_decoder:
        attn += " enc-dec"
    return [m.name, _b(m.total_params), _b(m.active_params), f"{m.sparsity:.3f}",
            m.n_layers, moe, attn,
            int(round(m.kv_bytes_per_token("bf16", context=m.max_context))), ctx_s]


def run_models(args) -> int:
    """Run ``mcroute models``."""
    header = ["name", "total", "active", "s", "layers", "MoE E/k/shared", "attention",
              "KV B/tok bf16", "max ctx"]
    if args.name is not None:
        check_input_path("NAME", args.name)
    models = [load_model(n) for n in ([args.name] if args.name else list_models())]
    print(format_table(header, [_model_row(m) for m in models]))
    if args.name:
        m = models[0]
        print(f"\n{m.display_name}")
        for s in m.source:
            print(f"  source: {s}")
        if m.card and m.card.get("notes"):
            print(f"  notes: {m.card['notes']}")
        pt, pa = m.published_total_params, m.published_active_params
        print(f"  published total: {_b(pt) if pt else '—'}, published active: "
              f"{_b(pa) if pa else '—'}")
        if m.other_resident_params:
            print(f"  resident but not run per token: {_b(m.other_resident_params)}")
    return 0


def run_hardware(args) -> int:
    """Run ``mcroute hardware``."""
    header = ["name", "HBM GiB", "HBM TB/s", "bf16 TFLOP/s", "fp8 TFLOP/s", "fp4 TFLOP/s",
              "link GB/s (1 dir)"]
    if args.name is not None:
        check_input_path("NAME", args.name)
    cards = [load_hardware(n) for n in ([args.name] if args.name else list_hardware())]
    rows = []
    for h in cards:
        fl = [f"{h.flops[d] / 1e12:g}" if d in h.flops else "—" for d in ("bf16", "fp8", "fp4")]
        rows.append([h.name, f"{h.hbm_bytes / 2**30:g}", f"{h.hbm_bandwidth / 1e12:g}", *fl,
                     f"{h.interconnect_bandwidth / 1e9:g}"])
    print(format_table(header, rows))
    if args.name:
        h = cards[0]
        print(f"\n{h.display_name}")
        for s in h.source:
            print(f"  source: {s}")
        if h.notes:
            print(f"  notes: {h.notes}")
    return 0

"""Per-layer expert histograms in a CSV (the OLMoE ``expert_counts.csv`` columns).

May import: numpy, the standard library, ``mcroute._base``, the modules of ``mcroute._traces``.

:func:`load_histogram` reads one (model, domain, selection) histogram as a
:class:`~mcroute.PopularityTrace`: popularity only, no joint structure.
"""

from __future__ import annotations

import csv

import numpy as np

from mcroute._base.validate import MAX_COUNT, MAX_EXPERTS, MAX_LAYERS, McrouteError, short_repr
from mcroute._traces.text import file_error as _err
from mcroute._traces.trace import PopularityTrace

__all__ = ["load_histogram", "HISTOGRAM_COLUMNS"]

#: Columns a histogram CSV must have.
HISTOGRAM_COLUMNS = ("model", "layer", "expert", "count", "n_tokens", "top_k", "num_experts")

#: Bounds of the integer columns of a histogram CSV (mcroute._base.validate limits).
_HIST_BOUNDS = {"layer": (0, MAX_LAYERS - 1), "expert": (0, MAX_EXPERTS - 1),
                "count": (0, MAX_COUNT), "n_tokens": (0, MAX_COUNT),
                "top_k": (1, MAX_EXPERTS), "num_experts": (1, MAX_EXPERTS)}


def load_histogram(path, model, domain, selection, notes):
    """The histogram of ``model``/``domain``/``selection`` in the CSV ``path``."""
    try:
        return _load(path, model, domain, selection, notes)
    except csv.Error as exc:  # e.g. a field longer than csv.field_size_limit()
        raise _err(path, "", f"not a readable CSV ({exc})") from None
    except UnicodeDecodeError as exc:
        raise _err(path, "", f"not UTF-8 text (byte {exc.start})") from None


def _int_fields(path, lineno, row):
    vals = {}
    for c, (lo, hi) in _HIST_BOUNDS.items():
        text = str(row[c] if row[c] is not None else "").strip()
        ok = len(text) <= 30 and text.lstrip("-").isdigit()
        if not ok or not lo <= int(text) <= hi:
            what = "an integer" if not ok else f"an integer in [{lo}, {hi}]"
            raise _err(path, f"line {lineno}, field {c!r}",
                       f"must be {what} (mcroute._base.validate limits), got "
                       f"{short_repr(text)}")
        vals[c] = int(text)
    return vals


def _selected(row, model, domain, selection):
    return ((model is None or row["model"] == model)
            and (domain is None or (row.get("domain") or "") == domain)
            and (row.get("selection") or "topk") == selection)


def _add_row(path, lineno, row, vals, table, meta):
    key = (row["model"], row.get("domain") or "")
    m = meta.setdefault(key, (vals["num_experts"], vals["top_k"], {}, row.get("hf_model")))
    if (vals["num_experts"], vals["top_k"]) != m[:2]:
        raise _err(path, f"line {lineno}", "num_experts/top_k differ from earlier rows of "
                                           f"model {key[0]}")
    if not 0 <= vals["expert"] < vals["num_experts"]:
        raise _err(path, f"line {lineno}, field 'expert'",
                   f"expert id {vals['expert']} outside 0..{vals['num_experts'] - 1}")
    m[2][vals["layer"]] = vals["n_tokens"]
    cell = table.setdefault(key, {}).setdefault(vals["layer"], {})
    if vals["expert"] in cell:
        raise _err(path, f"line {lineno}", f"expert {vals['expert']} of layer "
                                           f"{vals['layer']} appears twice")
    cell[vals["expert"]] = vals["count"]


def _read_rows(path, model, domain, selection):
    """(table, meta, seen) of the rows of ``path`` that match the selection."""
    table, meta = {}, {}
    seen = {"model": set(), "domain": set(), "selection": set()}
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            raise _err(path, "", "empty file (no records)")
        miss = [c for c in HISTOGRAM_COLUMNS if c not in reader.fieldnames]
        if miss:
            raise _err(path, "line 1", f"missing columns {miss}")
        for row in reader:
            for c in ("model", "domain", "selection"):
                seen[c].add(row.get(c) or "")
            if _selected(row, model, domain, selection):
                _add_row(path, reader.line_num, row, _int_fields(path, reader.line_num, row),
                         table, meta)
    return table, meta, seen


def _load(path, model, domain, selection, notes):
    table, meta, seen = _read_rows(path, model, domain, selection)
    if not table:
        avail = {c: sorted(v) for c, v in seen.items()}
        raise _err(path, "", f"no rows match model={model!r}, domain={domain!r}, "
                             f"selection={selection!r}; available: {avail}")
    if len(table) > 1:
        keys = sorted(table)
        raise _err(path, "", f"holds {len(keys)} (model, domain) histograms; choose one with "
                             f"model= and domain= (available: {keys})")
    (key, layers), = table.items()
    e, k, ntok, hf = meta[key]
    if selection == "top1":
        k = 1
    layer_ids = sorted(layers)
    for layer in layer_ids:  # before allocating: every layer lists all E experts
        if len(layers[layer]) != e:
            raise _err(path, "", f"layer {layer} lists {len(layers[layer])} of {e} experts")
    counts = np.zeros((len(layer_ids), e), dtype=np.int64)
    for i, layer in enumerate(layer_ids):
        for ex, c in layers[layer].items():
            counts[i, ex] = c
    nt = np.array([ntok[layer] for layer in layer_ids], dtype=np.int64)
    notes.append(f"histograms of {key[0]} on {key[1] or '?'} ({selection}): popularity only, no "
                 "joint structure; loaded as a PopularityTrace (Plackett-Luce weights calibrated "
                 "to the observed inclusion probabilities)")
    try:
        return PopularityTrace(counts, nt, k, layer_ids=layer_ids, model=hf or key[0],
                               source=f"{path} [{key[0]}, {key[1]}, {selection}]", notes=notes)
    except McrouteError as exc:
        raise _err(path, "", str(exc)) from None

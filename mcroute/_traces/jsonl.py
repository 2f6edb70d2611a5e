"""JSON-lines router logs: one record per (token, layer), or per-forward-pass logs.

May import: numpy, the standard library, ``mcroute._base``, the modules of ``mcroute._traces``.

:func:`load_token_layer` reads ``"jsonl-token-layer"`` files (e.g. the Mixtral vLLM logs) and
:func:`load_forward_pass` the per-layer ``"jsonl-forward-pass"`` files of the vLLM MoE logger
(Qwen1.5-MoE); both return the keyword arguments of :class:`~mcroute.Trace` (module docstring
of :mod:`mcroute._traces.io` for the formats). Only the parsed ids are kept, never the text.
"""

from __future__ import annotations

from array import array

import numpy as np

from mcroute._base.validate import MAX_COUNT, McrouteError, check_int, short_repr
from mcroute._traces.text import (
    IDS_KEYS,
    SEQ_KEYS,
    TOK_KEYS,
    W_KEYS,
    check_ids,
    check_weights,
    first_key,
    json_records,
)
from mcroute._traces.text import file_error as _err

__all__ = ["load_token_layer", "load_forward_pass"]


def _check_count_field(path, lineno, field, x):
    if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x <= MAX_COUNT:
        raise _err(path, f"line {lineno}, field {field!r}",
                   f"must be an integer in [0, {MAX_COUNT}], got {short_repr(x)}")


def _n_experts_note(n_experts, largest_id, notes):
    if n_experts is None:
        n_experts = int(largest_id) + 1
        notes.append(f"n_experts inferred as the largest expert id + 1 = {n_experts}; pass "
                     "n_experts= to set it")
    return n_experts


# ---------------------------------------------------------------------------------------------
# One record per (token, layer)
# ---------------------------------------------------------------------------------------------


class _TokenLayerRecords:
    """Columns of the records read so far (int64 / float64 arrays of the standard library)."""

    def __init__(self):
        self.seq_ids: dict = {}
        self.seq, self.tok, self.lay = array("q"), array("q"), array("q")
        self.line_no, self.file_no = array("q"), array("q")
        self.ids, self.wts = array("q"), array("d")
        self.has_w = None
        self.k_ref = [None]

    def _sequence(self, path, lineno, fi, rec):
        sk = first_key(rec, SEQ_KEYS)
        if sk is not None:
            key = (fi if sk == "req_id" else -1, rec[sk])
        elif "problem_id" in rec:
            key = (-1, rec.get("dataset"), rec["problem_id"])
        else:
            key = (fi,)
        try:
            return self.seq_ids.setdefault(key, len(self.seq_ids))
        except TypeError:
            raise _err(path, f"line {lineno}, field {sk!r}", "sequence id must be a string or "
                                                            "number") from None

    def _weights(self, path, lineno, rec, k):
        wk = first_key(rec, W_KEYS)
        if self.has_w is None:
            self.has_w = wk is not None
        if self.has_w:
            if wk is None:
                raise _err(path, f"line {lineno}", "missing gate weights (earlier records have "
                                                   "them)")
            check_weights(path, lineno, wk, rec[wk], k)
            self.wts.extend(float(x) for x in rec[wk])

    def add(self, path, fi, lineno, rec, n_experts):
        idk = first_key(rec, IDS_KEYS)
        tk = first_key(rec, TOK_KEYS)
        if idk is None or tk is None or "layer" not in rec:
            raise _err(path, f"line {lineno}", "missing field: a record needs expert ids "
                                               f"({'/'.join(IDS_KEYS)}), 'layer' and "
                                               f"{'/'.join(TOK_KEYS)}")
        v = rec[idk]
        check_ids(path, lineno, idk, v, self.k_ref, n_experts)
        for f in ("layer", tk):
            _check_count_field(path, lineno, f, rec[f])
        sid = self._sequence(path, lineno, fi, rec)
        self._weights(path, lineno, rec, len(v))
        self.seq.append(sid)
        self.tok.append(rec[tk])
        self.lay.append(rec["layer"])
        self.line_no.append(lineno)
        self.file_no.append(fi)
        self.ids.extend(v)


def _check_no_duplicates(paths, r, flat, lay_a):
    order = np.argsort(flat, kind="stable")
    dup = np.nonzero(np.diff(flat[order]) == 0)[0]
    if dup.size:
        a, b = order[dup[0]], order[dup[0] + 1]
        other = f" of {paths[r.file_no[a]]}" if r.file_no[a] != r.file_no[b] else ""
        raise _err(paths[r.file_no[b]], f"line {r.line_no[b]}",
                   f"duplicate record: same sequence, token and layer {int(lay_a[b])} as line "
                   f"{r.line_no[a]}{other}")


def _complete_tokens(paths, present, token_keys, layer_ids, missing_layers, notes):
    """Tokens that have every layer; the others are an error or dropped with a note."""
    full = present.all(axis=1)
    n_bad = int((~full).sum())
    if n_bad:
        n_tok, n_lay = present.shape
        first = int(np.nonzero(~full)[0][0])
        msg = (f"{n_bad} of {n_tok} tokens lack one or more of the {n_lay} layers "
               f"(e.g. token_idx {int(token_keys[first, 1])} of sequence "
               f"{int(token_keys[first, 0])} lacks layers {layer_ids[~present[first]].tolist()})")
        if missing_layers == "error":
            raise _err(paths[0] if len(paths) == 1 else ", ".join(map(str, paths)), "",
                       msg + "; pass missing_layers='drop' (CLI: --missing-layers drop) to "
                       "drop those tokens")
        notes.append(f"dropped {msg}")
    keep = np.nonzero(full)[0]
    if keep.size == 0:
        raise _err(paths[0], "", "no token has all layers")
    return keep


def load_token_layer(paths, n_experts, missing_layers, max_records, notes):
    """Trace fields from ``"jsonl-token-layer"`` files (one record per token and layer)."""
    r = _TokenLayerRecords()
    for fi, path in enumerate(paths):
        for lineno, rec in json_records(path, max_records):
            r.add(path, fi, lineno, rec, n_experts)
    if not r.seq:
        raise _err(paths[0], "", "empty file (no records)")
    k = r.k_ref[0][0]
    seq_a = np.frombuffer(r.seq, dtype=np.int64)
    tok_a = np.frombuffer(r.tok, dtype=np.int64)
    lay_a = np.frombuffer(r.lay, dtype=np.int64)
    ids_a = np.frombuffer(r.ids, dtype=np.int64).reshape(-1, k)
    layer_ids, lpos = np.unique(lay_a, return_inverse=True)
    token_keys, tpos = np.unique(np.stack([seq_a, tok_a], axis=1), axis=0, return_inverse=True)
    tpos = tpos.ravel()
    n_tok, n_lay = token_keys.shape[0], layer_ids.size
    _check_no_duplicates(paths, r, tpos * n_lay + lpos, lay_a)
    present = np.zeros((n_tok, n_lay), dtype=bool)
    present[tpos, lpos] = True
    keep = _complete_tokens(paths, present, token_keys, layer_ids, missing_layers, notes)
    experts = np.zeros((n_tok, n_lay, k), dtype=np.int64)
    experts[tpos, lpos] = ids_a
    gate = None
    if r.has_w:
        gate = np.zeros((n_tok, n_lay, k))
        gate[tpos, lpos] = np.frombuffer(r.wts, dtype=np.float64).reshape(-1, k)
    n_experts = _n_experts_note(n_experts, ids_a.max(), notes)
    return dict(experts=experts[keep], n_experts=n_experts,
                gate_weights=None if gate is None else gate[keep],
                sequence=token_keys[keep, 0], step=token_keys[keep, 1], layer_ids=layer_ids)


# ---------------------------------------------------------------------------------------------
# Per-forward-pass logs
# ---------------------------------------------------------------------------------------------


class _Pass:
    """One forward pass of one layer file: its rows, stored only once they start to differ.

    A pass whose rows are all identical (a profiling dummy) keeps only its first row.
    """

    __slots__ = ("n_rows", "ids", "wts", "first", "identical", "line0", "has_w")

    def __init__(self, row, lineno, has_w):
        self.n_rows = 0
        self.ids, self.wts = array("q"), array("d")
        self.first, self.identical, self.line0, self.has_w = row, True, lineno, has_w

    def add(self, path, lineno, v, w, row):
        self.n_rows += 1
        if self.identical and row == self.first:
            return  # still an all-identical (dummy) pass: nothing stored beyond the first row
        if self.identical:
            # The pass turned out to vary: materialise its identical prefix.
            self.identical = False
            for _ in range(self.n_rows - 1):
                self.ids.extend(self.first[0])
                if self.has_w:
                    self.wts.extend(self.first[1])
        self.ids.extend(v)
        if self.has_w:
            if w is None:
                raise _err(path, f"line {lineno}", "missing 'topk_weights' (earlier rows of "
                                                   "this pass have them)")
            self.wts.extend(w)

    def rows(self, k, with_weights):
        """(ids (rows, k), weights (rows, k) or None)."""
        if self.identical:
            a = np.tile(np.asarray(self.first[0], dtype=np.int64), (self.n_rows, 1))
            wa = np.tile(np.asarray(self.first[1]), (self.n_rows, 1)) if with_weights else None
        else:
            a = np.frombuffer(self.ids, dtype=np.int64).reshape(-1, k)
            wa = (np.frombuffer(self.wts, dtype=np.float64).reshape(-1, k) if with_weights
                  else None)
        return a, wa


def _route_record(path, lineno, rec, meta, k_ref, n_experts):
    """Checked (ids, token_idx, layer) and the weights (checked by the caller) of a record."""
    for f in ("topk_ids", "token_idx", "layer"):
        if f not in rec:
            raise _err(path, f"line {lineno}", f"missing field {f!r}")
    v = rec["topk_ids"]
    check_ids(path, lineno, "topk_ids", v, k_ref, n_experts)
    if meta is not None and "top_k" in meta and len(v) != meta["top_k"]:
        raise _err(path, f"line {lineno}, field 'topk_ids'",
                   f"{len(v)} ids but the meta record says top_k = {meta['top_k']}")
    ti, ly = rec["token_idx"], rec["layer"]
    _check_count_field(path, lineno, "token_idx", ti)
    _check_count_field(path, lineno, "layer", ly)
    return v, ti, ly, rec.get("topk_weights")


def _forward_pass_file(path, n_experts, max_records, k_ref):
    """Parse one forward-pass log: (meta, layer, passes)."""
    meta = layer = cur = prev_tok = None
    passes = []
    for lineno, rec in json_records(path, max_records):
        typ = rec.get("type")
        if typ == "meta":
            if meta is not None:
                raise _err(path, f"line {lineno}", "a second 'meta' record")
            meta = rec
            continue
        if typ != "route":
            raise _err(path, f"line {lineno}, field 'type'",
                       f"expected 'meta' or 'route', got {typ!r}")
        v, ti, ly, w = _route_record(path, lineno, rec, meta, k_ref, n_experts)
        if layer is None:
            layer = ly
        elif ly != layer:
            raise _err(path, f"line {lineno}, field 'layer'",
                       f"layer {ly} in a file of layer {layer} (one layer per file)")
        if w is not None:
            check_weights(path, lineno, "topk_weights", w, len(v))
        row = (tuple(v), tuple(w) if w is not None else None)
        if prev_tok is None or ti <= prev_tok:
            if ti != 0:
                raise _err(path, f"line {lineno}, field 'token_idx'",
                           f"a forward pass starts at token_idx {ti}, expected 0")
            cur = _Pass(row, lineno, w is not None)
            passes.append(cur)
        elif ti != prev_tok + 1:
            raise _err(path, f"line {lineno}, field 'token_idx'",
                       f"token_idx jumps from {prev_tok} to {ti} within a forward pass")
        prev_tok = ti
        cur.add(path, lineno, v, w, row)
    if layer is None:
        raise _err(path, "", "empty file (no route records)")
    return meta, layer, passes


def _split_passes(path, sizes, identical, warmup_passes):
    """Pass indices (prefill, decode list, dropped list) from the pass sizes.

    ``"auto"``: dummy passes (two or more rows, all identical) are dropped; the prefill is the
    largest remaining pass, the passes after it are decode steps, the passes before it warm-up.
    """
    n = len(sizes)
    if warmup_passes == "auto":
        real = [i for i in range(n) if not (identical[i] and sizes[i] > 1)]
        if not real:
            raise _err(path, "", "every forward pass is a dummy (all rows identical)")
        prefill = max(real, key=lambda i: (sizes[i], -i))
        decode = [i for i in real if i > prefill]
    else:
        w = check_int("warmup_passes", warmup_passes, minimum=0)
        if w + 1 >= n:
            raise _err(path, "", f"warmup_passes={w} leaves no prefill and decode passes")
        prefill, decode = w, list(range(w + 1, n))
    if not decode:
        raise _err(path, "", "no decode passes after the prefill pass")
    dropped = [i for i in range(n) if i != prefill and i not in decode]
    return prefill, decode, dropped


def _check_same_structure(per_file, sizes):
    ref_path = per_file[0][0]
    for path, _, _, passes in per_file[1:]:
        s2 = [p.n_rows for p in passes]
        if s2 != sizes:
            i = next((i for i, (a, b) in enumerate(zip(s2, sizes, strict=False)) if a != b),
                     min(len(s2), len(sizes)))
            raise McrouteError(
                f"{path}: forward-pass structure differs from {ref_path} (pass {i}: "
                f"{s2[i] if i < len(s2) else 'missing'} rows vs "
                f"{sizes[i] if i < len(sizes) else 'missing'}); the files cannot be lined up")


def _pass_note(sizes, identical, prefill, decode, dropped):
    what = ", ".join(f"#{i}: {sizes[i]} rows" + (" identical" if identical[i] else "")
                     for i in dropped)
    return (
        f"{len(sizes)} forward passes; dropped {len(dropped)} warm-up/dummy passes ({what}); "
        f"kept prefill pass #{prefill} ({sizes[prefill]} tokens) and {len(decode)} decode steps "
        f"({sum(sizes[i] for i in decode)} tokens, batch {max(sizes[i] for i in decode)} "
        f"falling to {min(sizes[i] for i in decode)}); sequence ids are unknown (the logger "
        "does not record them)")


def load_forward_pass(paths, n_experts, max_records, warmup_passes, notes):
    """Trace fields from ``"jsonl-forward-pass"`` files (one file per layer)."""
    k_ref = [None]
    per_file = []
    for path in paths:
        meta, layer, passes = _forward_pass_file(path, n_experts, max_records, k_ref)
        per_file.append((path, meta, layer, passes))
    per_file.sort(key=lambda x: x[2])
    layers = [x[2] for x in per_file]
    if len(set(layers)) != len(layers):
        raise McrouteError(f"two files log the same layer: {[str(x[0]) for x in per_file]}")
    ref_path, ref_meta, _, ref_passes = per_file[0]
    sizes = [p.n_rows for p in ref_passes]
    identical = [p.identical for p in ref_passes]
    _check_same_structure(per_file, sizes)
    prefill, decode, dropped = _split_passes(ref_path, sizes, identical, warmup_passes)
    k = k_ref[0][0]
    keep = [prefill, *decode]
    n_tok = sum(sizes[i] for i in keep)
    experts = np.zeros((n_tok, len(per_file), k), dtype=np.int64)
    has_w = all(p.has_w for _, _, _, passes in per_file for i, p in enumerate(passes)
                if i in keep)
    gate = np.zeros((n_tok, len(per_file), k)) if has_w else None
    for li, (_, _, _, passes) in enumerate(per_file):
        rows = [passes[i].rows(k, has_w) for i in keep]
        experts[:, li] = np.concatenate([a for a, _ in rows])
        if has_w:
            gate[:, li] = np.concatenate([wa for _, wa in rows])
    batch = np.concatenate([np.full(sizes[i], j, dtype=np.int64) for j, i in enumerate(keep)])
    step = np.concatenate([np.full(sizes[prefill], -1, dtype=np.int64)]
                          + [np.full(sizes[i], j, dtype=np.int64) for j, i in enumerate(decode)])
    prefill_flag = np.zeros(n_tok, dtype=bool)
    prefill_flag[: sizes[prefill]] = True
    notes.append(_pass_note(sizes, identical, prefill, decode, dropped))
    n_experts = _n_experts_note(n_experts, experts.max(), notes)
    model = str((ref_meta or {}).get("model_id", ""))
    return dict(experts=experts, n_experts=n_experts, gate_weights=gate, batch=batch, step=step,
                prefill=prefill_flag, layer_ids=np.asarray(layers, dtype=np.int64), model=model)

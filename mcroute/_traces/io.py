"""Reading and writing router traces: :func:`load_trace`, :func:`save_trace`.

May import: numpy, the standard library, ``_traces``, ``_validate``.

Formats (``format=`` names; guessed from the content when not given, and the guess is recorded
in ``trace.notes``):

``"npz"``
    The canonical format written by :func:`save_trace` / ``mcroute trace convert``
    (docs/traces.md). Loaded with ``allow_pickle=False``; a pickled object array is refused.
``"jsonl-token-layer"``
    JSON lines with one record per (token, layer), e.g. the Mixtral vLLM logs: expert ids in
    ``experts`` (or ``expert_ids`` / ``topk_ids``), ``layer``, the token's position in
    ``token_idx`` (or ``token`` / ``step``), gate weights in ``gating_probs`` (or
    ``gate_weights`` / ``topk_weights`` / ``weights``), the sequence in ``seq_id`` /
    ``sequence`` / ``request_id``, else the pair (``dataset``, ``problem_id``), else the file.
``"jsonl-forward-pass"``
    The per-forward-pass logs of the vLLM MoE logger (Qwen1.5-MoE files: a ``meta`` line, then
    ``route`` records whose ``token_idx`` restarts at each forward pass). One file per layer;
    a directory of such files is combined by position. Passes are split where ``token_idx``
    does not increase. Passes whose rows are all identical (profiling dummies) are dropped.
    The decode steps are the trailing run of passes whose sizes never increase; the pass just
    before them is the prefill; passes before the prefill are warm-up and are dropped
    (``warmup_passes`` overrides the count of leading passes to drop).
``"histogram-csv"``
    Per-layer expert histograms (the OLMoE ``expert_counts.csv`` columns ``model``,
    ``num_experts``, ``top_k``, ``domain``, ``layer``, ``selection``, ``expert``, ``count``,
    ``n_tokens``). Popularity only, no joint structure: loads as a
    :class:`~mcroute.PopularityTrace`.
``"array"``
    A routed-expert integer array ``[tokens, layers, k]`` as serving engines record it (vLLM),
    in a ``.npy`` file or a ``.npz`` holding one such array.

Files are read line by line; only the parsed ids are kept (a few integers per record), never
the text, so memory is bounded by the size of the result. ``max_records`` stops early.
"""

from __future__ import annotations

import csv
import json
import os
import zipfile
from array import array
from pathlib import Path

import numpy as np

from mcroute._base.atomic import atomic_path
from mcroute._base.validate import (
    MAX_COUNT,
    MAX_EXPERTS,
    MAX_LAYERS,
    MAX_LINE_BYTES,
    McrouteError,
    check_choice,
    check_int,
    check_path,
    short_repr,
)
from mcroute._traces.trace import PopularityTrace, Trace

__all__ = ["load_trace", "save_trace", "FORMATS", "CANONICAL_FORMAT", "CANONICAL_VERSION"]

#: Formats :func:`load_trace` understands.
FORMATS = ("npz", "jsonl-token-layer", "jsonl-forward-pass", "histogram-csv", "array")
#: Value of the ``format`` field of a canonical trace file.
CANONICAL_FORMAT = "mcroute-trace"
#: Version of the canonical format written by :func:`save_trace`.
CANONICAL_VERSION = 1

_IDS_KEYS = ("experts", "expert_ids", "topk_ids")
_W_KEYS = ("gating_probs", "gate_weights", "topk_weights", "weights")
_TOK_KEYS = ("token_idx", "token", "step")
_SEQ_KEYS = ("seq_id", "sequence", "request_id")


def _err(path, where, problem):
    loc = f"{path}" + (f", {where}" if where else "")
    return McrouteError(f"{loc}: {problem}")


# ---------------------------------------------------------------------------------------------
# Canonical .npz
# ---------------------------------------------------------------------------------------------


def save_trace(trace: Trace, path) -> Path:
    """Write ``trace`` in the canonical ``.npz`` format (atomically; no pickled objects).

    Parameters
    ----------
    trace : Trace
    path : str or Path
        Output file; must end in ``.npz``.

    Returns
    -------
    pathlib.Path
        The file written.

    Examples
    --------
    >>> import numpy as np, tempfile, os, mcroute as mr
    >>> t = mr.Trace(np.array([[[0, 1]], [[2, 3]]]), n_experts=4, model="toy")
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = mr.save_trace(t, os.path.join(d, "toy.npz"))
    ...     back = mr.load_trace(p)
    >>> bool(np.array_equal(back.experts, t.experts)), back.model
    (True, 'toy')
    """
    if not isinstance(trace, Trace):
        raise McrouteError(f"save_trace needs a Trace, got {type(trace).__name__}")
    path = check_path("path", path)
    if path.suffix.lower() != ".npz":
        raise McrouteError(f"trace output must end in .npz, got {str(path)!r}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise McrouteError(f"output folder {str(folder)!r} does not exist")
    e = trace.n_experts
    id_dtype = np.int16 if e <= np.iinfo(np.int16).max else np.int32
    arrays = {
        "format": np.array(CANONICAL_FORMAT),
        "format_version": np.array(CANONICAL_VERSION, dtype=np.int64),
        "model": np.array(trace.model),
        "source": np.array(trace.source),
        "n_experts": np.array(e, dtype=np.int64),
        "top_k": np.array(trace.top_k, dtype=np.int64),
        "n_model_layers": np.array(trace.n_model_layers, dtype=np.int64),
        "layer_ids": trace.layer_ids.astype(np.int64),
        "experts": trace.experts.astype(id_dtype),
        "sequence": trace.sequence.astype(np.int64),
        "step": trace.step.astype(np.int64),
        "batch": trace.batch.astype(np.int64),
        "prefill": trace.prefill.astype(bool),
        "notes": np.array(list(trace.notes), dtype=str),
    }
    if trace.gate_weights is not None:
        arrays["gate_weights"] = trace.gate_weights
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


def _npz_fields(path):
    """All arrays of an ``.npz`` with ``allow_pickle=False``; pickles are refused by field."""
    try:
        npz = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise _err(path, "", f"not a readable .npz file ({exc})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise _err(path, "", "is a single .npy array, not an .npz archive (read it with "
                             "format 'array')")
    out = {}
    with npz:
        for name in npz.files:
            try:
                out[name] = npz[name]
            except ValueError as exc:
                if "pickle" in str(exc).lower():
                    raise _err(path, f"field {name!r}",
                               "holds a pickled object array; refusing to load it "
                               "(traces are read with allow_pickle=False)") from None
                raise _err(path, f"field {name!r}", f"unreadable ({exc})") from None
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                raise _err(path, f"field {name!r}", f"unreadable ({exc})") from None
    return out


def _load_canonical(path, f, notes, mode, layer_map, block_size):
    def need(name):
        if name not in f:
            raise _err(path, f"field {name!r}", "missing (required by the canonical format)")
        return f[name]

    ver = int(need("format_version"))
    if ver > CANONICAL_VERSION:
        raise _err(path, "field 'format_version'",
                   f"version {ver} is newer than this mcroute reads ({CANONICAL_VERSION})")
    ex = need("experts")
    if ex.ndim != 3 or not np.issubdtype(ex.dtype, np.integer):
        raise _err(path, "field 'experts'", f"must be an integer array (token, layer, slot), "
                                            f"got dtype {ex.dtype} and shape {ex.shape}")
    for name in ("n_experts", "top_k"):
        if need(name).shape != () or not np.issubdtype(f[name].dtype, np.integer):
            raise _err(path, f"field {name!r}", "must be an integer scalar")
    if int(f["top_k"]) != ex.shape[2]:
        raise _err(path, "field 'top_k'", f"is {int(f['top_k'])} but experts has {ex.shape[2]} "
                                          "slots per token")
    stored = [str(x) for x in f.get("notes", np.array([], dtype=str)).tolist()]
    try:
        return Trace(
            ex, int(f["n_experts"]), gate_weights=f.get("gate_weights"),
            sequence=f.get("sequence"), step=f.get("step"), batch=f.get("batch"),
            prefill=f.get("prefill"), layer_ids=f.get("layer_ids"),
            n_model_layers=int(f["n_model_layers"]) if "n_model_layers" in f else None,
            model=str(f.get("model", "")), source=str(f.get("source", "")) or str(path),
            mode=mode, layer_map=layer_map, block_size=block_size, notes=stored + notes,
        )
    except McrouteError as exc:
        raise _err(path, "", str(exc)) from None


def _load_array(path, ex, n_experts, notes, mode, layer_map, block_size):
    if ex.ndim != 3 or not np.issubdtype(ex.dtype, np.integer):
        raise _err(path, "", f"a routed-expert array must be integer [tokens, layers, k], got "
                             f"dtype {ex.dtype} and shape {ex.shape}")
    if ex.size == 0:
        raise _err(path, "", "empty routed-expert array")
    if n_experts is None:
        n_experts = int(ex.max()) + 1
        notes.append(f"n_experts inferred as the largest expert id + 1 = {n_experts}; pass "
                     "n_experts= to set it")
    try:
        return Trace(ex, n_experts, source=str(path), mode=mode, layer_map=layer_map,
                     block_size=block_size, notes=notes)
    except McrouteError as exc:
        raise _err(path, "", str(exc)) from None


# ---------------------------------------------------------------------------------------------
# JSON lines
# ---------------------------------------------------------------------------------------------


def _lines(path, fh):
    """Yield (line number, line) of a text file, refusing lines over MAX_LINE_BYTES."""
    lineno = 0
    while True:
        try:
            line = fh.readline(MAX_LINE_BYTES + 1)
        except UnicodeDecodeError as exc:
            raise _err(path, f"after line {lineno}", f"not UTF-8 text (byte {exc.start} of the "
                                                     "block read)") from None
        if not line:
            return
        lineno += 1
        if len(line) > MAX_LINE_BYTES:
            raise _err(path, f"line {lineno}", f"longer than {MAX_LINE_BYTES} characters "
                                               "(mcroute._base.validate.MAX_LINE_BYTES); not a "
                                               "routing record")
        yield lineno, line


def _json_records(path, max_records):
    """Yield (line number, dict) for the non-blank lines of a JSON-lines file."""
    n = 0
    with open(path, encoding="utf-8") as fh:
        for lineno, line in _lines(path, fh):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                trunc = " (truncated line?)" if not line.endswith("\n") else ""
                raise _err(path, f"line {lineno}", f"not valid JSON: {exc.msg} at column "
                                                   f"{exc.colno}{trunc}") from None
            except ValueError as exc:  # an integer of more than 4300 digits
                raise _err(path, f"line {lineno}", f"not valid JSON: {str(exc)[:80]}") from None
            except RecursionError:
                raise _err(path, f"line {lineno}", "not valid JSON: nested too deeply") from None
            if not isinstance(rec, dict):
                raise _err(path, f"line {lineno}", "a record must be a JSON object")
            yield lineno, rec
            n += 1
            if max_records is not None and n >= max_records:
                return


def _first_key(rec, keys):
    for k in keys:
        if k in rec:
            return k
    return None


def _check_ids(path, lineno, field, ids, k_ref, n_experts):
    if not isinstance(ids, list) or not ids or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in ids):
        raise _err(path, f"line {lineno}, field {field!r}", "must be a non-empty list of integers")
    if k_ref[0] is None:
        k_ref[0] = (len(ids), lineno)
    elif len(ids) != k_ref[0][0]:
        raise _err(path, f"line {lineno}, field {field!r}",
                   f"{len(ids)} expert ids, but k = {k_ref[0][0]} (from line {k_ref[0][1]}): "
                   "inconsistent k")
    lo, hi = min(ids), max(ids)
    top = n_experts if n_experts is not None else MAX_EXPERTS
    if lo < 0 or hi >= top:
        bad = lo if lo < 0 else hi
        why = "" if n_experts is not None else " (mcroute._base.validate.MAX_EXPERTS)"
        raise _err(path, f"line {lineno}, field {field!r}",
                   f"expert id {short_repr(bad)} outside 0..{top - 1}{why}")
    if len(set(ids)) != len(ids):
        rep = next(x for x in ids if ids.count(x) > 1)
        raise _err(path, f"line {lineno}, field {field!r}",
                   f"expert {rep} repeated within one token's k choices {ids}")


def _check_weights(path, lineno, field, w, k):
    if not isinstance(w, list) or len(w) != k or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) <= 1e300
            for x in w):
        raise _err(path, f"line {lineno}, field {field!r}", f"must be a list of {k} numbers")


def _guess_file(path):
    """Format of one file from its first bytes / first record."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not head:
        raise _err(path, "", "empty file (no records)")
    if head.startswith(b"PK"):
        return "npz"
    if head.startswith(b"\x93NUMPY"):
        return "array"
    with open(path, encoding="utf-8", errors="replace") as fh:
        first = ""
        lineno = 0
        for lineno, line in _lines(path, fh):  # noqa: B007
            if line.strip():
                first = line.strip()
                break
    if not first:
        raise _err(path, "", "empty file (no records)")
    if first.startswith("{"):
        try:
            rec = json.loads(first)
        except json.JSONDecodeError as exc:
            raise _err(path, f"line {lineno}", f"not valid JSON: {exc.msg}") from None
        except (ValueError, RecursionError) as exc:
            raise _err(path, f"line {lineno}", f"not valid JSON ({type(exc).__name__})") \
                from None
        if not isinstance(rec, dict):
            raise _err(path, f"line {lineno}", "a record must be a JSON object")
        if rec.get("type") in ("meta", "route") or ("topk_ids" in rec and "type" in rec):
            return "jsonl-forward-pass"
        if _first_key(rec, _IDS_KEYS) and "layer" in rec and _first_key(rec, _TOK_KEYS):
            return "jsonl-token-layer"
        raise _err(path, f"line {lineno}",
                   "not a routing record: expected expert ids ('experts', 'expert_ids' or "
                   f"'topk_ids'), 'layer' and 'token_idx'; found fields {sorted(rec)}")
    cols = [c.strip() for c in first.split(",")]
    if {"expert", "count", "layer"} <= set(cols):
        return "histogram-csv"
    if "expert_a" in cols:
        raise _err(path, "line 1", "cross-layer pair counts are not a routing trace; load "
                                   "expert_counts.csv (per-layer histograms) instead")
    raise _err(path, "line 1", "unrecognised trace format (expected .npz, .npy, JSON lines or a "
                               "histogram CSV)")


def _load_token_layer(paths, n_experts, missing_layers, max_records, notes):
    seq_ids: dict = {}
    seq = array("q")
    tok = array("q")
    lay = array("q")
    line_no = array("q")
    file_no = array("q")
    ids = array("q")
    wts = array("d")
    has_w = None
    k_ref = [None]
    for fi, path in enumerate(paths):
        for lineno, rec in _json_records(path, max_records):
            idk = _first_key(rec, _IDS_KEYS)
            tk = _first_key(rec, _TOK_KEYS)
            if idk is None or tk is None or "layer" not in rec:
                raise _err(path, f"line {lineno}", "missing field: a record needs expert ids "
                                                   f"({'/'.join(_IDS_KEYS)}), 'layer' and "
                                                   f"{'/'.join(_TOK_KEYS)}")
            v = rec[idk]
            _check_ids(path, lineno, idk, v, k_ref, n_experts)
            for f in ("layer", tk):
                x = rec[f]
                if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x <= MAX_COUNT:
                    raise _err(path, f"line {lineno}, field {f!r}",
                               f"must be an integer in [0, {MAX_COUNT}], got {short_repr(x)}")
            sk = _first_key(rec, _SEQ_KEYS)
            if sk is not None:
                key = (fi if sk == "req_id" else -1, rec[sk])
            elif "problem_id" in rec:
                key = (-1, rec.get("dataset"), rec["problem_id"])
            else:
                key = (fi,)
            try:
                sid = seq_ids.setdefault(key, len(seq_ids))
            except TypeError:
                raise _err(path, f"line {lineno}, field {sk!r}", "sequence id must be a "
                                                                 "string or number") from None
            wk = _first_key(rec, _W_KEYS)
            if has_w is None:
                has_w = wk is not None
            if has_w:
                if wk is None:
                    raise _err(path, f"line {lineno}", "missing gate weights (earlier records "
                                                       "have them)")
                _check_weights(path, lineno, wk, rec[wk], len(v))
                wts.extend(float(x) for x in rec[wk])
            seq.append(sid)
            tok.append(rec[tk])
            lay.append(rec["layer"])
            line_no.append(lineno)
            file_no.append(fi)
            ids.extend(v)
    if not seq:
        raise _err(paths[0], "", "empty file (no records)")
    k = k_ref[0][0]
    seq_a = np.frombuffer(seq, dtype=np.int64)
    tok_a = np.frombuffer(tok, dtype=np.int64)
    lay_a = np.frombuffer(lay, dtype=np.int64)
    ids_a = np.frombuffer(ids, dtype=np.int64).reshape(-1, k)
    w_a = np.frombuffer(wts, dtype=np.float64).reshape(-1, k) if has_w else None
    layer_ids, lpos = np.unique(lay_a, return_inverse=True)
    token_keys, tpos = np.unique(np.stack([seq_a, tok_a], axis=1), axis=0, return_inverse=True)
    tpos = tpos.ravel()
    n_tok, n_lay = token_keys.shape[0], layer_ids.size
    flat = tpos * n_lay + lpos
    order = np.argsort(flat, kind="stable")
    dup = np.nonzero(np.diff(flat[order]) == 0)[0]
    if dup.size:
        a, b = order[dup[0]], order[dup[0] + 1]
        other = f" of {paths[file_no[a]]}" if file_no[a] != file_no[b] else ""
        raise _err(paths[file_no[b]], f"line {line_no[b]}",
                   f"duplicate record: same sequence, token and layer {int(lay_a[b])} as line "
                   f"{line_no[a]}{other}")
    present = np.zeros((n_tok, n_lay), dtype=bool)
    present[tpos, lpos] = True
    full = present.all(axis=1)
    n_bad = int((~full).sum())
    if n_bad:
        first = int(np.nonzero(~full)[0][0])
        msg = (f"{n_bad} of {n_tok} tokens lack one or more of the {n_lay} layers "
               f"(e.g. token_idx {int(token_keys[first, 1])} of sequence "
               f"{int(token_keys[first, 0])} lacks layers {layer_ids[~present[first]].tolist()})")
        if missing_layers == "error":
            raise _err(paths[0] if len(paths) == 1 else ", ".join(map(str, paths)), "",
                       msg + "; pass missing_layers='drop' (CLI: --missing-layers drop) to "
                       "drop those tokens")
        notes.append(f"dropped {msg}")
    experts = np.zeros((n_tok, n_lay, k), dtype=np.int64)
    experts[tpos, lpos] = ids_a
    gate = None
    if w_a is not None:
        gate = np.zeros((n_tok, n_lay, k))
        gate[tpos, lpos] = w_a
    keep = np.nonzero(full)[0]
    if keep.size == 0:
        raise _err(paths[0], "", "no token has all layers")
    if n_experts is None:
        n_experts = int(ids_a.max()) + 1
        notes.append(f"n_experts inferred as the largest expert id + 1 = {n_experts}; pass "
                     "n_experts= to set it")
    return dict(experts=experts[keep], n_experts=n_experts,
                gate_weights=None if gate is None else gate[keep],
                sequence=token_keys[keep, 0], step=token_keys[keep, 1], layer_ids=layer_ids)


def _forward_pass_file(path, n_experts, max_records, k_ref):
    """Parse one forward-pass log: (meta, layer, passes); dummy passes keep only one row."""
    meta = None
    layer = None
    passes = []  # each: [n_rows, ids array('q'), wts array('d'), first_row, all_same, line0]
    cur = None
    prev_tok = None
    for lineno, rec in _json_records(path, max_records):
        typ = rec.get("type")
        if typ == "meta":
            if meta is not None:
                raise _err(path, f"line {lineno}", "a second 'meta' record")
            meta = rec
            continue
        if typ != "route":
            raise _err(path, f"line {lineno}, field 'type'",
                       f"expected 'meta' or 'route', got {typ!r}")
        for f in ("topk_ids", "token_idx", "layer"):
            if f not in rec:
                raise _err(path, f"line {lineno}", f"missing field {f!r}")
        v = rec["topk_ids"]
        _check_ids(path, lineno, "topk_ids", v, k_ref, n_experts)
        if meta is not None and "top_k" in meta and len(v) != meta["top_k"]:
            raise _err(path, f"line {lineno}, field 'topk_ids'",
                       f"{len(v)} ids but the meta record says top_k = {meta['top_k']}")
        ti, ly = rec["token_idx"], rec["layer"]
        for f, x in (("token_idx", ti), ("layer", ly)):
            if not isinstance(x, int) or isinstance(x, bool) or not 0 <= x <= MAX_COUNT:
                raise _err(path, f"line {lineno}, field {f!r}",
                           f"must be an integer in [0, {MAX_COUNT}], got {short_repr(x)}")
        if layer is None:
            layer = ly
        elif ly != layer:
            raise _err(path, f"line {lineno}, field 'layer'",
                       f"layer {ly} in a file of layer {layer} (one layer per file)")
        w = rec.get("topk_weights")
        if w is not None:
            _check_weights(path, lineno, "topk_weights", w, len(v))
        row = (tuple(v), tuple(w) if w is not None else None)
        if prev_tok is None or ti <= prev_tok:
            if ti != 0:
                raise _err(path, f"line {lineno}, field 'token_idx'",
                           f"a forward pass starts at token_idx {ti}, expected 0")
            cur = [0, array("q"), array("d"), row, True, lineno, w is not None]
            passes.append(cur)
        elif ti != prev_tok + 1:
            raise _err(path, f"line {lineno}, field 'token_idx'",
                       f"token_idx jumps from {prev_tok} to {ti} within a forward pass")
        prev_tok = ti
        cur[0] += 1
        if cur[4] and row == cur[3]:
            continue  # still an all-identical (dummy) pass: nothing stored beyond the first row
        if cur[4]:
            # The pass turned out to vary: materialise its identical prefix.
            cur[4] = False
            for _ in range(cur[0] - 1):
                cur[1].extend(cur[3][0])
                if cur[6]:
                    cur[2].extend(cur[3][1])
        cur[1].extend(v)
        if cur[6]:
            if w is None:
                raise _err(path, f"line {lineno}", "missing 'topk_weights' (earlier rows of "
                                                   "this pass have them)")
            cur[2].extend(w)
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


def _load_forward_pass(paths, n_experts, max_records, warmup_passes, notes):
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
    sizes = [p[0] for p in ref_passes]
    identical = [p[4] for p in ref_passes]
    for path, _, _, passes in per_file[1:]:
        s2 = [p[0] for p in passes]
        if s2 != sizes:
            i = next((i for i, (a, b) in enumerate(zip(s2, sizes, strict=False)) if a != b),
                     min(len(s2), len(sizes)))
            raise McrouteError(
                f"{path}: forward-pass structure differs from {ref_path} (pass {i}: "
                f"{s2[i] if i < len(s2) else 'missing'} rows vs "
                f"{sizes[i] if i < len(sizes) else 'missing'}); the files cannot be lined up")
    prefill, decode, dropped = _split_passes(ref_path, sizes, identical, warmup_passes)
    k = k_ref[0][0]
    keep = [prefill, *decode]
    n_tok = sum(sizes[i] for i in keep)
    experts = np.zeros((n_tok, len(per_file), k), dtype=np.int64)
    has_w = all(p[6] for _, _, _, passes in per_file for i, p in enumerate(passes) if i in keep)
    gate = np.zeros((n_tok, len(per_file), k)) if has_w else None
    for li, (_, _, _, passes) in enumerate(per_file):
        rows = []
        wrows = []
        for i in keep:
            p = passes[i]
            if p[4]:
                a = np.tile(np.asarray(p[3][0], dtype=np.int64), (p[0], 1))
                wa = np.tile(np.asarray(p[3][1]), (p[0], 1)) if has_w else None
            else:
                a = np.frombuffer(p[1], dtype=np.int64).reshape(-1, k)
                wa = np.frombuffer(p[2], dtype=np.float64).reshape(-1, k) if has_w else None
            rows.append(a)
            wrows.append(wa)
        experts[:, li] = np.concatenate(rows)
        if has_w:
            gate[:, li] = np.concatenate(wrows)
    batch = np.concatenate([np.full(sizes[i], j, dtype=np.int64) for j, i in enumerate(keep)])
    step = np.concatenate([np.full(sizes[prefill], -1, dtype=np.int64)]
                          + [np.full(sizes[i], j, dtype=np.int64) for j, i in enumerate(decode)])
    prefill_flag = np.zeros(n_tok, dtype=bool)
    prefill_flag[: sizes[prefill]] = True
    what = ", ".join(f"#{i}: {sizes[i]} rows" + (" identical" if identical[i] else "")
                     for i in dropped)
    notes.append(
        f"{len(sizes)} forward passes; dropped {len(dropped)} warm-up/dummy passes ({what}); "
        f"kept prefill pass #{prefill} ({sizes[prefill]} tokens) and {len(decode)} decode steps "
        f"({sum(sizes[i] for i in decode)} tokens, batch {max(sizes[i] for i in decode)} "
        f"falling to {min(sizes[i] for i in decode)}); sequence ids are unknown (the logger "
        "does not record them)")
    if n_experts is None:
        n_experts = int(experts.max()) + 1
        notes.append(f"n_experts inferred as the largest expert id + 1 = {n_experts}; pass "
                     "n_experts= to set it")
    model = str((ref_meta or {}).get("model_id", ""))
    return dict(experts=experts, n_experts=n_experts, gate_weights=gate, batch=batch, step=step,
                prefill=prefill_flag, layer_ids=np.asarray(layers, dtype=np.int64), model=model)


# ---------------------------------------------------------------------------------------------
# Histogram CSV
# ---------------------------------------------------------------------------------------------


def _load_histogram(path, model, domain, selection, notes):
    need = ["model", "layer", "expert", "count", "n_tokens", "top_k", "num_experts"]
    table = {}
    meta = {}
    seen = {"model": set(), "domain": set(), "selection": set()}
    try:
        return _load_histogram_rows(path, model, domain, selection, notes, need, table, meta,
                                    seen)
    except csv.Error as exc:  # e.g. a field longer than csv.field_size_limit()
        raise _err(path, "", f"not a readable CSV ({exc})") from None
    except UnicodeDecodeError as exc:
        raise _err(path, "", f"not UTF-8 text (byte {exc.start})") from None


#: Bounds of the integer columns of a histogram CSV (mcroute._base.validate limits).
_HIST_BOUNDS = {"layer": (0, MAX_LAYERS - 1), "expert": (0, MAX_EXPERTS - 1),
                "count": (0, MAX_COUNT), "n_tokens": (0, MAX_COUNT),
                "top_k": (1, MAX_EXPERTS), "num_experts": (1, MAX_EXPERTS)}


def _load_histogram_rows(path, model, domain, selection, notes, need, table, meta, seen):
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            raise _err(path, "", "empty file (no records)")
        miss = [c for c in need if c not in reader.fieldnames]
        if miss:
            raise _err(path, "line 1", f"missing columns {miss}")
        for row in reader:
            lineno = reader.line_num
            for c in ("model", "domain", "selection"):
                seen[c].add(row.get(c) or "")
            if model is not None and row["model"] != model:
                continue
            if domain is not None and (row.get("domain") or "") != domain:
                continue
            if (row.get("selection") or "topk") != selection:
                continue
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
            key = (row["model"], row.get("domain") or "")
            m = meta.setdefault(key, (vals["num_experts"], vals["top_k"], {}, row.get("hf_model")))
            if (vals["num_experts"], vals["top_k"]) != m[:2]:
                raise _err(path, f"line {lineno}", "num_experts/top_k differ from earlier rows of "
                                                   f"model {key[0]}")
            if not 0 <= vals["expert"] < vals["num_experts"]:
                raise _err(path, f"line {lineno}, field 'expert'",
                           f"expert id {vals['expert']} outside 0..{vals['num_experts'] - 1}")
            if vals["count"] < 0:
                raise _err(path, f"line {lineno}, field 'count'", "negative count")
            m[2][vals["layer"]] = vals["n_tokens"]
            cell = table.setdefault(key, {}).setdefault(vals["layer"], {})
            if vals["expert"] in cell:
                raise _err(path, f"line {lineno}", f"expert {vals['expert']} of layer "
                                                   f"{vals['layer']} appears twice")
            cell[vals["expert"]] = vals["count"]
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


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def load_trace(path, format=None, *, n_experts=None, model=None, domain=None, selection="topk",
               missing_layers="error", max_records=None, warmup_passes="auto", mode="token",
               layer_map=None, block_size=0, n_model_layers=None):
    """Load router decisions from a file or folder as a :class:`~mcroute.Trace`.

    Parameters
    ----------
    path : str, Path or list of them
        A file, a folder (every routing file in it is read; other JSON-lines files, e.g.
        prompts/outputs, are skipped with a note) or a list of files of one format.
    format : str, optional
        One of :data:`FORMATS`; guessed from the content if None. The guess is in
        ``trace.notes``.
    n_experts : int, optional
        E. Required to check ids against 0..E-1 in formats that do not state it; if None it is
        inferred as the largest id + 1 (and a note says so).
    model, domain, selection : str, optional
        Which histogram of a histogram CSV (``selection`` is ``"topk"`` or ``"top1"``);
        ``model`` also overrides the model name of other formats.
    missing_layers : {"error", "drop"}
        What to do with tokens that lack some layers (token-layer JSON lines): fail, naming the
        count, or drop them (a note says how many).
    max_records : int, optional
        Read at most this many records per file (for quick looks).
    warmup_passes : "auto" or int
        Forward-pass logs: leading passes to drop (``"auto"``: see the module docstring).
    mode, layer_map, block_size
        Passed to :class:`~mcroute.Trace`.
    n_model_layers : int, optional
        Layers of the traced model (for ``layer_map="nearest"``).

    Returns
    -------
    Trace or PopularityTrace
        ``PopularityTrace`` for histogram files (no per-token data).

    Raises
    ------
    McrouteError
        Malformed input, naming the file, the line or field, and the problem.
    """
    if format is not None:
        check_choice("format", format, FORMATS)
    check_choice("missing_layers", missing_layers, ("error", "drop"))
    check_choice("selection", selection, ("topk", "top1"))
    if n_model_layers is not None:
        n_model_layers = check_int("n_model_layers", n_model_layers, minimum=1,
                                   maximum=MAX_LAYERS)
    if not (isinstance(warmup_passes, str) and warmup_passes == "auto"):
        warmup_passes = check_int("warmup_passes (or 'auto')", warmup_passes, minimum=0)
    for name, v in (("model", model), ("domain", domain)):
        if v is not None and not isinstance(v, str):
            raise McrouteError(f"{name} must be a string or None, got {short_repr(v)}")
    if max_records is not None:
        max_records = check_int("max_records", max_records, minimum=1)
    if n_experts is not None:
        n_experts = check_int("n_experts", n_experts, minimum=1, maximum=MAX_EXPERTS)
    items = path if isinstance(path, (list, tuple)) else [path]
    if not all(isinstance(p, (str, os.PathLike)) for p in items):
        raise McrouteError(f"path must be a file or folder path or a list of them, got "
                           f"{short_repr(path)}")
    try:
        paths = [Path(p) for p in items]
    except (TypeError, ValueError) as exc:
        raise McrouteError(f"path: {exc}") from None
    if not paths:
        raise McrouteError("path must name at least one file")
    notes = []
    files = []
    for p in paths:
        if p.is_dir():
            found = sorted(x for x in p.iterdir() if x.is_file() and not x.name.startswith("."))
            for x in found:
                try:
                    fmt = _guess_file(x)
                except McrouteError as exc:
                    notes.append(f"skipped {x.name}: {str(exc).split(': ', 1)[-1]}")
                    continue
                files.append((x, fmt))
            if not files:
                raise McrouteError(f"{p}: no routing files found in this folder")
        elif not p.exists():
            raise McrouteError(f"{p}: no such file or folder")
        elif not p.is_file():  # /dev/zero, a FIFO, a socket: never read unbounded input
            raise McrouteError(f"{p}: not a regular file or folder")
        else:
            files.append((p, format or _guess_file(p)))
    fmts = {f for _, f in files}
    if format is not None:
        fmts = {format}
    if len(fmts) > 1:
        raise McrouteError(f"files of different formats: {[(str(a), b) for a, b in files]}")
    fmt = fmts.pop()
    flist = [f for f, _ in files]
    how = "given" if format is not None else "guessed from the content"
    notes.insert(0, f"format {fmt!r} ({how}); files: {', '.join(str(f) for f in flist)}")
    common = dict(mode=mode, layer_map=layer_map, block_size=block_size)
    if fmt in ("npz", "array") and len(flist) > 1:
        raise McrouteError(f"format {fmt!r} reads one file at a time, got {len(flist)}")
    if fmt == "npz":
        f = _npz_fields(flist[0])
        if "format" in f or "experts" in f:
            if "format" in f and str(f["format"]) != CANONICAL_FORMAT:
                raise _err(flist[0], "field 'format'",
                           f"is {str(f['format'])!r}, expected {CANONICAL_FORMAT!r}")
            return _load_canonical(flist[0], f, notes, **common)
        ints = [v for v in f.values() if v.ndim == 3 and np.issubdtype(v.dtype, np.integer)]
        if len(ints) != 1:
            raise _err(flist[0], "", "neither a canonical trace (fields 'format', 'experts', ...) "
                                     "nor a single [tokens, layers, k] integer array")
        notes[0] = notes[0].replace("'npz'", "'array'")
        return _load_array(flist[0], ints[0], n_experts, notes, **common)
    if fmt == "array":
        try:
            ex = np.load(flist[0], allow_pickle=False)
        except ValueError as exc:
            raise _err(flist[0], "", f"cannot load without pickle ({exc})") from None
        except (OSError, EOFError) as exc:
            raise _err(flist[0], "", f"not a readable .npy file ({exc})") from None
        if isinstance(ex, np.lib.npyio.NpzFile):
            ex.close()
            raise _err(flist[0], "", "is an .npz archive, not a single .npy array (read it "
                                     "with format 'npz')")
        return _load_array(flist[0], ex, n_experts, notes, **common)
    if fmt == "histogram-csv":
        if len(flist) > 1:
            raise McrouteError("histogram CSVs are read one file at a time")
        return _load_histogram(flist[0], model, domain, selection, notes)
    if fmt == "jsonl-token-layer":
        parts = _load_token_layer(flist, n_experts, missing_layers, max_records, notes)
    else:
        parts = _load_forward_pass(flist, n_experts, max_records, warmup_passes, notes)
    name = model if model is not None else parts.pop("model", "")
    parts.pop("model", None)
    try:
        return Trace(**parts, model=name, source="; ".join(str(f) for f in flist),
                     n_model_layers=n_model_layers, notes=notes, **common)
    except McrouteError as exc:
        raise McrouteError(f"{', '.join(str(f) for f in flist)}: {exc}") from None

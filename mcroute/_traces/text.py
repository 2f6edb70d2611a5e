"""Reading routing-log text: lines, JSON records, field checks, and the guess of a file's format.

May import: numpy, the standard library, ``mcroute._base``.

Shared by the readers of :mod:`mcroute._traces.io`, :mod:`mcroute._traces.jsonl` and
:mod:`mcroute._traces.histogram`. Every error names the file, the line or field and the problem
(:func:`file_error`).
"""

from __future__ import annotations

import json

from mcroute._base.validate import MAX_EXPERTS, MAX_LINE_BYTES, McrouteError, short_repr

__all__ = ["file_error", "read_lines", "json_records", "first_key", "check_ids", "check_weights",
           "guess_file", "IDS_KEYS", "W_KEYS", "TOK_KEYS", "SEQ_KEYS"]

#: Field names of the expert ids, gate weights, token position and sequence in JSON records.
IDS_KEYS = ("experts", "expert_ids", "topk_ids")
W_KEYS = ("gating_probs", "gate_weights", "topk_weights", "weights")
TOK_KEYS = ("token_idx", "token", "step")
SEQ_KEYS = ("seq_id", "sequence", "request_id")


def file_error(path, where, problem) -> McrouteError:
    """``McrouteError("<path>, <where>: <problem>")`` (``where`` may be empty)."""
    loc = f"{path}" + (f", {where}" if where else "")
    return McrouteError(f"{loc}: {problem}")


_err = file_error


def read_lines(path, fh):
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


def json_records(path, max_records):
    """Yield (line number, dict) for the non-blank lines of a JSON-lines file."""
    n = 0
    with open(path, encoding="utf-8") as fh:
        for lineno, line in read_lines(path, fh):
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


def first_key(rec, keys):
    for k in keys:
        if k in rec:
            return k
    return None


def check_ids(path, lineno, field, ids, k_ref, n_experts):
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


def check_weights(path, lineno, field, w, k):
    if not isinstance(w, list) or len(w) != k or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) <= 1e300
            for x in w):
        raise _err(path, f"line {lineno}, field {field!r}", f"must be a list of {k} numbers")


def guess_file(path):
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
        for lineno, line in read_lines(path, fh):  # noqa: B007
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
        if first_key(rec, IDS_KEYS) and "layer" in rec and first_key(rec, TOK_KEYS):
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

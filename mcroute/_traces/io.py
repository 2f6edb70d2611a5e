"""Reading and writing router traces: :func:`load_trace`, :func:`save_trace`.

May import: numpy, the standard library, ``mcroute._base``, the modules of ``mcroute._traces``.

The readers of the text formats live in :mod:`mcroute._traces.jsonl` (JSON lines) and
:mod:`mcroute._traces.histogram` (histogram CSV); line reading, field checks and the guess of
a file's format in :mod:`mcroute._traces.text`.

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

import os
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mcroute._base.atomic import atomic_path
from mcroute._base.validate import (
    MAX_EXPERTS,
    MAX_LAYERS,
    McrouteError,
    check_choice,
    check_int,
    check_path,
    short_repr,
)
from mcroute._traces.histogram import load_histogram
from mcroute._traces.jsonl import load_forward_pass, load_token_layer
from mcroute._traces.text import file_error as _err
from mcroute._traces.text import guess_file
from mcroute._traces.trace import Trace

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mcroute._traces.trace import PopularityTrace

__all__ = ["load_trace", "save_trace", "FORMATS", "CANONICAL_FORMAT", "CANONICAL_VERSION"]

#: Formats :func:`load_trace` understands.
FORMATS = ("npz", "jsonl-token-layer", "jsonl-forward-pass", "histogram-csv", "array")
#: Value of the ``format`` field of a canonical trace file.
CANONICAL_FORMAT = "mcroute-trace"
#: Version of the canonical format written by :func:`save_trace`.
CANONICAL_VERSION = 1



# ---------------------------------------------------------------------------------------------
# Canonical .npz
# ---------------------------------------------------------------------------------------------


def save_trace(trace: Trace, path: str | os.PathLike) -> Path:
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
# Entry point
# ---------------------------------------------------------------------------------------------


def load_trace(path: str | os.PathLike | Sequence[str | os.PathLike], format: str | None = None,
               *, n_experts: int | None = None, model: str | None = None,
               domain: str | None = None, selection: str = "topk",
               missing_layers: str = "error", max_records: int | None = None,
               warmup_passes: str | int = "auto", mode: str = "token",
               layer_map: str | Sequence[int] | None = None, block_size: int = 0,
               n_model_layers: int | None = None) -> Trace | PopularityTrace:
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
    n_model_layers, warmup_passes, max_records, n_experts = _check_options(
        model, domain, n_model_layers, warmup_passes, max_records, n_experts)
    notes = []
    files = _routing_files(_as_paths(path), format, notes)
    fmts = {format} if format is not None else {f for _, f in files}
    if len(fmts) > 1:
        raise McrouteError(f"files of different formats: {[(str(a), b) for a, b in files]}")
    fmt = fmts.pop()
    flist = [f for f, _ in files]
    how = "given" if format is not None else "guessed from the content"
    notes.insert(0, f"format {fmt!r} ({how}); files: {', '.join(str(f) for f in flist)}")
    common = dict(mode=mode, layer_map=layer_map, block_size=block_size)
    if fmt in ("npz", "array", "histogram-csv") and len(flist) > 1:
        raise McrouteError(f"format {fmt!r} reads one file at a time, got {len(flist)}")
    if fmt == "npz":
        return _load_npz(flist[0], n_experts, notes, common)
    if fmt == "array":
        return _load_npy(flist[0], n_experts, notes, common)
    if fmt == "histogram-csv":
        return load_histogram(flist[0], model, domain, selection, notes)
    if fmt == "jsonl-token-layer":
        parts = load_token_layer(flist, n_experts, missing_layers, max_records, notes)
    else:
        parts = load_forward_pass(flist, n_experts, max_records, warmup_passes, notes)
    name = model if model is not None else parts.pop("model", "")
    parts.pop("model", None)
    try:
        return Trace(**parts, model=name, source="; ".join(str(f) for f in flist),
                     n_model_layers=n_model_layers, notes=notes, **common)
    except McrouteError as exc:
        raise McrouteError(f"{', '.join(str(f) for f in flist)}: {exc}") from None


def _check_options(model, domain, n_model_layers, warmup_passes, max_records, n_experts):
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
    return n_model_layers, warmup_passes, max_records, n_experts


def _as_paths(path) -> list[Path]:
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
    return paths


def _routing_files(paths, format, notes):
    """(file, format) of every file to read; folders are searched, other files noted."""
    files = []
    for p in paths:
        if p.is_dir():
            found = sorted(x for x in p.iterdir() if x.is_file() and not x.name.startswith("."))
            for x in found:
                try:
                    fmt = guess_file(x)
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
            files.append((p, format or guess_file(p)))
    return files


def _load_npz(path, n_experts, notes, common):
    f = _npz_fields(path)
    if "format" in f or "experts" in f:
        if "format" in f and str(f["format"]) != CANONICAL_FORMAT:
            raise _err(path, "field 'format'",
                       f"is {str(f['format'])!r}, expected {CANONICAL_FORMAT!r}")
        return _load_canonical(path, f, notes, **common)
    ints = [v for v in f.values() if v.ndim == 3 and np.issubdtype(v.dtype, np.integer)]
    if len(ints) != 1:
        raise _err(path, "", "neither a canonical trace (fields 'format', 'experts', ...) "
                             "nor a single [tokens, layers, k] integer array")
    notes[0] = notes[0].replace("'npz'", "'array'")
    return _load_array(path, ints[0], n_experts, notes, **common)


def _load_npy(path, n_experts, notes, common):
    try:
        ex = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise _err(path, "", f"cannot load without pickle ({exc})") from None
    except (OSError, EOFError) as exc:
        raise _err(path, "", f"not a readable .npy file ({exc})") from None
    if isinstance(ex, np.lib.npyio.NpzFile):
        ex.close()
        raise _err(path, "", "is an .npz archive, not a single .npy array (read it with "
                             "format 'npz')")
    return _load_array(path, ex, n_experts, notes, **common)

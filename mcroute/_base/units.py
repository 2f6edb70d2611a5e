"""Sizes and token counts written like ``"128k"``: the one parser of this format.

Floor 2 (base). May import: the standard library and ``mcroute._base.validate``.

A size is a positive integer, or a string of digits with an optional suffix ``k`` (× 1024) or
``m`` (× 1024²), case-insensitive, spaces allowed around it: ``"4096"``, ``"4k"``, ``"128K"``,
``"1m"``. Context lengths are quoted in powers of two, so ``"128k"`` is 131,072 tokens. The CLI
(``--context 4k,32k``), the Python API (``context="128k"``) and sweep files use this parser.
"""

from __future__ import annotations

import re

from mcroute._base.validate import (
    MAX_BATCH_SIZE,
    MAX_CONTEXT,
    McrouteError,
    check_int,
    short_repr,
)

__all__ = ["SIZE_SUFFIX", "parse_size", "parse_size_list", "size_limit"]

#: Multiplier of each suffix (k = 1024, m = 1024**2).
SIZE_SUFFIX = {"": 1, "k": 1024, "m": 1024**2}

#: Up to 40 digits (more cannot fit in an int64 anyway), then an optional suffix.
_SIZE_RE = re.compile(r"\s*([0-9]{1,40})\s*([kKmM]?)\s*")

#: Upper limit of the parameters parsed as sizes when the caller gives none (see
#: mcroute._base.validate): ``context`` and ``batch_size``.
_LIMITS = {"context": MAX_CONTEXT, "batch_size": MAX_BATCH_SIZE}


def size_limit(name: str) -> int | None:
    """The default upper limit of parameter ``name`` (``"context[2]"`` counts as ``context``)."""
    return _LIMITS.get(name.split("[")[0])


def parse_size(name: str, value, maximum: int | None = None) -> int:
    """Parse one size: an int, or a string like ``"4096"``, ``"4k"``, ``"128K"`` (k = 1024).

    ``maximum`` defaults to the limit of the parameter (:func:`size_limit`: ``MAX_CONTEXT`` for
    ``context``, ``MAX_BATCH_SIZE`` for ``batch_size``, none otherwise). Raises a
    :class:`McrouteError` naming ``name`` and what is allowed.

    Examples
    --------
    >>> parse_size("context", "128k"), parse_size("context", 4096), parse_size("n", " 1M ")
    (131072, 4096, 1048576)
    """
    if maximum is None:
        maximum = size_limit(name)
    if isinstance(value, str):
        m = _SIZE_RE.fullmatch(value)
        if not m:
            raise McrouteError(
                f"{name} must be a positive integer like 4096 or 128k"
                f"{'' if maximum is None else f' (at most {maximum})'}, got {short_repr(value)}")
        value = int(m.group(1)) * SIZE_SUFFIX[m.group(2).lower()]
    return check_int(name, value, minimum=1, maximum=maximum)


def parse_size_list(name: str, value, maximum: int | None = None) -> tuple[list[int], bool]:
    """Parse one size or several distinct sizes; return ``(values, given_as_one)``.

    ``value`` is a size (see :func:`parse_size`), a comma-separated string of sizes
    (``"4k,32k,128k"``, as on the command line) or a sequence of sizes. The values label a
    dimension, so each may appear once.

    Examples
    --------
    >>> parse_size_list("context", "4k, 32k")
    ([4096, 32768], False)
    >>> parse_size_list("context", "128k")
    ([131072], True)
    >>> parse_size_list("context", [4096, "8k"])
    ([4096, 8192], False)
    """
    if isinstance(value, str):
        if "," not in value:
            return [parse_size(name, value, maximum)], True
        parts = [p for p in value.split(",") if p.strip()]
        if not parts:
            raise McrouteError(f"{name} must be a comma-separated list of sizes, got "
                               f"{short_repr(value)}")
        values = [parse_size(name, p, maximum) for p in parts]
        labels = [p.strip() for p in parts]
    elif isinstance(value, (list, tuple, range)) or _is_array(value):
        items = list(value.ravel() if _is_array(value) else value)
        if not items:
            raise McrouteError(f"{name} must not be empty")
        if len(items) == 1 and _is_array(value) and value.ndim == 0:
            return [parse_size(name, items[0], maximum)], True
        values = [parse_size(f"{name}[{i}]", v, maximum if maximum is not None
                             else size_limit(name)) for i, v in enumerate(items)]
        labels = [repr(v) for v in items]
    else:
        return [parse_size(name, value, maximum)], True
    seen = set()
    for v, label in zip(values, labels, strict=True):
        if v in seen:
            raise McrouteError(f"{name} must not repeat values (they label a dimension): {v} "
                               f"appears twice (as {label}); give each value once")
        seen.add(v)
    return values, False


def _is_array(value) -> bool:
    """A NumPy array (checked without importing NumPy here)."""
    return hasattr(value, "ndim") and hasattr(value, "ravel")

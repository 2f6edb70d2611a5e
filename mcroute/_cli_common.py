"""Helpers shared by the CLI subcommands: argument parsing of lists, sizes and routings, tables.

May import: the array and labeled layers.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path

import numpy as np

from ._results import save_dataset
from ._routing import LogNormal, Uniform, Zipf
from ._validate import McrouteError, check_int, check_real

__all__ = ["parse_int", "parse_int_list", "parse_size", "parse_size_list", "parse_real",
           "parse_routing", "check_input_path", "check_output_path", "write_output",
           "format_table", "is_tty", "INT_MAX"]

_SUFFIX = {"": 1, "k": 1024, "m": 1024**2}

#: Largest integer any option accepts: every count and size ends up in an int64 array or
#: product, so larger values could only overflow. Commands and the API refuse far smaller
#: values where a resource limit applies.
INT_MAX = 2**63 - 1

#: Digits read from an integer option (more cannot fit below INT_MAX).
_MAX_DIGITS = 40
_SIZE_RE = re.compile(r"\s*([0-9]{1,40})\s*([kKmM]?)\s*")


def _shown(text, limit: int = 40) -> str:
    """``repr(text)``, shortened for an error message."""
    r = repr(text)
    return r if len(r) <= limit else r[: limit - 5] + "...'"


def parse_int(text, name: str, minimum: int | None = None, maximum: int = INT_MAX) -> int:
    """Parse a command-line integer, naming the option and the allowed range on error."""
    s = str(text).strip()
    try:
        if len(s) > _MAX_DIGITS:
            raise ValueError
        value = int(s)
    except ValueError:
        raise McrouteError(f"{name} must be an integer, got {_shown(text)}") from None
    return check_int(name, value, minimum=minimum, maximum=maximum)


def parse_real(text, name: str, *, minimum: float | None = None,
               maximum: float | None = None, open_min: bool = False,
               open_max: bool = False) -> float:
    """Parse a finite real number (a string or an already converted float), naming the option."""
    if isinstance(text, str):
        try:
            text = float(text.strip())
        except ValueError:
            raise McrouteError(f"{name} must be a number, got {_shown(text)}") from None
    return check_real(name, text, minimum=minimum, maximum=maximum, open_min=open_min,
                      open_max=open_max)


def parse_size(name: str, text: str, maximum: int = INT_MAX) -> int:
    """Parse ``4096``, ``4k`` or ``128K`` (k = 1024 tokens, as context lengths are quoted)."""
    m = _SIZE_RE.fullmatch(str(text))
    if not m:
        raise McrouteError(
            f"{name} must be a positive integer like 4096 or 128k, got {_shown(text)}")
    value = int(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if value < 1 or value > maximum:
        raise McrouteError(f"{name} must be in [1, {maximum}], got {_shown(text)}")
    return value


def parse_size_list(name: str, text: str, maximum: int = INT_MAX) -> list[int]:
    """Comma-separated distinct sizes, e.g. ``4k,32k,128k``."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise McrouteError(
            f"{name} must be a comma-separated list of sizes, got {_shown(text)}")
    values = [parse_size(name, p, maximum) for p in parts]
    seen = set()
    for v, p in zip(values, parts, strict=True):
        if v in seen:
            raise McrouteError(f"{name} lists {v} twice (as {p.strip()!r}); give each value once")
        seen.add(v)
    return values


def parse_int_list(name: str, text: str, maximum: int = INT_MAX) -> list[int]:
    """Comma-separated distinct positive integers (k/m suffixes allowed)."""
    return parse_size_list(name, text, maximum)


def check_input_path(name: str, text) -> None:
    """Refuse an existing input path that is not a regular file or a folder.

    Devices, FIFOs and sockets (``/dev/zero``, ``/dev/stdin``) never end and would be read until
    memory runs out. Paths that do not exist are left to the loader (they may be card names).
    """
    p = str(text)
    try:
        st = os.stat(p)
    except (OSError, ValueError):
        return
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise McrouteError(f"{name}: {p!r} is not a regular file (a device, FIFO or socket)")


def parse_routing(text: str, n_experts: int, top_k: int):
    """``uniform``, ``zipf:ALPHA`` or ``lognormal:SIGMA`` for E experts and top-k."""
    kind, _, arg = str(text).partition(":")
    kind = kind.strip().lower()
    if kind == "uniform" and not arg:
        return Uniform(n_experts, top_k)
    if kind in ("zipf", "lognormal") and arg:
        try:
            value = float(arg)
        except ValueError:
            raise McrouteError(
                f"--routing {kind}: parameter must be a number, got {arg!r}") from None
        cls = Zipf if kind == "zipf" else LogNormal
        return cls(n_experts, top_k, value)
    raise McrouteError(
        f"--routing must be uniform, zipf:ALPHA or lognormal:SIGMA, got {text!r}"
    )


def check_output_path(path, allowed=(".nc", ".csv", ".json"), flag: str = "--output") -> None:
    """Refuse a bad output path before any work is done.

    Checks the extension, that the folder exists, and that no folder or non-regular file is in
    the way (the write itself checks again, atomically).
    """
    if path is None:
        return
    if str(path).endswith(("/", os.sep)):
        raise McrouteError(f"{flag}: {str(path)!r} names a folder; give a file name")
    p = Path(str(path))
    ext = p.suffix.lower()
    if allowed and ext not in allowed:
        listed = ", ".join(allowed[:-1]) + f" or {allowed[-1]}" if len(allowed) > 1 else allowed[0]
        raise McrouteError(f"{flag} must end in {listed}, got {str(path)!r}")
    target = Path(os.path.realpath(p)) if p.is_symlink() else p
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise McrouteError(f"{flag}: output folder {str(folder)!r} does not exist")
    if target.exists() and not target.is_file():
        raise McrouteError(f"{flag}: {str(path)!r} exists and is not a regular file")


def write_output(ds, path) -> None:
    """Write ``ds`` by extension (.nc, .csv, .json), atomically, and say where."""
    out = save_dataset(ds, path)
    print(f"wrote {out}", file=sys.stderr)


def is_tty(stream=None) -> bool:
    """Whether progress output should be shown (a terminal, not a pipe)."""
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def _fmt(x) -> str:
    if isinstance(x, str):
        return x
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "—"
    if isinstance(x, (int, np.integer)):
        return f"{x:d}"
    ax = abs(x)
    if ax != 0 and (ax >= 1e6 or ax < 1e-3):
        return f"{x:.3e}"
    return f"{x:.4g}" if ax < 1000 else f"{x:,.0f}"


def format_table(header: list[str], rows: list[list]) -> str:
    """A plain aligned text table."""
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(lines)

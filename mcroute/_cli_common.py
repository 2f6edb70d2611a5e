"""Helpers shared by the CLI subcommands: argument parsing of lists, sizes and routings, tables.

May import: the array and labeled layers.
"""

from __future__ import annotations

import re
import sys

import numpy as np

from ._results import save_dataset
from ._routing import LogNormal, Uniform, Zipf
from ._validate import McrouteError, check_int

__all__ = ["parse_int", "parse_int_list", "parse_size", "parse_size_list", "parse_routing",
           "write_output", "format_table", "is_tty"]

_SUFFIX = {"": 1, "k": 1024, "m": 1024**2}


def parse_int(text, name: str, minimum: int | None = None) -> int:
    """Parse a command-line integer, naming the option and the allowed range on error."""
    try:
        value = int(str(text).strip())
    except ValueError:
        raise McrouteError(f"{name} must be an integer, got {text!r}") from None
    return check_int(name, value, minimum=minimum)


def parse_size(name: str, text: str) -> int:
    """Parse ``4096``, ``4k`` or ``128K`` (k = 1024 tokens, as context lengths are quoted)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)\s*", str(text))
    if not m:
        raise McrouteError(f"{name} must be a positive integer like 4096 or 128k, got {text!r}")
    value = int(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if value < 1:
        raise McrouteError(f"{name} must be >= 1, got {text!r}")
    return value


def parse_size_list(name: str, text: str) -> list[int]:
    """Comma-separated sizes, e.g. ``4k,32k,128k``."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise McrouteError(f"{name} must be a comma-separated list of sizes, got {text!r}")
    return [parse_size(name, p) for p in parts]


def parse_int_list(name: str, text: str) -> list[int]:
    """Comma-separated positive integers (k/m suffixes allowed)."""
    return parse_size_list(name, text)


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

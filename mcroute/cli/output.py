"""What the commands print: one table model, three formats, one set of number formats.

Front end (5). May import: ``mcroute._base``; nothing else (it formats plain values).

Every command that prints a table builds it from :class:`Column` declarations and rows of plain
values (numbers, strings, :class:`Est` estimates) and hands it to a :class:`Printer`, which
writes it as

* ``--format table`` (the default): an aligned text table no wider than :data:`WIDTH`
  characters. Columns marked droppable are hidden, least important first, until the table fits,
  and a line under it names them; ``--wide`` shows every column. On a terminal, notes longer
  than WIDTH are wrapped (not with ``--wide``); in a pipe each note stays one line (grep-able).
* ``--format csv``: one header line and one line per row, numbers unformatted (full
  precision), estimates split into ``<key>``, ``<key>_ci_lower``, ``<key>_ci_upper``
  (``<key>_p5``, ``<key>_p95``); the notes come first as ``# `` comment lines
  (``pandas.read_csv(..., comment="#")``).
* ``--format json``: one object ``{"notes": [...], "rows": [{...}, ...]}`` with the same keys.

``--quiet`` prints nothing on stdout (errors still go to stderr, as one line).

Number formats are the same in every command: contexts and other token counts as ``4k`` when a
multiple of 1024; throughputs with thousands separators and no decimals (``47,070``) from 100
up; other numbers to 4 (ratios 3) significant digits.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import textwrap
from dataclasses import dataclass

__all__ = ["WIDTH", "FORMATS", "Column", "Est", "Printer", "add_output_flags", "fmt_value",
           "fmt_tokens", "fmt_rate"]

#: Widest table (and wrapped note) printed without ``--wide``, in characters.
WIDTH = 100
#: ``--format`` choices.
FORMATS = ("table", "csv", "json")
#: What an absent value prints as in a table.
DASH = "—"


def _format_type(others: dict):
    """``--format`` values: :data:`FORMATS`; a value in ``others`` is refused with its hint."""

    def parse(text: str) -> str:
        if text in FORMATS:
            return text
        if text in others:
            raise argparse.ArgumentTypeError(others[text])
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from "
                                         f"{', '.join(FORMATS)})")

    return parse


def add_output_flags(p, *, table: bool = True, other_formats: dict | None = None) -> None:
    """Add ``--quiet`` and, for commands that print tables, ``--format`` and ``--wide``.

    ``other_formats`` maps values that mean something else (a trace file's format) to the hint
    printed when one is given to ``--format``.
    """
    if table:
        p.add_argument("--format", default="table", type=_format_type(other_formats or {}),
                       metavar="{table,csv,json}",
                       help="how results are printed on stdout: an aligned table (default), "
                       "csv or json (full precision, estimates split into columns)")
        p.add_argument("--wide", action="store_true",
                       help=f"show every table column (default: at most {WIDTH} characters "
                       "wide, hidden columns named under the table)")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")


@dataclass(frozen=True)
class Est:
    """An estimate: mean, interval of the mean, and optionally p5-p95 of single draws."""

    mean: float
    lo: float | None = None
    hi: float | None = None
    p5: float | None = None
    p95: float | None = None


@dataclass(frozen=True)
class Column:
    """A column: machine ``key``, table ``header``, number ``kind`` and how it may be hidden.

    kind: ``num`` (4 significant digits), ``ratio`` (3), ``int``, ``tokens`` (``4k``),
    ``rate`` (``47,070``), ``pct`` (``+1.2%``), ``params`` (``37.6B``, ``671B``), ``g`` (as
    written, up to 6 digits), ``share`` (3 decimals), ``text``.
    ``drop`` > 0 lets the table hide the column to fit :data:`WIDTH` (largest ``drop``
    first); ``shown=False`` keeps the column out of the table (csv/json only);
    ``machine=False`` keeps it out of csv/json (a table-only summary of other columns);
    ``band=False`` prints an estimate without its p5-p95. In csv and json a string in a column
    that is not ``text`` (e.g. ``infeasible``) is an absent value.
    """

    key: str
    header: str
    kind: str = "num"
    drop: int = 0
    shown: bool = True
    machine: bool = True
    band: bool = True


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt_tokens(n) -> str:
    """A token count: ``4k`` for multiples of 1024, else the integer (``131072`` -> ``128k``)."""
    n = int(n)
    return f"{n // 1024}k" if n and n % 1024 == 0 else str(n)


def fmt_rate(x) -> str:
    """A rate (tokens/s): ``47,070`` from 100 up, else 3 significant digits."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _fmt_num(x, digits: int) -> str:
    if isinstance(x, (bool, int)) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e6
                                      and digits >= 4):
        return f"{int(x):,d}" if abs(x) >= 10_000 else f"{int(x):d}"
    ax = abs(x)
    if ax != 0 and (ax >= 1e7 or ax < 1e-3):
        return f"{x:.{digits - 1}e}"
    return f"{x:,.0f}" if ax >= 10 ** digits else f"{x:.{digits}g}"


def fmt_value(x, kind: str = "num") -> str:
    """One value as the table prints it (strings unchanged, missing values as a dash)."""
    if isinstance(x, str):
        return x
    if _missing(x):
        return DASH
    if kind == "tokens":
        return fmt_tokens(x)
    if kind == "int":
        return f"{int(x):d}"
    if kind == "rate":
        return fmt_rate(float(x))
    if kind == "pct":
        return f"{float(x):+.1%}"
    if kind == "share":  # a share in [0, 1] to 3 decimals
        return f"{float(x):.3f}"
    if kind == "g":  # a datasheet figure as written (up to 6 significant digits)
        return f"{float(x):g}"
    if kind == "params":
        b = float(x) / 1e9
        return f"{b:,.0f}B" if abs(b) >= 100 else f"{b:.3g}B"
    return _fmt_num(float(x) if not isinstance(x, int) else x, 3 if kind == "ratio" else 4)


def _fmt_cell(x, col: Column) -> str:
    if not isinstance(x, Est):
        return fmt_value(x, col.kind)
    if _missing(x.mean):
        return DASH
    out = fmt_value(x.mean, col.kind)
    if not (_missing(x.lo) or _missing(x.hi)):
        out += f" [{fmt_value(x.lo, col.kind)}, {fmt_value(x.hi, col.kind)}]"
    if col.band and not (_missing(x.p5) or _missing(x.p95)):
        out += f" ({fmt_value(x.p5, col.kind)}-{fmt_value(x.p95, col.kind)})"
    return out


def _plain(x):
    """A value for csv/json: numbers unformatted, NumPy scalars as Python ones, NaN as None."""
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _flat(row: dict, columns) -> dict:
    """A row as machine keys: an estimate becomes key, key_ci_lower, key_ci_upper, p5, p95."""
    out = {}
    for col in columns:
        if not col.machine:
            continue
        x = row.get(col.key)
        if isinstance(x, str) and col.kind != "text":
            x = None
        if isinstance(x, Est):
            out[col.key] = _plain(x.mean)
            if x.lo is not None or x.hi is not None:
                out[f"{col.key}_ci_lower"] = _plain(x.lo)
                out[f"{col.key}_ci_upper"] = _plain(x.hi)
            if x.p5 is not None or x.p95 is not None:
                out[f"{col.key}_p5"] = _plain(x.p5)
                out[f"{col.key}_p95"] = _plain(x.p95)
        else:
            out[col.key] = _plain(x)
    return out


def _fit(columns, cells, wide: bool):
    """The columns (indices) to show and the headers of those hidden to fit WIDTH."""
    keep = [i for i, c in enumerate(columns) if c.shown]

    def width(idx):
        return sum(max(len(columns[i].header), *(len(r[i]) for r in cells)) if cells
                   else len(columns[i].header) for i in idx) + 2 * (len(idx) - 1)

    hidden = []
    if wide:
        return keep, hidden
    droppable = sorted((i for i in keep if columns[i].drop > 0),
                       key=lambda i: (columns[i].drop, i), reverse=True)
    while width(keep) > WIDTH and droppable:
        i = droppable.pop(0)
        keep.remove(i)
        hidden.append(columns[i].header)
    return keep, hidden


def render_table(columns, rows, wide: bool = False) -> tuple[str, list[str]]:
    """The aligned text table of ``rows`` (dicts keyed by column key) and the hidden headers."""
    cells = [[_fmt_cell(r.get(c.key), c) for c in columns] for r in rows]
    keep, hidden = _fit(columns, cells, wide)
    widths = {i: max(len(columns[i].header), *(len(r[i]) for r in cells)) if cells
              else len(columns[i].header) for i in keep}
    lines = ["  ".join(columns[i].header.rjust(widths[i]) for i in keep),
             "  ".join("-" * widths[i] for i in keep)]
    lines += ["  ".join(r[i].rjust(widths[i]) for i in keep) for r in cells]
    return "\n".join(lines), hidden


class Printer:
    """Prints a command's notes and tables in the ``--format`` chosen (see the module doc)."""

    def __init__(self, args=None, stream=None):
        self.format = getattr(args, "format", None) or "table"
        if self.format not in FORMATS:  # trace commands: --format validated there
            self.format = "table"
        self.quiet = bool(getattr(args, "quiet", False))
        self.wide = bool(getattr(args, "wide", False))
        self._stream = stream
        self.notes: list[str] = []
        self._rows: list[dict] = []
        self._keys: dict[str, None] = {}

    @property
    def stream(self):
        """Where the output goes (stdout unless given; looked up late for in-process capture)."""
        return sys.stdout if self._stream is None else self._stream

    @property
    def human(self) -> bool:
        """Whether a text table is printed now (not quiet, ``--format table``)."""
        return not self.quiet and self.format == "table"

    def line(self, text: str = "") -> None:
        """A note: printed now for tables (wrapped to WIDTH on a terminal), else collected."""
        if self.quiet:
            return
        if self.format != "table":
            self.notes.extend(t for t in str(text).splitlines() if t.strip())
            return
        wrap = not self.wide and bool(getattr(self.stream, "isatty", lambda: False)())
        for part in str(text).split("\n"):
            if not wrap or len(part) <= WIDTH:
                print(part, file=self.stream)
            else:
                indent = " " * (len(part) - len(part.lstrip()) + 2)
                print(textwrap.fill(part, WIDTH, subsequent_indent=indent,
                                    break_on_hyphens=False), file=self.stream)

    def table(self, columns, rows) -> None:
        """A table of ``rows`` (dicts keyed by :attr:`Column.key`)."""
        if self.quiet:
            return
        if self.format != "table":
            for r in rows:
                flat = _flat(r, columns)
                self._keys.update(dict.fromkeys(flat))
                self._rows.append(flat)
            return
        text, hidden = render_table(columns, rows, self.wide)
        print(text, file=self.stream)
        if hidden:
            names = ", ".join(dict.fromkeys(hidden))
            self.line(f"(hidden to fit {WIDTH} characters: {names}; --wide shows them, "
                      "--format csv or json gives every value)")

    def close(self) -> None:
        """Print the collected csv/json (nothing for tables, printed as they came)."""
        if self.quiet or self.format == "table":
            return
        if self.format == "json":  # every row has every key (absent values are null)
            rows = [{k: r.get(k) for k in self._keys} for r in self._rows]
            json.dump({"notes": self.notes, "rows": rows}, self.stream, indent=1,
                      allow_nan=False)
            print(file=self.stream)
            return
        buf = io.StringIO()
        for note in self.notes:
            buf.write(f"# {note}\n")
        w = csv.DictWriter(buf, fieldnames=list(self._keys), lineterminator="\n",
                           restval="")
        w.writeheader()
        for r in self._rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
        self.stream.write(buf.getvalue())

"""Benchmark tables of the shared quality folder, and model names as printed in them.

May import: the standard library, numpy, ``mcroute._base``.

A table (``<shared data>/quality/*.csv``, the 9 columns of :data:`TABLE_COLUMNS`) lists scores
of dense and MoE models on benchmarks as printed in a source report; it is read, never copied
(docs/quality.md). :func:`card_name` maps a printed model name to mcroute's card-name style;
:func:`family_key` and :func:`moe_prefix` group dense models into size ladders.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from mcroute._base.resources import shared_data_dir
from mcroute._base.validate import McrouteError

__all__ = ["TABLE_COLUMNS", "NOT_TABLES", "ScoreRow", "QualityTable", "quality_dir",
           "read_quality_table", "load_quality_tables", "card_name", "family_key", "moe_prefix",
           "list_moe_models"]

#: Columns every quality table must have (see the README of the shared quality folder).
TABLE_COLUMNS = ("model", "arch", "total_params_b", "active_params_b", "benchmark",
                 "shots_setting", "score", "source", "table_ref")

NOT_TABLES = {"scaling_law_constants.csv"}


@dataclass(frozen=True)
class ScoreRow:
    """One score of one model on one benchmark, as printed in a source table.

    Parameter counts are converted from the table's billions to parameters ``[1]``; NaN where
    the table leaves them blank.
    """

    line: int
    model: str
    arch: str
    total_params: float
    active_params: float
    benchmark: str
    setting: str
    score: float
    table_ref: str


@dataclass(frozen=True)
class QualityTable:
    """A parsed quality table: its name (file stem), path, rows and a SHA-256 of the bytes."""

    name: str
    path: Path
    rows: tuple[ScoreRow, ...]
    sha256: str = field(repr=False)


def quality_dir() -> Path:
    """Return the shared folder of quality tables, ``<shared data>/quality``.

    The shared data folder is found by :func:`mcroute._base.resources.shared_data_dir`
    (environment variable ``MCROUTE_SHARED_DATA``, else ``../shared/data``).
    """
    d = shared_data_dir() / "quality"
    if not d.is_dir():
        raise McrouteError(f"the shared data folder has no 'quality' subfolder: {d}")
    return d


def _param_b(path, line, col, text):
    t = text.strip()
    if not t:
        return math.nan
    try:
        v = float(t)
    except ValueError:
        raise McrouteError(f"{path}:{line}: field {col!r}: expected a number of billions or "
                           f"blank, got {text!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise McrouteError(f"{path}:{line}: field {col!r}: must be > 0, got {text!r}")
    return v * 1e9


def _score_row(path, line, rec, n_fields, col) -> ScoreRow:
    """One data row of a quality table, checked."""
    if len(rec) != n_fields:
        raise McrouteError(f"{path}:{line}: expected {n_fields} fields, got {len(rec)}")
    get = {c: rec[i] for c, i in col.items()}
    arch = get["arch"].strip().lower()
    if arch not in ("dense", "moe", "unknown"):
        raise McrouteError(f"{path}:{line}: field 'arch' must be dense, moe or unknown, "
                           f"got {get['arch']!r}")
    for name in ("model", "benchmark"):
        if not get[name].strip():
            raise McrouteError(f"{path}:{line}: field {name!r} is empty")
    try:
        score = float(get["score"])
    except ValueError:
        raise McrouteError(f"{path}:{line}: field 'score': expected a number, "
                           f"got {get['score']!r}") from None
    if not math.isfinite(score):
        raise McrouteError(f"{path}:{line}: field 'score' must be finite, got {get['score']!r}")
    return ScoreRow(
        line=line, model=get["model"].strip(), arch=arch,
        total_params=_param_b(path, line, "total_params_b", get["total_params_b"]),
        active_params=_param_b(path, line, "active_params_b", get["active_params_b"]),
        benchmark=get["benchmark"].strip(), setting=get["shots_setting"].strip(),
        score=score, table_ref=get["table_ref"].strip(),
    )


def read_quality_table(path) -> QualityTable:
    """Read one benchmark table in the shared 9-column format.

    Parameters
    ----------
    path : str or Path
        A ``.csv`` file with the columns of :data:`TABLE_COLUMNS` (extra columns are ignored).

    Returns
    -------
    QualityTable

    Raises
    ------
    McrouteError
        Naming the file, the line and the problem, for a missing column, a wrong number of
        fields, an unknown ``arch``, a non-numeric score or parameter count.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise McrouteError(f"cannot read quality table {str(path)!r}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise McrouteError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    reader = csv.reader(text.splitlines(keepends=True), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise McrouteError(f"{path}:1: empty file; expected a header row") from None
    except csv.Error as exc:
        raise McrouteError(f"{path}:1: malformed CSV header ({exc})") from None
    header = [h.strip() for h in header]
    missing = [c for c in TABLE_COLUMNS if c not in header]
    if missing:
        raise McrouteError(f"{path}:1: header lacks column(s) {', '.join(missing)}; "
                           f"expected {', '.join(TABLE_COLUMNS)}")
    col = {c: header.index(c) for c in TABLE_COLUMNS}
    rows = []
    while True:
        try:
            rec = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise McrouteError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
        if rec and any(f.strip() for f in rec):
            rows.append(_score_row(path, reader.line_num, rec, len(header), col))
    if not rows:
        raise McrouteError(f"{path}: no data rows")
    return QualityTable(path.stem, path, tuple(rows), hashlib.sha256(raw).hexdigest())


def load_quality_tables(tables=None) -> list[QualityTable]:
    """Load benchmark tables.

    Parameters
    ----------
    tables : None, str, Path, QualityTable or sequence of them
        ``None``: every table in :func:`quality_dir` (all ``*.csv`` except
        ``scaling_law_constants.csv``). A string without a path separator or suffix names a
        table in that folder by its stem (e.g. ``"qwen3_tech_report_base"``); otherwise a path
        to a file, or to a folder whose tables are all read.

    Returns
    -------
    list of QualityTable
    """
    if tables is None:
        return load_quality_tables([quality_dir()])
    if isinstance(tables, (str, Path, QualityTable)):
        tables = [tables]
    out = []
    for t in tables:
        if isinstance(t, QualityTable):
            out.append(t)
            continue
        if not isinstance(t, (str, Path)):
            raise McrouteError(f"tables entries must be names or paths, got {type(t).__name__}")
        p = Path(t)
        bare = isinstance(t, str) and "/" not in t and "\\" not in t and not p.suffix
        if bare and not p.exists():
            known = sorted(f.stem for f in quality_dir().glob("*.csv") if f.name not in NOT_TABLES)
            p = quality_dir() / f"{t}.csv"
            if not p.is_file():
                raise McrouteError(f"unknown quality table {t!r}; known: {', '.join(known)}")
        if p.is_dir():
            files = sorted(f for f in p.glob("*.csv") if f.name not in NOT_TABLES)
            if not files:
                raise McrouteError(f"no quality tables (*.csv) in {str(p)!r}")
            out.extend(read_quality_table(f) for f in files)
        else:
            out.append(read_quality_table(p))
    if not out:
        raise McrouteError("tables must name at least one table")
    return out


# Names printed in the tables that the generic rule below would not map to card names.
_CARD_ALIASES = {
    "llama-4-maverick-17bx128e": "llama-4-maverick",
    "llama-4-scout-17bx16e": "llama-4-scout",
    "qwen1.5-3b-14b": "qwen1.5-moe-a2.7b",  # OLMoE table's name for Qwen1.5-MoE-A2.7B
    "deepseekmoe-3b-16b": "deepseekmoe-16b",  # OLMoE table's name for DeepSeekMoE 16B
}

_SIZE_TOKEN = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)\s*[bBmM](?![\w])")
_T5 = re.compile(r"^t5-(small|base|large|xl|xxl)\b")


def card_name(printed: str) -> str:
    """Map a model name as printed in a table to mcroute's card-name style.

    Lowercase, parentheticals dropped, spaces to hyphens, a trailing ``-base`` (the base, not
    post-trained, checkpoint) dropped when the rest names a size or version (holds a digit), and
    a few explicit aliases. Examples: ``DeepSeek-V3-Base`` → ``deepseek-v3``,
    ``Qwen3-235B-A22B-Base`` → ``qwen3-235b-a22b``, ``Mixtral-8x7B`` → ``mixtral-8x7b``.

    Examples
    --------
    >>> card_name("Qwen3-235B-A22B-Base"), card_name("Switch-Base (cf 1.0)")
    ('qwen3-235b-a22b', 'switch-base')
    """
    s = re.sub(r"\([^)]*\)", " ", str(printed)).strip().lower()
    s = re.sub(r"\s+", "-", s).strip("-")
    if s.endswith("-base") and re.search(r"\d", s[:-5]):
        s = s[:-5]
    return _CARD_ALIASES.get(s, s)


def family_key(printed: str) -> tuple[str, str]:
    """(family key, family prefix) of a dense model name.

    The key is the name with its size token removed (parentheticals kept, so that e.g. a
    245B-token run is not mixed with a 2T-token run); the prefix is the text before the size
    token, used to match an MoE to the dense ladder of its own family.
    """
    low = printed.strip().lower()
    if _T5.match(low):
        return "t5" + low[_T5.match(low).end():], "t5"
    m = _SIZE_TOKEN.search(low)
    if not m:
        return low, low
    prefix = low[: m.start()].strip(" -_")
    key = re.sub(r"-+(?=\s|$)", "", re.sub(r"--+", "-", low[: m.start()] + low[m.end():]))
    key = re.sub(r"\s+", " ", key).strip(" -_")
    return key, prefix


def moe_prefix(printed: str) -> str:
    low = printed.strip().lower()
    m = _SIZE_TOKEN.search(low)
    return low[: m.start()].strip(" -_") if m else card_name(printed)


def list_moe_models(tables=None) -> list[str]:
    """Card-style names of the MoE models scored in the tables (sorted)."""
    return sorted({card_name(r.model) for t in load_quality_tables(tables)
                   for r in t.rows if r.arch == "moe"})

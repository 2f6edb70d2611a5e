"""The quality-equivalence factor q: as an uncertain input, and estimated from benchmark tables.

May import: numpy, scipy, xarray, the standard library, and the array layer (``_validate``,
``_rng``, ``_results``, ``_resources``). The model cards (``_cards``) are imported lazily and
only when present, to read active parameter counts and MoE layouts.

Definition (docs/quality.md): a dense model of ``N_dense = q · N_active`` parameters matches the
quality of a Mixture-of-Experts model with ``N_active`` parameters used per token.

Two parts:

* **q as an input.** :func:`as_q` turns a number, an array of samples, a frozen
  ``scipy.stats`` distribution, a :func:`parse_q` string or an :func:`estimate_q` result into a
  :class:`QSpec`, which draws reproducible samples and reports a median and a description for
  provenance. :func:`parse_q` reads the CLI forms ``4``, ``lognormal:4,0.3``, ``uniform:2,6``,
  ``loguniform:2,8``, ``samples:FILE`` and ``estimate[:MODEL]``.
* **q estimated.** :func:`estimate_q` fits ``score = a + b·log10(N)`` to a dense family scored
  in the same report, per benchmark, inverts the fit at the MoE's score to a dense-equivalent
  size, divides by the MoE's active parameters, and combines the benchmarks with a bootstrap.
  ``method="scaling_law"`` evaluates the effective parameter count of Clark et al. (2022)
  instead. The tables are read from the shared data folder (``<shared>/quality``), never copied.
  See ``docs/quality.md`` for the method and its assumptions.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import json
import math
import numbers
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import stats

from mcroute._base.rng import generator, resolve_seed
from mcroute._base.validate import (
    MAX_BOOT_DRAWS,
    McrouteError,
    check_bytes,
    check_int,
    check_prob,
    check_real,
    check_unique,
    short_repr,
)
from mcroute._labeled.results import provenance

__all__ = [
    "QSpec",
    "EstimateQ",
    "as_q",
    "parse_q",
    "QualityTable",
    "ScoreRow",
    "quality_dir",
    "read_quality_table",
    "load_quality_tables",
    "card_name",
    "list_moe_models",
    "fit_loglinear",
    "clark_effective_params",
    "estimate_q",
    "q_summary",
    "CLARK_SBASE",
    "DEFAULT_ESTIMATE_SEED",
    "TABLE_COLUMNS",
]

# --------------------------------------------------------------------------------------------
# q as an uncertain input
# --------------------------------------------------------------------------------------------


class QSpec:
    """A validated quality-equivalence factor q: a point value, samples, or a distribution.

    Build one with :func:`as_q`. All values are dimensionless ``[1]`` and strictly positive.

    Parameters
    ----------
    kind : {"point", "samples", "distribution"}
        What ``value`` holds.
    value : float, ndarray or frozen scipy.stats distribution
        The point value, the 1-D array of samples, or the frozen distribution.
    name : str
        Parameter name used in error messages.
    source : dict, optional
        Extra provenance merged into :meth:`describe` (e.g. the text that was parsed).
    """

    __slots__ = ("kind", "value", "name", "source")

    def __init__(self, kind, value, name="q", source=None):
        self.kind = kind
        self.value = value
        self.name = name
        self.source = dict(source or {})

    def __repr__(self) -> str:
        d = self.describe()
        inner = ", ".join(f"{k}={v!r}" for k, v in d.items() if k not in ("source",))
        return f"QSpec({inner})"

    @property
    def is_point(self) -> bool:
        """Whether q is a single number (no uncertainty)."""
        return self.kind == "point"

    def median(self) -> float:
        """Return the point value: q, the sample median or the distribution median ``[1]``."""
        if self.kind == "point":
            return float(self.value)
        if self.kind == "samples":
            return float(np.median(self.value))
        return float(self.value.median())

    def interval(self, prob: float = 0.95) -> tuple[float, float]:
        """Central interval holding ``prob`` of the q distribution ``[1]``."""
        prob = check_prob("prob", prob)
        lo, hi = (1 - prob) / 2, (1 + prob) / 2
        if self.kind == "point":
            return float(self.value), float(self.value)
        if self.kind == "samples":
            a, b = np.quantile(self.value, [lo, hi])
            return float(a), float(b)
        return float(self.value.ppf(lo)), float(self.value.ppf(hi))

    def sample(self, n, rng=None) -> np.ndarray:
        """Draw ``n`` values of q ``[1]``, reproducibly from ``rng``.

        Parameters
        ----------
        n : int
            Number of draws, >= 1.
        rng : None, int, SeedSequence or numpy.random.Generator
            Source of randomness. A point q ignores it; samples are resampled with replacement;
            a distribution is sampled with ``rvs(random_state=rng)``.

        Returns
        -------
        ndarray of float64, shape (n,)
        """
        n = check_int("n", n, minimum=1)
        check_bytes(f"{n} draws of q (float64)", n * 8, "n")
        if self.kind == "point":
            return np.full(n, float(self.value))
        try:
            gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        except (TypeError, ValueError) as exc:
            raise McrouteError(f"rng must be None, a seed >= 0, a SeedSequence or a Generator, "
                               f"got {short_repr(rng)} ({exc})") from None
        if self.kind == "samples":
            return np.asarray(self.value)[gen.integers(0, self.value.size, size=n)]
        x = np.asarray(self.value.rvs(size=n, random_state=gen), dtype=float).reshape(n)
        if not np.all(np.isfinite(x) & (x > 0)):
            raise McrouteError(f"{self.name}: the distribution drew values <= 0 or not finite")
        return x

    def describe(self) -> dict:
        """Return a JSON-friendly description for provenance attrs."""
        d: dict = {"kind": self.kind, "median": self.median()}
        if self.kind == "point":
            d["value"] = float(self.value)
        elif self.kind == "samples":
            lo, hi = self.interval(0.9)
            d.update(n_samples=int(self.value.size), q05=lo, q95=hi)
        else:
            dist = self.value
            d.update(
                distribution=getattr(dist.dist, "name", type(dist.dist).__name__),
                args=[float(a) for a in dist.args],
                kwds={k: float(v) for k, v in dist.kwds.items()},
            )
            lo, hi = self.interval(0.9)
            d.update(q05=lo, q95=hi)
        if self.source:
            d["source"] = dict(self.source)
        return d


#: Bootstrap seed used when q = "estimate" is resolved without a seed (as in data/q_estimates.csv).
DEFAULT_ESTIMATE_SEED = 0


@dataclass(frozen=True)
class EstimateQ:
    """A request to estimate q from the benchmark tables (``--q estimate[:MODEL]``).

    Parameters
    ----------
    model : str or None
        The MoE to estimate q for; ``None`` means "the model being analysed", supplied later to
        :meth:`resolve` (or to :func:`as_q` as ``model=``).
    """

    model: str | None = None

    def resolve(self, model=None, *, rng=None, **kwargs) -> QSpec:
        """Run :func:`estimate_q` and return its bootstrap samples as a :class:`QSpec`.

        ``rng=None`` means the fixed seed :data:`DEFAULT_ESTIMATE_SEED`, so that "estimate" is
        a deterministic input (the same draws as ``data/q_estimates.csv``); pass a seed to
        vary the bootstrap.
        """
        target = self.model or model
        if not target:
            raise McrouteError(
                "q='estimate' needs the MoE model name: use estimate:MODEL or pass model="
            )
        rng = DEFAULT_ESTIMATE_SEED if rng is None else rng
        ds = estimate_q(target, rng=rng, **kwargs)
        return _qspec_from_dataset(ds, "q")


def _reject(name, value, why):
    raise McrouteError(f"{name} must be {why}, got {short_repr(value)}")


def _check_dist(name, dist):
    """Check that a frozen scipy distribution has its support in q > 0.

    A lower bound of 0 is allowed for continuous distributions (no mass at 0); a discrete one
    needs support >= 1.
    """
    try:
        lo, hi = (float(v) for v in dist.support())
        p0 = float(dist.ppf(0.0))
        med = float(dist.median())
    except Exception as exc:  # noqa: BLE001 - any failure means the object is unusable
        raise McrouteError(f"{name}: cannot evaluate the distribution ({exc})") from None
    discrete = isinstance(dist.dist, stats.rv_discrete)
    low = min(lo, p0) if math.isfinite(p0) else lo
    if math.isnan(low) or math.isnan(med) or low < 0 or (discrete and low < 1) or hi <= 0:
        raise McrouteError(
            f"{name} must be a distribution of positive values; "
            f"{getattr(dist.dist, 'name', 'distribution')} has support [{lo:g}, {hi:g}]"
        )
    return dist


def _check_samples(name, arr):
    arr = np.asarray(arr)
    if arr.dtype.kind not in "fiu":
        _reject(name, arr if arr.size < 6 else f"array of dtype {arr.dtype}", "numeric")
    arr = arr.astype(float).ravel()
    if arr.size == 0:
        raise McrouteError(f"{name} must not be an empty array of samples")
    bad = ~np.isfinite(arr) | (arr <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise McrouteError(
            f"{name} samples must all be finite and > 0; sample {i} is {arr[i]!r}"
        )
    return arr


def _qspec_from_dataset(ds, name):
    if "q_samples" not in ds:
        raise McrouteError(
            f"{name}: the Dataset has no 'q_samples' variable (expected an estimate_q result)"
        )
    vals = np.asarray(ds["q_samples"].values, dtype=float)
    if vals.size == 0:
        raise McrouteError(
            f"{name}: the q estimate for {ds.attrs.get('moe', '?')!r} has no samples "
            "(no benchmark could be used; see its 'reason' variable)"
        )
    src = {k: ds.attrs[k] for k in ("moe", "method", "seed", "mcroute_version") if k in ds.attrs}
    if vals.size == 1 or np.all(vals == vals[0]):
        return QSpec("point", float(_check_samples(name, vals)[0]), name, source=src)
    return QSpec("samples", _check_samples(name, vals), name, source=src)


def as_q(q, name: str = "q", *, model=None, rng=None) -> QSpec:
    """Normalise a quality-equivalence factor q into a :class:`QSpec`.

    Parameters
    ----------
    q : float, array_like, frozen scipy.stats distribution, str, QSpec, EstimateQ, Dataset
        A positive number; a 1-D array of positive samples (resampled with replacement); a
        frozen distribution with support in q > 0; a :func:`parse_q` string; or the result of
        :func:`estimate_q` (its ``q_samples``).
    name : str
        Parameter name for error messages.
    model : str, optional
        MoE model name used to resolve ``"estimate"`` (without a model of its own).
    rng : None, int, SeedSequence or Generator
        Seed of the bootstrap when ``q`` asks for an estimate (default
        :data:`DEFAULT_ESTIMATE_SEED`, so that the estimate is deterministic).

    Returns
    -------
    QSpec

    Raises
    ------
    McrouteError
        For q <= 0, NaN or infinite values, empty arrays, non-numeric input, or a distribution
        whose support reaches below 0.

    Examples
    --------
    >>> import mcroute as mr
    >>> mr.as_q(4).sample(3)
    array([4., 4., 4.])
    >>> round(mr.as_q("lognormal:4,0.3").median(), 6)
    4.0
    >>> mr.as_q(-1)
    Traceback (most recent call last):
    ...
    mcroute._base.validate.McrouteError: q must be a finite number > 0, got -1
    """
    if isinstance(q, QSpec):
        return q
    if isinstance(q, EstimateQ):
        return q.resolve(model, rng=rng)
    if isinstance(q, str):
        return as_q(parse_q(q, name=name), name, model=model, rng=rng)
    if isinstance(q, xr.Dataset):
        return _qspec_from_dataset(q, name)
    if isinstance(q, xr.DataArray):
        q = q.values
    if hasattr(q, "rvs") and hasattr(q, "dist") and hasattr(q, "support"):
        return QSpec("distribution", _check_dist(name, q), name)
    if isinstance(q, (bool, np.bool_)):
        _reject(name, q, "a finite number > 0")
    if isinstance(q, numbers.Real):
        try:
            x = float(q)
        except OverflowError:  # an int beyond the float range
            x = math.inf
        if not math.isfinite(x) or x <= 0:
            _reject(name, q, "a finite number > 0")
        return QSpec("point", x, name)
    if isinstance(q, (np.ndarray, list, tuple)):
        arr = np.asarray(q, dtype=object if isinstance(q, (list, tuple)) else None)
        if arr.dtype == object:
            try:
                arr = np.asarray(q, dtype=float)
            except (TypeError, ValueError):
                _reject(name, q, "a number, an array of numbers or a distribution")
        if arr.ndim == 0:
            return as_q(arr.item(), name)
        if arr.ndim != 1:
            raise McrouteError(f"{name} samples must be a 1-D array, got shape {arr.shape}")
        return QSpec("samples", _check_samples(name, arr), name)
    _reject(name, type(q).__name__,
            "a number > 0, an array of samples, a frozen scipy.stats distribution or a string")
    raise AssertionError  # pragma: no cover


_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def _two_numbers(name, kind, arg):
    m = re.fullmatch(rf"\s*({_NUM})\s*,\s*({_NUM})\s*", arg)
    if not m:
        raise McrouteError(f"{name} {kind}: expected two numbers A,B after '{kind}:', got {arg!r}")
    return float(m.group(1)), float(m.group(2))


def parse_q(text, name: str = "q"):
    """Parse the text form of q used by the CLI.

    Parameters
    ----------
    text : str
        One of

        * ``"4"`` — a point value;
        * ``"lognormal:MEDIAN,SIGMA"`` — log-normal with that median and log-standard deviation
          (``scipy.stats.lognorm(SIGMA, scale=MEDIAN)``);
        * ``"uniform:LO,HI"`` — uniform on [LO, HI], 0 <= LO < HI;
        * ``"loguniform:LO,HI"`` — log-uniform on [LO, HI], 0 < LO < HI;
        * ``"samples:FILE"`` — samples from a ``.npy``, ``.txt``/``.csv`` (one number per line)
          or ``.nc`` file (its ``q_samples`` variable, as written by ``mcroute q-estimate``);
        * ``"estimate"`` or ``"estimate:MODEL"`` — estimate from the benchmark tables.
    name : str
        Parameter name for error messages (the CLI passes ``"--q"``).

    Returns
    -------
    QSpec or EstimateQ

    Examples
    --------
    >>> import mcroute as mr
    >>> mr.parse_q("4").median()
    4.0
    >>> mr.parse_q("uniform:2,6").interval(1 - 1e-12)
    (2.000000000002, 5.999999999998)
    >>> mr.parse_q("estimate:deepseek-v3")
    EstimateQ(model='deepseek-v3')
    """
    if not isinstance(text, str):
        _reject(name, text, "a string such as 4, lognormal:4,0.3 or estimate")
    s = text.strip()
    kind, sep, arg = s.partition(":")
    kind = kind.strip().lower()
    src = {"text": s}
    if not sep and re.fullmatch(_NUM, s):
        x = float(s)
        if not math.isfinite(x) or x <= 0:
            _reject(name, text, "a finite number > 0")
        return QSpec("point", x, name, source=src)
    if kind == "estimate":
        model = arg.strip() or None
        if sep and not model:
            raise McrouteError(f"{name}: 'estimate:' needs a model name, e.g. estimate:deepseek-v3")
        return EstimateQ(model)
    if kind == "lognormal" and sep:
        med, sigma = _two_numbers(name, kind, arg)
        if not (med > 0 and math.isfinite(med)):
            _reject(f"{name} lognormal median", med, "a finite number > 0")
        if not (sigma > 0 and math.isfinite(sigma)):
            _reject(f"{name} lognormal sigma", sigma, "a finite number > 0 (for a fixed q, give "
                    "the number alone)")
        return QSpec("distribution", stats.lognorm(sigma, scale=med), name, source=src)
    if kind in ("uniform", "loguniform") and sep:
        lo, hi = _two_numbers(name, kind, arg)
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise McrouteError(f"{name} {kind}:LO,HI needs finite LO < HI, got {arg!r}")
        if lo < 0 or (kind == "loguniform" and lo <= 0):
            raise McrouteError(
                f"{name} {kind}:LO,HI needs LO {'>' if kind == 'loguniform' else '>='} 0 "
                f"(q is positive), got LO={lo:g}"
            )
        dist = stats.uniform(lo, hi - lo) if kind == "uniform" else stats.loguniform(lo, hi)
        return QSpec("distribution", dist, name, source=src)
    if kind == "samples" and sep:
        return _load_samples(name, arg.strip(), src)
    raise McrouteError(
        f"{name} must be a number > 0, lognormal:MEDIAN,SIGMA, uniform:LO,HI, loguniform:LO,HI, "
        f"samples:FILE or estimate[:MODEL], got {text!r}"
    )


def _load_samples(name, path, src):
    p = Path(path).expanduser()
    if not p.is_file():
        raise McrouteError(f"{name} samples: no such file {str(p)!r}")
    ext = p.suffix.lower()
    try:
        if ext == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif ext in (".txt", ".csv"):
            arr = np.loadtxt(p, dtype=float, delimiter="," if ext == ".csv" else None, ndmin=1)
        elif ext == ".nc":
            with xr.open_dataset(p, engine="h5netcdf") as ds:
                return _qspec_from_dataset(ds.load(), name)
        else:
            raise McrouteError(f"{name} samples: {str(p)!r} must end in .npy, .txt, .csv or .nc")
    except (OSError, ValueError) as exc:
        if isinstance(exc, McrouteError):
            raise
        raise McrouteError(f"{name} samples: cannot read {str(p)!r}: {exc}") from None
    arr = np.asarray(arr)
    if arr.ndim != 1:
        raise McrouteError(f"{name} samples in {str(p)!r} must be 1-D, got shape {arr.shape}")
    return QSpec("samples", _check_samples(f"{name} ({p.name})", arr), name,
                 source={**src, "file": str(p)})


# --------------------------------------------------------------------------------------------
# Benchmark tables
# --------------------------------------------------------------------------------------------

#: Columns every quality table must have (see the README of the shared quality folder).
TABLE_COLUMNS = ("model", "arch", "total_params_b", "active_params_b", "benchmark",
                 "shots_setting", "score", "source", "table_ref")

_NOT_TABLES = {"scaling_law_constants.csv"}


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
    from mcroute._base.resources import shared_data_dir

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
        line = reader.line_num
        if not rec or all(not f.strip() for f in rec):
            continue
        if len(rec) != len(header):
            raise McrouteError(f"{path}:{line}: expected {len(header)} fields, got {len(rec)}")
        get = {c: rec[i] for c, i in col.items()}
        arch = get["arch"].strip().lower()
        if arch not in ("dense", "moe", "unknown"):
            raise McrouteError(f"{path}:{line}: field 'arch' must be dense, moe or unknown, "
                               f"got {get['arch']!r}")
        if not get["model"].strip():
            raise McrouteError(f"{path}:{line}: field 'model' is empty")
        if not get["benchmark"].strip():
            raise McrouteError(f"{path}:{line}: field 'benchmark' is empty")
        try:
            score = float(get["score"])
        except ValueError:
            raise McrouteError(f"{path}:{line}: field 'score': expected a number, "
                               f"got {get['score']!r}") from None
        if not math.isfinite(score):
            raise McrouteError(f"{path}:{line}: field 'score' must be finite, got {get['score']!r}")
        rows.append(ScoreRow(
            line=line, model=get["model"].strip(), arch=arch,
            total_params=_param_b(path, line, "total_params_b", get["total_params_b"]),
            active_params=_param_b(path, line, "active_params_b", get["active_params_b"]),
            benchmark=get["benchmark"].strip(), setting=get["shots_setting"].strip(),
            score=score, table_ref=get["table_ref"].strip(),
        ))
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
            known = sorted(f.stem for f in quality_dir().glob("*.csv") if f.name not in _NOT_TABLES)
            p = quality_dir() / f"{t}.csv"
            if not p.is_file():
                raise McrouteError(f"unknown quality table {t!r}; known: {', '.join(known)}")
        if p.is_dir():
            files = sorted(f for f in p.glob("*.csv") if f.name not in _NOT_TABLES)
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


def _family(printed: str) -> tuple[str, str]:
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


def _moe_prefix(printed: str) -> str:
    low = printed.strip().lower()
    m = _SIZE_TOKEN.search(low)
    return low[: m.start()].strip(" -_") if m else card_name(printed)


def list_moe_models(tables=None) -> list[str]:
    """Card-style names of the MoE models scored in the tables (sorted)."""
    return sorted({card_name(r.model) for t in load_quality_tables(tables)
                   for r in t.rows if r.arch == "moe"})


# --------------------------------------------------------------------------------------------
# Fits
# --------------------------------------------------------------------------------------------


def fit_loglinear(params, scores) -> dict:
    """Ordinary least squares ``score = a + b·log10(N)``.

    Parameters
    ----------
    params : array_like
        Parameter counts N ``[1]`` (> 0), at least 2 distinct.
    scores : array_like
        Scores, same length.

    Returns
    -------
    dict
        ``a`` (intercept, at N = 1 parameter), ``b`` (score per decade of N), ``b_se`` (its
        standard error, NaN with 2 points), ``r_squared``, ``resid_sd`` (sqrt of SSE/(n-2), NaN
        with 2 points), ``residuals`` and ``x`` (log10 N).

    Examples
    --------
    >>> f = fit_loglinear([1e9, 1e10, 1e11], [40.0, 50.0, 60.0])
    >>> round(f["b"], 12), round(f["a"], 9)
    (10.0, -50.0)
    """
    x = np.log10(np.asarray(params, dtype=float))
    y = np.asarray(scores, dtype=float)
    n = x.size
    if n < 2 or np.unique(x).size < 2:
        raise McrouteError("fit_loglinear needs at least 2 distinct sizes")
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    b = float(((x - xm) * (y - ym)).sum() / sxx)
    a = float(ym - b * xm)
    res = y - (a + b * x)
    sse = float((res**2).sum())
    syy = float(((y - ym) ** 2).sum())
    r2 = 1.0 - sse / syy if syy > 0 else math.nan
    sd = math.sqrt(sse / (n - 2)) if n > 2 else math.nan
    return {"a": a, "b": b, "b_se": sd / math.sqrt(sxx) if n > 2 else math.nan,
            "r_squared": r2, "resid_sd": sd, "residuals": res, "x": x}


def _direction(benchmark: str, setting: str) -> tuple[int, str]:
    """+1 (higher is better) or -1 (lower is better), or 0 with a reason to exclude."""
    text = f"{benchmark} {setting}".lower()
    if "time to" in text or "hours" in text:
        return 0, "not a quality score (time to reach a quality threshold)"
    if re.search(r"\baverage\b|composite", benchmark.lower()):
        return 0, "composite of other benchmarks (would count them twice)"
    if "higher is better" in text:
        return 1, ""
    if "lower is better" in text or re.search(r"\bbpb\b|\bloss\b|perplexity", text):
        if "neg" in text and "perplexity" in text:
            return 1, ""
        return -1, ""
    return 1, ""


# Clark et al. (2022), "Unified Scaling Laws for Routed Language Models", arXiv:2202.01169,
# S-BASE fit; constants as transcribed in <shared>/quality/scaling_law_constants.csv (two
# secondary sources agree; the README re-derives their EPC table: N=1B, E=64 -> 3.14B).
# They are read from that file at run time; this copy is only the fallback used when the file
# is absent, and a test checks that the two agree.
CLARK_SBASE = {"a": -0.082, "b": -0.108, "c": 0.009, "d": 1.104, "E_start": 1.847,
               "E_max": 314.478}


def clark_effective_params(n, e, constants=None) -> np.ndarray:
    """Effective (dense-equivalent) parameter count of a routed model, Clark et al. (2022).

    Parameters
    ----------
    n : array_like
        Parameters of the dense base model N ``[1]`` (for an MoE, its active parameters).
    e : array_like
        Number of experts E (>= 1). For top-k routing with experts of dense-FFN size mcroute
        passes the expansion factor ``n_experts / top_k``.
    constants : dict, optional
        ``a, b, c, E_start, E_max``; default :data:`CLARK_SBASE`.

    Returns
    -------
    ndarray
        ``N̄ = N^(α(Ê)/α(E_start)) · (Ê/E_start)^(b/α(E_start))`` ``[1]``, with
        ``α(E) = a + c·log10 E`` and ``1/Ê = 1/(E − 1 + (1/E_start − 1/E_max)^−1) + 1/E_max``.

    Examples
    --------
    >>> round(float(clark_effective_params(1e9, 64)) / 1e9, 2)
    3.14
    """
    k = dict(CLARK_SBASE if constants is None else constants)
    n = np.asarray(n, dtype=float)
    e = np.asarray(e, dtype=float)
    e_hat = 1.0 / (1.0 / (e - 1.0 + 1.0 / (1.0 / k["E_start"] - 1.0 / k["E_max"]))
                   + 1.0 / k["E_max"])

    def alpha(x):
        return k["a"] + k["c"] * np.log10(x)

    a0 = alpha(k["E_start"])
    return n ** (alpha(e_hat) / a0) * (e_hat / k["E_start"]) ** (k["b"] / a0)


# --------------------------------------------------------------------------------------------
# estimate_q
# --------------------------------------------------------------------------------------------

_FIT_META = {
    "intercept": ("score", "fitted score at N = 1 parameter (a in score = a + b·log10 N)"),
    "slope": ("score per decade", "fitted score gain per tenfold parameters (b)"),
    "slope_se": ("score per decade", "standard error of the slope"),
    "r_squared": ("1", "coefficient of determination of the dense fit"),
    "resid_sd": ("score", "residual standard deviation of the dense fit (n - 2 dof)"),
    "n_sizes": ("1", "distinct dense sizes in the fit"),
    "size_min": ("parameters", "smallest dense model in the fit"),
    "size_max": ("parameters", "largest dense model in the fit"),
    "moe_score": ("score", "the MoE's score as printed"),
    "n_active": ("parameters", "active parameters per token of the MoE"),
    "n_dense_equiv": ("parameters", "dense size whose fitted score equals the MoE's"),
    "q_fit": ("1", "q of this benchmark: n_dense_equiv / n_active"),
    "extrapolation": ("1", "how far n_dense_equiv lies outside [size_min, size_max] (1 = inside)"),
    "lower_is_better": ("1", "1 if a lower score is better (loss, BPB)"),
    "cross_family": ("1", "1 if the dense family is not the MoE's own family"),
    "used": ("1", "1 if the benchmark enters the combined q"),
}


def _card(name):
    """Return the model card of ``name`` if the cards module and the card exist, else None."""
    try:
        mod = importlib.import_module("mcroute._cards.cards")
    except ImportError:
        return None
    try:
        return mod.load_model(name)
    except Exception:  # noqa: BLE001 - unknown card or cards not written yet: no card
        return None


def _match(moe: str, row_model: str) -> bool:
    m = moe.strip().lower()
    return card_name(row_model) == card_name(m) or row_model.strip().lower() == m


def _candidates(moe, tabs, *, benchmarks, family, min_sizes, n_active, n_active_source):
    """Per (table, family, benchmark) fit candidates and table-level notes."""
    cands, notes = [], {}
    bench_filter = None if benchmarks is None else {b.strip().lower() for b in benchmarks}
    card = None
    for t in tabs:
        moe_rows = [r for r in t.rows if r.arch == "moe" and _match(moe, r.model)]
        moe_ids = {id(r) for r in moe_rows}
        if not moe_rows:
            continue
        groups: dict = {}
        for r in t.rows:
            groups.setdefault((r.benchmark, r.setting), []).append(r)
        settings_per_bench: dict = {}
        for b, s in groups:
            settings_per_bench.setdefault(b, set()).add(s)
        moe_prefix = _moe_prefix(moe_rows[0].model)
        n_fits_before = len(cands)
        for (bench, setting), rows in groups.items():
            mrows = [r for r in rows if id(r) in moe_ids]
            if not mrows:
                continue
            label = bench if len(settings_per_bench[bench]) == 1 else f"{bench} [{setting}]"
            if bench_filter is not None and bench.lower() not in bench_filter \
                    and label.lower() not in bench_filter:
                continue
            # active parameters of the MoE
            act = [r.active_params for r in mrows if np.isfinite(r.active_params)]
            src = "table"
            if n_active is not None:
                n_act, src = float(n_active), "argument"
            elif n_active_source == "card" or not act:
                if card is None:
                    card = _card(card_name(moe))
                n_act = float(card.active_params) if card is not None else math.nan
                src = "card" if card is not None else "none"
                if card is None and act and n_active_source == "card":
                    raise McrouteError(f"n_active_source='card': no model card for {moe!r}")
            else:
                n_act = float(np.mean(act))
            sign, why = _direction(bench, setting)
            moe_score = float(np.mean([r.score for r in mrows]))
            fams: dict = {}
            for r in rows:
                if r.arch != "dense" or not np.isfinite(r.active_params):
                    continue
                key, prefix = _family(r.model)
                fams.setdefault(key, (prefix, {}))[1].setdefault(r.model, []).append(r)
            own = [k for k, (p, _) in fams.items() if p == moe_prefix]
            if family == "auto":
                keys = own or list(fams)
            elif family == "all":
                keys = list(fams)
            else:
                f = family.strip().lower()
                keys = [k for k, (p, _) in fams.items() if f in (k, p)]
            for key in keys:
                prefix, models = fams[key]
                sizes = np.array([np.mean([r.active_params for r in rs]) for rs in models.values()])
                scores = np.array([np.mean([r.score for r in rs]) for rs in models.values()])
                if np.unique(sizes).size < 2:
                    continue
                reason = why
                if not np.isfinite(n_act):
                    reason = reason or "active parameters not stated in the table and no card"
                if not reason and np.unique(sizes).size < min_sizes:
                    reason = f"only {np.unique(sizes).size} dense sizes (< min_sizes={min_sizes})"
                cands.append(dict(
                    table=t.name, family=key, benchmark=label, setting=setting,
                    sign=sign, moe_score=moe_score, n_active=n_act, n_active_source=src,
                    sizes=sizes, scores=scores, models=list(models), reason=reason,
                    cross_family=int(prefix != moe_prefix), moe_rows=len(mrows),
                ))
        if len(cands) == n_fits_before:
            notes[t.name] = "no dense family with >= 2 sizes scored on the MoE's benchmarks"
    return cands, notes


def _invert(c, *, max_extrapolation, allow_extrapolation, min_slope_t):
    """Fit one candidate, invert at the MoE's score and decide whether it is used."""
    out = {k: math.nan for k in _FIT_META}
    out.update(n_sizes=int(np.unique(c["sizes"]).size), size_min=float(c["sizes"].min()),
               size_max=float(c["sizes"].max()), moe_score=c["moe_score"],
               n_active=c["n_active"], lower_is_better=int(c["sign"] < 0),
               cross_family=c["cross_family"], used=0)
    fit = fit_loglinear(c["sizes"], c["scores"])
    c["fit"] = fit
    out.update(intercept=fit["a"], slope=fit["b"], slope_se=fit["b_se"],
               r_squared=fit["r_squared"], resid_sd=fit["resid_sd"])
    reason = c["reason"]
    sb = c["sign"] * fit["b"] if c["sign"] else fit["b"]
    if not reason:
        if not sb > 0:
            reason = "slope has the wrong sign or is zero (score does not improve with size)"
        elif np.isfinite(fit["b_se"]) and fit["b_se"] > 0 and sb / fit["b_se"] < min_slope_t:
            reason = (f"flat fit: slope/se = {sb / fit['b_se']:.2f} < min_slope_t={min_slope_t:g} "
                      "(saturated or noisy)")
    if fit["b"] != 0 and np.isfinite(c["n_active"]):
        logn = (c["moe_score"] - fit["a"]) / fit["b"]
        n_eq = 10.0**logn
        out["n_dense_equiv"] = n_eq
        out["q_fit"] = n_eq / c["n_active"]
        out["extrapolation"] = max(1.0, n_eq / out["size_max"], out["size_min"] / n_eq)
        if not reason and sb > 0 and out["extrapolation"] > max_extrapolation:
            side = "above the largest" if n_eq > out["size_max"] else "below the smallest"
            msg = (f"extrapolates {out['extrapolation']:.3g}x {side} dense size "
                   f"(> max_extrapolation={max_extrapolation:g})")
            if allow_extrapolation:
                c["note"] = msg + "; included (allow_extrapolation=True)"
            else:
                reason = msg
    out["used"] = int(not reason)
    return out, reason


def _bootstrap(used, *, n_boot, entropy, resample, combine):
    """Bootstrap samples of the combined q from the used fits; returns (samples, n_dropped)."""
    j = len(used)
    logq = np.empty((j, n_boot))
    for i, c in enumerate(used):
        fit = c["fit"]
        lq_hat = math.log(c["q_fit"])
        n = fit["x"].size
        if resample == "benchmarks" or n <= 2:
            logq[i] = lq_hat
            continue
        # Residual bootstrap of the dense fit; the MoE's score gets a resampled residual too,
        # since it is measured with the same noise. Residuals are rescaled by sqrt(n/(n-2)) so
        # that their variance matches the unbiased residual variance.
        gen = generator(entropy, (1, i))
        res = fit["residuals"] * math.sqrt(n / (n - 2))
        draw = res[gen.integers(0, n, size=(n_boot, n + 1))]
        xd = np.column_stack([np.ones(n), fit["x"]])
        h = np.linalg.pinv(xd)  # (2, n): beta = h @ y
        delta = draw[:, :n] @ h.T
        a = fit["a"] + delta[:, 0]
        b = fit["b"] + delta[:, 1]
        ymoe = c["moe_score"] + draw[:, n]
        sign = c["sign"] or 1
        with np.errstate(divide="ignore", invalid="ignore"):
            logn = (ymoe - a) / b
            lq = logn * math.log(10.0) - math.log(c["n_active"])
        logq[i] = np.where(sign * b > 0, lq, np.nan)
    if resample == "fit":
        idx = np.broadcast_to(np.arange(j), (n_boot, j))
    else:
        idx = generator(entropy, (0,)).integers(0, j, size=(n_boot, j))
    picked = logq[idx, np.arange(n_boot)[:, None]]
    with np.errstate(invalid="ignore"), _quiet_nan():
        comb = np.nanmean(picked, axis=1) if combine == "mean" else np.nanmedian(picked, axis=1)
    ok = np.isfinite(comb)
    return np.exp(comb[ok]), int((~ok).sum()), float(np.isnan(picked).mean())


class _quiet_nan:
    """Silence numpy's 'Mean of empty slice' RuntimeWarning (all-NaN rows are handled)."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def _check_benchmark_names(benchmarks, tabs) -> None:
    """Refuse benchmark names that no table scores, listing the names the tables have."""
    known = set()
    for t in tabs:
        for r in t.rows:
            known.add(r.benchmark.lower())
            known.add(f"{r.benchmark} [{r.setting}]".lower())
    unknown = [b for b in benchmarks if b.strip().lower() not in known]
    if unknown:
        plain = sorted({r.benchmark for t in tabs for r in t.rows}, key=str.lower)
        raise McrouteError(f"benchmarks: unknown {', '.join(map(repr, unknown))}; the tables "
                           f"score: {'; '.join(plain)} (a setting can be added as "
                           "'NAME [SETTING]')")


def estimate_q(
    moe,
    tables=None,
    *,
    method="fit",
    benchmarks=None,
    family="auto",
    n_boot=2000,
    rng=None,
    ci_prob=0.95,
    max_extrapolation=2.0,
    allow_extrapolation=False,
    min_sizes=3,
    min_slope_t=2.0,
    resample="both",
    combine="mean",
    n_active=None,
    n_active_source="table",
    n_experts=None,
    top_k=None,
    quantiles=(0.1, 0.5, 0.9),
) -> xr.Dataset:
    """Estimate the quality-equivalence factor q of an MoE, with a bootstrap distribution.

    Parameters
    ----------
    moe : str
        The MoE, by card name (``"deepseek-v3"``, ``"qwen3-235b-a22b"``) or as printed in a
        table (case-insensitive).
    tables : None, str, Path or sequence
        Tables to read (see :func:`load_quality_tables`); default all shared quality tables.
    method : {"fit", "scaling_law"}
        ``"fit"``: invert per-benchmark dense fits (below). ``"scaling_law"``: the effective
        parameter count of Clark et al. (2022), S-BASE constants, with ``N = n_active`` and
        ``E = n_experts / top_k``; a point value without uncertainty.
    benchmarks : sequence of str, optional
        Only these benchmarks (names as printed, case-insensitive); a name no table scores is
        an error listing the names they have.
    family : str
        Dense family to fit against: ``"auto"`` (the MoE's own family in the same table if one
        is scored, e.g. the Qwen3 dense ladder for Qwen3 MoEs; else every family, flagged
        ``cross_family``), ``"all"``, or a family name/prefix (e.g. ``"qwen2.5"``).
    n_boot : int
        Bootstrap replicates, in [2, 2**28] (``MAX_BOOT_DRAWS``); a bootstrap whose arrays
        would exceed ``MAX_RESULT_BYTES`` is refused before it starts.
    rng : None, int, SeedSequence or Generator
        Seed; the entropy is stored in ``attrs["seed"]``.
    ci_prob : float
        Level of the percentile confidence interval of q.
    max_extrapolation : float
        Largest accepted factor by which the dense-equivalent size may lie above the largest
        (or below the smallest) dense model of the fit; >= 1.
    allow_extrapolation : bool
        Include benchmarks beyond ``max_extrapolation`` (they stay flagged).
    min_sizes : int
        Fewest distinct dense sizes for a fit (>= 2; with 2 the fit has no residuals and adds
        no fit uncertainty).
    min_slope_t : float
        Fits whose slope (oriented so that better is positive) is below ``min_slope_t``
        standard errors are excluded as flat or saturated.
    resample : {"both", "benchmarks", "fit"}
        What the bootstrap resamples: the benchmarks (with replacement), the residuals of each
        dense fit (and the MoE's score), or both (two-stage, the default).
    combine : {"mean", "median"}
        How benchmarks combine: mean of log q (a geometric mean) or median of log q.
    n_active : float, optional
        Active parameters of the MoE ``[1]``, overriding the tables.
    n_active_source : {"table", "card"}
        Where ``N_active`` comes from: the table (as printed, the same rounding convention as
        the dense sizes; the default) or the mcroute model card. A table that leaves it blank
        falls back to the card.
    n_experts, top_k : int, optional
        MoE layout for ``method="scaling_law"`` (default from the model card).
    quantiles : sequence of float
        Levels of ``q_fit_q``, the spread of single-benchmark q values.

    Returns
    -------
    xarray.Dataset
        Dim ``fit`` (coords ``table``, ``family``, ``benchmark``, ``setting``): the fit and
        inversion per benchmark (``intercept``, ``slope``, ``slope_se``, ``r_squared``,
        ``resid_sd``, ``n_sizes``, ``size_min``, ``size_max``, ``moe_score``, ``n_active``,
        ``n_dense_equiv``, ``q_fit``, ``extrapolation``, ``lower_is_better``,
        ``cross_family``, ``used``, ``reason`` (empty when used), ``n_active_source``). Dim
        ``point``: the dense models of each fit (``point_fit``, ``point_model``,
        ``point_size``, ``point_score``). Dim ``sample``: ``q_samples``, bootstrap draws of the
        combined q. Scalars ``q_point`` (combination of the point fits), ``q_median``,
        ``q_ci`` (dim ``ci_bound``, percentile interval at ``ci_prob``), ``n_benchmarks``,
        and ``q_fit_q`` (dim ``quantile``: spread of single-benchmark q, not an uncertainty).

    Notes
    -----
    Per benchmark: ``score = a + b·log10 N`` over the dense family (OLS), then
    ``N_dense_equiv = 10^((score_MoE − a)/b)`` and ``q_b = N_dense_equiv / N_active``.
    Combined: ``q = exp(mean_b log q_b)``. Lower-is-better scores (loss, BPB) are handled by
    the sign of the slope. See ``docs/quality.md`` for assumptions.

    Examples
    --------
    >>> import mcroute as mr
    >>> ds = mr.estimate_q("qwen3-30b-a3b", "qwen3_tech_report_base", n_boot=200, rng=0)
    >>> 2 < float(ds["q_median"]) < 10
    True
    """
    if not isinstance(moe, str) or not moe.strip():
        _reject("moe", moe, "a model name such as 'deepseek-v3'")
    if method not in ("fit", "scaling_law"):
        _reject("method", method, "'fit' or 'scaling_law'")
    n_boot = check_int("n_boot", n_boot, minimum=2, maximum=MAX_BOOT_DRAWS)
    ci_prob = check_prob("ci_prob", ci_prob)
    max_extrapolation = check_real("max_extrapolation", max_extrapolation, minimum=1.0)
    min_sizes = check_int("min_sizes", min_sizes, minimum=2)
    min_slope_t = check_real("min_slope_t", min_slope_t, minimum=0.0)
    if resample not in ("both", "benchmarks", "fit"):
        _reject("resample", resample, "'both', 'benchmarks' or 'fit'")
    if combine not in ("mean", "median"):
        _reject("combine", combine, "'mean' or 'median'")
    if n_active_source not in ("table", "card"):
        _reject("n_active_source", n_active_source, "'table' or 'card'")
    if n_active is not None:
        n_active = check_real("n_active", n_active, minimum=0.0, open_min=True)
    if isinstance(benchmarks, str):
        benchmarks = [benchmarks]
    if benchmarks is not None:
        if (not isinstance(benchmarks, (list, tuple)) or not benchmarks
                or not all(isinstance(b, str) and b.strip() for b in benchmarks)):
            _reject("benchmarks", benchmarks, "a non-empty list of benchmark names")
    if not isinstance(family, str) or not family.strip():
        _reject("family", family, "'auto', 'all' or a family name")
    for name, flag in (("allow_extrapolation", allow_extrapolation),):
        if not isinstance(flag, (bool, np.bool_)):
            _reject(name, flag, "True or False")
    try:
        qlev = np.asarray(quantiles, dtype=float)
    except (TypeError, ValueError, OverflowError):
        qlev = np.asarray([np.nan])
    if qlev.ndim != 1 or qlev.size == 0 or not np.all((qlev >= 0) & (qlev <= 1)):
        _reject("quantiles", quantiles, "a non-empty list of levels in [0, 1]")
    check_unique("quantiles", qlev.tolist())
    entropy = resolve_seed(rng)
    if method == "scaling_law":
        return _estimate_scaling_law(moe, n_active=n_active, n_experts=n_experts, top_k=top_k,
                                     entropy=entropy, ci_prob=ci_prob)

    tabs = load_quality_tables(tables)
    if not any(r.arch == "moe" and _match(moe, r.model) for t in tabs for r in t.rows):
        known = sorted({card_name(r.model) for t in tabs for r in t.rows if r.arch == "moe"})
        raise McrouteError(f"moe {moe!r} is not scored in the tables; known MoEs: "
                           f"{', '.join(known)}")
    if benchmarks is not None:
        _check_benchmark_names(benchmarks, tabs)
    cands, notes = _candidates(moe, tabs, benchmarks=benchmarks, family=family.strip().lower(),
                               min_sizes=min_sizes, n_active=n_active,
                               n_active_source=n_active_source)
    rows, reasons = [], []
    for c in cands:
        r, why = _invert(c, max_extrapolation=max_extrapolation,
                         allow_extrapolation=allow_extrapolation, min_slope_t=min_slope_t)
        c["q_fit"] = r["q_fit"]
        rows.append(r)
        reasons.append(why or c.get("note", ""))
    used = [c for c, r in zip(cands, rows, strict=True) if r["used"]]
    if used:
        n_max = max(c["fit"]["x"].size for c in used)
        check_bytes(f"the bootstrap ({n_boot} replicates x {len(used)} benchmark fits and "
                    f"{n_max + 1} residual draws, float64)",
                    n_boot * (3 * len(used) + n_max + 1) * 8, "n_boot")
        samples, n_dropped, frac_nan = _bootstrap(used, n_boot=n_boot, entropy=entropy,
                                                  resample=resample, combine=combine)
        lq = np.log([c["q_fit"] for c in used])
        q_point = float(np.exp(lq.mean() if combine == "mean" else np.median(lq)))
        spread = np.quantile(np.exp(lq), qlev)
    else:
        samples, n_dropped, frac_nan = np.empty(0), 0, 0.0
        q_point, spread = math.nan, np.full(qlev.size, math.nan)
    if samples.size:
        lo, med, hi = np.quantile(samples, [(1 - ci_prob) / 2, 0.5, (1 + ci_prob) / 2])
    else:
        lo = med = hi = math.nan

    nf = len(cands)
    data = {}
    for k, (units, desc) in _FIT_META.items():
        vals = np.array([r[k] for r in rows], dtype=float)
        if k in ("n_sizes", "lower_is_better", "cross_family", "used"):
            vals = vals.astype(np.int64)
        data[k] = ("fit", vals, {"units": units, "long_name": desc})
    data["reason"] = ("fit", np.array(reasons, dtype=object).astype(str),
                      {"units": "1", "long_name": "why the benchmark is excluded or flagged"})
    data["n_active_source"] = ("fit", np.array([c["n_active_source"] for c in cands],
                                               dtype=object).astype(str),
                               {"units": "1", "long_name": "where n_active comes from"})
    pf, pm, ps, psc = [], [], [], []
    for i, c in enumerate(cands):
        for m, s, sc in zip(c["models"], c["sizes"], c["scores"], strict=True):
            pf.append(i)
            pm.append(m)
            ps.append(s)
            psc.append(sc)
    data["point_size"] = ("point", np.array(ps, dtype=float),
                          {"units": "parameters", "long_name": "dense model size (as printed)"})
    data["point_score"] = ("point", np.array(psc, dtype=float),
                           {"units": "score", "long_name": "dense model score (as printed)"})
    data["q_samples"] = ("sample", samples, {"units": "1", "long_name":
                         "bootstrap draws of the combined q (uncertainty of the estimate)"})
    data["q_point"] = ((), q_point, {"units": "1", "long_name":
                       f"combined q of the point fits ({combine} of log q over benchmarks)"})
    data["q_median"] = ((), med, {"units": "1", "long_name": "median of the bootstrap q"})
    data["q_ci"] = (("ci_bound",), np.array([lo, hi]), {
        "units": "1", "long_name": f"{ci_prob:.0%} bootstrap percentile interval of q",
        "ci_kind": "bootstrap percentile", "ci_prob": ci_prob})
    data["n_benchmarks"] = ((), np.int64(len(used)), {"units": "1", "long_name":
                            "benchmarks (fits) entering the combined q"})
    data["q_fit_q"] = (("quantile",), spread, {"units": "1", "long_name":
                       "quantiles of single-benchmark q (spread, not uncertainty)"})

    def str_coord(key):
        return np.array([c[key] for c in cands], dtype=object).astype(str)

    coords = {
        "fit": ("fit", np.arange(nf, dtype=np.int64), {"units": "1", "long_name": "fit index"}),
        "table": ("fit", str_coord("table"), {"units": "1", "long_name": "source table"}),
        "family": ("fit", str_coord("family"), {"units": "1", "long_name": "dense family"}),
        "benchmark": ("fit", str_coord("benchmark"), {"units": "1", "long_name": "benchmark"}),
        "setting": ("fit", str_coord("setting"), {"units": "1", "long_name": "shots/setting"}),
        "point": ("point", np.arange(len(pf), dtype=np.int64), {"units": "1",
                  "long_name": "dense data point"}),
        "point_fit": ("point", np.array(pf, dtype=np.int64), {"units": "1",
                      "long_name": "fit the point belongs to"}),
        "point_model": ("point", np.array(pm, dtype=object).astype(str), {"units": "1",
                        "long_name": "dense model as printed"}),
        "sample": ("sample", np.arange(samples.size, dtype=np.int64), {"units": "1",
                   "long_name": "bootstrap replicate"}),
        "ci_bound": ("ci_bound", ["lower", "upper"], {"units": "1",
                     "long_name": "bound of a confidence interval"}),
        "quantile": ("quantile", qlev, {"units": "1", "long_name": "quantile level"}),
    }
    ds = xr.Dataset(data, coords=coords)
    used_tables = sorted({c["table"] for c in used})
    ds.attrs = provenance(
        seed=entropy, n_trials=n_boot, ci_prob=ci_prob, moe=moe, moe_card=card_name(moe),
        method="fit", resample=resample, combine=combine, family=family,
        max_extrapolation=max_extrapolation, allow_extrapolation=bool(allow_extrapolation),
        min_sizes=min_sizes, min_slope_t=min_slope_t, n_active_source=n_active_source,
        benchmarks=list(benchmarks) if benchmarks else "all",
        tables={t.name: t.sha256[:16] for t in tabs}, tables_used=used_tables,
        tables_path=sorted({str(t.path.parent) for t in tabs}),
        excluded_tables=notes, n_boot_dropped=n_dropped, boot_nan_fraction=frac_nan,
    )
    return ds


def _clark_constants():
    """S-BASE constants from the shared scaling_law_constants.csv, else :data:`CLARK_SBASE`."""
    try:
        path = quality_dir() / "scaling_law_constants.csv"
    except McrouteError:
        return dict(CLARK_SBASE), "built-in copy (shared data folder not found)"
    if not path.is_file():
        return dict(CLARK_SBASE), "built-in copy (scaling_law_constants.csv not found)"
    got = {}
    with open(path, encoding="utf-8", newline="") as fh:
        for i, row in enumerate(csv.DictReader(fh), start=2):
            if row.get("law_id") == "S-BASE" and row.get("parameter") in CLARK_SBASE:
                try:
                    got[row["parameter"]] = float(row["value"])
                except (TypeError, ValueError):
                    raise McrouteError(f"{path}:{i}: field 'value': expected a number, "
                                       f"got {row.get('value')!r}") from None
    missing = set(CLARK_SBASE) - set(got)
    if missing:
        raise McrouteError(f"{path}: S-BASE constants missing: {', '.join(sorted(missing))}")
    return got, f"{path} (S-BASE rows)"


def _estimate_scaling_law(moe, *, n_active, n_experts, top_k, entropy, ci_prob):
    card = None
    if n_active is None or n_experts is None or top_k is None:
        card = _card(card_name(moe))
        if card is None:
            raise McrouteError(
                f"method='scaling_law' needs n_active, n_experts and top_k for {moe!r} "
                "(no model card found)"
            )
    n_act = float(n_active if n_active is not None else card.active_params)
    e = check_int("n_experts", n_experts if n_experts is not None else card.n_experts, minimum=2)
    k = check_int("top_k", top_k if top_k is not None else card.top_k, minimum=1, maximum=e)
    expansion = e / k
    consts, where = _clark_constants()
    n_bar = float(clark_effective_params(n_act, expansion, consts))
    q = n_bar / n_act
    notes = []
    if expansion > consts["E_max"]:
        notes.append(f"E = n_experts/top_k = {expansion:g} is above E_max = {consts['E_max']:g}: "
                     "the law saturates there")
    if n_act > 937e9:
        notes.append("N is above the S-BASE cutoff N_cutoff = 937B where routing stops helping")
    if k > 1 or e > consts["E_max"]:
        notes.append("the law was fitted with experts of dense-FFN size and 130B training "
                     "tokens; E = n_experts/top_k is mcroute's mapping for other layouts "
                     "(Krajewski et al. 2024 argue the law undercounts fine-grained MoE)")
    data = {
        "q_samples": ("sample", np.array([q]), {"units": "1", "long_name":
                      "q of the scaling law (a point value; the law has no published errors)"}),
        "q_point": ((), q, {"units": "1", "long_name": "q = N_effective / N_active"}),
        "q_median": ((), q, {"units": "1", "long_name": "q (point value)"}),
        "q_ci": (("ci_bound",), np.array([math.nan, math.nan]), {
            "units": "1", "long_name": "no interval: the law's constants carry no uncertainties",
            "ci_kind": "none", "ci_prob": ci_prob}),
        "n_benchmarks": ((), np.int64(0), {"units": "1", "long_name": "benchmarks used (none)"}),
        "n_active": ((), n_act, {"units": "parameters", "long_name": "N (active parameters)"}),
        "expansion": ((), expansion, {"units": "1", "long_name": "E = n_experts / top_k"}),
        "n_dense_equiv": ((), n_bar, {"units": "parameters", "long_name":
                          "effective parameter count N̄ (Clark et al. 2022, S-BASE)"}),
    }
    coords = {
        "sample": ("sample", np.arange(1, dtype=np.int64), {"units": "1", "long_name": "draw"}),
        "ci_bound": ("ci_bound", ["lower", "upper"], {"units": "1",
                     "long_name": "bound of a confidence interval"}),
    }
    ds = xr.Dataset(data, coords=coords)
    ds.attrs = provenance(
        seed=entropy, n_trials=1, ci_prob=ci_prob, moe=moe, moe_card=card_name(moe),
        method="scaling_law", law="Clark et al. 2022 (arXiv:2202.01169), S-BASE",
        constants=consts, constants_source=where,
        layout_source="arguments" if card is None else "model card",
        mapping="N = active parameters; E = n_experts / top_k (expansion factor)",
        notes=notes,
    )
    return ds


def q_summary(ds) -> dict:
    """One summary row of an :func:`estimate_q` result (for tables and the CLI)."""
    lo, hi = (float(v) for v in ds["q_ci"].values)
    return {
        "model": ds.attrs.get("moe_card", ds.attrs.get("moe", "")),
        "method": ds.attrs.get("method", ""),
        "q_median": float(ds["q_median"]),
        "q_ci_lower": lo,
        "q_ci_upper": hi,
        "ci_prob": float(ds.attrs.get("ci_prob", math.nan)),
        "q_point": float(ds["q_point"]),
        "n_benchmarks": int(ds["n_benchmarks"]),
        "n_cross_family": int(ds["cross_family"].where(ds["used"] == 1, 0).sum())
        if "cross_family" in ds else 0,
        "tables_used": ";".join(json.loads(ds.attrs.get("tables_used", "[]") or "[]")),
        "families_used": ";".join(sorted(set(ds["family"].values[ds["used"].values == 1])))
        if "family" in ds.coords else "",
    }

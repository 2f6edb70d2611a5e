"""The quality-equivalence factor q as an uncertain input: the q format.

May import: numpy, scipy, xarray (reading only), the standard library, ``mcroute._base``, the
modules of ``mcroute._quality``.

Definition (docs/quality.md): a dense model of ``N_dense = q · N_active`` parameters matches the
quality of a Mixture-of-Experts model with ``N_active`` parameters used per token.

Two parts, the second in other modules:

* **q as an input** (this module). :func:`as_q` turns a number, an array of samples, a frozen
  ``scipy.stats`` distribution, a :func:`parse_q` string or an :func:`estimate_q` result into a
  :class:`QSpec`, which draws reproducible samples and reports a median and a description for
  provenance. :func:`parse_q` reads the CLI forms ``4``, ``lognormal:4,0.3``, ``uniform:2,6``,
  ``loguniform:2,8``, ``samples:FILE`` and ``estimate[:MODEL]``.
* **q estimated** (:mod:`mcroute._quality.tables`, :mod:`~mcroute._quality.fits`,
  :mod:`~mcroute._quality.estimate`; the Dataset of :func:`estimate_q` is built in
  :mod:`mcroute._labeled.q_estimate`). :func:`estimate_q` fits ``score = a + b·log10(N)`` to
  a dense family scored in the same report, per benchmark, inverts the fit at the MoE's score
  to a dense-equivalent size, divides by the MoE's active parameters, and combines the
  benchmarks with a bootstrap. ``method="scaling_law"`` evaluates the effective parameter
  count of Clark et al. (2022) instead. The tables are read from the shared data folder
  (``<shared>/quality``), never copied. See ``docs/quality.md`` for the method and its
  assumptions.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
from scipy import stats

from mcroute._base.validate import (
    McrouteError,
    check_bytes,
    check_int,
    check_prob,
    short_repr,
)
from mcroute._quality.estimate import DEFAULT_ESTIMATE_SEED, estimate_samples

if TYPE_CHECKING:
    from numpy.typing import ArrayLike
    from scipy.stats.distributions import rv_frozen

__all__ = [
    "QSpec",
    "EstimateQ",
    "as_q",
    "parse_q",
    "lognormal_q",
    "DEFAULT_ESTIMATE_SEED",
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

    def __init__(self, kind: str, value: float | np.ndarray | rv_frozen, name: str = "q",
                 source: dict | None = None) -> None:
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

    def sample(self, n: int,
               rng: int | np.random.SeedSequence | np.random.Generator | None = None
               ) -> np.ndarray:
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

    def resolve(self, model: str | None = None, *,
                rng: int | np.random.SeedSequence | np.random.Generator | None = None,
                **kwargs: Any) -> QSpec:
        """Run the estimate of :func:`estimate_q` and return its bootstrap draws as a QSpec.

        ``rng=None`` means the fixed seed :data:`DEFAULT_ESTIMATE_SEED`, so that "estimate" is
        a deterministic input (the same draws as ``data/q_estimates.csv``); pass a seed to
        vary the bootstrap. Only the draws are computed (no Dataset), once per value: a second
        resolution with the same model, seed, options and tables reuses them.
        """
        target = self.model or model
        if not target:
            raise McrouteError(
                "q='estimate' needs the MoE model name: use estimate:MODEL or pass model="
            )
        rng = DEFAULT_ESTIMATE_SEED if rng is None else rng
        vals, src = estimate_samples(target, rng=rng, **kwargs)
        return _qspec_from_samples(vals, "q", src)


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
    src = {k: ds.attrs[k] for k in ("moe", "method", "seed", "mcroute_version") if k in ds.attrs}
    return _qspec_from_samples(vals, name, src)


def _qspec_from_samples(vals, name, src):
    """QSpec of the draws of a q estimate (a point when they are all equal)."""
    if vals.size == 0:
        raise McrouteError(
            f"{name}: the q estimate for {src.get('moe', '?')!r} has no samples "
            "(no benchmark could be used; see its 'reason' variable)"
        )
    if vals.size == 1 or np.all(vals == vals[0]):
        return QSpec("point", float(_check_samples(name, vals)[0]), name, source=src)
    return QSpec("samples", _check_samples(name, vals), name, source=src)


def as_q(q: float | ArrayLike | rv_frozen | str | QSpec | EstimateQ | xr.Dataset,
         name: str = "q", *, model: str | None = None,
         rng: int | np.random.SeedSequence | np.random.Generator | None = None) -> QSpec:
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
        return _q_from_array(q, name)
    _reject(name, type(q).__name__,
            "a number > 0, an array of samples, a frozen scipy.stats distribution or a string")
    raise AssertionError  # pragma: no cover


def _q_from_array(q, name):
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


_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def _two_numbers(name, kind, arg):
    m = re.fullmatch(rf"\s*({_NUM})\s*,\s*({_NUM})\s*", arg)
    if not m:
        raise McrouteError(f"{name} {kind}: expected two numbers A,B after '{kind}:', got {arg!r}")
    return float(m.group(1)), float(m.group(2))


def parse_q(text: str, name: str = "q") -> QSpec | EstimateQ:
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
        return lognormal_q(med, sigma, name, source=src)
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


def lognormal_q(median, sigma, name: str = "q", *, source=None) -> QSpec:
    """Q log-normal with this median and log-standard deviation, without building a string.

    ``scipy.stats.lognorm(sigma, scale=median)``, the law of ``parse_q("lognormal:M,S")``
    (whose ``source`` is ``{"text": ...}``; pass the same to get the same description).

    Examples
    --------
    >>> lognormal_q(4, 0.3).median()
    4.0
    """
    if not (median > 0 and math.isfinite(median)):
        _reject(f"{name} lognormal median", median, "a finite number > 0")
    if not (sigma > 0 and math.isfinite(sigma)):
        _reject(f"{name} lognormal sigma", sigma, "a finite number > 0 (for a fixed q, give "
                "the number alone)")
    return QSpec("distribution", stats.lognorm(sigma, scale=median), name, source=source)


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

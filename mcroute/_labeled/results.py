"""Labeled results: Monte Carlo summaries and provenance (export: ``export.py``).

May import: numpy, scipy, xarray, and the array layer (``_validate``, ``_rng``, ``_version``).

Conventions (docs/schema.md): a per-trial variable ``x`` (dim ``trial``) gets

* ``x_mean`` — the Monte Carlo mean over trials;
* ``x_se`` — its standard error, ``std(ddof=1) / sqrt(n)``;
* ``x_ci`` — a confidence interval *of the mean* on dim ``ci_bound = ["lower", "upper"]``,
  Student-t with ``n - 1`` degrees of freedom at level ``ci_prob``; it shrinks like 1/sqrt(n);
* ``x_q`` — quantiles of *single draws* (single microbatches or steps) on dim ``quantile``;
  this band describes the spread of one step and does not shrink with more trials.

NaN trials (e.g. infeasible points) are skipped; a cell with no valid trial gives NaN.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr
from scipy import stats

from mcroute._base.validate import McrouteError, check_prob, check_unique
from mcroute._version import __version__

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

#: Default quantile levels of the single-draw band ``<name>_q``.
DEFAULT_QUANTILES = (0.05, 0.5, 0.95)

__all__ = ["DEFAULT_QUANTILES", "summarize", "provenance", "strict_json", "json_safe",
           "check_quantiles", "summary_variables", "summary_coords", "squeeze_variables",
           "build_dataset", "summary_arrays", "summary_variables_many"]


def summary_arrays(x: np.ndarray, ci_prob: float, quantiles: np.ndarray):
    """Summaries over the last axis of ``x``, NaN-aware and warning-free."""
    mean, se, ci, valid, n = _moments(x, ci_prob)
    return mean, se, ci, _quantile_band(x, valid, n, quantiles)


@functools.lru_cache(maxsize=256)
def _t_quantile(ci_prob: float, df: int) -> float:
    """Student-t quantile at ``0.5 + ci_prob / 2`` with ``df`` degrees of freedom."""
    return float(stats.t.ppf(0.5 + ci_prob / 2, df))


def _moments(x: np.ndarray, ci_prob: float):
    """Mean, standard error and Student-t interval of the mean over the last axis of ``x``."""
    valid = ~np.isnan(x)
    n = valid.sum(axis=-1)
    xs = np.where(valid, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = xs.sum(axis=-1) / n
        dev = np.where(valid, x - mean[..., None], 0.0)
        var = (dev**2).sum(axis=-1) / (n - 1)
        se = np.sqrt(var / n)
    mean = np.where(n > 0, mean, np.nan)
    se = np.where(n > 1, se, np.nan)
    df = np.maximum(n - 1, 1)
    tq = np.array([_t_quantile(ci_prob, int(d)) for d in df.reshape(-1)]).reshape(df.shape)
    tq = np.where(n > 1, tq, np.nan)
    half = tq * se
    # A constant sample has se = 0 and an interval of zero width, which is exact.
    ci = np.stack([mean - half, mean + half], axis=-1)
    return mean, se, ci, valid, n


def _quantile_band(x: np.ndarray, valid: np.ndarray, n: np.ndarray, quantiles: np.ndarray):
    """Quantiles of single draws over the last axis of ``x`` (NaN draws skipped)."""
    if valid.all():
        return np.moveaxis(np.quantile(x, quantiles, axis=-1), 0, -1)
    srt = np.sort(np.where(valid, x, np.inf), axis=-1)
    qs = np.full(x.shape[:-1] + (quantiles.size,), np.nan)
    flat_n = n.reshape(-1)
    flat_srt = srt.reshape(-1, x.shape[-1])
    flat_q = qs.reshape(-1, quantiles.size)
    for i, m in enumerate(flat_n):
        if m > 0:
            flat_q[i] = np.quantile(flat_srt[i, :m], quantiles)
    return flat_q.reshape(qs.shape)


def check_quantiles(quantiles) -> np.ndarray:
    """The quantile levels as a float array, or a McrouteError naming ``quantiles``."""
    try:
        q = np.asarray(quantiles, dtype=float)
    except (TypeError, ValueError, OverflowError):
        q = np.asarray([np.nan])
    if q.ndim != 1 or q.size == 0 or np.any(~np.isfinite(q)) or np.any((q < 0) | (q > 1)):
        shown = repr(quantiles)
        raise McrouteError("quantiles must be a non-empty list of levels in [0, 1], got "
                           f"{shown if len(shown) <= 80 else shown[:77] + '...'}")
    check_unique("quantiles", q.tolist())
    return q


def summary_variables(name: str, x: np.ndarray, dims: tuple, attrs: dict, ci_prob: float,
                      quantiles: np.ndarray) -> dict:
    """The four summaries of a per-trial array ``x`` (trial axis last) as ``xarray.Variable`` s.

    ``dims`` are the dims of ``x`` without the trial dim; ``attrs`` those of the per-trial
    variable (``units``, ``long_name``). Returns ``{name_mean, name_se, name_ci, name_q}``,
    the building blocks of :func:`summarize`, for functions that build their Dataset once.
    """
    mean, se, ci, qq = summary_arrays(np.asarray(x, dtype=float), ci_prob, quantiles)
    return _summary_from_arrays(name, mean, se, ci, qq, dims, attrs, ci_prob)


def _summary_from_arrays(name, mean, se, ci, qq, dims, attrs, ci_prob) -> dict:
    units = attrs.get("units", "1")
    desc = attrs.get("long_name", name)
    return {
        f"{name}_mean": xr.Variable(dims, mean, {
            "units": units, "long_name": f"Monte Carlo mean of {desc}"}),
        f"{name}_se": xr.Variable(dims, se, {
            "units": units, "long_name": f"standard error of the mean of {desc}"}),
        f"{name}_ci": xr.Variable((*dims, "ci_bound"), ci, {
            "units": units,
            "long_name": f"{ci_prob:.0%} confidence interval of the mean of {desc}",
            "ci_kind": "student-t", "ci_prob": ci_prob}),
        f"{name}_q": xr.Variable((*dims, "quantile"), qq, {
            "units": units,
            "long_name": f"quantiles of single draws of {desc} (spread, not uncertainty)"}),
    }


def summary_coords(quantiles: np.ndarray) -> dict:
    """The ``ci_bound`` and ``quantile`` coordinates of the summaries, with their attrs."""
    return {
        "ci_bound": xr.Variable("ci_bound", np.array(["lower", "upper"]), {
            "units": "1", "long_name": "bound of a confidence interval of a mean"}),
        "quantile": xr.Variable("quantile", np.asarray(quantiles, dtype=float), {
            "units": "1", "long_name": "quantile level over single draws"}),
    }


def squeeze_variables(variables: dict, dim: str, *, drop: bool) -> dict:
    """``variables`` (name -> ``xarray.Variable``) at index 0 of ``dim``, which they lose.

    The NumPy-level equivalent of ``Dataset.squeeze(dim, drop=drop)`` for a Dataset about to be
    built: the coordinate ``dim`` becomes a scalar coordinate, or goes with ``drop=True``.
    """
    out = {}
    for name, var in variables.items():
        if name == dim and drop:
            continue
        if dim in var.dims:
            axis = var.dims.index(dim)
            values = np.asarray(var.values)[(slice(None),) * axis + (0,)]
            var = xr.Variable(var.dims[:axis] + var.dims[axis + 1:], values, var.attrs)
        out[name] = var
    return out


def summary_variables_many(names, arrays, dims: tuple, attrs: dict, ci_prob: float,
                           quantiles: np.ndarray) -> dict:
    """:func:`summary_variables` of several per-trial arrays of one shape.

    The quantile bands of the arrays without NaN take one NumPy call for all of them (their
    values are those of separate calls: each row's order statistics); the moments are
    computed per array, exactly as :func:`summary_arrays` does. ``attrs`` maps each name to
    its attrs.
    """
    xs = [np.asarray(a, dtype=float) for a in arrays]
    moments = [_moments(x, ci_prob) for x in xs]
    full = [i for i, m in enumerate(moments) if m[3].all()]
    bands = {}
    if full:
        stacked = np.quantile(np.stack([xs[i] for i in full]), quantiles, axis=-1)
        for j, i in enumerate(full):
            bands[i] = np.moveaxis(stacked[:, j], 0, -1)
    out = {}
    for i, name in enumerate(names):
        mean, se, ci, valid, n = moments[i]
        qq = bands[i] if i in bands else _quantile_band(xs[i], valid, n, quantiles)
        out.update(_summary_from_arrays(name, mean, se, ci, qq, dims, attrs[name], ci_prob))
    return out


def build_dataset(data: dict, coords: dict, attrs: dict | None = None) -> xr.Dataset:
    """One ``xarray.Dataset`` from ``xarray.Variable`` s (data and coordinates), built once."""
    ds = xr.Dataset(data, coords=coords)
    if attrs is not None:
        ds.attrs = attrs
    return ds


def summarize(
    ds: xr.Dataset,
    names: Iterable[str],
    *,
    ci_prob: float = 0.95,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    dim: str = "trial",
) -> xr.Dataset:
    """Add ``_mean``, ``_se``, ``_ci`` and ``_q`` summaries of per-trial variables.

    Parameters
    ----------
    ds : xarray.Dataset
        Holds the per-trial variables, each with dim ``dim``.
    names : iterable of str
        Variables to summarise.
    ci_prob : float
        Level of the confidence interval of the mean, in (0, 1).
    quantiles : sequence of float
        Levels of the single-draw quantile band, each in [0, 1].
    dim : str
        The Monte Carlo dimension.

    Returns
    -------
    xarray.Dataset
        ``ds`` with the summary variables added (coords ``ci_bound`` and ``quantile``).
    """
    ci_prob = check_prob("ci_prob", ci_prob)
    q = check_quantiles(quantiles)
    # Summaries are computed in NumPy and added in one assignment: adding them one variable at
    # a time made xarray merge and align the whole Dataset four times per variable.
    added = {}
    for name in names:
        da = ds[name]
        dims = tuple(d for d in da.dims if d != dim)
        x = np.asarray(da.transpose(*dims, dim).values, dtype=float)
        added.update(summary_variables(name, x, dims, da.attrs, ci_prob, q))
    out = ds.assign_coords(ci_bound=["lower", "upper"], quantile=q).assign(added)
    out["ci_bound"].attrs.update(units="1", long_name="bound of a confidence interval of a mean")
    out["quantile"].attrs.update(units="1", long_name="quantile level over single draws")
    return out


def attr_value(v):
    """Make an attribute value netCDF/JSON friendly (no bools, no None, no dicts)."""
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if v is None:
        return ""
    if isinstance(v, (dict, list, tuple)):
        return strict_json(v, sort_keys=True)
    if isinstance(v, np.generic):
        return v.item()
    return v


def provenance(*, seed: int, n_trials: int, ci_prob: float, **specs) -> dict:
    """Dataset attrs: version, creation time (UTC, ISO 8601), trials, ci level, seed and specs.

    ``specs`` values that are dicts or lists are stored as JSON strings.
    """
    attrs = {
        "mcroute_version": __version__,
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "n_trials": int(n_trials),
        "ci_prob": float(ci_prob),
        "seed": int(seed),
    }
    for k, v in specs.items():
        attrs[k] = attr_value(v)
    return attrs


def json_safe(o):
    """Return ``o`` with every NaN or infinite float replaced by None (JSON ``null``).

    Recurses into dicts, lists and tuples and converts numpy scalars and arrays, so that the
    result can be written with ``allow_nan=False``: strict JSON, which JavaScript's
    ``JSON.parse`` and other strict parsers accept (bare ``NaN`` / ``Infinity`` are not JSON).
    """
    if isinstance(o, dict):
        return {k if isinstance(k, str) else str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, np.ndarray):
        return json_safe(o.tolist())
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not np.isfinite(o):
        return None
    return o


def strict_json(obj, **kwargs) -> str:
    """``json.dumps`` of ``obj`` as strict JSON: NaN and infinities written as ``null``."""
    return json.dumps(json_safe(obj), default=_json_default, allow_nan=False, **kwargs)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (_dt.datetime, _dt.date)):
        return o.isoformat()
    return str(o)

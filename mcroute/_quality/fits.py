"""Fits behind the q estimate: log-linear dense ladders and the routed scaling law.

May import: the standard library, numpy, ``mcroute._base``, the modules of ``mcroute._quality``.

* :func:`fit_loglinear`: ``score = a + b·log10(N)`` by ordinary least squares.
* :func:`direction`: whether a benchmark's score improves upwards or downwards (or is no
  quality score at all).
* :func:`clark_effective_params`, :func:`clark_constants`: the effective parameter count of
  Clark et al. (2022), S-BASE constants.
"""

from __future__ import annotations

import csv
import math
import re

import numpy as np

from mcroute._base.validate import McrouteError
from mcroute._quality.tables import quality_dir

__all__ = ["fit_loglinear", "direction", "CLARK_SBASE", "clark_effective_params",
           "clark_constants"]


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


def direction(benchmark: str, setting: str) -> tuple[int, str]:
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


def clark_constants():
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

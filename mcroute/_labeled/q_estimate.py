"""The q estimate as a Dataset: :func:`estimate_q` and its one-row summary :func:`q_summary`.

May import: numpy, xarray, ``mcroute._base``, the array floor (``mcroute._quality``), the
modules of ``mcroute._labeled``.

The estimate itself (tables, fits, bootstrap) is computed by :mod:`mcroute._quality.estimate`
as arrays; this module checks the options at the public edge and labels the result.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from mcroute._base.rng import resolve_seed
from mcroute._labeled.results import provenance
from mcroute._quality.estimate import (
    FIT_META,
    EstimateOptions,
    FitEstimate,
    ScalingLawEstimate,
    check_estimate_options,
    estimate_by_fit,
    estimate_by_scaling_law,
)
from mcroute._quality.tables import card_name

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    from mcroute._quality.tables import QualityTable

__all__ = ["estimate_q", "q_summary"]


def estimate_q(
    moe: str,
    tables: str | os.PathLike | QualityTable
    | Sequence[str | os.PathLike | QualityTable] | None = None,
    *,
    method: str = "fit",
    benchmarks: Sequence[str] | None = None,
    family: str = "auto",
    n_boot: int = 2000,
    rng: int | np.random.SeedSequence | np.random.Generator | None = None,
    ci_prob: float = 0.95,
    max_extrapolation: float = 2.0,
    allow_extrapolation: bool = False,
    min_sizes: int = 3,
    min_slope_t: float = 2.0,
    resample: str = "both",
    combine: str = "mean",
    n_active: float | None = None,
    n_active_source: str = "table",
    n_experts: int | None = None,
    top_k: int | None = None,
    quantiles: Sequence[float] = (0.1, 0.5, 0.9),
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
    opts = check_estimate_options(
        moe, method=method, benchmarks=benchmarks, family=family, n_boot=n_boot,
        ci_prob=ci_prob, max_extrapolation=max_extrapolation,
        allow_extrapolation=allow_extrapolation, min_sizes=min_sizes, min_slope_t=min_slope_t,
        resample=resample, combine=combine, n_active=n_active, n_active_source=n_active_source,
        n_experts=n_experts, top_k=top_k, quantiles=quantiles)
    entropy = resolve_seed(rng)
    if opts.method == "scaling_law":
        return _scaling_law_dataset(moe, estimate_by_scaling_law(moe, opts), entropy,
                                    opts.ci_prob)
    return _fit_dataset(moe, estimate_by_fit(moe, tables, opts, entropy), opts, entropy)


def _fit_dataset(moe, est: FitEstimate, opts: EstimateOptions, entropy: int) -> xr.Dataset:
    cands, rows, reasons, used = est.cands, est.rows, est.reasons, est.used
    samples, q_point, spread, qlev = est.samples, est.q_point, est.spread, opts.quantiles
    lo, med, hi = est.ci
    ci_prob, combine, n_boot = opts.ci_prob, opts.combine, opts.n_boot
    nf = len(cands)
    data = {}
    for k, (units, desc) in FIT_META.items():
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
        method="fit", resample=opts.resample, combine=combine, family=opts.family,
        max_extrapolation=opts.max_extrapolation,
        allow_extrapolation=bool(opts.allow_extrapolation), min_sizes=opts.min_sizes,
        min_slope_t=opts.min_slope_t, n_active_source=opts.n_active_source,
        benchmarks=list(opts.benchmarks) if opts.benchmarks else "all",
        tables={t.name: t.sha256[:16] for t in est.tabs}, tables_used=used_tables,
        tables_path=sorted({str(t.path.parent) for t in est.tabs}),
        excluded_tables=est.notes, n_boot_dropped=est.n_dropped,
        boot_nan_fraction=est.frac_nan,
    )
    return ds


def _scaling_law_dataset(moe, law: ScalingLawEstimate, entropy: int, ci_prob: float):
    data = {
        "q_samples": ("sample", np.array([law.q]), {"units": "1", "long_name":
                      "q of the scaling law (a point value; the law has no published errors)"}),
        "q_point": ((), law.q, {"units": "1", "long_name": "q = N_effective / N_active"}),
        "q_median": ((), law.q, {"units": "1", "long_name": "q (point value)"}),
        "q_ci": (("ci_bound",), np.array([math.nan, math.nan]), {
            "units": "1", "long_name": "no interval: the law's constants carry no uncertainties",
            "ci_kind": "none", "ci_prob": ci_prob}),
        "n_benchmarks": ((), np.int64(0), {"units": "1", "long_name": "benchmarks used (none)"}),
        "n_active": ((), law.n_active, {"units": "parameters",
                                        "long_name": "N (active parameters)"}),
        "expansion": ((), law.expansion, {"units": "1", "long_name": "E = n_experts / top_k"}),
        "n_dense_equiv": ((), law.n_dense_equiv, {"units": "parameters", "long_name":
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
        constants=law.constants, constants_source=law.constants_source,
        layout_source=law.layout_source,
        mapping="N = active parameters; E = n_experts / top_k (expansion factor)",
        notes=law.notes,
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

"""What a plot draws: the variable, its dims, the selected cells, as plain arrays (no matplotlib).

May import: numpy, xarray, ``mcroute._base``, ``mcroute._labeled``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from mcroute._base.validate import McrouteError
from mcroute._labeled.results import summarize

#: Suffixes of the summaries of a per-trial variable (``summarize``).
SUMMARY_SUFFIXES = ("_mean", "_se", "_ci", "_q")

#: Dims that index the structure of one run rather than a scenario; never a default x or hue.
STRUCTURAL_DIMS = ("trial", "layer", "expert", "device", "rank", "load", "ci_bound", "quantile",
                   "q_draw", "operator")

#: Variables :func:`plot_dataset` prefers when present (the headline quantity of each analysis).
PREFERRED_VARS = ("penalty", "throughput", "active_experts")

#: Dims preferred as the x axis, in this order (then any other numeric scenario dim).
PREFERRED_X = ("context", "batch_size")


@dataclass
class Panel:
    """Everything one call of ``plot_band`` draws, as arrays of shape (hue, x)."""

    base: str
    sub: xr.Dataset
    summarised: bool
    x: str
    xdim: str
    hdim: str | None
    xvals: np.ndarray
    hue_vals: list
    y: np.ndarray
    ci: tuple | None = None
    q: tuple | None = None
    qlevels: tuple | None = None
    fixed: dict = field(default_factory=dict)


def check_dataset(ds) -> None:
    """Raise unless ``ds`` is an ``xarray.Dataset``."""
    if not isinstance(ds, xr.Dataset):
        raise McrouteError(f"ds must be an xarray.Dataset, got {type(ds).__name__}")


def numeric(da: xr.DataArray) -> bool:
    """Whether ``da`` holds numbers or booleans."""
    return np.issubdtype(da.dtype, np.number) or np.issubdtype(da.dtype, np.bool_)


def plottable(ds: xr.Dataset) -> list[str]:
    """Names a user can plot: bases of summarised variables, then other numeric variables."""
    names = []
    for name in ds.data_vars:
        for suf in SUMMARY_SUFFIXES:
            if name.endswith(suf) and f"{name[: -len(suf)]}_mean" in ds:
                name = name[: -len(suf)]
                break
        if name not in names and (name in ds.data_vars and numeric(ds[name])
                                  or f"{name}_mean" in ds):
            names.append(name)
    return names


def resolve_var(ds: xr.Dataset, var) -> tuple[str, xr.Dataset]:
    """Return the base name and a dataset holding ``<base>_mean`` (+ ``_ci``, ``_q``) or ``base``.

    ``var`` may be a base name (``penalty``), a summary name (``penalty_mean``), or a plain
    variable. A per-trial variable without stored summaries is summarised here, at the dataset's
    ``ci_prob`` (0.95 if absent). Non-numeric variables whose dims the variable has (feasibility
    and its reasons) come along, to label infeasible points.
    """
    if not isinstance(var, str):
        raise McrouteError(f"var must be a variable name, got {var!r}")
    base = var
    for suf in SUMMARY_SUFFIXES:
        if var.endswith(suf) and f"{var[: -len(suf)]}_mean" in ds:
            base = var[: -len(suf)]
            break
    if f"{base}_mean" in ds:
        names = [f"{base}{s}" for s in ("_mean", "_ci", "_q") if f"{base}{s}" in ds]
        if base in ds:
            names.append(base)
        return base, ds[names + _status_vars(ds, ds[f"{base}_mean"].dims)]
    if base in ds.data_vars:
        if not numeric(ds[base]):
            raise McrouteError(f"var {base!r} is not numeric (dtype {ds[base].dtype})")
        dims = [d for d in ds[base].dims if d != "trial"]
        extra = ds[_status_vars(ds, dims)]
        if "trial" in ds[base].dims and ds.sizes["trial"] > 1:
            ci_prob = float(ds.attrs.get("ci_prob", 0.95))
            return base, summarize(ds[[base]], [base], ci_prob=ci_prob).merge(extra)
        return base, ds[[base]].merge(extra)
    raise McrouteError(
        f"var {var!r} is not in the dataset; plottable variables: {', '.join(plottable(ds))}"
    )


def _status_vars(ds: xr.Dataset, dims) -> list[str]:
    """Boolean ``*feasible`` and text ``*reason`` variables defined on a subset of ``dims``."""
    out = []
    for name, da in ds.data_vars.items():
        if not set(da.dims) <= set(dims):
            continue
        if (str(name).endswith("feasible") and da.dtype.kind == "b"
                or str(name).endswith("reason") and da.dtype.kind in "USO"):
            out.append(str(name))
    return out


def dim_of(ds: xr.Dataset, name: str, what: str) -> str:
    """Return the dim a name refers to (a dim itself, or a 1-D coordinate along one)."""
    if name in ds.dims:
        return name
    if name in ds.coords and ds[name].ndim == 1:
        return ds[name].dims[0]
    raise McrouteError(
        f"{what} {name!r} is not a dim of the dataset; dims: {', '.join(map(str, ds.dims))}"
    )


def apply_sel(ds: xr.Dataset, sel: dict) -> xr.Dataset:
    """``ds.sel(**sel)`` with an McrouteError naming the dim and the allowed values."""
    for dim, value in sel.items():
        if dim not in ds.dims and dim not in ds.coords:
            raise McrouteError(
                f"cannot select {dim}={value!r}: {dim!r} is not a dim of the dataset; "
                f"dims: {', '.join(map(str, ds.dims))}"
            )
        try:
            ds = ds.sel({dim: value})
        except (KeyError, ValueError, TypeError) as exc:
            values = ds[dim].values if dim in ds.coords else np.arange(ds.sizes.get(dim, 0))
            raise McrouteError(
                f"cannot select {dim}={value!r}: allowed values are {values_text(values)}"
            ) from exc
    return ds


def fmt_value(v) -> str:
    """A coordinate value as text: ``4k`` for multiples of 1024, ``1.5``, ``deepseek-v3``."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, float)):
        return tick_text(v)
    return str(v)


def tick_text(v: float) -> str:
    """``4k`` for positive multiples of 1024, ``300`` for other integers, ``0.5`` otherwise."""
    if float(v).is_integer():
        iv = int(v)
        if iv >= 1024 and iv % 1024 == 0:
            return f"{iv // 1024}k"
        return f"{iv:d}"
    return f"{v:g}"


def values_text(values, limit: int = 8) -> str:
    """Up to ``limit`` values as text, the middle elided."""
    vals = [fmt_value(v) for v in np.atleast_1d(values)]
    if len(vals) > limit:
        vals = vals[: limit - 1] + ["…", vals[-1]]
    return ", ".join(vals)


def _first(ds: xr.Dataset, dim: str) -> str:
    return fmt_value(ds[dim].values[0]) if dim in ds.coords else "0"


def _choices(ds: xr.Dataset, dim: str) -> str:
    vals = ds[dim].values if dim in ds.coords else np.arange(ds.sizes[dim])
    return f"{dim} ({ds.sizes[dim]} values: {values_text(vals, 5)})"


def _check_axes_dims(sub, main, base, x, hue):
    """Return (xdim, hdim) after checking that the variable varies along both."""
    if not isinstance(x, str):
        raise McrouteError(f"x must be a dim name, got {x!r}")
    xdim = dim_of(sub, x, "x")
    if xdim not in main.dims:
        raise McrouteError(f"x={x!r}: {base} does not vary along {xdim!r}; its dims: "
                           f"{', '.join(map(str, main.dims))}")
    if hue is None:
        return xdim, None
    if not isinstance(hue, str):
        raise McrouteError(f"hue must be a dim name, got {hue!r}")
    hdim = dim_of(sub, hue, "hue")
    if hdim not in main.dims:
        raise McrouteError(f"hue={hue!r}: {base} does not vary along {hdim!r}; its dims: "
                           f"{', '.join(map(str, main.dims))}")
    if hdim == xdim:
        raise McrouteError(f"hue and x must be different dims, both are {xdim!r}")
    return xdim, hdim


def _fixed_dims(sub, orig, sel, xdim, hdim) -> dict:
    """Dims held at one value.

    Selected by the user, squeezed scenario dims of size 1, and scalar scenario coordinates
    of the variable (e.g. a single batch size).
    """
    fixed = {}
    for name, c in sub.coords.items():
        if c.ndim != 0 or name in (xdim, hdim):
            continue
        if ((name in sel and name in orig.dims)
                or (name in orig.dims and name not in STRUCTURAL_DIMS)
                or (name in orig.coords and orig[name].ndim == 0
                    and name not in STRUCTURAL_DIMS)):
            fixed[str(name)] = c.item()
    return fixed


def _ends(da: xr.DataArray, dim: str, order, labels=None) -> tuple:
    """The two ends of ``da`` along ``dim`` (by label, else first and last), as (hue, x)."""
    if labels is None:
        ends = da.isel({dim: 0}), da.isel({dim: -1})
    else:
        ends = da.sel({dim: labels[0]}), da.sel({dim: labels[1]})
    return tuple(np.atleast_2d(e.transpose(*order).values.astype(float)) for e in ends)


def panel(ds, var, x, hue, sel, *, ci: bool, band: bool) -> Panel:
    """Select, check and pull out the arrays that ``plot_band`` draws."""
    base, _ = resolve_var(ds, var)
    orig = ds[f"{base}_mean"] if f"{base}_mean" in ds else ds[base]
    base, sub = resolve_var(apply_sel(ds, sel), base)
    summarised = f"{base}_mean" in sub
    main = sub[f"{base}_mean"] if summarised else sub[base]
    xdim, hdim = _check_axes_dims(sub, main, base, x, hue)
    rest = [d for d in main.dims if d not in (xdim, hdim)]
    open_dims = [d for d in rest if main.sizes[d] > 1]
    if open_dims:
        example = " ".join(f"{d}={_first(sub, d)}" for d in open_dims)
        raise McrouteError(
            f"{base} also varies along {', '.join(map(str, open_dims))}; select one value of "
            + "; ".join(_choices(sub, d) for d in open_dims)
            + f", e.g. {example.replace(' ', ', ')} (CLI: --sel {example}), or pass it as hue"
        )
    sub = sub.isel({d: 0 for d in rest if d in sub.dims})
    main = sub[f"{base}_mean"] if summarised else sub[base]
    order = [hdim, xdim] if hdim else [xdim]
    xvals = sub[xdim].values if xdim in sub.coords else np.arange(sub.sizes[xdim])
    if x in sub.coords and x != xdim:
        xvals = sub[x].values
    hue_vals = (list(sub[hdim].values) if hdim in sub.coords
                else list(range(sub.sizes[hdim]))) if hdim else [None]
    out = Panel(base=base, sub=sub, summarised=summarised, x=x, xdim=xdim, hdim=hdim,
                xvals=np.asarray(xvals), hue_vals=hue_vals,
                y=np.atleast_2d(main.transpose(*order).values.astype(float)),
                fixed=_fixed_dims(sub, orig, sel, xdim, hdim))
    civ = sub.get(f"{base}_ci")
    if ci and summarised and civ is not None and "ci_bound" in civ.dims:
        names = set(map(str, sub["ci_bound"].values)) if "ci_bound" in sub.coords else set()
        labels = ("lower", "upper") if {"lower", "upper"} <= names else None
        out.ci = _ends(civ, "ci_bound", order, labels)
    qvar = sub.get(f"{base}_q")
    if (band and summarised and qvar is not None and "quantile" in qvar.dims
            and "quantile" in sub.coords and sub.sizes["quantile"] >= 2
            and float(sub["quantile"].min()) < float(sub["quantile"].max())):
        levels = sub["quantile"].values.astype(float)
        out.qlevels = (float(levels.min()), float(levels.max()))
        out.q = _ends(qvar, "quantile", order, out.qlevels)
    return out


def status_at(p: Panel, i: int, j: int) -> tuple[list[str], list[str]]:
    """(names of the ``*feasible`` variables that are False, their reasons) at hue i, x j."""
    cell = {p.xdim: j}
    if p.hdim:
        cell[p.hdim] = i
    failed, reasons = [], []
    for name, da in p.sub.data_vars.items():
        name = str(name)
        if not name.endswith("feasible") or da.dtype.kind != "b":
            continue
        idx = {d: k for d, k in cell.items() if d in da.dims}
        if not bool(da.isel(idx).values.all()):
            failed.append(name)
            rname = name[: -len("feasible")] + "reason"
            if rname in p.sub:
                r = p.sub[rname].isel({d: k for d, k in cell.items() if d in p.sub[rname].dims})
                text = str(np.atleast_1d(r.values)[0])
                if text:
                    reasons.append(text)
    return failed, reasons


def default_axes(ds, var, x, hue, chosen) -> tuple[str, str, str | None]:
    """Pick (var, x, hue) as :func:`plot_dataset` documents."""
    names = plottable(ds)
    if var is None:
        summarised = [n for n in names if f"{n}_mean" in ds]
        preferred = [n for n in PREFERRED_VARS if n in names]
        candidates = preferred + summarised + names
        if not candidates:
            raise McrouteError("the dataset has no numeric variable to plot")
        var = candidates[0]
    base, sub = resolve_var(ds, var)
    main = sub[f"{base}_mean"] if f"{base}_mean" in sub else sub[base]
    free = [d for d in main.dims if d not in chosen and d != hue and main.sizes[d] > 1]
    scenario = [d for d in free if d not in STRUCTURAL_DIMS]
    if x is None:
        nums = [d for d in scenario if d in ds.coords and numeric(ds[d])]
        nums.sort(key=lambda d: PREFERRED_X.index(d) if d in PREFERRED_X else len(PREFERRED_X))
        pick = nums or scenario or free
        if not pick:
            raise McrouteError(
                f"{base} has no dim with more than one value to plot against; dims: "
                f"{', '.join(map(str, main.dims)) or 'none'}"
            )
        x = str(pick[0])
    if hue is None:
        xdim = dim_of(ds, x, "x")
        others = [d for d in scenario if d != xdim]
        if len(others) == 1 and 2 <= main.sizes[others[0]] <= 10:
            hue = str(others[0])
    return var, x, hue

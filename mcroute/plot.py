"""Plots of mcroute results: a variable against a scenario dim with its two kinds of band.

May import: everything (front-end layer). matplotlib is optional (the ``plot`` extra) and is
imported inside the functions only, so ``import mcroute.plot`` works without it; calling a plot
function without matplotlib raises :class:`~mcroute.McrouteError` saying how to install it.

Each plot keeps the two kinds of uncertainty apart (docs/schema.md):

* a **dark band**, ``<var>_ci``: the confidence interval of the Monte Carlo *mean* (it shrinks
  with more trials; it says how sure the estimate of the mean is);
* a **light band**, ``<var>_q``: the outermost quantile levels of *single steps* (it does not
  shrink with more trials; it says how much one decode step varies).

A caption line under the axes lists the assumptions recorded in the dataset attrs (routing,
model, hardware, deployment, trials, confidence level, seed) and the values of the dims held
fixed, so that a figure carries what it depends on.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import xarray as xr

from mcroute._base.atomic import atomic_path
from mcroute._base.validate import McrouteError
from mcroute._labeled.results import summarize

__all__ = ["caption_text", "plot_band", "plot_dataset", "save_figure"]

_INSTALL = "plotting needs matplotlib: install the plot extra: pip install 'mcroute[plot]'"

#: Suffixes of the summaries of a per-trial variable (``_results.summarize``).
_SUMMARY_SUFFIXES = ("_mean", "_se", "_ci", "_q")

#: Dims that index the structure of one run rather than a scenario; never a default x or hue.
_STRUCTURAL_DIMS = ("trial", "layer", "expert", "device", "rank", "load", "ci_bound", "quantile")

#: Variables :func:`plot_dataset` prefers when present (the headline quantity of each analysis).
_PREFERRED_VARS = ("penalty", "throughput", "active_experts")

#: Dataset attrs shown first in the caption, in this order; other simple attrs follow.
_CAPTION_FIRST = ("model", "hardware", "deployment", "routing")

#: Dataset attrs never shown in the caption (bookkeeping, or shown in a fixed place).
_CAPTION_SKIP = {"mcroute_version", "created_at", "n_trials", "ci_prob", "seed", "history",
                 "Conventions", "title", "description", "source"}

#: Short names of spec fields in the caption.
_ABBREV = {"n_experts": "E", "top_k": "k"}

#: Spec fields shown first in the caption (the choices a reader looks for first).
_SPEC_FIRST = ("n_gpus", "weight_dtype", "kv_dtype", "compute_dtype", "expert_parallel",
               "attention_parallel")

#: Spec fields left out of the caption: derived from other fields, or names shown elsewhere.
_SPEC_SKIP_PREFIXES = ("usable_", "weight_bytes")
_SPEC_SKIP = {"model", "hardware"}

#: Alpha of the dark (confidence interval of the mean) and light (single-step quantile) bands.
_ALPHA_CI = 0.4
_ALPHA_Q = 0.15

#: Caption font size [pt].
_CAPTION_SIZE = 7.0


# --------------------------------------------------------------------------------------------
# matplotlib, lazily


def _matplotlib():
    """Import matplotlib, choosing the non-interactive Agg backend when there is no display."""
    try:
        import matplotlib
    except ImportError:
        raise McrouteError(_INSTALL) from None
    if ("matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND")
            and not _has_display()):
        matplotlib.use("Agg")
    return matplotlib


def _has_display() -> bool:
    if sys.platform.startswith("linux") or "bsd" in sys.platform:
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def _pyplot():
    _matplotlib()
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------------------------
# what to draw


def _check_dataset(ds) -> None:
    if not isinstance(ds, xr.Dataset):
        raise McrouteError(f"ds must be an xarray.Dataset, got {type(ds).__name__}")


def _plottable(ds: xr.Dataset) -> list[str]:
    """Names a user can plot: bases of summarised variables, then other numeric variables."""
    names = []
    for name in ds.data_vars:
        for suf in _SUMMARY_SUFFIXES:
            if name.endswith(suf) and f"{name[: -len(suf)]}_mean" in ds:
                name = name[: -len(suf)]
                break
        if name not in names and (name in ds.data_vars and _numeric(ds[name])
                                  or f"{name}_mean" in ds):
            names.append(name)
    return names


def _numeric(da: xr.DataArray) -> bool:
    return np.issubdtype(da.dtype, np.number) or np.issubdtype(da.dtype, np.bool_)


def _resolve_var(ds: xr.Dataset, var) -> tuple[str, xr.Dataset]:
    """Return the base name and a dataset holding ``<base>_mean`` (+ ``_ci``, ``_q``) or ``base``.

    ``var`` may be a base name (``penalty``), a summary name (``penalty_mean``), or a plain
    variable. A per-trial variable without stored summaries is summarised here, at the dataset's
    ``ci_prob`` (0.95 if absent).
    """
    if not isinstance(var, str):
        raise McrouteError(f"var must be a variable name, got {var!r}")
    base = var
    for suf in _SUMMARY_SUFFIXES:
        if var.endswith(suf) and f"{var[: -len(suf)]}_mean" in ds:
            base = var[: -len(suf)]
            break
    if f"{base}_mean" in ds:
        names = [f"{base}{s}" for s in ("_mean", "_ci", "_q") if f"{base}{s}" in ds]
        if base in ds:
            names.append(base)
        return base, ds[names]
    if base in ds.data_vars:
        if not _numeric(ds[base]):
            raise McrouteError(f"var {base!r} is not numeric (dtype {ds[base].dtype})")
        if "trial" in ds[base].dims and ds.sizes["trial"] > 1:
            ci_prob = float(ds.attrs.get("ci_prob", 0.95))
            return base, summarize(ds[[base]], [base], ci_prob=ci_prob)
        return base, ds[[base]]
    raise McrouteError(
        f"var {var!r} is not in the dataset; plottable variables: {', '.join(_plottable(ds))}"
    )


def _dim_of(ds: xr.Dataset, name: str, what: str) -> str:
    """Return the dim a name refers to (a dim itself, or a 1-D coordinate along one)."""
    if name in ds.dims:
        return name
    if name in ds.coords and ds[name].ndim == 1:
        return ds[name].dims[0]
    raise McrouteError(
        f"{what} {name!r} is not a dim of the dataset; dims: {', '.join(map(str, ds.dims))}"
    )


def _apply_sel(ds: xr.Dataset, sel: dict) -> xr.Dataset:
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
                f"cannot select {dim}={value!r}: allowed values are {_values_text(values)}"
            ) from exc
    return ds


def _values_text(values, limit: int = 8) -> str:
    vals = [_fmt_value(v) for v in np.atleast_1d(values)]
    if len(vals) > limit:
        vals = vals[: limit - 1] + ["…", vals[-1]]
    return ", ".join(vals)


def _fmt_value(v) -> str:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _first(ds: xr.Dataset, dim: str) -> str:
    return _fmt_value(ds[dim].values[0]) if dim in ds.coords else "0"


def _choices(ds: xr.Dataset, dim: str) -> str:
    vals = ds[dim].values if dim in ds.coords else np.arange(ds.sizes[dim])
    return f"{dim} ({ds.sizes[dim]} values: {_values_text(vals, 5)})"


# --------------------------------------------------------------------------------------------
# labels


def _label(da: xr.DataArray, name: str, width: int | None = None) -> str:
    """``long_name [units]`` (units "1" is dimensionless and left out)."""
    text = str(da.attrs.get("long_name", name))
    units = str(da.attrs.get("units", "")).strip()
    if units and units != "1":
        text = f"{text} [{units}]"
    return textwrap.fill(text, width) if width else text


def _y_label(ds: xr.Dataset, base: str) -> str:
    if base in ds:
        return _label(ds[base], base, 55)
    mean = ds[f"{base}_mean"]
    long = str(mean.attrs.get("long_name", base)).removeprefix("Monte Carlo mean of ")
    return _label(mean.copy().assign_attrs(long_name=long), base, 55)


def _pct(level: float) -> str:
    return f"{100 * float(level):.3g}"


def _spec_text(value) -> str:
    """Shorten a spec attr (often a JSON string): ``zipf(alpha=1.2, E=64, k=4)``."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    if isinstance(value, dict):
        if "name" in value and isinstance(value["name"], str):
            return value["name"]
        kind = value.get("kind")
        fields = []
        keys = [k for k in _SPEC_FIRST if k in value] + [k for k in value if k not in _SPEC_FIRST]
        for k in keys:
            v = value[k]
            if (k == "kind" or v is None or k.startswith(_SPEC_SKIP_PREFIXES)
                    or (k in _SPEC_SKIP and isinstance(v, str))):
                continue
            if isinstance(v, (list, tuple)):
                v = f"[{len(v)} values]"
            elif isinstance(v, dict):
                v = _spec_text(v)
            elif isinstance(v, float):
                v = f"{v:g}"
            fields.append(f"{_ABBREV.get(k, k)}={v}")
        inner = ", ".join(fields)
        return f"{kind}({inner})" if kind else inner
    if isinstance(value, (list, tuple)):
        return f"[{len(value)} values]" if len(value) > 4 else ", ".join(map(_fmt_value, value))
    return _fmt_value(value)


def _shorten(text: str, limit: int = 140) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def caption_text(ds: xr.Dataset, fixed: dict | None = None, exclude=()) -> str:
    """Build the caption line: specs from ``ds.attrs``, fixed dims, trials, CI level and seed.

    Parameters
    ----------
    ds : xarray.Dataset
        Results with provenance attrs (docs/schema.md); absent attrs are left out.
    fixed : dict, optional
        Dims held at one value in the plot, shown as ``dim=value``; an attr of the same name
        is left out.
    exclude : iterable of str
        Attrs to leave out (e.g. the dims drawn as x and hue).

    Returns
    -------
    str
        One line of ``; ``-separated items (wrapped by the caller).

    Examples
    --------
    >>> import xarray as xr
    >>> ds = xr.Dataset(attrs={"routing": '{"kind": "zipf", "alpha": 1.2, "n_experts": 64, '
    ...                        '"top_k": 4}', "n_trials": 50, "ci_prob": 0.95, "seed": 7})
    >>> caption_text(ds, {"layer": 0})
    'routing: zipf(alpha=1.2, E=64, k=4); layer=0; 50 trials; 95% CI; seed 7'
    """
    attrs = dict(ds.attrs)
    parts = []
    fixed = dict(fixed or {})
    drop = set(_CAPTION_SKIP) | set(fixed) | set(exclude)
    keys = [k for k in _CAPTION_FIRST if k in attrs and k not in drop]
    keys += [k for k in attrs if k not in _CAPTION_FIRST and k not in drop]
    for k in keys:
        v = attrs[k]
        if isinstance(v, str) and not v.strip():
            continue
        if isinstance(v, np.ndarray) and v.size > 4:
            continue
        parts.append(_shorten(f"{k}: {_spec_text(v)}" if k in _CAPTION_FIRST
                              else f"{k}={_spec_text(v)}"))
    for dim, value in fixed.items():
        parts.append(f"{dim}={_fmt_value(value)}")
    if "n_trials" in attrs:
        parts.append(f"{_fmt_value(attrs['n_trials'])} trials")
    if "ci_prob" in attrs:
        parts.append(f"{_pct(attrs['ci_prob'])}% CI")
    if "seed" in attrs:
        parts.append(f"seed {_fmt_value(attrs['seed'])}")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# axes scaling


def _check_log(name: str, value) -> str | bool:
    if isinstance(value, str) and value == "auto":
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise McrouteError(f"{name} must be 'auto', True or False, got {value!r}")


def _spans_decades(values, decades: float = 2.0) -> bool:
    """Whether finite ``values`` are all positive and max/min >= 10**decades."""
    v = np.asarray(values)
    if not np.issubdtype(v.dtype, np.number):
        return False
    v = v[np.isfinite(v)]
    if v.size < 2 or np.any(v <= 0):
        return False
    return bool(np.log10(v.max() / v.min()) >= decades - 1e-12)


def _decide_log(name: str, mode, values) -> bool:
    if mode == "auto":
        return _spans_decades(values)
    if mode:
        v = np.asarray(values, dtype=float)
        v = v[np.isfinite(v)]
        if v.size == 0 or np.any(v <= 0):
            raise McrouteError(f"{name}=True needs positive values; the data include values <= 0")
    return bool(mode)


def _tick_text(v: float) -> str:
    if float(v).is_integer():
        iv = int(v)
        if iv >= 1024 and iv % 1024 == 0:
            return f"{iv // 1024}k"
        return f"{iv:d}"
    return f"{v:g}"


# --------------------------------------------------------------------------------------------
# public functions


def plot_band(ds, var, x, *, hue=None, ax=None, ci=True, band=True, logx="auto", logy="auto",
              caption=True, **sel):
    """Draw ``<var>_mean`` against ``x`` with its confidence and single-step bands.

    Parameters
    ----------
    ds : xarray.Dataset
        Results following the mcroute conventions (docs/schema.md).
    var : str
        Variable name. With summaries (``<var>_mean``, ``<var>_ci``, ``<var>_q``) the mean is
        the line; a per-trial variable without summaries is summarised here; any other numeric
        variable is drawn as a plain line. ``penalty_mean`` is read as ``penalty``.
    x : str
        Dim (or 1-D coordinate) along the horizontal axis.
    hue : str, optional
        Dim drawn as one line (and band pair) per value, with a legend.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; a new figure (7 × 4.5 in) is made if None.
    ci : bool
        Draw the confidence interval of the mean (``<var>_ci``), the dark band.
    band : bool
        Draw the single-step quantile band (outermost levels of ``<var>_q``), the light band.
    logx, logy : {"auto", True, False}
        Log scale; "auto" uses one when the values are positive and span >= 2 decades.
    caption : bool
        Write the assumptions (dataset attrs and fixed dims) in a line under the axes.
    **sel
        Values of the other dims, e.g. ``hardware="h100"`` (``ds.sel`` semantics). Dims of the
        variable that are neither ``x`` nor ``hue`` must be selected here or have size 1.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn into. The bands are ``PolyCollection`` s with gid ``"ci"`` or ``"band"``
        (``"ci:<hue value>"`` with a hue).

    Raises
    ------
    McrouteError
        Unknown variable or dim, dims left to select, or matplotlib missing.

    Examples
    --------
    >>> import mcroute as mr
    >>> from mcroute.plot import plot_band
    >>> ds = mr.simulate(mr.Zipf(64, 4, 1.2), [1, 4, 16, 64, 256], n_trials=50, rng=1)
    >>> ax = plot_band(ds, "active_experts", "batch_size")
    >>> ax.get_xscale(), ax.get_xlabel()
    ('log', 'tokens per decode microbatch (B) [tokens]')
    """
    _check_dataset(ds)
    logx = _check_log("logx", logx)
    logy = _check_log("logy", logy)
    for name, flag in (("ci", ci), ("band", band), ("caption", caption)):
        if not isinstance(flag, (bool, np.bool_)):
            raise McrouteError(f"{name} must be True or False, got {flag!r}")
    if not isinstance(x, str):
        raise McrouteError(f"x must be a dim name, got {x!r}")
    base, _ = _resolve_var(ds, var)
    orig = ds[f"{base}_mean"] if f"{base}_mean" in ds else ds[base]
    base, sub = _resolve_var(_apply_sel(ds, sel), base)
    summarised = f"{base}_mean" in sub
    main = sub[f"{base}_mean"] if summarised else sub[base]

    xdim = _dim_of(sub, x, "x")
    if xdim not in main.dims:
        raise McrouteError(
            f"x={x!r}: {base} does not vary along {xdim!r}; its dims: "
            f"{', '.join(map(str, main.dims))}"
        )
    hdim = None
    if hue is not None:
        if not isinstance(hue, str):
            raise McrouteError(f"hue must be a dim name, got {hue!r}")
        hdim = _dim_of(sub, hue, "hue")
        if hdim not in main.dims:
            raise McrouteError(
                f"hue={hue!r}: {base} does not vary along {hdim!r}; its dims: "
                f"{', '.join(map(str, main.dims))}"
            )
        if hdim == xdim:
            raise McrouteError(f"hue and x must be different dims, both are {xdim!r}")

    rest = [d for d in main.dims if d not in (xdim, hdim)]
    open_dims = [d for d in rest if main.sizes[d] > 1]
    if open_dims:
        example = " ".join(f"{d}={_first(sub, d)}" for d in open_dims)
        raise McrouteError(
            f"{base} also varies along {', '.join(map(str, open_dims))}; select one value of "
            + "; ".join(_choices(sub, d) for d in open_dims)
            + f", e.g. {example.replace(' ', ', ')} (CLI: --sel {example}), or pass it as hue"
        )
    sub = sub.isel({d: 0 for d in rest})
    # Dims held at one value: selected by the user, squeezed scenario dims of size 1, and
    # scalar scenario coordinates of the variable (e.g. a single batch size).
    fixed = {}
    for name, c in sub.coords.items():
        if c.ndim != 0 or name in (xdim, hdim):
            continue
        if ((name in sel and name in orig.dims)
                or (name in orig.dims and name not in _STRUCTURAL_DIMS)
                or (name in orig.coords and orig[name].ndim == 0 and name not in _STRUCTURAL_DIMS)):
            fixed[str(name)] = c.item()
    main = sub[f"{base}_mean"] if summarised else sub[base]

    have_ci = ci and summarised and f"{base}_ci" in sub and "ci_bound" in sub[f"{base}_ci"].dims
    qvar = sub.get(f"{base}_q")
    have_q = (band and summarised and qvar is not None and "quantile" in qvar.dims
              and "quantile" in sub.coords and sub.sizes["quantile"] >= 2
              and float(sub["quantile"].min()) < float(sub["quantile"].max()))

    order = [hdim, xdim] if hdim else [xdim]
    xvals = sub[xdim].values if xdim in sub.coords else np.arange(sub.sizes[xdim])
    if x in sub.coords and x != xdim:
        xvals = sub[x].values
    yv = np.atleast_2d(main.transpose(*order).values.astype(float))
    lo_ci = hi_ci = lo_q = hi_q = None
    if have_ci:
        civ = sub[f"{base}_ci"]
        if "ci_bound" in sub.coords and {"lower", "upper"} <= set(map(str, sub["ci_bound"].values)):
            lo, hi = civ.sel(ci_bound="lower"), civ.sel(ci_bound="upper")
        else:
            lo, hi = civ.isel(ci_bound=0), civ.isel(ci_bound=-1)
        lo_ci = np.atleast_2d(lo.transpose(*order).values.astype(float))
        hi_ci = np.atleast_2d(hi.transpose(*order).values.astype(float))
    if have_q:
        qlevels = sub["quantile"].values.astype(float)
        qlo, qhi = float(qlevels.min()), float(qlevels.max())
        lo_q = np.atleast_2d(qvar.sel(quantile=qlo).transpose(*order).values.astype(float))
        hi_q = np.atleast_2d(qvar.sel(quantile=qhi).transpose(*order).values.astype(float))

    xlog = _decide_log("logx", logx, xvals)
    drawn = [yv] + [a for a in (lo_ci, hi_ci, lo_q, hi_q) if a is not None]
    ylog = _decide_log("logy", logy, np.concatenate([a.ravel() for a in drawn]))

    _matplotlib()
    from matplotlib.patches import Patch
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    if ax is None:
        plt = _pyplot()
        fig = plt.figure(figsize=(7.0, 4.5), layout="constrained")
        ax = fig.add_subplot()
    hue_vals = (sub[hdim].values if hdim in sub.coords else np.arange(sub.sizes[hdim])) if hdim \
        else [None]
    lines = []
    for i, hv in enumerate(hue_vals):
        tag = "" if hv is None else f":{_fmt_value(hv)}"
        label = _fmt_value(hv) if hv is not None else ("Monte Carlo mean" if summarised else base)
        (line,) = ax.plot(xvals, yv[i], marker="o", markersize=3.5, linewidth=1.6, label=label,
                          zorder=3)
        lines.append(line)
        color = line.get_color()
        if lo_q is not None:
            poly = ax.fill_between(xvals, lo_q[i], hi_q[i], color=color, alpha=_ALPHA_Q,
                                   linewidth=0, zorder=1)
            poly.set_gid(f"band{tag}")
        if lo_ci is not None:
            poly = ax.fill_between(xvals, lo_ci[i], hi_ci[i], color=color, alpha=_ALPHA_CI,
                                   linewidth=0, zorder=2)
            poly.set_gid(f"ci{tag}")

    if xlog:
        ax.set_xscale("log")
        xv = np.asarray(xvals, dtype=float)
        if np.unique(xv).size <= 12:
            ax.xaxis.set_major_locator(FixedLocator(np.unique(xv)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _tick_text(v)))
            ax.xaxis.set_minor_locator(NullLocator())
    if ylog:
        ax.set_yscale("log")
    ax.set_xlabel(_label(sub[x] if x in sub.coords else xr.DataArray(attrs={}), x))
    ax.set_ylabel(_y_label(sub, base))
    ax.grid(True, which="major", alpha=0.3, linewidth=0.6)

    extra = []
    grey = lines[0].get_color() if hdim is None else "0.35"  # one line: bands in its colour
    if lo_ci is not None:
        ci_prob = sub[f"{base}_ci"].attrs.get("ci_prob", ds.attrs.get("ci_prob"))
        level = f"{_pct(ci_prob)}% " if ci_prob is not None else ""
        extra.append(Patch(facecolor=grey, alpha=_ALPHA_CI, label=f"{level}CI of mean"))
    if lo_q is not None:
        extra.append(Patch(facecolor=grey, alpha=_ALPHA_Q,
                           label=f"{_pct(qlo)}–{_pct(qhi)}% of single steps"))
    if hdim or extra:
        handles = lines + extra
        title = _label(sub[hue], hue) if hdim and hue in sub.coords else hue
        ax.legend(handles=handles, title=title, fontsize=8, title_fontsize=8, framealpha=0.85)

    if caption:
        text = caption_text(sub, fixed, exclude=[d for d in (x, xdim, hue, hdim) if d])
        if text:
            # About 0.6 em per character; keep the caption within ~85% of the figure width.
            width = max(40, int(0.85 * ax.figure.get_figwidth() * 72 / (_CAPTION_SIZE * 0.6)))
            ax.annotate(textwrap.fill(text, width), xy=(0.0, 0.0),
                        xycoords=("axes fraction", ax.xaxis.label), xytext=(0, -6),
                        textcoords="offset points", ha="left", va="top",
                        fontsize=_CAPTION_SIZE, color="0.3", annotation_clip=False)
    return ax


def plot_dataset(ds, var=None, x=None, *, hue=None, ax=None, **kwargs):
    """Plot a results dataset with sensible defaults (what ``mcroute plot`` draws).

    Parameters
    ----------
    ds : xarray.Dataset
        Results following the mcroute conventions.
    var : str, optional
        Variable; default: the first of ``penalty``, ``throughput``, ``active_experts`` that is
        present, else the first summarised (per-trial) variable, else the first numeric one.
    x : str, optional
        Dim along the horizontal axis; default: the first scenario dim (not ``trial``, ``layer``,
        ``expert``, ``device``, ``rank``, ``load``, ``ci_bound``, ``quantile``) of the variable
        with a numeric coordinate and more than one value, else the first scenario dim with
        more than one value, else the first such dim of any kind.
    hue : str, optional
        Dim drawn as one line per value; default: when exactly one other scenario dim with 2 to
        10 values is left (and not selected in ``kwargs``), that one.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into.
    **kwargs
        Passed to :func:`plot_band` (``ci``, ``band``, ``logx``, ``logy``, ``caption`` and dim
        selections).

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import mcroute as mr
    >>> from mcroute.plot import plot_dataset
    >>> ds = mr.simulate(mr.Uniform(64, 4), [1, 8, 64], n_trials=20, rng=0)
    >>> plot_dataset(ds).get_ylabel()
    'distinct experts touched in the microbatch [experts]'
    """
    _check_dataset(ds)
    plottable = _plottable(ds)
    if var is None:
        summarised = [n for n in plottable if f"{n}_mean" in ds]
        preferred = [n for n in _PREFERRED_VARS if n in plottable]
        candidates = preferred + summarised + plottable
        if not candidates:
            raise McrouteError("the dataset has no numeric variable to plot")
        var = candidates[0]
    base, sub = _resolve_var(ds, var)
    main = sub[f"{base}_mean"] if f"{base}_mean" in sub else sub[base]
    options = ("ci", "band", "logx", "logy", "caption")
    chosen = {k for k in kwargs if k not in options}
    free = [d for d in main.dims if d not in chosen and d != hue and main.sizes[d] > 1]
    scenario = [d for d in free if d not in _STRUCTURAL_DIMS]
    if x is None:
        numeric = [d for d in scenario if d in ds.coords and _numeric(ds[d])]
        pick = numeric or scenario or free
        if not pick:
            raise McrouteError(
                f"{base} has no dim with more than one value to plot against; dims: "
                f"{', '.join(map(str, main.dims)) or 'none'}"
            )
        x = str(pick[0])
    if hue is None:
        xdim = _dim_of(ds, x, "x")
        others = [d for d in scenario if d != xdim]
        if len(others) == 1 and 2 <= main.sizes[others[0]] <= 10:
            hue = str(others[0])
    return plot_band(ds, var, x, hue=hue, ax=ax, **kwargs)


def save_figure(fig, path) -> Path:
    """Write a figure to ``.png``, ``.pdf`` or ``.svg`` (by extension), atomically.

    Parameters
    ----------
    fig : matplotlib.figure.Figure or matplotlib.axes.Axes
        The figure (or an axes of it).
    path : str or os.PathLike
        Output file; written to a temporary file in the same folder and renamed into place, so
        an existing file is never left half-written.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    _matplotlib()
    fig = getattr(fig, "figure", fig) if not hasattr(fig, "savefig") else fig
    if not hasattr(fig, "savefig"):
        raise McrouteError(f"fig must be a matplotlib Figure or Axes, got {type(fig).__name__}")
    path = Path(path)
    ext = path.suffix.lower()
    with atomic_path(path, allowed=(".png", ".pdf", ".svg"), what="figure output") as tmp:
        fig.savefig(tmp, format=ext[1:], dpi=150, bbox_inches="tight", pad_inches=0.08)
    return path

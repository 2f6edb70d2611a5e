"""``plot_band``, ``plot_dataset`` and ``save_figure``.

May import: numpy, xarray, matplotlib (inside functions: it is optional), ``mcroute._base``
and the plot package's modules.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from mcroute._base.atomic import atomic_path
from mcroute._base.validate import McrouteError
from mcroute.plot import axes as A
from mcroute.plot.select import check_dataset, default_axes, panel

__all__ = ["plot_band", "plot_dataset", "require_matplotlib", "save_figure"]

_INSTALL = "plotting needs matplotlib: install the plot extra: pip install 'mcroute[plot]'"

#: Size of a figure that ``plot_band`` makes itself [in]: room for the legend on the right.
FIGSIZE = (8.0, 4.5)

#: Options of ``plot_band`` that :func:`plot_dataset` passes on (the rest select dims).
OPTIONS = ("ci", "band", "logx", "logy", "caption", "ref", "legend")


def require_matplotlib():
    """Import matplotlib (the ``plot`` extra), or raise McrouteError saying how to install it.

    Chooses the non-interactive Agg backend when there is no display and pyplot is not yet
    loaded, unless ``MPLBACKEND`` says otherwise.
    """
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


def _check_flags(**flags) -> None:
    for name, flag in flags.items():
        if not isinstance(flag, (bool, np.bool_)):
            raise McrouteError(f"{name} must be True or False, got {flag!r}")


def _axes(ax):
    """``ax``, or the axes of a new figure.

    A figure without a layout engine gets the constrained layout, which makes room for the
    legend and the caption.
    """
    if ax is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=FIGSIZE, layout="constrained")
        return fig.add_subplot()
    fig = ax.figure
    if fig.get_layout_engine() is None:
        fig.set_layout_engine("constrained")
    return ax


def plot_band(ds, var, x, *, hue=None, ax=None, ci=True, band=True, logx="auto", logy="auto",
              caption=True, ref="auto", legend=True, **sel):
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
        Axes to draw into; a new figure (8 × 4.5 in) is made if None. A figure without a
        layout engine is given matplotlib's constrained layout.
    ci : bool
        Draw the confidence interval of the mean (``<var>_ci``), the dark band. Where it is
        thinner than 3% of the y axis, error bars with caps mark it as well.
    band : bool
        Draw the single-step quantile band (outermost levels of ``<var>_q``), the light band.
    logx, logy : {"auto", True, False}
        Log scale; "auto" uses one when the values are positive and span >= 2 decades, and on
        x also for positive integers spanning a factor of 8 (contexts, batch sizes). Integer
        values get base 2 and a tick at each value (up to 12), written ``4k`` … ``128k``.
    caption : bool
        Write the assumptions (model, hardware, routing, q, fixed dims, trials, CI level,
        seed) in words, on at most two lines under the axes.
    ref : "auto", float or None
        A dashed horizontal reference line: "auto" draws it at 1 for ratios where 1 is parity
        (``penalty`` and the other penalties, ``capacity_factor``, ``qs``,
        ``device_imbalance``); a number draws it there; None draws none.
    legend : bool
        Draw the legend (outside the axes, on the right, so that it never covers the data).
        In a figure of several panels with the same entries, draw it on one of them.
    **sel
        Values of the other dims, e.g. ``hardware="h100"`` (``ds.sel`` semantics). Dims of the
        variable that are neither ``x`` nor ``hue`` must be selected here or have size 1.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn into. Artists carry gids for tests and post-processing: bands
        ``"ci"`` / ``"band"`` (``"ci:<hue value>"`` with a hue), error bars ``"ci_bars"``,
        the reference line ``"ref"``, infeasible markers ``"infeasible"``, the caption
        ``"caption"``.

    Raises
    ------
    McrouteError
        Unknown variable or dim, dims left to select, or matplotlib missing.

    Notes
    -----
    A point whose mean is NaN (an infeasible point: the model does not fit) is marked with a
    × at the bottom of the axes, labelled in the legend by what is infeasible (from the
    dataset's ``*feasible`` variables); when no point is left, a note in the axes says why
    (from ``*reason``). The legend sits outside the axes, on the right.

    Examples
    --------
    >>> import mcroute as mr
    >>> from mcroute.plot import plot_band
    >>> ds = mr.simulate(mr.Zipf(64, 4, 1.2), [1, 4, 16, 64, 256], n_trials=50, rng=1)
    >>> ax = plot_band(ds, "active_experts", "batch_size")
    >>> ax.get_xscale(), [t.get_text() for t in ax.get_xticklabels()]
    ('log', ['1', '4', '16', '64', '256'])
    """
    check_dataset(ds)
    logx = A.check_log("logx", logx)
    logy = A.check_log("logy", logy)
    _check_flags(ci=ci, band=band, caption=caption, legend=legend)
    p = panel(ds, var, x, hue, sel, ci=ci, band=band)
    ref_value = A.reference_value(p.base, ref)
    xbase = A.decide_log("logx", logx, p.xvals, counts=True)
    drawn = [p.y] + [a for pair in (p.ci, p.q) if pair for a in pair]
    ybase = A.decide_log("logy", logy, np.concatenate([a.ravel() for a in drawn]))
    require_matplotlib()
    ax = _axes(ax)
    lines = A.draw_lines(ax, p)
    ref_line = A.draw_reference(ax, p, ref_value)
    A.scale_x(ax, p.xvals, xbase)
    if ybase:
        ax.set_yscale("log", base=ybase)
    marks, _ = A.draw_infeasible(ax, p, lines)
    A.label_categories(ax, p)
    A.fix_limits(ax, p, ref_value)
    A.draw_narrow_ci(ax, p, lines)
    ax.set_xlabel(A.x_label(p))
    ax.set_ylabel(A.y_label(p))
    A.format_y(ax)
    ax.grid(True, which="major", alpha=0.3, linewidth=0.6)
    if legend:
        A.draw_legend(ax, p, lines, _band_handles(ax, p, lines) + [ref_line, marks])
    if caption:
        A.draw_caption(ax, p, exclude=[d for d in (p.x, p.xdim, hue, p.hdim) if d])
    return ax


def _band_handles(ax, p, lines) -> list:
    """Legend entries of the two bands, in the line's colour (grey with several lines)."""
    from matplotlib.patches import Patch

    grey = lines[0].get_color() if p.hdim is None else "0.35"
    out = []
    if p.ci is not None:
        level = p.sub[f"{p.base}_ci"].attrs.get("ci_prob", p.sub.attrs.get("ci_prob"))
        text = f"{100 * float(level):.3g}% " if level is not None else ""
        out.append(Patch(facecolor=grey, alpha=A.ALPHA_CI, label=f"{text}CI of mean"))
    if p.q is not None:
        lo, hi = (f"{100 * v:.3g}" for v in p.qlevels)
        out.append(Patch(facecolor=grey, alpha=A.ALPHA_Q, label=f"{lo}–{hi}% of single steps"))
    return out


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
        Dim along the horizontal axis; default: ``context``, else ``batch_size``, else the
        first other scenario dim (not ``trial``, ``layer``, ``expert``, ``device``, ``rank``,
        ``load``, ``q_draw``, ``operator``) of the variable with a numeric coordinate and more
        than one value, else the first scenario dim with more than one value, else the first
        such dim of any kind.
    hue : str, optional
        Dim drawn as one line per value; default: when exactly one other scenario dim with 2 to
        10 values is left (and not selected in ``kwargs``), that one.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into.
    **kwargs
        Passed to :func:`plot_band` (``ci``, ``band``, ``logx``, ``logy``, ``caption``,
        ``ref``, ``legend`` and dim selections).

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import mcroute as mr
    >>> from mcroute.plot import plot_dataset
    >>> ds = mr.simulate(mr.Uniform(64, 4), [1, 8, 64], n_trials=20, rng=0)
    >>> plot_dataset(ds).get_ylabel()
    'active experts [experts]'
    """
    check_dataset(ds)
    chosen = {k for k in kwargs if k not in OPTIONS}
    var, x, hue = default_axes(ds, var, x, hue, chosen)
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
    require_matplotlib()
    fig = getattr(fig, "figure", fig) if not hasattr(fig, "savefig") else fig
    if not hasattr(fig, "savefig"):
        raise McrouteError(f"fig must be a matplotlib Figure or Axes, got {type(fig).__name__}")
    path = Path(path)
    ext = path.suffix.lower()
    with atomic_path(path, allowed=(".png", ".pdf", ".svg"), what="figure output") as tmp:
        fig.savefig(tmp, format=ext[1:], dpi=150, bbox_inches="tight", pad_inches=0.08)
    return path

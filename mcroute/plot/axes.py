"""Drawing steps of ``plot_band`` on one matplotlib Axes.

Lines and bands, scales and ticks, the reference line, infeasible points, error bars where a
band is too thin to see, labels, legend and caption.

May import: numpy, xarray, matplotlib (inside functions: it is optional), and the plot
package's ``select`` and ``caption``.
"""

from __future__ import annotations

import textwrap

import numpy as np
import xarray as xr

from mcroute._base.validate import McrouteError
from mcroute.plot.caption import caption_text
from mcroute.plot.select import Panel, fmt_value, status_at, tick_text

#: Alpha of the dark (confidence interval of the mean) and light (single-step quantile) bands.
ALPHA_CI = 0.4
ALPHA_Q = 0.15

#: Caption font size [pt] and the width of an average character in em (for wrapping).
CAPTION_SIZE = 7.0
_CHAR_EM = 0.55

#: A label longer than this (characters, before the units) is replaced by a shorter one.
LABEL_MAX = 40

#: A confidence band thinner than this fraction of the y axis also gets error bars.
NARROW_FRACTION = 0.03

#: Where the infeasible markers sit, as a fraction of the axes height from the bottom.
INFEASIBLE_Y = 0.04

#: Horizontal distance between the infeasible markers of several hue values at one x [pt].
MARKER_STEP = 8.0

#: Variables for which 1 is parity (dense = MoE, balanced devices): the default reference line.
_RATIO_NAMES = ("qs", "capacity_factor", "device_imbalance")


# --------------------------------------------------------------------------------------------
# scales


def check_log(name: str, value) -> str | bool:
    """Return ``value`` ("auto", True or False) or raise naming ``name``."""
    if isinstance(value, str) and value == "auto":
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise McrouteError(f"{name} must be 'auto', True or False, got {value!r}")


def _finite(values) -> np.ndarray | None:
    v = np.asarray(values)
    if not np.issubdtype(v.dtype, np.number) or np.issubdtype(v.dtype, np.bool_):
        return None
    v = v.astype(float)
    return v[np.isfinite(v)]


def decide_log(name: str, mode, values, *, counts: bool = False) -> int | None:
    """The log base of an axis, or None for a linear one.

    ``"auto"``: log when the values are positive and span two decades (max/min >= 100), or,
    with ``counts`` (an x axis), when they are positive integers spanning a factor of 8 or more
    (contexts 4k...128k, batch sizes 1...64). Integer values get base 2, others base 10.
    """
    v = _finite(values)
    integer = v is not None and v.size > 0 and bool(np.all(v == np.round(v)))
    base = 2 if integer else 10
    if mode == "auto":
        if v is None or v.size < 2 or np.any(v <= 0):
            return None
        ratio = v.max() / v.min()
        if ratio >= 100 - 1e-9 or (counts and integer and ratio >= 8):
            return base
        return None
    if mode:
        if v is None or v.size == 0 or np.any(v <= 0):
            raise McrouteError(f"{name}=True needs positive values; the data include values <= 0")
        return base
    return None


def scale_x(ax, xvals, base: int | None) -> None:
    """Log scale in ``base`` with a tick at each value (up to 12), labelled ``4k``, ``128k``."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator

    if base is None:
        return
    ax.set_xscale("log", base=base)
    xv = np.unique(_finite(xvals))
    if xv.size <= 12:
        ax.xaxis.set_major_locator(FixedLocator(xv))
    else:
        ax.xaxis.set_major_locator(LogLocator(base=base))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: tick_text(v)))
    ax.xaxis.set_minor_locator(NullLocator())


# --------------------------------------------------------------------------------------------
# labels


def words(name) -> str:
    """A name in words: ``reuse_penalty`` -> ``reuse penalty``."""
    return str(name).replace("_", " ")


def short_label(da: xr.DataArray | None, name: str, *, prefix: str = "") -> str:
    """``long_name [units]`` on one line.

    A long name is cut at ':' / ';' or replaced by the variable's name in words. Units "1"
    (dimensionless) are left out.
    """
    attrs = da.attrs if da is not None else {}
    text = str(attrs.get("long_name", words(name))).removeprefix(prefix).split(";")[0]
    head, colon, tail = text.partition(":")
    text = head.strip()
    said = f"{text} ({tail.split(',')[0].strip()})"
    if colon and tail.strip() and len(said) <= LABEL_MAX:
        text = said  # "penalty: dense / MoE throughput, each at ..." -> "penalty (dense / ...)"
    if len(text) > LABEL_MAX or not text:
        text = words(name)
    units = str(attrs.get("units", "")).strip()
    return f"{text} [{units}]" if units and units != "1" else text


def y_label(p: Panel) -> str:
    """Label of the y axis: the variable (its mean's name without "Monte Carlo mean of")."""
    if p.base in p.sub and not p.summarised:
        return short_label(p.sub[p.base], p.base)
    return short_label(p.sub[f"{p.base}_mean"], p.base, prefix="Monte Carlo mean of ")


def x_label(p: Panel) -> str:
    """Label of the x axis: the coordinate's name and units."""
    return short_label(p.sub[p.x] if p.x in p.sub.coords else None, p.x)


def hue_title(p: Panel) -> str:
    """The plain name of the hue dim, with its units (``context [tokens]``, ``model``)."""
    units = str(p.sub[p.hdim].attrs.get("units", "")).strip() if p.hdim in p.sub.coords else ""
    return f"{words(p.hdim)} [{units}]" if units and units != "1" else words(p.hdim)


# --------------------------------------------------------------------------------------------
# drawing


def _tag(hv) -> str:
    return "" if hv is None else f":{fmt_value(hv)}"


#: Horizontal distance between the points of neighbouring hue values along a categorical x,
#: as a fraction of the distance between categories.
DODGE = 0.12


def categorical(p: Panel) -> bool:
    """Whether x holds names (models, routings): points, not lines and bands, are drawn."""
    return _finite(p.xvals) is None


def xs(p: Panel, i: int) -> np.ndarray:
    """Where hue value ``i`` is drawn.

    The x values; along a categorical x, the category's position 0, 1, ... moved aside by hue
    so that the points do not hide each other.
    """
    if not categorical(p):
        return p.xvals
    return np.arange(p.xvals.size) + (i - (len(p.hue_vals) - 1) / 2) * DODGE


def label_categories(ax, p: Panel) -> None:
    """Ticks at the categories, labelled by name."""
    if categorical(p):
        ax.set_xticks(np.arange(p.xvals.size), [fmt_value(v) for v in p.xvals])
        ax.set_xlim(-0.5, p.xvals.size - 0.5)


def draw_lines(ax, p: Panel) -> list:
    """The mean line per hue value, with its single-step band and its CI band.

    Along a categorical x (names) a line or band between neighbours would mean nothing: the
    means are markers, the single-step range a wide translucent bar and the CI error bars
    (:func:`draw_narrow_ci`).
    """
    lines = []
    for i, hv in enumerate(p.hue_vals):
        label = fmt_value(hv) if hv is not None else (
            "Monte Carlo mean" if p.summarised else words(p.base))
        if categorical(p):
            (line,) = ax.plot(xs(p, i), p.y[i], marker="o", markersize=6, linestyle="none",
                              label=label, zorder=3)
            lines.append(line)
            if p.q is not None:
                bar = ax.vlines(xs(p, i), p.q[0][i], p.q[1][i], colors=line.get_color(),
                                alpha=ALPHA_Q * 2, linewidth=12, zorder=1)
                bar.set_gid(f"band{_tag(hv)}")
            continue
        (line,) = ax.plot(p.xvals, p.y[i], marker="o", markersize=3.5, linewidth=1.6,
                          label=label, zorder=3)
        lines.append(line)
        color = line.get_color()
        if p.q is not None:
            poly = ax.fill_between(p.xvals, p.q[0][i], p.q[1][i], color=color, alpha=ALPHA_Q,
                                   linewidth=0, zorder=1)
            poly.set_gid(f"band{_tag(hv)}")
        if p.ci is not None:
            poly = ax.fill_between(p.xvals, p.ci[0][i], p.ci[1][i], color=color,
                                   alpha=ALPHA_CI, linewidth=0, zorder=2)
            poly.set_gid(f"ci{_tag(hv)}")
    return lines


def reference_value(base: str, ref) -> float | None:
    """The y of the reference line.

    1 for ratio variables under "auto", a given number, or None (no line).
    """
    if ref is None or ref is False:
        return None
    if isinstance(ref, str):
        if ref != "auto":
            raise McrouteError(f"ref must be 'auto', a number or None, got {ref!r}")
        ratio = "penalty" in base or base in _RATIO_NAMES
        return 1.0 if ratio else None
    if isinstance(ref, (bool, np.bool_)) or not isinstance(ref, (int, float, np.number)):
        raise McrouteError(f"ref must be 'auto', a number or None, got {ref!r}")
    if not np.isfinite(ref):
        raise McrouteError(f"ref must be a finite number, got {ref!r}")
    return float(ref)


def draw_reference(ax, p: Panel, value: float | None):
    """A dashed horizontal line at ``value`` (parity for penalties), inside the y range."""
    if value is None:
        return None
    label = (f"{words(p.base)} = {value:g} (parity)"
             if value == 1.0 and ("penalty" in p.base or p.base in _RATIO_NAMES)
             else f"{words(p.base)} = {value:g}")
    line = ax.axhline(value, color="0.3", linestyle="--", linewidth=1.0, zorder=1.5,
                      label=label)
    line.set_gid("ref")
    ax.dataLim.update_from_data_y(np.array([value]), ignore=False)
    return line


def _failed_words(names) -> str:
    who = {"moe_feasible": "MoE", "dense_feasible": "dense twin"}
    said = sorted({who.get(n, "") for n in names} - {""})
    if said:
        return " and ".join(said) + " infeasible"
    return "infeasible" if names else "no value (NaN)"


def draw_infeasible(ax, p: Panel, lines) -> tuple:
    """× markers at the bottom of the axes where the mean is NaN; a note when nothing is left.

    Returns the legend handle (or None) and the note text (or None).
    """
    from matplotlib.lines import Line2D
    from matplotlib.transforms import offset_copy

    failed, reasons = set(), []
    rows = [i for i in range(len(lines)) if (~np.isfinite(p.y[i])).any()]
    any_bad = bool(rows)
    for k, i in enumerate(rows):
        bad = ~np.isfinite(p.y[i])
        for j in np.flatnonzero(bad):
            f, r = status_at(p, i, int(j))
            failed.update(f)
            reasons += [x for x in r if x not in reasons]
        # one row at the bottom; several hue values side by side, so none hides another
        shift = (k - (len(rows) - 1) / 2) * MARKER_STEP
        tf = offset_copy(ax.get_xaxis_transform(), fig=ax.figure, x=shift, units="points")
        (mark,) = ax.plot(xs(p, i)[bad], np.full(int(bad.sum()), INFEASIBLE_Y), transform=tf,
                          linestyle="none", marker="x", markersize=7, markeredgewidth=1.6,
                          color=lines[i].get_color(), clip_on=False, zorder=4)
        mark.set_gid(f"infeasible{_tag(p.hue_vals[i])}")
        # the shifted transform hides the markers from autoscaling: keep their x in view
        ax.dataLim.update_from_data_x(np.asarray(xs(p, i)[bad], dtype=float), ignore=False)
    if not any_bad:
        return None, None
    label = _failed_words(failed)
    handle = Line2D([], [], linestyle="none", marker="x", markersize=7, markeredgewidth=1.6,
                    color="0.3", label=label)
    note = None
    if not np.isfinite(p.y).any():
        note = f"no value at any point ({label})"
        if reasons:
            note += ":\n" + textwrap.fill(textwrap.shorten(reasons[0], 160, placeholder="…"), 60)
        ax.text(0.5, 0.8, note, transform=ax.transAxes, ha="center", va="center",
                fontsize=8.5, color="0.25", gid="infeasible_note")
    return handle, note


def fix_limits(ax, p: Panel, ref_value: float | None) -> None:
    """Autoscale; with no finite value at all, show 0 to twice the reference (or 0 to 1)."""
    if not np.isfinite(p.y).any():
        top = 2.0 * ref_value if ref_value and ref_value > 0 else 1.0
        ax.set_ylim(0.0, top)
    ax.autoscale_view()


def draw_narrow_ci(ax, p: Panel, lines) -> None:
    """Error bars with caps where the confidence band is too thin to see.

    Thin means under 3% of the y axis; along a categorical x every CI is drawn as error bars.
    """
    if p.ci is None:
        return
    lo_ax, hi_ax = ax.get_ylim()
    log = ax.get_yscale() == "log"
    f = np.log10 if log else (lambda a: a)
    with np.errstate(invalid="ignore", divide="ignore"):
        span = abs(f(hi_ax) - f(lo_ax))
        for i, line in enumerate(lines):
            lo, hi, y = p.ci[0][i], p.ci[1][i], p.y[i]
            ok = np.isfinite(lo) & np.isfinite(hi) & np.isfinite(y)
            if log:
                ok &= (lo > 0) & (hi > 0)
            height = np.where(ok, np.abs(f(np.where(ok, hi, 1.0)) - f(np.where(ok, lo, 1.0))),
                              np.inf)
            narrow = ok & ((height < NARROW_FRACTION * span) | categorical(p))
            if not narrow.any():
                continue
            bars = ax.errorbar(xs(p, i)[narrow], y[narrow],
                               yerr=[y[narrow] - lo[narrow], hi[narrow] - y[narrow]],
                               fmt="none", ecolor=line.get_color(), elinewidth=1.2, capsize=4,
                               capthick=1.2, zorder=3.5)
            tag = _tag(p.hue_vals[i])
            for cap in bars.lines[1]:
                cap.set_gid(f"ci_caps{tag}")
            for coll in bars.lines[2]:
                coll.set_gid(f"ci_bars{tag}")


def format_y(ax) -> None:
    """Thousands separators on a linear y axis that reaches 10,000 (``47,070``, as the CLI)."""
    from matplotlib.ticker import FuncFormatter

    if ax.get_yscale() == "linear" and max(abs(v) for v in ax.get_ylim()) >= 1e4:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))


def draw_legend(ax, p: Panel, lines, extras) -> None:
    """Outside the axes, on the right, so that it never covers the data."""
    extras = [h for h in extras if h is not None]
    if not p.hdim and not extras:
        return
    handles = lines + extras
    ax.legend(handles=handles, title=hue_title(p) if p.hdim else None, loc="upper left",
              bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, title_fontsize=8,
              frameon=False)


def draw_caption(ax, p: Panel, exclude) -> None:
    """At most two lines under the x label, as wide as the axes."""
    fig = ax.figure
    width_in = ax.get_position().width * fig.get_figwidth()
    width = max(30, int(width_in * 72 / (CAPTION_SIZE * _CHAR_EM)))
    text = caption_text(p.sub, p.fixed, exclude=exclude, width=width, max_lines=2)
    if text:
        ax.annotate(text, xy=(0.0, 0.0), xycoords=("axes fraction", ax.xaxis.label),
                    xytext=(0, -6), textcoords="offset points", ha="left", va="top",
                    fontsize=CAPTION_SIZE, color="0.3", annotation_clip=False,
                    gid="caption")

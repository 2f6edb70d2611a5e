"""``mcroute plot``: draw a results file (NetCDF) to PNG, PDF or SVG.

May import: the labeled and array layers, ``mcroute.plot``, ``mcroute.cli.common``. matplotlib
is imported only when the command runs (through ``mcroute.plot``), so ``mcroute --help`` works
without it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from mcroute._base.validate import McrouteError
from mcroute.cli.common import INT_MAX, check_input_path, parse_int, parse_size

_LOG_CHOICES = {"auto": "auto", "on": True, "off": False}


def register(sub) -> None:
    """Add the ``plot`` subcommand."""
    p = sub.add_parser(
        "plot",
        help="plot a results file (.nc) with its confidence and single-step bands",
        description="Draw a variable of a results file against a dim: the Monte Carlo mean as a "
        "line, the confidence interval of the mean as a dark band and the quantile band of "
        "single steps as a light band, penalties against a dashed line at 1, infeasible points "
        "as x, and the assumptions in a caption of at most two lines. Needs the plot extra: "
        "pip install 'mcroute[plot]'.",
    )
    p.add_argument("results", metavar="RESULTS.nc", help="results written with --output FILE.nc")
    p.add_argument("--output", required=True, metavar="FIG",
                   help="figure file: .png, .pdf or .svg")
    p.add_argument("--var", default=None,
                   help="variable to plot (default: penalty, throughput or active_experts if "
                   "present, else the first per-trial variable)")
    p.add_argument("--x", default=None, help="dim along the x axis (default: first scenario dim)")
    p.add_argument("--hue", default=None, help="dim drawn as one line per value")
    p.add_argument("--sel", action="extend", nargs="+", default=[], metavar="DIM=VALUE",
                   help="hold a dim at one value, e.g. --sel hardware=h100 context=128k")
    p.add_argument("--logx", default="auto", choices=sorted(_LOG_CHOICES),
                   help="log x axis (default auto: when the values span >= 2 decades)")
    p.add_argument("--logy", default="auto", choices=sorted(_LOG_CHOICES),
                   help="log y axis (default auto)")
    p.add_argument("--no-ci", action="store_true", help="leave out the confidence band")
    p.add_argument("--no-band", action="store_true", help="leave out the single-step band")
    p.add_argument("--no-caption", action="store_true", help="leave out the caption")
    p.add_argument("--no-legend", action="store_true", help="leave out the legend")
    p.add_argument("--ref", default="auto", metavar="auto|none|Y",
                   help="dashed reference line: auto (at 1 for penalties and other ratios), "
                   "none, or a y value")
    p.set_defaults(func=run)


def _read(path: str):
    """Load a NetCDF results file fully into memory (the file is closed afterwards)."""
    import xarray as xr

    p = Path(path)
    check_input_path("RESULTS.nc", path)
    if not p.is_file():
        raise McrouteError(f"results file {path!r} does not exist")
    try:
        return xr.load_dataset(p, engine="h5netcdf")
    except Exception as exc:  # h5py/h5netcdf raise several types for a file that is not NetCDF4
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise McrouteError(f"cannot read {path!r} as a NetCDF results file: {first}") from None


def _coerce(ds, dim: str, text: str):
    """Convert a ``--sel`` value to the dtype of the coordinate ``dim``."""
    if dim not in ds.dims and dim not in ds.coords:
        raise McrouteError(
            f"--sel {dim}={text}: {dim!r} is not a dim of the dataset; dims: "
            f"{', '.join(map(str, ds.dims))}"
        )
    kind = ds[dim].dtype.kind if dim in ds.coords else "i"
    if kind in "iu":
        if text.strip().lstrip("-").isdigit():  # plain integers, 0 and negatives included
            return parse_int(text, f"--sel {dim}", minimum=-INT_MAX)
        return parse_size(f"--sel {dim}", text)
    if kind == "f":
        try:
            return float(text)
        except ValueError:
            raise McrouteError(f"--sel {dim}: expected a number, got {text!r}") from None
    if kind == "b":
        low = text.strip().lower()
        if low not in ("true", "false", "1", "0"):
            raise McrouteError(f"--sel {dim}: expected true or false, got {text!r}")
        return low in ("true", "1")
    if kind == "M":
        return np.datetime64(text)
    return text


def _parse_sel(ds, items) -> dict:
    sel = {}
    for item in items:
        dim, eq, value = item.partition("=")
        dim = dim.strip()
        if not eq or not dim or not value.strip():
            raise McrouteError(f"--sel expects DIM=VALUE, got {item!r}")
        if dim in sel:
            raise McrouteError(f"--sel {dim} given twice")
        sel[dim] = _coerce(ds, dim, value.strip())
    return sel


def _parse_ref(text: str):
    low = text.strip().lower()
    if low in ("auto", "none"):
        return None if low == "none" else "auto"
    try:
        value = float(low)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value):
        raise McrouteError(f"--ref must be auto, none or a finite number, got {text!r}")
    return value


def run(args) -> int:
    """Run ``mcroute plot``."""
    out = Path(args.output)
    if out.suffix.lower() not in {".png", ".pdf", ".svg"}:
        raise McrouteError(f"--output must end in .png, .pdf or .svg, got {args.output!r}")
    ref = _parse_ref(args.ref)
    from mcroute import plot

    plot.require_matplotlib()  # fail early, before reading, when the plot extra is missing
    ds = _read(args.results)
    sel = _parse_sel(ds, args.sel)
    for key in ("ci", "band", "logx", "logy", "caption", "ref", "legend"):
        if key in sel:
            raise McrouteError(f"--sel {key}=...: {key!r} is a plot option, not a dim")
    ax = plot.plot_dataset(
        ds, args.var, args.x, hue=args.hue, ci=not args.no_ci, band=not args.no_band,
        logx=_LOG_CHOICES[args.logx], logy=_LOG_CHOICES[args.logy],
        caption=not args.no_caption, legend=not args.no_legend, ref=ref, **sel,
    )
    import matplotlib.pyplot as plt

    try:
        written = plot.save_figure(ax.figure, out)
    finally:
        plt.close(ax.figure)
    print(f"wrote {written}", file=sys.stderr)
    return 0

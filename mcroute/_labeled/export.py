"""Export of labeled results: NetCDF, tidy CSV and strict JSON (``mcroute.save_dataset``).

May import: numpy, xarray, pandas (lazily, for CSV), ``mcroute._base`` and the labeled floor's
``results`` module.

The tidy CSV (docs/results.md) has one row per numeric variable and coordinate cell. Its columns
come in a fixed order, which is the contract readers rely on:

1. ``variable`` — the variable's name;
2. one column per dim, in the dataset's dim order (empty where the variable lacks that dim);
3. ``value`` — always numeric (integers and floats; NaN is an empty field);
4. ``units``;
5. one column per non-numeric variable (booleans such as ``feasible``, strings such as
   ``reason``), holding its value at the row's coordinates. It is filled on the rows of every
   numeric variable whose dims include all of its dims; a non-numeric variable that no numeric
   variable covers gets rows of its own, with an empty ``value``.

So ``value`` can be averaged, summed or pivoted without meeting a string, and a reader finds
the dim columns as those between ``variable`` and ``value``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from mcroute._base.atomic import atomic_path
from mcroute._base.validate import McrouteError, check_path
from mcroute._labeled.results import attr_value, strict_json

if TYPE_CHECKING:
    import os

__all__ = ["save_dataset", "tidy_frame"]

#: dtype kinds written to the ``value`` column: signed and unsigned integers, floats.
_VALUE_KINDS = "iuf"


def _is_value(da: xr.DataArray) -> bool:
    return da.dtype.kind in _VALUE_KINDS


def _frame(ds: xr.Dataset, name: str, extras: list[str], dims: tuple):
    """Rows of one variable: its dims, ``value``, and the given non-numeric columns."""
    import pandas as pd

    da = ds[name]
    value = da.values if da.dtype.kind in _VALUE_KINDS else np.full(da.shape, np.nan)
    if not dims:
        row = {"value": [value.item()], **{e: [ds[e].values.item()] for e in extras}}
        return pd.DataFrame(row)
    sub = xr.Dataset({"value": (da.dims, value), **{e: ds[e] for e in extras}},
                     coords={d: ds[d] for d in dims if d in ds.coords})
    df = sub.to_dataframe().reset_index()
    return df[[*dims, "value", *extras]]


def tidy_frame(ds: xr.Dataset):
    """The tidy table that ``save_dataset`` writes to CSV, as a ``pandas.DataFrame``.

    Parameters
    ----------
    ds : xarray.Dataset
        Any dataset; attrs are not part of the table.

    Returns
    -------
    pandas.DataFrame
        Columns ``variable``, the dims (dataset order), ``value`` (numeric), ``units``, then one
        column per non-numeric variable (see the module docstring). Integer dims use pandas'
        nullable ``Int64``, so a dim a variable lacks is ``<NA>`` rather than turning the column
        into floats.
    """
    import pandas as pd

    numeric = [n for n in ds.data_vars if _is_value(ds[n])]
    other = [n for n in ds.data_vars if not _is_value(ds[n])]
    covered = set()
    frames = []
    for name in numeric:
        dims = ds[name].dims
        extras = [e for e in other if set(ds[e].dims) <= set(dims)]
        covered.update(extras)
        frames.append((name, _frame(ds, name, extras, dims)))
    for name in other:
        if name not in covered:  # rows of its own: nothing numeric shares its cells
            frames.append((name, _frame(ds, name, [name], ds[name].dims)))
    parts = []
    for name, df in frames:
        df.insert(0, "variable", name)
        df["units"] = ds[name].attrs.get("units", "")
        parts.append(df)
    dim_cols = [str(d) for d in ds.dims if any(str(d) in df.columns for df in parts)]
    columns = ["variable", *dim_cols, "value", "units", *other]
    if not parts:
        return pd.DataFrame(columns=columns)
    tidy = pd.concat(parts, ignore_index=True, sort=False).reindex(columns=columns)
    tidy["value"] = pd.to_numeric(tidy["value"])
    for dim in dim_cols:
        if dim in ds.coords and np.issubdtype(ds[dim].dtype, np.integer):
            tidy[dim] = tidy[dim].astype("Int64")
    return tidy


def _one_line(value) -> str:
    """An attr value on one header line: a line break is written as backslash and n."""
    return str(value).replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n")


def _to_json_dict(ds: xr.Dataset) -> dict:
    d = ds.to_dict(data="list", encoding=False)
    d["attrs"] = {k: attr_value(v) for k, v in ds.attrs.items()}
    return d


def save_dataset(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` to ``.nc`` (NetCDF4 via h5netcdf), ``.csv`` (tidy) or ``.json``.

    Parameters
    ----------
    ds : xarray.Dataset
        Results (any dataset; mcroute's follow docs/schema.md).
    path : str or os.PathLike
        Output file; the extension chooses the format.

    Returns
    -------
    pathlib.Path
        The path written.

    Notes
    -----
    CSV is tidy (:func:`tidy_frame`): ``variable``, the dims, a numeric ``value``, ``units``,
    then one column per non-numeric variable; the attrs come first as ``# key: value`` lines.
    JSON is strict: NaN (e.g. the trials of an infeasible point) and infinities are written as
    ``null``, which every JSON parser accepts. docs/results.md has recipes for pandas and R.

    The file is written to a temporary file in the same folder and renamed into place, so an
    existing file is never left half-written.
    """
    if not isinstance(ds, xr.Dataset):
        raise McrouteError(f"ds must be an xarray.Dataset, got {type(ds).__name__}")
    path = check_path("path", path)
    ext = path.suffix.lower()
    ds = ds.copy()
    ds.attrs = {k: attr_value(v) for k, v in ds.attrs.items()}
    for v in ds.variables.values():
        v.attrs = {k: attr_value(a) for k, a in v.attrs.items()}
    with atomic_path(path, allowed=(".nc", ".csv", ".json")) as tmp:
        if ext == ".nc":
            ds.to_netcdf(tmp, engine="h5netcdf")
        elif ext == ".csv":
            frame = tidy_frame(ds)
            with open(tmp, "w", encoding="utf-8") as fh:
                for k, v in ds.attrs.items():
                    fh.write(f"# {k}: {_one_line(v)}\n")
                # Text fields are quoted, so that a "#" inside one is not read as the start
                # of a comment by readers told that "#" starts one (pandas' comment="#").
                frame.to_csv(fh, index=False, quoting=csv.QUOTE_NONNUMERIC)
        else:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(strict_json(_to_json_dict(ds)))
    return path

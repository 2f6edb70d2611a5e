"""Export (``save_dataset``): a numeric tidy CSV, its non-numeric columns, and the documented
pandas recipes run on real results (docs/results.md)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import mcroute as mr
from mcroute._labeled.export import tidy_frame

DOCS = Path(__file__).resolve().parent.parent / "docs" / "results.md"


@pytest.fixture(scope="module")
def qs():
    """Two q values and three contexts; on one H200 Mixtral has no room for a 512k cache."""
    return mr.qs_analysis("mixtral-8x7b", "h200", 1, [1.5, 3.0], ["4k", "128k", "512k"],
                          n_trials=8, rng=0)


@pytest.fixture(scope="module")
def sim():
    return mr.simulate(mr.Zipf(16, 2, 1.1), [1, 4, 16], 12, n_layers=3, rng=5)


@pytest.fixture(scope="module")
def sweep():
    spec = {"kind": "simulate", "seed": 3, "n_trials": 6,
            "axes": {"routing": ["uniform", "zipf:1.2"], "n_experts": [8, 16],
                     "batch_size": [1, 8]},
            "fixed": {"top_k": 2, "n_layers": 2}}
    return mr.sweep(spec)


def _read(path):
    return pd.read_csv(path, comment="#")


def test_value_is_numeric_and_text_has_own_columns(qs, tmp_path):
    text_vars = [n for n in qs.data_vars if qs[n].dtype.kind not in "iuf"]
    assert {"moe_feasible", "moe_reason", "dense_feasible"} <= set(text_vars)
    df = _read(mr.save_dataset(qs, tmp_path / "qs.csv"))
    assert pd.api.types.is_float_dtype(df["value"])
    assert set(df["variable"]) == {n for n in qs.data_vars if n not in text_vars}
    # the column order is the contract: variable, dims, value, units, non-numeric variables
    cols = list(df.columns)
    dims = cols[1:cols.index("value")]
    assert set(dims) <= set(map(str, qs.dims)) and "context" in dims and "q" in dims
    assert cols[cols.index("value"):] == ["value", "units", *text_vars]
    # the mean over all rows of a variable works (it failed on strings before)
    assert np.isfinite(df.groupby("variable")["value"].mean()["s"])


def test_text_columns_hold_the_value_at_each_row(qs, tmp_path):
    df = _read(mr.save_dataset(qs, tmp_path / "qs.csv"))
    rows = df[df.variable == "penalty_mean"]
    assert len(rows) == qs["penalty_mean"].size
    feas = qs["moe_feasible"]
    assert not bool(feas.all()) and bool(feas.any()), "the fixture must mix feasibility"
    for _, r in rows.iterrows():
        cell = {"context": int(r["context"]), "q": float(r["q"])}
        expect = qs["moe_feasible"].sel({d: cell[d] for d in feas.dims}).item()
        assert r["moe_feasible"] == expect
        reason = str(qs["moe_reason"].sel({d: cell[d] for d in qs["moe_reason"].dims}).item())
        assert (r["moe_reason"] if isinstance(r["moe_reason"], str) else "") == reason
        # an infeasible point has no penalty: an empty value, not a string
        assert np.isnan(r["value"]) == (not expect)


def test_uncovered_text_variable_gets_rows_of_its_own():
    ds = xr.Dataset(
        {"x": ("a", [1.0, 2.0], {"units": "s"}),
         "label": ("b", ["p # q", "r"], {"units": "1"}),
         "ok": ((), True)},
        coords={"a": [10, 20], "b": ["u", "v"]},
    )
    df = tidy_frame(ds)
    assert list(df.columns) == ["variable", "a", "b", "value", "units", "label", "ok"]
    x = df[df.variable == "x"]
    assert x["ok"].tolist() == [True, True] and x["label"].isna().all()
    lab = df[df.variable == "label"]
    assert lab["b"].tolist() == ["u", "v"] and lab["label"].tolist() == ["p # q", "r"]
    assert lab["value"].isna().all() and lab["a"].isna().all()
    assert str(df["a"].dtype) == "Int64"


def test_csv_text_with_hash_and_multiline_attrs_read_back(tmp_path):
    ds = xr.Dataset({"x": ("a", [1.5, np.nan]), "why": ("a", ["see # 3", ""])},
                    coords={"a": [1, 2]}, attrs={"note": "line one\nline two", "n": 3})
    path = mr.save_dataset(ds, tmp_path / "t.csv")
    text = path.read_text()
    assert text.startswith("# note: line one\\nline two\n# n: 3\n")
    df = _read(path)
    assert df["why"].tolist()[0] == "see # 3"
    assert df["value"].tolist()[0] == 1.5 and np.isnan(df["value"].tolist()[1])


def test_empty_dataset_writes_a_header(tmp_path):
    df = _read(mr.save_dataset(xr.Dataset(), tmp_path / "e.csv"))
    assert list(df.columns) == ["variable", "value", "units"] and df.empty


# ---------------------------------------------------------------------------------------------
# the documented recipes, run as written


def _doc_blocks():
    text = DOCS.read_text()
    csv_part = text[text.index("## CSV"):text.index("## JSON")]
    return re.findall(r"```python\n(.*?)```", csv_part, flags=re.S)


def test_docs_recipes_run_and_do_not_average_over_dims(qs, sim, sweep, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mr.save_dataset(qs, "qs.csv")
    mr.save_dataset(sim, "sim.csv")
    mr.save_dataset(sweep, "sweep.csv")
    blocks = _doc_blocks()
    assert len(blocks) == 3
    ns: dict = {}
    exec(blocks[0], ns)  # noqa: S102 - the documentation's own code
    # one row per q, one column per context: exactly penalty_mean (NaN where infeasible)
    table = ns["table"]
    assert list(table.index.names) == ["q"]
    expect = qs["penalty_mean"].transpose("q", "context").values
    np.testing.assert_allclose(table.values, expect, rtol=1e-12)
    n_feasible = qs["moe_feasible"].broadcast_like(qs["penalty_mean"]).sum()
    assert len(ns["feasible"]) == int(n_feasible)
    assert set(ns["why_not"]["moe_reason"]) == {
        str(r) for r in qs["moe_reason"].values if r}

    exec(blocks[1], ns)  # noqa: S102
    got = ns["mean_by_cell"]
    assert list(got.index.names) == ["batch_size", "layer"]
    want = sim["active_experts_mean"].transpose("batch_size", "layer").values.ravel()
    # the same mean of the same numbers (different summation order)
    np.testing.assert_allclose(got.values, want, rtol=1e-12)

    exec(blocks[2], ns)  # noqa: S102
    by_routing = ns["by_routing"]
    keys = ns["keys"]
    assert {"n_experts", "batch_size", "layer"} <= set(by_routing.index.names)
    assert "routing" in keys
    want = sweep["active_experts_mean"]
    for idx, row in by_routing.iterrows():
        cell = dict(zip(by_routing.index.names, idx, strict=True))
        for routing, v in row.items():
            assert v == pytest.approx(float(want.sel(routing=routing, **cell)), rel=1e-12)
    # leaving a dim out is an error, not a silent average over it
    act = ns["act"]
    with pytest.raises(ValueError, match="duplicate"):
        act.set_index(["routing", "batch_size"])["value"].unstack("routing")
    # docs/sweeps.md shows the same recipe
    text = (DOCS.parent / "sweeps.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```",
                          text[text.index("* **`.csv`**"):text.index("* **`.json`**")], flags=re.S)
    sweeps_ns: dict = {}
    exec(textwrap.dedent(block), sweeps_ns)  # noqa: S102
    pd.testing.assert_frame_equal(sweeps_ns["tbl"], by_routing)

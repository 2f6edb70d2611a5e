"""Plots (the ``plot`` extra): bands drawn from the data, axes, legend, caption, files, CLI."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import xarray as xr

pytest.importorskip("matplotlib")

import matplotlib.pyplot as plt  # noqa: E402

import mcroute as mr  # noqa: E402
from mcroute import McrouteError  # noqa: E402
from mcroute._labeled.results import provenance, summarize  # noqa: E402
from mcroute.cli import main  # noqa: E402
from mcroute.plot import caption_text, plot_band, plot_dataset, save_figure  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def sim():
    """Small simulate result: batch sizes spanning three decades, 50 trials."""
    return mr.simulate(mr.Zipf(64, 4, 1.2), [1, 4, 16, 64, 256, 1024], n_trials=50, rng=11)


@pytest.fixture(scope="module")
def qs_like():
    """Hand-built dataset following the conventions: penalty (model, hardware, context, trial)."""
    rng = np.random.default_rng(20240607)
    ctx = np.array([1024, 4096, 16384, 65536, 131072])
    growth = np.array([0.2, 0.3, 0.4])[:, None, None] * np.array([1.0, 1.3])[None, :, None]
    mean = 1 + growth * np.log2(ctx / 1024)[None, None, :]
    pen = mean[..., None] * np.exp(rng.normal(0.0, 0.1, mean.shape + (120,)))
    ds = xr.Dataset(
        {"penalty": (("model", "hardware", "context", "trial"), pen,
                     {"units": "1", "long_name": "dense / MoE decode throughput"})},
        coords={
            "model": ("model", ["mixtral", "qwen-moe", "olmoe"], {"units": "1",
                                                                 "long_name": "MoE model"}),
            "hardware": ("hardware", ["h100", "a100"], {"units": "1"}),
            "context": ("context", ctx, {"units": "tokens", "long_name": "context length"}),
            "trial": ("trial", np.arange(120), {"units": "1"}),
        },
    )
    ds = summarize(ds, ["penalty"], ci_prob=0.9, quantiles=(0.1, 0.5, 0.9))
    ds.attrs = provenance(seed=77, n_trials=120, ci_prob=0.9,
                          deployment={"n_gpus": 8, "weight_dtype": "bf16"}, q=0.5)
    return ds


def _png_size(path):
    """(width, height) in pixels from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _collection(ax, gid):
    found = [c for c in ax.collections if c.get_gid() == gid]
    assert len(found) == 1, [c.get_gid() for c in ax.collections]
    return found[0]


def _band_limits(coll, xvals):
    """Lowest and highest vertex y at each x of a fill_between polygon."""
    verts = np.concatenate([p.vertices for p in coll.get_paths()])
    lo, hi = [], []
    for xv in xvals:
        ys = verts[np.isclose(verts[:, 0], xv), 1]
        lo.append(ys.min())
        hi.append(ys.max())
    return np.array(lo), np.array(hi)


def _caption(ax):
    texts = [t for t in ax.texts if "trials" in t.get_text()]
    return texts[0].get_text().replace("\n", " ") if texts else None


# ---------------------------------------------------------------------------------------------
# bands, lines and axes


def test_bands_match_ci_and_quantiles(sim):
    ax = plot_band(sim, "active_experts", "batch_size")
    x = sim["batch_size"].values
    lo, hi = _band_limits(_collection(ax, "ci"), x)
    ci = sim["active_experts_ci"].isel(layer=0)
    np.testing.assert_allclose(lo, ci.sel(ci_bound="lower").values, rtol=1e-12)
    np.testing.assert_allclose(hi, ci.sel(ci_bound="upper").values, rtol=1e-12)
    lo, hi = _band_limits(_collection(ax, "band"), x)
    q = sim["active_experts_q"].isel(layer=0)
    np.testing.assert_allclose(lo, q.sel(quantile=0.05).values, rtol=1e-12)
    np.testing.assert_allclose(hi, q.sel(quantile=0.95).values, rtol=1e-12)
    (line,) = ax.get_lines()
    np.testing.assert_array_equal(line.get_xdata(), x)
    np.testing.assert_allclose(line.get_ydata(), sim["active_experts_mean"].isel(layer=0))
    # the single-step band is wider than the CI of the mean where draws vary (B = 16 here)
    i = 2
    assert hi[i] - lo[i] > np.ptp(ci.values[i])


def test_legend_names_both_bands(sim):
    ax = plot_band(sim, "active_experts", "batch_size")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["Monte Carlo mean", "95% CI of mean", "5–95% of single steps"]
    ax = plot_band(sim, "active_experts", "batch_size", ci=False, band=False)
    assert len(ax.collections) == 0 and ax.get_legend() is None


def test_axis_labels_carry_units(sim):
    ax = plot_band(sim, "tokens_per_active_expert", "batch_size")
    assert ax.get_xlabel() == "tokens per decode microbatch (B) [tokens]"
    assert ax.get_ylabel().replace("\n", " ").endswith("[tokens]")
    # dimensionless units ("1") are not written as "[1]"
    ax = plot_band(sim, "device_imbalance", "batch_size")
    assert "[1]" not in ax.get_ylabel()


def test_log_axes_auto(sim):
    ax = plot_band(sim, "active_experts", "batch_size")
    assert ax.get_xscale() == "log"  # 1..1024 spans three decades
    assert ax.get_yscale() == "linear"  # 4..64 experts spans 1.2 decades
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "4", "16", "64", "256", "1k"]
    ax = plot_band(sim.sel(batch_size=[4, 16, 64]), "active_experts", "batch_size")
    assert ax.get_xscale() == "linear"  # 4..64 spans 1.2 decades
    ax = plot_band(sim, "active_experts", "batch_size", logx=False, logy=True)
    assert (ax.get_xscale(), ax.get_yscale()) == ("linear", "log")


def test_log_y_for_values_spanning_decades_and_not_for_signed_values():
    b = np.array([1, 2, 4, 8])
    ds = xr.Dataset(
        {"step_time": ("batch_size", [1e-4, 1e-3, 1e-2, 2e-2], {"units": "s"}),
         "delta": ("batch_size", [-1.0, 1e-3, 1.0, 100.0], {"units": "s"})},
        coords={"batch_size": ("batch_size", b, {"units": "tokens"})},
    )
    ax = plot_band(ds, "step_time", "batch_size")
    assert (ax.get_xscale(), ax.get_yscale()) == ("linear", "log")
    assert ax.get_ylabel() == "step_time [s]"
    ax = plot_band(ds, "delta", "batch_size")
    assert ax.get_yscale() == "linear"
    with pytest.raises(McrouteError, match="logy=True needs positive values"):
        plot_band(ds, "delta", "batch_size", logy=True)
    with pytest.raises(McrouteError, match="logx must be 'auto', True or False"):
        plot_band(ds, "delta", "batch_size", logx="yes")


def test_plain_variable_is_one_line_without_bands(sim):
    ax = plot_band(sim, "active_experts_exact", "batch_size")
    assert len(ax.get_lines()) == 1 and len(ax.collections) == 0
    assert ax.get_legend() is None
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(),
                               sim["active_experts_exact"].isel(layer=0))


def test_summary_name_means_the_base_variable(sim):
    a = plot_band(sim, "active_experts_mean", "batch_size")
    b = plot_band(sim, "active_experts", "batch_size")
    np.testing.assert_array_equal(a.get_lines()[0].get_ydata(), b.get_lines()[0].get_ydata())
    assert a.get_ylabel() == b.get_ylabel()


def test_per_trial_variable_without_summaries_is_summarised(sim):
    raw = sim[["active_experts"]].assign_attrs(sim.attrs)
    ax = plot_band(raw, "active_experts", "batch_size")
    lo, hi = _band_limits(_collection(ax, "ci"), sim["batch_size"].values)
    ci = sim["active_experts_ci"].isel(layer=0)
    np.testing.assert_allclose(lo, ci.sel(ci_bound="lower"), rtol=1e-12)
    np.testing.assert_allclose(hi, ci.sel(ci_bound="upper"), rtol=1e-12)


def test_hue_draws_one_line_and_band_pair_per_value(qs_like):
    ax = plot_band(qs_like, "penalty", "context", hue="model", hardware="a100")
    models = list(qs_like["model"].values)
    assert len(ax.get_lines()) == len(models)
    assert [t.get_text() for t in ax.get_legend().get_texts()][:3] == models
    assert ax.get_legend().get_title().get_text() == "MoE model"
    labels = [t.get_text() for t in ax.get_legend().get_texts()][3:]
    assert labels == ["90% CI of mean", "10–90% of single steps"]
    ctx = qs_like["context"].values
    for line, m in zip(ax.get_lines(), models, strict=True):
        ci = qs_like["penalty_ci"].sel(model=m, hardware="a100")
        coll = _collection(ax, f"ci:{m}")
        lo, hi = _band_limits(coll, ctx)
        np.testing.assert_allclose(lo, ci.sel(ci_bound="lower"), rtol=1e-12)
        np.testing.assert_allclose(hi, ci.sel(ci_bound="upper"), rtol=1e-12)
        np.testing.assert_allclose(line.get_ydata(),
                                   qs_like["penalty_mean"].sel(model=m, hardware="a100"))
        # band in the colour of its line
        np.testing.assert_allclose(coll.get_facecolor()[0][:3],
                                   plt.matplotlib.colors.to_rgb(line.get_color()))
    # context 1k..128k spans 2.1 decades
    assert ax.get_xscale() == "log"
    assert "hardware=a100" in _caption(ax)


def test_unselected_dims_are_an_error_naming_them(qs_like):
    with pytest.raises(McrouteError, match=r"also varies along hardware; select one value of "
                       r"hardware \(2 values: h100, a100\)"):
        plot_band(qs_like, "penalty", "context", hue="model")
    with pytest.raises(McrouteError, match="model, hardware"):
        plot_band(qs_like, "penalty", "context")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"var": "nope", "x": "context"}, "plottable variables: penalty"),
        ({"var": "penalty", "x": "nope"}, "x 'nope' is not a dim"),
        ({"var": "penalty", "x": "context", "hue": "context"}, "hue and x must be different"),
        ({"var": "penalty", "x": "context", "hue": "model", "hardware": "tpu"},
         "allowed values are h100, a100"),
        ({"var": "penalty", "x": "context", "hue": "model", "gpu": "h100"},
         "'gpu' is not a dim"),
        ({"var": "penalty", "x": "quantile", "hue": "model"}, "does not vary along 'quantile'"),
        ({"var": "penalty", "x": "context", "ci": "yes"}, "ci must be True or False"),
    ],
)
def test_bad_arguments(qs_like, kwargs, message):
    with pytest.raises(McrouteError, match=message):
        plot_band(qs_like, **kwargs)


def test_caption_lists_the_assumptions(sim):
    ax = plot_band(sim, "active_experts", "batch_size")
    cap = _caption(ax)
    assert cap.startswith("routing: zipf(alpha=1.2, layer_seed=0, E=64, permute=True, k=4)")
    assert cap.endswith("50 trials; 95% CI; seed 11")
    assert "created_at" not in cap and "mcroute_version" not in cap
    ax = plot_band(sim, "active_experts", "batch_size", caption=False)
    assert _caption(ax) is None


def test_caption_text_shortens_specs():
    ds = xr.Dataset(attrs={"routing": json.dumps({"kind": "popularity", "top_k": 2,
                                                  "weights": [0.1] * 300}),
                           "model": json.dumps({"name": "mixtral-8x7b", "n_layers": 32}),
                           "n_trials": 10})
    assert caption_text(ds) == (
        "model: mixtral-8x7b; routing: popularity(k=2, weights=[300 values]); 10 trials")
    assert caption_text(ds, {"model": "olmoe"}) == (
        "routing: popularity(k=2, weights=[300 values]); model=olmoe; 10 trials")


def test_draws_into_given_axes(sim):
    fig, axes = plt.subplots(1, 2)
    out = plot_band(sim, "active_experts", "batch_size", ax=axes[1])
    assert out is axes[1] and len(axes[1].get_lines()) == 1 and not axes[0].get_lines()


def test_plot_dataset_defaults(sim, qs_like):
    ax = plot_dataset(sim)
    assert ax.get_ylabel() == "distinct experts touched in the microbatch [experts]"
    assert ax.get_xscale() == "log"
    # penalty is preferred, the numeric dim is x and the one remaining scenario dim is the hue
    ax = plot_dataset(qs_like, hardware="h100")
    assert ax.get_legend().get_title().get_text() == "MoE model"
    assert ax.get_xlabel() == "context length [tokens]"
    with pytest.raises(McrouteError, match="no dim with more than one value"):
        plot_dataset(mr.simulate(mr.Uniform(8, 2), 4, n_trials=20, rng=3))


# ---------------------------------------------------------------------------------------------
# files


def test_render_png_of_simulation(sim, tmp_path):
    ax = plot_band(sim, "active_experts", "batch_size")
    out = save_figure(ax.figure, tmp_path / "fig.png")
    w, h = _png_size(out)
    # 7 x 4.5 in at 150 dpi, grown by the caption and cropped to the drawn area
    assert 800 <= w <= 1400 and 500 <= h <= 1000
    assert out.stat().st_size > 20_000
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]  # no temporary file left


def test_save_figure_formats_and_errors(sim, tmp_path):
    ax = plot_band(sim, "active_experts", "batch_size")
    assert save_figure(ax, tmp_path / "f.pdf").read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in save_figure(ax.figure, tmp_path / "f.svg").read_bytes()[:2000]
    with pytest.raises(McrouteError, match=r"must end in \.png, \.pdf or \.svg"):
        save_figure(ax.figure, tmp_path / "f.jpg")
    with pytest.raises(McrouteError, match="does not exist"):
        save_figure(ax.figure, tmp_path / "missing" / "f.png")
    with pytest.raises(McrouteError, match="Figure or Axes"):
        save_figure("not a figure", tmp_path / "g.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pdf", "f.svg"]


def test_missing_matplotlib_is_a_clear_error(sim, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(McrouteError, match=r"pip install 'mcroute\[plot\]'"):
        plot_band(sim, "active_experts", "batch_size")


def test_import_does_not_need_matplotlib():
    code = textwrap.dedent("""
        import sys
        sys.modules["matplotlib"] = None  # as if not installed
        import mcroute.plot
        import xarray as xr
        try:
            mcroute.plot.plot_band(xr.Dataset({"a": ("x", [1.0, 2.0])}), "a", "x")
        except mcroute.McrouteError as exc:
            print(exc)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert res.stdout.strip() == (
        "plotting needs matplotlib: install the plot extra: pip install 'mcroute[plot]'")


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_round_trip(sim, qs_like, tmp_path, capsys):
    nc = mr.save_dataset(sim, tmp_path / "sim.nc")
    png = tmp_path / "sim.png"
    assert main(["plot", str(nc), "--output", str(png)]) == 0
    assert "wrote" in capsys.readouterr().err
    w, h = _png_size(png)
    assert w > 800 and h > 500
    assert plt.get_fignums() == []  # the CLI closes its figure

    nc = mr.save_dataset(qs_like, tmp_path / "qs.nc")
    svg = tmp_path / "qs.svg"
    rc = main(["plot", str(nc), "--var", "penalty", "--x", "context", "--hue", "model",
               "--sel", "hardware=h100", "--logx", "off", "--no-band", "--output", str(svg)])
    assert rc == 0
    assert b"<svg" in svg.read_bytes()[:2000]
    # --sel on an integer coordinate accepts the k suffix; model then is the x axis
    rc = main(["plot", str(nc), "--x", "model", "--sel", "hardware=a100", "context=64k",
               "--output", str(tmp_path / "m.png")])
    assert rc == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.nc"], "results file 'missing.nc' does not exist"),
        (["qs.nc", "--var", "nope"], "plottable variables: penalty"),
        (["qs.nc", "--x", "nope"], "x 'nope' is not a dim"),
        (["qs.nc", "--hue", "hardware"], "also varies along model"),
        (["qs.nc", "--sel", "hardware"], "--sel expects DIM=VALUE"),
        (["qs.nc", "--sel", "gpu=h100"], "'gpu' is not a dim"),
        (["qs.nc", "--sel", "context=big", "hardware=h100"], "--sel context must be a positive"),
        (["qs.nc", "--sel", "hardware=tpu"], "allowed values are h100, a100"),
        (["bad.nc"], "cannot read"),
    ],
)
def test_cli_errors_are_one_line(qs_like, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    mr.save_dataset(qs_like, tmp_path / "qs.nc")
    (tmp_path / "bad.nc").write_text("not netcdf\n")
    assert main(["plot", *args, "--output", "out.png"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mcroute plot: error: ") and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "out.png").exists()


def test_cli_bad_output_and_missing_matplotlib(sim, tmp_path, monkeypatch, capsys):
    nc = mr.save_dataset(sim, tmp_path / "sim.nc")
    assert main(["plot", str(nc), "--output", str(tmp_path / "f.gif")]) == 2
    assert "--output must end in .png, .pdf or .svg" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["plot", str(nc), "--output", str(tmp_path / "f.png")]) == 2
    assert "pip install 'mcroute[plot]'" in capsys.readouterr().err


def test_infeasible_points_leave_gaps(qs_like):
    ds = qs_like[["penalty"]].copy(deep=True).assign_attrs(qs_like.attrs)
    # mixtral on h100 infeasible from 64k tokens of context on: NaN trials, NaN summaries
    ds["penalty"].loc[{"model": "mixtral", "hardware": "h100", "context": [65536, 131072]}] = np.nan
    ds = summarize(ds, ["penalty"], ci_prob=0.9)
    ax = plot_band(ds, "penalty", "context", hue="model", hardware="h100")
    verts = np.concatenate([p.vertices for p in _collection(ax, "ci:mixtral").get_paths()])
    assert set(np.unique(verts[:, 0])) == {1024.0, 4096.0, 16384.0}
    assert np.isnan(ax.get_lines()[0].get_ydata()[3:]).all()


def test_cli_sel_accepts_zero_for_integer_coords(tmp_path):
    from mcroute.cli import main

    ds = mr.simulate(mr.Uniform(16, 2), [1, 4, 16], 20, n_layers=2, rng=0)
    nc = mr.save_dataset(ds, tmp_path / "r.nc")
    out = tmp_path / "f.png"
    assert main(["plot", str(nc), "--var", "active_experts", "--x", "batch_size",
                 "--sel", "layer=0", "--output", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

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
    texts = [t for t in ax.texts if t.get_gid() == "caption"]
    return texts[0].get_text().replace("\n", " ") if texts else None


def _data_lines(ax):
    """The mean lines (not the reference line, error-bar caps or infeasible markers)."""
    return [ln for ln in ax.get_lines() if ln.get_gid() is None]


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
    (line,) = _data_lines(ax)
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
    # integers spanning a factor of 8 or more get a base-2 axis too (4..64 is 16x)
    ax = plot_band(sim.sel(batch_size=[4, 16, 64]), "active_experts", "batch_size")
    assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
    ax = plot_band(sim.sel(batch_size=[1, 4]), "active_experts", "batch_size")
    assert ax.get_xscale() == "linear"  # a factor of 4
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
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")  # x: integers 1..8
    assert ax.get_ylabel() == "step time [s]"  # no long_name: the name in words
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
    assert len(_data_lines(ax)) == len(models)
    assert [t.get_text() for t in ax.get_legend().get_texts()][:3] == models
    assert ax.get_legend().get_title().get_text() == "model"  # plain, not the long_name
    labels = [t.get_text() for t in ax.get_legend().get_texts()][3:]
    assert labels == ["90% CI of mean", "10–90% of single steps", "penalty = 1 (parity)"]
    ctx = qs_like["context"].values
    for line, m in zip(_data_lines(ax), models, strict=True):
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
    # context 1k..128k: log2, a tick at each value
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1k", "4k", "16k", "64k", "128k"]
    assert _caption(ax).startswith("8 × a100")  # the hardware held fixed is the subject


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


def test_caption_says_the_assumptions_in_words(sim):
    ax = plot_band(sim, "active_experts", "batch_size")
    assert _caption(ax) == ("Zipf routing (α = 1.2) over 64 experts, top-4; "
                            "50 trials, 95% CI, seed 11")
    ax = plot_band(sim, "active_experts", "batch_size", caption=False)
    assert _caption(ax) is None


def test_caption_text_of_a_deployment():
    ds = xr.Dataset(attrs={
        "model": json.dumps({"name": "deepseek-v3", "n_layers": 61}),
        "hardware": json.dumps({"name": "h200", "hbm_bytes": 1.5e11}),
        "deployment": json.dumps({"n_gpus": 8, "weight_dtype": "fp8", "kernel_card": "hopper",
                                  "attention_parallel": "data", "usable_bytes_per_gpu": 1e11}),
        "routing": json.dumps({"kind": "group_limited", "n_groups": 8, "topk_groups": 4,
                               "base": {"kind": "uniform", "n_experts": 256, "top_k": 8}}),
        "q": json.dumps({"kind": "samples", "median": 0.844, "q05": 0.654, "q95": 1.08,
                         "source": {"method": "fit"}}),
        "kernels": "calibrated", "dense_style": "widen", "n_trials": 200, "ci_prob": 0.95,
        "seed": 0})
    assert caption_text(ds) == (
        "deepseek-v3 on 8 × h200, fp8 weights, data-parallel attention, calibrated kernels; "
        "group-limited uniform routing (4 of 8 groups); q ≈ 0.844 (90%: 0.654–1.08) from the "
        "benchmark fit; dense twin: widen; 200 trials, 95% CI, seed 0")
    # narrow: the least important phrases go first, the subject and the statistics stay
    short = caption_text(ds, {"context": 131072}, width=60)
    lines = short.split("\n")
    assert len(lines) <= 2 and all(len(line) <= 60 for line in lines)
    assert short.startswith("deepseek-v3 on 8 × h200")
    assert short.replace("\n", " ").endswith("context = 128k; 200 trials, 95% CI, seed 0")
    assert "dense twin" not in short
    # the dims drawn are not repeated in the caption
    assert "deepseek-v3" not in caption_text(ds, exclude=["model"])


def test_caption_text_keeps_long_lists_out():
    ds = xr.Dataset(attrs={"routing": json.dumps({"kind": "popularity", "top_k": 2,
                                                  "weights": [0.1] * 300}),
                           "model": json.dumps({"name": "mixtral-8x7b", "n_layers": 32}),
                           "n_trials": 10})
    assert caption_text(ds) == "mixtral-8x7b; explicit-popularity routing; 10 trials"
    assert caption_text(ds, {"model": "olmoe"}) == (
        "olmoe; explicit-popularity routing; 10 trials")
    assert caption_text(ds, {"layer": 3}) == (
        "mixtral-8x7b; explicit-popularity routing; layer = 3; 10 trials")


def test_draws_into_given_axes(sim):
    fig, axes = plt.subplots(1, 2)
    out = plot_band(sim, "active_experts", "batch_size", ax=axes[1])
    assert out is axes[1] and len(_data_lines(axes[1])) == 1 and not axes[0].get_lines()


def test_plot_dataset_defaults(sim, qs_like):
    ax = plot_dataset(sim)
    assert ax.get_ylabel() == "active experts [experts]"  # the long_name is over 40 characters
    assert ax.get_xscale() == "log"
    # penalty is preferred, the numeric dim is x and the one remaining scenario dim is the hue
    ax = plot_dataset(qs_like, hardware="h100")
    assert ax.get_legend().get_title().get_text() == "model"
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
    assert np.isnan(_data_lines(ax)[0].get_ydata()[3:]).all()


def test_cli_sel_accepts_zero_for_integer_coords(tmp_path):
    from mcroute.cli import main

    ds = mr.simulate(mr.Uniform(16, 2), [1, 4, 16], 20, n_layers=2, rng=0)
    nc = mr.save_dataset(ds, tmp_path / "r.nc")
    out = tmp_path / "f.png"
    assert main(["plot", str(nc), "--var", "active_experts", "--x", "batch_size",
                 "--sel", "layer=0", "--output", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# what a reader needs (issue 12): log2 context axis, one-line labels that keep to their panel,
# a caption of two lines in words, parity line, infeasible points, visible CI, legend outside


@pytest.fixture(scope="module")
def mix():
    """Mixtral on one H200, two values of q: no room for a 512k cache (infeasible there)."""
    return mr.qs_analysis("mixtral-8x7b", "h200", 1, [1.5, 3.0],
                          ["4k", "8k", "16k", "32k", "64k", "128k", "512k"], n_trials=16, rng=0)


@pytest.fixture(scope="module")
def switch():
    """Switch-C does not fit on 8 H200 at any context: every penalty is NaN."""
    return mr.qs_analysis("switch-c-2048", "h200", 8, 5.0, ["4k", "32k", "128k"], n_trials=8,
                          rng=0)


def _drawn(ax):
    ax.figure.canvas.draw()
    return ax.figure.canvas.get_renderer()


def test_context_axis_is_log2_with_k_ticks(mix):
    ax = plot_band(mix, "penalty", "context", hue="q")
    assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        "4k", "8k", "16k", "32k", "64k", "128k", "512k"]
    assert ax.get_xlabel() == "context length L [tokens]"
    # the ticks are evenly spaced on screen (doublings), not crowded at the left edge
    _drawn(ax)
    px = ax.transData.transform(np.c_[mix["context"].values[:6], np.ones(6)])[:, 0]
    np.testing.assert_allclose(np.diff(px), np.diff(px)[0], rtol=1e-6)


def test_plot_dataset_puts_context_on_x(mix):
    ax = plot_dataset(mix)
    assert ax.get_xlabel().startswith("context") and ax.get_legend().get_title().get_text() == "q"


def test_labels_are_one_line_and_panels_do_not_overlap(mix):
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))  # no layout engine: plot_band adds one
    for ax, q in zip(axes, [1.5, 3.0, 1.5], strict=True):
        plot_band(mix, "penalty", "context", ax=ax, q=q)
    assert fig.get_layout_engine() is not None
    renderer = _drawn(axes[0])
    for ax in axes:
        assert "\n" not in ax.get_ylabel() and "\n" not in ax.get_xlabel()
        assert ax.get_ylabel() == "penalty (dense / MoE throughput)"
    boxes = [ax.get_tightbbox(renderer) for ax in axes]  # labels, legend and caption included
    for left, right in zip(boxes, boxes[1:], strict=False):
        assert left.x1 <= right.x0 + 0.5, (left, right)


def test_caption_is_two_lines_of_words_within_its_axes(mix):
    ax = plot_band(mix, "penalty", "context", hue="q")
    cap = next(t for t in ax.texts if t.get_gid() == "caption")
    text = cap.get_text()
    assert 1 <= text.count("\n") + 1 <= 2
    assert text.startswith("mixtral-8x7b on 1 × h200")
    assert text.replace("\n", " ").endswith("16 trials, 95% CI, seed 0")
    for raw in ("{", "}", '"', "kernel_card", "dense_twin_example", "n_gpus", "q = 1.5"):
        assert raw not in text, raw
    renderer = _drawn(ax)
    box = cap.get_window_extent(renderer)
    assert box.x1 <= ax.figure.bbox.x1 and box.y0 >= ax.figure.bbox.y0


def test_reference_line_at_penalty_one(qs_like, sim):
    ax = plot_band(qs_like, "penalty", "context", hue="model", hardware="h100")
    refs = [ln for ln in ax.get_lines() if ln.get_gid() == "ref"]
    assert len(refs) == 1 and list(refs[0].get_ydata()) == [1.0, 1.0]
    assert refs[0].get_label() == "penalty = 1 (parity)"
    lo, hi = ax.get_ylim()
    assert lo < 1.0 < hi
    # the reference is kept in view when every penalty is far above it
    far = qs_like[["penalty"]].assign(penalty=qs_like["penalty"] + 5).assign_attrs(qs_like.attrs)
    ax = plot_band(far, "penalty", "context", hue="model", hardware="h100")
    assert ax.get_ylim()[0] < 1.0
    assert not [ln for ln in plot_band(sim, "active_experts", "batch_size").get_lines()
                if ln.get_gid() == "ref"]
    ax = plot_band(qs_like, "penalty", "context", hue="model", hardware="h100", ref=None)
    assert not [ln for ln in ax.get_lines() if ln.get_gid() == "ref"]
    ax = plot_band(sim, "active_experts", "batch_size", ref=32)
    (ref,) = [ln for ln in ax.get_lines() if ln.get_gid() == "ref"]
    assert list(ref.get_ydata()) == [32.0, 32.0]
    with pytest.raises(McrouteError, match="ref must be 'auto', a number or None"):
        plot_band(sim, "active_experts", "batch_size", ref="yes")


def test_infeasible_points_are_marked_and_labelled(mix):
    ax = plot_band(mix, "penalty", "context", hue="q")
    mean = mix["penalty_mean"]
    for q in (1.5, 3.0):
        bad = mix["context"].values[np.isnan(mean.sel(q=q).values)]
        assert list(bad) == [524288]  # only the 512k point is infeasible
        (mark,) = [ln for ln in ax.get_lines() if ln.get_gid() == f"infeasible:{q:g}"]
        np.testing.assert_array_equal(mark.get_xdata(), bad)
        assert mark.get_marker() == "x"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "MoE and dense twin infeasible" in labels  # at q = 3 the twin does not fit either
    assert not [t for t in ax.texts if t.get_gid() == "infeasible_note"]  # points are left


def test_no_feasible_point_gets_a_note_with_the_reason(switch):
    assert not bool(switch["moe_feasible"].any())
    ax = plot_band(switch, "penalty", "context")
    (mark,) = [ln for ln in ax.get_lines() if ln.get_gid() == "infeasible"]
    np.testing.assert_array_equal(mark.get_xdata(), switch["context"].values)
    (note,) = [t for t in ax.texts if t.get_gid() == "infeasible_note"]
    reason = str(switch["moe_reason"].values[0])
    assert "MoE infeasible" in note.get_text()
    assert reason.split()[0] in note.get_text()
    assert ax.get_ylim() == (0.0, 2.0)  # the parity line in the middle, not a lone dot
    assert "MoE infeasible" in [t.get_text() for t in ax.get_legend().get_texts()]


def _narrow_ds(noise):
    """Means 1..100 over x, trials spread by ``noise``: a narrow or a wide CI of the mean."""
    rng = np.random.default_rng(4)
    x = np.array([1, 2, 4, 8, 16])
    vals = np.linspace(1, 100, x.size)[:, None] + noise * rng.standard_normal((x.size, 400))
    ds = xr.Dataset({"v": (("batch_size", "trial"), vals, {"units": "1"})},
                    coords={"batch_size": x, "trial": np.arange(400)})
    return summarize(ds, ["v"])


def test_narrow_ci_gets_error_bars():
    ds = _narrow_ds(0.5)  # CI half-width ~0.05 on an axis of ~100: invisible as a band alone
    ax = plot_band(ds, "v", "batch_size", logx=False)
    (bars,) = [c for c in ax.collections if c.get_gid() == "ci_bars"]
    segs = bars.get_segments()
    assert len(segs) == ds.sizes["batch_size"]
    ci = ds["v_ci"]
    for seg, lo, hi in zip(segs, ci.sel(ci_bound="lower").values, ci.sel(ci_bound="upper").values,
                           strict=True):
        np.testing.assert_allclose(sorted(seg[:, 1]), [lo, hi], rtol=1e-12)
    assert [ln for ln in ax.get_lines() if ln.get_gid() == "ci_caps"]
    # a wide band is seen as it is: no bars
    ax = plot_band(_narrow_ds(300.0), "v", "batch_size", logx=False)
    assert not [c for c in ax.collections if c.get_gid() == "ci_bars"]


def test_legend_is_outside_the_axes(mix, qs_like):
    for ax in (plot_band(mix, "penalty", "context", hue="q"),
               plot_band(qs_like, "penalty", "context", hue="model", hardware="a100")):
        renderer = _drawn(ax)
        leg = ax.get_legend().get_window_extent(renderer)
        box = ax.get_window_extent(renderer)
        assert leg.x0 >= box.x1, (leg, box)
        assert leg.x1 <= ax.figure.bbox.x1 + 0.5
    ax = plot_band(mix, "penalty", "context", hue="q", legend=False)
    assert ax.get_legend() is None


def test_large_values_get_thousands_separators():
    ds = xr.Dataset({"throughput": ("context", [20500.0, 11000.0, 800.0], {"units": "tokens/s"})},
                    coords={"context": ("context", [4096, 16384, 65536], {"units": "tokens"})})
    ax = plot_band(ds, "throughput", "context")
    _drawn(ax)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert "20,000" in labels or "15,000" in labels, labels


def test_cli_ref_and_legend_flags(mix, tmp_path, capsys):
    nc = mr.save_dataset(mix, tmp_path / "mix.nc")
    assert main(["plot", str(nc), "--ref", "none", "--no-legend",
                 "--output", str(tmp_path / "a.png")]) == 0
    assert main(["plot", str(nc), "--ref", "2", "--output", str(tmp_path / "b.png")]) == 0
    assert main(["plot", str(nc), "--ref", "high", "--output", str(tmp_path / "c.png")]) == 2
    assert "--ref must be auto, none or a finite number" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


def test_categorical_x_draws_points_with_error_bars(qs_like):
    ds = qs_like.sel(context=65536)
    ax = plot_band(ds, "penalty", "model", hue="hardware")
    assert [t.get_text() for t in ax.get_xticklabels()] == list(ds["model"].values)
    lines = _data_lines(ax)
    assert len(lines) == 2 and all(ln.get_linestyle() == "None" for ln in lines)
    # the two hardware values sit side by side at each model, not on top of each other
    x0, x1 = (ln.get_xdata() for ln in lines)
    assert np.all(x0 < x1) and np.allclose(np.round((x0 + x1) / 2), [0, 1, 2])
    for hw, line in zip(ds["hardware"].values, lines, strict=True):
        (bars,) = [c for c in ax.collections if c.get_gid() == f"ci_bars:{hw}"]
        ci = ds["penalty_ci"].sel(hardware=hw)
        for seg, lo, hi in zip(bars.get_segments(), ci.sel(ci_bound="lower").values,
                               ci.sel(ci_bound="upper").values, strict=True):
            np.testing.assert_allclose(sorted(seg[:, 1]), [lo, hi], rtol=1e-12)
        np.testing.assert_allclose(line.get_ydata(), ds["penalty_mean"].sel(hardware=hw))
        assert [c for c in ax.collections if c.get_gid() == f"band:{hw}"]
    assert not [c for c in ax.collections if str(c.get_gid()).startswith("ci:")]  # no fill

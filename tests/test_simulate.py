"""The labeled Monte Carlo: Dataset conventions, intervals, reproducibility."""

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import mcroute as mr
from mcroute._labeled.simulate import STAT_META


def test_dataset_conventions():
    ds = mr.simulate(mr.Zipf(64, 4, 1.0), [1, 16, 256], 64, n_layers=2, n_devices=4, rng=3)
    for dim in ds.dims:
        assert dim in ds.coords, f"dim {dim} has no coordinate"
    for name, var in ds.variables.items():
        assert "units" in var.attrs, f"{name} has no units"
    for name in STAT_META:
        assert ds[name].dims == ("batch_size", "trial", "layer")
        assert set(ds[f"{name}_ci"].dims) == {"batch_size", "layer", "ci_bound"}
        assert set(ds[f"{name}_q"].dims) == {"batch_size", "layer", "quantile"}
        assert f"{name}_mean" in ds and f"{name}_se" in ds
    assert list(ds["ci_bound"].values) == ["lower", "upper"]
    for key in ("mcroute_version", "created_at", "n_trials", "ci_prob", "seed", "routing"):
        assert key in ds.attrs
    assert ds.attrs["seed"] == 3 and ds.attrs["n_trials"] == 64
    assert ds["hot_expert"].dims == ("layer", "rank")


def test_seed_repeats_the_run_and_batch_subsets_reproduce():
    r = mr.LogNormal(32, 2, 1.0)
    a = mr.simulate(r, [4, 64], 40, rng=None)
    b = mr.simulate(r, [64], 40, rng=a.attrs["seed"])
    xr.testing.assert_equal(a["active_experts"].sel(batch_size=[64]), b["active_experts"])


def test_means_match_exact_and_ci_brackets():
    r = mr.Zipf(128, 8, 1.0)
    ds = mr.simulate(r, [8, 64], 2000, rng=12)
    m = ds["active_experts_mean"].values[:, 0]
    se = ds["active_experts_se"].values[:, 0]
    exact = ds["active_experts_exact"].values[:, 0]
    assert np.all(np.abs(m - exact) <= 4 * se)  # 4 SE of the Monte Carlo mean
    ci = ds["active_experts_ci"].values[:, 0]
    assert np.all(ci[:, 0] <= m) and np.all(m <= ci[:, 1])
    # a 95% t-interval has half-width ~1.96 SE
    np.testing.assert_allclose((ci[:, 1] - ci[:, 0]) / 2, se * 1.961, rtol=1e-3)


def test_ci_shrinks_but_quantile_band_does_not():
    r = mr.Uniform(64, 4)
    small = mr.simulate(r, 32, 200, rng=1)
    big = mr.simulate(r, 32, 3200, rng=1)
    w_small = float(np.diff(small["active_experts_ci"].values.ravel())[0])
    w_big = float(np.diff(big["active_experts_ci"].values.ravel())[0])
    assert w_big < 0.4 * w_small  # ~1/4 expected (16× the trials)
    q_small = small["active_experts_q"].values.ravel()
    q_big = big["active_experts_q"].values.ravel()
    assert q_big[-1] - q_big[0] > 0.6 * (q_small[-1] - q_small[0])


def test_blocks_equal_one_draw(monkeypatch):
    import mcroute._labeled.simulate as sim

    r = mr.Uniform(32, 4)
    whole = mr.simulate(r, 16, 100, rng=9)
    monkeypatch.setattr(sim, "_BLOCK_ELEMENTS", 32 * 16)  # one chunk of 16 trials per block
    blocks = mr.simulate(r, 16, 100, rng=9)
    np.testing.assert_array_equal(whole["active_experts"].values, blocks["active_experts"].values)


def test_optional_outputs():
    ds = mr.simulate(mr.Uniform(16, 2), [4, 8], 30, rng=0, expert_load=True, histogram=True)
    assert ds["expert_load"].dims == ("batch_size", "trial", "layer", "expert")
    np.testing.assert_array_equal(ds["expert_load"].sum("expert").values, [[[8]] * 30, [[16]] * 30])
    h = ds["load_histogram"]
    # experts per microbatch sum to E; tokens sum to B·k
    np.testing.assert_allclose(h.sum("load").values, 16)
    np.testing.assert_allclose((h * h["load"]).sum("load").values[:, 0], [8, 16])


def test_scalar_batch_squeezes():
    ds = mr.simulate(mr.Uniform(16, 2), 4, 20, rng=0)
    assert "batch_size" not in ds.dims and int(ds["batch_size"]) == 4


@settings(max_examples=15, deadline=None)
@given(perm_seed=st.integers(0, 1000), b=st.integers(1, 40))
def test_permuting_expert_labels_permutes_loads(perm_seed, b):
    w = np.array([5.0, 1, 1, 3, 0.5, 2, 2, 1])
    perm = np.random.default_rng(perm_seed).permutation(8)
    pa = mr.Popularity(w, top_k=2).inclusion_probabilities()[0]
    pb = mr.Popularity(w[perm], top_k=2).inclusion_probabilities()[0]
    np.testing.assert_allclose(pb, pa[perm], atol=1e-12)
    ea = mr.expected_active_experts(mr.Popularity(w, top_k=2), b)
    eb = mr.expected_active_experts(mr.Popularity(w[perm], top_k=2), b)
    assert ea == pytest.approx(eb, abs=1e-10)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(3, 60))
def test_ci_contains_mean_property(seed, n):
    ds = mr.simulate(mr.Zipf(16, 2, 1.0), [3, 9], n, rng=seed)
    for name in STAT_META:
        m = ds[f"{name}_mean"]
        ci = ds[f"{name}_ci"]
        assert bool((ci.sel(ci_bound="lower") <= m + 1e-12).all())
        assert bool((m <= ci.sel(ci_bound="upper") + 1e-12).all())


def test_export_round_trip(tmp_path):
    ds = mr.simulate(mr.Uniform(16, 2), [4, 8], 20, rng=0)
    nc = mr.save_dataset(ds, tmp_path / "r.nc")
    back = xr.open_dataset(nc, engine="h5netcdf")
    np.testing.assert_array_equal(back["active_experts"].values, ds["active_experts"].values)
    assert back.attrs["seed"] == 0
    back.close()
    csv = mr.save_dataset(ds, tmp_path / "r.csv").read_text()
    assert "# seed: 0" in csv and "\"variable\",\"batch_size\"" in csv
    import json

    js = json.loads(mr.save_dataset(ds, tmp_path / "r.json").read_text())
    assert js["attrs"]["seed"] == 0 and "active_experts_mean" in js["data_vars"]
    with pytest.raises(mr.McrouteError, match=r"\.nc, \.csv or \.json"):
        mr.save_dataset(ds, tmp_path / "r.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.json", "r.nc"]


def test_outputs_get_normal_file_mode(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = mr.save_dataset(mr.simulate(mr.Uniform(8, 2), 2, 4, rng=0), tmp_path / "m.nc")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644

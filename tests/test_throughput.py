"""Tests of decode_throughput (mcroute/_labeled/throughput.py) and ``mcroute throughput``."""

import dataclasses

import numpy as np
import pytest
import xarray as xr

import mcroute as mr
from mcroute._labeled.throughput import parse_tokens
from mcroute.cli import main


@pytest.fixture(scope="module")
def dsv3():
    # the closed forms of these tests are the roofline's (calibrated kernels: test_calibrated.py)
    return mr.Deployment("deepseek-v3", "h200", 8, weight_dtype="fp8", kernels="roofline")


@pytest.fixture(scope="module")
def llama():
    return mr.Deployment("llama-3.1-70b", "h100-sxm", 4, kernels="roofline")


def _nonexpert_bytes(dep, b):
    """Weights read per step that are not routed experts, from the layer specs."""
    m = dep.model
    p = sum(ly.attn_params + ly.dense_ffn_params + ly.shared_expert_params + ly.router_params
            for ly in m.decode_layers)
    p += (m.lm_head_params or m.embedding_params) + min(b, m.vocab) * m.hidden
    return p * mr.dtype_bytes(dep.weight_dtype)


def test_parse_tokens():
    assert parse_tokens("context", "128k") == 131072
    assert parse_tokens("context", " 4K ") == 4096
    assert parse_tokens("context", "1m") == 2**20
    assert parse_tokens("context", 300) == 300
    for bad in ("12x", "-4k", "", "0", 0, -3, 2.5):
        with pytest.raises(mr.McrouteError, match="context"):
            parse_tokens("context", bad)


def test_dense_model_equals_closed_form(llama):
    ds = mr.decode_throughput(llama, ["4k", 32768], batch_size=[1, 8], n_trials=5, rng=1)
    assert ds.sizes["context"] == 2 and ds.sizes["batch_size"] == 2
    bw = llama.hardware.hbm_bandwidth * llama.n_gpus
    for L in (4096, 32768):
        for b in (1, 8):
            pt = ds.sel(context=L, batch_size=b)
            # memory-bound at these batches: every operator is byte-limited, so the step is
            # (weights read + KV read) / aggregate bandwidth
            closed = (_nonexpert_bytes(llama, b) + b * llama.model.kv_bytes(L, "bf16")) / bw
            np.testing.assert_allclose(pt["step_time"].values, closed, rtol=1e-12)
            assert float(pt["step_time_se"]) == 0.0
            assert float(pt["throughput_mean"]) == pytest.approx(b / closed, rel=1e-12)
            assert float(pt["throughput_per_gpu_mean"]) == pytest.approx(b / closed / 4)
            assert str(pt["bound"].values) == "memory"
            assert float(pt["weight_bytes_per_step_exact"]) == _nonexpert_bytes(llama, b)
    assert ds.attrs["routing"] == "none (dense model)"


def test_moe_uniform_weight_bytes_match_exact_formula(dsv3):
    n = 400
    ds = mr.decode_throughput(dsv3, "4k", batch_size=[8, 64], n_trials=n, rng=7)
    m = dsv3.model
    e, k, n_moe = m.n_experts, m.top_k, len(m.moe_layers)
    pe_bytes = m.expert_params * mr.dtype_bytes("fp8")
    for b in (8, 64):
        pt = ds.sel(batch_size=b)
        touched = e * (1 - (1 - k / e) ** b)        # exact E[distinct experts], uniform
        exact = _nonexpert_bytes(dsv3, b) + n_moe * touched * pe_bytes
        assert float(pt["weight_bytes_per_step_exact"]) == pytest.approx(exact, rel=1e-12)
        # Monte Carlo mean within 4 standard errors of the exact expectation (|z| < 4 has
        # probability > 0.9999 under the CLT with 400 trials)
        mean, se = float(pt["weight_bytes_per_step_mean"]), float(pt["weight_bytes_per_step_se"])
        assert se > 0
        assert abs(mean - exact) < 4 * se
        lo, hi = pt["throughput_ci"].values
        assert lo <= float(pt["throughput_mean"]) <= hi
        assert np.all(pt["throughput"].values == b / pt["step_time"].values)


def test_zipf_touches_fewer_experts_than_uniform(dsv3):
    # sum_e 1 - (1 - pi_e)^B is concave in pi, maximal at uniform pi = k/E
    kw = dict(batch_size=[16, 64], n_trials=200, rng=3)
    uni = mr.decode_throughput(dsv3, 4096, **kw)
    zipf = mr.decode_throughput(dsv3, 4096, routing=mr.Zipf(256, 8, 1.2), **kw)
    assert np.all(zipf["weight_bytes_per_step_exact"] < uni["weight_bytes_per_step_exact"])
    # and the Monte Carlo agrees with the exact value for skewed routing too (4 SE, as above)
    dev = np.abs(zipf["weight_bytes_per_step_mean"] - zipf["weight_bytes_per_step_exact"])
    assert np.all(dev < 4 * zipf["weight_bytes_per_step_se"])


def test_max_batch_grid_and_monotonicity(dsv3):
    ds = mr.decode_throughput(dsv3, ["1k", "4k", "32k", "128k", "512k"], n_trials=32, rng=0)
    b = ds["batch_size"].values
    assert np.all(np.diff(b) <= 0) and b[-1] < b[0]
    np.testing.assert_array_equal(b, ds["max_batch_size"].values)
    for L, bb in zip(ds["context"].values, b, strict=True):
        assert bb == dsv3.max_batch_size(int(L))
    np.testing.assert_allclose(ds["kv_bytes_per_step"], b * ds["kv_bytes_per_sequence"])
    assert ds["exceeds_max_context"].values.tolist() == [False] * 4 + [True]
    assert bool(ds["feasible"].all())
    assert "batch_size" not in ds.dims


def test_more_bandwidth_never_less_throughput(dsv3):
    kw = dict(batch_size=[1, 64, 512], n_trials=64, rng=11)
    slow = mr.decode_throughput(dataclasses.replace(dsv3, bandwidth_efficiency=0.6), "8k", **kw)
    fast = mr.decode_throughput(dsv3, "8k", **kw)
    # same seed and (context, batch) keys: the same routing draws, so compare trial by trial
    assert bool(fast["feasible"].all())
    assert np.all(fast["throughput"].values >= slow["throughput"].values)
    faster_hw = dataclasses.replace(dsv3.hardware, hbm_bandwidth=2 * dsv3.hardware.hbm_bandwidth)
    faster = mr.decode_throughput(dataclasses.replace(dsv3, hardware=faster_hw), "8k", **kw)
    assert np.all(faster["throughput"].values >= fast["throughput"].values)


def test_reproducible_and_subsets(dsv3):
    a = mr.decode_throughput(dsv3, ["4k", "32k"], batch_size=[8, 64], n_trials=40, rng=5)
    b = mr.decode_throughput(dsv3, "32k", batch_size=64, n_trials=40, rng=5)
    np.testing.assert_array_equal(a["step_time"].sel(context=32768, batch_size=64), b["step_time"])
    c = mr.decode_throughput(dsv3, ["4k", "32k"], batch_size=[8, 64], n_trials=40,
                             rng=a.attrs["seed"])
    np.testing.assert_array_equal(a["step_time"], c["step_time"])
    # more trials extend a shorter run (blocks of trials reproduce one big draw)
    d = mr.decode_throughput(dsv3, "32k", batch_size=64, n_trials=80, rng=5)
    np.testing.assert_array_equal(d["step_time"].values[:40], b["step_time"].values)
    seen = []
    mr.decode_throughput(dsv3, ["4k", "32k"], batch_size=[8, 64], n_trials=40, rng=5,
                         progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0


def test_infeasible_points_are_reported_not_raised(dsv3):
    one = dsv3.replace(n_gpus=1)
    ds = mr.decode_throughput(one, ["4k", "128k"], n_trials=8, rng=0)
    assert not ds["feasible"].any()
    assert all(r.startswith("weights need") for r in ds["reason"].values)
    assert np.all(np.isnan(ds["throughput"])) and np.all(np.isnan(ds["throughput_mean"]))
    assert ds["bound"].values.tolist() == ["", ""]
    assert ds["batch_size"].values.tolist() == [0, 0]
    # a batch above the admissible one at long context
    big = mr.decode_throughput(dsv3, ["4k", "128k"], batch_size=500, n_trials=8, rng=0)
    assert big["feasible"].values.tolist() == [True, False]
    assert "exceeds the admissible" in str(big["reason"].sel(context=131072).values)
    assert np.isnan(float(big["step_time_mean"].sel(context=131072)))
    assert float(big["throughput_mean"].sel(context=4096)) > 0


def test_bad_inputs(dsv3, llama):
    with pytest.raises(mr.McrouteError, match="routing has n_experts=64"):
        mr.decode_throughput(dsv3, "4k", routing=mr.Uniform(64, 8), n_trials=4)
    with pytest.raises(mr.McrouteError, match="routing must be"):
        mr.decode_throughput(dsv3, "4k", routing="zipf", n_trials=4)
    with pytest.raises(mr.McrouteError, match="batch_size must be 'max'"):
        mr.decode_throughput(dsv3, "4k", batch_size="biggest", n_trials=4)
    with pytest.raises(mr.McrouteError, match="batch_size"):
        mr.decode_throughput(dsv3, "4k", batch_size=[8, -1], n_trials=4)
    with pytest.raises(mr.McrouteError, match="context"):
        mr.decode_throughput(dsv3, [-4096], n_trials=4)
    with pytest.raises(mr.McrouteError, match="repeat"):
        mr.decode_throughput(dsv3, ["4k", 4096], n_trials=4)
    with pytest.raises(mr.McrouteError, match="n_trials"):
        mr.decode_throughput(dsv3, "4k", n_trials=0)
    with pytest.raises(mr.McrouteError, match="deployment must be"):
        mr.decode_throughput(dsv3.model, "4k", n_trials=4)
    # a routing given for a dense model is not used (and says so)
    ds = mr.decode_throughput(llama, "4k", routing=mr.Uniform(8, 2), n_trials=4, rng=0)
    assert ds.attrs["routing"] == "none (dense model)"


def test_dataset_conventions_and_export(tmp_path, dsv3):
    ds = mr.decode_throughput(dsv3, ["4k", "128k"], batch_size=[16, 32], n_trials=20, rng=2,
                              ci_prob=0.9)
    for name in list(ds.data_vars) + list(ds.coords):
        assert "units" in ds[name].attrs, name
    for dim in ds.dims:
        assert dim in ds.coords, dim
    for key in ("mcroute_version", "created_at", "n_trials", "ci_prob", "seed", "deployment",
                "model", "hardware", "routing"):
        assert key in ds.attrs, key
    assert ds.attrs["ci_prob"] == 0.9
    for name in ("step_time", "throughput", "throughput_per_gpu", "weight_bytes_per_step"):
        for suffix in ("_mean", "_se", "_ci", "_q"):
            assert name + suffix in ds
    assert ds["step_time"].dims == ("context", "batch_size", "trial")
    for ext in (".nc", ".csv", ".json"):
        mr.save_dataset(ds, tmp_path / f"out{ext}")
    back = xr.open_dataset(tmp_path / "out.nc", engine="h5netcdf")
    np.testing.assert_array_equal(back["step_time"].values, ds["step_time"].values)
    assert back["bound"].values.tolist() == ds["bound"].values.tolist()
    back.close()


def test_all_to_all_charged_never_faster(dsv3):
    kw = dict(batch_size=[64, 1024], n_trials=32, rng=9)
    free = mr.decode_throughput(dsv3, "4k", **kw)
    over = mr.decode_throughput(dataclasses.replace(dsv3, charge_all_to_all=True), "4k", **kw)
    serial = mr.decode_throughput(
        dataclasses.replace(dsv3, charge_all_to_all=True, overlap_all_to_all=False), "4k", **kw)
    assert np.all(over["step_time"].values >= free["step_time"].values)
    assert np.all(serial["step_time"].values >= over["step_time"].values)
    assert np.all(serial["all_to_all_time_mean"] > 0) and np.all(free["all_to_all_time_mean"] == 0)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

def test_cli_runs_and_writes(tmp_path, capsys):
    out = tmp_path / "tp.nc"
    rc = main(["throughput", "deepseek-v3", "--hardware", "h200", "--n-gpus", "8", "--context",
               "4k,128k", "--batch-size", "8,16", "--weight-dtype", "fp8", "--routing", "zipf:1.2",
               "--n-trials", "16",
               "--seed", "0", "--output", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "131072" in text and "memory" in text and "seed 0" in text
    ds = xr.open_dataset(out, engine="h5netcdf")
    assert ds.attrs["seed"] == 0 and ds.sizes["context"] == 2
    ds.close()


def test_cli_infeasible_is_a_result(capsys):
    rc = main(["throughput", "deepseek-v3", "--hardware", "h200", "--n-gpus", "1",
               "--context", "4k", "--n-trials", "4", "--seed", "0"])
    assert rc == 0
    assert "infeasible: context 4k" in capsys.readouterr().out
    rc = main(["throughput", "llama-3.1-70b", "--hardware", "h100-sxm", "--n-gpus", "2",
               "--context", "128k", "--batch-size", "1,2", "--n-trials", "4", "--seed", "0"])
    assert rc == 0
    assert "KV cache at context 131072" in capsys.readouterr().out


@pytest.mark.parametrize("argv, match", [
    (["no-such-model", "--hardware", "h200", "--n-gpus", "8"], "no-such-model"),
    (["deepseek-v3", "--hardware", "no-such-gpu", "--n-gpus", "8"], "no-such-gpu"),
    (["deepseek-v3", "--hardware", "h200", "--n-gpus", "-8"], "--n-gpus"),
    (["deepseek-v3", "--hardware", "h200", "--n-gpus", "8", "--context", "12x"], "--context"),
    (["deepseek-v3", "--hardware", "h200", "--n-gpus", "8", "--batch-size", "-3"], "--batch-size"),
    (["deepseek-v3", "--hardware", "h200", "--n-gpus", "4", "--expert-parallel", "3"],
     "--expert-parallel must divide"),
    (["deepseek-v3", "--hardware", "h200", "--n-gpus", "8", "--weight-dtype", "fp7"], "fp7"),
    (["deepseek-v3", "--hardware", "h200", "--n-gpus", "8", "--routing", "zipf:x"], "routing"),
    (["deepseek-v3", "--hardware", "h200", "--n-gpus", "8", "--hbm-fraction", "2"],
     "hbm-fraction"),
    (["llama-3.1-70b", "--hardware", "h200", "--n-gpus", "8", "--routing", "zipf:1.2"], "dense"),
    (["deepseek-v3", "--hardware", "h200", "--n-gpus", "8", "--output", "/no/such/dir/x.nc"],
     "does not exist"),
])
def test_cli_errors_are_one_line(argv, match, capsys):
    rc = main(["throughput", *argv, "--n-trials", "4", "--seed", "0"])
    assert rc == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_cli_bad_card_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\nhidden = "wide"\n')
    rc = main(["throughput", str(bad), "--hardware", "h200", "--n-gpus", "8", "--n-trials", "4"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "bad.toml" in err and "Traceback" not in err

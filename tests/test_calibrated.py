"""Tests of the calibrated decode cost model (issue 13, mcroute/_cost/calibrated.py and its use in
Deployment, decode_throughput and qs_analysis): the bound property, MTP, replication, redundant
experts, placement, batch policies, calibration draws."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mcroute as mr
from mcroute._base.validate import McrouteError
from mcroute._cards.cards import HardwareSpec, ModelSpec
from mcroute._cost import calibration as C
from mcroute._cost.calibrated import (
    accepted_tokens,
    balanced_placement,
    expert_layout,
    expert_times,
    group_loads,
    slot_loads,
    split_two,
)

# ---------------------------------------------------------------------------------------------
# Expert slots, placement, splits (exact, small cases)
# ---------------------------------------------------------------------------------------------


def test_balanced_placement_sizes_and_contiguity():
    for e, d in [(256, 8), (10, 4), (8, 6), (7, 7), (129, 16)]:
        g = balanced_placement(e, d)
        sizes = np.bincount(g, minlength=d)
        assert sizes.sum() == e and sizes.max() - sizes.min() <= 1
        assert np.all(np.diff(g) >= 0)  # contiguous blocks
    # D divides E: the usual contiguous blocks of mcroute.device_map
    np.testing.assert_array_equal(balanced_placement(256, 8), mr.device_map(256, 8))


def test_slot_split_is_even_and_conserves_tokens():
    rng = np.random.default_rng(0)
    pop = rng.dirichlet(np.ones(16), size=3)
    lay = expert_layout(balanced_placement(16, 4), 4, 3, redundant=5, popularity=pop)
    counts = rng.integers(0, 50, size=(7, 3, 16))
    slots = slot_loads(counts, lay)
    # every expert's tokens are split among its replicas, differing by at most one
    for j in range(3):
        for e in range(16):
            mine = slots[:, j, lay.slot_expert[j] == e]
            np.testing.assert_array_equal(mine.sum(axis=1), counts[:, j, e])
            assert np.all(mine.max(axis=1) - mine.min(axis=1) <= 1)
    # the replicas go to the hottest experts (expected load per replica is greedy-balanced)
    for j in range(3):
        reps = np.bincount(lay.slot_expert[j], minlength=16)
        assert reps.sum() == 21
        hot = np.argsort(-pop[j], kind="stable")[:1]
        assert reps[hot[0]] >= 2
    gl = group_loads(slots, lay)
    assert gl.shape[:3] == (7, 3, 4)
    np.testing.assert_array_equal(gl.sum(axis=(2, 3)), counts.sum(axis=2))
    np.testing.assert_array_equal(lay.slots_per_group, np.full((3, 4), [6, 5, 5, 5]))


def test_split_two_conserves():
    x = np.arange(40).reshape(2, 4, 5)
    a, b = split_two(x)
    np.testing.assert_array_equal(a + b, x)
    assert np.all(np.abs(a - b) <= 1)


def test_accepted_tokens_formula():
    assert accepted_tokens(0.7, 1) == pytest.approx(1.7, abs=0, rel=1e-15)
    assert accepted_tokens(0.5, 3) == 1 + 0.5 + 0.25 + 0.125
    assert accepted_tokens(0.0, 4) == 1.0


# ---------------------------------------------------------------------------------------------
# Options, defaults, mapping of the older booleans
# ---------------------------------------------------------------------------------------------


def test_defaults_and_describe():
    dep = mr.Deployment("deepseek-v3", "h200", 8, weight_dtype="fp8")
    d = dep.describe()
    assert d["kernels"] == "calibrated" and d["kernel_card"] == "hopper"
    assert d["all_to_all"] == "none" and d["charge_all_to_all"] is True
    assert d["memory_layout"] == "engine" and d["attention_compute_dtype"] == "bf16"
    assert d["activation_dtype"] == "fp8"
    roof = mr.Deployment("deepseek-v3", "h200", 8, weight_dtype="fp8", kernels="roofline")
    r = roof.describe()
    assert r["all_to_all"] == "off" and r["memory_layout"] == "ideal"
    assert r["activation_dtype"] == "bf16" and r["attention_compute_dtype"] == "fp8"
    # hardware without a kernel card falls back to the generic card, and says so
    assert mr.Deployment("llama-3.1-70b", "a100-80gb", 8).kernel_card_name == "generic"


@pytest.mark.parametrize("kw, mode", [
    ({"charge_all_to_all": False}, "off"),
    ({"charge_all_to_all": True}, "overlap"),
    ({"charge_all_to_all": True, "overlap_all_to_all": False}, "none"),
    ({"all_to_all": "two-batch"}, "two-batch"),
    ({"all_to_all": "two-batch", "charge_all_to_all": True}, "two-batch"),
    ({}, "none"),
])
def test_all_to_all_one_knob(kw, mode):
    dep = mr.Deployment("mixtral-8x7b", "h100-sxm", 8, **kw)
    assert dep._all_to_all == mode
    assert dep.describe()["charge_all_to_all"] == (mode != "off")


def test_all_to_all_contradiction_refused():
    with pytest.raises(McrouteError, match="contradicts"):
        mr.Deployment("mixtral-8x7b", "h100-sxm", 8, all_to_all="off", charge_all_to_all=True)
    with pytest.raises(McrouteError, match="all_to_all must be"):
        mr.Deployment("mixtral-8x7b", "h100-sxm", 8, all_to_all="sometimes")


@pytest.mark.parametrize("kw, what", [
    ({"kernels": "fast"}, "kernels"),
    ({"memory_layout": "weird"}, "memory_layout"),
    ({"replicate_dense": True}, "replicate_dense"),
    ({"mtp_depth": 1}, "mtp_acceptance"),
    ({"mtp_depth": 1, "mtp_acceptance": 1.5}, "mtp_acceptance"),
    ({"mtp_depth": 1, "mtp_acceptance": "beta:0,1"}, "mtp_acceptance"),
    ({"mtp_depth": -1}, "mtp_depth"),
    ({"redundant_experts": -2}, "redundant_experts"),
    ({"kernel_card": "no-such-card"}, "kernel card"),
    ({"attention_compute_dtype": "fp7"}, "dtype"),
])
def test_bad_options(kw, what):
    with pytest.raises(McrouteError, match=what):
        mr.Deployment("mixtral-8x7b", "h100-sxm", 8, **kw)


# ---------------------------------------------------------------------------------------------
# Memory as engines lay it out
# ---------------------------------------------------------------------------------------------

TOY_HW = HardwareSpec(name="toy-hbm", display_name="toy", hbm_bytes=10.5e9, hbm_bandwidth=1e12,
                      flops={"bf16": 1e15}, interconnect_bandwidth=1e11, source=("hand",))


def toy_card(kind="mla", n_kv_heads=2):
    card = {
        "name": f"toy-{kind}", "display_name": "toy", "source": ["hand"],
        "n_layers": 2, "hidden": 64, "vocab": 100, "tie_word_embeddings": True,
        "max_context_tokens": 1 << 20,
        "ffn": {"activation": "swiglu", "intermediate": 128},
    }
    if kind == "mla":
        card["attention"] = {"kind": "mla", "n_heads": 4, "q_lora_rank": 0, "kv_lora_rank": 448,
                             "qk_nope_head_dim": 16, "qk_rope_head_dim": 64, "v_head_dim": 16}
    else:
        card["attention"] = {"kind": "gqa", "n_heads": 8, "n_kv_heads": n_kv_heads,
                             "head_dim": 128}
    return ModelSpec.from_dict(card, origin="toy")


def test_mla_cache_replicated_under_tensor_parallel_attention():
    # Toy MLA: 2 layers of 448 + 64 = 512 cached values, bf16: 2048 B per token. At L = 2**19
    # one sequence caches 2048 * 2**19 = 2**30 B = 1.0737 GB; usable HBM 0.9 * 10.5e9 = 9.45e9 B;
    # the weights are ~0.1 MB. Data-parallel attention: each GPU holds whole sequences,
    # floor((9.45e9 - w) / 2**30) = 8 per GPU, 32 on 4 GPUs. Tensor-parallel attention
    # replicates the latent on every GPU: floor((9.45e9 - w / 4) / 2**30) = 8 for the whole
    # replica, exactly 1/4.
    m = toy_card("mla")
    L = 1 << 19
    kv = m.kv_bytes(L, "bf16")
    assert kv == 2**30
    dp = mr.Deployment(m, TOY_HW, 4, attention_parallel="data")
    tp = mr.Deployment(m, TOY_HW, 4)
    assert dp.max_batch_size(L) == 4 * math.floor((0.9 * 10.5e9 - dp.weight_bytes_per_gpu) / kv)
    assert tp.max_batch_size(L) == math.floor((0.9 * 10.5e9 - tp.weight_bytes_per_gpu) / kv)
    assert dp.max_batch_size(L) == 32 and tp.max_batch_size(L) == 8
    assert tp.max_batch_size(L) * 4 == dp.max_batch_size(L)
    # the ideal layout (roofline default) splits the cache: about the data-parallel batch
    ideal = mr.Deployment(m, TOY_HW, 4, kernels="roofline")
    assert ideal.max_batch_size(L) == math.floor(4 * (0.9 * 10.5e9 - ideal.weight_bytes_per_gpu)
                                                 / kv)


@pytest.mark.parametrize("n, share", [(2, 1 / 2), (4, 1 / 2), (8, 1 / 2), (1, 1.0)])
def test_gqa_cache_replicated_when_fewer_kv_heads_than_gpus(n, share):
    # 2 KV heads: on 2 GPUs each keeps one head (1/2); on 4 or 8 GPUs each still keeps one
    # whole head, i.e. 1/2 of every sequence's cache (replicated 2x or 4x).
    m = toy_card("gqa", n_kv_heads=2)
    dep = mr.Deployment(m, TOY_HW, n)
    L = 4096
    full = dep.kv_bytes_per_sequence(L)
    assert dep.kv_bytes_per_sequence_per_gpu(L) == pytest.approx(share * full, rel=1e-15)


def test_data_parallel_attention_replicates_dense_weights():
    eng = mr.Deployment("deepseek-v3", "h200", 8, weight_dtype="fp8", attention_parallel="data")
    shard = eng.replace(replicate_dense=False)
    c = eng._component_params()
    non_expert = (c["attention"] + c["dense_ffn"] + c["shared_experts"] + c["router"]
                  + c["embedding"] + c["lm_head"])
    experts = 32 * float(eng._expert_params.sum())
    assert eng.weight_bytes_per_gpu == pytest.approx(non_expert + experts, rel=1e-12)
    assert shard.weight_bytes_per_gpu < eng.weight_bytes_per_gpu
    assert eng.max_batch_size(32768) < shard.max_batch_size(32768)


def test_redundant_experts_memory():
    base = mr.Deployment("deepseek-v3", "h200", 8, weight_dtype="fp8")
    red = base.replace(redundant_experts=8)
    pe_bytes = float(base._expert_params.sum())  # fp8: 1 B per parameter, summed over layers
    assert red.weight_bytes == pytest.approx(base.weight_bytes + 8 * pe_bytes, rel=1e-12)
    # 264 slots over 8 groups: 33 per GPU instead of 32
    assert red.weight_bytes_per_gpu - base.weight_bytes_per_gpu == pytest.approx(pe_bytes,
                                                                                  rel=1e-9)


def test_expert_parallel_need_not_divide_experts():
    dep = mr.Deployment("mixtral-8x7b", "h100-sxm", 6, weight_dtype="fp8")
    np.testing.assert_array_equal(np.bincount(dep._group), [2, 1, 1, 2, 1, 1])
    ds = mr.decode_throughput(dep, "4k", batch_size=16, n_trials=4, rng=0)
    assert bool(ds["feasible"]) and np.all(ds["throughput"] <= ds["throughput_bound"])
    roof = mr.Deployment("mixtral-8x7b", "h100-sxm", 6, weight_dtype="fp8", kernels="roofline")
    assert roof.weight_bytes_per_gpu == dep.weight_bytes_per_gpu


# ---------------------------------------------------------------------------------------------
# The calibrated step: expert GEMMs from each expert's own load
# ---------------------------------------------------------------------------------------------


def test_routed_experts_priced_from_each_experts_load():
    dep = mr.Deployment("deepseek-v3", "h200", 8, weight_dtype="fp8")
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 9, size=(dep.n_moe_layers, 256))
    counts[:, ::3] = 0
    bd = dep.step_breakdown(4096, 64, counts)
    p = dep._kcard.point()
    pe = float(dep._expert_params[0])
    loads = counts.reshape(dep.n_moe_layers, 8, 32)   # contiguous blocks of 32 experts per GPU
    t = C.expert_gemm_time(loads, pe * 1.0, 2 * pe, bw=dep._BW, peak_flops=dep._F, p=p,
                           act_bytes_per_token=float(dep._expert_act_bytes[0]))
    assert bd["routed_experts"]["time"] == pytest.approx(t.max(axis=1).sum(), rel=1e-12)
    # the same total tokens and touched experts, concentrated on one expert per GPU, cost
    # differently: the mean load does not determine the time
    flat = np.zeros_like(loads)
    flat[:, :, 0] = loads.sum(axis=2)
    t_flat = C.expert_gemm_time(flat, pe * 1.0, 2 * pe, bw=dep._BW, peak_flops=dep._F, p=p)
    assert not np.allclose(t_flat, t)


@pytest.mark.parametrize("draws", [False, True])
def test_expert_table_equals_expert_gemm_time(draws):
    # the table of load values gives exactly the numbers of pricing every expert separately
    card = C.load_kernel_card("hopper")
    p = card.draw(7, 3) if draws else card.point()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 30, size=(7, 5, 4, 6))
    x[x < 8] = 0
    w = np.array([4e7, 4e7, 2e7, 4e7, 2e7])
    a = np.full(5, 3e4)
    t = expert_times(x, w, 2 * w, a, bw=4.8e12, peak_flops=2e15, p=p)
    ref = C.expert_gemm_time(x, w.reshape(1, -1, 1, 1), 2 * w.reshape(1, -1, 1, 1), bw=4.8e12,
                             peak_flops=2e15, p=p, act_bytes_per_token=a.reshape(1, -1, 1, 1))
    np.testing.assert_array_equal(t, ref)


def test_two_batch_reads_weights_twice():
    # a dense model has no communication to hide: two micro-batches only re-read the weights
    dep = mr.Deployment("llama-3.1-70b", "h100-sxm", 8, calibration_uncertainty=False)
    one = mr.decode_throughput(dep, "4k", batch_size=64, n_trials=2, rng=0)
    two = mr.decode_throughput(dep.replace(all_to_all="two-batch"), "4k", batch_size=64,
                               n_trials=2, rng=0)
    assert np.all(two["step_time"].values > one["step_time"].values)
    np.testing.assert_array_equal(two["step_time_bound"].values, one["step_time_bound"].values)


# ---------------------------------------------------------------------------------------------
# Bound: calibrated step time >= roofline step time (Hypothesis property)
# ---------------------------------------------------------------------------------------------

MODELS = ["mixtral-8x7b", "qwen3-30b-a3b", "olmoe-1b-7b", "deepseek-v3", "llama-3.1-8b",
          "gpt-oss-120b", "qwen3-32b"]
HARDWARE = ["h100-sxm", "h200", "mi300x", "a100-80gb", "b200"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=st.sampled_from(MODELS), hw=st.sampled_from(HARDWARE),
       n=st.sampled_from([1, 2, 4, 8]), ctx=st.sampled_from([512, 4096, 32768]),
       batch=st.integers(1, 96), attention=st.sampled_from(["tensor", "data"]),
       a2a=st.sampled_from(["off", "none", "overlap", "two-batch"]),
       layout=st.sampled_from(["engine", "ideal"]), depth=st.integers(0, 2),
       acc=st.floats(0, 1), redundant=st.sampled_from([0, 0, 3]),
       zipf=st.sampled_from([None, 1.2]), seed=st.integers(0, 2**31))
def test_calibrated_never_faster_than_roofline(model, hw, n, ctx, batch, attention, a2a, layout,
                                               depth, acc, redundant, zipf, seed):
    spec = mr.load_model(model)
    try:
        dep = mr.Deployment(spec, hw, n, weight_dtype="fp8", attention_parallel=attention,
                            all_to_all=a2a, memory_layout=layout, mtp_depth=depth,
                            mtp_acceptance=acc, redundant_experts=redundant if spec.is_moe else 0)
    except McrouteError:
        return  # e.g. more expert groups than experts
    b_max = dep.max_batch_size(ctx) if dep.weights_fit() else 0
    if b_max < 1:
        return
    B = min(batch, b_max)
    routing = mr.Zipf(dep.n_experts, dep.top_k, zipf) if (zipf and spec.is_moe) else None
    ds = mr.decode_throughput(dep, ctx, batch_size=B, routing=routing, n_trials=4, rng=seed)
    step, bound = ds["step_time"].values, ds["step_time_bound"].values
    assert np.all(np.isfinite(step)) and np.all(step >= bound)
    assert np.all(ds["throughput"].values <= ds["throughput_bound"].values)


# ---------------------------------------------------------------------------------------------
# MTP
# ---------------------------------------------------------------------------------------------


def test_mtp_depth_zero_is_no_mtp_exactly():
    kw = {"n_trials": 16, "rng": 5}
    base = mr.decode_throughput(mr.Deployment("deepseek-v3", "h200", 8, weight_dtype="fp8"),
                                ["4k", "64k"], **kw)
    zero = mr.decode_throughput(mr.Deployment("deepseek-v3", "h200", 8, weight_dtype="fp8",
                                              mtp_depth=0, mtp_acceptance=0.8), ["4k", "64k"], **kw)
    for v in ("step_time", "throughput", "throughput_bound", "batch_size"):
        np.testing.assert_array_equal(base[v].values, zero[v].values)
    assert np.all(zero["accepted_tokens"].values == 1.0)


@pytest.mark.parametrize("a", [0.0, 0.35, 0.9])
def test_mtp_depth_one_accepts_one_plus_a(a):
    dep = mr.Deployment("deepseek-v3", "h200", 8, weight_dtype="fp8", mtp_depth=1,
                        mtp_acceptance=a)
    ds = mr.decode_throughput(dep, "8k", batch_size=32, n_trials=8, rng=1)
    np.testing.assert_array_equal(ds["accepted_tokens"].values, np.full(8, 1 + a))
    np.testing.assert_array_equal(ds["throughput"].values,
                                  32 * (1 + a) / ds["step_time"].values)
    # verification is paid whatever the acceptance: two tokens per sequence through the step
    base = mr.decode_throughput(dep.replace(mtp_depth=0), "8k", batch_size=32, n_trials=8,
                                rng=1)
    assert np.all(ds["step_time"].values > base["step_time"].values)


def test_mtp_acceptance_distribution():
    # Beta(8, 2): E[a] = 0.8; depth 1: accepted = 1 + a, mean 1.8, sd(a) = sqrt(ab/((a+b)^2
    # (a+b+1))) = 0.1206; with 400 trials the mean is within 4 standard errors of 1.8.
    dep = mr.Deployment("mixtral-8x7b", "h100-sxm", 8, mtp_depth=1, mtp_acceptance="beta:8,2")
    ds = mr.decode_throughput(dep, "4k", batch_size=8, n_trials=400, rng=2)
    se = 0.1206 / math.sqrt(400)
    assert abs(float(ds["accepted_tokens_mean"]) - 1.8) < 4 * se
    assert "mtp_acceptance" in ds.attrs["uncertainty_sources"]


# ---------------------------------------------------------------------------------------------
# Batch policies
# ---------------------------------------------------------------------------------------------


def test_batch_per_gpu_is_batch_times_gpus():
    dep = mr.Deployment("mixtral-8x7b", "h100-sxm", 8)
    a = mr.decode_throughput(dep, "4k", batch_per_gpu=[2, 4], n_trials=4, rng=0)
    b = mr.decode_throughput(dep, "4k", batch_size=[16, 32], n_trials=4, rng=0)
    np.testing.assert_array_equal(a["batch_size"].values, [16, 32])
    np.testing.assert_array_equal(a["throughput"].values, b["throughput"].values)
    assert a.attrs["batch_size_mode"] == "per_gpu"


def test_tpot_picks_largest_batch_meeting_the_target():
    from mcroute._labeled.throughput import TPOT_SEARCH_TRIALS

    dep = mr.Deployment("mixtral-8x7b", "h100-sxm", 8, calibration_uncertainty=False)
    target = 0.02
    ds = mr.decode_throughput(dep, "8k", tpot=target, n_trials=TPOT_SEARCH_TRIALS, rng=4)
    B = int(ds["batch_size"])
    assert 1 <= B < int(ds["max_batch_size"])
    chk = mr.decode_throughput(dep, "8k", batch_size=[B, B + 1], n_trials=TPOT_SEARCH_TRIALS,
                               rng=4)
    tpot = (chk["step_time"] / chk["accepted_tokens"]).mean("trial").values
    assert tpot[0] <= target < tpot[1]
    with pytest.raises(McrouteError, match="one of"):
        mr.decode_throughput(dep, "8k", batch_size=4, tpot=0.02, n_trials=4)
    bad = mr.decode_throughput(dep, "8k", tpot=1e-7, n_trials=4, rng=0)
    assert not bool(bad["feasible"]) and "tpot" in str(bad["reason"].values)


# ---------------------------------------------------------------------------------------------
# Calibration uncertainty: draws, common random numbers, attrs
# ---------------------------------------------------------------------------------------------


def test_kernel_draws_shared_across_points_and_deployments():
    a = mr.Deployment("llama-3.1-70b", "h100-sxm", 8)
    b = mr.Deployment("mixtral-8x7b", "h100-sxm", 8)
    pa, pb = a.kernel_params(50, 11), b.kernel_params(50, 11)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])
    # a dense model's step varies only through the kernel draws: the same trial is slow (or
    # fast) at every context
    ds = mr.decode_throughput(a, ["4k", "32k"], batch_size=4, n_trials=50, rng=11)
    st_ = ds["step_time"].values
    assert np.std(st_[0]) > 0
    assert np.corrcoef(st_[0], st_[1])[0, 1] > 0.5
    fixed = mr.decode_throughput(a.replace(calibration_uncertainty=False), "4k", batch_size=4,
                                 n_trials=8, rng=11)
    assert np.ptp(fixed["step_time"].values) == 0
    assert ds.attrs["uncertainty_sources"] == '["calibration"]'
    assert ds.attrs["kernel_card"] == "hopper"


def test_same_seed_same_numbers():
    dep = mr.Deployment("deepseek-v3", "h200", 8, weight_dtype="fp8", redundant_experts=8,
                        all_to_all="two-batch")
    kw = {"n_trials": 20, "rng": 9, "routing": mr.Zipf(256, 8, 1.0)}
    a = mr.decode_throughput(dep, "16k", **kw)
    b = mr.decode_throughput(dep, "16k", **kw)
    np.testing.assert_array_equal(a["step_time"].values, b["step_time"].values)


def test_qs_reports_bound_and_uses_common_draws():
    kw = {"n_trials": 16, "rng": 3, "weight_dtype": "fp8"}
    ds = mr.qs_analysis("deepseek-v3", "h200", 8, 3.0, ["4k", "32k"], **kw)
    for v in ("penalty", "penalty_bound", "moe_throughput_bound", "dense_throughput_bound"):
        assert f"{v}_mean" in ds
    assert np.all(ds["moe_throughput"] <= ds["moe_throughput_bound"])
    assert np.all(ds["dense_throughput"] <= ds["dense_throughput_bound"])
    # the dense twin's trial i uses kernel draw i: recompute it directly
    twin = mr.dense_twin("deepseek-v3", 3.0)
    dd = mr.Deployment(twin, "h200", 8, weight_dtype="fp8")
    L = 32768
    b = int(ds["dense_batch_size"].sel(context=L))
    direct = mr.decode_throughput(dd, L, b, n_trials=16, rng=3)
    np.testing.assert_allclose(ds["dense_throughput"].sel(context=L).values,
                               direct["throughput"].values, rtol=1e-12)
    assert "calibration" in ds.attrs["uncertainty_sources"]


# ---------------------------------------------------------------------------------------------
# Cards: FP8 KV layout and the two-tier interconnect
# ---------------------------------------------------------------------------------------------


def test_fp8_kv_layout_from_the_model_card():
    # DeepSeek-V3: 61 layers of 512 + 64 cached values; FlashMLA's FP8 layout takes 656 B/token
    dep = mr.Deployment("deepseek-v3", "h200", 8, weight_dtype="fp8", kv_dtype="fp8",
                        attention_parallel="data")
    assert mr.load_model("deepseek-v3").fp8_kv_bytes_per_token == 656
    assert dep.kv_bytes_per_sequence(4096) == 61 * 656 * 4096
    assert dep.replace(kernels="roofline").kv_bytes_per_sequence(4096) == 61 * 576 * 4096
    assert dep.replace(kv_dtype="bf16").kv_bytes_per_sequence(4096) == 61 * 576 * 2 * 4096
    bad = mr.load_model("deepseek-v3").to_dict()
    bad["attention"]["fp8_kv_bytes_per_token"] = 500
    with pytest.raises(McrouteError, match="fp8_kv_bytes_per_token"):
        ModelSpec.from_dict(bad)


def test_two_tier_interconnect():
    h = mr.load_hardware("h800")
    assert (h.gpus_per_node, h.scaleout_bandwidth) == (8, 50e9)
    assert HardwareSpec.from_dict(h.to_dict()) == h
    # the same 32 tokens per GPU: across 4 nodes the dispatch/combine crosses the 50 GB/s NICs
    kw = {"n_trials": 2, "rng": 0}
    opts = {"weight_dtype": "fp8", "attention_parallel": "data", "calibration_uncertainty": False}
    one = mr.decode_throughput(mr.Deployment("deepseek-v3", "h200", 8, **opts), "4k",
                               batch_size=256, **kw)
    four = mr.decode_throughput(mr.Deployment("deepseek-v3", "h200", 32, **opts), "4k",
                                batch_size=1024, **kw)
    assert float(four["all_to_all_time_mean"]) > float(one["all_to_all_time_mean"]) > 0
    assert np.all(four["step_time"] >= four["step_time_bound"])

"""Tests of the roofline cost model (mcroute/_cost/deployment.py): hand-computed configurations,
closed forms, capacity, and validation."""

import dataclasses

import numpy as np
import pytest

import mcroute as mr
from mcroute._cards.cards import HardwareSpec, LayerSpec, ModelSpec
from mcroute._cost.deployment import (
    Deployment,
    attended_positions,
    kv_bytes_per_sequence,
    max_batch_size,
    roofline_time,
)

# ---------------------------------------------------------------------------------------------
# Small hand-built cards. Every expected number below is worked out by hand in the comments.
# ---------------------------------------------------------------------------------------------

HW = HardwareSpec(name="toy-gpu", display_name="toy", hbm_bytes=1e6, hbm_bandwidth=1e3,
                  flops={"bf16": 1e4, "fp8": 2e4}, interconnect_bandwidth=100.0,
                  source=("hand-made",))


def layer(index, *, ffn="dense", attention="gqa", attn=1000, kv=100, window=0, aflops=200,
          cross_kv=0, cross_flops=0, dense=3000, experts=0, top_k=0, expert=0, shared=0,
          router=0):
    return LayerSpec(index=index, attention=attention, attn_params=attn, kv_values_per_token=kv,
                     sliding_window=window, attn_flops_per_token_per_ctx=aflops,
                     cross_kv_values_per_token=cross_kv, ffn=ffn,
                     dense_ffn_params=dense if ffn == "dense" else 0, n_experts=experts,
                     top_k=top_k, expert_params=expert, n_shared_experts=1 if shared else 0,
                     shared_expert_params=shared, router_params=router,
                     cross_attn_flops_per_token_per_ctx=cross_flops)


def model(layers, name="toy", emb=500, head=500, other=0, max_context=1000):
    return ModelSpec(name=name, display_name=name, decode_layers=tuple(layers), hidden=10,
                     vocab=50, embedding_params=emb, lm_head_params=head,
                     other_resident_params=other, max_context=max_context, source=("hand",),
                     published_total_params=None, published_active_params=None)


DENSE = model([layer(0), layer(1)])
MOE = model([layer(i, ffn="moe", experts=4, top_k=2, expert=100, shared=300, router=40)
             for i in range(2)])


def dep(m=DENSE, hw=HW, n=1, **kw):
    kw.setdefault("hbm_fraction", 0.5)
    kw.setdefault("kernels", "roofline")  # these tests pin the roofline model by hand
    return Deployment(m, hw, n, **kw)


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------

def test_roofline_time_picks_the_slower_term():
    assert roofline_time(10.0, 5.0, peak_flops=2.0, mem_bandwidth=1.0) == 5.0
    assert roofline_time(10.0, 1.0, peak_flops=2.0, mem_bandwidth=1.0) == 5.0
    np.testing.assert_array_equal(
        roofline_time([0.0, 8.0], [4.0, 0.0], peak_flops=2.0, mem_bandwidth=2.0), [2.0, 4.0])
    with pytest.raises(mr.McrouteError, match="bytes_moved"):
        roofline_time(1.0, -1.0, peak_flops=1.0, mem_bandwidth=1.0)
    with pytest.raises(mr.McrouteError, match="peak_flops"):
        roofline_time(1.0, 1.0, peak_flops=0.0, mem_bandwidth=1.0)


def test_max_batch_size_floor_clip_and_cap():
    assert max_batch_size(100.0, 30.0, 7.0) == 10      # floor(70 / 7)
    assert max_batch_size(100.0, 31.0, 7.0) == 9       # floor(69 / 7)
    assert max_batch_size(100.0, 130.0, 7.0) == 0      # weights alone do not fit
    assert max_batch_size(100.0, 30.0, 7.0, max_batch=4) == 4
    np.testing.assert_array_equal(max_batch_size(100.0, 30.0, [7.0, 35.0, 71.0]), [10, 2, 0])
    with pytest.raises(mr.McrouteError, match="kv_bytes_per_sequence"):
        max_batch_size(100.0, 30.0, 0.0)
    with pytest.raises(mr.McrouteError, match="memory_bytes"):
        max_batch_size(-1.0, 30.0, 1.0)


def test_attended_positions_and_kv_bytes():
    assert attended_positions(100, 0) == 100
    assert attended_positions(100, 16) == 16
    assert attended_positions(10, 16) == 10
    lys = [layer(0), layer(1, window=16, attention="mla"),
           layer(2, cross_kv=50, cross_flops=60)]
    # (100*100 + 100*16 + 100*100 + 50*7) values * 2 B
    assert kv_bytes_per_sequence(lys, 100, kv_bytes=2, encoder_context=7) == 2 * 21950


# ---------------------------------------------------------------------------------------------
# Dense toy model, worked by hand
# ---------------------------------------------------------------------------------------------

def test_dense_capacity_by_hand():
    d = dep()
    # params: attention 2*1000 + dense FFN 2*3000 + embedding 500 + head 500 = 9000; bf16 = 2 B
    assert d.weight_bytes == 18000
    assert d.weight_bytes_per_gpu == 18000
    assert d.usable_bytes_per_gpu == 5e5
    # 2 layers * 100 values * L=100 positions * 2 B
    assert d.kv_bytes_per_sequence(100) == 40000
    assert d.kv_bytes_per_token() == 400
    assert d.kv_bytes_by_attention(100) == {"gqa": 40000}
    # floor((5e5 - 18000) / 40000) = 12
    assert d.max_batch_size(100) == 12
    assert d.feasible(100, 12) and not d.feasible(100, 13)
    assert "exceeds the admissible 12" in d.infeasibility(100, 13)
    # two GPUs: floor((1e6 - 18000) / 40000) = 24
    assert dep(n=2).max_batch_size(100) == 24
    assert dep(max_batch=5).max_batch_size(100) == 5


def test_dense_step_by_hand():
    # B=4, L=100, one GPU: F=1e4 FLOP/s, BW=1e3 B/s
    bd = dep().step_breakdown(100, 4)
    expect = {  # (flops, bytes, time) summed over the 2 layers
        "embedding": (0, 4 * 10 * 2, 0.08),
        "attention_projections": (2 * 2 * 4 * 1000, 2 * 2000, 2 * 2.0),
        "attention_kv": (2 * 4 * 200 * 100, 2 * 4 * 100 * 100 * 2, 2 * 80.0),
        "dense_ffn": (2 * 2 * 4 * 3000, 2 * 6000, 2 * 6.0),
        "shared_experts": (0, 0, 0.0),
        "router": (0, 0, 0.0),
        "routed_experts": (0, 0, 0.0),
        "lm_head": (2 * 4 * 500, 1000, 1.0),
    }
    for op, (fl, by, t) in expect.items():
        assert bd[op]["flops"] == fl, op
        assert bd[op]["bytes"] == by, op
        assert bd[op]["time"] == pytest.approx(t, rel=1e-12), op
    assert bd["step_time"] == pytest.approx(177.08, rel=1e-12)
    assert bd["memory_time"] == pytest.approx(177.08, rel=1e-12)
    assert bd["compute_time"] == pytest.approx(22.8, rel=1e-12)
    assert bd["throughput"] == pytest.approx(4 / 177.08, rel=1e-12)
    # weights read: (2*1000 + 2*3000 + head 500 + 4 embedding rows of 10) * 2 B
    assert bd["weight_bytes_per_step"] == 17080
    # two GPUs (tensor parallel) halve every per-GPU term
    assert dep(n=2).step_breakdown(100, 4)["step_time"] == pytest.approx(88.54, rel=1e-12)


def test_dense_equals_closed_form_roofline_in_both_limits():
    d = dep()
    B, L = 4, 100
    # memory-bound everywhere: (weights read + KV read) / BW
    closed_mem = (d.weight_bytes_per_step(B) + B * d.kv_bytes_per_sequence(L)) / 1e3
    assert d.step_time(L, B)[0] == pytest.approx(closed_mem, rel=1e-12)
    # compute-bound everywhere (bandwidth huge): 2·B·(matrix params) + attention FLOPs, / F
    fast = dep(hw=dataclasses.replace(HW, hbm_bandwidth=1e15))
    flops = 2 * B * (2 * 1000 + 2 * 3000 + 500) + B * 2 * 200 * L
    assert fast.step_time(L, B)[0] == pytest.approx(flops / 1e4, rel=1e-12)


def test_data_parallel_attention_by_hand():
    d = dep(n=2, attention_parallel="data")
    # resident per GPU: attention 2000 params whole + (6000 + 500 + 500) / 2 = 5500 params
    assert d.weight_bytes_per_gpu == 11000
    # each GPU holds whole sequences: 2 * floor((5e5 - 11000) / 40000) = 24
    assert d.max_batch_size(100) == 24
    bd = d.step_breakdown(100, 3)          # busiest GPU serves ceil(3/2) = 2 sequences
    assert bd["attention_projections"]["time"] == pytest.approx(4.0)      # 2 * 2000 B / 1e3
    assert bd["attention_kv"]["bytes"] == 2 * 2 * 100 * 100 * 2
    assert bd["dense_ffn"]["flops"] == 2 * 2 * 3 * 3000 / 2
    assert bd["step_time"] == pytest.approx(0.03 + 4 + 80 + 6 + 0.5, rel=1e-12)
    # both GPUs read all attention weights: (2*2000 + 6000 + 500 + 3*10) * 2 B
    assert bd["weight_bytes_per_step"] == 21060


def test_windows_cross_attention_and_dtypes():
    m = model([layer(0), layer(1, window=16, attention="mla", cross_kv=50, cross_flops=60)])
    d = dep(m, encoder_context=7, kv_dtype="fp8", weight_dtype="fp8")
    # values: 100*100 + 100*16 + 50*7 = 11950, fp8 = 1 B
    assert d.kv_bytes_per_sequence(100) == 11950
    assert d.kv_bytes_by_attention(100) == {"gqa": 10000, "mla": 1950}
    assert d.kv_bytes_per_token(100) == pytest.approx(119.5)
    assert d.flops_dtype == "fp8"              # the card lists fp8, so weights' dtype is used
    assert d.compute_dtype is None and d.describe()["compute_dtype"] == "fp8"
    bd = d.step_breakdown(100, 1)
    assert bd["attention_kv"]["flops"] == 200 * 100 + 200 * 16 + 60 * 7
    assert d.weight_bytes == 9000             # fp8: 1 B per param
    # by default the cross-attention cache holds as many encoder tokens as the context
    assert dep(m).kv_bytes_per_sequence(100) == 2 * (100 * 100 + 100 * 16 + 50 * 100)
    # int8 weights: the toy GPU lists no int8 peak, so FLOP/s fall back to bf16
    assert dep(weight_dtype="int8").flops_dtype == "bf16"
    # the default is resolved again on replace: fp8 weights -> bf16 weights computes in bf16
    assert d.replace(weight_dtype="bf16").flops_dtype == "bf16"


# ---------------------------------------------------------------------------------------------
# MoE toy model, worked by hand
# ---------------------------------------------------------------------------------------------

COUNTS = np.array([[3, 0, 1, 0], [1, 1, 1, 1]])   # B=2, k=2: rows sum to 4


def test_moe_capacity_by_hand():
    d = dep(MOE, n=2)
    # params: attention 2000, experts 2*4*100, shared 2*300, router 2*40, embedding + head 1000
    assert d.weight_bytes == 2 * 4480
    # per GPU: (2000 + 600 + 80 + 1000) / 2 + 2 experts * 2 layers * 100 = 2240 params
    assert d.weight_bytes_per_gpu == 4480
    assert d.n_experts == 4 and d.top_k == 2 and d.n_moe_layers == 2
    assert d.expert_tensor_parallel == 1


def test_moe_step_by_hand():
    d = dep(MOE, n=2)
    bd = d.step_breakdown(10, 2, COUNTS)
    # groups {0,1} and {2,3}: layer 0 tokens (3, 1), experts (1, 1); layer 1 tokens (2, 2),
    # experts (2, 2). Busiest: layer 0 max(3*2*100/1e4, 1*100*2/1e3) = 0.2;
    # layer 1 max(2*200/1e4, 2*200/1e3) = 0.4
    assert bd["routed_experts"]["flops"] == 2 * 100 * (3 + 2)
    assert bd["routed_experts"]["bytes"] == 200 * (1 + 2)
    assert bd["routed_experts"]["time"] == pytest.approx(0.6)
    assert bd["shared_experts"]["time"] == pytest.approx(2 * 0.3)    # 300 B per GPU per layer
    assert bd["router"]["time"] == pytest.approx(2 * 0.04)
    assert bd["attention_projections"]["time"] == pytest.approx(2 * 1.0)
    assert bd["attention_kv"]["time"] == pytest.approx(2 * 2.0)      # 1 seq/GPU * 100*10*2 B
    assert bd["lm_head"]["time"] == pytest.approx(0.5)
    assert bd["embedding"]["time"] == pytest.approx(0.02)
    assert bd["step_time"] == pytest.approx(7.8, rel=1e-12)
    # weights read: (2000 + 600 + 80 + 500 + 2 rows * 10) * 2 + (2 + 4) experts * 200 B
    assert bd["weight_bytes_per_step"] == 7600
    # the vectorised path agrees with the breakdown
    t = d.step_time(10, 2, [[3, 2]], [[1, 2]])
    assert t[0] == pytest.approx(7.8, rel=1e-12)


def test_moe_all_to_all_by_hand():
    slow_link = dataclasses.replace(HW, interconnect_bandwidth=1.0)
    # per MoE layer: 2 (dispatch + combine) * busiest tokens * hidden 10 * 2 B * (D-1)/D / 1 B/s
    serial = dep(MOE, slow_link, 2, charge_all_to_all=True, overlap_all_to_all=False)
    bd = serial.step_breakdown(10, 2, COUNTS)
    assert bd["all_to_all"] == pytest.approx(60 + 40)
    assert bd["step_time"] == pytest.approx(7.8 + 100, rel=1e-12)
    over = dep(MOE, slow_link, 2, charge_all_to_all=True)
    # overlapped: each MoE layer takes max(its work, its all-to-all) = the all-to-all here
    assert over.step_breakdown(10, 2, COUNTS)["step_time"] == pytest.approx(0.02 + 100 + 0.5)
    assert dep(MOE, slow_link, 2).step_breakdown(10, 2, COUNTS)["all_to_all"] == 0


def test_moe_expert_tensor_parallel_and_placement():
    # D=1: both GPUs split every expert; no imbalance: layer 0 2 experts, 4 tokens
    tp = dep(MOE, n=2, expert_parallel=1)
    assert tp.expert_tensor_parallel == 2 and tp.expert_groups == 1
    assert dep(MOE, n=2).expert_groups == 2
    assert dep(MOE, n=2).replace(n_gpus=4).expert_groups == 4
    bd = tp.step_breakdown(10, 2, COUNTS)
    assert bd["routed_experts"]["bytes"] == (2 + 4) * 200 / 2
    assert bd["routed_experts"]["flops"] == 2 * 100 * (4 + 4) / 2
    # explicit uneven placement over 3 GPUs: group 0 holds experts 0 and 1
    m3 = dep(MOE, n=3, expert_placement=[0, 0, 1, 2])
    assert m3.weight_bytes_per_gpu == pytest.approx(((2000 + 600 + 80 + 1000) / 3 + 400) * 2)
    bd3 = m3.step_breakdown(10, 2, COUNTS)
    assert bd3["routed_experts"]["bytes"] == 200 * (1 + 2)   # group 0: 1 expert, then 2
    # 3 groups need not divide 4 experts: the default is balanced, floor(e * 3 / 4) = [0, 0, 1, 2]
    bal = dep(MOE, n=3)
    assert bal._group.tolist() == [0, 0, 1, 2]
    assert bal.step_breakdown(10, 2, COUNTS)["routed_experts"] == bd3["routed_experts"]


def test_skewed_slowest_device_bytes_at_least_mean():
    d = Deployment(model([layer(i, ffn="moe", experts=64, top_k=4, expert=100)
                          for i in range(3)]), HW, 8)
    counts = mr.sample_counts(mr.Zipf(64, 4, 1.5), 16, 50, 3, rng=np.random.default_rng(3))
    for c in counts:
        bd = d.step_breakdown(10, 16, c)
        mean_device = (c > 0).sum() * 100 * 2 / 8
        assert bd["routed_experts"]["bytes"] >= mean_device


# ---------------------------------------------------------------------------------------------
# Feasibility and validation
# ---------------------------------------------------------------------------------------------

def test_infeasible_reasons():
    tiny = dataclasses.replace(HW, hbm_bytes=20000.0)
    d = dep(hw=tiny)                         # 10000 B usable < 18000 B of weights
    assert not d.weights_fit()
    assert d.max_batch_size(100) == 0
    assert d.infeasibility(100).startswith("weights need")
    # weights fit, but one sequence at L=10000 (4e6 B) does not
    assert "KV cache at context 10000" in dep().infeasibility(10000)
    # beyond the card's max context: flagged, infeasible only when enforced
    short = model([layer(0), layer(1)], max_context=50)
    assert dep(short).exceeds_max_context(100) and dep(short).feasible(100)
    assert not dep(short).exceeds_max_context(50)
    assert "max_context 50" in dep(short, enforce_max_context=True).infeasibility(100)


@pytest.mark.parametrize("kw, match", [
    ({"n": 0}, "n_gpus"),
    ({"n": -2}, "n_gpus"),
    ({"weight_dtype": "fp7"}, "fp7"),
    ({"kv_dtype": 3}, "kv_dtype"),
    ({"hbm_fraction": 1.5}, "hbm_fraction"),
    ({"bandwidth_efficiency": 0.0}, "bandwidth_efficiency"),
    ({"flops_efficiency": -1.0}, "flops_efficiency"),
    ({"attention_parallel": "pipeline"}, "attention_parallel"),
    ({"max_batch": 0}, "max_batch"),
    ({"encoder_context": -1}, "encoder_context"),
    ({"compute_dtype": "fp4"}, "fp4"),
    ({"charge_all_to_all": "yes"}, "charge_all_to_all"),
    ({"n": 4, "expert_parallel": 3}, "expert_parallel"),
])
def test_bad_deployment_inputs(kw, match):
    n = kw.pop("n", 2)
    with pytest.raises(mr.McrouteError, match=match):
        Deployment(MOE, HW, n, **kw)


def test_bad_models_and_sizes():
    with pytest.raises(mr.McrouteError, match="model must be a ModelSpec"):
        Deployment(object(), HW, 1)
    with pytest.raises(mr.McrouteError, match="hardware must be a HardwareSpec"):
        Deployment(DENSE, "not-a-card-object" and object(), 1)
    with pytest.raises(mr.McrouteError, match="no-such-model"):
        Deployment("no-such-model", "h200", 1)
    with pytest.raises(mr.McrouteError, match="negative attn_params"):
        Deployment(model([layer(0, attn=-5)]), HW, 1)
    mixed = model([layer(0, ffn="moe", experts=4, top_k=2, expert=1),
                   layer(1, ffn="moe", experts=8, top_k=2, expert=1)])
    with pytest.raises(mr.McrouteError, match="disagree"):
        Deployment(mixed, HW, 1)
    with pytest.raises(mr.McrouteError, match="no MoE layers"):
        Deployment(DENSE, HW, 1, expert_placement=[0])
    d = dep()
    for bad in (0, -5, 2.5, "4q", "", "4k5"):
        with pytest.raises(mr.McrouteError, match="context"):
            d.max_batch_size(bad)
    for bad in ("4q", ""):  # a malformed size string is refused naming the parameter
        for method in (d.kv_bytes_per_sequence, d.feasible, d.infeasibility):
            with pytest.raises(mr.McrouteError, match="^context must be"):
                method(bad)
        with pytest.raises(mr.McrouteError, match="^context must be"):
            d.step_breakdown(bad, 1)
        with pytest.raises(mr.McrouteError, match="^batch_size must be"):
            d.step_time(100, bad)
    with pytest.raises(mr.McrouteError, match="batch_size"):
        d.step_breakdown(100, 0)
    with pytest.raises(mr.McrouteError, match="counts"):
        dep(MOE, n=2).step_breakdown(10, 2)
    with pytest.raises(mr.McrouteError, match="counts must be"):
        dep(MOE, n=2).step_breakdown(10, 2, np.ones((3, 4), dtype=int))


def test_size_strings_accepted_as_the_cli_accepts_them():
    """Issue 12: the API accepts every string the CLI accepts ("4k" = 4096, one parser)."""
    d = dep()
    assert d.max_batch_size("4k") == d.max_batch_size(4096)
    assert d.max_batch_size(" 4K ") == d.max_batch_size(4096)
    assert d.kv_bytes_per_sequence("4k") == d.kv_bytes_per_sequence(4096)
    assert d.kv_bytes_per_sequence_per_gpu("4k") == d.kv_bytes_per_sequence_per_gpu(4096)
    assert d.feasible("4k") == d.feasible(4096)
    assert d.infeasibility("4k", "1k") == d.infeasibility(4096, 1024)
    np.testing.assert_array_equal(d.max_batch_size(np.array(["4k", "8k"], dtype=object)),
                                  d.max_batch_size(np.array([4096, 8192])))
    assert d.step_breakdown("4k", "8") == d.step_breakdown(4096, 8)
    np.testing.assert_array_equal(d.step_time("4k", 8), d.step_time(4096, 8))


def test_describe_is_json_able_and_complete():
    import json

    info = dep(MOE, n=2).describe()
    json.dumps(info)
    for f in dataclasses.fields(Deployment):
        assert f.name in info
    assert info["model"] == "toy" and info["expert_placement"] == "contiguous"
    assert info["weight_bytes"] == 8960


# ---------------------------------------------------------------------------------------------
# Real cards: capacity monotone in context, weights equal the card's total
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, hw, n, wd", [
    ("deepseek-v3", "h200", 8, "fp8"),
    ("llama-3.1-70b", "h100-sxm", 4, "bf16"),
])
def test_real_cards_capacity(name, hw, n, wd):
    d = Deployment(name, hw, n, weight_dtype=wd)
    m = mr.load_model(name)
    assert d.weight_bytes == pytest.approx(m.total_params * mr.dtype_bytes(wd), rel=1e-12)
    for L in (1, 4096, 131072):
        assert d.kv_bytes_per_sequence(L) == pytest.approx(m.kv_bytes(L, d.kv_dtype), rel=1e-12)
    contexts = np.unique(np.geomspace(1, 2**20, 60).astype(int))
    bmax = [d.max_batch_size(int(L)) for L in contexts]
    assert np.all(np.diff(bmax) <= 0)
    assert bmax[0] > 0 and bmax[-1] < bmax[0]


def test_sliding_window_capacity_monotone():
    m = model([layer(i, window=64 if i % 2 else 0) for i in range(4)])
    d = dep(m)
    bmax = [d.max_batch_size(L) for L in range(1, 400)]
    assert np.all(np.diff(bmax) <= 0)

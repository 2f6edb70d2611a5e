"""Group-limited routing from model cards as the default routing; Placement in Deployment."""

import numpy as np
import pytest

import mcroute as mr
from mcroute._validate import McrouteError


def test_cards_expose_group_limited_routing():
    v3, v2 = mr.load_model("deepseek-v3"), mr.load_model("deepseek-v2")
    assert (v3.n_groups, v3.topk_groups) == (8, 4)  # DeepSeek-V3 config.json n_group, topk_group
    assert (v2.n_groups, v2.topk_groups) == (8, 3)
    assert v3.describe()["n_groups"] == 8 and v3.describe()["topk_groups"] == 4
    assert mr.ModelSpec.from_dict(v3.to_dict()) == v3
    r = v3.default_routing()
    assert isinstance(r, mr.GroupLimited)
    assert (r.n_groups, r.topk_groups, r.n_experts, r.top_k) == (8, 4, 256, 8)
    mx = mr.load_model("mixtral-8x7b")
    assert (mx.n_groups, mx.topk_groups) == (0, 0)
    assert isinstance(mx.default_routing(), mr.Uniform)
    assert mr.load_model("llama-3.1-8b").default_routing() is None


def test_card_rejects_groups_too_small_for_top_k():
    card = mr.load_model("deepseek-v3").to_dict()
    card["moe"]["topk_groups"] = 1  # 1 group x 32 experts >= 8: fine
    mr.ModelSpec.from_dict(card)
    card["moe"]["n_groups"] = 64  # 4 experts per group x 1 group < top_k = 8
    with pytest.raises(McrouteError, match="topk_groups"):
        mr.ModelSpec.from_dict(card)


def _dep(**kw):
    return mr.Deployment("deepseek-v3", "h200", 8, weight_dtype="fp8",
                         attention_parallel="data", **kw)


def test_decode_throughput_defaults_to_group_limited():
    dep = _dep()
    ds = mr.decode_throughput(dep, 4096, 64, n_trials=8, rng=3)
    assert "n_groups" in str(ds.attrs["routing"]) and "topk_groups" in str(ds.attrs["routing"])
    # the default is exactly the card's routing given explicitly (same draws, same numbers)
    explicit = mr.decode_throughput(dep, 4096, 64, routing=dep.model.default_routing(),
                                    n_trials=8, rng=3)
    np.testing.assert_array_equal(ds["step_time"].values, explicit["step_time"].values)
    # an explicit routing with the model's E and k still works and is recorded
    uni = mr.decode_throughput(dep, 4096, 64, routing=mr.Uniform(256, 8), n_trials=8, rng=3)
    assert "n_groups" not in str(uni.attrs["routing"])
    with pytest.raises(McrouteError, match="n_experts"):
        mr.decode_throughput(dep, 4096, 64, routing=mr.Uniform(128, 8), n_trials=8, rng=3)


def test_models_without_groups_unchanged():
    dep = mr.Deployment("mixtral-8x7b", "h100-sxm", 2)
    a = mr.decode_throughput(dep, 4096, 32, n_trials=8, rng=5)
    b = mr.decode_throughput(dep, 4096, 32, routing=mr.Uniform(8, 2), n_trials=8, rng=5)
    np.testing.assert_array_equal(a["step_time"].values, b["step_time"].values)
    assert a.attrs["routing"] == b.attrs["routing"]


def test_qs_analysis_follows_default():
    res = mr.qs_analysis("deepseek-v3", "h200", 8, q=3.0, context=4096, n_trials=4, rng=1,
                         weight_dtype="fp8")
    assert "n_groups" in str(res.attrs["routing"])

"""The roofline cost model, pinned: kernels="roofline" must reproduce it exactly.

``tests/data/roofline_regression.json`` holds the per-operator step times of
``Deployment.step_breakdown`` for fixed routed counts, and a few ``decode_throughput`` and
``qs_analysis`` means, computed by the roofline model before the calibrated kernels existed.
Only float round-off (1e-12 relative) is tolerated.
"""

import json
from pathlib import Path

import numpy as np
import pytest

import mcroute as mr

DATA = json.loads((Path(__file__).parent / "data" / "roofline_regression.json").read_text())
# Options that select the roofline model. The values were pinned when every card's weights
# defaulted to bf16; the default is now the card's release dtype (fp8 for DeepSeek-V3, int8 for
# Grok-1, ...), so the pinned configurations name bf16 unless the record gives a dtype.
ROOFLINE = {"kernels": "roofline"}


def options(rec):
    return {"weight_dtype": "bf16", **rec["options"], **ROOFLINE}


def pattern_counts(n_layers, n_experts, case):
    """Deterministic routed counts (moe_layer, expert): some experts idle, uneven loads."""
    lay = np.arange(n_layers)[:, None]
    exp = np.arange(n_experts)[None, :]
    return np.maximum(0, (lay * 31 + exp * 17 + case * 5) % 13 - 6).astype(np.int64)


@pytest.mark.parametrize("rec", DATA["cases"], ids=lambda r: f"{r['model']}-{r['case']}")
def test_step_breakdown_pinned(rec):
    dep = mr.Deployment(rec["model"], rec["hardware"], rec["n_gpus"], **options(rec))
    counts = (pattern_counts(dep.n_moe_layers, dep.n_experts, rec["case"])
              if dep.n_moe_layers else None)
    br = dep.step_breakdown(rec["context"], rec["batch_size"], counts)
    assert dep.max_batch_size(rec["context"]) == rec["max_batch_size"]
    for key in ("step_time", "memory_time", "compute_time", "all_to_all",
                "weight_bytes_per_step"):
        assert br[key] == pytest.approx(rec[key], rel=1e-12, abs=0), key
    for op, t in rec["operators"].items():
        assert br[op]["time"] == pytest.approx(t, rel=1e-12, abs=0), op


@pytest.mark.parametrize("rec", DATA["throughput_points"], ids=lambda r: r["model"])
def test_decode_throughput_pinned(rec):
    dep = mr.Deployment(rec["model"], rec["hardware"], rec["n_gpus"], **options(rec))
    # The pinned values are for uniform routing (computed before group-limited routing became
    # the default for DeepSeek-V2/V3 cards), so uniform routing is given explicitly.
    routing = mr.Uniform(dep.n_experts, dep.top_k) if dep.n_moe_layers else None
    ds = mr.decode_throughput(dep, rec["context"], routing=routing, n_trials=rec["n_trials"],
                              rng=rec["seed"])
    np.testing.assert_array_equal(np.atleast_1d(ds["batch_size"].values), rec["batch_size"])
    np.testing.assert_allclose(np.atleast_1d(ds["throughput_mean"].values),
                               rec["throughput_mean"], rtol=1e-12)


def test_qs_analysis_pinned():
    rec = DATA["qs_point"]
    spec = mr.load_model(rec["model"])
    # pinned for uniform routing (before the group-limited default of DeepSeek-V2/V3 cards)
    res = mr.qs_analysis(rec["model"], rec["hardware"], rec["n_gpus"], q=rec["q"],
                         routing=mr.Uniform(spec.n_experts, spec.top_k),
                         context=rec["context"], n_trials=rec["n_trials"], rng=rec["seed"],
                         **options(rec))
    for name in ("penalty_mean", "dense_throughput_mean", "moe_throughput_mean"):
        np.testing.assert_allclose(res[name].values, rec[name], rtol=1e-12, err_msg=name)

"""Bad input: a clear McrouteError (a ValueError) naming the parameter and the allowed range."""

import json
import math
import re
import time

import numpy as np
import pytest

import mcroute as mr
from mcroute._base import validate as V


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: mr.Uniform(0, 1), "n_experts"),
        (lambda: mr.Uniform(8, 0), "top_k"),
        (lambda: mr.Uniform(8, 9), r"top_k .*\[1, 8\]"),
        (lambda: mr.Uniform(8.5, 2), "n_experts"),
        (lambda: mr.Uniform(True, 1), "n_experts"),
        (lambda: mr.Zipf(8, 2, -1.0), "alpha"),
        (lambda: mr.Zipf(8, 2, float("nan")), "alpha"),
        (lambda: mr.LogNormal(8, 2, -0.1), "sigma"),
        (lambda: mr.LogNormal(8, 2, float("inf")), "sigma"),
        (lambda: mr.Popularity([1, -1, 2]), "non-negative"),
        (lambda: mr.Popularity([1, float("nan"), 2]), "NaN"),
        (lambda: mr.Popularity([0, 0, 0]), "all zero"),
        (lambda: mr.Popularity([1, 0, 0], top_k=2), "at least top_k=2 positive"),
        (lambda: mr.Popularity([[1, 1], [0, 0]]), "all zero"),
        (lambda: mr.Popularity(np.ones((2, 2, 2))), "shape"),
        (lambda: mr.Popularity(["a", "b"]), "weights"),
    ],
)
def test_routing_construction_errors(make, match):
    with pytest.raises(mr.McrouteError, match=match):
        make()


R = mr.Uniform(8, 2)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: mr.sample_counts(R, 0, 10), "batch_size"),
        (lambda: mr.sample_counts(R, 2.5, 10), "batch_size"),
        (lambda: mr.sample_counts(R, 4, 0), "n_trials"),
        (lambda: mr.sample_counts(R, 4, -3), "n_trials"),
        (lambda: mr.sample_counts(R, 4, 10, n_layers=0), "n_layers"),
        (lambda: mr.sample_counts(R, 4, 10, rng=-1), "seed"),
        (lambda: mr.sample_counts(R, 4, 10, rng="x"), "rng"),
        (lambda: mr.sample_counts(R, 4, 10, method="fast"), "method"),
        (lambda: mr.sample_counts(mr.Zipf(8, 2, 1.0), 4, 10, method="counts"), "exact only"),
        (lambda: mr.sample_counts("uniform", 4, 10), "routing"),
        (lambda: mr.simulate(R, 4, 10, n_devices=3), "n_devices must divide"),
        (lambda: mr.simulate(R, 4, 10, n_devices=0), "n_devices"),
        (lambda: mr.simulate(R, 4, 10, ci_prob=1.0), "ci_prob"),
        (lambda: mr.simulate(R, 4, 10, ci_prob=0), "ci_prob"),
        (lambda: mr.simulate(R, [4, 0], 10), r"batch_size\[1\]"),
        (lambda: mr.simulate(R, [], 10), "batch_size"),
        (lambda: mr.simulate(R, 4, 10, capacity_factor=0), "capacity_factor"),
        (lambda: mr.simulate(R, 4, 10, quantiles=[0.5, 2]), "quantiles"),
        (lambda: mr.device_map(8, 2, placement=[0, 1, 2, 0, 0, 0, 0, 0]), "placement"),
        (lambda: mr.expected_active_experts(R, 0), "batch_size"),
        (lambda: mr.active_experts_variance(mr.Zipf(8, 2, 1.0), 4), "exact only"),
        (lambda: mr.expert_load_distribution(mr.Zipf(8, 2, 1.0), 4), "Uniform"),
        (lambda: mr.Popularity([[1, 2], [3, 4], [5, 6]]).popularity(2), "n_layers"),
    ],
)
def test_call_errors(call, match):
    with pytest.raises(mr.McrouteError, match=match):
        call()


def test_errors_are_value_errors():
    assert issubclass(mr.McrouteError, ValueError)


def test_routings_are_immutable_and_readable():
    z = mr.Zipf(8, 2, 1.2)
    with pytest.raises(AttributeError):
        z.alpha = 3
    assert repr(z) == "Zipf(n_experts=8, top_k=2, alpha=1.2, layer_seed=0, permute=True)"
    assert z == mr.Zipf(8, 2, 1.2) and z != mr.Zipf(8, 2, 1.3)
    p = mr.Popularity([1, 1, 2])
    with pytest.raises(ValueError):
        p.weights[0, 0] = 5.0


# ---------------------------------------------------------------------------------------------
# Issue 11: integer overflow, resources refused up front, no stray exception types, silent
# nonsense refused. Each case must raise McrouteError whose message names the parameter and
# its limit, before allocating or computing anything (the time bound is a sanity bound against
# a refusal that only comes after the work, not a speed assertion).
# ---------------------------------------------------------------------------------------------



U = mr.Uniform(8, 2)
Z8 = mr.Zipf(64, 8, 1.0)  # top-8 weighted: no count-space sampling, every token is drawn
BIG = 2**63  # one past int64


def _dep():
    return mr.Deployment("deepseek-v3", "h200", 8, weight_dtype="fp8")


def _refused(call, *patterns, seconds=5.0):
    """Assert ``call`` raises McrouteError naming every pattern (regex), within ``seconds``."""
    t0 = time.perf_counter()
    with pytest.raises(mr.McrouteError) as info:
        call()
    elapsed = time.perf_counter() - t0
    msg = str(info.value)
    for pat in patterns:
        assert re.search(pat, msg), f"{pat!r} not in {msg!r}"
    assert "\n" not in msg and len(msg) < 2000, msg  # one readable line for the CLI
    assert elapsed < seconds, f"refusal took {elapsed:.1f} s"
    return msg


# Each limit as printed: in full, or as a power of two (2^40) in "in [1, 2^40]" ranges.
def _limit_pattern(value: int) -> str:
    return f"(?:{re.escape(str(value))}|{re.escape(V.format_bound(value))})"


LIM = {name: _limit_pattern(getattr(V, name)) for name in
       ("MAX_BATCH_SIZE", "MAX_LAYERS", "MAX_EXPERTS", "MAX_GPUS", "MAX_CONTEXT",
        "MAX_Q_SAMPLES", "MAX_BOOT_DRAWS", "MAX_CARD_BYTES", "INT64_MAX", "MAX_LINE_BYTES")}

# Item 4: sizes that feed int64 products.
OVERFLOW = [
    ("simulate B=2**62", lambda: mr.simulate(U, 4611686018427387904, 10, rng=0),
     ["batch_size", LIM["MAX_BATCH_SIZE"]]),
    ("simulate B=2**63", lambda: mr.simulate(U, BIG, 10, rng=0),
     ["batch_size", LIM["MAX_BATCH_SIZE"]]),
    ("simulate B list", lambda: mr.simulate(U, [4, 2**41], 10, rng=0),
     [r"batch_size\[1\]", LIM["MAX_BATCH_SIZE"]]),
    ("sample_counts B", lambda: mr.sample_counts(U, 2**62, 10, rng=0),
     ["batch_size", LIM["MAX_BATCH_SIZE"]]),
    ("sample_assignments B", lambda: mr.sample_assignments(U, 10**9, 10, rng=0),
     ["batch_size", "GiB", "MAX_RESULT_BYTES"]),
    ("expected_active_experts B", lambda: mr.expected_active_experts(U, BIG),
     ["batch_size", LIM["MAX_BATCH_SIZE"]]),
    ("active_experts_variance B", lambda: mr.active_experts_variance(U, BIG),
     ["batch_size", LIM["MAX_BATCH_SIZE"]]),
    ("Uniform E=2**63", lambda: mr.Uniform(BIG, 1), ["n_experts", LIM["MAX_EXPERTS"]]),
    ("Uniform E=10**5000", lambda: mr.Uniform(10**5000, 1), ["n_experts", "digits"]),
    ("capacity_factor 1e308", lambda: mr.simulate(U, 4, 10, capacity_factor=1e308, rng=0),
     ["capacity_factor", "1.04858e\\+06"]),
    ("microbatch_stats capacity", lambda: mr.microbatch_stats(
        np.ones((1, 1, 8), dtype=np.int64), capacity_factor=1e308), ["capacity_factor"]),
    ("throughput context 2**63", lambda: mr.decode_throughput(_dep(), BIG, n_trials=4, rng=0),
     ["context", LIM["MAX_CONTEXT"]]),
    ("throughput context string", lambda: mr.decode_throughput(
        _dep(), "9999999999999999999999k", n_trials=4, rng=0), ["context", LIM["MAX_CONTEXT"]]),
    ("throughput batch 2**62", lambda: mr.decode_throughput(
        _dep(), 4096, batch_size=2**62, n_trials=4, rng=0), ["batch_size", LIM["MAX_BATCH_SIZE"]]),
    ("Deployment n_gpus 2**63", lambda: mr.Deployment("deepseek-v3", "h200", BIG),
     ["n_gpus", LIM["MAX_GPUS"]]),
    ("Deployment max_batch 2**63", lambda: mr.Deployment("deepseek-v3", "h200", 8, max_batch=BIG),
     ["max_batch", LIM["MAX_BATCH_SIZE"]]),
    ("Deployment encoder_context", lambda: mr.Deployment(
        "switch-c-2048", "h200", 8, encoder_context=BIG), ["encoder_context",
                                                            LIM["MAX_CONTEXT"]]),
    ("Deployment.max_batch_size context", lambda: _dep().max_batch_size(BIG),
     ["context", LIM["MAX_CONTEXT"]]),
    ("qs context 2**63", lambda: mr.qs_analysis("qwen3-235b-a22b", "h200", 8, 2.0, BIG,
                                                n_trials=4, rng=0), ["context",
                                                                     LIM["MAX_CONTEXT"]]),
    ("qs n_gpus 2**63", lambda: mr.qs_analysis("qwen3-235b-a22b", "h200", BIG, 2.0, 4096,
                                               n_trials=4, rng=0), ["n_gpus", LIM["MAX_GPUS"]]),
    ("min_gpus context 2**63", lambda: mr.min_gpus("qwen3-235b-a22b", "h200", BIG),
     ["context", LIM["MAX_CONTEXT"]]),
    ("Trace n_experts 2**63", lambda: mr.Trace(np.array([[[0, 1]]]), BIG),
     ["n_experts", LIM["MAX_EXPERTS"]]),
    ("Trace id 2**63", lambda: mr.Trace(np.array([[[0, 1]]], dtype=np.uint64) * np.uint64(BIG),
                                        8), ["expert id", "0..7"]),
    ("load_trace n_experts 2**63", lambda: mr.load_trace("x.npz", n_experts=BIG),
     ["n_experts", LIM["MAX_EXPERTS"]]),
    ("Zipf n_experts 1e9", lambda: mr.Zipf(10**9, 2, 1.0), ["n_experts", LIM["MAX_EXPERTS"]]),
]

# Item 5: memory or work estimated and refused before starting.
RESOURCES = [
    ("simulate n_trials 1e9", lambda: mr.simulate(U, 4, 10**9, rng=0),
     ["n_trials", "GiB", "MAX_RESULT_BYTES"]),
    ("simulate n_layers 1e8", lambda: mr.simulate(U, 4, 10, n_layers=10**8, rng=0),
     ["n_layers", LIM["MAX_LAYERS"]]),
    ("simulate trials x layers", lambda: mr.simulate(U, 4, 10**5, n_layers=2**15, rng=0),
     ["n_trials or n_layers", "MAX_RESULT_BYTES"]),
    ("simulate experts block", lambda: mr.simulate(mr.Uniform(2**20, 1), 4, 16, n_layers=256,
                                                   rng=0),
     ["n_layers or n_experts", "MAX_RESULT_BYTES"]),
    ("simulate expert_load", lambda: mr.simulate(mr.Uniform(4096, 1), 4, 10**5,
                                                 expert_load=True, rng=0),
     ["expert loads", "MAX_RESULT_BYTES"]),
    ("simulate histogram", lambda: mr.simulate(U, 2**32, 10, histogram=True, rng=0),
     ["histogram", "batch_size", "MAX_RESULT_BYTES"]),
    ("simulate draws", lambda: mr.simulate(Z8, 2**30, 4096, rng=0),
     ["n_trials, n_layers or batch_size", "random draws", "MAX_DRAWS"]),
    ("sample_counts n_trials 1e9", lambda: mr.sample_counts(U, 4, 10**9, rng=0),
     ["n_trials", "MAX_RESULT_BYTES"]),
    ("sample_counts draws", lambda: mr.sample_counts(Z8, 2**34, 64, rng=0),
     ["random draws", "MAX_DRAWS"]),
    ("expected_active_experts layers", lambda: mr.expected_active_experts(
        mr.Uniform(2**20, 1), [1, 2], n_layers=2**12), ["n_layers", "MAX_RESULT_BYTES"]),
    ("throughput n_trials 1e9", lambda: mr.decode_throughput(_dep(), 4096, n_trials=10**9,
                                                             rng=0),
     ["n_trials", "MAX_RESULT_BYTES"]),
    ("qs n_q_samples 1e11", lambda: mr.qs_analysis(
        "qwen3-235b-a22b", "h200", 8, "lognormal:2,0.1", 4096, n_trials=4, n_q_samples=10**11,
        rng=0), ["n_q_samples", LIM["MAX_Q_SAMPLES"]]),
    ("qs n_trials 1e9", lambda: mr.qs_analysis("qwen3-235b-a22b", "h200", 8, 2.0, 4096,
                                               n_trials=10**9, rng=0),
     ["n_trials", "MAX_RESULT_BYTES"]),
    ("estimate_q n_boot 1e12", lambda: mr.estimate_q("deepseek-v3", n_boot=10**12),
     ["n_boot", LIM["MAX_BOOT_DRAWS"]]),
    ("estimate_q n_boot memory", lambda: mr.estimate_q("deepseek-v3", n_boot=2**27),
     ["n_boot", "MAX_RESULT_BYTES"]),
    ("QSpec.sample n", lambda: mr.as_q("lognormal:2,0.1").sample(10**11), ["n", "GiB"]),
    ("load_hardware /dev/zero", lambda: mr.load_hardware("/dev/zero"),
     ["/dev/zero", "not a regular file"]),
    ("load_model /dev/zero", lambda: mr.load_model("/dev/zero"),
     ["/dev/zero", "not a regular file"]),
    ("from_hf_config /dev/zero", lambda: mr.ModelSpec.from_hf_config("/dev/zero"),
     ["/dev/zero", "not a regular file"]),
    ("load_trace /dev/zero", lambda: mr.load_trace("/dev/zero"),
     ["/dev/zero", "not a regular file"]),
]


@pytest.mark.parametrize("label,call,patterns", OVERFLOW + RESOURCES,
                         ids=[c[0] for c in OVERFLOW + RESOURCES])
def test_refused_before_any_work(label, call, patterns, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _refused(call, *patterns)


def test_throughput_work_refused_up_front():
    """A request whose routing draws exceed MAX_DRAWS, while its results fit, is refused."""
    dep = _dep()
    b = dep.max_batch_size(4096)
    draws_per_trial = dep.n_moe_layers * b * dep.top_k  # per-assignment (B/E < 64)
    n = V.MAX_DRAWS // draws_per_trial + 1
    assert b / dep.n_experts < 64 and n * 9 * 8 < V.MAX_RESULT_BYTES  # the case tested
    _refused(lambda: mr.decode_throughput(dep, 4096, n_trials=n, rng=0),
             "n_trials", "random draws", "MAX_DRAWS")


def test_simulate_streams_large_legitimate_requests():
    """Within the limits a large request runs: blocks of trials stream through sampling."""
    ds = mr.simulate(mr.Uniform(256, 8), 64, 40_000, n_layers=4, rng=0)
    assert ds.sizes["trial"] == 40_000
    assert float(ds["active_experts_mean"].max()) <= 256


# --- card files ---------------------------------------------------------------------------------

HW_CARD = """name = "gpu"
display_name = "GPU"
source = ["made up"]
hbm_bytes = 80e9
hbm_bandwidth_bytes_per_s = 3e12
interconnect_bandwidth_bytes_per_s = 4.5e11
[peak_dense_flops_per_s]
bf16 = 1e15
"""

MODEL_CARD = """name = "toy"
display_name = "Toy"
source = ["made up"]
n_layers = 4
hidden = 64
vocab = 100
tie_word_embeddings = true
max_context_tokens = 1024
[attention]
kind = "gqa"
n_heads = 4
n_kv_heads = 2
head_dim = 16
[ffn]
activation = "swiglu"
intermediate = 128
[moe]
n_routed_experts = 8
top_k = 2
expert_intermediate = 32
"""

HF = {"model_type": "mixtral", "hidden_size": 64, "num_hidden_layers": 2,
      "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
      "max_position_embeddings": 1024, "intermediate_size": 32, "num_local_experts": 8,
      "num_experts_per_tok": 2}


def test_good_cards_load(tmp_path):
    (tmp_path / "gpu.toml").write_text(HW_CARD)
    (tmp_path / "toy.toml").write_text(MODEL_CARD)
    (tmp_path / "config.json").write_text(json.dumps(HF))
    assert mr.load_hardware(tmp_path / "gpu.toml").peak_flops("bf16") == 1e15
    assert mr.load_model(tmp_path / "toy.toml").n_experts == 8
    assert mr.ModelSpec.from_hf_config(tmp_path).n_experts == 8


CARDS = [
    # (file name, text or bytes, loader, patterns)
    ("gpu.toml", HW_CARD.replace("bf16 = 1e15", "bf16 = 1e-300"), mr.load_hardware,
     [r"peak_dense_flops_per_s\.bf16", "1e\\+09", "1e\\+18"]),
    ("gpu.toml", HW_CARD.replace("bf16 = 1e15", "bf16 = 1e300"), mr.load_hardware,
     [r"peak_dense_flops_per_s\.bf16", "1e\\+18"]),
    ("gpu.toml", HW_CARD.replace("= 3e12", "= 1e-300"), mr.load_hardware,
     ["hbm_bandwidth_bytes_per_s", "1e\\+09"]),
    ("gpu.toml", HW_CARD.replace("= 80e9", "= 1e300"), mr.load_hardware, ["hbm_bytes"]),
    ("gpu.toml", HW_CARD.replace("= 80e9", "= " + "9" * 5000), mr.load_hardware,
     ["not valid TOML"]),
    ("gpu.toml", HW_CARD + "x = " + "[" * 100_000 + "]" * 100_000 + "\n", mr.load_hardware,
     ["gpu.toml"]),
    ("gpu.toml", HW_CARD + "# " + "x" * (2**20) + "\n", mr.load_hardware,
     ["larger than", LIM["MAX_CARD_BYTES"]]),
    ("gpu.toml", HW_CARD.encode() + b"notes = \"\xff\xfe\"\n", mr.load_hardware, ["UTF-8"]),
    ("toy.toml", MODEL_CARD.replace("n_layers = 4", "n_layers = 100000000"), mr.load_model,
     ["'n_layers'", LIM["MAX_LAYERS"]]),
    ("toy.toml", MODEL_CARD.replace("n_routed_experts = 8", "n_routed_experts = 1000000000"),
     mr.load_model, ["moe.n_routed_experts", LIM["MAX_EXPERTS"]]),
    ("toy.toml", MODEL_CARD.replace("hidden = 64", f"hidden = {BIG - 1}"), mr.load_model,
     ["'hidden'", str(V.MAX_CARD_INT)]),
    ("toy.toml", MODEL_CARD.replace("max_context_tokens = 1024", "max_context_tokens = 2"
                                    + "0" * 15), mr.load_model, ["max_context_tokens"]),
    ("config.json", json.dumps({**HF, "num_hidden_layers": 10**8}), None,
     ["num_hidden_layers", LIM["MAX_LAYERS"]]),
    ("config.json", json.dumps({**HF, "num_local_experts": 10**9}), None,
     ["num_local_experts", LIM["MAX_EXPERTS"]]),
    ("config.json", json.dumps({**HF, "num_local_experts": BIG}), None,
     ["num_local_experts", LIM["MAX_EXPERTS"]]),
    ("config.json", json.dumps({**HF, "hidden_size": 2**70}), None, ["hidden_size"]),
    ("config.json", json.dumps({**HF, "hidden_size": "x"}), None, ["hidden_size", "'x'"]),
    ("config.json", json.dumps({**HF, "hidden_size": 64.5}), None, ["hidden_size"]),
    ("config.json", json.dumps({**HF, "num_hidden_layers": [2]}), None, ["num_hidden_layers"]),
    ("config.json", json.dumps({**HF, "model_type": ["mixtral"]}), None, ["model_type"]),
    ("config.json", json.dumps({**HF, "tie_word_embeddings": "yes"}), None,
     ["tie_word_embeddings"]),
    ("config.json", '{"hidden_size": 1' + "0" * 5000 + "}", None, ["not valid JSON"]),
    ("config.json", "[" * 100_000 + "]" * 100_000, None, ["nested too deeply"]),
    ("config.json", b'{"model_type": "\xff\xfe"}', None, ["UTF-8"]),
    ("config.json", "[1, 2]", None, ["JSON object"]),
    ("config.json", '{"x": "' + "a" * (2**20 + 10) + '"}', None,
     ["larger than", LIM["MAX_CARD_BYTES"]]),
]


@pytest.mark.parametrize("name,content,loader,patterns", CARDS)
def test_bad_card_files(tmp_path, name, content, loader, patterns):
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    load = loader or mr.ModelSpec.from_hf_config
    msg = _refused(lambda: load(p), *patterns)
    assert name in msg  # the error names the file


@pytest.mark.parametrize("arg,patterns", [
    (12, ["path_or_dict", "int"]),
    (b"config.json", ["path_or_dict", "bytes"]),
    (["a"], ["path_or_dict", "list"]),
    ({"model_type": "llama", "hidden_size": True}, ["hidden_size"]),
    ({"model_type": "mixtral", **{k: v for k, v in HF.items() if k != "model_type"},
      "num_experts_per_tok": 9}, ["num_experts_per_tok"]),
])
def test_hf_config_wrong_types(arg, patterns):
    _refused(lambda: mr.ModelSpec.from_hf_config(arg), *patterns)


def test_hardware_with_tiny_rates_refused_by_deployment():
    h = mr.load_hardware("h200")
    _refused(lambda: mr.Deployment("deepseek-v3", h.replace(flops={"bf16": 1e-300}), 8),
             "peak FLOP/s", "bf16")
    _refused(lambda: mr.Deployment("deepseek-v3", h.replace(hbm_bandwidth=1e-300), 8),
             "HBM bandwidth")
    _refused(lambda: mr.Deployment("deepseek-v3", "h200", 8, bandwidth_efficiency=1e-300),
             "bandwidth_efficiency")


# --- traces ------------------------------------------------------------------------------------

HIST_HEAD = "model,num_experts,top_k,domain,layer,selection,expert,count,n_tokens\n"


def _jsonl(rec):
    return json.dumps(rec) + "\n"


TRACES = [
    ("h.csv", HIST_HEAD + "m,1000000000000,8,d,0,topk,0,5,10\n",
     ["num_experts", LIM["MAX_EXPERTS"]]),
    ("h.csv", HIST_HEAD + "m,8,2,d,0,topk,0,99999999999999999999,10\n", ["count"]),
    ("h.csv", HIST_HEAD + "m,8,2,d,100000000,topk,0,5,10\n",
     ["layer", str(V.MAX_LAYERS - 1)]),
    ("h.csv", HIST_HEAD + "m,8,2,d,0,topk,0,5," + "1" * 200_000 + "\n", ["h.csv"]),
    ("t.jsonl", _jsonl({"experts": [0, BIG], "layer": 0, "token_idx": 0}),
     ["expert id", str(V.MAX_EXPERTS - 1), "MAX_EXPERTS"]),
    ("t.jsonl", _jsonl({"experts": [0, 1], "layer": BIG, "token_idx": 0}), ["layer"]),
    ("t.jsonl", _jsonl({"experts": [0, 1], "layer": 0, "token_idx": 2**60}),
     ["token_idx", str(V.MAX_COUNT)]),
    ("t.jsonl", _jsonl({"experts": [0, 1], "layer": 0, "token_idx": 0})
     + '{"experts": [0, 1' + "0" * 5000 + '], "layer": 0, "token_idx": 1}\n',
     ["line 2", "not valid JSON"]),
    ("t.jsonl", _jsonl({"experts": [0, 1], "layer": 0, "token_idx": 0})
     + "[" * 100_000 + "\n", ["line 2"]),
    ("t.jsonl", _jsonl({"experts": [0, 1], "layer": 0, "token_idx": 0}) + "x" * (2**20 + 5),
     ["line 2", LIM["MAX_LINE_BYTES"]]),
    ("t.jsonl", _jsonl({"experts": [0, 1], "layer": 0, "token_idx": 0}).encode()
     + b'{"experts": [0, 1], "layer": 0, "token_idx": 1, "seq_id": "\xff"}\n', ["UTF-8"]),
]


@pytest.mark.parametrize("name,content,patterns", TRACES)
def test_bad_trace_files(tmp_path, name, content, patterns):
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content)
    msg = _refused(lambda: mr.load_trace(p), *patterns)
    assert name in msg


# --- item 6: no stray exception types; floats that overflow later ------------------------------

STRAY = [
    ("qs q 1e308", lambda: mr.qs_analysis("qwen3-235b-a22b", "h200", 8, 1e308, 4096, n_trials=4,
                                          rng=0), ["q", "1e\\+06", "MAX_Q"]),
    ("qs q huge int", lambda: mr.qs_analysis("qwen3-235b-a22b", "h200", 8, 10**400, 4096,
                                             n_trials=4, rng=0), ["q", "MAX_Q"]),
    ("qs q draws", lambda: mr.qs_analysis("qwen3-235b-a22b", "h200", 8, "lognormal:1e5,20",
                                          4096, n_trials=4, rng=0), ["q", "draws", "MAX_Q"]),
    ("dense_twin q 1e308", lambda: mr.dense_twin("qwen3-235b-a22b", 1e308), ["q", "MAX_Q"]),
    ("dense_twin style array", lambda: mr.dense_twin("qwen3-235b-a22b", 2.0,
                                                     style=np.array([1, 2])), ["style"]),
    ("qs unknown option", lambda: mr.qs_analysis("qwen3-235b-a22b", "h200", 8, 2.0, 4096,
                                                 n_trials=4, foo=1), ["foo", "weight_dtype"]),
    ("min_gpus n_gpus option", lambda: mr.min_gpus("qwen3-235b-a22b", "h200", 4096, n_gpus=2),
     ["n_gpus"]),
    ("min_gpus candidates", lambda: mr.min_gpus("qwen3-235b-a22b", "h200", 4096,
                                                candidates=["a"]), ["candidates"]),
    ("Deployment.replace", lambda: _dep().replace(gpus=2), ["gpus", "n_gpus"]),
    ("roofline flops str", lambda: mr.roofline_time("x", 1.0, peak_flops=1.0, mem_bandwidth=1.0),
     ["flops"]),
    ("roofline flops huge", lambda: mr.roofline_time(10**400, 1.0, peak_flops=1.0,
                                                     mem_bandwidth=1.0), ["flops"]),
    ("attention_parallel array", lambda: mr.Deployment(
        "deepseek-v3", "h200", 8, attention_parallel=np.array([1, 2])), ["attention_parallel"]),
    ("method array", lambda: mr.simulate(U, 4, 10, method=np.array([1, 2])), ["method"]),
    ("simulate histogram flag", lambda: mr.simulate(U, 4, 10, histogram="yes"), ["histogram"]),
    ("quantiles objects", lambda: mr.simulate(U, 4, 10, quantiles=[{}]), ["quantiles"]),
    ("batch ragged", lambda: mr.simulate(U, [[1], [1, 2]], 10), ["batch_size"]),
    ("n_trials 1e308", lambda: mr.simulate(U, 4, 1e308), ["n_trials"]),
    ("n_trials nan", lambda: mr.simulate(U, 4, float("nan")), ["n_trials"]),
    ("save_dataset ds", lambda: mr.save_dataset({}, "x.json"), ["ds", "Dataset"]),
    ("save_dataset path", lambda: mr.save_dataset(mr.simulate(U, 4, 4, rng=0), 12), ["path"]),
    ("save_trace path", lambda: mr.save_trace(mr.Trace(np.array([[[0, 1]]]), 4), None),
     ["path"]),
    ("Trace mode array", lambda: mr.Trace(np.array([[[0, 1]]]), 4, mode=np.array([1, 2])),
     ["mode"]),
    ("Trace notes", lambda: mr.Trace(np.array([[[0, 1]]]), 4, notes=3), ["notes"]),
    ("PopularityTrace n_tokens", lambda: mr.PopularityTrace([5, 3, 2, 0], [1, 2], 1),
     ["n_tokens"]),
    ("load_trace format array", lambda: mr.load_trace("x.npz", format=np.array([1, 2])),
     ["format"]),
    ("load_trace path int", lambda: mr.load_trace(12), ["path"]),
    ("load_trace warmup", lambda: mr.load_trace("x.jsonl", warmup_passes="some"),
     ["warmup_passes"]),
    ("as_q huge int", lambda: mr.as_q(10**400), ["q"]),
    ("estimate_q quantiles", lambda: mr.estimate_q("deepseek-v3", quantiles=["a"]),
     ["quantiles"]),
]


@pytest.mark.parametrize("label,call,patterns", STRAY, ids=[c[0] for c in STRAY])
def test_no_stray_exceptions(label, call, patterns, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _refused(call, *patterns)


def test_real_batch_check_and_fitted_routing_refuse_foreign_fit():
    ex = np.array([[[0, 1]], [[2, 3]], [[1, 3]], [[0, 2]]] * 10)
    tr = mr.Trace(ex, 4, batch=np.repeat(np.arange(20), 2))
    for bad in (0, {}, "x", [1], np.array([1, 2])):
        _refused(lambda b=bad: mr.real_batch_check(tr, n_trials=4, n_boot=10, fit=b), "fit")
        _refused(lambda b=bad: mr.fitted_routing(tr, b, "zipf"), "fit")


# --- item 7: silent nonsense --------------------------------------------------------------------

NONSENSE = [
    ("simulate n_trials=1", lambda: mr.simulate(U, 4, 1, rng=0), ["n_trials", ">= 2"]),
    ("throughput n_trials=1", lambda: mr.decode_throughput(_dep(), 4096, n_trials=1, rng=0),
     ["n_trials", ">= 2"]),
    ("qs n_trials=1", lambda: mr.qs_analysis("qwen3-235b-a22b", "h200", 8, 2.0, 4096,
                                             n_trials=1, rng=0), ["n_trials", ">= 2"]),
    ("estimate_q n_boot=1", lambda: mr.estimate_q("deepseek-v3", n_boot=1), ["n_boot", "2"]),
    ("estimate_q unknown benchmark", lambda: mr.estimate_q("deepseek-v3", benchmarks=["nope"]),
     ["benchmarks", "'nope'", "MMLU"]),
    ("estimate_q benchmark type", lambda: mr.estimate_q("deepseek-v3", benchmarks=[1]),
     ["benchmarks"]),
    ("simulate batch dup", lambda: mr.simulate(U, [4, 4], 10, rng=0),
     ["batch_size", "repeat", "4"]),
    ("simulate quantiles dup", lambda: mr.simulate(U, 4, 10, quantiles=[0.5, 0.5], rng=0),
     ["quantiles", "repeat", "0.5"]),
    ("throughput quantiles dup", lambda: mr.decode_throughput(
        _dep(), 4096, n_trials=4, quantiles=[0.5, 0.5], rng=0), ["quantiles", "repeat"]),
    ("throughput context dup", lambda: mr.decode_throughput(
        _dep(), [4096, "4k"], n_trials=4, rng=0), ["context", "repeat", "4096"]),
    ("throughput batch dup", lambda: mr.decode_throughput(
        _dep(), 4096, batch_size=[4, 4], n_trials=4, rng=0), ["batch_size", "repeat"]),
    ("qs context dup", lambda: mr.qs_analysis("qwen3-235b-a22b", "h200", 8, 2.0, [4096, 4096],
                                              n_trials=4, rng=0), ["context", "repeat"]),
    ("qs q dup", lambda: mr.qs_analysis("qwen3-235b-a22b", "h200", 8, [2.0, 2.0], 4096,
                                        n_trials=4, rng=0), ["q", "repeat", "2.0"]),
    ("qs quantiles dup", lambda: mr.qs_analysis("qwen3-235b-a22b", "h200", 8, 2.0, 4096,
                                                n_trials=4, quantiles=[0.1, 0.1], rng=0),
     ["quantiles", "repeat"]),
    ("estimate_q quantiles dup", lambda: mr.estimate_q("deepseek-v3", quantiles=[0.5, 0.5]),
     ["quantiles", "repeat"]),
]


@pytest.mark.parametrize("label,call,patterns", NONSENSE, ids=[c[0] for c in NONSENSE])
def test_silent_nonsense_refused(label, call, patterns):
    _refused(call, *patterns)


# --- item 8: strict JSON ------------------------------------------------------------------------


def _strict_loads(text):
    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_save_dataset_json_is_strict(tmp_path):
    # deepseek-v3 in bf16 does not fit on one H200: every trial of that point is NaN
    dep = mr.Deployment("deepseek-v3", "h200", 1)
    ds = mr.decode_throughput(dep, [4096, 8192], n_trials=4, rng=0)
    ds.attrs["extra"] = {"nan": math.nan, "inf": [math.inf, -math.inf], "ok": 1.5}
    assert np.isnan(ds["throughput"].values).all()
    p = mr.save_dataset(ds, tmp_path / "x.json")
    d = _strict_loads(p.read_text())
    assert d["data_vars"]["throughput"]["data"][0] == [None] * 4
    assert json.loads(d["attrs"]["extra"], parse_constant=lambda c: 1 / 0) == {
        "nan": None, "inf": [None, None], "ok": 1.5}
    # finite values survive unchanged
    ds2 = mr.simulate(U, [4, 8], 8, rng=0)
    d2 = _strict_loads(mr.save_dataset(ds2, tmp_path / "y.json").read_text())
    assert d2["data_vars"]["active_experts_mean"]["data"] == \
        ds2["active_experts_mean"].values.tolist()


def test_strict_json_helper():
    from mcroute._labeled.results import strict_json

    text = strict_json({"a": [1.0, float("nan"), np.float64("inf")], "b": np.array([np.nan, 2])})
    assert _strict_loads(text) == {"a": [1.0, None, None], "b": [None, 2.0]}

"""Trace files: canonical round trip, malformed inputs, the real shared logs, the CLI."""

import json

import numpy as np
import pytest

import mcroute as mr
from mcroute.cli import main


def _shared_traces():
    try:
        from mcroute._base.resources import shared_data_dir
        d = shared_data_dir() / "traces"
    except (ImportError, mr.McrouteError):
        return None
    return d if d.is_dir() else None


TRACES = _shared_traces()
needs_shared = pytest.mark.skipif(
    TRACES is None, reason="shared data (../shared/data/traces or MCROUTE_SHARED_DATA) absent")


def _write_jsonl(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def _tok_records(n_tok=3, layers=(0, 1), k=2, e=8):
    out = []
    for t in range(n_tok):
        for layer in layers:
            out.append({"dataset": "d", "problem_id": 0, "layer": layer, "token_idx": t,
                        "experts": [(t + layer) % e, (t + layer + 1) % e],
                        "gating_probs": [0.6, 0.4]})
    return out


# -- canonical round trip ----------------------------------------------------------------------


def test_round_trip_identical_arrays(tmp_path):
    rng = np.random.default_rng(0)
    ex = np.stack([rng.permutation(10)[:3] for _ in range(40)]).reshape(20, 2, 3)
    t = mr.Trace(ex, 10, gate_weights=rng.random((20, 2, 3)), sequence=np.repeat([0, 1], 10),
                 step=np.tile(np.arange(10), 2), batch=np.arange(20) // 4,
                 prefill=np.arange(20) < 3, layer_ids=[3, 7], n_model_layers=12, model="toy",
                 notes=["made up"])
    p = mr.save_trace(t, tmp_path / "t.npz")
    back = mr.load_trace(p)
    for name in ("experts", "gate_weights", "sequence", "step", "batch", "prefill", "layer_ids"):
        assert np.array_equal(getattr(back, name), getattr(t, name)), name
    assert (back.n_experts, back.top_k, back.model, back.n_model_layers) == (10, 3, "toy", 12)
    assert back.describe()["sha256_16"] == t.describe()["sha256_16"]
    assert "made up" in back.notes
    with np.load(p, allow_pickle=False) as f:  # no pickles inside
        assert str(f["format"]) == "mcroute-trace"


def test_convert_cli_round_trip(tmp_path, capsys):
    src = _write_jsonl(tmp_path / "r.jsonl", _tok_records(5, layers=(0, 1, 2)))
    out = tmp_path / "c.npz"
    assert main(["trace", "convert", str(src), "--n-experts", "8", "-o", str(out)]) == 0
    direct = mr.load_trace(src, n_experts=8)
    back = mr.load_trace(out)
    for name in ("experts", "gate_weights", "sequence", "step", "layer_ids"):
        assert np.array_equal(getattr(back, name), getattr(direct, name)), name


def test_array_format_and_vllm_shape(tmp_path):
    ex = np.array([[[0, 1], [2, 3]], [[1, 2], [0, 3]]], dtype=np.int32)
    np.save(tmp_path / "routed.npy", ex)
    t = mr.load_trace(tmp_path / "routed.npy", n_experts=4)
    assert np.array_equal(t.experts, ex) and "'array'" in t.notes[0]
    t2 = mr.load_trace(tmp_path / "routed.npy")
    assert t2.n_experts == 4 and any("inferred" in n for n in t2.notes)
    np.savez(tmp_path / "one.npz", routed_experts=ex)
    assert np.array_equal(mr.load_trace(tmp_path / "one.npz", n_experts=4).experts, ex)


# -- malformed input ---------------------------------------------------------------------------


def _raises(path, match, **kw):
    with pytest.raises(mr.McrouteError, match=match) as info:
        mr.load_trace(path, **kw)
    assert str(path) in str(info.value)
    return str(info.value)


def test_non_json_and_truncated_lines(tmp_path):
    recs = _tok_records()
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(recs[0]) + "\n{not json}\n")
    _raises(p, r"line 2: not valid JSON")
    p2 = tmp_path / "trunc.jsonl"
    p2.write_text(json.dumps(recs[0]) + "\n" + json.dumps(recs[1])[:30])
    _raises(p2, r"line 2: not valid JSON.*truncated")


def test_id_range_repeats_and_k(tmp_path):
    recs = _tok_records()
    recs[2]["experts"] = [9, 1]
    _raises(_write_jsonl(tmp_path / "a.jsonl", recs), r"line 3, field 'experts': expert id 9 "
                                                      r"outside 0\.\.7", n_experts=8)
    recs = _tok_records()
    recs[1]["experts"] = [4, 4]
    _raises(_write_jsonl(tmp_path / "b.jsonl", recs), r"line 2, field 'experts': expert 4 "
                                                      r"repeated")
    recs = _tok_records()
    recs[3]["experts"] = [1, 2, 3]
    recs[3]["gating_probs"] = [0.5, 0.3, 0.2]
    _raises(_write_jsonl(tmp_path / "c.jsonl", recs), r"line 4, field 'experts': 3 expert ids, "
                                                      r"but k = 2 \(from line 1\): inconsistent k")
    recs = _tok_records()
    recs[0]["experts"] = [-1, 2]
    _raises(_write_jsonl(tmp_path / "d.jsonl", recs), r"line 1, field 'experts': expert id -1")


def test_missing_layers_counted_then_dropped(tmp_path):
    recs = [r for r in _tok_records(4) if not (r["token_idx"] == 2 and r["layer"] == 1)]
    p = _write_jsonl(tmp_path / "m.jsonl", recs)
    msg = _raises(p, r"1 of 4 tokens lack one or more of the 2 layers")
    assert "missing_layers='drop'" in msg
    t = mr.load_trace(p, missing_layers="drop")
    assert t.n_tokens == 3 and 2 not in t.step.tolist()
    assert any("dropped 1 of 4" in n for n in t.notes)


def test_duplicate_and_missing_fields(tmp_path):
    recs = _tok_records()
    recs.append(dict(recs[0]))
    _raises(_write_jsonl(tmp_path / "dup.jsonl", recs), r"line 7: duplicate record.*as line 1")
    recs = _tok_records()
    del recs[1]["layer"]
    _raises(_write_jsonl(tmp_path / "nolayer.jsonl", recs), r"line 2: missing field")


def test_empty_files(tmp_path):
    p = tmp_path / "e.jsonl"
    p.write_text("")
    _raises(p, "empty file")
    p2 = tmp_path / "blank.jsonl"
    p2.write_text("\n\n")
    _raises(p2, "empty file")


def test_pickle_inside_npz_is_refused(tmp_path):
    p = tmp_path / "evil.npz"
    np.savez(p, experts=np.zeros((2, 1, 1), dtype=np.int64), format=np.array("mcroute-trace"),
             model=np.array([{"a": 1}], dtype=object))
    _raises(p, r"field 'model'.*pickled")
    q = tmp_path / "evil.npy"
    np.save(q, np.array([{"a": 1}], dtype=object))
    _raises(q, "pickle")


def test_forward_pass_format_errors(tmp_path):
    meta = {"type": "meta", "model_id": "m", "top_k": 2, "layers_logged": [0]}

    def route(i, ids):
        return {"type": "route", "req_id": "r1", "token_idx": i, "layer": 0, "topk_ids": ids,
                "topk_weights": [0.5, 0.2]}

    p = _write_jsonl(tmp_path / "f.jsonl", [meta, route(0, [1, 2]), route(2, [1, 3])])
    _raises(p, r"line 3, field 'token_idx': token_idx jumps from 0 to 2")
    p = _write_jsonl(tmp_path / "g.jsonl", [meta, route(0, [1, 2, 3])])
    _raises(p, r"line 2, field 'topk_ids'")
    p = _write_jsonl(tmp_path / "h.jsonl", [meta, {**route(0, [1, 2]), "type": "other"}])
    _raises(p, r"line 2, field 'type'")


def test_forward_pass_segmentation(tmp_path):
    meta = {"type": "meta", "model_id": "m", "top_k": 2, "layers_logged": [0]}
    rows = [meta]
    rng = np.random.default_rng(0)

    def pass_(n, same=False):
        for i in range(n):
            ids = [1, 2] if same else rng.permutation(8)[:2].tolist()
            rows.append({"type": "route", "token_idx": i, "layer": 0, "topk_ids": ids,
                         "topk_weights": [0.5, 0.3]})

    pass_(50, same=True)   # dummy profiling pass
    pass_(4)               # warm-up
    pass_(12)              # prefill of 3 prompts
    for n in (3, 3, 2):    # decode steps
        pass_(n)
    t = mr.load_trace(_write_jsonl(tmp_path / "fp.jsonl", rows), n_experts=8)
    assert t.n_tokens == 12 + 8 and int(t.prefill.sum()) == 12
    assert np.bincount(t.batch).tolist() == [12, 3, 3, 2]
    assert t.step[t.prefill].tolist() == [-1] * 12
    assert "dropped 2" in t.notes[1]


def test_histogram_csv_errors(tmp_path):
    head = "model,hf_model,num_experts,top_k,domain,layer,selection,expert,count,n_tokens\n"
    good = "".join(f"m,h,4,2,d,0,topk,{e},{c},10\n" for e, c in enumerate([8, 6, 4, 2]))
    p = tmp_path / "h.csv"
    p.write_text(head + good)
    h = mr.load_trace(p)
    assert isinstance(h, mr.PopularityTrace)
    assert np.allclose(h.inclusion_probabilities(), [[0.8, 0.6, 0.4, 0.2]])
    assert any("popularity only" in n for n in h.notes)
    p.write_text(head + good.replace(",8,10", ",9,10"))
    _raises(p, "sum to 21, expected n_tokens \\* top_k = 10 \\* 2")
    p.write_text(head + good.replace("m,h,4,2,d,0,topk,3", "m,h,4,2,d,0,topk,7"))
    _raises(p, r"line 5, field 'expert': expert id 7 outside 0\.\.3")
    p.write_text(head + good.replace(",2,10", ",x,10"))
    _raises(p, r"line 5, field 'count': must be an integer")


def test_cli_malformed_one_line_exit_2(tmp_path, capsys):
    p = tmp_path / "bad.jsonl"
    p.write_text("{oops\n")
    assert main(["trace", "inspect", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 1" in err[0] and str(p) in err[0]


# -- the real shared logs ----------------------------------------------------------------------


@needs_shared
def test_real_mixtral_jsonl():
    d = TRACES / "mixtral8x7b_decode_per_token"
    with pytest.raises(mr.McrouteError, match="8 of 585 tokens lack"):
        mr.load_trace(d)
    t = mr.load_trace(d, missing_layers="drop", n_experts=8)
    assert (t.n_tokens, t.n_trace_layers, t.n_experts, t.top_k) == (577, 32, 2 * 4, 2)
    assert np.unique(t.sequence).size == 4 and t.gate_weights is not None
    assert np.allclose(t.gate_weights.sum(axis=2), 1.0, atol=1e-5)
    # The file lists layer 0 for every token first: 64 records are 64 tokens of layer 0.
    quick = mr.load_trace(d / "gsm8k_2_routing.jsonl", max_records=64)
    assert quick.n_tokens == 64 and quick.layer_ids.tolist() == [0]


@needs_shared
def test_real_qwen_forward_passes():
    t = mr.load_trace(TRACES / "qwen15moe_gsm8k_batched_decode", n_experts=60)
    # README: 4,292 real tokens per layer (1,406 prefill + 2,886 decode), 127 decode steps.
    assert (t.n_tokens, int(t.prefill.sum())) == (4292, 1406)
    assert t.layer_ids.tolist() == [0, 8, 12, 18, 23] and t.top_k == 4
    dec = t.decode_only()
    sizes = np.bincount(np.unique(dec.batch, return_inverse=True)[1])
    assert sizes.size == 127 and sizes.max() == 25 and sizes.min() == 11
    # README: layer 12, first decode step: the busiest expert gets 17 of 25 tokens.
    first = dec.experts[dec.batch == dec.batch.min(), 2]
    assert np.bincount(first.ravel()).max() == 17 and first.shape[0] == 25


@needs_shared
def test_real_olmoe_histograms():
    f = TRACES / "olmoe_mixtral_domain_histograms" / "expert_counts.csv"
    with pytest.raises(mr.McrouteError, match="choose one with model= and domain="):
        mr.load_trace(f)
    h = mr.load_trace(f, model="olmoe-1b-7b", domain="arxiv")
    assert h.layer_ids.tolist() == [0, 7, 15] and (h.n_experts, h.top_k) == (64, 8)
    # README: arXiv, layer 0, expert 0 is hit by 97.7 % of tokens.
    assert h.inclusion_probabilities(3)[0, 0] == pytest.approx(0.977, abs=5e-4)
    assert h.calibration_error() < 1e-8
    c = mr.sample_counts(h, 16, 4, n_layers=3, rng=0)
    assert c.shape == (4, 3, 64)


@needs_shared
def test_real_batch_check_on_qwen():
    t = mr.load_trace(TRACES / "qwen15moe_gsm8k_batched_decode", n_experts=60)
    ds = mr.real_batch_check(t, n_trials=100, n_boot=200, rng=0)
    assert ds.sizes["step"] == 127 and list(ds["routing"].values)[:2] == ["token", "marginal"]
    assert float(ds["observed_max_expert_load"].isel(step=0).sel(layer=12)) == 17
    tok = float(ds["active_experts_rel_error_all"].sel(routing="token"))
    uni = float(ds["active_experts_rel_error_all"].sel(routing="uniform"))
    # Independent tokens over-predict distinct experts in real batches; uniform more so.
    assert 0 < tok < uni
    lo, hi = ds["rho_matching_active_experts_ci"].values
    assert 0 <= lo <= float(ds["rho_matching_active_experts"]) <= hi


@needs_shared
def test_cli_inspect_fit_check_on_real_data(capsys, tmp_path):
    q = str(TRACES / "qwen15moe_gsm8k_batched_decode")
    assert main(["trace", "inspect", q]) == 0
    out = capsys.readouterr()
    assert "hottest share" in out.out and "format 'jsonl-forward-pass'" in out.err
    assert main(["trace", "fit", q, "--decode-only", "--n-boot", "20", "--seed", "1",
                 "--output", str(tmp_path / "fit.nc")]) == 0
    out = capsys.readouterr().out
    assert "overdispersion pooled over layers" in out and "zipf alpha" in out
    m = str(TRACES / "mixtral8x7b_decode_per_token")
    assert main(["trace", "check", m, "--missing-layers", "drop"]) == 2  # no microbatch ids

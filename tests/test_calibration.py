"""Calibrated kernel model (issue 13, phase A): fits, cards, time functions."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mcroute as mr
from mcroute._base.validate import McrouteError
from mcroute._cards.cards import load_hardware
from mcroute._cost import calibration as C
from mcroute._cost import fit_kernels as FK
from mcroute._cost import kernel_fits as KF


def _kernel_data_or_skip():
    try:
        d = mr._base.resources.shared_data_dir() / "kernels"
    except McrouteError as exc:
        pytest.skip(f"shared data folder absent ({exc}); the fit cannot be re-run")
    if not d.is_dir():
        pytest.skip(f"shared kernel tables absent ({d}); the fit cannot be re-run")


@pytest.fixture(scope="module")
def fits():
    _kernel_data_or_skip()
    return FK.fit_all()


# ---------------------------------------------------------------------------- fits vs data

def test_expert_fit_reproduces_every_fitted_row_within_15pct(fits):
    ex = fits["expert"]
    assert len(ex["fit_names"]) == 4
    for name in ex["fit_names"]:
        r = ex["report"][name]
        err = np.abs(r["pred"] / r["meas"] - 1)
        assert err.max() <= 0.15, (name, np.round(err, 3))


def test_expert_fit_held_out_curve_within_25pct(fits):
    # Held out: SGLang FBGEMM Triton FP8 grouped GEMM on H200 (other kernel, other GPU), predicted
    # with the shared parameters and the DeepGEMM curve's floor and compute efficiency.
    r = fits["expert"]["report"]["sglang_fbgemm_triton_fp8_h200"]
    assert r["hold"]
    assert "sglang_fbgemm_triton_fp8_h200" not in fits["expert"]["fit_names"]
    err = np.abs(r["pred"] / r["meas"] - 1)
    assert len(err) == 5 and err.max() <= 0.25, np.round(err, 3)


def test_binomial_expectation_matches_sampled_loads(fits):
    # The fit averages the per-expert cost over the exact Binomial(M, k/E) law of one expert's
    # load. Check it against expert_gemm_time on loads sampled with mr.sample_counts for the
    # Qwen3 curve at M = 64 (E = 128, top-8): Monte Carlo mean within 4 standard errors.
    ex = fits["expert"]
    c = ex["curves"]["vllm_qwen3_fp8_h100"]
    i = c["M"].index(64)
    sh = dict(zip(KF._SHARED, (v for v, _ in ex["shared"].values()), strict=True))
    pc = ex["per_curve"]["vllm_qwen3_fp8_h100"]
    par = dict(sh, moe_layer_floor_s=pc["floor"], moe_compute_eta=pc["eta_c"])
    counts = mr.sample_counts(mr.Uniform(128, 8), 64, 4000, rng=7)[:, 0, :]
    t = C.expert_gemm_time(counts, c["W"], c["f"], bw=c["bw"], peak_flops=c["P"], p=par,
                           act_bytes_per_token=c["a"])
    exact = KF._curve_model(c, tuple(sh[k] for k in KF._SHARED), pc["floor"], pc["eta_c"])[i]
    se = t.std(ddof=1) / math.sqrt(len(t))
    assert abs(t.mean() - exact) <= 4 * se + 1e-12 * exact


def test_deepep_low_latency_reproduced_within_15pct_by_committed_card():
    _kernel_data_or_skip()
    # Latest table version (v5_legacy_doc, same numbers as README v5 2025-06-05): H800, 128
    # tokens per rank, hidden 7168, top-8, FP8 dispatch (+ one fp32 scale per 128), BF16 combine.
    rows = [r for r in FK.read_table("deepep_readme_low_latency_kernels_h800.csv")
            if r["readme_version"] == "v5_legacy_doc"]
    assert [int(r["dispatch_num_ep"]) for r in rows] == [8, 16, 32, 64, 128, 256]
    par = C.load_kernel_card("hopper").point()
    h800 = load_hardware("h800")
    for r in rows:
        d, c = C.all_to_all_time(128, 7168, 8, ep=int(r["dispatch_num_ep"]), gpus_per_node=8,
                                 dispatch_bytes_per_value=1 + 4 / 128, combine_bytes_per_value=2,
                                 nvlink_bw=h800.interconnect_bandwidth, scaleout_bw=50e9, p=par)
        assert abs(float(d) / (float(r["dispatch_latency_us"]) * 1e-6) - 1) <= 0.15, r
        assert abs(float(c) / (float(r["combine_latency_us"]) * 1e-6) - 1) <= 0.15, r


def test_refit_reproduces_committed_cards(fits):
    problems = FK.check_cards(FK.build_cards(fits))
    assert problems == []


def test_check_detects_a_changed_card(fits, tmp_path):
    cards = FK.build_cards(fits)
    FK.write_cards(cards, tmp_path)
    assert FK.check_cards(cards, tmp_path) == []
    text = (tmp_path / "hopper.toml").read_text()
    v = cards["hopper"]["params"]["hbm_eta"]["value"]
    text = text.replace(f"[params.hbm_eta]\nvalue = {FK._num(v)}",
                        f"[params.hbm_eta]\nvalue = {FK._num(v * 0.9)}")
    (tmp_path / "hopper.toml").write_text(text)
    problems = FK.check_cards(cards, tmp_path)
    assert len(problems) == 1 and "hbm_eta.value" in problems[0]


# ---------------------------------------------------------------------------- cards

def test_cards_cover_every_parameter_with_provenance():
    assert C.list_kernel_cards() == ["generic", "hopper", "mi300"]
    for name in C.list_kernel_cards():
        card = C.load_kernel_card(name)
        assert set(card.params) == set(C.PARAM_NAMES)
        for k, p in card.params.items():
            assert p.source, (name, k)
            assert p.sd >= 0
            assert p.lower <= p.value <= p.upper
            if p.units == "1" and k not in ("moe_overlap_p", "dense_overlap_p"):
                assert 0 < p.value <= 1 and p.upper <= 1, (name, k)


def test_generic_card_is_wider_than_hopper():
    hop = C.load_kernel_card("hopper").params
    gen = C.load_kernel_card("generic").params
    for k in C.PARAM_NAMES:
        if hop[k].sd > 0 or hop[k].value > 0:
            assert gen[k].sd >= hop[k].sd, k


def test_unknown_card_lists_known_names():
    with pytest.raises(McrouteError, match="unknown kernel card 'tpu'.*generic, hopper, mi300"):
        C.load_kernel_card("tpu")


def test_malformed_card_names_file_and_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\ndescription = "x"\nhardware = []\n[params.hbm_eta]\n'
                   'value = 0.9\nsd = 0.1\nunits = "1"\ndist = "normal"\nsource = "x"\n')
    with pytest.raises(McrouteError, match=r"bad\.toml: missing parameter\(s\)"):
        C.load_kernel_card(bad)
    bad.write_text("name = ")
    with pytest.raises(McrouteError, match=r"bad\.toml: not valid TOML"):
        C.load_kernel_card(bad)


def test_kernel_card_for_maps_hardware_and_falls_back_to_generic():
    assert C.kernel_card_for("h800").name == "hopper"
    assert C.kernel_card_for(load_hardware("h100-sxm")).name == "hopper"
    assert C.kernel_card_for("mi355x").name == "mi300"
    assert C.kernel_card_for("b200").name == "generic"
    card = C.kernel_card_for("some-future-gpu")
    assert card.name == "generic"


def test_draw_is_reproducible_and_clipped():
    card = C.load_kernel_card("generic")
    a = card.draw(20000, rng=123)
    b = card.draw(20000, rng=123)
    c = card.draw(20000, rng=124)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    for k, p in card.params.items():
        assert a[k].shape == (20000,)
        assert a[k].min() >= p.lower and a[k].max() <= p.upper, k
    # The generic card's efficiencies near 1 must be clipped at 1 (value + sd > 1).
    assert a["dense_stream_eta"].max() == 1.0
    # An unclipped normal parameter: the draws' mean is the value within 4 standard errors.
    hop = C.load_kernel_card("hopper")
    h = hop.draw(20000, rng=5)
    p = hop.params["a2a_eta_scaleout"]
    assert p.dist == "normal" and p.lower < p.value - 4.5 * p.sd and p.value + 4.5 * p.sd < p.upper
    assert abs(h["a2a_eta_scaleout"].mean() - p.value) <= 4 * p.sd / math.sqrt(20000)
    # A lognormal parameter has median ``value``: the share of draws below it is 1/2 within 4
    # binomial standard errors.
    q = hop.params["moe_layer_floor_s"]
    assert q.dist == "lognormal"
    share = (h["moe_layer_floor_s"] < q.value).mean()
    assert abs(share - 0.5) <= 4 * math.sqrt(0.25 / 20000)


def test_draw_rejects_bad_n():
    with pytest.raises(McrouteError, match="n \\(number of draws\\)"):
        C.load_kernel_card("hopper").draw(0)


# ---------------------------------------------------------------------------- time functions

def test_expert_cost_from_each_experts_own_load():
    par = C.load_kernel_card("hopper").point()
    kw = dict(bw=3.35e12, peak_flops=1.979e15, p=par)
    W, f = 44e6, 88e6
    loads = np.array([[3, 0, 1, 60]])
    t = C.expert_gemm_time(loads, W, f, **kw)[0]
    single = [C.expert_gemm_time(np.array([m]), W, f, **kw) - par["moe_layer_floor_s"]
              for m in (3, 1, 60)]
    assert t == pytest.approx(par["moe_layer_floor_s"] + sum(single), rel=1e-12)
    # Same total tokens, spread differently: a different time (not a function of the mean).
    assert C.expert_gemm_time(np.array([[32, 32, 0, 0]]), W, f, **kw)[0] != pytest.approx(
        C.expert_gemm_time(np.array([[16, 16, 16, 16]]), W, f, **kw)[0], rel=1e-3)


def test_per_trial_parameters_broadcast_on_leading_axis():
    card = C.load_kernel_card("hopper")
    d = card.draw(5, rng=3)
    loads = np.random.default_rng(0).integers(0, 5, size=(5, 3, 16))
    t = C.expert_gemm_time(loads, 44e6, 88e6, bw=3.35e12, peak_flops=1.979e15, p=d)
    assert t.shape == (5, 3)
    for i in range(5):
        pi = {k: float(v[i]) for k, v in d.items()}
        ti = C.expert_gemm_time(loads[i], 44e6, 88e6, bw=3.35e12, peak_flops=1.979e15, p=pi)
        np.testing.assert_allclose(t[i], ti, rtol=1e-12)
    tok = np.full(5, 128.0)
    dd, cc = C.all_to_all_time(tok, 7168, 8, ep=64, gpus_per_node=8, dispatch_bytes_per_value=1,
                               combine_bytes_per_value=2, nvlink_bw=2e11, scaleout_bw=5e10, p=d)
    assert dd.shape == cc.shape == (5,)


def test_bad_inputs_raise_named_errors():
    par = C.load_kernel_card("hopper").point()
    with pytest.raises(McrouteError, match="loads"):
        C.expert_gemm_time([[-1, 2]], 1e6, 1e6, bw=1e12, peak_flops=1e15, p=par)
    with pytest.raises(McrouteError, match="attention kind"):
        C.attention_time("linear", 1.0, 1.0, bw=1e12, peak_flops=1e15, p=par)
    with pytest.raises(McrouteError, match="ep must be an integer"):
        C.all_to_all_time(1, 1, 1, ep=0, gpus_per_node=8, dispatch_bytes_per_value=1,
                          combine_bytes_per_value=2, nvlink_bw=1e11, scaleout_bw=1e10, p=par)
    with pytest.raises(McrouteError, match="bw"):
        C.hbm_time(1.0, bw=0, p=par)


_eff = st.floats(1e-3, 1.0)
_time = st.floats(0.0, 1e-3)


@st.composite
def _params(draw):
    """Either a random draw from a bundled card, or arbitrary values within the limits."""
    if draw(st.booleans()):
        card = C.load_kernel_card(draw(st.sampled_from(C.list_kernel_cards())))
        d = card.draw(1, rng=draw(st.integers(0, 2**32)))
        return {k: float(v[0]) for k, v in d.items()}
    p = {}
    for k, u in C.PARAM_NAMES.items():
        if k.endswith("overlap_p"):
            p[k] = draw(st.floats(1.0, 64.0))
        elif u == "1":
            p[k] = draw(_eff)
        elif u == "tokens":
            p[k] = draw(st.floats(0.0, 1e3))
        else:
            p[k] = draw(_time)
    return p


def _ge(t, roof):
    t, roof = np.asarray(t, float), np.asarray(roof, float)
    assert np.all(t >= roof * (1 - 1e-12)), (t, roof)


@settings(max_examples=150, deadline=None)
@given(par=_params(),
       loads=st.lists(st.integers(0, 5000), min_size=1, max_size=12),
       W=st.floats(1e3, 1e9), f=st.floats(1e3, 1e10), a=st.floats(0, 1e5),
       bw=st.floats(1e11, 1e13), P=st.floats(1e13, 1e16))
def test_expert_time_at_least_roofline(par, loads, W, f, a, bw, P):
    m = np.array(loads, dtype=float)
    t = C.expert_gemm_time(m, W, f, bw=bw, peak_flops=P, p=par, act_bytes_per_token=a)
    roof = np.where(m > 0, np.maximum((W + m * a) / bw, m * f / P), 0.0).sum()
    _ge(t, roof)


@settings(max_examples=150, deadline=None)
@given(par=_params(), m=st.integers(0, 10000), wb=st.floats(0, 1e10), fl=st.floats(0, 1e14),
       kv=st.floats(0, 1e10), afl=st.floats(0, 1e14), bw=st.floats(1e11, 1e13),
       P=st.floats(1e13, 1e16), kind=st.sampled_from(["mla", "gqa", "mha"]),
       nbytes=st.floats(0, 1e12))
def test_dense_attention_hbm_at_least_roofline(par, m, wb, fl, kv, afl, bw, P, kind, nbytes):
    t = C.dense_gemm_time(m, wb, fl, bw=bw, peak_flops=P, p=par)
    _ge(t, max(wb / bw, fl / P) if m > 0 else 0.0)
    _ge(C.attention_time(kind, kv, afl, bw=bw, peak_flops=P, p=par), max(kv / bw, afl / P))
    _ge(C.hbm_time(nbytes, bw=bw, p=par), nbytes / bw)
    assert C.layer_overhead(par) >= 0


@settings(max_examples=150, deadline=None)
@given(par=_params(), tok=st.integers(0, 4096), hidden=st.integers(1, 16384),
       k=st.integers(1, 16), ep=st.integers(1, 512), gpn=st.integers(1, 72),
       db=st.floats(0.5, 4), cb=st.floats(0.5, 4), nv=st.floats(1e10, 2e12),
       so=st.floats(1e9, 1e11), S=st.floats(0, 1e10), n=st.integers(1, 72))
def test_communication_at_least_roofline(par, tok, hidden, k, ep, gpn, db, cb, nv, so, S, n):
    d, c = C.all_to_all_time(tok, hidden, k, ep=ep, gpus_per_node=gpn,
                             dispatch_bytes_per_value=db, combine_bytes_per_value=cb,
                             nvlink_bw=nv, scaleout_bw=so, p=par)
    r = max(0, ep - gpn) / ep
    for t, b in ((d, db), (c, cb)):
        v = tok * k * hidden * b
        roof = 0.0 if ep == 1 else max(v * r / so, v * (1 - r) / nv)
        _ge(t, roof)
    _ge(C.all_reduce_time(S, n, link_bw=nv, p=par), 2 * (n - 1) / n * S / nv)


def test_fit_command_check_and_report(capsys):
    _kernel_data_or_skip()
    assert FK.main(["--check"]) == 0
    out = capsys.readouterr().out
    assert "committed cards match the re-fit" in out
    assert "[HELD OUT] sglang_fbgemm_triton_fp8_h200" in out


def test_card_hardware_names_are_hardware_cards():
    # Every listed name is a bundled hardware card, except h20 (no hardware card yet; listed so
    # that a future h20 card maps to the Hopper kernels).
    known = set(mr.list_hardware())
    for name in C.list_kernel_cards():
        for hw in C.load_kernel_card(name).hardware:
            assert hw in known or hw == "h20", (name, hw)


def test_expert_time_matches_elementwise_reference():
    # expert_gemm_time tabulates cost(m) for integer loads; compare with an obviously-correct
    # element-by-element sum of expert_cost, with per-trial parameters.
    card = C.load_kernel_card("generic")
    d = card.draw(6, rng=11)
    loads = np.random.default_rng(2).poisson(3.0, size=(6, 4, 40))
    W, f, a = 30e6, 60e6, 2e4
    t = C.expert_gemm_time(loads, W, f, bw=4.8e12, peak_flops=1.98e15, p=d,
                           act_bytes_per_token=a)
    ref = np.zeros((6, 4))
    for i in range(6):
        for j in range(4):
            ref[i, j] = d["moe_layer_floor_s"][i] + sum(
                float(C.expert_cost(m, W, f, a, bw=4.8e12, peak_flops=1.98e15,
                                    eta_max=d["moe_stream_eta_max"][i],
                                    m_half=d["moe_stream_m_half"][i],
                                    eta_c=d["moe_compute_eta"][i], p=d["moe_overlap_p"][i],
                                    tau=d["moe_expert_overhead_s"][i]))
                for m in loads[i, j] if m > 0)
    np.testing.assert_allclose(t, ref, rtol=1e-12)
    # Non-integer loads take the element-wise path and agree with the tabulated one.
    t2 = C.expert_gemm_time(loads + 1e-9 * (loads > 0), W, f, bw=4.8e12, peak_flops=1.98e15,
                            p=d, act_bytes_per_token=a)
    np.testing.assert_allclose(t2, ref, rtol=1e-6)

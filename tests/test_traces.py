"""Trace-derived routing: Trace as a routing distribution, Overdispersed, fitting, real data."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mcroute as mr
from mcroute._labeled.trace_fit import overdispersion
from mcroute._traces.trace import calibrate_pl_weights


def _synthetic_trace(seed, n_tok=400, n_lay=2, e=16, k=3, **kw):
    """Skewed trace whose layer-1 choice depends on layer 0 (joint structure across layers)."""
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.full(e, 0.5))
    ex = np.empty((n_tok, n_lay, k), dtype=np.int64)
    for t in range(n_tok):
        first = rng.choice(e, k, replace=False, p=w)
        ex[t, 0] = first
        for layer in range(1, n_lay):
            shift = (first + layer) % e if rng.random() < 0.7 else rng.choice(e, k, replace=False)
            ex[t, layer] = shift
    return mr.Trace(ex, e, **kw)


# -- Trace as a routing distribution -----------------------------------------------------------


@pytest.mark.parametrize("mode", ["token", "marginal"])
def test_expected_active_matches_exact_formula(mode):
    trace = _synthetic_trace(1).with_mode(mode)
    b, n = 8, 4000
    ds = mr.simulate(trace, b, n, n_layers=2, rng=np.random.default_rng(11))
    exact = mr.expected_active_experts(trace, b, n_layers=2)
    mean = ds["active_experts_mean"].values
    se = ds["active_experts_se"].values
    # Tokens are independent in both modes, so the exact formula holds with the empirical
    # inclusion probabilities (token mode: exactly; marginal: via the calibrated weights, whose
    # error is < 1e-9). 4 standard errors: a false alarm has probability < 1e-4 per layer.
    assert np.all(np.abs(mean - exact) < 4 * se), (mean, exact, se)
    if mode == "marginal":
        assert trace.calibration_error() < 1e-8


def test_token_mode_keeps_whole_tokens_across_layers():
    trace = _synthetic_trace(2, n_tok=50)
    a = mr.sample_assignments(trace, batch_size=6, n_trials=20, n_layers=2, rng=3)
    ex = trace.experts
    for t in range(a.shape[0]):
        for b in range(a.shape[2]):
            rows = np.nonzero((ex[:, 0] == a[t, 0, b]).all(axis=1))[0]
            assert any((ex[r, 1] == a[t, 1, b]).all() for r in rows)
    counts = mr.sample_counts(trace, 6, 20, n_layers=2, rng=3, method="assignment")
    ref = np.zeros_like(counts)
    for t in range(a.shape[0]):
        for layer in range(2):
            np.add.at(ref[t, layer], a[t, layer].ravel(), 1)
    assert np.array_equal(counts, ref)


def test_inclusion_probabilities_are_empirical():
    ex = np.array([[[0, 1]], [[0, 2]], [[3, 0]], [[1, 2]]])
    t = mr.Trace(ex, 4)
    assert np.allclose(t.inclusion_probabilities(), [[0.75, 0.5, 0.5, 0.25]])
    assert np.allclose(t.popularity(), [[0.375, 0.25, 0.25, 0.125]])
    assert t.permutation()[0, 0] == 0


def test_sequence_mode_draws_runs_of_consecutive_tokens():
    n_seq, length, block = 4, 10, 3
    ex = np.arange(n_seq * length).reshape(-1, 1, 1)  # token i routes to expert i (k = 1)
    seq = np.repeat(np.arange(n_seq), length)
    step = np.tile(np.arange(length), n_seq)
    t = mr.Trace(ex, n_seq * length, sequence=seq, step=step, mode="sequence", block_size=block)
    a = mr.sample_assignments(t, batch_size=7, n_trials=300, rng=5)[:, 0, :, 0]
    for row in a:
        for start in (0, 3, 6):
            run = row[start:min(start + block, 7)]
            s = run // length
            assert np.all(s == s[0])
            assert np.all(np.diff(run % length) % length == 1)
    # Every token is equally likely at every position: mean count per token is 7·300/40.
    c = np.bincount(a.ravel(), minlength=40)
    # Each token's count is a sum over trials; its sd is below sqrt(n_trials·7·(1/40)·block).
    assert np.all(np.abs(c - 7 * 300 / 40) < 5 * np.sqrt(300 * 7 / 40 * block))


def test_sequence_mode_needs_sequence_ids():
    with pytest.raises(mr.McrouteError, match="sequence id"):
        mr.Trace(np.array([[[0]], [[1]]]), 2, mode="sequence")


def test_same_seed_same_numbers_and_modes_differ():
    tr = _synthetic_trace(3, sequence=np.repeat(np.arange(4), 100), step=np.tile(np.arange(100), 4))
    for mode in ("token", "sequence", "marginal"):
        r = tr.with_mode(mode)
        c1 = mr.sample_counts(r, 9, 40, n_layers=2, rng=7)
        assert np.array_equal(c1, mr.sample_counts(r, 9, 40, n_layers=2, rng=7))
        assert np.all(c1.sum(axis=2) == 9 * 3)


def test_thread_count_does_not_change_results(tmp_path):
    script = tmp_path / "draw.py"
    script.write_text(
        "import numpy as np, mcroute as mr, hashlib\n"
        "ex = np.random.default_rng(0).integers(0, 8, size=(200, 2, 1))\n"
        "t = mr.Trace(ex, 8, sequence=np.repeat(np.arange(4), 50))\n"
        "out = [mr.sample_counts(r, 5, 100, n_layers=2, rng=1) for r in "
        "(t, t.with_mode('sequence', block_size=2), t.with_mode('marginal'), "
        "mr.Overdispersed(t, 0.2), mr.Overdispersed(mr.Zipf(8, 1, 1.0), 0.2))]\n"
        "print(hashlib.sha256(np.concatenate([o.ravel() for o in out]).tobytes()).hexdigest())\n"
    )
    digests = []
    for n in ("1", "2"):
        env = {**os.environ, "NUMBA_NUM_THREADS": n}
        res = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                             text=True, check=True)
        digests.append(res.stdout.strip())
    assert digests[0] == digests[1]


# -- layer mapping -----------------------------------------------------------------------------


def test_layer_mapping_is_explicit():
    t = _synthetic_trace(4, n_lay=3)
    with pytest.raises(mr.McrouteError, match="layer_map"):
        mr.sample_counts(t, 4, 2, n_layers=5, rng=0)
    assert t.with_layer_map("cycle")._layer_index(5).tolist() == [0, 1, 2, 0, 1]
    # Trace layers at model layers 0, 8, 23 of 24; 6 simulated layers at depths (i + .5) / 6.
    t2 = mr.Trace(t.experts, t.n_experts, layer_ids=[0, 8, 23], n_model_layers=24,
                  layer_map="nearest")
    assert t2._layer_index(6).tolist() == [0, 1, 1, 1, 2, 2]
    t3 = t.with_layer_map([2, 2, 0])
    c = mr.sample_counts(t3, 4, 3, n_layers=3, rng=0)
    assert c.shape == (3, 3, t.n_experts)
    with pytest.raises(mr.McrouteError, match="layer_map"):
        t.with_layer_map([0, 5])
    with pytest.raises(mr.McrouteError, match="layer_map"):
        t.with_layer_map("closest")


def test_trace_works_in_decode_throughput():
    spec = mr.load_model("mixtral-8x7b")
    ex = np.random.default_rng(0).integers(0, 8, size=(64, 1, 1))
    ex = np.concatenate([ex, (ex + 1) % 8], axis=2)
    t = mr.Trace(ex, 8, layer_map="cycle")
    dep = mr.Deployment(spec, mr.load_hardware("h100-sxm"), n_gpus=2)
    ds = mr.decode_throughput(dep, 4096, batch_size=8, routing=t, n_trials=32, rng=0)
    assert np.all(np.isfinite(ds["throughput_mean"].values))


# -- Overdispersed ---------------------------------------------------------------------------


@pytest.mark.parametrize("base", ["uniform", "zipf", "trace"])
def test_overdispersed_expected_active_exact(base):
    r0 = {"uniform": mr.Uniform(32, 4), "zipf": mr.Zipf(32, 4, 1.0),
          "trace": _synthetic_trace(5, e=32, k=4)}[base]
    r = mr.Overdispersed(r0, rho=0.1)
    b = 12
    n_lay = 2 if base == "trace" else 1
    c = mr.sample_counts(r, b, 6000, n_layers=n_lay, rng=np.random.default_rng(21))
    act = (c > 0).sum(axis=2)
    exact = np.atleast_1d(r.expected_active(b, n_lay))
    se = act.std(axis=0, ddof=1) / np.sqrt(act.shape[0])
    # Chinese-restaurant law of the fresh tokens, exact; 4 se tolerance (Monte Carlo only).
    assert np.all(np.abs(act.mean(axis=0) - exact) < 4 * se)
    indep = np.atleast_1d(mr.expected_active_experts(r0, b, n_lay))
    assert np.all(exact < indep)


def test_overdispersed_load_variance_has_intraclass_correlation():
    rho, b, e, k = 0.2, 10, 16, 2
    r = mr.Overdispersed(mr.Uniform(e, k), rho)
    c = mr.sample_counts(r, b, 20000, rng=np.random.default_rng(8))[:, 0, :].astype(float)
    pi = k / e
    target = b * pi * (1 - pi) * (1 + (b - 1) * rho)
    var = c.var(axis=0, ddof=1).mean()
    # The variance estimate pooled over 16 experts from 20000 trials has relative sd below
    # sqrt(2 / 20000) · (kurtosis factor ≈ 2): 5 % is > 5 sd.
    assert abs(var / target - 1) < 0.05
    assert abs(c.var(axis=0, ddof=1).mean() / (b * pi * (1 - pi)) - 1) > 0.5


def test_overdispersion_estimator_recovers_rho():
    reps = 20
    for rho in (0.0, 0.1):
        r = mr.Overdispersed(mr.Uniform(24, 3), rho)
        est, covered = [], 0
        for seed in range(reps):
            a = mr.sample_assignments(r, 16, 300, rng=np.random.default_rng(seed))  # 300 batches
            t = mr.Trace(a[:, 0].reshape(-1, 1, 3), 24, batch=np.repeat(np.arange(300), 16))
            od = overdispersion(t, n_boot=100, rng=seed, block=1)
            lo, hi = od["rho_pooled_ci"]
            covered += lo <= rho <= hi + 1e-12
            est.append(od["rho_pooled"])
        est = np.array(est)
        # Moment estimator: unbiased up to O(1/G); mean within 4 se of the truth.
        assert abs(est.mean() - rho) < 4 * est.std(ddof=1) / np.sqrt(reps) + 1e-3
        # 95 % intervals (measured coverage ~0.92 with 40 runs): P(covered <= 13) < 0.01 at 0.92.
        assert covered >= 14, covered


# -- fitting -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "value"), [("zipf", 1.0), ("lognormal", 1.0)])
def test_fit_recovers_parameter_with_calibrated_intervals(family, value):
    e, k, n_tok, reps = 16, 2, 3000, 40
    cls = mr.Zipf if family == "zipf" else mr.LogNormal
    truth = cls(e, k, value)
    rng = np.random.default_rng(100)
    name = "alpha" if family == "zipf" else "sigma"
    covered, est = 0, []
    for _ in range(reps):
        counts = mr.sample_counts(truth, n_tok, 1, rng=rng)[0]
        fit = mr.fit_routing(mr.PopularityTrace(counts, n_tok, k), n_boot=100, ci_prob=0.9,
                             rng=rng)
        lo, hi = fit[f"{name}_ci"].values[0]
        covered += lo <= value <= hi
        est.append(float(fit[name][0]))
    # 90 % intervals: if calibrated, covered ~ Binomial(40, 0.9) (mean 36, sd 1.9);
    # P(covered <= 30) = 0.006, so >= 31 is required.
    assert covered >= 31, covered
    est = np.array(est)
    # Point estimates: mean within 4 se of the truth plus the bootstrap bias bound (the ranked
    # likelihood is biased upwards by a few thousandths at this N; checked to be < 0.02).
    assert abs(est.mean() - value) < 4 * est.std(ddof=1) / np.sqrt(reps) + 0.02


def test_fit_on_per_token_trace_picks_the_right_family():
    rng = np.random.default_rng(9)
    for family, cls in (("zipf", mr.Zipf(32, 4, 1.2)), ("lognormal", mr.LogNormal(32, 4, 1.5))):
        a = mr.sample_assignments(cls, 20000, 1, rng=rng)[0, 0]
        t = mr.Trace(a[:, None, :], 32)
        fit = mr.fit_routing(t, n_boot=30, rng=rng)
        assert str(fit["better_family"].values[0]) == family
        assert "rho" not in fit
        name = "alpha" if family == "zipf" else "sigma"
        lo, hi = fit[f"{name}_ci"].values[0]
        assert hi - lo < 0.2
        assert fit.attrs["seed"] >= 0


def test_fitted_routing_places_weights_on_observed_ranks():
    counts = np.array([[10, 50, 30, 10]])
    p = mr.PopularityTrace(counts, n_tokens=50, top_k=2)
    fit = mr.fit_routing(p, n_boot=20, rng=0)
    r = mr.fitted_routing(p, fit, "zipf")
    assert int(np.argmax(r.weights[0])) == 1
    c = mr.sample_counts(r, 10, 5, rng=0)
    assert c.shape == (5, 1, 4)


def test_calibrated_pl_weights_reproduce_inclusion():
    pi = np.array([0.95, 0.6, 0.2, 0.15, 0.1])
    w, err = calibrate_pl_weights(pi, 2)
    assert err < 1e-9
    assert np.allclose(mr.Popularity(w, top_k=2).inclusion_probabilities()[0], pi, atol=1e-9)


# -- inspection --------------------------------------------------------------------------------


def test_inspect_uniform_and_correlated_layers():
    e, n = 8, 4000
    rng = np.random.default_rng(2)
    l0 = rng.integers(0, e, size=n)
    dep = np.stack([l0, (l0 + 3) % e], axis=1)[:, :, None]
    ind = np.stack([l0, rng.integers(0, e, size=n)], axis=1)[:, :, None]
    d = mr.inspect_trace(mr.Trace(dep, e))
    i = mr.inspect_trace(mr.Trace(ind, e))
    assert d["layer_correlation"].values[0] == pytest.approx(1.0, abs=0.01)
    # Bias-corrected Cramér's V of independent layers: ~0 (sd ~ 0.01 at n = 4000).
    assert i["layer_correlation"].values[0] < 0.05
    flat = mr.inspect_trace(mr.Trace(np.arange(16).reshape(16, 1, 1) % 8, 8))
    assert float(flat["effective_experts"][0]) == pytest.approx(8.0)
    assert float(flat["gini"][0]) == pytest.approx(0.0, abs=1e-12)
    assert float(flat["hottest_share"][0]) == pytest.approx(1 / 8)


# -- documented datasets -----------------------------------------------------------------------

DOC = (Path(__file__).resolve().parent.parent / "docs" / "traces.md").read_text()


def _check_documented(ds):
    import re

    documented = set(re.findall(r"`([a-z_][a-z0-9_]*)`", DOC))

    def known(n):
        return n in documented or any(n.endswith(s) and n[: -len(s)] in documented
                                      for s in ("_mean", "_se", "_ci"))

    missing = sorted(n for n in ds.data_vars if not known(n))
    assert not missing, f"not documented in docs/traces.md: {missing}"
    for name, var in ds.variables.items():
        assert "units" in var.attrs, f"{name} has no units attr"
    for dim in ds.dims:
        assert dim in ds.coords, dim


def test_trace_datasets_documented_with_units():
    rng = np.random.default_rng(3)
    r = mr.Overdispersed(mr.Zipf(16, 2, 0.8), 0.05)
    a = mr.sample_assignments(r, 12, 40, n_layers=2, rng=rng)  # 40 microbatches of 12 tokens
    ex = a.transpose(0, 2, 1, 3).reshape(-1, 2, 2)
    t = mr.Trace(ex, 16, batch=np.repeat(np.arange(40), 12), sequence=np.arange(480) % 12,
                 step=np.arange(480) // 12)
    fit = mr.fit_routing(t, n_boot=20, rng=rng)
    assert "rho" in fit
    _check_documented(fit)
    _check_documented(mr.inspect_trace(t))
    _check_documented(mr.real_batch_check(t, n_trials=20, n_boot=50, rng=rng, fit=fit))


def test_real_batch_check_gap_closed_undefined_when_token_mode_is_exact():
    # A small trace on which token-mode resampling reproduces the observed distinct experts
    # exactly (seed 3): the share of its error removed is undefined, reported as NaN, with no
    # division warning (found by tests/test_fuzz.py).
    rng = np.random.default_rng(11)
    n = 48
    ex = np.stack([rng.permutation(8)[:2] for _ in range(n * 3)]).reshape(n, 3, 2)
    tr = mr.Trace(ex, n_experts=8, sequence=np.arange(n) % 8, step=np.arange(n) // 8,
                  batch=np.arange(n) // 8, prefill=np.zeros(n, bool), model="toy")
    ds = mr.real_batch_check(tr, n_trials=4, rng=3)
    assert float(ds["active_experts_rel_error_all"].sel(routing="token")) == 0.0
    assert np.isnan(float(ds["gap_closed"]))

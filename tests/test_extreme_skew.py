"""k distinct experts at every skew (issue 11, item 3).

Weighted routing is successive sampling without replacement (Plackett–Luce). At large Zipf
exponents or LogNormal shapes most normalised weights underflow to 0, yet the law still says
which experts come next (their ratios). These tests check, up to alpha = 1e6 and for weights
down to the smallest normal float, that every token gets k distinct experts, that the sampled
law matches exact results, and that the exact results reach the right limit.

Exact references are computed here independently of the package: Plackett–Luce by enumerating
ordered k-tuples in log space (each step's normaliser is a log-sum-exp over the experts not yet
chosen, so nothing underflows), for small E.
"""

import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

import mcroute as mr
from mcroute import McrouteError

TINY = np.finfo(float).tiny  # smallest normal float, 2.2e-308
ALPHAS = [1.2, 50.0, 400.0, 1000.0, 1e6]
SHAPES = [(8, 4), (16, 15), (256, 8)]


def _pl_tuples(lw, k):
    """Exact law of the ordered k-tuple under Plackett–Luce with log-weights ``lw``."""
    lw = np.asarray(lw, dtype=float)
    support = [int(i) for i in np.nonzero(np.isfinite(lw))[0]]
    out = {}

    def rec(prefix, logp):
        if len(prefix) == k:
            out[tuple(prefix)] = np.exp(logp)
            return
        rem = [i for i in support if i not in prefix]
        lse = np.logaddexp.reduce(lw[rem])
        for i in rem:
            rec(prefix + [i], logp + lw[i] - lse)

    rec([], 0.0)
    return out


def _pl_inclusion(lw, k):
    pi = np.zeros(len(lw))
    for tup, p in _pl_tuples(lw, k).items():
        pi[list(tup)] += p
    return pi


def _zipf_log_weights(r, alpha):
    """-alpha·log(rank) placed on expert ids by the routing's (public) permutation."""
    perm = r.permutation(1)[0]
    lw = np.empty(r.n_experts)
    lw[perm] = -alpha * np.log(np.arange(1, r.n_experts + 1))
    return lw


def _routings():
    out = [(f"Zipf({e},{k},{a:g})", mr.Zipf(e, k, a)) for e, k in SHAPES for a in ALPHAS]
    out += [(f"LogNormal({e},{k},{s:g})", mr.LogNormal(e, k, s)) for e, k in SHAPES
            for s in (3.0, 150.0, 1e6)]
    out += [("Popularity(1, tiny x 7)", mr.Popularity([1.0] + [TINY] * 7, top_k=4)),
            ("Popularity(1e308, 2 tiny, 3 tiny)",
             mr.Popularity([1e308, 2 * TINY, TINY, TINY, TINY], top_k=3))]
    return out


ROUTINGS = _routings()


@pytest.mark.parametrize("name,r", ROUTINGS, ids=[n for n, _ in ROUTINGS])
def test_every_token_gets_k_distinct_experts(name, r):
    a = mr.sample_assignments(r, 32, 40, n_layers=2, rng=11)
    tokens = a.reshape(-1, r.top_k)
    assert tokens.min() >= 0 and tokens.max() < r.n_experts
    distinct = (np.diff(np.sort(tokens, axis=1), axis=1) > 0).sum(axis=1) + 1
    assert np.all(distinct == r.top_k), f"{name}: {np.bincount(distinct)}"
    # the counts of the same draw agree with the assignments
    c = mr.sample_counts(r, 32, 40, n_layers=2, rng=11, method="assignment")
    assert np.all(c.sum(axis=-1) == 32 * r.top_k) and c.max() <= 32


@pytest.mark.parametrize("name,r", ROUTINGS, ids=[n for n, _ in ROUTINGS])
def test_sampled_active_experts_match_the_exact_value(name, r):
    b, n = 16, 3000
    c = mr.sample_counts(r, b, n, rng=5, method="assignment")[:, 0]
    active = (c > 0).sum(axis=1)
    exact = float(mr.expected_active_experts(r, b))
    assert r.top_k <= exact <= min(r.n_experts, b * r.top_k)
    se = active.std(ddof=1) / np.sqrt(n)
    # 4 standard errors; with n trials a value of probability below ~1/n can go unseen (then
    # every trial agrees and the sample SE is 0), so the resolution of the mean is 1/n.
    assert abs(active.mean() - exact) <= 4 * max(se, 1.0 / n), (name, active.mean(), exact)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_zipf_inclusion_equals_log_space_enumeration(alpha):
    r = mr.Zipf(8, 4, alpha)
    pi, err = r.inclusion_probabilities(1, return_error=True)
    ref = _pl_inclusion(_zipf_log_weights(r, alpha), 4)
    np.testing.assert_allclose(pi[0], ref, atol=1e-10)
    assert err < 1e-9
    assert pi.sum() == pytest.approx(4, abs=1e-10)


def test_tiny_weight_inclusion_equals_log_space_enumeration():
    w = [1e308, 2 * TINY, TINY, TINY, TINY]
    r = mr.Popularity(w, top_k=3)
    pi = r.inclusion_probabilities(1)[0]
    ref = _pl_inclusion(np.log(np.asarray(w)), 3)
    # the heavy expert always, then Plackett–Luce on (2, 1, 1, 1) with two picks
    assert ref[0] == pytest.approx(1.0, abs=1e-12)  # log-weights near 700: rounding 1e-13
    np.testing.assert_allclose(pi, ref, atol=1e-10)


@pytest.mark.parametrize("r", [mr.Zipf(8, 4, 1e6), mr.Zipf(256, 8, 1e6),
                               mr.LogNormal(256, 8, 1e6), mr.Zipf(64, 8, 1.7e308)],
                         ids=["Zipf(8,4,1e6)", "Zipf(256,8,1e6)", "LogNormal(256,8,1e6)",
                              "Zipf(64,8,1.7e308)"])
def test_limit_of_infinite_skew(r):
    # alpha -> inf: the k hottest experts are always chosen, in rank order
    k = r.top_k
    perm = r.permutation(1)[0]
    pi = r.inclusion_probabilities(1)[0]
    np.testing.assert_allclose(pi[perm[:k]], 1.0, atol=1e-12)
    assert np.all(pi[perm[k:]] <= 1e-15)
    ea = mr.expected_active_experts(r, [1, 7, 64, 4096])
    np.testing.assert_allclose(ea, k, atol=1e-9)
    a = mr.sample_assignments(r, 64, 8, rng=2)
    assert np.all(a == perm[:k])  # every token, every slot: slot j holds rank j


def test_permutation_does_not_depend_on_the_exponent():
    # ranks whose popularity underflows keep their order
    for e, k in SHAPES:
        ref = mr.Zipf(e, k, 1.2).permutation(3)
        for alpha in ALPHAS[1:]:
            np.testing.assert_array_equal(mr.Zipf(e, k, alpha).permutation(3), ref)
        np.testing.assert_array_equal(mr.LogNormal(e, k, 1e6).permutation(3),
                                      mr.LogNormal(e, k, 1.0).permutation(3))


def _chi2_pvalue(observed, expected, min_expected=5.0):
    """Chi-square goodness of fit, cells with expected count below ``min_expected`` pooled."""
    small = expected < min_expected
    obs = np.append(observed[~small], observed[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    keep = exp > 0
    assert np.all(obs[~keep] == 0)
    return stats.chisquare(obs[keep], exp[keep]).pvalue


@pytest.mark.parametrize("r,lw", [
    (mr.Zipf(8, 4, 5.0), None),  # slow path with non-trivial conditional laws
    (mr.Zipf(8, 4, 50.0), None),  # second choice among weights 2**-50 of the first
    (mr.Popularity([1e308, 2 * TINY, TINY, TINY, TINY], top_k=3),
     np.log([1e308, 2 * TINY, TINY, TINY, TINY])),
], ids=["Zipf(8,4,5)", "Zipf(8,4,50)", "Popularity(1e308,tiny)"])
def test_law_of_the_ordered_tuple(r, lw):
    if lw is None:
        lw = _zipf_log_weights(r, r.alpha)
    law = _pl_tuples(lw, r.top_k)
    a = mr.sample_assignments(r, 100, 400, rng=29).reshape(-1, r.top_k)
    keys = list(law)
    index = {t: i for i, t in enumerate(keys)}
    observed = np.zeros(len(keys))
    for t in map(tuple, a):
        assert t in index  # k distinct experts of positive weight
        observed[index[t]] += 1
    expected = np.array([law[t] for t in keys]) * a.shape[0]
    assert _chi2_pvalue(observed, expected) > 1e-3


def test_smallest_normal_weights():
    # one expert of weight 1 and seven of the smallest normal weight: the heavy one is in
    # every token's set, the others share the remaining k - 1 = 3 slots uniformly.
    r = mr.Popularity([1.0] + [TINY] * 7, top_k=4)
    np.testing.assert_allclose(r.inclusion_probabilities(1)[0], [1.0] + [3 / 7] * 7,
                               atol=1e-12)
    c = mr.sample_counts(r, 50, 400, rng=3)[:, 0]
    assert np.all(c[:, 0] == 50)
    freq = c[:, 1:].sum(axis=0) / (50 * 400)
    se = np.sqrt(3 / 7 * 4 / 7 / (50 * 400))
    assert np.all(np.abs(freq - 3 / 7) <= 4 * se)
    # only tiny weights: uniform
    u = mr.Popularity([TINY] * 8, top_k=4)
    np.testing.assert_allclose(u.weights, 1 / 8)
    np.testing.assert_allclose(u.inclusion_probabilities(1), 0.5, atol=1e-12)


def test_no_overflow_in_exact_results():
    for r in (mr.Zipf(256, 8, 200), mr.LogNormal(256, 8, 150), mr.Zipf(256, 8, 1.7e308)):
        pi, err = r.inclusion_probabilities(2, return_error=True)
        assert np.all(np.isfinite(pi)) and err < 1e-9
        np.testing.assert_allclose(pi.sum(axis=1), 8, atol=1e-10)
        ea = mr.expected_active_experts(r, [1, 64], n_layers=2)
        assert np.all(np.isfinite(ea)) and np.all(ea >= 8 - 1e-9)


def test_popularity_near_the_largest_float_is_uniform():
    r = mr.Popularity([1e308, 1e308])
    np.testing.assert_array_equal(r.weights, [[0.5, 0.5]])
    c = mr.sample_counts(r, 1000, 20, rng=4)[:, 0]
    freq = c[:, 0].sum() / 20000
    assert abs(freq - 0.5) <= 4 * np.sqrt(0.25 / 20000)
    assert np.all(mr.sample_counts(mr.Popularity([1e308, 1e308], top_k=2), 10, 5, rng=4) == 10)
    big = mr.Popularity([1.7e308, 1.7e308, 0.85e308], top_k=1)
    np.testing.assert_allclose(big.weights[0], [0.4, 0.4, 0.2])


@pytest.mark.parametrize("weights,top_k,needle", [
    ([0.0, 0.0], 1, "all zero"),
    ([[1.0, 2.0], [0.0, 0.0]], 1, "all zero"),
    ([1.0, -1.0], 1, "non-negative"),
    ([1.0, float("nan")], 1, "finite"),
    ([1.0, float("inf")], 1, "finite"),
    ([1.0, 0.0, 0.0], 2, "top_k=2 positive"),
    ([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]], 2, "top_k=2 positive"),
    ([10 ** 400, 1], 1, "weights"),
])
def test_popularity_refuses_weights_without_k_experts(weights, top_k, needle):
    with pytest.raises(McrouteError, match=needle):
        mr.Popularity(weights, top_k=top_k)


def test_correlated_microbatches_keep_k_distinct_experts():
    r = mr.Overdispersed(mr.Zipf(8, 4, 1000.0), rho=0.2)
    a = mr.sample_assignments(r, 32, 20, rng=6).reshape(-1, 4)
    assert np.all(np.sort(a, axis=1) == np.sort(mr.Zipf(8, 4, 1.0).permutation(1)[0, :4]))


def test_extreme_skew_is_the_same_on_one_and_two_threads():
    script = ("import hashlib, mcroute as mr; h = hashlib.sha256()\n"
              "for r in [mr.Zipf(256, 8, 1000.0), mr.Zipf(8, 4, 5.0), mr.LogNormal(64, 4, 150.0),"
              " mr.Popularity([1e308, 2e-308, 1e-308, 1e-308], top_k=3)]:\n"
              "    h.update(mr.sample_counts(r, 40, 100, n_layers=2, rng=42).tobytes())\n"
              "print(h.hexdigest())")
    out = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, timeout=600,
                          env={**os.environ, "NUMBA_NUM_THREADS": str(n)}).stdout.strip()
           for n in (1, 2)]
    assert len(out[0]) == 64 and out[0] == out[1]


def test_enumeration_reference_matches_linear_form_at_mild_skew():
    # the test's own reference against the plain product formula where nothing underflows
    w = np.array([5.0, 3.0, 1.0, 1.0, 0.5])
    pi = np.zeros(5)
    for tup in itertools.permutations(range(5), 3):
        p, left = 1.0, w.sum()
        for i in tup:
            p *= w[i] / left
            left -= w[i]
        pi[list(tup)] += p
    np.testing.assert_allclose(_pl_inclusion(np.log(w), 3), pi, atol=1e-14)

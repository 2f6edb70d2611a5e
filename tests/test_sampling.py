"""Statistical and exactness tests of the samplers (array layer).

Tolerances are multiples of the Monte Carlo standard error, with the reason given; every test
uses its own literal seed, so each result is deterministic.
"""

import itertools

import numpy as np
import pytest
from scipy import stats

import mcroute as mr
from mcroute import _kernels as K
from mcroute._base.rng import chunk_seeds


def _chi2_pvalue(observed, expected, min_expected=5.0):
    """Chi-square goodness of fit, merging tail bins until each expects >= min_expected."""
    obs, exp = [], []
    o_acc = e_acc = 0.0
    for o, e in zip(observed, expected, strict=True):
        o_acc += o
        e_acc += e
        if e_acc >= min_expected:
            obs.append(o_acc)
            exp.append(e_acc)
            o_acc = e_acc = 0.0
    if e_acc > 0:
        obs[-1] += o_acc
        exp[-1] += e_acc
    obs, exp = np.asarray(obs), np.asarray(exp)
    exp *= obs.sum() / exp.sum()
    return stats.chisquare(obs, exp).pvalue


ROUTINGS = [
    mr.Uniform(16, 4),
    mr.Uniform(8, 6),  # k > E/4: the Fisher–Yates branch (C(8, 6) = 28 > 20 tokens)
    mr.Uniform(6, 2),  # C(6, 2) = 15 <= batch: the subset-table branch
    mr.Uniform(50, 1),  # top-1: two tokens per draw, odd batch
    mr.Popularity([70, 25, 2, 1, 1, 1], top_k=3),  # two experts hold 0.95: the slow path
    mr.Zipf(32, 4, 1.2),
    mr.LogNormal(16, 2, 1.0),
    mr.Popularity([5, 0, 3, 1, 1, 0, 2, 2], top_k=3),
    mr.Zipf(40, 1, 1.0),  # weighted top-1: two tokens per draw, odd batch
]


@pytest.mark.parametrize("routing", ROUTINGS, ids=repr)
@pytest.mark.parametrize("method", ["assignment", "auto"])
def test_loads_sum_to_bk_and_tokens_distinct(routing, method):
    c = mr.sample_counts(routing, 37, 50, n_layers=3, rng=11, method=method)
    assert c.dtype == np.int64 and c.shape == (50, 3, routing.n_experts)
    assert np.all(c.sum(axis=2) == 37 * routing.top_k)
    a = mr.sample_assignments(routing, 37, 5, n_layers=3, rng=11)
    srt = np.sort(a, axis=-1)
    assert np.all(np.diff(srt, axis=-1) > 0), "a token's k experts must be distinct"
    assert a.min() >= 0 and a.max() < routing.n_experts


@pytest.mark.parametrize("routing", ROUTINGS, ids=repr)
def test_assignments_match_counts(routing):
    a = mr.sample_assignments(routing, 20, 40, n_layers=2, rng=5)
    c = mr.sample_counts(routing, 20, 40, n_layers=2, rng=5, method="assignment")
    e = routing.n_experts
    from_a = np.stack([[np.bincount(a[t, m].ravel(), minlength=e) for m in range(2)]
                       for t in range(40)])
    np.testing.assert_array_equal(from_a, c)


def test_zero_weight_experts_never_chosen():
    r = mr.Popularity([5, 0, 3, 1, 1, 0, 2, 2], top_k=3)
    c = mr.sample_counts(r, 64, 200, rng=3)
    assert c[..., 1].sum() == 0 and c[..., 5].sum() == 0


@pytest.mark.parametrize("e,k,b,method", [(16, 4, 32, "assignment"), (8, 6, 20, "assignment"),
                                          (8, 2, 256, "assignment"), (6, 3, 40, "assignment"),
                                          (32, 4, 4096, "counts"), (10, 1, 50, "counts")])
def test_uniform_load_is_binomial(e, k, b, method):
    # One expert per trial (expert t mod E) keeps the 6000 observations independent.
    n = 6000
    c = mr.sample_counts(mr.Uniform(e, k), b, n, rng=2024, method=method)
    loads = c[np.arange(n), 0, np.arange(n) % e]
    law = mr.expert_load_distribution(mr.Uniform(e, k), b)
    support = np.arange(b + 1)
    observed = np.bincount(loads, minlength=b + 1)
    # A correct sampler fails this at a fixed seed with probability 1e-3.
    assert _chi2_pvalue(observed, n * law.pmf(support)) > 1e-3


CASES = [  # (E, k, B): B·k << E, ~E and >> E; both sampling methods
    (256, 8, 2, "assignment"),
    (256, 8, 64, "assignment"),
    (128, 8, 64, "assignment"),
    (2048, 1, 512, "assignment"),
    (64, 8, 64, "counts"),
    (256, 8, 96, "counts"),
    (8, 2, 3, "assignment"),
    (160, 6, 40, "assignment"),  # E not a power of two: Lemire's rejection threshold is > 0
]


@pytest.mark.parametrize("e,k,b,method", CASES)
def test_active_experts_mean_and_variance_exact(e, k, b, method):
    n = 4000
    r = mr.Uniform(e, k)
    c = mr.sample_counts(r, b, n, rng=77, method=method)
    act = (c[:, 0] > 0).sum(axis=1).astype(float)
    mean_exact = mr.expected_active_experts(r, b)
    var_exact = mr.active_experts_variance(r, b)
    se_mean = np.sqrt(var_exact / n)
    # Within 4 standard errors of the exact mean (false failure rate ~6e-5).
    assert abs(act.mean() - mean_exact) <= 4 * se_mean + 1e-12
    # Sample variance: SE from the fourth central moment, sqrt((m4 - s^4) / n).
    m4 = np.mean((act - act.mean()) ** 4)
    se_var = np.sqrt(max(m4 - act.var() ** 2, 0.0) / n)
    assert abs(act.var(ddof=1) - var_exact) <= 4 * se_var + 1e-9


def test_active_variance_matches_brute_force():
    # Exact variance by enumerating all microbatches of a tiny case.
    e, k, b = 4, 2, 3
    subsets = list(itertools.combinations(range(e), k))
    vals = [len(set().union(*combo)) for combo in itertools.product(subsets, repeat=b)]
    assert mr.active_experts_variance(mr.Uniform(e, k), b) == pytest.approx(np.var(vals), abs=1e-12)
    assert float(mr.expected_active_experts(mr.Uniform(e, k), b)) == pytest.approx(np.mean(vals))


def test_zipf_top1_matches_scipy_zipfian():
    e, alpha, n = 20, 1.1, 30000
    r = mr.Zipf(e, 1, alpha, permute=False)  # expert id = rank - 1
    c = mr.sample_counts(r, 1, n, rng=99, method="assignment")
    observed = c[:, 0].sum(axis=0)
    expected = n * stats.zipfian(alpha, e).pmf(np.arange(1, e + 1))
    assert _chi2_pvalue(observed, expected) > 1e-3
    np.testing.assert_allclose(r.popularity(1)[0], stats.zipfian(alpha, e).pmf(np.arange(1, e + 1)))


def test_multinomial_countspace_matches_assignment_law():
    # top-1 weighted: count-space multinomial vs per-token draws; expert-wise means within 4 SE.
    r = mr.Zipf(16, 1, 1.3)
    n, b = 4000, 200
    p = r.popularity(1)[0]
    for method in ("counts", "assignment"):
        c = mr.sample_counts(r, b, n, rng=5, method=method)[:, 0]
        se = np.sqrt(b * p * (1 - p) / n)
        assert np.all(np.abs(c.mean(axis=0) - b * p) <= 4.5 * se)  # 16 tests: 4.5 SE
        # Multinomial covariance between the two hottest experts: -B p_i p_j.
        i, j = np.argsort(-p)[:2]
        cov = np.cov(c[:, i], c[:, j])[0, 1]
        assert abs(cov - (-b * p[i] * p[j])) < 5 * np.sqrt(b * p[i] * b * p[j] / n) * 1.5


def test_countspace_and_assignment_agree_in_distribution():
    r = mr.Uniform(32, 4)
    b, n = 160, 3000
    ca = mr.sample_counts(r, b, n, rng=1, method="assignment")
    cc = mr.sample_counts(r, b, n, rng=2, method="counts")
    for stat in (lambda c: c[:, 0].max(axis=1), lambda c: (c[:, 0] > 0).sum(axis=1),
                 lambda c: c[:, 0, 7]):
        xa, xc = stat(ca), stat(cc)
        lo, hi = min(xa.min(), xc.min()), max(xa.max(), xc.max())
        table = np.array([np.bincount(xa - lo, minlength=hi - lo + 1),
                          np.bincount(xc - lo, minlength=hi - lo + 1)])
        table = table[:, table.sum(axis=0) > 0]
        # Two-sample homogeneity test; false failure 1e-3 per statistic.
        assert stats.chi2_contingency(table).pvalue > 1e-3


def _numpy_reference(routing, b, n, rng):
    """Obviously correct reference: Gumbel-top-k on log-weights per token, then bincount."""
    e, k = routing.n_experts, routing.top_k
    logw = np.log(routing.popularity(1)[0])
    out = np.zeros((n, e), dtype=np.int64)
    for t in range(n):
        keys = logw + rng.gumbel(size=(b, e))
        top = np.argsort(-keys, axis=1)[:, :k]
        out[t] = np.bincount(top.ravel(), minlength=e)
    return out


@pytest.mark.parametrize("routing", [mr.Zipf(12, 3, 1.5), mr.Uniform(10, 3),
                                     mr.Popularity([9, 1, 1, 3, 0.5, 7], top_k=4),
                                     mr.Popularity([70, 25, 2, 1, 1, 1, 0.5], top_k=4)],
                         ids=repr)
def test_kernel_agrees_with_numpy_reference_and_exact_inclusion(routing):
    n = 20000
    pi = routing.inclusion_probabilities(1)[0]
    ref = _numpy_reference(routing, 1, n, np.random.default_rng(8))
    ker = mr.sample_counts(routing, 1, n, rng=8, method="assignment")[:, 0]
    se = np.sqrt(pi * (1 - pi) / n) + 1e-300
    for freq in (ref.mean(axis=0), ker.mean(axis=0)):
        # Inclusion frequencies within 4.5 SE of the exact probabilities (<= 12 experts).
        assert np.all(np.abs(freq - pi) <= 4.5 * se)


def test_subset_table_only_when_small():
    from mcroute._routing.distributions import uniform_subset_table
    t = uniform_subset_table(8, 2, 256)
    assert [tuple(r) for r in t] == list(itertools.combinations(range(8), 2))
    assert uniform_subset_table(8, 2, 27).shape == (0, 2)  # more subsets (28) than tokens
    assert uniform_subset_table(256, 8, 10**6).shape == (0, 8)  # too many subsets
    assert uniform_subset_table(64, 1, 4096).shape == (0, 1)  # top-1 has its own sampler


def test_subset_branch_draws_every_subset_equally_often():
    # E=8, k=2, B=64: C(8, 2) = 28 <= 64 tokens, so the kernel indexes the subset table.
    a = mr.sample_assignments(mr.Uniform(8, 2), 64, 300, rng=19)[:, 0].reshape(-1, 2)
    idx = {s: i for i, s in enumerate(itertools.combinations(range(8), 2))}
    observed = np.bincount([idx[tuple(sorted(p))] for p in a], minlength=28)
    assert _chi2_pvalue(observed, np.full(28, a.shape[0] / 28)) > 1e-3


def test_pair_and_joint_law_of_weighted_top2_slow_and_fast_paths():
    # The exact law of the ordered pair (first, second) under successive sampling, against
    # both kernel paths: fast (k-1 heaviest hold <= 0.9) and slow (they hold more).
    for w in ([4, 3, 2, 1], [93, 5, 1, 1]):
        p = np.asarray(w, float) / np.sum(w)
        r = mr.Popularity(w, top_k=2)
        fast = bool(K._weighted_layer_plan(p[None, :], 2)[1][0])
        assert fast == (p.max() <= 0.9)
        a = mr.sample_assignments(r, 50, 400, rng=23)[:, 0].reshape(-1, 2)
        observed = np.zeros((4, 4))
        np.add.at(observed, (a[:, 0], a[:, 1]), 1)
        expected = np.array([[0 if i == j else p[i] * p[j] / (1 - p[i]) for j in range(4)]
                             for i in range(4)]) * a.shape[0]
        mask = ~np.eye(4, dtype=bool)
        assert _chi2_pvalue(observed[mask], expected[mask]) > 1e-3


def _brute_force_inclusion(w, k):
    """Exact Plackett–Luce inclusion probabilities by enumerating ordered k-tuples."""
    w = np.asarray(w, float) / np.sum(w)
    pi = np.zeros(w.size)
    for tup in itertools.permutations(range(w.size), k):
        p, left = 1.0, 1.0
        for i in tup:
            p *= w[i] / left
            left -= w[i]
        for i in tup:
            pi[i] += p
    return pi


@pytest.mark.parametrize("w,k", [([5, 3, 1, 1, 0.5, 0.1, 2], 3), ([1e6, 1, 1, 1, 1], 2),
                                 ([1, 2, 3, 4, 5, 6], 5), ([1, 1, 1e-9, 4], 2)])
def test_inclusion_probabilities_vs_enumeration(w, k):
    pi, err = mr.Popularity(w, top_k=k).inclusion_probabilities(1, return_error=True)
    np.testing.assert_allclose(pi[0], _brute_force_inclusion(w, k), atol=1e-10)
    assert err < 1e-9
    assert pi.sum() == pytest.approx(k, abs=1e-10)


def test_extreme_skew_terminates_and_is_exact():
    # One expert holds almost all the mass: rejection alone would spin for ages.
    w = [1e12] + [1.0] * 15
    r = mr.Popularity(w, top_k=4)
    c = mr.sample_counts(r, 64, 500, rng=4)[:, 0]
    assert np.all(c[:, 0] == 64)  # the hot expert is in every token's set (prob 1 - 1e-11)
    # The other 15 are chosen uniformly for the remaining 3 slots: each with prob 3/15.
    freq = c[:, 1:].mean(axis=0) / 64
    se = np.sqrt(0.2 * 0.8 / (64 * 500))
    assert np.all(np.abs(freq - 0.2) <= 4.5 * se)


def _guide_case():
    rng = np.random.default_rng(5)
    w = rng.gamma(0.3, size=(3, 300))
    w[0, [0, 7, 299]] = 0.0          # zero weights, the last expert among them
    w[1, :250] = 0.0                 # most of the line held by the last 50 experts
    w[2, 1] = 1e-12                  # lighter than one unit of 2**-32
    return w, K.weighted_tables(w, 4)


def test_guide_tables_partition_the_32bit_line():
    weights, (w, cdf, fix, guide, extra, fast) = _guide_case()
    assert guide.dtype == np.int16 and guide.shape[1] == 2 ** 14  # >= 32 cells per expert
    width = 2 ** 32 // guide.shape[1]
    for layer in range(w.shape[0]):
        f = fix[layer]
        assert f[0] == 0 and f[-1] == 2 ** 32 and np.all(f[1:] >= f[:-1])
        units = np.diff(f).astype(np.float64)
        # each expert's share of the line is its weight to within one unit of 2**-32
        assert np.all(np.abs(units - w[layer] * 2.0 ** 32) <= 1.0)
        assert np.all(units[weights[layer] == 0] == 0)
        lo = np.arange(guide.shape[1], dtype=np.uint64) * np.uint64(width)
        g = guide[layer].astype(np.int64)
        pure = g >= 0
        e = np.where(pure, g, -g - 1)
        assert np.all(f[e] <= lo)                                   # the cell starts in e
        assert np.all(f[e + 1][pure] >= lo[pure] + np.uint64(width))  # ... and ends in it
        assert np.all((f[e + 1][~pure] > lo[~pure])
                      & (f[e + 1][~pure] < lo[~pure] + np.uint64(width)))
        assert (~pure).sum() < w.shape[1]


def test_guide_draw_returns_the_interval_holding_h():
    _, (w, cdf, fix, guide, extra, fast) = _guide_case()
    shift = np.uint64(32 - 14)
    rng = np.random.default_rng(6)
    for layer in range(w.shape[0]):
        f = fix[layer]
        edges = f[(f > 0) & (f < 2 ** 32)]
        hs = np.unique(np.concatenate([edges, edges - np.uint64(1), [0, 2 ** 32 - 1],
                                       rng.integers(0, 2 ** 32, 2000, dtype=np.uint64)]))
        for h in hs:
            e = K._guide_draw(np.uint64(h), guide[layer], f, shift)
            assert f[e] <= h < f[e + 1]


def test_weighted_sampler_beyond_int16_expert_ids():
    # 40000 experts: the guide table switches to int32; the law is still right.
    n = 40000
    r = mr.Zipf(n, 2, 1.0, permute=False)
    tables = K.weighted_tables(r.popularity(1), 2)
    assert tables[3].dtype == np.int32
    c = mr.sample_counts(r, 16, 2000, rng=8)[:, 0]
    assert np.all(c.sum(axis=1) == 32) and c.max() <= 16
    pi = r.inclusion_probabilities(1)[0]
    for e in (0, 1, n - 1):
        freq = c[:, e].mean() / 16
        se = np.sqrt(pi[e] * (1 - pi[e]) / (16 * 2000))
        assert abs(freq - pi[e]) <= 4 * se


def test_binomial_generator_matches_scipy():
    for n, p in [(20, 0.1), (1000, 0.3), (50, 0.9), (100000, 0.02)]:
        draws = K.binomial_many(chunk_seeds(3, 20000), 16, 20000, n, p)
        support = np.arange(n + 1)
        observed = np.bincount(draws, minlength=n + 1)
        assert _chi2_pvalue(observed, 20000 * stats.binom.pmf(support, n, p)) > 1e-3


def test_same_seed_same_numbers_and_prefix_stability():
    r = mr.Zipf(64, 4, 1.0)
    a = mr.sample_counts(r, 30, 100, n_layers=2, rng=123)
    b = mr.sample_counts(r, 30, 100, n_layers=2, rng=123)
    np.testing.assert_array_equal(a, b)
    longer = mr.sample_counts(r, 30, 164, n_layers=2, rng=123)
    np.testing.assert_array_equal(a, longer[:100])
    assert not np.array_equal(a, mr.sample_counts(r, 30, 100, n_layers=2, rng=124))
    g = np.random.default_rng(5)
    c1 = mr.sample_counts(r, 30, 10, rng=g)
    c2 = mr.sample_counts(r, 30, 10, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(c1, c2)


def test_layers_have_different_hot_experts():
    r = mr.Zipf(64, 2, 1.5)
    perm = r.permutation(4)
    assert len({int(p[0]) for p in perm}) > 1
    np.testing.assert_array_equal(np.sort(perm, axis=1), np.tile(np.arange(64), (4, 1)))
    assert np.array_equal(mr.Zipf(64, 2, 1.5, permute=False).permutation(2)[:, 0], [0, 0])


def test_device_stats_hand_computed():
    counts = np.array([[[3, 0, 1, 0, 0, 4, 0, 0]]])  # E=8, B·k=8
    st = mr.microbatch_stats(counts, n_devices=4, capacity_factor=1.0)
    assert st["active_experts"][0, 0] == 3
    assert st["tokens_per_active_expert"][0, 0] == pytest.approx(8 / 3)
    assert st["max_expert_load"][0, 0] == 4
    assert st["max_device_load"][0, 0] == 4  # devices: [3, 1, 4, 0]
    assert st["device_imbalance"][0, 0] == pytest.approx(4 / 2)
    assert st["max_device_active_experts"][0, 0] == 1
    assert st["overflow_fraction"][0, 0] == pytest.approx((2 + 3) / 8)  # capacity 1
    place = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    st2 = mr.microbatch_stats(counts, n_devices=2, placement=place)
    assert st2["max_device_load"][0, 0] == 4 and st2["max_device_active_experts"][0, 0] == 2


def test_load_histogram_counts_experts():
    counts = np.array([[[3, 0, 1, 0, 0, 4, 0, 1]], [[0, 0, 2, 2, 2, 2, 0, 0]]])
    h = mr.load_histogram(counts, 4)
    np.testing.assert_allclose(h[0], [(4 + 4) / 2, 2 / 2, 4 / 2, 1 / 2, 1 / 2])


def test_per_layer_popularity_samples_each_layer():
    w = np.array([[4.0, 1, 1, 0], [0, 1, 1, 4]])
    for k in (1, 2):
        r = mr.Popularity(w, top_k=k)
        c = mr.sample_counts(r, 50, 40, n_layers=2, rng=1)
        assert c[:, 0, 3].sum() == 0 and c[:, 1, 0].sum() == 0
        assert np.all(c.sum(axis=2) == 50 * k)


def test_inclusion_cache_by_value_matches_direct_quadrature():
    # The value cache computes each distinct sorted popularity row once; the permuted result
    # must equal the quadrature on the row as given (to round-off), and callers get copies.
    from mcroute._routing.inclusion import pl_inclusion_row

    z = mr.Zipf(300, 6, 0.9, layer_seed=3)
    pi = z.inclusion_probabilities(5)
    lw = z._log_weights(5)
    for layer in range(5):
        direct = pl_inclusion_row(None, 6, 0.5, lw[layer])
        np.testing.assert_allclose(pi[layer], direct, rtol=1e-13, atol=1e-15)
    pi[:] = -1.0  # mutating the result must not reach the cache
    again = mr.Zipf(300, 6, 0.9, layer_seed=3).inclusion_probabilities(5)
    assert np.all(again >= 0) and np.allclose(again.sum(axis=1), 6.0, rtol=1e-12)

"""Group-limited routing (``mr.GroupLimited``, DeepSeek-V2/V3), issue 14.

The law: scores s_e = log w_e + Gumbel_e; a token keeps the ``topk_groups`` groups with the
best group score (max over the group) and the top-k scores among their experts. The sampler
and the exact inclusion probabilities (enumeration of the sequential form) are checked against
that definition, implemented here directly in NumPy, with tolerances in standard errors.
"""


import numpy as np
import pytest

import mcroute as mr
from mcroute._routing.inclusion import mc_inclusion, pl_inclusion_row


def _definition(lw, n_groups, topk_groups, k, n, seed):
    """Inclusion shares of n tokens drawn by the definition (Gumbel scores, group max)."""
    e = lw.size
    rng = np.random.default_rng(seed)
    s = lw + rng.gumbel(size=(n, e))
    gs = s.reshape(n, n_groups, e // n_groups).max(axis=2)
    keep = np.zeros((n, n_groups), dtype=bool)
    np.put_along_axis(keep, np.argsort(-gs, axis=1)[:, :topk_groups], True, axis=1)
    s = np.where(np.repeat(keep, e // n_groups, axis=1), s, -np.inf)
    top = np.argsort(-s, axis=1)[:, :k]
    return np.bincount(top.ravel(), minlength=e) / n


CASES = [(mr.Zipf(12, 3, 1.2, permute=False), 4, 2), (mr.LogNormal(16, 4, 1.0), 4, 1),
         (mr.Popularity([9, 1, 1, 1, 5, 5, 1, 1, 2, 2, 2, 2], top_k=4), 3, 2),
         (mr.Zipf(20, 2, 0.7), 5, 2)]


@pytest.mark.parametrize(("base", "ng", "tg"), CASES)
def test_exact_inclusion_matches_the_definition(base, ng, tg):
    g = mr.GroupLimited(base, ng, tg)
    pi, err = g.inclusion_probabilities(1, return_error=True)
    assert err < 1e-10 and pi.sum() == pytest.approx(base.top_k, abs=1e-12)
    n = 200_000
    ref = _definition(base._log_weights(1)[0], ng, tg, base.top_k, n, 1)
    se = np.sqrt(np.maximum(ref * (1 - ref), 1e-12) / n)
    # 4.5 SE per expert (Bonferroni over up to 20 experts keeps the false alarm < 1e-4).
    assert np.all(np.abs(ref - pi[0]) < 4.5 * se)


@pytest.mark.parametrize(("base", "ng", "tg"), CASES)
def test_sampler_expected_active_matches_exact(base, ng, tg):
    g = mr.GroupLimited(base, ng, tg)
    b = 7
    exact = float(mr.expected_active_experts(g, b))
    pi = g.inclusion_probabilities(1)[0]
    assert exact == pytest.approx(np.sum(1 - (1 - pi) ** b), rel=1e-12)
    act = (mr.sample_counts(g, b, 20000, rng=3) > 0).sum(axis=-1).ravel()
    assert abs(act.mean() - exact) < 4 * act.std(ddof=1) / np.sqrt(act.size)


def test_no_group_limit_is_plackett_luce():
    base = mr.Zipf(12, 3, 1.2, permute=False)
    g = mr.GroupLimited(base, 4, 4)  # every group allowed: the base law
    pl = pl_inclusion_row(base.popularity(1)[0], 3, 0.5, base._log_weights(1)[0])
    assert np.allclose(g.inclusion_probabilities(1)[0], pl, atol=1e-10)


def test_uniform_base_is_symmetric():
    g = mr.GroupLimited(mr.Uniform(12, 3), 4, 2)
    assert np.allclose(g.inclusion_probabilities(1), 3 / 12, atol=1e-13)


@pytest.mark.parametrize(("base", "ng", "tg"), [
    (mr.Zipf(256, 8, 1.2), 8, 4),         # DeepSeek-V3 shape
    (mr.Uniform(160, 6), 8, 3),           # DeepSeek-V2 shape
    (mr.Zipf(64, 6, 2.5), 16, 2),         # strong skew: the exact restricted draw is used
    (mr.Popularity([50, 30] + [1] * 14, top_k=4), 4, 1),
])
def test_no_token_spans_more_than_topk_groups(base, ng, tg):
    g = mr.GroupLimited(base, ng, tg)
    a = mr.sample_assignments(g, 32, 20, n_layers=3, rng=0).reshape(-1, base.top_k)
    size = base.n_experts // ng
    spans = np.array([np.unique(t // size).size for t in a])
    assert spans.max() <= tg and spans.max() == tg  # the limit binds and is never exceeded
    assert all(np.unique(t).size == base.top_k for t in a)
    c = mr.sample_counts(g, 32, 20, n_layers=3, rng=0, method="assignment")
    assert np.array_equal(c, np.apply_along_axis(
        np.bincount, -1, mr.sample_assignments(g, 32, 20, n_layers=3, rng=0).reshape(
            20, 3, -1), minlength=base.n_experts))


def test_first_pick_is_the_base_popularity():
    base = mr.Zipf(12, 3, 1.2, permute=False)
    g = mr.GroupLimited(base, 4, 1)
    first = mr.sample_assignments(g, 50, 2000, rng=5)[:, 0, :, 0].ravel()
    share = np.bincount(first, minlength=12) / first.size
    p = g.popularity(1)[0]
    assert np.array_equal(p, base.popularity(1)[0])
    assert np.all(np.abs(share - p) < 4.5 * np.sqrt(p * (1 - p) / first.size))


def test_monte_carlo_inclusion_is_within_its_stated_error():
    g = mr.GroupLimited(mr.Zipf(12, 3, 1.2, permute=False), 4, 2)
    exact = g.inclusion_probabilities(1)
    mc, err = mc_inclusion(g, 1)
    assert 0 < err < 0.01 and np.all(np.abs(mc - exact) <= err)
    big = mr.GroupLimited(mr.Zipf(256, 8, 1.2), 8, 4)  # E^k too many leaves: Monte Carlo
    pi, err = big.inclusion_probabilities(2, return_error=True)
    assert pi.shape == (2, 256) and 0 < err < 0.01
    assert pi.sum(axis=1) == pytest.approx([8, 8], abs=1e-9)


SCRIPT = r"""
import hashlib, mcroute as mr
h = hashlib.sha256()
for r in [mr.GroupLimited(mr.Zipf(256, 8, 1.2), 8, 4), mr.GroupLimited(mr.Uniform(160, 6), 8, 3),
          mr.GroupLimited(mr.Zipf(64, 6, 2.5), 16, 2)]:
    h.update(mr.sample_counts(r, 40, 70, n_layers=2, rng=42).tobytes())
    h.update(mr.sample_assignments(r, 5, 33, n_layers=2, rng=3).tobytes())
print(h.hexdigest())
"""


def test_bit_identical_on_one_and_two_threads(stdout_on_threads):
    out = stdout_on_threads(SCRIPT)
    assert out[0] == out[1] and len(out[0]) == 64


@pytest.mark.parametrize(("args", "match"), [
    ((mr.Uniform(256, 8), 7, 4), "n_groups must divide n_experts=256"),
    ((mr.Uniform(256, 8), 0, 1), "n_groups"),
    ((mr.Uniform(256, 8), 512, 1), "n_groups"),
    ((mr.Uniform(256, 8), 8.5, 4), "n_groups"),
    ((mr.Uniform(256, 8), 8, 0), "topk_groups"),
    ((mr.Uniform(256, 8), 8, 9), "topk_groups"),
    ((mr.Uniform(256, 8), 8, "4"), "topk_groups"),
    ((mr.Uniform(256, 40), 8, 1), r"topk_groups \* experts per group must be >= top_k=40"),
    (("uniform", 8, 4), "base must be a routing"),
    ((mr.Overdispersed(mr.Uniform(16, 2), 0.1), 4, 2), "independent-token routing"),
    ((mr.GroupLimited(mr.Uniform(16, 2), 4, 2), 4, 2), "independent-token routing"),
])
def test_bad_parameters(args, match):
    with pytest.raises(mr.McrouteError, match=match):
        mr.GroupLimited(*args)


def test_groups_without_enough_positive_weight():
    g = mr.GroupLimited(mr.Popularity([1, 0, 0, 0, 1, 1, 0, 0], top_k=2), 2, 1)
    with pytest.raises(mr.McrouteError, match="fewer than top_k=2"):
        mr.sample_counts(g, 4, 2, rng=0)
    with pytest.raises(mr.McrouteError, match="fewer than top_k=2"):
        g.inclusion_probabilities()


def test_uniform_base_inclusion_is_exactly_k_over_e():
    # Equal weights and equal contiguous groups: every expert is alike, so pi_e = k / E
    # exactly (no Monte Carlo); the sampled inclusion frequencies agree within 4 SE.
    g = mr.GroupLimited(mr.Uniform(32, 4), 8, 2)
    pi = g.inclusion_probabilities(1)[0]
    np.testing.assert_array_equal(pi, np.full(32, 4 / 32))
    n = 4000
    a = mr.sample_assignments(g, 1, n, 1, rng=5)[:, 0, 0, :]  # (trial, k)
    freq = np.array([(a == e).any(axis=1).mean() for e in range(32)])
    se = np.sqrt(pi * (1 - pi) / n)
    assert np.all(np.abs(freq - pi) <= 4 * se)

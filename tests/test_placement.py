"""Balanced expert placement with replicas (issue 14 item 4), against exact expectations."""

import numpy as np
import pytest

import mcroute as mr
from mcroute._cost.calibrated import balanced_placement as contiguous_groups
from mcroute._cost.calibrated import expert_layout


def test_same_layout_as_the_cost_model():
    # Deployment(redundant_experts=N) costs expert_layout; balanced_placement must build it.
    pop = np.random.default_rng(0).random((3, 16))
    lay = expert_layout(contiguous_groups(16, 4), 4, 3, 5, popularity=pop)
    p = mr.balanced_placement(pop, 4, redundant_experts=5)
    np.testing.assert_array_equal(p.slot_expert, lay.slot_expert)
    np.testing.assert_array_equal(p.slot_device, lay.slot_group)
    np.testing.assert_array_equal(p.slot_rank, lay.slot_rank)
    np.testing.assert_array_equal(p.slot_replicas, lay.slot_replicas)


def test_replicas_go_to_the_hottest_and_slots_are_even():
    p = mr.balanced_placement(mr.Zipf(64, 4, 1.2), 8, redundant_experts=8)
    hot = mr.Zipf(64, 4, 1.2).permutation(1)[0]
    reps = np.bincount(p.slot_expert[0], minlength=64)
    assert reps.sum() == 72 and reps[hot[0]] >= reps[hot[-1]] and reps[hot[-1]] == 1
    assert set(np.bincount(p.slot_device[0], minlength=8)) == {9}


def test_device_loads_conserve_tokens():
    routing = mr.Zipf(64, 4, 1.2)
    p = mr.balanced_placement(routing, 8, redundant_experts=8, n_layers=2)
    counts = mr.sample_counts(routing, 48, 64, 2, rng=1)
    loads = p.device_loads(counts)
    np.testing.assert_array_equal(loads.sum(axis=2), counts.sum(axis=2))


@pytest.mark.parametrize("redundant", [0, 8])
def test_device_loads_match_exact_expectation(redundant):
    # Each device's sampled mean load against the exact expectation (sum over its slots of
    # E[floor(m/r)] + P(m mod r > rank), m ~ Binomial(B, pi_e)), within 4 standard errors.
    routing = mr.Zipf(64, 4, 1.2, layer_seed=5)
    b, n = 32, 4000
    p = mr.balanced_placement(routing, 8, redundant_experts=redundant)
    loads = p.device_loads(mr.sample_counts(routing, b, n, 1, rng=7))[:, 0]
    exact = p.expected_device_loads(routing, b)[0]
    se = loads.std(axis=0, ddof=1) / np.sqrt(n)
    assert np.all(np.abs(loads.mean(axis=0) - exact) <= 4 * se), (loads.mean(axis=0), exact)
    assert exact.sum() == pytest.approx(b * 4, rel=1e-12)


def test_busiest_device_falls_under_zipf_on_8_devices():
    # Zipf 1.2 on 8 devices: the balanced placement with replicas lowers the expected busiest
    # device's load; the difference is many standard errors (paired trials, same counts).
    routing = mr.Zipf(256, 8, 1.2)
    p = mr.balanced_placement(routing, 8, redundant_experts=32)
    ds = mr.simulate(routing, 256, 2000, n_devices=8, placement=p, rng=3)
    diff = (ds["max_device_load_unbalanced"] - ds["max_device_load"]).values.ravel()
    se = diff.std(ddof=1) / np.sqrt(diff.size)
    assert diff.mean() > 10 * se > 0
    assert ds["max_device_load_mean"].item() < ds["max_device_load_unbalanced_mean"].item()


def test_simulate_without_placement_unchanged_and_validation():
    routing = mr.Uniform(16, 2)
    a = mr.simulate(routing, 8, 64, n_devices=4, rng=0)
    assert "max_device_load_unbalanced" not in a
    with pytest.raises(mr.McrouteError, match="placement is for"):
        mr.simulate(routing, 8, 64, n_devices=2, placement=mr.balanced_placement(routing, 4),
                    rng=0)
    for bad in ([-1.0, 1.0], [0.0, 0.0], [[np.nan, 1.0]], "x"):
        with pytest.raises(mr.McrouteError, match="popularity"):
            mr.balanced_placement(bad, 2)
    with pytest.raises(mr.McrouteError, match="n_devices"):
        mr.balanced_placement([1.0, 2.0], 3)
    with pytest.raises(mr.McrouteError, match="redundant_experts"):
        mr.balanced_placement([1.0, 2.0], 2, redundant_experts=-1)

"""Bad input: a clear McrouteError (a ValueError) naming the parameter and the allowed range."""

import numpy as np
import pytest

import mcroute as mr


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

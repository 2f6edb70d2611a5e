"""Memory arithmetic of Deployment over arrays of contexts (issue 15).

``kv_bytes_per_sequence``, ``kv_bytes_per_sequence_per_gpu``, ``kv_bytes_per_token``,
``max_batch_size``, ``exceeds_max_context``, ``feasible`` and ``infeasibility`` accept an int
array of contexts (and of batch sizes) and must give, element by element, exactly (bit for bit)
what the scalar calls give; the scalar calls must equal the pure SI-unit formulas of
``mcroute._cost.roofline`` applied layer by layer.
"""

import numpy as np
import pytest

import mcroute as mr
from mcroute._cards.cards import list_models, load_model
from mcroute._cost.deployment import Deployment, kv_bytes_per_sequence, max_batch_size

#: Deployment variants that exercise every branch of the memory arithmetic: engine layout with
#: tensor- and data-parallel attention, the ideal layout (roofline), the FP8 cache layout of the
#: model card, a batch cap with an enforced max_context, and a fixed encoder context.
VARIANTS = [
    dict(n_gpus=8),
    dict(n_gpus=8, kernels="roofline"),
    dict(n_gpus=8, attention_parallel="data"),
    dict(n_gpus=16, kv_dtype="fp8", weight_dtype="fp8"),
    dict(n_gpus=4, max_batch=64, enforce_max_context=True),
    dict(n_gpus=2, kernels="roofline", memory_layout="engine", hbm_fraction=0.5),
    dict(n_gpus=8, kv_dtype="fp8", encoder_context=1000),
]

#: Contexts from 1 to 4M with the window edges (128) and the last exact float64 region, plus
#: 2**40 (MAX_CONTEXT), where float64 sums of integer byte counts would round and the exact
#: per-layer formula is used.
CONTEXTS = np.array(sorted(set(np.geomspace(1, 2**22, 40).astype(np.int64).tolist())
                           | {127, 128, 129, 4096, 8192, 131072, 10**9, 2**40}), dtype=np.int64)


def _deployments():
    out = []
    for name in list_models():
        for i, v in enumerate(VARIANTS):
            v = dict(v)
            n = v.pop("n_gpus")
            try:
                dep = Deployment(load_model(name), "h100-sxm", n, **v)
            except mr.McrouteError:
                continue  # e.g. a variant the model cannot take; the others cover it
            out.append(pytest.param(dep, id=f"{name}-{i}"))
    return out


DEPS = _deployments()


def _same(a, b):
    """Bit-for-bit equality of two float or int values (NaN never occurs here)."""
    return type(a) is type(b) and a == b


def test_every_card_is_covered():
    covered = {p.values[0].model.name for p in DEPS}
    assert covered == {load_model(n).name for n in list_models()}


@pytest.mark.parametrize("dep", DEPS)
def test_arrays_equal_the_scalar_calls_element_by_element(dep):
    L = CONTEXTS
    scalar = {
        "kv": [dep.kv_bytes_per_sequence(int(x)) for x in L],
        "kv_gpu": [dep.kv_bytes_per_sequence_per_gpu(int(x)) for x in L],
        "kv_tok": [dep.kv_bytes_per_token(int(x)) for x in L],
        "b": [dep.max_batch_size(int(x)) for x in L],
        "exceeds": [dep.exceeds_max_context(int(x)) for x in L],
        "ok": [dep.feasible(int(x)) for x in L],
        "why": [dep.infeasibility(int(x)) for x in L],
        "why7": [dep.infeasibility(int(x), 7) for x in L],
    }
    b_arr = dep.max_batch_size(L)
    assert b_arr.dtype == np.int64 and b_arr.shape == L.shape
    batches = np.maximum(b_arr, 1) + (np.arange(L.size) % 2)  # at b_max, or one above it
    scalar["ok_b"] = [dep.feasible(int(x), int(b)) for x, b in zip(L, batches, strict=True)]
    scalar["why_b"] = [dep.infeasibility(int(x), int(b))
                       for x, b in zip(L, batches, strict=True)]
    arrays = {
        "kv": dep.kv_bytes_per_sequence(L), "kv_gpu": dep.kv_bytes_per_sequence_per_gpu(L),
        "kv_tok": dep.kv_bytes_per_token(L), "b": b_arr, "exceeds": dep.exceeds_max_context(L),
        "ok": dep.feasible(L), "why": dep.infeasibility(L), "why7": dep.infeasibility(L, 7),
        "ok_b": dep.feasible(L, batches), "why_b": dep.infeasibility(L, batches),
    }
    for key, ref in scalar.items():
        got = arrays[key]
        assert got.shape == L.shape, key
        kind = type(ref[0])
        for i, r in enumerate(ref):
            assert _same(kind(got[i]), r), (key, int(L[i]), got[i], r)
    # feasible is exactly "no reason"
    np.testing.assert_array_equal(arrays["ok_b"], arrays["why_b"] == "")


@pytest.mark.parametrize("dep", DEPS)
def test_scalar_calls_equal_the_layer_by_layer_formulas(dep):
    """The reference: the pure functions of mcroute._cost.roofline over the model's layers."""
    if dep._fp8_layout():
        pytest.skip("FP8 engine cache layout: bytes per token from the card, not kv_values")
    n, free, w = dep.n_gpus, dep.usable_bytes_per_gpu, dep.weight_bytes_per_gpu
    for x in CONTEXTS.tolist():
        enc = x if dep.encoder_context is None else dep.encoder_context
        kv = kv_bytes_per_sequence(dep.model.decode_layers, x, kv_bytes=dep._kvb,
                                   encoder_context=enc)
        assert _same(dep.kv_bytes_per_sequence(x), kv), x
        if dep.attention_parallel == "data":
            b = n * max_batch_size(free, w, kv)
        elif dep._layout == "ideal":
            b = max_batch_size(n * free, n * w, kv)
        else:
            b = max_batch_size(free, w, dep.kv_bytes_per_sequence_per_gpu(x))
        if dep.max_batch is not None:
            b = min(b, dep.max_batch)
        assert dep.max_batch_size(x) == b, x


def test_shapes_and_types_of_array_results():
    dep = Deployment("llama-3.1-70b", "h100-sxm", 4)
    grid = np.array([[4096, 8192], [16384, 131072]])
    assert dep.max_batch_size(grid).shape == (2, 2)
    assert dep.feasible(grid).dtype == bool
    assert dep.infeasibility(grid).dtype == object
    assert dep.kv_bytes_per_sequence([4096, 8192]).dtype == float
    # a scalar in, a Python scalar out
    assert type(dep.max_batch_size(np.int64(8192))) is int
    assert type(dep.feasible(8192)) is bool
    assert type(dep.kv_bytes_per_sequence(8192.0)) is float
    # integral floats are contexts, as in the scalar calls
    np.testing.assert_array_equal(dep.max_batch_size(np.array([4096.0, 8192.0])),
                                  dep.max_batch_size([4096, 8192]))
    # the remembered scalar answer is the same on a second call, and the array is not shared
    first = dep.max_batch_size([8192])
    first[0] = -1
    assert dep.max_batch_size(8192) == dep.max_batch_size([8192])[0] > 0


@pytest.mark.parametrize("bad", [[4096, 0], [1.5, 2], [True, False], [4096, -3], ["8x"],
                                 [2**41], ["8q"], "8x", "", 0, None])
def test_bad_context_arrays_are_refused_naming_context(bad):
    dep = Deployment("llama-3.1-70b", "h100-sxm", 4)
    for f in (dep.max_batch_size, dep.feasible, dep.infeasibility, dep.kv_bytes_per_sequence):
        with pytest.raises(mr.McrouteError, match=r"context must be (an|a positive) integer"):
            f(bad)


def test_size_strings_are_contexts_as_in_the_cli():
    """Issue 12: the API accepts every string the CLI accepts ("8k" = 8192)."""
    dep = Deployment("llama-3.1-70b", "h100-sxm", 4)
    for f in (dep.max_batch_size, dep.feasible, dep.infeasibility, dep.kv_bytes_per_sequence):
        assert f("8k") == f(8192)
        np.testing.assert_array_equal(f(["8k", "16k"]), f([8192, 16384]))


def test_batch_sizes_must_match_the_contexts():
    dep = Deployment("llama-3.1-70b", "h100-sxm", 4)
    with pytest.raises(mr.McrouteError, match="batch_size"):
        dep.feasible([4096, 8192, 16384], [1, 2])
    with pytest.raises(mr.McrouteError, match="batch_size must be an integer"):
        dep.feasible([4096, 8192], [1, 0])

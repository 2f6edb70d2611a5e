"""Raw counts at scale (issue 15): ``iter_counts`` and ``sample_counts(..., out=)``.

Both must give, bit for bit, the array of one ``sample_counts`` call with the same seed, for
every kind of routing and any block size, while holding only one block of trials. Every test
uses its own literal seed; comparisons are exact (``array_equal``), not statistical.
"""

import tracemalloc

import numpy as np
import pytest

import mcroute as mr
from mcroute._routing.sampling import COUNT_BLOCK_ELEMENTS

TRACE = mr.Trace(np.random.default_rng(5).permuted(
    np.tile(np.arange(16), (40, 2, 1)), axis=2)[:, :, :2], n_experts=16, layer_map="cycle",
    sequence=np.repeat(np.arange(8), 5), step=np.tile(np.arange(5), 8))

ROUTINGS = [
    (mr.Uniform(16, 4), "auto"),
    (mr.Uniform(16, 4), "counts"),  # count-space sampler
    (mr.Zipf(32, 4, 1.2), "assignment"),
    (mr.Popularity(np.arange(1, 17), top_k=1), "counts"),  # multinomial sampler
    (mr.Correlated(mr.LogNormal(32, 4, 1.0), 0.3), "auto"),
    (mr.GroupLimited(mr.Uniform(32, 4), 8, 2), "auto"),
    (TRACE, "auto"),
    (TRACE.with_mode("sequence", block_size=4), "auto"),
    (TRACE.with_mode("marginal"), "auto"),
    (mr.Overdispersed(mr.Zipf(16, 2, 1.0), 0.1), "auto"),
]
IDS = ["uniform", "uniform-counts", "zipf", "popularity-top1", "correlated", "group", "trace",
       "trace-sequence", "trace-marginal", "overdispersed"]


@pytest.mark.parametrize(("routing", "method"), ROUTINGS, ids=IDS)
@pytest.mark.parametrize("chunk_trials", [16, 48, None])
def test_iter_counts_equals_one_sample_counts_call(routing, method, chunk_trials):
    # 100 trials: blocks of 16 or 48 leave a partial last block (100 = 6·16 + 4 = 2·48 + 4)
    want = mr.sample_counts(routing, 64, 100, n_layers=2, rng=123, method=method)
    offsets, blocks = [], []
    for t0, c in mr.iter_counts(routing, 64, 100, n_layers=2, rng=123, method=method,
                                chunk_trials=chunk_trials):
        assert c.dtype == np.int64 and c.shape[1:] == (2, routing.n_experts)
        offsets.append(t0)
        blocks.append(c)
    step = chunk_trials or 100
    assert offsets == list(range(0, 100, step))
    assert np.array_equal(np.concatenate(blocks), want)


@pytest.mark.parametrize(("routing", "method"), ROUTINGS, ids=IDS)
def test_out_equals_sample_counts(routing, method):
    want = mr.sample_counts(routing, 40, 37, n_layers=3, rng=9, method=method)
    out = np.full((37, 3, routing.n_experts), -1, dtype=np.int64)
    got = mr.sample_counts(routing, 40, 37, n_layers=3, rng=9, method=method, out=out)
    assert got is out
    assert np.array_equal(out, want)


def test_out_into_a_memmap(tmp_path):
    r = mr.Zipf(64, 8, 1.0)
    mm = np.lib.format.open_memmap(tmp_path / "counts.npy", mode="w+", dtype=np.int64,
                                   shape=(50, 2, 64))
    mr.sample_counts(r, 128, 50, n_layers=2, rng=4, out=mm)
    mm.flush()
    assert np.array_equal(np.load(tmp_path / "counts.npy"),
                          mr.sample_counts(r, 128, 50, n_layers=2, rng=4))


def test_generator_seed_is_consumed_once_like_sample_counts():
    r = mr.Zipf(16, 2, 0.8)
    want = mr.sample_counts(r, 8, 40, rng=np.random.default_rng(77))
    got = np.concatenate([c for _, c in mr.iter_counts(r, 8, 40, rng=np.random.default_rng(77),
                                                       chunk_trials=16)])
    assert np.array_equal(got, want)


def test_default_block_size():
    # default blocks hold about COUNT_BLOCK_ELEMENTS counts, in whole chunks of 16 trials
    r = mr.Uniform(4096, 8)
    sizes = [c.shape[0] for _, c in mr.iter_counts(r, 16, 3000, n_layers=4, rng=0)]
    per = COUNT_BLOCK_ELEMENTS // (4 * 4096) // 16 * 16
    assert sizes[0] == per and sum(sizes) == 3000


def test_iter_counts_holds_one_block():
    # 2048 trials x 4 layers x 512 experts = 32 MiB in all; blocks of 64 trials are 1 MiB.
    # The peak traced allocation while consuming every block must stay near one block
    # (generous bound: 4 MiB, an eighth of the whole), so T x L x E is never allocated.
    r = mr.Uniform(512, 2)
    it = mr.iter_counts(r, 8, 2048, n_layers=4, rng=1, chunk_trials=64)
    total = 0
    tracemalloc.start()
    try:
        for _, c in it:
            total += int(c.sum())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 2048 * 4 * 8 * 2  # every row sums to B·k
    assert peak < 4 * 2**20, peak


@pytest.mark.parametrize(("kwargs", "words"), [
    (dict(out=np.zeros((10, 1, 8), dtype=np.int32)), ["out", "int64"]),
    (dict(out=np.zeros((10, 1, 9), dtype=np.int64)), ["out", "shape", "(10, 1, 8)"]),
    (dict(out=np.zeros((10, 2, 8), dtype=np.int64)[:, :1]), ["out", "C-contiguous"]),
    (dict(out=np.zeros((10, 8), dtype=np.int64)), ["out", "shape"]),
    (dict(out=[[0] * 8] * 10), ["out", "numpy array"]),
])
def test_out_is_validated(kwargs, words):
    with pytest.raises(mr.McrouteError) as exc:
        mr.sample_counts(mr.Uniform(8, 2), 4, 10, rng=0, **kwargs)
    for w in words:
        assert w in str(exc.value)


def test_out_read_only_refused():
    out = np.zeros((10, 1, 8), dtype=np.int64)
    out.setflags(write=False)
    with pytest.raises(mr.McrouteError, match="out must be writable"):
        mr.sample_counts(mr.Uniform(8, 2), 4, 10, rng=0, out=out)


@pytest.mark.parametrize(("kwargs", "words"), [
    (dict(chunk_trials=20), ["chunk_trials", "multiple of 16"]),
    (dict(chunk_trials=0), ["chunk_trials", ">= 16"]),
    (dict(chunk_trials=1.5), ["chunk_trials"]),
    (dict(method="counts"), ["method='counts'"]),  # weighted top-k: not exact
    (dict(rng=-1), ["rng"]),
])
def test_iter_counts_refuses_bad_input_when_called(kwargs, words):
    # the error comes from the call itself, before any block is asked for
    with pytest.raises(mr.McrouteError) as exc:
        mr.iter_counts(mr.Zipf(8, 2, 1.0), 4, 10, **kwargs)
    for w in words:
        assert w in str(exc.value)


def test_iter_counts_refuses_a_run_beyond_the_draw_limit():
    with pytest.raises(mr.McrouteError, match="MAX_DRAWS"):
        mr.iter_counts(mr.Zipf(64, 8, 1.0), 10**6, 10**9)


def test_tables_built_once_per_run(monkeypatch):
    # iter_counts and sample_counts(out=) draw in blocks; the weighted sampler's tables are
    # built for the first block and reused by value for the others (same numbers).
    from mcroute import _kernels as K
    from mcroute._routing import tables as T

    calls = []
    real = K.weighted_tables

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    r = mr.Zipf(64, 4, 1.1)
    want = mr.sample_counts(r, 32, 100, n_layers=2, rng=5, method="assignment")
    monkeypatch.setattr(K, "weighted_tables", counting)
    got = np.concatenate([c for _, c in mr.iter_counts(r, 32, 100, n_layers=2, rng=5,
                                                       method="assignment", chunk_trials=16)])
    assert np.array_equal(got, want) and len(calls) == 1  # 7 blocks, one build
    mr.sample_counts(r, 32, 100, n_layers=2, rng=5, method="assignment")
    assert len(calls) == 2  # no block open: built again, nothing kept between calls
    assert getattr(T._LOCAL, "cache", None) is None
    with T.reuse_tables():
        for _ in range(3):
            mr.sample_counts(r, 32, 10, n_layers=2, rng=5, method="assignment")
        mr.sample_counts(mr.Zipf(64, 4, 1.2), 32, 10, n_layers=2, rng=5)  # other weights
    assert len(calls) == 4


def test_draw_counts_tables_argument_keeps_the_numbers(monkeypatch):
    # the labeled drivers pass one dict across their blocks: one build, the same numbers
    from mcroute import _kernels as K
    from mcroute._routing.sampling import draw_counts

    r = mr.LogNormal(64, 4, 1.0)
    want = draw_counts(r, 32, 64, 2, 5, (3,), "assignment")
    calls = []
    real = K.weighted_tables
    monkeypatch.setattr(K, "weighted_tables", lambda *a, **k: calls.append(1) or real(*a, **k))
    tables = {}
    got = np.concatenate([draw_counts(r, 32, 16, 2, 5, (3,), "assignment", first_trial=t0,
                                      tables=tables) for t0 in range(0, 64, 16)])
    assert np.array_equal(got, want) and len(calls) == 1 and len(tables) == 1

"""Samplers and per-microbatch statistics (array layer).

May import: numpy, scipy, ``mcroute._kernels``, ``mcroute._base``, the modules of
``mcroute._routing``.

``sample_counts`` draws, for each Monte Carlo trial and MoE layer, how many of the B tokens of a
decode microbatch are routed to each expert. ``microbatch_stats`` turns counts into the
quantities the cost model needs; ``expected_active_experts`` and friends are exact results used
for fast answers and to check the sampler. ``iter_counts`` yields the same counts in blocks of
trials, and ``sample_counts(..., out=)`` writes them into a given array, so that raw counts at
scale never need two copies of trials × layers × experts (docs/sampling.md, "Raw counts at
scale").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from mcroute import _kernels as K
from mcroute._base.rng import CHUNK_TRIALS, chunk_seeds, n_chunks, resolve_seed
from mcroute._base.validate import (
    MAX_BATCH_SIZE,
    MAX_CAPACITY_FACTOR,
    MAX_LAYERS,
    McrouteError,
    check_bytes,
    check_int,
    check_int_list,
    check_real,
    check_work,
)
from mcroute._routing.spec import as_routing, is_routing
from mcroute._routing.tables import reuse_tables

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from numpy.typing import ArrayLike
    from scipy.stats.distributions import rv_frozen

    from mcroute._routing.distributions import Routing

#: ``method="auto"`` switches to count-space sampling (where exact) once the microbatch has at
#: least this many tokens per expert (B / E). Count-space costs O(E·k) binomial draws per
#: microbatch and per-assignment sampling O(B·k) cheap draws, so the crossover is a ratio B / E
#: whatever k. Measured on one core (time per-assignment / time count-space at B/E = 32, 64,
#: 128): uniform E=256 k=8: 0.79, 1.8, 3.6; uniform E=64 k=4: 0.71, 1.5, 3.1; uniform E=2048
#: k=1: 0.42, 0.92, 1.9; uniform E=8 k=2: 0.40, 0.76, 1.5. At B/E = 64 the worst loss (E=8 k=2,
#: 1.3x) is smaller than at 96 (E=256 k=8). Top-1 weighted (multinomial), after the guide-table
#: sampler: Zipf(1.2) E=256: 0.53, 0.98, 2.3; Zipf(1.0) E=2048: 0.56, 1.3, 2.7; Zipf(0.5) E=64:
#: 0.59, 1.7, 2.6. ``mcroute bench`` prints the uniform crossover again.
COUNTSPACE_MIN_TOKENS_PER_EXPERT = {"uniform": 64.0, "weighted": 64.0}

__all__ = [
    "sample_counts",
    "iter_counts",
    "sample_assignments",
    "device_map",
    "microbatch_stats",
    "load_histogram",
    "expected_active_experts",
    "active_experts_variance",
    "expert_load_distribution",
]


def check_routing(routing):
    """Raise unless ``routing`` behaves like a routing distribution."""
    if not is_routing(routing):
        raise McrouteError(
            "routing must be a routing distribution (Uniform, Zipf, LogNormal, Popularity or "
            f"Trace), got {type(routing).__name__}"
        )
    return routing


def resolve_method(routing, batch_size, method):
    """The sampling method used for ``method`` ("auto", "assignment" or "counts") at B tokens.

    Refuses ``"counts"`` where count-space sampling is not exact.
    """
    if not isinstance(method, str) or method not in ("auto", "assignment", "counts"):
        raise McrouteError(f"method must be 'auto', 'assignment' or 'counts', got {method!r}")
    exact = getattr(routing, "_countspace_exact", lambda: False)()
    if method == "counts" and not exact:
        raise McrouteError(
            "method='counts' is exact only for uniform routing or top_k=1; "
            f"use method='assignment' for {routing!r}"
        )
    if method == "auto":
        kind = "uniform" if getattr(routing, "kind", None) == "uniform" else "weighted"
        big = batch_size / routing.n_experts >= COUNTSPACE_MIN_TOKENS_PER_EXPERT[kind]
        return "counts" if (exact and big) else "assignment"
    return method


def sampling_draws(routing, batch_size, n_trials, n_layers, method="auto") -> int:
    """Random draws needed to sample ``n_trials`` microbatches of ``n_layers`` layers.

    Per-assignment sampling draws about B·k numbers per microbatch and layer, count-space
    sampling E·k binomials. Used to refuse requests above :data:`~mcroute._base.validate.MAX_DRAWS`
    before starting them.
    """
    m = resolve_method(routing, batch_size, method)
    per = batch_size * routing.top_k if m == "assignment" else routing.n_experts * routing.top_k
    return n_trials * n_layers * per


def check_sampling_request(routing, batches, n_trials, n_layers, method, *, params,
                           expert_arrays=0):
    """Refuse, before anything is drawn, a sampling request too large to hold or to run.

    Checks the int64 block of counts held while sampling (at least ``CHUNK_TRIALS`` trials of
    ``n_layers × n_experts``), ``expert_arrays`` extra int64 arrays (trial, layer, expert) the
    caller keeps per batch size, and the number of random draws (:data:`MAX_DRAWS`).
    """
    e = routing.n_experts
    check_bytes(f"one block of routing counts ({CHUNK_TRIALS} trials x {n_layers} layers x "
                f"{e} experts, int64)", CHUNK_TRIALS * n_layers * e * 8,
                "n_layers or n_experts")
    if expert_arrays:
        check_bytes(f"the per-expert loads ({len(batches)} batch sizes x {n_trials} trials x "
                    f"{n_layers} layers x {e} experts, int64)",
                    expert_arrays * len(batches) * n_trials * n_layers * e * 8, params)
    draws = sum(sampling_draws(routing, b, n_trials, n_layers, method) for b in batches)
    check_work("sampling", draws, params)


def draw_counts(routing, batch_size, n_trials, n_layers, entropy, key=(), method="auto",
                first_trial=0, tables=None):
    """Counts for trials ``first_trial .. first_trial + n_trials`` of stream ``(entropy, key)``.

    ``first_trial`` must be a multiple of :data:`~mcroute._base.rng.CHUNK_TRIALS`, so that blocks of
    trials drawn separately equal one large draw. ``tables``: a dict the caller keeps across
    the blocks of one run, so that the weighted sampler's tables are built once
    (:func:`mcroute._routing.tables.reuse_tables`); the numbers do not depend on it.
    """
    if first_trial % CHUNK_TRIALS:
        raise McrouteError(f"first_trial must be a multiple of {CHUNK_TRIALS}")
    m = resolve_method(routing, batch_size, method)
    seeds = chunk_seeds(entropy, first_trial + n_trials, key)[first_trial // CHUNK_TRIALS:]
    if tables is None:
        return routing._draw_counts(batch_size, n_trials, n_layers, seeds, m)
    with reuse_tables(tables):
        return routing._draw_counts(batch_size, n_trials, n_layers, seeds, m)


#: Default ``chunk_trials`` of :func:`iter_counts` and of ``sample_counts(..., out=)``: blocks
#: of about this many count elements (32 MB of int64), rounded down to whole trial chunks.
COUNT_BLOCK_ELEMENTS = 4_000_000


def _check_request(routing, batch_size, n_trials, n_layers, n_experts, top_k):
    """Validated (routing, batch_size, n_trials, n_layers) of a counts request."""
    routing = check_routing(as_routing(routing, n_experts, top_k))
    batch_size = check_int("batch_size", batch_size, minimum=1, maximum=MAX_BATCH_SIZE)
    n_trials = check_int("n_trials", n_trials, minimum=1)
    n_layers = check_int("n_layers", n_layers, minimum=1, maximum=MAX_LAYERS)
    return routing, batch_size, n_trials, n_layers


def _check_chunk_trials(chunk_trials, n_layers, n_experts) -> int:
    if chunk_trials is None:
        per = max(COUNT_BLOCK_ELEMENTS // (n_layers * n_experts), 1)
        return max(per // CHUNK_TRIALS, 1) * CHUNK_TRIALS
    c = check_int("chunk_trials", chunk_trials, minimum=CHUNK_TRIALS)
    if c % CHUNK_TRIALS:
        raise McrouteError(f"chunk_trials must be a multiple of {CHUNK_TRIALS} (the trials of "
                           "one random stream), so that the blocks equal one large draw; got "
                           f"{c}")
    return c


def _check_out(out, shape):
    if not isinstance(out, np.ndarray):
        raise McrouteError(f"out must be a numpy array of int64 with shape {shape} (trial, layer, "
                           f"expert), got {type(out).__name__}")
    if out.dtype != np.int64:
        raise McrouteError(f"out must have dtype int64, got {out.dtype}")
    if out.shape != shape:
        raise McrouteError(f"out must have shape {shape} (trial, layer, expert), got {out.shape}")
    if not out.flags.c_contiguous:
        raise McrouteError("out must be C-contiguous (e.g. from numpy.empty or a writable "
                           "numpy.memmap)")
    if not out.flags.writeable:
        raise McrouteError("out must be writable")
    return out


def _blocks(routing, batch_size, n_trials, n_layers, entropy, method, chunk_trials):
    """Yield (first trial, counts) blocks of one stream; together they equal one draw."""
    m = resolve_method(routing, batch_size, method)
    seeds = chunk_seeds(entropy, n_trials, ())
    tables: dict = {}  # the sampler's tables, built for the first block, serve the others
    for t0 in range(0, n_trials, chunk_trials):
        nt = min(chunk_trials, n_trials - t0)
        c0 = t0 // CHUNK_TRIALS
        with reuse_tables(tables):
            block = routing._draw_counts(batch_size, nt, n_layers,
                                         seeds[c0:c0 + n_chunks(nt)], m)
        yield t0, block


def sample_counts(routing: Routing | str, batch_size: int, n_trials: int, n_layers: int = 1, *,
                  rng: int | np.random.SeedSequence | np.random.Generator | None = None,
                  method: str = "auto", out: np.ndarray | None = None,
                  n_experts: int | None = None, top_k: int | None = None) -> np.ndarray:
    """Tokens routed to each expert in random decode microbatches.

    Parameters
    ----------
    routing : Routing or str
        The routing distribution (``Uniform``, ``Zipf``, ``LogNormal``, ``Popularity``,
        ``Correlated``, ``GroupLimited``, ``Trace``), or a routing string such as ``"zipf:1.2"``
        or ``"uniform+group:8,4"`` (then ``n_experts`` and ``top_k`` are required).
    batch_size : int
        Tokens per microbatch B (one per sequence at decode), >= 1.
    n_trials : int
        Independent microbatches to draw, >= 1.
    n_layers : int
        MoE layers per microbatch, >= 1. Layers are independent draws (hot experts differ per
        layer through the routing's permutation).
    rng : None, int, SeedSequence or Generator
        Seed; the same seed gives the same array on any thread count.
    method : {"auto", "assignment", "counts"}
        ``"assignment"`` samples every token's k experts (fused: no per-token array is kept);
        ``"counts"`` samples per-expert counts directly (exact for uniform routing and for
        top_k = 1; cost independent of B); ``"auto"`` takes counts where exact and the batch
        has at least :data:`COUNTSPACE_MIN_TOKENS_PER_EXPERT` tokens per expert (64, for uniform
        routing and for weighted top-1), where it is measured to be faster.
    out : numpy.ndarray, optional
        int64, C-contiguous, shape (n_trials, n_layers, n_experts) (e.g. a ``numpy.memmap``):
        the counts are written into it, block by block, and it is returned. Only one block of
        trials is held besides it. The numbers are those of a call without ``out``.
    n_experts, top_k : int, optional
        E and k of a routing string (with a routing object: None, or equal to its own).

    Returns
    -------
    numpy.ndarray
        int64 (trial, layer, expert); each (trial, layer) row sums to B·k.

    See Also
    --------
    iter_counts : the same counts in blocks of trials.

    Examples
    --------
    >>> import mcroute as mr
    >>> c = mr.sample_counts(mr.Uniform(8, 2), batch_size=4, n_trials=3, rng=0)
    >>> c.shape, c.sum(axis=-1).ravel().tolist()
    ((3, 1, 8), [8, 8, 8])
    >>> bool((mr.sample_counts("uniform", 4, 3, rng=0, n_experts=8, top_k=2) == c).all())
    True
    """
    routing, batch_size, n_trials, n_layers = _check_request(
        routing, batch_size, n_trials, n_layers, n_experts, top_k)
    shape = (n_trials, n_layers, routing.n_experts)
    if out is not None:
        _check_out(out, shape)
    entropy = resolve_seed(rng)
    if out is None:
        check_bytes(f"the counts ({n_trials} trials x {n_layers} layers x {routing.n_experts} "
                    "experts, int64)", n_trials * n_layers * routing.n_experts * 8,
                    "n_trials or n_layers")
    check_sampling_request(routing, [batch_size], n_trials, n_layers, method,
                           params="n_trials, n_layers or batch_size")
    if out is None:
        return draw_counts(routing, batch_size, n_trials, n_layers, entropy, (), method)
    chunk = _check_chunk_trials(None, n_layers, routing.n_experts)
    for t0, block in _blocks(routing, batch_size, n_trials, n_layers, entropy, method, chunk):
        out[t0:t0 + block.shape[0]] = block
    return out


def iter_counts(routing: Routing | str, batch_size: int, n_trials: int, n_layers: int = 1, *,
                rng: int | np.random.SeedSequence | np.random.Generator | None = None,
                method: str = "auto", chunk_trials: int | None = None,
                n_experts: int | None = None,
                top_k: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Counts of :func:`sample_counts` in blocks of trials, for raw counts at scale.

    Yields ``(trial_offset, counts)`` with ``counts`` int64 (trials of the block, layer,
    expert), trial ``trial_offset`` first; the blocks, concatenated, are bit for bit the array
    ``sample_counts(routing, batch_size, n_trials, n_layers, rng=rng, method=method)`` returns
    with the same seed, whatever ``chunk_trials``. Only one block is held at a time, so
    trials × layers × experts is never allocated. Arguments are checked when the function is
    called, before the first block is drawn.

    Parameters
    ----------
    routing, batch_size, n_trials, n_layers, rng, method, n_experts, top_k
        As for :func:`sample_counts`.
    chunk_trials : int, optional
        Trials per block, a multiple of 16 (the trials of one random stream). Default: blocks
        of about 4 million counts (32 MB), :data:`COUNT_BLOCK_ELEMENTS`.

    Examples
    --------
    >>> import numpy as np, mcroute as mr
    >>> r = mr.Zipf(64, 4, 1.0)
    >>> blocks = [c for _, c in mr.iter_counts(r, 32, 100, rng=7, chunk_trials=32)]
    >>> [b.shape[0] for b in blocks]
    [32, 32, 32, 4]
    >>> bool((np.concatenate(blocks) == mr.sample_counts(r, 32, 100, rng=7)).all())
    True
    """
    routing, batch_size, n_trials, n_layers = _check_request(
        routing, batch_size, n_trials, n_layers, n_experts, top_k)
    chunk = _check_chunk_trials(chunk_trials, n_layers, routing.n_experts)
    entropy = resolve_seed(rng)
    check_bytes(f"one block of counts ({chunk} trials x {n_layers} layers x "
                f"{routing.n_experts} experts, int64)", chunk * n_layers * routing.n_experts * 8,
                "chunk_trials")
    check_sampling_request(routing, [batch_size], n_trials, n_layers, method,
                           params="n_trials, n_layers or batch_size")
    return _blocks(routing, batch_size, n_trials, n_layers, entropy, method, chunk)


def sample_assignments(routing: Routing | str, batch_size: int, n_trials: int,
                       n_layers: int = 1, *,
                       rng: int | np.random.SeedSequence | np.random.Generator | None = None,
                       n_experts: int | None = None, top_k: int | None = None) -> np.ndarray:
    """Expert ids chosen by each token, int64 (trial, layer, token, slot), for inspection.

    Draws the same numbers as ``sample_counts(..., method="assignment")`` with the same seed:
    counting these ids per expert gives that array. For weighted routing slot j holds the j-th
    draw of successive sampling; for uniform routing the slot order carries no meaning, and
    when the sampler indexes the table of all k-subsets (C(E, k) at most the batch size and
    4096) the slots list the subset in ascending expert id.

    Examples
    --------
    >>> import mcroute as mr
    >>> a = mr.sample_assignments(mr.Zipf(16, 4, 1.0), batch_size=2, n_trials=1, rng=1)
    >>> a.shape, bool(all(len(set(t)) == 4 for t in a[0, 0]))
    ((1, 1, 2, 4), True)
    """
    routing = check_routing(as_routing(routing, n_experts, top_k))
    batch_size = check_int("batch_size", batch_size, minimum=1, maximum=MAX_BATCH_SIZE)
    n_trials = check_int("n_trials", n_trials, minimum=1)
    n_layers = check_int("n_layers", n_layers, minimum=1, maximum=MAX_LAYERS)
    if not hasattr(routing, "_draw_assignments"):
        raise McrouteError(f"{type(routing).__name__} cannot report per-token assignments")
    entropy = resolve_seed(rng)
    check_bytes(f"the assignments ({n_trials} trials x {n_layers} layers x {batch_size} tokens "
                f"x {routing.top_k} slots, int64)",
                n_trials * n_layers * batch_size * routing.top_k * 8,
                "n_trials, n_layers or batch_size")
    seeds = chunk_seeds(entropy, n_trials, ())
    return routing._draw_assignments(batch_size, n_trials, n_layers, seeds)


def device_map(n_experts: int, n_devices: int = 1,
               placement: ArrayLike | None = None) -> np.ndarray:
    """Device of each expert, int64 (expert,).

    ``placement=None`` places experts contiguously: device d holds experts
    ``d·E/D .. (d+1)·E/D - 1``, which needs ``n_devices`` to divide ``n_experts``. An explicit
    ``placement`` is an int array (expert,) of device ids in ``0 .. n_devices-1``.
    """
    n_experts = check_int("n_experts", n_experts, minimum=1)
    n_devices = check_int("n_devices", n_devices, minimum=1)
    if placement is None:
        if n_experts % n_devices:
            raise McrouteError(
                f"n_devices must divide n_experts={n_experts} for contiguous placement, got "
                f"{n_devices}; pass placement= (an expert -> device map) for uneven splits"
            )
        return np.repeat(np.arange(n_devices, dtype=np.int64), n_experts // n_devices)
    p = np.asarray(placement)
    if p.shape != (n_experts,) or not np.issubdtype(p.dtype, np.integer):
        raise McrouteError(f"placement must be an integer array of shape ({n_experts},)")
    if p.min() < 0 or p.max() >= n_devices:
        raise McrouteError(f"placement entries must be device ids in [0, {n_devices - 1}]")
    return p.astype(np.int64)


def microbatch_stats(counts: ArrayLike, *, n_devices: int = 1, placement: ArrayLike | None = None,
                     capacity_factor: float = 1.0) -> dict[str, np.ndarray]:
    """Statistics of each microbatch, float64 arrays (trial, layer).

    Parameters
    ----------
    counts : ndarray
        int (trial, layer, expert), e.g. from :func:`sample_counts`.
    n_devices : int
        Devices the experts are spread over (expert parallelism).
    placement : array of int, optional
        Device of each expert; default contiguous.
    capacity_factor : float
        Expert capacity C = ceil(capacity_factor · B·k / E) tokens (the Switch convention).

    Returns
    -------
    dict of ndarray
        ``active_experts`` (distinct experts touched, [experts]), ``tokens_per_active_expert``
        (B·k / active: tokens served per fetched expert weight, [tokens]), ``max_expert_load``
        [tokens], ``max_device_load`` [tokens], ``device_imbalance`` (max / mean device load,
        [1]), ``max_device_active_experts`` (distinct experts touched on the busiest device in
        that sense, [experts]) and ``overflow_fraction`` (share of assignments above capacity,
        [1]).
    """
    counts = np.asarray(counts)
    if counts.ndim != 3 or not np.issubdtype(counts.dtype, np.integer):
        raise McrouteError("counts must be an integer array (trial, layer, expert)")
    n_experts = counts.shape[2]
    dev = device_map(n_experts, n_devices, placement)
    cf = check_real("capacity_factor", capacity_factor, minimum=0.0, maximum=MAX_CAPACITY_FACTOR,
                    open_min=True)
    total = counts.sum(axis=2)
    bk = int(total[..., 0:1].max()) if total.size else 0
    # No expert holds more than B·k tokens, so a larger capacity means the same (and fits int64).
    capacity = min(int(np.ceil(cf * bk / n_experts)), bk)
    active, max_load, max_dev, max_dev_act, over = K.count_stats(
        counts.astype(np.int64, copy=False), dev, n_devices, capacity
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        reuse = np.where(active > 0, total / active, 0.0)
        imbalance = np.where(total > 0, max_dev / (total / n_devices), 1.0)
        overflow = np.where(total > 0, over / total, 0.0)
    return {
        "active_experts": active,
        "tokens_per_active_expert": reuse,
        "max_expert_load": max_load,
        "max_device_load": max_dev,
        "device_imbalance": imbalance,
        "max_device_active_experts": max_dev_act,
        "overflow_fraction": overflow,
    }


def load_histogram(counts: ArrayLike, max_load: int | None = None) -> np.ndarray:
    """Mean number of experts with load m (m = 0 .. max_load) per microbatch, (layer, load)."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 3:
        raise McrouteError("counts must be an integer array (trial, layer, expert)")
    if max_load is None:
        max_load = int(counts.max()) if counts.size else 0
    max_load = check_int("max_load", max_load, minimum=0)
    return K.load_histogram(counts, max_load)


def expected_active_experts(routing: Routing | str, batch_size: int | Sequence[int],
                            n_layers: int = 1, *, n_experts: int | None = None,
                            top_k: int | None = None) -> np.ndarray | float:
    """Exact expected number of distinct experts touched by B independent tokens.

    ``E[active] = Σ_e 1 − (1 − π_e)^B`` with π_e the inclusion probability of expert e.
    Exact whenever tokens are routed independently (every distribution here except the
    correlated-microbatch options); for weighted top-k the π_e come from quadrature (error
    < 1e-10, see ``Routing.inclusion_probabilities``).

    Parameters
    ----------
    routing : Routing or str
        A routing distribution or a routing string (then with ``n_experts`` and ``top_k``).
    batch_size : int or sequence of int
        Tokens per microbatch, >= 1.
    n_layers : int
        Layers to evaluate; the result has a leading layer axis when > 1.
    n_experts, top_k : int, optional
        E and k of a routing string.

    Returns
    -------
    float or ndarray
        Shape ``([layer,] [batch_size])``.

    Examples
    --------
    >>> import mcroute as mr
    >>> round(float(mr.expected_active_experts(mr.Uniform(256, 8), 1)), 12)
    8.0
    """
    routing = check_routing(as_routing(routing, n_experts, top_k))
    b, scalar = check_int_list("batch_size", batch_size, minimum=1, maximum=MAX_BATCH_SIZE)
    n_layers = check_int("n_layers", n_layers, minimum=1, maximum=MAX_LAYERS)
    check_bytes(f"the inclusion probabilities ({n_layers} layers x {routing.n_experts} experts "
                f"x {len(b)} batch sizes)", n_layers * routing.n_experts * len(b) * 8,
                "n_layers or batch_size")
    pi = routing.inclusion_probabilities(n_layers)
    bb = np.asarray(b, dtype=float)
    # 1 - (1 - pi)^B, computed as -expm1(B log1p(-pi)) for accuracy at small pi.
    with np.errstate(divide="ignore"):
        lg = np.log1p(-np.minimum(pi, 1.0))
    out = (-np.expm1(lg[:, None, :] * bb[None, :, None])).sum(axis=2)
    if scalar:
        out = out[:, 0]
    return out[0] if n_layers == 1 else out


def active_experts_variance(routing: Routing | str, batch_size: int, *,
                            n_experts: int | None = None, top_k: int | None = None) -> float:
    """Exact variance of the number of distinct experts touched, for uniform or top-1 routing.

    With U_e the indicator that expert e is untouched,
    ``Var = Σ_e Var(U_e) + Σ_{e≠f} [P(U_e U_f) − P(U_e) P(U_f)]``; per token
    P(avoid e) = 1 − π_e and P(avoid e and f) = 1 − π_e − π_f + π_ef, with
    π_ef = k(k−1) / (E(E−1)) for uniform routing and 0 for top-1. A routing string needs
    ``n_experts`` and ``top_k``.
    """
    routing = check_routing(as_routing(routing, n_experts, top_k))
    b = check_int("batch_size", batch_size, minimum=1, maximum=MAX_BATCH_SIZE)
    e, k = routing.n_experts, routing.top_k
    check_bytes(f"the pair table ({e} x {e} experts)", e * e * 8 * 4, "n_experts")
    p = routing.popularity(1)[0]
    uniform = bool(np.all(np.abs(p - 1.0 / e) <= 1e-15))
    if not (uniform or k == 1):
        raise McrouteError("active_experts_variance is exact only for uniform routing or top_k=1")
    pi = routing.inclusion_probabilities(1)[0]
    pe = (1.0 - pi) ** b
    pair_incl = k * (k - 1) / (e * (e - 1)) if (uniform and e > 1) else 0.0
    avoid2 = 1.0 - pi[:, None] - pi[None, :] + pair_incl
    pef = np.clip(avoid2, 0.0, None) ** b
    cov = pef - pe[:, None] * pe[None, :]
    np.fill_diagonal(cov, pe * (1.0 - pe))
    return float(cov.sum())


def expert_load_distribution(routing: Routing | str, batch_size: int, *,
                             n_experts: int | None = None,
                             top_k: int | None = None) -> rv_frozen:
    """Exact law of one expert's load for uniform routing: ``scipy.stats.binom(B, k/E)``.

    A routing string (``"uniform"``) needs ``n_experts`` and ``top_k``.
    """
    routing = check_routing(as_routing(routing, n_experts, top_k))
    b = check_int("batch_size", batch_size, minimum=1, maximum=MAX_BATCH_SIZE)
    if getattr(routing, "kind", "") != "uniform":
        raise McrouteError("expert_load_distribution is exact only for Uniform routing")
    return stats.binom(b, routing.top_k / routing.n_experts)

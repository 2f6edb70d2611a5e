"""Numba kernels: token-to-expert sampling on plain arrays.

May import: numpy, numba. Nothing else: no validation, no xarray, no Python objects, no module
globals read inside a kernel. All kernel helpers live in this one file, because numba's on-disk
cache does not notice changes to functions in other files.

Randomness: a small, fast generator of our own, xoshiro256+ (Blackman & Vigna, 2018), whose
state is a ``uint64[4]`` array. Every driver takes ``states`` (uint64, one row of 4 words per
chunk of ``chunk`` trials, from ``SeedSequence.generate_state``); each chunk copies its row and
is processed sequentially by one thread, so the numbers depend on the seed and the chunk index
only, never on how chunks are spread over threads. The hot per-assignment samplers hold the
state in four scalars for the chunk (:func:`_step`) and write it back. Uniform doubles use the
top 53 bits. Random integers in [0, n) are ``floor(u * n)`` where not stated otherwise; the bias
is below n / 2**53 (< 1e-12 for any expert count here). (numba's built-in ``np.random`` was
5–7× slower per draw inside parallel loops.)

Layouts: counts ``(trial, layer, expert)`` int64; assignments ``(trial, layer, token, slot)``
int64; per-layer tables ``(layer, expert)``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, uint64

# ---------------------------------------------------------------------------------------------
# Generator: xoshiro256+, uniforms, binomials
# ---------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _rotl(x, k):
    return (x << uint64(k)) | (x >> uint64(64 - k))


@njit(cache=True, inline="always")
def next_u64(s):
    """Advance state ``s`` (uint64[4]) and return 64 random bits (xoshiro256+)."""
    result = s[0] + s[3]
    t = s[1] << uint64(17)
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = _rotl(s[3], 45)
    return result


@njit(cache=True, inline="always")
def _step(s0, s1, s2, s3):
    """One xoshiro256+ step on a state held in four scalars: ``(bits, s0, s1, s2, s3)``.

    The hot samplers keep the state in registers this way: with the state in an array, every
    store to a count array could alias it, and the compiler reloads it after each store.
    """
    result = s0 + s3
    t = s1 << uint64(17)
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = _rotl(s3, 45)
    return result, s0, s1, s2, s3


@njit(cache=True, inline="always")
def uniform(s):
    """Uniform double in [0, 1) from the top 53 bits."""
    return (next_u64(s) >> uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True, inline="always")
def randint(s, n):
    """Uniform integer in [0, n) as floor(u · n)."""
    return np.int64(uniform(s) * n)


@njit(cache=True)
def init_state(row):
    """A private copy of one chunk's state row (never all zero)."""
    s = row.copy()
    if s[0] == 0 and s[1] == 0 and s[2] == 0 and s[3] == 0:
        s[0] = uint64(0x9E3779B97F4A7C15)
    return s


@njit(cache=True)
def binomial(s, n, p):
    """Binomial(n, p) variate.

    Inversion (sequential search from 0) when n·min(p, 1-p) < 10; otherwise BTRS, the
    transformed rejection with squeeze of Hörmann (1993), whose acceptance rate exceeds 0.8,
    so the loop ends after few rounds. p > 1/2 is handled by symmetry.
    """
    if n <= 0 or p <= 0.0:
        return np.int64(0)
    if p >= 1.0:
        return np.int64(n)
    flip = p > 0.5
    q = 1.0 - p if flip else p
    if n * q < 10.0:
        while True:
            r = (1.0 - q) ** n
            ratio = q / (1.0 - q)
            a = (n + 1) * ratio
            u = uniform(s)
            x = 0
            while u > r and x <= n:
                u -= r
                x += 1
                r *= a / x - ratio
            if x <= n:
                break
    else:
        spq = math.sqrt(n * q * (1.0 - q))
        b = 1.15 + 2.53 * spq
        a = -0.0873 + 0.0248 * b + 0.01 * q
        c = n * q + 0.5
        vr = 0.92 - 4.2 / b
        alpha = (2.83 + 5.1 / b) * spq
        m = math.floor((n + 1) * q)
        lpq = 0.0
        h = -1.0  # log-factorial terms, computed on the first draw the squeeze cannot accept
        while True:
            u = uniform(s) - 0.5
            v = uniform(s)
            us = 0.5 - abs(u)
            kk = math.floor((2.0 * a / us + b) * u + c)
            if kk < 0 or kk > n:
                continue
            if us >= 0.07 and v <= vr:
                x = kk
                break
            v = math.log(v * alpha / (a / (us * us) + b))
            if h < 0.0:
                lpq = math.log(q / (1.0 - q))
                h = math.lgamma(m + 1.0) + math.lgamma(n - m + 1.0)
            if v <= h - math.lgamma(kk + 1.0) - math.lgamma(n - kk + 1.0) + (kk - m) * lpq:
                x = kk
                break
    x = np.int64(x)
    return n - x if flip else x


@njit(cache=True, parallel=True)
def binomial_many(states, chunk, n_draws, n, p):
    """``n_draws`` Binomial(n, p) variates (for tests of the generator)."""
    out = np.zeros(n_draws, dtype=np.int64)
    for c in prange(states.shape[0]):
        s = init_state(states[c])
        for i in range(c * chunk, min(c * chunk + chunk, n_draws)):
            out[i] = binomial(s, n, p)
    return out


# ---------------------------------------------------------------------------------------------
# Guide tables and weighted draws without replacement
# ---------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _is_taken(q, cp, first, m):
    for a in range(first, m):
        if cp[a] == q:
            return True
    return False


@njit(cache=True)
def _draw_weighted_exact(s, it, ft, n_pos, chosen, m, cp):
    """Exact draw from the weights left after removing the ``m`` chosen experts.

    ``it``, ``ft`` and ``n_pos`` are one layer's tables of the exact draw (``exact`` of
    :func:`weighted_tables`): the experts by decreasing weight (``it[0, q]`` is the expert at
    position q, ``it[1]`` the inverse); per position q the log-weight relative to the heaviest
    (``ft[0]``), the mass of positions q.. relative to position q's weight (``ft[1]``, >= 1),
    and the same mass relative to the heaviest in log space (``ft[2]``) and linear form
    (``ft[4]``; ``ft[3]`` is the linear weight); ``n_pos`` experts have positive weight.

    The heaviest expert left is at p, the first position not chosen. The reduced line (all
    positions from p, less the chosen ones) is drawn on in tail coordinates (mass to the right
    of the point), mapped onto the full line by skipping the chosen intervals (lightest first),
    and the expert found by binary search on the tail masses: O(k + log E). If p weighs at
    least e^-300 of the heaviest, this runs in linear form relative to the heaviest (what it
    needs does not underflow: experts that do are e^-400 below p and never matter). Otherwise
    everything is relative to p, in log space, so the law among experts whose normalised
    weights underflow is still exact. ``cp`` is scratch space of at least ``m`` entries.
    (Two packed tables rather than seven arrays: every array argument costs time per call.)
    """
    for i in range(m):
        cp[i] = it[1, chosen[i]]
    for i in range(1, m):  # insertion sort of at most k - 1 positions
        v = cp[i]
        t = i - 1
        while t >= 0 and cp[t] > v:
            cp[t + 1] = cp[t]
            t -= 1
        cp[t + 1] = v
    p = 0
    first = 0  # cp[first:m] are the chosen positions after p
    while first < m and cp[first] == p:
        p += 1
        first += 1
    lp = ft[0, p]
    lo = p
    hi = n_pos - 1
    if lp >= -300.0:
        rest = ft[4, p]
        for a in range(first, m):
            rest -= ft[3, cp[a]]
        v = (1.0 - uniform(s)) * rest  # in (0, rest]
        for a in range(m - 1, first - 1, -1):
            c = cp[a]
            if c + 1 >= n_pos or v > ft[4, c + 1]:
                v += ft[3, c]
        while lo < hi:  # the largest q whose tail mass reaches v
            mid = (lo + hi + 1) // 2
            if ft[4, mid] >= v:
                lo = mid
            else:
                hi = mid - 1
    else:
        rest = ft[1, p]
        for a in range(first, m):
            rest -= math.exp(ft[0, cp[a]] - lp)
        v = (1.0 - uniform(s)) * rest
        for a in range(m - 1, first - 1, -1):
            c = cp[a]
            if c + 1 >= n_pos or v > math.exp(ft[2, c + 1] - lp):
                v += math.exp(ft[0, c] - lp)
        thr = lp + math.log(v)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if ft[2, mid] >= thr:
                lo = mid
            else:
                hi = mid - 1
    if not _is_taken(lo, cp, first, m):
        return it[0, lo]
    # Reached only through rounding at an interval edge: exact linear scan, relative to p.
    total = 0.0
    for q in range(p, n_pos):
        if not _is_taken(q, cp, first, m):
            total += math.exp(ft[0, q] - lp)
    u = uniform(s) * total
    last = p
    for q in range(p, n_pos):
        if not _is_taken(q, cp, first, m):
            last = q
            u -= math.exp(ft[0, q] - lp)
            if u < 0.0:
                return it[0, q]
    return it[0, last]


@njit(cache=True)
def _weighted_layer_plan(w, top_k):
    """Per layer of normalised ``w``: ``(extra, fast)``, from one sort of the layer's weights.

    ``fast``: whether any k - 1 experts hold at most 0.9 of the mass (the fast path).

    ``extra``: pairs of masked candidates a token gets after its first k in the fast path. Only
    speed depends on it. The expected number of candidates a token needs is at most sum over
    j < k of 1 / (1 - H_j), with H_j the mass of the j heaviest experts (the j experts already
    held weigh at most H_j). Two thirds of the excess over k, rounded to pairs, at least one
    pair, was fastest in measurements (Zipf 1.2 and 0.8, LogNormal 1.0, uniform weights;
    E = 64 and 256, k = 4, 6 and 8).
    """
    n_layers = w.shape[0]
    extra = np.ones(n_layers, dtype=np.int64)
    fast = np.zeros(n_layers, dtype=np.bool_)
    for layer in range(n_layers):
        heavy = np.sort(w[layer])[::-1]
        fast[layer] = heavy[:top_k - 1].sum() <= 0.9
        bound = 0.0
        held = 0.0
        for j in range(top_k):
            bound += 1.0 / max(1.0 - held, 0.1)
            held += heavy[j]
        want = ((top_k % 2) + (bound - top_k) * 2.0 / 3.0) / 2.0
        extra[layer] = max(1, np.int64(want + 0.5))
    return extra, fast


@njit(cache=True, inline="always")
def _cell_shift(n_cells):
    """``32 - log2(n_cells)``: a 32-bit h lies in guide cell ``h >> shift``."""
    bits = 0
    while (1 << bits) < n_cells:
        bits += 1
    return uint64(32 - bits)


def _guide_bits(n_experts):
    """log2 of the guide table's cells: at least 32 per expert, between 2**8 and 2**16.

    At most n_experts - 1 cells straddle an interval boundary, so a draw needs the (branchy)
    CDF scan with probability below n_experts / 2**bits, under 1/32 up to 2048 experts. At
    E = 256 the table (2**13 int16) takes half of a 32 KiB L1 cache; a cap of 2**13 cells made
    E = 2048 top-1 draws 2x slower (a quarter of them scanned), a floor of 2**14 made E = 256
    no faster and multi-layer sampling slower (each layer's table is fetched per microbatch).
    """
    bits = 8
    while bits < 16 and (1 << bits) < 32 * n_experts:
        bits += 1
    return bits


def weighted_tables(weights, top_k, log_weights=None):
    """Tables of the weighted sampler for per-layer ``weights`` (layer, expert); plain Python.

    ``log_weights`` (layer, expert), if given, are the same weights in log space, up to a
    constant per layer (``-inf`` for zero weights). They carry the ratios between experts whose
    normalised weights underflow (e.g. Zipf with a large exponent); by default
    ``log(weights)``. Every layer needs at least ``top_k`` experts of positive weight, and a
    positive weight a finite log-weight (ValueError otherwise: callers validate first).

    Returns ``(w, exact, fix, guide, extra, fast)``:

    * ``w``: normalised weights (layer, expert), float64, for the chosen mass of the slow path;
    * ``exact``: ``(itab, ftab, n_pos)``, the tables of the exact draw of the slow path
      (:func:`_draw_weighted_exact`). ``itab`` (layer, 2, expert) int64: the experts by
      decreasing weight (stable for ties, zero weights last) and each expert's position in
      that order. ``ftab`` (layer, 5, expert) float64, per position q: ``lrel``, the
      log-weight relative to the heaviest; ``tail`` = sum over positions i >= q of
      exp(lrel[i] - lrel[q]) (positive weights only, so >= 1); ``ltail = lrel + log(tail)``;
      ``exp(lrel)`` and ``exp(ltail)`` (these two may underflow to 0). ``n_pos`` (layer,):
      experts of positive weight;
    * ``fix``: the CDF in 32-bit fixed point (layer, expert + 1), uint64, ``fix[E] = 2**32``. A
      draw returns the expert e with ``fix[e] <= h < fix[e + 1]`` for a uniform 32-bit h, so
      expert e has probability ``(fix[e+1] - fix[e]) / 2**32``: its weight rounded to a multiple
      of 2**-32 (an expert lighter than 2**-32 of the layer may get an empty interval). Experts
      of zero weight always have an empty interval;
    * ``guide`` (layer, 2**bits): cell c covers ``h >> (32 - bits) == c``. It holds the expert
      if one interval covers the whole cell, else ``-(first expert) - 1``, from where
      :func:`_guide_draw` scans ``fix``. int16 (int32 beyond 32768 experts): int16 keeps the
      table in half the L1 cache and measured about 8% faster at E = 256;
    * ``extra``, ``fast``: :func:`_weighted_layer_plan`.
    """
    weights = np.ascontiguousarray(weights, dtype=np.float64)
    n_layers, n_experts = weights.shape
    if log_weights is None:
        with np.errstate(divide="ignore"):
            log_weights = np.log(weights)
    lw = np.ascontiguousarray(log_weights, dtype=np.float64)
    finite = np.isfinite(lw)
    if (lw.shape != weights.shape or np.isnan(lw).any() or (lw == np.inf).any()
            or np.any((weights > 0) & ~finite)):
        raise ValueError("log_weights must have the shape of weights, no NaN or +inf, and a "
                         "finite value wherever the weight is positive")
    n_pos = finite.sum(axis=1).astype(np.int64)
    if n_pos.min() < top_k:
        raise ValueError(f"every layer needs at least top_k={top_k} experts of positive weight")
    dtype = np.int16 if n_experts <= 32768 else np.int32
    guide = np.empty((n_layers, 1 << _guide_bits(n_experts)), dtype=dtype)
    w, fix = _fill_weighted_tables(weights, guide)
    extra, fast = _weighted_layer_plan(w, top_k)
    order = np.ascontiguousarray(np.argsort(-lw, axis=1, kind="stable"), dtype=np.int64)
    lsort = np.take_along_axis(lw, order, axis=1)
    lrel = np.ascontiguousarray(lsort - lsort[:, :1])
    pos = np.empty_like(order)
    np.put_along_axis(pos, order, np.broadcast_to(np.arange(n_experts), order.shape), axis=1)
    tail, ltail = _tail_sums(lrel, n_pos)
    with np.errstate(under="ignore"):
        ftab = np.ascontiguousarray(
            np.stack([lrel, tail, ltail, np.exp(lrel), np.exp(ltail)], axis=1))
    itab = np.ascontiguousarray(np.stack([order, pos], axis=1))
    return w, (itab, ftab, n_pos), fix, guide, extra, fast


@njit(cache=True)
def _tail_sums(lrel, n_pos):
    """``tail`` and ``ltail`` of :func:`weighted_tables` (positions beyond ``n_pos``: 0, -inf)."""
    n_layers, n_experts = lrel.shape
    tail = np.zeros((n_layers, n_experts))
    ltail = np.full((n_layers, n_experts), -np.inf)
    for layer in range(n_layers):
        n = n_pos[layer]
        acc = 1.0
        tail[layer, n - 1] = 1.0
        for q in range(n - 2, -1, -1):
            acc = 1.0 + math.exp(lrel[layer, q + 1] - lrel[layer, q]) * acc
            tail[layer, q] = acc
        for q in range(n):
            ltail[layer, q] = lrel[layer, q] + math.log(tail[layer, q])
    return tail, ltail


@njit(cache=True)
def _fill_weighted_tables(weights, guide):
    """``w`` and ``fix`` of :func:`weighted_tables`; fills ``guide`` in place."""
    n_layers, n_experts = weights.shape
    w = np.empty_like(weights)
    fix = np.empty((n_layers, n_experts + 1), dtype=np.uint64)
    n_cells = guide.shape[1]
    width = uint64(1) << _cell_shift(n_cells)
    one = uint64(4294967296)
    for layer in range(n_layers):
        total = 0.0
        last = 0
        for j in range(n_experts):
            total += weights[layer, j]
            if weights[layer, j] > 0.0:
                last = j
        acc = 0.0
        fix[layer, 0] = 0
        for j in range(n_experts):
            w[layer, j] = weights[layer, j] / total
            acc += w[layer, j]
            # rounding is monotone, so intervals never overlap; all mass ends at the last
            # expert of positive weight, so trailing zero weights keep empty intervals
            fix[layer, j + 1] = one if j >= last else min(uint64(acc * 4294967296.0 + 0.5), one)
        e = 0
        for c in range(n_cells):
            lo = uint64(c) * width
            while fix[layer, e + 1] <= lo:
                e += 1
            guide[layer, c] = e if fix[layer, e + 1] >= lo + width else -e - 1
    return w, fix


def new_counts(n_trials, n_layers, n_experts):
    """Zeroed count array (trial, layer, expert) int64, for a driver to fill (plain Python).

    Allocated by NumPy rather than inside a kernel: NumPy asks Linux for transparent huge pages
    on large arrays, so filling them costs far fewer page faults (16 MB zeroed and touched:
    about 1.3 ms against 10 ms from numba's allocator on the development machine).
    """
    return np.zeros((n_trials, n_layers, n_experts), dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Per-chunk samplers (serial) and their parallel drivers (prange over chunks)
# ---------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _touch(row, n_increments):
    """Write 0 to one word per 64-byte line of ``row`` (a row of a zeroed count array), in order.

    Only for rows of at least 512 experts that will take at least E / 8 increments. The random
    increments that follow then hit the cache: a sequential sweep is prefetched, while random
    first touches of a fresh row miss one by one (E = 2048, top-1, B = 4096: 1.6 instead of 2.2
    times the floor). With fewer increments the sweep costs more than it saves. The drivers'
    count arrays start zeroed (they are incremented), so this changes no value.
    """
    if row.size >= 512 and n_increments >= row.size // 8:
        for e in range(0, row.size, 8):
            row[e] = 0


@njit(cache=True, inline="always")
def _offer(m, thresh, stamp, tok, row, assign, t, layer, b, j):
    """Offer slot j of token ``tok`` the expert of one Lemire product ``m`` (32-bit half × E).

    Taken unless the product's low half falls in the rejection zone or the token already holds
    the expert (``stamp``); returns the next open slot.
    """
    e = np.int64(m >> uint64(32))
    if (m & uint64(0xFFFFFFFF)) >= thresh and stamp[e] != tok:
        stamp[e] = tok
        row[e] += 1
        if assign is not None:
            assign[t, layer, b, j] = e
        return j + 1
    return j


@njit(cache=True)
def _chunk_uniform(s, counts, t0, t1, n_experts, top_k, batch, assign):
    """Uniform top-k (k >= 2) for trials t0..t1 of one chunk; ids to ``assign`` unless None.

    For k <= E/4: each 64-bit draw gives two 32-bit halves, each turned into an expert by
    Lemire's multiply-shift with rejection (exactly uniform); an expert the token already holds
    is redrawn (acceptance >= 3/4 at every draw, so <= 4/3 draws on average). "Already holds" is
    one comparison: ``stamp[e]`` keeps the running number of the last token that took e.
    Otherwise partial Fisher–Yates on a per-chunk permutation: position j takes a uniform pick
    among positions j..E-1, so the first k entries are a uniform k-subset whatever order the
    array was in.
    """
    n_layers = counts.shape[1]
    stamp = np.full(n_experts, -1, dtype=np.int64)
    perm = np.arange(n_experts)
    reject = 4 * top_k <= n_experts
    n64 = uint64(n_experts)
    low = uint64(0xFFFFFFFF)
    thresh = (uint64(1) << uint64(32)) % n64  # Lemire: reject the low part below 2**32 mod n
    tok = 0
    s0, s1, s2, s3 = s[0], s[1], s[2], s[3]
    for t in range(t0, t1):
        for layer in range(n_layers):
            row = counts[t, layer]
            _touch(row, batch * top_k)
            for b in range(batch):
                if reject:
                    j = 0
                    while j < top_k:
                        x, s0, s1, s2, s3 = _step(s0, s1, s2, s3)
                        j = _offer((x >> uint64(32)) * n64, thresh, stamp, tok, row, assign, t,
                                   layer, b, j)
                        if j < top_k:  # the second half; dropped when the token is complete
                            j = _offer((x & low) * n64, thresh, stamp, tok, row, assign, t,
                                       layer, b, j)
                    tok += 1
                else:
                    for j in range(top_k):
                        x, s0, s1, s2, s3 = _step(s0, s1, s2, s3)
                        u = (x >> uint64(11)) * (1.0 / 9007199254740992.0)
                        r = j + np.int64(u * (n_experts - j))
                        e = perm[r]
                        perm[r] = perm[j]
                        perm[j] = e
                        row[e] += 1
                        if assign is not None:
                            assign[t, layer, b, j] = e
    s[0], s[1], s[2], s[3] = s0, s1, s2, s3


@njit(cache=True)
def _chunk_uniform_top1(s, counts, t0, t1, n_experts, batch, assign):
    """Uniform top-1 for trials t0..t1.

    No duplicates to check: both 32-bit halves of every 64-bit draw become an expert (Lemire's
    multiply-shift with rejection, exactly uniform), two tokens per draw.
    """
    n_layers = counts.shape[1]
    n64 = uint64(n_experts)
    low = uint64(0xFFFFFFFF)
    thresh = (uint64(1) << uint64(32)) % n64
    s0, s1, s2, s3 = s[0], s[1], s[2], s[3]
    for t in range(t0, t1):
        for layer in range(n_layers):
            row = counts[t, layer]
            _touch(row, batch)
            b = 0
            while b < batch:
                x, s0, s1, s2, s3 = _step(s0, s1, s2, s3)
                m1 = (x >> uint64(32)) * n64
                m2 = (x & low) * n64
                e1 = np.int64(m1 >> uint64(32))
                e2 = np.int64(m2 >> uint64(32))
                if b + 2 <= batch and (m1 & low) >= thresh and (m2 & low) >= thresh:
                    row[e1] += 1
                    row[e2] += 1
                    if assign is not None:
                        assign[t, layer, b, 0] = e1
                        assign[t, layer, b + 1, 0] = e2
                    b += 2
                else:  # the last token, or a rejected half (probability < E / 2**32)
                    if (m1 & low) >= thresh:
                        row[e1] += 1
                        if assign is not None:
                            assign[t, layer, b, 0] = e1
                        b += 1
                    if b < batch and (m2 & low) >= thresh:
                        row[e2] += 1
                        if assign is not None:
                            assign[t, layer, b, 0] = e2
                        b += 1
    s[0], s[1], s[2], s[3] = s0, s1, s2, s3


@njit(cache=True)
def _chunk_uniform_subsets(s, counts, t0, t1, table, batch, assign):
    """Uniform top-k by one draw per token: an index into all C(E, k) subsets (``table``).

    Exactly uniform over k-subsets (Lemire's multiply-shift with rejection on 32-bit halves).
    Tokens are counted per subset and folded into per-expert loads at the end of each
    microbatch (C·k additions), so the cost per token does not grow with k. Recorded slots list
    the subset in ascending expert id (for uniform routing the slot order carries no meaning).
    """
    n_layers = counts.shape[1]
    n_sub, k = table.shape
    per_sub = np.zeros(n_sub, dtype=np.int64)
    n64 = uint64(n_sub)
    low = uint64(0xFFFFFFFF)
    thresh = (uint64(1) << uint64(32)) % n64
    s0, s1, s2, s3 = s[0], s[1], s[2], s[3]
    for t in range(t0, t1):
        for layer in range(n_layers):
            row = counts[t, layer]
            b = 0
            while b < batch:
                x, s0, s1, s2, s3 = _step(s0, s1, s2, s3)
                m1 = (x >> uint64(32)) * n64
                if (m1 & low) >= thresh:
                    r = np.int64(m1 >> uint64(32))
                    per_sub[r] += 1
                    if assign is not None:
                        for j in range(k):
                            assign[t, layer, b, j] = table[r, j]
                    b += 1
                m2 = (x & low) * n64
                if b < batch and (m2 & low) >= thresh:
                    r = np.int64(m2 >> uint64(32))
                    per_sub[r] += 1
                    if assign is not None:
                        for j in range(k):
                            assign[t, layer, b, j] = table[r, j]
                    b += 1
            for r in range(n_sub):
                c = per_sub[r]
                for j in range(k):
                    row[table[r, j]] += c
                per_sub[r] = 0
    s[0], s[1], s[2], s[3] = s0, s1, s2, s3


@njit(cache=True)
def _uniform_dispatch(s, counts, t0, t1, n_experts, top_k, batch, table, assign):
    if top_k == 1:
        _chunk_uniform_top1(s, counts, t0, t1, n_experts, batch, assign)
    elif table.shape[0] > 0:
        _chunk_uniform_subsets(s, counts, t0, t1, table, batch, assign)
    else:
        _chunk_uniform(s, counts, t0, t1, n_experts, top_k, batch, assign)


@njit(cache=True, parallel=True)
def counts_uniform(states, chunk, counts, top_k, batch, table, record, assign):
    """Per-assignment uniform top-k counts (trial, layer, expert); ids to ``assign`` if record.

    One of three exact samplers: top-1 (two tokens per draw); the subset table when ``table``
    (all k-subsets, int64 (C(E, k), k)) has rows; else per-slot draws with duplicate rejection.
    """
    n_trials, n_experts = counts.shape[0], counts.shape[2]
    for c in prange(states.shape[0]):
        s = init_state(states[c])
        t0 = c * chunk
        t1 = min(t0 + chunk, n_trials)
        if record:
            _uniform_dispatch(s, counts, t0, t1, n_experts, top_k, batch, table, assign)
        else:
            _uniform_dispatch(s, counts, t0, t1, n_experts, top_k, batch, table, None)
    return counts


@njit(cache=True, inline="always")
def _guide_draw(h, guide, fix, shift):
    """Expert e with ``fix[e] <= h < fix[e + 1]`` for a 32-bit ``h`` (see :func:`weighted_tables`).

    One table load, except in a cell that straddles an interval boundary, where ``fix`` is
    scanned from the cell's first expert (expected scan length below one step). Keep this
    rare branch tiny: a second branch with a binary search in it made the whole sampling loop
    twice as slow.
    """
    e = np.int64(guide[h >> shift])
    if e < 0:
        e = -e - 1
        while fix[np.uint64(e + 1)] <= h:
            e += 1
    return e


@njit(cache=True, inline="always")
def _take(e, stamp, tok, row, held, top_k, masked, assign, t, layer, b):
    """Candidate ``e`` for token ``tok`` holding ``held`` experts; returns the new count held.

    Branch-free: new unless ``stamp[e]`` says the token holds e already; with ``masked``, also
    only while the token still has an open slot. Indices are unsigned, so numba emits no
    negative-index fix-up.
    """
    ue = np.uint64(e)
    new = np.int64(stamp[ue] != tok)
    if masked:
        new &= np.int64(held < top_k)
    stamp[ue] = tok
    row[ue] += new
    if assign is not None:
        if new:
            assign[t, layer, b, held] = e
    return held + new


@njit(cache=True)
def _weighted_slow(s, row, gl, fl, shift, wl, exact, layer_idx, stamp, tok, chosen, cp, top_k,
                   batch, assign, t, layer):
    """Slow path of :func:`_chunk_weighted` for one microbatch (state in ``s``); returns ``tok``.

    ``exact`` are the tables of the exact draw (:func:`weighted_tables`), used at layer
    ``layer_idx``.
    """
    it = exact[0][layer_idx]
    ft = exact[1][layer_idx]
    npl = exact[2][layer_idx]
    s0, s1, s2, s3 = s[0], s[1], s[2], s[3]
    for b in range(batch):
        cm = 0.0
        for j in range(top_k):
            e = -1
            if cm <= 0.9:
                for _ in range(64):
                    x, s0, s1, s2, s3 = _step(s0, s1, s2, s3)
                    cand = _guide_draw(x >> uint64(32), gl, fl, shift)
                    if stamp[cand] != tok:
                        e = cand
                        break
            if e < 0:
                s[0], s[1], s[2], s[3] = s0, s1, s2, s3
                e = _draw_weighted_exact(s, it, ft, npl, chosen, j, cp)
                s0, s1, s2, s3 = s[0], s[1], s[2], s[3]
            stamp[e] = tok
            chosen[j] = e
            cm += wl[e]
            row[e] += 1
            if assign is not None:
                assign[t, layer, b, j] = e
        tok += 1
    s[0], s[1], s[2], s[3] = s0, s1, s2, s3
    return tok


@njit(cache=True)
def _chunk_weighted(s, counts, t0, t1, w, exact, fix, guide, extra, fast, top_k, batch, assign):
    """Weighted top-k (Plackett–Luce) for trials t0..t1 of one chunk; ids to ``assign``.

    Successive sampling without replacement is the same as taking, from a stream of
    independent draws of the full distribution, a token's first k distinct experts. Candidates
    are drawn by the guide table (:func:`_guide_draw`), one per 32-bit half of a 64-bit number.

    Fast path (a layer whose k - 1 heaviest experts hold at most 0.9 of the mass, so every
    candidate is new with probability >= 0.1): each token gets its own stream. It takes its
    first 2 * (k // 2) candidates unconditionally, then ``2 * extra[layer]`` more while it has an
    open slot (later ones are drawn and dropped), then one at a time until it holds k. The
    fixed-length parts have no branch and no dependency from one token to the next, so the CPU
    overlaps tokens; only the last loop branches, and ``extra`` makes it rare. Top-1 (always
    the fast path) has nothing to dedupe: two tokens per 64-bit number.

    Other layers (extreme skew): per slot, while the chosen experts' mass is at most 0.9, up to
    64 candidates are tried; otherwise, or if all fail (probability < 0.002), the conditional
    law is sampled directly, in log space relative to the heaviest expert left, so experts
    whose normalised weights underflow are still drawn in the right proportions
    (:func:`_draw_weighted_exact`, O(k + log E)). The
    switch depends only on the chosen set and the number of failures, and a rejection sampler's
    accepted value does not depend on how many tries it took, so the law stays exact and the
    loop never spins.
    """
    n_layers = counts.shape[1]
    n = w.shape[1]
    chosen = np.empty(top_k, dtype=np.int64)
    cp = np.empty(top_k, dtype=np.int64)
    stamp = np.full(n, -1, dtype=np.int64)
    shift = _cell_shift(guide.shape[1])
    low = uint64(0xFFFFFFFF)
    tok = 0
    s0, s1, s2, s3 = s[0], s[1], s[2], s[3]
    for t in range(t0, t1):
        for layer in range(n_layers):
            row = counts[t, layer]
            gl = guide[layer]
            fl = fix[layer]
            if not fast[layer]:  # out of line: its code here slowed the fast loop by 5-15%
                s[0], s[1], s[2], s[3] = s0, s1, s2, s3
                tok = _weighted_slow(s, row, gl, fl, shift, w[layer], exact, layer, stamp, tok,
                                     chosen, cp, top_k, batch, assign, t, layer)
                s0, s1, s2, s3 = s[0], s[1], s[2], s[3]
                continue
            _touch(row, batch * top_k)
            if top_k == 1:  # nothing to dedupe: two tokens per 64-bit number
                for b in range(0, batch - 1, 2):
                    x, s0, s1, s2, s3 = _step(s0, s1, s2, s3)
                    e = _guide_draw(x >> uint64(32), gl, fl, shift)
                    f = _guide_draw(x & low, gl, fl, shift)
                    row[np.uint64(e)] += 1
                    row[np.uint64(f)] += 1
                    if assign is not None:
                        assign[t, layer, b, 0] = e
                        assign[t, layer, b + 1, 0] = f
                if batch % 2 == 1:
                    x, s0, s1, s2, s3 = _step(s0, s1, s2, s3)
                    e = _guide_draw(x >> uint64(32), gl, fl, shift)
                    row[np.uint64(e)] += 1
                    if assign is not None:
                        assign[t, layer, batch - 1, 0] = e
                continue
            n_extra = extra[layer]
            for b in range(batch):
                held = 0
                for _ in range(top_k // 2):
                    x, s0, s1, s2, s3 = _step(s0, s1, s2, s3)
                    held = _take(_guide_draw(x >> uint64(32), gl, fl, shift), stamp, tok, row,
                                 held, top_k, False, assign, t, layer, b)
                    held = _take(_guide_draw(x & low, gl, fl, shift), stamp, tok, row, held,
                                 top_k, False, assign, t, layer, b)
                for _ in range(n_extra):
                    x, s0, s1, s2, s3 = _step(s0, s1, s2, s3)
                    held = _take(_guide_draw(x >> uint64(32), gl, fl, shift), stamp, tok, row,
                                 held, top_k, True, assign, t, layer, b)
                    held = _take(_guide_draw(x & low, gl, fl, shift), stamp, tok, row, held,
                                 top_k, True, assign, t, layer, b)
                while held < top_k:
                    x, s0, s1, s2, s3 = _step(s0, s1, s2, s3)
                    held = _take(_guide_draw(x >> uint64(32), gl, fl, shift), stamp, tok, row,
                                 held, top_k, False, assign, t, layer, b)
                tok += 1
    s[0], s[1], s[2], s[3] = s0, s1, s2, s3


@njit(cache=True, parallel=True)
def counts_weighted(states, chunk, counts, tables, top_k, batch, record, assign):
    """Per-assignment weighted top-k (Plackett–Luce); ``tables`` from :func:`weighted_tables`."""
    w, exact, fix, guide, extra, fast = tables
    n_trials = counts.shape[0]
    for c in prange(states.shape[0]):
        s = init_state(states[c])
        t0 = c * chunk
        t1 = min(t0 + chunk, n_trials)
        if record:
            _chunk_weighted(s, counts, t0, t1, w, exact, fix, guide, extra, fast, top_k, batch,
                            assign)
        else:
            _chunk_weighted(s, counts, t0, t1, w, exact, fix, guide, extra, fast, top_k, batch,
                            None)
    return counts


@njit(cache=True)
def _chunk_uniform_countspace(s, counts, t0, t1, top_k, batch):
    n_layers, n_experts = counts.shape[1], counts.shape[2]
    groups = np.zeros(top_k + 1, dtype=np.int64)
    for t in range(t0, t1):
        for layer in range(n_layers):
            groups[:] = 0
            groups[top_k] = batch
            for e in range(n_experts):
                rem = n_experts - e
                load = 0
                for r in range(1, top_k + 1):
                    nr = groups[r]
                    if nr > 0:
                        x = nr if r >= rem else binomial(s, nr, r / rem)
                        groups[r] -= x
                        groups[r - 1] += x
                        load += x
                counts[t, layer, e] = load


@njit(cache=True, parallel=True)
def counts_uniform_countspace(states, chunk, counts, top_k, batch):
    """Exact per-expert counts of uniform top-k routing without visiting tokens.

    Experts are visited in order. Tokens are grouped by how many of their k slots are still
    open (r). By exchangeability a token with r open slots and ``rem`` experts left picks the
    current expert with probability r / rem, so the current expert's load is a sum of
    Binomial(n_r, r / rem) draws, and the picked tokens move from group r to r - 1.
    Work is O(E·k) binomial draws per microbatch, independent of the batch size.
    """
    n_trials = counts.shape[0]
    for c in prange(states.shape[0]):
        s = init_state(states[c])
        _chunk_uniform_countspace(s, counts, c * chunk, min(c * chunk + chunk, n_trials), top_k,
                                  batch)
    return counts


@njit(cache=True)
def _chunk_multinomial(s, counts, t0, t1, weights, batch):
    n_layers, n_experts = weights.shape
    for t in range(t0, t1):
        for layer in range(n_layers):
            left = batch
            mass = 0.0
            last = -1
            for e in range(n_experts):
                mass += weights[layer, e]
                if weights[layer, e] > 0.0:
                    last = e
            for e in range(n_experts):
                if left == 0:
                    break
                we = weights[layer, e]
                if we <= 0.0:
                    continue
                x = left if (e == last or we >= mass) else binomial(s, left, we / mass)
                counts[t, layer, e] = x
                left -= x
                mass -= we


@njit(cache=True, parallel=True)
def counts_multinomial(states, chunk, counts, weights, batch):
    """Exact counts of top-1 routing with per-layer weights.

    A multinomial drawn as sequential conditional binomials over experts: O(E) draws per
    microbatch, independent of the batch.
    """
    n_layers, n_experts = weights.shape
    n_trials = counts.shape[0]
    for c in prange(states.shape[0]):
        s = init_state(states[c])
        _chunk_multinomial(s, counts, c * chunk, min(c * chunk + chunk, n_trials), weights, batch)
    return counts


@njit(cache=True)
def _chunk_floor(s, out, t0, t1, n_draws):
    s0, s1, s2, s3 = s[0], s[1], s[2], s[3]
    for t in range(t0, t1):
        acc = 0.0
        for _ in range(n_draws):
            x, s0, s1, s2, s3 = _step(s0, s1, s2, s3)
            acc += (x >> uint64(11)) * (1.0 / 9007199254740992.0)
        out[t] = acc
    s[0], s[1], s[2], s[3] = s0, s1, s2, s3


@njit(cache=True, parallel=True)
def uniform_floor(states, chunk, n_trials, n_draws):
    """Benchmark floor: ``n_draws`` uniforms per trial in a compiled loop, summed."""
    out = np.zeros(n_trials)
    for c in prange(states.shape[0]):
        s = init_state(states[c])
        _chunk_floor(s, out, c * chunk, min(c * chunk + chunk, n_trials), n_draws)
    return out


# ---------------------------------------------------------------------------------------------
# Statistics of count arrays
# ---------------------------------------------------------------------------------------------


@njit(cache=True, parallel=True)
def count_stats(counts, device_of, n_devices, capacity):
    """Per (trial, layer) statistics of counts (trial, layer, expert).

    Returns float64 arrays (trial, layer): active experts, max expert load, max device load,
    max distinct experts on one device, overflowed tokens above ``capacity`` per expert.
    """
    n_trials, n_layers, n_experts = counts.shape
    active = np.zeros((n_trials, n_layers))
    max_load = np.zeros((n_trials, n_layers))
    max_dev = np.zeros((n_trials, n_layers))
    max_dev_active = np.zeros((n_trials, n_layers))
    overflow = np.zeros((n_trials, n_layers))
    for t in prange(n_trials):
        dev_load = np.zeros(n_devices, dtype=np.int64)
        dev_act = np.zeros(n_devices, dtype=np.int64)
        for layer in range(n_layers):
            dev_load[:] = 0
            dev_act[:] = 0
            a = 0
            m = 0
            ov = 0
            for e in range(n_experts):
                x = counts[t, layer, e]
                if x > 0:
                    a += 1
                    d = device_of[e]
                    dev_load[d] += x
                    dev_act[d] += 1
                    if x > m:
                        m = x
                    if x > capacity:
                        ov += x - capacity
            active[t, layer] = a
            max_load[t, layer] = m
            max_dev[t, layer] = dev_load.max()
            max_dev_active[t, layer] = dev_act.max()
            overflow[t, layer] = ov
    return active, max_load, max_dev, max_dev_active, overflow


@njit(cache=True)
def load_histogram(counts, max_load):
    """Mean over trials of the number of experts with load m, for m = 0..max_load, per layer."""
    n_trials, n_layers, n_experts = counts.shape
    hist = np.zeros((n_layers, max_load + 1))
    for t in range(n_trials):
        for layer in range(n_layers):
            for e in range(n_experts):
                x = counts[t, layer, e]
                if x <= max_load:
                    hist[layer, x] += 1.0
    return hist / max(n_trials, 1)


# ---------------------------------------------------------------------------------------------
# Inclusion probabilities of successive sampling (Plackett–Luce)
# ---------------------------------------------------------------------------------------------


@njit(cache=True)
def pl_inclusion(log_w, top_k, anchors, s_nodes, s_weights):
    """Inclusion probabilities of weighted top-k sampling without replacement, by quadrature.

    Successive sampling in proportion to the weights w = exp(``log_w``) equals an exponential
    race: expert e finishes at T_e ~ Exp(w_e) and the k first finishers are chosen. Hence
    ``pi_e = ∫ w_e exp(-w_e t) P(N_t^(-e) <= k - 1) dt`` where N_t^(-e) counts the other experts
    finished by t, a Poisson-binomial variable with success probabilities 1 - exp(-w_j t). Its
    leave-one-out law (truncated at k - 1) comes from prefix and suffix convolutions, O(E k)
    per node.

    The integral is taken over y = log t, so that w_j t = exp(log_w_j + y) never overflows or
    underflows on the way: node i is ``y = s_nodes[i] - anchors[i]`` and enters as
    ``x_j = (log_w[j] - anchors[i]) + s_nodes[i]``; an anchor is the log-weight of an expert
    near whose time scale the node lies, so x_j stays accurate however far apart the weights
    are. ``s_weights`` are the quadrature weights in y (t dt/dy is in the integrand).
    Experts with ``log_w = -inf`` (weight 0) get 0.
    """
    n = log_w.size
    pi = np.zeros(n)
    pre = np.zeros((n + 1, top_k))
    sl = np.zeros(top_k)
    cs = np.zeros(top_k)
    p = np.empty(n)
    q = np.empty(n)
    x = np.empty(n)
    for i in range(s_nodes.size):
        for j in range(n):
            xj = (log_w[j] - anchors[i]) + s_nodes[i]
            ex = math.exp(xj)
            x[j] = xj
            q[j] = math.exp(-ex)
            p[j] = -math.expm1(-ex)
        pre[0, :] = 0.0
        pre[0, 0] = 1.0
        for j in range(n):
            pre[j + 1, 0] = pre[j, 0] * q[j]
            for c in range(1, top_k):
                pre[j + 1, c] = pre[j, c] * q[j] + pre[j, c - 1] * p[j]
        sl[:] = 0.0  # law of the count finished among experts e+1.. (truncated at k - 1)
        sl[0] = 1.0
        for e in range(n - 1, -1, -1):
            if log_w[e] > -np.inf:
                acc = 0.0
                for c in range(top_k):
                    acc += sl[c]
                    cs[c] = acc
                le = 0.0
                for a in range(top_k):
                    le += pre[e, a] * cs[top_k - 1 - a]
                pi[e] += s_weights[i] * math.exp(x[e] - math.exp(x[e])) * le
            for c in range(top_k - 1, 0, -1):
                sl[c] = sl[c] * q[e] + sl[c - 1] * p[e]
            sl[0] = sl[0] * q[e]
    return pi


# ---------------------------------------------------------------------------------------------
# --- Trace resampling kernels ---
#
# Trace layout: ``experts`` (token, trace_layer, slot) int64 expert ids; ``layer_idx`` (layer,)
# int64 maps each simulated layer to a trace layer. A resampled token keeps its choices at every
# layer together. ``conc < 0`` means independent tokens; ``conc >= 0`` is the concentration of a
# Pólya urn (Dirichlet-process / Chinese-restaurant scheme): token j of a microbatch is fresh
# with probability conc / (conc + j), else a copy of a uniformly chosen earlier token, so the
# per-expert inclusion indicators of two tokens have correlation 1 / (conc + 1).
# ---------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _urn_sources(s, src, batch, conc):
    """Fill ``src[b]``: b for a fresh token, else the index of the earlier token it copies."""
    for b in range(batch):
        if conc < 0.0 or b == 0 or uniform(s) * (conc + b) < conc:
            src[b] = b
        else:
            src[b] = src[randint(s, b)]


@njit(cache=True)
def _count_trace_tokens(counts, t, tok, experts, layer_idx, batch, record, assign):
    top_k = experts.shape[2]
    for layer in range(layer_idx.size):
        tl = layer_idx[layer]
        row = counts[t, layer]
        for b in range(batch):
            for j in range(top_k):
                e = experts[tok[b], tl, j]
                row[e] += 1
                if record:
                    assign[t, layer, b, j] = e


@njit(cache=True)
def _chunk_trace_tokens(s, counts, t0, t1, experts, layer_idx, batch, conc, record, assign):
    n_tok = experts.shape[0]
    tok = np.empty(batch, dtype=np.int64)
    src = np.empty(batch, dtype=np.int64)
    for t in range(t0, t1):
        _urn_sources(s, src, batch, conc)
        for b in range(batch):
            tok[b] = randint(s, n_tok) if src[b] == b else tok[src[b]]
        _count_trace_tokens(counts, t, tok, experts, layer_idx, batch, record, assign)


@njit(cache=True, parallel=True)
def trace_counts_tokens(states, chunk, counts, experts, layer_idx, batch, conc,
                        record, assign):
    """Microbatches of ``batch`` whole trace tokens drawn uniformly with replacement.

    ``conc < 0``: independent tokens; otherwise a Pólya urn of concentration ``conc`` over the
    trace tokens (see the section comment).
    """
    n_trials = counts.shape[0]
    for c in prange(states.shape[0]):
        s = init_state(states[c])
        _chunk_trace_tokens(s, counts, c * chunk, min(c * chunk + chunk, n_trials), experts,
                            layer_idx, batch, conc, record, assign)
    return counts


@njit(cache=True)
def _chunk_trace_blocks(s, counts, t0, t1, experts, layer_idx, batch, seq_of, seq_start,
                        seq_end, block, record, assign):
    n_tok = experts.shape[0]
    tok = np.empty(batch, dtype=np.int64)
    for t in range(t0, t1):
        b = 0
        while b < batch:
            g = randint(s, n_tok)
            q = seq_of[g]
            lo = seq_start[q]
            length = seq_end[q] - lo
            run = block if block > 0 else length
            pos = g - lo
            for _ in range(run):
                if b >= batch:
                    break
                tok[b] = lo + pos
                b += 1
                pos += 1
                if pos >= length:
                    pos = 0
        _count_trace_tokens(counts, t, tok, experts, layer_idx, batch, record, assign)


@njit(cache=True, parallel=True)
def trace_counts_blocks(states, chunk, counts, experts, layer_idx, batch, seq_of,
                        seq_start, seq_end, block, record, assign):
    """Circular block bootstrap: microbatches made of runs of consecutive same-sequence tokens.

    Tokens are ordered by (sequence, step); ``seq_of[i]`` is token i's sequence and
    ``seq_start[q] .. seq_end[q]`` the tokens of sequence q. A run starts at a uniformly drawn
    token (a sequence is picked in proportion to its length, and every token is equally likely
    at every position of the microbatch) and continues with the next tokens of its sequence,
    wrapping to the sequence's first token, for ``block`` tokens (``block <= 0``: the sequence's
    length), cut at the microbatch size.
    """
    n_trials = counts.shape[0]
    for c in prange(states.shape[0]):
        s = init_state(states[c])
        _chunk_trace_blocks(s, counts, c * chunk, min(c * chunk + chunk, n_trials), experts,
                            layer_idx, batch, seq_of, seq_start, seq_end, block, record, assign)
    return counts


@njit(cache=True)
def _chunk_weighted_urn(s, counts, t0, t1, w, exact, fix, guide, extra, fast, top_k, batch, conc,
                        record, assign):
    n_layers, n_experts = w.shape
    src = np.empty(batch, dtype=np.int64)
    fresh_of = np.empty(batch, dtype=np.int64)
    scratch = np.zeros((1, n_layers, n_experts), dtype=np.int64)
    fresh = np.zeros((1, n_layers, batch, top_k), dtype=np.int64)
    for t in range(t0, t1):
        _urn_sources(s, src, batch, conc)
        n_fresh = 0
        for b in range(batch):
            if src[b] == b:
                fresh_of[b] = n_fresh
                n_fresh += 1
            else:
                fresh_of[b] = fresh_of[src[b]]
        # The fresh tokens' choices at every layer, by the core's weighted top-k sampler.
        _chunk_weighted(s, scratch, 0, 1, w, exact, fix, guide, extra, fast, top_k, n_fresh,
                        fresh)
        for layer in range(n_layers):
            row = counts[t, layer]
            for b in range(batch):
                f = fresh_of[b]
                for j in range(top_k):
                    e = fresh[0, layer, f, j]
                    row[e] += 1
                    if record:
                        assign[t, layer, b, j] = e


@njit(cache=True, parallel=True)
def counts_weighted_urn(states, chunk, counts, tables, top_k, batch, conc, record, assign):
    """Weighted top-k (Plackett–Luce) microbatches whose tokens follow a Pólya urn.

    A fresh token draws its k experts at every layer by successive sampling from the weights
    behind ``tables`` (:func:`weighted_tables`); a copy repeats an earlier token's choices at
    every layer. Each microbatch's token law is thus a draw from a Dirichlet process centred on
    the weighted top-k law with concentration ``conc`` (``conc < 0``: independent tokens).
    """
    w, exact, fix, guide, extra, fast = tables  # out here: a parfor takes no nested tuple
    n_trials = counts.shape[0]
    for c in prange(states.shape[0]):
        s = init_state(states[c])
        _chunk_weighted_urn(s, counts, c * chunk, min(c * chunk + chunk, n_trials), w, exact, fix,
                            guide, extra, fast, top_k, batch, conc, record, assign)
    return counts


# ---------------------------------------------------------------------------------------------
# --- Shared-logit-noise and group-limited routing (one race kernel) ---
#
# Per microbatch and layer the log-weights ``log_w[layer]`` are shifted by ``sigma * z_e``, z_e
# independent standard normals shared by every token of the microbatch (``sigma = 0``: no shift,
# no normals drawn). Each token then runs the exponential race of its experts (Gumbel-top-k on
# the shifted log-weights), restricted to groups: experts form ``n_groups`` contiguous groups of
# ``E / n_groups``; arrivals are taken in order while fewer than ``topk_groups`` groups are open
# (an arrival opens its group), after that only arrivals from open groups are taken, until the
# token holds ``top_k`` experts. That is exactly: open groups = the ``topk_groups`` groups with
# the best group score (max over the group of log w_e + sigma z_e + Gumbel_e), experts = the
# top_k scores among the open groups' experts (see ``GroupLimited`` in ``_routing``).
# ---------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _cdf_search(cdf, u):
    """Smallest e with ``cdf[e] > u`` (``0 <= u < cdf[-1]``)."""
    lo = 0
    hi = cdf.size - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if cdf[mid] > u:
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(cache=True)
def _race_exact(s, p, a, stamp, tok, ogroups, n_open, size, restrict):
    """Exact draw among the experts the token does not hold (only its open groups if ``restrict``).

    In proportion to ``p``; if every remaining ``p`` underflows to 0, the remaining expert with
    the largest finite log-weight ``a`` (the limit of the law). Returns -1 if none is left.
    Restricted draws scan only the open groups (``ogroups[:n_open]``).
    """
    n_grp = n_open if restrict else 1
    r = 0.0
    best = -1
    for gi in range(n_grp):
        lo = ogroups[gi] * size if restrict else 0
        hi = lo + size if restrict else p.size
        for e in range(lo, hi):
            if stamp[e] == tok:
                continue
            r += p[e]
            if a[e] > -np.inf and (best < 0 or a[e] > a[best]):
                best = e
    if r <= 0.0:
        return best
    u = uniform(s) * r
    acc = 0.0
    last = -1
    for gi in range(n_grp):
        lo = ogroups[gi] * size if restrict else 0
        hi = lo + size if restrict else p.size
        for e in range(lo, hi):
            if stamp[e] == tok or p[e] <= 0.0:
                continue
            acc += p[e]
            last = e
            if acc > u:
                return e
    return last


@njit(cache=True)
def _chunk_race(s, counts, t0, t1, log_w, sigma, size, topk_groups, top_k, batch, record,
                assign):
    n_layers, n = log_w.shape
    n_groups = n // size
    a = np.empty(n)
    p = np.empty(n)
    cdf = np.empty(n)
    gm = np.empty(n_groups)
    stamp = np.full(n, -1, dtype=np.int64)
    gopen = np.full(n_groups, -1, dtype=np.int64)
    ogroups = np.empty(n_groups, dtype=np.int64)
    tok = 0
    for t in range(t0, t1):
        for layer in range(n_layers):
            if sigma > 0.0:
                for e in range(0, n, 2):  # Box-Muller, two normals per pair of uniforms
                    u1 = 1.0 - uniform(s)
                    u2 = uniform(s)
                    rad = math.sqrt(-2.0 * math.log(u1))
                    a[e] = log_w[layer, e] + sigma * rad * math.cos(2.0 * math.pi * u2)
                    if e + 1 < n:
                        a[e + 1] = log_w[layer, e + 1] + sigma * rad * math.sin(2.0 * math.pi * u2)
            else:
                for e in range(n):
                    a[e] = log_w[layer, e]
            m = -np.inf
            for e in range(n):
                if a[e] > m:
                    m = a[e]
            tot = 0.0
            for e in range(n):
                p[e] = math.exp(a[e] - m) if a[e] > -np.inf else 0.0
                tot += p[e]
                cdf[e] = tot
            for g in range(n_groups):
                gm[g] = 0.0
                for e in range(g * size, (g + 1) * size):
                    gm[g] += p[e]
            row = counts[t, layer]
            for b in range(batch):
                held = 0
                n_open = 0
                chosen = 0.0
                open_rem = 0.0
                rej = 0
                while held < top_k:
                    limited = n_open >= topk_groups
                    e = -1
                    if not limited:
                        if chosen <= 0.9 * tot and rej < 64:
                            c = _cdf_search(cdf, uniform(s) * tot)
                            if stamp[c] == tok:
                                rej += 1
                                continue
                            e = c
                        else:
                            e = _race_exact(s, p, a, stamp, tok, ogroups, n_open, size, False)
                    else:
                        if open_rem > 0.1 * tot and rej < 64:
                            c = _cdf_search(cdf, uniform(s) * tot)
                            if stamp[c] == tok or gopen[c // size] != tok:
                                rej += 1
                                continue
                            e = c
                        else:
                            e = _race_exact(s, p, a, stamp, tok, ogroups, n_open, size, True)
                    if e < 0:  # cannot happen for validated weights; stop rather than spin
                        break
                    rej = 0
                    stamp[e] = tok
                    row[e] += 1
                    if record:
                        assign[t, layer, b, held] = e
                    held += 1
                    chosen += p[e]
                    g = e // size
                    if gopen[g] != tok:
                        gopen[g] = tok
                        ogroups[n_open] = g
                        n_open += 1
                        open_rem += gm[g]
                    open_rem -= p[e]
                tok += 1


@njit(cache=True, parallel=True)
def counts_race(states, chunk, counts, log_w, sigma, size, topk_groups, top_k, batch, record,
                assign):
    """Microbatches of shared-logit-noise, group-limited top-k routing (see the section comment).

    ``log_w`` (layer, expert): log-weights up to a constant per layer (-inf: never chosen);
    ``size``: experts per contiguous group (``E`` for no group limit); ``topk_groups``: groups a
    token may use. The switch to the exact draw (:func:`_race_exact`) depends only on the
    token's state and its count of rejections, so the law is exact.
    """
    n_trials = counts.shape[0]
    for c in prange(states.shape[0]):
        s = init_state(states[c])
        _chunk_race(s, counts, c * chunk, min(c * chunk + chunk, n_trials), log_w, sigma, size,
                    topk_groups, top_k, batch, record, assign)
    return counts


@njit(cache=True, inline="always")
def _gl_allowed(e, p, stamp, gcount, size, n_open, topk_groups):
    return stamp[e] == 0 and p[e] > 0.0 and (n_open < topk_groups or gcount[e // size] > 0)


@njit(cache=True)
def _gl_mass(p, stamp, gcount, size, n_open, topk_groups):
    r = 0.0
    for e in range(p.size):
        if _gl_allowed(e, p, stamp, gcount, size, n_open, topk_groups):
            r += p[e]
    return r


@njit(cache=True)
def group_limited_inclusion(p, size, topk_groups, top_k):
    """Exact inclusion probabilities of one layer by enumerating every ordered choice sequence.

    ``p`` (expert,) normalised weights. The law is the sequential one of :func:`_chunk_race`
    (successive sampling in proportion to ``p``, restricted to the open groups once
    ``topk_groups`` are open). Depth-first, without recursion; cost about E^k / (k − 1)! ... E^k
    steps, which the caller bounds.
    """
    n = p.size
    pi = np.zeros(n)
    stamp = np.zeros(n, dtype=np.int64)
    gcount = np.zeros(n // size, dtype=np.int64)
    cur = np.full(top_k, -1, dtype=np.int64)
    prob = np.zeros(top_k)
    n_open = np.zeros(top_k, dtype=np.int64)
    mass = np.zeros(top_k)
    prob[0] = 1.0
    mass[0] = _gl_mass(p, stamp, gcount, size, 0, topk_groups)
    depth = 0
    while depth >= 0:
        e = cur[depth] + 1
        while e < n and not _gl_allowed(e, p, stamp, gcount, size, n_open[depth], topk_groups):
            e += 1
        if e >= n or mass[depth] <= 0.0:
            depth -= 1
            if depth >= 0:  # undo the choice we descended with
                f = cur[depth]
                stamp[f] = 0
                gcount[f // size] -= 1
            continue
        cur[depth] = e
        q = prob[depth] * p[e] / mass[depth]
        pi[e] += q
        if depth + 1 < top_k:
            stamp[e] = 1
            g = e // size
            gcount[g] += 1
            n_open[depth + 1] = n_open[depth] + (1 if gcount[g] == 1 else 0)
            prob[depth + 1] = q
            depth += 1
            cur[depth] = -1
            mass[depth] = _gl_mass(p, stamp, gcount, size, n_open[depth], topk_groups)
    return pi

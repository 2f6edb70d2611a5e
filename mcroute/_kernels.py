"""Numba kernels: token-to-expert sampling on plain arrays.

May import: numpy, numba. Nothing else: no validation, no xarray, no Python objects, no module
globals read inside a kernel. All kernel helpers live in this one file, because numba's on-disk
cache does not notice changes to functions in other files.

Randomness: every driver takes ``seeds`` (uint32, one per chunk of ``chunk`` trials) and reseeds
numba's per-thread generator (MT19937) at the start of each chunk; a chunk is processed
sequentially by one thread. The numbers therefore depend on the seed and chunk index only, not on
how chunks are spread over threads. Random integers in [0, n) are ``floor(u * n)`` with a 53-bit
uniform ``u``; the bias is below n / 2**53 (< 1e-12 for any expert count here).

Layouts: counts ``(trial, layer, expert)`` int64; assignments ``(trial, layer, token, slot)``
int64; per-layer tables ``(layer, expert)``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# ---------------------------------------------------------------------------------------------
# Small helpers (inlined by numba)
# ---------------------------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _randint(n):
    """Uniform integer in [0, n) from one 53-bit uniform."""
    return np.int64(np.random.random() * n)


@njit(cache=True)
def build_alias(weights):
    """Vose alias tables for each row of ``weights`` (layer, expert), rows normalised inside.

    Returns ``(prob, alias)``: draw column ``j`` uniformly, keep it with probability
    ``prob[j]``, else take ``alias[j]``. Zero-weight columns are never returned.
    """
    n_layers, n = weights.shape
    prob = np.zeros((n_layers, n))
    alias = np.zeros((n_layers, n), dtype=np.int64)
    small = np.empty(n, dtype=np.int64)
    large = np.empty(n, dtype=np.int64)
    scaled = np.empty(n)
    for layer in range(n_layers):
        total = 0.0
        for j in range(n):
            total += weights[layer, j]
        ns = 0
        nl = 0
        for j in range(n):
            scaled[j] = weights[layer, j] * n / total
            alias[layer, j] = j
            if scaled[j] < 1.0:
                small[ns] = j
                ns += 1
            else:
                large[nl] = j
                nl += 1
        while ns > 0 and nl > 0:
            ns -= 1
            s = small[ns]
            g = large[nl - 1]
            prob[layer, s] = scaled[s]
            alias[layer, s] = g
            scaled[g] = (scaled[g] + scaled[s]) - 1.0
            if scaled[g] < 1.0:
                nl -= 1
                small[ns] = g
                ns += 1
        for i in range(nl):
            prob[layer, large[i]] = 1.0
        for i in range(ns):
            # Left over only through rounding: such a column keeps itself if it has weight.
            j = small[i]
            prob[layer, j] = 1.0 if weights[layer, j] > 0 else 0.0
            if weights[layer, j] == 0.0:
                alias[layer, j] = large[0] if nl > 0 else alias[layer, j]
    return prob, alias


@njit(cache=True)
def _is_chosen(e, chosen, m):
    for i in range(m):
        if chosen[i] == e:
            return True
    return False


@njit(cache=True)
def _draw_weighted(prob, alias, cdf, w, chosen, m):
    """One expert by successive sampling without replacement, given ``m`` already chosen.

    Up to two alias draws from the full distribution are tried and rejected if already chosen
    (accepted draws follow exactly the conditional law). If both are rejected, the conditional
    law is sampled directly by inverting the CDF of the remaining mass, skipping the chosen
    experts' intervals: O(m + log E) work, so extreme skew never makes the loop spin.
    """
    n = w.size
    for _ in range(2):
        u = np.random.random() * n
        j = np.int64(u)
        if j >= n:
            j = n - 1
        e = j if (u - j) < prob[j] else alias[j]
        if not _is_chosen(e, chosen, m):
            return e
    # Exact fallback: chosen ids in ascending order (insertion sort of at most k entries).
    order = np.empty(m, dtype=np.int64)
    for i in range(m):
        order[i] = chosen[i]
    for i in range(1, m):
        v = order[i]
        t = i - 1
        while t >= 0 and order[t] > v:
            order[t + 1] = order[t]
            t -= 1
        order[t + 1] = v
    rest = 1.0
    for i in range(m):
        rest -= w[order[i]]
    u = np.random.random() * rest
    for i in range(m):
        c = order[i]
        if u >= cdf[c]:
            u += w[c]
    lo = 0
    hi = n - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cdf[mid] <= u:
            lo = mid
        else:
            hi = mid - 1
    e = lo
    if w[e] > 0.0 and not _is_chosen(e, chosen, m):
        return e
    # Only reachable through floating-point rounding at an interval edge: exact linear scan.
    total = 0.0
    for j in range(n):
        if not _is_chosen(j, chosen, m):
            total += w[j]
    u = np.random.random() * total
    last = -1
    for j in range(n):
        if w[j] > 0.0 and not _is_chosen(j, chosen, m):
            last = j
            u -= w[j]
            if u < 0.0:
                return j
    return last


# ---------------------------------------------------------------------------------------------
# Drivers: parallel over chunks of trials
# ---------------------------------------------------------------------------------------------


@njit(cache=True, parallel=True)
def counts_uniform(seeds, chunk, n_trials, n_layers, n_experts, top_k, batch, record, assign):
    """Per-assignment uniform top-k: partial Fisher–Yates on a per-chunk permutation.

    Positions ``j = 0..k-1`` each take a uniform pick among positions ``j..E-1``, so the first
    ``k`` entries are a uniform k-subset whatever order the array was left in; no reset is
    needed between tokens. If ``record`` is true, expert ids are written to ``assign``.
    """
    counts = np.zeros((n_trials, n_layers, n_experts), dtype=np.int64)
    for c in prange(seeds.size):
        np.random.seed(seeds[c])
        perm = np.arange(n_experts)
        t0 = c * chunk
        t1 = min(t0 + chunk, n_trials)
        for t in range(t0, t1):
            for layer in range(n_layers):
                for b in range(batch):
                    for j in range(top_k):
                        r = j + _randint(n_experts - j)
                        e = perm[r]
                        perm[r] = perm[j]
                        perm[j] = e
                        counts[t, layer, e] += 1
                        if record:
                            assign[t, layer, b, j] = e
    return counts


@njit(cache=True, parallel=True)
def counts_weighted(seeds, chunk, n_trials, weights, top_k, batch, record, assign):
    """Per-assignment weighted top-k (Plackett–Luce) with per-layer ``weights`` (layer, expert)."""
    n_layers, n_experts = weights.shape
    w = np.empty_like(weights)
    cdf = np.empty((n_layers, n_experts + 1))
    for layer in range(n_layers):
        total = weights[layer].sum()
        acc = 0.0
        cdf[layer, 0] = 0.0
        for j in range(n_experts):
            w[layer, j] = weights[layer, j] / total
            acc += w[layer, j]
            cdf[layer, j + 1] = acc
    prob, alias = build_alias(w)
    counts = np.zeros((n_trials, n_layers, n_experts), dtype=np.int64)
    for c in prange(seeds.size):
        np.random.seed(seeds[c])
        chosen = np.empty(top_k, dtype=np.int64)
        t0 = c * chunk
        t1 = min(t0 + chunk, n_trials)
        for t in range(t0, t1):
            for layer in range(n_layers):
                for b in range(batch):
                    for j in range(top_k):
                        e = _draw_weighted(prob[layer], alias[layer], cdf[layer], w[layer], chosen, j)
                        chosen[j] = e
                        counts[t, layer, e] += 1
                        if record:
                            assign[t, layer, b, j] = e
    return counts


@njit(cache=True, parallel=True)
def counts_uniform_countspace(seeds, chunk, n_trials, n_layers, n_experts, top_k, batch):
    """Exact per-expert counts of uniform top-k routing without visiting tokens.

    Experts are visited in order. Tokens are grouped by how many of their k slots are still
    open (r). By exchangeability a token with r open slots and ``rem`` experts left picks the
    current expert with probability r / rem, so the current expert's load is a sum of
    Binomial(n_r, r / rem) draws, and the picked tokens move from group r to r - 1.
    Work is O(E·k) binomial draws per microbatch, independent of the batch size.
    """
    counts = np.zeros((n_trials, n_layers, n_experts), dtype=np.int64)
    for c in prange(seeds.size):
        np.random.seed(seeds[c])
        groups = np.zeros(top_k + 1, dtype=np.int64)
        t0 = c * chunk
        t1 = min(t0 + chunk, n_trials)
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
                            if r >= rem:
                                x = nr
                            else:
                                x = np.random.binomial(nr, r / rem)
                            groups[r] -= x
                            groups[r - 1] += x
                            load += x
                    counts[t, layer, e] = load
    return counts


@njit(cache=True, parallel=True)
def counts_multinomial(seeds, chunk, n_trials, weights, batch):
    """Exact counts of top-1 routing with per-layer weights: a multinomial drawn as sequential
    conditional binomials over experts. O(E) draws per microbatch, independent of the batch."""
    n_layers, n_experts = weights.shape
    counts = np.zeros((n_trials, n_layers, n_experts), dtype=np.int64)
    for c in prange(seeds.size):
        np.random.seed(seeds[c])
        t0 = c * chunk
        t1 = min(t0 + chunk, n_trials)
        for t in range(t0, t1):
            for layer in range(n_layers):
                left = batch
                mass = 0.0
                for e in range(n_experts):
                    mass += weights[layer, e]
                for e in range(n_experts):
                    if left == 0:
                        break
                    we = weights[layer, e]
                    if we <= 0.0:
                        continue
                    p = we / mass
                    if p >= 1.0:
                        x = left
                    else:
                        x = np.random.binomial(left, p)
                    counts[t, layer, e] = x
                    left -= x
                    mass -= we
                if left > 0:
                    # Rounding left a few tokens after the last positive weight: give them to it.
                    for e in range(n_experts - 1, -1, -1):
                        if weights[layer, e] > 0.0:
                            counts[t, layer, e] += left
                            break
    return counts


@njit(cache=True, parallel=True)
def uniform_floor(seeds, chunk, n_trials, n_draws):
    """Benchmark floor: ``n_draws`` uniforms per trial in a compiled loop, summed."""
    out = np.zeros(n_trials)
    for c in prange(seeds.size):
        np.random.seed(seeds[c])
        t0 = c * chunk
        t1 = min(t0 + chunk, n_trials)
        for t in range(t0, t1):
            acc = 0.0
            for _ in range(n_draws):
                acc += np.random.random()
            out[t] = acc
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
def pl_inclusion(w, top_k, t_nodes, t_weights):
    """Inclusion probabilities of weighted top-k sampling without replacement, by quadrature.

    Successive sampling in proportion to ``w`` (normalised rates) equals an exponential race:
    expert e finishes at T_e ~ Exp(w_e) and the k first finishers are chosen. Hence
    ``pi_e = ∫ w_e exp(-w_e t) P(N_t^(-e) <= k - 1) dt`` where N_t^(-e) counts the other experts
    finished by t, a Poisson-binomial variable with success probabilities 1 - exp(-w_j t). Its
    leave-one-out law (truncated at k - 1) comes from prefix and suffix convolutions, O(E k^2)
    per node. ``t_nodes`` / ``t_weights`` are the quadrature nodes in t and their weights (the
    Jacobian included).
    """
    n = w.size
    pi = np.zeros(n)
    pre = np.zeros((n + 1, top_k))
    suf = np.zeros((n + 1, top_k))
    for i in range(t_nodes.size):
        t = t_nodes[i]
        pre[0, :] = 0.0
        pre[0, 0] = 1.0
        for j in range(n):
            p = 1.0 - np.exp(-w[j] * t)
            pre[j + 1, 0] = pre[j, 0] * (1.0 - p)
            for c in range(1, top_k):
                pre[j + 1, c] = pre[j, c] * (1.0 - p) + pre[j, c - 1] * p
        suf[n, :] = 0.0
        suf[n, 0] = 1.0
        for j in range(n - 1, -1, -1):
            p = 1.0 - np.exp(-w[j] * t)
            suf[j, 0] = suf[j + 1, 0] * (1.0 - p)
            for c in range(1, top_k):
                suf[j, c] = suf[j + 1, c] * (1.0 - p) + suf[j + 1, c - 1] * p
        for e in range(n):
            if w[e] <= 0.0:
                continue
            le = 0.0
            for a in range(top_k):
                pa = pre[e, a]
                if pa == 0.0:
                    continue
                sb = 0.0
                for b in range(top_k - a):
                    sb += suf[e + 1, b]
                le += pa * sb
            pi[e] += t_weights[i] * w[e] * np.exp(-w[e] * t) * le
    return pi

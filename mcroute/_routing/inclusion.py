"""Inclusion probabilities of routing distributions: quadrature and Monte Carlo, cached by value.

May import: numpy, ``mcroute._kernels``, ``mcroute._base``.

* :func:`pl_inclusion_row`: Plackett–Luce (successive sampling) inclusion probabilities of one
  popularity row, by quadrature of the exponential-race integral, from log-weights.
* :func:`pl_inclusion_cached`: the same through a value cache on the sorted row.
* :func:`mc_inclusion`: Monte Carlo inclusion probabilities with the routing's own sampler
  (``Correlated``, large ``GroupLimited``), and :func:`value_cached_inclusion` its cache.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from mcroute import _kernels as K
from mcroute._base.rng import chunk_seeds

__all__ = ["pl_inclusion_row", "pl_inclusion_cached", "exchangeable", "value_cached_inclusion",
           "mc_inclusion", "MC_INCLUSION_TOKENS", "MC_INCLUSION_BATCH", "MC_INCLUSION_SEED"]

_GL_X, _GL_W = np.polynomial.legendre.leggauss(8)

#: Window of one expert's time scale in the inclusion quadrature: expert e's share of the
#: race integral is negligible outside w_e·t in [1e-16, 45] (below: at most w_e·t = 1e-16 in
#: all; above: exp(-45) = 3e-20), so only y = log t within these bounds of some -log w_e is
#: integrated.
_WINDOW_LO = float(np.log(1e-16))
_WINDOW_HI = float(np.log(45.0))


def pl_inclusion_row(w: np.ndarray, k: int, panel: float, log_w=None) -> np.ndarray:
    """Plackett–Luce inclusion probabilities of one popularity row, by quadrature in y = log t.

    ``log_w`` (default ``log(w)``) are the log-weights up to a constant; only they are used, so
    weights whose ratios underflow in linear form are handled. Nodes are placed only where some
    expert's integrand is not negligible (the union of the windows ``_WINDOW_LO <= log w_e + y
    <= _WINDOW_HI``), up to the time by which k experts other than any given one have finished
    with probability 1 - k·exp(-40 k) (y_hi = log(40 k / w_(k+1)), w_(k+1) the (k+1)-th
    largest weight); before the first window the integral is taken in closed form. Each
    merged window is anchored at its heaviest expert (see ``_kernels.pl_inclusion``), so the
    nodes stay accurate whatever the spread of the weights, and cut into equal panels of width
    at most ``panel``. The skipped gaps add at most 2e-16 to any expert.
    """
    if log_w is None:
        with np.errstate(divide="ignore"):
            log_w = np.log(np.asarray(w, dtype=float))
    lw = np.array(log_w, dtype=float)
    pos = np.isfinite(lw)
    n_pos = int(pos.sum())
    if n_pos <= k:
        return pos.astype(float)
    lw -= lw[pos].max()
    srt = np.sort(lw[pos])[::-1]
    s_end = np.log(40.0 * k) - srt[k]  # y_hi
    # experts whose window starts before y_hi, grouped where windows overlap
    srt = srt[_WINDOW_LO - srt < s_end]
    breaks = np.nonzero(srt[:-1] - srt[1:] > _WINDOW_HI - _WINDOW_LO)[0] + 1
    anchors, nodes, weights = [], [], []
    for g in np.split(np.arange(srt.size), breaks):
        anchor = srt[g[0]]
        lo = _WINDOW_LO
        hi = min(anchor - srt[g[-1]] + _WINDOW_HI, anchor + s_end)
        n_panels = max(1, int(np.ceil((hi - lo) / panel)))
        width = (hi - lo) / n_panels
        mid = lo + width * (np.arange(n_panels) + 0.5)
        nodes.append((mid[:, None] + 0.5 * width * _GL_X[None, :]).ravel())
        weights.append(np.tile(0.5 * width * _GL_W, n_panels))
        anchors.append(np.full(n_panels * _GL_X.size, anchor))
    pi = K.pl_inclusion(lw, k, np.concatenate(anchors), np.concatenate(nodes),
                        np.concatenate(weights))
    # everything before the first window (y < _WINDOW_LO - max log w), in closed form
    pi += -np.expm1(-np.exp(lw + _WINDOW_LO))
    return pi


@functools.lru_cache(maxsize=64)
def _pl_inclusion_sorted(sorted_log_w: bytes, k: int, panel: float) -> np.ndarray:
    """Inclusion of one popularity row given in descending order, cached by value.

    Rows that are permutations of one another (the layers of Zipf and LogNormal, repeated
    calls with equal routings) share one quadrature: the inclusion of a permuted row is the
    permuted inclusion.
    """
    pi = pl_inclusion_row(None, k, panel, np.frombuffer(sorted_log_w, dtype=float))
    pi.setflags(write=False)
    return pi


def pl_inclusion_cached(log_w: np.ndarray, k: int, panel: float) -> np.ndarray:
    """:func:`pl_inclusion_row` of one row, through the value cache on its sorted form."""
    order = np.argsort(-log_w, kind="stable")
    pi = np.empty(log_w.size)
    pi[order] = _pl_inclusion_sorted(np.ascontiguousarray(log_w[order]).tobytes(), k, panel)
    return pi


def exchangeable(log_w) -> bool:
    """Whether every layer's base weights are equal (uniform base, or no weights at all).

    Then ``Correlated`` (an i.i.d. shift per expert) and ``GroupLimited`` (equal contiguous
    groups) treat all experts alike: their law is invariant under a group of expert
    permutations that reaches every expert, so each expert's inclusion is exactly k / E.
    """
    if log_w is None:
        return True
    lw = np.asarray(log_w)
    return bool(np.all(np.isfinite(lw)) and np.all(lw == lw[:, :1]))


#: Inclusion probabilities estimated by Monte Carlo (``Correlated``, large ``GroupLimited``),
#: keyed by value: (class, repr, n_layers, SHA-256 of the base log-weights). Bounded in size.
_MC_INCLUSION_CACHE: dict = {}
_MC_INCLUSION_CACHE_SIZE = 16


def value_cached_inclusion(routing, n_layers: int, compute):
    """``compute()`` -> (pi, err) for ``routing`` at ``n_layers``, cached by value."""
    lw = routing._log_weights(n_layers)
    digest = hashlib.sha256(b"" if lw is None else np.ascontiguousarray(lw).tobytes())
    key = (type(routing).__name__, repr(routing), n_layers, digest.hexdigest())
    hit = _MC_INCLUSION_CACHE.get(key)
    if hit is None:
        hit = compute()
        hit[0].setflags(write=False)
        if len(_MC_INCLUSION_CACHE) >= _MC_INCLUSION_CACHE_SIZE:
            _MC_INCLUSION_CACHE.pop(next(iter(_MC_INCLUSION_CACHE)))
        _MC_INCLUSION_CACHE[key] = hit
    return hit


#: Tokens per layer (in :data:`MC_INCLUSION_BATCH`-token microbatches, fixed seed
#: :data:`MC_INCLUSION_SEED`) behind Monte Carlo inclusion probabilities: the standard error of
#: each π_e is at most 0.5/√N ≈ 1e-3; the error returned with ``return_error=True`` is four
#: times the largest estimated standard error.
MC_INCLUSION_TOKENS = 2 ** 18
MC_INCLUSION_BATCH = 256
MC_INCLUSION_SEED = 20261130


def mc_inclusion(routing, n_layers, batch=MC_INCLUSION_BATCH):
    """Monte Carlo inclusion probabilities (layer, expert) and 4 × their largest standard error.

    Draws :data:`MC_INCLUSION_TOKENS` tokens per layer with the routing's own sampler, in
    microbatches of :data:`MC_INCLUSION_BATCH` (seed :data:`MC_INCLUSION_SEED`); the standard
    error comes from the spread between microbatches, so it is right also when the tokens of
    a microbatch are correlated.
    """
    n_tr = MC_INCLUSION_TOKENS // batch
    seeds = chunk_seeds(MC_INCLUSION_SEED, n_tr, ())
    c = routing._draw_counts(batch, n_tr, n_layers, seeds, "assignment")
    share = c / float(batch)
    pi = share.mean(axis=0)
    se = share.std(axis=0, ddof=1) / np.sqrt(n_tr)
    return pi, 4.0 * float(se.max())

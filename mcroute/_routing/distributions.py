"""Routing distributions: which experts the tokens of a decode microbatch are sent to.

May import: numpy, scipy, ``_kernels``, ``_validate``, ``_rng``.

A routing distribution describes one token's choice at each MoE layer: ``top_k`` *distinct*
experts out of ``n_experts``. Tokens are independent. Weighted distributions choose by successive
sampling without replacement in proportion to per-expert popularity (Plackett–Luce, the same law
as Gumbel-top-k over log-weights), which is how a softmax router with noise behaves.

Which experts are hot differs per layer: Zipf and LogNormal assign popularity by rank and then
place the ranks on expert ids with a fixed permutation per layer, drawn from
``SeedSequence(layer_seed, spawn_key=(layer,))``. :meth:`Routing.permutation` reports it, and
``simulate`` records it. Permutations change which expert is hot, never the statistics that do
not look at expert ids.

Subclasses implement ``_weights(n_layers)`` and, for sampling, ``_draw_counts`` (and optionally
``_draw_assignments``); anything with those methods (e.g. :class:`mcroute.Trace`) works wherever a
routing is accepted.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math

import numpy as np
from scipy import special

from mcroute import _kernels as K
from mcroute._base.rng import CHUNK_TRIALS, chunk_seeds
from mcroute._base.validate import MAX_EXPERTS, McrouteError, check_int, check_real

__all__ = ["Routing", "Uniform", "Zipf", "LogNormal", "Popularity", "Correlated", "GroupLimited"]


#: Uniform top-k (k >= 2) draws one index into the table of all k-subsets per token when there
#: are at most this many subsets and no more than tokens per microbatch, so that folding the
#: per-subset tallies into per-expert loads costs at most one addition per assignment.
SUBSET_TABLE_MAX = 4096


def uniform_subset_table(n_experts: int, top_k: int, batch_size: int) -> np.ndarray:
    """The uniform sampler's subset table, or an empty (0, k) array when it should not use one.

    The table lists all k-subsets of the experts in lexicographic order, int64 (C(E, k), k).
    """
    n_sub = math.comb(n_experts, top_k)
    if top_k < 2 or n_sub > min(batch_size, SUBSET_TABLE_MAX):
        return np.empty((0, top_k), dtype=np.int64)
    return _all_subsets(n_experts, top_k)


@functools.lru_cache(maxsize=32)
def _all_subsets(n_experts: int, top_k: int) -> np.ndarray:
    """All k-subsets in lexicographic order, built once per (E, k) (read-only)."""
    table = np.array(list(itertools.combinations(range(n_experts), top_k)), dtype=np.int64)
    table.setflags(write=False)
    return table


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=float, copy=True)
    a.setflags(write=False)
    return a


@functools.lru_cache(maxsize=64)
def _pl_inclusion_sorted(sorted_log_w: bytes, k: int, panel: float) -> np.ndarray:
    """Inclusion of one popularity row given in descending order, cached by value.

    Rows that are permutations of one another (the layers of Zipf and LogNormal, repeated
    calls with equal routings) share one quadrature: the inclusion of a permuted row is the
    permuted inclusion.
    """
    pi = _pl_inclusion_row(None, k, panel, np.frombuffer(sorted_log_w, dtype=float))
    pi.setflags(write=False)
    return pi


def _pl_inclusion_cached(log_w: np.ndarray, k: int, panel: float) -> np.ndarray:
    """:func:`_pl_inclusion_row` of one row, through the value cache on its sorted form."""
    order = np.argsort(-log_w, kind="stable")
    pi = np.empty(log_w.size)
    pi[order] = _pl_inclusion_sorted(np.ascontiguousarray(log_w[order]).tobytes(), k, panel)
    return pi


def _exchangeable(log_w) -> bool:
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


def _value_cached_inclusion(routing, n_layers: int, compute):
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


class Routing:
    """Base class of routing distributions (immutable once built).

    Attributes
    ----------
    n_experts : int
        Routed experts per MoE layer, E.
    top_k : int
        Distinct experts chosen per token, k.
    """

    __slots__ = ("_n_experts", "_top_k", "_frozen")

    #: Name used in results and the CLI.
    kind = "routing"

    def __init__(self, n_experts, top_k):
        n_experts = check_int("n_experts", n_experts, minimum=1, maximum=MAX_EXPERTS)
        object.__setattr__(self, "_n_experts", n_experts)
        object.__setattr__(
            self, "_top_k", check_int("top_k", top_k, minimum=1, maximum=self._n_experts)
        )

    def _freeze(self):
        object.__setattr__(self, "_frozen", True)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    @property
    def n_experts(self) -> int:
        """Routed experts per layer, E."""
        return self._n_experts

    @property
    def top_k(self) -> int:
        """Experts chosen per token, k."""
        return self._top_k

    # -- to be provided by subclasses ---------------------------------------------------------
    def _weights(self, n_layers: int) -> np.ndarray | None:
        """Popularity (layer, expert), rows summing to 1; None for uniform."""
        raise NotImplementedError

    def _log_weights(self, n_layers: int) -> np.ndarray | None:
        """The same popularity in log space, up to a constant per layer (-inf for weight 0).

        The samplers and the inclusion probabilities use it for the ratios between experts
        whose normalised weights underflow. By default the log of :meth:`_weights`; the
        distributions of this module override it with the log-weights computed directly.
        """
        w = self._weights(n_layers)
        if w is None:
            return None
        with np.errstate(divide="ignore"):
            return np.log(w)

    def params(self) -> dict:
        """Parameters that define the distribution (for provenance and repr)."""
        return {"n_experts": self.n_experts, "top_k": self.top_k}

    # -- shared behaviour ---------------------------------------------------------------------
    def describe(self) -> dict:
        """A JSON-able description: kind and parameters."""
        return {"kind": self.kind, **self.params()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.describe() == other.describe()

    def __hash__(self):
        return hash(repr(self))

    def popularity(self, n_layers: int = 1) -> np.ndarray:
        """Per-layer expert popularity p (layer, expert), rows summing to 1.

        For top-1 routing this is the probability that a token picks each expert; for top-k it
        is the Plackett–Luce weight of the first pick.
        """
        n_layers = check_int("n_layers", n_layers, minimum=1)
        w = self._weights(n_layers)
        if w is None:
            return np.full((n_layers, self.n_experts), 1.0 / self.n_experts)
        return w

    def permutation(self, n_layers: int = 1) -> np.ndarray:
        """Expert id holding each popularity rank, int64 (layer, rank); rank 0 is the hottest.

        Ranked by log-weight, so experts whose normalised popularity underflows to 0 still
        keep their order; ties keep expert-id order.
        """
        n_layers = check_int("n_layers", n_layers, minimum=1)
        lw = self._log_weights(n_layers)
        p = self.popularity(n_layers) if lw is None else lw
        return np.argsort(-p, axis=1, kind="stable").astype(np.int64)

    def inclusion_probabilities(self, n_layers: int = 1, *, return_error: bool = False):
        """Probability pi_e that one token's k experts include expert e, (layer, expert).

        Exact for uniform routing (k / E) and for k = 1 (the popularity). For weighted k > 1
        it is computed by quadrature of the exponential-race integral (see
        ``_kernels.pl_inclusion`` and ``_pl_inclusion_row``): composite 8-point Gauss–Legendre
        panels of width 0.5 in log t, from log-weights, so any skew is handled (at the limit of
        infinite skew the k heaviest experts get 1 and the others 0); the error estimate
        returned with ``return_error=True`` is the largest absolute change against panels of
        width 1.0 (typically < 1e-12). Rows sum to k.
        """
        n_layers = check_int("n_layers", n_layers, minimum=1)
        w = self._weights(n_layers)
        k = self.top_k
        if w is None:
            pi = np.full((n_layers, self.n_experts), k / self.n_experts)
            return (pi, 0.0) if return_error else pi
        if k == 1:
            return (w.copy(), 0.0) if return_error else w.copy()
        lw = self._log_weights(n_layers)
        pi = np.empty_like(w)
        err = 0.0
        for layer in range(n_layers):
            fine = _pl_inclusion_cached(lw[layer], k, 0.5)
            if return_error:
                coarse = _pl_inclusion_cached(lw[layer], k, 1.0)
                err = max(err, float(np.max(np.abs(fine - coarse))))
            pi[layer] = fine
        return (pi, err) if return_error else pi

    def _draw_counts(self, batch_size, n_trials, n_layers, seeds, method):
        """Counts (trial, layer, expert) for ``n_trials`` trials from chunk ``seeds``."""
        w = self._weights(n_layers)
        k = self.top_k
        if method == "counts":
            if w is None:
                return K.counts_uniform_countspace(
                    seeds, CHUNK_TRIALS, K.new_counts(n_trials, n_layers, self.n_experts), k,
                    batch_size,
                )
            if k == 1:
                return K.counts_multinomial(seeds, CHUNK_TRIALS,
                                            K.new_counts(n_trials, n_layers, self.n_experts), w,
                                            batch_size)
            raise McrouteError(
                "method='counts' is exact only for uniform routing or top_k=1; "
                f"use method='assignment' for {self!r}"
            )
        return self._draw_assignments_or_counts(batch_size, n_trials, n_layers, seeds, False)[0]

    def _draw_assignments(self, batch_size, n_trials, n_layers, seeds):
        return self._draw_assignments_or_counts(batch_size, n_trials, n_layers, seeds, True)[1]

    def _draw_assignments_or_counts(self, batch_size, n_trials, n_layers, seeds, record):
        w = self._weights(n_layers)
        k = self.top_k
        shape = (n_trials, n_layers, batch_size, k) if record else (1, 1, 1, 1)
        assign = np.zeros(shape, dtype=np.int64)
        counts = K.new_counts(n_trials, n_layers, self.n_experts)
        if w is None:
            K.counts_uniform(
                seeds, CHUNK_TRIALS, counts, k, batch_size,
                uniform_subset_table(self.n_experts, k, batch_size), record, assign,
            )
        else:
            K.counts_weighted(seeds, CHUNK_TRIALS, counts,
                              K.weighted_tables(w, k, self._log_weights(n_layers)), k,
                              batch_size, record, assign)
        return counts, assign

    def _countspace_exact(self) -> bool:
        """Whether per-expert counts can be drawn directly and exactly."""
        return self.top_k == 1 or self.kind == "uniform"


_GL_X, _GL_W = np.polynomial.legendre.leggauss(8)

#: Zipf's alpha and LogNormal's sigma enter the log-weights as at most this much: beyond it
#: the law in double precision is already the deterministic order of the ranks (every weight
#: ratio between two ranks underflows), and the log-weights stay finite.
_SKEW_CAP = 1e300

#: Window of one expert's time scale in the inclusion quadrature: expert e's share of the
#: race integral is negligible outside w_e·t in [1e-16, 45] (below: at most w_e·t = 1e-16 in
#: all; above: exp(-45) = 3e-20), so only y = log t within these bounds of some -log w_e is
#: integrated.
_WINDOW_LO = float(np.log(1e-16))
_WINDOW_HI = float(np.log(45.0))


def _pl_inclusion_row(w: np.ndarray, k: int, panel: float, log_w=None) -> np.ndarray:
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


class Uniform(Routing):
    """Every token picks ``top_k`` distinct experts uniformly at random.

    One expert's load in a microbatch of B tokens is exactly Binomial(B, k / E).

    Examples
    --------
    >>> import mcroute as mr
    >>> mr.Uniform(256, 8)
    Uniform(n_experts=256, top_k=8)
    >>> float(mr.expected_active_experts(mr.Uniform(256, 8), 64))  # doctest: +ELLIPSIS
    222.4...
    """

    __slots__ = ()
    kind = "uniform"

    def __init__(self, n_experts, top_k):
        super().__init__(n_experts, top_k)
        self._freeze()

    def _weights(self, n_layers):
        return None


class _Ranked(Routing):
    """Popularity given by rank, placed on expert ids by a seeded permutation per layer."""

    __slots__ = ("_layer_seed", "_permute")

    def __init__(self, n_experts, top_k, *, layer_seed=0, permute=True):
        super().__init__(n_experts, top_k)
        object.__setattr__(self, "_layer_seed", check_int("layer_seed", layer_seed, minimum=0))
        if not isinstance(permute, (bool, np.bool_)):
            raise McrouteError(f"permute must be True or False, got {permute!r}")
        object.__setattr__(self, "_permute", bool(permute))

    def _rank_weights(self) -> np.ndarray:
        """Weight of each rank (rank 0 the hottest), largest 1; may underflow to 0."""
        raise NotImplementedError

    def _rank_log_weights(self) -> np.ndarray:
        """Log-weight of each rank, largest 0, always finite."""
        raise NotImplementedError

    def _place(self, r, n_layers):
        out = np.empty((n_layers, self.n_experts))
        for layer in range(n_layers):
            if self._permute:
                ss = np.random.SeedSequence(self._layer_seed, spawn_key=(layer,))
                perm = np.random.default_rng(ss).permutation(self.n_experts)
            else:
                perm = np.arange(self.n_experts)
            out[layer, perm] = r
        return out

    def _weights(self, n_layers):
        r = self._rank_weights()
        return self._place(r / r.sum(), n_layers)

    def _log_weights(self, n_layers):
        return self._place(self._rank_log_weights(), n_layers)

    def params(self):
        return {**super().params(), "layer_seed": self._layer_seed, "permute": self._permute}


class Zipf(_Ranked):
    """Popularity proportional to ``rank ** -alpha`` (rank 1 is the hottest expert).

    With ``top_k = 1`` one token's expert rank follows ``scipy.stats.zipfian(alpha, n_experts)``.

    Parameters
    ----------
    n_experts, top_k : int
        E and k.
    alpha : float
        Skew exponent, >= 0 (0 is uniform). Any finite value: weights whose normalised form
        underflows keep their ratios in log space (-alpha·log rank), so every token still gets
        k distinct experts by the same law; as alpha grows the k hottest ranks are chosen with
        probability 1. Values above 1e300 act as 1e300 (every rank ratio underflows there).
    layer_seed : int
        Seed of the per-layer permutation of ranks onto expert ids.
    permute : bool
        If False every layer has expert 0 hottest.

    Examples
    --------
    >>> import mcroute as mr
    >>> z = mr.Zipf(8, 2, alpha=1.2)
    >>> z
    Zipf(n_experts=8, top_k=2, alpha=1.2, layer_seed=0, permute=True)
    >>> z.inclusion_probabilities().sum().round(12)
    np.float64(2.0)
    """

    __slots__ = ("_alpha",)
    kind = "zipf"

    def __init__(self, n_experts, top_k, alpha, *, layer_seed=0, permute=True):
        super().__init__(n_experts, top_k, layer_seed=layer_seed, permute=permute)
        object.__setattr__(self, "_alpha", check_real("alpha", alpha, minimum=0.0))
        self._freeze()

    @property
    def alpha(self) -> float:
        """Zipf exponent."""
        return self._alpha

    def _rank_weights(self):
        return np.arange(1, self.n_experts + 1, dtype=float) ** -self._alpha

    def _rank_log_weights(self):
        # Above _SKEW_CAP every ratio between two ranks (at most (1 - 1/E) ** alpha)
        # underflows to 0 already, so capping keeps the law and -alpha * log(rank) finite.
        return -min(self._alpha, _SKEW_CAP) * np.log(np.arange(1, self.n_experts + 1, dtype=float))

    def params(self):
        p = super().params()
        return {"n_experts": p["n_experts"], "top_k": p["top_k"], "alpha": self._alpha,
                "layer_seed": p["layer_seed"], "permute": p["permute"]}


class LogNormal(_Ranked):
    """Log-normal popularity: ``w_r = exp(sigma * z_r)`` with z_r the standard-normal quantiles.

    The E popularity values are the deterministic quantiles ``z_r = Φ⁻¹((E - r + 0.5) / E)`` of a
    log-normal law with shape ``sigma`` (a "typical" draw, so results do not depend on a random
    popularity sample); ranks are then placed on expert ids by the per-layer permutation.
    Any finite ``sigma`` >= 0 works (log-weights ``sigma * (z_r - z_max)``; above 1e300 it acts
    as 1e300, where every rank ratio underflows).

    Examples
    --------
    >>> import mcroute as mr
    >>> mr.LogNormal(64, 8, sigma=1.0)
    LogNormal(n_experts=64, top_k=8, sigma=1.0, layer_seed=0, permute=True)
    """

    __slots__ = ("_sigma",)
    kind = "lognormal"

    def __init__(self, n_experts, top_k, sigma, *, layer_seed=0, permute=True):
        super().__init__(n_experts, top_k, layer_seed=layer_seed, permute=permute)
        object.__setattr__(self, "_sigma", check_real("sigma", sigma, minimum=0.0))
        self._freeze()

    @property
    def sigma(self) -> float:
        """Log-normal shape."""
        return self._sigma

    def _z(self):
        e = self.n_experts
        z = special.ndtri((e - np.arange(1, e + 1) + 0.5) / e)
        return z - z.max()

    def _rank_weights(self):
        return np.exp(self._rank_log_weights())  # sigma capped: no overflow at sigma = 1e308

    def _rank_log_weights(self):
        # Neighbouring quantiles differ by more than 1 / E, so above _SKEW_CAP every ratio
        # between two ranks underflows to 0 already; capping keeps sigma * z finite.
        return min(self._sigma, _SKEW_CAP) * self._z()

    def params(self):
        p = super().params()
        return {"n_experts": p["n_experts"], "top_k": p["top_k"], "sigma": self._sigma,
                "layer_seed": p["layer_seed"], "permute": p["permute"]}


class Popularity(Routing):
    """Explicit per-expert weights, shape (expert,) for every layer or (layer, expert).

    Weights are used as given on expert ids (no permutation). Per-layer weights require
    ``n_layers`` equal to their first dimension when sampling. Each layer is divided by its
    largest weight before normalising (so weights up to the largest float work) and its log
    keeps ratios that underflow (weights down to the smallest subnormal). Weights must be
    finite and non-negative, with at least ``top_k`` positive entries in every layer
    (``McrouteError`` otherwise).

    Examples
    --------
    >>> import mcroute as mr
    >>> mr.Popularity([4, 2, 1, 1], top_k=2)
    Popularity(weights=[0.5, 0.25, 0.125, 0.125], top_k=2)
    """

    __slots__ = ("_w", "_lw")
    kind = "popularity"

    def __init__(self, weights, top_k=1):
        try:
            w = np.array(weights, dtype=float)
        except (TypeError, ValueError, OverflowError) as exc:
            raise McrouteError(f"weights must be an array of non-negative numbers: {exc}") from None
        if w.ndim not in (1, 2) or w.shape[-1] < 1 or (w.ndim == 2 and w.shape[0] < 1):
            raise McrouteError(
                f"weights must have shape (expert,) or (layer, expert), got shape {w.shape}"
            )
        if np.any(np.isnan(w)) or np.any(np.isinf(w)):
            raise McrouteError("weights must be finite (no NaN or inf)")
        if np.any(w < 0):
            raise McrouteError("weights must be non-negative")
        w2 = np.atleast_2d(w)
        nz = (w2 > 0).sum(axis=1)
        super().__init__(w.shape[-1], top_k)
        if np.any(nz == 0):
            raise McrouteError("weights must not be all zero (in every layer)")
        if np.any(nz < self.top_k):
            raise McrouteError(
                f"weights need at least top_k={self.top_k} positive entries in every layer "
                f"(each token takes top_k distinct experts of positive weight), got "
                f"{int(nz.min())}"
            )
        # Scaled by each layer's largest weight first, so the sum cannot overflow (weights
        # near 1.8e308); the log-weights keep ratios that underflow in linear form.
        top = w2.max(axis=1, keepdims=True)
        scaled = w2 / top
        with np.errstate(divide="ignore"):
            lw = np.log(w2) - np.log(top)
        object.__setattr__(self, "_w", _readonly(scaled / scaled.sum(axis=1, keepdims=True)))
        object.__setattr__(self, "_lw", _readonly(lw))
        self._freeze()

    @property
    def weights(self) -> np.ndarray:
        """Normalised weights (layer, expert); read-only."""
        return self._w

    @property
    def n_weight_layers(self) -> int:
        """Layers given explicitly (1 means: the same weights in every layer)."""
        return self._w.shape[0]

    def _weights(self, n_layers):
        if self._w.shape[0] == 1:
            return np.repeat(self._w, n_layers, axis=0)
        if n_layers != self._w.shape[0]:
            raise McrouteError(
                f"n_layers must equal the {self._w.shape[0]} layers of the Popularity weights, "
                f"got {n_layers}"
            )
        return self._w.copy()

    def _log_weights(self, n_layers):
        if type(self)._weights is not Popularity._weights:
            return super()._log_weights(n_layers)  # a subclass that picks its own layers
        self._weights(n_layers)  # the same check of n_layers
        if self._lw.shape[0] == 1:
            return np.repeat(self._lw, n_layers, axis=0)
        return self._lw.copy()

    def params(self):
        w = self._w[0] if self._w.shape[0] == 1 else self._w
        return {"weights": np.round(w * 1.0, 12).tolist(), "top_k": self.top_k}

    def __repr__(self):
        w = self._w
        if w.shape[0] == 1 and w.shape[1] <= 16:
            shown = "[" + ", ".join(f"{x:.4g}" for x in w[0]) + "]"
        else:
            shown = f"<array {w.shape}>"
        return f"Popularity(weights={shown}, top_k={self.top_k})"



# ---------------------------------------------------------------------------------------------
# Correlated microbatches (shared logit noise) and group-limited routing
# ---------------------------------------------------------------------------------------------

#: Largest logit-noise standard deviation accepted by :class:`Correlated` (at sigma = 100 a
#: microbatch already sends every token to the same k experts with probability ~1).
MAX_SIGMA = 100.0

#: :class:`GroupLimited` computes inclusion probabilities exactly, by enumerating every ordered
#: choice sequence, when there are at most this many (E·(E−1)···(E−k+1)); otherwise by Monte
#: Carlo (see :data:`MC_INCLUSION_TOKENS`).
GROUP_ENUM_MAX = 20_000_000

#: Tokens per layer (in :data:`MC_INCLUSION_BATCH`-token microbatches, fixed seed
#: :data:`MC_INCLUSION_SEED`) behind Monte Carlo inclusion probabilities: the standard error of
#: each π_e is at most 0.5/√N ≈ 1e-3; the error returned with ``return_error=True`` is four
#: times the largest estimated standard error.
MC_INCLUSION_TOKENS = 2 ** 18
MC_INCLUSION_BATCH = 256
MC_INCLUSION_SEED = 20261130


def _race_log_weights(base, n_layers):
    """Log-weights (layer, expert) of the centre law of Correlated and GroupLimited.

    A trace (anything with ``pl_weights``) contributes its calibrated marginal Plackett–Luce
    weights; uniform routing zeros; other routings their ``_log_weights``.
    """
    if hasattr(base, "pl_weights"):
        w = np.asarray(base.pl_weights())[base._layer_index(n_layers)]
        with np.errstate(divide="ignore"):
            return np.ascontiguousarray(np.log(w))
    lw = base._log_weights(n_layers)
    if lw is None:
        return np.zeros((n_layers, base.n_experts))
    return np.ascontiguousarray(np.asarray(lw, dtype=float))


def _mc_inclusion(routing, n_layers, batch=MC_INCLUSION_BATCH):
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


def _plain_base(base, name):
    if not isinstance(base, Routing):
        raise McrouteError(f"{name}: base must be a routing distribution, got "
                           f"{type(base).__name__}")
    if base.kind in ("overdispersed", "group_limited", "correlated"):
        raise McrouteError(
            f"{name}: base must be an independent-token routing (Uniform, Zipf, LogNormal, "
            f"Popularity, PopularityTrace, Trace), got {base.kind!r}"
            + ("; write GroupLimited(Correlated(base, sigma), ...) for both"
               if name == "Correlated" and base.kind == "group_limited" else ""))
    if hasattr(base, "pl_weights") and getattr(base, "mode", "marginal") != "marginal":
        base = base.with_mode("marginal")
    return base


class Correlated(Routing):
    """Correlated microbatches: the router logits of one microbatch share a random shift.

    The law (per microbatch and MoE layer): draw ``z_e`` independent standard normals, one per
    expert, shared by every token of the microbatch; each token then picks its k experts by
    Gumbel-top-k on the shifted log-weights ``log w_e + sigma·z_e`` (successive sampling in
    proportion to ``w_e·exp(sigma·z_e)``), independently of the other tokens given z. Layers
    draw independent z. ``sigma`` is the standard deviation, in logit units, of the component
    of the router logits that the requests of a microbatch share (same task, same domain, same
    position in similar answers); ``sigma = 0`` is the base routing itself (the same numbers
    for the same seed).

    Why this law (``docs/traces.md``, "Correlated microbatches"): on the Qwen1.5-MoE decode
    logs the per-expert extra load variance grows with the expert's popularity, as a shared
    multiplicative (logit) shift gives, whereas the Dirichlet-process / Pólya-urn law of
    :class:`~mcroute.Overdispersed` (per-expert Beta laws) puts the same relative variance on
    cold experts, switches them off too often and so over-corrects the distinct experts.

    Parameters
    ----------
    base : Routing
        The centre law: ``Uniform``, ``Zipf``, ``LogNormal``, ``Popularity``,
        ``PopularityTrace`` or a ``Trace`` (its calibrated marginal law, i.e.
        ``trace.with_mode("marginal")``, is used).
    sigma : float
        Logit-noise standard deviation, 0 <= sigma <= 100.

    Notes
    -----
    ``popularity()`` is the centre law's; the mean inclusion probabilities over microbatches
    (``inclusion_probabilities``) differ from the base's for sigma > 0 (the shift flattens a
    skewed law slightly) and are computed by Monte Carlo with a stated error. The cost of a
    microbatch is O(E) per layer for the shift plus O(k log E) per token.

    Examples
    --------
    >>> import mcroute as mr
    >>> r = mr.Correlated(mr.Zipf(64, 8, 1.0), sigma=0.4)
    >>> r
    Correlated(base=Zipf(n_experts=64, top_k=8, alpha=1.0, layer_seed=0, permute=True), sigma=0.4)
    >>> mr.sample_counts(r, 32, 2, rng=0).sum(axis=-1).ravel().tolist()
    [256, 256]
    """

    __slots__ = ("_base", "_sigma")
    kind = "correlated"

    def __init__(self, base, sigma):
        base = _plain_base(base, "Correlated")
        super().__init__(base.n_experts, base.top_k)
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_sigma", check_real("sigma", sigma, minimum=0.0,
                                                      maximum=MAX_SIGMA))
        self._freeze()

    @property
    def base(self):
        """The centre routing (a trace in marginal mode)."""
        return self._base

    @property
    def sigma(self) -> float:
        """Standard deviation of the shared logit shift."""
        return self._sigma

    def params(self):
        return {"base": self._base.describe(), "sigma": self._sigma}

    def __repr__(self):
        return f"Correlated(base={self._base!r}, sigma={self._sigma!r})"

    def _weights(self, n_layers):
        return self._base._weights(n_layers)

    def _log_weights(self, n_layers):
        return self._base._log_weights(n_layers)

    def popularity(self, n_layers: int = 1):
        """Return the centre (base) routing's popularity."""
        return self._base.popularity(n_layers)

    def inclusion_probabilities(self, n_layers: int = 1, *, return_error: bool = False):
        """Mean inclusion probabilities over microbatches, (layer, expert).

        sigma = 0: the base's (exact). Otherwise Monte Carlo with the sampler
        (:data:`MC_INCLUSION_TOKENS` tokens per layer in microbatches of 16, fixed seed);
        ``return_error`` gives four times the largest standard error, which grows with sigma
        (about 0.01 at sigma = 0.7 for E = 12, k = 3).
        """
        n_layers = check_int("n_layers", n_layers, minimum=1)
        if self._sigma == 0:
            return self._base.inclusion_probabilities(n_layers, return_error=return_error)
        if _exchangeable(self._log_weights(n_layers)):
            pi = np.full((n_layers, self.n_experts), self.top_k / self.n_experts)
            return (pi, 0.0) if return_error else pi
        # Small microbatches: the spread of the shift z between microbatches dominates the
        # error, so many microbatches of few tokens estimate the mean best.
        pi, err = _value_cached_inclusion(self, n_layers,
                                          lambda: _mc_inclusion(self, n_layers, 16))
        return (pi.copy(), err) if return_error else pi.copy()

    def _draw(self, batch_size, n_trials, n_layers, seeds, record):
        k = self.top_k
        assign = (np.zeros((n_trials, n_layers, batch_size, k), dtype=np.int64) if record
                  else np.zeros((1, 1, 1, 1), dtype=np.int64))
        lw = _race_log_weights(self._base, n_layers)
        counts = K.counts_race(seeds, CHUNK_TRIALS, K.new_counts(n_trials, n_layers,
                                                                 self.n_experts),
                               lw, self._sigma, self.n_experts, 1, k, batch_size, record, assign)
        return counts, assign

    def _draw_counts(self, batch_size, n_trials, n_layers, seeds, method):
        if self._sigma == 0:
            return self._base._draw_counts(batch_size, n_trials, n_layers, seeds, method)
        return self._draw(batch_size, n_trials, n_layers, seeds, False)[0]

    def _draw_assignments(self, batch_size, n_trials, n_layers, seeds):
        if self._sigma == 0:
            return self._base._draw_assignments(batch_size, n_trials, n_layers, seeds)
        return self._draw(batch_size, n_trials, n_layers, seeds, True)[1]

    def _countspace_exact(self):
        return self._sigma == 0 and self._base._countspace_exact()


class GroupLimited(Routing):
    """Group-limited routing (DeepSeek-V2/V3): each token's experts lie in a few expert groups.

    The law. Experts 0..E−1 form ``n_groups`` contiguous groups of G = E / n_groups. Each token
    draws scores ``s_e = log w_e + Gumbel_e`` (independent standard Gumbels; ``w`` the base
    routing's weights, so without the limit the top-k scores are the base's Plackett–Luce
    law); a group's score is the max of its experts' scores; the token keeps the
    ``topk_groups`` groups with the best group scores and takes the ``top_k`` best scores among
    those groups' experts. Equivalently (exponential race, ``T_e = exp(−s_e)`` ~ Exp(w_e)):
    successive sampling in proportion to w, where once the token's experts span
    ``topk_groups`` groups only experts of those groups may follow. (A group's max score is the
    score of its first arrival, so the kept groups are the first ``topk_groups`` groups to
    arrive; inside them the top-k scores are the first k arrivals.) The first pick is therefore
    the base's first pick, and ``popularity()`` is the base's.

    DeepSeek-V3 ranks groups by the sum of their two best (sigmoid) scores and DeepSeek-V2 by
    the best one; this class implements the best-score rule for both (``docs/sampling.md``).

    Inclusion probabilities: exact, by enumerating every ordered choice sequence of the
    sequential law, when E·(E−1)···(E−k+1) <= :data:`GROUP_ENUM_MAX` (e.g. E = 60, k = 4);
    otherwise Monte Carlo with the sampler (:data:`MC_INCLUSION_TOKENS` tokens per layer,
    fixed seed), error returned with ``return_error=True`` = 4 standard errors (≈ 4e-3 at most).
    ``expected_active_experts`` uses them (tokens are independent, so Σ_e 1 − (1 − π_e)^B is
    exact given π).

    Parameters
    ----------
    base : Routing
        Independent-token routing (``Uniform``, ``Zipf``, ``LogNormal``, ``Popularity``,
        ``PopularityTrace``, ``Trace`` — marginal law) or a :class:`Correlated` (the shared
        logit shift is applied before the group choice).
    n_groups : int
        Groups, dividing E.
    topk_groups : int
        Groups a token may use, 1 <= topk_groups <= n_groups, with topk_groups·E/n_groups >= k.

    Examples
    --------
    >>> import mcroute as mr
    >>> r = mr.GroupLimited(mr.Uniform(256, 8), n_groups=8, topk_groups=4)
    >>> a = mr.sample_assignments(r, 16, 1, rng=0)[0, 0]
    >>> max(len(set((t // 32).tolist())) for t in a) <= 4
    True
    """

    __slots__ = ("_base", "_n_groups", "_topk_groups")
    kind = "group_limited"

    def __init__(self, base, n_groups, topk_groups):
        if isinstance(base, Correlated):
            inner = base
        else:
            inner = _plain_base(base, "GroupLimited")
        super().__init__(inner.n_experts, inner.top_k)
        e, k = self.n_experts, self.top_k
        ng = check_int("n_groups", n_groups, minimum=1, maximum=e)
        if e % ng:
            raise McrouteError(f"n_groups must divide n_experts={e} (contiguous groups of equal "
                               f"size), got {ng}")
        tg = check_int("topk_groups", topk_groups, minimum=1, maximum=ng)
        if tg * (e // ng) < k:
            raise McrouteError(
                f"topk_groups * experts per group must be >= top_k={k} (a token needs k "
                f"experts inside its groups), got {tg} * {e // ng} = {tg * (e // ng)}")
        object.__setattr__(self, "_base", inner)
        object.__setattr__(self, "_n_groups", ng)
        object.__setattr__(self, "_topk_groups", tg)
        self._freeze()

    @property
    def base(self):
        """The routing whose scores are limited to groups."""
        return self._base

    @property
    def n_groups(self) -> int:
        """Expert groups."""
        return self._n_groups

    @property
    def topk_groups(self) -> int:
        """Groups each token may use."""
        return self._topk_groups

    @property
    def group_size(self) -> int:
        """Experts per group, E / n_groups."""
        return self.n_experts // self._n_groups

    @property
    def sigma(self) -> float:
        """Shared logit noise of a :class:`Correlated` base (0 otherwise)."""
        return self._base.sigma if isinstance(self._base, Correlated) else 0.0

    def _centre(self):
        return self._base.base if isinstance(self._base, Correlated) else self._base

    def params(self):
        return {"base": self._base.describe(), "n_groups": self._n_groups,
                "topk_groups": self._topk_groups}

    def __repr__(self):
        return (f"GroupLimited(base={self._base!r}, n_groups={self._n_groups}, "
                f"topk_groups={self._topk_groups})")

    def _weights(self, n_layers):
        return self._centre()._weights(n_layers)

    def _log_weights(self, n_layers):
        return self._centre()._log_weights(n_layers)

    def popularity(self, n_layers: int = 1):
        """Return the base's popularity (the law of each token's first pick)."""
        return self._base.popularity(n_layers)

    def _log_weights_checked(self, n_layers):
        lw = _race_log_weights(self._centre(), n_layers)
        size, tg, k = self.group_size, self._topk_groups, self.top_k
        pos = np.isfinite(lw).reshape(lw.shape[0], self._n_groups, size).sum(axis=2)
        for layer in range(lw.shape[0]):
            c = np.sort(pos[layer][pos[layer] > 0])
            if c.size >= tg and c[:tg].sum() < k:
                raise McrouteError(
                    f"GroupLimited: in layer {layer} some {tg} groups hold only "
                    f"{int(c[:tg].sum())} experts of positive weight, fewer than top_k={k}; "
                    "every choice of topk_groups groups needs k positive-weight experts")
        return lw

    def inclusion_probabilities(self, n_layers: int = 1, *, return_error: bool = False):
        """Inclusion probabilities (layer, expert): exact enumeration or Monte Carlo (class doc)."""
        n_layers = check_int("n_layers", n_layers, minimum=1)

        def compute():
            e, k = self.n_experts, self.top_k
            if _exchangeable(self._log_weights(n_layers)):
                return np.full((n_layers, e), k / e), 0.0
            if self.sigma != 0 or math.perm(e, k) > GROUP_ENUM_MAX:
                return _mc_inclusion(self, n_layers)
            lw = self._log_weights_checked(n_layers)
            pi = np.empty_like(lw)
            rows = {}
            for layer in range(n_layers):
                key = lw[layer].tobytes()
                if key not in rows:
                    p = np.exp(lw[layer] - lw[layer].max())
                    rows[key] = K.group_limited_inclusion(p / p.sum(), self.group_size,
                                                          self._topk_groups, k)
                pi[layer] = rows[key]
            return pi, 1e-12 * k

        pi, err = _value_cached_inclusion(self, n_layers, compute)
        return (pi.copy(), err) if return_error else pi.copy()

    def _draw(self, batch_size, n_trials, n_layers, seeds, record):
        k = self.top_k
        assign = (np.zeros((n_trials, n_layers, batch_size, k), dtype=np.int64) if record
                  else np.zeros((1, 1, 1, 1), dtype=np.int64))
        lw = self._log_weights_checked(n_layers)
        counts = K.counts_race(seeds, CHUNK_TRIALS, K.new_counts(n_trials, n_layers,
                                                                 self.n_experts),
                               lw, self.sigma, self.group_size, self._topk_groups, k,
                               batch_size, record, assign)
        return counts, assign

    def _draw_counts(self, batch_size, n_trials, n_layers, seeds, method):
        return self._draw(batch_size, n_trials, n_layers, seeds, False)[0]

    def _draw_assignments(self, batch_size, n_trials, n_layers, seeds):
        return self._draw(batch_size, n_trials, n_layers, seeds, True)[1]

    def _countspace_exact(self):
        return False

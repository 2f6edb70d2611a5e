"""Routing distributions: which experts the tokens of a decode microbatch are sent to.

May import: numpy, scipy, ``mcroute._kernels``, ``mcroute._base``, ``mcroute._routing.inclusion``,
``mcroute._routing.tables``.

A routing distribution describes one token's choice at each MoE layer: ``top_k`` *distinct*
experts out of ``n_experts``. Tokens are independent. Weighted distributions choose by successive
sampling without replacement in proportion to per-expert popularity (Plackett–Luce, the same law
as Gumbel-top-k over log-weights), which is how a softmax router with noise behaves.

Which experts are hot differs per layer: Zipf and LogNormal assign popularity by rank and then
place the ranks on expert ids with a fixed permutation per layer, drawn from
``SeedSequence(layer_seed, spawn_key=(layer,))``. :meth:`Routing.permutation` reports it, and
``simulate`` records it. Permutations change which expert is hot, never the statistics that do
not look at expert ids.

:class:`Uniform`, :class:`Zipf`, :class:`LogNormal` and :class:`Popularity` live here; the
routings whose tokens are not independent or not free (:class:`~mcroute.Correlated`,
:class:`~mcroute.GroupLimited`) in :mod:`mcroute._routing.composite`, the inclusion
probabilities in :mod:`mcroute._routing.inclusion`, the routing strings (``"zipf:1.2"``) in
:mod:`mcroute._routing.spec`.

Subclasses implement ``_weights(n_layers)`` and, for sampling, ``_draw_counts`` (and optionally
``_draw_assignments``); anything with those methods (e.g. :class:`mcroute.Trace`) works wherever a
routing is accepted.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import special

from mcroute import _kernels as K
from mcroute._base.rng import CHUNK_TRIALS
from mcroute._base.validate import MAX_EXPERTS, McrouteError, check_int, check_real
from mcroute._routing.inclusion import pl_inclusion_cached
from mcroute._routing.tables import weighted_tables

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = ["Routing", "Uniform", "Zipf", "LogNormal", "Popularity"]


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

    def __init__(self, n_experts: int, top_k: int) -> None:
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

    def inclusion_probabilities(
        self, n_layers: int = 1, *, return_error: bool = False
    ) -> np.ndarray | tuple[np.ndarray, float]:
        """Probability pi_e that one token's k experts include expert e, (layer, expert).

        Exact for uniform routing (k / E) and for k = 1 (the popularity). For weighted k > 1
        it is computed by quadrature of the exponential-race integral (see
        ``_kernels.pl_inclusion`` and ``pl_inclusion_row``): composite 8-point Gauss–Legendre
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
            fine = pl_inclusion_cached(lw[layer], k, 0.5)
            if return_error:
                coarse = pl_inclusion_cached(lw[layer], k, 1.0)
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
                              weighted_tables(w, k, self._log_weights(n_layers)), k,
                              batch_size, record, assign)
        return counts, assign

    def _countspace_exact(self) -> bool:
        """Whether per-expert counts can be drawn directly and exactly."""
        return self.top_k == 1 or self.kind == "uniform"


#: Zipf's alpha and LogNormal's sigma enter the log-weights as at most this much: beyond it
#: the law in double precision is already the deterministic order of the ranks (every weight
#: ratio between two ranks underflows), and the log-weights stay finite.
_SKEW_CAP = 1e300


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

    def __init__(self, n_experts: int, top_k: int) -> None:
        super().__init__(n_experts, top_k)
        self._freeze()

    def _weights(self, n_layers):
        return None


class _Ranked(Routing):
    """Popularity given by rank, placed on expert ids by a seeded permutation per layer."""

    __slots__ = ("_layer_seed", "_permute")

    def __init__(self, n_experts: int, top_k: int, *, layer_seed: int = 0,
                 permute: bool = True) -> None:
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

    def params(self) -> dict:
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

    def __init__(self, n_experts: int, top_k: int, alpha: float, *, layer_seed: int = 0,
                 permute: bool = True) -> None:
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

    def params(self) -> dict:
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

    def __init__(self, n_experts: int, top_k: int, sigma: float, *, layer_seed: int = 0,
                 permute: bool = True) -> None:
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

    def params(self) -> dict:
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

    def __init__(self, weights: ArrayLike, top_k: int = 1) -> None:
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

    def params(self) -> dict:
        w = self._w[0] if self._w.shape[0] == 1 else self._w
        return {"weights": np.round(w * 1.0, 12).tolist(), "top_k": self.top_k}

    def __repr__(self):
        w = self._w
        if w.shape[0] == 1 and w.shape[1] <= 16:
            shown = "[" + ", ".join(f"{x:.4g}" for x in w[0]) + "]"
        else:
            shown = f"<array {w.shape}>"
        return f"Popularity(weights={shown}, top_k={self.top_k})"

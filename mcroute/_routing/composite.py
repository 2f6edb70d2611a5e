"""Routings whose tokens are not independent or not free: correlated microbatches and groups.

May import: numpy, ``mcroute._kernels``, ``mcroute._base``, the modules of ``mcroute._routing``.

:class:`Correlated` (the router logits of one microbatch share a random shift) and
:class:`GroupLimited` (DeepSeek-V2/V3: each token's experts lie in a few expert groups), built
on an independent-token routing of :mod:`mcroute._routing.distributions` or a trace.
"""

from __future__ import annotations

import math

import numpy as np

from mcroute import _kernels as K
from mcroute._base.rng import CHUNK_TRIALS
from mcroute._base.validate import McrouteError, check_int, check_real
from mcroute._routing.distributions import Routing
from mcroute._routing.inclusion import (
    exchangeable,
    mc_inclusion,
    value_cached_inclusion,
)

__all__ = ["Correlated", "GroupLimited", "MAX_SIGMA", "GROUP_ENUM_MAX"]


#: Largest logit-noise standard deviation accepted by :class:`Correlated` (at sigma = 100 a
#: microbatch already sends every token to the same k experts with probability ~1).
MAX_SIGMA = 100.0

#: :class:`GroupLimited` computes inclusion probabilities exactly, by enumerating every ordered
#: choice sequence, when there are at most this many (E·(E−1)···(E−k+1)); otherwise by Monte
#: Carlo (see :data:`MC_INCLUSION_TOKENS`).
GROUP_ENUM_MAX = 20_000_000


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

    def __init__(self, base: Routing, sigma: float) -> None:
        base = _plain_base(base, "Correlated")
        super().__init__(base.n_experts, base.top_k)
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_sigma", check_real("sigma", sigma, minimum=0.0,
                                                      maximum=MAX_SIGMA))
        self._freeze()

    @property
    def base(self) -> Routing:
        """The centre routing (a trace in marginal mode)."""
        return self._base

    @property
    def sigma(self) -> float:
        """Standard deviation of the shared logit shift."""
        return self._sigma

    def params(self) -> dict:
        return {"base": self._base.describe(), "sigma": self._sigma}

    def __repr__(self):
        return f"Correlated(base={self._base!r}, sigma={self._sigma!r})"

    def _weights(self, n_layers):
        return self._base._weights(n_layers)

    def _log_weights(self, n_layers):
        return self._base._log_weights(n_layers)

    def popularity(self, n_layers: int = 1) -> np.ndarray:
        """Return the centre (base) routing's popularity."""
        return self._base.popularity(n_layers)

    def inclusion_probabilities(
        self, n_layers: int = 1, *, return_error: bool = False
    ) -> np.ndarray | tuple[np.ndarray, float]:
        """Mean inclusion probabilities over microbatches, (layer, expert).

        sigma = 0: the base's (exact). Otherwise Monte Carlo with the sampler
        (:data:`MC_INCLUSION_TOKENS` tokens per layer in microbatches of 16, fixed seed);
        ``return_error`` gives four times the largest standard error, which grows with sigma
        (about 0.01 at sigma = 0.7 for E = 12, k = 3).
        """
        n_layers = check_int("n_layers", n_layers, minimum=1)
        if self._sigma == 0:
            return self._base.inclusion_probabilities(n_layers, return_error=return_error)
        if exchangeable(self._log_weights(n_layers)):
            pi = np.full((n_layers, self.n_experts), self.top_k / self.n_experts)
            return (pi, 0.0) if return_error else pi
        # Small microbatches: the spread of the shift z between microbatches dominates the
        # error, so many microbatches of few tokens estimate the mean best.
        pi, err = value_cached_inclusion(self, n_layers,
                                          lambda: mc_inclusion(self, n_layers, 16))
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

    def __init__(self, base: Routing, n_groups: int, topk_groups: int) -> None:
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
    def base(self) -> Routing:
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

    def params(self) -> dict:
        return {"base": self._base.describe(), "n_groups": self._n_groups,
                "topk_groups": self._topk_groups}

    def __repr__(self):
        return (f"GroupLimited(base={self._base!r}, n_groups={self._n_groups}, "
                f"topk_groups={self._topk_groups})")

    def _weights(self, n_layers):
        return self._centre()._weights(n_layers)

    def _log_weights(self, n_layers):
        return self._centre()._log_weights(n_layers)

    def popularity(self, n_layers: int = 1) -> np.ndarray:
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

    def inclusion_probabilities(
        self, n_layers: int = 1, *, return_error: bool = False
    ) -> np.ndarray | tuple[np.ndarray, float]:
        """Inclusion probabilities (layer, expert): exact enumeration or Monte Carlo (class doc)."""
        n_layers = check_int("n_layers", n_layers, minimum=1)

        def compute():
            e, k = self.n_experts, self.top_k
            if exchangeable(self._log_weights(n_layers)):
                return np.full((n_layers, e), k / e), 0.0
            if self.sigma != 0 or math.perm(e, k) > GROUP_ENUM_MAX:
                return mc_inclusion(self, n_layers)
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

        pi, err = value_cached_inclusion(self, n_layers, compute)
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

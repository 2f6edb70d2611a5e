"""Correlated microbatches by a Dirichlet process (Pólya urn) around a base routing.

May import: numpy, ``mcroute._kernels``, ``mcroute._base``, ``mcroute._routing``, the modules
of ``mcroute._traces``.
"""

from __future__ import annotations

import numpy as np

from mcroute import _kernels as K
from mcroute._base.rng import CHUNK_TRIALS
from mcroute._base.validate import McrouteError, check_int, check_real
from mcroute._routing.distributions import Routing
from mcroute._routing.tables import weighted_tables
from mcroute._traces.trace import Trace

__all__ = ["Overdispersed"]

_NO_RECORD = np.zeros((1, 1, 1, 1), dtype=np.int64)


class Overdispersed(Routing):
    """Correlated microbatches: each microbatch's routing law is a random draw around the base.

    Every microbatch draws its token law from a Dirichlet process centred on the ``base``
    routing's token law, with concentration ``c = 1/rho − 1``. Equivalently (Pólya urn), token
    j of the microbatch is a fresh draw from ``base`` with probability c / (c + j) and otherwise
    repeats the choices (at every layer) of a uniformly chosen earlier token. The mean
    popularity and the inclusion probabilities are the base's; the per-expert loads of a
    microbatch of B tokens have variance ``B·π(1−π)·(1 + (B−1)·rho)`` instead of
    ``B·π(1−π)``: ``rho`` is the intra-microbatch correlation of the inclusion indicators, the
    overdispersion estimated by :func:`mcroute.fit_routing` from traces with batch structure.

    Parameters
    ----------
    base : Routing
        ``Uniform``, ``Zipf``, ``LogNormal``, ``Popularity``, a :class:`PopularityTrace`, or a
        :class:`Trace` in ``"token"`` mode (fresh tokens are resampled trace tokens) or
        ``"marginal"`` mode.
    rho : float
        Overdispersion in [0, 1); 0 gives the base routing's independent tokens.

    Examples
    --------
    >>> import mcroute as mr
    >>> r = mr.Overdispersed(mr.Uniform(64, 8), rho=0.05)
    >>> r
    Overdispersed(base=Uniform(n_experts=64, top_k=8), rho=0.05)
    >>> bool(r.expected_active(32) < float(mr.expected_active_experts(mr.Uniform(64, 8), 32)))
    True
    """

    __slots__ = ("_base", "_rho")
    kind = "overdispersed"

    def __init__(self, base: Routing, rho: float) -> None:
        if not isinstance(base, Routing) or isinstance(base, Overdispersed):
            raise McrouteError(f"base must be a routing distribution, got {type(base).__name__}")
        if isinstance(base, Trace) and base.mode == "sequence":
            raise McrouteError("Overdispersed needs a Trace in 'token' or 'marginal' mode")
        super().__init__(base.n_experts, base.top_k)
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_rho", check_real("rho", rho, minimum=0.0, maximum=1.0,
                                                     open_max=True))
        self._freeze()

    @property
    def base(self) -> Routing:
        """The routing whose token law each microbatch is centred on."""
        return self._base

    @property
    def rho(self) -> float:
        """Intra-microbatch correlation of expert inclusion."""
        return self._rho

    @property
    def concentration(self) -> float:
        """Dirichlet-process concentration c = 1/rho − 1 (inf for rho = 0)."""
        return np.inf if self._rho == 0 else 1.0 / self._rho - 1.0

    def params(self) -> dict:
        return {"base": self._base.describe(), "rho": self._rho}

    def __repr__(self):
        return f"Overdispersed(base={self._base!r}, rho={self._rho!r})"

    def _weights(self, n_layers):
        return self._base._weights(n_layers)

    def popularity(self, n_layers: int = 1) -> np.ndarray:
        """Return the base routing's popularity."""
        return self._base.popularity(n_layers)

    def inclusion_probabilities(
        self, n_layers: int = 1, *, return_error: bool = False
    ) -> np.ndarray | tuple[np.ndarray, float]:
        """Return the base routing's inclusion probabilities (the mean over microbatches)."""
        return self._base.inclusion_probabilities(n_layers, return_error=return_error)

    def fresh_token_law(self, batch_size: int) -> np.ndarray:
        """P(K = n), n = 0 .. B: law of the number of fresh (non-copied) tokens in a microbatch.

        The Chinese-restaurant recursion: token 0 is fresh; token j (j >= 1) is fresh with
        probability c / (c + j).
        """
        b = check_int("batch_size", batch_size, minimum=1)
        c = self.concentration
        p = np.zeros(b + 1)
        p[1] = 1.0
        for j in range(1, b):
            f = 1.0 if np.isinf(c) else c / (c + j)
            p[1:] = p[1:] * (1.0 - f) + p[:-1] * f
            p[0] = 0.0
        return p

    def expected_active(self, batch_size: int, n_layers: int = 1) -> np.ndarray | float:
        """Exact expected distinct experts: Σ_n P(K = n) Σ_e 1 − (1 − π_e)^n, (layer,) or scalar.

        Copies add no new experts, so a microbatch with K fresh tokens touches as many experts
        as K independent tokens of the base law.
        """
        b = check_int("batch_size", batch_size, minimum=1)
        pk = self.fresh_token_law(b)
        pi = self._base.inclusion_probabilities(n_layers)
        with np.errstate(divide="ignore"):
            lg = np.log1p(-np.minimum(pi, 1.0))
        n = np.arange(b + 1, dtype=float)
        f = (-np.expm1(lg[:, None, :] * n[None, :, None])).sum(axis=2)  # (layer, n)
        out = f @ pk
        return float(out[0]) if n_layers == 1 else out

    def _draw(self, batch_size, n_trials, n_layers, seeds, record):
        k = self.top_k
        assign = (np.zeros((n_trials, n_layers, batch_size, k), dtype=np.int64) if record
                  else _NO_RECORD)
        conc = -1.0 if self._rho == 0 else 1.0 / self._rho - 1.0
        base = self._base
        if isinstance(base, Trace) and base.mode == "token":
            layer_idx = base._layer_index(n_layers)
            counts = K.trace_counts_tokens(seeds, CHUNK_TRIALS,
                                           K.new_counts(n_trials, layer_idx.size, self.n_experts),
                                           base.experts, layer_idx,
                                           batch_size, conc, record, assign)
            return counts, assign
        lw = None
        if isinstance(base, Trace):
            w = base.pl_weights()[base._layer_index(n_layers)]
        else:
            w = base._weights(n_layers)
            if w is None:
                w = np.full((n_layers, self.n_experts), 1.0 / self.n_experts)
            else:
                lw = base._log_weights(n_layers)  # ratios that underflow in w
        counts = K.counts_weighted_urn(seeds, CHUNK_TRIALS,
                                       K.new_counts(n_trials, w.shape[0], w.shape[1]),
                                       weighted_tables(w, k, lw), k, batch_size, conc, record,
                                       assign)
        return counts, assign

    def _draw_counts(self, batch_size, n_trials, n_layers, seeds, method):
        return self._draw(batch_size, n_trials, n_layers, seeds, False)[0]

    def _draw_assignments(self, batch_size, n_trials, n_layers, seeds):
        return self._draw(batch_size, n_trials, n_layers, seeds, True)[1]

    def _countspace_exact(self):
        return False

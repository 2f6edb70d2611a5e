"""Expert placement for expert parallelism: balanced packing with replicas of hot experts.

May import: numpy, scipy, ``_routing``, ``_validate``.

:func:`balanced_placement` answers where each routed expert (and each extra replica of a hot
one) should live so that the devices' expected loads are even. With replicas (N > 0) it builds
the same layout that ``Deployment(redundant_experts=N)`` costs (tested), so a placement studied
with :func:`mcroute.simulate` is the one the throughput model charges.

The algorithm (per MoE layer), given each expert's expected share of tokens ``lam_e`` (for a
routing: its inclusion probability, so B·lam_e is the expected load at batch B):

1. *Replicas.* N times, give one more replica to the expert with the largest expected load per
   replica ``lam_e / r_e`` (ties: lowest expert id). The tokens of an expert with r replicas
   are split evenly among them (``floor(m / r)`` each, one more for the first ``m mod r``).
2. *Packing.* Sort the S = E + N slots by expected load per replica, heaviest first (stable),
   and put each on the device with the least expected load that still has room; every device
   holds ``floor(S / D)`` or ``ceil(S / D)`` slots (the first ``S mod D`` one more), so the
   memory per device stays even too.

Compared with DeepSeek's published expert-parallel load balancer (EPLB): both replicate the
experts with the heaviest load per replica and then pack greedily heaviest-first onto the least
loaded device with a fixed number of slots per device. EPLB additionally has a hierarchical
mode that first packs expert *groups* onto nodes (to keep group-limited routing inside a node)
and then replicates within each node, and it balances measured loads from a recent window of
traffic; here the loads are the routing's exact expectations, and placement is flat (one level).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from mcroute._base.validate import MAX_EXPERTS, MAX_LAYERS, McrouteError, check_int
from mcroute._routing.distributions import Routing

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = ["Placement", "balanced_placement"]


@dataclasses.dataclass(frozen=True, eq=False)
class Placement:
    """Where every expert slot of every MoE layer lives (result of :func:`balanced_placement`).

    Attributes
    ----------
    slot_expert : ndarray int64 (layer, slot)
        Expert whose weights each slot holds; S = n_experts + redundant_experts slots.
    slot_replicas : ndarray int64 (layer, slot)
        Replicas of the slot's expert (1 for an expert held once).
    slot_rank : ndarray int64 (layer, slot)
        Index of the slot among its expert's replicas.
    slot_device : ndarray int64 (layer, slot)
        Device of each slot.
    n_devices : int
        Devices D (the expert-parallel degree).
    redundant_experts : int
        Extra slots N.
    """

    slot_expert: np.ndarray
    slot_replicas: np.ndarray
    slot_rank: np.ndarray
    slot_device: np.ndarray
    n_devices: int
    redundant_experts: int

    @property
    def n_layers(self) -> int:
        """MoE layers described."""
        return int(self.slot_expert.shape[0])

    @property
    def n_experts(self) -> int:
        """Routed experts per layer."""
        return int(self.slot_expert.shape[1]) - self.redundant_experts

    def device_loads(self, counts: ArrayLike) -> np.ndarray:
        """Tokens on each device, int64 (trial, layer, device), from counts (trial, layer, expert).

        A replicated expert's tokens are split evenly among its replicas.
        """
        c = np.asarray(counts)
        if c.ndim != 3 or c.shape[1:] != (self.n_layers, self.n_experts) or not np.issubdtype(
                c.dtype, np.integer):
            raise McrouteError(f"counts must be an integer array (trial, {self.n_layers}, "
                               f"{self.n_experts}), got shape {c.shape}")
        slots = self._slot_loads(c)
        out = np.zeros((c.shape[0], self.n_layers, self.n_devices), dtype=np.int64)
        for layer in range(self.n_layers):
            onehot = (self.slot_device[layer][:, None]
                      == np.arange(self.n_devices)[None, :]).astype(np.int64)
            out[:, layer] = slots[:, layer] @ onehot
        return out

    def _slot_loads(self, c) -> np.ndarray:
        """Tokens of each slot (trial, layer, slot): an even split of the expert's tokens."""
        idx = np.broadcast_to(self.slot_expert[None], (c.shape[0],) + self.slot_expert.shape)
        m = np.take_along_axis(c.astype(np.int64), idx, axis=2)
        q, rem = np.divmod(m, self.slot_replicas[None])
        return q + (self.slot_rank[None] < rem)

    def device_active_experts(self, counts: ArrayLike) -> np.ndarray:
        """Distinct slots with at least one token on each device, (trial, layer, device)."""
        c = np.asarray(counts)
        busy = (self._slot_loads(c) > 0).astype(np.int64)
        out = np.zeros((c.shape[0], self.n_layers, self.n_devices), dtype=np.int64)
        for layer in range(self.n_layers):
            onehot = (self.slot_device[layer][:, None]
                      == np.arange(self.n_devices)[None, :]).astype(np.int64)
            out[:, layer] = busy[:, layer] @ onehot
        return out

    def expected_device_loads(self, inclusion: ArrayLike | Routing,
                              batch_size: int) -> np.ndarray:
        """Exact expected tokens per device, (layer, device), for independent tokens.

        Expert e's load in a microbatch of B tokens is Binomial(B, pi_e) whatever the other
        experts do, so a slot of rank i among r replicas expects
        ``E[floor(m / r)] + P(m mod r > i)``, summed over the device's slots.

        Parameters
        ----------
        inclusion : array (layer, expert) or Routing
            Inclusion probabilities pi_e (a routing gives its own).
        batch_size : int
            Tokens per microbatch B.
        """
        b = check_int("batch_size", batch_size, minimum=1, maximum=2**24)
        pi = (inclusion.inclusion_probabilities(self.n_layers) if isinstance(inclusion, Routing)
              else np.asarray(inclusion, dtype=float))
        if pi.shape != (self.n_layers, self.n_experts):
            raise McrouteError(f"inclusion must have shape ({self.n_layers}, {self.n_experts}), "
                               f"got {pi.shape}")
        m = np.arange(b + 1)
        out = np.zeros((self.n_layers, self.n_devices))
        for layer in range(self.n_layers):
            e = self.slot_expert[layer]
            r = self.slot_replicas[layer][:, None]
            pmf = stats.binom.pmf(m[None, :], b, pi[layer][e][:, None])  # (slot, m)
            share = m[None, :] // r + (self.slot_rank[layer][:, None] < m[None, :] % r)
            per_slot = (pmf * share).sum(axis=1)
            out[layer] = np.bincount(self.slot_device[layer], weights=per_slot,
                                     minlength=self.n_devices)
        return out

    def describe(self) -> dict:
        """JSON-able summary for provenance."""
        return {"kind": "balanced", "n_devices": self.n_devices,
                "redundant_experts": self.redundant_experts, "n_layers": self.n_layers,
                "n_experts": self.n_experts}


def balanced_placement(popularity: Routing | ArrayLike, n_devices: int,
                       redundant_experts: int = 0, *, n_layers: int = 1) -> Placement:
    """Replicate the hottest experts and pack slots onto devices to balance expected load.

    Parameters
    ----------
    popularity : Routing or array (expert,) or (layer, expert)
        Expected share of tokens of each expert: a routing (its inclusion probabilities, for
        ``n_layers`` layers) or non-negative numbers (normalisation does not matter).
    n_devices : int
        Devices D, >= 1 and at most the number of slots E + N.
    redundant_experts : int
        Extra slots N >= 0 holding replicas of hot experts (EPLB-style).
    n_layers : int
        Layers, when ``popularity`` is a routing.

    Returns
    -------
    Placement

    Notes
    -----
    See the module docstring for the algorithm and how it compares with DeepSeek's EPLB.

    Examples
    --------
    >>> import mcroute as mr
    >>> p = mr.balanced_placement([0.4, 0.3, 0.2, 0.1], 2, redundant_experts=2)
    >>> p.slot_expert.tolist(), p.slot_device.tolist()
    ([[0, 0, 2, 1, 1, 3]], [[0, 1, 0, 1, 1, 0]])
    >>> p.expected_device_loads([[0.4, 0.3, 0.2, 0.1]], 64).round(2).tolist()  # B = 64, k = 1
    [[32.25, 31.75]]
    """
    if isinstance(popularity, Routing):
        n_layers = check_int("n_layers", n_layers, minimum=1, maximum=MAX_LAYERS)
        pop = popularity.inclusion_probabilities(n_layers)
    else:
        try:
            pop = np.array(popularity, dtype=float)
        except (TypeError, ValueError, OverflowError):
            raise McrouteError("popularity must be a routing or an array of non-negative "
                               "numbers (expert,) or (layer, expert)") from None
        if pop.ndim == 1:
            pop = pop[None, :]
        if pop.ndim != 2 or pop.shape[1] < 1 or pop.shape[0] > MAX_LAYERS or (
                pop.shape[1] > MAX_EXPERTS):
            raise McrouteError(f"popularity must have shape (expert,) or (layer, expert) with "
                               f"at most {MAX_LAYERS} layers and {MAX_EXPERTS} experts, got "
                               f"{pop.shape}")
        if not np.all(np.isfinite(pop)) or np.any(pop < 0) or np.any(pop.sum(axis=1) <= 0):
            raise McrouteError("popularity must be finite, >= 0 and not all zero in a layer")
    n_lay, e = pop.shape
    n_red = check_int("redundant_experts", redundant_experts, minimum=0, maximum=MAX_EXPERTS)
    d = check_int("n_devices", n_devices, minimum=1, maximum=e + n_red)
    s = e + n_red
    cap = np.full(d, s // d, dtype=np.int64)
    cap[: s % d] += 1
    arrays = [np.zeros((n_lay, s), dtype=np.int64) for _ in range(4)]
    for j in range(n_lay):
        lam = pop[j]
        reps = np.ones(e, dtype=np.int64)
        for _ in range(n_red):  # 1. replicas to the heaviest load per replica
            reps[int(np.argmax(lam / reps))] += 1
        ex = np.repeat(np.arange(e, dtype=np.int64), reps)
        rank = np.concatenate([np.arange(r, dtype=np.int64) for r in reps])
        order = np.argsort(-(lam[ex] / reps[ex]), kind="stable")
        ex, rank = ex[order], rank[order]
        load = np.zeros(d)
        fill = np.zeros(d, dtype=np.int64)
        dev = np.empty(s, dtype=np.int64)
        for i in range(s):  # 2. heaviest first onto the least loaded device with room
            g = int(np.argmin(np.where(fill < cap, load, np.inf)))
            dev[i] = g
            load[g] += lam[ex[i]] / reps[ex[i]]
            fill[g] += 1
        for arr, row in zip(arrays, (ex, reps[ex], rank, dev), strict=True):
            arr[j] = row
    return Placement(*arrays, d, n_red)

"""Labeled routing Monte Carlo: :func:`simulate` returns an ``xarray.Dataset``.

May import: numpy, xarray, and the array layer (``_sampling``, ``_routing``, ``_results``,
``_rng``, ``_validate``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import xarray as xr

from mcroute import _kernels as K
from mcroute._base.progress import compile_notice, progress_callback
from mcroute._base.rng import CHUNK_TRIALS, resolve_seed
from mcroute._base.validate import McrouteError, check_bytes
from mcroute._labeled.options import SIMULATE_OPTIONS, by_name, check_sizes
from mcroute._labeled.results import DEFAULT_QUANTILES, provenance, summarize
from mcroute._routing import as_routing
from mcroute._routing.placement import Placement

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from numpy.typing import ArrayLike

    from mcroute._routing.distributions import Routing
from mcroute._routing.sampling import (
    check_routing,
    check_sampling_request,
    device_map,
    draw_counts,
    expected_active_experts,
    load_histogram,
    microbatch_stats,
)

__all__ = ["simulate", "STAT_META"]

#: Per-trial statistics of ``simulate``: units and meaning.
STAT_META = {
    "active_experts": ("experts", "distinct experts touched in the microbatch"),
    "tokens_per_active_expert": ("tokens",
                                 "tokens served per fetched expert weight (B·k / active)"),
    "max_expert_load": ("tokens", "tokens routed to the busiest expert"),
    "max_device_load": ("tokens", "tokens routed to the busiest device"),
    "device_imbalance": ("1", "busiest device load over mean device load"),
    "max_device_active_experts": ("experts", "most distinct experts touched on one device"),
    "overflow_fraction": ("1", "share of assignments above the expert capacity"),
}

#: Added when ``placement`` is a :class:`~mcroute.Placement` (balanced, with replicas): the
#: busiest device without it (contiguous blocks of experts, no replicas), for comparison.
UNBALANCED_META = {
    "max_device_load_unbalanced": ("tokens", "tokens routed to the busiest device under the "
                                             "contiguous placement without replicas"),
}

#: simulate's options, declared once (range, type, doc): the checks below use them.
_OPT = by_name(SIMULATE_OPTIONS)

#: Cap on the count array held at once (elements); trials are processed in blocks below it.
_BLOCK_ELEMENTS = 4_000_000


def simulate(
    routing: Routing | str,
    batch_size: int | str | Sequence[int | str],
    n_trials: int = 1000,
    n_layers: int = 1,
    n_devices: int = 1,
    *,
    placement: ArrayLike | Placement | None = None,
    capacity_factor: float = 1.0,
    rng: int | np.random.SeedSequence | np.random.Generator | None = None,
    ci_prob: float = 0.95,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    method: str = "auto",
    expert_load: bool = False,
    histogram: bool = False,
    n_experts: int | None = None,
    top_k: int | None = None,
    progress: bool | Callable[[float], object] | None = None,
) -> xr.Dataset:
    """Monte Carlo of decode microbatches: fragmentation and load statistics with intervals.

    Parameters
    ----------
    routing : Routing or str
        Routing distribution (``Uniform``, ``Zipf``, ``LogNormal``, ``Popularity``,
        ``Correlated``, ``GroupLimited``, ``Trace``), or a routing string such as ``"zipf:1.2"``
        or ``"uniform+group:8,4"`` (``mcroute._routing.spec.ROUTING_SYNTAX``; then
        ``n_experts`` and ``top_k`` are required).
    batch_size : int, str or sequence
        Tokens per microbatch B (``"4k"`` = 4096 accepted, as on the command line); a sequence
        (or ``"1,8,64"``) becomes the ``batch_size`` dim.
    n_trials : int
        Microbatches drawn per batch size (Monte Carlo trials), >= 2 (intervals need two);
        default 1000, as :func:`decode_throughput` and :func:`qs_analysis`.
        Sampling streams in blocks, but every trial's statistics are kept: requests whose
        results or random draws exceed the limits of mcroute._base.validate (``MAX_RESULT_BYTES``,
        ``MAX_DRAWS``) are refused before anything is drawn.
    n_layers : int
        MoE layers per microbatch.
    n_devices : int
        Devices for expert parallelism (contiguous placement unless ``placement`` is given).
    placement : array of int or Placement, optional
        Device id of each expert, or a :func:`mcroute.balanced_placement` result (replicas of
        hot experts split their tokens evenly). With a ``Placement``, the device statistics
        are those of the placement, and ``max_device_load_unbalanced`` gives the busiest
        device under contiguous blocks without replicas beside it.
    capacity_factor : float
        Expert capacity ceil(capacity_factor · B·k / E) for ``overflow_fraction``.
    rng : None, int, SeedSequence or Generator
        Seed. The entropy used is stored in ``attrs["seed"]``; passing it back repeats the run.
        Each batch size B draws from its own stream, keyed by the value of B, so a subset of
        batch sizes reproduces the same numbers.
    ci_prob : float
        Level of the confidence intervals of the means, in (0, 1).
    quantiles : sequence of float
        Levels of the single-microbatch quantile bands.
    method : {"auto", "assignment", "counts"}
        Sampling method, see :func:`sample_counts`.
    expert_load : bool
        Also return per-trial ``expert_load`` (batch_size, trial, layer, expert) [tokens].
    histogram : bool
        Also return ``load_histogram`` (batch_size, layer, load): mean number of experts with
        each load per microbatch.
    n_experts, top_k : int, optional
        E and k of a routing string (with a routing object: None, or equal to its own).
    progress : None, bool or callable
        None (default): a progress line on stderr when it is a terminal and the work takes
        more than about 2 s; False: none; a callable is called with the fraction done.

    Returns
    -------
    xarray.Dataset
        Dims ``batch_size``, ``trial``, ``layer``, ``ci_bound``, ``quantile`` (and ``rank``,
        ``expert``, ``load`` where used). Per-trial variables (see ``STAT_META``) with
        ``_mean``, ``_se``, ``_ci`` and ``_q`` summaries; ``active_experts_exact`` (the exact
        expectation, for comparison); ``hot_expert`` (layer, rank): the expert id holding each
        popularity rank. Attrs carry the seed and the routing spec.

    Examples
    --------
    >>> import mcroute as mr
    >>> ds = mr.simulate(mr.Uniform(256, 8), [1, 64], n_trials=200, rng=0)
    >>> ds["active_experts_mean"].sel(batch_size=1).item()
    8.0
    >>> float(ds["active_experts_exact"].sel(batch_size=64).round(2).item())
    222.44
    """
    routing = check_routing(as_routing(routing, n_experts, top_k))
    batches, scalar = check_sizes(_OPT["batch_size"], batch_size)  # the one declaration
    n_trials = _OPT["n_trials"].check(n_trials)
    n_layers = _OPT["n_layers"].check(n_layers)
    n_devices = _OPT["n_devices"].check(n_devices)
    balanced, placement = _check_placement(placement, routing, n_devices, n_layers)
    dev = device_map(routing.n_experts, n_devices, placement)
    capacity_factor = _OPT["capacity_factor"].check(capacity_factor)
    ci_prob = _OPT["ci_prob"].check(ci_prob)
    method = _OPT["method"].check(method)
    for name, flag in (("expert_load", expert_load), ("histogram", histogram)):
        if not isinstance(flag, (bool, np.bool_)):
            raise McrouteError(f"{name} must be True or False, got {flag!r}"[:200])
    if progress is not None and progress is not False and not callable(progress):
        raise McrouteError(f"progress must be a callable, True, False or None, got {progress!r}")
    entropy = resolve_seed(rng)
    e = routing.n_experts
    _check_sizes(routing, batches, n_trials, n_layers, method, expert_load, histogram)
    compile_notice(K)
    tick, owned = progress_callback(progress, "simulate")
    tick = tick or (lambda f: None)

    per_block = (_BLOCK_ELEMENTS // max(n_layers * e, 1)) // CHUNK_TRIALS * CHUNK_TRIALS
    per_block = max(CHUNK_TRIALS, per_block)
    meta = {**STAT_META, **(UNBALANCED_META if balanced is not None else {})}
    stats = {name: np.empty((len(batches), n_trials, n_layers)) for name in meta}
    loads = np.empty((len(batches), n_trials, n_layers, e), dtype=np.int64) if expert_load else None
    hist_max = max(batches)
    hist = np.zeros((len(batches), n_layers, hist_max + 1)) if histogram else None
    for i, b in enumerate(batches):
        for t0 in range(0, n_trials, per_block):
            nt = min(per_block, n_trials - t0)
            counts = draw_counts(routing, b, nt, n_layers, entropy, (b,), method, first_trial=t0)
            st = microbatch_stats(counts, n_devices=n_devices, placement=dev,
                                  capacity_factor=capacity_factor)
            if balanced is not None:
                st.update(_balanced_stats(balanced, counts, st["max_device_load"]))
            for name in meta:
                stats[name][i, t0:t0 + nt] = st[name]
            if loads is not None:
                loads[i, t0:t0 + nt] = counts
            if hist is not None:
                hist[i] += load_histogram(counts, hist_max) * nt
            tick((i * n_trials + t0 + nt) / (len(batches) * n_trials))
    if owned is not None:
        owned.close()
    coords = {
        "batch_size": ("batch_size", np.asarray(batches, dtype=np.int64),
                       {"units": "tokens", "long_name": "tokens per decode microbatch (B)"}),
        "trial": ("trial", np.arange(n_trials), {"units": "1", "long_name": "Monte Carlo draw"}),
        "layer": ("layer", np.arange(n_layers), {"units": "1", "long_name": "MoE layer"}),
    }
    data = {}
    for name, (units, desc) in meta.items():
        data[name] = (("batch_size", "trial", "layer"), stats[name],
                      {"units": units, "long_name": desc})
    exact = np.asarray(expected_active_experts(routing, batches, n_layers)).reshape(
        (n_layers, len(batches)) if n_layers > 1 else (1, len(batches))
    )
    data["active_experts_exact"] = (
        ("batch_size", "layer"), exact.T,
        {"units": "experts", "long_name": "exact expected distinct experts (independent tokens)"},
    )
    data["hot_expert"] = (
        ("layer", "rank"), routing.permutation(n_layers),
        {"units": "1", "long_name": "expert id holding each popularity rank (0 = hottest)"},
    )
    coords["rank"] = ("rank", np.arange(e), {"units": "1", "long_name": "popularity rank"})
    if loads is not None:
        coords["expert"] = ("expert", np.arange(e), {"units": "1", "long_name": "expert id"})
        data["expert_load"] = (("batch_size", "trial", "layer", "expert"), loads,
                               {"units": "tokens", "long_name": "tokens routed to each expert"})
    if hist is not None:
        coords["load"] = ("load", np.arange(hist_max + 1), {"units": "tokens", "long_name": "load"})
        data["load_histogram"] = (
            ("batch_size", "layer", "load"), hist / n_trials,
            {"units": "experts",
             "long_name": "mean number of experts with each load per microbatch"},
        )
    ds = xr.Dataset(data, coords=coords)
    ds = summarize(ds, list(meta), ci_prob=ci_prob, quantiles=quantiles)
    ds.attrs = provenance(
        seed=entropy, n_trials=n_trials, ci_prob=ci_prob, routing=routing.describe(),
        n_layers=n_layers, n_devices=n_devices, capacity_factor=capacity_factor,
        placement=(balanced.describe() if balanced is not None
                   else "contiguous" if placement is None else "explicit"), method=method,
    )
    if scalar:
        ds = ds.squeeze("batch_size", drop=False)
    return ds


def _check_placement(placement, routing, n_devices, n_layers):
    """``(balanced Placement or None, device placement to compare with)``."""
    balanced = placement if isinstance(placement, Placement) else None
    if balanced is None:
        return None, placement
    if (balanced.n_devices, balanced.n_experts) != (n_devices, routing.n_experts) or (
            balanced.n_layers not in (1, n_layers)):
        raise McrouteError(
            f"placement is for {balanced.n_devices} devices, {balanced.n_experts} experts "
            f"and {balanced.n_layers} layers; this simulation has n_devices={n_devices}, "
            f"n_experts={routing.n_experts} and n_layers={n_layers}")
    # the comparison: contiguous blocks (sizes differing by at most one expert)
    return balanced, (np.arange(routing.n_experts) * n_devices) // routing.n_experts


def _check_sizes(routing, batches, n_trials, n_layers, method, expert_load, histogram):
    """Refuse, before any draw, results or sampling work above the limits."""
    nb = len(batches)
    check_bytes(f"the per-trial statistics ({nb} batch sizes x {n_trials} trials x {n_layers} "
                f"layers x {len(STAT_META)} statistics, float64)",
                nb * n_trials * n_layers * len(STAT_META) * 8, "n_trials or n_layers")
    if histogram:
        check_bytes(f"the load histogram ({nb} batch sizes x {n_layers} layers x "
                    f"{max(batches) + 1} loads, float64)",
                    nb * n_layers * (max(batches) + 1) * 8, "batch_size (with histogram=True)")
    check_sampling_request(routing, batches, n_trials, n_layers, method,
                           params="n_trials, n_layers or batch_size",
                           expert_arrays=1 if expert_load else 0)


def _balanced_stats(placement: Placement, counts, unbalanced_max) -> dict:
    """Device statistics (trial, layer) under a balanced placement with replicas."""
    if placement.n_layers == 1 and counts.shape[1] > 1:
        loads = np.concatenate([placement.device_loads(counts[:, [j]])
                                for j in range(counts.shape[1])], axis=1)
        active = np.concatenate([placement.device_active_experts(counts[:, [j]])
                                 for j in range(counts.shape[1])], axis=1)
    else:
        loads = placement.device_loads(counts)
        active = placement.device_active_experts(counts)
    mx = loads.max(axis=2).astype(float)
    mean = loads.sum(axis=2) / placement.n_devices
    with np.errstate(invalid="ignore", divide="ignore"):
        imbalance = np.where(mean > 0, mx / mean, 1.0)
    return {"max_device_load": mx, "device_imbalance": imbalance,
            "max_device_active_experts": active.max(axis=2).astype(float),
            "max_device_load_unbalanced": np.asarray(unbalanced_max, dtype=float)}

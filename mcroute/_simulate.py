"""Labeled routing Monte Carlo: :func:`simulate` returns an ``xarray.Dataset``.

May import: numpy, xarray, and the array layer (``_sampling``, ``_routing``, ``_results``,
``_rng``, ``_validate``).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ._results import DEFAULT_QUANTILES, provenance, summarize
from ._rng import CHUNK_TRIALS, resolve_seed
from ._sampling import (
    check_routing,
    check_sampling_request,
    device_map,
    draw_counts,
    expected_active_experts,
    load_histogram,
    microbatch_stats,
)
from ._validate import (
    MAX_BATCH_SIZE,
    MAX_CAPACITY_FACTOR,
    MAX_LAYERS,
    McrouteError,
    check_bytes,
    check_int,
    check_int_list,
    check_prob,
    check_real,
    check_unique,
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

#: Cap on the count array held at once (elements); trials are processed in blocks below it.
_BLOCK_ELEMENTS = 4_000_000


def simulate(
    routing,
    batch_size,
    n_trials,
    n_layers=1,
    n_devices=1,
    *,
    placement=None,
    capacity_factor=1.0,
    rng=None,
    ci_prob=0.95,
    quantiles=DEFAULT_QUANTILES,
    method="auto",
    expert_load=False,
    histogram=False,
):
    """Monte Carlo of decode microbatches: fragmentation and load statistics with intervals.

    Parameters
    ----------
    routing : Routing
        Routing distribution (``Uniform``, ``Zipf``, ``LogNormal``, ``Popularity``, ``Trace``).
    batch_size : int or sequence of int
        Tokens per microbatch B; a sequence becomes the ``batch_size`` dim.
    n_trials : int
        Microbatches drawn per batch size (Monte Carlo trials), >= 2 (intervals need two).
        Sampling streams in blocks, but every trial's statistics are kept: requests whose
        results or random draws exceed the limits of mcroute._validate (``MAX_RESULT_BYTES``,
        ``MAX_DRAWS``) are refused before anything is drawn.
    n_layers : int
        MoE layers per microbatch.
    n_devices : int
        Devices for expert parallelism (contiguous placement unless ``placement`` is given).
    placement : array of int, optional
        Device id of each expert.
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
    check_routing(routing)
    batches, scalar = check_int_list("batch_size", batch_size, minimum=1,
                                     maximum=MAX_BATCH_SIZE)
    check_unique("batch_size", batches)
    n_trials = check_int("n_trials", n_trials, minimum=2)
    n_layers = check_int("n_layers", n_layers, minimum=1, maximum=MAX_LAYERS)
    n_devices = check_int("n_devices", n_devices, minimum=1)
    dev = device_map(routing.n_experts, n_devices, placement)
    capacity_factor = check_real("capacity_factor", capacity_factor, minimum=0.0,
                                 maximum=MAX_CAPACITY_FACTOR, open_min=True)
    ci_prob = check_prob("ci_prob", ci_prob)
    for name, flag in (("expert_load", expert_load), ("histogram", histogram)):
        if not isinstance(flag, (bool, np.bool_)):
            raise McrouteError(f"{name} must be True or False, got {flag!r}"[:200])
    entropy = resolve_seed(rng)
    e = routing.n_experts
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

    per_block = (_BLOCK_ELEMENTS // max(n_layers * e, 1)) // CHUNK_TRIALS * CHUNK_TRIALS
    per_block = max(CHUNK_TRIALS, per_block)
    stats = {name: np.empty((len(batches), n_trials, n_layers)) for name in STAT_META}
    loads = np.empty((len(batches), n_trials, n_layers, e), dtype=np.int64) if expert_load else None
    hist_max = max(batches)
    hist = np.zeros((len(batches), n_layers, hist_max + 1)) if histogram else None
    for i, b in enumerate(batches):
        for t0 in range(0, n_trials, per_block):
            nt = min(per_block, n_trials - t0)
            counts = draw_counts(routing, b, nt, n_layers, entropy, (b,), method, first_trial=t0)
            st = microbatch_stats(counts, n_devices=n_devices, placement=dev,
                                  capacity_factor=capacity_factor)
            for name in STAT_META:
                stats[name][i, t0:t0 + nt] = st[name]
            if loads is not None:
                loads[i, t0:t0 + nt] = counts
            if hist is not None:
                hist[i] += load_histogram(counts, hist_max) * nt
    coords = {
        "batch_size": ("batch_size", np.asarray(batches, dtype=np.int64),
                       {"units": "tokens", "long_name": "tokens per decode microbatch (B)"}),
        "trial": ("trial", np.arange(n_trials), {"units": "1", "long_name": "Monte Carlo draw"}),
        "layer": ("layer", np.arange(n_layers), {"units": "1", "long_name": "MoE layer"}),
    }
    data = {}
    for name, (units, desc) in STAT_META.items():
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
    ds = summarize(ds, list(STAT_META), ci_prob=ci_prob, quantiles=quantiles)
    ds.attrs = provenance(
        seed=entropy, n_trials=n_trials, ci_prob=ci_prob, routing=routing.describe(),
        n_layers=n_layers, n_devices=n_devices, capacity_factor=capacity_factor,
        placement="contiguous" if placement is None else "explicit", method=method,
    )
    if scalar:
        ds = ds.squeeze("batch_size", drop=False)
    return ds

"""mcroute: when, by how much and how surely a MoE model loses to its dense twin at decode.

Monte Carlo over token-to-expert routing feeds a decode cost model with an HBM capacity limit;
results come with confidence intervals. See README.md and docs/.

The public names below are loaded on first use (PEP 562), so ``import mcroute`` stays cheap:
scipy.stats, xarray, pandas and numba kernels load only when a function that needs them is
first touched. ``from mcroute import X``, ``mcroute.X`` and ``dir(mcroute)`` work as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from mcroute._base.validate import McrouteError
from mcroute._version import __version__

#: Public name -> module that defines it.
_LAZY = {
    "Placement": "mcroute._routing.placement",
    "balanced_placement": "mcroute._routing.placement",
    "HardwareSpec": "mcroute._cards.cards",
    "LayerSpec": "mcroute._cards.cards",
    "ModelSpec": "mcroute._cards.cards",
    "dtype_bytes": "mcroute._cards.cards",
    "list_hardware": "mcroute._cards.cards",
    "list_models": "mcroute._cards.cards",
    "load_hardware": "mcroute._cards.cards",
    "load_model": "mcroute._cards.cards",
    "Deployment": "mcroute._cost.deployment",
    "roofline_time": "mcroute._cost.deployment",
    "dense_twin": "mcroute._twin.twin",
    "min_gpus": "mcroute._labeled.qs",
    "paper_cases": "mcroute._labeled.paper",
    "qs_analysis": "mcroute._labeled.qs",
    "EstimateQ": "mcroute._quality.quality",
    "QSpec": "mcroute._quality.quality",
    "as_q": "mcroute._quality.quality",
    "estimate_q": "mcroute._labeled.q_estimate",
    "parse_q": "mcroute._quality.quality",
    "save_dataset": "mcroute._labeled.export",
    "summarize": "mcroute._labeled.results",
    "shared_data_dir": "mcroute._base.resources",
    "Correlated": "mcroute._routing.composite",
    "GroupLimited": "mcroute._routing.composite",
    "LogNormal": "mcroute._routing.distributions",
    "Popularity": "mcroute._routing.distributions",
    "Routing": "mcroute._routing.distributions",
    "Uniform": "mcroute._routing.distributions",
    "Zipf": "mcroute._routing.distributions",
    "active_experts_variance": "mcroute._routing.sampling",
    "device_map": "mcroute._routing.sampling",
    "expected_active_experts": "mcroute._routing.sampling",
    "expert_load_distribution": "mcroute._routing.sampling",
    "load_histogram": "mcroute._routing.sampling",
    "microbatch_stats": "mcroute._routing.sampling",
    "sample_assignments": "mcroute._routing.sampling",
    "sample_counts": "mcroute._routing.sampling",
    "iter_counts": "mcroute._routing.sampling",
    "simulate": "mcroute._labeled.simulate",
    "load_sweep_spec": "mcroute.sweeps.core",
    "sweep": "mcroute.sweeps.core",
    "SweepInterrupted": "mcroute.sweeps.run",
    "decode_throughput": "mcroute._labeled.throughput",
    "Overdispersed": "mcroute._traces.overdispersed",
    "PopularityTrace": "mcroute._traces.trace",
    "Trace": "mcroute._traces.trace",
    "fit_correlated": "mcroute._labeled.trace_fit",
    "fit_routing": "mcroute._labeled.trace_fit",
    "fitted_routing": "mcroute._labeled.trace_fit",
    "inspect_trace": "mcroute._labeled.trace_fit",
    "real_batch_check": "mcroute._labeled.trace_fit",
    "load_trace": "mcroute._traces.io",
    "save_trace": "mcroute._traces.io",
}

if TYPE_CHECKING:  # static type checkers and IDEs see ordinary imports
    from mcroute._base.resources import shared_data_dir
    from mcroute._cards.cards import (
        HardwareSpec,
        LayerSpec,
        ModelSpec,
        dtype_bytes,
        list_hardware,
        list_models,
        load_hardware,
        load_model,
    )
    from mcroute._cost.deployment import Deployment, roofline_time
    from mcroute._labeled.export import save_dataset
    from mcroute._labeled.paper import paper_cases
    from mcroute._labeled.q_estimate import estimate_q
    from mcroute._labeled.qs import min_gpus, qs_analysis
    from mcroute._labeled.results import summarize
    from mcroute._labeled.simulate import simulate
    from mcroute._labeled.throughput import decode_throughput
    from mcroute._labeled.trace_fit import (
        fit_correlated,
        fit_routing,
        fitted_routing,
        inspect_trace,
        real_batch_check,
    )
    from mcroute._quality.quality import EstimateQ, QSpec, as_q, parse_q
    from mcroute._routing.composite import Correlated, GroupLimited
    from mcroute._routing.distributions import (
        LogNormal,
        Popularity,
        Routing,
        Uniform,
        Zipf,
    )
    from mcroute._routing.placement import Placement, balanced_placement
    from mcroute._routing.sampling import (
        active_experts_variance,
        device_map,
        expected_active_experts,
        expert_load_distribution,
        iter_counts,
        load_histogram,
        microbatch_stats,
        sample_assignments,
        sample_counts,
    )
    from mcroute._traces.io import load_trace, save_trace
    from mcroute._traces.overdispersed import Overdispersed
    from mcroute._traces.trace import PopularityTrace, Trace
    from mcroute._twin.twin import dense_twin
    from mcroute.sweeps.core import load_sweep_spec, sweep
    from mcroute.sweeps.run import SweepInterrupted

__all__ = [
    "Correlated",
    "Deployment",
    "EstimateQ",
    "GroupLimited",
    "HardwareSpec",
    "LayerSpec",
    "LogNormal",
    "McrouteError",
    "ModelSpec",
    "Overdispersed",
    "Placement",
    "Popularity",
    "PopularityTrace",
    "QSpec",
    "Routing",
    "SweepInterrupted",
    "Trace",
    "Uniform",
    "Zipf",
    "__version__",
    "active_experts_variance",
    "as_q",
    "balanced_placement",
    "decode_throughput",
    "dense_twin",
    "device_map",
    "dtype_bytes",
    "estimate_q",
    "expected_active_experts",
    "expert_load_distribution",
    "fit_correlated",
    "fit_routing",
    "fitted_routing",
    "inspect_trace",
    "iter_counts",
    "list_hardware",
    "list_models",
    "load_hardware",
    "load_histogram",
    "load_model",
    "load_sweep_spec",
    "load_trace",
    "microbatch_stats",
    "min_gpus",
    "paper_cases",
    "parse_q",
    "qs_analysis",
    "real_batch_check",
    "roofline_time",
    "sample_assignments",
    "sample_counts",
    "save_dataset",
    "save_trace",
    "shared_data_dir",
    "simulate",
    "summarize",
    "sweep",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mcroute' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

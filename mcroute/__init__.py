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

from ._validate import McrouteError
from ._version import __version__

#: Public name -> private module (relative to this package) that defines it.
_LAZY = {
    "Placement": "_placement",
    "balanced_placement": "_placement",
    "HardwareSpec": "_cards",
    "LayerSpec": "_cards",
    "ModelSpec": "_cards",
    "dtype_bytes": "_cards",
    "list_hardware": "_cards",
    "list_models": "_cards",
    "load_hardware": "_cards",
    "load_model": "_cards",
    "Deployment": "_cost",
    "roofline_time": "_cost",
    "dense_twin": "_qs",
    "min_gpus": "_qs",
    "qs_analysis": "_qs",
    "EstimateQ": "_quality",
    "QSpec": "_quality",
    "as_q": "_quality",
    "estimate_q": "_quality",
    "parse_q": "_quality",
    "save_dataset": "_results",
    "Correlated": "_routing",
    "GroupLimited": "_routing",
    "LogNormal": "_routing",
    "Popularity": "_routing",
    "Routing": "_routing",
    "Uniform": "_routing",
    "Zipf": "_routing",
    "active_experts_variance": "_sampling",
    "device_map": "_sampling",
    "expected_active_experts": "_sampling",
    "expert_load_distribution": "_sampling",
    "load_histogram": "_sampling",
    "microbatch_stats": "_sampling",
    "sample_assignments": "_sampling",
    "sample_counts": "_sampling",
    "simulate": "_simulate",
    "load_sweep_spec": "_sweep",
    "sweep": "_sweep",
    "decode_throughput": "_throughput",
    "Overdispersed": "_traces",
    "PopularityTrace": "_traces",
    "Trace": "_traces",
    "fit_correlated": "_traces_fit",
    "fit_routing": "_traces_fit",
    "fitted_routing": "_traces_fit",
    "inspect_trace": "_traces_fit",
    "real_batch_check": "_traces_fit",
    "load_trace": "_traces_io",
    "save_trace": "_traces_io",
}

if TYPE_CHECKING:  # static type checkers and IDEs see ordinary imports
    from ._cards import (
        HardwareSpec,
        LayerSpec,
        ModelSpec,
        dtype_bytes,
        list_hardware,
        list_models,
        load_hardware,
        load_model,
    )
    from ._cost import Deployment, roofline_time
    from ._placement import Placement, balanced_placement
    from ._qs import dense_twin, min_gpus, qs_analysis
    from ._quality import EstimateQ, QSpec, as_q, estimate_q, parse_q
    from ._results import save_dataset
    from ._routing import (
        Correlated,
        GroupLimited,
        LogNormal,
        Popularity,
        Routing,
        Uniform,
        Zipf,
    )
    from ._sampling import (
        active_experts_variance,
        device_map,
        expected_active_experts,
        expert_load_distribution,
        load_histogram,
        microbatch_stats,
        sample_assignments,
        sample_counts,
    )
    from ._simulate import simulate
    from ._sweep import load_sweep_spec, sweep
    from ._throughput import decode_throughput
    from ._traces import Overdispersed, PopularityTrace, Trace
    from ._traces_fit import (
        fit_correlated,
        fit_routing,
        fitted_routing,
        inspect_trace,
        real_batch_check,
    )
    from ._traces_io import load_trace, save_trace

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
    "list_hardware",
    "list_models",
    "load_hardware",
    "load_histogram",
    "load_model",
    "load_sweep_spec",
    "load_trace",
    "microbatch_stats",
    "min_gpus",
    "parse_q",
    "qs_analysis",
    "real_batch_check",
    "roofline_time",
    "sample_assignments",
    "sample_counts",
    "save_dataset",
    "save_trace",
    "simulate",
    "sweep",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mcroute' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

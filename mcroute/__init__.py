"""mcroute: when, by how much and how surely a MoE model loses to its dense twin at decode.

Monte Carlo over token-to-expert routing feeds a roofline cost model with an HBM capacity limit;
results come with confidence intervals. See README.md and docs/.
"""

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
from ._qs import dense_twin, min_gpus, qs_analysis
from ._quality import EstimateQ, QSpec, as_q, estimate_q, parse_q
from ._results import save_dataset
from ._routing import LogNormal, Popularity, Routing, Uniform, Zipf
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
from ._traces_fit import fit_routing, fitted_routing, inspect_trace, real_batch_check
from ._traces_io import load_trace, save_trace
from ._validate import McrouteError
from ._version import __version__

__all__ = [
    "Deployment",
    "EstimateQ",
    "HardwareSpec",
    "LayerSpec",
    "LogNormal",
    "McrouteError",
    "ModelSpec",
    "Overdispersed",
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
    "decode_throughput",
    "dense_twin",
    "device_map",
    "dtype_bytes",
    "estimate_q",
    "expected_active_experts",
    "expert_load_distribution",
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

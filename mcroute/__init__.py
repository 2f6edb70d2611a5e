"""mcroute: when does a Mixture-of-Experts model lose to a quality-matched dense model at decode?

Monte Carlo over token-to-expert routing feeds a roofline cost model with an HBM capacity limit;
results come with confidence intervals. See README.md and docs/.
"""

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
from ._validate import McrouteError
from ._version import __version__

__all__ = [
    "LogNormal",
    "McrouteError",
    "Popularity",
    "Routing",
    "Uniform",
    "Zipf",
    "__version__",
    "active_experts_variance",
    "device_map",
    "expected_active_experts",
    "expert_load_distribution",
    "load_histogram",
    "microbatch_stats",
    "sample_assignments",
    "sample_counts",
    "save_dataset",
    "simulate",
]

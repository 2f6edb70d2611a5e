"""Pin the public API so that changes to it are deliberate (DESIGN.md §4)."""

import mcroute

PUBLIC = sorted(
    [
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
)


def test_all_is_pinned():
    assert sorted(mcroute.__all__) == PUBLIC


def test_every_name_exists():
    for name in mcroute.__all__:
        assert hasattr(mcroute, name), name

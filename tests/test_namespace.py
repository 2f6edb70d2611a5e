"""Pin the public API so that changes to it are deliberate (DESIGN.md §4)."""

import mcroute

PUBLIC = sorted(
    [
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
)


def test_all_is_pinned():
    assert sorted(mcroute.__all__) == PUBLIC


def test_every_name_exists():
    for name in mcroute.__all__:
        assert hasattr(mcroute, name), name

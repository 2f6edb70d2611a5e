"""Pin the public API (README.md, docs/schema.md) so that changes to it are deliberate."""

import mcroute

PUBLIC = sorted(
    [
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
)


def test_all_is_pinned():
    assert sorted(mcroute.__all__) == PUBLIC


def test_every_name_exists():
    for name in mcroute.__all__:
        assert hasattr(mcroute, name), name


def test_import_is_light():
    # `import mcroute` must not pull in the heavy dependencies; they load on first use of a
    # function that needs them (issue 15). Checked in a fresh interpreter.
    import subprocess
    import sys

    code = ("import sys, mcroute; heavy = ['xarray', 'pandas', 'scipy.stats', 'matplotlib', "
            "'dask', 'numba']; print([m for m in heavy if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lazy_names_resolve_to_their_modules():
    import importlib

    for name, module in mcroute._LAZY.items():
        obj = getattr(mcroute, name)
        assert obj is getattr(importlib.import_module(module), name)
    assert set(mcroute._LAZY) | {"McrouteError", "__version__"} == set(mcroute.__all__)

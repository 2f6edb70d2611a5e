"""docs/schema.md lists every variable the labeled functions return (and is kept true)."""

import re
from pathlib import Path

import mcroute as mr

SCHEMA = (Path(__file__).resolve().parent.parent / "docs" / "schema.md").read_text()
DOCUMENTED = set(re.findall(r"`([a-z_][a-z0-9_]*)`", SCHEMA))
SUFFIXES = ("_mean", "_se", "_ci", "_q")


def _base(name):
    for s in SUFFIXES:
        if name.endswith(s) and name[: -len(s)] + "" in DOCUMENTED:
            return name[: -len(s)]
    return name


def _check(ds):
    missing = sorted({_base(n) for n in ds.data_vars} - DOCUMENTED)
    assert not missing, f"not documented in docs/schema.md: {missing}"
    for name, var in ds.variables.items():
        assert "units" in var.attrs, f"{name} has no units attr"
    for dim in ds.dims:
        assert dim in ds.coords


def test_simulate_schema():
    _check(mr.simulate(mr.Zipf(16, 2, 1.0), [2, 8], 20, rng=0, expert_load=True, histogram=True))


def test_throughput_schema():
    dep = mr.Deployment("mixtral-8x7b", "h100-sxm", 2)
    _check(mr.decode_throughput(dep, ["1k", "8k"], n_trials=8, rng=0))
    _check(mr.decode_throughput(dep, "1k", batch_size=[1, 4], n_trials=8, rng=0))


def test_qs_schema():
    _check(mr.qs_analysis("mixtral-8x7b", "h100-sxm", 2, [2.0, 3.0], ["1k", "8k"], n_trials=8,
                          rng=0))
    _check(mr.qs_analysis("mixtral-8x7b", "h100-sxm", 2, "lognormal:2,0.3", ["1k", "8k"],
                          n_trials=8, n_q_samples=4, rng=0))

"""``mcroute warmup``: compile every numba kernel the commands use, ahead of the first run.

Front end (5). numba compiles each kernel on its first call and caches the machine code on disk
(``__pycache__`` beside ``mcroute/_kernels.py``, ``NUMBA_CACHE_DIR``, or the user-wide cache of
a read-only install). On an empty cache the first ``mcroute qs`` spends most of its time
compiling; ``mcroute warmup`` does that work once, with progress, by running each sampler and
cost path the commands use on tiny inputs (the kernels' signatures do not depend on the sizes).
"""

from __future__ import annotations

import time


def register(sub) -> None:
    """Add the ``warmup`` subcommand."""
    p = sub.add_parser(
        "warmup",
        help="compile the numba kernels every command uses (once; later runs start fast)",
        description="Compiles and caches every kernel signature the commands use, on tiny "
        "inputs, printing one line per step. The first run of a command on an empty kernel "
        "cache otherwise spends a minute or two compiling.",
    )
    p.set_defaults(func=run)


def _uniform(mr):
    mr.simulate(mr.Uniform(64, 4), [1, 8], n_trials=8, n_devices=4, rng=0, histogram=True,
                progress=False)
    mr.simulate(mr.Uniform(16, 1), 8, n_trials=8, rng=0, progress=False)
    mr.sample_counts(mr.Uniform(8, 2), 4096, 8, rng=0, method="counts")
    mr.sample_counts(mr.Uniform(8, 2), 16, 8, rng=0, method="assignment")


def _weighted(mr):
    for routing in (mr.Zipf(64, 4, 1.2), mr.LogNormal(64, 4, 1.0),
                    mr.Popularity([0.5, 0.3, 0.2])):
        mr.simulate(routing, [1, 8], n_trials=8, n_devices=1, rng=0, progress=False)
    mr.sample_counts(mr.Zipf(64, 1, 1.2), 8192, 8, rng=0, method="counts")


def _composite(mr):
    for routing in (mr.GroupLimited(mr.Uniform(64, 4), 8, 2),
                    mr.GroupLimited(mr.Zipf(64, 4, 1.2), 8, 2),
                    mr.Correlated(mr.Zipf(64, 4, 1.2), 0.5),
                    mr.Correlated(mr.Uniform(64, 4), 0.5)):
        mr.simulate(routing, 8, n_trials=8, rng=0, progress=False)


def _trace(mr):
    import numpy as np

    rng = np.random.default_rng(0)
    experts = np.argsort(rng.random((64, 2, 8)), axis=2)[:, :, :2]
    tr = mr.Trace(experts, 8, sequence=np.arange(64) % 4, step=np.arange(64) // 4)
    mr.simulate(tr, 4, n_trials=8, n_layers=2, rng=0, progress=False)


def _throughput(mr):
    dep = mr.Deployment("qwen3-235b-a22b", "h200", 8)
    mr.decode_throughput(dep, "4k", 8, n_trials=4, rng=0, progress=False)
    roof = mr.Deployment("qwen3-235b-a22b", "h200", 8, kernels="roofline")
    mr.decode_throughput(roof, "4k", 8, n_trials=4, rng=0, progress=False)
    ds3 = mr.Deployment("deepseek-v3", "h200", 8, attention_parallel="data")
    mr.decode_throughput(ds3, "4k", 8, n_trials=4, rng=0, progress=False)


def _qs(mr):
    mr.qs_analysis("qwen3-235b-a22b", "h200", 8, 2.0, "4k", n_trials=4, rng=0, progress=False)


#: (label, step) of the warm-up; every step is a tiny call through the public API.
STEPS = (
    ("uniform routing (per assignment, top-1, count space)", _uniform),
    ("weighted routing (Zipf, log-normal, explicit popularity)", _weighted),
    ("group-limited and correlated routing", _composite),
    ("real router traces", _trace),
    ("decode throughput (calibrated kernels and roofline)", _throughput),
    ("qs analysis", _qs),
)


def run(args, out=None) -> int:
    """Run ``mcroute warmup``: one line per step with its time, then the total."""
    import mcroute as mr

    out = out or (lambda s: print(s, flush=True))
    t_all = time.perf_counter()
    for i, (label, step) in enumerate(STEPS, 1):
        t0 = time.perf_counter()
        step(mr)
        out(f"[{i}/{len(STEPS)}] {label}: {time.perf_counter() - t0:.1f} s")
    out(f"kernels compiled and cached in {time.perf_counter() - t_all:.1f} s; "
        "later runs start without compiling")
    return 0

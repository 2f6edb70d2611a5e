"""Same seed ⇒ bit-identical arrays whatever NUMBA_NUM_THREADS is (run in subprocesses).

Covers the samplers, simulate, decode_throughput and qs_analysis.
"""

import hashlib
import os
import subprocess
import sys

SCRIPT = r"""
import hashlib, numpy as np, mcroute as mr
h = hashlib.sha256()
# every per-assignment sampler: stamp rejection, Fisher-Yates, subset table, top-1, weighted
# fast path, weighted slow path (two experts hold 0.95 of the mass)
for r in [mr.Uniform(64, 8), mr.Uniform(8, 6), mr.Uniform(8, 2), mr.Uniform(500, 1),
          mr.Zipf(64, 4, 1.2), mr.LogNormal(32, 2, 1.0),
          mr.Popularity([70, 25, 2, 1, 1, 1], top_k=3)]:
    for method in ("assignment", "auto"):
        h.update(mr.sample_counts(r, 50, 100, n_layers=2, rng=42, method=method).tobytes())
h.update(mr.sample_counts(mr.Uniform(64, 8), 5000, 40, rng=42, method="counts").tobytes())
h.update(mr.sample_counts(mr.Zipf(64, 1, 1.0), 5000, 40, rng=42, method="counts").tobytes())
ds = mr.simulate(mr.Zipf(64, 4, 1.0), [4, 64], 70, n_devices=4, rng=42)
h.update(ds["active_experts"].values.tobytes() + ds["max_device_load"].values.tobytes())
print(h.hexdigest())
"""


# The entry points above the samplers: decode throughput (Zipf routing, admissible and explicit
# batches, two contexts, expert parallelism over 8 GPUs) and the qs analysis (point q values,
# and an uncertain q whose draws are clustered). Every per-trial and summary array is hashed.
SCRIPT_ENTRY = r"""
import hashlib, numpy as np, mcroute as mr
h = hashlib.sha256()
def put(ds):
    for name in sorted(ds.data_vars):
        v = ds[name].values
        if v.dtype.kind in "fiub":
            h.update(name.encode() + np.ascontiguousarray(v).tobytes())
dep = mr.Deployment("qwen3-235b-a22b", "h200", 8)
r = mr.Zipf(dep.n_experts, dep.top_k, 1.1)
put(mr.decode_throughput(dep, ["4k", "32k"], routing=r, n_trials=48, rng=7))
put(mr.decode_throughput(dep, 4096, batch_size=[16, 200], routing=r, n_trials=48, rng=7,
                         method="assignment"))
put(mr.qs_analysis("qwen3-235b-a22b", "h200", 8, [2.0, 5.0], ["4k", "64k"], n_trials=32, rng=7))
put(mr.qs_analysis("qwen3-235b-a22b", "h200", 8, "lognormal:3,0.3", 8192, n_trials=32,
                   n_q_samples=8, rng=7))
print(h.hexdigest())
"""


def _digest(threads: int, script: str = SCRIPT) -> str:
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, check=True, timeout=600)
    return out.stdout.strip()


def test_bit_identical_on_one_and_two_threads():
    one, two = _digest(1), _digest(2)
    assert len(one) == len(hashlib.sha256().hexdigest())
    assert one == two


def test_throughput_and_qs_bit_identical_on_one_and_two_threads():
    one, two = _digest(1, SCRIPT_ENTRY), _digest(2, SCRIPT_ENTRY)
    assert len(one) == len(hashlib.sha256().hexdigest())
    assert one == two

"""Same seed ⇒ bit-identical arrays whatever NUMBA_NUM_THREADS is (run in subprocesses)."""

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


def _digest(threads: int) -> str:
    env = {**os.environ, "NUMBA_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                         check=True, timeout=600)
    return out.stdout.strip()


def test_bit_identical_on_one_and_two_threads():
    one, two = _digest(1), _digest(2)
    assert len(one) == len(hashlib.sha256().hexdigest())
    assert one == two

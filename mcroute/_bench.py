"""``mcroute bench``: speed of the samplers, measured side by side in one run.

May import: everything below the CLI. Prints ratios, one figure per line
(``name value target verdict``), so a script can read them; absolute times drift on a shared
machine, ratios measured in the same run do not (much). Each figure is the median of several
interleaved repetitions.
"""

from __future__ import annotations

import time
from functools import partial

import numba
import numpy as np

from . import _kernels as K
from ._rng import CHUNK_TRIALS, chunk_seeds
from ._routing import Uniform, Zipf
from ._sampling import COUNTSPACE_MIN_TOKENS_PER_EXPERT, draw_counts

#: (E, k, B, routing kind) cases of the issue.
CASES = [
    (256, 8, 512, "uniform"),
    (128, 8, 64, "uniform"),
    (8, 2, 256, "uniform"),
    (2048, 1, 4096, "uniform"),
    (256, 8, 512, "zipf:1.2"),
]


#: Target for weighted (Zipf) per-assignment cost, × the RNG floor. Decided on issue 2: the
#: original <= 3 was relaxed to <= 5 after the measured attempts in docs/sampling.md (the
#: sampler stands at about 4.3x); uniform routing keeps its target of 2.
ZIPF_FLOOR_TARGET = 5.0


def _routing(e, k, kind):
    return Uniform(e, k) if kind == "uniform" else Zipf(e, k, float(kind.split(":")[1]))


def _numpy_counts(routing, batch, n_trials, rng):
    """The straightforward NumPy sampler: random keys per token, argpartition, bincount."""
    e, k = routing.n_experts, routing.top_k
    logw = None if routing.kind == "uniform" else np.log(routing.popularity(1)[0])
    out = np.zeros((n_trials, e), dtype=np.int64)
    for t in range(n_trials):
        keys = rng.random((batch, e))
        if logw is not None:  # Gumbel-top-k over log-weights = Plackett–Luce
            keys = -(logw - np.log(-np.log(keys)))
        if k < e:
            top = np.argpartition(keys, k - 1, axis=1)[:, :k]
        else:
            top = np.tile(np.arange(e), (batch, 1))
        out[t] = np.bincount(top.ravel(), minlength=e)
    return out


def _time(fn, reps):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return ts


def _median_ratio(fa, fb, reps):
    """Median over interleaved repetitions of time(fa) / time(fb)."""
    ratios, ta, tb = [], [], []
    for _ in range(reps):
        a = _time(fa, 1)[0]
        b = _time(fb, 1)[0]
        ratios.append(a / b)
        ta.append(a)
        tb.append(b)
    return float(np.median(ratios)), float(np.median(ta)), float(np.median(tb))


def run(quick: bool = False, out=print) -> list[tuple[str, float, str, bool]]:
    """Run the benchmark; print and return ``(name, value, target, met)`` per figure."""
    reps = 3 if quick else 7
    scale = 0.25 if quick else 1.0
    results = []

    def report(name, value, target_op, target, detail=""):
        met = value >= target if target_op == ">=" else value <= target
        results.append((name, value, f"{target_op} {target:g}", met))
        out(f"{name:<48} {value:10.3f}  target {target_op} {target:<5g} "
            f"{'ok' if met else 'MISSED'}  {detail}".rstrip())

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        for e, k, b, kind in CASES:
            routing = _routing(e, k, kind)
            n_assign_target = int(4e6 * scale)
            nt = max(CHUNK_TRIALS, n_assign_target // (b * k) // CHUNK_TRIALS * CHUNK_TRIALS)
            n_assign = nt * b * k
            seeds = chunk_seeds(1, nt)
            method = "auto"
            ours = partial(draw_counts, routing, b, nt, 1, 1, (), method)
            floor = partial(K.uniform_floor, seeds, CHUNK_TRIALS, nt, b * k)
            ours()
            floor()  # compile
            r_floor, t_ours, t_floor = _median_ratio(ours, floor, reps)
            label = f"E={e},k={k},B={b},{kind}"
            ns = t_ours / n_assign * 1e9
            limit = 2.0 if kind == "uniform" else ZIPF_FLOOR_TARGET
            report(f"per_assignment_vs_floor[{label}]", r_floor, "<=", limit,
                   f"({ns:.2f} ns/assignment, floor {t_floor / n_assign * 1e9:.2f} ns)")
            nt_np = max(2, int(200_000 * scale) // (b * e) + 1)
            rng = np.random.default_rng(0)
            numpy_fn = partial(_numpy_counts, routing, b, nt_np, rng)
            t_np = float(np.median(_time(numpy_fn, max(2, reps // 2))))
            np_ns = t_np / (nt_np * b * k) * 1e9
            report(f"numpy_over_ours[{label}]", np_ns / ns, ">=", 30.0,
                   f"(numpy {np_ns:.1f} ns/assignment)")
    finally:
        numba.set_num_threads(threads)

    # (c) threads: 1 vs 2 at n_trials >= 1000
    if threads >= 2:
        routing = Uniform(256, 8)
        nt = 1024 if quick else 2048

        def with_threads(n):
            def f():
                numba.set_num_threads(n)
                try:
                    draw_counts(routing, 512, nt, 1, 2, (), "assignment")
                finally:
                    numba.set_num_threads(threads)
            return f

        r, _, _ = _median_ratio(with_threads(1), with_threads(2), reps)
        report(f"threads_2_over_1[E=256,k=8,B=512,trials={nt}]", r, ">=", 1.6)
    else:
        out("threads_2_over_1: skipped (numba sees 1 thread)")

    # (d) count-space vs per-assignment (uniform E=256, k=8)
    routing = Uniform(256, 8)
    b = 65536
    pa = partial(draw_counts, routing, b, CHUNK_TRIALS, 1, 3, (), "assignment")
    cs = partial(draw_counts, routing, b, CHUNK_TRIALS, 1, 3, (), "counts")
    pa()
    cs()
    r_big, _, _ = _median_ratio(pa, cs, reps)
    report(f"countspace_speedup[E=256,k=8,B={b}]", r_big, ">=", 4.0)
    # crossover: smallest B (powers of 2) where count-space is faster; "auto" switches at
    # B/E >= COUNTSPACE_MIN_TOKENS_PER_EXPERT["uniform"]. B = 65536 was measured just above.
    cross = None
    for b in (2048, 4096, 8192, 16384, 32768):
        nt = CHUNK_TRIALS * max(1, 16384 // b)
        pa = partial(draw_counts, routing, b, nt, 1, 3, (), "assignment")
        cs = partial(draw_counts, routing, b, nt, 1, 3, (), "counts")
        pa()
        cs()
        r, _, _ = _median_ratio(pa, cs, reps)
        out(f"countspace_speedup[E=256,k=8,B={b}]{'':<14} {r:10.3f}  (information)")
        if r > 1.0 and cross is None:
            cross = b
    if cross is None and r_big > 1.0:
        cross = 65536
    auto = COUNTSPACE_MIN_TOKENS_PER_EXPERT["uniform"]
    out(f"countspace_crossover_batch[E=256,k=8] {cross if cross else '>65536'} "
        f"(B/E = {cross / 256 if cross else float('nan'):g}; auto switches at B/E >= {auto:g})")
    missed = sum(not met for *_, met in results)
    out(f"{len(results) - missed} of {len(results)} figures met their targets. The figures are "
        f"informational: the exit status does not depend on them (ratios drift by about ±20% "
        f"on a shared machine).")
    return results

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

import mcroute as mr
from mcroute import _kernels as K
from mcroute._base.rng import CHUNK_TRIALS, chunk_seeds, generator, resolve_seed
from mcroute._cost.calibrated import calibrated_step, group_loads, slot_loads
from mcroute._labeled.qs import (
    PAPER_CASES,
    PAPER_CONTEXTS,
    PAPER_GPUS,
    PAPER_HARDWARE,
    default_q,
)
from mcroute._routing.distributions import Uniform, Zipf
from mcroute._routing.sampling import COUNTSPACE_MIN_TOKENS_PER_EXPERT, draw_counts

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


#: The calibrated cost model's figure (issue 13): DeepSeek-V3, fp8 weights, 8 x H200.
CALIBRATED_CASE = ("deepseek-v3", "h200", 8, "fp8")
CALIBRATED_CONTEXTS = (4096, 32768, 131072)
#: Target: calibrated decode_throughput at most this many times the roofline path's time.
CALIBRATED_TARGET = 2.0


def calibrated_vs_roofline(reps: int = 5, n_trials: int = 1000):
    """Time of the calibrated ``decode_throughput`` over the roofline path's, same work.

    DeepSeek-V3 (fp8) on 8 x H200 at :data:`CALIBRATED_CONTEXTS`, ``n_trials`` trials, both
    at the batch the calibrated deployment admits at each context (engine memory layout), so
    that both sample the same tokens and the ratio is the cost of the calibrated arithmetic.
    Median over ``reps`` interleaved repetitions, after one warm-up call of each.

    Returns ``(ratio, seconds calibrated, seconds roofline, own-batch ratio, batches)``; the
    own-batch ratio times each path at its own admissible batches (``batch_size="max"``: the
    roofline's ideal layout admits about 8x more sequences, so it samples more tokens).
    """
    model, hw, n, dtype = CALIBRATED_CASE
    cal = mr.Deployment(model, hw, n, weight_dtype=dtype)
    roof = mr.Deployment(model, hw, n, weight_dtype=dtype, kernels="roofline")
    batches = [cal.max_batch_size(L) for L in CALIBRATED_CONTEXTS]

    def same(dep):
        def f():
            for L, b in zip(CALIBRATED_CONTEXTS, batches, strict=True):
                mr.decode_throughput(dep, L, b, n_trials=n_trials, rng=0)
        return f

    def own(dep):
        def f():
            mr.decode_throughput(dep, list(CALIBRATED_CONTEXTS), n_trials=n_trials, rng=0)
        return f

    for f in (same(cal), same(roof), own(cal), own(roof)):
        f()  # compile, load cards and caches
    r, t_cal, t_roof = _median_ratio(same(cal), same(roof), reps)
    r_own, _, _ = _median_ratio(own(cal), own(roof), max(1, reps // 2))
    return r, t_cal, t_roof, r_own, batches


def _reporter(results: list, out):
    """``report(name, value, op, target, detail)``: print one figure line and keep it."""

    def report(name, value, target_op, target, detail=""):
        met = value >= target if target_op == ">=" else value <= target
        results.append((name, value, f"{target_op} {target:g}", met))
        out(f"{name:<48} {value:10.3f}  target {target_op} {target:<5g} "
            f"{'ok' if met else 'MISSED'}  {detail}".rstrip())

    return report


def _closing_line(results: list, out) -> None:
    missed = sum(not met for *_, met in results)
    line = f"{len(results) - missed} of {len(results)} figures met their targets."
    if missed:
        line += (f" {missed} MISSED: the figures are informational and the exit status stays 0 "
                 "(ratios drift by about ±20% on a shared machine).")
    else:
        line += (" The figures are informational: the exit status does not depend on them "
                 "(ratios drift by about ±20% on a shared machine).")
    out(line)


def run(quick: bool = False, out=print) -> list[tuple[str, float, str, bool]]:
    """Run the benchmark; print and return ``(name, value, target, met)`` per figure."""
    reps = 3 if quick else 7
    scale = 0.25 if quick else 1.0
    results = []

    report = _reporter(results, out)

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
    by_batch = []
    for b in (2048, 4096, 8192, 16384, 32768):
        nt = CHUNK_TRIALS * max(1, 16384 // b)
        pa = partial(draw_counts, routing, b, nt, 1, 3, (), "assignment")
        cs = partial(draw_counts, routing, b, nt, 1, 3, (), "counts")
        pa()
        cs()
        r, _, _ = _median_ratio(pa, cs, reps)
        by_batch.append(f"B={b}: {r:.3f}")
        if r > 1.0 and cross is None:
            cross = b
    out(f"countspace_speedup_smaller_batches[E=256,k=8] {', '.join(by_batch)}  (information)")
    if cross is None and r_big > 1.0:
        cross = 65536
    auto = COUNTSPACE_MIN_TOKENS_PER_EXPERT["uniform"]
    out(f"countspace_crossover_batch[E=256,k=8] {cross if cross else '>65536'} "
        f"(B/E = {cross / 256 if cross else float('nan'):g}; auto switches at B/E >= {auto:g})")
    # (e) the calibrated cost model against the roofline path (issue 13)
    r, t_cal, t_roof, r_own, batches = calibrated_vs_roofline(reps)
    model, hw, n, dtype = CALIBRATED_CASE
    ctx = ",".join(f"{L // 1024}k" for L in CALIBRATED_CONTEXTS)
    report(f"calibrated_over_roofline[{model},{dtype},{n}x{hw},{ctx},1000 trials]", r, "<=",
           CALIBRATED_TARGET, f"({t_cal * 1e3:.0f} ms vs {t_roof * 1e3:.0f} ms, both at the "
           f"calibrated batches {batches})")
    out(f"calibrated_over_roofline_own_batches[{model}]{'':<17} {r_own:10.3f}  "
        f"(information: the roofline's ideal layout admits about 8x larger batches)")
    _closing_line(results, out)
    return results


# -- answers: per-point cost, cold start and import time (issue 15) ---------------------------
def _subprocess_seconds(code: str, env=None) -> float:
    """Wall time of ``python -c code`` in a fresh interpreter."""
    import subprocess
    import sys

    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _qs_floor_case(model, options, contexts, n_trials, q_draws):
    """Sampling and step-time arithmetic of one paper case, as ``qs_analysis`` runs it.

    Returns ``(seconds of sampling, seconds of arithmetic)``. Sampling: the MoE's counts at its
    admissible batch for every context, with the card's routing (group-limited for
    DeepSeek-V3). Arithmetic: the MoE's slot and group loads, its roofline step time (the bound)
    and its calibrated step time (``mcroute._cost.calibrated.calibrated_step``) over all trials;
    for every draw of q, the twin's admissible batch and its bound and calibrated step times
    for the trials using that draw, at its own batch and at the reuse batch (the smaller
    admissible one). Cards, deployments, kernel parameters and layouts are built before the
    clock starts.
    """
    dep = mr.Deployment(model, PAPER_HARDWARE, PAPER_GPUS, **options)
    twin_opts = {**options, "replicate_dense": False}  # as qs_analysis builds the twin
    twins = [mr.Deployment(mr.dense_twin(dep.model, q), PAPER_HARDWARE, PAPER_GPUS, **twin_opts)
             for q in q_draws]
    routing = dep.model.default_routing()  # as qs_analysis routes it
    params = dep.kernel_params(n_trials, 0)
    layout = dep.expert_layout(routing)
    r = dep.tokens_per_seq
    draw_of_trial = np.arange(n_trials) % len(q_draws)
    mine = [np.flatnonzero(draw_of_trial == i) for i in range(len(q_draws))]
    twin_params = [{k: (np.asarray(v)[idx] if np.ndim(v) else v)
                    for k, v in tw.kernel_params(n_trials, 0).items()}
                   for tw, idx in zip(twins, mine, strict=True)]
    t_sample = t_arith = 0.0
    for L in contexts:
        B = dep.max_batch_size(L)
        t0 = time.perf_counter()
        counts = (mr.sample_counts(routing, B * r, n_trials, dep.n_moe_layers, rng=0)
                  if B >= 1 else None)
        t1 = time.perf_counter()
        if B >= 1:
            gl = group_loads(slot_loads(counts, layout), layout)
            tok = gl.sum(axis=-1).max(axis=-1).astype(float)
            act = (gl > 0).sum(axis=-1).max(axis=-1).astype(float)
            dep.step_time(L, B, tok, act)
            calibrated_step(dep, L, B, gl, params, n_trials=n_trials, tokens_per_seq=r)
        for tw, p, idx in zip(twins, twin_params, mine, strict=True):
            b = tw.max_batch_size(L)
            for bb in {b, min(b, B)}:
                if bb >= 1 and idx.size:
                    tw.step_time(L, bb)
                    calibrated_step(tw, L, bb, None, p, n_trials=idx.size, tokens_per_seq=r)
        t2 = time.perf_counter()
        t_sample += t1 - t0
        t_arith += t2 - t1
    return t_sample, t_arith


def _qs_floor(cases, contexts, n_trials, q_draws):
    """The work ``qs_analysis`` cannot avoid: its sampling and its step-time arithmetic.

    ``q_draws`` maps each model to its draws of q. Returns ``(seconds of sampling, seconds of
    arithmetic)`` summed over the paper cases (see :func:`_qs_floor_case`).
    """
    t_sample = t_arith = 0.0
    for model, options in cases:
        s, a = _qs_floor_case(model, options, contexts, n_trials, q_draws[model])
        t_sample += s
        t_arith += a
    return t_sample, t_arith


def run_answers(quick: bool = False, out=print) -> list[tuple[str, float, str, bool]]:
    """How fast answers come: per-point cost, the main job, cold start, import, caching.

    One figure per line, each a ratio of times measured side by side in this run (medians of
    repetitions), with its target; points per second are printed for information.
    """
    import os
    import tempfile

    reps = 3 if quick else 5
    results = []

    report = _reporter(results, out)

    # 1. a dense decode_throughput point against its bare step-time arithmetic
    dense = mr.Deployment("llama-3.1-70b", "h100-sxm", 8)
    L = 8192

    def api_point():
        mr.decode_throughput(dense, L, n_trials=1000, rng=0)

    def bare_point():
        dense.step_breakdown(L, dense.max_batch_size(L))

    params = dense.kernel_params(1000, 0)

    def trials_arithmetic():
        # the same point's arithmetic over its 1000 trials of kernel parameters (calibrated)
        b = dense.max_batch_size(L)
        dense.step_time(L, b)
        calibrated_step(dense, L, b, None, params, n_trials=1000)

    api_point()
    r, t_api, t_bare = _median_ratio(api_point, bare_point, reps * 4)
    report("dense_point_api_over_arithmetic[llama-3.1-70b,8xh100,8k]", r, "<=", 3.0,
           f"({t_api * 1e3:.2f} ms vs {t_bare * 1e3:.2f} ms)")
    r_t, _, t_trials = _median_ratio(api_point, trials_arithmetic, reps * 4)
    out(f"dense_point_api_over_1000_trial_arithmetic{'':<8} {r_t:10.3f}  (information: the "
        f"calibrated arithmetic of the point's 1000 trials alone takes {t_trials * 1e3:.2f} ms)")

    # 2. qs_analysis of the paper's four models against its sampling + arithmetic
    n_trials = 100 if quick else 400
    qspecs = {m: default_q(m)[0] for m, _ in PAPER_CASES}
    n_q = 64 if quick else 256

    def qs_all():
        for m, options in PAPER_CASES:
            mr.qs_analysis(m, "h200", 8, q=qspecs[m], context=list(PAPER_CONTEXTS),
                           n_trials=n_trials, n_q_samples=n_q, rng=0, **options)

    qs_all()  # compile and load
    # the draws of q that qs_analysis(rng=0) makes (its q stream)
    q_draws = {m: np.asarray(qspecs[m].sample(n_q, generator(resolve_seed(0), (7,))))
               for m, _ in PAPER_CASES}
    t_qs = float(np.median(_time(qs_all, max(1, reps // 2))))
    floors = [_qs_floor(PAPER_CASES, PAPER_CONTEXTS, n_trials, q_draws)
              for _ in range(max(1, reps // 2))]
    t_s = float(np.median([f[0] for f in floors]))
    t_a = float(np.median([f[1] for f in floors]))
    report(f"qs_analysis_over_floor[paper cases,{n_trials} trials,{n_q} q draws]",
           t_qs / (t_s + t_a), "<=", 2.0,
           f"({t_qs:.2f} s vs sampling {t_s:.2f} s + arithmetic {t_a:.2f} s)")

    # 3. first `mcroute qs` on an empty numba cache against the warm run
    if quick:
        out("cold_start_over_warm: skipped (--quick)")
    else:
        main_job = "from mcroute.cli import main; main(['qs'])"
        warmup = "from mcroute.cli import main; main(['warmup'])"
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "NUMBA_CACHE_DIR": cache}
            cold = _subprocess_seconds(main_job, env)
            warm = _subprocess_seconds(main_job, env)
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "NUMBA_CACHE_DIR": cache}
            t_warmup = _subprocess_seconds(warmup, env)
            after = _subprocess_seconds(main_job, env)
        report("cold_start_over_warm[mcroute qs]", cold / warm, "<=", 3.0,
               f"({cold:.1f} s vs {warm:.1f} s)")
        out(f"cold_start_after_warmup_over_warm[mcroute qs]{'':<4} {after / warm:10.3f}  "
            f"(information: `mcroute warmup` {t_warmup:.1f} s on an empty cache, then the "
            f"first qs {after:.1f} s)")

    # 4. import mcroute against import numpy, numba
    ratios = []
    for _ in range(reps):
        a = _subprocess_seconds("import mcroute")
        b = _subprocess_seconds("import numpy, numba")
        ratios.append(a / b)
    report("import_mcroute_over_numpy_numba", float(np.median(ratios)), "<=", 1.5)

    # 5. Zipf simulate at E = 16384: second call against the first (deterministic work cached)
    mr.simulate(mr.Zipf(1024, 8, 1.2), 64, 64, rng=0)  # kernels loaded
    zipf = mr.Zipf(16384, 8, 1.2)
    t1 = _time(lambda: mr.simulate(zipf, 64, 256, rng=0), 1)[0]
    t2 = _time(lambda: mr.simulate(zipf, 64, 256, rng=0), 1)[0]
    report("zipf_simulate_second_over_first[E=16384]", t2 / t1, "<=", 0.3,
           f"({t2:.2f} s vs {t1:.2f} s)")

    # 6. points per second (information)
    n_dense = 20 if quick else 100
    t = _time(lambda: [mr.decode_throughput(dense, L, n_trials=1000, rng=i)
                       for i in range(n_dense)], 1)[0]
    out(f"points_per_second[dense llama-3.1-70b loop]{'':<6} {n_dense / t:10.1f}  (information)")
    ds3 = mr.Deployment("deepseek-v3", "h200", 8, weight_dtype="fp8")
    n_moe = 3 if quick else 10
    t = _time(lambda: [mr.decode_throughput(ds3, 4096, n_trials=1000, rng=i)
                       for i in range(n_moe)], 1)[0]
    out(f"points_per_second[deepseek-v3 loop, 1000 trials] {n_moe / t:10.2f}  (information)")
    _closing_line(results, out)
    return results

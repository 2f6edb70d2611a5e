# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # The qs inequality for four MoE models, with error bars
#
# This notebook reproduces the questions of "The qs Inequality" (arXiv 2603.08960) with mcroute:
# for DeepSeek-V3, Qwen3-235B-A22B, Grok-1 and Switch-C, how much faster a quality-matched dense
# twin decodes, how that changes with context, how it splits into the reuse and capacity
# penalties, whether Switch-C fits where its twin does, and under which assumptions a large dense
# advantage for DeepSeek-V3 at 128k appears.
#
# CI executes this file with few trials (`MCROUTE_NB_TRIALS`); run it with more for tight
# intervals. Figures are written to `MCROUTE_NB_OUTDIR` (default: a temporary folder) when
# matplotlib (the `plot` extra) is installed.

# %%
import json
import os
import tempfile

import numpy as np

import mcroute as mr

TRIALS = int(os.environ.get("MCROUTE_NB_TRIALS", "300"))
Q_SAMPLES = int(os.environ.get("MCROUTE_NB_Q_SAMPLES", "32"))
OUT = os.environ.get("MCROUTE_NB_OUTDIR") or tempfile.mkdtemp(prefix="mcroute-nb-")
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mcroute.plot import plot_band, save_figure

    HAVE_MPL = True
except ImportError:  # the plot extra is optional
    HAVE_MPL = False
print(f"{TRIALS} trials per point, {Q_SAMPLES} draws of q; "
      f"figures -> {OUT if HAVE_MPL else 'none'}")

# %% [markdown]
# ## 1. The four models on one 8 × H200 node
#
# The main job's cases (`mr.paper_cases()`, docs/qs.md): 8 × H200, each model in the dtype its
# weights were released in (DeepSeek-V3 fp8, Grok-1 int8, the others bf16), bf16 KV cache, 90%
# of HBM usable, calibrated kernels with the roofline bound beside them, experts spread over all
# GPUs; DeepSeek-V3's MLA attention runs data-parallel, as engines serve it, the others'
# tensor-parallel. The routing is the model card's (group-limited for DeepSeek-V3, uniform
# otherwise). q is left to its default: the benchmark-fit estimate where the shared tables allow
# one, else the scaling-law value with a log-sd of 0.5. The dense twin keeps the MoE's attention
# and KV cache ("widen").


# %%
def q_source(ds):
    """Where the default q came from, from the result's provenance."""
    spec = json.loads(ds.attrs["q"])
    source = spec.get("source") or {}
    return "benchmark fit" if source.get("method") == "fit" else "scaling law, log-normal"


CASES = mr.paper_cases()
CONTEXTS = CASES[0]["context"]
results = {}
for case in CASES:
    name = case["model"]
    ds = mr.qs_analysis(**case, n_trials=TRIALS, n_q_samples=Q_SAMPLES, rng=0)
    results[name] = ds
    print(f"\n{name}: s = {float(ds['s']):.4f}, q ~ {float(ds['q_mean']):.3g} "
          f"({q_source(ds)}), q·s = {float(ds['qs_mean']):.3g}")
    for L in CONTEXTS:
        c = ds.sel(context=L)
        if not bool(c["moe_feasible"]):
            print(f"  {L // 1024:>4}k  MoE infeasible: {str(c['moe_reason'].values)[:70]}")
            continue
        lo, hi = c["penalty_ci"].values
        print(f"  {L // 1024:>4}k  penalty {float(c['penalty_mean']):.3g} [{lo:.3g}, {hi:.3g}]"
              f"  reuse {float(c['reuse_penalty_mean']):.3g}"
              f"  batch ratio {float(np.nanmean(c['capacity_penalty'])):.3g}")

# %% [markdown]
# ## 2. Penalty against context, with bands
#
# Dark band: confidence interval of the mean penalty (routing Monte Carlo, kernel calibration
# and q). Light band: 5–95% of single decode steps (one routing draw and one draw of q each).
# The dashed line is parity (penalty = 1). Switch-C has no panel: it does not fit (section 4).

# %%
if HAVE_MPL:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), layout="constrained")
    for ax, name in zip(axes, ["deepseek-v3", "qwen3-235b-a22b", "grok-1"], strict=True):
        plot_band(results[name], "penalty", "context", ax=ax, caption=False,
                  legend=name == "grok-1")
        ax.set_title(name)
    print("figure:", save_figure(fig, os.path.join(OUT, "penalty_vs_context.png")))
    plt.close(fig)

# %% [markdown]
# ## 3. The double penalty: reuse × capacity
#
# `penalty = reuse_penalty × capacity_factor`. The reuse penalty compares both models at the
# MoE's admissible batch (weights streamed per token); the capacity factor is what the twin
# gains from its larger batch; `capacity_penalty` is the ratio of admissible batches itself.

# %%
for name in ("deepseek-v3", "qwen3-235b-a22b", "grok-1"):
    ds = results[name]
    split = ds[["penalty_mean", "reuse_penalty_mean", "capacity_factor_mean"]].to_dataframe()
    split["batch_ratio"] = ds["capacity_penalty_mean"].values
    print(f"\n{name}\n{split.round(3).to_string()}")

# %% [markdown]
# ## 4. Switch-C: infeasible where its dense twin fits
#
# Switch-C's 1.57 T parameters in bf16 need ~3.1 TB, beyond one 8 × H200 node. The smallest
# power-of-two GPU count that holds it (and one sequence's cache) is computed below, next to
# its dense twin's.

# %%
sw = results["switch-c-2048"]
print("Switch-C feasible on 8 x H200:", bool(sw["moe_feasible"].any()))
print("dense twin feasible on 8 x H200 at every context:", bool(sw["dense_feasible"].all()))
for L in (4096, 131072):
    moe_n = mr.min_gpus("switch-c-2048", "h200", L)
    twin = mr.dense_twin("switch-c-2048", float(sw["q_mean"]))
    print(f"context {L // 1024}k: Switch-C needs >= {moe_n} H200, its twin "
          f"({twin.total_params / 1e9:.1f}B) needs >= {mr.min_gpus(twin, 'h200', L)}")
ok = mr.qs_analysis("switch-c-2048", "h200", 32, 5.5, [4096, 131072], n_trials=TRIALS, rng=0)
print(ok[["penalty_mean", "reuse_penalty_mean", "capacity_penalty"]].to_dataframe().round(3))

# %% [markdown]
# ## 5. Sensitivity: when does DeepSeek-V3 lose big at 128k?
#
# One assumption changes at a time from the main job's DeepSeek-V3 case (fp8 weights,
# data-parallel MLA attention, 90% usable HBM, widen twin, group-limited routing, q from the
# benchmark fit). "Large" here means a mean penalty above 2.

# %%
DSV3 = dict(CASES[0], context=131072)
variants = {
    "main job (q fit, fp8, data-parallel attention)": {},
    "q = 0.5": {"q": 0.5},
    "q = 2": {"q": 2.0},
    "q = 4": {"q": 4.0},
    "q = 1/s (q·s = 1)": {"q": 1.0 / mr.load_model("deepseek-v3").sparsity},
    "weights bf16 on 16 GPUs": {"weight_dtype": "bf16", "n_gpus": 16},
    "tensor-parallel attention": {"attention_parallel": "tensor"},
    "hbm_fraction 0.8": {"hbm_fraction": 0.8},
    "hbm_fraction 0.95": {"hbm_fraction": 0.95},
    "dense twin: llama shape": {"dense_style": "llama"},
    "routing uniform (no groups)": {"routing": mr.Uniform(256, 8)},
    "routing zipf:1.2": {"routing": mr.Zipf(256, 8, 1.2)},
    # Llama's GQA cache does not fit one GPU at 128k: it is served tensor-parallel (both
    # models then are, as the deployment options apply to both)
    "Llama-3.1-405B as the dense model (TP attn)": {"dense_model": "llama-3.1-405b",
                                                    "attention_parallel": "tensor"},
}
rows = []
for label, change in variants.items():
    d = mr.qs_analysis(**{**DSV3, "n_trials": TRIALS, "n_q_samples": Q_SAMPLES, "rng": 0,
                          **change})
    qs = float(d["qs_mean"]) if "qs_mean" in d else float(d["qs"])
    if not (bool(d["moe_feasible"].all()) and bool(d["dense_feasible"].all())):
        why = str(d["moe_reason"].values if not bool(d["moe_feasible"].all())
                  else d["dense_reason"].values)
        rows.append((label, qs, None, why))
        continue
    lo, hi = d["penalty_ci"].values.ravel()
    rows.append((label, qs, (float(d["penalty_mean"]), lo, hi, float(d["reuse_penalty_mean"]),
                             float(d["capacity_penalty"].mean())), ""))
print(f"{'variant':<46} {'q·s':>7} {'penalty [CI]':>22} {'reuse':>7} {'batch ratio':>11}")
for label, qs, vals, why in rows:
    if vals is None:
        print(f"{label:<46} {qs:7.3g}  infeasible: {why[:60]}")
        continue
    pm, lo, hi, ru, cap = vals
    flag = "  large" if pm > 2 else ""
    print(f"{label:<46} {qs:7.3g} {pm:8.3g} [{lo:.3g}, {hi:.3g}] {ru:7.3g} {cap:11.3g}{flag}")

# %% [markdown]
# **Reading the table** (figures from a run with the default 300 trials and 32 draws of q;
# CI runs this notebook with far fewer). With the twin keeping DeepSeek-V3's compact MLA cache
# ("widen"), the dense twin decodes about 2.5 times faster at 128k, and stays above 2 across
# the benchmark-supported range of q (the fit's 90% range is about 0.65–1.1; even q = 4 gives
# 2.2). Both halves of the double penalty contribute: at the MoE's batch the twin is already
# about twice as fast (reuse), and the 671 B resident weights leave so little HBM for the
# cache that the twin admits about 3.2 times the batch (capacity). At q·s = 1 the two models
# stream the same weights and the penalty is about 1. Less room for the cache (bf16 weights,
# a smaller usable HBM fraction) makes the penalty larger; tensor-parallel attention (which
# replicates the latent cache on every rank, for both models) and skewed routing (Zipf 1.2:
# fewer distinct experts per step) make it smaller, still above 2; group-limited against plain
# uniform routing hardly matters. The advantage mostly disappears against a Llama-shaped twin
# (a GQA cache about 7 times larger per token: penalty about 1.2) and shrinks to about 1.3
# against Llama-3.1-405B, which is slower than the MoE at equal batch (reuse penalty below 1)
# and wins only on capacity. A large dense advantage at 128k is therefore a statement about a
# dense model with an MLA-class KV cache, not about any dense model.

"""Fit the kernel-efficiency cards (``models/kernels/*.toml``) from the shared kernel tables.

May import: numpy, the standard library, ``mcroute._base`` and ``mcroute._cost.kernel_fits``
(the fits themselves; :func:`fit_all` and :func:`read_table` are re-exported here).

Usage::

    python -m mcroute._cost.fit_kernels --write   # re-fit and (re)write models/kernels/*.toml
    python -m mcroute._cost.fit_kernels --check   # re-fit and compare with the committed cards
    python -m mcroute._cost.fit_kernels           # re-fit and print the fit report

The inputs are the CSV tables in ``$MCROUTE_SHARED_DATA/kernels`` (see that folder's README);
they are read, never copied. Row numbers cited in the cards count data rows from 1 after the
``#`` comment block and the header line. Every fit is a deterministic
``scipy.optimize.least_squares`` on log(model / measured) (relative residuals), from fixed
starting points; the expected fused-MoE time under random routing uses the exact binomial law of
one expert's load (uniform top-k: Binomial(M, k/E)), which is exact for a model that is a sum
over experts. The functional forms are those of :mod:`mcroute._cost.calibration`; the choices and
numbers are documented in ``docs/calibration.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
import tomllib
from pathlib import Path

import numpy as np

from mcroute._base.resources import kernels_dir
from mcroute._base.validate import McrouteError
from mcroute._cost.kernel_fits import _SHARED, fit_all, read_table

__all__ = ["fit_all", "read_table", "build_cards", "write_cards", "check_cards", "main"]

#: Auxiliary kernels per layer priced by ``layer_overhead_s`` (an assumption; docs/calibration.md):
#: the two RMSNorms, the router gate + top-k, and the rotary/KV-cache write.
N_AUX_KERNELS = 4
#: Relative sd added (in quadrature) to a family's value when it is used for hardware without
#: kernel data (the generic card, and the parameters the AMD data does not cover).
GENERIC_REL_SD = 0.25


def _p(value, sd, units, source, *, dist=None, resid=None, note="", lower=None, upper=None):
    lo, hi = (1e-3, 1.0) if units == "1" else (0.0, math.inf)
    if lower is not None:
        lo = lower
    if upper is not None:
        hi = upper
    d = dict(value=float(value), sd=float(abs(sd)), units=units,
             dist=dist or ("normal" if units == "1" else "lognormal"), lower=lo, upper=hi,
             source=source)
    if resid is not None:
        d["fit_residual"] = float(resid)
        d["residual_kind"] = "max_rel"
    else:
        d["residual_kind"] = "none"
    if note:
        d["note"] = note
    return d


def _hopper_params(F: dict) -> dict:
    ex, de, hb, ml, dp, ar = (F["expert"], F["dense"], F["hbm"], F["mla"], F["deepep"],
                              F["allreduce"])
    P = {}
    fitted_curves = "; ".join(ex["report"][n]["cite"]
                              for n in ex["fit_names"])
    ex_resid = max(ex["report"][n]["maxrel"] for n in ex["fit_names"])
    for k, units in zip(_SHARED, ("1", "tokens", "1", "s"), strict=True):
        v, s = ex["shared"][k]
        P[k] = _p(v, s, units, "joint fit on " + fitted_curves, resid=ex_resid,
                  note="shared across the fitted curves; sd from the fit covariance",
                  lower=1.0 if k == "moe_overlap_p" else None,
                  upper=64.0 if k in ("moe_overlap_p", "moe_stream_m_half") else None)
    pc = ex["per_curve"]
    # Floor: the CUDA-graph benchmark_moe curves (fused w13 + act + w2 + align + reduce on H100);
    # the Gemma4 PR harness floor is host-bound and not used.
    fl = np.array([pc[n]["floor"] for n in ("vllm_mixtral_bf16_h100", "vllm_qwen3_fp8_h100")])
    fl_sd = np.array([pc[n]["floor_sd"] for n in ("vllm_mixtral_bf16_h100",
                                                  "vllm_qwen3_fp8_h100")])
    rep = ex["report"]
    P["moe_layer_floor_s"] = _p(
        fl.mean(), math.sqrt(np.mean(fl_sd ** 2) + fl.std() ** 2), "s",
        f"per-curve floors of {rep['vllm_mixtral_bf16_h100']['cite']} and "
        f"{rep['vllm_qwen3_fp8_h100']['cite']}",
        resid=max(rep["vllm_mixtral_bf16_h100"]["maxrel"], rep["vllm_qwen3_fp8_h100"]["maxrel"]),
        note="mean of the two fused-MoE layer floors; sd: covariance and their spread")
    # Compute efficiency: DeepGEMM FP8 grouped GEMM (the production kernel of wide-EP decode);
    # sd: spread of the tuned kernels' fitted values (DeepGEMM, Mixtral tuned, Gemma4 tuned).
    tuned = np.array([pc[n]["eta_c"] for n in ("deepgemm_grouped_fp8_h800",
                                               "vllm_mixtral_bf16_h100", "vllm_gemma4_bf16_h200")])
    dgc = pc["deepgemm_grouped_fp8_h800"]
    P["moe_compute_eta"] = _p(
        dgc["eta_c"], math.sqrt(dgc["eta_c_sd"] ** 2 + tuned.std() ** 2), "1",
        f"{rep['deepgemm_grouped_fp8_h800']['cite']} (v3 rows, joint fit)",
        resid=rep["deepgemm_grouped_fp8_h800"]["maxrel"],
        note="DeepGEMM curve's compute efficiency in the joint fit; sd adds the spread over the "
             "tuned kernels (DeepGEMM, vLLM Mixtral tuned, vLLM Gemma4 tuned)")
    v = de["values"]
    s = de["sd"]
    src = f"{de['file']} v3 {de['rows']}"
    for i, (k, units) in enumerate((("dense_floor_s", "s"), ("dense_stream_eta", "1"),
                                    ("dense_compute_eta", "1"), ("dense_overlap_p", "1"))):
        P[k] = _p(v[i], s[i], units, src, resid=de["maxrel"],
                  note="sd from the fit covariance",
                  lower=1.0 if k == "dense_overlap_p" else None,
                  upper=64.0 if k == "dense_overlap_p" else None)
    P["mla_eta_bw"] = _p(ml["eta_bw"], 0.1 * ml["eta_bw"], "1", f"{ml['file']} {ml['bw_rows']}",
                         note="FlashMLA 'up to 3000 GB/s' / 3.35 TB/s (h800 card); headline, "
                              "not a fit: sd 10% assumed")
    P["mla_eta_compute"] = _p(ml["eta_c"], 0.1 * ml["eta_c"], "1",
                              f"{ml['file']} {ml['fl_rows']}",
                              note="FlashMLA 660 TFLOPS / 989.4 TFLOPS BF16 (h800 card); "
                                   "headline, not a fit: sd 10% assumed")
    hbh = hb["hopper"]
    P["hbm_eta"] = _p(hbh["value"], hbh["sd"], "1",
                      f"{hb['h100_pcie']['file']} {hb['h100_pcie']['rows']}; "
                      f"{hb['gh200']['file']} {hb['gh200']['rows']}",
                      note="mean over H100 PCIe (2.0 TB/s) and GH200 (4.0 TB/s) of the best "
                           "load-stream kernel; the 'h200' file is treated as a GH200 duplicate "
                           "and not used; sd: kernel spread and GPU spread")
    P["gqa_eta_bw"] = _p(P["hbm_eta"]["value"], 0.15, "1", P["hbm_eta"]["source"],
                         note="no GQA/MHA decode-kernel table: achievable HBM bandwidth, with a "
                              "wider sd (0.15, assumed)")
    P["gqa_eta_compute"] = _p(ml["eta_c"], 0.2, "1", f"{ml['file']} {ml['fl_rows']}",
                              note="no GQA/MHA table: the MLA decode compute efficiency with a "
                                   "wider sd (0.2, assumed)")
    lo = N_AUX_KERNELS * de["values"][0]
    P["layer_overhead_s"] = _p(lo, 0.5 * lo, "s", src,
                               note=f"{N_AUX_KERNELS} auxiliary kernels per layer (2 RMSNorm, "
                                    "router + top-k, rotary/KV write) x the small-M GEMM "
                                    "intercept dense_floor_s; count assumed, sd 50%")
    for i, (k, units) in enumerate((("a2a_latency_scaleup_s", "s"),
                                    ("a2a_latency_scaleout_s", "s"), ("a2a_eta_scaleup", "1"),
                                    ("a2a_eta_scaleout", "1"))):
        P[k] = _p(dp["values"][i], dp["sd"][i], units,
                  f"{dp['file']} {dp['rows']} (v5_legacy_doc = latest)", resid=dp["maxrel"],
                  upper=dp["tmax"] if units == "s" else None,
                  note="H800, NVLink 200 GB/s per direction (h800 card), CX7 400 Gb/s; "
                       "sd from the fit covariance")
    for i, (k, units) in enumerate((("allreduce_latency_s", "s"), ("allreduce_eta", "1"))):
        P[k] = _p(ar["values"][i], ar["sd"][i], units, f"{ar['file']} {ar['rows']}",
                  resid=ar["maxrel"],
                  note="8x H200 NVLink 4 (450 GB/s per direction), torch.distributed benchmark "
                       "(latency includes its launch overhead); sd from the fit covariance")
    return P


def _widen(param: dict, note: str) -> dict:
    q = dict(param)
    q["sd"] = float(math.sqrt(param["sd"] ** 2 + (GENERIC_REL_SD * param["value"]) ** 2))
    q["note"] = note
    q.pop("fit_residual", None)
    q["residual_kind"] = "none"
    q["source"] = "generic: " + param["source"]
    return q


def _mi300_params(F: dict, generic: dict) -> dict:
    hb, mo = F["hbm"], F["mori"]
    P = {}
    for k, g in generic.items():
        P[k] = dict(g, note="no AMD kernel data for this parameter: generic value and sd")
    m = hb["mi300x"]
    P["hbm_eta"] = _p(m["value"], m["sd"], "1", f"{m['file']} {m['rows']}",
                      note="MI300X best load-stream kernel / 5.3 TB/s (mi300x card); applied to "
                           "MI325X and MI355X without data; sd: spread over the kernels")
    for i, (k, units) in enumerate((("a2a_latency_scaleup_s", "s"),
                                    ("a2a_latency_scaleout_s", "s"), ("a2a_eta_scaleup", "1"),
                                    ("a2a_eta_scaleout", "1"))):
        P[k] = _p(mo["values"][i], mo["sd"][i], units,
                  f"{mo['file']} {mo['rows']} (v7 = latest; MI300X+CX7 and MI355X+AINIC)",
                  resid=mo["maxrel"], upper=mo["tmax"] if units == "s" else None,
                  note="pooled MI300X (xGMI 448 GB/s) and MI355X (537.6 GB/s), 400 Gb/s NICs; "
                       "the MI300X EP32 row is marked stale in the README; sd: covariance and "
                       "the rms residual (the model misfits the EP32 rows)")
    return P


def _generic_params(hop: dict, mi: dict | None = None) -> dict:
    G = {}
    for k, v in hop.items():
        G[k] = _widen(v, f"hopper value with {GENERIC_REL_SD:.0%} relative sd added in "
                         "quadrature (no kernel data for this hardware)")
    if mi is not None:
        for k in ("hbm_eta", "a2a_latency_scaleup_s", "a2a_latency_scaleout_s",
                  "a2a_eta_scaleup", "a2a_eta_scaleout"):
            a, b = hop[k], mi[k]
            mean = (a["value"] + b["value"]) / 2
            half = abs(a["value"] - b["value"]) / 2
            G[k] = dict(a, value=mean, upper=max(a["upper"], b["upper"]),
                        sd=float(math.sqrt(half ** 2 + (a["sd"] ** 2 + b["sd"] ** 2) / 2
                                           + (GENERIC_REL_SD * mean) ** 2)),
                        source=f"generic: mean of hopper ({a['source']}) and mi300 "
                               f"({b['source']})",
                        note="mean of the two families; sd: their half-difference, their sds "
                             f"and {GENERIC_REL_SD:.0%} relative, in quadrature",
                        residual_kind="none")
            G[k].pop("fit_residual", None)
    return G


def build_cards(F: dict | None = None) -> dict:
    """Card dictionaries ``{name: card}`` from the fits (``fit_all()`` when F is None)."""
    F = fit_all() if F is None else F
    hop = _hopper_params(F)
    gen0 = _generic_params(hop)
    mi = _mi300_params(F, gen0)
    gen = _generic_params(hop, mi)
    mi = _mi300_params(F, gen)
    return {
        "hopper": dict(name="hopper", description=(
            "NVIDIA Hopper (H100/H200/H800/H20) with DeepGEMM, FlashMLA, DeepEP, NCCL and vLLM "
            "Triton fused-MoE kernels; fitted by mcroute._cost.fit_kernels"),
            hardware=["h100-sxm", "h200", "h800", "h20"], source_dir="kernels", params=hop),
        "mi300": dict(name="mi300", description=(
            "AMD CDNA 3/4 (MI300X/MI325X/MI355X): HBM from gpu-benches MI300X, dispatch/combine "
            "from MORI-EP; every other parameter is generic (no AMD kernel table); fitted by "
            "mcroute._cost.fit_kernels"),
            hardware=["mi300x", "mi325x", "mi355x"], source_dir="kernels", params=mi),
        "generic": dict(name="generic", description=(
            "Generic kernel efficiencies for hardware with no kernel data (e.g. A100, B200): "
            "the hopper fit (HBM and dispatch/combine: mean of hopper and mi300) with a wider "
            "uncertainty; fitted by mcroute._cost.fit_kernels"),
            hardware=["a100-80gb", "b200"], source_dir="kernels", params=gen),
    }


def _num(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if math.isnan(x):
        return "nan"
    s = f"{x:.5g}"
    if "e" not in s and "." not in s:
        s += ".0"
    return s


def _str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def card_to_toml(card: dict) -> str:
    """TOML text of a card dictionary (values to 5 significant digits)."""
    out = ["# Written by `python -m mcroute._cost.fit_kernels --write`; do not edit by hand.",
           "# Forms, sources and residuals: docs/calibration.md. Units: SI (s, B/s), '1' = ratio.",
           f"name = {_str(card['name'])}", f"description = {_str(card['description'])}",
           "hardware = [" + ", ".join(_str(h) for h in card["hardware"]) + "]",
           f"source_dir = {_str(card['source_dir'])}", ""]
    for k in sorted(card["params"]):
        p = card["params"][k]
        out.append(f"[params.{k}]")
        for key in ("value", "sd", "units", "dist", "lower", "upper", "source", "fit_residual",
                    "residual_kind", "note"):
            if key not in p:
                continue
            v = p[key]
            out.append(f"{key} = {_str(v) if isinstance(v, str) else _num(v)}")
        out.append("")
    return "\n".join(out)


def write_cards(cards: dict | None = None, folder=None) -> list:
    """Write the cards (atomically, each file complete or untouched); returns the paths."""
    cards = build_cards() if cards is None else cards
    folder = Path(folder) if folder is not None else Path(str(kernels_dir()))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, card in cards.items():
        text = card_to_toml(card)
        tomllib.loads(text)  # never write a file we could not read back
        path = folder / f"{name}.toml"
        tmp = path.with_suffix(".toml.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        paths.append(path)
    return paths


def check_cards(cards: dict | None = None, folder=None, rtol: float = 1e-4) -> list:
    """Compare re-fitted cards with the committed ones; return a list of mismatch messages.

    Numbers are compared after the same 5-significant-digit rounding the writer applies, with a
    relative tolerance ``rtol`` (rounding of the last digit); strings must match exactly.
    """
    cards = build_cards() if cards is None else cards
    folder = Path(folder) if folder is not None else Path(str(kernels_dir()))
    problems = []
    for name, card in cards.items():
        path = folder / f"{name}.toml"
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        new = tomllib.loads(card_to_toml(card))
        old = tomllib.loads(path.read_text(encoding="utf-8"))
        for key in ("name", "description", "hardware", "source_dir"):
            if new.get(key) != old.get(key):
                problems.append(f"{path}: {key} differs")
        for k in sorted(set(new["params"]) | set(old.get("params", {}))):
            a, b = new["params"].get(k), old.get("params", {}).get(k)
            if a is None or b is None:
                problems.append(f"{path}: parameter {k} only in {'old' if a is None else 'new'}")
                continue
            for key in sorted(set(a) | set(b)):
                x, y = a.get(key), b.get(key)
                if isinstance(x, float) and isinstance(y, (int, float)):
                    if not (math.isnan(x) and math.isnan(y)) and not math.isclose(
                            x, y, rel_tol=rtol, abs_tol=1e-300):
                        problems.append(f"{path}: params.{k}.{key} committed {y!r}, "
                                        f"re-fit {x!r}")
                elif x != y:
                    problems.append(f"{path}: params.{k}.{key} committed {y!r}, re-fit {x!r}")
    return problems


def report(F: dict) -> str:
    """Plain-text fit report (per-row predictions and residuals)."""
    lines = []
    ex = F["expert"]
    lines.append("expert GEMM joint fit: shared " + ", ".join(
        f"{k}={v:.4g}±{s:.2g}" for k, (v, s) in ex["shared"].items()))
    for n, pc in ex["per_curve"].items():
        lines.append(f"  {n}: floor={pc['floor'] * 1e6:.2f}±{pc['floor_sd'] * 1e6:.2f} us, "
                     f"eta_c={pc['eta_c']:.3f}±{pc['eta_c_sd']:.3f}")
    for n, r in ex["report"].items():
        tag = "HELD OUT" if r["hold"] else "fitted"
        lines.append(f"  [{tag}] {n} ({r['desc']}; {r['cite']}): max rel err "
                     f"{r['maxrel']:.3f}")
        lines.append("     x:    " + " ".join(str(x) for x in r["x"]))
        lines.append("     err%: " + " ".join(f"{100 * (p / m - 1):+.1f}"
                                              for p, m in zip(r["pred"], r["meas"], strict=True)))
    de = F["dense"]
    lines.append(f"dense GEMM: floor={de['values'][0] * 1e6:.2f} us, stream={de['values'][1]:.3f}, "
                 f"compute={de['values'][2]:.3f}, p={de['values'][3]:.2f}; max rel err "
                 f"{de['maxrel']:.3f} (M<=128: {de['small_m_maxrel']:.3f})")
    for k, h in F["hbm"].items():
        lines.append(f"hbm {k}: {h['value']:.3f} ± {h['sd']:.3f}")
    ml = F["mla"]
    lines.append(f"mla: eta_bw={ml['eta_bw']:.3f}, eta_compute={ml['eta_c']:.3f}")
    for key in ("deepep", "mori"):
        a = F[key]
        v = a["values"]
        lines.append(f"{key}: L_up={v[0] * 1e6:.2f} us, L_out={v[1] * 1e6:.2f} us, "
                     f"eta_up={v[2]:.3f}, eta_out={v[3]:.3f}; max rel err {a['maxrel']:.3f}")
        for what in ("dispatch", "combine"):
            pred, meas = a[what]
            lines.append(f"   {what} us meas: " + " ".join(f"{x * 1e6:.0f}" for x in meas)
                         + " | model: " + " ".join(f"{x * 1e6:.0f}" for x in pred))
    ar = F["allreduce"]
    lines.append(f"allreduce: latency={ar['values'][0] * 1e6:.2f} us, eta={ar['values'][1]:.3f}; "
                 f"max rel err {ar['maxrel']:.3f}")
    lines.append("   err%: " + " ".join(f"{100 * (p / m - 1):+.0f}"
                                        for p, m in zip(ar["pred"], ar["meas"], strict=True)))
    return "\n".join(lines)


def main(argv=None) -> int:
    """Command-line entry point: ``--write``, ``--check`` or a report."""
    ap = argparse.ArgumentParser(prog="python -m mcroute._cost.fit_kernels", description=__doc__
                                 .splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help="re-fit and write models/kernels/*.toml")
    g.add_argument("--check", action="store_true", help="re-fit and compare with the cards")
    args = ap.parse_args(argv)
    try:
        F = fit_all()
        cards = build_cards(F)
        print(report(F))
        if args.write:
            for path in write_cards(cards):
                print(f"wrote {path}")
        elif args.check:
            problems = check_cards(cards)
            for msg in problems:
                print(msg)
            if problems:
                print(f"{len(problems)} mismatch(es) between the re-fit and the committed cards")
                return 1
            print("committed cards match the re-fit")
    except McrouteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

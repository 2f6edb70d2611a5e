"""Tests of the quality-equivalence factor q: inputs (as_q, parse_q) and estimation (estimate_q)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from scipy import stats

import mcroute as mr
from mcroute._quality import estimate as QE
from mcroute._quality import fits as QF
from mcroute._quality import tables as QT
from mcroute.cli import main

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------------------------------------
# synthetic tables from a known curve
# ------------------------------------------------------------------------------------------------

DENSE_B = (0.5, 1, 2, 4, 8, 16, 32)  # dense ladder [billions of parameters]
N_ACT = 3e9  # active parameters of the synthetic MoE


def write_table(path, rng, *, q=5.0, n_benchmarks=12, sigma=1.0, hetero=0.0, lower=(),
                sizes=DENSE_B, moe_name="Fam-MoE-A3B", slope=None):
    """score_j = a_j + b_j·log10 N (+ N(0, sigma) noise); the MoE sits at N = q_j·N_ACT.

    ``hetero`` is the sd of log q_j across benchmarks (log q_j ~ N(log q, hetero)); benchmarks
    whose index is in ``lower`` are written as losses (lower is better: score = -curve).
    """
    rows = []
    for j in range(n_benchmarks):
        a = rng.uniform(-150, -100)
        b = rng.uniform(15, 25) if slope is None else slope
        qj = q * math.exp(rng.normal(0, hetero)) if hetero else q
        sign = -1 if j in lower else 1
        name = f"loss{j} (lower is better)" if j in lower else f"bench{j}"
        for s in sizes:
            y = a + b * math.log10(s * 1e9) + (rng.normal(0, sigma) if sigma else 0.0)
            rows.append([f"Fam-{s:g}B", "dense", s, s, name, "x", repr(sign * y), "syn", "T1"])
        y = a + b * math.log10(qj * N_ACT) + (rng.normal(0, sigma) if sigma else 0.0)
        rows.append([moe_name, "moe", 30, N_ACT / 1e9, name, "x", repr(sign * y), "syn", "T1"])
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(QT.TABLE_COLUMNS)
        w.writerows(rows)
    return path


def test_no_noise_recovers_q_exactly(tmp_path):
    # Without noise every fit is exact, so each benchmark and the combination give q to
    # rounding error; two benchmarks are losses (lower is better) to check the orientation.
    p = write_table(tmp_path / "t.csv", np.random.default_rng(1), q=5.0, n_benchmarks=5,
                    sigma=0.0, lower=(1, 3))
    ds = mr.estimate_q("fam-moe-a3b", p, n_boot=200, rng=3)
    assert int(ds["n_benchmarks"]) == 5
    np.testing.assert_allclose(ds["q_fit"].values, 5.0, rtol=1e-9)
    np.testing.assert_allclose(ds["q_samples"].values, 5.0, rtol=1e-9)
    for v in (ds["q_point"], ds["q_median"], *ds["q_ci"]):
        assert float(v) == pytest.approx(5.0, rel=1e-9)
    assert list(ds["lower_is_better"].values) == [0, 1, 0, 1, 0]
    np.testing.assert_allclose(ds["r_squared"].values, 1.0, rtol=1e-12)
    # units and coordinates on everything (Dataset conventions)
    for name, v in ds.variables.items():
        assert "units" in v.attrs, name
    for d in ds.dims:
        assert d in ds.coords, d
    assert ds.attrs["seed"] == 3 and ds.attrs["mcroute_version"] == mr.__version__


def _coverage(tmp_path, *, n_rep, hetero, resample, seed0):
    hits = 0
    for r in range(n_rep):
        p = write_table(tmp_path / "c.csv", np.random.default_rng(seed0 + r), q=5.0,
                        n_benchmarks=12, sigma=1.0, hetero=hetero)
        ds = mr.estimate_q("fam-moe-a3b", p, n_boot=400, rng=r, resample=resample,
                           max_extrapolation=10)
        lo, hi = ds["q_ci"].values
        hits += bool(lo <= 5.0 <= hi)
    return hits / n_rep


@pytest.mark.parametrize(("hetero", "resample"), [(0.3, "both"), (0.0, "fit")])
def test_ci_covers_true_q_at_stated_rate(tmp_path, hetero, resample):
    # 95% percentile intervals over 200 independent tables. Stated rates:
    # * default two-stage bootstrap ("both") with benchmarks whose true q varies
    #   (sd of log q = 0.3, like the real tables): coverage >= 95% (calibrated here, and
    #   conservative when benchmarks agree, since the fit noise is then counted twice);
    # * residual bootstrap alone ("fit") with identical true q across benchmarks: 95%.
    # Tolerance: 3 Monte Carlo standard errors of a proportion, sqrt(0.95·0.05/200) = 1.5%,
    # plus 1 percentage point for the known small-sample bias of percentile intervals.
    n_rep = 200
    cov = _coverage(tmp_path, n_rep=n_rep, hetero=hetero, resample=resample, seed0=500)
    se = math.sqrt(0.95 * 0.05 / n_rep)
    assert cov >= 0.95 - 3 * se - 0.01
    if resample == "fit":
        assert cov <= 0.95 + 3 * se + 0.01


def test_same_seed_same_samples(tmp_path):
    p = write_table(tmp_path / "t.csv", np.random.default_rng(2))
    a = mr.estimate_q("fam-moe-a3b", p, n_boot=300, rng=11)
    b = mr.estimate_q("fam-moe-a3b", p, n_boot=300, rng=a.attrs["seed"])
    np.testing.assert_array_equal(a["q_samples"].values, b["q_samples"].values)
    c = mr.estimate_q("fam-moe-a3b", p, n_boot=300, rng=12)
    assert not np.array_equal(a["q_samples"].values, c["q_samples"].values)


def test_extrapolation_refused_unless_allowed(tmp_path):
    # MoE at q = 40 -> N_dense = 120B, 3.75x above the largest dense model (32B).
    p = write_table(tmp_path / "t.csv", np.random.default_rng(4), q=40.0, n_benchmarks=3,
                    sigma=0.0)
    ds = mr.estimate_q("fam-moe-a3b", p, n_boot=50, rng=0)
    assert int(ds["n_benchmarks"]) == 0 and math.isnan(float(ds["q_median"]))
    assert all("extrapolates 3.75x above" in r for r in ds["reason"].values)
    np.testing.assert_allclose(ds["extrapolation"].values, 3.75, rtol=1e-9)
    with pytest.raises(mr.McrouteError, match="no samples"):
        mr.as_q(ds)
    ok = mr.estimate_q("fam-moe-a3b", p, n_boot=50, rng=0, allow_extrapolation=True)
    assert float(ok["q_median"]) == pytest.approx(40.0, rel=1e-9)
    assert all("included (allow_extrapolation=True)" in r for r in ok["reason"].values)
    wide = mr.estimate_q("fam-moe-a3b", p, n_boot=50, rng=0, max_extrapolation=4)
    assert int(wide["n_benchmarks"]) == 3
    # below the smallest model: q = 0.05 -> N = 0.15B, 3.33x below 0.5B
    p2 = write_table(tmp_path / "t2.csv", np.random.default_rng(4), q=0.05, n_benchmarks=1,
                     sigma=0.0)
    low = mr.estimate_q("fam-moe-a3b", p2, n_boot=10, rng=0)
    assert "below the smallest" in str(low["reason"].values[0])


def test_flat_and_wrong_sign_fits_excluded(tmp_path):
    p = write_table(tmp_path / "w.csv", np.random.default_rng(5), n_benchmarks=2, sigma=0.0,
                    slope=-10.0)
    ds = mr.estimate_q("fam-moe-a3b", p, n_boot=10, rng=0, max_extrapolation=1e9)
    assert ds["used"].sum() == 0
    assert all("wrong sign" in r for r in ds["reason"].values)
    # pure noise around a constant: slope indistinguishable from 0
    p = write_table(tmp_path / "f.csv", np.random.default_rng(6), n_benchmarks=1, sigma=1.0,
                    slope=0.0)
    ds = mr.estimate_q("fam-moe-a3b", p, n_boot=10, rng=0, max_extrapolation=1e9)
    r = str(ds["reason"].values[0])
    assert ("flat fit" in r) or ("wrong sign" in r)


def test_min_sizes_and_benchmark_filter(tmp_path):
    p = write_table(tmp_path / "t.csv", np.random.default_rng(7), sizes=(1, 10), sigma=0.0,
                    n_benchmarks=3)
    ds = mr.estimate_q("fam-moe-a3b", p, n_boot=10, rng=0)
    assert all("only 2 dense sizes" in r for r in ds["reason"].values)
    ds2 = mr.estimate_q("fam-moe-a3b", p, n_boot=10, rng=0, min_sizes=2)
    np.testing.assert_allclose(ds2["q_fit"].values, 5.0, rtol=1e-9)
    ds3 = mr.estimate_q("fam-moe-a3b", p, n_boot=10, rng=0, min_sizes=2, benchmarks=["BENCH1"])
    assert list(ds3["benchmark"].values) == ["bench1"]


# ------------------------------------------------------------------------------------------------
# q as an input
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [0, -1, 0.0, math.nan, math.inf, -math.inf, True, [], [1.0, -2.0], [1.0, math.nan],
     np.zeros((2, 2)) + 1, "abc", "0", "-3", object(), ["a", "b"], stats.norm(4, 1),
     stats.uniform(-1, 5), stats.poisson(3)],
)
def test_bad_q_is_a_clear_error(bad):
    with pytest.raises(mr.McrouteError, match="my_q"):
        mr.as_q(bad, name="my_q")


def test_as_q_kinds_and_reproducible_sampling():
    pt = mr.as_q(4)
    assert pt.is_point and pt.median() == 4.0
    np.testing.assert_array_equal(pt.sample(5, rng=1), np.full(5, 4.0))
    s = mr.as_q(np.array([2.0, 3.0, 7.0]))
    assert s.kind == "samples" and s.median() == 3.0
    a, b = s.sample(1000, np.random.default_rng(9)), s.sample(1000, np.random.default_rng(9))
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) == {2.0, 3.0, 7.0}
    d = mr.as_q(stats.lognorm(0.3, scale=4.0))
    x = d.sample(20000, np.random.default_rng(3))
    # log x ~ N(log 4, 0.3): the sample mean of log x is within 4 standard errors
    assert abs(np.log(x).mean() - math.log(4)) < 4 * 0.3 / math.sqrt(x.size)
    assert d.median() == pytest.approx(4.0, rel=1e-12)
    desc = d.describe()
    assert desc["kind"] == "distribution" and desc["distribution"] == "lognorm"
    assert mr.as_q(d) is d
    assert mr.as_q(xr.DataArray([3.0, 4.0])).kind == "samples"
    assert mr.as_q(np.float32(2.5)).median() == 2.5


def test_parse_q_forms(tmp_path):
    assert mr.parse_q(" 4.5 ").median() == 4.5 and mr.parse_q("1e1").median() == 10.0
    ln = mr.parse_q("lognormal:4,0.3")
    assert ln.median() == pytest.approx(4.0)
    assert ln.value.ppf(stats.norm.cdf(1.0)) == pytest.approx(4.0 * math.exp(0.3))
    u = mr.parse_q("uniform:2,6")
    assert u.value.support() == (2.0, 6.0) and u.median() == pytest.approx(4.0)
    lu = mr.parse_q("loguniform:2,8")
    assert lu.median() == pytest.approx(4.0)
    assert mr.parse_q("estimate") == mr.EstimateQ(None)
    assert mr.parse_q("estimate:deepseek-v3") == mr.EstimateQ("deepseek-v3")
    np.save(tmp_path / "q.npy", np.array([3.0, 5.0]))
    assert mr.parse_q(f"samples:{tmp_path / 'q.npy'}").median() == 4.0
    (tmp_path / "q.txt").write_text("3\n4\n8\n")
    assert mr.parse_q(f"samples:{tmp_path / 'q.txt'}").median() == 4.0
    assert mr.as_q("lognormal:4,0.3").kind == "distribution"


@pytest.mark.parametrize(
    ("text", "match"),
    [("0", "> 0"), ("lognormal:4", "two numbers"), ("lognormal:-1,0.3", "median"),
     ("lognormal:4,0", "sigma"), ("uniform:5,2", "LO < HI"), ("uniform:-1,2", "LO >= 0"),
     ("loguniform:0,2", "LO > 0"), ("foo:1", "must be a number"), ("", "must be a number"),
     ("samples:/nonexistent/q.npy", "no such file"), ("estimate:", "needs a model")],
)
def test_parse_q_errors(text, match):
    with pytest.raises(mr.McrouteError, match=match):
        mr.parse_q(text, name="--q")


def test_as_q_from_estimate(tmp_path, monkeypatch):
    qdir = tmp_path / "shared" / "quality"
    qdir.mkdir(parents=True)
    write_table(qdir / "syn.csv", np.random.default_rng(8), q=5.0, sigma=0.5)
    monkeypatch.setenv("MCROUTE_SHARED_DATA", str(tmp_path / "shared"))
    ds = mr.estimate_q("fam-moe-a3b", n_boot=300, rng=1)
    spec = mr.as_q(ds)
    assert spec.kind == "samples" and spec.value.size == 300
    assert spec.median() == pytest.approx(float(ds["q_median"]))
    with pytest.raises(mr.McrouteError, match="needs the MoE model name"):
        mr.as_q("estimate")
    est = mr.as_q("estimate", model="fam-moe-a3b", rng=1)
    full = mr.estimate_q("fam-moe-a3b", rng=1)  # default n_boot, as "estimate" uses
    np.testing.assert_array_equal(est.value, full["q_samples"].values)
    # without a seed, "estimate" is deterministic (seed DEFAULT_ESTIMATE_SEED)
    np.testing.assert_array_equal(mr.as_q("estimate:fam-moe-a3b").value,
                                  mr.as_q("estimate:fam-moe-a3b").value)
    assert mr.as_q("estimate:fam-moe-a3b").source["seed"] == QE.DEFAULT_ESTIMATE_SEED
    with pytest.raises(mr.McrouteError, match="q_samples"):
        mr.as_q(xr.Dataset({"x": 1.0}))


def test_estimate_is_resolved_once_without_a_dataset(tmp_path, monkeypatch):
    # q="estimate" runs the estimator once per value (model, seed, options, table contents)
    # and never builds the estimate_q Dataset; a changed table is estimated again.
    qdir = tmp_path / "shared" / "quality"
    qdir.mkdir(parents=True)
    write_table(qdir / "syn.csv", np.random.default_rng(8), q=5.0, sigma=0.5)
    monkeypatch.setenv("MCROUTE_SHARED_DATA", str(tmp_path / "shared"))
    calls = []
    real = QE.estimate_by_fit

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    def no_dataset(*a, **k):  # pragma: no cover - fails the test if reached
        raise AssertionError("as_q('estimate') built a Dataset")

    monkeypatch.setattr(QE, "estimate_by_fit", counting)
    monkeypatch.setattr(xr, "Dataset", no_dataset)
    a = mr.as_q("estimate:fam-moe-a3b", rng=11)
    b = mr.as_q(mr.EstimateQ("fam-moe-a3b"), rng=11)
    assert len(calls) == 1
    np.testing.assert_array_equal(a.value, b.value)
    assert a.describe() == b.describe()
    write_table(qdir / "syn.csv", np.random.default_rng(9), q=5.0, sigma=0.5)
    c = mr.as_q("estimate:fam-moe-a3b", rng=11)
    assert len(calls) == 2 and not np.array_equal(c.value, a.value)


def test_lognormal_q_is_the_parsed_law():
    from mcroute._quality.quality import lognormal_q

    parsed = mr.parse_q("lognormal:4,0.3")
    built = lognormal_q(4.0, 0.3, source={"text": "lognormal:4,0.3"})
    assert built.describe() == parsed.describe()
    np.testing.assert_array_equal(built.sample(5, rng=2), parsed.sample(5, rng=2))
    with pytest.raises(mr.McrouteError, match="lognormal sigma"):
        lognormal_q(4.0, 0.0)


# ------------------------------------------------------------------------------------------------
# table reading
# ------------------------------------------------------------------------------------------------

GOOD = "Fam-1B,dense,1,1,b,x,10,s,T\n"


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (GOOD + "Fam-2B,dense,2,2,b,x,11,s\n", r"bad\.csv:3: expected 9 fields, got 8"),
        (GOOD + "Fam-2B,dense,2,2,b,x,eleven,s,T\n", r"bad\.csv:3: field 'score'"),
        (GOOD + "Fam-2B,sparse,2,2,b,x,11,s,T\n", r"bad\.csv:3: field 'arch'"),
        (GOOD + GOOD + "Fam-2B,dense,2B,2,b,x,11,s,T\n", r"bad\.csv:4: field 'total_params_b'"),
        (GOOD + "Fam-2B,dense,-2,2,b,x,11,s,T\n", r"bad\.csv:3: field 'total_params_b'"),
        (GOOD + 'Fam-2B,dense,2,2,"b,x,11,s,T\n', r"bad\.csv:\d+: (malformed|expected)"),
    ],
)
def test_malformed_table_names_file_and_line(tmp_path, body, match):
    p = tmp_path / "bad.csv"
    p.write_text(",".join(QT.TABLE_COLUMNS) + "\n" + body)
    with pytest.raises(mr.McrouteError, match=match):
        QT.read_quality_table(p)


def test_missing_column_and_empty(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("model,arch,score\nA,dense,1\n")
    with pytest.raises(mr.McrouteError, match=r"bad\.csv:1: header lacks column"):
        QT.read_quality_table(p)
    p.write_text("")
    with pytest.raises(mr.McrouteError, match=r"bad\.csv:1: empty"):
        QT.read_quality_table(p)
    with pytest.raises(mr.McrouteError, match="not scored"):
        mr.estimate_q("no-such-moe", write_table(tmp_path / "t.csv", np.random.default_rng(0)))


def test_card_names():
    assert QT.card_name("DeepSeek-V3-Base") == "deepseek-v3"
    assert QT.card_name("Qwen3-235B-A22B-Base") == "qwen3-235b-a22b"
    assert QT.card_name("Mixtral-8x7B") == "mixtral-8x7b"
    assert QT.card_name("Grok-1") == "grok-1"
    assert QT.card_name("Llama-4-Maverick-17Bx128E") == "llama-4-maverick"
    assert QT.card_name("Switch-Base (cf 1.0)") == "switch-base"
    assert QT.family_key("DeepSeek-67B (245B-token run)")[0] != QT.family_key("DeepSeek-7B")[0]
    assert QT.family_key("Qwen3-0.6B-Base") == ("qwen3-base", "qwen3")
    assert QT.family_key("T5-Large")[0] == QT.family_key("T5-Base")[0]


# ------------------------------------------------------------------------------------------------
# scaling-law estimator
# ------------------------------------------------------------------------------------------------


def test_clark_effective_params_matches_published_table():
    # EPC values re-derived in the shared quality README (they match the blog's table):
    # N=1B, E=64 -> 3.14B; N=7B, E=8 -> 10.19B; N=130B, E=128 -> 192.2B.
    got = QF.clark_effective_params([1e9, 7e9, 130e9], [64, 8, 128]) / 1e9
    # tolerance: half a unit in the last printed digit of each published value
    assert np.all(np.abs(got - [3.14, 10.19, 192.2]) <= [0.005, 0.005, 0.05])
    ds = mr.estimate_q("any", method="scaling_law", n_active=1e9, n_experts=64, top_k=1)
    assert float(ds["q_median"]) == pytest.approx(3.1376, rel=1e-4)
    assert np.isnan(ds["q_ci"].values).all() and mr.as_q(ds).is_point


def test_clark_constants_agree_with_shared_file():
    try:
        consts, where = QF.clark_constants()
    except mr.McrouteError as exc:  # pragma: no cover - shared folder absent
        pytest.skip(str(exc))
    if "built-in" in where:
        pytest.skip(f"shared scaling_law_constants.csv not available: {where}")
    assert consts == QF.CLARK_SBASE


# ------------------------------------------------------------------------------------------------
# real tables (shared data folder; present in CI)
# ------------------------------------------------------------------------------------------------


def _shared_or_skip():
    try:
        return QT.quality_dir()
    except mr.McrouteError as exc:
        pytest.skip(f"shared quality tables not found: {exc}")


@pytest.mark.parametrize("model", ["deepseek-v3", "qwen3-235b-a22b"])
def test_real_tables_give_finite_estimates(model):
    _shared_or_skip()
    ds = mr.estimate_q(model, n_boot=300, rng=0)
    assert int(ds["n_benchmarks"]) >= 5
    q = ds["q_samples"].values
    assert q.size > 0 and np.all(np.isfinite(q) & (q > 0))
    lo, hi = ds["q_ci"].values
    assert 0 < lo <= float(ds["q_median"]) <= hi < np.inf
    assert ds.attrs["tables_used"] == '["qwen3_tech_report_base"]'


def test_real_qwen3_30b_matches_published_claim():
    # The Qwen3 report (Sec. 3.3) states that its MoE base models match dense base models
    # "with only 1/5 activated parameters", i.e. q ≈ 5 for Qwen3-30B-A3B: our 95% interval,
    # from the same report's tables, must include 5.
    _shared_or_skip()
    ds = mr.estimate_q("qwen3-30b-a3b", "qwen3_tech_report_base", n_boot=1000, rng=0)
    lo, hi = ds["q_ci"].values
    assert lo <= 5.0 <= hi
    assert set(ds["family"].values) == {"qwen3-base"} and int(ds["cross_family"].sum()) == 0


def test_shipped_q_estimates_are_reproducible():
    # data/q_estimates.csv is derived: rerunning its recorded command must give its numbers.
    _shared_or_skip()
    path = ROOT / "data" / "q_estimates.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    meta = dict(ln[2:].split(": ", 1) for ln in lines if ln.startswith("# ") and ": " in ln)
    assert meta["produced by"].startswith("mcroute q-estimate")
    tables = {t.name: t.sha256[:16] for t in QT.load_quality_tables()}
    recorded = dict(x.strip().rsplit(" ", 1)
                    for x in meta["source tables (sha256 prefix)"].split(";"))
    assert recorded == tables, "shared tables changed: regenerate data/q_estimates.csv " \
        "(see data/README.md)"
    rows = list(csv.DictReader(ln for ln in lines if not ln.startswith("#")))
    fit = {r["model"]: r for r in rows if r["method"] == "fit"}
    assert {"deepseek-v3", "qwen3-235b-a22b"} <= set(fit)
    r = fit["deepseek-v3"]
    ds = mr.estimate_q("deepseek-v3", n_boot=int(r["n_boot"]), rng=int(r["seed"]))
    assert float(ds["q_median"]) == pytest.approx(float(r["q_median"]), rel=1e-5)
    assert float(ds["q_ci"][1]) == pytest.approx(float(r["q_ci_upper"]), rel=1e-5)


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------


def test_cli_q_estimate(tmp_path, capsys):
    p = write_table(tmp_path / "t.csv", np.random.default_rng(10), sigma=0.5)
    out = tmp_path / "q.csv"
    rc = main(["q-estimate", "fam-moe-a3b", "--table", str(p), "--n-boot", "200", "--seed", "4",
               "--output", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "fam-moe-a3b [fit]: q = " in text and "bench11" in text and "R²" in text
    lines = out.read_text().splitlines()
    assert lines[1].startswith("# produced by: mcroute q-estimate fam-moe-a3b --table")
    rows = list(csv.DictReader(ln for ln in lines if not ln.startswith("#")))
    assert len(rows) == 1 and rows[0]["seed"] == "4" and int(rows[0]["n_benchmarks"]) == 12
    nc = tmp_path / "q.nc"
    assert main(["q-estimate", "fam-moe-a3b", "--table", str(p), "--n-boot", "50", "--seed", "4",
                 "--summary", "--output", str(nc)]) == 0
    spec = mr.parse_q(f"samples:{nc}")
    assert spec.kind == "samples" and spec.value.size == 50
    assert main(["q-estimate", "--table", str(p), "--list"]) == 0
    assert capsys.readouterr().out.strip().endswith("fam-moe-a3b")


@pytest.mark.parametrize(
    "argv",
    [["q-estimate"], ["q-estimate", "no-such-moe"], ["q-estimate", "x", "--n-boot", "0"],
     ["q-estimate", "x", "--output", "q.txt"]],
)
def test_cli_q_estimate_bad_input_exits_2(tmp_path, argv, capsys):
    p = write_table(tmp_path / "t.csv", np.random.default_rng(0))
    assert main([*argv, "--table", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mcroute q-estimate: error:") and len(err.strip().splitlines()) == 1

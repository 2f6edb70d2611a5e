"""The benchmark command's front end (its figures are measured, not asserted, here)."""

from mcroute.cli import main


def test_sweep_and_answers_are_exclusive(capsys):
    assert main(["bench", "--sweep", "--answers"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--answers" in err[0]


def test_calibrated_figure_runs_same_work_on_both_paths():
    """The calibrated-vs-roofline figure times both paths at the calibrated admissible batches
    (the same sampled tokens); its value is measured by `mcroute bench`, not asserted here."""
    import math

    import mcroute as mr
    from mcroute.bench.core import CALIBRATED_CASE, CALIBRATED_CONTEXTS, calibrated_vs_roofline

    r, t_cal, t_roof, r_own, batches = calibrated_vs_roofline(reps=1, n_trials=4)
    model, hw, n, dtype = CALIBRATED_CASE
    dep = mr.Deployment(model, hw, n, weight_dtype=dtype)
    assert batches == [dep.max_batch_size(L) for L in CALIBRATED_CONTEXTS]
    assert all(math.isfinite(x) and x > 0 for x in (r, t_cal, t_roof, r_own))


def test_closing_line_says_missed_figures_are_informational():
    from mcroute.bench.core import _closing_line

    lines = []
    _closing_line([("a", 1.0, "<= 2", True), ("b", 5.0, "<= 2", False)], lines.append)
    assert "1 of 2" in lines[0] and "1 MISSED" in lines[0] and "informational" in lines[0]
    assert "exit status" in lines[0]


def test_qs_floor_times_sampling_and_both_arithmetics():
    """The qs floor runs the MoE's sampling and its roofline and calibrated arithmetic, and
    the twins' for every draw of q (its value is measured by `mcroute bench --answers`)."""
    from mcroute.bench.core import _qs_floor_case

    t_sample, t_arith = _qs_floor_case("qwen3-235b-a22b", {}, (4096, 8192), 4, [1.5, 2.5])
    assert t_sample > 0 and t_arith > 0

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

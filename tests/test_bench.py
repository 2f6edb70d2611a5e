"""The benchmark command's front end (its figures are measured, not asserted, here)."""

from mcroute.cli import main


def test_sweep_and_answers_are_exclusive(capsys):
    assert main(["bench", "--sweep", "--answers"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--answers" in err[0]

"""Notebooks are executed (as scripts, with few trials) so that they cannot rot."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path):
    env = {**os.environ, "MCROUTE_NB_TRIALS": "16", "MCROUTE_NB_Q_SAMPLES": "4",
           "MCROUTE_NB_OUTDIR": str(tmp_path), "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, str(path)], cwd=path.parent.parent, env=env,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip(), "a notebook should print its results"


def test_notebooks_are_jupytext_percent_files():
    assert NOTEBOOKS, "no notebooks found"
    for p in NOTEBOOKS:
        text = p.read_text()
        assert "# %%" in text and "format_name: percent" in text, p.name

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


def test_notebooks_use_only_the_public_api():
    # `import mcroute as mr` and `mcroute.plot`: no private module, in code or in the text
    # (issue 12)
    for p in NOTEBOOKS:
        private = [line for line in p.read_text().splitlines() if "mcroute._" in line]
        assert not private, f"{p.name}: {private}"


def test_notebooks_are_jupytext_percent_files():
    assert NOTEBOOKS, "no notebooks found"
    for p in NOTEBOOKS:
        text = p.read_text()
        assert "# %%" in text and "format_name: percent" in text, p.name


@pytest.mark.slow
def test_notebook_executes_as_a_notebook(tmp_path):
    # The README's recipe (the `notebooks` extra): jupytext converts and runs it in a kernel.
    path = next(p for p in NOTEBOOKS if p.name == "qs_paper.py")
    env = {**os.environ, "MCROUTE_NB_TRIALS": "16", "MCROUTE_NB_Q_SAMPLES": "4",
           "MCROUTE_NB_OUTDIR": str(tmp_path), "MPLBACKEND": "Agg"}
    out = tmp_path / "qs_paper.ipynb"
    r = subprocess.run([sys.executable, "-m", "jupytext", "--to", "ipynb", "--set-kernel",
                        "python3", "--execute", "--output", str(out), str(path)],
                       cwd=path.parent.parent, env=env, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    cells = json.loads(out.read_text())["cells"]
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert outputs and not any(o.get("output_type") == "error" for o in outputs)

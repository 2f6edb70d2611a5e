"""A non-editable install (a built wheel) carries the cards and the project's data."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_ships_cards_and_data_and_finds_them(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(ROOT)], check=True, capture_output=True,
                   timeout=600, cwd=tmp_path)
    (whl,) = wheels.glob("mcroute-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    for card in (ROOT / "models" / "llm").glob("*.toml"):
        assert f"mcroute/models/llm/{card.name}" in names
    for card in (ROOT / "models" / "hardware").glob("*.toml"):
        assert f"mcroute/models/hardware/{card.name}" in names
    for card in (ROOT / "models" / "kernels").glob("*.toml"):
        assert f"mcroute/models/kernels/{card.name}" in names
    assert "mcroute/data/q_estimates.csv" in names
    assert "mcroute/py.typed" in names  # PEP 561: the package's type hints are public
    # every package folder of the source ships (pyproject.toml lists them by hand)
    for init in (ROOT / "mcroute").rglob("__init__.py"):
        rel = init.relative_to(ROOT).as_posix()
        assert rel in names, f"{rel} is not in the wheel: add it to [tool.setuptools] packages"
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(whl)], check=True, capture_output=True, timeout=600)
    code = ("import mcroute, mcroute._base.resources as r; m = mcroute.load_model('deepseek-v3'); "
            "print(mcroute.__file__); print(r.cards_dir()); print(r.project_data_dir()); "
            "print(len(mcroute.list_hardware()), m.n_experts)")
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, check=True).stdout.split("\n")
    assert out[0].startswith(str(site)), out  # the installed copy, not the source tree
    assert str(site) in out[1] and str(site) in out[2]
    assert out[3] == "8 256"
    # The numba cache of a non-editable install whose package folder is not writable (here:
    # __pycache__ cannot be created) falls back to the user-wide cache under $HOME/.cache,
    # so the second run does not compile again.
    pycache = site / "mcroute" / "__pycache__"
    shutil.rmtree(pycache, ignore_errors=True)
    pycache.write_text("not a folder")
    home = tmp_path / "home"
    home.mkdir()
    env_ro = {**env, "HOME": str(home)}
    env_ro.pop("NUMBA_CACHE_DIR", None)
    env_ro.pop("XDG_CACHE_HOME", None)
    kernel = "import mcroute as mr; mr.sample_counts(mr.Uniform(64, 4), 8, 64, rng=0)"
    subprocess.run([sys.executable, "-c", kernel], env=env_ro, cwd=tmp_path, check=True,
                   capture_output=True, timeout=600)
    cached = list((home / ".cache" / "numba").rglob("_kernels.*.nbi"))
    assert cached, "numba wrote no cache index under $HOME/.cache/numba"

"""The CLI, in process: tables, outputs, one-line errors with exit status 2."""

import subprocess
import sys

import pytest

import mcroute
from mcroute.cli import main


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert mcroute.__version__ in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert "simulate" in capsys.readouterr().out


def test_simulate_table_and_output(tmp_path, capsys):
    out = tmp_path / "res.nc"
    rc = main(["simulate", "--experts", "64", "--top-k", "4", "--batch", "1,8,64",
               "--routing", "zipf:1.2", "--trials", "50", "--devices", "4", "--seed", "0",
               "--output", str(out)])
    cap = capsys.readouterr()
    assert rc == 0
    lines = cap.out.splitlines()
    assert "seed 0" in lines[0]
    assert any(line.strip().startswith("64 ") for line in lines)
    assert out.exists() and "wrote" in cap.err


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["simulate", "--experts", "8", "--top-k", "9"], "--top-k"),
        (["simulate", "--experts", "x", "--top-k", "2"], "--experts"),
        (["simulate", "--experts", "8", "--top-k", "2", "--routing", "zipf"], "--routing"),
        (["simulate", "--experts", "8", "--top-k", "2", "--routing", "zipf:-1"], "alpha"),
        (["simulate", "--experts", "8", "--top-k", "2", "--batch", "0"], "--batch"),
        (["simulate", "--experts", "8", "--top-k", "2", "--devices", "3"], "n_devices"),
        (["simulate", "--experts", "8", "--top-k", "2", "--output", "/nonexistent/x.nc",
          "--trials", "4"], "does not exist"),
        (["simulate", "--experts", "8", "--top-k", "2", "--output", "x.txt", "--trials", "4"],
         ".nc, .csv or .json"),
        (["simulate", "--experts", "8", "--top-k", "2", "--bogus"], "unrecognized"),
        (["simulate"], "required"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0]


def test_python_dash_m():
    r = subprocess.run([sys.executable, "-m", "mcroute", "--version"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and mcroute.__version__ in r.stdout

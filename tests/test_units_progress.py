"""The one size parser (mcroute._base.units), the progress line and the compile notice
(mcroute._base.progress), ``mcroute warmup``, and "128k" strings across the labeled API."""

import io
import types

import pytest

import mcroute as mr
from mcroute._base import progress as P
from mcroute._base.units import parse_size, parse_size_list
from mcroute.cli import main
from mcroute.cli.common import parse_size as cli_parse_size
from mcroute.cli.common import parse_size_list as cli_parse_size_list


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_sizes_parse_once_for_cli_and_api():
    assert parse_size("context", "128k") == 131072
    assert parse_size("context", " 4K ") == 4096
    assert parse_size("n", "1m") == 2**20
    assert parse_size("context", 300) == 300
    assert parse_size_list("context", "4k, 32k") == ([4096, 32768], False)
    assert parse_size_list("context", "8k") == ([8192], True)
    assert parse_size_list("context", [4096, "8k"]) == ([4096, 8192], False)
    # the CLI's functions are the same parser
    assert cli_parse_size("--context", "64k") == parse_size("--context", "64k")
    assert cli_parse_size_list("--context", "4k,8k") == [4096, 8192]
    for bad in ("12x", "-4k", "", "0", 0, -3, 2.5, "4k4"):
        with pytest.raises(mr.McrouteError, match="context"):
            parse_size("context", bad)
    with pytest.raises(mr.McrouteError, match=r"\[1, 4096\]"):
        parse_size("context", "8k", maximum=4096)
    with pytest.raises(mr.McrouteError, match="twice"):
        parse_size_list("context", "4k,4096")
    with pytest.raises(mr.McrouteError, match="comma-separated"):
        cli_parse_size_list("--context", " , ")


def test_labeled_api_accepts_cli_strings():
    dep = mr.Deployment("llama-3.1-70b", "h100-sxm", 8)
    a = mr.decode_throughput(dep, "4k,8k", batch_size="8", n_trials=4, rng=0, progress=False)
    b = mr.decode_throughput(dep, [4096, 8192], batch_size=8, n_trials=4, rng=0, progress=False)
    assert a["throughput"].equals(b["throughput"])
    qwen = mr.Deployment("qwen3-235b-a22b", "h200", 8)
    z = mr.decode_throughput(qwen, "4k", 8, routing="zipf:1.2", n_trials=4, rng=0,
                             progress=False)
    zo = mr.decode_throughput(qwen, "4k", 8, routing=mr.Zipf(128, 8, 1.2), n_trials=4, rng=0,
                              progress=False)
    assert z["throughput"].equals(zo["throughput"]) and z.attrs["routing"] == zo.attrs["routing"]
    s = mr.simulate(mr.Uniform(64, 4), "1,4k", n_trials=4, rng=0, progress=False)
    assert s["batch_size"].values.tolist() == [1, 4096]
    q = mr.qs_analysis("qwen3-235b-a22b", "h200", 8, 2.0, "8k,16k", n_trials=4, rng=0,
                       progress=False)
    assert q["context"].values.tolist() == [8192, 16384]


def test_simulate_defaults_n_trials_like_the_others():
    assert mr.simulate(mr.Uniform(16, 2), 4, rng=0, progress=False).sizes["trial"] == 1000


def test_progress_is_silent_off_a_terminal_and_shows_on_one():
    pipe = io.StringIO()
    p = P.Progress("work", stream=pipe, delay=0.0)
    p(0.5)
    p.close()
    assert pipe.getvalue() == ""
    tty = _Tty()
    with P.Progress("work", stream=tty, delay=0.0) as p:
        p(0.5)
    text = tty.getvalue()
    assert "work:  50%" in text and text.endswith("\r")  # the line is cleared at the end
    late = _Tty()
    with P.Progress("work", stream=late, delay=60.0) as p:
        p(0.5)  # short work stays silent
    assert late.getvalue() == ""


def test_compile_notice_only_on_a_terminal_with_an_empty_cache(tmp_path, monkeypatch):
    cache = types.SimpleNamespace(_cache_file=types.SimpleNamespace(
        _index_path=str(tmp_path / "k.nbi")))
    module = types.SimpleNamespace(kernel=types.SimpleNamespace(_cache=cache))
    assert not P.kernels_cached(module)
    monkeypatch.setattr(P, "_NOTICED", [])
    assert not P.compile_notice(module, io.StringIO())  # a pipe: silent
    tty = _Tty()
    assert P.compile_notice(module, tty) and "compiling kernels" in tty.getvalue()
    assert not P.compile_notice(module, _Tty())  # once per process
    monkeypatch.setattr(P, "_NOTICED", [])
    (tmp_path / "k.nbi").write_text("")
    assert P.kernels_cached(module) and not P.compile_notice(module, _Tty())
    import mcroute._kernels as K

    assert P._index_paths(K), "the kernels' cache index files are found"


@pytest.mark.slow
def test_warmup_runs_every_step(capsys):
    from mcroute.cli.warmup import STEPS

    assert main(["warmup"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(STEPS) + 1 and "cached" in lines[-1]

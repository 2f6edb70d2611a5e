"""simulate / decode_throughput / qs_analysis options are declared once (issue 12).

``mcroute._labeled.options`` declares every option of the three functions; the sweep kinds'
parameters and the CLI flags are generated from it, and the functions check through it. These
tests hold the three ends to the declaration: at each end of every declared numeric range the
API keyword, the CLI flag and the sweep key accept or refuse the same value.
"""

import dataclasses

import pytest

import mcroute as mr
from mcroute._base.options import REQUIRED
from mcroute._labeled import qs as qs_mod
from mcroute._labeled import simulate as sim_mod
from mcroute._labeled import throughput as thr_mod
from mcroute._labeled.options import (
    QS_OPTIONS,
    RUN_OPTIONS,
    SIMULATE_OPTIONS,
    THROUGHPUT_OPTIONS,
)
from mcroute.cli.app import make_parser
from mcroute.cli.deployment import option_values
from mcroute.sweeps.kinds import CELL_KINDS

OPTIONS = {"simulate": SIMULATE_OPTIONS, "throughput": THROUGHPUT_OPTIONS, "qs": QS_OPTIONS}
MODULES = {"simulate": sim_mod, "throughput": thr_mod, "qs": qs_mod}
#: What a command line, an API call and a sweep spec need besides the option under test.
ARGV = {"simulate": ["simulate", "-E", "8", "-k", "2"],
        "throughput": ["throughput", "mixtral-8x7b", "-H", "h100-sxm", "-g", "8"],
        "qs": ["qs", "mixtral-8x7b", "-H", "h200", "-g", "8"]}
FIXED = {"simulate": {"n_experts": 8, "top_k": 2, "batch_size": 4},
         "throughput": {"model": "mixtral-8x7b", "hardware": "h100-sxm", "n_gpus": 8,
                        "context": 4096},
         "qs": {"model": "mixtral-8x7b", "hardware": "h200", "n_gpus": 8, "context": 4096,
                "q": 2.0}}
#: Values an option needs beside it to pass the cross-field rules (top_k and n_devices are at
#: most n_experts), so that only the option's own range decides.
WITH = {("simulate", "n_experts"): {"top_k": 1},
        ("simulate", "top_k"): {"n_experts": 2**20},
        ("simulate", "n_devices"): {"n_experts": 2**20},
        ("throughput", "batch_per_gpu"): {"n_gpus": 1}}  # batch_per_gpu x n_gpus <= 2**40


class _Passed(Exception):
    """Raised right after the public edge's checks: the values were accepted."""


def _api(monkeypatch, cmd, name, value):
    """Call the function with ``name=value``; True if its checks accept it (no work is done:
    the seed is resolved after every option is checked, and the run stops there)."""
    mod = MODULES[cmd]
    real = mod.resolve_seed

    def stop(rng):
        real(rng)
        raise _Passed

    monkeypatch.setattr(mod, "resolve_seed", stop)
    kw = dict(WITH.get((cmd, name), {}))
    kw["rng" if name == "seed" else name] = value
    try:
        if cmd == "simulate":
            e, k = kw.pop("n_experts", 8), kw.pop("top_k", 2)
            batch = kw.pop("batch_size", 4)
            mr.simulate(mr.Uniform(e, k), batch, **kw)
        elif cmd == "throughput":
            dep = mr.Deployment("mixtral-8x7b", "h100-sxm", kw.pop("n_gpus", 8))
            context = kw.pop("context", 4096)
            mr.decode_throughput(dep, context, **kw)
        else:
            context = kw.pop("context", 4096)
            mr.qs_analysis("mixtral-8x7b", "h200", 8, kw.pop("q", 2.0), context, **kw)
    except _Passed:
        return True
    except mr.McrouteError as exc:
        assert name in str(exc).replace("rng", "seed"), str(exc)  # refused for this option
        return False
    raise AssertionError("the run went past the checks")


def _cli(cmd, opt, value):
    """Whether the command's flag accepts ``value`` (the values read as the command reads them)."""
    argv = ARGV[cmd] + [opt.flag, str(value)]
    for k, v in WITH.get((cmd, opt.name), {}).items():
        argv += ["--" + k.replace("_", "-"), str(v)]
    args = make_parser().parse_args(argv)
    try:
        values = option_values(args, OPTIONS[cmd], skip=("q",))
    except mr.McrouteError as exc:
        assert opt.flag in str(exc), str(exc)
        return False
    assert values[opt.name] == (value if not opt.vector else [value])
    return True


def _sweep(cmd, name, value):
    fixed = {k: v for k, v in FIXED[cmd].items() if k != name}
    spec = {"kind": cmd, "seed": 0, "axes": {name: [value]}, "fixed": fixed}
    try:
        mr.load_sweep_spec(spec)
    except mr.McrouteError as exc:
        assert f"{name}[0]: {name} must be" in str(exc), str(exc)
        return False
    return True


def _bounds():
    """(command, option, value, declared verdict) at each end of every declared numeric range."""
    out = []
    for cmd, options in OPTIONS.items():
        for o in options:
            if o.type not in ("int", "float", "tokens"):
                continue
            kind = float if o.type == "float" else int
            step = kind(0.25 if o.type == "float" else 1)
            if o.minimum is not None:
                out.append((cmd, o, kind(o.minimum), not o.open_min))
                out.append((cmd, o, kind(o.minimum) - step, False))
            if o.maximum is not None:
                out.append((cmd, o, kind(o.maximum), not o.open_max))
                out.append((cmd, o, kind(o.maximum) + step, False))
    return out


@pytest.mark.parametrize("cmd, opt, value, ok", _bounds(),
                         ids=lambda x: x.name if hasattr(x, "name") else str(x))
def test_api_cli_and_sweep_agree_at_every_declared_bound(monkeypatch, cmd, opt, value, ok):
    assert _api(monkeypatch, cmd, opt.name, value) == ok
    assert _cli(cmd, opt, value) == ok
    if opt.name not in RUN_OPTIONS:  # n_trials, ci_prob and seed are set once per sweep
        assert _sweep(cmd, opt.name, value) == ok


def test_every_numeric_option_is_covered():
    covered = {(cmd, o.name) for cmd, o, _, _ in _bounds()}
    for cmd, options in OPTIONS.items():
        for o in options:
            if o.type in ("int", "float", "tokens"):
                assert (cmd, o.name) in covered
                assert o.minimum is not None, (cmd, o.name)  # every count has a floor
    assert ("qs", "n_q_samples") in covered and ("simulate", "capacity_factor") in covered


def test_sweep_parameters_are_the_declarations():
    """Each kind's parameters are the function's declared options (but the run's own), the
    same objects but for a sweep's documented defaults (context required, uniform routing)."""
    for cmd, options in OPTIONS.items():
        kind = CELL_KINDS[cmd]
        for o in options:
            p = kind.param(o.name)
            if o.name in RUN_OPTIONS:
                assert p is None
                continue
            if p is o:
                continue
            assert dataclasses.replace(p, default=o.default) == o, (cmd, o.name)
            assert (o.name, p.default) in (("context", REQUIRED), ("routing", "uniform")), (
                cmd, o.name, p.default)


def test_cli_flags_are_the_declarations():
    """Every declared option of the three functions is a flag of its command, spelled as the
    keyword with the declared short alias and choices."""
    subs = make_parser()._subparsers._group_actions[0].choices
    for cmd, options in OPTIONS.items():
        actions = {a.dest: a for a in subs[cmd]._actions}
        for o in options:
            a = actions[o.name]
            assert o.flag in a.option_strings, (cmd, o.name)
            if o.short:
                assert o.short in a.option_strings, (cmd, o.name)
            if o.choices:
                assert list(a.choices) == list(o.choices), (cmd, o.name)
            # required unless the command documents a default (simulate's batch sizes)
            assert a.required == (o.required and a.default is None), (cmd, o.name)


@pytest.mark.parametrize("cmd", ["simulate", "throughput", "qs"])
def test_strings_the_cli_accepts_the_api_accepts(monkeypatch, cmd):
    """Sizes written as on the command line ("4k", "1,8") are accepted by the API keyword."""
    name = "batch_size" if cmd == "simulate" else "context"
    assert _api(monkeypatch, cmd, name, "4k")
    assert _api(monkeypatch, cmd, name, "1,8")
    assert not _api(monkeypatch, cmd, name, "4q")

"""One declaration per option (issue 12): mcroute._base.options and the Deployment options.

Every Deployment field is declared with ``option(...)``; the declaration's ``check`` and
``Deployment`` agree on what is refused (Deployment's rule wins: the shares are in (0, 1], not
[0, 1]), and refusals name the option.
"""

import dataclasses

import numpy as np
import pytest

import mcroute as mr
from mcroute._base.options import REQUIRED, Option, option, options_of
from mcroute._cost.deployment import DEPLOYMENT_OPTIONS, Deployment

BY_NAME = {o.name: o for o in DEPLOYMENT_OPTIONS}


def _dep(**kw):
    # an MoE model on one node: every option below can be varied alone
    return Deployment("qwen3-30b-a3b", "h100-sxm", 8, **kw)


def test_every_field_is_declared_once_in_field_order():
    names = [f.name for f in dataclasses.fields(Deployment)]
    assert [o.name for o in DEPLOYMENT_OPTIONS] == names
    assert all(o.doc and "\n" not in o.doc for o in DEPLOYMENT_OPTIONS)
    assert [o.name for o in DEPLOYMENT_OPTIONS if o.required] == ["model", "hardware", "n_gpus"]
    for f in dataclasses.fields(Deployment):
        if f.name not in ("model", "hardware", "n_gpus"):
            assert BY_NAME[f.name].default == f.default


def test_flags_are_spelled_as_the_keywords():
    assert BY_NAME["n_gpus"].flag == "--n-gpus" and BY_NAME["n_gpus"].short == "-g"
    assert BY_NAME["attention_compute_dtype"].flag == "--attention-compute-dtype"
    flags = [o.flag for o in DEPLOYMENT_OPTIONS]
    assert len(set(flags)) == len(flags)


@pytest.mark.parametrize("opt", DEPLOYMENT_OPTIONS, ids=lambda o: o.name)
def test_the_default_passes_its_own_check(opt):
    if not opt.required:
        assert opt.check(opt.default) == opt.default


def _refused_values(opt):
    """Values just outside each declared bound, and values of a wrong type."""
    if opt.type in ("int", "tokens"):
        out = [1.5, "4x" if opt.type == "tokens" else "4", True]
        if opt.minimum is not None:
            out.append(int(opt.minimum) - (0 if opt.open_min else 1))
        if opt.maximum is not None:
            out.append(int(opt.maximum) + 1)
        return out
    if opt.type == "float":
        return ["0.5", float("nan"), True, opt.minimum if opt.open_min else opt.minimum - 1,
                opt.maximum * 1.001]
    if opt.type == "bool":
        return ["yes", 1, None] if opt.default is not None else ["yes", 1]
    if opt.type == "str":
        return ["bogus", 3, np.array([1, 2])]
    if opt.type == "dtype":
        return [3, b"bf16"]
    return []


CASES = [(o, v) for o in DEPLOYMENT_OPTIONS if not o.required for v in _refused_values(o)]


@pytest.mark.parametrize(("opt", "value"), CASES,
                         ids=[f"{o.name}={v!r}" for o, v in CASES])
def test_check_and_deployment_refuse_alike_naming_the_option(opt, value):
    with pytest.raises(mr.McrouteError, match=opt.name):
        opt.check(value)
    with pytest.raises(mr.McrouteError, match=opt.name):
        _dep(**{opt.name: value})


@pytest.mark.parametrize("name", ["hbm_fraction", "bandwidth_efficiency", "flops_efficiency",
                                  "interconnect_efficiency"])
def test_shares_exclude_zero_and_include_one(name):
    """The sweep used to accept 0 here; Deployment never did. One rule now: (0, 1]."""
    opt = BY_NAME[name]
    assert opt.minimum == 0.0 and opt.open_min and opt.maximum == 1.0
    assert opt.check(1.0) == 1.0 and opt.check(1) == 1.0
    assert "> 0" in opt.allowed()
    _dep(**{name: 1.0})


def test_lowest_allowed_ints_are_accepted_by_deployment():
    for name, value in (("redundant_experts", 0), ("mtp_depth", 0), ("max_batch", 1),
                        ("encoder_context", 0), ("expert_parallel", 1)):
        opt = BY_NAME[name]
        assert opt.check(value) == value == opt.minimum
        assert getattr(_dep(**{name: value}), name) == value


def test_choices_come_from_the_declaration():
    assert BY_NAME["kernels"].choices == ("calibrated", "roofline")
    assert BY_NAME["attention_parallel"].choices == ("tensor", "data")
    assert BY_NAME["all_to_all"].choices == ("off", "none", "overlap", "two-batch")
    for o in DEPLOYMENT_OPTIONS:
        for c in o.choices or ():
            assert _dep(**{o.name: c}).describe()[o.name] == c


def test_option_helpers_on_a_small_dataclass():
    @dataclasses.dataclass(frozen=True)
    class Thing:
        n: int = option(type="int", minimum=1, doc="how many", short="-n", metavar="N")
        share: float = option(0.5, type="float", minimum=0.0, maximum=1.0, open_min=True,
                              doc="a share")
        mode: str = option("a", type="str", choices=("a", "b"), doc="the mode")
        plain: int = 3  # not an option

    opts = options_of(Thing)
    assert [o.name for o in opts] == ["n", "share", "mode"]
    assert opts[0].required and opts[0].default is REQUIRED and repr(REQUIRED) == "REQUIRED"
    assert Thing(2).share == 0.5  # a REQUIRED option is a field without default
    assert opts[0].flag == "--n" and opts[1].flag == "--share"
    assert opts[0].allowed() == "an integer >= 1"
    assert opts[1].allowed() == "a number > 0 and <= 1"
    assert opts[2].allowed() == "one of 'a', 'b'"
    with pytest.raises(mr.McrouteError, match="mode must be one of 'a', 'b', got 'c'"):
        opts[2].check("c")
    with pytest.raises(mr.McrouteError, match="share"):
        opts[1].check(0.0)
    assert opts[1].check(np.float64(0.25)) == 0.25
    assert Option("x", "acceptance").check("beta:2,3") == "beta:2,3"  # parsed by its owner
    with pytest.raises(TypeError):
        option(1)


def test_weight_dtype_defaults_to_the_cards_release_dtype():
    ds3 = mr.load_model("deepseek-v3")
    assert ds3.release_dtype == "fp8"  # the card's key, from the released checkpoint
    dep = Deployment("deepseek-v3", "h200", 8)
    assert dep.weight_dtype == "fp8" and dep.describe()["weight_dtype"] == "fp8"
    assert dep.weight_bytes == Deployment("deepseek-v3", "h200", 8, weight_dtype="fp8").weight_bytes
    # an explicit dtype wins, and a bf16 card stays bf16
    assert Deployment("deepseek-v3", "h200", 16, weight_dtype="bf16").weight_dtype == "bf16"
    assert Deployment("llama-3.1-70b", "h200", 4).weight_dtype == "bf16"
    # a spec built by hand carries its own release dtype
    spec = dataclasses.replace(mr.load_model("llama-3.1-70b"), release_dtype="fp8")
    assert Deployment(spec, "h200", 4).weight_dtype == "fp8"
    # replace() resolves a default again for the new model, and keeps a given dtype
    assert dep.replace(model="llama-3.1-70b").weight_dtype == "bf16"
    given = Deployment("deepseek-v3", "h200", 8, weight_dtype="fp8")
    assert given.replace(model="llama-3.1-70b").weight_dtype == "fp8"


def test_token_options_take_size_strings():
    """A "tokens" option takes the CLI's spelling ("1k" = 1024, one parser in _base/units)."""
    opt = BY_NAME["encoder_context"]
    assert opt.check("1k") == 1024 and opt.check(0) == 0
    assert Deployment("switch-c-2048", "h200", 8, encoder_context="1k").encoder_context == 1024

"""The one parser of routing strings (``mcroute._routing.spec``) and the API accepting them.

The CLI (``--routing``), sweep specs and the Python API (``simulate("zipf:1.2", ...)``) parse
with the same functions; a string must give the same numbers as the object it names.
"""

import numpy as np
import pytest

import mcroute as mr
from mcroute._routing import as_routing, normalize_routing_text, parse_routing
from mcroute.cli.common import parse_routing as cli_parse_routing


@pytest.mark.parametrize(("text", "canon"), [
    ("uniform", "uniform"),
    ("  Uniform ", "uniform"),
    ("zipf:1.2", "zipf:1.2"),
    ("Zipf:1.20", "zipf:1.2"),
    ("zipf:1", "zipf:1.0"),
    ("lognormal:1.5", "lognormal:1.5"),
    ("zipf:1.2+correlated:0.2", "zipf:1.2+correlated:0.2"),
    ("uniform + group:8,4 + correlated:0.20", "uniform+correlated:0.2+group:8,4"),
    ("LOGNORMAL:0.5+GROUP:4,1", "lognormal:0.5+group:4,1"),
])
def test_canonical_forms(text, canon):
    assert normalize_routing_text(text) == canon
    assert normalize_routing_text(canon) == canon  # idempotent


@pytest.mark.parametrize(("text", "words"), [
    ("zipf", ["zipf needs zipf:ALPHA"]),
    ("uniform:1", ["uniform takes no parameter"]),
    ("pareto:1", ["must be BASE"]),
    ("zipf:-1", ["zipf alpha", ">= 0"]),
    ("zipf:nan", ["finite"]),
    ("zipf:1+correlated:0.1+correlated:0.2", ["correlated given twice"]),
    ("uniform+group:8", ["group:NG,TG"]),
    ("uniform+group:4,8", ["TG <= NG"]),
    ("uniform+group:0,0", ["integer >= 1"]),
    ("uniform+swap:1", ["after '+'"]),
    ("x" * 201, ["short string", "201 characters"]),
])
def test_bad_strings_name_the_parameter(text, words):
    with pytest.raises(mr.McrouteError) as exc:
        normalize_routing_text(text, param="--routing")
    assert str(exc.value).startswith("--routing")
    for w in words:
        assert w in str(exc.value)


def test_non_string_refused():
    with pytest.raises(mr.McrouteError, match="routing must be a string"):
        normalize_routing_text(1.2)


def test_parse_builds_the_objects():
    assert parse_routing("uniform", 64, 4) == mr.Uniform(64, 4)
    assert parse_routing("lognormal:1.5", 64, 4) == mr.LogNormal(64, 4, 1.5)
    r = parse_routing("zipf:1.2+correlated:0.2+group:8,4", 256, 8)
    assert r == mr.GroupLimited(mr.Correlated(mr.Zipf(256, 8, 1.2), 0.2), 8, 4)


def test_e_dependent_errors_name_the_string_and_layout():
    with pytest.raises(mr.McrouteError) as exc:
        parse_routing("uniform+group:7,2", 64, 4, param="--routing")
    msg = str(exc.value)
    assert msg.startswith("--routing 'uniform+group:7,2' (E=64, k=4)")
    assert "n_groups must divide n_experts=64" in msg


def test_cli_and_sweep_use_the_same_parser():
    text = "Zipf:1.2 + group:8,4"
    assert cli_parse_routing(text, 256, 8) == parse_routing(text, 256, 8)
    with pytest.raises(mr.McrouteError, match="^--routing"):
        cli_parse_routing("zipf", 256, 8)


def test_as_routing():
    z = mr.Zipf(64, 4, 1.2)
    assert as_routing(z) is z
    assert as_routing(z, 64, 4) is z  # matching E and k are fine
    assert as_routing("zipf:1.2", 64, 4) == z
    with pytest.raises(mr.McrouteError, match="needs n_experts and top_k"):
        as_routing("zipf:1.2")
    with pytest.raises(mr.McrouteError, match="needs top_k"):
        as_routing("zipf:1.2", n_experts=64)
    with pytest.raises(mr.McrouteError, match="top_k=2 is for a routing string"):
        as_routing(z, top_k=2)
    with pytest.raises(mr.McrouteError, match="routing must be a routing distribution"):
        as_routing(3.0)


def test_api_takes_strings_with_the_same_numbers():
    z = mr.Zipf(32, 4, 1.2)
    kw = dict(n_experts=32, top_k=4)
    assert np.array_equal(mr.sample_counts("zipf:1.2", 16, 20, rng=3, **kw),
                          mr.sample_counts(z, 16, 20, rng=3))
    assert np.array_equal(mr.sample_assignments("zipf:1.2", 16, 2, rng=3, **kw),
                          mr.sample_assignments(z, 16, 2, rng=3))
    assert np.array_equal(mr.expected_active_experts("zipf:1.2", [4, 16], **kw),
                          mr.expected_active_experts(z, [4, 16]))
    u = dict(n_experts=16, top_k=2)
    assert mr.active_experts_variance("uniform", 8, **u) == mr.active_experts_variance(
        mr.Uniform(16, 2), 8)
    assert mr.expert_load_distribution("uniform", 8, **u).mean() == pytest.approx(1.0)
    a = mr.simulate("zipf:1.2", [4, 16], 30, rng=5, **kw)
    b = mr.simulate(z, [4, 16], 30, rng=5)
    assert a.attrs["routing"] == b.attrs["routing"]
    a.attrs.pop("created_at")
    b.attrs.pop("created_at")
    assert a.identical(b)


def test_api_string_without_layout_is_refused_before_work():
    with pytest.raises(mr.McrouteError, match="needs n_experts and top_k"):
        mr.simulate("uniform", 8, 10**6)
    with pytest.raises(mr.McrouteError, match="needs n_experts and top_k"):
        mr.sample_counts("uniform", 8, 10)

"""The one parser of routing strings (``"zipf:1.2"``, ``"uniform+group:8,4"``...).

May import: ``mcroute._base``, the modules of ``mcroute._routing``.

Used by the CLI (``--routing``), sweep specs (``routing = "..."``) and the Python API (a string
wherever a routing is accepted). The format, :data:`ROUTING_SYNTAX`: a base law ``uniform``,
``zipf:ALPHA`` or ``lognormal:SIGMA``, optionally followed by ``+correlated:SIGMA``
(correlated microbatches, :class:`~mcroute.Correlated`) and ``+group:NG,TG`` (group-limited
routing over NG groups, TG of them per token, :class:`~mcroute.GroupLimited`), each at most
once and in any order. Case and spaces around the parts do not matter.

* :func:`normalize_routing_text` checks a string and returns its canonical spelling (lower
  case, numbers as Python prints them, ``correlated`` before ``group``: the order in which
  they are applied). It needs no E or k.
* :func:`parse_routing` builds the routing for E experts and top-k (E-dependent checks, such
  as NG dividing E, happen here).
* :func:`as_routing` accepts a routing object or a string, for the public functions.
"""

from __future__ import annotations

import math

from mcroute._base.validate import McrouteError, short_repr
from mcroute._routing.composite import Correlated, GroupLimited
from mcroute._routing.distributions import LogNormal, Uniform, Zipf

__all__ = ["ROUTING_SYNTAX", "normalize_routing_text", "parse_routing", "as_routing",
           "is_routing"]

#: The routing string format, shared by the CLI's ``--routing``, sweep specs and the API.
ROUTING_SYNTAX = ("BASE[+correlated:SIGMA][+group:NG,TG], BASE one of uniform, zipf:ALPHA, "
                  "lognormal:SIGMA")

#: Base laws and the name of their parameter (None: no parameter).
_BASES = {"uniform": None, "zipf": "ALPHA", "lognormal": "SIGMA"}

#: Longest routing string accepted (the format needs far fewer characters).
MAX_ROUTING_CHARS = 200


def _number(text: str, what: str, param: str) -> float:
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not math.isfinite(x) or x < 0:
        raise McrouteError(f"{param}: {what} must be a finite number >= 0, got {text.strip()!r}")
    return x


def _positive_int(text: str, what: str, param: str) -> int:
    t = text.strip()
    if not t.isdigit() or len(t) > 20 or int(t) < 1:
        raise McrouteError(f"{param}: {what} must be an integer >= 1, got {t!r}")
    return int(t)


def _base_text(part: str, bad: str, param: str) -> str:
    kind, sep, arg = part.partition(":")
    kind = kind.strip().lower()
    if kind not in _BASES:
        raise McrouteError(bad)
    if _BASES[kind] is None:
        if sep:
            raise McrouteError(f"{bad} (uniform takes no parameter)")
        return "uniform"
    if not arg.strip():
        raise McrouteError(f"{bad} ({kind} needs {kind}:{_BASES[kind]})")
    x = _number(arg, f"{kind} {_BASES[kind].lower()} ({kind}:{_BASES[kind]})", param)
    return f"{kind}:{x!r}"


def _modifier_text(name: str, arg: str, bad: str, param: str) -> str:
    if name == "correlated":
        x = _number(arg, "correlated sigma (correlated:SIGMA)", param)
        return f"correlated:{x!r}"
    ng, comma, tg = arg.partition(",")
    if not comma:
        raise McrouteError(f"{bad} (group needs group:NG,TG, e.g. group:8,4)")
    ngi = _positive_int(ng, "group NG (group:NG,TG)", param)
    tgi = _positive_int(tg, "group TG (group:NG,TG)", param)
    if tgi > ngi:
        raise McrouteError(f"{param}: group:NG,TG needs TG <= NG, got {ngi},{tgi}")
    return f"group:{ngi},{tgi}"


def normalize_routing_text(text, *, param: str = "routing") -> str:
    """Validate a routing string and return its canonical spelling.

    Parameters
    ----------
    text : str
        A routing string (:data:`ROUTING_SYNTAX`).
    param : str
        Name of the parameter in error messages (``"--routing"`` for the CLI).

    Examples
    --------
    >>> normalize_routing_text("Zipf:1.20")
    'zipf:1.2'
    >>> normalize_routing_text("uniform + group:8,4 + correlated:0.20")
    'uniform+correlated:0.2+group:8,4'
    >>> normalize_routing_text("zipf")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mcroute._base.validate.McrouteError: routing must be BASE...; got 'zipf' (zipf needs zipf:ALPHA)
    """
    if not isinstance(text, str):
        raise McrouteError(f"{param} must be a string {ROUTING_SYNTAX}; got {short_repr(text)}")
    if len(text) > MAX_ROUTING_CHARS:
        raise McrouteError(f"{param} must be a short string ({ROUTING_SYNTAX}); got "
                           f"{len(text)} characters")
    parts = [part.strip() for part in text.split("+")]
    bad = f"{param} must be {ROUTING_SYNTAX}; got {text!r}"
    base = _base_text(parts[0], bad, param)
    mods = {}
    for part in parts[1:]:
        name, sep, arg = part.partition(":")
        name = name.strip().lower()
        if name not in ("correlated", "group") or not sep or not arg.strip():
            raise McrouteError(f"{bad} (after '+': correlated:SIGMA or group:NG,TG, got "
                               f"{part!r})")
        if name in mods:
            raise McrouteError(f"{bad} ({name} given twice)")
        mods[name] = _modifier_text(name, arg, bad, param)
    return "+".join([base, *(mods[m] for m in ("correlated", "group") if m in mods)])


def parse_routing(text, n_experts, top_k, *, param: str = "routing"):
    """The routing named by ``text`` for ``n_experts`` experts and ``top_k`` per token.

    Errors of the routing classes (e.g. NG not dividing E) name ``param`` and the string.

    Examples
    --------
    >>> r = parse_routing("zipf:1.2+correlated:0.2+group:8,4", 256, 8)
    >>> type(r).__name__, type(r.base).__name__, r.base.sigma, r.n_groups, r.topk_groups
    ('GroupLimited', 'Correlated', 0.2, 8, 4)
    """
    canon = normalize_routing_text(text, param=param)
    parts = canon.split("+")
    try:
        kind, _, arg = parts[0].partition(":")
        if kind == "uniform":
            routing = Uniform(n_experts, top_k)
        else:
            routing = (Zipf if kind == "zipf" else LogNormal)(n_experts, top_k, float(arg))
        for part in parts[1:]:
            name, _, arg = part.partition(":")
            if name == "correlated":
                routing = Correlated(routing, float(arg))
            else:
                ng, _, tg = arg.partition(",")
                routing = GroupLimited(routing, int(ng), int(tg))
    except McrouteError as exc:
        raise McrouteError(f"{param} {canon!r} (E={short_repr(n_experts)}, "
                           f"k={short_repr(top_k)}): {exc}") from None
    return routing


def is_routing(x) -> bool:
    """Whether ``x`` behaves like a routing distribution (a class of this package, a trace...)."""
    return all(hasattr(x, a) for a in ("n_experts", "top_k", "_draw_counts",
                                       "inclusion_probabilities"))


def as_routing(x, n_experts=None, top_k=None, *, param: str = "routing"):
    """A routing distribution from a routing object or a routing string.

    Parameters
    ----------
    x : Routing, Trace or str
        A routing object is returned as it is (``n_experts`` and ``top_k`` must then be None or
        equal to its own); a string (:data:`ROUTING_SYNTAX`) is built with
        :func:`parse_routing` and needs both ``n_experts`` and ``top_k``.
    n_experts, top_k : int, optional
        E and k for a string.
    param : str
        Name of the parameter in error messages.

    Examples
    --------
    >>> as_routing("zipf:1.2", 64, 4)
    Zipf(n_experts=64, top_k=4, alpha=1.2, layer_seed=0, permute=True)
    """
    if isinstance(x, str):
        missing = [n for n, v in (("n_experts", n_experts), ("top_k", top_k)) if v is None]
        if missing:
            raise McrouteError(
                f"{param} {x!r} is a routing string: it needs {' and '.join(missing)} (the "
                "experts per layer E and per token k), e.g. n_experts=64, top_k=4")
        return parse_routing(x, n_experts, top_k, param=param)
    if not is_routing(x):
        raise McrouteError(
            f"{param} must be a routing distribution (Uniform, Zipf, LogNormal, Popularity, "
            f"Correlated, GroupLimited or a Trace) or a routing string {ROUTING_SYNTAX}; got "
            f"{type(x).__name__}")
    for name, v, own in (("n_experts", n_experts, x.n_experts), ("top_k", top_k, x.top_k)):
        if v is not None and v != own:
            raise McrouteError(f"{name}={short_repr(v)} is for a routing string; {param} "
                               f"{x!r} already has {name}={own}")
    return x

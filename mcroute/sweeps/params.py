"""Parameters of a sweep's cell kinds: :class:`Param`, :class:`CellKind` and the routing string.

A :class:`Param` names one key a spec may give in ``[axes]`` or ``[fixed]``, its type, units,
range and one line of documentation; :meth:`Param.normalize` turns a value read from TOML into
its canonical form (the coordinate of an axis and part of the cell's seed). Routing strings
are checked by the one routing parser, :mod:`mcroute._routing.spec`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from mcroute._base.validate import McrouteError
from mcroute._cost.calibrated import parse_acceptance
from mcroute._labeled.throughput import parse_tokens, parse_tpot
from mcroute._quality.quality import parse_q
from mcroute._routing.spec import normalize_routing_text

__all__ = ["REQUIRED", "CellKind", "Param"]

#: Marker default: the parameter must be given (in [fixed] or [axes]).
REQUIRED = object()


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _norm_int_like(p, value, where, bad):
    """An int given for an ``int``, ``tokens`` or ``batch`` parameter: >= minimum (default 1)."""
    lo = 1 if p.minimum is None else p.minimum
    if value < lo:
        raise McrouteError(f"{bad}an integer >= {lo:g}, got {value}")
    if p.maximum is not None and value > p.maximum:
        raise McrouteError(f"{bad}an integer <= {p.maximum:g}, got {value}")
    return int(value)


def _norm_int(p, value, where, bad):
    raise McrouteError(f"{bad}an integer, got {value!r}")


def _norm_tokens(p, value, where, bad):
    if isinstance(value, str):
        try:
            return parse_tokens(p.name, value)
        except McrouteError as exc:
            raise McrouteError(f"{where}: {exc}") from None
    raise McrouteError(f"{bad}a positive integer or a string like '128k', got {value!r}")


def _norm_batch(p, value, where, bad):
    if isinstance(value, str) and value.strip().lower() == "max":
        return "max"
    raise McrouteError(f"{bad}a positive integer or 'max', got {value!r}")


def _norm_float(p, value, where, bad):
    if not _is_number(value):
        raise McrouteError(f"{bad}a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise McrouteError(f"{bad}finite, got {value!r}")
    if p.minimum is not None and x < p.minimum:
        raise McrouteError(f"{bad}>= {p.minimum:g}, got {value!r}")
    if p.maximum is not None and x > p.maximum:
        raise McrouteError(f"{bad}<= {p.maximum:g}, got {value!r}")
    return x


def _norm_bool(p, value, where, bad):
    if not isinstance(value, bool):
        raise McrouteError(f"{bad}true or false, got {value!r}")
    return value


def _norm_str(p, value, where, bad):
    if not isinstance(value, str):
        raise McrouteError(f"{bad}a string, got {value!r}")
    if p.choices is not None and value not in p.choices:
        raise McrouteError(f"{bad}one of {list(p.choices)}, got {value!r}")
    return value


def _norm_routing(p, value, where, bad):
    return normalize_routing_text(value, param=f"{where}: {p.name}")


def _norm_acceptance(p, value, where, bad):
    if _is_number(value) or isinstance(value, str):
        try:
            parse_acceptance(value)
        except McrouteError:
            pass
        else:
            return value.strip().lower() if isinstance(value, str) else float(value)
    raise McrouteError(f"{bad}a number in [0, 1] or 'beta:A,B' (A, B > 0), got {value!r}")


def _norm_time(p, value, where, bad):
    if _is_number(value) or isinstance(value, str):
        try:
            return parse_tpot(value)
        except McrouteError:
            pass
    raise McrouteError(f"{bad}a time in (0, 3600) seconds: a number or a string like "
                       f"'50ms', got {value!r}")


def _norm_q(p, value, where, bad):
    if _is_number(value):
        x = float(value)
        if not math.isfinite(x) or x <= 0:
            raise McrouteError(f"{bad}a finite number > 0 or a q string, got {value!r}")
        return x
    if isinstance(value, str):
        try:
            parse_q(value, name=p.name)
        except McrouteError as exc:
            raise McrouteError(f"{where}: {exc}") from None
        return value.strip()
    raise McrouteError(f"{bad}a number > 0 or a q string such as 'lognormal:4,0.3', "
                       f"got {value!r}")


#: Canonical form of a value of each parameter type (ints of the int-like types aside).
_NORMALIZERS = {
    "int": _norm_int, "tokens": _norm_tokens, "batch": _norm_batch, "float": _norm_float,
    "bool": _norm_bool, "str": _norm_str, "routing": _norm_routing,
    "acceptance": _norm_acceptance, "time": _norm_time, "q": _norm_q,
}
#: Types whose integer values are taken as they are (checked against the minimum).
_INT_LIKE = ("int", "tokens", "batch")


# -- parameters ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Param:
    """One parameter of a cell kind.

    Parameters
    ----------
    name : str
        Key in [axes] / [fixed] and keyword of the cell function.
    type : str
        ``"int"``, ``"float"``, ``"str"``, ``"bool"``, ``"tokens"`` (an int or a string like
        ``"128k"``, k = 1024), ``"routing"`` (:data:`ROUTING_SYNTAX`, e.g. ``"zipf:1.2"``,
        ``"uniform+group:8,4"``), ``"batch"`` (an int or ``"max"``), ``"q"`` (a number or a
        :func:`mcroute.parse_q` string), ``"acceptance"`` (a number in [0, 1] or
        ``"beta:A,B"``) or ``"time"`` (seconds > 0, or a string like ``"50ms"``).
    default : object
        Shown in the docs; ``None`` means the cell function's own default applies.
        ``REQUIRED`` means the key must be given.
    units : str
        Units of the coordinate when the parameter is an axis.
    doc : str
        One line for the docs and error messages.
    minimum : float, optional
        Smallest allowed value (int and float types).
    maximum : float, optional
        Largest allowed value (float types).
    choices : tuple of str, optional
        Allowed values (str type).
    vector : bool
        A list is allowed in [fixed]: the cell function then returns that dim itself.
    """

    name: str
    type: str
    default: object = None
    units: str = "1"
    doc: str = ""
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple | None = None
    vector: bool = False

    @property
    def required(self) -> bool:
        """Whether the spec must give this parameter."""
        return self.default is REQUIRED

    def normalize(self, value, where: str):
        """Validate one value and return its canonical form (used as coordinate and key)."""
        bad = f"{where}: {self.name} must be "
        if (self.type in _INT_LIKE and isinstance(value, int)
                and not isinstance(value, bool)):
            return _norm_int_like(self, value, where, bad)
        try:
            norm = _NORMALIZERS[self.type]
        except KeyError:  # pragma: no cover - a kind declared with a bad type
            raise AssertionError(f"unknown parameter type {self.type!r}") from None
        return norm(self, value, where, bad)



@dataclasses.dataclass(frozen=True)
class CellKind:
    """A kind of cell: its parameters and the function that computes one cell.

    Parameters
    ----------
    name : str
        Value of ``kind`` in the spec.
    params : tuple of Param
        Every parameter the spec may give ([axes] or [fixed]); any other key is an error.
    run : callable
        ``run(params, *, rng, n_trials, ci_prob, quantiles) -> xarray.Dataset``: ``params``
        holds the given parameters only (canonical values), ``rng`` the cell's integer seed.
    prepare : callable, optional
        ``prepare(params)``: cheap validation of one cell (builds its objects), called for
        every cell before any work starts; raises ``McrouteError``.
    doc : str
        One line for the docs.
    """

    name: str
    params: tuple
    run: Callable
    prepare: Callable | None = None
    doc: str = ""

    def param(self, name: str) -> Param | None:
        """The parameter called ``name``, or None."""
        for p in self.params:
            if p.name == name:
                return p
        return None

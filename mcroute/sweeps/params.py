"""Parameters of a sweep's cell kinds: :class:`~mcroute._base.options.Option` and :class:`CellKind`.

A parameter is an :class:`~mcroute._base.options.Option`, the one declaration of an option
(``Param`` is its name here): the sweep key is the API keyword, with its type, default, units,
range and one line of documentation. The parameters of the built-in kinds are the functions'
own declarations (``mcroute._labeled.options``) and Deployment's (``DEPLOYMENT_OPTIONS``), the
ones the CLI flags are generated from, so a sweep accepts exactly the values the API and the
CLI do. :func:`normalize` turns a value read from a spec into its
canonical form (the coordinate of an axis and part of the cell's seed): the simple types
(int, float, bool, str, tokens) through :meth:`Option.check
<mcroute._base.options.Option.check>`, the sweep's string formats (routing strings through the
one routing parser, :mod:`mcroute._routing.spec`; q strings; acceptance rates; times; batch
sizes or ``"max"``) here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from mcroute._base.options import REQUIRED, Option
from mcroute._base.validate import McrouteError
from mcroute._cost.calibrated import parse_acceptance
from mcroute._labeled.throughput import parse_tpot
from mcroute._quality.quality import parse_q
from mcroute._routing.spec import normalize_routing_text

__all__ = ["REQUIRED", "CellKind", "Param", "normalize"]

#: A sweep parameter is an Option (one class for the API, the CLI and sweeps).
Param = Option


def normalize(opt: Option, value, where: str):
    """Validate one value of ``opt`` read from a spec; return its canonical form.

    Errors name ``where`` (the file, table and key) and what the option accepts.
    """
    norm = _NORMALIZERS.get(opt.type, _norm_text)
    return norm(opt, value, where)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checked(opt: Option, value, where: str):
    """:meth:`Option.check`, its error prefixed by ``where``."""
    try:
        return opt.check(value)
    except McrouteError as exc:
        raise McrouteError(f"{where}: {exc}") from None


def _norm_text(opt, value, where):
    """Names, paths and dtypes: a string (the owner checks it when the cell is prepared)."""
    if not isinstance(value, str):
        raise McrouteError(f"{where}: {opt.name} must be a string ({opt.doc}), got {value!r}")
    return value


def _norm_batch(opt, value, where):
    if isinstance(value, str) and value.strip().lower() == "max":
        return "max"
    if isinstance(value, int) and not isinstance(value, bool):
        return _checked(dataclasses.replace(opt, type="int"), value, where)
    raise McrouteError(f"{where}: {opt.name} must be a positive integer or 'max', got "
                       f"{value!r}")


def _norm_routing(opt, value, where):
    return normalize_routing_text(value, param=f"{where}: {opt.name}")


def _norm_acceptance(opt, value, where):
    if _is_number(value) or isinstance(value, str):
        try:
            parse_acceptance(value)
        except McrouteError:
            pass
        else:
            return value.strip().lower() if isinstance(value, str) else float(value)
    raise McrouteError(f"{where}: {opt.name} must be a number in [0, 1] or 'beta:A,B' (A, B > 0)"
                       f", got {value!r}")


def _norm_time(opt, value, where):
    if _is_number(value) or isinstance(value, str):
        try:
            return parse_tpot(value)
        except McrouteError:
            pass
    raise McrouteError(f"{where}: {opt.name} must be a time in (0, 3600) seconds: a number or a "
                       f"string like '50ms', got {value!r}")


def _norm_q(opt, value, where):
    if _is_number(value):
        x = float(value)
        if not math.isfinite(x) or x <= 0:
            raise McrouteError(f"{where}: {opt.name} must be a finite number > 0 or a q string, "
                               f"got {value!r}")
        return x
    if isinstance(value, str):
        try:
            parse_q(value, name=opt.name)
        except McrouteError as exc:
            raise McrouteError(f"{where}: {exc}") from None
        return value.strip()
    raise McrouteError(f"{where}: {opt.name} must be a number > 0 or a q string such as "
                       f"'lognormal:4,0.3', got {value!r}")


def _norm_simple(opt, value, where):
    return _checked(opt, value, where)


def _norm_bool(opt, value, where):
    if not isinstance(value, bool):  # the rule of Option.check, spelled as TOML spells it
        raise McrouteError(f"{where}: {opt.name} must be true or false, got {value!r}")
    return value


#: Canonical form of a value of each type; other types (model, hardware, path, dtype...) are
#: strings checked by their owner.
_NORMALIZERS = {
    "int": _norm_simple, "float": _norm_simple, "bool": _norm_bool, "str": _norm_simple,
    "tokens": _norm_simple, "batch": _norm_batch, "routing": _norm_routing,
    "acceptance": _norm_acceptance, "time": _norm_time, "q": _norm_q,
}


@dataclasses.dataclass(frozen=True)
class CellKind:
    """A kind of cell: its parameters and the function that computes one cell.

    Parameters
    ----------
    name : str
        Value of ``kind`` in the spec.
    params : tuple of Option
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

    def param(self, name: str) -> Option | None:
        """The parameter called ``name``, or None."""
        for p in self.params:
            if p.name == name:
                return p
        return None

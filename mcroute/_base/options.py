"""One declaration per option: :class:`Option`, :func:`option`, :func:`options_of` (floor 2).

May import: ``mcroute._base.validate``, ``mcroute._base.units``.

An option is declared once, as the metadata of a dataclass field::

    @dataclasses.dataclass(frozen=True)
    class Thing:
        n_gpus: int = option(REQUIRED, type="int", units="GPUs", doc="GPUs serving one replica",
                             minimum=1, short="-g", metavar="N")

and everything else is generated from that declaration: the API keyword is the field name, the
sweep key is the same name, the CLI flag is ``"--" + name.replace("_", "-")`` (plus the short
alias, if any), and :meth:`Option.check` validates a value against the declared type, range and
choices, raising :class:`~mcroute._base.validate.McrouteError` naming the option and what is
allowed. Cross-field rules (one option constraining another) stay with the class that declares
the options.

Types
-----
``"int"``, ``"float"``, ``"bool"`` and ``"str"`` (optionally with ``choices``) are checked fully
here, and so is ``"tokens"`` (an int or a size string like ``"128k"``, parsed by
:func:`mcroute._base.units.parse_size`, returned as an int). ``"dtype"`` must be a string (the
table of known dtypes belongs to the cards). Other types name a format whose parser lives on a
higher floor (``"time"``: seconds or ``"50ms"``; ``"acceptance"``: a number in [0, 1] or
``"beta:A,B"``; ``"path"``: a card name or file; ``"model"``, ``"hardware"``, ``"placement"``,
...): ``check`` leaves them to their owner and returns the value unchanged.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from mcroute._base.units import parse_size
from mcroute._base.validate import McrouteError, check_int, check_real, short_repr

__all__ = ["REQUIRED", "SIMPLE_TYPES", "Option", "option", "options_of"]


class _Required:
    """Marker default: the option must be given."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "REQUIRED"

    def __reduce__(self):
        return (_Required, ())


#: Marker default: the option must be given (no default).
REQUIRED = _Required()

#: Types :meth:`Option.check` validates completely.
SIMPLE_TYPES = ("int", "float", "bool", "str", "dtype", "tokens")


@dataclasses.dataclass(frozen=True)
class Option:
    """One option: its name, type, default, units, one line of documentation and its range.

    Parameters
    ----------
    name : str
        API keyword and sweep key; the CLI flag is :attr:`flag`.
    type : str
        ``"int"``, ``"float"``, ``"bool"``, ``"str"``, ``"dtype"``, ``"tokens"``, ``"time"``,
        ``"acceptance"``, ``"path"``, ... (see the module docstring).
    default : object
        The default value; ``None`` means "resolved from other options" (the resolved value is
        reported by the owner); :data:`REQUIRED` means the option must be given.
    units : str
        Units of the value (``"1"`` for dimensionless).
    doc : str
        One line for help texts, docs and error messages.
    minimum, maximum : float, optional
        Allowed range of ``"int"``, ``"float"`` and ``"tokens"`` values (inclusive, except the
        minimum with ``open_min`` and the maximum with ``open_max``, the latter for floats).
    open_min : bool
        The minimum itself is excluded (e.g. a share in (0, 1]).
    open_max : bool
        The maximum itself is excluded (e.g. a probability in (0, 1)).
    choices : tuple of str, optional
        Allowed values of a ``"str"`` option.
    vector : bool
        A list of values is allowed where one is expected (a sweep's [fixed] table).
    short : str, optional
        Short CLI alias (e.g. ``"-g"``).
    metavar : str, optional
        Placeholder of the value in CLI help (e.g. ``"N"``).
    cli : bool
        Exposed as a CLI flag (False: positional, or API only).
    """

    name: str
    type: str
    default: object = None
    units: str = "1"
    doc: str = ""
    minimum: float | None = None
    maximum: float | None = None
    open_min: bool = False
    open_max: bool = False
    choices: tuple | None = None
    vector: bool = False
    short: str | None = None
    metavar: str | None = None
    cli: bool = True

    @property
    def required(self) -> bool:
        """Whether the option must be given (no default)."""
        return self.default is REQUIRED

    @property
    def flag(self) -> str:
        """The long CLI flag, ``"--" + name`` with dashes."""
        return "--" + self.name.replace("_", "-")

    def allowed(self) -> str:
        """What the option accepts, in words (for help texts and error messages)."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.type == "bool":
            return "True or False"
        if self.type in ("int", "tokens", "float"):
            op = ">" if self.open_min else ">="
            lo = "" if self.minimum is None else f"{op} {self.minimum:g}"
            top = "<" if self.open_max else "<="
            hi = "" if self.maximum is None else f"{top} {self.maximum:g}"
            kind = "a number" if self.type == "float" else "an integer"
            return " ".join(x for x in (kind, lo, "and" if lo and hi else "", hi) if x)
        if self.type == "dtype":
            return "a dtype name like 'bf16'"
        return f"a {self.type}"

    def check(self, value):
        """Validate ``value`` for this option and return its canonical form.

        ``None`` is accepted when the default is None (resolved later by the owner). Ints come
        back as int, floats as float, bools as bool; other formats unchanged.
        """
        if value is None and self.default is None:
            return None
        checker = _CHECKS.get(self.type)
        return value if checker is None else checker(self, value)


def _check_tokens(opt: Option, value):
    if isinstance(value, str):  # "128k": the one size parser
        value = parse_size(opt.name, value, None if opt.maximum is None else int(opt.maximum))
    return _check_int(opt, value)


def _check_int(opt: Option, value):
    lo = opt.minimum
    if lo is not None and opt.open_min:
        lo = lo + 1
    return check_int(opt.name, value, minimum=None if lo is None else int(lo),
                     maximum=None if opt.maximum is None else int(opt.maximum))


def _check_float(opt: Option, value):
    return check_real(opt.name, value, minimum=opt.minimum, maximum=opt.maximum,
                      open_min=opt.open_min, open_max=opt.open_max)


def _check_bool(opt: Option, value):
    if not isinstance(value, (bool, np.bool_)):
        raise McrouteError(f"{opt.name} must be True or False, got {short_repr(value)}")
    return bool(value)


def _check_str(opt: Option, value):
    if not isinstance(value, str) or (opt.choices is not None and value not in opt.choices):
        raise McrouteError(f"{opt.name} must be {opt.allowed()}, got {short_repr(value)}")
    return value


_CHECKS = {"int": _check_int, "tokens": _check_tokens, "float": _check_float,
           "bool": _check_bool, "str": _check_str, "dtype": _check_str}


def option(default=REQUIRED, **kw) -> dataclasses.Field:
    """A dataclass field declared as an :class:`Option` (its name is the field's name).

    ``kw`` are the fields of :class:`Option` but ``name`` and ``default``; ``type`` is required.
    A :data:`REQUIRED` default makes a field without default.
    """
    if "type" not in kw:
        raise TypeError("option() needs type=")
    meta = {"option": Option(name="", default=default, **kw)}
    if default is REQUIRED:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@functools.cache
def options_of(cls) -> tuple[Option, ...]:
    """The :class:`Option` of every field of the dataclass ``cls`` declared with :func:`option`.

    In field order, each named after its field; computed once per class.
    """
    out = []
    for f in dataclasses.fields(cls):
        opt = f.metadata.get("option")
        if opt is not None:
            out.append(dataclasses.replace(opt, name=f.name))
    return tuple(out)

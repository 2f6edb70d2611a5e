"""Input validation shared by every layer above the kernels.

May import: numpy only. Every check raises :class:`McrouteError` (a ``ValueError``) whose message
names the parameter, the value received and what is allowed, so that the CLI can print it as one
line.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = [
    "McrouteError",
    "check_int",
    "check_int_list",
    "check_real",
    "check_prob",
]


class McrouteError(ValueError):
    """Bad input to mcroute: a parameter outside its allowed range, or a malformed file."""


def check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as a Python int, or raise naming ``name`` and the allowed range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if (not isinstance(value, bool) and isinstance(value, numbers.Real)
                and math.isfinite(value) and float(value).is_integer()):
            value = int(value)
        else:
            raise McrouteError(
                f"{name} must be an integer{_range(minimum, maximum)}, got {value!r}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise McrouteError(f"{name} must be an integer{_range(minimum, maximum)}, got {value}")
    return value


def check_int_list(name: str, value, *, minimum: int | None = None) -> tuple[list[int], bool]:
    """Validate an int or a 1-D sequence of ints; return ``(values, was_scalar)``."""
    if np.ndim(value) == 0:
        return [check_int(name, value, minimum=minimum)], True
    values = list(np.asarray(value, dtype=object).ravel())
    if not values:
        raise McrouteError(f"{name} must not be empty")
    return [check_int(f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(values)], False


def check_real(
    name: str,
    value,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_min: bool = False,
    open_max: bool = False,
) -> float:
    """Return ``value`` as a finite float within the bounds, or raise naming ``name``."""
    lo = "(" if open_min else "["
    hi = ")" if open_max else "]"
    allowed = ""
    if minimum is not None or maximum is not None:
        a = "-inf" if minimum is None else f"{minimum:g}"
        b = "inf" if maximum is None else f"{maximum:g}"
        allowed = f" in {lo}{a}, {b}{hi}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise McrouteError(f"{name} must be a finite real number{allowed}, got {value!r}")
    x = float(value)
    bad = not math.isfinite(x)
    if minimum is not None:
        bad |= x < minimum or (open_min and x == minimum)
    if maximum is not None:
        bad |= x > maximum or (open_max and x == maximum)
    if bad:
        raise McrouteError(f"{name} must be a finite real number{allowed}, got {value!r}")
    return x


def check_prob(name: str, value) -> float:
    """A probability strictly inside (0, 1), e.g. ``ci_prob``."""
    return check_real(name, value, minimum=0.0, maximum=1.0, open_min=True, open_max=True)


def _range(minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""

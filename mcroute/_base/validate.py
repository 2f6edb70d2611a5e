"""Input validation shared by every layer above the kernels.

May import: numpy and the standard library only. Every check raises :class:`McrouteError` (a
``ValueError``) whose message names the parameter, the value received and what is allowed, so that
the CLI can print it as one line.

The module also holds, in one place, the limits every public entry point enforces before it
allocates or computes anything (issue 11): sizes that feed int64 products, the memory a call may
hold and the work it may do. Each is a module constant below, with the reason for its value. A
request above a limit is refused with an error naming the parameter and the limit, never started
and left to die with ``MemoryError`` or to run for days.
"""

from __future__ import annotations

import math
import numbers
import os
import stat

import numpy as np

__all__ = [
    "McrouteError",
    "check_int",
    "check_int_list",
    "check_real",
    "check_prob",
    "check_unique",
    "check_choice",
    "check_path",
    "check_bytes",
    "check_work",
    "read_bounded",
    "short_repr",
    "format_bound",
    "INT64_MAX",
    "MAX_BATCH_SIZE",
    "MAX_EXPERTS",
    "MAX_LAYERS",
    "MAX_GPUS",
    "MAX_CAPACITY_FACTOR",
    "MAX_CONTEXT",
    "MAX_RESULT_BYTES",
    "MAX_DRAWS",
    "MAX_Q",
    "MAX_Q_SAMPLES",
    "MAX_BOOT_DRAWS",
    "MAX_CARD_BYTES",
    "PEAK_FLOPS_RANGE",
    "MAX_CARD_INT",
    "MAX_LINE_BYTES",
    "MAX_COUNT",
    "HBM_BYTES_RANGE",
    "INTERCONNECT_RANGE",
    "BANDWIDTH_RANGE",
]

#: Largest value any integer parameter may take: counts, sizes and ids are stored in int64.
INT64_MAX = 2**63 - 1

#: Largest decode microbatch (tokens per step, B). Real decode batches are below 10**6; the
#: limit keeps B·k (k <= MAX_EXPERTS) and the per-expert counts far inside int64 (2**60 at most),
#: and count-space sampling (cost independent of B) stays exact.
MAX_BATCH_SIZE = 2**40

#: Largest number of routed experts per layer. The finest-grained published MoE (PEER, 2024) has
#: 2**20 = 1,048,576 experts; count arrays hold one int64 per expert per layer and trial.
MAX_EXPERTS = 2**20

#: Largest number of layers (of a model card, or ``n_layers`` of a simulation). Published models
#: have at most a few hundred layers; every per-layer array stays small at 65,536.
MAX_LAYERS = 2**16

#: Largest expert capacity factor. At a factor of E or more no expert can overflow (capacity
#: >= B·k), so values above MAX_EXPERTS change nothing; the limit keeps the capacity finite.
MAX_CAPACITY_FACTOR = float(2**20)

#: Largest GPU count of one deployment (``n_gpus``): a million GPUs, far beyond any real replica.
MAX_GPUS = 2**20

#: Largest context length L [tokens]: 2**40, a thousand times the longest context of any released
#: model; keeps L·(KV values per token) and L·B exact in float64 and int64.
MAX_CONTEXT = 2**40

#: Largest total size of the arrays a call holds for its results (per-trial values, counts,
#: histograms) [bytes]. Results keep every Monte Carlo trial in memory (the summaries need them),
#: and summarising needs a few times that again, so 2 GiB keeps a call within a few GiB of RAM.
#: Sampling itself streams in blocks (``_BLOCK_ELEMENTS``) and does not count here.
MAX_RESULT_BYTES = 2**31

#: Largest number of elementary random draws one call may make (per-assignment sampling draws
#: B·k per microbatch and layer, count-space sampling E·k binomials). Measured at 1-3 ns per
#: draw on one core (``mcroute bench``), 2**40 (1.1e12) is about an hour: a larger request is
#: almost surely a typo, and is refused rather than left running.
MAX_DRAWS = 2**40

#: Largest quality-equivalence factor q (dense twin parameters / MoE active parameters). Useful
#: values are 1 to ~100 (q·s < 1 needs q < 1/s); 10**6 keeps the dense twin's parameter counts
#: exact in int64 for any model card.
MAX_Q = 1e6

#: Largest number of draws of an uncertain q (``n_q_samples``); each draw builds a dense twin and
#: its deployment (about a millisecond), so 65,536 draws take about a minute.
MAX_Q_SAMPLES = 2**16

#: Largest number of bootstrap replicates (``n_boot`` of ``estimate_q``, ``fit_routing``...).
#: Each replicate keeps a few float64 per benchmark fit or per expert, so 2**28 replicates are
#: already beyond MAX_RESULT_BYTES for any real table; the memory check then decides.
MAX_BOOT_DRAWS = 2**28

#: Largest card file (model or hardware TOML, HF config.json) read [bytes]. Real cards are a few
#: KiB; the limit is checked before reading, and at most this many bytes + 1 are ever read.
MAX_CARD_BYTES = 2**20

#: Largest integer field of a model card or HF config (hidden size, vocabulary, intermediate
#: sizes, heads, ...) unless a tighter limit applies (MAX_LAYERS, MAX_EXPERTS, MAX_CONTEXT).
#: 2**40 is far above any real model dimension and keeps products of several dimensions (the
#: parameter counts) finite and exact enough in float64.
MAX_CARD_INT = 2**40

#: Longest line of a text trace file (JSON lines, CSV) [bytes]. A routing record holds a few
#: integers; the limit stops a file without newlines (or ``/dev/zero``) from being read whole.
MAX_LINE_BYTES = 2**20

#: Largest count in a trace file (token counts, positions, histogram counts): 2**53, the
#: largest integer float64 holds exactly (the fits work in float64).
MAX_COUNT = 2**53

#: Allowed range of a hardware card's HBM per GPU [B]: 1 MiB to 1 PiB.
HBM_BYTES_RANGE = (float(2**20), float(2**50))

#: Allowed range of a hardware card's interconnect bandwidth per GPU [B/s] (0: not given).
INTERCONNECT_RANGE = (0.0, 1e15)

#: Allowed range of a hardware card's peak FLOP/s per GPU [FLOP/s], per dtype. 1e9 (a GFLOP/s)
#: is below any accelerator of the last decade; 1e18 (an exaFLOP/s on one GPU) is 100x beyond
#: the fastest announced part. Outside it the roofline times are nonsense (inf, 0 or NaN).
PEAK_FLOPS_RANGE = (1e9, 1e18)

#: Allowed range of a hardware card's HBM bandwidth per GPU [B/s]: 1e9 (1 GB/s) to 1e15
#: (1 PB/s, 100x the fastest announced HBM).
BANDWIDTH_RANGE = (1e9, 1e15)


class McrouteError(ValueError):
    """Bad input to mcroute: a parameter outside its allowed range, or a malformed file."""


def check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as a Python int, or raise naming ``name`` and the allowed range.

    Whatever ``maximum`` says, values outside int64 (|value| > :data:`INT64_MAX`) are refused:
    every integer ends up in an int64 array.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        try:
            ok = (not isinstance(value, bool) and isinstance(value, numbers.Real)
                  and math.isfinite(value) and float(value).is_integer())
        except (OverflowError, TypeError, ValueError):
            ok = False
        if not ok:
            raise McrouteError(
                f"{name} must be an integer{_range(minimum, maximum)}, got {short_repr(value)}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise McrouteError(
            f"{name} must be an integer{_range(minimum, maximum)}, got {short_repr(value)}")
    if abs(value) > INT64_MAX:
        lo = -INT64_MAX if minimum is None else minimum
        raise McrouteError(
            f"{name} must be an integer{_range(lo, INT64_MAX)} (int64), got {short_repr(value)}")
    return value


def short_repr(value) -> str:
    """``repr`` of a received value, shortened so that an error stays one readable line."""
    try:
        if isinstance(value, int) and abs(value) >= 10**30:
            return f"an integer of about {int(abs(value).bit_length() * 0.30103) + 1} digits"
        text = repr(value)
    except (ValueError, RecursionError):  # int too long for str(), or a self-nesting container
        return f"a {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


def check_int_list(name: str, value, *, minimum: int | None = None,
                   maximum: int | None = None) -> tuple[list[int], bool]:
    """Validate an int or a 1-D sequence of ints; return ``(values, was_scalar)``."""
    try:
        scalar = np.ndim(value) == 0
        values = None if scalar else list(np.asarray(value, dtype=object).ravel())
    except (ValueError, TypeError, RecursionError):
        raise McrouteError(f"{name} must be an integer or a list of integers, got "
                           f"{short_repr(value)}") from None
    if scalar:
        return [check_int(name, value, minimum=minimum, maximum=maximum)], True
    if not values:
        raise McrouteError(f"{name} must not be empty")
    return [check_int(f"{name}[{i}]", v, minimum=minimum, maximum=maximum)
            for i, v in enumerate(values)], False


def check_choice(name: str, value, choices) -> str:
    """Return ``value`` if it is one of the strings ``choices``, else raise listing them."""
    if not isinstance(value, str) or value not in choices:
        raise McrouteError(f"{name} must be one of {', '.join(map(repr, choices))}, got "
                           f"{short_repr(value)}")
    return value


def check_path(name: str, value):
    """Return ``value`` as a ``pathlib.Path``; raise unless it is a str or os.PathLike."""
    from pathlib import Path

    if not isinstance(value, (str, os.PathLike)) or (isinstance(value, str) and not value):
        raise McrouteError(f"{name} must be a file path, got {short_repr(value)}")
    try:
        return Path(value)
    except (TypeError, ValueError) as exc:
        raise McrouteError(f"{name}: {exc}") from None


def check_unique(name: str, values) -> None:
    """Raise unless the coordinate values ``values`` are distinct (they label a dimension)."""
    seen = set()
    for v in values:
        if v in seen:
            raise McrouteError(f"{name} must not repeat values (they label a dimension), got "
                               f"{short_repr(list(values))}; {v!r} appears twice")
        seen.add(v)


def check_bytes(what: str, nbytes, params: str, limit: int | None = None) -> None:
    """Refuse a request whose arrays ``what`` would take ``nbytes`` above ``limit``.

    ``params`` names the parameters to lower (e.g. ``"n_trials or n_layers"``). The default
    limit is :data:`MAX_RESULT_BYTES`.
    """
    limit = MAX_RESULT_BYTES if limit is None else limit
    if nbytes > limit:
        raise McrouteError(
            f"{params} too large: {what} would take {_gib(nbytes)}, above the limit of "
            f"{_gib(limit)} (mcroute._base.validate.MAX_RESULT_BYTES); lower {params}")


def check_work(what: str, draws, params: str, limit: int | None = None) -> None:
    """Refuse a request needing more than ``limit`` (:data:`MAX_DRAWS`) random draws."""
    limit = MAX_DRAWS if limit is None else limit
    if draws > limit:
        raise McrouteError(
            f"{params} too large: {what} needs {float(draws):.3g} random draws, above the limit "
            f"of {float(limit):.3g} (MAX_DRAWS, about an hour); lower {params}")


def _gib(nbytes) -> str:
    return f"{float(nbytes) / 2**30:.3g} GiB"


def read_bounded(path, what: str, limit: int | None = None, *, binary: bool = False):
    """Read a small file (a card, a spec) safely: text (UTF-8) or bytes.

    The file must be a regular file (not ``/dev/zero``, a FIFO or a directory) of at most
    ``limit`` bytes (default :data:`MAX_CARD_BYTES`); the size is checked before reading and at
    most ``limit + 1`` bytes are read, so a file that grows while read is refused too. Errors name
    the file (``what``).
    """
    limit = MAX_CARD_BYTES if limit is None else limit
    try:
        st = os.stat(path)
    except (OSError, ValueError, TypeError) as exc:
        raise McrouteError(f"cannot read {what}: {_oserror(exc)}") from None
    if not stat.S_ISREG(st.st_mode):
        raise McrouteError(f"{what}: not a regular file")
    if st.st_size > limit:
        raise McrouteError(f"{what}: file of {st.st_size} bytes is larger than the limit of "
                           f"{limit} bytes (mcroute._base.validate.MAX_CARD_BYTES)")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except (OSError, ValueError) as exc:
        raise McrouteError(f"cannot read {what}: {_oserror(exc)}") from None
    if len(data) > limit:
        raise McrouteError(f"{what}: larger than the limit of {limit} bytes "
                           "(mcroute._base.validate.MAX_CARD_BYTES)")
    if binary:
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise McrouteError(f"{what}: not UTF-8 text (byte {exc.start})") from None


def _oserror(exc) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


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
        raise McrouteError(f"{name} must be a finite real number{allowed}, got {short_repr(value)}")
    try:
        x = float(value)
    except OverflowError:  # an int beyond the float range
        x = math.inf
    bad = not math.isfinite(x)
    if minimum is not None:
        bad |= x < minimum or (open_min and x == minimum)
    if maximum is not None:
        bad |= x > maximum or (open_max and x == maximum)
    if bad:
        raise McrouteError(f"{name} must be a finite real number{allowed}, got {short_repr(value)}")
    return x


def check_prob(name: str, value) -> float:
    """A probability strictly inside (0, 1), e.g. ``ci_prob``."""
    return check_real(name, value, minimum=0.0, maximum=1.0, open_min=True, open_max=True)


def format_bound(x) -> str:
    """A range bound as people read it: large powers of two as ``2^40``, else as given."""
    if isinstance(x, int) and x >= 1 << 16 and x & (x - 1) == 0:
        return f"2^{x.bit_length() - 1}"
    return str(x)


def _range(minimum, maximum) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{format_bound(minimum)}, {format_bound(maximum)}]"
    if minimum is not None:
        return f" >= {format_bound(minimum)}"
    if maximum is not None:
        return f" <= {format_bound(maximum)}"
    return ""

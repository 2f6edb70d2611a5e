"""Helpers shared by the CLI subcommands: numbers, sizes, routings, paths, renamed flags.

Front end (5). May import: every floor below.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import sys
from pathlib import Path

from mcroute._base import units
from mcroute._base.validate import McrouteError, check_int, check_real
from mcroute._labeled.export import save_dataset

__all__ = ["parse_int", "parse_int_list", "parse_size", "parse_size_list", "parse_real",
           "parse_routing", "ROUTING_HELP", "check_input_path", "check_output_path",
           "write_output", "is_tty", "INT_MAX", "RENAMED", "refuse_renamed",
           "name_flags", "cli_names", "API_WORDS"]

#: Largest integer any option accepts: every count and size ends up in an int64 array or
#: product, so larger values could only overflow. Commands and the API refuse far smaller
#: values where a resource limit applies.
INT_MAX = 2**63 - 1

#: Digits read from an integer option (more cannot fit below INT_MAX).
_MAX_DIGITS = 40


#: Flags renamed in issue 12 so that every long flag is spelled as its API keyword
#: (``--n-trials`` <-> ``n_trials``): the old spelling -> the new flag. The old spellings are
#: refused with a one-line hint naming the new flag (never silently accepted).
RENAMED = {
    "--batch": "--batch-size",
    "--trials": "--n-trials",
    "--experts": "--n-experts",
    "--gpus": "--n-gpus",
    "--dense-gpus": "--dense-n-gpus",
    "--q-samples": "--n-q-samples",
    "--attention": "--attention-parallel",
    "--layers": "--n-layers",
    "--devices": "--n-devices",
    "--boot": "--n-boot",
}


class _Renamed(argparse.Action):
    """An old flag spelling: refused, naming the new flag."""

    def __call__(self, parser, namespace, values, option_string=None):
        new = RENAMED[option_string]
        raise argparse.ArgumentError(None, f"{option_string} was renamed {new} (long flags are "
                                     "spelled as the API keywords); use "
                                     f"{new}{'' if values is None else ' ' + str(values)}")


def refuse_renamed(p, *old: str) -> None:
    """Add hidden ``old`` flags to parser ``p`` that refuse themselves with a hint (RENAMED)."""
    for flag in old:
        p.add_argument(flag, nargs="?", action=_Renamed, default=argparse.SUPPRESS,
                       dest=f"renamed_{flag.lstrip('-').replace('-', '_')}",
                       help=argparse.SUPPRESS)


#: API function names as the CLI words them in messages raised below the CLI.
API_WORDS = {"real_batch_check": "the real-batch check (trace check)",
             "fit_routing": "the routing fit (trace fit)",
             "inspect_trace": "the trace inspection", "decode_throughput": "the throughput run",
             "qs_analysis": "the qs analysis", "estimate_q": "the q estimate"}
_SNAKE = re.compile(r"(?<![\w.\-'\"])([a-z][a-z0-9]*(?:_[a-z0-9]+)+)(?![\w\-'\"(])")
_KEYWORD_EQ = re.compile(r"(?<![\w.\-])([a-z][a-z0-9_]*)=")
_LEADING = re.compile(r"^([a-z][a-z0-9_]*)(?= must | needs | is )")


def name_flags(text: str, flags: dict) -> str:
    """``text`` with API keywords named as CLI flags (``n_experts`` -> ``--n-experts``).

    ``flags`` maps keywords to flags (:func:`cli_names`). Only known keywords are rewritten:
    a snake_case word (``n_experts``), a keyword before ``=`` (``model=``), and a message that
    starts with a keyword (``routing must ...``); API function names become words
    (:data:`API_WORDS`). Other text is left alone.
    """
    text = _SNAKE.sub(lambda m: flags.get(m.group(1), API_WORDS.get(m.group(1),
                                                                    m.group(1))), text)
    text = _KEYWORD_EQ.sub(lambda m: f"{flags[m.group(1)]}=" if m.group(1) in flags
                           else m.group(0), text)
    return _LEADING.sub(lambda m: flags.get(m.group(1), m.group(1)), text)


def cli_names(parser) -> dict:
    """API keyword -> CLI flag, for every option of ``parser`` and its subcommands.

    Only options spelled as their keyword count (``--n-experts`` for ``n_experts``); a
    positional ``model`` is ``MODEL``. Give the parser of the command that ran: one keyword
    may be a flag in one command and a positional in another (``trace --model``, ``qs MODEL``).
    """
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out.update(cli_names(sub))
        if not action.option_strings and action.dest == "model":
            out["model"] = "MODEL"
        for flag in action.option_strings:
            if flag.startswith("--") and flag[2:].replace("-", "_") == action.dest:
                out[action.dest] = flag
    return out


def _shown(text, limit: int = 40) -> str:
    """``repr(text)``, shortened for an error message."""
    r = repr(text)
    return r if len(r) <= limit else r[: limit - 5] + "...'"


def parse_int(text, name: str, minimum: int | None = None, maximum: int = INT_MAX) -> int:
    """Parse a command-line integer, naming the option and the allowed range on error."""
    s = str(text).strip()
    try:
        if len(s) > _MAX_DIGITS:
            raise ValueError
        value = int(s)
    except ValueError:
        raise McrouteError(f"{name} must be an integer, got {_shown(text)}") from None
    return check_int(name, value, minimum=minimum, maximum=maximum)


def parse_real(text, name: str, *, minimum: float | None = None,
               maximum: float | None = None, open_min: bool = False,
               open_max: bool = False) -> float:
    """Parse a finite real number (a string or an already converted float), naming the option."""
    if isinstance(text, str):
        try:
            text = float(text.strip())
        except ValueError:
            raise McrouteError(f"{name} must be a number, got {_shown(text)}") from None
    return check_real(name, text, minimum=minimum, maximum=maximum, open_min=open_min,
                      open_max=open_max)


def parse_size(name: str, text: str, maximum: int = INT_MAX) -> int:
    """Parse ``4096``, ``4k`` or ``128K`` (k = 1024 tokens, as context lengths are quoted)."""
    return units.parse_size(name, str(text), maximum)


def parse_size_list(name: str, text: str, maximum: int = INT_MAX) -> list[int]:
    """Comma-separated distinct sizes, e.g. ``4k,32k,128k``."""
    if not str(text).replace(",", "").strip():
        raise McrouteError(
            f"{name} must be a comma-separated list of sizes, got {_shown(text)}")
    return units.parse_size_list(name, str(text), maximum)[0]


def parse_int_list(name: str, text: str, maximum: int = INT_MAX) -> list[int]:
    """Comma-separated distinct positive integers (k/m suffixes allowed)."""
    return parse_size_list(name, text, maximum)


def check_input_path(name: str, text) -> None:
    """Refuse an existing input path that is not a regular file or a folder.

    Devices, FIFOs and sockets (``/dev/zero``, ``/dev/stdin``) never end and would be read until
    memory runs out. Paths that do not exist are left to the loader (they may be card names).
    """
    p = str(text)
    try:
        st = os.stat(p)
    except (OSError, ValueError):
        return
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise McrouteError(f"{name}: {p!r} is not a regular file (a device, FIFO or socket)")


def parse_routing(text: str, n_experts: int, top_k: int):
    """``--routing``: ``BASE[+correlated:SIGMA][+group:NG,TG]`` for E experts and top-k.

    The one parser of routing strings (:func:`mcroute._routing.spec.parse_routing`, also used
    by sweep specs and the API), e.g. ``uniform``, ``zipf:1.2``, ``zipf:1.2+correlated:0.2``,
    ``uniform+group:8,4``.
    """
    from mcroute._routing import spec

    return spec.parse_routing(text, n_experts, top_k, param="--routing")


ROUTING_HELP = ("BASE[+correlated:SIGMA][+group:NG,TG], BASE = uniform | zipf:ALPHA | "
                "lognormal:SIGMA (e.g. zipf:1.2+correlated:0.2, uniform+group:8,4)")

def check_output_path(path, allowed=(".nc", ".csv", ".json"), flag: str = "--output") -> None:
    """Refuse a bad output path before any work is done.

    Checks the extension, that the folder exists and is writable, and that no folder or
    non-regular file is in the way (the write itself checks again, atomically).
    """
    if path is None:
        return
    if str(path).endswith(("/", os.sep)):
        raise McrouteError(f"{flag}: {str(path)!r} names a folder; give a file name")
    p = Path(str(path))
    ext = p.suffix.lower()
    if allowed and ext not in allowed:
        listed = ", ".join(allowed[:-1]) + f" or {allowed[-1]}" if len(allowed) > 1 else allowed[0]
        raise McrouteError(f"{flag} must end in {listed}, got {str(path)!r}")
    target = Path(os.path.realpath(p)) if p.is_symlink() else p
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise McrouteError(f"{flag}: output folder {str(folder)!r} does not exist")
    if target.exists() and not target.is_file():
        raise McrouteError(f"{flag}: {str(path)!r} exists and is not a regular file")
    # the file is written beside its target and renamed into place: the folder must be writable
    if not os.access(folder, os.W_OK | os.X_OK):
        raise McrouteError(f"{flag}: output folder {str(folder)!r} is not writable")


def write_output(ds, path, quiet: bool = False) -> None:
    """Write ``ds`` by extension (.nc, .csv, .json), atomically, and say where (unless quiet)."""
    out = save_dataset(ds, path)
    if not quiet:
        print(f"wrote {out}", file=sys.stderr)


def is_tty(stream=None) -> bool:
    """Whether progress output should be shown (a terminal, not a pipe)."""
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())

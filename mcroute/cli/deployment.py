"""CLI flags generated from option declarations: Deployment's, and simulate / throughput / qs's.

Front end (5). May import: every floor below; ``mcroute.cli.common``.

Every :class:`mcroute.Deployment` option is declared once (``DEPLOYMENT_OPTIONS``: type, units,
range, choices, help, metavar, short alias), and so is every option of ``simulate``,
``decode_throughput`` and ``qs_analysis`` (``mcroute._labeled.options``). This module turns each
declaration with ``cli=True`` into a flag spelled as the keyword (``expert_parallel`` ->
``--expert-parallel``, plus the declared short alias), reads the given flags back into keywords
(the mapping is the identity), and checks each value when the command line is read against the
declared type and range, naming the flag. Deployment flags not given are not passed, so the
Deployment's own defaults (and their documented resolution) apply; a command's own flags get
the declared default unless the command documents another (:func:`add_option_flags`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

from mcroute._base.options import REQUIRED
from mcroute._base.validate import McrouteError, format_bound, short_repr
from mcroute._cards.cards import DTYPE_BYTES
from mcroute._cost.calibrated import parse_acceptance
from mcroute._cost.calibration import load_kernel_card
from mcroute._cost.deployment import DEPLOYMENT_OPTIONS
from mcroute._labeled.throughput import parse_tpot
from mcroute.cli.common import (
    check_input_path,
    name_flags,
    parse_int,
    parse_real,
    parse_size,
    parse_size_list,
)

__all__ = ["add_deployment_flags", "deployment_flags", "flag_spec", "batch_policy_flags",
           "placement_error", "kernels_line", "DEPLOYMENT_FLAGS", "EXTRA_CHOICES", "FLAG_NAMES",
           "add_option_flags", "option_values", "flag_value"]

#: Options every command declares itself (a positional MODEL, and --hardware / --n-gpus whose
#: requiredness and defaults differ between throughput and qs; they still use the declaration's
#: short alias, metavar and help through :func:`flag_spec`).
_OWN = ("model", "hardware", "n_gpus")
#: The Deployment options exposed as generated flags.
DEPLOYMENT_FLAGS = tuple(o for o in DEPLOYMENT_OPTIONS if o.cli and o.name not in _OWN)
#: Keyword -> flag of every Deployment option (help texts and notes name flags, not keywords).
FLAG_NAMES = {o.name: o.flag for o in DEPLOYMENT_OPTIONS if o.cli} | {
    "batch_size": "--batch-size"}
#: Values the CLI accepts beyond the declared choices: ``--all-to-all serial`` is the older
#: CLI name of ``none`` (charged, not overlapped).
EXTRA_CHOICES = {"all_to_all": {"serial": "none"}}
#: Largest expert-placement file read (bytes).
_MAX_PLACEMENT_BYTES = 1 << 22


def _range(opt) -> str:
    """``in [1, 2^20]``, ``in (0, 1]``, ``>= 0``: the declared range in help texts."""
    def num(x):
        return format_bound(int(x)) if opt.type != "float" or float(x).is_integer() else f"{x:g}"

    lo, hi = opt.minimum, opt.maximum
    if lo is not None and hi is not None:
        return (f"in {'(' if opt.open_min else '['}{num(lo)}, {num(hi)}"
                f"{')' if opt.open_max else ']'}")
    if lo is not None:
        return f"{'>' if opt.open_min else '>='} {num(lo)}"
    return f"{'<' if opt.open_max else '<='} {num(hi)}"


#: Placeholder of a value in help texts, by type, when the declaration names none.
_METAVAR = {"int": "N", "float": "X", "tokens": "L"}


def _help(opt) -> str:
    text = opt.doc
    if opt.units not in ("1", ""):
        text += f" [{opt.units}]"
    if opt.type in ("int", "float", "tokens") and (opt.minimum is not None
                                                 or opt.maximum is not None):
        text += f"; {_range(opt)}"
    if opt.default is not None and opt.default is not REQUIRED and opt.type != "bool":
        text += f" (default {_shown_default(opt.default)})"
    return name_flags(text, FLAG_NAMES).replace("%", "%%")


def _shown_default(value) -> str:
    """A default as typed on the command line (a list as ``1,8,64``)."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def flag_spec(opt) -> tuple[list[str], dict]:
    """The flag names and ``add_argument`` keywords of one declared option (no default)."""
    names = ([opt.short] if opt.short else []) + [opt.flag]
    kw = {"dest": opt.name, "default": None, "help": _help(opt)}
    if opt.type == "bool":
        kw["action"] = argparse.BooleanOptionalAction
        if opt.default is not None:
            kw["help"] += f" (default {'on' if opt.default else 'off'})"
        return names, kw
    if opt.choices is not None:
        kw["choices"] = list(opt.choices) + list(EXTRA_CHOICES.get(opt.name, {}))
    elif opt.metavar or opt.type in _METAVAR:
        kw["metavar"] = opt.metavar or _METAVAR[opt.type]
    return names, kw


def add_deployment_flags(p) -> None:
    """Add a flag for every declared Deployment option (but model, hardware and n_gpus)."""
    g = p.add_argument_group("deployment options (mcroute.Deployment keywords; "
                             "docs/assumptions.md)")
    for opt in DEPLOYMENT_FLAGS:
        names, kw = flag_spec(opt)
        g.add_argument(*names, **kw)


def add_option_flags(p, options, *, defaults=None, notes=None, skip=()) -> None:
    """Add a flag for every declared option of a command (``options``: a tuple of Option).

    ``defaults`` maps names to the command's own default where it differs from the declared
    (API) one, as typed on the command line (``{"n_trials": 2000}``); an option whose default
    is REQUIRED is a required flag. ``notes`` adds a sentence to an option's help (e.g. what
    a None default means); ``skip`` names options the command declares itself.
    """
    defaults, notes = defaults or {}, notes or {}
    for opt in options:
        if not opt.cli or opt.name in skip:
            continue
        if opt.name in defaults:
            opt = dataclasses.replace(opt, default=defaults[opt.name])
        names, kw = flag_spec(opt)
        if opt.name in notes:
            kw["help"] += "; " + notes[opt.name].replace("%", "%%")
        if opt.required:
            kw["required"] = True
        elif opt.default is not None:
            kw["default"] = opt.default
        p.add_argument(*names, **kw)


def option_values(args, options, skip=()) -> dict:
    """``{name: value}`` of every declared option of a command, each checked (None: not given).

    Errors name the flag; the values are those the API keyword takes (a list for a list).
    """
    return {o.name: (None if getattr(args, o.name, None) is None
                     else flag_value(o, getattr(args, o.name)))
            for o in options if o.cli and o.name not in skip}


def _read_placement(text: str) -> tuple:
    """``--expert-placement FILE``: integers (group ids) separated by commas or white space."""
    check_input_path("--expert-placement", text)
    path = Path(text)
    if not path.is_file():
        raise McrouteError(f"--expert-placement must be 'balanced' or a file of group ids, got "
                           f"{short_repr(text)} (no such file)")
    if path.stat().st_size > _MAX_PLACEMENT_BYTES:
        raise McrouteError(f"--expert-placement {text}: file larger than "
                           f"{_MAX_PLACEMENT_BYTES} bytes")
    try:
        body = path.read_text()
    except UnicodeDecodeError:
        raise McrouteError(f"--expert-placement {text}: not a text file") from None
    body = "\n".join(line.partition("#")[0] for line in body.splitlines())  # '#' comments
    fields = [f for f in re.split(r"[\s,]+", body) if f]
    out = []
    for i, f in enumerate(fields):
        if not f.isdigit() or len(f) > 9:
            raise McrouteError(f"--expert-placement {text}: entry {i} is not a group id "
                               f"(an integer >= 0), got {short_repr(f)}")
        out.append(int(f))
    if not out:
        raise McrouteError(f"--expert-placement {text}: no group ids in the file")
    return tuple(out)


def _acceptance(text: str, flag: str):
    text = text.strip()
    try:
        value = parse_acceptance(float(text))
    except ValueError:
        value = text
    try:
        parse_acceptance(value)
    except McrouteError:
        raise McrouteError(f"{flag} must be a number in [0, 1] or beta:A,B with A, B > 0, got "
                           f"{short_repr(text)}") from None
    return value


def _kernel_card(text: str, flag: str):
    check_input_path(flag, text)
    try:
        load_kernel_card(text)  # checked here so that the error names the flag
    except McrouteError as exc:
        raise McrouteError(f"{flag}: {exc}") from None
    return text


def _dtype(text: str, flag: str) -> str:
    d = text.strip().lower()
    if d not in DTYPE_BYTES:
        raise McrouteError(f"{flag} must be one of {', '.join(DTYPE_BYTES)}, got "
                           f"{short_repr(text)}")
    return d


def _number(opt, text: str, flag: str):
    lo, hi = opt.minimum, opt.maximum
    if opt.type == "float":
        return parse_real(text, flag, minimum=lo, maximum=hi, open_min=opt.open_min,
                          open_max=opt.open_max)
    if opt.type == "tokens":
        if lo == 0 and text.strip() == "0":
            return 0
        return parse_size(flag, text, maximum=int(hi) if hi is not None else 2**63 - 1)
    lo = None if lo is None else int(lo) + (1 if opt.open_min else 0)
    return parse_int(text, flag, minimum=lo, maximum=int(hi) if hi is not None else 2**63 - 1)


def _sizes(opt, text, flag: str) -> list[int]:
    """A comma-separated list of sizes (``1,8,4k``) in the declared range."""
    return parse_size_list(flag, text, maximum=int(opt.maximum) if opt.maximum is not None
                           else 2**63 - 1)


def _batch(opt, text, flag: str):
    """``max`` or a list of batch sizes."""
    if str(text).strip().lower() == "max":
        return "max"
    return _sizes(opt, text, flag)


def _time(opt, text, flag: str) -> float:
    try:
        return parse_tpot(str(text).strip())
    except McrouteError:
        raise McrouteError(f"{flag} must be a time in (0, 3600) s: a number of seconds "
                           f"or like 50ms, got {short_repr(text)}") from None


def flag_value(opt, text):
    """One flag's text as the keyword's value, checked against the declaration.

    Errors name the flag. Formats parsed by their owner after the command line is read
    (routing and q strings, model names) come back as text.
    """
    flag = opt.flag
    if opt.type == "bool" or opt.choices is not None:  # argparse converted and checked it
        return EXTRA_CHOICES.get(opt.name, {}).get(text, text)
    if opt.vector and opt.type in ("int", "tokens"):
        return _sizes(opt, text, flag)
    if opt.type in ("int", "float", "tokens"):
        return _number(opt, text, flag)
    parse = _PARSERS.get(opt.type)
    return text if parse is None else parse(opt, text, flag)


def _placement(opt, text, flag: str):
    return None if text.strip().lower() == "balanced" else _read_placement(text)


#: Parsers of the formats checked when the command line is read, by declared type.
_PARSERS = {
    "dtype": lambda opt, text, flag: _dtype(text, flag),
    "acceptance": lambda opt, text, flag: _acceptance(text, flag),
    "path": lambda opt, text, flag: _kernel_card(text, flag),
    "placement": _placement,
    "batch": _batch,
    "time": _time,
}


def deployment_flags(args) -> dict:
    """The Deployment keywords given on the command line, each checked (errors name the flag)."""
    opts = {}
    for opt in DEPLOYMENT_FLAGS:
        text = getattr(args, opt.name, None)
        if text is None:
            continue
        if opt.type == "placement" and opts.get("redundant_experts") \
                and text.strip().lower() != "balanced":
            raise McrouteError("--redundant-experts and --expert-placement FILE cannot be "
                               "combined (with redundant experts the placement is rebuilt "
                               "per layer, EPLB-style)")
        value = flag_value(opt, text)
        if value is not None:
            opts[opt.name] = value
    if opts.get("mtp_depth", 0) > 0 and "mtp_acceptance" not in opts:
        raise McrouteError("--mtp-depth > 0 needs --mtp-acceptance (a number in [0, 1] or "
                           "beta:A,B)")
    if "mtp_acceptance" in opts and opts.get("mtp_depth", 0) == 0:
        raise McrouteError("--mtp-acceptance needs --mtp-depth >= 1")
    return opts


def batch_policy_flags(values: dict) -> dict:
    """``--batch-per-gpu`` / ``--tpot`` as decode_throughput keywords (one batch policy).

    ``values``: the parsed flags (:func:`option_values`); ``--batch-size`` counts as given
    unless it is ``max`` or absent.
    """
    batch_given = values.get("batch_size") not in (None, "max")
    given = [f for f, v in (("--batch-size", batch_given),
                            ("--batch-per-gpu", values.get("batch_per_gpu") is not None),
                            ("--tpot", values.get("tpot") is not None)) if v]
    if len(given) > 1:
        raise McrouteError(f"give one of --batch-size, --batch-per-gpu and --tpot, got "
                           f"{' and '.join(given)}")
    return {k: values[k] for k in ("batch_per_gpu", "tpot") if values.get(k) is not None}


def placement_error(exc: McrouteError, args) -> McrouteError:
    """A Deployment error about ``--expert-placement FILE``, naming the flag and the file."""
    text = str(exc)
    if getattr(args, "expert_placement", None) and text.startswith("expert placement"):
        return McrouteError(f"--expert-placement {args.expert_placement}: {text}")
    return exc


def kernels_line(ds, ci_prob) -> str:
    """Which time model and kernel card were used, and what the intervals carry (attrs)."""
    kernels = ds.attrs.get("kernels", "roofline")
    card = ds.attrs.get("kernel_card", "")
    sources = ds.attrs.get("uncertainty_sources", [])
    if isinstance(sources, str):  # provenance stores lists as JSON
        try:
            sources = json.loads(sources)
        except ValueError:
            sources = [sources]
        sources = sources if isinstance(sources, list) else [sources]
    carried = ", ".join(str(x) for x in sources) or "nothing (no random inputs)"
    model = (f"calibrated kernels (card {card})" if kernels == "calibrated"
             else "roofline kernels (no kernel card)")
    return f"{model}; the {ci_prob:.0%} intervals carry: {carried}"

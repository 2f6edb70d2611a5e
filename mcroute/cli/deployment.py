"""The Deployment flags of ``throughput`` and ``qs``, generated from their declarations.

Front end (5). May import: every floor below; ``mcroute.cli.common``.

Every :class:`mcroute.Deployment` option is declared once (``DEPLOYMENT_OPTIONS``: type, units,
range, choices, help, metavar, short alias). This module turns each declaration with
``cli=True`` into a flag spelled as the keyword (``expert_parallel`` -> ``--expert-parallel``),
reads the given flags back into Deployment keywords (the mapping is the identity), and checks
each value when the command line is read, naming the flag. Flags not given are not passed, so
the Deployment's own defaults (and their documented resolution) apply.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from mcroute._base.options import REQUIRED
from mcroute._base.validate import McrouteError, short_repr
from mcroute._cards.cards import DTYPE_BYTES
from mcroute._cost.calibrated import parse_acceptance
from mcroute._cost.calibration import load_kernel_card
from mcroute._cost.deployment import DEPLOYMENT_OPTIONS
from mcroute._labeled.throughput import parse_tpot
from mcroute.cli.common import (
    check_input_path,
    name_flags,
    parse_int,
    parse_int_list,
    parse_real,
    parse_size,
)

__all__ = ["add_deployment_flags", "deployment_flags", "flag_spec", "batch_policy_flags",
           "placement_error", "kernels_line", "DEPLOYMENT_FLAGS", "EXTRA_CHOICES", "FLAG_NAMES"]

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
    """``in [1, 1048576]``, ``in (0, 1]``, ``>= 0``: the declared range in help texts."""
    def num(x):
        return f"{int(x)}" if opt.type != "float" or float(x).is_integer() else f"{x:g}"

    lo, hi = opt.minimum, opt.maximum
    if lo is not None and hi is not None:
        return f"in {'(' if opt.open_min else '['}{num(lo)}, {num(hi)}]"
    return f"{'>' if opt.open_min else '>='} {num(lo)}" if lo is not None else f"<= {num(hi)}"


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
        text += f" (default {opt.default})"
    return name_flags(text, FLAG_NAMES).replace("%", "%%")


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


def add_deployment_flags(p, *, batch_policy: bool) -> None:
    """Add a flag for every declared Deployment option (and, for throughput, the batch policy)."""
    g = p.add_argument_group("deployment options (mcroute.Deployment keywords; "
                             "docs/assumptions.md)")
    for opt in DEPLOYMENT_FLAGS:
        names, kw = flag_spec(opt)
        g.add_argument(*names, **kw)
    if batch_policy:
        p.add_argument("--batch-per-gpu", default=None, metavar="B[,B...]",
                       help="sequences per GPU instead of --batch-size (batch = B x --n-gpus)")
        p.add_argument("--tpot", default=None, metavar="SECONDS|50ms",
                       help="time-per-output-token target: the largest batch meeting it")


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
        return parse_real(text, flag, minimum=lo, maximum=hi, open_min=opt.open_min)
    if opt.type == "tokens":
        if lo == 0 and text.strip() == "0":
            return 0
        return parse_size(flag, text, maximum=int(hi) if hi is not None else 2**63 - 1)
    lo = None if lo is None else int(lo) + (1 if opt.open_min else 0)
    return parse_int(text, flag, minimum=lo, maximum=int(hi) if hi is not None else 2**63 - 1)


def _value(opt, text):
    """One flag's text as the Deployment keyword's value, checked (errors name the flag)."""
    flag = opt.flag
    if opt.type == "bool" or opt.choices is not None:  # argparse converted and checked it
        return EXTRA_CHOICES.get(opt.name, {}).get(text, text)
    if opt.type in ("int", "float", "tokens"):
        return _number(opt, text, flag)
    if opt.type == "dtype":
        return _dtype(text, flag)
    if opt.type == "acceptance":
        return _acceptance(text, flag)
    if opt.type == "path":
        return _kernel_card(text, flag)
    if opt.type == "placement":
        return None if text.strip().lower() == "balanced" else _read_placement(text)
    return text


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
        value = _value(opt, text)
        if value is not None:
            opts[opt.name] = value
    if opts.get("mtp_depth", 0) > 0 and "mtp_acceptance" not in opts:
        raise McrouteError("--mtp-depth > 0 needs --mtp-acceptance (a number in [0, 1] or "
                           "beta:A,B)")
    if "mtp_acceptance" in opts and opts.get("mtp_depth", 0) == 0:
        raise McrouteError("--mtp-acceptance needs --mtp-depth >= 1")
    return opts


def batch_policy_flags(args, batch_given: bool) -> dict:
    """``--batch-per-gpu`` / ``--tpot`` as decode_throughput keywords (one batch policy)."""
    given = [f for f, v in (("--batch-size", batch_given),
                            ("--batch-per-gpu", args.batch_per_gpu), ("--tpot", args.tpot)) if v]
    if len(given) > 1:
        raise McrouteError(f"give one of --batch-size, --batch-per-gpu and --tpot, got "
                           f"{' and '.join(given)}")
    out = {}
    if args.batch_per_gpu is not None:
        out["batch_per_gpu"] = parse_int_list("--batch-per-gpu", args.batch_per_gpu,
                                              maximum=2**40)
    if args.tpot is not None:
        try:
            out["tpot"] = parse_tpot(args.tpot.strip())
        except McrouteError:
            raise McrouteError(f"--tpot must be a time in (0, 3600) s: a number of seconds "
                               f"or like 50ms, got {short_repr(args.tpot)}") from None
    return out


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

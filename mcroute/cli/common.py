"""Helpers shared by the CLI subcommands: argument parsing of lists, sizes and routings, tables.

May import: the array and labeled layers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import sys
from pathlib import Path

import numpy as np

from mcroute._base.validate import McrouteError, check_int, check_real
from mcroute._labeled.export import save_dataset

__all__ = ["parse_int", "parse_int_list", "parse_size", "parse_size_list", "parse_real",
           "parse_routing", "add_deployment_flags", "deployment_flags", "batch_policy_flags",
           "placement_error", "kernels_line",
           "ROUTING_HELP", "check_input_path", "check_output_path", "write_output",
           "format_table", "is_tty", "INT_MAX", "RENAMED", "refuse_renamed"]

_SUFFIX = {"": 1, "k": 1024, "m": 1024**2}

#: Largest integer any option accepts: every count and size ends up in an int64 array or
#: product, so larger values could only overflow. Commands and the API refuse far smaller
#: values where a resource limit applies.
INT_MAX = 2**63 - 1

#: Digits read from an integer option (more cannot fit below INT_MAX).
_MAX_DIGITS = 40
_SIZE_RE = re.compile(r"\s*([0-9]{1,40})\s*([kKmM]?)\s*")


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
    m = _SIZE_RE.fullmatch(str(text))
    if not m:
        raise McrouteError(
            f"{name} must be a positive integer like 4096 or 128k, got {_shown(text)}")
    value = int(m.group(1)) * _SUFFIX[m.group(2).lower()]
    if value < 1 or value > maximum:
        raise McrouteError(f"{name} must be in [1, {maximum}], got {_shown(text)}")
    return value


def parse_size_list(name: str, text: str, maximum: int = INT_MAX) -> list[int]:
    """Comma-separated distinct sizes, e.g. ``4k,32k,128k``."""
    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise McrouteError(
            f"{name} must be a comma-separated list of sizes, got {_shown(text)}")
    values = [parse_size(name, p, maximum) for p in parts]
    seen = set()
    for v, p in zip(values, parts, strict=True):
        if v in seen:
            raise McrouteError(f"{name} lists {v} twice (as {p.strip()!r}); give each value once")
        seen.add(v)
    return values


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

# -- deployment options of the calibrated cost model (throughput and qs) ----------------------
#: ``--all-to-all`` values: the API's, plus ``serial`` (the older CLI name of ``none``).
ALL_TO_ALL_CHOICES = ["off", "none", "overlap", "two-batch", "serial"]


def add_deployment_flags(p, *, batch_policy: bool) -> None:
    """Add the calibrated cost model's options (spelled as the Deployment keywords)."""
    p.add_argument("--kernels", default=None, choices=["calibrated", "roofline"],
                   help="time model: calibrated (default; kernel efficiencies fitted on "
                   "measured kernels) or roofline (the bound, printed beside either way)")
    p.add_argument("--kernel-card", default=None, metavar="NAME|PATH",
                   help="kernel-efficiency card (default: the card listing the hardware, "
                   "else generic)")
    p.add_argument("--all-to-all", default=None, choices=ALL_TO_ALL_CHOICES,
                   help="expert dispatch + combine: off, none (charged, no overlap), overlap, "
                   "two-batch; serial = none (default: none under calibrated kernels, off "
                   "under roofline)")
    p.add_argument("--redundant-experts", default=None, metavar="N",
                   help="extra expert slots holding replicas of the hottest experts "
                   "(EPLB-style; default 0)")
    p.add_argument("--expert-placement", default=None, metavar="balanced|FILE",
                   help="balanced (default: contiguous blocks, sizes differing by at most one) "
                   "or a text file of one expert-parallel group id per routed expert")
    p.add_argument("--attention-compute-dtype", default=None, metavar="DTYPE",
                   help="dtype whose peak FLOP/s applies to the attention core (default: bf16 "
                   "under calibrated kernels)")
    p.add_argument("--mtp-depth", default=None, metavar="D",
                   help="draft tokens per step (multi-token prediction), 0..16 (default 0)")
    p.add_argument("--mtp-acceptance", default=None, metavar="A|beta:A,B",
                   help="acceptance rate of a draft token: a number in [0, 1] or beta:A,B "
                   "(required with --mtp-depth > 0)")
    if batch_policy:
        p.add_argument("--batch-per-gpu", default=None, metavar="B[,B...]",
                       help="sequences per GPU instead of --batch-size (batch = B x --n-gpus)")
        p.add_argument("--tpot", default=None, metavar="SECONDS|50ms",
                       help="time-per-output-token target: the largest batch meeting it")


#: Largest expert-placement file read (bytes).
_MAX_PLACEMENT_BYTES = 1 << 22


def _read_placement(text: str) -> tuple:
    """``--expert-placement FILE``: integers (group ids) separated by commas or white space."""
    check_input_path("--expert-placement", text)
    path = Path(text)
    if not path.is_file():
        raise McrouteError(f"--expert-placement must be 'balanced' or a file of group ids, got "
                           f"{_shown(text)} (no such file)")
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
                               f"(an integer >= 0), got {_shown(f)}")
        out.append(int(f))
    if not out:
        raise McrouteError(f"--expert-placement {text}: no group ids in the file")
    return tuple(out)


def deployment_flags(args) -> dict:
    """The Deployment keywords given on the command line, each checked (errors name the flag)."""
    from mcroute._cards.cards import DTYPE_BYTES
    from mcroute._cost.calibrated import parse_acceptance

    opts = {}
    if args.kernels is not None:
        opts["kernels"] = args.kernels
    if args.kernel_card is not None:
        check_input_path("--kernel-card", args.kernel_card)
        from mcroute._cost.calibration import load_kernel_card

        try:
            load_kernel_card(args.kernel_card)  # checked here so that the error names the flag
        except McrouteError as exc:
            raise McrouteError(f"--kernel-card: {exc}") from None
        opts["kernel_card"] = args.kernel_card
    if args.all_to_all is not None:
        opts["all_to_all"] = "none" if args.all_to_all == "serial" else args.all_to_all
    if args.redundant_experts is not None:
        opts["redundant_experts"] = parse_int(args.redundant_experts, "--redundant-experts",
                                              minimum=0, maximum=1_000_000)
    if args.expert_placement is not None:
        if args.expert_placement.strip().lower() != "balanced":
            if opts.get("redundant_experts"):
                raise McrouteError("--redundant-experts and --expert-placement FILE cannot be "
                                   "combined (with redundant experts the placement is rebuilt "
                                   "per layer, EPLB-style)")
            opts["expert_placement"] = _read_placement(args.expert_placement)
    if args.attention_compute_dtype is not None:
        d = args.attention_compute_dtype.strip().lower()
        if d not in DTYPE_BYTES:
            raise McrouteError(f"--attention-compute-dtype must be one of "
                               f"{', '.join(DTYPE_BYTES)}, got "
                               f"{_shown(args.attention_compute_dtype)}")
        opts["attention_compute_dtype"] = d
    if args.mtp_depth is not None:
        opts["mtp_depth"] = parse_int(args.mtp_depth, "--mtp-depth", minimum=0, maximum=16)
    if args.mtp_acceptance is not None:
        text = args.mtp_acceptance.strip()
        try:
            value = parse_acceptance(float(text))
        except ValueError:
            value = text
        try:
            parse_acceptance(value)
        except McrouteError:
            raise McrouteError(f"--mtp-acceptance must be a number in [0, 1] or beta:A,B with "
                               f"A, B > 0, got {_shown(args.mtp_acceptance)}") from None
        opts["mtp_acceptance"] = value
    if opts.get("mtp_depth", 0) > 0 and "mtp_acceptance" not in opts:
        raise McrouteError("--mtp-depth > 0 needs --mtp-acceptance (a number in [0, 1] or "
                           "beta:A,B)")
    if "mtp_acceptance" in opts and opts.get("mtp_depth", 0) == 0:
        raise McrouteError("--mtp-acceptance needs --mtp-depth >= 1")
    return opts


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


def placement_error(exc: McrouteError, args) -> McrouteError:
    """A Deployment error about ``--expert-placement FILE``, naming the flag and the file."""
    text = str(exc)
    if getattr(args, "expert_placement", None) and text.startswith("expert placement"):
        return McrouteError(f"--expert-placement {args.expert_placement}: {text}")
    return exc


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
        from mcroute._labeled.throughput import parse_tpot

        try:
            out["tpot"] = parse_tpot(args.tpot.strip())
        except McrouteError:
            raise McrouteError(f"--tpot must be a time in (0, 3600) s: a number of seconds "
                               f"or like 50ms, got {_shown(args.tpot)}") from None
    return out


def check_output_path(path, allowed=(".nc", ".csv", ".json"), flag: str = "--output") -> None:
    """Refuse a bad output path before any work is done.

    Checks the extension, that the folder exists, and that no folder or non-regular file is in
    the way (the write itself checks again, atomically).
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


def write_output(ds, path, quiet: bool = False) -> None:
    """Write ``ds`` by extension (.nc, .csv, .json), atomically, and say where (unless quiet)."""
    out = save_dataset(ds, path)
    if not quiet:
        print(f"wrote {out}", file=sys.stderr)


def is_tty(stream=None) -> bool:
    """Whether progress output should be shown (a terminal, not a pipe)."""
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def _fmt(x) -> str:
    if isinstance(x, str):
        return x
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "—"
    if isinstance(x, (int, np.integer)):
        return f"{x:d}"
    ax = abs(x)
    if ax != 0 and (ax >= 1e6 or ax < 1e-3):
        return f"{x:.3e}"
    return f"{x:.4g}" if ax < 1000 else f"{x:,.0f}"


def format_table(header: list[str], rows: list[list]) -> str:
    """A plain aligned text table."""
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(lines)

"""Command-line interface: ``mcroute <command> ...`` and ``python -m mcroute``.

May import: everything (front end). Each subcommand lives in a ``_cli_<name>.py`` module with a
``register(subparsers)`` function that adds its parser and sets ``func`` (taking the parsed args
and returning an exit status). Errors in user input print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ._validate import McrouteError
from ._version import __version__

#: Subcommand modules, in the order ``mcroute --help`` lists them.
COMMAND_MODULES = [
    "mcroute._cli_simulate",
    "mcroute._cli_bench",
    "mcroute._cli_qs",
    "mcroute._cli_plot",
    "mcroute._cli_throughput",
    "mcroute._cli_cards",
    "mcroute._cli_q",
    "mcroute._cli_trace",
    "mcroute._cli_sweep",
]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit 2."""

    def error(self, message):  # noqa: D102
        self.exit(2, f"{self.prog}: error: {message}\n")


def make_parser() -> argparse.ArgumentParser:
    """Build the ``mcroute`` argument parser with every registered subcommand."""
    parser = _Parser(
        prog="mcroute",
        description="When does a Mixture-of-Experts model lose to a quality-matched dense model "
        "at decode time, by how much, and how sure are we?",
    )
    parser.add_argument("--version", action="version", version=f"mcroute {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv=None) -> int:
    """Run the CLI; return the exit status (0 ok, 2 bad input)."""
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        return int(exc.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (McrouteError, ValueError, OSError, KeyError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"mcroute {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mcroute: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

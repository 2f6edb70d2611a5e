"""Command-line interface: ``mcroute <command> ...`` and ``python -m mcroute``.

May import: everything (front end). Each subcommand lives in ``mcroute/cli/<name>.py`` with a
``register(subparsers)`` function that adds its parser and sets ``func`` (taking the parsed args
and returning an exit status). Errors in user input print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from mcroute._base.validate import McrouteError
from mcroute._version import __version__
from mcroute.cli.common import cli_names, name_flags

#: Subcommand modules, in the order ``mcroute --help`` lists them.
COMMAND_MODULES = [
    "mcroute.cli.simulate",
    "mcroute.cli.bench",
    "mcroute.cli.qs",
    "mcroute.cli.plot",
    "mcroute.cli.throughput",
    "mcroute.cli.cards",
    "mcroute.cli.q_estimate",
    "mcroute.cli.trace",
    "mcroute.cli.sweep",
    "mcroute.cli.warmup",
]

#: Environment variable: when set to 1, an internal error (a bug) shows its traceback.
DEBUG_ENV = "MCROUTE_DEBUG"

#: Exit status of bad input (usage errors, invalid values, unreadable or malformed files).
EXIT_BAD_INPUT = 2
#: Exit status of an internal error (a bug in mcroute): one line, traceback with MCROUTE_DEBUG=1.
EXIT_INTERNAL = 1


def _one_line(text: str) -> str:
    """``text`` on one line (inner line breaks become spaces), printable on any stream."""
    flat = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    # Lone surrogates (undecodable bytes in argv) cannot be encoded: escape them.
    return flat.encode("utf-8", "backslashreplace").decode("utf-8")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit 2.

    It also refuses empty option values: ``--n-gpus ''`` is an error naming the option, never
    a silent fall-back to the default. Values holding a NUL character are refused too. Long
    flags are never abbreviated (``--batch`` is not ``--batch-size``): a prefix is an error.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def _get_values(self, action, arg_strings):
        if action.nargs not in (argparse.PARSER, argparse.REMAINDER):
            if action.option_strings and "--" in arg_strings:
                # `--q=--`: argparse would drop the '--' and store an empty list.
                raise argparse.ArgumentError(action, "'--' is not a value")
            for text in arg_strings:
                if not text.strip():
                    raise argparse.ArgumentError(action, "must not be empty")
                if "\0" in text:
                    raise argparse.ArgumentError(action, "must not contain a NUL character")
        return super()._get_values(action, arg_strings)

    def error(self, message):  # noqa: D102
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {_one_line(message)}\n")


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
    _remember_parsers(parser)
    return parser


def _remember_parsers(parser) -> None:
    """Let every (sub)command's parsed arguments carry its parser (``cli_parser``).

    Errors then name the flags of the command that ran (the innermost subcommand's default
    wins, as argparse applies it last).
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.set_defaults(cli_parser=sub)
                _remember_parsers(sub)


def _error_message(command: str, exc: BaseException, flags: dict | None = None
                   ) -> tuple[int, str]:
    """The exit status and the one-line message for an exception raised by a command.

    Bad input (exit 2): :class:`McrouteError` (the normal case: it names the parameter or the
    file and what is allowed), and the errors that only bad input can cause below the checks:
    ``OSError`` (unreadable files), ``ValueError``/``KeyError``, ``OverflowError``,
    ``MemoryError`` and ``RecursionError``. Anything else is a bug in mcroute (exit 1), still
    reported on one line; ``MCROUTE_DEBUG=1`` shows its traceback. ``flags`` (API keyword ->
    CLI flag) names the flags in a McrouteError raised below the CLI, which names keywords.
    """
    text = _one_line(str(exc))
    where = f"mcroute {command}"
    if isinstance(exc, McrouteError):
        text = name_flags(text, flags or {})
        return EXIT_BAD_INPUT, f"{where}: error: {text or 'invalid input'}"
    if isinstance(exc, MemoryError):
        return EXIT_BAD_INPUT, (f"{where}: error: out of memory: the request is too large for "
                                "this machine (reduce trials, layers, batch sizes or the grid)")
    if isinstance(exc, OverflowError):
        return EXIT_BAD_INPUT, f"{where}: error: a number is too large ({text or 'overflow'})"
    if isinstance(exc, RecursionError):
        return EXIT_BAD_INPUT, f"{where}: error: input nested too deeply ({text})"
    if isinstance(exc, UnicodeError):
        return EXIT_BAD_INPUT, f"{where}: error: cannot decode or encode text ({text})"
    if isinstance(exc, KeyError):
        return EXIT_BAD_INPUT, f"{where}: error: unknown key or name {text}"
    if isinstance(exc, (OSError, ValueError)):
        return EXIT_BAD_INPUT, f"{where}: error: {text or type(exc).__name__}"
    return EXIT_INTERNAL, (f"{where}: internal error (a bug in mcroute {__version__}; please "
                           f"report it): {type(exc).__name__}: {text} (set {DEBUG_ENV}=1 for "
                           "the traceback)")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Print a warning as one line, without the source line Python adds."""
    print(f"mcroute: warning: {_one_line(str(message))} ({category.__name__})",
          file=sys.stderr if file is None else file)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush cannot fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (in-process capture)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv=None) -> int:
    """Run the CLI; return the exit status (0 ok, 2 bad input, 1 internal error, 130 Ctrl-C).

    Every failure prints exactly one line on stderr and no traceback.
    """
    try:
        parser = make_parser()
    except Exception as exc:  # a command module that cannot load: a broken install, one line
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(_error_message("", exc)[1].replace("mcroute :", "mcroute:"), file=sys.stderr)
        return EXIT_INTERNAL
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    if not getattr(args, "func", None):
        parser.print_help()
        print("mcroute: error: give a COMMAND (listed above)", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            if getattr(args, "quiet", False):  # --quiet: nothing but errors
                warnings.simplefilter("ignore")
            status = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed pipe shows here, inside the handler below
            return status
    except KeyboardInterrupt:
        print("mcroute: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (`mcroute models | head -1`): not an error
        _silence_stdout()
        return 0
    except Exception as exc:
        status, line = _error_message(args.command, exc,
                                      cli_names(getattr(args, "cli_parser", parser)))
        if status == EXIT_INTERNAL and os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(line, file=sys.stderr)
        return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``tokenprune`` command line (also ``python -m tokenprune``).

One module per subcommand. Each exposes ``NAME``, ``add_parser(subparsers) -> ArgumentParser`` (with
examples in its epilog) and ``run(args, console) -> int``, where ``console`` is the rich console for
results on stdout; progress and logs go to :func:`tokenprune.cli._console.stderr_console`. To add a
subcommand, write such a module and append it to :data:`COMMANDS`.

Exit status: 0 success, 1 runtime failure, 2 usage error (a bad option, an unknown method or
parameter, an impossible budget). Errors are one line on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
import warnings
from collections.abc import Iterator, Sequence
from types import ModuleType

from tokenprune import __version__
from tokenprune.cli import _console, compare_cmd, list_cmd, plugins_cmd, show_cmd
from tokenprune.errors import BudgetError, MethodParameterError, PluginWarning, TokenPruneError, UnknownMethodError

__all__ = ["COMMANDS", "USAGE_ERRORS", "build_parser", "main"]

COMMANDS: list[ModuleType] = [list_cmd, compare_cmd, plugins_cmd, show_cmd]
"""The subcommand modules, in the order ``tokenprune --help`` lists them."""

USAGE_ERRORS: tuple[type[BaseException], ...] = (
    _console.UsageError,
    UnknownMethodError,
    MethodParameterError,
    BudgetError,
)
"""Errors the user fixes by changing the command line: exit status 2."""

EPILOG = """\
examples:
  tokenprune list                      the registered methods and their parameters
  tokenprune list 'zspa*' --json       matching methods as JSON
  tokenprune plugins                   the loaded plugins and what each registered
  tokenprune COMMAND --help            a command's options and examples

Add --debug (before or after the command) to see the traceback of an error.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="tokenprune",
        description="Visual-token pruning for vision-language models: list, compare and inspect methods.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback when a command fails")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", required=True)
    for module in COMMANDS:
        sub = module.add_parser(subparsers)
        # --debug is accepted after the command too; SUPPRESS keeps the top-level value when it is absent here
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub.set_defaults(_run=module.run)
    return parser


@contextlib.contextmanager
def _plugin_warnings_as_lines() -> Iterator[None]:
    """Show each :class:`PluginWarning` as one ``tokenprune: warning:`` line on stderr."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", PluginWarning)
        default_show = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
            if issubclass(category, PluginWarning):
                _console.print_warning(str(message).removeprefix("tokenprune "))
            else:
                default_show(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def _silence_stdout() -> None:
    """After a broken pipe (``tokenprune list | head``), point stdout at devnull so exit stays quiet."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _report(exc: BaseException, *, debug: bool, expected: bool) -> None:
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if expected:
        _console.print_error(str(exc))
    else:
        hint = "" if debug else " (run with --debug for the traceback)"
        _console.print_error(f"{type(exc).__name__}: {exc}{hint}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tokenprune`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse already reported
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    console = _console.setup(plain=bool(getattr(args, "json", False)))
    with _plugin_warnings_as_lines():
        try:
            return int(args._run(args, console))
        except KeyboardInterrupt:
            _console.print_error("interrupted")
            return 130
        except BrokenPipeError:
            _silence_stdout()
            return 1
        except USAGE_ERRORS as exc:
            _report(exc, debug=args.debug, expected=True)
            return 2
        except TokenPruneError as exc:
            _report(exc, debug=args.debug, expected=True)
            return 1
        except Exception as exc:
            _report(exc, debug=args.debug, expected=False)
            return 1

"""The CLI's two rich consoles, and its one-line errors and warnings.

Results go to the stdout console; progress, logs, warnings and errors to the stderr console. A
console uses colour only when its stream is a terminal, and the stdout console never in machine
mode (``--json``): captured or piped output holds no ANSI escape codes.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, TextIO

from rich.console import Console
from rich.text import Text

from tokenprune._json import jsonable

__all__ = [
    "PIPE_WIDTH",
    "UsageError",
    "jsonable",
    "make_console",
    "one_line",
    "print_error",
    "print_json",
    "print_warning",
    "setup",
    "stderr_console",
    "stdout_console",
]

PIPE_WIDTH = 200
"""Width of a console whose stream is not a terminal (and ``COLUMNS`` is unset): tables stay unwrapped."""

_consoles: dict[str, Console] = {}


class UsageError(Exception):
    """A command-line mistake the user can fix; ``tokenprune`` exits with status 2."""


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # closed or exotic streams
        return False


def make_console(stream: TextIO, *, plain: bool = False) -> Console:
    """A console on ``stream``: colour only if it is a terminal and ``plain`` is False."""
    tty = _isatty(stream)
    width = None if tty or os.environ.get("COLUMNS") else PIPE_WIDTH
    return Console(
        file=stream,
        color_system="auto" if tty and not plain else None,
        force_terminal=tty,  # a pipe stays a pipe even if FORCE_COLOR is set: no progress bars, no escapes
        force_jupyter=False,
        width=width,
        highlight=False,
        emoji=False,
    )


def setup(*, plain: bool = False) -> Console:
    """Create this invocation's consoles on the current ``sys.stdout``/``sys.stderr``; returns the stdout one."""
    _consoles["stdout"] = make_console(sys.stdout, plain=plain)
    _consoles["stderr"] = make_console(sys.stderr)
    return _consoles["stdout"]


def stdout_console() -> Console:
    """The console for results (created on first use if :func:`setup` was not called)."""
    if "stdout" not in _consoles:
        _consoles["stdout"] = make_console(sys.stdout)
    return _consoles["stdout"]


def stderr_console() -> Console:
    """The console for progress, logs, warnings and errors."""
    if "stderr" not in _consoles:
        _consoles["stderr"] = make_console(sys.stderr)
    return _consoles["stderr"]


def one_line(message: str) -> str:
    """``message`` with every run of whitespace, newlines included, collapsed to one space."""
    return " ".join(str(message).split())


def _print_labelled(label: str, style: str, message: str) -> None:
    text = Text.assemble("tokenprune: ", (f"{label}:", style), " ", one_line(message))
    stderr_console().print(text, soft_wrap=True)


def print_error(message: str) -> None:
    """``tokenprune: error: <message>`` as one line on stderr."""
    _print_labelled("error", "bold red", message)


def print_warning(message: str) -> None:
    """``tokenprune: warning: <message>`` as one line on stderr."""
    _print_labelled("warning", "yellow", message)


def print_json(console: Console, data: Any) -> None:
    """Print ``data`` as indented JSON, verbatim (no markup, highlighting or wrapping)."""
    console.print(json.dumps(data, indent=2), markup=False, highlight=False, soft_wrap=True)

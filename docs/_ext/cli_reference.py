"""Render ``tokenprune``'s argparse parser as a MyST Markdown page.

:func:`render_cli` walks :func:`tokenprune.cli.build_parser` (the parser ``tokenprune`` itself runs) and
returns Markdown: the top-level usage and options, then one section per subcommand with its usage,
arguments, options and examples. It needs only the standard library, so the tests call it without
Sphinx installed.

As a Sphinx extension (``extensions = ["cli_reference"]``) it replaces the line
``<!-- tokenprune-cli-reference -->`` of any source file with that Markdown when the file is read, so
the CLI reference can never drift from the parser.
"""

from __future__ import annotations

import argparse
from typing import Any

PLACEHOLDER = "<!-- tokenprune-cli-reference -->"
WIDTH = 100


def _formatter(parser: argparse.ArgumentParser) -> argparse.HelpFormatter:
    # a fixed width, so the output does not depend on the terminal the docs are built in
    return parser.formatter_class(prog=parser.prog, width=WIDTH)


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = _formatter(parser)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """``(name, one-line help, parser)`` for each subcommand, in ``--help`` order."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                found.append((name, helps.get(name, ""), sub))
    return found


def _arguments_table(parser: argparse.ArgumentParser) -> list[str]:
    formatter = _formatter(parser)
    rows = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._SubParsersAction):
            continue
        invocation = formatter._format_action_invocation(action)
        help_text = formatter._expand_help(action) if action.help else ""
        rows.append(f"| `{_cell(invocation)}` | {_cell(help_text)} |")
    if not rows:
        return []
    return ["| argument | meaning |", "|---|---|", *rows, ""]


def _command_section(parser: argparse.ArgumentParser, title: str, level: int, summary: str = "") -> list[str]:
    lines = [f"{'#' * level} `{title}`", ""]
    if summary:
        lines += [f"*{summary}*", ""]
    if parser.description:
        lines += [parser.description.strip(), ""]
    lines += ["```text", _usage(parser), "```", ""]
    lines += _arguments_table(parser)
    subcommands = _subcommands(parser)
    if subcommands:
        lines += ["| command | what it does |", "|---|---|"]
        for name, text, _ in subcommands:
            lines.append(f"| {{ref}}`{name} <{_anchor(parser.prog, name)}>` | {_cell(text)} |")
        lines.append("")
    if parser.epilog:
        lines += ["```text", parser.epilog.strip("\n"), "```", ""]
    return lines


def _anchor(prog: str, name: str) -> str:
    return f"cli-{prog}-{name}".replace(" ", "-")


def render_cli(parser: argparse.ArgumentParser | None = None, level: int = 2) -> str:
    """The Markdown reference of ``parser`` (default: ``tokenprune.cli.build_parser()``)."""
    if parser is None:
        from tokenprune.cli import build_parser

        parser = build_parser()
    lines = _command_section(parser, parser.prog, level)
    for name, summary, sub in _subcommands(parser):
        lines += [f"({_anchor(parser.prog, name)})=", ""]
        lines += _command_section(sub, sub.prog, level + 1, summary)
    return "\n".join(lines).rstrip() + "\n"


def _source_read(app: Any, docname: str, source: list[str]) -> None:
    if PLACEHOLDER in source[0]:
        source[0] = source[0].replace(PLACEHOLDER, render_cli())


def setup(app: Any) -> dict[str, Any]:
    app.connect("source-read", _source_read)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}

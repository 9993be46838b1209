"""``tokenprune list``: the registered methods, their parameters and the plugins providing them."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tokenprune.cli._console import jsonable, print_error, print_json
from tokenprune.registry import MethodSpec, get_method_spec, list_methods

__all__ = ["NAME", "add_parser", "format_params", "run", "spec_to_json"]

NAME = "list"

EPILOG = """\
examples:
  tokenprune list                      every method: summary, parameters with defaults, plugin
  tokenprune list 'div*'               methods whose name matches a glob pattern (quote it)
  tokenprune list --json               the same as a JSON list, for scripts
  tokenprune list --json | jq -r '.[].name'

A pattern that matches no method prints the available names on stderr and exits with status 1
(with --json, stdout still gets a valid empty list: []).
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        NAME,
        help="list the registered pruning methods",
        description="List the registered pruning methods with their parameters and the plugin providing each.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "pattern", nargs="?", default="*", metavar="PATTERN", help="fnmatch pattern over method names (default: '*')"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list of methods instead of a table")
    return parser


def format_params(params: Any) -> str:
    """``core_ratio=0.2, pooling='mean'``; ``-`` for a method without parameters."""
    return ", ".join(f"{key}={value!r}" for key, value in params.items()) or "-"


def spec_to_json(spec: MethodSpec) -> dict[str, Any]:
    """A method as ``{name, summary, params: {name: default}, plugin}``; unserializable defaults become repr."""
    params = {key: jsonable(value) for key, value in spec.params.items()}
    return {"name": spec.name, "summary": spec.summary, "params": params, "plugin": spec.plugin}


def run(args: argparse.Namespace, console: Console) -> int:
    names = list_methods(args.pattern)
    specs = [get_method_spec(name) for name in names]
    if args.json:
        print_json(console, [spec_to_json(spec) for spec in specs])
    if not specs:
        available = ", ".join(list_methods()) or "none"
        print_error(f"no method matches {args.pattern!r}. Available: {available}")
        return 1
    if args.json:
        return 0
    table = Table()
    table.add_column("name", style="bold cyan", no_wrap=True)
    table.add_column("summary", overflow="fold")
    table.add_column("parameters", overflow="fold")
    table.add_column("plugin", style="dim", overflow="fold")
    for spec in specs:
        table.add_row(Text(spec.name), Text(spec.summary), Text(format_params(spec.params)), Text(spec.plugin))
    console.print(table)
    return 0

"""``tokenprune plugins``: the loaded plugins, where each came from, and what it registered."""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tokenprune.cli._console import print_json
from tokenprune.plugins import PluginRecord, list_plugins
from tokenprune.registry import get_method_spec, list_methods

__all__ = ["NAME", "add_parser", "record_to_json", "run"]

NAME = "plugins"

EPILOG = """\
examples:
  tokenprune plugins                   built-in and installed plugins, their status and method counts
  tokenprune plugins --json            the same as a JSON list, for scripts
  TOKENPRUNE_DISABLE_PLUGIN_AUTOLOAD=1 tokenprune plugins
                                       only the built-ins (third-party entry points are skipped)

A plugin that fails to load is listed with status "failed" and its error, and is also reported
as a one-line warning on stderr; the command still succeeds.
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        NAME,
        help="list the plugins and the methods each registered",
        description="List the plugins tokenprune loaded (built-in, entry point, or registered from Python), "
        "whether each loaded, and the methods it registered.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list of plugins instead of a table")
    return parser


def record_to_json(record: PluginRecord, methods: list[str]) -> dict[str, Any]:
    """A plugin as ``{name, source, target, distribution, status, error, methods}``."""
    return {
        "name": record.name,
        "source": record.source,
        "target": record.target,
        "distribution": record.distribution,
        "status": "failed" if record.error else "ok",
        "error": record.error,
        "methods": methods,
    }


def run(args: argparse.Namespace, console: Console) -> int:
    records = list_plugins()
    methods: dict[str, list[str]] = defaultdict(list)
    for name in list_methods():
        methods[get_method_spec(name).plugin].append(name)
    if args.json:
        print_json(console, [record_to_json(record, methods[record.name]) for record in records])
        return 0
    table = Table()
    table.add_column("name", style="bold cyan", no_wrap=True)
    table.add_column("source")
    table.add_column("target", overflow="fold")
    table.add_column("distribution", overflow="fold")
    table.add_column("methods", justify="right")
    table.add_column("status", overflow="fold")
    for record in records:
        status = Text(f"failed: {record.error}", style="red") if record.error else Text("ok", style="green")
        table.add_row(
            Text(record.name),
            Text(record.source),
            Text(record.target),
            Text(record.distribution or "-"),
            Text(str(len(methods[record.name]))),
            status,
        )
    console.print(table)
    return 0

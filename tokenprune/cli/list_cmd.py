"""``tokenprune list``: the registered methods, their parameters and the plugins providing them."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tokenprune.cli._console import jsonable, print_error, print_json
from tokenprune.registry import MethodSpec, create_method, get_method_spec, list_methods

__all__ = ["NAME", "NEEDS", "add_parser", "format_params", "method_needs", "run", "spec_to_json"]

NAME = "list"

EPILOG = """\
examples:
  tokenprune list                      every method: summary, parameters with defaults, needs, plugin
  tokenprune list 'div*'               methods whose name matches a glob pattern (quote it)
  tokenprune list --json               the same as a JSON list, for scripts
  tokenprune list --json | jq -r '.[].name'

needs: what a method takes beyond the visual tokens (the prompt; scores from the caller, the vision
encoder's [CLS] attention or the LM's attention), whether it merges dropped tokens into kept ones, and
whether it prunes inside the LM. Caller's scores cannot come from a model (tokenprune.apply, compare);
[CLS] attention needs an encoder with a [CLS] token (LLaVA-1.5 and -NeXT; not Qwen or Gemma).

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


NEEDS = {
    "prompt": "prompt",
    "scores:external": "caller's scores",
    "scores:cls_attention": "vision [CLS] attention",
    "scores:lm_attention": "LM attention",
    "merges": "merges tokens",
    "inside_lm": "prunes inside the LM",
}
"""What a method needs or does beyond the visual tokens, by code (JSON) and as the table says it."""


def method_needs(name: str) -> list[str]:
    """The :data:`NEEDS` codes of a method with its defaults: its inputs beyond the visual tokens (the prompt,
    scores and where they come from), whether it merges dropped tokens, whether it prunes inside the LM.

    ``scores:external`` cannot run inside a model (``tokenprune.apply``, ``compare``): only a caller passes
    them; ``scores:cls_attention`` needs a vision encoder with a [CLS] token (LLaVA-1.5 and -NeXT; not Qwen or Gemma).
    """
    selector = create_method(name)
    needs = ["prompt"] if "prompt" in selector.requires else []
    if "scores" in selector.requires:
        needs.append(f"scores:{selector.score_source}")
    if selector.merges:
        needs.append("merges")
    if selector.prune_layer is not None:
        needs.append("inside_lm")
    return needs


def format_params(params: Any) -> str:
    """``core_ratio=0.2, pooling='mean'``; ``-`` for a method without parameters."""
    return ", ".join(f"{key}={value!r}" for key, value in params.items()) or "-"


def spec_to_json(spec: MethodSpec) -> dict[str, Any]:
    """A method as ``{name, summary, params: {name: default}, needs, plugin}``; unserializable defaults become
    repr; ``needs``: :func:`method_needs`."""
    params = {key: jsonable(value) for key, value in spec.params.items()}
    needs = method_needs(spec.name)
    return {"name": spec.name, "summary": spec.summary, "params": params, "needs": needs, "plugin": spec.plugin}


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
    table.add_column("needs", overflow="fold")
    table.add_column("plugin", style="dim", overflow="fold")
    for spec in specs:
        needs = ", ".join(NEEDS.get(code, code) for code in method_needs(spec.name)) or "-"
        table.add_row(
            Text(spec.name), Text(spec.summary), Text(format_params(spec.params)), Text(needs), Text(spec.plugin)
        )
    console.print(table)
    return 0

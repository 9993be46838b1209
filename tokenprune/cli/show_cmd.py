"""``tokenprune show``: an image with each method's kept visual tokens highlighted, side by side.

The paper's Figure 1 for any image and question: the model runs its prefill once per method under
:func:`tokenprune.apply`, and :mod:`tokenprune.evaluation.visualize` draws the tokens each method kept
over the original image.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from tokenprune.cli._console import UsageError, stderr_console
from tokenprune.errors import BudgetError, InputError, TokenPruneError
from tokenprune.integrations.adapters import FAMILIES

if TYPE_CHECKING:
    from tokenprune.evaluation.specs import MethodConfig

__all__ = ["NAME", "add_parser", "default_model", "parse_keep", "run"]

NAME = "show"

EPILOG = """\
examples:
  tokenprune show photo.jpg "What colour is the bus?" -o bus.png
                                       zspa and divprune at 10% on the shipped model
  tokenprune show --methods zspa,zspa:core_ratio=0.5,divprune,relevance --keep 0.25 photo.jpg "Is there a dog?"
                                       four methods (one twice, with other parameters), 25% of the tokens
  tokenprune show --keep 58 --model llava-hf/llava-1.5-7b-hf --device cuda photo.jpg "Read the sign." -o sign.png
                                       58 tokens per image on LLaVA-1.5-7B, on the GPU

Each panel shows the image with the method's kept tokens at full brightness and outlined, the pruned
ones greyed; its title gives the method and "kept K/N". LLaVA-NeXT gets one row of panels for the base
tile and one for the anyres tiles (its image_newline tokens are not drawn). Method parameters follow a
colon: zspa:core_ratio=0.5,pooling=max (see `tokenprune list`).
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        NAME,
        help="draw the visual tokens each method keeps over an image",
        description="Run a VLM on one image and question with each method, and write a figure of the image "
        "with each method's kept visual tokens highlighted, panels side by side.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", metavar="IMAGE", help="the image file (any format Pillow reads)")
    parser.add_argument("question", metavar="QUESTION", help="the question the prompt-aware methods select for")
    parser.add_argument(
        "--methods",
        default="zspa,divprune",
        metavar="SPECS",
        help="comma-separated method specs, parameters after a colon: zspa:core_ratio=0.5,divprune "
        "(default: zspa,divprune)",
    )
    parser.add_argument(
        "--keep",
        default="0.1",
        metavar="KEEP",
        help="visual tokens kept per image: a ratio in (0, 1] such as 0.1, or a count such as 58 (default: 0.1)",
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="HF_ID_OR_PATH",
        help=f"a {FAMILIES} model: hub id or save_pretrained directory "
        "(default: the shipped tokenprune/assets/scene-llava)",
    )
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the model runs (default: auto)"
    )
    parser.add_argument(
        "-o", "--output", default="show.png", metavar="PNG", help="the figure to write (default: show.png)"
    )
    parser.add_argument(
        "--panel-size", type=int, default=448, metavar="PX", help="longest side of each panel in pixels (default: 448)"
    )
    return parser


def parse_keep(text: str) -> int | float:
    """``--keep``: an int token count (``"58"``) or a float ratio in (0, 1] (``"0.1"``, ``"1.0"``).

    >>> parse_keep("58"), parse_keep("0.1")
    (58, 0.1)
    """
    from tokenprune.budget import resolve_budget

    text = str(text).strip()
    try:
        value: int | float = int(text) if text.isdigit() else float(text)
        resolve_budget(value, [])  # checks the type, the ratio's range and K >= 1
    except (ValueError, BudgetError) as exc:
        raise UsageError(
            f"--keep expects a ratio in (0, 1] such as 0.1 or a token count >= 1 such as 58; got {text!r}"
        ) from exc
    return value


def default_model() -> Path:
    """The shipped model's directory; a :class:`UsageError` saying how to pass ``--model`` if it is missing."""
    from tokenprune.evaluation.runner import default_model_path

    path = default_model_path()
    if not (path / "config.json").is_file():
        raise UsageError(
            f"the shipped model is not installed (expected a save_pretrained directory at {path}); "
            f"pass --model HF_ID_OR_PATH, e.g. --model llava-hf/llava-1.5-7b-hf"
        )
    return path


def _device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was given but torch.cuda.is_available() is False; use --device cpu")
    return choice


def _load(model: str | Path, device: str) -> tuple[Any, Any]:
    import torch

    from tokenprune.evaluation.runner import load_model  # the loader compare uses: same dtype and padding rules

    try:
        return load_model(str(model), torch.device(device))
    except (OSError, ValueError, KeyError) as exc:
        raise TokenPruneError(f"cannot load model {str(model)!r}: {type(exc).__name__}: {exc}") from exc


def _open_image(path: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    file = Path(path)
    if not file.is_file():
        raise UsageError(f"image file not found: {path}")
    try:
        with Image.open(file) as image:
            image.load()
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path} as an image: {exc}") from exc


def _image_format(output: Path) -> str:
    """Pillow's format for the output's suffix (PNG without one); an unknown suffix is a usage error, not PNG
    bytes under another name."""
    from PIL import Image

    suffix = output.suffix.lower()
    if not suffix:
        return "PNG"
    formats = Image.registered_extensions()
    if suffix not in formats:
        raise UsageError(f"-o {output}: {suffix!r} is not an image format Pillow writes; use .png, .jpg or .webp")
    return formats[suffix]


def _methods(text: str) -> list[MethodConfig]:
    # compare's method specs and checks (tokenprune.evaluation): one syntax for both commands
    from tokenprune.evaluation.runner import check_in_model
    from tokenprune.evaluation.specs import parse_methods

    try:
        configs = parse_methods(text)
        check_in_model(configs)
    except InputError as exc:
        raise UsageError(f"--methods: {exc}") from exc
    if not configs:
        raise UsageError(f"--methods {text!r} names no method to show; e.g. --methods zspa,divprune")
    return configs


def _runnable(model: Any, configs: list[MethodConfig], log: Console) -> list[tuple[str, dict[str, Any]]]:
    """The methods to draw: those chosen by a pattern that this model cannot run are skipped, with why."""
    from tokenprune.evaluation.runner import runnable_methods
    from tokenprune.integrations import get_adapter
    from tokenprune.integrations.base import UnsupportedMergeError, UnsupportedScoresError, check_method
    from tokenprune.registry import create_method

    adapter = get_adapter(model)
    try:
        chosen, skipped = runnable_methods(
            configs, lambda config: check_method(adapter, create_method(config.name, **config.given)), "this model"
        )
    except (UnsupportedScoresError, UnsupportedMergeError, InputError) as exc:
        raise UsageError(f"--methods: {exc}") from exc
    for label, why in skipped.items():
        log.print(f"tokenprune: skipped {label}: {why}", markup=False, highlight=False)
    return [(config.name, dict(config.given)) for config in chosen]


def run(args: argparse.Namespace, console: Console) -> int:
    methods = _methods(args.methods)
    keep = parse_keep(args.keep)
    if args.panel_size < 16:
        raise UsageError(f"--panel-size must be at least 16 pixels; got {args.panel_size}")
    output = Path(args.output)
    if not output.parent.is_dir():
        raise UsageError(f"the output directory {output.parent} does not exist")
    if output.is_dir():  # found now, not after the model has run
        raise UsageError(f"-o {output} is a directory; expected an image file path such as {output / 'kept.png'}")
    image_format = _image_format(output)
    image = _open_image(args.image)
    model_path = args.model if args.model is not None else default_model()
    device = _device(args.device)

    from transformers.utils import logging as hf_logging

    from tokenprune.evaluation.visualize import render_kept, show_tokens

    if not sys.stderr.isatty():
        hf_logging.disable_progress_bar()
    log = stderr_console()
    log.print(f"loading {model_path} on {device}", markup=False, highlight=False)
    model, processor = _load(model_path, device)
    result = show_tokens(model, processor, image, args.question, _runnable(model, methods, log), keep=keep)
    figure = render_kept(image, result.layout, result.kept, panel_size=args.panel_size, caption=f"Q: {args.question}")
    figure.save(output, format=image_format)

    table = Table()
    table.add_column("method", style="bold cyan", no_wrap=True)
    table.add_column("kept", justify="right")
    table.add_column("selection ms", justify="right")
    for kept in result.kept:
        k, n = result.layout.count(kept.indices)
        ms = "-" if kept.selection_ms is None else f"{kept.selection_ms:.2f}"
        table.add_row(Text(kept.label), f"{k}/{n}", ms)
    console.print(table)
    console.print(Text(f"wrote {output} ({figure.width}x{figure.height})"))
    return 0

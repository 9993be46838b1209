"""``tokenprune compare``: methods x keep ratios against the unpruned model, with costs and paired significance.

Runs :func:`tokenprune.evaluation.runner.run_comparison` and prints :func:`tokenprune.evaluation.report.summarize`
as tables on stdout: one row per method and keep ratio, the reference (``none``) first, with each
benchmark's score, its % of the reference and the p-value of the paired test against the reference;
a per-question-family table for benchmarks that have families (``scenes``); and the paired tests between
methods at the same keep ratio. ``--json PATH`` writes the same numbers (schema in
:mod:`tokenprune.evaluation.report`; ``-`` for stdout). A progress bar with ETA goes to stderr when it is
a terminal (never with ``--json -``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from tokenprune.cli._console import UsageError, print_json, stderr_console
from tokenprune.errors import InputError
from tokenprune.integrations.adapters import FAMILIES

__all__ = ["NAME", "add_parser", "format_p", "render_tables", "run", "tables_markdown"]

NAME = "compare"

ALPHA = 0.05
"""p-values below this get a ``*`` in the tables."""

EPILOG = """\
examples:
  tokenprune compare                   zspa and divprune at keep 0.1/0.3/0.5 vs unpruned, on the shipped
                                       model and 300 generated scene questions (offline, CPU, ~1-2 min)
  tokenprune compare --methods zspa,zspa:core_ratio=0.5,pooling=max,divprune --keep 0.1 --limit 60
                                       zspa twice (other parameters) and divprune at 10%, 60 questions
  tokenprune compare --model llava-hf/llava-1.5-7b-hf --benchmark pope,gqa --limit 500 --device cuda
                                       a hub model on hub benchmarks (lmms-eval's datasets and prompts)
  tokenprune compare --model ./llava-1.5-7b-hf --benchmark pope=/data/POPE,textvqa=/data/textvqa
                                       local copies (a save_pretrained directory; parquet/jsonl files)
  tokenprune compare --methods zspa,zspa:positions=original --keep 0.1
                                       kept tokens numbered afresh (LLaVA's default) vs at their own positions
  tokenprune compare --methods 'zspa:core_ratio=0.1|0.2|0.4,pooling=mean|max' --keep 0.1
                                       a sweep: zspa at every combination of the values (six methods)
  tokenprune compare --methods mine,all
                                       your plugin's method against every registered method it can run with
  tokenprune compare --json results.json --markdown results.md --output runs/pope
                                       also write the JSON summary and the tables in Markdown; per-sample
                                       records go to runs/pope
  torchrun --nproc_per_node 4 -m tokenprune compare --model ... --benchmark pope --output runs/pope
                                       one shard of the samples per GPU; rank 0 merges and prints

Method parameters follow a colon; a comma piece with '=' belongs to the method before it (see
`tokenprune list`); values separated by '|' make one method per value (a sweep). positions=original or
contiguous in a spec sets how the LM positions that method's kept tokens (zspa:positions=original|contiguous
compares both). 'all' (or a pattern such as 'div*') is every registered method it matches that can run in
a model, with its defaults; those the model at hand cannot run are skipped with the reason (on stderr and
in the JSON's metadata.skipped), where a method named explicitly is an error.

Each (sample, method, keep) record is appended to OUTPUT as soon as its batch is done, so an interrupted
run resumes where it stopped and a repeated run reuses finished samples (--no-resume recomputes).

95% CI: the score's interval (Wilson for 0/1 metrics, bootstrap otherwise). p: paired test against none on
the same samples (exact McNemar for 0/1 metrics, paired bootstrap for POPE F1 and VQA accuracy), adjusted
by Holm's method over the tests of its table, so that comparing many methods does not find differences by
chance (the JSON keeps both: p_value_vs_none and p_holm_vs_none). ms: per generate call of --batch-size
samples. peak MB: torch.cuda.max_memory_allocated; '-' on CPU, which keeps no allocator statistics.
"""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1; got {text!r}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; got {text!r}")
    return value


def _device(text: str) -> str:
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N; got {text!r}")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from tokenprune.evaluation.runner import DEFAULT_BATCH_SIZE

    parser = subparsers.add_parser(
        NAME,
        help="compare methods and keep ratios against the unpruned model, with significance",
        description="Run a VLM on benchmark samples with each method at each keep ratio and without pruning "
        "(the 'none' row), under one harness (same samples, prompts, batches, greedy decoding), and print "
        "scores, % of unpruned, selection and prefill time, peak memory and paired significance.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--methods",
        default="zspa,divprune",
        metavar="SPECS",
        help="comma-separated method specs, parameters after a colon: zspa:core_ratio=0.2,pooling=max,divprune; "
        "'|' between values sweeps them (zspa:core_ratio=0.1|0.4); 'all' or a pattern (div*) is every method it "
        "matches (default: zspa,divprune; 'none' always runs)",
    )
    parser.add_argument(
        "--model",
        metavar="HF_ID_OR_PATH",
        help=f"a {FAMILIES} checkpoint: hub id or save_pretrained directory (default: the shipped small LLaVA)",
    )
    parser.add_argument(
        "--benchmark",
        default="scenes",
        metavar="NAME[=PATH],...",
        help="benchmarks: scenes, pope, gqa, textvqa, mmmu, ai2d, chartqa; NAME=PATH for a local copy "
        "(default: scenes, generated offline)",
    )
    parser.add_argument(
        "--keep", default="0.1,0.3,0.5", metavar="RATIOS", help="keep ratios in (0, 1] (default: 0.1,0.3,0.5)"
    )
    parser.add_argument(
        "--limit", type=_positive, metavar="N", help="at most N samples per benchmark (scenes: N are generated)"
    )
    parser.add_argument(
        "--seed", type=_non_negative, default=0, metavar="S", help="seed; for scenes, a fresh test set (default: 0)"
    )
    parser.add_argument(
        "--batch-size",
        type=_positive,
        default=DEFAULT_BATCH_SIZE,
        metavar="B",
        help=f"samples per generate call, left padded (default: {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--device", type=_device, default="auto", metavar="DEVICE", help="auto, cpu, cuda or cuda:N (default: auto)"
    )
    parser.add_argument(
        "--output",
        metavar="DIR",
        help="directory of the per-sample JSONL records, for resuming (default: ~/.cache/tokenprune/compare, "
        "or $TOKENPRUNE_CACHE_DIR/compare)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH ('-': stdout, no table)")
    parser.add_argument(
        "--markdown",
        metavar="PATH",
        help="also write the tables as GitHub Markdown to PATH, for a README or a paper's notes ('-': stdout, "
        "in place of the tables)",
    )
    parser.add_argument(
        "--max-new-tokens", type=_positive, metavar="N", help="decoding limit (default: 8 for scenes, 16 otherwise)"
    )
    parser.add_argument(
        "--threads",
        type=_positive,
        metavar="N",
        help="torch intra-op threads (default on CPU: 1 per process, the fastest for small models and on shared "
        "machines; scale out with torchrun processes; default on CUDA: torch's)",
    )
    parser.add_argument(
        "--no-resume", action="store_true", help="compute every sample again instead of reusing records in --output"
    )
    parser.add_argument(
        "--positions",
        choices=("contiguous", "original"),
        help="how the LM positions the kept tokens, for specs without positions=: contiguous (numbered afresh, "
        "the LLaVA default, as the reference code) or original (each keeps its full-sequence position; "
        "Qwen2.5-VL's only mode, FastV's always) (default: the model's)",
    )
    return parser


def format_p(p: float | None) -> str:
    """``"0.031*"``: a p-value with ``*`` below :data:`ALPHA`; ``"<0.001*"``; ``"-"`` for none.

    >>> format_p(0.0312), format_p(0.4), format_p(0.0), format_p(None)
    ('0.031*', '0.400', '<0.001*', '-')
    """
    if p is None:
        return "-"
    text = "<0.001" if p < 0.001 else f"{p:.3f}"
    return text + ("*" if p < ALPHA else "")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _interval(interval: list[float] | None) -> str:
    """``"[61.5, 72.1]"``: an interval x 100 (a score's, or a difference's); ``"-"`` for none."""
    return "-" if interval is None else f"[{_pct(interval[0])}, {_pct(interval[1])}]"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _flops(value: float | None) -> str:
    """Three significant figures or more: 8431, 84.3, 3.38, 0.38."""
    if value is None:
        return "-"
    return _num(value, 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2)


def _keep(value: float) -> str:
    return f"{100 * value:g}%"


def render_tables(summary: dict[str, Any]) -> list[Table]:
    """The rich tables of a :func:`~tokenprune.evaluation.report.summarize` document: main, per family, pairwise."""
    results = summary["results"]
    benchmarks = list(dict.fromkeys(row["benchmark"] for row in results))
    rows: dict[tuple[str, str, float], dict[str, dict[str, Any]]] = {}
    for row in results:
        rows.setdefault((row["label"], row["method"], row["keep"]), {})[row["benchmark"]] = row
    meta = summary["metadata"]
    title = f"{Path(str(meta.get('model', ''))).name or meta.get('model')} · {meta.get('device', '')}"
    metrics = ", ".join(f"{name}: {_metric(results, name)}" for name in benchmarks)
    skipped = meta.get("skipped") or {}
    caption = f"{metrics}. {_caption(meta)}{_positions_note(results)}"
    if skipped:
        caption += f" Skipped, as this model cannot run them: {', '.join(skipped)}."
    main = Table(title=title, caption=caption, caption_justify="left")
    main.add_column("method", style="bold cyan", no_wrap=True)
    main.add_column("keep", justify="right")
    for name in benchmarks:
        main.add_column(name, justify="right")
        main.add_column("95% CI", justify="right")
        main.add_column("%", justify="right")
        main.add_column("p", justify="right")
    if len(benchmarks) > 1:
        main.add_column("avg %", justify="right")
    for header in ("tokens", "GFLOPs", "sel ms", "prefill ms", "peak MB"):
        main.add_column(header, justify="right")
    for (label, _, keep), by_bench in rows.items():
        cells = [Text(label), Text(_keep(keep))]
        for name in benchmarks:
            row = by_bench[name]
            cells += [Text(_pct(row["score"])), Text(_interval(row["score_ci"]))]
            cells += [Text(_pct(row["relative"])), Text(format_p(row["p_holm_vs_none"]))]
        any_row = by_bench[benchmarks[0]]
        if len(benchmarks) > 1:
            relatives = [by_bench[name]["relative"] for name in benchmarks]
            average = None if None in relatives else sum(relatives) / len(relatives)
            cells.append(Text(_pct(average)))
        tokens = [by_bench[name]["visual_after"] for name in benchmarks if by_bench[name]["visual_after"] is not None]
        cells += [
            Text(_num(sum(tokens) / len(tokens) if tokens else None, 0)),
            Text(_flops(_average(by_bench, "prefill_gflops"))),
            Text(_num(_average(by_bench, "selection_ms"), 2)),
            Text(_num(_average(by_bench, "prefill_ms"), 1)),
            Text(_num(any_row["peak_mem_mb"] if len(benchmarks) == 1 else _max(by_bench, "peak_mem_mb"), 0)),
        ]
        main.add_row(*cells)
    tables = [main]
    for name in benchmarks:
        family_rows = [row for row in results if row["benchmark"] == name and row.get("families")]
        if family_rows:
            tables.append(_family_table(name, family_rows))
    if summary["pairwise"]:
        tables.append(_pairwise_table(summary["pairwise"]))
    return tables


def _metric(results: list[dict[str, Any]], benchmark: str) -> str:
    return next(row["metric"] for row in results if row["benchmark"] == benchmark)


def _average(by_bench: dict[str, dict[str, Any]], field: str) -> float | None:
    values = [row.get(field) for row in by_bench.values() if row.get(field) is not None]  # older summaries lack some
    return sum(values) / len(values) if values else None


def _max(by_bench: dict[str, dict[str, Any]], field: str) -> float | None:
    values = [row[field] for row in by_bench.values()]
    return None if None in values else max(values)


def _caption(meta: dict[str, Any]) -> str:
    return (
        f"score x 100; 95% CI: the score's interval (Wilson for 0/1 metrics, bootstrap otherwise); %: of none; "
        f"p: paired test vs none on the same samples (exact "
        f"McNemar for 0/1 metrics, paired bootstrap otherwise), Holm-adjusted over the table's tests, "
        f"* p < {ALPHA}. tokens: visual tokens kept per "
        f"sample; GFLOPs: the language model's prefill per sample (counted, not timed); ms: per generate call "
        f"(batches of up to {meta.get('batch_size')} samples); peak MB: max memory allocated "
        f"('-' on CPU: no allocator statistics). {meta.get('computed', 0)} records computed, "
        f"{meta.get('reused', 0)} reused."
    )


def _positions_note(results: list[dict[str, Any]]) -> str:
    """Which positions the rows without ``positions=`` in their label ran with (the model's default)."""
    modes = sorted({row["positions"] for row in results if row.get("positions") and "positions=" not in row["label"]})
    return f" Kept tokens' positions, where the label does not say: {', '.join(modes)}." if modes else ""


def _family_table(benchmark: str, rows: list[dict[str, Any]]) -> Table:
    families = list(rows[0]["families"])
    table = Table(
        title=f"{benchmark}: score x 100 per question family (* p < {ALPHA} vs none, Holm-adjusted)",
        caption="n per family in brackets",
        caption_justify="left",
    )
    table.add_column("method", style="bold cyan", no_wrap=True)
    table.add_column("keep", justify="right")
    for family in families:
        table.add_column(f"{family} ({rows[0]['families'][family]['n']})", justify="right")
    for row in rows:
        cells = [Text(row["label"]), Text(_keep(row["keep"]))]
        for family in families:
            entry = row["families"][family]
            p = entry["p_holm_vs_none"]
            cells.append(Text(_pct(entry["score"]) + ("*" if p is not None and p < ALPHA else "")))
        table.add_row(*cells)
    return table


def _pairwise_table(pairs: list[dict[str, Any]]) -> Table:
    table = Table(
        title="methods against each other at the same keep ratio (A - B, paired)",
        caption=f"A - B x 100 and its 95% interval; p: Holm-adjusted over the "
        f"{sum(pair['p_value'] is not None for pair in pairs)} tests of this table",
        caption_justify="left",
    )
    for header, justify in (("benchmark", "left"), ("keep", "right"), ("A", "left"), ("B", "left")):
        table.add_column(header, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    table.add_column("A - B", justify="right")
    table.add_column("95% CI", justify="right")
    table.add_column("p", justify="right")
    table.add_column("test")
    for pair in pairs:
        table.add_row(
            Text(pair["benchmark"]),
            Text(_keep(pair["keep"])),
            Text(pair["label_a"]),
            Text(pair["label_b"]),
            Text(_num(None if pair["difference"] is None else 100 * pair["difference"])),
            Text(_interval(pair["difference_ci"])),
            Text(format_p(pair["p_holm"])),
            Text(pair["test"] or "-"),
        )
    return table


def _progress(enabled: bool) -> tuple[Callable[[int, int], None] | None, Progress | None]:
    if not enabled:
        return None, None
    bar = Progress(
        TextColumn("compare"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("elapsed"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=stderr_console(),
        transient=True,
    )
    task = bar.add_task("compare", total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return update, bar


@contextlib.contextmanager
def _settings(threads: int | None, *, quiet: bool) -> Iterator[None]:
    """torch's thread count and transformers' logging for the run; restored afterwards (tests run in-process)."""
    import torch
    from transformers.utils import logging

    saved = torch.get_num_threads(), logging.get_verbosity(), logging.is_progress_bar_enabled()
    if threads:
        torch.set_num_threads(threads)
    if quiet:
        logging.set_verbosity_error()
        logging.disable_progress_bar()
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        logging.set_verbosity(saved[1])
        if saved[2]:
            logging.enable_progress_bar()


def _parse(args: argparse.Namespace) -> tuple[Any, tuple[float, ...], list[tuple[str, str | None]]]:
    from tokenprune.evaluation.datasets import UnknownBenchmarkError
    from tokenprune.evaluation.runner import check_in_model, one_per_name
    from tokenprune.evaluation.specs import parse_benchmarks, parse_keeps, parse_methods

    try:
        methods = parse_methods(args.methods, positions=args.positions)
        check_in_model(methods)
        keeps = parse_keeps(args.keep)
        benchmarks = parse_benchmarks(args.benchmark)
        one_per_name(benchmarks)
    except (UnknownBenchmarkError, InputError) as exc:
        raise UsageError(str(exc)) from exc
    return methods, keeps, benchmarks


def run(args: argparse.Namespace, console: Console) -> int:
    methods, keeps, benchmarks = _parse(args)
    import torch

    from tokenprune.evaluation.report import summarize
    from tokenprune.evaluation.runner import default_output_dir, run_comparison

    if args.json == "-" and args.markdown == "-":
        raise UsageError("--json - and --markdown - both write to stdout; give one of them a file")
    for flag, path in (("--json", args.json), ("--markdown", args.markdown)):
        if path and path != "-" and Path(path).is_dir():  # found now, not after the whole comparison
            raise UsageError(f"{flag} {path} is a directory; expected a file path (or '-' for stdout)")
    on_cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
    to_stdout = "-" in (args.json, args.markdown)
    progress, bar = _progress(stderr_console().is_terminal and not to_stdout)
    output = Path(args.output) if args.output else default_output_dir()
    with _settings(args.threads or (1 if on_cpu else None), quiet=not args.debug), bar or contextlib.nullcontext():
        comparison = run_comparison(
            methods,
            keeps=keeps,
            model=args.model,
            benchmarks=benchmarks,
            limit=args.limit,
            seed=args.seed,
            batch_size=args.batch_size,
            device=args.device,
            output=output,
            max_new_tokens=args.max_new_tokens,
            resume=not args.no_resume,
            progress=progress,
        )
    if comparison is None:  # a rank other than 0 of a distributed run: rank 0 reports
        return 0
    for label, why in comparison.metadata.get("skipped", {}).items():
        stderr_console().print(f"tokenprune: skipped {label}: {why}", markup=False, highlight=False)
    summary = summarize(comparison)
    if args.json and not to_stdout:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    tables = render_tables(summary)
    if args.markdown and args.markdown != "-":
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(tables_markdown(tables), encoding="utf-8")
    if args.json == "-":
        print_json(console, summary)
    elif args.markdown == "-":
        console.file.write(tables_markdown(tables))
    else:
        for table in tables:
            console.print(table)
    return 0


def tables_markdown(tables: list[Table]) -> str:
    """The tables of :func:`render_tables` as GitHub Markdown: each title in bold, the table, its caption.

    Cells are the same text as in the terminal; right-aligned columns stay right-aligned, and ``|`` in a
    cell is escaped.
    """
    blocks = []
    for table in tables:
        lines = [f"**{_plain(table.title)}**", ""] if table.title else []
        columns = table.columns
        cells = [[_plain(cell) for cell in column.cells] for column in columns]
        lines.append("| " + " | ".join(_plain(column.header) for column in columns) + " |")
        lines.append("|" + "|".join("---:" if column.justify == "right" else "---" for column in columns) + "|")
        lines += ["| " + " | ".join(column[row] for column in cells) + " |" for row in range(table.row_count)]
        if table.caption:
            lines += ["", _plain(table.caption)]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _plain(value: Any) -> str:
    text = value.plain if isinstance(value, Text) else str(value)
    return " ".join(text.split()).replace("|", "\\|")

"""Selection-speed benchmark: every registered method beside a DivPrune-style reference loop.

Run from the repository root::

    python -m benchmarks.selection                       # full grid on CPU, 1 thread
    python -m benchmarks.selection --device cuda         # or --device auto
    python -m benchmarks.selection --quick               # smoke run (seconds)
    python -m benchmarks.selection --n 576,2880 --d 1024 --batch 1,8 --methods zspa,divprune
    python -m benchmarks.selection --report benchmarks/results/selection-cpu.json   # re-render a run

For every configuration ``(N, D, B)`` with ``K = round(N / 10)`` the benchmark times each selected
method and the reference loop (:func:`divprune_loop`, the batch-1 greedy loop of the public DivPrune
code, written here from its description and looped over images for ``B > 1``). Timings are
interleaved round-robin across methods, after warm-up, so drift on a noisy machine hits all methods
alike. Methods get only the inputs they declare in ``requires``: a prompt of ``M = 32`` tokens and/or
uniform random ``scores``. Inputs are generated once per configuration on the CPU from a pinned seed
(so the ``B = 1`` input is the first image of the ``B = 8`` input) and then moved to the device.

Reported per configuration and method: median and spread (quartiles, min/max) of the call time,
time per image (divided by ``B``), ``loop / method`` (the reference loop's median over the method's),
and the batch scaling ``per-image time at the largest B / per-image time at B = 1``. The targets of
the project's issue are printed as PASS/FAIL lines, and everything is written to JSON (rewritten
after each configuration, so an interrupted run keeps what it measured).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import tokenprune

__all__ = [
    "BASELINE",
    "Options",
    "build_checks",
    "divprune_loop",
    "divprune_loop_single",
    "main",
    "make_inputs",
    "markdown_table",
    "parse_args",
    "run_benchmark",
    "sanity_check",
    "summary_table",
]

BASELINE = "divprune-loop"
"""Name of the reference loop in tables and JSON."""

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_N = (576, 2880, 8192)
DEFAULT_D = (1024, 3584, 4096)
DEFAULT_BATCH = (1, 8)
KEEP_RATIO = 0.1
PROMPT_TOKENS = 32
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Targets from the project's issue.
ZSPA_SPEEDUP_TARGETS = {2880: 2.0, 576: 1.4}  # loop / zspa, at that N
DIVPRUNE_SPEEDUP_TARGET = 1.0  # loop / divprune, everywhere
BATCH_SCALING_TARGET = 1.0  # per-image time at B=max over per-image time at B=1, at most
CUDA_ZSPA_MS_TARGETS = {576: 1.0, 2880: 3.0}  # zspa time per image on CUDA, at most


# --- the reference loop ------------------------------------------------------------------------


def divprune_loop_single(tokens: Tensor, k: int) -> Tensor:
    """The public DivPrune greedy loop for ONE image: ``(N, D) -> (k,)`` int64, in pick order.

    Normalises the tokens, builds the full ``N x N`` cosine-distance matrix ``1 - cos``, then for
    ``k`` steps scores every token and picks the argmax: at step 0 a token's score is its
    second-smallest distance in its column (its nearest other token, via ``topk(2, largest=False)``);
    afterwards it is the column-wise min over the rows of the tokens selected so far, re-gathered
    with ``index_select`` at every step. Picks go into a preallocated LongTensor.

    Computes in the input's dtype for float32/float64; float16/bfloat16 are upcast to float32 (as
    tokenprune does). Tokens are assumed nonzero (a zero token would divide by zero, as upstream).
    """
    if tokens.dim() != 2 or not tokens.is_floating_point():
        raise ValueError(f"tokens must be a float (N, D) tensor; got {tuple(tokens.shape)} {tokens.dtype}")
    if tokens.dtype in (torch.float16, torch.bfloat16):
        tokens = tokens.float()
    n = tokens.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}]; got {k}")
    unit = tokens / tokens.norm(dim=-1, keepdim=True)
    distance = 1.0 - unit @ unit.T  # (N, N)
    picks = torch.empty(k, dtype=torch.long, device=tokens.device)
    for i in range(k):
        if i == 0:  # nearest other token of each column; a lone token is its own answer
            score = torch.topk(distance, 2, dim=0, largest=False).values[1] if n > 1 else distance[0]
        else:
            score = distance.index_select(0, picks[:i]).min(dim=0).values
        picks[i] = torch.argmax(score)
    return picks


def divprune_loop(visual: Tensor, k: int) -> Tensor:
    """The reference loop over a batch: ``(B, N, D) -> (B, k)`` (or ``(N, D) -> (k,)``), pick order."""
    if visual.dim() == 2:
        return divprune_loop_single(visual, k)
    return torch.stack([divprune_loop_single(image, k) for image in visual])


# --- inputs ------------------------------------------------------------------------------------


def budget_for(n: int) -> int:
    """K for N tokens: ``round(N / 10)``, at least 1 (58 for 576, 288 for 2880, 819 for 8192)."""
    return max(1, min(n, math.floor(n * KEEP_RATIO + 0.5)))


def make_inputs(
    n: int,
    d: int,
    batch: int,
    *,
    prompt_tokens: int = PROMPT_TOKENS,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> dict[str, Tensor]:
    """Gaussian visual ``(B, N, D)`` and prompt ``(B, M, D)`` tokens and uniform scores ``(B, N)``.

    Drawn on the CPU from a generator seeded with ``seed`` (image 0 is the same for every ``B``),
    in float64, then cast to ``dtype`` and moved to ``device``.
    """
    generator = torch.Generator().manual_seed(seed)
    visual = torch.randn(batch, n, d, generator=generator, dtype=torch.float64)
    prompt = torch.randn(batch, prompt_tokens, d, generator=generator, dtype=torch.float64)
    scores = torch.rand(batch, n, generator=generator, dtype=torch.float64)
    return {
        "visual": visual.to(device=device, dtype=dtype),
        "prompt": prompt.to(device=device, dtype=dtype),
        "scores": scores.to(device=device, dtype=dtype),
    }


def method_kwargs(selector: tokenprune.Selector, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """The optional inputs a method declares in ``requires`` (prompt, scores), and nothing else."""
    return {name: inputs[name] for name in ("prompt", "scores") if name in selector.requires}


# --- sanity ------------------------------------------------------------------------------------


def sanity_check(
    device: torch.device | str = "cpu", *, n: int = 96, d: int = 48, batch: int = 2, seeds: Sequence[int] = (0, 1, 2)
) -> dict[str, Any]:
    """Do the reference loop and tokenprune's divprune keep the same token set? (float64 gaussian)."""
    divprune = tokenprune.create_method("divprune")
    k = budget_for(n)
    mismatches = []
    for seed in seeds:
        visual = make_inputs(n, d, batch, seed=seed, dtype=torch.float64, device=device)["visual"]
        ours = divprune(visual, budget=k).cpu()
        reference = torch.sort(divprune_loop(visual, k), dim=1).values.cpu()
        for row in range(batch):
            if not torch.equal(ours[row], reference[row]):
                diff = set(ours[row].tolist()) ^ set(reference[row].tolist())
                mismatches.append({"seed": seed, "row": row, "symmetric_difference": sorted(diff)})
    return {
        "agree": not mismatches,
        "device": str(device),
        "dtype": "float64",
        "n": n,
        "d": d,
        "batch": batch,
        "k": k,
        "seeds": list(seeds),
        "mismatches": mismatches,
    }


# --- timing ------------------------------------------------------------------------------------


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (``q`` in [0, 100]) of a non-empty sequence."""
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summarize(times: Sequence[float], batch: int) -> dict[str, Any]:
    median = percentile(times, 50)
    q1, q3 = percentile(times, 25), percentile(times, 75)
    return {
        "repeats": len(times),
        "times_s": list(times),
        "median_s": median,
        "q1_s": q1,
        "q3_s": q3,
        "iqr_s": q3 - q1,
        "min_s": min(times),
        "max_s": max(times),
        "per_image_s": median / batch,
    }


@dataclass
class Options:
    """Benchmark settings (see ``--help``)."""

    device: str = "cpu"
    n: tuple[int, ...] = DEFAULT_N
    d: tuple[int, ...] = DEFAULT_D
    batch: tuple[int, ...] = DEFAULT_BATCH
    methods: tuple[str, ...] = ()  # empty = every registered method
    repeats: int = 15
    min_repeats: int = 3
    warmup: int = 1
    budget_s: float = 2.0
    threads: int = 1
    dtype: str = "float32"
    prompt_tokens: int = PROMPT_TOKENS
    seed: int = 0
    json_path: str | None = None
    markdown_path: str | None = None
    table: str = "rich"
    quick: bool = False
    strict: bool = False
    quiet: bool = False
    cache: str = "cold"
    graphed: bool = False


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers; got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers; got {text!r}")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.selection",
        description="Time tokenprune's selection methods beside the DivPrune reference loop.",
    )
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    parser.add_argument("--n", type=_ints, default=None, help="visual token counts (default 576,2880,8192)")
    parser.add_argument("--d", type=_ints, default=None, help="hidden sizes (default 1024,3584,4096)")
    parser.add_argument("--batch", type=_ints, default=None, help="batch sizes (default 1,8)")
    parser.add_argument("--methods", type=_names, default=None, help="comma-separated (default: all registered)")
    parser.add_argument("--repeats", type=int, default=None, help="max timed repeats per method and config (15)")
    parser.add_argument("--min-repeats", type=int, default=None, help="timed repeats always made (3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls per method and config (1)")
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds per method and config after which repeats stop (2.0)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", dest="json_path", default=None, help="default: benchmarks/results/selection-<device>.json"
    )
    parser.add_argument("--markdown", dest="markdown_path", default=None, help="also write the table as markdown")
    parser.add_argument(
        "--table",
        choices=("rich", "plain", "markdown", "summary"),
        default="rich",
        help="stdout table style (summary: one markdown row per config, ms/image per method)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: N=576, D=1024, B=1,2, 1 repeat")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a target FAILs or the sanity check fails")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("--report", metavar="JSON", default=None, help="re-render table and checks of a saved run")
    parser.add_argument(
        "--cache",
        choices=("cold", "warm"),
        default="cold",
        help="cold (default): overwrite a 256 MiB buffer before every timed call, so each call reads its "
        "inputs from memory as a call on fresh projector output would; warm: re-time hot inputs (a small "
        "B=1 input then stays in cache between repeats and looks faster per image than B=8)",
    )
    parser.add_argument(
        "--graphed",
        action="store_true",
        help="also time every capturable method as tokenprune.graphed(method), named METHOD+graph: its device "
        "work replayed as one CUDA graph per input shape (on CPU the wrapper is the method itself)",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[Options, str | None]:
    """Options from the command line (explicit flags override ``--quick``), and ``--report``'s path."""
    args = build_parser().parse_args(argv)
    quick = args.quick
    options = Options(
        device=args.device,
        n=args.n or ((576,) if quick else DEFAULT_N),
        d=args.d or ((1024,) if quick else DEFAULT_D),
        batch=args.batch or ((1, 2) if quick else DEFAULT_BATCH),
        methods=args.methods or (),
        repeats=args.repeats if args.repeats is not None else (1 if quick else 15),
        min_repeats=args.min_repeats if args.min_repeats is not None else (1 if quick else 3),
        warmup=args.warmup if args.warmup is not None else 1,
        budget_s=args.budget if args.budget is not None else (0.0 if quick else 2.0),
        threads=args.threads,
        dtype=args.dtype,
        prompt_tokens=args.prompt_tokens,
        seed=args.seed,
        json_path=args.json_path,
        markdown_path=args.markdown_path,
        table=args.table,
        quick=quick,
        strict=args.strict,
        quiet=args.quiet,
        cache=args.cache,
        graphed=args.graphed,
    )
    if options.repeats < 1 or options.min_repeats < 1 or options.warmup < 0 or options.threads < 1:
        raise SystemExit("--repeats, --min-repeats and --threads must be >= 1, --warmup >= 0")
    options.min_repeats = min(options.min_repeats, options.repeats)
    return options, args.report


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available in this torch build/machine")
    return torch.device(name)


def _log(options: Options, message: str) -> None:
    if not options.quiet:
        print(message, file=sys.stderr, flush=True)


_FLUSH_BYTES = 256 * 2**20


def _cache_flusher(options: Options) -> Callable[[], None]:
    """A function evicting the caches (writes a buffer larger than them), or a no-op with ``--cache warm``."""
    if options.cache == "warm":
        return lambda: None
    buffer = torch.empty(_FLUSH_BYTES // 4, dtype=torch.float32, device=resolve_device(options.device))
    return lambda: buffer.fill_(1.0)


def measure_config(
    runners: dict[str, Callable[[], Any]],
    *,
    sync: Callable[[], None],
    options: Options,
    label: str,
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Warm up every runner, then time them round-robin until each has enough repeats.

    Returns the timings per runner and the errors of runners that raised (and were dropped).

    A runner keeps being timed while it has fewer than ``min_repeats`` samples, or fewer than
    ``repeats`` samples and less than ``budget_s`` seconds of timed calls.
    """
    runners = dict(runners)
    errors: dict[str, str] = {}

    flush = _cache_flusher(options)

    def call(name: str) -> float | None:
        """One synchronized call; a method that raises is reported and dropped."""
        try:
            flush()
            sync()
            start = time.perf_counter()
            runners[name]()
            sync()
            return time.perf_counter() - start
        except Exception as exc:  # a broken (e.g. plugin) method must not stop the benchmark
            errors[name] = f"{type(exc).__name__}: {exc}"
            print(f"WARNING: {label} {name} raised {errors[name]}; dropped from this config", file=sys.stderr)
            del runners[name]
            return None

    start = time.perf_counter()
    for name in list(runners):
        for _ in range(options.warmup):
            if call(name) is None:
                break
    _log(options, f"  warm-up done in {time.perf_counter() - start:.1f}s")
    times: dict[str, list[float]] = {name: [] for name in runners}

    def active(name: str) -> bool:
        count = len(times[name])
        return count < options.min_repeats or (count < options.repeats and sum(times[name]) < options.budget_s)

    while True:
        todo = [name for name in runners if active(name)]
        if not todo:
            return {name: samples for name, samples in times.items() if name in runners}, errors
        for name in todo:
            elapsed = call(name)
            if elapsed is not None:
                times[name].append(elapsed)
        todo = [name for name in todo if name in runners]
        if not todo:
            continue
        if sum(times[todo[0]]) > 5.0:  # slow configs: show progress per round
            _log(options, f"  {label}: round {len(times[todo[0]])} done ({len(todo)} methods still timed)")


# --- metadata, derived numbers, checks ----------------------------------------------------------


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _git_dirty() -> bool | None:
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return bool(out.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def run_metadata(options: Options, device: torch.device) -> dict[str, Any]:
    return {
        "benchmark": "selection",
        "git_commit": _git_commit(),
        "git_dirty": _git_dirty(),
        "tokenprune_version": tokenprune.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda_version": torch.version.cuda,
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_1min_at_start": _loadavg(),
        "argv": sys.argv,
        "timing": "synchronize + perf_counter around each call" if device.type == "cuda" else "perf_counter",
        "cache": "caches evicted before every timed call" if options.cache == "cold" else "warm (inputs re-timed hot)",
    }


def derive(measurements: list[dict[str, Any]]) -> None:
    """Add ``loop_over_method`` and ``batch_scaling`` to each measurement, in place."""
    by_key = {(m["method"], m["n"], m["d"], m["batch"]): m for m in measurements}
    batches = sorted({m["batch"] for m in measurements})
    for m in measurements:
        base = by_key.get((BASELINE, m["n"], m["d"], m["batch"]))
        m["loop_over_method"] = base["median_s"] / m["median_s"] if base and m["median_s"] > 0 else None
        single = by_key.get((m["method"], m["n"], m["d"], 1))
        big = max(batches) if batches else 1
        if m["batch"] == big and big > 1 and single:
            m["batch_scaling"] = m["per_image_s"] / single["per_image_s"]
        else:
            m["batch_scaling"] = None


def _check(name: str, passed: bool, measured: float, target: str, unit: str, where: dict[str, Any]) -> dict:
    return {"name": name, "passed": passed, "measured": measured, "target": target, "unit": unit, **where}


def build_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, evaluated on every configuration they apply to."""
    checks: list[dict[str, Any]] = []
    rows = results["measurements"]
    device = results["meta"]["device"]
    for m in rows:
        where = {"n": m["n"], "d": m["d"], "batch": m["batch"], "method": m["method"]}
        ratio = m.get("loop_over_method")
        if m["method"] == "zspa" and m["n"] in ZSPA_SPEEDUP_TARGETS and ratio is not None:
            goal = ZSPA_SPEEDUP_TARGETS[m["n"]]
            checks.append(_check("zspa speedup vs loop", ratio >= goal, ratio, f">= {goal:g}x", "x", where))
        if m["method"] == "divprune" and ratio is not None:
            goal = DIVPRUNE_SPEEDUP_TARGET
            checks.append(_check("divprune speedup vs loop", ratio >= goal, ratio, f">= {goal:g}x", "x", where))
        scaling = m.get("batch_scaling")
        if m["method"] != BASELINE and scaling is not None:
            goal = BATCH_SCALING_TARGET
            checks.append(
                _check(f"per-image B={m['batch']} / B=1", scaling <= goal, scaling, f"<= {goal:g}", "x", where)
            )
        if device == "cuda" and m["method"] in ("zspa", "zspa+graph") and m["n"] in CUDA_ZSPA_MS_TARGETS:
            goal = CUDA_ZSPA_MS_TARGETS[m["n"]]
            ms = m["per_image_s"] * 1e3
            label = f"cuda {m['method']} ms per image"
            checks.append(_check(label, ms <= goal, ms, f"<= {goal:g} ms", "ms", where))
    order = {"zspa speedup vs loop": 0, "divprune speedup vs loop": 1, "cuda zspa ms per image": 3}
    order["cuda zspa+graph ms per image"] = 4
    checks.sort(key=lambda c: (order.get(c["name"], 2), c["method"], c["n"], c["d"], c["batch"]))
    return checks


def format_check(check: dict[str, Any]) -> str:
    status = "PASS" if check["passed"] else "FAIL"
    where = f"N={check['n']} D={check['d']} B={check['batch']}"
    if check["name"].startswith("per-image"):
        where = f"{check['method']} N={check['n']} D={check['d']}"
    value = f"{check['measured']:.3f} ms" if check["unit"] == "ms" else f"{check['measured']:.2f}x"
    return f"{status}  {check['name']:<28} {where:<32} {value:>10}  (target {check['target']})"


# --- tables ------------------------------------------------------------------------------------

COLUMNS = (
    "N",
    "D",
    "B",
    "K",
    "method",
    "median ms",
    "IQR ms",
    "min-max ms",
    "ms/image",
    "loop/method",
    "B-scaling",
)


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    return f"{ms:.2f}"


def table_rows(measurements: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for m in measurements:
        ratio = m.get("loop_over_method")
        scaling = m.get("batch_scaling")
        rows.append(
            [
                str(m["n"]),
                str(m["d"]),
                str(m["batch"]),
                str(m["k"]),
                m["method"],
                _ms(m["median_s"]),
                f"{_ms(m['q1_s'])}-{_ms(m['q3_s'])}",
                f"{_ms(m['min_s'])}-{_ms(m['max_s'])}",
                _ms(m["per_image_s"]),
                "-" if ratio is None else f"{ratio:.2f}x",
                "-" if scaling is None else f"{scaling:.2f}",
            ]
        )
    return rows


def markdown_table(measurements: list[dict[str, Any]]) -> str:
    """The results as a GitHub markdown table."""
    right = {0, 1, 2, 3, 5, 6, 7, 8, 9, 10}
    lines = ["| " + " | ".join(COLUMNS) + " |"]
    lines.append("|" + "|".join("---:" if i in right else "---" for i in range(len(COLUMNS))) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(measurements)]
    return "\n".join(lines)


def summary_table(measurements: list[dict[str, Any]]) -> str:
    """One markdown row per configuration: ms per image (median) of every method, and the speedups."""
    methods = [BASELINE, *sorted({m["method"] for m in measurements} - {BASELINE})]
    configs = sorted({(m["n"], m["d"], m["batch"]) for m in measurements})
    by_key = {(m["method"], m["n"], m["d"], m["batch"]): m for m in measurements}
    ratio_of = [name for name in ("zspa", "divprune") if name in methods]
    head = ["N", "D", "B", *methods, *(f"loop/{name}" for name in ratio_of)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|"]
    for n, d, b in configs:
        cells = [str(n), str(d), str(b)]
        for name in methods:
            m = by_key.get((name, n, d, b))
            cells.append("-" if m is None else _ms(m["per_image_s"]))
        for name in ratio_of:
            ratio = (by_key.get((name, n, d, b)) or {}).get("loop_over_method")
            cells.append("-" if ratio is None else f"{ratio:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plain_table(measurements: list[dict[str, Any]]) -> str:
    rows = [list(COLUMNS), *table_rows(measurements)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    out = []
    for j, row in enumerate(rows):
        cells = [cell.ljust(widths[i]) if i == 4 else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        out.append("  ".join(cells))
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def print_table(results: dict[str, Any], style: str) -> None:
    measurements = results["measurements"]
    meta = results["meta"]
    title = (
        f"selection time, {meta['device']} ({meta['device_name']}), {meta['threads']} thread(s), "
        f"dtype {results['grid']['dtype']}, torch {meta['torch_version']}"
    )
    if style == "rich":
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            style = "plain"
        else:
            table = Table(title=title, title_justify="left")
            for i, name in enumerate(COLUMNS):
                table.add_column(name, justify="left" if i == 4 else "right", no_wrap=True)
            rows = table_rows(measurements)
            for i, row in enumerate(rows):
                last_of_config = i + 1 == len(rows) or rows[i + 1][:3] != row[:3]
                table.add_row(*row, end_section=last_of_config)
            Console(width=max(140, Console().width), soft_wrap=False).print(table)
            return
    print(title)
    if style == "summary":
        print("ms per image (median over repeats); loop/X = reference loop time / X time\n")
        print(summary_table(measurements))
    else:
        print(markdown_table(measurements) if style == "markdown" else plain_table(measurements))


def print_checks(checks: list[dict[str, Any]], results: dict[str, Any]) -> None:
    print()
    print("Targets:")
    for check in checks:
        print(format_check(check))
    if results["meta"]["device"] != "cuda":
        print("SKIP  cuda zspa latency targets (<= 1 ms at N=576, <= 3 ms at N=2880): device is not cuda")
    sanity = results.get("sanity") or {}
    if sanity:
        status = "PASS" if sanity.get("agree") else "FAIL"
        print(
            f"{status}  sanity: {BASELINE} and divprune keep the same tokens "
            f"(float64 gaussian, N={sanity['n']} D={sanity['d']} B={sanity['batch']} K={sanity['k']}, "
            f"seeds {sanity['seeds']})"
        )
    for error in results.get("errors", []):
        print(f"ERROR {error['method']} N={error['n']} D={error['d']} B={error['batch']}: {error['error']}")
    if not results.get("complete", True):
        print("NOTE  the run did not complete; the results above cover the configurations measured")


# --- the run -----------------------------------------------------------------------------------


def default_json_path(device: torch.device) -> Path:
    return REPO_ROOT / "benchmarks" / "results" / f"selection-{device.type}.json"


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def run_benchmark(options: Options) -> dict[str, Any]:
    """Run the grid in ``options`` and return the results (also written to JSON)."""
    torch.set_num_threads(options.threads)
    device = resolve_device(options.device)
    dtype = DTYPES[options.dtype]
    available = tokenprune.list_methods()
    names = list(options.methods) or available
    unknown = [name for name in names if name not in available]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; registered: {available}")
    selectors = {name: tokenprune.create_method(name) for name in names}
    if options.graphed:
        graphed = {f"{name}+graph": tokenprune.graphed(sel) for name, sel in selectors.items() if sel.capturable}
        selectors.update(graphed)
        names = [*names, *graphed]
    json_path = Path(options.json_path) if options.json_path else default_json_path(device)

    sanity = sanity_check(device)
    if not sanity["agree"]:
        print(
            f"WARNING: {BASELINE} and tokenprune's divprune disagree on float64 gaussian inputs: "
            f"{sanity['mismatches']}",
            file=sys.stderr,
        )
    grid = {
        "n": list(options.n),
        "d": list(options.d),
        "batch": list(options.batch),
        "k": {str(n): budget_for(n) for n in options.n},
        "keep_ratio": KEEP_RATIO,
        "prompt_tokens": options.prompt_tokens,
        "dtype": options.dtype,
        "methods": names,
        "baseline": BASELINE,
        "inputs": "gaussian visual/prompt tokens, uniform scores, seed per config",
        "seed": options.seed,
        "repeats": options.repeats,
        "min_repeats": options.min_repeats,
        "warmup": options.warmup,
        "budget_s": options.budget_s,
        "quick": options.quick,
        "method_inputs": {name: sorted(sel.requires) for name, sel in selectors.items()},
    }
    options_dict = asdict(options)
    results: dict[str, Any] = {
        "meta": run_metadata(options, device),
        "options": options_dict,
        "grid": grid,
        "sanity": sanity,
        "measurements": [],
        "errors": [],
        "checks": [],
        "complete": False,
    }
    sync = _synchronizer(device)
    configs = [(n, d, b) for n in options.n for d in options.d for b in options.batch]
    started = time.perf_counter()
    for index, (n, d, batch) in enumerate(configs, 1):
        k = budget_for(n)
        label = f"[{index}/{len(configs)}] N={n} D={d} B={batch} K={k}"
        _log(options, f"{label} ({time.perf_counter() - started:.0f}s elapsed)")
        inputs = make_inputs(
            n, d, batch, prompt_tokens=options.prompt_tokens, seed=options.seed, dtype=dtype, device=device
        )
        visual = inputs["visual"]
        runners: dict[str, Callable[[], Any]] = {BASELINE: lambda v=visual, k=k: divprune_loop(v, k)}
        for name, selector in selectors.items():
            kwargs = method_kwargs(selector, inputs)
            runners[name] = lambda s=selector, v=visual, k=k, kw=kwargs: s(v, budget=k, **kw)
        load = _loadavg()
        times, errors = measure_config(runners, sync=sync, options=options, label=label)
        for name, message in errors.items():
            results["errors"].append({"method": name, "n": n, "d": d, "batch": batch, "error": message})
        for name, samples in times.items():
            row = {"method": name, "n": n, "d": d, "batch": batch, "k": k, **summarize(samples, batch)}
            row["loadavg_1min"] = load
            results["measurements"].append(row)
            _log(
                options,
                f"  {name:<14} median {row['median_s'] * 1e3:10.2f} ms  "
                f"({row['repeats']} repeats, {row['per_image_s'] * 1e3:.2f} ms/image)",
            )
        del inputs, visual, runners
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        derive(results["measurements"])
        results["checks"] = build_checks(results)
        results["elapsed_s"] = time.perf_counter() - started
        write_json(results, json_path)
    results["complete"] = True
    write_json(results, json_path)
    results["json_path"] = str(json_path)
    _log(options, f"wrote {json_path} ({time.perf_counter() - started:.0f}s)")
    return results


def report(results: dict[str, Any], options: Options) -> int:
    """Print table and checks; write markdown if asked. Returns the exit status."""
    derive(results["measurements"])
    checks = build_checks(results)
    results["checks"] = checks
    print_table(results, options.table)
    print_checks(checks, results)
    if options.markdown_path:
        path = Path(options.markdown_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(markdown_table(results["measurements"]) + "\n", encoding="utf-8")
    failed = any(not c["passed"] for c in checks) or not (results.get("sanity") or {}).get("agree", True)
    return 1 if options.strict and failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    options, saved = parse_args(argv)
    if saved:
        results = json.loads(Path(saved).read_text(encoding="utf-8"))
        return report(results, options)
    return report(run_benchmark(options), options)


if __name__ == "__main__":
    sys.exit(main())

"""The comparison runner: each method x keep ratio and the unpruned reference, under one harness.

:func:`run_comparison` is what ``tokenprune compare`` runs, as a Python API. Every configuration (the
reference ``none`` and each method at each keep ratio) sees the same samples in the same order, the same
prompts (the benchmark's user text in the processor's chat template, images first), greedy decoding
with the same token limit, the same batches (left padded), and the selector's prompt restricted to the
user's question (:func:`~tokenprune.integrations.question_tokens`).

The harness, per batch:

1. the processor runs once; the images are encoded once (vision tower and projector) and the features
   are reused by every configuration of the batch (``tokenprune.apply(..., adapter=...)`` with an
   adapter that remembers the batch's encodings; methods that prune inside the LM, such as ``fastv``, and
   methods needing other scores encode again);
2. the reference runs as ``tokenprune.apply(model, ..., budget=1.0)``: the selector is skipped, which is
   token-identical to stock ``generate``, and its prefill is timed by the same wrapper, in the same way,
   as the pruned prefills (``PruneStats.prefill_ms``: the language model's first forward, vision
   encoding excluded);
3. each method at each keep ratio runs under ``tokenprune.apply(model, method, budget=keep, ...)``.

Records. Each (sample, configuration) gives one JSON record, appended to
``OUTPUT/predictions.rank<R>.jsonl`` (one file per process) as soon as its batch is done and flushed:
``key``, ``model``, ``benchmark``, ``sample_id``, ``index``, ``family``, ``method``, ``params``,
``keep``, ``seed``, ``prediction``, ``score`` (the per-sample score; POPE: 1.0 when the parsed yes/no is
the label), ``pope`` (POPE only: ``[prediction, label]`` with prediction 1 yes, 0 no, -1 unparsed),
``selection_ms`` and ``prefill_ms`` (of the ``generate`` call that processed the sample, a batch),
``peak_mem_mb`` (of that call; None on CPU), ``visual_before`` and ``visual_after`` (the sample's visual
tokens before and after pruning), ``prefill_gflops`` (the language model's prefill of the sample's own
sequence, :mod:`tokenprune.evaluation.flops`; None where the model's config is not a known decoder's),
``batch_rows``, ``rank`` and ``time``.

Resume. ``key`` hashes everything that determines a record: the model (path and the size and
modification time of its files, or the hub id), benchmark and sample, method and all its parameters,
keep ratio, seed, token limit, dtype and device type; not the batch size or the number of processes.
A run first reads every ``*.jsonl`` under ``OUTPUT`` and computes only the keys it does not find, so an
interrupted run resumes where it stopped and a repeated run reuses its samples (timings included: they
are those measured when the sample ran). A line cut short by a kill is skipped.

Sharding. Under ``torchrun`` or ``accelerate launch`` (``WORLD_SIZE`` > 1), the process group is
initialised (``gloo`` on CPU, ``nccl`` on CUDA, one GPU per ``LOCAL_RANK``), rank ``r`` takes the samples
``i`` with ``i % WORLD_SIZE == r``, writes its own file, and after a barrier rank 0 reads every rank's file
and returns the merged :class:`Comparison`; the other ranks return None.

Memory. ``peak_mem_mb`` is ``torch.accelerator.max_memory_allocated`` (``torch.cuda.max_memory_allocated``
on CUDA) over each configuration's ``generate`` call, after resetting the peak: model weights, the batch's
inputs and pre-encoded features included. On CPU PyTorch keeps no allocator statistics, so it is None
(``-`` in the table): no process-wide RSS is passed off as a per-configuration number.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tokenprune.errors import InputError, TokenPruneError
from tokenprune.evaluation.datasets import Sample, get_benchmark, load_benchmark
from tokenprune.evaluation.flops import DecoderShape, prefill_flops
from tokenprune.evaluation.specs import REFERENCE, MethodConfig, parse_benchmarks, parse_keeps, parse_methods
from tokenprune.integrations.adapters import FAMILIES

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_BENCHMARKS",
    "DEFAULT_KEEPS",
    "BenchmarkRun",
    "Comparison",
    "DefaultModelMissingError",
    "RunConfig",
    "chat_inputs",
    "check_in_model",
    "default_model_path",
    "default_output_dir",
    "images_only",
    "load_model",
    "load_processor",
    "max_new_tokens_for",
    "one_per_name",
    "read_records",
    "run_comparison",
    "runnable_methods",
    "score_sample",
]

DEFAULT_KEEPS: tuple[float, ...] = (0.1, 0.3, 0.5)
DEFAULT_BENCHMARKS: tuple[str, ...] = ("scenes",)
DEFAULT_BATCH_SIZE = 8
_MAX_NEW_TOKENS = {"scenes": 8}
_DEFAULT_MAX_NEW_TOKENS = 16
_PROMPT_VERSION = "chat-template/images-first/question-tokens/v1"  # part of every key: change it if prompts change


class DefaultModelMissingError(TokenPruneError, FileNotFoundError):
    """``compare`` was run without ``--model`` and the shipped model is not installed."""


def default_model_path() -> Path:
    """Where the shipped small LLaVA lives: ``tokenprune/assets/scene-llava/`` inside the installed package.

    The one place the default model is named. The directory is a ``save_pretrained`` directory of a
    ``LlavaForConditionalGeneration`` and its ``LlavaProcessor`` (tokenizer and chat template included).
    """
    from tokenprune.scenes.model import MODEL_DIR

    return MODEL_DIR


def default_output_dir() -> Path:
    """Where per-sample records go without ``--output``: ``$TOKENPRUNE_CACHE_DIR/compare``, else
    ``$XDG_CACHE_HOME/tokenprune/compare``, else ``~/.cache/tokenprune/compare``."""
    root = os.environ.get("TOKENPRUNE_CACHE_DIR")
    if root:
        return Path(root) / "compare"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tokenprune" / "compare"


def _resolve_model(model: str | os.PathLike[str] | None) -> str:
    if model is not None:
        return str(model)
    path = default_model_path()
    if not (path / "config.json").is_file():
        raise DefaultModelMissingError(
            f"the shipped model is not installed: expected a save_pretrained directory at {path} (config.json, "
            f"weights, processor with tokenizer and chat template); received no such directory. Point compare at "
            f"a model and data instead: --model HF_ID_OR_PATH (a {FAMILIES} checkpoint) --benchmark "
            f"pope,gqa (hub datasets, or NAME=PATH for a local copy); see docs/tutorials/compare.md"
        )
    return str(path)


def max_new_tokens_for(benchmark: str) -> int:
    """The decoding limit of a benchmark: 8 tokens for ``scenes`` (one word or a short phrase), else 16."""
    return _MAX_NEW_TOKENS.get(benchmark, _DEFAULT_MAX_NEW_TOKENS)


# --- configurations and records -----------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    """One row of the comparison: a method (or the reference) at a keep ratio."""

    method: MethodConfig
    keep: float

    @property
    def label(self) -> str:
        return str(self.method)

    @property
    def id(self) -> str:
        """A stable identifier of the configuration, for matching records."""
        name, params = self.method.identity
        return f"{name}|{params}|{self.keep!r}"


@dataclass(frozen=True)
class BenchmarkRun:
    """A benchmark as run: its samples in order (all ranks), and where they came from."""

    name: str
    metric: str
    source: str
    samples: tuple[Sample, ...]
    max_new_tokens: int

    @property
    def families(self) -> tuple[str, ...]:
        """Question families in first-seen order (empty when the benchmark has none)."""
        seen = dict.fromkeys(s.extra.get("family") for s in self.samples)
        return tuple(f for f in seen if f is not None)


@dataclass
class Comparison:
    """Everything a comparison produced: configurations, benchmarks, per-sample records, metadata.

    Attributes:
        configs: the reference first, then each method at each keep ratio.
        benchmarks: the benchmarks run.
        records: ``(benchmark, sample id, config id) -> record`` for every sample of every configuration.
        metadata: model, settings, versions, device, commit and date.
        computed: records computed by this run (summed over ranks); the rest were reused.
    """

    configs: list[RunConfig]
    benchmarks: list[BenchmarkRun]
    records: dict[tuple[str, str, str], dict[str, Any]]
    metadata: dict[str, Any]
    computed: int = 0
    reused: int = 0

    def records_for(self, config: RunConfig, benchmark: BenchmarkRun) -> list[dict[str, Any]]:
        """The records of ``config`` on ``benchmark``, in sample order."""
        return [self.records[benchmark.name, sample.id, config.id] for sample in benchmark.samples]


def score_sample(sample: Sample, prediction: str) -> tuple[float, list[int] | None]:
    """The per-sample score of ``prediction`` under the sample's metric; and POPE's ``[prediction, label]``.

    Example:
        >>> s = Sample(id="q", benchmark="scenes", question="?", prompt="?", answers=("2", "two"),
        ...            metric="exact_match_any")
        >>> score_sample(s, "two")
        (1.0, None)
    """
    from tokenprune.evaluation import metrics

    metric = sample.metric
    if metric == "pope_f1":
        parsed, label = metrics.yes_no(prediction), sample.label
        return float(parsed is label), [-1 if parsed is None else int(parsed), int(bool(label))]
    if metric == "vqa_accuracy":
        return metrics.vqa_accuracy(prediction, sample.answers), None
    if metric == "exact_match_any":
        return metrics.exact_match_any(prediction, sample.answers), None
    if metric == "multiple_choice":
        return metrics.multiple_choice(prediction, sample.choices, sample.answer), None
    if metric in ("exact_match", "relaxed_accuracy"):
        return metrics.get_metric(metric).score(prediction, sample.answer), None
    raise InputError(f"no per-sample scoring for metric {metric!r} (sample {sample.id!r})")


def _rescored(record: Mapping[str, Any], sample: Sample) -> dict[str, Any]:
    """A reused record scored again from its prediction, against the sample as loaded now.

    The prediction depends on what the key hashes (model, prompt, method, ...); the score also on the
    sample's answers, which a local copy may have changed, and on tokenprune's metrics, which a fix may
    have changed. Scoring is cheap, so reused records are never stale.
    """
    out = dict(record)
    out["score"], pope = score_sample(sample, str(record.get("prediction", "")))
    if pope is not None:
        out["pope"] = pope
    return out


def _key(fields: Mapping[str, Any]) -> str:
    text = json.dumps(fields, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def model_fingerprint(model: str) -> str:
    """``dir:<hash>`` of a local directory's file names, sizes and modification times; ``hub:<id>`` otherwise.

    Retraining a local model changes its fingerprint, so its old records are not reused.
    """
    path = Path(model)
    if not path.is_dir():
        return f"hub:{model}"
    entries = sorted(
        (str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns) for f in path.rglob("*") if f.is_file()
    )
    return "dir:" + hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def read_records(directory: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Every record under ``directory`` (all ``*.jsonl`` files), by key; the latest ``time`` wins.

    Lines that are not complete JSON records (a write cut short by a kill) are skipped.
    """
    records: dict[str, dict[str, Any]] = {}
    root = Path(directory)
    if not root.is_dir():
        return records
    for path in sorted(root.glob("*.jsonl")):
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(record, dict) or "key" not in record:
                    continue
                known = records.get(record["key"])
                if known is None or record.get("time", 0) >= known.get("time", 0):
                    records[record["key"]] = record
    return records


class _RecordFile:
    """One process's append-only JSONL file; each batch is one ``write`` and is flushed to disk."""

    def __init__(self, directory: Path, rank: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"predictions.rank{rank}.jsonl"

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        with open(self.path, "a+b", buffering=0) as handle:  # appends go to the end whatever the position
            size = handle.seek(0, os.SEEK_END)
            if size:
                handle.seek(size - 1)
                if handle.read(1) != b"\n":  # the previous run was killed mid-line
                    data = b"\n" + data
            view = memoryview(data)
            while view:
                view = view[handle.write(view) :]
            os.fsync(handle.fileno())


# --- model and inputs ---------------------------------------------------------------------------


def _resolve_device(device: str | torch.device, local_rank: int) -> torch.device:
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"device must be auto, cpu or cuda[:N]; got {device!r}") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r} was asked for but torch.cuda.is_available() is False; use --device cpu")
        if resolved.index is None:
            resolved = torch.device("cuda", local_rank % torch.cuda.device_count())
    return resolved


def load_processor(model: str) -> Any:
    """The checkpoint's processor (``AutoProcessor``), or, where only its video processor fails to load,
    the same processor class for images only, with a warning.

    Qwen2.5-VL's processor includes a video processor, and transformers' video processors need torchvision,
    which a CPU-only machine may not have (its CPU build can break transformers' imports). Images do not
    need it: the image processor has a PIL backend.
    """
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(model)
    except (ImportError, OSError, ValueError) as error:
        cls = _processor_class(model)
        if cls is None or "video_processor" not in cls.get_attributes():
            raise
        try:
            processor = images_only(cls).from_pretrained(model)
        except Exception:
            raise error from None
        reason = " ".join(str(error).split())
        warnings.warn(
            f"{model}: the processor's video processor did not load ({type(error).__name__}: {reason[:200]}); "
            f"using {cls.__name__} for images only (videos are not supported)",
            RuntimeWarning,
            stacklevel=2,
        )
        return processor


def images_only(processor_class: type) -> type:
    """``processor_class`` (a transformers processor class) without its video processor.

    The subclass keeps the class's name, which ``save_pretrained`` writes, so what it saves reads as a
    checkpoint of the original class.
    """

    class ImagesOnly(processor_class):
        @classmethod
        def get_attributes(cls) -> list[str]:
            return [name for name in super().get_attributes() if name != "video_processor"]

    ImagesOnly.__name__ = ImagesOnly.__qualname__ = processor_class.__name__
    return ImagesOnly


def _processor_class(model: str) -> Any:
    """The processor class transformers maps the checkpoint's model type to, or None."""
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    try:
        model_type = AutoConfig.from_pretrained(model).model_type
    except (OSError, ValueError):
        return None
    name = PROCESSOR_MAPPING_NAMES.get(model_type)
    return getattr(transformers, name, None) if isinstance(name, str) else None


def load_model(model: str, device: torch.device) -> tuple[Any, Any]:
    """``(model, processor)`` from a local directory or hub id through ``from_pretrained``.

    float32 on CPU; the checkpoint's own dtype elsewhere. The tokenizer pads on the left (generation).
    The processor comes from :func:`load_processor`.
    """
    from transformers import AutoModelForImageTextToText

    processor = load_processor(model)
    dtype = torch.float32 if device.type == "cpu" else "auto"
    vlm = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype).to(device).eval()
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None or getattr(processor, "chat_template", None) is None:
        raise InputError(
            f"model {model!r}: compare needs a processor with a tokenizer and a chat template; "
            f"got {type(processor).__name__} without one"
        )
    tokenizer.padding_side = "left"
    return vlm, processor


def _family(model_type: str) -> str:
    return "qwen2_5_vl" if model_type.startswith("qwen") else "llava"


def chat_inputs(
    processor: Any,
    rows: Sequence[tuple[Sequence[Any], str]],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Processor inputs for ``rows`` of ``(images, user text)``: one user turn per row, the images before
    the text, through the processor's chat template with the generation prompt; padded (on the
    processor's padding side). Tensors go to ``device``, floating ones also to ``dtype``, when given.
    """
    texts = []
    for images, text in rows:
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
        texts.append(processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True))
    # per row, its images (a nested list): processors such as Gemma 3's match them to each prompt's placeholders
    images = [list(row_images) for row_images, _ in rows]
    batch = processor(images=images if any(images) else None, text=texts, padding=True, return_tensors="pt")
    inputs = {}
    for name, value in batch.items():
        if isinstance(value, torch.Tensor) and device is not None:
            value = value.to(device, dtype=dtype) if value.is_floating_point() and dtype else value.to(device)
        inputs[name] = value
    return inputs


class _BatchEncodings:
    """Makes an adapter's ``encode_images`` remember the encodings of the current batch.

    The session hands the adapter the caller's own tensors, so an encoding is found again by the identity
    of the image tensors (and the score source and merge option); :meth:`clear` forgets them at the next batch.
    """

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter
        self._encode = adapter.encode_images
        self._entries: list[tuple[tuple[Any, ...], tuple[str | None, bool], Any]] = []
        adapter.encode_images = self._encode_images  # this adapter instance only

    def clear(self) -> None:
        self._entries.clear()

    def _encode_images(self, inputs: Mapping[str, Any], *, scores: str | None = None, merge: bool = False) -> Any:
        tensors = tuple(inputs.get(name) for name in self.adapter.image_kwargs)
        for seen, asked, images in self._entries:
            if asked == (scores, merge) and all(a is b for a, b in zip(seen, tensors, strict=True)):
                return images
        from tokenprune.integrations.base import encode

        images = encode(self._encode, inputs, scores=scores, merge=merge)
        self._entries.append((tensors, (scores, merge), images))
        return images


def _peak_memory(device: torch.device, reset: bool) -> float | None:
    if device.type == "cpu":
        return None
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "max_memory_allocated"):
        if reset:
            accelerator.reset_peak_memory_stats(device)
            return None
        return accelerator.max_memory_allocated(device) / 2**20
    if device.type != "cuda":
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


# --- distributed --------------------------------------------------------------------------------


@dataclass
class _Shard:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # we initialised the process group (and destroy it)

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def sum(self, value: int) -> int:
        if self.world == 1:
            return value
        total = torch.tensor([value], dtype=torch.long)
        if torch.distributed.get_backend() == "nccl":
            total = total.cuda()
        torch.distributed.all_reduce(total)
        return int(total.item())


@contextlib.contextmanager
def _distributed(device: str | torch.device) -> Iterator[_Shard]:
    """The process's shard: from an initialised process group, or from torchrun's environment variables."""
    dist = torch.distributed
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        yield _Shard(dist.get_rank(), dist.get_world_size(), local_rank)
        return
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield _Shard()
        return
    if not dist.is_available():
        raise TokenPruneError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
    cuda = str(device).startswith("cuda") or (str(device) == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    try:
        yield _Shard(dist.get_rank(), dist.get_world_size(), local_rank, owned=True)
        # leave together, after rank 0 has merged: once, on a loaded machine, rank 1 aborted while tearing
        # gloo down early (SIGABRT, "terminate called without an active exception"); not reproduced since
        dist.barrier()
    finally:
        dist.destroy_process_group()


# --- metadata -----------------------------------------------------------------------------------


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def _metadata(**fields: Any) -> dict[str, Any]:
    import transformers

    import tokenprune

    return {
        **fields,
        "tokenprune": tokenprune.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# --- the run ------------------------------------------------------------------------------------


def _check_int(value: Any, name: str, low: int, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputError(f"{name} must be an int >= {low}{' or None' if optional else ''}; got {value!r}")


def run_comparison(
    methods: str | Sequence[MethodConfig | str],
    *,
    keeps: str | Sequence[float] = DEFAULT_KEEPS,
    model: str | os.PathLike[str] | None = None,
    benchmarks: str | Sequence[str | tuple[str, str | None]] = DEFAULT_BENCHMARKS,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "auto",
    output: str | os.PathLike[str] | None = None,
    max_new_tokens: int | None = None,
    resume: bool = True,
    positions: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    after_batch: Callable[[int], None] | None = None,
) -> Comparison | None:
    """Run every method at every keep ratio, and the unpruned reference, on the benchmarks' samples.

    Args:
        methods: method specs (``"zspa:core_ratio=0.2,divprune"`` or a list of specs or
            :class:`~tokenprune.evaluation.specs.MethodConfig`).
        keeps: keep ratios in (0, 1].
        model: a local ``save_pretrained`` directory or hub id; None is the shipped model
            (:func:`default_model_path`).
        benchmarks: names, or ``NAME=PATH`` / ``(name, path)`` for a local copy.
        limit: at most this many samples per benchmark (``scenes``: this many are generated).
        seed: the seed of the ``scenes`` test set and of torch before each call.
        batch_size: samples per ``generate`` call (left padded).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        output: the directory of per-sample JSONL records (resume); None keeps them in memory only.
        max_new_tokens: decoding limit; None uses :func:`max_new_tokens_for` each benchmark.
        resume: reuse records found under ``output``; False computes every sample again.
        positions: how the LM positions the kept tokens, for the method specs that do not say
            (``"contiguous"``, ``"original"``; None: the model's default; see :func:`tokenprune.apply`).
        progress: called with ``(done, total)`` (this process's samples x configurations) as work completes.
        after_batch: called with the batch number after each batch is written (e.g. to stop a run).

    Returns:
        The :class:`Comparison`; None on ranks other than 0 of a distributed run.

    Raises:
        UnknownMethodError, MethodParameterError, UnknownBenchmarkError, InputError: bad arguments.
        DefaultModelMissingError: no ``model`` and the shipped model is not installed.
    """
    if isinstance(methods, str):
        configs_methods = parse_methods(methods, positions=positions)
    else:
        configs_methods = _method_configs(methods, positions)
    keeps = parse_keeps(keeps) if isinstance(keeps, str) else parse_keeps(",".join(map(str, keeps)))
    chosen = parse_benchmarks(benchmarks) if isinstance(benchmarks, str) else _benchmark_choices(benchmarks)
    one_per_name(chosen)
    check_in_model(configs_methods)
    _check_int(limit, "limit", 1, optional=True)
    _check_int(seed, "seed", 0)
    _check_int(batch_size, "batch_size", 1)
    _check_int(max_new_tokens, "max_new_tokens", 1, optional=True)
    model_id = _resolve_model(model)

    configs = [RunConfig(MethodConfig(REFERENCE), 1.0)]
    configs += [RunConfig(method, keep) for method in configs_methods for keep in keeps]

    with _distributed(device) as shard:
        if shard.world > 1 and output is None:
            raise InputError(f"a distributed run ({shard.world} processes) needs an output directory shared by all")
        resolved = _resolve_device(device, shard.local_rank)
        runner = _Runner(model_id, resolved, seed, batch_size, shard, progress, after_batch)
        configs_methods, skipped = runner.runnable(configs_methods)
        configs = [configs[0]] + [config for config in configs[1:] if config.method in configs_methods]
        runs = [runner.benchmark(name, path, limit, max_new_tokens) for name, path in chosen]
        directory = None if output is None else Path(output)
        known = read_records(directory) if directory is not None and resume else {}
        computed = runner.run(runs, configs, known, directory)
        shard.barrier()
        total = shard.sum(computed)
        if shard.rank != 0:
            return None
        merged = read_records(directory) if directory is not None else runner.records
        records = {}
        for run in runs:
            for sample in run.samples:
                for config in configs:
                    key = runner.key(run, sample, config)
                    if key not in merged:
                        raise TokenPruneError(f"no record of {sample.id} with {config.label} keep={config.keep}")
                    records[run.name, sample.id, config.id] = _rescored(merged[key], sample)
        metadata = _metadata(
            model=model_id,
            model_fingerprint=runner.fingerprint,
            model_class=runner.model_class,
            benchmarks={run.name: {"source": run.source, "metric": run.metric, "n": len(run.samples)} for run in runs},
            methods=[str(m) for m in configs_methods],
            keeps=list(keeps),
            seed=seed,
            batch_size=batch_size,
            max_new_tokens={run.name: run.max_new_tokens for run in runs},
            device=str(resolved),
            dtype=runner.dtype_name,
            world_size=shard.world,
            output=None if directory is None else str(directory),
            skipped=skipped,
        )
        return Comparison(configs, runs, records, metadata, computed=total, reused=len(records) - total)


def runnable_methods(
    methods: Sequence[MethodConfig], check: Callable[[MethodConfig], None], model: str
) -> tuple[list[MethodConfig], dict[str, str]]:
    """``methods`` that pass ``check`` (which raises what the model would), and why each other was skipped.

    Only methods a pattern chose (:attr:`MethodConfig.optional`) are skipped; one named explicitly that fails
    the check raises its error. Used by ``compare`` and ``show``.

    Raises:
        InputError, UnsupportedScoresError, UnsupportedMergeError: a method named explicitly cannot run on
            ``model``, or no method is left.
    """
    from tokenprune.integrations.base import UnsupportedMergeError, UnsupportedScoresError

    kept, skipped = [], {}
    for method in methods:
        try:
            check(method)
        except (InputError, UnsupportedScoresError, UnsupportedMergeError) as error:
            if not method.optional:
                raise
            skipped[str(method)] = str(error)
        else:
            kept.append(method)
    if methods and not kept:
        reasons = "; ".join(f"{label}: {why}" for label, why in skipped.items())
        raise InputError(f"no method given can run on {model}: {reasons}")
    return kept, skipped


def check_in_model(methods: Sequence[MethodConfig]) -> None:
    """Raise :class:`InputError` for a method that cannot run inside a model (its scores come from the caller)."""
    from tokenprune.registry import create_method

    for method in methods:
        selector = create_method(method.name, **method.given)
        if "scores" in selector.requires and selector.score_source == "external":
            raise InputError(
                f"method {str(method)!r} ranks tokens by scores passed by the caller, which a model call cannot pass "
                f"(compare and show run each method inside the model): expected a method whose scores the model "
                f"provides (fastervlm, visionzip, fastv) or one that needs none"
            )


def _method_configs(methods: Sequence[MethodConfig | str], positions: str | None = None) -> list[MethodConfig]:
    configs: list[MethodConfig] = []
    for method in methods:
        for config in [method] if isinstance(method, MethodConfig) else parse_methods(method, positions=positions):
            if config not in configs and not config.is_reference:
                configs.append(config)
    return configs


def _benchmark_choices(benchmarks: Sequence[str | tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    chosen: list[tuple[str, str | None]] = []
    for item in benchmarks:
        for entry in parse_benchmarks(item) if isinstance(item, str) else [(get_benchmark(item[0]).name, item[1])]:
            if entry not in chosen:
                chosen.append(entry)
    return chosen


def one_per_name(chosen: Sequence[tuple[str, str | None]]) -> None:
    """Refuse one benchmark from two sources: its results, keyed by name, would mix them."""
    sources: dict[str, list[str]] = {}
    for name, path in chosen:
        sources.setdefault(name, []).append(path or "the hub")
    for name, where in sources.items():
        if len(where) > 1:
            raise InputError(
                f"benchmark {name!r} given {len(where)} times ({', '.join(where)}): a comparison scores each "
                f"benchmark once; compare each copy in a run of its own (with its own --output)"
            )


class _Runner:
    """The state of one process's run: the model (loaded on first need), keys, the in-memory records."""

    def __init__(
        self,
        model_id: str,
        device: torch.device,
        seed: int,
        batch_size: int,
        shard: _Shard,
        progress: Callable[[int, int], None] | None,
        after_batch: Callable[[int], None] | None,
    ) -> None:
        from transformers import AutoConfig

        self.model_id, self.device, self.seed, self.batch_size, self.shard = model_id, device, seed, batch_size, shard
        self.progress, self.after_batch = progress, after_batch
        self.fingerprint = model_fingerprint(model_id)
        config = AutoConfig.from_pretrained(model_id)
        self.model_type = config.model_type
        self.model_class = (getattr(config, "architectures", None) or [config.model_type])[0]
        self.dtype_name = "float32" if device.type == "cpu" else str(getattr(config, "dtype", None) or "auto")
        try:
            self.shape: DecoderShape | None = DecoderShape.from_config(config)
        except ValueError:
            self.shape = None  # a language model of another kind: no FLOPs column
        self.records: dict[str, dict[str, Any]] = {}
        self._model: Any = None
        self._methods: list[MethodConfig] = []  # checked against the model when it loads

    def benchmark(self, name: str, path: str | None, limit: int | None, max_new_tokens: int | None) -> BenchmarkRun:
        spec = get_benchmark(name)
        if spec.name == "scenes":
            source = f"tokenprune.scenes split={spec.split} seed={self.seed}"
        else:
            source = f"path:{Path(path).resolve()}" if path else f"hub:{spec.hub_id}"
            source += f" split={spec.split}"
        samples = load_benchmark(name, path=path, limit=limit, family=_family(self.model_type), seed=self.seed)
        tokens = max_new_tokens or max_new_tokens_for(spec.name)
        return BenchmarkRun(spec.name, spec.metric, source, tuple(samples), tokens)

    def key(self, run: BenchmarkRun, sample: Sample, config: RunConfig) -> str:
        return _key(
            {
                "model": self.fingerprint,
                "benchmark": run.name,
                "source": run.source,
                "sample": sample.id,
                "method": config.method.name,
                "params": dict(config.method.params),
                **({} if config.method.positions is None else {"positions": config.method.positions}),
                "keep": config.keep,
                "seed": self.seed,
                "max_new_tokens": run.max_new_tokens,
                "dtype": self.dtype_name,
                "device": self.device.type,
                "prompt": _PROMPT_VERSION,
            }
        )

    def _load(self) -> None:
        if self._model is not None:
            return
        from tokenprune.integrations import get_adapter, question_tokens

        self._model, self.processor = load_model(self.model_id, self.device)
        self.dtype = self._model.dtype
        self.encodings = _BatchEncodings(get_adapter(self._model))
        self.prompt_tokens = question_tokens(self.processor)
        tokenizer = self.processor.tokenizer
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        for method in self._methods:  # before any batch: a method this model cannot run stops the run here
            self._check(method)

    def _check(self, method: MethodConfig) -> None:
        """Raise the error this model would raise for ``method`` (positions, scores, merging), before any work.

        The positions setting is checked always, the model family's support once the model is loaded.
        """
        from tokenprune.integrations.base import check_method, check_positions, resolve_positions
        from tokenprune.registry import create_method

        selector = create_method(method.name, **method.given)
        inside_lm = selector.prune_layer is not None
        check_positions(method.positions, inside_lm=inside_lm, label=str(method))
        if self._model is not None:
            resolve_positions(self.encodings.adapter, method.positions, inside_lm=inside_lm)
            check_method(self.encodings.adapter, selector)

    def runnable(self, methods: Sequence[MethodConfig]) -> tuple[list[MethodConfig], dict[str, str]]:
        """``methods`` without the optional ones (chosen by a pattern) this model cannot run, and why each was skipped.

        Deciding that needs the model, which is loaded for it when there is an optional method. A method
        named explicitly that cannot run raises instead, here or when the model loads.

        Raises:
            InputError, UnsupportedScoresError, UnsupportedMergeError: a method named explicitly cannot run
                here, or no method is left.
        """
        if any(method.optional for method in methods):
            self._load()
        kept, skipped = runnable_methods(methods, self._check, self.model_id)
        self._methods = kept
        return kept, skipped

    def run(
        self,
        runs: Sequence[BenchmarkRun],
        configs: Sequence[RunConfig],
        known: Mapping[str, Mapping[str, Any]],
        directory: Path | None,
    ) -> int:
        """Compute this shard's missing records; returns how many were computed."""
        plan = []  # (run, sample, {config id: key} still to compute)
        for run in runs:
            for index, sample in enumerate(run.samples):
                if index % self.shard.world != self.shard.rank:
                    continue
                todo = {}
                for config in configs:
                    key = self.key(run, sample, config)
                    if key in known:
                        self.records[key] = dict(known[key])
                    else:
                        todo[config.id] = key
                if todo:
                    plan.append((run, index, sample, todo))
        total = sum(len(todo) for *_, todo in plan)
        if self.progress is not None:
            self.progress(0, total)
        if not plan:
            return 0
        self._load()
        writer = None if directory is None else _RecordFile(directory, self.shard.rank)
        done = 0
        for number, start in enumerate(range(0, len(plan), self.batch_size)):
            batch = plan[start : start + self.batch_size]
            groups: dict[tuple[int, ...], list[RunConfig]] = {}
            for config in configs:
                rows = tuple(i for i, (*_, todo) in enumerate(batch) if config.id in todo)
                if rows:
                    groups.setdefault(rows, []).append(config)
            for rows, group in groups.items():
                chosen = [batch[i] for i in rows]
                records = self._run_rows(chosen, group)
                if writer is not None:
                    writer.append(records)
                for record in records:
                    self.records[record["key"]] = record
                done += len(records)
                if self.progress is not None:
                    self.progress(done, total)
            if self.after_batch is not None:
                self.after_batch(number)
        return done

    def _run_rows(self, rows: Sequence[tuple[BenchmarkRun, int, Sample, dict[str, str]]], configs: Sequence[RunConfig]):
        import tokenprune

        model, samples = self._model, [sample for _, _, sample, _ in rows]
        records: list[dict[str, Any]] = []
        by_benchmark: dict[str, list[int]] = {}
        for i, (run, *_) in enumerate(rows):
            by_benchmark.setdefault(run.name, []).append(i)
        for indices in by_benchmark.values():  # a batch holds one benchmark, except at a boundary
            part = [rows[i] for i in indices]
            run = part[0][0]
            chats = [(samples[i].images, samples[i].prompt) for i in indices]  # not `rows`: the next group reads it
            inputs = chat_inputs(self.processor, chats, device=self.device, dtype=self.dtype)
            self.encodings.clear()
            lengths = inputs["attention_mask"].sum(dim=1).tolist()  # each row's real tokens, unpruned
            with torch.inference_mode():
                self.encodings.adapter.encode_images(inputs)  # once per batch, outside every timed config
                for config in configs:
                    method = "stride" if config.method.is_reference else config.method.name
                    torch.manual_seed(self.seed)
                    _peak_memory(self.device, reset=True)
                    with tokenprune.apply(
                        model,
                        method,
                        budget=config.keep,
                        prompt_tokens=self.prompt_tokens,
                        positions=config.method.positions,
                        adapter=self.encodings.adapter,
                        **({} if config.method.is_reference else dict(config.method.params)),
                    ) as session:
                        out = model.generate(
                            **inputs,
                            max_new_tokens=run.max_new_tokens,
                            do_sample=False,
                            num_beams=1,
                            pad_token_id=self.pad_token_id,
                        )
                    peak = _peak_memory(self.device, reset=False)
                    new_tokens = out[:, inputs["input_ids"].shape[1] :]
                    texts = self.processor.batch_decode(new_tokens, skip_special_tokens=True)
                    positions = None if config.method.is_reference else session.positions
                    records += self._records(
                        part, config, texts, session.last, peak, positions, session.selector.prune_layer, lengths
                    )
        return records

    def _gflops(self, stats: Any, row: int, prune_layer: int | None, length: int) -> float | None:
        """The language model's prefill of batch row ``row`` (its real tokens only), in GFLOPs.

        ``length``: the row's real tokens unpruned, for a batch with no image (nothing pruned, no statistics).
        """
        if self.shape is None:
            return None
        if stats is None:
            return prefill_flops(self.shape, length) / 1e9
        before, after = stats.sequence_before[row], stats.sequence_after[row]
        if prune_layer is None:  # pruned before the language model (or not at all): every layer sees `after`
            return prefill_flops(self.shape, after) / 1e9
        return prefill_flops(self.shape, before, pruned=after, prune_layer=prune_layer) / 1e9

    def _records(
        self,
        rows,
        config: RunConfig,
        texts: Sequence[str],
        stats: Any,
        peak: float | None,
        positions: str | None,
        prune_layer: int | None,
        lengths: Sequence[int],
    ):
        out = []
        image = 0
        for row, ((run, index, sample, todo), text) in enumerate(zip(rows, texts, strict=True)):
            n = len(sample.images)
            before = sum(stats.visual_before[image : image + n]) if stats is not None else None
            after = sum(stats.visual_after[image : image + n]) if stats is not None else None
            image += n
            prediction = text.strip()
            score, pope = score_sample(sample, prediction)
            record = {
                "key": todo[config.id],
                "model": self.model_id,
                "benchmark": run.name,
                "sample_id": sample.id,
                "index": index,
                "family": sample.extra.get("family"),
                "method": config.method.name,
                "params": config.method.json_params(),
                "positions": positions,  # the mode that ran: the model's default when the spec set none
                "keep": config.keep,
                "seed": self.seed,
                "prediction": prediction,
                "score": score,
                "selection_ms": None if stats is None else stats.selection_ms,
                "prefill_ms": None if stats is None else stats.prefill_ms,
                "peak_mem_mb": peak,
                "visual_before": before,
                "visual_after": after,
                "prefill_gflops": self._gflops(stats, row, prune_layer, lengths[row]),
                "batch_rows": len(rows),
                "rank": self.shard.rank,
                "time": time.time_ns(),
            }
            if pope is not None:
                record["pope"] = pope
            out.append(record)
        return out

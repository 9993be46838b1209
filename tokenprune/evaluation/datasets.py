"""Benchmark loaders: the paper's six benchmarks as uniform :class:`Sample` records, lmms-eval prompts.

Each benchmark loads by its Hugging Face hub id, as lmms-eval's task yaml names it, through
``datasets.load_dataset`` (``pip install 'tokenprune-vlm[eval]'``), or from a local copy in the same
format (see *Local copies* below). ``datasets`` and Pillow are imported when a loader runs, never when
``tokenprune`` is imported.

Benchmarks (name: hub id and config; split; metric in ``METRICS``; lmms-eval task yaml):

* ``pope``: ``lmms-lab/POPE``; test, filtered by ``category``; ``pope_f1``; ``pope/pope.yaml``.
* ``gqa``: ``lmms-lab/GQA`` (``testdev_balanced_instructions``; images from ``testdev_balanced_images``);
  testdev; ``exact_match``; ``gqa/gqa.yaml``.
* ``textvqa``: ``lmms-lab/textvqa``; validation; ``vqa_accuracy``; ``textvqa/textvqa_val.yaml``.
* ``mmmu``: ``lmms-lab/MMMU``; validation; ``multiple_choice`` (open questions: ``exact_match``);
  ``mmmu/mmmu_val.yaml``.
* ``ai2d``: ``lmms-lab/ai2d``; test; ``multiple_choice``; ``ai2d/ai2d.yaml``.
* ``chartqa``: ``lmms-lab/ChartQA``; test; ``relaxed_accuracy``; ``chartqa/chartqa.yaml``.
* ``scenes``: generated offline by :func:`tokenprune.scenes.make_dataset` (no hub id, no local copy); test;
  ``exact_match_any``. ``seed=`` draws the scenes (a fresh test set per seed) and ``limit`` is the number
  generated (default :data:`DEFAULT_SCENES`, 50 per question family); the prompt is the question as the
  generator writes it (multiple-choice questions carry their own options and instruction), and
  ``extra["family"]`` (``existence``, ``attribute``, ``counting``, ``spatial``, ``text``,
  ``multiple_choice``) and ``extra["subset"]`` (POPE subset of existence questions) are kept so that results
  can be broken down by question family.

Column mappings (hub column -> :class:`~tokenprune.evaluation.datasets.Sample` field):

* **POPE**: ``question_id`` -> id, ``question``, ``answer`` (``yes``/``no``) -> answers and ``label``,
  ``image``; ``category`` (``random``/``popular``/``adversarial``), ``image_source`` -> extra. The paper's
  "POPE test" is all 9,000 questions (``split="all"``, the default, as lmms-eval's ``pope`` task); pass
  ``split="random"``, ``"popular"`` or ``"adversarial"`` for one category (the same rows as the ``Full``
  config's splits of those names, which lmms-eval's ``pope_random``/``pope_pop``/``pope_adv`` read).
* **GQA**: ``id``, ``question``, ``answer``; ``imageId`` joins the images config (``id``, ``image``), as
  lmms-eval's ``gqa_process_docs`` does; ``fullAnswer``, ``imageId`` -> extra.
* **TextVQA**: ``question_id`` -> id, ``question``, ``answers`` (10 human answers), ``image``;
  ``image_id``, ``ocr_tokens`` -> extra.
* **MMMU**: ``id``, ``question``, ``options`` (a Python-literal string of a list) -> choices,
  ``answer`` (a letter for multiple choice), ``question_type`` (``multiple-choice``/``open``),
  ``image_1`` ... ``image_7``: the images the text names as ``<image N>``, sorted by N, without repeats
  (lmms-eval's ``mmmu_doc_to_visual``); ``question_type``, ``subfield``, ``img_type`` -> extra. The paper
  reports MMMU *test*, whose answers are not public (the hub's test answers are empty; scoring goes through
  the MMMU server), so the default here is *validation* (900 questions), as lmms-eval's ``mmmu_val``.
  ``MMMU/MMMU`` splits the same data into one config per subject: ``hub_id="MMMU/MMMU",
  config="Accounting"``. Open questions (about 5 % of validation) get ``exact_match``; lmms-eval scores them
  with MMMU's own looser number/substring rule, which :mod:`~tokenprune.evaluation.metrics` does not have.
* **AI2D**: ``question``, ``options`` -> choices, ``answer`` (a 0-based index as a string) -> the letter
  (lmms-eval's ``mcq`` target), ``image``; no id column, so id is ``ai2d-<row>``.
* **ChartQA**: ``question``, ``answer``, ``image``, ``type`` (``human_test``/``augmented_test``) -> extra;
  id is ``chartqa-<row>``.

Local copies. ``path=`` is either one ``.parquet``/``.jsonl``/``.json`` file holding the split's rows, or a
directory holding them as files named ``<split>.<ext>`` or ``<split>-*.<ext>`` / ``<split>_*.<ext>`` at any
depth (the layout of a hub snapshot: ``data/test-00000-of-00003.parquet``). GQA's directory holds two
sub-directories named after its configs: ``testdev_balanced_instructions/`` and
``testdev_balanced_images/``. Parquet files are read with their ``datasets`` features (an ``Image`` column
decodes to PIL); an image cell may also be ``{"bytes": ..., "path": ...}``, raw bytes, or, in JSON lines, a
file path relative to the file that holds the row. POPE's local split is ``test``, as on the hub.

>>> from tokenprune.evaluation.datasets import BENCHMARKS
>>> BENCHMARKS["pope"].metric, BENCHMARKS["textvqa"].hub_id
('pope_f1', 'lmms-lab/textvqa')
"""

from __future__ import annotations

import ast
import difflib
import io
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from tokenprune.errors import InputError
from tokenprune.evaluation.prompts import build_prompt, check_family

__all__ = [
    "BENCHMARKS",
    "DEFAULT_SCENES",
    "BenchmarkFormatError",
    "BenchmarkSpec",
    "Sample",
    "UnknownBenchmarkError",
    "build_prompt",
    "get_benchmark",
    "iter_benchmark",
    "list_benchmarks",
    "load_benchmark",
]


class UnknownBenchmarkError(InputError, LookupError):
    """No benchmark of that name. (Candidate for :mod:`tokenprune.errors`.)"""


class BenchmarkFormatError(InputError):
    """A benchmark's rows lack a column, or hold a value of the wrong kind. (Candidate for :mod:`tokenprune.errors`.)"""


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a benchmark lives and how it is scored.

    Attributes:
        name: the key in :data:`BENCHMARKS`.
        hub_id: the hub dataset lmms-eval loads (None for a generated benchmark).
        config: its config (``None``: the default one).
        split: the split loaded by default (POPE: a category, or ``"all"``).
        metric: the key in :data:`tokenprune.evaluation.metrics.METRICS`.
        source: the lmms-eval task yaml these settings come from, under ``lmms_eval/tasks/``.
        paper_split: the split the paper reports.
    """

    name: str
    hub_id: str | None
    config: str | None
    split: str
    metric: str
    source: str
    paper_split: str


BENCHMARKS: dict[str, BenchmarkSpec] = {
    spec.name: spec
    for spec in (
        BenchmarkSpec("pope", "lmms-lab/POPE", None, "all", "pope_f1", "pope/pope.yaml", "test (all 3 categories)"),
        BenchmarkSpec(
            "gqa", "lmms-lab/GQA", "testdev_balanced_instructions", "testdev", "exact_match", "gqa/gqa.yaml",
            "test-dev balanced",
        ),
        BenchmarkSpec(
            "textvqa", "lmms-lab/textvqa", None, "validation", "vqa_accuracy", "textvqa/textvqa_val.yaml", "val"
        ),
        BenchmarkSpec(
            "mmmu", "lmms-lab/MMMU", None, "validation", "multiple_choice", "mmmu/mmmu_val.yaml",
            "test (no public answers: validation used)",
        ),
        BenchmarkSpec("ai2d", "lmms-lab/ai2d", None, "test", "multiple_choice", "ai2d/ai2d.yaml", "test"),
        BenchmarkSpec("chartqa", "lmms-lab/ChartQA", None, "test", "relaxed_accuracy", "chartqa/chartqa.yaml", "test"),
        BenchmarkSpec(
            "scenes", None, None, "test", "exact_match_any", "tokenprune.scenes (generated; not an lmms-eval task)",
            "none (generated by tokenprune; mirrors POPE, GQA, TextVQA, MMMU/AI2D)",
        ),
    )
}  # fmt: skip
"""The paper's benchmarks by name (see the module docstring for columns and sources)."""

DEFAULT_SCENES = 300
"""Questions the ``scenes`` benchmark generates when no ``limit`` is given (50 per question family)."""

_POPE_CATEGORIES = ("random", "popular", "adversarial")
_GQA_IMAGES_CONFIG = "testdev_balanced_images"
_MMMU_IMAGE = re.compile(r"<image (\d+)>")
_LOCAL_EXTENSIONS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}


@dataclass(frozen=True)
class Sample:
    """One benchmark question, in the same shape for every benchmark.

    Attributes:
        id: the benchmark's own question id (``<benchmark>-<row>`` where it has none).
        benchmark: the key in :data:`BENCHMARKS`.
        question: the question as the dataset has it (MMMU keeps its ``<image N>`` placeholders).
        prompt: the user text (:func:`build_prompt`) for the family the loader was given.
        answers: the reference answers: 10 for TextVQA, one elsewhere (POPE ``"yes"``/``"no"``, a letter
            for multiple choice).
        metric: the key in :data:`~tokenprune.evaluation.metrics.METRICS` that scores it.
        choices: the options' texts in letter order, for multiple choice; empty otherwise.
        images: RGB PIL images, in the order the model receives them (not compared, not hashed).
        extra: other columns worth keeping (POPE ``category``, ChartQA ``type``, ...), read-only.
    """

    id: str
    benchmark: str
    question: str
    prompt: str
    answers: tuple[str, ...]
    metric: str
    choices: tuple[str, ...] = ()
    images: tuple[Any, ...] = field(default=(), compare=False, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "answers", tuple(self.answers))
        object.__setattr__(self, "choices", tuple(self.choices))
        object.__setattr__(self, "images", tuple(self.images))
        object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    @property
    def answer(self) -> str:
        """The first reference answer (the only one, except for TextVQA)."""
        return self.answers[0]

    @property
    def label(self) -> bool | None:
        """POPE's label (True for ``yes``); None for other benchmarks."""
        return self.answers[0] == "yes" if self.benchmark == "pope" else None

    def with_prompt(self, family: str) -> Sample:
        """A copy whose ``prompt`` is :func:`build_prompt` for ``family``."""
        return replace(self, prompt=build_prompt(self, family))


def list_benchmarks() -> list[str]:
    """The names in :data:`BENCHMARKS`, sorted.

    >>> list_benchmarks()
    ['ai2d', 'chartqa', 'gqa', 'mmmu', 'pope', 'scenes', 'textvqa']
    """
    return sorted(BENCHMARKS)


def get_benchmark(name: str) -> BenchmarkSpec:
    """The :class:`BenchmarkSpec` of ``name`` (any case); else :class:`UnknownBenchmarkError` with suggestions."""
    spec = BENCHMARKS.get(name.lower()) if isinstance(name, str) else None
    if spec is None:
        close = difflib.get_close_matches(str(name).lower(), list(BENCHMARKS), n=3, cutoff=0.6)
        hint = f"Did you mean {', '.join(map(repr, close))}? " if close else ""
        raise UnknownBenchmarkError(f"unknown benchmark {name!r}. {hint}Available: {', '.join(list_benchmarks())}")
    return spec


def load_benchmark(
    name: str,
    *,
    path: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
    family: str = "llava",
    hub_id: str | None = None,
    config: str | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
) -> list[Sample]:
    """All samples of a benchmark, as a list; see :func:`iter_benchmark` for the arguments."""
    return list(
        iter_benchmark(
            name,
            path=path,
            split=split,
            limit=limit,
            family=family,
            hub_id=hub_id,
            config=config,
            cache_dir=cache_dir,
            seed=seed,
        )
    )


def iter_benchmark(
    name: str,
    *,
    path: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
    family: str = "llava",
    hub_id: str | None = None,
    config: str | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
) -> Iterator[Sample]:
    """Yield a benchmark's samples in dataset order, decoding images as it goes.

    Args:
        name: a key of :data:`BENCHMARKS` (any case).
        path: a local copy (a file or a directory, see the module docstring); ``None`` loads from the hub.
        split: the split; defaults to the spec's. POPE: ``"all"``, ``"random"``, ``"popular"`` or
            ``"adversarial"``.
        limit: at most this many samples (the first ones, after POPE's category filter); ``scenes``
            generates exactly this many (default :data:`DEFAULT_SCENES`).
        family: the model family whose prompt goes into ``Sample.prompt``.
        hub_id: another hub dataset in the same format (ignored with ``path``).
        config: the hub config (MMMU/MMMU: a subject); for GQA, the questions' config.
        cache_dir: passed to ``datasets.load_dataset``.
        seed: ``scenes`` only: the generator's seed (each seed is a different test set); ignored otherwise.

    Raises:
        UnknownBenchmarkError: ``name`` is not a benchmark.
        InputError: a bad ``limit``, ``family`` or POPE ``split``, or no local files for the split.
        BenchmarkFormatError: a row lacks a column or holds a value of the wrong kind.
        ImportError: ``datasets`` is not installed.
    """
    spec = get_benchmark(name)
    check_family(family)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise InputError(f"limit must be None or an int >= 0; got {limit!r}")
    split = spec.split if split is None else split
    if spec.name == "scenes":
        yield from _iter_scenes(split, limit, seed, path=path, hub_id=hub_id, config=config)
        return
    category = None
    if spec.name == "pope":
        if split not in ("all", *_POPE_CATEGORIES):
            raise InputError(f"POPE split must be 'all', {', '.join(map(repr, _POPE_CATEGORIES))}; got {split!r}")
        category, split = (None if split == "all" else split), "test"
    source = _Source(spec, path, split, hub_id or spec.hub_id, config or spec.config, cache_dir)
    rows = source.load(source.config)
    _require_columns(spec.name, rows.column_names, _COLUMNS[spec.name])
    indices: Sequence[int] = range(len(rows))
    if category is not None:
        indices = [i for i, c in enumerate(rows["category"]) if c == category]
    if limit is not None:
        indices = indices[:limit]
    rows = rows.select(indices)
    reader = _READERS[spec.name]
    context = _Context(source)
    seen: dict[str, int] = {}
    for index, row in zip(indices, rows, strict=True):
        sample = reader(row, index, context)
        if sample.id in seen:  # records and results are keyed by it: two samples would share one record
            raise BenchmarkFormatError(
                f"benchmark {spec.name!r}: sample id {sample.id!r} is used by rows {seen[sample.id]} and {index}; "
                f"every sample needs an id of its own"
            )
        seen[sample.id] = index
        yield replace(sample, prompt=build_prompt(sample, family))


def _iter_scenes(
    split: str, limit: int | None, seed: int, *, path: Any, hub_id: str | None, config: str | None
) -> Iterator[Sample]:
    """The generated benchmark: :func:`tokenprune.scenes.make_dataset` samples as :class:`Sample` records."""
    given = {name: value for name, value in (("path", path), ("hub_id", hub_id), ("config", config)) if value}
    if given:
        raise InputError(
            f"benchmark 'scenes' is generated, not loaded: expected no path, hub_id or config; got {given!r}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be an int >= 0 for benchmark 'scenes'; got {seed!r}")
    from tokenprune.scenes import make_dataset

    for scene in make_dataset(DEFAULT_SCENES if limit is None else limit, seed=seed, split=split):
        yield Sample(
            id=f"scenes-{split}-{seed}-{scene.index}",
            benchmark="scenes",
            question=scene.text,
            prompt=scene.text,
            answers=scene.answers,
            metric="exact_match_any",
            choices=scene.choices,
            images=(scene.image,),
            extra={"family": scene.family, "subset": scene.subset, "scene_seed": scene.scene_seed},
        )


# --- loading ----------------------------------------------------------------------------------


@dataclass
class _Source:
    spec: BenchmarkSpec
    path: str | Path | None
    split: str
    hub_id: str
    config: str | None
    cache_dir: str | Path | None

    @property
    def base_dir(self) -> Path | None:
        if self.path is None:
            return None
        path = Path(self.path)
        return path if path.is_dir() else path.parent

    def load(self, config: str | None) -> Any:
        try:
            import datasets
        except ImportError as error:
            raise ImportError(
                f"loading benchmark {self.spec.name!r} needs the `datasets` package: pip install 'tokenprune-vlm[eval]'"
            ) from error
        cache_dir = None if self.cache_dir is None else str(self.cache_dir)
        if self.path is None:
            return datasets.load_dataset(self.hub_id, config, split=self.split, cache_dir=cache_dir)
        builder, files = _local_files(Path(self.path), self.split, config if self.spec.name == "gqa" else None)
        empty = [str(f) for f in files if f.stat().st_size == 0]
        names = [str(f) for f in files]
        try:
            rows = datasets.load_dataset(builder, data_files=names, split="train", cache_dir=cache_dir)
        except (StopIteration, RuntimeError, ValueError) as error:  # an empty file: no first line, "no data"
            raise BenchmarkFormatError(
                f"benchmark {self.spec.name!r}: could not read {', '.join(names)} "
                f"({'empty: ' + ', '.join(empty) if empty else type(error).__name__ + ': ' + str(error)})"
            ) from error
        if len(rows) == 0:
            raise BenchmarkFormatError(f"benchmark {self.spec.name!r}: {', '.join(names)} holds no rows")
        return rows


def _local_files(path: Path, split: str, subdir: str | None) -> tuple[str, list[Path]]:
    """The builder (``parquet``/``json``) and the files of ``split`` under a local copy."""
    if not path.exists():
        raise InputError(f"local benchmark path {str(path)!r} does not exist")
    if path.is_file():
        files = [path]
    else:
        root = path / subdir if subdir else path
        if not root.is_dir():
            raise InputError(f"expected a directory {str(root)!r} (the {subdir!r} config) under {str(path)!r}")
        pattern = re.compile(rf"{re.escape(split)}(?:[-_].*)?")
        files = sorted(
            f
            for f in root.rglob("*")
            if f.is_file() and f.suffix in _LOCAL_EXTENSIONS and pattern.fullmatch(f.name[: -len(f.suffix)])
        )
        if not files:
            raise InputError(
                f"no files for split {split!r} under {str(root)!r}: expected {split}.parquet, {split}-*.parquet "
                f"or the same with .jsonl/.json"
            )
    builders = {_LOCAL_EXTENSIONS.get(f.suffix) for f in files}
    if None in builders or len(builders) != 1:
        raise InputError(
            f"local benchmark files must all be .parquet or all .jsonl/.json; got {[f.name for f in files]}"
        )
    return builders.pop(), files


def _require_columns(benchmark: str, present: Sequence[str], required: Sequence[str]) -> None:
    missing = [c for c in required if c not in present]
    if missing:
        raise BenchmarkFormatError(
            f"benchmark {benchmark!r}: missing column(s) {', '.join(map(repr, missing))}; "
            f"expected {', '.join(required)}; the data has {', '.join(present) or 'no columns'}"
        )


class _Context:
    """What readers share: where relative image paths start, and GQA's image table (built on first use)."""

    def __init__(self, source: _Source) -> None:
        self.source = source
        self._gqa_images: dict[str, Any] | None = None

    def gqa_image(self, image_id: str, where: str) -> Any:
        if self._gqa_images is None:
            config = _GQA_IMAGES_CONFIG if self.source.path is not None else _images_config(self.source.config)
            table = self.source.load(config)
            _require_columns("gqa", table.column_names, ("id", "image"))
            self._gqa_images = {str(i): n for n, i in enumerate(table["id"])}
            self._gqa_table = table
        position = self._gqa_images.get(str(image_id))
        if position is None:
            raise BenchmarkFormatError(f"{where}: imageId {image_id!r} is not in the GQA images config")
        return self._gqa_table[position]["image"]


def _images_config(config: str | None) -> str:
    return config.replace("instructions", "images") if config else _GQA_IMAGES_CONFIG


# --- values -----------------------------------------------------------------------------------


def _str(row: Mapping[str, Any], column: str, where: str) -> str:
    value = row[column]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and column.lower().endswith("id"):
        return str(value)
    if not isinstance(value, str):
        raise BenchmarkFormatError(f"{where}: column {column!r} must be a string; got {type(value).__name__} {value!r}")
    return value


def _str_list(value: Any, what: str, where: str) -> list[str]:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as error:
            message = f"{where}: {what} must be a list of strings; got the string {value!r}"
            raise BenchmarkFormatError(message) from error
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise BenchmarkFormatError(f"{where}: {what} must be a list of strings; got {value!r}")
    return list(value)


def _image(value: Any, where: str, base_dir: Path | None) -> Any:
    """An RGB PIL image from a decoded image, ``{"bytes", "path"}``, raw bytes or a path."""
    from PIL import Image

    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict) and value.get("bytes"):
            image = Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, dict) and value.get("path"):
            image = Image.open(_resolve(value["path"], base_dir))
        elif isinstance(value, (bytes, bytearray)):
            image = Image.open(io.BytesIO(value))
        elif isinstance(value, str) and value:
            image = Image.open(_resolve(value, base_dir))
        else:
            raise BenchmarkFormatError(
                f"{where}: expected an image (PIL image, {{'bytes', 'path'}}, bytes or a file path); got {value!r:.80}"
            )
        return image.convert("RGB")
    except (OSError, Image.UnidentifiedImageError) as error:
        raise BenchmarkFormatError(f"{where}: cannot read the image: {error}") from error


def _resolve(path: str, base_dir: Path | None) -> Path:
    p = Path(path)
    return p if p.is_absolute() or base_dir is None else base_dir / p


# --- per-benchmark readers --------------------------------------------------------------------

_COLUMNS: dict[str, tuple[str, ...]] = {
    "pope": ("question_id", "question", "answer", "image", "category"),
    "gqa": ("id", "question", "answer", "imageId"),
    "textvqa": ("question_id", "question", "answers", "image"),
    "mmmu": ("id", "question", "options", "answer", "question_type"),
    "ai2d": ("question", "options", "answer", "image"),
    "chartqa": ("question", "answer", "image"),
}


def _where(context: _Context, index: int) -> str:
    source = context.source
    origin = str(source.path) if source.path is not None else source.hub_id
    return f"{source.spec.name} row {index} ({origin}, split {source.split!r})"


def _read_pope(row: Mapping[str, Any], index: int, context: _Context) -> Sample:
    where = _where(context, index)
    answer = _str(row, "answer", where).strip().lower()
    if answer not in ("yes", "no"):
        raise BenchmarkFormatError(f"{where}: POPE answer must be 'yes' or 'no'; got {row['answer']!r}")
    extra = {"category": row["category"]}
    if "image_source" in row:
        extra["image_source"] = row["image_source"]
    # the hub's `id` is unique; `question_id` restarts in each category in POPE's original files
    key = "id" if row.get("id") is not None else "question_id"
    return Sample(
        id=_str(row, key, where),
        benchmark="pope",
        question=_str(row, "question", where),
        prompt="",
        answers=(answer,),
        metric="pope_f1",
        images=(_image(row["image"], where, context.source.base_dir),),
        extra=extra,
    )


def _read_gqa(row: Mapping[str, Any], index: int, context: _Context) -> Sample:
    where = _where(context, index)
    image_id = _str(row, "imageId", where)
    image = row["image"] if row.get("image") is not None else context.gqa_image(image_id, where)
    return Sample(
        id=_str(row, "id", where),
        benchmark="gqa",
        question=_str(row, "question", where),
        prompt="",
        answers=(_str(row, "answer", where),),
        metric="exact_match",
        images=(_image(image, where, context.source.base_dir),),
        extra={"imageId": image_id, "fullAnswer": row.get("fullAnswer")},
    )


def _read_textvqa(row: Mapping[str, Any], index: int, context: _Context) -> Sample:
    where = _where(context, index)
    answers = _str_list(row["answers"], "'answers'", where)
    if not answers:
        raise BenchmarkFormatError(f"{where}: 'answers' is empty; TextVQA has 10 human answers per question")
    return Sample(
        id=_str(row, "question_id", where),
        benchmark="textvqa",
        question=_str(row, "question", where),
        prompt="",
        answers=tuple(answers),
        metric="vqa_accuracy",
        images=(_image(row["image"], where, context.source.base_dir),),
        extra={k: row[k] for k in ("image_id", "ocr_tokens") if k in row},
    )


def _read_mmmu(row: Mapping[str, Any], index: int, context: _Context) -> Sample:
    where = _where(context, index)
    question = _str(row, "question", where)
    question_type = _str(row, "question_type", where)
    if question_type not in ("multiple-choice", "open"):
        raise BenchmarkFormatError(f"{where}: question_type must be 'multiple-choice' or 'open'; got {question_type!r}")
    options = _str_list(row["options"], "'options'", where) if question_type == "multiple-choice" else []
    if question_type == "multiple-choice" and not 0 < len(options) <= 26:
        raise BenchmarkFormatError(f"{where}: a multiple-choice question needs 1 to 26 options; got {options!r}")
    answer = _str(row, "answer", where)
    if options and not re.fullmatch(f"[A-{chr(ord('A') + len(options) - 1)}]", answer):
        raise BenchmarkFormatError(
            f"{where}: answer must be a letter A-{chr(ord('A') + len(options) - 1)} for {len(options)} options; "
            f"got {answer!r}"
        )
    numbers = sorted({int(n) for n in _MMMU_IMAGE.findall(question + "\n" + "\n".join(options))})
    images = []
    for n in numbers:
        column = f"image_{n}"
        if row.get(column) is None:
            raise BenchmarkFormatError(f"{where}: the text names <image {n}> but column {column!r} is empty or missing")
        images.append(_image(row[column], f"{where}, {column}", context.source.base_dir))
    return Sample(
        id=_str(row, "id", where),
        benchmark="mmmu",
        question=question,
        prompt="",
        answers=(answer,),
        metric="multiple_choice" if options else "exact_match",
        choices=tuple(options),
        images=tuple(images),
        extra={"question_type": question_type, **{k: row[k] for k in ("subfield", "img_type") if k in row}},
    )


def _read_ai2d(row: Mapping[str, Any], index: int, context: _Context) -> Sample:
    where = _where(context, index)
    options = _str_list(row["options"], "'options'", where)
    if not 0 < len(options) <= 26:
        raise BenchmarkFormatError(f"{where}: AI2D needs 1 to 26 options; got {options!r}")
    raw = row["answer"]
    try:
        answer_index = int(raw)
    except (TypeError, ValueError):
        answer_index = -1
    if isinstance(raw, bool) or not 0 <= answer_index < len(options):
        raise BenchmarkFormatError(
            f"{where}: AI2D answer must be a 0-based option index in [0, {len(options) - 1}]; got {raw!r}"
        )
    return Sample(
        id=f"ai2d-{index}",
        benchmark="ai2d",
        question=_str(row, "question", where),
        prompt="",
        answers=(chr(ord("A") + answer_index),),
        metric="multiple_choice",
        choices=tuple(options),
        images=(_image(row["image"], where, context.source.base_dir),),
        extra={"answer_index": answer_index},
    )


def _read_chartqa(row: Mapping[str, Any], index: int, context: _Context) -> Sample:
    where = _where(context, index)
    return Sample(
        id=f"chartqa-{index}",
        benchmark="chartqa",
        question=_str(row, "question", where),
        prompt="",
        answers=(_str(row, "answer", where),),
        metric="relaxed_accuracy",
        images=(_image(row["image"], where, context.source.base_dir),),
        extra={"type": row.get("type")},
    )


_READERS: dict[str, Callable[[Mapping[str, Any], int, _Context], Sample]] = {
    "pope": _read_pope,
    "gqa": _read_gqa,
    "textvqa": _read_textvqa,
    "mmmu": _read_mmmu,
    "ai2d": _read_ai2d,
    "chartqa": _read_chartqa,
}

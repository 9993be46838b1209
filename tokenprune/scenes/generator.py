"""Seeded procedural scenes and question datasets.

:func:`generate_scene` draws one scene from a seed; :func:`make_dataset` draws ``n`` samples
(scene + one question) for a split.

How seeds and splits work
-------------------------
Sample ``i`` of ``make_dataset(n, seed, split)`` takes its scene seed from
``numpy.random.SeedSequence(seed, spawn_key=(SPLIT_TAGS[split], i, attempt))`` (64 bits), with the two
low bits then overwritten by the split's tag (train 0, val 1, test 2). So:

* the same ``(seed, split)`` always gives the same samples, pixel for pixel;
* a train scene seed can never equal a val or test scene seed, whatever the dataset seeds
  (the low bits differ), so the splits share no scene;
* a different ``seed`` draws an unrelated stream (SeedSequence hashes its entropy), i.e. a fresh test set.

``attempt`` is bumped (0, 1, ...) only when the drawn scene cannot host the sample's question family.

>>> from tokenprune.scenes import make_dataset
>>> train = make_dataset(4, seed=0, split="train")
>>> [s.family for s in train]
['existence', 'attribute', 'counting', 'spatial']
>>> {s.scene_seed % 4 for s in train}, {s.scene_seed % 4 for s in make_dataset(4, seed=0, split="test")}
({0}, {2})
>>> train[0].image.size
(336, 336)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from tokenprune.errors import InputError
from tokenprune.scenes.description import (
    BACKGROUND_KINDS,
    COLOUR_WEIGHTS,
    PANEL_COLOURS,
    SHAPE_WEIGHTS,
    SIZE_FRACTION,
    SIZES,
    Background,
    Scene,
    SceneObject,
    TextItem,
)
from tokenprune.scenes.questions import FAMILIES, Question, ask
from tokenprune.scenes.render import render_scene, text_panel_box

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["SPLIT_TAGS", "WORDS", "Sample", "generate_scene", "make_dataset", "scene_seed"]

SPLIT_TAGS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

#: Words printed on signs (no colour or shape names, so they cannot be mistaken for answers of other families).
WORDS: tuple[str, ...] = (
    "CAT", "DOG", "SUN", "STOP", "OPEN", "EXIT", "MILK", "TREE", "BOOK", "FISH", "CAKE", "BOAT",
    "LAMP", "DOOR", "KING", "MOON", "RAIN", "SALE", "WOLF", "ZOO", "HOME", "PARK", "BUS", "TAXI",
)  # fmt: skip
_LABELS = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
_MAX_ATTEMPTS = 64
_LABELLED_SHAPES = ("circle", "square", "hexagon")  # roomy enough for a legible letter


def _check_split(split: str) -> int:
    if split not in SPLIT_TAGS:
        raise InputError(f"split: expected one of {', '.join(map(repr, SPLIT_TAGS))}; received {split!r}.")
    return SPLIT_TAGS[split]


def scene_seed(seed: int, split: str, index: int, attempt: int = 0) -> int:
    """The scene seed of sample ``index`` of a dataset (see the module docstring); ``% 4`` is the split tag.

    >>> scene_seed(0, "test", 5) % 4
    2
    >>> scene_seed(0, "train", 5) == scene_seed(0, "train", 5) != scene_seed(1, "train", 5)
    True
    """
    tag = _check_split(split)
    if not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed: expected a non-negative int; received {seed!r}.")
    state = np.random.SeedSequence(seed, spawn_key=(tag, index, attempt)).generate_state(2, np.uint32)
    value = (int(state[0]) << 32 | int(state[1])) >> 1  # 63 bits
    return (value & ~0b11) | tag


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    keys = list(weights)
    p = np.array([weights[k] for k in keys])
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], pad: int) -> bool:
    return not (a[2] + pad < b[0] or b[2] + pad < a[0] or a[3] + pad < b[1] or b[3] + pad < a[1])


def _background(rng: np.random.Generator, image_size: int) -> Background:
    kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    base = rng.integers(190, 226)
    tint = rng.integers(-10, 11, size=3)
    c0 = tuple(int(v) for v in np.clip(base + tint, 0, 255))
    delta = int(rng.integers(14, 30))
    c1 = tuple(int(v) for v in np.clip(np.array(c0) + delta, 0, 255))
    period = int(rng.integers(max(4, image_size // 28), max(6, image_size // 8)))
    angle = int(rng.choice([0, 45, 90, 135]))
    return Background(kind, (c0, c1), period=period, angle=angle, seed=int(rng.integers(2**31)))


def generate_scene(
    seed: int,
    *,
    image_size: int = 336,
    n_objects: int | tuple[int, int] = (2, 6),
    text: bool | None = None,
) -> Scene:
    """Draw a scene from ``seed``: a textured background, non-overlapping objects, maybe text.

    ``n_objects`` is a count or an inclusive ``(low, high)`` range (objects that do not fit are dropped,
    at least one is always placed). ``text=None`` adds signs/labels with probability 1/2, ``True`` always,
    ``False`` never.

    >>> scene = generate_scene(7)
    >>> scene == generate_scene(7), scene == generate_scene(8)
    (True, False)
    >>> generate_scene(7, image_size=224).image_size
    224
    >>> len(generate_scene(3, text=True).texts + tuple(o for o in generate_scene(3, text=True).objects if o.label)) > 0
    True
    """
    if not isinstance(image_size, int) or image_size < 64:
        raise InputError(f"image_size: expected an int >= 64 pixels; received {image_size!r}.")
    low, high = (n_objects, n_objects) if isinstance(n_objects, int) else n_objects
    if not 1 <= low <= high:
        raise InputError(
            f"n_objects: expected an int >= 1 or a range (low, high) with 1 <= low <= high; received {n_objects!r}."
        )
    rng = np.random.default_rng(seed)
    background = _background(rng, image_size)
    with_text = bool(rng.random() < 0.5) if text is None else text
    margin, pad = max(2, image_size // 60), max(3, image_size // 48)
    boxes: list[tuple[int, int, int, int]] = []

    texts: list[TextItem] = []
    if with_text:
        font_size = max(10, round(image_size / 12))
        panels = [str(p) for p in rng.permutation(list(PANEL_COLOURS))]  # distinct: "the <panel> sign" is unique
        for k in range(int(rng.integers(1, 3))):
            word = WORDS[int(rng.integers(len(WORDS)))] if rng.random() < 0.75 else str(int(rng.integers(10, 100)))
            if any(t.text == word for t in texts):
                continue
            x0, y0, x1, y1 = text_panel_box(word, (0, 0), font_size)
            for _ in range(100):
                cx = int(rng.integers(margin - x0, image_size - margin - x1))
                cy = int(rng.integers(margin - y0, image_size - margin - y1))
                box = (cx + x0, cy + y0, cx + x1, cy + y1)
                if not any(_overlaps(box, b, pad) for b in boxes):
                    texts.append(TextItem(word, (cx, cy), font_size=font_size, panel=panels[k]))
                    boxes.append(box)
                    break

    objects: list[SceneObject] = []
    for _ in range(int(rng.integers(low, high + 1))):
        shape, colour = _pick(rng, SHAPE_WEIGHTS), _pick(rng, COLOUR_WEIGHTS)
        size = SIZES[int(rng.integers(len(SIZES)))]
        r = round(SIZE_FRACTION[size] * image_size)
        for _ in range(100):
            centre = (
                int(rng.integers(r + margin, image_size - r - margin)),
                int(rng.integers(r + margin, image_size - r - margin)),
            )
            box = (centre[0] - r, centre[1] - r, centre[0] + r, centre[1] + r)
            if not any(_overlaps(box, b, pad) for b in boxes):
                label = None
                if with_text and size != "small" and shape in _LABELLED_SHAPES and rng.random() < 0.6:
                    label = _LABELS[int(rng.integers(len(_LABELS)))]
                objects.append(SceneObject(shape, colour, size, centre, r, label))
                boxes.append(box)
                break
    if not objects:  # nothing fitted (tiny image, crowded signs): place one small object at a corner
        r = round(SIZE_FRACTION["small"] * image_size)
        objects.append(SceneObject("circle", "red", "small", (r + margin, image_size - r - margin), r))
    return Scene(tuple(objects), tuple(texts), background, image_size, seed)


@dataclass(frozen=True)
class Sample:
    """One dataset record: a scene, one question about it, and where it came from.

    ``image`` is rendered on first access (and cached); ``answer``/``answers``/``family``/``choices``/``subset``
    are shortcuts to ``question``.
    """

    scene: Scene
    question: Question
    split: str
    index: int
    scene_seed: int

    @cached_property
    def image(self) -> Image.Image:
        """The rendered scene (PIL RGB image)."""
        return render_scene(self.scene)

    @property
    def text(self) -> str:
        return self.question.text

    @property
    def answer(self) -> str:
        return self.question.answer

    @property
    def answers(self) -> tuple[str, ...]:
        return self.question.answers

    @property
    def family(self) -> str:
        return self.question.family

    @property
    def choices(self) -> tuple[str, ...]:
        return self.question.choices

    @property
    def subset(self) -> str | None:
        return self.question.subset


def make_dataset(
    n: int,
    seed: int = 0,
    *,
    split: str = "train",
    image_size: int = 336,
    families: tuple[str, ...] | None = None,
) -> list[Sample]:
    """``n`` samples for ``split``, families cycled in order (``families[i % len(families)]``).

    Existence questions cycle through the POPE subsets (random, popular, adversarial), then alternate a
    "yes" and a "no" round, so each subset is balanced. Images are
    rendered lazily (``sample.image``), so building a dataset is cheap.

    >>> [s.question.subset for s in make_dataset(12, 1, families=("existence",))][:3]
    ['random', 'popular', 'adversarial']
    """
    _check_split(split)
    if not isinstance(n, int) or n < 0:
        raise InputError(f"n: expected a non-negative int; received {n!r}.")
    families = FAMILIES if families is None else tuple(families)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise InputError(f"families: expected a non-empty subset of {FAMILIES}; received {families!r}.")
    subsets = ("random", "popular", "adversarial")
    samples = []
    for i in range(n):
        family = families[i % len(families)]
        turn = i // len(families)  # how many times this family came round before
        subset = subsets[turn % 3] if family == "existence" else None
        positive = (turn // 3) % 2 == 0 if family == "existence" else None  # POPE: balanced yes/no per subset
        for attempt in range(_MAX_ATTEMPTS):
            s_seed = scene_seed(seed, split, i, attempt)
            scene = generate_scene(s_seed, image_size=image_size, text=True if family == "text" else None)
            question = ask(scene, family, np.random.default_rng([s_seed, 1]), subset=subset, positive=positive)
            if question is not None:
                samples.append(Sample(scene, question, split, i, s_seed))
                break
        else:  # pragma: no cover - every family is feasible on a large share of scenes
            raise RuntimeError(f"no scene could host a {family!r} question in {_MAX_ATTEMPTS} attempts (sample {i}).")
    return samples

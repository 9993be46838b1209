"""Question families asked about a :class:`~tokenprune.scenes.Scene`, mirroring the paper's benchmarks.

============== ================================================ =====================
family         example                                          mirrors
============== ================================================ =====================
existence      "Is there a red circle in the image?" (yes/no)   POPE (``subset``)
attribute      "What colour is the square?"                     GQA
counting       "How many circles are there?"                    GQA / counting
spatial        "Is the red circle to the left of the blue star?" GQA relations
text           "What is written on the sign?"                   TextVQA
multiple_choice 4 options A-D, answer is a letter                MMMU / AI2D
============== ================================================ =====================

Every question is answerable from the description alone and unambiguously: an object is only named
when the name picks out exactly one object, spatial relations are only asked when the boxes are clearly
separated, and multiple-choice options contain exactly one correct answer.

POPE subsets (``subset=`` of existence questions): a yes/no coin is tossed; a "no" question names an
absent ``colour shape`` pair drawn uniformly (``random``), among the three most frequent absent pairs under
the generator's prior (``popular``), or among absent pairs sharing the colour or the shape of a present
object (``adversarial``).

>>> import numpy as np
>>> from tokenprune.scenes import Scene, SceneObject, ask
>>> scene = Scene(objects=(SceneObject.of("circle", "red", "medium", (60, 60)),
...                        SceneObject.of("square", "blue", "medium", (250, 60))))
>>> q = ask(scene, "counting", np.random.default_rng(0))
>>> q.family, q.answer in {"0", "1", "2"}
('counting', True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokenprune.errors import InputError
from tokenprune.scenes.description import COLOUR_WEIGHTS, PALETTE, SHAPE_WEIGHTS, SHAPES, Scene, SceneObject

__all__ = ["FAMILIES", "MC_INSTRUCTION", "NUMBER_WORDS", "POPE_SUBSETS", "Question", "ask", "plural"]

FAMILIES: tuple[str, ...] = ("existence", "attribute", "counting", "spatial", "text", "multiple_choice")
POPE_SUBSETS: tuple[str, ...] = ("random", "popular", "adversarial")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
_LETTERS = "ABCD"


@dataclass(frozen=True)
class Question:
    """A question, its canonical ``answer`` and every acceptable answer (``answers``, lower-case variants incl.).

    ``choices`` holds the four options of a multiple-choice question (``answer`` is then a letter A-D);
    ``subset`` is the POPE subset of an existence question; ``target`` names what the question is about
    (e.g. ``"red circle"``), for analysis.

    >>> Question("Is there a star?", "no", "existence", ("no",)).answers
    ('no',)
    """

    text: str
    answer: str
    family: str
    answers: tuple[str, ...]
    choices: tuple[str, ...] = ()
    subset: str | None = None
    target: str | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise InputError(f"Question.family: expected one of {FAMILIES}; received {self.family!r}.")
        if self.answer not in self.answers:
            raise InputError(
                f"Question.answers: expected to contain the answer {self.answer!r}; received {self.answers!r}."
            )


def plural(shape: str) -> str:
    """``"crosses"``, ``"circles"``.

    >>> plural("cross"), plural("star")
    ('crosses', 'stars')
    """
    return shape + ("es" if shape.endswith(("s", "x", "sh", "ch")) else "s")


def _number(n: int) -> tuple[str, ...]:
    return (str(n), NUMBER_WORDS[n]) if n < len(NUMBER_WORDS) else (str(n),)


def _choice(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))]


def _unique_pairs(scene: Scene) -> list[SceneObject]:
    """Objects whose ``colour shape`` name picks out exactly one object."""
    return [o for o in scene.objects if scene.count(o.shape, o.colour) == 1]


def _existence(scene: Scene, rng: np.random.Generator, subset: str | None, positive: bool | None) -> Question | None:
    subset = _choice(rng, list(POPE_SUBSETS)) if subset is None else subset
    if subset not in POPE_SUBSETS:
        raise InputError(f"subset: expected one of {POPE_SUBSETS} or None; received {subset!r}.")
    present = {(o.colour, o.shape) for o in scene.objects}
    absent = [(c, s) for s in SHAPES for c in PALETTE if (c, s) not in present]
    if subset == "popular":
        absent.sort(key=lambda p: -COLOUR_WEIGHTS[p[0]] * SHAPE_WEIGHTS[p[1]])
        negatives = absent[:3]
    elif subset == "adversarial":
        colours, shapes = {c for c, _ in present}, {s for _, s in present}
        negatives = [(c, s) for c, s in absent if c in colours or s in shapes]
    else:
        negatives = absent
    if positive is None:
        positive = bool(rng.random() < 0.5)
    if positive or not negatives:
        (colour, shape), answer = _choice(rng, sorted(present)), "yes"
    else:
        (colour, shape), answer = _choice(rng, negatives), "no"
    return Question(
        f"Is there a {colour} {shape} in the image?", answer, "existence", (answer,), (), subset, f"{colour} {shape}"
    )


def _attribute(scene: Scene, rng: np.random.Generator) -> Question | None:
    candidates = []
    for o in scene.objects:
        if scene.count(shape=o.shape) == 1:
            candidates.append(
                Question(f"What colour is the {o.shape}?", o.colour, "attribute", (o.colour,), target=o.name)
            )
        if scene.count(colour=o.colour) == 1:
            candidates.append(
                Question(f"What shape is the {o.colour} object?", o.shape, "attribute", (o.shape,), target=o.name)
            )
    return _choice(rng, candidates) if candidates else None


def _counting(scene: Scene, rng: np.random.Generator) -> Question | None:
    shapes = sorted({o.shape for o in scene.objects})
    absent = [s for s in SHAPES if s not in shapes]
    kind = _choice(rng, ["shape", "shape", "colour", "all"])
    if kind == "shape":
        shape = _choice(rng, absent) if absent and rng.random() < 0.15 else _choice(rng, shapes)
        n, text, target = scene.count(shape=shape), f"How many {plural(shape)} are there in the image?", shape
    elif kind == "colour":
        colour = _choice(rng, sorted({o.colour for o in scene.objects}))
        n, text, target = scene.count(colour=colour), f"How many {colour} objects are there in the image?", colour
    else:
        n, text, target = len(scene.objects), "How many shapes are there in the image?", None
    answers = _number(n)
    return Question(text, answers[0], "counting", answers, target=target)


_RELATIONS = {  # relation -> (clearly true, clearly false) tests on the boxes of A and B
    "to the left of": (lambda a, b: a[2] < b[0], lambda a, b: a[0] > b[2]),
    "to the right of": (lambda a, b: a[0] > b[2], lambda a, b: a[2] < b[0]),
    "above": (lambda a, b: a[3] < b[1], lambda a, b: a[1] > b[3]),
    "below": (lambda a, b: a[1] > b[3], lambda a, b: a[3] < b[1]),
}


def _spatial(scene: Scene, rng: np.random.Generator) -> Question | None:
    named = _unique_pairs(scene)
    yes, no, what = [], [], []
    for b in named:
        for rel, (true, false) in _RELATIONS.items():
            for a in named:
                if a is b:
                    continue
                text = f"Is the {a.name} {rel} the {b.name}?"
                if true(a.bbox, b.bbox):
                    yes.append(Question(text, "yes", "spatial", ("yes",), target=f"{a.name}|{rel}|{b.name}"))
                elif false(a.bbox, b.bbox):
                    no.append(Question(text, "no", "spatial", ("no",), target=f"{a.name}|{rel}|{b.name}"))
            # "what" questions: exactly one object is clearly in that relation, and no other is even partly
            others = [o for o in scene.objects if o is not b]
            hits = [o for o in others if true(o.bbox, b.bbox)]
            if len(hits) == 1 and all(o is hits[0] or false(o.bbox, b.bbox) for o in others):
                x = hits[0]
                answers = (x.name, x.shape) if scene.count(shape=x.shape) == 1 else (x.name,)
                what.append(
                    Question(f"What is {rel} the {b.name}?", x.name, "spatial", answers, target=f"?|{rel}|{b.name}")
                )
    pools = [p for p in (yes, no, what) if p]
    return _choice(rng, _choice(rng, pools)) if pools else None


def _text(scene: Scene, rng: np.random.Generator) -> Question | None:
    candidates = []
    if len(scene.texts) == 1:
        t = scene.texts[0].text
        stem = _choice(
            rng, ["What is written in the image?", "What is written on the sign?", "What does the sign say?"]
        )
        candidates.append(Question(stem, t, "text", tuple(dict.fromkeys((t, t.lower()))), target=t))
    elif len(scene.texts) > 1 and len({t.panel for t in scene.texts}) == len(scene.texts):
        for item in scene.texts:
            t = item.text
            candidates.append(
                Question(
                    f"What is written on the {item.panel} sign?",
                    t,
                    "text",
                    tuple(dict.fromkeys((t, t.lower()))),
                    target=t,
                )
            )
    for o in _unique_pairs(scene):
        if o.label is not None:
            kind = "number" if o.label.isdigit() else "letter"
            answers = tuple(dict.fromkeys((o.label, o.label.lower())))
            candidates.append(Question(f"What {kind} is on the {o.name}?", o.label, "text", answers, target=o.name))
    return _choice(rng, candidates) if candidates else None


def _multiple_choice(scene: Scene, rng: np.random.Generator) -> Question | None:
    shapes = {o.shape for o in scene.objects}
    colours = {o.colour for o in scene.objects}
    options: list[tuple[str, str, list[str]]] = []  # (stem, correct, distractors)
    absent_shapes = [s for s in SHAPES if s not in shapes]
    if len(absent_shapes) >= 3:
        options.append(("Which of these shapes appears in the image?", _choice(rng, sorted(shapes)), absent_shapes))
    absent_colours = [c for c in PALETTE if c not in colours]
    if len(absent_colours) >= 3:
        options.append(("Which of these colours appears in the image?", _choice(rng, sorted(colours)), absent_colours))
    for o in scene.objects:
        if scene.count(shape=o.shape) == 1:
            options.append((f"What colour is the {o.shape}?", o.colour, [c for c in PALETTE if c != o.colour]))
    n = len(scene.objects)
    numbers = [str(k) for k in range(max(0, n - 3), n + 4) if k != n]
    options.append(("How many shapes are there in the image?", str(n), numbers))
    stem, correct, pool = _choice(rng, options)
    distractors = [pool[int(i)] for i in rng.choice(len(pool), size=3, replace=False)]
    choices = [correct, *distractors]
    choices = [choices[int(i)] for i in rng.permutation(4)]
    letter = _LETTERS[choices.index(correct)]
    body = "\n".join(f"{_LETTERS[k]}. {c}" for k, c in enumerate(choices))
    return Question(
        f"{stem}\n{body}\n{MC_INSTRUCTION}",
        letter,
        "multiple_choice",
        (letter, correct),
        tuple(choices),
        target=correct,
    )


def ask(
    scene: Scene,
    family: str,
    rng: np.random.Generator | int,
    *,
    subset: str | None = None,
    positive: bool | None = None,
) -> Question | None:
    """One question of ``family`` about ``scene``, or ``None`` when the scene cannot host one unambiguously.

    ``rng`` is a numpy ``Generator`` (or an int seed); ``subset`` picks the POPE subset of an existence
    question (drawn at random when ``None``), ``positive`` whether its answer is "yes" (a fair coin when
    ``None``); both are ignored by the other families.

    >>> from tokenprune.scenes import Scene, SceneObject, TextItem
    >>> star = SceneObject.of("star", "green", "large", (100, 100))
    >>> scene = Scene(objects=(star,), texts=(TextItem("CAT", (250, 250)),))
    >>> ask(scene, "attribute", 0).answer in {"green", "star"}
    True
    >>> ask(scene, "text", 0).answer
    'CAT'
    >>> ask(scene, "spatial", 0) is None  # one object: no relation to ask about
    True
    """
    if family not in FAMILIES:
        raise InputError(f"family: expected one of {FAMILIES}; received {family!r}.")
    if not scene.objects:
        return None
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    if family == "existence":
        return _existence(scene, rng, subset, positive)
    return {
        "attribute": _attribute,
        "counting": _counting,
        "spatial": _spatial,
        "text": _text,
        "multiple_choice": _multiple_choice,
    }[family](scene, rng)

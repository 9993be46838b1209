"""Train scene-llava from scratch on generated scenes (CPU is enough), evaluate it, measure its alignment.

Run it from the repository root (seeded: the same command gives the same weights on the same machine)::

    python -m tokenprune.scenes.train --out tokenprune/assets/scene-llava

What it does, in LLaVA's terms: visual instruction tuning in which every parameter trains
(nothing is pretrained here), on images with several question/answer turns each (LLaVA's multi-turn
conversations; the loss is on the answers only), plus grounding losses that play the part of LLaVA's
caption pre-training of the projector:

* **patch alignment**: each projected visual token is pulled, by an InfoNCE loss over the scene
  :data:`~tokenprune.scenes.model.CONCEPTS`, towards the language model's input embedding of the words
  that name what the patch shows (``red`` and ``circle`` for a patch of the red circle; ``sign``,
  ``yellow`` and ``CAT`` for a patch of a yellow sign reading CAT; a label's letter only on the patches
  it is drawn on, :func:`label_patches`; ``background`` elsewhere). This is what
  makes prompt-aware pruning meaningful: the cosine between a question's words and the visual tokens of
  the object it names is what ZSPAPrune's relevance stage reads (:func:`alignment_report` measures it).
  A second term keeps every token *orthogonal* to the words that name nothing visual (``Is``, ``the``,
  ``?``, ...): without it, InfoNCE alone made object tokens anti-aligned with those words (cosine about
  -0.2 each), so a mean-pooled question pointed away from the very object it names.
* **object alignment**: the mean of an object's (or sign's) patch tokens is pulled the same way towards
  its words. Per patch, an interior patch of a square looks like one of a circle and must learn the shape
  from its neighbours, which a ViT trained from scratch does slowly; the mean over the object's patches
  includes the edge patches that see its outline (in a vision-only probe of 150 steps this doubled the
  share of objects whose mean token is nearest their own shape word, 0.15 to 0.28).
* **CLS grounding**: the projected CLS token predicts which concepts occur in the image (multi-label),
  so the CLS attention of the last vision layer, which FasterVLM and VisionZip read, attends to objects.
* **answer attention** (:func:`attention_targets`): at every position that predicts a word of an answer,
  one head of the language model is told where to look: layer 2 head 0 at what the question is about (the
  named object; the counted objects, one share each, plus one share on the first token, so that the
  count can be read from the first token's share; the sign to read; the patches of the label to read
  (not the whole object, where colour and shape drowned the letter: 15 % of 60 validation questions
  about labels were right, and wrong letters often followed the colour, ``Y`` for a yellow object);
  the option that is right; the first token alone when the object named by an existence question is
  absent), layer 1 head 0 at the reference
  object ``B`` of a spatial question, and layer 3 head 0 at the right option's word of a
  multiple-choice question; and layer 0 head 1, at each option's word, at that option's letter two tokens
  back (``B . circle``), so that the right word the option head finds carries the letter to answer (at
  step 2000 the option head put 0.82 of its attention on the right word, yet the model gave almost every
  question the same letter). The loss is a cross-entropy between that head's attention row (recomputed
  from the layer's input by :func:`attention_rows`, so no attention map is ever materialised) and the
  target.
  Without it the language model had not found, after 2000 steps, the circuit that matches a question's
  words against the objects it reads (every existence question got the same answer); with it, existence
  questions were 80 % right after 400 steps and 95 % after 600.
* **name and reference** (two more supervised heads, for spatial questions): at the last word of each
  object an existence or spatial question names (``circle`` of "the red circle"), layer 1 head 1 looks at
  that object (the ``name`` head; the first token when it is absent), and at a spatial answer layer 2
  head 1 looks at the reference object's name (the ``reference`` head), which by then has brought back
  where that object is. Before them the answer position had to tell the second-named object from the
  first by itself, and the head told to look at the reference object put only 0.36-0.40 of its attention
  there after 1600 steps.
* **reading** (:data:`GLYPHS`; ``read_weight``, off by default): the mean token of a sign, of a labelled
  object and of a label's own patches is pulled towards its word, number or letter by a softmax over the
  glyphs alone (in the softmax over every concept the colour and shape words, learned first, dominate).
  With ``vision_only`` it is
  the **reading stage**: the vision tower and projector train alone on this and the other grounding terms,
  with no language model forward (1 s a step on 2 threads instead of 2-4); :func:`reading_report`
  measures what it gives.
* **positions**: a linear probe (not shipped) reads each visual token's row and column back, and each
  object's mean token its centre, so the tokens keep where they are while the alignment terms pull them
  towards words (spatial questions compare the positions that the answer-attention heads bring back).
  Object and background patches weigh the same: before, the probe was right on the many background
  patches, and an object's mean token told its centre no better than a guess.
* **places**: another linear probe (not shipped) reads, from the output of decoder layer 2 at the positions
  that predict a spatial answer, the centres of the question's two objects, so that the positions the
  ``object`` and ``second`` heads bring back are there for the last layer to compare (at step 2000 the
  model answered "no" to most spatial questions); and a third (``name_place``), from the output of
  layer 1 at the last word of each object a question names, that object's centre, so that what the
  ``name`` head brings back says where the object is, for the ``reference`` head to fetch. A fourth
  (``relation``; ``relation_weight``, off by default, not in a shipped run; docs/scene-model.md) reads where ``place``
  does how far A is from B the way the relation points (> 0: it holds), so the last layer only reads a sign.
  A fifth (``relation_kind``; ``kind_weight``, off by default, 2 in the shipped runs) reads there which
  relation is asked: in the model shipped before, a linear probe read it from layer 0's output at the
  answer 92 % of the time, and from layer 2's, where the places arrive, 49 %, so the last layer had the
  places and not the relation.

Matrix products run in bfloat16 under ``torch.autocast`` (:attr:`TrainConfig.bf16`; the alignment
terms stay in float32): on a CPU with AMX tiles a step took 2 s instead of 5.

And a **curriculum** (:meth:`TrainConfig.stage`). Without it the language model did not learn to read
the image: after 1800 steps of the full task it still answered existence questions at chance, and even
fed perfect visual features (each patch's true concepts) a language model trained from scratch on the
full task matched, for the 450 steps we ran it, the loss of one shown no image at all (the text-only
answer prior). Our reading: the gradient that would teach a question to attend to its object is spread
over 576 mostly-background tokens and many question kinds; on one object with a caption to produce, the
same model learned to read its features in under 100 steps. So the first 200 steps show one object
per image with a caption turn every time and only the object's patches in the language model's input
(background patches dropped, the kept ones at their original positions); steps 200-600 show 1-3 objects;
the background patches come back linearly until step 1000, after which every batch is the full task
with all 576 tokens, as at inference. (Step counts, not fractions of ``--steps``, so that a run can be
extended with a larger ``--steps`` without going back to an earlier stage.)

The checkpoint directory is a ``save_pretrained`` directory (model + processor); training resumes from
``--out``/``train_state.pt`` when it exists.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from tokenprune.errors import InputError
from tokenprune.integrations.attention import query_attention
from tokenprune.scenes.description import SHAPES, Scene
from tokenprune.scenes.generator import _LABELS, WORDS, generate_scene, make_dataset, scene_seed
from tokenprune.scenes.model import CONCEPTS, GRID, PATCH_SIZE, build_model, build_processor
from tokenprune.scenes.questions import _RELATIONS, FAMILIES, Question, ask
from tokenprune.scenes.render import draw_shape, label_box, render_scene

__all__ = [
    "ATTENTION_SLOTS",
    "NAME_PLACE_LAYER",
    "PLACE_LAYER",
    "TrainConfig",
    "alignment_report",
    "attention_rows",
    "attention_targets",
    "concept_targets",
    "evaluate",
    "export",
    "label_patches",
    "main",
    "probes",
    "reading_report",
    "train",
]

#: How often each family is asked in training (the hard ones more often); evaluation is balanced.
FAMILY_WEIGHTS = {
    "existence": 1.0,
    "attribute": 1.0,
    "counting": 1.6,
    "spatial": 1.6,
    "text": 1.4,
    "multiple_choice": 1.0,
}


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters (the defaults are the recipe of the run in progress, see docs/scene-model.md)."""

    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    turns: tuple[int, int] = (3, 12)
    caption_probability: float = 0.5
    text_probability: float = 0.6
    align_weight: float = 0.5
    balance_patches: bool = True
    object_weight: float = 0.5
    orthogonal_weight: float = 10.0
    cls_weight: float = 0.2
    attention_weight: float = 0.5
    position_weight: float = 1.0
    place_weight: float = 1.0
    relation_weight: float = 0.0
    kind_weight: float = 0.0
    read_weight: float = 0.0
    vision_only: bool = False
    bf16: bool = True
    temperature: float = 0.07
    one_object_steps: int = 200
    few_objects_steps: int = 600
    background_steps: int = 1000
    seed: int = 0
    init: str | None = None  # a save_pretrained directory to start from (e.g. the shipped model)
    threads: int = 2

    def stage(self, step: int) -> dict[str, Any]:
        """The curriculum at ``step`` (module docstring): objects per image, sign probability, caption
        probability and the share of background patches the language model sees."""
        if self.init is not None:  # fine-tuning a trained model: the full task from the first step
            step = max(step, self.few_objects_steps, self.background_steps)
        if step < self.one_object_steps:
            objects, text, caption = 1, 0.0, 1.0
        elif step < self.few_objects_steps:
            objects, text, caption = (1, 3), self.text_probability, 1.0
        else:
            objects, text, caption = (2, 6), self.text_probability, self.caption_probability
        background = 1.0 if step >= self.background_steps else step / self.background_steps
        return {"objects": objects, "text": text, "caption": caption, "background": background}


def concept_targets(scene: Scene, concept_index: dict[str, int], *, items: bool = False) -> tuple[np.ndarray, ...]:
    """Per patch of the 24 x 24 grid, the concepts it shows; and the concepts present in the image.

    Returns ``(patch, present)``: ``patch`` is ``(576, C)`` bool (row-major patches), ``present`` ``(C,)``.
    A patch belongs to an object or sign when at least a quarter of its pixels do (to the last drawn
    when two overlap). With ``items=True`` also ``(owner, named)``: ``owner`` ``(576,)`` int, 0 for
    background and ``k`` for the k-th object (objects first, then signs), and ``named`` ``(K, C)`` bool,
    the concepts of item ``k`` in row ``k - 1``.
    """
    size = scene.image_size
    ids = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(ids)
    names: list[list[str]] = []
    for obj in scene.objects:
        names.append([obj.colour, obj.shape] + ([obj.label] if obj.label else []))
        draw_shape(draw, obj, len(names))
    for item in scene.texts:
        names.append([item.panel, "sign", item.text])
        draw.rectangle(item.bbox, fill=len(names))
    grid = size // PATCH_SIZE
    pixels = np.asarray(ids)[: grid * PATCH_SIZE, : grid * PATCH_SIZE]
    blocks = pixels.reshape(grid, PATCH_SIZE, grid, PATCH_SIZE).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    patch = np.zeros((grid * grid, len(concept_index)), dtype=bool)
    present = np.zeros(len(concept_index), dtype=bool)
    owner = np.zeros(grid * grid, dtype=np.int64)
    for k, words in enumerate(names, start=1):
        share = (blocks == k).mean(axis=1)
        hit = share >= 0.25
        owner[hit] = k
        for word in words:
            patch[hit, concept_index[word]] = True
            present[concept_index[word]] = True
    patch[owner == 0, concept_index["background"]] = True
    labels = label_patches(scene, owner)
    for k, obj in enumerate(scene.objects, start=1):  # a label's glyph only where it is drawn
        if obj.label is not None:
            patch[(owner == k) & (labels != k), concept_index[obj.label]] = False
    if not items:
        return patch, present
    named = np.zeros((len(names), len(concept_index)), dtype=bool)
    for k, words in enumerate(names):
        named[k, [concept_index[w] for w in words]] = True
    return patch, present, owner, named


def label_patches(scene: Scene, owner: np.ndarray) -> np.ndarray:
    """Per patch of the 24 x 24 grid, ``k`` when it shows the label of the k-th object, else 0: the patches of
    that object (``owner``, :func:`concept_targets`'s map) that :func:`~tokenprune.scenes.render.label_box`
    covers by at least a quarter, or the one it covers most when none does. An object's edge patches do not
    see its letter; a question that reads it looks here (:func:`attention_targets`).

    >>> from tokenprune.scenes import Scene, SceneObject
    >>> scene = Scene(objects=(SceneObject.of("square", "red", "large", (168, 168), label="A"),))
    >>> owner = concept_targets(scene, {c: i for i, c in enumerate(CONCEPTS)}, items=True)[2]
    >>> int((owner == 1).sum()), int((label_patches(scene, owner) == 1).sum())
    (36, 12)
    """
    out = np.zeros(GRID * GRID, dtype=np.int64)
    edges = np.arange(GRID + 1) * PATCH_SIZE
    for k, obj in enumerate(scene.objects, start=1):
        box = label_box(obj)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        across = np.clip(np.minimum(edges[1:], x1) - np.maximum(edges[:-1], x0), 0, None)  # per column
        down = np.clip(np.minimum(edges[1:], y1) - np.maximum(edges[:-1], y0), 0, None)  # per row
        cover = (down[:, None] * across[None, :]).reshape(-1) / PATCH_SIZE**2 * (owner == k)
        if cover.max() > 0:
            out[(cover >= 0.25) | (cover == cover.max())] = k
    return out


CAPTION_QUESTION = "Describe the image , listing each object ."


def caption(scene: Scene) -> str:
    """What the caption turn answers: every object and sign, in the order their first patch comes in the
    visual token sequence (row-major), e.g. ``"red circle , yellow sign CAT , orange hexagon L"``.

    >>> from tokenprune.scenes import Scene, SceneObject
    >>> caption(Scene(objects=(SceneObject.of("star", "red", "small", (200, 40)),
    ...                        SceneObject.of("circle", "blue", "small", (40, 200)))))
    'red star , blue circle'
    """
    items = [(o.bbox, " ".join([o.colour, o.shape] + ([o.label] if o.label else []))) for o in scene.objects]
    items += [(t.bbox, f"{t.panel} sign {t.text}") for t in scene.texts]
    items.sort(key=lambda item: (item[0][1] // PATCH_SIZE, item[0][0] // PATCH_SIZE))
    return " , ".join(name for _, name in items)


#: The attention heads whose attention is supervised (:func:`attention_targets`, :class:`Batches`):
#: ``slot -> (decoder layer, head)``.
ATTENTION_SLOTS: dict[str, tuple[int, int]] = {
    "object": (2, 0),
    "second": (1, 0),
    "option": (3, 0),
    "letter": (0, 1),
    "name": (1, 1),
    "reference": (2, 1),
}
_FIRST_SLOTS = {"object": (2, 0), "second": (1, 0), "option": (3, 0)}  # the slots before "letter" was added
#: The decoder layer whose output, at a spatial answer, must say where the question's two objects are.
PLACE_LAYER = 2
#: Which coordinate of the centres (x: 0, y: 1) each relation compares, and the sign of A - B when it holds.
_AXES = {"to the left of": (0, -1), "to the right of": (0, 1), "above": (1, -1), "below": (1, 1)}
#: The decoder layer whose output, at the last word of an object a question names, must say where that
#: object is (what the ``name`` head, in this layer, brought back from it).
NAME_PLACE_LAYER = ATTENTION_SLOTS["name"][0]
SLOT_INDEX = {slot: i for i, slot in enumerate(ATTENTION_SLOTS)}
#: The concepts that are read, not seen (:data:`CONCEPTS` indices): sign words, two-digit sign numbers and
#: the letters and digits of labels; the reading term is a softmax over these alone.
GLYPHS: tuple[int, ...] = tuple(
    i for i, c in enumerate(CONCEPTS) if c in WORDS or (c.isdigit() and len(c) == 2) or (len(c) == 1 and c in _LABELS)
)


#: An item an attention target points at: ``k`` (the k-th object or sign) or ``("label", k)``.
Item = int | tuple[str, int]


def attention_targets(scene: Scene, question: Question) -> dict[str, tuple[dict[Item, float], float]]:
    """Where the answer's attention should go, per supervised head (:data:`ATTENTION_SLOTS`).

    Returns ``{slot: (items, sink)}``: ``items`` maps an item of :func:`concept_targets`'s owner map
    (``k`` = the k-th object, objects first, then signs; ``("label", k)`` the patches of the k-th object's
    label, :func:`label_patches`) to the share of attention its patches should get
    together, and ``sink`` the share of the first token (the "nothing here" place): all of it when an
    existence question names an absent object; one share beside one per counted object, so that the
    sink's share, ``1 / (n + 1)``, tells the count. ``"object"`` is what the question asks about (the
    named object, the counted ones, the sign to read, the option that is right; ``X`` of "What is left of
    B?"; the label of "What letter is on the red circle?"), ``"second"`` the reference object ``B`` of a
    spatial question. (The ``"option"`` slot of a multiple-choice question points at a text token;
    :class:`Batches` places it.)

    >>> from tokenprune.scenes import Scene, SceneObject
    >>> scene = Scene(objects=(SceneObject.of("circle", "red", "small", (60, 60)),
    ...                        SceneObject.of("circle", "blue", "small", (250, 60))))
    >>> items, sink = attention_targets(scene, Question("How many circles are there in the image?", "2",
    ...                                                 "counting", ("2",), target="circle"))["object"]
    >>> {k: round(v, 3) for k, v in items.items()}, round(sink, 3)
    ({1: 0.333, 2: 0.333}, 0.333)
    """
    objects = scene.objects

    def match(colour: str | None = None, shape: str | None = None) -> list[int]:
        return [
            k
            for k, o in enumerate(objects, start=1)
            if (colour is None or o.colour == colour) and (shape is None or o.shape == shape)
        ]

    def named(name: str) -> list[int]:
        colour, shape = name.split(" ", 1)
        return match(colour, shape)

    def spread(items: list[int], count: bool = False) -> tuple[dict[Item, float], float]:
        n = len(items) + int(count)
        return ({k: 1.0 / n for k in items}, 1.0 / n if count else 0.0) if n else ({}, 1.0)

    family, target = question.family, question.target
    if family == "existence" or family == "attribute":
        return {"object": spread(named(target))}
    if family == "counting":
        if target is None:
            return {"object": spread(match(), count=True)}
        return {"object": spread(match(shape=target) if target in SHAPES else match(colour=target), count=True)}
    if family == "spatial":
        a, relation, b = target.split("|")
        second = named(b)
        if a != "?":
            return {"object": spread(named(a)), "second": spread(second)}
        true = _RELATIONS[relation][0]
        box = objects[second[0] - 1].bbox
        hits = [k for k in named(question.answer) if true(objects[k - 1].bbox, box)]
        return {"object": spread(hits), "second": spread(second)}
    if family == "text":  # a sign, or the label of an object (its label's patches: label_patches)
        signs = [len(objects) + k for k, t in enumerate(scene.texts, start=1) if t.text == target]
        return {"object": spread(signs) if signs else ({("label", k): 1.0 for k in named(target)}, 0.0)}
    stem, correct = question.text.split("\n", 1)[0], question.target  # multiple choice
    if stem.startswith("Which of these shapes"):
        return {"object": spread(match(shape=correct))}
    if stem.startswith("Which of these colours"):
        return {"object": spread(match(colour=correct))}
    if stem.startswith("What colour is the "):
        return {"object": spread(match(shape=stem[len("What colour is the ") : -1]))}
    return {"object": spread(match(), count=True)}  # "How many shapes are there in the image?"


def _centre(scene: Scene, items: dict[int, float]) -> tuple[float, float]:
    """The mean centre (x, y), as fractions of the image, of the items of :func:`attention_targets`."""
    boxes = [scene.objects[k - 1].bbox for k in items]
    x = sum(b[0] + b[2] for b in boxes) / (2 * len(boxes))
    y = sum(b[1] + b[3] for b in boxes) / (2 * len(boxes))
    return x / scene.image_size, y / scene.image_size


def _turns(scene: Scene, rng: np.random.Generator, count: int) -> list[Question]:
    families = list(FAMILY_WEIGHTS)
    p = np.array([FAMILY_WEIGHTS[f] for f in families])
    seen, out = set(), []
    for _ in range(count * 3):
        family = families[int(rng.choice(len(families), p=p / p.sum()))]
        question = ask(scene, family, rng)
        if question is None or question.text in seen:
            continue
        seen.add(question.text)
        out.append(question)
        if len(out) == count:
            break
    return out


def _end_of(ids: list[int], want: list[int]) -> int:
    """The index just after the first occurrence of ``want`` in ``ids``; -1 when it does not occur."""
    return next((i + len(want) for i in range(len(ids) - len(want) + 1) if ids[i : i + len(want)] == want), -1)


class Batches:
    """The deterministic training stream: batch ``step`` holds images ``step * B ... step * B + B - 1``."""

    def __init__(self, config: TrainConfig, processor: Any) -> None:
        self.config = config
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.concept_index = {c: i for i, c in enumerate(CONCEPTS)}
        self.concept_ids = torch.tensor(self.tokenizer.convert_tokens_to_ids(list(CONCEPTS)))
        self.image_id = self.tokenizer.convert_tokens_to_ids("<image>")
        self.eos = self.tokenizer.eos_token_id
        self._cache: dict[str, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._cache[text]

    def example(self, index: int) -> dict[str, Any]:
        cfg = self.config
        stage = cfg.stage(index // cfg.batch_size)
        s_seed = scene_seed(cfg.seed, "train", index)
        rng = np.random.default_rng([s_seed, 7])
        with_text = bool(rng.random() < stage["text"])
        scene = generate_scene(s_seed, text=with_text, n_objects=stage["objects"])
        questions = _turns(scene, rng, int(rng.integers(cfg.turns[0], cfg.turns[1] + 1)))
        turns = [(q.text, q.answer) for q in questions]
        if rng.random() < stage["caption"]:  # last, so no question can be answered from its text
            turns.append((CAPTION_QUESTION, caption(scene)))
        patch, present, owner, named = concept_targets(scene, self.concept_index, items=True)
        label_owner = label_patches(scene, owner)
        background = patch[:, self.concept_index["background"]]
        keep = ~background | (rng.random(GRID * GRID) < stage["background"])
        head = self._ids("USER:")
        ids = head + [self.image_id] * int(keep.sum())
        positions = list(range(len(head))) + [len(head) + int(i) for i in np.flatnonzero(keep)]
        labels = [-100] * len(ids)
        kept_owner, kept_labels = owner[keep], label_owner[keep]  # of each visual token the language model sees
        rows: list[tuple[int, int, dict[Item, float], float]] = []  # (query position, slot, items, sink)
        # (query position, centres of A and B, how far A is from B the way the relation points, which relation)
        # of spatial answers
        places: list[tuple[int, list[float], list[float], list[float]]] = []
        name_places: list[tuple[int, list[float]]] = []  # (name position, centre of the object it names)
        for k, (question, answer) in enumerate(turns):
            prompt = self._ids(("\n" if k == 0 else "USER: ") + question + " ASSISTANT:")
            reply = [*self._ids(answer), self.eos]
            if k < len(questions):  # the positions that predict the answer's words (not its </s>)
                queries = range(len(ids) + len(prompt) - 1, len(ids) + len(prompt) + len(reply) - 2)
                targets = attention_targets(scene, questions[k])
                for slot, (items, sink) in targets.items():
                    rows += [(q, SLOT_INDEX[slot], items, sink) for q in queries]
                if questions[k].family == "spatial":
                    (xa, ya), (xb, yb) = [_centre(scene, targets[slot][0]) for slot in ("object", "second")]
                    relation = questions[k].target.split("|")[1]
                    axis, sign = _AXES[relation]
                    towards = sign * ((xa - xb) if axis == 0 else (ya - yb))  # > 0: A is where the relation says
                    kind = [float(list(_AXES).index(relation))]
                    places += [(q, [xa, ya, xb, yb], [towards], kind) for q in queries]
                # the last word of each object the question names looks at that object (the "name" head,
                # layer 1), and a spatial answer looks at the reference object's name (the "reference" head,
                # layer 2), which by then has brought back where that object is
                for _name, slot, at in self._named_positions(questions[k], prompt):
                    rows.append((len(ids) + at, SLOT_INDEX["name"], *targets[slot]))
                    if targets[slot][0]:  # a present object: its name says where it is
                        name_places.append((len(ids) + at, [*_centre(scene, targets[slot][0])]))
                    if slot == "second":
                        rows += [(q, SLOT_INDEX["reference"], {-1 - (len(ids) + at): 1.0}, 0.0) for q in queries]
                if questions[k].family == "multiple_choice":
                    options = self._option_positions(prompt)
                    right = options["ABCD"[questions[k].choices.index(questions[k].target)]]
                    rows += [(q, SLOT_INDEX["option"], {-1 - (len(ids) + right): 1.0}, 0.0) for q in queries]
                    # each option's word looks at its letter, two tokens back ("B . circle"), so that what
                    # the option head brings back from the right word says which letter to answer
                    rows += [
                        (len(ids) + at, SLOT_INDEX["letter"], {-1 - (len(ids) + at - 2): 1.0}, 0.0)
                        for at in options.values()
                    ]
            ids += prompt + reply
            labels += [-100] * len(prompt) + reply
        positions += range(len(head) + GRID * GRID, len(head) + GRID * GRID + len(ids) - len(positions))
        attention = np.zeros((len(rows), len(ids)), dtype=np.float32)
        slots = np.zeros(len(rows), dtype=np.int64)
        for r, (_, slot, items, sink) in enumerate(rows):
            slots[r] = slot
            attention[r, 0] = sink
            for item, share in items.items():
                if isinstance(item, tuple):  # ("label", k): the patches of the k-th object's label
                    where = np.flatnonzero(kept_labels == item[1])
                elif item < 0:  # a text position (the right option of a multiple-choice question)
                    attention[r, -1 - item] = share
                    continue
                else:
                    where = np.flatnonzero(kept_owner == item)
                if len(where):
                    attention[r, len(head) + where] = share / len(where)
            attention[r] /= max(attention[r].sum(), 1e-9)  # an item with no kept patch: the rest renormalised
        queries_at = np.array([r[0] for r in rows], dtype=np.int64)
        valid = attention.sum(1) > 0.5
        return {
            "image": render_scene(scene),
            "ids": ids,
            "labels": labels,
            "positions": positions,
            "keep": keep,
            "patch": patch,
            "present": present,
            "owner": owner,
            "label_owner": label_owner,
            "named": named,
            "queries": queries_at[valid],
            "slots": slots[valid],
            "attention": attention[valid],
            "place_queries": np.array([q for q, *_ in places], dtype=np.int64),
            "places": np.array([w for _, w, _, _ in places], dtype=np.float32).reshape(-1, 4),
            "relations": np.array([d for _, _, d, _ in places], dtype=np.float32).reshape(-1, 1),
            "kinds": np.array([c for *_, c in places], dtype=np.float32).reshape(-1, 1),
            "name_queries": np.array([q for q, _ in name_places], dtype=np.int64),
            "name_places": np.array([w for _, w in name_places], dtype=np.float32).reshape(-1, 2),
        }

    def _named_positions(self, question: Question, prompt: list[int]) -> list[tuple[str, str, int]]:
        """``(name, slot, index in prompt of the name's last word)`` for each object an existence or spatial
        question names (``slot``: which of :func:`attention_targets`'s slots points at that object)."""
        if question.family == "existence":
            named = [(question.target, "object")]
        elif question.family == "spatial":
            a, _, b = question.target.split("|")
            named = [(b, "second")] if a == "?" else [(a, "object"), (b, "second")]
        else:
            return []
        found = [(name, slot, _end_of(prompt, self._ids(" " + name)) - 1) for name, slot in named]
        if min(at for *_, at in found) < 0:  # pragma: no cover - these questions spell their objects' names
            raise AssertionError(f"{named} not all found in {self.tokenizer.decode(prompt)!r}")
        return found

    def _option_positions(self, prompt: list[int]) -> dict[str, int]:
        """Index in ``prompt`` of each option's word (``circle`` in ``B . circle``), by letter."""
        found = {}
        for letter in "ABCD":
            found[letter] = _end_of(prompt, self.tokenizer.convert_tokens_to_ids(["\n", letter, "."]))
        if min(found.values()) < 0:  # pragma: no cover - every multiple-choice question lists A-D
            raise AssertionError(f"options A-D not all found in {self.tokenizer.decode(prompt)!r}")
        return found

    def __call__(self, step: int) -> dict[str, torch.Tensor]:
        B = self.config.batch_size
        examples = [self.example(step * B + j) for j in range(B)]
        pixels = self.processor.image_processor([e["image"] for e in examples], return_tensors="pt")["pixel_values"]
        width = max(len(e["ids"]) for e in examples)
        ids = torch.zeros(B, width, dtype=torch.long)
        labels = torch.full((B, width), -100, dtype=torch.long)
        mask = torch.zeros(B, width, dtype=torch.long)
        positions = torch.zeros(B, width, dtype=torch.long)
        named = torch.zeros(B, max(len(e["named"]) for e in examples), len(self.concept_index), dtype=torch.bool)
        rows = max(len(e["queries"]) for e in examples)
        queries = torch.zeros(B, rows, dtype=torch.long)
        slots = torch.full((B, rows), -1, dtype=torch.long)  # -1: padding row
        attention = torch.zeros(B, rows, width)
        for j, e in enumerate(examples):
            r = len(e["queries"])
            queries[j, :r], slots[j, :r] = torch.from_numpy(e["queries"]), torch.from_numpy(e["slots"])
            attention[j, :r, : e["attention"].shape[1]] = torch.from_numpy(e["attention"])
            named[j, : len(e["named"])] = torch.from_numpy(e["named"])
            n = len(e["ids"])
            ids[j, :n], labels[j, :n], mask[j, :n] = torch.tensor(e["ids"]), torch.tensor(e["labels"]), 1
            positions[j, :n] = torch.tensor(e["positions"])
        return {
            "pixel_values": pixels,
            "input_ids": ids,
            "labels": labels,
            "attention_mask": mask,
            "position_ids": positions,
            "keep": torch.from_numpy(np.stack([e["keep"] for e in examples])),
            "patch_concepts": torch.from_numpy(np.stack([e["patch"] for e in examples])),
            "present": torch.from_numpy(np.stack([e["present"] for e in examples])).float(),
            "owner": torch.from_numpy(np.stack([e["owner"] for e in examples])),
            "label_owner": torch.from_numpy(np.stack([e["label_owner"] for e in examples])),
            "item_concepts": named,
            "queries": queries,
            "slots": slots,
            "attention": attention,
            **_spots(examples, "place_queries", "places", "relations", "kinds"),
            **_spots(examples, "name_queries", "name_places"),
        }


def _spots(examples: list[dict[str, Any]], queries: str, *targets: str) -> dict[str, torch.Tensor]:
    """The ``queries`` positions of each example padded with -1 to ``(B, n)`` and, for each of ``targets``,
    their rows (what a probe must read there) padded with zeros to ``(B, n, width)``."""
    n = max(1, max(len(e[queries]) for e in examples))
    at = torch.full((len(examples), n), -1, dtype=torch.long)  # -1: padding
    out = {queries: at}
    for key in targets:
        out[key] = torch.zeros(len(examples), n, examples[0][key].shape[1])
    for j, e in enumerate(examples):
        m = len(e[queries])
        at[j, :m] = torch.from_numpy(e[queries])
        for key in targets:
            out[key][j, :m] = torch.from_numpy(e[key])
    return out


def attention_rows(
    attn: torch.nn.Module,
    hidden: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    head: int,
    queries: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Log attention probabilities of one head of a Llama attention module at ``queries``: ``(B, R, S)``.

    ``hidden`` ``(B, S, H)`` is the module's input (after the layer norm), ``rope`` its ``(cos, sin)``,
    ``queries`` ``(B, R)`` positions, ``mask`` ``(B, S)`` the attention mask; computed as the module
    computes its attention by :func:`tokenprune.integrations.attention.query_attention` (FastV's scores
    come from the same function), so no attention map of the whole layer is ever built.
    """
    return query_attention(attn, hidden, rope, queries, mask.bool(), head=head)[:, 0]


def probes(hidden_size: int) -> torch.nn.ModuleDict:
    """The linear probes that are training aids, not shipped: ``position`` reads a visual token's (row,
    column) back; ``place`` reads, from the output of decoder layer :data:`PLACE_LAYER` at the positions
    that predict a spatial answer, the centres (x, y) of the question's two objects; ``name_place`` reads,
    from the output of decoder layer :data:`NAME_PLACE_LAYER` at the last word of each present object an
    existence or spatial question names, that object's centre; ``relation`` reads, where ``place`` does,
    how far object A is from B along the relation's axis, signed so that > 0 means the relation holds;
    ``relation_kind`` reads, there too, which relation the question asks (a class of :data:`_AXES`)."""
    return torch.nn.ModuleDict(
        {
            "position": torch.nn.Linear(hidden_size, 2),
            "place": torch.nn.Linear(hidden_size, 4),
            "name_place": torch.nn.Linear(hidden_size, 2),
            "relation": torch.nn.Linear(hidden_size, 1),
            "relation_kind": torch.nn.Linear(hidden_size, len(_AXES)),
        }
    )


def _probe_error(
    probe: torch.nn.Module, states: torch.Tensor, at: torch.Tensor, want: torch.Tensor, *, classes: bool = False
) -> torch.Tensor:
    """Mean squared error of ``probe`` reading ``want`` ``(B, n, k)`` from ``states`` ``(B, S, H)`` at the
    positions ``at`` ``(B, n)`` (-1: padding, left out); with ``classes``, its cross-entropy against the
    class in ``want[..., 0]``."""
    picked = states.gather(1, at.clamp(min=0)[..., None].expand(-1, -1, states.shape[-1]))
    real = (at >= 0).float()
    read = probe(picked.float())
    if classes:
        error = F.cross_entropy(read.transpose(1, 2), want[..., 0].long(), reduction="none")
    else:
        error = (read - want).pow(2).mean(-1)
    return (error * real).sum() / real.sum().clamp(min=1)


def _language_terms(
    model: Any, batch: dict[str, torch.Tensor], patches: torch.Tensor, probe: Any
) -> dict[str, torch.Tensor]:
    """The language model's terms of :func:`losses`: the answer loss, the answer attention, the places at
    the answers and at the names, the relation."""
    inner = model.model
    embed = inner.get_input_embeddings()
    ids = batch["input_ids"]
    image = ids == model.config.image_token_id
    inputs = embed(ids)
    kept = patches[batch["keep"]].to(inputs.dtype)
    embeds = inputs.masked_scatter(image.unsqueeze(-1), kept)  # kept patches, in order
    captured: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]] = {}
    layers = inner.language_model.layers
    hooks = [
        layers[i].self_attn.register_forward_pre_hook(
            lambda module, args, kwargs, i=i: captured.__setitem__(
                i, (kwargs["hidden_states"], kwargs["position_embeddings"])
            ),
            with_kwargs=True,
        )
        for i in sorted({layer for layer, _ in ATTENTION_SLOTS.values()})
    ]
    hooks += [
        layers[i].register_forward_hook(lambda module, args, out, i=i: captured.__setitem__(("out", i), out))
        for i in {PLACE_LAYER, NAME_PLACE_LAYER}
    ]
    try:
        out = model(
            inputs_embeds=embeds,
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],  # those of the full sequence: dropped patches leave gaps
            labels=batch["labels"],
        )
    finally:
        for hook in hooks:
            hook.remove()
    attention = torch.zeros((), device=ids.device)
    slots, queries, wanted = batch["slots"], batch["queries"], batch["attention"]
    for index, (layer, head) in enumerate(ATTENTION_SLOTS.values()):
        rows = slots == index  # no branch on it: no host sync per step on a GPU
        states, rope = captured[layer]
        logp = attention_rows(layers[layer].self_attn, states, rope, head, queries, batch["attention_mask"])
        nll = -(wanted * logp.clamp(min=-1e4)).sum(-1)  # (B, R); -inf where the target is 0 contributes 0
        attention = attention + (nll * rows).sum() / rows.sum().clamp(min=1)
    place = name_place = relation = kind = torch.zeros((), device=ids.device)
    if probe is not None:
        # a spatial answer has brought back where its two objects are before the last layer compares them
        place = _probe_error(probe["place"], captured["out", PLACE_LAYER], batch["place_queries"], batch["places"])
        # and an object's name, where the name head looked at it, says where it is (the reference head fetches it)
        name_place = _probe_error(
            probe["name_place"], captured["out", NAME_PLACE_LAYER], batch["name_queries"], batch["name_places"]
        )
        # and, so that the last layer only reads a sign: how far A is from B the way the relation points
        relation = _probe_error(
            probe["relation"], captured["out", PLACE_LAYER], batch["place_queries"], batch["relations"]
        )
        # which relation is asked, still there beside the places (layer 0 fetches it; it was lost by layer 2)
        kind = _probe_error(
            probe["relation_kind"], captured["out", PLACE_LAYER], batch["place_queries"], batch["kinds"], classes=True
        )
    return {
        "answer": out.loss,
        "attention": attention,
        "place": place,
        "name_place": name_place,
        "relation": relation,
        "kind": kind,
    }


def losses(
    model: Any, batch: dict[str, torch.Tensor], concept_ids: torch.Tensor, cfg: TrainConfig, probe: Any = None
) -> dict:
    """The answer loss and the grounding losses (patch and object alignment, orthogonality, CLS, answer
    attention, positions, places) of one batch; ``probe`` is :func:`probes` (without it no position or
    place term)."""
    inner = model.model
    hidden = inner.vision_tower(batch["pixel_values"]).last_hidden_state  # == hidden_states[-1]
    projected = inner.multi_modal_projector(hidden)  # (B, 577, H): CLS + 576 patches
    patches, cls = projected[:, 1:], projected[:, 0]
    embed = inner.get_input_embeddings()
    zero = torch.zeros((), device=patches.device)
    terms = dict.fromkeys(("answer", "attention", "place", "name_place", "relation", "kind"), zero)
    if not cfg.vision_only:
        terms = _language_terms(model, batch, patches, probe)
    with torch.autocast(patches.device.type, enabled=False):
        patches, cls = patches.float(), cls.float()  # the alignment terms in float32 (temperature 0.07)
        words = F.normalize(embed.weight.float(), dim=-1)  # (V, H)
        unit = F.normalize(patches, dim=-1)
        cosines = unit @ words.T  # (B, 576, V)
        logp = (cosines[..., concept_ids] / cfg.temperature).log_softmax(-1)  # (B, 576, C)
        targets = batch["patch_concepts"]
        align = -(logp * targets).sum(-1) / targets.sum(-1).clamp(min=1)  # (B, 576)
        if cfg.balance_patches:  # object/sign patches and background patches weigh the same
            background = targets[..., CONCEPTS.index("background")]
            align = 0.5 * (align[background].mean() + align[~background].mean()) if (~background).any() else align
        # object alignment: the mean of an object's (or sign's) patch tokens names it, so edge patches that see
        # its outline can carry its shape without every interior patch having to
        items = batch["item_concepts"]  # (B, K, C)
        member, counts, pooled = _pool(batch["owner"], items.shape[1], patches)
        item_logp = (F.normalize(pooled, dim=-1) @ words[concept_ids].T / cfg.temperature).log_softmax(-1)
        real = (counts > 0).to(patches.dtype)  # padded item rows and items with no patch of their own: 0
        item_loss = -(item_logp * items).sum(-1) / items.sum(-1).clamp(min=1)  # (B, K), finite everywhere
        objects = (item_loss * real).sum() / real.sum().clamp(min=1)
        position = zero
        if probe is not None:  # each visual token, and each object's mean token, says where it is
            grid = torch.arange(GRID, device=patches.device, dtype=torch.float32) / (GRID - 1)
            where = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(1, GRID * GRID, 2)
            error = (probe["position"](patches) - where).pow(2).mean(-1)  # (B, 576)
            background = targets[..., CONCEPTS.index("background")]
            if (~background).any():  # object and background patches weigh the same (objects are the few)
                error = 0.5 * (error[background].mean() + error[~background].mean())
            centres = (
                torch.einsum("bnk,bnc->bkc", member, where.expand(len(patches), -1, -1))
                / counts.clamp(min=1)[..., None]
            )
            item_error = (probe["position"](pooled) - centres).pow(2).mean(-1)  # (B, K)
            position = error.mean() + (item_error * real).sum() / real.sum().clamp(min=1)
        # reading: a sign's or a label's mean token names its word, number or letter among the glyphs alone
        # (in the softmax over every concept the colour and shape words, learned first, dominate its gradient)
        glyphs = concept_ids.new_tensor(GLYPHS)
        glyph_words = words[concept_ids[glyphs]]  # (G, H)
        wanted = items[..., glyphs].to(patches.dtype)  # one glyph for a sign or a labelled object, else none
        read_sum = read_count = zero
        # the mean token of each item, and of each label's own patches (label_patches), names its glyph
        for n, mean in ((counts, pooled), _pool(batch["label_owner"], items.shape[1], patches)[1:]):
            glyph_logp = (F.normalize(mean, dim=-1) @ glyph_words.T / cfg.temperature).log_softmax(-1)  # (B, K, G)
            readable = (n > 0).to(patches.dtype) * (wanted.sum(-1) > 0).to(patches.dtype)
            read_sum = read_sum + (-(glyph_logp * wanted).sum(-1) * readable).sum()
            read_count = read_count + readable.sum()
        reading = read_sum / read_count.clamp(min=1)
        other = torch.ones(words.shape[0], dtype=torch.bool, device=words.device)
        other[concept_ids] = False
        orthogonal = cosines[..., other].pow(2).mean()  # words that name nothing visual: cosine 0, not negative
        cls_logits = F.normalize(cls, dim=-1) @ words[concept_ids].T / cfg.temperature
        grounding = F.binary_cross_entropy_with_logits(cls_logits, batch["present"])
    total = (
        terms["answer"]
        + cfg.align_weight * (align.mean() + cfg.orthogonal_weight * orthogonal)
        + cfg.object_weight * objects
        + cfg.cls_weight * grounding
        + cfg.attention_weight * terms["attention"]
        + cfg.position_weight * position
        + cfg.place_weight * (terms["place"] + terms["name_place"])
        + cfg.relation_weight * terms["relation"]
        + cfg.kind_weight * terms["kind"]
        + cfg.read_weight * reading
    )
    return {
        "total": total,
        **terms,
        "align": align.mean(),
        "objects": objects,
        "orthogonal": orthogonal,
        "cls": grounding,
        "position": position,
        "reading": reading,
    }


def _pool(owner: torch.Tensor, k: int, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For an owner map ``(B, 576)`` (0: no item, else 1..k): the membership ``(B, 576, k)``, each item's
    patch count ``(B, k)`` and the mean of its patch tokens ``(B, k, H)`` (zeros for an item with none)."""
    member = F.one_hot(owner, k + 1)[..., 1:].to(patches.dtype)
    counts = member.sum(1)
    return member, counts, torch.einsum("bnk,bnh->bkh", member, patches) / counts.clamp(min=1)[..., None]


def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class _Steps(torch.utils.data.Dataset):
    """Batch ``step`` of the stream, for a ``DataLoader`` whose workers build batches ahead."""

    def __init__(self, batches: Batches, steps: int) -> None:
        self.batches, self.steps = batches, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        return self.batches(step)


def train(
    out: Path,
    cfg: TrainConfig,
    *,
    device: str = "cpu",
    workers: int = 0,
    log_every: int = 20,
    save_every: int = 200,
) -> Any:
    """Train (or resume) into ``out`` on ``device``; returns the model in eval mode.

    ``workers`` > 0 builds batches in that many ``DataLoader`` processes (on a GPU the scenes are the
    bottleneck); the stream is the same whatever the number of workers.
    """
    torch.set_num_threads(cfg.threads)
    out.mkdir(parents=True, exist_ok=True)
    processor = build_processor()
    model = build_model(cfg.seed)
    if cfg.init is not None:
        from transformers import LlavaForConditionalGeneration

        model.load_state_dict(LlavaForConditionalGeneration.from_pretrained(cfg.init).state_dict())
    model = model.to(device)
    probe = probes(model.config.text_config.hidden_size).to(device)  # not shipped: training aids
    if cfg.vision_only:  # the reading stage: the vision side alone, and the probe that reads its positions
        model.requires_grad_(False)
        for part in (model.model.vision_tower, model.model.multi_modal_projector):
            part.requires_grad_(True)
    aids = probe["position"] if cfg.vision_only else probe
    params = [*(p for p in model.parameters() if p.requires_grad), *aids.parameters()]
    decay, rest = [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    state_file = out / "train_state.pt"
    start, log = 0, []
    if state_file.exists():
        state = torch.load(state_file, weights_only=False, map_location=device)
        saved = state.get("config", cfg.__dict__)
        free = ("threads", "steps")  # a longer or shorter run re-stretches the cosine from here on
        changed = {k: (saved.get(k), v) for k, v in cfg.__dict__.items() if k not in free and saved.get(k) != v}
        slots = state.get("slots", _FIRST_SLOTS)  # states saved before the slots were recorded had three
        if slots != ATTENTION_SLOTS:
            changed["attention slots"] = (slots, ATTENTION_SLOTS)
        if set(state["probe"]) != set(probe.state_dict()):
            changed["probes"] = (sorted(state["probe"]), sorted(probe.state_dict()))
        if changed:
            raise InputError(
                f"{state_file} was trained with other settings; expected the same config to resume, received "
                f"changes {changed} (saved, given): train into a new --out instead"
            )
        model.load_state_dict(state["model"])
        probe.load_state_dict(state["probe"])
        optimizer.load_state_dict(state["optimizer"])
        start, log = state["step"], state["log"]
        print(f"resumed at step {start}", flush=True)
    batches = Batches(cfg, processor)
    concept_ids = batches.concept_ids.to(device)
    loader = torch.utils.data.DataLoader(
        _Steps(batches, cfg.steps),
        batch_size=None,
        sampler=range(start, cfg.steps),
        num_workers=workers,
        prefetch_factor=4 if workers else None,
    )
    model.train()
    t0, window = time.perf_counter(), defaultdict(float)
    for step, batch in zip(range(start, cfg.steps), loader, strict=True):
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, cfg)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=cfg.bf16):
            parts = losses(model, batch, concept_ids, cfg, probe)
        optimizer.zero_grad(set_to_none=True)
        parts["total"].backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        for k, v in parts.items():
            window[k] += float(v.detach())
        if (step + 1) % log_every == 0:
            entry = {"step": step + 1, "seconds": round(time.perf_counter() - t0, 1)}
            entry.update({k: round(v / log_every, 4) for k, v in window.items()})
            log.append(entry)
            print(json.dumps(entry), flush=True)
            window.clear()
        if (step + 1) % save_every == 0 or step + 1 == cfg.steps:
            state = {
                "model": model.state_dict(),
                "probe": probe.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step + 1,
                "log": log,
                "config": cfg.__dict__,
                "slots": ATTENTION_SLOTS,
            }
            torch.save(state, state_file.with_suffix(".tmp"))
            state_file.with_suffix(".tmp").replace(state_file)
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "train_log.json").write_text(json.dumps({"config": cfg.__dict__, "log": log}, indent=1))
    return model


@torch.no_grad()
def evaluate(
    model: Any, processor: Any, samples: list, *, batch_size: int = 32, other_images: bool = False
) -> dict[str, Any]:
    """Greedy answers of ``model`` on scene ``samples`` through the processor, scored by exact match.

    Returns ``{"overall": acc, "families": {family: acc}, "predictions": [...]}``. Scored as
    ``tokenprune compare`` scores the ``scenes`` benchmark (:func:`~tokenprune.evaluation.metrics.exact_match_any`).
    With ``other_images=True`` each question is asked about the image of the sample ``len(FAMILIES)``
    places later (another scene, same question family): what a model scores from the questions alone,
    the level that reading the image must beat.
    """
    from tokenprune.evaluation.metrics import exact_match_any
    from tokenprune.evaluation.runner import chat_inputs

    scores: dict[str, list[float]] = defaultdict(list)
    predictions = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i : i + batch_size]
        shift = len(FAMILIES) if other_images else 0
        images = [samples[(i + j + shift) % len(samples)].image for j in range(len(chunk))]
        inputs = chat_inputs(
            processor, [([im], s.text) for im, s in zip(images, chunk, strict=True)], device=model.device
        )
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        answers = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        for s, a in zip(chunk, answers, strict=True):
            score = exact_match_any(a.strip(), s.answers)
            scores[s.family].append(score)
            predictions.append({"family": s.family, "question": s.text, "answer": s.answer, "prediction": a.strip()})
    families = {f: float(np.mean(scores[f])) for f in FAMILIES if scores[f]}
    overall = float(np.mean([x for f in scores for x in scores[f]]))
    return {"overall": overall, "families": families, "n": len(samples), "predictions": predictions}


@torch.no_grad()
def alignment_report(model: Any, processor: Any, n: int = 60, *, seed: int = 0) -> dict[str, float]:
    """How close the projected visual tokens of an object are to the words that name it.

    Over ``n`` test scenes: the mean cosine between an object's patch tokens and the input embeddings of
    its own colour and shape words (``named``), of the other colour and shape words (``other``), and
    between background patches and the object's words (``background``); and ``question_auc``: for
    "Is there a <colour> <shape>?" about a present object, the probability that a patch of that object
    outranks a patch elsewhere by cosine to the mean-pooled question embedding (ZSPAPrune's relevance;
    0.5 = chance).
    """
    from tokenprune.scenes.description import PALETTE, SHAPES

    tokenizer = processor.tokenizer
    embed = model.get_input_embeddings().weight
    index = {c: i for i, c in enumerate(CONCEPTS)}
    named, other, background, aucs = [], [], [], []
    for sample in make_dataset(n, seed, split="test", families=("existence",)):
        scene = sample.scene
        pixels = processor.image_processor([sample.image], return_tensors="pt")["pixel_values"].to(model.device)
        hidden = model.model.vision_tower(pixels).last_hidden_state
        tokens = F.normalize(model.model.multi_modal_projector(hidden)[0, 1:], dim=-1)  # (576, H)
        patch, _ = concept_targets(scene, index)
        bg = patch[:, index["background"]]
        for obj in scene.objects:
            own = torch.from_numpy(patch[:, index[obj.colour]] & patch[:, index[obj.shape]]).to(tokens.device)
            if not own.any():
                continue
            words = tokenizer.convert_tokens_to_ids([obj.colour, obj.shape])
            others = [w for w in [*PALETTE, *SHAPES] if w not in (obj.colour, obj.shape)]
            e_own = F.normalize(embed[words], dim=-1)
            e_other = F.normalize(embed[tokenizer.convert_tokens_to_ids(others)], dim=-1)
            named.append(float((tokens[own] @ e_own.T).mean()))
            other.append(float((tokens[own] @ e_other.T).mean()))
            if bg.any():
                background.append(float((tokens[torch.from_numpy(bg).to(tokens.device)] @ e_own.T).mean()))
        if sample.answer == "yes":
            colour, shape = sample.question.target.split()
            own = torch.from_numpy(patch[:, index[colour]] & patch[:, index[shape]]).to(tokens.device)
            ids = tokenizer(sample.text, add_special_tokens=False)["input_ids"]
            query = F.normalize(embed[ids].mean(0), dim=-1)
            score = tokens @ query
            pos, neg = score[own], score[~own]
            if len(pos) and len(neg):
                aucs.append(float((pos[:, None] > neg[None, :]).float().mean()))
    return {
        "named": float(np.mean(named)),
        "other": float(np.mean(other)),
        "background": float(np.mean(background)),
        "question_auc": float(np.mean(aucs)),
        "objects": len(named),
    }


@torch.no_grad()
def reading_report(model: Any, processor: Any, n: int = 60, *, seed: int = 0) -> dict[str, float]:
    """Whether the vision side reads: over the signs and labelled objects of ``n`` test scenes with text,
    the share whose mean projected token is nearest (by cosine), among the :data:`GLYPHS` alone, to the
    input embedding of its own word, number or letter (``signs``, ``labels``; chance is 1 in 147); and
    ``label_patches``, the same for the mean token of each label's own patches (:func:`label_patches`)."""
    tokenizer = processor.tokenizer
    index = {c: i for i, c in enumerate(CONCEPTS)}
    glyphs = list(GLYPHS)
    embed = model.get_input_embeddings().weight
    words = F.normalize(embed[tokenizer.convert_tokens_to_ids([CONCEPTS[i] for i in glyphs])].float(), dim=-1)
    hits: dict[str, list[bool]] = {"signs": [], "labels": [], "label_patches": []}
    for sample in make_dataset(n, seed, split="test", families=("text",)):
        pixels = processor.image_processor([sample.image], return_tensors="pt")["pixel_values"].to(model.device)
        tokens = model.model.multi_modal_projector(model.model.vision_tower(pixels).last_hidden_state)[0, 1:]
        _, _, owner, named = concept_targets(sample.scene, index, items=True)
        labels = label_patches(sample.scene, owner)
        for k, concepts in enumerate(named, start=1):
            glyph = np.flatnonzero(concepts[glyphs])  # the item's word, number or letter, if it has one
            kind = "signs" if k > len(sample.scene.objects) else "labels"
            for key, mine in ((kind, owner == k), ("label_patches", (labels == k) & (kind == "labels"))):
                if len(glyph) and mine.any():
                    mean = tokens[torch.from_numpy(mine).to(tokens.device)].float().mean(0)
                    hits[key].append(int((F.normalize(mean, dim=-1) @ words.T).argmax()) == glyph[0])
    return {kind: float(np.mean(v)) if v else float("nan") for kind, v in hits.items()} | {
        f"{kind}_n": len(v) for kind, v in hits.items()
    }


def export(out: Path, target: Path) -> Path:
    """Write the model of ``out/train_state.pt`` (a run stopped or still going) and the processor to
    ``target`` as a ``save_pretrained`` directory, without the training state; returns ``target``."""
    state_file = Path(out) / "train_state.pt"
    if not state_file.is_file():
        raise InputError(f"--export: expected a training state at {state_file}; there is none (train into --out first)")
    state = torch.load(state_file, weights_only=False, map_location="cpu")
    model = build_model(state.get("config", {}).get("seed", 0))
    model.load_state_dict(state["model"])
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(target)
    build_processor().save_pretrained(target)
    return target


#: The loss weights ``main`` takes as ``--<term>-weight`` flags (``TrainConfig.<term>_weight``), with what each weighs.
_WEIGHT_FLAGS = {
    "align": "the patch alignment term",
    "cls": "the CLS grounding term",
    "read": "the reading term (a sign's or label's mean token names its glyph; off at 0)",
    "position": "the position term (each visual token and each object's mean token says where it is)",
    "place": "the place terms (where a spatial answer's and a name's objects are)",
    "relation": "the relation term (a spatial answer, after layer 2, holds how far A is from B the way the "
    "relation points; off at 0)",
    "kind": "the relation-kind term (a spatial answer, after layer 2, still says which relation is asked; off at 0)",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokenprune.scenes.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="checkpoint / output directory")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--lr", type=float, default=TrainConfig.lr)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    for term, what in _WEIGHT_FLAGS.items():
        default = getattr(TrainConfig, f"{term}_weight")
        parser.add_argument(
            f"--{term}-weight", type=float, default=default, help=f"weight of {what} (default {default})"
        )
    parser.add_argument(
        "--text-probability",
        type=float,
        default=TrainConfig.text_probability,
        help="share of training images with signs and labels (default %(default)s)",
    )
    parser.add_argument(
        "--vision-only",
        action="store_true",
        help="the reading stage: train the vision tower and projector alone on the grounding and reading terms "
        "(no language model forward); use with --init",
    )
    parser.add_argument(
        "--balance-patches",
        action=argparse.BooleanOptionalAction,
        default=TrainConfig.balance_patches,
        help="weigh object and background patches equally in the alignment (default on)",
    )
    parser.add_argument(
        "--init",
        metavar="DIR",
        help="start from this save_pretrained model (e.g. tokenprune/assets/scene-llava) instead of random "
        "weights, on the full task from the first step (no curriculum)",
    )
    parser.add_argument("--threads", type=int, default=TrainConfig.threads)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader processes building batches (default 0)")
    parser.add_argument("--eval", type=int, default=600, help="held-out test questions to evaluate (0: none)")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the model saved in --out")
    parser.add_argument(
        "--export",
        type=Path,
        metavar="DIR",
        help="write the model of --out's last saved training state (and the processor) to DIR as a "
        "save_pretrained directory, e.g. tokenprune/assets/scene-llava, then evaluate it from there",
    )
    args = parser.parse_args(argv)
    cfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        **{f"{term}_weight": getattr(args, f"{term}_weight") for term in _WEIGHT_FLAGS},
        text_probability=args.text_probability,
        vision_only=args.vision_only,
        seed=args.seed,
        threads=args.threads,
        balance_patches=args.balance_patches,
        init=args.init,
    )
    start = time.perf_counter()
    report_dir = args.out  # an export's evaluation is written beside its training state, not into the package
    if args.export is not None:
        export(args.out, args.export)
        args.out, args.eval_only = args.export, True
    if args.eval_only:
        from tokenprune.scenes.model import load_scene_model

        torch.set_num_threads(cfg.threads)
        model, processor = load_scene_model(args.out, device=args.device)
    else:
        model = train(args.out, cfg, device=args.device, workers=args.workers)
        processor = build_processor()
    report: dict[str, Any] = {} if args.eval_only else {"train_seconds": round(time.perf_counter() - start, 1)}
    if args.eval:
        result = evaluate(model, processor, make_dataset(args.eval, seed=0, split="test"))
        report["accuracy"] = {"overall": result["overall"], **result["families"], "n": result["n"]}
        blind = evaluate(model, processor, make_dataset(args.eval, seed=0, split="test"), other_images=True)
        report["accuracy_other_images"] = {"overall": blind["overall"], **blind["families"]}
        report["alignment"] = alignment_report(model, processor)
        report["reading"] = reading_report(model, processor)
        wrong = [p for p in result["predictions"] if p["prediction"] != p["answer"]][:20]
        print(json.dumps({"examples_wrong": wrong}, indent=1))
    print(json.dumps(report, indent=1))
    (report_dir / "report.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

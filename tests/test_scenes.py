"""Tests of the procedural scene generator (tokenprune.scenes): determinism, splits, and answer correctness.

Answers are checked against ``check_question``, an independent re-derivation from the scene description.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tokenprune.errors import InputError
from tokenprune.scenes import (
    COLOUR_WEIGHTS,
    FAMILIES,
    PALETTE,
    SHAPE_WEIGHTS,
    SHAPES,
    Background,
    Question,
    Scene,
    SceneObject,
    TextItem,
    ask,
    generate_scene,
    image_to_array,
    make_dataset,
    render_scene,
    scene_seed,
)

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def find(scene: Scene, colour: str | None = None, shape: str | None = None) -> list[SceneObject]:
    return [o for o in scene.objects if (colour is None or o.colour == colour) and (shape is None or o.shape == shape)]


def relation_holds(rel: str, a: SceneObject, b: SceneObject) -> bool | None:
    """True/False when clearly so from the boxes, None when the boxes overlap on that axis."""
    ax0, ay0, ax1, ay1 = a.bbox
    bx0, by0, bx1, by1 = b.bbox
    before, after = {
        "to the left of": (ax1 < bx0, ax0 > bx1),
        "to the right of": (ax0 > bx1, ax1 < bx0),
        "above": (ay1 < by0, ay0 > by1),
        "below": (ay0 > by1, ay1 < by0),
    }[rel]
    return True if before else False if after else None


def the(scene: Scene, name: str) -> SceneObject:
    colour, shape = name.split()
    (obj,) = find(scene, colour, shape)  # exactly one: the question names a unique object
    return obj


def option_is_correct(scene: Scene, stem: str, option: str) -> bool:
    if stem == "Which of these shapes appears in the image?":
        return bool(find(scene, shape=option))
    if stem == "Which of these colours appears in the image?":
        return bool(find(scene, colour=option))
    if stem == "How many shapes are there in the image?":
        return int(option) == len(scene.objects)
    m = re.fullmatch(r"What colour is the (\w+)\?", stem)
    assert m, stem
    (obj,) = find(scene, shape=m[1])
    return obj.colour == option


def check_question(scene: Scene, q: Question) -> None:
    """Independently re-derive the answer of ``q`` from ``scene`` and compare."""
    assert q.answer in q.answers
    if q.family == "existence":
        colour, shape = re.fullmatch(r"Is there a (\w+) (\w+) in the image\?", q.text).groups()
        present = bool(find(scene, colour, shape))
        assert q.answer == ("yes" if present else "no")
        if not present:
            pairs = {(o.colour, o.shape) for o in scene.objects}
            if q.subset == "adversarial":
                assert any(c == colour or s == shape for c, s in pairs)
            if q.subset == "popular":
                absent = [(c, s) for c in PALETTE for s in SHAPES if (c, s) not in pairs]
                weights = sorted((COLOUR_WEIGHTS[c] * SHAPE_WEIGHTS[s] for c, s in absent), reverse=True)
                assert COLOUR_WEIGHTS[colour] * SHAPE_WEIGHTS[shape] >= weights[2]
    elif q.family == "attribute":
        if m := re.fullmatch(r"What colour is the (\w+)\?", q.text):
            (obj,) = find(scene, shape=m[1])
            assert q.answer == obj.colour
        else:
            colour = re.fullmatch(r"What shape is the (\w+) object\?", q.text)[1]
            (obj,) = find(scene, colour=colour)
            assert q.answer == obj.shape
    elif q.family == "counting":
        if m := re.fullmatch(r"How many (\w+) objects are there in the image\?", q.text):
            n = len(find(scene, colour=m[1]))
        elif q.text == "How many shapes are there in the image?":
            n = len(scene.objects)
        else:
            word = re.fullmatch(r"How many (\w+) are there in the image\?", q.text)[1]
            (shape,) = [s for s in SHAPES if word in (s + "s", s + "es")]
            n = len(find(scene, shape=shape))
        assert q.answer == str(n) and NUMBER_WORDS[n] in q.answers
    elif q.family == "spatial":
        rels = "to the left of|to the right of|above|below"
        if m := re.fullmatch(rf"Is the (\w+ \w+) ({rels}) the (\w+ \w+)\?", q.text):
            holds = relation_holds(m[2], the(scene, m[1]), the(scene, m[3]))
            assert holds is not None, "ambiguous spatial question"
            assert q.answer == ("yes" if holds else "no")
        else:
            m = re.fullmatch(rf"What is ({rels}) the (\w+ \w+)\?", q.text)
            ref = the(scene, m[2])
            # a list, not a dict by name: two objects may share a name ("blue circle", large and small)
            verdicts = [(o.name, relation_holds(m[1], o, ref)) for o in scene.objects if o is not ref]
            assert [n for n, v in verdicts if v] == [q.answer]
            assert all(v is not None for _, v in verdicts)
    elif q.family == "text":
        if m := re.fullmatch(r"What (letter|number) is on the (\w+ \w+)\?", q.text):
            assert q.answer == the(scene, m[2]).label
        elif m := re.fullmatch(r"What is written on the (\w+) sign\?", q.text):
            (item,) = [t for t in scene.texts if t.panel == m[1]]
            assert q.answer == item.text
        else:
            (item,) = scene.texts
            assert q.answer == item.text
    elif q.family == "multiple_choice":
        stem, *lines, instruction = q.text.split("\n")
        assert instruction.startswith("Answer with the option's letter")
        assert lines == [f"{letter}. {c}" for letter, c in zip("ABCD", q.choices, strict=True)]
        assert len(set(q.choices)) == 4
        correct = [letter for letter, c in zip("ABCD", q.choices, strict=True) if option_is_correct(scene, stem, c)]
        assert correct == [q.answer]
    else:  # pragma: no cover
        raise AssertionError(q.family)


# ---------------------------------------------------------------- hand-built scenes

RED_CIRCLE = SceneObject.of("circle", "red", "medium", (50, 170))
BLUE_SQUARE = SceneObject.of("square", "blue", "medium", (280, 170), label="A")
GREEN_TRIANGLE = SceneObject.of("triangle", "green", "small", (170, 40))
GREEN_STAR = SceneObject.of("star", "green", "small", (170, 300))
HAND = Scene(objects=(RED_CIRCLE, BLUE_SQUARE, GREEN_TRIANGLE, GREEN_STAR), texts=(TextItem("CAT", (170, 170)),))


def all_questions(scene: Scene, family: str, n: int = 60, **kw) -> dict[str, Question]:
    out = {}
    for seed in range(n):
        q = ask(scene, family, np.random.default_rng(seed), **kw)
        if q is not None:
            out[q.text] = q
    return out


def test_hand_scene_existence():
    qs = all_questions(HAND, "existence", subset="random")
    assert qs["Is there a red circle in the image?"].answer == "yes"
    assert {q.answer for q in qs.values()} == {"yes", "no"}
    for q in qs.values():
        check_question(HAND, q)


def test_hand_scene_attribute():
    qs = all_questions(HAND, "attribute")
    assert qs["What colour is the square?"].answer == "blue"
    assert qs["What shape is the red object?"].answer == "circle"
    assert "What shape is the green object?" not in qs  # two green objects: ambiguous, never asked
    assert set(qs) <= {
        "What colour is the circle?", "What colour is the square?", "What colour is the triangle?",
        "What colour is the star?", "What shape is the red object?", "What shape is the blue object?",
    }  # fmt: skip


def test_hand_scene_counting():
    qs = all_questions(HAND, "counting", n=200)
    assert qs["How many green objects are there in the image?"].answers == ("2", "two")
    assert qs["How many shapes are there in the image?"].answer == "4"
    assert qs["How many circles are there in the image?"].answer == "1"
    for q in qs.values():
        check_question(HAND, q)


def test_hand_scene_spatial():
    qs = all_questions(HAND, "spatial", n=300)
    assert qs["Is the red circle to the left of the blue square?"].answer == "yes"
    assert qs["Is the blue square to the left of the red circle?"].answer == "no"
    assert qs["Is the green triangle above the green star?"].answer == "yes"
    assert "Is the green triangle to the left of the green star?" not in qs  # same x: ambiguous, never asked
    for q in qs.values():
        check_question(HAND, q)


def test_spatial_what_question():
    scene = Scene(objects=(RED_CIRCLE, BLUE_SQUARE))
    qs = all_questions(scene, "spatial")
    q = qs["What is to the left of the blue square?"]
    assert q.answer == "red circle" and "circle" in q.answers
    assert qs["What is to the right of the red circle?"].answer == "blue square"


def test_hand_scene_text():
    qs = all_questions(HAND, "text")
    assert qs["What letter is on the blue square?"].answers == ("A", "a")
    sign = [q for t, q in qs.items() if "sign" in t or "written" in t]
    assert sign and all(q.answer == "CAT" and "cat" in q.answers for q in sign)
    two = Scene(objects=(RED_CIRCLE,), texts=(TextItem("DOG", (150, 60)), TextItem("42", (150, 260), panel="yellow")))
    qs = all_questions(two, "text")
    assert qs["What is written on the white sign?"].answer == "DOG"
    assert qs["What is written on the yellow sign?"].answer == "42"
    assert ask(Scene(objects=(RED_CIRCLE,)), "text", 0) is None


def test_hand_scene_multiple_choice():
    qs = all_questions(HAND, "multiple_choice", n=200)
    assert len({q.text.split("\n")[0] for q in qs.values()}) >= 4
    for q in qs.values():
        assert q.answer in "ABCD" and len(q.choices) == 4
        check_question(HAND, q)


def test_pope_negatives():
    for subset in ("random", "popular", "adversarial"):
        negatives = [q for q in all_questions(HAND, "existence", n=200, subset=subset).values() if q.answer == "no"]
        assert negatives, subset
        present = {(o.colour, o.shape) for o in HAND.objects}
        for q in negatives:
            colour, shape = q.target.split()
            assert (colour, shape) not in present
            assert q.subset == subset
            if subset == "adversarial":
                assert any(c == colour or s == shape for c, s in present)
            check_question(HAND, q)


# ---------------------------------------------------------------- rendering


def test_render_pixels_match_description():
    a = image_to_array(render_scene(HAND))
    assert a.shape == (336, 336, 3) and a.dtype == np.uint8
    assert a[170, 50].tolist() == list(PALETTE["red"])  # circle centre
    assert a[150, 280].tolist() == list(PALETTE["blue"])  # square, above its label
    assert a[5, 5].tolist() == [215, 215, 215]  # plain background


@pytest.mark.parametrize("size", [112, 224, 336, 448])
def test_image_size(size):
    scene = generate_scene(5, image_size=size)
    assert render_scene(scene).size == (size, size)
    assert all(0 <= v <= size for o in scene.objects for v in o.bbox)
    assert make_dataset(1, 0, image_size=size)[0].image.size == (size, size)


@pytest.mark.parametrize("kind", ["plain", "stripes", "checker", "noise", "gradient"])
def test_backgrounds_are_seeded_and_distinct(kind):
    bg = Background(kind, ((200, 200, 200), (230, 230, 230)), period=12, angle=45, seed=3)
    a = image_to_array(render_scene(Scene(background=bg, image_size=64)))
    assert np.array_equal(a, image_to_array(render_scene(Scene(background=bg, image_size=64))))
    assert (len(np.unique(a)) == 1) == (kind == "plain")


def test_text_is_inside_image_and_apart_from_objects():
    for seed in range(30):
        scene = generate_scene(seed, text=True)
        boxes = [o.bbox for o in scene.objects] + [t.bbox for t in scene.texts]
        assert scene.texts or any(o.label for o in scene.objects)
        for i, a in enumerate(boxes):
            assert min(a[0], a[1]) >= 0 and max(a[2], a[3]) < 336
            for b in boxes[i + 1 :]:
                assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1], (seed, a, b)


# ---------------------------------------------------------------- determinism and splits


def test_same_seed_same_pixels_and_questions():
    a, b = make_dataset(6, seed=3, split="test"), make_dataset(6, seed=3, split="test")
    assert [s.question for s in a] == [s.question for s in b]
    assert [s.scene for s in a] == [s.scene for s in b]
    assert all(np.array_equal(image_to_array(x.image), image_to_array(y.image)) for x, y in zip(a, b, strict=True))


def test_different_seeds_differ():
    a, b = make_dataset(6, seed=3, split="test"), make_dataset(6, seed=4, split="test")
    assert {s.scene_seed for s in a}.isdisjoint(s.scene_seed for s in b)
    assert not np.array_equal(image_to_array(a[0].image), image_to_array(b[0].image))
    assert not np.array_equal(
        image_to_array(render_scene(generate_scene(1))), image_to_array(render_scene(generate_scene(2)))
    )


def test_splits_are_disjoint():
    seeds = {
        split: {scene_seed(s, split, i) for s in range(3) for i in range(300)} for split in ("train", "val", "test")
    }
    assert seeds["train"].isdisjoint(seeds["test"]) and seeds["train"].isdisjoint(seeds["val"])
    assert seeds["val"].isdisjoint(seeds["test"])
    train = make_dataset(30, 0, split="train")
    test = make_dataset(30, 0, split="test")
    assert {s.scene for s in train}.isdisjoint(s.scene for s in test)
    assert {s.split for s in test} == {"test"}


def test_dataset_covers_every_family():
    data = make_dataset(36, 0, split="train")
    assert [s.family for s in data[:6]] == list(FAMILIES)
    existence = [s for s in data if s.family == "existence"]
    assert {s.subset for s in existence} == {"random", "popular", "adversarial"}
    assert sorted(s.answer for s in existence) == ["no"] * 3 + ["yes"] * 3  # balanced, as in POPE
    for s in data:
        check_question(s.scene, s.question)
        assert (s.choices != ()) == (s.family == "multiple_choice")


def test_clear_errors():
    with pytest.raises(InputError, match=r"expected one of 'train', 'val', 'test'; received 'dev'"):
        make_dataset(1, 0, split="dev")
    with pytest.raises(InputError, match=r"SceneObject.shape: expected one of .*received 'blob'"):
        SceneObject.of("blob", "red", "small", (10, 10))
    with pytest.raises(InputError, match="family"):
        ask(HAND, "ocr", 0)
    with pytest.raises(InputError, match="image_size"):
        generate_scene(0, image_size=10)


def test_import_tokenprune_does_not_import_pil():
    import subprocess
    import sys

    code = "import sys, tokenprune; assert 'PIL' not in sys.modules, 'PIL imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- properties


@given(seed=st.integers(0, 2**63 - 1), family=st.sampled_from(FAMILIES), qseed=st.integers(0, 2**32))
@example(seed=3214, family="spatial", qseed=0)  # two objects named "blue circle", one of them the answer
def test_every_answer_consistent_with_scene(seed, family, qseed):
    scene = generate_scene(seed, text=family == "text")
    q = ask(scene, family, np.random.default_rng(qseed))
    if q is not None:
        assert q.family == family
        check_question(scene, q)


@given(seed=st.integers(0, 2**63 - 1), subset=st.sampled_from(["random", "popular", "adversarial"]))
def test_pope_subsets_property(seed, subset):
    scene = generate_scene(seed)
    q = ask(scene, "existence", seed % 1000, subset=subset)
    assert q.subset == subset
    check_question(scene, q)

"""The shipped scene-llava: vocabulary and tokenizer, processor, training pieces, and the trained weights.

The last group needs the trained model in the package (``tokenprune/assets/scene-llava``); it loads it
offline with ``from_pretrained`` and checks that it answers held-out questions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from tokenprune.errors import InputError
from tokenprune.scenes import FAMILIES, Scene, SceneObject, TextItem, make_dataset, render_scene
from tokenprune.scenes.description import SHAPES
from tokenprune.scenes.model import (
    CONCEPTS,
    GRID,
    MODEL_DIR,
    PATCH_SIZE,
    build_model,
    build_processor,
    build_tokenizer,
    load_scene_model,
    model_config,
    vocabulary,
)
from tokenprune.scenes.questions import Question
from tokenprune.scenes.render import label_box
from tokenprune.scenes.train import (
    ATTENTION_SLOTS,
    CAPTION_QUESTION,
    GLYPHS,
    PLACE_LAYER,
    SLOT_INDEX,
    Batches,
    TrainConfig,
    attention_rows,
    attention_targets,
    concept_targets,
    evaluate,
    export,
    label_patches,
    losses,
    probes,
    train,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def processor():
    return build_processor()


#: The full task from step 0 (every patch in the language model's input, 2-6 objects).
NO_CURRICULUM = {"one_object_steps": 0, "few_objects_steps": 0, "background_steps": 0}


@dataclass
class HandSample:
    """What :func:`evaluate` reads of a sample, for a hand-made scene."""

    image: Any
    text: str
    answer: str
    family: str = "existence"

    @property
    def answers(self) -> tuple[str, ...]:
        return (self.answer,)


def user_prompt(processor, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


class TestVocabulary:
    def test_specials_first_and_unique(self):
        vocab = vocabulary()
        assert vocab[:5] == ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
        assert len(vocab) == len(set(vocab))

    def test_every_generated_question_and_answer_tokenises_without_unk(self):
        tokenizer = build_tokenizer()
        unk = tokenizer.unk_token_id
        for split in ("train", "test"):
            for sample in make_dataset(600, seed=3, split=split):
                for text in (sample.text, sample.answer):
                    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                    assert unk not in ids, (text, tokenizer.convert_ids_to_tokens(ids))

    def test_answers_round_trip_through_decode(self):
        tokenizer = build_tokenizer()
        for sample in make_dataset(120, seed=4, split="val"):
            ids = tokenizer(sample.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            assert tokenizer.decode(ids, skip_special_tokens=True) == sample.answer

    def test_concepts_are_single_tokens(self):
        tokenizer = build_tokenizer()
        for concept in CONCEPTS:
            assert tokenizer(concept, add_special_tokens=False)["input_ids"] == [
                tokenizer.convert_tokens_to_ids(concept)
            ]


class TestProcessor:
    def test_chat_template_is_llava_1_5(self, processor):
        assert user_prompt(processor, "What colour is the star?") == (
            "USER: <image>\nWhat colour is the star? ASSISTANT:"
        )

    def test_576_image_tokens_and_336_pixels(self, processor):
        sample = make_dataset(1, seed=0, split="test")[0]
        inputs = processor(images=[sample.image], text=[user_prompt(processor, sample.text)], return_tensors="pt")
        assert inputs["pixel_values"].shape == (1, 3, 336, 336)
        assert int((inputs["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<image>")).sum()) == 576

    def test_config_matches_the_processor(self, processor):
        config = model_config()
        assert config.vision_config.image_size // config.vision_config.patch_size == GRID == 24
        assert config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<image>")
        assert config.text_config.vocab_size == len(processor.tokenizer)

    def test_missing_model_directory_says_how_to_make_one(self, tmp_path):
        with pytest.raises(InputError, match=r"python -m tokenprune\.scenes\.train"):
            load_scene_model(tmp_path)


class TestTrainingPieces:
    def test_concept_targets_mark_object_and_sign_patches(self):
        square = SceneObject.of("square", "red", "large", (84, 84))  # radius 40: pixels 44..124
        sign = TextItem("CAT", (250, 250), panel="yellow")
        index = {c: i for i, c in enumerate(CONCEPTS)}
        patch, present = concept_targets(Scene(objects=(square,), texts=(sign,)), index)
        grid = patch.reshape(GRID, GRID, -1)
        inside = slice(44 // PATCH_SIZE + 1, 124 // PATCH_SIZE)  # patches wholly inside the square
        assert grid[inside, inside, index["red"]].all() and grid[inside, inside, index["square"]].all()
        assert not grid[inside, inside, index["background"]].any()
        row, col = 250 // PATCH_SIZE, 250 // PATCH_SIZE
        assert {CONCEPTS[i] for i in np.flatnonzero(grid[row, col])} == {"yellow", "sign", "CAT"}
        assert grid[0, GRID - 1, index["background"]] and grid[0, GRID - 1].sum() == 1
        assert {CONCEPTS[i] for i in np.flatnonzero(present)} == {"red", "square", "yellow", "sign", "CAT"}
        again, _, owner, named = concept_targets(Scene(objects=(square,), texts=(sign,)), index, items=True)
        assert np.array_equal(again, patch)
        assert np.array_equal(owner == 0, patch[:, index["background"]])
        assert np.array_equal(owner == 1, patch[:, index["square"]]) and np.array_equal(
            owner == 2, patch[:, index["CAT"]]
        )
        assert [{CONCEPTS[i] for i in np.flatnonzero(row)} for row in named] == [
            {"red", "square"},
            {"yellow", "sign", "CAT"},
        ]

    def test_a_label_is_read_on_its_own_patches(self):
        index = {c: i for i, c in enumerate(CONCEPTS)}
        for size, centre in (("small", (100, 100)), ("medium", (60, 250)), ("large", (200, 130))):
            labelled = SceneObject.of("circle", "blue", size, centre, label="K")
            scene = Scene(objects=(SceneObject.of("square", "red", "large", (270, 270)), labelled))
            patch, _, owner, _ = concept_targets(scene, index, items=True)
            on_label = label_patches(scene, owner)
            assert set(np.unique(on_label)) == {0, 2}  # the unlabelled square has none
            mine = np.flatnonzero(on_label == 2)
            assert (owner[mine] == 2).all() and len(mine) < (owner == 2).sum()  # inside the circle, not all of it
            x0, y0, x1, y1 = label_box(labelled)
            rows, cols = np.divmod(mine, GRID)
            assert ((cols + 1) * PATCH_SIZE > x0).all() and (cols * PATCH_SIZE < x1).all()
            assert ((rows + 1) * PATCH_SIZE > y0).all() and (rows * PATCH_SIZE < y1).all()
            assert int(centre[1] // PATCH_SIZE) * GRID + int(centre[0] // PATCH_SIZE) in mine  # the letter's middle
            # the letter is a concept of the patches it is drawn on only; colour and shape of all the circle's
            assert np.array_equal(patch[:, index["K"]], on_label == 2)
            assert patch[owner == 2, index["blue"]].all() and patch[owner == 2, index["circle"]].all()

    def test_object_alignment_is_the_mean_of_each_items_patches(self, processor):
        model = build_model(0).eval()
        cfg = TrainConfig(batch_size=3, **NO_CURRICULUM)
        batches = Batches(cfg, processor)
        batch = batches(1)
        with torch.no_grad():
            got = losses(model, batch, batches.concept_ids, cfg)["objects"]
            patches = model.model.multi_modal_projector(
                model.model.vision_tower(batch["pixel_values"]).last_hidden_state
            )
            words = torch.nn.functional.normalize(model.get_input_embeddings().weight[batches.concept_ids], dim=-1)
            terms = []
            for j in range(3):
                for k in range(1, int(batch["owner"][j].max()) + 1):
                    mine = batch["owner"][j] == k
                    if not mine.any():
                        continue
                    mean = torch.nn.functional.normalize(patches[j, 1:][mine].mean(0), dim=-1)
                    logp = (words @ mean / cfg.temperature).log_softmax(-1)
                    target = batch["item_concepts"][j, k - 1]
                    terms.append(-logp[target].mean())
        torch.testing.assert_close(got, torch.stack(terms).mean())

    def test_position_term_asks_patches_and_each_objects_mean_token_where_they_are(self, processor):
        model = build_model(0).eval()
        cfg = TrainConfig(batch_size=2, **NO_CURRICULUM)
        batches = Batches(cfg, processor)
        batch = batches(3)
        probe = probes(model.config.text_config.hidden_size)
        with torch.no_grad():
            got = losses(model, batch, batches.concept_ids, cfg, probe)["position"]
            patches = model.model.multi_modal_projector(
                model.model.vision_tower(batch["pixel_values"]).last_hidden_state
            )[:, 1:]
            rows, cols = np.divmod(np.arange(GRID * GRID), GRID)
            where = torch.tensor(np.stack([rows, cols], -1) / (GRID - 1), dtype=torch.float32)
            error = (probe["position"](patches) - where).pow(2).mean(-1)
            background = batch["patch_concepts"][..., CONCEPTS.index("background")]
            patch_term = 0.5 * (error[background].mean() + error[~background].mean())
            items = []
            for j in range(2):
                for k in range(1, int(batch["owner"][j].max()) + 1):
                    mine = batch["owner"][j] == k
                    if mine.any():
                        items.append((probe["position"](patches[j][mine].mean(0)) - where[mine].mean(0)).pow(2).mean())
        assert len(items) >= 3
        torch.testing.assert_close(got, patch_term + torch.stack(items).mean())

    @staticmethod
    def _with_spatial_answers(processor):
        """A random-init model, its config and batch stream, a batch with spatial answers, and the probes."""
        model = build_model(0).eval()
        cfg = TrainConfig(batch_size=2, **NO_CURRICULUM)
        batches = Batches(cfg, processor)
        batch = next(b for b in map(batches, range(3, 40)) if (b["place_queries"] >= 0).any())
        return model, cfg, batches, batch, probes(model.config.text_config.hidden_size)

    def test_relation_term_is_off_by_default_and_weighs_what_the_relation_probe_misses(self, processor):
        model, cfg, batches, batch, probe = self._with_spatial_answers(processor)
        with torch.no_grad():
            off = losses(model, batch, batches.concept_ids, cfg, probe)
            on = losses(
                model, batch, batches.concept_ids, TrainConfig(**{**cfg.__dict__, "relation_weight": 2.0}), probe
            )
        assert on["relation"] > 0
        torch.testing.assert_close(on["relation"], off["relation"])
        torch.testing.assert_close(on["total"] - off["total"], 2.0 * on["relation"])

    def test_relation_kind_term_is_the_cross_entropy_of_its_probe_at_the_spatial_answers(self, processor):
        model, cfg, batches, batch, probe = self._with_spatial_answers(processor)
        captured = {}
        hook = model.model.language_model.layers[PLACE_LAYER].register_forward_hook(
            lambda module, args, out: captured.__setitem__("out", out)
        )
        with torch.no_grad():
            try:
                off = losses(model, batch, batches.concept_ids, cfg, probe)
            finally:
                hook.remove()
            on = losses(model, batch, batches.concept_ids, TrainConfig(**{**cfg.__dict__, "kind_weight": 2.0}), probe)
            terms = []
            for j in range(2):
                for q, kind in zip(batch["place_queries"][j], batch["kinds"][j], strict=True):
                    if q >= 0:
                        logits = probe["relation_kind"](captured["out"][j, q].float())
                        terms.append(-logits.log_softmax(-1)[int(kind)])
        assert off["kind"] > 0 and len(terms) >= 2
        torch.testing.assert_close(off["kind"], torch.stack(terms).mean())
        torch.testing.assert_close(on["total"] - off["total"], 2.0 * on["kind"])  # off by default

    def test_reading_is_a_softmax_over_the_glyphs_of_each_sign_label_and_labels_own_patches(self, processor):
        assert {"CAT", "TAXI", "17", "99", "A", "Z", "7"} <= {CONCEPTS[i] for i in GLYPHS}
        assert not {"red", "circle", "sign", "white", "background", "I", "O"} & {CONCEPTS[i] for i in GLYPHS}
        model = build_model(0).eval()
        cfg = TrainConfig(batch_size=3, text_probability=1.0, read_weight=2.0, **NO_CURRICULUM)
        batches = Batches(cfg, processor)
        batch = batches(2)
        with torch.no_grad():
            parts = losses(model, batch, batches.concept_ids, cfg)
            unread = losses(model, batch, batches.concept_ids, TrainConfig(**{**cfg.__dict__, "read_weight": 0.0}))
            patches = model.model.multi_modal_projector(
                model.model.vision_tower(batch["pixel_values"]).last_hidden_state
            )[:, 1:]
            glyph_ids = batches.concept_ids[list(GLYPHS)]
            words = torch.nn.functional.normalize(model.get_input_embeddings().weight[glyph_ids], dim=-1)
            terms, label_terms = [], []
            for j in range(3):
                for k in range(1, batch["item_concepts"].shape[1] + 1):
                    target = batch["item_concepts"][j, k - 1, list(GLYPHS)]
                    # the item's patches, and (a labelled object) its label's own patches
                    for into, mine in ((terms, batch["owner"][j] == k), (label_terms, batch["label_owner"][j] == k)):
                        if not mine.any() or not target.any():
                            continue
                        assert int(target.sum()) == 1  # a sign's word or number, a label's letter or digit
                        mean = torch.nn.functional.normalize(patches[j][mine].mean(0), dim=-1)
                        into.append(-(words @ mean / cfg.temperature).log_softmax(-1)[target][0])
        assert len(terms) >= 3 and len(label_terms) >= 1
        # the label patches lie inside their object's
        assert bool(((batch["label_owner"] == 0) | (batch["label_owner"] == batch["owner"])).all())
        terms += label_terms
        torch.testing.assert_close(parts["reading"], torch.stack(terms).mean())
        torch.testing.assert_close(parts["total"] - unread["total"], 2.0 * parts["reading"])

    def test_batches_are_deterministic_and_label_only_answers(self, processor):
        batches = Batches(TrainConfig(batch_size=2, **NO_CURRICULUM), processor)
        a, b = batches(3), batches(3)
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not torch.equal(a["input_ids"], batches(4)["input_ids"][:, : a["input_ids"].shape[1]])
        tokenizer = processor.tokenizer
        for ids, labels in zip(a["input_ids"], a["labels"], strict=True):
            supervised = labels != -100
            assert torch.equal(ids[supervised], labels[supervised])
            assert labels[supervised][-1] == tokenizer.eos_token_id
            assert int((ids == tokenizer.convert_tokens_to_ids("<image>")).sum()) == 576
            assert not supervised[ids == tokenizer.convert_tokens_to_ids("<image>")].any()

    def test_curriculum_starts_with_one_object_captions_and_no_background(self, processor):
        cfg = TrainConfig(batch_size=2, one_object_steps=2, few_objects_steps=6, background_steps=10)
        batches = Batches(cfg, processor)
        image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
        caption_ids = processor.tokenizer(CAPTION_QUESTION, add_special_tokens=False)["input_ids"]
        first = batches(0)
        index = {c: i for i, c in enumerate(CONCEPTS)}
        background = first["patch_concepts"][..., index["background"]]
        assert torch.equal(first["keep"], ~background)  # object patches only
        assert cfg.stage(0)["objects"] == 1 and cfg.stage(0)["text"] == 0.0
        for j in range(2):
            ids, positions = first["input_ids"][j], first["position_ids"][j]
            image = ids == image_id
            n = int(image.sum())
            assert n == int(first["keep"][j].sum()) < 576
            # the kept patches keep their place in the full sequence; the text after them continues at 2 + 576
            start = int(image.nonzero()[0])
            assert torch.equal(positions[image], start + first["keep"][j].nonzero()[:, 0])
            real = first["attention_mask"][j].bool()
            after = positions[real][start + n :]
            assert int(after[0]) == start + 576 and torch.equal(after, after[0] + torch.arange(len(after)))
            text = ids[real].tolist()
            assert any(text[i : i + len(caption_ids)] == caption_ids for i in range(len(text)))
        assert cfg.stage(4)["objects"] == (1, 3) and cfg.stage(6)["objects"] == (2, 6)
        middle = batches(5)  # background ramping in: some, not all
        kept_background = (middle["keep"] & middle["patch_concepts"][..., index["background"]]).sum()
        assert 0 < int(kept_background) < int(middle["patch_concepts"][..., index["background"]].sum())
        last = batches(10)
        assert last["keep"].all()
        assert torch.equal(last["position_ids"][0], torch.arange(last["input_ids"].shape[1]))

    def test_training_forward_equals_the_models_own_forward(self, processor):
        model = build_model(0).eval()
        cfg = TrainConfig(batch_size=2, **NO_CURRICULUM)
        batches = Batches(cfg, processor)
        batch = batches(0)  # every patch, positions 0..L-1
        with torch.no_grad():
            reference = model(
                input_ids=batch["input_ids"],
                pixel_values=batch["pixel_values"],
                attention_mask=batch["attention_mask"],
                labels=batch["labels"],
            ).loss
            parts = losses(model, batch, batches.concept_ids, cfg)
        assert batch["keep"].all()
        torch.testing.assert_close(parts["answer"], reference)
        assert parts["align"] > 0 and parts["cls"] > 0


class TestAttentionSupervision:
    SCENE = Scene(
        objects=(
            SceneObject.of("circle", "red", "medium", (60, 60)),
            SceneObject.of("circle", "blue", "small", (260, 60)),
            SceneObject.of("star", "green", "large", (80, 250)),
        ),
        texts=(TextItem("CAT", (250, 260), panel="white"),),
    )

    @pytest.mark.parametrize(
        ("question", "family", "target", "answer", "object_items", "sink"),
        [
            ("Is there a red circle in the image?", "existence", "red circle", "yes", {1: 1.0}, 0.0),
            ("Is there a red star in the image?", "existence", "red star", "no", {}, 1.0),
            ("What colour is the star?", "attribute", "green star", "green", {3: 1.0}, 0.0),
            ("How many circles are there in the image?", "counting", "circle", "2", {1: 1 / 3, 2: 1 / 3}, 1 / 3),
            ("How many shapes are there in the image?", "counting", None, "3", {1: 0.25, 2: 0.25, 3: 0.25}, 0.25),
            ("How many crosses are there in the image?", "counting", "cross", "0", {}, 1.0),
            ("What is written on the sign?", "text", "CAT", "CAT", {4: 1.0}, 0.0),
        ],
    )
    def test_the_answer_attends_to_what_the_question_is_about(
        self, question, family, target, answer, object_items, sink
    ):
        got = attention_targets(self.SCENE, Question(question, answer, family, (answer,), target=target))
        items, share = got["object"]
        assert items == pytest.approx(object_items) and share == pytest.approx(sink)
        assert "second" not in got

    def test_spatial_questions_attend_to_both_objects(self):
        yes_no = Question(
            "Is the red circle to the left of the blue circle?", "yes", "spatial", ("yes",),
            target="red circle|to the left of|blue circle",
        )  # fmt: skip
        assert attention_targets(self.SCENE, yes_no) == {"object": ({1: 1.0}, 0.0), "second": ({2: 1.0}, 0.0)}
        what = Question(
            "What is below the red circle?", "green star", "spatial", ("green star", "star"),
            target="?|below|red circle",
        )  # fmt: skip
        assert attention_targets(self.SCENE, what) == {"object": ({3: 1.0}, 0.0), "second": ({1: 1.0}, 0.0)}

    def test_every_generated_question_has_a_target_distribution(self):
        from tokenprune.scenes.train import _turns

        for seed in range(40):
            scene = make_dataset(1, seed=seed, split="train")[0].scene
            for question in _turns(scene, np.random.default_rng(seed), 12):
                for items, sink in attention_targets(scene, question).values():
                    assert sum(items.values()) + sink == pytest.approx(1.0)
                    for k in items:  # an object or sign, or the label of an object a text question reads
                        if isinstance(k, tuple):
                            assert question.family == "text" and k[0] == "label"
                            assert scene.objects[k[1] - 1].label == question.answer
                        else:
                            assert 1 <= k <= len(scene.objects) + len(scene.texts)
                if question.family == "existence":
                    assert (attention_targets(scene, question)["object"][1] == 1.0) == (question.answer == "no")

    def test_batch_rows_point_at_kept_patches_of_the_item_or_the_option(self, processor):
        batches = Batches(TrainConfig(batch_size=2), processor)
        batch = batches(900)
        tokenizer = processor.tokenizer
        image = batch["input_ids"] == batches.image_id
        assert (batch["slots"] >= 0).any()
        letters_seen = names_seen = 0
        for j in range(2):
            for r in torch.nonzero(batch["slots"][j] >= 0).flatten().tolist():
                row, query = batch["attention"][j, r], int(batch["queries"][j, r])
                assert row.sum() == pytest.approx(1.0)
                assert not row[query + 1 :].any()  # causal: nothing after the query position
                where = torch.nonzero(row).flatten()
                if int(batch["slots"][j, r]) == list(ATTENTION_SLOTS).index("letter"):  # an option's word
                    letters = tokenizer.convert_ids_to_tokens(batch["input_ids"][j, query - 2 : query].tolist())
                    assert where.tolist() == [query - 2] and letters[0] in "ABCD" and letters[1] == "."
                    letters_seen += 1
                    continue
                if int(batch["slots"][j, r]) == list(ATTENTION_SLOTS).index("name"):  # an object's name in a question
                    assert tokenizer.convert_ids_to_tokens(int(batch["input_ids"][j, query])) in SHAPES
                    assert batch["labels"][j, query] == -100 and batch["labels"][j, query + 1] == -100
                    assert all(int(w) == 0 or bool(image[j, w]) for w in where)  # the sink or visual tokens
                    names_seen += 1
                    continue
                assert tokenizer.convert_ids_to_tokens(int(batch["labels"][j, query + 1])) != "<pad>"
                if int(batch["slots"][j, r]) == list(ATTENTION_SLOTS).index("reference"):  # B's name
                    assert (
                        len(where) == 1
                        and tokenizer.convert_ids_to_tokens(int(batch["input_ids"][j, where[0]])) in SHAPES
                    )
                elif int(batch["slots"][j, r]) == list(ATTENTION_SLOTS).index("option"):
                    assert len(where) == 1 and not image[j, where[0]]
                else:
                    assert all(int(w) == 0 or bool(image[j, w]) for w in where)  # the sink or visual tokens
        assert letters_seen % 4 == 0 and letters_seen > 0  # four options per multiple-choice question
        assert names_seen > 0

    def test_a_question_that_reads_a_label_looks_at_the_labels_patches(self, processor):
        batches = Batches(TrainConfig(batch_size=1, text_probability=1.0, init="full task"), processor)
        tokenizer, checked = processor.tokenizer, 0
        head = len(tokenizer("USER:", add_special_tokens=False)["input_ids"])
        for index in range(20):
            e = batches.example(index)
            patch_of = np.flatnonzero(e["keep"])  # the patch of each visual token, in order
            for q, slot, row in zip(e["queries"], e["slots"], e["attention"], strict=True):
                question = tokenizer.decode(e["ids"][: q + 1]).rsplit("USER", 1)[-1]
                if slot != SLOT_INDEX["object"] or " is on the " not in question:
                    continue
                colour, shape = question.split(" is on the ", 1)[1].split("?", 1)[0].split()
                (k,) = [
                    k
                    for k, concepts in enumerate(e["named"], start=1)
                    if concepts[CONCEPTS.index(colour)] and concepts[CONCEPTS.index(shape)]
                ]
                assert (np.flatnonzero(row) >= head).all()  # visual tokens only
                looked = patch_of[np.flatnonzero(row) - head]
                assert set(looked) == set(np.flatnonzero(e["label_owner"] == k)) & set(patch_of)
                assert len(looked) < (e["owner"] == k).sum()  # not the whole object
                checked += 1
        assert checked >= 3

    def test_spatial_answers_carry_the_places_of_both_objects_and_agree_with_the_relation(self, processor):
        batches = Batches(TrainConfig(batch_size=1, init="full task"), processor)
        tokenizer, checked = processor.tokenizer, 0
        for index in range(12):
            e = batches.example(index)
            rows = zip(e["place_queries"], e["places"], e["relations"], e["kinds"], strict=True)
            for q, (xa, ya, xb, yb), (towards,), (kind,) in rows:
                assert e["labels"][q + 1] != -100  # a position that predicts an answer word
                text = tokenizer.decode(e["ids"][: q + 1]).rsplit("?", 1)[0].rsplit("\n", 1)[-1].rsplit("USER", 1)[-1]
                answer = tokenizer.convert_ids_to_tokens(e["labels"][q + 1])
                relation = next(r for r in ("left", "right", "above", "below") if r in text)
                truth = {"left": xa < xb, "right": xa > xb, "above": ya < yb, "below": ya > yb}[relation]
                assert truth == (answer != "no"), (text, answer, (xa, ya, xb, yb))  # "what is ...": A is the answer
                signed = {"left": xb - xa, "right": xa - xb, "above": yb - ya, "below": ya - yb}[relation]
                assert towards == pytest.approx(signed) and (towards > 0) == truth  # the relation term's target
                # the relation-kind term's class: which of the four relations the question asks
                assert kind == ["left", "right", "above", "below"].index(relation)
                assert min(xa, ya, xb, yb) > 0 and max(xa, ya, xb, yb) < 1
                checked += 1
        assert checked >= 5

    def test_each_present_named_object_carries_its_own_centre_at_its_name(self, processor):
        batches = Batches(TrainConfig(batch_size=1, init="full task"), processor)
        tokenizer, checked = processor.tokenizer, 0
        for index in range(12):
            e = batches.example(index)
            name_rows = {int(q) for q, s in zip(e["queries"], e["slots"], strict=True) if s == SLOT_INDEX["name"]}
            for q, (x, y) in zip(e["name_queries"], e["name_places"], strict=True):
                assert int(q) in name_rows  # where the name head looks at the object
                colour, shape = tokenizer.convert_ids_to_tokens(e["ids"][q - 1 : q + 1])
                # the one object with that name (existence and spatial questions name unique objects): the
                # centre of its patches is the centre of its box, to within a patch
                (k,) = [
                    k
                    for k, concepts in enumerate(e["named"], start=1)
                    if concepts[CONCEPTS.index(colour)] and concepts[CONCEPTS.index(shape)]
                ]
                rows, cols = np.divmod(np.flatnonzero(e["owner"] == k), GRID)
                assert (x, y) == pytest.approx(((cols.mean() + 0.5) / GRID, (rows.mean() + 0.5) / GRID), abs=1.0 / GRID)
                checked += 1
        assert checked >= 5

    def test_a_spatial_question_names_both_objects_and_its_answer_looks_at_the_reference_name(self, processor):
        batches = Batches(TrainConfig(batch_size=1, init="full task"), processor)
        tokenizer = processor.tokenizer
        question = Question(
            "Is the red circle to the left of the blue circle?", "yes", "spatial", ("yes",),
            target="red circle|to the left of|blue circle",
        )  # fmt: skip
        prompt = batches._ids("\n" + question.text + " ASSISTANT:")
        found = batches._named_positions(question, prompt)
        words = tokenizer.convert_ids_to_tokens(prompt)
        assert [(name, slot) for name, slot, _ in found] == [("red circle", "object"), ("blue circle", "second")]
        assert [words[at - 1 : at + 1] for *_, at in found] == [["red", "circle"], ["blue", "circle"]]
        absent = Question("Is there a green star in the image?", "no", "existence", ("no",), target="green star")
        prompt = batches._ids("\n" + absent.text + " ASSISTANT:")
        assert [(n, s) for n, s, _ in batches._named_positions(absent, prompt)] == [("green star", "object")]
        assert batches._named_positions(Question("What is written on the sign?", "CAT", "text", ("CAT",)), prompt) == []

    def test_attention_rows_equal_the_models_eager_attention(self, processor):
        model = build_model(0).eval()
        model.config.text_config._attn_implementation = "eager"
        batch = Batches(TrainConfig(batch_size=2), processor)(700)
        layer, head = ATTENTION_SLOTS["object"]
        attn = model.model.language_model.layers[layer].self_attn
        captured = {}
        hook = attn.register_forward_pre_hook(lambda m, a, k: captured.update(k), with_kwargs=True)
        with torch.no_grad():
            out = model.model.language_model(
                inputs_embeds=model.get_input_embeddings()(batch["input_ids"]),
                attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"],
                output_attentions=True,
            )
        hook.remove()
        queries = batch["queries"]
        mine = attention_rows(
            attn, captured["hidden_states"], captured["position_embeddings"], head, queries, batch["attention_mask"]
        ).exp()
        eager = out.attentions[layer][:, head]
        expected = eager.gather(1, queries[..., None].expand(-1, -1, eager.shape[-1]))
        torch.testing.assert_close(mine, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(not (MODEL_DIR / "config.json").is_file(), reason="the trained scene-llava is not in the package")
class TestShippedModel:
    @pytest.fixture(scope="class")
    def loaded(self):
        torch.manual_seed(0)
        return load_scene_model()

    def test_size_and_architecture(self, loaded):
        model, _ = loaded
        assert type(model).__name__ == "LlavaForConditionalGeneration"
        assert sum(f.stat().st_size for f in MODEL_DIR.iterdir()) < 20 * 2**20
        assert model.config.image_seq_length == 576

    def test_reads_the_image_on_held_out_questions(self, loaded):
        """Above the project's overall bar, text below it (docs/scene-model.md), and the answers come from the
        image: asked about another scene's image, the same questions score far less (measured 0.97 against
        0.18 here; per family existence, attribute, counting, spatial and multiple choice 1.0, text 0.8)."""
        model, processor = loaded
        samples = make_dataset(60, seed=11, split="test")  # 10 per family, not the README's test set
        right = evaluate(model, processor, samples, batch_size=20)
        other = evaluate(model, processor, samples, batch_size=20, other_images=True)
        assert set(right["families"]) == set(FAMILIES)
        assert right["overall"] >= 0.85, right["families"]
        assert right["overall"] - other["overall"] >= 0.6, (right["families"], other["families"])
        assert min(right["families"][f] for f in ("existence", "attribute", "counting")) >= 0.8, right["families"]
        assert right["families"]["multiple_choice"] >= 0.8, right["families"]
        assert right["families"]["spatial"] >= 0.7, right["families"]
        assert right["families"]["text"] >= 0.5, right["families"]  # it reads most signs, some labels

    def test_answers_a_hand_made_scene(self, loaded):
        """Questions of the kinds it reads (existence, shape, counting, places, the sign), on a scene drawn by
        hand."""
        model, processor = loaded
        scene = Scene(
            objects=(
                SceneObject.of("circle", "red", "large", (70, 80)),
                SceneObject.of("square", "blue", "large", (260, 90)),
                SceneObject.of("triangle", "green", "medium", (90, 260)),
            ),
            texts=(TextItem("CAT", (250, 260), panel="white"),),
        )
        image = render_scene(scene)
        cases = {
            "Is there a red circle in the image?": "yes",
            "Is there a green triangle in the image?": "yes",
            "What shape is the blue object?": "square",
            "How many shapes are there in the image?": "3",
            "How many circles are there in the image?": "1",
            "How many blue objects are there in the image?": "1",
            "Is the red circle to the left of the blue square?": "yes",
            "Is the blue square to the left of the red circle?": "no",
            "Is the green triangle above the red circle?": "no",
            "Is the green triangle below the red circle?": "yes",
            "What is written on the sign?": "CAT",
            "What does the white sign say?": "CAT",
        }
        samples = [HandSample(image, q, a) for q, a in cases.items()]
        result = evaluate(model, processor, samples)
        got = {p["question"]: p["prediction"] for p in result["predictions"]}
        assert got == cases


def test_training_resumes_exactly_and_workers_do_not_change_the_stream(tmp_path):
    cfg = TrainConfig(steps=2, batch_size=1, warmup=1, threads=1)
    straight = train(tmp_path / "straight", cfg, save_every=1, log_every=1)
    train(tmp_path / "resumed", TrainConfig(**{**cfg.__dict__, "steps": 1}), save_every=1, log_every=1)
    resumed = train(tmp_path / "resumed", cfg, save_every=1, log_every=1, workers=1)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name, rtol=0, atol=0)
    log = json.loads((tmp_path / "resumed" / "train_log.json").read_text())["log"]
    assert [entry["step"] for entry in log] == [1, 2]


def test_export_writes_the_trained_state_and_init_starts_from_it(tmp_path):
    cfg = TrainConfig(steps=1, batch_size=1, warmup=1, threads=1)
    trained = train(tmp_path / "run", cfg)
    model, _ = load_scene_model(export(tmp_path / "run", tmp_path / "exported"))
    for (name, a), b in zip(trained.state_dict().items(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name, rtol=0, atol=0)
    tuned = TrainConfig(steps=0, batch_size=1, threads=1, init=str(tmp_path / "exported"))
    assert tuned.stage(0) == TrainConfig().stage(10**6)  # the full task from the first step
    again = train(tmp_path / "tuned", tuned)
    for (name, a), b in zip(trained.state_dict().items(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name, rtol=0, atol=0)
    with pytest.raises(InputError, match="expected a training state"):
        export(tmp_path / "nowhere", tmp_path / "x")


def test_the_reading_stage_trains_the_vision_side_alone(tmp_path):
    cfg = TrainConfig(steps=1, batch_size=1, warmup=1, threads=1, vision_only=True, read_weight=1.0)
    with torch.no_grad():
        processor = build_processor()
        batches = Batches(cfg, processor)
        parts = losses(build_model(0), batches(0), batches.concept_ids, cfg)
    assert float(parts["answer"]) == float(parts["attention"]) == 0.0  # no language model forward
    assert parts["objects"] > 0 and parts["align"] > 0
    before = build_model(0).state_dict()
    after = train(tmp_path, cfg).state_dict()
    changed = {name.split(".")[1] for name in before if not torch.equal(before[name], after[name])}
    assert changed == {"vision_tower", "multi_modal_projector"}


def test_resuming_with_other_settings_is_refused(tmp_path):
    cfg = TrainConfig(steps=1, batch_size=1, warmup=1, threads=1)
    train(tmp_path, cfg)
    with pytest.raises(InputError, match=r"balance_patches.*new --out"):
        train(tmp_path, TrainConfig(**{**cfg.__dict__, "steps": 2, "balance_patches": False}))
    state = torch.load(tmp_path / "train_state.pt", weights_only=False)
    assert state["slots"] == ATTENTION_SLOTS
    del state["slots"]  # a state saved before the slots were recorded: the first three slots, no "letter"
    torch.save(state, tmp_path / "train_state.pt")
    with pytest.raises(InputError, match=r"attention slots.*new --out"):
        train(tmp_path, TrainConfig(**{**cfg.__dict__, "steps": 2}))
    state["slots"] = ATTENTION_SLOTS
    del state["probe"]["name_place.weight"], state["probe"]["name_place.bias"]  # saved before that probe
    torch.save(state, tmp_path / "train_state.pt")
    with pytest.raises(InputError, match=r"probes.*new --out"):
        train(tmp_path, TrainConfig(**{**cfg.__dict__, "steps": 2}))


def test_balanced_alignment_weighs_object_and_background_patches_equally(processor):
    model = build_model(0).eval()
    batches = Batches(TrainConfig(batch_size=2), processor)
    batch = batches(0)
    plain, balanced = TrainConfig(balance_patches=False), TrainConfig(balance_patches=True)
    with torch.no_grad():
        a = losses(model, batch, batches.concept_ids, plain)["align"]
        b = losses(model, batch, batches.concept_ids, balanced)["align"]
    assert not torch.isclose(a, b)

"""A real LlavaProcessor (PIL image processor, offline tokenizer, chat template) feeding tokenprune.apply."""

import numpy as np
import pytest
import torch

import tokenprune
from tokenprune.integrations import question_tokens
from tokenprune.testing.models import IMAGE_TOKEN, tiny_llava, tiny_llava_processor

Image = pytest.importorskip("PIL.Image")
GEN = {"max_new_tokens": 4, "do_sample": False}


@pytest.fixture(scope="module")
def model():
    return tiny_llava(seed=0)


@pytest.fixture(scope="module")
def batch(model):
    processor = tiny_llava_processor(model)
    images = [
        Image.fromarray((np.random.default_rng(i).random((40 + 10 * i, 50, 3)) * 255).astype("uint8")) for i in range(2)
    ]
    questions = ["what colour is the cube?", "what is the cube?"]
    chats = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}] for q in questions]
    texts = [processor.apply_chat_template(chat, add_generation_prompt=True) for chat in chats]
    return processor, processor(images=images, text=texts, padding=True, return_tensors="pt")


def test_processor_outputs_are_left_padded_with_one_span_per_image(batch):
    _, inputs = batch
    assert inputs["pixel_values"].shape == (2, 3, 28, 28)
    assert ((inputs["input_ids"] == IMAGE_TOKEN).sum(1) == 16).all()
    assert inputs["attention_mask"][:, -1].all() and not inputs["attention_mask"][1, 0]


def test_budget_one_is_stock_and_pruning_runs_on_processor_outputs(model, batch):
    processor, inputs = batch
    stock = model.generate(**inputs, **GEN)
    with tokenprune.apply(model, "zspa", budget=1.0):
        assert torch.equal(model.generate(**inputs, **GEN), stock)
    with tokenprune.apply(model, "zspa", budget=4, prompt_tokens=question_tokens(processor)) as session:
        out = model.generate(**inputs, **GEN)
    assert session.last.visual_after == [4, 4]
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    answers = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len(answers) == 2


def test_question_tokens_from_the_processor_mark_the_question_only(batch):
    processor, inputs = batch
    mask = question_tokens(processor)(inputs["input_ids"], inputs["attention_mask"])
    tokens = processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0][mask[0]].tolist())
    assert "".join(tokens).strip() == "what colour is the cube?"

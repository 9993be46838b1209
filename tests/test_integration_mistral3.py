"""tokenprune.apply on a tiny random Mistral3ForConditionalGeneration (Pixtral images of any size, written row by
row with a break after each row, patch merger, 1-D RoPE)."""

import pytest
import torch

import tokenprune
from tokenprune.integrations import get_adapter
from tokenprune.integrations.base import Layout, UnsupportedScoresError
from tokenprune.integrations.mistral3 import Mistral3Adapter
from tokenprune.testing import assert_adapter_contract
from tokenprune.testing.models import (
    IMAGE_TOKEN,
    MISTRAL_IMG_BREAK,
    MISTRAL_IMG_END,
    lm_input_lengths,
    pad_embeddings_left,
    tiny_mistral3,
    tiny_mistral3_inputs,
)

GEN = {"max_new_tokens": 6, "do_sample": False}
LAYOUTS = {
    "one image": ([[[5, 6], [7, 8]]], [(56, 112)]),  # 4 rows of 8 tokens
    "two rows": ([[[5, 6], [7, 8]], [[9], [10, 11, 12]]], [(42, 28), (56, 56)]),  # 6 and 16 tokens
    "two images in a row": ([[[5], [6, 7], [8]], [[9], [10, 11, 12]]], [(56, 112), (42, 28), (28, 56)]),
}


@pytest.fixture(scope="module")
def model():
    return tiny_mistral3(seed=0)


def test_the_builtin_adapter_is_used(model):
    assert type(get_adapter(model)) is Mistral3Adapter


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_adapter_contract(model, layout):
    assert_adapter_contract(model, tiny_mistral3_inputs(model, *LAYOUTS[layout]), generate_kwargs=GEN)


def test_an_image_is_all_its_rows_under_one_budget_and_its_breaks_stay(model):
    inputs = tiny_mistral3_inputs(model, *LAYOUTS["two images in a row"])
    with tokenprune.apply(model, "divprune", budget=0.25) as session:
        lengths, _ = lm_input_lengths(model, lambda: model.generate(**inputs, **GEN))
    assert session.last.visual_before == [32, 6, 8]
    assert session.last.visual_after == [8, 2, 2]
    assert lengths[0] == max(session.last.sequence_after)
    before, after = session.last.sequence_before, session.last.sequence_after
    assert [b - a for b, a in zip(before, after, strict=True)] == [32 - 8 + 6 - 2, 8 - 2]  # only placeholders go


def test_pruned_generation_equals_the_lm_fed_text_plus_kept_tokens_directly(model):
    """The ideal: the short sequence built by hand from the stock features and the kept indices; the row breaks
    stay where they were, as text."""
    inputs = tiny_mistral3_inputs(model, *LAYOUTS["two images in a row"])
    with tokenprune.apply(model, "zspa", budget=5, core_ratio=0.4) as session:
        out = model.generate(**inputs, **GEN)
    new_tokens = out[:, inputs["input_ids"].shape[1] :]

    features = iter(
        model.model.get_image_features(
            inputs["pixel_values"], inputs["image_sizes"], vision_feature_layer=-1
        ).pooler_output
    )
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    kept, rows = iter(session.last.kept), []
    for b in range(inputs["input_ids"].shape[0]):
        real = inputs["attention_mask"][b].bool()
        ids, emb = inputs["input_ids"][b][real], embeds[b][real]
        placeholders = (ids == IMAGE_TOKEN).nonzero()[:, 0].tolist()
        chosen, start = {}, 0  # position -> the feature that stays there
        while start < len(placeholders):
            image = next(features)
            positions = placeholders[start : start + image.shape[0]]
            chosen.update({positions[k]: image[k] for k in next(kept).tolist()})
            start += image.shape[0]
        text = (ids != IMAGE_TOKEN).tolist()
        rows.append(torch.stack([chosen.get(p, emb[p]) for p in range(len(ids)) if text[p] or p in chosen]))
    short, mask = pad_embeddings_left(rows)
    assert mask.sum(1).tolist() == session.last.sequence_after
    assert torch.equal(new_tokens, model.generate(inputs_embeds=short, attention_mask=mask, **GEN))


def test_the_row_breaks_are_never_prompt_text(model):
    inputs = tiny_mistral3_inputs(model, *LAYOUTS["two images in a row"])
    assert {MISTRAL_IMG_BREAK, MISTRAL_IMG_END} <= set(inputs["input_ids"].flatten().tolist())
    layout = Layout.locate(get_adapter(model), inputs["input_ids"], inputs["attention_mask"], None)
    assert set(inputs["input_ids"][layout.prompt_mask].tolist()) == {5, 6, 7, 8, 9, 10, 11, 12}


def test_fastv_prunes_inside_the_language_model(model):
    inputs = tiny_mistral3_inputs(model, *LAYOUTS["two rows"])
    stock = model.generate(**inputs, **GEN)
    with tokenprune.apply(model, "fastv", layer=1, budget=1.0):
        assert torch.equal(model.generate(**inputs, **GEN), stock)
    with tokenprune.apply(model, "fastv", layer=1, budget=4) as session:
        model.generate(**inputs, **GEN)
    assert session.last.visual_before == [6, 16]
    assert session.last.visual_after == [4, 4]


@pytest.mark.parametrize("method", ["fastervlm", "visionzip"])
def test_cls_attention_methods_are_refused(model, method):
    with (
        pytest.raises(UnsupportedScoresError, match="Pixtral vision encoder has no CLS token"),
        tokenprune.apply(model, method, budget=4),
    ):
        pytest.fail("refused before the block runs")


def test_image_sizes_that_are_missing_or_of_another_shape_are_refused_clearly(model):
    inputs = tiny_mistral3_inputs(model, *LAYOUTS["two rows"])
    for sizes, got in [(None, "NoneType"), (inputs["image_sizes"].flatten(), r"\(4,\)")]:
        with (
            tokenprune.apply(model, "zspa", budget=0.5),
            pytest.raises(tokenprune.InputError, match=rf"image_sizes of shape \(images, 2\).*got {got}"),
        ):
            model.generate(**{**inputs, "image_sizes": sizes}, **GEN)


# Pixtral-12B as transformers publishes it: a LlavaForConditionalGeneration with a Pixtral tower (one token a patch)
PIXTRAL_LAYOUTS = {
    "two rows": ([[[5, 6], [7, 8]], [[9], [10, 11, 12]]], [(42, 28), (56, 56)]),  # 6 and 16 tokens
    "two images in a row": ([[[5], [6, 7], [8]], [[9], [10, 11, 12]]], [(56, 70), (42, 28), (28, 56)]),
}


@pytest.fixture(scope="module")
def pixtral():
    from tokenprune.testing.models import tiny_pixtral_llava

    return tiny_pixtral_llava(seed=0)


@pytest.mark.parametrize("layout", list(PIXTRAL_LAYOUTS))
def test_pixtral_as_a_llava_keeps_the_adapter_contract(pixtral, layout):
    assert_adapter_contract(pixtral, tiny_mistral3_inputs(pixtral, *PIXTRAL_LAYOUTS[layout]), generate_kwargs=GEN)


def test_pixtral_as_a_llava_counts_its_images_tokens_from_their_sizes_for_fastv(pixtral):
    """FastV finds each image's placeholders without encoding it: from image_sizes, not a CLIP tile's patches."""
    inputs = tiny_mistral3_inputs(pixtral, *PIXTRAL_LAYOUTS["two images in a row"])
    assert get_adapter(pixtral).image_token_counts(inputs) == [20, 6, 8]
    stock = pixtral.generate(**inputs, **GEN)
    with tokenprune.apply(pixtral, "fastv", layer=1, budget=1.0):
        assert torch.equal(pixtral.generate(**inputs, **GEN), stock)
    with tokenprune.apply(pixtral, "fastv", layer=1, budget=0.5) as session:
        pixtral.generate(**inputs, **GEN)
    assert session.last.visual_before == [20, 6, 8] and session.last.visual_after == [10, 3, 4]
    layout = Layout.locate(get_adapter(pixtral), inputs["input_ids"], inputs["attention_mask"], None)
    assert set(inputs["input_ids"][layout.prompt_mask].tolist()) == {5, 6, 7, 8, 9, 10, 11, 12}  # no row breaks


@pytest.mark.parametrize("method", ["fastervlm", "visionzip"])
def test_pixtral_as_a_llava_refuses_cls_attention_methods(pixtral, method):
    with (
        pytest.raises(UnsupportedScoresError, match="Pixtral vision encoder has no CLS token"),
        tokenprune.apply(pixtral, method, budget=4),
    ):
        pytest.fail("refused before the block runs")

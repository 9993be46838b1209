"""tokenprune.apply on a tiny random Gemma3ForConditionalGeneration: pooled SigLIP tokens that attend to each other
in both directions (``token_type_ids``), sliding-window and full-attention layers."""

import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

import tokenprune
from tokenprune.integrations import get_adapter
from tokenprune.integrations.base import Layout, UnsupportedScoresError
from tokenprune.integrations.gemma3 import Gemma3Adapter
from tokenprune.testing import assert_adapter_contract
from tokenprune.testing.models import GEMMA_BLANK, GEMMA_BOI, GEMMA_EOI, IMAGE_TOKEN, tiny_gemma3, tiny_gemma3_inputs

GEN = {"max_new_tokens": 6, "do_sample": False}
LAYOUTS = {
    "one image": [[[5, 6], [7, 8]]],
    "two rows": [[[5, 6], [7, 8]], [[9], [10, 11, 12]]],
    "two images in a row": [[[5], [6, 7], [8]], [[9], [10, 11, 12]]],
}


@pytest.fixture(scope="module")
def model():
    return tiny_gemma3(seed=0)


def test_the_builtin_adapter_is_used_and_the_image_markers_are_not_prompt_text(model):
    """The markers are named by the config; the blank lines the processor writes around an image are left out by
    where they stand, and a blank line of the question's own stays."""
    adapter = get_adapter(model)
    assert type(adapter) is Gemma3Adapter and {GEMMA_BOI, GEMMA_EOI} <= adapter.special_token_ids()
    inputs = tiny_gemma3_inputs(model, [[[5, GEMMA_BLANK, 6], [7, 8]], [[9], [10, 11, 12]]])
    layout = Layout.locate(adapter, inputs["input_ids"], inputs["attention_mask"], None)
    prompt = [inputs["input_ids"][b][layout.prompt_mask[b]].tolist() for b in range(2)]
    assert prompt == [[5, GEMMA_BLANK, 6, 7, 8], [9, 10, 11, 12]]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_adapter_contract(model, layout):
    assert_adapter_contract(model, tiny_gemma3_inputs(model, LAYOUTS[layout]), generate_kwargs=GEN)


def test_pruned_generation_equals_stock_fed_the_kept_tokens_as_one_bidirectional_block(model):
    """The ideal, built by hand: text + kept placeholders, the stock features at the kept tokens, and
    token_type_ids marking the kept tokens of each image (so they still attend to each other both ways)."""
    inputs = tiny_gemma3_inputs(model, LAYOUTS["two images in a row"])
    with tokenprune.apply(model, "zspa", budget=5, core_ratio=0.4) as session:
        out = model.generate(**inputs, **GEN)
    new_tokens = out[:, inputs["input_ids"].shape[1] :]

    features = model.model.get_image_features(inputs["pixel_values"]).pooler_output  # (images, 16, D)
    kept = iter(session.last.kept)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    rows, chosen = [], []
    for b in range(ids.shape[0]):
        keep = mask[b].bool() & (ids[b] != IMAGE_TOKEN)
        placeholders = (ids[b] == IMAGE_TOKEN).nonzero()[:, 0]
        for start in range(0, len(placeholders), features.shape[1]):  # this row's images, 16 tokens each
            index = next(kept)
            keep[placeholders[start : start + features.shape[1]][index]] = True
            chosen.append(features[len(chosen)][index])
        rows.append(ids[b][keep])
    width = max(len(r) for r in rows)
    short = torch.zeros(len(rows), width, dtype=torch.long)
    short_mask = torch.zeros_like(short)
    for b, row in enumerate(rows):
        short[b, width - len(row) :], short_mask[b, width - len(row) :] = row, 1
    encoded = {"image": BaseModelOutputWithPooling(pooler_output=torch.cat(chosen)[None])}
    types = (short == IMAGE_TOKEN).long()
    ideal = model.generate(
        input_ids=short, attention_mask=short_mask, token_type_ids=types, mm_encoder_outputs=encoded, **GEN
    )
    assert torch.equal(new_tokens, ideal[:, width:])

    # the bidirectional blocks matter: the same short sequence attended causally predicts otherwise
    both = model(input_ids=short, attention_mask=short_mask, token_type_ids=types, mm_encoder_outputs=encoded)
    causal = model(input_ids=short, attention_mask=short_mask, mm_encoder_outputs=encoded)
    assert not torch.allclose(both.logits[:, -1], causal.logits[:, -1], atol=1e-4)


def test_fastv_is_refused_because_sliding_window_layers_follow(model):
    with (
        pytest.raises(tokenprune.InputError, match=r"layers \[2\] attend within a sliding window"),
        tokenprune.apply(model, "fastv", layer=1, budget=4),
    ):
        pytest.fail("refused before the block runs")


@pytest.mark.parametrize("method", ["fastervlm", "visionzip"])
def test_cls_attention_methods_are_refused(model, method):
    with (
        pytest.raises(UnsupportedScoresError, match="SigLIP vision encoder has no CLS token"),
        tokenprune.apply(model, method, budget=4),
    ):
        pytest.fail("refused before the block runs")


def test_token_type_ids_of_another_shape_are_refused_clearly(model):
    inputs = tiny_gemma3_inputs(model, LAYOUTS["two rows"])
    short = {**inputs, "token_type_ids": inputs["token_type_ids"][:, 1:]}
    with (
        tokenprune.apply(model, "zspa", budget=0.5),
        pytest.raises(
            tokenprune.InputError, match=r"token_type_ids must be \(B, L\) like input_ids \(2, 25\); got \(2, 24\)"
        ),
    ):
        model.generate(**short, **GEN)


def test_a_method_of_caller_scores_is_pointed_to_methods_this_model_can_run(model):
    with (
        pytest.raises(
            UnsupportedScoresError,
            match=r"e\.g\. 'zspa', 'divprune'\); this model has no vision \[CLS\] attention to give \(the SigLIP",
        ),
        tokenprune.apply(model, "attention", budget=4),
    ):
        pytest.fail("refused before the block runs")

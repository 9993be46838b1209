"""tokenprune.apply on a tiny random Glm4vForConditionalGeneration (GLM-4.1V: Qwen2-VL-like images, 3-D M-RoPE; a
video's frames written with the image placeholder and told apart by mm_token_type_ids)."""

import pytest
import torch

import tokenprune
from tokenprune.integrations import get_adapter
from tokenprune.integrations.base import Layout, UnsupportedScoresError
from tokenprune.integrations.glm4v import Glm4vAdapter
from tokenprune.testing import assert_adapter_contract
from tokenprune.testing.models import (
    GLM_TIMESTAMP,
    IMAGE_TOKEN,
    QWEN_VISION_END,
    QWEN_VISION_START,
    tiny_glm4v,
    tiny_glm4v_inputs,
)

GEN = {"max_new_tokens": 6, "do_sample": False}
SCORED = {**GEN, "output_scores": True, "return_dict_in_generate": True}
CASES = {
    "images": ([[[1, 5, 6], [7, 8]], [[1, 9], [10, 11, 12]]], [(1, 4, 6), (1, 6, 4)], False),
    "two images in a row": ([[[1, 5], [6], [7]], [[1, 9], [10, 11, 12]]], [(1, 4, 6), (1, 6, 4), (1, 6, 6)], False),
    "videos": ([[[1, 5, 6], [7, 8]], [[1, 9], [10, 11, 12]]], [(2, 4, 6), (3, 4, 4)], True),
}


@pytest.fixture(scope="module", params=["glm-4.1v", "glm-4.5v moe"])
def model(request):
    return tiny_glm4v(seed=0, moe=request.param.endswith("moe"))


def inputs_of(model, case):
    prompts, grids, video = CASES[case]
    return tiny_glm4v_inputs(model, prompts, grids, video=video)


def test_the_builtin_adapter_is_used_and_the_markers_are_not_prompt_text(model):
    assert type(get_adapter(model)) is Glm4vAdapter
    inputs = inputs_of(model, "videos")
    layout = Layout.locate(get_adapter(model), inputs["input_ids"], inputs["attention_mask"], None)
    prompt = set(inputs["input_ids"][layout.prompt_mask].tolist())
    assert prompt == {5, 6, 7, 8, 9, 10, 11, 12, GLM_TIMESTAMP}  # the frames' timestamps are text
    assert not prompt & {1, QWEN_VISION_START, QWEN_VISION_END, IMAGE_TOKEN}


@pytest.mark.parametrize("case", list(CASES))
def test_the_adapter_contract(model, case):
    # stock beam search on videos fails in transformers (its copies look for the config's unused video placeholder):
    # checked below against the ideal
    assert_adapter_contract(model, inputs_of(model, case), generate_kwargs=GEN, beams=not CASES[case][2])


def test_beam_search_on_videos_equals_the_stock_lm_given_every_token(model):
    """Stock beam search on videos fails in transformers, so the reference is the ideal with every token kept: the
    full sequence's embeddings and positions built by hand, through stock generate."""
    inputs = inputs_of(model, "videos")
    beams = {**GEN, "num_beams": 2, "num_return_sequences": 2, "output_logits": True, "return_dict_in_generate": True}
    with tokenprune.apply(model, "zspa", budget=1.0) as session:
        ours = model.generate(**inputs, **beams)
    short, mask, positions = ideal_short_sequence(model, inputs, session.last.kept)
    assert mask.shape == inputs["attention_mask"].shape  # every token
    ideal = model.generate(inputs_embeds=short, attention_mask=mask, position_ids=positions, **beams)
    assert torch.equal(ours.sequences[:, inputs["input_ids"].shape[1] :], ideal.sequences)
    torch.testing.assert_close(ours.logits[0], ideal.logits[0], rtol=1e-5, atol=1e-5)
    with tokenprune.apply(model, "zspa", budget=0.25) as session:
        pruned = model.generate(**inputs, **beams)
    short, mask, positions = ideal_short_sequence(model, inputs, session.last.kept)
    ideal = model.generate(inputs_embeds=short, attention_mask=mask, position_ids=positions, **beams)
    assert torch.equal(pruned.sequences[:, inputs["input_ids"].shape[1] :], ideal.sequences)


def test_a_video_is_one_visual_input_over_its_frames(model):
    inputs = inputs_of(model, "videos")
    with tokenprune.apply(model, "divprune", budget=0.25) as session:
        model.generate(**inputs, **GEN)
    assert session.last.visual_before == [12, 12]  # 2 x 4 x 6 / 4, 3 x 4 x 4 / 4
    assert session.last.visual_after == [3, 3]


def ideal_short_sequence(model, inputs, kept):
    """The kept features in the kept placeholders' slots, every kept token at the position the model's own
    get_rope_index gives the full sequence: ``inputs_embeds``, ``attention_mask``, ``(4, B, L')`` positions."""
    video = "pixel_values_videos" in inputs
    grids = inputs["video_grid_thw" if video else "image_grid_thw"]
    if video:
        encoded = model.model.get_video_features(inputs["pixel_values_videos"], grids).pooler_output
    else:
        encoded = model.model.get_image_features(inputs["pixel_values"], grids).pooler_output
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    positions, _ = model.model.get_rope_index(
        ids,
        inputs["mm_token_type_ids"],
        image_grid_thw=None if video else grids,
        video_grid_thw=grids if video else None,
        attention_mask=mask,
    )
    embeds = model.get_input_embeddings()(ids)
    features, kept, rows = iter(encoded), iter(kept), []
    for b in range(ids.shape[0]):
        keep = mask[b].bool() & (ids[b] != IMAGE_TOKEN)
        row = embeds[b].clone()
        placeholders = (ids[b] == IMAGE_TOKEN).nonzero()[:, 0]
        start = 0
        while start < placeholders.shape[0]:
            feats = next(features)
            span = placeholders[start : start + feats.shape[0]]
            row[span] = feats
            keep[span[next(kept)]] = True
            start += feats.shape[0]
        rows.append((row[keep], positions[:, b, keep]))
    width = max(r.shape[0] for r, _ in rows)
    short = torch.zeros(len(rows), width, embeds.shape[-1])
    short_mask = torch.zeros(len(rows), width, dtype=torch.long)
    short_positions = torch.zeros(4, len(rows), width, dtype=torch.long)
    for b, (row, row_positions) in enumerate(rows):
        n = row.shape[0]
        short[b, width - n :], short_mask[b, width - n :] = row, 1
        short_positions[0, b, width - n :] = torch.arange(n)
        short_positions[1:, b, width - n :] = row_positions
    return short, short_mask, short_positions


@pytest.mark.parametrize("case", ["two images in a row", "videos"])
def test_pruned_generation_equals_the_lm_fed_text_plus_k_with_original_positions(model, case):
    """The ideal, built by hand: the kept features in the kept placeholders' slots, every kept token at the
    position the model's own get_rope_index gives the full sequence."""
    inputs = inputs_of(model, case)
    with tokenprune.apply(model, "zspa", budget=5, core_ratio=0.4) as session:
        out = model.generate(**inputs, **SCORED)
    new_tokens = out.sequences[:, inputs["input_ids"].shape[1] :]

    short, short_mask, short_positions = ideal_short_sequence(model, inputs, session.last.kept)
    assert short_mask.sum(1).tolist() == session.last.sequence_after
    ideal = model.generate(inputs_embeds=short, attention_mask=short_mask, position_ids=short_positions, **SCORED)
    assert torch.equal(new_tokens, ideal.sequences)
    for a, b in zip(out.scores, ideal.scores, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["images", "videos"])
def test_fastv_prunes_inside_the_language_model(model, case):
    inputs = inputs_of(model, case)
    stock = model.generate(**inputs, **GEN)
    with tokenprune.apply(model, "fastv", layer=1, budget=1.0):
        assert torch.equal(model.generate(**inputs, **GEN), stock)
    with tokenprune.apply(model, "fastv", layer=1, budget=4) as session:
        model.generate(**inputs, **GEN)
    assert session.last.visual_after == [4, 4]


def test_images_and_videos_in_one_call_are_refused_with_the_reason(model):
    images, videos = inputs_of(model, "images"), inputs_of(model, "videos")
    mixed = {**videos, "pixel_values": images["pixel_values"], "image_grid_thw": images["image_grid_thw"]}
    with (
        tokenprune.apply(model, "zspa", budget=0.5),
        pytest.raises(tokenprune.InputError, match="both images and videos does not run in transformers' GLM-4V"),
    ):
        model.generate(**mixed, **GEN)


def test_a_call_without_mm_token_type_ids_is_refused_clearly(model):
    inputs = {k: v for k, v in inputs_of(model, "videos").items() if k != "mm_token_type_ids"}
    with (
        tokenprune.apply(model, "zspa", budget=0.5),
        pytest.raises(tokenprune.InputError, match=r"needs mm_token_type_ids shaped like input_ids .* got NoneType"),
    ):
        model.generate(**inputs, **GEN)


@pytest.mark.parametrize("method", ["fastervlm", "visionzip"])
def test_cls_attention_methods_are_refused(model, method):
    with (
        pytest.raises(UnsupportedScoresError, match="no CLS token"),
        tokenprune.apply(model, method, budget=4),
    ):
        pytest.fail("refused before the block runs")

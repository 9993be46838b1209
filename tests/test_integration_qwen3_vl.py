"""tokenprune.apply on a tiny random Qwen3VLForConditionalGeneration: DeepStack features, 3-D interleaved M-RoPE,
and videos written frame by frame (a timestamp before each temporal patch)."""

import pytest
import torch

import tokenprune
from tokenprune.integrations import get_adapter
from tokenprune.integrations.base import UnsupportedScoresError
from tokenprune.integrations.qwen3_vl import Qwen3VLAdapter
from tokenprune.testing import assert_adapter_contract
from tokenprune.testing.models import (
    IMAGE_TOKEN,
    QWEN_VIDEO_TOKEN,
    tiny_qwen2_5_vl_inputs,
    tiny_qwen3_vl,
)

GEN = {"max_new_tokens": 6, "do_sample": False}
MULTI = [[[5, 6], [7, 8, 9], [10, 11]], [[23, 24], [64, 3, 55]]]  # row 0: two inputs, row 1: one
CASES = {
    "images": ([[[5, 17, 9], [41, 8]], [[23], [64, 3, 55]]], [(1, 4, 6), (1, 6, 4)], None),
    "videos": ([[[5, 17, 9], [41, 8]], [[23], [64, 3, 55]]], [(2, 4, 4), (3, 4, 6)], ["video", "video"]),
    "an image, a video, an image": (MULTI, [(1, 4, 8), (2, 6, 4), (1, 4, 12)], ["image", "video", "image"]),
}


@pytest.fixture(scope="module")
def model():
    return tiny_qwen3_vl(seed=1, layers=3)


def case_inputs(model, case):
    prompts, grids, kinds = CASES[case]
    return tiny_qwen2_5_vl_inputs(model, prompts, grids, kinds=kinds)


def test_the_builtin_adapter_is_used(model):
    assert type(get_adapter(model)) is Qwen3VLAdapter


@pytest.mark.parametrize("case", list(CASES))
def test_the_adapter_contract(model, case):
    """Budget 1.0 == stock (beams too), lengths, stats, forward with labels, static cache, restoring, text-only."""
    assert_adapter_contract(model, case_inputs(model, case), generate_kwargs=GEN)


def test_a_video_is_one_input_over_its_frames(model):
    """Its frames are separate runs (a timestamp before each), but one budget covers them all."""
    inputs = case_inputs(model, "videos")
    starts = (inputs["input_ids"][1] == QWEN_VIDEO_TOKEN).long().diff().eq(1).sum()
    assert int(starts) == 3  # the (3, 4, 6) video: three runs of 6 tokens
    with tokenprune.apply(model, "divprune", budget=0.25) as session:
        model.generate(**inputs, **GEN)
    assert session.last.visual_before == [8, 18] and session.last.visual_after == [2, 5]


@pytest.mark.parametrize("case", ["images", "an image, a video, an image"])
def test_pruned_generation_equals_stock_fed_the_kept_tokens_and_their_deepstack_features(model, case):
    """The ideal, built by hand: the short sequence (text + kept placeholders), the stock encoder's features and
    DeepStack features at the kept tokens, and the full sequence's M-RoPE positions at the kept tokens."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

    inputs = case_inputs(model, case)
    with tokenprune.apply(model, "zspa", budget=3, core_ratio=0.4) as session:
        out = model.generate(**inputs, **GEN)
    new_tokens = out[:, inputs["input_ids"].shape[1] :]

    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    positions, _ = model.model.get_rope_index(
        ids,
        inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"),
        attention_mask=mask,
    )
    encoded, order = {}, []
    for token, kind, pixels, grid, encode in (
        (IMAGE_TOKEN, "image", "pixel_values", "image_grid_thw", model.model.get_image_features),
        (QWEN_VIDEO_TOKEN, "video", "pixel_values_videos", "video_grid_thw", model.model.get_video_features),
    ):
        if pixels in inputs:
            encoded[token] = (kind, encode(inputs[pixels], inputs[grid]), iter(range(len(inputs[grid]))))
    kept = iter(session.last.kept)
    rows, short_features = [], {"image": ([], []), "video": ([], [])}
    for b in range(ids.shape[0]):
        keep = mask[b].bool() & (ids[b] != IMAGE_TOKEN) & (ids[b] != QWEN_VIDEO_TOKEN)
        visual = ((ids[b] == IMAGE_TOKEN) | (ids[b] == QWEN_VIDEO_TOKEN)).nonzero()[:, 0]
        offset = 0
        while offset < len(visual):  # this row's inputs in placeholder order
            kind, out_, index = encoded[int(ids[b, visual[offset]])]
            i = next(index)
            features = out_.pooler_output[i]
            chosen = next(kept)
            keep[visual[offset : offset + len(features)][chosen]] = True
            short_features[kind][0].append(features[chosen])
            short_features[kind][1].append([layer[i][chosen] for layer in out_.deepstack_features])
            order.append(kind)
            offset += len(features)
        rows.append((ids[b][keep], positions[:, b, keep]))
    width = max(len(r[0]) for r in rows)
    short = torch.zeros(len(rows), width, dtype=torch.long)
    short_mask = torch.zeros_like(short)
    short_positions = torch.zeros(4, len(rows), width, dtype=torch.long)
    for b, (row_ids, row_positions) in enumerate(rows):
        n = len(row_ids)
        short[b, width - n :], short_mask[b, width - n :] = row_ids, 1
        short_positions[0, b, width - n :] = torch.arange(n)
        short_positions[1:, b, width - n :] = row_positions
    mm = {
        kind: BaseModelOutputWithDeepstackFeatures(
            pooler_output=features, deepstack_features=[list(layer) for layer in zip(*deep, strict=True)]
        )
        for kind, (features, deep) in short_features.items()
        if features
    }
    ideal = model.generate(
        input_ids=short, attention_mask=short_mask, position_ids=short_positions, mm_encoder_outputs=mm, **GEN
    )
    assert torch.equal(new_tokens, ideal[:, width:])

    # the DeepStack features matter: with zeros at the kept tokens instead, the model predicts otherwise
    flat = {
        kind: BaseModelOutputWithDeepstackFeatures(
            pooler_output=o.pooler_output,
            deepstack_features=[[torch.zeros_like(t) for t in layer] for layer in o.deepstack_features],
        )
        for kind, o in mm.items()
    }
    first = model(input_ids=short, attention_mask=short_mask, position_ids=short_positions, mm_encoder_outputs=mm)
    other = model(input_ids=short, attention_mask=short_mask, position_ids=short_positions, mm_encoder_outputs=flat)
    assert not torch.allclose(first.logits[:, -1], other.logits[:, -1], atol=1e-4)


def test_fastv_prunes_only_after_the_deepstack_layers(model):
    inputs = case_inputs(model, "an image, a video, an image")
    with (
        pytest.raises(
            tokenprune.InputError, match=r"fastv layer=1 would drop visual tokens before layer 2 .*DeepStack"
        ),
        tokenprune.apply(model, "fastv", layer=1, budget=0.5),
    ):
        pytest.fail("refused before the block runs")
    stock = model.generate(**inputs, **GEN)
    with tokenprune.apply(model, "fastv", layer=2, budget=1.0):
        assert torch.equal(model.generate(**inputs, **GEN), stock)
    with tokenprune.apply(model, "fastv", layer=2, budget=0.25) as session:
        model.generate(**inputs, **GEN)
    assert session.last.visual_before == [8, 12, 12] and session.last.visual_after == [2, 3, 3]


@pytest.mark.parametrize("method", ["fastervlm", "visionzip"])
def test_cls_attention_methods_are_refused(model, method):
    with pytest.raises(UnsupportedScoresError, match="no CLS token"), tokenprune.apply(model, method, budget=4):
        pytest.fail("refused before the block runs")

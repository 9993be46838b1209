"""tokenprune.apply on a tiny random LlavaOnevisionForConditionalGeneration: anyres images (shrunk by bilinear
interpolation past ``anyres_max_N``), several images in a prompt, and videos, with image_newline tokens."""

import pytest
import torch

import tokenprune
from tokenprune.integrations import get_adapter
from tokenprune.integrations.base import UnsupportedScoresError
from tokenprune.integrations.llava_onevision import LlavaOnevisionAdapter
from tokenprune.testing import assert_adapter_contract
from tokenprune.testing.models import (
    IMAGE_TOKEN,
    ONEVISION_VIDEO_TOKEN,
    pad_embeddings_left,
    tiny_llava_onevision,
    tiny_llava_onevision_inputs,
)

GEN = {"max_new_tokens": 6, "do_sample": False}
LAYOUTS = {
    # one image per row, each shrunk by the anyres_max_1 interpolation: 28 and 31 tokens
    "images": ([[[5, 6], [7, 8]], [[9], [10, 11, 12]]], [("image", (60, 100)), ("image", (100, 40))]),
    # row 0 holds two images side by side (base tile + newline each), row 1 one image (all its tiles)
    "several images in a prompt": (
        [[[5, 6], [], [7, 8]], [[9], [10, 11, 12]]],
        [("image", (60, 100)), ("image", (100, 40)), ("image", (50, 50))],
    ),
    "videos": ([[[5, 6], [7, 8]], [[9], [10, 11, 12]]], [("video", 3), ("video", 3)]),
    # an image and a video side by side, and two videos side by side before an image
    "images and videos": (
        [[[5, 6], [], [7, 8]], [[9], [], [], [10, 11, 12]]],
        [("image", (60, 100)), ("video", 3), ("video", 3), ("video", 3), ("image", (50, 50))],
    ),
}


@pytest.fixture(scope="module")
def model():
    return tiny_llava_onevision(seed=0)


def layout_inputs(model, layout, **kwargs):
    return tiny_llava_onevision_inputs(model, *LAYOUTS[layout], **kwargs)


def stock_features(model, inputs):
    """Each image's and video's packed features from the stock model, in placeholder order."""
    encoded = {}
    if "pixel_values" in inputs:
        encoded[IMAGE_TOKEN] = iter(
            model.model.get_image_features(
                inputs["pixel_values"], inputs["image_sizes"], batch_num_images=inputs["batch_num_images"]
            ).pooler_output
        )
    if "pixel_values_videos" in inputs:
        encoded[ONEVISION_VIDEO_TOKEN] = iter(
            model.model.get_video_features(inputs["pixel_values_videos"]).pooler_output
        )
    order = []
    for b in range(inputs["input_ids"].shape[0]):
        ids = inputs["input_ids"][b][inputs["attention_mask"][b].bool()].tolist()
        i = 0
        while i < len(ids):
            if ids[i] in encoded:
                features = next(encoded[ids[i]])
                order.append((ids[i], features))
                i += features.shape[0]
            else:
                i += 1
    return order


def newline_masks(model, inputs):
    """Each input's image_newline positions in the stock features (the model copies the newline verbatim)."""
    return [(f == model.model.image_newline.to(f)).all(-1) for _, f in stock_features(model, inputs)]


def test_the_builtin_adapter_is_used_and_videos_are_placeholders(model):
    adapter = get_adapter(model)
    assert type(adapter) is LlavaOnevisionAdapter
    assert adapter.placeholder_ids == (IMAGE_TOKEN, ONEVISION_VIDEO_TOKEN)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_adapter_contract(model, layout):
    """Budget 1.0 == stock, prefill sees text + K + newlines, stats, forward with labels, restoring, text-only."""
    assert_adapter_contract(model, layout_inputs(model, layout), generate_kwargs=GEN, methods=("zspa", "divprune"))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_newlines_are_found_exactly_and_always_kept(model, layout):
    """The adapter's protected tokens are the stock features' newlines (interpolated grids, base tiles of a
    several-image prompt, the one newline closing a video), and a ratio budget counts the other tokens."""
    inputs = layout_inputs(model, layout)
    masks = newline_masks(model, inputs)
    adapter = get_adapter(model)
    for protected in (adapter.encode_images(inputs).protected, adapter.protected_tokens(inputs)):
        assert [p.tolist() for p in protected] == [m.tolist() for m in masks]
    with tokenprune.apply(model, "divprune", budget=0.25) as session:
        model.generate(**inputs, **GEN)
    patches = [int((~m).sum()) for m in masks]
    assert session.last.visual_after == [
        int(p * 0.25 + 0.5) + int(m.sum()) for p, m in zip(patches, masks, strict=True)
    ]
    for kept, mask in zip(session.last.kept, masks, strict=True):
        assert set(mask.nonzero()[:, 0].tolist()) <= set(kept.tolist())


def test_a_video_ends_with_one_newline_and_its_frames_are_pooled():
    model = tiny_llava_onevision(seed=1)
    inputs = layout_inputs(model, "videos")
    (mask, *_) = newline_masks(model, inputs)
    assert len(mask) == 3 * 4 + 1 and mask.nonzero()[:, 0].tolist() == [12]  # 3 frames of 2 x 2 pooled tokens


@pytest.mark.parametrize("layout", ["several images in a prompt", "images and videos"])
def test_pruned_generation_equals_the_lm_fed_text_plus_kept_tokens_directly(model, layout):
    """The ideal: the short sequence built by hand from the stock features and the kept indices."""
    inputs = layout_inputs(model, layout)
    with tokenprune.apply(model, "zspa", budget=3, core_ratio=0.4) as session:
        out = model.generate(**inputs, **GEN)
    new_tokens = out[:, inputs["input_ids"].shape[1] :]

    features = iter(zip(stock_features(model, inputs), session.last.kept, strict=True))
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    rows = []
    for b in range(inputs["input_ids"].shape[0]):
        real = inputs["attention_mask"][b].bool()
        ids, emb = inputs["input_ids"][b][real].tolist(), embeds[b][real]
        pieces, i = [], 0
        while i < len(ids):
            if ids[i] in (IMAGE_TOKEN, ONEVISION_VIDEO_TOKEN):
                (token, feats), kept = next(features)
                assert ids[i : i + len(feats)] == [token] * len(feats)
                pieces.append(feats[kept])
                i += len(feats)
            else:
                pieces.append(emb[i : i + 1])
                i += 1
        rows.append(torch.cat(pieces))
    short, mask = pad_embeddings_left(rows)
    assert mask.sum(1).tolist() == session.last.sequence_after
    ideal = model.generate(inputs_embeds=short, attention_mask=mask, **GEN)
    assert torch.equal(new_tokens, ideal)


def test_fastv_prunes_images_and_videos_inside_the_language_model(model):
    inputs = layout_inputs(model, "images and videos")
    masks = newline_masks(model, inputs)
    stock = model.generate(**inputs, **GEN)
    with tokenprune.apply(model, "fastv", layer=1, budget=1.0):
        assert torch.equal(model.generate(**inputs, **GEN), stock)
    with tokenprune.apply(model, "fastv", layer=1, budget=2) as session:
        model.generate(**inputs, **GEN)
    assert session.last.visual_after == [2 + int(m.sum()) for m in masks]
    for kept, mask in zip(session.last.kept, masks, strict=True):
        assert set(mask.nonzero()[:, 0].tolist()) <= set(kept.tolist())


@pytest.mark.parametrize("method", ["fastervlm", "visionzip"])
def test_cls_attention_methods_are_refused_because_siglip_has_no_cls_token(model, method):
    with (
        pytest.raises(UnsupportedScoresError, match="SigLIP vision encoder has no CLS token"),
        tokenprune.apply(model, method, budget=4),
    ):
        pytest.fail("refused before the block runs")


def test_placeholders_that_do_not_line_up_with_the_inputs_are_refused_clearly(model):
    inputs = layout_inputs(model, "images and videos")
    ids = inputs["input_ids"].clone()
    first_video = int((ids[0] == ONEVISION_VIDEO_TOKEN).nonzero()[0, 0])
    ids[0, first_video : first_video + 2] = IMAGE_TOKEN  # the image's run is now two tokens too long
    broken = {**inputs, "input_ids": ids}
    with (
        tokenprune.apply(model, "zspa", budget=0.5),
        pytest.raises(tokenprune.InputError, match=r"placeholders do not line up with the 2 images"),
    ):
        model.generate(**broken, **GEN)

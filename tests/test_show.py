"""``tokenprune show`` and :mod:`tokenprune.evaluation.visualize`: token boxes, kept indices, the figure, the CLI.

Token boxes are checked against the real image processors: on a gradient image (red grows with x,
green with y) the mean colour of each processed patch gives the centre, in original pixels, of the
image region the patch came from, whatever the processor's resize, pad and crop did.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tokenprune
from tokenprune.cli import main, show_cmd
from tokenprune.evaluation.visualize import (
    KeptTokens,
    TokenLayout,
    TokenView,
    UnsupportedLayoutError,
    grid_boxes,
    grid_layout,
    kept_tokens,
    render_kept,
    show_tokens,
    token_layout,
)
from tokenprune.integrations import get_adapter, question_tokens
from tokenprune.testing.models import (
    tiny_llava,
    tiny_llava_next,
    tiny_llava_next_processor,
    tiny_llava_processor,
    tiny_qwen2_5_vl,
    tiny_qwen2_5_vl_inputs,
    tiny_qwen2_vl,
)

Image = pytest.importorskip("PIL.Image")
QUESTION = "what colour is the cube?"
CLIP_MEAN, CLIP_STD = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])


def gradient(width: int, height: int) -> Image.Image:
    """Red = x / width, green = y / height at pixel centres, blue constant."""
    x, y = (np.arange(width) + 0.5) / width, (np.arange(height) + 0.5) / height
    rgb = np.zeros((height, width, 3))
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = x[None, :], y[:, None], 0.5
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


def centres(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2


@pytest.fixture(scope="module")
def llava():
    return tiny_llava(image_size=56, patch_size=7)  # 8 x 8 = 64 tokens


# --- token boxes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pad", [False, True], ids=["crop", "pad-to-square"])
@pytest.mark.parametrize("size", [(100, 60), (60, 100), (56, 56), (83, 41), (300, 200)])
def test_llava_boxes_are_where_the_processor_took_each_patch_from(llava, size, pad):
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    processor = tiny_llava_processor(llava)
    if pad:  # LLaVA's own pad-to-square, before the resize and crop
        edge = llava.config.vision_config.image_size
        processor.image_processor = LlavaImageProcessorPil(
            do_pad=True, size={"shortest_edge": edge}, crop_size={"height": edge, "width": edge}
        )
    width, height = size
    inputs = processor(images=[gradient(width, height)], text=["USER: <image>\nwhat ASSISTANT:"], return_tensors="pt")
    layout = token_layout(llava, processor, inputs, size, num_tokens=64)
    [view] = layout.views
    assert layout.num_tokens == 64 and view.indices.tolist() == list(range(64))

    pixels = inputs["pixel_values"][0].numpy() * CLIP_STD[:, None, None] + CLIP_MEAN[:, None, None]
    means = pixels[:2].reshape(2, 8, 7, 8, 7).mean(axis=(2, 4)).reshape(2, 64)
    box_w, box_h = view.boxes[:, 2] - view.boxes[:, 0], view.boxes[:, 3] - view.boxes[:, 1]
    whole = np.isclose(box_w, box_w.max()) & np.isclose(box_h, box_h.max())  # not clipped by the image edge
    assert whole.sum() >= 16
    cx, cy = centres(view.boxes)
    pixel = (max if pad else min)(width, height) / 56  # one processed pixel, in original pixels
    assert np.abs(cx - means[0] * width)[whole].max() < 0.25 * pixel
    assert np.abs(cy - means[1] * height)[whole].max() < 0.25 * pixel
    assert (view.boxes[:, 0::2] >= 0).all() and (view.boxes[:, 0::2] <= width).all()
    assert (view.boxes[:, 1::2] >= 0).all() and (view.boxes[:, 1::2] <= height).all()


def test_llava_crop_leaves_the_sides_of_a_wide_image_uncovered(llava):
    processor = tiny_llava_processor(llava)
    inputs = processor(images=[gradient(100, 60)], text=["USER: <image>\nwhat ASSISTANT:"], return_tensors="pt")
    boxes = token_layout(llava, processor, inputs, (100, 60), num_tokens=64).views[0].boxes
    # the short side 60 -> 56; the long side 100 -> int(56 * 100 / 60) = 93 (x scale 0.93), then cropped by 37 // 2
    assert boxes[:, 0].min() == pytest.approx(18 / 0.93)
    assert boxes[:, 2].max() == pytest.approx((18 + 56) / 0.93)
    assert (boxes[:, 1].min(), boxes[:, 3].max()) == (0, 60)


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen2-vl", "glm4v"])
def test_qwen_boxes_follow_image_grid_thw_in_raster_order(family):
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from tokenprune.testing.models import tiny_glm4v

    model = {"qwen2.5-vl": tiny_qwen2_5_vl, "qwen2-vl": tiny_qwen2_vl, "glm4v": tiny_glm4v}[family]()
    if family == "glm4v":
        processor = Glm4vImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 64})
    else:
        processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 64)
    for width, height in [(100, 60), (60, 130), (301, 97)]:
        out = processor(images=[gradient(width, height)], return_tensors="pt")
        t, h, w = out["image_grid_thw"][0].tolist()
        layout = token_layout(model, None, out, (width, height), num_tokens=t * h * w // 4)
        # pixel_values: per merged token its 2 x 2 patches, each (channels, frames, 14, 14)
        patches = out["pixel_values"].numpy().reshape(-1, 4, 3, 2, 14, 14)
        std, mean = np.array(processor.image_std), np.array(processor.image_mean)
        red = patches[:, :, 0].mean(axis=(1, 2, 3, 4)) * std[0] + mean[0]
        green = patches[:, :, 1].mean(axis=(1, 2, 3, 4)) * std[1] + mean[1]
        cx, cy = centres(layout.views[0].boxes)
        assert np.abs(cx - red * width).max() < 0.1 * width / w
        assert np.abs(cy - green * height).max() < 0.1 * height / h


def test_llava_next_has_a_base_view_and_an_anyres_view_without_newlines():
    model = tiny_llava_next()
    processor = tiny_llava_next_processor(model)
    width, height = 100, 60
    inputs = processor(images=[gradient(width, height)], text=["USER: <image>\nwhat ASSISTANT:"], return_tensors="pt")
    num_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    layout = token_layout(model, processor, inputs, (width, height), num_tokens=num_tokens)
    base, tiles = layout.views
    assert (base.name, tiles.name) == ("base tile", "anyres tiles")
    np.testing.assert_allclose(base.boxes, grid_boxes(4, 4, width, height))
    assert base.indices.tolist() == list(range(16))

    from tokenprune.integrations import get_adapter

    newlines = get_adapter(model).protected_tokens(inputs)[0].nonzero()[:, 0].tolist()
    assert sorted(set(range(num_tokens)) - set(layout.drawn.tolist())) == newlines
    assert "image_newline" in layout.note

    # each anyres token's box centre is where the processor took its tile patch from
    tile_pixels = inputs["pixel_values"][0, 1:].numpy() * CLIP_STD[None, :, None, None] + CLIP_MEAN[None, :, None, None]
    tile_count = tile_pixels.shape[0]
    means = tile_pixels[:, :2].reshape(tile_count, 2, 4, 14, 4, 14).mean(axis=(3, 5))  # (tiles, 2, 4, 4)
    per_patch = torch.tensor(means.transpose(0, 2, 3, 1).reshape(tile_count, 16, 2), dtype=torch.float32)
    base_means = torch.zeros(1, 16, 2)
    packed, _ = model.model.pack_image_features(
        [torch.cat([base_means, per_patch])], inputs["image_sizes"], "default", image_newline=torch.full((2,), -1.0)
    )
    expected = packed[0][torch.as_tensor(tiles.indices)].numpy()
    cx, cy = centres(tiles.boxes)
    inside = (tiles.boxes[:, 1] > 0) & (tiles.boxes[:, 3] < height)  # rows not clipped by the image edge
    assert np.abs(cx - expected[:, 0] * width)[inside].max() < 0.5
    assert np.abs(cy - expected[:, 1] * height)[inside].max() < 0.5


def _unnormalized(pixels: np.ndarray, image_processor) -> np.ndarray:
    """``(..., 3, H, W)`` processed pixels back to [0, 1] colours."""
    mean, std = np.array(image_processor.image_mean), np.array(image_processor.image_std)
    return pixels * std[:, None, None] + mean[:, None, None]


def test_gemma3_boxes_are_a_square_grid_over_the_whole_image():
    from tokenprune.testing.models import tiny_gemma3, tiny_gemma3_processor

    model = tiny_gemma3()
    processor = tiny_gemma3_processor(model)
    for width, height in [(100, 60), (50, 130)]:
        pixels = processor.image_processor(images=[gradient(width, height)], return_tensors="pt")["pixel_values"]
        colours = _unnormalized(pixels[0].numpy(), processor.image_processor)  # (3, 56, 56): 4 x 4 tokens of 14 px
        means = colours[:2].reshape(2, 4, 14, 4, 14).mean(axis=(2, 4)).reshape(2, 16)
        layout = token_layout(model, processor, {}, (width, height), num_tokens=16)
        cx, cy = centres(layout.views[0].boxes)
        assert np.abs(cx - means[0] * width).max() < 0.05 * width
        assert np.abs(cy - means[1] * height).max() < 0.05 * height
    with pytest.raises(UnsupportedLayoutError, match="Gemma 3 gives 16 per image"):
        token_layout(model, processor, {}, (100, 60), num_tokens=15)


@pytest.mark.parametrize("size", [(100, 60), (60, 100), (100, 100), (40, 30)])
def test_idefics3_boxes_follow_the_tiles_and_the_global_tile(size):
    """Each token's box centre is where its patches came from, through the processor's resize and split and the
    model's pixel shuffle (run here on the patches' mean colours)."""
    from tokenprune.testing.models import tiny_idefics3, tiny_idefics3_processor

    model = tiny_idefics3()
    processor = tiny_idefics3_processor(model)
    width, height = size
    inputs = processor(
        text=["User:<image>what ?<end_of_utterance>\nAssistant:"],
        images=[[gradient(width, height)]],
        return_tensors="pt",
    )
    tiles = inputs["pixel_values"].shape[1]
    num_tokens = 16 * tiles
    layout = token_layout(model, processor, inputs, size, num_tokens=num_tokens)
    assert [view.name for view in layout.views] == (["global tile", "tiles"] if tiles > 1 else ["global tile"])
    assert layout.drawn.tolist() == list(range(num_tokens))
    colours = _unnormalized(inputs["pixel_values"][0].numpy(), processor.image_processor)  # (tiles, 3, 56, 56)
    per_patch = colours[:, :2].reshape(tiles, 2, 8, 7, 8, 7).mean(axis=(3, 5))  # (tiles, 2, 8, 8)
    patches = torch.tensor(per_patch.transpose(0, 2, 3, 1).reshape(tiles, 64, 2).copy(), dtype=torch.float32)
    shuffled = model.model.connector.pixel_shuffle(patches, 2)  # (tiles, 16, 2 * 4): each token's four patches
    expected = shuffled.reshape(tiles * 16, 4, 2).mean(1).numpy()
    for view in layout.views:
        cx, cy = centres(view.boxes)
        assert np.abs(cx - expected[view.indices, 0] * width).max() < 0.05 * width, view.name
        assert np.abs(cy - expected[view.indices, 1] * height).max() < 0.05 * height, view.name


@pytest.mark.parametrize("size", [(200, 100), (60, 100), (50, 50)])
def test_internvl_boxes_follow_the_tiles_and_the_thumbnail(size):
    """Each token's box centre is where its patches came from, through the processor's choice of grid and the
    model's pixel shuffle (run here on the patches' mean colours, as get_image_features lays them out)."""
    from tokenprune.testing.models import tiny_internvl, tiny_internvl_processor

    model = tiny_internvl()
    processor = tiny_internvl_processor(model)
    width, height = size
    pixels = processor.image_processor(images=[gradient(width, height)], return_tensors="pt")["pixel_values"]
    tiles = pixels.shape[0]
    layout = token_layout(model, processor, {}, size, num_tokens=16 * tiles)
    assert [view.name for view in layout.views] == (["thumbnail", "tiles"] if tiles > 1 else ["thumbnail"])
    colours = _unnormalized(pixels.numpy(), processor.image_processor)  # (tiles, 3, 112, 112): 8 x 8 patches
    per_patch = colours[:, :2].reshape(tiles, 2, 8, 14, 8, 14).mean(axis=(3, 5)).transpose(0, 2, 3, 1)
    shuffled = model.model.pixel_shuffle(torch.tensor(per_patch.copy(), dtype=torch.float32), 0.5)  # (tiles, 4, 4, 8)
    expected = shuffled.reshape(tiles * 16, 4, 2).mean(1).numpy()
    for view in layout.views:
        cx, cy = centres(view.boxes)
        assert np.abs(cx - expected[view.indices, 0] * width).max() < 0.05 * width, view.name
        assert np.abs(cy - expected[view.indices, 1] * height).max() < 0.05 * height, view.name


@pytest.mark.parametrize("family", ["mistral3", "pixtral-llava"])
def test_mistral3_boxes_follow_image_sizes_in_raster_order(family):
    """Mistral 3 (14 px patches merged 2 x 2, here 7 px ones) and Pixtral-12B as a LLaVA (a token per 14 px patch)."""
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    from tokenprune.testing.models import tiny_mistral3, tiny_pixtral_llava

    model = tiny_mistral3() if family == "mistral3" else tiny_pixtral_llava()
    processor = PixtralImageProcessorPil(size={"longest_edge": 112}, patch_size={"height": 14, "width": 14})
    for width, height in [(100, 60), (50, 130)]:
        out = processor(images=[gradient(width, height)], return_tensors="pt")
        h, w = out["image_sizes"][0].tolist()
        layout = token_layout(model, None, out, (width, height), num_tokens=(h // 14) * (w // 14))
        colours = _unnormalized(out["pixel_values"][0].numpy(), processor)[:2, :h, :w]
        means = colours.reshape(2, h // 14, 14, w // 14, 14).mean(axis=(2, 4)).reshape(2, -1)
        cx, cy = centres(layout.views[0].boxes)
        assert np.abs(cx - means[0] * width).max() < 0.05 * width
        assert np.abs(cy - means[1] * height).max() < 0.05 * height


def test_idefics3_draws_the_first_image_of_a_prompt_with_several():
    """The first image's grid comes from its own tags, whatever grid a later image has."""
    from tokenprune.testing.models import tiny_idefics3, tiny_idefics3_processor

    model = tiny_idefics3()
    processor = tiny_idefics3_processor(model)
    text = ["User:<image><image>what ?<end_of_utterance>\nAssistant:"]
    inputs = processor(text=text, images=[[gradient(112, 56), gradient(100, 100)]], return_tensors="pt")
    assert get_adapter(model).image_token_counts(inputs) == [48, 80]  # 1 x 2 tiles, then 2 x 2
    layout = token_layout(model, processor, inputs, (112, 56), num_tokens=48)
    assert len(layout.views[1].indices) == 32
    np.testing.assert_allclose(layout.views[1].boxes[:16].max(0)[2:], [56, 56])  # the first tile: the left half


def test_mistral3_boxes_cover_only_the_patches_the_model_reads():
    """Sizes that are not multiples of the merged patch: the model drops the last odd patch row and column."""
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    from tokenprune.testing.models import tiny_mistral3

    model = tiny_mistral3()
    processor = PixtralImageProcessorPil(size={"longest_edge": 112}, patch_size={"height": 7, "width": 7})
    out = processor(images=[gradient(100, 60)], return_tensors="pt")
    h, w = out["image_sizes"][0].tolist()
    assert (h % 14, w % 14) != (0, 0)
    layout = token_layout(model, None, out, (100, 60), num_tokens=(h // 14) * (w // 14))
    colours = _unnormalized(out["pixel_values"][0].numpy(), processor)[:2, : h // 14 * 14, : w // 14 * 14]
    means = colours.reshape(2, h // 14, 14, w // 14, 14).mean(axis=(2, 4)).reshape(2, -1)
    cx, cy = centres(layout.views[0].boxes)
    assert np.abs(cx - means[0] * 100).max() < 0.05 * 100 / (w // 14)  # within 5 % of a token
    assert np.abs(cy - means[1] * 60).max() < 0.05 * 60 / (h // 14)


@pytest.mark.parametrize("onevision", [False, True], ids=["llava-next", "llava-onevision"])
def test_an_image_too_thin_for_any_anyres_token_draws_its_base_tile(onevision):
    from tokenprune.testing.models import tiny_llava_onevision, tiny_llava_onevision_processor

    model = tiny_llava_onevision() if onevision else tiny_llava_next()
    processor = (tiny_llava_onevision_processor if onevision else tiny_llava_next_processor)(model)
    inputs = processor(images=[gradient(300, 2)], text=["USER: <image>\nwhat ASSISTANT:"], return_tensors="pt")
    num_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    layout = token_layout(model, processor, inputs, (300, 2), num_tokens=num_tokens)
    assert len(layout.views[0].indices) == 16 and len(layout.views[1].indices) < 16


def test_llava_onevision_draws_the_base_tile_of_an_image_among_several():
    """With several images in a prompt the model encodes each as its base tile alone."""
    from tokenprune.testing.models import tiny_llava_onevision, tiny_llava_onevision_processor

    model = tiny_llava_onevision()
    processor = tiny_llava_onevision_processor(model)
    text = ["USER: <image><image>\nwhat ASSISTANT:"]
    inputs = processor(images=[[gradient(100, 60), gradient(60, 100)]], text=text, return_tensors="pt")
    with torch.no_grad(), tokenprune.apply(model, "stride", budget=0.5) as session:
        model(**inputs)
    layout = token_layout(model, processor, inputs, (100, 60), num_tokens=session.last.visual_before[0])
    assert [(view.name, len(view.indices)) for view in layout.views] == [("base tile", 16), ("anyres tiles", 0)]


def test_idefics3_without_its_tokenizer_is_refused_clearly():
    from tokenprune.testing.models import tiny_idefics3

    with pytest.raises(UnsupportedLayoutError, match="need the processor's tokenizer"):
        token_layout(tiny_idefics3(), None, {"input_ids": torch.tensor([[1, 2]])}, (10, 10), num_tokens=16)


def test_qwen3_vl_boxes_follow_image_grid_thw():
    from tokenprune.testing.models import tiny_qwen3_vl

    model = tiny_qwen3_vl()
    merge = model.config.vision_config.spatial_merge_size
    layout = token_layout(model, None, {"image_grid_thw": torch.tensor([[1, 4, 6]])}, (60, 40), num_tokens=6)
    assert merge == 2
    np.testing.assert_allclose(layout.views[0].boxes, grid_boxes(2, 3, 60, 40))


def test_a_family_without_a_known_layout_is_refused_with_a_clear_error(monkeypatch):
    from tokenprune.integrations import ModelAdapter, session

    class PluginAdapter(ModelAdapter):  # a family a plugin adapts for pruning, which show cannot draw
        image_token_id = 5

        def encode_images(self, inputs, *, scores=None):
            raise NotImplementedError

    monkeypatch.setattr(session, "get_adapter", PluginAdapter)
    with pytest.raises(UnsupportedLayoutError, match=r"Linear's visual tokens .* supported: LLaVA-1\.5"):
        token_layout(torch.nn.Linear(2, 2), None, {}, (10, 10), num_tokens=4)


@pytest.mark.parametrize("aspect", ["anyres_max_1", "anyres_max_9"], ids=["shrunk", "not-shrunk"])
@pytest.mark.parametrize("size", [(100, 60), (60, 100), (100, 100)])
def test_llava_onevision_anyres_boxes_follow_its_packing_shrunk_or_not(aspect, size):
    """Each anyres token's box centre is where its patches came from, through the processor's pinpoint resize and
    the model's unpadding and (past anyres_max_N) bilinear shrinking, run here on the patches' mean colours."""
    from tokenprune.testing.models import tiny_llava_onevision, tiny_llava_onevision_processor

    model = tiny_llava_onevision(aspect=aspect)
    processor = tiny_llava_onevision_processor(model)
    width, height = size
    inputs = processor(images=[gradient(width, height)], text=["USER: <image>\nwhat ASSISTANT:"], return_tensors="pt")
    num_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    layout = token_layout(model, processor, inputs, size, num_tokens=num_tokens)
    base, tiles = layout.views
    np.testing.assert_allclose(base.boxes, grid_boxes(4, 4, width, height))

    from tokenprune.integrations import get_adapter

    newlines = get_adapter(model).protected_tokens(inputs)[0].nonzero()[:, 0].tolist()
    assert sorted(set(range(num_tokens)) - set(layout.drawn.tolist())) == newlines
    std, mean = np.array(processor.image_processor.image_std), np.array(processor.image_processor.image_mean)
    pixels = inputs["pixel_values"][0].numpy() * std[None, :, None, None] + mean[None, :, None, None]
    count = pixels.shape[0]
    means = pixels[:, :2].reshape(count, 2, 4, 14, 4, 14).mean(axis=(3, 5)).transpose(0, 2, 3, 1)  # (tiles, 4, 4, 2)
    per_patch = torch.tensor(means.reshape(count, 16, 2).copy(), dtype=torch.float32)
    packed, _ = model.model.pack_image_features(
        [per_patch], inputs["image_sizes"], torch.full((2,), -1.0), vision_aspect_ratio=aspect
    )
    expected = packed[0][torch.as_tensor(tiles.indices)].numpy()
    cx, cy = centres(tiles.boxes)
    inside = (
        (tiles.boxes[:, 1] > 0) & (tiles.boxes[:, 3] < height) & (tiles.boxes[:, 0] > 0) & (tiles.boxes[:, 2] < width)
    )
    assert inside.any()
    assert np.abs(cx - expected[:, 0] * width)[inside].max() < 0.05 * width
    assert np.abs(cy - expected[:, 1] * height)[inside].max() < 0.05 * height
    # the boxes tile the region the unpadded grid covers, shrunk or not: no gaps, no overlaps
    areas = (tiles.boxes[:, 2] - tiles.boxes[:, 0]) * (tiles.boxes[:, 3] - tiles.boxes[:, 1])
    extent = np.concatenate([tiles.boxes[:, :2].min(0), tiles.boxes[:, 2:].max(0)])
    assert areas.sum() == pytest.approx((extent[2] - extent[0]) * (extent[3] - extent[1]), rel=1e-6)
    if aspect == "anyres_max_1":  # shrunk: fewer tokens over the region the grid covers unshrunk
        whole = tiny_llava_onevision(aspect="anyres_max_9")
        text = ["USER: <image>\nwhat ASSISTANT:"]
        ids = tiny_llava_onevision_processor(whole)(images=[gradient(width, height)], text=text)["input_ids"][0]
        unshrunk = token_layout(whole, None, inputs, size, num_tokens=ids.count(whole.config.image_token_id))
        assert len(tiles.indices) < len(unshrunk.views[1].indices)
        np.testing.assert_allclose(
            extent, [*unshrunk.views[1].boxes[:, :2].min(0), *unshrunk.views[1].boxes[:, 2:].max(0)], atol=1e-4
        )


# --- kept indices -----------------------------------------------------------------------------------------


def test_show_tokens_keeps_what_tokenprune_apply_keeps(llava):
    processor = tiny_llava_processor(llava)
    image = gradient(90, 70)
    result = show_tokens(
        llava, processor, image, QUESTION, ["zspa", ("zspa", {"core_ratio": 0.5}), "divprune"], keep=0.1
    )
    assert [k.label for k in result.kept] == ["zspa", "zspa:core_ratio=0.5", "divprune"]

    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(chat, add_generation_prompt=True)
    inputs = processor(images=[image], text=[text], return_tensors="pt")
    for entry, (name, params) in zip(
        result.kept, [("zspa", {}), ("zspa", {"core_ratio": 0.5}), ("divprune", {})], strict=True
    ):
        with tokenprune.apply(llava, name, budget=0.1, prompt_tokens=question_tokens(processor), **params) as session:
            llava.generate(**inputs, max_new_tokens=1, do_sample=False)
        assert entry.indices.tolist() == session.last.kept[0].tolist()
        assert entry.num_tokens == 64 and len(entry.indices) == 6
    assert result.layout.count(result.kept[0].indices) == (6, 64)


def test_kept_tokens_of_qwen_and_llava_next_match_apply():
    qwen = tiny_qwen2_5_vl()
    inputs = tiny_qwen2_5_vl_inputs(qwen, [[[5, 6], [7, 8]]], [(1, 4, 6)])
    [entry] = kept_tokens(qwen, inputs, ["divprune"], budget=3)
    with torch.no_grad(), tokenprune.apply(qwen, "divprune", budget=3) as session:
        qwen(**inputs)
    assert entry.indices.tolist() == session.last.kept[0].tolist() and entry.num_tokens == 6
    assert token_layout(qwen, None, inputs, (60, 40), num_tokens=6).count(entry.indices) == (3, 6)


# --- rendering --------------------------------------------------------------------------------------------


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rgb = np.random.default_rng(seed).integers(60, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(rgb)


def panel_spans(figure: Image.Image, y: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of the non-white runs along row ``y`` (the panels, frames included)."""
    row = np.asarray(figure)[y].astype(int)
    ink = (row != 255).any(axis=1)
    spans, start = [], None
    for x, on in enumerate([*ink.tolist(), False]):
        if on and start is None:
            start = x
        elif not on and start is not None:
            spans.append((start, x))
            start = None
    return spans


def find_panels(figure: Image.Image, size: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left corners of the panels of ``size``: runs of exactly that width (plus the 1-px frame)."""
    array = np.asarray(figure)
    for y in range(array.shape[0]):
        spans = [(a, b) for a, b in panel_spans(figure, y) if b - a == size[0] + 2]
        if spans:
            return [(a + 1, y + 1) for a, _ in spans]  # inside the frame
    raise AssertionError("no panel found")


def test_render_keeps_kept_pixels_and_dims_pruned_ones():
    image = noise(64, 48)
    layout = grid_layout(image.size, rows=6, cols=8)  # 8 x 8 px tokens
    kept = [KeptTokens("a", [0, 9, 20, 47], num_tokens=48), KeptTokens("b:k=1", [3, 4, 5], num_tokens=48)]
    figure = render_kept(image, layout, kept, panel_size=None, caption="Q: a question")
    corners = find_panels(figure, image.size)
    assert len(corners) == 2
    original = np.asarray(image).astype(int)
    brightest = original.max(axis=2)
    for (x, y), entry in zip(corners, kept, strict=True):
        panel = np.asarray(figure.crop((x, y, x + 64, y + 48))).astype(int)
        for token, (x0, y0, x1, y1) in enumerate(layout.views[0].boxes.astype(int).tolist()):
            inner = (slice(y0 + 2, y1 - 2), slice(x0 + 2, x1 - 2))  # inside the outline
            if token in entry.indices:
                np.testing.assert_array_equal(panel[inner], original[inner])
            else:
                spread = panel[inner].max(axis=2) - panel[inner].min(axis=2)
                assert spread.max() <= 1, "pruned tokens are grey"
                assert (panel[inner].mean(axis=2) < 0.5 * brightest[inner]).all(), "pruned tokens are dimmed"


def test_kept_tokens_of_a_merging_method_carry_its_owner_map(llava):
    processor = tiny_llava_processor(llava)
    image = gradient(90, 70)
    inputs = processor(images=[image], text=["<image>\n" + QUESTION], return_tensors="pt")
    [entry] = kept_tokens(llava, inputs, [("visionzip", {"contextual_ratio": 0.5})], budget=8)
    with torch.no_grad(), tokenprune.apply(llava, "visionzip", budget=8, contextual_ratio=0.5) as session:
        llava(**inputs)
    assert entry.indices.tolist() == session.last.kept[0].tolist()
    assert entry.owner.tolist() == session.last.merged[0].tolist()
    assert sorted(entry.merged.tolist() + entry.indices.tolist()) == list(range(64))  # every dropped token joins
    assert set(entry.owner[entry.merged].tolist()) <= set(entry.indices.tolist())
    [plain] = kept_tokens(llava, inputs, ["fastervlm"], budget=8)
    assert plain.owner is None and plain.merged.size == 0


def test_render_tints_each_group_of_merged_tokens_in_its_own_colour():
    image = noise(64, 48)
    layout = grid_layout(image.size, rows=6, cols=8)
    owner = np.full(48, -1)
    owner[[1, 2, 3]], owner[[9, 10]] = 0, 8  # tokens 1-3 merged into token 0, 9-10 into 8; the rest dropped
    entry = KeptTokens("visionzip", [0, 8], num_tokens=48, owner=owner)
    figure = render_kept(image, layout, [entry], panel_size=None)
    ((x, y),) = find_panels(figure, image.size)
    panel = np.asarray(figure.crop((x, y, x + 64, y + 48))).astype(float)
    boxes = layout.views[0].boxes.astype(int).tolist()

    def colour(token):
        x0, y0, x1, y1 = boxes[token]
        return panel[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].reshape(-1, 3).mean(axis=0)

    dropped = np.mean([colour(t).mean() for t in range(11, 48)])
    first, second = [np.mean([colour(t) for t in group], axis=0) for group in ((1, 2, 3), (9, 10))]
    assert first.mean() > 1.3 * dropped and second.mean() > 1.3 * dropped  # lighter than tokens dropped outright
    assert np.ptp(first) > 40 and np.ptp(second) > 40  # tinted, not grey
    assert np.abs(first - second).max() > 40  # each group its own tint
    with pytest.raises(tokenprune.InputError, match="one entry per token"):
        KeptTokens("x", [0], num_tokens=48, owner=owner[:10])


def test_render_lays_out_one_panel_per_method_and_view_at_the_panel_size():
    image = noise(120, 60)
    views = (
        TokenView("base tile", np.arange(4), grid_boxes(2, 2, 120, 60)),
        TokenView("anyres tiles", np.arange(4, 12), grid_boxes(2, 4, 120, 60)),
    )
    layout = TokenLayout((120, 60), 14, views, note="image_newline tokens")
    kept = [KeptTokens(name, [0, 5, 6], num_tokens=14) for name in ("zspa", "divprune", "relevance")]
    figure = render_kept(image, layout, kept, panel_size=200)
    assert figure.mode == "RGB"
    rows = {y for x, y in find_panels(figure, (200, 100))}
    assert len(find_panels(figure, (200, 100))) == 3
    # a second row of panels below the first (the anyres view)
    below = max(rows) + 100 + 4
    assert any(len([s for s in panel_spans(figure, y) if s[1] - s[0] == 202]) == 3 for y in range(below, figure.height))
    assert figure.width >= 3 * 200 and figure.height >= 2 * 100


def test_render_refuses_a_layout_of_another_size_and_no_methods():
    layout = grid_layout((10, 10), 2, 2)
    with pytest.raises(ValueError, match="at least one"):
        render_kept(noise(10, 10), layout, [])
    with pytest.raises(ValueError, match="20x10"):
        render_kept(noise(20, 10), layout, [KeptTokens("a", [0], num_tokens=4)])


# --- the command line -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_llava(tmp_path_factory, llava):
    """The tiny LLaVA and its real processor, save_pretrained to a directory (loaded by path, as a user would)."""
    path = tmp_path_factory.mktemp("tiny-llava")
    llava.save_pretrained(path)
    tiny_llava_processor(llava).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def scene_png(tmp_path_factory):
    from tokenprune.scenes import generate_scene, render_scene

    path = tmp_path_factory.mktemp("images") / "scene.png"
    render_scene(generate_scene(3)).crop((0, 30, 336, 260)).save(path)  # non-square
    return path


def test_cli_writes_a_png_with_every_method(capsys, saved_llava, scene_png, tmp_path):
    out = tmp_path / "figure.png"
    argv = ["show", "--model", str(saved_llava), "--device", "cpu", "--methods", "zspa:core_ratio=0.5,divprune"]
    code = main([*argv, "--keep", "0.1", "--panel-size", "160", str(scene_png), QUESTION, "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    with Image.open(out) as figure:
        assert figure.format == "PNG"
        figure.verify()
    with Image.open(out) as figure:
        assert figure.width > 2 * 160 and figure.height > 160
    assert "zspa:core_ratio=0.5" in captured.out and "divprune" in captured.out
    assert captured.out.count("6/64") == 2  # 10% of the 64 tokens
    assert str(out) in captured.out


def test_cli_draws_an_idefics3_image_as_its_global_tile_and_its_tiles(capsys, scene_png, tmp_path):
    from tokenprune.testing.models import tiny_idefics3, tiny_idefics3_processor

    model = tiny_idefics3()
    model.save_pretrained(tmp_path / "model")
    tiny_idefics3_processor(model).save_pretrained(tmp_path / "model")
    out = tmp_path / "figure.png"
    argv = ["show", "--model", str(tmp_path / "model"), "--device", "cpu", "--methods", "zspa,divprune"]
    code = main([*argv, "--keep", "0.25", "--panel-size", "120", str(scene_png), QUESTION, "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    with Image.open(out) as figure:
        assert figure.width > 2 * 120 and figure.height > 2 * 120  # two methods, two views
    assert "20/80" in captured.out  # the scene is cut into 2 x 2 tiles and the global tile: 80 tokens, 25 % kept


def test_cli_sweeps_and_patterns_draw_each_method_and_skip_those_the_model_cannot_run(
    capsys, monkeypatch, saved_llava, scene_png, tmp_path
):
    from tokenprune.integrations.llava import LlavaAdapter

    monkeypatch.setattr(LlavaAdapter, "score_sources", frozenset())  # as if this family had no CLS token
    argv = ["show", "--model", str(saved_llava), "--methods", "zspa:core_ratio=0.1|0.9,fast*", "--keep", "0.1"]
    code = main([*argv, str(scene_png), QUESTION, "-o", str(tmp_path / "x.png")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert [line.split("│")[1].strip() for line in captured.out.splitlines() if "6/64" in line] == [
        "zspa:core_ratio=0.1",
        "zspa:core_ratio=0.9",
    ]
    assert "skipped fastervlm: LlavaAdapter cannot provide 'cls_attention' scores" in captured.err
    assert "skipped fastv: fastv layer=2 is outside the language model's 2 layers" in captured.err
    code = main([*argv[:4], "fastervlm", str(scene_png), QUESTION, "-o", str(tmp_path / "y.png")])
    assert code == 2 and "cannot provide 'cls_attention' scores" in capsys.readouterr().err  # named: an error


def test_cli_without_model_uses_the_shipped_one_or_says_how_to_pass_one(capsys, monkeypatch, scene_png, tmp_path):
    from tokenprune.evaluation import runner

    monkeypatch.setattr(runner, "default_model_path", lambda: tmp_path / "missing")
    code = main(["show", str(scene_png), QUESTION, "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2
    assert "--model" in err and "missing" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--keep", "abc"], "--keep expects"),
        (["--keep", "0"], "--keep expects"),
        (["--keep", "1.5"], "--keep expects"),
        (["--keep", "-3"], "--keep expects"),
        (["--methods", "zpsa"], "Did you mean 'zspa'"),
        (["--methods", "zspa:core=0.5"], "no parameter 'core'"),
        (["--methods", "core_ratio=0.5"], "comes before any method"),
        (["--methods", "zspa,attention"], "scores passed by the caller"),
        (["--methods", "none"], "names no method"),
        (["--panel-size", "4"], "--panel-size"),
    ],
)
def test_cli_usage_errors_exit_2_with_one_line(capsys, saved_llava, scene_png, tmp_path, args, message):
    code = main(["show", "--model", str(saved_llava), *args, str(scene_png), QUESTION, "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1 and "Traceback" not in err


@pytest.mark.parametrize(("name", "expected"), [("fig.gif", "GIF"), ("fig.jpg", "JPEG"), ("fig", "PNG")])
def test_cli_writes_the_format_its_suffix_names(capsys, saved_llava, scene_png, tmp_path, name, expected):
    code = main(["show", "--model", str(saved_llava), str(scene_png), QUESTION, "-o", str(tmp_path / name)])
    err = capsys.readouterr().err
    assert code == 0, err
    with Image.open(tmp_path / name) as figure:
        assert figure.format == expected
    code = main(["show", "--model", str(saved_llava), str(scene_png), QUESTION, "-o", str(tmp_path / "fig.xyz")])
    err = capsys.readouterr().err
    assert code == 2 and "'.xyz' is not an image format Pillow writes" in err and "loading" not in err


def test_cli_an_output_that_is_a_directory_exits_2_before_any_work(capsys, saved_llava, scene_png, tmp_path):
    code = main(["show", "--model", str(saved_llava), str(scene_png), QUESTION, "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "is a directory; expected an image file path" in err and "loading" not in err


def test_cli_image_errors_exit_2(capsys, saved_llava, tmp_path):
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a png")
    for image, message in [(tmp_path / "nope.png", "image file not found"), (not_an_image, "cannot read")]:
        code = main(["show", "--model", str(saved_llava), str(image), QUESTION, "-o", str(tmp_path / "x.png")])
        err = capsys.readouterr().err
        assert code == 2, err
        assert message in err and str(image) in err


def test_cli_unloadable_model_is_a_runtime_failure(capsys, scene_png, tmp_path):
    code = main(["show", "--model", str(tmp_path), str(scene_png), QUESTION, "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 1
    assert "cannot load model" in err


def test_parse_keep():
    assert show_cmd.parse_keep("58") == 58 and show_cmd.parse_keep("0.25") == 0.25
    assert isinstance(show_cmd.parse_keep("1.0"), float)

"""tokenprune.apply on tiny random Idefics3ForConditionalGeneration and SmolVLMForConditionalGeneration (an image's
tiles written apart in the prompt, a global tile last, pixel shuffle, 1-D RoPE)."""

import pytest
import torch

import tokenprune
from tokenprune.integrations import get_adapter
from tokenprune.integrations.base import Layout, UnsupportedScoresError
from tokenprune.integrations.idefics3 import Idefics3Adapter
from tokenprune.integrations.prompt import question_tokens
from tokenprune.testing import assert_adapter_contract
from tokenprune.testing.models import (
    IDEFICS_FAKE,
    IDEFICS_GLOBAL,
    IDEFICS_ROW_COL,
    IMAGE_TOKEN,
    lm_input_lengths,
    pad_embeddings_left,
    tiny_idefics3,
    tiny_idefics3_inputs,
    tiny_idefics3_processor,
)

GEN = {"max_new_tokens": 6, "do_sample": False}
LAYOUTS = {
    "one split image": ([[[5, 6], [7, 8]]], [(1, 2)]),  # 2 tiles + the global: 48 tokens
    "two rows": ([[[5, 6], [7, 8]], [[9], [10, 11, 12]]], [(0, 0), (2, 2)]),  # 16 and 80 tokens
    "two images in a row": ([[[5], [6, 7], [8]], [[9], [10, 11, 12]]], [(2, 1), (0, 0), (1, 2)]),
}


@pytest.fixture(scope="module", params=["idefics3", "smolvlm"])
def model(request):
    return tiny_idefics3(seed=0, smolvlm=request.param == "smolvlm")


def test_the_builtin_adapter_is_used(model):
    assert type(get_adapter(model)) is Idefics3Adapter


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_adapter_contract(model, layout):
    assert_adapter_contract(model, tiny_idefics3_inputs(model, *LAYOUTS[layout]), generate_kwargs=GEN)


def test_an_image_is_all_its_tiles_and_its_global_tile_under_one_budget(model):
    inputs = tiny_idefics3_inputs(model, *LAYOUTS["two images in a row"])
    assert get_adapter(model).image_token_counts(inputs) == [48, 16, 48]  # (2 x 1 + 1), 1, (1 x 2 + 1) tiles of 16
    with tokenprune.apply(model, "divprune", budget=0.25) as session:
        lengths, _ = lm_input_lengths(
            model, lambda: model.generate(**inputs, **GEN), layer=model.model.text_model.layers[0]
        )
    assert session.last.visual_before == [48, 16, 48]
    assert session.last.visual_after == [12, 4, 12]
    assert lengths[0] == max(session.last.sequence_after)  # the LM's first layer sees text + kept tokens


def test_pruned_generation_equals_the_lm_fed_text_plus_kept_tokens_directly(model):
    """The ideal: the short sequence built by hand from the stock tile features and the kept indices; the tile
    tags and the newlines between rows of tiles stay, as text."""
    inputs = tiny_idefics3_inputs(model, *LAYOUTS["two images in a row"])
    with tokenprune.apply(model, "zspa", budget=5, core_ratio=0.4) as session:
        out = model.generate(**inputs, **GEN)
    new_tokens = out[:, inputs["input_ids"].shape[1] :]

    flat = torch.cat(list(model.model.get_image_features(inputs["pixel_values"]).pooler_output))  # every tile's tokens
    features = iter(torch.split(flat, [48, 16, 48]))
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    kept, rows = iter(session.last.kept), []
    for b in range(inputs["input_ids"].shape[0]):
        real = inputs["attention_mask"][b].bool()
        ids, emb = inputs["input_ids"][b][real], embeds[b][real]
        placeholders = (ids == IMAGE_TOKEN).nonzero()[:, 0].tolist()
        chosen, start = {}, 0  # position -> the feature that stays there
        while start < len(placeholders):  # the row's images, in order
            image = next(features)
            positions = placeholders[start : start + image.shape[0]]
            chosen.update({positions[k]: image[k] for k in next(kept).tolist()})
            start += image.shape[0]
        text = (ids != IMAGE_TOKEN).tolist()
        rows.append(torch.stack([chosen.get(p, emb[p]) for p in range(len(ids)) if text[p] or p in chosen]))
    short, mask = pad_embeddings_left(rows)
    assert mask.sum(1).tolist() == session.last.sequence_after
    assert torch.equal(new_tokens, model.generate(inputs_embeds=short, attention_mask=mask, **GEN))


def test_the_writing_of_an_image_is_never_prompt_text_whatever_its_grid(model):
    """Tags, <fake_token_around_image> and the newlines between rows of tiles are not prompt text, so a question's
    prompt is the same whatever grid its image has; a newline of the question itself stays."""
    adapter = get_adapter(model)
    prompts = [[[5, 19, 6], [7, 8]], [[9], [10, 19, 11]]]
    for grids in ([(2, 2), (0, 0)], [(0, 0), (1, 3)]):
        inputs = tiny_idefics3_inputs(model, prompts, grids)
        layout = Layout.locate(adapter, inputs["input_ids"], inputs["attention_mask"], None)
        marked = [inputs["input_ids"][b][layout.prompt_mask[b]].tolist() for b in range(2)]
        assert marked == [[5, 19, 6, 7, 8], [9, 10, 19, 11]], grids
        assert {IDEFICS_FAKE, IDEFICS_GLOBAL, IDEFICS_ROW_COL, IDEFICS_ROW_COL + 1} <= set(
            inputs["input_ids"].flatten().tolist()
        )


def test_fastv_prunes_inside_the_language_model(model):
    inputs = tiny_idefics3_inputs(model, *LAYOUTS["two rows"])
    stock = model.generate(**inputs, **GEN)
    with tokenprune.apply(model, "fastv", layer=1, budget=1.0):
        assert torch.equal(model.generate(**inputs, **GEN), stock)
    with tokenprune.apply(model, "fastv", layer=1, budget=4) as session:
        model.generate(**inputs, **GEN)
    assert session.last.visual_before == [16, 80]
    assert session.last.visual_after == [4, 4]


@pytest.mark.parametrize("method", ["fastervlm", "visionzip"])
def test_cls_attention_methods_are_refused(model, method):
    with (
        pytest.raises(UnsupportedScoresError, match="SigLIP vision encoder has no CLS token"),
        tokenprune.apply(model, method, budget=4),
    ):
        pytest.fail("refused before the block runs")


def test_placeholders_that_do_not_cover_whole_tiles_are_refused_clearly(model):
    inputs = tiny_idefics3_inputs(model, *LAYOUTS["two rows"])
    ids = inputs["input_ids"].clone()
    first = int((ids[0] == IMAGE_TOKEN).nonzero()[0, 0])
    ids[0, first + 3] = 7  # one placeholder of the first tile is text now: the tile is two runs
    with (
        tokenprune.apply(model, "zspa", budget=0.5),
        pytest.raises(tokenprune.InputError, match=r"placeholder runs of \[3, 12, 16, .*expected one run of 16"),
    ):
        model.generate(**{**inputs, "input_ids": ids}, **GEN)


def test_rows_whose_images_end_differently_are_refused_clearly(model):
    inputs = tiny_idefics3_inputs(model, *LAYOUTS["two rows"])
    ids = inputs["input_ids"].clone()
    ids[1][ids[1] == IDEFICS_GLOBAL] = 7  # the second row's image has no global tag before its last tile
    with (
        tokenprune.apply(model, "zspa", budget=0.5),
        pytest.raises(tokenprune.InputError, match="expected every image to end with its global tile"),
    ):
        model.generate(**{**inputs, "input_ids": ids}, **GEN)


def test_pixel_values_of_the_wrong_layout_are_refused_clearly(model):
    inputs = tiny_idefics3_inputs(model, *LAYOUTS["one split image"])
    flat = inputs["pixel_values"].flatten(0, 1)
    with (
        tokenprune.apply(model, "zspa", budget=0.5),
        pytest.raises(tokenprune.InputError, match=r"pixel_values must be \(B, tiles, 3, H, W\).*got \(3, 3, 56, 56\)"),
    ):
        model.generate(**{**inputs, "pixel_values": flat}, **GEN)


def test_a_real_processor_s_prompts_are_pruned_image_by_image(model):
    """The processor cuts the wide image into a 1 x 2 grid, the square one into 2 x 2, and writes the tags."""
    from PIL import Image

    processor = tiny_idefics3_processor(model)
    wide, square = Image.new("RGB", (112, 56), "red"), Image.new("RGB", (100, 100), "blue")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is the cube ?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[text, text], images=[[wide], [square]], return_tensors="pt", padding=True)
    assert get_adapter(model).image_token_counts(inputs) == [48, 80]
    stock = model.generate(**inputs, **GEN)
    with tokenprune.apply(model, "zspa", budget=1.0):
        assert torch.equal(model.generate(**inputs, **GEN), stock)
    with tokenprune.apply(model, "zspa", budget=0.1) as session:
        model.generate(**inputs, **GEN)
    assert session.last.visual_after == [5, 8]
    words = processor.tokenizer.convert_ids_to_tokens(
        inputs["input_ids"][
            Layout.locate(get_adapter(model), inputs["input_ids"], inputs["attention_mask"], None).prompt_mask
        ]
    )
    assert "what" in words
    assert not [word for word in words if word.startswith(("<fake", "<global", "<row", "<image"))], words
    question = processor.tokenizer("what colour is the cube ?", add_special_tokens=False)["input_ids"]
    marked = question_tokens(processor)(inputs["input_ids"], inputs["attention_mask"])
    assert [inputs["input_ids"][b][marked[b]].tolist() for b in range(2)] == [question, question]

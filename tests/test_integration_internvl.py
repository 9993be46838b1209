"""tokenprune.apply on a tiny random InternVLForConditionalGeneration (dynamic tiles, pixel shuffle, 1-D RoPE)."""

import pytest
import torch

import tokenprune
from tokenprune.integrations import get_adapter
from tokenprune.integrations.base import Layout, UnsupportedScoresError
from tokenprune.integrations.internvl import InternVLAdapter
from tokenprune.testing import assert_adapter_contract
from tokenprune.testing.models import (
    IMAGE_TOKEN,
    INTERNVL_IMG_END,
    INTERNVL_IMG_START,
    pad_embeddings_left,
    tiny_internvl,
    tiny_internvl_inputs,
)

GEN = {"max_new_tokens": 6, "do_sample": False}
LAYOUTS = {
    "one image": ([[[5, 6], [7, 8]]], [2]),
    "two rows": ([[[5, 6], [7, 8]], [[9], [10, 11, 12]]], [2, 3]),  # 32 and 48 tokens
    "two images in a row": ([[[5], [6, 7], [8]], [[9], [10, 11, 12]]], [1, 2, 3]),
}


@pytest.fixture(scope="module")
def model():
    return tiny_internvl(seed=0)


def test_the_builtin_adapter_is_used(model):
    assert type(get_adapter(model)) is InternVLAdapter


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_adapter_contract(model, layout):
    assert_adapter_contract(model, tiny_internvl_inputs(model, *LAYOUTS[layout]), generate_kwargs=GEN)


def test_an_image_is_all_its_tiles_tokens_under_one_budget(model):
    inputs = tiny_internvl_inputs(model, *LAYOUTS["two images in a row"])
    with tokenprune.apply(model, "divprune", budget=0.25) as session:
        model.generate(**inputs, **GEN)
    assert session.last.visual_before == [16, 32, 48]  # 16 tokens a tile
    assert session.last.visual_after == [4, 8, 12]


def test_pruned_generation_equals_the_lm_fed_text_plus_kept_tokens_directly(model):
    """The ideal: the short sequence built by hand from the stock tile features and the kept indices."""
    inputs = tiny_internvl_inputs(model, *LAYOUTS["two images in a row"])
    with tokenprune.apply(model, "zspa", budget=5, core_ratio=0.4) as session:
        out = model.generate(**inputs, **GEN)
    new_tokens = out[:, inputs["input_ids"].shape[1] :]

    tiles = model.model.get_image_features(inputs["pixel_values"]).pooler_output  # (tiles, 16, D)
    flat = tiles.reshape(-1, tiles.shape[-1])
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    kept = iter(session.last.kept)
    offset, rows = 0, []
    for b in range(inputs["input_ids"].shape[0]):
        real = inputs["attention_mask"][b].bool()
        ids, emb = inputs["input_ids"][b][real].tolist(), embeds[b][real]
        pieces, i = [], 0
        while i < len(ids):
            if ids[i] == IMAGE_TOKEN:
                n = next(j for j in range(i, len(ids) + 1) if j == len(ids) or ids[j] != IMAGE_TOKEN) - i
                pieces.append(flat[offset : offset + n][next(kept)])
                offset, i = offset + n, i + n
            else:
                pieces.append(emb[i : i + 1])
                i += 1
        rows.append(torch.cat(pieces))
    short, mask = pad_embeddings_left(rows)
    assert mask.sum(1).tolist() == session.last.sequence_after
    assert torch.equal(new_tokens, model.generate(inputs_embeds=short, attention_mask=mask, **GEN))


def test_fastv_prunes_inside_the_language_model(model):
    inputs = tiny_internvl_inputs(model, *LAYOUTS["two rows"])
    stock = model.generate(**inputs, **GEN)
    with tokenprune.apply(model, "fastv", layer=1, budget=1.0):
        assert torch.equal(model.generate(**inputs, **GEN), stock)
    with tokenprune.apply(model, "fastv", layer=1, budget=4) as session:
        model.generate(**inputs, **GEN)
    assert session.last.visual_after == [4, 4]


@pytest.mark.parametrize("method", ["fastervlm", "visionzip"])
def test_cls_attention_methods_are_refused_because_tokens_fold_four_patches(model, method):
    with (
        pytest.raises(UnsupportedScoresError, match="folds 2 x 2 patches into each token"),
        tokenprune.apply(model, method, budget=4),
    ):
        pytest.fail("refused before the block runs")


def test_placeholders_that_do_not_cover_whole_tiles_are_refused_clearly(model):
    inputs = tiny_internvl_inputs(model, *LAYOUTS["two rows"])
    ids = inputs["input_ids"].clone()
    first = int((ids[0] == IMAGE_TOKEN).nonzero()[0, 0])
    ids[0, first] = 7  # one placeholder of the first image is text now
    with (
        tokenprune.apply(model, "zspa", budget=0.5),
        pytest.raises(tokenprune.InputError, match=r"placeholder runs of \[31, 48\] tokens, but the 5 tiles give 16"),
    ):
        model.generate(**{**inputs, "input_ids": ids}, **GEN)


def test_prune_inputs_gives_kwargs_stock_generate_runs_as_they_are(model):
    """The public prune_inputs: kwargs in the layout the model's forward reads (one tensor), and the per-image
    lists generate can copy for beams kept apart (``expandable``)."""
    from tokenprune.integrations import prune_inputs

    inputs = tiny_internvl_inputs(model, *LAYOUTS["two rows"])
    pruned = prune_inputs(get_adapter(model), tokenprune.create_method("zspa"), 0.25, inputs)
    assert isinstance(pruned.kwargs["mm_encoder_outputs"]["image"].pooler_output, torch.Tensor)
    assert [f.shape[0] for f in pruned.expandable["image"].pooler_output] == [8, 12]
    with tokenprune.apply(model, "zspa", budget=0.25):
        inside = model.generate(**inputs, **GEN)[:, inputs["input_ids"].shape[1] :]
    outside = model.generate(**pruned.kwargs, **GEN)[:, pruned.kwargs["input_ids"].shape[1] :]
    assert torch.equal(inside, outside)


def test_a_caller_scores_method_is_told_why_this_model_gives_no_cls_attention(model):
    with (
        pytest.raises(UnsupportedScoresError, match=r"no vision \[CLS\] attention to give \(its pixel shuffle folds"),
        tokenprune.apply(model, "attention", budget=4),
    ):
        pytest.fail("refused before the block runs")


def test_per_token_tensors_an_adapter_does_not_hand_to_its_model_are_refused():
    """A plugin adapter giving ImageTokens.per_token without overriding rebuild would drop them silently."""
    from tokenprune.errors import TokenPruneError
    from tokenprune.integrations import prune_inputs
    from tokenprune.integrations.base import ImageTokens

    class WithExtras(InternVLAdapter):
        def encode_images(self, inputs, *, scores=None, **options):
            images = super().encode_images(inputs, scores=scores)
            return ImageTokens(features=images.features, per_token={"extra": images.features})

    model = tiny_internvl(seed=0)
    inputs = tiny_internvl_inputs(model, *LAYOUTS["one image"])
    with pytest.raises(TokenPruneError, match=r"per-token tensors \['extra'\].*override encoder_output"):
        prune_inputs(WithExtras(model), tokenprune.create_method("zspa"), 0.5, inputs)


def test_the_image_markers_are_never_prompt_text(model):
    inputs = tiny_internvl_inputs(model, *LAYOUTS["two images in a row"])
    layout = Layout.locate(get_adapter(model), inputs["input_ids"], inputs["attention_mask"], None)
    assert {INTERNVL_IMG_START, INTERNVL_IMG_END} <= set(inputs["input_ids"].flatten().tolist())
    assert set(inputs["input_ids"][layout.prompt_mask].tolist()) == {5, 6, 7, 8, 9, 10, 11, 12}

"""tokenprune.apply on a tiny random LlavaNextForConditionalGeneration (anyres tiles, image_newline tokens)."""

from pathlib import Path

import pytest
import torch

import tokenprune
from tokenprune.integrations import get_adapter, prune_inputs
from tokenprune.testing import assert_adapter_contract
from tokenprune.testing.models import (
    IMAGE_TOKEN,
    llava_next_image_tokens,
    record_calls,
    tiny_llava_next,
    tiny_llava_next_inputs,
)

GEN = {"max_new_tokens": 6, "do_sample": False}
# Image sizes (height, width) of different aspect ratios: 52 tokens (4 newlines), 72 (8), 88 (8).
SIZES = [(40, 100), (90, 60), (100, 100)]
ONE_PER_ROW = ([[[5, 17, 9], [33, 41]], [[23], [64, 3, 55, 8]]], SIZES[:2])
TWO_IN_A_ROW = ([[[5, 17], [9, 33], [41]], [[23], [64, 3, 55]]], SIZES)  # row 0: two images, row 1: one
LAYOUTS = {
    "batch1": ([ONE_PER_ROW[0][0]], SIZES[:1]),
    "batch2": ONE_PER_ROW,
    "two-images-in-a-row": TWO_IN_A_ROW,
}


@pytest.fixture(scope="module")
def model():
    return tiny_llava_next(seed=0)


@pytest.fixture(scope="module")
def inputs(model):
    return tiny_llava_next_inputs(model, *TWO_IN_A_ROW)


def newline_masks(model, inputs):
    """Each image's image_newline positions in the stock packed features (the newline is copied verbatim)."""
    features = model.model.get_image_features(
        pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"], return_dict=True
    ).pooler_output
    return [(f == model.model.image_newline.to(f)).all(-1) for f in features]


def test_the_tiny_inputs_match_the_model_packing(model, inputs):
    """Processor-style token counts, the stock packing and the adapter's newline masks all agree."""
    counts = [llava_next_image_tokens(model, *size) for size in SIZES]
    assert counts == [(52, 4), (72, 8), (88, 8)]
    masks = newline_masks(model, inputs)
    assert [(len(m), int(m.sum())) for m in masks] == counts
    adapter = get_adapter(model)
    for protected in (adapter.encode_images(inputs).protected, adapter.protected_tokens(inputs)):
        assert [torch.equal(p, m) for p, m in zip(protected, masks, strict=True)] == [True] * 3


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_the_adapter_contract(model, layout):
    """Budget 1.0 == stock, prefill sees text + K + newlines, stats, forward with labels, restoring, text-only."""
    inputs = tiny_llava_next_inputs(model, *LAYOUTS[layout])
    assert_adapter_contract(model, inputs, generate_kwargs=GEN, methods=("zspa", "divprune", "stride", "fastervlm"))


@pytest.mark.parametrize("method", ["zspa", "divprune", "stride", "random", "relevance", "fastervlm"])
def test_newlines_are_always_kept_and_outside_an_int_budget(model, inputs, method):
    masks = newline_masks(model, inputs)
    with tokenprune.apply(model, method, budget=2) as session:
        model.generate(**inputs, **GEN)
    for kept, mask in zip(session.last.kept, masks, strict=True):
        assert set(mask.nonzero()[:, 0].tolist()) <= set(kept.tolist())
        assert len(kept) == 2 + int(mask.sum())


def test_a_ratio_budget_is_a_ratio_of_the_non_newline_tokens(model, inputs):
    masks = newline_masks(model, inputs)
    with tokenprune.apply(model, "divprune", budget=0.25) as session:
        model.generate(**inputs, **GEN)
    patches = [int((~m).sum()) for m in masks]  # 48, 64, 80
    assert session.last.visual_after == [p // 4 + int(m.sum()) for p, m in zip(patches, masks, strict=True)]
    for kept, mask in zip(session.last.kept, masks, strict=True):
        assert set(mask.nonzero()[:, 0].tolist()) <= set(kept.tolist())


def test_pruned_generation_equals_the_lm_fed_text_plus_kept_tokens_directly(model, inputs):
    """The ideal: the short sequence built by hand (same kept tokens) through stock generate on embeddings."""
    with tokenprune.apply(model, "zspa", budget=5, core_ratio=0.4) as session:
        out = model.generate(**inputs, **GEN)
    new_tokens = out[:, inputs["input_ids"].shape[1] :]

    features = model.model.get_image_features(
        pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"], return_dict=True
    ).pooler_output
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    images = iter(zip(features, session.last.kept, strict=True))
    rows = []
    for b in range(2):
        real = inputs["attention_mask"][b].bool()
        ids, emb = inputs["input_ids"][b][real], embeds[b][real]
        pieces, start = [], 0
        while start < len(ids):  # text runs are copied, each image's placeholder run is replaced by its kept tokens
            end = start
            while end < len(ids) and (ids[end] == IMAGE_TOKEN) == (ids[start] == IMAGE_TOKEN):
                end += 1
            if ids[start] == IMAGE_TOKEN:
                feats, kept = next(images)
                assert end - start == len(feats)
                pieces.append(feats[kept])
            else:
                pieces.append(emb[start:end])
            start = end
        rows.append(torch.cat(pieces))
    width = max(r.shape[0] for r in rows)
    short = torch.zeros(2, width, embeds.shape[-1])
    mask = torch.zeros(2, width, dtype=torch.long)
    for b, r in enumerate(rows):
        short[b, width - r.shape[0] :], mask[b, width - r.shape[0] :] = r, 1
    assert mask.sum(1).tolist() == session.last.sequence_after
    ideal = model.generate(inputs_embeds=short, attention_mask=mask, **GEN)
    assert torch.equal(new_tokens, ideal)


def test_missing_image_sizes_is_a_clear_error(model, inputs):
    broken = {k: v for k, v in inputs.items() if k != "image_sizes"}
    with tokenprune.apply(model, "zspa", budget=4), pytest.raises(tokenprune.InputError, match="image_sizes"):
        model.generate(**broken, **GEN)


def test_fastervlm_keeps_the_top_cls_attention_patches_of_every_tile(model, inputs):
    """Independent reference: eager CLIP attention maps per tile, mapped to packed positions by matching features."""
    implementation = model.model.vision_tower.config._attn_implementation
    with tokenprune.apply(model, "fastervlm", budget=5) as session:
        model.generate(**inputs, **GEN)
    assert model.model.vision_tower.config._attn_implementation == implementation  # not switched to eager

    pixels = inputs["pixel_values"]
    tiles = torch.cat([p[p.flatten(1).abs().sum(1) > 0] for p in pixels])  # each image's real tiles, in order
    reference = tiny_llava_next(seed=0)  # same weights; eager, asked for the attention maps
    reference.model.vision_tower.config._attn_implementation = "eager"
    with torch.no_grad():
        out = reference.model.vision_tower(tiles, output_attentions=True, output_hidden_states=True)
        cls_to_patches = out.attentions[-2][:, :, 0, 1:].mean(dim=1).flatten()  # the feature layer is -2
        tile_features = model.model.multi_modal_projector(out.hidden_states[-2][:, 1:]).flatten(0, 1)
        packed = model.model.get_image_features(
            pixel_values=pixels, image_sizes=inputs["image_sizes"], return_dict=True
        ).pooler_output
    newline = model.model.image_newline
    for features, kept in zip(packed, session.last.kept, strict=True):
        is_newline = (features == newline).all(-1)
        distance, source = torch.cdist(features[~is_newline], tile_features).min(dim=1)
        assert float(distance.max()) < 1e-4  # every packed patch token is one tile patch
        scores = torch.full((len(features),), -1.0)
        scores[~is_newline] = cls_to_patches[source]
        top = torch.topk(scores, 5).indices
        expected = torch.cat([top, is_newline.nonzero()[:, 0]]).sort().values
        assert kept.tolist() == expected.tolist()


def test_visionzip_merges_the_patches_of_every_tile_as_an_independent_reference_does(model, inputs, ref):
    """Eager CLIP per tile (attention maps, feature-layer keys and hidden states), mapped to packed positions by
    matching features; the float64 reference over each image's patch tokens; newlines kept, outside the budget."""
    budget, ratio = 6, 0.5
    pixels = inputs["pixel_values"]
    tiles = torch.cat([p[p.flatten(1).abs().sum(1) > 0] for p in pixels])  # each image's real tiles, in order
    reference = tiny_llava_next(seed=0)  # same weights; eager, asked for the attention maps
    reference.model.vision_tower.config._attn_implementation = "eager"
    k_proj = reference.model.vision_tower.encoder.layers[-2].self_attn.k_proj  # feature layer -2
    heads = reference.config.vision_config.num_attention_heads
    with torch.no_grad():
        seen, out = record_calls(
            k_proj,
            lambda: reference.model.vision_tower(tiles, output_attentions=True, output_hidden_states=True),
            lambda args, kwargs: args[0],
        )
        cls = out.attentions[-2][:, :, 0, 1:].mean(dim=1).flatten()
        keys = k_proj(seen[0])[:, 1:].unflatten(-1, (heads, -1)).mean(dim=2).flatten(0, 1)
        raw = out.hidden_states[-2][:, 1:].flatten(0, 1)
        tile_features = model.model.multi_modal_projector(raw)
        stock = model.model.get_image_features(
            pixel_values=pixels, image_sizes=inputs["image_sizes"], return_dict=True
        ).pooler_output
        pruned = prune_inputs(
            get_adapter(model), tokenprune.create_method("visionzip", contextual_ratio=ratio), budget, inputs
        )
    features = pruned.kwargs["mm_encoder_outputs"]["image"].pooler_output
    newline = model.model.image_newline
    for full, kept, got in zip(stock, pruned.stats.kept, features, strict=True):
        is_newline = (full == newline).all(-1)
        distance, source = torch.cdist(full[~is_newline], tile_features).min(dim=1)
        assert float(distance.max()) < 1e-4  # every packed patch token is one tile patch
        patches = (~is_newline).nonzero()[:, 0]
        index, merged = ref.visionzip_row(cls[source].numpy(), keys[source].numpy(), raw[source].numpy(), budget, ratio)
        expected = torch.cat([patches[torch.from_numpy(index)], is_newline.nonzero()[:, 0]]).sort().values
        assert kept.tolist() == expected.tolist()
        at_patches = torch.isin(kept, patches[torch.from_numpy(index)])
        projected = model.model.multi_modal_projector(torch.from_numpy(merged).float())
        torch.testing.assert_close(got[at_patches], projected, rtol=1e-4, atol=1e-5)
        assert torch.equal(got[~at_patches], full[kept[~at_patches]])  # the newlines, as they were
    assert pruned.stats.visual_after == [budget + n for n in (4, 8, 8)]


def test_fastv_keeps_newlines_outside_the_budget():
    model = tiny_llava_next(seed=0, layers=3)
    inputs = tiny_llava_next_inputs(model, [[[5, 6], [7, 8, 9]], [[3], [4]]], [(40, 100), (90, 60)])
    newlines = [int(mask.sum()) for mask in get_adapter(model).protected_tokens(inputs)]
    with tokenprune.apply(model, "fastv", budget=4, layer=1) as session:
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert session.last.visual_after == [4 + n for n in newlines]


@pytest.mark.parametrize("method", ["zspa", "fastv"])
def test_tokenprune_reads_the_device_six_times_here(method):
    """Images of two sizes, protected newlines, prompts of two lengths: tokenprune's own code reads
    the device 6 times, whatever the number of images. They are the placeholders, the layout's counts,
    the newline counts, and in the selector the masks (real tokens per image, every prompt non-empty,
    in one read) and the result check, then the statistics. (transformers' anyres helpers read each image's size too, as
    they do in a stock call.) zspa runs the GPU's fill here; the CPU's blocked fill reads by design.
    """
    from tokenprune.stages import Hierarchical, MaxMin, Relevance, TopK
    from tokenprune.testing import HostTraffic

    model = tiny_llava_next(seed=0, layers=3)
    inputs = tiny_llava_next_inputs(model, [[[5, 6], [7, 8, 9]], [[3], [4]]], [(40, 100), (90, 60)])
    if method == "zspa":
        selector, params = Hierarchical(TopK(Relevance()), MaxMin(block_size=0), core_ratio=0.2), {}
    else:
        selector, params = "fastv", {"layer": 1}
    with torch.no_grad(), tokenprune.apply(model, selector, budget=4, **params), HostTraffic() as traffic:
        model(**inputs)
    package = str(Path(tokenprune.__file__).parent)
    ours = [where for where in traffic.where if where.startswith(package)]
    assert len(ours) == 6, ours


def test_original_positions_keep_every_kept_token_and_the_text_where_they_were(model, inputs, lm_positions):
    """Kept patches, newlines and text keep their full-sequence positions; decoding continues after them."""
    with lm_positions(model) as seen, tokenprune.apply(model, "zspa", budget=0.25, positions="original") as session:
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
    prefill, *steps = seen
    kept = iter(session.last.kept)
    for row, (ids, real) in enumerate(zip(inputs["input_ids"], inputs["attention_mask"].bool(), strict=True)):
        ids = ids[real]
        image = (ids == IMAGE_TOKEN).nonzero()[:, 0]
        runs = torch.tensor_split(image, (torch.diff(image) > 1).nonzero()[:, 0] + 1)  # one run per image
        keep = torch.ones(len(ids), dtype=torch.bool)
        for run in runs:
            keep[run] = False
            keep[run[next(kept)]] = True
        expected = torch.arange(len(ids))[keep]
        assert prefill[row, -len(expected) :].tolist() == expected.tolist(), row
    lengths = inputs["attention_mask"].sum(dim=1)
    assert [step[:, -1].tolist() for step in steps] == [(lengths + t).tolist() for t in range(len(steps))]

"""tokenprune.apply on tiny random Qwen2_5_VLForConditionalGeneration and Qwen2VLForConditionalGeneration
(the real transformers code paths): every test runs on both families.

Qwen2.5-VL and Qwen2-VL place tokens by 3-D M-RoPE, so besides the sequence the tests check positions:
each kept visual token keeps its (t, h, w) position of the full sequence, and text and decoding continue
where they would have without pruning.
"""

import inspect

import pytest
import torch

import tokenprune
from tokenprune.integrations import get_adapter, prune_inputs
from tokenprune.integrations.base import UnsupportedScoresError
from tokenprune.integrations.qwen2_5_vl import Qwen2_5_VLAdapter
from tokenprune.integrations.qwen2_vl import Qwen2VLAdapter
from tokenprune.stages import Contextual, Relevance, Stride, TopK
from tokenprune.testing import assert_adapter_contract
from tokenprune.testing.models import (
    IMAGE_TOKEN,
    QWEN_VIDEO_TOKEN,
    QWEN_VISION_END,
    QWEN_VISION_START,
    record_calls,
    tiny_qwen2_5_vl,
    tiny_qwen2_5_vl_inputs,
    tiny_qwen2_vl,
)

GEN = {"max_new_tokens": 6, "do_sample": False}
SCORED = {**GEN, "output_scores": True, "return_dict_in_generate": True}
# one image per row; grids of different shapes, so 16 and 12 visual tokens
PROMPTS = [[[5, 17, 9], [41, 8, 77, 12, 6]], [[23], [64, 3, 55, 90, 31, 7, 44]]]
GRIDS = [(1, 8, 8), (1, 4, 12)]
# row 0 has two images (8 and 6 tokens), row 1 one (12 tokens)
MULTI_PROMPTS = [[[5, 6], [7, 8, 9], [10, 11]], [[23, 24], [64, 3, 55]]]
MULTI_GRIDS = [(1, 4, 8), (1, 6, 4), (1, 4, 12)]


FAMILIES = {"qwen2.5-vl": (tiny_qwen2_5_vl, Qwen2_5_VLAdapter), "qwen2-vl": (tiny_qwen2_vl, Qwen2VLAdapter)}


@pytest.fixture(scope="module", params=list(FAMILIES))
def model(request):
    return FAMILIES[request.param][0](seed=1)


@pytest.fixture(scope="module")
def inputs(model):
    return tiny_qwen2_5_vl_inputs(model, PROMPTS, GRIDS)


def rope_positions(model, run):
    """The (3, B, L) M-RoPE positions the LM's rotary embedding gets, call by call."""
    rotary = model.model.language_model.rotary_emb
    return record_calls(
        rotary, run, lambda args, kwargs: kwargs.get("position_ids", args[1] if len(args) > 1 else None)
    )


def visual_features(model, inputs):
    """Each visual input's projected tokens in placeholder order, encoded here by the stock model."""
    encoded = {}
    for token, pixels, grid, encode in (
        (IMAGE_TOKEN, "pixel_values", "image_grid_thw", model.model.get_image_features),
        (QWEN_VIDEO_TOKEN, "pixel_values_videos", "video_grid_thw", model.model.get_video_features),
    ):
        if inputs.get(pixels) is not None:
            encoded[token] = iter(encode(inputs[pixels], inputs[grid]).pooler_output)
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    features = []
    for b in range(ids.shape[0]):
        row = ids[b][mask[b]].tolist()
        for i, token in enumerate(row):
            if token in encoded and (i == 0 or row[i - 1] != token):  # the first placeholder of a run
                features.append(next(encoded[token]))
    return features


def ideal_short_sequence(model, inputs, kept):
    """Text + kept visual tokens of every row built by hand, with each token's original M-RoPE position.

    Returns ``inputs_embeds``, ``attention_mask`` and ``(4, B, L')`` ``position_ids`` (left padded), from
    the unpruned inputs and the kept indices of each image or video alone: no tokenprune code involved.
    """
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    features = visual_features(model, inputs)
    positions, _ = model.model.get_rope_index(
        ids,
        inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"),
        second_per_grid_ts=inputs.get("second_per_grid_ts"),
        attention_mask=mask,
    )
    embeds = model.get_input_embeddings()(ids)
    visual = (ids == IMAGE_TOKEN) | (ids == QWEN_VIDEO_TOKEN)
    rows, image = [], 0
    for b in range(ids.shape[0]):
        keep = mask[b].bool() & ~visual[b]
        row_embeds = embeds[b].clone()
        placeholders = visual[b].nonzero()[:, 0]
        offset = 0
        while offset < placeholders.shape[0]:  # this row's images and videos, one after the other
            n = features[image].shape[0]
            span = placeholders[offset : offset + n]
            keep[span[kept[image]]] = True
            row_embeds[span] = features[image]
            offset, image = offset + n, image + 1
        rows.append((row_embeds[keep], positions[:, b, keep]))
    width = max(r[0].shape[0] for r in rows)
    short = torch.zeros(len(rows), width, embeds.shape[-1])
    short_mask = torch.zeros(len(rows), width, dtype=torch.long)
    short_positions = torch.zeros(4, len(rows), width, dtype=torch.long)
    for b, (row_embeds, row_positions) in enumerate(rows):
        n = row_embeds.shape[0]
        short[b, width - n :], short_mask[b, width - n :] = row_embeds, 1
        short_positions[0, b, width - n :] = torch.arange(n)
        short_positions[1:, b, width - n :] = row_positions
    return short, short_mask, short_positions


# videos: (t, h, w) with t temporal patches of two frames; second_per_grid_ts != 1 scales their time positions
VIDEO_CASES = {
    "videos": ([[[5, 17, 9], [41, 8]], [[23], [64, 3, 55]]], [(2, 4, 4), (3, 4, 6)], ["video", "video"]),
    "an image, a video, an image": (MULTI_PROMPTS, [(1, 4, 8), (2, 6, 4), (1, 4, 12)], ["image", "video", "image"]),
    "a video, an image, a video": (MULTI_PROMPTS, [(2, 4, 8), (1, 6, 4), (2, 4, 4)], ["video", "image", "video"]),
}


def video_inputs(model, case, **kwargs):
    prompts, grids, kinds = VIDEO_CASES[case]
    seconds = [0.5, 2.0][: kinds.count("video")] if hasattr(model.config.vision_config, "tokens_per_second") else None
    return tiny_qwen2_5_vl_inputs(model, prompts, grids, kinds=kinds, seconds=seconds, **kwargs)


def case_inputs(model, case, **kwargs):
    if case in VIDEO_CASES:
        return video_inputs(model, case, **kwargs)
    prompts, grids = (PROMPTS, GRIDS) if case == "two rows" else (MULTI_PROMPTS, MULTI_GRIDS)
    return tiny_qwen2_5_vl_inputs(model, prompts, grids, **kwargs)


def test_the_builtin_adapter_is_used_and_vision_markers_are_not_prompt_text(model):
    adapter = get_adapter(model)
    family = next(adapter for build, adapter in FAMILIES.values() if type(model).__name__ in build.__doc__)
    assert type(adapter) is family and adapter.image_token_id == IMAGE_TOKEN
    assert {QWEN_VISION_START, QWEN_VISION_END, QWEN_VIDEO_TOKEN} <= adapter.special_token_ids()


@pytest.mark.parametrize("case", ["one row", "two rows", "two images in a row"])
def test_the_adapter_contract(model, case):
    """Budget 1.0 == stock (scores too), prefill/decode lengths, stats, forward with labels, restoring, text-only."""
    prompts, grids = {
        "one row": (PROMPTS[:1], GRIDS[:1]),
        "two rows": (PROMPTS, GRIDS),
        "two images in a row": (MULTI_PROMPTS, MULTI_GRIDS),
    }[case]
    assert_adapter_contract(model, tiny_qwen2_5_vl_inputs(model, prompts, grids), generate_kwargs=GEN)


def test_positions_come_from_explicit_position_ids_or_from_the_placeholders(model, inputs):
    stock = model.generate(**inputs, **GEN)
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        image_grid_thw=inputs["image_grid_thw"],
        attention_mask=inputs["attention_mask"],
    )
    no_types = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    with tokenprune.apply(model, "zspa", budget=1.0):
        assert torch.equal(model.generate(**inputs, position_ids=positions, **GEN), stock)
        # older processors give no mm_token_type_ids: the M-RoPE positions are still the model's own
        assert torch.equal(model.generate(**no_types, **GEN), stock)


@pytest.mark.parametrize("case", ["two rows", "two images in a row", *VIDEO_CASES])
def test_kept_tokens_keep_their_3d_positions_and_decoding_continues_the_original_ones(model, case):
    inputs = case_inputs(model, case)
    stock_positions, _ = rope_positions(model, lambda: model.generate(**inputs, **GEN))
    with tokenprune.apply(model, "zspa", budget=3) as session:
        positions, _ = rope_positions(model, lambda: model.generate(**inputs, **GEN))

    _, _, expected = ideal_short_sequence(model, inputs, session.last.kept)
    assert torch.equal(positions[0], expected[1:])  # prefill: the original (t, h, w) of every kept token
    assert positions[0].shape[-1] < stock_positions[0].shape[-1]
    # decoding: original largest position + 1, + 2, ... exactly as without pruning
    assert len(positions) == len(stock_positions) == GEN["max_new_tokens"]
    for step, (ours, stock) in enumerate(zip(positions[1:], stock_positions[1:], strict=True)):
        assert torch.equal(ours, stock), f"decode step {step + 1}"
    # and the rows' positions really are 3-D: height/width differ from the temporal row on the image
    assert not torch.equal(expected[1], expected[2])


def test_the_attention_mask_positions_are_contiguous_text_positions(model, inputs):
    layer = model.model.language_model.layers[0]
    with tokenprune.apply(model, "divprune", budget=5):
        seen, _ = record_calls(layer, lambda: model.generate(**inputs, **GEN), lambda a, k: k.get("position_ids"))
    mask = (inputs["attention_mask"].sum(1) - (inputs["input_ids"] == IMAGE_TOKEN).sum(1) + 5).tolist()
    width = max(mask)
    for b, n in enumerate(mask):
        assert seen[0][b, width - n :].tolist() == list(range(n))


@pytest.mark.parametrize("case", ["two rows", "two images in a row", *VIDEO_CASES])
def test_pruned_generation_equals_the_lm_fed_text_plus_k_with_original_positions(model, case):
    """The ideal: the short sequence and its positions built by hand, run through stock generate on embeddings."""
    inputs = case_inputs(model, case)
    with tokenprune.apply(model, "zspa", budget=5, core_ratio=0.4) as session:
        out = model.generate(**inputs, **SCORED)
    new_tokens = out.sequences[:, inputs["input_ids"].shape[1] :]

    short, mask, positions = ideal_short_sequence(model, inputs, session.last.kept)
    ideal = model.generate(inputs_embeds=short, attention_mask=mask, position_ids=positions, **SCORED)
    assert torch.equal(new_tokens, ideal.sequences)
    for a, b in zip(out.scores, ideal.scores, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)

    # positions matter: the same short sequence with 1-D positions predicts differently
    flat = model.generate(inputs_embeds=short, attention_mask=mask, **SCORED)
    assert not torch.allclose(flat.scores[0], ideal.scores[0], atol=1e-4)


def test_session_stats_name_the_tokens_the_lm_sees(model, inputs):
    embeddings = model.model.language_model
    with tokenprune.apply(model, Stride(), budget=2) as session:
        seen, _ = record_calls(embeddings, lambda: model.generate(**inputs, **GEN), lambda a, k: k["inputs_embeds"])
    assert [k.tolist() for k in session.last.kept] == [[4, 12], [3, 9]]
    assert session.last.visual_before == [16, 12] and session.last.visual_after == [2, 2]
    features = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
    prefill = seen[0]
    for b in range(2):
        # the LM's image slots hold exactly the kept features, in order
        row = inputs["input_ids"][b][inputs["attention_mask"][b].bool()]
        start = int((row == QWEN_VISION_START).nonzero()[0, 0])
        width, length = prefill.shape[1], int(session.last.sequence_after[b])
        slots = prefill[b, width - length + start + 1 : width - length + start + 3]
        torch.testing.assert_close(slots, features[b][session.last.kept[b]])


def test_each_row_is_pruned_and_generated_as_if_alone(model, inputs):
    with tokenprune.apply(model, "relevance", budget=4) as session:
        batched = model.generate(**inputs, **GEN)
        batched_kept = session.last.kept
        patches = inputs["image_grid_thw"].prod(-1).tolist()
        for b in range(2):
            n = int(inputs["attention_mask"][b].sum())
            start = sum(patches[:b])
            alone = {k: inputs[k][b : b + 1, -n:] for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
            alone["pixel_values"] = inputs["pixel_values"][start : start + patches[b]]
            alone["image_grid_thw"] = inputs["image_grid_thw"][b : b + 1]
            out = model.generate(**alone, **GEN)
            assert torch.equal(session.last.kept[0], batched_kept[b])
            # the new tokens; a row that ended (EOS) before the other is padded after it in the batch
            new = batched[b, inputs["input_ids"].shape[1] :].tolist()
            assert out[0, n:].tolist() == new[: len(out[0, n:])] and set(new[len(out[0, n:]) :]) <= {0}


def test_beam_search_at_budget_one_matches_stock(model, inputs):
    beams = {**GEN, "num_beams": 2, "num_return_sequences": 2}
    stock = model.generate(**inputs, **beams)
    with tokenprune.apply(model, "divprune", budget=1.0):
        assert torch.equal(model.generate(**inputs, **beams), stock)


@pytest.mark.parametrize("left", [True, False], ids=["left padded", "right padded"])
def test_forward_at_budget_one_equals_stock(model, left):
    inputs = tiny_qwen2_5_vl_inputs(model, PROMPTS, GRIDS, left=left)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    stock = model(**inputs, labels=labels)
    with tokenprune.apply(model, "zspa", budget=1.0):
        same = model(**inputs, labels=labels)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(same.logits[real], stock.logits[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(same.loss, stock.loss)


def test_manual_decoding_after_a_pruned_forward_continues_the_original_positions(model, inputs):
    """A hand-written loop (forward, then forward on the cache without position_ids) decodes at stock positions."""
    alone = tiny_qwen2_5_vl_inputs(model, PROMPTS[:1], GRIDS[:1])

    def loop():
        out = model(**alone, use_cache=True)
        token = out.logits[:, -1:].argmax(-1)
        # transformers 5.24 renamed past_key_values to cache (the old name is removed in 5.40)
        name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        return model(input_ids=token, use_cache=True, **{name: getattr(out, name)})

    stock, _ = rope_positions(model, loop)
    with tokenprune.apply(model, "zspa", budget=3):
        ours, _ = rope_positions(model, loop)
    assert ours[0].shape[-1] < stock[0].shape[-1]
    assert torch.equal(ours[1], stock[1])
    assert int(ours[1].max()) == int(stock[0].max()) + 1


@pytest.mark.parametrize("method", ["fastervlm", "visionzip"])
def test_cls_attention_methods_are_refused_because_the_encoder_has_no_cls_token(model, inputs, method):
    """Refused when the block is entered (the adapter declares no score source), and by encode_images too."""
    with pytest.raises(UnsupportedScoresError, match="no CLS token"), tokenprune.apply(model, method, budget=4):
        pytest.fail("refused before the block runs")
    assert get_adapter(model).score_sources == frozenset()
    with pytest.raises(UnsupportedScoresError, match="no CLS token"):
        get_adapter(model).encode_images(inputs, scores="cls_attention")
    assert model.generate(**inputs, **GEN).shape[0] == inputs["input_ids"].shape[0]  # the model was left as it was


def test_a_merging_composition_merges_the_merger_inputs_of_each_token(model, inputs):
    """The raw features are the patch merger's MLP input, which the encoder computes in window order; mapped to
    the tokens independently here, by matching each stock feature with the MLP of one captured input row."""
    mlp = model.model.visual.merger.mlp
    with torch.no_grad():
        seen, stock = record_calls(
            mlp,
            lambda: model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"], return_dict=True),
            lambda args, kwargs: args[0],
        )
        window_raw = seen[0]
        window_features = mlp(window_raw)
        selector = Contextual(core=TopK(Relevance()), fill=Stride(start=True), core_ratio=0.5)
        pruned = prune_inputs(get_adapter(model), selector, 0.5, inputs)
    got = pruned.kwargs["mm_encoder_outputs"]["image"].pooler_output
    assert len(pruned.stats.merged) == len(got) == len(stock.pooler_output)
    for full, owner, kept, features in zip(
        stock.pooler_output, pruned.stats.merged, pruned.stats.kept, got, strict=True
    ):
        distance, source = (full[:, None] - window_features[None]).abs().amax(dim=-1).min(dim=1)
        assert float(distance.max()) < 1e-6 and len(set(source.tolist())) == len(source)  # one row per token
        raw = window_raw[source]  # this image's raw features, token by token
        assert (owner >= 0).sum() == len(full) - len(kept) > 0  # every dropped token joined a contextual one
        merged = raw.clone()
        for target in owner[owner >= 0].unique().tolist():
            merged[target] = raw[target] + raw[owner == target].mean(dim=0)
        with torch.no_grad():
            torch.testing.assert_close(features, mlp(merged[kept]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", VIDEO_CASES)
def test_the_adapter_contract_with_videos(model, case):
    """Videos alone and beside images: budget 1.0 == stock, lengths, stats, merging (raw features of every
    frame back in raster order), restoring."""
    assert_adapter_contract(model, video_inputs(model, case), generate_kwargs=GEN)


def test_a_video_is_one_visual_input_selected_across_its_frames(model):
    """One budget over all the video's tokens, stats per video, and its time positions scaled as the model does."""
    inputs = video_inputs(model, "videos")
    with tokenprune.apply(model, "divprune", budget=0.25) as session:
        model.generate(**inputs, **GEN)
    sizes = (inputs["video_grid_thw"].prod(-1) // 4).tolist()
    assert session.last.visual_before == sizes == [8, 18]
    assert session.last.visual_after == [2, 5]  # floor(0.25 * N + 0.5)
    frames = inputs["video_grid_thw"][:, 1:].prod(-1) // 4  # tokens per temporal patch
    assert any(len({int(k) // int(f) for k in kept}) > 1 for kept, f in zip(session.last.kept, frames, strict=True))

    # the second video's kept tokens at their (time, height, width) positions, written out from its grid:
    # row 1 is [23, <vision_start>, video, ...], so the video starts at position 2; a (3, 4, 6) patch grid
    # merges to 3 x 2 x 3 tokens; time steps by tokens_per_second * second_per_grid_ts (2 s) per temporal patch
    with tokenprune.apply(model, "divprune", budget=0.25) as session:
        positions, _ = rope_positions(model, lambda: model.generate(**inputs, **GEN))
    kept = session.last.kept[1]
    # (Qwen2-VL has no second_per_grid_ts: its time steps by 1)
    step = getattr(model.config.vision_config, "tokens_per_second", 0.5) * 2.0
    expected = torch.stack([2 + (kept // 6) * step, 2 + (kept % 6) // 3, 2 + kept % 3]).long()
    length = session.last.sequence_after[1]
    slots = positions[0][:, 1, positions[0].shape[-1] - length + 2 :][:, : len(kept)]
    assert torch.equal(slots, expected)


def test_fastv_prunes_video_tokens_inside_the_language_model(model):
    inputs = video_inputs(model, "an image, a video, an image")
    stock = model.generate(**inputs, **GEN)
    with tokenprune.apply(model, "fastv", layer=1, budget=1.0):
        assert torch.equal(model.generate(**inputs, **GEN), stock)
    with tokenprune.apply(model, "fastv", layer=1, budget=0.25) as session:
        model.generate(**inputs, **GEN)
    assert session.last.visual_before == [8, 12, 12]
    assert session.last.visual_after == [2, 3, 3]


def test_placeholders_that_do_not_line_up_with_the_images_and_videos_are_refused_clearly(model):
    """A mixed call tells images from videos by where each one's placeholders start and how many it has."""
    inputs = video_inputs(model, "an image, a video, an image")
    ids = inputs["input_ids"].clone()
    first_video = int((ids[0] == QWEN_VIDEO_TOKEN).nonzero()[0, 0])
    ids[0, first_video : first_video + 2] = IMAGE_TOKEN  # two of the video's tokens marked as an image's
    with (
        tokenprune.apply(model, "zspa", budget=0.5),
        pytest.raises(
            tokenprune.InputError, match=r"placeholders do not line up with the 2 images \(\[8, 12\] tokens\)"
        ),
    ):
        model.generate(**{**inputs, "input_ids": ids}, **GEN)


def test_pixel_values_without_their_grid_are_refused_clearly(model):
    inputs = video_inputs(model, "videos")
    del inputs["video_grid_thw"]
    with (
        tokenprune.apply(model, "zspa", budget=0.5),
        pytest.raises(tokenprune.InputError, match=r"pixel_values_videos need video_grid_thw of shape \(n, 3\)"),
    ):
        model.generate(**inputs, **GEN)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_adapter_contract_on_cuda():
    """The whole contract on the GPU, positions included (budget 1.0 gives the stock tokens)."""
    model = tiny_qwen2_5_vl(seed=1).cuda()
    inputs = {key: value.cuda() for key, value in tiny_qwen2_5_vl_inputs(model, PROMPTS, GRIDS).items()}
    assert_adapter_contract(model, inputs, generate_kwargs=GEN)


def test_a_chunked_prefill_gives_the_same_tokens_and_positions(model, inputs):
    """``prefill_chunk_size``: the pruned sequence, with its original M-RoPE positions, in several chunks."""
    with tokenprune.apply(model, "zspa", budget=0.5):
        whole = model.generate(**inputs, **GEN)
        chunked = model.generate(**inputs, **GEN, prefill_chunk_size=4)
    assert torch.equal(chunked, whole)


def test_original_is_the_only_positions_mode_and_the_default(model, inputs):
    with (
        pytest.raises(tokenprune.InputError, match="supports positions \\['original'\\]"),
        tokenprune.apply(model, "zspa", budget=0.3, positions="contiguous"),
    ):
        pass
    outs = []
    for positions in (None, "original"):
        with tokenprune.apply(model, "zspa", budget=0.3, positions=positions) as session:
            outs.append(model.generate(**inputs, max_new_tokens=4, do_sample=False))
        assert session.positions == "original"
    assert torch.equal(*outs)


@pytest.mark.parametrize("method", ["zspa", "fastv"])
def test_a_budget_too_large_for_a_video_names_the_video(model, method):
    """Errors name each input by its kind and its row in pixel_values or pixel_values_videos."""
    inputs = tiny_qwen2_5_vl_inputs(
        model, MULTI_PROMPTS, [(2, 8, 8), (2, 4, 4), (1, 4, 12)], kinds=["image", "video", "image"]
    )
    extra = {"layer": 1} if method == "fastv" else {}
    with (
        tokenprune.apply(model, method, budget=9, **extra),
        pytest.raises(tokenprune.BudgetError, match=r"budget=9 exceeds the 8 visual tokens in video 0\."),
    ):
        model.generate(**inputs, **GEN)


@pytest.mark.parametrize("given", ["videos", "images"])
def test_a_call_of_one_kind_behind_the_other_kinds_placeholders_is_refused_clearly(model, given):
    """Video pixels behind image placeholders (or the reverse): stock fails with a TypeError deep in its M-RoPE."""
    kinds = ["video", "video"] if given == "videos" else None
    inputs = tiny_qwen2_5_vl_inputs(model, PROMPTS, [(2, 4, 4), (2, 4, 6)], kinds=kinds)
    ids = inputs["input_ids"]
    swapped = torch.where(ids == IMAGE_TOKEN, QWEN_VIDEO_TOKEN, torch.where(ids == QWEN_VIDEO_TOKEN, IMAGE_TOKEN, ids))
    other = "image" if given == "videos" else "video"
    with (
        tokenprune.apply(model, "zspa", budget=0.5),
        pytest.raises(tokenprune.InputError, match=rf"gives only {given}, but 20 of its placeholders are {other} ones"),
    ):
        model.generate(**{**inputs, "input_ids": swapped}, **GEN)


def test_videos_add_few_reads_of_the_device_and_a_call_asks_for_its_kinds_once(model):
    """tokenprune's own reads of the device for a pruned forward: a video-only call reads no more than an image-only
    one; a call mixing them reads its placeholders' kinds once (encoding and rebuilding ask again)."""
    from pathlib import Path

    from tokenprune.stages import Hierarchical, MaxMin, Relevance, TopK
    from tokenprune.testing import HostTraffic

    selector = Hierarchical(TopK(Relevance()), MaxMin(block_size=0), core_ratio=0.2)  # the GPU's route
    package = str(Path(tokenprune.__file__).parent)

    def reads(inputs):
        with torch.no_grad(), tokenprune.apply(model, selector, budget=4), HostTraffic() as traffic:
            model(**inputs)
        return [where for where in traffic.where if where.startswith(package)]

    grids = [(2, 4, 4), (2, 4, 6)]
    images = reads(tiny_qwen2_5_vl_inputs(model, PROMPTS, grids))
    videos = reads(tiny_qwen2_5_vl_inputs(model, PROMPTS, grids, kinds=["video", "video"]))
    assert len(videos) <= len(images), (videos, images)
    mixed = reads(video_inputs(model, "an image, a video, an image"))
    assert len(mixed) <= len(images) + 3, mixed  # the placeholders' kinds and the two grids, once


def test_fastv_budget_errors_name_the_video_under_beam_search_too(model):
    inputs = tiny_qwen2_5_vl_inputs(
        model, MULTI_PROMPTS, [(2, 8, 8), (2, 4, 4), (1, 4, 12)], kinds=["image", "video", "image"]
    )
    with (
        tokenprune.apply(model, "fastv", layer=1, budget=9),
        pytest.raises(tokenprune.BudgetError, match=r"in video 0\."),
    ):
        model.generate(**inputs, **GEN, num_beams=2)

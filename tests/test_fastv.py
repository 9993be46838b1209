"""FastV inside the LM of a tiny random LLaVA, under sdpa and eager attention."""

import pytest
import torch

import tokenprune
from tokenprune import TokenPruneError
from tokenprune.errors import InputError
from tokenprune.testing.models import IMAGE_TOKEN, tiny_llava, tiny_llava_inputs

GEN = {"max_new_tokens": 6, "do_sample": False}
PROMPTS = [([5, 6, 7, 8], [9, 10, 11]), ([3], [4, 12])]


def build(implementation):
    model = tiny_llava(seed=3, layers=4)
    model.config._attn_implementation = implementation
    model.model.language_model.config._attn_implementation = implementation
    return model


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request):
    return build(request.param)


@pytest.fixture(scope="module")
def inputs(model):
    return tiny_llava_inputs(model, PROMPTS)


def test_keeping_everything_is_identical_to_stock(model, inputs):
    stock = model.generate(**inputs, **GEN)
    with tokenprune.apply(model, "fastv", budget=1.0) as session:
        assert torch.equal(model.generate(**inputs, **GEN), stock)
    assert session.last.visual_after == [16, 16]


@pytest.mark.parametrize("layer", [0, 2, 3])
def test_scores_are_the_last_tokens_attention_at_layer_k(model, inputs, layer):
    """The recomputed attention row ranks tokens exactly as the eager attention maps do."""
    with tokenprune.apply(model, "fastv", budget=5, layer=layer) as session:
        model.generate(**inputs, **GEN)
    eager = build("eager")
    out = eager(**inputs, output_attentions=True)
    maps = out.attentions[layer].mean(dim=1)[:, -1]  # (B, L): the last token's row, heads averaged
    for row in range(2):
        image = (inputs["input_ids"][row] == IMAGE_TOKEN).nonzero()[:, 0]
        expected = torch.topk(maps[row, image], 5).indices.sort().values
        assert session.stats[-1].kept[row].tolist() == expected.tolist()


def test_layer_zero_equals_pruning_before_the_lm_at_original_positions(model, inputs):
    with tokenprune.apply(model, "fastv", budget=4, layer=0) as session:
        fastv = model.generate(**inputs, **GEN)[:, inputs["input_ids"].shape[1] :]
    embeds = model.model(**inputs, output_hidden_states=True).hidden_states[0]  # LM input: text + image features
    positions = (inputs["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    rows = []
    for b in range(2):
        image = (inputs["input_ids"][b] == IMAGE_TOKEN).nonzero()[:, 0]
        drop = torch.ones_like(inputs["attention_mask"][b], dtype=torch.bool)
        drop[image] = False
        drop[image[session.last.kept[b]]] = True
        keep = drop & inputs["attention_mask"][b].bool()
        rows.append((embeds[b][keep], positions[b][keep]))
    width = max(r[0].shape[0] for r in rows)
    short = torch.zeros(2, width, embeds.shape[-1])
    mask = torch.zeros(2, width, dtype=torch.long)
    pos = torch.ones(2, width, dtype=torch.long)
    for b, (e, p) in enumerate(rows):
        short[b, width - e.shape[0] :], mask[b, width - e.shape[0] :], pos[b, width - e.shape[0] :] = e, 1, p
    ideal = model.generate(inputs_embeds=short, attention_mask=mask, position_ids=pos, **GEN)
    assert torch.equal(fastv, ideal)


def test_a_padded_row_generates_as_it_does_alone(model, inputs):
    with tokenprune.apply(model, "fastv", budget=4) as session:
        batched = model.generate(**inputs, **GEN)[:, inputs["input_ids"].shape[1] :]
        real = int(inputs["attention_mask"][1].sum())
        alone_inputs = {
            "input_ids": inputs["input_ids"][1:, -real:],
            "attention_mask": inputs["attention_mask"][1:, -real:],
            "pixel_values": inputs["pixel_values"][1:],
        }
        alone = model.generate(**alone_inputs, **GEN)[:, real:]
    assert torch.equal(batched[1:], alone)
    assert session.stats[0].kept[1].tolist() == session.stats[1].kept[0].tolist()


def test_beam_search_and_several_returned_sequences_prune_every_copy_of_a_row_alike(model, inputs):
    """generate repeats each row before the prefill (beams, num_return_sequences): FastV follows, every copy keeps
    what the row keeps without beams, the statistics are the call's own rows, and a padded row decodes its
    beams as it does alone (the shorter caches' masks follow the beams as they are reordered)."""
    beams = {**GEN, "num_beams": 3, "num_return_sequences": 2}
    with tokenprune.apply(model, "fastv", budget=4) as session:
        model.generate(**inputs, **GEN)
        greedy_kept = session.last.kept
        batched = model.generate(**inputs, **beams)
        stats = session.last
        real = int(inputs["attention_mask"][1].sum())
        alone = {"input_ids": inputs["input_ids"][1:, -real:], "attention_mask": inputs["attention_mask"][1:, -real:]}
        alone = model.generate(**alone, pixel_values=inputs["pixel_values"][1:], **beams)
    length = inputs["input_ids"].shape[1]
    assert batched.shape[0] == 4 and torch.equal(batched[:, :length], inputs["input_ids"].repeat_interleave(2, 0))
    assert stats.visual_before == [16, 16] and stats.visual_after == [4, 4] and len(stats.sequence_after) == 2
    assert [k.tolist() for k in stats.kept] == [k.tolist() for k in greedy_kept]
    assert torch.equal(batched[2:, length:], alone[:, real:])


def test_forward_agrees_with_generates_first_token_and_computes_the_loss(model, inputs):
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    with tokenprune.apply(model, "fastv", budget=4) as session:
        first = model.generate(**inputs, max_new_tokens=1, do_sample=False)[:, -1]
        out = model(**inputs, labels=labels)
    assert out.logits.shape[1] == max(session.last.sequence_after)
    assert torch.equal(out.logits[:, -1].argmax(-1), first)
    assert torch.isfinite(out.loss)


def test_static_cache_and_out_of_range_layers_are_refused(model, inputs):
    with (
        tokenprune.apply(model, "fastv", budget=4),
        pytest.raises(TokenPruneError, match="StaticCache cannot hold them"),
    ):
        model.generate(**inputs, cache_implementation="static", **GEN)
    with (
        pytest.raises(InputError, match="outside the language model's 4 layers"),
        tokenprune.apply(model, "fastv", budget=4, layer=9),
    ):
        pytest.fail("refused when the block is entered, before any generate")
    assert model.generate(**inputs, **GEN).shape[0] == inputs["input_ids"].shape[0]  # and left the model as it was


def test_generate_without_the_kv_cache_is_refused_and_so_is_a_longer_forward_after_the_prefill(model, inputs):
    """Without the cache every step recomputes the whole sequence, which the pruned layers do not expect."""
    with tokenprune.apply(model, "fastv", budget=4), pytest.raises(TokenPruneError, match="use_cache=False"):
        model.generate(**inputs, **GEN, use_cache=False)
    from tokenprune.integrations import get_adapter
    from tokenprune.integrations.fastv import LayerPruner

    pruner = LayerPruner(get_adapter(model), tokenprune.create_method("fastv", layer=1), 4, dict(inputs))
    with pruner.installed(), torch.no_grad():
        model(**inputs, use_cache=False)  # the prefill: pruned at layer 1
        longer = torch.cat([inputs["input_ids"], inputs["input_ids"][:, -1:]], dim=1)
        mask = torch.cat([inputs["attention_mask"], inputs["attention_mask"][:, -1:]], dim=1)
        with pytest.raises(TokenPruneError, match="got a forward of 25 tokens after it"):
            model(input_ids=longer, attention_mask=mask, pixel_values=inputs["pixel_values"], use_cache=False)


def test_the_callers_own_decoding_after_a_pruned_forward_equals_generate(model, inputs):
    """A hand-written loop: a forward with the images (pruned at layer K), then forwards of one token on its
    cache. The layers from K on cached only the kept tokens, and their masks follow that cache."""
    import inspect

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with tokenprune.apply(model, "fastv", budget=4), torch.no_grad():
        expected = model.generate(**inputs, **GEN)[:, inputs["input_ids"].shape[1] :]
        out = model(**inputs, use_cache=True)
        tokens, mask = [out.logits[:, -1:].argmax(-1)], inputs["attention_mask"]
        for _ in range(GEN["max_new_tokens"] - 1):
            cache = getattr(out, name)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = model(input_ids=tokens[-1], attention_mask=mask, use_cache=True, **{name: cache})
            tokens.append(out.logits[:, -1:].argmax(-1))
    assert torch.equal(torch.cat(tokens, dim=1), expected)


def test_the_loss_takes_the_calls_loss_options_and_a_tuple_output(model, inputs):
    """num_items_in_batch (the Trainer's gradient accumulation) normalises the loss as stock does; with
    return_dict=False the loss comes first in the tuple; shift_labels, which cannot follow the pruning, is refused."""
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    count = torch.tensor(7)
    with torch.no_grad():
        stock = model(**inputs, labels=labels, num_items_in_batch=count).loss
        with tokenprune.apply(model, "fastv", budget=1.0, layer=1):
            same = model(**inputs, labels=labels, num_items_in_batch=count).loss
        with tokenprune.apply(model, "fastv", budget=4, layer=1):
            pruned = model(**inputs, labels=labels, num_items_in_batch=count)
            loss, logits, *_ = model(**inputs, labels=labels, num_items_in_batch=count, return_dict=False)
            with pytest.raises(TokenPruneError, match="shift_labels"):
                model(**inputs, shift_labels=labels)
    torch.testing.assert_close(same, stock)
    assert torch.equal(loss, pruned.loss) and torch.equal(logits, pruned.logits) and logits.shape[1] < labels.shape[1]


def test_keeping_everything_runs_as_stock_under_a_chunked_prefill(model, inputs):
    """Nothing to prune: the chunked prefill FastV cannot prune is not refused, and the output is stock's."""
    chunked = {**GEN, "prefill_chunk_size": 8}
    stock = model.generate(**inputs, **chunked)
    with tokenprune.apply(model, "fastv", budget=1.0, layer=1):
        assert torch.equal(model.generate(**inputs, **chunked), stock)
    with tokenprune.apply(model, "fastv", budget=4, layer=1), pytest.raises(TokenPruneError, match="chunked prefill"):
        model.generate(**inputs, **chunked)


def test_images_whose_placeholders_touch_are_told_apart(model):
    """``<image><image>`` in one row: two images of 16 tokens each, the budget per image (not one of 32)."""
    ids = torch.tensor([[1, 5, 6, *([IMAGE_TOKEN] * 32), 9, 10]])
    pixels = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    call = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}
    with tokenprune.apply(model, "fastv", budget=4, layer=1) as session:
        model.generate(**call, **GEN)
    assert session.last.visual_before == [16, 16] and session.last.visual_after == [4, 4]
    with tokenprune.apply(model, "zspa", budget=4) as session:  # as before the LM
        model.generate(**call, **GEN)
    assert session.last.visual_before == [16, 16] and session.last.visual_after == [4, 4]


def test_a_call_with_inputs_embeds_and_images_is_a_clear_error(model, inputs):
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    call = {"inputs_embeds": embeds, "attention_mask": inputs["attention_mask"], "pixel_values": inputs["pixel_values"]}
    with tokenprune.apply(model, "fastv", budget=4), pytest.raises(InputError, match="pruning needs input_ids"):
        model.generate(**call, **GEN)


def test_the_model_is_restored_and_hooks_removed(model, inputs):
    stock = model.generate(**inputs, **GEN)
    with tokenprune.apply(model, "fastv", budget=3):
        model.generate(**inputs, **GEN)
    layers = model.model.language_model.layers
    assert all(not layer._forward_pre_hooks for layer in layers)
    assert torch.equal(model.generate(**inputs, **GEN), stock)


def test_fastv_reads_the_device_a_few_times(model, inputs):
    """Inside the LM, pruning adds the same five reads as before it, however many images and rows.

    The reads are the placeholder positions, the layout's counts, the selector's prompt-mask check
    and result check, and the statistics. Mid-prefill each read waits for the layers before it.
    """
    from tokenprune.testing import HostTraffic

    with torch.no_grad():
        with HostTraffic() as stock:
            model(**inputs)
        with tokenprune.apply(model, "fastv", budget=0.25, layer=1) as session, HostTraffic() as pruned:
            model(**inputs)
    assert session.last.visual_after == [4, 4]
    assert len(pruned.reads) - len(stock.reads) == 5, (stock.reads, pruned.reads)
    assert pruned.blocking_copies == stock.blocking_copies


def _family_case(family):
    """``(build, inputs)`` of a tiny model of ``family`` whose language model differs from LLaVA's (M-RoPE, Qwen2)."""
    from tokenprune.testing.models import (
        tiny_glm4v,
        tiny_glm4v_inputs,
        tiny_idefics3,
        tiny_idefics3_inputs,
        tiny_internvl,
        tiny_internvl_inputs,
        tiny_mistral3,
        tiny_mistral3_inputs,
        tiny_qwen2_5_vl,
        tiny_qwen2_5_vl_inputs,
        tiny_qwen2_vl,
        tiny_qwen3_vl,
    )

    prompts, grids = [[[5, 17, 9], [41, 8, 77, 12, 6]], [[23], [64, 3, 55, 90, 31, 7, 44]]], [(1, 8, 8), (1, 4, 12)]
    return {
        "qwen2.5-vl": (tiny_qwen2_5_vl, lambda m: tiny_qwen2_5_vl_inputs(m, prompts, grids)),
        "qwen2.5-vl video": (
            tiny_qwen2_5_vl,
            lambda m: tiny_qwen2_5_vl_inputs(m, prompts, [(2, 4, 8), (2, 4, 6)], kinds=["video"] * 2, seconds=[2, 1]),
        ),
        "qwen2-vl": (tiny_qwen2_vl, lambda m: tiny_qwen2_5_vl_inputs(m, prompts, grids)),
        "internvl": (tiny_internvl, lambda m: tiny_internvl_inputs(m, [[[5, 6], [7, 8]], [[9], [10, 11]]], [1, 2])),
        # query and key norms per head; FastV after the two DeepStack layers
        "qwen3-vl": (
            lambda seed: tiny_qwen3_vl(seed=seed, layers=4),
            lambda m: tiny_qwen2_5_vl_inputs(m, prompts, grids),
        ),
        "qwen3-vl video": (
            lambda seed: tiny_qwen3_vl(seed=seed, layers=4),
            lambda m: tiny_qwen2_5_vl_inputs(m, prompts, [(2, 4, 8), (2, 4, 6)], kinds=["video"] * 2),
        ),
        # GLM-4 rotates neighbouring pairs of dimensions, over all of each head or (GLM-4.5V) half of it
        "glm4v": (tiny_glm4v, lambda m: tiny_glm4v_inputs(m, prompts, grids)),
        "glm4v partial rotary": (
            lambda seed: tiny_glm4v(seed=seed, partial_rotary=0.5),
            lambda m: tiny_glm4v_inputs(m, prompts, grids),
        ),
        "glm4v video": (tiny_glm4v, lambda m: tiny_glm4v_inputs(m, prompts, [(2, 4, 8), (2, 4, 6)], video=True)),
        "glm4v moe": (lambda seed: tiny_glm4v(seed=seed, moe=True), lambda m: tiny_glm4v_inputs(m, prompts, grids)),
        "idefics3": (tiny_idefics3, lambda m: tiny_idefics3_inputs(m, prompts, [(1, 2), (0, 0)])),
        "mistral3": (tiny_mistral3, lambda m: tiny_mistral3_inputs(m, prompts, [(56, 56), (42, 70)])),
    }[family]


@pytest.mark.parametrize(
    "family",
    [
        "qwen2.5-vl",
        "qwen2.5-vl video",
        "qwen2-vl",
        "internvl",
        "qwen3-vl",
        "qwen3-vl video",
        "glm4v",
        "glm4v partial rotary",
        "glm4v video",
        "glm4v moe",
        "idefics3",
        "mistral3",
    ],
)
def test_scores_are_the_eager_attention_on_other_families(family):
    """The recomputed row is the model's own at layer K under M-RoPE (Qwen, videos included), Qwen2's LM,
    Qwen3's per-head query and key norms, GLM-4's rotary (pairs of neighbouring dimensions, part of each head),
    Mistral's LM, and Idefics3's tiles written apart."""
    from tokenprune.integrations import get_adapter

    build, make = _family_case(family)
    layer = 2 if family.startswith("qwen3") else 1
    model = build(seed=0)
    inputs = make(model)
    with tokenprune.apply(model, "fastv", budget=5, layer=layer) as session:
        model.generate(**inputs, **GEN)
    eager = build(seed=0)
    eager.set_attn_implementation("eager")
    maps = eager(**inputs, output_attentions=True).attentions[layer].mean(dim=1)[:, -1]  # last token's row
    placeholders = torch.tensor(get_adapter(model).placeholder_ids)  # image and video (ids differ across families)
    visual = torch.isin(inputs["input_ids"], placeholders)
    for row in range(2):  # one image or video per row
        placeholders = visual[row].nonzero()[:, 0]
        expected = torch.topk(maps[row, placeholders], 5).indices.sort().values
        assert session.last.kept[row].tolist() == expected.tolist()


@pytest.mark.parametrize("window", [8, None])
def test_a_language_model_with_a_sliding_window_in_its_config_is_refused(window):
    """Mistral applies its config's sliding window to every layer without saying so on the attention module."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, MistralConfig

    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14
    )
    text = MistralConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=window,
    )  # fmt: skip
    model = LlavaForConditionalGeneration(
        LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN)
    )
    if window is None:
        with tokenprune.apply(model, "fastv", layer=1, budget=4):
            pass
        return
    with (
        pytest.raises(tokenprune.InputError, match=r"layers \[1\] attend within a sliding window"),
        tokenprune.apply(model, "fastv", layer=1, budget=4),
    ):
        pytest.fail("refused before the block runs")

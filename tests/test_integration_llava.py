"""tokenprune.apply on a tiny random LlavaForConditionalGeneration (the real transformers code paths)."""

import pytest
import torch

import tokenprune
from tokenprune import TokenPruneError
from tokenprune.integrations import UnsupportedModelError
from tokenprune.integrations.base import UnsupportedMergeError, UnsupportedScoresError
from tokenprune.stages import Contextual, LayerAttention, Stride, TopK
from tokenprune.testing import assert_adapter_contract
from tokenprune.testing.models import IMAGE_TOKEN, record_calls, tiny_llava, tiny_llava_inputs

GEN = {"max_new_tokens": 6, "do_sample": False}
PROMPTS = [([5, 17, 9, 33], [41, 8, 77, 12, 6, 90]), ([23], [64, 3, 55])]


@pytest.fixture(scope="module")
def model():
    return tiny_llava(seed=0)


@pytest.fixture(scope="module")
def inputs(model):
    return tiny_llava_inputs(model, PROMPTS)


@pytest.mark.parametrize("rows", [1, 2])
def test_the_adapter_contract(model, inputs, rows):
    """Budget 1.0 == stock, prefill/decode lengths, stats, forward with labels, restoring, text-only calls."""
    assert_adapter_contract(model, inputs if rows == 2 else tiny_llava_inputs(model, PROMPTS[:1]), generate_kwargs=GEN)


def _fed_directly(model, inputs, kept):
    """The short sequence built by hand around each image's ``kept`` tokens: left-padded embeddings,
    attention mask, and the position each token had in the full sequence."""
    features = model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True).pooler_output
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    rows, positions = [], []
    for b in range(len(kept)):
        real = inputs["attention_mask"][b].bool()
        ids, emb = inputs["input_ids"][b][real], embeds[b][real]
        image = (ids == IMAGE_TOKEN).nonzero()[:, 0]
        before, after = emb[: image[0]], emb[image[-1] + 1 :]
        rows.append(torch.cat([before, features[b][kept[b]], after]))
        where = torch.arange(len(ids))
        positions.append(torch.cat([where[: image[0]], image[kept[b]], where[image[-1] + 1 :]]))
    width = max(r.shape[0] for r in rows)
    short = torch.zeros(len(rows), width, embeds.shape[-1])
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    original = torch.zeros(len(rows), width, dtype=torch.long)
    for b, (r, p) in enumerate(zip(rows, positions, strict=True)):
        short[b, width - r.shape[0] :], mask[b, width - r.shape[0] :], original[b, width - r.shape[0] :] = r, 1, p
    return short, mask, original


def test_pruned_generation_equals_the_lm_fed_text_plus_k_directly(model, inputs):
    """The ideal: build the short sequence by hand (same kept tokens) and run stock generate on embeddings."""
    with tokenprune.apply(model, "zspa", budget=5, core_ratio=0.4) as session:
        out = model.generate(**inputs, **GEN)
    assert session.positions == "contiguous"
    short, mask, _ = _fed_directly(model, inputs, session.last.kept)
    ideal = model.generate(inputs_embeds=short, attention_mask=mask, **GEN)
    assert torch.equal(out[:, inputs["input_ids"].shape[1] :], ideal)


def test_original_positions_equal_the_lm_fed_the_kept_tokens_at_their_own_positions(model, inputs):
    with tokenprune.apply(model, "zspa", budget=5, core_ratio=0.4, positions="original") as session:
        out = model.generate(**inputs, **GEN)
    short, mask, original = _fed_directly(model, inputs, session.last.kept)
    ideal = model.generate(inputs_embeds=short, attention_mask=mask, position_ids=original, **GEN)
    assert torch.equal(out[:, inputs["input_ids"].shape[1] :], ideal)
    contiguous = model.generate(inputs_embeds=short, attention_mask=mask, **GEN)
    assert not torch.equal(ideal, contiguous), "the positions change this model's answers"


def test_original_positions_decode_the_same_with_a_static_cache(model, inputs):
    outs = []
    for cache in ({}, {"cache_implementation": "static"}):
        with tokenprune.apply(model, "zspa", budget=5, positions="original"):
            outs.append(model.generate(**inputs, **GEN, **cache))
    assert torch.equal(*outs)


def test_the_language_model_sees_the_original_positions_in_the_prefill_and_while_decoding(model, inputs, lm_positions):
    with lm_positions(model) as seen, tokenprune.apply(model, "divprune", budget=3, positions="original") as session:
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
    _, mask, original = _fed_directly(model, inputs, session.last.kept)
    prefill, *steps = seen
    assert torch.equal(prefill * mask, original)
    lengths = inputs["attention_mask"].sum(dim=1)  # the full rows' lengths: decoding continues after them
    assert [step[:, -1].tolist() for step in steps] == [(lengths + t).tolist() for t in range(len(steps))]


def test_a_positions_mode_the_model_or_method_cannot_use_is_a_clear_error(model, inputs):
    with (
        pytest.raises(tokenprune.InputError, match=r"positions must be one of \['contiguous', 'original'\]"),
        tokenprune.apply(model, "zspa", budget=5, positions="kept"),
    ):
        pass
    with (
        pytest.raises(tokenprune.InputError, match=r"positions must be one of .*; got \['original'\]"),
        tokenprune.apply(model, "zspa", budget=5, positions=["original"]),
    ):
        pass
    with (
        pytest.raises(tokenprune.InputError, match="prunes inside the language model"),
        tokenprune.apply(model, "fastv", budget=5, positions="contiguous"),
    ):
        pass
    with tokenprune.apply(model, "fastv", budget=5, layer=1) as session:
        assert session.positions == "original"
    full = torch.arange(inputs["input_ids"].shape[1]).expand(2, -1)
    with pytest.raises(tokenprune.InputError, match="numbered afresh"), tokenprune.apply(model, "zspa", budget=5):
        model(**inputs, position_ids=full)
    with tokenprune.apply(model, "zspa", budget=5, positions="original") as session:
        model(**inputs, position_ids=full + 100)  # the caller's own positions, at the kept tokens
    assert session.last.visual_after == [5, 5]


def test_each_row_is_pruned_by_its_own_prompt(model, inputs):
    with tokenprune.apply(model, "relevance", budget=4) as session:
        model.generate(**inputs, **GEN)
        batched = session.last.kept
        for b in range(2):
            alone = {k: v[b : b + 1] for k, v in inputs.items()}
            alone = {
                k: v[:, v.shape[1] - int(inputs["attention_mask"][b].sum()) :] if v.dim() == 2 else v
                for k, v in alone.items()
            }
            model.generate(**alone, **GEN)
            assert torch.equal(session.last.kept[0], batched[b])
    assert not torch.equal(batched[0], batched[1])  # different prompts and images, different picks


def test_two_models_pruned_differently_in_one_process(inputs):
    a, b = tiny_llava(seed=1), tiny_llava(seed=2)
    with tokenprune.apply(a, "zspa", budget=3):
        alone_a = a.generate(**inputs, **GEN)
    with tokenprune.apply(b, "stride", budget=8):
        alone_b = b.generate(**inputs, **GEN)
    with tokenprune.apply(a, "zspa", budget=3) as sa, tokenprune.apply(b, "stride", budget=8) as sb:
        both_a, both_b = a.generate(**inputs, **GEN), b.generate(**inputs, **GEN)
        stock_c = tiny_llava(seed=1).generate(**inputs, **GEN)  # a third model of the same class: untouched
    assert torch.equal(both_a, alone_a) and torch.equal(both_b, alone_b)
    assert sa.last.visual_after == [3, 3] and sb.last.visual_after == [8, 8]
    assert torch.equal(stock_c, a.generate(**inputs, **GEN))


def test_nested_pruning_of_one_model_is_refused(model):
    with (
        tokenprune.apply(model, "zspa", budget=4),
        pytest.raises(TokenPruneError, match="already being pruned"),
        tokenprune.apply(model, "divprune", budget=4),
    ):
        pass


def test_a_composed_selector_object_works_and_rejects_method_params(model, inputs):
    with tokenprune.apply(model, Stride(), budget=2) as session:
        model.generate(**inputs, **GEN)
    assert session.last.kept[0].tolist() == [4, 12]
    with pytest.raises(TypeError, match="apply to a method name"), tokenprune.apply(model, Stride(), budget=2, seed=1):
        pass


def test_unsupported_model_is_a_clear_error():
    from transformers import LlamaConfig, LlamaForCausalLM

    lm = LlamaForCausalLM(
        LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    )
    with (
        pytest.raises(UnsupportedModelError, match="no tokenprune adapter for LlamaForCausalLM"),
        tokenprune.apply(lm, "zspa", budget=4),
    ):
        pass


def test_placeholder_count_mismatch_is_reported(model, inputs):
    broken = dict(inputs, input_ids=inputs["input_ids"].masked_fill(inputs["input_ids"] == IMAGE_TOKEN, 7))
    with (
        tokenprune.apply(model, "zspa", budget=4),
        pytest.raises(tokenprune.InputError, match="0 visual placeholder tokens"),
    ):
        model.generate(**broken, **GEN)


def test_beam_search_with_several_returned_sequences_equals_the_ideal(model, inputs):
    """Each returned sequence starts with its own row's prompt, and the new tokens are those of stock generate
    on the already pruned input (FastV under beams: tests/test_fastv.py)."""
    from tokenprune.integrations import get_adapter, prune_inputs

    beams = {**GEN, "num_beams": 2, "num_return_sequences": 2}
    length = inputs["input_ids"].shape[1]
    with tokenprune.apply(model, "zspa", budget=0.5):
        out = model.generate(**inputs, **beams)
    assert torch.equal(out[:, :length], inputs["input_ids"].repeat_interleave(2, dim=0))
    with torch.no_grad():
        pruned = prune_inputs(get_adapter(model), tokenprune.create_method("zspa"), 0.5, dict(inputs))
    ideal = model.generate(**pruned.kwargs, **beams)
    assert torch.equal(out[:, length:], ideal[:, pruned.kwargs["input_ids"].shape[1] :])


def test_total_lengths_keep_their_meaning_on_the_shorter_prompt(model, inputs):
    """max_length and min_length count the prompt: on the pruned prompt they are moved down by what was pruned,
    so a pruned generate makes as many new tokens as stock, whether the call or the generation config sets them."""
    length = inputs["input_ids"].shape[1]
    with tokenprune.apply(model, "zspa", budget=4):
        relative = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        total = model.generate(**inputs, max_length=length + 5, do_sample=False)
        at_least = model.generate(**inputs, max_new_tokens=5, min_length=length + 5, do_sample=False)
        saved = model.generation_config.max_length
        model.generation_config.max_length = length + 3
        try:
            from_config = model.generate(**inputs, do_sample=False)
        finally:
            model.generation_config.max_length = saved
    assert relative.shape[1] == length + 5 and torch.equal(total, relative) and torch.equal(at_least, relative)
    assert torch.equal(from_config, relative[:, : length + 3])
    assert torch.equal(
        model.generate(**inputs, max_length=length + 5, do_sample=False)[:, :length], inputs["input_ids"]
    )


@pytest.mark.parametrize("method", ["zspa", "fastv"])
def test_continuing_on_the_cache_of_a_pruned_generate_is_refused(model, inputs, method):
    """transformers' "continue on the returned cache": that cache holds the pruned prompt while the returned
    sequences hold the whole one, so it is refused (a deep copy of the cache too); a stock cache continues."""
    import copy

    gen = {**GEN, "return_dict_in_generate": True}
    more = torch.tensor([[12, 13]] * inputs["input_ids"].shape[0])
    with tokenprune.apply(model, method, budget=4, **({"layer": 1} if method == "fastv" else {})):
        out = model.generate(**inputs, **gen)
        ids = torch.cat([out.sequences, more], dim=1)
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(ids[:, inputs["input_ids"].shape[1] :])], dim=1)
        for cache in (out.cache, copy.deepcopy(out.cache)):
            with pytest.raises(TokenPruneError, match="filled by a pruned generate"):
                model.generate(input_ids=ids, attention_mask=mask, cache=cache, **GEN)
    stock = model.generate(**inputs, **gen)  # outside the block: a stock cache
    ids = torch.cat([stock.sequences, more], dim=1)
    with tokenprune.apply(model, method, budget=4, **({"layer": 1} if method == "fastv" else {})):
        continued = model.generate(input_ids=ids, attention_mask=mask, cache=stock.cache, **GEN)
    assert continued.shape[1] == ids.shape[1] + GEN["max_new_tokens"]


def test_a_chunked_prefill_is_timed_whole(model, inputs, monkeypatch):
    """prefill_ms adds up every chunk of a chunked prefill, and no decoding step."""
    from tokenprune.integrations import session as session_module

    ticks = iter(range(0, 10**6, 10))  # every reading of the clock (time.perf_counter) 10 s after the one before
    monkeypatch.setattr(session_module.time, "perf_counter", lambda: next(ticks))
    with tokenprune.apply(model, "zspa", budget=4) as session:
        out = model.generate(**inputs, **GEN, prefill_chunk_size=8)
    length = max(session.last.sequence_after)  # the pruned prompt's padded length: its chunks of 8
    assert out.shape[1] == inputs["input_ids"].shape[1] + GEN["max_new_tokens"]
    assert session.last.prefill_ms == -(-length // 8) * 10 * 1e3  # one 10 s reading pair per chunk


def test_a_streamer_receives_the_callers_prompt_then_the_new_tokens(model):
    class Recorder:
        def __init__(self):
            self.puts, self.ended = [], False

        def put(self, value):
            self.puts.append(value.clone())

        def end(self):
            self.ended = True

    alone = tiny_llava_inputs(model, PROMPTS[:1])
    recorder = Recorder()
    with tokenprune.apply(model, "zspa", budget=4):
        out = model.generate(**alone, **GEN, streamer=recorder)
    length = alone["input_ids"].shape[1]
    assert torch.equal(recorder.puts[0].view(1, -1), alone["input_ids"]) and recorder.ended
    assert torch.equal(torch.cat([p.view(-1) for p in recorder.puts[1:]]), out[0, length:])


def test_caller_scores_cannot_come_from_a_model_call(model, inputs):
    with pytest.raises(UnsupportedScoresError, match="'fastervlm'"), tokenprune.apply(model, "attention", budget=4):
        pytest.fail("refused when the block is entered")
    assert not {"generate", "forward", "_tokenprune_session"} & set(model.__dict__)  # nothing left wrapped


def test_fastervlm_keeps_the_top_cls_attention_tokens_without_eager_attention(model, inputs):
    implementation = model.model.vision_tower.config._attn_implementation
    with tokenprune.apply(model, "fastervlm", budget=5) as session:
        model.generate(**inputs, **GEN)
    assert model.model.vision_tower.config._attn_implementation == implementation  # not switched to eager

    reference = tiny_llava(seed=0)  # same weights; eager, asked for the attention maps
    reference.model.vision_tower.config._attn_implementation = "eager"
    out = reference.model.vision_tower(inputs["pixel_values"], output_attentions=True)
    cls_to_patches = out.attentions[-2][:, :, 0, 1:].mean(dim=1)  # LLaVA's feature layer is -2
    expected = torch.topk(cls_to_patches, 5).indices.sort().values
    assert [k.tolist() for k in session.last.kept] == expected.tolist()


def _visionzip_reference(ref, inputs, budget, ratio):
    """VisionZip's kept features, from an independent path: eager CLIP attention maps, the keys recorded at the
    feature layer's ``k_proj``, the hidden states of the feature layer, and the float64 reference merge."""
    reference = tiny_llava(seed=0)  # same weights; eager, asked for the attention maps
    reference.model.vision_tower.config._attn_implementation = "eager"
    tower = reference.model.vision_tower
    k_proj = tower.encoder.layers[-2].self_attn.k_proj  # LLaVA's feature layer is -2
    heads = reference.config.vision_config.num_attention_heads
    with torch.no_grad():
        seen, out = record_calls(
            k_proj,
            lambda: tower(inputs["pixel_values"], output_attentions=True, output_hidden_states=True),
            lambda args, kwargs: args[0],
        )
        cls = out.attentions[-2][:, :, 0, 1:].mean(dim=1)
        metric = k_proj(seen[0])[:, 1:].unflatten(-1, (heads, -1)).mean(dim=2)
        raw = out.hidden_states[-2][:, 1:]
        kept, projected = [], []
        for b in range(raw.shape[0]):
            index, merged = ref.visionzip_row(cls[b].numpy(), metric[b].numpy(), raw[b].numpy(), budget, ratio)
            kept.append(index.tolist())
            projected.append(reference.model.multi_modal_projector(torch.from_numpy(merged).float()))
    return kept, projected


@pytest.mark.parametrize("ratio", [10 / 64, 0.5])
def test_visionzip_feeds_the_lm_the_merged_features_an_independent_reference_computes(model, inputs, ref, ratio):
    implementation = model.model.vision_tower.config._attn_implementation
    with tokenprune.apply(model, "visionzip", budget=6, contextual_ratio=ratio) as session:
        embeds, _ = record_calls(
            model.model.language_model, lambda: model(**inputs), lambda args, kwargs: kwargs["inputs_embeds"]
        )
    assert model.model.vision_tower.config._attn_implementation == implementation  # not switched to eager
    kept, projected = _visionzip_reference(ref, inputs, 6, ratio)
    assert [k.tolist() for k in session.last.kept] == kept
    for b, features in enumerate(projected):
        row = embeds[0][b]
        start = int((row - features[0]).norm(dim=-1).argmin())  # where the image's kept tokens begin
        torch.testing.assert_close(row[start : start + 6], features, rtol=1e-4, atol=1e-5)
    placeholder = model.get_input_embeddings()(torch.tensor(IMAGE_TOKEN))
    assert ((embeds[0] - placeholder).norm(dim=-1) > 0).all()  # every placeholder's embedding was replaced
    # without the merge (fastervlm: the top 6, no contextual tokens) the language model sees other inputs
    with tokenprune.apply(model, "fastervlm", budget=6):
        plain, _ = record_calls(
            model.model.language_model, lambda: model(**inputs), lambda args, kwargs: kwargs["inputs_embeds"]
        )
    assert not torch.allclose(plain[0], embeds[0])


def test_merging_inside_the_language_model_is_refused(model, inputs):
    inside = Contextual(core=TopK(LayerAttention(1)), fill=Stride(), core_ratio=0.5)
    message = r"merges tokens and prunes inside the language model \(layer 1\)"
    with pytest.raises(UnsupportedMergeError, match=message), tokenprune.apply(model, inside, budget=4):
        model(**inputs)


def test_visionzip_keeping_every_token_is_stock(model, inputs):
    stock = model.generate(**inputs, **GEN)
    with tokenprune.apply(model, "visionzip", budget=1.0):
        assert torch.equal(model.generate(**inputs, **GEN), stock)


def test_keeping_every_token_skips_the_selector(model, inputs):
    class Refuses(Stride):
        def extend(self, tokens, selection, target):
            raise AssertionError("the selector ran although the budget keeps every token")

    with tokenprune.apply(model, Refuses(), budget=1.0) as session:
        model.generate(**inputs, **GEN)
    assert session.last.selection_ms == 0.0 and session.last.visual_after == [16, 16]
    with pytest.raises(AssertionError, match="the selector ran"), tokenprune.apply(model, Refuses(), budget=0.5):
        model.generate(**inputs, **GEN)


def test_a_pruned_forward_reads_the_device_a_few_times(model, inputs):
    """Pruning adds five reads from the device to a forward call, whatever the batch and image count.

    They are: the placeholder positions, the layout's counts, the selector's prompt-mask check and
    result check, and the statistics. On a GPU each read waits for the device, so per-image or per-row
    reads would make the overhead grow with the batch. The selector here takes the GPU's fill route
    (the CPU's blocked fill reads by design).
    """
    from tokenprune.stages import Hierarchical, MaxMin, Relevance, TopK
    from tokenprune.testing import HostTraffic

    selector = Hierarchical(TopK(Relevance()), MaxMin(block_size=0), core_ratio=0.25)
    with torch.no_grad():
        with HostTraffic() as stock:
            model(**inputs)
        with tokenprune.apply(model, selector, budget=0.25) as session, HostTraffic() as pruned:
            model(**inputs)
    assert session.last.visual_after == [4, 4]
    assert len(pruned.reads) - len(stock.reads) == 5, (stock.reads, pruned.reads)
    assert pruned.blocking_copies == stock.blocking_copies


def test_compiled_decoding_with_a_static_cache_runs_as_one_graph(model, inputs):
    """transformers compiles the decoding step when the cache is static (on a GPU by default): the
    wrappers must not break that graph. ``fullgraph=True`` turns any break into an error."""
    from transformers import CompileConfig

    torch._dynamo.reset()  # this test's compilations only, whatever ran before
    config = CompileConfig(backend="eager", fullgraph=True, mode=None)  # dynamo's tracing without inductor
    config._compile_all_devices = True  # also on CPU
    with tokenprune.apply(model, "zspa", budget=0.5) as session:
        eager = model.generate(**inputs, **GEN)
        compiled = model.generate(**inputs, **GEN, cache_implementation="static", compile_config=config)
    assert torch.equal(compiled, eager)
    assert [s.visual_after for s in session.stats] == [[8, 8], [8, 8]]
    assert "_compiled_call" in model.__dict__  # the steps did run compiled
    torch._dynamo.reset()


def test_pre_encoded_images_are_refused_not_passed_on_unpruned(model, inputs):
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    features = model.model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True).pooler_output
    encoded = {k: v for k, v in inputs.items() if k != "pixel_values"}
    encoded["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=features)}
    with tokenprune.apply(model, "zspa", budget=0.5) as session:
        with pytest.raises(TokenPruneError, match=r"pass the processor's pixel_values .* not pre-encoded mm_encoder"):
            model.generate(**encoded, **GEN)
        with pytest.raises(TokenPruneError, match="not pre-encoded mm_encoder_outputs"):
            model(**encoded)
    assert session.stats == []
    assert model.generate(**encoded, **GEN).shape[1] == inputs["input_ids"].shape[1] + GEN["max_new_tokens"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_adapter_contract_on_cuda():
    """The whole contract with the model and inputs on the GPU: the route a deployment takes."""
    model = tiny_llava(seed=0).cuda()
    inputs = {key: value.cuda() for key, value in tiny_llava_inputs(model, PROMPTS).items()}
    assert_adapter_contract(model, inputs, generate_kwargs=GEN)


def test_a_chunked_prefill_gives_the_same_tokens(model, inputs):
    """``prefill_chunk_size``: the pruned sequence reaches the LM in several forward calls, all already pruned."""
    with tokenprune.apply(model, "zspa", budget=0.5) as session:
        whole = model.generate(**inputs, **GEN)
        chunked = model.generate(**inputs, **GEN, prefill_chunk_size=4)
    assert torch.equal(chunked, whole)
    assert [s.visual_after for s in session.stats] == [[8, 8], [8, 8]]


def test_a_siglip_tower_has_no_cls_token_to_count_score_or_merge_by():
    """LLaVA checkpoints with a SigLIP tower (LLaVA-Interleave) take every patch ('full') and have no [CLS] token:
    FastV counts each image's patches alone, and CLS-attention and merging methods are refused up front."""
    from tokenprune.integrations import get_adapter

    model = tiny_llava(seed=0, siglip=True)
    inputs = tiny_llava_inputs(model, PROMPTS)
    adapter = get_adapter(model)
    assert adapter.image_token_counts(inputs) == [16, 16] and not adapter.merging and not adapter.score_sources
    assert_adapter_contract(model, inputs, generate_kwargs=GEN)
    stock = model.generate(**inputs, **GEN)
    with tokenprune.apply(model, "fastv", layer=1, budget=1.0):
        assert torch.equal(model.generate(**inputs, **GEN), stock)
    for method in ("fastervlm", "visionzip"):
        with (
            pytest.raises(UnsupportedScoresError, match="the SigLIP vision encoder has no CLS token"),
            tokenprune.apply(model, method, budget=4),
        ):
            pytest.fail("refused before the block runs")

"""The prefill FLOPs formula against PyTorch's own FLOP counter, and the shapes read from real configs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tokenprune.evaluation.flops import DecoderShape, prefill_flops
from tokenprune.testing.models import tiny_llava, tiny_qwen2_5_vl


def _counted(model, length: int) -> int:
    """FLOPs of a decoder forward on ``length`` tokens, counted by torch (eager attention: plain matmuls)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=torch.randint(3, 90, (1, length)))
    return counter.get_total_flops()


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_the_formula_is_what_torch_counts_for_a_llama_decoder(kv_heads):
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=kv_heads, vocab_size=100,
    )  # fmt: skip
    config._attn_implementation = "eager"
    model = LlamaModel(config).eval()
    shape = DecoderShape.from_config(config)
    for length in (1, 37, 120):
        assert prefill_flops(shape, length) == _counted(model, length)


def test_fastv_counts_the_full_length_before_its_layer_and_the_pruned_one_after():
    shape = DecoderShape(layers=4, hidden=8, intermediate=16, heads=2, kv_heads=2, head_dim=4)
    assert prefill_flops(shape, 50, pruned=20, prune_layer=1) == shape.layer_flops(50) + 3 * shape.layer_flops(20)
    assert prefill_flops(shape, 50, pruned=20, prune_layer=0) == prefill_flops(shape, 20)
    assert prefill_flops(shape, 50, pruned=20, prune_layer=9) == prefill_flops(shape, 50)  # past the last layer
    assert prefill_flops(shape, 50, pruned=50, prune_layer=2) == prefill_flops(shape, 50)


def test_shapes_come_from_the_language_model_of_each_family():
    llava = tiny_llava().config
    text = llava.text_config
    assert DecoderShape.from_config(llava) == DecoderShape(
        layers=text.num_hidden_layers, hidden=text.hidden_size, intermediate=text.intermediate_size,
        heads=text.num_attention_heads, kv_heads=text.num_key_value_heads,
        head_dim=text.hidden_size // text.num_attention_heads,
    )  # fmt: skip
    qwen = tiny_qwen2_5_vl().config
    shape = DecoderShape.from_config(qwen)
    assert (shape.layers, shape.hidden, shape.kv_heads) == (
        qwen.text_config.num_hidden_layers,
        qwen.text_config.hidden_size,
        qwen.text_config.num_key_value_heads,
    )
    with pytest.raises(ValueError, match=r"SimpleNamespace has no positive int num_hidden_layers \(got None\)"):
        DecoderShape.from_config(SimpleNamespace(hidden_size=64))

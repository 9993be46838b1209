"""Tiny random-weight VLMs of the real architectures, built from configs (no download).

For tests and CPU benchmarks: the code paths are the real transformers ones; only the sizes are
small. ``tiny_llava_inputs`` builds matching processor-style inputs (left padded).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["IMAGE_TOKEN", "tiny_llava", "tiny_llava_inputs"]

IMAGE_TOKEN = 100  # placeholder id in the tiny vocabularies (BOS 1, EOS 2, PAD 0)


def tiny_llava(*, seed: int = 0, image_size: int = 28, patch_size: int = 7, hidden: int = 48, layers: int = 2) -> Any:
    """A random ``LlavaForConditionalGeneration``: CLIP tower, MLP projector, Llama LM.

    ``(image_size / patch_size) ** 2`` visual tokens per image (16 by default).
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )
    text = LlamaConfig(
        vocab_size=128,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    tokens = (image_size // patch_size) ** 2
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, image_seq_length=tokens)
    return LlavaForConditionalGeneration(config).eval()


def tiny_llava_inputs(
    model: Any, prompts: list[tuple[list[int], list[int]]], *, seed: int = 0, left: bool = True
) -> dict[str, torch.Tensor]:
    """Inputs for ``tiny_llava``: one image per row, ``BOS before <image> after`` token ids per row.

    Args:
        prompts: per row, the token ids before and after the image (ids in ``[3, 100)``).
        left: pad on the left (generation) or the right.
    """
    vision = model.config.vision_config
    n_image = (vision.image_size // vision.patch_size) ** 2
    rows = [[1, *before, *([IMAGE_TOKEN] * n_image), *after] for before, after in prompts]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span], mask[i, span] = torch.tensor(row), 1
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(len(rows), 3, vision.image_size, vision.image_size, generator=g)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}

"""Tiny random-weight VLMs of the real architectures, built from configs (no download).

For tests and CPU benchmarks: the code paths are the real transformers ones; only the sizes are
small. ``tiny_llava_inputs`` builds matching processor-style inputs (left padded).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

__all__ = [
    "IMAGE_TOKEN",
    "LLAVA_CHAT_TEMPLATE",
    "lm_input_lengths",
    "record_calls",
    "tiny_llava",
    "tiny_llava_inputs",
    "tiny_llava_processor",
    "tiny_tokenizer",
]

IMAGE_TOKEN = 100  # placeholder id in the tiny vocabularies (BOS 1, EOS 2, PAD 0)


LLAVA_CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}USER: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% endif %}{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)
"""A LLaVA-1.5-style chat template: ``USER: <image>\n{question} ASSISTANT:``."""

_WORDS = ["USER", ":", "ASSISTANT", "what", "colour", "is", "the", "cube", "?", "\n", " ", "tokenprunequestionmarker"]


def tiny_tokenizer(vocab_size: int | None = None, *, video: bool = False) -> Any:
    """A word-level fast tokenizer built offline (``tokenizers``), with :data:`LLAVA_CHAT_TEMPLATE`.

    Its vocabulary: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3, ``<image>`` :data:`IMAGE_TOKEN`, and a
    few words from 10 on. ``vocab_size``: also give every other id below it a word (``t<id>``), so that
    whatever a tiny model generates decodes to visible text. ``video``: also ``<video>``
    (:data:`ONEVISION_VIDEO_TOKEN`), which LLaVA-OneVision's processor looks up.
    """
    words = {"<image>": IMAGE_TOKEN, **{word: i + 10 for i, word in enumerate(_WORDS)}}
    special = ["<image>"]
    if video:
        words["<video>"] = ONEVISION_VIDEO_TOKEN
        special.append("<video>")
    return _word_tokenizer(words, special, r"<image>|<video>|\n| |[:?]", LLAVA_CHAT_TEMPLATE, vocab_size)


def _word_tokenizer(
    words: dict[str, int],
    special: list[str],
    split: str,
    template: str,
    vocab_size: int | None,
    named: dict[str, str] | None = None,
) -> Any:
    """Word-level: PAD 0, BOS 1, EOS 2, UNK 3, ``words`` at their ids (``special`` among them marked
    special), and ``t<id>`` for every other id below ``vocab_size``; text is split by the regex ``split``.
    ``named``: special tokens a processor reads by name (e.g. Gemma 3's ``boi_token``)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **words}
    used = set(vocab.values())
    vocab.update({f"t{i}": i for i in range(vocab_size or 0) if i not in used})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(split), behavior="isolated")
    extra = {} if named is None else {"extra_special_tokens": named}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", **extra
    )
    tokenizer.add_special_tokens({"additional_special_tokens": special})
    tokenizer.chat_template = template
    return tokenizer


def tiny_llava_processor(model: Any, *, full_vocab: bool = False) -> Any:
    """A real ``LlavaProcessor`` for :func:`tiny_llava`: the PIL CLIP image processor and :func:`tiny_tokenizer`.

    Needs Pillow (no torchvision). ``full_vocab``: every id of the model's vocabulary decodes to a word.
    """
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    vision = model.config.vision_config
    size = vision.image_size
    images = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    tokenizer = tiny_tokenizer(model.config.text_config.vocab_size if full_vocab else None)
    tokenizer.padding_side = "left"
    return LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def _tiny_llama(hidden: int, layers: int, **extra: Any) -> Any:
    """The tiny Llama language model of the LLaVA-family builders (BOS 1, EOS 2, PAD 0)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=128,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        **extra,
    )


def _tiny_text(model_type: str | None, hidden: int, layers: int, **extra: Any) -> dict[str, Any]:
    """A tiny language model's config as a dict (BOS 1, EOS 2, PAD 0, 128 words), of ``model_type`` where the
    VLM's config needs it named."""
    named = {} if model_type is None else {"model_type": model_type}
    return {
        **named,
        "vocab_size": 128,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        **extra,
    }


def pad_embeddings_left(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, L, D)`` embeddings and ``(B, L)`` attention mask of rows ``(L_b, D)`` padded with zeros on the left:
    the ``inputs_embeds`` of an ideal short sequence built by hand in a test."""
    width = max(row.shape[0] for row in rows)
    embeds = rows[0].new_zeros((len(rows), width, rows[0].shape[-1]))
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        embeds[b, width - row.shape[0] :], mask[b, width - row.shape[0] :] = row, 1
    return embeds, mask


__all__ += ["pad_embeddings_left"]


def _written_rows(prompts: list[list[list[int]]], writings: Iterable[list[int]]) -> list[list[int]]:
    """Token rows of processor-style inputs: per row BOS, then its text segments with the next visual input's
    writing (its placeholders and the markers around them) between each two consecutive segments."""
    written = iter(writings)
    rows = []
    for segments in prompts:
        row = [1, *segments[0]]
        for text in segments[1:]:
            row += [*next(written), *text]
        rows.append(row)
    return rows


def _pad_rows(rows: list[list[int]], *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows padded (with 0) to one length, on the left or the right; and the attention mask."""
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span], mask[i, span] = torch.tensor(row), 1
    return ids, mask


def record_calls(module: Any, run: Callable[[], Any], pick: Callable[[tuple, dict], Any]) -> tuple[list[Any], Any]:
    """Run ``run()`` with a forward pre-hook on ``module`` recording ``pick(args, kwargs)`` per call.

    Returns the records and ``run()``'s result; the hook is removed afterwards.
    """
    seen: list[Any] = []
    handle = module.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(pick(args, kwargs)), with_kwargs=True
    )
    try:
        out = run()
    finally:
        handle.remove()
    return seen, out


def lm_input_lengths(model: Any, run: Callable[[], Any], *, layer: Any = None) -> tuple[list[int], Any]:
    """Sequence lengths the language model's first decoder layer sees, call by call, while ``run()`` runs.

    ``layer``: the decoder layer to watch, for a model laid out differently; by default
    ``model.model.language_model.layers[0]``.
    """
    layer = model.model.language_model.layers[0] if layer is None else layer
    return record_calls(
        layer, run, lambda args, kwargs: kwargs.get("hidden_states", args[0] if args else None).shape[1]
    )


def tiny_llava(
    *,
    seed: int = 0,
    image_size: int = 28,
    patch_size: int = 7,
    hidden: int = 48,
    layers: int = 2,
    siglip: bool = False,
) -> Any:
    """A random ``LlavaForConditionalGeneration``: CLIP tower, MLP projector, Llama LM.

    ``(image_size / patch_size) ** 2`` visual tokens per image (16 by default). ``siglip``: a SigLIP tower
    instead (no [CLS] token; every patch taken, the ``full`` feature strategy), as LLaVA-Interleave has.
    """
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, SiglipVisionConfig

    torch.manual_seed(seed)
    tower = SiglipVisionConfig if siglip else CLIPVisionConfig
    vision = tower(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )
    text = _tiny_llama(hidden, layers)
    tokens = (image_size // patch_size) ** 2
    strategy = {"vision_feature_select_strategy": "full", "vision_feature_layer": -1} if siglip else {}
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, image_seq_length=tokens, **strategy
    )
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
    ids, mask = _pad_rows(rows, left=left)
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(len(rows), 3, vision.image_size, vision.image_size, generator=g)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


# Qwen2.5-VL: the image placeholder is IMAGE_TOKEN; these mark the other vision tokens of its tiny vocabulary.
QWEN_VIDEO_TOKEN, QWEN_VISION_START, QWEN_VISION_END = 101, 102, 103
__all__ += [
    "QWEN_CHAT_TEMPLATE",
    "QWEN_VIDEO_TOKEN",
    "QWEN_VISION_END",
    "QWEN_VISION_START",
    "tiny_qwen2_5_vl",
    "tiny_qwen2_5_vl_inputs",
    "tiny_qwen2_5_vl_processor",
    "tiny_qwen2_vl",
]

QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen2.5-VL's chat template without its system turn: ``<|im_start|>user\n<|vision_start|><|image_pad|>...``."""
_QWEN_SPECIAL = {
    "<|image_pad|>": IMAGE_TOKEN,
    "<|video_pad|>": QWEN_VIDEO_TOKEN,
    "<|vision_start|>": QWEN_VISION_START,
    "<|vision_end|>": QWEN_VISION_END,
}
_QWEN_WORDS = ["<|im_start|>", "<|im_end|>", "user", "assistant"]
_QWEN_TOKEN_IDS = {
    "image_token_id": IMAGE_TOKEN,
    "video_token_id": QWEN_VIDEO_TOKEN,
    "vision_start_token_id": QWEN_VISION_START,
    "vision_end_token_id": QWEN_VISION_END,
}


def _qwen_text(hidden: int, layers: int) -> dict[str, Any]:
    """The tiny Qwen2 language model with 3-D M-RoPE shared by :func:`tiny_qwen2_5_vl` and :func:`tiny_qwen2_vl`."""
    head_dim = hidden // 4
    unit = head_dim // 16  # mrope_section: (temporal, height, width) rotary pairs, summing to head_dim / 2
    return {
        "vocab_size": 128,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [2 * unit, 3 * unit, 3 * unit],
        },
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }


def tiny_qwen2_5_vl(*, seed: int = 0, hidden: int = 64, layers: int = 2) -> Any:
    """A random ``Qwen2_5_VLForConditionalGeneration``: windowed ViT with 2x2 merger, Qwen2 LM with M-RoPE.

    Patches of 14 pixels, 2 frames per temporal patch; an image of patch grid ``(t, h, w)`` (h, w even)
    gives ``t * h * w / 4`` visual tokens.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    text = _qwen_text(hidden, layers)
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": hidden,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 56,  # 2x2 merged tokens per attention window
        "fullatt_block_indexes": [1],
    }
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        **_QWEN_TOKEN_IDS,
    )
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = 0
    return model


def tiny_qwen2_vl(*, seed: int = 0, hidden: int = 64, layers: int = 2) -> Any:
    """A random ``Qwen2VLForConditionalGeneration``: ViT with full attention and a 2x2 merger, the same LM as
    :func:`tiny_qwen2_5_vl` and the same token ids, so :func:`tiny_qwen2_5_vl_inputs` builds its inputs."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    vision = {
        "depth": 2,
        "embed_dim": 32,
        "hidden_size": hidden,
        "mlp_ratio": 2,
        "num_heads": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    config = Qwen2VLConfig(
        text_config=_qwen_text(hidden, layers),
        vision_config=vision,
        **_QWEN_TOKEN_IDS,
    )
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = 0
    return model


QWEN3_TIMESTAMP = 60  # a text token standing for Qwen3-VL's "<t seconds>" before each video frame
__all__ += ["QWEN3_TIMESTAMP", "tiny_qwen3_vl"]


def tiny_qwen3_vl(*, seed: int = 0, hidden: int = 64, layers: int = 2) -> Any:
    """A random ``Qwen3VLForConditionalGeneration``: ViT on 16 px patches with DeepStack features from both of its
    layers (added to the LM's hidden states after its first two layers), the tiny Qwen LM with interleaved M-RoPE,
    the token ids of :func:`tiny_qwen2_5_vl`."""
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    torch.manual_seed(seed)
    text = _qwen_text(hidden, layers)
    text["head_dim"] = hidden // 4
    text["rope_parameters"] = {**text["rope_parameters"], "mrope_interleaved": True}
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": hidden,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "deepstack_visual_indexes": [0, 1],
        "num_position_embeddings": 64,
    }
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=vision,
        **_QWEN_TOKEN_IDS,
    )
    model = Qwen3VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = 0
    return model


def tiny_qwen2_5_vl_processor(model: Any, *, full_vocab: bool = False) -> Any:
    """A real ``Qwen2_5_VLProcessor`` for :func:`tiny_qwen2_5_vl` (``Qwen2VLProcessor`` for :func:`tiny_qwen2_vl`,
    ``Qwen3VLProcessor`` for :func:`tiny_qwen3_vl`), for images only, left padding.

    The PIL image processor (dynamic resolution, 14 px patches merged 2 x 2, at most 64 merged tokens per
    image) and a word-level tokenizer with Qwen's special tokens and :data:`QWEN_CHAT_TEMPLATE`. It has no
    video processor: transformers' needs torchvision, which CPU machines here do not install. Saved with
    ``save_pretrained``, it reads as a ``Qwen2_5_VLProcessor`` checkpoint, which ``AutoProcessor`` cannot load
    without its video processor; :func:`tokenprune.evaluation.runner.load_processor` can. ``full_vocab``:
    every id of the model's vocabulary decodes to a word.
    """
    from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from tokenprune.evaluation.runner import images_only

    words = {**_QWEN_SPECIAL, **{word: i + 10 for i, word in enumerate([*_WORDS, *_QWEN_WORDS])}}
    special = [*_QWEN_SPECIAL, *_QWEN_WORDS[:2]]
    vocab_size = model.config.text_config.vocab_size if full_vocab else None
    tokenizer = _word_tokenizer(words, special, r"<\|[a-z_]+\|>|\n| |[:?]", QWEN_CHAT_TEMPLATE, vocab_size)
    tokenizer.padding_side = "left"
    patch = model.config.vision_config.patch_size  # 14 (Qwen2-VL, Qwen2.5-VL) or 16 (Qwen3-VL)
    unit = 2 * patch  # one merged token
    images = Qwen2VLImageProcessorPil(min_pixels=4 * unit * unit, max_pixels=64 * unit * unit, patch_size=patch)
    processor = {"qwen2_vl": Qwen2VLProcessor, "qwen3_vl": Qwen3VLProcessor}.get(
        model.config.model_type, Qwen2_5_VLProcessor
    )
    return images_only(processor)(image_processor=images, tokenizer=tokenizer, chat_template=QWEN_CHAT_TEMPLATE)


def tiny_qwen2_5_vl_inputs(
    model: Any,
    prompts: list[list[list[int]]],
    grids: list[tuple[int, int, int]],
    *,
    seed: int = 0,
    left: bool = True,
    kinds: Sequence[str] | None = None,
    seconds: Sequence[float] | None = None,
) -> dict[str, torch.Tensor]:
    """Processor-style inputs for ``tiny_qwen2_5_vl``, ``tiny_qwen2_vl`` and ``tiny_qwen3_vl`` (``mm_token_type_ids``
    included). For Qwen3-VL a video's temporal patches are written as separate runs, each after a timestamp
    token (:data:`QWEN3_TIMESTAMP`), as its processor does.

    Args:
        prompts: per row, its text segments (token ids in ``[3, 100)``); a visual input goes between each
            two consecutive segments, as ``<vision_start> <image or video> * n <vision_end>``.
        grids: the ``(t, h, w)`` patch grid of each visual input, in order (row by row); ``h`` and ``w`` even.
            A video's ``t`` is its number of temporal patches (two frames each).
        left: pad on the left (generation) or the right.
        kinds: per visual input, ``"image"`` or ``"video"``; None for images only. Images come as
            ``pixel_values``/``image_grid_thw``, videos as ``pixel_values_videos``/``video_grid_thw`` with
            ``second_per_grid_ts``.
        seconds: per video, the seconds between two temporal patches (``second_per_grid_ts``); 1.0 each
            when None. Only for Qwen2.5-VL (:func:`tiny_qwen2_vl` takes no ``second_per_grid_ts``).
    """
    vision = model.config.vision_config
    merge = vision.spatial_merge_size**2
    if len(grids) != sum(len(segments) - 1 for segments in prompts):
        raise ValueError(f"{len(grids)} grids for {sum(len(s) - 1 for s in prompts)} visual inputs")
    kinds = ["image"] * len(grids) if kinds is None else list(kinds)
    if len(kinds) != len(grids) or not set(kinds) <= {"image", "video"}:
        raise ValueError(f"kinds must be 'image' or 'video', one per grid ({len(grids)}); got {kinds}")
    placeholder = {"image": IMAGE_TOKEN, "video": QWEN_VIDEO_TOKEN}
    framed = model.config.model_type == "qwen3_vl"
    visuals = iter(zip(grids, kinds, strict=True))
    rows = []
    for segments in prompts:
        row = list(segments[0])
        for text in segments[1:]:
            (t, h, w), kind = next(visuals)
            if kind == "video" and framed:  # Qwen3-VL: each temporal patch its own run, after a timestamp
                for _ in range(t):
                    row += [
                        QWEN3_TIMESTAMP,
                        QWEN_VISION_START,
                        *([placeholder[kind]] * (h * w // merge)),
                        QWEN_VISION_END,
                    ]
                row += text
                continue
            row += [QWEN_VISION_START, *([placeholder[kind]] * (t * h * w // merge)), QWEN_VISION_END, *text]
        rows.append(row)
    ids, mask = _pad_rows(rows, left=left)
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    g = torch.Generator().manual_seed(seed)
    out = {
        "input_ids": ids,
        "attention_mask": mask,
        "mm_token_type_ids": (ids == IMAGE_TOKEN).long() + 2 * (ids == QWEN_VIDEO_TOKEN).long(),
    }
    for kind, pixels, grid_name in (
        ("image", "pixel_values", "image_grid_thw"),
        ("video", "pixel_values_videos", "video_grid_thw"),
    ):
        chosen = [grid for grid, k in zip(grids, kinds, strict=True) if k == kind]
        if not chosen:
            continue
        grid = torch.tensor(chosen, dtype=torch.long).reshape(-1, 3)
        out[grid_name] = grid
        out[pixels] = torch.randn(int(grid.prod(-1).sum()), patch_dim, generator=g)
    if "video" in kinds and hasattr(vision, "tokens_per_second"):  # Qwen2-VL takes no second_per_grid_ts
        count = kinds.count("video")
        seconds = [1.0] * count if seconds is None else list(seconds)
        if len(seconds) != count:
            raise ValueError(f"seconds: one per video ({count}); got {len(seconds)}")
        out["second_per_grid_ts"] = torch.tensor(seconds)
    return out


# LLaVA-NeXT: anyres tiles of 56 px (4 x 4 patches of 14 px); the grid pinpoints allow 1x2, 2x1 and 2x2 tiles.
LLAVA_NEXT_PINPOINTS = [[56, 112], [112, 56], [112, 112]]
__all__ += [
    "LLAVA_NEXT_PINPOINTS",
    "llava_next_image_tokens",
    "tiny_llava_next",
    "tiny_llava_next_inputs",
    "tiny_llava_next_processor",
]


def tiny_llava_next(*, seed: int = 0, hidden: int = 64, layers: int = 2) -> Any:
    """A random ``LlavaNextForConditionalGeneration``: CLIP tower on 56 px tiles, MLP projector, Llama LM.

    Each tile gives 16 patch tokens; an image of ``(height, width)`` gives
    :func:`llava_next_image_tokens` tokens (base tile + unpadded anyres grid + one newline per row).
    """
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14
    )
    text = _tiny_llama(hidden, layers, max_position_embeddings=512)
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=IMAGE_TOKEN,
        image_grid_pinpoints=LLAVA_NEXT_PINPOINTS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    model = LlavaNextForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = 0
    return model


def tiny_llava_next_processor(model: Any, *, full_vocab: bool = False) -> Any:
    """A real ``LlavaNextProcessor`` for :func:`tiny_llava_next`: the PIL anyres image processor (56 px tiles,
    :data:`LLAVA_NEXT_PINPOINTS`) and :func:`tiny_tokenizer`, left padding.

    Needs Pillow (no torchvision). ``full_vocab``: every id of the model's vocabulary decodes to a word.
    """
    from transformers import LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tile = model.config.vision_config.image_size
    images = LlavaNextImageProcessorPil(
        size={"shortest_edge": tile},
        crop_size={"height": tile, "width": tile},
        image_grid_pinpoints=LLAVA_NEXT_PINPOINTS,
    )
    tokenizer = tiny_tokenizer(model.config.text_config.vocab_size if full_vocab else None)
    tokenizer.padding_side = "left"
    return LlavaNextProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=model.config.vision_config.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS, which "default" drops
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def llava_next_image_tokens(model: Any, height: int, width: int) -> tuple[int, int]:
    """``(tokens, newlines)`` of an image of ``height x width`` pixels, counted as ``LlavaNextProcessor`` does.

    Base tile (``g * g`` tokens) + the unpadded anyres grid + one ``image_newline`` per grid row
    (``vision_feature_select_strategy="default"``: no CLS token).
    """
    from transformers.image_processing_utils import select_best_resolution

    config = model.config
    tile, patch = config.vision_config.image_size, config.vision_config.patch_size
    best_height, best_width = select_best_resolution([height, width], config.image_grid_pinpoints)
    rows, cols = (tile // patch) * (best_height // tile), (tile // patch) * (best_width // tile)
    if width / height > cols / rows:
        rows -= 2 * ((rows - int(round(height * (cols / width), 7))) // 2)
    else:
        cols -= 2 * ((cols - int(round(width * (rows / height), 7))) // 2)
    return (tile // patch) ** 2 + rows * cols + rows, rows


def tiny_llava_next_inputs(
    model: Any,
    prompts: list[list[list[int]]],
    sizes: list[tuple[int, int]],
    *,
    seed: int = 0,
    left: bool = True,
) -> dict[str, torch.Tensor]:
    """Processor-style inputs for ``tiny_llava_next`` (no PIL: pixel values are random tiles).

    Args:
        prompts: per row, its text segments (token ids in ``[3, 100)``); BOS starts each row and an
            image's placeholders go between each two consecutive segments.
        sizes: the original ``(height, width)`` of each image, in order (row by row).
        left: pad on the left (generation) or the right.

    Returns:
        ``input_ids``, ``attention_mask``, ``pixel_values`` of shape ``(images, max tiles, 3, 56, 56)``
        (each image's tiles first, zero-padded, as the processor stacks them) and ``image_sizes``.
    """
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    if len(sizes) != sum(len(segments) - 1 for segments in prompts):
        raise ValueError(f"{len(sizes)} image sizes for {sum(len(s) - 1 for s in prompts)} images")
    writings = ([IMAGE_TOKEN] * llava_next_image_tokens(model, *size)[0] for size in sizes)
    ids, mask = _pad_rows(_written_rows(prompts, writings), left=left)
    tile = model.config.vision_config.image_size
    tiles = [image_size_to_num_patches(list(size), model.config.image_grid_pinpoints, tile) for size in sizes]
    g = torch.Generator().manual_seed(seed)
    pixels = torch.zeros(len(sizes), max(tiles), 3, tile, tile)
    for i, n in enumerate(tiles):
        pixels[i, :n] = torch.randn(n, 3, tile, tile, generator=g)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": pixels,
        "image_sizes": torch.tensor(sizes, dtype=torch.long).reshape(-1, 2),
    }


# LLaVA-OneVision: SigLIP tiles of 56 px (4 x 4 patches), the LLaVA-NeXT pinpoints, videos pooled 2 x 2 per frame.
ONEVISION_VIDEO_TOKEN = 101
__all__ += ["ONEVISION_VIDEO_TOKEN", "tiny_llava_onevision", "tiny_llava_onevision_inputs"]


def tiny_llava_onevision(*, seed: int = 0, hidden: int = 64, layers: int = 2, aspect: str = "anyres_max_1") -> Any:
    """A random ``LlavaOnevisionForConditionalGeneration``: SigLIP tower on 56 px tiles (16 patch tokens), MLP
    projector, Llama LM.

    ``aspect``: the model's ``vision_aspect_ratio``; the default ``anyres_max_1`` shrinks (bilinear) every
    anyres grid above one tile's worth of tokens, so the tiny images take that path of the packing too.
    """
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, SiglipVisionConfig

    torch.manual_seed(seed)
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=_tiny_llama(hidden, layers, max_position_embeddings=512),
        image_token_id=IMAGE_TOKEN,
        video_token_id=ONEVISION_VIDEO_TOKEN,
        image_grid_pinpoints=LLAVA_NEXT_PINPOINTS,
        vision_aspect_ratio=aspect,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = 0
    return model


def tiny_llava_onevision_inputs(
    model: Any,
    prompts: list[list[list[int]]],
    visuals: list[tuple[str, Any]],
    *,
    seed: int = 0,
    left: bool = True,
) -> dict[str, torch.Tensor]:
    """Processor-style inputs for ``tiny_llava_onevision`` (no PIL: pixel values are random).

    Args:
        prompts: per row, its text segments (token ids in ``[3, 100)``); BOS starts each row and a visual
            input's placeholders go between each two consecutive segments (an empty segment puts two side by
            side, as a prompt with several images does).
        visuals: per visual input, in order, ``("image", (height, width))`` or ``("video", frames)``; every
            video has the same number of frames.
        left: pad on the left (generation) or the right.

    The placeholder counts come from the stock model: an image's from ``get_image_features`` (each image of a
    row holding several is its base tile alone), a video's from its frames, each pooled to ``ceil(g / 2)^2``
    tokens, plus one newline.
    """
    import math

    from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

    if len(visuals) != sum(len(segments) - 1 for segments in prompts):
        raise ValueError(f"{len(visuals)} visual inputs for {sum(len(s) - 1 for s in prompts)} placeholders")
    tile = model.config.vision_config.image_size
    grid = tile // model.config.vision_config.patch_size
    g = torch.Generator().manual_seed(seed)
    sizes = [size for kind, size in visuals if kind == "image"]
    frames = {size for kind, size in visuals if kind == "video"}
    if len(frames) > 1:
        raise ValueError(f"every video needs the same number of frames; got {sorted(frames)}")
    out: dict[str, torch.Tensor] = {}
    image_counts: list[int] = []
    if sizes:
        tiles = [image_size_to_num_patches(list(size), model.config.image_grid_pinpoints, tile) for size in sizes]
        pixels = torch.zeros(len(sizes), max(tiles), 3, tile, tile)
        for i, n in enumerate(tiles):
            pixels[i, :n] = torch.randn(n, 3, tile, tile, generator=g)
        visual_iter = iter(visuals)
        per_row = [sum(next(visual_iter)[0] == "image" for _ in segments[1:]) for segments in prompts]
        out["pixel_values"] = pixels
        out["image_sizes"] = torch.tensor(sizes, dtype=torch.long).reshape(-1, 2)
        out["batch_num_images"] = torch.tensor([n for n in per_row if n])
        with torch.no_grad():
            features = model.model.get_image_features(
                pixels, out["image_sizes"], batch_num_images=out["batch_num_images"]
            ).pooler_output
        image_counts = [f.shape[0] for f in features]
    if frames:
        (count,) = frames
        videos = sum(kind == "video" for kind, _ in visuals)
        out["pixel_values_videos"] = torch.randn(videos, count, 3, tile, tile, generator=g)
    video_tokens = (next(iter(frames)) * math.ceil(grid / 2) ** 2 + 1) if frames else 0
    images = iter(image_counts)
    writings = (
        [IMAGE_TOKEN] * next(images) if kind == "image" else [ONEVISION_VIDEO_TOKEN] * video_tokens
        for kind, _ in visuals
    )
    ids, mask = _pad_rows(_written_rows(prompts, writings), left=left)
    return {"input_ids": ids, "attention_mask": mask, **out}


__all__ += ["tiny_llava_onevision_processor"]


def tiny_llava_onevision_processor(model: Any, *, full_vocab: bool = False) -> Any:
    """A real ``LlavaOnevisionProcessor`` for :func:`tiny_llava_onevision`, for images only: the PIL anyres image
    processor (56 px tiles, :data:`LLAVA_NEXT_PINPOINTS`), the model's ``vision_aspect_ratio``, and
    :func:`tiny_tokenizer` with :data:`LLAVA_CHAT_TEMPLATE`, left padding.

    Needs Pillow (no torchvision: the video processor is left out). ``full_vocab``: every id of the model's
    vocabulary decodes to a word.
    """
    from transformers import LlavaOnevisionProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )

    from tokenprune.evaluation.runner import images_only

    tile = model.config.vision_config.image_size
    images = LlavaOnevisionImageProcessorPil(
        size={"height": tile, "width": tile}, image_grid_pinpoints=LLAVA_NEXT_PINPOINTS
    )
    tokenizer = tiny_tokenizer(model.config.text_config.vocab_size if full_vocab else None, video=True)
    tokenizer.padding_side = "left"
    return images_only(LlavaOnevisionProcessor)(
        image_processor=images,
        tokenizer=tokenizer,
        num_image_tokens=(tile // model.config.vision_config.patch_size) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio=model.config.vision_aspect_ratio,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


# InternVL: 112 px tiles of 14 px patches (8 x 8, CLS dropped), folded 2 x 2 by the pixel shuffle: 16 tokens a tile.
INTERNVL_IMG_START, INTERNVL_IMG_END = 104, 105
__all__ += ["INTERNVL_IMG_END", "INTERNVL_IMG_START", "tiny_internvl", "tiny_internvl_inputs"]


def tiny_internvl(*, seed: int = 0, hidden: int = 64, layers: int = 2) -> Any:
    """A random ``InternVLForConditionalGeneration``: InternViT on 112 px tiles, pixel shuffle (16 tokens a tile),
    MLP projector, Qwen2 LM (1-D RoPE)."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    torch.manual_seed(seed)
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": [112, 112],
        "patch_size": [14, 14],
    }
    text = _tiny_text("qwen2", hidden, layers)
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, downsample_ratio=0.5)
    model = InternVLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = 0
    return model


def tiny_internvl_inputs(
    model: Any, prompts: list[list[list[int]]], tiles: list[int], *, seed: int = 0, left: bool = True
) -> dict[str, torch.Tensor]:
    """Processor-style inputs for ``tiny_internvl`` (no PIL: pixel values are random tiles).

    Args:
        prompts: per row, its text segments (token ids in ``[3, 100)``); BOS starts each row and an image goes
            between each two consecutive segments, as ``<img> <IMG_CONTEXT> * (16 * tiles) </img>``.
        tiles: per image, in order, its number of tiles.
        left: pad on the left (generation) or the right.
    """
    if len(tiles) != sum(len(segments) - 1 for segments in prompts):
        raise ValueError(f"{len(tiles)} tile counts for {sum(len(s) - 1 for s in prompts)} images")
    size = model.config.vision_config.image_size[0]
    per_tile = int((size // model.config.vision_config.patch_size[0]) ** 2 * model.config.downsample_ratio**2)
    writings = ([INTERNVL_IMG_START, *([IMAGE_TOKEN] * (per_tile * n)), INTERNVL_IMG_END] for n in tiles)
    ids, mask = _pad_rows(_written_rows(prompts, writings), left=left)
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": torch.randn(sum(tiles), 3, size, size, generator=g),
    }


_SIGLIP_56 = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 56,
    "patch_size": 7,
}
"""The tiny SigLIP of :func:`tiny_gemma3` and :func:`tiny_idefics3`: 56 px images of 7 px patches (8 x 8)."""

INTERNVL_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<IMG_CONTEXT>\n{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""InternVL's chat template without its system turn: ``<|im_start|>user\n<IMG_CONTEXT>\n{question}...``."""
__all__ += ["INTERNVL_CHAT_TEMPLATE", "tiny_internvl_processor"]


def tiny_internvl_processor(model: Any, *, full_vocab: bool = False) -> Any:
    """A real ``InternVLProcessor`` for :func:`tiny_internvl`, for images only (its video processor needs
    torchvision): the PIL GOT-OCR2 image processor (112 px tiles, 1 to 4 of them and a thumbnail), a word-level
    tokenizer with InternVL's image markers (named as the processor reads them) and :data:`INTERNVL_CHAT_TEMPLATE`,
    left padding. ``full_vocab``: every id of the vocabulary decodes to a word."""
    from transformers import InternVLProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    from tokenprune.evaluation.runner import images_only

    markers = {"<img>": INTERNVL_IMG_START, "</img>": INTERNVL_IMG_END, "<IMG_CONTEXT>": IMAGE_TOKEN, "<video>": 106}
    turns = {"<|im_start|>": 107, "<|im_end|>": 108}
    words = {**markers, **turns, **{word: i + 10 for i, word in enumerate(_WORDS)}, "user": 109, "assistant": 110}
    named = {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    vocab_size = model.config.text_config.vocab_size if full_vocab else None
    tokenizer = _word_tokenizer(
        words, [*markers, *turns], r"<\|?[a-zA-Z_/]+\|?>|\n| |[:?]", INTERNVL_CHAT_TEMPLATE, vocab_size, named=named
    )
    tokenizer.padding_side = "left"
    size = model.config.vision_config.image_size[0]
    images = GotOcr2ImageProcessorPil(
        size={"height": size, "width": size}, crop_to_patches=True, min_patches=1, max_patches=4
    )
    per_tile = int((size // model.config.vision_config.patch_size[0]) ** 2 * model.config.downsample_ratio**2)
    return images_only(InternVLProcessor)(
        image_processor=images, tokenizer=tokenizer, image_seq_length=per_tile, chat_template=INTERNVL_CHAT_TEMPLATE
    )


# Gemma 3: 56 px images of 7 px patches (8 x 8), average-pooled 2 x 2 into 16 tokens, attended bidirectionally.
GEMMA_BOI, GEMMA_EOI, GEMMA_BLANK = 104, 105, 110  # GEMMA_BLANK: "\n\n", one token as in Gemma's tokenizer
__all__ += ["GEMMA_BLANK", "GEMMA_BOI", "GEMMA_EOI", "tiny_gemma3", "tiny_gemma3_inputs"]


def tiny_gemma3(*, seed: int = 0, hidden: int = 64, layers: int = 3) -> Any:
    """A random ``Gemma3ForConditionalGeneration``: SigLIP on 56 px images, 16 pooled tokens per image, a Gemma 3 LM
    whose layers alternate sliding-window (8 tokens) and full attention."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    torch.manual_seed(seed)
    text = _tiny_text(
        None,
        hidden,
        layers,
        head_dim=hidden // 4,
        sliding_window=8,
        layer_types=["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)],
    )
    vision = dict(_SIGLIP_56)
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=16,
        image_token_id=IMAGE_TOKEN,
        boi_token_index=GEMMA_BOI,
        eoi_token_index=GEMMA_EOI,
    )
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # transformers initialises the projector to zeros: every image token would be the same
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.05)
    model.generation_config.pad_token_id = 0
    return model


def tiny_gemma3_inputs(
    model: Any, prompts: list[list[list[int]]], *, seed: int = 0, left: bool = True
) -> dict[str, torch.Tensor]:
    """Processor-style inputs for ``tiny_gemma3``: BOS, then text segments with an image between each two, written
    ``\n\n <boi> <image> * 16 <eoi> \n\n`` (:data:`GEMMA_BLANK` for the blank line), and ``token_type_ids`` 1 at
    the image tokens (the bidirectional blocks)."""
    tokens = model.config.mm_tokens_per_image
    images = sum(len(segments) - 1 for segments in prompts)
    writing = [GEMMA_BLANK, GEMMA_BOI, *([IMAGE_TOKEN] * tokens), GEMMA_EOI, GEMMA_BLANK]
    ids, mask = _pad_rows(_written_rows(prompts, [writing] * images), left=left)
    size = model.config.vision_config.image_size
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": (ids == IMAGE_TOKEN).long(),
        "pixel_values": torch.randn(images, 3, size, size, generator=g),
    }


GEMMA_CHAT_TEMPLATE = (
    "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<start_of_image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
"""Gemma 3's chat template without its system turn: ``<start_of_turn>user\n<start_of_image>...``."""
__all__ += ["GEMMA_CHAT_TEMPLATE", "tiny_gemma3_processor"]


def tiny_gemma3_processor(model: Any, *, full_vocab: bool = False) -> Any:
    """A real ``Gemma3Processor`` for :func:`tiny_gemma3`: the PIL image processor (56 px), 16 image tokens per image,
    a word-level tokenizer with Gemma's image and turn markers (named as the processor reads them) and
    :data:`GEMMA_CHAT_TEMPLATE`, left padding. ``full_vocab``: every id of the vocabulary decodes to a word."""
    from transformers import Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    markers = {"<start_of_image>": GEMMA_BOI, "<end_of_image>": GEMMA_EOI, "<image_soft_token>": IMAGE_TOKEN}
    turns = {"<start_of_turn>": 106, "<end_of_turn>": 107}
    words = {**markers, **turns, **{word: i + 10 for i, word in enumerate(_WORDS)}, "user": 108, "model": 109}
    words["\n\n"] = GEMMA_BLANK  # one token, as in Gemma's tokenizer (the processor writes it around each image)
    named = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    vocab_size = model.config.text_config.vocab_size if full_vocab else None
    tokenizer = _word_tokenizer(
        words, [*markers, *turns], r"<[a-z_]+>|\n\n|\n| |[:?]", GEMMA_CHAT_TEMPLATE, vocab_size, named=named
    )
    tokenizer.padding_side = "left"
    size = model.config.vision_config.image_size
    return Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": size, "width": size}),
        tokenizer=tokenizer,
        chat_template=GEMMA_CHAT_TEMPLATE,
        image_seq_length=model.config.mm_tokens_per_image,
    )


# Idefics3 / SmolVLM: 56 px tiles of 7 px patches (8 x 8), folded 2 x 2 by the pixel shuffle: 16 tokens a tile; an image
# is a grid of tiles, each written after its <row_i_col_j> tag, and its global tile, written after <global-img>.
IDEFICS_FAKE, IDEFICS_GLOBAL, IDEFICS_NEWLINE = 101, 102, 19  # 19: "\n" in the tiny tokenizers' words
IDEFICS_ROW_COL = 60  # <row_i_col_j> is IDEFICS_ROW_COL + 6 (i - 1) + (j - 1)
__all__ += [
    "IDEFICS_FAKE",
    "IDEFICS_GLOBAL",
    "IDEFICS_NEWLINE",
    "IDEFICS_ROW_COL",
    "tiny_idefics3",
    "tiny_idefics3_inputs",
    "tiny_idefics3_processor",
]


def tiny_idefics3(*, seed: int = 0, hidden: int = 64, layers: int = 2, smolvlm: bool = False) -> Any:
    """A random ``Idefics3ForConditionalGeneration`` (``smolvlm``: ``SmolVLMForConditionalGeneration``, the same
    layout): SigLIP on 56 px tiles, pixel shuffle (16 tokens a tile), linear projector, Llama LM (1-D RoPE)."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
    )

    torch.manual_seed(seed)
    vision = dict(_SIGLIP_56)
    text = {"model_type": "llama", **_tiny_llama(hidden, layers).to_dict()}
    config_class, model_class = (
        (SmolVLMConfig, SmolVLMForConditionalGeneration)
        if smolvlm
        else (Idefics3Config, Idefics3ForConditionalGeneration)
    )
    config = config_class(vision_config=vision, text_config=text, scale_factor=2, image_token_id=IMAGE_TOKEN)
    model = model_class(config).eval()
    model.generation_config.pad_token_id = 0
    return model


def _idefics3_image(tile: int, rows: int, cols: int) -> list[int]:
    """The processor's writing of one image: its ``rows x cols`` tiles (none: the global tile alone) and the global."""
    out: list[int] = []
    for i in range(rows):
        for j in range(cols):
            out += [IDEFICS_FAKE, IDEFICS_ROW_COL + 6 * i + j, *([IMAGE_TOKEN] * tile)]
        out.append(IDEFICS_NEWLINE)
    if rows:
        out.append(IDEFICS_NEWLINE)
    return [*out, IDEFICS_FAKE, IDEFICS_GLOBAL, *([IMAGE_TOKEN] * tile), IDEFICS_FAKE]


def tiny_idefics3_inputs(
    model: Any, prompts: list[list[list[int]]], grids: list[tuple[int, int]], *, seed: int = 0, left: bool = True
) -> dict[str, torch.Tensor]:
    """Processor-style inputs for ``tiny_idefics3`` (no PIL: pixel values are random tiles).

    Args:
        prompts: per row, its text segments (token ids in ``[3, 60)``); BOS starts each row and an image goes
            between each two consecutive segments, written as the processor writes it.
        grids: per image, in order, its ``(rows, cols)`` of tiles; ``(0, 0)``: the global tile alone.
        left: pad on the left (generation) or the right.
    """
    if len(grids) != sum(len(segments) - 1 for segments in prompts):
        raise ValueError(f"{len(grids)} grids for {sum(len(s) - 1 for s in prompts)} images")
    tile, size = model.model.image_seq_len, model.config.vision_config.image_size
    ids, mask = _pad_rows(_written_rows(prompts, (_idefics3_image(tile, *grid) for grid in grids)), left=left)
    per_row, images = [len(segments) - 1 for segments in prompts], iter(grids)
    tiles = [sum(high * wide + 1 for high, wide in itertools.islice(images, n)) for n in per_row]  # tiles a row
    g = torch.Generator().manual_seed(seed)
    pixels = torch.zeros(len(prompts), max(tiles), 3, size, size)
    for b, count in enumerate(tiles):  # padding tiles are all zeros, as the processor gives them
        pixels[b, :count] = torch.randn(count, 3, size, size, generator=g)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


IDEFICS_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}:"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
"""Idefics3's chat template: ``User:<image>{question}<end_of_utterance>\nAssistant:``."""
__all__ += ["IDEFICS_CHAT_TEMPLATE"]


def tiny_idefics3_processor(model: Any, *, full_vocab: bool = False, split: bool = True) -> Any:
    """A real ``Idefics3Processor`` for :func:`tiny_idefics3`: the PIL image processor (an image's longest edge scaled
    to 112 px, 56 px tiles: a 2 x 2 grid at most), a word-level tokenizer with Idefics3's image markers and
    :data:`IDEFICS_CHAT_TEMPLATE`, left padding. ``split``: cut images into tiles (else: the global tile alone).
    ``full_vocab``: every id of the vocabulary decodes to a word."""
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    markers = {
        "<image>": IMAGE_TOKEN,
        "<fake_token_around_image>": IDEFICS_FAKE,
        "<global-img>": IDEFICS_GLOBAL,
        "<end_of_utterance>": 103,
        **{f"<row_{i + 1}_col_{j + 1}>": IDEFICS_ROW_COL + 6 * i + j for i in range(6) for j in range(6)},
    }
    words = {**markers, **{word: i + 10 for i, word in enumerate(_WORDS)}, "User": 104, "Assistant": 105}
    vocab_size = model.config.text_config.vocab_size if full_vocab else None
    tokenizer = _word_tokenizer(words, list(markers), r"<[a-z_0-9\-]+>|\n| |[:?]", IDEFICS_CHAT_TEMPLATE, vocab_size)
    tokenizer.padding_side = "left"
    size = model.config.vision_config.image_size
    images = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * size}, max_image_size={"longest_edge": size}, do_image_splitting=split
    )
    return Idefics3Processor(
        image_processor=images,
        tokenizer=tokenizer,
        image_seq_len=model.model.image_seq_len,
        chat_template=IDEFICS_CHAT_TEMPLATE,
    )


# Mistral 3: Pixtral on images of any size in 7 px patches, merged 2 x 2 (a token per 14 px square); an image is
# written row by row, [IMG] per token and [IMG_BREAK] after each row, the last row ending in [IMG_END].
MISTRAL_IMG_BREAK, MISTRAL_IMG_END = 101, 102
__all__ += ["MISTRAL_IMG_BREAK", "MISTRAL_IMG_END", "tiny_mistral3", "tiny_mistral3_inputs"]


def tiny_mistral3(*, seed: int = 0, hidden: int = 64, layers: int = 2) -> Any:
    """A random ``Mistral3ForConditionalGeneration``: Pixtral (7 px patches, images up to 112 px), a patch merger
    (2 x 2) and MLP projector, a Mistral LM without a sliding window (1-D RoPE)."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    torch.manual_seed(seed)
    vision = {
        "model_type": "pixtral",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "head_dim": 8,
        "image_size": 112,
        "patch_size": 7,
    }
    text = _tiny_text("mistral", hidden, layers, head_dim=hidden // 4, sliding_window=None)
    config = Mistral3Config(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN, spatial_merge_size=2)
    model = Mistral3ForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = 0
    return model


def tiny_mistral3_inputs(
    model: Any, prompts: list[list[list[int]]], sizes: list[tuple[int, int]], *, seed: int = 0, left: bool = True
) -> dict[str, torch.Tensor]:
    """Processor-style inputs for ``tiny_mistral3`` and ``tiny_pixtral_llava`` (no processor: Pixtral's needs
    torchvision).

    Args:
        prompts: per row, its text segments (token ids in ``[3, 100)``); BOS starts each row and an image goes
            between each two consecutive segments, written row by row as the processor writes it.
        sizes: per image, in order, its ``(height, width)`` in pixels, multiples of a token's side (14 px);
            ``pixel_values`` holds the images padded (zeros) on the bottom and right to the largest.
    """
    if len(sizes) != sum(len(segments) - 1 for segments in prompts):
        raise ValueError(f"{len(sizes)} image sizes for {sum(len(s) - 1 for s in prompts)} images")
    step = model.model.vision_tower.patch_size * getattr(model.config, "spatial_merge_size", 1)  # a token's side

    def writing(height: int, width: int) -> list[int]:  # row by row, a break after each row, the end marker last
        lines = [[IMAGE_TOKEN] * (width // step) + [MISTRAL_IMG_BREAK] for _ in range(height // step)]
        lines[-1][-1] = MISTRAL_IMG_END
        return [token for line in lines for token in line]

    ids, mask = _pad_rows(_written_rows(prompts, (writing(*size) for size in sizes)), left=left)
    g = torch.Generator().manual_seed(seed)
    pixels = torch.zeros(len(sizes), 3, max(h for h, _ in sizes), max(w for _, w in sizes))
    for i, (height, width) in enumerate(sizes):
        pixels[i, :, :height, :width] = torch.randn(3, height, width, generator=g)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels, "image_sizes": torch.tensor(sizes)}


# GLM-4V: the Qwen tiny LM and token ids; images written <|begin_of_image|> <|image|> * n <|end_of_image|> (the Qwen
# vision start and end ids here), a video's frames each so with a timestamp after it, inside
# <|begin_of_video|> ... <|end_of_video|>.
GLM_VIDEO_START, GLM_VIDEO_END, GLM_TIMESTAMP = 106, 107, 60
__all__ += ["GLM_TIMESTAMP", "GLM_VIDEO_END", "GLM_VIDEO_START", "tiny_glm4v", "tiny_glm4v_inputs"]


def tiny_glm4v(
    *, seed: int = 0, hidden: int = 64, layers: int = 2, partial_rotary: float = 1.0, moe: bool = False
) -> Any:
    """A random ``Glm4vForConditionalGeneration``: ViT with a 2x2 merger, a GLM-4 LM with 3-D M-RoPE over
    ``partial_rotary`` of each head (GLM-4 rotates neighbouring pairs of dimensions). ``moe``: GLM-4.5V's
    ``Glm4vMoeForConditionalGeneration`` instead (mixture-of-experts layers after the first, half of each head
    rotated unless ``partial_rotary`` says otherwise)."""
    from transformers import (
        Glm4vConfig,
        Glm4vForConditionalGeneration,
        Glm4vMoeConfig,
        Glm4vMoeForConditionalGeneration,
    )

    torch.manual_seed(seed)
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "out_hidden_size": hidden,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "image_size": 56,
    }
    text = _qwen_text(hidden, layers)
    if moe:
        partial_rotary = 0.5 if partial_rotary == 1.0 else partial_rotary
        text.update(
            head_dim=hidden // 4,
            moe_intermediate_size=hidden // 2,
            num_experts_per_tok=2,
            n_routed_experts=4,
            n_shared_experts=1,
            first_k_dense_replace=1,
        )
    if partial_rotary != 1.0:
        sections = [int(s * partial_rotary) for s in text["rope_parameters"]["mrope_section"]]
        sections[-1] += int(sum(text["rope_parameters"]["mrope_section"]) * partial_rotary) - sum(sections)
        text["rope_parameters"] = {**text["rope_parameters"], "mrope_section": sections}
        text["partial_rotary_factor"] = partial_rotary
    config_class, model_class = (
        (Glm4vMoeConfig, Glm4vMoeForConditionalGeneration) if moe else (Glm4vConfig, Glm4vForConditionalGeneration)
    )
    config = config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=IMAGE_TOKEN,
        video_token_id=QWEN_VIDEO_TOKEN,  # named by the config, unused: frames take the image placeholder
        image_start_token_id=QWEN_VISION_START,
        image_end_token_id=QWEN_VISION_END,
        video_start_token_id=GLM_VIDEO_START,
        video_end_token_id=GLM_VIDEO_END,
    )
    model = model_class(config).eval()
    model.generation_config.pad_token_id = 0
    return model


def tiny_glm4v_inputs(
    model: Any,
    prompts: list[list[list[int]]],
    grids: list[tuple[int, int, int]],
    *,
    video: bool = False,
    seed: int = 0,
    left: bool = True,
) -> dict[str, torch.Tensor]:
    """Processor-style inputs for ``tiny_glm4v`` (``mm_token_type_ids`` included): as :func:`tiny_qwen2_5_vl_inputs`
    for images; with ``video``, every visual input is a video of ``t`` temporal patches, each written as an image
    of ``h * w / 4`` placeholders followed by a timestamp (:data:`GLM_TIMESTAMP`), the whole between the video
    markers, and typed 2 in ``mm_token_type_ids``."""
    if not video:
        return tiny_qwen2_5_vl_inputs(model, prompts, grids, seed=seed, left=left)
    vision = model.config.vision_config
    merge = vision.spatial_merge_size**2
    if len(grids) != sum(len(segments) - 1 for segments in prompts):
        raise ValueError(f"{len(grids)} grids for {sum(len(s) - 1 for s in prompts)} videos")
    videos, rows, types = iter(grids), [], []
    for segments in prompts:
        row, kind = list(segments[0]), [0] * len(segments[0])
        for text in segments[1:]:
            t, h, w = next(videos)
            frame = [QWEN_VISION_START, *([IMAGE_TOKEN] * (h * w // merge)), QWEN_VISION_END, GLM_TIMESTAMP]
            written = [GLM_VIDEO_START, *(frame * t), GLM_VIDEO_END]
            row += [*written, *text]
            kind += [2 if token == IMAGE_TOKEN else 0 for token in written] + [0] * len(text)
        rows.append(row)
        types.append(kind)
    ids, mask = _pad_rows(rows, left=left)
    typed, _ = _pad_rows(types, left=left)
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    grid = torch.tensor(grids, dtype=torch.long).reshape(-1, 3)
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "mm_token_type_ids": typed,
        "pixel_values_videos": torch.randn(int(grid.prod(-1).sum()), patch_dim, generator=g),
        "video_grid_thw": grid,
    }


GLM_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
"""GLM-4.1V's chat template without its system turn: ``[gMASK]<sop><|user|>\n<|begin_of_image|><|image|>...``."""
__all__ += ["GLM_CHAT_TEMPLATE", "tiny_glm4v_processor"]


def tiny_glm4v_processor(model: Any, *, full_vocab: bool = False) -> Any:
    """A real ``Glm4vProcessor`` for :func:`tiny_glm4v`, for images only (its video processor needs torchvision):
    the PIL image processor (dynamic resolution, 14 px patches merged 2 x 2, at most 64 merged tokens per image), a
    word-level tokenizer with GLM's image and role markers and :data:`GLM_CHAT_TEMPLATE`, left padding.
    ``full_vocab``: every id of the vocabulary decodes to a word."""
    from transformers import Glm4vProcessor
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    from tokenprune.evaluation.runner import images_only

    markers = {
        "<|image|>": IMAGE_TOKEN,
        "<|begin_of_image|>": QWEN_VISION_START,
        "<|end_of_image|>": QWEN_VISION_END,
        "<|begin_of_video|>": GLM_VIDEO_START,
        "<|end_of_video|>": GLM_VIDEO_END,
        "<|video|>": QWEN_VIDEO_TOKEN,
    }
    roles = {"[gMASK]": 108, "<sop>": 109, "<|user|>": 110, "<|assistant|>": 111}
    words = {**markers, **roles, **{word: i + 10 for i, word in enumerate(_WORDS)}}
    vocab_size = model.config.text_config.vocab_size if full_vocab else None
    tokenizer = _word_tokenizer(
        words, [*markers, *roles], r"<\|[a-z_]+\|>|\[gMASK\]|<sop>|\n| |[:?]", GLM_CHAT_TEMPLATE, vocab_size
    )
    tokenizer.padding_side = "left"
    unit = 2 * model.config.vision_config.patch_size  # one merged token
    images = Glm4vImageProcessorPil(size={"shortest_edge": 4 * unit * unit, "longest_edge": 64 * unit * unit})
    return images_only(Glm4vProcessor)(image_processor=images, tokenizer=tokenizer, chat_template=GLM_CHAT_TEMPLATE)


__all__ += ["tiny_pixtral_llava"]


def tiny_pixtral_llava(*, seed: int = 0, hidden: int = 64, layers: int = 2) -> Any:
    """A random ``LlavaForConditionalGeneration`` with a Pixtral vision tower, as Pixtral-12B is published for
    transformers: images of any size in 14 px patches, one token each, written row by row with ``[IMG_BREAK]``
    (:func:`tiny_mistral3_inputs` builds its inputs); a Mistral LM without a sliding window."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    vision = {
        "model_type": "pixtral",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "head_dim": 8,
        "image_size": 112,
        "patch_size": 14,
    }
    text = _tiny_text("mistral", hidden, layers, head_dim=hidden // 4, sliding_window=None)
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=IMAGE_TOKEN,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        multimodal_projector_bias=True,
    )
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = 0
    return model

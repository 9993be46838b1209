"""The small LLaVA the project ships: architecture, tokenizer, processor, loading, and what it is trained on.

``scene-llava`` is a real :class:`transformers.LlavaForConditionalGeneration`, built like LLaVA-1.5 at a
small scale, trained from scratch on the generated scenes (:mod:`tokenprune.scenes.train`):

* vision tower: CLIP ViT, 336 x 336 pixels, 14-pixel patches -> 24 x 24 = **576 visual tokens** (+ CLS,
  dropped by the ``"default"`` feature strategy, as LLaVA-1.5 does), hidden size 128, 4 layers;
* projector: LLaVA's two-layer MLP with GELU;
* language model: Llama, hidden size 192, 4 layers, a word-level vocabulary of the scenes' language
  (:func:`vocabulary`), built with ``tokenizers``;
* chat template: LLaVA-1.5's ``USER: <image>\\n{question} ASSISTANT:`` (no system prompt).

It lives in the package (:data:`MODEL_DIR`, a ``save_pretrained`` directory) and loads offline with the
ordinary transformers calls, so everything that runs it runs any LLaVA checkpoint the same way::

    from transformers import AutoProcessor, LlavaForConditionalGeneration
    model = LlavaForConditionalGeneration.from_pretrained(MODEL_DIR)
    processor = AutoProcessor.from_pretrained(MODEL_DIR)

>>> vocab = vocabulary()
>>> vocab[:5], "circle" in vocab, "CAT" in vocab, "99" in vocab
(['<pad>', '<s>', '</s>', '<unk>', '<image>'], True, True, True)
>>> tok = build_tokenizer()
>>> tok.convert_ids_to_tokens(tok("Is there a red circle?")["input_ids"])
['Is', 'there', 'a', 'red', 'circle', '?']
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from tokenprune.errors import InputError
from tokenprune.scenes.description import PALETTE, PANEL_COLOURS, SHAPES
from tokenprune.scenes.generator import _LABELS, WORDS
from tokenprune.scenes.questions import MC_INSTRUCTION, NUMBER_WORDS, plural

__all__ = [
    "CHAT_TEMPLATE",
    "CONCEPTS",
    "IMAGE_SIZE",
    "MODEL_DIR",
    "PATCH_SIZE",
    "build_model",
    "build_processor",
    "build_tokenizer",
    "load_scene_model",
    "model_config",
    "vocabulary",
]

IMAGE_SIZE = 336
PATCH_SIZE = 14
GRID = IMAGE_SIZE // PATCH_SIZE  # 24 -> 576 visual tokens

#: Where the trained model is shipped (inside the installed package).
MODEL_DIR: Path = Path(str(resources.files("tokenprune"))) / "assets" / "scene-llava"

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}USER: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% elif m['role'] == 'assistant' %} ASSISTANT: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{{ m['content'][0]['text'] }}{% endif %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)
"""LLaVA-1.5's template: ``USER: <image>\\n{question} ASSISTANT: {answer}</s>``, turn after turn."""

_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
_SPLIT = r"\n|[?.,:;'!()\[\]\"]"  # isolated; spaces separate words and are dropped

#: Words the visual tokens of an object or a sign are aligned with during training (the concepts of
#: the scenes): colours, shapes, sign words and numbers, labels, and ``background`` for empty patches.
CONCEPTS: tuple[str, ...] = tuple(
    dict.fromkeys(
        [*PALETTE, *SHAPES, *PANEL_COLOURS, "sign", *WORDS, *(str(n) for n in range(100)), *_LABELS, "background"]
    )
)


def _stem_words() -> list[str]:
    """The words of the question stems and prompts (see :mod:`tokenprune.scenes.questions`)."""
    stems = [
        "Is there a in the image ?",
        "What colour is the ? What shape is the object ?",
        "How many are there in the image ? How many objects are there in the image ? shapes",
        "Is the to the left of the ? right above below What is",
        "What is written in the image ? on the sign ? What does the sign say ? What letter number is on the",
        "Which of these shapes appears in the image ? colours",
        "USER : ASSISTANT yes no",
        MC_INSTRUCTION,
        "Answer the question using a single word or phrase .",  # lmms-eval's short-answer prompt
        "Describe the image , listing each object .",  # the caption turn of training
    ]
    return [w for stem in stems for w in _pre_split(stem)]


def _pre_split(text: str) -> list[str]:
    import re

    return [p for p in re.split(rf"({_SPLIT})| ", text) if p]


def vocabulary() -> list[str]:
    """Every token of the model, in id order: specials (ids 0-4), then the scenes' words, sorted.

    Closed sets (colours, shapes and their plurals, sign words, numbers 0-99 and number words, labels,
    option letters) are listed explicitly, so every generated question and answer tokenises without
    ``<unk>`` (tested over thousands of questions).
    """
    words = {
        *PALETTE,
        *SHAPES,
        *(plural(s) for s in SHAPES),
        *PANEL_COLOURS,
        *WORDS,
        *(str(n) for n in range(100)),
        *NUMBER_WORDS,
        *_LABELS,
        *"ABCD",
        *CONCEPTS,
        *_stem_words(),
        "\n",
    }
    return _SPECIALS + sorted(words - set(_SPECIALS))


def build_tokenizer() -> Any:
    """The word-level fast tokenizer (``tokenizers``) with :data:`CHAT_TEMPLATE`; pads on the left."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"), pre_tokenizers.Split(" ", behavior="removed")]
    )
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces, tidies punctuation
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
        model_max_length=2048,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_processor(tokenizer: Any | None = None) -> Any:
    """A ``LlavaProcessor``: CLIP image preprocessing at 336 px (PIL, no torchvision) and :func:`build_tokenizer`."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    images = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    return LlavaProcessor(
        image_processor=images,
        tokenizer=build_tokenizer() if tokenizer is None else tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def model_config(vocab_size: int | None = None) -> Any:
    """The ``LlavaConfig`` of scene-llava (sizes in the module docstring)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vocab = vocabulary()
    vision = CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        projection_dim=128,
    )
    text = LlamaConfig(
        vocab_size=len(vocab) if vocab_size is None else vocab_size,
        hidden_size=192,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        pad_token_id=vocab.index("<pad>"),
        bos_token_id=vocab.index("<s>"),
        eos_token_id=vocab.index("</s>"),
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=vocab.index("<image>"),
        image_seq_length=GRID * GRID,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=True,
    )


def sincos_positions(grid: int, dim: int, *, scale: float = 0.5) -> Any:
    """``(1 + grid * grid, dim)`` 2-D sine-cosine position embeddings: a zero row for CLS, then the patches
    row-major; half the channels encode the row, half the column, at ``dim / 4`` frequencies each.

    >>> table = sincos_positions(24, 128)
    >>> tuple(table.shape), float(table[0].abs().sum())
    ((577, 128), 0.0)
    """
    import torch

    quarter = dim // 4
    frequencies = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    parts = []
    for coordinate in (rows.reshape(-1), cols.reshape(-1)):
        angle = coordinate[:, None].double() * frequencies[None, :]
        parts += [angle.sin(), angle.cos()]
    table = torch.cat(parts, dim=1) * scale
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).float()


def build_model(seed: int = 0) -> Any:
    """A freshly initialised scene-llava (random weights drawn from ``seed``), in train mode."""
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(model_config())
    with torch.no_grad():  # 2-D sin-cos positions (as MAE), still trained: patch neighbourhoods are easy to find
        model.model.vision_tower.embeddings.position_embedding.weight.copy_(sincos_positions(GRID, 128))
    config = model.generation_config
    config.pad_token_id, config.eos_token_id, config.bos_token_id = 0, 2, 1
    config.do_sample, config.max_new_tokens = False, 8
    return model


def load_scene_model(path: str | Path | None = None, *, device: str = "cpu") -> tuple[Any, Any]:
    """``(model, processor)`` of the shipped model (or a checkpoint directory ``path``), in eval mode.

    Raises:
        InputError: ``path`` (default :data:`MODEL_DIR`) holds no saved model.
    """
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    path = MODEL_DIR if path is None else Path(path)
    if not (path / "config.json").is_file():
        raise InputError(
            f"no scene-llava model at {path}: expected a save_pretrained directory (config.json, "
            "model.safetensors, tokenizer and processor files); train one with `python -m tokenprune.scenes.train`"
        )
    model = LlavaForConditionalGeneration.from_pretrained(path).to(device).eval()
    processor = AutoProcessor.from_pretrained(path)
    return model, processor

"""Which prompt tokens the selector sees: the user's question alone, learnt from the chat template.

``tokenprune.apply(..., prompt_tokens=question_tokens(processor))`` restricts the prompt to the
question: the text after the row's last image (or video) placeholder and before the template's end-of-turn and
generation-prompt tokens (``" ASSISTANT:"``, ``"<|im_end|>\\n<|im_start|>assistant\\n"``, ...), and
after the template's opening (system prompt, ``"USER: "``) when a row has no image or video, or no words after
its last one (the question was written before the images; the placeholders are left out). The
tokenizer's special tokens (image markers such as InternVL's ``</img>``, BOS/EOS) are never question text.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["question_tokens"]

_MARKER = "tokenprunequestionmarker"


def _find(haystack: Sequence[int], needle: Sequence[int]) -> int:
    """Start of the last occurrence of ``needle`` in ``haystack``, or -1."""
    n = len(needle)
    for start in range(len(haystack) - n, -1, -1):
        if list(haystack[start : start + n]) == list(needle):
            return start
    return -1


def _render(tokenizer: Any, content: Any) -> list[int]:
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True
    )
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(i) for i in ids]


def _words(tokenizer: Any, ids: Sequence[int]) -> bool:
    """Whether ``ids`` hold any text besides special tokens and white space."""
    return bool(ids) and bool(tokenizer.decode(list(ids), skip_special_tokens=True).strip())


def _template_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The token ids the chat template puts before and after a user's question."""
    marker = tokenizer(_MARKER, add_special_tokens=False)["input_ids"]
    for content in (_MARKER, [{"type": "text", "text": _MARKER}]):
        try:
            ids = _render(tokenizer, content)
        except Exception:  # templates differ in the content format they accept
            continue
        start = _find(ids, marker)
        if start >= 0:
            return ids[:start], ids[start + len(marker) :]
    raise ValueError(
        "question_tokens could not find a question in the tokenizer's chat template; pass a callable "
        "prompt_tokens=(input_ids, attention_mask) -> mask instead"
    )


def question_tokens(
    processor_or_tokenizer: Any, *, image_token_id: int | None = None, video_token_id: int | None = None
) -> Callable[..., Tensor]:
    """A ``prompt_tokens`` callable marking only the user's question in each row.

    Args:
        processor_or_tokenizer: a processor (its ``.tokenizer`` is used) or a tokenizer with a chat template.
        image_token_id: the image placeholder id; defaults to the processor's ``image_token_id``.
        video_token_id: the video placeholder id; defaults to the processor's ``video_token_id`` (Qwen2.5-VL).

    Returns:
        ``(input_ids, attention_mask) -> (B, L) bool``.
    """
    tokenizer = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
    if image_token_id is None:
        image_token_id = getattr(processor_or_tokenizer, "image_token_id", None)
    if video_token_id is None:
        video_token_id = getattr(processor_or_tokenizer, "video_token_id", None)
    placeholders = {token for token in (image_token_id, video_token_id) if isinstance(token, int)}
    # markers such as InternVL's </img> are not question text; an unknown word (<unk>) is
    unknown = getattr(tokenizer, "unk_token_id", None)
    special = [int(i) for i in getattr(tokenizer, "all_special_ids", []) if i != unknown]
    head, tail = _template_frame(tokenizer)

    def mark(input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        mask = torch.zeros_like(input_ids, dtype=torch.bool)
        unframed = []
        for row in range(input_ids.shape[0]):
            positions = attention_mask[row].bool().nonzero()[:, 0]
            ids = input_ids[row, positions].tolist()
            end = len(ids) - len(tail) if tail and ids[len(ids) - len(tail) :] == tail else -1
            images = [i for i, t in enumerate(ids) if t in placeholders]
            opening = len(head) if ids[: len(head)] == head else -1
            start = images[-1] + 1 if images else opening
            if images and end >= 0 and not _words(tokenizer, ids[start:end]) and 0 <= opening < images[0]:
                # the question comes before the images: the user's text up to the last image, placeholders left out
                start, end = opening, images[-1]
            if end < 0 or start < 0 or start >= end:
                unframed.append(row)
                mask[row, positions] = True  # fall back to every real token (special ones are dropped later)
                continue
            mask[row, positions[start:end]] = True
        if placeholders:
            mask &= ~torch.isin(input_ids, torch.tensor(sorted(placeholders), dtype=input_ids.dtype).to(mask.device))
        if special:
            mask &= ~torch.isin(input_ids, torch.tensor(special, dtype=input_ids.dtype, device=input_ids.device))
        if unframed:
            warnings.warn(
                f"question_tokens: rows {unframed} do not end with the chat template's generation prompt; "
                f"their whole text is used as the prompt",
                stacklevel=2,
            )
        return mask

    return mark

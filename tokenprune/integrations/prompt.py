"""Which prompt tokens the selector sees: the user's question alone, learnt from the chat template.

``tokenprune.apply(..., prompt_tokens=question_tokens(processor))`` restricts the prompt to the
question, in the last user turn, up to the template's end-of-turn and generation-prompt tokens (``" ASSISTANT:"``,
``"<|im_end|>\\n<|im_start|>assistant\\n"``, ...): the text after the turn's last image (or video) placeholder;
the turn's text before it when none follows (the question was written before the images; placeholders left
out); the whole turn's text when it holds no image. A turn opens where the template opens a user's turn
(``"USER: "``, ``"<|im_start|>user\\n"``), after any system prompt and earlier exchange, which are never question
text. The tokenizer's special tokens (image markers such as InternVL's ``</img>``, BOS/EOS) are never question
text either.
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


def _render(tokenizer: Any, content: Any, before: Sequence[tuple[str, str]] = ()) -> list[int]:
    """The template's rendering of a user turn holding ``content``, after the ``(role, text)`` turns ``before``, with
    the generation prompt."""
    shape = (lambda text: text) if isinstance(content, str) else (lambda text: [{"type": "text", "text": text}])
    messages = [{"role": role, "content": shape(text)} for role, text in before]
    ids = tokenizer.apply_chat_template(
        [*messages, {"role": "user", "content": content}], add_generation_prompt=True, tokenize=True
    )
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(i) for i in ids]


def _words(tokenizer: Any, ids: Sequence[int]) -> bool:
    """Whether ``ids`` hold any text besides special tokens and white space."""
    return bool(ids) and bool(tokenizer.decode(list(ids), skip_special_tokens=True).strip())


def _turn(ids: Sequence[int], opening: Sequence[int]) -> int:
    """Where the last user turn's text starts: after the last ``opening``, or after the last ``opening`` but its
    last token (a tokenizer may merge that token, e.g. a newline, with the turn's first; only for an opening of
    three tokens or more), whichever comes later; -1 when neither is found."""
    parts = [opening, opening[:-1]] if len(opening) > 2 else [opening]  # a one-token opening would match words
    found = [(at + len(part), at) for part in parts for at in [_find(ids, part)] if at >= 0]
    return max(found, key=lambda hit: hit[1])[0] if found else -1


def _common_end(sequences: list[list[int]]) -> list[int]:
    """The longest run of tokens every sequence ends with."""
    n = 0
    while all(len(s) > n for s in sequences) and len({s[len(s) - 1 - n] for s in sequences}) == 1:
        n += 1
    return sequences[0][len(sequences[0]) - n :] if n else []


def _template_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The token ids that open a user turn (what the template puts before a user's question, as it ends after a
    system turn and after an earlier exchange too), and those it puts after the question."""
    marker = tokenizer(_MARKER, add_special_tokens=False)["input_ids"]
    for content in (_MARKER, [{"type": "text", "text": _MARKER}]):
        try:
            ids = _render(tokenizer, content)
        except Exception:  # templates differ in the content format they accept
            continue
        start = _find(ids, marker)
        if start < 0:
            continue
        head = ids[:start]
        openings = [head]
        said = "tokenpruneanswer ?"  # ends apart from what follows (a word could merge with "USER")
        for before in ([("system", said)], [("user", said), ("assistant", said)]):
            try:  # templates differ in the roles they accept
                other = _render(tokenizer, content, before)
            except Exception:
                continue
            at = _find(other, marker)
            if at >= 0:
                openings.append(other[:at])
        return _common_end(openings) or head, ids[start + len(marker) :]
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
    opening, tail = _template_frame(tokenizer)

    def mark(input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        mask = torch.zeros_like(input_ids, dtype=torch.bool)
        unframed = []
        for row in range(input_ids.shape[0]):
            positions = attention_mask[row].bool().nonzero()[:, 0]
            ids = input_ids[row, positions].tolist()
            end = len(ids) - len(tail) if tail and ids[len(ids) - len(tail) :] == tail else -1
            images = [i for i, t in enumerate(ids) if t in placeholders]
            turn = _turn(ids[: end if end >= 0 else len(ids)], opening)
            if images and images[-1] >= turn:  # an image in the last user turn: the question follows it
                start = images[-1] + 1
                if end >= 0 and turn >= 0 and not _words(tokenizer, ids[start:end]):
                    # or was written before it: the turn's text up to its last image, placeholders left out
                    start, end = turn, images[-1]
            else:
                start = turn
            text = [t for t in ids[max(start, 0) : end] if t not in placeholders]
            if end < 0 or start < 0 or not _words(tokenizer, text):  # no question found (or an empty one)
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
                f"question_tokens: rows {unframed} do not end with the chat template's generation prompt, or their "
                f"last user turn holds no words; their whole text is used as the prompt",
                stacklevel=2,
            )
        return mask

    return mark

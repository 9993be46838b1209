"""Idefics3 and SmolVLM (``Idefics3ForConditionalGeneration``, ``SmolVLMForConditionalGeneration``): image tiles
written apart in the prompt, pixel shuffle, 1-D RoPE.

The processor cuts an image into a grid of tiles and adds the whole image, downscaled, as a *global* tile
(512 px tiles in SmolVLM, 364 px in Idefics3; a small image is the global tile alone). SigLIP encodes each tile,
a pixel shuffle folds its patches (``scale_factor`` 4 in SmolVLM: 16 patches a token, 64 tokens a tile; 2 in
Idefics3: 169 tokens a tile) and a linear projector maps them into the language model. Unlike the
other families, one image's placeholders are not one run: the processor writes each tile as
``<fake_token_around_image> <row_i_col_j> <image> * S``, rows of tiles ending in a newline, and the global
tile last, as ``<fake_token_around_image> <global-img> <image> * S <fake_token_around_image>``.

Each image is pruned over all its tiles' tokens, the global tile's included, under one budget. An image ends
at the run of placeholders that follows the global tile's tag, the token before the last run of every row
(the model config does not name it). A video (SmolVLM2) reaches the model as frames, each written as a global
tile of its own, so each frame is pruned as an image. Kept tokens take contiguous positions by default
(``positions="original"``: their full-sequence positions).

The tokens the processor writes around and between the tiles (``<fake_token_around_image>``, the row/column and
global tags, the newlines after each row of tiles) are never prompt text, although the model config does not
name them: :meth:`Idefics3Adapter.frame_tokens` takes everything from the two tokens before an image's first
tile to the token after its global tile, so the prompt of a question is the same whatever grid its image has.

SigLIP has no [CLS] token and each token folds several patches, so ``fastervlm`` and ``visionzip`` are refused
with a clear error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from tokenprune.errors import InputError
from tokenprune.integrations.base import ImageTokens, ModelAdapter, _shifted

__all__ = ["Idefics3Adapter"]


class Idefics3Adapter(ModelAdapter):
    image_kwargs = ("pixel_values", "pixel_attention_mask")
    score_sources = frozenset()
    merging = False
    no_cls_attention = "the SigLIP vision encoder has no CLS token, and its pixel shuffle folds patches into each token"

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    def language_model(self) -> Any:
        return self.model.model.text_model

    @property
    def tile_tokens(self) -> int:
        """Visual tokens per tile (the processor's ``image_seq_len``)."""
        return self.model.model.image_seq_len

    def _images(self, input_ids: Tensor, placeholders: Tensor) -> list[list[tuple[int, int, int]]]:
        """Each image's runs of placeholders, ``(row, start, length)``, images in placeholder order (one read
        from the device): an image is the runs up to and including the one after the global tile's tag, the token
        before the last run of every row (the model config does not name it)."""
        starts = placeholders & (_shifted(placeholders.long(), 1) != 1)
        rows, positions = placeholders.nonzero().T
        host = torch.cat([rows, positions, _shifted(input_ids, 1)[placeholders], starts[placeholders].long()])
        host = host.tolist()
        t = len(host) // 4
        rows, positions, before, first = host[:t], host[t : 2 * t], host[2 * t : 3 * t], host[3 * t :]
        runs: list[list[int]] = []  # [row, start, length, tag before the run]
        for i in range(t):
            if first[i]:
                runs.append([rows[i], positions[i], 1, before[i]])
            else:
                runs[-1][2] += 1
        tile = self.tile_tokens
        if any(length != tile for _, _, length, _ in runs):
            raise InputError(
                f"{self.name}: the input holds placeholder runs of {[run[2] for run in runs]} tokens; "
                f"expected one run of {tile} (the model's tokens per tile) per tile, each after its tag, as the "
                f"processor writes them"
            )
        last = {row: tag for row, _, _, tag in runs}  # the tag of each row's last run: its last image's global tile
        if len(set(last.values())) > 1:
            raise InputError(
                f"{self.name}: the last tile of each row follows a different token ({sorted(set(last.values()))}); "
                f"expected every image to end with its global tile, after the <global-img> tag, as the processor "
                f"writes it"
            )
        (global_tag,) = set(last.values()) or {None}
        images: list[list[tuple[int, int, int]]] = [[]]
        for row, start, length, tag in runs:
            images[-1].append((row, start, length))
            if tag == global_tag:
                images.append([])
        return images[:-1]

    def _placeholders(self, inputs: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        ids = inputs.get("input_ids")
        if not isinstance(ids, Tensor) or ids.dim() != 2:
            raise InputError(f"{self.name}: pruning needs input_ids of shape (B, L); got {type(ids).__name__}")
        mask = inputs.get("attention_mask")
        placeholders = ids == self.image_token_id
        if mask is not None:
            placeholders &= mask.bool()
        return ids, placeholders

    def frame_tokens(self, input_ids: Tensor, placeholders: Tensor) -> Tensor:
        """Everything of an image's writing that is not a placeholder: from the ``<fake_token_around_image>`` and
        tag before its first tile to the ``<fake_token_around_image>`` after its global tile, the tags and the
        newlines between its rows of tiles included (one read from the device)."""
        framing = torch.zeros(placeholders.shape, dtype=torch.bool)
        for runs in self._images(input_ids, placeholders):
            row, first, _ = runs[0]
            _, start, length = runs[-1]
            framing[row, max(first - 2, 0) : start + length + 1] = True
        return framing.to(placeholders.device, non_blocking=True) & ~placeholders

    def image_token_counts(self, inputs: Mapping[str, Any]) -> list[int]:
        """Per image, its placeholders: its tiles' runs, up to and including the run after the global tile's tag."""
        return [sum(length for _, _, length in runs) for runs in self._images(*self._placeholders(inputs))]

    def encode_images(self, inputs: Mapping[str, Any], *, scores: str | None = None, **options: Any) -> ImageTokens:
        if scores is not None:
            raise self.unsupported_scores(scores)
        pixels = inputs.get("pixel_values")
        if not isinstance(pixels, Tensor) or pixels.dim() != 5:
            got = tuple(pixels.shape) if isinstance(pixels, Tensor) else type(pixels).__name__
            raise InputError(f"{self.name}: pixel_values must be (B, tiles, 3, H, W), every row's tiles; got {got}")
        counts = self.image_token_counts(inputs)
        out = self.model.model.get_image_features(pixels, inputs.get("pixel_attention_mask"), return_dict=True)
        flat = torch.cat(list(out.pooler_output))  # every row's tiles' tokens, rows in order
        if flat.shape[0] != sum(counts):
            tile = self.tile_tokens
            raise InputError(
                f"{self.name}: pixel_values hold {flat.shape[0] // tile} tiles but the input's placeholders are "
                f"{sum(counts) // tile} tiles' worth ({tile} tokens a tile); the processor and the model disagree"
            )
        return ImageTokens(features=list(torch.split(flat, counts)))

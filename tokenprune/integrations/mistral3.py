"""Mistral 3 (``Mistral3ForConditionalGeneration``: Mistral Small 3.1 and 3.2): Pixtral images of any size, rows
of tokens written apart in the prompt, 1-D RoPE.

Pixtral encodes an image at its own resolution (its longest edge at most 1540 px in the released models) in
14 px patches; the projector's patch merger folds 2 x 2 patches into each token. The processor writes an
image row by row, ``[IMG]`` per token and ``[IMG_BREAK]`` after each row, the last row ending in
``[IMG_END]``, so one image's placeholders are several runs. Each image is pruned over all its tokens under
one budget; the row breaks stay, as text, so the kept tokens of a row still sit between its breaks. Kept tokens
take contiguous positions by default (``positions="original"``: their full-sequence positions).

``[IMG_BREAK]`` and ``[IMG_END]`` are tokenizer tokens the model config does not name; they are never prompt
text all the same (:meth:`Mistral3Adapter.frame_tokens` finds them where they stand, after each run of
placeholders).

Pixtral has no [CLS] token and each token folds four patches, so ``fastervlm`` and ``visionzip`` are refused
with a clear error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from tokenprune.errors import InputError
from tokenprune.integrations.base import ImageTokens, ModelAdapter, pixel_batch, tokens_around

__all__ = ["Mistral3Adapter"]


class Mistral3Adapter(ModelAdapter):
    image_kwargs = ("pixel_values", "image_sizes", "vision_feature_layer")
    score_sources = frozenset()
    merging = False
    no_cls_attention = (
        "the Pixtral vision encoder has no CLS token, and its patch merger folds 2 x 2 patches into each token"
    )

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    def frame_tokens(self, input_ids: Tensor, placeholders: Tensor) -> Tensor:
        return tokens_around(placeholders, before=0, after=1)  # [IMG_BREAK] and [IMG_END]

    def _image_sizes(self, inputs: Mapping[str, Any]) -> Tensor:
        """``inputs["image_sizes"]``, checked to be ``(images, 2)`` (nothing is read from the device); a list of
        ``(height, width)`` pairs, which the model takes too, as a tensor."""
        sizes = inputs.get("image_sizes")
        if isinstance(sizes, list | tuple):
            with contextlib.suppress(TypeError, ValueError):  # what cannot be a tensor is refused below
                sizes = torch.tensor(sizes, dtype=torch.long)
        if not isinstance(sizes, Tensor) or sizes.dim() != 2 or sizes.shape[-1] != 2:
            got = tuple(sizes.shape) if isinstance(sizes, Tensor) else type(sizes).__name__
            raise InputError(f"{self.name}: pruning needs image_sizes of shape (images, 2), (height, width); got {got}")
        return sizes

    def image_token_counts(self, inputs: Mapping[str, Any]) -> list[int]:
        """Per image, ``(height / 28) * (width / 28)`` tokens (14 px patches merged 2 x 2), from ``image_sizes``."""
        step = self.model.model.vision_tower.patch_size * self.model.config.spatial_merge_size
        return [(height // step) * (width // step) for height, width in self._image_sizes(inputs).tolist()]

    def encode_images(self, inputs: Mapping[str, Any], *, scores: str | None = None, **options: Any) -> ImageTokens:
        if scores is not None:
            raise self.unsupported_scores(scores)
        pixels = pixel_batch(self.name, inputs, "(images, 3, H, W), padded to the largest")
        sizes = self._image_sizes(inputs)
        layer = inputs.get("vision_feature_layer")
        out = self.model.model.get_image_features(
            pixel_values=pixels,
            image_sizes=sizes,
            vision_feature_layer=self.model.config.vision_feature_layer if layer is None else layer,
            return_dict=True,
        )
        return ImageTokens(features=list(out.pooler_output))

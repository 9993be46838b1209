"""InternVL (``InternVLForConditionalGeneration``: InternVL2.5, InternVL3): dynamic tiles, pixel shuffle, 1-D RoPE.

An image is cut into tiles (448 px in the released models, a thumbnail among them); each tile's
InternViT patches are folded 2 x 2 by a pixel shuffle into ``(448 / 28)^2 = 256`` tokens, and the
projector maps them into the language model. The processor writes ``<img>``, 256 placeholders per tile,
``</img>``; how many tiles an image has is not returned, so each image is one run of placeholders (its
tokens, tile after tile). Each image is pruned over all its tiles' tokens under one budget. A video reaches
the model as frames, each its own ``<img>`` run in ``pixel_values``, so each frame is pruned as an image. Kept tokens
take contiguous positions by default (``positions="original"``: their full-sequence positions).

The ``<img>``/``</img>`` markers are tokenizer tokens the model config does not name; they are never prompt
text all the same (:meth:`InternVLAdapter.frame_tokens` finds them where they stand, around each run of
placeholders).

Scores: a token is four patches folded together, so the vision encoder's [CLS] attention gives no one
token's score, and the folding leaves no raw feature per token to merge: ``fastervlm`` and ``visionzip``
are refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from tokenprune.errors import InputError
from tokenprune.integrations.base import (
    ImageTokens,
    ModelAdapter,
    pixel_batch,
    placeholder_runs,
    tokens_around,
)

__all__ = ["InternVLAdapter"]


class InternVLAdapter(ModelAdapter):
    image_kwargs = ("pixel_values", "vision_feature_layer", "vision_feature_select_strategy")
    score_sources = frozenset()
    merging = False
    one_tensor: ClassVar[Mapping[str, bool]] = {
        "image": False
    }  # forward reads every kept image token as one (T, D) tensor
    no_cls_attention = (
        "its pixel shuffle folds 2 x 2 patches into each token, so no token has a [CLS] attention of its own"
    )

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    def frame_tokens(self, input_ids: Tensor, placeholders: Tensor) -> Tensor:
        return tokens_around(placeholders, before=1, after=1)  # <img> and </img>

    def encode_images(self, inputs: Mapping[str, Any], *, scores: str | None = None, **options: Any) -> ImageTokens:
        if scores is not None:
            raise self.unsupported_scores(scores)
        pixels = pixel_batch(self.name, inputs, "(tiles, 3, H, W), every image's tiles")
        out = self.model.model.get_image_features(
            pixel_values=pixels,
            vision_feature_layer=inputs.get("vision_feature_layer"),
            vision_feature_select_strategy=inputs.get("vision_feature_select_strategy"),
            return_dict=True,
        )
        tiles = out.pooler_output  # (tiles, tokens per tile, D)
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        placeholders = ids == self.image_token_id
        if mask is not None:
            placeholders &= mask.bool()
        sizes = placeholder_runs(placeholders)
        per_tile = tiles.shape[1]
        if sum(sizes) != tiles.shape[0] * per_tile or any(size % per_tile for size in sizes):
            raise InputError(
                f"{self.name}: the input holds image placeholder runs of {sizes} tokens, but the {tiles.shape[0]} "
                f"tiles give {per_tile} tokens each; expected each image's tiles' tokens as one run between <img> "
                f"and </img>, as the processor writes them"
            )
        return ImageTokens(features=list(torch.split(tiles.reshape(-1, tiles.shape[-1]), sizes)))

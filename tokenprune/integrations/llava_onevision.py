"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): anyres images and videos, 1-D RoPE.

An image is packed as in LLaVA-NeXT (:mod:`tokenprune.integrations.llava_next`): the base tile, then
the anyres tiles stitched, cropped back to the image's aspect ratio and, beyond ``anyres_max_N``
tiles' worth of tokens, shrunk by bilinear interpolation, with one ``image_newline`` after each row.
An image of a prompt holding several (``batch_num_images`` > 1) is its base tile alone, followed by one
newline. A video is its frames' tokens, each frame pooled 2 x 2 (bilinear), frame after frame, then one
newline at the end.

Policy for ``image_newline``, as for LLaVA-NeXT: never pruned, outside the budget, found exactly by
running the model's own packing on a marker. A video is one visual input: its budget covers all its
frames' tokens, the trailing newline aside. Kept tokens take contiguous positions by default
(``positions="original"``: their full-sequence positions).

The vision tower is SigLIP, which has no [CLS] token, and the interpolation mixes the projector's
outputs of neighbouring patches, so a merged raw feature has no token of its own: ``fastervlm`` and
``visionzip`` are refused with a clear error; every method that scores tokens by their features (and
the prompt) runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from tokenprune.errors import InputError, TokenPruneError
from tokenprune.integrations.base import (
    ImageTokens,
    VideoPlaceholders,
)
from tokenprune.integrations.llava_next import LlavaNextAdapter

__all__ = ["LlavaOnevisionAdapter"]


class LlavaOnevisionAdapter(VideoPlaceholders, LlavaNextAdapter):
    image_kwargs = (
        "pixel_values",
        "image_sizes",
        "batch_num_images",
        "pixel_values_videos",
        "image_sizes_videos",
        "vision_feature_layer",
        "vision_feature_select_strategy",
        "vision_aspect_ratio",
    )
    merging = False
    one_tensor: ClassVar[Mapping[str, bool]] = {
        "video": True
    }  # forward flattens the kept video tokens from one (1, T, D) tensor
    no_cls_attention = "the SigLIP vision encoder has no CLS token"
    score_sources = frozenset()

    def visual_count(self, inputs: Mapping[str, Any], kind: str) -> int:
        """Videos: the first dimension of ``pixel_values_videos`` (nothing read from the device)."""
        return self._videos(inputs).shape[0] if kind == "video" else len(self.visual_lengths(inputs, kind))

    def visual_lengths(self, inputs: Mapping[str, Any], kind: str) -> list[int]:
        """Packed tokens per image (video), newlines included, from the sizes alone (no vision forward)."""
        protected = self._image_protected(inputs) if kind == "image" else self._video_protected(inputs)
        return [int(mask.shape[0]) for mask in protected]

    def _videos(self, inputs: Mapping[str, Any]) -> Tensor:
        videos = inputs["pixel_values_videos"]
        if not isinstance(videos, Tensor) or videos.dim() != 5:
            got = tuple(videos.shape) if isinstance(videos, Tensor) else type(videos).__name__
            raise InputError(f"{self.name}: pixel_values_videos must be (videos, frames, 3, H, W); got {got}")
        return videos

    def _tiles_per_image(self, image_sizes: Any, inputs: Mapping[str, Any] | None = None) -> list[int]:
        """Tiles used of each image: all its anyres tiles alone in its prompt, else its base tile only, exactly
        as ``get_image_features`` counts them (``batch_num_images``)."""
        tiles = super()._tiles_per_image(image_sizes)
        per_prompt = None if inputs is None else inputs.get("batch_num_images")
        if per_prompt is None:
            return tiles
        counts = [int(n) for n in (per_prompt.tolist() if isinstance(per_prompt, Tensor) else per_prompt)]
        alone = [n == 1 for n in counts for _ in range(n)]
        if len(alone) != len(tiles):
            raise InputError(
                f"{self.name}: batch_num_images {counts} adds up to {len(alone)} images; image_sizes has {len(tiles)}"
            )
        return [n if single else 1 for n, single in zip(tiles, alone, strict=True)]

    def _image_protected(self, inputs: Mapping[str, Any]) -> list[Tensor]:
        """Per image, its newline tokens: the model's packing run on a marker (0 every patch, 1 the newline)."""
        image_sizes = self._image_sizes(inputs)
        device = inputs["pixel_values"].device
        tiles = self._tiles_per_image(image_sizes, inputs)
        zeros = [torch.zeros((n, self._tile_tokens, 1), dtype=torch.float32, device=device) for n in tiles]
        aspect = inputs.get("vision_aspect_ratio") or self.model.config.vision_aspect_ratio
        packed, _ = self.model.model.pack_image_features(
            zeros, image_sizes, image_newline=torch.ones(1, device=device), vision_aspect_ratio=aspect
        )
        return [marker[:, 0] == 1 for marker in packed]

    def _video_protected(self, inputs: Mapping[str, Any]) -> list[Tensor]:
        """Per video, its one newline token, after the last frame's pooled tokens."""
        videos = self._videos(inputs)
        side = math.ceil(math.isqrt(self._tile_tokens) / 2)  # each frame pooled 2 x 2
        mask = torch.zeros(videos.shape[1] * side * side + 1, dtype=torch.bool, device=videos.device)
        mask[-1] = True
        return [mask.clone() for _ in range(videos.shape[0])]

    def protected_tokens(self, inputs: Mapping[str, Any]) -> list[Tensor]:
        """Per image and video, in placeholder order, an ``(N_i,)`` bool mask of its newline tokens (no vision
        forward: images from their sizes and the model's packing of a marker, videos from their frame count)."""
        images = self._image_protected(inputs) if inputs.get("pixel_values") is not None else []
        videos = self._video_protected(inputs) if inputs.get("pixel_values_videos") is not None else []
        return self.in_placeholder_order(inputs, {"image": images, "video": videos})

    def encode_images(
        self, inputs: Mapping[str, Any], *, scores: str | None = None, merge: bool = False
    ) -> ImageTokens:
        if scores is not None:
            raise self.unsupported_scores(scores)
        model = self.model.model
        layer, strategy = inputs.get("vision_feature_layer"), inputs.get("vision_feature_select_strategy")
        encoded: dict[str, list[Tensor]] = {"image": [], "video": []}
        if inputs.get("pixel_values") is not None:
            out = model.get_image_features(
                pixel_values=inputs["pixel_values"],
                image_sizes=self._image_sizes(inputs),
                vision_feature_layer=layer,
                vision_feature_select_strategy=strategy,
                vision_aspect_ratio=inputs.get("vision_aspect_ratio"),
                batch_num_images=inputs.get("batch_num_images"),
                return_dict=True,
            )
            encoded["image"] = list(out.pooler_output)
        if inputs.get("pixel_values_videos") is not None:
            out = model.get_video_features(
                self._videos(inputs),
                vision_feature_layer=layer,
                vision_feature_select_strategy=strategy,
                return_dict=True,
            )
            encoded["video"] = list(out.pooler_output)
        if not encoded["image"] and not encoded["video"]:
            raise self.nothing_to_prune()
        features = self.in_placeholder_order(inputs, encoded)
        protected = self.protected_tokens(inputs)
        lengths = [int(mask.shape[0]) for mask in protected]
        if lengths != [int(f.shape[0]) for f in features]:
            raise TokenPruneError(
                f"{self.name}: the packing gave {lengths} tokens per image and video but the model gave "
                f"{[int(f.shape[0]) for f in features]}; this transformers version packs LLaVA-OneVision differently"
            )
        return ImageTokens(features=features, protected=protected)

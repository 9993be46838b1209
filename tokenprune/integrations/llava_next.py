"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): anyres tiles packed into one sequence per image, 1-D RoPE.

One image's visual tokens, in the order ``LlavaNextModel.pack_image_features`` lays them out: the
base tile (the whole image resized to one CLIP tile, ``g x g`` patch tokens, no newline), then the
anyres tiles stitched into one grid, cropped back to the image's aspect ratio ("unpadded"), row by
row with one ``image_newline`` token after each row. Images of different sizes give different
token counts.

Policy for ``image_newline``: newline tokens are never pruned and sit outside the budget. They are
passed to the selector as :attr:`~tokenprune.integrations.base.ImageTokens.protected`, so an int
budget ``K`` keeps ``K`` patch tokens *plus* every newline, and a ratio budget is a ratio of the
image's patch (non-newline) tokens. Kept tokens, newlines included, stay in their original order.
As for LLaVA-1.5, the language model gets a shorter sequence (text + kept tokens) with contiguous
1-D positions by default, exactly as if the image had that many tokens (``positions="original"``: at
their full-sequence positions).

Where the newlines are: found by running the model's own ``pack_image_features`` on a one-channel
marker (0 for every tile patch, 1 for the newline), which gives each image's newline mask exact by
construction and independent of the feature values. (Comparing features with ``image_newline``
would also find them, since the packing copies the vector verbatim, but would also mark a patch
feature that happened to equal it.) Whenever the stock packing runs, the marker packing does too:
the stock code only accepts tiles of exactly ``g x g`` tokens, which is what the marker has.

CLS attention (``fastervlm``): every tile, the base tile included, is a separate CLIP forward with
its own CLS token. The CLS row is recomputed per tile at the feature layer (softmax over that
tile's own patches; no eager attention needed), and the per-tile patch scores go through the same
``pack_image_features`` call as the features, so each packed token gets the score of the patch it
came from and patches cropped away by unpadding drop out the same way. Newline tokens get score 0
(they are protected, so their score is never used).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from tokenprune.errors import InputError, TokenPruneError
from tokenprune.integrations.attention import cls_attention, maybe_capture, mean_keys
from tokenprune.integrations.base import ImageTokens, ModelAdapter
from tokenprune.integrations.llava import LlavaAdapter

__all__ = ["LlavaNextAdapter"]


class LlavaNextAdapter(LlavaAdapter):
    """LLaVA-NeXT: same vision tower and feature-layer conventions as LLaVA-1.5, plus anyres packing.

    ``image_newline`` tokens are protected: always kept, outside the budget (see the module docstring).
    """

    image_kwargs = ("pixel_values", "image_sizes", "vision_feature_layer", "vision_feature_select_strategy")

    @property
    def _tile_tokens(self) -> int:
        """Patch tokens of one tile, ``g * g``: the only tile size the stock anyres packing accepts."""
        vision = self.model.config.vision_config
        return (vision.image_size // vision.patch_size) ** 2

    def _tiles_per_image(self, image_sizes: Any) -> list[int]:
        """Tiles (base tile included) of each image, computed exactly as ``get_image_features`` does."""
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        config = self.model.config
        return [
            image_size_to_num_patches(
                image_size=size,
                grid_pinpoints=config.image_grid_pinpoints,
                patch_size=config.vision_config.image_size,
            )
            for size in image_sizes
        ]

    def _pack(self, per_tile: list[Tensor], image_sizes: Any, strategy: str, newline: float) -> list[Tensor]:
        """One value per tile patch (``(tiles, g*g)`` per image) laid out like the packed features.

        Runs the model's ``pack_image_features`` on a one-channel tensor, with ``newline`` as the
        value of the newline tokens. Returns ``(N_i,)`` per image.
        """
        channel = [values.unsqueeze(-1) for values in per_tile]
        return [values[:, 0] for values in self._pack_vectors(channel, image_sizes, strategy, newline)]

    def _pack_vectors(self, per_tile: list[Tensor], image_sizes: Any, strategy: str, newline: float) -> list[Tensor]:
        """``(tiles, g*g, C)`` per image laid out like the packed features: ``(N_i, C)``, newlines all ``newline``."""
        marker = per_tile[0].new_full((per_tile[0].shape[-1],), newline)
        packed, _ = self.model.model.pack_image_features(
            per_tile, image_sizes, vision_feature_select_strategy=strategy, image_newline=marker
        )
        return list(packed)

    def image_token_counts(self, inputs: Mapping[str, Any]) -> list[int] | None:
        """Per image, its packed tokens (tiles and newlines), as :meth:`protected_tokens` lays them out."""
        return ModelAdapter.image_token_counts(self, inputs)

    def protected_tokens(self, inputs: Mapping[str, Any]) -> list[Tensor]:
        """Per image, an ``(N_i,)`` bool mask of its ``image_newline`` tokens, from ``image_sizes`` alone.

        No vision forward: the model's own packing is run on a marker (see the module docstring).
        """
        image_sizes = self._image_sizes(inputs)
        device = inputs["pixel_values"].device
        grid = self._tile_tokens
        zeros = [torch.zeros((n, grid), dtype=torch.float32, device=device) for n in self._tiles_per_image(image_sizes)]
        return [marker == 1 for marker in self._pack(zeros, image_sizes, self._strategy(inputs), newline=1.0)]

    def _image_sizes(self, inputs: Mapping[str, Any]) -> Any:
        image_sizes = inputs.get("image_sizes")
        if image_sizes is None:
            raise InputError(
                f"{self.name}: anyres images need image_sizes (one (height, width) per image, as the processor returns)"
            )
        return image_sizes

    def _strategy(self, inputs: Mapping[str, Any]) -> str:
        return inputs.get("vision_feature_select_strategy") or self.model.config.vision_feature_select_strategy

    def encode_images(
        self, inputs: Mapping[str, Any], *, scores: str | None = None, merge: bool = False
    ) -> ImageTokens:
        image_sizes = self._image_sizes(inputs)
        attention = self._vision_inputs(inputs, scores=scores, merge=merge)
        projector = self.model.model.multi_modal_projector
        with maybe_capture(attention) as seen, maybe_capture(projector if merge else None) as raw:
            out = self.model.model.get_image_features(
                pixel_values=inputs["pixel_values"],
                image_sizes=image_sizes,
                vision_feature_layer=inputs.get("vision_feature_layer"),
                vision_feature_select_strategy=inputs.get("vision_feature_select_strategy"),
                return_dict=True,
            )
        features = list(out.pooler_output)
        protected = self.protected_tokens(inputs)
        lengths = [int(mask.shape[0]) for mask in protected]
        if lengths != [int(f.shape[0]) for f in features]:
            raise TokenPruneError(
                f"{self.name}: packing the tile layout gave {lengths} tokens per image but the model gave "
                f"{[int(f.shape[0]) for f in features]}; this transformers version packs LLaVA-NeXT images differently"
            )
        images = ImageTokens(features=features, protected=protected)
        if attention is None:
            return images

        tiles, grid, strategy = self._tiles_per_image(image_sizes), self._tile_tokens, self._strategy(inputs)
        hidden = torch.cat(seen)  # every tile's input to the feature layer's attention, in order
        if scores:
            per_tile = cls_attention(attention, hidden).to(features[0].device)  # (all tiles, g*g), in order
            if per_tile.shape != (sum(tiles), grid):
                raise TokenPruneError(
                    f"{self.name}: the vision tower saw {tuple(per_tile.shape)} (tiles, patches); expected "
                    f"({sum(tiles)}, {grid})"
                )
            images.scores = self._pack(list(torch.split(per_tile, tiles)), image_sizes, strategy, newline=0.0)
        if merge:  # the projector's input and the keys, per tile, packed as the features are (newlines 0)
            for name, per_tile in (("raw", raw[-1]), ("metric", mean_keys(attention, hidden))):
                setattr(
                    images, name, self._pack_vectors(list(torch.split(per_tile, tiles)), image_sizes, strategy, 0.0)
                )
        return images

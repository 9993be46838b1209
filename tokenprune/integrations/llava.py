"""LLaVA-1.5 (``LlavaForConditionalGeneration``): one CLIP image -> 576 projected tokens, 1-D RoPE.

Kept tokens are fed to the language model as a shorter sequence (text + K visual tokens) with
contiguous positions, exactly as if the image had K tokens: the same inputs the reference
implementations of DivPrune and ZSPAPrune give the LM.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tokenprune.integrations.base import ImageTokens, ModelAdapter

__all__ = ["LlavaAdapter"]


class LlavaAdapter(ModelAdapter):
    image_kwargs = ("pixel_values", "image_sizes", "vision_feature_layer", "vision_feature_select_strategy")

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    def encode_images(self, inputs: Mapping[str, Any], *, need_scores: bool = False) -> ImageTokens:
        out = self.model.model.get_image_features(
            pixel_values=inputs["pixel_values"],
            vision_feature_layer=inputs.get("vision_feature_layer"),
            vision_feature_select_strategy=inputs.get("vision_feature_select_strategy"),
            image_sizes=inputs.get("image_sizes"),
            return_dict=True,
        )
        return ImageTokens(features=list(out.pooler_output))

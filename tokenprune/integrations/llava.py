"""LLaVA-1.5 (``LlavaForConditionalGeneration``): one CLIP image -> 576 projected tokens, 1-D RoPE.

Kept tokens are fed to the language model as a shorter sequence (text + K visual tokens) with
contiguous positions by default, exactly as if the image had K tokens: the same inputs the reference
implementations of DivPrune and ZSPAPrune give the LM. ``positions="original"`` keeps each token at
its full-sequence position instead (:meth:`~tokenprune.integrations.ModelAdapter.original_positions`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from torch import nn

from tokenprune.integrations.attention import capture_input, cls_attention
from tokenprune.integrations.base import ImageTokens, ModelAdapter

__all__ = ["LlavaAdapter"]


class LlavaAdapter(ModelAdapter):
    image_kwargs = ("pixel_values", "image_sizes", "vision_feature_layer", "vision_feature_select_strategy")

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    def _feature_attention(self, inputs: Mapping[str, Any]) -> nn.Module:
        """The attention module of the vision layer whose output is the selected feature layer."""
        config = self.model.config
        layer = inputs.get("vision_feature_layer", config.vision_feature_layer)
        strategy = inputs.get("vision_feature_select_strategy", config.vision_feature_select_strategy)
        if not isinstance(layer, int) or strategy != "default":
            raise self.unsupported_scores(
                f"cls_attention with vision_feature_layer={layer!r} and select strategy {strategy!r} "
                f"(needs one layer and the 'default' strategy, which drops CLS)"
            )
        layers = next(m for name, m in self.model.model.vision_tower.named_modules() if name.endswith("layers"))
        index = layer % (len(layers) + 1) - 1  # hidden_states[i] is the output of layer i - 1
        return layers[index].self_attn

    def encode_images(self, inputs: Mapping[str, Any], *, scores: str | None = None) -> ImageTokens:
        if scores not in (None, "cls_attention"):
            raise self.unsupported_scores(scores)
        attention = self._feature_attention(inputs) if scores else None
        with capture_input(attention) if attention is not None else contextlib.nullcontext([]) as seen:
            out = self.model.model.get_image_features(
                pixel_values=inputs["pixel_values"],
                vision_feature_layer=inputs.get("vision_feature_layer"),
                vision_feature_select_strategy=inputs.get("vision_feature_select_strategy"),
                image_sizes=inputs.get("image_sizes"),
                return_dict=True,
            )
        features = list(out.pooler_output)
        if attention is None:
            return ImageTokens(features=features)
        return ImageTokens(features=features, scores=list(cls_attention(attention, seen[-1])))

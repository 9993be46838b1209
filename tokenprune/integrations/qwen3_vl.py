"""Qwen3-VL (``Qwen3VLForConditionalGeneration``): Qwen2.5-VL's layout plus DeepStack features and framed videos.

Images and videos become ``t * h * w / 4`` visual tokens, placed by 3-D M-RoPE as in
:mod:`tokenprune.integrations.qwen2_5_vl`: kept tokens keep their original positions. Two differences:

* **DeepStack.** The vision encoder also gives, for a few of its layers, one more feature per visual
  token, which the language model adds to that token's hidden state after its first layers. A kept
  token keeps its DeepStack features and a dropped token's are dropped with it
  (:attr:`~tokenprune.integrations.base.ImageTokens.per_token`), so the language model sees exactly the
  model's own features at the kept tokens.
* **Videos in frames.** The processor writes each temporal patch of a video as its own ``<vision_start>
  ... <vision_end>`` run after a timestamp. A video is still one visual input: one budget over all its
  frames' tokens, its placeholders spread over several runs.

The vision encoder has no [CLS] token and each token's DeepStack features belong to it alone, so
``fastervlm`` and ``visionzip`` (which merges tokens) are refused with a clear error. FastV prunes only
after the layers DeepStack adds to (the released models: ``layer >= 3``; its default ``layer=2`` is refused).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from tokenprune.errors import TokenPruneError
from tokenprune.integrations.base import ImageTokens
from tokenprune.integrations.qwen2_5_vl import Qwen2_5_VLAdapter, _grid

__all__ = ["Qwen3VLAdapter"]


class Qwen3VLAdapter(Qwen2_5_VLAdapter):
    merging = False  # a merged token would need merged DeepStack features too

    @property
    def first_prunable_layer(self) -> int:
        """DeepStack adds its features after each of the LM's first ``len(deepstack_visual_indexes)`` layers, at
        every visual token: FastV may prune only after them."""
        return len(self.model.config.vision_config.deepstack_visual_indexes)

    def image_token_counts(self, inputs: Mapping[str, Any]) -> list[int] | None:
        """Per image and video, its placeholders (a video's frames are apart, so runs do not tell them)."""
        return self.lengths_in_placeholder_order(inputs)

    def encode_images(
        self, inputs: Mapping[str, Any], *, scores: str | None = None, merge: bool = False
    ) -> ImageTokens:
        if scores is not None:
            raise self.unsupported_scores(scores)
        model = self.model.model
        encoded: dict[str, tuple[list[Tensor], list[Tensor]]] = {}
        for kind, pixels, grid_name, encoder in (
            ("image", "pixel_values", "image_grid_thw", model.get_image_features),
            ("video", "pixel_values_videos", "video_grid_thw", model.get_video_features),
        ):
            if inputs.get(pixels) is None:
                continue
            out = encoder(inputs[pixels], _grid(self.name, inputs, pixels, grid_name), return_dict=True)
            # per input, its DeepStack features of every layer side by side: (N_i, layers, D)
            deep = [torch.stack(layers, dim=1) for layers in zip(*out.deepstack_features, strict=True)]
            encoded[kind] = (list(out.pooler_output), deep)
        if not encoded:
            raise self.nothing_to_prune()
        pairs = {kind: list(zip(features, deep, strict=True)) for kind, (features, deep) in encoded.items()}
        features, deep = zip(*self.in_placeholder_order(inputs, pairs), strict=True)
        return ImageTokens(features=list(features), per_token={"deepstack": list(deep)})

    def encoder_output(self, kind: str, features: list[Tensor], per_token: dict[str, list[Tensor]] | None) -> Any:
        """The kept features with their DeepStack features, per layer one ``(K_i, D)`` tensor per input."""
        from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

        if not per_token:
            raise TokenPruneError(f"{self.name}: rebuild needs the kept tokens' DeepStack features (per_token)")
        deep = per_token["deepstack"]  # (K_i, layers, D) each
        return BaseModelOutputWithDeepstackFeatures(
            pooler_output=features,
            deepstack_features=[[d[:, layer] for d in deep] for layer in range(deep[0].shape[1])],
        )

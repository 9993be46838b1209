"""LLaVA-1.5 (``LlavaForConditionalGeneration``): one CLIP image -> 576 projected tokens, 1-D RoPE.

Kept tokens are fed to the language model as a shorter sequence (text + K visual tokens) with
contiguous positions by default, exactly as if the image had K tokens: the same inputs the reference
implementations of DivPrune and ZSPAPrune give the LM. ``positions="original"`` keeps each token at
its full-sequence position instead (:meth:`~tokenprune.integrations.ModelAdapter.original_positions`).

Merging methods (``visionzip``): ``encode_images(merge=True)`` also gives each token's vision
feature before the projector (the projector's own input, captured) and the feature layer's keys
averaged over heads (recomputed from that layer's input, as the CLS attention is). A merged feature
goes through the model's projector, token by token (:meth:`LlavaAdapter.project`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from tokenprune.integrations.attention import cls_attention, maybe_capture, mean_keys
from tokenprune.integrations.base import ImageTokens, ModelAdapter, tokens_around

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
        if not self._cls:
            raise self.unsupported_scores("cls_attention")
        if not isinstance(layer, int) or strategy != "default":
            raise self.unsupported_scores(
                f"cls_attention with vision_feature_layer={layer!r} and select strategy {strategy!r} "
                f"(needs one layer and the 'default' strategy, which drops CLS)"
            )
        layers = next(m for name, m in self.model.model.vision_tower.named_modules() if name.endswith("layers"))
        index = layer % (len(layers) + 1) - 1  # hidden_states[i] is the output of layer i - 1
        return layers[index].self_attn

    @property
    def _cls(self) -> bool:
        """Whether the vision tower puts a [CLS] token first (CLIP's class embedding; SigLIP and Pixtral towers,
        which LLaVA checkpoints also use, have none)."""
        if "_has_cls" not in self.__dict__:
            tower = self.model.model.vision_tower
            self._has_cls = any(name.endswith("class_embedding") for name, _ in tower.named_parameters())
        return self._has_cls

    @property
    def merging(self) -> bool:  # type: ignore[override]
        return self._cls  # the merge metric is the keys of the patches after the CLS token

    @property
    def score_sources(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"cls_attention"}) if self._cls else frozenset()

    @property
    def no_cls_attention(self) -> str | None:  # type: ignore[override]
        if self._cls:
            return None
        kind = getattr(self.model.config.vision_config, "model_type", "")
        name = {"pixtral": "Pixtral", "siglip_vision_model": "SigLIP", "siglip2_vision_model": "SigLIP 2"}.get(kind)
        return f"the {name or kind or 'vision'} vision encoder has no CLS token"

    @property
    def _pixtral(self) -> bool:
        """A Pixtral vision tower (Pixtral-12B as a LLaVA): each image at its own size, one token per patch, written
        row by row with ``[IMG_BREAK]`` after each row and ``[IMG_END]`` last; no [CLS] token."""
        return getattr(self.model.config.vision_config, "model_type", None) == "pixtral"

    def frame_tokens(self, input_ids: Tensor, placeholders: Tensor) -> Tensor | None:
        return tokens_around(placeholders, before=0, after=1) if self._pixtral else None  # the row breaks

    def image_token_counts(self, inputs: Mapping[str, Any]) -> list[int] | None:
        """One count per image in ``pixel_values`` ``(n, 3, H, W)``: its patches, plus the [CLS] token with the
        ``full`` feature strategy (from the tensor's shape: nothing is read from the device). A Pixtral tower:
        the patches of each image's own size (``image_sizes``)."""
        if self._pixtral:
            sizes = inputs.get("image_sizes")
            if not isinstance(sizes, Tensor) or sizes.dim() != 2:
                return None
            patch = self.model.config.vision_config.patch_size
            return [(height // patch) * (width // patch) for height, width in sizes.tolist()]
        pixels = inputs.get("pixel_values")
        if not isinstance(pixels, Tensor) or pixels.dim() != 4:
            return None
        patch = self.model.config.vision_config.patch_size
        strategy = inputs.get("vision_feature_select_strategy") or self.model.config.vision_feature_select_strategy
        count = (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch) + (strategy == "full" and self._cls)
        return [count] * pixels.shape[0]

    def project(self, raw: Tensor) -> Tensor:
        return self.model.model.multi_modal_projector(raw)

    def _vision_inputs(self, inputs: Mapping[str, Any], *, scores: str | None, merge: bool) -> nn.Module | None:
        """Check what is asked; the feature layer's attention module when scores or a merge need it."""
        if scores not in (None, "cls_attention"):
            raise self.unsupported_scores(scores)
        return self._feature_attention(inputs) if scores or merge else None

    def encode_images(
        self, inputs: Mapping[str, Any], *, scores: str | None = None, merge: bool = False
    ) -> ImageTokens:
        attention = self._vision_inputs(inputs, scores=scores, merge=merge)
        projector = self.model.model.multi_modal_projector
        with maybe_capture(attention) as seen, maybe_capture(projector if merge else None) as raw:
            out = self.model.model.get_image_features(
                pixel_values=inputs["pixel_values"],
                vision_feature_layer=inputs.get("vision_feature_layer"),
                vision_feature_select_strategy=inputs.get("vision_feature_select_strategy"),
                image_sizes=inputs.get("image_sizes"),
                return_dict=True,
            )
        features = list(out.pooler_output)
        images = ImageTokens(features=features)
        if scores:
            images.scores = list(cls_attention(attention, seen[-1]))
        if merge:
            sizes = [f.shape[0] for f in features]
            images.raw = list(torch.split(raw[-1].reshape(-1, raw[-1].shape[-1]), sizes))
            images.metric = list(torch.split(mean_keys(attention, seen[-1]).flatten(0, 1), sizes))
        return images

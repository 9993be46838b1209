"""GLM-4.1V and GLM-4.5V (``Glm4vForConditionalGeneration``): dynamic-resolution images, 3-D multimodal RoPE.

As in Qwen2-VL (:mod:`tokenprune.integrations.qwen2_5_vl`), an image of patch grid ``(t, h, w)`` becomes
``t * h * w / 4`` visual tokens after the 2x2 merge, in raster order, and the language model places them by
M-RoPE on their grid coordinates: kept tokens keep their original 3-D positions, the text after them and the
generated tokens too. What differs:

* the processor writes a video's frames with the *image* placeholder (between ``<|begin_of_image|>`` and
  ``<|end_of_image|>``, a timestamp after each frame), and only ``mm_token_type_ids`` (1 image, 2 video) tells
  a video's placeholders from an image's, so the call must carry them (the processor returns them);
* the model's ``forward`` finds the placeholders of both kinds by the one id, so a call holding images and
  videos together does not run in transformers either: it is refused, with that reason;
* each frame of a video advances the text position by its own grid (``get_rope_index`` of the model gives the
  positions, which the kept tokens keep);
* the kept tokens of a video reach the model as ``mm_encoder_outputs["image"]``: behind the image placeholder
  the model's ``forward`` reads them as an image's, and ``generate`` copies them per row for beam search by that
  placeholder (under ``"video"`` it would look for the config's unused video placeholder and find none).

A video is one visual input over all its frames, under one budget. The encoder has no [CLS] token and its
merger folds patches through a convolution, so ``fastervlm`` and ``visionzip`` are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from tokenprune.errors import InputError
from tokenprune.integrations.base import ImageTokens, PrunedSequence
from tokenprune.integrations.qwen2_vl import Qwen2VLAdapter

__all__ = ["Glm4vAdapter"]


class Glm4vAdapter(Qwen2VLAdapter):
    merging = False  # the merger folds patches through a convolution: no per-token raw feature to merge
    marker_token_attrs = ("image_start_token_id", "image_end_token_id", "video_start_token_id", "video_end_token_id")
    no_cls_attention = "the vision encoder has no CLS token"

    @property
    def video_token_id(self) -> int:
        """A video's frames are written with the image placeholder (``mm_token_type_ids`` 2 tells them)."""
        return self.image_token_id

    @property
    def placeholder_ids(self) -> tuple[int, ...]:
        return (self.image_token_id,)

    def _types(self, inputs: Mapping[str, Any]) -> Tensor:
        types = inputs.get("mm_token_type_ids")
        ids = inputs.get("input_ids")
        if not isinstance(types, Tensor) or not isinstance(ids, Tensor) or types.shape != ids.shape:
            got = tuple(types.shape) if isinstance(types, Tensor) else type(types).__name__
            raise InputError(
                f"{self.name}: pruning needs mm_token_type_ids shaped like input_ids (1 at image placeholders, 2 at "
                f"a video's), as the processor returns them: the model writes both with one placeholder; got {got}"
            )
        return types

    def _placeholder_kinds(self, inputs: Mapping[str, Any]) -> list[str]:
        raise InputError(
            f"{self.name}: a call with both images and videos does not run in transformers' GLM-4V (its forward "
            f"finds both kinds' placeholders by the one image id); pass images and videos in separate calls"
        )

    def image_token_counts(self, inputs: Mapping[str, Any]) -> list[int] | None:
        """Per image or video, its placeholders (a video's frames are apart, so runs do not tell them; a call with
        both kinds is refused by :meth:`_placeholder_kinds`)."""
        return self.lengths_in_placeholder_order(inputs)

    def encode_images(
        self, inputs: Mapping[str, Any], *, scores: str | None = None, merge: bool = False
    ) -> ImageTokens:
        self._types(inputs)
        return super().encode_images(inputs, scores=scores, merge=merge)

    def rebuild(
        self,
        inputs: Mapping[str, Any],
        pruned: PrunedSequence,
        features: list[Tensor],
        per_token: dict[str, list[Tensor]] | None = None,
    ) -> dict[str, Any]:
        kwargs = super().rebuild(inputs, pruned, features, per_token)
        encoded = kwargs["mm_encoder_outputs"]
        if "video" in encoded:  # (a call of videos only) behind the image placeholder, the model reads them as images
            encoded["image"] = encoded.pop("video")  # and generate copies them per row by that placeholder
        return kwargs

    def rope_positions(self, inputs: Mapping[str, Any]) -> Tensor:
        if not isinstance(inputs.get("position_ids"), Tensor):
            self._types(inputs)
        return super().rope_positions(inputs)

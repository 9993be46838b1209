"""Gemma 3 (``Gemma3ForConditionalGeneration``): 256 tokens per image, attended bidirectionally, 1-D RoPE.

Each image (896 px in the released models) goes through SigLIP, whose patches are average-pooled 4 x 4
into 256 tokens and projected. Inside the language model an image's tokens attend to each other in
both directions (the processor's ``token_type_ids`` mark them), everything else causally. The pruned
call keeps that: ``token_type_ids`` are pruned with the sequence, so the kept tokens of an image still
form one block that attends both ways. Kept tokens take contiguous positions by default
(``positions="original"``: their full-sequence positions).

The blank lines the processor writes around each image are never prompt text (:meth:`Gemma3Adapter.frame_tokens`).

SigLIP has no [CLS] token and each token pools 16 patches, so ``fastervlm`` and ``visionzip`` are
refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor

from tokenprune.errors import InputError
from tokenprune.integrations.base import ImageTokens, ModelAdapter, PrunedSequence, pixel_batch, tokens_around

__all__ = ["Gemma3Adapter"]


class Gemma3Adapter(ModelAdapter):
    image_kwargs = ("pixel_values",)
    score_sources = frozenset()
    merging = False
    one_tensor: ClassVar[Mapping[str, bool]] = {
        "image": True
    }  # forward reads the kept image tokens as one (1, T, D) tensor
    no_cls_attention = "the SigLIP vision encoder has no CLS token"
    marker_token_attrs = ("boi_token_id", "eoi_token_id", "boi_token_index", "eoi_token_index")

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    def frame_tokens(self, input_ids: Tensor, placeholders: Tensor) -> Tensor:
        # the processor writes each image as "\n\n<start_of_image>" + placeholders + "<end_of_image>\n\n"
        return tokens_around(placeholders, before=2, after=2)

    def encode_images(self, inputs: Mapping[str, Any], *, scores: str | None = None, **options: Any) -> ImageTokens:
        if scores is not None:
            raise self.unsupported_scores(scores)
        pixels = pixel_batch(self.name, inputs, "(images, 3, H, W)")
        out = self.model.model.get_image_features(pixels, return_dict=True)
        return ImageTokens(features=list(out.pooler_output))  # (tokens per image, D) each

    def rebuild(
        self,
        inputs: Mapping[str, Any],
        pruned: PrunedSequence,
        features: list[Tensor],
        per_token: dict[str, list[Tensor]] | None = None,
    ) -> dict[str, Any]:
        kwargs = super().rebuild(inputs, pruned, features, per_token)
        types = inputs.get("token_type_ids")
        if isinstance(types, Tensor):  # the bidirectional blocks, over the kept tokens
            if types.shape != pruned.keep.shape:
                raise InputError(
                    f"{self.name}: token_type_ids must be (B, L) like input_ids {tuple(pruned.keep.shape)}; "
                    f"got {tuple(types.shape)}"
                )
            kwargs["token_type_ids"] = pruned.take(types, fill=0)
        return kwargs

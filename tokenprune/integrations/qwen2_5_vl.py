"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): dynamic-resolution images, 3-D multimodal RoPE.

Each image of patch grid ``(t, h, w)`` becomes ``t * h * w / 4`` visual tokens after the 2x2 patch
merger, in raster order; the number varies from image to image. The language model places tokens
by M-RoPE: text tokens on one running position, visual tokens on their (temporal, height, width)
grid coordinates, after which text continues from the largest position + 1.

Kept tokens are fed to the language model as a shorter sequence (text + K visual tokens per
image), each keeping the 3-D position it had in the full sequence: a kept patch stays where it was
in the image, and the text after the image and the generated tokens keep their original positions
too. ``generate`` and ``forward`` are given these positions as ``position_ids`` of shape
``(4, B, L')``, the layout stock ``generate`` builds itself: row 0 the contiguous text positions of
the short sequence (used for the attention mask), rows 1-3 the M-RoPE positions.

Videos are pruned like images: each video is one visual input of ``t * h * w / 4`` tokens (``t`` its
temporal patches), selected among all its frames at once under one budget, and each kept token keeps
its (time, height, width) position (the time scaled by ``second_per_grid_ts`` as the model does). A
prompt may hold images and videos together; each is pruned on its own.

Merging methods: the raw feature of a visual token is the patch merger's MLP input (its four patches,
normed and side by side), captured and put back in raster order (the encoder computes it in its
attention-window order); :meth:`Qwen2_5_VLAdapter.project` is that MLP. The encoder has no [CLS] token
and its attention is windowed, so the merge metric is the raw feature itself. ``visionzip`` still needs
[CLS] attention: a clear error; a merging composition that scores otherwise runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from tokenprune.errors import InputError
from tokenprune.integrations.attention import maybe_capture
from tokenprune.integrations.base import (
    ImageTokens,
    ModelAdapter,
    PrunedSequence,
    VideoPlaceholders,
)

__all__ = ["Qwen2_5_VLAdapter"]

_VIDEO_KWARGS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


class Qwen2_5_VLAdapter(VideoPlaceholders, ModelAdapter):
    image_kwargs = ("pixel_values", "image_grid_thw", *_VIDEO_KWARGS, "mm_token_type_ids", "position_ids")
    # M-RoPE positions are the image grid's: a kept patch stays where it was, and renumbering has no meaning
    position_modes = ("original",)

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    def visual_count(self, inputs: Mapping[str, Any], kind: str) -> int:
        """The rows of the grid: nothing is read from the device."""
        pixels, name = (
            ("pixel_values", "image_grid_thw") if kind == "image" else ("pixel_values_videos", "video_grid_thw")
        )
        return _grid(self.name, inputs, pixels, name).shape[0]

    def visual_lengths(self, inputs: Mapping[str, Any], kind: str) -> list[int]:
        """``t * h * w / 4`` per image (video), from its grid (one read of it, on the device it is on)."""
        pixels, name = (
            ("pixel_values", "image_grid_thw") if kind == "image" else ("pixel_values_videos", "video_grid_thw")
        )
        merge = self.model.model.visual.spatial_merge_size**2
        return [int(n) // merge for n in _grid(self.name, inputs, pixels, name).prod(-1).tolist()]

    score_sources = frozenset()
    no_cls_attention = "the vision encoder has no CLS token"
    marker_token_attrs = ("vision_start_token_id", "vision_end_token_id", "video_token_id", "vision_token_id")

    @property
    def merging(self) -> bool:
        """Whether this transformers version exposes the encoder's window order (``vision_utils``), which a
        merge needs to put the merger's input back in raster order."""
        return _window_index_function() is not None

    def project(self, raw: Tensor) -> Tensor:
        return self.model.model.visual.merger.mlp(raw)

    def _raster_order(self, grid: Tensor) -> Tensor:
        """``(N,)``: for each visual token in raster order, its row in the encoder's window order."""
        visual = self.model.model.visual
        window, _ = _window_index_function()(
            grid, spatial_merge_size=visual.spatial_merge_size, window_size=visual.window_size,
            patch_size=visual.patch_size,
        )  # fmt: skip
        return torch.argsort(window.to(grid.device))

    def encode_images(
        self, inputs: Mapping[str, Any], *, scores: str | None = None, merge: bool = False
    ) -> ImageTokens:
        if scores is not None:
            raise self.unsupported_scores(scores)
        encoded: dict[str, tuple[list[Tensor], list[Tensor] | None]] = {}
        for kind, pixels, grid_name in (
            ("image", "pixel_values", "image_grid_thw"),
            ("video", "pixel_values_videos", "video_grid_thw"),
        ):
            if inputs.get(pixels) is not None:
                encoded[kind] = self._encode(kind, inputs[pixels], _grid(self.name, inputs, pixels, grid_name), merge)
        if not encoded:
            raise self.nothing_to_prune()
        pairs = {
            kind: list(zip(features, raw or [None] * len(features), strict=True))
            for kind, (features, raw) in encoded.items()
        }
        features, raw = zip(*self.in_placeholder_order(inputs, pairs), strict=True)
        images = ImageTokens(features=list(features))
        if merge:
            images.raw = images.metric = list(raw)
        return images

    def _encode(self, kind: str, pixels: Tensor, grid: Tensor, merge: bool) -> tuple[list[Tensor], list[Tensor] | None]:
        """One modality's projected tokens per input, and with ``merge`` the merger's inputs in raster order."""
        model = self.model.model
        encoder = model.get_image_features if kind == "image" else model.get_video_features
        with maybe_capture(model.visual.merger.mlp if merge else None) as seen:
            features = list(encoder(pixels, grid, return_dict=True).pooler_output)
        if not merge:
            return features, None
        raw = seen[-1][self._raster_order(grid)]
        return features, list(torch.split(raw, [f.shape[0] for f in features]))

    def rope_positions(self, inputs: Mapping[str, Any]) -> Tensor:
        """``(3, B, L)`` M-RoPE positions of the unpruned sequence, as stock ``generate``/``forward`` would use."""
        given = inputs.get("position_ids")
        if isinstance(given, Tensor):
            if given.dim() == 3 and given.shape[0] in (3, 4):
                return given[-3:]
            if given.dim() == 2:
                return given.unsqueeze(0).expand(3, -1, -1)
            raise InputError(
                f"{self.name}: position_ids must be (B, L), (3, B, L) or (4, B, L); got {tuple(given.shape)}"
            )
        input_ids = inputs["input_ids"]
        types = inputs.get("mm_token_type_ids")
        if types is None:  # older processors: derive the token types from the placeholders
            config = self.model.config
            types = (input_ids == config.image_token_id).long() + 2 * (input_ids == config.video_token_id).long()
        positions, _ = self.model.model.get_rope_index(
            input_ids,
            types,
            image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"),
            second_per_grid_ts=inputs.get("second_per_grid_ts"),
            attention_mask=inputs.get("attention_mask"),
        )
        return positions

    def rebuild(
        self,
        inputs: Mapping[str, Any],
        pruned: PrunedSequence,
        features: list[Tensor],
        per_token: dict[str, list[Tensor]] | None = None,
    ) -> dict[str, Any]:
        kwargs = super().rebuild(inputs, pruned, features, per_token)
        rope = pruned.take(self.rope_positions(inputs), fill=0, dim=2)  # each kept token keeps its 3-D position
        mask = pruned.attention_mask
        text = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # contiguous, as stock generate builds row 0
        kwargs["position_ids"] = torch.cat([text.unsqueeze(0), rope.to(text.dtype)], dim=0)
        # what stock forward records for decoding without position_ids: original largest position + 1 - length
        self.model.model.rope_deltas = (rope.amax(dim=(0, 2)) + 1 - mask.sum(-1)).unsqueeze(1)
        return kwargs


def _grid(adapter: str, inputs: Mapping[str, Any], pixels: str, name: str) -> Tensor:
    """The ``(n, 3)`` patch grids that must come with ``pixels``, or a clear error."""
    grid = inputs.get(name)
    if not isinstance(grid, Tensor) or grid.dim() != 2 or grid.shape[-1] != 3:
        got = tuple(grid.shape) if isinstance(grid, Tensor) else type(grid).__name__
        raise InputError(f"{adapter}: {pixels} need {name} of shape (n, 3), one (t, h, w) row each; got {got}")
    return grid


def _window_index_function() -> Any:
    """transformers' ``get_vision_window_index`` (the Qwen2.5-VL encoder's window order), or None where absent."""
    try:
        from transformers.vision_utils import get_vision_window_index
    except ImportError:
        return None
    return get_vision_window_index

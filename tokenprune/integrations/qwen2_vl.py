"""Qwen2-VL (``Qwen2VLForConditionalGeneration``): Qwen2.5-VL's predecessor, pruned the same way.

Images and videos of patch grid ``(t, h, w)`` become ``t * h * w / 4`` visual tokens after the 2x2
patch merger, placed by the same 3-D M-RoPE; everything in :mod:`tokenprune.integrations.qwen2_5_vl`
holds here (kept tokens keep their original positions, videos are pruned across their frames). Two
differences from Qwen2.5-VL: the vision encoder attends over the whole image, not in windows, so the
patch merger's inputs are already in raster order (merging methods need no reordering), and a video's
temporal positions are its temporal patch indices (there is no ``second_per_grid_ts``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokenprune.integrations.qwen2_5_vl import Qwen2_5_VLAdapter

__all__ = ["Qwen2VLAdapter"]


class Qwen2VLAdapter(Qwen2_5_VLAdapter):
    merging = True  # the merger's input rows are the tokens in raster order

    def _raster_order(self, grid: Tensor) -> Tensor:
        merge = self.model.model.visual.spatial_merge_size**2
        return torch.arange(int(grid.prod(-1).sum()) // merge, device=grid.device)

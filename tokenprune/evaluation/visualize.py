"""Which visual tokens each method keeps, drawn over the image: the ZSPAPrune paper's Figure 1.

Three steps, each usable on its own:

1. :func:`kept_tokens` runs the model's prefill once per method inside :func:`tokenprune.apply` and
   reads each method's kept indices from ``session.last.kept`` — exactly what pruning keeps.
2. :func:`token_layout` says which box of the *original* image each visual token covers, undoing the
   processor's geometry:

   * **LLaVA-1.5**: the ``g x g`` CLIP patch grid of the processed image (``g = image_size / patch_size``,
     24 for LLaVA-1.5-336), mapped back through the processor's pad-to-square (``LlavaImageProcessor``
     with ``do_pad``), shortest-edge resize and centre crop. Parts of the image the crop cut away were
     never seen by the model and are hatched in the figure. With ``vision_feature_select_strategy="full"``
     the CLS token, which covers no region, is not drawn.
   * **LLaVA-NeXT**: two views, drawn as two rows of panels: the *base tile* (the whole image squashed
     to one ``g x g`` tile) and the *anyres tiles* (the image resized into the best grid pinpoint,
     padded, cut into tiles, and unpadded by the model). Token order and unpadding come from running
     the model's own ``pack_image_features`` on coordinate markers, so they are exact by construction.
     ``image_newline`` tokens cover no region, are always kept and sit outside the budget: they are not
     drawn and not counted.
   * **LLaVA-OneVision**: as LLaVA-NeXT; an anyres grid that the model shrinks (bilinear, past
     ``anyres_max_N`` tiles' worth) is drawn shrunk: the markers come out of the packing as each token's
     centre, and each token covers the cells it averages.
   * **Qwen2.5-VL** (Qwen2-VL, Qwen3-VL): merged ``spatial_merge_size x spatial_merge_size`` patches on the
     ``image_grid_thw`` grid, in raster order; the processor resizes the whole image (no crop), so the grid
     tiles the image.
   * **Mistral 3** (Pixtral): merged ``2 x 2`` patches on the grid ``image_sizes`` gives, in raster order; the
     processor resizes the whole image (aspect kept, no crop). Pixtral-12B as a LLaVA: the same, a token per patch.
   * **Gemma 3**: the whole image resized to a square, its patches average-pooled into a ``16 x 16`` grid in
     raster order (with pan and scan, the crops are visual inputs of their own, after the whole image).
   * **Idefics3** (SmolVLM): two views, the *global tile* (the whole image squashed to one tile) and the
     *tiles* (the image stretched onto a grid of tiles, whose rows and columns the processor's
     ``<row_i_col_j>`` tags give). A tile's token order comes from running the model's own pixel shuffle on
     patch coordinate markers.
   * **InternVL**: the same two views, the *thumbnail* and the *tiles*, whose grid the processor's own rule
     (``get_optimal_tiled_canvas``) picks from the image's aspect ratio and its settings.

3. :func:`render_kept` draws the figure from an image, a layout and the kept indices alone (no model):
   one panel per method (and per view), kept tokens at full brightness with an outline in the method's
   colour, pruned tokens greyed and dimmed.

:func:`show_tokens` chains the three for one image and question; ``tokenprune show`` is its command line.

>>> from PIL import Image
>>> image = Image.new("RGB", (64, 48), (200, 120, 40))
>>> layout = grid_layout(image.size, rows=3, cols=4)
>>> figure = render_kept(image, layout, [KeptTokens("stride", [0, 5, 10], num_tokens=12)], panel_size=None)
>>> figure.mode, figure.width > 64, figure.height > 48
('RGB', True, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from tokenprune.budget import Budget
from tokenprune.errors import InputError, TokenPruneError

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = [
    "COLOURS",
    "KeptTokens",
    "ShowResult",
    "TokenLayout",
    "TokenView",
    "UnsupportedLayoutError",
    "build_inputs",
    "grid_boxes",
    "grid_layout",
    "kept_tokens",
    "method_label",
    "render_kept",
    "show_tokens",
    "token_layout",
]

COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 127, 14),  # orange
    (31, 160, 255),  # blue
    (44, 200, 44),  # green
    (230, 40, 120),  # magenta
    (148, 103, 189),  # purple
    (23, 190, 207),  # cyan
    (255, 210, 0),  # yellow
    (214, 39, 40),  # red
)
"""Outline colour of each method's panels, in order (repeats after eight methods)."""

_TINTS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
)  # fmt: skip
"""Tints of the groups of merged tokens, by the kept token they joined (cycled)."""

MethodChoice = str | tuple[str, Mapping[str, Any]]
"""A method name, or ``(name, params)`` such as ``("zspa", {"core_ratio": 0.5})``."""


class UnsupportedLayoutError(TokenPruneError, TypeError):
    """The model family's visual tokens cannot be mapped to image regions."""


# --- layouts: which image box each visual token covers -------------------------------------------------


@dataclass(frozen=True)
class TokenView:
    """A set of one image's visual tokens that together tile the image.

    Attributes:
        name: shown in panel titles when a layout has several views (``"base tile"``, ``"anyres tiles"``).
        indices: ``(V,)`` int64 positions of these tokens in the image's token order (the order of
            :attr:`tokenprune.PruneStats.kept`).
        boxes: ``(V, 4)`` float64 ``(x0, y0, x1, y1)`` of each token in original-image pixels, clipped to
            the image; a box of zero area covers only padding the processor added.
    """

    name: str
    indices: np.ndarray
    boxes: np.ndarray

    def __post_init__(self) -> None:
        indices = np.asarray(self.indices, dtype=np.int64).reshape(-1)
        boxes = np.asarray(self.boxes, dtype=np.float64)
        if boxes.shape != (indices.shape[0], 4):
            raise ValueError(f"view {self.name!r}: boxes must be ({indices.shape[0]}, 4); got {boxes.shape}")
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "boxes", boxes)


@dataclass(frozen=True)
class TokenLayout:
    """Where one image's visual tokens lie in the original image.

    Attributes:
        image_size: ``(width, height)`` of the original image, in pixels.
        num_tokens: the image's visual tokens in the LM sequence, those without a region included.
        views: token sets that each tile the image (one for LLaVA-1.5 and Qwen2.5-VL, two for LLaVA-NeXT).
        note: what the figure does not draw (e.g. LLaVA-NeXT's ``image_newline`` tokens), for its legend.
    """

    image_size: tuple[int, int]
    num_tokens: int
    views: tuple[TokenView, ...]
    note: str = ""

    @property
    def drawn(self) -> np.ndarray:
        """Sorted token indices that have a region in some view."""
        return np.unique(np.concatenate([view.indices for view in self.views]))

    def count(self, kept: np.ndarray, view: TokenView | None = None) -> tuple[int, int]:
        """``(K, N)``: kept tokens among those drawn (in ``view``, or in any view) and how many are drawn."""
        drawn = self.drawn if view is None else view.indices
        return int(np.isin(drawn, kept).sum()), int(drawn.shape[0])


def grid_boxes(rows: int, cols: int, width: float, height: float) -> np.ndarray:
    """``(rows * cols, 4)`` boxes of a uniform grid over a ``width x height`` image, in raster order.

    >>> grid_boxes(2, 2, 10, 6).tolist()
    [[0.0, 0.0, 5.0, 3.0], [5.0, 0.0, 10.0, 3.0], [0.0, 3.0, 5.0, 6.0], [5.0, 3.0, 10.0, 6.0]]
    """
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    r, c = r.reshape(-1).astype(np.float64), c.reshape(-1).astype(np.float64)
    sx, sy = width / cols, height / rows
    return np.stack([c * sx, r * sy, (c + 1) * sx, (r + 1) * sy], axis=1)


def grid_layout(image_size: tuple[int, int], rows: int, cols: int, *, name: str = "image") -> TokenLayout:
    """A layout of ``rows x cols`` tokens in raster order tiling the whole image (e.g. Qwen2.5-VL)."""
    width, height = image_size
    view = TokenView(name, np.arange(rows * cols), grid_boxes(rows, cols, width, height))
    return TokenLayout((int(width), int(height)), rows * cols, (view,))


def _field(size: Any, key: str) -> Any:
    """``size[key]`` for a dict or a transformers ``SizeDict``; None when absent."""
    return size.get(key) if isinstance(size, Mapping) else getattr(size, key, None)


@dataclass(frozen=True)
class _AxisMap:
    """``processed = original * scale + shift`` along one axis."""

    scale: float
    shift: float

    def inverse(self, x: np.ndarray) -> np.ndarray:
        return (x - self.shift) / self.scale


def _clip_geometry(image_processor: Any, height: int, width: int) -> tuple[_AxisMap, _AxisMap, tuple[int, int]]:
    """The CLIP-style processor's map from original to processed pixels: ``(x map, y map, (h, w) processed)``.

    Follows ``LlavaImageProcessor``/``CLIPImageProcessor``: optional pad to a square (LLaVA's ``do_pad``,
    the image centred), resize (``shortest_edge``: the short side to that size, the long side
    ``int(size * long / short)``; or ``height``/``width``), then centre crop (offset ``(size - crop) // 2``).
    """
    pad_x = pad_y = 0
    h, w = height, width
    if getattr(image_processor, "do_pad", False) and hasattr(image_processor, "pad_to_square"):
        side = max(h, w)
        pad_x, pad_y = (side - w) // 2, (side - h) // 2
        h = w = side
    new_h, new_w = h, w
    if getattr(image_processor, "do_resize", True):
        size = image_processor.size
        if _field(size, "height") and _field(size, "width"):
            new_h, new_w = int(_field(size, "height")), int(_field(size, "width"))
        elif _field(size, "shortest_edge") and not _field(size, "longest_edge"):
            edge = int(_field(size, "shortest_edge"))
            if w <= h:
                new_w, new_h = edge, int(edge * h / w)
            else:
                new_h, new_w = edge, int(edge * w / h)
        else:
            raise UnsupportedLayoutError(
                f"cannot map tokens to image regions for {type(image_processor).__name__} with size={size!r}; "
                f"expected size with shortest_edge, or height and width"
            )
    left = top = 0
    out_h, out_w = new_h, new_w
    if getattr(image_processor, "do_center_crop", False):
        crop = image_processor.crop_size
        out_h, out_w = int(_field(crop, "height")), int(_field(crop, "width"))
        top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    sx, sy = new_w / w, new_h / h
    return _AxisMap(sx, pad_x * sx - left), _AxisMap(sy, pad_y * sy - top), (out_h, out_w)


def _to_original(boxes: np.ndarray, x: _AxisMap, y: _AxisMap, width: int, height: int) -> np.ndarray:
    """Boxes in processed pixels -> original pixels, clipped to the image."""
    out = np.stack([x.inverse(boxes[:, 0]), y.inverse(boxes[:, 1]), x.inverse(boxes[:, 2]), y.inverse(boxes[:, 3])])
    out = out.T
    out[:, 0::2] = out[:, 0::2].clip(0, width)
    out[:, 1::2] = out[:, 1::2].clip(0, height)
    return out


def _llava_layout(model: Any, processor: Any, inputs: Mapping[str, Any], num_tokens: int, size: tuple[int, int]):
    width, height = size
    vision = model.config.vision_config
    patch = vision.patch_size
    processed = tuple(inputs["pixel_values"].shape[-2:])
    if processor is None:
        raise UnsupportedLayoutError("LLaVA-1.5 token regions need the processor (its resize and crop settings)")
    image_processor = getattr(processor, "image_processor", processor)
    x, y, expected = _clip_geometry(image_processor, height, width)
    if tuple(expected) != processed:
        raise UnsupportedLayoutError(
            f"the processor's settings give a {expected[0]}x{expected[1]} processed image but pixel_values are "
            f"{processed[0]}x{processed[1]}; cannot map tokens to image regions"
        )
    rows, cols = processed[0] // patch, processed[1] // patch
    extra = num_tokens - rows * cols  # 1 with vision_feature_select_strategy="full" (CLS first)
    if extra not in (0, 1):
        raise UnsupportedLayoutError(
            f"the image has {num_tokens} visual tokens; a {rows}x{cols} patch grid expects {rows * cols} "
            f"(or {rows * cols + 1} with CLS)"
        )
    boxes = grid_boxes(rows, cols, processed[1], processed[0])
    view = TokenView("image", np.arange(extra, num_tokens), _to_original(boxes, x, y, width, height))
    note = "the CLS token (it covers no image region)" if extra else ""
    return TokenLayout((width, height), num_tokens, (view,), note)


def _llava_next_layout(
    model: Any, inputs: Mapping[str, Any], num_tokens: int, size: tuple[int, int], *, onevision: bool = False
):
    from transformers.image_processing_utils import select_best_resolution
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    width, height = size
    config = model.config
    tile, patch = config.vision_config.image_size, config.vision_config.patch_size
    g = tile // patch
    image_size = [int(v) for v in inputs["image_sizes"][0]]  # (height, width), as the processor records it
    n_high, n_wide = get_anyres_image_grid_shape(image_size, config.image_grid_pinpoints, tile)
    # coordinate markers through the model's own packing: channels (row, col, kind); kind 0 base, 1 tiles
    r, c = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
    tiles = [torch.stack([r, c, torch.zeros_like(r)], -1).reshape(g * g, 3)]
    for t in range(n_high * n_wide):
        tr, tc = divmod(t, n_wide)
        tiles.append(torch.stack([r + tr * g, c + tc * g, torch.ones_like(r)], -1).reshape(g * g, 3))
    markers = torch.stack(tiles).float()
    newline = torch.tensor([-1.0, -1.0, -1.0])
    count = inputs.get("batch_num_images")
    if onevision and count is not None and int(count[0]) > 1:  # of a prompt with several images: its base tile
        markers = markers[:1]
    if onevision:  # grids past anyres_max_N tiles' worth are shrunk (bilinear): markers become cell centres - 0.5

        def pack(aspect: str) -> Tensor:
            sizes = inputs["image_sizes"][:1]
            return model.model.pack_image_features([markers], sizes, newline, vision_aspect_ratio=aspect)[0][0]

        packed = pack(config.vision_aspect_ratio).cpu()
        whole = pack(f"anyres_max_{n_high * n_wide}").cpu()  # never shrunk: one value per row and column
    else:
        strategy = inputs.get("vision_feature_select_strategy") or config.vision_feature_select_strategy
        packed = model.model.pack_image_features([markers], inputs["image_sizes"][:1], strategy, image_newline=newline)
        packed = whole = packed[0][0].cpu()
    if packed.shape[0] != num_tokens:
        raise UnsupportedLayoutError(
            f"packing the tile layout gave {packed.shape[0]} tokens but the image has {num_tokens}; "
            f"this transformers version packs LLaVA-NeXT images differently"
        )
    kind = packed[:, 2].round().long()
    base = (kind == 0).nonzero()[:, 0].numpy()
    cells = packed[base, :2].round().long().numpy()
    base_boxes = grid_boxes(g, g, width, height)[cells[:, 0] * g + cells[:, 1]]
    # the anyres canvas: the image resized into the best pinpoint (aspect kept, ceil), pasted centred
    best_h, best_w = select_best_resolution(image_size, config.image_grid_pinpoints)
    h0, w0 = image_size
    if best_w / w0 < best_h / h0:
        new_w, new_h = best_w, min(math.ceil(h0 * best_w / w0), best_h)
    else:
        new_h, new_w = best_h, min(math.ceil(w0 * best_h / h0), best_w)
    paste_x, paste_y = (best_w - new_w) // 2, (best_h - new_h) // 2
    cell = tile / g
    high = (kind == 1).nonzero()[:, 0].numpy()
    rows, cols = packed[high, 0].double().numpy() + 0.5, packed[high, 1].double().numpy() + 0.5  # cell centres
    # a cell's size in patches: the unpadded canvas's rows (columns) over the grid's, 1 where it is not shrunk
    canvas_tiles = whole[whole[:, 2].round() == 1]
    # (an image so thin that its unpadded grid keeps no row or column has no anyres tokens: no step to find)
    step_y = canvas_tiles[:, 0].unique().numel() / max(np.unique(rows.round(4)).shape[0], 1)
    step_x = canvas_tiles[:, 1].unique().numel() / max(np.unique(cols.round(4)).shape[0], 1)
    canvas = np.stack(
        [
            (cols - step_x / 2) * cell,
            (rows - step_y / 2) * cell,
            (cols + step_x / 2) * cell,
            (rows + step_y / 2) * cell,
        ],
        axis=1,
    )
    x = _AxisMap(new_w / width, paste_x)
    y = _AxisMap(new_h / height, paste_y)
    views = (
        TokenView("base tile", base, base_boxes),
        TokenView("anyres tiles", high, _to_original(canvas, x, y, width, height)),
    )
    note = "image_newline tokens (always kept, outside the budget)"
    return TokenLayout((width, height), num_tokens, views, note)


def _qwen_layout(model: Any, inputs: Mapping[str, Any], num_tokens: int, size: tuple[int, int]):
    t, h, w = (int(v) for v in inputs["image_grid_thw"][0])
    merge = model.config.vision_config.spatial_merge_size
    rows, cols = h // merge, w // merge
    if t * rows * cols != num_tokens or t != 1:
        raise UnsupportedLayoutError(
            f"image_grid_thw ({t}, {h}, {w}) with merge {merge} gives {t * rows * cols} tokens in {t} frames; "
            f"the image has {num_tokens} (expected one frame)"
        )
    return grid_layout(size, rows, cols)


def _pixtral_layout(model: Any, inputs: Mapping[str, Any], num_tokens: int, size: tuple[int, int]) -> TokenLayout:
    """Mistral 3, and Pixtral-12B as a LLaVA: a token per (merged) patch of the image at its own size."""
    step = model.model.vision_tower.patch_size * getattr(model.config, "spatial_merge_size", 1)
    height, width = (int(v) for v in inputs["image_sizes"][0])
    rows, cols = height // step, width // step
    if rows * cols != num_tokens:
        raise UnsupportedLayoutError(
            f"image_sizes ({height}, {width}) give {rows} x {cols} tokens of {step} px; the image has {num_tokens}"
        )
    # the whole image resized (aspect kept), merged patches in raster order over the part the model reads: the
    # top-left rows * step x cols * step pixels (all of it when the sizes are multiples of step, as the processor
    # makes them)
    original_w, original_h = size
    boxes = grid_boxes(rows, cols, original_w * cols * step / width, original_h * rows * step / height)
    return TokenLayout(
        (int(original_w), int(original_h)), num_tokens, (TokenView("image", np.arange(num_tokens), boxes),)
    )


def _gemma3_layout(model: Any, num_tokens: int, size: tuple[int, int]) -> TokenLayout:
    # with pan and scan the crops are visual inputs of their own, after the first: the whole image, drawn here
    side = math.isqrt(num_tokens)
    if side * side != num_tokens or num_tokens != model.config.mm_tokens_per_image:
        raise UnsupportedLayoutError(
            f"the image has {num_tokens} visual tokens; Gemma 3 gives {model.config.mm_tokens_per_image} per image, "
            f"a square grid"
        )
    return grid_layout(size, side, side)  # the whole image resized to a square, patches pooled in raster order


def _idefics3_grid(processor: Any, input_ids: Tensor) -> tuple[int, int]:
    """``(rows, cols)`` of the first image's tiles, from the ``<row_i_col_j>`` tags the processor wrote."""
    import re

    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        raise UnsupportedLayoutError("Idefics3 token regions need the processor's tokenizer (to read the tile tags)")
    tokens = [str(token) for token in tokenizer.convert_ids_to_tokens(input_ids)]
    if "<global-img>" in tokens:  # the first image ends with its global tile
        tokens = tokens[: tokens.index("<global-img>")]
    tags = [re.fullmatch(r"<row_(\d+)_col_(\d+)>", token) for token in tokens]
    cells = [(int(tag.group(1)), int(tag.group(2))) for tag in tags if tag]
    return (max(r for r, _ in cells), max(c for _, c in cells)) if cells else (0, 0)


def _idefics3_layout(model: Any, processor: Any, inputs: Mapping[str, Any], num_tokens: int, size: tuple[int, int]):
    tile_tokens = model.model.image_seq_len
    rows, cols = _idefics3_grid(processor, inputs["input_ids"][0])
    if num_tokens != (rows * cols + 1) * tile_tokens:
        raise UnsupportedLayoutError(
            f"the image has {num_tokens} visual tokens; its {rows} x {cols} tiles and global tile give "
            f"{(rows * cols + 1) * tile_tokens} ({tile_tokens} a tile)"
        )
    vision = model.config.vision_config
    patches, scale = vision.image_size // vision.patch_size, model.config.scale_factor
    shuffle = lambda x: model.model.connector.pixel_shuffle(x[None], scale)[0]  # noqa: E731
    order = _shuffled_cells(shuffle, patches, scale)
    # a small image is its global tile alone (no grid): one tile covering the image
    return _tiled_layout(size, (max(rows, 1), max(cols, 1)), order, "global tile", num_tokens)


def _tiled_layout(
    size: tuple[int, int], grid: tuple[int, int], order: np.ndarray, whole: str, num_tokens: int
) -> TokenLayout:
    """An image stretched onto a ``rows x cols`` grid of tiles, then the whole image as one more tile (``whole``:
    its view's name), each tile's tokens on a ``g x g`` grid whose cell of token ``i`` is ``order[i]``
    (``(row, col)``). Tiles come first, in raster order; a grid of one tile has no whole-image tile."""
    width, height = size
    rows, cols = grid
    g = math.isqrt(order.shape[0])

    def boxes(x0: float, y0: float, w: float, h: float) -> np.ndarray:
        return grid_boxes(g, g, w, h)[order[:, 0] * g + order[:, 1]] + np.array([x0, y0, x0, y0])

    tiled = rows * cols * g * g
    w, h = width / cols, height / rows
    tiles = np.concatenate([boxes(j * w, i * h, w, h) for i in range(rows) for j in range(cols)])
    if tiled == num_tokens:  # one tile: the whole image
        return TokenLayout((width, height), num_tokens, (TokenView(whole, np.arange(num_tokens), tiles),))
    views = (TokenView(whole, np.arange(tiled, num_tokens), boxes(0, 0, width, height)),)
    return TokenLayout((width, height), num_tokens, (*views, TokenView("tiles", np.arange(tiled), tiles)))


def _shuffled_cells(shuffle: Callable[[Tensor], Tensor], patches: int, block: int) -> np.ndarray:
    """``(tokens, 2)`` the ``(row, col)`` cell of each token of a tile on its ``patches / block`` grid: patch
    coordinate markers through the model's own pixel shuffle (``shuffle``: ``(patches^2, 2)`` -> ``(tokens, 2 *
    block^2)``), each token at the mean of its patches."""
    r, c = torch.meshgrid(torch.arange(patches), torch.arange(patches), indexing="ij")
    folded = shuffle(torch.stack([r, c], -1).reshape(patches * patches, 2).float())
    centre = folded.reshape(folded.shape[0], -1, 2).mean(1).numpy()
    return np.floor(centre / block).astype(np.int64)


def _internvl_layout(model: Any, processor: Any, num_tokens: int, size: tuple[int, int]) -> TokenLayout:
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        raise UnsupportedLayoutError("InternVL token regions need the processor (its tiling settings)")
    vision = model.config.vision_config
    patches = vision.image_size[0] // vision.patch_size[0]
    ratio = model.config.downsample_ratio
    block = round(1 / ratio)
    shuffle = lambda x: model.model.pixel_shuffle(x.reshape(1, patches, patches, 2), ratio).reshape(-1, 2 * block**2)  # noqa: E731
    order = _shuffled_cells(shuffle, patches, block)
    tile_size = image_processor.size
    cols, rows = 1, 1
    if getattr(image_processor, "crop_to_patches", False) and image_processor.max_patches > 1:
        tile = (int(_field(tile_size, "height")), int(_field(tile_size, "width")))
        cols, rows = get_optimal_tiled_canvas(
            (size[1], size[0]), tile, image_processor.min_patches, image_processor.max_patches
        )
    tiles = rows * cols + (rows * cols > 1)  # the thumbnail, after several tiles
    if num_tokens != tiles * order.shape[0]:
        raise UnsupportedLayoutError(
            f"the image has {num_tokens} visual tokens; the processor's {rows} x {cols} tiles "
            f"{'and thumbnail ' if tiles > 1 else ''}give {tiles * order.shape[0]}"
        )
    return _tiled_layout(size, (rows, cols), order, "thumbnail", num_tokens)


def token_layout(
    model: Any, processor: Any, inputs: Mapping[str, Any], image_size: tuple[int, int], *, num_tokens: int
) -> TokenLayout:
    """Which box of the original image each visual token of the first image of ``inputs`` covers.

    Args:
        model: a model of a built-in family (:data:`tokenprune.integrations.adapters.FAMILIES`).
        processor: the processor that made ``inputs`` (LLaVA-1.5 needs its resize and crop settings, Idefics3
            its tokenizer, to read the tile tags).
        inputs: the processor's outputs for one image.
        image_size: ``(width, height)`` of the original image.
        num_tokens: the image's visual tokens (:attr:`tokenprune.PruneStats.visual_before`).

    Raises:
        UnsupportedLayoutError: another model family, or processor settings this module cannot invert.
    """
    from tokenprune.integrations.adapters import FAMILIES
    from tokenprune.integrations.gemma3 import Gemma3Adapter
    from tokenprune.integrations.idefics3 import Idefics3Adapter
    from tokenprune.integrations.internvl import InternVLAdapter
    from tokenprune.integrations.llava import LlavaAdapter
    from tokenprune.integrations.llava_next import LlavaNextAdapter
    from tokenprune.integrations.llava_onevision import LlavaOnevisionAdapter
    from tokenprune.integrations.mistral3 import Mistral3Adapter
    from tokenprune.integrations.qwen2_5_vl import Qwen2_5_VLAdapter
    from tokenprune.integrations.session import get_adapter

    size = (int(image_size[0]), int(image_size[1]))
    adapter = get_adapter(model)
    if isinstance(adapter, LlavaOnevisionAdapter):  # a LLaVA-NeXT packing, grids shrunk by interpolation
        return _llava_next_layout(model, inputs, num_tokens, size, onevision=True)
    if isinstance(adapter, LlavaNextAdapter):
        return _llava_next_layout(model, inputs, num_tokens, size)
    if isinstance(adapter, LlavaAdapter):
        if adapter._pixtral:
            return _pixtral_layout(model, inputs, num_tokens, size)
        return _llava_layout(model, processor, inputs, num_tokens, size)
    if isinstance(adapter, Qwen2_5_VLAdapter):
        return _qwen_layout(model, inputs, num_tokens, size)
    if isinstance(adapter, Gemma3Adapter):
        return _gemma3_layout(model, num_tokens, size)
    if isinstance(adapter, Idefics3Adapter):
        return _idefics3_layout(model, processor, inputs, num_tokens, size)
    if isinstance(adapter, InternVLAdapter):
        return _internvl_layout(model, processor, num_tokens, size)
    if isinstance(adapter, Mistral3Adapter):
        return _pixtral_layout(model, inputs, num_tokens, size)
    raise UnsupportedLayoutError(
        f"cannot map {type(model).__name__}'s visual tokens to image regions; supported: {FAMILIES}"
    )


# --- selection: what each method keeps ------------------------------------------------------------------


@dataclass(frozen=True)
class KeptTokens:
    """One method's kept visual tokens in one image.

    Attributes:
        label: the panel title, e.g. ``"zspa core_ratio=0.5"``.
        indices: ``(K,)`` int64 positions of the kept tokens in the image's token order.
        num_tokens: the image's visual tokens before pruning.
        selection_ms: time in the selector, when measured.
        owner: for a merging method (VisionZip), ``(num_tokens,)`` int64: the kept token each dropped
            token was merged into, ``-1`` elsewhere (:attr:`tokenprune.PruneStats.merged`); else None.
    """

    label: str
    indices: np.ndarray
    num_tokens: int
    selection_ms: float | None = field(default=None, compare=False)
    owner: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "indices", np.asarray(self.indices, dtype=np.int64).reshape(-1))
        if self.owner is not None:
            owner = np.asarray(self.owner, dtype=np.int64).reshape(-1)
            if owner.shape != (self.num_tokens,):
                raise InputError(f"owner must have one entry per token ({self.num_tokens}); got {owner.shape[0]}")
            object.__setattr__(self, "owner", owner)

    @property
    def merged(self) -> np.ndarray:
        """Indices of the dropped tokens merged into a kept one (empty for a method that does not merge)."""
        return np.empty(0, dtype=np.int64) if self.owner is None else np.flatnonzero(self.owner >= 0)


def method_label(name: str, params: Mapping[str, Any] | None = None) -> str:
    """A method and the parameters it was given, in ``--methods`` syntax.

    >>> method_label("zspa", {"core_ratio": 0.5, "pooling": "max"})
    'zspa:core_ratio=0.5,pooling=max'
    """
    if not params:
        return name
    return f"{name}:" + ",".join(f"{key}={value}" for key, value in params.items())


def _choice(method: MethodChoice) -> tuple[str, dict[str, Any]]:
    if isinstance(method, str):
        return method, {}
    name, params = method
    return name, dict(params)


def kept_tokens(
    model: Any,
    inputs: Mapping[str, Any],
    methods: Sequence[MethodChoice],
    *,
    budget: Budget,
    prompt_tokens: str | Callable[[Tensor, Tensor], Tensor] = "text",
) -> list[KeptTokens]:
    """Each method's kept tokens of the first image of ``inputs``, from one prefill under :func:`tokenprune.apply`.

    Args:
        model: a supported VLM.
        inputs: processor outputs (on the model's device).
        methods: names or ``(name, params)`` pairs.
        budget: tokens kept per image: an int or a ratio in (0, 1].
        prompt_tokens: as for :func:`tokenprune.apply` (e.g. ``question_tokens(processor)``).

    Returns:
        One :class:`KeptTokens` per method, in order.
    """
    from tokenprune.integrations.session import apply

    out = []
    for method in methods:
        name, params = _choice(method)
        with torch.no_grad(), apply(model, name, budget=budget, prompt_tokens=prompt_tokens, **params) as session:
            model(**inputs)
        stats = session.last
        if stats is None:
            raise TokenPruneError(f"method {name!r}: the model call pruned nothing (no image in the inputs?)")
        owner = stats.merged[0].cpu().numpy() if stats.merged else None
        label = method_label(name, params)
        out.append(KeptTokens(label, stats.kept[0].cpu(), stats.visual_before[0], stats.selection_ms, owner))
    return out


def build_inputs(processor: Any, image: PILImage.Image, question: str) -> dict[str, Any]:
    """Processor inputs for one image and question, through the processor's chat template when it has one."""
    if getattr(processor, "chat_template", None):
        from tokenprune.evaluation.runner import chat_inputs

        return chat_inputs(processor, [([image], question)])
    text = f"{getattr(processor, 'image_token', '<image>')}\n{question}"
    return dict(processor(images=[image], text=[text], return_tensors="pt"))


@dataclass
class ShowResult:
    """What :func:`show_tokens` found: the layout of the image's tokens and each method's kept tokens."""

    layout: TokenLayout
    kept: list[KeptTokens]


def show_tokens(
    model: Any,
    processor: Any,
    image: PILImage.Image,
    question: str,
    methods: Sequence[MethodChoice],
    *,
    keep: Budget = 0.1,
) -> ShowResult:
    """Each method's kept tokens of ``image`` for ``question``, and where they lie in the image.

    The selector sees the question alone (:func:`~tokenprune.integrations.question_tokens`) when the
    processor has a chat template, else every text token. Draw the result with :func:`render_kept`.
    """
    from tokenprune.integrations.prompt import question_tokens

    image = image.convert("RGB")
    inputs = build_inputs(processor, image, question)
    device = getattr(model, "device", torch.device("cpu"))
    dtype = getattr(model, "dtype", None)
    inputs = {
        key: value.to(device, dtype=dtype if value.is_floating_point() else None)
        if isinstance(value, Tensor)
        else value
        for key, value in inputs.items()
    }
    prompt_tokens = question_tokens(processor) if getattr(processor, "chat_template", None) else "text"
    kept = kept_tokens(model, inputs, methods, budget=keep, prompt_tokens=prompt_tokens)
    layout = token_layout(model, processor, inputs, image.size, num_tokens=kept[0].num_tokens)
    return ShowResult(layout, kept)


# --- drawing ----------------------------------------------------------------------------------------------

_BACKGROUND = (255, 255, 255)
_INK = (25, 25, 25)
_SUBTLE = (95, 95, 95)


@lru_cache(maxsize=16)
def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # FreeType build of Pillow >= 10.1
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _text_width(font: Any, text: str) -> float:
    return float(font.getlength(text))


def _wrap(text: str, font: Any, width: float) -> list[str]:
    """Greedy word wrap of ``text`` to ``width`` pixels (a word longer than the width gets its own line)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}" if line else word
            if line and _text_width(font, trial) > width:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


def _pixel_boxes(boxes: np.ndarray, scale: float) -> np.ndarray:
    """Boxes to integer pixel edges at ``scale``; neighbouring boxes share an edge, so a grid has no gaps."""
    return np.floor(boxes * scale + 0.5).astype(np.int64)


def _panel(
    image: PILImage.Image,
    view: TokenView,
    kept: np.ndarray,
    colour: tuple[int, int, int],
    scale: float,
    owner: np.ndarray | None = None,
):
    """One panel: the image with ``view``'s kept tokens bright and outlined, the rest greyed and dimmed.

    With an ``owner`` map (a merging method), a merged token is tinted, half as dark, in the colour of
    the kept token it joined, which carries a dot of that colour.
    """
    from PIL import Image, ImageDraw, ImageOps

    width, height = image.size
    grey = ImageOps.grayscale(image).convert("RGB")
    dimmed = Image.blend(grey, Image.new("RGB", image.size, (0, 0, 0)), 0.55)
    boxes = _pixel_boxes(view.boxes, scale)
    seen = Image.new("L", image.size, 0)
    bright = Image.new("L", image.size, 0)
    half = Image.new("L", image.size, 0)
    tints = Image.new("RGB", image.size, (0, 0, 0))
    draw_seen, draw_bright, draw_half = ImageDraw.Draw(seen), ImageDraw.Draw(bright), ImageDraw.Draw(half)
    draw_tints = ImageDraw.Draw(tints)
    is_kept = np.isin(view.indices, kept)
    joins = np.full(view.indices.shape, -1) if owner is None else owner[view.indices]
    targets = [] if owner is None else np.unique(owner[owner >= 0]).tolist()
    groups = {target: _TINTS[i % len(_TINTS)] for i, target in enumerate(targets)}  # joined token -> its tint
    for (x0, y0, x1, y1), keep, target in zip(boxes.tolist(), is_kept.tolist(), joins.tolist(), strict=True):
        if x1 > x0 and y1 > y0:
            draw_seen.rectangle((x0, y0, x1 - 1, y1 - 1), fill=255)
            if keep:
                draw_bright.rectangle((x0, y0, x1 - 1, y1 - 1), fill=255)
            elif target >= 0:
                draw_half.rectangle((x0, y0, x1 - 1, y1 - 1), fill=255)
                draw_tints.rectangle((x0, y0, x1 - 1, y1 - 1), fill=groups[target])
    unseen = ImageOps.invert(seen)
    if unseen.getbbox() is not None:  # cropped away by the processor: hatched
        hatch = dimmed.copy()
        draw = ImageDraw.Draw(hatch)
        step = max(6, round(min(width, height) / 40))
        for offset in range(-height, width, step):
            draw.line((offset, 0, offset + height, height), fill=(150, 150, 150), width=1)
        dimmed = Image.composite(hatch, dimmed, unseen)
    if groups:  # merged: tinted by the token they joined, half as dark as the tokens dropped outright
        dimmed = Image.composite(Image.blend(grey, tints, 0.45), dimmed, half)
    panel = Image.composite(image, dimmed, bright)
    line = max(2, round(max(width, height) / 220))
    draw = ImageDraw.Draw(panel)
    for token, (x0, y0, x1, y1) in zip(view.indices[is_kept].tolist(), boxes[is_kept].tolist(), strict=True):
        if x1 > x0 and y1 > y0:
            draw.rectangle(
                (x0, y0, x1 - 1, y1 - 1), outline=colour, width=min(line, max(1, min(x1 - x0, y1 - y0) // 4))
            )
            if token in groups:  # a dot of its group's tint
                r = max(1, min(x1 - x0, y1 - y0) // 5)
                cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=groups[token], outline=_INK)
    return panel, unseen.getbbox() is not None


def render_kept(
    image: PILImage.Image,
    layout: TokenLayout,
    kept: Sequence[KeptTokens],
    *,
    panel_size: int | None = 448,
    caption: str | None = None,
    colours: Sequence[tuple[int, int, int]] = COLOURS,
) -> PILImage.Image:
    """The figure: one panel per method (columns) and per view of the layout (rows).

    Each panel shows the image with the method's kept tokens at full brightness, outlined in the
    method's colour, and its pruned tokens greyed and dimmed; image parts no token covers (cut away by
    the processor's crop) are hatched. The title gives the method (and parameters) and ``kept K/N``,
    counted over the tokens drawn in that panel. Pure drawing: no model involved.

    Args:
        image: the original image (any mode; drawn as RGB).
        layout: where the tokens lie (:func:`token_layout`, or :func:`grid_layout` for a plain grid).
        kept: one entry per method.
        panel_size: the longest side of each panel in pixels; None draws the image at its own size
            (then pixels inside kept tokens are the image's own).
        caption: a line above the panels, e.g. the question.
        colours: outline colour per method, cycled.

    Returns:
        An RGB image.
    """
    from PIL import Image, ImageDraw

    if not kept:
        raise ValueError("render_kept needs at least one method's kept tokens")
    image = image.convert("RGB")
    if image.size != tuple(layout.image_size):
        raise InputError(f"the image is {image.size[0]}x{image.size[1]} but the layout is for {layout.image_size}")
    scale = 1.0 if panel_size is None else panel_size / max(image.size)
    if scale != 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        shown = image.resize(size, Image.Resampling.LANCZOS)
    else:
        shown = image
    pw, ph = shown.size
    cols, rows = len(kept), len(layout.views)
    base = max(11, round(max(pw, 200) / 30))
    title_font, small_font = _font(base + 2), _font(base)
    margin, gap, line_gap = round(base * 1.2), round(base * 1.8), round(base * 0.35)
    width = 2 * margin + cols * pw + (cols - 1) * gap

    def height_of(lines: list[tuple[str, Any, Any]]) -> int:
        return sum(font.getbbox("Ag")[3] + line_gap for _, font, _ in lines)

    # titles: per column, the method (with a colour swatch) and per panel, the kept count
    swatch = base
    titles = [_wrap(k.label, title_font, pw - swatch - line_gap) for k in kept]
    title_lines = max(len(t) for t in titles)
    title_h = title_lines * (title_font.getbbox("Ag")[3] + line_gap)
    count_h = small_font.getbbox("Ag")[3] + line_gap
    panel_block = title_h + count_h + line_gap + ph
    caption_lines = (
        [(line, title_font, _INK) for line in _wrap(caption, title_font, width - 2 * margin)] if caption else []
    )
    caption_h = height_of(caption_lines) + (line_gap * 2 if caption_lines else 0)

    legend_font = small_font
    panels, any_unseen = {}, False
    for c, entry in enumerate(kept):
        colour = tuple(colours[c % len(colours)])
        for r, view in enumerate(layout.views):
            panels[r, c], unseen = _panel(shown, view, entry.indices, colour, scale, entry.owner)
            any_unseen |= unseen
    legend = ["bright, outlined: kept visual tokens", "greyed: pruned"]
    if any(entry.owner is not None for entry in kept):
        legend.append("tinted: merged into the kept token with the dot of that tint")
    if any_unseen:
        legend.append("hatched: covered by no visual token (cropped away)")
    note = layout.note
    legend_lines = [
        (line, legend_font, _SUBTLE) for line in _wrap("   ·   ".join(legend), legend_font, width - 2 * margin)
    ]
    if note:
        legend_lines += [
            (line, legend_font, _SUBTLE) for line in _wrap(f"Not drawn: {note}.", legend_font, width - 2 * margin)
        ]
    legend_h = height_of(legend_lines)
    height = margin + caption_h + rows * panel_block + (rows - 1) * gap + gap + legend_h + margin

    figure = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(figure)
    y = margin
    for text, font, ink in caption_lines:
        draw.text((margin, y), text, font=font, fill=ink)
        y += font.getbbox("Ag")[3] + line_gap
    y += line_gap * 2 if caption_lines else 0
    for r, view in enumerate(layout.views):
        for c, entry in enumerate(kept):
            x = margin + c * (pw + gap)
            colour = tuple(colours[c % len(colours)])
            ty = y
            draw.rectangle((x, ty + 2, x + swatch - 4, ty + swatch - 2), fill=colour, outline=_INK)
            for line in titles[c]:
                draw.text((x + swatch + line_gap - 2, ty), line, font=title_font, fill=_INK)
                ty += title_font.getbbox("Ag")[3] + line_gap
            ty = y + title_h
            k, n = layout.count(entry.indices, view)
            count = f"kept {k}/{n} ({100 * k / max(n, 1):.1f}%)"
            if entry.owner is not None:
                count += f", {layout.count(entry.merged, view)[0]} merged"
            if rows > 1:
                count = f"{view.name}: {count}"
            draw.text((x, ty), count, font=small_font, fill=_SUBTLE)
            py = y + title_h + count_h + line_gap
            figure.paste(panels[r, c], (x, py))
            draw.rectangle((x - 1, py - 1, x + pw, py + ph), outline=(170, 170, 170))
        y += panel_block + gap
    for text, font, ink in legend_lines:
        draw.text((margin, y), text, font=font, fill=ink)
        y += font.getbbox("Ag")[3] + line_gap
    return figure

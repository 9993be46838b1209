"""Drawing a :class:`~tokenprune.scenes.Scene` with Pillow.

>>> from tokenprune.scenes import Scene, SceneObject, render_scene, image_to_array
>>> image = render_scene(Scene(objects=(SceneObject.of("square", "blue", "large", (168, 168)),)))
>>> image.size, image.mode
((336, 336), 'RGB')
>>> image_to_array(image)[168, 168].tolist()
[35, 65, 210]
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tokenprune.scenes.description import PALETTE, PANEL_COLOURS, Background, Scene, SceneObject, TextItem

__all__ = ["draw_shape", "image_to_array", "label_box", "render_background", "render_scene", "text_panel_box"]

_PANEL_MARGIN = 0.3  # of the font size, around the measured text


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled default font at ``size`` px (FreeType build), else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or no FreeType: small bitmap font
        return ImageFont.load_default()


def text_panel_box(text: str, centre: tuple[int, int], font_size: int) -> tuple[int, int, int, int]:
    """The panel ``(x0, y0, x1, y1)`` around ``text`` drawn centred at ``centre``.

    >>> x0, y0, x1, y1 = text_panel_box("HELLO", (100, 50), 28)
    >>> x1 - x0 > y1 - y0
    True
    """
    left, top, right, bottom = _font(font_size).getbbox(text, anchor="mm")
    m = max(2, round(_PANEL_MARGIN * font_size))
    x, y = centre
    return (x + math.floor(left) - m, y + math.floor(top) - m, x + math.ceil(right) + m, y + math.ceil(bottom) + m)


def render_background(background: Background, image_size: int) -> np.ndarray:
    """The background as a ``(image_size, image_size, 3)`` uint8 array.

    >>> render_background(Background("stripes", period=10), 32).shape
    (32, 32, 3)
    """
    s = image_size
    c0, c1 = (np.array(c, dtype=np.float64) for c in background.colours)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64)
    theta = math.radians(background.angle)
    along = xx * math.cos(theta) + yy * math.sin(theta)
    if background.kind == "plain":
        t = np.zeros((s, s))
    elif background.kind == "stripes":
        t = (np.floor(along / (background.period / 2)) % 2).astype(np.float64)
    elif background.kind == "checker":
        p = background.period
        t = ((np.floor(xx / p) + np.floor(yy / p)) % 2).astype(np.float64)
    elif background.kind == "noise":
        rng = np.random.default_rng(background.seed)
        cells = max(2, s // background.period + 2)
        coarse = rng.random((cells, cells))
        t = np.kron(coarse, np.ones((background.period, background.period)))[:s, :s]
        t = 0.7 * t + 0.3 * rng.random((s, s))
    else:  # gradient
        t = (along - along.min()) / max(along.max() - along.min(), 1e-9)
    out = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _polygon(obj: SceneObject) -> list[tuple[float, float]]:
    (x, y), r = obj.centre, obj.radius
    if obj.shape == "square":
        return [(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)]
    if obj.shape == "triangle":
        return [(x, y - r), (x + r, y + r), (x - r, y + r)]
    if obj.shape == "diamond":
        return [(x, y - r), (x + 0.75 * r, y), (x, y + r), (x - 0.75 * r, y)]
    if obj.shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((x + rad * math.cos(a), y + r * 0.1 + rad * math.sin(a)))
        return pts
    if obj.shape == "cross":
        w = 0.36 * r
        return [
            (x - w, y - r), (x + w, y - r), (x + w, y - w), (x + r, y - w), (x + r, y + w), (x + w, y + w),
            (x + w, y + r), (x - w, y + r), (x - w, y + w), (x - r, y + w), (x - r, y - w), (x - w, y - w),
        ]  # fmt: skip
    if obj.shape == "hexagon":
        return [(x + r * math.cos(k * math.pi / 3), y + r * math.sin(k * math.pi / 3)) for k in range(6)]
    raise AssertionError(obj.shape)  # circle is drawn as an ellipse


def draw_shape(draw: ImageDraw.ImageDraw, obj: SceneObject, fill: Any, outline: Any = None, width: int = 0) -> None:
    """Draw ``obj``'s shape (no label) in ``fill``: the object itself, or its mask on an ``"L"`` image.

    >>> from tokenprune.scenes import SceneObject
    >>> mask = Image.new("L", (40, 40))
    >>> draw_shape(ImageDraw.Draw(mask), SceneObject.of("square", "red", "small", (20, 20)), 1)
    >>> int(np.asarray(mask).sum()), int(np.asarray(mask).max())
    (1225, 1)
    """
    if obj.shape == "circle":
        draw.ellipse(obj.bbox, fill=fill, outline=outline, width=width)
    else:
        draw.polygon(_polygon(obj), fill=fill, outline=outline, width=width)


def _label_font(obj: SceneObject) -> tuple[ImageFont.ImageFont | ImageFont.FreeTypeFont, int]:
    """The font of ``obj``'s label and the width of the label's black outline."""
    size = max(8, round(obj.radius * 1.1))
    return _font(size), max(1, size // 10)


def label_box(obj: SceneObject) -> tuple[int, int, int, int] | None:
    """The box ``(x0, y0, x1, y1)`` of the pixels ``obj``'s label is drawn on (outline included), centred on
    the object; ``None`` for an object without a label.

    >>> from tokenprune.scenes import SceneObject
    >>> x0, y0, x1, y1 = label_box(SceneObject.of("circle", "red", "large", (100, 100), label="A"))
    >>> x0 < 100 < x1 and y0 < 100 < y1, label_box(SceneObject.of("circle", "red", "large", (100, 100)))
    (True, None)
    """
    if obj.label is None:
        return None
    font, stroke = _label_font(obj)
    left, top, right, bottom = font.getbbox(obj.label, anchor="mm", stroke_width=stroke)
    x, y = obj.centre
    return x + left, y + top, x + right, y + bottom


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, outline: int) -> None:
    draw_shape(draw, obj, PALETTE[obj.colour], (0, 0, 0), outline)
    if obj.label is not None:
        font, stroke = _label_font(obj)
        draw.text(
            obj.centre, obj.label, font=font, anchor="mm", fill=(255, 255, 255),
            stroke_width=stroke, stroke_fill=(0, 0, 0),
        )  # fmt: skip


def _draw_text(draw: ImageDraw.ImageDraw, item: TextItem) -> None:
    draw.rectangle(item.bbox, fill=PANEL_COLOURS[item.panel], outline=(0, 0, 0), width=1)
    draw.text(item.centre, item.text, font=_font(item.font_size), anchor="mm", fill=(0, 0, 0))


def render_scene(scene: Scene) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``scene.image_size`` x ``scene.image_size`` pixels.

    Deterministic: the same description always gives the same pixels (the noise background is seeded).
    """
    image = Image.fromarray(render_background(scene.background, scene.image_size))
    draw = ImageDraw.Draw(image)
    outline = max(1, scene.image_size // 168)
    for obj in scene.objects:
        _draw_object(draw, obj, outline)
    for item in scene.texts:
        _draw_text(draw, item)
    return image


def image_to_array(image: Image.Image) -> np.ndarray:
    """An image as a ``(H, W, 3)`` uint8 numpy array (converted to RGB first).

    >>> image_to_array(Image.new("L", (4, 2))).shape
    (2, 4, 3)
    """
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()

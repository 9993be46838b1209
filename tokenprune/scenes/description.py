"""The structured description of a scene: what is drawn where, as frozen dataclasses.

A :class:`Scene` is everything :func:`~tokenprune.scenes.render.render_scene` needs to draw the image and
everything the question families need to ask about it, so a test can build an exact scene by hand:

>>> from tokenprune.scenes import Scene, SceneObject
>>> scene = Scene(objects=(SceneObject.of("circle", "red", "large", (80, 100)),))
>>> scene.objects[0].name, scene.objects[0].bbox
('red circle', (40, 60, 120, 140))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from tokenprune.errors import InputError

__all__ = [
    "BACKGROUND_KINDS",
    "COLOUR_WEIGHTS",
    "PALETTE",
    "PANEL_COLOURS",
    "SHAPES",
    "SHAPE_WEIGHTS",
    "SIZES",
    "SIZE_FRACTION",
    "Background",
    "Scene",
    "SceneObject",
    "TextItem",
]

#: Shapes, with their prior weights in :func:`~tokenprune.scenes.generate_scene` (POPE "popular" = frequent).
SHAPE_WEIGHTS: dict[str, float] = {
    "circle": 0.22,
    "square": 0.20,
    "triangle": 0.16,
    "star": 0.12,
    "cross": 0.11,
    "diamond": 0.10,
    "hexagon": 0.09,
}
SHAPES: tuple[str, ...] = tuple(SHAPE_WEIGHTS)

#: The named object palette (RGB), saturated so objects stand out from the light, muted backgrounds.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "orange": (245, 135, 15),
    "yellow": (245, 215, 20),
    "green": (35, 155, 55),
    "cyan": (30, 195, 215),
    "blue": (35, 65, 210),
    "purple": (135, 45, 180),
    "pink": (240, 110, 180),
    "brown": (125, 75, 35),
    "black": (20, 20, 20),
}
COLOUR_WEIGHTS: dict[str, float] = {
    "red": 0.16,
    "blue": 0.15,
    "green": 0.13,
    "yellow": 0.11,
    "black": 0.09,
    "orange": 0.08,
    "purple": 0.08,
    "pink": 0.07,
    "cyan": 0.07,
    "brown": 0.06,
}

#: Object sizes as the half-extent (radius) in pixels divided by the image side.
SIZE_FRACTION: dict[str, float] = {"small": 0.05, "medium": 0.08, "large": 0.12}
SIZES: tuple[str, ...] = tuple(SIZE_FRACTION)

#: Colours of the panels that text signs are printed on (black text on a light panel stays legible).
PANEL_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "yellow": (255, 240, 140),
    "cyan": (170, 235, 245),
}

BACKGROUND_KINDS: tuple[str, ...] = ("plain", "stripes", "checker", "noise", "gradient")


def _check_choice(what: str, value: object, allowed: tuple[str, ...] | dict) -> None:
    if value not in allowed:
        raise InputError(f"{what}: expected one of {', '.join(map(repr, allowed))}; received {value!r}.")


def _check_point(what: str, point: object) -> None:
    if not (isinstance(point, tuple) and len(point) == 2 and all(isinstance(v, int) for v in point)):
        raise InputError(f"{what}: expected a tuple of two ints (x, y) in pixels; received {point!r}.")


@dataclass(frozen=True)
class SceneObject:
    """One filled shape with a black outline, optionally carrying a one-character ``label``.

    ``radius`` is the half-extent in pixels: the shape fits in ``bbox`` = ``centre`` +/- ``radius``.
    Use :meth:`of` to derive the radius from ``size`` and the image side.

    >>> SceneObject.of("star", "blue", "small", (50, 60), image_size=336).radius
    17
    """

    shape: str
    colour: str
    size: str
    centre: tuple[int, int]
    radius: int
    label: str | None = None

    def __post_init__(self) -> None:
        _check_choice("SceneObject.shape", self.shape, SHAPES)
        _check_choice("SceneObject.colour", self.colour, PALETTE)
        _check_choice("SceneObject.size", self.size, SIZES)
        _check_point("SceneObject.centre", self.centre)
        if not isinstance(self.radius, int) or self.radius < 2:
            raise InputError(f"SceneObject.radius: expected an int >= 2 pixels; received {self.radius!r}.")
        if self.label is not None and (not isinstance(self.label, str) or len(self.label) != 1):
            raise InputError(f"SceneObject.label: expected None or a single character; received {self.label!r}.")

    @classmethod
    def of(
        cls,
        shape: str,
        colour: str,
        size: str,
        centre: tuple[int, int],
        *,
        image_size: int = 336,
        label: str | None = None,
    ) -> SceneObject:
        """Build an object whose radius is ``SIZE_FRACTION[size] * image_size``, rounded."""
        _check_choice("SceneObject.size", size, SIZES)
        return cls(shape, colour, size, centre, round(SIZE_FRACTION[size] * image_size), label)

    @property
    def name(self) -> str:
        """``"<colour> <shape>"``, e.g. ``"red circle"``."""
        return f"{self.colour} {self.shape}"

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` in pixels, inclusive of the outline."""
        (x, y), r = self.centre, self.radius
        return (x - r, y - r, x + r, y + r)


@dataclass(frozen=True)
class TextItem:
    """A sign: ``text`` in black on a ``panel``-coloured rectangle centred at ``centre``.

    ``bbox`` (the panel) is measured with the same font the renderer uses.

    >>> item = TextItem("CAT", (100, 100), font_size=28)
    >>> x0, y0, x1, y1 = item.bbox
    >>> x0 < 100 < x1 and y0 < 100 < y1
    True
    """

    text: str
    centre: tuple[int, int]
    font_size: int = 28
    panel: str = "white"

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip() or not self.text.isprintable():
            raise InputError(f"TextItem.text: expected a non-empty printable string; received {self.text!r}.")
        _check_point("TextItem.centre", self.centre)
        if not isinstance(self.font_size, int) or self.font_size < 6:
            raise InputError(f"TextItem.font_size: expected an int >= 6; received {self.font_size!r}.")
        _check_choice("TextItem.panel", self.panel, PANEL_COLOURS)

    @cached_property
    def bbox(self) -> tuple[int, int, int, int]:
        """The panel ``(x0, y0, x1, y1)``: the measured text box plus a margin."""
        from tokenprune.scenes.render import text_panel_box

        return text_panel_box(self.text, self.centre, self.font_size)


@dataclass(frozen=True)
class Background:
    """A textured background drawn from two colours.

    ``kind`` is one of :data:`BACKGROUND_KINDS`; ``period`` is the stripe/checker period in pixels,
    ``angle`` the stripe/gradient direction in degrees, ``seed`` the noise seed.

    >>> Background("checker", ((200, 200, 200), (225, 225, 225)), period=24).kind
    'checker'
    """

    kind: str = "plain"
    colours: tuple[tuple[int, int, int], tuple[int, int, int]] = ((215, 215, 215), (235, 235, 235))
    period: int = 24
    angle: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        _check_choice("Background.kind", self.kind, BACKGROUND_KINDS)
        ok = len(self.colours) == 2 and all(
            len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in self.colours
        )
        if not ok:
            raise InputError(
                f"Background.colours: expected two (r, g, b) tuples of ints 0-255; received {self.colours!r}."
            )
        if not isinstance(self.period, int) or self.period < 2:
            raise InputError(f"Background.period: expected an int >= 2 pixels; received {self.period!r}.")


@dataclass(frozen=True)
class Scene:
    """A whole scene: image side, background, objects and text signs (``seed`` records its origin, if any)."""

    objects: tuple[SceneObject, ...] = ()
    texts: tuple[TextItem, ...] = ()
    background: Background = field(default_factory=Background)
    image_size: int = 336
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or self.image_size < 32:
            raise InputError(f"Scene.image_size: expected an int >= 32 pixels; received {self.image_size!r}.")
        for name, items, kind in (("objects", self.objects, SceneObject), ("texts", self.texts, TextItem)):
            if not isinstance(items, tuple) or not all(isinstance(i, kind) for i in items):
                raise InputError(f"Scene.{name}: expected a tuple of {kind.__name__}; received {items!r}.")

    def count(self, shape: str | None = None, colour: str | None = None) -> int:
        """How many objects match ``shape`` and ``colour`` (``None`` matches any).

        >>> Scene(objects=(SceneObject.of("circle", "red", "small", (40, 40)),)).count(shape="circle")
        1
        """
        return sum((shape is None or o.shape == shape) and (colour is None or o.colour == colour) for o in self.objects)

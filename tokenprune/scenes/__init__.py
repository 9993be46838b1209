"""Procedural scenes and questions for training and evaluating a small VLM offline.

Importing this package imports Pillow (``import tokenprune`` alone does not).

>>> from tokenprune.scenes import generate_scene, render_scene, ask, make_dataset
>>> scene = generate_scene(0, image_size=336)
>>> render_scene(scene).size
(336, 336)
>>> sample = make_dataset(1, seed=0, split="test")[0]
>>> sample.family, sample.answer in sample.answers
('existence', True)
"""

from tokenprune.scenes.description import (
    BACKGROUND_KINDS,
    COLOUR_WEIGHTS,
    PALETTE,
    PANEL_COLOURS,
    SHAPE_WEIGHTS,
    SHAPES,
    SIZE_FRACTION,
    SIZES,
    Background,
    Scene,
    SceneObject,
    TextItem,
)
from tokenprune.scenes.generator import SPLIT_TAGS, WORDS, Sample, generate_scene, make_dataset, scene_seed
from tokenprune.scenes.questions import FAMILIES, MC_INSTRUCTION, POPE_SUBSETS, Question, ask, plural
from tokenprune.scenes.render import image_to_array, render_background, render_scene

__all__ = [
    "BACKGROUND_KINDS",
    "COLOUR_WEIGHTS",
    "FAMILIES",
    "MC_INSTRUCTION",
    "PALETTE",
    "PANEL_COLOURS",
    "POPE_SUBSETS",
    "SHAPES",
    "SHAPE_WEIGHTS",
    "SIZES",
    "SIZE_FRACTION",
    "SPLIT_TAGS",
    "WORDS",
    "Background",
    "Question",
    "Sample",
    "Scene",
    "SceneObject",
    "TextItem",
    "ask",
    "generate_scene",
    "image_to_array",
    "make_dataset",
    "plural",
    "render_background",
    "render_scene",
    "scene_seed",
]

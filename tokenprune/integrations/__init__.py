"""Pruning inside Hugging Face transformers VLMs. Imports transformers only when a model is adapted."""

from tokenprune.integrations.base import (
    ImageTokens,
    ModelAdapter,
    PrunedInputs,
    PruneStats,
    VideoPlaceholders,
    prune_inputs,
)
from tokenprune.integrations.prompt import question_tokens
from tokenprune.integrations.session import PruningSession, UnsupportedModelError, apply, get_adapter

__all__ = [
    "ImageTokens",
    "ModelAdapter",
    "PruneStats",
    "PrunedInputs",
    "PruningSession",
    "UnsupportedModelError",
    "VideoPlaceholders",
    "apply",
    "get_adapter",
    "prune_inputs",
    "question_tokens",
]

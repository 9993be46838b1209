"""Attention rows recomputed from a module's inputs, so the model itself can stay on fast kernels.

Asking a model for attention maps forces eager attention in every layer (sdpa returns none). The
few rows a pruning method needs are instead recomputed from the captured input of one attention
module, with that module's own projections.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["capture_input", "cls_attention"]


@contextlib.contextmanager
def capture_input(module: nn.Module, name: str = "hidden_states") -> Iterator[list[Tensor]]:
    """Record the ``name`` input (keyword or first positional) of each call of ``module``."""
    seen: list[Tensor] = []

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.append(kwargs[name] if name in kwargs else args[0])

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def cls_attention(attention: nn.Module, hidden_states: Tensor) -> Tensor:
    """Attention from the CLS token (position 0) to every token, averaged over heads.

    Args:
        attention: a ViT/CLIP-style attention module with ``q_proj``, ``k_proj``, ``head_dim`` and
            ``scale`` (the input ``hidden_states`` is what that module received: already normed).
        hidden_states: ``(B, 1 + N, C)``.

    Returns:
        ``(B, N)``: softmax attention of CLS to the N patch tokens (the CLS column excluded), float32.
    """
    batch, length, _ = hidden_states.shape
    heads_dim = attention.head_dim
    query = attention.q_proj(hidden_states[:, :1]).view(batch, 1, -1, heads_dim).transpose(1, 2)
    keys = attention.k_proj(hidden_states).view(batch, length, -1, heads_dim).transpose(1, 2)
    logits = (query.float() @ keys.float().transpose(-1, -2)) * attention.scale  # (B, H, 1, 1 + N)
    return torch.softmax(logits, dim=-1).mean(dim=1)[:, 0, 1:]

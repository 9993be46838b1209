"""Attention rows recomputed from a module's inputs, so the model itself can stay on fast kernels.

Asking a model for attention maps forces eager attention in every layer (sdpa returns none). The
few rows a pruning method needs are instead recomputed from the captured input of one attention
module, with that module's own projections.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["capture_input", "cls_attention", "maybe_capture", "mean_keys", "query_attention"]


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


def maybe_capture(
    module: nn.Module | None, name: str = "hidden_states"
) -> contextlib.AbstractContextManager[list[Tensor]]:
    """:func:`capture_input` of ``module``, or an empty list that stays empty when ``module`` is None."""
    return capture_input(module, name) if module is not None else contextlib.nullcontext([])


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


def mean_keys(attention: nn.Module, hidden_states: Tensor) -> Tensor:
    """The keys of every patch token, averaged over heads (VisionZip's merge metric).

    Args:
        attention: a ViT/CLIP-style attention module with ``k_proj`` and ``head_dim``.
        hidden_states: ``(B, 1 + N, C)``, the input that module received (CLS first).

    Returns:
        ``(B, N, head_dim)`` float32 (the CLS token excluded).
    """
    batch, length, _ = hidden_states.shape
    keys = attention.k_proj(hidden_states[:, 1:]).view(batch, length - 1, -1, attention.head_dim)
    return keys.float().mean(dim=2)


def _rotate_half(x: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def _llama_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return x * cos.unsqueeze(2) + _rotate_half(x) * sin.unsqueeze(2)


def _rotary(attention: nn.Module) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """``(x (B, L, H, hd), cos, sin) -> x`` rotated as ``attention`` rotates its queries and keys: its module's own
    ``apply_rotary_pos_emb`` (GLM-4 rotates neighbouring pairs of dimensions, and only part of each head), else
    Llama's."""
    rotate = getattr(sys.modules.get(type(attention).__module__), "apply_rotary_pos_emb", None)
    if not callable(rotate):
        return _llama_rotary
    return lambda x, cos, sin: rotate(x, x, cos, sin, unsqueeze_dim=2)[0]


def _batch_first(t: Tensor, batch: int) -> Tensor:
    return t.expand(batch, *t.shape[1:]) if t.shape[0] != batch else t


def query_attention(
    attention: nn.Module,
    hidden: Tensor,
    position_embeddings: tuple[Tensor, Tensor],
    queries: Tensor,
    real: Tensor,
    head: int | None = None,
) -> Tensor:
    """Log attention probabilities of a rotary attention at some query positions.

    As the module computes them: its own rotary (the module's ``apply_rotary_pos_emb``), per-head query and key
    norms where it has them (``q_norm``, ``k_norm``) and a soft cap on the logits (``attn_logit_softcapping``).
    Not a sliding window: FastV refuses those layers (:func:`tokenprune.integrations.base.check_prune_layer`).

    Args:
        attention: the layer's self-attention (``q_proj``, ``k_proj``, ``head_dim``, ``scaling``).
        hidden: ``(B, L, D)``, the normed input of that attention.
        position_embeddings: the ``(cos, sin)`` the layer receives, ``(B or 1, L, head_dim)``.
        queries: ``(B, R)`` query positions.
        real: ``(B, L)`` bool, real tokens.
        head: one head only (its row of grouped-query keys), or every head when ``None``.

    Returns:
        ``(B, H, R, L)`` float32 log-softmax (``H`` = 1 with ``head``): causal, ``-inf`` at padding and
        after each query, as the module itself computes its attention.
    """
    batch, length, _ = hidden.shape
    head_dim = attention.head_dim
    cos, sin = (_batch_first(t, batch).float() for t in position_embeddings)
    at = queries.unsqueeze(-1).expand(-1, -1, cos.shape[-1])  # a rotary part of each head may be all of it, or less
    picked = hidden.gather(1, queries.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    query = attention.q_proj(picked).view(batch, queries.shape[1], -1, head_dim)  # (B, R, H, hd)
    keys = attention.k_proj(hidden).view(batch, length, -1, head_dim)  # (B, L, KVH, hd)
    if getattr(attention, "q_norm", None) is not None:  # per-head norms before the rotary (Qwen3, Gemma 3)
        query, keys = attention.q_norm(query), attention.k_norm(keys)
    query, keys = query.float(), keys.float()
    rotary = _rotary(attention)
    query, keys = rotary(query, cos.gather(1, at), sin.gather(1, at)), rotary(keys, cos, sin)
    keys = keys.repeat_interleave(query.shape[2] // keys.shape[2], dim=2)  # grouped-query heads
    if head is not None:
        query, keys = query[:, :, head : head + 1], keys[:, :, head : head + 1]
    logits = torch.einsum("brhd,blhd->bhrl", query, keys) * attention.scaling
    cap = getattr(attention, "attn_logit_softcapping", None)
    if cap:  # Gemma 2's soft cap on the attention logits
        logits = torch.tanh(logits / cap) * cap
    allowed = real.unsqueeze(1) & (torch.arange(length, device=hidden.device) <= queries.unsqueeze(-1))  # (B, R, L)
    return logits.masked_fill(~allowed.unsqueeze(1), float("-inf")).log_softmax(-1)

"""Prompt pooling: turn the prompt's token embeddings into the query the visual tokens are scored by."""

from __future__ import annotations

from torch import Tensor

__all__ = ["POOLING_MODES", "pool_prompt"]

POOLING_MODES = ("mean", "max", "none")


def pool_prompt(prompt: Tensor, mask: Tensor | None = None, mode: str = "mean") -> tuple[Tensor, Tensor | None]:
    """Pool the real prompt tokens of each row.

    Args:
        prompt: ``(B, M, D)`` text token embeddings.
        mask: ``(B, M)`` bool, True for real tokens (every row needs at least one); all real when omitted.
        mode: ``"mean"`` (the paper's ``t_bar``), ``"max"`` (element-wise max) or ``"none"``
            (keep every token; scoring then takes each visual token's best similarity).

    Returns:
        ``(query, query_mask)``: ``(B, 1, D)`` and ``None`` for mean and max; the prompt and its
        mask unchanged for ``"none"``.

    Example:
        >>> import torch
        >>> p = torch.tensor([[[1.0, 4.0], [3.0, 0.0], [9.0, 9.0]]])
        >>> m = torch.tensor([[True, True, False]])
        >>> pool_prompt(p, m, "mean")[0]
        tensor([[[2., 2.]]])
        >>> pool_prompt(p, m, "max")[0]
        tensor([[[3., 4.]]])
    """
    if mode == "none":
        return prompt, mask
    if mode == "mean":
        if mask is None:
            return prompt.mean(dim=1, keepdim=True), None
        weights = mask.to(prompt.dtype).unsqueeze(-1)
        total = (prompt * weights).sum(dim=1, keepdim=True)
        return total / weights.sum(dim=1, keepdim=True), None
    if mode == "max":
        if mask is not None:
            prompt = prompt.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        return prompt.amax(dim=1, keepdim=True), None
    raise ValueError(f"pooling must be one of {', '.join(map(repr, POOLING_MODES))}; got {mode!r}")

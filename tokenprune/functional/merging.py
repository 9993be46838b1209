"""Token merging: dropped tokens folded into kept ones (VisionZip's contextual tokens).

A merge is described by an *owner* map: ``owner[b, j]`` is the index of the kept token that token
``j`` of row ``b`` is merged into, or ``-1`` when ``j`` joins none (it is kept itself, is padding, or
is dropped outright). The merged value of a kept token ``i`` is its own value plus the mean of its
members' values, and its own value when it has none (VisionZip's rule: ``target + mean(assigned)``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tokenprune.functional.similarity import cosine_similarity

__all__ = ["assign_nearest", "merge_into"]


def assign_nearest(metric: Tensor, sources: Tensor, targets: Tensor) -> Tensor:
    """Each source token's most similar target token, by the cosine of their ``metric`` vectors.

    Args:
        metric: ``(B, N, C)`` the vectors compared (VisionZip: the keys at the feature layer).
        sources: ``(B, N)`` bool, the tokens to assign.
        targets: ``(B, T)`` int64, the indices of the tokens they may join, ascending, right-padded with
            ``-1`` (as :func:`tokenprune.functional.mask_to_indices` gives them); disjoint from the sources.

    Returns:
        ``(B, N)`` int64 owner map: for a source token, the index of its target (equal cosines go to
        the lower index); ``-1`` elsewhere, and for every token of a row that has no target. The work is
        ``O(N T C)``: the sources are compared with the targets only.

    Example:
        >>> import torch
        >>> metric = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]]])
        >>> assign_nearest(metric, torch.tensor([[False, False, True, True]]), torch.tensor([[0, 1]]))
        tensor([[-1, -1,  0,  1]])
    """
    if (
        metric.dim() != 3
        or sources.shape != metric.shape[:2]
        or targets.dim() != 2
        or targets.shape[0] != sources.shape[0]
    ):
        raise ValueError(
            f"metric must be (B, N, C) with sources (B, N) and targets (B, T); got {tuple(metric.shape)}, "
            f"{tuple(sources.shape)} and {tuple(targets.shape)}"
        )
    if targets.shape[1] == 0:
        return torch.full(sources.shape, -1, dtype=torch.long, device=sources.device)
    metric = metric.float() if metric.dtype in (torch.float16, torch.bfloat16) else metric
    real = targets >= 0
    slots = targets.clamp_min(0)
    chosen = metric.gather(1, slots.unsqueeze(-1).expand(-1, -1, metric.shape[-1]))  # (B, T, C)
    sims = cosine_similarity(metric, chosen).masked_fill(~real.unsqueeze(1), float("-inf"))  # (B, N, T)
    owner = slots.gather(1, sims.argmax(dim=-1))  # the first maximum: ascending targets, so the lower index
    joins = sources & real.any(dim=1, keepdim=True)
    return owner.masked_fill(~joins, -1)


def merge_into(values: Tensor, owner: Tensor) -> tuple[Tensor, Tensor]:
    """Every token's value after its members are merged into it.

    Args:
        values: ``(B, N, C)`` the values merged (VisionZip: the vision features before the projector).
        owner: ``(B, N)`` int64 owner map (:func:`assign_nearest`).

    Returns:
        ``(merged, absorbed)``: ``merged`` ``(B, N, C)`` in ``values``' dtype, where token ``i`` holds
        ``values[i] + mean(values[j] for j with owner[j] == i)`` when it has members and ``values[i]``
        otherwise (summed in float32 for half-precision values); ``absorbed`` ``(B, N)`` bool, the
        tokens that have members.

    Example:
        >>> import torch
        >>> merged, absorbed = merge_into(torch.tensor([[[1.0], [2.0], [4.0]]]), torch.tensor([[-1, 0, 0]]))
        >>> merged[0, :, 0].tolist(), absorbed.tolist()
        ([4.0, 2.0, 4.0], [[True, False, False]])
    """
    if values.dim() != 3 or owner.shape != values.shape[:2]:
        raise ValueError(
            f"values must be (B, N, C) and owner (B, N); got {tuple(values.shape)} and {tuple(owner.shape)}"
        )
    compute = torch.float32 if values.dtype in (torch.float16, torch.bfloat16) else values.dtype
    member = owner >= 0
    slot = owner.clamp_min(0)
    parts = values.to(compute).masked_fill(~member.unsqueeze(-1), 0.0)
    sums = torch.zeros_like(parts).scatter_add_(1, slot.unsqueeze(-1).expand_as(parts), parts)
    counts = torch.zeros(owner.shape, dtype=compute, device=owner.device).scatter_add_(1, slot, member.to(compute))
    absorbed = counts > 0
    merged = values.to(compute) + sums / counts.clamp_min(1).unsqueeze(-1)
    return merged.to(values.dtype), absorbed

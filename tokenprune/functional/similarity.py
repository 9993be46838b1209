"""Cosine similarity with the exact rule tokenprune uses everywhere.

``cos(a, b) = a.b / max(|a| |b|, eps)`` with ``eps = 1e-12``: a zero vector has cosine 0 with
everything (never NaN), and two vectors are compared on their raw dot product, so the result is the
same whether or not norms were precomputed. Results are then rounded to a fixed grid (``2**-40`` in
float64, ``2**-16`` in float32; within ``16 * eps(dtype)`` of +-1 they become exactly +-1 in every
dtype), so that cosines that are equal in exact arithmetic tie exactly, and ties go to the lower
index, whatever the rounding of the kernel (see :func:`snap_unit`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["EPS", "TIE_GRID", "cosine_similarity", "relevance_scores", "snap_unit", "snap_unit_", "token_norms"]

EPS = 1e-12


def token_norms(tokens: Tensor) -> Tensor:
    """Euclidean norm of each token: ``(..., D) -> (...)``."""
    return torch.linalg.vector_norm(tokens, dim=-1)


def cosine_similarity(
    a: Tensor,
    b: Tensor,
    *,
    a_norm: Tensor | None = None,
    b_norm: Tensor | None = None,
    eps: float = EPS,
    snap: bool = True,
) -> Tensor:
    """Pairwise cosine similarity of two token sets.

    Args:
        a: ``(B, P, D)``.
        b: ``(B, Q, D)``.
        a_norm, b_norm: precomputed norms ``(B, P)`` and ``(B, Q)``; computed when omitted.
        eps: lower bound of the norm product.
        snap: snap values within a few ulp of +-1 to +-1 (see :func:`snap_unit`).

    Returns:
        ``(B, P, Q)``: ``a[i].b[j] / max(|a[i]| |b[j]|, eps)``.

    Example:
        >>> import torch
        >>> a = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
        >>> cosine_similarity(a, a)
        tensor([[[1., 0.],
                 [0., 0.]]])
    """
    if a_norm is None:
        a_norm = token_norms(a)
    if b_norm is None:
        b_norm = token_norms(b)
    dots = _dots(a, b)
    sims = dots / (a_norm.unsqueeze(-1) * b_norm.unsqueeze(-2)).clamp_min(eps)
    return snap_unit_(sims) if snap else sims  # sims is a fresh tensor: snap it in place


def _dots(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b^T`` per batch row, ``(B, P, Q)``.

    On CPU a product with a single vector (``P == 1`` or ``Q == 1``) runs as one ``mv`` per row: a
    batched ``bmm`` of mat-vecs is up to 2x slower per row at ``B = 8`` than at ``B = 1``. Every batch
    size takes the same kernel, so the rounding does not depend on the batch.
    """
    if a.device.type == "cpu" and b.shape[1] == 1:
        return torch.stack([torch.mv(a_row, b_row[0]) for a_row, b_row in zip(a, b, strict=True)]).unsqueeze(-1)
    if a.device.type == "cpu" and a.shape[1] == 1:
        return torch.stack([torch.mv(b_row, a_row[0]) for a_row, b_row in zip(a, b, strict=True)]).unsqueeze(1)
    return torch.bmm(a, b.transpose(1, 2))


TIE_GRID = {torch.float64: 2.0**-40, torch.float32: 2.0**-16}
"""Cosines are rounded to multiples of this (by dtype) so that rounding noise cannot break exact ties."""


def snap_unit(sims: Tensor) -> Tensor:
    """Round cosines to :data:`TIE_GRID`; values within a few ulp of +-1 become exactly +-1.

    ``v.v / (|v| |v|)`` rounds to ``1 +- 2 ulp`` depending on ``v`` and on the kernel (GEMM or
    GEMV), and two cosines that are equal in exact arithmetic (``a.t = b.t`` and ``|a| = |b|``)
    come out a few ulp apart depending on the order the kernel sums in: a CPU mat-vec and a GPU
    GEMM disagree. Without the grid the lower-index tie rule would be decided by that noise, and the
    CPU and the GPU would keep different tokens. The grid (about ``1e-12`` in float64, ``1.5e-5`` in
    float32) is far below any difference that means something for selection; scaling by a power of
    two and rounding is exact and monotone, so it commutes with max, min and rankings. Two values a
    few ulp apart can still straddle a grid point (a chance of about ``2**-10`` in float64 near 1).
    Other dtypes are only snapped at +-1 (tokenprune selects half-precision inputs in float32).
    """
    return snap_unit_(sims.clone())


def snap_unit_(sims: Tensor) -> Tensor:
    """:func:`snap_unit` in place (for an ``N x N`` matrix, no second copy); returns ``sims``."""
    grid = TIE_GRID.get(sims.dtype)
    if grid is None:  # half precision: only values within 16 ulp of +-1 are snapped
        unit = sims.abs() >= 1 - 16 * torch.finfo(sims.dtype).eps
        return sims.copy_(torch.where(unit, sims.sign(), sims))
    # on the grid, the only multiples within 16 ulp of +-1 (or beyond) are +-1 and what is beyond:
    # clamping snaps exactly those, infinities included
    return sims.mul_(1 / grid).round_().mul_(grid).clamp_(-1.0, 1.0)


def relevance_scores(
    visual: Tensor,
    query: Tensor,
    query_mask: Tensor | None = None,
    *,
    visual_norm: Tensor | None = None,
) -> Tensor:
    """Each visual token's best cosine similarity over the real query tokens.

    With a pooled prompt (one query token) this is ``cos(t_bar, v_j)``, the paper's ``s_j``.

    Args:
        visual: ``(B, N, D)``.
        query: ``(B, Q, D)``, e.g. from :func:`tokenprune.functional.pool_prompt`.
        query_mask: ``(B, Q)`` bool, True for real query tokens; all real when omitted.
        visual_norm: precomputed ``(B, N)`` norms of ``visual``.

    Returns:
        ``(B, N)`` scores in ``[-1, 1]``.
    """
    sims = cosine_similarity(visual, query, a_norm=visual_norm)  # (B, N, Q)
    if query.shape[1] == 1:
        return sims.squeeze(-1)
    if query_mask is not None:
        sims = sims.masked_fill(~query_mask.unsqueeze(1), float("-inf"))
    return sims.amax(dim=-1)

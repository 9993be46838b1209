"""Selection primitives on boolean keep-masks.

Every primitive works on a batch at once. A selection is a ``(B, N)`` bool mask; ``available`` marks
the tokens that may still be chosen (real tokens not selected yet). Per-row counts are plain Python
ints, known on the host, so no primitive needs a device-to-host sync to learn how much to select
(the blocked max-min on CPU syncs by design; see :func:`select_maxmin`).

Ties always break toward the lower token index, identically on every device: rankings use a stable
sort and ``argmin``/``argmax`` return the first extremum.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tokenprune.functional.similarity import cosine_similarity, token_norms

__all__ = [
    "isolated_token",
    "mask_to_indices",
    "max_similarity",
    "select_maxmin",
    "select_stride",
    "select_topk",
]

_SEED_CHUNK = 256  # seed rows compared at once when initialising max-min (bounds memory)
_PAIR_CHUNK = 1024  # rows of the N x N similarity computed at once by isolated_token


def _count_tensor(counts: Sequence[int], device: torch.device) -> Tensor:
    return torch.tensor(list(counts), dtype=torch.long, device=device)


def _first_ranks(order: Tensor, counts: Sequence[int]) -> Tensor:
    """Mark ``order[b, :counts[b]]`` in a ``(B, N)`` bool mask (``order``: a per-row ranking)."""
    width = max(counts, default=0)
    mask = torch.zeros(order.shape, dtype=torch.bool, device=order.device)
    if width == 0:
        return mask
    ranks = torch.arange(width, device=order.device)
    valid = ranks < _count_tensor(counts, order.device).unsqueeze(1)
    return mask.scatter_(1, order[:, :width], valid)


def mask_to_indices(mask: Tensor, counts: Sequence[int]) -> Tensor:
    """Convert a keep-mask to ascending indices.

    Args:
        mask: ``(B, N)`` bool with ``counts[b]`` True values in row ``b``.
        counts: per-row number of kept tokens.

    Returns:
        ``(B, max(counts))`` int64: each row's kept positions ascending, right-padded with ``-1``
        when rows keep different numbers of tokens.

    Example:
        >>> import torch
        >>> m = torch.tensor([[False, True, True, False], [True, False, False, False]])
        >>> mask_to_indices(m, [2, 1])
        tensor([[ 1,  2],
                [ 0, -1]])
    """
    width = max(counts, default=0)
    order = torch.sort(mask.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :width]
    if min(counts, default=0) == width:
        return order
    pad = torch.arange(width, device=mask.device) >= _count_tensor(counts, mask.device).unsqueeze(1)
    return order.masked_fill(pad, -1)


def select_topk(scores: Tensor, available: Tensor, add: Sequence[int]) -> Tensor:
    """The ``add[b]`` available tokens of row ``b`` with the highest scores.

    Args:
        scores: ``(B, N)``, finite wherever ``available``.
        available: ``(B, N)`` bool; row ``b`` must have at least ``add[b]`` available tokens.
        add: how many tokens to pick per row.

    Returns:
        ``(B, N)`` bool mask of the picked tokens (only the new ones). Equal scores go to the lower index.

    Example:
        >>> import torch
        >>> s = torch.tensor([[0.1, 0.9, 0.9, 0.5]])
        >>> select_topk(s, torch.ones(1, 4, dtype=torch.bool), [2]).nonzero()[:, 1]
        tensor([1, 2])
    """
    key = scores.masked_fill(~available, float("-inf"))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    return _first_ranks(order, add)


def select_stride(available: Tensor, add: Sequence[int]) -> Tensor:
    """``add[b]`` evenly spaced tokens among the available ones of row ``b``.

    With ``n`` available tokens, the picks are those of rank ``floor((2j + 1) n / (2 add))`` for
    ``j = 0 .. add - 1``: the centres of ``add`` equal segments (every token when ``add == n``).

    Returns:
        ``(B, N)`` bool mask of the picked tokens.

    Example:
        >>> import torch
        >>> select_stride(torch.ones(1, 8, dtype=torch.bool), [2]).nonzero()[:, 1]
        tensor([2, 6])
    """
    batch, n = available.shape
    width = max(add, default=0)
    if width == 0:
        return torch.zeros_like(available)
    device = available.device
    order = torch.sort(available.to(torch.uint8), dim=1, descending=True, stable=True).indices
    n_avail = available.sum(dim=1, keepdim=True)
    count = _count_tensor(add, device).unsqueeze(1)
    j = torch.arange(width, device=device).unsqueeze(0)
    ranks = torch.div((2 * j + 1) * n_avail, (2 * count).clamp_min(1), rounding_mode="floor")
    valid = j < count
    picks = order.gather(1, ranks.clamp_max(n - 1)).masked_fill(~valid, n)  # unused slots -> spare column
    mask = torch.zeros((batch, n + 1), dtype=torch.bool, device=device)
    return mask.scatter_(1, picks, True)[:, :n]


def isolated_token(visual: Tensor, available: Tensor, *, norms: Tensor | None = None) -> Tensor:
    """DivPrune's first pick: the token whose most similar other token is least similar.

    ``argmin_x max_{y != x} cos(v_x, v_y)`` over the available tokens of each row (a row with one
    available token picks it). Costs one ``N x N`` similarity, computed in chunks of rows.

    Args:
        visual: ``(B, N, D)``.
        available: ``(B, N)`` bool, at least one True per row.
        norms: precomputed ``(B, N)`` token norms.

    Returns:
        ``(B,)`` int64 index per row.
    """
    if norms is None:
        norms = token_norms(visual)
    n = visual.shape[1]
    inf = float("inf")
    nearest = []
    for start in range(0, n, _PAIR_CHUNK):
        stop = min(start + _PAIR_CHUNK, n)
        sims = cosine_similarity(visual[:, start:stop], visual, a_norm=norms[:, start:stop], b_norm=norms)
        rows = torch.arange(start, stop, device=visual.device)
        sims[:, rows - start, rows] = -inf  # a token is not its own neighbour
        sims = sims.masked_fill(~available.unsqueeze(1), -inf)
        nearest.append(sims.amax(dim=-1))
    closest = torch.cat(nearest, dim=1).masked_fill(~available, inf)
    return closest.argmin(dim=1)


def max_similarity(visual: Tensor, selected: Tensor, counts: Sequence[int], *, norms: Tensor | None = None) -> Tensor:
    """``max_{y in selected} cos(v_x, v_y)`` for every token ``x``.

    Args:
        visual: ``(B, N, D)``.
        selected: ``(B, N)`` bool.
        counts: True values per row of ``selected`` (known on the host).
        norms: precomputed ``(B, N)`` token norms.

    Returns:
        ``(B, N)``; ``-inf`` in rows with nothing selected. Costs ``O(S N D)`` for ``S`` selected
        tokens, in chunks of selected tokens to bound memory.
    """
    if norms is None:
        norms = token_norms(visual)
    batch, n, _ = visual.shape
    maxsim = torch.full((batch, n), float("-inf"), dtype=visual.dtype, device=visual.device)
    seeds = mask_to_indices(selected, counts)  # (B, S), -1 padded
    for start in range(0, seeds.shape[1], _SEED_CHUNK):
        idx = seeds[:, start : start + _SEED_CHUNK]
        real = idx >= 0
        idx = idx.clamp_min(0)
        vecs = visual.gather(1, idx.unsqueeze(-1).expand(-1, -1, visual.shape[2]))
        sims = cosine_similarity(vecs, visual, a_norm=norms.gather(1, idx), b_norm=norms)
        sims = sims.masked_fill(~real.unsqueeze(-1), float("-inf"))
        maxsim = torch.maximum(maxsim, sims.amax(dim=1))
    return maxsim


def select_maxmin(
    visual: Tensor,
    selected: Tensor,
    available: Tensor,
    seed_counts: Sequence[int],
    add: Sequence[int],
    *,
    norms: Tensor | None = None,
    block_size: int | None = None,
) -> Tensor:
    """Greedy max-min fill: repeatedly add the available token least similar to the selected set.

    Each step adds, per row, ``argmin_x max_{y in selected} cos(v_x, v_y)`` over the available
    tokens, ties to the lower index, until row ``b`` has received ``add[b]`` new tokens.

    Two exact strategies give the same picks:

    * ``block_size=None`` (used on CUDA): one matrix-vector product per step and no host sync.
    * ``block_size=c`` (used on CPU): the similarities of the ``c`` tokens with the lowest current
      score are computed in one matrix product; picks are then consumed one by one while each pick
      falls inside that block (checked after it is made, so the picks are unchanged). A mat-vec
      re-reads all ``N x D`` tokens per step and is memory-bound; the block amortises that read.

    Args:
        visual: ``(B, N, D)``.
        selected: ``(B, N)`` bool seed selection; every row with ``add[b] > 0`` needs at least one
            selected token (use :func:`isolated_token` to seed an empty row).
        available: ``(B, N)`` bool, tokens that may be added (real and not selected).
        seed_counts: per-row number of True in ``selected``.
        add: per-row number of tokens to add (at most the available count).
        norms: precomputed ``(B, N)`` token norms.
        block_size: see above.

    Returns:
        ``(B, N)`` bool: ``selected`` plus the added tokens.
    """
    steps = max(add, default=0)
    if steps == 0:
        return selected
    if norms is None:
        norms = token_norms(visual)
    inf = float("inf")
    maxsim = max_similarity(visual, selected, seed_counts, norms=norms).masked_fill(~available, inf)
    selected = selected.clone()
    remaining = _count_tensor(add, visual.device)
    rows = torch.arange(visual.shape[0], device=visual.device)
    if block_size is None:
        for step in range(steps):
            pick = maxsim.argmin(dim=1)
            vec = visual[rows, pick].unsqueeze(1)
            sim = cosine_similarity(vec, visual, a_norm=norms[rows, pick].unsqueeze(1), b_norm=norms).squeeze(1)
            new = torch.zeros_like(selected).index_put_((rows, pick), remaining > step)
            selected |= new
            maxsim = torch.maximum(maxsim, sim).masked_fill_(new, inf)
        return selected
    width = min(block_size, visual.shape[1])
    while True:
        live = remaining > 0
        if not bool(live.any()):
            return selected
        block = torch.sort(maxsim, dim=1, stable=True).indices[:, :width]  # the argmin comes first
        vecs = visual.gather(1, block.unsqueeze(-1).expand(-1, -1, visual.shape[2]))
        sims = cosine_similarity(vecs, visual, a_norm=norms.gather(1, block), b_norm=norms)  # (B, c, N)
        slot = torch.full_like(maxsim, -1, dtype=torch.long).scatter_(
            1, block, torch.arange(width, device=visual.device).expand_as(block)
        )
        for made in range(width):
            pick = maxsim.argmin(dim=1)
            where = slot[rows, pick]
            live &= (where >= 0) & (remaining > 0)
            if not bool(live.any()):
                if made == 0:  # cannot happen for finite inputs: the argmin heads every block
                    raise RuntimeError("max-min fill made no progress; are the inputs finite?")
                break
            new = torch.zeros_like(selected).index_put_((rows, pick), live)
            selected |= new
            grown = torch.maximum(maxsim, sims[rows, where.clamp_min(0)])
            maxsim = torch.where(live.unsqueeze(1), grown, maxsim).masked_fill_(new, inf)
            remaining -= live.long()

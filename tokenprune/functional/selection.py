"""Selection primitives on boolean keep-masks.

Every primitive works on a batch at once. A selection is a ``(B, N)`` bool mask; ``available`` marks
the tokens that may still be chosen (real tokens not selected yet). Per-row counts are plain Python
ints, known on the host, so no primitive needs a device-to-host sync to learn how much to select
(the blocked max-min on CPU syncs by design; see :func:`select_maxmin`).

Ties always break toward the lower token index, identically on every device: rankings use a stable
sort and ``argmin``/``argmax`` return the first extremum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from tokenprune.functional import _triton
from tokenprune.functional.similarity import cosine_similarity, snap_unit, snap_unit_, token_norms

__all__ = [
    "isolated_token",
    "mark_picks",
    "mask_to_indices",
    "max_similarity",
    "select_maxmin",
    "select_stride",
    "select_topk",
    "similarity_matrix",
]

_SEED_CHUNK = 256  # seed rows compared at once when initialising max-min (bounds memory)
_PAIR_CHUNK = 1024  # rows of the N x N similarity computed at once by isolated_token


def _per_row(counts: Sequence[int], device: torch.device) -> int | Tensor:
    """``counts`` as a ``(B, 1)`` long tensor on ``device``, or as one int when every row has the same.

    The int costs nothing on the device. The tensor is written on the device, one fill per run of
    equal counts, rather than copied from host memory: a copy of host memory would wait for the device
    (blocking) or could not be captured in a CUDA graph (non-blocking; :func:`tokenprune.graphed`).
    """
    if len(set(counts)) <= 1:
        return counts[0] if counts else 0
    column = torch.empty((len(counts), 1), dtype=torch.long, device=device)
    start = 0
    for row in range(1, len(counts) + 1):
        if row == len(counts) or counts[row] != counts[start]:
            column[start:row].fill_(counts[start])
            start = row
    return column


def _leading(counts: Sequence[int], width: int, device: torch.device) -> Tensor | None:
    """``(B, width)`` bool, True at ``j < counts[b]``; None when that is every slot (uniform counts == width)."""
    count = _per_row(counts, device)
    if isinstance(count, int) and count >= width:
        return None
    return (torch.arange(width, device=device) < count).expand(len(counts), width)


def mark_picks(picks: Tensor, counts: Sequence[int], n: int) -> Tensor:
    """A ``(B, n)`` bool mask of each row's first ``counts[b]`` picks ``picks[b, :counts[b]]``.

    ``picks`` is ``(B, W)`` token indices; slots past a row's count may hold anything. They are
    scattered into a spare column that is then dropped, so a repeated index there can never clear a
    real pick. With equal counts of ``W`` (no such slot) the mask is one scatter.

    Example:
        >>> import torch
        >>> mark_picks(torch.tensor([[2, 0], [1, 1]]), [2, 1], 3)
        tensor([[ True, False,  True],
                [False,  True, False]])
    """
    batch, width = picks.shape
    valid = _leading(counts, width, picks.device)
    if valid is None:
        return torch.zeros((batch, n), dtype=torch.bool, device=picks.device).scatter_(1, picks, True)
    mask = torch.zeros((batch, n + 1), dtype=torch.bool, device=picks.device)
    return mask.scatter_(1, picks.masked_fill(~valid, n), True)[:, :n]


def _first_ranks(order: Tensor, counts: Sequence[int]) -> Tensor:
    """Mark ``order[b, :counts[b]]`` in a ``(B, N)`` bool mask (``order``: a per-row ranking)."""
    return mark_picks(order[:, : max(counts, default=0)], counts, order.shape[1])


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
    valid = _leading(counts, width, mask.device)
    return order if valid is None else order.masked_fill(~valid, -1)


def select_topk(scores: Tensor, available: Tensor | None, add: Sequence[int]) -> Tensor:
    """The ``add[b]`` available tokens of row ``b`` with the highest scores.

    Args:
        scores: ``(B, N)``, finite wherever ``available``.
        available: ``(B, N)`` bool, or None when every token is; row ``b`` must have at least
            ``add[b]`` available tokens.
        add: how many tokens to pick per row.

    Returns:
        ``(B, N)`` bool mask of the picked tokens (only the new ones). Equal scores go to the lower index.

    Example:
        >>> import torch
        >>> s = torch.tensor([[0.1, 0.9, 0.9, 0.5]])
        >>> select_topk(s, torch.ones(1, 4, dtype=torch.bool), [2]).nonzero()[:, 1]
        tensor([1, 2])
    """
    key = scores if available is None else scores.masked_fill(~available, float("-inf"))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    return _first_ranks(order, add)


def select_stride(available: Tensor, add: Sequence[int], *, start: bool = False) -> Tensor:
    """``add[b]`` evenly spaced tokens among the available ones of row ``b``.

    With ``n`` available tokens, the picks are those of rank ``floor((2j + 1) n / (2 add))`` for
    ``j = 0 .. add - 1``: the centres of ``add`` equal segments (every token when ``add == n``).
    With ``start``, they are those of rank ``j * max(1, floor(n / add))``, from the first token on
    (VisionZip's choice of contextual tokens).

    Returns:
        ``(B, N)`` bool mask of the picked tokens.

    Example:
        >>> import torch
        >>> select_stride(torch.ones(1, 8, dtype=torch.bool), [2]).nonzero()[:, 1]
        tensor([2, 6])
        >>> select_stride(torch.ones(1, 8, dtype=torch.bool), [3], start=True).nonzero()[:, 1]
        tensor([0, 2, 4])
    """
    n = available.shape[1]
    width = max(add, default=0)
    if width == 0:
        return torch.zeros_like(available)
    device = available.device
    order = torch.sort(available.to(torch.uint8), dim=1, descending=True, stable=True).indices
    n_avail = available.sum(dim=1, keepdim=True)
    count = _per_row(add, device)
    j = torch.arange(width, device=device).unsqueeze(0)
    if start:
        per = count.clamp_min(1) if isinstance(count, Tensor) else max(count, 1)
        ranks = j * torch.div(n_avail, per, rounding_mode="floor").clamp_min(1)
    else:
        double = (2 * count).clamp_min(1) if isinstance(count, Tensor) else max(2 * count, 1)
        ranks = torch.div((2 * j + 1) * n_avail, double, rounding_mode="floor")
    return mark_picks(order.gather(1, ranks.clamp_max(n - 1)), add, n)


def _pairwise(visual: Tensor, norms: Tensor) -> Callable[[int, int], Tensor]:
    """``f(start, stop)``: cosines of tokens ``start:stop`` with all tokens, ``(B, stop - start, N)``, unsnapped.

    Always the one formula of :func:`cosine_similarity` (``a.b / max(|a||b|, eps)``): a shortcut such
    as dotting unit vectors rounds differently, and exact ties (identical or lattice tokens) would then
    break differently depending on which path a row took.
    """
    return lambda start, stop: cosine_similarity(
        visual[:, start:stop], visual, a_norm=norms[:, start:stop], b_norm=norms, snap=False
    )


def similarity_matrix(visual: Tensor, *, norms: Tensor | None = None) -> Tensor:
    """All pairwise cosines ``(B, N, N)`` (not snapped to +-1; see :func:`snap_unit`).

    Example:
        >>> import torch
        >>> similarity_matrix(torch.tensor([[[1.0, 0.0], [0.0, 2.0]]]))
        tensor([[[1., 0.],
                 [0., 1.]]])
    """
    if norms is None:
        norms = token_norms(visual)
    return _pairwise(visual, norms)(0, visual.shape[1])


def isolated_token(
    visual: Tensor, available: Tensor | None, *, norms: Tensor | None = None, sims: Tensor | None = None
) -> Tensor:
    """DivPrune's first pick: the token whose most similar other token is least similar.

    ``argmin_x max_{y != x} cos(v_x, v_y)`` over the available tokens of each row (a row with one
    available token picks it). Costs one ``N x N`` similarity, computed in chunks of rows unless
    ``sims`` (from :func:`similarity_matrix`) is given; its diagonal is then set to ``-inf``.

    Args:
        visual: ``(B, N, D)``.
        available: ``(B, N)`` bool, at least one True per row; None when every token is.
        norms: precomputed ``(B, N)`` token norms.
        sims: precomputed ``(B, N, N)`` cosines, modified in place (the diagonal, and the columns of
            unavailable tokens, become ``-inf``).

    Returns:
        ``(B,)`` int64 index per row.
    """
    if norms is None:
        norms = token_norms(visual)
    n = visual.shape[1]
    inf = float("inf")
    pairwise = _pairwise(visual, norms) if sims is None else None
    unavailable = None if available is None else ~available
    nearest = []
    for start in range(0, n, _PAIR_CHUNK if sims is None else n):
        stop = min(start + _PAIR_CHUNK, n) if sims is None else n
        chunk = pairwise(start, stop) if sims is None else sims  # fresh, or the caller's to modify
        chunk.diagonal(offset=start, dim1=1, dim2=2).fill_(-inf)  # a token is not its own neighbour
        if unavailable is not None:
            chunk.masked_fill_(unavailable.unsqueeze(1), -inf)
        nearest.append(chunk.amax(dim=-1))
    # snapping to +-1 is monotone, so it commutes with the max: snap the N maxima, not the N x N matrix
    closest = snap_unit_(torch.cat(nearest, dim=1) if len(nearest) > 1 else nearest[0])
    if unavailable is not None:
        closest.masked_fill_(unavailable, inf)
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
    available: Tensor | None,
    seed_counts: Sequence[int],
    add: Sequence[int],
    *,
    norms: Tensor | None = None,
    block_size: int | None = None,
    sims: Tensor | None = None,
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
        available: ``(B, N)`` bool, tokens that may be added (real and not selected); None when
            that is every token not in ``selected`` (no padding).
        seed_counts: per-row number of True in ``selected``.
        add: per-row number of tokens to add (at most the available count).
        norms: precomputed ``(B, N)`` token norms.
        block_size: see above.
        sims: a precomputed ``(B, N, N)`` cosine matrix (:func:`similarity_matrix`); each step is
            then a row lookup (the matrix already cost ``O(N^2 D)``, e.g. for DivPrune's first pick).
            On CUDA it is snapped in place (:func:`tokenprune.functional.snap_unit_`).

    Returns:
        ``(B, N)`` bool: ``selected`` plus the added tokens.
    """
    steps = max(add, default=0)
    if steps == 0:
        return selected
    if norms is None:
        norms = token_norms(visual)
    inf = float("inf")
    if sims is not None:
        return _fill_from_matrix(sims, selected, available, seed_counts, add, batched=block_size is None)
    maxsim = max_similarity(visual, selected, seed_counts, norms=norms).masked_fill(_taken(selected, available), inf)
    if block_size is None:
        rows = torch.arange(visual.shape[0], device=visual.device)
        picks = []
        for _ in range(steps):  # no host sync inside the loop
            pick = maxsim.argmin(dim=1)
            picks.append(pick)
            vec = visual[rows, pick].unsqueeze(1)
            sim = cosine_similarity(vec, visual, a_norm=norms[rows, pick].unsqueeze(1), b_norm=norms).squeeze(1)
            maxsim = _fold(maxsim, sim, pick)
        return selected | mark_picks(torch.stack(picks, dim=1), add, visual.shape[1])
    selected = selected.clone()
    width = min(block_size, visual.shape[1])
    for row, count in enumerate(add):
        if count:
            picks = _fill_row_blocked(visual[row], norms[row], maxsim[row], count, width)
            selected[row, picks] = True
    return selected


def _fill_row_blocked(visual: Tensor, norms: Tensor, maxsim: Tensor, count: int, width: int) -> list[int]:
    """One row of the blocked max-min fill (CPU): ``count`` picks, updating ``maxsim`` in place.

    Picks are made one at a time exactly as in the sequential loop; the similarities of the ``width``
    tokens with the lowest current ``maxsim`` are computed in one matrix product, and picks are
    consumed while each lies in that block. The argmin heads every block (stable sort, first
    minimum), so each block yields at least one pick.
    """
    inf = float("inf")
    picks: list[int] = []
    while len(picks) < count:
        block = torch.sort(maxsim, stable=True).indices[:width]
        sims = cosine_similarity(
            visual[block].unsqueeze(0), visual.unsqueeze(0), a_norm=norms[block].unsqueeze(0), b_norm=norms.unsqueeze(0)
        )[0]  # (c, N)
        slot = {token: j for j, token in enumerate(block.tolist())}
        made = 0
        while len(picks) < count:
            pick = int(maxsim.argmin())
            j = slot.get(pick)
            if j is None:
                break
            picks.append(pick)
            made += 1
            torch.maximum(maxsim, sims[j], out=maxsim)
            maxsim[pick] = inf
        if made == 0:  # cannot happen for finite inputs: the argmin heads every block
            raise RuntimeError("max-min fill made no progress; are the inputs finite?")
    return picks


def _fill_from_matrix(
    sims: Tensor,
    selected: Tensor,
    available: Tensor | None,
    seed_counts: Sequence[int],
    add: Sequence[int],
    *,
    batched: bool,
) -> Tensor:
    """The max-min fill with every similarity already in ``sims`` ``(B, N, N)``: one row lookup a step.

    ``batched``: all rows step together with no host sync (used on CUDA); otherwise one row at a
    time with Python scalars (cheaper per step on CPU). Both make the same picks.
    """
    inf = float("inf")
    if batched:  # snap every row once, in place: each step then reads a snapped row
        snap_unit_(sims)
    seeds = mask_to_indices(selected, seed_counts)  # (B, S), -1 padded unless the counts are equal
    if min(seed_counts) == max(seed_counts):
        maxsim = sims.gather(1, seeds.unsqueeze(-1).expand(-1, -1, sims.shape[2])).amax(dim=1)
    else:
        rows = sims.gather(1, seeds.clamp_min(0).unsqueeze(-1).expand(-1, -1, sims.shape[2]))
        maxsim = rows.masked_fill_((seeds < 0).unsqueeze(-1), -inf).amax(dim=1)
    maxsim = (maxsim if batched else snap_unit_(maxsim)).masked_fill_(_taken(selected, available), inf)
    if not batched:
        selected = selected.clone()
        for row, count in enumerate(add):
            row_sims, row_max = sims[row], maxsim[row]
            picks = []
            for _ in range(count):
                pick = int(row_max.argmin())
                picks.append(pick)
                torch.maximum(row_max, snap_unit(row_sims[pick]), out=row_max)
                row_max[pick] = inf
            selected[row, picks] = True
        return selected
    if _triton.available(sims.device) and sims.shape[1] <= _triton.MAX_TOKENS:  # one launch for every pick
        return _with_picks(selected, _triton.fill_from_matrix(sims, maxsim, add), add)
    batch = torch.arange(sims.shape[0], device=sims.device)
    picks = []
    for _ in range(max(add, default=0)):  # no host sync inside the loop
        pick = maxsim.argmin(dim=1)
        picks.append(pick)
        maxsim = _fold(maxsim, sims[batch, pick], pick)
    return _with_picks(selected, torch.stack(picks, dim=1), add)


def _with_picks(selected: Tensor, picks: Tensor, add: Sequence[int]) -> Tensor:
    """``selected`` plus each row's first ``add[b]`` ``picks`` (a new mask; ``selected`` is not modified).

    When every row keeps all its picks, they are scattered into a copy of ``selected``: two operations
    instead of three (a new mask, the scatter, the union).
    """
    if len(set(add)) == 1 and add[0] == picks.shape[1]:
        return selected.clone().scatter_(1, picks, True)
    return selected | mark_picks(picks, add, selected.shape[1])


def _taken(selected: Tensor, available: Tensor | None) -> Tensor:
    """The tokens a fill may not pick: not ``available``, or when that is None, the ``selected`` ones."""
    return selected if available is None else ~available


def _fold(maxsim: Tensor, sim: Tensor, pick: Tensor) -> Tensor:
    """One batched greedy step: ``maxsim`` raised to the new pick's similarities, the pick itself barred.

    A row that has made all its picks still steps; its later picks are dropped by the caller
    (:func:`mark_picks`), so what happens to its ``maxsim`` does not matter.
    """
    return torch.maximum(maxsim, sim).scatter_(1, pick.unsqueeze(1), float("inf"))

"""Maximal Marginal Relevance (Carbonell & Goldstein, 1998) for visual tokens.

Greedily add the available token ``x`` maximising

    ``lam * rel(x) - (1 - lam) * max_{y in selected} cos(x, y)``

where ``rel(x)`` is the cosine of ``x`` to the pooled prompt. The first pick of an empty selection is
the most relevant token. ``lam = 1`` is pure relevance (tokenprune's ``relevance`` method); ``lam = 0``
is pure diversity after that first pick.

Three layers, as in tokenprune itself: :func:`select_mmr` is the pure tensor function, :class:`MMR`
the stage (a :class:`tokenprune.Selector`), :func:`mmr` the registered factory.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tokenprune import Selection, Selector, TokenBatch
from tokenprune.functional import cosine_similarity, max_similarity, relevance_scores, token_norms
from tokenprune.stages import MeanPool, Pooling, make_pooling
from torch import Tensor

__all__ = ["MMR", "mmr", "select_mmr"]


def select_mmr(
    visual: Tensor,
    relevance: Tensor,
    selected: Tensor,
    available: Tensor,
    seed_counts: Sequence[int],
    add: Sequence[int],
    *,
    lam: float,
    norms: Tensor | None = None,
) -> Tensor:
    """Greedy MMR: add ``add[b]`` tokens to row ``b``, one mat-vec per row and step.

    On a GPU every step runs for the whole batch at once; on CPU the rows run one after the other.

    Each step picks, in every row that still needs tokens, the available token maximising
    ``lam * relevance - (1 - lam) * (max cosine to the tokens selected so far)``; a row with nothing
    selected yet picks its most relevant token. Ties go to the lower index (``argmax`` returns the
    first maximum). Rows that are done are left unchanged, so rows may add different numbers.

    Args:
        visual: ``(B, N, D)``.
        relevance: ``(B, N)`` scores, finite wherever ``available``.
        selected: ``(B, N)`` bool, the selection to continue from (rows may be empty).
        available: ``(B, N)`` bool, tokens that may be added; row ``b`` needs at least ``add[b]``.
        seed_counts: True values per row of ``selected``.
        add: tokens to add per row.
        lam: relevance weight in ``[0, 1]``.
        norms: precomputed ``(B, N)`` token norms.

    Returns:
        ``(B, N)`` bool mask of the added tokens only.

    Example:
        >>> import torch
        >>> v = torch.tensor([[[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]]])
        >>> rel = torch.tensor([[0.9, 0.8, 0.1]])
        >>> none, every = torch.zeros(1, 3, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool)
        >>> select_mmr(v, rel, none, every, [0], [2], lam=0.5).nonzero()[:, 1]  # 1 is a near-copy of 0
        tensor([0, 2])
        >>> select_mmr(v, rel, none, every, [0], [2], lam=1.0).nonzero()[:, 1]  # relevance alone
        tensor([0, 1])
    """
    if visual.device.type == "cpu" and visual.shape[0] > 1:
        # row by row on CPU: a row's tokens then stay in cache from one step to the next, where a batched
        # step reads every row's tokens each time (up to 1.7x slower per image at B = 8, D = 4096)
        rows = [slice(b, b + 1) for b in range(visual.shape[0])]
        return torch.cat(
            [
                select_mmr(
                    visual[row],
                    relevance[row],
                    selected[row],
                    available[row],
                    seed_counts[row],
                    add[row],
                    lam=lam,
                    norms=None if norms is None else norms[row],
                )
                for row in rows
            ]
        )
    new = torch.zeros_like(selected)
    steps = max(add, default=0)
    if steps == 0:
        return new
    if norms is None:
        norms = token_norms(visual)
    batch = visual.shape[0]
    device = visual.device
    rows = torch.arange(batch, device=device)
    remaining = torch.tensor(list(add), dtype=torch.long, device=device)
    seeded = torch.tensor([c > 0 for c in seed_counts], dtype=torch.bool, device=device).unsqueeze(1)
    redundancy = max_similarity(visual, selected, seed_counts, norms=norms)  # -inf in unseeded rows
    gain = lam * relevance
    closed = ~available
    for step in range(steps):
        # unseeded rows rank by relevance alone (their redundancy term is -inf and is discarded here)
        score = torch.where(seeded, gain - (1.0 - lam) * redundancy, relevance).masked_fill(closed, float("-inf"))
        pick = score.argmax(dim=1)
        live = remaining > step
        picked = torch.zeros_like(new).index_put_((rows, pick), live)
        new |= picked
        if step == steps - 1:
            break
        closed = closed | picked
        vec, vec_norm = visual[rows, pick].unsqueeze(1), norms[rows, pick].unsqueeze(1)
        sim = cosine_similarity(vec, visual, a_norm=vec_norm, b_norm=norms).squeeze(1)  # (B, N): the mat-vec
        redundancy = torch.where(live.unsqueeze(1), torch.maximum(redundancy, sim), redundancy)
        seeded = seeded | live.unsqueeze(1)
    return new


@dataclass(frozen=True)
class MMR(Selector):
    """Maximal Marginal Relevance: relevant to the prompt, not redundant with what is already kept.

    As a fill (e.g. ``Hierarchical(core=..., fill=MMR())``) it continues from the core: redundancy
    is measured against the core's tokens too.

    Args:
        lam: relevance weight in ``[0, 1]``: 1 = relevance top-K, 0 = diversity after the first pick.
        pooling: how the prompt becomes the relevance query (a :mod:`tokenprune.stages` pooling).
    """

    lam: float = 0.5
    pooling: Pooling = field(default_factory=MeanPool)
    requires = frozenset({"prompt"})

    def __post_init__(self) -> None:
        lam = self.lam
        if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or math.isnan(lam) or not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be a number in [0, 1] (1 = relevance only, 0 = diversity only); got {lam!r}")
        if not isinstance(self.pooling, Pooling):
            raise ValueError(f"pooling must be a tokenprune.stages.Pooling such as MeanPool(); got {self.pooling!r}")

    def extend(self, tokens: TokenBatch, selection: Selection, target: tuple[int, ...]) -> Selection:
        add = tuple(t - c for t, c in zip(target, selection.counts, strict=True))
        if not any(add):
            return selection
        query, query_mask = self.pooling(tokens.prompt, tokens.prompt_mask)
        relevance = relevance_scores(tokens.visual, query, query_mask, visual_norm=tokens.norms)
        new = select_mmr(
            tokens.visual,
            relevance,
            selection.mask,
            selection.available(tokens),
            selection.counts,
            add,
            lam=float(self.lam),
            norms=tokens.norms,
        )
        return selection.added(new, add)


def mmr(lam: float = 0.5, pooling: str = "mean") -> Selector:
    """Maximal Marginal Relevance: greedily trade prompt relevance (lam) against redundancy with kept tokens.

    ``lam`` in [0, 1] weighs relevance against redundancy (1 = the ``relevance`` method);
    ``pooling`` is how the prompt becomes one query: ``mean``, ``max`` or ``none``.
    """
    return MMR(lam=lam, pooling=make_pooling(pooling))

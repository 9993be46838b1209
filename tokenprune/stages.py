"""Stages: small frozen dataclasses wrapping :mod:`tokenprune.functional`, composed into methods.

Three kinds of stage:

* **poolings** turn prompt token embeddings into a query: :class:`MeanPool`, :class:`MaxPool`, :class:`NoPool`;
* **scorers** give every visual token a score: :class:`Relevance`, :class:`ExternalScores`, :class:`RandomScores`;
* **selectors** (:class:`tokenprune.Selector`) choose tokens: :class:`TopK`, :class:`MaxMin`,
  :class:`Stride`, and :class:`Hierarchical`, which runs a core selector then a fill selector
  (:class:`Contextual`: one whose fill tokens absorb the dropped ones, VisionZip).

ZSPAPrune is one line of them::

    Hierarchical(core=TopK(Relevance(MeanPool())), fill=MaxMin(), core_ratio=0.2)
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor

from tokenprune.functional import (
    assign_nearest,
    isolated_token,
    mark_picks,
    mask_to_indices,
    pool_prompt,
    relevance_scores,
    select_maxmin,
    select_stride,
    select_topk,
    similarity_matrix,
)
from tokenprune.selector import SCORE_SOURCES, Selection, Selector, TokenBatch

__all__ = [
    "Contextual",
    "ExternalScores",
    "Hierarchical",
    "LayerAttention",
    "MaxMin",
    "MaxPool",
    "MeanPool",
    "NoPool",
    "POOLINGS",
    "Pooling",
    "RandomScores",
    "Relevance",
    "Scorer",
    "Stride",
    "TopK",
    "core_size",
    "make_pooling",
]


# --- poolings ---------------------------------------------------------------------------------


class Pooling(ABC):
    """Turns ``(B, M, D)`` prompt embeddings into a ``(B, Q, D)`` query and its mask."""

    mode: str

    def __call__(self, prompt: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        return pool_prompt(prompt, mask, self.mode)


@dataclass(frozen=True)
class MeanPool(Pooling):
    """The mean of the real prompt tokens (the paper's ``t_bar``)."""

    mode = "mean"


@dataclass(frozen=True)
class MaxPool(Pooling):
    """The element-wise max of the real prompt tokens (ablation)."""

    mode = "max"


@dataclass(frozen=True)
class NoPool(Pooling):
    """No pooling: a visual token scores its best cosine over the prompt tokens (ablation)."""

    mode = "none"


POOLINGS: dict[str, type[Pooling]] = {"mean": MeanPool, "max": MaxPool, "none": NoPool}


def make_pooling(pooling: str) -> Pooling:
    """The pooling stage named ``"mean"``, ``"max"`` or ``"none"`` (method factories take names)."""
    try:
        return POOLINGS[pooling]()
    except (KeyError, TypeError):
        raise ValueError(f"pooling must be one of {', '.join(map(repr, POOLINGS))}; got {pooling!r}") from None


# --- scorers ----------------------------------------------------------------------------------


class Scorer(ABC):
    """Scores every visual token: ``score(tokens) -> (B, N)``, finite at real tokens, higher = keep."""

    requires: frozenset[str] = frozenset()
    batch_invariant: bool = True
    capturable: bool = True  # see Selector.capturable
    score_source: str | None = None

    @abstractmethod
    def score(self, tokens: TokenBatch) -> Tensor: ...


@dataclass(frozen=True)
class Relevance(Scorer):
    """Cosine similarity of each visual token to the pooled prompt."""

    pooling: Pooling = field(default_factory=MeanPool)
    requires = frozenset({"prompt"})

    def score(self, tokens: TokenBatch) -> Tensor:
        query, query_mask = self.pooling(tokens.prompt, tokens.prompt_mask)
        return relevance_scores(tokens.visual, query, query_mask, visual_norm=tokens.norms)


@dataclass(frozen=True)
class ExternalScores(Scorer):
    """The ``scores=`` passed by the caller, e.g. attention received by each visual token.

    Args:
        source: where a model integration takes the scores from (a key of
            :data:`tokenprune.selector.SCORE_SOURCES`): ``"external"`` (the caller passes them) or
            ``"cls_attention"`` (the vision encoder's CLS attention, FasterVLM-style).
    """

    source: str = "external"
    requires = frozenset({"scores"})

    def __post_init__(self) -> None:
        if self.source not in SCORE_SOURCES:
            raise ValueError(f"source must be one of {', '.join(map(repr, SCORE_SOURCES))}; got {self.source!r}")

    @property
    def score_source(self) -> str:
        return self.source

    def score(self, tokens: TokenBatch) -> Tensor:
        return tokens.scores


@dataclass(frozen=True)
class LayerAttention(Scorer):
    """FastV's scores: the attention the last prompt token pays each visual token in LM layer ``layer``.

    Averaged over heads. Inside a model (:func:`tokenprune.apply`) the tokens are dropped before
    layer ``layer`` runs, so layers ``0 .. layer-1`` see every token; called directly, the scores are
    the caller's ``scores=``.
    """

    layer: int = 2
    requires = frozenset({"scores"})
    score_source = "lm_attention"

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"layer must be an int >= 0; got {self.layer!r}")

    def score(self, tokens: TokenBatch) -> Tensor:
        return tokens.scores


@dataclass(frozen=True)
class RandomScores(Scorer):
    """Uniform random scores from a CPU generator seeded with ``seed`` once per call.

    The same inputs and seed always give the same scores, on every device. Rows draw from one
    stream, so an image's scores depend on its position in the batch (``batch_invariant = False``).
    """

    seed: int = 0
    batch_invariant = False
    capturable = False  # its keys are drawn on the host and copied in: a graph would replay a stale copy

    def score(self, tokens: TokenBatch) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        keys = torch.rand(tokens.real.shape, generator=generator, dtype=torch.float64)
        return keys.to(tokens.visual.device, non_blocking=True)  # host memory: no wait on the device


# --- selectors --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopK(Selector):
    """The highest-scoring available tokens; equal scores go to the lower index."""

    scorer: Scorer

    @property
    def requires(self) -> frozenset[str]:
        return self.scorer.requires

    @property
    def batch_invariant(self) -> bool:
        return self.scorer.batch_invariant

    @property
    def capturable(self) -> bool:
        return self.scorer.capturable

    @property
    def score_source(self) -> str | None:
        return self.scorer.score_source

    @property
    def prune_layer(self) -> int | None:
        return getattr(self.scorer, "layer", None) if self.score_source == "lm_attention" else None

    def extend(self, tokens: TokenBatch, selection: Selection, target: tuple[int, ...]) -> Selection:
        add = selection.needed(target)
        if not any(add):
            return selection
        everything = selection.is_empty and tokens.all_real  # known on the host: no mask to apply
        new = select_topk(self.scorer.score(tokens), None if everything else selection.available(tokens), add)
        return selection.added(new, add)


@dataclass(frozen=True)
class MaxMin(Selector):
    """Greedy max-min diversity (DivPrune): add the token least similar to everything selected.

    An empty row is seeded with DivPrune's first pick, the token whose most similar other token is
    least similar (:func:`tokenprune.functional.isolated_token`, one ``N x N`` similarity). On CPU a
    non-empty row continues from its selection at ``O(K N D)`` cost, in blocks of candidates.

    When the first pick has built the whole ``N x N`` similarity matrix anyway (and it fits in
    ``matrix_bytes``), the fill reads its rows instead of recomputing similarities. On CUDA the
    matrix is always built when it fits (images in groups that fit): one GEMM of ``2 N^2 D`` flops
    costs less than ``K`` mat-vecs that each re-read ``N x D`` tokens, and the fill is then one
    Triton kernel for all picks when Triton is installed (:mod:`tokenprune.functional._triton`),
    else a sync-free loop of a few small kernels per pick.

    Args:
        block_size: candidates evaluated per matrix product on CPU (see
            :func:`tokenprune.functional.select_maxmin`); ``0`` takes the route CUDA always takes
            (matrix when it fits, batched sync-free fill) on any device, so CPU tests cover it. Both
            give the same picks.
        matrix_bytes: the largest ``B x N x N`` similarity matrix kept for the fill (512 MiB);
            ``0`` never keeps it (the first pick is then computed in chunks).
    """

    block_size: int = 32
    matrix_bytes: int = 512 * 2**20

    def __post_init__(self) -> None:
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 0:
            raise ValueError(f"block_size must be an int >= 0; got {self.block_size!r}")

    def extend(self, tokens: TokenBatch, selection: Selection, target: tuple[int, ...]) -> Selection:
        add = selection.needed(target)
        if not any(add):
            return selection
        batch, n = tokens.batch_size, tokens.visual.shape[1]
        per_image = n * n * tokens.visual.element_size()
        gpu_route = tokens.visual.device.type == "cuda" or self.block_size == 0
        if gpu_route and 0 < per_image <= self.matrix_bytes:
            group = self.matrix_bytes // per_image  # images in groups whose similarity matrices fit together
            rows = [slice(b, b + group) for b in range(0, batch, group)] if group < batch else [slice(None)]
        elif gpu_route or batch == 1:  # no matrix: one batched loop
            rows = [slice(None)]
        else:  # CPU: one image at a time keeps its working set (and its N x N matrix) in cache
            rows = [slice(b, b + 1) for b in range(batch) if add[b]]
        # without padding, the tokens that may be picked are those not selected: no mask to build
        available = None if tokens.all_real else tokens.real & ~selection.mask
        if rows == [slice(None)]:  # the whole batch at once: no copy in and out
            return Selection(self._fill(tokens.visual, tokens.norms, available, selection, add), target)
        mask = selection.mask.clone()
        for row in rows:
            part = Selection(selection.mask[row], selection.counts[row])
            rest = None if available is None else available[row]
            mask[row] = self._fill(tokens.visual[row], tokens.norms[row], rest, part, add[row])
        return Selection(mask, target)

    def _fill(
        self, visual: Tensor, norms: Tensor, available: Tensor | None, selection: Selection, add: tuple
    ) -> Tensor:
        """The rows' selections extended by ``add[b]`` max-min picks (DivPrune's first pick if empty).

        ``available`` is None when every token not selected may be picked (no padding).
        """
        selected, counts = selection.mask, selection.counts
        unseeded = [c == 0 and a > 0 for c, a in zip(counts, add, strict=True)]
        sims = None
        batch, n, _ = visual.shape
        batched = visual.device.type == "cuda" or self.block_size == 0
        fits = batch * n * n * visual.element_size() <= self.matrix_bytes
        if fits and (any(unseeded) or (batched and any(add))):
            # for the first pick and every fill step; on a GPU one GEMM beats K memory-bound mat-vecs
            sims = similarity_matrix(visual, norms=norms)
        if any(unseeded):
            if available is None and not selection.is_empty:
                available = ~selected
            first = isolated_token(visual, available, norms=norms, sims=sims)
            seeded = mark_picks(first.unsqueeze(1), [int(u) for u in unseeded], n)
            selected = selected | seeded
            available = None if available is None else available & ~seeded
            counts = tuple(c + int(u) for c, u in zip(counts, unseeded, strict=True))
            add = tuple(a - int(u) for a, u in zip(add, unseeded, strict=True))
        return select_maxmin(
            visual,
            selected,
            available,
            counts,
            add,
            norms=norms,
            block_size=None if batched else self.block_size,
            sims=sims,
        )


@dataclass(frozen=True)
class Stride(Selector):
    """Evenly spaced positions among the available tokens (a uniform-subsampling control).

    ``start``: from the first available token on, every ``floor(n / add)``-th (VisionZip's contextual
    tokens), rather than the centres of equal segments (:func:`tokenprune.functional.select_stride`).
    """

    start: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.start, bool):
            raise ValueError(f"start must be a bool; got {self.start!r}")

    def extend(self, tokens: TokenBatch, selection: Selection, target: tuple[int, ...]) -> Selection:
        add = selection.needed(target)
        if not any(add):
            return selection
        return selection.added(select_stride(selection.available(tokens), add, start=self.start), add)


def core_size(core_ratio: float, k: int) -> int:
    """Core tokens in a budget of ``k``: ``floor(core_ratio * k + 0.5)`` clamped to ``[0, k]``.

    Example:
        >>> core_size(0.2, 58), core_size(0.5, 5), core_size(1.0, 58)
        (12, 3, 58)
    """
    return min(k, max(0, math.floor(core_ratio * k + 0.5)))


@dataclass(frozen=True)
class Hierarchical(Selector):
    """A core selector picks ``core_size(core_ratio, K)`` tokens, then a fill selector the rest.

    The fill continues from the core (a max-min fill measures diversity against the core too).
    ``core_ratio = 1`` is the core alone; ``core_ratio = 0`` is the fill alone (the core never runs).
    """

    core: Selector
    fill: Selector
    core_ratio: float = 0.5

    def __post_init__(self) -> None:
        ratio = self.core_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not (0.0 <= ratio <= 1.0):
            raise ValueError(f"core_ratio must be a number in [0, 1]; got {ratio!r}")
        sources = {self.core.score_source, self.fill.score_source} - {None}
        if len(sources) > 1:
            raise ValueError(f"core and fill take scores from different sources ({sorted(sources)}); use one")

    @property
    def requires(self) -> frozenset[str]:
        core = self.core.requires if self.core_ratio > 0 else frozenset()
        fill = self.fill.requires if self.core_ratio < 1 else frozenset()
        return core | fill

    @property
    def batch_invariant(self) -> bool:
        return self.core.batch_invariant and self.fill.batch_invariant

    @property
    def capturable(self) -> bool:
        return self.core.capturable and self.fill.capturable

    @property
    def score_source(self) -> str | None:
        return self.core.score_source or self.fill.score_source

    @property
    def prune_layer(self) -> int | None:
        return self.core.prune_layer if self.core.prune_layer is not None else self.fill.prune_layer

    def extend(self, tokens: TokenBatch, selection: Selection, target: tuple[int, ...]) -> Selection:
        return self.fill.extend(tokens, self._core(tokens, selection, target), target)

    def _core(self, tokens: TokenBatch, selection: Selection, target: tuple[int, ...]) -> Selection:
        """``selection`` extended by the core's share of what each row still needs."""
        core_target = tuple(
            c + core_size(self.core_ratio, t - c) for t, c in zip(target, selection.counts, strict=True)
        )
        return selection if core_target == selection.counts else self.core.extend(tokens, selection, core_target)


@dataclass(frozen=True)
class Contextual(Hierarchical):
    """A :class:`Hierarchical` whose fill tokens become *contextual* tokens (VisionZip).

    The core tokens (VisionZip's *dominant* tokens) are kept as they are. Every token neither selected
    is merged into the fill token it is most similar to by the merge metric (:meth:`Selector.plan`;
    inside a model the vision encoder's keys), and each fill token then stands for itself plus the
    mean of its members (:func:`tokenprune.functional.merge_into`). Called as a plain selector, it
    returns the kept tokens and merges nothing.
    """

    merges = True

    def assign(self, tokens: TokenBatch, target: tuple[int, ...], metric: Tensor) -> tuple[Selection, Tensor]:
        core = self._core(tokens, Selection.empty(tokens), target)
        selection = self.fill.extend(tokens, core, target)
        counts = [total - dominant for total, dominant in zip(selection.counts, core.counts, strict=True)]
        fill = mask_to_indices(selection.mask & ~core.mask, counts)  # (B, most fill tokens), -1 padded
        return selection, assign_nearest(metric, tokens.real & ~selection.mask, fill)

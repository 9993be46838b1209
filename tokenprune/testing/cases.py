"""Token batches for tests: a :class:`TokenCase` bundles every selector input and a budget."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from tokenprune.budget import Budget

__all__ = ["TokenCase", "degenerate_cases", "make_case"]


@dataclass(frozen=True)
class TokenCase:
    """Selector inputs plus a budget. ``scores`` is always present (methods ignore what they don't use)."""

    visual: Tensor
    prompt: Tensor
    scores: Tensor
    budget: Budget
    visual_mask: Tensor | None = None
    prompt_mask: Tensor | None = None
    label: str = ""

    def kwargs(self, *, without: tuple[str, ...] = ()) -> dict[str, Any]:
        """Keyword arguments for a selector call (visual excluded), leaving out the names in ``without``."""
        args = {
            "prompt": self.prompt,
            "budget": self.budget,
            "visual_mask": self.visual_mask,
            "prompt_mask": self.prompt_mask,
            "scores": self.scores,
        }
        if "prompt" in without:
            args["prompt_mask"] = None
        return {key: value for key, value in args.items() if key not in without}

    def to(self, device: torch.device | str) -> TokenCase:
        """The same case on ``device`` (generate on CPU, then move: the values are identical)."""

        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return replace(
            self,
            visual=move(self.visual),
            prompt=move(self.prompt),
            scores=move(self.scores),
            visual_mask=move(self.visual_mask),
            prompt_mask=move(self.prompt_mask),
        )

    def row(self, b: int) -> TokenCase:
        """Row ``b`` alone, as a batch of one."""

        def take(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[b : b + 1]

        return replace(
            self,
            visual=take(self.visual),
            prompt=take(self.prompt),
            scores=take(self.scores),
            visual_mask=take(self.visual_mask),
            prompt_mask=take(self.prompt_mask),
        )

    @property
    def real_counts(self) -> list[int]:
        batch, n = self.visual.shape[:2]
        return [n] * batch if self.visual_mask is None else self.visual_mask.sum(dim=1).tolist()

    def __repr__(self) -> str:
        def shape(t: Tensor | None) -> str:
            return "None" if t is None else str(tuple(t.shape))

        return (
            f"TokenCase({self.label!r}, visual={shape(self.visual)}, prompt={shape(self.prompt)}, "
            f"budget={self.budget!r}, visual_mask={shape(self.visual_mask)}, "
            f"real_counts={self.real_counts})"
        )


def make_case(
    batch: int = 2,
    tokens: int = 24,
    dim: int = 8,
    prompt_tokens: int = 5,
    *,
    budget: Budget = 0.25,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    real_counts: list[int] | None = None,
    prompt_counts: list[int] | None = None,
    duplicates: int = 0,
    zeros: int = 0,
    integer_values: bool = False,
    label: str = "",
) -> TokenCase:
    """A reproducible case from a seed, with optional degeneracies.

    Args:
        real_counts / prompt_counts: per-row real tokens; padding (random positions) is filled with
            huge values and NaN, which a selector must ignore.
        duplicates: tokens overwritten with a copy of another token (exact ties).
        zeros: tokens set to the zero vector.
        integer_values: draw values from {-1, 0, 1} (many exact ties in every similarity).
    """
    g = torch.Generator().manual_seed(seed)
    if integer_values:
        visual = torch.randint(-1, 2, (batch, tokens, dim), generator=g).to(dtype)
        prompt = torch.randint(-1, 2, (batch, prompt_tokens, dim), generator=g).to(dtype)
    else:
        visual = torch.randn(batch, tokens, dim, generator=g, dtype=torch.float64).to(dtype)
        prompt = torch.randn(batch, prompt_tokens, dim, generator=g, dtype=torch.float64).to(dtype)
    scores = torch.randint(0, 4, (batch, tokens), generator=g).to(dtype)  # coarse: ties on purpose
    for _ in range(duplicates):
        src, dst = torch.randint(0, tokens, (2,), generator=g).tolist()
        visual[:, dst] = visual[:, src]
    for _ in range(zeros):
        visual[:, int(torch.randint(0, tokens, (1,), generator=g))] = 0
    visual_mask = _mask(real_counts, batch, tokens, g)
    prompt_mask = _mask(prompt_counts, batch, prompt_tokens, g)
    if visual_mask is not None:
        visual = visual.masked_fill(~visual_mask.unsqueeze(-1), torch.finfo(dtype).max)
        visual[..., 0] = visual[..., 0].masked_fill(~visual_mask, float("nan"))
        scores = scores.masked_fill(~visual_mask, float("nan"))
    if prompt_mask is not None:
        prompt = prompt.masked_fill(~prompt_mask.unsqueeze(-1), float("nan"))
    return TokenCase(visual, prompt, scores, budget, visual_mask, prompt_mask, label)


def _mask(counts: list[int] | None, batch: int, size: int, g: torch.Generator) -> Tensor | None:
    if counts is None:
        return None
    if len(counts) != batch or not all(1 <= c <= size for c in counts):
        raise ValueError(f"counts must be {batch} ints in [1, {size}]; got {counts}")
    mask = torch.zeros(batch, size, dtype=torch.bool)
    for row, count in enumerate(counts):
        mask[row, torch.randperm(size, generator=g)[:count]] = True
    return mask


def degenerate_cases(dtype: torch.dtype = torch.float32) -> list[TokenCase]:
    """A fixed battery of edge cases every selector must handle."""
    return [
        make_case(label="plain", dtype=dtype),
        make_case(budget=1.0, label="K = N", dtype=dtype),
        make_case(budget=1, label="K = 1", dtype=dtype),
        make_case(batch=1, tokens=1, budget=1, label="one token", dtype=dtype),
        make_case(duplicates=12, budget=0.5, label="duplicate tokens", dtype=dtype),
        make_case(tokens=6, duplicates=30, budget=1.0, label="all duplicates, K = N", dtype=dtype),
        make_case(zeros=5, budget=0.5, label="zero vectors", dtype=dtype),
        make_case(integer_values=True, budget=0.4, label="integer values (ties)", dtype=dtype),
        make_case(prompt_tokens=1, label="single prompt token", dtype=dtype),
        make_case(batch=3, real_counts=[24, 7, 1], prompt_counts=[5, 1, 3], budget=0.3, label="ragged", dtype=dtype),
        make_case(batch=3, real_counts=[20, 9, 16], budget=5, label="ragged, int budget", dtype=dtype),
        make_case(batch=2, tokens=40, dim=3, budget=0.9, label="D < K", dtype=dtype),
    ]

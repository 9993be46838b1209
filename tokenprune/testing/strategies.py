"""Hypothesis strategies for selector inputs, public so plugin authors can test their methods.

    >>> from hypothesis import given
    >>> from tokenprune.testing import assert_conforms, token_cases
    >>> @given(token_cases())
    ... def test_my_method(case):
    ...     assert_conforms(my_selector, case)

Sizes and degeneracies are drawn by hypothesis (so failures shrink to small, readable cases);
values come from a seeded torch generator (fast, reproducible).
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from tokenprune.testing.cases import TokenCase, make_case

__all__ = ["budgets", "token_cases"]


def budgets(real_counts: list[int]) -> st.SearchStrategy[int | float]:
    """Valid budgets for images with these real-token counts: ints, ratios, K = N and K = 1 mixed in."""
    smallest = min(real_counts)
    return st.one_of(
        st.just(1),
        st.just(1.0),
        st.integers(1, smallest),
        st.floats(0.01, 1.0, allow_nan=False, exclude_min=False),
        st.sampled_from([0.1, 0.25, 0.5]),
    )


@st.composite
def token_cases(
    draw: st.DrawFn,
    *,
    max_batch: int = 3,
    max_tokens: int = 32,
    max_dim: int = 12,
    max_prompt: int = 6,
    ragged: bool = True,
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64),
) -> TokenCase:
    """Draw a :class:`TokenCase`: shapes, budget, and degenerate structure.

    Mixed in: duplicate tokens, zero vectors, integer-valued tokens (exact ties), one prompt
    token, one visual token, K = N, K = 1, ragged visual and prompt masks with garbage padding.
    """
    batch = draw(st.integers(1, max_batch))
    tokens = draw(st.integers(1, max_tokens))
    dim = draw(st.integers(1, max_dim))
    prompt_tokens = draw(st.one_of(st.just(1), st.integers(1, max_prompt)))
    real_counts = prompt_counts = None
    if ragged and draw(st.booleans()):
        real_counts = draw(st.lists(st.integers(1, tokens), min_size=batch, max_size=batch))
        prompt_counts = draw(st.lists(st.integers(1, prompt_tokens), min_size=batch, max_size=batch))
    counts = real_counts or [tokens] * batch
    return make_case(
        batch,
        tokens,
        dim,
        prompt_tokens,
        budget=draw(budgets(counts)),
        seed=draw(st.integers(0, 2**32 - 1)),
        dtype=draw(st.sampled_from(dtypes)),
        real_counts=real_counts,
        prompt_counts=prompt_counts,
        duplicates=draw(st.sampled_from([0, 0, 1, tokens])),
        zeros=draw(st.sampled_from([0, 0, 1, 3])),
        integer_values=draw(st.booleans()),
        label="hypothesis",
    )

"""Budgets: the one place where a budget becomes a number of tokens per image."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

from tokenprune.errors import BudgetError

__all__ = ["Budget", "resolve_budget"]

Budget = int | float
"""An int ``K`` (tokens kept per image) or a float ratio in ``(0, 1]`` of each image's real tokens."""


def resolve_budget(budget: Budget, counts: Sequence[int], *, names: Sequence[str] | None = None) -> tuple[int, ...]:
    """Tokens to keep per image.

    An int keeps exactly ``budget`` tokens in every image. A float ratio ``r`` in ``(0, 1]`` keeps
    ``max(1, floor(r * N + 0.5))`` of an image's ``N`` real tokens (half rounds up).

    Args:
        budget: an int ``K >= 1`` or a float ratio in ``(0, 1]``.
        counts: real visual tokens per image.
        names: what an error calls each entry of ``counts`` (e.g. ``"video 0"``); ``"image <row>"`` when None.

    Returns:
        ``K`` per image.

    Raises:
        BudgetError: a bool, a non-number, a ratio outside ``(0, 1]``, ``K < 1`` or ``K > N``.

    Example:
        >>> resolve_budget(0.1, [576, 2880])
        (58, 288)
        >>> resolve_budget(64, [576, 100])
        (64, 64)
    """
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise BudgetError(
            f"budget must be an int (tokens kept per image) or a float ratio in (0, 1]; "
            f"got {budget!r} of type {type(budget).__name__}"
        )
    if isinstance(budget, numbers.Integral):
        k = int(budget)
        if k < 1:
            raise BudgetError(f"budget={k} keeps no token; pass an int >= 1 or a ratio in (0, 1] such as 0.1")
        for row, n in enumerate(counts):
            if k > n:
                where = f" in {names[row]}" if names is not None else (f" in image {row}" if len(counts) > 1 else "")
                raise BudgetError(
                    f"budget={k} exceeds the {n} visual tokens{where}. Pass a ratio such as 0.25 or an int <= {n}."
                )
        return tuple(k for _ in counts)
    ratio = float(budget)
    if not (0.0 < ratio <= 1.0) or math.isnan(ratio):
        raise BudgetError(
            f"a float budget is a ratio of the visual tokens and must lie in (0, 1]; got {budget!r}. "
            f"Pass an int to keep a fixed number of tokens."
        )
    return tuple(max(1, math.floor(ratio * n + 0.5)) for n in counts)

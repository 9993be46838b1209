"""The selector contract, as one check any method can be run through.

:func:`assert_conforms` checks, on one case or on the fixed battery of
:func:`~tokenprune.testing.degenerate_cases`: shape ``(B, K)``, int64, on the input's device,
in range, real tokens only, unique and ascending, ``-1`` padding only at the end of ragged rows,
deterministic, batched == row by row (unless the selector declares ``batch_invariant = False``),
unbatched ``(N, D)`` input gives ``(K,)``, inputs not mutated, and the right errors for bad budgets
and missing inputs. For every selector, ``plan`` gives the call's indices and an owner map that is
``-1`` at kept tokens and padding and names only kept tokens (none at all when it does not merge);
a merging selector's plan is deterministic and, when batch invariant, the same row by row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from tokenprune.budget import resolve_budget
from tokenprune.errors import BudgetError, MissingInputError
from tokenprune.selector import Selector
from tokenprune.testing.cases import TokenCase, degenerate_cases

__all__ = ["assert_conforms", "check_output"]


def _fail(selector: Selector, case: TokenCase, what: str) -> AssertionError:
    return AssertionError(f"{selector!r} on {case!r}: {what}")


def check_output(selector: Selector, case: TokenCase, out: Tensor) -> list[int]:
    """Assert that ``out`` is a valid selection for ``case``; returns the expected per-row K."""
    expected = resolve_budget(case.budget, case.real_counts)
    batch = case.visual.shape[0]
    if not isinstance(out, Tensor):
        raise _fail(selector, case, f"returned {type(out).__name__}, expected a Tensor")
    if out.dtype != torch.int64:
        raise _fail(selector, case, f"dtype {out.dtype}, expected torch.int64")
    if out.device != case.visual.device:
        raise _fail(selector, case, f"output on {out.device}, input on {case.visual.device}")
    if tuple(out.shape) != (batch, max(expected)):
        raise _fail(selector, case, f"shape {tuple(out.shape)}, expected {(batch, max(expected))} for K={expected}")
    n = case.visual.shape[1]
    real = case.visual_mask if case.visual_mask is not None else torch.ones(batch, n, dtype=torch.bool)
    for b, (row, k) in enumerate(zip(out.cpu(), expected, strict=True)):
        kept, pad = row[:k], row[k:]
        if not bool((pad == -1).all()):
            raise _fail(selector, case, f"row {b}: padding after the first {k} entries must be -1; got {row.tolist()}")
        if bool(((kept < 0) | (kept >= n)).any()):
            raise _fail(selector, case, f"row {b}: index out of [0, {n}): {kept.tolist()}")
        if k > 1 and not bool((kept[1:] > kept[:-1]).all()):
            raise _fail(selector, case, f"row {b}: not strictly ascending (duplicates or unsorted): {kept.tolist()}")
        if not bool(real[b].cpu()[kept].all()):
            raise _fail(selector, case, f"row {b}: selected padding tokens: {kept.tolist()}")
    return list(expected)


_INPUTS = ("visual", "prompt", "scores", "visual_mask", "prompt_mask")


def _snapshot(case: TokenCase) -> list[Tensor | None]:
    return [None if getattr(case, name) is None else getattr(case, name).clone() for name in _INPUTS]


def _same(old: Tensor, new: Tensor) -> bool:
    """Equal, value for value: NaN where NaN was (garbage padding holds some), and nothing else changed."""
    if old.is_floating_point():
        return torch.allclose(old, new, rtol=0.0, atol=0.0, equal_nan=True)
    return torch.equal(old, new)


def _raises(error: type[Exception], call: Callable[[], object]) -> bool:
    try:
        call()
    except error:
        return True
    return False


def assert_conforms(
    selector: Selector,
    case: TokenCase | Iterable[TokenCase] | None = None,
    *,
    device: torch.device | str | None = None,
) -> None:
    """Raise ``AssertionError`` describing the first broken rule of the selector contract.

    Args:
        selector: any :class:`tokenprune.Selector`, e.g. ``tokenprune.create_method("zspa")``.
        case: one case, several, or None for :func:`~tokenprune.testing.degenerate_cases`.
        device: move the (CPU-generated) cases there first.

    Example:
        >>> import tokenprune
        >>> from tokenprune.testing import assert_conforms
        >>> assert_conforms(tokenprune.create_method("divprune"))
    """
    cases = degenerate_cases() if case is None else [case] if isinstance(case, TokenCase) else list(case)
    for one in cases:
        _check_case(selector, one if device is None else one.to(device))


def _check_plan(selector: Selector, case: TokenCase, out: Tensor, expected: list[int]) -> None:
    plan = selector.plan(case.visual, **case.kwargs())
    if not torch.equal(plan.indices, out):
        raise _fail(selector, case, f"plan kept {plan.indices.tolist()}, the call {out.tolist()}")
    owner, (batch, n) = plan.owner, case.visual.shape[:2]
    if not isinstance(owner, Tensor) or owner.dtype != torch.int64 or tuple(owner.shape) != (batch, n):
        raise _fail(selector, case, f"plan's owner map is {owner!r}, expected int64 of shape {(batch, n)}")
    real = (case.visual_mask if case.visual_mask is not None else torch.ones(batch, n, dtype=torch.bool)).cpu()
    for b, (row, k) in enumerate(zip(owner.cpu(), expected, strict=True)):  # on the host: no read per token
        kept = set(out[b, :k].tolist())
        joined = set(row[row >= 0].tolist())
        if not selector.merges and joined:
            raise _fail(selector, case, f"row {b}: merges tokens into {sorted(joined)} but merges is False")
        if not joined <= kept:
            raise _fail(selector, case, f"row {b}: tokens join {sorted(joined - kept)}, which are not kept")
        holders = [j for j in range(n) if row[j] >= 0 and (j in kept or not bool(real[b, j]))]
        if holders:
            raise _fail(selector, case, f"row {b}: kept or padding tokens {holders} join another token")
    if not selector.merges:
        return
    if not torch.equal(selector.plan(case.visual, **case.kwargs()).owner, owner):
        raise _fail(selector, case, "plan is not deterministic")
    if selector.batch_invariant and batch > 1:
        for b in range(batch):
            alone = selector.plan(case.row(b).visual, **case.row(b).kwargs()).owner[0]
            if not torch.equal(alone, owner[b]):
                raise _fail(selector, case, f"row {b} alone joins {alone.tolist()}, in the batch {owner[b].tolist()}")


def _check_case(selector: Selector, case: TokenCase) -> None:
    before = _snapshot(case)
    out = selector(case.visual, **case.kwargs())
    expected = check_output(selector, case, out)
    for name, old, new in zip(_INPUTS, before, _snapshot(case), strict=True):
        if old is not None and not _same(old, new):
            raise _fail(selector, case, f"mutated its input {name!r}")

    again = selector(case.visual, **case.kwargs())
    if not torch.equal(out, again):
        raise _fail(selector, case, f"not deterministic: {out.tolist()} then {again.tolist()}")

    if selector.batch_invariant and case.visual.shape[0] > 1:
        for b, k in enumerate(expected):
            alone = selector(case.row(b).visual, **case.row(b).kwargs())
            if not torch.equal(alone[0], out[b, :k]):
                raise _fail(
                    selector, case, f"row {b} alone gives {alone[0].tolist()}, in the batch {out[b, :k].tolist()}"
                )

    first = case.row(0)
    unbatched = selector(
        first.visual[0],
        **{
            key: (value[0] if isinstance(value, Tensor) else value)
            for key, value in first.kwargs().items()
            if value is not None
        },
    )
    if unbatched.dim() != 1 or unbatched.shape[0] != expected[0]:
        raise _fail(selector, case, f"unbatched input gave shape {tuple(unbatched.shape)}, expected ({expected[0]},)")
    if selector.batch_invariant and not torch.equal(unbatched, out[0, : expected[0]]):
        raise _fail(selector, case, f"unbatched row 0 gives {unbatched.tolist()}, batched {out[0].tolist()}")

    _check_plan(selector, case, out, expected)

    too_many = max(case.real_counts) + 1
    for bad in (0, too_many, 1.5, 0.0, -0.1, True, "0.1"):
        args = case.kwargs()
        args["budget"] = bad
        if not _raises(BudgetError, lambda args=args: selector(case.visual, **args)):
            raise _fail(selector, case, f"budget={bad!r} did not raise BudgetError")
    for name in selector.requires:
        if not _raises(MissingInputError, lambda name=name: selector(case.visual, **case.kwargs(without=(name,)))):
            raise _fail(selector, case, f"calling without {name}= did not raise MissingInputError")

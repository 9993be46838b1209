import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenprune import BudgetError, resolve_budget


@given(ratio=st.floats(1e-6, 1.0), n=st.integers(1, 10_000))
def test_ratio_rounds_half_up_and_keeps_at_least_one(ratio, n):
    (k,) = resolve_budget(ratio, [n])
    assert k == max(1, math.floor(ratio * n + 0.5))
    assert 1 <= k <= n


def test_paper_budgets():
    assert resolve_budget(0.1, [576]) == (58,)  # the paper's 58 of LLaVA-1.5's 576
    assert resolve_budget(0.1, [2880]) == (288,)
    assert resolve_budget(0.5, [5]) == (3,)  # 2.5 rounds up
    assert resolve_budget(1.0, [7, 3]) == (7, 3)


def test_ratio_is_per_image():
    assert resolve_budget(0.25, [576, 100, 1]) == (144, 25, 1)


def test_int_budget_is_the_same_everywhere():
    assert resolve_budget(58, [576, 58]) == (58, 58)


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        (700, r"budget=700 exceeds the 576 visual tokens\. Pass a ratio such as 0\.25 or an int <= 576"),
        (0, "keeps no token"),
        (-3, "keeps no token"),
        (1.5, r"ratio .* \(0, 1\]; got 1\.5"),
        (0.0, r"\(0, 1\]"),
        (float("nan"), r"\(0, 1\]"),
        (True, "got True of type bool"),
        ("0.1", "got '0.1' of type str"),
        (None, "got None"),
    ],
)
def test_bad_budgets(budget, message):
    with pytest.raises(BudgetError, match=message):
        resolve_budget(budget, [576])


def test_int_budget_over_one_image_of_a_batch_names_it():
    with pytest.raises(BudgetError, match="exceeds the 40 visual tokens in image 1"):
        resolve_budget(50, [576, 40])


def test_budget_error_is_a_value_error():
    with pytest.raises(ValueError):
        resolve_budget(0, [3])

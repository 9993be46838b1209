"""Paired significance tests: McNemar against a hand-written binomial sum, bootstrap properties."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import binomtest

import tokenprune.evaluation.significance as significance
from tokenprune.errors import InputError
from tokenprune.evaluation.metrics import mean_statistic, pope_f1_statistic, pope_outcomes, pope_scores
from tokenprune.evaluation.significance import (
    BootstrapResult,
    McNemarResult,
    compare_metric,
    compare_paired,
    mcnemar_exact,
    paired_bootstrap,
)

# --- McNemar ----------------------------------------------------------------------------------


def table(b00: int, b01: int, b10: int, b11: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Paired outcomes with the given 2x2 table, in a shuffled order."""
    pairs = [(0, 0)] * b00 + [(0, 1)] * b01 + [(1, 0)] * b10 + [(1, 1)] * b11
    order = np.random.default_rng(seed).permutation(len(pairs))
    return [pairs[i][0] for i in order], [pairs[i][1] for i in order]


def exact_binomial_p(b01: int, b10: int) -> float:
    """Two-sided exact McNemar p-value as a plain binomial sum: 2 * P(X <= min) for X ~ Bin(b01 + b10, 1/2)."""
    n = b01 + b10
    if n == 0:
        return 1.0
    k = min(b01, b10)
    tail = Fraction(sum(math.comb(n, i) for i in range(k + 1)), 2**n)
    return float(min(Fraction(1), 2 * tail))


TABLES = [
    (5, 0, 0, 5),
    (0, 1, 0, 0),
    (3, 0, 5, 2),
    (10, 3, 7, 20),
    (1, 10, 10, 1),
    (4, 2, 15, 9),
    (50, 40, 60, 50),
    (0, 0, 25, 0),
    (200, 100, 130, 300),
]


@pytest.mark.parametrize(("b00", "b01", "b10", "b11"), TABLES)
def test_mcnemar_matches_manual_binomial_sum(b00, b01, b10, b11):
    a, b = table(b00, b01, b10, b11)
    result = mcnemar_exact(a, b)
    assert (result.b00, result.b01, result.b10, result.b11, result.n) == (b00, b01, b10, b11, b00 + b01 + b10 + b11)
    assert result.p_value == pytest.approx(exact_binomial_p(b01, b10), rel=1e-9, abs=1e-300)
    if b01 + b10:
        assert result.p_value == pytest.approx(binomtest(b01, b01 + b10, 0.5).pvalue, rel=1e-9)
    n = result.n
    assert result.accuracy_a == pytest.approx((b10 + b11) / n)
    assert result.accuracy_b == pytest.approx((b01 + b11) / n)
    assert result.difference == pytest.approx(result.accuracy_a - result.accuracy_b)


def test_mcnemar_hand_computed_small_cases():
    assert mcnemar_exact(*table(0, 0, 3, 1)).p_value == 0.25  # 2 * (1/2)^3
    assert mcnemar_exact(*table(0, 1, 4, 0)).p_value == pytest.approx(2 * 6 / 32)  # 2 * (1 + 5) / 2^5
    assert mcnemar_exact(*table(0, 3, 3, 0)).p_value == 1.0


def test_mcnemar_no_discordant_pairs_gives_one():
    result = mcnemar_exact([1, 0, 1, 1], [True, False, True, True])
    assert (result.b01, result.b10, result.p_value, result.difference) == (0, 0, 1.0, 0.0)


@pytest.mark.parametrize(("b00", "b01", "b10", "b11"), TABLES)
def test_mcnemar_is_symmetric(b00, b01, b10, b11):
    a, b = table(b00, b01, b10, b11, seed=1)
    forward, backward = mcnemar_exact(a, b), mcnemar_exact(b, a)
    assert forward.p_value == backward.p_value
    assert (forward.b01, forward.b10) == (backward.b10, backward.b01)
    assert forward.difference == -backward.difference


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60))
def test_mcnemar_properties(pairs):
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    result = mcnemar_exact(a, b)
    assert 0.0 < result.p_value <= 1.0
    assert result.b00 + result.b01 + result.b10 + result.b11 == len(pairs)
    assert result.p_value == pytest.approx(exact_binomial_p(result.b01, result.b10), rel=1e-9)
    assert mcnemar_exact(b, a).p_value == result.p_value


def test_mcnemar_accepts_bools_ints_floats_and_arrays():
    expected = mcnemar_exact([1, 1, 0, 1], [0, 1, 0, 0])
    assert mcnemar_exact([True, True, False, True], [False, True, False, False]) == expected
    assert mcnemar_exact(np.array([1.0, 1.0, 0.0, 1.0]), (0.0, 1.0, 0.0, 0.0)) == expected


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        ([1, 0], [1], "same samples; got 2 and 1 outcomes"),
        ([], [], "no samples"),
        ([1, 2], [1, 0], "0/1 outcomes .*; got 2 at index 1. For scores such as VQA accuracy use paired_bootstrap"),
        ([0.3, 1.0], [1, 0], "got 0.3 at index 0"),
        ([None, 1], [1, 0], "numbers or bools; got dtype object"),
        (["1", "0"], [1, 0], "numbers or bools; got dtype <U1"),
        ("10", [1, 0], "got the string '10'"),
        ([[1, 0]], [[1, 0]], "1-D sequence of 0/1 outcomes; got shape"),
    ],
)
def test_mcnemar_bad_input(a, b, message):
    with pytest.raises(InputError, match=message):
        mcnemar_exact(a, b)


# --- paired bootstrap -------------------------------------------------------------------------


def scores(n: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return np.clip(np.random.default_rng(seed).random(n) + shift, 0.0, 1.0)


def test_bootstrap_is_deterministic_for_a_seed():
    a, b = scores(200, 1), scores(200, 2)
    first = paired_bootstrap(a, b, n_resamples=2000, seed=7)
    assert paired_bootstrap(list(a), list(b), n_resamples=2000, seed=7) == first
    other = paired_bootstrap(a, b, n_resamples=2000, seed=8)
    assert other.difference == first.difference
    assert (other.ci_low, other.ci_high) != (first.ci_low, first.ci_high)


def test_bootstrap_does_not_depend_on_chunking(monkeypatch):
    a, b = scores(37, 3), scores(37, 4)
    whole = paired_bootstrap(a, b, n_resamples=500, seed=3)
    monkeypatch.setattr(significance, "_CHUNK_ELEMENTS", 37 * 3 + 5)  # chunks of 3 rows, last one short
    assert paired_bootstrap(a, b, n_resamples=500, seed=3) == whole


def test_bootstrap_matches_a_plain_loop():
    """The documented method, one resample at a time: same indices, percentile CI, doubled tail share."""
    a, b = scores(50, 5, shift=0.1), scores(50, 6)
    result = paired_bootstrap(a, b, n_resamples=3000, confidence=0.9, seed=11)
    rng = np.random.default_rng(11)
    diffs = []
    for _ in range(3000):
        index = rng.integers(0, 50, size=50)
        diffs.append(a[index].mean() - b[index].mean())
    diffs = np.array(diffs)
    observed = a.mean() - b.mean()
    assert result.difference == pytest.approx(observed, abs=1e-15)
    assert result.ci_low == pytest.approx(np.percentile(diffs, 5), abs=1e-12)
    assert result.ci_high == pytest.approx(np.percentile(diffs, 95), abs=1e-12)
    other_side = np.mean(diffs <= 0) if observed > 0 else np.mean(diffs >= 0)
    assert result.p_value == pytest.approx(min(1.0, 2 * other_side))


def test_bootstrap_clear_effect_ci_contains_truth_and_excludes_zero():
    rng = np.random.default_rng(2024)
    b = rng.random(500)
    a = np.clip(b + 0.2 + rng.normal(0, 0.05, 500), -5, 5)  # a true mean difference of 0.2
    result = paired_bootstrap(a, b, seed=0)
    assert result.ci_low < 0.2 < result.ci_high
    assert result.ci_low > 0
    assert result.p_value == 0.0  # below the 2 / n_resamples resolution
    assert result.n_resamples == 10_000


def test_bootstrap_identical_inputs_give_p_one():
    a = scores(100, 9)
    result = paired_bootstrap(a, a.copy(), n_resamples=500)
    assert (result.difference, result.p_value, result.ci_low, result.ci_high) == (0.0, 1.0, 0.0, 0.0)


def test_bootstrap_zero_difference_gives_p_one():
    result = paired_bootstrap([1.0, 0.0, 0.5, 0.5], [0.0, 1.0, 0.5, 0.5], n_resamples=500)
    assert result.difference == 0.0
    assert result.p_value == 1.0
    assert result.ci_low < 0 < result.ci_high


def test_bootstrap_no_effect_has_a_large_p_value():
    a, b = scores(300, 21), scores(300, 22)
    b = b - b.mean() + a.mean() + 1e-3  # nearly equal means, unrelated samples
    assert paired_bootstrap(a, b, n_resamples=2000).p_value > 0.5


@pytest.mark.parametrize("seed", range(6))
def test_bootstrap_p_value_agrees_with_the_interval(seed):
    a, b = scores(80, seed, shift=0.05 * seed), scores(80, 100 + seed)
    result = paired_bootstrap(a, b, n_resamples=4000, confidence=0.95, seed=seed)
    if abs(result.p_value - 0.05) > 0.01:  # away from the boundary, where interpolation could differ
        assert (result.p_value < 0.05) == (result.ci_low > 0 or result.ci_high < 0)


@given(
    st.lists(st.tuples(st.sampled_from([0.0, 0.3, 0.6, 0.9, 1.0]), st.floats(0, 1)), min_size=2, max_size=30),
    st.integers(0, 2**32 - 1),
)
def test_bootstrap_swap_is_antisymmetric(pairs, seed):
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    forward = paired_bootstrap(a, b, n_resamples=200, seed=seed)
    backward = paired_bootstrap(b, a, n_resamples=200, seed=seed)
    assert backward.difference == -forward.difference
    assert backward.ci_low == pytest.approx(-forward.ci_high, abs=1e-12)
    assert backward.ci_high == pytest.approx(-forward.ci_low, abs=1e-12)
    assert backward.p_value == forward.p_value
    assert (backward.value_a, backward.value_b) == (forward.value_b, forward.value_a)


@given(
    st.lists(st.floats(0, 1), min_size=2, max_size=30),
    st.lists(st.floats(0, 1), min_size=2, max_size=30),
    st.floats(0.5, 0.99),
)
def test_bootstrap_result_is_well_formed(a, b, confidence):
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    result = paired_bootstrap(a, b, n_resamples=200, confidence=confidence, seed=1)
    assert result.ci_low <= result.ci_high
    assert 0.0 <= result.p_value <= 1.0
    assert (result.p_value * 200 / 2) == pytest.approx(round(result.p_value * 200 / 2)) or result.p_value == 1.0
    assert result.value_a == pytest.approx(float(np.mean(a)))
    assert result.difference == result.value_a - result.value_b


def test_bootstrap_pope_f1_recomputes_f1_per_resample():
    rng = np.random.default_rng(5)
    labels = list(rng.random(120) < 0.5)
    pred_a = [lab if rng.random() < 0.85 else (None if rng.random() < 0.3 else not lab) for lab in labels]
    pred_b = [True if rng.random() < 0.4 else lab for lab in labels]
    xa, xb = pope_outcomes(pred_a, labels), pope_outcomes(pred_b, labels)
    result = paired_bootstrap(xa, xb, n_resamples=300, seed=4, statistic=pope_f1_statistic)
    assert result.value_a == pytest.approx(pope_scores(pred_a, labels)["f1"])
    assert result.value_b == pytest.approx(pope_scores(pred_b, labels)["f1"])
    assert result.statistic == "pope_f1_statistic"
    # the same resamples, scored one at a time with pope_scores
    rng = np.random.default_rng(4)
    diffs = []
    for _ in range(300):
        index = rng.integers(0, 120, size=120)
        f1 = [pope_scores([p[i] for i in index], [labels[i] for i in index])["f1"] for p in (pred_a, pred_b)]
        diffs.append(f1[0] - f1[1])
    assert result.ci_low == pytest.approx(np.percentile(diffs, 2.5), abs=1e-12)
    assert result.ci_high == pytest.approx(np.percentile(diffs, 97.5), abs=1e-12)
    swapped = paired_bootstrap(xb, xa, n_resamples=300, seed=4, statistic=pope_f1_statistic)
    assert swapped.difference == -result.difference and swapped.p_value == result.p_value


def test_bootstrap_custom_statistic():
    a, b = scores(60, 1), scores(60, 2)

    def median(x):
        return np.median(x, axis=1)

    result = paired_bootstrap(a, b, n_resamples=300, statistic=median)
    assert result.statistic == "median"
    assert result.value_a == pytest.approx(np.median(a))


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "message"),
    [
        ([0.1, 0.2], [0.1], {}, r"same shape \(paired samples\); got \(2,\) and \(1,\)"),
        ([0.1], [0.2], {}, "at least 2 samples; got 1"),
        ([0.1, float("nan")], [0.1, 0.2], {}, r"finite values; got nan at index 1"),
        ([0.1, 0.2], ["a", "b"], {}, "numbers or bools"),
        (0.5, 0.5, {}, "sequence of per-sample values; got a scalar"),
        ([0.1, 0.2], [0.1, 0.2], {"n_resamples": 0}, "n_resamples must be an int >= 1"),
        ([0.1, 0.2], [0.1, 0.2], {"n_resamples": 10.5}, "n_resamples must be an int >= 1"),
        ([0.1, 0.2], [0.1, 0.2], {"confidence": 1.0}, r"confidence must be a number in \(0, 1\)"),
        ([0.1, 0.2], [0.1, 0.2], {"confidence": 95}, r"confidence must be a number in \(0, 1\)"),
        ([0.1, 0.2], [0.1, 0.2], {"seed": -1}, "seed must be an int >= 0"),
        ([0.1, 0.2], [0.1, 0.2], {"seed": None}, "seed must be an int >= 0"),
        ([0.1, 0.2], [0.1, 0.2], {"statistic": np.mean}, r"must map an \(R, n, \.\.\.\) array to shape \(R,\)"),
    ],
)
def test_bootstrap_bad_input(a, b, kwargs, message):
    with pytest.raises(InputError, match=message):
        paired_bootstrap(a, b, **kwargs)


# --- dispatch and results ---------------------------------------------------------------------


def test_compare_paired_dispatches():
    a, b = table(3, 2, 6, 9)
    assert compare_paired(a, b, binary=True) == mcnemar_exact(a, b)
    x, y = scores(40, 1), scores(40, 2)
    assert compare_paired(x, y, binary=False, n_resamples=100, seed=3) == paired_bootstrap(
        x, y, n_resamples=100, seed=3, statistic=mean_statistic
    )
    with pytest.raises(InputError, match="statistic applies to the bootstrap"):
        compare_paired(a, b, binary=True, statistic=mean_statistic)
    with pytest.raises(InputError, match=r"binary must be True .* or False .*; got 'yes'"):
        compare_paired(a, b, binary="yes")


def test_compare_metric_uses_the_registry():
    assert isinstance(compare_metric("exact_match", [1.0, 0.0, 1.0], [0.0, 0.0, 1.0]), McNemarResult)
    assert isinstance(compare_metric("relaxed_accuracy", [1, 0, 1], [0, 0, 1]), McNemarResult)
    vqa = compare_metric("vqa_accuracy", [0.3, 0.6, 1.0, 0.9], [0.3, 0.3, 1.0, 0.6], n_resamples=200)
    assert isinstance(vqa, BootstrapResult) and vqa.statistic == "mean_statistic"
    pope = compare_metric("pope_f1", [(True, True), (False, False)], [(None, True), (False, False)], n_resamples=200)
    assert (pope.statistic, pope.value_a, pope.value_b) == ("pope_f1_statistic", 1.0, 0.0)
    with pytest.raises(InputError, match=re.escape("binary scores: expected 0 or 1; got 0.3")):
        compare_metric("exact_match", [0.3, 1.0], [1.0, 1.0])
    with pytest.raises(InputError, match="unknown metric"):
        compare_metric("f1", [1.0], [1.0])


def test_results_are_frozen_and_json_ready():
    mc = mcnemar_exact(*table(1, 2, 8, 3))
    boot = paired_bootstrap(scores(30, 1), scores(30, 2), n_resamples=100)
    for result in (mc, boot):
        data = result.as_dict()
        assert data["test"] == result.test
        assert json.loads(json.dumps(data)) == data
        assert all(type(v) in (int, float, str) for v in data.values())
        with pytest.raises(dataclasses.FrozenInstanceError):
            result.p_value = 0.5
    assert mc.as_dict()["test"] == "mcnemar_exact" and boot.as_dict()["test"] == "paired_bootstrap"
    assert set(mc.as_dict()) == {
        "test",
        "n",
        "b00",
        "b01",
        "b10",
        "b11",
        "accuracy_a",
        "accuracy_b",
        "difference",
        "ci_low",
        "ci_high",
        "confidence",
        "p_value",
    }


# --- the interval of McNemar's difference --------------------------------------------------------


@given(st.integers(0, 40), st.integers(0, 40), st.integers(0, 40), st.integers(0, 40))
def test_mcnemar_interval_is_agresti_mins_adjusted_wald_and_mirrors_when_swapped(b00, b01, b10, b11):
    if b00 + b01 + b10 + b11 == 0:
        return
    a, b = table(b00, b01, b10, b11)
    result = mcnemar_exact(a, b)
    n = b00 + b01 + b10 + b11
    # written from Agresti & Min (2005): half a count in each cell, then Wald on n + 2
    p10, p01 = (b10 + 0.5) / (n + 2), (b01 + 0.5) / (n + 2)
    d = p10 - p01
    se = math.sqrt((p10 + p01 - d * d) / (n + 2))
    assert result.ci_low == pytest.approx(max(-1.0, d - 1.959963984540054 * se), abs=1e-12)
    assert result.ci_high == pytest.approx(min(1.0, d + 1.959963984540054 * se), abs=1e-12)
    assert result.ci_low < result.ci_high and result.confidence == 0.95
    swapped = mcnemar_exact(b, a)
    assert (swapped.ci_low, swapped.ci_high) == pytest.approx((-result.ci_high, -result.ci_low), abs=1e-12)


def test_mcnemar_interval_covers_the_true_difference_about_as_often_as_it_says():
    """Correlated pairs (A right 70 %, B 58 %, agreeing often): the 95 % interval covers 0.12 in 93-97 % of runs."""
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(2000):
        u = rng.random(120)
        a = (u < 0.7).astype(int)  # A right when u < 0.7; B when u < 0.6, then 10 % of B flipped
        b = (u < 0.6).astype(int) ^ (rng.random(120) < 0.1)  # P(B) = 0.6 * 0.9 + 0.4 * 0.1 = 0.58
        result = mcnemar_exact(a, b, confidence=0.95)
        hits += result.ci_low <= 0.7 - 0.58 <= result.ci_high
    assert 0.93 <= hits / 2000 <= 0.97


def test_mcnemar_interval_without_discordant_samples_still_has_a_width():
    result = mcnemar_exact([1, 0] * 25, [1, 0] * 25)
    assert result.difference == 0 and result.ci_low < 0 < result.ci_high and result.ci_high < 0.05
    narrow = mcnemar_exact(*table(10, 5, 20, 65), confidence=0.5)
    wide = mcnemar_exact(*table(10, 5, 20, 65), confidence=0.99)
    assert wide.ci_low < narrow.ci_low < narrow.difference < narrow.ci_high < wide.ci_high
    with pytest.raises(InputError, match="confidence must be a number in"):
        mcnemar_exact([1, 0], [0, 1], confidence=0)


# --- Holm's adjustment ---------------------------------------------------------------------------


def _holm_rejects(p_values, alpha):
    """Holm's step-down procedure as written in the paper: reject the smallest while p_(i) <= alpha / (m - i)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = set()
    for rank, index in enumerate(order):
        if p_values[index] > alpha / (len(p_values) - rank):
            break
        rejected.add(index)
    return rejected


p_lists = st.lists(st.sampled_from([0.0, 0.001, 0.01, 0.02, 0.04, 0.05, 0.2, 1.0]) | st.floats(0, 1), max_size=12)


@given(
    st.lists(st.integers(0, 48) | st.integers(0, 1024), max_size=12),  # many near the thresholds alpha / k
    st.sampled_from([1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4]),
)
def test_holm_adjusted_values_reject_exactly_what_the_step_down_procedure_rejects(grid, alpha):
    """On p-values that are multiples of 1/1024 and dyadic alphas every product is exact in floating point,
    so the boundary cases (p = alpha / k exactly, frequent here) are decided exactly on both sides."""
    p_values = [k / 1024 for k in grid]
    adjusted = significance.holm(p_values)
    expected = _holm_rejects([Fraction(k, 1024) for k in grid], Fraction(alpha))
    assert {i for i, q in enumerate(adjusted) if q <= alpha} == expected


@given(p_lists, st.randoms(use_true_random=False))
def test_holm_is_between_the_raw_values_and_bonferroni_and_keeps_the_order(p_values, rng):
    adjusted = significance.holm(p_values)
    m = len(p_values)
    for p, q in zip(p_values, adjusted, strict=True):
        assert p <= q <= min(1.0, m * p) + 1e-12
    for i in range(m):  # a larger p-value never gets a smaller adjusted value
        for j in range(m):
            if p_values[i] <= p_values[j]:
                assert adjusted[i] <= adjusted[j]
    shuffled = list(range(m))
    rng.shuffle(shuffled)
    again = significance.holm([p_values[i] for i in shuffled])
    assert again == [adjusted[i] for i in shuffled]


def test_holm_on_a_hand_computed_family_skips_none_and_refuses_non_p_values():
    assert significance.holm([0.01, 0.04, 0.03, None, 0.5]) == pytest.approx([0.04, 0.09, 0.09, None, 0.5])
    assert significance.holm([0.02, 0.02]) == [0.04, 0.04]  # ties: equal adjusted values
    assert significance.holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    assert significance.holm([]) == [] and significance.holm([None]) == [None]
    for bad in (1.5, -0.1, float("nan"), "0.1", True):
        with pytest.raises(InputError, match=r"p-values must be numbers in \[0, 1\] or None"):
            significance.holm([0.1, bad])


# --- one method's score interval ------------------------------------------------------------------


@given(st.integers(1, 400), st.data(), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_score_interval_of_a_proportion_is_wilsons(n, data, confidence):
    """Wilson (1927) written out: centre (k + z^2/2) / (n + z^2), half-width z sqrt(k(n-k)/n + z^2/4) / (n + z^2)."""
    from scipy.stats import norm

    k = data.draw(st.integers(0, n))
    low, high = significance.score_interval("exact_match", [1.0] * k + [0.0] * (n - k), confidence=confidence)
    z = norm.ppf((1 + confidence) / 2)
    centre = (k + z * z / 2) / (n + z * z)
    half = z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    assert low == pytest.approx(max(0.0, centre - half), abs=1e-9)
    assert high == pytest.approx(min(1.0, centre + half), abs=1e-9)
    assert low <= k / n <= high


def test_score_interval_covers_the_true_accuracy_about_as_often_as_it_says():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        outcomes = (rng.random(100) < 0.3).astype(float)
        low, high = significance.score_interval("exact_match", outcomes)
        hits += low <= 0.3 <= high
    assert 0.93 <= hits / 2000 <= 0.97


def test_score_interval_of_other_metrics_is_the_bootstrap_percentile_interval():
    """VQA accuracy (0, 0.3, 0.6, 1 per sample): the documented bootstrap, one resample at a time."""
    values = np.random.default_rng(3).choice([0.0, 0.3, 0.6, 1.0], size=40)
    low, high = significance.score_interval("vqa_accuracy", values, confidence=0.9, n_resamples=2000, seed=7)
    rng = np.random.default_rng(7)
    means = [values[rng.integers(0, 40, size=40)].mean() for _ in range(2000)]
    assert (low, high) == pytest.approx((np.percentile(means, 5), np.percentile(means, 95)), abs=1e-12)
    # POPE F1 is recomputed on each resample of (prediction, label) rows
    labels = [True, False] * 30
    outcomes = pope_outcomes([True] * 45 + [False] * 15, labels)
    low, high = significance.score_interval("pope_f1", outcomes, n_resamples=2000)
    f1 = pope_f1_statistic(np.asarray(outcomes)[None])[0]
    assert 0 < low < f1 < high < 1


def test_score_interval_of_one_sample_and_bad_arguments():
    with pytest.raises(InputError, match="expected a non-empty 1-D sequence of scores"):
        significance.score_interval("exact_match", [])
    assert significance.score_interval("exact_match", [1.0]) == pytest.approx((0.2065, 1.0), abs=1e-4)
    assert significance.score_interval("vqa_accuracy", [0.3]) is None
    with pytest.raises(InputError, match="confidence must be a number in"):
        significance.score_interval("exact_match", [1.0, 0.0], confidence=1.0)
    with pytest.raises(InputError, match="n_resamples must be an int"):
        significance.score_interval("vqa_accuracy", [1.0, 0.0], n_resamples=0)

"""tokenprune against independent float64 numpy references (see ``reference_impl.py``).

Every comparison is exact: the indices tokenprune returns must equal the reference's, row by row. Inputs are
float64 so both sides compute in float64; random gaussian data has no near-ties at float64 resolution, and the
inputs built to have exact ties (duplicate tokens, zero vectors, integer scores) have bit-exact ties in the
reference, so tie-breaking (lower index first) is checked too.
"""

from __future__ import annotations

import importlib.util
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

import tokenprune
from tokenprune.stages import Hierarchical, MaxMin, MeanPool, Relevance, TopK

_spec = importlib.util.spec_from_file_location(
    "tokenprune_reference_impl", Path(__file__).with_name("reference_impl.py")
)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)

POOLINGS = ("mean", "max", "none")
CORE_RATIOS = (0.0, 0.1, 0.2, 0.5, 0.9, 1.0)
HYPO = settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------------------------- helpers


def _t(x):
    return None if x is None else torch.from_numpy(np.ascontiguousarray(x))


def method_params(method: str, core_ratio: float, pooling: str) -> dict:
    if method == "zspa":
        return {"core_ratio": core_ratio, "pooling": pooling}
    if method == "relevance":
        return {"pooling": pooling}
    return {}


def run_tokenprune(method, visual, *, budget, prompt=None, visual_mask=None, prompt_mask=None, scores=None, **params):
    selector = tokenprune.create_method(method, **params)
    out = selector(
        _t(visual),
        prompt=_t(prompt),
        budget=budget,
        visual_mask=_t(visual_mask),
        prompt_mask=_t(prompt_mask),
        scores=_t(scores),
    )
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.int64
    return out.numpy()


def assert_rows_match(got: np.ndarray, expected: list[np.ndarray]) -> None:
    """``got`` is (B, Kmax) right-padded with -1; each row's non -1 prefix must equal the reference row."""
    assert got.ndim == 2
    assert got.shape[0] == len(expected)
    assert got.shape[1] == max(len(e) for e in expected)
    for row, exp in enumerate(expected):
        k = len(exp)
        np.testing.assert_array_equal(got[row, :k], exp, err_msg=f"row {row}")
        assert (got[row, k:] == -1).all(), f"row {row}: padding after {k} kept tokens is {got[row, k:]}"


def check(method, visual, *, budget, prompt=None, visual_mask=None, prompt_mask=None, scores=None, **params):
    got = run_tokenprune(
        method,
        visual,
        budget=budget,
        prompt=prompt,
        visual_mask=visual_mask,
        prompt_mask=prompt_mask,
        scores=scores,
        **params,
    )
    expected = ref.reference_select(
        method,
        visual,
        budget=budget,
        prompt=prompt,
        visual_mask=visual_mask,
        prompt_mask=prompt_mask,
        scores=scores,
        **params,
    )
    assert_rows_match(got, expected)
    return got


def gaussian_case(seed: int, b: int, n: int, d: int, m: int):
    rng = np.random.default_rng(seed)
    visual = rng.standard_normal((b, n, d))
    prompt = rng.standard_normal((b, m, d))
    scores = rng.standard_normal((b, n))
    return visual, prompt, scores


def ragged_masks(rng: np.random.Generator, b: int, n: int, m: int, contiguous: bool):
    vmask = np.zeros((b, n), dtype=bool)
    pmask = np.zeros((b, m), dtype=bool)
    for row in range(b):
        nv = int(rng.integers(1, n + 1))
        mp = int(rng.integers(1, m + 1))
        if contiguous:
            vmask[row, :nv] = True
            pmask[row, :mp] = True
        else:
            vmask[row, rng.choice(n, nv, replace=False)] = True
            pmask[row, rng.choice(m, mp, replace=False)] = True
    return vmask, pmask


def fill_garbage(rng: np.random.Generator, x: np.ndarray, mask: np.ndarray, scale: float = 1e6) -> np.ndarray:
    """Overwrite padding positions (mask False) with large random values that must be ignored."""
    x = x.copy()
    x[~mask] = rng.standard_normal(x[~mask].shape) * scale + scale
    return x


# ------------------------------------------------------------------------------- the reference itself


def test_reference_cosine_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((17, 9))
    b = rng.standard_normal((23, 9)) * rng.uniform(0.01, 100.0, size=(23, 1))
    np.testing.assert_allclose(ref.cosine_matrix(a, b), 1.0 - cdist(a, b, "cosine"), rtol=0, atol=1e-13)
    # zero vectors have cosine 0 with everything, themselves included
    z = np.vstack([a[:3], np.zeros((2, 9))])
    cos = ref.cosine_matrix(z, z)
    assert (cos[3:] == 0).all() and (cos[:, 3:] == 0).all()
    np.testing.assert_allclose(cos[:3, :3], 1.0 - cdist(a[:3], a[:3], "cosine"), rtol=0, atol=1e-13)
    # duplicate rows get bit-identical cosines (exact ties in the reference)
    d = np.vstack([a, a[::-1]])
    cos = ref.cosine_matrix(d, b)
    assert (cos[:17] == cos[17:][::-1]).all()


def test_reference_maxmin_matches_bruteforce():
    """The vectorised reference fill equals a literal transcription of the spec's greedy rule."""
    rng = np.random.default_rng(1)
    v = rng.standard_normal((40, 6))
    v[5] = v[9] = 0.0
    v[20] = v[3]
    cos = 1.0 - cdist(v, v, "cosine")
    cos[[5, 9], :] = 0.0
    cos[:, [5, 9]] = 0.0
    cos[3, 20] = cos[20, 3] = 1.0  # duplicates: cosine exactly 1
    nearest = [max(cos[x, y] for y in range(40) if y != x) for x in range(40)]
    chosen = [min(range(40), key=lambda x: (nearest[x], x))]
    while len(chosen) < 25:
        rest = [x for x in range(40) if x not in chosen]
        chosen.append(min(rest, key=lambda x: (max(cos[x, y] for y in chosen), x)))
    assert ref.maxmin_fill(v, [], 25) == chosen


def test_reference_topk_ties():
    s = np.array([0.5, 1.0, 0.5, 1.0, -0.0, 0.0, 2.0])
    assert list(ref.topk(s, 7)) == [6, 1, 3, 0, 2, 4, 5]
    assert ref.stride_row(10, 3).tolist() == [1, 5, 8]
    assert ref.stride_row(7, 7).tolist() == list(range(7))
    assert ref.budget_to_k(0.25, 10) == 3 and ref.budget_to_k(0.01, 10) == 1 and ref.budget_to_k(4, 10) == 4


# ------------------------------------------------------------------------------------ seeded grids


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("core_ratio", CORE_RATIOS)
@pytest.mark.parametrize("budget", [37, 0.15])
def test_zspa_grid(pooling, core_ratio, budget):
    seed = zlib.crc32(repr((pooling, core_ratio, budget)).encode())
    visual, prompt, _ = gaussian_case(seed, 3, 300, 64, 12)
    check("zspa", visual, prompt=prompt, budget=budget, core_ratio=core_ratio, pooling=pooling)


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("core_ratio", [0.0, 0.2, 1.0])
def test_zspa_large(pooling, core_ratio):
    visual, prompt, _ = gaussian_case(7, 1, 600, 128, 20)
    check("zspa", visual, prompt=prompt, budget=0.25, core_ratio=core_ratio, pooling=pooling)


@pytest.mark.parametrize("budget", [1, 2, 64, 0.1, 0.5, 1.0])
def test_divprune_grid(budget):
    visual, _, _ = gaussian_case(11, 3, 300, 48, 1)
    check("divprune", visual, budget=budget)


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("budget", [1, 50, 0.3, 1.0])
def test_relevance_grid(pooling, budget):
    visual, prompt, _ = gaussian_case(13, 3, 250, 32, 9)
    check("relevance", visual, prompt=prompt, budget=budget, pooling=pooling)


@pytest.mark.parametrize(("n", "budget"), [(1, 1), (2, 1), (7, 7), (10, 3), (576, 58), (576, 0.1), (99, 0.5), (13, 12)])
def test_stride_grid(n, budget):
    visual, _, _ = gaussian_case(n, 2, n, 4, 1)
    check("stride", visual, budget=budget)


@pytest.mark.parametrize("budget", [1, 17, 0.2, 1.0])
def test_attention_grid(budget):
    visual, _, scores = gaussian_case(17, 3, 200, 8, 1)
    check("attention", visual, budget=budget, scores=scores)


# ------------------------------------------------------------------------------------- hypothesis


@st.composite
def cases(draw, ragged: bool = False):
    b = draw(st.sampled_from([1, 3]))
    n = draw(st.integers(1, 600))
    d = draw(st.integers(1, 128))
    m = draw(st.integers(1, 20))
    seed = draw(st.integers(0, 2**32 - 1))
    visual, prompt, scores = gaussian_case(seed, b, n, d, m)
    rng = np.random.default_rng(seed + 1)
    vmask = pmask = None
    if ragged:
        vmask, pmask = ragged_masks(rng, b, n, m, contiguous=draw(st.booleans()))
        visual = fill_garbage(rng, visual, vmask)
        prompt = fill_garbage(rng, prompt, pmask)
        scores = fill_garbage(rng, scores, vmask)
        counts = vmask.sum(axis=1)
    else:
        counts = np.full(b, n)
        if draw(st.booleans()):
            pmask = np.ones((b, m), dtype=bool)
            for row in range(b):
                pmask[row, int(rng.integers(1, m + 1)) :] = False
            prompt = fill_garbage(rng, prompt, pmask)
    if draw(st.booleans()):
        budget = draw(st.integers(1, int(counts.min())))
    else:
        budget = draw(st.floats(0.001, 1.0, allow_nan=False, exclude_min=False))
    return {"visual": visual, "prompt": prompt, "scores": scores, "visual_mask": vmask, "prompt_mask": pmask}, budget


@HYPO
@given(case=cases(), pooling=st.sampled_from(POOLINGS), core_ratio=st.sampled_from(CORE_RATIOS))
def test_zspa_hypothesis(case, pooling, core_ratio):
    inputs, budget = case
    inputs.pop("scores")
    check("zspa", **inputs, budget=budget, core_ratio=core_ratio, pooling=pooling)


@HYPO
@given(case=cases(ragged=True), pooling=st.sampled_from(POOLINGS), core_ratio=st.sampled_from(CORE_RATIOS))
def test_zspa_hypothesis_ragged(case, pooling, core_ratio):
    inputs, budget = case
    inputs.pop("scores")
    check("zspa", **inputs, budget=budget, core_ratio=core_ratio, pooling=pooling)


@HYPO
@given(case=cases(ragged=True), pooling=st.sampled_from(POOLINGS))
def test_relevance_hypothesis_ragged(case, pooling):
    inputs, budget = case
    inputs.pop("scores")
    check("relevance", **inputs, budget=budget, pooling=pooling)


@HYPO
@given(case=cases(ragged=True))
def test_divprune_stride_attention_hypothesis_ragged(case):
    inputs, budget = case
    check("divprune", inputs["visual"], visual_mask=inputs["visual_mask"], budget=budget)
    check("stride", inputs["visual"], visual_mask=inputs["visual_mask"], budget=budget)
    check("attention", inputs["visual"], visual_mask=inputs["visual_mask"], scores=inputs["scores"], budget=budget)


# ------------------------------------------------------------------------------ ties and edge cases


def lattice_case(seed: int, b: int, n: int, d: int, distinct: int, zeros: int = 0):
    """Tokens whose cosines are exact in any float formula, so mathematical ties are bit-exact ties.

    Each token is one of ``distinct`` base vectors (1 or 4 entries of +-1, so norm 1 or 2) times a power of two:
    norms, norm products and dot products are all exact, and cosines lie in {0, +-1/4, +-1/2, +-1}. ``zeros``
    tokens per row are zero vectors. Repeats of a base are duplicates or exactly parallel tokens.
    """
    rng = np.random.default_rng(seed)
    base = np.zeros((b, distinct, d))
    for row in range(b):
        for j in range(distinct):
            nnz = int(rng.choice([1, 4]))
            base[row, j, rng.choice(d, nnz, replace=False)] = rng.choice([-1.0, 1.0], nnz)
    pick = rng.integers(0, distinct, size=(b, n))
    visual = np.take_along_axis(base, pick[..., None], axis=1) * 2.0 ** rng.integers(-3, 4, size=(b, n, 1))
    for row in range(b):
        visual[row, rng.choice(n, zeros, replace=False)] = 0.0
    return visual


def lattice_prompt(seed: int, b: int, m: int, d: int):
    """Prompt tokens with 4 entries of +-1 (norm 2); with m a power of two the mean is exact too."""
    rng = np.random.default_rng(seed)
    prompt = np.zeros((b, m, d))
    for row in range(b):
        for i in range(m):
            prompt[row, i, rng.choice(d, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    return prompt


def singleton_duplicate_case(seed: int, b: int, d: int, singles: int, repeated: int, copies: int):
    """Gaussian tokens: ``singles`` unique ones and ``repeated`` vectors each present ``copies`` times, shuffled."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((b, singles + repeated, d))
    pick = np.concatenate([np.arange(singles), np.repeat(np.arange(singles, singles + repeated), copies)])
    order = np.stack([rng.permutation(pick) for _ in range(b)])
    return np.take_along_axis(base, order[..., None], axis=1)


@pytest.mark.parametrize("core_ratio", CORE_RATIOS)
@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("m", [1, 4])
def test_exact_ties_lattice(core_ratio, pooling, m):
    """Duplicates, parallel tokens, zero vectors and many equal cosines: every tie must go to the lower index."""
    visual = lattice_case(5 + m, 3, 80, 8, distinct=12, zeros=9)
    prompt = lattice_prompt(6 + m, 3, m, 8)
    for budget in (1, 3, 13, 60, 80, 0.5):
        check("zspa", visual, prompt=prompt, budget=budget, core_ratio=core_ratio, pooling=pooling)


@pytest.mark.parametrize("method", ["divprune", "relevance", "stride"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_ties_lattice_other_methods(method, seed):
    visual = lattice_case(seed, 3, 100, 12, distinct=15, zeros=int(seed) * 5)
    prompt = lattice_prompt(seed + 50, 3, 2, 12)
    rng = np.random.default_rng(seed)
    vmask, pmask = ragged_masks(rng, 3, 100, 2, contiguous=bool(seed % 2))
    pmask[:] = True  # a mean over 2 real prompt tokens stays exact
    visual = fill_garbage(rng, visual, vmask)
    for pooling in POOLINGS if method == "relevance" else ("mean",):
        for budget in (1, 4, 0.1, 0.35, 1.0):
            params = method_params(method, 0.0, pooling)
            check(method, visual, prompt=prompt, visual_mask=vmask, budget=budget, **params)


@pytest.mark.parametrize(
    ("method", "pooling"), [("divprune", "mean")] + [(m, p) for m in ("zspa", "relevance") for p in POOLINGS]
)
@pytest.mark.parametrize("budget", [1, 5, 12, 15, 0.2])
def test_duplicate_gaussian_tokens(method, pooling, budget):
    """Gaussian duplicates, with budgets up to the number of distinct vectors (15 of 60 tokens).

    Duplicates tie exactly on relevance; max-min picks never hinge on a duplicate's self-cosine here, because a
    not-yet-represented vector is always strictly better than a copy of a chosen one.
    """
    visual = singleton_duplicate_case(3, 3, 16, singles=5, repeated=10, copies=5)
    prompt = np.random.default_rng(4).standard_normal((3, 5, 16))
    params = method_params(method, 0.5, pooling)
    check(method, visual, prompt=prompt, budget=budget, **params)


# Duplicates of gaussian tokens beyond the number of distinct vectors: the picks follow the lower-index tie
# rule only because tokenprune snaps cos(v, v) (1 +- a few ulp in floating point) to exactly 1.


def test_duplicate_gaussian_tokens_beyond_distinct_count():
    """Spec: exact duplicates are exact ties (cosine exactly 1), so the lower index wins. Several seeds, so that
    one lucky rounding pattern cannot make this pass by accident."""
    failures = []
    for seed in range(6):
        visual = singleton_duplicate_case(seed, 1, 16, singles=0, repeated=10, copies=6)
        for budget in (1, 15, 40):
            got = run_tokenprune("divprune", visual, budget=budget)
            expected = ref.reference_select("divprune", visual, budget=budget)
            if not np.array_equal(got[0], expected[0]):
                failures.append((seed, budget))
    assert not failures, f"(seed, budget) mismatches: {failures}"


def test_maxmin_block_sizes_agree_on_duplicates():
    """Documented: block_size=0 and the blocked strategy give the same picks. With duplicates beyond the distinct
    count they do not: gemm and gemv round the self-cosines differently."""
    failures = []
    for seed in range(6):
        visual = singleton_duplicate_case(seed, 1, 24, singles=0, repeated=20, copies=7)
        sequential = MaxMin(block_size=0)(_t(visual), budget=60).numpy()
        for block_size in (3, 32):
            if not np.array_equal(MaxMin(block_size=block_size)(_t(visual), budget=60).numpy(), sequential):
                failures.append((seed, block_size))
    assert not failures, f"(seed, block_size) disagreements: {failures}"


@pytest.mark.parametrize("budget", [1, 2, 5, 6])
def test_all_zero_visual(budget):
    """Every cosine is 0: each rule degenerates to 'lowest indices first'."""
    visual = np.zeros((2, 6, 5))
    prompt = np.random.default_rng(0).standard_normal((2, 3, 5))
    for method in ("zspa", "divprune", "relevance"):
        got = check(method, visual, prompt=prompt, budget=budget)
        np.testing.assert_array_equal(got, np.tile(np.arange(budget), (2, 1)))


def test_zero_prompt_pooled_to_zero():
    """A prompt [t, -t] mean-pools to the zero vector: all relevance scores tie at 0."""
    rng = np.random.default_rng(8)
    visual = rng.standard_normal((2, 50, 10))
    t = rng.standard_normal((2, 1, 10))
    prompt = np.concatenate([t, -t], axis=1)
    got = check("relevance", visual, prompt=prompt, budget=7, pooling="mean")
    np.testing.assert_array_equal(got, np.tile(np.arange(7), (2, 1)))
    check("zspa", visual, prompt=prompt, budget=10, core_ratio=0.5, pooling="mean")
    check("zspa", visual, prompt=prompt, budget=10, core_ratio=0.5, pooling="max")
    check("zspa", visual, prompt=prompt, budget=10, core_ratio=0.5, pooling="none")


@pytest.mark.parametrize("pooling", POOLINGS)
def test_single_prompt_token(pooling):
    """With M = 1 all three poolings are the same relevance."""
    visual, prompt, _ = gaussian_case(21, 3, 120, 24, 1)
    got = check("zspa", visual, prompt=prompt, budget=30, core_ratio=0.5, pooling=pooling)
    same = run_tokenprune("zspa", visual, prompt=prompt, budget=30, core_ratio=0.5, pooling="mean")
    np.testing.assert_array_equal(got, same)


@pytest.mark.parametrize("n", [1, 2, 3, 50])
@pytest.mark.parametrize("method", ["zspa", "divprune", "relevance", "stride", "attention"])
def test_budget_extremes(method, n):
    visual, prompt, scores = gaussian_case(n, 3, n, 6, 3)
    for budget in (1, n, 1.0, 1e-9):
        got = check(method, visual, prompt=prompt, scores=scores, budget=budget)
        if budget == n or (isinstance(budget, float) and budget == 1.0):
            np.testing.assert_array_equal(got, np.tile(np.arange(n), (3, 1)))


def test_attention_ties_and_ragged_nonfinite_padding():
    rng = np.random.default_rng(9)
    scores = rng.integers(0, 4, size=(3, 40)).astype(np.float64)  # many exact ties
    visual = rng.standard_normal((3, 40, 5))
    vmask = rng.random((3, 40)) < 0.6
    vmask[:, 0] = True
    scores[~vmask] = np.where(rng.random((~vmask).sum()) < 0.5, np.inf, np.nan)
    for budget in (1, 4, 0.3, 1.0):
        check("attention", visual, scores=scores, visual_mask=vmask, budget=budget)


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize("core_ratio", [0.0, 0.5, 1.0])
def test_nonfinite_padding_is_ignored(pooling, core_ratio):
    """Padding may hold inf/NaN (validation only rejects them in real tokens); it must not leak into picks."""
    rng = np.random.default_rng(10)
    visual, prompt, _ = gaussian_case(10, 3, 90, 12, 6)
    vmask, pmask = ragged_masks(rng, 3, 90, 6, contiguous=False)
    visual[~vmask] = np.inf
    visual[~vmask, 0] = np.nan
    prompt[~pmask] = -np.inf
    for budget in (1, 0.2, 0.7, 1.0):
        check(
            "zspa",
            visual,
            prompt=prompt,
            visual_mask=vmask,
            prompt_mask=pmask,
            budget=budget,
            core_ratio=core_ratio,
            pooling=pooling,
        )


def test_ragged_rows_padded_with_minus_one():
    rng = np.random.default_rng(12)
    visual, prompt, scores = gaussian_case(12, 3, 100, 16, 8)
    vmask = np.zeros((3, 100), dtype=bool)
    vmask[0, :100] = True
    vmask[1, :7] = True
    vmask[2, 50:81] = True
    pmask = np.ones((3, 8), dtype=bool)
    pmask[1, 1:] = False
    pmask[2, 3:] = False
    visual = fill_garbage(rng, visual, vmask, scale=1e8)
    prompt = fill_garbage(rng, prompt, pmask, scale=1e8)
    scores = fill_garbage(rng, scores, vmask, scale=1e8)
    for method in ("zspa", "divprune", "relevance", "stride", "attention"):
        for pooling in POOLINGS:
            params = method_params(method, 0.3, pooling)
            got = check(
                method,
                visual,
                prompt=prompt,
                scores=scores,
                visual_mask=vmask,
                prompt_mask=pmask,
                budget=0.25,
                **params,
            )
            assert got.shape == (3, 25)
            np.testing.assert_array_equal((got >= 0).sum(axis=1), [25, 2, 8])


def test_tiny_norm_tokens_use_the_product_epsilon():
    """cos = a.b / max(|a||b|, 1e-12): for tokens whose norm product is below 1e-12 the cosine shrinks."""
    rng = np.random.default_rng(14)
    visual = rng.standard_normal((1, 40, 6))
    visual[0, :10] *= 1e-7  # |a||b| ~ 1e-14 against each other, ~1e-7 against the others
    prompt = rng.standard_normal((1, 3, 6)) * 1e-6
    for core_ratio in (0.0, 0.5, 1.0):
        for pooling in POOLINGS:
            check("zspa", visual, prompt=prompt, budget=15, core_ratio=core_ratio, pooling=pooling)


# ----------------------------------------------------------------------------------- conventions


@pytest.mark.parametrize("method", ["zspa", "divprune", "relevance", "stride", "attention", "random"])
def test_unbatched_input(method):
    visual, prompt, scores = gaussian_case(15, 1, 77, 20, 5)
    kwargs = {"prompt": _t(prompt[0]), "scores": _t(scores[0]), "budget": 0.2}
    got = tokenprune.create_method(method)(_t(visual[0]), **kwargs).numpy()
    assert got.shape == (15,)
    assert got.dtype == np.int64
    batched = run_tokenprune(method, visual, prompt=prompt, scores=scores, budget=0.2)
    np.testing.assert_array_equal(got, batched[0])
    if method != "random":
        expected = ref.reference_select(method, visual, prompt=prompt, scores=scores, budget=0.2)
        np.testing.assert_array_equal(got, expected[0])


def test_named_methods_are_zspa_special_cases():
    visual, prompt, _ = gaussian_case(16, 3, 150, 32, 7)
    for pooling in POOLINGS:
        rel = run_tokenprune("relevance", visual, prompt=prompt, budget=40, pooling=pooling)
        z1 = run_tokenprune("zspa", visual, prompt=prompt, budget=40, core_ratio=1.0, pooling=pooling)
        np.testing.assert_array_equal(rel, z1)
    div = run_tokenprune("divprune", visual, budget=40)
    z0 = run_tokenprune("zspa", visual, prompt=prompt, budget=40, core_ratio=0.0)
    np.testing.assert_array_equal(div, z0)


@pytest.mark.parametrize("core_ratio", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("budget", [1, 9, 0.4])
def test_maxmin_block_sizes_agree(core_ratio, budget):
    """The sequential (block_size=0) and blocked max-min strategies are exact and identical."""
    rng = np.random.default_rng(17)
    visual = np.concatenate([gaussian_case(17, 2, 120, 24, 1)[0], lattice_case(18, 2, 120, 24, 20, zeros=5)])
    prompt = np.concatenate([rng.standard_normal((2, 4, 24)), lattice_prompt(19, 2, 4, 24)])
    vmask = np.ones((4, 120), dtype=bool)
    vmask[1, 100:] = False
    vmask[3, ::3] = False
    expected = ref.reference_select(
        "zspa", visual, prompt=prompt, visual_mask=vmask, budget=budget, core_ratio=core_ratio, pooling="mean"
    )
    results = {}
    for block_size in (0, 1, 7, 32, 1000):
        selector = Hierarchical(
            core=TopK(Relevance(MeanPool())), fill=MaxMin(block_size=block_size), core_ratio=core_ratio
        )
        got = selector(_t(visual), prompt=_t(prompt), budget=budget, visual_mask=_t(vmask)).numpy()
        assert_rows_match(got, expected)
        results[block_size] = got
    for got in results.values():
        np.testing.assert_array_equal(got, results[0])
    for block_size in (0, 5, 32):
        got = MaxMin(block_size=block_size)(_t(visual), budget=budget, visual_mask=_t(vmask)).numpy()
        assert_rows_match(got, ref.reference_select("divprune", visual, visual_mask=vmask, budget=budget))


@pytest.mark.parametrize("seed", [0, 1, 123])
def test_random_is_valid_and_deterministic(seed):
    rng = np.random.default_rng(seed)
    visual = rng.standard_normal((3, 200, 8))
    vmask = rng.random((3, 200)) < 0.5
    vmask[:, 0] = True
    visual = fill_garbage(rng, visual, vmask)
    counts = vmask.sum(axis=1)
    first = run_tokenprune("random", visual, visual_mask=vmask, budget=0.3, seed=seed)
    again = run_tokenprune("random", visual, visual_mask=vmask, budget=0.3, seed=seed)
    np.testing.assert_array_equal(first, again)
    assert first.shape == (3, max(ref.budget_to_k(0.3, c) for c in counts))
    for row in range(3):
        k = ref.budget_to_k(0.3, int(counts[row]))
        kept = first[row, :k]
        assert (first[row, k:] == -1).all()
        assert (np.diff(kept) > 0).all()  # ascending, distinct
        assert vmask[row, kept].all()  # real tokens only
    everything = run_tokenprune("random", visual, visual_mask=vmask, budget=1.0, seed=seed)
    for row in range(3):
        np.testing.assert_array_equal(everything[row, : counts[row]], np.flatnonzero(vmask[row]))
    other = run_tokenprune("random", visual, visual_mask=vmask, budget=0.3, seed=seed + 1000)
    assert not np.array_equal(first, other)  # 60-of-~100 subsets: a collision is astronomically unlikely


def test_budget_rounding_half_up():
    visual, prompt, _ = gaussian_case(19, 1, 10, 4, 2)
    for ratio, k in ((0.25, 3), (0.05, 1), (0.35, 4), (0.04, 1), (0.999, 10)):
        got = check("zspa", visual, prompt=prompt, budget=ratio)
        assert got.shape == (1, k)
        assert math.floor(ratio * 10 + 0.5) == k or k == 1

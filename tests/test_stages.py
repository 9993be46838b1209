"""Stage semantics and composition (the numeric references are in test_reference.py)."""

import pytest
import torch

import tokenprune
from tokenprune import InputError, MissingInputError, SelectorError
from tokenprune.selector import Selection
from tokenprune.stages import (
    ExternalScores,
    Hierarchical,
    MaxMin,
    MaxPool,
    MeanPool,
    NoPool,
    RandomScores,
    Relevance,
    Stride,
    TopK,
    core_size,
)
from tokenprune.testing import assert_conforms, make_case


@pytest.fixture
def case():
    return make_case(batch=3, tokens=200, dim=16, prompt_tokens=7, budget=0.1, seed=3)


def call(selector, case, **overrides):
    args = {"visual": case.visual, **case.kwargs(), **overrides}
    return selector(args.pop("visual"), **args)


def test_zspa_is_a_composition_of_stages():
    zspa = tokenprune.create_method("zspa", core_ratio=0.3, pooling="max")
    assert zspa.selector == Hierarchical(core=TopK(Relevance(MaxPool())), fill=MaxMin(), core_ratio=0.3)


def test_zspa_core_ratio_0_is_divprune_and_needs_no_prompt(case):
    zspa0 = tokenprune.create_method("zspa", core_ratio=0.0)
    divprune = tokenprune.create_method("divprune")
    assert zspa0.requires == frozenset()
    assert torch.equal(call(zspa0, case), call(divprune, case))
    assert torch.equal(call(zspa0, case, prompt=None, prompt_mask=None), call(divprune, case))


def test_zspa_core_ratio_1_is_relevance(case):
    for pooling in ("mean", "max", "none"):
        zspa1 = tokenprune.create_method("zspa", core_ratio=1.0, pooling=pooling)
        relevance = tokenprune.create_method("relevance", pooling=pooling)
        assert torch.equal(call(zspa1, case), call(relevance, case))


def test_zspa_keeps_the_most_relevant_tokens_as_its_core(case):
    """The top core_size(r, K) tokens by relevance are all kept, whatever the fill adds."""
    for ratio in (0.1, 0.5, 0.9):
        kept = call(tokenprune.create_method("zspa", core_ratio=ratio), case)
        top = call(tokenprune.create_method("relevance"), case, budget=core_size(ratio, kept.shape[1]))
        for row_kept, row_top in zip(kept, top, strict=True):
            assert set(row_top.tolist()) <= set(row_kept.tolist())


def test_prompt_changes_what_zspa_keeps(case):
    zspa = tokenprune.create_method("zspa", core_ratio=0.9)
    other = make_case(batch=3, tokens=200, dim=16, prompt_tokens=7, seed=99).prompt
    assert not torch.equal(call(zspa, case), call(zspa, case, prompt=other))


def test_maxmin_strategies_agree():
    for seed in range(5):
        c = make_case(batch=4, tokens=300, dim=24, budget=0.2, seed=seed, real_counts=[300, 120, 299, 31])
        results = {call(Hierarchical(TopK(Relevance()), MaxMin(block_size=b), 0.3), c) for b in (0, 1, 7, 32, 512)}
        assert len({tuple(r.flatten().tolist()) for r in results}) == 1


def test_maxmin_never_duplicates_identical_tokens():
    visual = torch.ones(1, 10, 4)  # ten identical tokens: every similarity ties at 1
    assert MaxMin()(visual, budget=10).tolist() == [list(range(10))]
    assert MaxMin()(visual, budget=3).tolist() == [[0, 1, 2]]


def test_maxmin_handles_zero_vectors_without_nan():
    visual = torch.zeros(2, 8, 5)
    visual[:, 3] = torch.tensor([1.0, 0, 0, 0, 0])
    out = MaxMin()(visual, budget=4)
    assert out.tolist() == [[0, 1, 2, 3]] * 2  # every cosine is 0: ties go to the lowest indices


def test_maxmin_picks_the_isolated_token_first_then_spreads():
    # two tight clusters and one outlier: divprune keeps the outlier and one token per cluster
    g = torch.Generator().manual_seed(0)
    a, b, outlier = torch.randn(3, 6, generator=g)
    cluster = lambda c: c + 0.01 * torch.randn(5, 6, generator=g)  # noqa: E731
    visual = torch.cat([cluster(a), cluster(b), outlier[None]])
    kept = set(MaxMin()(visual, budget=3).tolist())
    assert 10 in kept and len(kept & set(range(5))) == 1 and len(kept & set(range(5, 10))) == 1


def test_stride_is_evenly_spaced():
    assert Stride()(torch.randn(576, 4), budget=4).tolist() == [72, 216, 360, 504]
    assert Stride()(torch.randn(10, 4), budget=10).tolist() == list(range(10))


def test_stride_over_real_tokens_only():
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, 6:] = True
    assert Stride()(torch.randn(1, 12, 3), budget=3, visual_mask=mask).tolist() == [[7, 9, 11]]


def test_attention_keeps_top_scores_ties_to_lower_index():
    scores = torch.tensor([[0.1, 0.7, 0.3, 0.7, 0.7]])
    out = TopK(ExternalScores())(torch.randn(1, 5, 2), budget=2, scores=scores)
    assert out.tolist() == [[1, 3]]


def test_random_is_seeded_and_seed_matters(case):
    a, b = TopK(RandomScores(1)), TopK(RandomScores(2))
    assert torch.equal(call(a, case), call(a, case))
    assert not torch.equal(call(a, case), call(b, case))
    assert not a.batch_invariant


def test_a_user_composed_variant_registers_and_conforms(fresh_registry):
    def relevance_stride(core_ratio: float = 0.5):
        return Hierarchical(core=TopK(Relevance(NoPool())), fill=Stride(), core_ratio=core_ratio)

    tokenprune.register_method("relevance-stride", relevance_stride, summary="relevant core, even fill")
    method = tokenprune.create_method("relevance-stride", core_ratio=0.25)
    assert "relevance-stride" in tokenprune.list_methods()
    assert method.requires == {"prompt"}
    assert_conforms(method)


def test_methods_compose_as_stages(case):
    """A registered method can be the core or the fill of another composition."""
    combo = Hierarchical(core=tokenprune.create_method("relevance"), fill=tokenprune.create_method("stride"))
    assert_conforms(combo)
    kept = call(combo, case)
    assert kept.shape == (3, 20)


def test_hierarchical_rejects_bad_ratio():
    for bad in (-0.1, 1.5, "0.5", True):
        with pytest.raises(ValueError, match="core_ratio"):
            Hierarchical(TopK(Relevance()), MaxMin(), bad)


def test_core_size_rounding():
    assert [core_size(r, 58) for r in (0.0, 0.1, 0.2, 0.4, 1.0)] == [0, 6, 12, 23, 58]
    assert core_size(0.25, 2) == 1  # 0.5 rounds up


def test_poolings_are_distinct_stages():
    assert {MeanPool().mode, MaxPool().mode, NoPool().mode} == {"mean", "max", "none"}
    assert Relevance() == Relevance(MeanPool())
    assert hash(Hierarchical(TopK(Relevance()), MaxMin())) == hash(Hierarchical(TopK(Relevance()), MaxMin()))


def test_padding_garbage_is_ignored():
    """NaN and huge values in padding (visual, prompt, scores) change nothing."""
    clean = make_case(batch=2, tokens=30, budget=0.3, seed=5, real_counts=[30, 11], prompt_counts=[5, 2])
    dirty_visual = clean.visual.clone()
    dirty_visual[~clean.visual_mask] = float("nan")
    for name in ("zspa", "divprune", "attention"):
        method = tokenprune.create_method(name)
        assert torch.equal(call(method, clean), call(method, clean, visual=dirty_visual))


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"visual": torch.randn(2, 3, 4, 5)}, InputError, r"shape \(B, N, D\) or \(N, D\); got \(2, 3, 4, 5\)"),
        ({"visual": torch.ones(2, 5, 4, dtype=torch.long)}, InputError, "float tensor"),
        ({"visual": [[1.0]]}, InputError, "got list"),
        ({"prompt": torch.randn(2, 3, 9)}, InputError, r"prompt must have shape \(2, M, 4\)"),
        ({"prompt": None}, MissingInputError, "method 'zspa' needs prompt="),
        ({"visual_mask": torch.ones(2, 6, dtype=torch.bool)}, InputError, r"visual_mask must have shape \(2, 5\)"),
        ({"visual_mask": torch.zeros(2, 5, dtype=torch.bool)}, InputError, "row 0 marks no real token"),
        ({"visual_mask": torch.full((2, 5), 2)}, InputError, "bool"),
        ({"prompt_mask": torch.zeros(2, 3, dtype=torch.bool)}, InputError, r"no real token in rows \[0, 1\]"),
        ({"visual": torch.full((2, 5, 4), float("nan"))}, InputError, "row 0 has NaN"),
        ({"prompt": torch.full((2, 3, 4), float("inf"))}, InputError, "prompt has NaN"),
    ],
)
def test_input_errors_say_what_was_expected(overrides, error, message):
    visual, prompt = torch.randn(2, 5, 4), torch.randn(2, 3, 4)
    args = {"visual": visual, "prompt": prompt, "budget": 2, **overrides}
    with pytest.raises(error, match=message):
        tokenprune.create_method("zspa")(args.pop("visual"), **args)


def test_int_mask_from_a_tokenizer_is_accepted():
    visual = torch.randn(2, 6, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    out = tokenprune.create_method("divprune")(visual, budget=0.5, visual_mask=mask)
    assert out.tolist()[0][-1] == -1 and (out[0, :2] < 3).all()


def test_ragged_output_is_padded_with_minus_one():
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0] = True
    mask[1, :4] = True
    out = tokenprune.create_method("stride")(torch.randn(2, 10, 3), budget=0.5, visual_mask=mask)
    assert out.tolist() == [[1, 3, 5, 7, 9], [1, 3, -1, -1, -1]]
    assert (out >= 0).sum(-1).tolist() == [5, 2]


def test_a_selector_breaking_the_contract_is_caught():
    class Greedy(Stride):
        def extend(self, tokens, selection: Selection, target):
            return Selection(tokens.real.clone(), target)  # claims target, selects everything

    with pytest.raises(SelectorError, match="broke the selector contract"):
        Greedy()(torch.randn(1, 10, 3), budget=2)


def test_errors_inside_a_method_name_it_and_the_shapes(fresh_registry):
    class Explodes(Stride):
        def extend(self, tokens, selection, target):
            raise ZeroDivisionError("boom")

    tokenprune.register_method("explodes", lambda: Explodes())
    with pytest.raises(SelectorError, match=r"method 'explodes' .*visual=\(2, 5, 3\).*ZeroDivisionError: boom") as info:
        tokenprune.create_method("explodes")(torch.randn(2, 5, 3), budget=1)
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_identical_tokens_have_cosine_exactly_one():
    from tokenprune.functional import cosine_similarity

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        base = torch.randn(50, 37, generator=g, dtype=torch.float64).to(dtype)
        v = torch.cat([base, base, -base]).unsqueeze(0)
        sims = cosine_similarity(v, v)[0]
        idx = torch.arange(50)
        assert (sims[idx, idx + 50] == 1).all() and (sims[idx, idx] == 1).all()
        assert (sims[idx, idx + 100] == -1).all()
        assert (sims[:50, :50].fill_diagonal_(0).abs() < 0.9).all()  # distinct tokens are not snapped


def test_cosines_equal_in_exact_arithmetic_tie_whatever_the_summation_order():
    """Two tokens with the same dot product with the pooled prompt and the same norm tie exactly.

    Found on an H200: the CPU's mat-vec put one of two such tokens a few ulp above the other while the
    GPU's GEMM made them equal, so ``relevance`` kept different tokens on the two devices.
    """
    from tokenprune.functional import cosine_similarity

    prompt = torch.zeros(1, 5, 6, dtype=torch.float64)
    prompt[0, :1, 0], prompt[0, :2, 1], prompt[0, :3, 2] = 1.0, 1.0, 1.0  # mean: 0.2, 0.4, 0.6, 0, 0, 0
    t_bar = prompt.mean(dim=1, keepdim=True)
    a = torch.tensor([1.0, 1, 0, 0, 0, 0], dtype=torch.float64)  # 0.2 + 0.4: one ulp above 0.6 in float64
    b = torch.tensor([0.0, 0, 1, 1, 0, 0], dtype=torch.float64)  # 0.6, and the same norm
    assert a @ t_bar[0, 0] != b @ t_bar[0, 0] and a.norm() == b.norm()
    pair = torch.stack([a, b])[None]
    for dtype in (torch.float64, torch.float32):
        for sims in (
            cosine_similarity(pair.to(dtype), t_bar.to(dtype))[0, :, 0],
            cosine_similarity(t_bar.to(dtype), pair.to(dtype))[0, 0],
        ):
            assert sims[0] == sims[1]
    visual = torch.zeros(1, 30, 6, dtype=torch.float64)
    visual[0, 10], visual[0, 23] = b, a  # without the grid, 23 scored one ulp higher and was kept
    keep = tokenprune.create_method("relevance")(visual, prompt=prompt, budget=1)
    assert keep.tolist() == [[10]]


def test_snap_in_place_matches_snap():
    from tokenprune.functional import TIE_GRID, snap_unit, snap_unit_

    g = torch.Generator().manual_seed(3)
    for dtype, grid in TIE_GRID.items():
        sims = torch.rand(4, 50, generator=g, dtype=torch.float64).mul(2.2).sub(1.1).to(dtype)
        sims[0, :4] = torch.tensor([float("-inf"), float("inf"), 1 + 2 * torch.finfo(dtype).eps, -1.0])
        expected = snap_unit(sims)
        assert expected[0, :4].tolist() == [-1.0, 1.0, 1.0, -1.0]
        finite = expected[1:]
        assert torch.equal(finite, torch.round(finite / grid) * grid)  # on the grid (so are +-1)
        copy = sims.clone()
        assert snap_unit_(copy) is copy and torch.equal(copy, expected)


def test_inputs_that_require_grad_are_selected_without_a_graph():
    """Features from a model in training mode: selection runs, returns plain indices, leaves no graph."""
    c = make_case(batch=2, tokens=40, budget=0.25, seed=1)
    visual, prompt = c.visual.clone().requires_grad_(), c.prompt.clone().requires_grad_()
    for name in ("zspa", "divprune", "relevance"):
        out = tokenprune.create_method(name)(visual, prompt=prompt, budget=0.25)
        assert not out.requires_grad and out.grad_fn is None
        assert torch.equal(out, tokenprune.create_method(name)(c.visual, prompt=c.prompt, budget=0.25))


@pytest.mark.parametrize("seed", range(4))
def test_divprune_matrix_fill_batched_and_per_row_agree(seed):
    """DivPrune fills from its N x N matrix: the batched (CUDA) loop and the per-row CPU loop agree."""
    c = make_case(batch=3, tokens=60, dim=8, budget=0.3, seed=seed, real_counts=[60, 17, 41], duplicates=6, zeros=2)
    per_row = call(MaxMin(), c)
    batched = call(MaxMin(block_size=0), c)
    chunked = call(MaxMin(matrix_bytes=0), c)  # no matrix: chunked first pick, blocked fill
    assert torch.equal(per_row, batched) and torch.equal(per_row, chunked)

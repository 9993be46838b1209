"""Token merging (VisionZip's contextual tokens): the functions, the stage, and `visionzip` against a reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tokenprune
from tokenprune import InputError
from tokenprune.functional import assign_nearest, mask_to_indices, merge_into, select_stride
from tokenprune.stages import Contextual, ExternalScores, MaxMin, Stride, TopK
from tokenprune.testing import assert_conforms

HYPO = settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])


def _batch(seed: int, batch: int, n: int, ragged: bool):
    """float64 scores, metric, visual tokens and values; with ``ragged``, row b has ``n - 3 b`` real tokens."""
    g = torch.Generator().manual_seed(seed)
    visual = torch.randn(batch, n, 6, generator=g, dtype=torch.float64)
    scores = torch.rand(batch, n, generator=g, dtype=torch.float64)
    metric = torch.randn(batch, n, 5, generator=g, dtype=torch.float64)
    values = torch.randn(batch, n, 4, generator=g, dtype=torch.float64)
    mask = None
    if ragged:
        mask = torch.arange(n).unsqueeze(0) < torch.tensor([n - 3 * b for b in range(batch)]).unsqueeze(1)
    return visual, scores, metric, values, mask


@HYPO
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 3),
    n=st.integers(12, 40),
    budget=st.one_of(st.integers(1, 5), st.sampled_from([0.1, 0.25, 0.5, 1.0])),
    ratio=st.sampled_from([0.0, 10 / 64, 0.3, 0.5, 1.0]),
    ragged=st.booleans(),
)
def test_visionzip_keeps_and_merges_what_the_reference_does(ref, seed, batch, n, budget, ratio, ragged):
    visual, scores, metric, values, mask = _batch(seed, batch, n, ragged)
    selector = tokenprune.create_method("visionzip", contextual_ratio=ratio)
    plan = selector.plan(visual, scores=scores, budget=budget, visual_mask=mask, metric=metric)
    merged, absorbed = plan.merge(values)
    assert torch.equal(plan.indices, selector(visual, scores=scores, budget=budget, visual_mask=mask))
    for b in range(batch):
        real = n if mask is None else int(mask[b].sum())
        kept_ref, merged_ref = ref.visionzip_row(
            scores[b, :real].numpy(), metric[b, :real].numpy(), values[b, :real].numpy(),
            ref.budget_to_k(budget, real), ratio,
        )  # fmt: skip
        kept = plan.indices[b][plan.indices[b] >= 0]
        assert kept.tolist() == kept_ref.tolist()
        np.testing.assert_allclose(merged[b, kept].numpy(), merged_ref, rtol=1e-12, atol=1e-12)
        owner = plan.owner[b]
        assert set(owner[owner >= 0].tolist()) <= set(kept.tolist())  # members only join kept tokens
        assert (owner[kept] == -1).all() and (owner[real:] == -1).all()  # kept tokens and padding join none
        assert absorbed[b].nonzero()[:, 0].tolist() == sorted(set(owner[owner >= 0].tolist()))


def test_without_contextual_tokens_visionzip_is_fastervlm_and_merges_nothing():
    visual, scores, metric, _, _ = _batch(0, 2, 30, False)
    plan = tokenprune.create_method("visionzip", contextual_ratio=0.0).plan(
        visual, scores=scores, budget=7, metric=metric
    )
    assert torch.equal(plan.indices, tokenprune.create_method("fastervlm")(visual, scores=scores, budget=7))
    assert (plan.owner == -1).all()


def test_a_selector_that_does_not_merge_plans_its_selection_and_no_merge():
    visual, _, _, values, _ = _batch(1, 2, 20, False)
    prompt = torch.randn(2, 3, 6, dtype=torch.float64)
    zspa = tokenprune.create_method("zspa")
    assert not zspa.merges
    plan = zspa.plan(visual, prompt=prompt, budget=5)
    assert torch.equal(plan.indices, zspa(visual, prompt=prompt, budget=5)) and (plan.owner == -1).all()
    merged, absorbed = plan.merge(values)
    assert torch.equal(merged, values) and not absorbed.any()


def test_an_unbatched_plan_gives_unbatched_results():
    visual, scores, metric, values, _ = _batch(2, 1, 25, False)
    selector = tokenprune.create_method("visionzip", contextual_ratio=0.5)
    one = selector.plan(visual[0], scores=scores[0], budget=6, metric=metric[0])
    both = selector.plan(visual, scores=scores, budget=6, metric=metric)
    assert torch.equal(one.indices, both.indices[0]) and torch.equal(one.owner, both.owner[0])
    assert torch.equal(one.merge(values[0])[0], both.merge(values)[0][0])


def test_the_metric_defaults_to_the_visual_tokens():
    visual, scores, _, _, _ = _batch(3, 2, 24, False)
    selector = tokenprune.create_method("visionzip", contextual_ratio=0.5)
    implicit = selector.plan(visual, scores=scores, budget=8)
    explicit = selector.plan(visual, scores=scores, budget=8, metric=visual)
    assert torch.equal(implicit.owner, explicit.owner)


@pytest.mark.parametrize(
    ("metric", "message"),
    [
        (torch.randn(2, 19, 4), r"metric must be a float tensor of shape \(2, 20, C\); got \(2, 19, 4\)"),
        (torch.ones(2, 20, 4, dtype=torch.long), r"metric must be a float tensor of shape \(2, 20, C\) with C >= 1"),
        (torch.randn(2, 20, 0), r"with C >= 1; got \(2, 20, 0\)"),
        ([[0.0]], r"metric must be a float tensor of shape \(2, 20, C\); got list"),
    ],
)
def test_a_bad_metric_is_a_clear_error(metric, message):
    selector = tokenprune.create_method("visionzip")
    with pytest.raises(InputError, match=message) as error:
        selector.plan(torch.randn(2, 20, 6), scores=torch.rand(2, 20), budget=5, metric=metric)
    assert str(error.value).endswith("(method 'visionzip')")  # a registered method's plan names it, as its call does


def test_a_non_finite_metric_is_an_error_not_one_token_absorbing_all():
    """A NaN wins every argmax: every dropped token would join the kept token holding it."""
    visual, scores = torch.randn(1, 8, 4), torch.rand(1, 8)
    metric = torch.randn(1, 8, 4)
    metric[0, 3, 0] = float("nan")
    selector = tokenprune.create_method("visionzip", contextual_ratio=1.0)
    with pytest.raises(InputError, match=r"metric has NaN or infinite values at real tokens \(method 'visionzip'\)"):
        selector.plan(visual, scores=scores, budget=4, metric=metric)
    visual[0, 5, 1] = float("inf")  # without a metric the visual tokens are compared: checked too
    with pytest.raises(InputError, match=r"visual \(compared by the merge, as no metric was given\) has NaN"):
        selector.plan(visual, scores=scores, budget=4)
    padded = torch.randn(1, 8, 4)
    padded[0, 7] = float("nan")  # padding may hold anything
    mask = torch.tensor([[True] * 7 + [False]])
    selector.plan(torch.randn(1, 8, 4), scores=scores, budget=4, metric=padded, visual_mask=mask)


@pytest.mark.parametrize("ratio", [-0.1, 1.5, "half", True])
def test_the_contextual_ratio_must_be_a_share(ratio):
    with pytest.raises(ValueError, match=r"contextual_ratio must be a number in \[0, 1\]"):
        tokenprune.create_method("visionzip", contextual_ratio=ratio)


def test_a_composed_merging_method_merges_into_its_fill_tokens_only():
    """Contextual is any Hierarchical: here a diversity fill absorbs, the CLS core stays as it is."""
    visual, scores, metric, values, _ = _batch(4, 2, 30, False)
    composed = Contextual(core=TopK(ExternalScores("cls_attention")), fill=MaxMin(), core_ratio=0.5)
    plan = composed.plan(visual, scores=scores, budget=8, metric=metric)
    core = TopK(ExternalScores("cls_attention"))(visual, scores=scores, budget=4)
    for b in range(2):
        owners = set(plan.owner[b][plan.owner[b] >= 0].tolist())
        assert owners and owners.isdisjoint(core[b].tolist()) and owners <= set(plan.indices[b].tolist())
        dropped = [j for j in range(30) if j not in plan.indices[b].tolist()]
        assert (plan.owner[b, dropped] >= 0).all()  # with a fill, every dropped token joins one
    merged, absorbed = plan.merge(values)
    assert torch.equal(merged[~absorbed], values[~absorbed])


def test_assign_nearest_ties_go_to_the_lower_target_and_rows_without_targets_join_nothing():
    metric = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 1.0]], [[1.0, 0.0]] * 4])
    sources = torch.tensor([[False, False, True, True], [True] * 4])
    owner = assign_nearest(metric, sources, torch.tensor([[0, 1], [-1, -1]]))
    assert owner.tolist() == [[-1, -1, 0, 0], [-1, -1, -1, -1]]  # [2, 0] ties for [1, 0] and [1, 0]: the lower
    assert assign_nearest(metric, sources, torch.zeros(2, 0, dtype=torch.long)).eq(-1).all()


def test_merge_into_keeps_half_precision_and_sums_in_float32():
    values = torch.full((1, 300, 2), 0.1, dtype=torch.float16)
    owner = torch.zeros(1, 300, dtype=torch.long)
    owner[0, 0] = -1
    merged, absorbed = merge_into(values, owner)
    assert merged.dtype == torch.float16 and absorbed[0].tolist() == [True] + [False] * 299
    assert merged[0, 0].float().tolist() == pytest.approx([0.2, 0.2], abs=1e-3)


@HYPO
@given(st.integers(0, 2**31 - 1), st.integers(1, 30))
def test_stride_from_the_start_takes_every_floor_n_over_k_th_available_token(seed, n):
    g = torch.Generator().manual_seed(seed)
    available = torch.rand(2, n, generator=g) < 0.7
    available[:, 0] = True
    counts = available.sum(1).tolist()
    add = [int(torch.randint(1, c + 1, (1,), generator=g)) for c in counts]
    picked = select_stride(available, add, start=True)
    for b in range(2):
        positions = available[b].nonzero()[:, 0].tolist()
        step = max(1, counts[b] // add[b])
        assert picked[b].nonzero()[:, 0].tolist() == [positions[j * step] for j in range(add[b])]
    assert torch.equal(Stride(start=True)(torch.randn(1, n, 3), budget=1), torch.tensor([[0]]))
    with pytest.raises(ValueError, match="start must be a bool"):
        Stride(start=1)


class ClaimsNoMerge(Stride):  # merges is False, yet its plan sends every dropped token to a kept one
    def assign(self, tokens, target, metric):
        selection, owner = super().assign(tokens, target, metric)
        first = mask_to_indices(selection.mask, selection.counts)[:, :1]
        return selection, torch.where(tokens.real & ~selection.mask, first, owner)


class KeptTokensJoin(Contextual):  # a kept token joins another one
    def assign(self, tokens, target, metric):
        selection, owner = super().assign(tokens, target, metric)
        first = mask_to_indices(selection.mask, selection.counts)[:, :1]
        return selection, torch.where(selection.mask, first, owner)


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        (ClaimsNoMerge(), r"merges tokens into \[\d+\] but merges is False"),
        (KeptTokensJoin(core=TopK(ExternalScores()), fill=Stride(start=True)), r"kept or padding tokens \[.*\] join"),
    ],
)
def test_the_conformance_check_catches_a_broken_plan(selector, message):
    with pytest.raises(AssertionError, match=message):
        assert_conforms(selector)


def test_every_merging_composition_conforms():
    assert_conforms(Contextual(core=TopK(ExternalScores()), fill=MaxMin(), core_ratio=0.3))
    assert_conforms(tokenprune.create_method("visionzip", contextual_ratio=0.5))

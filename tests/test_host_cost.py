"""What a selector call costs the host on the route a GPU takes.

On a GPU at batch 1, a call's time is set by the host: every operation is a kernel launch, and every
read from the device (``.tolist()``, ``bool(t)``, ``int(t)``, ``.item()``) or blocking copy of host
data to it waits for everything queued before it. These tests run the GPU route on CPU tensors
(``MaxMin(block_size=0)`` takes it on any device) and count both: a call without masks reads from
the device once (its result check), copies no host data, and issues a number of operations that does
not grow with the number of picks once the fill is one kernel.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import _disable_current_modes

from tokenprune.functional import _triton
from tokenprune.methods.builtin import DEFAULT_CORE_RATIO
from tokenprune.stages import (
    ExternalScores,
    Hierarchical,
    MaxMin,
    RandomScores,
    Relevance,
    Stride,
    TopK,
    make_pooling,
)
from tokenprune.testing import HostTraffic, Operations


def _gpu_route(name: str, pooling: str = "mean"):
    """The built-in method ``name`` composed with the fill a GPU runs (batched, matrix, no host sync)."""
    relevance = TopK(Relevance(make_pooling(pooling)))
    return {
        "zspa": Hierarchical(core=relevance, fill=MaxMin(block_size=0), core_ratio=DEFAULT_CORE_RATIO),
        "divprune": MaxMin(block_size=0),
        "relevance": relevance,
        "attention": TopK(ExternalScores()),
        "random": TopK(RandomScores(0)),
        "stride": Stride(),
    }[name]


def _inputs(batch: int, n: int, dim: int = 16, prompt_tokens: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {
        "visual": torch.randn(batch, n, dim, generator=g),
        "prompt": torch.randn(batch, prompt_tokens, dim, generator=g),
        "scores": torch.rand(batch, n, generator=g),
    }


def _call(selector, inputs, budget, **extra):
    kwargs = {key: inputs[key] for key in ("prompt", "scores") if key in selector.requires}
    return selector(inputs["visual"], budget=budget, **kwargs, **extra)


@pytest.mark.parametrize("name", ["zspa", "divprune", "relevance", "attention", "random", "stride"])
@pytest.mark.parametrize("batch", [1, 4])
def test_a_call_without_masks_reads_the_device_once(name, batch):
    selector, inputs = _gpu_route(name), _inputs(batch, 40)
    with HostTraffic() as traffic:
        keep = _call(selector, inputs, 0.25)
    assert keep.shape == (batch, 10)
    assert traffic.reads == ["tolist"], "the result check's one read, and nothing else"
    assert traffic.blocking_copies == []


@pytest.mark.parametrize("pooling", ["mean", "max", "none"])
def test_zspa_reads_the_device_once_with_every_pooling(pooling):
    with HostTraffic() as traffic:
        _call(_gpu_route("zspa", pooling), _inputs(2, 40), 12)
    assert traffic.reads == ["tolist"]
    assert traffic.blocking_copies == []


@pytest.mark.parametrize("name", ["zspa", "divprune", "stride"])
def test_ragged_rows_read_their_counts_once_and_copy_nothing(name):
    """Masks cost one read for all of them (the real tokens per image; whether a prompt row is empty)."""
    inputs = _inputs(3, 40)
    visual_mask = torch.ones(3, 40, dtype=torch.bool)
    visual_mask[1, 25:] = False
    visual_mask[2, 13:] = False
    prompt_mask = torch.ones(3, 7, dtype=torch.bool)
    prompt_mask[0, 4:] = False
    selector = _gpu_route(name)
    extra = {"visual_mask": visual_mask}
    if "prompt" in selector.requires:
        extra["prompt_mask"] = prompt_mask
    with HostTraffic() as traffic:
        keep = _call(selector, inputs, 0.3, **extra)
    assert (keep >= 0).sum(dim=1).tolist() == [12, 8, 4]
    assert traffic.reads == ["tolist", "tolist"], "the masks' one read, then the result check's"
    assert traffic.blocking_copies == traffic.async_copies == [], "per-row counts are written on the device"


def test_a_non_finite_input_is_still_an_error_before_any_result():
    """Finiteness is checked with the result, in the same read; the error is the same as before."""
    inputs = _inputs(2, 20)
    inputs["visual"][1, 3, 0] = float("nan")
    with pytest.raises(Exception, match="visual row 1 has NaN"):
        _call(_gpu_route("zspa"), inputs, 5)
    inputs = _inputs(2, 20)
    inputs["prompt"][0, 2, 1] = float("inf")
    with pytest.raises(Exception, match="prompt has NaN"):
        _call(_gpu_route("zspa"), inputs, 5)
    inputs = _inputs(2, 20)
    inputs["scores"][1, 0] = float("-inf")
    with pytest.raises(Exception, match="scores has NaN"):
        _call(_gpu_route("attention"), inputs, 5)


def test_large_finite_inputs_are_not_mistaken_for_overflow():
    """The finiteness sums are float64: large float32 scores add up without overflowing."""
    inputs = _inputs(1, 64)
    inputs["scores"] = inputs["scores"] * 3e38  # finite; their float32 sum would be inf
    keep = _call(_gpu_route("attention"), inputs, 5)
    assert keep.tolist() == [sorted(inputs["scores"][0].argsort(descending=True)[:5].tolist())]


@pytest.fixture
def fill_kernel(monkeypatch):
    """Stands in for the Triton fill (one launch on a GPU): the same picks, computed outside the count."""
    calls = []

    def kernel(sims, maxsim, add):
        calls.append(max(add))
        with _disable_current_modes():
            rows, best, picks = torch.arange(sims.shape[0]), maxsim.clone(), []
            for _ in range(max(add)):
                picks.append(best.argmin(dim=1))
                best = torch.maximum(best, sims[rows, picks[-1]])
                best[rows, picks[-1]] = float("inf")
            return torch.stack(picks, dim=1)

    monkeypatch.setattr(_triton, "available", lambda device: True)
    monkeypatch.setattr(_triton, "fill_from_matrix", kernel)
    return calls


@pytest.mark.parametrize("name", ["zspa", "divprune"])
def test_operations_do_not_grow_with_the_picks_when_the_fill_is_one_kernel(fill_kernel, name):
    counts = []
    for n, budget in ((64, 8), (256, 100)):
        inputs = _inputs(1, n)
        with Operations() as ops:
            _call(_gpu_route(name), inputs, budget)
        counts.append(ops.total)
    assert len(fill_kernel) == 2, "the fill went through the kernel"
    assert counts[0] == counts[1]
    # each operation is a kernel launch that bounds a B = 1 call on a GPU: raise these only with a reason
    bound = {"zspa": 39, "divprune": 33}[name]
    assert counts[0] <= bound, f"{counts[0]} operations for one call (at most {bound}): {ops.ops}"


def test_the_loop_without_the_kernel_costs_a_few_operations_per_pick():
    """Without Triton each pick is an argmin, a row lookup, a max and a scatter; no host sync."""
    inputs = _inputs(1, 128)
    totals = []
    for budget in (20, 60):
        with Operations() as ops, HostTraffic() as traffic:
            _call(_gpu_route("zspa"), inputs, budget)
        totals.append(ops.total)
        assert traffic.reads == ["tolist"]
    picks = (60 - round(DEFAULT_CORE_RATIO * 60)) - (20 - round(DEFAULT_CORE_RATIO * 20))
    assert (totals[1] - totals[0]) / picks == 4


def test_the_recorders_see_reads_blocking_copies_and_operations():
    x = torch.arange(6.0)
    with HostTraffic() as traffic, Operations() as ops:
        bool(x.any())
        int(x[2])
        x.tolist()
        torch.tensor([1, 2], device="cpu")
        x.to("cpu")
        x.to("cpu", non_blocking=True)
        x.to(torch.float64)  # a dtype, not a device
        x.unsqueeze(0)  # a view launches nothing
    assert traffic.reads == ["__bool__", "__int__", "tolist"]
    assert len(traffic.where) == 3 and all("test_host_cost.py:" in where for where in traffic.where)
    assert traffic.blocking_copies == ["torch.tensor(..., device=...)", "Tensor.to(device)"]
    assert traffic.async_copies == ["Tensor.to(device, non_blocking=True)"]
    assert ops.ops["any"] == 1 and ops.ops["_to_copy"] == 1 and "unsqueeze" not in ops.ops


def test_calls_whose_result_size_the_device_decides_are_reads_and_copies_are_told_apart():
    """torch.where(mask), argwhere, boolean indexing, masked_select, unique, repeat_interleave by a tensor and
    formatting all wait for the device; .to(device=None) moves nothing, .cuda() and .to(tensor) may."""
    x, mask = torch.arange(6.0), torch.tensor([True, False] * 3)
    with HostTraffic() as traffic:
        torch.where(mask)
        mask.argwhere()
        x[mask]
        x[mask, ...] if x.dim() > 1 else x[(mask,)]
        x.masked_select(mask)
        torch.unique(x)
        x.repeat_interleave(torch.tensor([1, 2, 1, 1, 1, 1]))
        f"{x.sum():.2f}"
        torch.where(mask, x, 0.0)  # three arguments: elementwise, no read
        x[1:3]  # a slice: no read
        x.repeat_interleave(torch.tensor([1, 2, 1, 1, 1, 1]), output_size=7)  # size given: no read
        x.to(device=None)
        x.to(x)
    assert traffic.reads == [
        "where", "argwhere", "__getitem__", "__getitem__", "masked_select", "unique", "repeat_interleave",
        "__format__",
    ]  # fmt: skip
    assert traffic.blocking_copies == ["Tensor.to(device)"]  # x.to(x): the other tensor's device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["zspa", "divprune", "relevance", "stride"])
def test_cuda_call_without_masks_syncs_once(name):
    """On a GPU the built-in method syncs the host once per call (the result check), whatever its fill."""
    import warnings

    import tokenprune

    method = tokenprune.create_method(name)
    inputs = {key: value.cuda() for key, value in _inputs(1, 576, dim=256).items()}
    _call(method, inputs, 58)  # warm up: Triton compiles, caches allocate
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as syncs:
            warnings.simplefilter("always")
            keep = _call(method, inputs, 58)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert keep.shape == (1, 58) and keep.is_cuda
    assert len(syncs) == 1, [str(w.message) for w in syncs]

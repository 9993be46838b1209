"""tokenprune.graphed: a selector's device work replayed as one CUDA graph per input shape.

On CPU the capture is a stand-in that records the call's outputs and, at each replay, reruns the
call and writes its results into those same tensors, as a CUDA graph rewrites its buffers. It also
checks that the captured work neither reads from the device nor copies host data to it, which would
fail a CUDA capture. That checks everything around the graph (input buffers, keys, copies, checks,
fallbacks); the CUDA tests at the end check the real graph.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import tokenprune
from tokenprune import InputError, PluginWarning, TokenBatch
from tokenprune.stages import Hierarchical, MaxMin, Relevance, Stride, TopK
from tokenprune.testing import HostTraffic


def _rewrite(old, new) -> None:
    """Write the tensors of ``new`` into those of ``old`` (what a graph replay does to its outputs)."""
    if isinstance(old, torch.Tensor):
        old.copy_(new)
    elif isinstance(old, TokenBatch):
        for name in ("visual", "real", "prompt", "scores"):
            if getattr(old, name) is not None:
                getattr(old, name).copy_(getattr(new, name))
        if "norms" in old.__dict__:
            old.__dict__["norms"].copy_(new.norms)
    elif isinstance(old, tuple) and old and isinstance(old[0], int):
        assert old == new  # host counts are fixed at capture
    else:
        for a, b in zip(old, new, strict=True):
            _rewrite(a, b)


def _captured(body):
    """``body()``, which must neither read from the device nor copy host data to it: on a GPU either
    would fail the capture."""
    with HostTraffic() as traffic:
        outputs = body()
    assert traffic.reads == [], traffic.where
    assert traffic.blocking_copies == traffic.async_copies == []
    return outputs


def _stand_in(body, device):
    outputs = _captured(body)
    return (lambda: _rewrite(outputs, _captured(body))), outputs


def _lenient_stand_in(body, device):
    outputs = body()
    return (lambda: _rewrite(outputs, body())), outputs


def _graphed(selector, *, strict=True, **kwargs):
    """``graphed(selector)`` on CPU tensors with the stand-in capture. ``strict=False`` for a built-in
    method, whose max-min fill takes its CPU route on CPU tensors (which reads from the device);
    ``_gpu_zspa`` takes the route a GPU takes, and is checked strictly."""
    wrapper = tokenprune.graphed(selector, **kwargs)
    wrapper._applies = lambda visual: True  # CPU tensors take the graph route
    wrapper._capture = _stand_in if strict else _lenient_stand_in
    return wrapper


def _gpu_zspa():
    return Hierarchical(TopK(Relevance()), MaxMin(block_size=0), core_ratio=0.2)


def _inputs(seed, batch=2, n=48, dim=16, prompt_tokens=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n, dim, generator=g), torch.randn(batch, prompt_tokens, dim, generator=g)


def test_replays_make_the_eager_picks_for_new_inputs_of_one_shape():
    eager, wrapper = _gpu_zspa(), _graphed(_gpu_zspa())
    results = []
    for seed in range(4):
        visual, prompt = _inputs(seed)
        keep = wrapper(visual, prompt=prompt, budget=0.25)
        assert torch.equal(keep, eager(visual, prompt=prompt, budget=0.25))
        results.append(keep)
    assert wrapper.graphs == 1
    assert not torch.equal(results[0], results[1]), "different inputs, different picks"
    visual, prompt = _inputs(0)
    assert torch.equal(results[0], eager(visual, prompt=prompt, budget=0.25)), "a result is not overwritten"


def test_each_shape_and_budget_gets_its_own_graph_and_old_ones_are_dropped():
    wrapper = _graphed(_gpu_zspa(), max_graphs=2)
    eager = _gpu_zspa()
    for batch, n, budget in ((2, 48, 12), (1, 48, 12), (2, 48, 5), (2, 30, 0.5)):
        visual, prompt = _inputs(batch + n, batch=batch, n=n)
        assert torch.equal(wrapper(visual, prompt=prompt, budget=budget), eager(visual, prompt=prompt, budget=budget))
    assert wrapper.graphs == 2


def test_unbatched_input_and_every_capturable_builtin():
    visual, prompt = _inputs(3, batch=1)
    scores = torch.rand(1, 48, generator=torch.Generator().manual_seed(1))
    for name in ("zspa", "divprune", "relevance", "stride", "attention", "fastervlm"):
        method = tokenprune.create_method(name)
        wrapper = _graphed(method, strict=False)
        kwargs = {key: value[0] for key, value in (("prompt", prompt), ("scores", scores)) if key in method.requires}
        for _ in range(2):
            keep = wrapper(visual[0], budget=7, **kwargs)
            assert keep.shape == (7,) and torch.equal(keep, method(visual[0], budget=7, **kwargs))
        assert wrapper.graphs == 1, name


def test_a_replay_reads_the_device_once():
    """Copy the inputs in, replay, read the result check, copy the indices out: one read."""
    wrapper = _graphed(_gpu_zspa())
    visual, prompt = _inputs(0)
    wrapper(visual, prompt=prompt, budget=10)  # capture
    entry, replays = next(iter(wrapper._graphs.values())), []
    replay = entry.replay
    entry.replay = lambda: (replays.append(1), replay())
    visual, prompt = _inputs(1)
    with HostTraffic() as traffic:
        keep = wrapper(visual, prompt=prompt, budget=10)
    assert replays == [1] and torch.equal(keep, _gpu_zspa()(visual, prompt=prompt, budget=10))
    assert traffic.reads == ["tolist"] and traffic.blocking_copies == []


def test_a_non_finite_input_raises_on_replay_as_it_does_eagerly():
    wrapper = _graphed(_gpu_zspa())
    visual, prompt = _inputs(0)
    wrapper(visual, prompt=prompt, budget=10)
    bad = visual.clone()
    bad[1, 4, 2] = float("nan")
    with pytest.raises(InputError, match="visual row 1 has NaN"):
        wrapper(bad, prompt=prompt, budget=10)
    bad_prompt = prompt.clone()
    bad_prompt[0, 0, 0] = float("inf")
    with pytest.raises(InputError, match="prompt has NaN"):
        wrapper(visual, prompt=bad_prompt, budget=10)
    assert torch.equal(wrapper(visual, prompt=prompt, budget=10), _gpu_zspa()(visual, prompt=prompt, budget=10))


def _ragged(seed, real, prompt_real, n=48, prompt_tokens=5):
    """Inputs with masks: row ``b`` has ``real[b]`` real tokens and ``prompt_real[b]`` real prompt tokens,
    at positions drawn by ``seed`` (so that two seeds give the same counts at different places)."""
    g = torch.Generator().manual_seed(seed)
    visual, prompt = _inputs(seed, batch=len(real), n=n, prompt_tokens=prompt_tokens)
    visual_mask = torch.zeros(len(real), n, dtype=torch.bool)
    prompt_mask = torch.zeros(len(real), prompt_tokens, dtype=torch.bool)
    for row, (count, words) in enumerate(zip(real, prompt_real, strict=True)):
        visual_mask[row, torch.randperm(n, generator=g)[:count]] = True
        prompt_mask[row, :words] = True
    visual[~visual_mask] = float("nan")  # padding may hold anything
    return visual, prompt, {"visual_mask": visual_mask, "prompt_mask": prompt_mask}


def test_masked_replays_make_the_eager_picks_and_the_counts_are_part_of_the_shape():
    eager, wrapper = _gpu_zspa(), _graphed(_gpu_zspa())
    for seed, real in ((0, (48, 30, 11)), (1, (48, 30, 11)), (2, (48, 30, 11)), (3, (20, 30, 11))):
        visual, prompt, masks = _ragged(seed, real, (5, 2, 1))
        keep = wrapper(visual, prompt=prompt, budget=0.25, **masks)
        assert torch.equal(keep, eager(visual, prompt=prompt, budget=0.25, **masks)), seed
        assert (keep >= 0).sum(dim=1).tolist() == [round(0.25 * count) for count in real]
    assert wrapper.graphs == 2, "one graph for the first three calls, one for the new counts"


def test_a_masked_replay_reads_the_device_for_the_masks_and_the_result_as_an_eager_call_does():
    wrapper = _graphed(_gpu_zspa())
    visual, prompt, masks = _ragged(0, (48, 30), (5, 3))
    wrapper(visual, prompt=prompt, budget=10, **masks)  # capture
    visual, prompt, masks = _ragged(1, (48, 30), (5, 3))
    with HostTraffic() as traffic:
        keep = wrapper(visual, prompt=prompt, budget=10, **masks)
    assert torch.equal(keep, _gpu_zspa()(visual, prompt=prompt, budget=10, **masks))
    assert traffic.reads == ["tolist", "tolist"] and traffic.blocking_copies == []


def test_bad_masks_raise_before_any_graph_as_they_do_eagerly():
    wrapper = _graphed(_gpu_zspa())
    visual, prompt, masks = _ragged(0, (48, 0), (5, 3))
    with pytest.raises(InputError, match="visual_mask row 1 marks no real token"):
        wrapper(visual, prompt=prompt, budget=10, **masks)
    visual, prompt, masks = _ragged(0, (48, 30), (0, 3))
    with pytest.raises(InputError, match=r"prompt_mask marks no real token in rows \[0\]"):
        wrapper(visual, prompt=prompt, budget=10, **masks)
    assert wrapper.graphs == 0


def test_random_and_cpu_tensors_run_eagerly():
    visual, prompt = _inputs(0)
    random = _graphed(tokenprune.create_method("random", seed=3))
    assert not random.capturable
    assert torch.equal(random(visual, budget=9), tokenprune.create_method("random", seed=3)(visual, budget=9))
    plain = tokenprune.graphed(_gpu_zspa())  # the real capture: CUDA tensors only
    assert torch.equal(plain(visual, prompt=prompt, budget=9), _gpu_zspa()(visual, prompt=prompt, budget=9))
    assert random.graphs == plain.graphs == 0


def test_a_failed_capture_warns_and_runs_eagerly():
    def failing(body, device):
        raise RuntimeError("operation not permitted when stream is capturing")

    wrapper = _graphed(_gpu_zspa())
    wrapper._capture = failing
    visual, prompt = _inputs(0)
    with pytest.warns(PluginWarning, match="could not be captured"):
        keep = wrapper(visual, prompt=prompt, budget=10)
    assert torch.equal(keep, _gpu_zspa()(visual, prompt=prompt, budget=10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shape is remembered: no second capture, no second warning
        wrapper(visual, prompt=prompt, budget=10)
    assert wrapper.graphs == 0


def test_the_wrapper_is_a_selector_like_the_one_it_wraps():
    method = tokenprune.create_method("zspa", core_ratio=0.3)
    wrapper = tokenprune.graphed(method)
    assert wrapper.requires == method.requires and wrapper.capturable and repr(wrapper).startswith("graphed(")
    with pytest.raises(TypeError, match="takes a Selector"):
        tokenprune.graphed("zspa")
    with pytest.raises(ValueError, match="max_graphs"):
        tokenprune.graphed(method, max_graphs=0)
    with pytest.raises(tokenprune.MissingInputError):
        _graphed(method)(torch.randn(2, 10, 4), budget=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["zspa", "divprune", "relevance", "stride"])
def test_cuda_graph_replays_match_eager_calls(name):
    method = tokenprune.create_method(name)
    wrapper = tokenprune.graphed(method)
    for seed in range(3):
        for n in (576, 2880):
            visual, prompt = (t.cuda() for t in _inputs(seed, batch=1, n=n, dim=256, prompt_tokens=12))
            kwargs = {"prompt": prompt} if "prompt" in method.requires else {}
            assert torch.equal(wrapper(visual, budget=0.1, **kwargs), method(visual, budget=0.1, **kwargs))
    assert wrapper.graphs == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["zspa", "divprune"])
def test_cuda_graph_replays_match_eager_calls_with_masks(name):
    """Ragged rows (LLaVA-NeXT's images always are: its newline tokens are masked out) replay too."""
    method = tokenprune.create_method(name)
    wrapper = tokenprune.graphed(method)
    for seed in range(3):
        visual, prompt, masks = _ragged(seed, (2880, 2301), (12, 7), n=2880, prompt_tokens=12)
        visual, prompt = visual[..., :1].expand(-1, -1, 256) + _inputs(seed, 2, 2880, 256)[0], prompt.repeat(1, 1, 16)
        visual, prompt, masks = visual.cuda(), prompt.cuda(), {key: mask.cuda() for key, mask in masks.items()}
        kwargs = {"prompt": prompt, "prompt_mask": masks["prompt_mask"]} if "prompt" in method.requires else {}
        keep = wrapper(visual, budget=0.1, visual_mask=masks["visual_mask"], **kwargs)
        assert torch.equal(keep, method(visual, budget=0.1, visual_mask=masks["visual_mask"], **kwargs))
    assert wrapper.graphs == 1


@pytest.mark.parametrize("name", ["zspa", "divprune", "relevance", "stride", "attention"])
def test_the_graphed_route_conforms(name):
    """The selector contract on the degenerate cases (duplicates, zero vectors, K = N, K = 1, masks)."""
    from tokenprune.testing import assert_conforms

    assert_conforms(_graphed(tokenprune.create_method(name), strict=False))


@pytest.mark.parametrize(
    "selector",
    [_gpu_zspa(), MaxMin(block_size=0), TopK(Relevance()), Stride()],
    ids=["zspa", "divprune", "relevance", "stride"],
)
@pytest.mark.filterwarnings("error::tokenprune.PluginWarning")  # a failed capture fails the test
def test_the_route_a_gpu_takes_conforms_and_captures_nothing_it_cannot(selector):
    """The selector contract on the degenerate cases (ragged masks included), with the strict stand-in:
    nothing captured reads from the device or copies host memory, as a CUDA graph requires."""
    from tokenprune.testing import assert_conforms

    assert_conforms(_graphed(selector))

"""tokenprune.graphed: a selector's device work replayed as one CUDA graph per input shape.

On CPU the capture is a stand-in that records the call's outputs and, at each replay, reruns the
call and writes its results into those same tensors, as a CUDA graph rewrites its buffers. That
checks everything around the graph (input buffers, keys, copies, checks, fallbacks); the CUDA test
at the end checks the real graph.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import tokenprune
from tokenprune import InputError, PluginWarning, TokenBatch
from tokenprune.stages import Hierarchical, MaxMin, Relevance, TopK
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


def _stand_in(body, device):
    outputs = body()
    return (lambda: _rewrite(outputs, body())), outputs


def _graphed(selector, **kwargs):
    wrapper = tokenprune.graphed(selector, **kwargs)
    wrapper._applies = lambda visual: True  # CPU tensors take the graph route
    wrapper._capture = _stand_in
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
        wrapper = _graphed(method)
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


def test_masks_random_and_cpu_tensors_run_eagerly():
    visual, prompt = _inputs(0)
    mask = torch.ones(2, 48, dtype=torch.bool)
    mask[1, 30:] = False
    wrapper = _graphed(_gpu_zspa())
    keep = wrapper(visual, prompt=prompt, budget=0.25, visual_mask=mask)
    assert torch.equal(keep, _gpu_zspa()(visual, prompt=prompt, budget=0.25, visual_mask=mask))
    random = _graphed(tokenprune.create_method("random", seed=3))
    assert not random.capturable
    assert torch.equal(random(visual, budget=9), tokenprune.create_method("random", seed=3)(visual, budget=9))
    plain = tokenprune.graphed(_gpu_zspa())  # the real capture: CUDA tensors only
    assert torch.equal(plain(visual, prompt=prompt, budget=9), _gpu_zspa()(visual, prompt=prompt, budget=9))
    assert wrapper.graphs == random.graphs == plain.graphs == 0


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


@pytest.mark.parametrize("name", ["zspa", "divprune", "relevance", "stride", "attention"])
def test_the_graphed_route_conforms(name):
    """The selector contract on the degenerate cases (duplicates, zero vectors, K = N, K = 1, masks)."""
    from tokenprune.testing import assert_conforms

    assert_conforms(_graphed(tokenprune.create_method(name)))

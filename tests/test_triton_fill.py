"""The Triton max-min kernel makes the same picks as the PyTorch loop.

On CPU the kernel runs under Triton's interpreter (when Triton is installed; CI's CPU machines
usually lack it); on a CUDA machine the compiled kernel is checked against the CPU reference.
"""

import os

import pytest
import torch

import tokenprune
from tokenprune.functional import _triton, similarity_matrix
from tokenprune.functional.selection import _fill_from_matrix
from tokenprune.methods.builtin import DEFAULT_CORE_RATIO
from tokenprune.stages import Hierarchical, MaxMin, Relevance, TopK, make_pooling

CUDA = torch.cuda.is_available()


@pytest.fixture
def interpreted(monkeypatch):
    """The kernel on CPU tensors, under Triton's interpreter (conftest selects it before triton is imported)."""
    if CUDA or os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("runs under Triton's interpreter on machines without CUDA")
    if not _triton._importable():
        pytest.skip("triton is not installed")
    enabled = _triton.available
    monkeypatch.setattr(_triton, "available", lambda device: enabled(torch.device("cuda")))
    monkeypatch.delenv("TOKENPRUNE_DISABLE_TRITON", raising=False)


def _tokens(seed: int, batch: int, n: int, dim: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    visual = torch.randn(batch, n, dim, generator=g, dtype=torch.float64)
    visual[:, 3:7] = visual[:, :1]  # exact duplicates tie; the lower index must win
    visual[:, 1] = 0.0  # a zero vector: cosine 0 with everything
    return visual.to(dtype)


def _both_ways(monkeypatch, sims, selected, available, counts, add):
    monkeypatch.setenv("TOKENPRUNE_DISABLE_TRITON", "1")
    loop = _fill_from_matrix(sims.clone(), selected, available, counts, add, batched=True)
    monkeypatch.setenv("TOKENPRUNE_DISABLE_TRITON", "0")
    assert _triton.available(sims.device)
    kernel = _fill_from_matrix(sims.clone(), selected, available, counts, add, batched=True)
    return loop, kernel


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # selection runs in >= float32
@pytest.mark.parametrize("seed", range(3))
def test_kernel_matches_the_loop(interpreted, monkeypatch, dtype, seed):
    visual = _tokens(seed, 3, 37 + 11 * seed, 8, dtype)
    n = visual.shape[1]
    sims = similarity_matrix(visual)
    selected = torch.zeros(3, n, dtype=torch.bool)
    selected[:, 0] = True
    selected[2, [5, 20]] = True  # a row seeded with two tokens
    available = ~selected
    available[1, n // 2 :] = False  # a padded row: its tail may never be picked
    counts = [1, 1, 3]
    add = [n // 3, n // 2 - 1, 0]  # ragged: a row that adds nothing
    loop, kernel = _both_ways(monkeypatch, sims, selected, available, counts, add)
    assert torch.equal(loop, kernel)
    assert kernel.sum(1).tolist() == [c + a for c, a in zip(counts, add, strict=True)]
    assert not (kernel & ~available & ~selected).any()


def test_kernel_fills_every_available_token(interpreted, monkeypatch):
    """K = N: the fill runs until nothing is left, through the all-infinite tail."""
    visual = _tokens(7, 2, 20, 4, torch.float32)
    selected = torch.zeros(2, 20, dtype=torch.bool)
    selected[:, 4] = True
    loop, kernel = _both_ways(monkeypatch, similarity_matrix(visual), selected, ~selected, [1, 1], [19, 19])
    assert torch.equal(loop, kernel)
    assert kernel.all()


@pytest.mark.parametrize("name", ["divprune", "zspa"])
def test_methods_through_the_kernel_match_the_cpu_default(interpreted, name):
    """``block_size=0`` takes the batched path (the kernel, interpreted); the default is the blocked CPU fill."""
    visual = _tokens(3, 2, 50, 6, torch.float32)
    prompt = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(4))
    mask = torch.arange(50) < torch.tensor([[50], [31]])
    kwargs = {"budget": 0.3, "visual_mask": mask}
    if name == "zspa":
        kwargs["prompt"] = prompt
    reference = tokenprune.create_method(name)(visual, **kwargs)
    if name == "divprune":
        batched = MaxMin(block_size=0)
    else:  # the paper's composition with the fill CUDA takes
        core = TopK(Relevance(make_pooling("mean")))
        batched = Hierarchical(core=core, fill=MaxMin(block_size=0), core_ratio=DEFAULT_CORE_RATIO)
    assert torch.equal(reference, batched(visual, **kwargs))


def test_available_only_on_cuda_and_can_be_disabled(monkeypatch):
    monkeypatch.delenv("TOKENPRUNE_DISABLE_TRITON", raising=False)
    assert not _triton.available(torch.device("cpu"))
    assert _triton.available(torch.device("cuda")) == _triton._importable()
    monkeypatch.setenv("TOKENPRUNE_DISABLE_TRITON", "1")
    assert not _triton.available(torch.device("cuda"))


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("name", ["zspa", "divprune"])
def test_cuda_kernel_matches_cpu_at_llava_sizes(name):
    """Compiled kernel, real sizes, ragged batch: the same tokens as the CPU path (float64: no rounding ties)."""
    assert _triton.available(torch.device("cuda")), "the kernel must be in use on CUDA when triton imports"
    g = torch.Generator().manual_seed(0)
    visual = torch.randn(3, 2880, 64, generator=g, dtype=torch.float64)
    visual[:, 10:20] = visual[:, :1]
    prompt = torch.randn(3, 9, 64, generator=g, dtype=torch.float64)
    mask = torch.arange(2880) < torch.tensor([[2880], [2000], [576]])
    kwargs = {"budget": 0.1, "visual_mask": mask, "prompt": prompt} if name == "zspa" else {"budget": 0.1}
    method = tokenprune.create_method(name)
    cpu = method(visual, **kwargs)
    gpu = method(visual.cuda(), **{k: v.cuda() if torch.is_tensor(v) else v for k, v in kwargs.items()})
    assert torch.equal(cpu, gpu.cpu())

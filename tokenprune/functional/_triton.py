"""The greedy max-min fill as one Triton kernel per batch (CUDA only; optional).

The fill is inherently sequential: each pick depends on the last. As a loop of PyTorch operations
it launches about eight kernels per pick, so on a GPU it is bound by launch latency (a few ms for the
288 picks of K = 288), not by arithmetic. Here each image is one Triton program that keeps its
``maxsim`` row in registers and, per pick, takes the first minimum and folds in one row of the
precomputed similarity matrix: one launch for the whole fill.

The kernel makes exactly the picks of the PyTorch loop in
:func:`tokenprune.functional.selection._fill_from_matrix`: the same comparisons on the same values,
ties to the lower index (``tl.argmin`` with ``tie_break_left``). It is used only when Triton imports
and the tensors are on a CUDA device; ``TOKENPRUNE_DISABLE_TRITON=1`` turns it off. The test suite
runs it on CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``) when Triton is installed.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["MAX_TOKENS", "available", "fill_from_matrix"]

MAX_TOKENS = 1 << 16
"""Largest N the kernel takes (its row lives in registers); larger inputs use the PyTorch loop."""


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def maxmin_fill(
        sims_ptr,  # (B, N, N) cosines, snapped (snap_unit)
        maxsim_ptr,  # (B, N) start scores: +inf where a token may not be picked
        picks_ptr,  # (B, steps) int64 out
        n,
        steps,
        stride_sb,
        stride_sr,
        stride_mb,
        stride_pb,
        BLOCK: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        inside = offs < n
        best = tl.load(maxsim_ptr + row * stride_mb + offs, mask=inside, other=float("inf"))
        base = sims_ptr + row * stride_sb
        step = 0
        while step < steps:  # not range(steps): Triton's interpreter cannot index with a numpy>=2.4 scalar
            pick = tl.argmin(best, axis=0, tie_break_left=True)
            tl.store(picks_ptr + row * stride_pb + step, pick.to(tl.int64))
            sim = tl.load(base + pick.to(tl.int64) * stride_sr + offs, mask=inside, other=float("-inf"))
            best = tl.where(offs == pick, float("inf"), tl.maximum(best, sim))
            step += 1

    return maxmin_fill


@functools.cache
def _importable() -> bool:
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def available(device: torch.device) -> bool:
    """Whether the fill uses the kernel for tensors on ``device``: CUDA, Triton importable, not disabled."""
    if os.environ.get("TOKENPRUNE_DISABLE_TRITON", "") not in ("", "0"):
        return False
    return device.type == "cuda" and _importable()


def fill_from_matrix(sims: Tensor, maxsim: Tensor, add: Sequence[int]) -> Tensor:
    """Run ``max(add)`` max-min picks per row on a precomputed, snapped similarity matrix.

    Args:
        sims: ``(B, N, N)`` cosines, already snapped (:func:`tokenprune.functional.snap_unit`).
        maxsim: ``(B, N)`` each token's best similarity to the selected set; ``+inf`` where a token may
            not be picked (selected, padding). Not modified.
        add: picks per row; a row's picks after its ``add[b]``-th are made but meaningless.

    Returns:
        ``(B, max(add))`` int64 picked indices in pick order.
    """
    batch, n, _ = sims.shape
    steps = max(add, default=0)
    picks = torch.empty((batch, steps), dtype=torch.int64, device=sims.device)  # indices as torch uses them
    if steps == 0 or batch == 0:
        return picks
    if sims.stride(2) != 1:
        sims = sims.contiguous()
    maxsim = maxsim.to(sims.dtype).contiguous()
    block = max(16, 1 << (n - 1).bit_length())
    warps = 4 if block <= 2048 else 8 if block <= 8192 else 16
    _kernel()[(batch,)](
        sims,
        maxsim,
        picks,
        n,
        steps,
        sims.stride(0),
        sims.stride(1),
        maxsim.stride(0),
        picks.stride(0),
        BLOCK=block,
        num_warps=warps,
    )
    return picks

"""Replay a selector's device work as one CUDA graph per input shape (experimental).

On a GPU at batch 1 a selector call is bound by the host: zspa issues about 41 small operations, and
the host needs longer to launch them than the GPU needs to run them. :func:`graphed` records those
operations once per input shape as a CUDA graph and afterwards launches the whole call at once::

    zspa = tokenprune.graphed(tokenprune.create_method("zspa"))
    keep = zspa(visual, prompt=prompt, budget=0.1)      # CUDA: captured once per shape, then replayed

A replay copies the inputs into the graph's own buffers, launches the graph, reads the result check
(one read from the device, as in an eager call) and returns a copy of the indices. The picks are
those of the eager call; input checks, errors and the result check are the same.

The graph is used only where it can be: inputs on a CUDA device, and a selector whose device work
reads nothing from the device (:attr:`tokenprune.Selector.capturable`; ``random``, which draws its
keys on the CPU, is not). A capture that fails anyway falls back to the eager call for that shape,
with a :class:`~tokenprune.errors.PluginWarning`. On a CPU the wrapper is the selector itself.

A shape is every input's shape, dtype and device, the real tokens per row and the tokens kept per
row. Ragged batches (``visual_mask``, ``prompt_mask``) are captured too: as in an eager call, their
masks are read once before the call (the real tokens per row are part of the shape), and the graph
then takes the masks as inputs like the tokens. LLaVA-NeXT's images are always ragged (their
``image_newline`` tokens are masked out), so the same image size repeats a graph, and a new size
captures again. Prompts of different lengths are different shapes too, so a stream of varying
prompts captures again for each new length.
Capturing costs two eager calls and the capture itself, so it pays off when a shape repeats.
Each shape keeps its graph and its buffers (for zspa at N = 2880, about 35 MB for the N x N
similarities); at most ``max_graphs`` are kept, the least recently used dropped first.

**Status.** The capture and replay logic is tested on CPU with a stand-in for the CUDA graph, which
also fails on any read from the device or copy of host memory inside the captured work. It has
not yet been run on a GPU (no device was lent to the session that wrote it); ``tests/test_graphs.py``
holds the CUDA test that will check it.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tokenprune.budget import Budget, resolve_budget
from tokenprune.errors import PluginWarning
from tokenprune.selector import CheckedInputs, Selector, TokenBatch, Wrapper

__all__ = ["Graphed", "graphed"]


@dataclass
class _Captured:
    """One shape's graph: its input buffers, and the outputs every replay rewrites in place."""

    replay: Callable[[], None]
    inputs: dict[str, Tensor]
    tokens: TokenBatch
    reported: tuple[int, ...]
    summary: Tensor
    indices: Tensor

    def load(self, given: dict[str, Tensor]) -> None:
        for name, buffer in self.inputs.items():
            buffer.copy_(given[name])


_EAGER = object()  # a shape whose capture failed: calls run eagerly


def _cuda_capture(body: Callable[[], Any], device: torch.device) -> tuple[Callable[[], None], Any]:
    """Capture ``body`` as a CUDA graph; returns ``(replay, outputs)``.

    ``body`` runs twice first on a side stream (Triton compiles its kernel, cuBLAS picks its
    algorithms, the caching allocator fills), as graph capture requires.
    """
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device=device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        for _ in range(2):
            body()
    current.wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = body()
    return graph.replay, outputs


class Graphed(Wrapper):
    """``selector`` with its device work captured as a CUDA graph per input shape (see the module).

    Args:
        selector: any selector (a registered method or a composition).
        max_graphs: shapes kept at once (least recently used dropped first).
    """

    def __init__(self, selector: Selector, *, max_graphs: int = 8) -> None:
        if not isinstance(selector, Selector):
            raise TypeError(f"graphed() takes a Selector; got {type(selector).__name__}")
        if isinstance(max_graphs, bool) or not isinstance(max_graphs, int) or max_graphs < 1:
            raise ValueError(f"max_graphs must be an int >= 1; got {max_graphs!r}")
        super().__init__(selector)
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple, Any] = OrderedDict()
        self._capture: Callable[[Callable[[], Any], torch.device], tuple[Callable[[], None], Any]] = _cuda_capture
        self._applies: Callable[[Tensor], bool] = lambda visual: visual.is_cuda

    def __repr__(self) -> str:
        return f"graphed({self.selector!r})"

    @property
    def graphs(self) -> int:
        """Shapes captured and kept now."""
        return sum(entry is not _EAGER for entry in self._graphs.values())

    def _select(
        self,
        visual: Tensor,
        prompt: Tensor | None,
        budget: Budget,
        visual_mask: Tensor | None,
        prompt_mask: Tensor | None,
        scores: Tensor | None,
    ) -> Tensor:
        def eager() -> Tensor:
            masks = {"visual_mask": visual_mask, "prompt_mask": prompt_mask}
            return self.selector(visual, prompt=prompt, budget=budget, scores=scores, **masks)

        if not self.capturable or not isinstance(visual, Tensor) or not self._applies(visual):
            return eager()
        # the checks and the masks' one read happen here, outside the graph, as in an eager call
        checked = TokenBatch.check(
            visual, prompt=prompt, visual_mask=visual_mask, prompt_mask=prompt_mask, scores=scores
        )
        self.check_inputs(checked)
        target = resolve_budget(budget, checked.counts)
        given = checked.tensors()
        key = (target, checked.counts, *((name, tuple(t.shape), t.dtype, t.device) for name, t in given.items()))
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._record(key, checked, target)
        else:
            self._graphs.move_to_end(key)
        if entry is _EAGER:  # its capture failed: this shape runs eagerly (checks and reads again)
            return eager()
        entry.load(given)
        entry.replay()
        self.selector.check_result(entry.tokens, entry.reported, entry.summary.tolist(), target)
        indices = entry.indices.clone()  # the graph rewrites its buffer at the next replay
        return indices.squeeze(0) if checked.unbatched else indices

    def _record(self, key: tuple, checked: CheckedInputs, target: tuple[int, ...]) -> Any:
        inputs = {name: value.clone() for name, value in checked.tensors().items()}
        static = checked.replace(inputs)  # the graph reads its inputs from these buffers

        def body() -> tuple[TokenBatch, tuple[int, ...], Tensor, Tensor]:
            tokens = TokenBatch.from_checked(static)
            return (tokens, *self.selector.run(tokens, target))

        try:
            replay, (tokens, reported, summary, indices) = self._capture(body, static.visual.device)
        except Exception as exc:  # e.g. a selector that reads from the device or copies host data
            warnings.warn(
                f"{self.selector!r} could not be captured as a CUDA graph for this input shape "
                f"({type(exc).__name__}: {exc}); it runs eagerly for it",
                PluginWarning,
                stacklevel=4,
            )
            entry: Any = _EAGER
        else:
            entry = _Captured(replay, inputs, tokens, reported, summary, indices)
        self._graphs[key] = entry
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        return entry


def graphed(selector: Selector, *, max_graphs: int = 8) -> Graphed:
    """``selector`` with its device work replayed as a CUDA graph per input shape (see :mod:`tokenprune.graphs`)."""
    return Graphed(selector, max_graphs=max_graphs)

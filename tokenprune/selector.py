"""The Selector interface: what every pruning method is, and how it is called.

A selector is called on projected visual tokens and returns the indices of the tokens to keep::

    keep = selector(visual, prompt=prompt, budget=0.1)        # (B, K) int64, ascending

Internally a selector *extends* a :class:`Selection` (a keep-mask with host-side per-row counts)
until each row holds its target count. That single operation is what lets any selector serve as the
core or the fill of another (see :class:`tokenprune.stages.Hierarchical`).
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from tokenprune.budget import Budget, resolve_budget
from tokenprune.errors import InputError, MissingInputError, SelectorError
from tokenprune.functional import mask_to_indices, merge_into, token_norms

__all__ = ["SCORE_SOURCES", "CheckedInputs", "MergePlan", "Selection", "Selector", "TokenBatch", "Wrapper"]

SCORE_SOURCES = {
    "external": "passed by the caller as scores=",
    "cls_attention": "attention from the vision encoder's CLS token to each patch at the feature layer",
    "lm_attention": "attention from the last prompt token to each visual token in a language-model layer",
}
"""Where a selector's ``scores`` come from when it runs inside a model (:func:`tokenprune.apply`)."""

_HALF = (torch.float16, torch.bfloat16)

_INPUT_HELP = {
    "prompt": "the prompt's text token embeddings, (B, M, D) or (M, D)",
    "scores": "external importance scores such as attention, (B, N) or (N,)",
}


def _shape(t: object) -> str:
    if not isinstance(t, Tensor):
        return "None" if t is None else type(t).__name__
    return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')} on {t.device}"


def _as_mask(name: str, mask: Tensor | None, shape: tuple[int, int], device: torch.device) -> Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise InputError(f"{name} must be a bool tensor of shape {shape}; got {type(mask).__name__}")
    if mask.dim() == 1 and shape[0] == 1:
        mask = mask.unsqueeze(0)
    if tuple(mask.shape) != shape:
        raise InputError(f"{name} must have shape {shape} (True = real token); got {_shape(mask)}")
    if mask.device != device:
        raise InputError(f"{name} is on {mask.device} but visual is on {device}; move them to one device")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
            raise InputError(f"{name} must be bool (or integer 0/1, True = real token); got {_shape(mask)}")
        mask = mask.bool()
    return mask


@dataclass(frozen=True, eq=False)
class TokenBatch:
    """Validated selector inputs, batched, in the dtype selection computes in.

    Attributes:
        visual: ``(B, N, D)`` float (half precision is upcast to float32).
        real: ``(B, N)`` bool, True for real (non-padding) visual tokens.
        counts: real visual tokens per row, on the host.
        prompt: ``(B, M, D)`` or None.
        prompt_mask: ``(B, M)`` bool or None (all real).
        scores: ``(B, N)`` or None.
        unbatched: the caller passed ``(N, D)`` and gets ``(K,)`` back.
    """

    visual: Tensor
    real: Tensor
    counts: tuple[int, ...]
    prompt: Tensor | None = None
    prompt_mask: Tensor | None = None
    scores: Tensor | None = None
    unbatched: bool = False

    @cached_property
    def norms(self) -> Tensor:
        """``(B, N)`` norms of the visual tokens, computed on first use and shared by every stage.

        Stages that never read the token values (stride, random, external scores) never pay for this
        pass over ``B x N x D``. A real token holding NaN or infinite values has a non-finite norm;
        the selector call that computed the norms then raises :class:`InputError` (see
        :meth:`check_finite`).
        """
        return token_norms(self.visual)

    @property
    def batch_size(self) -> int:
        return self.visual.shape[0]

    @property
    def all_real(self) -> bool:
        """Whether every row's tokens are all real (no padding), known on the host."""
        n = self.visual.shape[1]
        return all(count == n for count in self.counts)

    def finite_sums(self) -> list[Tensor]:
        """One float64 sum per checked input, each a one-element tensor: finite exactly when that input's
        real values are (for token vectors: their norms, which also overflow when the float32 squares do).

        The inputs checked are the prompt's token norms, the scores, and the visual token norms once a
        stage has computed them. Padding was zeroed by :meth:`from_inputs`, and the sums are in float64,
        so a large but finite float32 input cannot overflow them. The sums stay on the device: a
        selector call concatenates them with its counts and reads them with its result check, in one
        device-to-host copy.
        """
        parts = [token_norms(self.prompt)] if self.prompt is not None else []
        parts += [self.scores] if self.scores is not None else []
        parts += [self.norms] if "norms" in self.__dict__ else []
        return [part.sum(dtype=torch.float64).view(1) for part in parts]

    def check_finite(self) -> None:
        """Raise :class:`InputError` naming the first input that holds NaN or infinite real values.

        Reads from the device (a host sync on CUDA): selector calls run it only when
        :meth:`finite_sums` says something is wrong, or when a selector failed.
        """
        if self.prompt is not None and not bool(torch.isfinite(token_norms(self.prompt)).all()):
            raise InputError("prompt has NaN, infinite or overflowing values in real tokens")
        if self.scores is not None and not bool(torch.isfinite(self.scores).all()):
            raise InputError("scores has NaN or infinite values at real tokens")
        if "norms" in self.__dict__:
            bad = (~torch.isfinite(self.norms)).any(dim=1)
            if bool(bad.any()):
                row = int(bad.nonzero()[0, 0])
                raise InputError(f"visual row {row} has NaN, infinite or overflowing values in real tokens")

    @classmethod
    def from_inputs(
        cls,
        visual: Tensor,
        *,
        prompt: Tensor | None = None,
        visual_mask: Tensor | None = None,
        prompt_mask: Tensor | None = None,
        scores: Tensor | None = None,
    ) -> TokenBatch:
        """Check the selector inputs and batch them; raises :class:`InputError` saying what is wrong.

        The same as :meth:`check` followed by :meth:`from_checked`.
        """
        checked = cls.check(visual, prompt=prompt, visual_mask=visual_mask, prompt_mask=prompt_mask, scores=scores)
        return cls.from_checked(checked)

    @staticmethod
    def check(
        visual: Tensor,
        *,
        prompt: Tensor | None = None,
        visual_mask: Tensor | None = None,
        prompt_mask: Tensor | None = None,
        scores: Tensor | None = None,
    ) -> CheckedInputs:
        """Check the selector inputs; raises :class:`InputError` saying what is wrong.

        Shapes, dtypes and devices are checked on the host. Masks are read from the device once, in
        one copy, for the real visual tokens per row and whether every prompt row has a real token
        (integer masks are first checked to hold only 0 and 1, one read each); without masks nothing
        is read. Whether the values are finite is checked by the selector call, with its result
        (:meth:`finite_sums`), so that a call on a GPU reads from the device as little as it can.
        """
        if not isinstance(visual, Tensor):
            raise InputError(f"visual must be a torch.Tensor of shape (B, N, D) or (N, D); got {type(visual).__name__}")
        if visual.dim() not in (2, 3) or not visual.is_floating_point():
            raise InputError(f"visual must be a float tensor of shape (B, N, D) or (N, D); got {_shape(visual)}")
        unbatched = visual.dim() == 2
        if unbatched:
            visual = visual.unsqueeze(0)
            prompt = prompt.unsqueeze(0) if isinstance(prompt, Tensor) and prompt.dim() == 2 else prompt
            scores = scores.unsqueeze(0) if isinstance(scores, Tensor) and scores.dim() == 1 else scores
        batch, n, dim = visual.shape
        if batch == 0 or n == 0 or dim == 0:
            raise InputError(f"visual needs at least one image, one token and one feature; got {_shape(visual)}")
        device = visual.device
        visual_mask = _as_mask("visual_mask", visual_mask, (batch, n), device)

        if prompt is not None:
            if not isinstance(prompt, Tensor) or prompt.dim() != 3 or not prompt.is_floating_point():
                raise InputError(f"prompt must be a float tensor of shape ({batch}, M, {dim}); got {_shape(prompt)}")
            if prompt.shape[0] != batch or prompt.shape[2] != dim or prompt.shape[1] == 0:
                raise InputError(
                    f"prompt must have shape ({batch}, M, {dim}) with M >= 1 to match visual {tuple(visual.shape)}; "
                    f"got {tuple(prompt.shape)}"
                )
            if prompt.device != device:
                raise InputError(f"prompt is on {prompt.device} but visual is on {device}; move them to one device")
            prompt_mask = _as_mask("prompt_mask", prompt_mask, tuple(prompt.shape[:2]), device)
        elif prompt_mask is not None:
            raise InputError("prompt_mask was given without prompt")

        if scores is not None:
            if not isinstance(scores, Tensor) or tuple(scores.shape) != (batch, n) or not scores.is_floating_point():
                raise InputError(f"scores must be a float tensor of shape ({batch}, {n}); got {_shape(scores)}")
            if scores.device != device:
                raise InputError(f"scores is on {scores.device} but visual is on {device}; move them to one device")

        # without masks every token is real and every prompt token too: no need to ask the device (a host
        # sync on CUDA); with masks, one read for both
        parts = [] if visual_mask is None else [visual_mask.sum(dim=1)]
        parts += [] if prompt_mask is None else [prompt_mask.any(dim=1).long()]
        host = torch.cat(parts).tolist() if parts else []
        counts = (n,) * batch if visual_mask is None else tuple(int(c) for c in host[:batch])
        for row, count in enumerate(counts):
            if count == 0:
                raise InputError(f"visual_mask row {row} marks no real token; every image needs at least one")
        if prompt_mask is not None:
            empty = [row for row, has in enumerate(host[-batch:]) if not has]
            if empty:
                raise InputError(f"prompt_mask marks no real token in rows {empty}; every prompt needs one")
        return CheckedInputs(visual, counts, prompt, visual_mask, prompt_mask, scores, unbatched)

    @classmethod
    def from_checked(cls, checked: CheckedInputs) -> TokenBatch:
        """Batch inputs that passed :meth:`check`: device work only, nothing read from the device.

        Half precision is upcast to float32, and padding (masked-out tokens) is zeroed, so that it is
        inert in every stage.
        """
        visual, visual_mask, prompt, prompt_mask, scores = (
            checked.visual,
            checked.visual_mask,
            checked.prompt,
            checked.prompt_mask,
            checked.scores,
        )
        compute = torch.float32 if visual.dtype in _HALF else visual.dtype
        real = (
            visual_mask
            if visual_mask is not None
            else torch.ones(visual.shape[:2], dtype=torch.bool, device=visual.device)
        )
        visual = visual.to(compute)
        if visual_mask is not None:  # padding may hold anything; make it inert (zero) once, here
            visual = visual.masked_fill(~real.unsqueeze(-1), 0.0)
        if prompt is not None:
            prompt = prompt.to(compute)
            if prompt_mask is not None:
                prompt = prompt.masked_fill(~prompt_mask.unsqueeze(-1), 0.0)
        if scores is not None:  # in their own precision (float64 scores may differ by less than float32 resolves)
            scores = scores.float() if scores.dtype in _HALF else scores
            if visual_mask is not None:
                scores = scores.masked_fill(~real, 0.0)
        return cls(visual, real, checked.counts, prompt, prompt_mask, scores, checked.unbatched)


@dataclass(frozen=True, eq=False)
class CheckedInputs:
    """Selector inputs that passed :meth:`TokenBatch.check`: batched, masks as bool, real tokens counted.

    Attributes:
        visual: ``(B, N, D)`` float, as given (not yet upcast or zeroed at padding).
        counts: real visual tokens per row, on the host.
        prompt, visual_mask, prompt_mask, scores: batched, masks bool; None where not given.
        unbatched: the caller passed ``(N, D)``.
    """

    visual: Tensor
    counts: tuple[int, ...]
    prompt: Tensor | None
    visual_mask: Tensor | None
    prompt_mask: Tensor | None
    scores: Tensor | None
    unbatched: bool

    TENSORS = ("visual", "prompt", "visual_mask", "prompt_mask", "scores")

    def tensors(self) -> dict[str, Tensor]:
        """The tensors given, by name (``visual``, then those of the others that are not None)."""
        return {name: getattr(self, name) for name in self.TENSORS if getattr(self, name) is not None}

    def replace(self, tensors: dict[str, Tensor]) -> CheckedInputs:
        """These inputs with the named tensors swapped for others of the same shapes."""
        return dataclasses.replace(self, **tensors)


def _as_metric(metric: Tensor | None, tokens: TokenBatch) -> Tensor:
    """The merge metric, batched and zero at padding; the visual tokens when None."""
    if metric is None:
        return tokens.visual
    batch, n = tokens.real.shape
    if isinstance(metric, Tensor) and tokens.unbatched and metric.dim() == 2:
        metric = metric.unsqueeze(0)
    if not isinstance(metric, Tensor) or metric.dim() != 3 or tuple(metric.shape[:2]) != (batch, n):
        raise InputError(f"metric must be a float tensor of shape ({batch}, {n}, C); got {_shape(metric)}")
    if not metric.is_floating_point() or metric.shape[2] == 0:
        raise InputError(f"metric must be a float tensor of shape ({batch}, {n}, C) with C >= 1; got {_shape(metric)}")
    if metric.device != tokens.visual.device:
        raise InputError(
            f"metric is on {metric.device} but visual is on {tokens.visual.device}; move them to one device"
        )
    metric = metric.float() if metric.dtype in _HALF else metric
    return metric if tokens.all_real else metric.masked_fill(~tokens.real.unsqueeze(-1), 0.0)


@dataclass(frozen=True, eq=False)
class MergePlan:
    """What :meth:`Selector.plan` returns: the tokens kept, and which dropped tokens merge into them.

    Attributes:
        indices: the call's result, ``(B, K)`` int64 ascending (``-1``-padded for ragged rows).
        owner: ``(B, N)`` int64: for each token, the index of the kept token it merges into, or ``-1``
            (kept tokens, padding, and dropped tokens that join none).
    """

    indices: Tensor
    owner: Tensor

    def merge(self, values: Tensor) -> tuple[Tensor, Tensor]:
        """``values`` ``(B, N, C)`` after merging (:func:`tokenprune.functional.merge_into`).

        Returns ``(merged, absorbed)``: every token's merged value, and ``(B, N)`` bool of the kept
        tokens whose value changed (those with members). Gather ``indices`` for the kept ones.
        """
        if values.dim() == 2 and self.owner.dim() == 1:
            merged, absorbed = merge_into(values.unsqueeze(0), self.owner.unsqueeze(0))
            return merged.squeeze(0), absorbed.squeeze(0)
        return merge_into(values, self.owner)


@dataclass(frozen=True, eq=False)
class Selection:
    """A partial selection: ``mask`` ``(B, N)`` bool, and ``counts`` of True per row on the host."""

    mask: Tensor
    counts: tuple[int, ...]

    @classmethod
    def empty(cls, tokens: TokenBatch) -> Selection:
        mask = torch.zeros_like(tokens.real)
        return cls(mask, tuple(0 for _ in tokens.counts))

    def needed(self, target: Sequence[int]) -> tuple[int, ...]:
        """Tokens still to add per row to reach ``target``."""
        return tuple(t - c for t, c in zip(target, self.counts, strict=True))

    def available(self, tokens: TokenBatch) -> Tensor:
        """Tokens that may still be chosen: real and not selected."""
        return tokens.real & ~self.mask

    @property
    def is_empty(self) -> bool:
        """Whether no row holds a token (known on the host)."""
        return not any(self.counts)

    def added(self, new: Tensor, add: Sequence[int]) -> Selection:
        """This selection plus the ``new`` tokens (``add[b]`` of them in row ``b``)."""
        counts = tuple(c + a for c, a in zip(self.counts, add, strict=True))
        return Selection(new if self.is_empty else self.mask | new, counts)


class Selector(ABC):
    """A visual-token selector. Subclasses implement :meth:`extend`; calling one does the rest.

    Attributes:
        requires: the optional inputs it needs (``"prompt"``, ``"scores"``).
        batch_invariant: whether each row's result is independent of the rest of the batch.
        capturable: whether its device work can be recorded as a CUDA graph (:mod:`tokenprune.graphs`):
            it reads nothing from the device and copies no host data (without masks).
        score_source: where ``scores`` come from inside a model (see :data:`SCORE_SOURCES`), or None.
        prune_layer: the language-model layer before which a model integration drops the tokens
            (FastV), or None to prune before the language model.
        merges: whether it folds dropped tokens into kept ones (:meth:`plan`; VisionZip's contextual
            tokens). A model integration then hands it a merge metric and merges the vision features.
    """

    requires: frozenset[str] = frozenset()
    batch_invariant: bool = True
    capturable: bool = True
    score_source: str | None = None
    prune_layer: int | None = None
    merges: bool = False

    @abstractmethod
    def extend(self, tokens: TokenBatch, selection: Selection, target: tuple[int, ...]) -> Selection:
        """Add tokens to ``selection`` until row ``b`` holds ``target[b]`` (never removes any).

        ``target[b]`` is at least ``selection.counts[b]`` and at most ``tokens.counts[b]``.
        """

    def __call__(
        self,
        visual: Tensor,
        *,
        prompt: Tensor | None = None,
        budget: Budget,
        visual_mask: Tensor | None = None,
        prompt_mask: Tensor | None = None,
        scores: Tensor | None = None,
    ) -> Tensor:
        """Select the visual tokens to keep.

        Args:
            visual: ``(B, N, D)`` projected visual tokens, or ``(N, D)`` for one image.
            prompt: ``(B, M, D)`` prompt token embeddings (``(M, D)`` with unbatched visual).
            budget: int ``K`` per image, or a float ratio in ``(0, 1]`` of each image's real tokens
                (``K = max(1, floor(ratio * N + 0.5))``).
            visual_mask: ``(B, N)`` bool, True = real token, for images with different token counts.
            prompt_mask: ``(B, M)`` bool, True = real token, for prompts of different lengths.
            scores: ``(B, N)`` external importance (e.g. attention) for methods that use it.

        Returns:
            int64 indices on visual's device, ascending in each row: ``(B, K)``, or ``(K,)`` for
            unbatched input. When images keep different numbers of tokens (ragged masks with a ratio
            budget), each row is right-padded with ``-1`` to the longest; ``(indices >= 0).sum(-1)``
            gives the per-row counts.

        Raises:
            InputError: wrong shapes, dtypes, devices, non-finite values.
            MissingInputError: a required ``prompt`` or ``scores`` is missing.
            BudgetError: the budget cannot be met.
        """
        with torch.no_grad():  # indices have no gradient; inputs may come from a model being trained
            return self._select(visual, prompt, budget, visual_mask, prompt_mask, scores)

    def _select(
        self,
        visual: Tensor,
        prompt: Tensor | None,
        budget: Budget,
        visual_mask: Tensor | None,
        prompt_mask: Tensor | None,
        scores: Tensor | None,
    ) -> Tensor:
        inputs = {"prompt": prompt, "visual_mask": visual_mask, "prompt_mask": prompt_mask, "scores": scores}
        tokens, indices, _ = self._checked(
            visual, inputs, budget, lambda tokens, target: (*self.run(tokens, target), None)
        )
        return indices.squeeze(0) if tokens.unbatched else indices

    def _checked(
        self,
        visual: Tensor,
        inputs: dict[str, Tensor | None],
        budget: Budget,
        work: Callable[[TokenBatch, tuple[int, ...]], tuple[tuple[int, ...], Tensor, Tensor, Any]],
    ) -> tuple[TokenBatch, Tensor, Any]:
        """A call's checks around its device work: ``work(tokens, target)`` gives :meth:`run`'s three results
        and one more value, returned with the batched inputs and the indices."""
        tokens = TokenBatch.from_inputs(visual, **inputs)
        self.check_inputs(tokens)
        target = resolve_budget(budget, tokens.counts)
        try:
            reported, summary, indices, extra = work(tokens, target)
        except Exception:
            tokens.check_finite()  # a non-finite input explains a failure better than the selector's error
            raise
        self.check_result(tokens, reported, summary.tolist(), target)  # the call's one read without masks
        return tokens, indices, extra

    def run(self, tokens: TokenBatch, target: tuple[int, ...]) -> tuple[tuple[int, ...], Tensor, Tensor]:
        """A call's device work, from validated inputs to indices; no host sync without masks.

        Returns:
            ``(reported, summary, indices)``: the per-row counts the selection reports (host ints);
            a float64 ``summary`` on the device for :meth:`check_result` (tokens selected per row,
            then padding tokens selected per row when there is padding, then the inputs'
            :meth:`TokenBatch.finite_sums`); and the ``(B, max K)`` indices.
        """
        return self._summarize(tokens, self.extend(tokens, Selection.empty(tokens), target), target)

    @staticmethod
    def _summarize(
        tokens: TokenBatch, selection: Selection, target: tuple[int, ...]
    ) -> tuple[tuple[int, ...], Tensor, Tensor]:
        mask = selection.mask
        parts = [mask.sum(dim=1, dtype=torch.float64)]
        if not tokens.all_real:
            parts.append((mask & ~tokens.real).sum(dim=1, dtype=torch.float64))
        summary = torch.cat([*parts, *tokens.finite_sums()])  # one concatenation: one operation
        return selection.counts, summary, mask_to_indices(mask, target)

    def assign(self, tokens: TokenBatch, target: tuple[int, ...], metric: Tensor) -> tuple[Selection, Tensor]:
        """The selection, and the ``(B, N)`` owner map of the dropped tokens merged into kept ones.

        ``metric`` ``(B, N, C)``: the vectors a merge compares (zero at padding). A selector that does
        not merge (:attr:`merges` False) keeps its selection and merges nothing (owner all ``-1``).
        """
        selection = self.extend(tokens, Selection.empty(tokens), target)
        return selection, torch.full(tokens.real.shape, -1, dtype=torch.long, device=tokens.real.device)

    def plan(
        self,
        visual: Tensor,
        *,
        prompt: Tensor | None = None,
        budget: Budget,
        visual_mask: Tensor | None = None,
        prompt_mask: Tensor | None = None,
        scores: Tensor | None = None,
        metric: Tensor | None = None,
    ) -> MergePlan:
        """Select as a call does, and say which dropped tokens merge into which kept ones.

        Takes the arguments of a call, plus ``metric``: ``(B, N, C)`` (or ``(N, C)``) vectors by whose
        cosine a merging selector assigns dropped tokens to kept ones; the visual tokens when None.
        A model integration passes the vision encoder's keys (VisionZip) and merges the encoder's
        features with :meth:`MergePlan.merge` before the projector.

        Returns:
            A :class:`MergePlan`: the call's indices, and the owner map.
        """

        def work(tokens: TokenBatch, target: tuple[int, ...]) -> tuple[tuple[int, ...], Tensor, Tensor, Tensor]:
            vectors = _as_metric(metric, tokens)
            if self.merges and not bool(torch.isfinite(vectors.sum(dtype=torch.float64))):  # a NaN wins every argmax
                what = "metric" if metric is not None else "visual (compared by the merge, as no metric was given)"
                raise InputError(f"{what} has NaN or infinite values at real tokens")
            selection, owner = self.assign(tokens, target, vectors)
            return (*self._summarize(tokens, selection, target), owner)

        inputs = {"prompt": prompt, "visual_mask": visual_mask, "prompt_mask": prompt_mask, "scores": scores}
        with torch.no_grad():
            tokens, indices, owner = self._checked(visual, inputs, budget, work)
        if tokens.unbatched:
            return MergePlan(indices.squeeze(0), owner.squeeze(0))
        return MergePlan(indices, owner)

    def check_result(
        self, tokens: TokenBatch, reported: tuple[int, ...], summary: list[float], target: tuple[int, ...]
    ) -> None:
        """Raise if an input was not finite or the selection broke the contract, from :meth:`run`'s summary."""
        batch = tokens.batch_size
        counted = batch if tokens.all_real else 2 * batch
        if not all(math.isfinite(v) for v in summary[counted:]):
            tokens.check_finite()
        picked, padding = tuple(int(v) for v in summary[:batch]), int(sum(summary[batch:counted]))
        if reported != target or picked != target or padding:
            raise SelectorError(
                f"{self!r} broke the selector contract: it reported {list(reported)} tokens per row and "
                f"selected {list(picked)} ({padding} of them padding); expected {list(target)} real tokens"
            )

    def check_inputs(self, tokens: TokenBatch | CheckedInputs, *, label: str | None = None) -> None:
        """Raise :class:`MissingInputError` if an input in :attr:`requires` is missing."""
        for name in sorted(self.requires):
            if getattr(tokens, name) is None:
                who = label or type(self).__name__
                raise MissingInputError(f"{who} needs {name}= ({_INPUT_HELP[name]}); got None")


class Wrapper(Selector):
    """A selector that behaves as the one it wraps (``self.selector``) and adds something around its calls.

    Its inputs, properties and selection are the wrapped selector's; subclasses change how a call runs
    (:class:`tokenprune.registry.Method` names its errors, :class:`tokenprune.graphs.Graphed` replays
    CUDA graphs).
    """

    def __init__(self, selector: Selector) -> None:
        self.selector = selector

    @property
    def requires(self) -> frozenset[str]:
        return self.selector.requires

    @property
    def batch_invariant(self) -> bool:
        return self.selector.batch_invariant

    @property
    def capturable(self) -> bool:
        return self.selector.capturable

    @property
    def score_source(self) -> str | None:
        return self.selector.score_source

    @property
    def prune_layer(self) -> int | None:
        return self.selector.prune_layer

    @property
    def merges(self) -> bool:
        return self.selector.merges

    def extend(self, tokens: TokenBatch, selection: Selection, target: tuple[int, ...]) -> Selection:
        return self.selector.extend(tokens, selection, target)

    def assign(self, tokens: TokenBatch, target: tuple[int, ...], metric: Tensor) -> tuple[Selection, Tensor]:
        return self.selector.assign(tokens, target, metric)

    def check_inputs(self, tokens: TokenBatch | CheckedInputs, *, label: str | None = None) -> None:
        self.selector.check_inputs(tokens, label=label)

"""Pruning inside Hugging Face VLMs: the adapter interface and the model-independent pruning pass.

An adapter knows one model family: how to encode its images into projected visual tokens, which
token id marks image placeholders, and how to rebuild the inputs of its stock ``generate`` and
``forward`` around a shorter sequence. :func:`prune_inputs` does the rest for every family: find
each image's placeholder span from the token ids (no hard-coded offsets), gather the prompt's text
embeddings, run the selector on all images of the batch at once (ragged token counts are masked),
and drop the placeholders of the pruned tokens.
"""

from __future__ import annotations

import inspect
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from tokenprune.budget import Budget, resolve_budget
from tokenprune.errors import InputError, TokenPruneError
from tokenprune.functional import mask_to_indices, merge_into
from tokenprune.selector import SCORE_SOURCES, Selector

__all__ = [
    "POSITIONS",
    "ImageTokens",
    "Layout",
    "ModelAdapter",
    "PruneStats",
    "PrunedInputs",
    "PrunedSequence",
    "Selected",
    "UnsupportedMergeError",
    "UnsupportedScoresError",
    "VideoPlaceholders",
    "placeholder_runs",
    "prunable_counts",
    "prune_inputs",
    "check_merging",
    "check_method",
    "check_prune_layer",
    "encode",
    "check_positions",
    "merged_features",
    "resolve_positions",
    "select_per_image",
    "visual_names",
]

PROMPT_SCOPES = ("text",)

POSITIONS = {
    "contiguous": "the shorter sequence numbered 0, 1, 2, ... as if each image had only its kept tokens "
    "(what the reference code of DivPrune and ZSPAPrune feeds LLaVA)",
    "original": "every kept token keeps the position it had in the full sequence; the text after an image "
    "and the generated tokens keep theirs too (what FastV does, and Qwen2.5-VL's M-RoPE always)",
}
"""How the language model positions the tokens of a pruned sequence (``tokenprune.apply(positions=...)``)."""


class UnsupportedScoresError(TokenPruneError, ValueError):
    """The model family cannot provide the scores the method asks for (e.g. CLS attention without a CLS token)."""


class UnsupportedMergeError(TokenPruneError, ValueError):
    """The method merges tokens (VisionZip) and the model family or the call cannot merge them."""


@dataclass
class PruneStats:
    """What one pruned ``generate``/``forward`` call did.

    Attributes:
        visual_before: visual tokens per image before pruning (as the LM would have seen them).
        visual_after: visual tokens per image kept (``protected`` tokens such as LLaVA-NeXT's
            ``image_newline`` included).
        selection_ms: time in the selector (all images of the batch at once).
        prefill_ms: time of the language model's prefill forward, when it ran under tokenprune.
        sequence_before / sequence_after: LM input length per row, real tokens only.
        kept: per image, the indices (in that image's token order) of the tokens kept.
        merged: for a merging method (VisionZip), per image, the ``(N_i,)`` owner map: for each token
            dropped and merged, the index of the kept token it joined; ``-1`` elsewhere. Empty otherwise.
    """

    visual_before: list[int]
    visual_after: list[int]
    selection_ms: float
    kept: list[Tensor] = field(default_factory=list, repr=False)
    merged: list[Tensor] = field(default_factory=list, repr=False)
    sequence_before: list[int] = field(default_factory=list)
    sequence_after: list[int] = field(default_factory=list)
    prefill_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: counts and timings (kept indices and owner maps as lists)."""
        out = dict(self.__dict__)
        out["kept"] = [k.tolist() for k in self.kept]
        out["merged"] = [m.tolist() for m in self.merged]
        return out


@dataclass
class ImageTokens:
    """Projected visual tokens of every image of a batch, in placeholder order.

    Attributes:
        features: one ``(N_i, D)`` tensor per image, in the order the model scatters them into the
            placeholders (row-major over the batch).
        protected: per image, an ``(N_i,)`` bool mask of tokens that are always kept and are outside
            the budget (e.g. LLaVA-NeXT ``image_newline``), or None.
        scores: per image, ``(N_i,)`` importance (e.g. CLS attention) for methods that need it, or None.
        raw: per image, ``(N_i, C)`` the vision features before the projector, for merging methods
            (``encode_images(merge=True)``): :meth:`ModelAdapter.project` of a raw token is its feature.
            Protected tokens hold anything (they are never merged).
        metric: per image, ``(N_i, c)`` the vectors a merge compares (the feature layer's keys,
            averaged over heads), with ``raw``.
        per_token: other per-token tensors the model needs beside the features, by name, one ``(N_i, ...)``
            tensor per image (Qwen3-VL's deepstack features): kept at the same indices as the features and
            handed to :meth:`ModelAdapter.rebuild` as ``per_token``.
    """

    features: list[Tensor]
    protected: list[Tensor] | None = None
    scores: list[Tensor] | None = None
    raw: list[Tensor] | None = None
    metric: list[Tensor] | None = None
    per_token: dict[str, list[Tensor]] | None = None


@dataclass
class PrunedInputs:
    """The rewritten call: ``kwargs`` for the stock method, and what is needed to undo it.

    ``expandable``: the kept features as :meth:`ModelAdapter.rebuild` gives them, one entry per image or video
    (the ``mm_encoder_outputs`` that ``generate`` can copy per row for beam search), where the family's
    ``forward`` reads another layout (:meth:`ModelAdapter.model_features`); None where the two are the same.
    """

    kwargs: dict[str, Any]
    keep: Tensor  # (B, L) bool over the original sequence: True = the token stays
    original_input_ids: Tensor
    stats: PruneStats
    expandable: dict[str, Any] | None = None


class ModelAdapter(ABC):
    """One model family's knowledge. Subclass it to support a new family, and return an instance
    from the ``tokenprune_model_adapter`` hook.
    """

    #: keyword arguments of generate/forward that describe raw images; replaced by ``mm_encoder_outputs``
    image_kwargs: tuple[str, ...] = ("pixel_values", "image_sizes")

    #: the :data:`POSITIONS` modes this family supports, its default first. The base class handles both
    #: for a 1-D rotary LM (:meth:`original_positions`); a family with other positions overrides this.
    position_modes: tuple[str, ...] = ("contiguous", "original")

    #: whether ``encode_images(inputs, merge=True)`` gives ``raw`` and ``metric`` and :meth:`project`
    #: works, so that merging methods (VisionZip) can run on this family
    merging: bool = False

    #: the score sources (:data:`tokenprune.selector.SCORE_SOURCES`) ``encode_images`` provides, or None when
    #: the family does not declare them (then only ``encode_images`` refuses, when asked). Declaring them
    #: lets :func:`check_method` refuse a method before any work, as ``tokenprune compare`` does.
    score_sources: frozenset[str] | None = None

    def __init__(self, model: Any) -> None:
        self.model = model

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    @abstractmethod
    def image_token_id(self) -> int:
        """The placeholder token id the processor puts once per visual token."""

    @property
    def placeholder_ids(self) -> tuple[int, ...]:
        """Every placeholder token id whose tokens are pruned: :attr:`image_token_id`, and for a family that
        also takes videos, the video placeholder (Qwen2.5-VL). A *visual input* is one image or one video."""
        return (self.image_token_id,)

    def modalities(self, inputs: Mapping[str, Any]) -> list[str] | None:
        """Per visual input, in placeholder order, its key in ``mm_encoder_outputs`` (``"image"``, ``"video"``),
        or None when every one is an image. :meth:`rebuild` hands each modality's kept features to the model
        under its key; a family that encodes videos too says here which entries are videos."""
        return None

    @abstractmethod
    def encode_images(self, inputs: Mapping[str, Any], *, scores: str | None = None, **options: Any) -> ImageTokens:
        """Projected visual tokens per image, in placeholder order (after the projector).

        ``scores``: a score source (:data:`tokenprune.selector.SCORE_SOURCES`) the selector needs;
        raise :class:`UnsupportedScoresError` if this family cannot provide it. ``merge=True`` (only
        asked of a family with :attr:`merging`): also the ``raw`` features and the merge ``metric``.
        """

    def project(self, raw: Tensor) -> Tensor:
        """The projector applied to ``(..., C)`` raw vision features (``ImageTokens.raw``), token by token."""
        raise UnsupportedMergeError(f"{self.name} cannot merge tokens: it has no projector to apply to merged features")

    def protected_tokens(self, inputs: Mapping[str, Any]) -> list[Tensor] | None:
        """Per image, an ``(N_i,)`` bool mask of tokens always kept and outside the budget, or None.

        Used where the adapter does not encode the images (pruning inside the LM); must agree with
        ``ImageTokens.protected`` from :meth:`encode_images`.
        """
        return None

    def image_token_counts(self, inputs: Mapping[str, Any]) -> list[int] | None:
        """Per image, its number of placeholders, known without encoding (pruning inside the LM), or None.

        None takes one image per run of consecutive placeholders, which is right wherever other tokens
        separate the images (Qwen2.5-VL's vision start and end tokens). A family whose prompts may put two
        images' placeholders side by side (LLaVA's ``<image><image>``) must say where one ends. The base
        class takes the lengths of :meth:`protected_tokens` when there are some.
        """
        protected = self.protected_tokens(inputs)
        return None if protected is None else [int(mask.shape[0]) for mask in protected]

    #: why the family's tokens have no vision [CLS] attention of their own (e.g. "the SigLIP vision encoder has
    #: no CLS token"), said when a method asks for it; None where nothing more is known
    no_cls_attention: str | None = None

    def unsupported_scores(self, source: str) -> UnsupportedScoresError:
        message = f"{self.name} cannot provide {source!r} scores ({SCORE_SOURCES.get(source, 'unknown source')})"
        if source == "cls_attention" and self.no_cls_attention:
            message += (
                f": {self.no_cls_attention}; use a method that scores tokens from their features and the prompt "
                f"(e.g. 'zspa', 'divprune', 'relevance')"
            )
        return UnsupportedScoresError(message)

    #: the model config's attributes naming other tokens that are never prompt text (image start and end markers)
    marker_token_attrs: tuple[str, ...] = ()

    def special_token_ids(self) -> set[int]:
        """Token ids that are never part of the prompt text (BOS/EOS/PAD, the :attr:`marker_token_attrs`)."""
        ids: set[int] = set()
        configs = [getattr(self.model, "config", None), getattr(self.model, "generation_config", None)]
        text_config = getattr(configs[0], "text_config", None)
        for config in [*configs, text_config]:
            for attr in ("bos_token_id", "eos_token_id", "pad_token_id", *self.marker_token_attrs):
                value = _config_value(config, attr)
                if isinstance(value, int):
                    ids.add(value)
                elif isinstance(value, Iterable) and not isinstance(value, str | bytes):
                    ids.update(v for v in value if isinstance(v, int))
        return ids

    def frame_tokens(self, input_ids: Tensor, placeholders: Tensor) -> Tensor | None:
        """``(B, L)`` bool: tokens the processor writes around visual inputs that the model config does not name
        (:attr:`marker_token_attrs`) and that are never prompt text, found from the ids and the ``(B, L)``
        placeholder mask (Idefics3's tile tags); None where there are none."""
        return None

    def pad_token_id(self) -> int:
        for config in (getattr(self.model, "generation_config", None), getattr(self.model.config, "text_config", None)):
            value = getattr(config, "pad_token_id", None) if config is not None else None
            if isinstance(value, int):
                return value
        return 0

    def language_model(self) -> Any:
        """The decoder stack (with ``.layers`` and ``.config``) that FastV prunes inside."""
        return self.model.model.language_model

    def embed(self, input_ids: Tensor) -> Tensor:
        """The language model's input embeddings of ``input_ids``."""
        return self.model.get_input_embeddings()(input_ids)

    def original_positions(self, inputs: Mapping[str, Any], pruned: PrunedSequence) -> Tensor:
        """``(B, L')`` position ids of the kept tokens in the full sequence, for ``positions="original"``.

        The full sequence's positions are the caller's ``position_ids`` when given, else those stock
        ``generate`` builds from the attention mask (``cumsum - 1``, 0 at padding). Stock ``generate``
        continues each row from its last position + 1, so decoding keeps the original positions too.
        """
        input_ids = inputs["input_ids"]
        given = inputs.get("position_ids")
        if given is None:
            mask = inputs.get("attention_mask")
            mask = torch.ones_like(input_ids) if mask is None else mask.long()
            given = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        elif given.dim() != 2 or given.shape[-1] != input_ids.shape[1] or given.shape[0] not in (1, input_ids.shape[0]):
            raise InputError(
                f"{self.name}: position_ids must be (B, L) or (1, L) for input_ids {tuple(input_ids.shape)}; "
                f"got {tuple(given.shape)}"
            )
        return pruned.take(given.expand(input_ids.shape[0], -1), fill=0)

    #: the first language-model layer before which a method may prune inside the LM (FastV): a family whose
    #: LM adds visual features to its visual tokens in its first layers (Qwen3-VL's DeepStack) needs them all
    first_prunable_layer: int = 0

    #: the modalities whose kept features the family's ``forward`` reads as one tensor rather than a list per
    #: image or video: ``{"image": False}`` one ``(T, D)`` tensor (InternVL), ``True`` one ``(1, T, D)``
    #: (Gemma 3's images, LLaVA-OneVision's videos); see :meth:`model_features`
    one_tensor: ClassVar[Mapping[str, bool]] = {}

    def model_features(self, encoded: dict[str, Any]) -> dict[str, Any]:
        """``mm_encoder_outputs`` in the layout the family's ``forward`` reads.

        :meth:`rebuild` gives each modality's kept features as a list, one ``(K_i, D)`` tensor per image or
        video, which is what ``generate`` can copy row by row for beam search and several returned sequences.
        tokenprune calls this at the ``forward`` call, after ``generate`` has copied the rows. The default joins
        the lists of the :attr:`one_tensor` modalities; only lists are converted (a call may see a layout
        already converted).
        """
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        for kind, batched in self.one_tensor.items():
            output = encoded.get(kind)
            if output is not None and isinstance(output.pooler_output, list | tuple):
                joined = torch.cat(list(output.pooler_output))
                encoded[kind] = BaseModelOutputWithPooling(pooler_output=joined[None] if batched else joined)
        return encoded

    def encoder_output(self, kind: str, features: list[Tensor], per_token: dict[str, list[Tensor]] | None) -> Any:
        """One modality's entry of ``mm_encoder_outputs``: its kept features, one ``(K_i, D)`` tensor per input,
        and their other per-token tensors (:attr:`ImageTokens.per_token`) where ``encode_images`` gave some; a
        family that gives them overrides this to hand them to its model (Qwen3-VL's DeepStack features)."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if per_token:
            raise TokenPruneError(
                f"{self.name}: encode_images gave per-token tensors {sorted(per_token)}, which only the family knows "
                f"how to hand to its model: override encoder_output(kind, features, per_token) to pass them"
            )
        return BaseModelOutputWithPooling(pooler_output=features)

    def rebuild(
        self,
        inputs: Mapping[str, Any],
        pruned: PrunedSequence,
        features: list[Tensor],
        per_token: dict[str, list[Tensor]] | None = None,
    ) -> dict[str, Any]:
        """New keyword arguments for the stock generate/forward: shorter ids, mask, pre-encoded features.

        ``per_token``: the kept tokens' other per-token tensors (:attr:`ImageTokens.per_token`), given only when
        ``encode_images`` gave some; each modality's share goes to :meth:`encoder_output`.
        """
        kwargs = {key: value for key, value in inputs.items() if key not in self.image_kwargs}
        kwargs["input_ids"] = pruned.input_ids
        kwargs["attention_mask"] = pruned.attention_mask
        if inputs.get("labels") is not None:
            kwargs["labels"] = pruned.take(inputs["labels"], fill=-100)
        kinds = self.modalities(inputs) or ["image"] * len(features)
        if len(kinds) != len(features):
            raise TokenPruneError(
                f"{self.name}: modalities(inputs) names {len(kinds)} visual inputs but {len(features)} were encoded"
            )
        grouped: dict[str, list[int]] = {}
        for i, kind in enumerate(kinds):
            grouped.setdefault(kind, []).append(i)
        kwargs["mm_encoder_outputs"] = {
            kind: self.encoder_output(
                kind,
                [features[i] for i in mine],
                None if not per_token else {name: [values[i] for i in mine] for name, values in per_token.items()},
            )
            for kind, mine in grouped.items()
        }
        return kwargs


class VideoPlaceholders:
    """For an adapter whose family takes videos besides images (Qwen2.5-VL, LLaVA-OneVision): the video
    placeholder is pruned too, and :meth:`modalities` tells images from videos in placeholder order.

    The family says how many placeholders each image and each video has (:meth:`visual_lengths`), so
    inputs of one kind may sit side by side (several images of one prompt), and an input's placeholders
    need not be contiguous (Qwen3-VL writes a timestamp between a video's frames).
    """

    model: Any
    image_token_id: int
    name: str

    @property
    def video_token_id(self) -> int:
        return self.model.config.video_token_id

    @property
    def placeholder_ids(self) -> tuple[int, ...]:
        return (self.image_token_id, self.video_token_id)

    def visual_lengths(self, inputs: Mapping[str, Any], kind: str) -> list[int]:
        """Placeholders of each image (``kind="image"``) or video (``"video"``) of the call, in order."""
        raise NotImplementedError

    def nothing_to_prune(self) -> InputError:
        return InputError(f"{self.name}: nothing to prune: the call has neither pixel_values nor pixel_values_videos")

    def in_placeholder_order(self, inputs: Mapping[str, Any], per_kind: Mapping[str, Sequence[Any]]) -> list[Any]:
        """One list of the images' entries and the videos' (``per_kind["image"]``, ``per_kind["video"]``, each in
        its own order), interleaved as the inputs' placeholders are (:meth:`modalities`)."""
        kinds = self.modalities(inputs) or ["image"] * len(per_kind.get("image", ()))
        taken = {kind: iter(entries) for kind, entries in per_kind.items()}
        return [next(taken[kind]) for kind in kinds]

    def lengths_in_placeholder_order(self, inputs: Mapping[str, Any]) -> list[int] | None:
        """Per image and video of the call, its placeholders, in placeholder order (:meth:`visual_lengths`), or None
        without pixels: :meth:`ModelAdapter.image_token_counts` for a family whose video's frames are written
        apart (Qwen3-VL, GLM-4V), where runs of placeholders do not tell one video from the next."""
        present = [
            kind
            for kind, pixels in (("image", "pixel_values"), ("video", "pixel_values_videos"))
            if inputs.get(pixels) is not None
        ]
        if not present:
            return None
        return self.in_placeholder_order(inputs, {kind: self.visual_lengths(inputs, kind) for kind in present})

    def visual_count(self, inputs: Mapping[str, Any], kind: str) -> int:
        """How many images (videos) the call gives; override to count them without reading the device."""
        return len(self.visual_lengths(inputs, kind))

    def modalities(self, inputs: Mapping[str, Any]) -> list[str] | None:
        """Images and videos in placeholder order. Reads the device only when a call holds both (with one kind,
        every visual input is of that kind), and then once per call: encoding and rebuilding ask again, and get
        the answer of the same inputs."""
        if inputs.get("pixel_values_videos") is None:
            return None
        if inputs.get("pixel_values") is None:
            return ["video"] * self.visual_count(inputs, "video")
        names = ("input_ids", "attention_mask", *getattr(self, "image_kwargs", ()))
        key = tuple(inputs.get(name) for name in names)
        memo = getattr(self, "_modalities_memo", None)
        if (
            memo is not None
            and memo[0] == names
            and all(ref() is value for ref, value in zip(memo[1], key, strict=True))
        ):
            return list(memo[2])
        order = self._placeholder_kinds(inputs)
        self._modalities_memo = (names, tuple(_weak(value) for value in key), order)
        return list(order)

    def _placeholder_kinds(self, inputs: Mapping[str, Any]) -> list[str]:
        lengths = {"video": self.visual_lengths(inputs, "video"), "image": self.visual_lengths(inputs, "image")}
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        kind = (ids == self.image_token_id).long() + 2 * (ids == self.video_token_id).long()
        if mask is not None:
            kind = kind * mask.long()
        table = kind.tolist()  # one read: the kind of every token (a few thousand ints)
        rows = [row for row, tokens in enumerate(table) for token in tokens if token]
        kinds = [token for tokens in table for token in tokens if token]  # row-major, as the placeholders fill
        left = {"image": iter(lengths["image"]), "video": iter(lengths["video"])}
        order: list[str] = []
        i = 0
        while i < len(kinds):  # one visual input at a time: its own number of placeholders, in one row, of one kind
            name = "image" if kinds[i] == 1 else "video"
            n = next(left[name], 0)
            end = i + n - 1
            # a video's frames may be apart (Qwen3-VL puts a timestamp between them); its placeholders are not
            whole = n > 0 and end < len(kinds) and rows[end] == rows[i] and set(kinds[i : end + 1]) == {kinds[i]}
            if not whole:
                break
            order.append(name)
            i = end + 1
        if i < len(kinds) or len(order) != len(lengths["image"]) + len(lengths["video"]):
            raise InputError(
                f"{self.name}: the input's image and video placeholders do not line up with the "
                f"{len(lengths['image'])} images ({lengths['image']} tokens) and {len(lengths['video'])} videos "
                f"({lengths['video']} tokens) given; expected each one's placeholders in full, in order"
            )
        return order


@dataclass
class PrunedSequence:
    """The kept tokens of every row, re-padded on the side the input was padded on."""

    keep: Tensor  # (B, L) bool over the original sequence
    index: Tensor  # (B, L') long: original position of each new position (0 where padding)
    real: Tensor  # (B, L') bool
    input_ids: Tensor
    attention_mask: Tensor

    @classmethod
    def build(
        cls, input_ids: Tensor, keep: Tensor, *, left: bool, pad_token_id: int, lengths: Sequence[int] | None = None
    ) -> PrunedSequence:
        """``lengths``: kept tokens per row when known on the host (saves a read from the device)."""
        width = int(keep.sum(dim=1).max()) if lengths is None else max(lengths)
        lengths = keep.sum(dim=1)
        batch = keep.shape[0]
        order = torch.sort(keep.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :width]
        slots = torch.arange(width, device=keep.device).expand(batch, width)
        real = slots < lengths.unsqueeze(1)
        if left:  # move each row's kept tokens to the right end
            shift = (width - lengths).unsqueeze(1)
            source = (slots - shift).clamp_min(0)
            order = order.gather(1, source)
            real = slots >= shift
        index = order.masked_fill(~real, 0)
        ids = input_ids.gather(1, index).masked_fill(~real, pad_token_id)
        return cls(keep, index, real, ids, real.long())

    def take(self, values: Tensor, *, fill: int | float, dim: int = 1) -> Tensor:
        """``values`` (…, B, L, …) along sequence ``dim`` at the kept positions, padded with ``fill``."""
        index, real = self.index, self.real
        shape = [1] * values.dim()
        shape[dim - 1], shape[dim] = index.shape
        index_ = index.view(shape).expand(*values.shape[: dim - 1], *index.shape, *values.shape[dim + 1 :])
        real_ = real.view(shape).expand_as(index_)
        return values.gather(dim, index_).masked_fill(~real_, fill)


def _cache(kwargs: dict[str, Any]) -> Any:
    """The KV cache among forward keyword arguments: ``cache`` (transformers >= 5.24) or ``past_key_values``."""
    cache = kwargs.get("cache")
    return kwargs.get("past_key_values") if cache is None else cache


def _config_value(config: Any, attr: str) -> Any:
    """``config.attr``, or None where the config lacks it or computes it (a property: Idefics3's deprecated
    top-level ``pad_token_id``, a default that is not the model's PAD; the text config holds the real one)."""
    if config is None or isinstance(inspect.getattr_static(type(config), attr, None), property):
        return None
    return getattr(config, attr, None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _right_padded(attention_mask: Tensor) -> Tensor:
    """``(1,)`` long, 1 if some row has padding after a real token (right padding), else 0 (left or none)."""
    mask = attention_mask.bool()
    return (mask[:, :-1] & ~mask[:, 1:]).any().long().reshape(1)


def _image_spans(flat: Tensor, rows: list[int], sizes: list[int], adapter: str) -> list[tuple[int, Tensor]]:
    """Each image's (row, positions), images taken in row-major order.

    ``flat``: ``(T, 2)`` (row, position) of every placeholder (``nonzero`` of the placeholder mask);
    ``rows``: its first column, on the host.
    """
    if flat.shape[0] != sum(sizes):
        raise InputError(
            f"{adapter}: the input has {flat.shape[0]} visual placeholder tokens but the images and videos encode "
            f"to {sum(sizes)} visual tokens ({sizes}); the processor and the model disagree"
        )
    spans, start = [], 0
    for chunk, size in zip(torch.split(flat, sizes), sizes, strict=True):
        if len(set(rows[start : start + size])) > 1:
            raise InputError(f"{adapter}: an image's placeholder tokens span two batch rows")
        spans.append((rows[start], chunk[:, 1]))
        start += size
    return spans


def _shifted(values: Tensor, by: int) -> Tensor:
    """``(B, L)`` ``values`` moved ``by`` positions along the sequence (right for ``by > 0``), -1 where nothing
    comes in."""
    out = torch.full_like(values, -1)
    if by > 0:
        out[:, by:] = values[:, :-by]
    elif by < 0:
        out[:, :by] = values[:, -by:]
    else:
        out = values.clone()
    return out


def tokens_around(placeholders: Tensor, *, before: int = 1, after: int = 1) -> Tensor:
    """``(B, L)`` bool: the ``before`` tokens just before each run of placeholders and the ``after`` tokens just
    after it, where a processor writes the markers around an image, for :meth:`ModelAdapter.frame_tokens`.
    Only those positions: a word elsewhere with a marker's id stays prompt text. Nothing is read from the device.

    Example:
        >>> ph = torch.tensor([[0, 0, 1, 1, 0, 0, 0, 0]]).bool()
        >>> tokens_around(ph).long().tolist()
        [[0, 1, 0, 0, 1, 0, 0, 0]]
    """
    runs = placeholders.long()
    starts = (placeholders & (_shifted(runs, 1) != 1)).long()
    ends = (placeholders & (_shifted(runs, -1) != 1)).long()
    marked = torch.zeros_like(placeholders)
    for k in range(1, before + 1):
        marked |= _shifted(starts, -k) == 1  # position p, with a run starting at p + k
    for k in range(1, after + 1):
        marked |= _shifted(ends, k) == 1  # position p, with a run ending at p - k
    return marked & ~placeholders


def _weak(value: Any) -> Callable[[], Any]:
    """A weak reference to a tensor (it may be freed and its id reused: the reference then answers None); for
    anything else, a function that answers it."""
    if isinstance(value, Tensor):
        return weakref.ref(value)
    return lambda: value


def pixel_batch(adapter: str, inputs: Mapping[str, Any], layout: str) -> Tensor:
    """``inputs["pixel_values"]``, checked to be 4-D; ``layout`` says what it holds, e.g. ``"(images, 3, H, W)"``."""
    pixels = inputs.get("pixel_values")
    if not isinstance(pixels, Tensor) or pixels.dim() != 4:
        got = tuple(pixels.shape) if isinstance(pixels, Tensor) else type(pixels).__name__
        raise InputError(f"{adapter}: pixel_values must be {layout}; got {got}")
    return pixels


def _placeholders(input_ids: Tensor, ids: Sequence[int]) -> Tensor:
    """``(B, L)`` bool: True where ``input_ids`` holds one of ``ids`` (one comparison for a single id)."""
    if len(ids) == 1:
        return input_ids == ids[0]
    return torch.isin(input_ids, torch.tensor(list(ids), dtype=input_ids.dtype).to(input_ids.device, non_blocking=True))


def placeholder_runs(image_mask: Tensor) -> list[int]:
    """Lengths of the runs of consecutive placeholder tokens, row-major: one run per image.

    Used when the image sizes are not known from encoded features (e.g. pruning inside the LM).
    Images whose placeholders touch, with no token between them, count as one image.

    Example:
        >>> import torch
        >>> placeholder_runs(torch.tensor([[0, 1, 1, 0, 1], [1, 1, 1, 0, 0]]).bool())
        [2, 1, 3]
    """
    rows, positions = image_mask.nonzero().T.tolist()
    return _runs(rows, positions)


def _runs(rows: list[int], positions: list[int]) -> list[int]:
    """Lengths of the runs of consecutive positions within a row, from row-major placeholder coordinates."""
    sizes: list[int] = []
    for i, (row, position) in enumerate(zip(rows, positions, strict=True)):
        if i and row == rows[i - 1] and position == positions[i - 1] + 1:
            sizes[-1] += 1
        else:
            sizes.append(1)
    return sizes


@dataclass
class Layout:
    """Where the images and the prompt sit in a batch of token sequences.

    Attributes:
        real: ``(B, L)`` bool, real (non-padding) tokens.
        image_mask: ``(B, L)`` bool, the placeholders of every visual input (image or video).
        prompt_mask: ``(B, L)`` bool, the prompt tokens the selector is given.
        spans: per image, ``(row, positions)`` of its placeholders, in placeholder order.
        sizes: per image, its number of placeholders.
        left_padded: the batch is padded on the left (or not at all).
        lengths: per row, its real tokens (on the host).
        prompt_lengths: per row, its prompt tokens (on the host).
        image_placeholders: how many of the placeholders are image ones (the rest: video ones).
    """

    real: Tensor
    image_mask: Tensor
    prompt_mask: Tensor
    spans: list[tuple[int, Tensor]]
    sizes: list[int]
    left_padded: bool
    lengths: list[int]
    prompt_lengths: list[int]
    image_placeholders: int = 0

    @classmethod
    def locate(
        cls,
        adapter: ModelAdapter,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        sizes: list[int] | None,
        prompt_tokens: str | Callable[[Tensor, Tensor], Tensor] = "text",
    ) -> Layout:
        """Find each image's placeholders from the token ids (no hard-coded offsets) and the prompt tokens.

        ``sizes``: visual tokens per image from the encoder, checked against the placeholders; None
        takes one image per run of consecutive placeholders.
        """
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            raise InputError(f"{adapter.name}: pruning needs input_ids of shape (B, L); got {type(input_ids).__name__}")
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        real = attention_mask.bool()
        image_mask = _placeholders(input_ids, adapter.placeholder_ids) & real
        if not callable(prompt_tokens) and prompt_tokens != "text":
            raise ValueError(f"prompt_tokens must be one of {PROMPT_SCOPES} or a callable; got {prompt_tokens!r}")
        # placeholders, padding and special tokens (vision markers, BOS/EOS) are never prompt text, whatever
        # a callable marks: question_tokens marks a span that starts right after an image, at its end marker
        special = torch.tensor(sorted(adapter.special_token_ids()), dtype=input_ids.dtype)
        special = special.to(real.device, non_blocking=True)
        prompt_mask = real & ~image_mask & ~torch.isin(input_ids, special)
        framing = adapter.frame_tokens(input_ids, image_mask)
        if framing is not None:
            prompt_mask &= ~framing
        if callable(prompt_tokens):
            marked = prompt_tokens(input_ids, attention_mask)
            if not isinstance(marked, Tensor) or marked.shape != input_ids.shape:
                got = tuple(marked.shape) if isinstance(marked, Tensor) else type(marked).__name__
                raise InputError(
                    f"{adapter.name}: the prompt_tokens callable must return a (B, L) mask the shape of input_ids "
                    f"{tuple(input_ids.shape)}; got {got}"
                )
            prompt_mask &= marked.to(device=real.device, dtype=torch.bool)
        flat = image_mask.nonzero()  # (T, 2) row-major; its length is a read from the device
        # everything else the host needs, in one more read
        images = ((input_ids == adapter.image_token_id) & real).sum().reshape(1)
        host = torch.cat(
            [flat.T.flatten(), real.sum(dim=1), prompt_mask.sum(dim=1), images, _right_padded(attention_mask)]
        )
        host = host.tolist()
        t, b = flat.shape[0], real.shape[0]
        rows, positions = host[:t], host[t : 2 * t]
        if sizes is None:
            sizes = _runs(rows, positions)
        spans = _image_spans(flat, rows, sizes, adapter.name)
        lengths, prompt_lengths = host[2 * t : 2 * t + b], host[2 * t + b : 2 * t + 2 * b]
        return cls(real, image_mask, prompt_mask, spans, list(sizes), not host[-1], lengths, prompt_lengths, host[-2])

    def keep_mask(self, kept: list[Tensor]) -> Tensor:
        """``(B, L)`` bool: every real text token, plus each image's kept placeholders (``kept[i]`` bool)."""
        keep = self.real & ~self.image_mask
        for (row, positions), mask in zip(self.spans, kept, strict=True):
            keep[row, positions] = mask  # placeholders are False in keep: set the kept ones (no host sync)
        return keep

    def stats(self, kept: list[Tensor], keep: Tensor, selection_ms: float) -> PruneStats:
        """Statistics of a pruned call: one read from the device (tokens kept per image and per row)."""
        counts = torch.cat([torch.stack([mask.sum() for mask in kept]), keep.sum(dim=1)]).tolist()
        after = counts[: len(kept)]
        return PruneStats(
            visual_before=list(self.sizes),
            visual_after=after,
            selection_ms=selection_ms,
            kept=[mask_to_indices(mask.unsqueeze(0), [count])[0] for mask, count in zip(kept, after, strict=True)],
            sequence_before=list(self.lengths),
            sequence_after=counts[len(kept) :],
        )


def visual_names(kinds: Sequence[str] | None, count: int) -> list[str]:
    """``"image 0"``, ``"video 0"``, ``"image 1"``, ...: each visual input named by its kind and its index among
    the inputs of that kind (its row in ``pixel_values`` or ``pixel_values_videos``); ``kinds`` None: images.

    Example:
        >>> visual_names(["image", "video", "image"], 3)
        ['image 0', 'video 0', 'image 1']
    """
    kinds = ["image"] * count if kinds is None else list(kinds)
    seen: dict[str, int] = {}
    names = []
    for kind in kinds:
        names.append(f"{kind} {seen.get(kind, 0)}")
        seen[kind] = seen.get(kind, 0) + 1
    return names


def _named(names: Callable[[], list[str]] | None, counts: list[int]) -> _LazyNames | None:
    return None if names is None else _LazyNames(names, len(counts))


class _LazyNames(Sequence[str]):
    """The names of :func:`visual_names`, computed only when an error reads one (it may read the device)."""

    def __init__(self, make: Callable[[], list[str]], length: int) -> None:
        self._make, self._length, self._names = make, length, None

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: Any) -> Any:
        if self._names is None:
            made = self._make()  # rows copied for beam search have no names of their own: number them
            self._names = made if len(made) == self._length else [f"image {i}" for i in range(self._length)]
        return self._names[index]


def prunable_counts(sizes: list[int], protected: list[Tensor] | None) -> list[int]:
    """Per image, its tokens minus its protected ones (one read from the device when some are protected)."""
    if protected is None:
        return list(sizes)
    fixed = torch.stack([mask.sum() for mask in protected]).tolist()
    return [size - count for size, count in zip(sizes, fixed, strict=True)]


def select_per_image(
    selector: Selector,
    budget: Budget,
    layout: Layout,
    features: list[Tensor],
    text: Tensor,
    *,
    protected: list[Tensor] | None = None,
    scores: list[Tensor] | None = None,
    prunable: list[int] | None = None,
    metric: list[Tensor] | None = None,
    names: Callable[[], list[str]] | None = None,
) -> Selected:
    """Run the selector once over every image of the batch (ragged counts masked).

    Args:
        features: per image, ``(N_i, D)`` tokens to select from.
        text: ``(B, L, D)`` embeddings of the sequence, from which each image's row gives the prompt.
        protected: per image, ``(N_i,)`` bool of tokens always kept and outside the budget.
        scores: per image, ``(N_i,)`` scores for methods that use them.
        prunable: per image, its tokens minus the protected ones, when the caller already read them
            (:func:`prunable_counts`).
        metric: per image, ``(N_i, c)`` merge metric for a merging selector (:meth:`Selector.plan`),
            which then also says which dropped tokens merge into which kept ones.
        names: what a budget error calls each image (:func:`visual_names`), asked only when one is raised.
    """
    sizes = layout.sizes
    device = layout.real.device
    n_images, n_max = len(sizes), max(sizes)
    visual = features[0].new_zeros((n_images, n_max, features[0].shape[-1]))
    selectable = torch.zeros((n_images, n_max), dtype=torch.bool, device=device)
    fixed = torch.zeros_like(selectable)
    padded_scores = None if scores is None else torch.zeros((n_images, n_max), dtype=torch.float32, device=device)
    padded_metric = None if metric is None else metric[0].new_zeros((n_images, n_max, metric[0].shape[-1]))
    for i, feats in enumerate(features):
        visual[i, : sizes[i]] = feats
        selectable[i, : sizes[i]] = True
        if protected is not None:
            fixed[i, : sizes[i]] = protected[i]
        if padded_scores is not None:
            padded_scores[i, : sizes[i]] = scores[i]
        if padded_metric is not None:
            padded_metric[i, : sizes[i]] = metric[i]
    selectable &= ~fixed

    counts = prunable_counts(sizes, protected) if prunable is None else prunable
    if resolve_budget(budget, counts, names=_named(names, counts)) == tuple(counts):  # keeps every token
        every = selectable | fixed  # whatever the prompt: a row without prompt text is no error here
        return Selected([every[i, : sizes[i]] for i in range(n_images)], 0.0)

    rows = [row for row, _ in layout.spans]
    lengths = [layout.prompt_lengths[row] for row in rows]
    empty = sorted({row for row, length in zip(rows, lengths, strict=True) if length == 0})
    if empty and "prompt" in selector.requires:
        raise InputError(f"rows {empty} have images but no prompt text tokens to score them by")
    m_max = max(1, *lengths)
    order = torch.sort(layout.prompt_mask.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :m_max]
    row_index = torch.tensor(rows).to(device, non_blocking=True)
    prompt = text.gather(1, order.unsqueeze(-1).expand(-1, -1, text.shape[-1]))[row_index]
    # a row without text (only possible when the method ignores the prompt) marks one token real, so that
    # the selector's check that every prompt has a token passes
    real_lengths = [max(1, length) for length in lengths]
    prompt_real = None  # every prompt the same length: no mask, and no read from the device to check it
    if min(real_lengths) < m_max:
        prompt_real = torch.arange(m_max) < torch.tensor(real_lengths).unsqueeze(1)
        prompt_real = prompt_real.to(device, non_blocking=True)

    _sync(device)
    start = time.perf_counter()
    call = dict(  # masks only where some row is shorter: the selector then need not read their counts
        prompt=prompt.to(visual.dtype),
        budget=budget,
        visual_mask=None if min(counts) == n_max else selectable,
        prompt_mask=prompt_real,
        scores=padded_scores,
    )
    owner = None
    if padded_metric is None:
        chosen = selector(visual, **call)
    else:
        plan = selector.plan(visual, metric=padded_metric, **call)
        chosen, owner = plan.indices, plan.owner
    _sync(device)
    selection_ms = (time.perf_counter() - start) * 1e3

    spare = torch.zeros((n_images, n_max + 1), dtype=torch.bool, device=device)  # -1 padding -> spare column
    kept = spare.scatter_(1, chosen.masked_fill(chosen < 0, n_max), True)[:, :n_max] | fixed
    owners = None if owner is None else [owner[i, : sizes[i]] for i in range(n_images)]
    return Selected([kept[i, : sizes[i]] for i in range(n_images)], selection_ms, owners)


class Selected(NamedTuple):
    """What :func:`select_per_image` gives.

    Attributes:
        kept: per image, an ``(N_i,)`` bool mask of the kept tokens.
        selection_ms: the selector's time.
        owners: per image, the ``(N_i,)`` owner map of a merge (:class:`tokenprune.MergePlan`), when a
            metric was given and the selector ran; else None (nothing merged).
    """

    kept: list[Tensor]
    selection_ms: float
    owners: list[Tensor] | None = None


def merged_features(
    adapter: ModelAdapter, images: ImageTokens, owners: list[Tensor], kept: list[Tensor], features: list[Tensor]
) -> list[Tensor]:
    """The kept features with every token that absorbed dropped ones replaced by the projection of its merge.

    ``kept``: per image, the kept indices; ``features``: per image, the kept projected features. The raw
    features are merged (:func:`tokenprune.functional.merge_into`) and the kept ones projected again;
    tokens that absorbed nothing keep their features exactly.
    """
    out = []
    for raw, owner, index, feats in zip(images.raw, owners, kept, features, strict=True):
        merged, absorbed = merge_into(raw.unsqueeze(0), owner.unsqueeze(0))
        projected = adapter.project(merged[0, index]).to(feats.dtype)
        out.append(torch.where(absorbed[0, index].unsqueeze(-1), projected, feats))
    return out


def prune_inputs(
    adapter: ModelAdapter,
    selector: Selector,
    budget: Budget,
    inputs: Mapping[str, Any],
    *,
    prompt_tokens: str | Callable[[Tensor, Tensor], Tensor] = "text",
    positions: str | None = None,
) -> PrunedInputs:
    """Select each image's visual tokens and rewrite the call around the kept ones.

    Args:
        adapter: the model family's adapter.
        selector: any :class:`tokenprune.Selector`.
        budget: per image, over its prunable tokens (see :func:`tokenprune.resolve_budget`).
        inputs: the keyword arguments given to ``generate``/``forward`` (processor outputs).
        prompt_tokens: ``"text"`` — every real text token that is not an image placeholder or a
            special token — or a callable ``(input_ids, attention_mask) -> (B, L) bool`` marking the
            prompt tokens to use (e.g. only the question inside a chat template).
        positions: a :data:`POSITIONS` mode the adapter supports; None for its default.
    """
    positions = resolve_positions(adapter, positions)
    if (
        positions == "contiguous"
        and inputs.get("position_ids") is not None
        and "position_ids" not in adapter.image_kwargs
    ):
        raise InputError(
            "position_ids were given for the full sequence; with positions='contiguous' the pruned sequence is "
            "numbered afresh. Leave them out, or pass positions='original' to keep them at the kept tokens"
        )
    check_method(adapter, selector)
    source = selector.score_source if "scores" in selector.requires else None
    merge = selector.merges
    input_ids = inputs.get("input_ids")
    images = encode(adapter.encode_images, inputs, scores=source, merge=merge)
    if merge and (images.raw is None or images.metric is None):  # else nothing would be merged, silently
        raise TokenPruneError(f"{adapter.name}: encode_images(merge=True) must give raw features and a merge metric")
    sizes = [f.shape[0] for f in images.features]
    layout = Layout.locate(adapter, input_ids, inputs.get("attention_mask"), sizes, prompt_tokens)
    _check_kinds(adapter, inputs, layout)
    selected = select_per_image(
        selector,
        budget,
        layout,
        images.features,
        adapter.embed(input_ids),
        protected=images.protected,
        scores=images.scores,
        metric=images.metric if merge else None,
        names=lambda: visual_names(adapter.modalities(inputs), len(sizes)),
    )
    keep = layout.keep_mask(selected.kept)
    stats = layout.stats(selected.kept, keep, selected.selection_ms)
    pad, lengths = adapter.pad_token_id(), stats.sequence_after
    pruned = PrunedSequence.build(input_ids, keep, left=layout.left_padded, pad_token_id=pad, lengths=lengths)
    features = [feats[index] for feats, index in zip(images.features, stats.kept, strict=True)]
    if selected.owners is not None:
        if images.per_token:
            raise UnsupportedMergeError(
                f"{adapter.name} gives per-token tensors beside the features ({sorted(images.per_token)}), which a "
                f"merge cannot combine; set ModelAdapter.merging to False for it"
            )
        features = merged_features(adapter, images, selected.owners, stats.kept, features)
        stats.merged = selected.owners
    if images.per_token:
        kept_per_token = {
            name: [values[index] for values, index in zip(per_image, stats.kept, strict=True)]
            for name, per_image in images.per_token.items()
        }
        kwargs = adapter.rebuild(inputs, pruned, features, per_token=kept_per_token)
    else:  # the keyword only for adapters that give per-token tensors (older rebuilds do not take it)
        kwargs = adapter.rebuild(inputs, pruned, features)
    if positions != adapter.position_modes[0]:  # the family's default is what rebuild gives
        kwargs["position_ids"] = adapter.original_positions(inputs, pruned)
    listed = kwargs.get("mm_encoder_outputs")
    expandable = None
    if listed:
        kwargs["mm_encoder_outputs"] = converted = adapter.model_features(dict(listed))
        # identity, not ==: the values hold tensors
        changed = converted.keys() != listed.keys() or any(converted[key] is not value for key, value in listed.items())
        expandable = listed if changed else None
    return PrunedInputs(kwargs, keep, input_ids, stats, expandable)


def _check_kinds(adapter: ModelAdapter, inputs: Mapping[str, Any], layout: Layout) -> None:
    """A call of one kind (only images, or only videos) must use that kind's placeholders: the images and videos
    were counted together, so video pixels behind image placeholders would otherwise reach the model's own, less
    clear error. A call holding both was checked by :meth:`ModelAdapter.modalities`."""
    if len(adapter.placeholder_ids) < 2:
        return
    videos = inputs.get("pixel_values_videos") is not None
    if videos and inputs.get("pixel_values") is not None:
        return
    expected = 0 if videos else sum(layout.sizes)
    if layout.image_placeholders != expected:
        given, other = ("videos", "image") if videos else ("images", "video")
        raise InputError(
            f"{adapter.name}: the call gives only {given}, but {abs(layout.image_placeholders - expected)} of its "
            f"placeholders are {other} ones; expected each {given[:-1]}'s placeholders to be its kind's token"
        )


def encode(
    encode_images: Callable[..., ImageTokens], inputs: Mapping[str, Any], *, scores: str | None, merge: bool
) -> ImageTokens:
    """``encode_images(inputs, scores=...)``, with ``merge=True`` only when merging: an adapter that cannot
    merge (:attr:`ModelAdapter.merging` False, e.g. a plugin's written before merging existed) need not
    accept the keyword."""
    return encode_images(inputs, scores=scores, merge=True) if merge else encode_images(inputs, scores=scores)


def check_method(adapter: ModelAdapter, selector: Selector) -> None:
    """Raise the error :func:`tokenprune.apply` would raise for ``selector`` on this family, before any work.

    Refused: scores the caller must pass (no model call can), scores of a source the family declares it
    cannot give (:attr:`ModelAdapter.score_sources`; Qwen2.5-VL has no vision CLS token), a merge the
    family or the method cannot run (:func:`check_merging`), and pruning before a language-model layer the
    model does not have (:func:`check_prune_layer`). A method pruning inside the language model (FastV)
    takes its scores there, not from the adapter.

    Raises:
        UnsupportedScoresError, UnsupportedMergeError, InputError: with what was asked and why it cannot run
            here.
    """
    source = selector.score_source if "scores" in selector.requires else None
    if source == "external":
        raise UnsupportedScoresError(
            f"{selector!r} takes scores from the caller, which a model call cannot pass; inside a model use "
            + (
                "'fastervlm' (vision CLS attention) or a method whose scores the model provides"
                if adapter.score_sources is None or "cls_attention" in adapter.score_sources
                else "a method that scores tokens from their features and the prompt (e.g. 'zspa', 'divprune'); "
                f"this model has no vision [CLS] attention to give ({adapter.no_cls_attention or 'not provided'})"
            )
        )
    declared = adapter.score_sources
    if source is not None and selector.prune_layer is None and declared is not None and source not in declared:
        raise adapter.unsupported_scores(source)
    check_merging(adapter, selector)
    check_prune_layer(adapter, selector.prune_layer)


def check_prune_layer(adapter: ModelAdapter, layer: int | None) -> None:
    """Raise :class:`InputError` if a method pruning before language-model layer ``layer`` (FastV) cannot here:
    the layer is not one of the model's. None (pruning before the language model) always passes."""
    if layer is None:
        return
    count = len(adapter.language_model().layers)
    if not 0 <= layer < count:
        raise InputError(
            f"fastv layer={layer} is outside the language model's {count} layers (0 .. {count - 1}): expected "
            f"a layer the language model has"
        )
    lm = adapter.language_model()
    windowed = [i for i, block in enumerate(lm.layers) if i >= layer and _sliding(block, lm.config)]
    if windowed:
        raise InputError(
            f"fastv layer={layer}: the language model's layers {windowed} attend within a sliding window of recent "
            f"tokens, which a sequence pruned inside the model would change (and which hides most visual tokens "
            f"from the last token's attention); use a method that prunes before the language model"
        )
    first = adapter.first_prunable_layer
    if layer < first:
        raise InputError(
            f"fastv layer={layer} would drop visual tokens before layer {first} of the language model, but "
            f"{adapter.name} adds visual features to every visual token's hidden state up to there (Qwen3-VL's "
            f"DeepStack): expected layer >= {first}"
        )


def _sliding(block: Any, config: Any) -> bool:
    """Whether a decoder layer's self-attention attends within a sliding window: Gemma 3's local layers say so
    on the module; a model that only says so in its config (Mistral) applies it to every layer."""
    attention = getattr(block, "self_attn", None)
    if hasattr(attention, "sliding_window"):
        return attention.sliding_window is not None
    return getattr(config, "sliding_window", None) is not None and bool(getattr(config, "use_sliding_window", True))


def check_merging(adapter: ModelAdapter, selector: Selector) -> None:
    """Raise :class:`UnsupportedMergeError` if ``selector`` merges tokens and cannot here: the family does not
    give the vision features before its projector, or the method prunes inside the language model."""
    if not selector.merges:
        return
    if selector.prune_layer is not None:
        raise UnsupportedMergeError(
            f"{selector!r} merges tokens and prunes inside the language model (layer {selector.prune_layer}); "
            f"merging runs on the vision features, before the language model"
        )
    if not adapter.merging:
        raise UnsupportedMergeError(
            f"{selector!r} merges dropped tokens into kept ones, which needs the vision features before the "
            f"projector; {adapter.name} does not provide them (ModelAdapter.merging is False)"
        )


def check_positions(positions: Any, *, inside_lm: bool = False, label: str | None = None) -> None:
    """Raise :class:`InputError` for a :data:`POSITIONS` mode that is unknown, or that a method pruning
    inside the language model (``inside_lm``, FastV) cannot use. None (the model's default) always passes.

    ``label``: the method, as the message names it.
    """
    of = f" of {label!r}" if label else ""
    if positions is not None and (not isinstance(positions, str) or positions not in POSITIONS):
        raise InputError(
            f"positions{of} must be one of {sorted(POSITIONS)} (or None for the model's default); got {positions!r}"
        )
    if inside_lm and positions not in (None, "original"):
        raise InputError(
            f"{repr(label) if label else 'this method'} prunes inside the language model, where kept tokens keep "
            f"their original positions; positions={positions!r} applies to methods that prune before it"
        )


def resolve_positions(adapter: ModelAdapter, positions: str | None, *, inside_lm: bool = False) -> str:
    """The :data:`POSITIONS` mode to use: ``positions``, or the family's default when None.

    ``inside_lm``: the method prunes inside the language model (FastV), where kept tokens always keep
    their positions. Raises :class:`InputError` for a mode that is unknown or that the family or the
    method cannot use (:func:`check_positions`).
    """
    check_positions(positions, inside_lm=inside_lm)
    if inside_lm:
        return "original"
    if positions is None:
        return adapter.position_modes[0]
    if positions not in adapter.position_modes:
        raise InputError(f"{adapter.name} supports positions {list(adapter.position_modes)}; got {positions!r}")
    return positions

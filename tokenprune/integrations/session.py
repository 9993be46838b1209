"""``tokenprune.apply``: prune inside a model's stock ``generate`` and ``forward``, for one block.

The model *instance* gets wrappers for ``generate`` and ``forward`` (the mechanism accelerate uses
for its device hooks); its class and every other model are untouched, and leaving the block removes
them. Inside the block a call with images is rewritten by :func:`~tokenprune.integrations.base.prune_inputs`
— images encoded, tokens selected, pruned placeholders dropped — and handed to the stock method, so
the language model really runs on text + K visual tokens, prefill and decoding alike.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from tokenprune.budget import Budget
from tokenprune.errors import PluginWarning, TokenPruneError
from tokenprune.integrations.base import (
    ModelAdapter,
    PrunedInputs,
    PruneStats,
    _cache,
    _sync,
    check_method,
    prune_inputs,
    resolve_positions,
)
from tokenprune.integrations.fastv import LayerPruner
from tokenprune.registry import create_method
from tokenprune.selector import Selector

__all__ = ["PruningSession", "UnsupportedModelError", "apply", "get_adapter"]

_WRAPPED = ("generate", "forward")
_SESSION_ATTR = "_tokenprune_session"


class UnsupportedModelError(TokenPruneError, TypeError):
    """No adapter knows this model class."""


def get_adapter(model: Any) -> ModelAdapter:
    """The adapter the ``tokenprune_model_adapter`` hook gives for ``model``."""
    from tokenprune.integrations.adapters import BUILTIN_ADAPTERS
    from tokenprune.plugins import get_plugin_manager

    manager = get_plugin_manager()
    adapter, plugin = None, None
    # the hook's firstresult call, one implementation at a time (pluggy's order: the last registered first), so
    # that a plugin whose hook raises is reported by name and the others (the built-ins) still answer
    for impl in reversed(manager.hook.tokenprune_model_adapter.get_hookimpls()):
        plugin = manager.get_name(impl.plugin) or repr(impl.plugin)
        if impl.hookwrapper or impl.wrapper:
            continue
        try:
            adapter = impl.function(**{name: model for name in impl.argnames})
        except Exception as exc:  # third-party code: report and ask the next
            warnings.warn(
                f"tokenprune plugin {plugin!r} failed in tokenprune_model_adapter for {type(model).__name__}: "
                f"{type(exc).__name__}: {exc}",
                PluginWarning,
                stacklevel=2,
            )
            continue
        if adapter is not None:
            break
    if adapter is None:
        raise UnsupportedModelError(
            f"no tokenprune adapter for {type(model).__name__}; built-in adapters cover "
            f"{', '.join(BUILTIN_ADAPTERS)}. A plugin can add one through the tokenprune_model_adapter hook."
        )
    if not isinstance(adapter, ModelAdapter):
        raise UnsupportedModelError(
            f"tokenprune_model_adapter of plugin {plugin!r} returned {type(adapter).__name__} for "
            f"{type(model).__name__}; expected a tokenprune.integrations.ModelAdapter"
        )
    return adapter


def _has_images(adapter: ModelAdapter, kwargs: dict[str, Any]) -> bool:
    return kwargs.get("pixel_values") is not None or any(
        kwargs.get(name) is not None for name in adapter.image_kwargs if name.startswith("pixel_values")
    )


def _refuse_encoded_images(kwargs: dict[str, Any]) -> None:
    """A caller's own ``mm_encoder_outputs`` would reach the LM unpruned: say so instead."""
    encoded = kwargs.get("mm_encoder_outputs")  # stock generate passes {} for a text-only call
    if encoded and any(value is not None for value in (encoded.values() if isinstance(encoded, dict) else [encoded])):
        raise TokenPruneError(
            "tokenprune.apply prunes the images it encodes itself: pass the processor's pixel_values (and "
            "image_sizes / image_grid_thw), not pre-encoded mm_encoder_outputs, which would reach the language "
            "model unpruned"
        )


def _is_prefill(kwargs: dict[str, Any]) -> bool:
    cache = _cache(kwargs)
    return cache is None or (hasattr(cache, "get_seq_length") and cache.get_seq_length() == 0)


def _positional(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    if not args:
        return kwargs
    if len(args) > 1 or "input_ids" in kwargs:
        raise TypeError("under tokenprune.apply, pass everything but input_ids by keyword")
    return {"input_ids": args[0], **kwargs}


class PruningSession:
    """The state of one ``with tokenprune.apply(...)`` block.

    Attributes:
        selector: the selector in use.
        budget: the budget per image.
        positions: how the kept tokens are positioned in the language model (a key of
            :data:`tokenprune.integrations.base.POSITIONS`).
        stats: one :class:`~tokenprune.integrations.PruneStats` per pruned call, in order.
    """

    def __init__(
        self,
        model: Any,
        adapter: ModelAdapter,
        selector: Selector,
        budget: Budget,
        *,
        prompt_tokens: str | Callable[[Tensor, Tensor], Tensor] = "text",
        positions: str | None = None,
    ) -> None:
        self.model = model
        self.adapter = adapter
        self.selector = selector
        self.budget = budget
        self.prompt_tokens = prompt_tokens
        self.positions = resolve_positions(adapter, positions, inside_lm=selector.prune_layer is not None)
        check_method(adapter, selector)  # refused now, before the block runs: scores, merging, FastV's layer
        self.stats: list[PruneStats] = []
        self._saved: dict[str, Any] = {}
        self._prefill_ms: float | None = None  # set by the forward wrapper at each prefill
        # While a pruned generate runs, its forward calls are already pruned; the first is the prefill. The
        # forward wrapper knows both from these flags, not by reading the cache: a static cache keeps its
        # length on the device, and reading it would sync every decoding step and break torch.compile.
        self._generating = False
        self._prefill_pending = 0  # prompt tokens the prefill has still to run (several calls: a chunked prefill)
        self._followed: tuple[Callable[[], Any], LayerPruner] | None = None  # see _remember

    @property
    def last(self) -> PruneStats | None:
        """Statistics of the latest pruned call."""
        return self.stats[-1] if self.stats else None

    def _record(self, stats: PruneStats | None) -> None:
        if stats is not None:
            stats.prefill_ms = self._prefill_ms
            self.stats.append(stats)

    def _timed_prefill(self, call: Callable[[], Any], *, add: bool = False) -> Any:
        """``call()``, its time kept as the prefill's (``add``: added to it, for the chunks of one prefill)."""
        device = self.model.device if hasattr(self.model, "device") else torch.device("cpu")
        _sync(device)
        start = time.perf_counter()
        out = call()
        _sync(device)
        elapsed = (time.perf_counter() - start) * 1e3
        self._prefill_ms = elapsed + (self._prefill_ms or 0.0) if add else elapsed
        return out

    def _prune(self, kwargs: dict[str, Any]) -> PrunedInputs:
        return prune_inputs(
            self.adapter, self.selector, self.budget, kwargs, prompt_tokens=self.prompt_tokens, positions=self.positions
        )

    def _layer_pruner(self, kwargs: dict[str, Any]) -> LayerPruner:
        return LayerPruner(self.adapter, self.selector, self.budget, kwargs, prompt_tokens=self.prompt_tokens)

    def install(self) -> None:
        state = self.model.__dict__
        if state.get(_SESSION_ATTR) is not None:
            raise TokenPruneError(
                f"{type(self.model).__name__} is already being pruned by an enclosing tokenprune.apply; "
                f"leave that block first (nested pruning of one model is not supported)"
            )
        self._saved = {name: state[name] for name in _WRAPPED if name in state}
        stock_generate, stock_forward = self.model.generate, self.model.forward
        inside_lm = self.selector.prune_layer is not None

        def pruned_generate(**kwargs: Any) -> Any:  # the prefill is the first forward it makes (or chunks)
            self._generating, self._prefill_pending, self._prefill_ms = True, kwargs["input_ids"].shape[1], None
            try:
                return stock_generate(**kwargs)
            finally:
                self._generating, self._prefill_pending = False, 0

        @functools.wraps(stock_generate)
        def generate(*args: Any, **kwargs: Any) -> Any:
            kwargs = _positional(args, kwargs)
            _refuse_encoded_images(kwargs)
            _refuse_pruned_cache(kwargs)
            if not _has_images(self.adapter, kwargs):
                return stock_generate(**kwargs)
            self._prefill_ms = None
            if inside_lm:
                config = kwargs.get("generation_config") or getattr(self.model, "generation_config", None)
                if kwargs.get("use_cache", getattr(config, "use_cache", True)) is False:
                    raise TokenPruneError(
                        f"{self.selector!r} prunes inside the language model and then decodes on the KV cache; "
                        f"generate(use_cache=False) recomputes the whole sequence at every step, which it does not "
                        f"support: keep use_cache=True (the default)"
                    )
                pruner = self._layer_pruner(kwargs)
                with pruner.installed():
                    out = pruned_generate(**kwargs)
                self._record(pruner.stats)
                _mark_pruned(out, kwargs, pruner.pruned is not None)
                return out
            with torch.no_grad():  # generate never backpropagates: keep no graph of the vision tower
                pruned = self._prune(kwargs)
            shift = pruned.original_input_ids.shape[1] - pruned.kwargs["input_ids"].shape[1]
            config = kwargs.get("generation_config") or getattr(self.model, "generation_config", None)
            options = total_lengths(kwargs, config, shift)
            if kwargs.get("streamer") is not None:  # it shows the prompt first: the caller's own, not the pruned one
                options["streamer"] = _PromptStreamer(kwargs["streamer"], pruned.original_input_ids)
            features = {} if pruned.expandable is None else {"mm_encoder_outputs": pruned.expandable}
            out = pruned_generate(**{**pruned.kwargs, **features, **options})  # the forward wrapper converts them
            self._record(pruned.stats)
            _mark_pruned(out, pruned.kwargs, shift > 0)
            return _restore_prompt(out, pruned)

        @functools.wraps(stock_forward)
        def forward(*args: Any, **kwargs: Any) -> Any:
            kwargs = _positional(args, kwargs)
            if self._generating:  # inside our own generate: the call is already pruned
                if kwargs.get("mm_encoder_outputs"):  # copied per row by generate: now in the layout forward reads
                    kwargs["mm_encoder_outputs"] = self.adapter.model_features(dict(kwargs["mm_encoder_outputs"]))
                if not self._prefill_pending:  # a decoding step
                    return stock_forward(**kwargs)
                ids = kwargs.get("input_ids")  # a chunk of the prefill, or all of it: its time counts
                self._prefill_pending = max(0, self._prefill_pending - (ids.shape[1] if ids is not None else 1 << 30))
                return self._timed_prefill(lambda: stock_forward(**kwargs), add=True)
            follower = self._following(kwargs) if inside_lm else None
            if follower is not None:  # the caller's decoding step on the cache of a prefill pruned inside the LM
                with follower.installed():
                    return stock_forward(**kwargs)
            if not _has_images(self.adapter, kwargs):  # text only, or the caller's own decoding steps
                _refuse_encoded_images(kwargs)
                return stock_forward(**kwargs)
            if not _is_prefill(kwargs):
                return stock_forward(**kwargs)
            self._prefill_ms = None
            if inside_lm:
                if kwargs.get("shift_labels") is not None:
                    raise TokenPruneError(
                        f"{self.selector!r} shortens the sequence inside the language model; shift_labels (already "
                        f"shifted) cannot follow it: pass labels instead"
                    )
                labels = kwargs.pop("labels", None)  # the logits come out shorter: the loss is computed here
                pruner = self._layer_pruner(kwargs)
                with pruner.installed():
                    out = self._timed_prefill(lambda: stock_forward(**kwargs))
                if labels is not None:
                    out = self._layer_pruned_loss(out, labels, pruner, kwargs)
                self._record(pruner.stats)
                self._remember(out, pruner)
                return out
            pruned = self._prune(kwargs)
            out = self._timed_prefill(lambda: stock_forward(**pruned.kwargs))
            self._record(pruned.stats)
            return out

        state["generate"], state["forward"], state[_SESSION_ATTR] = generate, forward, self

    def _layer_pruned_loss(self, out: Any, labels: Tensor, pruner: LayerPruner, kwargs: dict[str, Any]) -> Any:
        """``out`` with the loss stock computes, on the kept positions: the model's own loss function, with
        the call's ``num_items_in_batch`` and ``ignore_index`` (the Trainer's gradient accumulation passes
        the former); a tuple output (``return_dict=False``) gets it first, as stock puts it."""
        if pruner.pruned is not None:
            labels = pruner.pruned.take(labels, fill=-100)
        logits = out[0] if isinstance(out, tuple) else out.logits
        options = {name: kwargs[name] for name in ("num_items_in_batch", "ignore_index") if name in kwargs}
        vocab = self.model.config.get_text_config().vocab_size
        loss = self.model.loss_function(logits=logits, labels=labels, vocab_size=vocab, **options)
        if isinstance(out, tuple):
            return (loss, *out)
        out.loss = loss
        return out

    def _remember(self, out: Any, pruner: LayerPruner) -> None:
        """Keep the pruner of a forward that pruned inside the LM, for the caller's decoding steps on its cache.

        Its layers from ``prune_layer`` on cached only the kept tokens, so a decoding step on that cache needs
        the same layers' masks rebuilt (the pruner's decoding hooks), where stock sizes them for layer 0.
        """
        cache = getattr(out, "cache", None)  # transformers >= 5.24 (past_key_values there is a deprecated alias)
        if cache is None:
            cache = getattr(out, "past_key_values", None)
        self._followed = None
        if cache is not None and pruner.pruned is not None:
            try:
                self._followed = (weakref.ref(cache), pruner)
            except TypeError:  # a cache type without weak references: keep it (until the next prefill)
                self._followed = (lambda: cache, pruner)

    def _following(self, kwargs: dict[str, Any]) -> LayerPruner | None:
        """The pruner whose prefill made the cache this call decodes on, if any."""
        cache = _cache(kwargs)
        if cache is None or self._followed is None or self._followed[0]() is not cache:
            return None
        return self._followed[1]

    def uninstall(self) -> None:
        state = self.model.__dict__
        for name in (*_WRAPPED, _SESSION_ATTR):
            state.pop(name, None)
        state.update(self._saved)


class _PromptStreamer:
    """A ``generate`` streamer that receives the caller's prompt where ``generate`` puts the pruned one.

    ``generate`` puts the prompt ids first, then each new token, then calls ``end()``; only the first
    ``put`` is replaced, so a streamer that prints the prompt (``skip_prompt=False``) prints the caller's.
    """

    def __init__(self, streamer: Any, prompt: Tensor) -> None:
        self.streamer, self.prompt, self.first = streamer, prompt, True

    def put(self, value: Tensor) -> None:
        if self.first:
            self.first, value = False, self.prompt.to(value.device)
        self.streamer.put(value)

    def end(self) -> None:
        self.streamer.end()

    def __getattr__(self, name: str) -> Any:  # anything else the streamer offers (e.g. a text queue)
        return getattr(self.streamer, name)


_PRUNED_CACHE = "_tokenprune_pruned_generate"
"""Set on a KV cache a pruned ``generate`` filled (it survives ``copy.deepcopy``), see :func:`_refuse_pruned_cache`."""


def _mark_pruned(out: Any, kwargs: dict[str, Any], pruned: bool) -> None:
    """Mark the caches a pruned ``generate`` filled: the one it returns, and one the caller passed in."""
    if not pruned:
        return
    for cache in (getattr(out, "cache", None), _cache(kwargs)):
        if cache is not None:
            with contextlib.suppress(AttributeError, TypeError):  # a cache type that takes no attributes
                setattr(cache, _PRUNED_CACHE, True)


def _refuse_pruned_cache(kwargs: dict[str, Any]) -> None:
    """Refuse to continue on a cache a pruned ``generate`` filled (transformers' "continue generation on the
    returned cache"): it holds the pruned prompt, while the returned sequences hold the caller's whole one, so
    the continuation would feed the language model tokens it already saw, at other positions."""
    cache = _cache(kwargs)
    if cache is not None and getattr(cache, _PRUNED_CACHE, False):
        raise TokenPruneError(
            "this KV cache was filled by a pruned generate: it holds the pruned prompt, while the sequences "
            "generate returned hold your whole prompt, so continuing on it would feed the language model "
            "misaligned tokens. Generate again from the whole conversation, with its images"
        )


def total_lengths(kwargs: dict[str, Any], config: Any, shift: int) -> dict[str, int]:
    """``max_length``/``min_length`` for a prompt ``shift`` tokens shorter, so that they mean what they meant.

    They count the prompt too, so on the pruned prompt they would allow (or force) ``shift`` more new tokens
    than stock ``generate`` makes. Both are taken from the call, else from ``config`` (the generation config
    the call uses), and moved down by ``shift``; ``max_length`` only where ``max_new_tokens`` does not
    decide. Returns the keyword arguments to pass on (none when nothing needs moving).

    Example:
        >>> from transformers import GenerationConfig
        >>> total_lengths({"max_length": 600}, GenerationConfig(), shift=500)
        {'max_length': 100}
        >>> total_lengths({"max_new_tokens": 8, "min_length": 590}, GenerationConfig(), shift=500)
        {'min_length': 90}
    """
    if shift == 0:
        return {}
    out = {}
    if kwargs.get("max_new_tokens", getattr(config, "max_new_tokens", None)) is None:
        max_length = kwargs.get("max_length", getattr(config, "max_length", None))
        if max_length is not None:
            out["max_length"] = max_length - shift
    min_length = kwargs.get("min_length", getattr(config, "min_length", 0)) or 0
    if min_length > 0:
        out["min_length"] = max(0, min_length - shift)
    return out


def _restore_prompt(out: Any, pruned: PrunedInputs) -> Any:
    """Put the caller's own (unpruned) prompt back in front of the generated tokens."""
    sequences = out if isinstance(out, Tensor) else getattr(out, "sequences", None)
    if not isinstance(sequences, Tensor):
        return out
    original = pruned.original_input_ids
    repeats = sequences.shape[0] // original.shape[0]
    width = pruned.kwargs["input_ids"].shape[1]
    restored = torch.cat([original.repeat_interleave(repeats, dim=0), sequences[:, width:]], dim=1)
    if isinstance(out, Tensor):
        return restored
    out.sequences = restored
    return out


@contextlib.contextmanager
def apply(
    model: Any,
    method: str | Selector,
    *,
    budget: Budget,
    prompt_tokens: str | Callable[[Tensor, Tensor], Tensor] = "text",
    positions: str | None = None,
    adapter: ModelAdapter | None = None,
    **method_params: Any,
) -> Iterator[PruningSession]:
    """Prune the visual tokens of ``model`` inside the block.

    Inside, ``model.generate(**inputs)`` and ``model(**inputs)`` run with each image's visual tokens
    selected by ``method`` before the language model; outside, the model behaves exactly as before.
    ``generate`` may use a static cache (``cache_implementation="static"``, which transformers compiles
    on a GPU) with every method that prunes before the language model; FastV needs the default cache.

    Args:
        model: a supported transformers VLM (:data:`tokenprune.integrations.adapters.FAMILIES`) or one a plugin
            adapts.
        method: a registered method name (``"zspa"``) or a :class:`tokenprune.Selector`.
        budget: tokens kept per image: an int, or a ratio in (0, 1] of the image's tokens.
        prompt_tokens: which tokens form the prompt the selector sees: ``"text"`` (every text token of
            the prompt that is not an image placeholder or a special token), or a callable
            ``(input_ids, attention_mask) -> (B, L) bool`` such as
            :func:`tokenprune.integrations.question_tokens(processor) <tokenprune.integrations.prompt.question_tokens>`,
            which keeps only the user's question when a chat template adds system and role tokens.
            Placeholders, padding and special tokens are never prompt text, whatever the callable marks.
        positions: how the language model positions the kept tokens. ``"contiguous"``: the shorter
            sequence is numbered afresh, as if each image had only its kept tokens (the default for
            LLaVA-1.5 and LLaVA-NeXT, as in the reference code of DivPrune and ZSPAPrune).
            ``"original"``: each kept token keeps the position it had in the full sequence, and the text
            after the image and the generated tokens keep theirs (FastV, which prunes inside the LM,
            always does; Qwen2.5-VL's M-RoPE grid positions too, its only mode). None: the model's default.
            The choice changes accuracy, so compare methods under one setting.
        adapter: the :class:`~tokenprune.integrations.ModelAdapter` to use instead of the one the
            ``tokenprune_model_adapter`` hook gives (:func:`get_adapter`); e.g. one whose ``encode_images``
            reuses the image features of a batch across several blocks, as ``tokenprune compare`` does.
        **method_params: parameters of a named method, e.g. ``core_ratio=0.2``.

    Yields:
        The :class:`PruningSession`, whose ``stats`` hold each call's token counts and timings.

    Example::

        with tokenprune.apply(model, "zspa", budget=0.1, core_ratio=0.2) as session:
            out = model.generate(**inputs, max_new_tokens=32)
        print(session.last.visual_after)
    """
    if isinstance(method, Selector):
        if method_params:
            raise TypeError(f"method parameters {sorted(method_params)} apply to a method name, not to {method!r}")
        selector = method
    else:
        selector = create_method(method, **method_params)
    if adapter is None:
        adapter = get_adapter(model)
    elif not isinstance(adapter, ModelAdapter) or adapter.model is not model:
        raise TypeError(f"adapter must be a tokenprune.integrations.ModelAdapter of this model; got {adapter!r}")
    session = PruningSession(model, adapter, selector, budget, prompt_tokens=prompt_tokens, positions=positions)
    session.install()
    try:
        yield session
    finally:
        session.uninstall()

"""Pruning inside the language model (FastV): every layer sees all tokens up to layer K, then only the kept ones.

For one ``generate``/``forward`` call, :class:`LayerPruner` puts forward pre-hooks on the decoder
layers ``K, K+1, ...`` of that model instance:

* at prefill, layer K's hook recomputes the one attention row it needs — the last prompt token
  attending to every token, from layer K's own norm, projections and rotary embedding — instead of
  asking every layer for attention maps (which would force eager attention everywhere). The
  selector picks each image's tokens from those scores; layer K and the layers after it then get the
  shorter hidden states, the matching rotary embeddings (kept tokens keep their original positions,
  as in FastV) and the matching attention mask. Layers ``< K`` cache every token, layers ``>= K``
  only the kept ones;
* at each decoding step, layers ``>= K`` get the mask columns of their shorter cache.

Works with DynamicCache under sdpa and eager attention. A static cache preallocates one length for
every layer, which per-layer lengths cannot fit, so it is refused with a clear error.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from tokenprune.budget import Budget, resolve_budget
from tokenprune.errors import TokenPruneError
from tokenprune.integrations.attention import _batch_first, query_attention
from tokenprune.integrations.base import (
    Layout,
    ModelAdapter,
    PrunedSequence,
    PruneStats,
    _cache,
    _named,
    _sync,
    check_prune_layer,
    prunable_counts,
    select_per_image,
    visual_names,
)
from tokenprune.selector import Selector

__all__ = ["LayerPruner", "last_token_attention"]


def _take_positions(t: Tensor, index: Tensor) -> Tensor:
    """``t`` ``(B or 1, L, ...)`` at sequence positions ``index`` ``(B, L')``."""
    t = _batch_first(t, index.shape[0])
    expanded = index.view(*index.shape, *([1] * (t.dim() - 2))).expand(*index.shape, *t.shape[2:])
    return t.gather(1, expanded)


def last_token_attention(
    attention: nn.Module,
    hidden: Tensor,
    position_embeddings: tuple[Tensor, Tensor],
    last: Tensor,
    real: Tensor,
) -> Tensor:
    """Attention of each row's last prompt token to every token, averaged over heads.

    Args:
        attention: the layer's self-attention (``q_proj``, ``k_proj``, ``head_dim``, ``scaling``).
        hidden: ``(B, L, D)``, the normed input of that attention.
        position_embeddings: the ``(cos, sin)`` the layer receives, ``(B or 1, L, head_dim)``.
        last: ``(B,)`` position of each row's last real token.
        real: ``(B, L)`` bool, real tokens.

    Returns:
        ``(B, L)`` float32 softmax weights (0 at padding and after ``last``).
    """
    return query_attention(attention, hidden, position_embeddings, last.unsqueeze(1), real).exp().mean(dim=1)[:, 0]


class LayerPruner:
    """Drops visual tokens before LM layer ``selector.prune_layer``, for one model call."""

    def __init__(
        self,
        adapter: ModelAdapter,
        selector: Selector,
        budget: Budget,
        inputs: dict[str, Any],
        *,
        prompt_tokens: str | Callable[[Tensor, Tensor], Tensor] = "text",
    ) -> None:
        self.adapter = adapter
        self.selector = selector
        self.budget = budget
        self.layer = selector.prune_layer
        self.prompt_tokens = prompt_tokens
        self.attention_mask = inputs.get("attention_mask")
        # Layout.locate refuses a call without input_ids (inputs_embeds) with a clear error; the counts tell
        # images apart whose placeholders touch (LLaVA's <image><image>)
        sizes = adapter.image_token_counts(inputs)
        self.layout = Layout.locate(adapter, inputs.get("input_ids"), self.attention_mask, sizes, prompt_tokens)
        self.input_ids = inputs["input_ids"]
        self.protected = adapter.protected_tokens(inputs)  # e.g. LLaVA-NeXT newlines: kept, outside the budget
        self.names = lambda: visual_names(adapter.modalities(inputs), len(self.layout.sizes))  # for budget errors
        self.length = self.input_ids.shape[1]
        self.repeats = 1  # generate's copies of each row (beam search, several returned sequences)
        check_prune_layer(adapter, self.layer)
        self.layers = adapter.language_model().layers
        self.eager = adapter.language_model().config._attn_implementation == "eager"
        self.pruned: PrunedSequence | None = None
        self.done = False  # the prefill has been seen (pruned, or nothing to prune)
        self.stats: PruneStats | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[LayerPruner]:
        handles = [
            layer.register_forward_pre_hook(self._hook(index), with_kwargs=True)
            for index, layer in enumerate(self.layers)
            if index >= self.layer
        ]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, index: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            if "hidden_states" in kwargs:
                hidden = kwargs.pop("hidden_states")
            else:
                hidden, args = args[0], args[1:]
            if index == self.layer and not self.done:
                self._select(module, hidden, kwargs)
            elif index == self.layer and self.pruned is not None and hidden.shape[1] != 1:
                raise TokenPruneError(
                    f"fastv pruned the prefill of {self.length} tokens and then decodes one token at a time on "
                    f"the KV cache; got a forward of {hidden.shape[1]} tokens after it (generate with "
                    f"use_cache=False, or assisted decoding), which it does not support: keep use_cache=True"
                )
            if self.pruned is not None:
                hidden, kwargs = self._shrink(index, hidden, kwargs)
            return (hidden, *args), kwargs

        return hook

    def _expand(self, rows: int) -> None:
        """Follow ``generate``, which repeats each row for beam search or several returned sequences.

        ``generate`` repeats every row ``r`` times in place (``repeat_interleave``) before the prefill, so
        the layout, the ids and the protected tokens are repeated the same way; every copy of a row then
        keeps the same tokens (their hidden states are the same).
        """
        batch = self.input_ids.shape[0]
        if rows % batch:
            raise TokenPruneError(
                f"fastv expected the prefill of the call's {batch} rows, or of copies of them (beam search); got "
                f"{rows} rows at layer {self.layer}"
            )
        repeats = rows // batch
        images = [[i for i, (row, _) in enumerate(self.layout.spans) if row == b] for b in range(batch)]
        order = [i for b in range(batch) for _ in range(repeats) for i in images[b]]
        self.input_ids = self.input_ids.repeat_interleave(repeats, dim=0)
        if self.attention_mask is not None:
            self.attention_mask = self.attention_mask.repeat_interleave(repeats, dim=0)
        sizes = [self.layout.sizes[i] for i in order]
        self.layout = Layout.locate(self.adapter, self.input_ids, self.attention_mask, sizes, self.prompt_tokens)
        if self.protected is not None:
            self.protected = [self.protected[i] for i in order]
        names = self.names  # every copy of an input keeps its name (video 0, image 1, ...)
        self.names = lambda: [names()[i] for i in order]
        self.repeats = repeats

    def _collapse(self, stats: PruneStats) -> PruneStats:
        """``stats`` of the first copy of each row: what the call's own rows and images got."""
        if self.repeats == 1:
            return stats
        first = [i for i, (row, _) in enumerate(self.layout.spans) if row % self.repeats == 0]
        return PruneStats(
            visual_before=[stats.visual_before[i] for i in first],
            visual_after=[stats.visual_after[i] for i in first],
            selection_ms=stats.selection_ms,
            kept=[stats.kept[i] for i in first],
            sequence_before=stats.sequence_before[:: self.repeats],
            sequence_after=stats.sequence_after[:: self.repeats],
        )

    def _select(self, layer: nn.Module, hidden: Tensor, kwargs: dict[str, Any]) -> None:
        self.done = True
        if hidden.shape[0] != self.input_ids.shape[0] and hidden.shape[1] == self.length:
            self._expand(hidden.shape[0])
        layout = self.layout
        prunable = prunable_counts(layout.sizes, self.protected)
        names = _named(self.names, prunable)
        if resolve_budget(self.budget, prunable, names=names) == tuple(prunable):  # keeps everything: as stock
            kept = [torch.ones(n, dtype=torch.bool, device=hidden.device) for n in layout.sizes]
            self.stats = self._collapse(layout.stats(kept, layout.keep_mask(kept), 0.0))
            return
        if hidden.shape[1] != self.length:
            raise TokenPruneError(
                f"fastv expected the prefill of all {self.length} tokens at layer {self.layer}; got "
                f"{hidden.shape[1]} (chunked prefill is not supported)"
            )
        if hidden.shape[0] != self.input_ids.shape[0]:
            self._expand(hidden.shape[0])
        cache = _cache(kwargs)
        if cache is not None and "Static" in type(cache).__name__:
            raise TokenPruneError(
                f"fastv drops tokens from layer {self.layer} on, so layers keep caches of different lengths; "
                f"{type(cache).__name__} cannot hold them. Use the default DynamicCache (no cache_implementation)."
            )
        _sync(hidden.device)
        start = time.perf_counter()
        positions = torch.arange(self.length, device=hidden.device)
        last = (layout.real.long() * positions).argmax(dim=1)
        weights = last_token_attention(
            layer.self_attn, layer.input_layernorm(hidden), kwargs["position_embeddings"], last, layout.real
        )
        features = [hidden[row, pos] for row, pos in layout.spans]
        scores = [weights[row, pos] for row, pos in layout.spans]
        kept = select_per_image(
            self.selector,
            self.budget,
            layout,
            features,
            hidden,
            protected=self.protected,
            scores=scores,
            prunable=prunable,
        ).kept
        _sync(hidden.device)
        keep = layout.keep_mask(kept)
        stats = layout.stats(kept, keep, (time.perf_counter() - start) * 1e3)  # scores + selection
        self.stats = self._collapse(stats)
        lengths = stats.sequence_after
        if lengths == layout.lengths:  # keep is within the real tokens: as many kept means all kept
            return  # everything kept: the model runs exactly as stock
        left = layout.left_padded
        self.pruned = PrunedSequence.build(self.input_ids, keep, left=left, pad_token_id=0, lengths=lengths)

    def _shrink(self, index: int, hidden: Tensor, kwargs: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        pruned = self.pruned
        prefill = hidden.shape[1] != 1 or self.length == 1
        if prefill:
            if index == self.layer:
                hidden = _take_positions(hidden, pruned.index)
            cos, sin = kwargs["position_embeddings"]
            kwargs["position_embeddings"] = (_take_positions(cos, pruned.index), _take_positions(sin, pruned.index))
            position_ids = kwargs.get("position_ids")
            if isinstance(position_ids, Tensor) and position_ids.dim() == 2 and position_ids.shape[1] == self.length:
                kwargs["position_ids"] = _take_positions(position_ids, pruned.index)
            kwargs["attention_mask"] = self._prefill_mask(kwargs.get("attention_mask"), hidden)
        else:
            kwargs["attention_mask"] = self._decode_mask(kwargs.get("attention_mask"), hidden, index, kwargs)
        return hidden, kwargs

    def _as_layer_mask(self, allowed: Tensor, mask: Tensor | None, dtype: torch.dtype) -> Tensor:
        """Bool ``allowed`` in the format the layer expects: bool (sdpa) or additive float (eager)."""
        if (mask is not None and mask.dtype != torch.bool) or (mask is None and self.eager):
            dtype = mask.dtype if mask is not None else dtype
            return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
                ~allowed, torch.finfo(dtype).min
            )
        return allowed

    def _prefill_mask(self, mask: Any, hidden: Tensor) -> Tensor | None:
        """The full-sequence mask at the kept queries and keys; padding keys hidden."""
        pruned = self.pruned
        batch, n = pruned.index.shape
        if mask is not None and not isinstance(mask, Tensor):
            raise TokenPruneError(f"fastv supports tensor attention masks (sdpa, eager); got {type(mask).__name__}")
        if mask is None:
            if bool(pruned.real.all()):
                return None  # stock's implicit causal mask (sdpa is_causal) still describes the kept sequence
            allowed = torch.ones(n, n, dtype=torch.bool, device=hidden.device).tril().expand(batch, 1, n, n)
        else:
            full = _batch_first(mask, batch)
            heads = full.shape[1]
            full = full.gather(2, pruned.index.view(batch, 1, n, 1).expand(-1, heads, -1, full.shape[3]))
            allowed = full.gather(3, pruned.index.view(batch, 1, 1, n).expand(-1, heads, n, -1))
            if allowed.dtype != torch.bool:
                allowed = allowed > torch.finfo(allowed.dtype).min / 2  # additive float mask -> bool
        allowed = allowed & pruned.real.view(batch, 1, 1, n)
        eye = torch.eye(n, dtype=torch.bool, device=hidden.device).view(1, 1, n, n)
        allowed = allowed | (eye & ~pruned.real.view(batch, 1, n, 1))  # a padding query sees itself: no NaN
        return self._as_layer_mask(allowed, mask, hidden.dtype)

    def _decode_mask(self, mask: Any, hidden: Tensor, index: int, kwargs: dict[str, Any]) -> Tensor | None:
        """The newest token attends to every real key of this layer's (shorter) cache.

        The stock mask is sized for the cache of layer 0, which is longer unless layer 0 is pruned
        too, so it is rebuilt from this layer's own cache length instead of being sliced.
        """
        pruned = self.pruned
        batch = hidden.shape[0]
        cache = _cache(kwargs)
        cached = cache.get_seq_length(index) if cache is not None else 0
        generated = cached + hidden.shape[1] - pruned.index.shape[1]
        ones = torch.ones((batch, generated), dtype=torch.bool, device=hidden.device)
        key_real = torch.cat([pruned.real, ones], dim=1)
        if bool(key_real.all()):
            return None
        allowed = key_real.view(batch, 1, 1, -1).expand(batch, 1, hidden.shape[1], -1)
        if hidden.shape[1] > 1:  # several new tokens at once (e.g. assisted decoding): causal among them
            new = torch.ones(hidden.shape[1], hidden.shape[1], dtype=torch.bool, device=hidden.device).tril()
            allowed = allowed.clone()
            allowed[..., -hidden.shape[1] :] &= new
        return self._as_layer_mask(allowed, mask if isinstance(mask, Tensor) else None, hidden.dtype)

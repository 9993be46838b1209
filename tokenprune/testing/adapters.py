"""The model-adapter contract, as one check any model family can be run through.

:func:`assert_adapter_contract` runs a model — a built-in family or one a plugin adapts through the
``tokenprune_model_adapter`` hook — through :func:`tokenprune.apply` on the caller's inputs and
checks, with every method at budget ``1.0`` and then at each budget:

* budget ``1.0`` changes nothing: ``generate`` is token-identical to the stock model (per-step scores
  equal within 1e-5), under every ``positions`` mode the adapter supports and with beam search returning
  several sequences, ``forward`` with labels gives the stock logits and loss, every token is kept;
* a pruned ``generate`` returns the caller's prompt followed by the new tokens, and the language
  model's first decoder layer sees the pruned length at prefill and one token at each decoding step;
* the session's statistics add up: each image's ``visual_before`` is its placeholder count,
  ``visual_after`` the budget's ``K`` plus the image's protected tokens (all of them kept), and
  ``sequence_after`` each row's text plus its kept visual tokens;
* ``forward`` with labels runs on the pruned sequence: logits of the pruned length, a finite loss,
  a recorded prefill time, the tokens ``generate`` keeps and the next token ``generate`` picks;
* with a static cache (``cache_implementation="static"``, where the model supports one, as
  ``torch.compile``'d decoding needs) a pruned ``generate`` gives the same tokens, and the code outside
  transformers (tokenprune, the adapter) reads the device no more often than with the default cache:
  nothing per decoding step;
* the model is restored after the block — no instance ``generate``/``forward`` left, its class
  untouched, output equal to stock — also after an error inside the block, tokenprune's or the caller's;
* calls without images (``generate`` and ``forward``) pass through unchanged and record no statistics;
* an adapter that can merge (``merging``, VisionZip): ``encode_images(merge=True)`` gives the same
  features, plus per image raw features and a merge metric of the image's token count, and the projector
  of each raw feature is that token's feature (protected tokens aside); a merging composition then passes
  every check above too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

import tokenprune
from tokenprune.budget import Budget, resolve_budget
from tokenprune.errors import BudgetError
from tokenprune.integrations import PruneStats, get_adapter
from tokenprune.selector import Selector
from tokenprune.stages import Contextual, Relevance, Stride, TopK
from tokenprune.testing.host import HostTraffic
from tokenprune.testing.models import lm_input_lengths

__all__ = ["assert_adapter_contract"]

_GENERATE = {"max_new_tokens": 4, "do_sample": False}
_INSTANCE_ATTRS = ("generate", "forward", "_tokenprune_session")
_TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def assert_adapter_contract(
    model: Any,
    inputs: Mapping[str, Any],
    *,
    generate_kwargs: Mapping[str, Any] | None = None,
    methods: Iterable[str | Selector] = ("zspa", "divprune", "stride"),
    budgets: Sequence[Budget] = (4, 0.25),
    beams: bool = True,
) -> None:
    """Raise ``AssertionError`` describing the first broken rule of the model-adapter contract.

    Args:
        model: a VLM in eval mode that :func:`tokenprune.integrations.get_adapter` adapts.
        inputs: processor-style keyword arguments with at least one image: ``input_ids`` and
            ``attention_mask`` of shape ``(B, L)``, left padded, and the family's image arguments.
        generate_kwargs: arguments of every ``generate`` call, over ``max_new_tokens=4, do_sample=False``
            (decoding must stay deterministic).
        methods: method names or :class:`tokenprune.Selector` objects, each checked at budget 1.0 and
            at every budget; they must select before the language model (no ``prune_layer``).
        budgets: the pruning budgets; an int must fit the prunable tokens of every image.
        beams: also check beam search against stock; False only where stock ``generate`` itself cannot run beam
            search on ``inputs`` (transformers' GLM-4V with videos), and then check the beams another way.

    Raises:
        AssertionError: the first broken rule, naming the model, adapter, method and budget.
        ValueError: unusable arguments (no image placeholder in ``inputs``, a method pruning inside the LM, a
            model whose tokens of an image all have the same feature, so no check could see a wrong selection).

    Example::

        from tokenprune.testing import assert_adapter_contract
        from tokenprune.testing.models import tiny_llava, tiny_llava_inputs

        model = tiny_llava()
        assert_adapter_contract(model, tiny_llava_inputs(model, [([5, 17], [41, 8, 77])]))
    """
    _Contract(model, inputs, generate_kwargs, list(methods), list(budgets), beams).run()


class _CallerError(Exception):
    """Raised inside a block by the check, as the caller's own code might."""


class _Contract:
    """One run of the check; ``at(method, budget)`` names what the following failures are about."""

    def __init__(
        self,
        model: Any,
        inputs: Mapping[str, Any],
        generate_kwargs: Mapping[str, Any] | None,
        methods: list[str | Selector],
        budgets: list[Budget],
        beams: bool = True,
    ) -> None:
        self.beams = beams
        if not methods:
            raise ValueError("assert_adapter_contract needs at least one method")
        for method in methods:
            selector = method if isinstance(method, Selector) else tokenprune.create_method(method)
            if selector.prune_layer is not None:
                raise ValueError(f"{method!r} prunes inside the language model; the contract checks methods before it")
        self.model, self.inputs, self.methods, self.budgets = model, dict(inputs), methods, budgets
        self.adapter = get_adapter(model)
        self.generate_kwargs = {**_GENERATE, **(generate_kwargs or {})}
        ids, mask = self.inputs.get("input_ids"), self.inputs.get("attention_mask")
        if not isinstance(ids, Tensor) or ids.dim() != 2 or not isinstance(mask, Tensor) or mask.shape != ids.shape:
            raise ValueError("inputs need input_ids and attention_mask of shape (B, L)")
        self.ids, self.real = ids, mask.bool()
        placeholders = list(self.adapter.placeholder_ids)
        self.image_mask = torch.isin(ids, torch.tensor(placeholders, dtype=ids.dtype, device=ids.device)) & self.real
        if not bool(self.image_mask.any()):
            raise ValueError(f"inputs hold no image or video placeholder (token ids {placeholders})")
        self.labels = ids.masked_fill(~self.real, -100)
        self.class_methods = {name: getattr(type(model), name) for name in ("generate", "forward")}
        self.context = ""

    # --- helpers ----------------------------------------------------------------------------------

    def at(self, method: str | Selector | None = None, budget: Budget | None = None) -> None:
        self.context = (
            "" if method is None else f" with {method!r}" + ("" if budget is None else f", budget={budget!r}")
        )

    def fail(self, what: str) -> AssertionError:
        return AssertionError(f"{type(self.model).__name__} ({self.adapter.name}){self.context}: {what}")

    def check(self, condition: bool, what: str) -> None:
        if not condition:
            raise self.fail(what)

    def close(self, actual: Tensor, expected: Tensor, what: str) -> None:
        try:
            torch.testing.assert_close(actual, expected, **_TOLERANCE)
        except AssertionError as error:
            raise self.fail(f"{what}: {error}") from None

    def generate(self, inputs: Mapping[str, Any] | None = None, **extra: Any) -> Any:
        return self.model.generate(**(self.inputs if inputs is None else inputs), **{**self.generate_kwargs, **extra})

    def check_uninstalled(self) -> None:
        left = [name for name in _INSTANCE_ATTRS if name in self.model.__dict__]
        self.check(not left, f"instance attributes {left} left after the block")
        changed = [name for name, value in self.class_methods.items() if getattr(type(self.model), name) is not value]
        self.check(not changed, f"the class's {changed} changed")

    # --- the checks, in order ---------------------------------------------------------------------

    def run(self) -> None:
        self.stock = self.generate(output_scores=True, return_dict_in_generate=True)
        self.stock_forward = self.model(**self.inputs, labels=self.labels)
        self.protected = self.protected_masks()
        methods = list(self.methods)
        if self.adapter.merging:
            self.check_merge_inputs()
            methods.append(Contextual(core=TopK(Relevance()), fill=Stride(start=True), core_ratio=0.5))
        for method in methods:
            self.check_budget_one(method)
            for budget in self.budgets:
                self.check_pruned(method, budget)
        if self.beams:
            self.check_beams(self.methods[0])
        self.check_restored_after_errors()
        self.check_text_only()

    def protected_masks(self) -> list[Tensor] | None:
        """The adapter's protected tokens, which must agree with those of ``encode_images`` (and so must the
        image token counts it gives without encoding)."""
        protected = self.adapter.protected_tokens(self.inputs)
        with torch.no_grad():
            images = self.adapter.encode_images(self.inputs)
        encoded = images.protected
        uniform = [i for i, f in enumerate(images.features) if f.shape[0] > 1 and bool((f == f[:1]).all())]
        if uniform:  # e.g. a projector left at zeros by the model's initialisation
            raise ValueError(
                f"every token of images {uniform} has the same feature: the model cannot tell which tokens were kept, "
                f"so the checks could not either; initialise the model so that its tokens differ"
            )
        counts, sizes = self.adapter.image_token_counts(self.inputs), [f.shape[0] for f in images.features]
        self.check(counts is None or counts == sizes, f"image_token_counts(inputs) is {counts}; encoded: {sizes}")
        if protected is None or encoded is None:
            self.check(protected is encoded, "protected_tokens(inputs) and encode_images(inputs).protected disagree")
            return None
        same = len(protected) == len(encoded) and all(map(torch.equal, protected, encoded))
        self.check(same, "protected_tokens(inputs) and encode_images(inputs).protected disagree")
        return list(protected)

    def check_merge_inputs(self) -> None:
        """``encode_images(merge=True)``: the same features, raw features and metric per token, ``project(raw)``."""
        self.at()
        with torch.no_grad():
            plain = self.adapter.encode_images(self.inputs)
            images = self.adapter.encode_images(self.inputs, merge=True)
        sizes = [f.shape[0] for f in plain.features]
        same = [f.shape[0] for f in images.features] == sizes and all(map(torch.equal, images.features, plain.features))
        self.check(same, "encode_images(merge=True) gave other features than encode_images()")
        for name in ("raw", "metric"):
            values = getattr(images, name)
            counts = None if values is None else [v.shape[0] if v.dim() == 2 else None for v in values]
            self.check(counts == sizes, f"encode_images(merge=True).{name}: {counts} tokens per image, not {sizes}")
        for i, (raw, features) in enumerate(zip(images.raw, images.features, strict=True)):
            merged = torch.ones(raw.shape[0], dtype=torch.bool, device=raw.device)
            if images.protected is not None:
                merged &= ~images.protected[i]
            with torch.no_grad():
                projected = self.adapter.project(raw[merged])
            self.close(projected.to(features.dtype), features[merged], f"image {i}: project(raw) vs its features")

    def check_budget_one(self, method: str | Selector) -> None:
        self.at(method, 1.0)
        with tokenprune.apply(self.model, method, budget=1.0) as session:
            pruned = self.generate(output_scores=True, return_dict_in_generate=True)
            forward = self.model(**self.inputs, labels=self.labels)
        self.check_uninstalled()
        self.check(
            torch.equal(pruned.sequences, self.stock.sequences),
            f"generate differs from stock:\n{pruned.sequences.tolist()}\n{self.stock.sequences.tolist()}",
        )
        self.check(len(pruned.scores) == len(self.stock.scores), "a different number of decoding steps than stock")
        for step, (ours, stock) in enumerate(zip(pruned.scores, self.stock.scores, strict=True)):
            self.close(ours, stock, f"scores of decoding step {step}")
        for positions in self.adapter.position_modes[1:]:  # every token kept: the positions too are stock's
            with tokenprune.apply(self.model, method, budget=1.0, positions=positions):
                other = self.generate(output_scores=True, return_dict_in_generate=True)
            self.check(
                torch.equal(other.sequences, self.stock.sequences),
                f"generate with positions={positions!r} differs from stock:\n{other.sequences.tolist()}",
            )
            for step, (ours, stock) in enumerate(zip(other.scores, self.stock.scores, strict=True)):
                self.close(ours, stock, f"scores of decoding step {step} with positions={positions!r}")
        width = forward.logits.shape[1]  # left padded: every row's real tokens end in the last column
        real = self.real[:, -width:]
        self.close(forward.logits[real], self.stock_forward.logits[:, -width:][real], "forward logits")
        self.close(forward.loss, self.stock_forward.loss, "forward loss")

        self.check(len(session.stats) == 2, f"{len(session.stats)} stats for one generate and one forward")
        stats = session.stats[0]
        self.check_images(stats.visual_before)
        self.check(stats.visual_after == self.sizes, f"visual_after {stats.visual_after}, not every token")
        self.check(
            len(stats.kept) == len(self.sizes), f"kept indices of {len(stats.kept)} images, not {len(self.sizes)}"
        )
        for i, (kept, n) in enumerate(zip(stats.kept, self.sizes, strict=True)):
            self.check(kept.tolist() == list(range(n)), f"image {i}: kept {kept.tolist()} of {n} tokens")
        self.check_sequences(stats)

    def check_beams(self, method: str | Selector) -> None:
        """Beam search returning several sequences at budget ``1.0`` is stock's: ``generate`` copies each row's
        features for its beams, which must stay that row's (in the layout the family's ``forward`` reads)."""
        beams = {**self.generate_kwargs, "num_beams": 2, "num_return_sequences": 2, "max_new_tokens": 2}
        beams.update(output_logits=True, return_dict_in_generate=True)  # every copy's logits, not only the best's
        stock = self.model.generate(**self.inputs, **beams)
        self.at(method, 1.0)
        with tokenprune.apply(self.model, method, budget=1.0):
            ours = self.model.generate(**self.inputs, **beams)
        self.check(
            torch.equal(ours.sequences, stock.sequences),
            f"beam search (2 beams, 2 sequences) differs from stock:\n{ours.sequences.tolist()}",
        )
        self.close(ours.logits[0], stock.logits[0], "beam search: the first step's logits of every beam")

    def check_images(self, sizes: list[int]) -> None:
        """``visual_before`` against the placeholders: per row, and per run where runs and images match."""
        per_row = self.image_mask.sum(1).tolist()
        self.check(sum(sizes) == sum(per_row), f"visual_before {sizes} for {per_row} placeholders per row")
        self.sizes, self.rows, start = list(sizes), [], 0
        for row, count in enumerate(per_row):
            end = start
            while sum(sizes[start:end]) < count:
                end += 1
            mine = sizes[start:end]
            self.check(sum(mine) == count, f"visual_before {sizes} splits the placeholders per row {per_row}")
            runs = _runs(self.image_mask[row])
            if len(runs) == len(mine):  # images separated by other tokens: one run, one image
                self.check(mine == runs, f"row {row}: visual_before {mine}, placeholder runs {runs}")
            self.rows += [row] * len(mine)
            start = end
        protected = [0] * len(sizes)
        if self.protected is not None:
            lengths = [len(mask) for mask in self.protected]
            self.check(lengths == self.sizes, f"protected masks of {lengths} tokens for images of {self.sizes}")
            protected = [int(mask.sum()) for mask in self.protected]
        self.prunable = [n - p for n, p in zip(self.sizes, protected, strict=True)]

    def check_sequences(self, stats: PruneStats) -> None:
        lengths = self.real.sum(1).tolist()
        self.check(stats.sequence_before == lengths, f"sequence_before {stats.sequence_before}, real {lengths}")
        expected = (self.real & ~self.image_mask).sum(1).tolist()  # the text of each row
        for row, kept in zip(self.rows, stats.visual_after, strict=True):
            expected[row] += kept
        self.check(
            stats.sequence_after == expected,
            f"sequence_after {stats.sequence_after}, expected text + kept visual tokens = {expected}",
        )

    def check_pruned(self, method: str | Selector, budget: Budget) -> None:
        self.at(method, budget)
        layer = self.adapter.language_model().layers[0]
        with tokenprune.apply(self.model, method, budget=budget) as session:
            with HostTraffic() as traffic:
                seen, out = lm_input_lengths(self.model, self.generate, layer=layer)
            forward = self.model(**self.inputs, labels=self.labels)
        self.check_uninstalled()
        self.check(len(session.stats) == 2, f"{len(session.stats)} stats for one generate and one forward")
        stats, forward_stats = session.stats
        self.check_static_cache(method, budget, _sequences(out), _own_reads(traffic))

        # the statistics: K per image (+ its protected tokens, all kept); text + kept tokens per row
        self.check(stats.visual_before == self.sizes, f"visual_before {stats.visual_before}, {self.sizes} at 1.0")
        k = resolve_budget(budget, self.prunable)
        expected = [k_i + n - m for k_i, n, m in zip(k, self.sizes, self.prunable, strict=True)]  # K + protected
        self.check(
            stats.visual_after == expected, f"visual_after {stats.visual_after}, expected K + protected {expected}"
        )
        self.check(
            len(stats.kept) == len(self.sizes), f"kept indices of {len(stats.kept)} images, not {len(self.sizes)}"
        )
        for i, (kept, n) in enumerate(zip(stats.kept, self.sizes, strict=True)):
            ascending = bool((kept[1:] > kept[:-1]).all())
            valid = len(kept) == expected[i] and ascending and 0 <= int(kept.min()) <= int(kept.max()) < n
            self.check(valid, f"image {i}: kept {kept.tolist()} of {n} tokens (K + protected = {expected[i]})")
            if self.protected is not None:
                missing = set(self.protected[i].nonzero()[:, 0].tolist()) - set(kept.tolist())
                self.check(not missing, f"image {i}: protected tokens {sorted(missing)} dropped")
        self.check_sequences(stats)

        # generate: the caller's prompt, then the new tokens; the LM sees the pruned prefill, then 1 per step
        batch, width = self.ids.shape
        sequences = _sequences(out)
        repeats = sequences.shape[0] // batch
        self.check(repeats > 0 and sequences.shape[0] == batch * repeats, f"output of shape {tuple(sequences.shape)}")
        prompt = self.ids.repeat_interleave(repeats, dim=0)
        self.check(torch.equal(sequences[:, :width], prompt), "generate did not return the caller's prompt")
        new = sequences.shape[1] - width
        limit = self.generate_kwargs.get("max_new_tokens")
        if limit is not None:
            ended = self.all_ended(sequences[:, width:])
            self.check(new == limit or (new < limit and ended), f"{new} new tokens for max_new_tokens={limit}")
        self.check(
            len(seen) == max(new, 1) and seen[0] == max(stats.sequence_after),
            f"the first decoder layer saw lengths {seen}; expected {max(stats.sequence_after)} at prefill "
            f"(the longest row's text + kept visual tokens), then one call per further new token ({new} in all)",
        )
        self.check(seen[1:] == [1] * (new - 1), f"decoding steps saw lengths {seen[1:]}, not 1 each")

        # forward with labels: on the pruned sequence, pruned as generate prunes
        logits, loss = forward.logits, forward.loss
        shape = (batch, max(forward_stats.sequence_after))
        self.check(tuple(logits.shape[:2]) == shape, f"forward logits of shape {tuple(logits.shape)}, expected {shape}")
        self.check(loss is not None and bool(torch.isfinite(loss)), f"forward loss {loss}")
        self.check(
            forward_stats.prefill_ms is not None and forward_stats.prefill_ms > 0,
            f"forward recorded prefill_ms={forward_stats.prefill_ms}",
        )
        same = len(forward_stats.kept) == len(stats.kept) and all(map(torch.equal, forward_stats.kept, stats.kept))
        self.check(same, "forward and generate kept different tokens")
        if repeats == 1 and new > 0 and self.generate_kwargs.get("num_beams", 1) == 1:
            last = self.real[:, -1]  # rows whose prompt ends in the last column (all of them, left padded)
            predicted, generated = logits[:, -1].argmax(-1)[last], sequences[last, width]
            self.check(
                torch.equal(predicted, generated),
                f"forward predicts {predicted.tolist()} next, generate picked {generated.tolist()}",
            )

    def check_static_cache(self, method: str | Selector, budget: Budget, sequences: Tensor, reads: int) -> None:
        """A static cache: the same tokens, and no more reads of the device outside transformers than with
        the default cache. The cache keeps its length on the device, so a per-step test of it would show."""
        if not getattr(self.model, "_can_compile_fullgraph", False) or any(
            name in self.generate_kwargs for name in ("cache_implementation", "cache", "past_key_values")
        ):
            return  # the model has no static cache, or the caller chose the cache
        with tokenprune.apply(self.model, method, budget=budget), HostTraffic() as traffic:
            # uncompiled (transformers compiles static-cache decoding on a GPU): the reads are the question here
            static = _sequences(self.generate(cache_implementation="static", disable_compile=True))
        self.check_uninstalled()
        self.check(
            torch.equal(static, sequences),
            f"generate with a static cache differs from the default cache:\n{static.tolist()}\n{sequences.tolist()}",
        )
        own = _own_reads(traffic)
        self.check(
            own <= reads,
            f"with a static cache the code outside transformers read the device {own} times, {reads} with the "
            f"default cache (a read per decoding step would sync every step and break torch.compile)",
        )

    def all_ended(self, new_tokens: Tensor) -> bool:
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        eos = torch.tensor(eos, dtype=new_tokens.dtype).to(new_tokens.device)
        return bool(torch.isin(new_tokens, eos).any(dim=1).all())

    def check_restored_after_errors(self) -> None:
        method, too_many = self.methods[0], min(self.prunable) + 1  # one image too small is enough
        self.at(method, too_many)
        try:
            with tokenprune.apply(self.model, method, budget=too_many):
                self.generate()
        except BudgetError:
            pass
        else:
            raise self.fail("a budget above every image's token count raised no BudgetError")
        self.check_uninstalled()

        self.at(method, 1.0)
        try:
            with tokenprune.apply(self.model, method, budget=1.0):
                raise _CallerError
        except _CallerError:
            pass
        self.check_uninstalled()

        self.at()
        after = _sequences(self.generate())
        self.check(torch.equal(after, self.stock.sequences), "generate after the blocks differs from stock")

    def check_text_only(self) -> None:
        """The prompts without their placeholders, and without image arguments, pass through untouched."""
        rows = [row[keep] for row, keep in zip(self.ids, self.real & ~self.image_mask, strict=True)]
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.adapter.pad_token_id(), dtype=self.ids.dtype, device=self.ids.device)
        mask = torch.zeros_like(ids)
        for b, row in enumerate(rows):
            ids[b, width - len(row) :], mask[b, width - len(row) :] = row, 1
        text = {"input_ids": ids, "attention_mask": mask}
        stock, stock_logits = _sequences(self.generate(text)), self.model(**text).logits
        method, budget = self.methods[0], self.budgets[0] if self.budgets else 1.0
        self.at(method, budget)
        with tokenprune.apply(self.model, method, budget=budget) as session:
            out, logits = _sequences(self.generate(text)), self.model(**text).logits
        self.check(torch.equal(out, stock), "a text-only generate differs from stock")
        self.check(torch.equal(logits, stock_logits), "a text-only forward differs from stock")
        self.check(session.stats == [], f"text-only calls recorded stats {session.stats}")


def _sequences(out: Any) -> Tensor:
    return out if isinstance(out, Tensor) else out.sequences


def _runs(row: Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool tensor."""
    runs, length = [], 0
    for value in [*row.tolist(), False]:
        if value:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    return runs


def _own_reads(traffic: HostTraffic) -> int:
    """Reads of the device made outside transformers (and this check): by tokenprune, the adapter, the caller."""
    return sum("/transformers/" not in where and "/tokenprune/testing/" not in where for where in traffic.where)

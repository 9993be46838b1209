"""The adapter contract check itself: it passes an adapter a plugin adds, and fails on broken ones.

The family test files (``test_integration_*.py``) run every built-in adapter through it.
"""

import pytest
import torch

import tokenprune
import tokenprune.plugins
from tokenprune.integrations.base import ImageTokens, UnsupportedMergeError
from tokenprune.integrations.llava import LlavaAdapter
from tokenprune.testing import assert_adapter_contract
from tokenprune.testing.models import tiny_llava, tiny_llava_inputs

PROMPTS = [([5, 17, 9], [41, 8, 77]), ([23], [64, 3])]


class PluginLlavaAdapter(LlavaAdapter):
    """A plugin's adapter: here the built-in one under another name."""


class ForgetsLabels(PluginLlavaAdapter):
    def rebuild(self, inputs, pruned, features):
        kwargs = super().rebuild(inputs, pruned, features)
        kwargs.pop("labels", None)
        return kwargs


class ShufflesFeatures(PluginLlavaAdapter):
    def rebuild(self, inputs, pruned, features):
        return super().rebuild(inputs, pruned, [f.flip(0) for f in features])


class HidesProtected(PluginLlavaAdapter):  # encode_images protects a token, protected_tokens says none
    def encode_images(self, inputs, *, scores=None):
        images = super().encode_images(inputs, scores=scores)
        protected = [f.new_zeros(f.shape[0], dtype=bool) for f in images.features]
        for mask in protected:
            mask[0] = True
        return ImageTokens(images.features, protected, images.scores)


class MiscountsImages(PluginLlavaAdapter):  # says each image has one placeholder more than it encodes to
    def image_token_counts(self, inputs):
        return [count + 1 for count in super().image_token_counts(inputs)]


class MisalignsRaw(PluginLlavaAdapter):  # the raw features for merging, in another order than the features
    def encode_images(self, inputs, *, scores=None, merge=False):
        images = super().encode_images(inputs, scores=scores, merge=merge)
        if merge:
            images.raw = [raw.flip(0) for raw in images.raw]
        return images


class Plugin:
    def __init__(self, adapter, model):
        self.adapter, self.model = adapter, model

    @tokenprune.hookimpl
    def tokenprune_model_adapter(self, model):
        return self.adapter(model) if model is self.model else None


@pytest.fixture
def adapted(fresh_registry):
    """``adapted(adapter_class)``: a tiny LLaVA that a plugin adapts with ``adapter_class``; and its inputs."""

    def make(adapter):
        model = tiny_llava(seed=0)
        tokenprune.plugins.get_plugin_manager().register(Plugin(adapter, model))
        return model, tiny_llava_inputs(model, PROMPTS)

    return make


def test_a_plugin_adapter_is_checked_like_a_builtin(adapted):
    model, inputs = adapted(PluginLlavaAdapter)
    assert tokenprune.integrations.get_adapter(model).name == "PluginLlavaAdapter"
    assert_adapter_contract(model, inputs, methods=("zspa",))


@pytest.mark.parametrize(
    ("adapter", "message"),
    [
        (ForgetsLabels, r"\(ForgetsLabels\) with 'zspa', budget=1.0: forward loss"),
        (ShufflesFeatures, r"\(ShufflesFeatures\) with 'zspa', budget=1.0: generate differs from stock"),
        (HidesProtected, r"protected_tokens\(inputs\) and encode_images\(inputs\).protected disagree"),
        (MisalignsRaw, r"\(MisalignsRaw\): image 0: project\(raw\) vs its features"),
        (MiscountsImages, r"image_token_counts\(inputs\) is \[17, 17\]; encoded: \[16, 16\]"),
    ],
)
def test_the_check_catches_a_broken_adapter(adapted, adapter, message):
    model, inputs = adapted(adapter)
    with pytest.raises(AssertionError, match=message):
        assert_adapter_contract(model, inputs, methods=("zspa",))


class CannotMerge(PluginLlavaAdapter):
    merging = False


def test_a_family_that_cannot_merge_refuses_merging_methods_and_passes_the_contract(adapted):
    model, inputs = adapted(CannotMerge)
    with (
        pytest.raises(
            UnsupportedMergeError, match=r"CannotMerge does not provide them \(ModelAdapter.merging is False\)"
        ),
        tokenprune.apply(model, "visionzip", budget=4),
    ):
        model(**inputs)
    assert_adapter_contract(model, inputs, methods=("zspa",))  # no merge checks asked of it


def test_unusable_arguments_are_refused(adapted):
    model, inputs = adapted(PluginLlavaAdapter)
    with pytest.raises(ValueError, match="prunes inside the language model"):
        assert_adapter_contract(model, inputs, methods=("fastv",))
    text = {"input_ids": inputs["input_ids"][:, -2:], "attention_mask": inputs["attention_mask"][:, -2:]}
    with pytest.raises(ValueError, match="no image or video placeholder"):
        assert_adapter_contract(model, text)


def test_the_check_catches_a_read_per_decoding_step(adapted, monkeypatch):
    """A static cache keeps its length on the device: a wrapper that reads it each step is caught."""
    from tokenprune.integrations import session

    model, inputs = adapted(PluginLlavaAdapter)
    positional = session._positional  # the first thing every wrapped call does

    def reads_the_cache(args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None:
            bool(cache.get_seq_length() == 0)  # a device read on a static cache, as a naive prefill test makes
        return positional(args, kwargs)

    monkeypatch.setattr(session, "_positional", reads_the_cache)
    message = r"with a static cache the code outside transformers read the device \d+ times"
    with pytest.raises(AssertionError, match=message):
        assert_adapter_contract(model, inputs, methods=("zspa",))


def test_a_model_whose_image_tokens_are_all_alike_is_refused():
    """transformers initialises some projectors to zeros (Gemma 3): the contract would then pass wrong selections."""
    from tokenprune.testing.models import tiny_gemma3, tiny_gemma3_inputs

    model = tiny_gemma3(seed=0)
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.zero_()
    with pytest.raises(ValueError, match=r"every token of images \[0\] has the same feature"):
        assert_adapter_contract(model, tiny_gemma3_inputs(model, [[[5, 6], [7, 8]]]))

"""The built-in model adapters, registered through the ``tokenprune_model_adapter`` hook.

Adapters are imported only when a model of their family is pruned, so that importing tokenprune
does not import transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from tokenprune.hookspecs import hookimpl

__all__ = ["BUILTIN_ADAPTERS", "FAMILIES", "tokenprune_model_adapter"]

BUILTIN_ADAPTERS: dict[str, str] = {
    "Gemma3ForConditionalGeneration": "tokenprune.integrations.gemma3:Gemma3Adapter",
    "Glm4vForConditionalGeneration": "tokenprune.integrations.glm4v:Glm4vAdapter",
    "Glm4vMoeForConditionalGeneration": "tokenprune.integrations.glm4v:Glm4vAdapter",
    "Idefics3ForConditionalGeneration": "tokenprune.integrations.idefics3:Idefics3Adapter",
    "InternVLForConditionalGeneration": "tokenprune.integrations.internvl:InternVLAdapter",
    "LlavaForConditionalGeneration": "tokenprune.integrations.llava:LlavaAdapter",
    "LlavaNextForConditionalGeneration": "tokenprune.integrations.llava_next:LlavaNextAdapter",
    "LlavaOnevisionForConditionalGeneration": "tokenprune.integrations.llava_onevision:LlavaOnevisionAdapter",
    "Mistral3ForConditionalGeneration": "tokenprune.integrations.mistral3:Mistral3Adapter",
    "Qwen2_5_VLForConditionalGeneration": "tokenprune.integrations.qwen2_5_vl:Qwen2_5_VLAdapter",
    "Qwen2VLForConditionalGeneration": "tokenprune.integrations.qwen2_vl:Qwen2VLAdapter",
    "Qwen3VLForConditionalGeneration": "tokenprune.integrations.qwen3_vl:Qwen3VLAdapter",
    "SmolVLMForConditionalGeneration": "tokenprune.integrations.idefics3:Idefics3Adapter",
}
"""Model class name -> ``module:AdapterClass``; subclasses of these model classes match too."""

FAMILIES = (
    "LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, GLM-4.1V, GLM-4.5V, InternVL, Gemma 3, "
    "Idefics3, SmolVLM and Mistral 3"
)
"""The families of :data:`BUILTIN_ADAPTERS`, by the names users know them by (for help texts and messages)."""


@hookimpl(trylast=True)
def tokenprune_model_adapter(model: Any) -> Any:
    for cls in type(model).__mro__:
        target = BUILTIN_ADAPTERS.get(cls.__name__)
        if target is not None:
            module, name = target.split(":")
            return getattr(importlib.import_module(module), name)(model)
    return None

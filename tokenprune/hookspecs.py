"""The extension points of tokenprune.

A plugin is a module (or object) with functions named after these specs and marked with
:data:`tokenprune.hookimpl`. Installed packages expose plugins through the ``tokenprune`` entry-point
group::

    [project.entry-points.tokenprune]
    mymethods = "mypackage.plugin"

An implementation may accept any subset of a hook's arguments, by name. New arguments may be added
to a hook in later versions, never renamed. **pluggy never passes an argument that has a default
value in your implementation**: write ``def tokenprune_register_methods(register):``, not
``register=None``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from tokenprune.integrations.base import ModelAdapter
    from tokenprune.registry import MethodRegistrar

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec", "tokenprune_model_adapter", "tokenprune_register_methods"]

PROJECT_NAME = "tokenprune"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def tokenprune_register_methods(register: MethodRegistrar) -> None:
    """Register pruning methods.

    Call ``register(name, factory, summary=...)`` once per method you provide. ``factory`` is called
    by :func:`tokenprune.create_method` with the user's parameters and returns a
    :class:`tokenprune.Selector`; every factory parameter needs a default (they are the method's
    documented parameters). Pass ``override=True`` to replace a method registered earlier (for
    example a built-in); otherwise a duplicate name is an error.

    Example::

        @tokenprune.hookimpl
        def tokenprune_register_methods(register):
            register("relevance-stride", relevance_stride, summary="relevant core, evenly spaced fill")
    """


@hookspec(firstresult=True)
def tokenprune_model_adapter(model: Any) -> ModelAdapter | None:
    """Return a :class:`tokenprune.integrations.ModelAdapter` for ``model``, or None if you don't know it.

    :func:`tokenprune.apply` asks this hook for every model it prunes; the first non-None answer
    wins. Built-in adapters (LLaVA-1.5, -NeXT, -OneVision, Qwen2-VL, 2.5-VL, 3-VL, InternVL, Gemma 3)
    answer last, so a plugin can add a model family or replace a built-in adapter. Import heavy dependencies inside
    the function, not at module level, so that ``import tokenprune`` stays light.

    Example::

        @tokenprune.hookimpl
        def tokenprune_model_adapter(model):
            if type(model).__name__ == "MyVLMForConditionalGeneration":
                from my_package.adapter import MyAdapter
                return MyAdapter(model)
            return None
    """

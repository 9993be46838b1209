"""The plugin module named by the ``tokenprune`` entry point: it only registers the methods.

pluggy never passes an argument that has a default value in a hook implementation, so
``register`` must not have one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import tokenprune

from tokenprune_mmr.mmr import mmr

if TYPE_CHECKING:
    from tokenprune.registry import MethodRegistrar


@tokenprune.hookimpl
def tokenprune_register_methods(register: MethodRegistrar) -> None:
    register("mmr", mmr, summary=mmr.__doc__ or "")

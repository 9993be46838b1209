"""The plugin manager: built-in plugins, then third-party ones from the ``tokenprune`` entry points.

The manager is built on first use, not at import. Built-in methods are plugins exactly like
third-party ones, listed by module name in :data:`DEFAULT_PLUGINS`. Set
``TOKENPRUNE_DISABLE_PLUGIN_AUTOLOAD=1`` to skip third-party entry points.

A plugin that fails to import is reported as a :class:`tokenprune.errors.PluginWarning` naming it,
and is listed by :func:`list_plugins` with its error; everything else keeps working.
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from dataclasses import dataclass
from importlib import metadata

import pluggy

from tokenprune import hookspecs
from tokenprune.errors import PluginWarning

__all__ = [
    "AUTOLOAD_ENV",
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "PluginRecord",
    "get_plugin_manager",
    "list_plugins",
    "reset",
]

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME
AUTOLOAD_ENV = "TOKENPRUNE_DISABLE_PLUGIN_AUTOLOAD"
DEFAULT_PLUGINS: tuple[str, ...] = ("tokenprune.methods.builtin", "tokenprune.integrations.adapters")


@dataclass(frozen=True)
class PluginRecord:
    """A plugin the manager knows of, loaded or not.

    Attributes:
        name: the plugin's name (entry-point name, or module name for built-ins).
        source: ``"builtin"``, ``"entry point"`` or ``"python"`` (registered at run time).
        target: what was loaded, e.g. ``"tokenprune_mmr.plugin"``.
        distribution: the installed distribution providing it, with its version, if known.
        error: why it failed to load, or None.
    """

    name: str
    source: str
    target: str
    distribution: str | None = None
    error: str | None = None


_lock = threading.RLock()
_manager: pluggy.PluginManager | None = None
_records: list[PluginRecord] = []


def _autoload_disabled() -> bool:
    return os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _warn(message: str) -> None:
    warnings.warn(message, PluginWarning, stacklevel=3)


def _build() -> tuple[pluggy.PluginManager, list[PluginRecord]]:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    records = []
    for module_name in DEFAULT_PLUGINS:
        manager.register(importlib.import_module(module_name), name=module_name)
        records.append(PluginRecord(module_name, "builtin", module_name, f"tokenprune-vlm {_version()}"))
    if _autoload_disabled():
        return manager, records
    for entry_point in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        dist = entry_point.dist
        dist_name = f"{dist.metadata['Name']} {dist.version}" if dist is not None else None
        if manager.is_blocked(entry_point.name):
            continue
        if manager.get_plugin(entry_point.name) is not None:  # the first of two with one name was loaded
            error = f"another entry point is already named {entry_point.name!r}; this one was not loaded"
            _warn(f"tokenprune plugin {entry_point.name!r} ({entry_point.value}): {error}")
            records.append(PluginRecord(entry_point.name, "entry point", entry_point.value, dist_name, error))
            continue
        try:
            plugin = entry_point.load()
            manager.register(plugin, name=entry_point.name)
            try:
                manager.check_pending()  # a hook implementation with no matching spec (misspelt)
            except pluggy.PluginValidationError:
                manager.unregister(name=entry_point.name)
                raise
        except Exception as exc:  # any failure in third-party code is reported, not fatal
            error = f"{type(exc).__name__}: {exc}"
            _warn(f"tokenprune plugin {entry_point.name!r} ({entry_point.value}) failed to load: {error}")
            records.append(PluginRecord(entry_point.name, "entry point", entry_point.value, dist_name, error))
            continue
        records.append(PluginRecord(entry_point.name, "entry point", entry_point.value, dist_name))
    return manager, records


def _version() -> str:
    from tokenprune import __version__

    return __version__


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first call."""
    global _manager, _records
    with _lock:
        if _manager is None:
            _manager, _records = _build()
        return _manager


def list_plugins() -> list[PluginRecord]:
    """Every plugin the manager loaded or failed to load, built-ins first."""
    get_plugin_manager()
    from tokenprune.registry import get_registry

    return list(_records) + get_registry().runtime_plugins()


def reset() -> None:
    """Forget the manager and the method registry; the next use rebuilds both (for tests)."""
    global _manager, _records
    from tokenprune import registry

    with _lock:
        _manager, _records = None, []
        registry.reset()

"""The method registry: every method any plugin registered, listed and created by name.

Public entry points: :func:`list_methods`, :func:`create_method`, :func:`register_method`,
:func:`get_method_spec`. The registry is built on first use by asking every plugin's
``tokenprune_register_methods`` hook, one plugin at a time, so that one broken plugin is reported
by name (a :class:`~tokenprune.errors.PluginWarning`) and the others still register.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
import threading
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import Tensor

from tokenprune.errors import (
    DuplicateMethodError,
    MethodParameterError,
    PluginWarning,
    SelectorError,
    TokenPruneError,
    UnknownMethodError,
)
from tokenprune.selector import CheckedInputs, MergePlan, Selector, TokenBatch, Wrapper

__all__ = [
    "Method",
    "MethodRegistrar",
    "MethodRegistry",
    "MethodSpec",
    "create_method",
    "get_method_spec",
    "get_registry",
    "list_methods",
    "register_method",
]

_NAME = re.compile(r"[a-z0-9][a-z0-9_.\-]*")  # matched whole (fullmatch): "abc\n" is not a name
RUNTIME_PLUGIN = "python"


def natural_key(name: str) -> list[Any]:
    """Sort key that orders ``m2`` before ``m10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _format_params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in params.items()) or "none"


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Attributes:
        name: the registered name, e.g. ``"zspa"``.
        factory: builds the selector from keyword parameters.
        summary: one line for listings.
        plugin: name of the plugin that registered it.
        params: the factory's parameters and their defaults, in order.
    """

    name: str
    factory: Callable[..., Selector]
    summary: str
    plugin: str
    params: Mapping[str, Any] = field(default_factory=dict)


def _factory_params(name: str, factory: Callable[..., Any]) -> dict[str, Any]:
    if isinstance(factory, Selector):
        raise TypeError(
            f"method {name!r}: got a {type(factory).__name__} instance; register a factory that builds it, "
            f"such as the class or a function with defaulted parameters"
        )
    if not callable(factory):
        raise TypeError(f"method {name!r}: factory must be callable; got {type(factory).__name__}")
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"method {name!r}: cannot read the factory's signature: {exc}") from exc
    params = {}
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"method {name!r}: factory takes *{param.name}; declare each parameter by name")
        if param.kind is param.POSITIONAL_ONLY:  # create_method passes parameters by keyword
            raise TypeError(f"method {name!r}: factory parameter {param.name!r} is positional-only; make it a keyword")
        if param.default is param.empty:
            raise TypeError(f"method {name!r}: factory parameter {param.name!r} needs a default value")
        params[param.name] = param.default
    return params


class Method(Wrapper):
    """A selector created by name from the registry, with its parameters.

    It behaves as the selector it wraps (and composes like one), and adds the method's name and the
    input shapes to every error.
    """

    def __init__(self, spec: MethodSpec, params: Mapping[str, Any], selector: Selector) -> None:
        self.spec = spec
        self.name = spec.name
        self.params = MappingProxyType(dict(params))
        super().__init__(selector)

    def check_inputs(self, tokens: TokenBatch | CheckedInputs, *, label: str | None = None) -> None:
        self.selector.check_inputs(tokens, label=label or f"method {self.name!r}")

    def __call__(self, visual: Tensor, **kwargs: Any) -> Tensor:
        return self._labelled(super().__call__, visual, kwargs)

    def plan(self, visual: Tensor, **kwargs: Any) -> MergePlan:
        return self._labelled(super().plan, visual, kwargs)

    def _labelled(self, call: Callable[..., Any], visual: Tensor, kwargs: dict[str, Any]) -> Any:
        """``call(visual, **kwargs)``, its errors naming this method (and, when unexpected, the input shapes)."""
        try:
            return call(visual, **kwargs)
        except TokenPruneError as exc:
            named = f"method {self.name!r}"
            if exc.args and isinstance(exc.args[0], str) and named not in exc.args[0]:  # named once, not twice
                exc.args = (f"{exc.args[0]} ({named})", *exc.args[1:])
            raise
        except Exception as exc:
            shapes = ", ".join(
                f"{key}={tuple(value.shape)}"
                for key, value in (("visual", visual), *kwargs.items())
                if isinstance(value, Tensor)
            )
            raise SelectorError(
                f"method {self.name!r} (plugin {self.spec.plugin!r}) failed on {shapes}: {type(exc).__name__}: {exc}"
            ) from exc

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.params.items())
        return f"Method({self.name!r}{args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Method) and (self.name, dict(self.params)) == (other.name, dict(other.params))

    def __hash__(self) -> int:
        return hash((self.name, tuple(self.params)))


class MethodRegistry:
    """Method specs by name. Use the module-level functions; this class is for tests and tools."""

    def __init__(self) -> None:
        self._specs: dict[str, MethodSpec] = {}
        self._lock = threading.RLock()

    def register(
        self,
        name: str,
        factory: Callable[..., Selector],
        *,
        summary: str = "",
        plugin: str = RUNTIME_PLUGIN,
        override: bool = False,
    ) -> MethodSpec:
        """Add a method; raises if the name is taken (unless ``override``) or the factory is unusable."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(
                f"method name must be lowercase letters, digits, '_', '-' or '.', starting with a letter or "
                f"digit; got {name!r}"
            )
        params = _factory_params(name, factory)
        if not isinstance(summary, str):
            raise TypeError(f"method {name!r}: summary must be a str; got {type(summary).__name__}")
        first_paragraph = inspect.cleandoc(summary).split("\n\n")[0]
        summary = " ".join(first_paragraph.replace("``", "").split())  # a listing line, not reStructuredText
        spec = MethodSpec(name, factory, summary, plugin, params)
        with self._lock:
            existing = self._specs.get(name)
            if existing is not None and not override:
                raise DuplicateMethodError(
                    f"method {name!r} is already registered by plugin {existing.plugin!r}; "
                    f"pass override=True to replace it, or choose another name"
                )
            self._specs[name] = spec
        return spec

    def names(self, pattern: str = "*") -> list[str]:
        with self._lock:
            return sorted(fnmatch.filter(self._specs, pattern), key=natural_key)

    def get(self, name: str) -> MethodSpec:
        with self._lock:
            spec = self._specs.get(name)
            if spec is not None:
                return spec
            known = sorted(self._specs, key=natural_key)
        close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
        hint = f"Did you mean {', '.join(map(repr, close))}? " if close else ""
        raise UnknownMethodError(f"unknown method {name!r}. {hint}Available: {', '.join(known) or 'none'}")

    def create(self, name: str, **params: Any) -> Method:
        spec = self.get(name)
        params = {key: value for key, value in params.items() if value is not None}
        unknown = [key for key in params if key not in spec.params]
        if unknown:
            close = [p for p in spec.params if p.startswith(unknown[0])]
            close = close or difflib.get_close_matches(unknown[0], list(spec.params), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise MethodParameterError(
                f"method {name!r} has no parameter {unknown[0]!r}.{hint} "
                f"Valid parameters: {_format_params(spec.params)}"
            )
        try:
            selector = spec.factory(**params)
        except (TypeError, ValueError) as exc:
            raise MethodParameterError(
                f"method {name!r}: {exc} (valid parameters: {_format_params(spec.params)})"
            ) from exc
        if not isinstance(selector, Selector):
            raise SelectorError(
                f"method {name!r} (plugin {spec.plugin!r}): factory returned {type(selector).__name__}, "
                f"expected a tokenprune.Selector"
            )
        return Method(spec, {**spec.params, **params}, selector)

    def runtime_plugins(self) -> list[Any]:
        from tokenprune.plugins import PluginRecord

        with self._lock:
            used = any(spec.plugin == RUNTIME_PLUGIN for spec in self._specs.values())
        return [PluginRecord(RUNTIME_PLUGIN, "python", "tokenprune.register_method")] if used else []

    def specs(self) -> list[MethodSpec]:
        with self._lock:
            return [self._specs[name] for name in sorted(self._specs, key=natural_key)]


class MethodRegistrar:
    """The ``register`` callback a ``tokenprune_register_methods`` hook receives.

    ``register(name, factory, *, summary="", override=False)``: add one method. A method that cannot
    be registered (bad name, duplicate, unusable factory) is reported as a
    :class:`~tokenprune.errors.PluginWarning` naming the plugin, and skipped.
    """

    def __init__(self, registry: MethodRegistry, plugin: str) -> None:
        self._registry = registry
        self.plugin = plugin

    def __call__(
        self, name: str, factory: Callable[..., Selector], *, summary: str = "", override: bool = False
    ) -> None:
        try:
            self._registry.register(name, factory, summary=summary, plugin=self.plugin, override=override)
        except (TokenPruneError, TypeError, ValueError) as exc:
            warnings.warn(
                f"tokenprune plugin {self.plugin!r} registered a broken method {name!r}: {exc}",
                PluginWarning,
                stacklevel=2,
            )


_registry: MethodRegistry | None = None
_registry_lock = threading.RLock()


def _build_registry() -> MethodRegistry:
    from tokenprune.plugins import get_plugin_manager

    manager = get_plugin_manager()
    registry = MethodRegistry()
    # in the order the plugins were registered, built-ins first: pluggy orders hook implementations by their
    # tryfirst/trylast marks, and a plugin must not take a built-in's name by marking its hook trylast
    order = {name: index for index, (name, _) in enumerate(manager.list_name_plugin())}
    impls = sorted(
        manager.hook.tokenprune_register_methods.get_hookimpls(),
        key=lambda impl: order.get(manager.get_name(impl.plugin), len(order)),
    )
    for impl in impls:
        plugin = manager.get_name(impl.plugin) or repr(impl.plugin)
        kwargs = {"register": MethodRegistrar(registry, plugin)}
        if impl.hookwrapper or impl.wrapper:  # its body would never run: report it, as a broken hook
            warnings.warn(
                f"tokenprune plugin {plugin!r}: tokenprune_register_methods is a hook wrapper, which registers "
                f"nothing; implement it as a plain @tokenprune.hookimpl",
                PluginWarning,
                stacklevel=2,
            )
            continue
        try:
            impl.function(*(kwargs[arg] for arg in impl.argnames))
        except Exception as exc:  # third-party code: report and keep going
            warnings.warn(
                f"tokenprune plugin {plugin!r} failed in tokenprune_register_methods: {type(exc).__name__}: {exc}",
                PluginWarning,
                stacklevel=2,
            )
    return registry


def get_registry() -> MethodRegistry:
    """The process-wide registry, built from the plugins on first use."""
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = _build_registry()
        return _registry


def reset() -> None:
    global _registry
    with _registry_lock:
        _registry = None


def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names matching an fnmatch ``pattern``, in natural order.

    Example:
        >>> import tokenprune
        >>> tokenprune.list_methods("div*")
        ['divprune']
    """
    return get_registry().names(pattern)


def get_method_spec(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of a registered method; raises :class:`UnknownMethodError`."""
    return get_registry().get(name)


def create_method(name: str, **params: Any) -> Method:
    """Create a registered method's selector.

    Parameters left out, or passed as None, take the method's defaults.

    Raises:
        UnknownMethodError: no such method (a ``LookupError``); the message suggests close names.
        MethodParameterError: an unknown parameter or an invalid value (a ``TypeError`` and ``ValueError``).

    Example:
        >>> import torch, tokenprune
        >>> zspa = tokenprune.create_method("zspa", core_ratio=0.5)
        >>> visual, prompt = torch.randn(2, 576, 64), torch.randn(2, 9, 64)
        >>> zspa(visual, prompt=prompt, budget=0.1).shape
        torch.Size([2, 58])
    """
    return get_registry().create(name, **params)


def register_method(
    name: str, factory: Callable[..., Selector], *, summary: str = "", override: bool = False
) -> MethodSpec:
    """Register a method from Python (no plugin package needed); raises on a duplicate name.

    Example:
        >>> import tokenprune
        >>> from tokenprune.stages import Hierarchical, TopK, Relevance, Stride
        >>> def relevance_stride(core_ratio: float = 0.5):
        ...     return Hierarchical(core=TopK(Relevance()), fill=Stride(), core_ratio=core_ratio)
        >>> _ = tokenprune.register_method("relevance-stride-doc", relevance_stride, summary="relevant core, even fill")
        >>> "relevance-stride-doc" in tokenprune.list_methods()
        True
        >>> tokenprune.plugins.reset()  # rebuild the registry from the plugins alone
    """
    return get_registry().register(name, factory, summary=summary, override=override)

"""The registry and the plugin manager: naming, lookup errors, parameters, broken plugins."""

import subprocess
import sys
import warnings

import pytest

import tokenprune
import tokenprune.plugins
from tokenprune import (
    DuplicateMethodError,
    MethodParameterError,
    PluginWarning,
    SelectorError,
    UnknownMethodError,
)
from tokenprune.registry import MethodRegistry, natural_key
from tokenprune.stages import MaxMin, Stride


def test_import_is_light_and_lazy():
    code = (
        "import sys, tokenprune, tokenprune.plugins as p, tokenprune.registry as r; "
        "assert p._manager is None and r._registry is None, 'built at import'; "
        "heavy = [m for m in ('transformers', 'rich', 'scipy', 'hypothesis') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_list_methods_pattern_and_natural_sort():
    registry = MethodRegistry()
    for name in ("m10", "m2", "zspa", "M1".lower()):
        registry.register(name, Stride)
    assert registry.names() == ["m1", "m2", "m10", "zspa"]
    assert registry.names("m*") == ["m1", "m2", "m10"]
    assert registry.names("nothing*") == []
    assert sorted(["b10", "b9", "a"], key=natural_key) == ["a", "b9", "b10"]


def test_unknown_method_suggests_and_lists():
    with pytest.raises(UnknownMethodError, match=r"unknown method 'divprun'\. Did you mean 'divprune'\?") as info:
        tokenprune.create_method("divprun")
    assert "Available: attention, divprune" in str(info.value)
    assert isinstance(info.value, LookupError)


def test_unknown_parameter_names_the_valid_ones():
    with pytest.raises(MethodParameterError, match=r"no parameter 'core'\. Did you mean 'core_ratio'\?") as info:
        tokenprune.create_method("zspa", core=0.3)
    assert "core_ratio=0.2, pooling='mean'" in str(info.value)
    assert isinstance(info.value, TypeError)
    with pytest.raises(TypeError, match="Valid parameters: none"):
        tokenprune.create_method("divprune", core_ratio=0.3)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"pooling": "avg"}, "pooling must be one of 'mean', 'max', 'none'; got 'avg'"),
        ({"core_ratio": 1.5}, r"core_ratio must be a number in \[0, 1\]; got 1.5"),
        ({"core_ratio": "high"}, "core_ratio must be a number"),
    ],
)
def test_bad_parameter_values_are_value_errors(params, message):
    with pytest.raises(ValueError, match=message):
        tokenprune.create_method("zspa", **params)


def test_none_parameters_take_the_default():
    method = tokenprune.create_method("zspa", core_ratio=None, pooling="max")
    assert dict(method.params) == {"core_ratio": 0.2, "pooling": "max"}
    assert repr(method) == "Method('zspa', core_ratio=0.2, pooling='max')"
    assert method == tokenprune.create_method("zspa", pooling="max")


def test_duplicate_name_raises_unless_overriding():
    registry = MethodRegistry()
    registry.register("x", Stride, plugin="first")
    with pytest.raises(DuplicateMethodError, match="'x' is already registered by plugin 'first'; pass override=True"):
        registry.register("x", MaxMin)
    registry.register("x", MaxMin, override=True)
    assert registry.create("x").selector == MaxMin()


@pytest.mark.parametrize("name", ["Zspa", "a b", "zspa:x", "a,b", "", "-x", 3])
def test_method_names_must_be_cli_safe(name):
    with pytest.raises(ValueError, match="method name must be lowercase"):
        MethodRegistry().register(name, Stride)


def test_factories_must_declare_defaulted_parameters():
    registry = MethodRegistry()
    with pytest.raises(TypeError, match="parameter 'ratio' needs a default"):
        registry.register("a", lambda ratio: Stride())
    with pytest.raises(TypeError, match=r"factory takes \*kwargs"):
        registry.register("b", lambda **kwargs: Stride())
    with pytest.raises(TypeError, match="got a Stride instance; register a factory"):
        registry.register("c", Stride())
    with pytest.raises(TypeError, match="factory must be callable; got int"):
        registry.register("d", 3)


def test_a_factory_returning_a_non_selector_is_reported():
    registry = MethodRegistry()
    registry.register("bad", lambda: "not a selector", plugin="sloppy")
    with pytest.raises(SelectorError, match=r"'bad' \(plugin 'sloppy'\): factory returned str"):
        registry.create("bad")


class GoodPlugin:
    @tokenprune.hookimpl
    def tokenprune_register_methods(self, register):
        register("good-stride", Stride, summary="a plugin's ``method``\n  wraps here.\n\nDetails dropped.")


class BrokenMethodPlugin:
    @tokenprune.hookimpl
    def tokenprune_register_methods(self, register):
        register("zspa", Stride)  # duplicate of a built-in, no override
        register("needs-arg", lambda k: Stride())  # parameter without default
        register("fine-after-broken", MaxMin)


class RaisingPlugin:
    @tokenprune.hookimpl
    def tokenprune_register_methods(self, register):
        raise RuntimeError("plugin bug")


class OverridingPlugin:
    @tokenprune.hookimpl
    def tokenprune_register_methods(self, register):
        register("stride", MaxMin, summary="replaced", override=True)


def _with_plugins(*plugins):
    manager = tokenprune.plugins.get_plugin_manager()
    for plugin in plugins:
        manager.register(plugin(), name=plugin.__name__)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = tokenprune.list_methods()
    return names, [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]


def test_plugins_register_methods_and_broken_ones_are_reported_by_name(fresh_registry):
    names, messages = _with_plugins(GoodPlugin, BrokenMethodPlugin, RaisingPlugin)
    assert "good-stride" in names and "fine-after-broken" in names and "needs-arg" not in names
    assert tokenprune.get_method_spec("good-stride").plugin == "GoodPlugin"
    assert tokenprune.get_method_spec("good-stride").summary == "a plugin's method wraps here."
    assert tokenprune.get_method_spec("zspa").plugin == "tokenprune.methods.builtin"
    assert any(
        "'BrokenMethodPlugin' registered a broken method 'zspa'" in m and "already registered" in m for m in messages
    )
    assert any("'BrokenMethodPlugin' registered a broken method 'needs-arg'" in m for m in messages)
    assert any("'RaisingPlugin' failed in tokenprune_register_methods: RuntimeError: plugin bug" in m for m in messages)
    assert tokenprune.create_method("zspa").selector != Stride()  # the built-in survived


def test_a_plugin_may_override_a_builtin_explicitly(fresh_registry):
    _, messages = _with_plugins(OverridingPlugin)
    assert not messages
    spec = tokenprune.get_method_spec("stride")
    assert (spec.plugin, spec.summary) == ("OverridingPlugin", "replaced")


def test_builtins_are_ordinary_plugins(fresh_registry):
    manager = tokenprune.plugins.get_plugin_manager()
    assert manager.get_plugin("tokenprune.methods.builtin") is not None
    records = {r.name: r for r in tokenprune.plugins.list_plugins()}
    assert records["tokenprune.methods.builtin"].source == "builtin"
    assert {s.plugin for s in tokenprune.registry.get_registry().specs() if s.name == "zspa"} == {
        "tokenprune.methods.builtin"
    }


def test_runtime_registrations_show_as_a_plugin(fresh_registry):
    tokenprune.register_method("mine", Stride)
    assert any(r.name == "python" for r in tokenprune.plugins.list_plugins())
    with pytest.raises(DuplicateMethodError):
        tokenprune.register_method("mine", MaxMin)


def test_every_hookspec_is_documented():
    from tokenprune import hookspecs

    for name in dir(hookspecs):
        if name.startswith("tokenprune_"):
            doc = getattr(hookspecs, name).__doc__ or ""
            assert "Example" in doc and len(doc) > 200, name

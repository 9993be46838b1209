"""The example third-party plugin ``plugins/tokenprune-mmr``, and how plugins are loaded and reported.

Needs the plugin installed: ``pip install -e plugins/tokenprune-mmr``.
"""

from __future__ import annotations

import math
import sys
import textwrap

import numpy as np
import pytest
import torch

import tokenprune
import tokenprune.plugins
from tokenprune import MethodParameterError, PluginWarning
from tokenprune.stages import Hierarchical, Relevance, TopK

tokenprune_mmr = pytest.importorskip(
    "tokenprune_mmr", reason="install the example: pip install -e plugins/tokenprune-mmr"
)
from tokenprune_mmr import MMR  # noqa: E402

BUILTINS = {"attention", "divprune", "random", "relevance", "stride", "zspa"}


# --- an independent reference -------------------------------------------------------------------


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


def mmr_reference(
    visual: np.ndarray,
    prompt: np.ndarray,
    k: int,
    lam: float,
    *,
    real: np.ndarray | None = None,
    prompt_real: np.ndarray | None = None,
    start: tuple[int, ...] = (),
) -> list[int]:
    """One image, float64, token by token: MMR's ``k`` picks (ascending), continuing from ``start``."""
    real = np.ones(len(visual), dtype=bool) if real is None else real
    prompt_real = np.ones(len(prompt), dtype=bool) if prompt_real is None else prompt_real
    query = prompt[prompt_real].mean(axis=0)
    relevance = [_cos(v, query) for v in visual]
    chosen = list(start)
    for _ in range(k):
        best, best_score = -1, -math.inf
        for i in np.flatnonzero(real):
            if i in chosen:
                continue
            if chosen:
                score = lam * relevance[i] - (1 - lam) * max(_cos(visual[i], visual[j]) for j in chosen)
            else:
                score = relevance[i]
            if score > best_score:  # strict: an equal score keeps the lower index
                best, best_score = int(i), score
        chosen.append(best)
    return sorted(chosen)


def _batch(seed: int, batch: int, n: int, m: int, dim: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n, dim, generator=g, dtype=dtype), torch.randn(batch, m, dim, generator=g, dtype=dtype)


# --- discovery ----------------------------------------------------------------------------------


def test_the_entry_point_is_discovered(fresh_registry):
    assert "mmr" in tokenprune.list_methods()
    assert set(tokenprune.list_methods()) >= BUILTINS
    spec = tokenprune.get_method_spec("mmr")
    assert spec.plugin == "mmr"
    assert dict(spec.params) == {"lam": 0.5, "pooling": "mean"}
    assert spec.summary.startswith("Maximal Marginal Relevance")
    record = next(r for r in tokenprune.plugins.list_plugins() if r.name == "mmr")
    assert (record.source, record.target, record.error) == ("entry point", "tokenprune_mmr.plugin", None)
    assert record.distribution == f"tokenprune-mmr {tokenprune_mmr.__version__}"


def test_autoload_can_be_disabled(monkeypatch, fresh_registry):
    monkeypatch.setenv(tokenprune.plugins.AUTOLOAD_ENV, "1")
    tokenprune.plugins.reset()
    assert "mmr" not in tokenprune.list_methods()
    assert set(tokenprune.list_methods()) >= BUILTINS
    assert "mmr" not in [r.name for r in tokenprune.plugins.list_plugins()]
    with pytest.raises(tokenprune.UnknownMethodError, match="unknown method 'mmr'"):
        tokenprune.create_method("mmr")


# --- the method ---------------------------------------------------------------------------------


def test_end_to_end_batched():
    visual, prompt = _batch(0, 3, 50, 7, 16, torch.float32)
    keep = tokenprune.create_method("mmr")(visual, prompt=prompt, budget=0.2)
    assert keep.shape == (3, 10) and keep.dtype == torch.int64
    assert bool((keep[:, 1:] > keep[:, :-1]).all())
    for b in range(3):
        alone = tokenprune.create_method("mmr")(visual[b], prompt=prompt[b], budget=0.2)
        assert torch.equal(alone, keep[b])


def test_end_to_end_ragged():
    visual, prompt = _batch(1, 3, 40, 6, 8, torch.float32)
    visual_mask = torch.arange(40) < torch.tensor([[40], [25], [9]])
    prompt_mask = torch.arange(6) < torch.tensor([[6], [2], [4]])
    method = tokenprune.create_method("mmr", lam=0.3)
    keep = method(visual, prompt=prompt, budget=0.25, visual_mask=visual_mask, prompt_mask=prompt_mask)
    assert (keep >= 0).sum(dim=1).tolist() == [10, 6, 2]
    for b, k in enumerate([10, 6, 2]):
        row = keep[b, :k]
        assert bool(visual_mask[b, row].all()) and bool((keep[b, k:] == -1).all())
        n, m = int(visual_mask[b].sum()), int(prompt_mask[b].sum())
        alone = method(visual[b, :n], prompt=prompt[b, :m], budget=0.25)
        assert torch.equal(alone, row)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("seed", range(4))
def test_matches_the_numpy_reference(lam, seed):
    batch, n, m, dim, k = 3, 30, 5, 12, 9
    visual, prompt = _batch(seed, batch, n, m, dim)
    visual_mask = torch.arange(n) < torch.tensor([[n], [n - 7], [k + 1]])
    prompt_mask = torch.arange(m) < torch.tensor([[m], [1], [3]])
    keep = tokenprune.create_method("mmr", lam=lam)(
        visual, prompt=prompt, budget=k, visual_mask=visual_mask, prompt_mask=prompt_mask
    )
    for b in range(batch):
        expected = mmr_reference(
            visual[b].numpy(),
            prompt[b].numpy(),
            k,
            lam,
            real=visual_mask[b].numpy(),
            prompt_real=prompt_mask[b].numpy(),
        )
        assert keep[b].tolist() == expected


@pytest.mark.parametrize("lam", [0.0, 0.4, 1.0])
def test_as_a_fill_it_continues_from_the_core(lam):
    visual, prompt = _batch(7, 2, 24, 4, 6)
    core = TopK(Relevance())
    keep = Hierarchical(core=core, fill=MMR(lam=lam), core_ratio=0.25)(visual, prompt=prompt, budget=8)
    core_keep = core(visual, prompt=prompt, budget=2)
    for b in range(2):
        start = tuple(core_keep[b].tolist())
        assert keep[b].tolist() == mmr_reference(visual[b].numpy(), prompt[b].numpy(), 6, lam, start=start)


@pytest.mark.parametrize("pooling", ["mean", "max", "none"])
def test_lam_1_is_the_relevance_method(pooling):
    visual, prompt = _batch(3, 4, 64, 5, 16, torch.float32)
    visual[:, 10] = visual[:, 3]  # exact ties: both must keep the lower index first
    visual[:, 20] = 0.0  # a zero vector
    mmr = tokenprune.create_method("mmr", lam=1.0, pooling=pooling)
    relevance = tokenprune.create_method("relevance", pooling=pooling)
    for budget in (1, 0.1, 0.5, 64):
        assert torch.equal(mmr(visual, prompt=prompt, budget=budget), relevance(visual, prompt=prompt, budget=budget))


def test_diversity_skips_a_near_duplicate():
    visual = torch.tensor([[1.0, 0.0], [0.999, 0.01], [0.0, 1.0], [0.7, 0.7]])
    prompt = torch.tensor([[1.0, 0.0]])
    assert tokenprune.create_method("mmr", lam=1.0)(visual, prompt=prompt, budget=2).tolist() == [0, 1]
    assert tokenprune.create_method("mmr", lam=0.3)(visual, prompt=prompt, budget=2).tolist() == [0, 2]


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"lam": 1.5}, "lam must be a number in \\[0, 1\\]"),
        ({"lam": -0.1}, "lam must be a number in \\[0, 1\\]"),
        ({"lam": float("nan")}, "lam must be"),
        ({"lam": True}, "lam must be"),
        ({"lam": "0.5"}, "lam must be"),
        ({"pooling": "avg"}, "pooling must be one of 'mean', 'max', 'none'"),
        ({"alpha": 0.5}, "has no parameter 'alpha'"),
    ],
)
def test_bad_parameters_are_clear_errors(params, match):
    with pytest.raises(MethodParameterError, match=match):
        tokenprune.create_method("mmr", **params)


def test_needs_a_prompt():
    with pytest.raises(tokenprune.MissingInputError, match="needs prompt="):
        tokenprune.create_method("mmr")(torch.randn(10, 4), budget=3)


def test_conforms_to_the_selector_contract():
    testing = pytest.importorskip("tokenprune.testing")
    for params in ({}, {"lam": 0.0}, {"lam": 1.0, "pooling": "none"}):
        testing.assert_conforms(tokenprune.create_method("mmr", **params))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    visual, prompt = _batch(5, 4, 576, 12, 64, torch.float32)
    visual_mask = torch.arange(576) < torch.tensor([[576], [300], [64], [500]])
    method = tokenprune.create_method("mmr", lam=0.6)
    cpu = method(visual, prompt=prompt, budget=0.1, visual_mask=visual_mask)
    gpu = method(visual.cuda(), prompt=prompt.cuda(), budget=0.1, visual_mask=visual_mask.cuda())
    assert gpu.device.type == "cuda"
    assert torch.equal(cpu, gpu.cpu())


# --- broken plugins are reported by name; everything else keeps working ---------------------------

BROKEN_METHODS = '''
import tokenprune
from tokenprune.stages import Stride


def needs_value(width):  # no default: tokenprune cannot call it with the method's defaults
    return Stride()


def fine():
    """An evenly spaced control, registered next to the broken ones."""
    return Stride()


@tokenprune.hookimpl
def tokenprune_register_methods(register):
    register("needs-value", needs_value)
    register("zspa", fine)  # taken by a built-in, and no override=True
    register("Bad Name", fine)
    register("fine-example", fine, summary=fine.__doc__)
'''

RAISING_HOOK = """
import tokenprune


@tokenprune.hookimpl
def tokenprune_register_methods(register):
    raise RuntimeError("boom while registering")
"""

MISSPELT_HOOK = """
import tokenprune


@tokenprune.hookimpl
def tokenprune_register_method(register):  # no such hook
    pass
"""


@pytest.fixture
def plugin_module(tmp_path, monkeypatch, add_entry_point, fresh_registry):
    """Write a module on sys.path and expose it as a ``tokenprune`` entry point."""
    names = []

    def install(entry_name: str, source: str) -> str:
        module = f"tp_test_plugin_{entry_name.replace('-', '_')}"
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        add_entry_point(entry_name, module)
        names.append(module)
        tokenprune.plugins.reset()
        return module

    monkeypatch.syspath_prepend(str(tmp_path))
    yield install
    for module in names:
        sys.modules.pop(module, None)


def _builtins_still_work() -> None:
    assert BUILTINS | {"mmr"} <= set(tokenprune.list_methods())
    assert tokenprune.get_method_spec("zspa").plugin == "tokenprune.methods.builtin"
    keep = tokenprune.create_method("zspa")(torch.randn(2, 20, 8), prompt=torch.randn(2, 3, 8), budget=4)
    assert keep.shape == (2, 4)


def test_a_plugin_that_fails_to_import_is_reported_by_name(add_entry_point, fresh_registry):
    add_entry_point("broken", "no_such_module_xyz")
    tokenprune.plugins.reset()
    with pytest.warns(PluginWarning, match="plugin 'broken' \\(no_such_module_xyz\\) failed to load: ModuleNotFound"):
        _builtins_still_work()
    record = next(r for r in tokenprune.plugins.list_plugins() if r.name == "broken")
    assert record.error.startswith("ModuleNotFoundError") and record.source == "entry point"


def test_a_plugin_that_registers_broken_methods_is_reported_by_name(plugin_module):
    plugin_module("brokenmethods", BROKEN_METHODS)
    with pytest.warns(PluginWarning) as caught:
        _builtins_still_work()
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]
    for name, why in [
        ("needs-value", "parameter 'width' needs a default value"),
        ("zspa", "already registered by plugin 'tokenprune.methods.builtin'"),
        ("Bad Name", "method name must be lowercase"),
    ]:
        assert any(f"plugin 'brokenmethods' registered a broken method {name!r}" in m and why in m for m in messages), (
            name,
            messages,
        )
    assert tokenprune.get_method_spec("fine-example").plugin == "brokenmethods"
    assert "needs-value" not in tokenprune.list_methods()


@pytest.mark.parametrize(
    ("source", "match"),
    [
        (RAISING_HOOK, "plugin 'raising' failed in tokenprune_register_methods: RuntimeError: boom"),
        (MISSPELT_HOOK, "plugin 'raising' .* failed to load: PluginValidationError"),
    ],
    ids=["raises", "misspelt-hook"],
)
def test_a_plugin_whose_hook_is_broken_is_reported_by_name(plugin_module, source, match):
    plugin_module("raising", source)
    with pytest.warns(PluginWarning, match=match):
        _builtins_still_work()


TRYLAST_DUPLICATE = """
import tokenprune
from tokenprune.stages import Stride


@tokenprune.hookimpl(trylast=True)
def tokenprune_register_methods(register):
    register("zspa", Stride, summary="a plugin taking a built-in's name by running its hook last")
"""

WRAPPER_HOOK = """
import tokenprune
from tokenprune.stages import Stride


@tokenprune.hookimpl(wrapper=True)
def tokenprune_register_methods(register):
    register("wrapped", Stride, summary="never registered: a wrapper's body does not run as a hook")
    return (yield)
"""

RAISING_ADAPTER = """
import tokenprune


@tokenprune.hookimpl
def tokenprune_model_adapter(model):
    raise RuntimeError("adapter hook boom")
"""


def test_a_plugin_cannot_take_a_builtin_name_by_marking_its_hook_trylast(plugin_module):
    plugin_module("zlast", TRYLAST_DUPLICATE)
    with pytest.warns(PluginWarning, match=r"plugin 'zlast' registered a broken method 'zspa': .*already registered"):
        _builtins_still_work()  # zspa is still the built-in


def test_a_hook_wrapper_is_reported_not_silently_ignored(plugin_module):
    plugin_module("hwrap", WRAPPER_HOOK)
    with pytest.warns(PluginWarning, match=r"plugin 'hwrap': tokenprune_register_methods is a hook wrapper"):
        _builtins_still_work()
    assert "wrapped" not in tokenprune.list_methods()


def test_two_entry_points_with_one_name_are_reported(plugin_module, add_entry_point):
    plugin_module("twin", TRYLAST_DUPLICATE.replace("zspa", "twin-method").replace("(trylast=True)", ""))
    add_entry_point("twin", "some_other_module")
    tokenprune.plugins.reset()
    with pytest.warns(
        PluginWarning, match=r"plugin 'twin' \(some_other_module\): another entry point is already named"
    ):
        records = tokenprune.plugins.list_plugins()
    twins = [r for r in records if r.name == "twin"]
    assert [r.error is None for r in twins] == [True, False]


@pytest.fixture(scope="module")
def llava():
    """Built before the entry points are faked (transformers reads them as it imports)."""
    from tokenprune.testing.models import tiny_llava

    return tiny_llava(seed=0)


def test_an_adapter_hook_that_raises_is_reported_and_the_builtins_still_answer(llava, plugin_module):
    from tokenprune.integrations import get_adapter
    from tokenprune.integrations.llava import LlavaAdapter

    plugin_module("badadapter", RAISING_ADAPTER)
    with pytest.warns(PluginWarning, match=r"plugin 'badadapter' failed in tokenprune_model_adapter .*: RuntimeError"):
        assert isinstance(get_adapter(llava), LlavaAdapter)


@pytest.mark.parametrize(
    ("name", "factory", "message"),
    [
        ("abc\n", lambda: None, "method name must be lowercase"),
        ("posonly", lambda a=1, /: None, "factory parameter 'a' is positional-only"),
    ],
)
def test_names_are_matched_whole_and_factories_must_take_keywords(fresh_registry, name, factory, message):
    with pytest.raises((ValueError, TypeError), match=message):
        tokenprune.register_method(name, factory)

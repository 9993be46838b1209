import importlib.metadata
import importlib.util
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

import tokenprune.plugins

if not torch.cuda.is_available():
    # Should Triton be installed, it must be imported in interpreter mode for tests/test_triton_fill.py
    # to run its kernel on CPU tensors (the mode is fixed when triton.language is first imported).
    os.environ.setdefault("TRITON_INTERPRET", "1")

settings.register_profile("dev", deadline=None, max_examples=40)
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=40,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session")
def ref():
    """``tests/reference_impl.py``: the float64 numpy references, written from the specifications."""
    spec = importlib.util.spec_from_file_location(
        "tokenprune_reference_impl", Path(__file__).with_name("reference_impl.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fresh_registry():
    """A registry rebuilt from the plugins before the test and again after it."""
    tokenprune.plugins.reset()
    yield
    tokenprune.plugins.reset()


@pytest.fixture
def add_entry_point(monkeypatch):
    """``add(name, value)``: make ``importlib.metadata.entry_points`` also yield a fake tokenprune plugin."""
    group = tokenprune.plugins.ENTRY_POINT_GROUP
    fakes = []
    real = importlib.metadata.entry_points

    def entry_points(**params):
        found = list(real(**params))
        return [*found, *fakes] if params.get("group") == group else found

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)

    def add(name: str, value: str) -> None:
        fakes.append(importlib.metadata.EntryPoint(name=name, value=value, group=group))

    return add


@pytest.fixture
def lm_positions():
    """``with lm_positions(model) as seen:`` collects the ``position_ids`` the model's language model gets,
    one tensor per call (the prefill, then each decoding step)."""
    import contextlib

    @contextlib.contextmanager
    def watch(model):
        seen = []
        hook = model.model.language_model.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append(kwargs["position_ids"].clone()), with_kwargs=True
        )
        try:
            yield seen
        finally:
            hook.remove()

    return watch

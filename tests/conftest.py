import os

import pytest
from hypothesis import HealthCheck, settings

import tokenprune.plugins

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


@pytest.fixture
def fresh_registry():
    """A registry rebuilt from the plugins before the test and again after it."""
    tokenprune.plugins.reset()
    yield
    tokenprune.plugins.reset()

"""The toy world's tests use it as the CLI and the demo do: registered with the core's registries."""

import pytest

from cemaps.toyworld import register


@pytest.fixture(scope="session", autouse=True)
def toy_world_registered() -> None:
    register()

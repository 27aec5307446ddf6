"""pytest-greeting: a tiny pytest plugin (the example project of pytest-cowenv)."""

import pytest


def pytest_addoption(parser):
    parser.addoption("--greeting-name", default="world", help="who `greeting` greets")


@pytest.fixture
def greeting(request):
    """A greeting for the name given by --greeting-name."""
    return f"Hello, {request.config.getoption('greeting_name')}!"

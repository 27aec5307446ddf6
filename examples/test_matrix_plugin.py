"""Example 5: a pytest plugin tested against every minor release of pytest since its floor.

``versions("pytest>=8.2")`` lists pytest's releases on the package index when pytest
collects this file, one per minor (``pytest==8.2.*``, ``pytest==8.3.*``, …); ``matrix=`` makes
one test per minor, each in an environment of its own (the plugin's wheel and that pytest,
built once and cached). The floor is the plugin's own ``pytest>=8.2``. Select one with
``-k "pytest==8.3"``.

Coverage of the plugin's own code, which runs only in the clones (its suite, by runpytest):
``python -m pytest examples/test_matrix_plugin.py --cov=pytest_passrate --cov-branch``
reports ``examples/matrix_plugin/src/pytest_passrate/__init__.py``, combined over every minor.
"""

from pathlib import Path

import pytest

from pytest_cowenv import versions

PROJECT = Path(__file__).parent / "matrix_plugin"


@pytest.mark.cowenv(project="matrix_plugin", matrix={"pytest": versions("pytest>=8.2")})
def test_every_minor(cowenv, request):
    result = cowenv.runpytest("-p", "no:cacheprovider", cwd=PROJECT)
    result.assert_outcomes(passed=3)
    minor = request.node.callspec.id.removeprefix("pytest==").removesuffix(".*")
    result.stdout.fnmatch_lines([f"platform * pytest-{minor}.*", "plugins: passrate-0.1.0"])

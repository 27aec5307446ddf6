"""Tried as a new user would: a real pytest plugin from the index (pytest-mock's unmodified
sdist) runs its own suite once per minor of pytest since 8.2, each in a clone, under
``pytest --cov -n 2``; the outer report gives its sources at least the coverage that the
suite's own tox command (``coverage run --source={envsitepackagesdir}/pytest_mock -m pytest
tests``) reports in a plain venv of the newest pytest."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from _helpers import fast_cache, sdist_sources

pytest.importorskip("pytest_cov", reason="pip install -e '.[test]' installs pytest-cov")

PLUGIN = "pytest-mock==3.17.0"
# Its tox.ini: deps coverage, mock, pytest-asyncio; the plugin installed from its sources.
SPEC = '"pytest-asyncio", "mock", "coverage", project=SOURCES'

IN_CLONES = """
import pytest

from pytest_cowenv import versions

SOURCES = {sources!r}

@pytest.mark.cowenv({spec}, matrix={{"pytest": versions("pytest>=8.2")}})
def test_own_suite(cowenv):
    result = cowenv.runpytest("-p", "no:cacheprovider", "tests", cwd=SOURCES, timeout=1200)
    assert result.ret == 0, "\\n".join(result.outlines[-30:])
"""
# The suite's own command, in a venv with the same packages (no cowenv measurement: the
# outer run does not measure, and --no-cowenv-cov says so).
DIRECT = """
import pytest

SOURCES = {sources!r}

@pytest.mark.cowenv({spec})
def test_own_command(cowenv):
    source = str(cowenv.site_packages / "pytest_mock")
    cowenv.run("coverage", "run", "--branch", "--source", source, "-m", "pytest",
               "-p", "no:cacheprovider", "tests", cwd=SOURCES, timeout=1200)
    cowenv.run("coverage", "json", "-o", {report!r}, cwd=SOURCES)
"""


@pytest.fixture(scope="module")
def plugin_sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sdist_sources(PLUGIN, tmp_path_factory.mktemp("plugin-sdist"))


@pytest.fixture
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from fast_cache(tmp_path_factory, "cowenv-newuser-cov")


def total(report: Path) -> float:
    return float(json.loads(report.read_text())["totals"]["percent_covered"])


@pytest.mark.network
@pytest.mark.slow
def test_plugin_coverage_from_clones_is_at_least_its_own(
    pytester: pytest.Pytester,
    plugin_sources: Path,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("COVERAGE_"):  # this suite's own measurement (CI) stays outside
            monkeypatch.delenv(name)
    # pytest prints whole assertion diffs where CI or BUILD_NUMBER is set; pytest-mock's
    # introspection tests match the output of a developer's machine, as its tox.ini runs them.
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("BUILD_NUMBER", raising=False)
    sources = str(plugin_sources)
    pytester.makepyfile(
        test_in_clones=IN_CLONES.format(sources=sources, spec=SPEC),
        test_direct=DIRECT.format(
            sources=sources, spec=SPEC, report=str(pytester.path / "direct.json")
        ),
    )
    common = ["-p", "no:cacheprovider", f"--cowenv-dir={cache}"]
    direct = pytester.runpytest_subprocess(
        *common, "--no-cowenv-cov", "test_direct.py", timeout=1800
    )
    direct.assert_outcomes(passed=1)
    clones = pytester.runpytest_subprocess(
        *common,
        "--cov=pytest_mock",
        "--cov-branch",
        "--cov-report=json:clones.json",
        "-n",
        "2",
        "test_in_clones.py",
        timeout=1800,
    )
    minors = clones.parseoutcomes()["passed"]
    assert minors >= 6, clones.outlines  # 8.2 … 9.2 at least
    clones.assert_outcomes(passed=minors)
    report = json.loads((pytester.path / "clones.json").read_text())
    reported = sorted(report["files"])
    assert reported and all(f.startswith(f"{sources}/src/pytest_mock/") for f in reported)
    measured, own = total(pytester.path / "clones.json"), total(pytester.path / "direct.json")
    print(
        f"pytest-mock coverage: {measured:.1f} % from clones of {minors} minors of pytest, "
        f"{own:.1f} % by its own command"
    )
    assert measured >= own

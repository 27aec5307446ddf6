"""Tried as a new user would: a real, unmodified project from the index (attrs, whose sdist
declares its test environment as a PEP 735 group and ships a uv.lock) runs its own test suite
in a clone built from that group, and from its lock with uv."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from _helpers import fast_cache, sdist_sources
from conftest import skip_without_uv

ATTRS = "attrs==26.1.0"
# Fails in a plain venv of this interpreter too (pip install attrs + its `tests` group):
# an attrs test about annotations on CPython 3.11.7, not something of ours.
KNOWN_FAILURES = ("tests/test_converters.py::TestPipe::test_wrapped_annotation",)

INNER = """
import pytest

SOURCES = {sources!r}
DESELECT = [arg for test in {known!r} for arg in ("--deselect", test)]

@pytest.mark.cowenv({spec})
def test_attrs_own_suite(cowenv):
    result = cowenv.runpytest("-q", "-p", "no:cacheprovider", "-n", "2", *DESELECT, "tests",
                              cwd=SOURCES, timeout=1200)
    print("inner:", result.outlines[-1])
    assert result.ret == 0, "\\n".join(result.outlines[-30:])
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] > 1000 and "failed" not in outcomes, outcomes
"""


@pytest.fixture(scope="module")
def attrs_sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sdist_sources(ATTRS, tmp_path_factory.mktemp("attrs-sdist"))


@pytest.fixture
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from fast_cache(tmp_path_factory, "cowenv-newuser")


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.parametrize(
    "spec",
    [
        'project=SOURCES, groups=("tests",)',
        'project=SOURCES, lock=SOURCES + "/uv.lock", groups=("tests",)',
    ],
    ids=["group", "uv.lock"],
)
def test_a_real_project_runs_its_suite_from_its_own_spec(
    pytester: pytest.Pytester, attrs_sources: Path, cache: Path, spec: str
) -> None:
    if "uv.lock" in spec:
        skip_without_uv()
    pytester.makepyfile(INNER.format(sources=str(attrs_sources), known=KNOWN_FAILURES, spec=spec))
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-s", f"--cowenv-dir={cache}", timeout=1800
    )
    result.assert_outcomes(passed=1)
    shown = "uv.lock [group tests]" if "uv.lock" in spec else "pyproject.toml [group tests]"
    assert any(shown in line for line in result.outlines), result.outlines


RERUNFAILURES = "pytest-rerunfailures==16.7"
# Fails in a plain venv with pytest 8.2.1 too (pip install pytest==8.2.1 and the sdist).
KNOWN_ON_821 = "tests/test_pytest_rerunfailures.py::test_only_rerun_ini_override"

MATRIX_INNER = """
import pytest
from pytest_cowenv import versions

SOURCES = {sources!r}

# The plugin's own floor, from its pyproject.toml: pytest!=8.2.2,>=8.2.
@pytest.mark.cowenv(project=SOURCES, matrix={{"pytest": versions("pytest>=8.2,!=8.2.2")}})
def test_rerunfailures_suite(cowenv):
    pytest_version = cowenv.template.resolved["pytest"]
    deselect = ["--deselect", {known!r}] if pytest_version == "8.2.1" else []
    result = cowenv.runpytest("-q", "-p", "no:cacheprovider", *deselect, "tests", cwd=SOURCES,
                              timeout=1200)
    print("inner:", pytest_version, result.outlines[-1])
    assert result.ret == 0, "\\n".join(result.outlines[-30:])
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] >= 200 and "failed" not in outcomes, outcomes
"""


@pytest.mark.network
@pytest.mark.slow
def test_a_real_plugin_runs_its_suite_once_per_pytest_minor(
    pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory, cache: Path
) -> None:
    sources = sdist_sources(RERUNFAILURES, tmp_path_factory.mktemp("rerunfailures-sdist"))
    pytester.makepyfile(MATRIX_INNER.format(sources=str(sources), known=KNOWN_ON_821))
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-s", "-p", "no:xdist", f"--cowenv-dir={cache}", timeout=3600
    )
    minors = re.findall(r"inner: (\S+) (.*)", result.stdout.str())
    versions = [version for version, _ in minors]
    # 8.2 is pinned to 8.2.1: the requirement cuts 8.2.2 out of the minor.
    assert versions[:4] == ["8.2.1", "8.3.5", "8.4.2", "9.0.3"], minors
    result.assert_outcomes(passed=len(minors))

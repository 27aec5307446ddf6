"""Tried as a new user would: real, unmodified projects from the index run their own test
suites in clones built from their own specs: attrs (its sdist declares its test environment as
a PEP 735 group and ships a uv.lock) from that group, and from its lock with uv; svcs from its
uv.lock and the dependency groups of its tox.ini's envs, with the counts tox gets; pytest-asyncio
from its lower-bounds env (resolution="lowest-direct")."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from _helpers import fast_cache, other_pythons, sdist_sources
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


SVCS = "svcs==26.2.0"

SVCS_INNER = """
import pytest

SOURCES = {sources!r}

# The envs of svcs's tox.ini: runner = uv-venv-lock-runner, dependency_groups = cov (tests:)
# and optional (optional:), the project installed as a wheel.
@pytest.mark.parametrize(
    "groups", [pytest.param(g, id="-".join(g)) for g in [("cov",), ("cov", "optional")]]
)
def test_svcs_own_suite(request, groups):
    spec = dict(project=SOURCES, lock=SOURCES + "/uv.lock", groups=groups)
    request.applymarker(pytest.mark.cowenv(**spec))
    cowenv = request.getfixturevalue("cowenv")
    result = cowenv.runpytest("-p", "no:cacheprovider", cwd=SOURCES, timeout=1200)
    print("inner:", "-".join(groups), result.outlines[-1])
    assert result.ret == 0, "\\n".join(result.outlines[-30:])
"""


@pytest.mark.network
@pytest.mark.slow
def test_a_real_project_runs_its_suite_from_its_uv_lock_and_groups_as_tox_does(
    pytester: pytest.Pytester,
    tmp_path_factory: pytest.TempPathFactory,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """svcs's envs ``3.11-tests`` and ``3.11-tests-optional`` (its tox.ini: ``coverage run -m
    pytest`` in ``uv sync --locked --no-default-groups --group cov [--group optional]``) give
    the counts below under tox, measured with ``tox -e 3.11-tests,3.11-tests-optional`` in the
    unpacked sdist (tox 4.67.15, tox-uv 1.37.1, uv 0.13.9, CPython 3.11.7); the clones built
    from the same lock and groups must give the same ones."""
    skip_without_uv()
    # pytest changes its output where CI or BUILD_NUMBER is set; tox's counts were taken
    # without them, as a developer runs tox.
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("BUILD_NUMBER", raising=False)
    sources = sdist_sources(SVCS, tmp_path_factory.mktemp("svcs-sdist"))
    pytester.makepyfile(SVCS_INNER.format(sources=str(sources)))
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-s", f"--cowenv-dir={cache}", timeout=1800
    )
    result.assert_outcomes(passed=2)
    counts = dict(re.findall(r"inner: (\S+) =+ (.*) in [\d.]+s =+", result.stdout.str()))
    assert counts == {
        "cov": "158 passed, 1 skipped",
        "cov-optional": "207 passed, 1 skipped",
    }, result.outlines
    assert any("uv.lock [group cov, optional]" in line for line in result.outlines)


ASYNCIO = "pytest-asyncio==1.5.0"

ASYNCIO_INNER = """
import json
import subprocess

import pytest

SOURCES = {sources!r}
CODE = ("import json, importlib.metadata as m; "
        "print(json.dumps({{d.metadata['Name'].lower(): d.version for d in m.distributions()}}))")

# Its tox.ini's `py310-lower-bounds`: uv-venv-runner, uv_resolution = lowest-direct,
# dependency_groups = test, the project installed as a wheel.
@pytest.mark.cowenv(project=SOURCES, groups=("test",), resolution="lowest-direct",
                    python={python!r})
def test_lower_bounds(cowenv):
    versions = json.loads(cowenv.run("python", "-c", CODE).stdout)
    print("inner:", json.dumps({{k: versions[k] for k in ("pytest", "coverage", "hypothesis")}}))
    # Its tox.ini's command (Makefile's `test`), in the clone's own environment.
    env = {{k: v for k, v in cowenv.env.items() if not k.startswith("PYTEST_")}}
    argv = [str(cowenv.bin_dir / "coverage"), "run", "-m", "pytest", "-p", "no:cacheprovider"]
    done = subprocess.run(argv, cwd=SOURCES, env=env, capture_output=True, text=True,
                          timeout=1200)
    lines = done.stdout.splitlines()
    print("inner:", lines[-1] if lines else done.stderr[-2000:])
    assert done.returncode == 0, "\\n".join(lines[-30:])
"""


@pytest.mark.network
@pytest.mark.slow
def test_a_real_plugins_lower_bounds_env_gets_its_lowest_direct_requirements(
    pytester: pytest.Pytester,
    tmp_path_factory: pytest.TempPathFactory,
    cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pytest-asyncio 1.5.0's `py310-lower-bounds` env under tox (4.67.15, tox-uv 1.37.1, uv
    0.13.9, CPython 3.10.13) installs pytest 8.4.0 for its `pytest>=8.4`, coverage 6.2 and
    hypothesis 5.7.1 for its `test` group, and passes: 282 passed, 20 skipped. A clone of
    the same spec must get the same lowest versions and counts: the project's own
    requirements count as direct (uv alone gave pytest 9.2, and hypothesis 5.7.1's plugin
    then failed to load)."""
    skip_without_uv()
    # As tox runs it: tox passes neither on. With the first, 6 of its tests that run pytest
    # in process warn that `tests` was imported before it could be rewritten.
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    monkeypatch.delenv("CI", raising=False)
    python = next((exe for exe, version in other_pythons() if version.startswith("3.10.")), None)
    if python is None:
        pytest.skip("the env is of Python 3.10, which this machine does not have")
    sources = sdist_sources(ASYNCIO, tmp_path_factory.mktemp("asyncio-sdist"))
    pytester.makepyfile(ASYNCIO_INNER.format(sources=str(sources), python=python))
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-s", f"--cowenv-dir={cache}", timeout=1800
    )
    result.assert_outcomes(passed=1)
    assert '{"pytest": "8.4.0", "coverage": "6.2", "hypothesis": "5.7.1"}' in (
        result.stdout.str()
    ), result.outlines
    assert re.search(r"inner: =+ 282 passed, 20 skipped in ", result.stdout.str()), result.outlines

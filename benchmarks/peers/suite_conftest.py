"""conftest.py of the generated benchmark suite (copied there by ``benchmarks/suite.py``).

Every test asks for ``benv``: an environment with W1 installed, made the way the row under
test makes it (``BENCH_ROW``). Each way uses its own tool's public interface; none is tuned
beyond its documented options. Pytest's own setup/teardown durations are written to
``BENCH_OUT`` (one JSON line per report) by the controlling process, so the per-test
environment overhead is measured the same way for every row.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

W1 = ("requests", "rich", "pytest", "httpx", "pydantic")
ROW = os.environ.get("BENCH_ROW", "shared")
WHEELHOUSE = os.environ.get("BENCH_WHEELHOUSE", "")
ENVS = Path(os.environ.get("BENCH_ENVS", "."))
_count = itertools.count()


def _check(cmd: list[str], env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def _env_of(prefix: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["VIRTUAL_ENV"] = str(prefix)
    env["PATH"] = f"{prefix / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


class Env:
    """What a test does with its environment, whatever made it."""

    def __init__(self, prefix: Path, installer: list[str]) -> None:
        self.prefix = prefix
        self.python = prefix / "bin" / "python"
        self._installer = installer

    def install(self, wheel: Path) -> None:
        _check([*self._installer, str(wheel)])

    def run(self, *cmd: str) -> str:
        exe = shutil.which(cmd[0], path=str(self.prefix / "bin")) or cmd[0]
        return _check([exe, *cmd[1:]], env=_env_of(self.prefix))


def _uv_install(python: Path) -> list[str]:
    # Warm cache on the same filesystem as the env: --link-mode=clone reflinks from it.
    return [
        "uv",
        "pip",
        "install",
        "--quiet",
        "--python",
        str(python),
        "--link-mode=clone",
        "--offline",
        "--no-index",
        "--find-links",
        WHEELHOUSE,
    ]


def _pip_install(python: Path) -> list[str]:
    return [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]


def _new_prefix() -> Path:
    return ENVS / f"{ROW}-{os.getpid()}-{next(_count)}"


def _made_here(request: pytest.FixtureRequest) -> Iterator[Env]:
    prefix = _new_prefix()
    if ROW == "uv":
        _check(["uv", "venv", "--quiet", str(prefix)])
        installer = _uv_install(prefix / "bin" / "python")
    elif ROW == "virtualenv":
        _check([sys.executable, "-m", "virtualenv", "--quiet", str(prefix)])
        installer = _pip_install(prefix / "bin" / "python")
    else:  # venv
        _check([sys.executable, "-m", "venv", str(prefix)])
        installer = _pip_install(prefix / "bin" / "python")
    _check([*installer, *W1])
    yield Env(prefix, installer)
    shutil.rmtree(prefix)


class _CowEnv(Env):
    def __init__(self, env: Any) -> None:
        super().__init__(Path(env.path), [])
        self._env = env

    def install(self, wheel: Path) -> None:
        self._env.install(wheel)

    def run(self, *cmd: str) -> str:
        return str(self._env.run(*cmd).stdout)


class _VirtualenvFixture(Env):
    """pytest-virtualenv's ``virtualenv`` fixture, used through its own methods."""

    def __init__(self, venv: Any) -> None:
        super().__init__(Path(str(venv.virtualenv)), [])
        self._venv = venv
        venv.install_package(" ".join(W1))

    def install(self, wheel: Path) -> None:
        self._venv.install_package(str(wheel))

    def run(self, *cmd: str) -> str:
        return str(self._venv.run(list(cmd), capture=True))


class _VenvFixture(Env):
    """pytest-venv's ``venv`` fixture, used through its own methods."""

    def __init__(self, venv: Any) -> None:
        super().__init__(Path(venv.path), [])
        self._venv = venv
        venv.install(W1[0], extra_args=["--quiet", *W1[1:]])

    def install(self, wheel: Path) -> None:
        self._venv.install(str(wheel), extra_args=["--quiet"])


@pytest.fixture(scope="session")
def _shared_env() -> Iterator[Env]:
    prefix = _new_prefix()
    _check(["uv", "venv", "--quiet", str(prefix)])
    installer = _uv_install(prefix / "bin" / "python")
    _check([*installer, *W1])
    yield Env(prefix, installer)
    shutil.rmtree(prefix)


@pytest.fixture
def benv(request: pytest.FixtureRequest) -> Iterator[Env]:
    """An environment with W1, made the way ``BENCH_ROW`` says."""
    if ROW == "cowenv":
        yield _CowEnv(request.getfixturevalue("cowenv"))
    elif ROW == "shared":
        yield request.getfixturevalue("_shared_env")
    elif ROW == "pytest-virtualenv":
        yield _VirtualenvFixture(request.getfixturevalue("virtualenv"))
    elif ROW == "pytest-venv":
        yield _VenvFixture(request.getfixturevalue("venv"))
    else:
        yield from _made_here(request)


def timed(request: pytest.FixtureRequest, what: str, func: Any, *args: Any) -> Any:
    """Call ``func(*args)`` and record its duration (ms) as a user property of the test."""
    start = time.perf_counter()
    result = func(*args)
    request.node.user_properties.append((what, (time.perf_counter() - start) * 1000))
    return result


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench-count", type=int, default=0, help="run only the first N tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    count = config.getoption("bench_count")
    if count and len(items) > count:
        config.hook.pytest_deselected(items=items[count:])
        del items[count:]


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    out = os.environ.get("BENCH_OUT")
    if not out or os.environ.get("PYTEST_XDIST_WORKER"):
        return  # under xdist the controller receives every worker's reports: it alone writes
    record = {
        "nodeid": report.nodeid,
        "when": report.when,
        "outcome": report.outcome,
        "duration": report.duration,
        "props": dict(report.user_properties) if report.when == "call" else {},
    }
    if report.failed:
        record["error"] = str(report.longrepr)[-2000:]
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")

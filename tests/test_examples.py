"""The examples of ``examples/`` run as the README says (``python -m pytest examples/``), so
that they cannot rot. Building them needs the package index (pytest, attrs, hatchling)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from _helpers import fast_dir, remove_cache

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = [
    "examples/test_cli_versions.py::test_report_with_each_attrs[21.2.0-attr]",
    "examples/test_cli_versions.py::test_report_with_each_attrs[23.2.0-attrs]",
    "examples/test_locked_app.py::test_locked_app_suite",
    "examples/test_monorepo.py::test_pkg_a_alone",
    "examples/test_monorepo.py::test_pkg_b_with_its_sibling",
    "examples/test_plugin_alone.py::test_plugin_alone",
]


@pytest.fixture
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = fast_dir(tmp_path_factory, "cowenv-examples")
    yield root / "cache"
    remove_cache(root / "cache")
    remove_cache(root)


def run_examples(*args: str) -> pytest.RunResult:
    """``python -m pytest examples/ …`` from the repository root, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    cmd = [sys.executable, "-m", "pytest", "examples/", "-p", "no:cacheprovider", *args]
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    return pytest.RunResult(
        proc.returncode,
        proc.stdout.splitlines(),
        proc.stderr.splitlines(),
        time.perf_counter() - start,
    )


def test_examples_collect_only_the_examples(cache: Path) -> None:
    result = run_examples("--collect-only", "-q", f"--cowenv-dir={cache}")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    assert [line for line in result.outlines if "::" in line] == EXAMPLES


@pytest.mark.network
@pytest.mark.slow
def test_examples_pass(cache: Path) -> None:
    result = run_examples(f"--cowenv-dir={cache}", "-p", "no:xdist")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=len(EXAMPLES))
    result.stdout.fnmatch_lines(["*= cowenv =*", "templates built: 6: *", "clones: 6 *"])

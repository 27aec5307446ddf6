"""The examples of ``examples/`` run as the README says (``python -m pytest examples/``), so
that they cannot rot. Building them needs the package index (pytest, attrs, hatchling)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from _helpers import fast_cache

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = [
    "examples/test_cli_versions.py::test_report_with_each_attrs[21.2.0-attr]",
    "examples/test_cli_versions.py::test_report_with_each_attrs[23.2.0-attrs]",
    "examples/test_locked_app.py::test_locked_app_suite",
    "examples/test_matrix_plugin.py::test_every_minor[*]",  # one per minor of pytest since 8.2
    "examples/test_monorepo.py::test_pkg_a_alone",
    "examples/test_monorepo.py::test_pkg_b_with_its_sibling",
    "examples/test_plugin_alone.py::test_plugin_alone",
]


@pytest.fixture
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from fast_cache(tmp_path_factory, "cowenv-examples")


def run_examples(
    *args: str, path: str = "examples/", env: Optional[dict[str, str]] = None
) -> pytest.RunResult:
    """``python -m pytest examples/ …`` from the repository root, as a user runs it (no
    coverage variable of this suite's own measurement: the examples measure what they say),
    with ``env`` added."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COVERAGE_"))},
        **(env or {}),
    }
    cmd = [sys.executable, "-m", "pytest", path, "-p", "no:cacheprovider", *args]
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


def collected(result: pytest.RunResult) -> list[str]:
    """The test ids of a ``--collect-only -q`` run, the matrix example's folded into one."""
    ids = [line for line in result.outlines if "::" in line]
    folded = [re.sub(r"test_every_minor\[.*\]$", "test_every_minor[*]", i) for i in ids]
    return sorted(set(folded), key=folded.index)


def test_examples_collect_only_the_examples(cache: Path) -> None:
    result = run_examples("--collect-only", "-q", f"--cowenv-dir={cache}")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    assert collected(result) == EXAMPLES


@pytest.mark.network
@pytest.mark.slow
def test_examples_pass(cache: Path) -> None:
    listed = run_examples("--collect-only", "-q", f"--cowenv-dir={cache}")
    minors = [line for line in listed.outlines if "::test_every_minor[pytest==" in line]
    assert len(minors) >= 6, listed.outlines  # 8.2 … 9.2 at least
    result = run_examples(f"--cowenv-dir={cache}", "-p", "no:xdist")
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    tests = len(EXAMPLES) - 1 + len(minors)
    result.assert_outcomes(passed=tests)
    result.stdout.fnmatch_lines(
        ["*= cowenv =*", f"templates built: {tests}: *", f"clones: {tests} *"]
    )


@pytest.mark.network
@pytest.mark.slow
def test_matrix_example_reports_its_plugin_coverage(cache: Path, tmp_path: Path) -> None:
    """The plugin's code runs only in the clones (its own suite, by runpytest), yet the outer
    run reports it at its sources, fully covered: one minor of pytest is enough to show it."""
    report = tmp_path / "cov.json"
    result = run_examples(
        f"--cowenv-dir={cache}",
        "-p",
        "no:xdist",
        "-k",
        "pytest==8.2",
        "--cov=pytest_passrate",
        "--cov-branch",
        f"--cov-report=json:{report}",
        path="examples/test_matrix_plugin.py",
        # Not the repository root's data files: this suite's own, under CI, are there too.
        env={"COVERAGE_FILE": str(tmp_path / ".coverage")},
    )
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["coverage: * data files of 1 clones combined into the run's"])
    files = json.loads(report.read_text())["files"]
    assert sorted(files) == ["examples/matrix_plugin/src/pytest_passrate/__init__.py"]
    (summary,) = (f["summary"] for f in files.values())
    assert summary["percent_covered"] == 100.0, summary

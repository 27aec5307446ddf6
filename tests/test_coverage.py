"""Coverage of the code that runs in clones: a project whose functions run only inside clones
is reported at its ``src/`` paths by the outer run, with pytest-cov and with ``coverage run``,
with and without xdist, lines and branches.

Every run is a real pytest subprocess (coverage measures processes) whose environment holds no
coverage variable of ours: when this suite itself runs under ``coverage run`` (CI), the inner
runs measure only what they are told to.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from _helpers import fast_dir, remove_cache
from _wheels import standard_wheelhouse
from pytest_cowenv._coverage import CLONE_DIR, PTH_NAME

pytest.importorskip("pytest_cov", reason="pip install -e '.[test]' installs pytest-cov")

# An in-tree PEP 517 backend: the wheel holds src/* and a console script; builds offline.
BACKEND = """
import base64, hashlib, pathlib, zipfile

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    here = pathlib.Path(__file__).parent
    files = {
        p.relative_to(here / "src").as_posix(): p.read_text()
        for p in (here / "src").rglob("*.py")
    }
    info = "mypkg-0.1.dist-info"
    files[f"{info}/METADATA"] = "Metadata-Version: 2.1\\nName: mypkg\\nVersion: 0.1\\n"
    files[f"{info}/WHEEL"] = (
        "Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    )
    files[f"{info}/entry_points.txt"] = "[console_scripts]\\nmytool = mypkg.cli:main\\n"
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\\n".join([*record, f"{info}/RECORD,,"]) + "\\n"
    out = "mypkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(pathlib.Path(wheel_directory) / out, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return out
"""
PYPROJECT = """
[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]

[project]
name = "mypkg"
version = "0.1"
"""
CORE = """\
def sign(x):
    if x > 0:
        return "positive"
    return "not positive"


def nested():
    return "nested"


def never():
    return "never"
"""
CLI = """\
import sys

from mypkg.core import sign


def main():
    print(sign(int(sys.argv[1])))
"""
# Run in a clone only: a console script, `python -c`, and a process that process starts.
TESTS = """
import pytest

@pytest.mark.cowenv(project=True)
def test_script(cowenv):
    assert cowenv.run("mytool", "1").stdout.strip() == "positive"

@pytest.mark.cowenv(project=True)
def test_nested_process(cowenv):
    code = (
        "import subprocess, sys; "
        "subprocess.run([sys.executable, '-c', 'from mypkg.core import nested; nested()'], "
        "check=True)"
    )
    cowenv.run("python", "-c", code)

@pytest.mark.cowenv("alpha==1.0")
def test_unrelated(cowenv):
    import os
    from pytest_cowenv._coverage import PTH_NAME
    assert not (cowenv.site_packages / PTH_NAME).exists()  # nothing measured in it
    cowenv.run("alpha")
"""
CORE_FILE = "src/mypkg/core.py"
# Lines of CORE: `sign` and its positive branch (script), `nested` (nested process).
RUN_LINES = {1, 2, 3, 7, 8, 11}
MISSED_LINES = {4, 12}


def make_project(directory: Path) -> Path:
    (directory / "src" / "mypkg").mkdir(parents=True)
    (directory / "tests").mkdir()
    (directory / "backend.py").write_text(BACKEND)
    (directory / "pyproject.toml").write_text(PYPROJECT)
    (directory / "src" / "mypkg" / "__init__.py").write_text("")
    (directory / "src" / "mypkg" / "core.py").write_text(CORE)
    (directory / "src" / "mypkg" / "cli.py").write_text(CLI)
    (directory / "tests" / "test_in_clones.py").write_text(TESTS)
    return directory


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return standard_wheelhouse(tmp_path_factory.mktemp("wheelhouse"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = fast_dir(tmp_path_factory, "cowenv-cov")
    yield root / "cache"
    remove_cache(root / "cache")
    remove_cache(root)


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The inner runs measure what they are told, whatever measures this suite."""
    for name in list(os.environ):
        if name.startswith(("COVERAGE_", "PYTEST_COWENV_", "PYTEST_XDIST_", "COV_CORE_")):
            monkeypatch.delenv(name)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


Run = Callable[..., pytest.RunResult]


@pytest.fixture
def run(pytester: pytest.Pytester, wheelhouse: Path, cache: Path) -> Run:
    """``run(*pytest_args, coverage_run=False)``: pytest in a subprocess, offline, in the
    project at pytester's path; with ``coverage_run``, as ``python -m coverage run -m pytest``."""
    make_project(pytester.path)

    def run(*args: str, coverage_run: bool = False) -> pytest.RunResult:
        options = ["-p", "no:cacheprovider", f"--cowenv-dir={cache}"]
        options += [f"--cowenv-find-links={wheelhouse}", "--cowenv-offline"]
        options += ["-W", "ignore::pytest_cowenv.CowEnvWarning", *args]
        prefix = ["-m", "coverage", "run", "-m"] if coverage_run else ["-m"]
        return pytester.run(sys.executable, *prefix, "pytest", *options, timeout=300)

    return run


def report(pytester: pytest.Pytester, *combine: str) -> dict[str, Any]:
    """``coverage json`` of the run's data (after ``coverage combine`` when asked)."""
    if combine:
        done = pytester.run(sys.executable, "-m", "coverage", "combine", *combine)
        assert done.ret == 0, done.stdout.str() + done.stderr.str()
    done = pytester.run(sys.executable, "-m", "coverage", "json", "-o", "cov.json")
    assert done.ret == 0, done.stdout.str() + done.stderr.str()
    return read_report(pytester.path / "cov.json")


def read_report(path: Path) -> dict[str, Any]:
    files: dict[str, Any] = json.loads(path.read_text())["files"]
    return files


def check_core(files: dict[str, Any], branch: bool) -> None:
    """The clone-only code is reported at its source path, as it ran; no clone path."""
    assert not [f for f in files if "site-packages" in f or CLONE_DIR in f], sorted(files)
    core = files[CORE_FILE]
    assert set(core["executed_lines"]) == RUN_LINES
    assert set(core["missing_lines"]) == MISSED_LINES
    assert "mypkg/cli.py" in " ".join(files)
    if branch:
        assert core["executed_branches"] == [[2, 3]]
        assert core["missing_branches"] == [[2, 4]]
    else:
        assert "executed_branches" not in core


def write_coveragerc(path: Path, branch: bool, parallel: bool) -> None:
    lines = ["[run]", "source = src", f"branch = {branch}"]
    if parallel:  # as coverage needs for xdist's workers (and this project's CI uses)
        lines += ["parallel = True", "patch = subprocess"]
    (path / ".coveragerc").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "xdist"])
@pytest.mark.parametrize("branch", [False, True], ids=["lines", "branches"])
def test_pytest_cov(pytester: pytest.Pytester, run: Run, xdist: bool, branch: bool) -> None:
    args = ["--cov=mypkg", "--cov-report=json:cov.json"]
    args += ["--cov-branch"] if branch else []
    args += ["-n", "2"] if xdist else []
    result = run(*args, "tests")
    result.assert_outcomes(passed=3)
    check_core(read_report(pytester.path / "cov.json"), branch)
    result.stdout.fnmatch_lines(["coverage: * data files of 2 clones combined into the run's"])


@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "xdist"])
@pytest.mark.parametrize("branch", [False, True], ids=["lines", "branches"])
def test_coverage_run(pytester: pytest.Pytester, run: Run, xdist: bool, branch: bool) -> None:
    write_coveragerc(pytester.path, branch, parallel=xdist)
    result = run(*(["-n", "2"] if xdist else []), "tests", coverage_run=True)
    result.assert_outcomes(passed=3)
    check_core(report(pytester, *(["-q"] if xdist else [])), branch)


def test_explicit_flag_without_outer_coverage(pytester: pytest.Pytester, run: Run) -> None:
    """--cowenv-cov with nothing measuring the run: the clones' data waits beside the
    configured data file for `coverage combine`."""
    write_coveragerc(pytester.path, branch=True, parallel=False)
    result = run("--cowenv-cov", "tests")
    result.assert_outcomes(passed=3)
    assert [p.name.split(".")[2] for p in pytester.path.glob(".coverage.*")] == ["cowenv"]
    check_core(report(pytester, "-q"), branch=True)


def test_off_and_not_measuring_inject_nothing(pytester: pytest.Pytester, run: Run) -> None:
    pytester.makepyfile(
        test_probe=f"""
        import pytest

        @pytest.mark.cowenv(project=True)
        def test_probe(cowenv):
            assert not (cowenv.site_packages / {PTH_NAME!r}).exists()
            assert not (cowenv.path / {CLONE_DIR!r}).exists()
        """
    )
    run("--cov=mypkg", "--no-cowenv-cov", "test_probe.py").assert_outcomes(passed=1)
    run("test_probe.py").assert_outcomes(passed=1)  # no coverage at all
    pytester.makeini("[pytest]\ncowenv_cov = sometimes\n")
    bad = run("test_probe.py")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*ini cowenv_cov: 'sometimes' is not one of auto, on, off"])
    pytester.makeini("[pytest]\ncowenv_cov = on\n")
    run("--no-cowenv-cov", "--cov=mypkg", "test_probe.py").assert_outcomes(passed=1)


def test_clone_sees_only_coverage_of_the_outer_env(pytester: pytest.Pytester, run: Run) -> None:
    """The measured clone imports the outer run's coverage, and nothing else of the outer
    environment (pytest is not installed in it); a kept clone stops measuring."""
    import coverage

    pytester.makepyfile(
        test_probe=f"""
        import pytest

        @pytest.mark.cowenv(project=True)
        def test_probe(cowenv):
            code = "import coverage; print(coverage.__version__, bool(coverage.Coverage.current()))"
            seen = cowenv.run("python", "-c", code).stdout.split()
            assert seen == [{coverage.__version__!r}, "True"]
            missing = cowenv.run("python", "-c", "import pytest", check=False)
            assert "No module named 'pytest'" in missing.stderr
        """
    )
    result = run("--cov=mypkg", "--cowenv-keep=all", "test_probe.py")
    result.assert_outcomes(passed=1)
    kept = Path(
        next(line for line in result.outlines if line.startswith("kept clone: ")).split()[-1]
    )
    probe = "import sys; print('coverage' in sys.modules)"
    assert pytester.run(kept / "bin" / "python", "-c", probe).outlines == ["False"]

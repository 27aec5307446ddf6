"""Coverage of the code that runs in clones: a project whose functions run only inside clones
is reported at its ``src/`` paths by the outer run, with pytest-cov and with ``coverage run``,
with and without xdist, lines and branches.

Every run is a real pytest subprocess (coverage measures processes) whose environment holds no
coverage variable of ours: when this suite itself runs under ``coverage run`` (CI), the inner
runs measure only what they are told to.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable, cast

import pytest

from _helpers import fast_cache, other_pythons
from pytest_cowenv._coverage import CLONE_DIR, PTH_NAME

if TYPE_CHECKING:
    from pytest_cowenv.env import CowEnv

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
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from fast_cache(tmp_path_factory, "cowenv-cov")


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


def other_python(supported: bool) -> str:
    """An interpreter of another minor version than this one that this coverage runs on
    (``supported``) or not (its ``Requires-Python``); the test skips without one. Without uv,
    templates are built by this pip run on that interpreter: one this pip cannot run on is
    passed over (the build would fail, saying so: see test_plugin)."""
    from importlib.metadata import metadata

    from packaging.specifiers import SpecifierSet

    from pytest_cowenv._install import pip_error_for, uv_binary

    allowed = SpecifierSet((metadata("coverage").get_all("Requires-Python") or [""])[0])
    for python, version in other_pythons():
        minor = tuple(int(part) for part in version.split(".")[:2])
        if minor < (3, 8) or ("{}.{}.0".format(*minor) in allowed) != supported:
            continue
        if uv_binary() or pip_error_for(python, version) is None:
            return python
    pytest.skip(
        f"no python3.X {'that' if supported else 'that not'} coverage supports on PATH"
        f"{'' if uv_binary() else ' that this pip can run on (pip --python)'}"
    )


@pytest.mark.parametrize("supported", [True, False], ids=["supported", "unsupported"])
def test_clone_of_another_python(pytester: pytest.Pytester, run: Run, supported: bool) -> None:
    """A clone of another Python runs the outer coverage package without its compiled
    tracer (quietly: the test's stderr stays empty), if that coverage supports the version;
    otherwise the summary says it was not measured."""
    python = other_python(supported)
    pytester.makepyfile(
        test_other=f"""
        import pytest

        @pytest.mark.cowenv(project=True, python={python!r})
        def test_script(cowenv):
            done = cowenv.run("mytool", "1")
            assert (done.stdout.strip(), done.stderr) == ("positive", "")
        """
    )
    result = run("--cov=mypkg", "--cov-report=json:cov.json", "test_other.py")
    result.assert_outcomes(passed=1)
    if supported:
        core = read_report(pytester.path / "cov.json")[CORE_FILE]
        assert {2, 3} <= set(core["executed_lines"])
    else:
        result.stdout.fnmatch_lines(
            ["coverage: clones of a Python that this run's coverage does not support *(python3.*)"]
        )


# --- the core in-process (no pytest run inside): a venv made here stands for a clone ---------


@pytest.fixture
def own_measurement_kept() -> Iterator[None]:
    """These tests make Coverage objects; coverage then takes this process for one that
    measures itself and tells its auto-started measurement (CI's `patch = subprocess` in an
    xdist worker) not to save: this keeps it saving."""
    import coverage

    auto = getattr(coverage.process_startup, "coverage", None)
    saving = getattr(auto, "_auto_save", False)
    yield
    if auto is not None:
        auto._auto_save = saving


def fake_clone(path: Path) -> CowEnv:
    """A venv at ``path`` with the handle's two attributes the coverage core reads."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    spec = SimpleNamespace(describe=lambda: "fake")
    return cast("CowEnv", SimpleNamespace(path=path, template=SimpleNamespace(spec=spec)))


@pytest.mark.usefixtures("own_measurement_kept")
def test_core_maps_a_clones_lines_to_the_sources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import coverage

    from pytest_cowenv._coverage import CloneCoverage, measured
    from pytest_cowenv._venv import site_packages

    project = make_project(tmp_path / "proj")
    env = fake_clone(tmp_path / "clone")
    shutil.copytree(project / "src" / "mypkg", site_packages(env.path) / "mypkg")
    shutil.copytree(project / "src" / "mypkg", site_packages(env.path) / "ghost")  # no source
    outer = coverage.Coverage(data_file=None, config_file=False, branch=True)
    outer.set_option("run:source", ["mypkg", "ghost"])
    measure = CloneCoverage(measured(outer, str(tmp_path)), (), live=outer)

    def no_coverage_object(*args: object, **kwargs: object) -> None:
        raise AssertionError("a Coverage object would stop this process's own measurement")

    # (coverage's process-start hook measures xdist workers under `patch = subprocess`; a
    # Coverage made later in the process tells that measurement not to save.)
    monkeypatch.setattr(coverage.Coverage, "__init__", no_coverage_object)
    assert measure.prepare(env, (str(project),))
    assert measure.stats.unmapped == ["ghost"]
    code = "from mypkg.core import sign; sign(1)"
    # The outer run's own process-start config (coverage's `patch = subprocess`) never applies.
    leaked = dict(os.environ, COVERAGE_PROCESS_CONFIG="not for clones")
    subprocess.run([env.path / "bin" / "python", "-c", code], check=True, env=leaked)
    measure.collect(env)
    measure.finish()
    data = outer.get_data()
    core = str(project / CORE_FILE)
    package = project / "src" / "mypkg"
    assert data.measured_files() == {str(package / f) for f in ("__init__.py", "core.py", "cli.py")}
    assert set(data.lines(core) or ()) == {1, 2, 3, 7, 11}
    assert (2, 3) in (data.arcs(core) or ())
    assert measure.stats.clones == 1 and measure.stats.files == 1
    assert measure.notes() == [
        "measured in clones but no source found outside them (not reported): ghost"
    ]
    rc = env.path / CLONE_DIR / "coveragerc"
    assert "\nsource_pkgs =\n    mypkg\n" in rc.read_text()
    # A subpackage the outer run names stays that in the clone.
    narrow = CloneCoverage(dataclasses.replace(measure.measured, source_names=("mypkg.core",)))
    assert narrow.prepare(env, (str(project),))
    assert "\nsource_pkgs =\n    mypkg.core\n" in rc.read_text()


@pytest.mark.usefixtures("own_measurement_kept")
def test_core_reads_the_outer_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import coverage

    from pytest_cowenv._coverage import detect, measured, problem

    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    (tmp_path / ".coveragerc").write_text(
        "[run]\nsource = src, mypkg\nsource_pkgs = other\nomit = src/skip.py, */vendored/*\n"
        "patch = subprocess, _exit\ndisable_warnings = no-data-collected\ntimid = True\n"
    )
    what = measured(coverage.Coverage(), str(tmp_path))
    assert what.source_dirs == (str((tmp_path / "src").resolve()),)
    assert what.source_names == ("other", "mypkg")
    assert what.omit == (str(tmp_path / "src" / "skip.py"), "*/vendored/*")
    assert what.patch == ("_exit",) and what.quiet == ("no-data-collected",)
    assert ("timid", "True") in what.carried and not what.everything

    monkeypatch.setattr(coverage.Coverage, "current", classmethod(lambda cls: None))
    assert problem() is None  # coverage is new enough here
    base = str(tmp_path)
    assert detect("off", None, base) is None
    assert detect("auto", None, base) is None  # nothing measures this process
    on = detect("on", None, base)  # beside the configured data file, for `coverage combine`
    assert on is not None and on._beside == str(tmp_path / ".coverage")


def test_a_package_installed_later_is_measured(pytester: pytest.Pytester, run: Run) -> None:
    pytester.makepyfile(
        test_later="""
        from pathlib import Path

        import pytest

        @pytest.mark.cowenv("alpha==1.0")
        def test_later(cowenv):
            cowenv.install(str(Path(__file__).parent))  # this project, into this clone only
            assert cowenv.run("mytool", "0").stdout.strip() == "not positive"
        """
    )
    result = run("--cov=mypkg", "--cov-branch", "--cov-report=json:cov.json", "test_later.py")
    result.assert_outcomes(passed=1)
    core = read_report(pytester.path / "cov.json")[CORE_FILE]
    assert {2, 4} <= set(core["executed_lines"]) and 3 in core["missing_lines"]


def test_a_run_that_uses_no_clone_imports_no_clone_coverage(pytester: pytest.Pytester) -> None:
    """Under coverage (as in this project's CI, whose suite checks what an unused plugin
    imports), a run that never asks for a clone does not even import the clone coverage."""
    pytester.makepyfile(
        test_nothing="def test_nothing(): pass",
        probe="""
        import sys

        import pytest

        pytest.main(["-q", "-p", "no:cacheprovider", "test_nothing.py"])
        print("pytest_cowenv._coverage" in sys.modules)
        """,
    )
    done = pytester.run(sys.executable, "-m", "coverage", "run", "probe.py")
    assert done.ret == 0, done.stderr.str()
    assert done.outlines[-1] == "False"

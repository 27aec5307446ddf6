"""The pytest plugin, run the way users run it: pytester writes a test module, runs pytest.

Templates come from the offline wheelhouse of ``_wheels``; caches live on btrfs when it is
mounted. Runs in-process where nothing but the plugin is under test (fast), in a subprocess
where environment variables, signals or xdist matter.
"""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from importlib.metadata import metadata
from pathlib import Path
from typing import Any, Callable

import pytest
from packaging.specifiers import SpecifierSet

from _helpers import INTERNAL_FRAME, fast_cache, other_pythons
from _wheels import standard_wheelhouse
from pytest_cowenv import _build as build_module
from pytest_cowenv import _install as install_module
from pytest_cowenv import _releases as releases_module
from pytest_cowenv import _wheelcache as wheelcache_module
from pytest_cowenv import spec as spec_module
from pytest_cowenv import template as template_module
from pytest_cowenv._install import build_wheel, pip_error_for, pip_unusable_message, uv_binary
from pytest_cowenv.clone import forget_decisions
from pytest_cowenv.errors import SpecError, TemplateBuildError
from pytest_cowenv.plugin import MARKER_DOC, SILENCE_COPIES
from pytest_cowenv.spec import TemplateSpec, find_interpreter

Run = Callable[..., pytest.RunResult]


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return standard_wheelhouse(tmp_path_factory.mktemp("wheelhouse"))


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One cache for the tests that only need templates to exist (built once per worker)."""
    yield from fast_cache(tmp_path_factory, "cowenv-plugin")


@pytest.fixture
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A cache of this test's own, for tests that count builds or clones."""
    yield from fast_cache(tmp_path_factory, "cowenv-own")


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No option of the machine leaks in, and a run without --cowenv-dir stays in tmp."""
    for name in list(os.environ):
        if name.startswith(("PYTEST_COWENV_", "PYTEST_XDIST_")) or name == "PYTEST_ADDOPTS":
            monkeypatch.delenv(name)  # also an outer xdist worker's: inner runs are controllers
    monkeypatch.setenv("PYTEST_COWENV_DIR", str(tmp_path / "default-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def run(pytester: pytest.Pytester, wheelhouse: Path, shared_cache: Path) -> Run:
    """``run(*args, cache=…, subprocess=False)``: pytest with the offline wheelhouse."""

    def run(*args: str, cache: Path = shared_cache, subprocess: bool = False) -> pytest.RunResult:
        options = ["-p", "no:cacheprovider", f"--cowenv-dir={cache}"]
        options += [f"--cowenv-find-links={wheelhouse}", "--cowenv-offline", *args]
        if subprocess:
            return pytester.runpytest_subprocess(*options, timeout=300)
        return pytester.runpytest_inprocess(*options)

    return run


def summary(result: pytest.RunResult) -> list[str]:
    """The lines of the ``cowenv`` terminal summary section."""
    lines = result.outlines
    starts = [i for i, line in enumerate(lines) if re.fullmatch(r"=+ cowenv =+", line)]
    assert len(starts) == 1, "\n".join(lines)
    section = []
    for line in lines[starts[0] + 1 :]:
        if line.startswith("="):
            break
        section.append(line)
    return section


def assert_no_frames(result: pytest.RunResult) -> None:
    text = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in text
    assert not INTERNAL_FRAME.search(text), INTERNAL_FRAME.search(text)


# --- fixtures and marker --------------------------------------------------------------------


def test_closest_marker_wins_and_ini_is_the_fallback(pytester: pytest.Pytester, run: Run) -> None:
    pytester.makeini("[pytest]\ncowenv_requirements = gamma\n")
    pytester.makepyfile(
        test_marked="""
        import pytest

        pytestmark = pytest.mark.cowenv("alpha==1.0")

        def version(env, module):
            code = f"import {module}; print({module}.VERSION)"
            return env.run("python", "-c", code).stdout.strip()

        def test_module(cowenv):
            assert cowenv.template.requirements == ("alpha==1.0",)
            assert version(cowenv, "alpha") == "1.0"

        @pytest.mark.cowenv("alpha==2.0")
        class TestClass:
            def test_class(self, cowenv):
                assert cowenv.template.requirements == ("alpha==2.0",)
                assert version(cowenv, "alpha") == "2.0"

            @pytest.mark.cowenv("beta")
            def test_function(self, cowenv):
                assert cowenv.template.requirements == ("beta",)
                assert version(cowenv, "beta") == "1.0"
        """,
        test_unmarked="""
        def test_ini(cowenv):
            assert cowenv.template.requirements == ("gamma",)
            out = cowenv.run("python", "-c", "import gamma; print(gamma.VERSION)").stdout
            assert out == "0.5\\n"
        """,
    )
    result = run()
    result.assert_outcomes(passed=4)
    lines = summary(result)
    assert any(re.match(r"clones: 4\b", line) for line in lines), lines
    assert any("median" in line and "p95" in line for line in lines), lines
    assert any(line.startswith("disk:") for line in lines), lines


def test_factory_makes_a_fresh_clone_per_call(pytester: pytest.Pytester, run: Run) -> None:
    pytester.makepyfile(
        """
        import os

        made = []

        def test_factory(cowenv_factory):
            old, new = cowenv_factory("alpha==1.0"), cowenv_factory("alpha==2.0")
            again = cowenv_factory("alpha==1.0")
            assert old.run("alpha").stdout == "alpha 1.0\\n"
            assert new.run("alpha").stdout == "alpha 2.0\\n"
            assert len({old.path, new.path, again.path}) == 3
            assert again.template.key == old.template.key != new.template.key
            (old.path / "scribble").write_text("mine")
            assert not (again.path / "scribble").exists()
            made.extend([old.path, new.path, again.path])

        def test_clones_were_removed_at_teardown(cowenv_factory):
            assert made and not any(os.path.exists(p) for p in made)
            assert cowenv_factory("alpha==1.0", link_mode="copy").strategy == "copy"

        def test_bad_keyword(cowenv_factory):
            cowenv_factory("alpha==1.0", pyhton="3.11")
        """
    )
    result = run("-rf")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        ["*unknown keyword pyhton; allowed: python, project, link_mode, pip*"]
    )
    assert_no_frames(result)


COPIES = """
import pytest

@pytest.mark.cowenv("alpha==1.0")
def test_fixture(cowenv):
    assert cowenv.strategy == "copy"

def test_factory(cowenv_factory):
    cowenv_factory("alpha==2.0")
"""


def test_a_fallback_to_copies_warns_from_the_users_test_and_says_how_to_silence_it(
    pytester: pytest.Pytester, run: Run, ext4_dir: Path
) -> None:
    pytester.makepyfile(test_copies=COPIES)
    path, cache = pytester.path / "test_copies.py", ext4_dir / "cache"

    def warned(*args: str) -> list[tuple[str, str]]:
        """Each CowEnvWarning line of the summary, with the source line printed under it."""
        forget_decisions()  # the core warns once per process and filesystem pair
        result = run(*args, cache=cache)
        assert_no_frames(result)  # not our session.py line, nor its source
        out = result.outlines
        return [(line, out[i + 1].strip()) for i, line in enumerate(out) if "CowEnvWarning" in line]

    # The marker's line (or the test's def), and the line that called the factory.
    for test, line, source in [("fixture", 3, "@pytest.mark"), ("factory", 8, "cowenv_factory(")]:
        ((warning, printed),) = warned("-k", test) or [("", "")]
        assert warning.startswith(f"  {path}:{line}: CowEnvWarning: pytest-cowenv: ext4 at ")
        assert warning.endswith(SILENCE_COPIES) and "cannot clone files from ext4" in warning
        assert printed.startswith(source)
    # What the warning says works, and -W error fails the test with one line.
    assert warned("--cowenv-link-mode", "copy") == []
    assert warned("-W", "ignore::pytest_cowenv.CowEnvWarning") == []
    pytester.makeini("[pytest]\nfilterwarnings = ignore::pytest_cowenv.CowEnvWarning\n")
    assert warned() == []
    forget_decisions()
    result = run("-W", "error::pytest_cowenv.CowEnvWarning", "-k", "fixture", cache=cache)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["pytest-cowenv: ext4 at * cannot clone files from ext4 *"])
    assert_no_frames(result)


def test_spec_errors_are_one_clear_line_and_not_retried(
    pytester: pytest.Pytester, run: Run, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: Counter[str] = Counter()
    real_build, real_discover = build_module.build_env, spec_module._discover

    def counting_build(spec: Any, *args: Any, **kwargs: Any) -> Any:
        calls[f"build {spec.describe()}"] += 1
        return real_build(spec, *args, **kwargs)

    def counting_discover(request: str) -> str:
        calls[f"discover {request}"] += 1
        return real_discover(request)

    monkeypatch.setattr(template_module, "build_env", counting_build)
    monkeypatch.setattr(spec_module, "_discover", counting_discover)
    pytester.makepyfile(
        test_e="""
        import pytest

        @pytest.mark.cowenv("alpha", bogus=True)
        def test_unknown_keyword(cowenv): pass

        @pytest.mark.cowenv("alpha>>1")
        def test_invalid_requirement(cowenv): pass

        @pytest.mark.cowenv("dist/missing-1.0-py3-none-any.whl")
        def test_missing_wheel(cowenv): pass

        @pytest.mark.cowenv(python="9.9")
        def test_no_python_1(cowenv): pass

        @pytest.mark.cowenv(python="9.9")
        def test_no_python_2(cowenv): pass

        @pytest.mark.cowenv("no-such-dist")
        def test_unresolvable_1(cowenv): pass

        @pytest.mark.cowenv("no-such-dist")
        def test_unresolvable_2(cowenv): pass

        @pytest.mark.cowenv(project=3)
        def test_bad_project(cowenv): pass

        def test_others_still_run(): pass
        """
    )
    result = run("-rE", cache=cache)
    result.assert_outcomes(passed=1, errors=8)
    first_lines = {
        "test_unknown_keyword": "cowenv: unknown keyword bogus; allowed: python, project, "
        "link_mode, pip, groups, extras, lock, resolution, exclude_newer, matrix",
        "test_invalid_requirement": "'alpha>>1': invalid requirement *",
        "test_missing_wheel": "dist/missing-1.0-py3-none-any.whl: no such local wheel*",
        "test_no_python_1": "python='9.9': no such interpreter*",
        "test_no_python_2": "python='9.9': no such interpreter*",
        "test_unresolvable_1": "no-such-dist: installing failed: *",
        "test_unresolvable_2": "no-such-dist: installing failed: *",
        "test_bad_project": "project=3: give True, False or a directory",
    }
    for test, message in first_lines.items():
        result.stdout.fnmatch_lines([f"_* ERROR at setup of {test} _*", message], consecutive=True)
    result.stdout.fnmatch_lines(["ERROR test_e.py::test_no_python_1 - Failed: python='9.9'*"])
    assert_no_frames(result)
    assert calls == {"build no-such-dist": 1, "discover 9.9": 1}


def test_collection_makes_only_the_specs_that_tests_share(
    pytester: pytest.Pytester, run: Run, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Collection makes the specs of shared environments (their pools start early); a spec
    asked for by one test is made by that test alone: making one can cost (a lock's
    selection, a project's hash), and making it at collection gains nothing."""
    from pytest_cowenv import plugin as plugin_module

    made: list[tuple[str, str]] = []
    real = plugin_module._make_spec

    def counting(config: Any, session: Any, args: Any, kwargs: Any, base_dir: Path) -> Any:
        caller = sys._getframe(1).f_code.co_name
        stage = "collection" if caller == "pytest_collection_modifyitems" else "setup"
        made.append((stage, str(kwargs.get("lock"))))
        return real(config, session, args, kwargs, base_dir)

    monkeypatch.setattr(plugin_module, "_make_spec", counting)
    pytester.makepyfile(
        test_m="""
        import pytest

        @pytest.mark.cowenv(lock="one/pylock.toml")
        def test_alone(cowenv): pass

        @pytest.mark.cowenv(lock="two/pylock.toml")
        def test_shared_1(cowenv): pass

        @pytest.mark.cowenv(lock="two/pylock.toml")
        def test_shared_2(cowenv): pass
        """
    )
    pytester.makepyfile(
        **{
            "sub/test_elsewhere": """
            import pytest

            @pytest.mark.cowenv(lock="one/pylock.toml")
            def test_same_words_in_another_folder(cowenv): pass
            """
        }
    )
    result = run("-rE", cache=cache)
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines(["*lock='one/pylock.toml': no such file*"])
    assert sorted(made) == [
        ("collection", "one/pylock.toml"),  # the same words in two folders may be one spec
        ("collection", "one/pylock.toml"),
        ("collection", "two/pylock.toml"),  # and its failure is told to both tests
    ]
    made.clear()
    (pytester.path / "sub" / "test_elsewhere.py").unlink()
    run("-rE", cache=cache).assert_outcomes(errors=3)
    assert sorted(made) == [("collection", "two/pylock.toml"), ("setup", "one/pylock.toml")]


# --- the outer pip on another Python --------------------------------------------------------


@pytest.fixture
def pip_route(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Templates built by the outer pip; what is read once per process is read again after."""
    monkeypatch.setenv("PYTEST_COWENV_NO_UV", "1")
    uv_binary.cache_clear()
    pip_error_for.cache_clear()
    yield
    uv_binary.cache_clear()
    pip_error_for.cache_clear()


def python_this_pip_cannot_run_on() -> tuple[str, str]:
    """(executable, version) of an interpreter that this pip fails on when it installs for it
    (``pip --python``), found without pytest-cowenv; the test skips without one."""
    for python, found in other_pythons():
        pip = [sys.executable, "-m", "pip", "--python", python, "list"]  # reads its metadata
        if subprocess.run(pip, capture_output=True, check=False).returncode != 0:
            return python, found
    pytest.skip(
        f"pip {metadata('pip')['Version']} runs on every other interpreter here (pip --python): "
        "a pip that cannot is, e.g., Debian's 23.0.1 (a venv of /usr/bin/python3) with a 3.12"
    )


def expected_fix(python_version: str, uv_instead: bool = True) -> str:
    requires = (metadata("pip").get_all("Requires-Python") or [""])[0]
    if python_version not in SpecifierSet(requires):
        return f"pip supports Python {requires}: give another interpreter"
    uv = " or install uv" if uv_instead else ""
    return f"upgrade pip ({sys.executable} -m pip install -U pip){uv}"


def test_a_python_this_pip_cannot_run_on_fails_each_test_in_one_line(
    pytester: pytest.Pytester, run: Run, cache: Path, pip_route: None
) -> None:
    """Without uv, templates are built by this pip run on their interpreter (``--python``):
    where it cannot run (an old pip on a newer Python fails inside itself, with its own
    traceback), each test of such a spec fails with one line that names pip, the interpreter
    and the fix. The interpreter is tried once, whatever the number of specs."""
    python, found = python_this_pip_cannot_run_on()
    pytester.makepyfile(
        test_p=f"""
        import pytest

        @pytest.mark.cowenv("alpha", python={python!r})
        def test_one(cowenv): pass

        @pytest.mark.cowenv("beta", python={python!r})
        def test_two(cowenv): pass
        """
    )
    result = run("-rE", cache=cache)
    result.assert_outcomes(errors=2)
    pip = f"pip {metadata('pip')['Version']} ({sys.executable} -m pip)"
    fix = expected_fix(found, uv_instead=False)  # the user opted out of uv
    said = f"{pip} cannot run for Python {found} ({python}): {fix} (pip said: *)"
    result.stdout.fnmatch_lines(
        [
            "_* ERROR at setup of test_one _*",
            f"alpha (python {python}): {said}",
            "_* ERROR at setup of test_two _*",
            f"beta (python {python}): {said}",
            "=* short test summary info =*",
        ],
        consecutive=True,
    )
    assert_no_frames(result)
    assert pip_error_for.cache_info().misses == 1


def test_what_pip_said_on_another_python_becomes_one_line_with_the_fix(
    pytester: pytest.Pytester, run: Run, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The line, without such an interpreter: pip's own error (its last line) fails the test
    with the fix, and uv is offered unless the user opted out of it."""
    monkeypatch.setattr(build_module, "uv_binary", lambda: None)  # the pip route, uv not found
    said = "AttributeError: module 'pkgutil' has no attribute 'ImpImporter'"
    asked: list[tuple[str, str]] = []

    def pip_fails(python: str, python_version: str) -> str:
        asked.append((python, python_version))
        return said

    monkeypatch.setattr(install_module, "pip_error_for", pip_fails)
    pytester.makepyfile(
        test_p="""
        import pytest

        @pytest.mark.cowenv("alpha")
        def test_one(cowenv): pass
        """
    )
    result = run("-rE", cache=cache)
    result.assert_outcomes(errors=1)
    interp = find_interpreter(None)
    line = (
        f"alpha: pip {metadata('pip')['Version']} ({sys.executable} -m pip) cannot run for Python "
        f"{interp.version} ({interp.executable}): {expected_fix(interp.version)} (pip said: {said})"
    )
    result.stdout.fnmatch_lines(
        ["_* ERROR at setup of test_one _*", line, "=* short test summary info =*"],
        consecutive=True,
    )
    assert_no_frames(result)
    assert asked == [(interp.executable, interp.version)]
    monkeypatch.setenv("PYTEST_COWENV_NO_UV", "1")  # no uv to offer: the user turned it off
    spec = TemplateSpec.create(["alpha"])
    with pytest.raises(TemplateBuildError) as raised:
        build_module.check_pip_runs(spec, interp.executable, interp.version)
    assert str(raised.value) == line.replace(" or install uv", "")
    # Listing releases for that interpreter (versions(..., python=)) has no uv to offer.
    with pytest.raises(SpecError) as listing:
        releases_module._check_pip_runs("alpha", interp.executable)
    assert str(listing.value) == (
        f"listing the releases of alpha for python={interp.executable!r}: "
        + line.partition(": ")[2].replace(" or install uv", "")
    )


def test_a_python_outside_pips_requires_python_gets_no_upgrade_advice() -> None:
    requires = (metadata("pip").get_all("Requires-Python") or [""])[0]
    message = pip_unusable_message("/opt/py27/bin/python2.7", "2.7.18", "no", uv_instead=True)
    assert message == (
        f"pip {metadata('pip')['Version']} ({sys.executable} -m pip) cannot run for Python 2.7.18 "
        f"(/opt/py27/bin/python2.7): pip supports Python {requires}: give another interpreter "
        "(pip said: no)"
    )


def test_the_probe_reports_pips_last_error_line_once_per_interpreter(
    tmp_path: Path, pip_route: None
) -> None:
    """What pip says on an interpreter it fails on: its last error line, asked once; an
    interpreter of this minor version is not tried (this pip runs on it)."""
    fake = tmp_path / "python3.99"
    fake.write_text(
        "#!/bin/sh\necho 'Traceback (most recent call last):' >&2\n"
        "echo 'RuntimeError: not a Python' >&2\nexit 3\n"
    )
    fake.chmod(0o755)
    assert pip_error_for(str(fake), "3.99.0") == "RuntimeError: not a Python"
    assert pip_error_for(str(fake), "3.99.0") == "RuntimeError: not a Python"
    assert pip_error_for.cache_info().misses == 1
    same_minor = "{}.{}.0".format(*sys.version_info[:2])
    assert pip_error_for(str(fake), same_minor) is None


# --- project=True ------------------------------------------------------------------------

BACKEND = """
import base64, hashlib, pathlib, zipfile

def _wheel(directory, name, modules):
    info = f"{name}-0.1.dist-info"
    files = dict(modules)
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\\nName: {name}\\nVersion: 0.1\\n"
    files[f"{info}/WHEEL"] = (
        "Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    )
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\\n".join([*record, f"{info}/RECORD,,"]) + "\\n"
    out = f"{name}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(pathlib.Path(directory) / out, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return out

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    here = pathlib.Path(__file__).parent
    name = (here / "NAME").read_text().strip()
    return _wheel(wheel_directory, name, {f"{name}.py": (here / f"{name}.py").read_text()})
"""
PYPROJECT = """
[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]

[project]
name = "{name}"
version = "0.1"
"""


def make_project(directory: Path, name: str, value: int) -> Path:
    """A project with an in-tree PEP 517 backend: builds offline, without setuptools."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "backend.py").write_text(BACKEND)
    (directory / "pyproject.toml").write_text(PYPROJECT.format(name=name))
    (directory / "NAME").write_text(name)
    (directory / f"{name}.py").write_text(f"VALUE = {value}\n")
    return directory


def test_project_is_built_once_and_installed(
    pytester: pytest.Pytester, run: Run, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[str] = []
    real = build_wheel  # as _wheelcache.py imported it

    def counting(project: Path, *args: Any, **kwargs: Any) -> Any:
        builds.append(project.name)
        return real(project, *args, **kwargs)

    monkeypatch.setattr(wheelcache_module, "build_wheel", counting)
    make_project(pytester.path, "rootproj", 42)
    make_project(pytester.path / "tests" / "sub" / "other", "otherproj", 7)
    body = """
        import pytest

        def value(env, module):
            code = f"import {module}; print({module}.VALUE)"
            return env.run("python", "-c", code).stdout.strip()

        @pytest.mark.cowenv(project=True)
        def test_{n}_root(cowenv):
            assert value(cowenv, "rootproj") == "42"
            assert cowenv.template.resolved["rootproj"] == "0.1"

        @pytest.mark.cowenv("alpha==1.0", project="sub/other")
        def test_{n}_relative(cowenv):
            assert value(cowenv, "otherproj") == "7"
        """
    pytester.makepyfile(
        **{
            "tests/test_a": body.replace("{n}", "a"),
            "tests/test_b": body.replace("{n}", "b"),
        }
    )
    result = run("tests", cache=cache)
    result.assert_outcomes(passed=4)
    assert sorted(builds) == ["other", pytester.path.name]
    assert any(line.startswith("templates built: 2") for line in summary(result))
    again = run("tests", cache=cache)
    again.assert_outcomes(passed=4)
    assert len(builds) == 2  # unchanged sources: the next run reuses both templates
    assert any(line.startswith("templates reused: 2") for line in summary(again))


def test_cache_inside_the_project_is_refused(pytester: pytest.Pytester, run: Run) -> None:
    make_project(pytester.path, "rootproj", 1)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.cowenv(project=True)
        def test_project(cowenv): pass
        """
    )
    result = run(cache=pytester.path / ".cowenv")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*: the cache dir */.cowenv is inside this project; pick a *"])


# --- options -------------------------------------------------------------------------------


def header(result: pytest.RunResult) -> str:
    lines = [line for line in result.outlines if line.startswith("cowenv: dir=")]
    assert len(lines) == 1, result.outlines
    return lines[0]


def test_cli_beats_env_beats_ini(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("PYTEST_COWENV_DIR")
    pytester.makeini("[pytest]\ncowenv_dir = from-ini\ncowenv_link_mode = copy\ncowenv_pool = 3\n")
    pytester.makepyfile("def test_nothing(): pass")
    sub = pytester.mkdir("sub")
    monkeypatch.chdir(sub)  # an ini path is relative to the ini file, not to the cwd
    ini = header(pytester.runpytest_inprocess("..", "--collect-only"))
    assert ini.startswith(f"cowenv: dir={pytester.path / 'from-ini'}, ")
    assert ini.endswith(", strategy=copy, pool=3")
    monkeypatch.setenv("PYTEST_COWENV_DIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("PYTEST_COWENV_LINK_MODE", "hardlink")
    monkeypatch.setenv("PYTEST_COWENV_POOL", "4")
    env = header(pytester.runpytest_inprocess("..", "--collect-only"))
    assert env.startswith(f"cowenv: dir={tmp_path / 'from-env'}, ")
    assert env.endswith(", strategy=hardlink, pool=4")
    cli = header(
        pytester.runpytest_inprocess(
            "..",
            "--collect-only",
            "--cowenv-dir=from-cli",
            "--cowenv-link-mode=clone",
            "--cowenv-pool=0",
        )
    )
    assert cli.startswith(f"cowenv: dir={sub / 'from-cli'}, ")
    assert cli.endswith(", strategy=clone, pool=off")


@pytest.mark.parametrize(
    ("source", "value", "message"),
    [
        ("cli", "--cowenv-link-mode=fast", "--cowenv-link-mode: 'fast' is not one of "),
        ("env", "PYTEST_COWENV_LINK_MODE=fast", "PYTEST_COWENV_LINK_MODE: 'fast' is not one of "),
        ("ini", "cowenv_link_mode = fast", "ini cowenv_link_mode: 'fast' is not one of "),
        ("cli", "--cowenv-keep=some", "--cowenv-keep: 'some' is not one of none, failed, all"),
        ("env", "PYTEST_COWENV_POOL=-1", "PYTEST_COWENV_POOL: '-1' is not a whole number"),
        ("cli", "--cowenv-dir=/no/such/parent/cache", "--cowenv-dir: the parent of "),
    ],
)
def test_bad_option_values_are_usage_errors(
    source: str,
    value: str,
    message: str,
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    args = []
    if source == "cli":
        args.append(value)
    elif source == "env":
        monkeypatch.setenv(*value.split("=", 1))
    else:
        pytester.makeini(f"[pytest]\n{value}\n")
    result = pytester.runpytest_inprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert message in err, err
    if "link-mode" in message or "link_mode" in message:
        assert "auto, snapshot, clone, hardlink, copy" in err
    assert_no_frames(result)


def test_markers_lists_the_full_signature(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess("--markers")
    signature = (
        "cowenv(*requirements, python=None, project=False, link_mode=None, pip=False, "
        "groups=(), extras=(), lock=None, resolution=None, exclude_newer=None, matrix=None)"
    )
    result.stdout.fnmatch_lines([f"@pytest.mark.{signature}: *"])
    assert MARKER_DOC.startswith(signature)


KEEP_TESTS = """
import pytest

pytestmark = pytest.mark.cowenv("alpha==1.0")

def test_pass(cowenv):
    (cowenv.path / "owner").write_text("pass")

def test_fail(cowenv):
    (cowenv.path / "owner").write_text("fail")
    assert False
"""


@pytest.mark.parametrize("keep", ["failed", "all"])
def test_keep_keeps_clones_and_prints_where(
    keep: str, pytester: pytest.Pytester, run: Run, cache: Path
) -> None:
    pytester.makepyfile(KEEP_TESTS)
    result = run(f"--cowenv-keep={keep}", "-rA", cache=cache)
    result.assert_outcomes(passed=1, failed=1)
    printed = re.findall(r"^clone kept at (\S+)$", result.stdout.str(), re.MULTILINE)
    owners = sorted((Path(path) / "owner").read_text() for path in set(printed))
    assert owners == (["fail"] if keep == "failed" else ["fail", "pass"])
    kept = sorted(p for p in (cache / "kept").iterdir())
    assert kept == sorted(Path(p) for p in set(printed))
    assert list((cache / "clones").iterdir()) == []
    # The failing test's own report section says where its clone is.
    result.stdout.fnmatch_lines(["*_ test_fail _*", "*- cowenv -*", "clone kept at *"])


def test_xdist_shares_templates_and_rebuild_runs_once(
    pytester: pytest.Pytester,
    run: Run,
    cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("xdist")
    # Every process writes down the moment before which templates count as stale.
    log = tmp_path / "rebuild-log"
    log.mkdir()
    monkeypatch.setenv("REBUILD_LOG", str(log))
    pytester.makeconftest(
        """
        import os, pathlib, pytest
        from pytest_cowenv.plugin import options_key

        @pytest.hookimpl(trylast=True)
        def pytest_configure(config):
            name = getattr(config, "workerinput", {}).get("workerid", "controller")
            log = pathlib.Path(os.environ["REBUILD_LOG"], name)
            log.write_text(repr(config.stash[options_key].rebuild_before))
        """
    )
    pytester.makepyfile(
        """
        import os, pytest

        @pytest.mark.parametrize("n", range(6))
        def test_clone(cowenv_factory, n):
            env = cowenv_factory("alpha==1.0" if n % 2 else "gamma")
            assert not list(env.path.glob("owner-*")), "a clone shared with another test"
            (env.path / f"owner-{n}").write_text(os.environ["PYTEST_XDIST_WORKER"])
        """
    )

    def templates() -> dict[str, float]:
        metas = [json.loads(m.read_text()) for m in (cache / "templates").glob("*.json")]
        return {meta["key"]: meta["created"] for meta in metas}

    first = run("-n", "2", cache=cache, subprocess=True)
    first.assert_outcomes(passed=6)
    lines = summary(first)  # exactly one section, from the controller
    assert any(line.startswith("templates built: 2") for line in lines), lines
    assert any(re.match(r"clones: 6\b", line) for line in lines), lines
    built = templates()
    assert len(built) == 2
    assert len([p for p in (cache / "templates").iterdir() if p.is_dir()]) == 2
    rebuilt = run("-n", "2", "--cowenv-rebuild", cache=cache, subprocess=True)
    rebuilt.assert_outcomes(passed=6)
    moments = {p.name: float(p.read_text()) for p in log.iterdir()}
    assert sorted(moments) == ["controller", "gw0", "gw1"]
    assert len(set(moments.values())) == 1 and moments["controller"] > 0  # the controller's
    assert any(line.startswith("templates built: 2") for line in summary(rebuilt))
    after = templates()
    assert after.keys() == built.keys()
    assert all(after[key] > built[key] for key in built)
    assert len([p for p in (cache / "templates").iterdir() if p.is_dir()]) == 2
    assert list((cache / "clones").iterdir()) == []


# --- report ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fs_name", "expected"),
    [
        ("btrfs", "fs=btrfs, strategy=snapshot,"),
        ("xfs", "fs=xfs, strategy=clone,"),
        ("ext4", "fs=ext4, strategy=copy (ext4 cannot clone: E"),
    ],
)
def test_header_says_what_auto_does_here(
    fs_name: str, expected: str, pytester: pytest.Pytester, request: pytest.FixtureRequest
) -> None:
    root: Path = request.getfixturevalue(f"{fs_name}_dir")
    pytester.makepyfile("def test_nothing(): pass")
    first = header(pytester.runpytest_inprocess("--collect-only", f"--cowenv-dir={root / 'c'}"))
    assert first.startswith(f"cowenv: dir={root / 'c'}, {expected}")
    assert (root / "c" / "fs-probe.json").is_file()  # the next run reads the answer
    again = header(pytester.runpytest_inprocess("--collect-only", f"--cowenv-dir={root / 'c'}"))
    assert again == first
    explicit = pytester.runpytest_inprocess(
        "--collect-only", f"--cowenv-dir={root / 'c'}", "--cowenv-link-mode=copy"
    )
    assert header(explicit).endswith(f"fs={fs_name}, strategy=copy, pool=2")


def test_unused_plugin_imports_no_core(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    code = (
        "import sys, pytest\n"
        "pytest.main(['--collect-only', '-p', 'no:cacheprovider'])\n"
        "print(sorted(m for m in sys.modules if m.startswith('pytest_cowenv')))\n"
    )
    outputs = []
    for _ in range(2):  # the first run probes the cache's filesystem, the next ones do not
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=pytester.path, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout.splitlines()[-1])
    assert "cowenv: dir=" in proc.stdout
    loaded = [  # _defaults holds constants only
        "pytest_cowenv",
        "pytest_cowenv._defaults",
        "pytest_cowenv._names",  # the exact names of cache entries (store and marker)
        "pytest_cowenv._owner",  # the start-up vets the cache dir: store and its small leaves
        "pytest_cowenv.errors",
        "pytest_cowenv.marker",
        "pytest_cowenv.matrix",  # pytest glue of versions() and matrix=: no core at import
        "pytest_cowenv.plugin",
        "pytest_cowenv.report",
        "pytest_cowenv.store",
    ]
    assert outputs[1] == str(loaded)


def test_core_loads_without_assert_rewriting(pytester: pytest.Pytester) -> None:
    """pytest marks our package for assertion rewriting (a plugin's distribution); the
    modules imported after the plugin loads bypass the rewriting hook, the user's tests do
    not. (Fails without the fix only where pytest marks this editable install: 8 on.)"""
    pytester.makepyfile("def test_user():\n    assert [1, 2] == [1, 3]\n")
    code = (
        "import sys, pytest\n"
        "pytest.main(['-p', 'no:cacheprovider'])\n"
        "import pytest_cowenv.session\n"
        "print({m: type(sys.modules[m].__loader__).__name__\n"
        "       for m in sorted(sys.modules) if m.startswith('pytest_cowenv.')})\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=pytester.path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "At index 1 diff: 2 != 3" in proc.stdout  # the user's assert is still rewritten
    loaders = ast.literal_eval(proc.stdout.splitlines()[-1])
    # Loaded before: rewritten where pytest marks an editable install (pytest 8 on).
    with_plugin = ("pytest_cowenv.plugin", "pytest_cowenv._defaults")
    after = {m: loader for m, loader in loaders.items() if m not in with_plugin}
    assert {"pytest_cowenv.store", "pytest_cowenv.session", "pytest_cowenv.clone"} <= set(after)
    assert set(after.values()) == {"SourceFileLoader"}


def test_worker_stats_merge_field_by_field() -> None:
    """What xdist workers send (``as_dict``) adds up in the controller's ``Stats``: every
    field, by its kind, and plain data on the wire."""
    from pytest_cowenv.session import Stats

    worker = Stats()
    worker.clones, worker.shared_bytes = 2, 10
    worker.clone_ms, worker.reused, worker.kept = [1.0, 2.0], ["a"], ["k"]
    worker.strategies["snapshot"] = 2
    worker.discarded["changed"] = 1
    worker.built, worker.compiled_behind = {"a": 1.5}, {"a": 0.5}
    sent = worker.as_dict()
    assert set(sent) == set(vars(Stats()))  # every field goes
    assert json.loads(json.dumps(sent)) == sent  # and as plain data
    controller = Stats()
    controller.merge(sent)
    controller.merge(sent)
    assert (controller.clones, controller.shared_bytes) == (4, 20)
    assert controller.clone_ms == [1.0, 2.0, 1.0, 2.0]
    assert (controller.reused, controller.kept) == (["a"], ["k", "k"])  # a spec once
    assert controller.strategies == Counter(snapshot=4)
    assert controller.discarded == Counter(changed=2)
    assert (controller.built, controller.compiled_behind) == ({"a": 1.5}, {"a": 0.5})


# --- lifecycle -------------------------------------------------------------------------------


def test_teardown_removes_clones_and_start_removes_stale_ones(
    pytester: pytest.Pytester, run: Run, cache: Path
) -> None:

    from pytest_cowenv._owner import current
    from pytest_cowenv.store import prepare_root

    prepare_root(cache)  # a cache of ours, where earlier runs left folders
    stale = cache / "clones" / f"run-{current()._replace(pid=999999999, ticks=1).token()}-abcdef"
    (stale / "env-1" / "bin").mkdir(parents=True)
    live = cache / "clones" / f"run-{current().token()}-abcdef"
    live.mkdir()
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.cowenv("alpha==1.0")
        def test_uses_a_clone(cowenv):
            assert cowenv.path.is_dir()
        """
    )
    run(cache=cache).assert_outcomes(passed=1)
    assert not stale.exists()
    assert list((cache / "clones").iterdir()) == [live]  # only a live process's folder stays
    live.rmdir()


def test_ctrl_c_leaves_only_kept_clones(
    pytester: pytest.Pytester, wheelhouse: Path, cache: Path, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    pytester.makepyfile(
        """
        import os, pathlib, time, pytest

        pytestmark = pytest.mark.cowenv("alpha==1.0")

        def test_kept(cowenv):
            pass

        def test_interrupted(cowenv, cowenv_factory):
            cowenv_factory("gamma")
            ready = pathlib.Path(os.environ["COWENV_READY"])
            ready.with_suffix(".tmp").write_text(str(cowenv.path))
            ready.with_suffix(".tmp").rename(ready)  # seen only once written
            # Short naps: a Ctrl-C caught just before one long sleep began would not
            # interrupt it (CPython looks at caught signals when a sleep is interrupted).
            for _ in range(1200):
                time.sleep(0.1)
        """
    )
    args = ["-p", "no:cacheprovider", f"--cowenv-dir={cache}", "--cowenv-keep=all"]
    args += [f"--cowenv-find-links={wheelhouse}", "--cowenv-offline", "-p", "no:xdist"]

    def default_sigint() -> None:  # a runner may have started us with SIGINT ignored
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", *args],
        cwd=pytester.path,
        env={**os.environ, "COWENV_READY": str(ready)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=default_sigint,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the test never started"
            time.sleep(0.05)
        clone = Path(ready.read_text())
        os.killpg(proc.pid, signal.SIGINT)
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert "KeyboardInterrupt" in out
    assert not clone.exists()
    assert list((cache / "clones").iterdir()) == [], out
    assert len(list((cache / "kept").iterdir())) == 1  # test_kept's, as asked

"""The CowEnv handle: paths, environment variables, run(), install(), runpytest().

Environments come straight from a :class:`CowEnvSession` (no pytester run) over the offline
wheelhouse, on btrfs when it is mounted so that clones are snapshots.
"""

from __future__ import annotations

import os
import re
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from _dist_wheels import repack_with_dependencies
from _helpers import fast_dir, remove_cache
from _wheels import make_wheel, standard_wheelhouse
from conftest import skip_without_uv
from pytest_cowenv import (
    CommandError,
    CowEnv,
    CowEnvError,
    CowEnvWarning,
    LinkMode,
    remove_tree,
)
from pytest_cowenv import env as env_module
from pytest_cowenv._install import IndexOptions, uv_binary
from pytest_cowenv.session import CowEnvSession, Settings


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The standard wheelhouse plus pytest and its dependencies, repacked from this Python."""
    directory = standard_wheelhouse(tmp_path_factory.mktemp("wheels"))
    return repack_with_dependencies("pytest", directory)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Iterator[CowEnvSession]:
    root = fast_dir(tmp_path_factory, "cowenv-env")
    index = IndexOptions(find_links=(str(wheels),), offline=True)
    cow = CowEnvSession(Settings(root=str(root / "cache"), index=index, pool=0))
    yield cow
    cow.close()
    remove_cache(root / "cache")
    remove_tree(root)


@pytest.fixture
def make_env(session: CowEnvSession) -> Iterator[Callable[..., CowEnv]]:
    """``make_env(*requirements)``: a fresh clone, released after the test."""
    made: list[CowEnv] = []

    def make(*requirements: str) -> CowEnv:
        env = session.acquire(session.spec(requirements), "test-env")
        made.append(env)
        return env

    yield make
    for env in made:
        session.release(env)


def test_paths_are_paths_of_a_working_environment(make_env: Callable[..., CowEnv]) -> None:
    env = make_env("alpha==1.0")
    for path in (env.path, env.python, env.bin_dir, env.site_packages):
        assert isinstance(path, Path)
        assert path.exists()
    assert env.bin_dir == env.path / "bin"
    assert env.site_packages.name == "site-packages"
    assert (env.site_packages / "alpha" / "__init__.py").is_file()
    out = env.run("python", "-c", "import sys; print(sys.prefix)").stdout.strip()
    assert Path(out) == env.path


def test_strategy_and_template_describe_the_clone(make_env: Callable[..., CowEnv]) -> None:
    env = make_env("alpha==1.0")
    assert env.strategy in ("snapshot", "clonefile", "clone", "hardlink", "copy")
    if os.environ.get("COWENV_TEST_BTRFS"):
        assert env.strategy == "snapshot"
    template = env.template
    assert re.fullmatch(r"[0-9a-f]{24}", template.key)
    assert template.requirements == ("alpha==1.0",)
    assert template.resolved["alpha"] == "1.0"
    assert template.build_seconds > 0
    assert env.path != template.path


def test_env_has_its_bin_first_and_nothing_of_the_outer_python(
    make_env: Callable[..., CowEnv], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    outer = tmp_path / "outer-venv"
    (outer / "bin").mkdir(parents=True)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "pythonpath"))
    monkeypatch.setenv("PYTHONHOME", str(tmp_path / "pythonhome"))
    monkeypatch.setenv("VIRTUAL_ENV", str(outer))
    monkeypatch.setenv("PATH", os.pathsep.join([str(outer / "bin"), os.environ["PATH"]]))
    env = make_env("alpha==1.0")
    variables = env.env
    assert variables["VIRTUAL_ENV"] == str(env.path)
    assert variables["PATH"].split(os.pathsep)[0] == str(env.bin_dir)
    assert str(outer / "bin") not in variables["PATH"].split(os.pathsep)
    assert "PYTHONPATH" not in variables and "PYTHONHOME" not in variables
    # The child really starts clean: PYTHONHOME pointing nowhere would break it.
    code = "import os, sys; print(sys.prefix); print(os.environ.get('PYTHONPATH'))"
    lines = env.run("python", "-c", code).stdout.split()
    assert lines == [str(env.path), "None"]


def test_run_resolves_commands_in_bin_first(
    make_env: Callable[..., CowEnv], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    impostor = tmp_path / "alpha"
    impostor.write_text("#!/bin/sh\necho impostor\n")
    impostor.chmod(0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path), os.environ["PATH"]]))
    env = make_env("alpha==1.0")
    proc = env.run("alpha")
    assert isinstance(proc, subprocess.CompletedProcess)
    assert proc.stdout == "alpha 1.0\n"
    assert proc.returncode == 0
    assert env.run("sh", "-c", "echo from-path").stdout == "from-path\n"  # then PATH


def test_failing_command_raises_with_command_code_and_output(
    make_env: Callable[..., CowEnv],
) -> None:
    env = make_env()
    code = "import sys; print('to-stdout'); print('to-stderr', file=sys.stderr); sys.exit(3)"
    with pytest.raises(CommandError) as info:
        env.run("python", "-c", code)
    assert info.value.returncode == 3
    assert isinstance(info.value, CowEnvError)
    text = str(info.value)
    assert "python" in text and "exited with 3" in text
    assert "to-stdout" in text and "to-stderr" in text
    assert env.run("python", "-c", code, check=False).returncode == 3
    with pytest.raises(CommandError, match="no-such-command: command not found") as missing:
        env.run("no-such-command")
    assert missing.value.returncode == 127


def test_local_wheel_installs_in_process_into_this_clone_only(
    make_env: Callable[..., CowEnv], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    wheel = make_wheel(
        tmp_path,
        "delta",
        "1.0",
        modules={"delta.py": "import alpha\nVERSION = '1.0'\n"},
        requires=["alpha"],
        scripts={"delta": "delta:VERSION.upper"},
    )
    env, sibling = make_env("alpha==1.0"), make_env("alpha==1.0")

    def no_subprocess(*args: object) -> None:
        raise AssertionError("a self-contained wheel must not need an installer process")

    monkeypatch.setattr(env_module, "run_installer", no_subprocess)
    env.install(wheel)
    assert env.run("python", "-c", "import delta; print(delta.VERSION)").stdout == "1.0\n"
    # Its console script is relocatable like the template's (a kept clone is moved).
    assert (env.bin_dir / "delta").read_text().startswith("#!/bin/sh\n")
    probe = sibling.run("python", "-c", "import delta", check=False)
    assert probe.returncode == 1 and "No module named 'delta'" in probe.stderr


def test_a_wheels_own_requirements_decide_not_a_vendored_ones(
    make_env: Callable[..., CowEnv], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A wheel may carry vendored ``.dist-info`` folders (setuptools does): its own
    requirements are in the top-level one, and one it lacks sends it to the installer."""
    wheel = make_wheel(
        tmp_path,
        "delta",
        "1.0",
        modules={
            "delta/__init__.py": "import gamma\n",
            # listed first in the archive, and requiring nothing
            "delta/_vendor/vend-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: vend\n",
        },
        requires=["gamma"],
    )
    env = make_env("alpha==1.0")
    installs: list[list[str]] = []

    def record(command: list[str], *args: object) -> None:
        installs.append(command)

    monkeypatch.setattr(env_module, "run_installer", record)
    env.install(wheel)
    assert len(installs) == 1 and str(wheel) in installs[0]
    assert not list(env.site_packages.glob("delta*")), "not unpacked without its requirement"


def test_wheel_of_an_installed_project_goes_through_the_installer(
    make_env: Callable[..., CowEnv], wheels: Path
) -> None:
    env = make_env("alpha==1.0")
    env.install(wheels / "alpha-2.0-py3-none-any.whl")  # an upgrade needs a real installer
    assert env.run("alpha").stdout == "alpha 2.0\n"
    assert [p.name for p in env.site_packages.glob("alpha-*.dist-info")] == ["alpha-2.0.dist-info"]


@pytest.mark.parametrize("route", ["uv", "pip"])
def test_requirement_installs_into_this_clone_only(
    route: str, make_env: Callable[..., CowEnv], monkeypatch: pytest.MonkeyPatch
) -> None:
    if route == "pip":
        monkeypatch.setenv("PYTEST_COWENV_NO_UV", "1")
        monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
        monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    else:
        skip_without_uv()
    uv_binary.cache_clear()  # it is read once per process; again after the test
    try:
        env, sibling = make_env("alpha==1.0"), make_env("alpha==1.0")
        env.install("beta", "gamma==0.5")
    finally:
        uv_binary.cache_clear()
    out = env.run("python", "-c", "import beta, gamma; print(beta.VERSION, gamma.VERSION)")
    assert out.stdout == "1.0 0.5\n"
    installer = (next(env.site_packages.glob("gamma-*.dist-info")) / "INSTALLER").read_text()
    assert installer.strip() == route
    assert sibling.run("python", "-c", "import gamma", check=False).returncode == 1


def test_failed_install_names_the_requirement(make_env: Callable[..., CowEnv]) -> None:
    env = make_env()
    with pytest.raises(CowEnvError, match=r"^no-such-dist: install into .* failed"):
        env.install("no-such-dist")


def test_runpytest_is_a_clean_room(
    make_env: Callable[..., CowEnv], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    plugin = make_wheel(
        tmp_path / "dist",
        "pytest-inner",
        "1.0",
        modules={
            "pytest_inner.py": "def pytest_report_header():\n    return 'inner plugin loaded'\n",
            "pytest_inner-1.0.dist-info/entry_points.txt": "[pytest11]\ninner = pytest_inner\n",
        },
    )
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_inner.py").write_text(
        "import importlib.util\n\n"
        "def test_only_env_plugins():\n"
        "    assert importlib.util.find_spec('xdist') is None\n"
        "    assert importlib.util.find_spec('leaky') is None\n\n"
        "def test_two():\n    pass\n"
    )
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "leaky.py").write_text("")  # the current directory must not be importable
    monkeypatch.setenv("PYTEST_ADDOPTS", "--no-such-option")
    monkeypatch.setenv("PYTEST_PLUGINS", "no_such_plugin_module")
    monkeypatch.setenv("PY_COLORS", "1")
    env = make_env("pytest")
    env.install(plugin)
    result = env.runpytest("-p", "no:cacheprovider", str(project), cwd=elsewhere)
    assert isinstance(result, pytest.RunResult)
    result.assert_outcomes(passed=2)
    assert result.ret == 0
    assert result.parseoutcomes() == {"passed": 2}
    result.stdout.fnmatch_lines(["inner plugin loaded", "plugins: inner-1.0"])
    extra = env.runpytest("-q", "test_inner.py::test_two", cwd=project, env={"PY_COLORS": "0"})
    extra.assert_outcomes(passed=1)


def test_runpytest_without_pytest_says_what_to_add(make_env: Callable[..., CowEnv]) -> None:
    env = make_env("alpha==1.0")
    with pytest.raises(CowEnvError, match=r"^pytest is not installed in this environment"):
        env.runpytest()


@pytest.mark.parametrize(
    ("fs_name", "expected"),
    [("btrfs", "snapshot"), ("xfs", "clone"), ("ext4", "copy")],
)
def test_strategy_follows_the_filesystem(
    fs_name: str, expected: str, request: pytest.FixtureRequest, wheels: Path
) -> None:
    root: Path = request.getfixturevalue(f"{fs_name}_dir")
    cow = CowEnvSession(Settings(root=str(root / "cache"), pool=0))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            env = cow.acquire(cow.spec(()), "fs")
        fallbacks = [w for w in caught if issubclass(w.category, CowEnvWarning)]
        # ext4: one "copied instead", from the caller's line (not from session.py)
        assert [w.filename for w in fallbacks] == ([__file__] if expected == "copy" else [])
        assert env.strategy == expected
        assert env.run("python", "-c", "print(1)").stdout == "1\n"
        cow.release(env)
        assert not env.path.exists()
    finally:
        cow.close()
        remove_cache(root / "cache")


def test_explicit_link_mode_is_honoured(session: CowEnvSession) -> None:
    env = session.acquire(session.spec(()), "copy", LinkMode.COPY)
    try:
        assert env.strategy == "copy"
        assert env.run("python", "-c", "print(2)").stdout == "2\n"
    finally:
        session.release(env)

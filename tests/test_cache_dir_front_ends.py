"""A cache directory that is not ours, as each front end meets it: pytest stops at start-up
with a usage error, every ``pytest-cowenv`` command exits 1; one line, naming the front end's
own option; nothing created or deleted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CACHEDIR_TAG, MARKER = "CACHEDIR.TAG", "pytest-cowenv-cache.json"  # what users see

LOOK_ALIKES = (
    "tmp/x.123.y/",
    "templates/notes/",
    "templates/a.json",
    "kept/something",
    "clones/x-1-2/",
)


def look_alike_dir(root: Path) -> Path:
    """A user's directory whose names look like a cache's: nothing here is ours."""
    for name in LOOK_ALIKES:
        path = root / name.rstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir()
            (path / "precious.txt").write_text("mine")
        else:
            path.write_text("mine")
    return root


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_COWENV_DIR"}
    return subprocess.run(
        [sys.executable, "-m", "pytest_cowenv", *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("PYTEST_COWENV_", "PYTEST_XDIST_")) or name == "PYTEST_ADDOPTS":
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


# -- the plugin --------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["cli", "env", "ini"])
def test_pytest_refuses_a_directory_that_is_not_ours_at_start_up(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    theirs = look_alike_dir(pytester.path / "theirs")
    before = tree(theirs)
    pytester.makepyfile("def test_never_runs(cowenv): pass\ndef test_nothing(): pass")
    args = ["-p", "no:cacheprovider"]
    option = {"cli": "--cowenv-dir", "env": "PYTEST_COWENV_DIR", "ini": "ini cowenv_dir"}[source]
    if source == "cli":
        args.append(f"--cowenv-dir={theirs}")
    elif source == "env":
        monkeypatch.setenv("PYTEST_COWENV_DIR", str(theirs))
    else:
        pytester.makeini("[pytest]\ncowenv_dir = theirs\n")
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    (line,) = [ln for ln in result.errlines if ln.strip()]
    assert line.startswith(f"ERROR: cache dir {theirs} is not a pytest-cowenv cache"), line
    assert f"choose an empty or new cache directory ({option})" in line, line
    assert "Traceback" not in result.stderr.str() and "test_nothing" not in result.stdout.str()
    assert tree(theirs) == before


def test_pytest_makes_a_missing_or_empty_directory_its_cache(pytester: pytest.Pytester) -> None:
    (pytester.path / "empty").mkdir()
    pytester.makepyfile("def test_nothing(): pass")
    for name in ("empty", "new"):
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--cowenv-dir={name}")
        result.assert_outcomes(passed=1)
        assert (pytester.path / name / MARKER).is_file()
        assert (pytester.path / name / CACHEDIR_TAG).is_file()


def test_a_cache_error_in_a_test_names_the_plugins_option(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    cache = tmp_path / "c"
    pytester.makepyfile(
        f"""
        import os

        def test_first():
            os.rename({str(cache)!r}, {str(cache)!r} + ".moved")  # gone after the start-up
            os.mkdir({str(cache)!r})
            open(os.path.join({str(cache)!r}, "notes"), "w").close()

        def test_needs_an_env(cowenv):
            pass
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:randomly", f"--cowenv-dir={cache}"
    )
    result.assert_outcomes(passed=1, errors=1)
    out = result.stdout.str()
    assert "is not a pytest-cowenv cache" in out and "(--cowenv-dir)" in out, out


# -- the command line --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["list"], ["info"], ["clean"], ["clean", "--kept"], ["prune", "--all"], ["build", "alpha"]],
)
def test_every_command_refuses_a_directory_that_is_not_ours(
    tmp_path: Path, command: list[str]
) -> None:
    theirs = look_alike_dir(tmp_path / "theirs")
    before = tree(theirs)
    proc = cli(*command, "--dir", str(theirs))
    assert proc.returncode == 1 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"pytest-cowenv {command[0]}: error: cache dir {theirs} is not a")
    assert "choose an empty or new cache directory (--dir)" in line and "--cowenv" not in line
    assert tree(theirs) == before


def test_looking_at_a_cache_of_the_previous_version_changes_nothing(tmp_path: Path) -> None:
    old = tmp_path / "old"
    for sub in ("templates", "clones", "tmp", "pyc"):
        (old / sub).mkdir(parents=True)
    (old / "fs-probe.json").write_text("{}")
    before = tree(old)
    assert cli("list", "--dir", str(old)).returncode == 0
    assert cli("info", "--dir", str(old)).returncode == 0
    assert tree(old) == before
    assert cli("clean", "--dir", str(old)).returncode == 0  # tidying it: now it is ours
    assert (old / MARKER).is_file() and (old / CACHEDIR_TAG).is_file()


def test_a_newline_in_a_requirement_or_path_stays_on_one_line(tmp_path: Path) -> None:
    proc = cli("build", "--dir", str(tmp_path / "c"), "al\npha")
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    odd = tmp_path / "odd\ndir"
    odd.mkdir()
    (odd / "notes").write_text("x")
    proc = cli("list", "--dir", str(odd))
    assert proc.returncode == 1 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert repr(str(odd)) in proc.stderr


def test_the_copy_fallback_warning_names_the_plugins_option(
    pytester: pytest.Pytester, ext4_dir: Path, tmp_path: Path
) -> None:
    from _wheels import standard_wheelhouse

    wheels = standard_wheelhouse(tmp_path / "wheels")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.cowenv("alpha==1.0")
        def test_it(cowenv):
            pass
        """
    )
    pytester._monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    pytester._monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        f"--cowenv-dir={ext4_dir / 'c'}",
        f"--cowenv-find-links={wheels}",
        "--cowenv-offline",
    )
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert "Put the cache directory (--cowenv-dir) on btrfs" in out, out

"""Real, offline builds from the specs projects write: hashed requirement files, a run-wide
constraints file, dependency groups, a pylock.toml, ini ``-r`` lines, and their mistakes,
in one inner run (each template is built once). The uv route (uv.lock, resolution) runs
only with uv."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from _helpers import fast_cache, internal_frames
from _wheels import standard_wheelhouse
from conftest import skip_without_uv


@pytest.fixture
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from fast_cache(tmp_path_factory, "cowenv-specfiles")


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Offline means offline: none of the machine's pip or uv settings reach the inner run."""
    for name in list(os.environ):
        # PYTEST_COWENV_NO_UV stays: the route under test is the caller's.
        prefixes = ("PYTEST_COWENV_", "PYTEST_XDIST_", "PIP_", "UV_")
        if name.startswith(prefixes) and name != "PYTEST_COWENV_NO_UV":
            monkeypatch.delenv(name)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("UV_NO_CONFIG", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("COLUMNS", "400")  # the short summary keeps each whole first line


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


PYPROJECT = """\
[project]
name = "demo"
version = "0.1"
dependencies = ["beta"]

[project.optional-dependencies]
cli = ["gamma"]

[dependency-groups]
test = ["alpha", {include-group = "more"}]
more = ["gamma"]
"""

TESTS = """
import json
import pytest

CODE = ("import json, importlib.metadata as m; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")

def versions(env):
    return json.loads(env.run("python", "-c", CODE).stdout)

@pytest.mark.cowenv("-r requirements/hashed.txt")
def test_hashed(cowenv):
    assert versions(cowenv) == {"alpha": "1.0", "beta": "1.0"}

@pytest.mark.cowenv(groups=("test",))
def test_group(cowenv):
    assert versions(cowenv) == {"alpha": "1.0", "gamma": "0.5"}  # alpha<2: run-wide pins

@pytest.mark.cowenv(lock="pylock.toml")
def test_lock(cowenv):
    assert versions(cowenv) == {"alpha": "1.0", "beta": "1.0"}
    # alpha's lock entry names its index: installed as from it (`pip freeze`: alpha==1.0);
    # beta's names only its file, so its direct URL stays, with the RECORD that lists it.
    code = ("import importlib.metadata as m, sys; d = m.distribution(sys.argv[1]); "
            "print(d.read_text('direct_url.json') is None, "
            "any(f.name == 'direct_url.json' for f in d.files))")
    assert cowenv.run("python", "-c", code, "alpha").stdout.split() == ["True", "False"]
    assert cowenv.run("python", "-c", code, "beta").stdout.split() == ["False", "True"]

@pytest.mark.cowenv("-r requirements/bad-hash.txt")
def test_hash_mismatch(cowenv): pass

@pytest.mark.cowenv("-r requirements/missing.txt")
def test_missing_file(cowenv): pass

@pytest.mark.cowenv("-r requirements/loop-a.txt")
def test_cycle(cowenv): pass

@pytest.mark.cowenv(groups=("docs",))
def test_unknown_group(cowenv): pass

@pytest.mark.cowenv(extras=("gui",))
def test_unknown_extra(cowenv): pass

@pytest.mark.cowenv(lock="pylock.broken.toml")
def test_broken_lock(cowenv): pass
"""

SUB_TESTS = """
import pytest

def test_from_ini(cowenv):
    assert cowenv.run("python", "-c", "import alpha; print(alpha.VERSION)").stdout.strip() == "1.0"

@pytest.mark.cowenv("-r ../requirements/plain.txt")
def test_same_file_from_the_test_dir(cowenv):
    assert cowenv.run("python", "-c", "import alpha; print(alpha.VERSION)").stdout.strip() == "1.0"
"""

# test name -> words the first line of its error must hold
ERRORS = {
    "hash_mismatch": ["ash mismatch", "gamma==0.5"],  # pip: "hash mismatch", uv: "Hash ..."
    "missing_file": ["-r requirements/missing.txt", "no such file"],
    "cycle": ["include each other", "loop-a.txt"],
    "unknown_group": ["'docs'", "it has: more, test"],
    "unknown_extra": ["'gui'", "it has: cli"],
    "broken_lock": ["pylock.broken.toml", "not a valid lock file"],
}


def make_project(root: Path, wheels: Path) -> None:
    req = root / "requirements"
    req.mkdir()
    alpha1, beta = wheels / "alpha-1.0-py3-none-any.whl", wheels / "beta-1.0-py3-none-any.whl"
    (req / "hashed.txt").write_text(
        "# compiled, with hashes\n"
        f"alpha==1.0 \\\n    --hash=sha256:{sha256(alpha1)}\n"
        f"-r more/beta.txt\n"
    )
    (req / "more").mkdir()
    (req / "more" / "beta.txt").write_text(f"beta==1.0 --hash=sha256:{sha256(beta)}\n")
    (req / "bad-hash.txt").write_text(f"gamma==0.5 --hash=sha256:{'0' * 64}\n")
    (req / "loop-a.txt").write_text("-r loop-b.txt\n")
    (req / "loop-b.txt").write_text("-r loop-a.txt\n")
    (req / "plain.txt").write_text("alpha\n")
    (root / "pins.txt").write_text("alpha<2\n")
    (root / "pyproject.toml").write_text(PYPROJECT)
    entries = []
    for wheel, name in ((alpha1, "alpha"), (beta, "beta")):
        entries += [
            "[[packages]]",
            f'name = "{name}"',
            'version = "1.0"',
            *(['index = "https://packages.example/simple"'] if name == "alpha" else []),
            f'wheels = [{{ url = "{wheel.as_uri()}", hashes = {{ sha256 = "{sha256(wheel)}" }} }}]',
            "",
        ]
    head = ['lock-version = "1.0"', 'created-by = "tests"', ""]
    (root / "pylock.toml").write_text("\n".join(head + entries))
    (root / "pylock.broken.toml").write_text('lock-version = "1.0"\npackages = []\n')


def test_specs_as_projects_write_them(
    pytester: pytest.Pytester, tmp_path: Path, cache: Path
) -> None:
    wheels = standard_wheelhouse(tmp_path / "wheels")
    make_project(pytester.path, wheels)
    pytester.makeini(
        "[pytest]\ncowenv_requirements = -r requirements/plain.txt\ncowenv_constraint = pins.txt\n"
    )
    pytester.makepyfile(test_specs=TESTS)
    sub = pytester.mkdir("sub")
    (sub / "test_sub.py").write_text(SUB_TESTS)
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        "-rA",
        f"--cowenv-dir={cache}",
        f"--cowenv-find-links={wheels}",
        "--cowenv-offline",
        timeout=600,
    )
    out = "\n".join(result.outlines + result.errlines)
    result.assert_outcomes(passed=5, errors=len(ERRORS))
    assert "Traceback" not in out and not internal_frames(out), out
    summary = {
        m.group(1): m.group(2)
        for m in (re.match(r"ERROR \S+::test_(\w+) - (.*)", ln) for ln in result.outlines)
        if m
    }
    for name, words in ERRORS.items():
        for word in words:
            assert word in summary[name], f"{name}: {word!r} not in {summary[name]!r}"
    built = next(line for line in result.outlines if line.startswith("templates built:"))
    for shown in (
        "-r requirements/hashed.txt (",
        "pyproject.toml [group test] (",
        "pylock.toml (",
        "-r requirements/plain.txt (",  # the ini's, from where pytest runs
    ):
        assert shown in built, built
    listed = subprocess.run(
        [sys.executable, "-m", "pytest_cowenv", "list", "--dir", str(cache), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    templates = json.loads(listed.stdout)["templates"]
    # The ini's file and the same file named from sub/ are one template.
    assert len(templates) == 4, [t["describe"] for t in templates]
    assert "-r requirements/hashed.txt" in {t["describe"] for t in templates}


def run_offline(pytester: pytest.Pytester, cache: Path, wheels: Path) -> pytest.RunResult:
    """The inner run, from the wheelhouse ``wheels`` only."""
    return pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        f"--cowenv-dir={cache}",
        f"--cowenv-find-links={wheels}",
        "--cowenv-offline",
        timeout=600,
    )


def test_uv_route_lock_and_resolution(
    pytester: pytest.Pytester, tmp_path: Path, cache: Path
) -> None:
    """A uv.lock made offline by uv, its `test` group, and resolution=lowest."""
    skip_without_uv()
    from pytest_cowenv._install import uv_binary

    uv = uv_binary.__wrapped__()
    assert uv is not None
    wheels = standard_wheelhouse(tmp_path / "wheels")
    (pytester.path / "pyproject.toml").write_text(
        PYPROJECT.replace('test = ["alpha"', 'test = ["alpha==2.0"').replace(
            'version = "0.1"', 'version = "0.1"\nrequires-python = ">=3.9"'
        )
        + "\n[tool.uv]\npackage = false\n"
    )
    subprocess.run(
        [uv, "lock", "--offline", "--no-index", "--find-links", str(wheels), "--quiet"],
        cwd=pytester.path,
        check=True,
    )
    pytester.makepyfile(
        test_uv="""
        import pytest

        def version(env, module):
            code = f"import {module}; print({module}.VERSION)"
            return env.run("python", "-c", code).stdout.strip()

        @pytest.mark.cowenv(lock="uv.lock", groups=("test",))
        def test_locked_group(cowenv):
            assert version(cowenv, "alpha") == "2.0" and version(cowenv, "gamma") == "0.5"
            assert version(cowenv, "beta") == "1.0"  # the project's own dependency

        @pytest.mark.cowenv("alpha", resolution="lowest")
        def test_lowest(cowenv):
            assert version(cowenv, "alpha") == "1.0"
        """
    )
    result = run_offline(pytester, cache, wheels)
    result.assert_outcomes(passed=2)
    assert any("uv.lock [group test]" in line for line in result.outlines), result.outlines


def test_lowest_direct_takes_the_projects_own_requirements_as_direct(
    pytester: pytest.Pytester, tmp_path: Path, cache: Path
) -> None:
    """resolution="lowest-direct" with project=: the project's dependencies (and those of
    the extras asked for) at their lowest, as `uv sync` and tox-uv's lower-bounds runs take
    them; what they need in turn at its highest. uv alone takes a built wheel's dependencies
    as transitive (pytest-asyncio's lower-bounds env got pytest 9.2 for `pytest>=8.4`)."""
    skip_without_uv()
    from test_template import BACKEND

    wheels = standard_wheelhouse(tmp_path / "wheels")
    project = pytester.path / "lowdemo"
    (project / "src" / "lowdemo").mkdir(parents=True)
    (project / "src" / "lowdemo" / "__init__.py").write_text("")
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
        '[project]\nname = "proj"\nversion = "0.1"\ndependencies = ["beta"]\n'
        '[project.optional-dependencies]\ncli = ["alpha>=1.0"]\n'
    )
    declared = (
        "Requires-Dist: beta\\n"  # needs alpha>=1.0 in turn
        "Requires-Dist: alpha>=1.0; extra == 'cli'\\n"
        "Requires-Dist: gamma; python_version < '3'\\n"  # false everywhere we run
        "Provides-Extra: cli\\n"
    )
    backend = BACKEND.replace('Version: {version}\\n"', "Version: {version}\\n" + declared + '"')
    assert backend != BACKEND
    (project / "backend.py").write_text(backend)
    pytester.makepyfile(
        test_low="""
        import json
        import pytest

        CODE = ("import json, importlib.metadata as m; "
                "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")

        def versions(env):
            return json.loads(env.run("python", "-c", CODE).stdout)

        @pytest.mark.cowenv(project="lowdemo", extras=("cli",), resolution="lowest-direct")
        def test_with_the_extra(cowenv):
            assert versions(cowenv) == {"alpha": "1.0", "beta": "1.0", "proj": "0.1"}

        @pytest.mark.cowenv(project="lowdemo", resolution="lowest-direct")
        def test_without_it(cowenv):
            assert versions(cowenv) == {"alpha": "2.0", "beta": "1.0", "proj": "0.1"}
        """
    )
    result = run_offline(pytester, cache, wheels)
    result.assert_outcomes(passed=2)

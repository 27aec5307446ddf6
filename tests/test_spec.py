"""TemplateSpec: one normal form per meaning, clear errors, and a key that follows content."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from _wheels import make_wheel
from pytest_cowenv import SpecError, TemplateSpec
from pytest_cowenv._install import IndexOptions


def spec(*requirements: str, **kwargs: object) -> TemplateSpec:
    return TemplateSpec.create(list(requirements), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Requests>=2.31", "requests >= 2.31"),
        ("Foo_Bar.baz", "foo-bar-baz"),
        ("rich[Jupyter,all]", "rich[all, jupyter]"),
        ("pkg>=1,<2", "pkg <2, >=1"),
        ("pkg; python_version>'3'", 'pkg ; python_version > "3"'),
    ],
)
def test_spellings_of_one_requirement_are_one_spec(a: str, b: str) -> None:
    assert spec(a) == spec(b)
    assert spec(a).key() == spec(b).key()


def test_requirements_are_sorted_and_deduplicated() -> None:
    assert spec("rich", "Requests", "requests").requirements == ("requests", "rich")
    assert spec("rich", "requests") == spec("requests", "rich")


def test_extras_are_sorted() -> None:
    assert spec("rich[Jupyter,all]").requirements == ("rich[all,jupyter]",)


def test_invalid_requirement_is_named() -> None:
    with pytest.raises(SpecError, match=r"^'requests>=>2': invalid requirement"):
        spec("requests>=>2")


def test_missing_local_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"no-such\.whl: no such local wheel"):
        spec("./no-such.whl", base_dir=tmp_path)


def test_directory_without_project_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match=r"without pyproject\.toml or setup\.py"):
        spec("./empty", base_dir=tmp_path)


def test_unknown_python_version_is_named() -> None:
    with pytest.raises(SpecError, match=r"^python='9.9': no such interpreter"):
        spec("alpha", python="9.9")


def test_python_path_that_does_not_run(tmp_path: Path) -> None:
    fake = tmp_path / "python-not-really"
    fake.write_text("not a program")
    with pytest.raises(SpecError, match="python-not-really"):
        spec("alpha", python=str(fake))


def test_python_as_a_path_is_the_same_interpreter() -> None:
    assert spec("alpha", python=sys.executable).key() == spec("alpha", python=sys.executable).key()


def test_key_is_stable() -> None:
    index = IndexOptions(find_links=("/nowhere",), offline=True)
    first = spec("alpha", "beta>=1", index=index)
    assert first.key() == spec("beta >= 1", "ALPHA", index=index).key()
    assert len(first.key()) == 24


@pytest.mark.parametrize(
    "changed",
    [
        {"requirements": ["alpha", "beta>=2"]},
        {"requirements": ["alpha", "beta>=1", "gamma"]},
        {"pip": True},
        {"index": IndexOptions(find_links=("/elsewhere",))},
        {"index": IndexOptions(offline=True)},
    ],
)
def test_key_changes_with_the_spec(changed: dict[str, object]) -> None:
    base: dict[str, object] = {"requirements": ["alpha", "beta>=1"]}
    assert TemplateSpec.create(**base).key() != TemplateSpec.create(**{**base, **changed}).key()  # type: ignore[arg-type]


def test_key_follows_a_local_wheels_content(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "local", "1.0")
    before = spec(str(wheel)).key()
    assert spec(str(wheel)).key() == before
    make_wheel(tmp_path, "local", "1.0", modules={"local.py": "VERSION = 'rebuilt'\n"})
    assert spec(str(wheel)).key() != before


def test_key_follows_a_projects_sources_not_its_build_outputs(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    (project / "src" / "proj" / "build").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'proj'\n")
    (project / "src" / "proj" / "__init__.py").write_text("X = 1\n")
    (project / "src" / "proj" / "build" / "__init__.py").write_text("")
    before = spec(str(project)).key()
    # Build outputs and caches do not count...
    for junk in ("build/lib/proj.py", "dist/proj.whl", "src/proj.egg-info/PKG-INFO"):
        (project / junk).parent.mkdir(parents=True, exist_ok=True)
        (project / junk).write_text("junk")
    (project / "src" / "proj" / "__pycache__").mkdir()
    (project / "src" / "proj" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert spec(str(project)).key() == before
    # ... but a package that happens to be called `build` does, like any source.
    (project / "src" / "proj" / "build" / "__init__.py").write_text("Y = 2\n")
    after_sub = spec(str(project)).key()
    assert after_sub != before
    (project / "src" / "proj" / "__init__.py").write_text("X = 2\n")
    assert spec(str(project)).key() != after_sub


def test_key_ignores_what_the_projects_own_test_run_leaves_at_its_top(tmp_path: Path) -> None:
    """svcs's tox.ini runs ``coverage run -m pytest`` in its tree (coverage's ``parallel``):
    each run of its suite in a clone left a new data file there, and the next run built
    the template again."""
    project = tmp_path / "proj"
    (project / "src" / "proj").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'proj'\n")
    (project / ".coveragerc").write_text("[run]\nparallel = true\n")
    (project / "src" / "proj" / "__init__.py").write_text("X = 1\n")
    before = spec(str(project)).key()
    for left in (
        ".coverage",
        ".coverage.host.4242.XyZ123",
        "htmlcov/index.html",
        ".hypothesis/examples/0a/1b",
    ):
        (project / left).parent.mkdir(parents=True, exist_ok=True)
        (project / left).write_text("data")
    assert spec(str(project)).key() == before
    (project / ".coveragerc").write_text("[run]\nbranch = true\n")  # a file of the project
    assert spec(str(project)).key() != before


def test_key_ignores_tool_state_when_home_is_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pytester makes HOME the project: what installers keep in HOME is not a source."""
    project = tmp_path / "proj"
    (project / "tests" / "home").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'proj'\n")
    (project / ".config-of-proj").mkdir()
    before: dict[str, str] = {}
    for home in ("", "tests/home"):
        monkeypatch.setenv("HOME", str(project / home))
        before[home] = spec(str(project)).key()
        state = project / home / ".rustup"  # pip runs rustc, whose rustup writes ~/.rustup
        state.mkdir()
        (state / "settings.toml").write_text('version = "12"\n')
        assert spec(str(project)).key() == before[home], home
    monkeypatch.setenv("HOME", str(tmp_path))  # HOME outside: every hidden folder counts
    outside = spec(str(project)).key()
    (project / ".config-of-proj" / "x.toml").write_text("x = 1\n")
    assert spec(str(project)).key() != outside
    monkeypatch.setenv("HOME", str(project))  # ... as do HOME's hidden files and other folders
    in_home = spec(str(project)).key()
    (project / ".hidden-file").write_text("counts\n")
    assert spec(str(project)).key() != in_home


def test_project_argument_is_a_local_requirement(tmp_path: Path) -> None:
    (tmp_path / "setup.py").write_text("")
    made = TemplateSpec.create(["alpha"], project=tmp_path)
    assert made.local == (str(tmp_path.resolve()),)
    assert made.describe() == f"alpha, {tmp_path.name}"


@pytest.mark.parametrize(
    "text", ["requests", "Requests", "zope.interface", "Foo__Bar", "a", "A-B_c.D", "x1..y"]
)
def test_a_bare_name_is_normalised_as_packaging_normalises_it(text: str) -> None:
    """Bare names skip packaging (slow to import): the key must not change for it."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    from pytest_cowenv.spec import normalise_requirement

    assert normalise_requirement(text) == canonicalize_name(Requirement(text).name)


def test_a_spec_of_names_imports_no_packaging_and_no_statistics(tmp_path: Path) -> None:
    """What the first test of a run waits for imports only what it uses."""
    import subprocess

    code = (
        "import sys\n"
        "from pytest_cowenv.session import CowEnvSession, Settings\n"
        "from pytest_cowenv.spec import TemplateSpec\n"
        "TemplateSpec.create(['requests', 'Rich', 'zope.interface']).key()\n"
        "print(sorted(m for m in ('packaging.requirements', 'statistics') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout == "[]\n"


def test_the_installer_gets_requirements_in_the_order_given(tmp_path: Path) -> None:
    # uv decides direct requirements in command-line order, which decides when it asks the
    # index for their dependencies: the user's order, as their own `uv pip install` gets it.
    from pytest_cowenv._plan import install_commands

    (tmp_path / "r.txt").write_text("zeta\nalpha\n")
    given = spec("rich", "Requests", "-r r.txt", "requests", "attrs", base_dir=tmp_path)
    [command] = install_commands(given, tmp_path / "python", tmp_path).then({})
    assert command[-5:] == ["rich", "requests", "attrs", "zeta", "alpha"]
    assert given.requirements == ("alpha", "attrs", "requests", "rich", "zeta")
    other = spec("attrs", "requests", "rich", "-r r.txt", base_dir=tmp_path)
    assert other == given and other.key() == given.key()  # one template, whatever the order
    assert other.install_order() == ("attrs", "requests", "rich", "zeta", "alpha")
    unordered = TemplateSpec(requirements=("alpha", "beta"))  # not made by create
    assert unordered.install_order() == ("alpha", "beta")

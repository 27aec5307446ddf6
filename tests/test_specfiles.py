"""Specs as projects write them: requirement and constraint files, dependency groups, extras,
lock files, resolution options, and the environment variables in the key. No builds here
(see ``test_specfiles_build.py``): every case is what :meth:`TemplateSpec.create` makes."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest

from _wheels import make_wheel
from pytest_cowenv import SpecError, TemplateSpec
from pytest_cowenv import _lock as lock_module
from pytest_cowenv import spec as spec_module


def spec(*requirements: str, base: Path, **kwargs: Any) -> TemplateSpec:
    return TemplateSpec.create(list(requirements), base_dir=base, **kwargs)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- -r and -c -----------------------------------------------------------------------------


def test_requirement_file_lines_as_pip_reads_them(tmp_path: Path) -> None:
    (tmp_path / "req" / "sub").mkdir(parents=True)
    (tmp_path / "req" / "test.txt").write_text(
        "# a comment\n"
        "alpha==1.0 \\\n"
        '    ; python_version >= "3"  # trailing comment\n'
        "\n"
        "-r sub/more.txt\n"
        "--find-links ../wheels\n"
        "--extra-index-url https://example.invalid/simple\n"
    )
    (tmp_path / "req" / "sub" / "more.txt").write_text(
        "Beta --hash=sha256:aaaa \\\n  --hash=sha256:bbbb\n-c ../pins.txt\n"
    )
    (tmp_path / "req" / "pins.txt").write_text("gamma<1\n")
    made = spec("-r req/test.txt", "delta", base=tmp_path)
    assert made.requirements == (
        'alpha==1.0; python_version >= "3"',
        "beta --hash=sha256:aaaa --hash=sha256:bbbb",
        "delta",
    )
    assert made.constraints == ("gamma<1",)
    assert made.options == (
        f"--find-links {tmp_path / 'wheels'}",  # from the file's folder, as pip takes it
        "--extra-index-url https://example.invalid/simple",
    )
    assert len(made.sources) == 3
    assert made.describe() == "-r req/test.txt, delta"


def test_every_spelling_of_a_file_item(tmp_path: Path) -> None:
    (tmp_path / "r.txt").write_text("alpha\n")
    (tmp_path / "c.txt").write_text("alpha<2\n")
    for text in ("-r r.txt", "-rr.txt", "--requirement r.txt", "--requirement=r.txt"):
        assert spec(text, base=tmp_path).requirements == ("alpha",), text
    for text in ("-c c.txt", "--constraint=c.txt"):
        assert spec(text, base=tmp_path).constraints == ("alpha<2",), text


def test_key_follows_every_file_read(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("alpha\n-r b.txt\n")
    (tmp_path / "b.txt").write_text("beta\n")
    before = spec("-r a.txt", base=tmp_path).key()
    assert spec("-r a.txt", base=tmp_path).key() == before
    (tmp_path / "b.txt").write_text("beta\n# pinned below, one day\n")
    assert spec("-r a.txt", base=tmp_path).key() != before


def test_same_content_elsewhere_is_the_same_template(tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "requirements.txt").write_text("alpha==1.0\n")
    one = spec("-r one/requirements.txt", base=tmp_path)
    two = spec("-r two/requirements.txt", base=tmp_path)
    assert one.key() == two.key()
    assert one.describe() != two.describe()  # each says where it came from


@pytest.mark.parametrize(
    ("files", "item", "words"),
    [
        ({}, "-r missing.txt", ["-r missing.txt", "no such file"]),
        ({"a.txt": "-r sub/missing.txt\n"}, "-r a.txt", ["sub/missing.txt", "a.txt"]),
        ({"a.txt": "-r b.txt\n", "b.txt": "-r a.txt\n"}, "-r a.txt", ["include each other"]),
        ({"a.txt": "--pre\nalpha\n"}, "-r a.txt", ["a.txt:1", "--pre", "not supported"]),
        ({"a.txt": "alpha>>1\n"}, "-r a.txt", ["alpha>>1", "invalid"]),
        ({"c.txt": "alpha --hash=sha256:ab\n"}, "-c c.txt", ["c.txt:1", "--hash"]),
        ({"a.txt": "./nowhere\n"}, "-r a.txt", ["./nowhere", "no such local"]),
    ],
)
def test_bad_files_give_one_line_naming_the_culprit(
    tmp_path: Path, files: dict[str, str], item: str, words: list[str]
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    with pytest.raises(SpecError) as info:
        spec(item, base=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_run_wide_constraints_are_in_the_key(tmp_path: Path) -> None:
    pins = tmp_path / "pins.txt"
    pins.write_text("alpha<2\n")
    plain = spec("alpha", base=tmp_path)
    pinned = spec("alpha", base=tmp_path, constraint_files=[pins])
    assert pinned.constraints == ("alpha<2",) and pinned.describe() == "alpha"
    assert pinned.key() != plain.key()
    pins.write_text("alpha<3\n")
    assert spec("alpha", base=tmp_path, constraint_files=[pins]).key() != pinned.key()


@pytest.mark.parametrize(
    "var", ["UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_EXCLUDE_NEWER", "PIP_INDEX_URL", "PIP_PRE"]
)
def test_resolver_variables_are_in_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, var: str
) -> None:
    monkeypatch.delenv(var, raising=False)
    before = spec("alpha", base=tmp_path).key()
    monkeypatch.setenv(var, "1")
    assert spec("alpha", base=tmp_path).key() != before


def test_a_constraint_variable_keys_its_files_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pins = tmp_path / "pins.txt"
    pins.write_text("alpha<2\n")
    monkeypatch.setenv("PIP_CONSTRAINT", str(pins))
    before = spec("alpha", base=tmp_path).key()
    pins.write_text("alpha<3\n")
    assert spec("alpha", base=tmp_path).key() != before


# --- groups and extras ---------------------------------------------------------------------

PYPROJECT = """\
[project]
name = "demo"
version = "0.1"
description = "first"

[project.optional-dependencies]
cli = ["gamma"]
all = ["demo[cli]", "beta"]

[dependency-groups]
test = ["alpha==1.0", {include-group = "lint"}]
lint = ["beta"]
loop = [{include-group = "loop"}]
"""


def test_groups_follow_includes_and_key_only_on_what_they_read(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    made = spec(base=tmp_path, groups=("test",))
    assert made.requirements == ("alpha==1.0", "beta")
    assert made.describe() == "pyproject.toml [group test]"
    key = made.key()
    (tmp_path / "pyproject.toml").write_text(PYPROJECT.replace('"first"', '"second"'))
    assert spec(base=tmp_path, groups=("test",)).key() == key, "an unrelated line changed it"
    (tmp_path / "pyproject.toml").write_text(PYPROJECT.replace('lint = ["beta"]', "lint = []"))
    assert spec(base=tmp_path, groups=("test",)).key() != key


def test_extras_without_the_project_follow_its_own_extras(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    assert spec(base=tmp_path, extras=("all",)).requirements == ("beta", "gamma")


def test_extras_with_the_project_are_installed_with_it(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    made = spec(base=tmp_path, project=".", extras=("CLI",))
    assert made.project == str(tmp_path) and made.extras == ("cli",)
    assert made.describe() == f"{tmp_path.name}[cli]"


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"groups": ("docs",)}, ["'docs'", "it has: lint, loop, test"]),
        ({"groups": ("loop",)}, ["loop", "includes itself"]),
        ({"extras": ("gui",)}, ["'gui'", "it has: all, cli"]),
        ({"project": ".", "extras": ("gui",)}, ["'gui'", "it has: all, cli"]),
        ({"groups": "test, lint"}, ["test, lint", "not a dependency group"]),
        ({"groups": [3]}, ["groups=[3]"]),
    ],
)
def test_unknown_groups_and_extras_are_named(
    tmp_path: Path, kwargs: dict[str, Any], words: list[str]
) -> None:
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    with pytest.raises(SpecError) as info:
        spec(base=tmp_path, **kwargs)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_groups_without_a_table_or_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        spec(base=tmp_path, groups=("test",))
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    with pytest.raises(SpecError, match="no \\[dependency-groups\\] table"):
        spec(base=tmp_path, groups=("test",))
    (tmp_path / "pyproject.toml").write_text("[project\n")
    with pytest.raises(SpecError, match="not valid TOML"):
        spec(base=tmp_path, groups=("test",))


# --- pylock.toml ---------------------------------------------------------------------------


def _wheel_entry(wheel: Path, base: Path) -> str:
    digest = sha256(wheel)
    return f'{{ path = "{wheel.relative_to(base)}", hashes = {{ sha256 = "{digest}" }} }}'


def write_pylock(tmp_path: Path) -> Path:
    """alpha 1.0 and beta from wheels; gamma only on a platform that does not exist; delta
    only for the `test` group; epsilon with a wheel for no interpreter."""
    wheels = tmp_path / "wheels"
    alpha = make_wheel(wheels, "alpha", "1.0")
    beta = make_wheel(wheels, "beta", "1.0")
    delta = make_wheel(wheels, "delta", "0.1")
    lines = [
        'lock-version = "1.0"',
        'created-by = "tests"',
        'dependency-groups = ["test"]',
        "",
        "[[packages]]",
        'name = "alpha"',
        'version = "1.0"',
        f"wheels = [{_wheel_entry(alpha, tmp_path)}]",
        "",
        "[[packages]]",
        'name = "beta"',
        'version = "1.0"',
        f"wheels = [{_wheel_entry(beta, tmp_path)}]",
        "",
        "[[packages]]",
        'name = "gamma"',
        'version = "0.5"',
        "marker = \"sys_platform == 'nowhere'\"",
        'wheels = [{ url = "https://example.invalid/gamma-0.5-py3-none-any.whl", '
        'hashes = { sha256 = "00" } }]',
        "",
        "[[packages]]",
        'name = "delta"',
        'version = "0.1"',
        "marker = \"'test' in dependency_groups\"",
        f"wheels = [{_wheel_entry(delta, tmp_path)}]",
    ]
    path = tmp_path / "pylock.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_pylock_is_the_locked_set_for_this_interpreter(tmp_path: Path) -> None:
    write_pylock(tmp_path)
    made = spec(base=tmp_path, lock="pylock.toml")
    assert made.locked
    names = [r.split(" @ ")[0] for r in made.requirements]
    assert names == ["alpha", "beta"], "gamma's marker is false here; delta is in a group"
    assert all(" --hash=sha256:" in r and "file://" in r for r in made.requirements)
    assert made.describe() == "pylock.toml"
    with_group = spec(base=tmp_path, lock="pylock.toml", groups=("test",))
    assert [r.split(" @ ")[0] for r in with_group.requirements] == ["alpha", "beta", "delta"]
    assert with_group.describe() == "pylock.toml [group test]"
    assert with_group.key() != made.key()


def test_pylock_content_is_in_the_key(tmp_path: Path) -> None:
    path = write_pylock(tmp_path)
    before = spec(base=tmp_path, lock="pylock.toml").key()
    path.write_text(path.read_text() + "# regenerated\n")
    assert spec(base=tmp_path, lock="pylock.toml").key() != before


def test_a_lock_is_selected_once_per_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test that asks for a lock makes its spec: the selection (packaging parses every
    file name of the lock) is made once per content, and a changed lock is selected anew."""
    path = write_pylock(tmp_path)
    selections: list[Path] = []
    select = lock_module._select

    def counted(data: Any, where: Path, *args: Any) -> Any:
        selections.append(where)
        return select(data, where, *args)

    monkeypatch.setattr(lock_module, "_select", counted)
    first = lock_module.locked_set(path, "pylock.toml", (), (), None)
    first.requirements.clear()  # the caller's own: the next one is whole
    again = spec(base=tmp_path, lock="pylock.toml")
    assert len(selections) == 1
    assert [r.split(" @ ")[0] for r in again.requirements] == ["alpha", "beta"]
    grouped = spec(base=tmp_path, lock="pylock.toml", groups=("test",))
    assert len(selections) == 2, "another selection of the same content is its own"
    assert grouped.requirements != again.requirements
    beta = make_wheel(tmp_path / "wheels", "beta", "2.0")
    old = _wheel_entry(tmp_path / "wheels" / "beta-1.0-py3-none-any.whl", tmp_path)
    text = path.read_text()
    assert old in text
    path.write_text(
        text.replace(
            f'version = "1.0"\nwheels = [{old}]',
            f'version = "2.0"\nwheels = [{_wheel_entry(beta, tmp_path)}]',
        )
    )
    changed = spec(base=tmp_path, lock="pylock.toml")
    assert len(selections) == 3
    assert [r.split(" @ ")[0] for r in changed.requirements] == ["alpha", "beta"]
    assert any("beta-2.0-" in r for r in changed.requirements)
    assert changed.key() != again.key()


def test_requirement_beside_a_lock_must_agree_with_it(tmp_path: Path) -> None:
    write_pylock(tmp_path)
    agreeing = spec("alpha>=1", base=tmp_path, lock="pylock.toml")
    assert agreeing.requirements == spec(base=tmp_path, lock="pylock.toml").requirements
    contradicts = "alpha>=2: contradicts pylock.toml, which pins alpha 1.0"
    with pytest.raises(SpecError, match=re.escape(contradicts)):
        spec("alpha>=2", base=tmp_path, lock="pylock.toml")
    with pytest.raises(SpecError, match=re.escape("zeta: not in pylock.toml")):
        spec("zeta", base=tmp_path, lock="pylock.toml")


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda t: t.replace('created-by = "tests"\n', ""), ["pylock.toml", "created-by"]),
        (lambda t: t + "[[packages\n", ["pylock.toml", "not valid TOML"]),
        (
            lambda t: t.replace(
                'name = "beta"', 'name = "beta"\nmarker = "os_name == \'x\'"', 1
            ).replace("py3-none-any", "cp27-cp27m-win32"),
            ["alpha"],
        ),
        (lambda t: t, ["undeclared", "docs"]),
        # pytest-print 1.4.1 ships a pylock.toml locked for CPython 3.15 on Linux only
        (
            lambda t: t.replace(
                'created-by = "tests"\n',
                'created-by = "tests"\nenvironments = ["python_version == \'3.99\'"]\n',
            ),
            ['locks for python_version == "3.99" only', "python "],
        ),
    ],
)
def test_bad_locks_give_one_line(tmp_path: Path, edit: Any, words: list[str]) -> None:
    path = write_pylock(tmp_path)
    path.write_text(edit(path.read_text()))
    groups = ("docs",) if words[-1] == "docs" else ()
    with pytest.raises(SpecError) as info:
        spec(base=tmp_path, lock="pylock.toml", groups=groups)
    message = str(info.value)
    assert message.startswith("lock='pylock.toml'") and "\n" not in message, message
    for word in words:
        assert word.lower() in message.lower(), message


def test_missing_and_unknown_lock_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        spec(base=tmp_path, lock="pylock.toml")
    (tmp_path / "Pipfile.lock").write_text("{}")
    with pytest.raises(SpecError, match=re.escape("pylock.toml, pylock.NAME.toml or uv.lock")):
        spec(base=tmp_path, lock="Pipfile.lock")


# --- uv-only options without uv ------------------------------------------------------------


@pytest.fixture
def no_uv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spec_module, "uv_binary", lambda: None)
    monkeypatch.setattr(lock_module, "uv_binary", lambda: None)


@pytest.mark.usefixtures("no_uv")
def test_uv_lock_without_uv_says_so(tmp_path: Path) -> None:
    (tmp_path / "uv.lock").write_text("version = 1\n")
    with pytest.raises(SpecError, match=r"^lock='uv.lock': uv.lock needs uv: pip install uv$"):
        spec(base=tmp_path, lock="uv.lock")


@pytest.mark.usefixtures("no_uv")
@pytest.mark.parametrize("kwargs", [{"resolution": "lowest"}, {"exclude_newer": "2025-06-01"}])
def test_uv_options_on_the_pip_route_say_what_is_missing(
    tmp_path: Path, kwargs: dict[str, str]
) -> None:
    with pytest.raises(SpecError, match=r"needs uv .*: pip install uv"):
        spec("alpha", base=tmp_path, **kwargs)


def test_bad_resolution_lists_the_choices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spec_module, "uv_binary", lambda: "/usr/bin/uv")
    with pytest.raises(SpecError, match="highest, lowest, lowest-direct"):
        spec("alpha", base=tmp_path, resolution="low")
    made = spec("alpha", base=tmp_path, resolution="lowest-direct")
    assert made.resolution == "lowest-direct"
    assert made.key() != spec("alpha", base=tmp_path).key()


# --- the command line and the install plan ------------------------------------------------


def test_cli_build_takes_files_and_names_a_missing_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_cowenv.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["build", "--dir", str(tmp_path / "cache"), "-r", "missing.txt", "--group", "x"])
    assert code == 2
    err = capsys.readouterr().err
    missing = tmp_path / "missing.txt"
    assert err == f"pytest-cowenv build: error: -r missing.txt: no such file ({missing})\n"


def test_hashed_requirements_come_before_a_project_without_a_hash(tmp_path: Path) -> None:
    from pytest_cowenv._plan import install_commands

    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    (tmp_path / "r.txt").write_text("--find-links ./wheels\nalpha==1.0 --hash=sha256:ab\n")
    made = spec("-r r.txt", base=tmp_path, project=".")
    wheel = tmp_path / "demo-0.1-py3-none-any.whl"
    plan = install_commands(made, tmp_path / "python", tmp_path)
    [first] = plan.first  # runs while the project's wheel is built
    [then] = plan.then({str(tmp_path): wheel})
    assert first[-2] == "-r" and str(wheel) not in first
    assert (tmp_path / "requirements.txt").read_text() == (
        f"--find-links {tmp_path / 'wheels'}\nalpha==1.0 --hash=sha256:ab\n"
    )
    assert then[-1] == str(wheel) and "-r" in then  # the file's index options, again

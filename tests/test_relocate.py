"""A clone of a template works at its own path and never points back at the template.

The templates here are built under a deliberately long path: past 127 bytes installers write
``/bin/sh`` trampolines instead of ``#!`` lines, the harder case for relocation.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from _helpers import mounted
from _wheels import make_wheel, standard_wheelhouse
from conftest import skip_without_uv
from pytest_cowenv import LinkMode, Template, TemplateCache, TemplateSpec, clone_tree
from pytest_cowenv._install import IndexOptions, installer_identity, uv_binary
from pytest_cowenv._relocate import ACTIVATE, launcher_body, point_at_sources
from pytest_cowenv.clone import remove_tree, unprotect, walk_tree
from pytest_cowenv.store import prepare_root

# -- the launcher and metadata rewrites, on their own -------------------------------------

NEEDLE = b"/build/tmp/k.1.x/env"


@pytest.mark.parametrize(
    "launcher",
    [
        b"#!/build/tmp/k.1.x/env/bin/python\n",
        b"#!/build/tmp/k.1.x/env/bin/python3.12 -E\n",
        b"#!/bin/sh\n'''exec' '/build/tmp/k.1.x/env/bin/python' \"$0\" \"$@\"\n' '''\n",
        b"#!/bin/sh\n'''exec' /build/tmp/k.1.x/env/bin/python \"$0\" \"$@\"\n' '''\n",
    ],
    ids=["shebang", "shebang-with-option", "uv-trampoline", "pip-trampoline"],
)
def test_launcher_lines_naming_the_build_dir_are_found(launcher: bytes) -> None:
    code = b"# -*- coding: utf-8 -*-\nimport sys\nfrom alpha.cli import main\n"
    assert launcher_body(launcher + code, NEEDLE) == code


@pytest.mark.parametrize(
    "script",
    [
        b"#!/bin/sh\necho hello\n",
        b"#!/usr/bin/env python\nprint('elsewhere')\n",
        b"#!/bin/sh\n'''exec' /usr/bin/python3 \"$0\" \"$@\"\n' '''\nprint()\n",
        b"\x7fELF\x02\x01\x01",
    ],
    ids=["shell", "env-python", "foreign-trampoline", "binary"],
)
def test_other_scripts_are_left_alone(script: bytes) -> None:
    assert launcher_body(script, NEEDLE) is None


BASE = b"/opt/py 3/bin/python3.12"
TRAMPOLINE = b"#!/bin/sh\n'''exec' %s \"$0\" \"$@\"\n' '''\n"


@pytest.mark.parametrize(
    "launcher",
    [
        b"#!/opt/py3/bin/python3.12\n",
        TRAMPOLINE % b"'/opt/py 3/bin/python3.12'",
        TRAMPOLINE % b'"/opt/py 3/bin/python3.12"',
    ],
    ids=["shebang", "uv-trampoline", "double-quoted"],
)
def test_launchers_of_the_base_interpreter_are_found(launcher: bytes) -> None:
    """An installer given the env as a prefix names the base interpreter (see
    install_command): those launchers are the env's own, and are relocated too."""
    code = b"import sys\nfrom alpha.cli import main\n"
    needle = BASE if b"py 3" in launcher else b"/opt/py3/bin/python3.12"
    assert launcher_body(launcher + code, needle, exact=True) == code


@pytest.mark.parametrize(
    "launcher",
    [
        b"#!/usr/bin/python3.12-config\n",
        b"#!/usr/bin/python3\n",
        b"#!/usr/bin/env python3.12\n",
        TRAMPOLINE % b"'/usr/bin/python3.12-dbg'",
    ],
    ids=["longer-name", "shorter-name", "env", "other-trampoline"],
)
def test_other_interpreters_are_not_the_base(launcher: bytes) -> None:
    assert launcher_body(launcher + b"print()\n", b"/usr/bin/python3.12", exact=True) is None


def test_uv_installs_into_a_new_env_as_a_prefix_of_the_base_interpreter(tmp_path: Path) -> None:
    """uv is given the base interpreter, which it knows, not the new env's python, which it
    would run to learn what it is; pip (and a clone's own installs) keep --python ENV."""
    from pytest_cowenv._install import install_command

    python = tmp_path / "env" / "bin" / "python"
    index = IndexOptions()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("PYTEST_COWENV_NO_UV", raising=False)
        uv_binary.cache_clear()
        if uv_binary() is None:
            pytest.skip("uv is not installed")
        cmd = install_command(python, ["alpha"], index, base="/usr/bin/python3")
        assert cmd[3:7] == ["--python", "/usr/bin/python3", "--prefix", str(tmp_path / "env")]
        assert install_command(python, ["alpha"], index)[3:5] == ["--python", str(python)]
        mp.setenv("PYTEST_COWENV_NO_UV", "1")
        uv_binary.cache_clear()
        cmd = install_command(python, ["alpha"], index, base="/usr/bin/python3")
        assert "--prefix" not in cmd and cmd[cmd.index("--python") + 1] == str(python)
    uv_binary.cache_clear()


def test_direct_url_of_a_built_wheel_names_the_project(tmp_path: Path) -> None:
    wheel = tmp_path / "build" / "proj-0.1-py3-none-any.whl"
    project = tmp_path / "proj"
    info = tmp_path / "site" / "proj-0.1.dist-info"
    info.mkdir(parents=True)
    url = json.dumps({"url": wheel.as_uri(), "archive_info": {}})
    (info / "direct_url.json").write_text(url)
    (info / "RECORD").write_text(f"proj-0.1.dist-info/direct_url.json,sha256=old,{len(url)}\n")
    other = tmp_path / "site" / "other-1.dist-info"
    other.mkdir()
    (other / "direct_url.json").write_text(json.dumps({"url": "https://example.org/o.whl"}))

    assert point_at_sources(tmp_path / "site", {wheel: project}) == 1
    data = (info / "direct_url.json").read_bytes()
    assert json.loads(data) == {"url": project.as_uri(), "dir_info": {}}
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    assert (info / "RECORD").read_text() == (
        f"proj-0.1.dist-info/direct_url.json,sha256={digest},{len(data)}\n"
    )


def test_activate_ignores_cdpath(tmp_path: Path) -> None:
    (tmp_path / "env" / "bin").mkdir(parents=True)
    (tmp_path / "env" / "bin" / "activate").write_text(ACTIVATE)
    (tmp_path / "elsewhere" / "env").mkdir(parents=True)
    out = subprocess.run(
        ["bash", "-c", '. env/bin/activate && echo "$VIRTUAL_ENV"'],
        cwd=tmp_path,
        env={**os.environ, "CDPATH": str(tmp_path / "elsewhere")},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == f"{tmp_path / 'env'}\n"


# -- real templates, cloned ------------------------------------------------------------------

WHERE = {"where.py": "import sys\n\ndef main():\n    print(sys.prefix)\n"}


@pytest.fixture(scope="module", params=["uv", "pip"])
def built(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TemplateCache, Template]]:
    """A template of alpha, beta, gamma and ``where`` (a console script printing sys.prefix),
    built by each installer; uv's also has pip seeded."""
    route = request.param
    if route == "uv":
        skip_without_uv()
    wheels = standard_wheelhouse(tmp_path_factory.mktemp("wheels"))
    make_wheel(wheels, "where", modules=WHERE, scripts={"where": "where:main"})
    btrfs = mounted("COWENV_TEST_BTRFS", "btrfs")
    base = Path(tempfile.mkdtemp(dir=btrfs)) if btrfs else tmp_path_factory.mktemp("relocate")
    root = base / ("long-" + "x" * 100) / "cache"  # build paths of ~190 bytes
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIP_CONFIG_FILE", os.devnull)
        mp.delenv("PIP_FIND_LINKS", raising=False)
        if route == "pip":
            mp.setenv("PYTEST_COWENV_NO_UV", "1")
        else:
            mp.delenv("PYTEST_COWENV_NO_UV", raising=False)
        uv_binary.cache_clear()
        installer_identity.cache_clear()
        root.parent.mkdir(parents=True)
        cache = TemplateCache(prepare_root(root))
        spec = TemplateSpec.create(
            ["beta", "gamma", "where"],
            index=IndexOptions(find_links=(str(wheels),), offline=True),
            pip=route == "uv",
        )
        template = cache.get(spec)
        uv_binary.cache_clear()
        installer_identity.cache_clear()
    yield cache, template
    unprotect(template.path)
    remove_tree(base)


@pytest.fixture
def clone(built: tuple[TemplateCache, Template]) -> Iterator[Path]:
    cache, template = built
    path = cache.layout.clones / f"clone-{uuid.uuid4().hex[:8]}"
    clone_tree(template.path, path, tree=template.tree)
    yield path
    remove_tree(path)


def run(*argv: str | os.PathLike[str], **kwargs: object) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    out = subprocess.run(
        [os.fspath(a) for a in argv],
        capture_output=True,
        text=True,
        check=True,
        env={**env, **kwargs.pop("env", {})},  # type: ignore[dict-item]
        **kwargs,  # type: ignore[call-overload]
    )
    return str(out.stdout)


def test_python_runs_in_the_clone(clone: Path) -> None:
    out = run(clone / "bin" / "python", "-c", "import sys, beta; print(sys.prefix, beta.VERSION)")
    assert out == f"{clone} 1.0\n"


def test_console_scripts_run_the_clones_python(clone: Path) -> None:
    assert run(clone / "bin" / "where") == f"{clone}\n"
    assert run(clone / "bin" / "alpha") == "alpha 2.0\n"
    # Found on PATH, the way a test's subprocess finds it.
    path = f"{clone / 'bin'}{os.pathsep}{os.environ['PATH']}"
    assert run("where", env={"PATH": path}) == f"{clone}\n"


def test_pip_runs_in_the_clone(clone: Path, built: tuple[TemplateCache, Template]) -> None:
    if not built[1].spec.pip:
        pytest.skip("pip is seeded only into the uv-built template here")
    out = run(clone / "bin" / "python", "-m", "pip", "--version")
    assert f"from {clone}/lib/" in out
    assert run(clone / "bin" / "pip", "--version") == out


def test_sourced_activate_points_at_the_clone(clone: Path) -> None:
    script = '. "$1/bin/activate" && echo "$VIRTUAL_ENV" && command -v python && deactivate && '
    script += 'echo "$PATH"'
    lines = run("bash", "-c", script, "bash", clone).splitlines()
    assert lines == [str(clone), str(clone / "bin" / "python"), os.environ["PATH"]]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_activate_from_zsh(clone: Path) -> None:
    out = run("zsh", "-c", '. "$1/bin/activate" && echo "$VIRTUAL_ENV"', "zsh", clone)
    assert out == f"{clone}\n"


def test_no_path_of_the_build_or_template_outside_pyc_files(
    clone: Path, built: tuple[TemplateCache, Template]
) -> None:
    cache, template = built
    for needle in (str(template.path), str(cache.layout.tmp)):
        for tree in (clone, template.path):
            found = subprocess.run(
                ["grep", "-r", "-l", "-F", "--exclude=*.pyc", needle, str(tree)],
                capture_output=True,
                text=True,
                check=False,
            )
            assert found.returncode == 1, f"{needle} is in: {found.stdout}{found.stderr}"


def test_importing_every_module_writes_nothing(clone: Path) -> None:
    site = next(clone.glob("lib/python*/site-packages"))
    names = sorted(
        {
            entry.name[:-3] if entry.name.endswith(".py") else entry.name
            for entry in site.iterdir()
            if (entry.is_dir() and (entry / "__init__.py").exists()) or entry.suffix == ".py"
        }
    )
    assert {"alpha", "beta", "gamma", "where"} <= set(names)
    before = walk_tree(clone).listing()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    subprocess.run(
        [str(clone / "bin" / "python"), "-c", code, *names], env=env, check=True, timeout=120
    )
    assert walk_tree(clone).listing() == before


def test_a_copy_on_another_filesystem_works(
    built: tuple[TemplateCache, Template], tmp_path: Path
) -> None:
    template = built[1]
    copy = tmp_path / "copied"
    clone_tree(template.path, copy, LinkMode.COPY)
    assert run(copy / "bin" / "where") == f"{copy}\n"

"""Templates: built once per spec, reused across caches and processes, never used half-made.

Every build here is offline, from the tiny wheels of ``_wheels.py``; caches live on the real
btrfs mount when there is one (templates are read-only subvolumes there), else in tmp_path.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _dist_wheels import repack_with_dependencies
from _helpers import mounted, processes, run_python, unprotect_templates
from _wheels import make_wheel
from conftest import skip_without_uv
from pytest_cowenv import (
    CacheDirError,
    LockTimeoutError,
    TemplateBuildError,
    TemplateCache,
    TemplateSpec,
    clone_tree,
)
from pytest_cowenv import _build as build_module
from pytest_cowenv import template as template_module
from pytest_cowenv._install import IndexOptions, installer_identity, uv_binary
from pytest_cowenv.clone import protect, remove_tree, unprotect, walk_tree
from pytest_cowenv.marker import mark
from pytest_cowenv.store import Layout, prepare_root

pytestmark = pytest.mark.usefixtures("offline_machine")

# -- fixtures ------------------------------------------------------------------------------


def _use_route(route: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if route == "pip":
        monkeypatch.setenv("PYTEST_COWENV_NO_UV", "1")
    else:
        monkeypatch.delenv("PYTEST_COWENV_NO_UV", raising=False)
    uv_binary.cache_clear()
    installer_identity.cache_clear()
    if route == "uv":
        skip_without_uv()


@pytest.fixture(params=["uv", "pip"])
def route(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each installer in turn: uv, and the outer pip (``PYTEST_COWENV_NO_UV=1``)."""
    _use_route(request.param, monkeypatch)
    yield request.param
    uv_binary.cache_clear()
    installer_identity.cache_clear()


def offline(wheelhouse: Path) -> IndexOptions:
    return IndexOptions(find_links=(str(wheelhouse),), offline=True)


def make_spec(wheelhouse: Path, *requirements: str, **kwargs: Any) -> TemplateSpec:
    return TemplateSpec.create(list(requirements), index=offline(wheelhouse), **kwargs)


def new_cache(root: Path, **kwargs: Any) -> TemplateCache:
    return TemplateCache(prepare_root(root), **kwargs)


def leftovers(layout: Layout) -> list[str]:
    return sorted(p.name for p in layout.tmp.iterdir())


def is_checked_hash_pyc(path: Path) -> bool:
    return path.read_bytes()[4:8] == (0b11).to_bytes(4, "little")


# -- reuse -----------------------------------------------------------------------------------


def test_built_template_is_complete(root: Path, wheelhouse: Path, route: str) -> None:
    cache = new_cache(root)
    template = cache.get(make_spec(wheelhouse, "beta", "gamma"))
    assert template.built_now
    assert template.resolved == {"alpha": "2.0", "beta": "1.0", "gamma": "0.5"}
    meta = json.loads(cache.layout.meta(template.key, template.generation).read_text())
    assert meta["installer"].split()[0] == route
    assert set(meta["phases"]) >= {"venv", "install", "relocate", "compile", "walk"}
    assert meta["files"] == template.tree.nfiles
    site = next(template.path.glob("lib/python*/site-packages"))
    sources = list(site.rglob("*.py"))
    assert sources
    for source in sources:  # every module has a pyc that stays valid in a clone
        import importlib.util

        assert is_checked_hash_pyc(Path(importlib.util.cache_from_source(str(source))))
    assert leftovers(cache.layout) == []
    if protect(template.path):  # a btrfs subvolume
        with pytest.raises(OSError, match="Read-only file system"):
            (template.path / "intruder").write_text("x")


def test_second_cache_builds_nothing_and_one_change_builds_one(
    root: Path, wheelhouse: Path
) -> None:
    first = new_cache(root)
    first.get(make_spec(wheelhouse, "alpha", "gamma"))
    assert len(first.built) == 1

    second = new_cache(root)
    again = second.get(make_spec(wheelhouse, "gamma", "ALPHA"))
    assert not again.built_now
    assert (second.built, second.reused) == ([], [again])
    assert second.get(make_spec(wheelhouse, "alpha", "gamma")) is again

    changed = second.get(make_spec(wheelhouse, "alpha==1.0", "gamma"))
    assert changed.built_now and changed.resolved["alpha"] == "1.0"
    assert len(second.built) == 1


def test_bytecode_is_shared_between_templates(root: Path, wheelhouse: Path) -> None:
    cache = new_cache(root)
    first = cache.get(make_spec(wheelhouse, "alpha"))
    second = cache.get(make_spec(wheelhouse, "alpha", "gamma"))
    # virtualenv adds a module of its own on Python < 3.10 (_virtualenv.py): shared as well.
    own = len(list(first.path.glob("lib/python*/site-packages/_virtualenv.py")))
    assert first.meta["bytecode"] == {"reused": 0, "compiled": 2 + own, "failed": 0, "dropped": 0}
    # alpha's two modules come from the store; only gamma's is compiled.
    assert second.meta["bytecode"] == {"reused": 2 + own, "compiled": 1, "failed": 0, "dropped": 0}


def test_a_module_edited_in_a_clone_is_what_imports(root: Path, wheelhouse: Path) -> None:
    """Hash-checked pycs: a clone that changes a source never runs the template's old code."""
    template = new_cache(root).get(make_spec(wheelhouse, "alpha"))
    clone = root / "clones" / "edited"
    clone_tree(template.path, clone)
    init = next(clone.glob("lib/python*/site-packages/alpha/__init__.py"))
    init.write_text("VERSION = 'edited in the clone'\n")
    assert run_python(clone, "import alpha; print(alpha.VERSION)") == "edited in the clone"
    remove_tree(clone)


def test_a_template_holds_its_plugins_rewritten_asserts(
    root: Path, wheelhouse: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pytest rewrites the asserts of each plugin it loads and keeps the result beside the
    module: a compiled template has that file already, so a clone's first pytest neither
    rewrites nor writes it (as in a virtual environment reused from an earlier run). The
    outer run's pytest options are not the template's pytest's."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins = repack_with_dependencies("pytest", tmp_path / "wheels")
    make_wheel(
        plugins,
        "pytest-rewritten",
        "1.0",
        modules={
            "pytest_rewritten.py": "def pytest_report_header():\n    assert True\n",
            "pytest_rewritten-1.0.dist-info/entry_points.txt": (
                "[pytest11]\nrewritten = pytest_rewritten\n"
            ),
        },
    )
    index = IndexOptions(find_links=(str(wheelhouse), str(plugins)), offline=True)
    spec = TemplateSpec.create(["pytest", "pytest-rewritten", "alpha"], index=index)
    template = new_cache(root).get(spec)
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    assert template.meta["rewritten"] >= 1
    clone = root / "clones" / "rewritten"
    clone_tree(template.path, clone)
    cache = next(clone.glob("lib/python*/site-packages/__pycache__"))
    kept = {p.name: p.stat().st_mtime_ns for p in cache.glob("pytest_rewritten.*-pytest-*.pyc")}
    assert len(kept) == 1, sorted(p.name for p in cache.iterdir())
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_one.py").write_text("def test_one():\n    assert 1\n")
    # Bytecode writes on (this machine's PYTHONDONTWRITEBYTECODE would hide a rewrite).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONDONT", "PYTEST_"))}
    argv = [str(clone / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider", str(project)]
    proc = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "plugins: rewritten-1.0" in proc.stdout
    now = {p.name: p.stat().st_mtime_ns for p in cache.glob("pytest_rewritten.*-pytest-*.pyc")}
    assert now == kept
    remove_tree(clone)


@pytest.mark.parametrize("pycs", ["template", "timestamp"])
def test_a_same_size_edit_with_the_old_mtime_is_what_imports(
    root: Path, wheelhouse: Path, pycs: str
) -> None:
    """The edit a timestamp pyc cannot see: same size, same mtime (a clone's mtimes are its
    template's, and a test may edit within the same second, or restore the mtime). The
    template's pycs see it; the same clone recompiled with timestamp pycs runs the old code,
    which proves the edit is one that only a pyc checked against its source catches."""
    template = new_cache(root).get(make_spec(wheelhouse, "alpha==1.0"))
    clone = root / "clones" / f"same-size-{pycs}"
    clone_tree(template.path, clone)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    python = str(clone / "bin" / "python")
    init = next(clone.glob("lib/python*/site-packages/alpha/__init__.py"))
    if pycs == "timestamp":
        recompile = (
            "import py_compile, sys; py_compile.compile(sys.argv[1], doraise=True,"
            " invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)"
        )
        subprocess.run([python, "-c", recompile, str(init)], env=env, check=True)
    before = init.stat()
    assert init.read_text() == "VERSION = '1.0'\n"
    init.write_text("VERSION = '9.9'\n")
    os.utime(init, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert init.stat().st_size == before.st_size
    out = subprocess.run(
        [python, "-c", "import alpha; print(alpha.VERSION)"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert out.stdout.strip() == ("9.9" if pycs == "template" else "1.0")
    remove_tree(clone)


def test_threads_asking_at_once_build_once(root: Path, wheelhouse: Path) -> None:
    cache = new_cache(root)
    spec = make_spec(wheelhouse, "alpha")
    got: list[Any] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get(spec))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 3 and len({id(t) for t in got}) == 1
    assert len(cache.built) == 1


# -- processes -------------------------------------------------------------------------------

GET_SCRIPT = """
import json, sys, time
from pytest_cowenv import TemplateCache, TemplateSpec
from pytest_cowenv._install import IndexOptions
from pytest_cowenv.fs import fs_type
from pytest_cowenv.store import prepare_root
root, wheelhouse, start_at, *reqs = sys.argv[1:]
spec = TemplateSpec.create(reqs, index=IndexOptions(find_links=(wheelhouse,), offline=True))
cache = TemplateCache(prepare_root(root))
key = cache.key(spec)
time.sleep(max(0.0, float(start_at) - time.time()))
print(json.dumps([key, cache.get(spec).built_now]), flush=True)
"""


def test_two_processes_on_a_cold_cache_build_once(root: Path, wheelhouse: Path) -> None:
    start_at = str(time.time() + 2.0)  # both past their imports, then asking together
    argv = [sys.executable, "-c", GET_SCRIPT, str(root), str(wheelhouse), start_at, "beta"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert results[0][0] == results[1][0]
    assert sorted(built for _key, built in results) == [False, True]


def _group_processes(pgid: int) -> list[str]:
    """Command lines of the live processes of process group ``pgid``."""
    found = []
    for pid, _parent, group, state in processes():
        if group == pgid and state != "Z":
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            found.append(cmdline.decode(errors="replace"))
    return found


@pytest.fixture(scope="module")
def many_wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough small wheels that installing them takes a moment: time to kill the builder."""
    directory = tmp_path_factory.mktemp("many")
    for i in range(60):
        name = f"many{i:02d}"
        modules = {f"{name}/m{j}.py": f"X = {j}\n" for j in range(10)}
        make_wheel(directory, name, modules={f"{name}/__init__.py": "", **modules})
    return directory


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the installer through /proc")
def test_builder_killed_mid_install_leaves_nothing_usable(
    root: Path, many_wheels: Path, route: str
) -> None:
    names = [f"many{i:02d}" for i in range(60 if route == "uv" else 6)]
    argv = [sys.executable, "-c", GET_SCRIPT, str(root), str(many_wheels), "0", *names]
    builder = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)
    installer = "uv pip install" if route == "uv" else "pip --python"
    deadline = time.monotonic() + 60
    while not any(installer in cmd for cmd in _group_processes(builder.pid)):
        assert builder.poll() is None, "the build ended before its installer was seen"
        assert time.monotonic() < deadline, "no installer started within 60 s"
        time.sleep(0.005)
    os.killpg(builder.pid, signal.SIGKILL)
    builder.wait()
    while _group_processes(builder.pid):  # the installer dies with its group
        time.sleep(0.01)

    spec = TemplateSpec.create(names, index=offline(many_wheels))
    cache = new_cache(root)
    key = cache.key(spec)
    assert [name.split(".")[0] for name in leftovers(cache.layout)] == [key]
    assert not any(cache.layout.meta(key, gen).exists() for gen in cache.layout.generations_of(key))
    assert cache._find(spec, key) is None

    template = cache.get(spec)
    assert template.built_now
    assert leftovers(cache.layout) == []
    assert len(template.resolved) == len(names)


LOCK_SCRIPT = """
import sys, time
from pytest_cowenv import TemplateCache
from pytest_cowenv.fs import fs_type
from pytest_cowenv.store import prepare_root
with TemplateCache(prepare_root(sys.argv[1]))._locked(sys.argv[2]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_lock_held_too_long_names_its_holder(root: Path, wheelhouse: Path) -> None:
    spec = make_spec(wheelhouse, "alpha")
    key = spec.key()
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_SCRIPT, str(root), key], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        cache = new_cache(root, lock_timeout=0.3)
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=rf"held by pid {holder.pid} on ") as info:
            cache.get(spec)
        assert isinstance(info.value, LockTimeoutError)
        assert time.monotonic() - start < 10
    finally:
        holder.kill()
        holder.wait()
    assert new_cache(root).get(spec).built_now  # the lock died with its holder


# -- damage, staleness, rebuild ---------------------------------------------------------------


def _garbage(meta: Path, template: Path) -> None:
    meta.write_text("{not json at all")


def _truncated(meta: Path, template: Path) -> None:
    text = meta.read_text()
    meta.write_text(text[: len(text) // 2])


def _wrong_types(meta: Path, template: Path) -> None:
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "created": [1]}))


def _no_metadata(meta: Path, template: Path) -> None:
    meta.unlink()  # as if killed between the rename and the metadata


def _file_deleted(meta: Path, template: Path) -> None:
    unprotect(template)
    next(template.glob("lib/python*/site-packages/alpha/cli.py")).unlink()


def _file_changed(meta: Path, template: Path) -> None:
    unprotect(template)
    next(template.glob("lib/python*/site-packages/alpha/cli.py")).write_text("broken(\n")


@pytest.mark.parametrize(
    "damage",
    [_garbage, _truncated, _wrong_types, _no_metadata, _file_deleted, _file_changed],
    ids=lambda f: f.__name__.strip("_"),
)
def test_damaged_template_is_rebuilt(root: Path, wheelhouse: Path, damage: Any) -> None:
    spec = make_spec(wheelhouse, "alpha")
    first = new_cache(root).get(spec)
    damage(new_cache(root).layout.meta(first.key, first.generation), first.path)

    again = new_cache(root).get(spec)
    assert again.built_now
    assert (
        next(again.path.glob("lib/python*/site-packages/alpha/cli.py"))
        .read_text()
        .startswith("import alpha")
    )
    assert not new_cache(root).get(spec).built_now


def test_uv_never_hardlinks_its_cache_into_a_template(
    real_fs: tuple[str, Path], wheelhouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uv's --link-mode=clone falls back to hardlinks where it cannot clone: then a template
    (and every clone made by hardlink) would share inodes with uv's cache, and a file edited
    in place or a chmod would change uv's cache and every later build from it."""
    fs_name, base = real_fs
    _use_route("uv", monkeypatch)
    monkeypatch.setenv("UV_CACHE_DIR", str(base / "uv-cache"))  # same filesystem: links work
    template = new_cache(base / "cache").get(make_spec(wheelhouse, "alpha", "beta"))
    try:
        linked = [
            str(path.relative_to(template.path))
            for path in template.path.rglob("*")
            if path.is_file() and not path.is_symlink() and path.stat().st_nlink > 1
        ]
        assert linked == [], fs_name
    finally:
        unprotect_templates(base / "cache")


def test_rebuild_before_forces_exactly_one_rebuild(root: Path, wheelhouse: Path) -> None:
    spec = make_spec(wheelhouse, "alpha")
    new_cache(root).get(spec)
    asked_at = time.time()  # --cowenv-rebuild: every worker of the run gets the same time
    assert new_cache(root, rebuild_before=asked_at).get(spec).built_now
    assert not new_cache(root, rebuild_before=asked_at).get(spec).built_now


def test_changed_interpreter_is_detected(root: Path, wheelhouse: Path) -> None:
    spec = make_spec(wheelhouse, "alpha")
    first = new_cache(root).get(spec)
    meta_path = new_cache(root).layout.meta(first.key, first.generation)
    meta = json.loads(meta_path.read_text())
    meta["interpreter"][2] += 1  # the base executable's mtime: reinstalled in place
    meta_path.write_text(json.dumps(meta))
    assert new_cache(root).get(spec).built_now


# -- the cache root --------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="chown needs root")
def test_root_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "theirs"
    cache.mkdir()
    os.chown(cache, 4242, 4242)
    with pytest.raises(CacheDirError, match="belongs to uid 4242"):
        prepare_root(cache)


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="chown needs root")
def test_subfolder_made_by_someone_else_in_a_shared_root_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "shared"
    cache.mkdir()
    cache.chmod(0o1777)
    mark(str(cache))  # ours, but someone else was first to make a part of it
    (cache / "templates").mkdir()
    os.chown(cache / "templates", 4242, 4242)
    with pytest.raises(CacheDirError, match="templates belongs to uid 4242"):
        prepare_root(cache)


def test_world_writable_root_without_sticky_bit_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "open"
    cache.mkdir()
    cache.chmod(0o777)
    with pytest.raises(CacheDirError, match="writable by everyone without the sticky bit"):
        prepare_root(cache)


def test_world_writable_root_with_sticky_bit_is_accepted(tmp_path: Path) -> None:
    cache = tmp_path / "sticky"
    cache.mkdir()
    cache.chmod(0o1777)
    assert prepare_root(cache).templates.is_dir()


# -- failures --------------------------------------------------------------------------------


def test_unresolvable_requirement_fails_once_naming_it(
    root: Path, wheelhouse: Path, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[TemplateSpec] = []
    real_build_env = build_module.build_env

    def counting_build_env(spec: TemplateSpec, *args: Any, **kwargs: Any) -> Any:
        builds.append(spec)
        return real_build_env(spec, *args, **kwargs)

    monkeypatch.setattr(template_module, "build_env", counting_build_env)
    cache = new_cache(root)
    spec = make_spec(wheelhouse, "no-such-package>=1")
    with pytest.raises(TemplateBuildError) as first:
        cache.get(spec)
    assert str(first.value).splitlines()[0].startswith("no-such-package>=1: installing failed")
    with pytest.raises(TemplateBuildError) as second:
        cache.get(spec)
    assert second.value is first.value
    assert len(builds) == 1
    assert leftovers(cache.layout) == []
    assert cache.layout.generations_of(spec.key()) == []


def _big_wheel(directory: Path, size: int) -> Path:
    """A wheel holding one file of ``size`` random (incompressible) bytes, stored as is."""
    name, version = "bigdata", "1.0"
    info = f"{name}-{version}.dist-info"
    small = {
        f"{name}/__init__.py": b"",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    path = directory / f"{name}-{version}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        digest = hashlib.sha256()
        with zf.open(f"{name}/blob.bin", "w", force_zip64=True) as blob:
            for _ in range(size >> 20):
                chunk = os.urandom(1 << 20)
                digest.update(chunk)
                blob.write(chunk)
        b64 = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
        record.append(f"{name}/blob.bin,sha256={b64},{size}")
        for arcname, data in small.items():
            zf.writestr(arcname, data)
            b64 = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arcname},sha256={b64},{len(data)}")
        record.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


@pytest.fixture(scope="module")
def big_wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("big")
    yield _big_wheel(directory, 200 << 20)
    shutil.rmtree(directory)


@pytest.mark.skipif(
    mounted("COWENV_TEST_SMALL", "ext4") is None,
    reason="needs COWENV_TEST_SMALL, the 160 MiB ext4 of scripts/cowfs.sh",
)
def test_disk_full_fails_clearly_and_gives_the_space_back(
    tmp_path: Path, big_wheel: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uv's words; pip's ("[Errno 28] No space left on device") get the same hint."""
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))  # 200 MB: not the user's
    small = Path(os.environ["COWENV_TEST_SMALL"]) / f"full-{os.getpid()}"
    try:
        layout = prepare_root(small)
        free_before = shutil.disk_usage(small).free
        spec = TemplateSpec.create([str(big_wheel)], index=IndexOptions(offline=True))
        with pytest.raises(TemplateBuildError) as failed:
            TemplateCache(layout).get(spec)
        first_line = str(failed.value).splitlines()[0]
        assert first_line.startswith("bigdata-1.0-py3-none-any.whl: installing failed")
        assert "no space left" in first_line and "MiB free" in first_line, first_line
        assert leftovers(layout) == []
        # Only the side files of locks may stay; no tree, no metadata.
        kept = {p.suffix for p in layout.templates.iterdir()}
        assert kept <= {".lock", ".inuse"}, sorted(layout.templates.iterdir())
        assert shutil.disk_usage(small).free >= free_before - (4 << 20)
    finally:
        shutil.rmtree(small, ignore_errors=True)
        shutil.rmtree(tmp_path / "uv-cache", ignore_errors=True)


# -- local projects --------------------------------------------------------------------------

BACKEND = '''
"""A PEP 517 backend in 30 lines: zips src/ into a wheel. No network, no setuptools.
The version is 0.1, or taken from git (like setuptools-scm) when the tree is a repository."""
import base64, hashlib, os, subprocess, zipfile

def _b64(data):
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

def _version():
    if not os.path.exists(".git"):
        return "0.1"
    # --dirty as setuptools-scm asks: git then refreshes (rewrites) the index it uses.
    out = subprocess.run(["git", "describe", "--tags", "--dirty"], capture_output=True, text=True)
    return out.stdout.strip().lstrip("v")

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    files = {}
    for dirpath, _dirs, names in os.walk("src"):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, "src")] = f.read()
    version = _version()
    info = f"proj-{version}.dist-info"
    meta = f"Metadata-Version: 2.1\\nName: proj\\nVersion: {version}\\n"
    files[info + "/METADATA"] = meta.encode()
    files[info + "/WHEEL"] = b"Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    record = [f"{k},sha256={_b64(v)},{len(v)}" for k, v in files.items()] + [info + "/RECORD,,"]
    files[info + "/RECORD"] = "\\n".join(record).encode()
    name = f"proj-{version}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as zf:
        for arcname, data in files.items():
            zf.writestr(arcname, data)
    return name
'''

PYPROJECT = """
[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]

[project]
name = "proj"
dynamic = ["version"]
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    path = tmp_path / "proj"
    (path / "src" / "proj").mkdir(parents=True)
    (path / "pyproject.toml").write_text(PYPROJECT)
    (path / "backend.py").write_text(textwrap.dedent(BACKEND))
    (path / "src" / "proj" / "__init__.py").write_text("import alpha\nANSWER = 42\n")
    return path


def test_local_project_is_built_from_a_copy_and_installed(
    root: Path, wheelhouse: Path, project: Path, route: str
) -> None:
    before = walk_tree(project).listing()
    spec = make_spec(wheelhouse, "alpha", project=project)
    cache = new_cache(root)
    template = cache.get(spec)
    assert template.resolved == {"alpha": "2.0", "proj": "0.1"}
    assert walk_tree(project).listing() == before  # no build/, no egg-info, no __pycache__
    direct_url = next(template.path.glob("lib/python*/site-packages/proj-0.1.dist-info"))
    assert json.loads((direct_url / "direct_url.json").read_text()) == {
        "url": project.as_uri(),
        "dir_info": {},
    }
    assert run_python(template.path, "import proj; print(proj.ANSWER)") == "42"
    if route == "pip":
        return  # the slow route has shown the build; the key does not depend on it

    (project / "src" / "proj" / "__init__.py").write_text("import alpha\nANSWER = 43\n")
    changed = make_spec(wheelhouse, "alpha", project=project)
    assert changed.key() != template.key
    rebuilt = new_cache(root).get(changed)  # (one cache keeps a spec's key for its lifetime)
    assert rebuilt.built_now and rebuilt.key != template.key


TOOL_STATE_IN_HOME = """
import pathlib

_build = build_wheel

def build_wheel(*args, **kwargs):  # as pip's rustc probe (rustup) or uv's cache do
    state = pathlib.Path.home() / ".tool-state"
    state.mkdir(exist_ok=True)
    with open(state / "builds", "a") as f:
        f.write("one more\\n")
    return _build(*args, **kwargs)
"""


def test_a_build_writing_into_home_inside_the_project_keeps_its_key(
    root: Path, wheelhouse: Path, project: Path, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(project / "backend.py", "a") as f:
        f.write(TOOL_STATE_IN_HOME)
    monkeypatch.setenv("HOME", str(project))  # as pytester does
    first = new_cache(root).get(make_spec(wheelhouse, "alpha", project=project))
    assert (project / ".tool-state" / "builds").read_text() == "one more\n"
    again = new_cache(root).get(make_spec(wheelhouse, "alpha", project=project))
    assert not again.built_now and again.key == first.key


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_project_versioned_by_git_builds_from_the_copy(
    root: Path, wheelhouse: Path, project: Path
) -> None:
    git = ["git", "-c", "user.email=t@example.org", "-c", "user.name=t"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "one"], ["tag", "v0.7"]):
        subprocess.run([*git, *args], cwd=project, check=True, capture_output=True)
    index = project / ".git" / "index"
    before = (index.read_bytes(), index.stat().st_mtime_ns)
    template = new_cache(root).get(make_spec(wheelhouse, "alpha", project=project))
    assert template.resolved["proj"] == "0.7"
    # The copy's git writes its own index: the project's stays as it was.
    assert (index.read_bytes(), index.stat().st_mtime_ns) == before
    status = subprocess.run(
        ["git", "status", "--porcelain", "--ignored"], cwd=project, capture_output=True, text=True
    )
    assert status.stdout == ""  # nothing written into the tree, not even ignored files


# -- a lock's set installed while the project's wheel is built ---------------------------------

WAITS_FOR_THE_LOCKED_SET = """
import glob, time

_build = build_wheel

def build_wheel(*args, **kwargs):  # builds once the template's install of the lock has begun
    deadline = time.monotonic() + 60
    while not glob.glob({installed!r}) and time.monotonic() < deadline:
        time.sleep(0.01)
    with open({log!r}, "a") as f:
        f.write("seen\\n" if glob.glob({installed!r}) else "not seen\\n")
    return _build(*args, **kwargs)
"""

FAILS = "\ndef build_wheel(*args, **kwargs):\n    raise SystemExit('no wheel today')\n"


def write_pylock(path: Path, wheelhouse: Path, *, bad_hash: str = "") -> Path:
    """A pylock.toml of alpha 1.0 and beta 1.0 from the wheelhouse (``bad_hash``: that one's
    hash is wrong)."""
    lines = ['lock-version = "1.0"', 'created-by = "tests"', ""]
    for name in ("alpha", "beta"):
        wheel = wheelhouse / f"{name}-1.0-py3-none-any.whl"
        digest = "0" * 64 if name == bad_hash else hashlib.sha256(wheel.read_bytes()).hexdigest()
        lines += [
            "[[packages]]",
            f'name = "{name}"',
            'version = "1.0"',
            f'wheels = [{{ url = "{wheel.as_uri()}", hashes = {{ sha256 = "{digest}" }} }}]',
            "",
        ]
    path.write_text("\n".join(lines))
    return path


def our_live_children() -> set[int]:
    return {pid for pid, parent, _g, state in processes() if parent == os.getpid() and state != "Z"}


def test_the_lock_is_installed_while_the_projects_wheel_is_built(
    root: Path, wheelhouse: Path, project: Path, route: str, tmp_path: Path
) -> None:
    """The backend builds only once it sees the lock's packages in the template being built:
    built first, as before, it would not see them. The installed set is the same."""
    log = tmp_path / "builds.log"
    installed = root / "tmp" / "*" / "env" / "lib" / "python*" / "site-packages" / "alpha*"
    with open(project / "backend.py", "a") as f:
        f.write(WAITS_FOR_THE_LOCKED_SET.format(installed=str(installed), log=str(log)))
    lock = write_pylock(tmp_path / "pylock.toml", wheelhouse)
    template = new_cache(root).get(make_spec(wheelhouse, lock=lock, project=project))
    assert log.read_text() == "seen\n"
    assert template.resolved == {"alpha": "1.0", "beta": "1.0", "proj": "0.1"}
    assert run_python(template.path, "import proj, beta; print(proj.ANSWER)") == "42"
    assert set(template.meta["phases"]) >= {"venv", "install", "wheels"}


def test_a_wheel_failing_beside_the_locked_install_is_told_and_leaves_nothing(
    root: Path, wheelhouse: Path, project: Path, route: str, tmp_path: Path
) -> None:
    with open(project / "backend.py", "a") as f:
        f.write(FAILS)
    cache = new_cache(root)
    spec = make_spec(
        wheelhouse, lock=write_pylock(tmp_path / "pylock.toml", wheelhouse), project=project
    )
    before = our_live_children()  # (other tests' may still run)
    with pytest.raises(TemplateBuildError) as failed:
        cache.get(spec)
    first, _, output = str(failed.value).partition("\n")
    assert str(project) in first and "building a wheel failed" in first, first
    # The build's own output: pip passes the backend's on, uv (--quiet) names the hook.
    assert output.startswith("command: "), output
    assert "build_wheel" in output or "no wheel today" in output, output
    assert leftovers(cache.layout) == [] and cache.layout.generations_of(cache.key(spec)) == []
    assert our_live_children() <= before  # no build process left behind


def test_a_failed_locked_install_stops_waiting_for_another_builders_wheel(
    root: Path, wheelhouse: Path, project: Path, route: str, tmp_path: Path
) -> None:
    """Another process builds the project's wheel (holds its lock); the lock's own install
    fails meanwhile: that failure is told at once, not after the wheel's lock timeout."""
    import fcntl

    (tmp_path / "good").mkdir()
    good = write_pylock(tmp_path / "good" / "pylock.toml", wheelhouse)
    cache = new_cache(root, lock_timeout=120)
    cache.get(make_spec(wheelhouse, lock=good, project=project))
    (entry,) = (p for p in cache.layout.wheels.iterdir() if p.is_dir())
    (entry / "wheel.json").unlink()  # no longer sound: the next template rebuilds it, locked
    holder = os.open(cache.layout.wheel_lock(entry.name), os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # as a builder in another process holds it
        bad = write_pylock(tmp_path / "pylock.toml", wheelhouse, bad_hash="beta")
        spec = make_spec(wheelhouse, lock=bad, project=project)
        before = our_live_children()  # (other tests' may still run)
        with pytest.raises(TemplateBuildError) as failed:
            new_cache(root, lock_timeout=120).get(spec)
    finally:
        os.close(holder)
    first = str(failed.value).partition("\n")[0]
    assert "installing failed" in first and "ash mismatch" in first, first
    assert leftovers(cache.layout) == [] and cache.layout.generations_of(cache.key(spec)) == []
    assert our_live_children() <= before  # no build process left behind


# -- the installer's identity ----------------------------------------------------------------


def test_the_installer_is_asked_once_ahead_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """``uv --version`` started ahead (while the plugin imports the core) is the one the key
    reads; asked again once known, nothing is started."""
    from pytest_cowenv import _install

    _use_route("uv", monkeypatch)
    started: list[str] = []
    real = _install._version_process

    def counted(uv: str) -> Any:
        started.append(uv)
        return real(uv)

    monkeypatch.setattr(_install, "_version_process", counted)
    try:
        _install.prefetch_installer_identity()
        assert len(started) == 1 and _install._PENDING
        identity = installer_identity()
        assert identity.startswith("uv ") and not _install._PENDING
        _install.prefetch_installer_identity()  # known: nothing more runs
        assert installer_identity() == identity and len(started) == 1
        installer_identity.cache_clear()
        assert installer_identity() == identity and len(started) == 2  # no prefetch: asked now
    finally:
        installer_identity.cache_clear()
        uv_binary.cache_clear()


def test_a_base_env_made_behind_the_install_reports_its_own_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uv's venv is made while the install runs (see start_base_env): its failure is still
    a one-line TemplateBuildError, raised when the build waits for it."""
    from pytest_cowenv._build import start_base_env

    _use_route("uv", monkeypatch)
    env = tmp_path / "env"
    env.mkdir()
    made = start_base_env(env, str(tmp_path / "no-python"), pip=False, what="spec x")
    with pytest.raises(TemplateBuildError) as failed:
        made()
    assert str(failed.value).startswith("spec x: creating the base environment with ")
    installer_identity.cache_clear()
    uv_binary.cache_clear()

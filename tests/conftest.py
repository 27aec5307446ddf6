"""Shared fixtures: real filesystems (from ``scripts/cowfs.sh``) and trees to clone on them.

``eval "$(scripts/cowfs.sh up)"`` exports ``COWENV_TEST_BTRFS``, ``COWENV_TEST_XFS``,
``COWENV_TEST_EXT4`` and ``COWENV_TEST_TMPFS``; a test that needs a filesystem whose variable
is unset (or points at the wrong kind of filesystem) is skipped and says why.
"""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import pytest

from _helpers import mounted, remove_cache, settle_btrfs, unprotect_templates
from _wheels import standard_wheelhouse
from pytest_cowenv import fs
from pytest_cowenv._install import uv_binary
from pytest_cowenv.clone import forget_decisions, remove_tree

if TYPE_CHECKING:  # pytest.TerminalReporter is public from pytest 8 on; we support 7.4
    from _pytest.terminal import TerminalReporter

REAL_FILESYSTEMS = ("btrfs", "xfs", "ext4", "tmpfs")


def _env_var(name: str) -> str:
    return f"COWENV_TEST_{name.upper()}"


def real_fs_problem(name: str) -> Optional[str]:
    """Why the real ``name`` filesystem cannot be used in this run, or None if it can."""
    var = _env_var(name)
    root = os.environ.get(var)
    if not root:
        return f'{var} is not set (mount one with: eval "$(scripts/cowfs.sh up)")'
    if not os.path.isdir(root):
        return f"{var}={root} is not a directory"
    actual = fs.fs_type(root)
    if actual != name:
        return f"{var}={root} is {actual}, not {name}"
    return None


def shared_real_roots(prefix: str) -> Iterator[Callable[[str], Path]]:
    """The body of a module-scoped ``roots`` fixture: ``roots(fs)`` is a cache root on that
    real filesystem, made once and shared by the module's tests (one template build per
    filesystem and xdist worker), removed at the end; a missing mount skips the test."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            problem = real_fs_problem(name)
            if problem:
                pytest.skip(f"needs a real {name} mount: {problem}")
            mount = os.environ[f"COWENV_TEST_{name.upper()}"]
            made[name] = Path(tempfile.mkdtemp(prefix=prefix, dir=mount))
        return made[name] / "cache"

    yield get
    for path in made.values():
        remove_cache(path / "cache")
        remove_tree(path)


def _fs_line() -> tuple[str, list[str]]:
    parts, missing = [], []
    for name in REAL_FILESYSTEMS:
        problem = real_fs_problem(name)
        if problem is None:
            parts.append(f"{name}={os.environ[_env_var(name)]}")
        else:
            parts.append(f"{name} missing")
            missing.append(f"{name}: {problem}")
    return "cowenv real filesystems: " + ", ".join(parts), missing


def uv_problem() -> Optional[str]:
    """Why the uv route cannot be tested in this run (it would be the pip route twice), or
    None if it can."""
    if os.environ.get("PYTEST_COWENV_NO_UV"):
        return "PYTEST_COWENV_NO_UV is set (unset it to test the uv route)"
    if uv_binary.__wrapped__() is None:  # uncached: tests switch routes
        return "uv is not installed (python -m pip install uv, or put uv on PATH)"
    return None


def skip_without_uv() -> None:
    """Skip the calling test unless the uv route can be tested."""
    problem = uv_problem()
    if problem:
        pytest.skip(f"needs uv: {problem}")


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [_fs_line()[0], f"cowenv uv route: {uv_problem() or 'tested'}"]


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    """Under CI a missing filesystem or uv means unproven code: say so where the eye lands."""
    if os.environ.get("CI") != "true":
        return
    _, missing = _fs_line()
    if missing:
        terminalreporter.write_sep("!", "REAL FILESYSTEMS MISSING IN CI", red=True, bold=True)
        for problem in missing:
            terminalreporter.write_line(f"{problem}: its tests were SKIPPED", red=True)
    uv = uv_problem()
    if uv:
        terminalreporter.write_sep("!", "UV MISSING IN CI", red=True, bold=True)
        terminalreporter.write_line(f"{uv}: the uv route's tests were SKIPPED", red=True)


@pytest.fixture
def offline_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine's pip config and find-links must not help (or slow) an offline build, and
    bytecode is written as on a user's machine."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)


@pytest.fixture(autouse=True)
def _fresh_decisions() -> Iterator[None]:
    """Every test starts without cached probes, fallback decisions or warnings."""
    forget_decisions()
    fs.forget()
    yield
    forget_decisions()
    fs.forget()


def _fresh_dir(name: str, request: pytest.FixtureRequest) -> Iterator[Path]:
    problem = real_fs_problem(name)
    if problem:
        pytest.skip(f"needs a real {name} mount: {problem}")
    prefix = f"{request.node.name[:60]}-".replace(os.sep, "_")
    path = tempfile.mkdtemp(prefix=prefix, dir=os.environ[_env_var(name)])
    yield Path(path)
    if os.path.lexists(path):
        # Entry by entry: remove_tree destroys a snapshot at once, but would walk into the
        # snapshots inside a plain directory file by file.
        for entry in os.listdir(path):
            remove_tree(os.path.join(path, entry))
        os.rmdir(path)


@pytest.fixture
def btrfs_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory on the real btrfs mount (a plain directory, not a subvolume)."""
    yield from _fresh_dir("btrfs", request)


@pytest.fixture
def xfs_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory on the real XFS (reflink=1) mount."""
    yield from _fresh_dir("xfs", request)


@pytest.fixture
def ext4_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory on the real ext4 mount (no reflinks)."""
    yield from _fresh_dir("ext4", request)


@pytest.fixture
def tmpfs_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory on a tmpfs (no reflinks)."""
    yield from _fresh_dir("tmpfs", request)


@pytest.fixture(params=REAL_FILESYSTEMS)
def real_fs(request: pytest.FixtureRequest) -> tuple[str, Path]:
    """Each real filesystem in turn: ``(name, fresh directory on it)``."""
    name: str = request.param
    return name, request.getfixturevalue(f"{name}_dir")


# --- caches and wheels of the template tests ------------------------------------------------


@pytest.fixture
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A cache root: on btrfs when mounted (subvolumes, read-only templates; the ``btrfs_dir``
    fixture), else in ``tmp_path``. Modules that share a root per filesystem override it."""
    on_btrfs = mounted("COWENV_TEST_BTRFS", "btrfs") is not None
    base = request.getfixturevalue("btrfs_dir") if on_btrfs else tmp_path
    yield base / "cache"
    unprotect_templates(base / "cache")


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The standard offline wheels (``_wheels.standard_wheelhouse``), made once per module."""
    return standard_wheelhouse(tmp_path_factory.mktemp("wheelhouse"))


# --- trees to clone ---------------------------------------------------------------------

# Distinct nanosecond timestamps, so that a clone that rounds to seconds or µs is caught.
MTIME_NS = 1_700_000_000_123_456_789
LONG_NAME = "é" * 110 + ".py"  # 223 bytes in UTF-8 (NAME_MAX is 255)


def make_identity_tree(root: Path) -> Path:
    """Fill ``root`` (an existing, empty directory) with everything a clone must reproduce."""
    files: dict[str, tuple[bytes, int]] = {
        "bin/python-launcher": (b'#!/bin/sh\nexec python3 "$@"\n', 0o755),
        "bin/tool": (b"#!/bin/sh\necho tool\n", 0o750),
        "lib/site-packages/pkg/__init__.py": (b"VALUE = 1\n", 0o644),
        "lib/site-packages/pkg/data.bin": (bytes(range(256)) * 300, 0o644),
        "lib/site-packages/pkg/empty.txt": (b"", 0o644),
        "lib/site-packages/pkg/group-writable.txt": (b"gw\n", 0o664),
        "lib/site-packages/pkg/private.key": (b"secret\n", 0o600),
        "lib/site-packages/pkg/readonly.txt": (b"ro\n", 0o444),
        "lib/site-packages/ünïcödé/ファイル.txt": ("日本語\n".encode(), 0o644),
        f"lib/site-packages/{LONG_NAME}": (b"# long name\n", 0o644),
        "pyvenv.cfg": (b"home = /usr/bin\n", 0o644),
        "readonly-dir/inside.txt": (b"inside a read-only directory\n", 0o644),
    }
    for rel, (data, mode) in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)
    (root / "empty-dir" / "nested-empty").mkdir(parents=True)
    (root / "dir-0750").mkdir(mode=0o750)
    links = {
        "bin/python3": "python-launcher",  # relative, same directory
        "lib/site-packages/pkg/up-link": "../../../pyvenv.cfg",  # relative, upwards
        "etc-passwd": "/etc/passwd",  # absolute
        "dangling": "does/not/exist",  # dangling
        "lib64": "lib",  # to a directory
    }
    for rel, target in links.items():
        os.symlink(target, root / rel)
    _stamp(root)
    (root / "dir-0750").chmod(0o750)
    (root / "readonly-dir").chmod(0o555)
    return root


def _stamp(root: Path) -> None:
    """Give every entry its own nanosecond mtime, children before their directories."""
    entries = sorted(root.rglob("*"), key=lambda p: -len(p.parts))
    for i, path in enumerate([*entries, root]):
        ns = MTIME_NS + i * 1_000_003
        os.utime(path, ns=(ns - 7, ns), follow_symlinks=False)


def make_data_tree(root: Path, files: int = 1200, total_bytes: int = 20 << 20) -> Path:
    """A venv-like tree: ``files`` files of about ``total_bytes`` in all, spread over nested
    packages, sized like a real venv's (log-normal: median ~5 KB, a fifth under 2 KiB, which
    btrfs stores inline in its metadata). Deterministic."""
    rng = random.Random(1200)
    weights = [rng.lognormvariate(math.log(4700), 1.4) for _ in range(files)]
    scale = total_bytes / sum(weights)
    for i, weight in enumerate(weights):
        path = root / f"pkg{i % 17}" / f"sub{i % 5}" / f"module_{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(max(1, int(weight * scale))))
    return root


def used_bytes(path: Path) -> int:
    """Bytes in use on the filesystem holding ``path``, after ``sync``.

    On btrfs, the logical bytes that ``btrfs filesystem df`` reports used (data, metadata and
    system, each counted once even under the DUP profile, which writes metadata twice); on
    other filesystems the used blocks of ``statvfs``.
    """
    os.sync()
    if fs.fs_type(path) != "btrfs":
        st = os.statvfs(path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize
    if shutil.which("btrfs") is None:
        pytest.skip("btrfs-progs (the btrfs command) is not installed")
    # Subvolumes destroyed earlier (by this test or another worker's) are cleaned up in the
    # background, which allocates and frees metadata while we measure: wait for it first.
    settle_btrfs(path)
    out = subprocess.run(
        ["btrfs", "filesystem", "df", "-b", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return sum(int(m) for m in re.findall(r"used=(\d+)", out))


@pytest.fixture
def identity_tree() -> Callable[[Path], Path]:
    """``identity_tree(root)`` fills ``root`` with the tree every clone must reproduce."""
    return make_identity_tree


@pytest.fixture
def used_space() -> Callable[[Path], int]:
    """``used_space(path)``: bytes in use on ``path``'s filesystem after sync (see used_bytes)."""
    return used_bytes


@pytest.fixture
def data_tree() -> Callable[..., Path]:
    """``data_tree(root, files=1200, total_bytes=20 MiB)`` fills ``root`` like a venv."""
    return make_data_tree

"""Plain helpers shared by the test modules (fixtures are in ``conftest.py``).

pytest_cowenv is imported inside the functions only, so that the reliability suite, which
watches the plugin from the outside, can use them too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional, TypeVar

import pytest

T = TypeVar("T")

# A frame of installed or of our own code in a traceback, in pytest's form
# (`src/pytest_cowenv/x.py:12`) or Python's (`File ".../pytest_cowenv/x.py", line 12`).
# A user mistake must never show one.
INTERNAL_FRAME = re.compile(r"(site-packages|pytest_cowenv)[/\\][\w/\\]+\.py(:\d+|\", line \d+)")


def internal_frames(text: str) -> list[str]:
    """Lines of ``text`` that show such a frame (a warning's location in the warnings summary
    is not a frame)."""
    return [
        line
        for line in text.splitlines()
        if INTERNAL_FRAME.search(line) and not re.search(r"\.py:\d+: \w*Warning: ", line)
    ]


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    what: str = "the condition",
    interval: float = 0.01,
) -> T:
    """Poll ``predicate`` until it returns something true, and return that; fail after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def mounted(var: str, fstype: str) -> Optional[Path]:
    """The directory named by ``var`` if it is on a ``fstype`` mount (scripts/cowfs.sh)."""
    from pytest_cowenv.fs import fs_type

    path = os.environ.get(var)
    return Path(path) if path and os.path.isdir(path) and fs_type(path) == fstype else None


def fast_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A fresh directory on the btrfs test mount if there is one (snapshots), else in tmp."""
    btrfs = os.environ.get("COWENV_TEST_BTRFS")
    if btrfs and os.path.isdir(btrfs):
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=btrfs))
    return tmp_path_factory.mktemp(name)


def unprotect(template: Path) -> None:
    """Make one template writable (:func:`pytest_cowenv.clone.unprotect`, imported here only
    when called)."""
    from pytest_cowenv.clone import unprotect as make_writable

    make_writable(template)


def unprotect_templates(cache_root: Path) -> None:
    """Make every template of the cache at ``cache_root`` writable (on btrfs they are
    read-only subvolumes), as the plugin itself does before removing one."""
    from pytest_cowenv.clone import unprotect

    templates = cache_root / "templates"
    for child in templates.iterdir() if templates.is_dir() else ():
        if child.is_dir() and not child.is_symlink():
            unprotect(child)


def remove_cache(cache_root: Path) -> None:
    """Remove a cache root, read-only templates included."""
    from pytest_cowenv.clone import remove_tree, unprotect

    templates = cache_root / "templates"
    for child in templates.iterdir() if templates.is_dir() else ():
        if child.is_dir() and not child.is_symlink():
            # One by one: remove_tree destroys a snapshot at once, but would walk into the
            # snapshots inside a plain directory file by file.
            unprotect(child)
            remove_tree(child)
    if os.path.lexists(cache_root):
        remove_tree(cache_root)


def settle_btrfs(path: Path) -> None:
    """Wait until btrfs has cleaned up the subvolumes destroyed on ``path``'s filesystem (it
    frees their blocks, and writes metadata, in the background), then sync. A no-op wait on
    other filesystems."""
    if shutil.which("btrfs"):
        cmd = ["btrfs", "subvolume", "sync", str(path)]
        subprocess.run(cmd, check=False, capture_output=True, timeout=120)
    os.sync()


def fast_cache(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """The body of a module's own ``cache`` fixture: a cache root in a fresh :func:`fast_dir`,
    removed afterwards (``yield from fast_cache(tmp_path_factory, "cowenv-x")``)."""
    root = fast_dir(tmp_path_factory, name)
    yield root / "cache"
    remove_cache(root / "cache")
    remove_cache(root)


def sdist_sources(requirement: str, where: Path) -> Path:
    """The unpacked sdist of ``requirement`` from the package index, under ``where``: a real
    project's own sources, tests and tox.ini, as a new user gets them. Only the project
    itself comes as source: with ``--no-binary :all:`` pip also builds every build
    requirement from source to read the sdist's metadata (minutes with an older pip)."""
    from packaging.requirements import Requirement

    name = Requirement(requirement).name
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"),
            *("--no-binary", name, "--disable-pip-version-check", "-d", str(where)),
            requirement,
        ],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    (sdist,) = where.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(where, filter="data")
        else:  # pragma: no cover - an interpreter without extraction filters
            tar.extractall(where)
    (sources,) = (p for p in where.iterdir() if p.is_dir())
    return sources


def processes() -> list[tuple[int, int, int, str]]:
    """(pid, parent pid, process group, state) of every process /proc lists now (Linux)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            found.append((int(entry), int(fields[1]), int(fields[2]), fields[0]))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return found


def run_python(env: Path, code: str) -> str:
    """What ``code`` prints when run by ``env``'s python (stripped); fails if it fails."""
    out = subprocess.run(
        [str(env / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


PYENV = Path("~/.pyenv/versions").expanduser()  # at import: pytester moves HOME
_WHO = "import sys; print(sys.executable); print(sys.version.split()[0])"


def other_pythons() -> Iterator[tuple[str, str]]:
    """(executable, version) of each interpreter on this machine of another minor version
    than this one that runs: ``python3.X`` on PATH, else pyenv's."""
    import glob

    for minor in range(6, 16):
        if minor == sys.version_info[1]:
            continue
        name = f"python3.{minor}"
        for found in [shutil.which(name), *sorted(glob.glob(f"{PYENV}/3.{minor}*/bin/{name}"))]:
            if not found:
                continue
            done = subprocess.run([found, "-c", _WHO], capture_output=True, text=True, check=False)
            if done.returncode == 0:  # a pyenv shim for a version that is not selected fails
                executable, version = done.stdout.splitlines()
                yield executable, version
                break

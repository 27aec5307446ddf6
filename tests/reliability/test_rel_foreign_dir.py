"""A cache root pointed at a user's non-empty directory whose names look like a cache's.

Nothing there was made by pytest-cowenv (no marker), so nothing may be used or deleted: a plain
pytest run stops at start-up, and every ``pytest-cowenv`` command refuses, each with one line.
Checked on every real filesystem, for a directory with look-alike names only and for one that
has all four folders of a cache of the previous version (which would be adopted) plus
look-alikes inside them. Every file, its content and its inode, is the same afterwards.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Callable

import pytest

from _helpers import internal_frames

from ._reliability import run_inner

LOOK_ALIKES = (
    "tmp/x.123.y/",
    "templates/notes/",
    "templates/a.json",
    "kept/something/",
    "clones/x-1-2/",
)
COMMANDS = (
    ["clean"],
    ["clean", "--kept"],
    ["prune", "--all"],
    ["list"],
    ["info"],
    ["build", "alpha"],
)
INNER = """
import pytest

@pytest.mark.cowenv("alpha==1.0")
def test_never_runs(cowenv):
    pass
"""


def plant(root: Path, with_cache_folders: bool) -> None:
    if with_cache_folders:
        for sub in ("templates", "clones", "tmp", "pyc"):
            (root / sub).mkdir()
    for name in LOOK_ALIKES:
        path = root / name.rstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith("/"):
            path.mkdir()
            (path / "precious.txt").write_text(f"the user's {name}")
        else:
            path.write_text(f"the user's {name}")


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every entry under ``root``: its inode and, for a file, a hash of its content."""
    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        found[str(path.relative_to(root))] = (st.st_ino, digest)
    return found


@pytest.mark.parametrize("with_cache_folders", [False, True], ids=["look-alikes", "old-layout"])
@pytest.mark.parametrize("fs", ["btrfs", "xfs", "ext4", "tmpfs"])
def test_a_directory_that_is_not_ours_is_refused_by_everyone(
    pytester: pytest.Pytester,
    real_dir: Callable[[str], Path],
    offline: list[str],
    record_property: Callable[[str, object], None],
    fs: str,
    with_cache_folders: bool,
) -> None:
    root = real_dir(fs) / "mine"
    root.mkdir()
    plant(root, with_cache_folders)
    before = snapshot(root)

    pytester.makepyfile(INNER)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--cowenv-dir", str(root), *offline
    )
    out = "\n".join(result.outlines + result.errlines)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, out
    (error,) = [line for line in result.errlines if line.strip()]
    assert error.startswith(f"ERROR: cache dir {root} is not a pytest-cowenv cache"), error
    assert "(--cowenv-dir)" in error and "test_never_runs" not in out
    assert snapshot(root) == before, "a pytest start-up touched the user's directory"

    for command in COMMANDS:
        argv = [sys.executable, "-m", "pytest_cowenv", *command, "--dir", str(root)]
        proc = run_inner(argv, timeout=120)
        assert proc.returncode == 1 and proc.stdout == "", (command, proc.stdout, proc.stderr)
        (line,) = proc.stderr.splitlines()
        assert "is not a pytest-cowenv cache" in line and "(--dir)" in line, line
        assert not internal_frames(proc.stderr)
        assert snapshot(root) == before, f"`pytest-cowenv {' '.join(command)}` touched it"
    assert not (root / "pytest-cowenv-cache.json").exists()
    record_property("faults", 1 + len(COMMANDS))

"""Cache roots for tests: on the btrfs test mount when there is one, and a way to remove them."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from pytest_cowenv import remove_tree
from pytest_cowenv.clone import _platform


def fast_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A fresh directory on the btrfs test mount if there is one (snapshots), else in tmp."""
    btrfs = os.environ.get("COWENV_TEST_BTRFS")
    if btrfs and os.path.isdir(btrfs):
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=btrfs))
    return tmp_path_factory.mktemp(name)


def wipe(root: Path) -> None:
    """Remove a cache root, read-only template subvolumes included."""
    for sub in (root / "templates").glob("*"):
        if sub.is_dir() and not sub.is_symlink():
            _platform.BACKEND.set_readonly(str(sub), False)
            remove_tree(sub)
    if root.exists():
        remove_tree(root)

"""Fixtures of the reliability suite: real filesystems, an offline wheelhouse, inner runs.

Every inner pytest run is a real process with ``--cowenv-dir`` on a real filesystem (from
``scripts/cowfs.sh``), offline (``--cowenv-find-links`` + ``--cowenv-offline``) and with the
machine's pip configuration cleared, so that what it proves does not depend on the network.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from _helpers import settle_btrfs, unprotect_templates
from _wheels import standard_wheelhouse

from ._reliability import OUTER_VARS, exclusive, mount_of

# The small filesystems that tests fill, one test at a time (``exclusive``).
SMALL = ("small", "smallbtrfs")


@pytest.fixture
def real_dir(request: pytest.FixtureRequest) -> Iterator[Callable[[str], Path]]:
    """``real_dir("btrfs")``: a fresh directory on that real filesystem, removed afterwards
    (templates and clones inside included)."""
    made: list[tuple[str, Path]] = []

    def make(name: str) -> Path:
        prefix = f"rel-{request.node.name[:50]}-".replace(os.sep, "_")
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=mount_of(name)))
        made.append((name, path))
        return path

    yield make
    if os.environ.get("RELIABILITY_KEEP"):  # to look at a failure's cache afterwards
        return
    for name, path in made:
        if name not in SMALL:
            _remove(path)
            continue
        # A test that fills a small filesystem measures its free space under this lock: give
        # the space back under it too, or that test measures while this one still holds it
        # (its "does not fit" then fits once this removal is done).
        with exclusive(str(mount_of(name))):
            _remove(path)
            settle_btrfs(mount_of(name))  # btrfs frees a destroyed subvolume's blocks later


def _remove(path: Path) -> None:
    from pytest_cowenv.clone import remove_tree

    if not path.exists():
        return
    # Templates on btrfs are read-only subvolumes: clear the flag before deleting inside.
    for templates in path.glob("**/templates"):
        unprotect_templates(templates.parent)
    for sub in path.rglob("*"):
        if sub.is_dir() and not sub.is_symlink():
            os.chmod(sub, 0o700)
    remove_tree(path)


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alpha 1.0/2.0 (console script ``alpha``), beta (needs alpha), gamma: offline."""
    return standard_wheelhouse(tmp_path_factory.mktemp("wheelhouse"))


@pytest.fixture
def offline(wheelhouse: Path) -> list[str]:
    """The options that make an inner run build templates from the wheelhouse only."""
    return ["--cowenv-find-links", str(wheelhouse), "--cowenv-offline"]


@pytest.fixture(autouse=True)
def _inner_runs_are_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytester's runs inherit os.environ: give them the same clean slate as spawn_pytest."""
    for name in OUTER_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)

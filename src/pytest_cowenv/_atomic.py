"""Files of the cache written whole or not at all, and the shared lock that marks a template
in use (clean-up takes it exclusively before it removes one).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import IO, Optional

from .marker import write_new_file
from .store import temp_name


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a crash leaves the old file or the new one,
    both complete: data synced before the rename, the directory synced after it."""
    tmp = temp_name(path)
    data = text.encode("utf-8")
    try:
        try:
            write_new_file(str(tmp), data, sync=True)
        except FileExistsError:  # a dead namesake's leftover: removed, never written through
            tmp.unlink()
            write_new_file(str(tmp), data, sync=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    sync_dir(path.parent)


def sync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (renames, new names) durable."""
    if sys.platform == "win32":  # pragma: no cover - directories cannot be opened there
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hold_in_use(path: Path) -> IO[bytes]:
    """Create ``path`` if needed and hold a shared lock on it until the process ends (or the
    file is closed)."""
    while True:
        f = open(path, "ab")  # noqa: SIM115 - held open on purpose
        if _share(f):
            return f
        f.close()  # it was removed, and this file unlinked, while we waited


def hold_existing(path: Path) -> Optional[IO[bytes]]:
    """Hold a shared lock on ``path`` as :func:`hold_in_use`, or None if it is gone."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - held open on purpose
    except FileNotFoundError:
        return None
    if _share(f):
        return f
    f.close()
    return None


def _share(f: IO[bytes]) -> bool:
    """Take a shared lock on ``f``: False if its file was unlinked before we had it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: clean-up relies on age only
        return True
    fcntl.flock(f.fileno(), fcntl.LOCK_SH)
    return os.fstat(f.fileno()).st_nlink > 0

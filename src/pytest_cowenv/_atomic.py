"""Files of the cache written whole or not at all, and the shared lock that marks a template
in use (clean-up takes it exclusively before it removes one).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, Optional

from .errors import CacheDirError, not_ours
from .marker import write_new_file
from .store import temp_name

# Lock files and notes of the cache are opened without following a link: a link planted at
# one of their names would have us truncate, create or lock the file it points to.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def open_ours(path: Path, flags: int) -> int:
    """``os.open`` of a lock file or note of the cache, never through a link; a link there
    is not ours and is left alone: :class:`CacheDirError`, which names it."""
    try:
        return os.open(path, flags | _NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.EMLINK):  # EMLINK: the BSDs' word for it
            raise
    raise not_ours(path)


def write_note(path: Path, text: str) -> None:
    """Write the small informative file ``path`` (as a build lock's owner note), never
    through a link; a planted link makes this raise :class:`CacheDirError`."""
    fd = open_ours(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def read_note(path: Path) -> Optional[str]:
    """The text of ``path`` as :func:`write_note` wrote it; None if it is absent, a link or
    unreadable."""
    try:
        fd = open_ours(path, os.O_RDONLY)
    except (OSError, CacheDirError):
        return None
    with os.fdopen(fd, encoding="utf-8", errors="replace") as f:
        return f.read()


def read_json(path: Path) -> Any:
    """The JSON document in ``path``, a file of the cache (metadata, a listing), never read
    through a link: a link raises OSError (ELOOP) as an unreadable file does."""
    with os.fdopen(os.open(path, os.O_RDONLY | _NOFOLLOW), "rb") as f:
        return json.loads(f.read())


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
        f = os.fdopen(open_ours(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab")
        if _share(f):
            return f
        f.close()  # it was removed, and this file unlinked, while we waited


def hold_existing(path: Path) -> Optional[IO[bytes]]:
    """Hold a shared lock on ``path`` as :func:`hold_in_use`, or None if it is gone."""
    try:
        f = os.fdopen(open_ours(path, os.O_RDONLY), "rb")
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


class BuildLock:
    """An exclusive ``flock`` on a lock file that stays in place: the lock filelock takes on
    POSIX, so that every version of this plugin agrees on it, without importing filelock
    (slow to import) where ``fcntl`` is there. Each :meth:`try_acquire` opens the file anew:
    two threads of one process exclude each other as two processes do."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: Optional[int] = None
        self._portable: Any = None  # a filelock.FileLock, where flock is not to be had

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; never waits."""
        if self._portable is None:
            try:
                import fcntl
            except ImportError:  # pragma: no cover - Windows
                fcntl = None  # type: ignore[assignment]
            if fcntl is not None:
                fd = open_ours(self.path, os.O_RDWR | os.O_CREAT)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    return False
                except OSError as exc:
                    os.close(fd)
                    if exc.errno not in _NO_FLOCK:
                        raise
                else:
                    if os.fstat(fd).st_nlink > 0:
                        self._fd = fd
                        return True
                    os.close(fd)  # removed while we waited (`clean --all`): try the new one
                    return False
            import filelock

            if os.path.islink(self.path):  # filelock before 3.20.1 opens through links
                raise not_ours(self.path)
            self._portable = filelock.FileLock(str(self.path))
        import filelock

        try:
            self._portable.acquire(timeout=0)
        except filelock.Timeout:
            return False
        return True

    def acquire(self, timeout: float, give_up: Optional[threading.Event] = None) -> bool:
        """Take the lock, waiting for it up to ``timeout`` seconds (one try if 0 or less);
        False if another still holds it then, or once ``give_up`` is set."""
        deadline = time.monotonic() + timeout
        while not self.try_acquire():
            if (give_up is not None and give_up.is_set()) or time.monotonic() > deadline:
                return False
            (give_up or _NEVER).wait(_POLL)
        return True

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor of the open file drops its flock
        elif self._portable is not None:
            self._portable.release()


_POLL = 0.05  # seconds between two tries of a build lock that another holds
_NEVER = threading.Event()  # never set: a wait on it is a sleep

# flock errors of a filesystem that has no working flock: filelock's own way is taken there.
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)

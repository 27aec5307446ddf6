"""Linux's inotify, through ctypes: the watches that tell whether a clone was touched.

A :class:`Watch` is one inotify instance for one clone: the clone's entries are added before
any test has it, and :meth:`Watch.quiet` then says whether anything changed them since.
Closing the instance drops its watches at once and queues nothing (a watch removed one by
one, or by the deletion of its inode, would queue an event each).
"""

from __future__ import annotations

import ctypes
import os
import threading
from typing import ClassVar, Optional

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_DONT_FOLLOW = 0x02000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
# Every change an entry or a directory's entries can have; never reads or opens (IN_ACCESS,
# IN_OPEN, IN_CLOSE_NOWRITE: a test that imports makes those). A file written, truncated or
# mapped for writing was opened for writing: its last close queues IN_CLOSE_WRITE even when
# the writes themselves queue nothing (writes through a shared mapping). Overflow of the
# queue is always reported (IN_Q_OVERFLOW), and so is any watch's end (IN_IGNORED).
CHANGES = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)

_libc: Optional[ctypes.CDLL] = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_init1.restype = ctypes.c_int
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_add_watch.restype = ctypes.c_int
        _libc = lib
    return _libc


def user_limit(name: str) -> int:
    """The user's limit ``max_user_watches`` or ``max_user_instances``, all of the user's
    programs together; where it cannot be read, the smallest default kernels have had."""
    try:
        with open(f"/proc/sys/fs/inotify/{name}", "rb") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return {"max_user_watches": 8192}.get(name, 128)


class Watch:
    """One inotify instance: :meth:`add` entries, then :meth:`quiet` tells whether any of
    them changed since. One owner at a time (the pool hands a clone from thread to thread
    under its lock); the count of open instances is the process's."""

    fd = -1  # until it is open, and once closed
    live: ClassVar[int] = 0  # instances open in this process
    watches: ClassVar[int] = 0  # watches they hold
    _count_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        lib = _lib()
        fd = lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.fd = fd
        st = os.fstat(fd)
        self._ident = (st.st_dev, st.st_ino, st.st_mode)  # what the descriptor must still be
        self.count = 0  # watches added
        with Watch._count_lock:
            Watch.live += 1
        self._add = lib.inotify_add_watch
        self.heard = False  # an event was read: changed for good

    def add(self, path: bytes) -> None:
        """Watch ``path`` itself (a link is not followed) and, for a directory, its entries.
        Raises OSError (ENOSPC: the user's watches are used up)."""
        if self._add(self.fd, path, CHANGES | IN_DONT_FOLLOW) < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), os.fsdecode(path))
        self.count += 1  # at most once too many: a second name of one inode is one watch
        with Watch._count_lock:
            Watch.watches += 1

    def quiet(self) -> bool:
        """Whether no event was queued since the watches were added. Every event counts,
        whatever its watch: what it is does not matter, only that there was one. A
        descriptor that is no longer an inotify instance's (a test closed it, and its number
        went to another file) hears nothing any more: never quiet then."""
        if not self.heard:
            try:
                if not self._ours():
                    self.heard = True
                    return False
                self.heard = bool(os.read(self.fd, 1 << 16))
            except BlockingIOError:
                return True
            except OSError:
                self.heard = True
        return False

    def close(self) -> None:
        """Close the instance, unless its descriptor was closed behind its back (its number
        may be another file's now: that one is left alone)."""
        if self.fd >= 0:
            try:
                if self._ours():
                    os.close(self.fd)
            except OSError:
                pass
            self.fd = -1
            with Watch._count_lock:
                Watch.live -= 1
                Watch.watches -= self.count

    def _ours(self) -> bool:
        """Whether the descriptor is still this instance's (raises OSError if it is closed)."""
        st = os.fstat(self.fd)
        return (st.st_dev, st.st_ino, st.st_mode) == self._ident

    def __del__(self) -> None:  # a lease dropped without close (never expected)
        self.close()

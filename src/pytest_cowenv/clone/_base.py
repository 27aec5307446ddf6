"""The interface every platform back-end implements, and the errno contract for fallbacks."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Sequence
from typing import Callable, Protocol

# errnos that mean "this filesystem (pair) cannot clone": fall back, never report.
# Anything else (ENOSPC, EACCES, EIO, ...) is a real error.
CANNOT_CLONE = frozenset(
    code
    for code in (
        errno.EOPNOTSUPP,
        getattr(errno, "ENOTSUP", errno.EOPNOTSUPP),
        errno.EXDEV,
        errno.EISDIR,
        errno.EINVAL,
        errno.ENOTTY,
        errno.ENOSYS,
        errno.EBADF,
        errno.ETXTBSY,
    )
)


def cannot_clone(exc: OSError) -> bool:
    """True if ``exc`` says the filesystem cannot clone (as opposed to a real failure)."""
    return exc.errno in CANNOT_CLONE


def read_umask() -> int:
    """The process umask, read without changing it where the OS lets us."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)  # non-Linux: briefly set and restore (done once, at import)
    os.umask(old)
    return old


UMASK = read_umask()
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_BINARY = getattr(os, "O_BINARY", 0)
O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
READ_FLAGS = os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_BINARY
# O_EXCL: never write through a file or symlink that is already at the destination.
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_BINARY
DIR_FLAGS = os.O_RDONLY | O_DIRECTORY | O_CLOEXEC
UTIME_FD = os.utime in os.supports_fd and sys.platform != "win32"
# Whether files can be opened relative to a directory fd (all but Windows).
DIR_FD = os.open in os.supports_dir_fd and O_DIRECTORY != 0

# Make one file: (src path, dst path, mode, atime_ns, mtime_ns, size).
FileOp = Callable[[str, str, int, int, int, int], None]
# (name, mode, atime_ns, mtime_ns, size): a file inside its directory.
Named = tuple[str, int, int, int, int]
# Make every file of one directory by name, between open source and destination directories
# (src dir fd, dst dir fd, files): the kernel resolves one path component per file instead of
# the whole path, and the loop runs inside the operation, so the interpreter adds no call per
# file to the handful of system calls that make it.
FilesAtOp = Callable[[int, int, Sequence[Named]], None]


def finish_file(fd: int, path: str, mode: int, atime_ns: int, mtime_ns: int) -> None:
    """Give a freshly created file its mode bits and timestamps (clones carry data only)."""
    if mode & UMASK or mode & 0o7000:
        if hasattr(os, "fchmod") and sys.platform != "win32":
            os.fchmod(fd, mode & 0o7777)
        else:  # pragma: no cover - Windows
            os.chmod(path, mode & 0o7777)
    if UTIME_FD:
        os.utime(fd, ns=(atime_ns, mtime_ns))
    else:  # pragma: no cover - Windows sets times by path after closing
        pass


class Backend(Protocol):
    """What the engine needs from a platform."""

    #: strategy name of a whole-directory clone ("snapshot", "clonefile"), or None
    dir_strategy: str | None

    def can_snapshot(self, path: str, fstype: str) -> bool:
        """Whether directories at ``path`` can be made clonable as a whole."""

    def is_dir_clonable(self, src: str) -> bool:
        """Whether ``src`` itself can be cloned as a whole directory (e.g. is a subvolume)."""

    def clone_dir(self, src: str, dst: str) -> None:
        """Clone the directory tree ``src`` to the new path ``dst`` in one operation."""

    def clone_file(
        self, src: str, dst: str, mode: int, atime_ns: int, mtime_ns: int, size: int
    ) -> None:
        """Create ``dst`` as a copy-on-write clone of ``src`` with the given mode and times."""

    # Optional, where the OS has dir_fd (see FilesAtOp); the engine prefers it when present:
    # def clone_files_at(self, src_dir_fd, dst_dir_fd, files)

    def probe_reflink(self, src: str, dst: str) -> None:
        """Clone ``src`` to ``dst`` once, raising OSError if this filesystem cannot."""

    def destroy_dir_at(self, parent_fd: int, name: str, fd: int) -> bool:
        """Destroy the directory ``name`` of ``parent_fd`` (open as ``fd``) in one operation
        if it is one that can go whole (a btrfs subvolume); False if not, after making it
        writable so that it can be emptied instead."""

    def set_readonly_fd(self, fd: int, readonly: bool) -> bool:
        """Protect (or unprotect) the template directory open as ``fd``; False if it is not
        one that can be (or the flag was already so)."""

    def make_template_dir(self, path: str) -> bool:
        """Create ``path`` so that it can be cloned whole later; False means a plain mkdir."""

    def set_readonly(self, path: str, readonly: bool) -> bool:
        """Protect (or unprotect) a template made by :meth:`make_template_dir`."""


class PlainTemplateDirs:
    """For platforms whose templates are plain directories: nothing to destroy or protect."""

    def destroy_dir_at(self, parent_fd: int, name: str, fd: int) -> bool:
        return False

    def set_readonly_fd(self, fd: int, readonly: bool) -> bool:
        return False

    def make_template_dir(self, path: str) -> bool:
        os.mkdir(path)
        return False

    def set_readonly(self, path: str, readonly: bool) -> bool:
        return False

"""Deletion that removes what it was asked to remove, and nothing else.

Every destructive path of pytest-cowenv ends in :func:`remove`. Its rules:

- Nothing is followed. The tree is opened ``O_NOFOLLOW | O_DIRECTORY`` relative to its
  parent's descriptor, and everything below is removed by name relative to its directory's
  descriptor (``dir_fd``), so a symlink anywhere (the tree itself included) is unlinked as a
  link and a directory swapped for a link meanwhile is never entered.
- With ``root``, the path must lie inside ``root``, and every directory between the two is
  opened ``O_NOFOLLOW`` too: a symlink on the way refuses the deletion.
- Nothing on another mount. A directory on another mount than its parent (a bind mount, an
  other filesystem) is refused. A btrfs subvolume on the same mount is part of the tree:
  templates and clones on btrfs are subvolumes, destroyed whole by the back-end when one is
  what we were asked to delete.
- Read-only directories are made writable through their descriptor, never by path.
- ENOENT is success: another cleaner got there first.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import Callable, Optional

from .._fstype import BTRFS_SUBVOLUME_INO
from ..errors import UnsafeRemovalError
from . import _platform
from ._base import O_CLOEXEC, O_DIRECTORY, O_NOFOLLOW

Pause = Callable[[], None]

_OPEN_DIR = os.O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC
_O_PATH = getattr(os, "O_PATH", 0)
# Not a directory (any more): a symlink or file now stands where a directory was listed.
_NOT_A_DIR = (errno.ELOOP, errno.ENOTDIR)
# unlink() of a directory: EISDIR on Linux, EPERM elsewhere.
_IS_A_DIR = (errno.EISDIR, errno.EPERM)
# Files were added while we emptied a directory: list it again, at most this many times.
_RELISTS = 3
_GONE = (errno.ENOENT, errno.ESTALE)
AT_FD = (
    {os.open, os.unlink, os.rmdir, os.stat} <= os.supports_dir_fd
    and O_DIRECTORY != 0
    and os.scandir in os.supports_fd
)


def remove(path: str, root: Optional[str] = None, pause: Optional[Pause] = None) -> None:
    """Delete ``path`` (a directory tree, a file or a symlink); see the module's rules.

    ``pause`` is called before each directory is listed (raising in it abandons the
    deletion half done). Raises :class:`UnsafeRemovalError` for a path outside ``root`` or
    reached through a symlink, and for a tree with another mount inside.
    """
    path = os.path.abspath(path)
    if root is not None:
        root = os.path.abspath(root)
        rel = os.path.relpath(path, root)
        if rel == os.curdir or rel.split(os.sep)[0] == os.pardir:
            raise UnsafeRemovalError(
                errno.EPERM, f"refusing to remove {path}: it is not inside {root}", path
            )
    if not AT_FD:  # pragma: no cover - Windows
        _remove_by_path(path, pause)
        return
    parent, name = os.path.split(path)
    try:
        # Without a root the caller vouches for the parent (the engine's own dst).
        pfd = _open_parent(root, path) if root is not None else os.open(parent, _OPEN_PARENT)
    except OSError as exc:
        if exc.errno in _GONE:
            return
        raise
    if pfd is None:
        return
    try:
        st = os.fstat(pfd)
        _remove_at(_Dir(pfd, name, pfd, st.st_dev, _mount_id(pfd)), name, path, pause)
    finally:
        os.close(pfd)


_OPEN_PARENT = os.O_RDONLY | O_DIRECTORY | O_CLOEXEC


def _open_parent(root: str, path: str) -> Optional[int]:
    """The parent of ``path`` opened from ``root`` one directory at a time, following no
    link and entering no other mount; None if part of the way is gone."""
    fd = os.open(root, _OPEN_PARENT)  # the root itself as the user gave it, links and all
    mount = _mount_id(fd)
    try:
        for part in os.path.relpath(path, root).split(os.sep)[:-1]:
            try:
                sub = os.open(part, _OPEN_DIR, dir_fd=fd)
            except OSError as exc:
                if exc.errno in _GONE:
                    os.close(fd)
                    return None
                if exc.errno in _NOT_A_DIR:
                    raise UnsafeRemovalError(
                        errno.ELOOP,
                        f"refusing to remove {path}: {part} on the way from {root} is a "
                        "symlink or not a directory",
                        path,
                    ) from None
                raise
            os.close(fd)
            fd = sub
            if _mount_id(fd) != mount:
                raise UnsafeRemovalError(
                    errno.EXDEV,
                    f"refusing to remove {path}: {part} on the way from {root} is another mount",
                    path,
                )
        return fd
    except BaseException:
        os.close(fd)
        raise


def _mount_id(fd: int) -> Optional[int]:
    """The mount ``fd`` is on (Linux, from /proc); None where unknown."""
    try:
        info = os.open(f"/proc/self/fdinfo/{fd}", os.O_RDONLY | O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(info, 4096)
    finally:
        os.close(info)
    at = data.find(b"mnt_id:")
    return int(data[at + 7 : data.index(b"\n", at)]) if at >= 0 else None


class _Dir:
    """An open directory of the walk, with what its children are checked against."""

    def __init__(self, parent: int, name: str, fd: int, dev: int, mount: Optional[int]) -> None:
        self.parent, self.name, self.fd, self.dev, self.mount = parent, name, fd, dev, mount
        self.subdirs: Optional[list[str]] = None
        self.relists = 0


def _remove_at(parent: _Dir, name: str, path: str, pause: Optional[Pause]) -> None:
    top = _enter(parent, name, path, top=True)
    if top is None:
        return
    stack = [top]
    try:
        while stack:
            here = stack[-1]
            if here.subdirs is None:
                if pause is not None:
                    pause()
                here.subdirs = _remove_files(here.fd)
            if here.subdirs:
                child = _enter(here, here.subdirs.pop(), path, top=False)
                if child is not None:
                    stack.append(child)
                continue
            if _rmdir(here):
                stack.pop()
                os.close(here.fd)
            else:
                here.subdirs = None  # something appeared meanwhile: list it again
    finally:
        for left in stack:
            os.close(left.fd)


def _enter(parent: _Dir, name: str, path: str, *, top: bool) -> Optional[_Dir]:
    """Remove ``name`` if it is not a directory (or is the ``top`` subvolume, destroyed
    whole); else open it for the walk. None once it is gone."""
    while True:
        try:
            fd = os.open(name, _OPEN_DIR, dir_fd=parent.fd)
            break
        except OSError as exc:
            if exc.errno in _GONE:
                return None
            if exc.errno in _NOT_A_DIR:
                if _unlink(parent.fd, name):
                    return None
                continue  # a directory again: look once more
            if exc.errno != errno.EACCES:
                raise
        _make_searchable(parent.fd, name)
        fd = os.open(name, _OPEN_DIR, dir_fd=parent.fd)
        break
    try:
        st, mount = os.fstat(fd), _mount_id(fd)
        # Another device on the same mount is a btrfs subvolume (its root is inode 256).
        subvolume = st.st_dev != parent.dev and st.st_ino == BTRFS_SUBVOLUME_INO
        if (mount != parent.mount) or (st.st_dev != parent.dev and not subvolume):
            raise UnsafeRemovalError(
                errno.EXDEV,
                f"refusing to remove {path}: {name} in it is on another mount; unmount it",
                path,
            )
        # Only the top is destroyed whole (a clone: one ioctl). A destroyed subvolume frees
        # its space later, in btrfs's cleaner thread: one inside the tree (a failed build's
        # environment) is emptied file by file, so that its space is back when we return.
        if subvolume and top and _platform.BACKEND.destroy_dir_at(parent.fd, name, fd):
            os.close(fd)
            return None
        if subvolume and not top:
            _platform.BACKEND.set_readonly_fd(fd, False)
        if stat.S_IMODE(st.st_mode) & 0o700 != 0o700:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
    except BaseException:
        os.close(fd)
        raise
    return _Dir(parent.fd, name, fd, st.st_dev, mount)


def _make_searchable(pfd: int, name: str) -> None:
    """Give ourselves rwx on the directory ``name`` without following a link to it."""
    if _O_PATH:
        fd = os.open(name, _O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC, dir_fd=pfd)
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            os.chmod(f"/proc/self/fd/{fd}", mode | 0o700)  # the inode just opened
        finally:
            os.close(fd)
        return
    st = os.stat(name, dir_fd=pfd, follow_symlinks=False)  # pragma: no cover - not Linux
    if stat.S_ISDIR(st.st_mode):  # pragma: no cover
        os.chmod(name, stat.S_IMODE(st.st_mode) | 0o700, dir_fd=pfd)


def _remove_files(dfd: int) -> list[str]:
    """Unlink everything in ``dfd`` but directories; return the directories' names."""
    subdirs = []
    with os.scandir(dfd) as it:
        entries = list(it)
    for entry in entries:
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False  # gone meanwhile: the unlink says so
        if is_dir or not _unlink(dfd, entry.name):
            subdirs.append(entry.name)
    return subdirs


def _unlink(dfd: int, name: str) -> bool:
    """Unlink a non-directory; False if ``name`` is a directory after all."""
    try:
        os.unlink(name, dir_fd=dfd)
        return True
    except OSError as exc:
        if exc.errno in _GONE:
            return True
        if exc.errno in _IS_A_DIR:
            try:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except OSError as again:
                if again.errno in _GONE:
                    return True
                raise
            if stat.S_ISDIR(st.st_mode):
                return False
        raise


def _rmdir(here: _Dir) -> bool:
    """Remove the emptied ``here``; False if it is not empty (list it again)."""
    try:
        os.rmdir(here.name, dir_fd=here.parent)
        return True
    except OSError as exc:
        if exc.errno in _GONE:
            return True
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST) and here.relists < _RELISTS:
            here.relists += 1
            return False
        raise


def _remove_by_path(path: str, pause: Optional[Pause]) -> None:  # pragma: no cover - Windows
    """Where there is no ``dir_fd``: the same walk by path, with ``lstat`` (never follows a
    symlink or junction: both are removed as links)."""
    try:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            with contextlib.suppress(OSError):
                os.chmod(path, stat.S_IWRITE)  # a read-only file cannot be deleted here
            os.unlink(path)
            return
        if not getattr(os.path, "isjunction", lambda _p: False)(path):
            if pause is not None:
                pause()
            for name in os.listdir(path):
                _remove_by_path(os.path.join(path, name), pause)
        os.rmdir(path)
    except FileNotFoundError:
        return

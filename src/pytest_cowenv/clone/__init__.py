"""The clone engine: directory clone, then per-file clone, then copy.

Pytest-free. ``clone_tree`` makes ``dst`` an exact, independent replica of ``src`` by the
cheapest means the filesystem pair allows; ``remove_tree`` deletes a clone by the fastest.
"""

from __future__ import annotations

import enum
import errno
import os
import shutil
import threading
import time
import warnings
from collections.abc import Sequence
from typing import Callable, NamedTuple, Optional

from .._fstype import fs_type
from ..errors import CloneError, CowEnvWarning, shown
from . import _platform, _remove
from ._base import DIR_FD, DIR_FLAGS, READ_FLAGS, UMASK, FileOp, FilesAtOp, Named, cannot_clone
from ._portable import copy_file, copy_files_at, link_file, link_files_at
from ._templates import can_snapshot, make_template_dir, probe_reflink, protect, unprotect
from ._walk import Tree, strip_write_bits, walk_tree

__all__ = [
    "READ_FLAGS",
    "CloneResult",
    "LinkMode",
    "Tree",
    "Warn",
    "can_snapshot",
    "clone_tree",
    "make_template_dir",
    "probe_reflink",
    "protect",
    "remove_tree",
    "strip_write_bits",
    "unprotect",
    "walk_tree",
]

# Called between directories of a file-by-file clone; raising in it abandons the clone.
Pause = Callable[[], None]
# Told the one warning per filesystem pair that clones fall back to copies.
Warn = Callable[[str], None]


class LinkMode(str, enum.Enum):
    """How a clone gets its files. ``auto`` never picks ``hardlink`` (it is not isolated)."""

    AUTO = "auto"
    SNAPSHOT = "snapshot"
    CLONE = "clone"
    HARDLINK = "hardlink"
    COPY = "copy"

    def __str__(self) -> str:
        return self.value


class CloneResult(NamedTuple):
    """What :func:`clone_tree` did. (This package's records are not dataclasses, which
    generate their methods with ``exec`` at import: a new template's first test waits for it.)"""

    src: str
    dst: str
    strategy: str  # "snapshot" | "clonefile" | "clone" | "hardlink" | "copy"
    files: int
    bytes: int
    seconds: float
    fallback_reason: Optional[str] = None


# Per (source device, destination device) pair: the per-file strategy that works, and why.
# A device pair is a cache key only; whether the pair can clone is learnt by trying.
_decisions: dict[tuple[int, int], tuple[str, Optional[str]]] = {}
_warned: set[tuple[int, int]] = set()
_lock = threading.Lock()


def forget_decisions() -> None:
    """Forget cached fallback decisions and warnings (tests and remounts)."""
    with _lock:
        _decisions.clear()
        _warned.clear()


def _describe(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return f"{name}: {exc.strerror or exc}"


def _safe_fstype(path: str) -> str:
    try:
        return fs_type(path)
    except OSError:
        return "unknown filesystem"


def clone_tree(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    mode: LinkMode | str = LinkMode.AUTO,
    *,
    tree: Optional[Tree] = None,
    pause: Optional[Pause] = None,
    warn: Optional[Warn] = None,
) -> CloneResult:
    """Make the new directory ``dst`` a replica of ``src``.

    ``tree`` is ``src``'s walk, when the caller keeps one (templates do). ``pause`` is called
    between directories of a file-by-file clone: a background caller raises in it to stop.
    A file-by-file clone runs in the caller's thread alone (see :func:`_per_file`). The
    first fallback to copies
    between two filesystems is told once per process: to ``warn`` when given (a front end
    that knows whose clone it is), else as a :class:`CowEnvWarning` from the caller. Raises
    :class:`CloneError` when an explicit mode is impossible here or the filesystem fails;
    a partly made ``dst`` is removed first.
    """
    src, dst, mode = os.fspath(src), os.fspath(dst), LinkMode(mode)
    start = time.perf_counter()
    exists = CloneError(f"cannot clone to {shown(dst)}: it already exists", errno.EEXIST)
    if os.path.lexists(dst):
        raise exists
    try:
        strategy, reason, tree = _clone(src, dst, mode, tree, pause, warn)
    except BaseException as exc:
        if isinstance(exc, FileExistsError) and exc.filename in (None, dst):
            raise exists from exc  # made meanwhile by someone else: not ours to remove
        if os.path.lexists(dst):
            remove_tree(dst)
        if isinstance(exc, OSError):
            raise _clone_error(src, dst, mode, exc) from exc
        raise
    files, nbytes = (tree.nfiles, tree.nbytes) if tree else (0, 0)
    return CloneResult(src, dst, strategy, files, nbytes, time.perf_counter() - start, reason)


def _clone_error(src: str, dst: str, mode: LinkMode, exc: OSError) -> CloneError:
    parent = os.path.dirname(os.path.abspath(dst))
    where = f"{_safe_fstype(parent)} at {shown(parent)}"
    msg = f"cannot clone {shown(src)} to {shown(dst)} ({where}, mode {mode.value}): "
    msg += _describe(exc)
    if exc.errno == errno.ENOSPC:
        free = shutil.disk_usage(parent).free
        msg += f"; {free / 2**20:.1f} MiB free there. Free space or choose another cache directory."
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        msg += "; check the permissions of the cache directory."
    return CloneError(msg, exc.errno)


def _clone(
    src: str,
    dst: str,
    mode: LinkMode,
    tree: Optional[Tree],
    pause: Optional[Pause],
    warn: Optional[Warn],
) -> tuple[str, Optional[str], Optional[Tree]]:
    backend = _platform.BACKEND
    reason: Optional[str] = None
    if mode in (LinkMode.AUTO, LinkMode.SNAPSHOT) and backend.dir_strategy:
        if mode is LinkMode.SNAPSHOT and not backend.is_dir_clonable(src):
            raise CloneError(_no_snapshot_reason(src, backend.dir_strategy))
        if mode is LinkMode.SNAPSHOT or backend.is_dir_clonable(src):
            try:
                backend.clone_dir(src, dst)
                return backend.dir_strategy, None, tree
            except OSError as exc:
                if not cannot_clone(exc):
                    raise
                if mode is LinkMode.SNAPSHOT:
                    parent = os.path.dirname(os.path.abspath(dst))
                    raise CloneError(
                        f"cannot {backend.dir_strategy} {shown(src)} ({_safe_fstype(src)}) to "
                        f"{shown(dst)} "
                        f"({_safe_fstype(parent)} at {parent}): {_describe(exc)}; a snapshot "
                        "stays on the template's filesystem: use link mode auto or clone",
                        exc.errno,
                    ) from exc
                # A refused directory clone falls back to file by file, as uv's does since
                # https://github.com/astral-sh/uv/pull/3551.
                reason = f"{backend.dir_strategy} refused ({_describe(exc)})"
                if os.path.lexists(dst):
                    remove_tree(dst)
    if tree is None:
        tree = walk_tree(src)
    if mode is LinkMode.COPY:
        _per_file(tree, dst, _COPY, pause)
        return "copy", reason, tree
    if mode is LinkMode.HARDLINK:
        _per_file(tree, dst, _HARDLINK, pause)
        return "hardlink", reason, tree
    return (*_clone_files(tree, dst, mode, reason, pause, warn), tree)


def _no_snapshot_reason(src: str, strategy: str) -> str:
    fstype = _safe_fstype(src)
    why = (
        "it is a plain directory, not a subvolume (templates built by pytest-cowenv on btrfs are)"
        if fstype == "btrfs"
        else f"{fstype} has no subvolume snapshots (only btrfs does)"
    )
    return f"cannot {strategy} {shown(src)} ({fstype}): {why}; use link mode auto or clone"


def _clone_files(
    tree: Tree,
    dst: str,
    mode: LinkMode,
    reason: Optional[str],
    pause: Optional[Pause],
    warn: Optional[Warn],
) -> tuple[str, Optional[str]]:
    parent = os.path.dirname(os.path.abspath(dst)) or "."
    key = (os.stat(tree.root).st_dev, os.stat(parent).st_dev)
    with _lock:
        decided = _decisions.get(key)
    if decided and decided[0] == "copy" and mode is LinkMode.AUTO:
        _per_file(tree, dst, _COPY, pause)
        return "copy", decided[1]
    try:
        _per_file(tree, dst, _clone_ops(), pause)
    except OSError as exc:
        if not cannot_clone(exc):
            raise
        where = (
            f"{_safe_fstype(tree.root)} at {shown(tree.root)} → "
            f"{_safe_fstype(parent)} at {shown(parent)}"
        )
        if mode is LinkMode.CLONE:
            raise CloneError(
                f"cannot clone {shown(tree.root)} file by file ({where}): {_describe(exc)}. "
                "Put the cache directory on btrfs, XFS (reflink=1), APFS or ReFS, "
                "or use link mode auto/copy.",
                exc.errno,
            ) from exc
        # A filesystem pair that cannot clone refuses the first file with data: start over
        # as a copy rather than mixing clones and copies in one tree.
        why = _describe(exc)
        remove_tree(dst)
        _per_file(tree, dst, _COPY, pause)
    else:
        with _lock:
            _decisions.setdefault(key, ("clone", reason))
        return "clone", reason
    with _lock:
        _decisions[key] = ("copy", why)
        first = key not in _warned
        _warned.add(key)
    if first:
        message = (
            f"pytest-cowenv: {_safe_fstype(parent)} at {parent} cannot clone files from "
            f"{_safe_fstype(tree.root)} ({why}); environments are copied instead: slower "
            "and full disk use. Put the cache directory on btrfs, XFS (reflink=1), APFS "
            "or ReFS."
        )
        if warn is None:
            warnings.warn(CowEnvWarning(message), stacklevel=4)  # clone_tree's caller
        else:
            warn(message)
    return "copy", why


class _FileOps(NamedTuple):
    """One way to make files: one by path, and (faster, where the OS has ``dir_fd``) a whole
    directory's by name between open source and destination directories."""

    by_path: FileOp
    at: Optional[FilesAtOp] = None


_COPY = _FileOps(copy_file, copy_files_at)
_HARDLINK = _FileOps(link_file, link_files_at)


def _clone_ops() -> _FileOps:
    backend = _platform.BACKEND
    return _FileOps(backend.clone_file, getattr(backend, "clone_files_at", None))


def _per_file(tree: Tree, dst: str, ops: _FileOps, pause: Optional[Pause]) -> None:
    """Make ``dst`` from ``tree`` file by file, in the caller's thread.

    One thread on purpose: a file costs a handful of short system calls, each of which drops
    and takes back the GIL, so a second thread spends on handing the GIL over what it gains
    by overlapping them; threads sharing out the directories were slower than one on every
    filesystem measured. ``benchmarks/clone.py --threads 2,4`` re-checks it on a machine.
    """
    src = tree.root
    root_mode = tree.root_entry[1]
    # Directories are made owner-writable so that their children can be created, even in
    # a template whose directories are read-only; _finish_dir restores the exact mode.
    os.mkdir(dst, (root_mode & 0o777) | 0o700)
    for rel, mode, _at, _mt, _size in tree.dirs:
        os.mkdir(dst + rel, (mode & 0o777) | 0o700)
    files_at = ops.at if DIR_FD else None
    for rel_dir, files in tree.files_by_dir:
        if pause is not None:
            pause()
        if files_at is not None:
            _files_at(src + rel_dir, dst + rel_dir, files, files_at)
        else:
            for name, mode, at, mt, size in files:
                rel = f"{rel_dir}{os.sep}{name}"
                ops.by_path(src + rel, dst + rel, mode, at, mt, size)
    for rel, target, at, mt in tree.links:
        os.symlink(target, dst + rel)
        if os.utime in os.supports_follow_symlinks:
            os.utime(dst + rel, ns=(at, mt), follow_symlinks=False)
    # Directory times last, deepest first: creating children bumps a directory's mtime.
    for rel, mode, at, mt, _size in reversed(tree.dirs):
        _finish_dir(dst + rel, mode, at, mt)
    _finish_dir(dst, root_mode, tree.root_entry[2], tree.root_entry[3])


def _files_at(src_dir: str, dst_dir: str, files: Sequence[Named], files_at: FilesAtOp) -> None:
    sdir = os.open(src_dir, DIR_FLAGS)
    try:
        ddir = os.open(dst_dir, DIR_FLAGS)
        try:
            files_at(sdir, ddir, files)
        finally:
            os.close(ddir)
    finally:
        os.close(sdir)


def _finish_dir(path: str, mode: int, atime_ns: int, mtime_ns: int) -> None:
    if ((mode | 0o700) & 0o777 & ~UMASK) != mode & 0o7777:
        os.chmod(path, mode & 0o7777)
    os.utime(path, ns=(atime_ns, mtime_ns))


def remove_tree(
    path: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    pause: Optional[Pause] = None,
) -> None:
    """Delete ``path`` as fast as the filesystem allows (btrfs: destroy the snapshot), and
    nothing outside it: no symlink is followed (a link is removed as a link), no other mount
    entered, and read-only directories are made writable through their descriptors.

    With ``root``, ``path`` must lie inside it and be reached from it through real
    directories only (every destructive path of the plugin passes its cache root). A path
    already gone, or going while we delete it (another cleaner), is success. ``pause`` is
    called before each directory is listed. Raises :class:`~pytest_cowenv.errors.UnsafeRemovalError`
    (an ``OSError``) when the rules refuse.
    """
    _remove.remove(os.fspath(path), None if root is None else os.fspath(root), pause)

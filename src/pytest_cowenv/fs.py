"""Filesystem facts: what kind of filesystem holds a path and what it can do.

Probes are cached per ``st_dev``. ``st_dev`` is only a cache key, never a judgement that two
paths share a filesystem: every btrfs subvolume has its own device number.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import tempfile
import threading
from typing import Callable, NamedTuple, Optional

from ._fstype import BTRFS_SUBVOLUME_INO as BTRFS_SUBVOLUME_INO
from ._fstype import fs_type as fs_type
from ._fstype import is_subvolume as is_subvolume


class FsInfo(NamedTuple):
    """What a filesystem is and which clone operations it allows."""

    path: str
    fstype: str
    can_snapshot: bool
    can_reflink: bool
    can_hardlink: bool
    reason: str = ""  # why reflink is unavailable, when it is

    @property
    def best_strategy(self) -> str:
        """The strategy ``auto`` uses for a template that lives on this filesystem."""
        if self.can_snapshot:
            return "snapshot"
        if self.can_reflink:
            return "clonefile" if sys.platform == "darwin" else "clone"
        return "copy"


_cache: dict[int, FsInfo] = {}
_cache_lock = threading.Lock()


def probe(path: str | os.PathLike[str]) -> FsInfo:
    """Report the filesystem at ``path`` (an existing directory) and what it can do.

    The answer is cached per device; :func:`forget` clears the cache.
    """
    path = os.fspath(path)
    dev = os.stat(path).st_dev
    with _cache_lock:
        cached = _cache.get(dev)
        if cached is not None:
            return cached
    info = _probe_uncached(path)
    with _cache_lock:
        _cache[dev] = info
    return info


def forget() -> None:
    """Drop every cached probe (tests and remounts)."""
    with _cache_lock:
        _cache.clear()


def _probe_uncached(path: str) -> FsInfo:
    from .clone import can_snapshot, probe_reflink

    fstype = fs_type(path)
    with tempfile.TemporaryDirectory(prefix=".cowenv-probe-", dir=path) as tmp:
        src = os.path.join(tmp, "src")
        with open(src, "wb") as f:
            f.write(b"cowenv probe\n")
        reason = ""
        try:
            probe_reflink(src, os.path.join(tmp, "dst"))
            can_reflink = True
        except OSError as exc:
            can_reflink = False
            reason = f"{errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc.strerror}"
        try:
            os.link(src, os.path.join(tmp, "hard"))
            can_hardlink = True
        except OSError:
            can_hardlink = False
    snapshot = can_snapshot(path, fstype)
    return FsInfo(path, fstype, snapshot, can_reflink, can_hardlink, reason)


def unavailable_reason(path: str | os.PathLike[str], strategy: str) -> Optional[str]:
    """Why ``strategy`` cannot run at ``path``, or None if it can (for ``skipif``)."""
    info = probe(path)
    able = {
        "snapshot": info.can_snapshot,
        "clone": info.can_reflink,
        "clonefile": info.can_reflink,
        "hardlink": info.can_hardlink,
        "copy": True,
    }[strategy]
    if able:
        return None
    detail = f" ({info.reason})" if strategy != "snapshot" and info.reason else ""
    return f"{info.fstype} at {info.path} cannot {strategy}{detail}"


def sync_filesystem(path: str) -> None:
    """Write everything of the filesystem holding ``path`` to disk (Linux ``syncfs``: one
    call for a whole tree, where an ``fsync`` per file would cost seconds); elsewhere
    ``sync()``, which is what the platform offers short of a walk."""
    libc_syncfs = _syncfs()
    if libc_syncfs is None:
        if hasattr(os, "sync"):
            os.sync()
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        if libc_syncfs(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
    finally:
        os.close(fd)


def _syncfs() -> Optional[Callable[[int], int]]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):  # pragma: no cover - a libc without syncfs
        return None
    func.argtypes = (ctypes.c_int,)
    func.restype = ctypes.c_int
    return func

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
from dataclasses import dataclass
from typing import Optional

# statfs(2) f_type magic numbers (linux/magic.h).
_MAGIC_NAMES = {
    0x9123683E: "btrfs",
    0x58465342: "xfs",
    0xEF53: "ext4",
    0x01021994: "tmpfs",
    0x794C7630: "overlayfs",
    0x6969: "nfs",
    0x65735546: "fuse",
    0x2FC12FC1: "zfs",
    0xF15F: "ecryptfs",
}

BTRFS_SUBVOLUME_INO = 256


@dataclass(frozen=True)
class FsInfo:
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


class _StatfsBuf(ctypes.Structure):
    # struct statfs (120 bytes on 64-bit Linux, room to spare); we read only f_type, first.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 248)]


_libc: Optional[ctypes.CDLL] = None


def _statfs_magic(path: str) -> int:
    global _libc
    if _libc is None:
        # The C library is already loaded into the process: CDLL(None) finds statfs there,
        # while ctypes.util.find_library would spawn ldconfig (tens of ms on the first call).
        _libc = ctypes.CDLL(None, use_errno=True)
    buf = _StatfsBuf()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(buf.f_type) & 0xFFFFFFFF


def fs_type(path: str | os.PathLike[str]) -> str:
    """Name of the filesystem holding ``path`` (``btrfs``, ``xfs``, ``ext4``, ``tmpfs``, …)."""
    path = os.fspath(path)
    if sys.platform == "darwin":
        return _darwin_fstype(path)
    elif sys.platform == "win32":
        return _windows_fstype(path)
    elif sys.platform.startswith("linux"):
        magic = _statfs_magic(path)
        return _MAGIC_NAMES.get(magic, hex(magic))
    else:  # pragma: no cover - other Unixes lay out struct statfs differently
        return "unknown"


def _darwin_fstype(path: str) -> str:  # pragma: no cover - macOS only
    import subprocess

    out = subprocess.run(["stat", "-f", "%T", path], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def _windows_fstype(path: str) -> str:  # pragma: no cover - Windows only
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    root = os.path.splitdrive(os.path.abspath(path))[0] + "\\"
    name = ctypes.create_unicode_buffer(64)
    ok = kernel32.GetVolumeInformationW(root, None, 0, None, None, None, name, 64)
    return name.value.lower() if ok else "unknown"


def is_subvolume(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is the root of a btrfs subvolume (its inode number is 256)."""
    path = os.fspath(path)
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return st.st_ino == BTRFS_SUBVOLUME_INO and fs_type(path) == "btrfs"


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
    from .clone import _platform

    fstype = fs_type(path)
    with tempfile.TemporaryDirectory(prefix=".cowenv-probe-", dir=path) as tmp:
        src = os.path.join(tmp, "src")
        with open(src, "wb") as f:
            f.write(b"cowenv probe\n")
        reason = ""
        try:
            _platform.BACKEND.probe_reflink(src, os.path.join(tmp, "dst"))
            can_reflink = True
        except OSError as exc:
            can_reflink = False
            reason = f"{errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc.strerror}"
        try:
            os.link(src, os.path.join(tmp, "hard"))
            can_hardlink = True
        except OSError:
            can_hardlink = False
    can_snapshot = _platform.BACKEND.can_snapshot(path, fstype)
    return FsInfo(path, fstype, can_snapshot, can_reflink, can_hardlink, reason)


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

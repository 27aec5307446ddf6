"""What kind of filesystem holds a path, and whether a directory is a btrfs subvolume.

A leaf: it imports nothing of pytest-cowenv, so that the clone back-ends below :mod:`.fs` can
use it. :mod:`.fs` re-exports these names with the probes of what a filesystem can do.
"""

from __future__ import annotations

import ctypes
import os
import sys
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

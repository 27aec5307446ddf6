"""macOS back-end: clonefile(2) clones a file or a whole directory tree on APFS in one call.

Any directory can be cloned whole; APFS decides by trying (``ENOTSUP`` off APFS, ``EXDEV``
across volumes), and the engine then falls back to file by file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import stat
from typing import Any, Optional

from ._base import PlainTemplateDirs

CLONE_NOFOLLOW = 0x0001  # clone a symlink itself, never what it points to
CLONE_NOOWNERCOPY = 0x0002  # the clone belongs to us, not to the source's owner
_FLAGS = CLONE_NOFOLLOW | CLONE_NOOWNERCOPY
_LIBSYSTEM = "/usr/lib/libSystem.B.dylib"
# lchmod exists on macOS; elsewhere (tests fake clonefile on Linux) chmod cannot refuse to follow.
_LCHMOD = os.chmod in os.supports_follow_symlinks

# Loaded at first use, so that importing this module works on every platform.
_libsystem: Optional[Any] = None


def _load_libsystem() -> Any:
    lib = ctypes.CDLL(ctypes.util.find_library("System") or _LIBSYSTEM, use_errno=True)
    lib.clonefile.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint32)
    lib.clonefile.restype = ctypes.c_int
    return lib


def _clonefile(src: str, dst: str) -> None:
    global _libsystem
    if _libsystem is None:
        _libsystem = _load_libsystem()
    if _libsystem.clonefile(os.fsencode(src), os.fsencode(dst), _FLAGS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), src, None, dst)


class DarwinBackend(PlainTemplateDirs):
    dir_strategy: Optional[str] = "clonefile"

    def can_snapshot(self, path: str, fstype: str) -> bool:
        # No template needs preparing: APFS clones any directory, which fs.probe reports as
        # reflink ability ("clonefile"), not as a btrfs-style snapshot.
        return False

    def is_dir_clonable(self, src: str) -> bool:
        return True

    def clone_dir(self, src: str, dst: str) -> None:
        _clonefile(src, dst)

    def clone_file(
        self, src: str, dst: str, mode: int, atime_ns: int, mtime_ns: int, size: int
    ) -> None:
        _clonefile(src, dst)
        # clonefile carries mode and times, but NOOWNERCOPY drops setuid/setgid: check, so
        # every back-end keeps the same contract.
        st = os.lstat(dst)
        if stat.S_IMODE(st.st_mode) != mode & 0o7777:
            os.chmod(dst, mode & 0o7777, follow_symlinks=not _LCHMOD)
        if (st.st_atime_ns, st.st_mtime_ns) != (atime_ns, mtime_ns):
            os.utime(dst, ns=(atime_ns, mtime_ns), follow_symlinks=False)

    def probe_reflink(self, src: str, dst: str) -> None:
        _clonefile(src, dst)

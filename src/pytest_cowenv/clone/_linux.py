"""Linux back-end: FICLONE for files, btrfs subvolume snapshots for whole trees."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import struct
from collections.abc import Sequence
from typing import Callable, Optional

from .._fstype import is_subvolume
from ._base import CREATE_FLAGS, DIR_FLAGS, O_NOFOLLOW, READ_FLAGS, Named, finish_file

FICLONE = 0x40049409  # fcntl.FICLONE exists only from Python 3.12
BTRFS_IOC_SNAP_CREATE_V2 = 0x50009417
BTRFS_IOC_SUBVOL_CREATE = 0x5000940E
BTRFS_IOC_SNAP_DESTROY = 0x5000940F
BTRFS_IOC_SUBVOL_GETFLAGS = 0x80089419
BTRFS_IOC_SUBVOL_SETFLAGS = 0x4008941A
BTRFS_SUBVOL_RDONLY = 1 << 1
_VOL_ARGS_SIZE = 4096
_V2_NAME_OFFSET = 56  # after "=qQQ32s": fd, transid, flags, union
_V1_NAME_OFFSET = 8  # after the int64 fd
# What SNAP_DESTROY answers when it may not (or cannot) destroy a subvolume whole.
_DESTROY_REFUSED = (
    errno.EPERM,
    errno.EACCES,
    errno.EROFS,
    errno.ENOTEMPTY,
    errno.ENOTTY,
    errno.EOPNOTSUPP,
    errno.EINVAL,
)


def _vol_args(name: str, offset: int, fd: int = 0) -> bytearray:
    raw = os.fsencode(name)
    if len(raw) >= _VOL_ARGS_SIZE - offset:
        raise OSError(errno.ENAMETOOLONG, "subvolume name too long", name)
    args = bytearray(_VOL_ARGS_SIZE)
    struct.pack_into("=q", args, 0, fd)
    args[offset : offset + len(raw)] = raw
    return args


def _v1_args(path: str) -> bytearray:
    return _vol_args(os.path.basename(os.path.abspath(path)), _V1_NAME_OFFSET)


@functools.cache
def _libc_ioctl() -> Callable[[int, int, ctypes.Array[ctypes.c_char]], int] | None:
    """libc's ``ioctl`` through ctypes, which releases the GIL for the call (None if there
    is no libc to load)."""
    try:
        func = ctypes.CDLL(None, use_errno=True).ioctl
    except (OSError, AttributeError):
        return None
    func.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_char_p)
    func.restype = ctypes.c_int
    return func


def ioctl_buffer(fd: int, request: int, args: bytearray) -> None:
    """``ioctl(fd, request, args)`` without holding the GIL.

    ``fcntl.ioctl`` keeps the GIL while the kernel works when its argument is a buffer over
    1 KiB (btrfs's are 4 KiB), and a snapshot waits for a transaction commit: the
    pool thread's snapshots stopped the test's thread for as long (tests/test_clone_engine.py
    ``test_a_snapshot_lets_other_threads_run``). ``args`` is updated in place, as with fcntl.
    """
    func = _libc_ioctl()
    if func is None:
        fcntl.ioctl(fd, request, args)
        return
    buf = (ctypes.c_char * len(args)).from_buffer(args)
    if func(fd, request, buf) == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _on_parent(path: str, request: int, args: bytearray) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    pfd = os.open(parent or ".", DIR_FLAGS)
    try:
        ioctl_buffer(pfd, request, args)
    finally:
        os.close(pfd)


def _clone_into(
    sfd: int, dfd: int, dst: str, mode: int, atime_ns: int, mtime_ns: int, size: int
) -> None:
    """Share ``sfd``'s extents with the new, empty ``dfd``, then give it mode and times."""
    try:
        if size:  # an empty file has no extents to share
            fcntl.ioctl(dfd, FICLONE, sfd)
        finish_file(dfd, dst, mode, atime_ns, mtime_ns)
    finally:
        os.close(dfd)


class LinuxBackend:
    dir_strategy: str | None = "snapshot"

    def can_snapshot(self, path: str, fstype: str) -> bool:
        return fstype == "btrfs"

    def is_dir_clonable(self, src: str) -> bool:
        return is_subvolume(src)

    def clone_dir(self, src: str, dst: str) -> None:
        sfd = os.open(src, DIR_FLAGS)
        try:
            args = _vol_args(os.path.basename(os.path.abspath(dst)), _V2_NAME_OFFSET, sfd)
            _on_parent(dst, BTRFS_IOC_SNAP_CREATE_V2, args)
        finally:
            os.close(sfd)

    def clone_file(
        self, src: str, dst: str, mode: int, atime_ns: int, mtime_ns: int, size: int
    ) -> None:
        sfd = os.open(src, READ_FLAGS)
        try:
            _clone_into(
                sfd, os.open(dst, CREATE_FLAGS, mode & 0o777), dst, mode, atime_ns, mtime_ns, size
            )
        finally:
            os.close(sfd)

    def clone_files_at(self, src_dir: int, dst_dir: int, files: Sequence[Named]) -> None:
        # Per file: open, open(O_EXCL), FICLONE, [fchmod], futimens, close, close: nothing
        # more than the data and metadata need, each name resolved in its open directory.
        ioctl = fcntl.ioctl  # looked up per directory, not per file (and fakeable in tests)
        for name, mode, atime_ns, mtime_ns, size in files:
            sfd = os.open(name, READ_FLAGS, dir_fd=src_dir)
            try:
                dfd = os.open(name, CREATE_FLAGS, mode & 0o777, dir_fd=dst_dir)
                try:
                    if size:  # an empty file has no extents to share
                        ioctl(dfd, FICLONE, sfd)
                    finish_file(dfd, name, mode, atime_ns, mtime_ns)
                finally:
                    os.close(dfd)
            finally:
                os.close(sfd)

    def probe_reflink(self, src: str, dst: str) -> None:
        sfd = os.open(src, READ_FLAGS)
        try:
            dfd = os.open(dst, CREATE_FLAGS, 0o600)
            try:
                fcntl.ioctl(dfd, FICLONE, sfd)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    def destroy_dir_at(self, parent_fd: int, name: str, fd: int) -> bool:
        # The name is looked up in the parent without following links, and the kernel
        # refuses anything but a subvolume root of the same filesystem.
        args = _vol_args(name, _V1_NAME_OFFSET)
        for attempt in range(2):
            try:
                ioctl_buffer(parent_fd, BTRFS_IOC_SNAP_DESTROY, bytearray(args))
                return True
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ESTALE):
                    return True
                if exc.errno not in _DESTROY_REFUSED:
                    raise
            # Unprivileged, a read-only subvolume cannot go: clear the flag, try again.
            if attempt == 0 and not self._flag_readonly(fd, False):
                break
        # Without user_subvol_rm_allowed: emptied, then rmdir'ed (Linux >= 4.18).
        self._flag_readonly(fd, False)
        return False

    def make_template_dir(self, path: str) -> bool:
        try:
            _on_parent(path, BTRFS_IOC_SUBVOL_CREATE, _v1_args(path))
            return True
        except OSError as exc:
            if exc.errno in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM):
                os.mkdir(path)
                return False
            raise

    def set_readonly(self, path: str, readonly: bool) -> bool:
        if not is_subvolume(path):
            return False
        fd = os.open(path, DIR_FLAGS | O_NOFOLLOW)
        try:
            return self._flag_readonly(fd, readonly) is not None
        finally:
            os.close(fd)

    def set_readonly_fd(self, fd: int, readonly: bool) -> bool:
        return bool(self._flag_readonly(fd, readonly))

    def _flag_readonly(self, fd: int, readonly: bool) -> Optional[bool]:
        """Set the read-only flag of the subvolume open as ``fd``: whether it changed, or
        None if ``fd`` is no subvolume."""
        buf = bytearray(8)
        try:
            ioctl_buffer(fd, BTRFS_IOC_SUBVOL_GETFLAGS, buf)
        except OSError as exc:
            if exc.errno in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL):
                return None
            raise
        (flags,) = struct.unpack("=Q", buf)
        new = flags | BTRFS_SUBVOL_RDONLY if readonly else flags & ~BTRFS_SUBVOL_RDONLY
        if new == flags:
            return False
        ioctl_buffer(fd, BTRFS_IOC_SUBVOL_SETFLAGS, bytearray(struct.pack("=Q", new)))
        return True

"""Windows back-end: FSCTL_DUPLICATE_EXTENTS_TO_FILE clones files on ReFS (Dev Drive).

Windows has no directory clone: asking for one fails with "Access is denied"
(https://github.com/astral-sh/uv/issues/3547). So ``dir_strategy`` is None and the engine
always clones file by file.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from typing import Any, Callable, Optional

from ._base import CREATE_FLAGS, READ_FLAGS, PlainTemplateDirs

FSCTL_SET_SPARSE = 0x000900C4
FSCTL_DUPLICATE_EXTENTS_TO_FILE = 0x00098344
_FSCTL_NAMES = {
    FSCTL_SET_SPARSE: "FSCTL_SET_SPARSE",
    FSCTL_DUPLICATE_EXTENTS_TO_FILE: "FSCTL_DUPLICATE_EXTENTS_TO_FILE",
}
FILE_ATTRIBUTE_SPARSE_FILE = 0x200
FILE_END_OF_FILE_INFO = 6  # FILE_INFO_BY_HANDLE_CLASS FileEndOfFileInfo
# One request must stay below 4 GiB. A power of two is a multiple of every cluster size.
_CHUNK = 1 << 31

# What a failed call means to the engine (see _base.CANNOT_CLONE). Any other code is a real
# error (EIO): Python's own mapping would turn unknown codes into EINVAL, a silent fallback.
_ERRNO_OF = {
    1: errno.EOPNOTSUPP,  # ERROR_INVALID_FUNCTION: NTFS, FAT and shares cannot clone
    50: errno.EOPNOTSUPP,  # ERROR_NOT_SUPPORTED
    87: errno.EOPNOTSUPP,  # ERROR_INVALID_PARAMETER
    17: errno.EXDEV,  # ERROR_NOT_SAME_DEVICE
    112: errno.ENOSPC,  # ERROR_DISK_FULL
    39: errno.ENOSPC,  # ERROR_HANDLE_DISK_FULL
    5: errno.EACCES,  # ERROR_ACCESS_DENIED: for a file, a real error
}


class _DuplicateExtentsData(ctypes.Structure):
    _fields_ = [
        ("FileHandle", ctypes.c_void_p),
        ("SourceFileOffset", ctypes.c_int64),
        ("TargetFileOffset", ctypes.c_int64),
        ("ByteCount", ctypes.c_int64),
    ]


class _ByHandleFileInformation(ctypes.Structure):
    _fields_ = [
        ("FileAttributes", ctypes.c_uint32),
        ("_times", ctypes.c_uint32 * 6),
        ("VolumeSerialNumber", ctypes.c_uint32),
        ("_sizes_links_index", ctypes.c_uint32 * 5),
    ]


class _FileEndOfFileInfo(ctypes.Structure):
    _fields_ = [("EndOfFile", ctypes.c_int64)]


_HANDLE = _PTR = ctypes.c_void_p
_DWORD, _WSTR = ctypes.c_uint32, ctypes.c_wchar_p
_SIGNATURES = {  # every call returns a BOOL
    "DeviceIoControl": (_HANDLE, _DWORD, _PTR, _DWORD, _PTR, _DWORD, _PTR, _PTR),
    "GetFileInformationByHandle": (_HANDLE, _PTR),
    "SetFileInformationByHandle": (_HANDLE, ctypes.c_int, _PTR, _DWORD),
    "GetVolumePathNameW": (_WSTR, _PTR, _DWORD),
    "GetDiskFreeSpaceW": (_WSTR, _PTR, _PTR, _PTR, _PTR),
}


class _Win32:
    """kernel32 and the C runtime's handle table: every Windows call goes through here.

    Built at first use (importing this module works everywhere); tests substitute a fake.
    """

    kernel32: Any
    os_handle: Callable[[int], int]  # file descriptor → HANDLE
    last_error: Callable[[], int]

    def __init__(self) -> None:
        if sys.platform == "win32":  # pragma: no cover - Windows
            import msvcrt

            kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
            for name, argtypes in _SIGNATURES.items():
                function = getattr(kernel32, name)
                function.argtypes, function.restype = argtypes, ctypes.c_int
            self.kernel32 = kernel32
            self.os_handle = msvcrt.get_osfhandle
            self.last_error = ctypes.get_last_error
        else:
            raise OSError(errno.ENOSYS, "FSCTL_DUPLICATE_EXTENTS_TO_FILE exists only on Windows")


_api: Optional[_Win32] = None


def _win32() -> _Win32:
    global _api
    if _api is None:
        _api = _Win32()
    return _api


def _check(ok: int, call: str, path: str) -> None:
    """Raise the OSError the engine understands if the kernel32 ``call`` failed."""
    if ok:
        return
    code = _win32().last_error()
    mapped = _ERRNO_OF.get(code)
    if mapped is None:
        raise OSError(errno.EIO, f"{call} failed with Windows error {code}", path)
    raise OSError(mapped, f"{os.strerror(mapped)} ({call}: Windows error {code})", path)


def _ioctl(handle: int, code: int, data: Optional[ctypes.Structure], path: str) -> None:
    returned = ctypes.c_uint32()  # required when the call is synchronous
    inbuf, size = (None, 0) if data is None else (ctypes.pointer(data), ctypes.sizeof(data))
    ok = _win32().kernel32.DeviceIoControl(
        handle, code, inbuf, size, None, 0, ctypes.pointer(returned), None
    )
    _check(ok, _FSCTL_NAMES[code], path)


def _cluster_size(path: str) -> int:
    kernel32 = _win32().kernel32
    path = os.path.abspath(path)
    root = ctypes.create_unicode_buffer(len(path) + 2)
    _check(kernel32.GetVolumePathNameW(path, root, len(root)), "GetVolumePathNameW", path)
    sectors, sector_size, free, total = (ctypes.c_uint32() for _ in range(4))
    ok = kernel32.GetDiskFreeSpaceW(
        root.value, *(ctypes.pointer(n) for n in (sectors, sector_size, free, total))
    )
    _check(ok, "GetDiskFreeSpaceW", root.value)
    return sectors.value * sector_size.value


class WindowsBackend(PlainTemplateDirs):
    dir_strategy: Optional[str] = None

    def __init__(self) -> None:
        self._clusters: dict[int, int] = {}  # volume serial number → cluster size

    def can_snapshot(self, path: str, fstype: str) -> bool:
        return False

    def is_dir_clonable(self, src: str) -> bool:
        return False

    def clone_dir(self, src: str, dst: str) -> None:
        raise OSError(errno.EOPNOTSUPP, "Windows cannot clone a directory", src, None, dst)

    def clone_file(
        self, src: str, dst: str, mode: int, atime_ns: int, mtime_ns: int, size: int
    ) -> None:
        # Created writable: a read-only file could not be deleted if the clone fails and the
        # engine falls back to a copy. The mode comes after the data.
        self._clone_new(src, dst, 0o666, size)
        os.chmod(dst, mode & 0o7777)
        os.utime(dst, ns=(atime_ns, mtime_ns))

    def probe_reflink(self, src: str, dst: str) -> None:
        self._clone_new(src, dst, 0o600, os.path.getsize(src))

    def _clone_new(self, src: str, dst: str, create_mode: int, size: int) -> None:
        sfd = os.open(src, READ_FLAGS)
        try:
            dfd = os.open(dst, CREATE_FLAGS, create_mode)
            try:
                self._clone_data(sfd, dfd, src, dst, size)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    def _clone_data(self, sfd: int, dfd: int, src: str, dst: str, size: int) -> None:
        api = _win32()
        src_handle, dst_handle = api.os_handle(sfd), api.os_handle(dfd)
        info = _ByHandleFileInformation()
        ok = api.kernel32.GetFileInformationByHandle(src_handle, ctypes.pointer(info))
        _check(ok, "GetFileInformationByHandle", src)
        # The target must be sparse before it is sized if the source is, and sized before
        # extents are duplicated into it.
        if info.FileAttributes & FILE_ATTRIBUTE_SPARSE_FILE:
            _ioctl(dst_handle, FSCTL_SET_SPARSE, None, dst)
        eof = _FileEndOfFileInfo(size)
        ok = api.kernel32.SetFileInformationByHandle(
            dst_handle, FILE_END_OF_FILE_INFO, ctypes.pointer(eof), ctypes.sizeof(eof)
        )
        _check(ok, "SetFileInformationByHandle", dst)
        if not size:
            return
        cluster = self._clusters.get(info.VolumeSerialNumber)
        if cluster is None:
            cluster = self._clusters[info.VolumeSerialNumber] = _cluster_size(src)
        chunk = _CHUNK - _CHUNK % cluster
        data = _DuplicateExtentsData(src_handle)
        for offset in range(0, size, chunk):
            count = min(chunk, size - offset)
            data.SourceFileOffset = data.TargetFileOffset = offset
            # Ranges must end on a cluster boundary: the last one reaches past the end of the
            # file, whose size stays what SetFileInformationByHandle made it.
            data.ByteCount = -(-count // cluster) * cluster
            _ioctl(dst_handle, FSCTL_DUPLICATE_EXTENTS_TO_FILE, data, dst)

"""Operations every platform has: plain copies and hard links."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from ._base import CREATE_FLAGS, READ_FLAGS, UTIME_FD, Named, finish_file

_CHUNK = 1 << 30


def copy_file(src: str, dst: str, mode: int, atime_ns: int, mtime_ns: int, size: int) -> None:
    """Copy ``src`` to the new file ``dst`` byte for byte, then set mode and times."""
    sfd = os.open(src, READ_FLAGS)
    try:
        dfd = os.open(dst, CREATE_FLAGS, mode & 0o777)
        try:
            _copy_data(sfd, dfd, size)
            finish_file(dfd, dst, mode, atime_ns, mtime_ns)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
    if not UTIME_FD:  # pragma: no cover - Windows
        os.utime(dst, ns=(atime_ns, mtime_ns))


def copy_files_at(src_dir: int, dst_dir: int, files: Sequence[Named]) -> None:
    """:func:`copy_file` of each of ``files`` between two open directories."""
    for name, mode, atime_ns, mtime_ns, size in files:
        sfd = os.open(name, READ_FLAGS, dir_fd=src_dir)
        try:
            dfd = os.open(name, CREATE_FLAGS, mode & 0o777, dir_fd=dst_dir)
            try:
                _copy_data(sfd, dfd, size)
                finish_file(dfd, name, mode, atime_ns, mtime_ns)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)


if sys.platform.startswith("linux"):

    def _copy_data(sfd: int, dfd: int, size: int) -> None:
        # sendfile copies in the kernel and, unlike copy_file_range, never reflinks: a copy
        # stays a copy, so "copy" mode means what it says on every filesystem. ``size`` is
        # the walk's: templates do not change, so stopping there saves a syscall per file.
        offset = 0
        while offset < size:
            sent = os.sendfile(dfd, sfd, offset, min(_CHUNK, size - offset))
            if sent == 0:  # the source shrank since the walk
                return
            offset += sent

else:  # pragma: no cover - non-Linux

    def _copy_data(sfd: int, dfd: int, size: int) -> None:
        while True:
            chunk = os.read(sfd, 1 << 20)
            if not chunk:
                return
            os.write(dfd, chunk)


def link_file(src: str, dst: str, mode: int, atime_ns: int, mtime_ns: int, size: int) -> None:
    """Hard-link ``dst`` to ``src``: shares the inode, so writes go through to the template."""
    os.link(src, dst, follow_symlinks=False)


def link_files_at(src_dir: int, dst_dir: int, files: Sequence[Named]) -> None:
    """:func:`link_file` of each of ``files`` between two open directories."""
    for name, *_ in files:
        os.link(name, name, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)

"""The macOS and Windows back-ends on Linux, with their system calls faked.

The fakes sit at the lowest level we can reach: libSystem's ``clonefile`` (errors travel through
ctypes' errno, as they do for real) and kernel32 (structures are read back from the pointers
the back-end passes), so the code between the engine and the system call is the real one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import stat
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import pytest

import pytest_cowenv.clone
from pytest_cowenv.clone import _darwin, _platform, _windows, clone_tree, walk_tree
from pytest_cowenv.clone._base import cannot_clone
from pytest_cowenv.clone._darwin import DarwinBackend
from pytest_cowenv.clone._windows import (
    FILE_ATTRIBUTE_SPARSE_FILE,
    FILE_END_OF_FILE_INFO,
    FSCTL_DUPLICATE_EXTENTS_TO_FILE,
    FSCTL_SET_SPARSE,
    WindowsBackend,
)
from pytest_cowenv.errors import CloneError, CowEnvWarning

CLUSTER = 4096


@pytest.fixture(autouse=True)
def _fresh_decisions() -> Any:
    pytest_cowenv.clone.forget_decisions()
    yield
    pytest_cowenv.clone.forget_decisions()


@pytest.fixture
def src_tree(tmp_path: Path) -> Path:
    """A small environment-like tree: scripts, packages, a symlink, empty and larger files."""
    root = tmp_path / "src"
    (root / "bin").mkdir(parents=True)
    (root / "lib" / "pkg").mkdir(parents=True)
    script = root / "bin" / "tool"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    (root / "lib" / "pkg" / "__init__.py").write_text("VALUE = 1\n")
    (root / "lib" / "pkg" / "empty.py").write_bytes(b"")
    (root / "lib" / "pkg" / "data.bin").write_bytes(os.urandom(3 * CLUSTER + 123))
    (root / "bin" / "python").symlink_to("tool")
    # Old, distinct mtimes. Then read every file once: under relatime an atime older than the
    # ctime moves on the first read, and a clone must not see it move while it copies.
    for i, path in enumerate(sorted(p for p in root.rglob("*") if not p.is_symlink())):
        os.utime(path, ns=(time.time_ns(), 1_600_000_000_000_000_000 + i * 1_000_000_123))
        if path.is_file():
            path.read_bytes()
    return root


def same_tree(a: Path, b: Path) -> bool:
    if walk_tree(a).listing(stamps=False) != walk_tree(b).listing(stamps=False):
        return False
    return all(
        (b / f.relative_to(a)).read_bytes() == f.read_bytes()
        for f in a.rglob("*")
        if f.is_file() and not f.is_symlink()
    )


def cow_warnings(caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [w for w in caught if issubclass(w.category, CowEnvWarning)]


# --------------------------------------------------------------------------- macOS


class FakeLibSystem:
    """``clonefile`` that copies with shutil, or fails the way APFS does (via ctypes' errno)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self.refuse: dict[str, int] = {}  # "dir" / "file" → errno
        self.keep_metadata = True

    def clonefile(self, src: bytes, dst: bytes, flags: int) -> int:
        s, d = os.fsdecode(src), os.fsdecode(dst)
        self.calls.append((s, d, flags))
        kind = "dir" if os.path.isdir(s) else "file"
        if os.path.lexists(d):
            code: Optional[int] = errno.EEXIST
        else:
            code = self.refuse.get(kind)
        if code is not None:
            ctypes.set_errno(code)
            return -1
        if kind == "dir":
            shutil.copytree(s, d, symlinks=True)
        elif self.keep_metadata:
            shutil.copy2(s, d, follow_symlinks=False)
        else:
            shutil.copyfile(s, d, follow_symlinks=False)
        return 0


@pytest.fixture
def libsystem(monkeypatch: pytest.MonkeyPatch) -> FakeLibSystem:
    fake = FakeLibSystem()
    monkeypatch.setattr(_darwin, "_libsystem", fake)
    return fake


@pytest.fixture
def darwin(monkeypatch: pytest.MonkeyPatch, libsystem: FakeLibSystem) -> DarwinBackend:
    backend = DarwinBackend()
    monkeypatch.setattr(_platform, "BACKEND", backend)
    return backend


def file_args(path: Path) -> tuple[int, int, int, int]:
    st = os.lstat(path)
    return st.st_mode, st.st_atime_ns, st.st_mtime_ns, st.st_size


def test_darwin_import_does_not_load_libsystem() -> None:
    assert _darwin._libsystem is None


def test_darwin_loads_libsystem_at_first_use(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    loaded: list[tuple[str, bool]] = []
    libs: list[Any] = []

    class FakeCDLL:
        def __init__(self, name: str, use_errno: bool = False) -> None:
            loaded.append((name, use_errno))
            fake = FakeLibSystem()
            self.clonefile = lambda *args: fake.clonefile(*args)
            libs.append(self)

    monkeypatch.setattr(_darwin, "_libsystem", None)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    monkeypatch.setattr(ctypes, "CDLL", FakeCDLL)
    (tmp_path / "a").write_text("a")
    DarwinBackend().probe_reflink(str(tmp_path / "a"), str(tmp_path / "b"))
    DarwinBackend().probe_reflink(str(tmp_path / "a"), str(tmp_path / "c"))
    assert loaded == [(_darwin._LIBSYSTEM, True)]  # once, with errno kept
    assert libs[0].clonefile.argtypes == (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint32)
    assert libs[0].clonefile.restype is ctypes.c_int
    assert (tmp_path / "c").read_text() == "a"


class OsSpy:
    """The os module as _darwin sees it, recording chmod and utime instead of doing them."""

    def __init__(self) -> None:
        self.touched: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def chmod(self, *args: Any, **kwargs: Any) -> None:
        self.touched.append("chmod")

    def utime(self, *args: Any, **kwargs: Any) -> None:
        self.touched.append("utime")


def test_darwin_clone_file(
    libsystem: FakeLibSystem, src_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = src_tree / "bin" / "tool", tmp_path / "tool"
    spy = OsSpy()
    monkeypatch.setattr(_darwin, "os", spy)
    DarwinBackend().clone_file(str(src), str(dst), *file_args(src))
    assert libsystem.calls == [(str(src), str(dst), 3)]  # CLONE_NOFOLLOW | CLONE_NOOWNERCOPY
    assert dst.read_bytes() == src.read_bytes()
    assert spy.touched == []  # clonefile carried mode and times: nothing to fix


def test_darwin_clone_file_restores_mode_and_times(
    libsystem: FakeLibSystem, src_tree: Path, tmp_path: Path
) -> None:
    libsystem.keep_metadata = False
    src, dst = src_tree / "bin" / "tool", tmp_path / "tool"
    src.chmod(0o750)
    mode, _, _, size = file_args(src)
    DarwinBackend().clone_file(str(src), str(dst), mode, 111, 222, size)
    st = os.lstat(dst)
    assert stat.S_IMODE(st.st_mode) == 0o750
    assert (st.st_atime_ns, st.st_mtime_ns) == (111, 222)


@pytest.mark.parametrize(
    ("code", "fallback"),
    [
        (getattr(errno, "ENOTSUP", errno.EOPNOTSUPP), True),
        (errno.EXDEV, True),
        (errno.ENOSPC, False),
    ],
)
def test_darwin_clone_file_errors(
    libsystem: FakeLibSystem, src_tree: Path, tmp_path: Path, code: int, fallback: bool
) -> None:
    libsystem.refuse["file"] = code
    src, dst = src_tree / "bin" / "tool", tmp_path / "tool"
    with pytest.raises(OSError) as info:
        DarwinBackend().clone_file(str(src), str(dst), *file_args(src))
    assert info.value.errno == code
    assert (info.value.filename, info.value.filename2) == (str(src), str(dst))
    assert cannot_clone(info.value) is fallback


def test_darwin_clone_file_eexist_is_a_real_error(
    libsystem: FakeLibSystem, src_tree: Path, tmp_path: Path
) -> None:
    src, dst = src_tree / "bin" / "tool", tmp_path / "tool"
    dst.write_text("already here")
    with pytest.raises(FileExistsError) as info:
        DarwinBackend().clone_file(str(src), str(dst), *file_args(src))
    assert not cannot_clone(info.value)
    assert dst.read_text() == "already here"


def test_darwin_probe_reflink(libsystem: FakeLibSystem, tmp_path: Path) -> None:
    (tmp_path / "a").write_text("probe")
    DarwinBackend().probe_reflink(str(tmp_path / "a"), str(tmp_path / "b"))
    assert (tmp_path / "b").read_text() == "probe"
    libsystem.refuse["file"] = errno.EOPNOTSUPP
    with pytest.raises(OSError) as info:
        DarwinBackend().probe_reflink(str(tmp_path / "a"), str(tmp_path / "c"))
    assert cannot_clone(info.value)


def test_darwin_directory_and_template_hooks(libsystem: FakeLibSystem, tmp_path: Path) -> None:
    backend = DarwinBackend()
    assert backend.dir_strategy == "clonefile"
    assert backend.is_dir_clonable(str(tmp_path))  # APFS decides by trying
    assert not backend.can_snapshot(str(tmp_path), "apfs")
    assert backend.make_template_dir(str(tmp_path / "t")) is False
    assert (tmp_path / "t").is_dir()
    assert backend.set_readonly(str(tmp_path / "t"), True) is False
    assert backend.destroy_dir_at(-1, "t", -1) is False
    assert (tmp_path / "t").is_dir()


def test_darwin_engine_clones_the_directory_whole(
    darwin: DarwinBackend, libsystem: FakeLibSystem, src_tree: Path, tmp_path: Path
) -> None:
    dst = tmp_path / "env"
    result = clone_tree(src_tree, dst)
    assert result.strategy == "clonefile"
    assert result.fallback_reason is None
    assert libsystem.calls == [(str(src_tree), str(dst), 3)]
    assert same_tree(src_tree, dst)


def test_darwin_engine_falls_back_to_files_when_directory_refused(
    darwin: DarwinBackend, libsystem: FakeLibSystem, src_tree: Path, tmp_path: Path
) -> None:
    libsystem.refuse["dir"] = getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)
    dst = tmp_path / "env"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = clone_tree(src_tree, dst)
    assert result.strategy == "clone"
    assert result.fallback_reason is not None and "clonefile" in result.fallback_reason
    assert cow_warnings(caught) == []  # files still clone: nothing to warn about
    assert len(libsystem.calls) == 1 + 4  # the directory, then each regular file
    assert same_tree(src_tree, dst)


def test_darwin_engine_copies_when_nothing_clones(
    darwin: DarwinBackend, libsystem: FakeLibSystem, src_tree: Path, tmp_path: Path
) -> None:
    libsystem.refuse.update(dir=errno.EXDEV, file=errno.EXDEV)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = clone_tree(src_tree, tmp_path / "env")
    assert result.strategy == "copy"
    assert len(cow_warnings(caught)) == 1
    assert same_tree(src_tree, tmp_path / "env")


def test_darwin_explicit_snapshot(
    darwin: DarwinBackend, libsystem: FakeLibSystem, src_tree: Path, tmp_path: Path
) -> None:
    assert clone_tree(src_tree, tmp_path / "ok", "snapshot").strategy == "clonefile"
    libsystem.refuse["dir"] = getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)
    with pytest.raises(CloneError, match="snapshot") as info:
        clone_tree(src_tree, tmp_path / "refused", "snapshot")
    assert info.value.errno == libsystem.refuse["dir"]
    assert not (tmp_path / "refused").exists()


def test_darwin_explicit_clone_goes_file_by_file(
    darwin: DarwinBackend, libsystem: FakeLibSystem, src_tree: Path, tmp_path: Path
) -> None:
    result = clone_tree(src_tree, tmp_path / "env", "clone")
    assert result.strategy == "clone"
    assert all(not os.path.isdir(call[0]) for call in libsystem.calls)
    assert same_tree(src_tree, tmp_path / "env")


# --------------------------------------------------------------------------- Windows


def win32_call(method: Any) -> Any:
    """Check the arguments as ctypes would convert them for the real function's argtypes."""

    def call(self: Any, *args: Any) -> int:
        argtypes = _windows._SIGNATURES[method.__name__]
        assert len(args) == len(argtypes)
        for argtype, arg in zip(argtypes, args):
            argtype.from_param(arg)  # TypeError if Windows would refuse it
        result: int = method(self, *args)
        return result

    return call


class FakeKernel32:
    """kernel32 on a file system with 4 KiB clusters; handles are our file descriptors.

    FSCTL_DUPLICATE_EXTENTS_TO_FILE copies the requested range after checking what ReFS
    checks: alignment, a pre-sized target, a sparse target for a sparse source.
    """

    def __init__(self) -> None:
        self.error = 0
        self.fail: dict[str, int] = {}  # call name → Windows error code
        self.sparse_source = False
        self.calls: list[tuple[Any, ...]] = []

    def _fails(self, name: str) -> bool:
        if name in self.fail:
            self.error = self.fail[name]
            return True
        return False

    @win32_call
    def GetFileInformationByHandle(self, handle: int, info: Any) -> int:
        self.calls.append(("info", handle))
        if self._fails("GetFileInformationByHandle"):
            return 0
        info.contents.FileAttributes = FILE_ATTRIBUTE_SPARSE_FILE if self.sparse_source else 0x20
        info.contents.VolumeSerialNumber = 0x1234ABCD
        return 1

    @win32_call
    def SetFileInformationByHandle(self, handle: int, cls: int, buf: Any, size: int) -> int:
        assert (cls, size) == (FILE_END_OF_FILE_INFO, 8)
        self.calls.append(("eof", buf.contents.EndOfFile))
        if self._fails("SetFileInformationByHandle"):
            return 0
        os.ftruncate(handle, buf.contents.EndOfFile)
        return 1

    @win32_call
    def GetVolumePathNameW(self, path: str, buf: Any, size: int) -> int:
        assert os.path.isabs(path) and size > len(path)
        self.calls.append(("volume",))
        if self._fails("GetVolumePathNameW"):
            return 0
        buf.value = os.sep
        return 1

    @win32_call
    def GetDiskFreeSpaceW(self, root: str, *out: Any) -> int:
        assert root == os.sep
        self.calls.append(("cluster",))
        if self._fails("GetDiskFreeSpaceW"):
            return 0
        for pointer, value in zip(out, (8, 512, 1000, 2000)):
            pointer.contents.value = value
        return 1

    @win32_call
    def DeviceIoControl(
        self,
        handle: int,
        code: int,
        inbuf: Any,
        insize: int,
        outbuf: Any,
        outsize: int,
        returned: Any,
        overlapped: Any,
    ) -> int:
        assert (outbuf, outsize, overlapped) == (None, 0, None) and returned is not None
        if code == FSCTL_SET_SPARSE:
            assert (inbuf, insize) == (None, 0)
            self.calls.append(("sparse",))
            return 0 if self._fails("FSCTL_SET_SPARSE") else 1
        assert code == FSCTL_DUPLICATE_EXTENTS_TO_FILE
        data = inbuf.contents
        assert insize == 32  # HANDLE + three LARGE_INTEGERs
        src_off, dst_off, count = data.SourceFileOffset, data.TargetFileOffset, data.ByteCount
        self.calls.append(("dup", src_off, dst_off, count))
        if self._fails("FSCTL_DUPLICATE_EXTENTS_TO_FILE"):
            return 0
        assert src_off % CLUSTER == dst_off % CLUSTER == count % CLUSTER == 0
        assert 0 < count < 1 << 32
        target_size = os.fstat(handle).st_size
        assert dst_off + count - CLUSTER < target_size, "target not pre-sized"
        if self.sparse_source:
            assert ("sparse",) in self.calls, "target not marked sparse"
        chunk = os.pread(data.FileHandle, count, src_off)[: target_size - dst_off]
        os.pwrite(handle, chunk, dst_off)
        return 1


class FakeWin32:
    def __init__(self) -> None:
        self.kernel32 = FakeKernel32()

    def os_handle(self, fd: int) -> int:
        return fd

    def last_error(self) -> int:
        return self.kernel32.error


@pytest.fixture
def kernel32(monkeypatch: pytest.MonkeyPatch) -> FakeKernel32:
    fake = FakeWin32()
    monkeypatch.setattr(_windows, "_api", fake)
    return fake.kernel32


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch, kernel32: FakeKernel32) -> WindowsBackend:
    backend = WindowsBackend()
    monkeypatch.setattr(_platform, "BACKEND", backend)
    return backend


def dups(kernel32: FakeKernel32) -> list[tuple[Any, ...]]:
    return [call[1:] for call in kernel32.calls if call[0] == "dup"]


def test_windows_import_does_not_load_kernel32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_windows, "_api", None)
    with pytest.raises(OSError) as info:  # not on Windows: loading is refused, not crashed
        _windows._win32()
    assert info.value.errno == errno.ENOSYS and cannot_clone(info.value)


def test_windows_structures_match_the_sdk() -> None:
    assert ctypes.sizeof(_windows._DuplicateExtentsData) == 32
    assert ctypes.sizeof(_windows._ByHandleFileInformation) == 52
    assert _windows._ByHandleFileInformation.VolumeSerialNumber.offset == 28
    assert ctypes.sizeof(_windows._FileEndOfFileInfo) == 8


def test_windows_clone_file(kernel32: FakeKernel32, src_tree: Path, tmp_path: Path) -> None:
    src, dst = src_tree / "lib" / "pkg" / "data.bin", tmp_path / "data.bin"
    mode, atime, mtime, size = file_args(src)
    WindowsBackend().clone_file(str(src), str(dst), mode, atime, mtime, size)
    st = os.stat(dst)  # before reading it moves the atime
    assert st.st_size == size and stat.S_IMODE(st.st_mode) == stat.S_IMODE(mode)
    assert (st.st_atime_ns, st.st_mtime_ns) == (atime, mtime)
    assert dst.read_bytes() == src.read_bytes()
    assert dups(kernel32) == [(0, 0, 4 * CLUSTER)]  # rounded up to whole clusters
    assert [c[0] for c in kernel32.calls] == ["info", "eof", "volume", "cluster", "dup"]


def test_windows_clone_file_sets_mode_after_data(
    kernel32: FakeKernel32, src_tree: Path, tmp_path: Path
) -> None:
    src = src_tree / "bin" / "tool"
    for mode in (0o755, 0o444):
        dst = tmp_path / f"tool-{mode:o}"
        _, atime, mtime, size = file_args(src)
        WindowsBackend().clone_file(str(src), str(dst), stat.S_IFREG | mode, atime, mtime, size)
        assert stat.S_IMODE(os.stat(dst).st_mode) == mode
        assert dst.read_bytes() == src.read_bytes()


def test_windows_clone_file_in_chunks(
    kernel32: FakeKernel32, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(_windows, "_CHUNK", 3 * CLUSTER + 100)  # trimmed to whole clusters
    src, dst = tmp_path / "big", tmp_path / "big-clone"
    src.write_bytes(os.urandom(6 * CLUSTER + 5000))
    WindowsBackend().clone_file(str(src), str(dst), *file_args(src))
    chunk = 3 * CLUSTER
    assert dups(kernel32) == [(0, 0, chunk), (chunk, chunk, chunk), (2 * chunk, 2 * chunk, 8192)]
    assert dst.read_bytes() == src.read_bytes()


def test_windows_sparse_source_makes_a_sparse_target(
    kernel32: FakeKernel32, src_tree: Path, tmp_path: Path
) -> None:
    kernel32.sparse_source = True
    src, dst = src_tree / "lib" / "pkg" / "data.bin", tmp_path / "data.bin"
    WindowsBackend().clone_file(str(src), str(dst), *file_args(src))
    assert [c[0] for c in kernel32.calls][:3] == ["info", "sparse", "eof"]
    assert dst.read_bytes() == src.read_bytes()


def test_windows_empty_file_and_cluster_cache(
    kernel32: FakeKernel32, src_tree: Path, tmp_path: Path
) -> None:
    backend = WindowsBackend()
    empty = src_tree / "lib" / "pkg" / "empty.py"
    backend.clone_file(str(empty), str(tmp_path / "empty"), *file_args(empty))
    assert dups(kernel32) == [] and ("cluster",) not in kernel32.calls
    for name in ("tool", "data"):
        src = src_tree / "bin" / "tool"
        backend.clone_file(str(src), str(tmp_path / name), *file_args(src))
    assert kernel32.calls.count(("cluster",)) == 1  # once per volume


@pytest.mark.parametrize(
    ("code", "expected", "fallback"),
    [
        (1, errno.EOPNOTSUPP, True),  # ERROR_INVALID_FUNCTION: NTFS
        (50, errno.EOPNOTSUPP, True),  # ERROR_NOT_SUPPORTED
        (87, errno.EOPNOTSUPP, True),  # ERROR_INVALID_PARAMETER
        (17, errno.EXDEV, True),  # ERROR_NOT_SAME_DEVICE
        (112, errno.ENOSPC, False),  # ERROR_DISK_FULL
        (39, errno.ENOSPC, False),  # ERROR_HANDLE_DISK_FULL
        (5, errno.EACCES, False),  # ERROR_ACCESS_DENIED
        (1117, errno.EIO, False),  # ERROR_IO_DEVICE: anything unknown is real
    ],
)
def test_windows_errors_translate(
    kernel32: FakeKernel32,
    src_tree: Path,
    tmp_path: Path,
    code: int,
    expected: int,
    fallback: bool,
) -> None:
    kernel32.fail["FSCTL_DUPLICATE_EXTENTS_TO_FILE"] = code
    src, dst = src_tree / "bin" / "tool", tmp_path / "tool"
    with pytest.raises(OSError) as info:
        WindowsBackend().clone_file(str(src), str(dst), *file_args(src))
    assert info.value.errno == expected
    assert f"Windows error {code}" in str(info.value)
    assert cannot_clone(info.value) is fallback


@pytest.mark.parametrize(
    "call",
    [
        "GetFileInformationByHandle",
        "FSCTL_SET_SPARSE",
        "SetFileInformationByHandle",
        "GetVolumePathNameW",
        "GetDiskFreeSpaceW",
    ],
)
def test_windows_every_call_is_checked(
    kernel32: FakeKernel32, src_tree: Path, tmp_path: Path, call: str
) -> None:
    kernel32.sparse_source = True
    kernel32.fail[call] = 5
    src = src_tree / "bin" / "tool"
    with pytest.raises(PermissionError, match=call):
        WindowsBackend().clone_file(str(src), str(tmp_path / "tool"), *file_args(src))
    assert dups(kernel32) == []


def test_windows_probe_reflink(kernel32: FakeKernel32, tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"cowenv probe\n")
    WindowsBackend().probe_reflink(str(tmp_path / "a"), str(tmp_path / "b"))
    assert (tmp_path / "b").read_bytes() == b"cowenv probe\n"
    kernel32.fail["FSCTL_DUPLICATE_EXTENTS_TO_FILE"] = 1
    with pytest.raises(OSError) as info:
        WindowsBackend().probe_reflink(str(tmp_path / "a"), str(tmp_path / "c"))
    assert cannot_clone(info.value)


def test_windows_has_no_directory_clone(kernel32: FakeKernel32, tmp_path: Path) -> None:
    backend = WindowsBackend()
    assert backend.dir_strategy is None
    assert not backend.is_dir_clonable(str(tmp_path))
    assert not backend.can_snapshot(str(tmp_path), "refs")
    with pytest.raises(OSError) as info:
        backend.clone_dir(str(tmp_path), str(tmp_path / "x"))
    assert info.value.errno == errno.EOPNOTSUPP
    assert backend.make_template_dir(str(tmp_path / "t")) is False
    assert (tmp_path / "t").is_dir()
    assert backend.set_readonly(str(tmp_path / "t"), True) is False
    assert backend.destroy_dir_at(-1, "t", -1) is False


def test_windows_engine_never_asks_for_a_directory_clone(
    windows: WindowsBackend,
    kernel32: FakeKernel32,
    monkeypatch: pytest.MonkeyPatch,
    src_tree: Path,
    tmp_path: Path,
) -> None:
    asked: list[str] = []

    def access_denied(
        src: str, dst: str
    ) -> None:  # what Windows answers (https://github.com/astral-sh/uv/issues/3547)
        asked.append(src)
        raise PermissionError(errno.EACCES, "Access is denied", src)

    monkeypatch.setattr(windows, "clone_dir", access_denied)

    def clonable(src: str) -> bool:
        asked.append(src)
        return True

    monkeypatch.setattr(windows, "is_dir_clonable", clonable)
    for mode in ("auto", "clone"):
        result = clone_tree(src_tree, tmp_path / mode, mode)
        assert (result.strategy, result.fallback_reason) == ("clone", None)
        assert same_tree(src_tree, tmp_path / mode)
    assert asked == []
    assert len(dups(kernel32)) == 2 * 3  # non-empty regular files: tool, __init__.py, data.bin


def test_windows_engine_falls_back_to_copy_with_one_warning(
    windows: WindowsBackend, kernel32: FakeKernel32, src_tree: Path, tmp_path: Path
) -> None:
    kernel32.fail["FSCTL_DUPLICATE_EXTENTS_TO_FILE"] = 1  # ERROR_INVALID_FUNCTION: NTFS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = clone_tree(src_tree, tmp_path / "one")
        second = clone_tree(src_tree, tmp_path / "two")
    assert first.strategy == second.strategy == "copy"
    assert first.fallback_reason is not None and "Windows error 1" in first.fallback_reason
    assert len(cow_warnings(caught)) == 1
    assert len(dups(kernel32)) == 1  # the decision is kept: the second clone copies at once
    assert same_tree(src_tree, tmp_path / "one") and same_tree(src_tree, tmp_path / "two")


def test_windows_engine_explicit_clone_on_ntfs_is_an_error(
    windows: WindowsBackend, kernel32: FakeKernel32, src_tree: Path, tmp_path: Path
) -> None:
    kernel32.fail["FSCTL_DUPLICATE_EXTENTS_TO_FILE"] = 1
    with pytest.raises(CloneError, match="file by file"):
        clone_tree(src_tree, tmp_path / "env", "clone")
    assert not (tmp_path / "env").exists()


def test_windows_engine_disk_full_is_an_error_not_a_copy(
    windows: WindowsBackend, kernel32: FakeKernel32, src_tree: Path, tmp_path: Path
) -> None:
    kernel32.fail["FSCTL_DUPLICATE_EXTENTS_TO_FILE"] = 112  # ERROR_DISK_FULL
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CloneError, match=r"No space|ENOSPC"):
            clone_tree(src_tree, tmp_path / "env")
    assert cow_warnings(caught) == []
    assert not (tmp_path / "env").exists()

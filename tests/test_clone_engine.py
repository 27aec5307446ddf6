"""The clone engine on real btrfs, XFS, ext4 and tmpfs mounts (see conftest.py).

Each test names the filesystems it needs through the ``*_dir`` fixtures, which skip with the
reason when a mount is missing, so the same file runs anywhere and proves what it can.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import math
import os
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from pytest_cowenv.clone import (
    CloneResult,
    LinkMode,
    _linux,
    _platform,
    _remove,
    clone_tree,
    forget_decisions,
    make_template_dir,
    protect,
    remove_tree,
    walk_tree,
)
from pytest_cowenv.errors import CloneError, CowEnvWarning
from pytest_cowenv.fs import is_subvolume

State = dict[str, tuple[Any, ...]]
# errno 95 is both EOPNOTSUPP and ENOTSUP on Linux; messages name it "ENOTSUP: ...".
NOT_SUPPORTED = f"{errno.errorcode[errno.EOPNOTSUPP]}: "


def tree_state(root: Path) -> State:
    """Everything a clone must reproduce: per entry its type, mode, mtime (ns) and content
    (a full SHA-256 for files, the target for symlinks)."""
    state: State = {}
    pending = [""]
    while pending:
        rel = pending.pop()
        path = os.path.join(root, rel) if rel else str(root)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            state[rel] = ("link", os.readlink(path), st.st_mtime_ns)
        elif stat.S_ISDIR(st.st_mode):
            state[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            pending += [os.path.join(rel, name) for name in os.listdir(path)]
        else:
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            state[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_mtime_ns, digest)
    return state


def make_template(parent: Path, subvolume: bool = False, name: str = "template") -> Path:
    path = parent / name
    if subvolume:
        assert make_template_dir(path), "btrfs refused a subvolume"
    else:
        path.mkdir()
    return path


def clone_quietly(src: Path, dst: Path, mode: str = "auto") -> tuple[CloneResult, list[str]]:
    """Clone and return the result with the CowEnvWarning messages it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = clone_tree(src, dst, mode)
    messages = [str(w.message) for w in caught if issubclass(w.category, CowEnvWarning)]
    return result, messages


# --- strategy chosen ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fs_name", "subvolume", "expected"),
    [
        ("btrfs", True, "snapshot"),
        ("btrfs", False, "clone"),
        ("xfs", False, "clone"),
        ("ext4", False, "copy"),
        ("tmpfs", False, "copy"),
    ],
)
def test_auto_picks_the_cheapest_strategy(
    request: pytest.FixtureRequest,
    identity_tree: Callable[[Path], Path],
    fs_name: str,
    subvolume: bool,
    expected: str,
) -> None:
    where: Path = request.getfixturevalue(f"{fs_name}_dir")
    template = identity_tree(make_template(where, subvolume))
    result, warned = clone_quietly(template, where / "clone")
    assert result.strategy == expected
    assert result.strategy != "hardlink"
    if expected != "copy":
        assert warned == [] and result.fallback_reason is None
        return
    # Exactly one warning, naming the filesystem, the errno and the fix ...
    assert len(warned) == 1, warned
    assert fs_name in warned[0] and NOT_SUPPORTED in warned[0] and "btrfs, XFS" in warned[0]
    assert result.fallback_reason and NOT_SUPPORTED in result.fallback_reason
    # ... and only one: the decision is cached for the filesystem pair.
    again, warned_again = clone_quietly(template, where / "clone2")
    assert (again.strategy, warned_again) == ("copy", [])
    forget_decisions()
    _, warned_after_forget = clone_quietly(template, where / "clone3")
    assert len(warned_after_forget) == 1


@pytest.mark.parametrize("fs_name", ["ext4", "tmpfs"])
def test_explicit_clone_where_impossible_is_an_error(
    request: pytest.FixtureRequest, identity_tree: Callable[[Path], Path], fs_name: str
) -> None:
    where: Path = request.getfixturevalue(f"{fs_name}_dir")
    template = identity_tree(make_template(where))
    with pytest.raises(CloneError) as info:
        clone_tree(template, where / "clone", LinkMode.CLONE)
    message = str(info.value)
    assert str(template) in message and fs_name in message and NOT_SUPPORTED in message
    assert not (where / "clone").exists()


@pytest.mark.parametrize("fs_name", ["btrfs", "xfs", "ext4", "tmpfs"])
def test_explicit_snapshot_of_a_plain_directory_is_an_error(
    request: pytest.FixtureRequest, identity_tree: Callable[[Path], Path], fs_name: str
) -> None:
    where: Path = request.getfixturevalue(f"{fs_name}_dir")
    template = identity_tree(make_template(where))
    with pytest.raises(CloneError) as info:
        clone_tree(template, where / "clone", "snapshot")
    message = str(info.value)
    assert str(template) in message and fs_name in message
    assert ("not a subvolume" if fs_name == "btrfs" else "no subvolume snapshots") in message
    assert not (where / "clone").exists()


# --- identity ------------------------------------------------------------------------------

IDENTITY_CASES = [
    ("btrfs", True, "snapshot"),
    ("btrfs", False, "clone"),
    ("btrfs", False, "copy"),
    ("xfs", False, "clone"),
    ("xfs", False, "copy"),
    ("xfs", False, "hardlink"),
    ("ext4", False, "copy"),
    ("ext4", False, "hardlink"),
    ("tmpfs", False, "copy"),
]


@pytest.mark.parametrize(("fs_name", "subvolume", "mode"), IDENTITY_CASES)
def test_clone_reproduces_the_tree_exactly(
    request: pytest.FixtureRequest,
    identity_tree: Callable[[Path], Path],
    fs_name: str,
    subvolume: bool,
    mode: str,
) -> None:
    where: Path = request.getfixturevalue(f"{fs_name}_dir")
    template = identity_tree(make_template(where, subvolume))
    before = tree_state(template)
    tree = walk_tree(template)
    result = clone_tree(template, where / "clone", mode, tree=tree)
    assert result.strategy == mode
    assert tree_state(where / "clone") == before
    assert tree_state(template) == before
    assert (result.files, result.bytes) == (tree.nfiles, tree.nbytes)
    # The odd corners, spelled out (tree_state already compared them):
    clone = where / "clone"
    assert os.access(clone / "bin" / "tool", os.X_OK)
    assert os.readlink(clone / "etc-passwd") == "/etc/passwd"
    assert os.path.islink(clone / "dangling") and not (clone / "dangling").exists()
    assert stat.S_IMODE(os.lstat(clone / "readonly-dir").st_mode) == 0o555


@pytest.mark.parametrize("fs_name", ["btrfs", "xfs", "ext4", "tmpfs"])
def test_a_cloned_venv_runs_as_itself(request: pytest.FixtureRequest, fs_name: str) -> None:
    where: Path = request.getfixturevalue(f"{fs_name}_dir")
    template = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", template], check=True)
    before = tree_state(template)
    result, _ = clone_quietly(template, where / "clone")
    assert result.strategy in ("clone", "copy")
    assert tree_state(where / "clone") == before
    out = subprocess.run(
        [where / "clone" / "bin" / "python", "-c", "import sys; print(sys.prefix)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert out == str(where / "clone")


# --- isolation -----------------------------------------------------------------------------


def mutate(clone: Path) -> None:
    """Every way a test may change its environment."""
    pkg = clone / "lib" / "site-packages" / "pkg"
    with open(pkg / "data.bin", "r+b") as f:  # overwrite in place
        f.seek(1000)
        f.write(b"X" * 5000)
    with open(pkg / "__init__.py", "ab") as f:  # append
        f.write(b"VALUE = 2\n")
    os.truncate(clone / "pyvenv.cfg", 3)  # truncate
    os.unlink(pkg / "private.key")  # delete
    (pkg / "new_module.py").write_bytes(b"NEW = True\n")  # add
    with open(clone / "bin" / "python3", "ab") as f:  # write through a relative symlink
        f.write(b"# changed\n")
    os.chmod(clone / "bin" / "tool", 0o700)
    with open(clone / "readonly-dir" / "inside.txt", "wb") as f:
        f.write(b"rewritten\n")


ISOLATED_CASES = [case for case in IDENTITY_CASES if case[2] != "hardlink"]


@pytest.mark.parametrize(("fs_name", "subvolume", "mode"), ISOLATED_CASES)
def test_changes_in_a_clone_stay_in_it(
    request: pytest.FixtureRequest,
    identity_tree: Callable[[Path], Path],
    fs_name: str,
    subvolume: bool,
    mode: str,
) -> None:
    where: Path = request.getfixturevalue(f"{fs_name}_dir")
    template = identity_tree(make_template(where, subvolume))
    before = tree_state(template)
    for name in ("a", "b"):
        assert clone_tree(template, where / name, mode).strategy == mode
    mutate(where / "a")
    assert tree_state(where / "a") != before
    assert tree_state(template) == before
    assert tree_state(where / "b") == before


@pytest.mark.parametrize("fs_name", ["xfs", "ext4"])
def test_hardlink_mode_shares_inodes_and_is_not_isolated(
    request: pytest.FixtureRequest, identity_tree: Callable[[Path], Path], fs_name: str
) -> None:
    where: Path = request.getfixturevalue(f"{fs_name}_dir")
    template = identity_tree(make_template(where))
    result = clone_tree(template, where / "clone", "hardlink")
    assert result.strategy == "hardlink"
    rel = Path("lib", "site-packages", "pkg", "__init__.py")
    assert os.stat(template / rel).st_ino == os.stat(where / "clone" / rel).st_ino
    with open(where / "clone" / rel, "ab") as f:
        f.write(b"# written in the clone\n")
    assert (template / rel).read_bytes().endswith(b"# written in the clone\n")


# --- sharing -------------------------------------------------------------------------------

TREE_BYTES = 20 << 20
# Other tests (other xdist workers) write to and delete from the same mounts while a
# measurement runs; so one that is over its limit, or implausible (inf), is taken again in a
# fresh directory, and the best of ATTEMPTS counts.
ATTEMPTS = 5


def best_of(attempts: int, measure: Callable[[Path], float], where: Path) -> list[float]:
    """``measure(fresh dir)`` until one result is at most 1.0 (or ``attempts`` are spent)."""
    results: list[float] = []
    for attempt in range(attempts):
        fresh = where / f"attempt{attempt}"
        fresh.mkdir()
        results.append(measure(fresh))
        for entry in os.listdir(fresh):
            remove_tree(fresh / entry)
        if results[-1] <= 1.0:
            break
    return results


def test_fifty_snapshots_add_under_5_percent_of_one_tree(
    btrfs_dir: Path, data_tree: Callable[..., Path], used_space: Callable[[Path], int]
) -> None:
    def measure(where: Path) -> float:
        """What 50 snapshots add, as a fraction of 5 % of the tree (1.0 = at the limit)."""
        empty = used_space(where)
        template = data_tree(make_template(where, subvolume=True), total_bytes=TREE_BYTES)
        one_tree = used_space(where) - empty
        for i in range(50):
            assert clone_tree(template, where / f"c{i}").strategy == "snapshot"
        added = used_space(where) - empty - one_tree
        if one_tree < TREE_BYTES or added < 50 * 4096:  # someone else freed space meanwhile
            return math.inf
        return added / (0.05 * one_tree)

    results = best_of(ATTEMPTS, measure, btrfs_dir)
    assert min(results) <= 1.0, [f"{0.05 * r:.1%} of one tree" for r in results]


@pytest.mark.parametrize(("fs_name", "limit"), [("xfs", 0.06), ("btrfs", 0.12)])
def test_fifty_file_clones_take_a_fraction_of_fifty_copies(
    request: pytest.FixtureRequest,
    data_tree: Callable[..., Path],
    used_space: Callable[[Path], int],
    fs_name: str,
    limit: float,
) -> None:
    def measure(where: Path) -> float:
        """What 50 clones add, as a fraction of ``limit`` times 50 copies."""
        template = data_tree(make_template(where), total_bytes=TREE_BYTES)
        tree = walk_tree(template)
        start = used_space(where)
        clone_tree(template, where / "copy", "copy", tree=tree)
        one_copy = used_space(where) - start
        remove_tree(where / "copy")
        start = used_space(where)
        for i in range(50):
            assert clone_tree(template, where / f"c{i}", "clone", tree=tree).strategy == "clone"
        added = used_space(where) - start
        if one_copy < TREE_BYTES or added < 50 * 100 * tree.nfiles:  # space freed meanwhile
            return math.inf
        return added / (limit * 50 * one_copy)

    results = best_of(ATTEMPTS, measure, request.getfixturevalue(f"{fs_name}_dir"))
    assert min(results) <= 1.0, [f"{limit * r:.1%} of 50 copies" for r in results]


# --- across filesystems --------------------------------------------------------------------


@pytest.mark.parametrize("subvolume", [False, True], ids=["plain", "subvolume"])
def test_btrfs_template_to_ext4_copies_in_auto_and_refuses_in_clone(
    btrfs_dir: Path, ext4_dir: Path, identity_tree: Callable[[Path], Path], subvolume: bool
) -> None:
    template = identity_tree(make_template(btrfs_dir, subvolume))
    before = tree_state(template)
    result, warned = clone_quietly(template, ext4_dir / "auto")
    assert result.strategy == "copy" and len(warned) == 1
    assert "EXDEV" in warned[0] and "ext4" in warned[0] and "btrfs" in warned[0]
    assert tree_state(ext4_dir / "auto") == before
    for mode in ("clone", "snapshot") if subvolume else ("clone",):
        with pytest.raises(CloneError) as info:
            clone_tree(template, ext4_dir / mode, mode)
        assert "ext4" in str(info.value) and "btrfs" in str(info.value)
        assert not (ext4_dir / mode).exists()


# --- big trees: one thread ----------------------------------------------------------------


@pytest.fixture
def made_by(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Collects ``(thread name, operation)`` for every directory whose files are made, and
    fails the test if the clone starts a thread (a per-file clone runs in its caller's)."""
    import pytest_cowenv.clone as engine

    seen: list[tuple[str, str]] = []
    real = engine._files_at

    def recording(*args: Any) -> None:
        seen.append((threading.current_thread().name, getattr(args[3], "__name__", "?")))
        real(*args)

    def no_thread(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a per-file clone started a thread")

    monkeypatch.setattr(engine, "_files_at", recording)
    monkeypatch.setattr(threading.Thread, "start", no_thread)
    return seen


def big_template(
    where: Path,
    identity_tree: Callable[[Path], Path],
    data_tree: Callable[..., Path],
    subvolume: bool = False,
) -> Path:
    template = identity_tree(make_template(where, subvolume))
    data_tree(template / "lib" / "data", files=400, total_bytes=1 << 20)
    return template


@pytest.mark.parametrize(
    ("fs_name", "strategy", "operation"),
    [
        ("btrfs", "clone", "clone_files_at"),
        ("xfs", "clone", "clone_files_at"),
        ("ext4", "copy", "copy_files_at"),
        ("tmpfs", "copy", "copy_files_at"),
    ],
)
def test_a_big_tree_is_made_exactly_by_the_callers_thread_a_directory_at_a_time(
    request: pytest.FixtureRequest,
    identity_tree: Callable[[Path], Path],
    data_tree: Callable[..., Path],
    made_by: list[tuple[str, str]],
    fs_name: str,
    strategy: str,
    operation: str,
) -> None:
    where: Path = request.getfixturevalue(f"{fs_name}_dir")
    template = big_template(where, identity_tree, data_tree)
    tree = walk_tree(template)
    result, warned = clone_quietly(template, where / "clone")
    assert result.strategy == strategy
    assert len(warned) == (strategy == "copy")  # the one "cannot clone here" warning
    # Each directory with files once, by name inside it; a refused clone (ext4, tmpfs) may
    # have begun a first round before the copy.
    last_round = made_by[-len(tree.files_by_dir) :]
    assert last_round == [(threading.current_thread().name, operation)] * len(tree.files_by_dir)
    assert tree_state(where / "clone") == tree_state(template)


def test_a_big_tree_falls_back_to_a_copy_once(
    btrfs_dir: Path,
    ext4_dir: Path,
    identity_tree: Callable[[Path], Path],
    data_tree: Callable[..., Path],
    made_by: list[tuple[str, str]],
) -> None:
    """The first file meets EXDEV: one warning, one copy, nothing mixed."""
    template = big_template(btrfs_dir, identity_tree, data_tree)
    result, warned = clone_quietly(template, ext4_dir / "auto")
    assert result.strategy == "copy" and len(warned) == 1 and "EXDEV" in warned[0]
    assert [op for _, op in made_by][:2] == ["clone_files_at", "copy_files_at"]
    assert tree_state(ext4_dir / "auto") == tree_state(template)


def test_an_error_midway_fails_the_whole_clone_and_leaves_nothing(
    xfs_dir: Path,
    identity_tree: Callable[[Path], Path],
    data_tree: Callable[..., Path],
    made_by: list[tuple[str, str]],
    fail_after: Callable[..., None],
) -> None:
    template = big_template(xfs_dir, identity_tree, data_tree)
    fail_after(fcntl, "ioctl", 150, errno.ENOSPC, when=is_ficlone)
    with pytest.raises(CloneError, match="ENOSPC") as info:
        clone_tree(template, xfs_dir / "clone")
    assert info.value.errno == errno.ENOSPC
    assert not os.path.lexists(xfs_dir / "clone")


def test_a_pause_that_raises_stops_the_clone_at_once(
    xfs_dir: Path,
    identity_tree: Callable[[Path], Path],
    data_tree: Callable[..., Path],
    made_by: list[tuple[str, str]],
) -> None:
    """How the pool abandons a clone when the session closes: no file is made after it."""
    template = big_template(xfs_dir, identity_tree, data_tree)
    calls = []

    class Stop(Exception):
        pass

    def pause() -> None:
        calls.append(len(made_by))
        if len(calls) > 20:
            raise Stop

    with pytest.raises(Stop):
        clone_tree(template, xfs_dir / "clone", pause=pause)
    assert not os.path.lexists(xfs_dir / "clone")
    assert calls == list(range(21))  # between directories, and none made after the raise
    assert len(made_by) == 20


# --- removal -------------------------------------------------------------------------------


def test_remove_tree_destroys_a_snapshot_without_walking_it(
    btrfs_dir: Path, identity_tree: Callable[[Path], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    template = identity_tree(make_template(btrfs_dir, subvolume=True))
    clone_tree(template, btrfs_dir / "clone")
    assert is_subvolume(btrfs_dir / "clone")

    def no_walk(dfd: int) -> list[str]:
        raise AssertionError("walked the clone instead of destroying the subvolume")

    monkeypatch.setattr(_remove, "_remove_files", no_walk)
    remove_tree(btrfs_dir / "clone")
    assert not os.path.lexists(btrfs_dir / "clone")


def test_remove_tree_falls_back_when_destroy_is_not_allowed(
    btrfs_dir: Path, identity_tree: Callable[[Path], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unprivileged, without user_subvol_rm_allowed: EPERM, so empty it and rmdir it."""
    template = identity_tree(make_template(btrfs_dir, subvolume=True))
    assert protect(template)
    clone_tree(template, btrfs_dir / "clone")
    real_ioctl = _linux.ioctl_buffer

    def refuse_destroy(fd: int, request: int, args: bytearray) -> None:
        if request == _linux.BTRFS_IOC_SNAP_DESTROY:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        real_ioctl(fd, request, args)

    monkeypatch.setattr(_linux, "ioctl_buffer", refuse_destroy)
    remove_tree(btrfs_dir / "clone")
    remove_tree(template)  # read-only: the flag must be cleared first
    assert not os.path.lexists(btrfs_dir / "clone") and not os.path.lexists(template)


def test_a_snapshot_lets_other_threads_run(
    btrfs_dir: Path, identity_tree: Callable[[Path], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot waits for a btrfs transaction commit, and ``fcntl.ioctl`` keeps
    the GIL through a call whose buffer is over 1 KiB (the snapshot's is 4 KiB): the pool
    thread's snapshots froze the test's thread. The main thread must run *inside* them."""
    template = identity_tree(make_template(btrfs_dir, subvolume=True))
    spans: list[tuple[float, float]] = []
    real = _linux.ioctl_buffer

    def timed(fd: int, request: int, args: bytearray) -> None:
        start = time.perf_counter()
        try:
            real(fd, request, args)
        finally:
            if request == _linux.BTRFS_IOC_SNAP_CREATE_V2:
                spans.append((start, time.perf_counter()))

    monkeypatch.setattr(_linux, "ioctl_buffer", timed)
    done = threading.Event()

    def snapshots() -> None:
        try:
            for i in range(8):
                _platform.BACKEND.clone_dir(str(template), str(btrfs_dir / f"snap-{i}"))
        finally:
            done.set()

    ticks: list[float] = []
    worker = threading.Thread(target=snapshots)
    worker.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
    worker.join()
    assert len(spans) == 8
    # Holding the GIL, an ioctl leaves no tick inside its middle half (but for a rare one
    # that outlasts the switch interval); without it, nearly every one has thousands.
    middles = [(a + (b - a) / 4, b - (b - a) / 4) for a, b in spans]
    ran = [any(lo < tick < hi for tick in ticks) for lo, hi in middles]
    assert sum(ran) >= 4, f"the main thread was stopped during the snapshots: {ran}"
    for i in range(8):
        remove_tree(btrfs_dir / f"snap-{i}")


def make_read_only(root: Path) -> None:
    """Files 0o400, directories 0o500; symlinks untouched (chmod would follow them, and the
    tree has one to /etc/passwd)."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o400)
        os.chmod(dirpath, 0o500)


@pytest.mark.parametrize(
    ("fs_name", "subvolume"),
    [("btrfs", True), ("btrfs", False), ("xfs", False), ("ext4", False), ("tmpfs", False)],
)
def test_remove_tree_removes_every_kind_of_clone(
    request: pytest.FixtureRequest,
    identity_tree: Callable[[Path], Path],
    fs_name: str,
    subvolume: bool,
) -> None:
    where: Path = request.getfixturevalue(f"{fs_name}_dir")
    template = identity_tree(make_template(where, subvolume))
    make_read_only(template)
    clone_quietly(template, where / "clone")
    make_read_only(where / "clone")
    remove_tree(where / "clone")
    assert not os.path.lexists(where / "clone")
    remove_tree(template)
    assert os.listdir(where) == []


NOBODY = 65534


def as_nobody(work: Callable[[], None]) -> None:
    """Run ``work`` in a forked child with the uid/gid of nobody (root bypasses permission
    checks, which would hide read-only directory bugs); fail if it fails."""
    if os.geteuid() != 0:
        work()
        return
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 0
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            work()
        except BaseException as exc:  # everything goes back to the parent
            os.write(write_fd, f"{type(exc).__name__}: {exc}".encode())
            code = 1
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        report = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report


@pytest.mark.parametrize("fs_name", ["btrfs", "xfs", "ext4", "tmpfs"])
def test_read_only_template_clones_and_removes_without_root(
    request: pytest.FixtureRequest, identity_tree: Callable[[Path], Path], fs_name: str
) -> None:
    where: Path = request.getfixturevalue(f"{fs_name}_dir")
    template = identity_tree(make_template(where))
    if os.geteuid() == 0:  # the template and the clone's parent belong to nobody
        for path in [where, *where.rglob("*")]:
            os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
    make_read_only(template)
    before = tree_state(template)
    clone_quietly(template, where / "warm")  # imports and probes happen as root, first
    remove_tree(where / "warm")

    def clone_and_remove() -> None:
        clone_quietly(template, where / "clone")
        assert tree_state(where / "clone") == before
        remove_tree(where / "clone")
        assert not os.path.lexists(where / "clone")

    as_nobody(clone_and_remove)


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("existing", ["directory", "file", "dangling-symlink"])
def test_an_existing_destination_is_refused_and_kept(
    xfs_dir: Path, identity_tree: Callable[[Path], Path], existing: str
) -> None:
    template = identity_tree(make_template(xfs_dir))
    dst = xfs_dir / "dst"
    if existing == "directory":
        dst.mkdir()
        (dst / "keep.txt").write_text("mine")
    elif existing == "file":
        dst.write_text("mine")
    else:
        dst.symlink_to("nowhere")
    with pytest.raises(CloneError, match="already exists") as info:
        clone_tree(template, dst)
    assert info.value.errno == errno.EEXIST
    assert os.path.lexists(dst)
    if existing == "directory":
        assert (dst / "keep.txt").read_text() == "mine"


@pytest.fixture
def fail_after(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """``fail_after(module, name, calls, code, when=...)``: the ``calls``-th matching call of
    ``module.name`` (and every later one) raises ``OSError(code)``."""

    def install(
        module: Any,
        name: str,
        calls: int,
        code: int,
        when: Optional[Callable[..., bool]] = None,
    ) -> None:
        real = getattr(module, name)
        seen = [0]

        def fake(*args: Any, **kwargs: Any) -> Any:
            if when is None or when(*args):
                seen[0] += 1
                if seen[0] >= calls:
                    raise OSError(code, os.strerror(code))
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, fake)

    yield install


def is_ficlone(_fd: int, request: int, *_: Any) -> bool:
    return request == _linux.FICLONE


@pytest.mark.parametrize(
    ("fs_name", "subvolume", "strategy"),
    [
        ("btrfs", True, "snapshot"),
        ("btrfs", False, "clone"),
        ("xfs", False, "clone"),
        ("ext4", False, "copy"),
        ("tmpfs", False, "copy"),
    ],
)
def test_enospc_is_an_error_not_a_fallback_and_leaves_nothing(
    request: pytest.FixtureRequest,
    identity_tree: Callable[[Path], Path],
    fail_after: Callable[..., None],
    fs_name: str,
    subvolume: bool,
    strategy: str,
) -> None:
    where: Path = request.getfixturevalue(f"{fs_name}_dir")
    template = identity_tree(make_template(where, subvolume))
    if strategy == "snapshot":
        fail_after(
            _linux,
            "ioctl_buffer",
            1,
            errno.ENOSPC,
            when=lambda _fd, req, *_: req == _linux.BTRFS_IOC_SNAP_CREATE_V2,
        )
    elif strategy == "clone":
        fail_after(fcntl, "ioctl", 3, errno.ENOSPC, when=is_ficlone)
    else:
        fail_after(os, "sendfile", 3, errno.ENOSPC)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CowEnvWarning)  # no silent fallback to a copy
        with pytest.raises(CloneError) as info:
            clone_tree(template, where / "clone")
    assert "ENOSPC" in str(info.value) and "MiB free" in str(info.value)
    assert fs_name in str(info.value)
    assert not os.path.lexists(where / "clone")


@pytest.mark.parametrize("fs_name", ["btrfs", "xfs"])
def test_a_refusal_midway_restarts_as_a_complete_copy(
    request: pytest.FixtureRequest,
    identity_tree: Callable[[Path], Path],
    fail_after: Callable[..., None],
    fs_name: str,
) -> None:
    """E.g. an overlay that refuses FICLONE with EINVAL: auto copies with one warning, clone
    mode is an error, neither leaves a partial tree."""
    where: Path = request.getfixturevalue(f"{fs_name}_dir")
    template = identity_tree(make_template(where))
    before = tree_state(template)
    fail_after(fcntl, "ioctl", 3, errno.EINVAL, when=is_ficlone)
    with pytest.raises(CloneError, match="EINVAL"):
        clone_tree(template, where / "explicit", "clone")
    assert not os.path.lexists(where / "explicit")
    result, warned = clone_quietly(template, where / "auto")
    assert result.strategy == "copy" and len(warned) == 1 and "EINVAL" in warned[0]
    assert tree_state(where / "auto") == before


def test_remove_tree_of_a_vanished_path_is_success(tmp_path: Path) -> None:
    """The old error handler called itself on a vanished path until RecursionError."""
    remove_tree(tmp_path / "gone")
    remove_tree(tmp_path / "gone" / "deeper", root=tmp_path)


def test_remove_tree_removes_a_link_as_a_link(tmp_path: Path) -> None:
    target = tmp_path / "target"
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "f").write_text("keep")
    os.symlink(target, tmp_path / "link")
    (tmp_path / "tree").mkdir()
    os.symlink(target, tmp_path / "tree" / "inner")
    remove_tree(tmp_path / "link", root=tmp_path)
    remove_tree(tmp_path / "tree", root=tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["target"]
    assert (target / "sub" / "f").read_text() == "keep"


def test_remove_tree_refuses_what_is_outside_its_root(tmp_path: Path) -> None:
    from pytest_cowenv.errors import UnsafeRemovalError

    (tmp_path / "root").mkdir()
    (tmp_path / "elsewhere" / "x").mkdir(parents=True)
    os.symlink(tmp_path / "elsewhere", tmp_path / "root" / "linked")
    with pytest.raises(UnsafeRemovalError, match="not inside"):
        remove_tree(tmp_path / "elsewhere", root=tmp_path / "root")
    with pytest.raises(UnsafeRemovalError, match="not inside"):
        remove_tree(tmp_path / "root" / ".." / "elsewhere", root=tmp_path / "root")
    with pytest.raises(UnsafeRemovalError, match="linked on the way from"):
        remove_tree(tmp_path / "root" / "linked" / "x", root=tmp_path / "root")
    assert (tmp_path / "elsewhere" / "x").is_dir()


def test_remove_tree_pauses_before_each_directory(tmp_path: Path) -> None:
    for name in ("a", "b", "a/c"):
        (tmp_path / "t" / name).mkdir(parents=True)
    calls: list[int] = []
    remove_tree(tmp_path / "t", pause=lambda: calls.append(1))
    assert len(calls) == 4 and not (tmp_path / "t").exists()

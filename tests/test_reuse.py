"""A used clone goes back to the pool only if it provably did not change (``reuse``).

Every proof obligation of ``pytest_cowenv.reuse`` has a test here that fails if its check is
weakened, on each real filesystem (btrfs, XFS, ext4, tmpfs from ``scripts/cowfs.sh``): each
change is made and then *undone* as far as user space can (same bytes, same size, same
mode, same mtime), so that only the ctime tells; a process left holding the clone, or only
knowing its path; a clone handed out in the tick of its newest ctime.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from _helpers import wait_for
from conftest import shared_real_roots
from pytest_cowenv import reuse
from pytest_cowenv._inotify import Watch
from pytest_cowenv._install import IndexOptions
from pytest_cowenv.clone import LinkMode, remove_tree
from pytest_cowenv.env import CowEnv
from pytest_cowenv.pool import Lease
from pytest_cowenv.session import CowEnvSession, Settings
from pytest_cowenv.template import TemplateCache

FILESYSTEMS = ("btrfs", "xfs", "ext4", "tmpfs")
SPEC = "alpha==1.0"
TICK = time.clock_getres(reuse.CLOCK_REALTIME_COARSE)


@pytest.fixture(autouse=True)
def _offline_machine(offline_machine: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_COWENV_POOL", raising=False)
    monkeypatch.delenv("PYTEST_COWENV_REUSE", raising=False)


@pytest.fixture(scope="module")
def roots() -> Iterator[Callable[[str], Path]]:
    """A cache root per real filesystem, shared by this module (one template build each)."""
    yield from shared_real_roots("reuse-")


@pytest.fixture(params=FILESYSTEMS)
def root(request: pytest.FixtureRequest, roots: Callable[[str], Path]) -> Path:
    return roots(request.param)


@pytest.fixture
def make_session(wheelhouse: Path) -> Iterator[Callable[..., CowEnvSession]]:
    made: list[CowEnvSession] = []

    def make(root: Path, reuse: str = "yes") -> CowEnvSession:
        index = IndexOptions(find_links=(str(wheelhouse),), offline=True)
        session = CowEnvSession(Settings(root=str(root), pool=2, index=index, reuse=reuse))
        made.append(session)
        return session

    yield make
    for session in made:
        session.close()


@pytest.fixture
def session(root: Path, make_session: Callable[..., CowEnvSession]) -> CowEnvSession:
    return make_session(root)


def recorded(session: CowEnvSession) -> CowEnv:
    """A clone made ahead (so recorded, on every filesystem) whose newest ctime the coarse
    clock has passed: one that may be reused if nothing changes it."""
    spec = session.spec([SPEC])
    compiled = TemplateCache(session.layout)  # no compiled twin swapped in under the test
    compiled.get(spec)
    compiled.close()
    template = session.cache.get(spec)
    pool = session.pool
    assert pool is not None and pool.reuse
    pool.start(template, LinkMode.AUTO)
    wait_for(lambda: pool.ready(template, LinkMode.AUTO) >= 1)
    time.sleep(2 * TICK)
    env = session.acquire(spec, "first")
    assert lease_of(session, env).record is not None
    return env


PROOFS = ("watch", "walk")


def only(session: CowEnvSession, proof: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Leave step 5 to one proof, the other made blind: "walk" (no watches are set) or
    "watch" (the walk, quick look included, finds nothing whatever changed)."""
    pool = session.pool
    assert pool is not None
    if proof == "walk":
        pool.watch_clones = False
    else:
        monkeypatch.setattr(reuse, "changed", lambda *args, **kwargs: None)


def lease_of(session: CowEnvSession, env: CowEnv) -> Lease:
    return session._leases[env]


def fate(session: CowEnvSession, env: CowEnv) -> str:
    """Release ``env`` and wait for the pool's verdict: "reused" or why it was discarded."""
    pool = session.pool
    assert pool is not None
    lease = lease_of(session, env)
    before = dict(session.stats.discarded)
    session.release(env)
    slot = pool._slots[(lease.template.key, lease.mode)]

    def verdict() -> str:
        if lease in slot.ready:
            return "reused"
        grew = [k for k, v in session.stats.discarded.items() if v > before.get(k, 0)]
        return grew[0] if grew else ""

    return wait_for(verdict, what="the pool's verdict")


@pytest.mark.parametrize("proof", PROOFS)
def test_an_unchanged_clone_serves_the_next_test(
    session: CowEnvSession, proof: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    only(session, proof, monkeypatch)
    env = recorded(session)
    assert (lease_of(session, env).watch is not None) == (proof == "watch")
    root_ino = os.lstat(env.path).st_ino
    # Writable by its owner (whom the root check of the proof asks for, unless root).
    assert os.lstat(env.path).st_mode & 0o200
    # A test that reads: imports, runs the environment's python, lists its files.
    env.run("python", "-c", "import alpha")
    assert sorted(os.listdir(env.site_packages))
    assert fate(session, env) == "reused"
    assert not env.path.parent.exists()  # its folder's name died with its test
    pool = session.pool
    assert pool is not None
    again = session.acquire(env.template.spec, "second")
    # The clone is the same (its root's inode), in a folder named for the new test.
    assert os.lstat(again.path).st_ino == root_ino and again.path.parent.name == "second-2"
    assert session.stats.recycled == 1
    summary = session.stats.summary_lines()
    assert any(line.startswith("clones reused: 1, fresh: ") for line in summary), summary
    session.release(again)


def _write_back(path: Path) -> None:
    """New bytes, then the old ones, and the old mtime: only the ctime can tell."""
    st = path.stat()
    data = path.read_bytes()
    path.write_bytes(b"x" * len(data))
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _truncate_back(path: Path) -> None:
    st = path.stat()
    data = path.read_bytes()
    os.truncate(path, 0)
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _restoring_dir(path: Path) -> contextlib.AbstractContextManager[None]:
    """Around a change to ``path``'s entries: its mtime put back afterwards."""

    @contextlib.contextmanager
    def keep() -> Iterator[None]:
        st = path.stat()
        yield
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))

    return keep()


def _create_delete(path: Path) -> None:
    with _restoring_dir(path.parent):
        (path.parent / "planted").write_text("x")
        (path.parent / "planted").unlink()


def _delete_recreate(path: Path) -> None:
    st = path.stat()
    data = path.read_bytes()
    with _restoring_dir(path.parent):
        path.unlink()
        path.write_bytes(data)
        os.chmod(path, st.st_mode & 0o7777)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _rename_back(path: Path) -> None:
    with _restoring_dir(path.parent):
        os.rename(path, path.with_name("moved"))
        os.rename(path.with_name("moved"), path)


def _chmod_back(path: Path) -> None:
    mode = path.stat().st_mode & 0o7777
    os.chmod(path, 0o600)
    os.chmod(path, mode)


def _chown_same(path: Path) -> None:
    st = path.stat()
    os.chown(path, st.st_uid, st.st_gid)  # allowed to anyone: to the same owner


def _xattr_back(path: Path) -> None:
    os.setxattr(path, "user.cowenv-test", b"1")
    os.removexattr(path, "user.cowenv-test")


def _hardlink_back(path: Path) -> None:
    """A second name for the file (one outside the clone could write it later), then gone.
    Inside the clone: btrfs links no file across subvolumes."""
    with _restoring_dir(path.parent):
        os.link(path, path.with_name("linked"))
        os.unlink(path.with_name("linked"))


def _utime_same(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _chmod_root_back(path: Path) -> None:
    """The clone's root itself (it is never renamed: its ctime is its own)."""
    root = path.parents[4]  # <clone>/lib/pythonX.Y/site-packages/alpha/__init__.py
    mode = root.stat().st_mode & 0o7777
    os.chmod(root, 0o700)
    os.chmod(root, mode)


CHANGES: dict[str, Callable[[Path], None]] = {
    "write": _write_back,
    "truncate": _truncate_back,
    "create": _create_delete,
    "delete": _delete_recreate,
    "rename": _rename_back,
    "chmod": _chmod_back,
    "chown": _chown_same,
    "xattr": _xattr_back,
    "hardlink": _hardlink_back,
    "utime": _utime_same,
    "chmod-root": _chmod_root_back,
}


@pytest.mark.parametrize("proof", PROOFS)
@pytest.mark.parametrize("change", CHANGES)
def test_every_change_sends_the_clone_to_the_trash(
    session: CowEnvSession, change: str, proof: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    only(session, proof, monkeypatch)
    env = recorded(session)
    assert (lease_of(session, env).watch is not None) == (proof == "watch")
    target = env.site_packages / "alpha" / "__init__.py"
    assert target.is_file()
    CHANGES[change](target)
    assert fate(session, env) == "changed"
    # The next test gets another clone, exactly the template.
    session.release(session.acquire(env.template.spec, "next"))
    assert session.stats.recycled == 0


# libc's mmap for a child: Python's own mmap keeps a duplicate descriptor.
MMAP = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
"""
WRITE_MAPPED = (
    MMAP
    + """
fd = os.open(sys.argv[1], os.O_RDWR)
first = os.pread(fd, 1, 0)
at = libc.mmap(None, 1, 3, 1, fd, 0)  # PROT_READ | PROT_WRITE, MAP_SHARED
assert at not in (None, ctypes.c_void_p(-1).value)
os.close(fd)  # the mapping alone is left: its writes queue no event of their own
ctypes.memmove(at, first, 1)  # the same byte, written through the mapping
"""
)


@pytest.mark.parametrize("proof", PROOFS)
def test_a_write_through_a_mapping_sends_it_to_the_trash(
    session: CowEnvSession, proof: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that mapped a file for writing and is gone: the walk sees the file's new
    ctime, the watches the last close of a file opened for writing (its unmapping)."""
    only(session, proof, monkeypatch)
    env = recorded(session)
    target = env.site_packages / "alpha" / "__init__.py"
    st = target.stat()
    subprocess.run([sys.executable, "-c", WRITE_MAPPED, str(target)], check=True)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fate(session, env) == "changed"


@pytest.mark.parametrize("proof", PROOFS)
def test_a_hard_link_from_outside_the_clone_sends_it_to_the_trash(
    session: CowEnvSession, proof: str, monkeypatch: pytest.MonkeyPatch, root: Path
) -> None:
    """A name outside the clone for one of its files: whatever is written through it later
    no watch of the clone's directories hears, only the file's own (which is why files are
    watched). A btrfs snapshot's file cannot have one: btrfs links nothing across
    subvolumes, which is why a snapshot's files need no watches."""
    only(session, proof, monkeypatch)
    env = recorded(session)
    target = env.site_packages / "alpha" / "__init__.py"
    outside = root / f"outside-{os.getpid()}"
    if lease_of(session, env).result.strategy == "snapshot":
        with pytest.raises(OSError) as raised:
            os.link(target, outside)
        assert raised.value.errno == errno.EXDEV
        assert fate(session, env) == "reused"
        return
    os.link(target, outside)
    outside.unlink()
    assert fate(session, env) == "changed"


def test_a_snapshot_a_test_made_read_only_is_not_taken_back(
    make_session: Callable[..., CowEnvSession], roots: Callable[[str], Path]
) -> None:
    """Setting a btrfs subvolume read-only changes no inode (neither proof sees it): the
    clone's root is checked for writing."""
    session = make_session(roots("btrfs"))
    env = recorded(session)
    assert lease_of(session, env).result.strategy == "snapshot"
    subprocess.run(["btrfs", "property", "set", str(env.path), "ro", "true"], check=True)
    assert fate(session, env) == "read-only"
    pool = session.pool
    assert pool is not None
    session.close()
    assert not pool.errors and not session.run_dir.exists()  # the trash deleted it


def test_a_clone_that_cannot_be_watched_is_walked(
    session: CowEnvSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Watches that cannot all be set (ENOSPC: the user's watches used up) leave none, and
    the clone is proven by its walk; a btrfs snapshot only when asked (``reuse yes``)."""
    live = Watch.live

    def refuse(self: Watch, path: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Watch, "add", refuse)
    env = recorded(session)
    assert lease_of(session, env).watch is None and Watch.live == live
    assert fate(session, env) == "reused"


@pytest.mark.parametrize("budget", [(8, 1), (0, 10**9)], ids=["watches", "instances"])
def test_a_process_takes_its_share_of_watches_only(
    root: Path,
    make_session: Callable[..., CowEnvSession],
    monkeypatch: pytest.MonkeyPatch,
    budget: tuple[int, int],
) -> None:
    """Beyond its share of the user's inotify instances or watches (other programs need
    theirs) a clone gets none: with ``reuse auto`` a btrfs snapshot is then made anew for
    each test, as before."""
    monkeypatch.setattr(reuse, "_budget", lambda: budget)
    session = make_session(root, reuse="auto")
    spec = session.spec([SPEC])
    env = session.acquire(spec, "first")
    lease = lease_of(session, env)
    assert lease.watch is None
    assert (lease.record is None) == (lease.result.strategy == "snapshot")
    session.release(env)


def test_every_watch_is_closed_when_the_pool_closes(session: CowEnvSession) -> None:
    live = Watch.live
    env = recorded(session)
    assert Watch.live > live
    assert fate(session, env) == "reused"
    session.close()
    assert Watch.live == live


def test_the_walk_looks_at_every_entry_through_its_own_directory(root: Path) -> None:
    """Step 5 opens each directory once and looks at its entries relative to it: an entry
    deep in the tree is still looked at, and a directory that a link to an identical copy
    replaced is not looked through, even where its parent's own check would pass."""
    base = root / f"walked-{os.getpid()}"
    tree = base / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "deep.py").write_text("x = 1\n")
    (tree / "a" / "top.py").write_text("")
    (tree / "up").symlink_to("a")
    try:
        rec = reuse.record(str(tree))
        assert reuse.changed(str(tree), rec) is None
        _chmod_back(tree / "a" / "b" / "deep.py")
        assert reuse.changed(str(tree), rec) == f"{os.sep}a{os.sep}b{os.sep}deep.py changed"
        rec = reuse.record(str(tree))
        subprocess.run(["cp", "-a", str(tree / "a" / "b"), str(base / "copy")], check=True)
        with _restoring_dir(tree / "a"):
            os.rename(tree / "a" / "b", base / "moved")
            os.symlink(base / "copy", tree / "a" / "b")
        assert reuse.changed(str(tree), rec) == f"{os.sep}a changed"
        # Were the parent's change not seen, the link is not followed either.
        a = os.lstat(tree / "a")
        now = (a.st_ino, a.st_size, a.st_mode, a.st_mtime_ns, a.st_ctime_ns)
        wants = tuple((rel, now if rel == f"{os.sep}a" else want) for rel, want in rec.wants)
        blind = reuse.Record(wants, rec.dirs, rec.dev, rec.newest_ns, rec.granule_ns)
        assert reuse.changed(str(tree), blind) == f"{os.sep}a{os.sep}b: Not a directory"
    finally:
        remove_tree(base)


def test_the_quick_look_refuses_but_never_accepts(root: Path) -> None:
    """Before the look at /proc, a quick look at the directories near the root refuses a
    clone the test plainly changed; a change deeper down passes it and is left to step 5's
    whole walk, which runs after the look at /proc whatever the quick look said."""
    base = root / f"quick-{os.getpid()}"
    deep = base / "lib" / "python3.11" / "site-packages" / "pkg"
    deep.mkdir(parents=True)
    (deep / "mod.py").write_text("x = 1\n")
    try:
        rec = reuse.record(str(base))
        assert [rel for rel, _want in rec.top] == [
            "",
            f"{os.sep}lib",
            f"{os.sep}lib{os.sep}python3.11",
            f"{os.sep}lib{os.sep}python3.11{os.sep}site-packages",
        ]
        time.sleep(2 * TICK)  # past the recorded ctimes' tick
        with _restoring_dir(deep):
            (deep / "new.py").write_text("")
        assert reuse.changed(str(base), rec, quick=True) is None
        assert reuse.changed(str(base), rec) == os.sep.join(
            ("", "lib", "python3.11", "site-packages", "pkg changed")
        )
        rec = reuse.record(str(base))
        time.sleep(2 * TICK)
        with _restoring_dir(deep.parent):
            (deep.parent / "installed.py").write_text("")
        assert reuse.changed(str(base), rec, quick=True) is not None
    finally:
        remove_tree(base)


@pytest.mark.parametrize("proof", PROOFS)
def test_a_change_in_the_tick_of_the_newest_ctime_is_not_trusted(
    session: CowEnvSession, proof: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 2: handed out in the coarse-clock tick of its newest ctime, a clone could be
    changed without a new ctime. Simulated by the hand-out time (the kernel decides the
    rest); nothing else is changed. Watches set before the hand-out need no tick."""
    only(session, proof, monkeypatch)
    env = recorded(session)
    lease = lease_of(session, env)
    assert lease.record is not None
    lease.handed_out_ns = lease.record.newest_ns + lease.record.granule_ns - 1
    assert fate(session, env) == ("reused" if proof == "watch" else "made in its test's tick")


def test_tick_rule_counts_the_filesystems_granularity() -> None:
    whole_seconds = reuse.Record((), 0, 0, 5 * 10**9, reuse._granule([5 * 10**9, 3 * 10**9]))
    assert whole_seconds.granule_ns == 10**9
    assert not reuse.eligible(whole_seconds, 5 * 10**9 + 999_999_999)
    assert reuse.eligible(whole_seconds, 6 * 10**9)
    fine = reuse.Record((), 0, 0, 5 * 10**9 + 7, reuse._granule([5 * 10**9 + 7, 3 * 10**9]))
    assert fine.granule_ns == 1
    assert not reuse.eligible(fine, 5 * 10**9 + 7)
    assert reuse.eligible(fine, 5 * 10**9 + 8)


def test_a_clone_the_test_waited_for_is_reused_too(session: CowEnvSession) -> None:
    """A clone made in the test's thread (the pool had none ready) is recorded before the
    test gets it: a btrfs snapshot by its template's walk, another by a walk of its own and
    a wait for the coarse clock to pass its newest ctime."""
    spec = session.spec([SPEC])
    first = session.acquire(spec, "first")  # the pool starts on the second use: made here
    second = session.acquire(spec, "second")
    assert session.stats.pool_misses == 2
    lease = lease_of(session, first)
    assert lease.record is not None
    assert lease.watch is not None or reuse.eligible(lease.record, lease.handed_out_ns)
    assert fate(session, first) == "reused"
    session.release(second)


def test_a_clone_given_back_before_its_template_is_pooled_serves_the_next_test(
    session: CowEnvSession,
) -> None:
    """A template is pooled from its second use: the first test's clone waits, unproven, for
    that use (and is proven then) instead of being proven for nothing and trashed."""
    spec = session.spec([SPEC])
    session.release(session.acquire(spec, "first"))
    second = session.acquire(spec, "second")
    assert (session.stats.fresh, session.stats.recycled) == (1, 1)
    assert lease_of(session, second).uses == 1
    session.release(second)


def test_only_the_newest_clone_waits_for_its_template_to_be_pooled(
    session: CowEnvSession,
) -> None:
    """Clones of templates used once stay out of the trash one at a time (full copies on
    filesystems without reflinks): a later one sends the waiting one to the trash."""
    spec = session.spec([SPEC])
    pool = session.pool
    assert pool is not None
    session.release(session.acquire(spec, "first", LinkMode.AUTO))
    session.release(session.acquire(spec, "other", LinkMode.COPY))
    assert [u.mode for u in pool._returned] == [LinkMode.COPY]
    session.release(session.acquire(spec, "again", LinkMode.AUTO))
    assert (session.stats.fresh, session.stats.recycled) == (3, 0)


# -- processes the test left behind ---------------------------------------------------------


@contextlib.contextmanager
def _process(argv: list[str], cwd: Path | None = None) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait()


HOLD_FD = "import sys, time; f = open(sys.argv[1]); print('ready', flush=True); time.sleep(60)"
# A mapping with no descriptor left (Python's own mmap keeps a duplicate): only the
# process's maps show it.
HOLD_MAP = (
    MMAP
    + """
import time
fd = os.open(sys.argv[1], os.O_RDONLY)
assert libc.mmap(None, 1, 1, 1, fd, 0) not in (None, ctypes.c_void_p(-1).value)
os.close(fd)
print("ready", flush=True)
time.sleep(60)
"""
)


def test_a_process_in_the_clone_keeps_it_from_the_next_test(session: CowEnvSession) -> None:
    env = recorded(session)
    with _process(["sh", "-c", "echo ready; exec sleep 60"], cwd=env.site_packages):
        assert fate(session, env) == "in use by a process"


def test_a_process_with_a_file_open_keeps_it(session: CowEnvSession) -> None:
    env = recorded(session)
    with _process([sys.executable, "-c", HOLD_FD, str(env.path / "pyvenv.cfg")]):
        assert fate(session, env) == "in use by a process"


def test_a_process_with_a_file_mapped_keeps_it(session: CowEnvSession) -> None:
    env = recorded(session)
    init = env.site_packages / "alpha" / "__init__.py"
    with _process([sys.executable, "-c", HOLD_MAP, str(init)]):
        assert fate(session, env) == "in use by a process"


def test_this_process_holding_a_file_keeps_it(session: CowEnvSession) -> None:
    env = recorded(session)
    with open(env.path / "pyvenv.cfg", "rb"):
        assert fate(session, env) == "in use by a process"


def test_a_process_holding_the_clones_folder_keeps_it(session: CowEnvSession) -> None:
    env = recorded(session)
    with _process(["sh", "-c", "echo ready; exec sleep 60"], cwd=env.path.parent):
        assert fate(session, env) == "in use by a process"


def test_a_process_that_only_knows_the_path_cannot_reach_the_next_test(
    session: CowEnvSession, tmp_path: Path
) -> None:
    """Step 3: the path the test knew is gone once it is released, so a process with no
    handle into the clone writes nothing into the test that gets it next."""
    env = recorded(session)
    cfg = env.path / "pyvenv.cfg"
    before = cfg.read_bytes()
    late = subprocess.Popen(
        ["sh", "-c", f"read go; echo planted >> '{cfg}'"],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert fate(session, env) == "reused"
        again = session.acquire(env.template.spec, "next")
        assert session.stats.recycled == 1
        assert late.stdin is not None
        late.stdin.write(b"go\n")
        late.stdin.close()
        assert late.wait(30) != 0  # no such file any more
        assert (again.path / "pyvenv.cfg").read_bytes() == before
        session.release(again)
    finally:
        late.kill()
        late.wait()


# A process that waits for a path on stdin, then holds that file open.
OPEN_LATER = (
    "import sys, time; f = open(sys.stdin.readline().strip()); print('ready', flush=True); "
    "time.sleep(60)"
)
CLOCK_TICK = 1 / os.sysconf("SC_CLK_TCK")  # what /proc counts process start times in


def test_a_process_an_earlier_user_of_the_clone_started_keeps_it(
    session: CowEnvSession, tmp_path: Path
) -> None:
    """Step 4 looks at the processes started since the clone's *first* hand-out: one that
    its first test left running (holding nothing then, so that clone was reused) and that
    opens it under the name the second test got keeps it from a third test. A scan from
    the current hand-out on would miss it: it started ticks before the second test."""
    env = recorded(session)
    root_ino = os.lstat(env.path).st_ino
    late = subprocess.Popen(
        [sys.executable, "-c", OPEN_LATER],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert fate(session, env) == "reused"
        time.sleep(3 * CLOCK_TICK)  # its start is ticks before the second hand-out
        again = session.acquire(env.template.spec, "second")
        assert os.lstat(again.path).st_ino == root_ino  # the same clone
        assert late.stdin is not None and late.stdout is not None
        late.stdin.write(f"{again.path / 'pyvenv.cfg'}\n")
        late.stdin.flush()
        assert late.stdout.readline().strip() == "ready"
        assert fate(session, again) == "in use by a process"
    finally:
        late.kill()
        late.wait()


def test_the_scan_looks_at_this_process_and_those_started_since(tmp_path: Path) -> None:
    """:func:`reuse.holders` looks into this process whenever it started, and into another
    only if it started since the given time (the clone's first hand-out): an older one that
    holds a file of the clone is out of its reach (see the README)."""
    held = tmp_path / "file"
    held.write_text("")
    st = os.stat(held)
    clones = [(frozenset({(st.st_dev, st.st_ino)}), str(tmp_path / "elsewhere"))]
    before = reuse.boot_ns()
    time.sleep(3 * CLOCK_TICK)
    with _process([sys.executable, "-c", HOLD_FD, str(held)]) as proc:
        time.sleep(3 * CLOCK_TICK)
        after = reuse.boot_ns()
        found = reuse.holders(clones, before)[0]
        # (Not run as root, another user's process started meanwhile may be named first.)
        assert found.startswith(f"pid {proc.pid} (") or "another user's" in found, found
        assert f"pid {proc.pid} " not in str(reuse.holders(clones, after))
    with open(held):
        assert f"pid {os.getpid()} (" in reuse.holders(clones, reuse.boot_ns())[0]


def test_the_count_of_tasks_grows_with_each_thread() -> None:
    """What :class:`reuse.Census` trusts: ``processes`` in ``/proc/stat`` counts a thread this
    process starts (and a census that reads a count standing still never trusts it)."""
    before = reuse._forks()
    thread = threading.Thread(target=int)
    thread.start()
    thread.join()
    after = reuse._forks()
    assert before is not None and after is not None and after > before
    assert reuse.Census().forks() is not None


def test_a_count_that_stands_still_is_never_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reuse, "_forks", lambda: 7)  # a sandbox's constant, say
    census = reuse.Census()
    assert census.forks() is None
    clones = [(frozenset[tuple[int, int]](), str(tmp_path))]
    for _ in range(2):
        reuse.holders(clones, reuse.boot_ns(), census)
    assert census.looks == 2


@pytest.fixture
def held(tmp_path: Path) -> tuple[Path, list[tuple[frozenset[tuple[int, int]], str]]]:
    """A file, and a "clone" that is that file's inode."""
    path = tmp_path / "file"
    path.write_text("")
    st = os.stat(path)
    return path, [(frozenset({(st.st_dev, st.st_ino)}), str(tmp_path / "elsewhere"))]


def test_a_process_started_after_the_census_is_found(
    held: tuple[Path, list[tuple[frozenset[tuple[int, int]], str]]],
) -> None:
    """Starting it moves the count, so the next look is a full one: a census that trusted
    its old list would miss it."""
    path, clones = held
    census = reuse.Census()
    since = reuse.boot_ns()
    assert reuse.holders(clones, since, census) == {}
    with _process([sys.executable, "-c", HOLD_FD, str(path)]) as proc:
        found = reuse.holders(clones, since, census)[0]
        assert found.startswith(f"pid {proc.pid} (") or "another user's" in found, found
    assert census.looks == 2


def test_while_no_task_is_created_the_census_serves_the_look(
    held: tuple[Path, list[tuple[frozenset[tuple[int, int]], str]]],
) -> None:
    """With the count standing still (made so here: the count itself moves with any task on
    the machine), a look skips the listing of /proc and still looks into this process and
    into every process the last full look found started since the hand-out."""
    path, clones = held
    census = reuse.Census()
    since = reuse.boot_ns()
    time.sleep(3 * CLOCK_TICK)
    with _process([sys.executable, "-c", HOLD_FD, str(path)]) as proc:
        census.forks = lambda: 1  # type: ignore[method-assign]
        assert f"pid {proc.pid} (" in reuse.holders(clones, since, census)[0]
        assert census.looks == 1
        assert f"pid {proc.pid} (" in reuse.holders(clones, since, census)[0]
        assert census.looks == 1  # served by the census
        # started before this hand-out: not looked into, as by a full look
        assert reuse.holders(clones, reuse.boot_ns(), census) == {}
    with open(path):
        assert f"pid {os.getpid()} (" in reuse.holders(clones, reuse.boot_ns(), census)[0]
    assert census.looks == 1


def test_a_process_this_user_may_not_inspect_counts_if_it_started_since(
    tmp_path: Path,
) -> None:
    """Another user's process (e.g. one the test started with sudo) cannot be looked into:
    it counts as holding every clone if it started after the clone was handed out. Kernel
    threads (many start and stop all the time) and zombies never count."""
    assert reuse._started_at("/proc/2/") == -1  # kthreadd
    assert reuse._started_at(f"/proc/{os.getpid()}/") > 0
    if os.geteuid() != 0:
        pytest.skip("needs root, to look at root's processes as another user")
    script = (
        "import os, sys; from pytest_cowenv import reuse; os.setuid(65534); "
        "print(reuse.holders([(frozenset(), sys.argv[1])], int(sys.argv[2])))"
    )
    boot = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path), "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "another user's, started since" in boot.stdout, boot.stdout


# -- the switch and the summary, in real runs -------------------------------------------------

SUITE = """
import os
import time

import pytest


@pytest.mark.cowenv("alpha==1.0")
@pytest.mark.parametrize("i", range(int(os.environ.get("TESTS", "8"))))
def test_env(cowenv, i, request):
    marker = cowenv.path / "written-by"
    assert not marker.exists(), marker.read_text()
    cowenv.run("python", "-c", "import alpha")
    if i % 2 and os.environ.get("WRITE_HALF"):
        marker.write_text(request.node.nodeid)
    time.sleep(0.05)
"""


def _run(pytester: pytest.Pytester, root: Path, wheelhouse: Path, *extra: str) -> str:
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        f"--cowenv-dir={root}",
        f"--cowenv-find-links={wheelhouse}",
        "--cowenv-offline",
        "-W",
        "ignore::pytest_cowenv.CowEnvWarning",
        *extra,
    )
    result.assert_outcomes(passed=8)
    return result.stdout.str()


def _reused(out: str) -> int:
    return int(out.split("clones reused: ")[1].split(",")[0])


def test_a_read_only_suite_reuses_its_clones(
    root: Path, pytester: pytest.Pytester, wheelhouse: Path
) -> None:
    out = _run(pytester, root, wheelhouse)
    assert _reused(out) >= 1, out  # btrfs snapshots too: by their watches
    if "(snapshot " in out:  # and by their walk, when asked
        out = _run(pytester, root, wheelhouse, "--cowenv-reuse=yes")
        assert _reused(out) >= 1, out


def test_a_suite_that_writes_never_sees_another_tests_writes(
    root: Path, pytester: pytest.Pytester, wheelhouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WRITE_HALF", "1")
    out = _run(pytester, root, wheelhouse, "--cowenv-reuse=yes")
    assert "changed " in out.split("discarded after use: ")[1], out


@pytest.mark.parametrize("how", ["option", "env", "ini"])
def test_reuse_no_turns_it_off(
    roots: Callable[[str], Path],
    pytester: pytest.Pytester,
    wheelhouse: Path,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    extra: tuple[str, ...] = ()
    if how == "option":
        extra = ("--cowenv-reuse=no",)
    elif how == "env":
        monkeypatch.setenv("PYTEST_COWENV_REUSE", "no")
    else:
        pytester.makeini("[pytest]\ncowenv_reuse = no\n")
    out = _run(pytester, roots("btrfs"), wheelhouse, *extra)
    assert _reused(out) == 0 and "reuse off 8" in out, out


def test_a_bad_reuse_value_stops_the_run(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--cowenv-reuse=maybe")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*--cowenv-reuse: 'maybe' is not one of auto, yes, no*"])


def test_kept_clones_are_not_reused(
    roots: Callable[[str], Path], pytester: pytest.Pytester, wheelhouse: Path
) -> None:
    root = roots("btrfs")
    out = _run(pytester, root, wheelhouse, "--cowenv-keep=all")
    assert _reused(out) == 0, out
    kept = [line.split("kept clone: ")[1] for line in out.splitlines() if "kept clone: " in line]
    assert len(kept) == 8 and all((Path(k) / "pyvenv.cfg").is_file() for k in kept), out
    for path in kept:
        remove_tree(path, root=root)


def test_a_watch_whose_descriptor_a_test_closed_is_never_quiet() -> None:
    """A test that closes descriptors it does not own (``os.closerange``) takes the watch's
    instance: its number may be another file's by the proof, which then hears nothing. The
    watch is then never quiet, and closing it leaves that other file open."""
    watch = Watch()
    assert watch.quiet()
    os.close(watch.fd)
    read, write = os.pipe()  # a blocking pipe, likely under the same number
    try:
        assert not watch.quiet()
        watch.close()
        os.fstat(read)
        os.fstat(write)  # both still open
    finally:
        os.close(read)
        os.close(write)

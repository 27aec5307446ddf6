"""When a used clone may serve another test: the proof that nothing changed it.

A clone goes back to the pool instead of the trash only if all of this holds (the pool and
the session do the steps in this order; each step is needed for the next to mean anything):

1. **It was recorded before any test had it.** :func:`record` takes, for every directory,
   file and symlink of the clone (its root included), the inode, size, mode, mtime and ctime.
   A btrfs snapshot's entries *are* the template's inodes, so its record is the template's
   walk (read when first needed: a template never changes), with the new root's own stat,
   taken at once; any other clone is walked after it was made.
2. **Proven by its walk (step 5), it was handed out at least one timestamp tick after its
   newest ctime.** The kernel
   stamps a change with the coarse clock (``CLOCK_REALTIME_COARSE``; later ctimes are never
   earlier, also with Linux's multigrain timestamps, which only make them finer), truncated
   to the filesystem's granularity. A change in the tick the clone was made in could give a
   file the ctime it already had; one made once that clock has passed the newest recorded
   ctime by a granule cannot (:func:`eligible`).
3. **Its path died with its test.** At release the folder holding it is renamed to a name no
   test is told, so a process that only knows the path (in its argv, its environment, a
   string) reaches nothing there any more. The clone's root is never renamed: its ctime stays
   its own.
4. **No process holds a way back in.** After that rename, :func:`holders` finds every process
   whose cwd, root or open file is one of the clone's inodes (or its folder), or which maps
   a file of it, among this process and those started since the clone's first hand-out
   (the only ones a test may have started, directly or not; see :func:`holders`). Whatever
   it finds sends the clone to the trash. Such a process that this user may not inspect
   (another user's) counts as a holder. While the kernel's count of tasks created stands
   still, the last full look's list of processes serves instead of a new one (:class:`Census`).
5. **Nothing changed**, proven one of two ways:

   - *by its watches* (:func:`watch`, set before its first hand-out, by this process): the
     clone's inotify instance queued no event. Watched are its root, its directories and
     (but for a btrfs snapshot) every file and symlink, each for any write, truncate,
     chmod, chown, xattr change, utime, link count, create, delete, rename, and the last
     close of a file opened for writing (which a write through a shared mapping cannot
     avoid). The kernel queues the event in the call that makes the change, so every change
     made by a process that is gone (step 4) is in the queue when it is read. A directory's
     watch hears of its entries' changes made through it; a file's changes made through
     another name (a hard link from outside the clone) only its own watch hears, which is
     why files are watched too, except in a btrfs snapshot: btrfs links no file across
     subvolumes (``EXDEV``), so every name of a snapshot's file is in one of its
     directories. No tick rule is needed: the watches were there before any test was.
   - *by its walk*, for a clone without watches: :func:`changed` finds every recorded path
     with its recorded inode, size, mode, mtime and ctime. Any write, truncate, chmod,
     chown, xattr change, hard link or utime gives an inode a new ctime (steps 1-2: a
     different one); a create, delete or rename gives its directory one, so unchanged
     directories hold exactly the recorded names.

   Either way, a clone whose root cannot be written (a btrfs snapshot a test set read-only,
   which changes no inode) is not taken back (:func:`writable`).

Only on the filesystems where this was tested (:data:`PROVEN`) and only on Linux (``/proc``).
What the watches do not hear, and the walk would see: a file's inode flags set with an
ioctl (``chattr``: the kernel queues no event for it), and, in a btrfs snapshot, a write
through a descriptor that ``open_by_handle_at`` (a privilege) gave without a name.
The scan of step 4 is not atomic: a process that, while it runs, opens a file relative to a
directory handle and closes that handle between the scan's listing of its descriptors and
its look at them, or that has its own cwd per thread (``unshare(CLONE_FS)``), is not seen;
a process that was given the clone's new name by someone is out of reach of any proof, and
so is one started before the clone's first hand-out that a test gives a path or a descriptor
into it.
"""

from __future__ import annotations

import functools
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Optional

from ._fstype import fs_type
from ._inotify import Watch, user_limit
from .clone import Tree, walk_tree

# Where steps 1-5 were proven by tests on real mounts (tests/test_reuse.py).
PROVEN = frozenset({"btrfs", "xfs", "ext4", "tmpfs"})
SUPPORTED = sys.platform.startswith("linux") and os.path.isdir("/proc/self/fd")
CLOCK_REALTIME_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)  # Linux's number
CLOCK_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", 7)
_SYMLINK_MODE = stat.S_IFLNK | 0o777  # Linux symlinks have no modes of their own
# What the proof opens a directory with: a handle to look through, never a link followed.
_DIR_FLAGS = getattr(os, "O_PATH", 0) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PF_KTHREAD = 0x00200000  # a kernel thread, in the flags of /proc/<pid>/stat
# What one process may take of the user's inotify instances (a clone each) and watches,
# shared with every program the user runs (an editor's file watcher, other pytest workers:
# xdist's eight take half of them at most); beyond it, clones are walked instead.
WATCH_SHARE = 1 / 16
QUICK_DEPTH = 3  # /lib/pythonX.Y/site-packages: where :func:`changed`'s quick look stops
# (inode, size, mode, mtime_ns, ctime_ns): what an entry must still have
Want = tuple[int, int, int, int, int]


def coarse_now() -> int:
    """The clock the kernel stamps changes with, in nanoseconds."""
    return time.clock_gettime_ns(CLOCK_REALTIME_COARSE)


@dataclass(frozen=True)
class Record:
    """What a clone was right after it was made (step 1)."""

    wants: tuple[tuple[str, Want], ...]  # relative path ("" for the root) → its stat
    dirs: int  # the first ``dirs`` wants are the root and the directories
    dev: int  # the clone's st_dev (a btrfs snapshot has its own)
    newest_ns: int  # the newest ctime
    granule_ns: int  # the filesystem's timestamp granularity, as far as the ctimes show

    @cached_property
    def inodes(self) -> frozenset[tuple[int, int]]:
        return frozenset((self.dev, want[0]) for _rel, want in self.wants)

    @cached_property
    def top(self) -> tuple[tuple[str, Want], ...]:
        """The root and the directories down to :data:`QUICK_DEPTH`."""
        dirs = self.wants[: self.dirs]
        return tuple(item for item in dirs if item[0].count(os.sep) <= QUICK_DEPTH)

    @cached_property
    def plan(self) -> tuple[_Dir, ...]:
        """The walk of :func:`changed`, a step per directory (the root first, parents before
        their children): each is opened once relative to its parent, and its other entries
        are looked at by name relative to it."""
        index = {"": 0}
        kids: list[list[tuple[str, Want]]] = [[] for _ in range(self.dirs)]
        for i, (rel, _want) in enumerate(self.wants[1 : self.dirs], 1):
            index[rel] = i
        for rel, want in self.wants[self.dirs :]:
            parent, _, name = rel.rpartition(os.sep)
            kids[index[parent]].append((name, want))
        steps = []
        last_use = list(range(self.dirs))  # the last step that needs a directory's handle
        for i, (rel, want) in enumerate(self.wants[: self.dirs]):
            parent, _, name = rel.rpartition(os.sep)
            up = index[parent] if i else -1
            if i:
                last_use[up] = i
            steps.append((rel, up, name, want, tuple(kids[i])))
        done_after: list[list[int]] = [[] for _ in range(self.dirs)]
        for i, last in enumerate(last_use):
            done_after[last].append(i)
        return tuple(
            _Dir(rel, up, name, want, entries, tuple(done_after[i]))
            for i, (rel, up, name, want, entries) in enumerate(steps)
        )


@dataclass(frozen=True)
class _Dir:
    """One step of :attr:`Record.plan`."""

    rel: str  # "" for the root
    up: int  # the parent's step (-1 for the root)
    name: str
    want: Want
    entries: tuple[tuple[str, Want], ...]  # its files and symlinks, by name
    close: tuple[int, ...]  # the steps whose handles are not needed after this one


def unsupported(path: str | os.PathLike[str]) -> Optional[str]:
    """Why clones at ``path`` are never reused (not Linux, a filesystem the proof was not
    tested on), in a few words; None if they may be."""
    if not SUPPORTED:
        return "no /proc here"
    try:
        fstype = fs_type(path)
    except OSError as exc:
        return f"filesystem unknown ({exc.strerror})"
    return None if fstype in PROVEN else f"not proven on {fstype}"


def record(clone: str) -> Record:
    """Step 1 for a clone made file by file: walk it."""
    tree = walk_tree(clone)
    return _record(_wants(tree), 1 + len(tree.dirs), os.lstat(clone).st_dev)


def template_record(tree: Tree) -> Record:
    """What every snapshot of the template walked as ``tree`` starts as (see
    :func:`snapshot_record`): a btrfs snapshot's entries are the template's inodes."""
    return _record(_wants(tree), 1 + len(tree.dirs), 0)


def snapshot_record(clone: str, template: Callable[[], Record]) -> Record:
    """Step 1 for a btrfs snapshot: its template's record, with its own root (a new
    subvolume, which has an inode of its own) and device. The root is looked at now; the
    template's part (a walk of the template, the first time) is read when first needed: the
    template is read-only, so it is the same then, and a watched snapshot's first test
    need not wait for it."""
    return _SnapshotRecord(os.lstat(clone), template)


class _SnapshotRecord(Record):
    """A :class:`Record` whose fields are filled from the template on first use."""

    _root: os.stat_result
    _template: Callable[[], Record]

    def __init__(self, root: os.stat_result, template: Callable[[], Record]) -> None:
        object.__setattr__(self, "_root", root)
        object.__setattr__(self, "_template", template)

    def __getattr__(self, name: str) -> Any:  # only for what is not filled yet
        if name not in {"wants", "dirs", "dev", "newest_ns", "granule_ns"}:
            raise AttributeError(name)
        template, root = self._template(), self._root
        want = (root.st_ino, root.st_size, root.st_mode, root.st_mtime_ns, root.st_ctime_ns)
        for field, value in (
            ("wants", (("", want), *template.wants[1:])),
            ("dirs", template.dirs),
            ("dev", root.st_dev),
            ("newest_ns", max(template.newest_ns, root.st_ctime_ns)),
            ("granule_ns", min(template.granule_ns, _granule([root.st_ctime_ns]))),
        ):
            object.__setattr__(self, field, value)
        return object.__getattribute__(self, name)


def _record(wants: list[tuple[str, Want]], dirs: int, dev: int) -> Record:
    ctimes = {want[4] for _rel, want in wants}
    return Record(tuple(wants), dirs, dev, max(ctimes), _granule(ctimes))


def _wants(tree: Tree) -> list[tuple[str, Want]]:
    """Every entry of a walk with what it must keep, the root first."""
    stamps = tree.stamps
    wants: list[tuple[str, Want]] = []
    for rel, mode, _at, mtime, size in [tree.root_entry, *tree.dirs, *tree.files]:
        ino, ctime = stamps[rel]
        wants.append((rel, (ino, size, mode, mtime, ctime)))
    for rel, target, _at, mtime in tree.links:
        ino, ctime = stamps[rel]
        wants.append((rel, (ino, len(os.fsencode(target)), _SYMLINK_MODE, mtime, ctime)))
    return wants


def _granule(ctimes: Iterable[int]) -> int:
    """The largest power of ten (at most a second) that divides every ctime: a filesystem
    that keeps seconds only (ext4 with small inodes) shows whole seconds. A finer one is
    taken for coarser by chance only, which costs a reuse, never a wrong one."""
    granule = 1
    values = list(ctimes)
    while granule < 10**9 and all(c % (granule * 10) == 0 for c in values):
        granule *= 10
    return granule


def eligible(rec: Record, handed_out_ns: int) -> bool:
    """Step 2: every change from ``handed_out_ns`` (a :func:`coarse_now` reading taken
    when the test got the clone) on gets a ctime that no recorded entry has."""
    return handed_out_ns >= rec.newest_ns + rec.granule_ns


def wait_past(rec: Record) -> None:
    """Sleep until a clone handed out now would be :func:`eligible` (at most a tick or a
    granule: a clone made just now)."""
    while True:
        short = rec.newest_ns + rec.granule_ns - coarse_now()
        if short <= 0:
            return
        time.sleep(min(short, 10**9) / 1e9)


def changed(clone: str, rec: Record, quick: bool = False) -> Optional[str]:
    """Step 5: the first entry that is not as recorded, said in words; None if none is.
    ``quick``: the root and the directories down to ``QUICK_DEPTH`` (``site-packages``)
    only, where an install or a file the test left shows: a quick look that can refuse a
    clone, never accept one.

    Each directory is opened once, without following a link (``O_PATH``: no read rights
    needed, nothing read), relative to its parent's handle, and looked at through that
    handle; its other entries are looked at by name relative to it, without following
    links. A handle reaches the directory that had the recorded inode when it was opened,
    so a directory moved or replaced since shows as changed: the moved one by its own
    ctime, its parent by its ctime too.
    """
    if quick:  # a few paths: cheaper looked at whole than through handles
        for rel, want in rec.top:
            try:
                st = os.lstat(clone + rel)
            except OSError as exc:
                return f"{rel or '/'}: {exc.strerror}"
            if (st.st_ino, st.st_size, st.st_mode, st.st_mtime_ns, st.st_ctime_ns) != want:
                return f"{rel or '/'} changed"
        return None
    stat = os.stat
    handles: dict[int, int] = {}
    try:
        for i, step in enumerate(rec.plan):
            try:
                if step.up < 0:
                    fd = os.open(clone, _DIR_FLAGS)
                else:
                    fd = os.open(step.name, _DIR_FLAGS, dir_fd=handles[step.up])
            except OSError as exc:
                return f"{step.rel or '/'}: {exc.strerror}"
            handles[i] = fd
            st = stat(fd)
            if (st.st_ino, st.st_size, st.st_mode, st.st_mtime_ns, st.st_ctime_ns) != step.want:
                return f"{step.rel or '/'} changed"
            for name, want in step.entries:
                try:
                    st = stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError as exc:
                    return f"{step.rel}{os.sep}{name}: {exc.strerror}"
                if (st.st_ino, st.st_size, st.st_mode, st.st_mtime_ns, st.st_ctime_ns) != want:
                    return f"{step.rel}{os.sep}{name} changed"
            for done in step.close:
                os.close(handles.pop(done))
        return None
    finally:
        for fd in handles.values():
            os.close(fd)


def watch(clone: str, rec: Optional[Record]) -> Optional[Watch]:
    """Step 5's watches on a clone no test had yet: with its record, every entry of it;
    without (a btrfs snapshot: see the module's docstring), its root and the directories
    found in it now. None if they cannot all be set (the user's instances or watches used
    up), or if they would take this process over its share of the user's instances or
    watches (:data:`WATCH_SHARE`: other programs need theirs)."""
    base = os.fsencode(clone)
    try:
        paths = [base + os.fsencode(rel) for rel, _want in rec.wants] if rec else _dirs(base)
    except OSError:
        return None
    instances, watches = _budget()
    if Watch.live >= instances or Watch.watches + len(paths) > watches:
        return None
    try:
        watcher = Watch()
    except OSError:
        return None
    try:
        for path in paths:
            watcher.add(path)
    except OSError:
        watcher.close()
        return None
    return watcher


def _dirs(root: bytes) -> list[bytes]:
    """``root`` and every directory below it, links not followed."""
    found = [root]
    for top in found:  # grows while it is read: parents before their children
        with os.scandir(top) as entries:
            found.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
    return found


@functools.cache
def _budget() -> tuple[int, int]:
    """This process's share: (instances, watches)."""
    return (
        max(1, int(user_limit("max_user_instances") * WATCH_SHARE)),
        int(user_limit("max_user_watches") * WATCH_SHARE),
    )


def writable(clone: str) -> bool:
    """Whether the clone's root may be written (a read-only btrfs subvolume may not)."""
    return os.access(clone, os.W_OK)


class Census:
    """The processes the last full look at /proc found, with their start times, and the
    kernel's count of tasks ever created (``processes`` in ``/proc/stat``: every fork and
    every thread, never decreasing) read before that look listed them.

    While the count stands still no task was created since, so every process alive now was
    alive then, and its pid is not a new process's: the processes started since a hand-out
    are among those the look found, with the start times it read. :func:`holders` then looks
    into those (and this process) only. The count is used only if it counts a thread this
    process starts (:meth:`forks`): a count that a sandbox keeps still is never trusted.
    """

    def __init__(self) -> None:
        self._live: Optional[bool] = None  # whether the count moves: probed on first use
        # (the count read before the look, pid → start in clock ticks, -1 for none to look at)
        self.seen: Optional[tuple[int, dict[str, int]]] = None
        self.looks = 0  # full looks at /proc (for tests)

    def forks(self) -> Optional[int]:
        """The count now; None where it cannot be read or does not count our own threads."""
        if self._live is None:
            before = _forks()
            thread = threading.Thread(target=int, name="cowenv-census")
            thread.start()
            thread.join()
            after = _forks()
            self._live = before is not None and after is not None and after > before
        return _forks() if self._live else None


def _forks() -> Optional[int]:
    """The ``processes`` line of ``/proc/stat``: tasks created since boot."""
    try:
        data = _read("/proc/stat")
    except OSError:
        return None
    at = data.find(b"\nprocesses ")
    if at < 0:
        return None
    try:
        return int(data[at + 11 : data.index(b"\n", at + 1)])
    except ValueError:
        return None


def holders(
    clones: Sequence[tuple[frozenset[tuple[int, int]], str]],
    since_boot_ns: int,
    census: Optional[Census] = None,
) -> dict[int, str]:
    """Step 4 for several clones at once: ``clones`` are (their inodes as (st_dev, st_ino),
    the path of the folder they are now in), ``since_boot_ns`` the ``CLOCK_BOOTTIME`` of the
    earliest *first* hand-out among them. Returns, by index into ``clones``, who holds each
    held one.

    Only this process and the processes started since ``since_boot_ns`` are looked into.
    A process gets a handle into a clone by inheriting it (then it started after its parent
    had it), by opening one of its paths, or by being sent a descriptor. Before its first
    hand-out a clone's paths were the pool's, known to no test; from it on, whatever a test
    starts starts after it, and so does whatever those processes start, however long the
    clone keeps being reused (hence the first hand-out, not the current one: a process an
    earlier test of the same clone left running may open it under its later names). So an
    older process reaches a clone only if someone hands it a path or a descriptor (a server a
    session fixture started, told a test's path): like a process told the clone's new name,
    that is out of this proof's reach. Process start times count in clock ticks, rounded
    down: a process started in the tick of ``since_boot_ns`` counts as started since.

    With a ``census``, the processes to look into come from its last full look when no task
    was created since (see :class:`Census`), else from a full look, which it keeps.
    """
    found: dict[int, str] = {}
    since_ticks = since_boot_ns * os.sysconf("SC_CLK_TCK") // 10**9
    me = str(os.getpid())
    forks = census.forks() if census is not None else None
    seen = census.seen if census is not None else None
    if forks is not None and seen is not None and seen[0] == forks:
        pids = [pid for pid, start in seen[1].items() if start >= since_ticks and pid != me]
        pids.append(me)
    else:
        try:
            listed = [p for p in os.listdir("/proc") if p.isdigit()]
        except OSError:
            return dict.fromkeys(range(len(clones)), "/proc cannot be read")
        # Kernel threads and zombies have no program (no descriptors, cwd or mappings of a
        # user's files): _started_at says -1 for them, and for a process gone meanwhile.
        starts = {pid: _started_at(f"/proc/{pid}/") for pid in listed}
        if census is not None:
            census.looks += 1
            if forks is not None:
                census.seen = (forks, starts)
        pids = [pid for pid in listed if pid == me or starts[pid] >= since_ticks]
    folders = [b" " + os.fsencode(folder) + b"/" for _inodes, folder in clones]
    for pid in pids:
        base = f"/proc/{pid}/"
        try:
            handles = [base + "cwd", base + "root"]
            handles += [f"{base}fd/{fd}" for fd in os.listdir(base + "fd")]
            maps = _read(base + "maps")
        except FileNotFoundError:
            continue  # gone
        except PermissionError:  # another user's, started since: the test may have started it
            for i in range(len(clones)):
                found.setdefault(i, f"pid {pid} (another user's, started since)")
            continue
        except OSError:
            continue
        for handle in handles:
            try:
                st = os.stat(handle)
            except OSError:
                continue  # closed meanwhile, or not a file (an anonymous inode)
            for i, (inodes, _folder) in enumerate(clones):
                if (st.st_dev, st.st_ino) in inodes:
                    found.setdefault(i, f"pid {pid} ({handle.rpartition('/')[2]})")
        for i, folder in enumerate(folders):
            if folder in maps:
                found.setdefault(i, f"pid {pid} (a mapped file)")
    return found


def _read(path: str) -> bytes:
    """A whole /proc file, in as few reads as it takes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks: list[bytes] = []
        while True:
            chunk = os.read(fd, 1 << 18)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def _started_at(base: str) -> int:
    """A user process's start, in clock ticks since boot; -1 for a kernel thread, a zombie
    or a process gone meanwhile (``stat`` is readable by everyone)."""
    try:
        fd = os.open(base + "stat", os.O_RDONLY)
        try:
            # One read: the fields up to the 22nd fit in far less (a comm is 16 bytes at
            # most, and the fields after it are numbers, no parenthesis among them).
            head = os.read(fd, 1024)
        finally:
            os.close(fd)
        fields = head.rpartition(b")")[2].split()
        state, flags, start = fields[0], int(fields[6]), int(fields[19])  # fields 3, 9, 22
    except (OSError, IndexError, ValueError):
        return -1
    return -1 if state == b"Z" or flags & _PF_KTHREAD else start


def boot_ns() -> int:
    """Now, on the clock process start times count from."""
    return time.clock_gettime_ns(CLOCK_BOOTTIME)

"""Clones made ahead and removed behind, by one background thread per process.

A test then takes a ready clone (one ``rename``) instead of waiting for :func:`clone_tree`,
and gives its clone back with one ``rename`` into the trash, which the same thread empties.
Pytest-free; :class:`~pytest_cowenv.session.CowEnvSession` drives it.

Correctness rules: a ready clone is complete (made under a temporary name, renamed when
done), comes from the template object the caller holds now (a rebuilt template drops its
pool), and leaves the pool exactly once (a deque popped under the lock). A clone that fails
in the background is simply not there: the test clones synchronously and meets the same
error itself.

Each clone lives in a folder of its own (``<folder>/env``): the folder is what is renamed
(into the run folder for a test, back into ``pool/`` after it), so the clone's root keeps
the ctime it was recorded with. A used clone goes back to the pool only by the proof in
:mod:`~pytest_cowenv.reuse` (its steps are named there); anything else goes to the trash.
Used clones are proven in batches (one look at /proc serves a batch: :data:`BATCH`,
:data:`HOLD`); one whose template is not pooled yet waits, unproven, for a test to take it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from . import reuse
from ._inotify import Watch
from .clone import READ_FLAGS, CloneResult, LinkMode, clone_tree, remove_tree

if TYPE_CHECKING:
    from .template import Template

# A background job that may find a template worth pooling (see ClonePool.prime).
Primer = Callable[[], Optional[tuple["Template", LinkMode]]]
ENV = "env"  # the clone's name inside its folder

MIN_FREE = 64 << 20  # bytes a pool never takes from a filesystem, beyond two template copies
# The test's thread counts as busy above half a CPU over the last look (at least MIN_WINDOW
# seconds); the pool thread then sleeps from BACKOFF up to MAX_BACKOFF seconds at a time.
BUSY_SHARE = 0.5
MIN_WINDOW = 0.001  # below BACKOFF: a look after a sleep always counts
BACKOFF = 0.002
MAX_BACKOFF = 0.032
CLOSE_TIMEOUT = 10.0  # seconds `close` waits for the thread; it stops between directories
# Used clones are proven together (one look at /proc serves them all): a lone one waits for
# BATCH - 1 more, for at most HOLD seconds, unless a test needs it first (it proves it then).
BATCH = 2
HOLD = 0.05
# What an import reads: checked-hash pycs make it read the source too (to hash it).
WARM_SUFFIXES = (".pyc", ".py", ".so", ".pth")
WARM = hasattr(os, "posix_fadvise")  # Linux; elsewhere clones are not warmed


class _Stopped(Exception):
    """Raised inside a background clone when the pool closes: abandon it (it is removed)."""


@dataclass(eq=False)
class Lease:
    """One clone in its folder (``folder/env``), and what reusing it takes."""

    folder: Path
    result: CloneResult
    template: Template
    mode: LinkMode
    record: Optional[reuse.Record] = None  # None: it is never reused
    watch: Optional[Watch] = None  # its watches (reuse, step 5); None: proven by its walk
    uses: int = 0  # tests that had it before
    handed_out_ns: int = 0  # reuse.coarse_now() when the current test got it
    first_boot_ns: int = 0  # reuse.boot_ns() when its first test got it (see reuse, step 4)
    returned_at: float = 0.0  # time.monotonic() when its test gave it back

    @property
    def path(self) -> Path:
        return self.folder / ENV

    def hand_out(self) -> None:
        """Note the time: call it after the folder has its test's name, before the test."""
        if not self.first_boot_ns:
            self.first_boot_ns = reuse.boot_ns()
        self.handed_out_ns = reuse.coarse_now()


@dataclass
class _Slot:
    """The ready clones of one template in one link mode."""

    template: Template
    mode: LinkMode
    ready: deque[Lease] = field(default_factory=deque)
    making: bool = False
    failed: bool = False  # the last background clone failed: wait for a test to succeed
    out: int = 0  # recorded clones with tests now: they may come back
    proving: int = 0  # given back, being proven by a test's thread
    behind: int = 0  # given back, being proven by the pool's thread
    # No used clone was discarded since the last one was reused: count those out as ready.
    # True at first: a suite whose tests only read needs no clone made ahead for the one its
    # first test has; the first discarded one turns it off.
    coming_back: bool = True
    # No used clone of this slot was ever discarded: so far every test only read. Then the
    # clone a test has is the next test's, proven in less time than a clone takes, and a
    # clone made ahead beside it would only be made and deleted (see ClonePool.wanted).
    all_back: bool = True

    def supply(self) -> int:
        """Clones a next test may get without a new clone."""
        coming = self.out if self.coming_back else 0
        return len(self.ready) + self.proving + self.behind + coming


class ClonePool:
    """Keeps ``size`` ready clones per started template and empties the trash, in one thread.

    ``run_dir`` is the process's clone folder; the pool uses ``pool/`` and ``trash/`` in it,
    so a crash leaves them where the next run's stale clean-up looks. ``root`` (the cache
    root; default ``run_dir``'s parent) is what its deletions never leave: it is opened as
    given, everything below it without following links (see ``remove_tree``).
    """

    def __init__(
        self,
        run_dir: Path,
        size: int,
        *,
        root: Optional[Path] = None,
        warm: bool = WARM,
        errors: Optional[list[str]] = None,
        reuse_clones: str = "auto",
        discarded: Optional[Counter[str]] = None,
    ) -> None:
        self.size = size
        self.warm = warm
        self.root = root or run_dir.parent
        self.ready_dir = run_dir / "pool"
        self.trash_dir = run_dir / "trash"
        self.ready_dir.mkdir(exist_ok=True)
        self.trash_dir.mkdir(exist_ok=True)
        # Why used clones are never reused here, if they are not: for the summary.
        self.reuse_off = "reuse off" if reuse_clones == "no" else reuse.unsupported(self.ready_dir)
        self.reuse = self.reuse_off is None
        self.reuse_snapshots = reuse_clones == "yes"
        self.watch_clones = self.reuse  # prove by watches where they can be set (step 5)
        # Why used clones went to the trash (for the summary): "reuse off", "changed", ...
        self.discarded: Counter[str] = Counter() if discarded is None else discarded
        # Beyond this many clones awaiting deletion, `discard` deletes in the caller: the
        # thread is falling behind (CPU-bound tests starve it), and copies cost real disk.
        self.trash_limit = 2 * size + 2
        self._slots: dict[tuple[str, LinkMode], _Slot] = {}
        self._trash: deque[Path] = deque()  # folders
        self._returned: deque[Lease] = deque()  # used clones awaiting the proof
        # Recorded clones with tests, of templates not pooled when they were handed out: the
        # slot made later counts them as out (they may come back).
        self._unpooled: list[Lease] = []
        self._hold: Optional[float] = None  # seconds the thread may wait for a batch to fill
        self._snapshot_wants: dict[str, tuple[Template, reuse.Record]] = {}
        self._primers: deque[Primer] = deque()
        self._warm_lists: dict[str, tuple[Template, list[str]]] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._names = itertools.count()
        self._thread: Optional[threading.Thread] = None
        self._watch = _TestWatch()
        self._census = reuse.Census()  # what the last look at /proc found (see reuse, step 4)
        # Watches of clones on their way to the trash, for the thread to close: closing one
        # may wait for the kernel's grace period, never worth a test's time.
        self._unwatched: deque[Watch] = deque()
        # A fallback to copies met by the thread, for the next test that takes a clone to
        # tell (a warning from this thread would name the pool's line, not the test's).
        self._told: list[str] = []
        # What failed in the thread, for the summary: a test meets a failed clone's error
        # again (it clones itself), but a failed deletion would otherwise go unseen.
        self.errors: list[str] = [] if errors is None else errors

    # -- the test's side -----------------------------------------------------------------

    def take(self, template: Template, mode: LinkMode) -> Optional[Lease]:
        """A ready clone of ``template`` (the caller now owns it), or None. With none ready,
        a used one awaiting its proof is proven here, in the caller's thread: cheaper than a
        clone.

        The thread does not refill until :meth:`start`: the caller renames its clone first,
        and on btrfs a rename waits for the transaction commit that a snapshot makes.
        """
        parked: list[Lease] = []
        with self._cond:
            if (template.key, mode) not in self._slots:  # not pooled (yet): see give_back
                parked = [u for u in self._returned if u.template is template and u.mode is mode]
                for used in parked:
                    self._returned.remove(used)
                if not parked:
                    return None
        if parked:
            with self.foreground():
                lease = next((u for u in self._proven(parked) if u is not None), None)
            if lease is not None:
                with self._cond:
                    self._unpooled.append(lease)
            return lease
        with self._cond:
            slot = self._slots.get((template.key, mode))
            if slot is None:
                return None
            if slot.template is not template:  # rebuilt or forgotten: never serve the old one
                self._drop(slot)
                return None
            self._watch.follow(threading.get_ident())
            # The thread is proving clones of this slot: wait for its batch rather than
            # prove others here (one look at /proc serves its whole batch).
            if not slot.ready and slot.behind:
                with self._watch.ours():  # a test waiting: the thread must not stand aside
                    while not slot.ready and slot.behind and not self._stop.is_set():
                        self._cond.wait()
            if self._slots.get((template.key, mode)) is not slot:
                return None
            lease = slot.ready.popleft() if slot.ready else None
            if lease is not None:
                slot.out += lease.record is not None
                return lease
            mine = [u for u in self._returned if u.template is template and u.mode is mode]
            if not mine:
                return None
            for used in mine:
                self._returned.remove(used)
            slot.proving += len(mine)
        # All of them at once: one look at the processes serves the batch.
        proven: list[Lease] = []
        try:
            with self.foreground():
                proven = [u for u in self._proven(mine) if u is not None]
        finally:
            with self._cond:  # no longer proving, and ready or out, in one step
                slot.proving -= len(mine)
                if self._slots.get((template.key, mode)) is slot and not self._stop.is_set():
                    slot.ready.extendleft(reversed(proven[1:]))
                else:
                    self._trash.extend(self._bin(u) for u in proven[1:])
                    self._cond.notify()
                slot.out += bool(proven)
        return proven[0] if proven else None

    def ready(self, template: Template, mode: LinkMode) -> int:
        """How many clones of ``template`` are ready now."""
        with self._cond:
            slot = self._slots.get((template.key, mode))
            return len(slot.ready) if slot is not None and slot.template is template else 0

    def start(self, template: Template, mode: LinkMode) -> None:
        """Keep ``size`` clones of ``template`` ready from now on: start, or refill."""
        with self._cond:
            slot = self._slots.get((template.key, mode))
            if slot is not None and slot.template is template:
                slot.failed = False  # a test just cloned it: worth trying again
            else:
                if slot is not None:
                    self._drop(slot)
                slot = self._slots[(template.key, mode)] = _Slot(template, mode)
                out = [u for u in self._unpooled if u.template is template and u.mode is mode]
                for lease in out:
                    self._unpooled.remove(lease)
                slot.out = len(out)
            self._wake()

    def prime(self, primer: Primer) -> None:
        """Run ``primer`` in the thread; if it returns a template, start its pool."""
        with self._cond:
            self._primers.append(primer)
            self._wake()

    def record(self, lease: Lease) -> None:
        """Record a clone made in the test's thread (``reuse``, step 1): a btrfs snapshot's
        record is its template's walk; another clone is walked (a small part of what making
        it cost). Its watches are set (step 5); one without them waits for the coarse clock
        to pass its newest ctime (step 2), at most a tick, so that it may serve later tests
        too."""
        if not self._records(lease.mode, lease.result.strategy):
            return
        self._step_one(lease)
        if lease.record is None:
            return
        if lease.watch is None:
            reuse.wait_past(lease.record)
        with self._cond:
            slot = self._slot_of(lease)
            if slot is not None:
                slot.out += 1
            else:
                self._unpooled.append(lease)

    def give_back(self, lease: Lease, reusable: bool = True) -> None:
        """A test is done with ``lease`` (its folder where the test had it): back to the pool
        once proven unchanged, else to the trash. ``reusable=False`` (a kept clone, whose
        folder is left): to the trash, not counted as discarded."""
        why = self._refused(lease) if reusable else None
        if why is not None or not reusable:
            with self._cond:
                slot = self._not_out(lease)
                if slot is not None:
                    slot.coming_back = slot.all_back = False
                    self._cond.notify()  # it may need a new clone now
            if why is not None:
                self._count(why)
            self.discard(self._bin(lease))
            return
        target = self.ready_dir / f"{lease.template.key[:12]}-{next(self._names)}"
        try:
            os.rename(lease.folder, target)  # step 3: the path the test knew is gone
        except OSError:
            with self._cond:
                self._not_out(lease)
            self._count("rename failed")
            self.discard(self._bin(lease))
            return
        lease.folder = target
        lease.returned_at = time.monotonic()
        with self._cond:
            # No longer out, and given back, in one step: the thread never sees it in neither.
            self._not_out(lease)
            if self._slots.get((lease.template.key, lease.mode)) is None:
                # Not pooled (yet: a template is pooled from its second use): kept, unproven,
                # for the next test that asks for it; only the newest such clone is kept.
                for old in [u for u in self._returned if self._parked(u)]:
                    self._returned.remove(old)
                    self._trash.append(self._bin(old))
            self._returned.append(lease)
            self._wake()

    def _bin(self, lease: Lease) -> Path:
        """``lease``'s folder, on its way to the trash: its watches are left to the thread to
        close (any thread may call this, with or without the lock)."""
        if lease.watch is not None:
            self._unwatched.append(lease.watch)
            lease.watch = None
        return lease.folder

    def _close_watches(self) -> None:
        while True:
            try:
                watch = self._unwatched.popleft()
            except IndexError:
                return
            watch.close()

    def _not_out(self, lease: Lease) -> Optional[_Slot]:
        """Stop counting ``lease`` as with a test; its slot, if current (lock held)."""
        slot = self._slot_of(lease)
        if lease in self._unpooled:
            self._unpooled.remove(lease)
        elif slot is not None and lease.record is not None:
            slot.out = max(0, slot.out - 1)
        return slot

    def _parked(self, lease: Lease) -> bool:
        """Whether ``lease`` (given back) waits for its template to be pooled (lock held)."""
        return (lease.template.key, lease.mode) not in self._slots

    def _tell(self, message: str) -> None:
        with self._cond:
            self._told.append(message)

    def told(self) -> list[str]:
        """The fallbacks to copies the thread met since the last call (see ``clone_tree``)."""
        with self._cond:
            told, self._told = self._told, []
        return told

    def _slot_of(self, lease: Lease) -> Optional[_Slot]:
        """The slot ``lease`` belongs to, if it is still the current one (lock held)."""
        slot = self._slots.get((lease.template.key, lease.mode))
        return slot if slot is not None and slot.template is lease.template else None

    def _back(self, slot: _Slot) -> int:
        """Used clones of ``slot``'s template and link mode awaiting their proof (lock held)."""
        return sum(1 for u in self._returned if u.template is slot.template and u.mode is slot.mode)

    def wanted(self, slot: _Slot) -> int:
        """How many clones of ``slot`` the pool keeps ready, out or coming back: ``size``; one
        while reuse is on and every used clone of it came back (lock held)."""
        return 1 if self.reuse and slot.all_back else self.size

    def _records(self, mode: LinkMode, strategy: str) -> bool:
        """Whether clones made this way are recorded, to be reused: never hard links (the
        template's own inodes); btrfs snapshots if they can be watched or if asked (a new
        one costs less than the first walk of one)."""
        if not self.reuse or mode is LinkMode.HARDLINK:
            return False
        return strategy != "snapshot" or self.reuse_snapshots or self.watch_clones

    def _step_one(self, lease: Lease) -> None:
        """Record a new clone (``reuse``, step 1) and set its watches (step 5). A btrfs
        snapshot that cannot be watched is recorded only if asked (``reuse yes``)."""
        snapshot = lease.result.strategy == "snapshot"
        if snapshot:
            lease.record = self._snapshot_record(lease)  # the template's part read later
        else:
            lease.record = reuse.record(os.fspath(lease.path))
        if self.watch_clones:
            lease.watch = reuse.watch(os.fspath(lease.path), None if snapshot else lease.record)
        if lease.watch is None and snapshot and not self.reuse_snapshots:
            lease.record = None

    def _count(self, why: str) -> None:
        with self._cond:
            self.discarded[why] += 1

    def _refused(self, lease: Lease) -> Optional[str]:
        """Why ``lease`` cannot go back to the pool, before any proof; None if it may try."""
        if self.reuse_off is not None:
            return self.reuse_off
        if lease.record is None:
            if lease.result.strategy == "snapshot" and not self.reuse_snapshots:
                return "snapshots are made anew (auto)"
            return "not recorded"
        if self._stop.is_set():
            return "closing"
        if lease.watch is not None:
            return None  # watched since before its first test: no tick to wait for
        if not reuse.eligible(lease.record, lease.handed_out_ns):
            return "made in its test's tick"
        if reuse.coarse_now() < lease.handed_out_ns:
            return "the clock went back"
        return None

    def foreground(self) -> contextlib.AbstractContextManager[None]:
        """Around a clone or deletion the test's thread makes itself (the pool was behind):
        the pool thread works on beside it instead of standing aside as for a busy test."""
        return self._watch.ours()

    def discard(self, path: Path) -> None:
        """Hand a used clone's folder over for deletion: a rename now, the deletion later."""
        with self._cond:
            backlog = len(self._trash)
            closed = self._stop.is_set()
        if backlog >= self.trash_limit or closed:
            with self.foreground():
                remove_folder(path, self.root)
            return
        target = self.trash_dir / f"{path.name}.{next(self._names)}"
        try:
            os.rename(path, target)
        except OSError:  # not expected in our own folder, but never worth failing a test
            remove_folder(path, self.root)
            return
        with self._cond:
            self._trash.append(target)
            self._wake()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> bool:
        """Stop the thread (it abandons a clone between directories), then remove the ready
        clones and the trash. False if the thread did not stop in time: then nothing is
        removed under its feet, and the next run's stale clean-up takes what is left."""
        with self._cond:
            self._stop.set()
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                return False
        with self._cond:
            leftovers = [self._bin(lease) for s in self._slots.values() for lease in s.ready]
            leftovers += [self._bin(lease) for lease in self._returned]
            leftovers += self._trash
            self._slots.clear()
            self._trash.clear()
            self._returned.clear()
            self._unpooled.clear()
        self._close_watches()
        for path in leftovers:
            with contextlib.suppress(OSError):
                remove_folder(path, self.root)
        for folder in (self.ready_dir, self.trash_dir):
            for child in _children(folder):  # anything a failed rename left
                with contextlib.suppress(OSError):
                    remove_folder(child, self.root)
            with contextlib.suppress(OSError):
                folder.rmdir()
        return True

    # -- the thread's side ---------------------------------------------------------------

    def _wake(self) -> None:
        """Start the thread on first need, and tell it there is work (lock held)."""
        if self._thread is None and not self._stop.is_set():
            # A daemon thread: Ctrl-C, SIGTERM or a crash never wait for it.
            self._thread = threading.Thread(target=self._run, name="cowenv-pool", daemon=True)
            self._thread.start()
        self._cond.notify()

    def _drop(self, slot: _Slot) -> None:
        """Forget a slot and trash its ready clones (lock held)."""
        if self._slots.get((slot.template.key, slot.mode)) is slot:
            del self._slots[(slot.template.key, slot.mode)]
        while slot.ready:
            self._trash.append(self._bin(slot.ready.popleft()))
        self._cond.notify()

    def _batch(self, now: float) -> tuple[list[Lease], Optional[float]]:
        """The used clones to prove now, and else how long the oldest may still wait for
        others (lock held). Clones of a rebuilt template go to the trash unproven; parked ones
        (see :meth:`give_back`) stay for a test's :meth:`take`."""
        pooled = []
        for lease in list(self._returned):
            slot = self._slots.get((lease.template.key, lease.mode))
            if slot is None:
                continue
            if slot.template is not lease.template:
                self._returned.remove(lease)
                self._trash.append(self._bin(lease))
                continue
            pooled.append(lease)
        if not pooled:
            return [], None
        left = pooled[0].returned_at + HOLD - now
        if len(pooled) < BATCH and left > 0 and not self._stop.is_set():
            return [], left
        return pooled, None

    def _next_job(self) -> Optional[Callable[[], None]]:
        """What to do next, most urgent first (lock held)."""
        batch, self._hold = self._batch(time.monotonic())
        if batch:
            for lease in batch:
                self._returned.remove(lease)
            slots = [self._slot_of(lease) for lease in batch]
            for slot in slots:
                if slot is not None:
                    slot.behind += 1
            return lambda: self._prove(batch, slots)
        if len(self._trash) > self.size:
            return self._delete_one
        if self._primers:
            primer = self._primers.popleft()
            return lambda: self._run_primer(primer)
        for slot in self._slots.values():
            back = self._back(slot)
            if not slot.making and not slot.failed and slot.supply() + back < self.wanted(slot):
                if not self._room_for(slot.template):
                    continue  # a near-full disk: what is left is for the tests' own clones
                slot.making = True
                return lambda: self._make(slot)
        if self._trash:
            return self._delete_one
        return None

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stop.is_set():
                        return
                    job = self._next_job()
                    if job is not None:
                        break
                    self._cond.wait(self._hold)  # a lone used clone waits at most so long
            try:
                self._watch.wait_while_busy(self._stop)
                job()
            except _Stopped:
                return
            except Exception as exc:  # never die, never fail silently
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def _run_primer(self, primer: Primer) -> None:
        found = primer()
        if found is not None:
            self.start(*found)

    def _make(self, slot: _Slot) -> None:
        with self._cond:
            back = self._back(slot)
            # Given back while this waited for the test: proving is cheaper, if it is due, or
            # if that one makes the clone unneeded.
            wanted = self.wanted(slot)
            if back and (self._batch(time.monotonic())[0] or slot.supply() + back >= wanted):
                slot.making = False
                self._cond.notify()
                return
        name = next(self._names)
        lease: Optional[Lease] = None
        making = self.ready_dir / f".making-{name}"
        ready = self.ready_dir / f"{slot.template.key[:12]}-{name}"
        try:
            making.mkdir()
            result = clone_tree(
                slot.template.path,
                making / ENV,
                slot.mode,
                tree=slot.template.tree,
                pause=self._pause,
                warn=self._tell,
            )
            lease = Lease(making, result, slot.template, slot.mode)
            if self._records(slot.mode, result.strategy):
                self._pause()
                self._step_one(lease)
            if self.warm:
                self._warm(making / ENV, slot.template)
            os.rename(making, ready)
            lease.folder = ready
        except Exception as exc:
            if lease is not None:
                self._bin(lease)
            if os.path.lexists(making):  # clone_tree removes its own; a failed warm or rename
                with contextlib.suppress(OSError):
                    remove_folder(making, self.root)
            with self._cond:
                slot.making = False
                if isinstance(exc, _Stopped):
                    raise
                # No retry loop on a persistent failure (ENOSPC...): the next test clones
                # synchronously, meets the same error with the usual message, and only a
                # success there restarts the pool.
                slot.failed = True
                self.errors.append(str(exc))
            return
        with self._cond:
            slot.making = False
            if self._slots.get((slot.template.key, slot.mode)) is slot:
                slot.ready.append(lease)
                return
            self._trash.append(self._bin(lease))  # the template was rebuilt meanwhile

    def _snapshot_record(self, lease: Lease) -> reuse.Record:
        """A btrfs snapshot's record: its own root, its template's walk (kept per template)."""
        template = lease.template

        def walked() -> reuse.Record:
            known = self._snapshot_wants.get(template.key)
            if known is None or known[0] is not template:
                base = reuse.template_record(template.tree)
                known = self._snapshot_wants[template.key] = (template, base)
            return known[1]

        return reuse.snapshot_record(os.fspath(lease.path), walked)

    def _prove(self, batch: list[Lease], slots: list[Optional[_Slot]]) -> None:
        """Steps 4 and 5 for used clones (in the thread): back to their pool, or trash."""
        try:
            self._prove_batch(batch)
        finally:
            with self._cond:
                for slot in slots:
                    if slot is not None:
                        slot.behind -= 1
                self._cond.notify_all()  # a test may wait for them

    def _prove_batch(self, batch: list[Lease]) -> None:
        for lease in self._proven(batch):
            if lease is None:
                continue
            with self._cond:
                slot = self._slots.get((lease.template.key, lease.mode))
                if (
                    slot is not None
                    and slot.template is lease.template
                    and len(slot.ready) < 2 * self.size
                    and not self._stop.is_set()
                ):
                    # Taken first: its files are in the page cache, a new clone's are not.
                    slot.ready.appendleft(lease)
                    continue
                self._trash.append(self._bin(lease))  # rebuilt, forgotten or plenty

    def _proven(self, batch: list[Lease]) -> list[Optional[Lease]]:
        """``batch`` with None for each clone that failed the proof (trashed, reason kept)."""
        out: list[Optional[Lease]] = [None] * len(batch)
        rest = []
        for i, lease in enumerate(batch):
            assert lease.record is not None
            if not self._quiet(lease, quick=True):
                self._refuse(lease, "changed")  # no need to look further
            else:
                rest.append(i)
        held = (
            reuse.holders(
                [(self._inodes(batch[i]), os.fspath(batch[i].folder)) for i in rest],
                min(batch[i].first_boot_ns for i in rest),
                self._census,
            )
            if rest
            else {}
        )
        for n, i in enumerate(rest):
            lease = batch[i]
            assert lease.record is not None
            why = "in use by a process" if n in held else None
            if why is None and _extra(lease.folder):
                why = "its folder holds more"
            if why is None and not self._quiet(lease):
                why = "changed"
            if why is None and not reuse.writable(os.fspath(lease.path)):
                why = "read-only"
            if why is None:
                lease.uses += 1
                out[i] = lease
                with self._cond:
                    slot = self._slot_of(lease)
                    if slot is not None:
                        slot.coming_back = True
            else:
                self._refuse(lease, why)
        return out

    @staticmethod
    def _quiet(lease: Lease, quick: bool = False) -> bool:
        """Step 5: whether nothing changed ``lease``, by its watches, else by its walk
        (``quick``: the walk's quick look, which may refuse, never accept)."""
        if lease.watch is not None:
            return lease.watch.quiet()
        assert lease.record is not None
        return reuse.changed(os.fspath(lease.path), lease.record, quick=quick) is None

    def _refuse(self, lease: Lease, why: str) -> None:
        """A used clone failed the proof: to the trash, and the reason counted."""
        with self._cond:
            slot = self._slot_of(lease)
            if slot is not None:
                slot.coming_back = slot.all_back = False
                self._cond.notify()  # it may need a new clone now
            self.discarded[why] += 1
            self._trash.append(self._bin(lease))
            self._cond.notify()

    def _inodes(self, lease: Lease) -> frozenset[tuple[int, int]]:
        """The clone's inodes and its folder's: a handle on either reaches into it."""
        assert lease.record is not None
        try:
            st = os.lstat(lease.folder)
        except OSError:
            return lease.record.inodes
        return lease.record.inodes | {(st.st_dev, st.st_ino)}

    def _delete_one(self) -> None:
        self._close_watches()
        with self._cond:
            if not self._trash:
                return
            path = self._trash.popleft()
        # Pausing between directories, like a clone made ahead (a btrfs snapshot: one ioctl).
        remove_folder(path, self.root, pause=self._pause)

    def _room_for(self, template: Template) -> bool:
        """Whether a clone made ahead leaves room for a full copy more: it may be one (on
        filesystems without copy-on-write), and a test must never fail for want of the
        space that clones nobody asked for yet are taking."""
        try:
            free = shutil.disk_usage(self.ready_dir).free
        except OSError:
            return False
        return free >= 2 * template.tree.nbytes + MIN_FREE

    def _pause(self) -> None:
        """Called between directories and batches: stop promptly when closing, and stand
        aside while the test's own thread is computing."""
        if self._stop.is_set():
            raise _Stopped
        self._watch.wait_while_busy(self._stop)

    def _warm(self, clone: Path, template: Template) -> None:
        """Ask the kernel to read ahead what an import reads: the page cache is per inode,
        and a clone's inodes are new even where their blocks are shared, so a test's first
        import would otherwise wait for the disk. ``WILLNEED`` reads asynchronously and
        copies nothing into this process: cheaper than reading (benchmarks/pool.py)."""
        known = self._warm_lists.get(template.key)
        if known is None or known[0] is not template:
            rels = [rel for rel, *_ in template.tree.files if rel.endswith(WARM_SUFFIXES)]
            known = self._warm_lists[template.key] = (template, rels)
        root = os.fspath(clone)
        for i, rel in enumerate(known[1]):
            if i % 64 == 0:
                self._pause()
            try:
                fd = os.open(root + rel, READ_FLAGS)
            except OSError:
                continue  # an optimisation only: whatever is wrong is the test's to meet
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)


class _TestWatch:
    """How busy the test's thread is, from its CPU clock: the pool thread stands aside while
    the test computes, so that a CPU-bound test is not slowed down by clones made for later
    tests (the thread would take the GIL at every syscall, and a CPU from a loaded machine).
    While the test waits for a subprocess or for I/O, the pool works at full speed."""

    def __init__(self) -> None:
        self._clock: Optional[int] = None
        self._ident = 0
        self._cpu = 0.0
        self._wall = 0.0
        self._ours = 0  # > 0 while the test's thread clones or deletes for us, or waits
        self._nudge = threading.Event()  # set when that starts: the thread stops waiting
        self._lock = threading.Lock()  # a clone's worker threads all look at once

    def follow(self, ident: int) -> None:
        """Watch thread ``ident`` (the one that takes clones) from now on."""
        with self._lock:
            if ident == self._ident:
                return
            self._ident = ident
            try:
                self._clock = time.pthread_getcpuclockid(ident)
            except (AttributeError, OSError):  # no per-thread CPU clocks here: never wait
                self._clock = None
            self._reset()

    @contextlib.contextmanager
    def ours(self) -> Iterator[None]:
        """The test's thread is cloning or deleting for the pool's sake (the pool fell behind),
        or waits for clones the thread is proving: that is no test computing, and the pool
        must not stand aside for it, or the two work by turns instead of side by side. Its CPU
        time meanwhile is not counted, and a thread standing aside is woken at once."""
        with self._lock:
            self._ours += 1
        self._nudge.set()
        try:
            yield
        finally:
            with self._lock:
                self._ours -= 1
                self._reset()

    def _reset(self) -> None:
        """Start a new window now (lock held)."""
        if self._clock is not None:
            try:
                self._cpu, self._wall = time.clock_gettime(self._clock), time.monotonic()
            except OSError:
                self._clock = None

    def _busy(self) -> bool:
        """Whether the test's thread computed over the last window (and start a new one)."""
        with self._lock:
            if self._clock is None or self._ours:
                return False
            wall = time.monotonic()
            try:
                cpu = time.clock_gettime(self._clock)
            except OSError:  # the thread is gone
                self._clock = None
                return False
            window = wall - self._wall
            if window < MIN_WINDOW:
                return False  # looked a moment ago, and it was not busy then
            share = (cpu - self._cpu) / window
            self._cpu, self._wall = cpu, wall
            return share >= BUSY_SHARE

    def wait_while_busy(self, stop: threading.Event) -> None:
        backoff = BACKOFF
        while self._busy():
            if stop.is_set():
                raise _Stopped
            # Sleeping releases the GIL; longer sleeps while it lasts: each wake-up costs the
            # test a GIL hand-over.
            self._sleep(backoff)
            backoff = min(2 * backoff, MAX_BACKOFF)

    def _sleep(self, seconds: float) -> None:
        """Sleep, unless the test's thread starts working for us meanwhile (:meth:`ours`)."""
        self._nudge.wait(seconds)
        self._nudge.clear()


def remove_folder(folder: Path, root: Path, pause: Optional[Callable[[], None]] = None) -> None:
    """Delete a clone's folder: the clone first, so that a btrfs snapshot is destroyed whole
    (``remove_tree`` empties a subvolume it meets inside a tree), then what else is there."""
    with contextlib.suppress(OSError):  # not a folder (a link in its place): removed next
        remove_tree(folder / ENV, root=root, pause=pause)
    remove_tree(folder, root=root, pause=pause)


def _extra(folder: Path) -> bool:
    """Whether the test left anything in the clone's folder beside the clone."""
    try:
        return os.listdir(folder) != [ENV]
    except OSError:
        return True


def _children(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder)]
    except OSError:
        return []

"""Templates: build each environment spec once, cache it by content, share it safely.

spec → key → (lock) → build in a private temp dir (:mod:`._build`) → rename into place as a
new generation → write the metadata last (:mod:`._atomic`), as the mark of completion.

A published generation never changes and is never removed while a process holds it (see
``store.Layout``): a rebuild makes the next generation, and a process keeps cloning the
generation it started with, or the compiled twin of it.

Compiling behind (a pytest session's way): a new template is published before its modules are
byte-compiled, so that the first test starts at once (its clone compiles what it imports,
like any fresh venv); a background thread then, under the key's lock, clones that generation
into a build folder, compiles the clone and publishes it as the next generation, marked as
compiled from it. The session clones the compiled one from then on. Only a complete
generation is ever cloned: the compiled one is built aside and renamed into place like any
other, and its metadata comes last.

Recording behind the first test (the same sessions): a new generation's builder may clone it
as soon as it is renamed into place (a subvolume is not walked before: its snapshots need no
walk), before it is walked, protected, hashed, synced and its metadata written — those follow
in a background thread. The invariant that makes this
safe: until its metadata exists, a generation is clonable by its builder only, and only while
the builder holds the key's build lock, which that thread lets go of after the metadata is
written (or the generation discarded). No other process can see it as complete, discard it as
dead or supersede it meanwhile; this process's compile behind waits for the recording. If
recording fails, the generation is discarded and later asks for the spec fail with the error;
clones made before stay the tests' own.

A twin pays off only for clones made after it: a template built by this process is compiled
behind once a second clone of it is asked for, or from its first clone when collection said
that several tests will use it (:meth:`TemplateCache.expect_clones`). One that a single test
of the run uses (that test's clone compiles what it imports, as any fresh venv does) is
compiled for the next run only on a core the tests leave idle (``compile_spare``: a serial
run's spare core): in the idle scheduling class, by one process, and stopped, not awaited,
when the tests end (:meth:`TemplateCache.stop_spare`). What it compiled stays in the bytecode
store; the next process that uses the template finds it uncompiled and compiles it behind its
tests, reusing those entries.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Callable, Generic, Optional, TypeVar, Union

from . import __version__
from ._atomic import (
    BuildLock,
    hold_existing,
    hold_in_use,
    open_ours,
    read_json,
    read_note,
    write_atomically,
    write_note,
)
from ._build import build_env, compile_env, timed
from ._content import own_hashes
from ._install import installer_identity
from ._names import BUILD_DIR, LEGACY_BUILD_DIR
from ._owner import lock_dir
from ._venv import installed_distributions, site_packages
from ._wheelcache import WheelCache
from .clone import LinkMode, Tree, clone_tree, protect, remove_tree, strip_write_bits, walk_tree
from .errors import CowEnvError, LockTimeoutError, TemplateBuildError, shown
from .fs import is_subvolume, probe, sync_filesystem
from .spec import FORMAT_VERSION, TemplateSpec, find_interpreter
from .store import Layout

DEFAULT_LOCK_TIMEOUT = float(os.environ.get("PYTEST_COWENV_LOCK_TIMEOUT", "900"))
CLOSE_TIMEOUT = 10.0  # seconds `close` waits, after Ctrl-C, for a killed compile to clean up
_COUNTS = ("reused", "compiled", "failed", "dropped")  # what byte-compiling did, in metadata
_MARK = os.O_WRONLY | os.O_CREAT  # a generation's `.linked` mark: its presence is all it says
# Makes the environment of a new generation in ``env`` (a new path; ``work`` is the build
# folder): returns what byte-compiling reports, adds each phase's seconds to ``phases``.
Maker = Callable[[Path, Path, dict[str, float]], dict[str, Any]]


class _GaveUp(Exception):
    """The cache is closing: a background job stops waiting for the key's lock."""


class Template:
    """A complete template environment on disk.

    This module's classes are plain ones: a dataclass generates its methods with ``exec`` at
    import, and the first test of a new template waits for this module's import."""

    def __init__(
        self,
        key: str,
        path: Path,
        spec: TemplateSpec,
        meta: dict[str, Any],
        walked: Union[Tree, Callable[[], Tree]],
        built_now: bool = False,
        generation: int = 1,
    ) -> None:
        self.key = key
        self.path = path  # the tree of one generation: it stays as it is while this process runs
        self.spec = spec
        self.meta = meta
        self.walked = walked  # its walk, or what makes it (see _publish)
        self.built_now = built_now
        self.generation = generation

    @property
    def tree(self) -> Tree:
        """The walk of :attr:`path` that clones are made from (waits for it if need be)."""
        if not isinstance(self.walked, Tree):
            self.walked = self.walked()
        return self.walked

    @property
    def tree_if_walked(self) -> Optional[Tree]:
        """:attr:`tree` if the walk is done, else None (a snapshot needs none)."""
        return self.walked if isinstance(self.walked, Tree) else None

    @property
    def requirements(self) -> tuple[str, ...]:
        return self.spec.requirements + self.spec.local

    @property
    def resolved(self) -> dict[str, str]:
        """Installed distributions: canonical name → version."""
        return dict(self.meta.get("resolved", {}))

    @property
    def build_seconds(self) -> float:
        return float(self.meta.get("build_seconds", 0.0))

    @property
    def precompiled(self) -> bool:
        """Whether its modules are byte-compiled (else a compiled generation may follow)."""
        return bool(self.meta.get("precompiled", True))

    def __repr__(self) -> str:
        return f"<Template {self.key}.{self.generation} {self.spec.describe()}>"


class TemplateCache:
    """Finds or builds templates under one cache root. Thread-safe; one per process.

    ``compile_behind``: :meth:`get` returns a new template before it is byte-compiled and
    compiles it in a background thread when more clones of it are to come (see the module's
    doc); else :meth:`get` returns compiled templates only. ``installing``: called in the
    building thread as each build's installer starts, to start work that can overlap it
    (it must return at once). ``compile_spare``: a template built for one clone is compiled
    behind too, on a spare core (see the module's doc)."""

    def __init__(
        self,
        layout: Layout,
        rebuild_before: float = 0.0,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        compile_behind: bool = False,
        installing: Optional[Callable[[], None]] = None,
        compile_spare: bool = False,
    ) -> None:
        self.layout = layout
        self.rebuild_before = rebuild_before  # templates created before this time are rebuilt
        self.lock_timeout = lock_timeout
        self.compile_behind = compile_behind
        self.installing = installing
        self.compile_spare = compile_spare
        self._ready: dict[str, Template] = {}
        self._failed: dict[str, TemplateBuildError] = {}
        self._keys: dict[TemplateSpec, str] = {}
        self._local_hashes: dict[str, dict[str, str]] = {}  # key -> the spec's
        self._in_use: dict[tuple[str, int], IO[bytes]] = {}
        self._key_locks: dict[str, threading.Lock] = {}
        self._mutex = threading.Lock()
        self.built: list[Template] = []
        self.reused: list[Template] = []
        self.compiled_behind: list[Template] = []  # what the thread swapped in
        self.behind_errors: list[str] = []  # why a background compile failed
        self._behind: dict[str, threading.Thread] = {}
        self._asked: Counter[str] = Counter()  # key -> `get` calls answered
        self._expected: set[str] = set()  # keys collection expects several clones of
        self._closing = threading.Event()
        self._procs: list[tuple[str, Any]] = []  # (key, compiler) behind
        self._spare: set[str] = set()  # keys compiled on a spare core
        self._stopped: set[str] = set()  # keys whose spare compile was stopped
        self._tests_over = False  # no spare compile starts any more: see stop_spare
        self._describe: dict[str, str] = {}  # key -> spec.describe()
        self._undiscarded: list[tuple[str, int]] = []  # see _discard_generation
        self._recording: dict[str, threading.Thread] = {}  # see _record_behind
        self._unrecorded: dict[str, tuple[_Pending, contextlib.ExitStack]] = {}
        # Wheels of local projects, shared by templates.
        self.wheels = WheelCache(self.layout, self.lock_timeout)

    def key(self, spec: TemplateSpec) -> str:
        with self._mutex:
            key = self._keys.get(spec)
        if key is None:
            hashes = spec.local_hashes()  # kept: the wheels of its projects are keyed by them
            key = spec.key(hashes)
            with self._mutex:
                self._keys[spec] = key
                self._local_hashes[key] = hashes
        return key

    def get(self, spec: TemplateSpec) -> Template:
        """The template for ``spec``, built if needed. A failed build is not retried."""
        return self._get(spec, None)

    @contextlib.contextmanager
    def first_use(self, spec: TemplateSpec) -> Iterator[Template]:
        """:meth:`get`, for a caller about to clone the template in the ``with`` block: a
        template built now is recorded behind (see the module's doc) only once the block
        ends, so that the clone does not wait for the recording's writes."""
        go = threading.Event()
        try:
            yield self._get(spec, go)
        finally:
            go.set()

    def _get(self, spec: TemplateSpec, go: Optional[threading.Event]) -> Template:
        key = self.key(spec)
        with self._mutex:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # threads asking for one key wait for the first, then share its answer
            with self._mutex:
                self._asked[key] += 1
                found = self._ready.get(key)
                if found is None and key in self._failed:
                    raise self._failed[key]
            if found is not None:
                # A second clone: a compile waits for the key's lock, held while recording.
                if self.compile_behind and not found.precompiled and self._twin_wanted(found):
                    self._start_behind(spec, key, found, spare=False)
                return found
            try:
                template = self._get_or_build(spec, key)
                if not template.precompiled and not self.compile_behind:
                    template = self._compile_now(spec, key, template)
            except TemplateBuildError as exc:
                with self._mutex:
                    self._failed[key] = exc
                raise
            with self._mutex:
                self._ready[key] = template
                (self.built if template.built_now else self.reused).append(template)
                unrecorded = self._unrecorded.pop(key, None)
            if unrecorded is not None:  # it starts the compile behind once recorded
                self._record_behind(spec, key, *unrecorded, go=go)
            elif self.compile_behind and not template.precompiled:
                self._start_behind_if_worth(spec, key, template)
            return template

    def expect_clones(self, spec: TemplateSpec, clones: int) -> None:
        """Collection says this run will ask ``clones`` clones of ``spec``: from two on, its
        template, if this process builds it, is compiled behind from its first clone on."""
        if clones >= 2:
            key = self.key(spec)
            with self._mutex:
                self._expected.add(key)

    def _twin_wanted(self, template: Template) -> bool:
        with self._mutex:
            return self._wanted(template)

    def _wanted(self, template: Template) -> bool:
        """Whether the uncompiled ``template`` is worth compiling behind now (mutex held): it
        was found so (made by an earlier run, which will not compile it), or more clones of it
        are to come in this run than the one asked for first."""
        key = template.key
        return not template.built_now or self._asked[key] >= 2 or key in self._expected

    def _start_behind_if_worth(self, spec: TemplateSpec, key: str, template: Template) -> None:
        """Compile the uncompiled ``template`` behind if its twin is wanted, or, if this run
        has a spare core, for the next run on it."""
        if self._twin_wanted(template):
            self._start_behind(spec, key, template, spare=False)
        elif self.compile_spare:
            self._start_behind(spec, key, template, spare=True)

    def left_uncompiled(self) -> list[str]:
        """The templates this process built and left uncompiled (one clone of each was
        asked for; a compile on a spare core stopped or not started): the next process that
        uses one compiles it behind its tests."""
        with self._mutex:
            return [
                t.spec.describe()
                for t in self.built
                if not t.precompiled
                and (t.key not in self._behind or t.key in self._stopped)
                and not self._wanted(t)
            ]

    def stop_spare(self) -> None:
        """The tests are over: stop the compiles running on a spare core for templates no
        other clone of the run asked for (their store entries are the next run's head start),
        and wait for their threads, which remove their build folders. One that finished
        meanwhile is published whole, or not at all. No spare compile starts after this."""
        with self._mutex:
            self._tests_over = True
            keys = {
                t.key
                for t in self.built
                if t.key in self._spare and t.key not in self._stopped and not self._wanted(t)
            }
            self._stopped |= keys
            procs = [proc for key, proc in self._procs if key in keys]
            threads = [thread for key, thread in self._behind.items() if key in keys]
        for proc in procs:
            with contextlib.suppress(OSError):
                proc.kill()
        for thread in threads:
            thread.join(CLOSE_TIMEOUT)

    def forget(self, key: str) -> None:
        """Drop the in-memory template (after a rebuild elsewhere, or in tests)."""
        with self._mutex:
            self._ready.pop(key, None)
            self._failed.pop(key, None)

    def close(self) -> None:
        """Finish a compile running behind (one still waiting for its lock stops), then let go
        of every generation this process holds, and remove those that a rebuild or a compile
        has superseded meanwhile if nobody else holds them (else their last holder does, or
        the next clean-up)."""
        from .generations import collect_generations

        self._finish_recording()
        self.stop_spare()
        self._finish_behind()
        with self._mutex:
            undiscarded, self._undiscarded = self._undiscarded, []
        for key, gen in undiscarded:  # never complete: no metadata, nobody uses them
            with contextlib.suppress(OSError, _GaveUp), self._locked(key, give_up=self._closing):
                self._discard_generation(key, gen)
        with self._mutex:
            held, self._in_use = self._in_use, {}
            self._ready.clear()
        for f in held.values():
            f.close()
        for key in sorted({key for key, _ in held}):
            collect_generations(self.layout, key)

    def newest_meta(self, key: str) -> Optional[dict[str, Any]]:
        """The metadata of ``key``'s newest complete generation, or None."""
        for gen in reversed(self.layout.generations_of(key)):
            if gen == 0:
                break
            try:
                meta = read_json(self.layout.meta(key, gen))
            except (OSError, ValueError):
                continue
            return meta if isinstance(meta, dict) else None
        return None

    # -- finding -------------------------------------------------------------------------

    def _get_or_build(self, spec: TemplateSpec, key: str) -> Template:
        found = self._find(spec, key)
        if found is not None:
            return self._mark_used(found)
        with contextlib.ExitStack() as held:
            held.enter_context(self._locked(key))
            found = self._find(spec, key)  # another process may have built it meanwhile
            if found is None:
                self._discard_dead_builds(key)
                pending = self._build(spec, key)
                if self.compile_behind:  # the lock goes with the recording: see `_get`
                    with self._mutex:
                        self._unrecorded[key] = (pending, held.pop_all())
                    return pending.template
                pending.record()
                found = pending.template
        from .generations import collect_generations

        collect_generations(self.layout, key)  # the ones it supersedes, if nobody holds them
        return self._mark_used(found)

    def _find(self, spec: TemplateSpec, key: str) -> Optional[Template]:
        """The newest complete generation of ``key`` if it is valid, held by this process."""
        complete = [
            gen
            for gen in self.layout.generations_of(key)
            if gen > 0 and self.layout.meta(key, gen).exists()
        ]
        return self._claim(spec, key, complete[-1]) if complete else None

    def _claim(self, spec: TemplateSpec, key: str, gen: int) -> Optional[Template]:
        """Generation ``gen`` of ``key`` if it is valid, held by this process (the caller
        holds the key's thread lock)."""
        # Claim the generation before looking at it: clean-up removes only what nobody
        # holds, so a generation found valid here cannot vanish before it is cloned.
        if (key, gen) not in self._in_use:
            held = hold_existing(self.layout.in_use(key, gen))
            if held is None:
                return None  # removed meanwhile
            self._in_use[(key, gen)] = held
        found = self._load(spec, key, gen)
        if found is None:
            self._in_use.pop((key, gen)).close()  # stale or damaged: let it go
        return found

    def _load(self, spec: TemplateSpec, key: str, gen: int) -> Optional[Template]:
        """A valid template, or None (absent, half-made, damaged, stale or interpreter gone)."""
        meta_path, tree_path = self.layout.meta(key, gen), self.layout.template(key, gen)
        interp = find_interpreter(spec.python)  # SpecError is the user's to read
        try:
            meta = read_json(meta_path)
            if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
                return None
            if meta.get("key") != key or float(meta["created"]) < self.rebuild_before:
                return None
            if meta.get("interpreter") != interp.fingerprint():
                return None
            tree = walk_tree(tree_path)
            if not matches_manifest(tree, meta, linked=self.layout.linked(key, gen).exists()):
                return None
            if meta.get("write_bits"):
                tree = tree.with_write_bits(meta["write_bits"])
        except (OSError, ValueError, TypeError, KeyError):
            return None
        return Template(key, tree_path, spec, meta, tree, generation=gen)

    def will_hardlink(self, template: Template) -> None:
        """Note that ``template`` is about to be hard-linked (which changes its files' ctimes),
        so that later loads check its manifest without ctimes and inodes. Waits until the
        template is recorded: hard links share its inodes, which recording makes read-only."""
        self._recorded(template.key)
        with contextlib.suppress(OSError):  # a link there raises CacheDirError, naming it
            mark = open_ours(self.layout.linked(template.key, template.generation), _MARK)
            os.close(mark)

    def _mark_used(self, template: Template) -> Template:
        """Touch last-used (the in-use lock is already held: see `_find`)."""
        with contextlib.suppress(OSError):  # never the times of what a link there points to
            os.utime(self.layout.meta(template.key, template.generation), follow_symlinks=False)
        return template

    # -- building ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, key: str, give_up: Optional[threading.Event] = None) -> Iterator[None]:
        """Hold the key's build lock; waiting for it, stop with :class:`_GaveUp` once
        ``give_up`` is set."""
        lock_path = self.layout.lock(key)
        owner = lock_path.with_suffix(".owner")
        lock = BuildLock(lock_path)
        if not lock.acquire(self.lock_timeout, give_up):
            if give_up is not None and give_up.is_set():
                raise _GaveUp
            holder = (read_note(owner) or "").strip() or "unknown process"
            # The lock is an flock: it dies with its holder, so the holder is alive and busy.
            raise LockTimeoutError(
                f"template {key}: lock {lock_path} held by {holder} for more than "
                f"{self.lock_timeout:g} s; wait for that build, stop it, or raise "
                "PYTEST_COWENV_LOCK_TIMEOUT"
            )
        try:
            write_note(
                owner,
                f"pid {os.getpid()} on {socket.gethostname()} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')} ({' '.join(sys.argv[:3])})\n",
            )
            yield
        finally:
            with contextlib.suppress(OSError):
                if not os.path.islink(owner):  # a link planted there is not ours to remove
                    owner.unlink()
            lock.release()

    def _discard_dead_builds(self, key: str) -> None:
        """Remove what earlier, failed or killed builds left under ``key`` (lock held)."""
        from .generations import remove_generation

        for gen in self.layout.generations_of(key):
            if gen > 0 and not self.layout.meta(key, gen).exists():
                remove_generation(self.layout, key, gen)  # never completed: not in use
        # Every builder of `key` holds its lock: build dirs of `key` now belong to dead ones.
        for leftover in self.layout.tmp.glob(f"{key}.*"):
            if BUILD_DIR.match(leftover.name) or LEGACY_BUILD_DIR.match(leftover.name):
                _remove_quietly(leftover, self.layout.root)

    def _discard_generation(self, key: str, gen: int) -> None:
        """Remove this process's own unfinished generation ``gen`` (lock held). What cannot
        be removed now (a full btrfs may refuse to destroy a subvolume) is tried again at
        :meth:`close`, when the run's clones have given their space back."""
        held = self._in_use.pop((key, gen), None)
        root, layout = self.layout.root, self.layout
        try:
            for path in (layout.meta, layout.template, layout.linked, layout.in_use):
                remove_tree(path(key, gen), root=root)
        except OSError:
            with self._mutex:
                self._undiscarded.append((key, gen))
        finally:
            if held is not None:
                held.close()

    def _make_build_dir(self, key: str) -> tuple[Path, int]:
        """A new build folder, named and locked by this process (see ``_owner``)."""
        while True:
            work = self.layout.new_build_dir(key)
            work.mkdir(parents=True)
            fd = lock_dir(str(work))
            if fd is not None:  # else a cleaner took it first: another name
                return work, fd

    def _build(self, spec: TemplateSpec, key: str) -> _Pending:
        """A new generation of ``key`` from scratch (lock held), still to be recorded;
        compiled unless ``compile_behind``."""
        bytecode, compile = self.layout.bytecode, not self.compile_behind
        with self._mutex:
            hashes = self._local_hashes.get(key)
        hashes = hashes if hashes is not None else spec.local_hashes()
        interp, used = find_interpreter(spec.python), []

        def wheel_of(project: Path, out: Path, unwanted: threading.Event) -> Path:
            content = hashes[str(project)]
            wheel_key, wheel = self.wheels.wheel(
                project, content, interp, spec.index, out, unwanted
            )
            used.append(wheel_key)
            return wheel

        def make(env: Path, work: Path, phases: dict[str, float]) -> dict[str, Any]:
            made = build_env(
                spec,
                env,
                work,
                bytecode,
                phases,
                compile=compile,
                wheel_of=wheel_of,
                installing=self.installing,
            )
            return {**made, "wheels": used}

        return self._publish(spec, key, make)

    def _record_behind(
        self,
        spec: TemplateSpec,
        key: str,
        pending: _Pending,
        lock: contextlib.ExitStack,
        *,
        go: Optional[threading.Event] = None,
    ) -> None:
        """Record ``pending`` in a background thread, once ``go`` is set, holding the key's
        build lock (``lock``) until its metadata is written (see the module's doc); then
        have it compiled behind."""

        def record() -> None:
            from .generations import collect_generations

            try:
                with lock:
                    if go is not None:
                        go.wait()
                    pending.record()
            except TemplateBuildError as exc:
                with self._mutex:
                    if self._ready.get(key) is pending.template:
                        del self._ready[key]
                    self._failed[key] = exc
                    first = (str(exc).splitlines() or [repr(exc)])[0]
                    self.behind_errors.append(f"{first} (recording behind the first test)")
                return
            collect_generations(self.layout, key)
            if not pending.template.precompiled:
                self._start_behind_if_worth(spec, key, pending.template)

        thread = threading.Thread(target=record, name=f"cowenv-record-{key[:12]}", daemon=True)
        with self._mutex:
            self._recording[key] = thread
            self._describe[key] = spec.describe()
        thread.start()

    def _recorded(self, key: str) -> None:
        """Wait until a recording of ``key`` by this process is done."""
        with self._mutex:
            thread = self._recording.get(key)
        if thread is not None:
            thread.join()

    def _finish_recording(self) -> None:
        with self._mutex:
            threads = list(self._recording.values())
        for thread in threads:
            thread.join()

    # -- compiling ------------------------------------------------------------------------

    def _compile_now(self, spec: TemplateSpec, key: str, source: Template) -> Template:
        """The compiled twin of ``source`` (made now, lock held), or ``source`` itself if a
        newer generation has superseded it meanwhile."""
        with self._locked(key):
            gen = self._twin_of(key, source)
            if gen is None:
                if self._newest_complete(key) != source.generation:
                    return source
                return self._compile(spec, key, source)
        return self._claim(spec, key, gen) or source

    def _start_behind(self, spec: TemplateSpec, key: str, source: Template, *, spare: bool) -> None:
        """Have ``source`` compiled in a background thread, once per key and process
        (``spare``: on a spare core, see the module's doc)."""
        with self._mutex:
            if self._closing.is_set() or key in self._behind:
                return
            if spare and self._tests_over:
                return
            if spare:
                self._spare.add(key)
            thread = threading.Thread(
                target=self._compile_behind,
                args=(spec, key, source),
                name=f"cowenv-compile-{key[:12]}",
                daemon=True,  # `close` waits for it; an abrupt exit leaves a dead build folder
            )
            self._behind[key] = thread
            self._describe[key] = spec.describe()
            thread.start()  # under the mutex: whoever finds it in `_behind` may join it

    def _compile_behind(self, spec: TemplateSpec, key: str, source: Template) -> None:
        """The background thread: wait for the key's lock; take the compiled twin of
        ``source`` that another process made meanwhile, or make it (unless a rebuild has
        superseded ``source``); then let :meth:`get` hand it out instead of ``source``."""
        try:
            made: Optional[Template] = None
            with self._locked(key, give_up=self._closing):
                gen = self._twin_of(key, source)
                if gen is None and self._newest_complete(key) == source.generation:
                    made = self._compile(spec, key, source, behind=True)
            with self._mutex:
                key_lock = self._key_locks[key]
            with key_lock:  # as in `get`: claims of one key are serialised
                newer = made or (self._claim(spec, key, gen) if gen is not None else None)
                with self._mutex:
                    if newer is not None and self._ready.get(key) is source:
                        self._ready[key] = newer
                        self.compiled_behind.append(newer)
        except _GaveUp:
            pass
        except (CowEnvError, OSError) as exc:
            first = (str(exc).splitlines() or [repr(exc)])[0]
            with self._mutex:
                if key not in self._stopped:  # a stopped compile is no error
                    self.behind_errors.append(
                        f"{spec.describe()}: compiling behind the tests: {first}"
                    )

    def behind_report(self) -> tuple[dict[str, float], list[str], list[str]]:
        """What compiling behind the tests did so far: the twins swapped in (description →
        seconds of their compile), the descriptions still compiling, and the errors."""
        with self._mutex:
            done = {
                t.spec.describe(): sum(t.meta.get("phases_behind", {}).values())
                for t in self.compiled_behind
            }
            # A template still being recorded is compiled once it is, if wanted: running.
            recording = [
                (key, thread)
                for key, thread in self._recording.items()
                if any(t.key == key and self._wanted(t) for t in self.built)
            ]
            threads = [*recording, *self._behind.items()]
            running = list(
                dict.fromkeys(
                    key for key, thread in threads if thread.is_alive() and key not in self._stopped
                )
            )
            running = [self._describe.get(key, key) for key in running]
            return done, running, list(self.behind_errors)

    def _finish_behind(self) -> None:
        """Let a compile running behind finish (the first test already ran on the uncompiled
        generation; the next run wants the compiled one); on Ctrl-C, stop it."""
        self._closing.set()
        with self._mutex:
            threads = list(self._behind.values())
        try:
            for thread in threads:
                thread.join()
        except KeyboardInterrupt:
            with self._mutex:
                procs = [proc for _, proc in self._procs]
            for proc in procs:
                with contextlib.suppress(OSError):
                    proc.kill()
            for thread in threads:
                thread.join(CLOSE_TIMEOUT)  # it removes its build folder
            raise

    def _twin_of(self, key: str, source: Template) -> Optional[int]:
        """The newest complete generation of ``key`` compiled from ``source``, if any."""
        for gen in reversed(self.layout.generations_of(key)):
            if gen <= source.generation:
                break
            with contextlib.suppress(OSError, ValueError):
                meta = read_json(self.layout.meta(key, gen))
                if isinstance(meta, dict) and meta.get("compiled_from") == source.generation:
                    return gen
        return None

    def _newest_complete(self, key: str) -> int:
        complete = [g for g in self.layout.generations_of(key) if self.layout.meta(key, g).exists()]
        return max(complete, default=0)

    def _compile(
        self, spec: TemplateSpec, key: str, source: Template, *, behind: bool = False
    ) -> Template:
        """Publish ``source`` byte-compiled as the next generation of ``key`` (lock held):
        a clone of it, compiled in the build folder."""
        root, procs = self.layout.root, []
        with self._mutex:
            idle = behind and key in self._spare

        def track(proc: Any) -> None:
            procs.append(proc)
            with self._mutex:
                self._procs.append((key, proc))
                if key in self._stopped:  # stopped before it started
                    proc.kill()

        def unchanged() -> None:
            """A template that hardlink clones share can be written through them: never
            make a fresh-looking twin of a changed one (checked before and after cloning)."""
            linked = self.layout.linked(key, source.generation).exists()
            if not matches_manifest(walk_tree(source.path), source.meta, linked=linked):
                raise TemplateBuildError(
                    f"{spec.describe()}: not compiled: generation {source.generation} changed "
                    "since its build (written through a hardlink clone?); the next run rebuilds it"
                )

        def make(env: Path, work: Path, phases: dict[str, float]) -> dict[str, Any]:
            with timed(phases, "clone"):
                unchanged()
                # Never a copy fallback's warning: that one is the tests' to see.
                mode = LinkMode.AUTO if probe(root).can_reflink else LinkMode.COPY
                clone_tree(source.path, env, mode, tree=source.tree)
                unchanged()
            with timed(phases, "compile"):
                try:
                    return compile_env(
                        env, spec, self.layout.bytecode, behind=behind, idle=idle, started=track
                    )
                finally:
                    with self._mutex:
                        self._procs[:] = [kp for kp in self._procs if kp[1] not in procs]

        return self._make_generation(spec, key, make, source=source)

    # -- publishing -----------------------------------------------------------------------

    def _make_generation(
        self, spec: TemplateSpec, key: str, make: Maker, source: Optional[Template] = None
    ) -> Template:
        """Have ``make`` fill a new build folder's ``env``, then publish it as the next
        generation of ``key`` and record it (lock held). ``source``: the generation it is the
        compiled twin of."""
        pending = self._publish(spec, key, make, source)
        pending.record()
        return pending.template

    def _publish(
        self, spec: TemplateSpec, key: str, make: Maker, source: Optional[Template] = None
    ) -> _Pending:
        """Have ``make`` fill a new build folder's ``env``, rename it into place as the next
        generation of ``key`` and walk it unless a snapshot can clone it (lock held): what a
        clone needs. The rest is the returned record's (see :meth:`_record`), which must run
        before the lock is let go."""
        start = time.perf_counter()
        phases: dict[str, float] = {}
        gen = max(self.layout.generations_of(key), default=0) + 1
        self._in_use[(key, gen)] = hold_in_use(self.layout.in_use(key, gen))
        work, work_lock = self._make_build_dir(key)
        env, final = work / "env", self.layout.template(key, gen)
        published = False
        try:
            compiled = make(env, work, phases)
            with timed(phases, "publish"):
                os.rename(env, final)
            walked: Union[Tree, Callable[[], Tree]]
            if is_subvolume(final):
                # Its snapshots need no walk: the first thread that needs it walks it (the
                # recording, behind the first test), not a thread beside the first clone,
                # which would hold the GIL that the test's thread needs until the test starts.
                walked = _Once(_timed_walk, final, phases)
            else:  # a clone file by file needs the walk first
                walked = _timed_walk(final, phases)
            meta = {
                "format": FORMAT_VERSION,
                "key": key,
                "spec": spec.as_dict(),
                "describe": spec.describe(),
                "interpreter": find_interpreter(spec.python).fingerprint(),
                "installer": installer_identity(),
                "resolved": installed_distributions(final),
                # Until the generation can be cloned; recording it follows (see the module's doc).
                "build_seconds": round(
                    time.perf_counter() - start + (source.build_seconds if source else 0.0), 3
                ),
                # The twin's own (clone, compile, ...) are its `phases_behind`.
                "phases": source.meta.get("phases", {}) if source else _rounded(phases),
                # False: published before byte-compiling; its compiled twin comes next.
                "precompiled": compiled["store"] is not None,
                "bytecode": {k: compiled[k] for k in _COUNTS},
                # pytest's assertion-rewritten plugin modules it holds (_bytecode.rewrites)
                "rewritten": compiled.get("rewritten", 0),
                # The shared store's entries this template uses: `prune` keeps these.
                "bytecode_store": {"dir": compiled["store"], "entries": compiled["entries"]},
                # The cached wheels (_wheelcache) it installed: `prune` keeps these.
                "wheels": source.meta.get("wheels", []) if source else compiled["wheels"],
                # A twin is the same build: `rebuild_before` judges both alike.
                "created": source.meta["created"] if source else time.time(),
                "plugin_version": __version__,
            }
            if source is not None:
                meta["compiled_from"] = source.generation
            published = True
        except OSError as exc:
            raise self._build_failed(spec, exc) from None
        except TemplateBuildError as exc:
            raise _with_space_hint(exc, self.layout.root) from None
        finally:
            if not published:
                self._let_go(key, gen, work, work_lock, failed=True)
        built_now = source.built_now if source else True
        template = Template(key, final, spec, meta, walked, built_now=built_now, generation=gen)

        def record() -> None:
            try:
                self._record(spec, template, phases, behind=source is not None)
            except OSError as exc:
                self._let_go(key, gen, work, work_lock, failed=True)
                raise self._build_failed(spec, exc) from None
            except BaseException:
                self._let_go(key, gen, work, work_lock, failed=True)
                raise
            self._let_go(key, gen, work, work_lock, failed=False)

        return _Pending(template, record)

    def _record(
        self, spec: TemplateSpec, template: Template, phases: dict[str, float], *, behind: bool
    ) -> None:
        """Protect a published generation, then write its metadata: manifest, hashes, and
        last (after a sync), the file that says it is complete. ``template.meta`` is
        completed in place; ``template.tree`` stays the walk that clones are made from."""
        final, meta = template.path, template.meta
        syncing: Optional[_Background[None]] = None
        try:
            # Protecting first: the kernel's part, during which the first test's thread, which
            # has just cloned the generation, holds the GIL unhindered until its test starts.
            with timed(phases, "publish"):
                protected = protect(final)
            tree = template.tree  # a subvolume is walked now (its own phase, "walk")
            with timed(phases, "walk"):
                write_bits = None
                if not protected:  # not a read-only subvolume: protect it by its modes
                    write_bits = strip_write_bits(tree)
                # The metadata says "complete": the tree it describes must be on disk first,
                # or a crash could leave complete-looking metadata over lost file data. The
                # tree is final from here on (what follows only reads it): sync it while the
                # manifest and hashes are made, and write the metadata once that is done.
                syncing = _Background(sync_filesystem, str(final))
                if write_bits:
                    tree = walk_tree(final)  # the manifest is of the tree as it stays
            with timed(phases, "hash"):
                hashes = own_hashes(tree, site_packages(final))
            with timed(phases, "sync"):
                syncing.result()
        finally:
            if syncing is not None:
                syncing.join()  # its directory may be about to go
        meta.update(
            files=tree.nfiles,
            bytes=tree.nbytes,
            manifest=tree.listing(),
            # Removed from every file and directory, given back in every clone.
            write_bits=write_bits,
            # Files no RECORD vouches for (see verify.py), by content.
            hashes=hashes,
        )
        meta["phases_behind" if behind else "phases"] = _rounded(phases)
        # Compact: the manifest is long, and the C encoder only writes without indent.
        write_atomically(
            self.layout.meta(template.key, template.generation),
            json.dumps(meta, separators=(",", ":")),
        )

    def _let_go(self, key: str, gen: int, work: Path, work_lock: int, *, failed: bool) -> None:
        """Remove the build folder of generation ``gen``, and if it ``failed``, the
        generation itself (lock held)."""
        _remove_quietly(work, self.layout.root)
        os.close(work_lock)
        if failed:
            self._discard_generation(key, gen)

    def _build_failed(self, spec: TemplateSpec, exc: OSError) -> TemplateBuildError:
        return TemplateBuildError(
            f"{spec.describe()}: building the template failed: {exc}"
            + _space_hint(self.layout.root, exc.errno)
        )


class _Pending:
    """A generation renamed into place (and walked, unless a subvolume), not yet recorded: its
    builder may clone it, and must call ``record`` (which raises :class:`TemplateBuildError`
    after discarding the generation) before it lets go of the key's build lock."""

    def __init__(self, template: Template, record: Callable[[], None]) -> None:
        self.template = template
        self.record = record


_T = TypeVar("_T")


class _Background(Generic[_T]):
    """``func(*args)`` in a thread of its own; :meth:`result` waits for it, and returns what
    it returned or raises what it raised."""

    def __init__(self, func: Callable[..., _T], *args: Any, name: str = "cowenv-sync") -> None:
        self._error: Optional[BaseException] = None
        self._value: Optional[_T] = None

        def run() -> None:
            try:
                self._value = func(*args)
            except BaseException as exc:  # handed to the caller of result()
                self._error = exc

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def result(self) -> _T:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set, as func returned


class _Once(Generic[_T]):
    """``func(*args)``, run by the first thread that calls this, which the others wait for;
    every call returns what it returned, or raises what it raised."""

    def __init__(self, func: Callable[..., _T], *args: Any) -> None:
        self._func: Optional[Callable[[], _T]] = lambda: func(*args)
        self._lock = threading.Lock()
        self._error: Optional[BaseException] = None
        self._value: Optional[_T] = None

    def __call__(self) -> _T:
        with self._lock:
            if self._func is not None:
                func, self._func = self._func, None
                try:
                    self._value = func()
                except BaseException as exc:  # handed to every caller
                    self._error = exc
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set, as func returned


def _timed_walk(path: Path, phases: dict[str, float]) -> Tree:
    with timed(phases, "walk"):
        return walk_tree(path)


def _rounded(phases: dict[str, float]) -> dict[str, float]:
    return {name: round(secs, 3) for name, secs in phases.items()}


def matches_manifest(tree: Tree, meta: dict[str, Any], *, linked: bool = False) -> bool:
    """Whether the walk ``tree`` is the tree ``meta`` describes: names, kinds, modes, sizes,
    mtimes, inodes and ctimes. A template that was hard-linked (``linked``) has new ctimes
    from that alone: its inodes and ctimes are not compared."""
    manifest = meta.get("manifest")
    if not linked:
        return bool(tree.listing() == manifest)
    if not isinstance(manifest, dict):
        return False
    drop = {"root": 1, "dirs": 2, "files": 4, "links": 2}  # fields before the stamps
    unstamped = {
        k: [e[: drop[k]] for e in v] if k != "root" else v[:1]
        for k, v in manifest.items()
        if k in drop
    }
    return bool(tree.listing(stamps=False) == unstamped)


def _with_space_hint(exc: TemplateBuildError, root: Path) -> TemplateBuildError:
    """An installer that ran out of space says so in its own words: add where and how much."""
    text = str(exc)
    if not any(sign in text for sign in ("No space left", "os error 28", "Errno 28", "ENOSPC")):
        return exc
    first, _, rest = text.partition("\n")
    return TemplateBuildError(first + _space_hint(root, errno.ENOSPC) + "\n" + rest)


def _space_hint(root: Path, code: Optional[int]) -> str:
    if code != errno.ENOSPC:
        return ""
    from .fs import fs_type

    free = shutil.disk_usage(root).free / 2**20
    return (
        f" (no space left: {fs_type(root)} at {shown(root)} has {free:.1f} MiB free;"
        " free space or choose another cache directory)"
    )


def _remove_quietly(path: Path, root: Path) -> None:
    with contextlib.suppress(OSError):
        remove_tree(path, root=root)

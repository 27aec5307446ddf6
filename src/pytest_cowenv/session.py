"""One process's use of pytest-cowenv: settings, the template cache, clones, statistics.

Pytest-free: the plugin drives it, and so can any other harness.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import threading
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from ._defaults import DEFAULT_POOL
from ._install import IndexOptions
from ._owner import lock_dir
from .clone import LinkMode, Warn, clone_tree
from .errors import CacheDirError, CowEnvError, CowEnvWarning, shown
from .spec import TemplateSpec
from .store import Layout, check_kept, prepare_root
from .template import Template, TemplateCache

if TYPE_CHECKING:
    from ._coverage import CloneCoverage
    from .env import CowEnv
    from .pool import ClonePool, Lease


class Settings:
    """Everything the command line, environment and ini decided (markers may override).
    Read-only by convention.

    This module's classes are not dataclasses, which generate their methods with ``exec`` at
    import: the first test of a new template waits for this module's import."""

    def __init__(
        self,
        root: Optional[str] = None,
        link_mode: LinkMode = LinkMode.AUTO,
        keep: str = "none",
        rebuild_before: float = 0.0,
        index: Optional[IndexOptions] = None,
        pip: bool = False,
        requirements: tuple[str, ...] = (),
        pool: int = DEFAULT_POOL,
        constraints: tuple[str, ...] = (),
        reuse: str = "auto",
        serial: bool = False,
    ) -> None:
        self.root = root
        self.link_mode = link_mode
        self.keep = keep
        self.rebuild_before = rebuild_before
        self.index = IndexOptions() if index is None else index
        self.pip = pip
        self.requirements = requirements
        self.pool = pool
        self.constraints = constraints  # constraints files applied to every template build
        # Give provably unchanged clones to later tests (needs the pool): "auto" all but
        # btrfs snapshots (making one costs less than the proof), "yes" all, "no" none.
        self.reuse = reuse
        # This process runs the session's tests one at a time (no xdist workers): a test
        # leaves the other cores idle, and a template one test uses is compiled for the next
        # run there.
        self.serial = serial


class Stats:
    """What this process did; merged across xdist workers for the summary."""

    def __init__(self) -> None:
        self.clones = 0
        self.clone_ms: list[float] = []
        self.remove_ms: list[float] = []
        self.strategies: Counter[str] = Counter()
        self.shared_bytes = 0  # logical bytes of clones that share the template's blocks
        self.copied_bytes = 0  # bytes actually copied (copy strategy)
        self.built: dict[str, float] = {}  # description -> seconds
        self.reused: list[str] = []
        self.kept: list[str] = []
        self.pool_hits = 0  # clones taken ready from the pool
        self.pool_misses = 0  # clones made while the test waited, with the pool on
        self.wait_ms: list[float] = []  # what each acquire waited for its clone
        self.pool_errors: list[str] = []  # what failed in the pool thread
        self.coverage_clones = 0  # clones whose processes were measured
        self.coverage_files = 0  # their coverage data files, combined into the run's
        self.coverage_notes: list[str] = []  # what was not measured, and why
        self.fresh = 0  # clones handed to a test for the first time
        self.recycled = 0  # clones handed to a test after another test had them
        self.discarded: Counter[str] = Counter()  # used clones trashed, by why
        # Compiling behind the tests (see template.py): description -> seconds, and still running.
        self.compiled_behind: dict[str, float] = {}
        self.compiling_behind: list[str] = []
        self.behind_errors: list[str] = []
        self.uncompiled: list[str] = []  # built, one clone: not compiled

    # Lists that name a spec or a note at most once, however many workers name it.
    _ONCE = frozenset({"reused", "coverage_notes", "compiling_behind", "uncompiled"})

    def as_dict(self) -> dict[str, Any]:
        """Every field as plain data (an xdist worker sends it to the controller)."""
        return {
            name: dict(value) if isinstance(value, Counter) else value
            for name, value in vars(self).items()
        }

    def merge(self, other: dict[str, Any]) -> None:
        """Add another process's :meth:`as_dict`, each field by its kind: numbers summed,
        counters added, dicts updated, lists extended (those in ``_ONCE`` without repeats)."""
        for name, value in list(vars(self).items()):
            theirs = other.get(name)
            if theirs is None:
                continue
            if isinstance(value, dict):  # Counter.update adds, dict.update replaces
                value.update(theirs)
            elif isinstance(value, list):
                value += [x for x in theirs if x not in value] if name in self._ONCE else theirs
            else:
                setattr(self, name, value + theirs)

    def summary_lines(self) -> list[str]:
        lines = []
        if self.built:
            built = ", ".join(f"{d} ({s:.1f} s)" for d, s in self.built.items())
            lines.append(f"templates built: {len(self.built)}: {built}")
        reused = [r for r in self.reused if r not in self.built]
        if reused:
            lines.append(f"templates reused: {len(reused)}: {', '.join(reused)}")
        if self.compiled_behind:
            done = ", ".join(f"{d} ({s:.1f} s)" for d, s in self.compiled_behind.items())
            lines.append(f"templates compiled behind the tests: {done}")
        running = [d for d in self.compiling_behind if d not in self.compiled_behind]
        if running:
            lines.append(
                f"templates compiling behind the tests: {', '.join(running)} "
                "(pytest waits for it before it exits; the next run clones it compiled)"
            )
        lines += [f"not compiled: {e}" for e in self.behind_errors]
        # Another worker may have compiled what this one left (several xdist workers).
        left = [d for d in self.uncompiled if d not in self.compiled_behind and d not in running]
        if left:
            lines.append(
                f"templates left uncompiled: {', '.join(left)} (one test used each; "
                "the next run that uses one compiles it behind its tests)"
            )
        if self.clones:
            strategies = ", ".join(f"{k} {v}" for k, v in sorted(self.strategies.items()))
            lines.append(f"clones: {self.clones} ({strategies})")
            lines.append(
                f"clone ms: median {_pct(self.clone_ms, 50):.1f}, "
                f"p95 {_pct(self.clone_ms, 95):.1f} (making one, in the test or ahead)"
            )
            why = ", ".join(f"{k} {v}" for k, v in sorted(self.discarded.items()))
            lines.append(
                f"clones reused: {self.recycled}, fresh: {self.fresh}, discarded after use: "
                f"{sum(self.discarded.values())}" + (f" ({why})" if why else "")
            )
            if self.pool_hits or self.pool_misses:
                lines.append(
                    f"pool: {self.pool_hits} hits, {self.pool_misses} misses "
                    "(cloned while the test waited)"
                )
            # What the tests themselves waited: with the pool, a take and a rename to trash.
            lines.append(
                f"test wait ms: for a clone median {_pct(self.wait_ms, 50):.2f}, "
                f"p95 {_pct(self.wait_ms, 95):.2f}; for its removal median "
                f"{_pct(self.remove_ms, 50):.2f}, p95 {_pct(self.remove_ms, 95):.2f}"
            )
            if self.pool_errors:
                lines.append(
                    f"pool thread errors: {len(self.pool_errors)}; the first: "
                    f"{self.pool_errors[0][:300]}"
                )
            total = self.shared_bytes + self.copied_bytes
            lines.append(
                f"disk: clones copied {_mib(self.copied_bytes)} where copies would take "
                f"{_mib(total)} ({_mib(self.shared_bytes)} shared with templates)"
            )
        if self.coverage_clones:
            lines.append(
                f"coverage: {self.coverage_files} data files of {self.coverage_clones} clones "
                "combined into the run's"
            )
        lines += [f"coverage: {note}" for note in self.coverage_notes]
        lines += [f"kept clone: {k}" for k in self.kept]
        return lines


def _pct(values: list[float], pct: int) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    import statistics

    return (
        statistics.quantiles(values, n=100, method="inclusive")[pct - 1]
        if pct != 50
        else statistics.median(values)
    )


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class CowEnvSession:
    """Makes and removes this process's clones; lazily creates the cache on first use."""

    def __init__(self, settings: Settings, coverage: Optional[CloneCoverage] = None) -> None:
        self.settings = settings
        self.coverage = coverage  # measures the clones' processes, when the run measures
        self.stats = Stats()
        self._layout: Optional[Layout] = None
        # Background work started at most once each, by name: see `_installing` ("prepare")
        # and `_start_cleaning` ("clean").
        self._background: dict[str, threading.Thread] = {}
        self._cache: Optional[TemplateCache] = None
        self._run_dir: Optional[Path] = None
        self._run_lock: Optional[int] = None  # held while the run folder exists: see _owner
        self._lock = threading.Lock()
        self._seq = 0
        self._pool: Optional[ClonePool] = None
        self._uses: Counter[tuple[str, LinkMode]] = Counter()
        self._expected: set[tuple[TemplateSpec, LinkMode]] = set()
        self._leases: dict[CowEnv, Lease] = {}
        self._unsized: list[Template] = []  # see `_count_shared`

    @property
    def layout(self) -> Layout:
        if self._layout is None:
            self._layout = prepare_root(self.settings.root)
        return self._layout

    @property
    def cache(self) -> TemplateCache:
        if self._cache is None:
            # The first test starts before a new template is byte-compiled (see template.py).
            self._cache = TemplateCache(
                self.layout,
                rebuild_before=self.settings.rebuild_before,
                compile_behind=True,
                installing=self._installing,
                compile_spare=self.settings.serial and _cores() >= 2,
            )
        return self._cache

    def _installing(self) -> None:
        """The template cache started an installer. The first time, prepare in a thread what
        the first clone needs besides its template (the modules, this run's folder and pool)
        and what follows it (the clean-up's module): none of it is the build's, and done while
        the installer runs, it neither delays the installer's start nor waits after its end,
        nor holds the GIL while the first test starts."""
        self._start_once("prepare", self._prepare_clones)

    def _prepare_clones(self) -> None:
        from . import env, maintenance, pool  # noqa: F401  # what `acquire` imports, and after

        with contextlib.suppress(OSError, CowEnvError):  # `acquire` meets it again, and says so
            _ = self.pool

    def _start_cleaning(self) -> None:
        """Remove what dead processes left, in the background (once): that removes nothing a
        live process holds (this one included), and no test need wait for it. Started by the
        first clone: before it, the thread would take CPU and the GIL from the build and the
        clone that the first test waits for."""
        self._start_once("clean", self._clean_stale_quietly)

    def _start_once(self, name: str, target: Callable[[], None]) -> None:
        with self._lock:
            if name in self._background:
                return
            thread = threading.Thread(target=target, name=f"cowenv-{name}", daemon=True)
            self._background[name] = thread
        thread.start()

    @property
    def run_dir(self) -> Path:
        """This process's clone folder, named and locked by its owner (see ``_owner``)."""
        with self._lock:
            while self._run_dir is None:
                path = self.layout.new_run_dir()
                path.mkdir()
                self._run_lock = lock_dir(str(path))
                if self._run_lock is not None:  # else a cleaner took it first: another name
                    self._run_dir = path
            return self._run_dir

    @property
    def pool(self) -> Optional[ClonePool]:
        """The clone-ahead pool (None when ``Settings.pool`` is 0), started on first need."""
        if self.settings.pool <= 0:
            return None
        run_dir = self.run_dir
        from .pool import ClonePool

        with self._lock:
            if self._pool is None:
                self._pool = ClonePool(
                    run_dir,
                    self.settings.pool,
                    root=self.layout.root,
                    errors=self.stats.pool_errors,
                    reuse_clones=self.settings.reuse,
                    discarded=self.stats.discarded,
                )
            return self._pool

    def spec(
        self,
        requirements: Any = (),
        *,
        python: Optional[str] = None,
        project: Any = None,
        pip: Optional[bool] = None,
        base_dir: Any = None,
        **more: Any,
    ) -> TemplateSpec:
        """A spec with this run's settings; ``more`` are :meth:`TemplateSpec.create`'s
        other keywords (``groups``, ``extras``, ``lock``, ``resolution``, ...)."""
        s = self.settings
        return TemplateSpec.create(
            requirements,
            python=python,
            project=project,
            pip=s.pip if pip is None else pip,
            index=s.index,
            base_dir=base_dir,
            constraint_files=s.constraints,
            **more,
        )

    def acquire(
        self,
        spec: TemplateSpec,
        name: str = "env",
        link_mode: Optional[LinkMode] = None,
        warn: Optional[Warn] = None,
    ) -> CowEnv:
        """A fresh private clone of ``spec``'s template (built first if needed): a ready one
        from the pool when there is one, else made now. ``warn`` is told a fallback to copies
        (see :func:`clone_tree`); without it, that is a :class:`CowEnvWarning` from the
        caller's line."""
        told: list[str] = []
        mode = link_mode or self.settings.link_mode
        with self._template_for(spec, mode) as template:
            # Not before: a new template's build starts sooner (see `_installing`).
            from .env import CowEnv
            from .pool import ENV, Lease

            with self._lock:
                self._seq += 1
                seq = self._seq
                self._uses[(template.key, mode)] += 1
                pooled = self._uses[(template.key, mode)] >= 2 or (spec, mode) in self._expected
                if template.built_now:
                    self.stats.built.setdefault(spec.describe(), template.build_seconds)
                elif spec.describe() not in self.stats.reused:
                    self.stats.reused.append(spec.describe())
            folder = self.run_dir / f"{_safe_name(name)}-{seq}"
            pool = self.pool
            start = time.perf_counter()
            lease = pool.take(template, mode) if pool else None
            if lease is not None and pool is not None:
                try:
                    os.rename(lease.folder, folder)
                    lease.folder = folder
                except OSError:  # never expected (same folder tree); a fresh clone is still right
                    pool.give_back(lease, reusable=False)
                    lease = None
            if lease is None:
                folder.mkdir()
                try:
                    with pool.foreground() if pool else contextlib.nullcontext():
                        result = clone_tree(
                            template.path,
                            folder / ENV,
                            mode,
                            tree=template.tree_if_walked,  # else walked if need be
                            warn=warn or told.append,
                        )
                except BaseException:
                    with contextlib.suppress(OSError):
                        folder.rmdir()
                    raise
                lease = Lease(folder, result, template, mode)
                if pool:
                    pool.record(lease)
                made = False
            else:
                result = lease.result
                made = True
            lease.hand_out()  # no test had it before this line: see reuse, step 2
        for message in pool.told() if pool else []:
            (warn or told.append)(message)
        waited = (time.perf_counter() - start) * 1000
        if pool and pooled:
            pool.start(template, mode)  # from the second use on, or when collection said so
        env = CowEnv(lease.path, template, result.strategy, self.settings.index)
        env.clone_seconds = result.seconds
        if self.coverage is not None:
            measure = self.coverage
            measure.prepare(env, spec.local)
            env._after_install = lambda e: measure.prepare(e, spec.local)
        with self._lock:
            self._leases[env] = lease
            self.stats.clones += 1
            self.stats.wait_ms.append(waited)
            if pool:
                if made:
                    self.stats.pool_hits += 1
                else:
                    self.stats.pool_misses += 1
            self.stats.strategies[result.strategy] += 1
            if lease.uses:
                self.stats.recycled += 1
            else:
                self.stats.fresh += 1
                self.stats.clone_ms.append(result.seconds * 1000)
                if result.strategy == "copy":
                    self.stats.copied_bytes += result.bytes
                else:
                    self._unsized.append(template)
        self._count_shared()
        self._start_cleaning()
        for message in told:
            warnings.warn(CowEnvWarning(message), stacklevel=2)
        return env

    def _count_shared(self, *, wait: bool = False) -> None:
        """Add the size of each clone that shares its template's blocks to the statistics,
        once its template's walk is done (a new btrfs template is walked behind its first
        snapshot's test: no test waits for the walk to count it); ``wait`` for the walks (at
        the end)."""
        ready: list[Template] = []
        waiting: list[Template] = []
        with self._lock:
            for template in self._unsized:
                (ready if wait or template.tree_if_walked is not None else waiting).append(template)
            self._unsized = waiting
        size = 0
        for template in ready:
            with contextlib.suppress(OSError, CowEnvError):  # a failed walk: its recording says so
                size += template.tree.nbytes
        with self._lock:
            self.stats.shared_bytes += size

    def _template_for(
        self, spec: TemplateSpec, mode: LinkMode
    ) -> contextlib.AbstractContextManager[Template]:
        """``spec``'s template, for a clone made in the ``with`` block: a template built now
        is recorded once the block ends (see ``TemplateCache.first_use``), except for hard
        links, which share its inodes and wait until it is recorded."""
        if mode is not LinkMode.HARDLINK:
            return self.cache.first_use(spec)
        template = self.cache.get(spec)
        self.cache.will_hardlink(template)
        return contextlib.nullcontext(template)

    def expect(self, spec: TemplateSpec, link_mode: Optional[LinkMode], tests: int) -> None:
        """Collection says ``tests`` tests will use ``spec``: from two on, compile its
        template behind the tests from its first use if this process builds it, pool it from
        its first use, and if its template is already built, load it and fill its pool now, in
        the background. A template not built yet is not built here: that stays the first
        test's job (so a run that is deselected or stopped early never pays for it)."""
        mode = link_mode or self.settings.link_mode
        if tests < 2:
            return
        self.cache.expect_clones(spec, tests)
        if self.settings.pool <= 0:
            return
        with self._lock:
            if (spec, mode) in self._expected:
                return
            self._expected.add((spec, mode))
        pool = self.pool
        if pool is not None:
            pool.prime(lambda: self._built_template(spec, mode))

    def _built_template(
        self, spec: TemplateSpec, mode: LinkMode
    ) -> Optional[tuple[Template, LinkMode]]:
        """``spec``'s template if it is built and fresh (for the pool thread), else None."""
        try:
            meta = self.cache.newest_meta(self.cache.key(spec))
            if meta is None or float(meta.get("created", 0)) < self.settings.rebuild_before:
                return None
            # cache.get serialises callers per key: the test and this thread share one object
            template = self.cache.get(spec)
            if mode is LinkMode.HARDLINK:
                self.cache.will_hardlink(template)
            return template, mode
        except (OSError, ValueError, AttributeError, CowEnvError):
            return None  # the first test meets (and reports) whatever is wrong

    def kept_path(self, env: CowEnv) -> Path:
        """Where :meth:`release` moves a kept clone (known before the test ends, for reports)."""
        return self.layout.kept / f"{env.path.parent.parent.name}-{env.path.parent.name}"

    def release(self, env: CowEnv, keep: bool = False) -> Optional[Path]:
        """Give a clone back (to the pool, if it proves unchanged: see ``reuse``; else to be
        removed), or move it to :meth:`kept_path` and return where it went."""
        if self.coverage is not None:
            self.coverage.collect(env)  # its processes are done; it still has its own path
        with self._lock:
            lease = self._leases.pop(env, None)
        kept = self.kept_path(env) if keep else None
        if kept is not None:
            kept.parent.mkdir(exist_ok=True)
            if not stat.S_ISDIR(os.lstat(kept.parent).st_mode):
                raise CacheDirError(
                    f"cannot keep {shown(env.path)}: {shown(kept.parent)} is not a directory "
                    "(a symlink?); remove it"
                )
            check_kept(self.layout)  # made by someone else since the start (a shared root)
            # rename() moves a symlink the test left in its place as the link itself.
            os.rename(env.path, kept)
            with self._lock:
                self.stats.kept.append(str(kept))
        start = time.perf_counter()
        folder = env.path.parent
        if self._pool is not None and lease is not None:
            self._pool.give_back(lease, reusable=kept is None)  # a rename; the rest behind
        elif os.path.lexists(folder):
            from .pool import remove_folder

            remove_folder(folder, self.layout.root)
            if kept is None:
                with self._lock:
                    self.stats.discarded["pool off"] += 1
        with self._lock:
            self.stats.remove_ms.append((time.perf_counter() - start) * 1000)
        return kept

    def note_compiles(self) -> None:
        """Copy what compiling behind the tests did so far into :attr:`stats`, and the sizes of
        clones still uncounted (at the end of the tests, for the summary)."""
        self._count_shared(wait=True)
        if self._cache is None:
            return
        self._cache.stop_spare()
        done, running, errors = self._cache.behind_report()
        uncompiled = self._cache.left_uncompiled()
        with self._lock:
            self.stats.compiled_behind.update(done)
            self.stats.compiling_behind = running
            self.stats.behind_errors = errors
            self.stats.uncompiled = uncompiled

    def finish_coverage(self) -> None:
        """Hand the clones' coverage to the run's measurement and count it in :attr:`stats`
        (at the end of the tests: before pytest-cov reports, or coverage saves at exit)."""
        if self.coverage is None:
            return
        self.coverage.finish()
        got = self.coverage.stats
        self.stats.merge(
            {
                "coverage_clones": got.clones,
                "coverage_files": got.files,
                "coverage_notes": self.coverage.notes(),
            }
        )

    def close(self) -> None:
        """Stop the pool thread, then remove whatever clones this process still has: unused
        pool clones, the trash, and clones of tests that crashed or were interrupted."""
        busy: set[str] = set()
        for name in ("prepare", "clean"):  # in this order: preparing may start the clean-up
            thread = self._background.get(name)
            if thread is not None:
                thread.join()
        if self._pool is not None and not self._pool.close():
            # The thread did not stop in time: leave its folders to the next run's clean-up.
            busy = {self._pool.ready_dir.name, self._pool.trash_dir.name}
        if self._run_dir is not None and self._run_dir.exists():
            from .pool import remove_folder

            for child in self._run_dir.iterdir():
                if child.name in busy:
                    continue
                with contextlib.suppress(OSError):
                    remove_folder(child, self.layout.root)
            with contextlib.suppress(OSError):
                self._run_dir.rmdir()
        if self._run_lock is not None:
            os.close(self._run_lock)
            self._run_lock = None
        if self._cache is not None:
            self._cache.close()  # lets go of its generations: superseded ones go now

    def _clean_stale_quietly(self) -> None:
        with contextlib.suppress(OSError):  # leftovers that stay are tried again next run
            self.clean_stale()

    def clean_stale(self) -> list[Path]:
        """Remove run folders and build leftovers of processes that are gone."""
        from .maintenance import clean_stale

        return clean_stale(self.layout if self._layout is None else self._layout)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", name)[-60:].strip("_") or "env"


def _cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - no affinity masks (macOS, Windows)

"""Templates: build each environment spec once, cache it by content, share it safely.

spec → key → (lock) → build in a private temp dir (:mod:`._build`) → rename into place as a
new generation → write the metadata last (:mod:`._atomic`), as the mark of completion.

A published generation never changes and is never removed while a process holds it (see
``store.Layout``): a rebuild makes the next generation, and a process keeps cloning the
generation it started with.
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Optional

from . import __version__
from ._atomic import hold_existing, hold_in_use, write_atomically
from ._build import build_env, timed
from ._content import own_hashes
from ._install import installer_identity
from ._names import BUILD_DIR, LEGACY_BUILD_DIR
from ._owner import lock_dir
from ._venv import installed_distributions, site_packages
from .clone import Tree, protect, remove_tree, strip_write_bits, walk_tree
from .errors import LockTimeoutError, TemplateBuildError, shown
from .fs import sync_filesystem
from .spec import FORMAT_VERSION, TemplateSpec, find_interpreter
from .store import Layout

DEFAULT_LOCK_TIMEOUT = float(os.environ.get("PYTEST_COWENV_LOCK_TIMEOUT", "900"))
_COUNTS = ("reused", "compiled", "failed", "dropped")  # what byte-compiling did, in metadata


@dataclass
class Template:
    """A complete template environment on disk."""

    key: str
    path: Path  # the tree of one generation: it stays as it is while this process runs
    spec: TemplateSpec
    meta: dict[str, Any]
    tree: Tree
    built_now: bool = False
    generation: int = 1

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

    def __repr__(self) -> str:
        return f"<Template {self.key}.{self.generation} {self.spec.describe()}>"


@dataclass
class TemplateCache:
    """Finds or builds templates under one cache root. Thread-safe; one per process."""

    layout: Layout
    rebuild_before: float = 0.0  # templates created before this time are rebuilt
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    _ready: dict[str, Template] = field(default_factory=dict)
    _failed: dict[str, TemplateBuildError] = field(default_factory=dict)
    _keys: dict[TemplateSpec, str] = field(default_factory=dict)
    _in_use: dict[tuple[str, int], IO[bytes]] = field(default_factory=dict)
    _key_locks: dict[str, threading.Lock] = field(default_factory=dict)
    _mutex: threading.Lock = field(default_factory=threading.Lock)
    built: list[Template] = field(default_factory=list)
    reused: list[Template] = field(default_factory=list)

    def key(self, spec: TemplateSpec) -> str:
        with self._mutex:
            key = self._keys.get(spec)
        if key is None:
            key = spec.key()
            with self._mutex:
                self._keys[spec] = key
        return key

    def get(self, spec: TemplateSpec) -> Template:
        """The template for ``spec``, built if needed. A failed build is not retried."""
        key = self.key(spec)
        with self._mutex:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # threads asking for one key wait for the first, then share its answer
            with self._mutex:
                if key in self._ready:
                    return self._ready[key]
                if key in self._failed:
                    raise self._failed[key]
            try:
                template = self._get_or_build(spec, key)
            except TemplateBuildError as exc:
                with self._mutex:
                    self._failed[key] = exc
                raise
            with self._mutex:
                self._ready[key] = template
                (self.built if template.built_now else self.reused).append(template)
            return template

    def forget(self, key: str) -> None:
        """Drop the in-memory template (after a rebuild elsewhere, or in tests)."""
        with self._mutex:
            self._ready.pop(key, None)
            self._failed.pop(key, None)

    def close(self) -> None:
        """Let go of every generation this process holds, and remove those that a rebuild
        has superseded meanwhile if nobody else holds them (else their last holder does, or
        the next clean-up)."""
        from .generations import collect_generations

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
                meta = json.loads(self.layout.meta(key, gen).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            return meta if isinstance(meta, dict) else None
        return None

    # -- finding -------------------------------------------------------------------------

    def _get_or_build(self, spec: TemplateSpec, key: str) -> Template:
        found = self._find(spec, key)
        if found is not None:
            return self._mark_used(found)
        with self._locked(key):
            found = self._find(spec, key)  # another process may have built it meanwhile
            if found is None:
                self._discard_dead_builds(key)
                found = self._build(spec, key)
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
        if not complete:
            return None
        gen = complete[-1]
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
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
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
        so that later loads check its manifest without ctimes and inodes."""
        with contextlib.suppress(OSError):
            self.layout.linked(template.key, template.generation).touch()

    def _mark_used(self, template: Template) -> Template:
        """Touch last-used (the in-use lock is already held: see `_find`)."""
        with contextlib.suppress(OSError):
            os.utime(self.layout.meta(template.key, template.generation))
        return template

    # -- building ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        import filelock

        lock_path = self.layout.lock(key)
        owner = lock_path.with_suffix(".owner")
        lock = filelock.FileLock(str(lock_path), timeout=self.lock_timeout)
        try:
            lock.acquire()
        except filelock.Timeout:
            try:
                holder = owner.read_text(encoding="utf-8").strip()
            except OSError:
                holder = "unknown process"
            # The lock is an flock: it dies with its holder, so the holder is alive and busy.
            raise LockTimeoutError(
                f"template {key}: lock {lock_path} held by {holder} for more than "
                f"{self.lock_timeout:g} s; wait for that build, stop it, or raise "
                "PYTEST_COWENV_LOCK_TIMEOUT"
            ) from None
        try:
            owner.write_text(
                f"pid {os.getpid()} on {socket.gethostname()} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')} ({' '.join(sys.argv[:3])})\n",
                encoding="utf-8",
            )
            yield
        finally:
            with contextlib.suppress(OSError):
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
        """Remove this process's own unfinished generation ``gen`` (lock held)."""
        held = self._in_use.pop((key, gen), None)
        root = self.layout.root
        remove_tree(self.layout.meta(key, gen), root=root)
        remove_tree(self.layout.template(key, gen), root=root)
        remove_tree(self.layout.linked(key, gen), root=root)
        remove_tree(self.layout.in_use(key, gen), root=root)
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

    def _build(self, spec: TemplateSpec, key: str) -> Template:
        start = time.perf_counter()
        phases: dict[str, float] = {}
        gen = max(self.layout.generations_of(key), default=0) + 1
        self._in_use[(key, gen)] = hold_in_use(self.layout.in_use(key, gen))
        work, work_lock = self._make_build_dir(key)
        env, final = work / "env", self.layout.template(key, gen)
        done = False
        try:
            compiled = build_env(spec, env, work, self.layout.bytecode, phases)
            with timed(phases, "publish"):
                os.rename(env, final)
                protected = protect(final)
            with timed(phases, "walk"):
                tree = walk_tree(final)
                write_bits = None
                if not protected:  # not a read-only subvolume: protect it by its modes
                    writable, write_bits = tree, strip_write_bits(tree)
                    tree = walk_tree(final)  # the manifest is of the tree as it stays
            with timed(phases, "hash"):
                hashes = own_hashes(tree, site_packages(final))
            with timed(phases, "sync"):
                # The metadata says "complete": the tree it describes must be on disk first,
                # or a crash could leave complete-looking metadata over lost file data.
                sync_filesystem(str(final))
            meta = {
                "format": FORMAT_VERSION,
                "key": key,
                "spec": spec.as_dict(),
                "describe": spec.describe(),
                "interpreter": find_interpreter(spec.python).fingerprint(),
                "installer": installer_identity(),
                "resolved": installed_distributions(final),
                "build_seconds": round(time.perf_counter() - start, 3),
                "phases": {name: round(secs, 3) for name, secs in phases.items()},
                "bytecode": {k: compiled[k] for k in _COUNTS},
                # The shared store's entries this template uses: `prune` keeps these.
                "bytecode_store": {"dir": compiled["store"], "entries": compiled["entries"]},
                "created": time.time(),
                "plugin_version": __version__,
                "files": tree.nfiles,
                "bytes": tree.nbytes,
                "manifest": tree.listing(),
                # Removed from every file and directory, given back in every clone.
                "write_bits": write_bits,
                # Files no RECORD vouches for (see verify.py), by content.
                "hashes": hashes,
            }
            write_atomically(self.layout.meta(key, gen), json.dumps(meta, indent=1))
            done = True
        except OSError as exc:
            raise TemplateBuildError(
                f"{spec.describe()}: building the template failed: {exc}"
                + _space_hint(self.layout.root, exc.errno)
            ) from None
        except TemplateBuildError as exc:
            raise _with_space_hint(exc, self.layout.root) from None
        finally:
            _remove_quietly(work, self.layout.root)
            os.close(work_lock)
            if not done:
                with contextlib.suppress(OSError):
                    self._discard_generation(key, gen)
        tree = writable if write_bits else tree
        return Template(key, final, spec, meta, tree, built_now=True, generation=gen)


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

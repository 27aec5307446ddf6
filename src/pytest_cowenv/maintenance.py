"""Cache upkeep: list templates, prune old ones, clean what dead processes left behind.

Pytest-free; the command line (``cli.py``) and the session call it. Removal respects the two
locks beside each template: the build lock of its key (a builder is at work) and the shared
in-use lock of each generation, which every process using that generation holds (see
``_atomic.hold_in_use``). A generation that a newer complete one supersedes is removed as
soon as nobody holds it, whatever its age.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from . import _owner
from ._atomic import BuildLock, read_json, read_note
from ._names import (
    BUILD_DIR,
    KEPT,
    LEGACY_BUILD_DIR,
    LEGACY_RUN_DIR,
    LEGACY_TMP_FILE,
    LISTING,
    LISTING_TMP,
    META_TMP,
    RUN_DIR,
    TMP_FILE,
    WHEEL_ENTRY,
)
from .clone import remove_tree
from .errors import CacheDirError
from .generations import (
    collect_generations,
    in_use_reason,
    remove_generation,
    superseded,
)
from .store import ROOT_FILES, Layout, open_existing

DAY = 86400.0
PRUNE_LOCK_TIMEOUT = 2.0  # seconds to wait for a template's build lock before skipping it


@dataclass(frozen=True)
class TemplateInfo:
    """A complete template (its newest complete generation) as ``list`` shows it."""

    key: str
    generation: int
    path: str
    describe: str
    resolved: dict[str, str]
    files: int
    bytes: int  # apparent size: the sum of file sizes
    disk_bytes: int  # allocated blocks (extents shared with clones are counted in full)
    exclusive_bytes: Optional[int]  # btrfs only: data no clone or snapshot shares
    shared_bytes: Optional[int]  # btrfs only: data shared with clones or other subvolumes
    build_seconds: float
    created: float
    last_used: float  # mtime of the metadata, touched whenever a run uses the template
    in_use: bool
    installer: str


@dataclass(frozen=True)
class Leftover:
    """Something under the cache that is not a complete template."""

    path: str
    kind: str  # "old generation" | "incomplete template" | "orphan metadata" | "build dir" | …
    note: str


@dataclass(frozen=True)
class WheelInfo:
    """A cached wheel of a local project (see ``_wheelcache``) as ``list`` shows it."""

    key: str
    path: str
    file: str
    bytes: int
    templates: int  # how many template generations list it (prune removes it at 0)


@dataclass(frozen=True)
class Item:
    """One thing ``prune`` or ``clean`` removed or left alone."""

    path: str
    what: str
    bytes: int = 0
    reason: str = ""  # why it was skipped


@dataclass
class Report:
    removed: list[Item] = field(default_factory=list)
    skipped: list[Item] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {
            "removed": [asdict(i) for i in self.removed],
            "skipped": [asdict(i) for i in self.skipped],
        }


def open_layout(root: Path, *, adopt: bool = False, remains: bool = False) -> Optional[Layout]:
    """The layout of an existing cache (vetted, never created), or None if there is none.
    A directory that is not ours raises CacheDirError (see ``store.open_existing``)."""
    return open_existing(root, adopt=adopt, remains=remains)


# -- reading -------------------------------------------------------------------------------


def read_meta(layout: Layout, key: str, gen: int) -> Optional[dict[str, Any]]:
    try:
        meta = read_json(layout.meta(key, gen))  # never through a link
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("key") == key else None


def template_keys(layout: Layout) -> list[str]:
    """Every key under ``templates/`` (names that match ``_names.TEMPLATE_ENTRY`` exactly:
    nothing else there is ours)."""
    return list(layout.generations())


def current_generation(layout: Layout, key: str) -> Optional[int]:
    """The newest complete generation of ``key`` (tree and metadata), or None."""
    for gen in reversed(layout.generations_of(key)):
        if layout.template(key, gen).is_dir() and read_meta(layout, key, gen) is not None:
            return gen
    return None


def list_templates(layout: Layout) -> tuple[list[TemplateInfo], list[Leftover]]:
    """Complete templates (oldest use first) and leftovers of every other kind."""
    templates: list[TemplateInfo] = []
    leftovers: list[Leftover] = []
    for key, gens in layout.generations().items():
        for gen in gens:
            meta, path = read_meta(layout, key, gen), layout.template(key, gen)
            has_dir = path.is_dir()
            newer = superseded(layout, key, gen, gens)
            if meta is not None and has_dir and newer is None:
                templates.append(_info(layout, key, gen, meta))
            elif meta is not None and has_dir:
                note = f"superseded by generation {newer}; " + _old_note(layout, key, gen)
                leftovers.append(Leftover(str(path), "old generation", note))
            elif has_dir:
                note = _orphan_note(layout, key)
                leftovers.append(Leftover(str(path), "incomplete template", note))
            elif layout.meta(key, gen).exists():
                note = "metadata without its environment; " + _orphan_note(layout, key)
                leftovers.append(Leftover(str(layout.meta(key, gen)), "orphan metadata", note))
    templates = _with_btrfs_usage(templates)
    for child in _children(layout.tmp):
        if not (BUILD_DIR.match(child.name) or LEGACY_BUILD_DIR.match(child.name)):
            continue  # not ours
        alive = not _stale(Path(child.path))
        note = "a build in progress" if alive else "left by a process that is gone"
        leftovers.append(Leftover(child.path, "build dir", note))
    for child in _children(layout.clones):
        if _stale(Path(child.path)):
            leftovers.append(Leftover(child.path, "stale run", "clones of a process that is gone"))
    for child in _children(layout.kept):
        if KEPT.match(child.name):
            leftovers.append(Leftover(child.path, "kept", "kept by --cowenv-keep"))
    templates.sort(key=lambda t: t.last_used)
    return templates, leftovers


def list_wheels(layout: Layout) -> list[WheelInfo]:
    """The cached wheels of local projects, by file name."""
    users: dict[str, int] = {}
    for key, gens in layout.generations().items():
        for gen in gens:
            meta = read_meta(layout, key, gen)
            for wheel in meta.get("wheels", []) if meta else []:
                users[str(wheel)] = users.get(str(wheel), 0) + 1
    found = [
        WheelInfo(
            entry.name,
            entry.path,
            _wheel_file(Path(entry.path)),
            allocated_bytes(Path(entry.path)),
            users.get(entry.name, 0),
        )
        for entry in _children(layout.wheels)
        if (match := WHEEL_ENTRY.match(entry.name)) and not match["lock"]
    ]
    return sorted(found, key=lambda w: (w.file, w.key))


def _info(layout: Layout, key: str, gen: int, meta: dict[str, Any]) -> TemplateInfo:
    path = layout.template(key, gen)
    return TemplateInfo(
        key=key,
        generation=gen,
        path=str(path),
        describe=str(meta.get("describe", "?")),
        resolved=dict(meta.get("resolved", {})),
        files=int(meta.get("files", 0)),
        bytes=int(meta.get("bytes", 0)),
        disk_bytes=allocated_bytes(path),
        exclusive_bytes=None,
        shared_bytes=None,
        build_seconds=float(meta.get("build_seconds", 0.0)),
        created=float(meta.get("created", 0.0)),
        last_used=_mtime(layout.meta(key, gen)),
        in_use=is_held(layout.in_use(key, gen)),
        installer=str(meta.get("installer", "")),
    )


def _old_note(layout: Layout, key: str, gen: int) -> str:
    if is_held(layout.in_use(key, gen)):
        return in_use_reason(layout, key, gen) + "; removed once it ends"
    return "not in use; `clean` removes it"


def _orphan_note(layout: Layout, key: str) -> str:
    if is_held(layout.lock(key)):
        return f"being built by {_builder(layout, key)}"
    return "no build running; `clean` removes it"


def _builder(layout: Layout, key: str) -> str:
    return (read_note(layout.owner_note(key)) or "").strip() or "another process"


def allocated_bytes(path: Path) -> int:
    """Bytes of blocks allocated to the files under ``path`` (apparent size where unknown);
    0 for a symlink, which is never followed."""
    if os.path.islink(path):
        return 0
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                blocks = getattr(st, "st_blocks", None)
                total += blocks * 512 if blocks is not None else st.st_size
    return total


def btrfs_usage(paths: list[str]) -> dict[str, tuple[int, int]]:
    """``path -> (exclusive, shared)`` bytes from ``btrfs filesystem du``; {} if unmeasurable."""
    tool = shutil.which("btrfs")
    if not paths or tool is None:
        return {}
    try:
        proc = subprocess.run(
            [tool, "filesystem", "du", "-s", "--raw", *paths],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    found = {}
    for line in proc.stdout.splitlines()[1:]:  # after the "Total Exclusive ..." header
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[0].isdigit() and parts[1].isdigit():
            total, exclusive = int(parts[0]), int(parts[1])
            found[os.path.normpath(parts[3])] = (exclusive, total - exclusive)
    return found


def _with_btrfs_usage(templates: list[TemplateInfo]) -> list[TemplateInfo]:
    from dataclasses import replace

    from .fs import fs_type

    def on_btrfs(path: str) -> bool:
        try:
            return fs_type(path) == "btrfs"
        except OSError:
            return False

    usage = btrfs_usage([t.path for t in templates if on_btrfs(t.path)])
    out = []
    for t in templates:
        measured = usage.get(os.path.normpath(t.path))
        if measured is not None:
            t = replace(t, exclusive_bytes=measured[0], shared_bytes=measured[1])
        out.append(t)
    return out


# -- locks ---------------------------------------------------------------------------------


def is_held(path: Path) -> bool:
    """True if some process holds a lock on ``path``; never creates the file, nor locks
    what a link there points to (a link is no lock of ours: False)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks to look at
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops our lock, if we got it
    return False


def remove_template(
    layout: Layout,
    key: str,
    gen: int,
    *,
    lock_timeout: float = PRUNE_LOCK_TIMEOUT,
    still_wanted: Optional[Callable[[], Optional[str]]] = None,
) -> Optional[str]:
    """Remove generation ``gen`` of ``key`` under the key's build lock (so that no builder is
    making it, nor numbering the next one meanwhile); return why not, or None once removed.
    The key's lock files go with its last generation."""
    lock = BuildLock(layout.lock(key))
    try:
        if not lock.acquire(lock_timeout):
            return f"being built by {_builder(layout, key)}"
    except CacheDirError as exc:  # a link where the lock should be
        return str(exc)
    try:
        reason = remove_generation(layout, key, gen, still_wanted=still_wanted)
        if reason is None and not layout.generations_of(key):
            # The build lock itself stays: a filelock waiter that does not re-check the link
            # count (before 3.20.4) would lock the unlinked file while a newcomer locks a new
            # one, and two builders would number and publish the same generation.
            remove_tree(layout.owner_note(key), root=layout.root)
        return reason
    finally:
        lock.release()


def prune(
    layout: Layout,
    *,
    older_than_days: float = 30.0,
    everything: bool = False,
    lock_timeout: float = PRUNE_LOCK_TIMEOUT,
) -> Report:
    """Remove templates unused for ``older_than_days`` (or all), and superseded generations:
    never one in use."""
    report = Report()
    cutoff = time.time() - older_than_days * DAY

    def too_recent(key: str, gen: int) -> Optional[str]:
        last = last_used(layout, key, gen)
        if everything or last < cutoff:
            return None
        return f"used {(time.time() - last) / DAY:.1f} days ago"

    for key, gens in layout.generations().items():
        for gen in gens:
            path = layout.template(key, gen)
            if not path.is_dir() and not layout.meta(key, gen).exists():
                continue  # lock files only: `clean` handles those
            old = superseded(layout, key, gen, gens) is not None
            if not old and too_recent(key, gen):
                continue
            meta = read_meta(layout, key, gen)
            what = f"template {meta.get('describe', '?') if meta else '(incomplete)'}"
            if old:
                what += f" (generation {gen}, superseded)"
            size = allocated_bytes(path)
            if old:
                reason = remove_generation(layout, key, gen)
            else:
                wanted = functools.partial(too_recent, key, gen)
                reason = remove_template(
                    layout, key, gen, lock_timeout=lock_timeout, still_wanted=wanted
                )
            if reason is None:
                report.removed.append(Item(str(path), what, size))
            else:
                report.skipped.append(Item(str(path), what, size, reason))
    prune_bytecode(layout, report)
    prune_wheels(layout, report)
    prune_listings(layout, report, older_than=0 if everything else older_than_days * DAY)
    return report


def last_used(layout: Layout, key: str, gen: int) -> float:
    """When a run last used a generation (its metadata's mtime; the tree's for a half-made
    one)."""
    return _mtime(layout.meta(key, gen)) or _mtime(layout.template(key, gen))


def clean_stale(layout: Layout) -> list[Path]:
    """Remove run folders and build leftovers of processes that are provably gone, and
    superseded generations that nobody holds any more."""
    removed = []
    for key in layout.generations():
        removed += collect_generations(layout, key)
    for folder in (layout.clones, layout.tmp):
        for child in sorted(Path(e.path) for e in _children(folder)):
            with _reaping(child) as dead:
                if dead:
                    with contextlib.suppress(OSError):
                        remove_tree(child, root=layout.root)
                        removed.append(child)
    return removed


def clean(layout: Layout, *, kept: bool = False) -> Report:
    """Remove leftovers: stale clones and build dirs, orphan template parts, kept clones."""
    report = Report()
    for path in clean_stale(layout):
        what = {layout.clones: "stale clones", layout.tmp: "build leftover"}.get(
            path.parent, "old generation"
        )
        report.removed.append(Item(str(path), what))
    for key, gens in layout.generations().items():
        if not gens:
            continue  # only the key's build lock: it stays for good (see remove_template)
        for gen in gens:
            has_dir = layout.template(key, gen).is_dir()
            if has_dir and read_meta(layout, key, gen) is not None:
                continue  # a complete template: `prune` decides about those
            what = "incomplete template" if has_dir else "orphan template files"
            path = layout.template(key, gen) if has_dir else layout.meta(key, gen)
            # A free build lock means no builder: what is there will never be completed.
            reason = remove_template(layout, key, gen, lock_timeout=0)
            item = Item(str(path), what, reason=reason or "")
            (report.skipped if reason else report.removed).append(item)
    for entry in _children(layout.templates):
        if META_TMP.match(entry.name) and _dead_writer(entry.name):
            with contextlib.suppress(OSError):
                remove_tree(entry.path, root=layout.root)
                report.removed.append(Item(entry.path, "unfinished metadata"))
    if kept:
        for entry in _children(layout.kept):
            if not KEPT.match(entry.name):
                continue  # not ours
            with contextlib.suppress(OSError):
                remove_tree(entry.path, root=layout.root)
                report.removed.append(Item(entry.path, "kept clone"))
    prune_bytecode(layout, report)
    prune_wheels(layout, report)
    prune_listings(layout, report)
    return report


def clean_all(layout: Layout, *, lock_timeout: float = PRUNE_LOCK_TIMEOUT) -> Report:
    """Remove the whole cache (``clean --all``) but what a live run holds: every template not
    in use, clones of dead runs, kept clones, build leftovers, the bytecode store once no
    template and no build is left, our files and folders, then the root if it is empty.
    What is held (a template in use, a live run's clones, a build) is reported as skipped.

    The way to remove a cache: on btrfs its templates are read-only subvolumes, which
    ``rm -rf`` cannot empty."""
    report = clean(layout, kept=True)
    pruned = prune(layout, everything=True, lock_timeout=lock_timeout)
    report.removed += pruned.removed
    report.skipped += pruned.skipped
    for key, gens in layout.generations().items():
        if not gens:  # what `prune` and `clean` leave of a removed template: its build lock
            reason = _remove_lock_files(layout, key)
            if reason:
                report.skipped.append(Item(str(layout.lock(key)), "build lock", reason=reason))
    live = [
        Item(child.path, "run", reason="clones of a process not known to be gone")
        for child in _children(layout.clones)
        if RUN_DIR.match(child.name) or LEGACY_RUN_DIR.match(child.name)
    ] + [
        Item(child.path, "build", reason="a build in progress")
        for child in _children(layout.tmp)
        if BUILD_DIR.match(child.name) or LEGACY_BUILD_DIR.match(child.name)
    ]
    report.skipped += live
    if any(layout.generations().values()) or any(item.what == "build" for item in live):
        if os.path.lexists(layout.bytecode):
            reason = "templates or builds remain, which may use it"
            report.skipped.append(Item(str(layout.bytecode), "bytecode store", reason=reason))
    elif os.path.lexists(layout.bytecode):
        size = allocated_bytes(layout.bytecode)
        remove_tree(layout.bytecode, root=layout.root)
        report.removed.append(Item(str(layout.bytecode), "bytecode store", size))
    for entry in _children(layout.versions):  # the listers' locks: a lister only lists again
        if LISTING.match(entry.name):
            remove_tree(entry.path, root=layout.root)
    report.skipped += _remove_wheel_locks(layout)
    folders = (
        layout.templates,
        layout.clones,
        layout.tmp,
        layout.kept,
        layout.bytecode,
        layout.versions,
        layout.wheels,
    )
    for folder in folders:
        with contextlib.suppress(OSError):  # only if empty: a look-alike of the user's stays
            os.rmdir(folder)
    if not any(os.path.lexists(folder) for folder in folders):
        # The marker files go last, with nothing left that they mark.
        for name in ROOT_FILES:
            remove_tree(layout.root / name, root=layout.root)
        with contextlib.suppress(OSError):
            os.rmdir(layout.root)
    return report


def bytecode_in_use(layout: Layout) -> Optional[set[tuple[str, str]]]:
    """(store folder, entry name) of every bytecode store entry a template's metadata lists;
    None while a template is being built (its entries are listed only once it is done)."""
    stores = _listed_in_metadata(layout, "bytecode_store")
    if stores is None:
        return None
    return {
        (str(store.get("dir", "")), str(digest))
        for store in stores
        if isinstance(store, dict)
        for digest in store.get("entries", ())
    }


def prune_bytecode(layout: Layout, report: Report) -> None:
    """Remove the bytecode store's entries that no template lists (and unfinished ones).

    The store is a cache: an entry removed under a build only costs that build a compile.
    """
    used = bytecode_in_use(layout)
    if used is None or os.path.islink(layout.bytecode):
        return  # a build will list its entries once done: the next prune or clean will do it
    count = size = 0
    for folder in _children(layout.bytecode):
        if not folder.is_dir(follow_symlinks=False):
            continue  # the secret
        for fan in _children(Path(folder.path)):
            if not fan.is_dir(follow_symlinks=False):
                continue
            for entry in _children(Path(fan.path)):
                if (folder.name, fan.name + entry.name) in used:
                    continue
                with contextlib.suppress(OSError):
                    nbytes = entry.stat(follow_symlinks=False).st_size
                    remove_tree(entry.path, root=layout.root)
                    count, size = count + 1, size + nbytes
            with contextlib.suppress(OSError):
                os.rmdir(fan.path)  # only if empty
    if count:
        what = f"unused bytecode ({count} entr{'y' if count == 1 else 'ies'})"
        report.removed.append(Item(str(layout.bytecode), what, size))


def wheels_in_use(layout: Layout) -> Optional[set[str]]:
    """The keys of the cached wheels (``wheels/<key>/``) some template's metadata lists; None
    while a template is being built (it lists its wheels only once it is done)."""
    lists = _listed_in_metadata(layout, "wheels")
    if lists is None:
        return None
    return {str(w) for wheels in lists if isinstance(wheels, list) for w in wheels}


def _listed_in_metadata(layout: Layout, name: str) -> Optional[list[Any]]:
    """The value of ``name`` in the metadata of every generation of every template (each that
    has it), for what they use of the cache's shared stores; None while a template is being
    built (it lists what it uses only once it is done)."""
    found = []
    for key, gens in layout.generations().items():
        if is_held(layout.lock(key)):
            return None
        for gen in gens:  # every generation: an old one may still be in use
            meta = read_meta(layout, key, gen)
            if meta is not None and name in meta:
                found.append(meta[name])
    return found


def prune_wheels(layout: Layout, report: Report) -> None:
    """Remove the cached wheels of local projects that no template lists: a wheel lives as
    long as a template installed from it (the next template of that project, with other
    requirements, builds no wheel), and goes with the last one.

    The cache of wheels is a cache: a wheel removed under a build only costs that build a
    wheel build (a build installs from its own link to the wheel, which stays)."""
    used = wheels_in_use(layout)
    if used is None:
        return  # a build will list its wheels once done: the next prune or clean will do it
    for entry in _children(layout.wheels):
        match = WHEEL_ENTRY.match(entry.name)
        if match is None or match["lock"] or entry.name in used:
            continue  # not ours, a lock (see _remove_wheel_locks), or in use
        lock = BuildLock(layout.wheel_lock(entry.name))
        try:
            held = lock.try_acquire()
        except CacheDirError as exc:  # a link where the lock should be
            report.skipped.append(Item(entry.path, "wheel", reason=str(exc)))
            continue
        if not held:
            report.skipped.append(Item(entry.path, "wheel", reason="being built"))
            continue
        try:
            what = f"wheel {_wheel_file(Path(entry.path))}"
            size = allocated_bytes(Path(entry.path))
            remove_tree(entry.path, root=layout.root)
            report.removed.append(Item(entry.path, what, size))
        except OSError as exc:
            report.skipped.append(Item(entry.path, "wheel", reason=str(exc)))
        finally:
            lock.release()


def _wheel_file(entry: Path) -> str:
    """The wheel's file name in its folder, for people; "(incomplete)" if there is none."""
    found = sorted(c.name for c in _children(entry) if c.name.endswith(".whl"))
    return found[0] if found else "(incomplete)"


def _remove_wheel_locks(layout: Layout) -> list[Item]:
    """``clean --all`` only: remove the build locks of wheels that are gone, unlinked while
    we hold them (as :func:`_remove_lock_files` does for templates); what is held is
    skipped."""
    skipped = []
    for entry in _children(layout.wheels):
        match = WHEEL_ENTRY.match(entry.name)
        if match is None or not match["lock"]:
            continue
        lock = BuildLock(Path(entry.path))
        try:
            held = lock.try_acquire()
        except CacheDirError as exc:  # a link with a lock's name: not ours
            skipped.append(Item(entry.path, "wheel build lock", reason=str(exc)))
            continue
        if not held:
            skipped.append(Item(entry.path, "wheel build lock", reason="a wheel being built"))
            continue
        try:
            if not os.path.lexists(layout.wheel_entry(match["key"])):
                remove_tree(entry.path, root=layout.root)
        finally:
            lock.release()
    return skipped


def prune_listings(layout: Layout, report: Report, *, older_than: Optional[float] = None) -> None:
    """Remove the release listings of ``versions()`` written more than ``older_than``
    seconds ago (all if 0; None: none), and unfinished ones of writers that are gone. A
    listing past its expiry stands in while the index cannot be reached; one removed under a
    run only costs that run a listing."""
    cutoff = None if older_than is None else time.time() - older_than
    count = size = 0
    for entry in _children(layout.versions):
        if LISTING.match(entry.name) and entry.name.endswith(".json"):
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if cutoff is not None and (older_than == 0 or st.st_mtime < cutoff):
                    remove_tree(entry.path, root=layout.root)
                    count, size = count + 1, size + st.st_size
        elif LISTING_TMP.match(entry.name) and _dead_writer(entry.name):
            with contextlib.suppress(OSError):
                remove_tree(entry.path, root=layout.root)
    if count:
        what = f"release listings ({count})"
        report.removed.append(Item(str(layout.versions), what, size))


def _remove_lock_files(layout: Layout, key: str) -> Optional[str]:
    """``clean --all`` only: remove the build lock and owner note of a key that has no
    generation left, unlinked while we hold it. A builder that opened the lock a moment
    before could still lock the removed file (filelock before 3.20.4 does not re-check the
    link count): the risk of starting a build in a cache while removing it, which `prune`
    and `clean` never take."""
    lock = BuildLock(layout.lock(key))
    try:
        if not lock.try_acquire():
            return f"being built by {_builder(layout, key)}"
    except CacheDirError as exc:  # a link where the lock should be
        return str(exc)
    try:
        if not layout.generations_of(key):
            for side in (layout.owner_note(key), layout.lock(key)):
                remove_tree(side, root=layout.root)
        return None
    finally:
        lock.release()


def _dead_writer(name: str) -> bool:
    """For an unfinished file (see ``store.temp_name``): is its writer provably gone?"""
    match = TMP_FILE.match(name)
    if match:
        return _owner.provably_dead(_owner.Owner.parse(match))  # no lock: its pid decides
    legacy = LEGACY_TMP_FILE.match(name)
    return legacy is not None and not _owner.alive(int(legacy["pid"]))


@contextlib.contextmanager
def _reaping(path: Path) -> Iterator[bool]:
    """Yields whether ``path`` (a folder under ``clones/`` or ``tmp/``) belongs to a process
    that is provably gone; if so, holding the folder's lock while the caller removes it."""
    match = RUN_DIR.match(path.name) or BUILD_DIR.match(path.name)
    if match:
        with _owner.reaping(str(path), _owner.Owner.parse(match)) as dead:
            yield dead
        return
    # Names of earlier versions, which record no boot, host or namespace: their pid decides.
    legacy = LEGACY_RUN_DIR.match(path.name)
    if legacy:
        yield not _owner.alive(int(legacy["pid"]), int(legacy["ticks"]))
        return
    legacy = LEGACY_BUILD_DIR.match(path.name)
    yield legacy is not None and not _owner.alive(int(legacy["pid"]))


def _stale(path: Path) -> bool:
    with _reaping(path) as dead:
        return dead


def _children(folder: Path) -> list[os.DirEntry[str]]:
    """The entries of ``folder``; none if it is a symlink (never listed through a link)."""
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            return []
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError:
        return []


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0

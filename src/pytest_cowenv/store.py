"""The cache directory: where it is, whether it is safe, and how it is laid out."""

from __future__ import annotations

import contextlib
import functools
import os
import stat
import sys
import uuid
from pathlib import Path
from typing import Optional, Union

from . import marker
from ._names import TEMPLATE_ENTRY
from ._owner import current
from .errors import CacheDirError, not_ours, shown

ENV_DIR = "PYTEST_COWENV_DIR"

# Files of ours directly in the root (fs-probe.json: report.PROBE_MEMO), which `clean --all`
# removes with the rest, in this order: our marker last, so that an interrupted removal
# leaves a directory that is still recognised as ours.
ROOT_FILES = ("fs-probe.json", marker.CACHEDIR_TAG, marker.MARKER)


def default_root() -> Path:
    """The user cache directory for pytest-cowenv on this platform."""
    if sys.platform == "darwin":  # pragma: no cover - macOS
        return Path.home() / "Library" / "Caches" / "pytest-cowenv"
    if sys.platform == "win32":  # pragma: no cover - Windows
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "pytest-cowenv" / "Cache"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pytest-cowenv"


class Layout:
    """Folders under the cache root. Clones live beside templates: same filesystem."""

    def __init__(self, root: Union[str, os.PathLike[str]]) -> None:
        self.root = Path(root).absolute()
        self.templates = self.root / "templates"
        self.clones = self.root / "clones"
        self.tmp = self.root / "tmp"
        self.bytecode = self.root / "pyc"  # compiled sources shared by templates (_bytecode)
        self.kept = self.root / "kept"  # clones kept by --cowenv-keep
        self.versions = self.root / "versions"  # release listings (_releases), made on need
        self.wheels = self.root / "wheels"  # wheels of local projects (_wheelcache), on need

    # A template is published in immutable generations: `<key>.<n>` (the tree), `<key>.<n>.json`
    # (its metadata, written last: the mark of completion) and `<key>.<n>.inuse` (the shared
    # lock every process using it holds). A rebuild makes generation n+1; generation n goes once
    # nobody holds it. Generation 0 is the layout of earlier versions: `<key>`, `<key>.json`,
    # `<key>.inuse`; it is never built again, only listed and removed like a superseded one.
    # One build lock per key (`<key>.lock`, its holder noted in `<key>.owner`).

    def template(self, key: str, gen: int) -> Path:
        return self.templates / _gen_name(key, gen)

    def meta(self, key: str, gen: int) -> Path:
        return self.templates / f"{_gen_name(key, gen)}.json"

    def in_use(self, key: str, gen: int) -> Path:
        return self.templates / f"{_gen_name(key, gen)}.inuse"

    def lock(self, key: str) -> Path:
        return self.templates / f"{key}.lock"

    def owner_note(self, key: str) -> Path:
        return self.templates / f"{key}.owner"

    def generations(self) -> dict[str, list[int]]:
        """Every key under ``templates/`` (also one with only a lock file left) → the numbers
        of its generations with anything on disk, oldest first."""
        found: dict[str, set[int]] = {}
        try:
            names = os.listdir(self.templates)
        except OSError:
            return {}
        for name in names:
            match = TEMPLATE_ENTRY.match(name)
            if match:
                gens = found.setdefault(match["key"], set())
                if not match["keyfile"]:
                    gens.add(int(match["gen"] or 0))
        return {key: sorted(gens) for key, gens in sorted(found.items())}

    def generations_of(self, key: str) -> list[int]:
        return self.generations().get(key, [])

    def linked(self, key: str, gen: int) -> Path:
        """Present once a hardlink clone was made of this generation (see template.py)."""
        return self.templates / f"{_gen_name(key, gen)}.linked"

    def wheel_entry(self, key: str) -> Path:
        """The folder of a built wheel: the wheel and its ``wheel.json`` (see _wheelcache)."""
        return self.wheels / key

    def wheel_lock(self, key: str) -> Path:
        return self.wheels / f"{key}.lock"

    def new_run_dir(self) -> Path:
        """A name for this process's clone folder (not created)."""
        return self.clones / f"run-{current().token()}-{uuid.uuid4().hex[:6]}"

    def new_build_dir(self, key: str) -> Path:
        """A name for a build folder of ``key`` made by this process (not created)."""
        return self.tmp / f"{key}.{current().token()}.{uuid.uuid4().hex[:8]}"


def _gen_name(key: str, gen: int) -> str:
    return key if gen == 0 else f"{key}.{gen}"


def temp_name(path: Path) -> Path:
    """Where this process writes ``path`` before renaming it into place."""
    return path.with_name(f".{path.name}.{current().token()}.tmp")


def prepare_root(root: Optional[Union[str, os.PathLike[str]]]) -> Layout:
    """Create (if needed), vet and mark the cache root; refuse one that others could poison
    or that is not ours (see ``marker``)."""
    path = (Path(root).expanduser() if root else default_root()).absolute()
    if root and not path.parent.is_dir():
        raise CacheDirError(
            f"cache dir {shown(path)}: its parent {shown(path.parent)} does not exist; create "
            "it, or choose another cache directory"
        )
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise CacheDirError(f"cache dir {shown(path)}: cannot create it ({exc.strerror})") from None
    check_safe(path)
    claim(path)
    layout = Layout(path)
    check_folders(layout)
    try:
        for sub in (layout.templates, layout.clones, layout.tmp, layout.bytecode):
            sub.mkdir(exist_ok=True)
            # In a shared (sticky) root, someone else could have made these first.
            check_safe(sub, parents=False)
    except OSError as exc:
        raise CacheDirError(
            f"cache dir {shown(path)}: not writable ({exc.strerror}); fix its permissions or "
            "choose another cache directory"
        ) from None
    for sub in (layout.templates, layout.clones, layout.tmp, layout.bytecode):
        if not os.access(sub, os.W_OK | os.X_OK):
            raise CacheDirError(
                f"cache dir {shown(path)}: {sub.name}/ is not writable; fix its permissions or "
                "choose another cache directory"
            )
    check_kept(layout)
    return layout


def claim(path: Path) -> None:
    """Mark ``path`` as ours if it is empty or a cache of the previous version; refuse it if
    it is anything else. Call only on a vetted (``check_safe``) directory."""
    state = marker.classify(str(path))
    if state.kind == "foreign":
        raise CacheDirError(foreign_message(path, state.why))
    if state.kind == "remains":
        raise CacheDirError(remains_message(path))
    try:
        if state.kind in ("empty", "legacy"):
            marker.mark(str(path))
        else:
            marker.ensure_tag(str(path))
    except OSError as exc:
        raise CacheDirError(
            f"cache dir {shown(path)}: not writable ({exc.strerror}); fix its permissions or "
            "choose another cache directory"
        ) from None


def claim_at_start(root: Optional[str]) -> None:
    """What a pytest run checks before it starts: a directory that is not ours is refused
    (CacheDirError); a missing or empty one is made ours now, so that the header may keep
    its probe there. Any other problem is left to the first test that needs the cache."""
    path = Path(root) if root else default_root()
    try:
        path.mkdir(parents=not root, exist_ok=True, mode=0o700)
        check_safe(path)
    except (OSError, CacheDirError):
        return
    state = marker.classify(str(path))
    if state.kind == "foreign":
        raise CacheDirError(foreign_message(path, state.why))
    if state.kind == "remains":
        raise CacheDirError(remains_message(path))
    with contextlib.suppress(CacheDirError):
        claim(path)


def open_existing(root: Path, *, adopt: bool = False, remains: bool = False) -> Optional[Layout]:
    """The layout of an existing cache, vetted and never created; None if there is none (no
    such directory, or an empty one). A cache of the previous version is marked only with
    ``adopt``: commands that only look (``list``, ``info``) change nothing. What is left of
    a cache whose marker was removed opens only with ``remains`` (to remove it all)."""
    state = marker.classify(str(root))
    if state.kind in ("missing", "empty"):
        return None
    if state.kind == "foreign":
        raise CacheDirError(foreign_message(root, state.why))
    if state.kind == "remains" and not remains:
        raise CacheDirError(remains_message(root))
    check_safe(root)
    if state.kind == "legacy" and adopt:
        claim(root)
    layout = Layout(root)
    check_folders(layout)
    check_kept(layout)
    return layout


def check_folders(layout: Layout) -> None:
    """A link at the name of one of the cache's folders is refused (:func:`not_ours`):
    builds, clones and store entries would be written wherever it points. ``kept/``,
    ``versions/`` and ``wheels/`` are vetted where they are made, on need."""
    for sub in (layout.templates, layout.clones, layout.tmp, layout.bytecode):
        if os.path.islink(sub):
            raise not_ours(sub, "folder")


def foreign_message(path: Path, why: str) -> str:
    return (
        f"cache dir {shown(path)} is not a pytest-cowenv cache ({why}): nothing in it is "
        "touched; choose an empty or new cache directory, or a subdirectory such as "
        f"{shown(path / 'pytest-cowenv')}"
    )


def remains_message(path: Path) -> str:
    return (
        f"cache dir {shown(path)} holds what is left of a pytest-cowenv cache whose marker "
        f"{marker.MARKER} was removed (`rm -rf` cannot remove read-only btrfs templates): "
        "remove it with `pytest-cowenv clean --all` pointed at it, or choose another cache "
        "directory"
    )


def check_kept(layout: Layout) -> None:
    """``kept/`` is made on first need; one that someone else made is refused like the root."""
    kept = layout.root / "kept"
    # A link there is never followed by what deletes or keeps (see clone/_remove.py).
    if kept.is_dir() and not kept.is_symlink():
        check_safe(kept, parents=False)


def check_safe(path: Path, *, parents: bool = True) -> None:
    """A cache owned by someone else, or writable by others without the sticky bit, is
    refused; so is one whose parents would let someone else replace it (``parents``).

    Group-writable is as bad as world-writable, except for a user private group (one that
    nobody else is in, as most Linux distributions give each user with umask 002).
    """
    if not hasattr(os, "getuid"):  # pragma: no cover - Windows relies on ACLs
        return
    st = path.stat()
    if st.st_uid != os.getuid():
        raise CacheDirError(
            f"cache dir {shown(path)} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}): "
            "a shared cache could be poisoned; use a directory of your own"
        )
    others = _writable_by_others(st)
    if others:
        fix = "o-w" if others == "everyone" else "g-w"
        raise CacheDirError(
            f"cache dir {shown(path)} is writable by {others} without the sticky bit: "
            f"run `chmod {fix} {shown(path)}` or choose another cache directory"
        )
    if parents:
        for parent, pst in _ancestors(path):
            _check_parent(path, parent, pst)


def _writable_by_others(st: os.stat_result) -> str:
    """Who besides the owner may rename entries of a directory: "" (nobody), "everyone" or
    "its group (NAME)"."""
    if st.st_mode & stat.S_ISVTX:
        return ""
    if st.st_mode & stat.S_IWOTH:
        return "everyone"
    if st.st_mode & stat.S_IWGRP and not _private_group(st.st_gid, os.getuid()):
        return f"its group ({_group_name(st.st_gid)})"
    return ""


def _check_parent(path: Path, parent: str, st: os.stat_result) -> None:
    if st.st_uid not in (0, os.getuid()):
        raise CacheDirError(
            f"cache dir {shown(path)}: its parent {shown(parent)} belongs to uid {st.st_uid}, "
            "who could replace the cache with another; choose a cache directory whose parents "
            "belong to you or to root"
        )
    others = _writable_by_others(st) if stat.S_ISDIR(st.st_mode) else ""
    if others:
        fix = "o-w" if others == "everyone" else "g-w"
        raise CacheDirError(
            f"cache dir {shown(path)}: its parent {shown(parent)} is writable by {others} "
            "without the sticky bit, so others could replace the cache with another: run "
            f"`chmod {fix} {shown(parent)}` or choose another cache directory"
        )


def _ancestors(path: Path) -> list[tuple[str, os.stat_result]]:
    """Every directory above ``path``, as written and as resolved, up to ``/``; a symbolic
    link on the way counts too (whoever owns it can point it elsewhere)."""
    seen: dict[str, os.stat_result] = {}
    for start in (os.path.abspath(path), os.path.realpath(path)):
        here = start
        while True:
            parent = os.path.dirname(here)
            if parent == here:
                break
            here = parent
            if here not in seen:
                lst = os.lstat(here)
                if stat.S_ISLNK(lst.st_mode):  # where it points is on the resolved chain
                    seen[f"{here} (a symbolic link)"] = lst
                else:
                    seen[here] = lst
    return list(seen.items())


@functools.cache
def _private_group(gid: int, uid: int) -> bool:
    """True if ``uid`` is the one and only member of group ``gid`` (primary or listed)."""
    try:
        import grp
        import pwd

        group, user = grp.getgrgid(gid), pwd.getpwuid(uid)
        everyone = pwd.getpwall()
    except (ImportError, KeyError):
        return False
    if any(member != user.pw_name for member in group.gr_mem):
        return False
    if any(other.pw_gid == gid and other.pw_uid != uid for other in everyone):
        return False
    return user.pw_gid == gid or user.pw_name in group.gr_mem


def _group_name(gid: int) -> str:
    try:
        import grp

        return grp.getgrgid(gid).gr_name
    except (ImportError, KeyError):
        return f"gid {gid}"

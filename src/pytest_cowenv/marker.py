"""Which directories are caches of ours: the marker files, and a cache of the previous version.

A cache root we create holds ``CACHEDIR.TAG`` (https://bford.info/cachedir/, so that backup
tools skip it) and our own marker ``MARKER``, which records the cache format. Everything that
deletes under a root first asks :func:`classify`: a non-empty directory without our marker is
somebody else's, and nothing in it is touched.

A leaf module: the plugin asks it at start-up, so it imports nothing of the core (only the
leaf ``_names``, whose patterns name this version's entries).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import uuid
from typing import NamedTuple, Optional

from ._names import KEY, LISTING, LISTING_TMP, META_TMP, WHEEL_ENTRY, Pattern, is_generation

CACHEDIR_TAG = "CACHEDIR.TAG"
TAG_SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"
TAG_TEXT = (
    f"{TAG_SIGNATURE}\n"
    "# This file is a cache directory tag created by pytest-cowenv.\n"
    "# For information about cache directory tags, see https://bford.info/cachedir/\n"
)
MARKER = "pytest-cowenv-cache.json"
CACHE_FORMAT = 1  # the layout of a cache root; a reader refuses a format it does not know
_MARKER_TMP = Pattern(r"\.pytest-cowenv-cache\.\d+\.[0-9a-f]{8}\.tmp")

# What the previous version (no marker) made, by exact name. Such a cache is adopted only
# when its root holds all four folders it always created and every entry, in the root and
# one level down, is one of these: a look-alike (`tmp/notes`, `templates/a.json`) is foreign.
_RUN = r"run-\d+-\d+-[0-9a-f]{6}"
_LEGACY_DIRS = ("templates", "clones", "tmp", "pyc")
_LEGACY = {
    "": Pattern(r"(templates|clones|tmp|pyc|kept|\.cowenv-probe-\w+)/|fs-probe\.json(\.\d+\.tmp)?"),
    "templates": Pattern(
        rf"{KEY}/|{KEY}\.(json|lock|inuse|owner)|\.{KEY}\.json\.\d+\.tmp|\.cowenv-probe-\w+/"
    ),
    "clones": Pattern(rf"{_RUN}/"),
    "tmp": Pattern(rf"{KEY}\.\d+\.[0-9a-f]{{8}}/"),
    "kept": Pattern(rf"{_RUN}-[A-Za-z0-9_.]+-\d+/"),
    "pyc": Pattern(r"[A-Za-z0-9_.-]+-[0-9a-f]{8}/"),  # <cache_tag>-<magic number>
}


# What a cache of this version holds under templates/ besides the previous version's names:
# generations (`<key>.<n>/` and their side files, `_names.is_generation`) and their metadata
# being written. A root without our marker whose every entry is one of these names is what
# `rm -rf` leaves of a cache (it removes the marker, then fails on read-only btrfs templates):
# "remains", which only `clean --all` opens, to remove it.


class RootState(NamedTuple):
    """What a directory is to us. ``kind``: "missing", "empty", "ours", "legacy", "remains"
    or "foreign"; ``why``: for "foreign", what shows it is not ours (one line)."""

    kind: str
    why: str = ""


def classify(root: str) -> RootState:
    """Look at ``root`` without changing anything."""
    try:
        st = os.stat(root)  # a link to a cache is fine: who may swap it is store.check_safe's
    except FileNotFoundError:
        return RootState("missing")
    if not stat.S_ISDIR(st.st_mode):
        return RootState("foreign", "it is not a directory")
    names = os.listdir(root)
    if MARKER in names:
        return _marked(root)
    if all(_MARKER_TMP.fullmatch(n) or n == CACHEDIR_TAG for n in names):
        # Our marker being written, or nothing: a concurrent start-up may be marking it.
        tag_only = CACHEDIR_TAG in names and not _our_tag(os.path.join(root, CACHEDIR_TAG))
        if tag_only:
            return RootState("foreign", f"its {CACHEDIR_TAG} was not made by pytest-cowenv")
        return RootState("empty")
    stranger = _first_stranger(root, names)
    if stranger is None:
        return RootState("legacy")
    if _first_stranger(root, names, remains=True) is None and _has_generation(root):
        return RootState("remains")
    return RootState("foreign", f"it holds {stranger} and no {MARKER}")


def _marked(root: str) -> RootState:
    path = os.path.join(root, MARKER)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        try:
            data = json.loads(os.read(fd, 4096))
        finally:
            os.close(fd)
        fmt = data["format"]
    except (OSError, ValueError, KeyError, TypeError):
        return RootState("foreign", f"its {MARKER} is not a pytest-cowenv marker")
    if fmt != CACHE_FORMAT:
        why = f"its {MARKER} says cache format {fmt!r}; this pytest-cowenv reads {CACHE_FORMAT}"
        return RootState("foreign", why)
    return RootState("ours")


def _our_tag(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().rstrip("\n") == TAG_SIGNATURE and "pytest-cowenv" in f.read(200)
    except OSError:
        return False


def _first_stranger(root: str, names: list[str], *, remains: bool = False) -> Optional[str]:
    """What shows that the previous version did not make this (``'sub/name'``), or None.
    With ``remains``: what shows that no version made it, whichever of its folders are left."""
    for name in sorted(names):
        shown = _shown(root, name)
        if remains and shown == "versions/":
            sub = os.path.join(root, name)
            for child in sorted(os.listdir(sub)):
                if not (LISTING.match(child) or LISTING_TMP.match(child)) or _shown(
                    sub, child
                ).endswith("/"):
                    return repr(f"{name}/{_shown(sub, child)}")
            continue  # release listings of versions(), kept in versions/
        if remains and shown == "wheels/":
            sub = os.path.join(root, name)
            for child in sorted(os.listdir(sub)):
                match, child_shown = WHEEL_ENTRY.match(child), _shown(sub, child)
                if match is None or child_shown.endswith("/") == bool(match["lock"]):
                    return repr(f"{name}/{child_shown}")
            continue  # wheels of local projects (_wheelcache): `<key>/` and `<key>.lock`
        if not _LEGACY[""].fullmatch(shown) and not (remains and name == CACHEDIR_TAG):
            return repr(shown)
        if shown.endswith("/") and name in _LEGACY:
            sub = os.path.join(root, name)
            for child in sorted(os.listdir(sub)):
                child_shown = _shown(sub, child)
                if _LEGACY[name].fullmatch(child_shown):
                    continue
                if remains and name == "templates" and _of_this_version(child_shown):
                    continue
                return repr(f"{name}/{child_shown}")
    if remains:
        return None
    # Its header wrote a probe memo in every run, also one that never made a cache.
    made = [name for name in (*_LEGACY_DIRS, "kept") if name in names]
    if made and len(made) < len(_LEGACY_DIRS):
        missing = next(name for name in _LEGACY_DIRS if name not in names)
        return f"{made[0]}/ but no {missing}/"
    return None


def _has_generation(root: str) -> bool:
    """Whether ``templates/`` holds a template generation (what `rm -rf` cannot remove)."""
    try:
        names = os.listdir(os.path.join(root, "templates"))
    except OSError:
        return False
    return any(is_generation(name, is_dir=True) for name in names)


def _of_this_version(shown: str) -> bool:
    """Whether a name under templates/ (``name/`` for a directory) is one this version makes."""
    name = shown.rstrip("/")
    return is_generation(name, is_dir=shown.endswith("/")) or META_TMP.match(name) is not None


def _shown(parent: str, name: str) -> str:
    """``name/`` for a real directory (never a link to one), else ``name``."""
    try:
        is_dir = stat.S_ISDIR(os.lstat(os.path.join(parent, name)).st_mode)
    except OSError:
        is_dir = False
    return f"{name}/" if is_dir else name


def mark(root: str) -> None:
    """Write our marker (atomically: a concurrent reader sees none or all of it), then the tag.

    Raises OSError if ``root`` cannot be written; an existing marker is left as it is.
    """
    data = json.dumps({"format": CACHE_FORMAT, "created_by": "pytest-cowenv"}) + "\n"
    tmp = os.path.join(root, f".pytest-cowenv-cache.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    write_new_file(tmp, data.encode())
    try:
        os.link(tmp, os.path.join(root, MARKER))
    except FileExistsError:
        pass  # marked meanwhile by another process
    finally:
        os.unlink(tmp)
    ensure_tag(root)


def ensure_tag(root: str) -> None:
    """Put back ``CACHEDIR.TAG`` if it is missing (a user may have removed it)."""
    with contextlib.suppress(FileExistsError):
        write_new_file(os.path.join(root, CACHEDIR_TAG), TAG_TEXT.encode())


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


def write_new_file(path: str, data: bytes, *, sync: bool = False) -> None:
    """Create ``path`` with ``data``; never write through a file or link already there
    (someone who can write in the directory could have planted one). With ``sync``, the
    data is on disk before this returns. A failed write leaves no file behind."""
    fd = os.open(path, _NEW_FILE | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0), 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)

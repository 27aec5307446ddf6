"""Wheels of local projects, built once per cache and shared by every template that installs
them (templates that differ only in their other requirements build the same project alike).

``wheels/<key>/`` holds one wheel and ``wheel.json`` (its file name, size and sha256); it is
published by renaming a finished build folder, so it is complete or absent. ``wheels/<key>.lock``
makes one builder per key among threads and processes; it stays, like a template's build lock
(see ``maintenance.remove_template``). A template build gets a hard link to the wheel (a copy
where links fail) in its own build folder, checked against the recorded hash: an entry removed
meanwhile (``prune``) does not touch it, and a damaged one is rebuilt, never installed.

The key is everything a build of the same sources may differ by: their content hash (the one
the template key already took), what git says of them (backends that take the version from
git), the interpreter, the index options and installer variables (build isolation fetches the
backend from the index), and the builder (uv's version, or pip's). A failed build leaves
nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from ._atomic import BuildLock
from ._install import IndexOptions, build_wheel, installer_identity, resolver_environment
from ._names import BUILD_DIR, LEGACY_BUILD_DIR
from ._owner import lock_dir
from .clone import remove_tree
from .errors import CacheDirError, LockTimeoutError, TemplateBuildError, shown
from .spec import Interpreter
from .store import Layout, check_safe

FORMAT = 1
META = "wheel.json"  # in a wheel's folder, beside the wheel
_CHUNK = 1 << 20


def wheel_key(project: Path, content: str, interp: Interpreter, index: IndexOptions) -> str:
    """The cache key of the wheel built from ``project``, whose sources hash to ``content``
    (``spec.content_hash``), with ``interp`` and ``index``."""
    payload = {
        "format": FORMAT,
        "content": content,
        "vcs": vcs_state(project),
        "python": interp._asdict(),
        "index": index._asdict(),
        "builder": installer_identity(),
        "resolver_env": resolver_environment(),
    }
    raw = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(b"wheel\0" + raw).hexdigest()[:24]


def vcs_state(project: Path) -> Optional[str]:
    """``git describe`` of a project that is a git checkout (the build sees its repository,
    see ``_install.link_vcs``): a new commit or tag may change the version it builds. None
    for a project without ``.git``."""
    if not os.path.lexists(project / ".git"):
        return None
    try:
        out = subprocess.run(
            ["git", "describe", "--tags", "--long", "--always"],
            cwd=project,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"git failed: {type(exc).__name__}"
    return out.stdout.strip() if out.returncode == 0 else f"git failed: {out.returncode}"


class WheelCache:
    """Finds or builds the wheels of local projects under one cache root."""

    def __init__(self, layout: Layout, lock_timeout: float) -> None:
        self.layout = layout
        self.lock_timeout = lock_timeout
        self.built: list[str] = []  # keys this process built

    def wheel(
        self,
        project: Path,
        content: str,
        interp: Interpreter,
        index: IndexOptions,
        out: Path,
        give_up: Optional[threading.Event] = None,
    ) -> tuple[str, Path]:
        """The key and a checked copy in ``out`` (a new folder) of the wheel of ``project``
        (see :func:`wheel_key`), built now if the cache has no sound one. Waiting for another
        process's build of it stops with :class:`TemplateBuildError` once ``give_up`` is set."""
        key = wheel_key(project, content, interp, index)
        self._make_wheels_dir()
        found = self._take(key, out)
        if found is not None:
            return key, found
        with self._locked(key, project, give_up):
            found = self._take(key, out)  # another process may have built it meanwhile
            if found is None:
                self._discard(key)  # absent, or damaged: never trusted
                self._build(key, project, interp.executable, index)
                self.built.append(key)
                found = self._take(key, out)
        if found is None:
            raise TemplateBuildError(
                f"{shown(project)}: the wheel built into {shown(self.layout.wheel_entry(key))} "
                "fails its check at once; is something else writing in the cache directory?"
            )
        return key, found

    def _take(self, key: str, out: Path) -> Optional[Path]:
        """A link to (or copy of) the wheel of ``key`` in ``out`` if its entry is complete and
        the wheel hashes as recorded, else None (and nothing left in ``out``)."""
        entry = self.layout.wheel_entry(key)
        try:
            if not stat.S_ISDIR(os.lstat(entry).st_mode):
                return None
            meta = _read_meta(entry / META)
            name = meta["file"] if isinstance(meta, dict) else None
            if not isinstance(name, str) or not name.endswith(".whl") or os.sep in name:
                return None
            out.mkdir(parents=True, exist_ok=True)
            target = out / name
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            try:
                os.link(entry / name, target, follow_symlinks=False)
            except OSError:  # a filesystem without hard links, or none across it
                _copy(entry / name, target)
            if _digest(target) != (meta.get("size"), meta.get("sha256")):
                target.unlink()
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return target

    @contextlib.contextmanager
    def _locked(
        self, key: str, project: Path, give_up: Optional[threading.Event]
    ) -> Iterator[None]:
        lock = BuildLock(self.layout.wheel_lock(key))
        if not lock.acquire(self.lock_timeout, give_up):
            if give_up is not None and give_up.is_set():
                raise TemplateBuildError(f"wheel of {shown(project)}: no longer wanted")
            raise LockTimeoutError(
                f"wheel of {shown(project)}: lock {self.layout.wheel_lock(key)} held by another "
                f"process for more than {self.lock_timeout:g} s; wait for that build, stop it, "
                "or raise PYTEST_COWENV_LOCK_TIMEOUT"
            )
        try:
            yield
        finally:
            lock.release()

    def _make_wheels_dir(self) -> None:
        """``wheels/``, made on first need and vetted like the cache's other folders (a link
        there is refused: nothing of ours is reached through one)."""
        wheels = self.layout.wheels
        try:
            wheels.mkdir(mode=0o700, exist_ok=True)
            real = stat.S_ISDIR(os.lstat(wheels).st_mode)
        except OSError as exc:
            raise CacheDirError(
                f"cache dir {shown(self.layout.root)}: cannot create wheels/ ({exc.strerror}); "
                "fix its permissions or choose another cache directory"
            ) from None
        if not real:
            raise CacheDirError(
                f"cache dir {shown(self.layout.root)}: wheels/ is not a directory; remove "
                f"{shown(wheels)} or choose another cache directory"
            )
        check_safe(wheels, parents=False)

    def _discard(self, key: str) -> None:
        """Remove a damaged entry of ``key`` and what dead builders of it left (lock held:
        every builder of ``key`` holds it, so its build folders are theirs)."""
        root = self.layout.root
        remove_tree(self.layout.wheel_entry(key), root=root)
        for leftover in self.layout.tmp.glob(f"{key}.*"):
            if BUILD_DIR.match(leftover.name) or LEGACY_BUILD_DIR.match(leftover.name):
                with contextlib.suppress(OSError):
                    remove_tree(leftover, root=root)

    def _build(self, key: str, project: Path, python: str, index: IndexOptions) -> None:
        """Build the wheel in a build folder of our own, check it, record its hash and rename
        its folder into place as the entry of ``key`` (lock held)."""
        while True:
            work = self.layout.new_build_dir(key)
            work.mkdir(parents=True)
            fd = lock_dir(str(work))
            if fd is not None:  # else a cleaner took it first: another name
                break
        try:
            built = build_wheel(project, work, python, index)
            check_wheel(built)
            entry = work / "entry"  # the wheel and its record only (a builder adds others)
            entry.mkdir()
            wheel = entry / built.name
            os.rename(built, wheel)
            size, digest = _digest(wheel)
            meta = {"format": FORMAT, "file": wheel.name, "size": size, "sha256": digest}
            meta["project"] = str(project)
            (entry / META).write_text(json.dumps(meta), encoding="utf-8")
            for path in (wheel, entry / META):  # on disk before it is published
                _fsync(path)
            os.rename(entry, self.layout.wheel_entry(key))
        except OSError as exc:
            raise TemplateBuildError(f"{shown(project)}: caching its wheel failed: {exc}") from None
        finally:
            with contextlib.suppress(OSError):
                remove_tree(work, root=self.layout.root)
            os.close(fd)


def check_wheel(wheel: Path) -> None:
    """A wheel is a zip archive with a ``.dist-info/RECORD``: else TemplateBuildError."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        why = f"{shown(wheel)}: the build made no readable wheel ({exc})"
        raise TemplateBuildError(why) from None
    if not any(n.count("/") == 1 and n.endswith(".dist-info/RECORD") for n in names):
        raise TemplateBuildError(f"{shown(wheel)}: the build made a wheel without a RECORD")


def _read_meta(path: Path) -> Any:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        return json.loads(f.read(1 << 16))


def _digest(path: Path) -> tuple[int, str]:
    """Size and sha256 (hex) of the file ``path``, never through a link."""
    h, size = hashlib.sha256(), 0
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def _copy(source: Path, target: Path) -> None:
    fd = os.open(source, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as src, open(target, "xb") as dst:
        while chunk := src.read(_CHUNK):
            dst.write(chunk)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

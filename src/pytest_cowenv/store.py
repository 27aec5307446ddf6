"""The cache directory: where it is, whether it is safe, and how it is laid out."""

from __future__ import annotations

import os
import re
import stat
import sys
import uuid
from pathlib import Path
from typing import Optional, Union

from ._owner import TOKEN, current
from .errors import CacheDirError

ENV_DIR = "PYTEST_COWENV_DIR"

# Names that carry their owner (see _owner.Owner.token): a process's clone folder under
# `clones/`, a build folder under `tmp/`, an unfinished file (see write_atomically).
RUN_DIR = re.compile(rf"^run-{TOKEN}-[0-9a-f]{{6}}$")
BUILD_DIR = re.compile(rf"^[0-9a-f]{{24}}\.{TOKEN}\.[0-9a-f]{{8}}$")
TMP_FILE = re.compile(rf"^\..+\.{TOKEN}\.tmp$")
# The same names as earlier versions wrote them: only the pid (and start ticks of run folders).
LEGACY_RUN_DIR = re.compile(r"^run-(?P<pid>\d+)-(?P<ticks>\d+)-[0-9a-f]+$")
LEGACY_BUILD_DIR = re.compile(r"^[0-9a-f]{24}\.(?P<pid>\d+)\.[0-9a-f]+$")
LEGACY_TMP_FILE = re.compile(r"^\..+\.(?P<pid>\d+)\.tmp$")
# Clean-up touches only names that match these exactly (with the ones above): a look-alike
# a user put there (`templates/notes/`, `templates/a.json`, `kept/todo.txt`) stays.
KEY = r"[0-9a-f]{24}"  # spec.key()
# Under templates/ (see Layout.template): a generation's tree, metadata, in-use lock or
# hard-linked mark, or the key's build lock or its owner note (`keyfile`).
TEMPLATE_ENTRY = re.compile(
    rf"^(?P<key>{KEY})(?:(?:\.(?P<gen>[1-9][0-9]*))?(?P<side>\.json|\.inuse|\.linked)?"
    r"|(?P<keyfile>\.lock|\.owner))$"
)
# Under templates/: metadata being written (its owner is judged by TMP_FILE or LEGACY_TMP_FILE;
# a generation number may follow the key).
META_TMP = re.compile(rf"^\.{KEY}(?:\.\d+)?\.json\.[0-9a-f-]+\.tmp$")
# Under kept/: `<run folder>-<env name>-<n>` (see CowEnvSession.kept_path).
_ANY_RUN = r"run-[0-9a-f-]+-[0-9a-f]{6}"
KEPT = re.compile(rf"^{_ANY_RUN}-[A-Za-z0-9_.]+-\d+$")
# Files of ours directly in the root (fs-probe.json: report.PROBE_MEMO), which `clean --all`
# removes with the rest.
ROOT_FILES = ("fs-probe.json", "CACHEDIR.TAG")


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
    """Create (if needed) and vet the cache root; refuse one that others could poison."""
    path = Path(root).expanduser() if root else default_root()
    if root and not path.parent.is_dir():
        raise CacheDirError(
            f"cache dir {path}: its parent {path.parent} does not exist (create it, or pick "
            "another --cowenv-dir)"
        )
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise CacheDirError(f"cache dir {path}: cannot create it ({exc.strerror})") from None
    check_safe(path)
    layout = Layout(path)
    try:
        for sub in (layout.templates, layout.clones, layout.tmp, layout.bytecode):
            sub.mkdir(exist_ok=True)
            # In a shared (sticky) root, someone else could have made these first.
            check_safe(sub)
    except OSError as exc:
        raise CacheDirError(
            f"cache dir {path}: not writable ({exc.strerror}); pick another --cowenv-dir"
        ) from None
    for sub in (layout.templates, layout.clones, layout.tmp, layout.bytecode):
        if not os.access(sub, os.W_OK | os.X_OK):
            raise CacheDirError(
                f"cache dir {path}: {sub.name}/ is not writable; fix its permissions or pick "
                "another --cowenv-dir"
            )
    return layout


def check_safe(path: Path) -> None:
    """A cache owned by someone else, or writable by all without the sticky bit, is refused."""
    if not hasattr(os, "getuid"):  # pragma: no cover - Windows relies on ACLs
        return
    st = path.stat()
    if st.st_uid != os.getuid():
        raise CacheDirError(
            f"cache dir {path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}): "
            "a shared cache could be poisoned; use a directory of your own"
        )
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise CacheDirError(
            f"cache dir {path} is writable by everyone without the sticky bit: "
            f"run `chmod o-w {path}` or use another directory"
        )

"""The lifecycle of template generations (see ``store.Layout``): which are superseded, and
removing one only once no process holds it.

Below ``template.py``, which removes its own dead builds and collects superseded generations,
and ``maintenance.py``, which lists, prunes and cleans.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

from ._atomic import open_ours
from .clone import remove_tree
from .errors import CacheDirError
from .store import Layout


def superseded(layout: Layout, key: str, gen: int, gens: list[int]) -> Optional[int]:
    """The newest generation of ``key`` after ``gen`` that is complete, if any."""
    for newer in reversed(gens):
        if newer > gen and layout.meta(key, newer).exists():
            return newer
    return None


@contextlib.contextmanager
def unclaimed(path: Path) -> Iterator[bool]:
    """Hold ``path`` exclusively while nobody holds it shared: users wait until we are done.

    Yields False (holding nothing) if a process has it: the template is in use.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: prune relies on age only
        yield True
        return
    with os.fdopen(open_ours(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def lock_holders(path: Path) -> list[int]:
    """Pids holding a lock on ``path``, from ``/proc/locks`` (Linux; [] elsewhere)."""
    try:
        st = os.stat(path)
        with open("/proc/locks", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    # Match the inode only: btrfs reports another device number there than stat() does.
    # Then confirm that the process has this very file open.
    pids = set()
    for line in lines:
        parts = line.split()
        if "->" in parts or len(parts) < 6 or not parts[4].isdigit():
            continue  # waiters, and lines of a format we do not know
        if parts[5].rsplit(":", 1)[-1] == str(st.st_ino) and _has_open(int(parts[4]), st):
            pids.add(int(parts[4]))
    return sorted(pids)


def _has_open(pid: int, st: os.stat_result) -> bool:
    fd_dir = f"/proc/{pid}/fd"
    with contextlib.suppress(OSError):
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                if os.path.samestat(os.stat(os.path.join(fd_dir, fd)), st):
                    return True
    return False


def in_use_reason(layout: Layout, key: str, gen: int) -> str:
    pids = lock_holders(layout.in_use(key, gen))
    return "in use by " + (", ".join(f"pid {p}" for p in pids) if pids else "another process")


# -- removing ------------------------------------------------------------------------------


def remove_generation(
    layout: Layout,
    key: str,
    gen: int,
    *,
    still_wanted: Optional[Callable[[], Optional[str]]] = None,
) -> Optional[str]:
    """Remove generation ``gen`` of ``key`` unless a process holds it; return why not, or None
    once removed. The in-use lock is held exclusively during the removal, so a process
    arriving meanwhile waits and then finds the generation gone. ``still_wanted`` is asked
    again under the lock. Without the key's build lock, only for a generation that no builder
    can be at work on: a superseded or an abandoned one (see ``remove_template``)."""
    try:
        return _remove_unclaimed(layout, key, gen, still_wanted)
    except CacheDirError as exc:  # a link where the in-use lock should be: left alone
        return str(exc)


def _remove_unclaimed(
    layout: Layout, key: str, gen: int, still_wanted: Optional[Callable[[], Optional[str]]]
) -> Optional[str]:
    with unclaimed(layout.in_use(key, gen)) as free:
        if not free:
            return in_use_reason(layout, key, gen)
        reason = still_wanted() if still_wanted else None
        if reason:
            return reason
        # Metadata first: once it is gone no reader trusts the tree, even half removed.
        remove_tree(layout.meta(key, gen), root=layout.root)
        remove_tree(layout.template(key, gen), root=layout.root)
        remove_tree(layout.linked(key, gen), root=layout.root)
        # The lock file last, while still held: waiters notice it unlinked and look again.
        remove_tree(layout.in_use(key, gen), root=layout.root)
        return None


def collect_generations(layout: Layout, key: str) -> list[Path]:
    """Remove the generations of ``key`` that a newer complete one supersedes and that no
    process holds; return their paths."""
    removed = []
    gens = layout.generations_of(key)
    for gen in gens:
        if superseded(layout, key, gen, gens) is not None:
            with contextlib.suppress(OSError):
                if remove_generation(layout, key, gen) is None:
                    removed.append(layout.template(key, gen))
    return removed

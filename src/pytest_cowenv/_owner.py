"""Process liveness: who owns a folder or file under the cache, and whether it is provably gone.

A leaf module: it imports nothing of pytest-cowenv. Every run folder (``clones/``), build
folder (``tmp/``) and unfinished metadata file carries its owner in its name (see
:meth:`Owner.token`): pid, start time in clock ticks, PID namespace, boot and host. Live
folders are also locked (``flock``) by their owner for as long as it uses them.

Only an owner that is provably dead may lose what it owns (:func:`provably_dead`):

- another boot of this host: gone (nothing survives a reboot);
- the same boot (the same kernel, whatever the host name or container): alive while it holds
  its folder's lock; in our own PID namespace, also while its pid runs with the same start time;
- anything else (another host, an unknown boot): not provably dead, kept.

No wall clock is consulted: a clock step cannot make a live owner look dead.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import socket
from collections.abc import Iterator
from typing import NamedTuple, Optional

UNKNOWN_BOOT = "0" * 16
# Errors of flock on a filesystem that has no working locks for this file: the lock then
# proves nothing either way.
_NO_LOCKS = (errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)
TOKEN = r"(?P<pid>\d+)-(?P<ticks>\d+)-(?P<pidns>\d+)-(?P<boot>[0-9a-f]{16})-(?P<host>[0-9a-f]{8})"
_TOKEN = re.compile(TOKEN)


class Owner(NamedTuple):
    """A process, named well enough to tell, from another process, whether it still runs."""

    pid: int
    ticks: int  # start time in clock ticks after boot (0: unknown)
    pidns: int  # inode of its PID namespace (0: unknown)
    boot: str  # 16 hex digits of the kernel's boot id (UNKNOWN_BOOT: unknown)
    host: str  # 8 hex digits of a hash of the host name and machine id

    def token(self) -> str:
        """The owner as a name part: ``<pid>-<ticks>-<pidns>-<boot>-<host>``."""
        return f"{self.pid}-{self.ticks}-{self.pidns}-{self.boot}-{self.host}"

    @classmethod
    def parse(cls, match: re.Match[str]) -> Owner:
        """The owner from a match of a pattern that contains :data:`TOKEN`."""
        return cls(
            int(match["pid"]), int(match["ticks"]), int(match["pidns"]), match["boot"],
            match["host"],
        )  # fmt: skip


def from_token(text: str) -> Optional[Owner]:
    match = _TOKEN.fullmatch(text)
    return Owner.parse(match) if match else None


_current: dict[int, Owner] = {}


def current() -> Owner:
    """This process (computed again after a fork)."""
    pid = os.getpid()
    found = _current.get(pid)
    if found is None:
        found = Owner(pid, process_start_ticks(pid) or 0, _pid_namespace(), _boot(), _host())
        _current.clear()
        _current[pid] = found
    return found


def process_start_ticks(pid: int) -> Optional[int]:
    """The start time of ``pid`` in clock ticks (Linux), to tell a live pid from a reused one.
    None if there is no such process, or only its zombie (a killed xdist worker stays one
    until init reaps it, and will never touch its folders again)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data.rsplit(b")", 1)[1].split()
    return None if fields[0] in (b"Z", b"X") else int(fields[19])


def alive(pid: int, ticks: Optional[int] = None) -> bool:
    """Whether ``pid`` runs in our PID namespace (and, given ``ticks``, started then)."""
    if os.path.isdir("/proc/self"):
        found = process_start_ticks(pid)
        return found is not None and ticks in (None, found)
    try:  # pragma: no cover - no /proc (macOS): a reused pid counts as alive
        os.kill(pid, 0)
    except ProcessLookupError:  # pragma: no cover
        return False
    except PermissionError:  # pragma: no cover
        return True
    return True  # pragma: no cover


def provably_dead(owner: Owner, held: Optional[bool] = None) -> bool:
    """Whether ``owner`` is gone for sure. ``held``: whether its folder's lock is held now
    (None: no lock to look at, or locks that do not work there)."""
    here = current()
    if owner.boot != here.boot:
        # Boot ids are random per boot: a different one on this host means a reboot since.
        return owner.host == here.host and UNKNOWN_BOOT not in (owner.boot, here.boot)
    if owner.boot == UNKNOWN_BOOT and owner.host != here.host:
        return False  # pragma: no cover - no boot id (macOS): another host is out of sight
    if held:
        return False
    if owner.pidns == here.pidns:
        return not alive(owner.pid, owner.ticks)
    # Another PID namespace of this kernel (another container): its pids mean nothing here,
    # but its lock died with it.
    return held is False


def lock_dir(path: str) -> Optional[int]:
    """Open the directory ``path`` and lock it for as long as the descriptor stays open.

    Returns the descriptor, or None if ``path`` went away meanwhile (a cleaner proved an
    earlier owner of that name dead): the caller makes another. On a filesystem without
    working locks the directory is still opened, unlocked: then only the name's pid speaks.
    """
    import fcntl

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a cleaner holding it is about to delete it
    except OSError as exc:
        if exc.errno not in _NO_LOCKS:
            os.close(fd)
            raise
    try:
        same = os.path.samestat(os.stat(path, follow_symlinks=False), os.fstat(fd))
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def reaping(path: str, owner: Owner) -> Iterator[bool]:
    """Yields True, holding the lock of the directory ``path``, if ``owner`` is provably
    dead: a process making a folder of that name meanwhile waits, then sees it gone."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        yield False  # gone meanwhile, or not a directory we would delete
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held: Optional[bool] = False
        except BlockingIOError:
            held = True
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise
            held = None
        yield provably_dead(owner, held)
    finally:
        os.close(fd)


def _pid_namespace() -> int:
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return 0
    digits = re.sub(r"\D", "", link)
    return int(digits) if digits else 0


def _boot() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip().replace("-", "")
    except OSError:
        return UNKNOWN_BOOT
    return boot[:16] if re.fullmatch(r"[0-9a-f]{32}", boot) else UNKNOWN_BOOT


def _host() -> str:
    machine = ""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError):
            with open(path, encoding="ascii") as f:
                machine = f.read().strip()
            break
    raw = f"{socket.gethostname()}\0{machine}".encode()
    return hashlib.sha256(raw).hexdigest()[:8]

"""Byte-compile a template's ``site-packages``, reusing bytecode compiled for earlier templates.

Run by the template's own interpreter, so that the bytecode fits it::

    python -I -S _bytecode.py SITE_PACKAGES STORE [--behind PARENT_PID [--idle]]
    python -I -S _bytecode.py SITE_PACKAGES --rewrites [--behind PARENT_PID [--idle]]

Standard library only (Python 3.9+): the template has nothing else. Prints one JSON line of
counts and of the store entries the template uses. Each ``.pyc`` is *checked-hash* (PEP 552):
valid in a clone whatever its mtimes, and still correct when a test edits or reinstalls a
module in its clone (an unchecked pyc would keep serving the old code). Compiling is most of a
template's build time, and most templates share most of their sources, so compiled files are
kept in ``STORE`` by source hash.

The store is trusted only as far as it proves itself: every entry ends with an HMAC-SHA256, under
a secret only its owner can read (``STORE/secret``), of the source's SHA-256 and the pyc. An
entry that is torn, flipped or written by someone who lacks the secret fails the check, is
dropped and compiled afresh; it is never placed into a template.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import importlib.util
import json
import marshal
import os
import stat
import sys
from typing import Optional

# Flags word of a checked hash-based pyc (PEP 552): bit 0 "hash based", bit 1 "check source".
_CHECKED_HASH = 0b11
# Below this many files to compile, a process pool costs more than it saves.
_POOL_MIN = 64
MAC_SIZE = 32  # HMAC-SHA256 trailer of every entry
SECRET = "secret"  # STORE/secret: 32 random bytes, mode 0600
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)
_READ = os.O_RDONLY | _NOFOLLOW | _CLOEXEC | _BINARY
# O_EXCL | O_NOFOLLOW: a temp file is always new, never a file or link someone planted.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC | _BINARY


def sources(site: str) -> list[tuple[str, str]]:
    """(path, path relative to ``site``) of every ``.py`` file, outside ``__pycache__``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(site):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                found.append((path, os.path.relpath(path, site)))
    return found


def pyc_bytes(data: bytes, rel: str) -> bytes:
    """The pyc for source ``data``, or b"" if it does not compile (a py2 leftover, a template).

    The code's file name is the path relative to site-packages: importing fixes it up to the
    real path, and the bytes stay the same whatever directory the template was built in.
    """
    try:
        code = compile(data, rel, "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return b""
    header = importlib.util.MAGIC_NUMBER + _CHECKED_HASH.to_bytes(4, "little")
    return header + importlib.util.source_hash(data) + marshal.dumps(code)


def _read(path: str) -> Optional[bytes]:
    """The whole regular file at ``path`` (never through a symlink), or None."""
    try:
        fd = os.open(path, _READ)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def tmp_name(path: str) -> str:
    """The name under which this process writes ``path`` before renaming it into place:
    ``PATH.PID.8HEX.tmp`` (see ``_build.remove_leftovers``)."""
    return f"{path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"


def write_new(path: str, data: bytes) -> None:
    """Write ``path`` whole or not at all, for the builds that read the store while this one
    writes it. Not synced: a crash may still leave an entry torn or empty behind its name,
    and its MAC then fails, so it is dropped and compiled afresh (an fsync per entry would
    cost more than compiling)."""
    tmp = tmp_name(path)
    fd = os.open(tmp, _CREATE, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _secret_ok(data: Optional[bytes], path: str) -> bool:
    if data is None or len(data) != MAC_SIZE:
        return False
    if not hasattr(os, "getuid"):  # pragma: no cover - Windows relies on ACLs
        return True
    st = os.lstat(path)
    return st.st_uid == os.getuid() and not st.st_mode & 0o077


def store_secret(store_root: str) -> bytes:
    """The store's HMAC secret, made on first use. One not ours, or readable by others, is
    replaced (which drops every entry signed with it)."""
    path = os.path.join(store_root, SECRET)
    data = _read(path)
    if _secret_ok(data, path):
        assert data is not None
        return data
    tmp = tmp_name(path)
    fd = os.open(tmp, _CREATE, 0o600)
    try:  # a full disk fails the write or the fsync: the temp file goes all the same
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(MAC_SIZE))
            f.flush()
            os.fsync(f.fileno())
        if data is None and not os.path.lexists(path):
            with contextlib.suppress(FileExistsError):  # a builder beside us made one: use it
                os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    data = _read(path)
    if not _secret_ok(data, path):
        raise OSError(f"{path}: cannot make the bytecode store's secret")
    assert data is not None
    return data


def seal(secret: bytes, digest: str, pyc: bytes) -> bytes:
    """A store entry: ``pyc`` followed by its MAC, bound to the source's SHA-256."""
    return pyc + hmac.new(secret, bytes.fromhex(digest) + pyc, hashlib.sha256).digest()


def unseal(secret: bytes, digest: str, entry: bytes) -> Optional[bytes]:
    """The pyc in ``entry`` if its MAC proves it whole and ours, else None."""
    if len(entry) < MAC_SIZE:
        return None
    pyc, mac = entry[:-MAC_SIZE], entry[-MAC_SIZE:]
    expected = hmac.new(secret, bytes.fromhex(digest) + pyc, hashlib.sha256).digest()
    return pyc if hmac.compare_digest(mac, expected) else None


def place(src: str, pyc: bytes) -> None:
    """Write ``src``'s pyc beside it: directly, since no one reads a template being built."""
    if pyc:
        target = importlib.util.cache_from_source(src)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(pyc)


def compile_and_keep(job: tuple[str, str, str, str, bytes]) -> bool:
    """Compile one source, place its pyc and keep a sealed copy in the store; True if it
    compiled."""
    src, rel, _listed, stored, secret = job
    with open(src, "rb") as f:
        data = f.read()
    pyc = pyc_bytes(data, rel)
    place(src, pyc)
    if stored and own_dir(os.path.dirname(stored)):
        # The digest was of the bytes read before: seal what was compiled, not what was listed.
        write_new(stored, seal(secret, hashlib.sha256(data).hexdigest(), pyc))  # b"": no compile
    return bool(pyc)


def own_dir(path: str) -> bool:
    """Make the store's folder ``path`` if it is missing; False if a symbolic link stands at
    its name: not ours, so no entry is read or kept through it (the store is a cache)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path)
    return not os.path.islink(path)


def store_dir() -> str:
    """The store's folder for this interpreter's bytecode."""
    return f"{sys.implementation.cache_tag}-{importlib.util.MAGIC_NUMBER.hex()}"


def main(site: str, store_root: str, *, alone: bool = False) -> dict[str, object]:
    """Compile ``site``; ``alone``: in this process only (one core), never a pool."""
    secret = store_secret(store_root)
    store = os.path.join(store_root, store_dir())
    keep = own_dir(store)
    header = importlib.util.MAGIC_NUMBER + _CHECKED_HASH.to_bytes(4, "little")
    reused = failed = dropped = 0
    todo = []
    entries = set()
    for src, rel in sources(site):
        with open(src, "rb") as f:
            data = f.read()
        digest = hashlib.sha256(data).hexdigest()
        entries.add(digest)
        stored = os.path.join(store, digest[:2], digest[2:]) if keep else ""
        entry = _read(stored) if stored else None
        pyc = None if entry is None else unseal(secret, digest, entry)
        dropped += entry is not None and pyc is None
        # A kept pyc is used only if its header says it was compiled from exactly this source.
        if pyc is None or (pyc and pyc[:16] != header + importlib.util.source_hash(data)):
            todo.append((src, rel, digest, stored, secret))
            continue
        place(src, pyc)
        reused += 1
        failed += not pyc
    workers = min(os.cpu_count() or 1, len(todo) // _POOL_MIN) if not alone else 1
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor  # slow to import: only if needed

        init, args = _die_with_parent, (os.getpid(),)
        with ProcessPoolExecutor(workers, initializer=init, initargs=args) as pool:
            compiled = list(pool.map(compile_and_keep, todo, chunksize=16))
    else:
        compiled = [compile_and_keep(job) for job in todo]
    failed += compiled.count(False)
    return {
        "reused": reused,
        "compiled": len(todo),
        "failed": failed,
        "dropped": dropped,
        "store": store_dir(),
        "entries": sorted(entries),
    }


def rewrites(site: str) -> dict[str, object]:
    """Have the environment's pytest load its plugins once, in an empty folder, so that the
    assertion-rewritten bytecode it keeps beside each plugin module it rewrites
    (``__pycache__/NAME.TAG-pytest-VERSION.pyc``) is part of the template. Without it, every
    clone's first pytest rewrites (parses and compiles) its plugins afresh, where a reused
    virtual environment has them from its earlier runs. pytest checks each such file against
    its source's mtime and size, which every clone keeps; and it writes them only for modules
    inside the environment (a plugin's package), never beside the user's tests.

    Counts the files written; pytest's exit code does not matter (no tests: 5), and a plugin
    that fails to load only leaves its own modules out. Run after :func:`main`."""
    import site as site_module
    import tempfile

    # The outer run's options, plugins and coverage (pytest-cov's and coverage's .pth files
    # start measuring a process whose environment asks for it) are not the template's.
    for name in [k for k in os.environ if k.startswith(("PYTEST_", "COV_CORE_", "COVERAGE_"))]:
        del os.environ[name]
    site_module.addsitedir(site)  # what the environment's own interpreter sees (.pth files)
    before = set(_rewritten(site))
    with tempfile.TemporaryDirectory() as empty:
        with open(os.path.join(empty, "pytest.ini"), "w") as ini:
            ini.write("[pytest]\n")  # the root: nothing above the folder is read
        os.chdir(empty)
        saved = [os.dup(1), os.dup(2)]
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 1)
            os.dup2(null, 2)
            import pytest

            args = ["--collect-only", "-q", "-p", "no:cacheprovider", "--rootdir", empty, empty]
            with contextlib.suppress(Exception, SystemExit):
                pytest.main(args)
        except ImportError:
            pass
        finally:
            sys.stdout.flush()
            for fd, saved_fd in ((1, saved[0]), (2, saved[1])):
                os.dup2(saved_fd, fd)
                os.close(saved_fd)
            os.close(null)
            os.chdir(site)
    return {"rewritten": len(set(_rewritten(site)) - before)}


def _rewritten(site: str) -> list[str]:
    """pytest's rewritten bytecode under ``site``."""
    found = []
    for folder, dirs, files in os.walk(site):
        if os.path.basename(folder) == "__pycache__":
            found += [os.path.join(folder, f) for f in files if "-pytest-" in f]
            dirs.clear()
    return found


def behind(parent: int, *, idle: bool) -> None:
    """Compiling while tests run: they go first (the pool's workers inherit the priority); and
    on Linux, die with the process that started us, which removes our build folder. ``idle``:
    run only on a core nothing else wants (Linux's idle class, else the lowest niceness)."""
    if not (idle and _idle_class()) and hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(19 if idle else 10)
    _die_with_parent(parent)


def _idle_class() -> bool:
    """Whether this process now runs in Linux's idle scheduling class."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        return False
    return True


def _die_with_parent(parent: int) -> None:
    """On Linux, be killed when ``parent`` (the process that started us) dies. A pool worker
    needs it too: killed with its parent, a worker would wait for work forever, since the
    other workers hold the pipe it reads open."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died before we asked
            os._exit(1)


if __name__ == "__main__":
    options = sys.argv[3:]
    idle = "--idle" in options
    if "--behind" in options:
        behind(int(options[options.index("--behind") + 1]), idle=idle)
    if sys.argv[2] == "--rewrites":
        report = rewrites(sys.argv[1])
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        print(json.dumps(main(sys.argv[1], sys.argv[2], alone=idle)))

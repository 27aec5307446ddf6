"""Helpers for the reliability suite: real processes, real filesystems, honest checks.

Nothing here imports pytest_cowenv at module level: the suite must be able to watch the
plugin from the outside, as a user's CI does.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Optional

from _helpers import settle_btrfs, wait_for

# pytest's and xdist's variables of the outer run, which would make an inner run act like it.
OUTER_VARS = (
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
    "PYTEST_CURRENT_TEST",
    "PYTEST_XDIST_WORKER",
    "PYTEST_XDIST_WORKER_COUNT",
    "PYTEST_XDIST_TESTRUNUID",
    "PYTEST_COWENV_DIR",
    "PYTEST_COWENV_LINK_MODE",
    "PYTEST_COWENV_KEEP",
    "PYTEST_COWENV_POOL",
    "PIP_FIND_LINKS",
)


FS_VARS = {
    "btrfs": "COWENV_TEST_BTRFS",
    "xfs": "COWENV_TEST_XFS",
    "ext4": "COWENV_TEST_EXT4",
    "tmpfs": "COWENV_TEST_TMPFS",
    "small": "COWENV_TEST_SMALL",
    "smallbtrfs": "COWENV_TEST_SMALL_BTRFS",
}
FS_KINDS = {"small": "ext4", "smallbtrfs": "btrfs"}


def mount_of(name: str) -> Path:
    """The mount point of the real filesystem ``name``, or skip saying why it is missing."""
    import pytest

    from pytest_cowenv.fs import fs_type

    var = FS_VARS[name]
    root = os.environ.get(var)
    if not root or not os.path.isdir(root):
        pytest.skip(f'needs {var} (mount it: eval "$(bash scripts/cowfs.sh up)")')
    kind = FS_KINDS.get(name, name)
    if fs_type(root) != kind:
        pytest.skip(f"{var}={root} is {fs_type(root)}, not {kind}")
    return Path(root)


def inner_env(**extra: str) -> dict[str, str]:
    """The environment for an inner pytest run: offline-safe, free of the outer run's state."""
    env = {k: v for k, v in os.environ.items() if k not in OUTER_VARS}
    env["PIP_CONFIG_FILE"] = os.devnull  # the machine's pip.conf adds indexes and find-links
    env.update(extra)
    return env


def run_inner(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run an inner command (a script, the CLI) in :func:`inner_env`: output captured as
    text, no stdin; its exit code is the caller's to check."""
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env=inner_env(),
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )


def tree_digest(root: Path, skip: tuple[str, ...] = (), skip_dirs: tuple[str, ...] = ()) -> str:
    """Hash of a tree's names, kinds, modes, sizes, contents and symlink targets.

    Never follows symlinks (a venv's ``bin/python`` points at the base interpreter).
    Timestamps are left out: reading a file must not count as changing it. Contents of
    files named in ``skip`` are left out too, and directories named in ``skip_dirs`` whole.
    """
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs)
        rel_dir = os.path.relpath(dirpath, root)
        h.update(f"D {rel_dir} {os.lstat(dirpath).st_mode:o}\n".encode())
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(Path(dirpath, d))]):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.join(rel_dir, name)
            if os.path.islink(path):
                h.update(f"L {rel} -> {os.readlink(path)}\n".encode())
                continue
            h.update(f"F {rel} {st.st_mode:o}\n".encode())
            if name in skip:
                continue
            h.update(f"{st.st_size}\n".encode())
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def clone_digest(template: Path, sub: Path = Path(), skip_dirs: tuple[str, ...] = ()) -> str:
    """:func:`tree_digest` of ``sub`` in a fresh clone of ``template``, as a test gets it:
    outside btrfs a template's files lack their write bits, and every clone has them back."""
    import json

    from pytest_cowenv.clone import LinkMode, clone_tree, remove_tree, walk_tree

    meta = json.loads(template.with_name(f"{template.name}.json").read_text())
    tree = walk_tree(template)
    if meta.get("write_bits"):
        tree = tree.with_write_bits(meta["write_bits"])
    clone = template.parent.parent / f"pristine-{template.name}"
    clone_tree(template, clone, LinkMode.COPY, tree=tree)
    try:
        return tree_digest(clone / sub, skip_dirs=skip_dirs)
    finally:
        remove_tree(clone)


def listing_digest(root: Path) -> str:
    """Hash of a tree's listing (names and sizes): cheap enough to run in every test."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            h.update(f"{os.path.relpath(path, root)} {os.lstat(path).st_size}\n".encode())
    return h.hexdigest()


def _as_group_leader() -> None:
    # Its own process group, so that a signal reaches pytest *and* its children (pip, uv,
    # xdist workers), as a terminal's Ctrl-C or a CI runner's kill would. SIGINT is reset
    # because a process started from an xdist worker may inherit it ignored.
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn_pytest(
    args: Sequence[str],
    cwd: Path,
    env: Optional[dict[str, str]] = None,
    prefix: Sequence[str] = (),
    log: Optional[Path] = None,
) -> subprocess.Popen[bytes]:
    """Start ``python -m pytest ARGS`` as the leader of a new process group.

    Output goes to ``log`` (default ``cwd/pytest-<n>.log``) rather than a pipe, so that a
    killed run can never block on a full pipe and a test can read what it printed so far.
    """
    if log is None:
        n = len(list(cwd.glob("pytest-*.log")))
        log = cwd / f"pytest-{n}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
            cwd=cwd,
            env=env if env is not None else inner_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_as_group_leader,
        )
    proc.log = log  # type: ignore[attr-defined]
    return proc


def output_of(proc: subprocess.Popen[bytes]) -> str:
    return Path(proc.log).read_text(errors="replace")  # type: ignore[attr-defined]


def kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Signal the whole process group of ``proc`` (a leader made by :func:`spawn_pytest`)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def reap_group(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """Wait for ``proc``; then make sure nothing of its group survives (SIGKILL stragglers)."""
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        code = proc.wait()
    # Children of a SIGKILLed pytest keep running unless the group is killed too.
    kill_group(proc)
    wait_for(lambda: not _group_alive(proc.pid), 10, f"process group {proc.pid} to end")
    return code


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a group we may not signal
        return True
    # Zombies still count as members until reaped: look at their state.
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def make_fat_wheel(directory: Path, name: str, mib: int, chunk_mib: int = 4) -> Path:
    """A wheel that unpacks to ``mib`` MiB of zeros in ``chunk_mib`` MiB files, but weighs a
    few hundred KiB: the way to fill a small filesystem during an install."""
    import base64

    directory.mkdir(parents=True, exist_ok=True)
    info = f"{name}-1.0.dist-info"
    chunk = bytes(chunk_mib << 20)
    digest = base64.urlsafe_b64encode(hashlib.sha256(chunk).digest()).rstrip(b"=").decode()
    files = {
        f"{name}/__init__.py": b"",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\n"
        b"Generator: reliability\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    path = directory / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(max(1, mib // chunk_mib)):
            arc = f"{name}/blob{i:04d}.bin"
            zf.writestr(arc, chunk)
            record.append(f"{arc},sha256={digest},{len(chunk)}")
        for arc, data in files.items():
            zf.writestr(arc, data)
            h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arc},sha256={h},{len(data)}")
        record.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


@contextlib.contextmanager
def exclusive(mount: str) -> Iterator[None]:
    """Hold an exclusive lock on a small test filesystem while a test fills it, so that two
    xdist workers never fill the same one at once (a lock file outside the mount: a full
    filesystem must not stop us from locking)."""
    lock = Path("/tmp") / f"cowenv-reliability-{hashlib.sha1(mount.encode()).hexdigest()[:8]}"
    with open(lock, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def free_bytes(path: Path) -> int:
    """Free space once deletions have settled: an earlier test's clean-up could otherwise
    still be giving space back while this one measures (and a "does not fit" wheel would
    then fit)."""
    settle_btrfs(path)
    return shutil.disk_usage(path).free


def stray_entries(root: Path) -> list[str]:
    """What a cache root holds besides complete templates, their side files and compiled
    bytecode: half-built templates, build folders, run folders (clones), unfinished files."""
    stray = []
    for sub in ("clones", "tmp"):
        folder = root / sub
        if folder.is_dir():
            stray += [f"{sub}/{p.name}" for p in folder.iterdir()]
    templates = root / "templates"
    if templates.is_dir():
        for entry in templates.iterdir():
            if entry.is_dir() and not (templates / f"{entry.name}.json").is_file():
                stray.append(f"templates/{entry.name} (no metadata)")
            elif entry.name.startswith("."):
                stray.append(f"templates/{entry.name}")
    # The shared bytecode store is written file by file (temp name, then rename).
    stray += [str(p.relative_to(root)) for p in root.glob("pyc/**/*.tmp")]
    return sorted(stray)


def template_of(root: Path, key: str) -> Path:
    """The tree of the newest generation of template ``key`` (``templates/<key>.<n>``)."""
    gens = [p for p in (root / "templates").glob(f"{key}.*") if p.is_dir()]
    assert gens, f"no generation of {key} under {root}"
    return max(gens, key=lambda p: int(p.name.rsplit(".", 1)[1]))


def meta_of(template: Path) -> Path:
    """The metadata file of a template generation's tree."""
    return template.with_name(f"{template.name}.json")


def template_dirs(root: Path) -> list[Path]:
    templates = root / "templates"
    return sorted(p for p in templates.iterdir() if p.is_dir()) if templates.is_dir() else []


def unprivileged_prefix() -> Optional[list[str]]:
    """A command prefix that makes a child obey file permissions, or None if impossible.

    As root, permission bits are bypassed by CAP_DAC_OVERRIDE. ``nobody`` cannot reach an
    interpreter under /root here, so rather than switching user we drop the two capabilities
    that bypass permission checks from the bounding set: the child is uid 0 without them.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    probe = subprocess.run(
        [setpriv, "--bounding-set=-dac_override,-dac_read_search", "true"],
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        return None
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


ACQUIRE = """
import sys
import time
from pytest_cowenv._install import IndexOptions
from pytest_cowenv.session import CowEnvSession, Settings

root, wheelhouse, *specs = sys.argv[1:]
session = CowEnvSession(Settings(root=root, index=IndexOptions((wheelhouse,), None, True)))
try:
    for spec in specs:
        env = session.acquire(session.spec(spec.split()), "check")
        names = sorted(env.template.resolved)
        env.run("python", "-c", "import " + ", ".join(names or ["sys"]))
        if "alpha" in names:
            env.run("alpha")  # the console script works: the clone is whole
        print(env.template.key, env.template.meta["created"], env.strategy)
        session.release(env)
    # The callers' checks look at compiled templates: wait for each compiled twin here
    # rather than count on how a session's close treats a compile still running behind.
    for spec in specs:
        deadline = time.monotonic() + 300
        while True:
            env = session.acquire(session.spec(spec.split()), "check")
            session.release(env)
            if env.template.precompiled:
                break
            assert time.monotonic() < deadline, "no compiled twin of " + spec
            time.sleep(0.1)
finally:
    session.close()
"""


# The same for a pytest run: its last test waits for the compiled twin of each spec in
# $COMPILED_SPECS (separated by commas), whatever the run's end does with a running compile.
WAIT_FOR_COMPILED = """

def test_zz_the_compiled_twins_come(cowenv_factory):
    import os, time
    for spec in os.environ["COMPILED_SPECS"].split(","):
        deadline = time.monotonic() + 300
        while not cowenv_factory(*spec.split()).template.precompiled:
            assert time.monotonic() < deadline, "no compiled twin of " + spec
            time.sleep(0.1)
"""


def acquire_each(
    root: Path, wheelhouse: Path, specs: Sequence[str], env: Optional[dict[str, str]] = None
) -> list[tuple[str, float, str]]:
    """In one fresh process (no pytest), for each spec (requirements separated by spaces):
    get its template (reuse it or build it), clone it, import every package and run
    ``alpha`` in the clone, remove the clone. Returns (key, ``created``, clone strategy)
    for each spec."""
    proc = subprocess.run(
        [sys.executable, "-c", ACQUIRE, str(root), str(wheelhouse), *specs],
        capture_output=True,
        text=True,
        env=env or inner_env(),
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()]
    return [(key, float(created), strategy) for key, created, strategy in rows]


def acquire_once(
    root: Path, wheelhouse: Path, *requirements: str, env: Optional[dict[str, str]] = None
) -> tuple[str, float, str]:
    """:func:`acquire_each` for one spec."""
    (row,) = acquire_each(root, wheelhouse, [" ".join(requirements)], env)
    return row


def cowenv_cli(root: Path, *args: str, env: Optional[dict[str, str]] = None) -> str:
    """Run ``pytest-cowenv ARGS`` (as ``python -m pytest_cowenv``) on the cache ``root``;
    it must succeed without a traceback. Returns its output."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest_cowenv", *args],
        capture_output=True,
        text=True,
        env={**(env or inner_env()), "PYTEST_COWENV_DIR": str(root)},
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    return out

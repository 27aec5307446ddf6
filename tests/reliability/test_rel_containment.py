"""Containment: pytest-cowenv deletes what is its own, and nothing else.

A sentinel tree outside the cache (files, a read-only folder, names that look like ours, and
on btrfs a read-only subvolume) is the target of symlinks planted AT and ONE LEVEL BELOW
every path that deletes: release with the pool on and off, the pool's close, session
start-up clean-up, ``clean``, ``clean --kept``, ``prune``, the rebuild of a damaged
template, ``--cowenv-keep`` moves, and the clone engine's own clean-up of a failed clone;
on btrfs, XFS, ext4 and tmpfs. Also a bind mount of the sentinel inside a stale run folder
(another mount: never entered), and cleaners racing on one stale tree. The sentinel must be
bit-for-bit the same after every step. Names a user put in our folders that only look like
ours survive every clean-up, and ``clean --all`` removes a whole cache but what a live
session holds.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from _helpers import internal_frames, unprotect

from ._reliability import (
    ACQUIRE,
    acquire_once,
    cowenv_cli,
    inner_env,
    run_inner,
    template_dirs,
    tree_digest,
)

FILESYSTEMS = ["btrfs", "xfs", "ext4", "tmpfs"]
DEAD_PID = 4_000_000_000  # above any pid_max: no such process, ever
HEX6, HEX8 = "abcdef", "abcdef12"


class Sentinel:
    """A tree outside the cache that no deletion may touch, and how to check it."""

    def __init__(self, where: Path, fs: str) -> None:
        self.path = where / "sentinel"
        self.path.mkdir()
        (self.path / "precious.txt").write_text("the user's own file\n")
        (self.path / "sub" / "deeper").mkdir(parents=True)
        (self.path / "sub" / "deeper" / "data.bin").write_bytes(os.urandom(4096))
        # Names a cleaner that wandered in would take for its own.
        for name in (f"run-{DEAD_PID}-1-{HEX6}", f"{'0' * 24}.{DEAD_PID}.{HEX8}", "env-1"):
            (self.path / name).mkdir()
            (self.path / name / "inside.txt").write_text(name)
        locked = self.path / "readonly"
        locked.mkdir()
        (locked / "locked.txt").write_text("read-only\n")
        os.chmod(locked / "locked.txt", 0o444)
        os.chmod(locked, 0o555)
        self.vault = None
        if fs == "btrfs":  # a read-only subvolume of the user's: its flag must stay set
            from pytest_cowenv.clone import make_template_dir, protect

            self.vault = self.path / "vault"
            assert make_template_dir(self.vault)
            (self.vault / "snap.txt").write_text("user's subvolume\n")
            assert protect(self.vault)
        self.digest = tree_digest(self.path)
        self.checks = 0

    def check(self, after: str) -> None:
        self.checks += 1
        assert tree_digest(self.path) == self.digest, f"the sentinel changed after {after}"
        if self.vault is not None:
            try:
                (self.vault / "probe").write_text("x")
            except OSError as exc:
                assert exc.errno == errno.EROFS
            else:
                raise AssertionError(f"the user's read-only subvolume is writable after {after}")

    def remove(self) -> None:
        from pytest_cowenv.clone import unprotect

        if self.vault is not None:
            unprotect(self.vault)
        os.chmod(self.path / "readonly", 0o755)


@pytest.fixture
def sentinel_at(
    real_dir: Callable[[str], Path],
) -> Iterator[Callable[[str], tuple[Path, Sentinel]]]:
    """``sentinel_at("xfs")``: (a cache path, a sentinel beside it) on that filesystem."""
    made: list[Sentinel] = []

    def make(fs: str) -> tuple[Path, Sentinel]:
        base = real_dir(fs)
        made.append(Sentinel(base, fs))
        return base / "cache", made[-1]

    yield make
    for sentinel in made:
        sentinel.remove()


# Planted by the tests of an inner run: AT the clone (the clone replaced by a link), BELOW it
# (a link inside the clone, or inside its run folder, its pool and its trash).
INNER = """
import os
import shutil
import time

import pytest

SENTINEL = os.environ["SENTINEL"]
pytestmark = pytest.mark.cowenv("alpha==1.0")


def _fill(cowenv):  # time for the pool thread to empty its trash
    time.sleep(0.3)


def test_release_at(cowenv):
    shutil.rmtree(cowenv.path)
    os.symlink(SENTINEL, cowenv.path)


@pytest.mark.parametrize("n", range(3))
def test_fill_a(cowenv, n):
    _fill(cowenv)


def test_release_below(cowenv):
    os.symlink(SENTINEL, cowenv.path / "planted")
    os.symlink(SENTINEL, cowenv.site_packages / "planted")


@pytest.mark.parametrize("n", range(3))
def test_fill_b(cowenv, n):
    _fill(cowenv)


def test_keep_at(cowenv):
    shutil.rmtree(cowenv.path)
    os.symlink(SENTINEL, cowenv.path)
    cowenv.keep = True


def test_keep_below(cowenv):
    os.symlink(SENTINEL, cowenv.path / "planted")
    cowenv.keep = True


def test_run_folder_below(cowenv):
    # The session's close and the pool's close empty these folders (the run folder holds
    # each clone's own folder, and pool/ and trash/).
    run = cowenv.path.parent.parent
    os.symlink(SENTINEL, run / "planted")
    for folder in ("pool", "trash"):
        if (run / folder).is_dir():
            os.symlink(SENTINEL, run / folder / "planted")
"""
INNER_TESTS = 11
# Links planted by INNER: at and below a released clone, a kept one, and the run folder (with
# the pool on, its pool/ and trash/ too).
INNER_PLANTS = {"release": 3, "keep": 2, "close": 1}
POOL_PLANTS = 2


def _inner_run(pytester: pytest.Pytester, cache: Path, offline: list[str], pool: int) -> None:
    pytester.makepyfile(test_plants=INNER)
    result = pytester.runpytest_subprocess(
        "--cowenv-dir", str(cache), "--cowenv-pool", str(pool), "-p", "no:randomly", *offline
    )
    out = "\n".join(result.outlines + result.errlines)
    result.assert_outcomes(passed=INNER_TESTS)
    assert not internal_frames(out), out
    assert "pool thread errors" not in out, out


def _plant_stale(cache: Path, key: str, target: Path) -> int:
    """Leftovers of a dead run for the start-up clean-up and ``clean``: links at and below."""
    clones, tmp = cache / "clones", cache / "tmp"
    os.symlink(target, clones / f"run-{DEAD_PID}-1-{HEX6}")
    below = clones / f"run-{DEAD_PID}-2-{HEX6}"
    (below / "env-2" / "lib").mkdir(parents=True)
    os.symlink(target, below / "env-1")
    os.symlink(target, below / "env-2" / "lib" / "planted")
    os.symlink(target, tmp / f"{key}.{DEAD_PID}.{HEX8}")
    (tmp / f"{key}.{DEAD_PID + 1}.{HEX8}").mkdir()
    os.symlink(target, tmp / f"{key}.{DEAD_PID + 1}.{HEX8}" / "env")
    return 5


def _plant_templates(cache: Path, target: Path) -> int:
    """Incomplete templates and orphan side files for ``clean``: links at and below."""
    templates = cache / "templates"
    at, below = "a" * 24, "b" * 24
    os.symlink(target, templates / at)
    (templates / f"{at}.lock").write_text("")
    (templates / below / "lib").mkdir(parents=True)
    os.symlink(target, templates / below / "lib" / "planted")
    os.symlink(target, templates / f".{below}.json.{DEAD_PID}.tmp")
    return 3


@pytest.mark.parametrize("pool", [2, 0], ids=["pool-on", "pool-off"])
@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_no_deletion_leaves_the_cache(
    pytester: pytest.Pytester,
    sentinel_at: Callable[[str], tuple[Path, Sentinel]],
    offline: list[str],
    wheelhouse: Path,
    monkeypatch: pytest.MonkeyPatch,
    fs: str,
    pool: int,
    record_property: Callable[[str, object], None],
) -> None:
    cache, sentinel = sentinel_at(fs)
    target = sentinel.path
    key, _, _ = acquire_once(cache, wheelhouse, "alpha==1.0")
    plants = 0

    # release (pool on/off), the pool's and the session's close, --cowenv-keep moves
    monkeypatch.setenv("SENTINEL", str(target))
    _inner_run(pytester, cache, offline, pool)
    plants += sum(INNER_PLANTS.values()) + (POOL_PLANTS if pool else 0)
    sentinel.check("release, keep and close")
    kept = sorted((cache / "kept").iterdir())
    assert len(kept) == 2 and kept[0].is_symlink() != kept[1].is_symlink()

    # session start-up clean-up, in a fresh process
    plants += _plant_stale(cache, key, target)
    acquire_once(cache, wheelhouse, "alpha==1.0")
    sentinel.check("the start-up clean-up")
    assert sorted(os.listdir(cache / "clones")) == []

    # clean and clean --kept
    plants += _plant_stale(cache, key, target) + _plant_templates(cache, target)
    cowenv_cli(cache, "clean")
    sentinel.check("clean")
    cowenv_cli(cache, "clean", "--kept")
    sentinel.check("clean --kept")
    assert not (cache / "kept").exists() or os.listdir(cache / "kept") == []
    # kept/ itself a link to the user's folder: listed and emptied through it, the old
    # `clean --kept` deleted the user's files.
    shutil.rmtree(cache / "kept", ignore_errors=True)
    os.symlink(target, cache / "kept")
    cowenv_cli(cache, "clean", "--kept")
    sentinel.check("clean --kept through a linked kept/")
    os.unlink(cache / "kept")
    plants += 1

    # the rebuild of a damaged template: a link planted inside it
    (template,) = template_dirs(cache)
    unprotect(template)
    os.symlink(target, template / "planted")
    key2, _, _ = acquire_once(cache, wheelhouse, "alpha==1.0")
    assert key2 == key and not (template / "planted").exists()
    sentinel.check("the rebuild of a damaged template")
    plants += 1

    # prune: a link inside a template, and a template that is a link
    (template,) = template_dirs(cache)
    unprotect(template)
    os.symlink(target, template / "planted")
    os.symlink(target, cache / "templates" / ("c" * 24))
    (cache / "templates" / f"{'c' * 24}.json").write_text('{"key": "' + "c" * 24 + '"}')
    cowenv_cli(cache, "prune", "--all")
    sentinel.check("prune --all")
    assert template_dirs(cache) == []
    plants += 2
    record_property("plants", plants)
    record_property("inner_tests", INNER_TESTS)


# --- lock files and notes: never written through ------------------------------------------

BUILDS = """
import pytest

@pytest.mark.cowenv("alpha==1.0")
def test_builds(cowenv):
    pass
"""


def test_locks_and_notes_are_never_written_through(
    pytester: pytest.Pytester,
    sentinel_at: Callable[[str], tuple[Path, Sentinel]],
    offline: list[str],
    wheelhouse: Path,
) -> None:
    """Links planted at a template's build lock, owner note and in-use lock, and at a wheel's
    build lock, point at a user's file. Opening one would truncate (filelock before 3.20.1
    opened locks with O_TRUNC through links), create or lock that file, and writing the owner
    note would overwrite it. A run that must build the key fails with one line naming the link;
    ``prune``, ``clean`` and ``verify`` skip what it guards; the file stays as it was."""
    cache, sentinel = sentinel_at("ext4")
    victim = sentinel.path / "precious.txt"
    key, _, _ = acquire_once(cache, wheelhouse, "alpha==1.0")
    templates, wheels = cache / "templates", cache / "wheels"
    (gen_dir,) = template_dirs(cache)
    plants = [templates / f"{key}.lock", templates / f"{key}.owner"]
    plants += [templates / f"{gen_dir.name}.inuse", wheels / f"{'d' * 24}.lock"]
    wheels.mkdir(exist_ok=True)
    for plant in plants:
        if os.path.lexists(plant):
            os.unlink(plant)
        os.symlink(victim, plant)

    for args in (("verify",), ("prune", "--all"), ("clean",), ("clean", "--all")):
        proc = subprocess.run(
            [sys.executable, "-m", "pytest_cowenv", *args],
            capture_output=True,
            text=True,
            env={**inner_env(), "PYTEST_COWENV_DIR": str(cache)},
            stdin=subprocess.DEVNULL,
            timeout=120,
            check=False,
        )
        out = proc.stdout + proc.stderr
        assert "Traceback" not in out, out
        sentinel.check(" ".join(args))
        assert all(plant.is_symlink() for plant in plants), (args, out)

    # A run that must build the key: its template gone, the links still there.
    unprotect(gen_dir)
    shutil.rmtree(gen_dir)
    os.unlink(templates / f"{gen_dir.name}.json")
    pytester.makepyfile(test_builds=BUILDS)
    result = pytester.runpytest_subprocess("--cowenv-dir", str(cache), *offline)
    out = "\n".join(result.outlines + result.errlines)
    result.assert_outcomes(errors=1)
    assert f"{templates / key}.lock: a symbolic link where pytest-cowenv keeps" in out, out
    assert not internal_frames(out), out
    sentinel.check("a build under a linked lock")

    os.unlink(templates / f"{key}.lock")  # the owner note's link is still there
    result = pytester.runpytest_subprocess("--cowenv-dir", str(cache), *offline)
    out = "\n".join(result.outlines + result.errlines)
    result.assert_outcomes(errors=1)
    assert f"{templates / key}.owner: a symbolic link where" in out, out
    sentinel.check("a build under a linked owner note")
    assert (templates / f"{key}.owner").is_symlink()


# --- side files and folders of the cache: never made, touched or filled through a link -----

HARDLINKS = """
import pytest

@pytest.mark.cowenv("alpha==1.0", link_mode="hardlink")
def test_links(cowenv):
    pass
"""


def test_the_hardlink_mark_is_never_made_through_a_link(
    pytester: pytest.Pytester,
    sentinel_at: Callable[[str], tuple[Path, Sentinel]],
    offline: list[str],
    wheelhouse: Path,
) -> None:
    """A hardlink clone marks its generation (``templates/KEY.N.linked``). A link planted at
    the mark's name had the mark made at the link's target (a file created outside the
    cache) or that file's times set (``Path.touch``). Now the clone fails with one line
    naming the link, and the link and its target stay as they were."""
    cache, sentinel = sentinel_at("ext4")
    acquire_once(cache, wheelhouse, "alpha==1.0")
    (gen_dir,) = template_dirs(cache)
    mark = cache / "templates" / f"{gen_dir.name}.linked"
    victim = sentinel.path / "precious.txt"
    os.utime(victim, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    pytester.makepyfile(test_links=HARDLINKS)
    for target in (victim, sentinel.path / "made-through-a-link"):  # a file, and none yet
        if os.path.lexists(mark):
            os.unlink(mark)
        os.symlink(target, mark)
        result = pytester.runpytest_subprocess("--cowenv-dir", str(cache), *offline)
        out = "\n".join(result.outlines + result.errlines)
        result.assert_outcomes(errors=1)
        assert f"{mark}: a symbolic link where pytest-cowenv keeps" in out, out
        assert not internal_frames(out), out
        sentinel.check(f"a hardlink clone with its mark linked to {target.name}")
        assert os.stat(victim).st_mtime_ns == 1_000_000_000_000_000_000, "its times were set"
        assert mark.is_symlink()


@pytest.mark.parametrize("folder", ["templates", "clones", "tmp", "pyc", "pyc/STORE"])
def test_no_folder_of_the_cache_is_filled_through_a_link(
    sentinel_at: Callable[[str], tuple[Path, Sentinel]], wheelhouse: Path, folder: str
) -> None:
    """A folder of the cache (or the bytecode store's folder for this interpreter) replaced
    by a link to a user's folder: a build and a clone wrote their trees, metadata, locks and
    store entries into that folder. A link there is refused, naming it; nothing is written
    through it."""
    from pytest_cowenv._bytecode import store_dir
    from pytest_cowenv.store import prepare_root

    cache, sentinel = sentinel_at("ext4")
    prepare_root(cache)
    planted = cache / folder.replace("STORE", store_dir())
    if planted.is_dir():
        planted.rmdir()
    os.symlink(sentinel.path, planted)
    argv = [sys.executable, "-c", ACQUIRE, str(cache), str(wheelhouse), "alpha==1.0"]
    proc = run_inner(argv, timeout=300)
    out = proc.stdout + proc.stderr
    sentinel.check(f"a build and a clone with {folder}/ linked")
    assert planted.is_symlink()
    if folder == "pyc/STORE":  # the store is a cache: compiled without it
        assert proc.returncode == 0, out
    else:
        assert proc.returncode != 0, out
        assert f"{planted}: a symbolic link where pytest-cowenv keeps" in out, out


LISTS = """
import pytest
from pytest_cowenv import versions

@pytest.mark.parametrize("req", versions("alpha"))
def test_listed(req):
    pass
"""


def test_release_listings_are_never_written_through_a_linked_folder(
    pytester: pytest.Pytester,
    sentinel_at: Callable[[str], tuple[Path, Sentinel]],
    offline: list[str],
) -> None:
    """``versions()`` keeps its listings and their lock in ``versions/``, made on first need;
    one replaced by a link to a user's folder had both written there. A linked
    ``versions/`` is left alone: the releases are listed without the cache."""
    from pytest_cowenv.store import prepare_root

    cache, sentinel = sentinel_at("ext4")
    prepare_root(cache)
    os.symlink(sentinel.path, cache / "versions")
    pytester.makepyfile(test_lists=LISTS)
    result = pytester.runpytest_subprocess("--cowenv-dir", str(cache), *offline)
    result.assert_outcomes(passed=2)  # alpha 1.0 and 2.0
    sentinel.check("versions() with versions/ linked")
    assert (cache / "versions").is_symlink()


def test_metadata_is_never_read_or_touched_through_a_link(
    pytester: pytest.Pytester,
    sentinel_at: Callable[[str], tuple[Path, Sentinel]],
    offline: list[str],
    wheelhouse: Path,
) -> None:
    """A template's metadata moved out of the cache and a link left in its place: a run
    read the user's file as its metadata, trusted the template by it and set the file's
    times on every use; ``verify`` trusted it too. A link there is no metadata of ours: the
    template counts as damaged and is rebuilt, and the user's file stays as it was."""
    cache, sentinel = sentinel_at("ext4")
    key, created, _ = acquire_once(cache, wheelhouse, "alpha==1.0")
    (gen_dir,) = template_dirs(cache)
    meta = cache / "templates" / f"{gen_dir.name}.json"
    moved = sentinel.path.parent / "elsewhere.json"  # the user's file now
    shutil.move(meta, moved)
    os.utime(moved, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    text = moved.read_text()
    os.symlink(moved, meta)
    out = cowenv_cli(cache, "verify", "--no-rebuild")
    assert f"{key}  alpha==1.0: ok" not in out and "re-trusted" not in out, out
    pytester.makepyfile(test_builds=BUILDS)
    result = pytester.runpytest_subprocess("--cowenv-dir", str(cache), *offline)
    result.assert_outcomes(passed=1)
    assert os.stat(moved).st_mtime_ns == 1_000_000_000_000_000_000, "its times were set"
    assert moved.read_text() == text
    sentinel.check("a run and verify with a linked metadata file")
    again, rebuilt, _ = acquire_once(cache, wheelhouse, "alpha==1.0")
    assert again == key and rebuilt != created, "the template was trusted through the link"


def test_the_probe_memo_is_never_read_or_replaced_through_a_link(
    pytester: pytest.Pytester, sentinel_at: Callable[[str], tuple[Path, Sentinel]]
) -> None:
    """The header keeps its filesystem probe in ``fs-probe.json`` of the cache root. A link
    planted there was read as the memo and then replaced by one: now it is neither, the run
    probes afresh, and the link stays."""
    from pytest_cowenv.store import prepare_root

    cache, sentinel = sentinel_at("ext4")
    prepare_root(cache)
    memo = cache / "fs-probe.json"
    os.symlink(sentinel.path / "precious.txt", memo)
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("--cowenv-dir", str(cache))
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["cowenv: dir=*, fs=ext4, *"])
    assert memo.is_symlink()
    sentinel.check("a header with its probe memo linked")


def test_listing_never_locks_through_a_link(
    sentinel_at: Callable[[str], tuple[Path, Sentinel]], wheelhouse: Path
) -> None:
    """``list`` asks whether a template is in use by trying its in-use lock. Through a link
    planted there it locked the user's file it points to (and called the template in use
    when the user's own program held a lock on that file). A link is no lock of ours."""
    import fcntl

    cache, sentinel = sentinel_at("ext4")
    acquire_once(cache, wheelhouse, "alpha==1.0")
    (gen_dir,) = template_dirs(cache)
    in_use = cache / "templates" / f"{gen_dir.name}.inuse"
    victim = sentinel.path / "precious.txt"
    if os.path.lexists(in_use):
        os.unlink(in_use)
    os.symlink(victim, in_use)
    with open(victim, "rb") as held:  # the user's own program locks its file
        fcntl.flock(held.fileno(), fcntl.LOCK_SH)
        out = cowenv_cli(cache, "list")
    assert "[in use]" not in out, out
    assert in_use.is_symlink()
    sentinel.check("list with a linked in-use lock")


# --- the clone engine's clean-up of a failed clone ---------------------------------------


@pytest.mark.parametrize("fs", FILESYSTEMS)
@pytest.mark.parametrize("where", ["at", "below"])
def test_a_failed_clone_removes_only_itself(
    sentinel_at: Callable[[str], tuple[Path, Sentinel]],
    fs: str,
    where: str,
    record_property: Callable[[str, object], None],
) -> None:
    from pytest_cowenv.clone import clone_tree

    cache, sentinel = sentinel_at(fs)
    src = cache / "src"
    for i in range(4):
        (src / f"d{i}").mkdir(parents=True)
        (src / f"d{i}" / "f.txt").write_text(str(i))
    dst = cache / "dst"
    calls = []

    def plant_then_fail() -> None:
        calls.append(1)
        if len(calls) == 2:
            if where == "at":
                os.rename(dst, cache / "moved")
                os.symlink(sentinel.path, dst)
            else:
                os.symlink(sentinel.path, dst / "d0" / "planted")
            raise KeyboardInterrupt  # the clone is abandoned: the engine removes dst

    with pytest.raises(KeyboardInterrupt):
        clone_tree(src, dst, "copy", pause=plant_then_fail)
    assert not os.path.lexists(dst)
    sentinel.check(f"a failed clone with a link {where} its destination")
    record_property("plants", 1)


# --- another mount inside a stale run: never entered ---------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")
@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_a_mount_inside_a_stale_run_is_never_entered(
    sentinel_at: Callable[[str], tuple[Path, Sentinel]],
    fs: str,
    record_property: Callable[[str, object], None],
) -> None:
    from pytest_cowenv.store import prepare_root

    cache, sentinel = sentinel_at(fs)
    prepare_root(cache)
    run = cache / "clones" / f"run-{DEAD_PID}-1-{HEX6}"
    (run / "env-1" / "mnt").mkdir(parents=True)
    (run / "env-1" / "junk.txt").write_text("ours")
    mnt = run / "env-1" / "mnt"
    subprocess.run(["mount", "--bind", str(sentinel.path), str(mnt)], check=True)
    try:
        argv = [sys.executable, "-m", "pytest_cowenv", "clean", "--dir", str(cache)]
        proc = run_inner(argv, timeout=120)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        sentinel.check("clean of a run folder with a bind mount inside")
        mounted = subprocess.run(["mountpoint", "-q", str(mnt)], check=False).returncode == 0
        assert mounted, "the mount point itself was removed"
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
    sentinel.check("unmounting")
    record_property("plants", 1)


# --- cleaners racing ----------------------------------------------------------------------

CLEANER = """
import os, sys, time
from collections.abc import Iterator
from pathlib import Path
from pytest_cowenv.maintenance import clean_stale
from pytest_cowenv.store import Layout

go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
clean_stale(Layout(sys.argv[1]))
"""


def _stale_run(cache: Path, fs: str) -> None:
    """A killed run's folder: clones with read-only parts (snapshots of a read-only
    subvolume on btrfs), a pool and a trash."""
    from pytest_cowenv.clone import clone_tree, make_template_dir, protect

    run = cache / "clones" / f"run-{DEAD_PID}-1-{HEX6}"
    template = cache / "templates" / ("d" * 24)
    if not template.exists():
        (cache / "templates").mkdir(parents=True, exist_ok=True)
        make_template_dir(template)
        for i in range(30):
            sub = template / "lib" / f"pkg{i}"
            sub.mkdir(parents=True)
            for j in range(10):
                (sub / f"m{j}.py").write_text(f"x = {j}\n")
            os.chmod(sub, 0o555)
        protect(template)
    for folder in ("", "pool", "trash"):
        (run / folder).mkdir(parents=True, exist_ok=True)
        for n in range(2):
            clone_tree(template, run / folder / f"env-{n}")


@pytest.mark.parametrize("fs", ["btrfs", "xfs"])
def test_cleaners_racing_on_one_stale_tree(
    real_dir: Callable[[str], Path], fs: str, record_property: Callable[[str, object], None]
) -> None:
    """Start-up clean-up of N processes at once (xdist workers after a killed run): the
    old error handler recursed on a vanished path until RecursionError."""
    cache = real_dir(fs)
    cleaners, rounds = 6, 5
    for r in range(rounds):
        (cache / "clones").mkdir(exist_ok=True)
        (cache / "tmp").mkdir(exist_ok=True)
        _stale_run(cache, fs)
        go = cache / f"go-{r}"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CLEANER, str(cache), str(go)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=inner_env(),
            )
            for _ in range(cleaners)
        ]
        go.touch()
        outs = [p.communicate(timeout=120)[0].decode(errors="replace") for p in procs]
        for proc, out in zip(procs, outs):
            assert proc.returncode == 0 and not out, f"round {r}: a cleaner failed:\n{out}"
        assert os.listdir(cache / "clones") == [], f"round {r}: the stale run survived"
    record_property("races", rounds * cleaners)


# --- only our own names: look-alikes a user put into the cache stay ----------------------

LOOKALIKES = {
    "tmp/x.123.y": "a file named like a build folder",
    "tmp/notes/todo.txt": "a folder in tmp/",
    "templates/notes/todo.txt": "a folder named like a template",
    "templates/a.json": "metadata of no key of ours",
    "templates/a.lock": "a lock of no key of ours",
    "templates/.a.json.123.tmp": "unfinished metadata of no key of ours",
    "kept/todo.txt": "a file in kept/",
    "kept/my-env/bin/python": "a folder in kept/",
    "clones/notes/todo.txt": "a folder in clones/",
}


def _plant_lookalikes(cache: Path, key: str) -> dict[str, str]:
    planted = {**LOOKALIKES, f"tmp/{key}.notes": "a file named <key>.<something>"}
    for rel, text in planted.items():
        (cache / rel).parent.mkdir(parents=True, exist_ok=True)
        (cache / rel).write_text(text)
    return planted


def _lookalikes_intact(cache: Path, planted: dict[str, str], after: str) -> None:
    for rel, text in planted.items():
        assert (cache / rel).is_file(), f"{rel} ({text}) was removed by {after}"
        assert (cache / rel).read_text() == text


@pytest.mark.parametrize("fs", ["btrfs", "xfs"])
def test_names_that_only_look_like_ours_survive_every_clean_up(
    real_dir: Callable[[str], Path],
    wheelhouse: Path,
    fs: str,
    record_property: Callable[[str, object], None],
) -> None:
    cache = real_dir(fs) / "cache"
    key, _, _ = acquire_once(cache, wheelhouse, "alpha==1.0")
    planted = _plant_lookalikes(cache, key)
    acquire_once(cache, wheelhouse, "alpha==1.0")
    _lookalikes_intact(cache, planted, "the start-up clean-up")
    for args in (["clean"], ["clean", "--kept"], ["prune", "--all"]):
        cowenv_cli(cache, *args)
        _lookalikes_intact(cache, planted, " ".join(args))
    acquire_once(cache, wheelhouse, "alpha==1.0")  # pruned: built anew, leftovers of key go
    _lookalikes_intact(cache, planted, "a rebuild")
    cowenv_cli(cache, "clean", "--all")
    _lookalikes_intact(cache, planted, "clean --all")
    assert template_dirs(cache) == [cache / "templates" / "notes"]
    record_property("lookalikes", len(planted))


# --- clean --all: the one command that removes a whole cache ------------------------------

HOLDER = """
import sys
from pytest_cowenv._install import IndexOptions
from pytest_cowenv.session import CowEnvSession, Settings

session = CowEnvSession(Settings(root=sys.argv[1], index=IndexOptions((sys.argv[2],), None, True)))
env = session.acquire(session.spec(["alpha==1.0"]), "held")
print(env.path, flush=True)
sys.stdin.read()  # held until the test closes our stdin
session.release(env)
session.close()
"""


@pytest.mark.parametrize("fs", ["btrfs", "xfs"])
def test_clean_all_removes_a_whole_cache_but_what_a_live_run_holds(
    real_dir: Callable[[str], Path], wheelhouse: Path, fs: str
) -> None:
    cache = real_dir(fs) / "cache"
    acquire_once(cache, wheelhouse, "alpha==1.0")
    acquire_once(cache, wheelhouse, "beta")
    (cache / "kept" / f"run-{DEAD_PID}-1-{HEX6}-env-1").mkdir(parents=True)
    (cache / "clones" / f"run-{DEAD_PID}-1-{HEX6}" / "env-1").mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(cache), str(wheelhouse)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=inner_env(),
    )
    try:
        assert holder.stdout is not None
        held = Path(holder.stdout.readline().strip())
        assert held.is_dir()
        out = cowenv_cli(cache, "clean", "--all")
        assert "skipped template alpha==1.0" in out and "in use by" in out, out
        assert "skipped run" in out and "skipped bytecode store" in out, out
        assert held.is_dir() and len(template_dirs(cache)) == 1
        assert not (cache / "kept").exists()
        assert os.listdir(cache / "clones") == [held.parent.parent.name]  # its run folder
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(60) == 0
    out = cowenv_cli(cache, "clean", "--all")
    assert "removed template alpha==1.0" in out and "removed bytecode store" in out, out
    assert not cache.exists(), os.listdir(cache)


def test_what_rm_rf_leaves_of_a_btrfs_cache_is_removed_by_clean_all(
    real_dir: Callable[[str], Path], wheelhouse: Path
) -> None:
    """`rm -rf` removes the marker, then stops at the read-only template subvolumes: what is
    left is refused as a cache (the refusal names `clean --all`), and `clean --all` removes
    it."""
    cache = real_dir("btrfs") / "cache"
    acquire_once(cache, wheelhouse, "alpha==1.0")
    rm = subprocess.run(["rm", "-rf", str(cache)], capture_output=True, text=True, check=False)
    assert rm.returncode != 0 and "Read-only file system" in rm.stderr, rm.stderr
    assert template_dirs(cache), "rm -rf removed the templates: nothing left to prove"
    listed = subprocess.run(
        [sys.executable, "-m", "pytest_cowenv", "list"],
        capture_output=True,
        text=True,
        env={**inner_env(), "PYTEST_COWENV_DIR": str(cache)},
        stdin=subprocess.DEVNULL,
        check=False,
    )
    err = listed.stderr.strip()
    assert listed.returncode == 1 and len(err.splitlines()) == 1, err
    assert "pytest-cowenv clean --all" in err and "Traceback" not in err, err
    out = cowenv_cli(cache, "clean", "--all")
    assert "removed" in out, out
    assert not cache.exists(), os.listdir(cache)

"""What each step of a reused clone's proof costs, against a new clone (issue 19, section 1).

    eval "$(bash scripts/cowfs.sh env)"
    python benchmarks/proof.py                    # btrfs XFS ext4 tmpfs, 20 repeats
    python benchmarks/proof.py --fs btrfs --repeat 10

Template: W1, built offline from the benchmark wheelhouse (``_common.wheelhouse()``). Per
filesystem, every repeat times, in one process and in this order: a new clone (``clone_tree``:
what a test gets instead of a reused one); step 5 of ``reuse`` (the stat of every entry,
``reuse.changed``) on that clone the first time (``walk, first``: a btrfs snapshot's inodes are
new to the kernel, each is read in) and again (``walk, again``: what a clone reused many times
pays), and its quick look; step 4 (``reuse.holders``) with a full look at ``/proc`` and through
a ``Census`` (which skips the listing only while the kernel's count of created tasks stands
still: on a busy machine it rarely does). On btrfs also the parts a proof by the subvolume's
generation would have (the plugin has none): ``syncfs`` after the two renames a reuse makes
(a transaction commit), ``syncfs`` with nothing to commit, and ``BTRFS_IOC_GET_SUBVOL_INFO``.
Printed: the median and interquartile range of the wall time and of this thread's CPU time, and
the mean of the part of it spent in the kernel (``RUSAGE_THREAD``), in ms. A whole test costs
more than these parts (the fixture, the renames, the test itself): ``reuse.py`` measures whole
processes.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Callable, TypeVar

from _common import RESULTS, W1, header, load, median, quartiles, table
from _common import wheelhouse as w1_wheelhouse

from pytest_cowenv import reuse
from pytest_cowenv._install import IndexOptions
from pytest_cowenv.clone import LinkMode, clone_tree, remove_tree
from pytest_cowenv.fs import fs_type
from pytest_cowenv.session import CowEnvSession, Settings
from pytest_cowenv.template import Template

FILESYSTEMS = ("btrfs", "xfs", "ext4", "tmpfs")
# struct btrfs_ioctl_get_subvol_info_args is 504 bytes: _IOR(BTRFS_IOCTL_MAGIC, 60, that)
GET_SUBVOL_INFO = (2 << 30) | (504 << 16) | (0x94 << 8) | 60
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


class Timings:
    """Wall, thread CPU and thread system-time samples of named parts, in ms."""

    def __init__(self) -> None:
        self.parts: dict[str, tuple[list[float], list[float], list[float]]] = {}

    def time(self, name: str, run: Callable[[], T]) -> T:
        wall, cpu, kernel = time.perf_counter(), time.thread_time(), _system_time()
        value = run()
        walls, cpus, kernels = self.parts.setdefault(name, ([], [], []))
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.thread_time() - cpu) * 1000)
        kernels.append((_system_time() - kernel) * 1000)
        return value

    def rows(self) -> list[list[str]]:
        rows = []
        for name, (walls, cpus, kernels) in self.parts.items():
            row = [name]
            for values in (walls, cpus):
                q1, q3 = quartiles(values)
                row.append(f"{median(values):.3f} ({q1:.3f}-{q3:.3f})")
            # The kernel splits a thread's CPU time into user and system time by samples
            # taken at each tick: one short call's share is noise, the mean over calls is not.
            row.append(f"{sum(kernels) / len(kernels):.3f}")
            rows.append(row)
        return rows


def _system_time() -> float:
    """This thread's time in the kernel so far, in seconds."""
    return resource.getrusage(resource.RUSAGE_THREAD).ru_stime


def syncfs(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def subvolume_generation(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        args = bytearray(504)
        fcntl.ioctl(fd, GET_SUBVOL_INFO, args)
    finally:
        os.close(fd)
    # treeid (8), name (256), parent_id (8), dirid (8), then the generation
    return int.from_bytes(args[280:288], "little")


def measure(fs: str, mount: str, repeat: int, wheels: Path) -> list[str]:
    base = Path(tempfile.mkdtemp(prefix="bench-proof-", dir=mount))
    root = base / "cache"
    index = IndexOptions(find_links=(str(wheels),), offline=True)
    settings = Settings(root=str(root), pool=0, index=index)
    session, template = _template(settings)
    try:
        tree = template.tree
        template_record = reuse.template_record(tree)
        census = reuse.Census()
        since = reuse.boot_ns()
        timings = Timings()
        strategy = ""
        for i in range(repeat):
            folder = base / f"clone-{i}"
            folder.mkdir()
            clone = str(folder / "env")
            made = partial(clone_tree, template.path, clone, LinkMode.AUTO, tree=tree, warn=_quiet)
            strategy = timings.time("new clone", made).strategy
            if strategy == "snapshot":
                record = reuse.snapshot_record(clone, template_record)
            else:
                record = reuse.record(clone)
            for name in ("walk, first", "walk, again"):
                assert timings.time(name, partial(reuse.changed, clone, record)) is None
            timings.time("quick look", partial(reuse.changed, clone, record, quick=True))
            clones = [(record.inodes, str(folder))]
            timings.time("holders, full look", partial(reuse.holders, clones, since))
            timings.time("holders, census", partial(reuse.holders, clones, since, census))
            if fs == "btrfs":
                moved = base / f"moved-{i}"
                os.rename(folder, moved)
                os.rename(moved, folder)
                timings.time("syncfs after 2 renames", partial(syncfs, clone))
                timings.time("syncfs, nothing to commit", partial(syncfs, clone))
                timings.time("GET_SUBVOL_INFO", partial(subvolume_generation, clone))
            remove_tree(folder, root=base)
        return [
            "",
            f"{fs} ({strategy}): {repeat} repeats; template generation {template.generation}: "
            f"{len(tree.files)} files, "
            f"{len(tree.dirs)} directories, {len(tree.links)} links; census looked "
            f"{census.looks} times in {repeat}; {load()}",
            table(
                ["part", "wall ms (IQR)", "cpu ms (IQR)", "of it in the kernel (mean)"],
                timings.rows(),
            ),
        ]
    finally:
        session.close()
        subprocess.run(
            [sys.executable, "-m", "pytest_cowenv", "clean", "--all", "--dir", str(root)],
            capture_output=True,
        )
        remove_tree(base)


def _template(settings: Settings) -> tuple[CowEnvSession, Template]:
    """W1's template as a suite's later tests get it, and the session that holds it (its
    generation stays while the session is open): built by a first session, compiled behind
    it and published as a new generation, which a later session takes. Untimed."""
    for _ in range(5):
        session = CowEnvSession(settings)
        env = session.acquire(session.spec(list(W1)), warn=_quiet)
        session.release(env)
        if env.template.generation > 1:
            return session, env.template
        session.close()
        time.sleep(1)  # the compile behind the first session publishes its generation
    raise SystemExit("the compiled generation of W1's template did not come")


def _quiet(message: str) -> None:
    """ext4 and tmpfs copy: expected here, and the table says which strategy it was."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fs", default=",".join(FILESYSTEMS))
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    lines = [header()]
    print(lines[0], flush=True)
    wheels = w1_wheelhouse()
    for fs in args.fs.split(","):
        mount = os.environ.get(f"COWENV_TEST_{fs.upper()}")
        if not mount or not os.path.isdir(mount) or fs_type(mount) != fs:
            got = [f"note: COWENV_TEST_{fs.upper()} is not a mounted {fs}: skipped"]
        else:
            got = measure(fs, mount, args.repeat, wheels)
        print("\n".join(got), flush=True)
        lines += got
    lines.append(f"end: {load()}")
    print(lines[-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"proof-{time.strftime('%Y%m%d-%H%M%S')}.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""How fast the clone engine makes and removes a tree, against cp and shutil, per filesystem.

    eval "$(bash scripts/cowfs.sh env)"          # or: --fs btrfs=/mnt/b --fs xfs=/mnt/x ...
    python benchmarks/clone.py --repeat 20        # both trees, every mounted filesystem
    python benchmarks/clone.py --trees w1 --strace --share 50 --threads 2,4

Trees: ``w1``, a real venv with requests and rich (~1.3k files, ~15 MB; a generated tree of
1.2k files and 20 MB if pip cannot build it), and ``10k``, 10,000 generated files (40 MB).
On each filesystem every available strategy of ``clone_tree`` (snapshot, clone, copy) runs
interleaved with ``cp -a --reflink=always``, ``cp -a`` and ``shutil.copytree``; each run is
preceded by an untimed ``sync``. The table shows medians, interquartile ranges and p95 in ms,
the ratio to the matching cp (per-file clone and snapshot: ``cp --reflink``; copy: ``cp -a``)
as the median and interquartile range of the ratios taken round by round (the spread a
re-run's ratio should fall in), and the time to remove what the run made (``remove_tree`` for
ours, ``rm -rf`` for cp, ``shutil.rmtree``). ``--threads 2,4`` adds per-file clones whose
directories are shared among that many threads, to check that the engine's one thread is
still the faster choice on this machine.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from _common import (
    REPO,
    Case,
    fmt_ms,
    header,
    interleaved,
    load,
    make_tree,
    median,
    p95,
    physical_used_bytes,
    quartiles,
    table,
    used_bytes,
)

from pytest_cowenv.clone import (
    READ_FLAGS,
    Tree,
    clone_tree,
    make_template_dir,
    remove_tree,
    walk_tree,
)
from pytest_cowenv.fs import probe

ENV_VARS = {
    "btrfs": "COWENV_TEST_BTRFS",
    "xfs": "COWENV_TEST_XFS",
    "ext4": "COWENV_TEST_EXT4",
    "tmpfs": "COWENV_TEST_TMPFS",
}
W1_PACKAGES = ("requests", "rich")
REFERENCE = {
    "snapshot": "cp --reflink",
    "clone": "cp --reflink",
    "clone+walk": "cp --reflink",
    "clone, 2 threads": "clone",
    "clone, 4 threads": "clone",
    "copy": "cp -a",
    "shutil.copytree": "cp -a",
}
# (filesystem, tree, case, limit): the targets; "ratio" limits compare with REFERENCE.
TARGETS = [
    ("btrfs", "w1", "snapshot", "median ms", 5.0),
    ("btrfs", "w1", "snapshot", "remove ms", 2.0),
    ("btrfs", "10k/w1", "snapshot", "size ratio", 1.5),
    ("xfs", "w1", "clone", "ratio", 0.9),
    ("btrfs", "w1", "clone", "ratio", 0.9),
    ("ext4", "w1", "copy", "ratio", 1.3),
]


def build_w1(work: Path) -> Path:
    """A real venv with a few packages (pip from the configured index), else a generated tree."""
    venv = work / "w1"
    if (venv / ".complete").exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                str(venv / "bin" / "python"),
                "install",
                "-q",
                *W1_PACKAGES,
            ],
            check=True,
            stderr=subprocess.DEVNULL,
        )
    except subprocess.CalledProcessError:
        print("pip could not build the W1 venv: using a generated tree", file=sys.stderr)
        shutil.rmtree(venv, ignore_errors=True)
        make_tree(venv, files=1200, total_bytes=20 << 20)
    (venv / ".complete").touch()
    return venv


def build_10k(work: Path) -> Path:
    root = work / "10k"
    if not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        make_tree(root, files=10_000, total_bytes=40 << 20)
        (root / ".complete").touch()
    return root


@dataclass
class Place:
    """A tree laid out on one filesystem: a plain template, maybe a subvolume one."""

    plain: Path
    subvolume: Optional[Path]


def place(source: Path, bench: Path, name: str, snapshot: bool) -> Place:
    plain = bench / f"{name}-template"
    subprocess.run(["cp", "-a", source, plain], check=True)
    subvolume = None
    if snapshot:
        subvolume = bench / f"{name}-subvolume"
        if make_template_dir(subvolume):
            subprocess.run(["cp", "-a", f"{source}/.", subvolume], check=True)
        else:
            os.rmdir(subvolume)
            subvolume = None
    return Place(plain, subvolume)


FICLONE = 0x40049409  # fcntl.FICLONE from Python 3.12
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def threaded_clone(tree: Tree, dst: str, threads: int) -> None:
    """A per-file clone whose directories are shared among ``threads`` threads, each making a
    directory's files with the engine's system calls (open, open, FICLONE, futimens, close,
    close). Modes and directory times are left out, which only flatters the threads: the
    engine cloned so before it went to one thread."""
    os.mkdir(dst, 0o755)
    for rel, *_ in tree.dirs:
        os.mkdir(dst + rel, 0o755)
    groups = tree.files_by_dir
    errors: list[BaseException] = []

    def work(first: int) -> None:
        try:
            for rel, files in groups[first::threads]:
                sdir = os.open(tree.root + rel, os.O_RDONLY | os.O_DIRECTORY)
                ddir = os.open(dst + rel, os.O_RDONLY | os.O_DIRECTORY)
                for name, mode, atime_ns, mtime_ns, size in files:
                    sfd = os.open(name, READ_FLAGS, dir_fd=sdir)
                    dfd = os.open(name, CREATE, mode & 0o777, dir_fd=ddir)
                    if size:
                        fcntl.ioctl(dfd, FICLONE, sfd)
                    os.utime(dfd, ns=(atime_ns, mtime_ns))
                    os.close(dfd)
                    os.close(sfd)
                os.close(ddir)
                os.close(sdir)
        except BaseException as exc:  # raised in the caller below
            errors.append(exc)

    helpers = [threading.Thread(target=work, args=(i,)) for i in range(1, threads)]
    for helper in helpers:
        helper.start()
    work(0)
    for helper in helpers:
        helper.join()
    if errors:
        raise errors[0]
    for rel, target, *_ in tree.links:
        os.symlink(target, dst + rel)


def cases_for(where: Place, out: Path, reflink: bool, threads: Sequence[int]) -> list[Case]:
    tree = walk_tree(where.plain)
    src, dst = str(where.plain), str(out)

    def ours(mode: str, src: str = src, walk: bool = False) -> Case:
        """Our clone_tree; templates keep their walk, so by default it is passed in."""
        return Case(
            f"{mode}+walk" if walk else mode,
            lambda: clone_tree(src, dst, mode, tree=None if walk else tree),
            cleanup=lambda: remove_tree(dst),
            time_cleanup=True,
        )

    def command(name: str, argv: Sequence[str]) -> Case:
        return Case(
            name,
            lambda: subprocess.run([*argv, src, dst], check=True),
            cleanup=lambda: subprocess.run(["rm", "-rf", dst], check=True),
            time_cleanup=True,
        )

    cases = []
    if where.subvolume is not None:
        cases.append(ours("snapshot", src=str(where.subvolume)))
    if reflink:
        cases += [
            ours("clone"),
            ours("clone", walk=True),
            command("cp --reflink", ["cp", "-a", "--reflink=always"]),
        ]
        cases += [
            Case(
                f"clone, {n} threads",
                lambda n=n: threaded_clone(tree, dst, n),  # type: ignore[misc]
                cleanup=lambda: remove_tree(dst),
                time_cleanup=True,
            )
            for n in threads
        ]
    cases += [
        ours("copy"),
        command("cp -a", ["cp", "-a", "--reflink=never"]),
        Case(
            "shutil.copytree",
            lambda: shutil.copytree(src, dst, symlinks=True),
            cleanup=lambda: shutil.rmtree(dst),
            time_cleanup=True,
        ),
    ]
    return cases


def paired_ratio(case: Case, ref: Case) -> tuple[float, float, float]:
    """The median and quartiles of ``case``'s time over ``ref``'s, round by round: the two ran
    in the same round, under the same load, so the ratio is steadier than either time."""
    ratios = [a / b for a, b in zip(case.seconds, ref.seconds)]
    return (median(ratios), *quartiles(ratios))


def report(fs_name: str, tree_name: str, files: int, cases: list[Case]) -> list[list[str]]:
    by_name = {c.name: c for c in cases}
    rows = []
    for case in cases:
        ref = by_name.get(REFERENCE.get(case.name, ""))
        ratio = ""
        if ref:
            value, low, high = paired_ratio(case, ref)
            ratio = f"{value:.2f}x {ref.name} ({low:.2f}-{high:.2f})"
        rows.append(
            [
                f"{fs_name} {tree_name} ({files} files)",
                case.name,
                fmt_ms(median(case.seconds)),
                "-".join(f"{q * 1e3:.1f}" for q in quartiles(case.seconds)),
                fmt_ms(p95(case.seconds)),
                ratio,
                fmt_ms(median(case.cleanup_seconds)),
            ]
        )
    return rows


# (filesystem, strategy): the most that clones may add, as a share of one tree (snapshots,
# all of them together) or of one copy (per-file clones, each).
SHARING_TARGETS = {("btrfs", "snapshot"): 0.05, ("xfs", "clone"): 0.06, ("btrfs", "clone"): 0.12}


def sharing(fs_name: str, where: Place, out_dir: Path, count: int) -> list[str]:
    """Used space of ``count`` clones per strategy against one copy, after sync."""
    lines = []
    tree = walk_tree(where.plain)
    strategies = [("copy", where.plain)]
    if where.subvolume is not None:
        strategies.append(("snapshot", where.subvolume))
    if probe(out_dir).can_reflink:
        strategies.append(("clone", where.plain))
    one_copy = one_copy_physical = 0
    for mode, src in strategies:
        n = 1 if mode == "copy" else count
        before, before_physical = used_bytes(out_dir), physical_used_bytes(out_dir)
        made = [out_dir / f"share-{mode}-{i}" for i in range(n)]
        for dst in made:
            clone_tree(src, dst, mode, tree=None if mode == "snapshot" else tree)
        added = used_bytes(out_dir) - before
        added_physical = physical_used_bytes(out_dir) - before_physical
        for dst in made:
            remove_tree(dst)
        if mode == "copy":
            one_copy, one_copy_physical = added, added_physical
            lines.append(f"{fs_name}: one copy uses {added / 2**20:.1f} MiB")
            continue
        of = "of one tree in all" if mode == "snapshot" else "of a copy each"
        share, share_physical = (
            (added / one_copy, added_physical / one_copy_physical)
            if mode == "snapshot"
            else (added / n / one_copy, added_physical / n / one_copy_physical)
        )
        line = (
            f"{fs_name}: {n} {mode}s add {added / 2**20:.2f} MiB, {added / n / 1024:.0f} KiB "
            f"each: {share:.1%} {of}"
        )
        if added_physical != added:
            line += (
                f" (physical, DUP metadata written twice: {added_physical / n / 1024:.0f} "
                f"KiB each, {share_physical:.1%})"
            )
        limit = SHARING_TARGETS.get((fs_name, mode))
        if limit is not None:
            line = f"{'ok  ' if share <= limit else 'MISS'} {line} (target <= {limit:.0%})"
        lines.append(line)
    return lines


def syscalls_per_file(where: Place, out: Path, files: int) -> list[str]:
    """strace counts of a per-file clone: ours (after its walk) and cp --reflink."""
    if not shutil.which("strace"):
        return ["strace is not installed"]
    lines = []
    marker = "cowenv-bench-start"
    script = (
        "import os, sys; from pytest_cowenv.clone import clone_tree, make_template_dir, walk_tree\n"
        "t = walk_tree(sys.argv[1]); os.write(2, sys.argv[3].encode())\n"
        "clone_tree(sys.argv[1], sys.argv[2], 'clone', tree=t)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    runs = {
        "ours": [sys.executable, "-c", script, str(where.plain), str(out), marker],
        "cp --reflink": ["cp", "-a", "--reflink=always", str(where.plain), str(out)],
    }
    for name, argv in runs.items():
        with tempfile.NamedTemporaryFile("r") as log:
            subprocess.run(
                ["strace", "-f", "-o", log.name, *argv],
                check=True,
                env=env,
                stderr=subprocess.DEVNULL,
            )
            trace = log.read().splitlines()
        remove_tree(out)
        start = next((i for i, line in enumerate(trace) if f'write(2, "{marker}' in line), -1)
        start += 1
        counts: dict[str, int] = {}
        for line in trace[start:]:
            call = line.split(None, 1)[-1].split("(", 1)[0]
            if call.isidentifier():
                counts[call] = counts.get(call, 0) + 1
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:8]
        total = sum(counts.values())
        lines.append(
            f"{name}: {total / files:.1f} syscalls/file: "
            + ", ".join(f"{call} {n / files:.2f}" for call, n in top)
        )
    return lines


def parse_fs(values: Optional[list[str]]) -> dict[str, Path]:
    if not values:
        return {
            name: Path(os.environ[var]) for name, var in ENV_VARS.items() if os.environ.get(var)
        }
    found = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep:
            raise SystemExit(f"--fs wants NAME=PATH, got {value!r}")
        found[name] = Path(path)
    return found


def check_targets(results: dict[tuple[str, str, str], Case]) -> list[str]:
    lines = []
    for fs_name, tree_name, case_name, what, limit in TARGETS:
        if what == "size ratio":
            big, small = (results.get((fs_name, t, case_name)) for t in tree_name.split("/"))
            if big is None or small is None:
                continue
            value = median(big.seconds) / median(small.seconds)
        else:
            case = results.get((fs_name, tree_name, case_name))
            if case is None:
                continue
            if what == "median ms":
                value = median(case.seconds) * 1e3
            elif what == "remove ms":
                value = median(case.cleanup_seconds) * 1e3
            else:
                ref = results[(fs_name, tree_name, REFERENCE[case_name])]
                value = paired_ratio(case, ref)[0]
        verdict = "ok  " if value <= limit else "MISS"
        lines.append(
            f"{verdict} {fs_name} {tree_name} {case_name} {what}: {value:.2f} (target <= {limit})"
        )
    return lines


def check_threads(results: dict[tuple[str, str, str], Case]) -> list[str]:
    """Whether threads sharing out a per-file clone would beat the engine's one thread: a MISS
    only when three quarters of the rounds say so."""
    lines = []
    for (fs_name, tree_name, case_name), case in results.items():
        if case_name.endswith(" threads"):
            value, low, high = paired_ratio(case, results[(fs_name, tree_name, "clone")])
            verdict = "ok  " if high >= 1.0 else "MISS"
            lines.append(
                f"{verdict} {fs_name} {tree_name} {case_name} / clone (one thread): "
                f"{value:.2f} (IQR {low:.2f}-{high:.2f}; one thread stays while the IQR "
                "reaches 1)"
            )
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--fs",
        action="append",
        metavar="NAME=PATH",
        help="a filesystem to measure (repeatable; default: COWENV_TEST_*)",
    )
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per case (20)")
    parser.add_argument("--trees", default="w1,10k", help="which trees: w1, 10k (both)")
    parser.add_argument(
        "--work",
        type=Path,
        default=REPO / "benchmarks" / "results" / "clone",
        help="where the source trees are built and kept",
    )
    parser.add_argument(
        "--share",
        type=int,
        default=0,
        metavar="N",
        help="also measure the disk that N clones of W1 take (e.g. 50)",
    )
    parser.add_argument(
        "--strace", action="store_true", help="also count system calls per file of a per-file clone"
    )
    parser.add_argument(
        "--threads",
        default="",
        metavar="N,M",
        help="also time per-file clones shared among N (and M...) threads, e.g. 2,4",
    )
    args = parser.parse_args(argv)
    threads = [int(n) for n in args.threads.split(",") if n]
    filesystems = parse_fs(args.fs)
    if not filesystems:
        raise SystemExit("no filesystem: mount them (scripts/cowfs.sh up) or pass --fs")
    print(header(), flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    builders = {"w1": build_w1, "10k": build_10k}
    sources = {name: builders[name](args.work) for name in args.trees.split(",")}

    rows: list[list[str]] = []
    notes: list[str] = []
    results: dict[tuple[str, str, str], Case] = {}
    for fs_name, mount in filesystems.items():
        bench = Path(tempfile.mkdtemp(prefix="cowenv-bench-", dir=mount))
        try:
            info = probe(bench)
            for tree_name, source in sources.items():
                where = place(source, bench, tree_name, info.can_snapshot)
                files = walk_tree(where.plain).nfiles
                cases = cases_for(where, bench / "out", info.can_reflink, threads)
                print(
                    f"timing {fs_name} ({info.fstype}) {tree_name}: "
                    f"{', '.join(c.name for c in cases)}",
                    file=sys.stderr,
                )
                interleaved(cases, args.repeat, sync_path=bench)
                rows += report(fs_name, tree_name, files, cases)
                results.update({(fs_name, tree_name, c.name): c for c in cases})
                if tree_name == "w1" and args.strace and info.can_reflink:
                    notes += [
                        f"{fs_name} {line}"
                        for line in syscalls_per_file(where, bench / "out", files)
                    ]
                if tree_name == "w1" and args.share:
                    notes += sharing(fs_name, where, bench, args.share)
        finally:
            for entry in os.listdir(bench):
                remove_tree(bench / entry)
            os.rmdir(bench)

    columns = [
        "filesystem, tree",
        "case",
        "median ms",
        "IQR ms",
        "p95 ms",
        "ratio (IQR)",
        "remove ms",
    ]
    print(
        f"\nclone benchmark: median of {args.repeat} interleaved runs, each after a sync; "
        "ratio: median and IQR of the round-by-round ratios\n"
    )
    print(table(columns, rows))
    checks = [*check_targets(results), *check_threads(results)]
    for line in [*notes, "", *checks, "", f"end: {load()}"]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

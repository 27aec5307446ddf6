"""How clone cost grows: with the template's size, and with concurrent clones.

Generated trees of 1k, 10k and 40k files (a site-packages-like mix of sizes) plus the real W1
template, on btrfs and XFS. For each: a btrfs snapshot (should stay flat), pytest-cowenv's
per-file clone (should grow linearly: its slope in µs per file is printed next to
``cp -a --reflink=always``'s), and the disk one clone adds (statvfs after ``sync``). Then the
same clones made by 1, 2 and 4 threads or processes at once.

    python benchmarks/scale.py --quick      # ~1 minute
    python benchmarks/scale.py --csv docs/bench-scale.csv
"""

from __future__ import annotations

import argparse
import csv
import functools
import multiprocessing
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from _common import (
    RESULTS,
    W1,
    Case,
    header,
    interleaved,
    load,
    make_tree,
    median,
    mounts,
    physical_used_bytes,
    show,
    wheelhouse,
)

from pytest_cowenv.clone import LinkMode, Tree, clone_tree, remove_tree, walk_tree

SIZES = (1_000, 10_000, 40_000)
BYTES_PER_FILE = 4096  # as benchmarks/clone.py: ~4 KB a file, venv-like log-normal sizes


@dataclass
class Source:
    fs: str
    name: str
    path: Path
    tree: Tree

    @property
    def files(self) -> int:
        return self.tree.nfiles


def make_source(fs: str, mount: str, name: str, files: int) -> Source:
    """A generated tree; on btrfs a subvolume, so that it can be snapshotted."""
    base = Path(mount) / "bench-scale"
    base.mkdir(exist_ok=True)
    path = base / f"tree-{name}"
    marker = path / ".complete"
    if not marker.exists():
        if path.exists():
            remove_tree(path)
        if fs == "btrfs":
            subprocess.run(["btrfs", "-q", "subvolume", "create", str(path)], check=True)
        else:
            path.mkdir()
        print(f"  generating {files} files on {fs}", flush=True)
        make_tree(path, files, files * BYTES_PER_FILE)
        marker.touch()
    return Source(fs, name, path, walk_tree(path))


def real_template(fs: str, mount: str, wheelhouse: Path) -> Source:
    """pytest-cowenv's own W1 template on ``fs`` (built once if absent)."""
    from pytest_cowenv._install import IndexOptions
    from pytest_cowenv.session import CowEnvSession, Settings

    root = Path(mount) / "bench-scale" / "cowenv"
    root.parent.mkdir(exist_ok=True)
    session = CowEnvSession(
        Settings(root=str(root), index=IndexOptions((str(wheelhouse),), None, True))
    )
    template = session.cache.get(session.spec(W1))
    return Source(fs, "W1 venv", template.path, template.tree)


def _clone(src: Source, dst: Path, mode: LinkMode) -> None:
    clone_tree(src.path, dst, mode, tree=src.tree)


def _cp(src: Source, dst: Path) -> None:
    subprocess.run(["cp", "-a", "--reflink=always", str(src.path), str(dst)], check=True)


METHODS: dict[str, Callable[[Source, Path], None]] = {
    "snapshot": functools.partial(_clone, mode=LinkMode.SNAPSHOT),
    "per-file clone": functools.partial(_clone, mode=LinkMode.CLONE),
    "cp --reflink": _cp,
}


def methods_for(fs: str) -> list[str]:
    """Snapshots exist on btrfs only."""
    return [m for m in METHODS if fs == "btrfs" or m != "snapshot"]


@dataclass
class Point:
    fs: str
    tree: str
    files: int
    method: str
    ms: float
    disk_per_clone: float  # bytes, statvfs after sync
    data_bytes: int
    rounds: list[float]  # ms of each round, in round order


def time_cases(sources: list[Source], reps: int) -> dict[tuple[str, str, str], list[float]]:
    """ms of each round per (fs, tree, method): every case once per round, rounds interleaved,
    each clone removed (untimed) before the next; ``_common.interleaved`` syncs before each."""
    cases = {}
    for src in sources:
        for method in methods_for(src.fs):
            dst = src.path.parent / f"timed-{src.name.replace(' ', '_')}"
            if dst.exists():
                remove_tree(dst)
            cases[(src.fs, src.name, method)] = Case(
                f"{src.fs} {src.name} {method}",
                functools.partial(METHODS[method], src, dst),
                cleanup=functools.partial(remove_tree, dst),
            )
    interleaved(list(cases.values()), repeat=reps)
    return {key: [t * 1000 for t in case.seconds] for key, case in cases.items()}


def disk_per_clone(src: Source, method: str, clones: int) -> float:
    """statvfs used-bytes delta (after sync) with ``clones`` clones present, per clone."""
    out = src.path.parent / f"disk-{src.name.replace(' ', '_')}"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    before = physical_used_bytes(out)
    for i in range(clones):
        METHODS[method](src, out / f"c{i}")
    added = physical_used_bytes(out) - before
    for child in out.iterdir():
        remove_tree(child)
    out.rmdir()
    return added / clones


def slope_us(points: list[Point], round_: Optional[int] = None) -> float:
    """Least-squares slope of time against files, in µs per file: of the medians, or of one
    round's times."""
    xs = [p.files for p in points]
    ys = [(p.ms if round_ is None else p.rounds[round_]) * 1000 for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else float("nan")


# -- concurrency -----------------------------------------------------------------------------


def _worker(
    barrier: Any, results: Any, src: str, out: str, mode: str, count: int, tag: str
) -> None:
    """Clone ``src`` ``count`` times after every worker is ready; report start, end, latencies."""
    tree = walk_tree(src)
    barrier.wait()
    start = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
    latencies = []
    for i in range(count):
        t = time.perf_counter()
        clone_tree(src, os.path.join(out, f"{tag}-{i}"), LinkMode(mode), tree=tree)
        latencies.append((time.perf_counter() - t) * 1000)
    results.put((start, time.perf_counter(), latencies))


@dataclass
class ConcPoint:
    fs: str
    method: str
    runner: str
    workers: int
    clones: int
    wall_ms: float
    per_clone_ms: float

    @property
    def per_second(self) -> float:
        return self.clones / self.wall_ms * 1000


def concurrent(src: Source, mode: LinkMode, runner: str, workers: int, each: int) -> ConcPoint:
    """``workers`` threads or processes each make ``each`` clones at the same time."""
    out = src.path.parent / "clones-conc"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    if runner == "threads":
        barrier: Any = threading.Barrier(workers)
        results: Any = queue.Queue()
        spawn: Any = threading.Thread
    else:
        ctx = multiprocessing.get_context("fork")
        barrier, results, spawn = ctx.Barrier(workers), ctx.Queue(), ctx.Process
    args = (barrier, results, str(src.path), str(out), mode.value, each)
    runners = [spawn(target=_worker, args=(*args, f"w{w}")) for w in range(workers)]
    for r in runners:
        r.start()
    got = [results.get(timeout=600) for _ in runners]
    for r in runners:
        r.join()
    for child in out.iterdir():
        remove_tree(child)
    out.rmdir()
    wall = (max(g[1] for g in got) - min(g[0] for g in got)) * 1000
    latencies = [t for g in got for t in g[2]]
    name = "snapshot" if mode is LinkMode.SNAPSHOT else "per-file clone"
    return ConcPoint(src.fs, name, runner, workers, len(latencies), wall, median(latencies))


# -- the run ---------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--reps", type=int, default=3, help="interleaved rounds (median)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--quick", action="store_true", help="1k and 5k files, 2 rounds")
    parser.add_argument("--csv", type=Path, default=RESULTS / "scale.csv")
    args = parser.parse_args(argv)
    if args.quick:  # new defaults; options given explicitly still win
        parser.set_defaults(sizes=[1_000, 5_000], reps=2, workers=[1, 2])
        args = parser.parse_args(argv)
    started = time.perf_counter()
    found = {fs: p for fs, p in mounts().items() if fs in ("btrfs", "xfs")}
    if not found:
        sys.exit('no btrfs or XFS mount: run eval "$(bash scripts/cowfs.sh up)" first')
    print(header())
    wh = wheelhouse()
    sources: list[Source] = []
    for fs, mount in found.items():
        print(f"{fs}: preparing trees", flush=True)
        sources += [make_source(fs, mount, f"{n // 1000}k", n) for n in args.sizes]
        sources.append(real_template(fs, mount, wh))

    print(
        f"timing {sum(len(methods_for(s.fs)) for s in sources)} cases x {args.reps} "
        "interleaved rounds",
        flush=True,
    )
    times = time_cases(sources, args.reps)
    points = []
    for src in sources:
        for method in methods_for(src.fs):
            clones = 20 if method == "snapshot" else 3
            points.append(
                Point(
                    src.fs,
                    src.name,
                    src.files,
                    method,
                    median(times[(src.fs, src.name, method)]),
                    disk_per_clone(src, method, clones),
                    src.tree.nbytes,
                    times[(src.fs, src.name, method)],
                )
            )

    conc: list[ConcPoint] = []
    for fs in found:
        real = next(s for s in sources if s.fs == fs and s.name == "W1 venv")
        modes = [LinkMode.SNAPSHOT, LinkMode.CLONE] if fs == "btrfs" else [LinkMode.CLONE]
        for _round in range(2):
            for mode in modes:
                each = 20 if mode is LinkMode.SNAPSHOT else 5
                for runner in ("threads", "processes"):
                    for w in args.workers:
                        conc.append(concurrent(real, mode, runner, w, each))
    conc = _median_conc(conc)

    print_report(points, conc, found)
    print(f"\nend: {load()}")
    write_csv(args.csv, points, conc)
    print(f"CSV: {args.csv}\ntotal {(time.perf_counter() - started) / 60:.1f} min")
    return 0


def _median_conc(points: list[ConcPoint]) -> list[ConcPoint]:
    """One point per configuration: the median wall and latency of its rounds."""
    groups: dict[tuple[str, str, str, int], list[ConcPoint]] = {}
    for c in points:
        groups.setdefault((c.fs, c.method, c.runner, c.workers), []).append(c)
    return [
        ConcPoint(
            *key[:2],
            key[2],
            key[3],
            g[0].clones,
            median([c.wall_ms for c in g]),
            median([c.per_clone_ms for c in g]),
        )
        for key, g in groups.items()
    ]


def print_report(points: list[Point], conc: list[ConcPoint], found: dict[str, str]) -> None:
    print(
        "\n-- clone time and disk vs template size (median of the reps; disk = statvfs "
        "delta after sync, all clones present)"
    )
    print(
        show(
            [
                "fs",
                "tree",
                "files",
                "data MiB",
                "method",
                "ms",
                "rounds ms",
                "µs/file",
                "KiB/clone",
                "of the data",
            ],
            [
                [
                    p.fs,
                    p.tree,
                    p.files,
                    p.data_bytes / 2**20,
                    p.method,
                    p.ms,
                    f"{min(p.rounds):.1f}-{max(p.rounds):.1f}",
                    p.ms * 1000 / p.files,
                    p.disk_per_clone / 1024,
                    f"{p.disk_per_clone / p.data_bytes * 100:.1f} %",
                ]
                for p in points
            ],
        )
    )
    print("\n-- growth (generated trees; the real venv is shown above but not fitted)")
    rows = []
    for fs in found:
        for method in methods_for(fs):
            pts = [p for p in points if p.fs == fs and p.method == method and p.tree != "W1 venv"]
            if len(pts) < 2:
                continue
            flat = max(p.ms for p in pts) / min(p.ms for p in pts)
            per_round = [slope_us(pts, r) for r in range(min(len(p.rounds) for p in pts))]
            rows.append(
                [
                    fs,
                    method,
                    f"{slope_us(pts):.1f}",
                    f"{min(per_round):.1f}-{max(per_round):.1f}",
                    f"{flat:.1f}x",
                    f"{pts[0].files}→{pts[-1].files} files",
                ]
            )
    columns = ["fs", "method", "slope µs/file", "rounds", "largest/smallest time", "range"]
    print(show(columns, rows))
    print("\n-- concurrent clones of the real W1 template")
    print(
        show(
            ["fs", "method", "runner", "workers", "clones", "wall ms", "ms per clone", "clones/s"],
            [
                [
                    c.fs,
                    c.method,
                    c.runner,
                    c.workers,
                    c.clones,
                    c.wall_ms,
                    c.per_clone_ms,
                    c.per_second,
                ]
                for c in conc
            ],
        )
    )


def write_csv(path: Path, points: list[Point], conc: list[ConcPoint]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "section",
                "fs",
                "tree",
                "files",
                "data_bytes",
                "method",
                "ms",
                "us_per_file",
                "disk_bytes_per_clone",
            ]
        )
        for p in points:
            w.writerow(
                [
                    "size",
                    p.fs,
                    p.tree,
                    p.files,
                    p.data_bytes,
                    p.method,
                    round(p.ms, 2),
                    round(p.ms * 1000 / p.files, 2),
                    int(p.disk_per_clone),
                ]
            )
        w.writerow([])
        w.writerow(
            [
                "section",
                "fs",
                "method",
                "runner",
                "workers",
                "clones",
                "wall_ms",
                "ms_per_clone",
                "clones_per_s",
            ]
        )
        for c in conc:
            w.writerow(
                [
                    "concurrency",
                    c.fs,
                    c.method,
                    c.runner,
                    c.workers,
                    c.clones,
                    round(c.wall_ms, 1),
                    round(c.per_clone_ms, 2),
                    round(c.per_second, 2),
                ]
            )


if __name__ == "__main__":
    sys.exit(main())

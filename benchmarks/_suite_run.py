"""The rows of ``suite.py`` and how one runs: the pytest command, its environment, its results."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from _common import FILESYSTEMS, last_lines, load, median, raw_used_bytes
from _suite_prep import PEERS, BenchVenv

STRATEGY = {"btrfs": "snapshot", "xfs": "per-file clone", "ext4": "copy"}


@dataclass(frozen=True)
class Row:
    kind: str  # BENCH_ROW: cowenv | uv | shared | virtualenv | venv | pytest-virtualenv | …
    fs: str
    variant: str  # real | noop
    tests: int
    workers: int = 0

    @property
    def key(self) -> str:
        n = f"-n{self.workers}" if self.workers else ""
        return f"{self.kind}-{self.fs}-{self.variant}{n}"

    @property
    def label(self) -> str:
        names = {
            "cowenv": f"pytest-cowenv {self.fs} ({STRATEGY[self.fs]})",
            "uv": f"uv venv + uv pip (clone) {self.fs}",
            "shared": "shared env (no isolation)",
            "virtualenv": "virtualenv + pip",
            "venv": "python -m venv + pip",
        }
        text = names.get(self.kind, self.kind)
        if self.workers:
            text += f", -n {self.workers}"
        return text


@dataclass
class RunResult:
    row: Row
    wall: float
    overhead_ms: list[float]
    import_ms: list[float]
    work_ms: list[float]
    durations_s: float  # sum of setup+call+teardown of all tests
    peak_disk: int
    failures: list[str]
    header: str = ""
    summary: str = ""


class DiskSampler:
    """Peak of statvfs used bytes above the starting point, sampled every 50 ms."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.start = raw_used_bytes(path)
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, raw_used_bytes(self.path))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, raw_used_bytes(self.path))
        return self.peak - self.start


@dataclass
class Context:
    suite: Path
    venv: BenchVenv
    wheelhouse: Path
    mounts: dict[str, str]
    n: int
    raw: Path

    def work(self, fs: str) -> Path:
        path = Path(self.mounts[fs]) / "bench-suite"
        path.mkdir(exist_ok=True)
        return path

    def cowenv_dir(self, fs: str) -> Path:
        return self.work(fs) / "cowenv"

    def env_for(self, row: Row, out: Path) -> dict[str, str]:
        work = self.work(row.fs)
        for sub in ("envs", "tmp", "uv-cache"):
            (work / sub).mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in DROP_VARS}
        env.update(
            BENCH_ROW=row.kind,
            BENCH_OUT=str(out),
            BENCH_WHEELHOUSE=str(self.wheelhouse),
            BENCH_ENVS=str(work / "envs"),
            # A typical user's settings: bytecode written, pip reading only our wheelhouse.
            PIP_CONFIG_FILE=os.devnull,
            PIP_NO_INDEX="1",
            PIP_FIND_LINKS=str(self.wheelhouse),
            PIP_DISABLE_PIP_VERSION_CHECK="1",
            UV_CACHE_DIR=str(work / "uv-cache"),  # same filesystem as the envs: clones work
            TMPDIR=str(work / "tmp"),
        )
        return env

    def command(self, row: Row, count: int) -> list[str]:
        work = self.work(row.fs)
        cmd = [
            str(self.venv.python),
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-rN",
            "-W",
            "ignore::DeprecationWarning",
            "--basetemp",
            str(work / "tmp" / "pt"),
            f"test_{row.variant}.py",
            "--bench-count",
            str(count),
        ]
        if row.workers:
            cmd += ["-n", str(row.workers)]
        if row.kind == "cowenv":
            cmd += [
                "--cowenv-dir",
                str(self.cowenv_dir(row.fs)),
                "--cowenv-find-links",
                str(self.wheelhouse),
                "--cowenv-offline",
            ]
        return cmd


DROP_VARS = ("PYTHONDONTWRITEBYTECODE", "PIP_FIND_LINKS", "PYTHONPATH", "VIRTUAL_ENV")


def run_row(ctx: Context, row: Row, tag: str, count: Optional[int] = None) -> RunResult:
    out = ctx.raw / f"{row.key}-{tag}.jsonl"
    out.unlink(missing_ok=True)
    sampler = DiskSampler(ctx.mounts[row.fs])
    start = time.perf_counter()
    proc = subprocess.run(
        ctx.command(row, count or row.tests),
        cwd=ctx.suite,
        env=ctx.env_for(row, out),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=3600,
    )
    wall = time.perf_counter() - start
    peak = sampler.stop()
    (ctx.raw / f"{row.key}-{tag}.log").write_text(proc.stdout + proc.stderr, encoding="utf-8")
    return _parse(row, out, proc, wall, peak)


def _parse(
    row: Row, out: Path, proc: subprocess.CompletedProcess[str], wall: float, peak: int
) -> RunResult:
    tests: dict[str, dict[str, Any]] = {}
    failures = []
    if out.exists():
        for line in out.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            t = tests.setdefault(rec["nodeid"], {"props": {}})
            t[rec["when"]] = rec["duration"]
            t["props"].update(rec["props"])
            if rec.get("error"):
                failures.append(f"{rec['nodeid']} ({rec['when']}): {rec['error'][-600:]}")
    if proc.returncode and not failures:
        failures.append(f"pytest exit code {proc.returncode}: {last_lines(proc.stdout, 8)}")
    overhead = [(t.get("setup", 0.0) + t.get("teardown", 0.0)) * 1000 for t in tests.values()]
    durations = sum(
        t.get("setup", 0) + t.get("call", 0) + t.get("teardown", 0) for t in tests.values()
    )
    imports = [t["props"]["import_ms"] for t in tests.values() if "import_ms" in t["props"]]
    work = [sum(t["props"].values()) for t in tests.values() if t["props"]]
    header = next((ln for ln in proc.stdout.splitlines() if ln.startswith("cowenv: dir=")), "")
    summary = "; ".join(
        ln for ln in proc.stdout.splitlines() if ln.startswith(("clones: ", "pool: "))
    )
    return RunResult(row, wall, overhead, imports, work, durations, peak, failures, header, summary)


def plan(args: argparse.Namespace, found: dict[str, str], venv: BenchVenv) -> list[Row]:
    n = args.tests
    uv_n = args.uv_tests or max(1, n // 4)
    peer_n = args.peer_tests
    cow_fs = [fs for fs in FILESYSTEMS if fs in found]
    clone_fs = [fs for fs in ("btrfs", "xfs") if fs in found]
    main_fs = cow_fs[0]
    rows = [Row("cowenv", fs, "real", n) for fs in cow_fs]
    rows += [Row("uv", fs, "real", uv_n) for fs in clone_fs]
    rows.append(Row("shared", main_fs, "real", n))
    rows += [Row("cowenv", fs, "noop", n) for fs in cow_fs]
    rows += [Row("uv", fs, "noop", uv_n) for fs in clone_fs]
    rows.append(Row("shared", main_fs, "noop", n))
    peers = ["virtualenv", "venv", *(p for p in PEERS if p not in venv.peer_errors)]
    rows += [Row(kind, main_fs, "real", peer_n) for kind in peers]
    if args.workers:
        rows.append(Row("cowenv", main_fs, "real", n, args.workers))
        rows.append(Row("shared", main_fs, "real", n, args.workers))
        if clone_fs:
            rows.append(Row("uv", clone_fs[0], "real", uv_n, args.workers))
    return rows


def warm_up(ctx: Context, rows: list[Row], peers: bool) -> dict[str, float]:
    """Cold template builds (reported once), then one unrecorded test per row so that
    caches (uv's, virtualenv's app data, pip's) are warm for every measured round."""
    cold: dict[str, float] = {}
    for row in rows:
        if row.kind == "uv" and row.variant == "noop" and not row.workers:
            print(f"  warm-up: {row.label}", flush=True)
            _must(run_row(ctx, row, "warmup", 1))
    for fs in dict.fromkeys(r.fs for r in rows if r.kind == "cowenv"):
        shutil.rmtree(ctx.cowenv_dir(fs), ignore_errors=True)
        row = Row("cowenv", fs, "noop", 1)
        result = _must(run_row(ctx, row, "cold", 1))
        cold[fs] = result.wall
        print(
            f"  cold: {row.label}: first test {result.wall:.1f} s incl. template build "
            f"({result.header})",
            flush=True,
        )
    for row in rows if peers else ():
        if row.kind not in ("cowenv", "uv") and row.variant == "real" and not row.workers:
            print(f"  warm-up: {row.label}", flush=True)
            run_row(ctx, row, "warmup", 1)
    return cold


def _must(result: RunResult) -> RunResult:
    if result.failures:
        sys.exit(f"{result.row.label} failed:\n" + "\n".join(result.failures[:3]))
    return result


def run_rounds(
    ctx: Context, args: argparse.Namespace, rows: list[Row]
) -> tuple[dict[str, float], dict[str, list[RunResult]]]:
    """Warm up, then every row once per round, interleaved; each run is journalled as it
    ends, so that an interrupted run can still be reported (``--from-journal``)."""
    journal = ctx.raw / "journal.jsonl"
    journal.unlink(missing_ok=True)
    print("\nwarm-up")
    cold = warm_up(ctx, rows, peers=not args.quick)
    _journal(journal, {"cold": cold})
    results: dict[str, list[RunResult]] = {r.key: [] for r in rows}
    schedule = [
        [r for r in rows if not r.workers or rnd < args.xdist_rounds] for rnd in range(args.rounds)
    ]
    total, done = sum(len(s) for s in schedule), 0
    for rnd, rows_now in enumerate(schedule):
        shift = rnd % len(rows_now)
        for row in rows_now[shift:] + rows_now[:shift]:  # interleaved, rotated each round
            res = run_row(ctx, row, f"r{rnd + 1}")
            results[row.key].append(res)
            _journal(journal, {"run": dataclasses.asdict(res)})
            done += 1
            print(
                f"  [{done}/{total}] round {rnd + 1}: {row.label}, {row.variant}, "
                f"{len(res.overhead_ms)} tests: {res.wall:.1f} s, overhead median "
                f"{median(res.overhead_ms):.1f} ms"
                + (f"  FAILED: {len(res.failures)}" if res.failures else ""),
                flush=True,
            )
        print(f"  end of round {rnd + 1}: {load()}", flush=True)
    return cold, results


def _journal(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_journal(path: Path) -> tuple[dict[str, float], dict[str, list[RunResult]]]:
    cold: dict[str, float] = {}
    results: dict[str, list[RunResult]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "cold" in record:
            cold = record["cold"]
        else:
            run = record["run"]
            run["row"] = Row(**run["row"])
            res = RunResult(**run)
            results.setdefault(res.row.key, []).append(res)
    return cold, results

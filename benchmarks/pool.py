"""The clone-ahead pool: a suite in per-test clones against the same suite in one shared env.

    eval "$(bash scripts/cowfs.sh env)"
    python benchmarks/pool.py                          # XFS, btrfs, ext4; 100 tests; 3 rounds
    python benchmarks/pool.py --quick                  # 30 tests, 1 round
    python benchmarks/pool.py --fs btrfs --sections pagecache,cpu --rounds 9

Template: ``requests rich`` from the normal package index. Sections:

``suite``      pytest runs of TESTS tests that each run ``python -c "import requests, rich"``
               in their environment: one shared env (the unsafe baseline), ``cowenv`` with
               the pool (2; it has the kernel read ahead each clone's hot files), the pool
               without that (``no warm``), and the pool off (0); single process and
               ``-n 2``; interleaved (every round runs
               every case once, order rotated). Suite time ratio to the baseline, the
               test-visible wait for a clone (median, p95, from the run's summary), pool
               hits/misses, and the median time of one test's command.
``pagecache``  the first-use penalty of a fresh clone: the same command in the template, in
               a fresh clone, again in that clone, and in fresh clones whose hot files
               were read, or ``fadvise(WILLNEED)``-ed (``.pyc .so .pth``, or with ``.py``
               too, which checked-hash pycs make imports read), first.
``cpu``        a CPU-bound test (a pure-Python loop in the test's thread) while the pool
               refills behind it: loop time with the pool on, against the pool off; and
               with the pool thread working on while the test computes (``not standing
               aside``: how it was before it watched the test thread's CPU clock). Wall
               time, and the CPU time of the test's thread (which a loaded machine moves
               less). In process, sessions taking turns (see ``cpu_section``).

Every run prints the load of the machine (other work on it moves every figure).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Callable, Optional

from _common import REPO, Case, header, interleaved, median, p95, table

from pytest_cowenv.clone import clone_tree, remove_tree
from pytest_cowenv.session import CowEnvSession, Settings
from pytest_cowenv.spec import TemplateSpec
from pytest_cowenv.template import Template

ENV_VARS = {"btrfs": "COWENV_TEST_BTRFS", "xfs": "COWENV_TEST_XFS", "ext4": "COWENV_TEST_EXT4"}
PACKAGES = ("requests", "rich")
COMMAND = "import requests, rich"
HOT = (".pyc", ".so", ".pth")
HOT_PY = (*HOT, ".py")  # checked-hash pycs: an import reads (and hashes) the source too
TARGETS = {"xfs": 1.25, "btrfs": 1.15}  # suite time / shared-env time, single process, pool on
WAIT_TARGET_MS = 1.0  # btrfs: median test-visible wait for a clone
CPU_TARGET = 1.05  # CPU-bound test: loop time with the pool refilling / pool off

SUITE = """
import os
import subprocess
import time

import pytest

MODE = os.environ["BENCH_MODE"]  # "shared" or "cowenv"


@pytest.fixture
def python(request):
    if MODE == "shared":
        return os.environ["BENCH_SHARED_PY"]
    return str(request.getfixturevalue("cowenv").python)


@pytest.mark.cowenv(*os.environ["BENCH_PACKAGES"].split())
@pytest.mark.parametrize("i", range(int(os.environ["BENCH_TESTS"])))
def test_one(python, i):
    start = time.perf_counter()
    subprocess.run([python, "-c", os.environ["BENCH_COMMAND"]], check=True)
    with open(os.environ["BENCH_LOG"], "a") as log:
        log.write(f"{time.perf_counter() - start}\\n")
"""

# Experiments that are not options: switched on by the benchmark only, in the suite's conftest.
CONFTEST = """
import os

from pytest_cowenv import pool

if os.environ.get("BENCH_NO_WARM"):
    _init = pool.ClonePool.__init__

    def _cold_init(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        self.warm = False

    pool.ClonePool.__init__ = _cold_init
"""


def load() -> str:
    avg = os.getloadavg()
    psi = ""
    try:
        with open("/proc/pressure/cpu", encoding="ascii") as f:
            psi = ", cpu pressure " + f.readline().split()[1]
    except OSError:
        pass
    return f"load {avg[0]:.2f} {avg[1]:.2f} {avg[2]:.2f} on {os.cpu_count()} cpus{psi}"


class Bench:
    """One filesystem: its cache root, the template, a shared env, the suite folder."""

    def __init__(self, fs_name: str, base: Path, tests: int) -> None:
        self.fs = fs_name
        self.base = base
        self.root = base / "cache"
        self.tests = tests
        session = CowEnvSession(Settings(root=str(self.root), pool=0))
        self.template: Template = session.cache.get(session.spec(list(PACKAGES)))
        session.close()
        self.shared = base / "shared-env"
        if not self.shared.exists():  # an ordinary venv beside the cache: the unsafe baseline
            clone_tree(self.template.path, self.shared, "copy", tree=self.template.tree)
        self.suite = base / "suite"
        self.suite.mkdir(exist_ok=True)
        (self.suite / "test_suite.py").write_text(textwrap.dedent(SUITE))
        (self.suite / "conftest.py").write_text(textwrap.dedent(CONFTEST))
        self.log = base / "log.txt"
        self.last_output = ""

    def run_suite(self, mode: str, pool: int = 2, workers: int = 0, **env: str) -> None:
        """One timed pytest run; its output is kept for :func:`summary_figures`."""
        argv = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-x",
            f"--cowenv-dir={self.root}",
            f"--cowenv-pool={pool}",
            "test_suite.py",
        ]
        if workers:
            argv += ["-n", str(workers)]
        full_env = {
            **os.environ,
            "BENCH_MODE": mode,
            "BENCH_TESTS": str(self.tests),
            "BENCH_SHARED_PY": str(self.shared / "bin" / "python"),
            "BENCH_PACKAGES": " ".join(PACKAGES),
            "BENCH_COMMAND": COMMAND,
            "BENCH_LOG": str(self.log),
            **env,
        }
        full_env.pop("PYTEST_ADDOPTS", None)
        proc = subprocess.run(argv, cwd=self.suite, env=full_env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{self.fs} {mode}: pytest failed\n{proc.stdout}\n{proc.stderr}")
        self.last_output = proc.stdout

    def take_log(self) -> list[float]:
        """Per test: the seconds its command took."""
        values = [float(x) for x in self.log.read_text().split()] if self.log.exists() else []
        self.log.unlink(missing_ok=True)
        return values


class SuiteCase(Case):
    """A suite run, plus what its summary and per-test log said."""

    def __init__(self, name: str, bench: Bench, mode: str, **kw: object) -> None:
        super().__init__(name, lambda: bench.run_suite(mode, **kw), cleanup=self._collect)  # type: ignore[arg-type]
        self.bench = bench
        self.wait_median: list[float] = []
        self.wait_p95: list[float] = []
        self.hits = 0
        self.misses = 0
        self.per_test: list[float] = []

    def _collect(self) -> None:
        out = self.bench.last_output
        m = re.search(r"test wait ms: for a clone median ([\d.]+), p95 ([\d.]+)", out)
        if m:
            self.wait_median.append(float(m.group(1)))
            self.wait_p95.append(float(m.group(2)))
        m = re.search(r"pool: (\d+) hits, (\d+) misses", out)
        if m:
            self.hits += int(m.group(1))
            self.misses += int(m.group(2))
        self.per_test += self.bench.take_log()


def suite_section(benches: Sequence[Bench], rounds: int, workers: Sequence[int]) -> list[str]:
    lines = []
    verdicts = []
    for bench in benches:
        for n in workers:
            tag = f" -n {n}" if n else ""
            cases = [
                SuiteCase(f"shared env{tag}", bench, "shared", workers=n),
                SuiteCase(f"pool 2{tag}", bench, "cowenv", pool=2, workers=n),
                SuiteCase(f"pool off{tag}", bench, "cowenv", pool=0, workers=n),
            ]
            if not n:  # the kernel's read-ahead of hot files: does it pay for itself?
                cases.insert(
                    2, SuiteCase("pool 2 no warm", bench, "cowenv", pool=2, BENCH_NO_WARM="1")
                )
            interleaved(cases, rounds)
            base = median(cases[0].seconds)
            rows = []
            for case in cases:
                ratio = median(case.seconds) / base
                rows.append(
                    [
                        case.name,
                        f"{median(case.seconds):.2f}",
                        f"{ratio:.3f}",
                        f"{median(case.wait_median):.2f}" if case.wait_median else "-",
                        f"{median(case.wait_p95):.2f}" if case.wait_p95 else "-",
                        f"{case.hits}/{case.misses}" if case.hits or case.misses else "-",
                        f"{median(case.per_test) * 1e3:.0f}",
                    ]
                )
                if case.name == "pool 2" and bench.fs in TARGETS:
                    ok = ratio <= TARGETS[bench.fs]
                    verdicts.append(
                        f"{'MET' if ok else 'MISSED'}: {bench.fs} suite "
                        f"{ratio:.3f}x the shared env (target <= {TARGETS[bench.fs]})"
                    )
                if case.name == "pool 2" and bench.fs == "btrfs":
                    wait = median(case.wait_median)
                    ok = wait <= WAIT_TARGET_MS
                    verdicts.append(
                        f"{'MET' if ok else 'MISSED'}: btrfs median wait for a "
                        f"clone {wait:.2f} ms (target <= {WAIT_TARGET_MS})"
                    )
            lines += [
                "",
                f"{bench.fs}: {bench.tests} tests{tag}, {rounds} rounds; {load()}",
                table(
                    [
                        "case",
                        "suite s",
                        "x shared",
                        "wait med ms",
                        "wait p95 ms",
                        "hits/misses",
                        "test ms",
                    ],
                    rows,
                ),
            ]
    return [*lines, "", *verdicts]


def _run_command(env: Path) -> float:
    start = time.perf_counter()
    subprocess.run([str(env / "bin" / "python"), "-c", COMMAND], check=True)
    return time.perf_counter() - start


def pagecache_section(benches: Sequence[Bench], rounds: int) -> list[str]:
    return [line for bench in benches for line in _pagecache(bench, rounds)]


def _pagecache(bench: Bench, rounds: int) -> list[str]:
    t = bench.template
    hot = [rel for rel, *_ in t.tree.files if rel.endswith(HOT)]
    hot_py = [rel for rel, *_ in t.tree.files if rel.endswith(HOT_PY)]
    work = bench.base / "pagecache"
    work.mkdir(exist_ok=True)
    results: dict[str, list[float]] = {
        k: []
        for k in (
            "template",
            "fresh clone",
            "same clone again",
            "after read",
            "after fadvise",
            "after fadvise+py",
            "read cost",
            "fadvise cost",
            "fadvise+py cost",
            "clone cost",
        )
    }
    counter = iter(range(10**6))

    def fresh() -> Path:
        path = work / f"c{next(counter)}"
        start = time.perf_counter()
        clone_tree(t.path, path, tree=t.tree)
        results["clone cost"].append(time.perf_counter() - start)
        return path

    def read(path: Path) -> None:
        buf = bytearray(1 << 20)
        for rel in hot_py:
            with open(f"{path}{rel}", "rb", buffering=0) as f:
                while f.readinto(buf) == len(buf):
                    pass

    def advise(path: Path, rels: Sequence[str] = hot) -> None:
        for rel in rels:
            fd = os.open(f"{path}{rel}", os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)

    def first_and_again() -> None:
        path = fresh()
        results["fresh clone"].append(_run_command(path))
        results["same clone again"].append(_run_command(path))
        remove_tree(path)

    def prepared(name: str, prepare: Callable[[Path], None]) -> None:
        path = fresh()
        start = time.perf_counter()
        prepare(path)
        results[f"{name} cost"].append(time.perf_counter() - start)
        time.sleep(0.05)  # fadvise reads asynchronously: give it the time a pool would
        results[f"after {name}"].append(_run_command(path))
        remove_tree(path)

    cases = [
        Case("template", lambda: results["template"].append(_run_command(t.path))),
        Case("fresh", first_and_again),
        Case("read", lambda: prepared("read", read)),
        Case("fadvise", lambda: prepared("fadvise", advise)),
        Case("fadvise+py", lambda: prepared("fadvise+py", lambda p: advise(p, hot_py))),
    ]
    interleaved(cases, rounds)
    base = median(results["template"])
    rows = [
        [
            k,
            f"{median(v) * 1e3:.1f}",
            f"{p95(v) * 1e3:.1f}",
            f"{median(v) / base:.3f}" if not k.endswith("cost") else "",
        ]
        for k, v in results.items()
    ]
    return [
        "",
        f'{bench.fs}: first use of a clone, `python -c "{COMMAND}"`; '
        f"hot files {len(hot)}, with .py {len(hot_py)}; {rounds} rounds; {load()}",
        table(["what", "median ms", "p95 ms", "x template"], rows),
    ]


def cpu_section(benches: Sequence[Bench], rounds: int, loops: int) -> list[str]:
    """In process, for steady figures: three sessions (pool off, on, on but not standing
    aside) take turns, five CPU-bound "tests" each (acquire, spin, release), in an order
    rotated per round; between turns every pool is left to finish its work, so that no
    session's refill lands in another's turn."""
    lines, verdicts = [], []
    for bench in benches:
        sessions = {
            name: CowEnvSession(Settings(root=str(bench.root), pool=size))
            for name, size in (("pool off", 0), ("pool 2", 2), ("pool 2, not standing aside", 2))
        }
        spec = sessions["pool off"].spec(list(PACKAGES))
        aside = sessions["pool 2, not standing aside"]
        for session in sessions.values():
            for _ in range(2):  # the second use starts the pool
                session.release(session.acquire(spec, "warm-up"))
        assert aside._pool is not None
        aside._pool._watch.follow = lambda ident: None  # type: ignore[method-assign]
        wall: dict[str, list[float]] = {name: [] for name in sessions}
        cpu: dict[str, list[float]] = {name: [] for name in sessions}
        names = list(sessions)
        for round_ in range(max(rounds, 12)):
            for name in names[round_ % 3 :] + names[: round_ % 3]:
                for session in sessions.values():
                    _settle(session, spec)
                session = sessions[name]
                for _ in range(5):
                    env = session.acquire(spec, "cpu")
                    start, used = time.perf_counter(), time.thread_time()
                    _spin(loops)
                    wall[name].append(time.perf_counter() - start)
                    cpu[name].append(time.thread_time() - used)
                    session.release(env)
        rows = []
        for name, session in sessions.items():
            ratio = median(wall[name]) / median(wall["pool off"])
            session.close()
            rows.append(
                [
                    name,
                    f"{median(wall[name]) * 1e3:.1f}",
                    f"{p95(wall[name]) * 1e3:.1f}",
                    f"{ratio:.3f}",
                    f"{median(cpu[name]) / median(cpu['pool off']):.3f}",
                    f"{session.stats.pool_hits}/{session.stats.pool_misses}"
                    if session.stats.pool_hits or session.stats.pool_misses
                    else "-",
                ]
            )
            if name == "pool 2":
                verdicts.append(
                    f"{'MET' if ratio <= CPU_TARGET else 'MISSED'}: {bench.fs} "
                    f"CPU-bound test {ratio:.3f}x with the pool on "
                    f"(target <= {CPU_TARGET})"
                )
        lines += [
            "",
            f"{bench.fs}: CPU-bound tests ({loops} loop steps each), "
            f"{len(wall['pool off'])} per case; {load()}",
            table(
                ["case", "test ms median", "p95", "x pool off", "cpu x pool off", "hits/misses"],
                rows,
            ),
        ]
    return [*lines, "", *verdicts]


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def _settle(session: CowEnvSession, spec: TemplateSpec, timeout: float = 30.0) -> None:
    """Wait until ``session``'s pool is full and its trash empty."""
    pool = session._pool
    if pool is None:
        return
    template = session.cache.get(spec)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (
        pool.ready(template, session.settings.link_mode) < pool.size
        or any(pool.trash_dir.iterdir())
    ):
        time.sleep(0.01)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fs", default="xfs,btrfs,ext4", help="filesystems (xfs,btrfs,ext4)")
    parser.add_argument("--tests", type=int, default=100, help="tests per suite run (100)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per case (3)")
    parser.add_argument("--sections", default="suite,pagecache,cpu")
    parser.add_argument("--workers", default="0,2", help="xdist worker counts to run (0,2)")
    parser.add_argument("--cpu-loops", type=int, default=1_500_000)
    parser.add_argument("--quick", action="store_true", help="30 tests, 1 round")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "pool")
    args = parser.parse_args(argv)
    if args.quick:
        args.tests, args.rounds = 30, 1
    sections = args.sections.split(",")
    benches = []
    for name in args.fs.split(","):
        mount = os.environ.get(ENV_VARS[name])
        if not mount:
            print(f"skipping {name}: {ENV_VARS[name]} is not set (scripts/cowfs.sh env)")
            continue
        base = Path(mount) / "bench-pool"
        base.mkdir(exist_ok=True)
        benches.append(Bench(name, base, args.tests))
    lines = [header(), load()]
    print("\n".join(lines), flush=True)
    runs = {
        "suite": lambda: suite_section(
            benches, args.rounds, [int(w) for w in args.workers.split(",")]
        ),
        "pagecache": lambda: pagecache_section(benches, max(args.rounds, 5)),
        "cpu": lambda: cpu_section(benches, args.rounds, args.cpu_loops),
    }
    for name in sections:
        found = runs[name]()
        print("\n".join(found), flush=True)  # a long run shows each section as it ends
        lines += found
    lines.append(f"end: {load()}")
    print(lines[-1])
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"pool-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    out.write_text(text + "\n")
    print(f"\nsaved to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

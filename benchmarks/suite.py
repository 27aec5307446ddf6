"""The headline benchmark: a suite of N tests that each need their own W1 environment.

Every way of getting a per-test environment runs the same generated suite (see
``benchmarks/peers/suite_conftest.py``), in one invocation, rows interleaved and repeated;
medians are printed. Then the first-use penalty of a fresh clone and the disk that 200 clones
take, per filesystem.

    python benchmarks/suite.py --quick                      # ~3 minutes
    python benchmarks/suite.py --csv docs/bench-suite.csv --png docs/bench-suite.png

Needs the mounts of ``scripts/cowfs.sh`` (``eval "$(bash scripts/cowfs.sh env)"``), uv, and
the network once (the W1 wheelhouse and the peers' benchmark venv are cached in
``benchmarks/results/``). ``matplotlib`` (the ``bench`` extra) is needed only for the PNG.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from _common import median, p95, physical_used_bytes, table
from _common import used_bytes as logical_used_bytes

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
W1 = ("requests", "rich", "pytest", "httpx", "pydantic")
IMPORT_W1 = "import requests, rich, httpx, pydantic"
PEERS = ("pytest-virtualenv", "pytest-venv")
FILESYSTEMS = ("btrfs", "xfs", "ext4")
STRATEGY = {"btrfs": "snapshot", "xfs": "per-file clone", "ext4": "copy"}

# -- helpers shared with scale.py (statistics, tables and disk come from _common) ------------


def raw_used_bytes(path: str | os.PathLike[str]) -> int:
    """statvfs used bytes *without* a sync: cheap enough to sample during a run."""
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def show(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """``_common.table`` with numbers formatted: 1 decimal from 10 up, else 2; nan as '-'."""
    return table(headers, [[_cell(v) for v in r] for r in rows])


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if v != v:  # nan
            return "-"
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return str(v)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} (1/5/15 min)"


def mounts() -> dict[str, str]:
    """The benchmark filesystems that are mounted (COWENV_TEST_<FS>), checked by type."""
    from pytest_cowenv.fs import fs_type

    found = {}
    for name in FILESYSTEMS:
        root = os.environ.get(f"COWENV_TEST_{name.upper()}")
        if root and os.path.isdir(root) and fs_type(root) == name:
            found[name] = root
        else:
            print(f"note: COWENV_TEST_{name.upper()} is not a mounted {name}: its rows are skipped")
    return found


# -- preparation: wheelhouse, benchmark venv, generated suite ------------------------------


def wheelhouse() -> Path:
    """W1 and its dependencies as local wheels, so every row installs offline and alike."""
    wh = RESULTS / "wheelhouse"
    if not any(wh.glob("pydantic-*.whl")):
        print(f"downloading W1 wheels into {wh} (once)")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--only-binary=:all:",
                "--dest",
                str(wh),
                *W1,
            ],
            check=True,
        )
    return wh


@dataclass
class BenchVenv:
    python: Path
    peer_errors: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


def bench_venv() -> BenchVenv:
    """A separate venv that runs every row: this project (editable), pytest-xdist and the
    peers from PyPI, so none of them ever enters the project's own dependencies."""
    root = RESULTS / "benchvenv"
    python = root / "bin" / "python"
    if not python.exists():
        print(f"creating the benchmark venv {root} (once)")
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
        _pip(python, "-e", str(REPO), "pytest-xdist")
    venv = BenchVenv(python)
    for peer in PEERS:  # one by one: a peer that cannot install must not stop the others
        proc = _pip(python, peer, check=False)
        if proc.returncode:
            venv.peer_errors[peer] = f"cannot install: {_last_lines(proc.stderr + proc.stdout)}"
    out = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    venv.versions = {p["name"].lower(): p["version"] for p in json.loads(out)}
    return venv


def _pip(python: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        check=check,
    )


def _last_lines(text: str, n: int = 3) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and "is ignored" not in ln]
    return " | ".join(lines[-n:]) or "(no output)"


def generate_suite(n: int) -> Path:
    """``test_real.py`` (install a tiny wheel, run its console script, which imports W1) and
    ``test_noop.py`` (ask for the environment, do nothing), N tests each, N tiny wheels."""
    suite = RESULTS / "suite"
    if suite.exists():
        shutil.rmtree(suite)
    (suite / "wheels").mkdir(parents=True)
    make_wheel = _load_make_wheel()
    for i in range(n):
        make_wheel(
            suite / "wheels",
            f"bench-tiny-{i}",
            "1.0",
            modules={
                f"bench_tiny_{i}.py": f"{IMPORT_W1}\n\n\ndef main():\n    print('tiny {i}')\n"
            },
            scripts={f"bench-tiny-{i}": f"bench_tiny_{i}:main"},
        )
    shutil.copy(HERE / "peers" / "suite_conftest.py", suite / "conftest.py")
    (suite / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (suite / "test_real.py").write_text(
        f"""from pathlib import Path

import pytest
from conftest import W1, timed

WHEELS = Path(__file__).parent / "wheels"
pytestmark = pytest.mark.cowenv(*W1)


@pytest.mark.parametrize("i", range({n}))
def test_real(benv, request, i):
    timed(request, "install_ms", benv.install, WHEELS / f"bench_tiny_{{i}}-1.0-py3-none-any.whl")
    # The console script's first run is the env's first use: its module imports W1.
    out = timed(request, "import_ms", benv.run, f"bench-tiny-{{i}}")
    assert out.strip() == f"tiny {{i}}"
""",
        encoding="utf-8",
    )
    (suite / "test_noop.py").write_text(
        f"""import pytest
from conftest import W1

pytestmark = pytest.mark.cowenv(*W1)


@pytest.mark.parametrize("i", range({n}))
def test_noop(benv, i):
    pass
""",
        encoding="utf-8",
    )
    return suite


def _load_make_wheel() -> Any:
    spec = importlib.util.spec_from_file_location("_wheels", REPO / "tests" / "_wheels.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_wheel


# -- rows and runs ---------------------------------------------------------------------------


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
        env = {k: v for k, v in os.environ.items() if k not in _DROP_VARS}
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


_DROP_VARS = ("PYTHONDONTWRITEBYTECODE", "PIP_FIND_LINKS", "PYTHONPATH", "VIRTUAL_ENV")


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
        failures.append(f"pytest exit code {proc.returncode}: {_last_lines(proc.stdout, 8)}")
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


# -- aggregation -----------------------------------------------------------------------------


@dataclass
class RowStats:
    row: Row
    rounds: int
    overhead_median: float
    overhead_p95: float
    import_median: float
    work_median: float
    wall: float  # for the suite's N tests (extrapolated when fewer ran)
    wall_spread: tuple[float, float]
    peak_disk: int
    extrapolated: bool
    failures: list[str]
    header: str
    summary: str


def aggregate(results: list[RunResult], n: int) -> RowStats:
    row = results[0].row
    walls = [_scaled_wall(r, n) for r in results]
    return RowStats(
        row=row,
        rounds=len(results),
        overhead_median=median([median(r.overhead_ms) for r in results]),
        overhead_p95=median([p95(r.overhead_ms) for r in results]),
        import_median=median([median(r.import_ms) for r in results if r.import_ms]),
        work_median=median([median(r.work_ms) for r in results if r.work_ms]),
        wall=median(walls),
        wall_spread=(min(walls), max(walls)),
        peak_disk=int(median([r.peak_disk for r in results])),
        extrapolated=row.tests < n,
        failures=[f for r in results for f in r.failures],
        header=results[-1].header,
        summary=results[-1].summary,
    )


def _scaled_wall(r: RunResult, n: int) -> float:
    """Wall time of the run, or — when fewer than N tests ran — the session's fixed cost plus
    the measured per-test time scaled to N tests (spread over the workers)."""
    ran = len(r.overhead_ms)
    if not ran or ran >= n:
        return r.wall
    workers = max(1, r.row.workers)
    fixed = max(0.0, r.wall - r.durations_s / workers)
    return fixed + r.durations_s / workers * n / ran


def reference(stats: dict[str, RowStats], row: Row) -> Optional[RowStats]:
    """The pytest-cowenv row a row is compared with: same filesystem, variant and workers;
    rows on a filesystem without a cowenv row compare with btrfs."""
    for fs in (row.fs, "btrfs"):
        ref = stats.get(Row("cowenv", fs, row.variant, 0, row.workers).key)
        if ref:
            return ref
    return None


def ratio(a: float, b: float) -> float:
    return a / b if b and b == b and a == a else float("nan")


# -- first use and disk ------------------------------------------------------------------------


def template_for(ctx: Context, fs: str) -> Any:
    """The warm W1 template the suite used on ``fs`` (the same spec as the marker's)."""
    from pytest_cowenv._install import IndexOptions
    from pytest_cowenv.session import CowEnvSession, Settings

    index = IndexOptions((str(ctx.wheelhouse),), None, True)
    session = CowEnvSession(Settings(root=str(ctx.cowenv_dir(fs)), index=index))
    template = session.cache.get(session.spec(W1, base_dir=ctx.suite))
    if template.built_now:
        print(f"note: the {fs} template was built again for the disk/first-use part")
    return template


def _import_ms(python: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k not in _DROP_VARS}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # write nothing into the template or the clones
    start = time.perf_counter()
    subprocess.run([str(python), "-c", IMPORT_W1], check=True, env=env)
    return (time.perf_counter() - start) * 1000


def first_use(ctx: Context, fs: str, clones: int) -> dict[str, float]:
    """First ``python -c 'import W1'`` in fresh clones vs in the (warm) template, sampled
    alternately so that both see the same machine."""
    from pytest_cowenv.clone import clone_tree, remove_tree

    template = template_for(ctx, fs)
    python = template.path / "bin" / "python"
    _import_ms(python)  # warm the template's pages
    base = ctx.work(fs) / "first-use"
    if base.exists():
        shutil.rmtree(base)
    base.mkdir()
    clone_ms, in_template, first, second = [], [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ext4's "copied instead" warning: expected here
        for i in range(clones):
            in_template.append(_import_ms(python))
            dst = base / f"c{i}"
            clone_ms.append(clone_tree(template.path, dst, tree=template.tree).seconds * 1000)
            first.append(_import_ms(dst / "bin" / "python"))
            second.append(_import_ms(dst / "bin" / "python"))
            remove_tree(dst)
    base.rmdir()
    return {
        "clone_ms": median(clone_ms),
        "template_ms": median(in_template),
        "first_ms": median(first),
        "second_ms": median(second),
        "penalty_ms": median(first) - median(in_template),
    }


@dataclass
class DiskResult:
    fs: str
    how: str
    clones: int
    template_bytes: int  # one full copy of the template, measured like the clones
    added_bytes: int  # statvfs used blocks (btrfs: DUP metadata counted twice)
    logical_bytes: int  # btrfs: what `btrfs filesystem df` says is used; elsewhere = statvfs
    trials: list[int] = field(default_factory=list)  # statvfs deltas of every trial

    @property
    def per_clone(self) -> float:
        return self.added_bytes / self.clones

    @property
    def of_template(self) -> float:
        """Everything the clones added, as a share of one template."""
        return self.added_bytes / self.template_bytes

    @property
    def of_copies(self) -> float:
        """What the clones added, as a share of what as many full copies take."""
        return self.added_bytes / (self.template_bytes * self.clones)


def disk_use(ctx: Context, fs: str, how: str, wanted: int, trials: int) -> DiskResult:
    """statvfs used-bytes delta (after ``sync``) with all clones present, made by
    ``clone_tree`` directly; the median of ``trials`` (other writers on the same filesystem
    show up as spread between trials)."""
    from pytest_cowenv.clone import LinkMode

    template = template_for(ctx, fs)
    base = ctx.work(fs) / "disk"
    if base.exists():
        shutil.rmtree(base)
    base.mkdir()
    mode = {"snapshot": LinkMode.SNAPSHOT, "per-file clone": LinkMode.CLONE}.get(how, LinkMode.COPY)
    size = _copy_bytes(template, base)
    count = wanted
    if mode is LinkMode.COPY:  # only as many copies as fit in 70 % of the free space
        count = max(1, min(wanted, int(shutil.disk_usage(base).free * 0.7 // size)))
    added, logical = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(trials):
            a, b = _clones_add(template, base, mode, count)
            added.append(a)
            logical.append(b)
    base.rmdir()
    return DiskResult(fs, how, count, size, int(median(added)), int(median(logical)), added)


def _clones_add(template: Any, base: Path, mode: Any, count: int) -> tuple[int, int]:
    from pytest_cowenv.clone import clone_tree, remove_tree
    from pytest_cowenv.fs import fs_type

    before = physical_used_bytes(base), logical_used_bytes(base)  # both sync first
    try:
        for i in range(count):
            clone_tree(template.path, base / f"c{i}", mode, tree=template.tree)
        return physical_used_bytes(base) - before[0], logical_used_bytes(base) - before[1]
    finally:
        for child in base.iterdir():
            remove_tree(child)
        if shutil.which("btrfs") and fs_type(base) == "btrfs":
            # Destroyed snapshots are freed by a background cleaner: let it finish first.
            subprocess.run(
                ["btrfs", "subvolume", "sync", str(base.parent)], check=False, capture_output=True
            )


def _copy_bytes(template: Any, base: Path, copies: int = 3) -> int:
    """What one full copy of the template takes on this filesystem (statvfs, measured)."""
    from pytest_cowenv.clone import LinkMode, clone_tree, remove_tree

    before = physical_used_bytes(base)
    for i in range(copies):
        clone_tree(template.path, base / f"copy{i}", LinkMode.COPY, tree=template.tree)
    added = physical_used_bytes(base) - before
    for i in range(copies):
        remove_tree(base / f"copy{i}")
    return max(1, added // copies)


# -- the run -----------------------------------------------------------------------------------


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=200, help="tests in the suite (200)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (3)")
    parser.add_argument(
        "--uv-tests",
        type=int,
        default=0,
        help="tests run per round for per-test uv (default: a quarter)",
    )
    parser.add_argument(
        "--peer-tests",
        type=int,
        default=2,
        help="tests run per round for the slow peers (2; extrapolated)",
    )
    parser.add_argument("--workers", type=int, default=2, help="xdist rows (-n); 0 = none")
    parser.add_argument(
        "--xdist-rounds", type=int, default=1, help="rounds that include the xdist rows (1)"
    )
    parser.add_argument("--disk-clones", type=int, default=200)
    parser.add_argument("--disk-trials", type=int, default=3, help="median of (3)")
    parser.add_argument("--first-use-clones", type=int, default=7)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="20 tests, 1 round, 1 peer test, 20 disk clones: a smoke run",
    )
    parser.add_argument(
        "--from-journal",
        type=Path,
        help="report the runs journalled in this file (raw/journal.jsonl) instead of running",
    )
    parser.add_argument("--csv", type=Path, default=RESULTS / "suite.csv")
    parser.add_argument("--png", type=Path, default=RESULTS / "suite.png")
    args = parser.parse_args(argv)
    if args.quick:  # new defaults; options given explicitly still win
        parser.set_defaults(
            tests=20, rounds=1, peer_tests=1, disk_clones=20, disk_trials=1, first_use_clones=3
        )
        args = parser.parse_args(argv)
    started = time.perf_counter()

    found = mounts()
    if not found:
        sys.exit('no benchmark filesystem: run eval "$(bash scripts/cowfs.sh up)" first')
    RESULTS.mkdir(exist_ok=True)
    ctx = Context(
        generate_suite(args.tests), bench_venv(), wheelhouse(), found, args.tests, RESULTS / "raw"
    )
    ctx.raw.mkdir(exist_ok=True)
    rows = plan(args, found, ctx.venv)
    print("command: python " + " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]]))
    print(_machine(ctx))
    print(f"start: {load()}")
    for peer, error in ctx.venv.peer_errors.items():
        print(f"{peer}: {error}")

    if args.from_journal:
        cold, results = read_journal(args.from_journal)
        print(f"\nresults read from {args.from_journal} (nothing run)")
    else:
        cold, results = run_rounds(ctx, args, rows)
    stats = {k: aggregate(v, args.tests) for k, v in results.items()}

    report(ctx, args, stats, cold)
    fs_part = {fs: first_use(ctx, fs, args.first_use_clones) for fs in found}
    disk = disk_part(ctx, args.disk_clones, args.disk_trials)
    print_first_use(fs_part)
    print_disk(disk)
    print_targets(stats, disk)
    write_csv(args.csv, stats, fs_part, disk)
    write_png(args.png, stats, args.tests)
    print(
        f"\nend: {load()}\nCSV: {args.csv}\nPNG: {args.png}\ntotal benchmark time "
        f"{(time.perf_counter() - started) / 60:.1f} min"
    )
    return 0


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


def disk_part(ctx: Context, clones: int, trials: int) -> list[DiskResult]:
    plan = [
        ("btrfs", "snapshot"),
        ("btrfs", "per-file clone"),
        ("xfs", "per-file clone"),
        ("ext4", "copy"),
    ]
    return [disk_use(ctx, fs, how, clones, trials) for fs, how in plan if fs in ctx.mounts]


def _machine(ctx: Context) -> str:
    import platform

    v = ctx.venv.versions
    uv = subprocess.run(["uv", "--version"], capture_output=True, text=True).stdout.strip()
    peers = ", ".join(f"{p} {v.get(p, 'not installed')}" for p in PEERS)
    return (
        f"machine: {platform.node()}, {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}\n"
        f"tools: pytest {v.get('pytest')}, pytest-cowenv {v.get('pytest-cowenv')}, "
        f"pytest-xdist {v.get('pytest-xdist')}, {uv}, virtualenv {v.get('virtualenv')}, "
        f"pip {v.get('pip')}, {peers}\n"
        f"filesystems: " + ", ".join(f"{fs} at {p}" for fs, p in ctx.mounts.items())
    )


def report(
    ctx: Context, args: argparse.Namespace, stats: dict[str, RowStats], cold: dict[str, float]
) -> None:
    n = args.tests
    print(
        f"\n== suite of {n} tests, each with its own W1 env "
        f"({' '.join(W1)}); medians of {_rounds(stats, False)} interleaved rounds "
        f"(xdist rows: {_rounds(stats, True)}) =="
    )
    pool = next((s.header for s in stats.values() if s.header), "")
    print(f"pytest-cowenv defaults as run: {pool}")
    print(
        "per-test uv: `uv venv` + `uv pip install --link-mode=clone` from a warm cache; "
        "cache and envs on the same filesystem as the row says"
    )
    print(
        "overhead = pytest setup + teardown of the test (getting and removing the env); "
        "first import = the first run of the tiny wheel's console script, whose module "
        "imports requests, rich, httpx and pydantic; * = fewer tests ran, the wall time is "
        f"extrapolated to {n} tests\n"
    )
    for variant, title in (
        ("real", "tests that install a tiny wheel and run its console script (imports W1)"),
        ("noop", "tests that do nothing in their env"),
    ):
        rows = [s for s in stats.values() if s.row.variant == variant]
        print(f"-- {title}")
        print(
            show(
                [
                    "row",
                    "fs",
                    "tests/round",
                    "overhead ms",
                    "p95 ms",
                    "first import ms",
                    f"wall s ({n})",
                    "peak disk MiB",
                    "overhead vs cowenv",
                    "wall vs cowenv",
                ],
                [_row_cells(s, stats) for s in rows],
            )
        )
        print()
    for fs, wall in cold.items():
        print(
            f"cold start on {fs}: the first test took {wall:.1f} s including the template "
            "build (pytest start-up included; uv cache warm)"
        )
    for s in stats.values():
        if s.summary:
            print(f"{s.row.label} [{s.row.variant}]: {s.summary}")
    failed = [s for s in stats.values() if s.failures]
    for s in failed:
        print(f"\nFAILURES in {s.row.label} [{s.row.variant}] ({len(s.failures)}):")
        print(s.failures[0])


def _rounds(stats: dict[str, RowStats], xdist: bool) -> int:
    """How many rounds the results hold (a journal may stop early)."""
    return max((s.rounds for s in stats.values() if bool(s.row.workers) == xdist), default=0)


def _row_cells(s: RowStats, stats: dict[str, RowStats]) -> list[Any]:
    ref = reference(stats, s.row)
    star = "*" if s.extrapolated else ""
    return [
        s.row.label,
        s.row.fs,
        f"{s.row.tests}{star}",
        s.overhead_median,
        s.overhead_p95,
        s.import_median,
        f"{s.wall:.1f}{star}",
        s.peak_disk / 2**20,
        times(ratio(s.overhead_median, ref.overhead_median)) if ref else "-",
        times(ratio(s.wall, ref.wall)) if ref else "-",
    ]


def times(x: float) -> str:
    """A ratio as text: 2 decimals below 10, none above."""
    if x != x:
        return "-"
    return f"{x:.2f}x" if x < 10 else f"{x:.0f}x"


def print_first_use(fs_part: dict[str, dict[str, float]]) -> None:
    print(
        "\n-- first use: `python -c 'import requests, rich, httpx, pydantic'` "
        "(PYTHONDONTWRITEBYTECODE=1; page cache not dropped)"
    )
    print(
        show(
            [
                "fs",
                "strategy",
                "clone ms",
                "in template ms",
                "first in clone ms",
                "second in clone ms",
                "first-use penalty ms",
            ],
            [
                [
                    fs,
                    STRATEGY[fs],
                    d["clone_ms"],
                    d["template_ms"],
                    d["first_ms"],
                    d["second_ms"],
                    d["penalty_ms"],
                ]
                for fs, d in fs_part.items()
            ],
        )
    )


def print_disk(disk: list[DiskResult]) -> None:
    print(
        "\n-- disk after `sync`: statvfs used-bytes delta with all clones present, median of "
        "the trials (btrfs: statvfs counts its DUP metadata twice; `btrfs filesystem df` in "
        "brackets). Other writers on the same filesystem show as spread between trials."
    )
    print(
        show(
            [
                "fs",
                "how",
                "clones",
                "one copy MiB",
                "copies would take MiB",
                "clones add MiB",
                "per clone KiB",
                "of one template",
                "of the copies",
                "each trial MiB",
            ],
            [
                [
                    d.fs,
                    d.how,
                    d.clones,
                    d.template_bytes / 2**20,
                    d.template_bytes * d.clones / 2**20,
                    f"{d.added_bytes / 2**20:.1f}" + _logical(d, d.logical_bytes / 2**20),
                    d.per_clone / 1024,
                    f"{d.of_template * 100:.1f} %"
                    + _logical(d, d.logical_bytes / d.template_bytes * 100, " %"),
                    f"{d.of_copies * 100:.2f} %",
                    " / ".join(f"{t / 2**20:.1f}" for t in d.trials),
                ]
                for d in disk
            ],
        )
    )


def _logical(d: DiskResult, value: float, unit: str = "") -> str:
    return f" [{value:.1f}{unit}]" if d.fs == "btrfs" else ""


def targets(stats: dict[str, RowStats], disk: list[DiskResult]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each of issue 10's targets this run could measure."""
    out: list[tuple[str, str, bool]] = []

    def get(kind: str, fs: str, variant: str = "real", workers: int = 0) -> Optional[RowStats]:
        for s in stats.values():
            r = s.row
            if (r.kind, r.fs, r.variant, r.workers) == (kind, fs, variant, workers):
                return s
        return None

    cow = get("cowenv", "btrfs")
    if cow:
        out.append(
            (
                "btrfs overhead ≤ 5 ms median",
                f"{cow.overhead_median:.2f} ms",
                cow.overhead_median <= 5,
            )
        )
        uv = get("uv", "btrfs")
        if uv:
            x = ratio(uv.overhead_median, cow.overhead_median)
            out.append(
                ("btrfs ≥ 40x faster than per-test uv (import not counted)", f"{x:.0f}x", x >= 40)
            )
        for kind in PEERS:
            peer = get(kind, "btrfs")
            if peer:
                x = ratio(peer.overhead_median, cow.overhead_median)
                out.append((f"btrfs ≥ 300x faster than {kind}", f"{x:.0f}x", x >= 300))
        shared = get("shared", "btrfs")
        if shared:
            x = ratio(cow.wall, shared.wall)
            out.append(("btrfs suite within 1.3x of the shared env", f"{x:.2f}x", x <= 1.3))
    for variant, goal, what in (
        ("noop", 1.2, "do-nothing tests"),
        ("real", 3.0, "tests that import W1"),
    ):
        cx, ux = get("cowenv", "xfs", variant), get("uv", "xfs", variant)
        if cx and ux:
            extra = (lambda s: s.import_median) if variant == "real" else (lambda s: 0.0)
            x = ratio(ux.overhead_median + extra(ux), cx.overhead_median + extra(cx))
            out.append((f"XFS ≥ {goal}x faster than per-test uv, {what}", f"{x:.2f}x", x >= goal))
    limits = {
        ("btrfs", "snapshot"): ("template", 0.25),
        ("xfs", "per-file clone"): ("copies", 0.06),
        ("btrfs", "per-file clone"): ("copies", 0.12),
    }
    for d in disk:
        if (d.fs, d.how) in limits:
            of, limit = limits[(d.fs, d.how)]
            share = d.of_template if of == "template" else d.of_copies
            out.append(
                (
                    f"{d.clones} {d.how}s on {d.fs} add ≤ {limit * 100:.0f} % of {of}",
                    f"{share * 100:.1f} %",
                    share <= limit,
                )
            )
    return out


def print_targets(stats: dict[str, RowStats], disk: list[DiskResult]) -> None:
    print("\n-- issue 10 targets (ratios from this run)")
    print(
        show(
            ["target", "measured", "met"],
            [[t, m, "yes" if ok else "NO"] for t, m, ok in targets(stats, disk)],
        )
    )


def write_csv(
    path: Path,
    stats: dict[str, RowStats],
    fs_part: dict[str, dict[str, float]],
    disk: list[DiskResult],
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "section",
                "row",
                "fs",
                "variant",
                "workers",
                "tests_per_round",
                "extrapolated",
                "rounds",
                "overhead_median_ms",
                "overhead_p95_ms",
                "first_import_ms",
                "test_work_ms",
                "wall_s",
                "wall_min_s",
                "wall_max_s",
                "peak_disk_mib",
                "overhead_x_cowenv",
                "wall_x_cowenv",
                "failures",
            ]
        )
        for s in stats.values():
            ref = reference(stats, s.row)
            w.writerow(
                [
                    "suite",
                    s.row.label,
                    s.row.fs,
                    s.row.variant,
                    s.row.workers,
                    s.row.tests,
                    s.extrapolated,
                    s.rounds,
                    _r(s.overhead_median),
                    _r(s.overhead_p95),
                    _r(s.import_median),
                    _r(s.work_median),
                    _r(s.wall),
                    _r(s.wall_spread[0]),
                    _r(s.wall_spread[1]),
                    _r(s.peak_disk / 2**20),
                    _r(ratio(s.overhead_median, ref.overhead_median)) if ref else "",
                    _r(ratio(s.wall, ref.wall)) if ref else "",
                    len(s.failures),
                ]
            )
        w.writerow([])
        w.writerow(
            [
                "section",
                "fs",
                "strategy",
                "clone_ms",
                "template_import_ms",
                "first_import_in_clone_ms",
                "second_import_in_clone_ms",
                "penalty_ms",
            ]
        )
        for fs, fu in fs_part.items():
            w.writerow(
                [
                    "first_use",
                    fs,
                    STRATEGY[fs],
                    *(
                        _r(fu[k])
                        for k in ("clone_ms", "template_ms", "first_ms", "second_ms", "penalty_ms")
                    ),
                ]
            )
        w.writerow([])
        w.writerow(
            [
                "section",
                "fs",
                "how",
                "clones",
                "template_mib",
                "added_mib",
                "per_clone_kib",
                "share_of_template",
                "share_of_copies",
            ]
        )
        for d in disk:
            w.writerow(
                [
                    "disk",
                    d.fs,
                    d.how,
                    d.clones,
                    _r(d.template_bytes / 2**20),
                    _r(d.added_bytes / 2**20),
                    _r(d.per_clone / 1024),
                    _r(d.of_template, 4),
                    _r(d.of_copies, 4),
                ]
            )


def _r(v: float, digits: int = 2) -> Any:
    return "" if v != v else round(v, digits)


def _short(value: float, unit: str) -> str:
    if unit == "ms" and value >= 1000:
        return f"{value / 1000:.1f} s"
    return f"{value:,.0f} {unit}" if value >= 1000 else f"{value:.3g} {unit}"


def write_png(path: Path, stats: dict[str, RowStats], n: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no PNG: matplotlib is missing (pip install 'pytest-cowenv[bench]')")
        return
    rows = [s for s in stats.values() if s.row.variant == "real"]
    rows.sort(key=lambda s: s.overhead_median)
    labels = [s.row.label + (" *" if s.extrapolated else "") for s in rows]
    colors = [
        "#2a7" if s.row.kind == "cowenv" else "#999" if s.row.kind == "shared" else "#c64"
        for s in rows
    ]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.42 * len(rows) + 1.8), sharey=True)
    for ax, values, title, unit in (
        (
            ax1,
            [max(s.overhead_median, 0.01) for s in rows],
            "per-test environment overhead (median)",
            "ms",
        ),
        (ax2, [s.wall for s in rows], f"wall time of the {n}-test suite", "s"),
    ):
        bars = ax.barh(labels, values, color=colors)
        ax.set_xscale("log")
        ax.set_title(title + f", {unit} (log)")
        ax.invert_yaxis()
        for bar, v in zip(bars, values):
            ax.text(
                bar.get_width() * 1.08,
                bar.get_y() + bar.get_height() / 2,
                _short(v, unit),
                va="center",
                fontsize=8,
            )
        ax.set_xlim(right=max(values) * 6)
    rounds = _rounds(stats, False)
    fig.suptitle(
        f"pytest-cowenv benchmark: {n} tests, each its own W1 env; median of {rounds} "
        f"round{'s' if rounds != 1 else ''} (* = extrapolated from fewer tests)",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())

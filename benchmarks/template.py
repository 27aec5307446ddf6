"""How soon the first test of a cold W1 spec starts, against ``uv venv && uv pip install``.

    eval "$(bash scripts/cowfs.sh env)"              # builds on btrfs when it is mounted
    python benchmarks/template.py                     # 5 timed rounds after 1 warm-up round
    python benchmarks/template.py --repeat 21 --out docs/bench-template.txt

W1 = requests, rich, pytest, httpx, pydantic: from the package index (uv's default, as a user
has it), and offline from a local wheelhouse (``--wheelhouse``, default the benchmarks' W1
wheelhouse). uv's package cache (``UV_CACHE_DIR``) is on the same filesystem as the
environments and warm (the warm-up round fills it): every timed run is a cold *environment*
with a warm *package* cache. ``PYTHONDONTWRITEBYTECODE`` is unset, as on a user's machine.
Rounds are interleaved (see ``_common``).

Rows, each a fresh process:

- ``pytest alone``: a test file with one test that needs no environment: pytest's own start.
- ``cowenv, index`` and ``cowenv, wheelhouse``: the same test asking for W1 through the
  ``cowenv`` fixture, in a new cache directory each run (``--cowenv-find-links WHEELHOUSE
  --cowenv-offline`` for the second).
- ``uv, index`` and ``uv, wheelhouse``: ``uv venv --python <the same interpreter>`` and
  ``uv pip install`` of W1 (``--no-index --offline --find-links WHEELHOUSE`` for the second).

Each test records when it starts and when its first ``python -c "import requests, rich, httpx,
pydantic"`` in the environment is done (neither environment has bytecode by then: both compile
what they import); after the uv commands the same import is timed. The figure the targets are
about, *cost to the first test*, is what cowenv adds to the first test's start, against the uv
commands' time in the same round; the verdict is the median of those per-round ratios, printed
with their quartiles. It is taken two ways:

- whole process: the cowenv run's first test start minus the ``pytest alone`` run's, both from
  launch (the table's ``cost``; its ``vs uv`` is the ratio of the medians);
- in process (the verdict): the same difference, both counted from the moment a ``-p`` plugin
  of the benchmark is imported, which pytest does after its own start and before it loads
  installed plugins (pytest-cowenv among them). What comes before that moment (the
  interpreter, pytest's import, the arguments' first parse) is the same work in both runs,
  and its jitter, which the whole-process figure subtracts from one run and adds with the
  other, is left out. Both ways print their quartiles; the verdict lines also split the
  in-process cost into the plugin's start (up to the ``cowenv`` fixture's start) and the
  fixture's own setup, and print what is left out (launch to that plugin) in both runs.

The second table shows where
a cowenv build's time goes (its template's metadata) and, when one runs, the compile behind the
tests, whose end pytest waits for before it exits (``exit``): since one test uses the template
here, none is awaited (a serial run compiles it on the spare core and stops that compile when
the test ends; the rest is the next run's).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from _common import W1, Case, header, interleaved, load, median, quartiles, table, wheelhouse

from pytest_cowenv.clone import remove_tree, unprotect

IMPORT = "import requests, rich, httpx, pydantic"
# `-p bench_loaded`: imported before pytest loads installed plugins; stamps that moment and
# when the `cowenv` fixture's setup starts.
LOADED = """
import os, time
import pytest

def stamp(name):
    with open(os.path.join(os.environ["BENCH_STAMPS"], name), "w") as f:
        f.write(repr(time.time()))

stamp("loaded")

@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(fixturedef):
    if fixturedef.argname == "cowenv":
        stamp("fixture")
"""
TESTS = f"""
import os, subprocess, time
import pytest

def stamp(name):
    with open(os.path.join(os.environ["BENCH_STAMPS"], name), "w") as f:
        f.write(repr(time.time()))

@pytest.mark.cowenv(*{W1!r})
def test_cowenv(cowenv):
    stamp("start")
    subprocess.run([str(cowenv.python), "-c", {IMPORT!r}], check=True)
    stamp("imported")

def test_plain():
    stamp("start")
"""
INDEX, WHEELHOUSE = "index", "wheelhouse"
SOURCES = (INDEX, WHEELHOUSE)
TARGETS = {INDEX: 1.3, WHEELHOUSE: 1.5}  # issue 19: cost to the first test, times uv's


def wipe(path: Path) -> None:
    """Remove ``path``, read-only template subvolumes included."""
    for child in [*path.glob("*"), *path.glob("*/*"), *path.glob("*/*/*")]:
        if child.name != "bin" and child.is_dir() and not child.is_symlink():
            unprotect(child)  # False for plain directories
    if os.path.lexists(path):
        remove_tree(path)


class Bench:
    """The work folder, the environment every process gets, and what each run recorded."""

    def __init__(self, work: Path, wheels: Path) -> None:
        self.work, self.wheels = work, wheels
        self.stamps = work / "stamps"
        self.stamps.mkdir()
        (work / "test_first.py").write_text(TESTS, encoding="utf-8")
        (work / "bench_loaded.py").write_text(LOADED, encoding="utf-8")
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        self.env.update(BENCH_STAMPS=str(self.stamps), UV_CACHE_DIR=str(work / "uv-cache"))
        self.start: dict[str, list[float]] = {}  # case -> seconds from launch to test start
        self.inside: dict[str, list[float]] = {}  # case -> from `bench_loaded` to test start
        self.fixture: dict[str, list[float]] = {}  # case -> from `bench_loaded` to the fixture
        self.imported: dict[str, list[float]] = {}  # case -> seconds to the first import's end
        self.exits: dict[str, list[float]] = {}  # case -> seconds to the process's exit
        self.phases: dict[str, list[dict[str, float]]] = {}  # "<case> gen <n>" -> phases

    def run(self, argv: Sequence[str]) -> None:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, env=self.env, cwd=self.work
        )
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stdout}{proc.stderr}")

    def stamp(self, name: str) -> float:
        return float((self.stamps / name).read_text(encoding="utf-8"))

    def record(self, name: str, launched: float, *, imported: bool) -> None:
        start, loaded = self.stamp("start"), self.stamp("loaded")
        self.start.setdefault(name, []).append(start - launched)
        self.inside.setdefault(name, []).append(start - loaded)
        if imported:
            self.fixture.setdefault(name, []).append(self.stamp("fixture") - loaded)
            self.imported.setdefault(name, []).append(self.stamp("imported") - launched)
        for stamp in self.stamps.iterdir():
            stamp.unlink()

    def pytest_case(self, name: str, source: Optional[str]) -> Case:
        root = self.work / f"cache-{name.replace(', ', '-').replace(' ', '-')}"
        argv = [sys.executable, "-m", "pytest", "-c", os.devnull, "--rootdir", str(self.work)]
        argv += ["-p", "no:cacheprovider", "-p", "bench_loaded", "-q", "test_first.py"]
        if source is None:
            argv += ["-k", "test_plain", "-p", "no:cowenv"]
        else:
            argv += ["-k", "test_cowenv", "--cowenv-dir", str(root)]
            if source == WHEELHOUSE:
                argv += ["--cowenv-find-links", str(self.wheels), "--cowenv-offline"]

        def run() -> None:
            launched = time.time()
            self.run(argv)
            self.exits.setdefault(name, []).append(time.time() - launched)
            self.record(name, launched, imported=source is not None)
            if source is not None:
                self.keep_phases(name, root)

        return Case(name, run, setup=lambda: wipe(root), cleanup=lambda: wipe(root))

    def keep_phases(self, name: str, root: Path) -> None:
        for meta_file in (root / "templates").glob("*.json"):
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            made = [("first template", meta["phases"])]
            if "phases_behind" in meta:  # the first one is gone: its twin keeps its phases
                made.append(("compiled behind", meta["phases_behind"]))
            for what, phases in made:
                self.phases.setdefault(f"{name}: {what}", []).append(
                    {**phases, "files": meta["files"]}
                )

    def uv_case(self, name: str, source: str) -> Case:
        uv = shutil.which("uv") or "uv"
        env = self.work / f"env-{source}"
        python = env / "bin" / "python"
        from pytest_cowenv.spec import find_interpreter

        interpreter = find_interpreter(None).executable
        install = [uv, "pip", "install", "-q", "--python", str(python)]
        if source == WHEELHOUSE:
            install += ["--no-index", "--offline", "--find-links", str(self.wheels)]

        def run() -> None:
            launched = time.time()
            self.run([uv, "venv", "-q", "--python", interpreter, str(env)])
            self.run([*install, *W1])
            ready = time.time()
            self.run([str(python), "-c", IMPORT])
            self.start.setdefault(name, []).append(ready - launched)
            self.imported.setdefault(name, []).append(time.time() - launched)

        return Case(name, run, setup=lambda: wipe(env), cleanup=lambda: wipe(env))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds (5)")
    parser.add_argument("--dir", type=Path, help="where to build (default: the btrfs mount)")
    parser.add_argument("--wheelhouse", type=Path, help="W1's wheels (default: downloaded once)")
    parser.add_argument("--out", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    if shutil.which("uv") is None:
        raise SystemExit("uv is not on PATH: the reference rows need it")
    wheels = (args.wheelhouse or wheelhouse()).resolve()
    base = args.dir or Path(os.environ.get("COWENV_TEST_BTRFS") or tempfile.gettempdir())
    work = Path(tempfile.mkdtemp(prefix="bench-template-", dir=base))
    bench = Bench(work, wheels)
    cases = [bench.pytest_case("pytest alone", None)]
    for source in SOURCES:
        cases.append(bench.pytest_case(f"cowenv, {source}", source))
        cases.append(bench.uv_case(f"uv, {source}", source))
    from pytest_cowenv.fs import fs_type

    where = f"{work} ({fs_type(work)})"
    start = header()
    print(start, flush=True)
    print(f"first test of a cold W1 spec in {where}: {args.repeat} rounds after a warm-up")
    try:
        interleaved(cases, args.repeat, warmup=1, sync_path=work)
    finally:
        wipe(work)
    text = "\n".join([start, report(bench, args.repeat, where), f"end: {load()}"])
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


def report(bench: Bench, repeat: int, where: str) -> str:
    def last(values: dict[str, list[float]], name: str) -> list[float]:
        return values.get(name, [])[-repeat:]  # the warm-up round's figures are dropped

    def med(values: dict[str, list[float]], name: str) -> float:
        return median(last(values, name))

    floor = med(bench.start, "pytest alone")
    lines = [
        f"first test of a cold W1 spec in {where}",
        f"medians of {repeat} interleaved rounds after a warm-up, seconds from launch",
        "",
    ]
    rows = [
        [
            "pytest alone",
            f"{floor:.2f}",
            "",
            "",
            "",
            " ".join(f"{s:.2f}" for s in last(bench.start, "pytest alone")),
        ]
    ]
    alone = last(bench.start, "pytest alone")
    alone_inside = last(bench.inside, "pytest alone")
    verdicts: list[str] = []
    alone_before = [s - i for s, i in zip(alone, alone_inside)]
    for source in SOURCES:
        ours, uv = f"cowenv, {source}", f"uv, {source}"
        cost, uv_cost = med(bench.start, ours) - floor, med(bench.start, uv)
        uv_runs = last(bench.start, uv)
        # Round by round: each cowenv run against pytest alone and uv in the same round (a
        # slow round slows all three), the median of those ratios the figure.
        whole = [(c - a) / u for c, a, u in zip(last(bench.start, ours), alone, uv_runs)]
        inside = [(c - a) / u for c, a, u in zip(last(bench.inside, ours), alone_inside, uv_runs)]
        plugin = [f - a for f, a in zip(last(bench.fixture, ours), alone_inside)]
        fixture = [c - f for c, f in zip(last(bench.inside, ours), last(bench.fixture, ours))]
        # From launch to the `-p` plugin's import: the part the in-process figure leaves out.
        before = [s - i for s, i in zip(last(bench.start, ours), last(bench.inside, ours))]
        for name, net in ((ours, cost), (uv, uv_cost)):
            rows.append(
                [
                    name,
                    f"{med(bench.start, name):.2f}",
                    f"{net:.2f}",
                    f"{net / uv_cost:.2f}x",
                    f"{med(bench.imported, name):.2f}",
                    " ".join(f"{s:.2f}" for s in last(bench.start, name)),
                ]
            )
        verdict = "met" if median(inside) <= TARGETS[source] else "NOT met"
        verdicts += [
            f"{source}: whole process {median(whole):.2f}x (IQR {spread(whole)}), in process "
            f"{median(inside):.2f}x (IQR {spread(inside)}); in process, the plugin's start "
            f"{median(plugin) * 1000:.0f} ms + the fixture {median(fixture) * 1000:.0f} ms "
            f"against uv's {median(uv_runs) * 1000:.0f} ms; launch to the -p plugin "
            f"{median(before) * 1000:.0f} ms (pytest alone {median(alone_before) * 1000:.0f})",
            f"target: cost to the first test <= {TARGETS[source]}x uv's, {source}: "
            f"{median(inside):.2f}x, in process, round by round ({verdict})",
        ]
    header = ["way to W1", "first test", "cost", "vs uv", "first import", "runs (first test)"]
    lines += [table(header, rows), ""]
    lines.append(
        "cost = the first test's start minus pytest's own (cowenv), the uv commands (uv); "
        "first import = when `python -c '" + IMPORT + "'` in the environment is done; "
        "vs uv = of the medians; below, medians of round-by-round ratios"
    )
    lines += verdicts
    lines += ["", phase_table(bench, repeat)]
    return "\n".join(lines)


def spread(values: list[float]) -> str:
    q1, q3 = quartiles(values)
    return f"{q1:.2f}-{q3:.2f}x"


def phase_table(bench: Bench, repeat: int) -> str:
    names = ["venv", "wheels", "install", "relocate", "clone", "compile", "publish", "walk"]
    names += ["hash", "sync"]
    runs = {name: phases[-repeat:] for name, phases in bench.phases.items()}
    shown = [n for n in names if any(n in run for one in runs.values() for run in one)]
    rows: list[list[Any]] = []
    for name, one in runs.items():
        cells = [f"{median([run[n] for run in one]):.3f}" if n in one[0] else "-" for n in shown]
        rows.append([name, *cells, f"{int(median([run['files'] for run in one]))}"])

    def exits(case: str) -> str:
        return f"{median(bench.exits[case][-repeat:]):.2f}"

    text = table(["phases (median s)", *shown, "files"], rows)
    return (
        text
        + "\n"
        + "; ".join(
            f"{case}: exit {exits(case)} s" for case in bench.exits if case != "pytest alone"
        )
    )


if __name__ == "__main__":
    sys.exit(main())

"""How long a cold template build of W1 takes, against plain uv and virtualenv + pip.

    eval "$(bash scripts/cowfs.sh env)"             # builds on btrfs when it is mounted
    python benchmarks/template.py                    # 3 timed rounds after 1 warm-up round
    python benchmarks/template.py --repeat 5 --no-pip --dir /some/where

W1 = requests, rich, pytest, httpx, pydantic, from the machine's usual index (pip.conf, uv's
defaults). The warm-up round fills the package caches of uv and pip, so every timed build is a
cold *environment* with a warm *package* cache. Rounds are interleaved (see ``_common``).

Rows, each a fresh process doing what a user's first run would do:

- ``cowenv, uv``: a new cache root each run: virtualenv, uv install, relocation, byte-compiling
  every module from scratch, publishing. The honest cold figure.
- ``cowenv, uv, warm pyc store``: a template never built before, but whose modules another
  template already compiled (``<root>/pyc``): the case of a second spec, or a changed one.
- ``uv venv + uv pip install``: the issue's reference (no bytecode: it compiles on import).
- ``uv venv + uv pip install --compile-bytecode``: the same work as a template (all modules
  compiled), for comparison.
- ``cowenv, pip`` (``PYTEST_COWENV_NO_UV=1``) and ``virtualenv + pip install`` (seeded; pip
  compiles while installing), unless ``--no-pip``.

Medians in seconds, the ratio to ``uv venv + uv pip install``, and the median time of each
build phase of our rows (from the template's metadata; ``total`` includes the interpreter
start and imports).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

from _common import Case, header, interleaved, load, median, table

from pytest_cowenv.clone import remove_tree, unprotect

W1 = ("requests", "rich", "pytest", "httpx", "pydantic")
UV_REF = "uv venv + uv pip install"
PIP_REF = "virtualenv + pip install"
BUILD = """
import json, sys, time
start = time.perf_counter()
from pytest_cowenv import TemplateCache, TemplateSpec
from pytest_cowenv.store import prepare_root
template = TemplateCache(prepare_root(sys.argv[1])).get(TemplateSpec.create(sys.argv[2:]))
assert template.built_now
meta = template.meta
print(json.dumps({**meta["phases"], "build": meta["build_seconds"], "files": meta["files"],
                  "total": time.perf_counter() - start, "reused": meta["bytecode"]["reused"]}))
"""


CPU: dict[str, list[float]] = {}  # case name -> CPU seconds of its processes, per run


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(argv: Sequence[str], env: Optional[dict[str, str]] = None) -> str:
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def wipe(path: Path) -> None:
    """Remove ``path``, read-only template subvolumes included."""
    for child in [*path.glob("*"), *path.glob("*/*"), *path.glob("*/*/*")]:
        if child.name != "bin" and child.is_dir() and not child.is_symlink():
            unprotect(child)  # False for plain directories
    if os.path.lexists(path):
        remove_tree(path)


def cowenv_case(
    name: str,
    root: Path,
    phases: dict[str, list[dict[str, float]]],
    *,
    keep_pyc: bool,
    env: Optional[dict[str, str]] = None,
) -> Case:
    def setup() -> None:
        if keep_pyc and (root / "pyc").is_dir():  # a new template, bytecode already compiled
            wipe(root / "templates")
            (root / "templates").mkdir()
        else:
            wipe(root)

    def build() -> None:
        out = run([sys.executable, "-c", BUILD, str(root), *W1], env)
        phases.setdefault(name, []).append(json.loads(out.splitlines()[-1]))

    return Case(name, with_cpu(name, build), setup=setup)


def shell_case(name: str, path: Path, commands: Callable[[Path], list[list[str]]]) -> Case:
    def build() -> None:
        for argv in commands(path):
            run(argv)

    return Case(name, with_cpu(name, build), setup=lambda: wipe(path), cleanup=lambda: wipe(path))


def with_cpu(name: str, build: Callable[[], None]) -> Callable[[], None]:
    """``build``, also recording the CPU seconds its processes used: on a loaded machine
    the wall time says as much about the neighbours as about the build."""

    def measured() -> None:
        before = children_cpu()
        build()
        CPU.setdefault(name, []).append(children_cpu() - before)

    return measured


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (3)")
    parser.add_argument("--dir", type=Path, help="where to build (default: the btrfs mount)")
    parser.add_argument("--no-pip", action="store_true", help="skip the two pip rows")
    args = parser.parse_args(argv)
    if shutil.which("uv") is None:
        raise SystemExit("uv is not on PATH: the reference rows need it")
    base = args.dir or Path(os.environ.get("COWENV_TEST_BTRFS") or tempfile.gettempdir())
    work = Path(tempfile.mkdtemp(prefix="bench-template-", dir=base))
    phases: dict[str, list[dict[str, float]]] = {}
    uv = shutil.which("uv") or "uv"
    cases = [
        cowenv_case("cowenv, uv", work / "cold", phases, keep_pyc=False),
        cowenv_case("cowenv, uv, warm pyc store", work / "warm", phases, keep_pyc=True),
        shell_case(
            UV_REF,
            work / "uvenv",
            lambda p: [
                [uv, "venv", "-q", str(p)],
                [uv, "pip", "install", "-q", "--python", str(p / "bin" / "python"), *W1],
            ],
        ),
        shell_case(
            UV_REF + " --compile-bytecode",
            work / "uvenvc",
            lambda p: [
                [uv, "venv", "-q", str(p)],
                [
                    uv,
                    "pip",
                    "install",
                    "-q",
                    "--compile-bytecode",
                    "--python",
                    str(p / "bin" / "python"),
                    *W1,
                ],
            ],
        ),
    ]
    if not args.no_pip:
        no_uv = {"PYTEST_COWENV_NO_UV": "1"}
        cases.append(cowenv_case("cowenv, pip", work / "pip", phases, keep_pyc=False, env=no_uv))
        cases.append(
            shell_case(
                PIP_REF,
                work / "venv",
                lambda p: [
                    [sys.executable, "-m", "virtualenv", "-q", "--no-periodic-update", str(p)],
                    [
                        str(p / "bin" / "python"),
                        "-m",
                        "pip",
                        "install",
                        "-q",
                        "--disable-pip-version-check",
                        *W1,
                    ],
                ],
            )
        )
    print(header(), flush=True)
    print(f"building W1 in {work} ({args.repeat} rounds after a warm-up) ...", flush=True)
    try:
        interleaved(cases, args.repeat, warmup=1)
    finally:
        wipe(work)
    # The warm-up round's figures are dropped, as interleaved() drops its times.
    report(cases, {name: runs[-args.repeat :] for name, runs in phases.items()}, args.repeat)
    print(f"end: {load()}")
    return 0


def report(cases: Sequence[Case], phases: dict[str, list[dict[str, float]]], repeat: int) -> None:
    seconds = {case.name: median(case.seconds) for case in cases}
    cpu = {name: median(runs[-repeat:]) for name, runs in CPU.items()}
    rows = []
    for case in cases:
        name = case.name
        vs_pip = f"{seconds[name] / seconds[PIP_REF]:.2f}x" if PIP_REF in seconds else "-"
        rows.append(
            [
                name,
                f"{seconds[name]:.2f}",
                f"{seconds[name] / seconds[UV_REF]:.2f}x",
                vs_pip,
                f"{cpu[name]:.2f}",
                f"{cpu[name] / cpu[UV_REF]:.2f}x",
                " ".join(f"{s:.2f}" for s in case.seconds),
            ]
        )
    header = ["way to get W1", "median s", "vs uv", "vs pip", "CPU s", "CPU vs uv", "runs"]
    print(table(header, rows))
    names = ["venv", "wheels", "install", "relocate", "compile", "publish", "walk", "total"]
    shown = [n for n in names if any(n in run for runs in phases.values() for run in runs)]
    phase_rows: list[list[Any]] = []
    for name, runs in phases.items():
        cells = [f"{median([run.get(n, 0.0) for run in runs]):.3f}" for n in shown]
        phase_rows.append([name, *cells, f"{int(median([run['files'] for run in runs]))}"])
    print()
    print(table(["phases (median s)", *shown, "files"], phase_rows))
    cold, warm = seconds["cowenv, uv"], seconds["cowenv, uv, warm pyc store"]
    print(
        f"\ntarget <= 1.3x {UV_REF}: cold {cold / seconds[UV_REF]:.2f}x, "
        f"warm pyc store {warm / seconds[UV_REF]:.2f}x; same work "
        f"(--compile-bytecode): cold {cold / seconds[UV_REF + ' --compile-bytecode']:.2f}x"
    )
    if PIP_REF in seconds:
        print(
            f"target <= 1.0x {PIP_REF} (pip route): "
            f"{seconds['cowenv, pip'] / seconds[PIP_REF]:.2f}x"
        )


if __name__ == "__main__":
    sys.exit(main())

"""What a template's checked-hash pycs cost the interpreters started in its clones, against
timestamp pycs and against none (issue 17).

    eval "$(bash scripts/cowfs.sh env)"
    python benchmarks/bytecode.py                                # pytest's own import, 40 starts
    python benchmarks/bytecode.py --spec 'pytest==9.1.*' --project DIR --suite DIR --rounds 5

A template is byte-compiled with checked-hash pycs (PEP 552): every import of a compiled module
also reads its source and hashes it, so that a module a test edits in its clone is never
shadowed by a stale pyc. This builds one template (``pytest-cowenv build``), clones it three
times and compares, interleaved:

- ``checked-hash``: the clone as the template is (what a warm run's tests import from);
- ``timestamp``: the same clone recompiled by ``compileall --invalidation-mode timestamp``;
- ``none``: its pycs removed before every run, so the interpreter compiles what it imports and
  writes timestamp pycs (what a cold run's first clone of an uncompiled template does).

It prints the CPU time (user + system) of one interpreter start that imports ``--imports``,
the system calls of one such start (with strace, if installed: the figure a loaded machine
cannot blur) and, with ``--suite``, the CPU and wall time of ``pytest ARGS`` run from that
directory with each clone's own pytest. ``PYTHONDONTWRITEBYTECODE`` is unset for every run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import header, load, median, quartiles, table

from pytest_cowenv.clone import LinkMode, clone_tree, remove_tree, unprotect

VARIANTS = ("checked-hash", "timestamp", "none")


def child_env(clone: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    for name in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH", "VIRTUAL_ENV"):
        env.pop(name, None)
    env["VIRTUAL_ENV"] = str(clone)
    env["PATH"] = os.pathsep.join([str(clone / "bin"), env.get("PATH", os.defpath)])
    return env


def build(cache: Path, spec: list[str], project: str | None) -> Path:
    argv = [sys.executable, "-m", "pytest_cowenv", "--dir", str(cache), "--json", "build", *spec]
    argv += ["--project", project] if project else []
    env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"pytest-cowenv build failed:\n{proc.stdout}{proc.stderr}")
    return Path(json.loads(proc.stdout)["path"])


def pycs(root: Path) -> list[Path]:
    return list(root.rglob("__pycache__/*.pyc"))


def writable(root: Path) -> None:
    """Give a clone of a protected template (modes without write bits) its owner's write bits:
    the interpreter writes pycs into it."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, os.lstat(path).st_mode | 0o200)


def make_clones(template: Path, work: Path) -> dict[str, Path]:
    clones = {}
    for variant in VARIANTS:
        clone = work / variant
        clone_tree(template, clone, LinkMode.AUTO)
        writable(clone)
        clones[variant] = clone
    site = next((clones["timestamp"] / "lib").glob("python*/site-packages"))
    argv = [str(clones["timestamp"] / "bin" / "python"), "-m", "compileall", "-q", "-f"]
    argv += ["--invalidation-mode", "timestamp", str(site)]
    subprocess.run(argv, check=True, env=child_env(clones["timestamp"]), capture_output=True)
    return clones


def timed(argv: list[str], clone: Path, variant: str, cwd: Path | None) -> tuple[float, float]:
    """(CPU s of the process and its children, wall s) of one run of ``argv``."""
    if variant == "none":
        for pyc in pycs(clone / "lib"):
            pyc.unlink()
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=child_env(clone), capture_output=True, text=True)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed in {clone}:\n{proc.stdout}{proc.stderr}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return cpu, wall


def syscalls(clone: Path, variant: str, code: str) -> collections.Counter[str]:
    """System calls of one interpreter start in ``clone`` that runs ``code``, by name."""
    counts: collections.Counter[str] = collections.Counter()
    if shutil.which("strace") is None:
        return counts
    if variant == "none":
        for pyc in pycs(clone / "lib"):
            pyc.unlink()
    with tempfile.NamedTemporaryFile(suffix=".strace") as log:
        argv = ["strace", "-f", "-o", log.name, str(clone / "bin" / "python"), "-c", code]
        subprocess.run(argv, env=child_env(clone), check=True, capture_output=True)
        for line in Path(log.name).read_text().splitlines():
            found = re.match(r"^\d+\s+(\w+)\(", line)
            if found:
                counts[found.group(1)] += 1
    return counts


def rows(samples: dict[str, list[tuple[float, float]]], which: int) -> list[list[str]]:
    out = []
    base = median([s[which] for s in samples["none"]])
    for variant, values in samples.items():
        series = [s[which] for s in values]
        low, high = quartiles(series)
        ratio = median(series) / base if base else float("nan")
        out.append([variant, f"{median(series):.3f}", f"{low:.3f}-{high:.3f}", f"{ratio:.2f}x"])
    return out


def interleave(
    clones: dict[str, Path], rounds: int, argv_of: dict[str, list[str]], cwd: Path | None
) -> dict[str, list[tuple[float, float]]]:
    samples: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
    for round_ in range(rounds):
        shift = round_ % len(VARIANTS)
        for variant in [*VARIANTS[shift:], *VARIANTS[:shift]]:
            samples[variant].append(timed(argv_of[variant], clones[variant], variant, cwd))
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", action="append", help="requirement (repeatable; pytest)")
    parser.add_argument("--project", help="also install the project at this directory")
    parser.add_argument("--imports", default="pytest, _pytest.pytester", help="(%(default)s)")
    parser.add_argument("--starts", type=int, default=40, help="interpreter starts (40)")
    parser.add_argument("--suite", type=Path, help="run the clones' pytest from this directory")
    parser.add_argument("--args", default="tests/ -q -p no:cacheprovider", help="(%(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="suite runs per variant (3)")
    parser.add_argument("--dir", type=Path, help="work directory (default: the btrfs mount)")
    args = parser.parse_args()
    print(header(), flush=True)
    base = args.dir or Path(os.environ.get("COWENV_TEST_BTRFS") or tempfile.gettempdir())
    work = Path(tempfile.mkdtemp(prefix="bench-bytecode-", dir=base))
    try:
        template = build(work / "cache", args.spec or ["pytest"], args.project)
        print(f"template {template}: {len(pycs(template))} pycs; work dir {work}", flush=True)
        clones = make_clones(template, work)
        code = f"import {args.imports}"
        argv_of = {v: [str(c / "bin" / "python"), "-c", code] for v, c in clones.items()}
        starts = interleave(clones, args.starts, argv_of, None)
        head = ["pycs", "median", "IQR", "/ none"]
        print(f"\n-- CPU s of one interpreter start: python -c {code!r} ({args.starts} each)")
        print(table(head, rows(starts, 0)))
        counts = {v: syscalls(c, v, code) for v, c in clones.items()}
        if any(counts.values()):
            names = ["openat", "read", "newfstatat", "fstat", "lseek", "write"]
            print("\n-- system calls of one such start (strace -f)")
            print(
                table(
                    ["pycs", "total", *names],
                    [
                        [v, str(sum(c.values())), *(str(c[n]) for n in names)]
                        for v, c in counts.items()
                    ],
                )
            )
        if args.suite:
            suite_argv = {
                v: [str(c / "bin" / "pytest"), *args.args.split()] for v, c in clones.items()
            }
            suite = interleave(clones, args.rounds, suite_argv, args.suite)
            print(f"\n-- pytest {args.args} from {args.suite} ({args.rounds} each)")
            print("CPU s:")
            print(table(head, rows(suite, 0)))
            print("wall s:")
            print(table(head, rows(suite, 1)))
    finally:
        for child in [*work.glob("cache/*/*"), *work.glob("*")]:
            if child.is_dir() and not child.is_symlink():
                unprotect(child)  # the template (btrfs: a read-only snapshot)
        remove_tree(work)
    print(f"\nend: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

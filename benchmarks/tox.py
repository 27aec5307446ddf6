"""A real project's tox matrix, run from its own spec: pytest-cowenv against tox with tox-uv,
in one run.

    eval "$(bash scripts/cowfs.sh env)"              # works on btrfs when it is mounted
    python benchmarks/tox.py --out docs/bench-tox.txt     # 3 interleaved rounds
    python benchmarks/tox.py --rounds 1 --modes cold,warm  # a quicker look
    python benchmarks/tox.py --project svcs --out docs/bench-tox-svcs.txt  # uv.lock and groups
    python benchmarks/tox.py --project structlog --rounds 1  # a dependency group, no lock

The project (``--project``, from ``PROJECTS``) is an unmodified sdist from the package index
that carries its own tests and a ``tox.ini``; the envs (``--envs``; ``{py}`` is the
interpreter running this script, as the project's ``tox.ini`` names it) are read from that
``tox.ini``: ``[testenv:NAME]`` sections (generative names expanded) before ``[testenv]``,
each value's lines kept when the env has their factor condition. Each tool gets its own copy
of the sources (builds write ``build/``, ``*.egg-info`` or coverage files into the tree they
run in); nothing in them is edited.

- ``rerunfailures``: pytest-rerunfailures 16.7, ``py311-pytest{83,84,90,91}``: its test deps
  are ``deps`` lines under pytest-version factors.
- ``svcs``: svcs 26.2.0, ``3.11-tests`` and ``3.11-tests-optional``: ``runner =
  uv-venv-lock-runner`` (``uv sync --locked`` from its ``uv.lock``) with ``dependency_groups``
  ``cov`` (which includes ``tests``) and, under the ``optional`` factor, ``optional``;
  the command is ``coverage run -m pytest``.
- ``structlog``: structlog 26.1.0, ``3.11-tests``: ``dependency_groups`` ``tests`` resolved
  afresh (tox-uv's default runner; no lock), the project built by tox's ``.pkg`` env; the
  command is ``pytest``.

- **tox + tox-uv**: a venv made here (``results/tox/toxvenv``: ``pip install tox tox-uv``,
  uv pinned to the version pytest-cowenv uses) runs ``tox -e <envs>`` in the project with
  the project's own ``tox.ini``, ``--workdir`` on the benchmark filesystem.
- **pytest-cowenv**: a generated wrapper outside the project tree (``wrapper/`` in the work
  dir) with one test per env, marked with that env's spec as ``tox.ini`` declares it:
  ``@pytest.mark.cowenv(*deps, project=SOURCES, groups=..., extras=...)``, and
  ``lock=SOURCES + "/uv.lock"`` for the lock runner (so: the same pins as tox). It runs the
  env's command in the clone with ``cwd=SOURCES``: ``cowenv.runpytest(<args>)`` when the
  command is ``pytest``, else the command from the clone's ``bin`` with the clone's
  environment (no ``PYTEST_*`` variable of the outer run). The outer pytest is the
  interpreter running this script (this project installed, pytest-xdist for ``-n 2``).

Modes (``--modes``), each run by both tools in every round, the order rotated per round:

- ``cold``: an empty tox workdir, an empty cowenv cache dir (and fresh source copies). The
  uv package cache is warm for both: one untimed run of each tool fills it first.
- ``warm``: the same command again over the previous run's tox workdir / cowenv cache.
- ``cold -n 2`` and ``warm -n 2``: ``tox -p 2`` against the wrapper under ``pytest -n 2``.

Both tools run with ``PYTHONDONTWRITEBYTECODE`` and ``PIP_FIND_LINKS`` unset and
``PIP_CONFIG_FILE=/dev/null`` (a typical user's settings); both install through the same uv
and its default cache. Printed: the median wall time of each mode and tool and their ratio,
the CPU seconds of each run's processes, the per-env test counts of every run, read by the same
parser from each command's last summary line (they must be equal between the tools), and where
the time goes per env (tox's ``--result-json`` journal; cowenv's setup and call durations and
the template's build phases).
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from _common import RESULTS, Case, header, interleaved, load, median, quartiles, table

from pytest_cowenv._install import uv_binary
from pytest_cowenv.clone import remove_tree, unprotect


@dataclass(frozen=True)
class Project:
    """An sdist and the envs of its ``tox.ini`` to run (``{py}``: this interpreter's factor)."""

    requirement: str
    envs: tuple[str, ...]
    py: str  # the interpreter's factor as the project's tox.ini writes it


PROJECTS = {
    "rerunfailures": Project(
        "pytest-rerunfailures==16.7",
        ("{py}-pytest83", "{py}-pytest84", "{py}-pytest90", "{py}-pytest91"),
        "py{major}{minor}",
    ),
    "svcs": Project("svcs==26.2.0", ("{py}-tests", "{py}-tests-optional"), "{major}.{minor}"),
    "structlog": Project("structlog==26.1.0", ("{py}-tests",), "{major}.{minor}"),
}
MODES = ("cold", "warm", "cold -n 2", "warm -n 2")
TOOLS = ("tox + tox-uv", "pytest-cowenv")
TARGETS = {"cold": 1.0, "warm": 0.95, "cold -n 2": 1.0, "warm -n 2": 1.0}
WORK = RESULTS / "tox"

WRAPPER_TEST = '''"""Generated by benchmarks/tox.py: {project}'s own suite, one test per env."""

import json
import os
import resource
import subprocess
import time

import pytest

SOURCES = {sources!r}
MATRIX = {matrix!r}
CPU = ("ru_utime", "ru_stime")


@pytest.mark.parametrize(
    ("name", "command"),
    [
        pytest.param(name, command, marks=pytest.mark.cowenv(*deps, **spec), id=name)
        for name, deps, spec, command in MATRIX
    ],
)
def test_env(cowenv, name, command):
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    if command[0] == "pytest":
        result = cowenv.runpytest(*command[1:], cwd=SOURCES, timeout=3600)
        ret, out, err = result.ret, result.outlines, result.errlines
    else:  # the clone's own environment, without the outer run's PYTEST_* variables
        env = {{k: v for k, v in cowenv.env.items() if not k.startswith("PYTEST_")}}
        argv = [str(cowenv.bin_dir / command[0]), *command[1:]]
        proc = subprocess.run(
            argv, cwd=SOURCES, env=env, capture_output=True, text=True, timeout=3600
        )
        ret, out, err = proc.returncode, proc.stdout.splitlines(), proc.stderr.splitlines()
    seconds = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    template = cowenv.template
    record = {{
        "env": name,
        "call": seconds,
        "tests_cpu": sum(getattr(cpu_after, f) - getattr(cpu_before, f) for f in CPU),
        "tail": "\\n".join(out[-5:]),
        "built_now": template.built_now,
        "build_seconds": template.build_seconds if template.built_now else 0.0,
        "phases": template.meta.get("phases", {{}}) if template.built_now else {{}},
        "strategy": cowenv.strategy,
    }}
    with open(os.environ["MATRIX_BENCH_OUT"], "a") as out_file:
        out_file.write(json.dumps(record) + "\\n")
    assert ret == 0, "\\n".join(out[-30:] + err[-30:])
'''

WRAPPER_CONFTEST = '''"""Generated by benchmarks/tox.py: records each test's setup time."""

import json
import os
import time

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    start = time.perf_counter()
    yield
    record = {"env": item.callspec.params["name"], "setup": time.perf_counter() - start}
    with open(os.environ["MATRIX_BENCH_OUT"], "a") as out:
        out.write(json.dumps(record) + "\\n")
'''


@dataclass
class Run:
    """One timed run of one tool in one mode."""

    wall: float
    cpu: float
    envs: dict[str, dict[str, Any]]  # env name -> counts and phases
    other: dict[str, float] = field(default_factory=dict)  # tool-wide phases
    summary: list[str] = field(default_factory=list)  # the plugin's summary section


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wipe(path: Path) -> None:
    """Remove ``path``: a tox workdir, a source copy or a cowenv cache (read-only templates)."""
    if not os.path.lexists(path):
        return
    for child in [*path.glob("*"), *path.glob("*/*"), *path.glob("*/*/*")]:
        if child.name != "bin" and child.is_dir() and not child.is_symlink():
            unprotect(child)  # False for plain directories
    remove_tree(path)


def user_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "TOX_"))}
    for name in ("PYTHONDONTWRITEBYTECODE", "PIP_FIND_LINKS", "VIRTUAL_ENV"):
        env.pop(name, None)
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def check(argv: Sequence[str], **kwargs: Any) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, argv))} failed:\n{proc.stdout}{proc.stderr}")
    return str(proc.stdout)


def fetch_sources(project: str) -> Path:
    """The project's sdist from the index, unpacked once into ``results/tox/sdist``."""
    where = WORK / "sdist" / re.sub(r"[^\w.]+", "-", project)
    found = [p for p in where.glob("*") if p.is_dir()] if where.is_dir() else []
    if found:
        return found[0]
    where.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    check(
        [
            *pip,
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-d",
            str(where),
            project,
        ],
        env=user_env(),
    )
    (sdist,) = where.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(where, filter="data")
        else:  # pragma: no cover - an interpreter without extraction filters
            tar.extractall(where)
    (sources,) = (p for p in where.iterdir() if p.is_dir())
    return sources


def tox_venv(uv_version: str) -> Path:
    """A venv with tox and tox-uv (uv pinned to ``uv_version``); made once."""
    venv = WORK / "toxvenv"
    tox = venv / "bin" / "tox"
    if not tox.exists():
        check([sys.executable, "-m", "venv", str(venv)])
        pins = ["tox", "tox-uv", f"uv=={uv_version}"]
        check(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *pins], env=user_env()
        )
    return tox


@dataclass
class ToxEnv:
    """One env of the project's ``tox.ini``: what it installs and the command it runs."""

    name: str
    deps: list[str]
    groups: list[str]
    extras: list[str]
    lock: bool  # runner = uv-venv-lock-runner: uv sync from the project's uv.lock
    project: bool  # the project itself installed (not skip_install / package = skip)
    command: list[str]

    def spec(self, sources: Path) -> dict[str, Any]:
        """The cowenv marker's keywords for this env, with the project at ``sources``."""
        spec: dict[str, Any] = {}
        if self.project:
            spec["project"] = str(sources)
        if self.lock:
            spec["lock"] = str(sources / "uv.lock")
        if self.groups:
            spec["groups"] = tuple(self.groups)
        if self.extras:
            spec["extras"] = tuple(self.extras)
        return spec

    def shown(self) -> str:
        parts = [f"deps {self.deps}"] if self.deps else []
        parts += [f"groups {self.groups}"] if self.groups else []
        parts += [f"extras {self.extras}"] if self.extras else []
        parts += ["uv.lock"] if self.lock else []
        parts += ["the project"] if self.project else []
        return f"{self.name}: {', '.join(parts)}; command {shlex.join(self.command)}"


def expand(name: str) -> list[str]:
    """A generative tox name (``3.1{0,3}-tests{,-rich}``, ``3.1{0-5}``) as the names it makes."""
    found = re.search(r"\{([^{}]*)\}", name)
    if found is None:
        return [name]
    alternatives: list[str] = []
    for alt in found.group(1).split(","):
        span = re.fullmatch(r"(\d+)-(\d+)", alt.strip())
        if span:
            alternatives += [str(n) for n in range(int(span[1]), int(span[2]) + 1)]
        else:
            alternatives.append(alt.strip())
    head, tail = name[: found.start()], name[found.end() :]
    return [n for alt in alternatives for n in expand(head + alt + tail)]


def matches(condition: str, factors: set[str]) -> bool:
    """A tox factor condition: ``a,b`` any of, ``a-b`` all of, ``!a`` not."""
    return any(
        all((f[1:] not in factors) if f.startswith("!") else (f in factors) for f in alt.split("-"))
        for alt in condition.split(",")
    )


def tox_env(sources: Path, name: str) -> ToxEnv:
    """The env ``name`` of ``sources/tox.ini``, read the way tox reads the keys used here."""
    ini = configparser.ConfigParser(interpolation=None)
    if not ini.read(sources / "tox.ini"):
        raise SystemExit(f"{sources}: no tox.ini")
    own = [
        sec
        for sec in ini.sections()
        if sec.startswith("testenv:") and name in expand(sec.split(":", 1)[1])
    ]
    factors = set(name.split("-"))

    def lines(key: str) -> list[str]:
        section = next((sec for sec in [*own, "testenv"] if ini.has_option(sec, key)), None)
        if section is None:
            return []
        text = ini.get(section, key).replace("\\\n", " ")
        out = []
        for line in (ln.strip() for ln in text.splitlines()):
            cond = re.match(r"([\w.,!-]+):\s+(.*)", line)
            if cond is None:
                if line and not line.startswith("#"):
                    out.append(line)
            elif matches(cond.group(1), factors):
                out.append(cond.group(2))
        for line in out:
            if re.search(r"\{(?!posargs)", line):
                raise SystemExit(
                    f"{sources / 'tox.ini'}: [{section}] {key}: {line!r} is a tox "
                    "substitution this benchmark does not read"
                )
        return out

    commands = lines("commands")
    if len(commands) != 1:
        raise SystemExit(f"{sources / 'tox.ini'}: {name} has {len(commands)} commands, not one")
    command = re.sub(r"\{posargs:([^}]*)\}", r"\1", commands[0]).replace("{posargs}", "")
    skip = [v.lower() for v in lines("skip_install")] == ["true"] or lines("package") == ["skip"]
    return ToxEnv(
        name=name,
        deps=lines("deps"),
        groups=[g for line in lines("dependency_groups") for g in line.split()],
        extras=[e for line in lines("extras") for e in line.replace(",", " ").split()],
        lock=lines("runner") == ["uv-venv-lock-runner"],
        project=not skip,
        command=shlex.split(command),
    )


def parse_counts(output: str) -> dict[str, int]:
    """``{"passed": 228, "skipped": 20}`` from pytest's last summary line."""
    lines = [ln for ln in output.splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
    if not lines:
        return {}
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", lines[-1])}


def norm(outcomes: dict[str, Any]) -> dict[str, int]:
    """Counts with pytest's plural forms (``parseoutcomes`` pluralises, the summary line
    says ``1 error``), and only the words that are counts."""
    words = {
        "passed",
        "failed",
        "skipped",
        "errors",
        "xfailed",
        "xpassed",
        "warnings",
        "deselected",
        "rerun",
    }
    fixed: dict[str, int] = {}
    for word, n in outcomes.items():
        word = {"error": "errors", "warning": "warnings", "reruns": "rerun"}.get(word, word)
        if word in words and word != "warnings":
            fixed[word] = int(n)
    return fixed


class Tox:
    def __init__(self, tox: Path, sources: Path, base: Path, envs: Sequence[str]) -> None:
        self.tox, self.pristine, self.base, self.envs = tox, sources, base, list(envs)

    def case(self, mode: str, runs: dict[str, list[Run]]) -> Case:
        tag = mode.replace(" ", "")
        warm = mode.startswith("warm")
        # warm runs share one workdir and source copy (tox reuses its envs); cold ones own theirs
        home = self.base / ("tox-warm" if warm else f"tox-{tag}")
        src, workdir = home / self.pristine.name, home / "work"
        journal = home / "result.json"
        parallel = ["-p", "2", "--parallel-no-spinner"] if mode.endswith("-n 2") else []
        argv = [str(self.tox), "-e", ",".join(self.envs), "--workdir", str(workdir)]
        argv += ["--result-json", str(journal), *parallel]

        def setup() -> None:
            if warm and workdir.is_dir():
                return
            wipe(home)
            shutil.copytree(self.pristine, src, symlinks=True)
            if warm:  # the first warm run of the session needs a previous run
                self.run(argv, src, journal, f"tox-{tag}-prime")

        def run() -> None:
            runs.setdefault(mode, []).append(self.run(argv, src, journal, f"tox-{tag}"))

        return Case(f"tox {mode}", run, setup=setup)

    def run(self, argv: list[str], src: Path, journal: Path, log: str) -> Run:
        journal.unlink(missing_ok=True)
        cpu, start = children_cpu(), time.perf_counter()
        proc = subprocess.run(argv, cwd=src, env=user_env(), capture_output=True, text=True)
        wall, cpu = time.perf_counter() - start, children_cpu() - cpu
        (WORK / "logs").mkdir(parents=True, exist_ok=True)
        (WORK / "logs" / f"{log}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise SystemExit(f"tox failed (exit {proc.returncode}): see {WORK / 'logs' / log}.log")
        data = json.loads(journal.read_text())["testenvs"]
        envs: dict[str, dict[str, Any]] = {}
        for name in self.envs:
            setup = {c["run_id"]: c["elapsed"] for c in data[name].get("setup", [])}
            tests = data[name].get("test", [])
            # the lock runner's one step, uv sync, installs the locked set and the project
            deps = ("install_deps", "install_package_deps", "uv-sync")
            envs[name] = {
                "counts": norm(parse_counts("".join(c["output"] for c in tests))),
                "create venv": setup.get("venv", 0.0),
                "install deps": sum(setup.get(k, 0.0) for k in deps),
                "install project": setup.get("install_package", 0.0),
                "other setup": sum(
                    v for k, v in setup.items() if k not in ("venv", "install_package", *deps)
                ),
                "tests": sum(c["elapsed"] for c in tests),
            }
        pkg = data.get(".pkg", {})
        build = sum(c["elapsed"] for c in [*pkg.get("setup", []), *pkg.get("test", [])])
        return Run(wall, cpu, envs, {"build project (.pkg env)": build})


class Cowenv:
    def __init__(self, project: Project, sources: Path, base: Path, envs: list[ToxEnv]) -> None:
        self.project, self.pristine, self.base, self.envs = project, sources, base, envs

    def case(self, mode: str, runs: dict[str, list[Run]]) -> Case:
        tag = mode.replace(" ", "")
        warm = mode.startswith("warm")
        home = self.base / ("cowenv-warm" if warm else f"cowenv-{tag}")
        src, cache, wrapper = home / self.pristine.name, home / "cache", home / "wrapper"
        parallel = ["-n", "2"] if mode.endswith("-n 2") else []
        argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *parallel]
        argv += [f"--cowenv-dir={cache}", str(wrapper)]

        def setup() -> None:
            if warm and cache.is_dir():
                return
            wipe(home)
            shutil.copytree(self.pristine, src, symlinks=True)
            wrapper.mkdir()
            (wrapper / "pytest.ini").write_text("[pytest]\n")
            (wrapper / "conftest.py").write_text(WRAPPER_CONFTEST)
            matrix = [(e.name, e.deps, e.spec(src), e.command) for e in self.envs]
            test = WRAPPER_TEST.format(
                project=self.project.requirement, sources=str(src), matrix=matrix
            )
            (wrapper / "test_matrix.py").write_text(test)
            if warm:
                self.run(argv, home, f"cowenv-{tag}-prime")

        def run() -> None:
            runs.setdefault(mode, []).append(self.run(argv, home, f"cowenv-{tag}"))

        return Case(f"cowenv {mode}", run, setup=setup)

    def run(self, argv: list[str], home: Path, log: str) -> Run:
        out = home / "records.jsonl"
        out.unlink(missing_ok=True)
        env = {**user_env(), "MATRIX_BENCH_OUT": str(out)}
        cpu, start = children_cpu(), time.perf_counter()
        proc = subprocess.run(argv, cwd=home, env=env, capture_output=True, text=True)
        wall, cpu = time.perf_counter() - start, children_cpu() - cpu
        (WORK / "logs").mkdir(parents=True, exist_ok=True)
        (WORK / "logs" / f"{log}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise SystemExit(
                f"pytest-cowenv run failed (exit {proc.returncode}): see {WORK / 'logs' / log}.log"
            )
        envs: dict[str, dict[str, Any]] = {}
        for line in out.read_text().splitlines():
            record = json.loads(line)
            envs.setdefault(record.pop("env"), {}).update(record)
        for name, record in envs.items():
            phases = record.get("phases", {})
            record["counts"] = norm(parse_counts(record.get("tail", "")))
            record["create venv"] = phases.get("venv", 0.0)
            record["install deps"] = phases.get("install", 0.0)
            record["install project"] = phases.get("wheels", 0.0)
            record["other setup"] = record["setup"] - sum(
                phases.get(k, 0.0) for k in ("venv", "install", "wheels")
            )
            record["tests"] = record["call"]
            envs[name] = record
        out_lines = proc.stdout.splitlines()
        starts = [i for i, ln in enumerate(out_lines) if re.match(r"=+ cowenv =+$", ln)]
        summary = out_lines[starts[-1] + 1 : -1] if starts else []
        return Run(wall, cpu, envs, summary=summary)


def describe(
    args: argparse.Namespace, project: Project, tox: Path, uv: str, work: Path
) -> list[str]:
    def version(argv: Sequence[str]) -> str:
        # tox says first that the current directory has no tox.ini: keep the version's line
        return next(ln for ln in check(argv).splitlines() if re.match(r"(uv )?\d", ln))

    toxv = version([str(tox), "--version"])
    from importlib.metadata import version as dist_version

    return [
        *header().splitlines(),
        f"tox {toxv}; {version([uv, '--version'])} (both tools); "
        f"pytest-cowenv {dist_version('pytest-cowenv')}, pytest {dist_version('pytest')} and "
        f"pytest-xdist {dist_version('pytest-xdist')} for the outer run",
        f"project {project.requirement} (sdist, unmodified), envs {', '.join(args.envs)}; "
        f"work dir {work} ({fs_of(work)}); uv cache warm for both",
        f"rounds {args.rounds}, modes {', '.join(args.modes)}",
    ]


def fs_of(path: Path) -> str:
    from pytest_cowenv.fs import fs_type

    return fs_type(path) or "?"


def report(runs: dict[str, dict[str, list[Run]]], args: argparse.Namespace) -> list[str]:
    lines: list[str] = []
    tox_runs, cow_runs = runs[TOOLS[0]], runs[TOOLS[1]]
    rows = []
    for mode in args.modes:
        t, c = median([r.wall for r in tox_runs[mode]]), median([r.wall for r in cow_runs[mode]])
        tc, cc = median([r.cpu for r in tox_runs[mode]]), median([r.cpu for r in cow_runs[mode]])
        # the runs of one round are neighbours in time: their ratio is the paired figure
        ratios = [cr.wall / tr.wall for tr, cr in zip(tox_runs[mode], cow_runs[mode])]
        ratio, (q1, q3) = median(ratios), quartiles(ratios)
        target = TARGETS[mode]
        rows.append(
            [
                mode if not mode.endswith("-n 2") else mode.replace("-n 2", "-n 2 / tox -p 2"),
                f"{t:.1f}",
                f"{c:.1f}",
                f"{ratio:.2f}x",
                f"{q1:.2f}-{q3:.2f}",
                f"<= {target:.2f}x",
                "yes" if ratio <= target else "NO",
                f"{tc:.1f}",
                f"{cc:.1f}",
                f"{cc / tc:.2f}x",
                " ".join(f"{r.wall:.1f}" for r in tox_runs[mode]),
                " ".join(f"{r.wall:.1f}" for r in cow_runs[mode]),
            ]
        )
    lines.append(
        "-- wall time of the whole matrix, s (median of the rounds); cowenv/tox: median of the"
        " round-by-round ratios and their interquartile range; CPU s of the run's processes"
    )
    lines.append(
        table(
            [
                "mode",
                "tox s",
                "cowenv s",
                "cowenv/tox",
                "IQR",
                "target",
                "met",
                "tox CPU",
                "cowenv CPU",
                "CPU ratio",
                "tox runs",
                "cowenv runs",
            ],
            rows,
        )
    )
    lines.append("")
    lines.append(
        "-- test counts per env (every run; tox's from its journal, cowenv's from runpytest)"
    )
    count_rows = []
    equal = True
    for name in args.envs:
        seen = {
            tool: {
                json.dumps(r.envs[name]["counts"], sort_keys=True)
                for m in args.modes
                for r in runs[tool][m]
            }
            for tool in TOOLS
        }
        same = seen[TOOLS[0]] == seen[TOOLS[1]] and len(seen[TOOLS[0]]) == 1
        equal &= same
        count_rows.append(
            [
                name,
                " | ".join(sorted(seen[TOOLS[0]])),
                " | ".join(sorted(seen[TOOLS[1]])),
                "yes" if same else "NO",
            ]
        )
    lines.append(table(["env", "tox", "cowenv", "equal"], count_rows))
    lines.append("")
    parts = ["create venv", "install deps", "install project", "other setup", "tests"]
    lines.append("-- where the time goes: median per env and run, s (setup parts, then the tests)")
    part_rows = []
    for mode in args.modes:
        for tool in TOOLS:
            cells = [
                median([r.envs[n][p] for r in runs[tool][mode] for n in args.envs]) for p in parts
            ]
            extra = [sum(r.other.values()) for r in runs[tool][mode]]
            per_run = [
                r.wall - sum(sum(e[p] for p in parts) for e in r.envs.values()) - x
                for r, x in zip(runs[tool][mode], extra)
            ]
            part_rows.append(
                [
                    f"{tool}, {mode}",
                    *(f"{v:.2f}" for v in cells),
                    f"{median(extra):.2f}" if any(extra) else "-",
                    f"{median(per_run):.2f}" if not mode.endswith("-n 2") else "-",
                ]
            )
    lines.append(table(["tool, mode", *parts, "tool-wide build", "rest of wall"], part_rows))
    lines.append(
        "tox: create venv = uv venv, install deps = uv pip install of the deps and the project's"
        " dependencies (the lock runner: uv sync, which also builds and installs the project),"
        " install project = uv pip install of the sdist (uv builds its wheel),"
        " tool-wide build = the .pkg env and build_sdist; cowenv: the template's build phases"
        " (venv, install, wheels = building the project's wheel), other setup = the rest of the"
        " test's setup (byte-compiling, publishing, cloning, hashing the project);"
        " rest of wall = start-up, collection, tear-down (serial modes only)."
    )
    # The tests' own CPU time (the processes each test started are the wrapper's children):
    # wall time alone cannot tell more work from more waiting on a loaded machine.
    tests_cpu = {
        mode: median([r.envs[n]["tests_cpu"] for r in cow_runs[mode] for n in args.envs])
        for mode in args.modes
    }
    lines.append(
        "cowenv tests CPU, median per env and run, s: "
        + ", ".join(f"{mode} {cpu:.2f}" for mode, cpu in tests_cpu.items())
    )
    cowenv_built = {
        mode: [sum(1 for e in r.envs.values() if e.get("built_now")) for r in cow_runs[mode]]
        for mode in args.modes
    }
    lines.append(
        "templates built per cowenv run: " + "; ".join(f"{m}: {v}" for m, v in cowenv_built.items())
    )
    builds = [e["phases"] for m in args.modes for r in cow_runs[m] for e in r.envs.values()]
    builds = [b for b in builds if b]
    if builds:
        names = sorted(
            {k for b in builds for k in b}, key=lambda k: -median([b.get(k, 0.0) for b in builds])
        )
        lines.append(
            "cowenv template build phases, median of the cold builds (s): "
            + ", ".join(f"{k} {median([b.get(k, 0.0) for b in builds]):.3f}" for k in names)
        )
    lines.append("counts equal in every run: " + ("yes" if equal else "NO"))
    for mode in args.modes:
        lines.append(f"pytest-cowenv's summary of its last {mode} run:")
        lines += [f"  {ln}" for ln in cow_runs[mode][-1].summary]
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (3)")
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated: {', '.join(MODES)}"
    )
    parser.add_argument(
        "--project", choices=sorted(PROJECTS), default="rerunfailures", help="(rerunfailures)"
    )
    parser.add_argument(
        "--envs", help="comma-separated tox envs ({py}: this interpreter; default: the project's)"
    )
    parser.add_argument(
        "--dir", type=Path, help="where the envs and caches go (default: the btrfs mount)"
    )
    parser.add_argument(
        "--out", type=Path, help="also write the output here (e.g. docs/bench-tox.txt)"
    )
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode {unknown[0]!r}: choose from {', '.join(MODES)}")
    uv = uv_binary()
    if uv is None:
        raise SystemExit("uv is not found: pip install uv (both tools install through it)")
    uv_version = check([uv, "--version"]).split()[1]
    base = args.dir or Path(os.environ.get("COWENV_TEST_BTRFS") or tempfile.gettempdir())
    work = Path(tempfile.mkdtemp(prefix="bench-matrix-", dir=base))
    project = PROJECTS[args.project]
    sources = fetch_sources(project.requirement)
    tox = tox_venv(uv_version)
    py = project.py.format(major=sys.version_info.major, minor=sys.version_info.minor)
    names = args.envs.split(",") if args.envs else project.envs
    envs = [tox_env(sources, name.strip().format(py=py)) for name in names if name.strip()]
    args.envs = [env.name for env in envs]
    out_lines = describe(args, project, tox, uv, work)
    out_lines += [f"  {env.shown()}" for env in envs]
    for line in out_lines:
        print(line, flush=True)
    runs: dict[str, dict[str, list[Run]]] = {tool: {} for tool in TOOLS}
    toxes = Tox(tox, sources, work, args.envs)
    cowenvs = Cowenv(project, sources, work, envs)
    cases = []
    for mode in args.modes:
        cases += [toxes.case(mode, runs[TOOLS[0]]), cowenvs.case(mode, runs[TOOLS[1]])]
    loads: list[str] = []
    try:
        # One untimed run of each tool fills uv's package cache (and uv's wheel of the sdist).
        print(f"filling the uv cache ({load()}) ...", flush=True)
        primer = {tool: {} for tool in TOOLS}  # type: dict[str, dict[str, list[Run]]]
        for case in (toxes.case("cold", primer[TOOLS[0]]), cowenvs.case("cold", primer[TOOLS[1]])):
            assert case.setup is not None
            case.setup()
            case.run()
        for round_ in range(args.rounds):
            loads.append(f"round {round_ + 1}/{args.rounds}: {load()}")
            print(loads[-1], "...", flush=True)
            shift = round_ % len(cases)
            interleaved([*cases[shift:], *cases[:shift]], 1, warmup=0, sync_path=work)
            for case in cases:
                print(f"  {case.name}: {case.seconds[-1]:.1f} s", flush=True)
        load_end = load()
    finally:
        wipe(work)
    lines = report(runs, args)
    lines += ["", *loads, f"at the end: {load_end}"]
    for line in lines:
        print(line)
    if args.out:
        args.out.write_text("\n".join([*out_lines, "", *lines]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Coverage of the code that runs in clones. Pytest-free: the plugin says what measures the run.

When the outer run measures coverage, a clone that holds code it measures gets coverage.py
started in every Python process it runs: coverage's own process-start hook
(``coverage.process_startup()`` with ``COVERAGE_PROCESS_START``), called from a ``.pth`` file
written into the clone, which puts the outer run's coverage package, and nothing else of the
outer environment, on ``sys.path``. The template is not touched (its key stays), and a clone
of a run without coverage gets nothing. When the clone is released its data files are
combined with ``[paths]`` aliases that map its ``site-packages`` back to the sources the
packages came from, and the result joins the outer measurement: as a parallel data file
beside pytest-cov's (its own combine picks it up), else into the running ``Coverage``'s data
when the session ends.
"""

from __future__ import annotations

import importlib.util
import os
import site
import socket
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ._venv import site_packages
from .errors import CowEnvError

if TYPE_CHECKING:
    from coverage import Coverage, CoverageData

    from .env import CowEnv

MODES = ("auto", "on", "off")
MIN_VERSION = (7, 10)  # Coverage.current, CoverageData.update(map_path=), purge_files
CLONE_DIR = ".cowenv-coverage"  # in the clone's root: the rc file, coverage's link, the data
PTH_NAME = "00_cowenv_coverage.pth"  # sorts first: coverage starts before other .pth code
# [run] options carried into the clones as they are (the rest is derived, or meaningless
# there: plugins and contexts live in the outer environment).
CARRIED = ("timid", "cover_pylib", "sigterm")

# Runs in every Python process of the clone, from the .pth file: no-op once the clone's
# coverage folder is gone (a kept clone, moved), silent when coverage cannot start (the error
# goes to a file the outer run reports), and the outer run's own process-start variable
# (coverage's `patch = subprocess`) never applies here: it would write unmapped clone paths
# straight into the outer data.
_START = """\
import os, sys
here = {here!r}
if os.path.isdir(here):
    try:
        sys.path.append(os.path.join(here, "lib"))
        os.environ.pop("COVERAGE_PROCESS_CONFIG", None)
        os.environ["COVERAGE_PROCESS_START"] = os.path.join(here, "coveragerc")
        os.environ["COVERAGE_FILE"] = os.path.join(here, "data", ".coverage")
        import coverage
        coverage.process_startup()
    except Exception as exc:
        with open(os.path.join(here, "start-errors"), "a") as f:
            f.write("%s: %s\\n" % (type(exc).__name__, exc))
"""


@dataclass(frozen=True)
class Measured:
    """What the outer run measures, read through coverage's public ``get_option``."""

    branch: bool
    source_dirs: tuple[str, ...]  # absolute
    source_names: tuple[str, ...]  # importable names (source entries that are no directory)
    omit: tuple[str, ...]
    relative_files: bool
    carried: tuple[tuple[str, str], ...]  # other [run] options, as rc lines
    patch: tuple[str, ...]  # coverage's [run] patch, without subprocess (we start clones)
    quiet: tuple[str, ...] = ()  # [run] disable_warnings

    @property
    def everything(self) -> bool:
        """No ``source``: coverage measures whatever is not installed third-party code."""
        return not self.source_dirs and not self.source_names


@dataclass
class CoverageStats:
    clones: int = 0  # clones whose processes were measured
    files: int = 0  # their data files combined
    unmapped: list[str] = field(default_factory=list)  # measured code with no source outside
    other_python: list[str] = field(default_factory=list)  # clones of another interpreter
    errors: list[str] = field(default_factory=list)  # coverage failed to start in a clone
    failed: list[str] = field(default_factory=list)  # we failed to prepare or combine one


def problem() -> Optional[str]:
    """Why clones cannot be measured here (coverage missing or too old), or None. Reads the
    installed version only: nothing is imported."""
    from importlib.metadata import PackageNotFoundError, version

    wanted = ".".join(map(str, MIN_VERSION))
    try:
        found = version("coverage")
    except PackageNotFoundError:
        return f"coverage of clones needs coverage>={wanted}: pip install coverage"
    if tuple(int(p) for p in found.split(".")[:2] if p.isdigit()) < MIN_VERSION:
        return (
            f"coverage of clones needs coverage>={wanted}; this is {found}: pip install -U coverage"
        )
    return None


def detect(
    mode: str,
    pytest_cov: Optional[Coverage],
    base: str,
    project_dirs: tuple[str, ...] = (),
) -> Optional[CloneCoverage]:
    """The clone measurement of this process, or None. ``mode``: ``auto`` measures clones
    when this process measures itself (``pytest_cov``, the ``Coverage`` object of pytest-cov,
    or any running ``Coverage``: ``coverage run``, coverage's process start); ``on`` also
    without (data beside the configured data file, for ``coverage combine``); ``off`` never.
    ``base``: the directory the run started in, where coverage resolved its relative paths.
    ``project_dirs``: where packages installed in clones may come from, besides the specs'
    local projects."""
    if mode == "off" or (mode == "auto" and "coverage" not in sys.modules) or problem():
        return None
    import coverage

    if pytest_cov is not None:
        what = measured(pytest_cov, base)
        return CloneCoverage(what, project_dirs, beside=data_file(pytest_cov, base))
    current = coverage.Coverage.current()
    if current is not None:
        return CloneCoverage(measured(current, base), project_dirs, live=current)
    if mode == "on":
        configured = coverage.Coverage()  # reads the project's configuration; never started
        what = measured(configured, base)
        return CloneCoverage(what, project_dirs, beside=data_file(configured, base))
    return None


def data_file(cov: Coverage, base: str) -> str:
    return os.path.join(base, str(cov.get_option("run:data_file")))


def _option(cov: Coverage, name: str) -> Any:
    from coverage.exceptions import ConfigError

    try:
        return cov.get_option(name)
    except ConfigError:  # an option this version of coverage does not have
        return None


def measured(cov: Coverage, base: str) -> Measured:
    """The outer configuration as clones need it; relative paths are taken from ``base``. A
    ``source`` entry is a directory when one exists at that path, else an importable name (as
    coverage decides)."""
    dirs: list[str] = []
    names: list[str] = list(_option(cov, "run:source_pkgs") or ())
    for entry in _option(cov, "run:source") or ():
        if os.path.isdir(os.path.join(base, entry)):
            dirs.append(os.path.realpath(os.path.join(base, entry)))
        else:
            names.append(entry)
    carried = []
    for name in CARRIED:
        value = _option(cov, f"run:{name}")
        if value not in (None, [], ()):
            carried.append((name, _rc_value(value)))
    concurrency = [
        c for c in _option(cov, "run:concurrency") or () if c in ("thread", "multiprocessing")
    ]
    if concurrency:
        carried.append(("concurrency", _rc_value(concurrency)))
    return Measured(
        branch=bool(_option(cov, "run:branch")),
        source_dirs=tuple(dirs),
        source_names=tuple(names),
        omit=tuple(
            p if p.startswith("*") else os.path.normpath(os.path.join(base, p))
            for p in _option(cov, "run:omit") or ()
        ),
        relative_files=bool(_option(cov, "run:relative_files")),
        carried=tuple(carried),
        patch=tuple(p for p in _option(cov, "run:patch") or () if p != "subprocess"),
        quiet=tuple(_option(cov, "run:disable_warnings") or ()),
    )


def _rc_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "".join(f"\n    {v}" for v in value)
    return str(value)


class CloneCoverage:
    """Starts coverage in clones (:meth:`prepare`), gathers their data (:meth:`collect`) and
    hands it to the outer measurement (at once with ``beside``; at :meth:`finish` with
    ``live``). Thread-safe."""

    def __init__(
        self,
        what: Measured,
        project_dirs: tuple[str, ...] = (),
        *,
        beside: Optional[str] = None,
        live: Optional[Coverage] = None,
    ) -> None:
        self.measured = what
        self.project_dirs = project_dirs
        self.stats = CoverageStats()
        self._beside = beside
        self._live = live
        self._lock = threading.Lock()
        self._origins: dict[str, Optional[Path]] = {}
        self._clones: dict[str, tuple[Path, set[str]]] = {}  # clone -> site, source roots
        self._out: Optional[CoverageData] = None  # our parallel file, or data for `live`
        self._scratch: Optional[Path] = None  # the folder of the data for `live`

    def prepare(self, env: CowEnv, local: tuple[str, ...] = ()) -> bool:
        """Start coverage in every Python process of ``env`` if it holds measured code; a
        failure is noted for the summary, never the test's."""
        try:
            return self._prepare(env, local)
        except (OSError, CowEnvError) as exc:  # e.g. a test took the clone's lib/ apart
            with self._lock:
                self.stats.failed.append(f"{env.path}: {exc}")
            return False

    def _prepare(self, env: CowEnv, local: tuple[str, ...]) -> bool:
        """Start coverage in every Python process of ``env`` if it holds measured code
        (again after an install: the rc file then names the new packages). ``local``: the
        spec's local projects, where its installed packages may come from."""
        site_dir = site_packages(env.path)
        if not _supported(site_dir.parent.name):
            with self._lock:
                shown = f"{env.template.spec.describe()} ({site_dir.parent.name})"
                if shown not in self.stats.other_python:
                    self.stats.other_python.append(shown)
            return False
        origins = self._measured(site_dir, local)
        if not origins:
            return False
        here = env.path / CLONE_DIR
        (here / "data").mkdir(parents=True, exist_ok=True)
        (here / "lib").mkdir(exist_ok=True)
        import coverage

        link = here / "lib" / "coverage"
        if not os.path.lexists(link):
            link.symlink_to(os.path.dirname(coverage.__file__), target_is_directory=True)
        # What the outer run names (`mypkg.sub` stays that), else the whole package.
        named = [n for n in self.measured.source_names if n.split(".")[0] in origins]
        whole = [n for n in sorted(origins) if not any(m.split(".")[0] == n for m in named)]
        (here / "coveragerc").write_text(self._rc([*named, *whole]), encoding="utf-8")
        pth = site_dir / PTH_NAME
        if not pth.exists():
            script = _START.format(here=str(here))
            pth.write_text(f"import sys; exec({script!r})\n", encoding="utf-8")
        with self._lock:
            self._clones[str(env.path)] = (site_dir, {str(o.parent) for o in origins.values()})
        return True

    def _measured(self, site_dir: Path, local: tuple[str, ...]) -> dict[str, Path]:
        """The top-level packages and modules of ``site_dir`` that the outer run measures,
        and where their sources are outside the clone."""
        what = self.measured
        tops = {n.split(".")[0] for n in what.source_names}
        found: dict[str, Path] = {}
        for entry in sorted(os.listdir(site_dir)):
            name = entry[:-3] if entry.endswith(".py") else entry
            if not name.isidentifier() or name == "__pycache__":
                continue
            if entry == name and not (site_dir / entry).is_dir():
                continue
            origin = self._origin(name, local)
            if origin is None:
                if name in tops:
                    self._unmapped(name)
                continue
            if what.everything:
                wanted = not _third_party(origin)
            else:
                wanted = name in tops or any(_inside(origin, d) for d in what.source_dirs)
            if wanted:
                found[name] = origin
        return found

    def _unmapped(self, name: str) -> None:
        with self._lock:
            if name not in self.stats.unmapped:
                self.stats.unmapped.append(name)

    def _origin(self, name: str, local: tuple[str, ...]) -> Optional[Path]:
        """The sources of the installed package or module ``name`` (its directory or
        ``.py`` file): in a local project of the spec or of the run (``src/`` layout or
        flat), else wherever this process would import it from."""
        for project in (*local, *self.project_dirs):
            for base in (Path(project) / "src", Path(project)):
                if (base / name / "__init__.py").is_file():
                    return base / name
                if (base / f"{name}.py").is_file():
                    return base / f"{name}.py"
        with self._lock:
            if name in self._origins:
                return self._origins[name]
        origin: Optional[Path] = None
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None:
            locations = list(spec.submodule_search_locations or ())
            if locations:
                origin = Path(locations[0])
            elif spec.origin and spec.origin.endswith(".py"):
                origin = Path(spec.origin)
        with self._lock:
            self._origins[name] = origin
        return origin

    def _rc(self, names: list[str]) -> str:
        what = self.measured
        lines = [
            "[run]",
            f"branch = {what.branch}",
            "parallel = True",
            "relative_files = False",
            f"source_pkgs ={_rc_value(names)}",
        ]
        # Another Python than the outer one cannot load its compiled tracer: coverage says so
        # on stderr in every process (the tests' output) and measures in Python instead.
        lines.append(f"disable_warnings ={_rc_value(['no-ctracer', *what.quiet])}")
        if what.source_dirs:
            lines.append(f"source ={_rc_value(what.source_dirs)}")
        if what.omit:
            lines.append(f"omit ={_rc_value(what.omit)}")
        if what.patch:
            lines.append(f"patch ={_rc_value(what.patch)}")
        lines += [f"{name} = {value}" for name, value in what.carried]
        return "\n".join(lines) + "\n"

    def collect(self, env: CowEnv) -> None:
        """:meth:`_collect`; a failure is noted for the summary, never the test's."""
        from coverage.exceptions import CoverageException

        try:
            self._collect(env)
        except (OSError, CoverageException) as exc:
            with self._lock:
                self.stats.failed.append(f"{env.path}: {exc}")

    def _collect(self, env: CowEnv) -> None:
        """Combine ``env``'s data files, mapped back to the sources, into the outer
        measurement. Call it when the clone's processes are done, before it is moved or
        removed."""
        with self._lock:
            clone = self._clones.pop(str(env.path), None)
        if clone is None:
            return
        site_dir, roots = clone
        here = env.path / CLONE_DIR
        errors = here / "start-errors"
        if errors.is_file():
            with self._lock:
                self.stats.errors.append(errors.read_text(errors="replace").splitlines()[0])
        files = sorted(
            str(p) for p in (here / "data").glob(".coverage.*") if not p.name.endswith("-journal")
        )
        if not files:
            return
        from coverage import CoverageData
        from coverage.data import combine_parallel_data
        from coverage.files import PathAliases

        # `coverage combine` with [paths] aliases, at the data level: creating a Coverage
        # object would tell coverage's own measurement of this process (started by its
        # process-start hook, as in xdist workers under `patch = subprocess`) not to save.
        relative = self.measured.relative_files
        aliases = PathAliases(relative=relative)
        for root in sorted(roots):
            aliases.add(str(site_dir), os.path.relpath(root) if relative else root)
        # On disk, in the clone (removed with it, like the files: keep them): an in-memory
        # CoverageData cannot take a second file in coverage 7.10 ("other_db is in use").
        data = CoverageData(basename=str(here / "combined"))
        combine_parallel_data(data, aliases=aliases, data_paths=files, keep=True)
        prefix = str(env.path) + os.sep
        left = [f for f in data.measured_files() if f.startswith(prefix)]
        if left:
            data.purge_files(left)
            for f in left:
                self._unmapped(os.path.relpath(f, site_dir).split(os.sep)[0])
        with self._lock:
            self.stats.clones += 1
            self.stats.files += len(files)
            self._deliver(data)

    def _deliver(self, data: CoverageData) -> None:
        from coverage import CoverageData

        if self._out is None:
            if self._beside is not None:
                suffix = f"cowenv.{socket.gethostname()}.{os.getpid()}"
                self._out = CoverageData(basename=self._beside, suffix=suffix)
            else:  # held until finish(), in a folder of ours
                self._scratch = Path(tempfile.mkdtemp(prefix="pytest-cowenv-coverage-"))
                self._out = CoverageData(basename=str(self._scratch / ".coverage"))
        self._out.update(data, map_path=lambda p: p)
        self._out.write()

    def finish(self) -> None:
        """Hand what ``live`` has not got yet to it (a ``beside`` file is complete)."""
        with self._lock:
            out, self._out = self._out, None
            scratch, self._scratch = self._scratch, None
        try:
            if self._live is not None and out is not None:
                with warnings.catch_warnings():
                    # get_data() on a running Coverage checks for problems early ("never
                    # imported", "no data"): its own save at exit says what is true then.
                    warnings.simplefilter("ignore")
                    self._live.get_data().update(out, map_path=lambda p: p)
        finally:
            if scratch is not None:
                from .clone import remove_tree

                remove_tree(scratch)

    def notes(self) -> list[str]:
        """What was not measured, and why: one line each."""
        s = self.stats
        notes = []
        if s.unmapped:
            notes.append(
                "measured in clones but no source found outside them (not reported): "
                + ", ".join(s.unmapped)
            )
        if s.other_python:
            notes.append(
                "clones of a Python that this run's coverage does not support are not measured: "
                + ", ".join(s.other_python)
            )
        notes += [f"could not start in a clone: {e}" for e in s.errors[:1]]
        notes += [f"could not combine a clone's data: {e}" for e in s.failed[:1]]
        return notes


def _supported(lib_name: str) -> bool:
    """Whether the outer coverage package runs on the clone's Python (``lib/python3.12``):
    the versions its ``Requires-Python`` allows. Another version than the outer one runs it
    without its compiled tracer."""
    from importlib.metadata import PackageNotFoundError, metadata

    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    version = lib_name[len("python") :]
    if version == f"{sys.version_info[0]}.{sys.version_info[1]}":
        return True
    try:
        requires = (metadata("coverage").get_all("Requires-Python") or [""])[0]
        return SpecifierSet(requires).contains(f"{version}.0")
    except (PackageNotFoundError, InvalidSpecifier):
        return False


def _inside(path: Path, directory: str) -> bool:
    return path == Path(directory) or Path(directory) in path.parents


def _third_party(path: Path) -> bool:
    """Installed code (site-packages) or the standard library: what coverage leaves out when
    no ``source`` is given."""
    roots = [*site.getsitepackages(), site.getusersitepackages(), os.path.dirname(os.__file__)]
    return any(_inside(path.resolve(), os.path.realpath(r)) for r in roots if r)

"""The handle a test gets: one private clone of a template, and ways to use it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from ._install import IndexOptions, clean_env, install_command, run_installer
from ._relocate import relocate
from ._venv import installed_distributions, site_packages, wheel_requires
from .errors import CommandError, CowEnvError, TemplateBuildError

if TYPE_CHECKING:
    import pytest

    from .template import Template

StrPath = Union[str, "os.PathLike[str]"]

# Variables that would make an inner pytest behave like the outer one, or colour its output
# (which parseoutcomes() could not read). Every ``PYTEST_*`` variable goes too.
_OUTER_PYTEST_VARS = ("PY_COLORS", "FORCE_COLOR")


class CowEnv:
    """A private virtual environment: a copy-on-write clone of ``template`` at ``path``.

    Attributes: ``path`` (the environment's root, a :class:`~pathlib.Path`), ``template``
    (the :class:`~pytest_cowenv.Template` it was cloned from: ``key``, ``requirements``,
    ``resolved`` versions, ``build_seconds``), ``strategy`` (how it was cloned:
    ``"snapshot"``, ``"clonefile"``, ``"clone"``, ``"hardlink"`` or ``"copy"``),
    ``clone_seconds``, and ``keep`` (set it to keep this clone after the test).
    """

    def __init__(self, path: Path, template: Template, strategy: str, index: IndexOptions) -> None:
        self.path = path
        self.template = template
        self.strategy = strategy
        self._index = index
        self.clone_seconds = 0.0
        self.keep = False
        self._after_install: Optional[Callable[[CowEnv], object]] = None  # the session's coverage

    def __repr__(self) -> str:
        return f"<CowEnv {self.path} ({self.strategy}) {self.template.spec.describe()}>"

    @property
    def bin_dir(self) -> Path:
        """The directory of the environment's executables (``bin``, ``Scripts`` on Windows)."""
        return self.path / ("Scripts" if sys.platform == "win32" else "bin")

    @property
    def python(self) -> Path:
        """The environment's Python interpreter."""
        return self.bin_dir / ("python.exe" if sys.platform == "win32" else "python")

    @property
    def site_packages(self) -> Path:
        """The environment's ``site-packages`` directory."""
        return site_packages(self.path)

    @property
    def env(self) -> dict[str, str]:
        """Environment variables for a subprocess in this env: its ``bin`` first on ``PATH``,
        ``VIRTUAL_ENV`` set to it, and no ``PYTHONPATH``, ``PYTHONHOME``, user site or outer
        virtual environment (variable or ``bin`` on ``PATH``) leaking in. A fresh dict."""
        outer_venv = os.environ.get("VIRTUAL_ENV")
        outer_bin = os.path.join(outer_venv, self.bin_dir.name) if outer_venv else None
        env = clean_env()
        path = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p != outer_bin]
        env["VIRTUAL_ENV"] = str(self.path)
        env["PATH"] = os.pathsep.join([str(self.bin_dir), *path])
        env["PYTHONNOUSERSITE"] = "1"
        return env

    def _resolve(self, command: str) -> str:
        if os.sep in command or (os.altsep and os.altsep in command):
            return command
        return (
            shutil.which(command, path=str(self.bin_dir))
            or shutil.which(command, path=self.env["PATH"])
            or command
        )

    def run(
        self,
        *cmd: StrPath,
        check: bool = True,
        cwd: Optional[StrPath] = None,
        env: Optional[Mapping[str, str]] = None,
        input: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in this environment and return the :class:`subprocess.CompletedProcess`
        (``stdout`` and ``stderr`` captured as text).

        The command is looked up in the environment's ``bin`` first, then on ``PATH``; the
        process gets :attr:`env` updated with ``env``. With ``check`` (the default) a non-zero
        exit raises :class:`~pytest_cowenv.CommandError`, whose message holds the command, the
        exit code, stdout and stderr.
        """
        if not cmd:
            raise CowEnvError("run() needs a command")
        argv = [self._resolve(os.fspath(cmd[0])), *(os.fspath(c) for c in cmd[1:])]
        full_env = self.env
        full_env.update(env or {})
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                cwd=cwd,
                env=full_env,
                input=input,
                timeout=timeout,
                stdin=None if input is not None else subprocess.DEVNULL,
            )
        except FileNotFoundError:
            raise CommandError(
                argv, 127, "", f"{argv[0]}: command not found in {self.bin_dir} or on PATH\n"
            ) from None
        if check and proc.returncode != 0:
            raise CommandError(argv, proc.returncode, proc.stdout, proc.stderr)
        return proc

    def install(self, *items: StrPath) -> None:
        """Install requirements, local wheels or project directories into this clone only.

        Local wheels that are new to the clone and whose dependencies it already has are
        unpacked in-process (by ``installer``: milliseconds); everything else goes through
        uv, or the outer pip with ``--python``, using the run's index options. Relative
        paths are taken from the current directory. Raises :class:`CowEnvError` with the
        installer's output when it fails.
        """
        if not items:
            return
        texts = [os.fspath(i) for i in items]
        installed = installed_distributions(self.path)
        if all(_self_contained_wheel(t, installed) for t in texts):
            for wheel in texts:
                self._install_wheel(Path(wheel))
        else:
            try:
                run_installer(
                    install_command(self.python, texts, self._index),
                    f"{', '.join(texts)}: install into {self.path} failed",
                )
            except TemplateBuildError as exc:
                raise CowEnvError(str(exc)) from None
        # New console scripts name this clone's python: make them relocatable like the
        # template's, so that a clone kept (moved) after the test still runs them.
        relocate(self.path, self.path)
        # New entries bump the directory's mtime, but only as finely as the filesystem keeps it;
        # importlib's directory cache must see the change within this same second.
        now = time.time_ns()
        os.utime(self.site_packages, ns=(now, now))
        if self._after_install is not None:
            self._after_install(self)

    def _install_wheel(self, wheel: Path) -> None:
        from installer import install
        from installer.destinations import SchemeDictionaryDestination
        from installer.sources import WheelFile

        site = str(self.site_packages)
        version = self.site_packages.parent.name
        scheme = {
            "purelib": site,
            "platlib": site,
            "scripts": str(self.bin_dir),
            "data": str(self.path),
            "headers": str(self.path / "include" / "site" / version / "UNKNOWN"),
        }
        dest = SchemeDictionaryDestination(
            scheme, interpreter=str(self.python), script_kind="posix"
        )
        try:
            with WheelFile.open(wheel) as source:
                install(source, dest, {"INSTALLER": b"pytest-cowenv\n"})
        except Exception as exc:  # installer raises plain exceptions for bad wheels
            raise CowEnvError(
                f"{wheel}: cannot install this wheel into {self.path}: {exc}"
            ) from None

    def runpytest(
        self,
        *args: StrPath,
        cwd: Optional[StrPath] = None,
        env: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
    ) -> pytest.RunResult:
        """Run this environment's own pytest in a subprocess: a clean room.

        Only what is installed in the environment loads (its plugins, not the outer run's);
        no ``PYTEST_*`` variable (``PYTEST_ADDOPTS``, ``PYTEST_PLUGINS``, …) of the outer run
        leaks in, and neither does the current directory on ``sys.path``. ``cwd`` (default:
        the current directory) decides which ini file and ``conftest.py`` files it finds;
        ``env`` adds variables. Returns a :class:`pytest.RunResult` (``ret``, ``outlines``,
        ``errlines``, ``parseoutcomes()``, ``assert_outcomes()``). Raises
        :class:`CowEnvError` if pytest is not installed in the environment.
        """
        import pytest

        if not (self.site_packages / "_pytest").is_dir():
            raise CowEnvError(
                f"pytest is not installed in this environment ({self.template.spec.describe()});"
                " add 'pytest' to the cowenv marker's requirements or install() it"
            )
        full_env = {
            k: v
            for k, v in self.env.items()
            if not k.startswith("PYTEST_") and k not in _OUTER_PYTEST_VARS
        }
        full_env.update(env or {})
        # The console script puts its own bin dir on sys.path; `python -m pytest` would add
        # the current directory, and with it any source tree that happens to be there.
        script = self.bin_dir / "pytest"
        if script.is_file() and sys.platform != "win32":
            argv = [str(script)]
        else:
            argv = [str(self.python), "-m", "pytest"]
        argv += [os.fspath(a) for a in args]
        start = time.perf_counter()
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            cwd=cwd,
            env=full_env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return pytest.RunResult(
            proc.returncode,
            proc.stdout.splitlines(),
            proc.stderr.splitlines(),
            time.perf_counter() - start,
        )


def _self_contained_wheel(item: str, installed: Mapping[str, Any]) -> bool:
    """A local wheel that is new to the environment and whose unconditional dependencies
    are already installed: safe to unpack without a resolver (nothing to upgrade)."""
    if not item.endswith(".whl") or not os.path.isfile(item):
        return False
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    if canonicalize_name(os.path.basename(item).split("-")[0]) in installed:
        return False
    try:
        requires = wheel_requires(Path(item))
    except (OSError, ValueError):
        return False
    for line in requires:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            return False
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        if canonicalize_name(req.name) not in installed:
            return False
    return True

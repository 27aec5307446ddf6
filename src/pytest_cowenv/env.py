"""The handle a test gets: one private clone of a template, and ways to use it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from ._install import IndexOptions, clean_env, install_command, run_installer
from .errors import CommandError, CowEnvError, TemplateBuildError

if TYPE_CHECKING:
    import pytest

    from .template import Template

StrPath = Union[str, "os.PathLike[str]"]

# pytest's own variables that would make the inner run behave like the outer one.
_PYTEST_VARS = (
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
    "PYTEST_CURRENT_TEST",
    "PYTEST_XDIST_WORKER",
    "PYTEST_XDIST_WORKER_COUNT",
    "PYTEST_XDIST_TESTRUNUID",
    "PYTEST_DEBUG",
    "PYTEST_DISABLE_PLUGIN_AUTOLOAD",
    "PYTEST_VERSION",
)


class CowEnv:
    """A private virtual environment: a copy-on-write clone of ``template`` at ``path``."""

    def __init__(self, path: Path, template: Template, strategy: str, index: IndexOptions) -> None:
        self.path = path
        self.template = template
        self.strategy = strategy
        self._index = index
        self.clone_seconds = 0.0
        self.keep = False

    def __repr__(self) -> str:
        return f"<CowEnv {self.path} ({self.strategy}) {self.template.spec.describe()}>"

    @property
    def bin_dir(self) -> Path:
        return self.path / ("Scripts" if sys.platform == "win32" else "bin")

    @property
    def python(self) -> Path:
        return self.bin_dir / ("python.exe" if sys.platform == "win32" else "python")

    @property
    def site_packages(self) -> Path:
        from .template import site_packages

        return site_packages(self.path)

    @property
    def env(self) -> dict[str, str]:
        """Environment variables for a subprocess in this env: its ``bin`` first on PATH,
        ``VIRTUAL_ENV`` set, and no ``PYTHONPATH``/``PYTHONHOME``/outer venv leaking in."""
        env = clean_env()
        env["VIRTUAL_ENV"] = str(self.path)
        env["PATH"] = os.pathsep.join([str(self.bin_dir), env.get("PATH", os.defpath)])
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
        """Run ``cmd`` in this environment (commands resolve in its ``bin`` first).

        Returns the completed process (text output captured). With ``check`` (the default),
        a non-zero exit raises :class:`CommandError` holding the command, code and output.
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
        """Install requirements, local wheels or projects into this clone only.

        Local wheels whose dependencies are already present are unpacked in-process by
        ``installer``; everything else goes through uv or the outer pip (``--python``).
        """
        if not items:
            return
        texts = [os.fspath(i) for i in items]
        if all(_self_contained_wheel(t, self.template.resolved) for t in texts):
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
        # New entries bump the directory's mtime, but only as finely as the filesystem keeps it;
        # importlib's directory cache must see the change within this same second.
        os.utime(self.site_packages, ns=(time.time_ns(), time.time_ns()))

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
        self, *args: StrPath, cwd: Optional[StrPath] = None, timeout: Optional[float] = None
    ) -> pytest.RunResult:
        """Run the environment's own pytest (only its installed plugins) in a subprocess.

        Returns a :class:`pytest.RunResult` (``ret``, ``outlines``, ``errlines``,
        ``parseoutcomes()``, ``assert_outcomes()``).
        """
        import pytest

        if not (self.site_packages / "_pytest").is_dir():
            raise CowEnvError(
                f"pytest is not installed in this environment ({self.template.spec.describe()});"
                " add 'pytest' to the cowenv marker's requirements"
            )
        env = {k: v for k, v in self.env.items() if k not in _PYTEST_VARS}
        argv = [str(self.python), "-m", "pytest", *(os.fspath(a) for a in args)]
        start = time.perf_counter()
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            cwd=cwd,
            env=env,
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
    """A local wheel whose unconditional dependencies are already installed."""
    if not item.endswith(".whl") or not os.path.isfile(item):
        return False
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    try:
        with zipfile.ZipFile(item) as zf:
            meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            meta = zf.read(meta_name).decode("utf-8", "replace")
    except (OSError, zipfile.BadZipFile, StopIteration):
        return False
    for line in meta.splitlines():
        if not line.strip():
            break  # end of headers
        if line.startswith("Requires-Dist:"):
            try:
                req = Requirement(line.split(":", 1)[1].strip())
            except InvalidRequirement:
                return False
            if req.marker and not req.marker.evaluate({"extra": ""}):
                continue
            if canonicalize_name(req.name) not in installed:
                return False
    return True

"""Building one environment for a spec, in a new directory: a bare venv, wheels of local
projects, the install, relocation, byte-compiling (now, or later in a copy: see
:mod:`.template`). Nothing here knows the cache around it (:mod:`.template` keys, locks and
publishes what this builds).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

from ._install import (
    build_wheel,
    clean_env,
    failure_message,
    pip_unusable,
    run_installer,
    start_captured,
    uv_binary,
)
from ._plan import install_commands
from ._relocate import forget_index_urls, point_at_sources, relocate
from ._venv import site_packages
from .clone import make_template_dir
from .errors import TemplateBuildError
from .spec import TemplateSpec, find_interpreter

# (project directory, a new folder for it, an event set when the wheel is no longer wanted)
# → the path of a wheel of the project.
WheelSource = Callable[[Path, Path, threading.Event], Path]


@contextlib.contextmanager
def timed(phases: dict[str, float], name: str) -> Iterator[None]:
    """Add the seconds spent in the ``with`` block to ``phases[name]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - start


# What byte-compiling reports for an environment not compiled (yet).
NOT_COMPILED: dict[str, Any] = {
    "reused": 0,
    "compiled": 0,
    "failed": 0,
    "dropped": 0,
    "store": None,
    "entries": [],
}


def build_env(
    spec: TemplateSpec,
    env: Path,
    work: Path,
    bytecode: Path,
    phases: dict[str, float],
    *,
    compile: bool = True,
    wheel_of: Optional[WheelSource] = None,
    installing: Optional[Callable[[], None]] = None,
) -> dict[str, Any]:
    """Create, fill, relocate and (if ``compile``) byte-compile the environment ``env`` (a
    new path). Local projects are built into wheels in ``work``, or taken from ``wheel_of``
    (the cache's, see :mod:`._wheelcache`), in a thread of their own: meanwhile the base
    environment is made and the installs that need no wheel run (see ``InstallPlan``).
    ``installing`` is called once the first installer command runs (see
    :func:`run_installer`).

    Returns what byte-compiling reports (see :func:`compile_env`; :data:`NOT_COMPILED`
    without ``compile``); adds each phase's seconds to ``phases``.
    """
    interp = find_interpreter(spec.python)
    if uv_binary() is None:  # the outer pip installs, run on that interpreter
        check_pip_runs(spec, interp.executable, interp.version)
    python = env / "bin" / "python"
    projects = [Path(local) for local in spec.local if os.path.isdir(local)]
    # First: everything below overlaps the wheels.
    wheels = _Wheels(projects, work, interp.executable, spec, wheel_of) if projects else None
    base_env_made: Optional[Callable[[], None]] = None

    def start_base() -> Callable[[], None]:
        with timed(phases, "venv"):
            return start_base_env(env, interp.executable, pip=spec.pip, what=spec.describe())

    def installer_started() -> None:
        nonlocal base_env_made
        if base_env_made is None:
            base_env_made = start_base()
        if installing is not None:
            installing()

    built: dict[str, Path] = {}
    started: Optional[Callable[[], None]] = installer_started
    try:
        with timed(phases, "venv"):
            make_template_dir(env)
        # uv installs without the venv (see start_base_env): the installer starts first, and
        # the venv while it runs. virtualenv's venv is made first (pip installs into it).
        if not base_env_by_uv(spec.pip):
            base_env_made = start_base()
        plan = install_commands(spec, python, work, interp.executable)
        for command in plan.first:  # hash-checked: from uv's cache first, see run_installer
            with timed(phases, "install"):
                what = f"{spec.describe()}: installing failed"
                run_installer(command, what, started, cache_first=True)
            started = None
        with timed(phases, "wheels"):  # what is left of building them: the rest overlapped
            built = wheels.result() if wheels is not None else {}
        for command in plan.then(built):
            with timed(phases, "install"):
                run_installer(command, f"{spec.describe()}: installing failed", started)
            started = None
    except BaseException as exc:
        # No wheel build outlives the build: its process and the files it writes in `work`.
        wheel_failure = wheels.stop() if wheels is not None else None
        with contextlib.suppress(TemplateBuildError):  # the first failure is the one to tell
            if base_env_made is not None:
                base_env_made()
        if wheel_failure is not None and isinstance(exc, Exception):
            # The wheels came first before the overlap: their failure is still the one told.
            raise wheel_failure from None
        raise
    if base_env_made is None:  # nothing to install
        base_env_made = start_base()
    with timed(phases, "venv"):
        base_env_made()
    with timed(phases, "relocate"):
        relocate(env, env, interp.executable)
        point_at_sources(site_packages(env), {wheel: Path(local) for local, wheel in built.items()})
        forget_index_urls(site_packages(env), spec.from_index)
    if not compile:
        return dict(NOT_COMPILED)
    with timed(phases, "compile"):
        return compile_env(env, spec, bytecode)


def check_pip_runs(spec: TemplateSpec, python: str, version: str) -> None:
    """Raise a one-line :class:`TemplateBuildError` if the outer pip cannot install for
    ``python``: its installs and wheel builds would each fail inside pip, with pip's own
    traceback (see :func:`pip_unusable`)."""
    # Without uv only because the user opted out: installing it would change nothing.
    opted_out = bool(os.environ.get("PYTEST_COWENV_NO_UV"))
    unusable = pip_unusable(python, version, uv_instead=not opted_out)
    if unusable is not None:
        raise TemplateBuildError(f"{spec.describe()}: {unusable}")


class _Wheels:
    """The wheels of a spec's local project directories, one after the other, in a thread:
    built, taken from the cache, or waited for while another process builds them."""

    def __init__(
        self,
        projects: list[Path],
        work: Path,
        python: str,
        spec: TemplateSpec,
        wheel_of: Optional[WheelSource],
    ) -> None:
        self._unwanted = threading.Event()
        self._wheels: dict[str, Path] = {}
        self._error: Optional[BaseException] = None

        def run() -> None:
            try:
                for project in projects:
                    if wheel_of is None:
                        wheel = build_wheel(project, work, python, spec.index)
                    else:
                        wheel = wheel_of(project, work / f"wheels-{project.name}", self._unwanted)
                    self._wheels[str(project)] = wheel
            except BaseException as exc:  # handed to result() or stop()
                if not self._unwanted.is_set():  # else it may be our own giving up
                    self._error = exc

        self._thread = threading.Thread(target=run, name="cowenv-wheels", daemon=True)
        self._thread.start()

    def result(self) -> dict[str, Path]:
        """Each project directory's wheel, once all are there; raises what a build raised."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        return dict(self._wheels)

    def stop(self) -> Optional[BaseException]:
        """Give up waiting for other processes' builds and wait for the thread (a build of
        our own runs to its end: its process is not left behind); what a build raised."""
        self._unwanted.set()
        self._thread.join()
        return self._error


# virtualenv keeps process-wide state (its app-data, interpreter cache): one build at a time.
_VIRTUALENV = threading.Lock()


def start_base_env(env: Path, python: str, *, pip: bool, what: str) -> Callable[[], None]:
    """Start making a bare virtual environment at ``env`` (an empty directory); the function
    returned waits until it is complete, and raises if it failed.

    By ``uv venv`` when uv is there and pip is not wanted, in the background: uv then
    installs into ``env`` as a prefix of ``python`` (see ``install_command``), which needs
    nothing of the venv, and the two write different files. Else by virtualenv, in-process
    (a ``python -m virtualenv`` would spend more time starting than creating), which seeds
    pip from its own wheels, before anything is installed."""
    uv = uv_binary()
    if uv and base_env_by_uv(pip):
        # --no-project and --no-config: no pyproject.toml or uv.toml around steers it.
        cmd = [uv, "venv", "--quiet", "--no-project", "--no-config", "--allow-existing"]
        cmd += ["--python", python, str(env)]
        proc = start_captured(cmd)

        def made() -> None:
            out, err = proc.communicate()
            if proc.returncode != 0:
                failed = f"{what}: creating the base environment with {python} failed"
                raise TemplateBuildError(failure_message(failed, cmd, proc.returncode, err + out))
            # uv marks a venv as a cache for backup tools: a template's clones are not caches.
            (env / "CACHEDIR.TAG").unlink(missing_ok=True)

        return made
    create_with_virtualenv(env, python, pip=pip, what=what)
    return lambda: None


def base_env_by_uv(pip: bool) -> bool:
    """Whether :func:`start_base_env` makes the venv with uv (else with virtualenv)."""
    return uv_binary() is not None and not pip


def create_with_virtualenv(env: Path, python: str, *, pip: bool, what: str) -> None:
    """A bare virtual environment at ``env`` made by virtualenv (see :func:`start_base_env`)."""
    from virtualenv import cli_run

    seed = ["--seeder", "app-data", "--no-setuptools", "--no-wheel"] if pip else ["--no-seed"]
    args = ["--quiet", "--no-periodic-update", "--activators", "bash", "--python", python]
    try:
        with _VIRTUALENV:
            cli_run([*args, *seed, str(env)], setup_logging=False, env=clean_env())
    except (Exception, SystemExit) as exc:  # virtualenv reports with plain exceptions
        raise TemplateBuildError(
            f"{what}: creating the base environment with {python} failed: {exc}"
        ) from None


def compile_env(
    env: Path,
    spec: TemplateSpec,
    bytecode: Path,
    *,
    behind: bool = False,
    idle: bool = False,
    started: Optional[Callable[[subprocess.Popen[str]], None]] = None,
) -> dict[str, Any]:
    """Byte-compile site-packages with the environment's own interpreter (see _bytecode).
    ``behind``: at a low CPU priority, while tests run; ``idle`` (with ``behind``): only on a
    core nothing else wants, by one process; ``started`` is given the process.

    Returns the counts (``reused``, ``compiled``, ``failed``, ``dropped`` store entries that
    failed their check) and the store entries used (``store`` folder, ``entries``)."""
    script = Path(__file__).with_name("_bytecode.py")
    # -I: nothing from the environment variables or the script's folder; -S: no .pth files run.
    cmd = [str(env / "bin" / "python"), "-I", "-S", str(script)]
    cmd += [str(site_packages(env)), str(bytecode)]
    cmd += ["--behind", str(os.getpid())] if behind else []
    cmd += ["--idle"] if behind and idle else []
    with start_captured(cmd) as proc:
        if started is not None:
            started(proc)
        stdout, stderr = proc.communicate()
    if proc.returncode < 0:  # killed (a spare compile stopped at the tests' end, Ctrl-C)
        remove_leftovers(bytecode, proc.pid)
    if proc.returncode != 0:
        raise TemplateBuildError(
            failure_message(
                f"{spec.describe()}: byte-compiling failed", cmd, proc.returncode, stderr + stdout
            )
        )
    report: dict[str, Any] = json.loads(stdout.splitlines()[-1])
    if (site_packages(env) / "_pytest").is_dir():
        report["rewritten"] = _rewrite_plugins(env, cmd, started)
    return report


# Loading an environment's plugins takes seconds; one that hangs must not hold the build.
REWRITE_TIMEOUT = 120.0


def _rewrite_plugins(
    env: Path, compile_cmd: list[str], started: Optional[Callable[[subprocess.Popen[str]], None]]
) -> int:
    """Have the environment's pytest rewrite its plugins' asserts into the template (see
    ``_bytecode.rewrites``), the way the compile ran (``behind``, ``idle``). Best effort: a
    plugin that fails or hangs costs its clones' first pytest that work, as without this."""
    cmd = [*compile_cmd[:5], "--rewrites", *compile_cmd[6:]]
    with start_captured(cmd) as proc:
        if started is not None:
            started(proc)
        try:
            stdout, _ = proc.communicate(timeout=REWRITE_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    if proc.returncode != 0:
        _remove_pytest_temps(site_packages(env), proc.pid)
        return 0
    with contextlib.suppress(ValueError, IndexError, TypeError):
        return int(json.loads(stdout.splitlines()[-1])["rewritten"])
    return 0


def _remove_pytest_temps(site: Path, pid: int) -> None:
    """pytest writes each rewritten file as ``NAME.pyc.PID`` and renames it: a killed run may
    leave one in the build folder's environment (ours alone)."""
    tail = f".pyc.{pid}"
    for folder, _dirs, files in os.walk(site):
        for name in files:
            if name.endswith(tail):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))


def remove_leftovers(bytecode: Path, pid: int) -> None:
    """Remove the temp files that compiler ``pid``, killed and reaped, left half written in
    the bytecode store (``_bytecode.tmp_name``: the secret at the top, entries two folders
    down). Every folder is opened without following a link, and files are removed relative
    to it: only what the store's own folders hold goes."""
    import stat

    from ._names import BYTECODE_TMP

    def theirs(name: str) -> bool:
        found = BYTECODE_TMP.match(name)
        return found is not None and found["pid"] == str(pid)

    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)

    def sweep(name: str, parent: Optional[int], depth: int) -> None:
        try:
            fd = os.open(name, flags, dir_fd=parent)
        except OSError:  # gone, or a link: nothing of ours to sweep there
            return
        try:
            with os.scandir(fd) as entries:
                found = [(e.name, e.stat(follow_symlinks=False).st_mode) for e in entries]
            for child, mode in found:
                if stat.S_ISDIR(mode) and depth < 2:
                    sweep(child, fd, depth + 1)
                elif stat.S_ISREG(mode) and theirs(child):
                    with contextlib.suppress(OSError):
                        os.unlink(child, dir_fd=fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    sweep(str(bytecode), None, 0)

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

# (project directory, a new folder for it) → the path of a wheel of the project.
WheelSource = Callable[[Path, Path], Path]


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
    (the cache's, see :mod:`._wheelcache`). ``installing`` is called once the first
    installer command runs (see :func:`run_installer`).

    Returns what byte-compiling reports (see :func:`compile_env`; :data:`NOT_COMPILED`
    without ``compile``); adds each phase's seconds to ``phases``.
    """
    interp = find_interpreter(spec.python)

    def start_base() -> Callable[[], None]:
        with timed(phases, "venv"):
            return start_base_env(env, interp.executable, pip=spec.pip, what=spec.describe())

    with timed(phases, "venv"):
        make_template_dir(env)
    # uv installs without the venv (see start_base_env): the installer starts first, and the
    # venv while it runs. virtualenv's venv is made first (pip installs into it).
    base_env_made = None if base_env_by_uv(spec.pip) else start_base()

    def installer_started() -> None:
        nonlocal base_env_made
        if base_env_made is None:
            base_env_made = start_base()
        if installing is not None:
            installing()

    python = env / "bin" / "python"
    origins: dict[Path, Path] = {}
    wheels: dict[str, Path] = {}
    started: Optional[Callable[[], None]] = installer_started
    try:
        for local in map(Path, spec.local):
            if local.is_dir():
                with timed(phases, "wheels"):
                    if wheel_of is None:
                        wheel = build_wheel(local, work, interp.executable, spec.index)
                    else:
                        wheel = wheel_of(local, work / f"wheels-{local.name}")
                origins[wheel] = local
                wheels[str(local)] = wheel
        for command in install_commands(spec, python, work, wheels, interp.executable):
            with timed(phases, "install"):
                run_installer(command, f"{spec.describe()}: installing failed", started)
            started = None
    except BaseException:
        with contextlib.suppress(TemplateBuildError):  # the first failure is the one to tell
            if base_env_made is not None:
                base_env_made()
        raise
    if base_env_made is None:  # nothing to install
        base_env_made = start_base()
    with timed(phases, "venv"):
        base_env_made()
    with timed(phases, "relocate"):
        relocate(env, env, interp.executable)
        point_at_sources(site_packages(env), origins)
        forget_index_urls(site_packages(env), spec.from_index)
    if not compile:
        return dict(NOT_COMPILED)
    with timed(phases, "compile"):
        return compile_env(env, spec, bytecode)


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
    started: Optional[Callable[[subprocess.Popen[str]], None]] = None,
) -> dict[str, Any]:
    """Byte-compile site-packages with the environment's own interpreter (see _bytecode).
    ``behind``: at a low CPU priority, while tests run; ``started`` is given the process.

    Returns the counts (``reused``, ``compiled``, ``failed``, ``dropped`` store entries that
    failed their check) and the store entries used (``store`` folder, ``entries``)."""
    script = Path(__file__).with_name("_bytecode.py")
    # -I: nothing from the environment variables or the script's folder; -S: no .pth files run.
    cmd = [str(env / "bin" / "python"), "-I", "-S", str(script)]
    cmd += [str(site_packages(env)), str(bytecode)]
    cmd += ["--behind", str(os.getpid())] if behind else []
    with start_captured(cmd) as proc:
        if started is not None:
            started(proc)
        stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise TemplateBuildError(
            failure_message(
                f"{spec.describe()}: byte-compiling failed", cmd, proc.returncode, stderr + stdout
            )
        )
    report: dict[str, Any] = json.loads(stdout.splitlines()[-1])
    return report

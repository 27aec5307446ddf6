"""Put distributions into an environment: uv when present, else the outer pip, else installer.

Nothing here needs pip *inside* the environment: templates are lean by default.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Callable, NamedTuple, Optional

from .errors import TemplateBuildError, shown

# Variables of the outer environment that must never steer a child interpreter.
LEAKY_VARS = (
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "__PYVENV_LAUNCHER__",
    "UV_PYTHON",
    "PIP_PYTHON",
)


# What never belongs to a project's sources: VCS data and caches (anywhere in the tree), and
# build outputs and tool folders at its top level only (a package may well be called `build`),
# with what the project's own test run leaves there (coverage data and reports, hypothesis's
# example database): running its suite in a clone must not change the key of the project.
_SKIP_ANYWHERE = {".git", ".hg", ".svn", "__pycache__"}
_SKIP_AT_TOP = {
    "build",
    "dist",
    ".tox",
    ".nox",
    ".venv",
    "venv",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".coverage",
    "htmlcov",
    ".hypothesis",
}


def project_skips(rel_dir: str, name: str) -> bool:
    """Whether ``name`` inside ``rel_dir`` (relative to a project root, "" for the root) is a
    build output, cache or VCS folder: left out of the cache key and of the private copy that
    the wheel is built from."""
    return (
        name in _SKIP_ANYWHERE
        or name.endswith((".egg-info", ".pyc", ".pyo"))
        or (rel_dir in ("", ".") and (name in _SKIP_AT_TOP or name.startswith(".coverage.")))
    )


def project_filter(project: Path) -> Callable[[str, str], bool]:
    """``skips(rel_dir, name)``: :func:`project_skips`, and, when the user's home directory is
    ``project`` or inside it (pytester makes it so), the hidden folders directly in it. Those
    hold the state of the installers and of what they start (pip runs ``rustc``, whose rustup
    writes ``~/.rustup``; uv caches in ``~/.cache``): a build must not change the key of the
    project it builds. The cache key and the private copy use the same filter, so the key
    hashes exactly what the build sees."""
    home = _home_inside(project)

    def skips(rel_dir: str, name: str) -> bool:
        return project_skips(rel_dir, name) or (
            home is not None
            and name.startswith(".")
            and os.path.normpath(rel_dir) == home
            and os.path.isdir(os.path.join(project, rel_dir, name))
        )

    return skips


def _home_inside(project: Path) -> Optional[str]:
    """The home directory relative to ``project`` ("." for the project itself), or None when
    it lies outside."""
    try:
        rel = os.path.relpath(os.path.realpath(os.path.expanduser("~")), os.path.realpath(project))
    except ValueError:  # another drive (Windows)
        return None
    return None if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


class IndexOptions(NamedTuple):
    """Where installers look for distributions."""

    find_links: tuple[str, ...] = ()
    index_url: Optional[str] = None
    offline: bool = False


@cache
def uv_binary() -> Optional[str]:
    """The uv executable to use as an accelerator, if any (``PYTEST_COWENV_NO_UV=1`` opts out)."""
    if os.environ.get("PYTEST_COWENV_NO_UV"):
        return None
    found = shutil.which("uv")
    if found:
        return found
    try:
        from uv import find_uv_bin  # type: ignore[import-not-found, unused-ignore]

        return str(find_uv_bin())
    except Exception:
        return None


# `uv --version` started ahead by prefetch_installer_identity: uv path -> the process.
_PENDING: dict[str, subprocess.Popen[str]] = {}


def prefetch_installer_identity() -> None:
    """Start ``uv --version`` now, for :func:`installer_identity` to read when it is first
    asked: a caller with other work before the cache key (imports, the cache directory)
    need not wait for uv then."""
    uv = uv_binary()
    if uv is None or uv in _PENDING or installer_identity.cache_info().currsize:
        return
    with contextlib.suppress(OSError):  # installer_identity tries again and says why
        _PENDING[uv] = _version_process(uv)


def _version_process(uv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [uv, "--version"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )


@cache
def installer_identity() -> str:
    """Which installer templates are built with, for the cache key (``uv 0.5.1`` / ``pip 24``)."""
    uv = uv_binary()
    if uv:
        proc = _PENDING.pop(uv, None) or _version_process(uv)
        out, _ = proc.communicate()
        return out.strip() or "uv"
    try:
        from importlib.metadata import version

        return f"pip {version('pip')}"
    except Exception:
        return "pip (missing)"


# Variables that change what pip or uv would resolve or where they look: part of every
# template's key (README, "What makes a new template"). pip reads PIP_<OPTION> for each of
# its options; these are the options that change the result. UV_PYTHON is in LEAKY_VARS.
RESOLVER_VARS = (
    "PIP_CONFIG_FILE",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
    "PIP_NO_INDEX",
    "PIP_CONSTRAINT",
    "PIP_PRE",
    "PIP_ONLY_BINARY",
    "PIP_NO_BINARY",
    "PIP_PREFER_BINARY",
    "PIP_REQUIRE_HASHES",
    "UV_CONFIG_FILE",
    "UV_NO_CONFIG",
    "UV_INDEX",
    "UV_DEFAULT_INDEX",
    "UV_INDEX_URL",
    "UV_EXTRA_INDEX_URL",
    "UV_FIND_LINKS",
    "UV_INDEX_STRATEGY",
    "UV_OFFLINE",
    "UV_CONSTRAINT",
    "UV_BUILD_CONSTRAINT",
    "UV_OVERRIDE",
    "UV_EXCLUDE_NEWER",
    "UV_PRERELEASE",
    "UV_RESOLUTION",
    "UV_FORK_STRATEGY",
    "UV_NO_BINARY",
    "UV_NO_BUILD",
    "UV_NO_SOURCES",
    "UV_TORCH_BACKEND",
)


_FILE_VARS = ("PIP_CONSTRAINT", "UV_CONSTRAINT", "UV_BUILD_CONSTRAINT", "UV_OVERRIDE")


def resolver_environment() -> dict[str, str]:
    """The :data:`RESOLVER_VARS` that are set, with their values, and the content hash of
    each constraints or overrides file they name (for the cache key)."""
    import hashlib

    found = {name: os.environ[name] for name in RESOLVER_VARS if os.environ.get(name)}
    for name in _FILE_VARS:
        for path in found.get(name, "").split():
            try:
                with open(os.path.expanduser(path), "rb") as f:
                    found[f"{name} {path}"] = hashlib.sha256(f.read()).hexdigest()
            except OSError:
                found[f"{name} {path}"] = "unreadable"  # the installer will say why
    return found


def clean_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The outer environment minus the variables that would leak into a child interpreter."""
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_VARS}
    env.update(extra or {})
    return env


def run_clean(
    cmd: Sequence[str],
    *,
    extra_env: Optional[dict[str, str]] = None,
    cwd: Optional[Path] = None,
    timeout: Optional[float] = None,
) -> subprocess.CompletedProcess[str]:
    """``cmd`` run without stdin, in :func:`clean_env` (plus ``extra_env``), its output
    captured as text; its exit code is the caller's to read."""
    return subprocess.run(
        list(cmd),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env=clean_env(extra_env),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def _index_args(index: IndexOptions, *, uv: bool) -> list[str]:
    args: list[str] = []
    for link in index.find_links:
        args += ["--find-links", link]
    if index.offline:
        args.append("--no-index")
        if uv:
            args.append("--offline")
    elif index.index_url:
        args += ["--index-url", index.index_url]
    return args


def _uv_link_mode(python: Path) -> str:
    """``clone`` where the environment's filesystem can reflink (no extra disk, independent of
    uv's cache afterwards), else ``copy``. Where uv cannot clone it falls back to hardlinks
    into its cache: the environment would share inodes with that cache, and a file edited in
    place, or a template's chmod, would change the cache and every later install from it."""
    from .fs import probe

    try:
        # The env's parent: our own folder (tmp/ or a run's clones), probed once per device.
        return "clone" if probe(python.parent.parent.parent).can_reflink else "copy"
    except OSError:
        return "copy"


def install_command(
    python: Path,
    items: Sequence[str],
    index: IndexOptions,
    extra: Sequence[str] = (),
    *,
    base: Optional[str] = None,
) -> list[str]:
    """The command that installs ``items`` (requirements or local wheels) into ``python``'s env;
    ``extra`` are more installer arguments (``-r file``, ``-c file``, ``--no-deps``, ...).

    ``base``: the base interpreter of that env, for a new env that :func:`.relocate` fixes up
    afterwards. uv then installs into the env as a prefix, asking ``base`` rather than the
    env's own python what it is: uv runs an interpreter it has not seen at that path before
    to learn that, and the python of a new env is always new to it, while its answer for the
    base interpreter stays in uv's cache. Scripts name ``base`` then; relocating points them
    at the env's own python."""
    uv = uv_binary()
    if uv:
        target = ["--python", base, "--prefix", str(python.parent.parent)] if base else []
        return [
            uv,
            "pip",
            "install",
            *(target or ["--python", str(python)]),
            f"--link-mode={_uv_link_mode(python)}",
            "--quiet",
            *_index_args(index, uv=True),
            *extra,
            *items,
        ]
    return [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-input",
        "--no-warn-script-location",
        # Templates are byte-compiled afterwards, in a mode that survives cloning; a clone
        # compiles on import what it installs itself, like uv does.
        "--no-compile",
        *_index_args(index, uv=False),
        *extra,
        *items,
    ]


@cache
def pip_error_for(python: str, version: str) -> Optional[str]:
    """The error that the outer pip meets when it installs for the interpreter ``python`` (of
    Python ``version``), in pip's words (its last error line, not its traceback); None when
    it runs there. pip's ``--python`` runs pip's own code on that interpreter, and an old pip
    fails inside itself on a newer Python (Debian's pip 23.0 on 3.12), a new one refuses an
    old Python: tried once per interpreter and process, by listing that interpreter's
    distributions, which every pip install reads first. The pip that runs this process runs
    on every interpreter of this minor version: those are not tried."""
    if version.split(".")[:2] == [str(part) for part in sys.version_info[:2]]:
        return None
    cmd = [sys.executable, "-m", "pip", "--python", python, "list", "--format=freeze"]
    cmd += ["--disable-pip-version-check", "--no-input"]
    try:
        proc = run_clean(cmd, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        return " ".join(str(exc).split())
    if proc.returncode == 0:
        return None
    lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    said = next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "")
    return said or f"exit code {proc.returncode}"


def pip_unusable(python: str, version: str, *, uv_instead: bool) -> Optional[str]:
    """Why the outer pip cannot install for the interpreter ``python`` (see
    :func:`pip_error_for`), in one line that names the fix; None when it can. ``uv_instead``:
    uv would do the work instead where it is installed."""
    said = pip_error_for(python, version)
    return None if said is None else pip_unusable_message(python, version, said, uv_instead)


def pip_unusable_message(python: str, version: str, said: str, uv_instead: bool) -> str:
    """The line of :func:`pip_unusable`: which pip, for which interpreter, the fix, and what
    pip said. A Python outside pip's own ``Requires-Python`` gets no upgrade advice: a newer
    pip supports it no more."""
    from importlib.metadata import PackageNotFoundError, metadata

    from packaging.specifiers import SpecifierSet

    outer = f"{sys.executable} -m pip"
    try:
        about = metadata("pip")
    except PackageNotFoundError:
        return f"no pip beside pytest-cowenv ({sys.executable}): install pip" + (
            " or uv" if uv_instead else ""
        )
    requires = (about.get_all("Requires-Python") or [""])[0]
    pip = f"pip {about['Version']} ({outer}) cannot run for Python {version} ({shown(python)})"
    if not SpecifierSet(requires).contains(version, prereleases=True):  # 3.15.0a1 too
        fix = f"pip supports Python {requires}: give another interpreter"
    else:
        fix = f"upgrade pip ({outer} install -U pip)" + (" or install uv" if uv_instead else "")
    return f"{pip}: {fix} (pip said: {shown(said)})"


def run_installer(
    cmd: Sequence[str],
    what: str,
    started: Optional[Callable[[], None]] = None,
    *,
    cache_first: bool = False,
) -> None:
    """Run an installer command; failure becomes a TemplateBuildError with its last lines.
    ``started`` is called once the command runs, before waiting for it.

    ``cache_first``: a uv command runs from uv's cache alone first (``--offline``), and with
    the network only if that failed; the second failure is the one told. uv otherwise asks
    the index again for every cached page and wheel whose freshness it cannot tell (an index
    or proxy that sends no cache headers): a connection and a name lookup each, which can
    stall, for files it has. Only for commands whose outcome the cache cannot make wrong:
    hash-checked sets (the same files either way) and wheel builds (a cached build backend
    that satisfies the project's requirements is as good as the index's newest)."""
    if cache_first and cmd and cmd[0] == uv_binary() and "--offline" not in cmd:
        try:
            _run_installer([cmd[0], "--offline", *cmd[1:]], what, started)
            return
        except TemplateBuildError:  # not all in the cache (or a failure the retry tells)
            started = None
    _run_installer(cmd, what, started)


def _run_installer(cmd: Sequence[str], what: str, started: Optional[Callable[[], None]]) -> None:
    with start_captured(cmd) as proc:
        try:
            if started is not None:
                started()
            stdout, stderr = proc.communicate()
        except BaseException:  # Ctrl-C included: as subprocess.run, never leave it running
            proc.kill()
            raise
    if proc.returncode != 0:
        raise TemplateBuildError(failure_message(what, cmd, proc.returncode, stderr + stdout))


def start_captured(cmd: Sequence[str]) -> subprocess.Popen[str]:
    """Start ``cmd`` the way installers run (output captured as text, no stdin, the clean
    environment) without waiting for it: the caller communicates."""
    return subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=clean_env(),
    )


def failure_message(what: str, cmd: Sequence[str], code: int, output: str) -> str:
    """First line names the culprit (the short summary keeps only it); then the tool's words."""
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    culprit = next(
        (ln.strip() for ln in reversed(lines) if "error" in ln.lower()),
        lines[-1].strip() if lines else f"exit code {code}",
    )
    # pip names the packages whose hashes differ on the lines before each "Expected".
    mismatched = [
        re.sub(r" \(from -r .*\)$", "", lines[i - 1].strip().rstrip(":"))
        for i, ln in enumerate(lines)
        if i and ln.strip().startswith("Expected ") and "DO NOT MATCH THE HASHES" in output
    ]
    if mismatched:
        culprit = f"hash mismatch: {'; '.join(mismatched)}"
    else:  # uv says it below the error it caused ("Caused by: Hash mismatch for `x==1`")
        found = [ln.strip() for ln in lines if "hash mismatch" in ln.lower()]
        culprit = found[0].removeprefix("Caused by: ") if found else culprit
    tail = "\n".join(lines[-30:])
    return f"{what}: {culprit}\ncommand: {' '.join(str(c) for c in cmd)} (exit code {code})\n{tail}"


def link_vcs(project: Path, copy: Path, private: Path) -> None:
    """Let the copy see the project's git repository: backends that take the version from
    git (setuptools-scm, hatch-vcs) fail without it. Nothing is copied but the index and
    HEAD: the copy's ``.git`` names ``private``, a git folder of its own (as a linked
    worktree has one) whose ``commondir`` is the project's. Git writes there, never in the
    project (``git describe --dirty`` rewrites the index it uses)."""
    git = project / ".git"
    if git.is_dir():
        admin = git
    elif git.is_file():  # a worktree or submodule: "gitdir: <path>", maybe relative
        text = git.read_text(encoding="utf-8").strip()
        if not text.startswith("gitdir:"):
            return
        admin = (project / text[len("gitdir:") :].strip()).resolve()
    else:
        return
    common = admin.resolve()
    with contextlib.suppress(OSError):  # a worktree's folder names the repository's own
        common = (admin / (admin / "commondir").read_text(encoding="utf-8").strip()).resolve()
    private.mkdir()
    (private / "commondir").write_text(f"{common}\n", encoding="utf-8")
    for name in ("HEAD", "index"):
        with contextlib.suppress(FileNotFoundError):
            shutil.copyfile(admin / name, private / name)
    (copy / ".git").write_text(f"gitdir: {private}\n", encoding="utf-8")


def build_wheel(project: Path, out_dir: Path, python: str, index: IndexOptions) -> Path:
    """Build a wheel of a local project from a private copy (the source tree stays clean).

    The build backend is fetched with the spec's own index options (offline stays offline)
    and runs on the template's interpreter, so a wheel with extension modules fits it. uv
    takes it from its cache alone when the cache has a backend that satisfies the project's
    build requirements, and asks the index otherwise (see :func:`run_installer`); a project
    whose build fails is then built twice.
    """
    work = out_dir / f"src-{project.name}"
    skips = project_filter(project)

    def ignore(directory: str, names: list[str]) -> set[str]:
        rel = os.path.relpath(directory, project)
        return {name for name in names if skips(rel, name)}

    shutil.copytree(project, work, ignore=ignore, symlinks=True)
    link_vcs(project, work, out_dir / f"git-{project.name}")
    wheels = out_dir / f"wheels-{project.name}"
    uv = uv_binary()
    if uv:
        cmd = [uv, "build", "--wheel", "--quiet", "--python", python, "--out-dir", str(wheels)]
        cmd += [*_index_args(index, uv=True), str(work)]
    else:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "wheel",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            "--no-input",
            *_index_args(index, uv=False),
            "--wheel-dir",
            str(wheels),
            str(work),
        ]
    run_installer(cmd, f"{shown(project)}: building a wheel failed", cache_first=True)
    built = sorted(wheels.glob("*.whl"))
    if not built:
        raise TemplateBuildError(
            f"{shown(project)}: the build produced no wheel in {shown(wheels)}"
        )
    return built[0]

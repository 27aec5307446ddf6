"""Lock files as specs: PEP 751 ``pylock.toml`` directly, ``uv.lock`` through ``uv export``.

A lock becomes the exact set of files to install for the template's interpreter: markers
evaluated and one wheel chosen by ``packaging.pylock`` (packaging >= 26.1), each file named
with its locked hashes, so that pip or uv install it in hash-checking mode, without
resolving anything (``--no-deps``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ._groups import loads_toml, read_toml
from ._install import run_clean, uv_binary
from .errors import SpecError

# The hash algorithms both pip and uv check (PEP 751 allows others; they are of no use here).
_CHECKABLE = ("sha256", "sha384", "sha512")


@dataclass
class Locked:
    requirements: list[str] = field(default_factory=list)  # "name @ url --hash=algo:hex"
    local: list[str] = field(default_factory=list)  # locked project directories
    pins: dict[str, str] = field(default_factory=dict)  # name -> locked version ("" unknown)
    indexed: list[str] = field(default_factory=list)  # names the lock says came from an index
    sources: dict[str, str] = field(default_factory=dict)  # path -> sha256 of content
    shown: str = ""


def locked_set(
    path: Path,
    given: str,
    groups: Sequence[str],
    extras: Sequence[str],
    python: Optional[str],
) -> Locked:
    """What ``path`` locks for the interpreter ``python`` (None: this one)."""
    path = path.expanduser().resolve()
    if not path.is_file():
        raise SpecError(f"lock={given!r}: no such file ({path})")
    selection = f" [{'; '.join(_parts(groups, extras))}]" if groups or extras else ""
    asked = (str(path), given, tuple(groups), tuple(extras), python)
    data: dict[str, Any] = {}
    if path.name == "uv.lock":
        data, sources = _export_uv_lock(path, given, groups, extras)
        groups, extras = (), ()  # uv selected them in the export
    elif path.name == "pylock.toml" or (path.name.startswith("pylock.") and path.suffix == ".toml"):
        sources = {str(path): _sha256(path)}  # read below, unless selected from before
    else:
        raise SpecError(
            f"lock={given!r}: not a lock file name pytest-cowenv knows (pylock.toml, "
            "pylock.NAME.toml or uv.lock)"
        )
    key = (*asked, *sorted(sources.items()))
    with _EXPORTS_LOCK:
        known = _SELECTED.get(key)
    if known is None:
        if not data:
            data = read_toml(path, f"lock={given!r}")
        known = _select(data, path, given, groups, extras, python, path.parent)
        known.sources.update(sources)
        known.shown = f"{given}{selection}"
        with _EXPORTS_LOCK:
            _SELECTED[key] = known
    return copy.deepcopy(known)  # the caller's to change


# What one content of a lock selects, per process: every test that asks for the lock makes
# its spec anew, and packaging's Pylock parses every file name of the lock each time.
_SELECTED: dict[tuple[Any, ...], Locked] = {}


def _parts(groups: Sequence[str], extras: Sequence[str]) -> list[str]:
    out = []
    if groups:
        out.append(f"group {', '.join(groups)}")
    if extras:
        out.append(f"extra {', '.join(extras)}")
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _select(
    data: dict[str, Any],
    path: Path,
    given: str,
    groups: Sequence[str],
    extras: Sequence[str],
    python: Optional[str],
    base: Path,
) -> Locked:
    from packaging.pylock import (
        PackageDirectory,
        PackageVcs,
        Pylock,
        PylockSelectError,
        PylockValidationError,
    )
    from packaging.utils import canonicalize_name

    try:
        lock = Pylock.from_dict(data)
    except PylockValidationError as exc:
        raise SpecError(f"lock={given!r}: {path} is not a valid lock file: {exc}") from None
    # Names the lock does not declare select nothing: say so (packaging < 26.4 is silent).
    lock_groups = [*(lock.dependency_groups or ()), *(lock.default_groups or ())]
    for what, asked, declared in (
        ("dependency groups", groups, lock_groups),
        ("extras", extras, lock.extras or ()),
    ):
        known = {canonicalize_name(name) for name in declared}
        unknown = [name for name in asked if canonicalize_name(name) not in known]
        if unknown:
            have = ", ".join(sorted(known)) or "none"
            raise SpecError(
                f"lock={given!r}: undeclared {what} {', '.join(unknown)}; {path.name} has: {have}"
            )
    environment, tags = target_of(python, f"lock={given!r}")
    where = f"python {python}" if python else "this interpreter"
    if lock.environments and not any(m.evaluate(environment) for m in lock.environments):
        covered = " or ".join(str(marker) for marker in lock.environments)
        here = (
            f"{environment.get('implementation_name')} {environment.get('python_full_version')} "
            f"on {environment.get('sys_platform')} {environment.get('platform_machine')}"
        )
        raise SpecError(
            f"lock={given!r}: {path.name} locks for {covered} only, not for {where} ({here})"
        )
    try:
        chosen = list(
            lock.select(
                environment=environment,  # type: ignore[arg-type]
                tags=tags,
                extras=extras or None,
                dependency_groups=groups or None,
            )
        )
    except PylockSelectError as exc:
        raise SpecError(f"lock={given!r}: nothing installable for {where}: {exc}") from None
    found = Locked()
    for package, dist in chosen:
        name = str(package.name)
        found.pins[name] = str(package.version) if package.version else ""
        if isinstance(dist, PackageDirectory):
            found.local.append(str((base / dist.path).resolve()))
            continue
        if isinstance(dist, PackageVcs):
            raise SpecError(
                f"lock={given!r}: {name} comes from version control, which pytest-cowenv "
                "cannot install with hash checks; lock a wheel or an sdist of it"
            )
        url = dist.url if dist.path is None else (base / dist.path).resolve().as_uri()
        usable = [f"--hash={a}:{dist.hashes[a]}" for a in _CHECKABLE if a in dist.hashes]
        if not usable:
            raise SpecError(
                f"lock={given!r}: {name} has no {'/'.join(_CHECKABLE)} hash to check "
                f"(only {', '.join(dist.hashes)})"
            )
        found.requirements.append(f"{name} @ {url} {' '.join(usable)}")
        if package.index is not None:
            found.indexed.append(str(canonicalize_name(name)))
    return found


_TARGET_PROBE = (
    "import json, sys; sys.path.insert(0, sys.argv[1]); "
    "from packaging import markers, tags; "
    "print(json.dumps([markers.default_environment(), [str(t) for t in tags.sys_tags()]]))"
)


def target_of(python: Optional[str], what: str) -> tuple[dict[str, str], list[Any]]:
    """Marker environment and wheel tags of the interpreter ``python`` (None: this one);
    ``what`` asks for it (the start of the error's line)."""
    from packaging import markers, tags

    if python is None:
        return {k: str(v) for k, v in markers.default_environment().items()}, list(tags.sys_tags())
    # The other interpreter asks our own packaging (pure Python) about itself.
    where = os.path.dirname(os.path.dirname(os.path.abspath(markers.__file__)))
    try:
        out = run_clean([python, "-I", "-c", _TARGET_PROBE, where], timeout=60)
        out.check_returncode()
        environment, names = json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise SpecError(
            f"{what}: cannot ask {python} for its platform and wheel tags ({exc})"
        ) from None
    found = [tag for name in names for tag in tags.parse_tag(name)]
    return environment, found


# uv export is a subprocess: one per distinct lock content and selection, per process.
_EXPORTS: dict[tuple[str, ...], dict[str, Any]] = {}
_EXPORTS_LOCK = threading.Lock()


def _export_uv_lock(
    path: Path, given: str, groups: Sequence[str], extras: Sequence[str]
) -> tuple[dict[str, Any], dict[str, str]]:
    uv = uv_binary()
    if uv is None:
        raise SpecError(f"lock={given!r}: uv.lock needs uv: pip install uv")
    pyproject = path.parent / "pyproject.toml"
    if not pyproject.is_file():
        raise SpecError(f"lock={given!r}: uv.lock needs its pyproject.toml beside it")
    sources = {str(path): _sha256(path), str(pyproject): _sha256(pyproject)}
    key = (uv, *sorted(sources.values()), "groups", *groups, "extras", *extras)
    with _EXPORTS_LOCK:
        if key in _EXPORTS:
            return _EXPORTS[key], sources
    cmd = [uv, "export", "--format", "pylock.toml", "--frozen", "--no-emit-project", "--quiet"]
    cmd += ["--project", str(path.parent), "--no-header"]
    if groups:
        cmd.append("--no-default-groups")
        cmd += [arg for group in groups for arg in ("--group", group)]
    cmd += [arg for extra in extras for arg in ("--extra", extra)]
    proc = run_clean(cmd, cwd=path.parent)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        why = " ".join(lines[-3:]) or f"exit code {proc.returncode}"
        raise SpecError(f"lock={given!r}: uv export of {path} failed: {why}")
    data = loads_toml(proc.stdout, f"lock={given!r}: uv export of {path}")
    with _EXPORTS_LOCK:
        _EXPORTS[key] = data
    return data, sources

"""What an environment contains: the spec, its normal form and its cache key."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

from ._groups import check_extras, extra_requirements, group_requirements
from ._install import (
    IndexOptions,
    installer_identity,
    project_filter,
    resolver_environment,
    uv_binary,
)
from ._reqfile import ReadFiles, file_item
from ._venv import canonical_name
from .errors import SpecError, shown

FORMAT_VERSION = 1
_LOCAL_SUFFIXES = (".whl", ".tar.gz", ".zip", ".tar.bz2")

# sysconfig fills its variables on first use, not thread-safely: a second thread can see them
# half-filled (SOABI None), and the pool thread computes keys too, so the same spec got two
# keys (two templates). Fill them now, while the import lock keeps other threads out.
sysconfig.get_config_vars()


class Interpreter(NamedTuple):
    """The identity of a base interpreter: what the cache key needs to know about it."""

    executable: str  # real path of the base executable
    implementation: str
    version: str
    abi: str
    platform: str

    def fingerprint(self) -> list[Any]:
        st = os.stat(self.executable)
        return [self.executable, st.st_size, st.st_mtime_ns]


RESOLUTIONS = ("highest", "lowest", "lowest-direct")
# Fields that only say where a spec came from or how it was written, never part of the key.
_DISPLAY_FIELDS = ("shown", "given")


@dataclass(frozen=True)
class TemplateSpec:
    """A normalised environment spec. Build it with :meth:`create`, which validates."""

    requirements: tuple[str, ...] = ()  # normalised PEP 508 strings (+ " --hash=..."), sorted
    local: tuple[str, ...] = ()  # absolute paths of local wheels, sdists and project dirs
    python: Optional[str] = None
    index: IndexOptions = field(default_factory=IndexOptions)
    pip: bool = False
    constraints: tuple[str, ...] = ()  # normalised, from -c files and --cowenv-constraint
    options: tuple[str, ...] = ()  # index options found in requirement files, in order
    sources: tuple[str, ...] = ()  # sha256 of every file read (requirement files, locks)
    project: Optional[str] = None  # the project among ``local``, installed with ``extras``
    extras: tuple[str, ...] = ()
    locked: bool = False  # ``requirements`` are a lock's exact set: installed without deps
    # Installed from a lock by their file's URL, though the lock says they come from an index:
    # installed as from an index (no direct_url.json), as `uv sync` and `pip install -r` do.
    from_index: tuple[str, ...] = ()
    resolution: Optional[str] = None  # uv only
    exclude_newer: Optional[str] = None  # uv only
    shown: tuple[str, ...] = ()  # what describe() shows: where the spec came from
    # ``requirements`` in the order they were first given (see install_order): how the spec
    # was written, not what it means, so specs that differ only in it are equal.
    given: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def create(
        cls,
        requirements: Any = (),
        *,
        python: Optional[str] = None,
        project: Union[str, os.PathLike[str], None] = None,
        pip: bool = False,
        index: Optional[IndexOptions] = None,
        base_dir: Union[str, os.PathLike[str], None] = None,
        constraint_files: Sequence[Union[str, os.PathLike[str]]] = (),
        groups: Sequence[str] = (),
        extras: Sequence[str] = (),
        lock: Union[str, os.PathLike[str], None] = None,
        pyproject_dir: Union[str, os.PathLike[str], None] = None,
        resolution: Optional[str] = None,
        exclude_newer: Optional[str] = None,
    ) -> TemplateSpec:
        """Validate and normalise. Relative paths are taken from ``base_dir`` (default: cwd);
        inside a requirement file, from that file's folder. ``groups`` and ``extras`` come
        from the ``pyproject.toml`` of ``project`` (else ``pyproject_dir``, else
        ``base_dir``), or select from ``lock`` when one is given."""
        if isinstance(requirements, (str, os.PathLike)):
            requirements = [requirements]
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        groups, extras = _names("groups", groups), _names("extras", extras)
        reqs: set[str] = set()
        local: set[str] = set()
        shown: list[str] = []
        direct: list[str] = []
        bare: dict[str, None] = {}  # in the order given
        files = ReadFiles()
        for item in requirements:
            if not isinstance(item, (str, os.PathLike)):
                raise SpecError(f"{item!r}: a requirement must be a string or a path")
            text = os.fspath(item).strip()
            named = file_item(text)
            if named is not None:
                files.read(named[0], named[1], base)
                shown.append(f"{named[0]} {_short(named[1])}")
            elif _looks_local(text):
                local.add(str(_existing(base / text, text)))
                direct.append(os.path.basename(text.rstrip("/\\")))
            else:
                bare.setdefault(normalise_requirement(text))
        reqs |= set(bare)
        for path in constraint_files:
            files.read("-c", os.fspath(path), base)
        from_files = [
            normalise_requirement(text) + "".join(f" --hash={h}" for h in hashes)
            for text, hashes in files.requirements
        ]
        reqs.update(from_files)
        for as_given, path in files.local:
            local.add(str(_existing(path, as_given)))
        constraints = {normalise_requirement(text) for text in files.constraints}
        direct += sorted(bare)
        project_dir = None
        if project is not None:
            project_dir = str(_existing(base / os.fspath(project), os.fspath(project)))
            local.add(project_dir)
        toml_dir = Path(project_dir or pyproject_dir or base)
        sources = dict(files.sources)
        locked = lock is not None
        from_index: tuple[str, ...] = ()
        if python is not None:
            if not isinstance(python, str) or not python.strip():
                raise SpecError(f"python={python!r}: give a version like '3.12' or a path")
            python = python.strip()
            find_interpreter(python)  # fail now, with the culprit named, not at build time
        given = [*bare, *from_files]
        if locked:
            from ._lock import locked_set

            found = locked_set(
                base / os.fspath(lock),  # type: ignore[arg-type]
                os.fspath(lock),  # type: ignore[arg-type]
                groups,
                extras,
                None if python is None else find_interpreter(python).executable,
            )
            _check_against_lock(reqs, found.pins, found.shown)
            reqs = set(found.requirements)
            from_index = tuple(sorted(found.indexed))
            local |= set(found.local)
            sources.update(found.sources)
            shown.insert(0, found.shown)
        else:
            if groups:
                given += [normalise_requirement(r) for r in group_requirements(toml_dir, groups)]
                reqs.update(given)
                shown.append(f"pyproject.toml [group {', '.join(groups)}]")
            if extras and project_dir is None:
                given += [normalise_requirement(r) for r in extra_requirements(toml_dir, extras)]
                reqs.update(given)
                shown.append(f"pyproject.toml [extra {', '.join(extras)}]")
            elif extras:
                check_extras(toml_dir, extras)
        if project_dir is not None:
            name = os.path.basename(project_dir)
            direct.append(f"{name}[{','.join(extras)}]" if extras and not locked else name)
        resolution, exclude_newer = _uv_options(resolution, exclude_newer, locked)
        return cls(
            requirements=tuple(sorted(reqs)),
            local=tuple(sorted(local)),
            python=python,
            index=index or IndexOptions(),
            pip=bool(pip),
            constraints=tuple(sorted(constraints)),
            options=tuple(dict.fromkeys(files.options)),
            sources=tuple(sorted(set(sources.values()))),
            project=project_dir,
            extras=extras if project_dir is not None and not locked else (),
            locked=locked,
            from_index=from_index,
            resolution=resolution,
            exclude_newer=exclude_newer,
            shown=tuple([*shown, *direct]),
            given=tuple(r for r in dict.fromkeys(given) if r in reqs),
        )

    def install_order(self) -> tuple[str, ...]:
        """``requirements`` as the installer gets them: in the order they were given (marker,
        then requirement files, groups and extras), as the user's own ``uv pip install`` would
        get them. uv decides the direct requirements in command-line order, and a decision
        waits for that project's index page and metadata: the order, not only the set, decides
        when it asks the index for the dependencies of the later ones. The key is of the sorted
        set; a requirement not among ``given`` (a spec made without create) comes last."""
        wanted, known = set(self.requirements), set(self.given)
        return (
            *(r for r in self.given if r in wanted),
            *(r for r in self.requirements if r not in known),
        )

    def describe(self) -> str:
        """Short human form, culprit first: ``-r requirements/test.txt, rich (python 3.12)``."""
        items = [shown(item) for item in self.shown] or ["(empty)"]  # stays one line
        extra = f" (python {self.python})" if self.python else ""
        return ", ".join(items) + extra + (" +pip" if self.pip else "")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["index"] = self.index._asdict()
        return data

    def local_hashes(self) -> dict[str, str]:
        """The :func:`content_hash` of each of ``local``, by path."""
        return {p: content_hash(Path(p)) for p in self.local}

    def key(self, local_hashes: Optional[dict[str, str]] = None) -> str:
        """The content hash that names this spec's template. ``local_hashes``: what
        :meth:`local_hashes` returned, if the caller has it already."""
        interp = find_interpreter(self.python)
        hashes = self.local_hashes() if local_hashes is None else local_hashes
        spec = {k: v for k, v in self.as_dict().items() if k not in _DISPLAY_FIELDS}
        payload = {
            "format": FORMAT_VERSION,
            "spec": spec,
            "local": [hashes[p] for p in self.local],
            "python": interp._asdict(),
            "installer": installer_identity(),
            "resolver_env": resolver_environment(),
        }
        if self.resolution == "lowest-direct" and self.local:
            # The projects' own requirements are installed as direct ones (see _plan), which
            # templates built before did not: those must not be taken for these.
            payload["direct"] = "declared"
        raw = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:24]


def _names(what: str, names: Any) -> tuple[str, ...]:
    if isinstance(names, str):
        names = (names,)
    if not isinstance(names, (tuple, list)) or not all(
        isinstance(n, str) and n.strip() for n in names
    ):
        raise SpecError(f"{what}={names!r}: give a tuple of names, e.g. {what}=('test',)")
    return tuple(dict.fromkeys(canonical_name(n) for n in names))


def _short(path: str) -> str:
    """An absolute path (an ini's, made absolute) as seen from the current directory, when
    it lies below it; any other path as given."""
    if os.path.isabs(path):
        rel = os.path.relpath(path)
        if not rel.startswith(os.pardir):
            return rel
    return path


def _uv_options(
    resolution: Optional[str], exclude_newer: Optional[str], locked: bool
) -> tuple[Optional[str], Optional[str]]:
    for name, value in (("resolution", resolution), ("exclude_newer", exclude_newer)):
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise SpecError(f"{name}={value!r}: give a string")
        if locked:
            raise SpecError(f"{name}={value!r} has no meaning with lock=: a lock is resolved")
        if uv_binary() is None:
            raise SpecError(
                f"{name}={value!r} needs uv (pip cannot choose versions that way): pip install uv"
            )
    if resolution is not None and resolution not in RESOLUTIONS:
        raise SpecError(f"resolution={resolution!r} is not one of {', '.join(RESOLUTIONS)}")
    return resolution, exclude_newer.strip() if exclude_newer else None


def _check_against_lock(reqs: set[str], pins: dict[str, str], lock: str) -> None:
    """A bare requirement beside lock= must agree with the locked version (it then adds
    nothing); anything else contradicts the lock."""
    for text in sorted(reqs):
        from packaging.requirements import Requirement

        req = Requirement(text.split(" --hash=")[0])
        name = canonical_name(req.name)
        if name not in pins:
            raise SpecError(f"{text}: not in {lock}; add it to the lock, not beside lock=")
        if pins[name] and not req.specifier.contains(pins[name], prereleases=True):
            raise SpecError(f"{text}: contradicts {lock}, which pins {name} {pins[name]}")


def _looks_local(text: str) -> bool:
    return (
        text.startswith((".", "/", "~"))
        or os.sep in text
        or (os.altsep is not None and os.altsep in text)
        or text.endswith(_LOCAL_SUFFIXES)
    ) and "@" not in text.split("/")[0]


def _existing(path: Path, as_given: str) -> Path:
    path = path.expanduser().resolve()
    if not path.exists():
        raise SpecError(
            f"{shown(as_given)}: no such local wheel, sdist or project directory ({shown(path)})"
        )
    if path.is_dir() and not any((path / n).exists() for n in ("pyproject.toml", "setup.py")):
        raise SpecError(
            f"{shown(as_given)}: {shown(path)} is a directory without pyproject.toml or setup.py"
        )
    return path


# A requirement that is a project name and nothing else (PEP 508's identifier).
_BARE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


def normalise_requirement(text: str) -> str:
    """One spelling per meaning: canonical name, sorted extras, normalised specifiers."""
    if _BARE_NAME.fullmatch(text):  # most requirements: no need to import packaging
        return canonical_name(text)
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        why = (str(exc).splitlines() or ["?"])[0]  # packaging adds lines pointing at the error
        raise SpecError(f"{text!r}: invalid requirement ({why})") from None
    out: str = canonical_name(req.name)
    if req.extras:
        out += "[" + ",".join(sorted(canonical_name(e) for e in req.extras)) + "]"
    if req.url:
        out += f" @ {req.url}"
    elif req.specifier:
        out += ",".join(sorted(str(s) for s in req.specifier))
    if req.marker:
        out += f"; {req.marker}"
    return out


def content_hash(path: Path) -> str:
    """Hash a local file, or a project directory's sources as its build sees them (build
    outputs, caches and tool state excluded: see ``project_filter``)."""
    h = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    skips = project_filter(path)
    for dirpath, dirnames, filenames in os.walk(path):
        rel_dir = os.path.relpath(dirpath, path)
        dirnames[:] = sorted(d for d in dirnames if not skips(rel_dir, d))
        for name in sorted(filenames):
            if skips(rel_dir, name):
                continue
            full = os.path.join(dirpath, name)
            h.update(os.path.relpath(full, path).encode() + b"\0")
            if os.path.islink(full):
                h.update(b"->" + os.readlink(full).encode())
            else:
                with open(full, "rb") as f:
                    h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


_PROBE = (
    "import json, os, sys, sysconfig; "
    "print(json.dumps([os.path.realpath(getattr(sys, '_base_executable', sys.executable)), "
    "sys.implementation.name, '.'.join(map(str, sys.version_info[:3])), "
    "sysconfig.get_config_var('SOABI') or '', sysconfig.get_platform()]))"
)


@cache
def find_interpreter(python: Optional[str]) -> Interpreter:
    """Find the base interpreter for ``python`` (None: the running one) or raise SpecError."""
    if python is None:
        base = getattr(sys, "_base_executable", sys.executable)
        return Interpreter(
            os.path.realpath(base),
            sys.implementation.name,
            ".".join(map(str, sys.version_info[:3])),
            sysconfig.get_config_var("SOABI") or "",
            sysconfig.get_platform(),
        )
    exe = python if os.path.sep in python else _discover(python)
    try:
        out = subprocess.run(
            [exe, "-c", _PROBE],
            capture_output=True,
            text=True,
            check=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        values = json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        why = " ".join(str(exc).split())
        raise SpecError(f"python={python!r}: {shown(exe)} does not run ({why})") from None
    return Interpreter(*values)


def _discover(request: str) -> str:
    from virtualenv.discovery.builtin import get_interpreter

    found = get_interpreter(request, [])
    if found is None:
        raise SpecError(
            f"python={request!r}: no such interpreter found on this machine "
            "(give a version such as '3.12' that is installed, or a path)"
        )
    return str(found.system_executable or found.executable)

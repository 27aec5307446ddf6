"""What an environment contains: the spec, its normal form and its cache key."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import sysconfig
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Optional, Union

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from ._install import IndexOptions, installer_identity, project_filter
from .errors import SpecError

FORMAT_VERSION = 1
_LOCAL_SUFFIXES = (".whl", ".tar.gz", ".zip", ".tar.bz2")

# sysconfig fills its variables on first use, not thread-safely: a second thread can see them
# half-filled (SOABI None), and the pool thread computes keys too, so the same spec got two
# keys (two templates). Fill them now, while the import lock keeps other threads out.
sysconfig.get_config_vars()


@dataclass(frozen=True)
class Interpreter:
    """The identity of a base interpreter: what the cache key needs to know about it."""

    executable: str  # real path of the base executable
    implementation: str
    version: str
    abi: str
    platform: str

    def fingerprint(self) -> list[Any]:
        st = os.stat(self.executable)
        return [self.executable, st.st_size, st.st_mtime_ns]


@dataclass(frozen=True)
class TemplateSpec:
    """A normalised environment spec. Build it with :meth:`create`, which validates."""

    requirements: tuple[str, ...] = ()  # normalised PEP 508 strings, sorted
    local: tuple[str, ...] = ()  # absolute paths of local wheels, sdists and project dirs
    python: Optional[str] = None
    index: IndexOptions = field(default_factory=IndexOptions)
    pip: bool = False

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
    ) -> TemplateSpec:
        """Validate and normalise. Relative paths are taken from ``base_dir`` (default: cwd)."""
        if isinstance(requirements, (str, os.PathLike)):
            requirements = [requirements]
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        reqs: set[str] = set()
        local: set[str] = set()
        for item in requirements:
            if not isinstance(item, (str, os.PathLike)):
                raise SpecError(f"{item!r}: a requirement must be a string or a path")
            text = os.fspath(item).strip()
            if _looks_local(text):
                local.add(str(_existing(base / text, text)))
            else:
                reqs.add(normalise_requirement(text))
        if project is not None:
            local.add(str(_existing(base / os.fspath(project), os.fspath(project))))
        if python is not None:
            if not isinstance(python, str) or not python.strip():
                raise SpecError(f"python={python!r}: give a version like '3.12' or a path")
            python = python.strip()
            find_interpreter(python)  # fail now, with the culprit named, not at build time
        return cls(
            tuple(sorted(reqs)), tuple(sorted(local)), python, index or IndexOptions(), bool(pip)
        )

    def describe(self) -> str:
        """Short human form, culprit first: ``requests>=2.31, rich (python 3.12)``."""
        items = [*self.requirements, *(os.path.basename(p) for p in self.local)] or ["(empty)"]
        extra = f" (python {self.python})" if self.python else ""
        return ", ".join(items) + extra + (" +pip" if self.pip else "")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["index"] = asdict(self.index)
        return data

    def key(self) -> str:
        """The content hash that names this spec's template."""
        interp = find_interpreter(self.python)
        payload = {
            "format": FORMAT_VERSION,
            "spec": self.as_dict(),
            "local": [content_hash(Path(p)) for p in self.local],
            "python": asdict(interp),
            "installer": installer_identity(),
        }
        raw = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(raw).hexdigest()[:24]


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
        raise SpecError(f"{as_given}: no such local wheel, sdist or project directory ({path})")
    if path.is_dir() and not any((path / n).exists() for n in ("pyproject.toml", "setup.py")):
        raise SpecError(f"{as_given}: {path} is a directory without pyproject.toml or setup.py")
    return path


def normalise_requirement(text: str) -> str:
    """One spelling per meaning: canonical name, sorted extras, normalised specifiers."""
    try:
        req = Requirement(text)
    except InvalidRequirement as exc:
        raise SpecError(f"{text!r}: invalid requirement ({exc})") from None
    out: str = canonicalize_name(req.name)
    if req.extras:
        out += "[" + ",".join(sorted(canonicalize_name(e) for e in req.extras)) + "]"
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
        raise SpecError(f"python={python!r}: {exe} does not run ({exc})") from None
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

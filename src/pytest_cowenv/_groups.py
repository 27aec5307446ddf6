"""PEP 735 dependency groups and a project's extras, read from its ``pyproject.toml``.

Only the tables a spec reads matter to it: callers key on the requirements found here, so
an unrelated edit of ``pyproject.toml`` (a description, a tool's settings) keeps the key.
Group includes are resolved by ``packaging.dependency_groups`` (packaging >= 26.1), never
by hand. Leaf module: imports only ``packaging`` and ``errors``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from ._venv import canonical_name as canonicalize_name
from .errors import SpecError


def _tomllib() -> ModuleType:
    """The TOML parser, imported when a spec first reads TOML: most specs read none, and a
    cold spec's first test waits for the imports of every module its build uses."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python < 3.11 (tomli is pytest's own dependency there)
        import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]
    return tomllib


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The parsed TOML file ``path``, or a SpecError that says where it does not parse."""
    tomllib = _tomllib()
    try:
        with open(path, "rb") as f:
            data: dict[str, Any] = tomllib.load(f)
    except FileNotFoundError:
        raise SpecError(f"{what}: no such file ({path})") from None
    except OSError as exc:
        raise SpecError(f"{what}: cannot read {path} ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{what}: {path} is not valid TOML ({exc})") from None
    return data


def loads_toml(text: str, what: str) -> dict[str, Any]:
    """Parsed TOML text, or a SpecError that says where it does not parse."""
    tomllib = _tomllib()
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{what}: not valid TOML ({exc})") from None
    return data


def pyproject_of(directory: Path, what: str) -> tuple[Path, dict[str, Any]]:
    path = directory / "pyproject.toml"
    return path, read_toml(path, what)


def group_requirements(directory: Path, groups: Sequence[str]) -> list[str]:
    """The requirements of ``groups`` (includes followed) in ``directory/pyproject.toml``."""
    what = f"groups={tuple(groups)!r}"
    path, data = pyproject_of(directory, what)
    table = data.get("dependency-groups")
    if not isinstance(table, dict) or not table:
        raise SpecError(f"{what}: {path} has no [dependency-groups] table")
    from packaging.dependency_groups import DependencyGroupResolver

    known = {canonicalize_name(name): name for name in table}
    for group in groups:
        if canonicalize_name(group) not in known:
            raise SpecError(
                f"groups: {group!r} is not a dependency group of {path}; "
                f"it has: {', '.join(sorted(known.values()))}"
            )
    try:
        resolver = DependencyGroupResolver(table)
        return [str(r) for group in groups for r in resolver.resolve(group)]
    except Exception as exc:  # packaging reports with ExceptionGroup / ValueError
        inner = getattr(exc, "exceptions", None) or [exc]
        raise SpecError(
            f"{what}: [dependency-groups] of {path}: {'; '.join(str(e) for e in inner)}"
        ) from None


def declared_extras(directory: Path) -> tuple[Path, Any, bool]:
    """``(pyproject path, [project.optional-dependencies] or None, dynamic?)``."""
    path, data = pyproject_of(directory, "extras")
    project = data.get("project")
    if not isinstance(project, dict):
        return path, None, False
    dynamic = "optional-dependencies" in (project.get("dynamic") or ())
    return path, project.get("optional-dependencies"), dynamic


def check_extras(directory: Path, extras: Sequence[str]) -> None:
    """Refuse an extra the project does not declare (when it declares them statically)."""
    path, table, dynamic = declared_extras(directory)
    if dynamic:
        return  # only its build knows them
    known = {canonicalize_name(name): name for name in (table or {})}
    for extra in extras:
        if canonicalize_name(extra) not in known:
            have = ", ".join(sorted(known.values())) or "none"
            raise SpecError(f"extras: {extra!r} is not an extra of {path}; it has: {have}")


def extra_requirements(directory: Path, extras: Sequence[str]) -> list[str]:
    """The requirements of ``extras``, read statically, without installing the project
    (its own extras named in them, ``name[other]``, followed)."""
    path, table, dynamic = declared_extras(directory)
    if dynamic:
        raise SpecError(
            f"extras: {path} declares its extras dynamically; add project=True so that "
            "its build says what they need"
        )
    check_extras(directory, extras)
    name = canonicalize_name(str(_project_name(path)))
    by_name = {canonicalize_name(k): v for k, v in (table or {}).items()}
    out: list[str] = []
    seen: set[str] = set()
    todo = [canonicalize_name(e) for e in extras]
    from packaging.requirements import InvalidRequirement, Requirement

    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        seen.add(extra)
        for text in by_name.get(extra, ()):
            try:
                req = Requirement(text)
            except InvalidRequirement as exc:
                raise SpecError(f"extras: {path}: {text!r} is invalid ({exc})") from None
            if canonicalize_name(req.name) == name:
                todo += [canonicalize_name(e) for e in req.extras]
            else:
                out.append(text)
    return out


def _project_name(path: Path) -> str:
    data = read_toml(path, "extras")
    return str(data.get("project", {}).get("name", ""))

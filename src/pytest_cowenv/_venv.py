"""Where things are in a virtual environment, read from its files (no subprocess).

A leaf: :mod:`.env` (a clone) and :mod:`.template` (a build) both use it.
"""

from __future__ import annotations

import re
import sys
import zipfile
from pathlib import Path

from .errors import TemplateBuildError


def site_packages(env: Path) -> Path:
    """The ``site-packages`` directory of the environment at ``env``."""
    if sys.platform == "win32":  # pragma: no cover - Windows
        return env / "Lib" / "site-packages"
    found = sorted((env / "lib").glob("python*/site-packages"))
    if not found:
        raise TemplateBuildError(f"{env}: no lib/python*/site-packages")
    return found[0]


def canonical_name(name: str) -> str:
    """A project's name in its normal form (PEP 503: runs of ``-_.`` as one ``-``, lower
    case), without importing ``packaging`` (slow to import) for it."""
    return _SEPARATORS.sub("-", name).lower()


_SEPARATORS = re.compile(r"[-_.]+")


def installed_distributions(env: Path) -> dict[str, str]:
    """Canonical name → version, read from the ``.dist-info`` folder names (no subprocess)."""
    found: dict[str, str] = {}
    for info in site_packages(env).glob("*.dist-info"):
        name, _, version = info.name[: -len(".dist-info")].partition("-")
        found[canonical_name(name)] = version
    return dict(sorted(found.items()))


def wheel_requires(wheel: Path) -> list[str]:
    """The ``Requires-Dist`` values of the wheel at ``wheel``: its own, in the top-level
    ``.dist-info`` (a wheel may carry vendored ones deeper down). Raises ``OSError`` or
    ``ValueError`` (``zipfile.BadZipFile`` is one) when it cannot be read."""
    with zipfile.ZipFile(wheel) as archive:
        names = [
            n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
        ]
        if not names:
            raise ValueError(f"{wheel.name} has no .dist-info/METADATA")
        text = archive.read(names[0]).decode("utf-8", "replace")
    from email.parser import HeaderParser  # a new template's first test need not import it

    return HeaderParser().parsestr(text).get_all("Requires-Dist") or []

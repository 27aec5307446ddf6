"""Wheels of distributions installed in the running interpreter, for offline template builds.

Tests of ``runpytest()`` need a real pytest inside the environment; repacking the one that
runs the suite (and its dependencies) needs no network and no build.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def repack(name: str, directory: Path) -> Path:
    """Write a wheel of the installed distribution ``name`` into ``directory``."""
    dist = metadata.distribution(name)
    info_dir = next(str(f).split("/")[0] for f in dist.files or () if ".dist-info/" in str(f))
    stem = info_dir[: -len(".dist-info")]
    out = directory / f"{stem}-py3-none-any.whl"
    records = []
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in dist.files or ():
            rel = str(file)
            if (
                rel.startswith("..")
                or "__pycache__" in rel
                or rel.endswith(("RECORD", "INSTALLER"))
            ):
                continue  # scripts are regenerated from entry_points.txt by the installer
            if rel.endswith("direct_url.json"):
                continue
            data = Path(file.locate()).read_bytes()
            zf.writestr(rel, data)
            records.append(f"{rel},{_hash(data)},{len(data)}")
        records.append(f"{info_dir}/RECORD,,")
        zf.writestr(f"{info_dir}/RECORD", "\n".join(records) + "\n")
    return out


def repack_with_dependencies(name: str, directory: Path) -> Path:
    """Wheels of ``name`` and everything it needs (unconditional requirements only)."""
    directory.mkdir(parents=True, exist_ok=True)
    todo, seen = [name], set()
    while todo:
        current = canonicalize_name(todo.pop())
        if current in seen:
            continue
        seen.add(current)
        repack(current, directory)
        for text in metadata.requires(current) or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return directory

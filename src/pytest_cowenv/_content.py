"""Templates proven by content: hashes of what the installers wrote (their RECORD files) and of
what we wrote ourselves. A leaf module: the build records, ``verify`` checks.

RECORD (PEP 376 / PEP 627) lists ``path,algorithm=urlsafe-base64-digest,size`` for every file
a distribution installed, paths relative to ``site-packages``. Files written or changed after
the installer (pycs, launchers, ``pyvenv.cfg``, relocated scripts, the RECORD files
themselves) are hashed at build time instead. These prove integrity (bit rot, a torn restore,
an edit), not authenticity: whoever can write the cache can also rewrite a RECORD.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import os
from pathlib import Path
from typing import Any, Optional

from .clone import Tree

HASH = "sha256"  # for the files we record ourselves
_CHUNK = 1 << 20


def digest_of(path: str, algorithm: str = HASH) -> str:
    """``algorithm=digest`` of the file at ``path``, in RECORD's form (urlsafe base64, no
    padding)."""
    h = hashlib.new(algorithm)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return f"{algorithm}={base64.urlsafe_b64encode(h.digest()).rstrip(b'=').decode()}"


def record_hashes(env: Path, site: Path) -> dict[str, str]:
    """What the installed distributions' RECORD files say: path relative to ``env`` (with a
    leading separator, as in a :class:`Tree`) → ``algorithm=digest``. Entries without a hash
    (the RECORD itself), with an algorithm hashlib lacks, or outside ``env`` are left out."""
    return {rel: digest for rel, (digest, _size) in record_claims(env, site).items()}


def record_claims(env: Path, site: Path) -> dict[str, tuple[str, Optional[int]]]:
    """:func:`record_hashes` with the size each RECORD line gives (None if none)."""
    found: dict[str, tuple[str, Optional[int]]] = {}
    root = os.path.realpath(env)
    for record in sorted(site.glob("*.dist-info/RECORD")):
        try:
            with open(record, encoding="utf-8", newline="") as f:
                rows = list(csv.reader(f))
        except (OSError, UnicodeDecodeError, csv.Error):
            continue  # verified as a file of our own: see own_hashes
        for row in rows:
            if len(row) < 2 or "=" not in row[1] or os.path.isabs(row[0]):
                continue
            algorithm = row[1].partition("=")[0]
            if algorithm not in hashlib.algorithms_available:
                continue
            full = os.path.normpath(os.path.join(site, row[0]))
            if full != root and full.startswith(root + os.sep):
                size = int(row[2]) if len(row) > 2 and row[2].isdigit() else None
                found[full[len(root) :]] = (row[1], size)
    return found


def own_hashes(tree: Tree, site: Path) -> dict[str, str]:
    """At build time: the hash of every file of ``tree`` that no RECORD vouches for as it is
    now. Files in ``site`` that a RECORD lists, with the size it gives, are the installer's
    and taken at its word (``verify`` checks them against it); any other file was written or
    may have been changed after the installer (pycs, launchers, relocated scripts,
    ``pyvenv.cfg``, ...) and is hashed."""
    claims = record_claims(Path(tree.root), site)
    inside = os.path.realpath(site)[len(os.path.realpath(tree.root)) :] + os.sep
    own = {}
    for rel, _mode, _atime, _mtime, size in tree.files:
        claimed = claims.get(rel)
        if claimed is None or claimed[1] != size or not rel.startswith(inside):
            own[rel] = digest_of(tree.root + rel)
    return own


def problems(tree: Tree, meta: dict[str, Any], site: Path) -> list[str]:
    """What is wrong with the template ``tree`` against its metadata, by content; [] if
    nothing. Names, kinds, modes, sizes and symlink targets must be the manifest's (not
    mtimes, which a tarball may round); every file must hash as a RECORD or the build says."""
    own = meta.get("hashes")
    if not isinstance(own, dict):
        return ["no content hashes in its metadata (built by an older pytest-cowenv)"]
    manifest = meta.get("manifest") or {}
    found: list[str] = []
    expected_files = {e[0]: (e[1], e[3]) for e in manifest.get("files", ())}
    expected_links = {e[0]: e[1] for e in manifest.get("links", ())}
    expected_dirs = {e[0]: e[1] for e in manifest.get("dirs", ())}
    files = {rel: (mode, size) for rel, mode, _at, _mt, size in tree.files}
    links = {rel: target for rel, target, _at, _mt in tree.links}
    dirs = {e[0]: e[1] for e in tree.dirs}
    for kind, want, have in (
        ("file", expected_files, files),
        ("symlink", expected_links, links),
        ("directory", expected_dirs, dirs),
    ):
        found += [f"{rel[1:]}: {kind} missing" for rel in sorted(want.keys() - have.keys())]
        found += [f"{rel[1:]}: unexpected {kind}" for rel in sorted(have.keys() - want.keys())]
        for rel in sorted(want.keys() & have.keys()):
            if want[rel] != have[rel]:
                found.append(f"{rel[1:]}: {kind} changed ({_what(kind)})")
    records = record_hashes(Path(tree.root), site)
    for rel in sorted(files.keys() & expected_files.keys()):
        claimed = own.get(rel) or records.get(rel)
        if claimed is None:
            found.append(f"{rel[1:]}: no hash vouches for it")
            continue
        try:
            actual = digest_of(tree.root + rel, claimed.partition("=")[0])
        except OSError as exc:
            found.append(f"{rel[1:]}: unreadable ({exc.strerror})")
            continue
        if actual != claimed:
            source = "the hash recorded at build" if rel in own else "its RECORD"
            found.append(f"{rel[1:]}: content differs from {source}")
    return found


def _what(kind: str) -> str:
    return {"file": "mode or size", "symlink": "target", "directory": "mode"}[kind]

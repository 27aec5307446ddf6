"""Prove templates from their content: ``pytest-cowenv verify`` (hashes: ``_content``).

A template's manifest pins each file's inode and ctime, which nothing in user space can set
back, but only on the filesystem it was built on: a cache restored from a tarball (a CI cache)
has new ones everywhere, and is rebuilt by the next run unless it is verified first. Verifying
checks every file by content instead: what an installer wrote against its distribution's
``RECORD`` (PEP 376 / PEP 627: ``path,algorithm=urlsafe-base64-digest,size``), and what we
wrote or changed ourselves (pycs, launchers, ``pyvenv.cfg``, relocated scripts, the
``RECORD`` files) against the hashes recorded at build time. A template that passes gets a
fresh manifest; one that fails is marked for rebuild (its metadata goes) and rebuilt.

Pytest-free.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ._atomic import BuildLock, write_atomically
from ._content import problems
from ._install import IndexOptions
from ._venv import site_packages
from .clone import Tree, remove_tree, walk_tree
from .errors import CacheDirError, CowEnvError
from .maintenance import current_generation, read_meta, template_keys
from .spec import TemplateSpec
from .store import Layout
from .template import TemplateCache


@dataclass
class Verdict:
    """What ``verify`` found for one template, and what it did."""

    key: str
    path: str
    describe: str
    # "ok" | "re-trusted" (content proven, manifest renewed) | "rebuilt" | "damaged"
    # (marked for rebuild; the rebuild failed or was not asked for) | "skipped"
    state: str
    problems: list[str] = field(default_factory=list)
    note: str = ""


def check_tree(path: Path, meta: dict[str, Any]) -> tuple[Optional[Tree], list[str]]:
    """Walk ``path`` and prove it against ``meta``: (the walk, problems)."""
    try:
        tree = walk_tree(path)
        return tree, problems(tree, meta, site_packages(path))
    except (OSError, ValueError, CowEnvError) as exc:
        return None, [f"cannot read the template: {exc}"]


def spec_of(meta: dict[str, Any]) -> TemplateSpec:
    """The spec a template was built from, as its metadata records it."""
    data = meta["spec"]
    index = data.get("index") or {}
    return TemplateSpec(
        requirements=tuple(data.get("requirements", ())),
        local=tuple(data.get("local", ())),
        python=data.get("python"),
        index=IndexOptions(
            tuple(index.get("find_links", ())), index.get("index_url"), bool(index.get("offline"))
        ),
        pip=bool(data.get("pip")),
    )


def verify_cache(
    layout: Layout,
    keys: Optional[list[str]] = None,
    *,
    rebuild: bool = True,
    lock_timeout: float = 2.0,
) -> list[Verdict]:
    """Prove every complete template (or those of ``keys``) by content, under its build lock.

    One that passes and whose inodes or ctimes changed (a restored cache) gets a fresh
    manifest; one that fails loses its metadata (so no run trusts it) and, with ``rebuild``,
    is built again from its spec.
    """
    if keys is None:
        keys = template_keys(layout)
    verdicts = []
    for key in keys:
        gen = current_generation(layout, key)  # older ones are on their way out
        if gen is None:
            continue  # not a complete template: `clean` removes such leftovers
        path, meta_path = layout.template(key, gen), layout.meta(key, gen)
        meta = read_meta(layout, key, gen)
        if meta is None:
            continue
        verdict = Verdict(key, str(path), str(meta.get("describe", "?")), "ok")
        verdicts.append(verdict)
        lock = BuildLock(layout.lock(key))
        try:
            held = lock.acquire(lock_timeout)
        except CacheDirError as exc:  # a link where the lock should be
            verdict.state, verdict.note = "skipped", str(exc)
            continue
        if not held:
            verdict.state, verdict.note = "skipped", "being built by another process"
            continue
        try:
            meta = read_meta(layout, key, gen)  # again, under the lock
            if meta is None:
                verdict.state, verdict.note = "skipped", "removed meanwhile"
                continue
            tree, verdict.problems = check_tree(path, meta)
            if tree is not None and not verdict.problems:
                listing = tree.listing()
                if listing != meta.get("manifest"):
                    meta["manifest"] = listing
                    write_atomically(meta_path, json.dumps(meta, indent=1))
                    verdict.state = "re-trusted"
                    verdict.note = "content proven; inodes or ctimes had changed"
                continue
            remove_tree(meta_path, root=layout.root)  # marked for rebuild: no run clones it
            verdict.state = "damaged"
        finally:
            lock.release()
        if rebuild:
            _rebuild(layout, meta, verdict)
    return verdicts


def _rebuild(layout: Layout, meta: dict[str, Any], verdict: Verdict) -> None:
    try:
        spec = spec_of(meta)
        if spec.key() != verdict.key:
            verdict.note = "its spec has another key now (a local project changed?): not rebuilt"
            return
        TemplateCache(layout).get(spec)
    except (CowEnvError, OSError, KeyError, TypeError) as exc:
        first = (str(exc).splitlines() or [repr(exc)])[0]
        verdict.note = f"rebuild failed: {first}; the next run that needs it builds it"
        return
    verdict.state = "rebuilt"


def verify_store(layout: Layout) -> dict[str, int]:
    """Check every entry of the bytecode store; drop those that fail (see _bytecode)."""
    from ._bytecode import store_secret, unseal

    checked = dropped = 0
    if not layout.bytecode.is_dir():
        return {"checked": 0, "dropped": 0}
    secret = store_secret(str(layout.bytecode))
    for entry in sorted(layout.bytecode.glob("*/*/*")):
        if entry.is_symlink() or not entry.is_file() or entry.name.endswith(".tmp"):
            continue
        checked += 1
        try:
            data = entry.read_bytes()
        except OSError:
            data = b""
        try:
            good = unseal(secret, entry.parent.name + entry.name, data) is not None
        except ValueError:  # not named by a hex digest: not an entry we wrote
            good = False
        if not good:
            with contextlib.suppress(OSError):
                remove_tree(entry, root=layout.root)
                dropped += 1
    return {"checked": checked, "dropped": dropped}

"""Byte-compile a template's ``site-packages``, reusing bytecode compiled for earlier templates.

Run by the template's own interpreter, so that the bytecode fits it::

    python -I -S _bytecode.py SITE_PACKAGES STORE

Standard library only (Python 3.9+): the template has nothing else. Prints one JSON line of
counts. Each ``.pyc`` is *checked-hash* (PEP 552): valid in a clone whatever its mtimes, and
still correct when a test edits or reinstalls a module in its clone (an unchecked pyc would
keep serving the old code). Compiling is most of a template's build time, and most templates
share most of their sources, so compiled files are kept in ``STORE`` by source hash.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import marshal
import os
import sys

# Flags word of a checked hash-based pyc (PEP 552): bit 0 "hash based", bit 1 "check source".
_CHECKED_HASH = 0b11
# Below this many files to compile, a process pool costs more than it saves.
_POOL_MIN = 64


def sources(site: str) -> list[tuple[str, str]]:
    """(path, path relative to ``site``) of every ``.py`` file, outside ``__pycache__``."""
    found = []
    for dirpath, dirnames, filenames in os.walk(site):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                found.append((path, os.path.relpath(path, site)))
    return found


def pyc_bytes(data: bytes, rel: str) -> bytes:
    """The pyc for source ``data``, or b"" if it does not compile (a py2 leftover, a template).

    The code's file name is the path relative to site-packages: importing fixes it up to the
    real path, and the bytes stay the same whatever directory the template was built in.
    """
    try:
        code = compile(data, rel, "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return b""
    header = importlib.util.MAGIC_NUMBER + _CHECKED_HASH.to_bytes(4, "little")
    return header + importlib.util.source_hash(data) + marshal.dumps(code)


def write_new(path: str, data: bytes) -> None:
    """Write ``path`` all at once: other builds read the store while this one writes it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def place(src: str, pyc: bytes) -> None:
    """Write ``src``'s pyc beside it: directly, since no one reads a template being built."""
    if pyc:
        target = importlib.util.cache_from_source(src)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(pyc)


def compile_and_keep(job: tuple[str, str, str]) -> bool:
    """Compile one source, place its pyc and keep a copy in the store; True if it compiled."""
    src, rel, stored = job
    with open(src, "rb") as f:
        pyc = pyc_bytes(f.read(), rel)
    place(src, pyc)
    os.makedirs(os.path.dirname(stored), exist_ok=True)
    write_new(stored, pyc)  # b"" remembers "does not compile"
    return bool(pyc)


def main(site: str, store_root: str) -> dict[str, int]:
    magic = importlib.util.MAGIC_NUMBER
    store = os.path.join(store_root, f"{sys.implementation.cache_tag}-{magic.hex()}")
    header = magic + _CHECKED_HASH.to_bytes(4, "little")
    reused = failed = 0
    todo = []
    for src, rel in sources(site):
        with open(src, "rb") as f:
            data = f.read()
        digest = hashlib.sha256(data).hexdigest()
        stored = os.path.join(store, digest[:2], digest[2:])
        try:
            with open(stored, "rb") as f:
                pyc = f.read()
        except FileNotFoundError:
            pyc = None
        # A kept pyc is used only if its header says it was compiled from exactly this source.
        if pyc is None or (pyc and pyc[:16] != header + importlib.util.source_hash(data)):
            todo.append((src, rel, stored))
            continue
        place(src, pyc)
        reused += 1
        failed += not pyc
    workers = min(os.cpu_count() or 1, len(todo) // _POOL_MIN)
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor  # slow to import: only if needed

        with ProcessPoolExecutor(workers) as pool:
            compiled = list(pool.map(compile_and_keep, todo, chunksize=16))
    else:
        compiled = [compile_and_keep(job) for job in todo]
    failed += compiled.count(False)
    return {"reused": reused, "compiled": len(todo), "failed": failed}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))

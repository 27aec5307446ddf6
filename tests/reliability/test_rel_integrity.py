"""Nothing on disk is trusted for what it claims: the bytecode store proves every entry, and a
template proves it is the tree that was built.

A torn or forged entry of the shared bytecode store (``<root>/pyc``) used to be placed into
every later template whose source matched its 16-byte header; a same-size edit with the
mtime put back went unnoticed in a template. Each case damages a cache the way a crash, bit
rot or another local user would, then a real pytest session (or ``pytest-cowenv``) uses it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import marshal
import os
from pathlib import Path
from typing import Callable

import pytest

from ._reliability import acquire_once, stray_entries

FILESYSTEMS = ["btrfs", "xfs", "ext4", "tmpfs"]

INNER = """
def test_alpha_is_whole(cowenv_factory):
    env = cowenv_factory("alpha==1.0")
    out = env.run("alpha").stdout
    assert out.startswith("alpha 1.0"), out
    out = env.run("python", "-c", "import alpha.cli; print('imported')").stdout
    assert out.strip() == "imported", out
"""

CLI_SOURCE = b"import alpha\n\ndef main():\n    print('alpha', alpha.VERSION)\n"


def store_entries(cache: Path) -> list[Path]:
    """Every entry of the bytecode store (``pyc/<tag>-<magic>/<2 hex>/<62 hex>``)."""
    return sorted(p for p in cache.glob("pyc/*/*/*") if p.is_file())


def forged_entry() -> bytes:
    """What someone who can write ``pyc/`` but not read its secret would plant for alpha's
    ``cli.py``: a pyc whose header names exactly that source, with code of their own."""
    code = compile("print('FORGED')\ndef main():\n    print('FORGED')\n", "alpha/cli.py", "exec")
    header = importlib.util.MAGIC_NUMBER + (0b11).to_bytes(4, "little")
    return header + importlib.util.source_hash(CLI_SOURCE) + marshal.dumps(code)


def flip_byte(path: Path) -> None:
    """Flip one byte in the middle of ``path``, keeping its size and mtime."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_rebuild_drops_torn_and_forged_store_entries(
    pytester: pytest.Pytester,
    real_dir: Callable[[str], Path],
    offline: list[str],
    wheelhouse: Path,
    fs: str,
    record_property: Callable[[str, object], None],
) -> None:
    cache = real_dir(fs)
    key, created, _ = acquire_once(cache, wheelhouse, "alpha==1.0")
    entries = store_entries(cache)
    assert len(entries) == 2  # alpha/__init__.py and alpha/cli.py
    digest = hashlib.sha256(CLI_SOURCE).hexdigest()
    forged = entries[0].parent.parent / digest[:2] / digest[2:]
    assert forged in entries
    for entry in entries:
        if entry == forged:
            entry.write_bytes(forged_entry())
        else:
            flip_byte(entry)

    pytester.makepyfile(INNER)
    result = pytester.runpytest_subprocess("--cowenv-dir", str(cache), "--cowenv-rebuild", *offline)
    result.assert_outcomes(passed=1)
    assert "FORGED" not in result.stdout.str()
    meta = json.loads((cache / "templates" / f"{key}.json").read_text())
    assert meta["created"] > created
    assert meta["bytecode"] == {"reused": 0, "compiled": 2, "failed": 0, "dropped": 2}
    # The bad entries were replaced by good ones, which the next build may reuse.
    from pytest_cowenv._bytecode import store_secret, unseal

    secret = store_secret(str(cache / "pyc"))
    for entry in store_entries(cache):
        assert unseal(secret, entry.parent.name + entry.name, entry.read_bytes()) is not None
    assert stray_entries(cache) == []
    record_property("faults", 2)
    record_property("inner_tests", 1)


def test_prune_takes_the_store_entries_of_the_templates_it_removes(
    real_dir: Callable[[str], Path], wheelhouse: Path
) -> None:
    from ._reliability import cowenv_cli

    cache = real_dir("ext4")
    old, _, _ = acquire_once(cache, wheelhouse, "alpha==1.0")
    acquire_once(cache, wheelhouse, "alpha==2.0")
    # alpha/cli.py is the same in both versions: one entry serves both templates.
    assert len(store_entries(cache)) == 3
    gone = json.loads((cache / "templates" / f"{old}.json").read_text())
    away = (cache / "templates" / f"{old}.json").stat().st_mtime - 60 * 86400
    os.utime(cache / "templates" / f"{old}.json", (away, away))

    out = cowenv_cli(cache, "prune", "--older-than", "30")
    assert "removed unused bytecode (1 entry)" in out
    names = {p.parent.name + p.name for p in store_entries(cache)}
    assert len(names) == 2 and not names & set(gone["bytecode_store"]["entries"]) - {
        hashlib.sha256(CLI_SOURCE).hexdigest()
    }
    cowenv_cli(cache, "prune", "--all")
    assert store_entries(cache) == []
    assert (cache / "pyc" / "secret").is_file()  # the secret stays: it signs future entries

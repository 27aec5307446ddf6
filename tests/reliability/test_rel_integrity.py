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

from ._reliability import (
    WAIT_FOR_COMPILED,
    acquire_once,
    meta_of,
    stray_entries,
    template_of,
    unprivileged_prefix,
)

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


def own_modules(template: Path) -> int:
    """Modules virtualenv puts into site-packages itself (``_virtualenv.py`` on Python < 3.10),
    which are compiled, and stored, like alpha's."""
    return len(list(template.glob("lib/python*/site-packages/_virtualenv.py")))


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


def edit_in_place(template: Path, rel: str, old: bytes, new: bytes) -> None:
    """Replace ``old`` by ``new`` (as long) in the template's file ``rel``, keeping its inode,
    size and mtime: what bit rot, or a root process that chmods and writes, does."""
    path = next(template.glob(rel))
    st = path.stat()
    data = path.read_bytes()
    assert old in data and len(old) == len(new)
    with open(path, "r+b") as f:  # root writes whatever the mode bits say
        f.write(data.replace(old, new))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    same = (after.st_size, after.st_mtime_ns, after.st_ino)
    assert same == (st.st_size, st.st_mtime_ns, st.st_ino)


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_same_size_same_mtime_edit_and_flipped_store_are_both_caught(
    monkeypatch: pytest.MonkeyPatch,
    pytester: pytest.Pytester,
    real_dir: Callable[[str], Path],
    offline: list[str],
    wheelhouse: Path,
    fs: str,
    record_property: Callable[[str, object], None],
) -> None:
    if os.geteuid() != 0:
        pytest.skip("editing a read-only template in place needs root, whom modes do not stop")
    cache = real_dir(fs)
    key, created, _ = acquire_once(cache, wheelhouse, "alpha==1.0")
    template = template_of(cache, key)
    entries = store_entries(cache)
    for entry in entries:
        flip_byte(entry)
    from pytest_cowenv.clone import protect, unprotect

    protected = unprotect(template)  # btrfs: RO subvolume
    edit_in_place(template, "lib/python*/site-packages/alpha/__init__.py", b"1.0", b"6.6")
    if protected:
        protect(template)

    monkeypatch.setenv("COMPILED_SPECS", "alpha==1.0")
    pytester.makepyfile(INNER + WAIT_FOR_COMPILED)
    result = pytester.runpytest_subprocess("--cowenv-dir", str(cache), *offline)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["templates built: 1: alpha==1.0*"])
    template = template_of(cache, key)  # the rebuilt generation
    meta = json.loads(meta_of(template).read_text())
    assert meta["created"] > created
    n = 2 + own_modules(template)
    assert meta["bytecode"] == {"reused": 0, "compiled": n, "failed": 0, "dropped": n}
    assert b"1.0" in next(template.glob("lib/python*/site-packages/alpha/__init__.py")).read_bytes()
    assert stray_entries(cache) == []
    record_property("faults", len(entries) + 1)
    record_property("inner_tests", 2)


@pytest.mark.parametrize("fs", ["xfs", "ext4", "tmpfs"])
def test_templates_are_read_only_and_clones_writable(
    real_dir: Callable[[str], Path], wheelhouse: Path, fs: str
) -> None:
    """Where a template is a plain directory, its modes protect it: no write bit on any file
    or directory; every clone gets the modes the installer gave (a per-file clone and a copy)."""
    import subprocess
    import sys

    from pytest_cowenv import LinkMode, TemplateSpec, clone_tree
    from pytest_cowenv._install import IndexOptions
    from pytest_cowenv.store import Layout
    from pytest_cowenv.template import TemplateCache

    prefix = unprivileged_prefix()
    if prefix is None:
        pytest.skip("needs setpriv to drop root's permission override")
    cache = real_dir(fs)
    key, _, _ = acquire_once(cache, wheelhouse, "alpha==1.0")
    template = template_of(cache, key)
    for dirpath, dirnames, filenames in os.walk(template):
        for name in [*dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, name))
            assert os.path.islink(os.path.join(dirpath, name)) or not st.st_mode & 0o222, name
    index = IndexOptions((str(wheelhouse),), None, True)
    loaded = TemplateCache(Layout(cache)).get(TemplateSpec.create(["alpha==1.0"], index=index))
    assert loaded.key == key and not loaded.built_now, "the protected template loads as it is"
    writer = "import sys\nfor p in sys.argv[1:]:\n    open(p, 'a').close()"
    for mode in (LinkMode.AUTO, LinkMode.COPY) if fs == "xfs" else (LinkMode.COPY,):
        clone = cache / f"clone-{mode}"
        clone_tree(template, clone, mode, tree=loaded.tree)
        inside = next(clone.glob("lib/python*/site-packages/alpha/cli.py"))
        ok = subprocess.run([*prefix, sys.executable, "-c", writer, str(inside)], check=False)
        assert ok.returncode == 0, "a clone's files are writable"
        assert os.stat(clone / "bin" / "alpha").st_mode & 0o777 == 0o755
        (clone / "bin" / "new-file").write_text("a test may add files\n")
    blocked = next(template.glob("lib/python*/site-packages/alpha/cli.py"))
    denied = subprocess.run(
        [*prefix, sys.executable, "-c", writer, str(blocked)], capture_output=True, check=False
    )
    assert denied.returncode != 0 and b"PermissionError" in denied.stderr


@pytest.mark.parametrize("fs", FILESYSTEMS)
def test_rebuild_drops_torn_and_forged_store_entries(
    monkeypatch: pytest.MonkeyPatch,
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
    n = 2 + own_modules(template_of(cache, key))
    assert len(entries) == n  # alpha/__init__.py and alpha/cli.py (and virtualenv's)
    digest = hashlib.sha256(CLI_SOURCE).hexdigest()
    forged = entries[0].parent.parent / digest[:2] / digest[2:]
    assert forged in entries
    for entry in entries:
        if entry == forged:
            entry.write_bytes(forged_entry())
        else:
            flip_byte(entry)

    monkeypatch.setenv("COMPILED_SPECS", "alpha==1.0")
    pytester.makepyfile(INNER + WAIT_FOR_COMPILED)
    result = pytester.runpytest_subprocess("--cowenv-dir", str(cache), "--cowenv-rebuild", *offline)
    result.assert_outcomes(passed=2)
    assert "FORGED" not in result.stdout.str()
    meta = json.loads(meta_of(template_of(cache, key)).read_text())
    assert meta["created"] > created
    assert meta["bytecode"] == {"reused": 0, "compiled": n, "failed": 0, "dropped": n}
    # The bad entries were replaced by good ones, which the next build may reuse.
    from pytest_cowenv._bytecode import store_secret, unseal

    secret = store_secret(str(cache / "pyc"))
    for entry in store_entries(cache):
        assert unseal(secret, entry.parent.name + entry.name, entry.read_bytes()) is not None
    assert stray_entries(cache) == []
    record_property("faults", 2)
    record_property("inner_tests", 2)


def test_prune_takes_the_store_entries_of_the_templates_it_removes(
    real_dir: Callable[[str], Path], wheelhouse: Path
) -> None:
    from ._reliability import cowenv_cli

    cache = real_dir("ext4")
    old, _, _ = acquire_once(cache, wheelhouse, "alpha==1.0")
    acquire_once(cache, wheelhouse, "alpha==2.0")
    # alpha/cli.py is the same in both versions: one entry serves both templates.
    own = own_modules(template_of(cache, old))
    assert len(store_entries(cache)) == 3 + own
    old_meta = meta_of(template_of(cache, old))
    gone = json.loads(old_meta.read_text())
    away = old_meta.stat().st_mtime - 60 * 86400
    os.utime(old_meta, (away, away))

    out = cowenv_cli(cache, "prune", "--older-than", "30")
    assert "removed unused bytecode (1 entry)" in out
    names = {p.parent.name + p.name for p in store_entries(cache)}
    assert len(names) == 2 + own and not names & set(gone["bytecode_store"]["entries"]) - {
        hashlib.sha256(CLI_SOURCE).hexdigest()
    }
    cowenv_cli(cache, "prune", "--all")
    assert store_entries(cache) == []
    assert (cache / "pyc" / "secret").is_file()  # the secret stays: it signs future entries


def test_verify_retrusts_a_restored_cache_and_rebuilds_a_damaged_template(
    real_dir: Callable[[str], Path],
    wheelhouse: Path,
    record_property: Callable[[str, object], None],
) -> None:
    """A CI cache restored from a tarball has new inodes and ctimes everywhere: `verify`
    proves it by content and renews the manifests, so the next run reuses it. A file whose
    content no longer matches its RECORD is found, and the template is rebuilt."""
    import shutil
    import subprocess
    import sys

    from ._reliability import cowenv_cli, inner_env

    if os.geteuid() != 0:
        pytest.skip("editing a read-only template in place needs root")
    parent = real_dir("ext4")
    cache = parent / "cache"
    key, created, _ = acquire_once(cache, wheelhouse, "alpha==1.0")
    subprocess.run(["tar", "-C", str(parent), "-cf", str(parent / "c.tar"), "cache"], check=True)
    shutil.rmtree(cache)
    subprocess.run(["tar", "-C", str(parent), "-xf", str(parent / "c.tar")], check=True)

    out = cowenv_cli(cache, "verify")
    assert f"{key}  alpha==1.0: re-trusted" in out, out
    assert "verified: 1 template, 0 rebuilt, 0 damaged" in out
    again = acquire_once(cache, wheelhouse, "alpha==1.0")
    assert again[:2] == (key, created), "a verified template is reused, not rebuilt"

    template = template_of(cache, key)
    edit_in_place(template, "lib/python*/site-packages/alpha/cli.py", b"'alpha'", b"'omega'")
    out = cowenv_cli(cache, "verify")
    assert f"{key}  alpha==1.0: rebuilt" in out, out
    assert "/site-packages/alpha/cli.py: content differs from its RECORD" in out
    template = template_of(cache, key)  # the rebuilt generation
    assert b"'alpha'" in next(template.glob("lib/python*/site-packages/alpha/cli.py")).read_bytes()
    rebuilt = json.loads(meta_of(template).read_text())
    assert rebuilt["created"] > created

    # A file of our own (a pyc we compiled) is proven by the hash recorded at build time.
    flip_byte(next(template.glob("lib/python*/site-packages/alpha/__pycache__/__init__.*.pyc")))
    env = {**inner_env(), "PYTEST_COWENV_DIR": str(cache)}
    marked = subprocess.run(
        [sys.executable, "-m", "pytest_cowenv", "verify", "--no-rebuild", "--json", key],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert marked.returncode == 1, marked.stdout + marked.stderr
    (verdict,) = json.loads(marked.stdout)["templates"]
    assert verdict["state"] == "damaged"
    (problem,) = verdict["problems"]
    assert problem.endswith(".pyc: content differs from the hash recorded at build"), problem
    assert not meta_of(template).exists(), "marked for rebuild"
    record_property("faults", 3)

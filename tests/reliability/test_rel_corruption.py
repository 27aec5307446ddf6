"""A template damaged on disk is detected and rebuilt, never cloned.

Each case builds a template (one per spec), damages it the way a crash, a full disk or a
careless ``rm`` would, then one real pytest session uses them all. On btrfs a damaged
template would be snapshotted whole, damage included, if it slipped through: the clone's
``alpha`` console script and ``import alpha.cli`` prove it did not.

Detection compares the tree with the manifest in the metadata (names, kinds, modes, sizes,
mtimes, inodes, ctimes); a change that keeps a file's size and mtime is test_rel_integrity's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import pytest

from ._reliability import (
    WAIT_FOR_COMPILED,
    acquire_each,
    stray_entries,
    template_of,
    tree_digest,
)

# One test per damaged template: each spec has its own template, damaged its own way.
INNER = """
import os
import pytest

@pytest.mark.parametrize("spec", os.environ["SPECS"].split(","))
def test_uses_the_template(cowenv_factory, spec):
    env = cowenv_factory(*spec.split())
    assert env.run("alpha").stdout.startswith("alpha ")
    env.run("python", "-c", "import alpha.cli")
"""


def _delete_file(template: Path, meta: Path) -> None:
    next(template.glob("lib/python*/site-packages/alpha/cli.py")).unlink()


def _truncate_file(template: Path, meta: Path) -> None:
    os.truncate(next(template.glob("lib/python*/site-packages/alpha/__init__.py")), 0)


def _delete_tree(template: Path, meta: Path) -> None:
    from pytest_cowenv.clone import remove_tree

    remove_tree(template)


def _truncate_metadata(template: Path, meta: Path) -> None:
    os.truncate(meta, meta.stat().st_size // 2)


def _garbage_metadata(template: Path, meta: Path) -> None:
    meta.write_bytes(b"\x00\xff{not json at all")


def _wrong_shape_metadata(template: Path, meta: Path) -> None:
    meta.write_text(json.dumps(["format", 1, "key"]))


def _other_key_metadata(template: Path, meta: Path) -> None:
    data = json.loads(meta.read_text())
    data["key"] = "0" * 24  # metadata copied from another template
    meta.write_text(json.dumps(data))


DAMAGE = {
    "file deleted": _delete_file,
    "file truncated": _truncate_file,
    "tree deleted": _delete_tree,
    "metadata truncated": _truncate_metadata,
    "garbage JSON": _garbage_metadata,
    "JSON of the wrong shape": _wrong_shape_metadata,
    "metadata of another key": _other_key_metadata,
}
# A RECORD lists the hash of each console script as the installer wrote it, naming the build
# folder, before relocation: it differs between two builds of the same spec.
RECORDS = ("RECORD",)
SPECS = ["alpha==1.0", "alpha==2.0", "beta", "alpha==1.0 gamma", "alpha==2.0 gamma", "beta gamma"]
SPECS += ["alpha>=1"]
CASES = {"btrfs": list(DAMAGE), "xfs": ["file deleted", "metadata truncated"]}


@pytest.mark.parametrize("fs", CASES)
def test_damaged_templates_are_rebuilt_not_cloned(
    pytester: pytest.Pytester,
    real_dir: Callable[[str], Path],
    offline: list[str],
    wheelhouse: Path,
    monkeypatch: pytest.MonkeyPatch,
    fs: str,
    record_property: Callable[[str, object], None],
) -> None:
    cache = real_dir(fs)
    damages = CASES[fs]
    specs = SPECS[: len(damages)]
    built = acquire_each(cache, wheelhouse, specs)
    from pytest_cowenv.clone import unprotect

    healthy = {}
    for (key, _, _), damage in zip(built, damages):
        template = template_of(cache, key)
        meta = template.with_name(f"{template.name}.json")
        healthy[key] = tree_digest(template, skip=RECORDS)
        unprotect(template)  # a read-only subvolume on btrfs
        DAMAGE[damage](template, meta)

    monkeypatch.setenv("SPECS", ",".join(specs))
    monkeypatch.setenv("COMPILED_SPECS", ",".join(specs))
    pytester.makepyfile(INNER + WAIT_FOR_COMPILED)
    result = pytester.runpytest_subprocess("--cowenv-dir", str(cache), *offline)
    result.assert_outcomes(passed=len(specs) + 1)
    result.stdout.fnmatch_lines([f"templates built: {len(specs)}: *"])
    for (key, created, _), damage in zip(built, damages):
        template = template_of(cache, key)
        rebuilt = json.loads(template.with_name(f"{template.name}.json").read_text())
        assert rebuilt["key"] == key and rebuilt["created"] > created, damage
        digest = tree_digest(template, skip=RECORDS)
        assert digest == healthy[key], f"{damage}: the rebuilt template differs"
    assert stray_entries(cache) == []
    record_property("faults", len(damages))
    record_property("inner_tests", len(specs) + 1)

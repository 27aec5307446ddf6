"""``suite.py``'s parts outside pytest: a fresh clone's first use, and the disk that clones take."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import W1, median, physical_used_bytes
from _common import used_bytes as logical_used_bytes
from _suite_prep import IMPORT_W1
from _suite_run import DROP_VARS, Context


def template_for(ctx: Context, fs: str) -> Any:
    """The warm W1 template the suite used on ``fs`` (the same spec as the marker's)."""
    from pytest_cowenv._install import IndexOptions
    from pytest_cowenv.session import CowEnvSession, Settings

    index = IndexOptions((str(ctx.wheelhouse),), None, True)
    session = CowEnvSession(Settings(root=str(ctx.cowenv_dir(fs)), index=index))
    template = session.cache.get(session.spec(W1, base_dir=ctx.suite))
    if template.built_now:
        print(f"note: the {fs} template was built again for the disk/first-use part")
    return template


def _import_ms(python: Path) -> float:
    env = {k: v for k, v in os.environ.items() if k not in DROP_VARS}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # write nothing into the template or the clones
    start = time.perf_counter()
    subprocess.run([str(python), "-c", IMPORT_W1], check=True, env=env)
    return (time.perf_counter() - start) * 1000


def first_use(ctx: Context, fs: str, clones: int) -> dict[str, float]:
    """First ``python -c 'import W1'`` in fresh clones vs in the (warm) template, sampled
    alternately so that both see the same machine."""
    from pytest_cowenv.clone import clone_tree, remove_tree

    template = template_for(ctx, fs)
    python = template.path / "bin" / "python"
    _import_ms(python)  # warm the template's pages
    base = ctx.work(fs) / "first-use"
    if base.exists():
        shutil.rmtree(base)
    base.mkdir()
    clone_ms, in_template, first, second = [], [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ext4's "copied instead" warning: expected here
        for i in range(clones):
            in_template.append(_import_ms(python))
            dst = base / f"c{i}"
            clone_ms.append(clone_tree(template.path, dst, tree=template.tree).seconds * 1000)
            first.append(_import_ms(dst / "bin" / "python"))
            second.append(_import_ms(dst / "bin" / "python"))
            remove_tree(dst)
    base.rmdir()
    return {
        "clone_ms": median(clone_ms),
        "template_ms": median(in_template),
        "first_ms": median(first),
        "second_ms": median(second),
        "penalty_ms": median(first) - median(in_template),
    }


@dataclass
class DiskResult:
    fs: str
    how: str
    clones: int
    template_bytes: int  # one full copy of the template, measured like the clones
    added_bytes: int  # statvfs used blocks (btrfs: DUP metadata counted twice)
    logical_bytes: int  # btrfs: what `btrfs filesystem df` says is used; elsewhere = statvfs
    trials: list[int] = field(default_factory=list)  # statvfs deltas of every trial

    @property
    def per_clone(self) -> float:
        return self.added_bytes / self.clones

    @property
    def of_template(self) -> float:
        """Everything the clones added, as a share of one template."""
        return self.added_bytes / self.template_bytes

    @property
    def of_copies(self) -> float:
        """What the clones added, as a share of what as many full copies take."""
        return self.added_bytes / (self.template_bytes * self.clones)


def disk_use(ctx: Context, fs: str, how: str, wanted: int, trials: int) -> DiskResult:
    """statvfs used-bytes delta (after ``sync``) with all clones present, made by
    ``clone_tree`` directly; the median of ``trials`` (other writers on the same filesystem
    show up as spread between trials)."""
    from pytest_cowenv.clone import LinkMode

    template = template_for(ctx, fs)
    base = ctx.work(fs) / "disk"
    if base.exists():
        shutil.rmtree(base)
    base.mkdir()
    mode = {"snapshot": LinkMode.SNAPSHOT, "per-file clone": LinkMode.CLONE}.get(how, LinkMode.COPY)
    size = _copy_bytes(template, base)
    count = wanted
    if mode is LinkMode.COPY:  # only as many copies as fit in 70 % of the free space
        count = max(1, min(wanted, int(shutil.disk_usage(base).free * 0.7 // size)))
    added, logical = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(trials):
            a, b = _clones_add(template, base, mode, count)
            added.append(a)
            logical.append(b)
    base.rmdir()
    return DiskResult(fs, how, count, size, int(median(added)), int(median(logical)), added)


def _clones_add(template: Any, base: Path, mode: Any, count: int) -> tuple[int, int]:
    from pytest_cowenv.clone import clone_tree, remove_tree
    from pytest_cowenv.fs import fs_type

    before = physical_used_bytes(base), logical_used_bytes(base)  # both sync first
    try:
        for i in range(count):
            clone_tree(template.path, base / f"c{i}", mode, tree=template.tree)
        return physical_used_bytes(base) - before[0], logical_used_bytes(base) - before[1]
    finally:
        for child in base.iterdir():
            remove_tree(child)
        if shutil.which("btrfs") and fs_type(base) == "btrfs":
            # Destroyed snapshots are freed by a background cleaner: let it finish first.
            subprocess.run(
                ["btrfs", "subvolume", "sync", str(base.parent)], check=False, capture_output=True
            )


def _copy_bytes(template: Any, base: Path, copies: int = 3) -> int:
    """What one full copy of the template takes on this filesystem (statvfs, measured)."""
    from pytest_cowenv.clone import LinkMode, clone_tree, remove_tree

    before = physical_used_bytes(base)
    for i in range(copies):
        clone_tree(template.path, base / f"copy{i}", LinkMode.COPY, tree=template.tree)
    added = physical_used_bytes(base) - before
    for i in range(copies):
        remove_tree(base / f"copy{i}")
    return max(1, added // copies)


def disk_part(ctx: Context, clones: int, trials: int) -> list[DiskResult]:
    plan = [
        ("btrfs", "snapshot"),
        ("btrfs", "per-file clone"),
        ("xfs", "per-file clone"),
        ("ext4", "copy"),
    ]
    return [disk_use(ctx, fs, how, clones, trials) for fs, how in plan if fs in ctx.mounts]

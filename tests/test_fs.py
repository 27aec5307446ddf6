"""Filesystem facts (``pytest_cowenv.fs``) on real btrfs, XFS, ext4 and tmpfs mounts."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pytest_cowenv import fs
from pytest_cowenv.clone import make_template_dir

# name: (can_snapshot, can_reflink, best strategy)
EXPECTED = {
    "btrfs": (True, True, "snapshot"),
    "xfs": (False, True, "clone"),
    "ext4": (False, False, "copy"),
    "tmpfs": (False, False, "copy"),
}


def test_probe_reports_type_and_capabilities(real_fs: tuple[str, Path]) -> None:
    name, where = real_fs
    info = fs.probe(where)
    can_snapshot, can_reflink, best = EXPECTED[name]
    assert (info.fstype, info.can_snapshot, info.can_reflink) == (name, can_snapshot, can_reflink)
    assert info.can_hardlink and info.best_strategy == best
    if can_reflink:
        assert info.reason == ""
    else:
        assert info.reason.startswith(errno.errorcode[errno.EOPNOTSUPP])
    assert os.listdir(where) == [], "the probe left files behind"


def test_probe_is_cached_per_device(
    real_fs: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _name, where = real_fs
    (where / "sub").mkdir()
    calls: list[str] = []
    real = fs._probe_uncached

    def counting(path: str) -> fs.FsInfo:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(fs, "_probe_uncached", counting)
    first = fs.probe(where)
    assert fs.probe(where / "sub") is first  # same device: no new probe
    assert len(calls) == 1
    fs.forget()
    assert fs.probe(where / "sub") == fs.FsInfo(
        str(where / "sub"),
        first.fstype,
        first.can_snapshot,
        first.can_reflink,
        first.can_hardlink,
        first.reason,
    )
    assert len(calls) == 2


def test_a_btrfs_subvolume_is_its_own_device_and_probed_alone(
    btrfs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    subvolume = btrfs_dir / "subvolume"
    assert make_template_dir(subvolume)
    assert os.stat(subvolume).st_dev != os.stat(btrfs_dir).st_dev
    calls: list[str] = []
    real = fs._probe_uncached

    def counting(path: str) -> fs.FsInfo:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(fs, "_probe_uncached", counting)
    assert fs.probe(btrfs_dir).fstype == fs.probe(subvolume).fstype == "btrfs"
    assert calls == [str(btrfs_dir), str(subvolume)]


def test_fs_type_names_each_filesystem(real_fs: tuple[str, Path]) -> None:
    name, where = real_fs
    assert fs.fs_type(where) == name
    assert fs.fs_type(str(where)) == name


def test_fs_type_of_a_missing_path_raises() -> None:
    with pytest.raises(FileNotFoundError):
        fs.fs_type("/nonexistent/cowenv")


def test_is_subvolume_only_for_btrfs_subvolume_roots(real_fs: tuple[str, Path]) -> None:
    name, where = real_fs
    template = where / "template"
    made = make_template_dir(template)
    assert made == (name == "btrfs")
    assert fs.is_subvolume(template) == made
    (template / "plain").mkdir()
    assert not fs.is_subvolume(template / "plain")
    assert not fs.is_subvolume(where / "missing")
    if made:
        os.rmdir(template / "plain")
        os.rmdir(template)  # an empty subvolume goes like a directory


@pytest.mark.parametrize("strategy", ["snapshot", "clone", "hardlink", "copy"])
def test_unavailable_reason_is_what_skips_use(real_fs: tuple[str, Path], strategy: str) -> None:
    name, where = real_fs
    can_snapshot, can_reflink, _ = EXPECTED[name]
    able = {"snapshot": can_snapshot, "clone": can_reflink}.get(strategy, True)
    reason = fs.unavailable_reason(where, strategy)
    if able:
        assert reason is None
    else:
        assert reason is not None and name in reason and f"cannot {strategy}" in reason

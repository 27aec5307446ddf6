"""Disk full, on the small loop filesystems (COWENV_TEST_SMALL: 160 MiB ext4,
COWENV_TEST_SMALL_BTRFS: 300 MiB btrfs).

A template whose install does not fit, and a copy-mode clone that does not fit, must each give
one clear error in the test that needed them (the culprit, the filesystem and its free space
on the first line, no internal traceback), never publish or use a half template, and give the
space back. The "fat" wheels unpack to zeros: a few hundred KiB that fill the filesystem.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pytest

from _helpers import internal_frames

from ._reliability import (
    FS_KINDS,
    exclusive,
    free_bytes,
    make_fat_wheel,
    mount_of,
    stray_entries,
    template_dirs,
)

MiB = 1 << 20

INNER = """
import pytest

@pytest.mark.cowenv("fat", link_mode={mode!r})
def test_fat_first(cowenv):
    pass

@pytest.mark.cowenv("fat", link_mode={mode!r})
def test_fat_again(cowenv):
    pass

@pytest.mark.cowenv("alpha==1.0")
def test_small_env_still_works(cowenv):
    cowenv.run("alpha")
"""


def _first_lines(result: pytest.RunResult) -> dict[str, str]:
    """test name -> first line of its error report."""
    lines = result.outlines
    return {
        m.group(1): lines[i + 1]
        for i, line in enumerate(lines)
        if (m := re.search(r"ERROR at setup of (test_\w+) _", line))
    }


def _run(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    cache: Path,
    offline: list[str],
    mode: str,
) -> pytest.RunResult:
    # Installers keep unpacked wheels in their own caches: keep those of the fat wheels in
    # this test's tmp dir, not in the user's cache.
    monkeypatch.setenv("UV_CACHE_DIR", str(pytester.path / "uv-cache"))
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("COLUMNS", "400")
    pytester.makepyfile(INNER.format(mode=mode))
    return pytester.runpytest_subprocess("-p", "no:randomly", "--cowenv-dir", str(cache), *offline)


@pytest.mark.parametrize(("fs", "installer"), [("small", "uv"), ("smallbtrfs", "pip")])
def test_template_build_that_fills_the_filesystem(
    pytester: pytest.Pytester,
    real_dir: Callable[[str], Path],
    wheelhouse: Path,
    monkeypatch: pytest.MonkeyPatch,
    fs: str,
    installer: str,
    record_property: Callable[[str, object], None],
) -> None:
    mount = mount_of(fs)
    if installer == "pip":
        monkeypatch.setenv("PYTEST_COWENV_NO_UV", "1")
    with exclusive(str(mount)):
        cache = real_dir(fs)
        before = free_bytes(mount)
        links = pytester.mkdir("fat-wheels")
        make_fat_wheel(links, "fat", mib=before // MiB + 40)  # 40 MiB more than there is
        offline = ["--cowenv-find-links", str(wheelhouse), "--cowenv-find-links", str(links)]
        result = _run(pytester, monkeypatch, cache, [*offline, "--cowenv-offline"], "auto")
        after = free_bytes(mount)
    out = "\n".join(result.outlines + result.errlines)
    result.assert_outcomes(passed=1, errors=2)
    assert "Traceback" not in out and not internal_frames(out), out
    first = _first_lines(result)
    for test in ("test_fat_first", "test_fat_again"):  # the failed build is not retried
        line = first[test]
        assert line.startswith("fat"), line  # the culprit first
        assert "no space left" in line.lower(), line
        assert FS_KINDS[fs] in line and str(mount) in line and "MiB free" in line, line
    # No half template was published; the build folder is gone; the space is back.
    (template,) = template_dirs(cache)  # alpha's only
    assert not list(template.glob("lib/python*/site-packages/fat"))
    assert stray_entries(cache) == []
    assert after > before - 8 * MiB, f"{(before - after) / MiB:.1f} MiB not given back"
    record_property("faults", 1)
    record_property("inner_tests", 3)


@pytest.mark.parametrize("fs", ["small", "smallbtrfs"])
def test_copy_mode_clone_that_fills_the_filesystem(
    pytester: pytest.Pytester,
    real_dir: Callable[[str], Path],
    wheelhouse: Path,
    monkeypatch: pytest.MonkeyPatch,
    fs: str,
    record_property: Callable[[str, object], None],
) -> None:
    mount = mount_of(fs)
    monkeypatch.setenv("PYTEST_COWENV_POOL", "0")  # the clone is made in the test's setup
    with exclusive(str(mount)):
        cache = real_dir(fs)
        before = free_bytes(mount)
        links = pytester.mkdir("fat-wheels")
        # The template fits; a copy of it does not fit beside it.
        fat_mib = int(before * 0.6) // MiB
        make_fat_wheel(links, "fat", mib=fat_mib)
        offline = ["--cowenv-find-links", str(wheelhouse), "--cowenv-find-links", str(links)]
        result = _run(pytester, monkeypatch, cache, [*offline, "--cowenv-offline"], "copy")
        after = free_bytes(mount)
    out = "\n".join(result.outlines + result.errlines)
    result.assert_outcomes(passed=1, errors=2)
    assert "Traceback" not in out and not internal_frames(out), out
    for test, line in _first_lines(result).items():
        assert "cannot clone" in line and "mode copy" in line, (test, line)
        assert FS_KINDS[fs] in line and str(mount) in line and "MiB free" in line, line
        assert "ENOSPC" in line, line
    assert stray_entries(cache) == [], "the half-made copy was left behind"
    assert not list((cache / "clones").iterdir())
    fat_template = [t for t in template_dirs(cache) if list(t.glob("lib/*/site-packages/fat"))]
    assert len(fat_template) == 1, "the complete template must stay: it is valid"
    # What stays used is the two templates; the failed copies gave their space back.
    assert after > before - (fat_mib + 8) * MiB, f"{(before - after) / MiB:.1f} MiB used"
    record_property("faults", 2)
    record_property("inner_tests", 3)

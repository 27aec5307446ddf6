"""Cache directories that cannot or must not be used: clear errors, nothing half-made.

Read-only and missing-permission cases need a process that obeys permission bits. Root does
not (CAP_DAC_OVERRIDE), and ``nobody`` cannot reach this machine's interpreter under /root,
so as root those runs drop the two capabilities that bypass permission checks (``setpriv
--bounding-set``): still uid 0, but bound by the mode bits like any user.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import Callable

import pytest

from _helpers import internal_frames

from ._reliability import acquire_once, unprivileged_prefix

INNER = """
import pytest

@pytest.mark.cowenv("alpha==1.0")
def test_needs_an_env(cowenv):
    pass

def test_needs_nothing():
    pass
"""

NOBODY = 65534


def _run(pytester: pytest.Pytester, cache: Path, offline: list[str], *prefix: str) -> str:
    """Run INNER against ``cache``; the env test must error at setup, the other pass.
    Returns the first line of the error. Each use is one injected fault."""
    pytester.makepyfile(INNER)
    pytester._monkeypatch.setenv("COLUMNS", "300")
    args = ["-p", "no:cacheprovider", "--cowenv-dir", str(cache), *offline]
    result = pytester.run(*prefix, sys.executable, "-m", "pytest", *args, timeout=300)
    out = "\n".join(result.outlines + result.errlines)
    result.assert_outcomes(passed=1, errors=1)
    assert "Traceback" not in out and not internal_frames(out), out
    lines = result.outlines
    (at,) = [
        i for i, line in enumerate(lines) if re.search("ERROR at setup of test_needs_an", line)
    ]
    return lines[at + 1]


@pytest.fixture
def fault(record_property: Callable[[str, object], None]) -> None:
    """Count this test's one injected fault (see tally.py)."""
    record_property("faults", 1)


@pytest.fixture
def obeys_permissions() -> list[str]:
    prefix = unprivileged_prefix()
    if prefix is None:
        pytest.skip("running as root without setpriv: permission bits would be bypassed")
    return prefix


@pytest.mark.usefixtures("fault")
def test_read_only_cache_dir(
    pytester: pytest.Pytester, tmp_path: Path, offline: list[str], obeys_permissions: list[str]
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    cache.chmod(0o500)
    first = _run(pytester, cache, offline, *obeys_permissions)
    assert str(cache) in first and "not writable" in first, first
    assert os.listdir(cache) == []


@pytest.mark.usefixtures("fault")
def test_parent_without_write_permission(
    pytester: pytest.Pytester, tmp_path: Path, offline: list[str], obeys_permissions: list[str]
) -> None:
    parent = tmp_path / "locked"
    parent.mkdir(mode=0o500)
    cache = parent / "cache"
    first = _run(pytester, cache, offline, *obeys_permissions)
    assert str(cache) in first and "Permission denied" in first, first
    assert not cache.exists()


@pytest.mark.usefixtures("fault")
@pytest.mark.parametrize("sub", ["templates", "clones", "tmp", "pyc"])
def test_cache_with_a_read_only_part(
    pytester: pytest.Pytester,
    tmp_path: Path,
    offline: list[str],
    wheelhouse: Path,
    obeys_permissions: list[str],
    sub: str,
) -> None:
    cache = tmp_path / "cache"
    if sub == "templates":
        from pytest_cowenv.marker import mark

        cache.mkdir(mode=0o700)
        mark(str(cache))  # ours, half made
        for name in ("templates", "clones", "tmp"):
            (cache / name).mkdir()
    else:
        acquire_once(cache, wheelhouse, "alpha==1.0")  # a good template, ready to clone
    (cache / sub).chmod(0o500)
    first = _run(pytester, cache, offline, *obeys_permissions)
    # Found at start-up, even where this run would not have needed that part.
    assert f"{sub}/ is not writable" in first and str(cache) in first, first
    assert "--cowenv-dir" in first, first  # the fix: permissions, or another directory


@pytest.mark.usefixtures("fault")
def test_cache_dir_owned_by_another_user_is_refused(
    pytester: pytest.Pytester, tmp_path: Path, offline: list[str]
) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a directory to another user")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    os.chown(cache, NOBODY, NOBODY)
    first = _run(pytester, cache, offline)
    assert f"belongs to uid {NOBODY}" in first and str(cache) in first, first
    assert os.listdir(cache) == [], "nothing may be written into someone else's cache"


def test_probe_memo_outside_our_cache_is_not_trusted(
    pytester: pytest.Pytester,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    """Another user's cache dir (or its parent) may hold a forged probe memo: the header
    must describe the real filesystem, not what a file there claims."""
    if os.geteuid() != 0:
        pytest.skip("only root can give a directory to another user")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    forged = {"format": 1, "st_dev": cache.stat().st_dev, "fstype": "forged"}
    forged.update(strategy="snapshot", reason="")
    (cache / "fs-probe.json").write_text(json.dumps(forged))
    os.chown(cache, NOBODY, NOBODY)
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_subprocess("--cowenv-dir", str(cache))
    result.assert_outcomes(passed=1)
    assert "forged" not in result.stdout.str()
    record_property("faults", 1)


@pytest.mark.parametrize(
    ("mode", "refused"),
    [(0o777, "everyone"), (0o1777, ""), (0o775, ""), (0o775, "its group"), (0o1775, "")],
    ids=[
        "world-writable",
        "world-writable-sticky",
        "group-writable-private-group",
        "group-writable-shared-group",
        "group-writable-shared-group-sticky",
    ],
)
def test_cache_dir_writable_by_others_without_sticky_bit_is_refused(
    tmp_path: Path,
    mode: int,
    refused: str,
    record_property: Callable[[str, object], None],
    request: pytest.FixtureRequest,
) -> None:
    from pytest_cowenv.errors import CacheDirError
    from pytest_cowenv.store import prepare_root

    cache = tmp_path / "cache"
    cache.mkdir()
    if "shared-group" in request.node.name:
        if os.geteuid() != 0:
            pytest.skip("only root can give a directory to a group it is not in")
        os.chown(cache, 0, NOBODY)  # a group of someone else's (the tmp_path group is ours)
    cache.chmod(mode)
    if refused:
        with pytest.raises(CacheDirError, match=f"writable by {refused}.* without the sticky"):
            prepare_root(cache)
        assert os.listdir(cache) == []
        record_property("faults", 1)
    else:
        prepare_root(cache)
        assert stat.S_IMODE(cache.stat().st_mode) == mode

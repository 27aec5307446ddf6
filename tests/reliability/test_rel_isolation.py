"""Isolation and security: what one test does to its environment stays in it.

- Vandal tests (delete site-packages, install, upgrade, uninstall, write into ``bin/`` and
  into installed files in place) run beside checker tests on two xdist workers; every
  checker sees a pristine clone and the template is bit-for-bit the same afterwards. On
  btrfs (snapshots), XFS (per-file clones) and ext4 (copies).
- Symlinks are cloned as symlinks, never followed out of the template, by every strategy.
- ``hardlink`` is NOT isolated (a write in a clone reaches the template), and ``auto`` never
  picks it, on any filesystem.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

from _helpers import internal_frames

from ._reliability import acquire_once, clone_digest, stray_entries, template_of, tree_digest

VANDALS_AND_CHECKERS = """
import os
import shutil
import subprocess
import sys

import pytest
from _reliability import tree_digest

pytestmark = pytest.mark.cowenv("alpha==1.0", "beta")
PRISTINE = os.environ["PRISTINE"]


def test_vandal_deletes_site_packages(cowenv):
    shutil.rmtree(cowenv.site_packages)
    assert cowenv.run("python", "-c", "import alpha", check=False).returncode != 0


def test_vandal_installs_and_upgrades(cowenv):
    cowenv.install("gamma", "alpha==2.0")
    assert cowenv.run("alpha").stdout == "alpha 2.0\\n"
    cowenv.run("python", "-c", "import gamma")


def test_vandal_uninstalls(cowenv):
    uninstall = [sys.executable, "-m", "pip", "--python", str(cowenv.python)]
    subprocess.run([*uninstall, "uninstall", "-y", "-q", "alpha", "beta"], check=True)
    assert cowenv.run("python", "-c", "import alpha", check=False).returncode != 0


def test_vandal_writes_into_bin(cowenv):
    with open(cowenv.bin_dir / "alpha", "r+b") as f:  # in place: same inode
        f.write(b"#!/bin/sh\\nexit 7\\n#")
    with open(cowenv.bin_dir / "activate", "a") as f:
        f.write("echo pwned\\n")
    (cowenv.bin_dir / "python").unlink()  # the clone's own symlink, not the interpreter
    (cowenv.bin_dir / "python").write_text("#!/bin/sh\\nexit 9\\n")
    (cowenv.bin_dir / "evil").write_text("evil")
    assert cowenv.run("alpha", check=False).returncode == 7


def test_vandal_edits_installed_files_in_place(cowenv):
    for path in cowenv.site_packages.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with open(path, "r+b") as f:
                f.write(b"\\0")
    os.chmod(cowenv.site_packages / "alpha", 0o500)


@pytest.mark.parametrize("n", range(12))
def test_checker_sees_a_pristine_clone(cowenv, n):
    assert tree_digest(cowenv.path) == PRISTINE
    assert cowenv.run("alpha").stdout == "alpha 1.0\\n"
"""


@pytest.mark.parametrize(
    ("fs", "strategy"), [("btrfs", "snapshot"), ("xfs", "clone"), ("ext4", "copy")]
)
def test_vandals_affect_no_sibling_and_not_the_template(
    pytester: pytest.Pytester,
    real_dir: Callable[[str], Path],
    offline: list[str],
    wheelhouse: Path,
    monkeypatch: pytest.MonkeyPatch,
    fs: str,
    strategy: str,
    record_property: Callable[[str, object], None],
) -> None:
    cache = real_dir(fs)
    key, _, got = acquire_once(cache, wheelhouse, "alpha==1.0", "beta")
    assert got == strategy
    template = template_of(cache, key)
    before = tree_digest(template)
    monkeypatch.setenv("PRISTINE", clone_digest(template))
    # _reliability, and the _helpers it imports from tests/
    here = Path(__file__).parent
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(here), str(here.parent)]))
    pytester.makepyfile(VANDALS_AND_CHECKERS)
    # Two workers where clones are cheapest, so vandals and checkers run at the same time.
    workers = ["-n", "2"] if fs == "btrfs" else []
    result = pytester.runpytest_subprocess(*workers, "--cowenv-dir", str(cache), *offline)
    out = "\n".join(result.outlines + result.errlines)
    result.assert_outcomes(passed=17)
    assert not internal_frames(out)
    assert tree_digest(template) == before, "a test changed the template"
    assert stray_entries(cache) == []
    record_property("inner_tests", 17)


# --- symlinks, engine level ------------------------------------------------------------------

LINKS = {
    "etc-passwd": "/etc/passwd",
    "lib/site-packages/pkg/passwd": "/etc/passwd",
    "escape": "../../../../../../../../etc/passwd",
    "etc-dir": "/etc",
    "dangling": "/nonexistent/cowenv/target",
}


def _template_with_links(root: Path, as_subvolume: bool) -> Path:
    from pytest_cowenv.clone import make_template_dir

    src = root / "template"
    if as_subvolume:
        assert make_template_dir(src)
    else:
        src.mkdir()
    (src / "lib" / "site-packages" / "pkg").mkdir(parents=True)
    (src / "lib" / "site-packages" / "pkg" / "__init__.py").write_text("x = 1\n")
    for rel, target in LINKS.items():
        os.symlink(target, src / rel)
    return src


STRATEGIES = [
    ("btrfs", "snapshot"),
    ("btrfs", "clone"),
    ("xfs", "clone"),
    ("ext4", "copy"),
    ("tmpfs", "copy"),
    ("xfs", "hardlink"),
    ("ext4", "hardlink"),
]


@pytest.mark.parametrize(("fs", "mode"), STRATEGIES, ids=[f"{m}-{f}" for f, m in STRATEGIES])
def test_symlinks_are_cloned_as_symlinks_never_followed(
    real_dir: Callable[[str], Path], fs: str, mode: str
) -> None:
    from pytest_cowenv.clone import clone_tree

    root = real_dir(fs)
    src = _template_with_links(root, as_subvolume=mode == "snapshot")
    passwd = os.stat("/etc/passwd")
    result = clone_tree(src, root / "clone", mode)
    assert result.strategy == mode
    dst = root / "clone"
    for rel, target in LINKS.items():
        assert (dst / rel).is_symlink(), f"{rel} is not a symlink in the clone"
        assert os.readlink(dst / rel) == target
    copied = {p.relative_to(dst) for p in dst.rglob("*")}  # rglob does not enter linked dirs
    assert copied == {p.relative_to(src) for p in src.rglob("*")}
    for path in dst.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert os.stat(path).st_ino != passwd.st_ino
    after = os.stat("/etc/passwd")
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        passwd.st_ino,
        passwd.st_size,
        passwd.st_mtime_ns,
    )


def test_clone_never_writes_through_a_symlink_at_the_destination(
    real_dir: Callable[[str], Path],
) -> None:
    """A destination planted as a symlink (by another user, a race) is refused, not followed."""
    from pytest_cowenv.clone import clone_tree
    from pytest_cowenv.errors import CloneError

    root = real_dir("xfs")
    src = _template_with_links(root, as_subvolume=False)
    target = root / "outside"
    os.symlink(target, root / "clone")
    with pytest.raises(CloneError, match="already exists"):
        clone_tree(src, root / "clone", "clone")
    assert not target.exists()
    assert (root / "clone").is_symlink()


# --- hardlink: not isolated; auto never picks it -----------------------------------------------


def test_hardlink_mode_is_not_isolated(real_dir: Callable[[str], Path]) -> None:
    """Documented behaviour, tested: a hardlink "clone" shares its files with the template,
    so a write in place lands in the template (and in every other hardlink clone)."""
    from pytest_cowenv.clone import clone_tree

    root = real_dir("ext4")
    src = _template_with_links(root, as_subvolume=False)
    clone_tree(src, root / "a", "hardlink")
    clone_tree(src, root / "b", "hardlink")
    with open(root / "a" / "lib" / "site-packages" / "pkg" / "__init__.py", "r+") as f:
        f.write("y")
    for tree in ("template", "b"):
        assert (root / tree / "lib" / "site-packages" / "pkg" / "__init__.py").read_text() == (
            "y = 1\n"
        )


HARDLINK_SUITE = """
import pytest

pytestmark = pytest.mark.cowenv("alpha==1.0", link_mode="hardlink")

def test_1_writes_in_place(cowenv):
    with open(cowenv.site_packages / "alpha" / "__init__.py", "r+") as f:
        f.write("#")

def test_2_sees_the_write(cowenv):
    assert (cowenv.site_packages / "alpha" / "__init__.py").read_text().startswith("#")
"""


def test_hardlink_mode_leaks_between_tests(
    pytester: pytest.Pytester, real_dir: Callable[[str], Path], offline: list[str]
) -> None:
    """Through the plugin: a test's in-place write is seen by the next test (the opposite of
    what every other mode guarantees). The damaged template is detected next time."""
    cache = real_dir("xfs")
    warm = 'import pytest\n@pytest.mark.cowenv("alpha==1.0")\ndef test_warm(cowenv): pass\n'
    pytester.makepyfile(test_leak=HARDLINK_SUITE, test_warm=warm)
    args = ["-p", "no:randomly", "--cowenv-dir", str(cache), *offline]
    # Built and compiled first: both tests then clone one generation, not its compiled twin.
    # A template that one test uses is compiled by the next run that uses it: two warm runs.
    for _ in range(2):
        pytester.runpytest_subprocess(*args, "test_warm.py").assert_outcomes(passed=1)
    pytester.runpytest_subprocess(*args, "test_leak.py").assert_outcomes(passed=2)
    again = pytester.runpytest_subprocess(*args, "test_leak.py", "-k", "test_2")
    again.assert_outcomes(failed=1)  # rebuilt: the write is gone
    again.stdout.fnmatch_lines(["templates built: 1: alpha==1.0 *"])


@pytest.mark.filterwarnings("ignore::pytest_cowenv.CowEnvWarning")  # copies: expected here
@pytest.mark.parametrize("fs", ["btrfs", "xfs", "ext4", "tmpfs"])
def test_auto_never_picks_hardlink(real_dir: Callable[[str], Path], fs: str) -> None:
    from pytest_cowenv.clone import clone_tree
    from pytest_cowenv.fs import probe

    root = real_dir(fs)
    src = _template_with_links(root, as_subvolume=fs == "btrfs")
    assert probe(root).can_hardlink  # hardlink would be possible here, and cheap
    assert probe(root).best_strategy != "hardlink"
    for n in range(2):
        assert clone_tree(src, root / f"clone{n}", "auto").strategy != "hardlink"
    # Across filesystems too (the template on another mount).
    other = real_dir("ext4" if fs != "ext4" else "xfs")
    assert clone_tree(src, other / "clone", "auto").strategy == "copy"


def test_auto_header_never_says_hardlink(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest_inprocess("--collect-only", f"--cowenv-dir={tmp_path / 'c'}")
    header = [line for line in result.outlines if line.startswith("cowenv: dir=")]
    assert len(header) == 1 and "hardlink" not in header[0]

"""Load: 400 tests on two xdist workers, on btrfs (snapshots) and XFS (per-file clones).

Each inner test marks its clone with its node id (and checks nobody did before), tries to
damage the template through its clone, and records what it saw. The outer test then checks:
every clone distinct, every test saw the same unmodified template, one template build, and
nothing left under ``clones/`` or ``tmp/``.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest

from _helpers import internal_frames

from ._reliability import clone_digest, stray_entries, template_dirs

TESTS = 400

INNER = """
import os
import pytest
from _reliability import tree_digest

RECORD = os.environ["RELIABILITY_RECORD"]


@pytest.mark.cowenv("alpha==1.0")
@pytest.mark.parametrize("i", range({tests}))
def test_clone(cowenv, i, request):
    site = cowenv.site_packages
    # Before this test touches anything; bytecode aside: the first tests get the template
    # before it is compiled (no __pycache__), later ones its compiled twin.
    seen = tree_digest(site, skip_dirs=("__pycache__",))
    mark = cowenv.path / "owner.txt"
    assert not mark.exists(), f"clone already used by {{mark.read_text()}}"
    mark.write_text(request.node.nodeid)
    # Try to reach the template through the clone: write into existing files in place,
    # delete one, and add one. A clone that shares inodes with the template would leak.
    with open(site / "alpha" / "__init__.py", "r+") as f:
        f.write("BROKEN = True  # ")
    with open(cowenv.bin_dir / "alpha", "a") as f:
        f.write("exit 3\\n")
    (site / "alpha" / "cli.py").unlink()
    (site / "intruder.py").write_text("x = 1\\n")
    if i % 100 == 0:  # a real process now and then, not in every test: keep it fast
        assert cowenv.run("python", "-c", "import intruder, alpha; print(alpha.BROKEN)").stdout
    line = "\\t".join(
        [str(cowenv.path), seen, repr(cowenv.template.meta["created"]), cowenv.strategy]
    )
    fd = os.open(RECORD, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\\n").encode())  # one write with O_APPEND: lines never mix
    finally:
        os.close(fd)
"""


@pytest.mark.slow
@pytest.mark.parametrize(("fs", "strategy"), [("btrfs", "snapshot"), ("xfs", "clone")])
def test_400_tests_two_workers(
    pytester: pytest.Pytester,
    real_dir: Callable[[str], Path],
    offline: list[str],
    monkeypatch: pytest.MonkeyPatch,
    fs: str,
    strategy: str,
    record_property: Callable[[str, object], None],
) -> None:
    cache = real_dir(fs)
    record = pytester.path / "record.tsv"
    monkeypatch.setenv("RELIABILITY_RECORD", str(record))
    # _reliability, and the _helpers it imports from tests/
    here = Path(__file__).parent
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(here), str(here.parent)]))
    pytester.makepyfile(INNER.format(tests=TESTS))
    result = pytester.runpytest_subprocess("-n", "2", "-q", "--cowenv-dir", str(cache), *offline)
    out = "\n".join(result.outlines + result.errlines)
    result.assert_outcomes(passed=TESTS)
    assert not internal_frames(out), out

    rows = [line.split("\t") for line in record.read_text().splitlines()]
    assert len(rows) == TESTS
    paths, seen, created, strategies = (list(col) for col in zip(*rows))
    assert len(set(paths)) == TESTS, "two tests were given the same clone"
    assert Counter(strategies) == {strategy: TESTS}
    assert len(set(created)) == 1, f"the template was built more than once: {set(created)}"
    (template,) = template_dirs(cache)
    site = next(template.glob("lib/python*/site-packages"))
    # The modes tests get, bytecode aside.
    pristine = clone_digest(template, site.relative_to(template), skip_dirs=("__pycache__",))
    assert set(seen) == {pristine}, "some test saw a modified template"
    assert not (site / "intruder.py").exists()
    assert "BROKEN" not in (site / "alpha" / "__init__.py").read_text()
    assert stray_entries(cache) == [], "clones or build folders left after the run"
    assert not any(os.path.exists(p) for p in paths)
    record_property("inner_tests", TESTS)

"""Example 3: a monorepo of two packages, each tested in its own environment.

``pkg_b`` depends on ``pkg_a``: its environment gets the sibling built from its path in the
monorepo (not from an index), and ``pkg_a``'s environment holds ``pkg_a`` alone.
Paths in the marker are relative to this file.
"""

from pathlib import Path

import pytest

MONOREPO = Path(__file__).parent / "monorepo"


@pytest.mark.cowenv("pytest", project="monorepo/pkg_a")
def test_pkg_a_alone(cowenv):
    cowenv.runpytest("-p", "no:cacheprovider", cwd=MONOREPO / "pkg_a").assert_outcomes(passed=1)
    assert "pkg-b" not in cowenv.template.resolved


@pytest.mark.cowenv("pytest", "monorepo/pkg_a", project="monorepo/pkg_b")
def test_pkg_b_with_its_sibling(cowenv):
    cowenv.runpytest("-p", "no:cacheprovider", cwd=MONOREPO / "pkg_b").assert_outcomes(passed=2)
    assert cowenv.template.resolved["pkg-a"] == "0.1.0"

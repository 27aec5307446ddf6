"""Example 4: an application whose test environment is its ``test`` dependency group, pinned by
its ``uv.lock`` and exported to PEP 751 with
``uv export --format pylock.toml --no-emit-project --no-default-groups --group test -o pylock.toml``.

``lock=`` makes the clone exactly the locked set for this interpreter (markers evaluated, one
wheel chosen, hashes checked), plus the application built from its sources; its own tests then
run in it. With uv installed, ``lock="locked_app/uv.lock", groups=("test",)`` does the same
from the uv.lock itself.
"""

from pathlib import Path

import pytest

PROJECT = Path(__file__).parent / "locked_app"


@pytest.mark.cowenv(lock="locked_app/pylock.toml", project="locked_app")
def test_locked_app_suite(cowenv):
    assert cowenv.template.resolved["attrs"] == "26.1.0"  # the locked version
    result = cowenv.runpytest("-p", "no:cacheprovider", cwd=PROJECT)
    result.assert_outcomes(passed=1)

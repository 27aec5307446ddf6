"""Example 1: a pytest plugin tested alone, in a clean environment.

``project=`` builds the plugin's wheel (once per run, cached while its sources do not change)
into the template. ``runpytest()`` runs the environment's own pytest, which loads only what
is installed there: the plugin through its entry point, none of the outer run's plugins.
For a plugin at your rootdir, write ``project=True``.
"""

from pathlib import Path

import pytest

PROJECT = Path(__file__).parent / "plugin_project"


@pytest.mark.cowenv("pytest", project="plugin_project")
def test_plugin_alone(cowenv):
    result = cowenv.runpytest("-p", "no:cacheprovider", cwd=PROJECT)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["plugins: greeting-0.1.0"])  # and nothing else

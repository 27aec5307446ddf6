"""Example 2: a command-line tool tested through its console script, against two versions of
its dependency. ``cowenv_factory`` gives one private environment per call; each version's
template is built once and cached."""

import pytest


@pytest.mark.parametrize(("attrs_version", "api"), [("21.2.0", "attr"), ("23.2.0", "attrs")])
def test_report_with_each_attrs(cowenv_factory, attrs_version, api):
    env = cowenv_factory(f"attrs=={attrs_version}", project="cli_tool")
    assert env.run("attrs-report").stdout == f"attrs {attrs_version} (api: {api})\n"

"""A template never changes, nor goes, under a process that uses it.

Process A builds and holds a template; process B rebuilds it (``--cowenv-rebuild``) while A
still runs, and gets a newer release under the same key. A's later clones must still
succeed and be the tree that A's ``template.resolved`` describes, with snapshots (btrfs),
per-file clones (XFS) and copies (ext4); the old generation goes once A ends.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from _helpers import internal_frames
from _wheels import make_alpha

from ._reliability import cowenv_cli, inner_env, stray_entries

HOLDER = """
import json, sys
from pytest_cowenv._install import IndexOptions
from pytest_cowenv.session import CowEnvSession, Settings

root, wheels = sys.argv[1:3]
index = IndexOptions((wheels,), None, True)
session = CowEnvSession(Settings(root=root, index=index, pool=0))
spec = session.spec(["alpha"])


def check(env):
    version = env.template.resolved["alpha"]
    site = env.site_packages
    infos = sorted(p.name for p in site.glob("alpha-*.dist-info"))
    module = (site / "alpha" / "__init__.py").read_text()
    script = env.run("alpha", check=False)
    return {
        "resolved": version,
        "dist_infos": infos,
        "module": module,
        "script": script.stdout.strip() or script.stderr.strip(),
        "strategy": env.strategy,
        "template": str(env.template.path),
        "compiled_from": env.template.meta.get("compiled_from"),
    }


env = session.acquire(spec, "first")
first = {"key": env.template.key, "generation": env.template.generation, **check(env)}
print(json.dumps(first), flush=True)
session.release(env)
sys.stdin.readline()  # B rebuilds meanwhile
later = []
for i in range(3):
    try:
        env = session.acquire(spec, f"later-{i}")
        later.append(check(env))
        session.release(env)
    except Exception as exc:
        later.append({"error": f"{type(exc).__name__}: {exc}"})
print(json.dumps(later), flush=True)
session.close()
"""

REBUILDER = """
import pytest


@pytest.mark.cowenv("alpha")
def test_rebuilt(cowenv):
    print("KEY", cowenv.template.key, cowenv.template.path)
    assert cowenv.template.resolved == {"alpha": "2.0"}
    assert cowenv.run("alpha").stdout == "alpha 2.0\\n"
"""


@pytest.mark.parametrize(
    ("fs", "strategy"), [("btrfs", "snapshot"), ("xfs", "clone"), ("ext4", "copy")]
)
def test_a_rebuild_never_changes_a_template_under_its_user(
    pytester: pytest.Pytester,
    real_dir: Callable[[str], Path],
    tmp_path: Path,
    fs: str,
    strategy: str,
    record_property: Callable[[str, object], None],
) -> None:
    cache = real_dir(fs) / "cache"
    wheels = tmp_path / "wheels"
    make_alpha(wheels, "1.0")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(cache), str(wheels)],
        env=inner_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdin is not None and holder.stdout is not None
    try:
        first = json.loads(holder.stdout.readline())
        assert first["strategy"] == strategy and first["resolved"] == "1.0", first
        old = Path(first["template"])

        make_alpha(wheels, "2.0")  # a newer release, same spec: the rebuild installs it
        pytester.makepyfile(REBUILDER)
        result = pytester.runpytest_subprocess(
            "-s", "--cowenv-rebuild", "--cowenv-dir", str(cache),
            "--cowenv-find-links", str(wheels), "--cowenv-offline", "-p", "no:cacheprovider",
        )  # fmt: skip
        out = "\n".join(result.outlines + result.errlines)
        result.assert_outcomes(passed=1)
        assert not internal_frames(out)
        match = re.search(r"KEY (\S+) (\S+)", out)
        assert match, out
        key, new = match.groups()
        assert key == first["key"], "the rebuild was not of the same template"

        # While A runs, clean-up keeps its generation, and `list` says why.
        cowenv_cli(cache, "clean")
        assert old.is_dir(), "clean removed a generation in use"
        leftovers = json.loads(cowenv_cli(cache, "list", "--json"))["leftovers"]

        holder.stdin.write("go on\n")
        holder.stdin.flush()
        later = json.loads(holder.stdout.readline())
    finally:
        holder.stdin.close()
        holder.wait(60)
    assert holder.returncode == 0
    # Every later clone is of A's generation, or of its compiled twin (new templates are
    # compiled behind the tests), and matches what A was told it holds.
    for got in later:
        twin = got.pop("template") != str(old)
        assert got == {
            "resolved": "1.0",
            "dist_infos": ["alpha-1.0.dist-info"],
            "module": "VERSION = '1.0'\n",
            "script": "alpha 1.0",
            "strategy": strategy,
            "compiled_from": first["generation"] if twin else None,
        }, got
    assert new != str(old), "the rebuild replaced the tree in place"
    # A's generation and its compiled twin stay while A runs.
    assert {x["kind"] for x in leftovers} == {"old generation"}, leftovers
    assert str(old) in [x["path"] for x in leftovers], leftovers
    assert all(f"in use by pid {holder.pid}" in x["note"] for x in leftovers), leftovers
    # A has ended: its generations went with it; the newest (B's, compiled) stays, complete.
    assert not old.exists(), "the old generation outlived its last user"
    assert not any(Path(x["path"]).exists() for x in leftovers), leftovers
    trees = [p for p in (cache / "templates").iterdir() if p.is_dir()]
    assert len(trees) == 1 and trees[0].name.startswith(key), trees
    assert int(trees[0].name.rpartition(".")[2]) >= int(Path(new).name.rpartition(".")[2])
    assert Path(f"{trees[0]}.json").is_file()
    assert stray_entries(cache) == []
    record_property("builds", 2)

"""The cache of local projects' wheels (``wheels/<key>/``): one build per project content,
shared by every template that installs it, rebuilt when damaged, pruned with its last
template. Real filesystems, the offline wheelhouse, and a build backend that logs each build."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from _helpers import run_python
from pytest_cowenv import TemplateCache, TemplateSpec, marker
from pytest_cowenv._install import IndexOptions
from pytest_cowenv.cli import main
from pytest_cowenv.errors import CacheDirError, TemplateBuildError
from pytest_cowenv.maintenance import clean_all, list_wheels, open_layout, prune
from pytest_cowenv.store import Layout, prepare_root
from test_template import BACKEND, PYPROJECT

pytestmark = pytest.mark.usefixtures("offline_machine")

LOGGING = """
_build = build_wheel

def build_wheel(*args, **kwargs):
    with open({log!r}, "a") as f:
        f.write("built\\n")
    return _build(*args, **kwargs)
"""


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "builds.log"


@pytest.fixture
def project(tmp_path: Path, log: Path) -> Path:
    """A project whose backend appends a line to ``log`` at each wheel build."""
    path = tmp_path / "proj"
    (path / "src" / "proj").mkdir(parents=True)
    (path / "pyproject.toml").write_text(PYPROJECT)
    backend = textwrap.dedent(BACKEND) + LOGGING.format(log=str(log))
    (path / "backend.py").write_text(backend)
    (path / "src" / "proj" / "__init__.py").write_text("ANSWER = 42\n")
    return path


def builds(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def make_spec(wheelhouse: Path, project: Path, *requirements: str) -> TemplateSpec:
    index = IndexOptions(find_links=(str(wheelhouse),), offline=True)
    return TemplateSpec.create(list(requirements), index=index, project=project)


def entries(layout: Layout) -> list[Path]:
    """The wheel folders (not the locks) under ``wheels/``."""
    return sorted(p for p in layout.wheels.iterdir() if p.is_dir())


def test_templates_of_one_project_build_its_wheel_once(
    root: Path, wheelhouse: Path, project: Path, log: Path
) -> None:
    cache = TemplateCache(prepare_root(root))
    first = cache.get(make_spec(wheelhouse, project, "alpha"))
    second = cache.get(make_spec(wheelhouse, project, "beta"))
    assert first.key != second.key and second.built_now
    assert first.resolved["proj"] == second.resolved["proj"] == "0.1"
    assert builds(log) == 1
    (entry,) = entries(cache.layout)
    assert first.meta["wheels"] == second.meta["wheels"] == [entry.name]
    assert sorted(p.name for p in entry.iterdir()) == ["proj-0.1-py3-none-any.whl", "wheel.json"]

    (project / "src" / "proj" / "__init__.py").write_text("ANSWER = 43\n")
    changed = TemplateCache(prepare_root(root)).get(make_spec(wheelhouse, project, "alpha"))
    assert changed.built_now and builds(log) == 2
    assert len(entries(cache.layout)) == 2 and changed.meta["wheels"] != first.meta["wheels"]
    assert run_python(changed.path, "import proj; print(proj.ANSWER)") == "43"


@pytest.mark.parametrize("damage", ["truncated", "missing", "no record of it"])
def test_a_damaged_wheel_is_rebuilt_not_installed(
    root: Path, wheelhouse: Path, project: Path, log: Path, damage: str
) -> None:
    cache = TemplateCache(prepare_root(root))
    cache.get(make_spec(wheelhouse, project, "alpha"))
    (entry,) = entries(cache.layout)
    wheel = entry / "proj-0.1-py3-none-any.whl"
    if damage == "truncated":
        wheel.chmod(0o644)
        with open(wheel, "r+b") as f:
            f.truncate(wheel.stat().st_size // 2)
    elif damage == "missing":
        wheel.unlink()
    else:
        (entry / "wheel.json").unlink()
    again = cache.get(make_spec(wheelhouse, project, "beta"))
    assert builds(log) == 2 and again.resolved["proj"] == "0.1"
    assert entries(cache.layout) == [entry]
    meta = json.loads((entry / "wheel.json").read_text())
    assert meta["size"] == wheel.stat().st_size


def test_a_failed_build_caches_nothing(root: Path, wheelhouse: Path, project: Path) -> None:
    with open(project / "backend.py", "a") as f:
        f.write("\ndef build_wheel(*args, **kwargs):\n    raise SystemExit('no wheel today')\n")
    cache = TemplateCache(prepare_root(root))
    with pytest.raises(TemplateBuildError, match="building a wheel failed"):
        cache.get(make_spec(wheelhouse, project, "alpha"))
    assert entries(cache.layout) == []
    assert list(cache.layout.tmp.iterdir()) == []


def test_a_wheel_lock_held_too_long_times_out(
    root: Path, wheelhouse: Path, project: Path, log: Path
) -> None:
    cache = TemplateCache(prepare_root(root))
    cache.get(make_spec(wheelhouse, project, "alpha"))
    (entry,) = entries(cache.layout)
    (entry / "wheel.json").unlink()  # no longer sound: the next template rebuilds it, locked
    holder = os.open(cache.layout.wheel_lock(entry.name), os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # as a builder in another process holds it
        waiting = TemplateCache(prepare_root(root), lock_timeout=0.3)
        # The template build reports it as its own failure (a LockTimeoutError is an OSError).
        with pytest.raises(TemplateBuildError) as info:
            waiting.get(make_spec(wheelhouse, project, "beta"))
        lock = cache.layout.wheel_lock(entry.name)
        assert f"building the template failed: wheel of {project}: lock {lock} held by " in str(
            info.value
        )
        assert "another process for more than 0.3 s; wait for that build, stop it, or " in str(
            info.value
        )
    finally:
        os.close(holder)
    assert builds(log) == 1
    again = TemplateCache(prepare_root(root)).get(make_spec(wheelhouse, project, "beta"))
    assert again.built_now and builds(log) == 2  # the lock died with its holder


GET_SCRIPT = """
import json, sys, time
from pytest_cowenv import TemplateCache, TemplateSpec
from pytest_cowenv._install import IndexOptions
from pytest_cowenv.store import prepare_root
root, wheelhouse, project, start_at, req = sys.argv[1:]
index = IndexOptions(find_links=(wheelhouse,), offline=True)
spec = TemplateSpec.create([req], index=index, project=project)
cache = TemplateCache(prepare_root(root))
cache.key(spec)
time.sleep(max(0.0, float(start_at) - time.time()))
template = cache.get(spec)
print(json.dumps([template.built_now, cache.wheels.built]), flush=True)
"""


def test_two_processes_building_templates_of_one_project_build_its_wheel_once(
    root: Path, wheelhouse: Path, project: Path, log: Path
) -> None:
    start_at = str(time.time() + 2.0)  # both past their imports, then asking together
    argv = [sys.executable, "-c", GET_SCRIPT, str(root), str(wheelhouse), str(project), start_at]
    procs = [
        subprocess.Popen([*argv, req], stdout=subprocess.PIPE, text=True)
        for req in ("alpha", "beta")
    ]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert [built for built, _wheels in results] == [True, True]  # two templates
    assert sorted(len(wheels) for _built, wheels in results) == [0, 1]
    assert builds(log) == 1


def test_prune_drops_the_wheels_no_template_lists(
    root: Path, wheelhouse: Path, project: Path, tmp_path: Path
) -> None:
    cache = TemplateCache(prepare_root(root))
    template = cache.get(make_spec(wheelhouse, project, "alpha"))
    cache.close()
    layout = cache.layout
    (kept,) = entries(layout)
    unused = layout.wheel_entry("0123456789abcdef01234567")
    unused.mkdir()
    (unused / "old-1.0-py3-none-any.whl").write_bytes(b"PK")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.whl").write_text("not the cache's")
    planted = layout.wheel_entry("89abcdef0123456789abcdef")
    planted.symlink_to(outside, target_is_directory=True)
    mine = layout.wheels / "notes"
    mine.mkdir()

    assert [(w.key, w.templates) for w in list_wheels(layout)] == [
        (planted.name, 0),
        (unused.name, 0),
        (kept.name, 1),
    ]
    report = prune(layout)
    removed = sorted(item.path for item in report.removed)
    assert removed == sorted([str(unused), str(planted)])
    assert "wheel old-1.0-py3-none-any.whl" in {item.what for item in report.removed}
    assert (outside / "precious.whl").read_text() == "not the cache's"  # the link went, alone
    assert entries(layout) == [kept, mine]

    report = prune(layout, everything=True)  # the template goes, and its wheel with it
    assert {str(template.path), str(kept)} <= {item.path for item in report.removed}
    assert entries(layout) == [mine]
    mine.rmdir()
    clean_all(layout)  # the locks go with the rest
    assert not root.exists()


def test_list_shows_the_wheels_and_their_users(
    root: Path, wheelhouse: Path, project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = TemplateCache(prepare_root(root))
    cache.get(make_spec(wheelhouse, project, "alpha"))
    cache.close()
    capsys.readouterr()
    assert main(["list", "--dir", str(root)]) == 0
    assert "wheel proj-0.1-py3-none-any.whl: " in capsys.readouterr().out
    assert main(["list", "--json", "--dir", str(root)]) == 0
    (wheel,) = json.loads(capsys.readouterr().out)["wheels"]
    assert (wheel["file"], wheel["templates"]) == ("proj-0.1-py3-none-any.whl", 1)


def test_clean_all_removes_the_wheels(root: Path, wheelhouse: Path, project: Path) -> None:
    cache = TemplateCache(prepare_root(root))
    cache.get(make_spec(wheelhouse, project, "alpha"))
    cache.close()
    layout = open_layout(root)
    assert layout is not None
    clean_all(layout)
    assert not root.exists()


def test_wheels_dir_as_a_link_is_refused(
    root: Path, wheelhouse: Path, project: Path, tmp_path: Path
) -> None:
    layout = prepare_root(root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    layout.wheels.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(CacheDirError, match="wheels/ is not a directory"):
        TemplateCache(layout).get(make_spec(wheelhouse, project, "alpha"))
    assert list(elsewhere.iterdir()) == []
    assert prune(layout).removed == [] and list(elsewhere.iterdir()) == []


def test_what_rm_rf_leaves_of_wheels_is_recognised(tmp_path: Path) -> None:
    key = "0123456789abcdef01234567"
    (tmp_path / "templates" / f"{key}.1").mkdir(parents=True)  # what rm -rf cannot remove
    (tmp_path / "wheels" / key).mkdir(parents=True)
    (tmp_path / "wheels" / f"{key}.lock").touch()
    assert marker.classify(str(tmp_path)).kind == "remains"
    (tmp_path / "wheels" / "notes.txt").touch()
    assert marker.classify(str(tmp_path)).kind == "foreign"  # not a name of ours

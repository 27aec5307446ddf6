"""The command line, run for real in subprocesses against a private cache directory.

Templates are built offline from the tiny wheels of ``_wheels.py``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _helpers import unprotect_templates
from _wheels import standard_wheelhouse
from conftest import skip_without_uv
from pytest_cowenv._atomic import hold_in_use
from pytest_cowenv._owner import current
from pytest_cowenv.fs import fs_type
from pytest_cowenv.maintenance import is_held
from pytest_cowenv.store import prepare_root

README = Path(__file__).resolve().parent.parent / "README.md"
DAY = 86400


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m pytest_cowenv ARGS`` with a machine-independent environment."""
    full = {k: v for k, v in os.environ.items() if k not in ("PIP_FIND_LINKS", "PYTEST_COWENV_DIR")}
    full["PIP_CONFIG_FILE"] = os.devnull
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pytest_cowenv", *args],
        capture_output=True,
        text=True,
        env=full,
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )


def cli_json(*args: str, env: dict[str, str] | None = None) -> Any:
    proc = cli(*args, "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return standard_wheelhouse(tmp_path_factory.mktemp("wheels"))


@pytest.fixture
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A cache root on btrfs when there is one (read-only subvolume templates), else tmp."""
    try:
        base: Path = request.getfixturevalue("btrfs_dir")
    except pytest.skip.Exception:
        base = tmp_path
    yield base / "cache"
    unprotect_templates(base / "cache")  # read-only subvolumes on btrfs: removable again


def build(cache: Path, wheels: Path, *specs: str) -> dict[str, Any]:
    out: dict[str, Any] = cli_json(
        "build", "--dir", str(cache), "--offline", "--find-links", str(wheels), *specs
    )
    return out


@pytest.fixture
def holder() -> Iterator[Any]:
    """``holder(code, path)`` runs ``code`` in another process until the test ends."""
    procs: list[subprocess.Popen[str]] = []

    def start(code: str, path: Path) -> subprocess.Popen[str]:
        script = f"import sys\nfrom pathlib import Path\n{code}\nprint('held', flush=True)\n"
        script += "sys.stdin.read()\n"
        proc = subprocess.Popen(
            [sys.executable, "-c", script, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        stop(proc)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


HOLD_IN_USE = "from pytest_cowenv._atomic import hold_in_use\nf = hold_in_use(Path(sys.argv[1]))"
HOLD_BUILD_LOCK = "import filelock\nlock = filelock.FileLock(sys.argv[1])\nlock.acquire()"


# -- info ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fstype", "strategy"), [("btrfs", "snapshot"), ("xfs", "clone"), ("ext4", "copy")]
)
def test_info_names_the_strategy_auto_picks(
    request: pytest.FixtureRequest, fstype: str, strategy: str
) -> None:
    where = request.getfixturevalue(f"{fstype}_dir") / "cache"
    data = cli_json("info", "--dir", str(where))
    assert (data["dir"], data["fs"], data["strategy"]) == (str(where), fstype, strategy)
    assert data["exists"] is False and not where.exists()  # info never creates the cache
    assert data["capabilities"]["reflink"] is (fstype != "ext4")
    assert data["capabilities"]["snapshot"] is (fstype == "btrfs")
    assert data["installer"].startswith(("uv", "pip"))
    assert data["python"]["executable"] == sys.executable
    text = cli("info", "--dir", str(where)).stdout
    assert f"strategy:   {strategy}: " in text
    if fstype == "ext4":
        assert "ext4 cannot clone (" in data["reason"]


def test_cache_dir_comes_from_option_then_env_var(tmp_path: Path) -> None:
    env = {"PYTEST_COWENV_DIR": str(tmp_path / "from-env")}
    assert cli_json("info", env=env)["dir"] == str(tmp_path / "from-env")
    given = str(tmp_path / "given")
    assert cli_json("--dir", given, "info", env=env)["dir"] == given  # before the command
    assert cli_json("info", "--dir", given, env=env)["dir"] == given  # or after it


# -- build and list ------------------------------------------------------------------------


def test_build_then_list(cache: Path, wheels: Path) -> None:
    first = build(cache, wheels, "alpha==1.0")
    assert first["built"] is True and first["resolved"] == {"alpha": "1.0"}
    again = build(cache, wheels, "alpha==1.0")
    assert again["key"] == first["key"] and again["built"] is False
    assert again["seconds"] < first["seconds"]

    listing = cli_json("list", "--dir", str(cache))
    (entry,) = listing["templates"]
    assert entry["key"] == first["key"] and entry["describe"] == "alpha==1.0"
    assert entry["resolved"] == {"alpha": "1.0"} and entry["in_use"] is False
    assert entry["files"] > 10 and entry["bytes"] > 0 and entry["disk_bytes"] > 0
    assert time.time() - entry["last_used"] < 300
    if fs_type(cache) == "btrfs" and shutil.which("btrfs"):  # measured by `btrfs fi du`
        assert entry["exclusive_bytes"] is not None and entry["shared_bytes"] is not None
    else:
        assert entry["exclusive_bytes"] is None and entry["shared_bytes"] is None
    assert listing["leftovers"] == []

    text = cli("list", "--dir", str(cache)).stdout
    assert f"{first['key']}  alpha==1.0" in text and "resolved: alpha 1.0" in text
    assert "1 template, " in text


def test_plugin_reuses_a_template_built_by_the_cli(
    cache: Path, wheels: Path, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    build(cache, wheels, "gamma")
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.cowenv("gamma")
        def test_it(cowenv):
            cowenv.run("python", "-c", "import gamma")
        """
    )
    result = pytester.runpytest_subprocess(
        f"--cowenv-dir={cache}", f"--cowenv-find-links={wheels}", "--cowenv-offline"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*templates reused: 1: gamma*"])


def test_list_without_a_cache(tmp_path: Path) -> None:
    proc = cli("list", "--dir", str(tmp_path / "none"))
    assert proc.returncode == 0 and "no cache at" in proc.stdout
    assert not (tmp_path / "none").exists()


# -- prune ---------------------------------------------------------------------------------


def test_prune_all_skips_a_template_in_use(cache: Path, wheels: Path, holder: Any) -> None:
    alpha = build(cache, wheels, "alpha==1.0")
    gamma = build(cache, wheels, "gamma")
    templates = cache / "templates"
    user = holder(HOLD_IN_USE, Path(gamma["path"] + ".inuse"))

    assert [t["in_use"] for t in cli_json("list", "--dir", str(cache))["templates"]] == [
        False,
        True,
    ]
    report = cli_json("prune", "--all", "--dir", str(cache))
    assert [r["path"] for r in report["removed"]] == [alpha["path"], str(cache / "pyc")]
    assert report["removed"][1]["what"] == "unused bytecode (2 entries)"  # alpha's, not gamma's
    (skipped,) = report["skipped"]
    assert skipped["path"] == gamma["path"]
    assert skipped["reason"] == f"in use by pid {user.pid}"
    assert sorted(p.name for p in templates.iterdir() if p.name.startswith(alpha["key"])) == [
        f"{alpha['key']}.lock"  # the build lock stays
    ]
    assert Path(gamma["path"] + ".json").exists() and Path(gamma["path"]).is_dir()

    stop(user)
    lock = (templates / f"{gamma['key']}.lock").stat()
    text = cli("prune", "--all", "--dir", str(cache)).stdout
    assert f"removed template gamma: {gamma['path']}" in text
    # Only the build locks stay, the very same files: a builder waiting on one never ends
    # up holding a file that is gone while another locks a new one.
    assert sorted(p.name for p in templates.iterdir()) == sorted(
        f"{t['key']}.lock" for t in (alpha, gamma)
    )
    assert os.path.samestat((templates / f"{gamma['key']}.lock").stat(), lock)
    assert cli_json("clean", "--dir", str(cache))["removed"] == []


def test_prune_older_than(cache: Path, wheels: Path) -> None:
    old = build(cache, wheels, "alpha==1.0")
    new = build(cache, wheels, "gamma")
    meta = Path(old["path"] + ".json")
    forty_days_ago = time.time() - 40 * DAY
    os.utime(meta, (forty_days_ago, forty_days_ago))

    kept = cli_json("prune", "--older-than", "50", "--dir", str(cache))
    assert kept == {"dir": str(cache), "removed": [], "skipped": []}
    report = cli_json("prune", "--dir", str(cache))  # default: 30 days
    assert [r["path"] for r in report["removed"]] == [old["path"], str(cache / "pyc")]
    assert not meta.exists() and not Path(old["path"]).exists()
    assert [t["key"] for t in cli_json("list", "--dir", str(cache))["templates"]] == [new["key"]]


def test_a_user_waiting_during_prune_locks_the_new_file(tmp_path: Path) -> None:
    """The in-use file a pruner unlinks is never the one a waiting user ends up holding."""
    import fcntl

    path = tmp_path / "k.inuse"
    with open(path, "ab") as pruner:
        fcntl.flock(pruner.fileno(), fcntl.LOCK_EX)
        got: list[Any] = []
        waiter = threading.Thread(target=lambda: got.append(hold_in_use(path)))
        waiter.start()
        time.sleep(0.2)  # the waiter blocks on the old file
        path.unlink()
    waiter.join(timeout=10)
    (f,) = got
    assert os.path.samestat(os.fstat(f.fileno()), path.stat())
    assert is_held(path)
    f.close()


# -- clean ---------------------------------------------------------------------------------


def test_clean_removes_only_what_dead_processes_left(tmp_path: Path, holder: Any) -> None:
    root = prepare_root(tmp_path / "cache").root  # a cache of ours: marked
    me = current()
    dead = me._replace(pid=999999, ticks=1).token()  # this host, boot and namespace; gone
    dead_run = _tree(root / "clones" / f"run-{dead}-abcdef" / "env-1")
    live_run = _tree(root / "clones" / f"run-{me.token()}-abcdef" / "env-1")
    dead_build = _tree(root / "tmp" / f"{'0123abcd' * 3}.{dead}.abcd1234" / "env")
    live_build = _tree(root / "tmp" / f"{'0123abcd' * 3}.{me.token()}.abcd1234" / "env")
    orphan = _tree(root / "templates" / f"{'feedface' * 3}.1")
    building = _tree(root / "templates" / f"{'beefbeef' * 3}.1")
    kept = _tree(root / "kept" / f"run-{dead}-abcdef-env-1")
    holder(HOLD_BUILD_LOCK, root / "templates" / f"{'beefbeef' * 3}.lock")

    kinds = {x["path"]: x["kind"] for x in cli_json("list", "--dir", str(root))["leftovers"]}
    assert kinds == {
        str(dead_run.parent): "stale run",
        str(dead_build.parent): "build dir",
        str(live_build.parent): "build dir",
        str(orphan): "incomplete template",
        str(building): "incomplete template",
        str(kept): "kept",
    }

    report = cli_json("clean", "--dir", str(root))
    assert sorted(r["path"] for r in report["removed"]) == sorted(
        [str(dead_run.parent), str(dead_build.parent), str(orphan)]
    )
    assert [(s["path"], s["reason"]) for s in report["skipped"]] == [
        (str(building), "being built by another process")
    ]
    for gone in (dead_run, dead_build, orphan):
        assert not gone.exists()
    for there in (live_run, live_build, building, kept):
        assert there.is_dir()

    text = cli("clean", "--kept", "--dir", str(root)).stdout
    assert f"removed kept clone: {kept}" in text and not kept.exists()


def _tree(path: Path) -> Path:
    (path / "lib").mkdir(parents=True)
    (path / "lib" / "mod.py").write_text("x = 1\n")
    return path


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["prune", "--older-than", "-1"], "'-1' is not a number of days"),
        (["prune", "--all", "--older-than", "3"], "not allowed with argument --all"),
        (["build", "--bogus"], "unrecognized arguments: --bogus"),
        (["list", "--dir"], "expected one argument"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str) -> None:
    proc = cli(*args)
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("pytest-cowenv") and "error: " in line and message in line


def test_an_invalid_requirement_is_a_usage_error(tmp_path: Path) -> None:
    proc = cli("build", "--dir", str(tmp_path / "c"), "alpha>>>1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("pytest-cowenv build: error: 'alpha>>>1': invalid requirement")


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_a_failed_build_exits_1_with_the_installers_words(
    tmp_path: Path, wheels: Path, installer: str
) -> None:
    if installer == "uv":
        skip_without_uv()
    env = {"PYTEST_COWENV_NO_UV": "1"} if installer == "pip" else {}
    cache, links = str(tmp_path / "c"), str(wheels)
    proc = cli("build", "--dir", cache, "--offline", "--find-links", links, "nosuchpkg", env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith("pytest-cowenv build: error: nosuchpkg: installing failed: ")
    words = (
        "not found in the provided package locations"
        if installer == "uv"
        else ("No matching distribution found for nosuchpkg")
    )
    assert words in proc.stderr


def test_an_unusable_cache_dir_exits_1_naming_the_clis_own_option(tmp_path: Path) -> None:
    proc = cli("build", "--dir", str(tmp_path / "no" / "such"), "alpha")
    assert proc.returncode == 1
    assert proc.stderr == f"pytest-cowenv build: error: cache dir {tmp_path / 'no' / 'such'}: " + (
        f"its parent {tmp_path / 'no'} does not exist; create it, or choose another cache "
        "directory (--dir)\n"
    )  # the core names no flag: not pytest's --cowenv-dir


# -- the README and the console script -----------------------------------------------------


def readme_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\$ (pytest-cowenv .*)$", section, flags=re.MULTILINE)


def test_readme_examples_run(tmp_path: Path, wheels: Path) -> None:
    commands = readme_commands()
    assert len(commands) >= 6
    (tmp_path / "wheels").symlink_to(wheels)
    env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
    env.update(PIP_CONFIG_FILE=os.devnull, PYTEST_COWENV_DIR=str(tmp_path / "cache"))
    outputs = {}
    for command in commands:
        argv = shlex.split(command)
        proc = subprocess.run(
            [sys.executable, "-m", "pytest_cowenv", *argv[1:]],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, f"{command}: {proc.stderr}"
        outputs[command] = proc.stdout
    # the template the README's `build` made, its bytecode, the listing of its `versions`
    assert "pruned: 3 removed (" in outputs["pytest-cowenv prune --all"]
    assert commands[-1] == "pytest-cowenv clean --all"
    assert "removed bytecode store" in proc.stdout
    assert not (tmp_path / "cache").exists()


def test_console_script_entry_point() -> None:
    from importlib.metadata import distribution

    points = distribution("pytest-cowenv").entry_points  # entry_points(group=) is 3.10+
    scripts = {e.name: e.value for e in points if e.group == "console_scripts"}
    assert scripts.get("pytest-cowenv") == "pytest_cowenv.cli:main"

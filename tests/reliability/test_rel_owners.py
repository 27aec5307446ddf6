"""Only provably dead owners lose their folders.

Two containers sharing a cache volume (both pytest as PID 1), or one NFS home used from two
hosts, must never delete each other's live run and build folders; nor may a clock step make
a live build look abandoned. Each test pairs what must survive with a control that must go
(a folder of this host, boot and namespace whose process is gone), so that it also proves
the clean-up still cleans.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from _helpers import wait_for

from ._reliability import cowenv_cli, inner_env

KEY = "0123abcd" * 3  # the shape of a template key

# A fresh process's session start (the plugin's, minus pytest): it cleans up what it may.
SESSION_START = """
import sys
from pytest_cowenv.session import CowEnvSession, Settings
CowEnvSession(Settings(root=sys.argv[1])).layout
"""

# Hold a directory's lock, as its live owner does, until stdin closes.
HOLD_DIR = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""


def _start_session(root: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", SESSION_START, str(root)],
        env=inner_env(),
        check=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def _plant(root: Path, token: str, tag: str) -> list[Path]:
    """A run folder, a build folder and an unfinished metadata file of the owner ``token``."""
    run = root / "clones" / f"run-{token}-{tag}"
    (run / "pool" / "env-1" / "bin").mkdir(parents=True)
    build = root / "tmp" / f"{KEY}.{token}.{tag}{tag[:2]}"
    (build / "env" / "lib").mkdir(parents=True)
    unfinished = root / "templates" / f".{KEY}.1.json.{token}.tmp"
    unfinished.write_text("{")
    return [run, build, unfinished]


def test_folders_of_other_hosts_boots_and_namespaces(
    real_dir: Callable[[str], Path], record_property: Callable[[str, object], None]
) -> None:
    from pytest_cowenv._owner import current
    from pytest_cowenv.store import prepare_root

    root = prepare_root(real_dir("ext4") / "cache").root
    me = current()
    other_boot = "f" * 16 if me.boot != "f" * 16 else "e" * 16
    live_pid = os.getpid()  # a pid that runs here: it must not matter for the others
    ticks = me.ticks
    other_host = me._replace(pid=live_pid + 1, boot=other_boot, host="0badc0de")
    # A container on this kernel: its pid 1 is not ours. Its lock is held (by a helper
    # process, as the container's pytest would hold it).
    other_ns = me._replace(pid=1, ticks=ticks + 1, pidns=me.pidns + 1)
    survivors = _plant(root, other_host.token(), "aaaaaa")
    in_namespace = _plant(root, other_ns.token(), "bbbbbb")
    holders = [
        subprocess.Popen(
            [sys.executable, "-c", HOLD_DIR, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for path in in_namespace[:2]
    ]
    # Controls: gone for sure. Another boot of this very host; this boot, namespace and
    # host with a pid that is gone; a container whose lock nobody holds any more.
    unlocked_ns = _plant(root, other_ns._replace(pidns=me.pidns + 2).token(), "eeeeee")
    gone = [
        *_plant(root, me._replace(boot=other_boot).token(), "cccccc"),
        *_plant(root, me._replace(pid=999_999_999, ticks=1).token(), "dddddd"),
        *unlocked_ns[:2],
    ]
    # An unfinished file has no lock: from another namespace, nothing proves its writer gone.
    survivors.append(unlocked_ns[2])
    try:
        for holder in holders:
            assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        survivors += in_namespace
        _start_session(root)
        cowenv_cli(root, "clean")
        cowenv_cli(root, "list")
        lost = [str(p.relative_to(root)) for p in survivors if not os.path.lexists(p)]
        assert lost == [], "folders of owners not proven dead were removed"
        left = [str(p.relative_to(root)) for p in gone if os.path.lexists(p)]
        assert left == [], "folders of owners proven dead were kept"
    finally:
        for holder in holders:
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(30)
    record_property("owners_survived", len(survivors))
    record_property("owners_reaped", len(gone))


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare"
)
def test_live_run_in_another_pid_namespace_survives(real_dir: Callable[[str], Path]) -> None:
    """A real second PID namespace (as a container is): its pytest is pid 1 there, and the
    pid 1 of ours is another process entirely."""
    root = real_dir("btrfs") / "cache"
    inner = """
import os, sys
from pytest_cowenv.session import CowEnvSession, Settings
session = CowEnvSession(Settings(root=sys.argv[1], pool=0))
print(os.getpid(), session.run_dir, flush=True)
sys.stdin.read()
os._exit(0)  # gone without tidying up, as a killed container would be
"""
    cmd = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", inner, str(root)]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=inner_env()
    )
    try:
        assert proc.stdout is not None
        pid, run = proc.stdout.readline().split()
        assert pid == "1", "not a second PID namespace"
        _start_session(root)
        cowenv_cli(root, "clean")
        assert Path(run).is_dir(), "the live run folder of another PID namespace was removed"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)
    # Now it is gone, and its lock with it: the next clean-up may and does remove its folder.
    cowenv_cli(root, "clean")
    assert not Path(run).exists()


BACKEND = """
import os, pathlib, sys, time
sys.path.insert(0, {wheels!r})
from _wheels import make_wheel

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    gate = pathlib.Path({gate!r})
    (gate.parent / "building").touch()
    deadline = time.monotonic() + 300
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return make_wheel(pathlib.Path(wheel_directory), "slowproj", "1.0").name
"""


def test_live_build_survives_a_clock_step(
    real_dir: Callable[[str], Path], tmp_path: Path, wheelhouse: Path
) -> None:
    """A build waits (its project's build backend blocks); meanwhile the clock jumps years
    ahead, which to a wall-clock rule makes the build folder older than its process: the
    clean-up of another process, and `clean`, must leave the build alone."""
    root = real_dir("xfs") / "cache"
    project = tmp_path / "slowproj"
    project.mkdir()
    gate = tmp_path / "gate"
    wheels_dir = str(Path(__file__).resolve().parents[1])
    (project / "backend.py").write_text(BACKEND.format(wheels=wheels_dir, gate=str(gate)))
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
        '[project]\nname = "slowproj"\nversion = "1.0"\n'
    )
    cmd = [sys.executable, "-m", "pytest_cowenv", "build", "--dir", str(root), "--offline"]
    cmd += ["--find-links", str(wheelhouse), "--project", str(project), "--json"]
    build = subprocess.Popen(
        cmd, env=inner_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: (tmp_path / "building").exists() or build.poll() is not None, 240,
                 "the build to reach the project's backend")  # fmt: skip
        assert build.poll() is None, "the build ended early"
        folders = sorted((root / "tmp").iterdir())  # the template's, and its wheel's
        assert len(folders) == 2
        # A forward step of the wall clock, seen from the folders: they are decades old now.
        for folder in folders:
            for path in [folder, *folder.rglob("*")]:
                os.utime(path, (0, 0), follow_symlinks=False)
        _start_session(root)
        cowenv_cli(root, "clean")
        assert all(f.is_dir() for f in folders), "a live build folder was removed"
    finally:
        gate.touch()
        out, _ = build.communicate(timeout=300)
    assert build.returncode == 0, out
    assert list((root / "tmp").iterdir()) == []

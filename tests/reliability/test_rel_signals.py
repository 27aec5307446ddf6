"""Signals: SIGKILL of a whole run (process group) at random points, and Ctrl-C.

SIGKILL gives the plugin no chance to tidy up: what must hold is that the next run succeeds
(reusing a complete template or rebuilding a half-made one, never cloning a half template)
and that ``pytest-cowenv clean`` (or the next run's start-up clean-up) leaves no stray
directory. Ctrl-C must stop a run within seconds and leave no clone.

Delays are random; the seed is printed on failure (set RELIABILITY_SEED to replay a run).
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from subprocess import PIPE
from typing import Callable

import pytest

from _helpers import wait_for

from ._reliability import (
    acquire_once,
    cowenv_cli,
    inner_env,
    kill_group,
    output_of,
    reap_group,
    spawn_pytest,
    stray_entries,
    template_dirs,
)

SUITE = """
import os
import time
import pytest

SPEC = os.environ["SPEC"].split()


@pytest.mark.cowenv(*SPEC)
@pytest.mark.parametrize("i", range(int(os.environ.get("TESTS", "200"))))
def test_env(cowenv, i):
    assert cowenv.site_packages.is_dir()
    if os.environ.get("STARTED"):
        open(os.environ["STARTED"], "a").close()
    nap(float(os.environ.get("NAP", "0")))


def nap(seconds):
    # Short sleeps: a Ctrl-C caught just before one long sleep began would not interrupt it
    # (CPython looks at caught signals when a sleep is interrupted), and the run would sleep
    # it out.
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(max(0.0, min(0.1, end - time.monotonic())))
"""

# A distinct spec per build-kill repetition: every kill meets a cold template, and the cache
# fills up with templates and leftovers the way a real one does.
BUILD_SPECS = [
    "alpha==1.0",
    "alpha==2.0",
    "beta",
    "gamma",
    "alpha==1.0 gamma",
    "alpha==2.0 gamma",
    "beta gamma",
    "alpha==2.0 beta",
    "alpha==1.0 beta",
    "alpha==2.0 beta gamma",
    "alpha==1.0 beta gamma",
    "alpha>=1",
]
REPS = 5  # kills during cloning, per filesystem
# Kills during builds, per installer: pip builds are slower, so fewer of them. 20 in all.
BUILD_REPS = {"uv": 7, "pip": 3}


def _seed() -> int:
    return int(os.environ.get("RELIABILITY_SEED") or time.time_ns() % 2**32)


def _build_dir(cache: Path) -> object:
    tmp = cache / "tmp"
    return tmp.is_dir() and any(tmp.iterdir())


def _run_dir(cache: Path) -> object:
    clones = cache / "clones"
    return clones.is_dir() and any(clones.iterdir())


def _manifest_problems(template: Path) -> list[str]:
    """How the tree differs from the manifest in its metadata (what the plugin checks)."""
    from pytest_cowenv.clone import walk_tree

    manifest = json.loads(template.with_name(f"{template.name}.json").read_text())["manifest"]
    listing = walk_tree(template).listing()
    problems = []
    for part in ("dirs", "files", "links"):
        have = {json.dumps(e) for e in listing[part]}
        want = {json.dumps(e) for e in manifest[part]}
        problems += [f"{part} on disk, not in manifest: {e}" for e in sorted(have - want)]
        problems += [f"{part} in manifest, not on disk: {e}" for e in sorted(want - have)]
    return problems


def _describe(cache: Path, left: list[str]) -> str:
    """What is left, and what is inside it (modes, btrfs subvolumes), for a failure message."""
    lines = []
    for rel in left:
        top = cache / rel.split(" ")[0]
        for path in [top, *sorted(top.rglob("*"))][:40] if top.is_dir() else [top]:
            st = path.lstat()
            sub = " subvolume" if st.st_ino == 256 else ""
            lines.append(f"  {path.relative_to(cache)} {stat.filemode(st.st_mode)}{sub}")
    return "\n" + "\n".join(lines)


def _wait_until_building(cache: Path, run: subprocess.Popen[bytes]) -> None:
    wait_for(lambda: _build_dir(cache) or run.poll() is not None, 120, "a build to start")


def _wait_until_cloning(cache: Path, run: subprocess.Popen[bytes]) -> None:
    wait_for(lambda: _run_dir(cache) or run.poll() is not None, 120, "cloning to start")


def _check_recovery(
    cache: Path, wheelhouse: Path, spec: str, rep: int, env: dict[str, str], context: str
) -> tuple[str, float]:
    """After a kill: the next user of the cache succeeds and nothing stray remains.

    Even repetitions run `clean` first (it must cope with a dead run's leftovers, then the next
    run finds a tidy cache); odd ones let the next run's start-up clean-up meet them, then
    `clean` must find nothing it cannot handle."""
    said = ""
    if rep % 2 == 0:
        said = cowenv_cli(cache, "clean", env=env)
        for template in template_dirs(cache):  # `clean` leaves complete templates alone
            assert _manifest_problems(template) == [], f"{context}: after clean: {said}"
    key, created, _ = acquire_once(cache, wheelhouse, *spec.split(), env=env)
    if rep % 2 == 1:
        said = cowenv_cli(cache, "clean", env=env)
    left = stray_entries(cache)
    assert left == [], f"{context}: left after the next run: {_describe(cache, left)}\n{said}"
    return key, created


@pytest.mark.slow
@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_sigkill_during_template_build(
    pytester: pytest.Pytester,
    real_dir: Callable[[str], Path],
    offline: list[str],
    wheelhouse: Path,
    installer: str,
    record_property: Callable[[str, object], None],
) -> None:
    seed = _seed()
    rng = random.Random(seed)
    cache = real_dir("btrfs")
    extra = {"PYTEST_COWENV_NO_UV": "1"} if installer == "pip" else {}
    pytester.makepyfile(SUITE)
    first = 0 if installer == "uv" else BUILD_REPS["uv"]
    specs = BUILD_SPECS[first : first + BUILD_REPS[installer]]
    landed = {"before metadata": 0, "after metadata": 0}
    for rep, spec in enumerate(specs):
        env = inner_env(SPEC=spec, TESTS="3", **extra)
        run = spawn_pytest(["--cowenv-dir", str(cache), *offline], pytester.path, env)
        _wait_until_building(cache, run)
        delay = rng.uniform(0.0, 3.0)
        time.sleep(delay)
        kill_group(run)
        code = reap_group(run)
        context = f"seed {seed}, rep {rep}, spec {spec!r}, delay {delay:.2f} s, exit {code}"
        assert code in (-signal.SIGKILL, 0), f"{context}\n{output_of(run)}"
        complete = [t for t in template_dirs(cache) if (t.parent / f"{t.name}.json").exists()]
        for template in complete:  # metadata is written last: it must describe a whole tree
            assert _manifest_problems(template) == [], context
        landed["after metadata" if len(complete) > rep else "before metadata"] += 1
        killed_at = time.time()
        _, created = _check_recovery(cache, wheelhouse, spec, rep, inner_env(**extra), context)
        # Reused only if the killed run had finished the template; else rebuilt afterwards.
        rebuilt = created > killed_at
        assert rebuilt == (len(complete) == rep), f"{context}: rebuilt={rebuilt}"
    final = spawn_pytest(
        ["--cowenv-dir", str(cache), *offline],
        pytester.path,
        inner_env(SPEC=specs[0], TESTS="3", **extra),
    )
    assert reap_group(final, timeout=300) == 0, output_of(final)
    assert stray_entries(cache) == []
    metas = [json.loads(t.with_name(f"{t.name}.json").read_text()) for t in template_dirs(cache)]
    described = sorted((m["describe"], m["key"], m["created"], repr(m["spec"])) for m in metas)
    assert len(metas) == len(specs), "one template per spec expected:\n" + "\n".join(
        map(str, described)
    )
    record_property("faults", len(specs))
    record_property("kills_landed", repr(landed))


@pytest.mark.slow
@pytest.mark.parametrize("fs", ["btrfs", "xfs"])
def test_sigkill_during_cloning(
    pytester: pytest.Pytester,
    real_dir: Callable[[str], Path],
    offline: list[str],
    wheelhouse: Path,
    fs: str,
    record_property: Callable[[str, object], None],
) -> None:
    seed = _seed()
    rng = random.Random(seed)
    cache = real_dir(fs)
    spec = "alpha==1.0 gamma"
    key, created, _ = acquire_once(cache, wheelhouse, *spec.split())  # a warm template
    pytester.makepyfile(SUITE)
    for rep in range(REPS):
        workers = ["-n", "2"] if rep % 2 else []
        env = inner_env(SPEC=spec, TESTS="400")
        run = spawn_pytest([*workers, "--cowenv-dir", str(cache), *offline], pytester.path, env)
        _wait_until_cloning(cache, run)
        delay = rng.uniform(0.0, 1.5)
        time.sleep(delay)
        kill_group(run)
        code = reap_group(run)
        context = f"seed {seed}, rep {rep}, workers {workers}, delay {delay:.2f} s, exit {code}"
        assert code in (-signal.SIGKILL, 0), f"{context}\n{output_of(run)}"
        again = _check_recovery(cache, wheelhouse, spec, rep, inner_env(), context)
        assert again == (key, created), f"{context}: the warm template was rebuilt"
    record_property("faults", REPS)


PLAIN = """
import os, time

def test_nap():
    open(os.environ["STARTED"], "a").close()
    for _ in range(1200):  # short sleeps, as in SUITE's nap()
        time.sleep(0.1)
"""
_baselines: dict[int, float] = {}
XDIST_ESCALATES_AFTER = 5  # seconds before execnet interrupts a worker that is still exiting


def _interrupt(run: subprocess.Popen[bytes]) -> tuple[int, float]:
    """Ctrl-C to the run's process group; its exit code and how long it took to stop."""
    assert run.poll() is None, output_of(run)
    sent = time.monotonic()
    os.killpg(run.pid, signal.SIGINT)
    try:
        run.wait(timeout=60)
    finally:
        code = reap_group(run)
    return code, time.monotonic() - sent


def _pytest_own_stop_time(tmp: Path, workers: int) -> float:
    """How long pytest itself takes to stop after Ctrl-C here (no cowenv): on a loaded
    2-core machine, formatting the KeyboardInterrupt report alone can take seconds."""
    if workers not in _baselines:
        (tmp / "test_plain.py").write_text(PLAIN)
        started = tmp / "plain-started"
        args = ["-n", str(workers)] if workers else []
        run = spawn_pytest([*args, "test_plain.py"], tmp, inner_env(STARTED=str(started)))
        wait_for(lambda: started.exists() or run.poll() is not None, 120, "a test to start")
        _baselines[workers] = _interrupt(run)[1]
    return _baselines[workers]


@pytest.mark.parametrize(
    ("phase", "workers"),
    [("build", 0), ("build", 2), ("test", 2)],
    ids=["build-one-process", "build-xdist", "test-xdist"],
)
def test_ctrl_c_stops_promptly_and_leaves_no_clone(
    pytester: pytest.Pytester,
    real_dir: Callable[[str], Path],
    offline: list[str],
    wheelhouse: Path,
    phase: str,
    workers: int,
    tmp_path_factory: pytest.TempPathFactory,
    record_property: Callable[[str, object], None],
) -> None:
    cache = real_dir("xfs")
    spec = "alpha==2.0 beta"
    started = pytester.path / "started"
    if phase == "test":
        acquire_once(cache, wheelhouse, *spec.split())
    pytester.makepyfile(SUITE)
    env = inner_env(SPEC=spec, TESTS="4", NAP="120", STARTED=str(started))
    args = ["-n", str(workers)] if workers else []
    run = spawn_pytest([*args, "--cowenv-dir", str(cache), *offline], pytester.path, env)
    if phase == "build":
        _wait_until_building(cache, run)
        time.sleep(random.uniform(0.1, 1.0))
    else:
        wait_for(lambda: started.exists() or run.poll() is not None, 120, "a test to start")
    code, took = _interrupt(run)
    out = output_of(run)
    assert code == pytest.ExitCode.INTERRUPTED, out
    baseline = _pytest_own_stop_time(tmp_path_factory.mktemp("plain"), workers)
    # What the plugin must never do is wait: on a lock (minutes), a pool thread (10 s), a
    # child that ignores SIGINT. Formatting the interrupt report is pytest's own cost, and
    # grows with the depth of the interrupted stack: allow for it, not for a wait.
    limit = 1.5 * baseline + 5
    assert took < limit, f"stopping took {took:.1f} s (pytest alone: {baseline:.1f} s)"
    assert "passed" not in out.splitlines()[-1]
    left = stray_entries(cache)
    if not (workers and took >= XDIST_ESCALATES_AFTER):
        assert left == [], f"left after Ctrl-C ({took:.1f} s): {left}\n{out}"
    # else: xdist escalates on workers still shutting down (execnet sends each a second SIGINT
    # after 5 s, a SIGKILL after 10 s), which can cut the plugin's clean-up short on a loaded
    # machine where formatting the interrupt report alone takes seconds. Like a SIGKILL, that
    # leaves the worker's run folder to the next run's start-up clean-up, checked below.
    record_property("faults", 1)
    record_property("ctrl_c_seconds", f"{took:.1f} (pytest alone {baseline:.1f})")
    acquire_once(cache, wheelhouse, *spec.split())  # the next run: fine, and tidies up
    assert stray_entries(cache) == []


def test_run_folder_of_a_zombie_is_stale(real_dir: Callable[[str], Path]) -> None:
    """A SIGKILLed xdist worker stays a zombie until init reaps it (seconds, here): its run
    folder must already count as stale, or the next run and `clean` keep it."""

    from pytest_cowenv._owner import current, process_start_ticks
    from pytest_cowenv.maintenance import clean_stale
    from pytest_cowenv.store import prepare_root

    layout = prepare_root(real_dir("btrfs") / "cache")
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=PIPE)
    try:
        ticks = process_start_ticks(child.pid)
        assert ticks is not None
        run = layout.clones / f"run-{current()._replace(pid=child.pid, ticks=ticks).token()}-abcdef"
        (run / "pool" / "clone" / "bin").mkdir(parents=True)
        assert clean_stale(layout) == [], "a live process's run folder was removed"
        assert child.stdin is not None
        child.stdin.close()  # it exits; nobody waits for it yet: a zombie
        wait_for(lambda: _state(child.pid) == "Z", 30, "the child to become a zombie")
        assert clean_stale(layout) == [run]
        assert not run.exists()
    finally:
        child.wait()


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]

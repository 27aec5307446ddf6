"""The clone-ahead pool and background removal, on real btrfs and XFS.

A pooled clone must be indistinguishable from a fresh one: private, complete, from the
current template. Whatever way a run ends (normally, Ctrl-C, SIGKILL then a new run), no
pool clone and no trash may stay behind. Templates are built offline from ``_wheels.py``,
once per filesystem per worker (a module-scoped cache root), and reused by every test here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from _helpers import wait_for
from conftest import make_data_tree, make_identity_tree, shared_real_roots
from pytest_cowenv import pool as pool_module
from pytest_cowenv._install import IndexOptions
from pytest_cowenv.clone import LinkMode, forget_decisions, walk_tree
from pytest_cowenv.errors import CloneError, CowEnvWarning
from pytest_cowenv.pool import ClonePool
from pytest_cowenv.session import CowEnvSession, Settings
from pytest_cowenv.spec import TemplateSpec
from pytest_cowenv.template import Template, TemplateCache

FILESYSTEMS = ("btrfs", "xfs")
SPEC = "alpha==1.0"


@pytest.fixture(autouse=True)
def _offline_machine(offline_machine: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, and the pool as each test sets it, not as this shell does."""
    monkeypatch.delenv("PYTEST_COWENV_POOL", raising=False)


@pytest.fixture(scope="module")
def roots() -> Iterator[Callable[[str], Path]]:
    """``roots(fs)``: a cache root on that real filesystem, made once and shared by this
    module's tests, so that each template is built once per filesystem (and xdist worker)."""
    yield from shared_real_roots("pool-")


@pytest.fixture(params=FILESYSTEMS)
def root(request: pytest.FixtureRequest, roots: Callable[[str], Path]) -> Path:
    """The shared cache root on each real filesystem in turn."""
    return roots(request.param)


@pytest.fixture
def xfs_root(roots: Callable[[str], Path]) -> Path:
    return roots("xfs")


@pytest.fixture
def btrfs_root(roots: Callable[[str], Path]) -> Path:
    return roots("btrfs")


@pytest.fixture
def make_session(wheelhouse: Path) -> Iterator[Callable[..., CowEnvSession]]:
    made: list[CowEnvSession] = []

    def make(root: Path, pool: int = 2, reuse: str = "yes") -> CowEnvSession:
        index = IndexOptions(find_links=(str(wheelhouse),), offline=True)
        session = CowEnvSession(Settings(root=str(root), pool=pool, index=index, reuse=reuse))
        made.append(session)
        return session

    yield make
    for session in made:
        session.close()


def run_dirs(root: Path) -> list[str]:
    clones = root / "clones"
    return sorted(os.listdir(clones)) if clones.is_dir() else []


def pooled(session: CowEnvSession, requirements: list[str]) -> tuple[TemplateSpec, ClonePool]:
    """The spec of ``requirements`` used twice (the second use starts its pool), and the pool."""
    spec = session.spec(requirements)
    cache = TemplateCache(session.layout)  # compiled now: the session gets no compiled twin
    cache.get(spec)
    cache.close()
    for i in range(2):
        session.release(session.acquire(spec, f"warm-{i}"))
    assert session.pool is not None
    return spec, session.pool


# -- the session and the pool, in process --------------------------------------------------


def test_pooled_clone_is_fresh(root: Path, make_session: Callable[..., CowEnvSession]) -> None:
    session = make_session(root)
    spec, pool = pooled(session, [SPEC])
    template = session.cache.get(spec)
    hits = session.stats.pool_hits  # the second warm-up took the first one's clone
    for i in range(4):
        # One while every used clone came back (the warm-ups' did), two from the first
        # discarded one on (see test_while_every_clone_comes_back_none_is_made_beside_the_one_out).
        wanted = 2 if i else 1
        wait_for(lambda: pool.ready(template, LinkMode.AUTO) == wanted)  # noqa: B023
        env = session.acquire(spec, f"test_{i}")
        assert session.stats.pool_hits == hits + i + 1
        # In a folder of its own, named for its test: the folder moves, the clone stays put.
        assert env.path.parent.parent == session.run_dir and env.path.name == "env"
        assert env.path.parent.name == f"test_{i}-{i + 3}"
        # Exactly the template: nothing a previous test wrote, nothing half-made.
        assert walk_tree(env.path).listing(stamps=False) == template.tree.listing(stamps=False)
        (env.path / "used-by").write_text(f"test_{i}")
        (env.site_packages / "alpha" / "__init__.py").write_text("VERSION = 'tampered'\n")
        session.release(env)
        assert not env.path.exists()  # renamed into the trash at once
    assert session.stats.pool_misses == 2 - hits


def test_rebuilt_template_is_never_served_stale(
    root: Path, make_session: Callable[..., CowEnvSession]
) -> None:
    session = make_session(root, reuse="no")  # every ready clone here is one made ahead
    spec, pool = pooled(session, ["alpha==2.0"])
    old = session.cache.get(spec)
    wait_for(lambda: pool.ready(old, LinkMode.AUTO) == 2)
    old_stamp = (old.path / "pyvenv.cfg").stat().st_mtime_ns

    # What --cowenv-rebuild or a damaged template does mid-run: a new build under the same key.
    session.cache.forget(old.key)
    session.cache.rebuild_before = time.time()
    env = session.acquire(spec, "after-rebuild")
    new = env.template
    assert new is not old and new.meta["created"] > old.meta["created"]
    new_stamp = (new.path / "pyvenv.cfg").stat().st_mtime_ns
    assert new_stamp != old_stamp
    assert session.stats.pool_hits == 0  # the two ready clones of the old build were dropped
    assert (env.path / "pyvenv.cfg").stat().st_mtime_ns == new_stamp
    session.release(env)

    wait_for(lambda: pool.ready(new, LinkMode.AUTO) == 2)
    env = session.acquire(spec, "pooled-after-rebuild")
    assert session.stats.pool_hits == 1
    assert (env.path / "pyvenv.cfg").stat().st_mtime_ns == new_stamp
    assert walk_tree(env.path).listing(stamps=False) == new.tree.listing(stamps=False)
    session.release(env)
    # Only the new build's ready clone is left once the trash is emptied.
    wait_for(lambda: len(os.listdir(pool.trash_dir)) == 0)
    assert len(os.listdir(pool.ready_dir)) == 2


def test_pool_zero_is_synchronous(root: Path, make_session: Callable[..., CowEnvSession]) -> None:
    session = make_session(root, pool=0)
    spec = session.spec([SPEC])
    for i in range(3):
        env = session.acquire(spec, f"t{i}")
        session.release(env)
        assert not env.path.exists()
    assert session.pool is None
    assert sorted(os.listdir(session.run_dir)) == []  # no pool/, no trash/
    assert (session.stats.pool_hits, session.stats.pool_misses) == (0, 0)
    assert len(session.stats.wait_ms) == 3
    assert not any(line.startswith("pool:") for line in session.stats.summary_lines())
    assert not [t for t in threading.enumerate() if t.name == "cowenv-pool"]


def test_close_removes_pool_and_trash(
    root: Path, make_session: Callable[..., CowEnvSession]
) -> None:
    # (With reuse, the three clones out would count as coming back: none made ahead.)
    session = make_session(root, reuse="no")
    spec = session.spec([SPEC])
    envs = [session.acquire(spec, f"t{i}") for i in range(3)]
    template = envs[0].template
    wait_for(lambda: session.pool.ready(template, LinkMode.AUTO) == 2)  # type: ignore[union-attr]
    for env in envs:
        session.release(env)
    run_dir = session.run_dir
    session.close()
    assert not run_dir.exists()
    assert run_dirs(root) == []


def test_clones_out_count_as_coming_back_until_one_is_discarded(
    root: Path, make_session: Callable[..., CowEnvSession]
) -> None:
    """With reuse, the clones tests have are counted as ready for later tests (they come
    back if their tests only read), also those handed out before the template was pooled;
    once one comes back changed, the pool makes clones ahead as without reuse."""
    session = make_session(root)
    spec = session.spec([SPEC])
    first = session.acquire(spec, "t0")  # its template is not pooled yet
    second = session.acquire(spec, "t1")  # pooled from this second use on
    pool = session.pool
    assert pool is not None
    template = second.template
    time.sleep(0.2)
    assert pool.ready(template, LinkMode.AUTO) == 0  # two out, two wanted: none made
    (second.path / "written").write_text("")
    session.release(second)
    wait_for(lambda: session.stats.discarded["changed"] == 1)
    wait_for(lambda: pool.ready(template, LinkMode.AUTO) == 2)
    session.release(first)


def test_while_every_clone_comes_back_none_is_made_beside_the_one_out(
    root: Path, make_session: Callable[..., CowEnvSession]
) -> None:
    """With reuse, while no used clone was discarded the pool keeps one clone (ready, out or
    coming back), not ``size``: the clone a test has serves the next test, and a second one
    would only be made and deleted. From the first discarded clone on, ``size``."""
    session = make_session(root)
    spec = session.spec([SPEC])
    compiled = TemplateCache(session.layout)  # no compiled twin swapped in under the test
    compiled.get(spec)
    compiled.close()
    pool = session.pool
    assert pool is not None
    template = session.cache.get(spec)
    pool.start(template, LinkMode.AUTO)
    wait_for(lambda: pool.ready(template, LinkMode.AUTO) == 1)
    time.sleep(0.2)
    assert pool.ready(template, LinkMode.AUTO) == 1  # one, not two
    env = session.acquire(spec, "t0")
    time.sleep(0.2)
    assert pool.ready(template, LinkMode.AUTO) == 0  # the one out is the next test's
    session.release(env)
    env = session.acquire(spec, "t1")
    assert (session.stats.recycled, session.stats.fresh) == (1, 1)
    (env.path / "written").write_text("")
    session.release(env)
    wait_for(lambda: pool.ready(template, LinkMode.AUTO) == 2)


def test_collection_hint_fills_the_pool_before_the_first_test(
    root: Path, make_session: Callable[..., CowEnvSession]
) -> None:
    spec_text = "gamma"
    first = make_session(root)
    first.release(first.acquire(first.spec([spec_text])))  # the template exists from now on
    first.close()

    session = make_session(root)
    spec = session.spec([spec_text])
    session.expect(spec, None, tests=5)
    pool = session.pool
    assert pool is not None
    wait_for(lambda: any(n[0] != "." for n in os.listdir(pool.ready_dir)))
    env = session.acquire(spec, "first-test")
    assert (session.stats.pool_hits, session.stats.pool_misses) == (1, 0)
    session.release(env)


def test_a_fallback_met_by_the_pool_is_told_by_the_test_that_takes_its_clone(
    roots: Callable[[str], Path], make_session: Callable[..., CowEnvSession]
) -> None:
    """The pool's thread makes the first copy (collection said the spec is shared): its
    fallback warning comes from the test that takes the clone, not from the thread."""
    root = roots("ext4")
    first = make_session(root)
    first.release(first.acquire(first.spec(["gamma"])))
    first.close()
    forget_decisions()  # the copy fallback is told once per process
    session = make_session(root)
    spec = session.spec(["gamma"])
    told: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session.expect(spec, None, tests=5)
        pool = session.pool
        assert pool is not None
        wait_for(lambda: any(n[0] != "." for n in os.listdir(pool.ready_dir)))
        env = session.acquire(spec, "first-test", warn=told.append)
    assert session.stats.pool_hits == 1
    assert [w for w in caught if issubclass(w.category, CowEnvWarning)] == []
    assert len(told) == 1 and "copied instead" in told[0], told
    session.release(env)


def test_collection_hint_does_not_build(
    root: Path, make_session: Callable[..., CowEnvSession], wheelhouse: Path
) -> None:
    session = make_session(root)
    spec = session.spec(["beta"])
    session.expect(spec, None, tests=5)
    time.sleep(0.3)
    assert session.cache.layout.generations_of(session.cache.key(spec)) == []


def test_background_clone_error_surfaces_in_the_test(
    xfs_root: Path, make_session: Callable[..., CowEnvSession]
) -> None:
    # Snapshots are impossible on XFS: the pool thread's clone fails, and the test then
    # clones synchronously and meets the very same error.
    session = make_session(xfs_root)
    spec = session.spec([SPEC])
    session.release(session.acquire(spec))  # builds the template (link mode auto)
    # Recorded behind the first test: until then the pool's primer finds no template.
    wait_for(lambda: session.cache.newest_meta(session.cache.key(spec)))
    session.expect(spec, LinkMode.SNAPSHOT, tests=3)
    pool = session.pool
    assert pool is not None
    wait_for(lambda: pool.errors)
    with pytest.raises(CloneError) as info:
        session.acquire(spec, "t", LinkMode.SNAPSHOT)
    assert str(info.value) == pool.errors[0]
    assert "use link mode auto or clone" in str(info.value)
    assert session.stats.pool_errors == pool.errors  # and the summary says so
    assert any(line.startswith("pool thread errors: 1;") for line in session.stats.summary_lines())
    # Nothing half-made left (the first test's clone, given back, may still await its
    # deletion there: no pool of link mode auto wants it).
    assert [n for n in os.listdir(pool.ready_dir) if n.startswith(".making-")] == []


def test_transient_background_failure_falls_back_and_recovers(
    root: Path, make_session: Callable[..., CowEnvSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = pool_module.clone_tree  # type: ignore[attr-defined]
    calls = []

    def fail_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[1])
        if len(calls) == 1:
            raise CloneError("injected failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(pool_module, "clone_tree", fail_once)
    session = make_session(root, reuse="no")  # no clone given back stands in for one
    spec, pool = pooled(session, [SPEC])
    wait_for(lambda: pool.errors == ["injected failure"])
    env = session.acquire(spec, "after-failure")  # a miss, made here: and it restarts the pool
    assert session.stats.pool_misses == 3
    session.release(env)
    wait_for(lambda: pool.ready(env.template, LinkMode.AUTO) == 2)
    assert not os.path.lexists(calls[0])


def test_no_clones_ahead_on_a_nearly_full_disk(
    root: Path, make_session: Callable[..., CowEnvSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "MIN_FREE", 1 << 60)  # never room to spare
    # A clone given back takes no more room than it did: only clones made ahead are meant.
    session = make_session(root, reuse="no")
    spec = session.spec([SPEC])
    for i in range(3):
        env = session.acquire(spec, f"t{i}")
        session.release(env)
        time.sleep(0.05)
    pool = session.pool
    assert pool is not None and pool.ready(env.template, LinkMode.AUTO) == 0
    assert (session.stats.pool_hits, session.stats.pool_misses) == (0, 3)
    assert [n for n in os.listdir(pool.ready_dir)] == []


def test_trash_is_emptied_in_the_background(root: Path) -> None:
    run_dir = root.parent / "trash-run"
    run_dir.mkdir()
    pool = ClonePool(run_dir, 2)
    for _ in range(3):  # what tests leave: read-only dirs, links to dirs, dangling links
        tree = make_identity_tree(Path(tempfile.mkdtemp(dir=run_dir)))
        pool.discard(tree)
        assert not tree.exists()
    wait_for(lambda: not any(pool.trash_dir.iterdir()))
    assert pool.errors == []
    assert pool.close()
    assert os.listdir(run_dir) == []


def test_close_stops_a_clone_in_flight(xfs_root: Path, tmp_path: Path) -> None:
    src = make_data_tree(xfs_root.parent / "big-src", files=3000, total_bytes=4 << 20)
    tree = walk_tree(src)
    template = Template("k" * 24, src, None, {}, tree)  # type: ignore[arg-type]
    run_dir = xfs_root.parent / "run"
    run_dir.mkdir()
    pool = ClonePool(run_dir, 2)
    pool.start(template, LinkMode.CLONE)
    wait_for(lambda: any(run_dir.joinpath("pool").iterdir()), timeout=5)
    start = time.perf_counter()
    assert pool.close()
    assert time.perf_counter() - start < 2.0
    assert os.listdir(run_dir) == []


class _FakeClocks:
    """Wall and per-thread CPU clocks the test moves by hand; ``sleep`` advances the wall."""

    def __init__(self) -> None:
        self.wall = 100.0
        self.cpu = 0.0
        self.sleeps: list[float] = []
        self.busy = True  # the watched thread computes while the pool thread sleeps

    def pthread_getcpuclockid(self, ident: int) -> int:
        return 42

    def clock_gettime(self, clock: int) -> float:
        assert clock == 42
        return self.cpu

    def monotonic(self) -> float:
        return self.wall

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.wall += seconds
        if self.busy:
            self.cpu += seconds * 0.9
        if len(self.sleeps) == 6:  # the test stops computing at the end of the 6th sleep
            self.busy = False


def test_the_pool_thread_stands_aside_while_the_test_computes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clocks = _FakeClocks()
    monkeypatch.setattr(pool_module, "time", clocks)
    watch = pool_module._TestWatch()
    monkeypatch.setattr(watch, "_sleep", clocks.sleep)
    stop = threading.Event()
    watch.wait_while_busy(stop)  # nobody followed yet: never waits
    watch.follow(threading.get_ident())
    clocks.cpu, clocks.wall = 0.95, 101.0  # the test used 95 % of a CPU in the last second
    watch.wait_while_busy(stop)
    # It slept while the test computed, backing off (fewer GIL hand-overs), and went on
    # after the first look that found the test idle (the 7th sleep's window).
    assert clocks.sleeps == [0.002, 0.004, 0.008, 0.016, 0.032, 0.032, 0.032]
    clocks.sleeps.clear()
    clocks.wall += 0.001
    watch.wait_while_busy(stop)  # looked a moment ago: no new look, no wait
    clocks.wall += 0.5  # half a second of waiting for a subprocess: 0 CPU
    watch.wait_while_busy(stop)
    assert clocks.sleeps == []
    clocks.busy = True
    clocks.cpu += 0.5
    clocks.wall += 0.5
    stop.set()
    with pytest.raises(pool_module._Stopped):  # closing interrupts the wait
        watch.wait_while_busy(stop)


def test_the_pool_thread_works_on_while_the_test_clones_for_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """When the pool falls behind, the test's thread clones (or deletes) itself: its CPU
    then is ours, not a computing test's. Standing aside for it made the two take turns
    (seen in benchmarks/suite.py's do-nothing tests on XFS)."""
    clocks = _FakeClocks()
    monkeypatch.setattr(pool_module, "time", clocks)
    watch = pool_module._TestWatch()
    monkeypatch.setattr(watch, "_sleep", clocks.sleep)
    stop = threading.Event()
    watch.follow(threading.get_ident())
    with watch.ours():
        clocks.cpu, clocks.wall = 0.95, 101.0  # a clone in the test's thread: 95 % of a CPU
        watch.wait_while_busy(stop)
        assert clocks.sleeps == []
    # Afterwards the window starts anew: the clone's CPU is not held against the test.
    clocks.wall += 0.5
    watch.wait_while_busy(stop)
    assert clocks.sleeps == []
    clocks.cpu += 0.45  # and a test that computes is stood aside for again
    clocks.wall += 0.5
    watch.wait_while_busy(stop)
    assert clocks.sleeps and clocks.sleeps[0] == 0.002


def test_a_thread_standing_aside_goes_on_when_the_test_starts_working_for_it() -> None:
    """A test that waits for clones the thread is proving (or clones itself) must not wait
    out the thread's back-off as well."""
    watch = pool_module._TestWatch()
    woke = threading.Event()

    def sleep_then_wake() -> None:
        watch._sleep(600)
        woke.set()

    thread = threading.Thread(target=sleep_then_wake)
    thread.start()
    with watch.ours():
        assert woke.wait(60)
    thread.join()


def test_used_clones_are_proven_together(tmp_path: Path) -> None:
    """One look at /proc serves every clone of a batch: a lone used clone waits for another
    (at most ``HOLD``) before the thread proves it; two are proven at once; a clone whose
    template is not pooled yet is left for a test to take, and a rebuilt one is trashed."""
    (tmp_path / "run").mkdir()
    pool = ClonePool(tmp_path / "run", 2)
    template, old, unpooled = _Named("t"), _Named("t"), _Named("u")  # old: rebuilt since
    pool._slots[("t", LinkMode.AUTO)] = pool_module._Slot(template, LinkMode.AUTO)  # type: ignore[arg-type]

    def lease(of: Any, at: float) -> pool_module.Lease:
        made = pool_module.Lease(tmp_path / "x", None, of, LinkMode.AUTO)  # type: ignore[arg-type]
        made.returned_at = at
        return made

    first = lease(template, 0.0)
    pool._returned.append(first)
    assert pool._batch(0.0) == ([], pool_module.HOLD)
    assert pool._batch(pool_module.HOLD) == ([first], None)
    second = lease(template, 0.01)
    pool._returned.append(second)
    assert pool._batch(0.01) == ([first, second], None)
    parked, stale = lease(unpooled, 0.0), lease(old, 0.0)
    pool._returned.extend([parked, stale])
    assert pool._batch(0.02) == ([first, second], None)
    assert list(pool._returned) == [first, second, parked]
    assert list(pool._trash) == [stale.folder]
    pool._stop.set()  # closing: nothing waits any more
    pool._returned.remove(second)
    assert pool._batch(0.0) == ([first], None)


class _Named:
    """A stand-in template: the pool looks at its key and its identity only."""

    def __init__(self, key: str) -> None:
        self.key = key


# -- whole runs, in a pytest subprocess ----------------------------------------------------

SUITE = """
import os
import time

import pytest


@pytest.mark.cowenv("alpha==1.0")
@pytest.mark.parametrize("i", range(int(os.environ.get("TESTS", "6"))))
def test_env(cowenv, i, request):
    marker = cowenv.path / "used-by"
    assert not marker.exists(), marker.read_text()
    marker.write_text(request.node.nodeid)
    with open(os.environ["CLONE_LOG"], "a") as log:
        log.write(f"{cowenv.path}\\n")
    if os.environ.get("STARTED"):
        open(os.environ["STARTED"], "a").close()
    time.sleep(float(os.environ.get("NAP", "0")))
"""


@pytest.fixture
def suite(
    pytester: pytest.Pytester, wheelhouse: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., list[str]]:
    """Write the suite; return a function giving the command line of a run against ``root``."""
    pytester.makepyfile(test_suite=SUITE)
    monkeypatch.setenv("CLONE_LOG", str(pytester.path / "clones.log"))

    def argv(root: Path, *extra: str) -> list[str]:
        return [
            "-p",
            "no:cacheprovider",
            f"--cowenv-dir={root}",
            f"--cowenv-find-links={wheelhouse}",
            "--cowenv-offline",
            *extra,
        ]

    return argv


def test_run_leaves_nothing_and_reports_the_pool(
    root: Path, pytester: pytest.Pytester, suite: Callable[..., list[str]]
) -> None:
    result = pytester.runpytest_subprocess(*suite(root))
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["cowenv: *pool=2*", "pool: * hits, * misses*", "test wait ms:*"])
    assert run_dirs(root) == []
    clones = (pytester.path / "clones.log").read_text().split()
    assert len(set(clones)) == 6


def test_pool_off_in_a_run(
    root: Path, pytester: pytest.Pytester, suite: Callable[..., list[str]]
) -> None:
    result = pytester.runpytest_subprocess(*suite(root, "--cowenv-pool=0"))
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["cowenv: *pool=off*"])
    result.stdout.no_fnmatch_line("pool: *hits*")
    assert run_dirs(root) == []


def test_two_workers_never_share_a_clone(
    root: Path,
    pytester: pytest.Pytester,
    suite: Callable[..., list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TESTS", "16")
    result = pytester.runpytest_subprocess(*suite(root, "-n", "2"))
    result.assert_outcomes(passed=16)
    clones = (pytester.path / "clones.log").read_text().split()
    assert len(clones) == 16 and len(set(clones)) == 16
    assert len({Path(c).parent.parent for c in clones}) == 2  # one run folder per worker
    assert run_dirs(root) == []


def test_collection_starts_the_pool_of_a_shared_spec(
    btrfs_root: Path,
    pytester: pytest.Pytester,
    suite: Callable[..., list[str]],
    monkeypatch: pytest.MonkeyPatch,
    make_session: Callable[..., CowEnvSession],
) -> None:
    session = make_session(btrfs_root)
    session.release(session.acquire(session.spec([SPEC])))  # the template is built
    monkeypatch.setenv("NAP", "1.0")  # margin for a loaded CI machine
    result = pytester.runpytest_subprocess(*suite(btrfs_root))
    result.assert_outcomes(passed=6)
    # Without the hint the first two tests always clone themselves (the pool starts on the
    # second use); with it the pool is filling before the first test, or from its first use.
    misses = int(result.stdout.str().split(" misses")[0].rsplit(" ", 1)[1])
    assert misses <= 1, result.stdout.str()


# Ctrl-C must reach the inner pytest even where this process ignores SIGINT (xdist workers).
_MAIN = (
    "import signal, sys, pytest; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.exit(pytest.main(sys.argv[1:]))"
)


def _spawn(pytester: pytest.Pytester, argv: list[str], **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _MAIN, *argv],
        cwd=pytester.path,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )


def _wait_started(pytester: pytest.Pytester, proc: subprocess.Popen[bytes], count: int) -> None:
    log = pytester.path / "clones.log"

    def started() -> bool:
        assert proc.poll() is None, proc.communicate()[0].decode()
        return log.exists() and len(log.read_text().split()) >= count

    wait_for(started, timeout=60)


def test_ctrl_c_leaves_nothing(
    root: Path, pytester: pytest.Pytester, suite: Callable[..., list[str]]
) -> None:
    proc = _spawn(pytester, suite(root), TESTS="100", NAP="0.2")
    try:
        _wait_started(pytester, proc, 4)  # the pool is running and the trash is in use
        os.killpg(proc.pid, signal.SIGINT)
        out = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "KeyboardInterrupt" in out, out
    assert run_dirs(root) == [], out


def test_sigkill_leftovers_go_with_the_next_run(
    root: Path, pytester: pytest.Pytester, suite: Callable[..., list[str]]
) -> None:
    proc = _spawn(pytester, suite(root), TESTS="100", NAP="0.2")
    try:
        _wait_started(pytester, proc, 4)
        run = root / "clones" / run_dirs(root)[0]
        wait_for(lambda: any(n[0] != "." for n in os.listdir(run / "pool")))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert (run / "pool").is_dir()  # what a crash leaves: ready clones (and maybe trash)

    result = pytester.runpytest_subprocess(*suite(root))
    result.assert_outcomes(passed=6)
    assert run_dirs(root) == []

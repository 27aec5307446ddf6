"""Compiling behind the tests: a new template is published before byte-compiling, its compiled
twin follows as the next generation, and nothing ever clones a half-compiled tree.

Offline builds from the tiny wheels of ``_wheels.py``; caches on the real btrfs mount when there
is one (read-only subvolumes), else in tmp_path. ``PYTHONDONTWRITEBYTECODE`` is unset
(``offline_machine``), as on a user's machine: no test passes because bytecode is not written.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from _helpers import processes, run_python
from pytest_cowenv import TemplateCache, TemplateSpec, clone_tree
from pytest_cowenv import _build as build_module
from pytest_cowenv import _install as install_module
from pytest_cowenv import template as template_module
from pytest_cowenv._content import problems
from pytest_cowenv._install import IndexOptions
from pytest_cowenv.clone import remove_tree, walk_tree
from pytest_cowenv.errors import TemplateBuildError
from pytest_cowenv.store import prepare_root
from pytest_cowenv.template import Template, matches_manifest

pytestmark = pytest.mark.usefixtures("offline_machine")


def make_spec(wheelhouse: Path, *requirements: str) -> TemplateSpec:
    index = IndexOptions(find_links=(str(wheelhouse),), offline=True)
    return TemplateSpec.create(list(requirements), index=index)


def new_cache(root: Path, **kwargs: Any) -> TemplateCache:
    return TemplateCache(prepare_root(root), **kwargs)


def twin_of(cache: TemplateCache, spec: TemplateSpec, first: Template) -> Template:
    """What ``cache.get`` hands out once the compile behind ``first`` is done."""
    deadline = time.monotonic() + 60
    while (got := cache.get(spec)) is first:
        assert time.monotonic() < deadline, "the compiled twin never came"
        time.sleep(0.02)
    return got


def pyc_flags(source: Path) -> int:
    """The flags word of ``source``'s pyc (PEP 552): 0b11 checked hash, 0 timestamp."""
    pyc = Path(importlib.util.cache_from_source(str(source)))
    return int.from_bytes(pyc.read_bytes()[4:8], "little")


def site_of(tree: Path) -> Path:
    return next(tree.glob("lib/python*/site-packages"))


def test_a_new_template_comes_uncompiled_then_its_compiled_twin(
    root: Path, wheelhouse: Path
) -> None:
    cache = new_cache(root, compile_behind=True)
    spec = make_spec(wheelhouse, "beta")
    first = cache.get(spec)
    assert first.built_now and not first.precompiled and first.generation == 1
    assert not list(site_of(first.path).rglob("*.pyc"))
    assert first.meta["bytecode_store"] == {"dir": None, "entries": []}

    twin = twin_of(cache, spec, first)
    assert twin.precompiled and twin.generation == 2
    assert twin.meta["compiled_from"] == 1 and twin.resolved == first.resolved
    assert set(twin.meta["phases_behind"]) >= {"clone", "compile", "walk", "hash", "sync"}
    assert cache.compiled_behind == [twin] and cache.behind_errors == []
    sources = list(site_of(twin.path).rglob("*.py"))
    assert sources and all(pyc_flags(source) == 0b11 for source in sources)
    assert problems(walk_tree(twin.path), twin.meta, site_of(twin.path)) == []
    assert first.path.is_dir(), "a generation this process holds stays while it runs"

    cache.close()
    assert not first.path.exists(), "the uncompiled generation outlived its last user"
    again = new_cache(root, compile_behind=True)
    reused = again.get(spec)  # the next run: the compiled twin at once, nothing built
    assert (reused.generation, reused.precompiled, again.built) == (2, True, [])
    again.close()


def test_a_clone_of_the_uncompiled_template_compiles_on_import(
    root: Path, wheelhouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like any fresh venv: timestamp pycs in the clone, the template untouched, and a module
    edited in the clone is what imports."""
    monkeypatch.setattr(TemplateCache, "_start_behind", lambda *args, **kwargs: None)
    cache = new_cache(root, compile_behind=True)
    first = cache.get(make_spec(wheelhouse, "alpha"))
    assert not first.precompiled
    assert "PYTHONDONTWRITEBYTECODE" not in os.environ
    clone = root / "clones" / "first"
    clone_tree(first.path, clone, tree=first.tree)
    init = site_of(clone) / "alpha" / "__init__.py"
    assert run_python(clone, "import alpha; print(alpha.VERSION)") == "2.0"
    assert pyc_flags(init) == 0, "a clone compiles what it imports, as any venv does"
    init.write_text("VERSION = 'edited in the clone, a longer line than before'\n")
    assert run_python(clone, "import alpha; print(alpha.VERSION)").startswith("edited")
    assert subprocess.run([str(clone / "bin" / "alpha")], capture_output=True, text=True,
                          check=True).stdout.strip().startswith("alpha edited")  # fmt: skip
    assert not list(site_of(first.path).rglob("*.pyc")), "the template got bytecode"
    assert matches_manifest(walk_tree(first.path), first.meta)
    remove_tree(clone)
    cache.close()


def test_nothing_clones_a_half_compiled_tree(
    root: Path, wheelhouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the twin is compiled, `get` keeps handing out the uncompiled generation and no
    complete-looking generation 2 exists; the swap comes with its metadata, last."""
    compiling, go_on = threading.Event(), threading.Event()
    real_compile = build_module.compile_env

    def slow_compile(*args: Any, **kwargs: Any) -> Any:
        compiling.set()
        assert go_on.wait(60)
        return real_compile(*args, **kwargs)

    monkeypatch.setattr(template_module, "compile_env", slow_compile)
    cache = new_cache(root, compile_behind=True)
    spec = make_spec(wheelhouse, "alpha")
    cache.expect_clones(spec, 3)  # collection said: compiled from the first clone on
    first = cache.get(spec)
    assert compiling.wait(60)
    layout = cache.layout
    for _ in range(3):
        assert cache.get(spec) is first
        # The twin is still a build folder: no tree, no metadata under generation 2's name.
        assert not layout.template(first.key, 2).exists()
        assert not layout.meta(first.key, 2).exists()
    go_on.set()
    twin = twin_of(cache, spec, first)
    assert twin.generation == 2 and layout.meta(first.key, 2).exists()
    cache.close()


def test_a_rebuild_meanwhile_is_never_superseded_by_a_stale_twin(
    root: Path, wheelhouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(TemplateCache, "_start_behind", lambda *args, **kwargs: None)
    spec = make_spec(wheelhouse, "alpha")
    behind = new_cache(root, compile_behind=True)
    first = behind.get(spec)
    rebuilt = new_cache(root, rebuild_before=time.time()).get(spec)  # another process
    assert (rebuilt.generation, rebuilt.precompiled) == (2, True)
    behind._compile_behind(spec, first.key, first)  # what its thread would have done
    assert behind.get(spec) is first, "a session keeps its generation"
    assert behind.layout.generations_of(first.key) == [1, 2], "no twin of a superseded one"
    behind.close()


def test_another_process_compiles_and_the_session_takes_its_twin(
    root: Path, wheelhouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`pytest-cowenv build` (compile_behind off) finding an uncompiled template compiles it
    before it returns; a session waiting for the lock then takes that twin."""
    monkeypatch.setattr(TemplateCache, "_start_behind", lambda *args, **kwargs: None)
    spec = make_spec(wheelhouse, "alpha")
    session = new_cache(root, compile_behind=True)
    first = session.get(spec)
    other = new_cache(root)
    compiled = other.get(spec)
    assert (compiled.generation, compiled.precompiled) == (2, True)
    assert compiled.meta["compiled_from"] == 1 and other.built == []
    session._compile_behind(spec, first.key, first)
    twin = session.get(spec)
    assert twin is not first and twin.generation == 2 and twin.precompiled
    assert session.layout.generations_of(first.key) == [1, 2], "compiled once"
    other.close()
    session.close()
    assert session.layout.generations_of(first.key) == [2]


def test_a_failed_compile_behind_keeps_the_uncompiled_template(
    root: Path, wheelhouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(template_module, "compile_env", failing)
    cache = new_cache(root, compile_behind=True)
    spec = make_spec(wheelhouse, "alpha")
    cache.expect_clones(spec, 2)
    first = cache.get(spec)
    cache.close()  # waits for the thread
    assert len(cache.behind_errors) == 1 and "No space left" in cache.behind_errors[0]
    layout = cache.layout
    assert layout.generations_of(first.key) == [1]
    assert sorted(p.name for p in layout.tmp.iterdir()) == [], "a build folder was left"
    meta = json.loads(layout.meta(first.key, 1).read_text())
    assert meta["precompiled"] is False


def run_inner(
    pytester: pytest.Pytester, root: Path, wheelhouse: Path, *args: str
) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "--cowenv-dir", str(root), "--cowenv-find-links", str(wheelhouse), "--cowenv-offline",
        "-p", "no:cacheprovider", *args,
    )  # fmt: skip


def compiled_or_compiling(result: pytest.RunResult, what: str) -> list[str]:
    """The summary line saying ``what`` was compiled behind the tests: done before the
    summary, or still running then (and pytest waited for it)."""
    return [
        line
        for line in result.outlines
        if line.startswith(f"templates compiled behind the tests: {what} (")
        or line.startswith(f"templates compiling behind the tests: {what} (pytest waits")
    ]


def only_tree(root: Path) -> tuple[Path, dict[str, Any]]:
    trees = [p for p in (root / "templates").iterdir() if p.is_dir()]
    assert len(trees) == 1, trees
    return trees[0], json.loads(Path(f"{trees[0]}.json").read_text())


def test_a_run_of_several_tests_compiles_and_leaves_the_compiled_twin(
    pytester: pytest.Pytester, root: Path, wheelhouse: Path
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.cowenv("alpha")
        @pytest.mark.parametrize("i", range(2))
        def test_each(cowenv, i):
            assert cowenv.run("alpha").stdout == "alpha 2.0\\n"
        """
    )
    result = run_inner(pytester, root, wheelhouse)
    result.assert_outcomes(passed=2)
    assert compiled_or_compiling(result, "alpha"), result.outlines
    tree, meta = only_tree(root)
    assert tree.name.endswith(".2") and meta["precompiled"] is True
    assert meta["compiled_from"] == 1


def test_a_template_one_test_uses_is_compiled_by_the_next_run(
    pytester: pytest.Pytester, root: Path, wheelhouse: Path
) -> None:
    """The twin would serve no clone of the run that built the template: that run (an xdist
    worker: no spare core, see the next test) leaves it uncompiled and says so; the next run
    clones it uncompiled and compiles it behind."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.cowenv("alpha")
        def test_first(cowenv):
            assert not cowenv.template.precompiled
            assert cowenv.run("alpha").stdout == "alpha 2.0\\n"
        """
    )
    result = run_inner(pytester, root, wheelhouse, "-n", "1")
    result.assert_outcomes(passed=1)
    assert not compiled_or_compiling(result, "alpha"), result.outlines
    assert (
        "templates left uncompiled: alpha (one test used each; the next run that uses one "
        "compiles it behind its tests)"
    ) in result.outlines
    tree, meta = only_tree(root)
    assert tree.name.endswith(".1") and meta["precompiled"] is False

    again = run_inner(pytester, root, wheelhouse, "-n", "1")
    again.assert_outcomes(passed=1)
    assert compiled_or_compiling(again, "alpha"), again.outlines
    assert not [line for line in again.outlines if "left uncompiled" in line]
    tree, meta = only_tree(root)
    assert tree.name.endswith(".2") and meta["precompiled"] is True
    assert meta["compiled_from"] == 1


def test_a_serial_run_compiles_a_one_test_template_on_its_spare_core(
    pytester: pytest.Pytester, root: Path, wheelhouse: Path
) -> None:
    """A serial run compiles the template its one test uses on the core the test leaves
    idle, and stops that compile when the tests end rather than wait for it: the summary
    says it was compiled or left uncompiled, never that pytest waits; no build folder stays;
    the next run finds the twin, or compiles it behind its tests."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.cowenv("alpha")
        def test_first(cowenv):
            assert cowenv.run("alpha").stdout == "alpha 2.0\\n"
        """
    )
    result = run_inner(pytester, root, wheelhouse)
    result.assert_outcomes(passed=1)
    compiled = [ln for ln in result.outlines if ln.startswith("templates compiled behind")]
    left = [ln for ln in result.outlines if ln.startswith("templates left uncompiled: alpha")]
    assert len(compiled + left) == 1, result.outlines
    assert not [ln for ln in result.outlines if "pytest waits" in ln], result.outlines
    assert sorted(p.name for p in (root / "tmp").iterdir()) == [], "a build folder was left"
    _, meta = only_tree(root)
    assert meta["precompiled"] is bool(compiled)

    again = run_inner(pytester, root, wheelhouse)
    again.assert_outcomes(passed=1)
    assert not [ln for ln in again.outlines if "left uncompiled" in ln], again.outlines
    _, meta = only_tree(root)
    assert meta["precompiled"] is True and meta["compiled_from"] == 1


def test_a_spare_core_compile_is_stopped_when_the_tests_end(
    root: Path, wheelhouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`stop_spare` kills a compile still running on the spare core (one that never ends
    here) and waits for its thread: no error, no twin, no build folder; the template is left
    uncompiled and later clones are not compiled on the spare core."""
    calls: list[dict[str, Any]] = []

    def endless(env: Path, spec: TemplateSpec, bytecode: Path, **kwargs: Any) -> Any:
        calls.append(kwargs)
        with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]) as proc:
            kwargs["started"](proc)
            proc.wait()
        raise TemplateBuildError(f"byte-compiling failed: exit {proc.returncode}")

    monkeypatch.setattr(template_module, "compile_env", endless)
    cache = new_cache(root, compile_behind=True, compile_spare=True)
    spec = make_spec(wheelhouse, "alpha")
    first = cache.get(spec)
    cache._recording[first.key].join(60)
    deadline = time.monotonic() + 60
    while not cache._procs:
        assert time.monotonic() < deadline, "the spare compile never started"
        time.sleep(0.01)
    assert calls == [{"behind": True, "idle": True, "started": calls[0]["started"]}]
    cache.stop_spare()
    assert not cache._behind[first.key].is_alive()
    assert cache.behind_errors == [] and cache.compiled_behind == []
    assert cache.behind_report() == ({}, [], [])
    assert cache.left_uncompiled() == ["alpha"]
    assert cache.layout.generations_of(first.key) == [1]
    assert sorted(p.name for p in cache.layout.tmp.iterdir()) == [], "a build folder was left"
    cache.close()


def test_a_compile_on_the_spare_core_runs_alone_in_the_idle_class(tmp_path: Path) -> None:
    """`--idle`: Linux's idle scheduling class (else the lowest niceness), and no pool of
    workers however many sources there are."""
    script = Path(build_module.__file__).with_name("_bytecode.py")
    site, store = tmp_path / "site", tmp_path / "store"
    site.mkdir()
    store.mkdir(mode=0o700)
    for i in range(300):  # more than enough for a pool
        (site / f"m{i}.py").write_text(f"X = {i}\n")
    code = (
        "import json, os, sys; sys.path.insert(0, sys.argv[1]); import _bytecode as b; "
        "b.behind(os.getppid(), idle=True); report = b.main(sys.argv[2], sys.argv[3], alone=True); "
        "policy = os.sched_getscheduler(0) if hasattr(os, 'sched_getscheduler') else None; "
        "print(json.dumps([policy, getattr(os, 'SCHED_IDLE', None), os.nice(0), "
        "'concurrent.futures.process' in sys.modules, report['compiled']]))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(script.parent), str(site), str(store)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    policy, idle, niceness, pooled, compiled = json.loads(out)
    assert (pooled, compiled) == (False, 300)
    assert policy == idle or niceness == 19


def test_a_second_clone_starts_the_compile(root: Path, wheelhouse: Path) -> None:
    """Without word from collection (a factory's calls, the pool off), the first clone of a
    new template does not start its compile; the second does."""
    cache = new_cache(root, compile_behind=True)
    spec = make_spec(wheelhouse, "alpha")
    first = cache.get(spec)
    assert cache._behind == {} and cache.left_uncompiled() == ["alpha"]
    assert cache.get(spec) is first  # the second clone: its compile starts now
    assert list(cache._behind) == [first.key] and cache.left_uncompiled() == []
    twin = twin_of(cache, spec, first)
    assert twin.precompiled and twin.meta["compiled_from"] == 1
    cache.close()


def test_the_summary_says_what_was_left_uncompiled() -> None:
    from pytest_cowenv.session import Stats

    stats = Stats()
    stats.merge({"uncompiled": ["alpha", "beta"]})
    stats.merge({"uncompiled": ["alpha"], "compiled_behind": {"beta": 1.5}})  # another worker
    assert stats.summary_lines() == [
        "templates compiled behind the tests: beta (1.5 s)",
        "templates left uncompiled: alpha (one test used each; the next run that uses one "
        "compiles it behind its tests)",
    ]


def test_the_summary_says_what_compiling_behind_did() -> None:
    from pytest_cowenv.session import Stats

    stats = Stats()
    stats.merge({"compiled_behind": {"alpha": 2.5}, "compiling_behind": ["beta"]})
    stats.merge({"behind_errors": ["gamma: compiling behind the tests: disk full"]})
    assert stats.summary_lines() == [
        "templates compiled behind the tests: alpha (2.5 s)",
        "templates compiling behind the tests: beta (pytest waits for it before it exits; "
        "the next run clones it compiled)",
        "not compiled: gamma: compiling behind the tests: disk full",
    ]


def test_what_a_full_disk_keeps_from_removing_goes_at_close(
    root: Path, wheelhouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed twin whose removal fails too (btrfs may refuse to destroy a subvolume on a
    full disk) is removed when the cache closes, once the run's clones are gone."""
    real_remove = template_module.remove_tree  # type: ignore[attr-defined]
    refused: list[Path] = []

    def remove_tree(path: Path, **kwargs: Any) -> None:
        if path.name.endswith(".2") and not refused:
            refused.append(path)
            raise OSError(28, "No space left on device")
        real_remove(path, **kwargs)

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(template_module, "remove_tree", remove_tree)
    monkeypatch.setattr(template_module, "compile_env", failing)
    cache = new_cache(root, compile_behind=True)
    spec = make_spec(wheelhouse, "alpha")
    cache.expect_clones(spec, 2)
    first = cache.get(spec)
    cache._recording[first.key].join(60)  # the compile starts once the template is recorded
    cache._behind[first.key].join(60)
    assert refused and cache.layout.generations_of(first.key) == [1, 2]  # its .inuse
    cache.close()
    assert cache.layout.generations_of(first.key) == [1]
    assert not [p for p in cache.layout.templates.iterdir() if ".2" in p.name]


def test_the_first_clone_comes_before_the_recording(
    root: Path, wheelhouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A template built now is cloned before it is protected, hashed, synced and its
    metadata written; meanwhile its builder holds the key's lock, so another process waits
    and then takes it, complete, instead of building or discarding it."""
    monkeypatch.setattr(TemplateCache, "_start_behind", lambda *args, **kwargs: None)
    cache = new_cache(root, compile_behind=True)
    spec = make_spec(wheelhouse, "alpha")
    layout = cache.layout
    other: dict[str, Any] = {}
    with cache.first_use(spec) as first:
        assert first.built_now and not layout.meta(first.key, 1).exists()
        clone = root / "first-clone"
        clone_tree(first.path, clone)
        assert run_python(clone, "import alpha; print(alpha.__name__)") == "alpha"
        another = new_cache(root, compile_behind=True)
        waiting = threading.Thread(target=lambda: other.update(t=another.get(spec)))
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive(), "another process went past the lock of an unrecorded build"
        assert not layout.meta(first.key, 1).exists(), "recorded before the first clone"
    waiting.join(60)
    got = other["t"]
    assert got.generation == 1 and not got.built_now, "the other process rebuilt"
    meta = json.loads(layout.meta(first.key, 1).read_text())
    assert matches_manifest(walk_tree(first.path), meta)
    assert problems(walk_tree(first.path), meta, site_of(first.path)) == []
    assert first.meta["manifest"] == meta["manifest"]
    assert (first.tree.nfiles, first.tree.nbytes) == (meta["files"], meta["bytes"])
    assert {"walk", "hash", "sync"} <= set(meta["phases"])
    remove_tree(clone)
    another.close()
    cache.close()


def test_a_new_subvolume_is_walked_behind_its_first_clone(
    root: Path, wheelhouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A snapshot needs no walk: a new btrfs template is walked by its recording, after its
    first clone, not by a thread that would compete with the test's thread for the GIL until
    the test starts; the session counts the clone's size once the walk is done, without
    waiting for it."""
    from pytest_cowenv.fs import is_subvolume, probe
    from pytest_cowenv.session import CowEnvSession, Settings

    # Elsewhere the first clone rightly waits for the walk, which this test holds: ask first.
    root.mkdir(parents=True, exist_ok=True)
    if not probe(root).can_snapshot:
        pytest.skip("the cache is not on btrfs: a template that is no subvolume is walked first")
    monkeypatch.setattr(TemplateCache, "_start_behind", lambda *args: None)
    walked, go_on = threading.Event(), threading.Event()
    real_walk = walk_tree

    def held_walk(path: Any) -> Any:
        if Path(path).parent.name == "templates":
            walked.set()
            assert go_on.wait(60)
        return real_walk(path)

    monkeypatch.setattr(template_module, "walk_tree", held_walk)
    index = IndexOptions(find_links=(str(wheelhouse),), offline=True)
    session = CowEnvSession(Settings(root=str(root), pool=0, index=index))
    got: dict[str, Any] = {}
    acquiring = threading.Thread(
        target=lambda: got.update(env=session.acquire(make_spec(wheelhouse, "alpha")))
    )
    acquiring.start()
    acquiring.join(60)
    assert not acquiring.is_alive(), "the first clone waited for the template's walk"
    env = got["env"]
    assert is_subvolume(env.template.path)
    assert env.template.tree_if_walked is None
    assert walked.wait(60), "the recording did not walk the template"
    go_on.set()
    session.release(env)
    session.note_compiles()
    assert session.stats.shared_bytes == env.template.tree.nbytes > 0
    session.close()
    meta = json.loads(session.layout.meta(env.template.key, 1).read_text())
    assert matches_manifest(walk_tree(env.template.path), meta)


def test_the_venv_and_the_first_clone_are_prepared_while_the_installer_runs(
    root: Path, wheelhouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold spec's installer starts first: uv's venv, and this run's clone folder and pool,
    are made once it runs (none of them is the install's), so they neither delay it nor wait
    after it; the clean-up of dead runs waits for the first clone."""
    from pytest_cowenv import maintenance
    from pytest_cowenv.session import CowEnvSession, Settings

    events: list[str] = []
    real_run, real_base = install_module.run_installer, build_module.start_base_env

    def run_installer(*args: Any) -> None:
        events.append("installer")
        real_run(*args)
        events.append("installed")
        assert "prepare" in session._background, "nothing was prepared while it ran"
        session._background["prepare"].join(60)
        assert session._run_dir is not None and session._pool is not None
        assert "clean" not in events, "the clean-up competed with the build"

    def start_base_env(*args: Any, **kwargs: Any) -> Any:
        events.append("venv")
        return real_base(*args, **kwargs)

    def clean(layout: Any) -> list[Path]:
        events.append("clean")
        return []

    monkeypatch.setattr(build_module, "run_installer", run_installer)
    monkeypatch.setattr(build_module, "start_base_env", start_base_env)
    monkeypatch.setattr(maintenance, "clean_stale", clean)
    index = IndexOptions(find_links=(str(wheelhouse),), offline=True)
    session = CowEnvSession(Settings(root=str(root), index=index))
    env = session.acquire(make_spec(wheelhouse, "alpha"))
    assert run_python(env.path, "import alpha; print(alpha.__name__)") == "alpha"
    session.release(env)
    session.close()
    if build_module.base_env_by_uv(pip=False):
        assert events[:3] == ["installer", "venv", "installed"]
    assert "clean" in events


def test_a_failed_recording_discards_the_template_and_fails_later_tests(
    root: Path, wheelhouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first clone stays its test's; the generation goes, the key's lock is let go, and
    the spec fails from then on with the reason (the next run builds it again)."""
    real_write = template_module.write_atomically  # type: ignore[attr-defined]

    def full_disk(path: Path, text: str) -> None:
        if path.suffix == ".json":
            raise OSError(28, "No space left on device")
        real_write(path, text)

    monkeypatch.setattr(template_module, "write_atomically", full_disk)
    cache = new_cache(root, compile_behind=True)
    spec = make_spec(wheelhouse, "alpha")
    with cache.first_use(spec) as first:
        clone = root / "first-clone"
        clone_tree(first.path, clone)
    cache._recording[first.key].join(60)
    with pytest.raises(TemplateBuildError, match="No space left"):
        cache.get(spec)
    assert cache.behind_errors and "recording behind the first test" in cache.behind_errors[0]
    assert cache.layout.generations_of(first.key) == []
    assert sorted(p.name for p in cache.layout.tmp.iterdir()) == [], "a build folder was left"
    assert run_python(clone, "import alpha; print(alpha.__name__)") == "alpha"
    remove_tree(clone)
    cache.close()
    monkeypatch.setattr(template_module, "write_atomically", real_write)
    again = new_cache(root)
    assert again.get(spec).built_now, "the next run builds it again"
    again.close()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
def test_compile_workers_die_with_their_killed_compiler(tmp_path: Path) -> None:
    """A compile is killed when pytest dies (or is Ctrl-C'd during close); its pool's workers
    must go with it, not wait for work forever."""
    site, store = tmp_path / "site", tmp_path / "store"
    site.mkdir()
    store.mkdir(mode=0o700)
    body = "".join(f"def f{i}(x):\n    return [x * {i} for _ in range(3)]\n" for i in range(400))
    for i in range(300):  # enough work for a pool of workers, for seconds
        (site / f"m{i}.py").write_text(body)
    script = Path(build_module.__file__).with_name("_bytecode.py")
    proc = subprocess.Popen(
        [sys.executable, "-I", "-S", str(script), str(site), str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
            workers = [pid for pid, parent, _, _ in processes() if parent == proc.pid]
            time.sleep(0.01)
        if len(workers) < 2:
            pytest.skip("the compile ran without a pool of workers here (one core?)")
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{w}") for w in workers):
        time.sleep(0.05)
    alive = [w for w in workers if os.path.exists(f"/proc/{w}")]
    for pid in alive:
        os.kill(pid, signal.SIGKILL)
    assert alive == [], "the killed compiler's workers outlived it"


def test_a_killed_compile_leaves_no_temp_file_in_the_store(tmp_path: Path) -> None:
    """A compile stopped by a signal (a spare compile at the tests' end) may die between
    writing a store entry's temp file and renaming it: its temp files go once it is reaped,
    nobody else's, and nothing through a link planted in the store."""
    env = tmp_path / "env"
    (env / "lib" / "python3" / "site-packages").mkdir(parents=True)
    (env / "bin").mkdir()
    (env / "bin" / "python").symlink_to(sys.executable)
    store = tmp_path / "pyc"
    entries = store / "cpython-311-a70d0d0a" / "ab"
    entries.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (store / "cpython-311-a70d0d0a" / "cd").symlink_to(elsewhere)
    planted: dict[str, Path] = {}

    def kill_mid_write(proc: subprocess.Popen[str]) -> None:
        planted["secret"] = store / f"secret.{proc.pid}.0123abcd.tmp"
        planted["entry"] = entries / f"cdef.{proc.pid}.89abcdef.tmp"
        planted["behind the link"] = elsewhere / f"cdef.{proc.pid}.89abcdef.tmp"
        planted["another process's"] = entries / f"cdef.{proc.pid + 1}.89abcdef.tmp"
        for path in planted.values():
            path.write_bytes(b"half")
        proc.kill()

    with pytest.raises(TemplateBuildError):
        build_module.compile_env(
            env, make_spec(tmp_path, "alpha"), store, behind=True, started=kill_mid_write
        )
    left = {what for what, path in planted.items() if path.exists()}
    assert left == {"behind the link", "another process's"}


def test_the_store_secret_leaves_no_temp_file_when_the_disk_refuses_it(tmp_path: Path) -> None:
    """A full disk fails the secret's write: the error stands, and no temp file stays."""
    code = (
        "import resource, signal, sys\n"
        "from pytest_cowenv._bytecode import store_secret\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # every write fails: EFBIG\n"
        "try:\n"
        "    store_secret(sys.argv[1])\n"
        "except OSError as e:\n"
        "    print(e.errno)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(errno.EFBIG), out.stderr
    assert list(tmp_path.iterdir()) == []

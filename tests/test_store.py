"""The cache root: marked as ours, refused when it is not, vetted up to ``/``, written safely."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from _wheels import standard_wheelhouse
from pytest_cowenv import store
from pytest_cowenv import template as template_module
from pytest_cowenv._atomic import write_atomically
from pytest_cowenv._install import IndexOptions
from pytest_cowenv.errors import CacheDirError, SpecError, TemplateBuildError, shown, with_option
from pytest_cowenv.fs import sync_filesystem
from pytest_cowenv.maintenance import open_layout
from pytest_cowenv.marker import CACHEDIR_TAG, MARKER, classify, write_new_file
from pytest_cowenv.report import header_line
from pytest_cowenv.spec import TemplateSpec
from pytest_cowenv.store import prepare_root
from pytest_cowenv.template import TemplateCache

KEY = "0123456789abcdef01234567"
AS_ROOT = pytest.mark.skipif(
    not hasattr(os, "getuid") or os.getuid() != 0, reason="chown needs root"
)


def tree(root: Path) -> list[str]:
    """Everything under ``root``, for before/after comparisons."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def legacy_cache(root: Path) -> Path:
    """A cache as the previous version (no marker) left it."""
    for sub in ("templates", "clones", "tmp", "pyc/cpython-311-a70d0d0a/ab"):
        (root / sub).mkdir(parents=True)
    (root / "templates" / KEY).mkdir()
    for ext in (".json", ".lock", ".inuse"):
        (root / "templates" / f"{KEY}{ext}").write_text("{}")
    (root / "clones" / "run-999999-12-abcdef").mkdir()
    (root / "tmp" / f"{KEY}.999999.0123abcd").mkdir()
    (root / "kept" / "run-999999-12-abcdef-test_x-1").mkdir(parents=True)
    (root / "fs-probe.json").write_text("{}")
    return root


# -- marking ---------------------------------------------------------------------------------


def test_a_new_cache_root_is_tagged_and_marked(tmp_path: Path) -> None:
    root = prepare_root(tmp_path / "cache").root
    tag = (root / CACHEDIR_TAG).read_text()
    assert tag.splitlines()[0] == "Signature: 8a477f597d28d172789f06886806bc55"
    assert json.loads((root / MARKER).read_text())["format"] == 1
    assert classify(str(root)).kind == "ours"


def test_an_empty_existing_directory_is_made_ours(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    prepare_root(tmp_path / "empty")
    assert (tmp_path / "empty" / MARKER).is_file()


@pytest.mark.parametrize(
    "planted",
    [
        "notes.txt",
        "tmp/x.123.y",
        "templates/notes/",
        "templates/a.json",
        "kept/something",
        "clones/x-1-2/",
    ],
)
def test_a_non_empty_unmarked_directory_is_refused_untouched(tmp_path: Path, planted: str) -> None:
    root = tmp_path / "mine"
    target = root / planted.rstrip("/")
    target.parent.mkdir(parents=True)
    target.mkdir() if planted.endswith("/") else target.write_text("precious")
    before = tree(root)
    with pytest.raises(CacheDirError) as refused:
        prepare_root(root)
    message = str(refused.value)
    assert "\n" not in message and "is not a pytest-cowenv cache" in message
    assert planted.rstrip("/").split("/")[0] in message  # the culprit is named
    assert "choose an empty or new cache directory" in message
    assert f"{root}/pytest-cowenv" in message  # a subdirectory would do
    assert tree(root) == before


def test_a_cache_of_the_previous_version_is_adopted(tmp_path: Path) -> None:
    root = legacy_cache(tmp_path / "old")
    assert classify(str(root)).kind == "legacy"
    assert open_layout(root) is not None and not (root / MARKER).exists()  # looking: no change
    prepare_root(root)
    assert classify(str(root)).kind == "ours" and (root / CACHEDIR_TAG).is_file()


def test_only_a_probe_memo_of_the_previous_version_is_adopted(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "fs-probe.json").write_text("{}")
    prepare_root(tmp_path / "old")
    assert (tmp_path / "old" / MARKER).is_file()


@pytest.mark.parametrize(
    "stranger", ["templates/notes", "tmp/x.123.y", "kept/something", "pyc/README", "extra"]
)
def test_a_previous_version_cache_with_a_look_alike_is_refused(
    tmp_path: Path, stranger: str
) -> None:
    root = legacy_cache(tmp_path / "old")
    (root / stranger).write_text("precious")
    before = tree(root)
    with pytest.raises(CacheDirError, match="is not a pytest-cowenv cache"):
        prepare_root(root)
    with pytest.raises(CacheDirError, match=stranger):
        open_layout(root, adopt=True)
    assert tree(root) == before


def test_a_previous_version_cache_needs_all_its_folders(tmp_path: Path) -> None:
    root = tmp_path / "half"
    for sub in ("tmp", "kept"):
        (root / sub).mkdir(parents=True)
    with pytest.raises(CacheDirError, match="but no"):
        prepare_root(root)


def test_a_marker_of_another_format_is_refused(tmp_path: Path) -> None:
    root = prepare_root(tmp_path / "c").root
    (root / MARKER).write_text(json.dumps({"format": 99}))
    with pytest.raises(CacheDirError, match="cache format 99"):
        prepare_root(root)


def test_concurrent_start_ups_all_accept_the_directory_they_mark(tmp_path: Path) -> None:
    root = tmp_path / "fresh"
    root.mkdir()
    errors: list[BaseException] = []

    def start() -> None:
        try:
            for _ in range(20):
                store.claim_at_start(str(root))
                prepare_root(root)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ours = [CACHEDIR_TAG, MARKER, "clones", "pyc", "templates", "tmp"]
    assert sorted(os.listdir(root)) == sorted(ours)


def test_the_header_keeps_no_memo_in_a_directory_that_is_not_ours(tmp_path: Path) -> None:
    root = tmp_path / "theirs"
    root.mkdir()
    (root / "notes.txt").write_text("x")
    header_line(str(root))
    assert os.listdir(root) == ["notes.txt"]
    ours = prepare_root(tmp_path / "ours").root
    header_line(str(ours))
    assert (ours / "fs-probe.json").is_file()


# -- who may write where ---------------------------------------------------------------------


@AS_ROOT
def test_a_group_writable_root_is_refused_unless_the_group_is_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "group"
    root.mkdir()
    root.chmod(0o770)
    os.chown(root, 0, 4242)  # a group with no entry here: nobody knows who is in it
    with pytest.raises(CacheDirError, match=r"writable by its group \(gid 4242\) without"):
        prepare_root(root)
    assert os.listdir(root) == []
    monkeypatch.setattr(store, "_private_group", lambda gid, uid: True)
    prepare_root(root)  # a user private group (umask 002 distributions): nobody else is in it
    root.chmod(0o1770)
    monkeypatch.undo()
    prepare_root(root)  # sticky: the group cannot rename our entries


def test_a_private_group_has_us_as_its_only_member(monkeypatch: pytest.MonkeyPatch) -> None:
    import grp
    import pwd

    users = {1000: ("me", 1000), 1001: ("you", 1001), 1002: ("them", 500)}
    groups = {1000: [], 1001: [], 500: [], 600: ["me"], 700: ["me", "you"]}

    def user(uid: int) -> Any:
        name, gid = users[uid]
        return pwd.struct_passwd((name, "x", uid, gid, "", "/", "/bin/sh"))

    monkeypatch.setattr(pwd, "getpwuid", user)
    monkeypatch.setattr(pwd, "getpwall", lambda: [user(u) for u in users])
    monkeypatch.setattr(grp, "getgrgid", lambda gid: grp.struct_group(("g", "x", gid, groups[gid])))
    store._private_group.cache_clear()
    try:
        assert store._private_group(1000, 1000)  # my primary group, nobody else's
        assert store._private_group(600, 1000)  # a group that lists only me
        assert not store._private_group(1001, 1000)  # someone else's
        assert not store._private_group(500, 1000)  # "them"'s primary group
        assert not store._private_group(700, 1000)  # shared with "you"
    finally:
        store._private_group.cache_clear()


def test_a_parent_writable_by_everyone_without_sticky_bit_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "open"
    parent.mkdir()
    parent.chmod(0o777)
    with pytest.raises(CacheDirError) as refused:
        prepare_root(parent / "cache")
    message = str(refused.value)
    assert f"its parent {parent} is writable by everyone without the sticky bit" in message
    assert f"chmod o-w {parent}" in message and "\n" not in message
    parent.chmod(0o1777)  # sticky, as /tmp: nobody can rename what is ours
    prepare_root(parent / "cache")


def test_every_parent_up_to_the_root_is_checked(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (tmp_path / "a").chmod(0o777)
    with pytest.raises(CacheDirError, match=f"its parent {tmp_path / 'a'} is writable"):
        prepare_root(deep / "cache")


def test_a_symlinked_parent_is_checked_where_it_points(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    real.chmod(0o777)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(CacheDirError, match=f"its parent {real} is writable"):
        prepare_root(tmp_path / "link" / "cache")


@AS_ROOT
def test_a_parent_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "theirs"
    parent.mkdir()
    os.chown(parent, 4242, 4242)
    with pytest.raises(CacheDirError, match=f"its parent {parent} belongs to uid 4242"):
        prepare_root(parent / "cache")
    (tmp_path / "link").symlink_to(tmp_path)
    os.lchown(tmp_path / "link", 4242, 4242)  # who owns a link can point it elsewhere
    with pytest.raises(CacheDirError, match=r"a symbolic link.* belongs to uid 4242"):
        prepare_root(tmp_path / "link" / "cache")


@AS_ROOT
def test_kept_made_by_someone_else_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(0o1777)
    prepare_root(root)
    (root / "kept").mkdir()
    os.chown(root / "kept", 4242, 4242)
    with pytest.raises(CacheDirError, match="kept belongs to uid 4242"):
        prepare_root(root)
    with pytest.raises(CacheDirError, match="kept belongs to uid 4242"):
        open_layout(root, adopt=True)


# -- files we write ----------------------------------------------------------------------------


def test_a_new_file_is_never_written_through_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "planted").symlink_to(victim)
    with pytest.raises(FileExistsError):
        write_new_file(str(tmp_path / "planted"), b"ours")
    assert victim.read_text() == "precious"


def test_metadata_is_never_written_through_a_planted_temp_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    meta = tmp_path / f"{KEY}.json"
    (tmp_path / f".{meta.name}.{os.getpid()}.tmp").symlink_to(victim)
    write_atomically(meta, '{"key": 1}')
    assert victim.read_text() == "precious" and json.loads(meta.read_text()) == {"key": 1}


def test_the_probe_memo_is_written_without_following_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_cowenv import report

    written: list[str] = []
    monkeypatch.setattr(report, "write_new_file", lambda path, data: written.append(path))
    root = prepare_root(tmp_path / "c").root
    header_line(str(root))
    (tmp,) = written
    assert os.path.dirname(tmp) == str(root) and tmp.endswith(".tmp")


@pytest.mark.parametrize("fs", ["btrfs", "xfs", "ext4"])
def test_sync_filesystem_works_on_real_filesystems(request: pytest.FixtureRequest, fs: str) -> None:
    place: Path = request.getfixturevalue(f"{fs}_dir")
    (place / "f").write_bytes(b"x" * 100_000)
    sync_filesystem(str(place))


def test_the_tree_is_on_disk_before_the_metadata_that_says_it_is_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    events: list[str] = []
    real_sync, real_write = sync_filesystem, write_atomically

    def sync(path: str) -> None:
        events.append(f"sync {Path(path).parent.name}")
        time.sleep(0.3)  # the sync runs beside the manifest and hashes: it must be awaited
        real_sync(path)
        events.append("synced")

    def write(path: Path, text: str) -> None:
        events.append(f"write {path.suffix}")
        real_write(path, text)

    monkeypatch.setattr(template_module, "sync_filesystem", sync)
    monkeypatch.setattr(template_module, "write_atomically", write)
    wheels = standard_wheelhouse(tmp_path / "wheels")
    spec = TemplateSpec.create(["alpha==1.0"], index=IndexOptions((str(wheels),), offline=True))
    TemplateCache(prepare_root(tmp_path / "cache")).get(spec)
    assert events == ["sync templates", "synced", "write .json"]


def test_a_failed_sync_publishes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)

    def sync(path: str) -> None:
        time.sleep(0.1)
        raise OSError(errno.EIO, "Input/output error", path)

    monkeypatch.setattr(template_module, "sync_filesystem", sync)
    wheels = standard_wheelhouse(tmp_path / "wheels")
    spec = TemplateSpec.create(["alpha==1.0"], index=IndexOptions((str(wheels),), offline=True))
    layout = prepare_root(tmp_path / "cache")
    with pytest.raises(TemplateBuildError, match="Input/output error"):
        TemplateCache(layout).get(spec)
    assert sorted(p.name for p in layout.templates.iterdir()) == [f"{spec.key()}.lock"]
    assert list(layout.tmp.iterdir()) == []


# -- one-line errors, and the front end's own option -------------------------------------------


def test_culprits_with_a_newline_keep_errors_on_one_line(tmp_path: Path) -> None:
    assert shown("a\nb") == "'a\\nb'" and shown("plain path") == "plain path"
    with pytest.raises(SpecError) as bad:
        TemplateSpec.create(["al\npha"])
    assert "\n" not in str(bad.value)
    with pytest.raises(SpecError) as missing:
        TemplateSpec.create(["./no\nsuch.whl"], base_dir=tmp_path)
    assert "\n" not in str(missing.value)
    odd = tmp_path / "odd\nname"
    odd.mkdir()
    (odd / "f").write_text("x")
    with pytest.raises(CacheDirError) as refused:
        prepare_root(odd)
    assert "\n" not in str(refused.value) and "'" in str(refused.value)
    with pytest.raises(CacheDirError) as no_parent:
        prepare_root(tmp_path / "no\nparent" / "c")
    assert "\n" not in str(no_parent.value)


def test_an_invalid_requirement_is_one_line_even_without_a_newline() -> None:
    with pytest.raises(SpecError) as bad:
        TemplateSpec.create(["alpha>>>1"])
    assert "\n" not in str(bad.value) and "'alpha>>>1': invalid requirement" in str(bad.value)


def test_the_core_names_no_front_end_flag(tmp_path: Path) -> None:
    with pytest.raises(CacheDirError) as missing:
        prepare_root(tmp_path / "no" / "such")
    message = str(missing.value)
    assert "--" not in message and "choose another cache directory" in message
    assert with_option(message, "--dir").endswith("choose another cache directory (--dir)")
    assert with_option("no such phrase", "--dir") == "no such phrase"


def test_a_waiting_builder_and_a_pruner_share_one_lock_file(tmp_path: Path) -> None:
    """Prune leaves the build lock in place: the file a waiter locks is the one others see."""
    from pytest_cowenv.maintenance import remove_template

    layout = prepare_root(tmp_path / "c")
    layout.template(KEY, 1).mkdir()
    layout.meta(KEY, 1).write_text(json.dumps({"key": KEY}))
    layout.lock(KEY).touch()
    before = layout.lock(KEY).stat()
    assert remove_template(layout, KEY, 1) is None
    assert not layout.template(KEY, 1).exists() and not layout.meta(KEY, 1).exists()
    assert os.path.samestat(layout.lock(KEY).stat(), before)


# -- the build lock ------------------------------------------------------------------------------


def test_the_build_lock_excludes_threads_processes_and_filelock(tmp_path: Path) -> None:
    """An exclusive flock, as filelock takes it: held by one thread, another thread, another
    process with filelock, and a second BuildLock of the same path all find it taken."""
    import subprocess
    import sys

    import filelock

    from pytest_cowenv._atomic import BuildLock

    path = tmp_path / "k.lock"
    first, second = BuildLock(path), BuildLock(path)
    assert first.try_acquire()
    assert not second.try_acquire()
    in_thread: list[bool] = []
    thread = threading.Thread(target=lambda: in_thread.append(BuildLock(path).try_acquire()))
    thread.start()
    thread.join()
    assert in_thread == [False]
    code = "import filelock, sys\ntry:\n    filelock.FileLock(sys.argv[1]).acquire(timeout=0)\n"
    code += "except filelock.Timeout:\n    print('held')\n"
    held = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert held.stdout == "held\n"
    first.release()
    assert second.try_acquire()
    second.release()
    theirs = filelock.FileLock(str(path))
    theirs.acquire()
    assert not first.try_acquire()
    theirs.release()
    assert first.try_acquire()
    first.release()


def test_a_build_lock_removed_while_waited_for_is_not_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``clean --all`` unlinks a key's lock file under the lock: a waiter that opened the old
    file before must not take that one (two builders would hold different files)."""
    import fcntl

    from pytest_cowenv._atomic import BuildLock

    path = tmp_path / "k.lock"
    real_flock = fcntl.flock

    def removed_first(fd: int, operation: int) -> None:
        path.unlink()  # between the waiter's open and its flock
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", removed_first)
    waiter = BuildLock(path)
    assert not waiter.try_acquire()
    monkeypatch.setattr(fcntl, "flock", real_flock)
    assert not path.exists()
    assert waiter.try_acquire() and path.exists()  # the next try: a new file, locked
    assert not BuildLock(path).try_acquire()
    waiter.release()


def test_leftovers_of_dead_runs_go_behind_the_first_clone(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clean-up of dead runs' leftovers starts in the background once the session has
    made its first clone, never at its first look at the cache, where it would slow the build
    down (see test_compile_behind); closing the session waits for it."""
    from pytest_cowenv import maintenance
    from pytest_cowenv.session import CowEnvSession, Settings

    release, started, done = threading.Event(), threading.Event(), threading.Event()

    def slow_clean(layout: Any) -> list[Path]:
        started.set()
        release.wait(30)
        done.set()
        return []

    monkeypatch.setattr(maintenance, "clean_stale", slow_clean)
    session = CowEnvSession(Settings(root=str(root), pool=0))
    assert session.layout.templates.is_dir()
    assert not started.wait(0.2), "cleaning started before any build or clone"
    env = session.acquire(session.spec([]))  # nothing to install: no installer runs
    assert started.wait(30) and not done.is_set()
    session.release(env)
    release.set()
    session.close()
    assert done.is_set()

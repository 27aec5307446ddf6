"""The dependency matrix: ``versions()`` against a wheelhouse (offline) and the real index
(``network``), and the marker's ``matrix=`` (ids, ``-k``, xdist, bad input)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

import pytest

from _helpers import fast_cache
from _wheels import make_alpha, make_wheel
from pytest_cowenv import _releases
from pytest_cowenv._releases import Listing, Release, select
from pytest_cowenv.errors import SpecError
from pytest_cowenv.matrix import keyword_alias, rewrite_keyword

Run = Callable[..., pytest.RunResult]

ALPHAS = ("1.0", "1.1", "1.2.1", "2.0", "2.1rc1", "3.0.dev1")


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``alpha`` in six versions (two prereleases), ``beta`` 1.0 and 2.0."""
    directory = tmp_path_factory.mktemp("matrix-wheels")
    for version in ALPHAS:
        make_alpha(directory, version)
    for version in ("1.0", "2.0"):
        make_wheel(directory, "beta", version)
    return directory


@pytest.fixture
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from fast_cache(tmp_path_factory, "cowenv-matrix")


@pytest.fixture(autouse=True)
def _hermetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("PYTEST_COWENV_", "PYTEST_XDIST_")) or name == "PYTEST_ADDOPTS":
            monkeypatch.delenv(name)
    monkeypatch.setenv("PYTEST_COWENV_DIR", str(tmp_path / "default-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def run(pytester: pytest.Pytester, wheelhouse: Path, cache: Path) -> Run:
    """``run(*args, subprocess=False)``: pytest offline, with the wheelhouse."""

    def run(*args: str, subprocess: bool = False, links: Path = wheelhouse) -> pytest.RunResult:
        options = ["-p", "no:cacheprovider", f"--cowenv-dir={cache}"]
        options += [
            f"--cowenv-find-links={links}",
            "--cowenv-offline",
            "-W",
            "ignore::pytest_cowenv.CowEnvWarning",
            *args,
        ]
        if subprocess:
            return pytester.runpytest_subprocess(*options, timeout=300)
        return pytester.runpytest_inprocess(*options)

    return run


def ids(result: pytest.RunResult, test: str) -> list[str]:
    """The ids of ``test`` that ran (``-v`` output), in order."""
    return re.findall(rf"::{test}\[(.*?)\] (?:PASSED|FAILED|ERROR)", result.stdout.str())


# --- versions() -----------------------------------------------------------------------------


def test_versions_one_per_group_from_a_wheelhouse(pytester: pytest.Pytester, run: Run) -> None:
    pytester.makepyfile(
        """
        import pytest
        from pytest_cowenv import versions

        @pytest.mark.parametrize("req", versions("alpha>=1.0"))
        def test_minor(req): pass

        @pytest.mark.parametrize("req", versions("alpha>=1.0,<3", each="major"))
        def test_major(req): pass

        @pytest.mark.parametrize("req", versions("alpha", each="patch", latest=2))
        def test_patch(req): pass

        @pytest.mark.parametrize("req", versions("alpha", each="all", pre=True))
        def test_all(req): pass

        @pytest.mark.parametrize("req", versions("alpha>=1.1", ("lowest", "highest")))
        def test_bounds(req): pass

        @pytest.mark.parametrize("req", versions("alpha>=1.0.5; python_version > '3'"))
        def test_cut(req): pass
        """
    )
    result = run("-v")
    result.assert_outcomes(passed=19)
    assert ids(result, "test_minor") == [
        "alpha==1.0.*",
        "alpha==1.1.*",
        "alpha==1.2.*",
        "alpha==2.0.*",
    ]
    assert ids(result, "test_major") == ["alpha==1.*", "alpha==2.*"]
    assert ids(result, "test_patch") == ["alpha==1.2.1", "alpha==2.0"]
    assert ids(result, "test_all") == [f"alpha=={v}" for v in ALPHAS]
    assert ids(result, "test_bounds") == ["alpha==1.1", "alpha==2.0"]
    # No release of 1.0 matches >=1.0.5; extras and markers stay.
    assert ids(result, "test_cut") == [
        f'alpha=={m}.*; python_version > "3"' for m in ("1.1", "1.2", "2.0")
    ]


def test_versions_made_before_pytest_read_its_options(pytester: pytest.Pytester, run: Run) -> None:
    """A rootdir conftest is imported before ``pytest_configure``: its ``versions()`` lists
    with the options of the run that collects (here: offline, the wheelhouse)."""
    pytester.makeconftest(
        """
        from pytest_cowenv import versions

        ALPHAS = versions("alpha", each="major")

        def pytest_generate_tests(metafunc):
            if "alpha" in metafunc.fixturenames:
                metafunc.parametrize("alpha", ALPHAS)
        """
    )
    pytester.makepyfile("def test_it(alpha): pass")
    assert ids(run("-v"), "test_it") == ["alpha==1.*", "alpha==2.*"]


def test_a_listing_is_cached_until_refreshed(
    pytester: pytest.Pytester, run: Run, wheelhouse: Path, tmp_path: Path, cache: Path
) -> None:
    links = tmp_path / "links"
    links.mkdir()
    for version in ("1.0", "2.0"):
        make_alpha(links, version)
    pytester.makepyfile(
        """
        import pytest
        from pytest_cowenv import versions

        @pytest.mark.parametrize("req", versions("alpha", each="major"))
        def test_it(req): pass
        """
    )
    assert ids(run("-v", links=links), "test_it") == ["alpha==1.*", "alpha==2.*"]
    listings = sorted(p.name for p in (cache / "versions").iterdir())
    assert len(listings) == 2 and {Path(n).suffix for n in listings} == {".json", ".lock"}
    make_alpha(links, "3.0")
    assert ids(run("-v", links=links), "test_it") == ["alpha==1.*", "alpha==2.*"]  # cached
    refreshed = run("-v", "--cowenv-refresh-versions", links=links)
    assert ids(refreshed, "test_it") == ["alpha==1.*", "alpha==2.*", "alpha==3.*"]


def test_select_pins_what_a_wildcard_would_not_install() -> None:
    listing = Listing(
        "x",
        tuple(
            [Release(v) for v in ("1.0.0", "1.0.1", "1.1.0", "2.0.0rc1", "1.2.0")]
            + [Release("1.2.1", yanked=True)]
        ),
        "index I",
        0.0,
    )
    assert select("x", listing) == ["x==1.0.*", "x==1.1.*", "x==1.2.*"]
    # The requirement cuts 1.0 in two: its newest matching release is pinned.
    assert select("x>=1.0.1", listing) == ["x==1.0.1", "x==1.1.*", "x==1.2.*"]
    # Newest is yanked, or a prerelease: a wildcard would not install it.
    assert select("x", listing, yanked=True) == ["x==1.0.*", "x==1.1.*", "x==1.2.1"]
    assert select("x", listing, pre=True, latest=2) == ["x==1.2.*", "x==2.0.0rc1"]
    assert select("x[a,b]>=1.1", listing, "lowest") == ["x[a,b]==1.1.0"]
    with pytest.raises(SpecError, match=r"no release matches on index I; it has 1\.0\.0 … 1\.2\.0"):
        select("x>=3", listing)
    with pytest.raises(SpecError, match=r"each='newest'\): give one of major, minor"):
        select("x", listing, "newest")
    with pytest.raises(SpecError, match=r"latest=0\): give a whole number"):
        select("x", listing, latest=0)
    with pytest.raises(SpecError, match=r"^versions\('x >> 1'\): not a requirement: "):
        select("x >> 1", listing)


def test_yanked_files_are_read_from_pips_log() -> None:
    log = (
        "  Skipping link: yanked for reason: broken: see https://x/y: "
        "https://files.example/p/x-1.2.1-py3-none-any.whl#sha256=ab (from https://i/simple/x/)"
        " (requires-python:>=3.8)\n"
        "  Skipping link: yanked for reason: <none given>: https://files.example/x-0.9.tar.gz "
        "(from https://i/simple/x/)\n"
        "  Skipping link: yanked for reason: r: https://files.example/xy-5.0.tar.gz (from z)\n"
    )
    assert _releases._yanked_versions("x", log) == {"1.2.1", "0.9"}


def test_keyword_aliases() -> None:
    assert keyword_alias("pytest==8.3.*") == "pytest-8.3"
    assert keyword_alias("pytest[testing]==8.3.5; python_version > '3'") == "pytest-8.3.5"
    assert keyword_alias("pytest>=8") is None
    assert rewrite_keyword("pytest==9") == "pytest-9"
    assert (
        rewrite_keyword("(pytest==8.3.* or x==1) and not slow")
        == "(pytest-8.3 or x-1) and not slow"
    )
    assert rewrite_keyword("test_a and not b") == "test_a and not b"


# --- the marker's matrix --------------------------------------------------------------------

MATRIX_TESTS = """
import pytest
from pytest_cowenv import versions

def version(env, module):
    return env.run("python", "-c", f"import {module}; print({module}.VERSION)").stdout.strip()

AXES = {"alpha": versions("alpha>=1.1", latest=2), "beta": ["beta==1.0", "beta==2.0"]}

@pytest.mark.cowenv(matrix=AXES)
def test_suite(cowenv, request):
    alpha, beta = request.node.callspec.id.split("-")
    assert version(cowenv, "alpha").startswith(alpha[len("alpha=="):].rstrip(".*"))
    assert version(cowenv, "beta") == beta[len("beta=="):]
    assert "alpha" in " ".join(cowenv.template.requirements)

@pytest.mark.cowenv("beta==1.0", matrix={"alpha": versions("alpha", each=("lowest", "highest"))})
def test_bounds(cowenv):
    assert version(cowenv, "beta") == "1.0"

def test_plain():
    pass

@pytest.mark.parametrize("req", versions("alpha>=2"))
def test_param(req):
    pass

def test_factory(cowenv_factory):
    cowenv_factory("alpha", matrix={"alpha": ["alpha==1.0"]})
"""


def test_matrix_makes_one_test_per_combination(pytester: pytest.Pytester, run: Run) -> None:
    pytester.makepyfile(MATRIX_TESTS)
    result = run("-v")
    result.assert_outcomes(passed=8, failed=1)
    result.stdout.fnmatch_lines(["matrix= parametrizes tests: give it to the cowenv marker"])
    assert ids(result, "test_suite") == [
        "alpha==1.2.*-beta==1.0",
        "alpha==1.2.*-beta==2.0",
        "alpha==2.0.*-beta==1.0",
        "alpha==2.0.*-beta==2.0",
    ]
    assert ids(result, "test_bounds") == ["alpha==1.0", "alpha==2.0"]


@pytest.mark.parametrize(
    ("expression", "selected"),
    [
        (
            "alpha==2",
            [
                "test_suite[alpha==2.0.*-beta==1.0]",
                "test_suite[alpha==2.0.*-beta==2.0]",
                "test_bounds[alpha==2.0]",
                "test_param[alpha==2.0.*]",
            ],
        ),
        ("alpha==1.2.* and beta==2", ["test_suite[alpha==1.2.*-beta==2.0]"]),
        ("test_bounds and not alpha==2.0", ["test_bounds[alpha==1.0]"]),
        ("alpha-1.2", ["test_suite[alpha==1.2.*-beta==1.0]", "test_suite[alpha==1.2.*-beta==2.0]"]),
    ],
)
def test_k_selects_by_requirement(
    pytester: pytest.Pytester, run: Run, expression: str, selected: list[str]
) -> None:
    pytester.makepyfile(MATRIX_TESTS)
    result = run("--collect-only", "-q", "-k", expression)
    assert [line.split("::")[1] for line in result.outlines if "::" in line] == selected


def test_matrix_under_xdist_builds_each_combination_once(
    pytester: pytest.Pytester, run: Run
) -> None:
    pytester.makepyfile(MATRIX_TESTS)
    # Listed afresh: the second worker reads what the first listed for this run.
    result = run("-n", "2", "-v", "-k", "not factory", "--cowenv-refresh-versions", subprocess=True)
    result.assert_outcomes(passed=8)
    built = [line for line in result.outlines if line.startswith("templates built:")]
    assert built and built[0].startswith("templates built: 6:"), result.outlines


def test_bad_input_fails_the_tests_of_its_marker_only(
    pytester: pytest.Pytester, run: Run, wheelhouse: Path
) -> None:
    pytester.makepyfile(
        """
        import pytest
        from pytest_cowenv import versions

        @pytest.mark.cowenv(matrix={"alpha": versions("alpha>=7")})
        def test_no_match(cowenv): pass

        @pytest.mark.cowenv(matrix={"alpha": versions("alpha>>7")})
        def test_not_a_requirement(cowenv): pass

        @pytest.mark.cowenv(matrix={"alpha": "alpha==1.0"})
        def test_not_a_list(cowenv): pass

        @pytest.mark.cowenv(matrix={"alpha": []})
        def test_empty(cowenv): pass

        @pytest.mark.parametrize("req", versions("nosuchthing"))
        def test_no_project(req): pass

        @pytest.mark.cowenv(matrix={"alpha": ["alpha==1.0"]})
        def test_fine(cowenv): pass
        """
    )
    result = run("-v")
    result.assert_outcomes(passed=1, errors=5)
    out = result.stdout.str()
    assert "Traceback" not in out
    where = f"find-links {wheelhouse} (offline: no index)"
    result.stdout.fnmatch_lines(
        [
            f"versions('alpha>=7'): no release matches on {where}; it has 1.0 … 2.0 "
            "(prereleases and yanked releases left out)",
            "versions('alpha>>7'): not a requirement: *",
            "matrix axis 'alpha': 'alpha==1.0' is not a list of requirements; give a list or "
            "versions('alpha==1.0')",
            "matrix axis 'alpha' is empty",
            f"versions('nosuchthing'): no release matches on {where}; it has no release of "
            "nosuchthing*",
        ],
        consecutive=False,
    )


def test_an_unreachable_index_is_named(pytester: pytest.Pytester, cache: Path) -> None:
    pytester.makepyfile(
        """
        import pytest
        from pytest_cowenv import versions

        @pytest.mark.cowenv(matrix={"alpha": versions("alpha")})
        def test_it(cowenv): pass

        def test_other(): pass
        """
    )
    result = pytester.runpytest_inprocess(
        "-p",
        "no:cacheprovider",
        f"--cowenv-dir={cache}",
        "--cowenv-index-url=http://127.0.0.1:9/simple",
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "listing the releases of alpha: http://127.0.0.1:9/simple/alpha/ is unreachable "
            "(*Connection refused); to list offline, give --cowenv-find-links DIR and "
            "--cowenv-offline"
        ]
    )
    (listing,) = (cache / "versions").glob("*.json")  # the outcome, for this run's workers
    assert "releases" not in json.loads(listing.read_text())


def test_an_object_address_with_404_in_it_is_no_missing_page() -> None:
    """pip names the failed connection's object, whose address may hold "404": the index is
    still unreachable, not missing a page (it was told as "no release of alpha" then)."""
    from pytest_cowenv._releases import unreachable_in

    refused = (
        "Could not fetch URL http://127.0.0.1:9/simple/alpha/: connection error: "
        "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: "
        "/simple/alpha/ (Caused by NewConnectionError('<pip._vendor.urllib3.connection."
        "HTTPConnection object at 0x7f404e3c1c10>: Failed to establish a new connection: "
        "[Errno 111] Connection refused')) - skipping"
    )
    missing = (
        "Could not fetch URL https://pypi.org/simple/alpha/: 404 Client Error: Not Found for "
        "url: https://pypi.org/simple/alpha/ - skipping"
    )
    assert unreachable_in(f"{missing}\n{refused}\n") == (
        "http://127.0.0.1:9/simple/alpha/",
        refused.split("/: ", 1)[1].removesuffix(" - skipping"),
    )
    assert unreachable_in(missing) is None


# --- the cache of listings ------------------------------------------------------------------


def test_prune_removes_old_listings_and_clean_all_the_folder(
    pytester: pytest.Pytester, run: Run, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_cowenv.cli import main

    pytester.makepyfile(
        """
        import pytest
        from pytest_cowenv import versions

        @pytest.mark.parametrize("a", versions("alpha"))
        @pytest.mark.parametrize("b", versions("beta"))
        def test_it(a, b): pass
        """
    )
    run().assert_outcomes(passed=8)
    listings = sorted((cache / "versions").glob("*.json"))
    assert len(listings) == 2
    mine = cache / "versions" / "notes.txt"
    mine.write_text("mine")
    os.utime(listings[0], (1, 1))  # written in 1970
    assert main(["clean", "--dir", str(cache)]) == 0  # an old listing may stand in offline
    assert sorted((cache / "versions").glob("*.json")) == listings
    assert main(["prune", "--older-than", "30", "--dir", str(cache)]) == 0
    assert "release listings (1)" in capsys.readouterr().out
    assert sorted((cache / "versions").glob("*.json")) == listings[1:]
    assert main(["clean", "--all", "--dir", str(cache)]) == 0
    assert sorted(p.name for p in (cache / "versions").iterdir()) == ["notes.txt"]  # not ours
    mine.unlink()
    assert main(["clean", "--all", "--dir", str(cache)]) == 0
    assert not cache.exists()


def test_a_cache_left_by_rm_rf_may_keep_its_listings(tmp_path: Path) -> None:
    from pytest_cowenv import marker

    key = "0123456789abcdef01234567"
    (tmp_path / "templates" / f"{key}.1").mkdir(parents=True)  # what rm -rf cannot remove
    (tmp_path / "versions").mkdir()
    (tmp_path / "versions" / f"{key}.lock").touch()
    assert marker.classify(str(tmp_path)).kind == "remains"
    (tmp_path / "versions" / "notes.txt").touch()
    assert marker.classify(str(tmp_path)).kind == "foreign"  # not a name of ours


def test_the_workers_of_one_run_get_the_first_listers_outcome(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Whatever the index does meanwhile, processes with the same ``fresh_after`` (one xdist
    run) get what the first one got: an error, a listing, an older listing standing in."""
    from pytest_cowenv._install import IndexOptions
    from pytest_cowenv._releases import Unreachable, list_releases

    answers: list[object] = [Unreachable("down"), ("1.0",), ("1.0", "2.0"), Unreachable("down")]
    calls: list[object] = []

    def list_now(name: str, index: IndexOptions, python: Optional[str] = None) -> Listing:
        answer = answers[len(calls)]
        calls.append(answer)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, tuple)
        return Listing(name, tuple(Release(v) for v in answer), "I", listed_at=1.0)

    monkeypatch.setattr(_releases, "_list_now", list_now)

    def versions(run: float) -> tuple[str, ...]:
        listing = list_releases("x", IndexOptions(), cache_dir=tmp_path, fresh_after=run)
        return tuple(r.version for r in listing.releases) + (
            ("stale",) if listing.stale_because else ()
        )

    for _ in range(2):  # a worker, then the next one of the same run
        with pytest.raises(SpecError, match=r"^down$"):
            versions(run=10.0)
    assert len(calls) == 1
    assert versions(run=0.5) == ("1.0",) and len(calls) == 2  # another run lists again
    assert versions(run=0.5) == ("1.0",) and len(calls) == 2
    assert versions(run=1.5) == ("1.0", "2.0") and len(calls) == 3  # 1.0's listing is stale
    assert versions(run=20.0) == ("1.0", "2.0", "stale") and len(calls) == 4
    assert versions(run=20.0) == ("1.0", "2.0", "stale") and len(calls) == 4


# --- an index over HTTP ---------------------------------------------------------------------


@pytest.fixture
def http_index(wheelhouse: Path, tmp_path: Path) -> Iterator[tuple[str, Callable[[], None]]]:
    """A simple (PEP 503) index of the wheelhouse on localhost, where ``alpha`` 2.0 is yanked
    (PEP 592); yields its URL and a function that stops it."""
    import functools
    import http.server
    import threading

    page = tmp_path / "index" / "simple" / "alpha"
    page.mkdir(parents=True)
    links = []
    for wheel in sorted(wheelhouse.glob("alpha-*.whl")):
        shutil.copy(wheel, page / wheel.name)
        yanked = ' data-yanked="broken"' if "-2.0-" in wheel.name else ""
        links.append(f'<a href="{wheel.name}"{yanked}>{wheel.name}</a>')
    (page / "index.html").write_text("<html><body>" + "".join(links) + "</body></html>")
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "index")
    )
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stopped: list[bool] = []

    def stop() -> None:
        if not stopped:
            server.shutdown()
            server.server_close()
            stopped.append(True)

    yield f"http://127.0.0.1:{server.server_address[1]}/simple", stop
    stop()


def test_an_index_over_http_yanked_and_unreachable(
    pytester: pytest.Pytester, cache: Path, http_index: tuple[str, Callable[[], None]]
) -> None:
    url, stop = http_index
    pytester.makepyfile(
        """
        import pytest
        from pytest_cowenv import versions

        @pytest.mark.parametrize("req", versions("alpha", "patch"))
        def test_without_yanked(req): pass

        @pytest.mark.parametrize("req", versions("alpha", "patch", yanked=True))
        def test_with_yanked(req): pass
        """
    )
    args = ["-p", "no:cacheprovider", "-v", f"--cowenv-dir={cache}", f"--cowenv-index-url={url}"]
    result = pytester.runpytest_inprocess(*args)
    assert ids(result, "test_without_yanked") == ["alpha==1.0", "alpha==1.1", "alpha==1.2.1"]
    assert ids(result, "test_with_yanked") == [
        "alpha==1.0",
        "alpha==1.1",
        "alpha==1.2.1",
        "alpha==2.0",
    ]
    stop()
    offline = pytester.runpytest_inprocess(*args, "--cowenv-refresh-versions")
    offline.assert_outcomes(passed=7)  # the listing of the first run stands in
    offline.stdout.fnmatch_lines(
        [
            f"*CowEnvWarning: listing the releases of alpha: {url}/alpha/ is unreachable (*); "
            "using its listing of * from the cache"
        ]
    )


# --- the real index -------------------------------------------------------------------------


@pytest.mark.network
def test_versions_from_the_real_index(
    pytester: pytest.Pytester, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # this machine's mirrors: not the index
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    pytester.makepyfile(
        """
        import pytest
        from pytest_cowenv import versions

        @pytest.mark.parametrize("req", versions("pytest>=8.2,<9"))
        def test_minors(req): pass

        @pytest.mark.parametrize("req", versions("pytest>=8.1,<8.2", "all"))
        def test_without_yanked(req): pass

        @pytest.mark.parametrize("req", versions("pytest>=8.1,<8.2", "all", yanked=True))
        def test_with_yanked(req): pass

        @pytest.mark.parametrize("req", versions("pytest>=8.1,<8.2", yanked=True))
        def test_minor_with_yanked(req): pass
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--cowenv-dir={cache}", "-v")
    result.assert_outcomes(passed=9)
    assert ids(result, "test_minors") == ["pytest==8.2.*", "pytest==8.3.*", "pytest==8.4.*"]
    # 8.1.0 was yanked (pytest-dev/pytest#12069).
    assert ids(result, "test_without_yanked") == ["pytest==8.1.1", "pytest==8.1.2"]
    assert ids(result, "test_with_yanked") == ["pytest==8.1.0", "pytest==8.1.1", "pytest==8.1.2"]
    assert ids(result, "test_minor_with_yanked") == ["pytest==8.1.*"]


def test_the_command_line_lists_what_versions_would(
    wheelhouse: Path, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_cowenv.cli import main

    offline = ["--find-links", str(wheelhouse), "--offline", "--dir", str(cache)]
    assert main(["versions", "alpha>=1.1", *offline]) == 0
    assert capsys.readouterr().out.split() == ["alpha==1.1.*", "alpha==1.2.*", "alpha==2.0.*"]
    assert main(["versions", "alpha", "--each", "lowest,highest", "--pre", "--json", *offline]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["versions"] == ["alpha==1.0", "alpha==3.0.dev1"]
    assert data["where"] == f"find-links {wheelhouse} (offline: no index)"
    assert main(["versions", "alpha>=7", *offline]) == 1
    assert capsys.readouterr().err.startswith(
        "pytest-cowenv versions: error: versions('alpha>=7'): no release matches on find-links"
    )
    assert main(["versions", "alpha", "--index-url", "http://127.0.0.1:9/simple"]) == 1
    assert capsys.readouterr().err.endswith(
        "is unreachable ([Errno 111] Connection refused); to list offline, give --find-links "
        "DIR --offline\n"
    )


def _other_python() -> Optional[str]:
    """An interpreter of another minor version than this one, if this machine has one."""
    import glob
    import subprocess
    import sys

    mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for minor in ("3.9", "3.10", "3.12", "3.13"):
        if minor == mine:
            continue
        for exe in [
            shutil.which(f"python{minor}"),
            *glob.glob(f"/root/.pyenv/versions/{minor}*/bin/python{minor}"),
        ]:
            if exe and subprocess.run([exe, "-c", ""], capture_output=True).returncode == 0:
                return exe
    return None


def test_versions_for_another_interpreter(
    pytester: pytest.Pytester, wheelhouse: Path, tmp_path: Path, cache: Path
) -> None:
    """pip lists for the interpreter named (its wheel tags), as the marker's ``python=``."""
    import subprocess

    other = _other_python()
    if other is None:
        pytest.skip("needs a Python of another minor version (python3.9 … python3.13)")
    tag = (
        "cp"
        + subprocess.run(
            [other, "-c", "import sys; print('%d%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    links = tmp_path / "links"
    links.mkdir()
    for wheel in wheelhouse.glob("alpha-*.whl"):
        shutil.copy(wheel, links / wheel.name)
    shutil.copy(links / "alpha-2.0-py3-none-any.whl", links / f"alpha-4.0-{tag}-none-any.whl")
    pytester.makepyfile(
        f"""
        import pytest
        from pytest_cowenv import versions

        @pytest.mark.cowenv(python={other!r}, matrix={{"alpha": versions("alpha>=2")}})
        def test_there(cowenv): pass

        @pytest.mark.parametrize("req", versions("alpha>=2"))
        def test_here(req): pass
        """
    )
    result = pytester.runpytest_inprocess(
        "-p",
        "no:cacheprovider",
        "--collect-only",
        "-q",
        f"--cowenv-dir={cache}",
        f"--cowenv-find-links={links}",
        "--cowenv-offline",
    )
    assert [line.split("::")[1] for line in result.outlines if "::" in line] == [
        "test_there[alpha==2.0.*]",
        "test_there[alpha==4.0.*]",
        "test_here[alpha==2.0.*]",
    ]

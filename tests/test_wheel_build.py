"""What uv takes from its cache before it asks the index: a local project's build requirements
and a template's hash-checked set come from uv's cache when the cache has them, from the index
only when it has not. A real uv, real builds, an index over HTTP on localhost that counts what
it is asked and tells uv to ask again every time."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from _helpers import remove_cache
from _wheels import make_wheel
from conftest import skip_without_uv
from pytest_cowenv import TemplateCache, TemplateSpec
from pytest_cowenv._install import IndexOptions, build_wheel
from pytest_cowenv.errors import TemplateBuildError
from pytest_cowenv.store import prepare_root
from test_template import BACKEND

pytestmark = pytest.mark.usefixtures("offline_machine")

# The backend needs `alpha` to build: uv installs it into the build environment.
PYPROJECT = """
[build-system]
requires = ["alpha"]
build-backend = "backend"
backend-path = ["."]

[project]
name = "proj"
dynamic = ["version"]
"""

NEEDS_ALPHA = """
_build = build_wheel

def build_wheel(*args, **kwargs):
    import alpha  # the build requirement is there
    return _build(*args, **kwargs)
"""

FAILS = "\ndef build_wheel(*args, **kwargs):\n    raise SystemExit('no wheel today')\n"


class Index:
    """A simple (PEP 503) index of one wheel of ``alpha``, on localhost."""

    def __init__(self, root: Path) -> None:
        page = root / "simple" / "alpha"
        wheel = make_wheel(page, "alpha", "1.0")
        self.alpha_hash = hashlib.sha256(wheel.read_bytes()).hexdigest()
        (page / "index.html").write_text(f'<a href="{wheel.name}">{wheel.name}</a>')
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def end_headers(self) -> None:
                requests.append(self.path)
                # Nothing is fresh: uv must ask again before it uses a cached page or wheel.
                self.send_header("Cache-Control", "no-cache")
                super().end_headers()

            def log_message(self, *args: object) -> None:
                pass

        handler = functools.partial(Handler, directory=str(root))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/simple"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    served = Index(tmp_path / "index")
    yield served
    served.stop()


@pytest.fixture
def uv_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty uv cache of the test's own."""
    skip_without_uv()
    path = tmp_path / "uv-cache"
    monkeypatch.setenv("UV_CACHE_DIR", str(path))
    return path


def make_project(path: Path, backend_tail: str) -> Path:
    (path / "src" / "proj").mkdir(parents=True)
    (path / "pyproject.toml").write_text(PYPROJECT)
    (path / "backend.py").write_text(textwrap.dedent(BACKEND) + backend_tail)
    (path / "src" / "proj" / "__init__.py").write_text("ANSWER = 42\n")
    return path


def build(project: Path, out: Path, index: Index) -> Path:
    out.mkdir()
    return build_wheel(project, out, sys.executable, IndexOptions(index_url=index.url))


def test_a_build_whose_requirements_uv_has_cached_asks_no_index(
    tmp_path: Path, index: Index, uv_cache: Path
) -> None:
    project = make_project(tmp_path / "proj", NEEDS_ALPHA)
    first = build(project, tmp_path / "first", index)
    assert first.name == "proj-0.1-py3-none-any.whl"
    assert any(path.endswith(".whl") for path in index.requests)  # the cache had nothing
    asked = len(index.requests)
    second = build(project, tmp_path / "second", index)
    assert second.name == first.name
    assert index.requests[asked:] == []


def test_a_build_whose_requirements_uv_lost_asks_the_index_again(
    tmp_path: Path, index: Index, uv_cache: Path
) -> None:
    project = make_project(tmp_path / "proj", NEEDS_ALPHA)
    build(project, tmp_path / "first", index)
    shutil.rmtree(uv_cache)
    asked = len(index.requests)
    assert build(project, tmp_path / "second", index).name == "proj-0.1-py3-none-any.whl"
    assert any(path.endswith(".whl") for path in index.requests[asked:])


def test_a_failing_build_tells_the_backends_error(
    tmp_path: Path, index: Index, uv_cache: Path
) -> None:
    project = make_project(tmp_path / "proj", FAILS)
    with pytest.raises(TemplateBuildError, match="building a wheel failed") as failed:
        build(project, tmp_path / "out", index)
    told = str(failed.value)
    assert "backend.build_wheel" in told
    assert told.splitlines()[1].startswith("command: ")
    assert "--offline" not in told.splitlines()[1]  # the failure of the build with the index


@pytest.fixture
def caches(tmp_path: Path) -> Iterator[Path]:
    """A folder for cache roots, removed with their templates."""
    path = tmp_path / "caches"
    path.mkdir()
    yield path
    for root in path.iterdir() if path.is_dir() else ():
        remove_cache(root)


def test_a_hashed_set_that_uv_has_cached_is_installed_without_the_index(
    tmp_path: Path, index: Index, uv_cache: Path, caches: Path
) -> None:
    (tmp_path / "r.txt").write_text(f"alpha==1.0 --hash=sha256:{index.alpha_hash}\n")
    spec = TemplateSpec.create(
        "-r r.txt", base_dir=tmp_path, index=IndexOptions(index_url=index.url)
    )
    TemplateCache(prepare_root(caches / "first")).get(spec)
    assert any(path.endswith(".whl") for path in index.requests)  # the cache had nothing
    asked = len(index.requests)
    again = TemplateCache(prepare_root(caches / "second")).get(spec)
    assert [r.split("==")[0] for r in again.resolved] == ["alpha"]
    assert index.requests[asked:] == []
    shutil.rmtree(uv_cache)  # and without it, from the index again
    TemplateCache(prepare_root(caches / "third")).get(spec)
    assert any(path.endswith(".whl") for path in index.requests[asked:])

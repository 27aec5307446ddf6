"""pytest glue: options, marker, fixtures, report. Everything else lives in the core."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Callable, Optional

import pytest

if TYPE_CHECKING:
    from .env import CowEnv
    from .session import CowEnvSession, Settings

LINK_MODES = ("auto", "snapshot", "clone", "hardlink", "copy")
KEEP_VALUES = ("none", "failed", "all")
MARKER_KEYWORDS = ("python", "project", "link_mode", "pip")
MARKER_DOC = (
    "cowenv(*requirements, python=None, project=False, link_mode=None, pip=False): "
    "give the `cowenv` fixture a private copy-on-write virtual environment with these "
    "requirements (PEP 508 strings, local wheels or project directories)."
)

session_key = pytest.StashKey["CowEnvSession"]()
settings_key = pytest.StashKey["Settings"]()
envs_key = pytest.StashKey[list["CowEnv"]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cowenv", "copy-on-write virtual environments (pytest-cowenv)")

    def option(name: str, help: str, ini_type: Optional[str] = None, **kw: Any) -> None:
        group.addoption(
            f"--cowenv-{name}", dest=f"cowenv_{name.replace('-', '_')}", help=help, **kw
        )
        if ini_type != "none":
            parser.addini(f"cowenv_{name.replace('-', '_')}", help, type=ini_type)  # type: ignore[arg-type]

    option(
        "dir",
        "cache root for templates and clones (env PYTEST_COWENV_DIR; default: the "
        "user cache dir). Put it on btrfs/XFS/APFS/ReFS for copy-on-write clones.",
        metavar="DIR",
    )
    option(
        "link-mode",
        f"how clones get their files: {'|'.join(LINK_MODES)} "
        "(env PYTEST_COWENV_LINK_MODE; default auto)",
        metavar="MODE",
    )
    option(
        "keep", f"keep clones after tests: {'|'.join(KEEP_VALUES)} (default none)", metavar="WHICH"
    )
    option(
        "pool",
        "clones made ahead per template in use; 0 turns the pool off "
        "(env PYTEST_COWENV_POOL; default 2)",
        metavar="N",
    )
    option(
        "find-links",
        "extra wheel directory for template builds (repeatable)",
        ini_type="linelist",
        action="append",
        metavar="DIR",
    )
    option("index-url", "package index for template builds", metavar="URL")
    option(
        "offline",
        "build templates with no index at all (use --cowenv-find-links)",
        ini_type="bool",
        action="store_true",
        default=None,
    )
    option(
        "rebuild",
        "rebuild every template this run uses",
        ini_type="none",
        action="store_true",
        default=False,
    )
    parser.addini(
        "cowenv_requirements",
        "requirements of the `cowenv` fixture when no marker gives any",
        type="linelist",
    )
    parser.addini(
        "cowenv_pip", "seed pip into templates (default false)", type="bool", default=False
    )


def _pick(config: pytest.Config, name: str, env_var: Optional[str] = None) -> Any:
    """CLI > environment variable > ini."""
    value = config.getoption(f"cowenv_{name}")
    if value is None and env_var:
        value = os.environ.get(env_var) or None
    if value is None:
        value = config.getini(f"cowenv_{name}") or None
    return value


def _choice(value: Optional[str], allowed: tuple[str, ...], what: str, default: str) -> str:
    if value is None:
        return default
    if value not in allowed:
        raise pytest.UsageError(f"{what}: {value!r} is not one of {', '.join(allowed)}")
    return value


def make_settings(config: pytest.Config) -> Settings:
    from ._install import IndexOptions
    from .clone import LinkMode
    from .session import Settings

    mode = _choice(
        _pick(config, "link_mode", "PYTEST_COWENV_LINK_MODE"),
        LINK_MODES,
        "--cowenv-link-mode",
        "auto",
    )
    keep = _choice(
        _pick(config, "keep", "PYTEST_COWENV_KEEP"), KEEP_VALUES, "--cowenv-keep", "none"
    )
    pool_raw = _pick(config, "pool", "PYTEST_COWENV_POOL")
    try:
        pool = 2 if pool_raw is None else int(pool_raw)
        if pool < 0:
            raise ValueError
    except ValueError:
        raise pytest.UsageError(f"--cowenv-pool: {pool_raw!r} is not a whole number ≥ 0") from None
    root = _pick(config, "dir", "PYTEST_COWENV_DIR")
    if root:
        root = os.path.abspath(os.path.expanduser(str(root)))
        if not os.path.isdir(os.path.dirname(root)):
            raise pytest.UsageError(
                f"--cowenv-dir: the parent of {root} does not exist; create it or pick another"
            )
    links = config.getoption("cowenv_find_links") or config.getini("cowenv_find_links") or []
    offline = config.getoption("cowenv_offline")
    if offline is None:
        offline = config.getini("cowenv_offline")
    index = IndexOptions(
        tuple(os.path.abspath(str(p)) for p in links), _pick(config, "index_url"), bool(offline)
    )
    rebuild_before = time.time() if config.getoption("cowenv_rebuild") else 0.0
    workerinput = getattr(config, "workerinput", None)
    if workerinput and "cowenv_rebuild_before" in workerinput:
        rebuild_before = workerinput["cowenv_rebuild_before"]
    return Settings(
        root,
        LinkMode(mode),
        keep,
        rebuild_before,
        index,
        bool(config.getini("cowenv_pip")),
        tuple(config.getini("cowenv_requirements")),
        pool,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_DOC)
    config.stash[settings_key] = make_settings(config)
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(), "cowenv-xdist")


def _session(config: pytest.Config) -> CowEnvSession:
    if session_key not in config.stash:
        from .session import CowEnvSession

        config.stash[session_key] = CowEnvSession(config.stash[settings_key])
    return config.stash[session_key]


def pytest_report_header(config: pytest.Config) -> str:
    from .report import header_line

    return header_line(config.stash[settings_key])


def pytest_unconfigure(config: pytest.Config) -> None:
    if session_key in config.stash:
        config.stash[session_key].close()


class _XdistHooks:
    """Registered only when xdist is present: share the run start, gather worker stats."""

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["cowenv_rebuild_before"] = node.config.stash[settings_key].rebuild_before

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        data = getattr(node, "workeroutput", {}).get("cowenv_stats")
        if data:
            _session(node.config).stats.merge(data)


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if hasattr(config, "workerinput") and session_key in config.stash:
        config.workeroutput["cowenv_stats"] = config.stash[session_key].stats.as_dict()  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if session_key not in config.stash:
        return
    lines = config.stash[session_key].stats.summary_lines()
    if lines:
        terminalreporter.write_sep("=", "cowenv")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    envs = item.stash.get(envs_key, None)
    if envs and report.when == "call":
        keep = item.config.stash[settings_key].keep
        if keep == "all" or (keep == "failed" and report.failed):
            for env in envs:
                env.keep = True
            report.sections.append(("cowenv", "\n".join(f"clone kept at {e.path}" for e in envs)))
    return report


def _acquire(
    request: pytest.FixtureRequest, requirements: tuple[Any, ...], options: dict[str, Any]
) -> CowEnv:
    from .clone import LinkMode
    from .errors import CowEnvError

    session = _session(request.config)
    unknown = sorted(set(options) - set(MARKER_KEYWORDS))
    problem: Optional[str] = None
    if unknown:
        problem = (
            f"cowenv: unknown keyword {', '.join(unknown)}; allowed: {', '.join(MARKER_KEYWORDS)}"
        )
    else:
        try:
            project = options.get("project")
            if project is True:
                project = request.config.rootpath
            elif project is False:
                project = None
            mode = options.get("link_mode")
            if mode is not None and mode not in LINK_MODES:
                raise CowEnvError(f"link_mode={mode!r} is not one of {', '.join(LINK_MODES)}")
            spec = session.spec(
                requirements or session.settings.requirements,
                python=options.get("python"),
                project=project,
                pip=options.get("pip"),
                base_dir=request.path.parent,
            )
            env = session.acquire(spec, request.node.name, LinkMode(mode) if mode else None)
            request.node.stash.setdefault(envs_key, []).append(env)
            return env
        except CowEnvError as exc:
            problem = str(exc)
    pytest.fail(problem, pytrace=False)  # outside `except`: no chained internal frames


def _release(request: pytest.FixtureRequest, env: CowEnv) -> None:
    session = _session(request.config)
    session.release(env, keep=env.keep)


@pytest.fixture
def cowenv(request: pytest.FixtureRequest) -> Iterator[CowEnv]:
    """A private virtual environment, cloned from the template of the closest ``cowenv``
    marker (else ini ``cowenv_requirements``). Removed after the test."""
    marker = request.node.get_closest_marker("cowenv")
    args, kwargs = (marker.args, dict(marker.kwargs)) if marker else ((), {})
    env = _acquire(request, args, kwargs)
    yield env
    _release(request, env)


@pytest.fixture
def cowenv_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., CowEnv]]:
    """``cowenv_factory(*requirements, python=…, project=…, link_mode=…, pip=…)`` returns a
    fresh private clone per call; all are removed after the test."""
    made: list[CowEnv] = []

    def factory(*requirements: Any, **options: Any) -> CowEnv:
        env = _acquire(request, requirements, options)
        made.append(env)
        return env

    yield factory
    for env in made:
        _release(request, env)

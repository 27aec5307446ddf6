"""pytest glue: options, marker, fixtures, report. Everything else lives in the core.

Loading this module must stay cheap (a run that never asks for an environment pays for it):
it imports nothing of the core at module level, and the core is imported by the first fixture.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import pytest

from ._defaults import DEFAULT_POOL

if TYPE_CHECKING:
    from ._coverage import CloneCoverage
    from .env import CowEnv
    from .session import CowEnvSession, Settings
    from .spec import TemplateSpec

LINK_MODES = ("auto", "snapshot", "clone", "hardlink", "copy")
KEEP_VALUES = ("none", "failed", "all")
COV_VALUES = ("auto", "on", "off")  # as _coverage.MODES, which this module must not import
REUSE_VALUES = ("auto", "yes", "no")
SPEC_KEYWORDS = ("groups", "extras", "lock", "resolution", "exclude_newer")
MARKER_KEYWORDS = ("python", "project", "link_mode", "pip", *SPEC_KEYWORDS, "matrix")
MARKER_DOC = (
    "cowenv(*requirements, python=None, project=False, link_mode=None, pip=False, "
    "groups=(), extras=(), lock=None, resolution=None, exclude_newer=None, matrix=None): "
    "give the `cowenv` fixture a private copy-on-write virtual environment with these "
    "requirements (PEP 508 strings, local wheels, project directories, '-r file' or "
    "'-c file'; paths are relative to the test file). python: version or path of the "
    "interpreter; project: True for the project at rootdir or a directory; link_mode: "
    "auto|snapshot|clone|hardlink|copy; pip: seed pip into the environment; groups/extras: "
    "dependency groups and extras of the project's pyproject.toml (or the lock's); lock: "
    "a pylock.toml or uv.lock to install exactly; resolution/exclude_newer: passed to uv; "
    "matrix: {axis: [requirements] or versions(...)}, one test per combination."
)


class Options:
    """What the command line, environment variables and ini decided: plain values, so that
    ``pytest_configure`` imports nothing heavy. :meth:`settings` makes the core's form.

    A plain class: a dataclass would generate its methods with ``exec`` at import, which
    costs an unused plugin milliseconds on every pytest start.
    """

    __slots__ = (
        "constraints",
        "cov",
        "find_links",
        "index_url",
        "keep",
        "link_mode",
        "offline",
        "pip",
        "pool",
        "rebuild_before",
        "requirements",
        "reuse",
        "root",
        "root_option",
        "serial",
    )

    def __init__(
        self,
        *,
        root: Optional[str] = None,
        root_option: str = "--cowenv-dir",
        link_mode: str = "auto",
        keep: str = "none",
        rebuild_before: float = 0.0,
        find_links: tuple[str, ...] = (),
        index_url: Optional[str] = None,
        offline: bool = False,
        pip: bool = False,
        requirements: tuple[str, ...] = (),
        pool: int = DEFAULT_POOL,
        constraints: tuple[str, ...] = (),
        cov: str = "auto",
        reuse: str = "auto",
        serial: bool = False,
    ) -> None:
        self.constraints = constraints
        self.cov = cov
        self.reuse = reuse
        self.root = root
        self.root_option = root_option  # where the user set the cache directory, for errors
        self.link_mode = link_mode
        self.keep = keep
        self.rebuild_before = rebuild_before
        self.find_links = find_links
        self.index_url = index_url
        self.offline = offline
        self.pip = pip
        self.requirements = requirements
        self.pool = pool
        self.serial = serial

    def settings(self) -> Settings:
        from ._install import IndexOptions
        from .clone import LinkMode
        from .session import Settings

        return Settings(
            root=self.root,
            link_mode=LinkMode(self.link_mode),
            keep=self.keep,
            rebuild_before=self.rebuild_before,
            index=IndexOptions(self.find_links, self.index_url, self.offline),
            pip=self.pip,
            requirements=self.requirements,
            pool=self.pool,
            constraints=self.constraints,
            reuse=self.reuse,
            serial=self.serial,
        )


def _skip_assert_rewriting(pluginmanager: pytest.PytestPluginManager) -> None:
    """Let the modules of this package that are imported from now on load as any installed
    module does, not through pytest's assertion-rewriting import hook.

    pytest marks every package of a plugin's distribution for rewriting; each module then
    goes through the hook's own lookup, path matching and pyc cache, which costs more than
    loading the module itself, and the core's modules are on the first test's path. They hold
    no assert a user reads (a failing test's asserts are the user's, still rewritten). The
    hook's list is pytest's private attribute: read with care, and without it (another
    pytest, ``--assert=plain``) nothing changes."""
    hook = getattr(pluginmanager, "rewrite_hook", None)
    marked = getattr(hook, "_must_rewrite", None)
    package = __name__.partition(".")[0]
    if isinstance(marked, set) and package in marked:
        marked.discard(package)
        cache = getattr(hook, "_marked_for_rewrite_cache", None)
        if isinstance(cache, dict):
            cache.clear()  # it remembers our modules seen so far as marked


options_key = pytest.StashKey[Options]()
session_key = pytest.StashKey["CowEnvSession"]()
failed_specs_key = pytest.StashKey[dict[str, str]]()
envs_key = pytest.StashKey[list["CowEnv"]]()


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    _skip_assert_rewriting(pluginmanager)
    group = parser.getgroup("cowenv", "copy-on-write virtual environments (pytest-cowenv)")

    def option(name: str, help: str, ini_type: Optional[str] = None, **kw: Any) -> None:
        dest = f"cowenv_{name.replace('-', '_')}"
        group.addoption(f"--cowenv-{name}", dest=dest, help=help, **kw)
        if ini_type != "none":
            parser.addini(dest, help, type=ini_type)  # type: ignore[arg-type]

    option(
        "dir",
        "cache root for templates and clones (env PYTEST_COWENV_DIR; default: the "
        "user cache dir). Put it on btrfs/XFS/APFS/ReFS for copy-on-write clones.",
        metavar="DIR",
    )
    option(
        "link-mode",
        f"how clones get their files: {'|'.join(LINK_MODES)} "
        "(env PYTEST_COWENV_LINK_MODE; default auto; hardlink is NOT isolated: "
        "writes in a clone reach the template)",
        metavar="MODE",
    )
    option(
        "keep",
        f"keep clones after tests: {'|'.join(KEEP_VALUES)} (env PYTEST_COWENV_KEEP; "
        "default none); kept paths are printed in the test's report",
        metavar="WHICH",
    )
    option(
        "pool",
        "clones made ahead per template in use; 0 turns the pool off "
        f"(env PYTEST_COWENV_POOL; default {DEFAULT_POOL})",
        metavar="N",
    )
    option(
        "reuse",
        f"give a clone that provably did not change to a later test: {'|'.join(REUSE_VALUES)} "
        "(env PYTEST_COWENV_REUSE; default auto: all but btrfs snapshots without watches, "
        "which cost less than their walk; needs the pool)",
        metavar="WHICH",
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
        "rebuild every template this run uses (once per run, shared by xdist workers)",
        ini_type="none",
        action="store_true",
        default=False,
    )
    option(
        "constraint",
        "constraints file applied to every template build, like PIP_CONSTRAINT "
        "(repeatable; its content is part of each template's key)",
        ini_type="linelist",
        action="append",
        metavar="FILE",
    )
    group.addoption(
        "--cowenv-cov",
        dest="cowenv_cov",
        action="store_const",
        const="on",
        help="measure coverage in every Python process of the clones, combined into this "
        "run's (default: when this run measures coverage, with pytest-cov or coverage run)",
    )
    group.addoption(
        "--no-cowenv-cov",
        dest="cowenv_cov",
        action="store_const",
        const="off",
        help="never measure coverage in clones",
    )
    parser.addini(
        "cowenv_cov",
        f"measure coverage in clones: {'|'.join(COV_VALUES)} (default auto: when this run "
        "measures coverage, with pytest-cov or coverage run)",
    )
    option(
        "refresh-versions",
        "list the releases that versions() asks for again, not from the cache of listings "
        "(which are reused for 10 minutes)",
        ini_type="none",
        action="store_true",
        default=False,
    )
    parser.addini(
        "cowenv_requirements",
        "requirements of the `cowenv` fixture when no marker gives any ('-r FILE' and "
        "'-c FILE' lines are relative to the ini file)",
        type="linelist",
    )
    parser.addini(
        "cowenv_pip", "seed pip into templates (default false)", type="bool", default=False
    )


def _pick(config: pytest.Config, name: str, env_var: Optional[str] = None) -> tuple[Any, str]:
    """The value of an option and where it came from: CLI > environment variable > ini."""
    value = config.getoption(f"cowenv_{name}")
    if value is not None:
        return value, f"--cowenv-{name.replace('_', '-')}"
    if env_var and os.environ.get(env_var):
        return os.environ[env_var], env_var
    return config.getini(f"cowenv_{name}") or None, f"ini cowenv_{name}"


def _choice(picked: tuple[Any, str], allowed: tuple[str, ...], default: str) -> str:
    value, where = picked
    if value is None:
        return default
    if value not in allowed:
        raise pytest.UsageError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return str(value)


def _path(config: pytest.Config, value: str, where: str) -> str:
    """Ini paths are relative to the ini file; others to the current directory."""
    path = os.path.expanduser(value)
    if where.startswith("ini") and config.inipath is not None:
        path = os.path.join(config.inipath.parent, path)
    return os.path.abspath(path)


def make_options(config: pytest.Config) -> Options:
    """Read and validate every option; a bad value is a :class:`pytest.UsageError`."""
    mode = _choice(_pick(config, "link_mode", "PYTEST_COWENV_LINK_MODE"), LINK_MODES, "auto")
    keep = _choice(_pick(config, "keep", "PYTEST_COWENV_KEEP"), KEEP_VALUES, "none")
    reuse = _choice(_pick(config, "reuse", "PYTEST_COWENV_REUSE"), REUSE_VALUES, "auto")
    pool_raw, where = _pick(config, "pool", "PYTEST_COWENV_POOL")
    try:
        pool = DEFAULT_POOL if pool_raw is None else int(pool_raw)
        if pool < 0:
            raise ValueError
    except ValueError:
        raise pytest.UsageError(f"{where}: {pool_raw!r} is not a whole number ≥ 0") from None
    root_raw, where = _pick(config, "dir", "PYTEST_COWENV_DIR")
    root = _path(config, str(root_raw), where) if root_raw else None
    root_option = where if root else "--cowenv-dir"
    if root and not os.path.isdir(os.path.dirname(root)):
        from .errors import shown

        raise pytest.UsageError(
            f"{where}: the parent of {shown(root)} does not exist; create it or pick another "
            "directory"
        )
    links = config.getoption("cowenv_find_links")
    if links:
        find_links = tuple(_path(config, str(p), "cli") for p in links)
    else:
        find_links = tuple(_path(config, str(p), "ini") for p in config.getini("cowenv_find_links"))
    given = config.getoption("cowenv_constraint")
    where = "--cowenv-constraint" if given else "ini cowenv_constraint"
    constraints = tuple(
        _path(config, str(p), "cli" if given else "ini")
        for p in (given or config.getini("cowenv_constraint"))
    )
    for path in constraints:
        if not os.path.isfile(path):
            raise pytest.UsageError(f"{where}: no such constraints file {path}")
    offline = config.getoption("cowenv_offline")
    if offline is None:
        offline = config.getini("cowenv_offline")
    workerinput = getattr(config, "workerinput", None)
    if workerinput and "cowenv_rebuild_before" in workerinput:
        rebuild_before = float(workerinput["cowenv_rebuild_before"])  # the controller's start
    else:
        rebuild_before = time.time() if config.getoption("cowenv_rebuild") else 0.0
    cov = _choice(_pick(config, "cov"), COV_VALUES, "auto")
    return Options(
        root=root,
        root_option=root_option,
        link_mode=mode,
        keep=keep,
        rebuild_before=rebuild_before,
        find_links=find_links,
        index_url=_pick(config, "index_url")[0],
        offline=bool(offline),
        pip=bool(config.getini("cowenv_pip")),
        requirements=tuple(
            _ini_requirement(config, line) for line in config.getini("cowenv_requirements")
        ),
        pool=pool,
        constraints=constraints,
        cov=cov,
        reuse=reuse,
        serial=workerinput is None,  # not an xdist worker: this process runs every test
    )


def _ini_requirement(config: pytest.Config, line: str) -> str:
    """An ini ``-r FILE``/``-c FILE`` line names its file relative to the ini file (it is
    written there); other lines stay as they are."""
    from ._reqfile import file_item

    named = file_item(line)
    if named is None:
        return line
    return f"{named[0]} {_path(config, named[1], 'ini')}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_DOC)
    config.stash[options_key] = options = make_options(config)
    if options.cov == "on":
        from ._coverage import problem

        message = problem()
        if message:
            raise pytest.UsageError(f"--cowenv-cov: {message}")
    _claim_cache_dir(options)
    from .matrix import configure

    configure(config, options.find_links, options.index_url, options.offline, options.root)
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_XdistHooks(), "cowenv-xdist")


def _claim_cache_dir(options: Options) -> None:
    """Refuse, before any test runs, a cache directory that is not ours (deleting in it could
    hit the user's files); make a missing or empty one ours (see ``store.claim_at_start``)."""
    from .errors import CacheDirError, with_option
    from .store import claim_at_start

    try:
        claim_at_start(options.root)
    except CacheDirError as exc:
        raise pytest.UsageError(with_option(str(exc), options.root_option)) from None


def _session(config: pytest.Config, *, needs_templates: bool = False) -> CowEnvSession:
    """This process's session, made on first need. ``needs_templates``: the caller is about
    to look templates up, which asks the installer who it is: that starts now, while the
    core is imported."""
    if session_key not in config.stash:
        if needs_templates:
            from ._install import prefetch_installer_identity

            prefetch_installer_identity()
        from .session import CowEnvSession

        config.stash[session_key] = CowEnvSession(
            config.stash[options_key].settings(), coverage=_clone_coverage(config)
        )
    return config.stash[session_key]


def _clone_coverage(config: pytest.Config) -> Optional[CloneCoverage]:
    """How this process measures its clones' coverage, if it does. Asked when the session is
    made (by the first test or collection that needs a clone): pytest-cov has started its
    Coverage by then, in xdist workers too, and a run that uses no clone imports nothing."""
    mode = config.stash[options_key].cov
    if mode == "off" or (mode == "auto" and "coverage" not in sys.modules):
        return None
    from ._coverage import detect

    base = str(config.invocation_params.dir)
    return detect(mode, _pytest_cov(config), base, (str(config.rootpath),))


def _pytest_cov(config: pytest.Config) -> Any:
    """The ``Coverage`` of pytest-cov when it measures this run (``--cov``), else None."""
    plugin = config.pluginmanager.getplugin("_cov")
    controller = getattr(plugin, "cov_controller", None)
    if plugin is None or getattr(plugin, "_disabled", False) or controller is None:
        return None
    return getattr(controller, "cov", None)


def pytest_report_header(config: pytest.Config) -> str:
    from .report import header_line

    opts = config.stash[options_key]
    return header_line(opts.root, opts.link_mode, opts.pool)


def pytest_unconfigure(config: pytest.Config) -> None:
    if session_key in config.stash:
        config.stash[session_key].close()


class _XdistHooks:
    """Registered only when xdist is present: share the run start, gather worker stats."""

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["cowenv_rebuild_before"] = node.config.stash[options_key].rebuild_before

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        data = getattr(node, "workeroutput", {}).get("cowenv_stats")
        if data:
            _session(node.config).stats.merge(data)


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    if session_key in config.stash:
        config.stash[session_key].finish_coverage()
        config.stash[session_key].note_compiles()
    if hasattr(config, "workerinput") and session_key in config.stash:
        config.workeroutput["cowenv_stats"] = config.stash[session_key].stats.as_dict()  # type: ignore[attr-defined]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if session_key not in config.stash or hasattr(config, "workerinput"):
        return
    lines = config.stash[session_key].stats.summary_lines()
    if lines:
        terminalreporter.write_sep("=", "cowenv")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.hookimpl(hookwrapper=True)  # old-style wrapper: works with every supported pytest
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    envs = item.stash.get(envs_key, [])
    keep = item.config.stash[options_key].keep
    if not envs or keep == "none" or report.when == "teardown":
        return
    if report.failed or (keep == "all" and report.when == "call"):
        session = _session(item.config)
        for env in envs:
            env.keep = True
        kept = "".join(f"clone kept at {session.kept_path(env)}\n" for env in envs)
        report.sections.append(("cowenv", kept))


def _check_options(options: dict[str, Any]) -> None:
    from .errors import SpecError

    unknown = sorted(set(options) - set(MARKER_KEYWORDS))
    if unknown:
        raise SpecError(
            f"cowenv: unknown keyword {', '.join(unknown)}; allowed: {', '.join(MARKER_KEYWORDS)}"
        )
    project = options.get("project")
    if project is not None and not isinstance(project, (bool, str, os.PathLike)):
        raise SpecError(f"project={project!r}: give True, False or a directory")
    mode = options.get("link_mode")
    if mode is not None and mode not in LINK_MODES:
        raise SpecError(f"link_mode={mode!r} is not one of {', '.join(LINK_MODES)}")
    pip = options.get("pip")
    if pip is not None and not isinstance(pip, bool):
        raise SpecError(f"pip={pip!r}: give True or False")
    lock = options.get("lock")
    if lock is not None and not isinstance(lock, (str, os.PathLike)):
        raise SpecError(f"lock={lock!r}: give the path of a pylock.toml or uv.lock")


def _check_outside(local: tuple[str, ...], root: Optional[str]) -> None:
    """A cache inside a project would be hashed and copied into its own templates."""
    from .errors import SpecError, shown
    from .store import default_root

    if not local:
        return
    cache = Path(root or default_root()).resolve()
    for directory in map(Path, local):
        if directory.is_dir() and cache.is_relative_to(directory):
            raise SpecError(
                f"{shown(directory)}: the cache dir {shown(cache)} is inside this project; "
                "pick a --cowenv-dir outside it"
            )


def _asked(args: tuple[Any, ...], kwargs: dict[str, Any], base_dir: Path) -> str:
    """What a marker or factory call asked for, as a key (its values need not be hashable)."""
    return repr((args, sorted(kwargs.items()), str(base_dir)))


def _make_spec(
    config: pytest.Config,
    session: CowEnvSession,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    base_dir: Path,
) -> TemplateSpec:
    """The spec of a marker or factory call: relative paths are taken from ``base_dir``."""
    _check_options(kwargs)
    if kwargs.get("matrix") is not None:
        from .errors import SpecError

        raise SpecError("matrix= parametrizes tests: give it to the cowenv marker")
    project = kwargs.get("project")
    # The ini's requirements stand in for a marker that names no environment at all; a
    # marker with groups, extras or a lock names one.
    named = any(kwargs.get(name) for name in ("groups", "extras", "lock"))
    spec = session.spec(
        args or (() if named else session.settings.requirements),
        python=kwargs.get("python"),
        project=config.rootpath if project is True else (project or None),
        pip=kwargs.get("pip"),
        base_dir=base_dir,
        pyproject_dir=config.rootpath,
        **{name: kwargs[name] for name in SPEC_KEYWORDS if kwargs.get(name) is not None},
    )
    _check_outside(spec.local, session.settings.root)
    return spec


# Said after the core's words when clones fall back to copies; both ways are tested.
SILENCE_COPIES = (
    " To silence this: --cowenv-link-mode copy (copies on purpose), or "
    "-W ignore::pytest_cowenv.CowEnvWarning (ini: filterwarnings)."
)


def _acquire(
    request: pytest.FixtureRequest,
    requirements: tuple[Any, ...],
    options: dict[str, Any],
    where: Callable[[], tuple[str, int]],
) -> CowEnv:
    """A clone for this test, or a one-line failure (no traceback) that names the culprit.

    A spec that cannot be made or built fails every test that asks for it, from memory:
    the interpreter search or the build is not retried per test. A warning of the core is
    attributed to ``where()`` (file, line) in the user's tests, never to our own lines.
    """
    from .clone import LinkMode
    from .errors import CowEnvError, SpecError, TemplateBuildError, with_option

    session = _session(request.config, needs_templates=True)
    option = request.config.stash[options_key].root_option
    failed = request.config.stash.setdefault(failed_specs_key, {})
    asked = _asked(requirements, options, request.path.parent)
    problem = failed.get(asked)
    if problem is None:
        try:
            spec = _make_spec(request.config, session, requirements, options, request.path.parent)
            mode = options.get("link_mode")
            told: list[str] = []
            env = session.acquire(
                spec, request.node.name, LinkMode(mode) if mode else None, warn=told.append
            )
        except (SpecError, TemplateBuildError) as exc:
            failed[asked] = problem = with_option(str(exc), option)
        except CowEnvError as exc:  # clone errors may pass (disk space): not remembered
            problem = with_option(str(exc), option)
        else:
            messages = [with_option(message, option) for message in told]
            problem = _warn_at(where(), messages) if messages else None
            if problem is None:
                request.node.stash.setdefault(envs_key, []).append(env)
                return env
            session.release(env)
    pytest.fail(problem, pytrace=False)  # outside `except`: no chained internal frames


def _warn_at(where: tuple[str, int], messages: list[str]) -> Optional[str]:
    """Warn ``messages`` from ``where``; the message of one that the filters made an error."""
    from .errors import CowEnvWarning

    for message in messages:
        try:
            warnings.warn_explicit(CowEnvWarning(message + SILENCE_COPIES), CowEnvWarning, *where)
        except CowEnvWarning as exc:  # -W error::...: one line, like any other failure
            return str(exc)
    return None


def _test_line(request: pytest.FixtureRequest) -> tuple[str, int]:
    """Where the test asking for a fixture is defined: (file, 1-based line)."""
    path, lineno, _ = request.node.reportinfo()
    return os.fspath(path), (lineno or 0) + 1


def _release(request: pytest.FixtureRequest, env: CowEnv) -> None:
    _session(request.config).release(env, keep=env.keep)


@pytest.fixture
def cowenv(request: pytest.FixtureRequest) -> Iterator[CowEnv]:
    """A private virtual environment for this test (a :class:`~pytest_cowenv.CowEnv`).

    Its spec comes from the closest ``@pytest.mark.cowenv(*requirements, python=None,
    project=False, link_mode=None, pip=False, groups=(), extras=(), lock=None,
    resolution=None, exclude_newer=None, matrix=None)`` marker (function, then class, then
    module ``pytestmark``); when that gives no requirements, from the ini option
    ``cowenv_requirements``. With ``matrix``, the test runs once per combination of its axes,
    each with that combination's requirements added. The template is built once and cached
    across runs; the test gets a copy-on-write clone, removed at teardown (see
    ``--cowenv-keep``).
    """
    from .matrix import marker_request

    asked = marker_request(request.node, getattr(request, "param", None))
    if isinstance(asked, str):
        pytest.fail(asked, pytrace=False)
    env = _acquire(request, *asked, lambda: _test_line(request))
    yield env
    _release(request, env)


@pytest.fixture
def cowenv_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., CowEnv]]:
    """``cowenv_factory(*requirements, python=None, project=False, link_mode=None, pip=False,
    groups=(), extras=(), lock=None, resolution=None, exclude_newer=None)`` returns a fresh
    private clone per call (same arguments as the ``cowenv`` marker; with no
    requirements, ini ``cowenv_requirements``). All are removed after the test."""
    made: list[CowEnv] = []

    def factory(*requirements: Any, **options: Any) -> CowEnv:
        caller = sys._getframe(1)  # the user's call: where its warnings belong
        where = (caller.f_code.co_filename, caller.f_lineno)
        env = _acquire(request, requirements, options, lambda: where)
        made.append(env)
        return env

    yield factory
    for env in made:
        _release(request, env)


@pytest.hookimpl(trylast=True)  # after -k/-m deselection: count only the tests that will run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tell the session which specs several tests share, so that their pools start early
    and their new templates are compiled behind from the first clone on (see
    ``CowEnvSession.expect``). Only ``cowenv`` users are counted: factory calls are not known
    before they happen (their template's compile starts at its second clone)."""
    if config.stash[options_key].pool <= 0 or config.option.collectonly:
        return
    from .matrix import marker_request

    groups: dict[str, list[Any]] = {}  # one spec computation per distinct marker and folder
    for item in items:
        if "cowenv" not in getattr(item, "fixturenames", ()):
            continue
        callspec = getattr(item, "callspec", None)
        request = marker_request(item, callspec.params.get("cowenv") if callspec else None)
        if isinstance(request, str):
            continue  # the test fails at setup, saying why
        args, kwargs = request
        asked = _asked(args, kwargs, item.path.parent)
        groups.setdefault(asked, [args, kwargs, item.path.parent, 0])[3] += 1
    # Only a spec that two tests share gains (see `expect`), and making a spec can cost (a
    # lock's selection, a project's hash): a spec asked for by one test is made by that test
    # alone. What is asked for, wherever, tells which tests may share one (relative paths
    # aside, specs differ when what was asked for does).
    loose = {asked: _asked(args, kwargs, Path()) for asked, (args, kwargs, *_) in groups.items()}
    anywhere: dict[str, int] = {}
    for asked, group in groups.items():
        anywhere[loose[asked]] = anywhere.get(loose[asked], 0) + group[3]
    shared = {asked: group for asked, group in groups.items() if anywhere[loose[asked]] >= 2}
    if not shared:
        return  # no environment that two tests use: import nothing more
    from collections import Counter

    from .clone import LinkMode
    from .errors import CowEnvError, SpecError

    session = _session(config, needs_templates=True)
    failed = config.stash.setdefault(failed_specs_key, {})
    counts: Counter[Any] = Counter()
    for asked, (args, kwargs, base_dir, tests) in shared.items():
        try:
            spec = _make_spec(config, session, args, kwargs, base_dir)
        except SpecError as exc:  # each test reports it, from memory (no second search)
            failed[asked] = str(exc)
            continue
        except CowEnvError:
            continue
        mode = kwargs.get("link_mode")
        counts[(spec, LinkMode(mode) if mode else None)] += tests
    try:
        for (spec, mode), tests in counts.items():
            session.expect(spec, mode, tests)
    except CowEnvError:
        pass  # an unusable cache directory: the first test says why

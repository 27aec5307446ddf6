"""The dependency matrix: :func:`versions` and the ``matrix=`` keyword of the cowenv marker.

``versions()`` is called where a test module is imported, maybe before pytest has read its
options (in an early conftest), so it returns a lazy :class:`Versions`: the releases are listed
when pytest first iterates it, during collection, with the index options of the run that is
collecting (:func:`configure` pushes them, ``pytest_unconfigure`` pops them). Every xdist
worker reads listings as fresh or stale against the controller's start time, and the first
to list writes the listing that the others read: all collect the same tests.

pytest glue, like ``plugin.py``; the listing itself is ``_releases``.
"""

from __future__ import annotations

import itertools
import re
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Optional, Union

import pytest

if TYPE_CHECKING:
    from ._releases import Listing

MATRIX = "matrix"
# What the core says when it cannot list; the plugin names its own options.
_OFFLINE_WORDS = "give find-links and offline"
_OFFLINE_FLAGS = "give --cowenv-find-links DIR and --cowenv-offline"


class RunContext:
    """What listing releases needs from a run: index options, cache root, and the time
    before which a cached listing is stale."""

    def __init__(
        self,
        find_links: tuple[str, ...] = (),
        index_url: Optional[str] = None,
        offline: bool = False,
        root: Optional[str] = None,
        fresh_after: Optional[float] = None,
    ) -> None:
        self.index = (find_links, index_url, offline)
        self.root = root
        self.fresh_after = time.time() - _expiry() if fresh_after is None else fresh_after
        self.listings: dict[tuple[str, Optional[str]], Listing] = {}

    def listing(self, name: str, python: Optional[str] = None) -> Listing:
        from ._install import IndexOptions
        from ._releases import list_releases, listing_dir

        if (name, python) not in self.listings:
            listing = list_releases(
                name,
                IndexOptions(*self.index),
                cache_dir=listing_dir(self.root),
                fresh_after=self.fresh_after,
                python=python,
            )
            if listing.stale_because:
                from .errors import CowEnvWarning

                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(listing.listed_at))
                why = listing.stale_because.split("; to list offline")[0]
                warnings.warn(
                    CowEnvWarning(f"{why}; using its listing of {when} from the cache"),
                    stacklevel=2,
                )
            self.listings[name, python] = listing
        return self.listings[name, python]


def _expiry() -> float:
    from ._defaults import VERSIONS_EXPIRY

    return VERSIONS_EXPIRY


_contexts: list[RunContext] = []  # the runs configured in this process, innermost last


def _current() -> RunContext:
    if not _contexts:  # outside pytest: the environment's index, the default cache
        _contexts.append(RunContext())
    return _contexts[-1]


class Requirement(str):
    """A requirement string that :func:`versions` made: ``alias`` is how ``-k`` selects it
    (``pytest==8.3.*`` → ``pytest-8.3``)."""

    alias: str

    def __new__(cls, value: str) -> Requirement:
        made = super().__new__(cls, value)
        made.alias = keyword_alias(value) or value
        return made


class Unresolved:
    """Stands for the values of a matrix or ``versions()`` that could not be listed: the
    tests that get it fail with ``message``."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __repr__(self) -> str:
        return "unresolved"


class Versions:
    """The releases :func:`versions` asked for, listed on first use (see the module's doc).
    A collection (``len``, ``in``), as ``parametrize`` wants its values."""

    def __init__(
        self,
        requirement: str,
        each: Union[str, tuple[str, ...]] = "minor",
        *,
        latest: Optional[int] = None,
        pre: bool = False,
        yanked: bool = False,
        python: Optional[str] = None,
    ) -> None:
        self.requirement = requirement
        self.each = each
        self.latest = latest
        self.pre = pre
        self.yanked = yanked
        self.python = python
        # The run this was listed for (kept alive, so never mistaken for a later one), and
        # its requirements per interpreter.
        self._resolved: tuple[Optional[RunContext], dict[Optional[str], list[Requirement]]] = (
            None,
            {},
        )

    def resolve(self, python: Optional[str] = None) -> list[Requirement]:
        """The requirement strings, oldest first; a :class:`~pytest_cowenv.SpecError` with a
        one-line message if there are none or they cannot be listed. ``python``: for that
        interpreter when this object names none (a matrix passes its marker's)."""
        from ._releases import parse, select

        context = _current()
        python = self.python or python
        if self._resolved[0] is not context:
            self._resolved = (context, {})
        found = self._resolved[1]
        if python not in found:
            name = parse(self.requirement).name
            chosen = select(
                self.requirement,
                context.listing(name, python),
                self.each,
                latest=self.latest,
                pre=self.pre,
                yanked=self.yanked,
            )
            found[python] = [Requirement(r) for r in chosen]
        return list(found[python])

    def __iter__(self) -> Iterator[Any]:
        """The requirement strings; for ``pytest.mark.parametrize``, one failing parameter
        instead when they cannot be listed (see :meth:`resolve` to get the error)."""
        from .errors import CowEnvError

        try:
            values = self.resolve()
        except CowEnvError as exc:
            yield pytest.param(Unresolved(_plugin_words(str(exc))), id=f"{self.requirement}: error")
            return
        yield from values

    def __len__(self) -> int:
        return len(list(iter(self)))

    def __contains__(self, value: object) -> bool:
        return value in list(iter(self))

    def __repr__(self) -> str:
        named = (
            ("latest", self.latest),
            ("pre", self.pre),
            ("yanked", self.yanked),
            ("python", self.python),
        )
        extra = "".join(f", {name}={value!r}" for name, value in named if value)
        return f"versions({self.requirement!r}, each={self.each!r}{extra})"


def versions(
    requirement: str,
    each: Union[str, tuple[str, ...]] = "minor",
    *,
    latest: Optional[int] = None,
    pre: bool = False,
    yanked: bool = False,
    python: Optional[str] = None,
) -> Versions:
    """The released versions of ``requirement`` on the run's index (``--cowenv-index-url``,
    ``--cowenv-find-links``, ``--cowenv-offline``, pip's or uv's settings), one requirement
    string per ``each`` group, oldest first: ``"major"``, ``"minor"`` (default),
    ``"patch"``, ``"all"``, or the bounds ``"lowest"`` / ``"highest"`` (one exact version);
    a tuple of these, such as ``("lowest", "highest")``, gives each one's strings in turn.
    A minor is ``"pytest==8.3.*"`` (a major ``"pytest==8.*"``): the installer picks its
    newest patch; a group whose newest release is a prerelease or yanked, or that the
    requirement cuts in two, is pinned exactly (``"pytest==8.3.5"``), as ``patch``, ``all``
    and the bounds always are. ``latest``: the newest N groups only; ``pre``/``yanked``:
    include prereleases / yanked releases. ``python``: the releases that could be installed
    for that interpreter (a version such as "3.12" or a path; by default the one running
    pytest, or in a ``matrix=`` the marker's ``python``).

    Lazy: listed when pytest first iterates it (in ``parametrize`` or a ``matrix=``), with
    that run's options; ``.resolve()`` lists now.
    """
    return Versions(requirement, each, latest=latest, pre=pre, yanked=yanked, python=python)


def _plugin_words(message: str) -> str:
    return message.replace(_OFFLINE_WORDS, _OFFLINE_FLAGS)


# -- the marker's matrix ----------------------------------------------------------------


def combinations(matrix: object, python: Optional[str] = None) -> list[tuple[str, ...]]:
    """Every combination of the axes' values (the cartesian product, first axis slowest);
    ``versions()`` are listed for ``python`` (the marker's) unless they name their own."""
    from .errors import SpecError

    if not isinstance(matrix, Mapping) or not matrix:
        raise SpecError(
            f"matrix={matrix!r}: give a dict of axes, e.g. "
            "matrix={'pytest': versions('pytest>=8.2')}"
        )
    axes = []
    for name, values in matrix.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise SpecError(
                f"matrix axis {name!r}: {values!r} is not a list of requirements; give a list "
                f"or versions({values!r})"
            )
        axis: list[str] = []
        for value in [values] if isinstance(values, Versions) else values:
            if isinstance(value, Versions):
                axis += value.resolve(python)  # its error fails the tests, not the collection
            elif isinstance(value, str):
                axis.append(value)
            else:
                raise SpecError(f"matrix axis {name!r}: {value!r} is not a requirement string")
        if not axis:
            raise SpecError(f"matrix axis {name!r} is empty")
        axes.append(axis)
    return list(itertools.product(*axes))


def generate(metafunc: pytest.Metafunc) -> None:
    """One test per combination of the closest cowenv marker's ``matrix``: the ``cowenv``
    fixture is parametrized (indirectly) with each combination's requirements."""
    marker = metafunc.definition.get_closest_marker("cowenv")
    if marker is None or MATRIX not in marker.kwargs or "cowenv" not in metafunc.fixturenames:
        return
    from .errors import CowEnvError

    try:
        python = marker.kwargs.get("python")
        combos = combinations(marker.kwargs[MATRIX], python if isinstance(python, str) else None)
    except CowEnvError as exc:
        failed = Unresolved(_plugin_words(str(exc)))
        metafunc.parametrize("cowenv", [failed], ids=["matrix-error"], indirect=True)
        return
    ids = ["-".join(combo) for combo in combos]
    metafunc.parametrize("cowenv", combos, ids=ids, indirect=True)


def marker_request(node: Any, param: object) -> Union[tuple[tuple[Any, ...], dict[str, Any]], str]:
    """What the closest cowenv marker asks for this test: its requirements (with the
    matrix combination ``param`` the ``cowenv`` fixture got) and keywords; or why the
    test must fail (one line)."""
    marker = node.get_closest_marker("cowenv")
    args, kwargs = (tuple(marker.args), dict(marker.kwargs)) if marker else ((), {})
    if isinstance(param, Unresolved):
        return param.message
    if MATRIX not in kwargs:
        return args, kwargs
    del kwargs[MATRIX]
    if not isinstance(param, tuple):
        return (
            "matrix=: the test gets no combination; ask for the `cowenv` fixture as an "
            "argument of the test (or of a fixture it uses)"
        )
    return (*args, *param), kwargs


# -- selecting with -k ---------------------------------------------------------------------

_PINNED = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*==\s*(?P<version>[^,;\s*]+?)(?:\.\*)?\s*(?:[,;]|$)"
)
_K_PINNED = re.compile(r"(?<=[\w\]])==(?P<version>\d[\w.!+]*?)(?:\.\*)?(?=[\s()]|$)")


def keyword_alias(requirement: str) -> Optional[str]:
    """``name-version`` for a requirement that pins with ``==`` (``pytest==8.3.*`` →
    ``pytest-8.3``): a word ``-k`` can select, where ``=`` and ``*`` are not allowed."""
    match = _PINNED.match(requirement)
    return f"{match['name']}-{match['version']}" if match else None


def rewrite_keyword(expression: str) -> str:
    """``-k "pytest==9"`` → ``-k "pytest-9"``. Only ``==`` is rewritten, which pytest's
    ``-k`` grammar would refuse: a valid expression keeps its meaning."""
    return _K_PINNED.sub(lambda m: "-" + m["version"], expression)


def add_aliases(items: list[pytest.Item]) -> None:
    """Let ``-k`` select the tests of a matrix or ``versions()`` parameter by its alias."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None:
            continue
        for value in callspec.params.values():
            values = value if isinstance(value, tuple) else (value,)
            for one in values:
                alias = one.alias if isinstance(one, Requirement) else None
                if alias is None and isinstance(one, str) and isinstance(value, tuple):
                    alias = keyword_alias(one)  # a combination of the marker's matrix
                if alias:
                    item.extra_keyword_matches.add(alias)


# -- hooks ---------------------------------------------------------------------------------

fresh_after_key = "cowenv_versions_fresh_after"


class MatrixHooks:
    """Registered by ``plugin.pytest_configure``."""

    def __init__(self, context: RunContext) -> None:
        self.context = context

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        generate(metafunc)

    @pytest.hookimpl(tryfirst=True)  # before -k deselects by the aliases
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        add_aliases(items)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        callspec = getattr(item, "callspec", None)
        for value in callspec.params.values() if callspec is not None else ():
            if isinstance(value, Unresolved):  # from versions() in a parametrize
                pytest.fail(value.message, pytrace=False)

    def pytest_unconfigure(self) -> None:
        if self.context in _contexts:
            _contexts.remove(self.context)


class XdistMatrixHooks:
    """Workers judge listings by the controller's start, so that all collect alike."""

    def pytest_configure_node(self, node: Any) -> None:
        context = node.config.pluginmanager.get_plugin("cowenv-matrix").context
        node.workerinput[fresh_after_key] = context.fresh_after


def configure(
    config: pytest.Config,
    find_links: tuple[str, ...],
    index_url: Optional[str],
    offline: bool,
    root: Optional[str],
) -> None:
    """Make this run the one ``versions()`` lists for, and register the matrix hooks."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput and fresh_after_key in workerinput:
        fresh_after = float(workerinput[fresh_after_key])
    elif config.getoption("cowenv_refresh_versions", False):
        fresh_after = time.time()
    else:
        fresh_after = time.time() - _expiry()
    context = RunContext(find_links, index_url, offline, root, fresh_after)
    _contexts.append(context)
    config.pluginmanager.register(MatrixHooks(context), "cowenv-matrix")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistMatrixHooks(), "cowenv-matrix-xdist")
    keyword = getattr(config.option, "keyword", "")
    if keyword and "==" in keyword:
        config.option.keyword = rewrite_keyword(keyword)

"""Which releases of a project the configured index offers, and one requirement per group.

The listing comes from pip's index API (``pip index versions``, run verbosely so that its log
also names the yanked files it skipped), with the index options template builds use: when uv
builds templates, pip runs ``--isolated`` with uv's index settings, since uv reads neither
pip's configuration nor its variables. A listing is cached in the cache root
(``versions/<key>.json``) and reused while it was written after the caller's ``fresh_after``:
processes that share it (the workers of one xdist run) all read the one listing the first of
them wrote."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union
from urllib.parse import unquote

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from ._atomic import BuildLock, read_json
from ._install import (
    IndexOptions,
    _index_args,
    pip_unusable,
    resolver_environment,
    run_clean,
    uv_binary,
)
from .errors import SpecError

EACH = ("major", "minor", "patch", "all", "lowest", "highest")
LISTING_FORMAT = 1
PIP_TIMEOUT = 300.0  # seconds for one listing, retries included

_AVAILABLE = re.compile(r"^Available versions: (?P<versions>.*)$", re.MULTILINE)
# pip's debug log: "Skipping link: yanked for reason: <reason>: <url> (from <page>) ..."
_YANKED = re.compile(r"Skipping link: yanked for reason: .*: (?P<url>\S+) \(from ", re.MULTILINE)
_UNREACHABLE = re.compile(
    r"^Could not fetch URL (?P<url>\S+?): (?P<why>.*?)(?: - skipping)?$", re.M
)
# An HTTP 404 in that "why", and the object addresses of urllib3's reprs that may hold "404".
_NOT_FOUND = re.compile(r"(?<![\w.])404(?![\w.])")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


@dataclass(frozen=True)
class Release:
    version: str
    yanked: bool = False


@dataclass(frozen=True)
class Listing:
    """What the index offers of ``name``: every release (prereleases and yanked included)."""

    name: str
    releases: tuple[Release, ...]
    where: str  # the index and links asked, for messages
    listed_at: float
    stale_because: str = ""  # why an older listing stands in (the index is unreachable)


class Unreachable(SpecError):
    """The index cannot be reached, and no wheel directory has the project."""


def parse(requirement: str) -> Requirement:
    """``requirement`` parsed, or a SpecError that names it."""
    try:
        parsed = Requirement(requirement)
    except InvalidRequirement as exc:
        first = str(exc).splitlines()[0]
        raise SpecError(f"versions({requirement!r}): not a requirement: {first}") from None
    if parsed.url:
        raise SpecError(f"versions({requirement!r}): a URL has no versions to list; give a name")
    return parsed


def source(index: IndexOptions) -> str:
    """Which index and links a listing asks, as a message names them."""
    links = f"find-links {', '.join(index.find_links)}" if index.find_links else ""
    if index.offline:
        return f"{links or 'no find-links'} (offline: no index)"
    if index.index_url:
        url = index.index_url
    elif uv_binary():
        url = f"{_uv_env().default or 'https://pypi.org/simple'} (as uv uses it)"
    else:
        url = f"{os.environ.get('PIP_INDEX_URL') or 'of pip (its configuration)'}"
    return f"index {url}" + (f" and {links}" if links else "")


def listing_dir(root: Optional[str]) -> Optional[Path]:
    """``versions/`` of the cache at ``root`` (the default cache if None), made on first
    need; None if the cache is unusable (or ``versions/`` is a symbolic link): a listing is
    then made without it, and whatever needs the cache says why."""
    from .errors import CacheDirError
    from .store import check_safe, prepare_root

    try:
        layout = prepare_root(root)
        layout.versions.mkdir(exist_ok=True)
        if os.path.islink(layout.versions):  # not ours: nothing is written through it
            return None
        check_safe(layout.versions, parents=False)
    except (OSError, CacheDirError):
        return None
    return layout.versions


def list_releases(
    name: str,
    index: IndexOptions,
    *,
    cache_dir: Optional[Path],
    fresh_after: float,
    python: Optional[str] = None,
) -> Listing:
    """The releases of ``name``: from ``cache_dir`` if a listing written after ``fresh_after``
    is there, else listed now (and written there); when the index cannot be reached, an
    older listing stands in (``stale_because`` says why). One lister at a time: a waiter
    reads what the first one wrote. Processes that pass the same ``fresh_after`` (the
    workers of one xdist run) all get the first one's outcome, an error or an older listing
    too, so that they collect the same tests. ``python`` (a version such as "3.12" or a
    path; None: the running interpreter): list what could be installed there."""
    if cache_dir is None:
        return _list_now(name, index, python)
    path = cache_dir / f"{listing_key(name, index, python)}.json"
    with _one_lister(name, cache_dir / f"{path.stem}.lock"):
        entry = _read(path, name)
        if entry is not None and entry.run == fresh_after:  # this run's own outcome
            if entry.error:
                raise SpecError(entry.error)
            if entry.listing is not None:
                return entry.listing
        older = entry.listing if entry is not None else None
        if older is not None and not older.stale_because and older.listed_at >= fresh_after:
            return older
        try:
            listing = _list_now(name, index, python)
        except Unreachable as exc:
            if older is None:
                _write(path, _Entry(None, str(exc), fresh_after))
                raise
            listing = replace(older, stale_because=str(exc))
        except SpecError as exc:
            _write(path, _Entry(older, str(exc), fresh_after))
            raise
        _write(path, _Entry(listing, "", fresh_after))
        return listing


def listing_key(name: str, index: IndexOptions, python: Optional[str] = None) -> str:
    """What a listing depends on: the project, the index options and variables, the
    installer (uv or pip), pip's interpreter and the one listed for (pip lists what could
    be installed there)."""
    from .spec import find_interpreter

    data = {
        "for": find_interpreter(python)._asdict(),
        "name": canonicalize_name(name),
        "index": [list(index.find_links), index.index_url, index.offline],
        "env": resolver_environment(),
        "uv": bool(uv_binary()),
        "python": [sys.executable, sys.version, sys.platform],
        "format": LISTING_FORMAT,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:24]


class _Entry(NamedTuple):
    """A cached listing (or None), the error its last lister met, and that lister's run."""

    listing: Optional[Listing]
    error: str
    run: Optional[float]


@contextlib.contextmanager
def _one_lister(name: str, lock_path: Path) -> Iterator[None]:
    lock = BuildLock(lock_path)
    if not lock.acquire(PIP_TIMEOUT * 2):
        raise SpecError(
            f"{name}: another process has been listing its releases for more than "
            f"{PIP_TIMEOUT * 2:g} s (it holds {lock_path}); try again once it is done"
        )
    try:
        yield
    finally:
        lock.release()


def _read(path: Path, name: str) -> Optional[_Entry]:
    try:
        data = read_json(path)  # never through a link
        if data.get("format") != LISTING_FORMAT:
            return None
        listing = None
        if data.get("releases") is not None:
            listing = Listing(
                name,
                tuple(Release(str(v), bool(y)) for v, y in data["releases"]),
                str(data["where"]),
                float(data["listed_at"]),
                str(data.get("stale_because", "")),
            )
        run = data.get("run")
        return _Entry(listing, str(data.get("error", "")), None if run is None else float(run))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write(path: Path, entry: _Entry) -> None:
    from ._atomic import write_atomically

    listing = entry.listing
    data: dict[str, Any] = {"format": LISTING_FORMAT, "run": entry.run, "error": entry.error}
    if listing is not None:
        data.update(
            name=listing.name,
            listed_at=listing.listed_at,
            where=listing.where,
            stale_because=listing.stale_because,
            releases=[[r.version, r.yanked] for r in listing.releases],
        )
    # A cache that cannot be written only costs the next run a listing.
    with contextlib.suppress(OSError):
        write_atomically(path, json.dumps(data) + "\n")


def pip_command(name: str, index: IndexOptions, python: Optional[str] = None) -> list[str]:
    """``pip index versions`` for ``name`` with the index options of template builds, run
    for the interpreter ``python`` (pip's ``--python``: its Requires-Python and wheel tags)."""
    from .spec import find_interpreter

    cmd = [sys.executable, "-m", "pip"]
    if python is not None:
        cmd += ["--python", find_interpreter(python).executable]
    cmd += ["index", "versions", name, "--pre", "-vv"]
    cmd += ["--disable-pip-version-check", "--no-input", "--retries", "2"]
    if uv_binary():
        cmd += ["--isolated", *_uv_args()]
    return cmd + _index_args(index, uv=False)


class _UvIndex(NamedTuple):
    default: str
    extra: list[str]
    links: list[str]
    offline: bool


def _uv_env() -> _UvIndex:
    """uv's index settings from its variables (its configuration files are not read)."""
    env = os.environ
    # UV_INDEX entries may be named: "name=https://…".
    extra = [
        u.split("=", 1)[1] if "=" in u.split("://")[0] else u
        for u in env.get("UV_INDEX", "").split()
    ]
    return _UvIndex(
        default=env.get("UV_DEFAULT_INDEX") or env.get("UV_INDEX_URL") or "",
        extra=extra + env.get("UV_EXTRA_INDEX_URL", "").split(),
        links=env.get("UV_FIND_LINKS", "").replace(",", " ").split(),
        offline=_true(env.get("UV_OFFLINE")) or _true(env.get("UV_NO_INDEX")),
    )


def _true(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _uv_args() -> list[str]:
    env = _uv_env()
    args = ["--index-url", env.default] if env.default else []
    for url in env.extra:
        args += ["--extra-index-url", url]
    for link in env.links:
        args += ["--find-links", link]
    if env.offline:
        args.append("--no-index")
    cert = os.environ.get("SSL_CERT_FILE")  # uv's; pip --isolated reads no PIP_CERT
    if cert:
        args += ["--cert", cert]
    return args


def _list_now(name: str, index: IndexOptions, python: Optional[str] = None) -> Listing:
    cmd = pip_command(name, index, python)
    where = source(index)
    try:
        proc = run_clean(cmd, extra_env={"PYTHONIOENCODING": "utf-8"}, timeout=PIP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise SpecError(
            f"listing the releases of {name} on {where} took over {PIP_TIMEOUT:.0f} s"
        ) from None
    output = proc.stdout + proc.stderr
    if "No module named pip" in output:
        raise SpecError(
            f"listing the releases of {name} needs pip beside pytest ({sys.executable}): "
            "pip install pip"
        )
    if proc.returncode != 0 and python is not None:
        _check_pip_runs(name, python)
    found = _AVAILABLE.search(output)
    versions = [v.strip() for v in found["versions"].split(",")] if found else []
    yanked = _yanked_versions(canonicalize_name(name), output) - set(versions)
    releases = tuple(Release(v) for v in versions if v) + tuple(Release(v, True) for v in yanked)
    if not releases:
        unreachable = unreachable_in(output)
        if unreachable:
            url, why = unreachable
            raise Unreachable(
                f"listing the releases of {name}: {url} is unreachable ({_short(why)}); "
                "to list offline, give find-links and offline"
            )
        if proc.returncode != 0 and "No matching distribution" not in output:
            last = [ln for ln in output.splitlines() if ln.strip()][-1:] or ["no output"]
            raise SpecError(
                f"listing the releases of {name} failed (pip exit code {proc.returncode}): "
                f"{last[0].strip()}"
            )
    return Listing(name, releases, where, time.time())


def _check_pip_runs(name: str, python: str) -> None:
    """Raise a one-line :class:`SpecError` if pip failed because it cannot run for the
    interpreter ``python`` at all (see :func:`pip_unusable`): its traceback says nothing of
    the index. uv is no way out: it lists nothing here."""
    from .spec import find_interpreter

    interp = find_interpreter(python)
    unusable = pip_unusable(interp.executable, interp.version, uv_instead=False)
    if unusable is not None:
        raise SpecError(f"listing the releases of {name} for python={python!r}: {unusable}")


def unreachable_in(output: str) -> Optional[tuple[str, str]]:
    """The first index page pip could not fetch for another reason than its absence (404),
    as (url, why), from ``pip index versions -vv`` output."""
    for found in _UNREACHABLE.finditer(output):
        # Object addresses in urllib3's reprs ("object at 0x7f404e…") are no status code.
        if not _NOT_FOUND.search(_ADDRESS.sub("", found["why"])):
            return found["url"], found["why"]
    return None


def _short(why: str) -> str:
    """The cause at the end of a urllib3 error, not the whole chain."""
    found = re.findall(r"(?:\[Errno [^\]]+\] [^'\")]+|Name or service not known|timed out)", why)
    return found[-1].strip() if found else why[:200]


def _yanked_versions(name: str, output: str) -> set[str]:
    found = set()
    for match in _YANKED.finditer(output):
        filename = unquote(match["url"].split("#")[0].split("?")[0].rsplit("/", 1)[-1])
        try:
            if filename.endswith(".whl"):
                dist, version, _build, _tags = parse_wheel_filename(filename)
            else:
                dist, version = parse_sdist_filename(filename)
        except (InvalidWheelFilename, InvalidSdistFilename):
            continue
        if canonicalize_name(dist) == name:
            found.add(str(version))
    return found


def select(
    requirement: str,
    listing: Listing,
    each: Union[str, tuple[str, ...]] = "minor",
    *,
    latest: Optional[int] = None,
    pre: bool = False,
    yanked: bool = False,
) -> list[str]:
    """One requirement string per ``each`` group of the releases that satisfy
    ``requirement``, oldest first: ``name==8.3.*`` for a minor (``name==8.*`` for a major)
    whose newest matching release is a final, not yanked, and every release of it matches;
    else the exact ``name==<newest>`` (always for ``patch``, ``all``, ``lowest``,
    ``highest``). ``latest``: only the newest N groups. Several kinds (a tuple, such as
    ``("lowest", "highest")``): the strings of each, in order, without repeats."""
    kinds = (each,) if isinstance(each, str) else tuple(each)
    if not kinds or any(kind not in EACH for kind in kinds):
        raise SpecError(f"versions({requirement!r}, each={each!r}): give one of {', '.join(EACH)}")
    if latest is not None and (
        isinstance(latest, bool) or not isinstance(latest, int) or latest < 1
    ):
        raise SpecError(f"versions({requirement!r}, latest={latest!r}): give a whole number ≥ 1")
    req = parse(requirement)
    considered: list[tuple[Version, bool]] = []
    for release in listing.releases:
        try:
            version = Version(release.version)
        except InvalidVersion:
            continue
        if (release.yanked and not yanked) or (version.is_prerelease and not pre):
            continue
        considered.append((version, release.yanked))
    matching = sorted((v, y) for v, y in considered if req.specifier.contains(v, prereleases=True))
    if not matching:
        found = sorted(v for v, _ in considered)
        have = f"it has {found[0]} … {found[-1]}" if found else f"it has no release of {req.name}"
        left_out = [k for k, on in (("prereleases", pre), ("yanked releases", yanked)) if not on]
        if left_out:
            have += f" ({' and '.join(left_out)} left out)"
        raise SpecError(f"versions({requirement!r}): no release matches on {listing.where}; {have}")
    out: list[str] = []
    for kind in kinds:
        chosen = _one_kind(req, kind, considered, matching, latest)
        out += [r for r in chosen if r not in out]
    return out


def _one_kind(
    req: Requirement,
    each: str,
    considered: list[tuple[Version, bool]],
    matching: list[tuple[Version, bool]],
    latest: Optional[int],
) -> list[str]:
    if each in ("lowest", "highest"):
        return [_pinned(req, matching[0][0] if each == "lowest" else matching[-1][0])]
    groups: dict[tuple[Any, ...], list[tuple[Version, bool]]] = {}
    for version, is_yanked in matching:
        groups.setdefault(_group(version, each), []).append((version, is_yanked))
    keys = sorted(groups)
    if latest is not None:
        keys = keys[-latest:]
    out = []
    for key in keys:
        newest, newest_yanked = groups[key][-1]
        whole = [v for v, _ in considered if _group(v, each) == key]
        wildcard = (
            each in ("major", "minor")
            and not newest.is_prerelease
            and not newest_yanked
            and all(req.specifier.contains(v, prereleases=True) for v in whole)
        )
        if wildcard:
            out.append(_with(req, "==" + ".".join(map(str, key)) + ".*"))
        else:
            out.append(_pinned(req, newest))
    return out


def _group(version: Version, each: str) -> tuple[Any, ...]:
    """The group ``version`` falls in: its major, minor or patch release, or itself."""
    release = (*version.release, 0, 0)
    size = {"major": 1, "minor": 2, "patch": 3}.get(each)
    return release[:size] if size else (version,)


def _pinned(req: Requirement, version: Version) -> str:
    return _with(req, f"=={version}")


def _with(req: Requirement, specifier: str) -> str:
    """``req``'s name, extras and marker with ``specifier`` instead of its own."""
    extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
    marker = f"; {req.marker}" if req.marker else ""
    return f"{req.name}{extras}{specifier}{marker}"

"""``pytest-cowenv`` (also ``python -m pytest_cowenv``): look at and tend the template cache.

Exit codes: 0 ok, 1 the operation failed, 2 usage error. Errors are one line on stderr (a
failed build adds the installer's output below it), never a traceback. ``--json`` prints one
JSON document on stdout for scripts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Optional

from . import __version__
from .errors import CowEnvError, SpecError, with_option
from .store import ENV_DIR, default_root

if TYPE_CHECKING:
    from .maintenance import Report

PROG = "pytest-cowenv"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Inspect, pre-build and tidy the pytest-cowenv template cache.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _common(parser, suppress=False)
    # The same options after the command; suppressed defaults keep them from hiding the
    # values given before it.
    common = _Parser(add_help=False)
    _common(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name: str, run: Callable[[argparse.Namespace], int], help: str) -> Any:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(run=run)
        return p

    command("info", cmd_info, "where the cache is, what its filesystem can do, what auto picks")
    command("list", cmd_list, "templates in the cache, their size and last use; leftovers")
    build = command("build", cmd_build, "build (or find) the template for a spec, e.g. in CI")
    build.add_argument("specs", nargs="*", metavar="SPEC", help="requirements, wheels or dirs")
    build.add_argument("--python", help="interpreter version or path (default: this one)")
    build.add_argument("--pip", action="store_true", help="seed pip into the environment")
    build.add_argument(
        "--find-links", action="append", default=[], metavar="DIR", help="wheel dir (repeatable)"
    )
    build.add_argument("--index-url", metavar="URL", help="package index to use")
    build.add_argument("--offline", action="store_true", help="no index at all (use --find-links)")
    build.add_argument("--project", metavar="DIR", help="also install the project at DIR")
    build.add_argument(
        "-r",
        "--requirement",
        action="append",
        default=[],
        metavar="FILE",
        help="requirements file (repeatable)",
    )
    build.add_argument(
        "-c",
        "--constraint",
        action="append",
        default=[],
        metavar="FILE",
        help="constraints file (repeatable)",
    )
    build.add_argument(
        "--group",
        action="append",
        default=[],
        metavar="NAME",
        help="dependency group of pyproject.toml (of --project, else here) or of --lock",
    )
    build.add_argument(
        "--extra", action="append", default=[], metavar="NAME", help="extra of the project"
    )
    build.add_argument("--lock", metavar="FILE", help="pylock.toml or uv.lock to install exactly")
    build.add_argument(
        "--resolution", choices=("highest", "lowest", "lowest-direct"), help="uv only"
    )
    build.add_argument("--exclude-newer", metavar="DATE", help="uv only")
    listing = command(
        "versions", cmd_versions, "the releases versions() lists: one requirement per line"
    )
    listing.add_argument("requirement", metavar="REQUIREMENT", help='e.g. "pytest>=8.2"')
    listing.add_argument(
        "--each",
        default="minor",
        metavar="KIND",
        help="major, minor (default), patch, all, lowest, highest; several with commas",
    )
    listing.add_argument("--latest", type=int, metavar="N", help="the newest N groups only")
    listing.add_argument("--pre", action="store_true", help="include prereleases")
    listing.add_argument("--yanked", action="store_true", help="include yanked releases")
    listing.add_argument(
        "--find-links", action="append", default=[], metavar="DIR", help="wheel dir (repeatable)"
    )
    listing.add_argument("--index-url", metavar="URL", help="package index to use")
    listing.add_argument("--offline", action="store_true", help="no index (use --find-links)")
    listing.add_argument(
        "--refresh", action="store_true", help="list again, not from the cache (10 minutes)"
    )
    listing.add_argument(
        "--python", help="what could be installed for this interpreter (default: this one)"
    )
    prune = command("prune", cmd_prune, "remove templates unused for a while; never one in use")
    which = prune.add_mutually_exclusive_group()
    which.add_argument(
        "--older-than",
        type=_days,
        default=30.0,
        metavar="DAYS",
        help="remove templates unused for DAYS days (default 30)",
    )
    which.add_argument("--all", action="store_true", help="remove every template not in use")
    verify = command(
        "verify", cmd_verify, "check templates by content (RECORD hashes); rebuild damaged ones"
    )
    verify.add_argument("key", nargs="?", metavar="KEY", help="only this template")
    verify.add_argument(
        "--no-rebuild", action="store_true", help="mark damaged templates for rebuild only"
    )
    clean = command("clean", cmd_clean, "remove clones and build leftovers of dead processes")
    clean.add_argument("--kept", action="store_true", help="also remove kept clones (kept/)")
    clean.add_argument(
        "--all",
        action="store_true",
        help="remove the whole cache but what a running session holds (rm -rf cannot: "
        "templates on btrfs are read-only subvolumes)",
    )
    return parser


def _common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    parser.add_argument(
        "--dir",
        default=argparse.SUPPRESS if suppress else None,
        metavar="DIR",
        help=f"cache root (default: ${ENV_DIR}, else {default_root()})",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="print JSON for scripts",
    )


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not days >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days ≥ 0")
    return days


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    where = f"{PROG} {args.command}"
    try:
        code: int = args.run(args)
        return code
    except SpecError as exc:
        return _fail(where, str(exc), 2)
    except (CowEnvError, OSError) as exc:
        return _fail(where, with_option(str(exc), "--dir"), 1)
    except KeyboardInterrupt:
        return _fail(where, "interrupted", 130)


def _fail(where: str, message: str, code: int) -> int:
    # The first line names the culprit; more lines (an installer's output) follow it.
    print(f"{where}: error: {message.strip()}", file=sys.stderr)
    return code


def _root(args: argparse.Namespace) -> Path:
    root = args.dir or os.environ.get(ENV_DIR) or default_root()
    return Path(os.path.abspath(os.path.expanduser(root)))


def _emit(args: argparse.Namespace, data: dict[str, Any], lines: list[str]) -> None:
    print(json.dumps(data, indent=2) if args.json else "\n".join(lines))


# -- info ----------------------------------------------------------------------------------


def cmd_info(args: argparse.Namespace) -> int:
    from ._install import installer_identity
    from .fs import probe
    from .maintenance import open_layout

    root = _root(args)
    open_layout(root)  # refuses a directory that is not a cache of ours; creates nothing
    probe_at = root
    while not probe_at.is_dir() and probe_at.parent != probe_at:
        probe_at = probe_at.parent  # describe the filesystem the cache will be created on
    fs = probe(probe_at)
    why = strategy_reason(fs.fstype, fs.best_strategy, fs.reason)
    caps = {"snapshot": fs.can_snapshot, "reflink": fs.can_reflink, "hardlink": fs.can_hardlink}
    python = {
        "executable": sys.executable,
        "implementation": platform.python_implementation(),
        "version": platform.python_version(),
    }
    data = {
        "dir": str(root),
        "exists": root.is_dir(),
        "probed_at": str(probe_at),
        "fs": fs.fstype,
        "capabilities": caps,
        "strategy": fs.best_strategy,
        "reason": why,
        "installer": installer_identity(),
        "python": python,
        "version": __version__,
    }
    can = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in caps.items())
    where = "" if root.is_dir() else f" (not created yet; probed {probe_at})"
    _emit(
        args,
        data,
        [
            f"dir:        {root}{where}",
            f"filesystem: {fs.fstype} ({can})",
            f"strategy:   {fs.best_strategy}: {why}",
            f"installer:  {installer_identity()}",
            f"python:     {sys.executable} ({python['implementation']} {python['version']})",
            f"version:    {PROG} {__version__}",
        ],
    )
    return 0


def strategy_reason(fstype: str, strategy: str, reflink_error: str) -> str:
    """Why ``auto`` picks ``strategy`` on ``fstype``, in words."""
    if strategy == "snapshot":
        return f"{fstype} templates are subvolumes; a clone is one snapshot, whatever its size"
    if strategy in ("clone", "clonefile"):
        return f"{fstype} clones files copy-on-write (reflink); no data is copied"
    return (
        f"{fstype} cannot clone ({reflink_error or 'no copy-on-write'}); every clone is a full "
        "copy. Put the cache on btrfs, XFS (reflink=1), APFS or ReFS for fast clones"
    )


# -- versions ------------------------------------------------------------------------------


def cmd_versions(args: argparse.Namespace) -> int:
    from ._defaults import VERSIONS_EXPIRY
    from ._install import IndexOptions
    from ._releases import list_releases, listing_dir, parse, select

    links = tuple(os.path.abspath(p) for p in args.find_links)
    index = IndexOptions(links, args.index_url, args.offline)
    name = parse(args.requirement).name
    fresh_after = time.time() - (0.0 if args.refresh else VERSIONS_EXPIRY)
    try:
        listing = list_releases(
            name,
            index,
            cache_dir=listing_dir(str(_root(args))),
            fresh_after=fresh_after,
            python=args.python,
        )
        each = tuple(kind.strip() for kind in args.each.split(","))
        chosen = select(
            args.requirement, listing, each, latest=args.latest, pre=args.pre, yanked=args.yanked
        )
    except CowEnvError as exc:
        words = str(exc).replace("give find-links and offline", "give --find-links DIR --offline")
        return _fail(f"{PROG} versions", words, 1)
    stale = f" ({listing.stale_because})" if listing.stale_because else ""
    data = {
        "requirement": args.requirement,
        "versions": chosen,
        "where": listing.where,
        "listed_at": listing.listed_at,
        "stale": listing.stale_because,
    }
    if stale:
        print(f"{PROG} versions: warning: {listing.stale_because}", file=sys.stderr)
    _emit(args, data, chosen)
    return 0


# -- list ----------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    from .maintenance import list_templates, list_wheels, open_layout

    root = _root(args)
    layout = open_layout(root)
    templates, leftovers = list_templates(layout) if layout else ([], [])
    wheels = list_wheels(layout) if layout else []
    data = {
        "dir": str(root),
        "templates": [asdict(t) for t in templates],
        "leftovers": [asdict(x) for x in leftovers],
        "wheels": [asdict(w) for w in wheels],
    }
    lines = [] if layout else [f"no cache at {root}"]
    now = time.time()
    for t in templates:
        flag = "  [in use]" if t.in_use else ""
        resolved = ", ".join(f"{n} {v}" for n, v in t.resolved.items()) or "nothing installed"
        disk = f"{human(t.disk_bytes)} allocated"
        if t.exclusive_bytes is not None and t.shared_bytes is not None:
            disk += f", {human(t.exclusive_bytes)} exclusive, {human(t.shared_bytes)} shared"
        lines += [
            f"{t.key}  {t.describe}{flag}",
            f"    resolved: {resolved}",
            f"    {t.files} files, {human(t.bytes)} ({disk}); built in {t.build_seconds:.1f} s",
            f"    last used {_when(t.last_used, now)}",
        ]
    for x in leftovers:
        lines.append(f"{x.kind}: {x.path} ({x.note})")
    for w in wheels:
        users = f"used by {w.templates} template{'' if w.templates == 1 else 's'}"
        users = users if w.templates else "no template uses it; `prune` removes it"
        lines.append(f"wheel {w.file}: {w.path} ({human(w.bytes)}; {users})")
    if layout:
        total = sum(t.disk_bytes for t in templates)
        count = f"{len(templates)} template{'' if len(templates) == 1 else 's'}"
        lines.append(f"{count}, {human(total)} allocated, in {root}")
    _emit(args, data, lines)
    return 0


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _when(stamp: float, now: float) -> str:
    ago = max(0.0, now - stamp)
    if ago < 3600:
        rel = f"{ago / 60:.0f} min ago"
    elif ago < 86400:
        rel = f"{ago / 3600:.1f} h ago"
    else:
        rel = f"{ago / 86400:.1f} days ago"
    return f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(stamp))} ({rel})"


# -- build ---------------------------------------------------------------------------------


def cmd_build(args: argparse.Namespace) -> int:
    from ._install import IndexOptions
    from .spec import TemplateSpec
    from .store import prepare_root
    from .template import TemplateCache

    index = IndexOptions(
        tuple(os.path.abspath(p) for p in args.find_links), args.index_url, args.offline
    )
    files = [f"-r {p}" for p in args.requirement] + [f"-c {p}" for p in args.constraint]
    spec = TemplateSpec.create(
        [*args.specs, *files],
        python=args.python,
        project=args.project,
        pip=args.pip,
        index=index,
        groups=args.group,
        extras=args.extra,
        lock=args.lock,
        resolution=args.resolution,
        exclude_newer=args.exclude_newer,
    )
    cache = TemplateCache(prepare_root(_root(args)))
    start = time.perf_counter()
    template = cache.get(spec)
    seconds = time.perf_counter() - start
    data = {
        "key": template.key,
        "path": str(template.path),
        "describe": spec.describe(),
        "built": template.built_now,
        "seconds": round(seconds, 3),
        "resolved": template.resolved,
    }
    done = "built" if template.built_now else "already built, found"
    _emit(args, data, [f"{template.key} {done} in {seconds:.2f} s: {spec.describe()}"])
    return 0


# -- prune and clean -----------------------------------------------------------------------


def cmd_prune(args: argparse.Namespace) -> int:
    from .maintenance import Report, open_layout, prune

    layout = open_layout(_root(args), adopt=True)
    report = Report()
    if layout:
        report = prune(layout, older_than_days=args.older_than, everything=args.all)
    return _report(args, report, "pruned")


def cmd_clean(args: argparse.Namespace) -> int:
    from .maintenance import Report, clean, clean_all, open_layout

    layout = open_layout(_root(args), adopt=True, remains=args.all)
    if layout is None:
        report = Report()
    else:
        report = clean_all(layout) if args.all else clean(layout, kept=args.kept)
    return _report(args, report, "cleaned")


def cmd_verify(args: argparse.Namespace) -> int:
    from .errors import CowEnvError
    from .maintenance import current_generation, open_layout
    from .verify import verify_cache, verify_store

    root = _root(args)
    layout = open_layout(root)
    if args.key and (layout is None or current_generation(layout, args.key) is None):
        raise CowEnvError(f"no template {args.key} in {root} (see `{PROG} list`)")
    verdicts, store = [], {"checked": 0, "dropped": 0}
    if layout:
        keys = [args.key] if args.key else None
        verdicts = verify_cache(layout, keys, rebuild=not args.no_rebuild)
        store = verify_store(layout)
    lines = [] if layout else [f"no cache at {root}"]
    for v in verdicts:
        note = f" ({v.note})" if v.note else ""
        lines.append(f"{v.key}  {v.describe}: {v.state}{note}")
        lines += [f"    {problem}" for problem in v.problems[:_SHOWN]]
        if len(v.problems) > _SHOWN:
            lines.append(f"    ... and {len(v.problems) - _SHOWN} more")
    lines.append(f"bytecode store: {store['checked']} entries checked, {store['dropped']} dropped")
    states = [v.state for v in verdicts]
    damaged = states.count("damaged")
    lines.append(
        f"verified: {len(verdicts)} template{'' if len(verdicts) == 1 else 's'}, "
        f"{states.count('rebuilt')} rebuilt, {damaged} damaged"
    )
    data = {"dir": str(root), "templates": [asdict(v) for v in verdicts], "bytecode": store}
    _emit(args, data, lines)
    return 1 if damaged else 0


_SHOWN = 5  # problems listed per template (--json has them all)


def _size(n: int) -> str:
    return f" ({human(n)})" if n else ""


def _report(args: argparse.Namespace, report: Report, verb: str) -> int:
    lines = [f"removed {i.what}: {i.path}{_size(i.bytes)}" for i in report.removed]
    lines += [f"skipped {i.what}: {i.path}: {i.reason}" for i in report.skipped]
    freed = sum(i.bytes for i in report.removed)
    lines.append(
        f"{verb}: {len(report.removed)} removed ({human(freed)}), {len(report.skipped)} skipped"
    )
    _emit(args, {"dir": str(_root(args)), **report.as_dict()}, lines)
    return 0

"""Helpers that the benchmarks here share: statistics, an interleaved runner, disk use, tables,
the mounted filesystems and the W1 wheelhouse.

    from _common import Case, interleaved, median, p95, used_bytes

Timings are taken interleaved (round r runs every case once, in an order rotated by r) so that
drift of the machine — page cache, writeback, a neighbour's load — hits every case alike; the
untimed ``setup`` of each run syncs, so no case pays for another's dirty pages.
"""

from __future__ import annotations

import ctypes
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
W1 = ("requests", "rich", "pytest", "httpx", "pydantic")
FILESYSTEMS = ("btrfs", "xfs", "ext4")
try:
    import pytest_cowenv  # noqa: F401
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(REPO / "src"))


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """The first and third quartiles (inclusive method); the value itself twice for one."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (math.nan, math.nan)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def p95(values: Sequence[float]) -> float:
    """The 95th percentile (inclusive method); the value itself for a single sample."""
    if len(values) < 2:
        return values[0] if values else math.nan
    return statistics.quantiles(values, n=100, method="inclusive")[94]


@dataclass
class Case:
    """One thing to time. ``run`` is timed; ``setup`` (before) and ``cleanup`` (after) are not,
    except that ``cleanup``'s own duration is recorded too when ``time_cleanup`` is set (to
    time removals of what ``run`` made)."""

    name: str
    run: Callable[[], object]
    setup: Optional[Callable[[], object]] = None
    cleanup: Optional[Callable[[], object]] = None
    time_cleanup: bool = False
    seconds: list[float] = field(default_factory=list)
    cleanup_seconds: list[float] = field(default_factory=list)


def interleaved(
    cases: Sequence[Case],
    repeat: int,
    warmup: int = 1,
    sync_path: Optional[os.PathLike[str] | str] = None,
) -> None:
    """Run every case ``warmup + repeat`` times, interleaved; keep the last ``repeat``. Before
    each timed step, sync the filesystem at ``sync_path`` (default: all of them)."""
    for round_ in range(warmup + repeat):
        shift = round_ % len(cases)
        for case in [*cases[shift:], *cases[:shift]]:
            if case.setup is not None:
                case.setup()
            sync(sync_path)
            start = time.perf_counter()
            case.run()
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                case.seconds.append(elapsed)
            if case.cleanup is not None:
                sync(sync_path)
                start = time.perf_counter()
                case.cleanup()
                elapsed = time.perf_counter() - start
                if round_ >= warmup and case.time_cleanup:
                    case.cleanup_seconds.append(elapsed)


def sync(path: Optional[os.PathLike[str] | str] = None) -> None:
    """Write back dirty pages and commit the journal or transaction: of the filesystem holding
    ``path`` only (``syncfs``, so that other filesystems' writeback does not count), or of
    every filesystem."""
    if path is None or _libc is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _load_syncfs() -> Optional[ctypes.CDLL]:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syncfs  # noqa: B018 - Linux has it; elsewhere sync() does
    except (OSError, AttributeError):
        return None
    return libc


_libc = _load_syncfs()


def used_bytes(path: os.PathLike[str] | str) -> int:
    """Bytes in use on the filesystem holding ``path``, after a sync.

    btrfs: the logical bytes ``btrfs filesystem df`` reports used (data + metadata + system,
    metadata counted once although the DUP profile writes it twice; see
    :func:`physical_used_bytes` for the raw figure). Elsewhere: used blocks of ``statvfs``.
    """
    from pytest_cowenv.fs import fs_type

    sync(path)
    if fs_type(path) == "btrfs" and shutil.which("btrfs"):
        out = subprocess.run(
            ["btrfs", "filesystem", "df", "-b", os.fspath(path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return sum(int(m) for m in re.findall(r"used=(\d+)", out))
    return physical_used_bytes(path)


def physical_used_bytes(path: os.PathLike[str] | str) -> int:
    """Used blocks per ``statvfs`` after a sync (on btrfs: DUP metadata counted twice)."""
    sync(path)
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def make_tree(root: Path, files: int, total_bytes: int, seed: int = 10_000) -> Path:
    """Fill ``root`` with ``files`` files of about ``total_bytes`` in all, sized like a venv's
    (log-normal, median ~5 KB), 40 to a package directory, three levels deep. Deterministic."""
    rng = random.Random(seed)
    weights = [rng.lognormvariate(math.log(4700), 1.4) for _ in range(files)]
    scale = total_bytes / sum(weights)
    for i, weight in enumerate(weights):
        package = i // 40
        path = root / f"top{package % 7}" / f"pkg{package}" / f"mod{i % 3}" / f"f{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(max(1, int(weight * scale))))
    return root


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.1f}" if seconds < 10 else f"{seconds * 1e3:8.0f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table, columns right-aligned except the first."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths))
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def raw_used_bytes(path: str | os.PathLike[str]) -> int:
    """statvfs used bytes *without* a sync: cheap enough to sample during a run."""
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def show(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """:func:`table` with numbers formatted: 1 decimal from 10 up, else 2; nan as '-'."""
    return table(headers, [[_cell(v) for v in r] for r in rows])


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if v != v:  # nan
            return "-"
        return f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return str(v)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} (1/5/15 min)"


def header() -> str:
    """What every benchmark output starts with, so that a figure taken from it can be judged
    and re-measured: the command, the date, the machine (cores, kernel, Python) and its load."""
    import platform

    command = " ".join(
        ["python", os.path.relpath(os.path.abspath(sys.argv[0]), REPO), *sys.argv[1:]]
    )
    return (
        f"command: {command}\n"
        f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}\n"
        f"machine: {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}\n"
        f"start: {load()}"
    )


def mounts() -> dict[str, str]:
    """The benchmark filesystems that are mounted (COWENV_TEST_<FS>), checked by type."""
    from pytest_cowenv.fs import fs_type

    found = {}
    for name in FILESYSTEMS:
        root = os.environ.get(f"COWENV_TEST_{name.upper()}")
        if root and os.path.isdir(root) and fs_type(root) == name:
            found[name] = root
        else:
            print(f"note: COWENV_TEST_{name.upper()} is not a mounted {name}: its rows are skipped")
    return found


def wheelhouse() -> Path:
    """W1 and its dependencies as local wheels, so every row installs offline and alike."""
    wh = RESULTS / "wheelhouse"
    if not any(wh.glob("pydantic-*.whl")):
        print(f"downloading W1 wheels into {wh} (once)")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--only-binary=:all:",
                "--dest",
                str(wh),
                *W1,
            ],
            check=True,
        )
    return wh


def last_lines(text: str, n: int = 3) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and "is ignored" not in ln]
    return " | ".join(lines[-n:]) or "(no output)"

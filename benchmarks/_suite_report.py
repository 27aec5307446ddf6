"""What ``suite.py`` prints and writes: the tables, the CSV and the chart."""

from __future__ import annotations

import argparse
import csv
import subprocess
from pathlib import Path
from typing import Any

from _common import W1, show
from _suite_clones import DiskResult
from _suite_prep import PEERS
from _suite_run import STRATEGY, Context
from _suite_stats import RowStats, ratio, reference


def machine(ctx: Context) -> str:
    import platform

    v = ctx.venv.versions
    uv = subprocess.run(["uv", "--version"], capture_output=True, text=True).stdout.strip()
    peers = ", ".join(f"{p} {v.get(p, 'not installed')}" for p in PEERS)
    return (
        f"host: {platform.node()}\n"
        f"tools: pytest {v.get('pytest')}, pytest-cowenv {v.get('pytest-cowenv')}, "
        f"pytest-xdist {v.get('pytest-xdist')}, {uv}, virtualenv {v.get('virtualenv')}, "
        f"pip {v.get('pip')}, {peers}\n"
        f"filesystems: " + ", ".join(f"{fs} at {p}" for fs, p in ctx.mounts.items())
    )


def report(
    ctx: Context, args: argparse.Namespace, stats: dict[str, RowStats], cold: dict[str, float]
) -> None:
    n = args.tests
    print(
        f"\n== suite of {n} tests, each with its own W1 env "
        f"({' '.join(W1)}); medians of {_rounds(stats, False)} interleaved rounds "
        f"(xdist rows: {_rounds(stats, True)}) =="
    )
    pool = next((s.header for s in stats.values() if s.header), "")
    print(f"pytest-cowenv defaults as run: {pool}")
    print(
        "per-test uv: `uv venv` + `uv pip install --link-mode=clone` from a warm cache; "
        "cache and envs on the same filesystem as the row says"
    )
    print(
        "overhead = pytest setup + teardown of the test (getting and removing the env); "
        "first import = the first run of the tiny wheel's console script, whose module "
        "imports requests, rich, httpx and pydantic; * = fewer tests ran, the wall time is "
        f"extrapolated to {n} tests\n"
    )
    for variant, title in (
        ("real", "tests that install a tiny wheel and run its console script (imports W1)"),
        ("noop", "tests that do nothing in their env"),
    ):
        rows = [s for s in stats.values() if s.row.variant == variant]
        print(f"-- {title}")
        print(
            show(
                [
                    "row",
                    "fs",
                    "tests/round",
                    "overhead ms",
                    "p95 ms",
                    "first import ms",
                    f"wall s ({n})",
                    "peak disk MiB",
                    "overhead vs cowenv",
                    "wall vs cowenv",
                ],
                [_row_cells(s, stats) for s in rows],
            )
        )
        print()
    for fs, wall in cold.items():
        print(
            f"cold start on {fs}: the first test took {wall:.1f} s including the template "
            "build (pytest start-up included; uv cache warm)"
        )
    for s in stats.values():
        if s.summary:
            print(f"{s.row.label} [{s.row.variant}]: {s.summary}")
    failed = [s for s in stats.values() if s.failures]
    for s in failed:
        print(f"\nFAILURES in {s.row.label} [{s.row.variant}] ({len(s.failures)}):")
        print(s.failures[0])


def _rounds(stats: dict[str, RowStats], xdist: bool) -> int:
    """How many rounds the results hold (a journal may stop early)."""
    return max((s.rounds for s in stats.values() if bool(s.row.workers) == xdist), default=0)


def _row_cells(s: RowStats, stats: dict[str, RowStats]) -> list[Any]:
    ref = reference(stats, s.row)
    star = "*" if s.extrapolated else ""
    return [
        s.row.label,
        s.row.fs,
        f"{s.row.tests}{star}",
        s.overhead_median,
        s.overhead_p95,
        s.import_median,
        f"{s.wall:.1f}{star}",
        s.peak_disk / 2**20,
        times(ratio(s.overhead_median, ref.overhead_median)) if ref else "-",
        times(ratio(s.wall, ref.wall)) if ref else "-",
    ]


def times(x: float) -> str:
    """A ratio as text: 2 decimals below 10, none above."""
    if x != x:
        return "-"
    return f"{x:.2f}x" if x < 10 else f"{x:.0f}x"


def print_first_use(fs_part: dict[str, dict[str, float]]) -> None:
    print(
        "\n-- first use: `python -c 'import requests, rich, httpx, pydantic'` "
        "(PYTHONDONTWRITEBYTECODE=1; page cache not dropped)"
    )
    print(
        show(
            [
                "fs",
                "strategy",
                "clone ms",
                "in template ms",
                "first in clone ms",
                "second in clone ms",
                "first-use penalty ms",
            ],
            [
                [
                    fs,
                    STRATEGY[fs],
                    d["clone_ms"],
                    d["template_ms"],
                    d["first_ms"],
                    d["second_ms"],
                    d["penalty_ms"],
                ]
                for fs, d in fs_part.items()
            ],
        )
    )


def print_disk(disk: list[DiskResult]) -> None:
    print(
        "\n-- disk after `sync`: statvfs used-bytes delta with all clones present, median of "
        "the trials (btrfs: statvfs counts its DUP metadata twice; `btrfs filesystem df` in "
        "brackets). Other writers on the same filesystem show as spread between trials."
    )
    print(
        show(
            [
                "fs",
                "how",
                "clones",
                "one copy MiB",
                "copies would take MiB",
                "clones add MiB",
                "per clone KiB",
                "of one template",
                "of the copies",
                "each trial MiB",
            ],
            [
                [
                    d.fs,
                    d.how,
                    d.clones,
                    d.template_bytes / 2**20,
                    d.template_bytes * d.clones / 2**20,
                    f"{d.added_bytes / 2**20:.1f}" + _logical(d, d.logical_bytes / 2**20),
                    d.per_clone / 1024,
                    f"{d.of_template * 100:.1f} %"
                    + _logical(d, d.logical_bytes / d.template_bytes * 100, " %"),
                    f"{d.of_copies * 100:.2f} %",
                    " / ".join(f"{t / 2**20:.1f}" for t in d.trials),
                ]
                for d in disk
            ],
        )
    )


def _logical(d: DiskResult, value: float, unit: str = "") -> str:
    return f" [{value:.1f}{unit}]" if d.fs == "btrfs" else ""


def write_csv(
    path: Path,
    stats: dict[str, RowStats],
    fs_part: dict[str, dict[str, float]],
    disk: list[DiskResult],
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "section",
                "row",
                "fs",
                "variant",
                "workers",
                "tests_per_round",
                "extrapolated",
                "rounds",
                "overhead_median_ms",
                "overhead_p95_ms",
                "first_import_ms",
                "test_work_ms",
                "wall_s",
                "wall_min_s",
                "wall_max_s",
                "peak_disk_mib",
                "overhead_x_cowenv",
                "wall_x_cowenv",
                "failures",
            ]
        )
        for s in stats.values():
            ref = reference(stats, s.row)
            w.writerow(
                [
                    "suite",
                    s.row.label,
                    s.row.fs,
                    s.row.variant,
                    s.row.workers,
                    s.row.tests,
                    s.extrapolated,
                    s.rounds,
                    _r(s.overhead_median),
                    _r(s.overhead_p95),
                    _r(s.import_median),
                    _r(s.work_median),
                    _r(s.wall),
                    _r(s.wall_spread[0]),
                    _r(s.wall_spread[1]),
                    _r(s.peak_disk / 2**20),
                    _r(ratio(s.overhead_median, ref.overhead_median)) if ref else "",
                    _r(ratio(s.wall, ref.wall)) if ref else "",
                    len(s.failures),
                ]
            )
        w.writerow([])
        w.writerow(
            [
                "section",
                "fs",
                "strategy",
                "clone_ms",
                "template_import_ms",
                "first_import_in_clone_ms",
                "second_import_in_clone_ms",
                "penalty_ms",
            ]
        )
        for fs, fu in fs_part.items():
            w.writerow(
                [
                    "first_use",
                    fs,
                    STRATEGY[fs],
                    *(
                        _r(fu[k])
                        for k in ("clone_ms", "template_ms", "first_ms", "second_ms", "penalty_ms")
                    ),
                ]
            )
        w.writerow([])
        w.writerow(
            [
                "section",
                "fs",
                "how",
                "clones",
                "template_mib",
                "added_mib",
                "per_clone_kib",
                "share_of_template",
                "share_of_copies",
            ]
        )
        for d in disk:
            w.writerow(
                [
                    "disk",
                    d.fs,
                    d.how,
                    d.clones,
                    _r(d.template_bytes / 2**20),
                    _r(d.added_bytes / 2**20),
                    _r(d.per_clone / 1024),
                    _r(d.of_template, 4),
                    _r(d.of_copies, 4),
                ]
            )


def _r(v: float, digits: int = 2) -> Any:
    return "" if v != v else round(v, digits)


def _short(value: float, unit: str) -> str:
    if unit == "ms" and value >= 1000:
        return f"{value / 1000:.1f} s"
    return f"{value:,.0f} {unit}" if value >= 1000 else f"{value:.3g} {unit}"


def write_png(path: Path, stats: dict[str, RowStats], n: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no PNG: matplotlib is missing (pip install 'pytest-cowenv[bench]')")
        return
    rows = [s for s in stats.values() if s.row.variant == "real"]
    rows.sort(key=lambda s: s.overhead_median)
    labels = [s.row.label + (" *" if s.extrapolated else "") for s in rows]
    colors = [
        "#2a7" if s.row.kind == "cowenv" else "#999" if s.row.kind == "shared" else "#c64"
        for s in rows
    ]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 0.42 * len(rows) + 1.8), sharey=True)
    for ax, values, title, unit in (
        (
            ax1,
            [max(s.overhead_median, 0.01) for s in rows],
            "per-test environment overhead (median)",
            "ms",
        ),
        (ax2, [s.wall for s in rows], f"wall time of the {n}-test suite", "s"),
    ):
        bars = ax.barh(labels, values, color=colors)
        ax.set_xscale("log")
        ax.set_title(title + f", {unit} (log)")
        ax.invert_yaxis()
        for bar, v in zip(bars, values):
            ax.text(
                bar.get_width() * 1.08,
                bar.get_y() + bar.get_height() / 2,
                _short(v, unit),
                va="center",
                fontsize=8,
            )
        ax.set_xlim(right=max(values) * 6)
    rounds = _rounds(stats, False)
    fig.suptitle(
        f"pytest-cowenv benchmark: {n} tests, each its own W1 env; median of {rounds} "
        f"round{'s' if rounds != 1 else ''} (* = extrapolated from fewer tests)",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)

"""Aggregating the runs of one row of ``suite.py`` over its rounds, and comparing rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from _common import median, p95
from _suite_run import Row, RunResult


@dataclass
class RowStats:
    row: Row
    rounds: int
    overhead_median: float
    overhead_p95: float
    import_median: float
    work_median: float
    wall: float  # for the suite's N tests (extrapolated when fewer ran)
    wall_spread: tuple[float, float]
    peak_disk: int
    extrapolated: bool
    failures: list[str]
    header: str
    summary: str


def aggregate(results: list[RunResult], n: int) -> RowStats:
    row = results[0].row
    walls = [_scaled_wall(r, n) for r in results]
    return RowStats(
        row=row,
        rounds=len(results),
        overhead_median=median([median(r.overhead_ms) for r in results]),
        overhead_p95=median([p95(r.overhead_ms) for r in results]),
        import_median=median([median(r.import_ms) for r in results if r.import_ms]),
        work_median=median([median(r.work_ms) for r in results if r.work_ms]),
        wall=median(walls),
        wall_spread=(min(walls), max(walls)),
        peak_disk=int(median([r.peak_disk for r in results])),
        extrapolated=row.tests < n,
        failures=[f for r in results for f in r.failures],
        header=results[-1].header,
        summary=results[-1].summary,
    )


def _scaled_wall(r: RunResult, n: int) -> float:
    """Wall time of the run, or — when fewer than N tests ran — the session's fixed cost plus
    the measured per-test time scaled to N tests (spread over the workers)."""
    ran = len(r.overhead_ms)
    if not ran or ran >= n:
        return r.wall
    workers = max(1, r.row.workers)
    fixed = max(0.0, r.wall - r.durations_s / workers)
    return fixed + r.durations_s / workers * n / ran


def reference(stats: dict[str, RowStats], row: Row) -> Optional[RowStats]:
    """The pytest-cowenv row a row is compared with: same filesystem, variant and workers;
    rows on a filesystem without a cowenv row compare with btrfs."""
    for fs in (row.fs, "btrfs"):
        ref = stats.get(Row("cowenv", fs, row.variant, 0, row.workers).key)
        if ref:
            return ref
    return None


def ratio(a: float, b: float) -> float:
    return a / b if b and b == b and a == a else float("nan")

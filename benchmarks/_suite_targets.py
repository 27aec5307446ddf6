"""The targets ``suite.py`` checks (issue 10's), each measured, met or not."""

from __future__ import annotations

from typing import Optional

from _common import show
from _suite_clones import DiskResult
from _suite_prep import PEERS
from _suite_stats import RowStats, ratio


def targets(stats: dict[str, RowStats], disk: list[DiskResult]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for each of issue 10's targets this run could measure."""
    out: list[tuple[str, str, bool]] = []

    def get(kind: str, fs: str, variant: str = "real", workers: int = 0) -> Optional[RowStats]:
        for s in stats.values():
            r = s.row
            if (r.kind, r.fs, r.variant, r.workers) == (kind, fs, variant, workers):
                return s
        return None

    cow = get("cowenv", "btrfs")
    if cow:
        out.append(
            (
                "btrfs overhead ≤ 5 ms median",
                f"{cow.overhead_median:.2f} ms",
                cow.overhead_median <= 5,
            )
        )
        uv = get("uv", "btrfs")
        if uv:
            x = ratio(uv.overhead_median, cow.overhead_median)
            out.append(
                ("btrfs ≥ 40x faster than per-test uv (import not counted)", f"{x:.0f}x", x >= 40)
            )
        for kind in PEERS:
            peer = get(kind, "btrfs")
            if peer:
                x = ratio(peer.overhead_median, cow.overhead_median)
                out.append((f"btrfs ≥ 300x faster than {kind}", f"{x:.0f}x", x >= 300))
        shared = get("shared", "btrfs")
        if shared:
            x = ratio(cow.wall, shared.wall)
            out.append(("btrfs suite within 1.3x of the shared env", f"{x:.2f}x", x <= 1.3))
    for variant, goal, what in (
        ("noop", 1.2, "do-nothing tests"),
        ("real", 3.0, "tests that import W1"),
    ):
        cx, ux = get("cowenv", "xfs", variant), get("uv", "xfs", variant)
        if cx and ux:
            extra = (lambda s: s.import_median) if variant == "real" else (lambda s: 0.0)
            x = ratio(ux.overhead_median + extra(ux), cx.overhead_median + extra(cx))
            out.append((f"XFS ≥ {goal}x faster than per-test uv, {what}", f"{x:.2f}x", x >= goal))
    limits = {
        ("btrfs", "snapshot"): ("template", 0.25),
        ("xfs", "per-file clone"): ("copies", 0.06),
        ("btrfs", "per-file clone"): ("copies", 0.12),
    }
    for d in disk:
        if (d.fs, d.how) in limits:
            of, limit = limits[(d.fs, d.how)]
            share = d.of_template if of == "template" else d.of_copies
            out.append(
                (
                    f"{d.clones} {d.how}s on {d.fs} add ≤ {limit * 100:.0f} % of {of}",
                    f"{share * 100:.1f} %",
                    share <= limit,
                )
            )
    return out


def print_targets(stats: dict[str, RowStats], disk: list[DiskResult]) -> None:
    print("\n-- issue 10 targets (ratios from this run)")
    print(
        show(
            ["target", "measured", "met"],
            [[t, m, "yes" if ok else "NO"] for t, m, ok in targets(stats, disk)],
        )
    )

"""The headline benchmark: a suite of N tests that each need their own W1 environment.

Every way of getting a per-test environment runs the same generated suite (see
``benchmarks/peers/suite_conftest.py``), in one invocation, rows interleaved and repeated;
medians are printed. Then the first-use penalty of a fresh clone and the disk that 200 clones
take, per filesystem.

    python benchmarks/suite.py --quick                      # ~3 minutes
    python benchmarks/suite.py --csv docs/bench-suite.csv --png docs/bench-suite.png

Needs the mounts of ``scripts/cowfs.sh`` (``eval "$(bash scripts/cowfs.sh env)"``), uv, and
the network once (the W1 wheelhouse and the peers' benchmark venv are cached in
``benchmarks/results/``). ``matplotlib`` (the ``bench`` extra) is needed only for the PNG.

This file is the command line; each step is a module of its own: ``_suite_prep`` (benchmark venv,
generated suite), ``_suite_run`` (rows and their pytest runs), ``_suite_stats`` (medians over
rounds), ``_suite_clones`` (first use and disk, outside pytest), ``_suite_targets`` (pass or
fail) and ``_suite_report`` (tables, CSV, chart).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from _common import RESULTS, header, load, mounts, wheelhouse
from _suite_clones import disk_part, first_use
from _suite_prep import bench_venv, generate_suite
from _suite_report import machine, print_disk, print_first_use, report, write_csv, write_png
from _suite_run import Context, plan, read_journal, run_rounds
from _suite_stats import aggregate
from _suite_targets import print_targets


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=200, help="tests in the suite (200)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (3)")
    parser.add_argument(
        "--uv-tests",
        type=int,
        default=0,
        help="tests run per round for per-test uv (default: a quarter)",
    )
    parser.add_argument(
        "--peer-tests",
        type=int,
        default=2,
        help="tests run per round for the slow peers (2; extrapolated)",
    )
    parser.add_argument("--workers", type=int, default=2, help="xdist rows (-n); 0 = none")
    parser.add_argument(
        "--xdist-rounds", type=int, default=1, help="rounds that include the xdist rows (1)"
    )
    parser.add_argument("--disk-clones", type=int, default=200)
    parser.add_argument("--disk-trials", type=int, default=3, help="median of (3)")
    parser.add_argument("--first-use-clones", type=int, default=7)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="20 tests, 1 round, 1 peer test, 20 disk clones: a smoke run",
    )
    parser.add_argument(
        "--from-journal",
        type=Path,
        help="report the runs journalled in this file (raw/journal.jsonl) instead of running",
    )
    parser.add_argument("--csv", type=Path, default=RESULTS / "suite.csv")
    parser.add_argument("--png", type=Path, default=RESULTS / "suite.png")
    args = parser.parse_args(argv)
    if args.quick:  # new defaults; options given explicitly still win
        parser.set_defaults(
            tests=20, rounds=1, peer_tests=1, disk_clones=20, disk_trials=1, first_use_clones=3
        )
        args = parser.parse_args(argv)
    started = time.perf_counter()

    found = mounts()
    if not found:
        sys.exit('no benchmark filesystem: run eval "$(bash scripts/cowfs.sh up)" first')
    RESULTS.mkdir(exist_ok=True)
    ctx = Context(
        generate_suite(args.tests), bench_venv(), wheelhouse(), found, args.tests, RESULTS / "raw"
    )
    ctx.raw.mkdir(exist_ok=True)
    rows = plan(args, found, ctx.venv)
    print(header())
    print(machine(ctx))
    for peer, error in ctx.venv.peer_errors.items():
        print(f"{peer}: {error}")

    if args.from_journal:
        cold, results = read_journal(args.from_journal)
        print(f"\nresults read from {args.from_journal} (nothing run)")
    else:
        cold, results = run_rounds(ctx, args, rows)
    stats = {k: aggregate(v, args.tests) for k, v in results.items()}

    report(ctx, args, stats, cold)
    fs_part = {fs: first_use(ctx, fs, args.first_use_clones) for fs in found}
    disk = disk_part(ctx, args.disk_clones, args.disk_trials)
    print_first_use(fs_part)
    print_disk(disk)
    print_targets(stats, disk)
    write_csv(args.csv, stats, fs_part, disk)
    write_png(args.png, stats, args.tests)
    print(
        f"\nend: {load()}\nCSV: {args.csv}\nPNG: {args.png}\ntotal benchmark time "
        f"{(time.perf_counter() - started) / 60:.1f} min"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

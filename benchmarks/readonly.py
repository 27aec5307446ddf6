"""What protecting a template by its modes costs a clone: nothing, if the walk carries the modes.

    eval "$(bash scripts/cowfs.sh env)"
    python benchmarks/readonly.py                  # XFS, 1,500 files, 15 rounds
    python benchmarks/readonly.py --dir /mnt/x --files 2000 --rounds 30 --mode copy

Outside btrfs a template's files and directories lose their write bits after the build, and a
clone gets them back from the walk it is made from (``Tree.with_write_bits``), not by a chmod
per file. This clones one generated tree file by file (one thread) while it is writable
("before") and after ``strip_write_bits`` ("after"), interleaved, and prints the median times,
whether the clones' modes are the same, the system calls of one clone of each (with strace, if
installed: the figure a loaded machine cannot blur) and the CPU time of the load-time check
(walk and manifest comparison).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import header, load, make_tree, median

from pytest_cowenv.clone import LinkMode, Tree, clone_tree, remove_tree, strip_write_bits, walk_tree

_ONE_CLONE = """
import os, sys
from pytest_cowenv.clone import LinkMode, clone_tree, walk_tree
tree = walk_tree(sys.argv[1])
bits = {bits}
if bits:
    tree = tree.with_write_bits(bits)
os.write(2, b"MARK-START\\n")
clone_tree(sys.argv[1], sys.argv[2], LinkMode(sys.argv[3]), tree=tree)
os.write(2, b"MARK-END\\n")
"""


def modes(root: Path) -> list[tuple[str, int]]:
    return sorted(
        (os.path.relpath(os.path.join(d, n), root), os.lstat(os.path.join(d, n)).st_mode)
        for d, dirs, files in os.walk(root)
        for n in dirs + files
    )


def syscalls(src: Path, dst: Path, mode: LinkMode, bits: object) -> dict[str, int]:
    """System calls made by one clone (between the two markers), by name."""
    if shutil.which("strace") is None:
        return {}
    log = dst.with_suffix(".strace")
    script = _ONE_CLONE.format(bits=repr(bits))
    cmd = ["strace", "-f", "-o", str(log), sys.executable, "-c", script, str(src), str(dst), mode]
    subprocess.run(cmd, check=True, capture_output=True)
    lines = log.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if 'write(2, "MARK-START' in line)
    end = next(i for i, line in enumerate(lines) if 'write(2, "MARK-END' in line)
    counts: collections.Counter[str] = collections.Counter()
    for line in lines[start + 1 : end]:
        found = re.match(r"^\d+\s+(\w+)\(", line)
        if found:
            counts[found.group(1)] += 1
    log.unlink()
    remove_tree(dst)
    return dict(counts.most_common())


def check_cpu_ms(src: Path, bits: dict[str, object] | None, rounds: int) -> float:
    """CPU ms of what a process does once per template: walk, compare with the manifest (with
    inodes and ctimes when ``bits``, as now; without, as before), give the write bits back."""
    manifest = json.loads(json.dumps(walk_tree(src).listing(stamps=bool(bits))))
    start = time.process_time()
    for _ in range(rounds):
        tree = walk_tree(src)
        assert tree.listing(stamps=bool(bits)) == manifest
        if bits:
            tree.with_write_bits(bits)
    return (time.process_time() - start) * 1000 / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=os.environ.get("COWENV_TEST_XFS"), help="where (XFS)")
    parser.add_argument("--files", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--mode", default="clone", choices=["clone", "copy"])
    args = parser.parse_args()
    if not args.dir:
        sys.exit('give --dir or set COWENV_TEST_XFS (eval "$(bash scripts/cowfs.sh env)")')
    mode = LinkMode(args.mode)
    print(header(), flush=True)
    base = Path(tempfile.mkdtemp(prefix="readonly-", dir=args.dir))
    try:
        src = make_tree(base / "src", args.files, args.files * 5000)
        writable = walk_tree(src)
        cpu_before = check_cpu_ms(src, None, args.rounds)
        calls_before = syscalls(src, base / "calls-before", mode, None)
        bits = strip_write_bits(writable)
        protected: Tree = walk_tree(src).with_write_bits(bits)
        cpu_after = check_cpu_ms(src, bits, args.rounds)
        calls_after = syscalls(src, base / "calls-after", mode, bits)
        times: dict[str, list[float]] = {"before": [], "after": []}
        same = True
        for i in range(args.rounds):
            for name, tree in (("before", writable), ("after", protected)):
                dst = base / f"{name}-{i}"
                start = time.perf_counter()
                clone_tree(src, dst, mode, tree=tree)
                times[name].append((time.perf_counter() - start) * 1000)
                if i == 0:
                    same &= name == "before" or modes(dst) == modes(base / "before-0")
                if name == "after" or i > 0:
                    remove_tree(dst)
            if i == 0:
                remove_tree(base / "before-0")
        print(
            json.dumps(
                {
                    "dir": args.dir,
                    "files": writable.nfiles,
                    "mode": str(mode),
                    "clone_ms_median": {k: round(median(v), 1) for k, v in times.items()},
                    "same_modes_in_clones": same,
                    "syscalls_per_clone": {
                        "before": sum(calls_before.values()),
                        "after": sum(calls_after.values()),
                        "before_by_name": calls_before,
                        "after_by_name": calls_after,
                    },
                    "load_check_cpu_ms": {
                        "before": round(cpu_before, 2),
                        "after": round(cpu_after, 2),
                    },
                },
                indent=1,
            )
        )
        print(f"end: {load()}")
    finally:
        for dirpath, _dirs, _files in os.walk(base):
            os.chmod(dirpath, 0o755)
        remove_tree(base)


if __name__ == "__main__":
    main()

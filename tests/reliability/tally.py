"""Count what a reliability run did, from its JUnit XML report.

    python -m pytest -n 2 tests/reliability --junitxml=reliability.xml
    python tests/reliability/tally.py reliability.xml

Tests record ``faults`` (signals, full disks, damaged templates, refused directories),
``bad_inputs``, ``inner_tests`` (tests run inside the inner pytest sessions), ``plants``
(symlinks and mounts planted for a deletion to follow), ``races`` (cleaner processes racing
on one tree) and ``lookalikes`` (user files named like ours) with ``record_property``; this
sums them per outcome.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import Counter

COUNTED = ("faults", "bad_inputs", "inner_tests", "plants", "races", "lookalikes")


def tally(path: str) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for case in ET.parse(path).iter("testcase"):
        if "reliability" not in case.get("classname", ""):
            continue
        kinds = {child.tag for child in case}
        outcome = next((k for k in ("failure", "error", "skipped") if k in kinds), "passed")
        counts[f"tests {outcome}"] += 1
        for prop in case.iter("property"):
            name, value = prop.get("name", ""), prop.get("value", "")
            if name in COUNTED and value.isdigit():
                counts[name] += int(value)
    return dict(counts)


if __name__ == "__main__":
    figures = tally(sys.argv[1])
    for name in sorted(figures):
        print(f"{name}: {figures[name]}")
    failed = figures.get("tests failure", 0) + figures.get("tests error", 0)
    print(f"data lost: {'0' if not failed else 'UNKNOWN - a test failed'}")
    sys.exit(1 if failed else 0)

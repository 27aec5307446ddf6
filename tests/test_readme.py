"""The README's CI recipe is run for real, so the commands users copy keep working."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


def recipe_commands() -> str:
    """The shell lines of the recipe's `btrfs cache` step (after `<!-- ci-recipe -->`)."""
    text = README.read_text(encoding="utf-8")
    block = text.split("<!-- ci-recipe -->", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    step = block.split("name: btrfs cache for pytest-cowenv", 1)[1]
    lines = step.split("run: |", 1)[1].splitlines()[1:]
    commands = []
    for line in lines:
        if re.match(r"^\s*- ", line):  # the next step
            break
        if line.strip():
            commands.append(line.strip())
    return "\n".join(commands)


def test_recipe_is_found() -> None:
    commands = recipe_commands()
    assert "mkfs.btrfs" in commands and "mount -o loop" in commands


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mkfs.btrfs"),
    reason="the CI recipe mounts a loop file system: needs root and btrfs-progs",
)
def test_ci_recipe_gives_a_snapshot_cache(tmp_path: Path) -> None:
    mount_point = Path("/mnt/cowenv")
    if os.path.ismount(mount_point):
        pytest.skip("/mnt/cowenv is already mounted here")
    script = 'set -euo pipefail\nsudo() { "$@"; }\n' + recipe_commands()
    env = dict(os.environ, RUNNER_TEMP=str(tmp_path))
    subprocess.run(
        ["bash", "-c", script],
        check=True,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest_cowenv",
                "info",
                "--json",
                "--dir",
                str(mount_point / "cache"),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        info = json.loads(out.stdout)
        assert info["fs"] == "btrfs"
        assert info["strategy"] == "snapshot"
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)

"""What every row of ``suite.py`` needs before it runs: the benchmark venv, the generated suite."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import REPO, RESULTS, last_lines

HERE = Path(__file__).resolve().parent
IMPORT_W1 = "import requests, rich, httpx, pydantic"
PEERS = ("pytest-virtualenv", "pytest-venv")


@dataclass
class BenchVenv:
    python: Path
    peer_errors: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


def bench_venv() -> BenchVenv:
    """A separate venv that runs every row: this project (editable), pytest-xdist and the
    peers from PyPI, so none of them ever enters the project's own dependencies."""
    root = RESULTS / "benchvenv"
    python = root / "bin" / "python"
    if not python.exists():
        print(f"creating the benchmark venv {root} (once)")
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
        _pip(python, "-e", str(REPO), "pytest-xdist")
    venv = BenchVenv(python)
    for peer in PEERS:  # one by one: a peer that cannot install must not stop the others
        proc = _pip(python, peer, check=False)
        if proc.returncode:
            venv.peer_errors[peer] = f"cannot install: {last_lines(proc.stderr + proc.stdout)}"
    out = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    venv.versions = {p["name"].lower(): p["version"] for p in json.loads(out)}
    return venv


def _pip(python: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        check=check,
    )


def generate_suite(n: int) -> Path:
    """``test_real.py`` (install a tiny wheel, run its console script, which imports W1) and
    ``test_noop.py`` (ask for the environment, do nothing), N tests each, N tiny wheels."""
    suite = RESULTS / "suite"
    if suite.exists():
        shutil.rmtree(suite)
    (suite / "wheels").mkdir(parents=True)
    make_wheel = _load_make_wheel()
    for i in range(n):
        make_wheel(
            suite / "wheels",
            f"bench-tiny-{i}",
            "1.0",
            modules={
                f"bench_tiny_{i}.py": f"{IMPORT_W1}\n\n\ndef main():\n    print('tiny {i}')\n"
            },
            scripts={f"bench-tiny-{i}": f"bench_tiny_{i}:main"},
        )
    shutil.copy(HERE / "peers" / "suite_conftest.py", suite / "conftest.py")
    (suite / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (suite / "test_real.py").write_text(
        f"""from pathlib import Path

import pytest
from conftest import W1, timed

WHEELS = Path(__file__).parent / "wheels"
pytestmark = pytest.mark.cowenv(*W1)


@pytest.mark.parametrize("i", range({n}))
def test_real(benv, request, i):
    timed(request, "install_ms", benv.install, WHEELS / f"bench_tiny_{{i}}-1.0-py3-none-any.whl")
    # The console script's first run is the env's first use: its module imports W1.
    out = timed(request, "import_ms", benv.run, f"bench-tiny-{{i}}")
    assert out.strip() == f"tiny {{i}}"
""",
        encoding="utf-8",
    )
    (suite / "test_noop.py").write_text(
        f"""import pytest
from conftest import W1

pytestmark = pytest.mark.cowenv(*W1)


@pytest.mark.parametrize("i", range({n}))
def test_noop(benv, i):
    pass
""",
        encoding="utf-8",
    )
    return suite


def _load_make_wheel() -> Any:
    spec = importlib.util.spec_from_file_location("_wheels", REPO / "tests" / "_wheels.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_wheel

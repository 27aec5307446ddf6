"""Bad input: each mistake gives one clear error at the right place, never an internal traceback.

Option mistakes stop the run at start-up (exit code 4, ``pytest.UsageError``); spec mistakes
fail only the tests that use the spec, with the culprit first in the message.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pytest

from _helpers import internal_frames

USAGE_ERRORS = {
    "unknown link mode": (["--cowenv-link-mode=fast"], "fast", "auto, snapshot, clone"),
    "unknown keep value": (["--cowenv-keep=some"], "some", "none, failed, all"),
    "negative pool": (["--cowenv-pool=-1"], "-1", "--cowenv-pool"),
    "missing --cowenv-dir parent": (
        ["--cowenv-dir={missing}/cache"],
        "does not exist",
        "{missing}",
    ),
}

USAGE_ERRORS_FROM_ENV = {
    "link mode from the environment": ("PYTEST_COWENV_LINK_MODE", "reflink", "reflink"),
    "keep value from the environment": ("PYTEST_COWENV_KEEP", "yes", "yes"),
}

# test name -> (marker or factory call, words the first line of the failure must contain)
SPEC_ERRORS = {
    "invalid_requirement": ('@pytest.mark.cowenv("alpha>>1")', ["alpha>>1", "invalid"]),
    "not_on_index": ('@pytest.mark.cowenv("nosuchpkg==1.0")', ["nosuchpkg"]),
    "conflicting": ('@pytest.mark.cowenv("alpha==1.0", "alpha==2.0")', ["alpha"]),
    "python_99": ('@pytest.mark.cowenv("alpha", python="9.9")', ["9.9"]),
    "unknown_keyword": ('@pytest.mark.cowenv("alpha", pyhton="3.11")', ["pyhton"]),
    "missing_wheel": (
        '@pytest.mark.cowenv("./dist/missing-1.0-py3-none-any.whl")',
        ["missing-1.0-py3-none-any.whl"],
    ),
    "marker_link_mode": ('@pytest.mark.cowenv("alpha", link_mode="fast")', ["fast"]),
    "not_a_string": ("@pytest.mark.cowenv(42)", ["42"]),
}


@pytest.mark.parametrize("case", USAGE_ERRORS, ids=lambda c: c.replace(" ", "-"))
def test_option_mistake_stops_the_run_at_startup(
    pytester: pytest.Pytester,
    tmp_path: Path,
    case: str,
    record_property: Callable[[str, object], None],
) -> None:
    args, culprit, hint = USAGE_ERRORS[case]
    missing = tmp_path / "no" / "such"
    args = [a.format(missing=missing) for a in args]
    pytester.makepyfile("def test_never_runs(cowenv): pass")
    if not any(a.startswith("--cowenv-dir") for a in args):
        args.append(f"--cowenv-dir={tmp_path / 'c'}")
    result = pytester.runpytest_subprocess(*args)
    _assert_usage_error(result, culprit, hint.format(missing=missing))
    assert not (tmp_path / "c").exists() and not missing.parent.exists(), "nothing created"
    record_property("bad_inputs", 1)


@pytest.mark.parametrize("case", USAGE_ERRORS_FROM_ENV, ids=lambda c: c.replace(" ", "-"))
def test_environment_mistake_stops_the_run_at_startup(
    pytester: pytest.Pytester,
    tmp_path: Path,
    case: str,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, object], None],
) -> None:
    var, value, culprit = USAGE_ERRORS_FROM_ENV[case]
    monkeypatch.setenv(var, value)
    pytester.makepyfile("def test_never_runs(cowenv): pass")
    result = pytester.runpytest_subprocess("--cowenv-dir", str(tmp_path / "c"))
    _assert_usage_error(result, culprit, "")
    record_property("bad_inputs", 1)


def _assert_usage_error(result: pytest.RunResult, culprit: str, hint: str) -> None:
    out = "\n".join(result.outlines + result.errlines)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, out
    errors = [line for line in result.errlines if line.startswith("ERROR:")]
    assert len(errors) == 1, out
    assert culprit in errors[0] and hint in errors[0], errors[0]
    assert "Traceback" not in out and not internal_frames(out), out
    assert "test_never_runs" not in out, "no test may run after a usage error"


def test_spec_mistakes_fail_only_their_tests(
    pytester: pytest.Pytester,
    real_dir: Callable[[str], Path],
    offline: list[str],
    record_property: Callable[[str, object], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = real_dir("xfs")
    body = ["import pytest", ""]
    for name, (marker, _words) in SPEC_ERRORS.items():
        body += [marker, f"def test_{name}(cowenv):", "    pass", ""]
    body += [
        "def test_factory_bad_keyword(cowenv_factory):",
        "    cowenv_factory('alpha', link_mode='copy', keep=True)",
        "",
        '@pytest.mark.cowenv("alpha==1.0")',
        "def test_good_spec_still_works(cowenv):",
        "    cowenv.run('alpha')",
        "",
        "def test_no_env_needed():",
        "    pass",
    ]
    pytester.makepyfile("\n".join(body))
    pytester.mkdir("dist")
    # A wide terminal, so that the short summary shows each message's whole first line.
    monkeypatch.setenv("COLUMNS", "400")
    result = pytester.runpytest_subprocess(
        "-rA", "-p", "no:randomly", "--cowenv-dir", str(cache), *offline
    )
    out = "\n".join(result.outlines + result.errlines)
    # Spec errors surface in the setup of the tests that use the spec, nowhere else.
    result.assert_outcomes(passed=2, errors=len(SPEC_ERRORS), failed=1)
    assert "Traceback" not in out and not internal_frames(out), "\n".join(internal_frames(out))
    first_lines = {
        m.group(1): result.outlines[i + 1]
        for i, line in enumerate(result.outlines)
        if (m := re.search(r"(?:ERROR at setup of |_ )test_(\w+) _", line))
    }
    lines = result.outlines
    summary = {
        m.group(1): m.group(2)
        for m in (re.match(r"(?:ERROR|FAILED) \S+::test_(\w+) - (.*)", ln) for ln in lines)
        if m
    }
    for name, (_marker, words) in SPEC_ERRORS.items():
        for word in words:
            # The short summary keeps only the first line: the culprit must be on it.
            assert word in first_lines[name], f"{name}: {word!r} not in {first_lines[name]!r}"
            assert word in summary[name], f"{name}: {word!r} not in {summary[name]!r}"
    assert "keep" in first_lines["factory_bad_keyword"]
    record_property("bad_inputs", len(SPEC_ERRORS) + 1)
    record_property("inner_tests", len(SPEC_ERRORS) + 3)

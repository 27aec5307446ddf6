TESTS = """
import pytest

def test_a(): pass
def test_b(): pass
def test_c(): pass
def test_d(): assert False

@pytest.mark.skip
def test_e(): pass
"""


def test_summary_line(pytester):
    pytester.makepyfile(TESTS)
    result = pytester.runpytest()
    result.assert_outcomes(passed=3, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["passrate: 75.0%"])


def test_digits(pytester):
    pytester.makepyfile(TESTS)
    pytester.runpytest("--passrate-digits=0").stdout.fnmatch_lines(["passrate: 75%"])


def test_nothing_ran(pytester):
    pytester.makepyfile("def helper(): pass")
    assert "passrate:" not in pytester.runpytest().stdout.str()

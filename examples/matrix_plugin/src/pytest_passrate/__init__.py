"""pytest-passrate: the share of passed tests in the terminal summary (the example project
of pytest-cowenv's matrix)."""


def pytest_addoption(parser):
    parser.addoption(
        "--passrate-digits",
        type=int,
        default=1,
        metavar="N",
        help="decimals of the pass rate in the summary (default 1)",
    )


def passrate(stats):
    """Percent of the tests that ran (passed, failed, errors; not skipped) that passed; None
    if none ran."""
    passed = len(stats.get("passed", ()))
    ran = passed + len(stats.get("failed", ())) + len(stats.get("error", ()))
    return None if ran == 0 else 100.0 * passed / ran


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rate = passrate(terminalreporter.stats)
    if rate is not None:
        digits = config.getoption("passrate_digits")
        terminalreporter.write_line(f"passrate: {rate:.{digits}f}%")

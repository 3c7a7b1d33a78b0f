"""Suite-wide rules: in CI (CI=true) a skipped test is a failed test; with
--reliability-report PATH the run writes the reliability report (tests/reliability.py);
--engine NAME runs the end-to-end tests against another Docker engine (tests/e2e/engines.py)."""

import os

import pytest

from .e2e import engines
from .reliability import ReliabilityReport

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_addoption(parser):
    parser.addoption(
        "--reliability-report",
        metavar="PATH",
        help="write the table of fault, fuzzing and hostile-packet tests of this run to PATH",
    )
    parser.addoption(
        "--engine",
        choices=sorted(engines.ENGINES),
        default="20.10",
        help="the Docker engine of tests/e2e: the host's (20.10, default) or 26 "
        "(scripts/engine.sh up 26 first)",
    )


def pytest_configure(config):
    try:
        engines.select(config.getoption("--engine"))
    except RuntimeError as exc:
        raise pytest.UsageError(str(exc)) from None
    path = config.getoption("--reliability-report")
    if path:
        config.pluginmanager.register(ReliabilityReport(path), "reliability-report")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which counts as a failure: {report.longrepr}"

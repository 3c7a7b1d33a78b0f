"""Suite-wide rules: in CI (CI=true) a skipped test is a failed test; with
--reliability-report PATH the run writes the reliability report (tests/reliability.py)."""

import os

import pytest

from .reliability import ReliabilityReport

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_addoption(parser):
    parser.addoption(
        "--reliability-report",
        metavar="PATH",
        help="write the table of fault, fuzzing and hostile-packet tests of this run to PATH",
    )


def pytest_configure(config):
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

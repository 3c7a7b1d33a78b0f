"""docs/reliability.md, written by the suite from its own run (`pytest --reliability-report PATH`):
one row per fault-injection, stress, fuzzing and hostile-packet test, with how many cases it
ran and how they ended. Nothing in the table is typed by hand; the areas below only name the
files and say what each tries."""

import datetime
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# test file (or file::function) -> the fault or attack it tries
AREAS = {
    "tests/faults/test_kill.py": "the driver killed (kill -9) in the middle of a plugin call",
    "tests/faults/test_dockerd_restart.py": "dockerd restarted, or started without the driver",
    "tests/faults/test_watcher.py": "the events watcher cut off from dockerd",
    "tests/faults/test_systemd_unit.py": "the systemd unit that orders the driver first",
    "tests/e2e/test_churn.py": "30 compose replicas up and down, 10 times",
    "tests/e2e/test_races.py": "containers killed while policy regenerates their endpoints",
    "tests/e2e/test_state_faults.py": "the state database locked, or its disk full",
    "tests/e2e/test_map_capacity.py": "policy and service maps at capacity",
    "tests/datapath/test_map_pressure.py": "a conntrack table far too small for the flows",
    "tests/datapath/test_hostile.py": "hostile and malformed packets from containers",
    "tests/unit/server/test_fuzz_plugin.py": "fuzzed plugin and management API requests",
    "tests/unit/server/test_fuzz_documents.py": (
        "fuzzed and adversarial policy and service documents"
    ),
    "tests/e2e/test_networks.py::test_sockets_are_not_world_accessible": "socket permissions",
    "tests/cluster/test_etcd_outage.py": "etcd stopped under a node, then restarted with its data",
    "tests/cluster/test_nodes.py::test_a_node_whose_lease_expires_leaves_every_view": (
        "a node gone without a word (its etcd lease runs out)"
    ),
    "tests/multihost/test_faults.py": (
        "a host's driver killed with -9, and a whole host gone, in a cluster of three hosts"
    ),
}


@dataclass
class Row:
    area: str
    test: str
    checks: str
    examples: int = 1  # hypothesis examples per case
    outcomes: list[str] = field(default_factory=list)
    seconds: float = 0.0


class ReliabilityReport:
    """A pytest plugin, registered by tests/conftest.py when the option is given."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.rows: dict[tuple[str, str], Row] = {}

    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            self.collect(item)

    def pytest_runtest_logreport(self, report) -> None:
        self.record(report)

    def pytest_sessionfinish(self) -> None:
        self.write()

    def collect(self, item) -> None:
        file, _, name = item.nodeid.partition("::")
        function = name.split("[")[0]
        area = AREAS.get(f"{file}::{function}") or AREAS.get(file)
        if area is None or (file, function) in self.rows:
            return
        settings = getattr(item.obj, "_hypothesis_internal_use_settings", None)
        self.rows[file, function] = Row(
            area=area,
            test=f"`{Path(file).name}::{function}`",
            checks=_first_sentence(item.obj.__doc__) or function.replace("_", " "),
            examples=settings.max_examples if settings is not None else 1,
        )

    def record(self, report) -> None:
        file, _, name = report.nodeid.partition("::")
        row = self.rows.get((file, name.split("[")[0]))
        if row is None:
            return
        row.seconds += report.duration
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
            row.outcomes.append(report.outcome)

    def write(self) -> None:
        lines = [
            "# Reliability report",
            "",
            "Written by the test suite (`tests/reliability.py`) from the run described here;",
            "`make test` writes it again. Cases: test cases run (parameters); a fuzzing case",
            "tries up to the number of generated examples shown.",
            "",
            f"- run: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, commit "
            f"{_commit()}, kernel {platform.release()}, CI={os.environ.get('CI', '')}",
            f"- {sum(len(r.outcomes) for r in self.rows.values())} cases in "
            f"{len(self.rows)} tests; failed: "
            f"{sum(r.outcomes.count('failed') for r in self.rows.values())}",
            "",
            "| fault or attack | test | what it checks | cases | result | seconds |",
            "|---|---|---|---:|---|---:|",
        ]
        for row in self.rows.values():
            cases = f"{len(row.outcomes)}"
            if row.examples > 1:
                cases += f" x {row.examples} examples"
            lines.append(
                f"| {row.area} | {row.test} | {row.checks} | {cases} | {_result(row.outcomes)} "
                f"| {row.seconds:.1f} |"
            )
        self.path.write_text("\n".join(lines) + "\n")


def _result(outcomes: list[str]) -> str:
    if not outcomes:
        return "not run"
    counts = {o: outcomes.count(o) for o in ("passed", "failed", "skipped") if o in outcomes}
    return ", ".join(f"{n} {outcome}" for outcome, n in counts.items())


def _first_sentence(doc: str | None) -> str:
    text = " ".join((doc or "").split())
    sentence = text.split(". ")[0].rstrip(".")
    return sentence.replace("|", "/")


def _commit() -> str:
    result = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "unknown"

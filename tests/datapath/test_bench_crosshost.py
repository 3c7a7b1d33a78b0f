"""bench/crosshost.py (`make bench`, issue 14): its two hosts come up with both paths, a
short run measures every test over both, and everything it made is gone afterwards, also
when the run is interrupted."""

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
crosshost = importlib.import_module("crosshost")
sys.path.remove(str(BENCH))


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.startswith("pcx-")}


def _processes_in(namespaces: set[str]) -> set[int]:
    """The pids of the processes in those network namespaces."""
    inodes = {os.stat(f"/run/netns/{ns}").st_ino for ns in namespaces}
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino in inodes:
                found.add(int(pid))
        except OSError:  # gone meanwhile
            continue
    return found


def _left_over() -> dict:
    """What crosshost makes that is still there: namespaces and pin dirs."""
    pins = [p for p in ("/sys/fs/bpf/pcx-host1", "/sys/fs/bpf/pcx-host2") if os.path.exists(p)]
    return {"namespaces": _namespaces(), "pins": pins}


NOTHING = {"namespaces": set(), "pins": []}
TOOLS = ("iptables", "ip6tables")


def _short(tmp_path, *more: str):
    assert _left_over() == NOTHING, "another crosshost run is on this machine"
    return crosshost.parse_args(
        [
            "--rounds",
            "1",
            "--duration",
            "1",
            "--rr-duration",
            "0.5",
            "--build",
            str(tmp_path),
            *more,
        ]
    )


def _host(k: int, *command: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", crosshost.host_ns(k), *command],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _programs(k: int, device: str) -> str:
    """The tc filters (BPF programs) on a device of host k, both directions."""
    return "".join(
        _host(k, "tc", "filter", "show", "dev", device, d) for d in ("ingress", "egress")
    )


@pytest.fixture
def args(tmp_path):
    return _short(tmp_path)


def test_a_short_run_measures_both_paths_and_leaves_nothing(args):
    measured = crosshost.measure(args)
    samples = measured["samples"]
    assert set(samples) == set(crosshost.TESTS)
    for per_fam in samples.values():
        assert set(per_fam) == {"v6", "v4"}
        for per in per_fam.values():
            assert set(per) == set(crosshost.PATHS)
            assert all(len(xs) == 1 and xs[0] > 0 for xs in per.values()), per
    # Each stream notes where the CPUs went.
    cpus = measured["stream_cpus"]
    assert set(cpus) == {"v6", "v4"}
    for per in cpus.values():
        for (run,) in per.values():
            assert len(run["busy"]) == os.cpu_count(), run
            assert all(0 <= x <= 1 for x in run["busy"]) and 0 <= run["same_cpu"] <= 1, run
            assert run["retransmits"] >= 0 and run["rcu_per_gb"] >= 0, run
    targets = crosshost.targets(samples)
    assert len(targets) == len(crosshost.TESTS) * 2
    md = crosshost.markdown(
        {
            "args": vars(args),
            "date": "d",
            "command": "c",
            "seconds": measured["seconds"],
            "host": {"kernel": "k", "cpus": 2, "commit": "0" * 40},
            "summary": crosshost.summarize(samples),
            "stream_cpus": cpus,
            "targets": targets,
        }
    )
    assert "| IPv4 | pycilium |" in md
    assert "## stream: the CPUs (not pinned)" in md
    assert _left_over() == NOTHING


def test_an_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    seen = {}

    def interrupted(self, _args):
        seen.update(_left_over())
        # A server is an `ip netns exec` until it has entered its namespace: on a busy
        # machine that may be after the setup returned.
        deadline = time.monotonic() + 10
        while len(_processes_in(seen["namespaces"])) < 2 + 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        seen["processes"] = _processes_in(seen["namespaces"])
        # No BPF on the reference's path, pycilium's programs on its own devices.
        seen["reference_programs"] = [
            _programs(k, dev) for k in (1, 2) for dev in ("pcxulr", crosshost.REF_DEVICE, "refhost")
        ]
        seen["pycilium_programs"] = [
            _programs(k, dev) for k in (1, 2) for dev in ("pcxul", "cilium_vxlan", f"pcxep{k}")
        ]
        seen["raw"] = [_host(k, tool, "-t", "raw", "-S") for k in (1, 2) for tool in TOOLS]
        raise KeyboardInterrupt

    monkeypatch.setattr(crosshost.CrossHost, "rounds", interrupted)
    with pytest.raises(KeyboardInterrupt):
        crosshost.measure(_short(tmp_path, "--notrack-reference"))
    # Everything was up when Ctrl-C came: two hosts, a container per host and path, both
    # pin dirs, the host datapaths' processes and two servers per path.
    assert seen["namespaces"] == {
        "pcx-host1",
        "pcx-host2",
        "pcx-h1-cil",
        "pcx-h2-cil",
        "pcx-h1-ref",
        "pcx-h2-ref",
    }
    assert len(seen["pins"]) == 2 and len(seen["processes"]) >= 2 + 4
    assert seen["reference_programs"] == [""] * 6
    assert all("bpf" in programs for programs in seen["pycilium_programs"])
    # iptables-nft lists NOTRACK as "-j CT --notrack"
    assert all(raw.lower().count("notrack") >= 2 for raw in seen["raw"]), seen["raw"]
    assert _left_over() == NOTHING
    assert not {pid for pid in seen["processes"] if os.path.exists(f"/proc/{pid}")}


def test_pin_stream_takes_two_cpus_this_process_may_use():
    cpu = min(os.sched_getaffinity(0))
    assert crosshost.parse_args(["--pin-stream", f"{cpu},{cpu}"]).pin_stream == [cpu, cpu]
    assert crosshost.parse_args([]).pin_stream is None
    for bad in (f"{cpu}", "a,b", f"{cpu},{os.cpu_count() + 7}"):
        with pytest.raises(SystemExit):
            crosshost.parse_args(["--pin-stream", bad])

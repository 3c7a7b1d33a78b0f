"""Fault-injection fixtures. These tests restart dockerd and kill the driver, so they use
neither the main dockerd nor the e2e driver: a dockerd of their own ("faultd", own socket, data
root, exec root and managed containerd) and a driver instance of their own ("pycilium-fault")."""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

from datapath.maps import DatapathMaps
from tests.e2e.docker_cli import DOCKER, IMAGE, Docker
from tests.e2e.driver_process import DriverProcess, running, veths

FAULTD_ROOT = "/run/pycilium-faultd"
FAULTD_SOCKET = f"unix://{FAULTD_ROOT}/docker.sock"
FAULTD_DATA = "/var/lib/pycilium-faultd"
# faultd's default bridge network needs a bridge: with --bridge=none dockerd deletes "docker0",
# the main dockerd's. Its own, on a link-local /30 that no container uses.
FAULTD_BRIDGE = "pcfaultd0"
FAULTD_BRIDGE_ADDRESS = "169.254.237.1/30"

FAULT_SETTINGS = {
    "plugin_name": "pycilium-fault",
    "api_socket": "/run/pycilium-fault/api.sock",
    "state_dir": "/run/pycilium-fault/state",
    "bpf_pin_dir": "/sys/fs/bpf/pycilium-fault",
    "veth_prefix": "lxf",
    "cluster_prefix6": "fdce:1c07::/64",
    "node_range4": "10.219.0.0/16",
    "service_range6": "fdce:1c08::/64",
    "service_range4": "10.220.0.0/16",
    "node_id": "43",
    "docker_host": FAULTD_SOCKET,
}


class FaultDocker(Docker):
    """The docker CLI against faultd."""

    def run(self, *args, check=True, timeout=120):
        return super().run("-H", FAULTD_SOCKET, *args, check=check, timeout=timeout)

    def network_endpoints(self, driver_name: str) -> dict[str, dict]:
        """Docker's view: endpoint id -> {container, network, ipv6, ipv4} of every container
        connected to a network of the driver."""
        found = {}
        for net in self.out("network", "ls", "-q", "--filter", f"driver={driver_name}").split():
            data = json.loads(self.out("network", "inspect", net))[0]
            for container_id, info in (data.get("Containers") or {}).items():
                found[info["EndpointID"]] = {
                    "container": container_id,
                    "network": data["Id"],
                    "ipv6": info["IPv6Address"].split("/")[0] or None,
                    "ipv4": info["IPv4Address"].split("/")[0] or None,
                }
        return found


class Faultd:
    """A dockerd of the tests' own, restartable with or without --live-restore."""

    def __init__(self, log_path: str):
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.docker = FaultDocker()
        self.live_restore = False

    def command(self, live_restore: bool) -> list[str]:
        config = os.path.join(FAULTD_ROOT, "daemon.json")
        return [
            "/usr/sbin/dockerd",
            "-H",
            FAULTD_SOCKET,
            "--config-file",
            config,
            "--data-root",
            FAULTD_DATA,
            "--exec-root",
            f"{FAULTD_ROOT}/exec",
            "--pidfile",
            f"{FAULTD_ROOT}/dockerd.pid",
            "--bridge",
            FAULTD_BRIDGE,
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            *(["--live-restore"] if live_restore else []),
        ]

    def start(self, live_restore: bool = False, timeout: float = 60.0) -> float:
        """Start dockerd; returns the seconds until `docker info` answered."""
        os.makedirs(FAULTD_ROOT, exist_ok=True)
        make_bridge()
        with open(os.path.join(FAULTD_ROOT, "daemon.json"), "w") as f:
            f.write("{}\n")
        self.live_restore = live_restore
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(live_restore),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"faultd exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if self.docker.run("info", check=False, timeout=10).returncode == 0:
                    return time.monotonic() - started
            except subprocess.TimeoutExpired:
                continue
            time.sleep(0.3)
        raise RuntimeError(f"faultd did not answer within {timeout} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def restart(self, live_restore: bool = False) -> float:
        self.stop()
        return self.start(live_restore=live_restore)

    def log_tail(self, lines: int = 30) -> str:
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])


def make_bridge() -> None:
    if subprocess.run(["ip", "link", "show", FAULTD_BRIDGE], capture_output=True).returncode:
        subprocess.run(["ip", "link", "add", FAULTD_BRIDGE, "type", "bridge"], check=True)
        subprocess.run(
            ["ip", "addr", "add", FAULTD_BRIDGE_ADDRESS, "dev", FAULTD_BRIDGE], check=True
        )


def stop_stale_faultd() -> None:
    """A faultd an interrupted run left behind is stopped before the data root is reused."""
    try:
        with open(f"{FAULTD_ROOT}/dockerd.pid") as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            # A recycled pid is someone else's process.
            if FAULTD_SOCKET.encode() not in f.read():
                return
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def faultd(tmp_path_factory):
    stop_stale_faultd()
    daemon = Faultd(str(tmp_path_factory.mktemp("faultd") / "dockerd.log"))
    daemon.start()
    try:
        if daemon.docker.run("image", "inspect", IMAGE, check=False).returncode != 0:
            save = subprocess.Popen([DOCKER, "save", IMAGE], stdout=subprocess.PIPE)
            load = subprocess.run(
                [DOCKER, "-H", FAULTD_SOCKET, "load"],
                stdin=save.stdout,
                capture_output=True,
                check=False,
                timeout=120,
            )
            save.stdout.close()
            assert save.wait() == 0 and load.returncode == 0, load.stderr
        daemon.docker.remove_all()
        yield daemon
    finally:
        if daemon.proc.poll() is None:
            daemon.docker.remove_all()
        daemon.stop()
        subprocess.run(["ip", "link", "del", FAULTD_BRIDGE], check=False)
        # dockerd bind-mounts its data root onto itself, and leaves it so.
        while os.path.ismount(FAULTD_DATA):
            subprocess.run(["umount", FAULTD_DATA], check=True)
        shutil.rmtree(FAULTD_ROOT, ignore_errors=True)
        shutil.rmtree(FAULTD_DATA, ignore_errors=True)


@pytest.fixture(scope="session")
def docker(faultd):
    return faultd.docker


@pytest.fixture(scope="session")
def driver(faultd, tmp_path_factory):
    """The fault tests' driver instance; tests that kill it start it again."""
    log = str(tmp_path_factory.mktemp("driver") / "driver.log")
    with running(faultd.docker, log, FAULT_SETTINGS) as process:
        yield process


@pytest.fixture
def driver_up(driver):
    """The driver running without failpoints at the start and at the end of a test."""
    if driver.proc.poll() is not None:
        driver.start()
    yield driver
    if driver.proc.poll() is not None:
        driver.start()


@pytest.fixture
def net(docker, driver_up):
    """An IPAM-form IPv6 network of the fault driver, removed with its containers."""
    with docker.fresh_network(driver_up.name, prefix="f-") as name:
        yield name


@pytest.fixture
def cilium(driver):
    """The `cilium` command line against the fault driver."""
    run = driver.cli
    yield run
    if driver.proc.poll() is None:
        run("policy", "delete", "--all", check=False)


def wait_for_docker_events(driver: DriverProcess, timeout: float = 30.0) -> None:
    """Until the driver's events watcher has read Docker's full listing."""
    deadline = time.monotonic() + timeout
    while not driver.api("/v1/status")["docker_events"]:
        assert time.monotonic() < deadline, "the driver never connected to faultd's events"
        time.sleep(0.2)


def assert_consistent(docker: FaultDocker, driver: DriverProcess) -> None:
    """Nothing leaked or went stale: the driver's endpoints, addresses, veths and BPF map
    entries are exactly those of the containers Docker has connected to its networks."""
    wait_for_docker_events(driver)
    networks = docker.out("network", "ls", "-q", "--no-trunc", "--filter", f"driver={driver.name}")
    known = {n["network_id"] for n in driver.api("/v1/networks")}
    assert known == set(networks.split()), "driver and Docker disagree on networks"
    expected = docker.network_endpoints(driver.name)
    endpoints = {e["endpoint_id"]: e for e in driver.api("/v1/endpoints")}
    assert set(endpoints) == set(expected), "driver and Docker disagree on endpoints"
    for endpoint_id, seen in expected.items():
        assert endpoints[endpoint_id]["ipv6"] == seen["ipv6"], endpoint_id
        assert endpoints[endpoint_id]["ipv4"] == seen["ipv4"], endpoint_id

    docker_ips = [ip for seen in expected.values() for ip in (seen["ipv6"], seen["ipv4"]) if ip]
    assert len(docker_ips) == len(set(docker_ips)), f"two containers share an address: {expected}"
    held = [a["address"] for a in driver.api("/v1/addresses")]
    assert len(held) == len(set(held)), f"an address is held twice: {held}"
    assert set(held) == set(docker_ips), "held addresses are not those of the running containers"

    host_ifnames = {e["host_ifname"] for e in endpoints.values()}
    assert set(veths(driver.settings["veth_prefix"])) == host_ifnames, "orphan or missing veth"

    numeric = {e["numeric_id"] for e in endpoints.values()}
    in_map = [e["endpoint_id"] for e in driver.api("/v1/bpf/endpoints")]
    assert sorted(in_map) == sorted(numeric), "endpoints map entries differ from endpoints"
    maps = DatapathMaps.open(driver.settings["bpf_pin_dir"])
    try:
        stale_policy = maps.policy_endpoint_ids() - numeric
        owners = {entry.endpoint_id for entry in maps.addresses().values()}
    finally:
        maps.close()
    assert not stale_policy, f"policy entries of endpoints that do not exist: {stale_policy}"
    assert owners <= numeric, f"address map entries of endpoints that do not exist: {owners}"

"""The state database locked by another process, or its disk full: Docker gets a clear error,
nothing is half-done (no veth, address, endpoint or map entry), and the same operation
succeeds once the lock is released or space is freed.

A driver instance of its own, whose state directory lives on a small tmpfs this module mounts."""

import errno
import ipaddress
import json
import os
import shutil
import sqlite3
import subprocess
import uuid

import pytest

from . import engines
from .docker_cli import IMAGE, LABEL
from .driver_process import TEST_SETTINGS, DriverProcess, plugin_call, veths

ENGINE = engines.current()
SETTINGS = ENGINE.instance({
    **TEST_SETTINGS,
    "plugin_name": "pycilium-disk",
    "api_socket": "/run/pycilium-disk/api.sock",
    "state_dir": "/run/pycilium-disk/statefs/state",
    "bpf_pin_dir": "/sys/fs/bpf/pycilium-disk",
    "veth_prefix": "lxe",
    "cluster_prefix6": "fdce:1c09::/64",
    "node_range4": "10.221.0.0/16",
    "service_range6": "fdce:1c0a::/64",
    "service_range4": "10.222.0.0/16",
    "node_id": "44",
})  # fmt: skip
MOUNT = os.path.dirname(SETTINGS["state_dir"])
# The /32 of the cluster prefix (the user's subnet below is in it too) and the IPv4 range.
OWN_RANGES = [
    ipaddress.ip_network(SETTINGS["cluster_prefix6"]).supernet(new_prefix=32),
    ipaddress.ip_network(SETTINGS["node_range4"]),
]
# A user's subnet: its pool gets an unreachable route of its own.
SUBNET6 = ENGINE.range("fdce:1c09:0:1::/64")
LOCKED = "is locked by another process"
FULL = "no space left on device for state database"


@pytest.fixture(scope="module")
def disk_driver(docker, tmp_path_factory):
    os.makedirs(MOUNT, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", MOUNT], check=True)
    process = DriverProcess(str(tmp_path_factory.mktemp("disk") / "driver.log"), SETTINGS)
    try:
        process.purge()
        process.start()
        yield process
    finally:
        docker.remove_all()
        process.stop()
        leftovers = veths(SETTINGS["veth_prefix"])
        process.purge()
        subprocess.run(["umount", MOUNT], check=True)
        # The mount point and the API socket's directory.
        shutil.rmtree(os.path.dirname(MOUNT))
    assert not leftovers, f"veths left behind: {leftovers}"


@pytest.fixture
def network(docker, disk_driver):
    name = docker.cilium_network(disk_driver.name, prefix="d-")
    yield name
    docker.remove_network(name)


def snapshot(driver) -> dict:
    """Everything a half-done operation could leave behind."""
    return {
        "veths": sorted(veths(SETTINGS["veth_prefix"])),
        "addresses": driver.api("/v1/addresses"),
        "endpoints": sorted(e["endpoint_id"] for e in driver.api("/v1/endpoints")),
        "networks": sorted(n["network_id"] for n in driver.api("/v1/networks")),
        "bpf": sorted(json.dumps(e, sort_keys=True) for e in driver.api("/v1/bpf/endpoints")),
        "routes": own_routes(),
    }


def own_routes() -> list[str]:
    lines = []
    for family in ("-6", "-4"):
        out = subprocess.run(
            ["ip", family, "route", "show", "proto", "206"], capture_output=True, text=True
        ).stdout
        # "unreachable <prefix> ..." or "<address> dev ...": the destination is in the first two.
        lines += [
            line
            for line in out.splitlines()
            if any(in_own_ranges(word) for word in line.split()[:2])
        ]
    return sorted(lines)


def in_own_ranges(word: str) -> bool:
    try:
        network = ipaddress.ip_network(word, strict=False)
    except ValueError:
        return False
    return any(network.subnet_of(r) for r in OWN_RANGES if r.version == network.version)


def create_endpoint_body(docker, network) -> dict:
    """A CreateEndpoint as Docker sends it, for an address Docker will not hand out here."""
    ipam = json.loads(docker.out("network", "inspect", network))[0]
    subnet6 = next(c["Subnet"] for c in ipam["IPAM"]["Config"] if ":" in c["Subnet"])
    address = ipaddress.ip_network(subnet6)[-16]
    return {
        "NetworkID": ipam["Id"],
        "EndpointID": uuid.uuid4().hex * 2,
        "Interface": {"Address": "", "AddressIPv6": f"{address}/128", "MacAddress": ""},
        "Options": {},
    }


class Operations:
    """What Docker does on the state database: create a network, start a container, and
    (as a direct plugin call) CreateEndpoint."""

    def __init__(self, docker, driver, network):
        self.docker, self.driver = docker, driver
        self.network = network
        self.new_network = "d-" + uuid.uuid4().hex[:8]
        self.container = "d-" + uuid.uuid4().hex[:8]
        self.endpoint = create_endpoint_body(docker, network)

    def attempt(self) -> list[str]:
        """Each operation's error as Docker reports it."""
        driver = self.driver.name
        results = [
            self.docker.run(
                "network", "create", "--label", LABEL, "-d", driver, "--ipam-driver", driver,
                "--ipv6", self.new_network, check=False,
            ),
            self.docker.run(
                "run", "-d", "--label", LABEL, "--net", self.network, "--name", self.container,
                IMAGE, "sleep", "1d", check=False,
            ),
        ]  # fmt: skip
        errors = [r.stderr if r.returncode else "" for r in results]
        reply = plugin_call(
            self.driver.plugin_socket, "NetworkDriver.CreateEndpoint", self.endpoint
        )
        return [*errors, reply.get("Err", "")]

    def retry_and_undo(self) -> None:
        """The same operations once the fault is gone: each succeeds. (Docker left the
        container created but not started.)"""
        driver = self.driver.name
        self.docker.network_create(
            self.new_network, "-d", driver, "--ipam-driver", driver, "--ipv6"
        )
        self.docker.run("start", self.container)
        reply = plugin_call(
            self.driver.plugin_socket, "NetworkDriver.CreateEndpoint", self.endpoint
        )
        assert "Err" not in reply, reply
        prefix = SETTINGS["veth_prefix"]
        assert prefix + self.endpoint["EndpointID"][:12] in veths(prefix)

        ids = {k: self.endpoint[k] for k in ("NetworkID", "EndpointID")}
        assert plugin_call(self.driver.plugin_socket, "NetworkDriver.DeleteEndpoint", ids) == {}
        self.docker.remove_network(self.new_network)


def test_a_locked_state_database_is_a_clear_error_and_changes_nothing(docker, disk_driver, network):
    ops = Operations(docker, disk_driver, network)
    before = snapshot(disk_driver)
    other = sqlite3.connect(os.path.join(SETTINGS["state_dir"], "state.db"), isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        errors = ops.attempt()
        during = snapshot(disk_driver)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert all(LOCKED in error for error in errors), errors
    assert during == before
    ops.retry_and_undo()


def fill(directory: str) -> str:
    """Write zeros until the filesystem says ENOSPC; return the file to delete to free it."""
    path = os.path.join(directory, "filler")
    chunk = bytes(65536)
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    return path


def test_a_full_state_disk_is_a_clear_error_and_changes_nothing(docker, disk_driver, network):
    ops = Operations(docker, disk_driver, network)
    before = snapshot(disk_driver)
    # Commits append to the WAL, which this young instance has not yet checkpointed back to
    # its start (SQLite does at 1000 pages): each needs new blocks on the tmpfs.
    filler = fill(MOUNT)
    try:
        errors = ops.attempt()
        during = snapshot(disk_driver)
    finally:
        os.unlink(filler)
    assert all(FULL in error for error in errors), errors
    # CreateEndpoint made the veth and its map entry before the commit failed: both are gone.
    assert during == before
    ops.retry_and_undo()


def test_a_full_state_disk_leaves_no_route_for_a_refused_subnet(disk_driver):
    before = own_routes()
    pool = {"AddressSpace": "CiliumLocal", "Pool": SUBNET6, "V6": True}
    filler = fill(MOUNT)
    try:
        reply = plugin_call(disk_driver.plugin_socket, "IpamDriver.RequestPool", pool)
        during = own_routes()
    finally:
        os.unlink(filler)
        subprocess.run(["ip", "-6", "route", "del", "unreachable", SUBNET6], capture_output=True)
    assert FULL in reply.get("Err", ""), reply
    assert during == before

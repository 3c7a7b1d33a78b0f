"""The state database locked by another process, or its disk full: Docker gets a clear error,
nothing is half-done (no veth, address, endpoint or map entry), and the same operation
succeeds once the lock is released or space is freed.

A driver instance of its own, whose state directory lives on a small tmpfs this module mounts."""

import errno
import ipaddress
import json
import os
import sqlite3
import subprocess
import uuid

import pytest

from .conftest import IMAGE, LABEL, veths
from .driver_process import TEST_SETTINGS, DriverProcess, plugin_call

MOUNT = "/run/pycilium-disk/statefs"
SETTINGS = {
    **TEST_SETTINGS,
    "plugin_name": "pycilium-disk",
    "api_socket": "/run/pycilium-disk/api.sock",
    "state_dir": f"{MOUNT}/state",
    "bpf_pin_dir": "/sys/fs/bpf/pycilium-disk",
    "veth_prefix": "lxe",
    "cluster_prefix6": "fdce:1c09::/64",
    "node_range4": "10.221.0.0/16",
    "service_range6": "fdce:1c0a::/64",
    "service_range4": "10.222.0.0/16",
    "node_id": "44",
}
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
        os.rmdir(MOUNT)
    assert not leftovers, f"veths left behind: {leftovers}"


@pytest.fixture
def network(docker, disk_driver):
    name = docker.network_create(
        "d-" + uuid.uuid4().hex[:8],
        "-d",
        disk_driver.name,
        "--ipam-driver",
        disk_driver.name,
        "--ipv6",
    )
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
    }


def create_endpoint_body(docker, network) -> dict:
    """A CreateEndpoint as Docker sends it, for an address Docker will not hand out here."""
    ipam = json.loads(docker.out("network", "inspect", network))[0]
    subnet6 = next(c["Subnet"] for c in ipam["IPAM"]["Config"] if ":" in c["Subnet"])
    address = ipaddress.ip_network(subnet6)[0xFFF0]
    return {
        "NetworkID": ipam["Id"],
        "EndpointID": uuid.uuid4().hex * 2,
        "Interface": {"Address": "", "AddressIPv6": f"{address}/128", "MacAddress": ""},
        "Options": {},
    }


def recreate_and_retry(docker, driver, network, container, endpoint) -> None:
    """The three operations that failed, again: each succeeds."""
    docker.network_create(network, "-d", driver.name, "--ipam-driver", driver.name, "--ipv6")
    docker.run("start", container)
    reply = plugin_call(driver.plugin_socket, "NetworkDriver.CreateEndpoint", endpoint)
    assert "Err" not in reply, reply
    assert SETTINGS["veth_prefix"] + endpoint["EndpointID"][:12] in veths(SETTINGS["veth_prefix"])


def delete_endpoint(driver, endpoint) -> None:
    ids = {k: endpoint[k] for k in ("NetworkID", "EndpointID")}
    assert plugin_call(driver.plugin_socket, "NetworkDriver.DeleteEndpoint", ids) == {}


def failed_with(result: subprocess.CompletedProcess, message: str) -> bool:
    return result.returncode != 0 and message in result.stderr


def test_a_locked_state_database_is_a_clear_error_and_changes_nothing(docker, disk_driver, network):
    endpoint = create_endpoint_body(docker, network)
    name = "d-" + uuid.uuid4().hex[:8]
    other_net = "d-" + uuid.uuid4().hex[:8]
    before = snapshot(disk_driver)
    other = sqlite3.connect(os.path.join(SETTINGS["state_dir"], "state.db"), isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        create = docker.run(
            "network", "create", "--label", LABEL, "-d", disk_driver.name,
            "--ipam-driver", disk_driver.name, "--ipv6", other_net, check=False,
        )  # fmt: skip
        run = docker.run(
            "run", "-d", "--label", LABEL, "--net", network, "--name", name, IMAGE, "sleep", "1d",
            check=False,
        )  # fmt: skip
        reply = plugin_call(disk_driver.plugin_socket, "NetworkDriver.CreateEndpoint", endpoint)
        during = snapshot(disk_driver)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert failed_with(create, LOCKED), create.stderr
    assert failed_with(run, LOCKED), run.stderr
    assert LOCKED in reply.get("Err", ""), reply
    assert during == before

    recreate_and_retry(docker, disk_driver, other_net, name, endpoint)
    delete_endpoint(disk_driver, endpoint)
    docker.remove_network(other_net)


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
    endpoint = create_endpoint_body(docker, network)
    name = "d-" + uuid.uuid4().hex[:8]
    other_net = "d-" + uuid.uuid4().hex[:8]
    before = snapshot(disk_driver)
    filler = fill(MOUNT)
    try:
        create = docker.run(
            "network", "create", "--label", LABEL, "-d", disk_driver.name,
            "--ipam-driver", disk_driver.name, "--ipv6", other_net, check=False,
        )  # fmt: skip
        run = docker.run(
            "run", "-d", "--label", LABEL, "--net", network, "--name", name, IMAGE, "sleep", "1d",
            check=False,
        )  # fmt: skip
        reply = plugin_call(disk_driver.plugin_socket, "NetworkDriver.CreateEndpoint", endpoint)
        during = snapshot(disk_driver)
    finally:
        os.unlink(filler)
    assert failed_with(create, FULL), create.stderr
    assert failed_with(run, FULL), run.stderr
    # CreateEndpoint made the veth and its map entry before the commit failed: both are gone.
    assert FULL in reply.get("Err", ""), reply
    assert during == before

    recreate_and_retry(docker, disk_driver, other_net, name, endpoint)
    delete_endpoint(disk_driver, endpoint)
    docker.remove_network(other_net)

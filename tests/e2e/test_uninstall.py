"""`python -m driver.server.uninstall` leaves the host as it was before the driver started:
routes, iptables and nftables rules, bpffs and links.

A driver instance of its own (settings no other instance uses) makes networks, a pool and
an endpoint through the plugin protocol on its socket (no dockerd call needed), is stopped
with them still in its state, and is uninstalled. Other instances may run tests on this
host at the same time, so the snapshots compare the lines that name this instance or the
decoys: things shaped like its own (a route of the driver's protocol outside its ranges,
another prefix's FORWARD rule and port chain, a link and a pin directory with a similar
name) that the uninstall must leave alone."""

import contextlib
import os
import shutil
import subprocess
import sys
import uuid

import pytest

from datapath.uninstall import remove_from_host

from .driver_process import DriverProcess, plugin_call

SETTINGS = {
    "plugin_name": "pycilium-uninstall",
    "api_socket": "/run/pycilium-uninstall/api.sock",
    "state_dir": "/run/pycilium-uninstall/state",
    "bpf_pin_dir": "/sys/fs/bpf/pycilium-uninstall",
    "veth_prefix": "lxu",
    "cluster_prefix6": "fdce:1c0a::/64",
    "node_range4": "10.222.0.0/16",
    "service_range6": "fdce:1c0b::/64",
    "service_range4": "10.223.0.0/16",
    "node_id": "44",
}
DOCKER_POOL = "10.226.7.0/24"  # as Docker's own IPAM would hand a network of the driver
SUBNET_POOL = "10.226.9.0/24"  # a user's --subnet through the driver's IPAM
GONE_POOL = "10.226.6.0/24"  # a network deleted before the driver stops
OURS = ("fdce:1c0a:", "10.222.", "fdce:1c0b:", "10.223.", "10.226.", "lxu", "LXU")
OURS += ("pycilium-uninstall",)
DECOY_ROUTE = "10.226.8.0/24"
DECOY_RULE = ["-i", "lxv+", "-m", "comment", "--comment", "pycilium-uninstall-decoy"]
DECOY_CHAIN = "PYCILIUM-LXV-PORTS"
DECOY_LINK = "lxv0"  # a veth pair (no dummy links on every kernel)
DECOY_PIN_DIR = "/sys/fs/bpf/pycilium-uninstall-decoy"
DECOYS = ("10.226.8.", "lxv", "LXV")

SNAPSHOTS = {
    "routes": [
        ["ip", "-4", "route", "show", "table", "all"],
        ["ip", "-6", "route", "show", "table", "all"],
    ],
    "iptables": [["iptables-save"], ["ip6tables-save"]],
    "bpffs": [["find", "/sys/fs/bpf", "-maxdepth", "2"]],
    "links": [["ip", "-o", "link", "show"]],
}

# iptables-save shows the nf_tables backend's rules too; nft itself is not always installed.
if shutil.which("nft"):
    SNAPSHOTS["nftables"] = [["nft", "list", "ruleset"]]


def snapshot() -> dict[str, list[str]]:
    """Per kind, the sorted lines that name this instance or a decoy (counters stripped)."""
    taken = {}
    for kind, commands in SNAPSHOTS.items():
        lines = []
        for command in commands:
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            lines += [
                line.split(" [")[0] if kind == "iptables" else line for line in out.splitlines()
            ]
        taken[kind] = sorted(line for line in lines if any(m in line for m in OURS + DECOYS))
    return taken


def run(*command, check=True):
    return subprocess.run(command, capture_output=True, text=True, check=check)


def add_decoys():
    run("ip", "route", "add", "unreachable", DECOY_ROUTE, "proto", "206")
    run("iptables", "-A", "FORWARD", *DECOY_RULE, "-j", "ACCEPT")
    run("iptables", "-t", "nat", "-N", DECOY_CHAIN)
    run("ip", "link", "add", DECOY_LINK, "type", "veth", "peer", "name", DECOY_LINK + "p")
    os.makedirs(DECOY_PIN_DIR)


def remove_decoys():
    run("ip", "route", "del", "unreachable", DECOY_ROUTE, "proto", "206", check=False)
    run("iptables", "-D", "FORWARD", *DECOY_RULE, "-j", "ACCEPT", check=False)
    run("iptables", "-t", "nat", "-X", DECOY_CHAIN, check=False)
    run("ip", "link", "del", DECOY_LINK, check=False)
    shutil.rmtree(DECOY_PIN_DIR, ignore_errors=True)


def purge():
    """What a failed run left of the instance, found by its settings, not by the command tested."""
    ranges = [
        SETTINGS[k] for k in ("cluster_prefix6", "node_range4", "service_range6", "service_range4")
    ]
    ranges += [DOCKER_POOL, SUBNET_POOL, GONE_POOL]
    remove_from_host(SETTINGS["bpf_pin_dir"], SETTINGS["veth_prefix"], ranges)
    shutil.rmtree("/run/pycilium-uninstall", ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"/run/docker/plugins/{SETTINGS['plugin_name']}.sock")


def uninstall() -> subprocess.CompletedProcess:
    env = {**os.environ, **{"CILIUM_" + k.upper(): v for k, v in SETTINGS.items()}}
    return subprocess.run(
        [sys.executable, "-m", "driver.server.uninstall"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def use(sock: str) -> None:
    """Networks, a --subnet pool and an endpoint, as Docker would ask for them; one network
    deleted again, the rest left in the driver's state when it stops."""

    def call(name, body):
        reply = plugin_call(sock, name, body)
        assert not reply.get("Err"), f"{name}: {reply['Err']}"
        return reply

    kept, gone, endpoint = (uuid.uuid4().hex * 2 for _ in range(3))
    call(
        "IpamDriver.RequestPool", {"AddressSpace": "CiliumLocal", "Pool": SUBNET_POOL, "V6": False}
    )
    for network, pool in ((kept, DOCKER_POOL), (gone, GONE_POOL)):
        ipv4 = [{"AddressSpace": "LocalDefault", "Pool": pool, "Gateway": pool[:-4] + "1/24"}]
        body = {"NetworkID": network, "Options": {}, "IPv4Data": ipv4, "IPv6Data": []}
        call("NetworkDriver.CreateNetwork", body)
    call("NetworkDriver.DeleteNetwork", {"NetworkID": gone})
    interface = {"Address": "10.226.7.5/24"}
    body = {"NetworkID": kept, "EndpointID": endpoint, "Interface": interface, "Options": {}}
    call("NetworkDriver.CreateEndpoint", body)


@pytest.fixture
def decoys():
    purge()
    remove_decoys()
    try:
        add_decoys()
        yield
    finally:
        remove_decoys()
        purge()


def test_uninstall_leaves_the_host_as_before(decoys, tmp_path):
    before = snapshot()
    process = DriverProcess(str(tmp_path / "driver.log"), SETTINGS)
    try:
        process.start()
        use(process.plugin_socket)
        refused = uninstall()
        assert refused.returncode != 0
        assert f"still answers on {process.plugin_socket}" in refused.stderr
        during = snapshot()
    finally:
        process.stop()
    assert during["routes"] != before["routes"] and during["links"] != before["links"]

    done = uninstall()
    assert done.returncode == 0, done.stderr
    assert f"removed route {DOCKER_POOL}" in done.stdout
    assert snapshot() == before
    for path in (
        SETTINGS["state_dir"],
        SETTINGS["bpf_pin_dir"],
        process.plugin_socket,
        SETTINGS["api_socket"],
    ):
        assert not os.path.exists(path), path
    again = uninstall()
    assert again.returncode == 0 and "nothing of the pycilium-uninstall driver" in again.stdout

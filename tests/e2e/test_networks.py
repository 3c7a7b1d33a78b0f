"""The foundation's user scenario, with the real docker CLI against the real engine."""

import ipaddress
import json
import os
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from . import engines
from .docker_cli import IMAGE, LABEL
from .driver_process import veths


def ping_ok(docker, container, address, count=1):
    tool = "ping6" if ipaddress.ip_address(address).version == 6 else "ping"
    result = docker.exec(container, tool, "-c", str(count), "-W", "2", address, check=False)
    return result.returncode == 0


def test_ipam_network_containers_ping_each_other(docker, driver, net):
    a = docker.container(net)
    a6, a4 = docker.addresses(a, net)
    status = driver.api("/v1/status")
    assert ipaddress.ip_address(a6) in ipaddress.ip_network(status["node"]["ipv6_range"])
    assert ipaddress.ip_address(a4) in ipaddress.ip_network(status["node"]["ipv4_range"])
    for address in (a6, a4):
        tool = "ping6" if ":" in address else "ping"
        result = docker.run(
            "run",
            "--rm",
            "--label",
            LABEL,
            "--net",
            net,
            IMAGE,
            tool,
            "-c1",
            "-W2",
            address,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_container_routes_and_router(docker, driver, net):
    a = docker.container(net)
    # The network's own routers, the first addresses of its subnets.
    data = json.loads(docker.out("inspect", a))[0]["NetworkSettings"]["Networks"][net]
    router6, router4 = data["IPv6Gateway"], data["Gateway"]
    routes6 = docker.exec(a, "ip", "-6", "route").stdout
    routes4 = docker.exec(a, "ip", "route").stdout
    assert f"default via {router6} dev eth0" in routes6
    assert f"default via {router4} dev eth0" in routes4
    assert ping_ok(docker, a, router6)
    # The router's neighbour entry is the host veth's MAC: everything leaves through the host.
    host_veth = next(e for e in driver.api("/v1/endpoints") if e["sandbox_key"])["host_ifname"]
    host_mac = Path(f"/sys/class/net/{host_veth}/address").read_text().strip()
    assert host_mac in docker.exec(a, "ip", "-6", "neigh").stdout
    assert subprocess.run(["ip", "link", "show", "docker_gwbridge"], capture_output=True).returncode


def test_plain_network_gets_ipv6_from_the_driver(docker, driver):
    net = docker.network_create("p-" + uuid.uuid4().hex[:8], "-d", driver.name)
    try:
        a, b = docker.container(net), docker.container(net)
        b6 = docker.exec(b, "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global")
        b6 = b6.stdout.split()[3].split("/")[0]
        _, b4 = docker.addresses(b, net)
        assert ipaddress.ip_address(b6) in ipaddress.ip_network(driver.settings["cluster_prefix6"])
        assert ping_ok(docker, a, b6)
        assert ping_ok(docker, a, b4)
        assert "default via" in docker.exec(a, "ip", "-6", "route").stdout
    finally:
        docker.remove_network(net)


def test_user_subnets_static_addresses_and_mac(docker, driver, engine):
    subnet6, subnet4 = engine.addresses.user
    static6, static4 = engines.address(subnet6, 0x50), engines.address(subnet4, 50)
    net = docker.cilium_network(driver.name, "--subnet", subnet6, "--subnet", subnet4, prefix="s-")
    try:
        a = docker.container(
            net, "--ip", static4, "--ip6", static6, "--mac-address", "02:42:0a:4d:00:32"
        )
        b = docker.container(net)
        assert docker.addresses(a, net) == (static6, static4)
        assert "02:42:0a:4d:00:32" in docker.exec(a, "ip", "link", "show", "eth0").stdout
        b6, b4 = docker.addresses(b, net)
        assert ipaddress.ip_address(b6) in ipaddress.ip_network(subnet6)
        assert ping_ok(docker, a, b6) and ping_ok(docker, a, b4)
        # Both networks exist at once; a second with an overlapping subnet is refused.
        clash = docker.run(
            "network",
            "create",
            "-d",
            driver.name,
            "--ipam-driver",
            driver.name,
            "--subnet",
            str(ipaddress.ip_network(subnet4).supernet(new_prefix=16)),
            "clash-" + uuid.uuid4().hex[:6],
            check=False,
        )
        assert clash.returncode != 0 and f"overlaps {subnet4}" in clash.stderr
    finally:
        docker.remove_network(net)


@pytest.fixture
def subnet_net(docker, driver, engine):
    subnet6, subnet4 = engine.addresses.pool
    name = docker.cilium_network(driver.name, "--subnet", subnet6, "--subnet", subnet4, prefix="s-")
    yield name
    docker.remove_network(name)


def test_bad_static_addresses_are_clear_errors_and_leave_nothing(
    docker, driver, engine, subnet_net
):
    a = docker.container(subnet_net)
    a6, _ = docker.addresses(a, subnet_net)
    gateway6 = engines.address(engine.addresses.pool[0], 1)
    before = veths(driver.settings["veth_prefix"])
    v6_before = [a for a in driver.api("/v1/addresses") if ":" in a["address"]]
    # Docker 26 itself refuses an address outside the network's subnets, before the IPAM.
    outside = (
        "no configured subnet or ip-range contain the IP address fdce:9999::5"
        if engine.compose_v2
        else "does not belong to any of this network's subnets"
    )
    refusals = (
        ("fdce:9999::5", outside),
        (a6, f"address {a6} is already in use"),
        (gateway6, f"address {gateway6} is already in use"),  # the gateway
    )
    for wanted, message in refusals:
        name = "bad-" + uuid.uuid4().hex[:8]
        result = docker.run(
            "run",
            "-d",
            "--label",
            LABEL,
            "--net",
            subnet_net,
            "--name",
            name,
            "--ip6",
            wanted,
            IMAGE,
            "sleep",
            "1d",
            check=False,
        )
        assert result.returncode != 0
        assert message in result.stderr
        # docker run leaves the failed container created; its removal releases what Docker held.
        docker.run("rm", "-f", name)
    assert veths(driver.settings["veth_prefix"]) == before
    assert len(driver.api("/v1/endpoints")) == 1
    # Docker 20.10 itself keeps the IPv4 address it took before the IPv6 request failed
    # (released with the network); nothing of the refused IPv6 requests stays.
    assert [a for a in driver.api("/v1/addresses") if ":" in a["address"]] == v6_before


def test_connect_and_disconnect_a_running_container(docker, driver, net):
    other = docker.cilium_network(driver.name, prefix="c-")
    try:
        a = docker.container(net)
        docker.run("network", "connect", other, a)
        assert "eth1" in docker.exec(a, "ip", "link").stdout
        b = docker.container(other)
        b6, _ = docker.addresses(b, other)
        assert ping_ok(docker, a, b6)
        docker.run("network", "disconnect", other, a)
        assert "eth1" not in docker.exec(a, "ip", "link").stdout
        assert len(driver.api("/v1/endpoints")) == 2
    finally:
        docker.remove_network(other)


def test_twenty_parallel_containers_are_unique_and_reach_each_other(docker, driver, net):
    with ThreadPoolExecutor(max_workers=20) as pool:
        names = list(pool.map(lambda _: docker.container(net), range(20)))
    addresses = [docker.addresses(n, net) for n in names]
    v6 = [a[0] for a in addresses]
    v4 = [a[1] for a in addresses]
    assert len(set(v6)) == 20 and len(set(v4)) == 20
    script = "; ".join(
        f"ping6 -c1 -W2 {a6} >/dev/null || echo FAIL6 {a6}; ping -c1 -W2 {a4} >/dev/null "
        f"|| echo FAIL4 {a4}"
        for a6, a4 in addresses
    )

    def failures(name):
        return docker.exec(name, "sh", "-c", script, timeout=120).stdout.split("\n")

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(failures, names))
    assert all(line == "" for lines in results for line in lines), results


def test_rm_leaves_no_veth_address_or_map_entry(docker, driver, net):
    addresses_before = driver.api("/v1/status")["addresses"]
    names = [docker.container(net) for _ in range(3)]
    assert driver.api("/v1/status")["addresses"] == addresses_before + 6
    assert len(driver.api("/v1/bpf/endpoints")) == 3
    docker.run("rm", "-f", *names)
    assert veths(driver.settings["veth_prefix"]) == []
    assert driver.api("/v1/endpoints") == []
    assert driver.api("/v1/bpf/endpoints") == []
    assert driver.api("/v1/status")["addresses"] == addresses_before
    routes = subprocess.run(["ip", "-6", "route"], capture_output=True, text=True).stdout
    assert f"dev {driver.settings['veth_prefix']}" not in routes


def test_network_overlapping_host_routes_is_refused(docker, driver, engine):
    routed = engine.addresses.routed4
    subprocess.run(["ip", "route", "add", "unreachable", routed], check=True)
    try:
        result = docker.run(
            "network",
            "create",
            "-d",
            driver.name,
            "--ipam-driver",
            driver.name,
            "--subnet",
            str(next(ipaddress.ip_network(routed).subnets())),
            "o-" + uuid.uuid4().hex[:6],
            check=False,
        )
        assert result.returncode != 0
        assert f"overlaps host routes: {routed}" in result.stderr
    finally:
        subprocess.run(["ip", "route", "del", "unreachable", routed], check=True)


def test_network_inspect_shows_the_pools(docker, driver, net):
    data = json.loads(docker.out("network", "inspect", net))[0]
    subnets = [ipaddress.ip_network(c["Subnet"]) for c in data["IPAM"]["Config"]]
    assert sorted(s.prefixlen for s in subnets) == [22, 118]


def test_sockets_are_not_world_accessible(driver):
    plugin_mode = os.stat(driver.plugin_socket).st_mode & 0o777
    api_mode = os.stat(driver.settings["api_socket"]).st_mode & 0o777
    assert plugin_mode & 0o007 == 0 and plugin_mode <= 0o660
    assert api_mode == 0o600


def test_endpoints_get_identities_and_compile_nothing_new(driver, docker, net):
    names = [docker.container(net) for _ in range(3)]
    endpoints = driver.api("/v1/endpoints")
    assert {e["container_name"] for e in endpoints} == set(names)
    assert all(e["state"] == "ready" and e["identity"] >= 256 for e in endpoints)
    built = driver.api("/v1/status")["datapath"]
    assert built["compile_count"] + built["reuse_count"] == 1

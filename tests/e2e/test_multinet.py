"""Containers on several networks: cilium networks of both create forms and Docker's bridge,
connected and disconnected in any order while the container runs; compose services on two
cilium networks; and `docker network inspect` telling two cilium networks apart."""

import ipaddress
import json
import uuid

import pytest

from .docker_cli import LABEL
from .test_compose import Compose
from .test_networks import ping_ok


@pytest.fixture
def three_networks(docker, driver):
    """An IPAM-form and a plain cilium network and a bridge network, a peer on each."""
    suffix = uuid.uuid4().hex[:6]
    names = {
        "ipam": docker.cilium_network(driver.name, prefix="mi-"),
        "plain": docker.network_create("mp-" + suffix, "-d", driver.name),
        "bridge": docker.network_create("mb-" + suffix),
    }
    peers = {kind: docker.container(net) for kind, net in names.items()}
    yield names, peers
    for net in names.values():
        docker.remove_network(net)


def peer_addresses(docker, peer, network):
    """The peer's addresses on network: IPv4 and, on cilium networks, IPv6 (Docker does not
    know the one the driver gives on a plain network, so it is read inside)."""
    data = json.loads(docker.out("inspect", peer))[0]["NetworkSettings"]["Networks"][network]
    found = [data["IPAddress"]]
    inside = docker.exec(peer, "ip", "-6", "-o", "addr", "show", "scope", "global").stdout
    found += [line.split()[3].split("/")[0] for line in inside.splitlines()]
    return found


def interfaces(docker, container):
    lines = docker.exec(container, "ip", "-o", "link").stdout.splitlines()
    return sorted(line.split(":")[1].strip().split("@")[0] for line in lines if "eth" in line)


def assert_reaches(docker, container, names, peers):
    for kind, net in names.items():
        peer = peers[kind]
        for address in peer_addresses(docker, peer, net):
            assert ping_ok(docker, container, address), (kind, address)
        # Docker's DNS, both ways: each side resolves the other's address on this network.
        assert docker.exec(container, "ping", "-c1", "-W2", peer, check=False).returncode == 0
        back = docker.exec(peer, "ping", "-c1", "-W2", container, check=False)
        assert back.returncode == 0, (kind, back.stdout + back.stderr)


@pytest.mark.parametrize("first", ["ipam", "plain", "bridge"])
def test_connect_and_disconnect_across_cilium_and_bridge_networks(
    docker, driver, three_networks, first
):
    names, peers = three_networks
    others = [kind for kind in names if kind != first]
    a = docker.container(names[first])
    for kind in others:
        docker.run("network", "connect", names[kind], a)
    assert interfaces(docker, a) == ["eth0", "eth1", "eth2"]
    assert_reaches(docker, a, names, peers)
    # Every cilium network on the container has its own endpoint (and identity).
    mine = [e for e in driver.api("/v1/endpoints") if e["container_name"] == a]
    assert len(mine) == 2 and len({e["identity"] for e in mine}) == 2

    for kind in others:
        docker.run("network", "disconnect", names[kind], a)
    assert interfaces(docker, a) == ["eth0"]
    routes = docker.exec(a, "ip", "route").stdout + docker.exec(a, "ip", "-6", "route").stdout
    assert "eth1" not in routes and "eth2" not in routes
    cilium_left = 1 if first != "bridge" else 0
    mine = [e for e in driver.api("/v1/endpoints") if e["container_name"] == a]
    assert len(mine) == cilium_left
    assert_reaches(docker, a, {first: names[first]}, peers)

    # The same container connects again, in the other order.
    for kind in reversed(others):
        docker.run("network", "connect", names[kind], a)
    assert_reaches(docker, a, names, peers)


TWO_NETWORKS = """
version: "2.4"
services:
  web:
    image: pycilium/busybox
    command: sh -c 'echo web > /www/index.html && exec httpd -f -p 80 -h /www'
    networks: [front, back]
    labels: [{label}]
  client:
    image: pycilium/busybox
    command: sleep 1d
    networks: [front]
    labels: [{label}]
  db:
    image: pycilium/busybox
    command: sleep 1d
    networks: [back]
    labels: [{label}]
networks:
  front:
    driver: ${{CILIUM_DRIVER}}
  back:
    driver: ${{CILIUM_DRIVER}}
    ipam:
      driver: ${{CILIUM_DRIVER}}
    enable_ipv6: true
"""


def test_compose_service_on_two_cilium_networks(driver, docker, tmp_path):
    (tmp_path / "docker-compose.yml").write_text(TWO_NETWORKS.format(label=LABEL))
    compose = Compose(driver, tmp_path, tmp_path / "docker-compose.yml")
    try:
        compose("up", "-d")
        for side in ("client", "db"):
            fetched = compose.exec(side, "timeout", "2", "wget", "-qO-", "http://web/")
            assert fetched.stdout.strip() == "web", (side, fetched.stderr)
        # client (front only) and db (back only) stay apart.
        assert compose.exec("db", "ping", "-c1", "-W2", "client").returncode != 0
    finally:
        compose("down", check=False)


def test_inspect_tells_two_networks_apart(docker, driver):
    nets = [docker.cilium_network(driver.name, prefix="mn-") for _ in range(2)]
    try:
        configs = [
            json.loads(docker.out("network", "inspect", n))[0]["IPAM"]["Config"] for n in nets
        ]
        subnets = []
        for config in configs:
            assert len(config) == 2
            for entry in config:
                subnet = ipaddress.ip_network(entry["Subnet"])
                assert subnet.prefixlen in (22, 118)
                # Docker 20.10 writes an IPv6 gateway its IPAM chose as a CIDR, whatever the
                # IPAM does: with the subnet's length, as for its own networks, never /128.
                gateway = ipaddress.ip_interface(entry["Gateway"])
                assert gateway.ip == subnet.network_address + 1
                assert gateway.network.prefixlen in (subnet.prefixlen, gateway.max_prefixlen)
                assert "/" not in entry["Gateway"] or subnet.version == 6
                assert not entry["Gateway"].endswith("/128")
                subnets.append(subnet)
        assert len(set(subnets)) == 4
        assert ipaddress.ip_network("0.0.0.0/0") not in subnets
    finally:
        for n in nets:
            docker.remove_network(n)

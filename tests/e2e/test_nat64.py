"""IPv6-only networks (`-o ipv4=false`): containers with no IPv4 route of their own reach
IPv4 servers as 64:ff9b::a.b.c.d, translated to IPv4 in BPF and masqueraded.

The IPv4 server is the world namespace of test_outbound (documentation addresses only).
"""

import ipaddress

import pytest

from . import test_outbound as outbound

# The outbound tests' world and network factory, as fixtures of this module too.
world = outbound.world
network = outbound.network

NAT64_WORLD = str(ipaddress.IPv6Address(f"64:ff9b::{outbound.WORLD4}"))

WORLD_POLICY = """
- endpointSelector: {matchLabels: {app: v6only}}
  labels: [{key: name, value: nat64-policy}]
  egress:
  - toEntities: [world]
"""
HOST_POLICY = """
- endpointSelector: {matchLabels: {app: v6only}}
  labels: [{key: name, value: nat64-policy}]
  egress:
  - toEntities: [host]
"""


def test_an_ipv6_only_container_fetches_from_an_ipv4_server(docker, world, network):
    container = docker.container(network("ipam", "-o", "ipv4=false"))
    assert outbound.fetch(docker, container, NAT64_WORLD) == outbound.PAGE


def test_an_ipv6_only_container_has_no_ipv4_route(docker, world, network):
    """Docker 20.10 still gives it an IPv4 address (its NAT64 side), but no route uses it."""
    container = docker.container(network("ipam", "-o", "ipv4=false"))
    routes = docker.exec(container, "ip", "-4", "route").stdout.strip()
    assert routes == "", routes
    assert outbound.fetch(docker, container, outbound.WORLD4, timeout=2) is None
    routes6 = docker.exec(container, "ip", "-6", "route").stdout
    assert "64:ff9b::/96 via" in routes6 and "8000::/1 via" in routes6, routes6


def test_ping_and_the_plain_form_work_too(docker, world, network):
    """`docker network create -d cilium -o ipv4=false` with Docker's own IPAM: the same."""
    container = docker.container(network("plain", "-o", "ipv4=false"))
    ping = docker.exec(container, "ping", "-c1", "-W2", NAT64_WORLD, check=False)
    assert ping.returncode == 0, ping.stdout
    assert outbound.fetch(docker, container, NAT64_WORLD) == outbound.PAGE


def test_translated_flows_are_world_to_policy(docker, driver, cilium, world, network):
    container = docker.container(network("ipam", "-o", "ipv4=false"), "--label", "app=v6only")
    cilium("policy", "import", "-", stdin=HOST_POLICY)
    line = outbound.first_drop(driver, docker, container, NAT64_WORLD)
    assert "olicy" in line and "-> 2:" in line, line
    cilium("policy", "import", "-", stdin=WORLD_POLICY)
    assert outbound.fetch(docker, container, NAT64_WORLD) == outbound.PAGE


@pytest.mark.parametrize("options", [("--internal",), ("-o", "masquerade=false")])
def test_an_ipv6_only_network_that_cannot_translate_is_refused(docker, driver, options):
    with pytest.raises(AssertionError, match="IPv6-only"):
        docker.cilium_network(driver.name, "-o", "ipv4=false", *options, prefix="o-")

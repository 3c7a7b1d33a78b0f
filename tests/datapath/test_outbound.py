"""Traffic to addresses beyond the host: masqueraded, routed as is, or refused (internal).

"The outside" is built here: a namespace "world" joined to the host by a veth, and behind
it a namespace "far" on a 1280-byte link, with documentation addresses only (203.0.113.0/24,
2001:db8:1::/64, 2001:db8:2::/64; the e2e tests use others). Neither has a route to the
endpoints' ranges, so an answer reaches an endpoint only if its flow was masqueraded.
"""

import os
import subprocess
import sys

import pytest

from datapath import Outbound

from . import traffic
from .conftest import run

TAG = f"{os.getpid() & 0xFFFF:04x}"
WORLD, FAR = f"dpw-{TAG}-world", f"dpw-{TAG}-far"
HOST_LINK = f"dpw{TAG}"  # not the endpoints' prefix: the masquerade rule spares those
# (host side, world side) of the host-world link; (world side, far side) of world-far.
HOST_WORLD = {4: ("203.0.113.1", "203.0.113.2", 25), 6: ("2001:db8:1::1", "2001:db8:1::2", 64)}
WORLD_FAR = {4: ("203.0.113.129", "203.0.113.130", 25), 6: ("2001:db8:2::1", "2001:db8:2::2", 64)}
BEHIND_WORLD = {4: "203.0.113.128/25", 6: "2001:db8:2::/64"}
FAR_MTU = 1280
PORT = 8080


def _link(a: str, a_ns: str | None, b: str, b_ns: str, mtu: int = 1500) -> None:
    """A veth from a (in a_ns, or the host's) to b (in b_ns). Made under temporary names:
    the host has an eth0 of its own."""
    temporary = {a: a if a_ns is None else f"dpw{TAG}a", b: f"dpw{TAG}b"}
    made = ["ip", "link", "add", temporary[a], "mtu", str(mtu), "type", "veth"]
    run(*made, "peer", "name", temporary[b], "mtu", str(mtu))
    for ns, name in ((a_ns, a), (b_ns, b)):
        prefix = ["ip", "-n", ns] if ns else ["ip"]
        if ns:
            run("ip", "link", "set", temporary[name], "netns", ns)
            run(*prefix, "link", "set", temporary[name], "name", name)
        run(*prefix, "link", "set", name, "up")


def _address(ns: str | None, dev: str, addresses: dict, side: int) -> None:
    prefix = ["ip", "-n", ns] if ns else ["ip"]
    for version, values in addresses.items():
        extra = ["nodad"] if version == 6 else []
        address = f"{values[side]}/{values[2]}"
        run(*prefix, f"-{version}", "addr", "add", address, "dev", dev, *extra)


@pytest.fixture(scope="module")
def world(datapath):
    """world (a router) and far behind it; the host routes exactly their addresses."""
    for ns in (WORLD, FAR):
        run("ip", "netns", "add", ns)
    try:
        _link(HOST_LINK, None, "eth0", WORLD)
        _link("eth1", WORLD, "eth0", FAR, mtu=FAR_MTU)
        _address(None, HOST_LINK, HOST_WORLD, 0)
        _address(WORLD, "eth0", HOST_WORLD, 1)
        _address(WORLD, "eth1", WORLD_FAR, 0)
        _address(FAR, "eth0", WORLD_FAR, 1)
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            run("ip", "netns", "exec", WORLD, "sysctl", "-qw", key)
        for version in (4, 6):
            host, world_side, _ = HOST_WORLD[version]
            run("ip", f"-{version}", "route", "add", BEHIND_WORLD[version], "via", world_side)
            # far answers the host's address on the world link, nothing else.
            back = f"{host}/{32 if version == 4 else 128}"
            run("ip", "-n", FAR, f"-{version}", "route", "add", back, "via", WORLD_FAR[version][0])
        yield
    finally:
        for version in (4, 6):
            run("ip", f"-{version}", "route", "del", BEHIND_WORLD[version], check=False)
        run("ip", "link", "del", HOST_LINK, check=False)
        for ns in (WORLD, FAR):
            run("ip", "netns", "del", ns, check=False)


@pytest.fixture(scope="module")
def world_server(world):
    """A named TCP and UDP server in world; it answers with the client address it saw."""
    servers = [traffic.serve_named(WORLD, PORT, proto, "world") for proto in ("tcp", "udp")]
    yield
    for server in servers:
        traffic.stop(server)


def _drops(datapath, reason: str) -> int:
    return datapath.drop_counts()[reason]


@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("version", [4, 6])
def test_masqueraded_flow_is_answered(make_container, world_server, version, proto):
    a = make_container()
    host_address, world_address, _ = HOST_WORLD[version]
    answers = traffic.ask(a.netns, world_address, PORT, proto, count=2)
    # world saw the host's address, and the container got the answers from world's.
    assert answers == [("world", host_address, world_address)] * 2


@pytest.mark.parametrize("version", [4, 6])
def test_routed_flow_gets_no_answer(make_container, world_server, version):
    """masquerade=false: the packet leaves with the container's address, which world cannot
    route back (a network that routes the node ranges would)."""
    a = make_container(outbound=Outbound.ROUTED)
    assert traffic.ask(a.netns, HOST_WORLD[version][1], PORT, "tcp", count=1) == [None]


@pytest.mark.parametrize("version", [4, 6])
def test_internal_endpoint_reaches_nothing_beyond_the_host(
    datapath, make_container, world_server, event_log, version
):
    a = make_container(outbound=Outbound.INTERNAL)
    b = make_container()
    before = _drops(datapath, "DROP_INTERNAL_NETWORK")
    assert traffic.ask(a.netns, HOST_WORLD[version][1], PORT, "tcp", count=1) == [None]
    assert _drops(datapath, "DROP_INTERNAL_NETWORK") > before
    assert event_log.wait_for(reason_name="DROP_INTERNAL_NETWORK", endpoint_id=a.spec.endpoint_id)
    # Local endpoints stay within reach, both ways.
    assert a.ping(b.addr(version))
    assert b.ping(a.addr(version))


def test_multicast_is_no_internal_drop(datapath, make_container):
    """MLD reports and the like never leave the host: no drop to report for them."""
    a = make_container(outbound=Outbound.INTERNAL)
    before = _drops(datapath, "DROP_INTERNAL_NETWORK")
    a.exec("ping", "-6", "-c", "1", "-W", "1", "-I", "eth0", "ff02::16", check=False)
    a.exec("ping", "-c", "1", "-W", "1", "224.0.0.251", check=False)
    assert _drops(datapath, "DROP_INTERNAL_NETWORK") == before


@pytest.mark.parametrize("version", [4, 6])
def test_port_unreachable_comes_back_to_the_container(make_container, world, version):
    a = make_container()
    probe = [sys.executable, "-c", traffic.UDP_PROBE, HOST_WORLD[version][1], str(PORT + 1)]
    assert a.exec(*probe).stdout.strip() == "refused"


@pytest.mark.parametrize("version", [4, 6])
def test_packet_too_big_comes_back_to_the_container(make_container, world, version):
    """world routes to far over a 1280-byte link: its "fragmentation needed" / "packet too
    big" about a masqueraded flow reaches the container, which then knows the path MTU."""
    a = make_container()
    far = WORLD_FAR[version][1]
    a.exec("ping", f"-{version}", "-c", "2", "-W", "1", "-M", "do", "-s", "1400", far, check=False)
    route = a.exec("ip", f"-{version}", "route", "get", far).stdout
    assert f"mtu {FAR_MTU}" in route, route
    assert a.ping(far, "-s", "1000")


def test_the_masquerade_rule_is_the_instances(datapath):
    """One rule per family, matching the mark and sparing the instance's own veths."""
    for tool in ("iptables", "ip6tables"):
        rules = subprocess.run(
            [tool, "-w", "5", "-t", "nat", "-S", "POSTROUTING"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        ours = [line for line in rules.splitlines() if "pycilium dpt outbound" in line]
        assert len(ours) == 1, rules
        assert "! -o dpt+" in ours[0] and "0x2000000/0x2000000" in ours[0], ours

"""Real packets between namespaces through the from-container program."""

import subprocess

from datapath import netlink

from .conftest import ROUTER4, ROUTER6


def test_ping6_between_endpoints(make_container):
    a, b = make_container(), make_container()
    assert a.ping(b.spec.ipv6)
    assert b.ping(a.spec.ipv6)


def test_router_neighbour_is_host_veth_mac(make_container):
    a = make_container()
    assert a.ping(ROUTER6)
    assert a.neighbour_mac(ROUTER6) == netlink.link_mac(a.ifindex)


def test_ping4_between_endpoints(make_container):
    a, b = make_container(), make_container()
    assert a.ping(b.spec.ipv4)
    assert b.ping(a.spec.ipv4)


def test_ping_router4_and_arp_resolves_to_host_veth(make_container):
    a = make_container()
    assert a.ping(ROUTER4)
    assert a.neighbour_mac(ROUTER4) == netlink.link_mac(a.ifindex)


def test_arp_for_other_endpoint_resolves_to_host_veth(make_container):
    """Docker's IPAM may hand out a /16: containers then ARP for each other."""
    a, b = make_container(), make_container()
    a.ip("route", "add", f"{b.spec.ipv4}/32", "dev", "eth0")
    assert a.ping(b.spec.ipv4)
    assert a.neighbour_mac(b.spec.ipv4) == netlink.link_mac(a.ifindex)


def test_host_reaches_container_through_stack(make_container):
    a = make_container()
    for addr in (a.spec.ipv6, a.spec.ipv4):
        done = subprocess.run(["ping", "-c", "1", "-W", "2", str(addr)], capture_output=True)
        assert done.returncode == 0, done.stdout


def test_local_delivery_bypasses_the_stack(datapath, make_container):
    a, b = make_container(), make_container()
    # Without host routes to b the stack could only answer "unreachable"; the program
    # redirects straight to b's veth (and b's replies straight to a's).
    netlink.delete_route(f"{b.spec.ipv6}/128")
    netlink.delete_route(f"{b.spec.ipv4}/32")
    before = datapath.trace_counts()["TRACE_TO_LXC"]
    assert a.ping(b.spec.ipv6)
    assert a.ping(b.spec.ipv4)
    assert datapath.trace_counts()["TRACE_TO_LXC"] - before >= 4


def test_drop_counts_name_every_reason(datapath):
    counts = datapath.drop_counts()
    assert "DROP_INVALID_SMAC" in counts
    assert all(isinstance(v, int) and v >= 0 for v in counts.values())

"""A client outside the cluster reaches a published port on host 1 whose container lives
on host 2 (real packets; hosts as in test_tunnel.py, tunnel_hosts.py).

The outside client sits on the underlay with a link to each host (tunnel_hosts.OUTSIDE), so
host 2 could answer it directly: in SNAT mode the reply must still go back through host 1.
"""

import subprocess
import sys

import pytest

from datapath.abi import PROTO_TCP, PROTO_UDP
from datapath.datapath import SERVICE_MODE_DSR, SERVICE_MODE_SNAT
from datapath.netfilter.portmap import PortMapping

from . import traffic
from .tunnel_hosts import (
    OUTSIDE,
    add_outside_client,
    make_hosts,
    remove_hosts,
    remove_outside_client,
)

PUBLISHED = 8080  # host 1's port
PORT = 7000  # the container's
PROTOCOLS = {"tcp": PROTO_TCP, "udp": PROTO_UDP}
# As the control plane tags another node's endpoint (iptables quotes such a comment).
REMOTE_TAG = "remote:b/1"


def _cluster(mode: str, tag: str):
    hosts = make_hosts(2, tag, service_mode=mode)
    outside = None
    try:
        outside = add_outside_client(hosts, tag)
        for host in hosts:
            host.start()
        a, b = hosts
        a.dp.set_remote_node(str(b.underlay), b.prefixes)
        b.dp.set_remote_node(str(a.underlay), a.prefixes)
        yield a, b, outside
    finally:
        if outside is not None:
            remove_outside_client(outside)
        remove_hosts(hosts)


@pytest.fixture(scope="module")
def snat_cluster():
    yield from _cluster(SERVICE_MODE_SNAT, "n")


@pytest.fixture(scope="module")
def dsr_cluster():
    yield from _cluster(SERVICE_MODE_DSR, "d")


def _publish_remote(a, b, identity: int):
    """A named server on host b, published on host a's port PUBLISHED (both protocols), as
    the control plane of a would publish it: on a's node address, a DNAT to the remote
    container."""
    backend = b.endpoint(identity)
    for address in backend.spec.addresses():
        a.dp.ipcache_upsert(str(address), identity, str(b.underlay))
    for proto in PROTOCOLS:
        backend.servers.append(traffic.serve_named(backend.netns, PORT, proto, "far"))
    mappings = [
        PortMapping(number, a.underlay, PUBLISHED, backend.spec.ipv4, PORT)
        for number in PROTOCOLS.values()
    ]
    a.dp.publish_ports(REMOTE_TAG, mappings)
    return backend


def _unpublish(a, b, backend):
    a.dp.unpublish_ports(REMOTE_TAG)
    assert REMOTE_TAG not in a.dp.published_tags()
    for address in backend.spec.addresses():
        a.dp.ipcache_delete(str(address))
    b.remove_endpoints()


# Rules that only count, in host 1's netfilter: what it forwards to the outside client, and
# what the tunnel brings it.
COUNTERS = [
    ("mangle", "POSTROUTING", ["-d", str(OUTSIDE)]),
    ("raw", "PREROUTING", ["-i", "cilium_vxlan"]),
]
COUNTER_TAG = ["-m", "comment", "--comment", "reply-counter"]


def _add_counters(host) -> None:
    for table, chain, match in COUNTERS:
        host.exec("iptables", "-t", table, "-I", chain, *match, *COUNTER_TAG)


def _remove_counters(host) -> None:
    for table, chain, match in COUNTERS:
        host.exec("iptables", "-t", table, "-D", chain, *match, *COUNTER_TAG, check=False)


def _counted(host, table: str, chain: str, _: list[str]) -> int:
    listing = host.exec("iptables", "-t", table, "-L", chain, "-v", "-n", "-x").stdout
    (line,) = [line for line in listing.splitlines() if "reply-counter" in line]
    return int(line.split()[0])


def _snat_packets(host) -> int:
    """Packets that took the SNAT-into-the-tunnel rule (one per connection: NAT rules see
    a connection's first packet)."""
    listing = host.exec("iptables", "-t", "nat", "-L", "POSTROUTING", "-v", "-n", "-x").stdout
    (line,) = [line for line in listing.splitlines() if "services into the tunnel" in line]
    return int(line.split()[0])


def test_snat_the_reply_returns_through_the_first_host(snat_cluster):
    a, b, outside = snat_cluster
    backend = _publish_remote(a, b, 2101)
    _add_counters(a)
    try:
        before = _snat_packets(a)
        for proto in PROTOCOLS:
            answers = traffic.ask(outside, a.underlay, PUBLISHED, proto, 3)
            # The container sees host 1's underlay address; the client gets its answer from
            # the address it asked.
            assert answers == [("far", str(a.underlay), str(a.underlay))] * 3, proto
        assert _snat_packets(a) - before == 6
        # The replies came back through the tunnel and host 1 forwarded them (the counters
        # the DSR test expects to stay at 0 do count them).
        assert all(_counted(a, *counter) >= 6 for counter in COUNTERS)
    finally:
        _remove_counters(a)
        _unpublish(a, b, backend)


def test_snat_rule_is_one_per_node(snat_cluster):
    a, _, _ = snat_cluster
    rules = a.exec("iptables", "-t", "nat", "-S", "POSTROUTING").stdout
    assert "-o cilium_vxlan -m conntrack --ctstate DNAT" in rules
    assert f"--to-source {a.underlay}" in rules
    # enable_tunnel again (a restart) keeps one rule.
    a.dp.enable_tunnel(str(a.underlay))
    rules = a.exec("iptables", "-t", "nat", "-S", "POSTROUTING").stdout
    assert rules.count("services into the tunnel") == 1


def _dnat_packets(host) -> int:
    """Packets that took host's DNAT rules of published ports (netfilter's path)."""
    listing = host.exec("iptables", "-t", "nat", "-S", "PREROUTING").stdout
    (chain,) = {line.split()[-1] for line in listing.splitlines() if "-PORTS" in line}
    rules = host.exec("iptables", "-t", "nat", "-L", chain, "-v", "-n", "-x").stdout
    return sum(int(line.split()[0]) for line in rules.splitlines() if "DNAT" in line)


def test_dsr_the_reply_comes_straight_from_the_containers_host(dsr_cluster):
    a, b, outside = dsr_cluster
    backend = _publish_remote(a, b, 2201)
    _add_counters(a)
    try:
        for proto in PROTOCOLS:
            answers = traffic.ask(outside, a.underlay, PUBLISHED, proto, 3)
            # The container sees the client itself; the answer comes from the frontend.
            assert answers == [("far", str(OUTSIDE), str(a.underlay))] * 3, proto
        # Host 1 forwarded nothing to the client and the tunnel brought it nothing: no
        # reply went through it. Its netfilter DNAT never saw the flows either.
        assert [_counted(a, *counter) for counter in COUNTERS] == [0, 0]
        assert _dnat_packets(a) == 0
        flows = b.dp.dsr_flows()
        assert {(flow[2], flow[3], flow[4]) for flow, _ in flows} == {
            (backend.spec.ipv4, PORT, number) for number in PROTOCOLS.values()
        }
        assert {frontend for _, frontend in flows} == {(a.underlay, PUBLISHED)}
        assert {flow[0] for flow, _ in flows} == {OUTSIDE}
    finally:
        _remove_counters(a)
        _unpublish(a, b, backend)


# A UDP client that puts the DSR option (type 0x9a: port, address) on its datagram, as a
# process with CAP_NET_RAW may, and prints the answer's source.
FORGING_CLIENT = r"""
import socket, sys
addr, port, fake = sys.argv[1], int(sys.argv[2]), socket.inet_aton(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([0x9A, 8, 0x1F, 0x90]) + fake)
s.settimeout(2)
s.sendto(b"forged", (addr, port))
print(s.recvfrom(4096)[1][0])
"""


def test_dsr_a_containers_own_option_plants_no_dsr_state(dsr_cluster):
    """Only from_netdev's packets (world) may carry a frontend: a container on host 1
    that adds the option itself reaches host 2's container as any container does, and
    its answer comes from that container, not from the frontend it named."""
    a, b, _ = dsr_cluster
    near, far = a.endpoint(2207), b.endpoint(2208)
    far.servers.append(traffic.serve_named(far.netns, PORT, "udp", "far"))
    a.dp.ipcache_upsert(str(far.spec.ipv4), 2208, str(b.underlay))
    b.dp.ipcache_upsert(str(near.spec.ipv4), 2207, str(a.underlay))
    try:
        cmd = traffic.netns_cmd(
            near.netns,
            sys.executable,
            "-c",
            FORGING_CLIENT,
            str(far.spec.ipv4),
            str(PORT),
            "203.0.113.9",
        )
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert done.stdout.strip() == str(far.spec.ipv4), done.stderr
        assert not [flow for flow, _ in b.dp.dsr_flows() if flow[0] == near.spec.ipv4]
    finally:
        a.dp.ipcache_delete(str(far.spec.ipv4))
        b.dp.ipcache_delete(str(near.spec.ipv4))
        a.remove_endpoints()
        b.remove_endpoints()


def test_dsr_a_published_port_of_a_local_container_stays_netfilters(dsr_cluster):
    a, _, outside = dsr_cluster
    local = a.endpoint(2202)
    local.servers.append(traffic.serve_named(local.netns, PORT, "tcp", "near"))
    a.dp.publish_ports(
        "local-backend", [PortMapping(PROTO_TCP, None, PUBLISHED, local.spec.ipv4, PORT)]
    )
    try:
        before = _dnat_packets(a)
        assert (
            traffic.ask(outside, a.underlay, PUBLISHED, "tcp", 2)
            == [("near", str(OUTSIDE), str(a.underlay))] * 2
        )
        assert _dnat_packets(a) - before == 2
    finally:
        a.dp.unpublish_ports("local-backend")
        a.remove_endpoints()


def test_dsr_the_hosts_own_and_its_containers_connections_are_snated(dsr_cluster):
    """Those reach the published port through netfilter, not from_netdev: the SNAT rule
    brings their replies back to host 1's conntrack in DSR mode too."""
    a, b, _ = dsr_cluster
    backend = _publish_remote(a, b, 2203)
    near = a.endpoint(2204)
    try:
        before = _snat_packets(a)
        for netns in (a.netns, near.netns):
            answers = traffic.ask(netns, a.underlay, PUBLISHED, "tcp", 2)
            assert answers == [("far", str(a.underlay), str(a.underlay))] * 2, netns
        assert _snat_packets(a) - before == 4
        assert not [flow for flow, _ in b.dp.dsr_flows() if flow[2] == backend.spec.ipv4]
    finally:
        a.remove_endpoints()
        _unpublish(a, b, backend)

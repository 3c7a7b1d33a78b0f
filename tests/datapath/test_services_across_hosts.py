"""A client outside the cluster reaches a published port on host 1 whose container lives
on host 2 (real packets; hosts as in test_tunnel.py, tunnel_hosts.py).

The outside client sits on the underlay with a link to each host (tunnel_hosts.OUTSIDE), so
host 2 could answer it directly: in SNAT mode the reply must still go back through host 1.
"""

import pytest

from datapath.abi import PROTO_TCP, PROTO_UDP
from datapath.datapath import SERVICE_MODE_SNAT
from datapath.netfilter.portmap import PortMapping

from . import traffic
from .tunnel_hosts import (
    add_outside_client,
    make_hosts,
    remove_hosts,
    remove_outside_client,
)

PUBLISHED = 8080  # host 1's port
PORT = 7000  # the container's
PROTOCOLS = {"tcp": PROTO_TCP, "udp": PROTO_UDP}


def _cluster(mode: str, tag: str):
    hosts = make_hosts(2, tag, service_mode=mode)
    outside = None
    try:
        for host in hosts:
            host.start()
        a, b = hosts
        a.dp.set_remote_node(str(b.underlay), b.prefixes)
        b.dp.set_remote_node(str(a.underlay), a.prefixes)
        outside = add_outside_client(hosts, tag)
        yield a, b, outside
    finally:
        if outside is not None:
            remove_outside_client(outside)
        remove_hosts(hosts)


@pytest.fixture(scope="module")
def snat_cluster():
    yield from _cluster(SERVICE_MODE_SNAT, "n")


def _publish_remote(a, b, identity: int):
    """A named server on host b, published on host a's port PUBLISHED (both protocols), as
    the control plane of a would publish it: a DNAT to the remote container."""
    backend = b.endpoint(identity)
    for address in backend.spec.addresses():
        a.dp.ipcache_upsert(str(address), identity, str(b.underlay))
    for proto in PROTOCOLS:
        backend.servers.append(traffic.serve_named(backend.netns, PORT, proto, "far"))
    mappings = [
        PortMapping(number, None, PUBLISHED, backend.spec.ipv4, PORT)
        for number in PROTOCOLS.values()
    ]
    a.dp.publish_ports("remote-backend", mappings)
    return backend


def _unpublish(a, b, backend):
    a.dp.unpublish_ports("remote-backend")
    for address in backend.spec.addresses():
        a.dp.ipcache_delete(str(address))
    b.remove_endpoints()


def _snat_packets(host) -> int:
    """Packets that took the SNAT-into-the-tunnel rule (one per connection: NAT rules see
    a connection's first packet)."""
    listing = host.exec("iptables", "-t", "nat", "-L", "POSTROUTING", "-v", "-n", "-x").stdout
    (line,) = [line for line in listing.splitlines() if "services into the tunnel" in line]
    return int(line.split()[0])


def test_snat_the_reply_returns_through_the_first_host(snat_cluster):
    a, b, outside = snat_cluster
    backend = _publish_remote(a, b, 2101)
    try:
        before = _snat_packets(a)
        for proto in PROTOCOLS:
            answers = traffic.ask(outside, a.underlay, PUBLISHED, proto, 3)
            # The container sees host 1's underlay address; the client gets its answer from
            # the address it asked.
            assert answers == [("far", str(a.underlay), str(a.underlay))] * 3, proto
        assert _snat_packets(a) - before == 6
    finally:
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

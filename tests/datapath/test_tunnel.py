"""Real packets between two simulated hosts through the VXLAN tunnel (lib/tunnel.h).

Each host is a network namespace with its own Datapath (tunnel_hosts.py); the hosts share
a veth underlay in 198.51.100.0/24. Every endpoint is published in the other host's
ipcache, as the control plane does from etcd.
"""

import functools
import ipaddress
import json
import socket
import sys
import time

import pytest

from datapath.abi import (
    CT_F_SEEN_REPLY,
    EGRESS,
    HOST_ID,
    INGRESS,
    PROTO_TCP,
    WORLD_ID,
    PolicyKey,
)
from datapath.service import Backend, Frontend
from datapath.uninstall import remove_from_host

from . import packets, traffic
from .conftest import NET4
from .tunnel_hosts import (
    CLUSTER4,
    CLUSTER6,
    UNDERLAY,
    call_in_netns,
    make_hosts,
    remove_hosts,
)

TUNNEL = "cilium_vxlan"


@pytest.fixture(scope="module")
def cluster():
    hosts = make_hosts(2, "t")
    try:
        for host in hosts:
            host.start()
        a, b = hosts
        a.dp.set_remote_node(str(b.underlay), b.prefixes)
        b.dp.set_remote_node(str(a.underlay), a.prefixes)
        yield a, b
    finally:
        remove_hosts(hosts)


@pytest.fixture
def make(cluster):
    """Factory: an endpoint on a host, published in the other host's ipcache (as
    `advertised` if given: the identity the other host believes the address has)."""
    made = []

    def make_endpoint(host, identity: int, advertised: int | None = None):
        container = host.endpoint(identity)
        for other in cluster:
            if other is not host:
                for address in container.spec.addresses():
                    other.dp.ipcache_upsert(
                        str(address), advertised or identity, str(host.underlay)
                    )
                made.append((other, container))
        return container

    yield make_endpoint
    for other, container in made:
        for address in container.spec.addresses():
            other.dp.ipcache_delete(str(address))
    for host in cluster:
        host.remove_endpoints()


def _drops(host, reason: str) -> int:
    return host.dp.drop_counts()[reason]


def _overlay_traces(host) -> int:
    return host.dp.trace_counts()["TRACE_TO_OVERLAY"]


def test_the_ipcache_lists_what_was_put_in(cluster, make):
    a, b = cluster
    remote = make(b, 2001)
    entries = a.dp.ipcache_entries()
    assert entries == {str(ip): (2001, str(b.underlay)) for ip in remote.spec.addresses()}


def test_endpoints_reach_each_other_across_hosts(cluster, make):
    a, b = cluster
    near, far = make(a, 1002), make(b, 2002)
    before = _overlay_traces(a), _overlay_traces(b)
    for version in (6, 4):
        assert near.ping(far.addr(version))
        assert far.ping(near.addr(version))
    far.serve(7000)
    for version in (6, 4):
        assert near.exchange(far.addr(version), 7000)
    assert _overlay_traces(a) - before[0] >= 6  # every packet from a's endpoint went in
    assert _overlay_traces(b) - before[1] >= 6


def test_receiving_host_enforces_ingress_policy_on_the_identity_in_the_vni(cluster, make):
    a, b = cluster
    allowed = make(a, 1003)
    # b believes the denied client's addresses have the allowed identity: only the VNI,
    # which carries the sender's real identity, tells the two apart.
    denied = make(a, 1004, advertised=1003)
    target = make(b, 2003)
    b.dp.set_endpoint_policy(target.spec, True, False, [PolicyKey(1003, 0, 0, INGRESS)])
    target.serve(7000)
    before = _drops(b, "DROP_POLICY")
    for version in (6, 4):
        assert allowed.ping(target.addr(version))
        assert allowed.exchange(target.addr(version), 7000)
        assert not denied.ping(target.addr(version), timeout=1)
        assert not denied.exchange(target.addr(version), 7000, timeout=1)
    assert _drops(b, "DROP_POLICY") - before >= 4
    dropped = [
        event
        for event in b.dp.events()
        if event.reason_name == "DROP_POLICY"
        and event.endpoint_id == target.spec.endpoint_id
        and (event.src in a.range6 or event.src in a.range4)  # b's own (MLD...) aside
    ]
    assert {event.src for event in dropped} == set(denied.spec.addresses())
    assert {(event.src_identity, event.dst_identity) for event in dropped} == {(1004, 2003)}
    assert {event.direction for event in dropped} == {INGRESS}


def test_replies_across_hosts_pass_conntrack(cluster, make):
    a, b = cluster
    client, server = make(a, 1005), make(b, 2005)
    # Both directions enforced on both ends, only client -> server:7000 allowed: the
    # replies pass by conntrack alone, on the client's host after from_overlay.
    a.dp.set_endpoint_policy(client.spec, True, True, [PolicyKey(2005, 7000, PROTO_TCP, EGRESS)])
    b.dp.set_endpoint_policy(server.spec, True, True, [PolicyKey(1005, 7000, PROTO_TCP, INGRESS)])
    server.serve(7000)
    client.serve(7001)
    for version in (6, 4):
        assert client.exchange(server.addr(version), 7000)
        assert not server.exchange(client.addr(version), 7001, timeout=1)
    on_a = {
        (e.src, e.dst, e.dport)
        for e in a.dp.ct_entries()
        if e.endpoint_id == client.spec.endpoint_id
        and e.direction == EGRESS
        and e.flags & CT_F_SEEN_REPLY
    }
    on_b = {
        (e.src, e.dst, e.dport)
        for e in b.dp.ct_entries()
        if e.endpoint_id == server.spec.endpoint_id
        and e.direction == INGRESS
        and e.flags & CT_F_SEEN_REPLY
    }
    expected = {(client.addr(v), server.addr(v), 7000) for v in (6, 4)}
    assert on_a == expected
    assert on_b == expected


def test_a_service_on_one_host_balances_to_a_backend_on_another(cluster, make):
    a, b = cluster
    client, backend = make(a, 1006), make(b, 2006)
    backend.serve(8080)
    frontends = {
        6: Frontend(ipaddress.IPv6Address("fdce:1c9a:ffff::10"), 80, PROTO_TCP),
        4: Frontend(ipaddress.IPv4Address("10.198.255.10"), 80, PROTO_TCP),
    }
    try:
        for service_id, (version, frontend) in enumerate(frontends.items(), start=60):
            a.dp.set_service(service_id, frontend, [Backend(backend.addr(version), 8080)])
        for frontend in frontends.values():
            assert frontend.address in CLUSTER6 or frontend.address in CLUSTER4
            assert client.exchange(frontend.address, 80)
    finally:
        for service_id, frontend in enumerate(frontends.values(), start=60):
            a.dp.delete_service(service_id, frontend)


def test_the_host_reaches_an_endpoint_of_another_host(cluster, make):
    """to_overlay keys what the host stack routes into the tunnel; the reply comes back
    through the tunnel too (the host's address is in the other host's ipcache)."""
    a, b = cluster
    remote = make(b, 2007)
    remote.serve(7000)
    before = _overlay_traces(a), _overlay_traces(b)
    done = a.exec("ping", "-c", "1", "-W", "2", str(remote.spec.ipv4), check=False)
    assert done.returncode == 0, done.stdout
    assert traffic.exchange(a.netns, remote.spec.ipv4, 7000)
    assert _overlay_traces(a) - before[0] >= 3
    assert _overlay_traces(b) - before[1] >= 3
    # Another host's packets are the world's on b ("host" is b itself).
    b.dp.set_endpoint_policy(remote.spec, True, False, [PolicyKey(HOST_ID, 0, 0, INGRESS)])
    assert not traffic.exchange(a.netns, remote.spec.ipv4, 7000, timeout=1)
    b.dp.set_endpoint_policy(remote.spec, True, False, [PolicyKey(WORLD_ID, 0, 0, INGRESS)])
    assert traffic.exchange(a.netns, remote.spec.ipv4, 7000)


def _mtu(container) -> int:
    return json.loads(container.ip("-j", "link", "show", "eth0").stdout)[0]["mtu"]


def test_endpoints_get_the_tunnel_mtu_and_full_packets_cross(cluster, make):
    a, b = cluster
    near, far = make(a, 1008), make(b, 2008)
    assert _mtu(near) == _mtu(far) == 1500 - 50  # the underlay veth's, less VXLAN's
    # The largest packets the endpoint may send, unfragmented, cross whole.
    assert near.ping(far.spec.ipv4, "-M", "do", "-s", str(1450 - 28))
    assert near.ping(far.spec.ipv6, "-M", "do", "-s", str(1450 - 48))
    assert not near.ping(far.spec.ipv4, "-M", "do", "-s", str(1450 - 27), timeout=1)


def _routes(host, family: str, prefix) -> str:
    return host.ip(family, "route", "show", str(prefix)).stdout


def test_remote_node_routes_come_and_go(cluster, make):
    a, b = cluster
    remote = make(b, 2009)
    assert f"dev {TUNNEL}" in _routes(a, "-6", b.range6)
    assert f"dev {TUNNEL}" in _routes(a, "-4", b.range4)
    a.dp.remove_remote_node(str(b.underlay), b.prefixes)
    try:
        assert _routes(a, "-6", b.range6) == _routes(a, "-4", b.range4) == ""
        assert "unreachable" in _routes(a, "-4", CLUSTER4)
        # The host's packets meet the cluster range's unreachable route now.
        done = a.exec("ping", "-c", "1", "-W", "1", str(remote.spec.ipv4), check=False)
        assert done.returncode != 0
    finally:
        a.dp.set_remote_node(str(b.underlay), b.prefixes)
    done = a.exec("ping", "-c", "1", "-W", "2", str(remote.spec.ipv4), check=False)
    assert done.returncode == 0


def test_enable_tunnel_is_idempotent(cluster):
    a, _ = cluster
    index = a.ip("-j", "link", "show", TUNNEL).stdout
    assert a.dp.enable_tunnel(str(a.underlay)) == TUNNEL
    assert a.ip("-j", "link", "show", TUNNEL).stdout == index
    details = json.loads(a.ip("-d", "-j", "link", "show", TUNNEL).stdout)[0]
    data = details["linkinfo"]["info_data"]
    assert (data["external"], data["port"], data["local"]) == (True, 8472, str(a.underlay))
    assert "NOARP" in details["flags"]
    assert details["mtu"] == 1450


def test_uninstall_removes_the_tunnel_and_its_routes():
    (host, other) = make_hosts(2, "u")
    try:
        host.start()
        host.dp.set_remote_node(str(other.underlay), other.prefixes)
        host.dp.stop()
        host.dp = None
        ranges = [str(CLUSTER6), str(CLUSTER4)]
        removed = call_in_netns(host.netns, remove_from_host, host.pin_dir, host.prefix, ranges)
        assert f"link {TUNNEL}" in removed
        assert f"from_netdev on u{other.name}" in removed  # on the underlay device
        assert (
            "bpf"
            not in host.exec("tc", "filter", "show", "dev", f"u{other.name}", "ingress").stdout
        )
        assert host.ip("link", "show", TUNNEL, check=False).returncode != 0
        assert _routes(host, "-6", other.range6) == _routes(host, "-4", other.range4) == ""
        assert call_in_netns(host.netns, remove_from_host, host.pin_dir, host.prefix, ranges) == []
    finally:
        remove_hosts([host, other])


# Sends size bytes to an echo server while a thread reads the echo (a client that read only
# after sending would deadlock with the server once both socket buffers are full).
BULK_CLIENT = r"""
import socket, sys, threading
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((host, port), timeout=10)
payload = bytes(range(256)) * (size // 256)
got = bytearray()

def read():
    while len(got) < len(payload) and (data := s.recv(65536)):
        got.extend(data)

reader = threading.Thread(target=read)
reader.start()
s.sendall(payload)
reader.join()
sys.exit(0 if got == payload else 1)
"""


def test_bulk_tcp_crosses_in_segments_larger_than_the_mtu(cluster, make):
    """Segmentation offload (a container sends 64 KiB segments) survives the redirect
    into the tunnel: megabytes arrive whole both ways."""
    a, b = cluster
    near, far = make(a, 1010), make(b, 2010)
    far.serve(7000)
    for version in (6, 4):
        address = str(far.addr(version))
        done = near.exec(sys.executable, "-c", BULK_CLIENT, address, "7000", "4194304", check=False)
        assert done.returncode == 0, done.stderr


def _tunnel_rx(host) -> int:
    """Packets the host's VXLAN device decapsulated."""
    (link,) = json.loads(host.ip("-s", "-j", "link", "show", TUNNEL).stdout)
    return link["stats64"]["rx"]["packets"]


def test_the_underlay_device_decapsulates_bulk_tcp_past_the_vxlan_device(cluster, make):
    """from_netdev strips the other node's GSO packets of TCP for a local endpoint
    (vxlan_decap) and delivers them as from_overlay does, on the identity in the VNI; the
    VXLAN device decapsulates the rest (pings, handshakes, single segments), as before.
    Ingress policy holds on the identity in the VNI."""
    a, b = cluster
    allowed = make(a, 1020)
    denied = make(a, 1021, advertised=1020)  # only the VNI tells it from the allowed one
    target = make(b, 2020)
    b.dp.set_endpoint_policy(target.spec, True, False, [PolicyKey(1020, 0, 0, INGRESS)])
    target.serve(7000)
    (underlay,) = json.loads(b.ip("-j", "link", "show", f"u{a.name}").stdout)
    (tunnel,) = json.loads(b.ip("-j", "link", "show", TUNNEL).stdout)
    drops = _drops(b, "DROP_POLICY")
    b.dp.set_trace_events(True)
    try:
        for version in (6, 4):
            address = str(target.addr(version))
            assert allowed.ping(target.addr(version))
            done = allowed.exec(
                sys.executable, "-c", BULK_CLIENT, address, "7000", "4194304", check=False
            )
            assert done.returncode == 0, done.stderr
            assert not denied.exchange(target.addr(version), 7000, timeout=1)
    finally:
        b.dp.set_trace_events(False)
    assert _drops(b, "DROP_POLICY") - drops >= 2
    events = [e for e in b.dp.events() if e.endpoint_id == target.spec.endpoint_id]
    delivered = {
        (e.ifindex, e.src_identity)
        for e in events
        if e.reason_name == "TRACE_TO_LXC" and e.src in allowed.spec.addresses()
    }
    assert delivered == {(underlay["ifindex"], 1020), (tunnel["ifindex"], 1020)}
    dropped = {
        (e.src, e.src_identity)
        for e in events
        if e.reason_name == "DROP_POLICY" and e.src in denied.spec.addresses()
    }
    assert dropped == {(address, 1021) for address in denied.spec.addresses()}


def test_what_the_underlay_does_not_decapsulate_goes_to_the_vxlan_device(cluster, make):
    """A datagram the underlay does not take (a single packet, not GSO, and with an outer
    UDP checksum, which nodes do not send) goes on to the device, whose from_overlay
    delivers it."""
    a, b = cluster
    target = make(b, 2021)

    def delivered() -> int:
        return b.dp.trace_counts()["TRACE_TO_CONTAINER"]

    before = _tunnel_rx(b), delivered()
    call_in_netns(
        a.netns, _send_vxlan, str(b.underlay), 1099, _inner(a.range6[99], target.spec.ipv6)
    )
    assert _grows(delivered, before[1])
    assert _tunnel_rx(b) == before[0] + 1


def test_a_node_address_is_ipv4(cluster):
    a, _ = cluster
    with pytest.raises(RuntimeError, match="underlay address is IPv4"):
        a.dp.ipcache_upsert("fdce:1c9a:2::99", 2000, "2001:db8::2")
    with pytest.raises(RuntimeError, match="underlay address is IPv4"):
        a.dp.enable_tunnel("2001:db8::1")
    assert "fdce:1c9a:2::99" not in a.dp.ipcache_entries()


def test_neighbours_on_another_host_resolve_to_the_host_veth(cluster, make):
    """Docker gives a container its network's prefix on-link: it asks ARP and NDisc for
    endpoints on other hosts too, and the datapath answers for them as for local ones."""
    a, b = cluster
    near, far = make(a, 1011), make(b, 2011)
    near.ip("-6", "route", "add", str(b.range6), "dev", "eth0")
    near.ip("route", "add", str(b.range4), "dev", "eth0")
    (link,) = json.loads(a.ip("-j", "link", "show", near.spec.host_ifname).stdout)
    for version in (6, 4):
        assert near.ping(far.addr(version))
        assert near.neighbour_mac(far.addr(version)) == link["address"]


def test_an_endpoint_reaches_another_host_itself_through_the_tunnel(cluster, make):
    a, b = cluster
    near = make(a, 1012)
    before = _overlay_traces(a), _overlay_traces(b)
    assert near.ping(b.underlay)
    assert _overlay_traces(a) - before[0] >= 1  # the request, not masqueraded out of a
    assert _overlay_traces(b) - before[1] >= 1  # the reply, keyed by to_overlay


def _send_vxlan(node: str, vni: int, frame: bytes, source: str = "") -> None:
    """One VXLAN datagram (flags: VNI present) carrying frame, to node's port 8472 (from
    source if given)."""
    header = bytes([0x08, 0, 0, 0]) + vni.to_bytes(3, "big") + b"\0"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.sendto(header + frame, (node, 8472))


def _inner(src, dst) -> bytes:
    """An echo request frame from src to dst (the MACs are the receiver's to rewrite)."""
    if ipaddress.ip_address(src).version == 6:
        l3 = packets.ipv6(src, dst, packets.icmp(128), packets.ICMPV6)
        ethertype = packets.ETH_P_IPV6
    else:
        l3 = packets.ipv4(src, dst, packets.icmp(8), packets.ICMP)
        ethertype = packets.ETH_P_IP
    frame = packets.eth("02:00:00:00:00:01", "02:00:00:00:00:02", ethertype) + l3
    return packets.with_checksums(frame)


def _grows(read, before: int) -> bool:
    """Whether read() exceeds before within 3 s."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if read() > before:
            return True
        time.sleep(0.05)
    return False


def test_the_receiving_host_drops_what_no_endpoint_of_another_host_could_send(cluster, make):
    """A tunnel packet with a local endpoint's address as its source is forged (it is not
    the other host's to send); one for neither a local endpoint nor the host goes nowhere."""
    a, b = cluster
    target, local = make(b, 2015), make(b, 2016)
    cases = [
        ("DROP_FORGED_SOURCE", local.spec.ipv6, target.spec.ipv6),
        ("DROP_FORGED_SOURCE", local.spec.ipv4, target.spec.ipv4),
        ("DROP_TUNNEL_DESTINATION", a.range6[99], b.range6[250]),
        ("DROP_TUNNEL_DESTINATION", a.range4[99], b.range4[250]),
    ]
    for reason, src, dst in cases:
        before = _drops(b, reason)
        call_in_netns(a.netns, _send_vxlan, str(b.underlay), 2016, _inner(src, dst))
        assert _grows(functools.partial(_drops, b, reason), before), (reason, src, dst)

    # The same datagram with a real remote source is delivered: the drops above are not
    # the kernel's VXLAN receive refusing hand-made datagrams.
    def delivered() -> int:
        return b.dp.trace_counts()["TRACE_TO_CONTAINER"]

    before = delivered()
    frame = _inner(a.range6[99], target.spec.ipv6)
    call_in_netns(a.netns, _send_vxlan, str(b.underlay), 1099, frame)
    assert _grows(delivered, before)


def test_a_vni_counts_only_when_a_node_of_the_cluster_sent_it(cluster, make):
    """The receiver's policy trusts the VNI as the sender's identity: a datagram from an
    underlay address that is no node's is dropped before any endpoint sees it; the same
    datagram from the other node is delivered."""
    a, b = cluster
    target = make(b, 2017)
    stranger = str(UNDERLAY[150])
    a.ip("addr", "add", f"{stranger}/32", "dev", f"u{b.name}")
    b.ip("route", "add", f"{stranger}/32", "dev", f"u{a.name}")

    def delivered() -> int:
        return b.dp.trace_counts()["TRACE_TO_CONTAINER"]

    try:
        frame = _inner(a.range6[99], target.spec.ipv6)
        before = _drops(b, "DROP_TUNNEL_UNKNOWN_SENDER"), delivered()
        call_in_netns(a.netns, _send_vxlan, str(b.underlay), 1099, frame, stranger)
        assert _grows(functools.partial(_drops, b, "DROP_TUNNEL_UNKNOWN_SENDER"), before[0])
        assert delivered() == before[1]
        # What the stranger sends counts as its, even what would be dropped for itself.
        fragment = bytearray(_inner(a.range4[99], target.spec.ipv4))
        fragment[20] |= 0x20  # more fragments
        unknown = _drops(b, "DROP_TUNNEL_UNKNOWN_SENDER")
        call_in_netns(
            a.netns, _send_vxlan, str(b.underlay), 1099, packets.with_checksums(fragment), stranger
        )
        assert _grows(functools.partial(_drops, b, "DROP_TUNNEL_UNKNOWN_SENDER"), unknown)
        call_in_netns(a.netns, _send_vxlan, str(b.underlay), 1099, frame)
        assert _grows(delivered, before[1])
    finally:
        a.ip("addr", "del", f"{stranger}/32", "dev", f"u{b.name}")
        b.ip("route", "del", f"{stranger}/32", "dev", f"u{a.name}")


def test_the_hosts_packets_for_no_known_endpoint_stop_at_the_tunnel(cluster):
    a, b = cluster
    before = _drops(a, "DROP_TUNNEL_NO_NODE")
    done = a.exec("ping", "-c", "1", "-W", "1", str(b.range4[250]), check=False)
    assert done.returncode != 0
    assert _drops(a, "DROP_TUNNEL_NO_NODE") > before


def test_without_the_tunnel_a_remote_endpoint_is_a_counted_drop(datapath, make_container):
    """The ipcache names a node, but this datapath has no tunnel device (the session's
    datapath of conftest.py, on the host)."""
    container = make_container()
    remote = NET4[0xFA01]
    datapath.ipcache_upsert(str(remote), 5000, "198.51.100.9")
    try:
        before = datapath.drop_counts()["DROP_NO_TUNNEL"]
        assert not container.ping(remote, timeout=1)
        assert datapath.drop_counts()["DROP_NO_TUNNEL"] > before
    finally:
        datapath.ipcache_delete(str(remote))
    assert datapath.ipcache_entries() == {}


def test_flows_across_hosts_outlive_a_killed_datapath_and_its_restart(cluster, make):
    a, b = cluster
    near, far = make(a, 1017), make(b, 2017)
    far.serve(7000)
    sessions = [near.session(far.addr(version), 7000) for version in (6, 4)]
    try:
        a.dp.kill()
        assert all(session.echo("while a's driver is dead") for session in sessions)
        assert near.exchange(far.spec.ipv6, 7000)
        a.start()
        a.dp.restore_endpoint(near.spec)
        assert all(session.echo("after the restart") for session in sessions)
        assert near.exchange(far.spec.ipv4, 7000)
        assert far.ping(near.spec.ipv6)
    finally:
        for session in sessions:
            session.close()


def test_egress_policy_sees_the_ipcache_identity_of_a_remote_destination(cluster, make):
    a, b = cluster
    client, server = make(a, 1018), make(b, 2018)
    server.serve(7000)
    a.dp.set_endpoint_policy(client.spec, False, True, [PolicyKey(2999, 0, 0, EGRESS)])
    before = _drops(a, "DROP_POLICY")
    assert not client.exchange(server.spec.ipv6, 7000, timeout=1)
    assert _drops(a, "DROP_POLICY") > before  # on the sending host, before the tunnel
    # The ipcache now says the server has the allowed identity: new flows go.
    a.dp.ipcache_upsert(str(server.spec.ipv6), 2999, str(b.underlay))
    assert client.exchange(server.spec.ipv6, 7000)

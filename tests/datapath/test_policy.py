"""Identities, L3/L4 policy and conntrack with real packets between namespaces."""

import ipaddress
import random
import sys

import pytest

from datapath import (
    EGRESS,
    HOST_ID,
    INGRESS,
    INIT_ID,
    Datapath,
    DatapathError,
    PolicyKey,
    abi,
    netlink,
)

from .conftest import ROUTER4, ROUTER6, run

ICMP = {6: 58, 4: 1}
# Test-owned addresses put on a host veth: "the host" as seen from the containers.
HOST_ADDR = {6: "fdce:1c99::fffe", 4: "10.199.255.254"}
CIDR_ADDR = {6: "fdce:1c99::ff01", 4: "10.199.255.1"}
CIDR = {6: "fdce:1c99::ff00/121", 4: "10.199.255.0/25"}  # HOST_ADDR is outside


def _drops(datapath, reason: str) -> int:
    return datapath.drop_counts()[reason]


def _host_ping(src: str, dst, timeout: int = 2) -> bool:
    done = run("ping", "-c", "1", "-W", str(timeout), "-I", src, str(dst), check=False)
    return done.returncode == 0


@pytest.fixture
def host_addresses(datapath, make_container):
    """HOST_ADDR and CIDR_ADDR of both families on a spare endpoint's host veth."""
    spare = make_container()
    for version in (6, 4):
        for addr in (HOST_ADDR[version], CIDR_ADDR[version]):
            prefix = 128 if version == 6 else 32
            run("ip", "addr", "add", f"{addr}/{prefix}", "dev", spare.spec.host_ifname, "nodad")
    yield
    datapath.set_cidr_identities({})


def test_waiting_endpoint_only_gets_ndisc_and_arp(datapath, make_container):
    a, b = make_container(INIT_ID), make_container()
    before = _drops(datapath, "DROP_WAITING_FOR_IDENTITY")
    assert not a.ping(ROUTER6, timeout=1)
    assert not a.ping(ROUTER4, timeout=1)
    assert a.neighbour_mac(ROUTER6) == netlink.link_mac(a.ifindex)
    assert a.neighbour_mac(ROUTER4) == netlink.link_mac(a.ifindex)
    assert not b.ping(a.spec.ipv6, timeout=1)
    assert not b.ping(a.spec.ipv4, timeout=1)
    assert _drops(datapath, "DROP_WAITING_FOR_IDENTITY") - before >= 4

    datapath.set_endpoint_identity(a.spec, 5000)
    assert datapath.endpoint_map_entries()[a.ifindex].identity == 5000
    assert a.ping(ROUTER6)
    assert a.ping(ROUTER4)
    assert b.ping(a.spec.ipv6)
    assert a.ping(b.spec.ipv4)

    datapath.set_endpoint_identity(a.spec, INIT_ID)
    assert not a.ping(ROUTER6, timeout=1)


@pytest.mark.parametrize("version", [6, 4])
def test_l3_allow_by_identity(datapath, make_container, event_log, version):
    a, b, c = make_container(), make_container(), make_container()
    allow_a = PolicyKey(a.identity, 0, 0, INGRESS)
    datapath.set_endpoint_policy(b.spec, True, False, {allow_a})
    before = _drops(datapath, "DROP_POLICY")

    assert a.ping(b.addr(version))
    assert not c.ping(b.addr(version), timeout=1)
    assert _drops(datapath, "DROP_POLICY") > before
    packets, size = datapath.policy_entries(b.spec)[allow_a]
    assert packets >= 1 and size > 0
    event = event_log.wait_for(reason_name="DROP_POLICY", src=c.addr(version))
    assert event is not None
    assert (event.kind, event.description) == ("drop", "Policy denied")
    assert (event.src_identity, event.dst_identity) == (c.identity, b.identity)
    assert (event.endpoint_id, event.ifindex, event.direction) == (
        b.spec.endpoint_id,
        b.ifindex,
        INGRESS,
    )
    assert (event.dst, event.protocol) == (b.addr(version), ICMP[version])

    datapath.set_endpoint_policy(b.spec, False, False, set())
    assert c.ping(b.addr(version))


@pytest.mark.parametrize("version", [6, 4])
def test_l4_ingress_port(datapath, make_container, event_log, version):
    a, b = make_container(), make_container()
    b.serve(80)
    b.serve(81)
    datapath.set_endpoint_policy(b.spec, True, False, {PolicyKey(0, 80, 6, INGRESS)})

    assert a.exchange(b.addr(version), 80)
    assert not a.exchange(b.addr(version), 81, timeout=1)
    assert not a.ping(b.addr(version), timeout=1)
    event = event_log.wait_for(reason_name="DROP_POLICY", dport=81, src=a.addr(version))
    assert event is not None and event.protocol == 6
    assert (event.src_identity, event.dst_identity) == (a.identity, b.identity)


def test_udp_port_and_icmp_keys(datapath, make_container):
    a, b = make_container(), make_container()
    b.serve(53, "udp")
    keys = {PolicyKey(a.identity, 53, 17, INGRESS), PolicyKey(a.identity, 0, 58, INGRESS)}
    datapath.set_endpoint_policy(b.spec, True, False, keys)
    assert a.exchange(b.spec.ipv6, 53, "udp")
    assert a.exchange(b.spec.ipv4, 53, "udp")
    assert a.ping(b.spec.ipv6)
    assert not a.ping(b.spec.ipv4, timeout=1)  # ICMP (1) is not ICMPv6 (58)


@pytest.mark.parametrize("version", [6, 4])
def test_stateful_replies_pass_reverse_connections_do_not(datapath, make_container, version):
    a, b = make_container(), make_container()
    a.serve(80)
    b.serve(80)
    datapath.set_endpoint_policy(a.spec, True, False, set())

    assert a.exchange(b.addr(version), 80)
    assert a.ping(b.addr(version))
    assert not b.exchange(a.addr(version), 80, timeout=1)
    assert not b.ping(a.addr(version), timeout=1)


@pytest.mark.parametrize("version", [6, 4])
def test_egress_policy(datapath, make_container, version):
    a, b, c = make_container(), make_container(), make_container()
    b.serve(80)
    b.serve(81)
    c.serve(80)
    datapath.set_endpoint_policy(a.spec, False, True, {PolicyKey(b.identity, 80, 6, EGRESS)})
    before = _drops(datapath, "DROP_POLICY")

    assert a.exchange(b.addr(version), 80)
    assert not a.exchange(b.addr(version), 81, timeout=1)
    assert not a.exchange(c.addr(version), 80, timeout=1)
    assert not a.ping(b.addr(version), timeout=1)
    assert c.exchange(b.addr(version), 81)
    assert _drops(datapath, "DROP_POLICY") - before >= 3


@pytest.mark.parametrize("version", [6, 4])
def test_host_identity(datapath, make_container, host_addresses, version):
    b = make_container()
    host = HOST_ADDR[version]
    datapath.set_cidr_identities({f"{HOST_ADDR[6]}/128": HOST_ID, f"{HOST_ADDR[4]}/32": HOST_ID})
    datapath.set_endpoint_policy(b.spec, True, True, {PolicyKey(HOST_ID, 0, 0, INGRESS)})
    assert _host_ping(host, b.addr(version))
    assert not b.ping(host, timeout=1)  # egress enforced, nothing allowed

    datapath.set_endpoint_policy(b.spec, True, True, {PolicyKey(HOST_ID, 0, 0, EGRESS)})
    assert not _host_ping(host, b.addr(version), timeout=1)
    assert b.ping(host)


@pytest.mark.parametrize("version", [6, 4])
def test_cidr_identity(datapath, make_container, host_addresses, version):
    b = make_container()
    cidr_id = 0x1000001
    datapath.set_cidr_identities({CIDR[6]: cidr_id, CIDR[4]: cidr_id})
    assert datapath.cidr_identities() == {CIDR[6]: cidr_id, CIDR[4]: cidr_id}
    datapath.set_endpoint_policy(b.spec, True, False, {PolicyKey(cidr_id, 0, 0, INGRESS)})
    assert _host_ping(CIDR_ADDR[version], b.addr(version))
    assert not _host_ping(HOST_ADDR[version], b.addr(version), timeout=1)  # outside the CIDR: world

    datapath.set_cidr_identities({})
    assert datapath.cidr_identities() == {}
    assert not _host_ping(CIDR_ADDR[version], b.addr(version), timeout=1)


def test_established_connection_survives_policy_updates(datapath, make_container):
    a, b = make_container(), make_container()
    b.serve(80)
    allow = PolicyKey(a.identity, 80, 6, INGRESS)
    datapath.set_endpoint_policy(b.spec, True, False, {allow})
    session = a.session(b.spec.ipv6, 80)
    try:
        for i in range(20):
            extra = {PolicyKey(9000 + i, 0, 0, INGRESS)} if i % 2 else set()
            keys = {allow, PolicyKey(a.identity, 0, 58, INGRESS)} if i % 3 else {allow}
            datapath.set_endpoint_policy(b.spec, True, i % 4 != 0, keys | extra)
            assert datapath.policy_entries(b.spec).keys() == keys | extra
            assert session.echo(f"round {i}")
        assert a.exchange(b.spec.ipv4, 80)
    finally:
        session.close()
    assert datapath.policy_entries(b.spec)[allow][0] >= 2  # counters survived the updates


def test_policy_over_capacity_changes_nothing(datapath, make_container):
    a, b = make_container(), make_container()
    kept = {PolicyKey(a.identity, 0, 0, INGRESS)}
    datapath.set_endpoint_policy(b.spec, True, False, kept)
    room = datapath.maps.policy_capacity() - datapath.maps.policy_count()
    too_many = {PolicyKey(10_000 + i, 0, 0, INGRESS) for i in range(room + 1)}
    with pytest.raises(DatapathError, match="policy map full"):
        datapath.set_endpoint_policy(b.spec, False, True, too_many)
    assert datapath.policy_entries(b.spec).keys() == kept
    # ingress only, as before (and masquerading, the default)
    flags = datapath.endpoint_map_entries()[b.ifindex].flags
    assert flags == abi.EP_F_INGRESS_ENFORCED | abi.EP_F_MASQUERADE
    assert a.ping(b.spec.ipv6)


def _map_keys(datapath, endpoint_id: int) -> set[PolicyKey]:
    """The endpoint's keys as the kernel's policy map holds them (walked, not the index)."""
    return {
        PolicyKey(raw.identity, raw.dport, raw.protocol, raw.direction)
        for raw, _ in datapath.maps._maps["policy"].items()
        if raw.endpoint_id == endpoint_id
    }


def test_a_policy_delta_adds_and_takes_keys_and_packets_follow(datapath, make_container):
    a, b, c = make_container(), make_container(), make_container()
    allow_a, allow_c = PolicyKey(a.identity, 0, 0, INGRESS), PolicyKey(c.identity, 0, 0, INGRESS)
    datapath.set_endpoint_policy(b.spec, True, False, {allow_a})
    assert a.ping(b.spec.ipv6)
    assert not c.ping(b.spec.ipv6, timeout=1)
    flags = datapath.endpoint_map_entries()[b.ifindex].flags

    datapath.update_endpoint_policy(b.spec, {allow_c}, set())
    assert _map_keys(datapath, b.spec.endpoint_id) == {allow_a, allow_c}
    assert c.ping(b.spec.ipv4)
    assert a.ping(b.spec.ipv4)
    # A key both added and taken stays, with its counters; one taken that is not there is
    # no error (the peer's keys went already).
    datapath.update_endpoint_policy(b.spec, {allow_a}, {allow_a, PolicyKey(4242, 0, 0, INGRESS)})
    assert datapath.policy_entries(b.spec)[allow_a][0] >= 2
    datapath.update_endpoint_policy(b.spec, set(), {allow_a})
    assert _map_keys(datapath, b.spec.endpoint_id) == {allow_c}
    assert not a.ping(b.spec.ipv6, timeout=1)
    assert c.ping(b.spec.ipv6)
    assert datapath.endpoint_map_entries()[b.ifindex].flags == flags, "enforcement unchanged"


def test_policy_deltas_leave_the_map_as_a_whole_write_would(datapath, make_container):
    """Random deltas on one endpoint, a whole write of the same keys on another: the
    kernel's map holds the same keys for both after every step."""
    rng = random.Random(14)
    delta, whole = make_container(), make_container()
    shapes = [
        (port, proto, d) for port, proto in ((0, 0), (80, 6), (53, 17)) for d in (INGRESS, EGRESS)
    ]
    pool = [PolicyKey(2000 + i, *shape) for i in range(8) for shape in shapes]
    keys: set[PolicyKey] = set()
    datapath.set_endpoint_policy(delta.spec, True, True, keys)
    for _ in range(40):
        added = set(rng.sample(pool, rng.randint(0, 6)))
        removed = set(rng.sample(pool, rng.randint(0, 6)))
        datapath.update_endpoint_policy(delta.spec, added, removed)
        keys = (keys | added) - (removed - added)
        datapath.set_endpoint_policy(whole.spec, True, True, keys)
        assert _map_keys(datapath, delta.spec.endpoint_id) == keys
        assert _map_keys(datapath, whole.spec.endpoint_id) == keys
        assert datapath.policy_entries(delta.spec).keys() == keys


def test_a_policy_delta_over_capacity_or_with_a_bad_key_changes_nothing(datapath, make_container):
    a, b = make_container(), make_container()
    kept = {PolicyKey(a.identity, 0, 0, INGRESS)}
    datapath.set_endpoint_policy(b.spec, True, False, kept)
    room = datapath.maps.policy_capacity() - datapath.maps.policy_count()
    too_many = {PolicyKey(10_000 + i, 0, 0, INGRESS) for i in range(room + 1)}
    with pytest.raises(DatapathError, match="policy map full"):
        datapath.update_endpoint_policy(b.spec, too_many, kept)
    assert _map_keys(datapath, b.spec.endpoint_id) == kept
    with pytest.raises(DatapathError, match="port needs protocol"):
        datapath.update_endpoint_policy(b.spec, {PolicyKey(0, 80, 0, INGRESS)}, kept)
    assert _map_keys(datapath, b.spec.endpoint_id) == kept
    assert a.ping(b.spec.ipv6)


def test_bad_policy_key_is_refused(datapath, make_container):
    a = make_container()
    with pytest.raises(DatapathError, match="port needs protocol"):
        datapath.set_endpoint_policy(a.spec, True, False, {PolicyKey(0, 80, 0, INGRESS)})
    assert datapath.policy_entries(a.spec) == {}


def test_delete_endpoint_leaves_no_policy_or_conntrack(datapath, make_container):
    compiles = datapath.compile_count  # the prefilter's tests may have compiled bpf_xdp.c
    a, b = make_container(), make_container()
    b.serve(80)
    datapath.set_endpoint_policy(b.spec, True, False, {PolicyKey(a.identity, 0, 0, INGRESS)})
    assert a.exchange(b.spec.ipv6, 80)
    assert a.exchange(b.spec.ipv4, 80)

    def ours(entry) -> bool:
        return entry.endpoint_id == b.spec.endpoint_id or {entry.src, entry.dst} & {
            b.spec.ipv6,
            b.spec.ipv4,
        }

    assert any(ours(e) for e in datapath.ct_entries())
    datapath.delete_endpoint(b.spec)
    assert datapath.policy_entries(b.spec) == {}
    datapath.wait_for_sweeps()  # conntrack is cleaned in the background
    assert not any(ours(e) for e in datapath.ct_entries())
    assert datapath.maps.retired() == {}
    assert datapath.compile_count == compiles


def test_flows_retired_before_a_restart_are_swept_by_the_next_start(datapath, pin_dir):
    """The driver killed between DeleteEndpoint and the sweep: the pinned record of the
    retired endpoint makes the next start sweep its flows."""
    conntrack = datapath.maps._maps["conntrack"]
    gone6, kept6 = ipaddress.ip_address("fdce:1c99::91"), ipaddress.ip_address("fdce:1c99::92")

    def flow(endpoint_id: int, src, dst) -> abi.CtKeyC:
        key = abi.CtKeyC(sport=4242, dport=80, endpoint_id=endpoint_id, protocol=6)
        key.family = abi.ENDPOINT_KEY_IPV6
        key.saddr, key.daddr = abi.IP6(*src.packed), abi.IP6(*dst.packed)
        conntrack.update(key, abi.CtEntryC())
        return key

    doomed = [flow(950, gone6, kept6), flow(951, kept6, gone6)]
    kept = flow(951, kept6, kept6)
    datapath.maps.put_retired(950, [gone6])  # what delete_endpoint records, before a kill
    later = Datapath(
        pin_dir=pin_dir,
        veth_prefix=datapath.veth_prefix,
        service_ranges=datapath.service_ranges,
    )
    later.start()
    try:
        later.wait_for_sweeps()
        left = {bytes(key) for key, _ in conntrack.items()}
        assert bytes(kept) in left
        assert not {bytes(key) for key in doomed} & left
        assert later.maps.retired() == {}
    finally:
        later.close()
        conntrack.delete(kept)


# TCP client whose segments carry a destination-options header (a sticky socket option).
DSTOPTS_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, bytes([0, 0, 1, 4, 0, 0, 0, 0]))
s.settimeout(1)
s.connect((sys.argv[1], int(sys.argv[2])))
s.sendall(b"hello")
sys.exit(0 if s.recv(10) == b"hello" else 1)
"""


def test_destination_options_do_not_hide_the_port(datapath, make_container):
    a, b = make_container(), make_container()
    b.serve(80)
    b.serve(81)
    datapath.set_endpoint_policy(b.spec, True, False, {PolicyKey(a.identity, 80, 6, INGRESS)})
    before = _drops(datapath, "DROP_POLICY")
    for port, allowed in ((80, True), (81, False)):
        client = (sys.executable, "-c", DSTOPTS_CLIENT, str(b.spec.ipv6), str(port))
        done = a.exec(*client, check=False)
        assert (done.returncode == 0) == allowed, done.stderr
    assert _drops(datapath, "DROP_POLICY") > before

"""Policy verdicts on crafted frames (BPF_PROG_TEST_RUN: nothing is sent): extension
headers, fragments, malformed L4 headers, and the datapath's own answers."""

import pytest

from datapath import EGRESS, INGRESS, INIT_ID, PolicyKey, loader

from . import packets as pk
from .conftest import ROUTER4, ROUTER6

PEER6, PEER4 = "fdce:1c99::7777", "10.199.77.77"


@pytest.fixture
def server(datapath, new_spec):
    """An endpoint admitting TCP port 80 only, and only from PEER (any identity)."""
    spec = new_spec()
    ifindex = datapath.create_endpoint(spec)
    keys = {PolicyKey(0, 80, 6, INGRESS), PolicyKey(0, 80, 6, EGRESS)}
    datapath.set_endpoint_policy(spec, True, True, keys)
    yield spec, ifindex
    datapath.delete_endpoint(spec)


def _to_container(
    datapath, spec, ifindex, l3: bytes, ethertype=pk.ETH_P_IPV6, ingress_ifindex=0
) -> int:
    frame = pk.eth(spec.mac, "02:00:00:00:00:01", ethertype) + l3
    program = datapath.programs.to_container
    verdict, _ = loader.run_program(program, frame, ifindex, ingress_ifindex)
    return verdict


def _from_container(datapath, spec, ifindex, l3: bytes, ethertype=pk.ETH_P_IPV6) -> int:
    frame = pk.eth("02:00:00:00:00:01", spec.mac, ethertype) + l3
    verdict, _ = loader.run_program(datapath.programs.from_container, frame, ifindex)
    return verdict


def _counting(datapath, reason, run) -> tuple[int, int]:
    before = datapath.drop_counts()[reason]
    verdict = run()
    return verdict, datapath.drop_counts()[reason] - before


@pytest.mark.parametrize(
    "exts",
    [(), (pk.DSTOPTS,), (pk.HOPOPTS, pk.ROUTING, pk.DSTOPTS)],
    ids=["plain", "dstopts", "hop-routing-dstopts"],
)
@pytest.mark.parametrize(("port", "verdict"), [(80, pk.TC_ACT_OK), (81, pk.TC_ACT_SHOT)])
def test_port_found_behind_extension_headers(datapath, server, exts, port, verdict):
    spec, ifindex = server
    l3 = pk.ipv6(PEER6, spec.ipv6, pk.tcp(40000 + port, port), pk.TCP, exts)
    got, dropped = _counting(
        datapath, "DROP_POLICY", lambda: _to_container(datapath, spec, ifindex, l3)
    )
    assert got == verdict
    assert dropped == (verdict == pk.TC_ACT_SHOT)


def test_egress_port_found_behind_destination_options(datapath, server):
    spec, ifindex = server
    l3 = pk.ipv6(spec.ipv6, PEER6, pk.tcp(40001, 80), pk.TCP, (pk.DSTOPTS,))
    assert _from_container(datapath, spec, ifindex, l3) == pk.TC_ACT_OK
    l3 = pk.ipv6(spec.ipv6, PEER6, pk.tcp(40002, 81), pk.TCP, (pk.DSTOPTS,))
    assert _from_container(datapath, spec, ifindex, l3) == pk.TC_ACT_SHOT


def _frag6(spec, offset, more):
    payload = pk.fragment_header(pk.TCP, offset, more) + pk.tcp(40000, 80)
    return pk.ipv6(PEER6, spec.ipv6, payload, pk.FRAGMENT)


@pytest.mark.parametrize(
    ("reason", "ethertype", "make"),
    [
        ("DROP_FRAG_IPV6", pk.ETH_P_IPV6, lambda s: _frag6(s, 0, True)),
        ("DROP_FRAG_IPV6", pk.ETH_P_IPV6, lambda s: _frag6(s, 10, False)),
        (
            "DROP_FRAG_IPV4",
            pk.ETH_P_IP,
            lambda s: pk.ipv4(PEER4, s.ipv4, pk.tcp(40000, 80), pk.TCP, more=True),
        ),
        (
            "DROP_FRAG_IPV4",
            pk.ETH_P_IP,
            lambda s: pk.ipv4(PEER4, s.ipv4, pk.tcp(40000, 80), pk.TCP, frag_off=10),
        ),
        (
            "DROP_INVALID_EXTHDR",
            pk.ETH_P_IPV6,
            lambda s: pk.ipv6(PEER6, s.ipv6, pk.tcp(40000, 80), pk.TCP, (pk.DSTOPTS,) * 5),
        ),
        (
            "DROP_INVALID_PACKET",
            pk.ETH_P_IPV6,
            lambda s: pk.ipv6(PEER6, s.ipv6, pk.tcp(40000, 80, length=12), pk.TCP),
        ),
        (
            "DROP_INVALID_PACKET",
            pk.ETH_P_IP,
            lambda s: pk.ipv4(PEER4, s.ipv4, pk.icmp(8)[:4], pk.ICMP),
        ),
    ],
    ids=["v6-frag", "v6-frag-later", "v4-mf", "v4-offset", "exthdrs", "short-tcp", "short-icmp"],
)
def test_unreadable_packets_are_dropped_by_reason(datapath, server, reason, ethertype, make):
    spec, ifindex = server
    l3 = make(spec)
    verdict, dropped = _counting(
        datapath, reason, lambda: _to_container(datapath, spec, ifindex, l3, ethertype)
    )
    assert (verdict, dropped) == (pk.TC_ACT_SHOT, 1)


@pytest.fixture
def waiting(datapath, new_spec):
    """An endpoint waiting for its identity, with both directions enforced and no entry."""
    spec = new_spec(INIT_ID)
    ifindex = datapath.create_endpoint(spec)
    datapath.set_endpoint_policy(spec, True, True, set())
    yield spec, ifindex
    datapath.delete_endpoint(spec)


def test_own_answers_reach_a_waiting_endpoint(datapath, waiting):
    spec, ifindex = waiting
    advert = pk.ipv6(ROUTER6, spec.ipv6, pk.icmp(136), pk.ICMPV6)
    advert = advert[:7] + b"\xff" + advert[8:]  # the hop limit of real NDisc
    echo6 = pk.ipv6(ROUTER6, spec.ipv6, pk.icmp(129), pk.ICMPV6)
    echo4 = pk.ipv4(ROUTER4, spec.ipv4, pk.icmp(0), pk.ICMP)
    arp = bytes(28)
    assert _to_container(datapath, spec, ifindex, advert) == pk.TC_ACT_OK
    # Echo answers are sent back out of the veth they came in on.
    assert _to_container(datapath, spec, ifindex, echo6, ingress_ifindex=ifindex) == pk.TC_ACT_OK
    echo4_verdict = _to_container(datapath, spec, ifindex, echo4, pk.ETH_P_IP, ifindex)
    assert echo4_verdict == pk.TC_ACT_OK
    assert _to_container(datapath, spec, ifindex, arp, 0x0806) == pk.TC_ACT_OK


def test_waiting_endpoint_gets_no_other_packet(datapath, waiting):
    spec, ifindex = waiting
    echo6 = pk.ipv6(PEER6, spec.ipv6, pk.icmp(129), pk.ICMPV6)
    verdict, dropped = _counting(
        datapath,
        "DROP_WAITING_FOR_IDENTITY",
        lambda: _to_container(datapath, spec, ifindex, echo6),
    )
    assert (verdict, dropped) == (pk.TC_ACT_SHOT, 1)

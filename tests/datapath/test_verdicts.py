"""Verdicts of the program on crafted frames (BPF_PROG_TEST_RUN: no packet is sent)."""

import ipaddress
import struct

import pytest

from datapath import loader, netlink

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7
ETH_P_IPV6 = 0x86DD


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _icmp6_frame(dst_mac, src_mac, src, dst, icmp: bytes, hop_limit=255) -> bytes:
    src, dst = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    pseudo = src + dst + struct.pack("!I3xB", len(icmp), 58)
    icmp = icmp[:2] + struct.pack("!H", _csum(pseudo + icmp)) + icmp[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(icmp), 58, hop_limit) + src + dst
    return dst_mac + src_mac + struct.pack("!H", ETH_P_IPV6) + ip6 + icmp


def _neighbour_solicitation(spec, target, src=None, sll=True) -> bytes:
    target = ipaddress.IPv6Address(target)
    body = struct.pack("!BBHI", 135, 0, 0, 0) + target.packed
    if sll:
        body += struct.pack("!BB", 1, 1) + _mac(spec.mac)
    solicited = ipaddress.IPv6Address("ff02::1:ff00:0").packed[:13] + target.packed[13:]
    dst = ipaddress.IPv6Address(solicited)
    return _icmp6_frame(b"\x33\x33" + solicited[12:], _mac(spec.mac), src or spec.ipv6, dst, body)


@pytest.fixture
def endpoint(datapath, new_spec):
    spec = new_spec()
    ifindex = datapath.create_endpoint(spec)
    yield spec, ifindex
    datapath.delete_endpoint(spec)


def _run(datapath, frame, ifindex):
    return loader.run_program(datapath.program, frame, ifindex)


@pytest.mark.parametrize("sll", [True, False], ids=["with-sll", "without-sll"])
def test_solicitation_for_router_gets_advertisement(datapath, endpoint, sll):
    spec, ifindex = endpoint
    verdict, out = _run(datapath, _neighbour_solicitation(spec, spec.router6, sll=sll), ifindex)
    assert verdict == TC_ACT_REDIRECT
    node_mac = _mac(netlink.link_mac(ifindex))
    assert len(out) == 86
    assert out[0:6] == _mac(spec.mac) and out[6:12] == node_mac
    ip6, icmp = out[14:54], out[54:]
    assert ip6[6:8] == bytes([58, 255])
    assert ip6[8:24] == spec.router6.packed and ip6[24:40] == spec.ipv6.packed
    assert icmp[0] == 136 and icmp[4] == 0xE0
    assert icmp[8:24] == spec.router6.packed
    assert icmp[24:26] == bytes([2, 1]) and icmp[26:32] == node_mac
    pseudo = ip6[8:40] + struct.pack("!I3xB", len(icmp), 58)
    assert _csum(pseudo + icmp) == 0


@pytest.mark.parametrize(
    ("src", "target"),
    [("::", "fdce:1c99::1"), (None, "fe80::1")],
    ids=["dad", "link-local-target"],
)
def test_solicitations_not_answered_go_to_stack(datapath, endpoint, src, target):
    spec, ifindex = endpoint
    verdict, _ = _run(datapath, _neighbour_solicitation(spec, target, src=src), ifindex)
    assert verdict == TC_ACT_OK


def test_solicitation_for_itself_is_not_answered(datapath, endpoint):
    spec, ifindex = endpoint
    verdict, _ = _run(datapath, _neighbour_solicitation(spec, spec.ipv6), ifindex)
    assert verdict == TC_ACT_OK


def _drops(datapath, reason, frame, ifindex) -> int:
    before = datapath.drop_counts()[reason]
    verdict, _ = _run(datapath, frame, ifindex)
    assert verdict == TC_ACT_SHOT
    return datapath.drop_counts()[reason] - before


def test_unknown_ethertype_is_dropped(datapath, endpoint):
    spec, ifindex = endpoint
    frame = b"\xff" * 6 + _mac(spec.mac) + b"\x88\xb5" + bytes(46)
    assert _drops(datapath, "DROP_UNKNOWN_L3", frame, ifindex) == 1


def test_unknown_device_is_dropped(datapath, endpoint):
    spec, _ = endpoint
    frame = _neighbour_solicitation(spec, spec.router6)
    assert _drops(datapath, "DROP_UNKNOWN_ENDPOINT", frame, 1) == 1


def test_link_local_source_is_only_for_icmpv6(datapath, endpoint):
    spec, ifindex = endpoint
    frame = bytearray(_neighbour_solicitation(spec, spec.router6, src="fe80::2"))
    frame[20] = 17  # next header UDP
    assert _drops(datapath, "DROP_INVALID_SIP6", bytes(frame), ifindex) == 1

"""Frames crafted byte by byte for BPF_PROG_TEST_RUN (scapy is not needed)."""

import ipaddress
import struct

ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
HOPOPTS, ROUTING, FRAGMENT, DSTOPTS = 0, 43, 44, 60
TCP, UDP, ICMP, ICMPV6 = 6, 17, 1, 58
SYN = 0x02

TC_ACT_OK, TC_ACT_SHOT, TC_ACT_REDIRECT = 0, 2, 7


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def eth(dst: str, src: str, ethertype: int) -> bytes:
    return mac(dst) + mac(src) + struct.pack("!H", ethertype)


def tcp(sport: int, dport: int, flags: int = SYN, length: int = 20) -> bytes:
    header = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)
    return header[:length]


def icmp(type_: int, ident: int = 7) -> bytes:
    return struct.pack("!BBHHH", type_, 0, 0, ident, 1)


def ext_header(nexthdr: int, kind: int) -> bytes:
    """An 8-byte extension header of kind (hop-by-hop, routing, destination options)."""
    if kind == ROUTING:  # type 0 routing header with no segments left
        return struct.pack("!BBBB4x", nexthdr, 0, 0, 0)
    return struct.pack("!BB", nexthdr, 0) + bytes([1, 4, 0, 0, 0, 0])  # PadN


def fragment_header(nexthdr: int, offset: int, more: bool) -> bytes:
    return struct.pack("!BBHI", nexthdr, 0, offset << 3 | int(more), 0x1234)


def ipv6(src, dst, payload: bytes, proto: int, exts: tuple[int, ...] = ()) -> bytes:
    """IPv6 header, the extension headers of kinds exts in order, then payload (proto)."""
    chain = b""
    kinds = list(exts)
    for i, kind in enumerate(kinds):
        nexthdr = kinds[i + 1] if i + 1 < len(kinds) else proto
        chain += ext_header(nexthdr, kind)
    first = kinds[0] if kinds else proto
    body = chain + payload
    head = struct.pack("!IHBB", 6 << 28, len(body), first, 64)
    return head + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + body


def ipv4(src, dst, payload: bytes, proto: int, frag_off: int = 0, more: bool = False) -> bytes:
    flags = frag_off | (0x2000 if more else 0)
    head = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(payload), 1, flags, 64, proto, 0)
    return head + ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + payload

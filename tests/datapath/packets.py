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


def udp(sport: int, dport: int, payload: bytes = b"ping") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def checksum(data: bytes) -> int:
    """The Internet checksum of data."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


L4_CSUM_OFF = {TCP: 16, UDP: 6, ICMP: 2, ICMPV6: 2}


def _l4_parts(frame: bytes) -> tuple[bytes, int, bytes, int]:
    """(pseudo header or b"" for ICMPv4, offset of the L4 header, L4 bytes, protocol)."""
    if struct.unpack("!H", frame[12:14])[0] == ETH_P_IPV6:
        proto, src, dst, l4 = frame[20], frame[22:38], frame[38:54], frame[54:]
        return src + dst + struct.pack("!I3xB", len(l4), proto), 54, l4, proto
    ihl = (frame[14] & 0xF) * 4
    proto, src, dst, l4 = frame[23], frame[26:30], frame[30:34], frame[14 + ihl :]
    pseudo = b"" if proto == ICMP else src + dst + struct.pack("!BBH", 0, proto, len(l4))
    return pseudo, 14 + ihl, l4, proto


def _l4_checksum(frame: bytes) -> int:
    """The checksum frame's upper layer should carry, computed with its field zeroed (a UDP
    result of 0 not yet sent as 0xffff)."""
    pseudo, _, l4, proto = _l4_parts(frame)
    at = L4_CSUM_OFF[proto]
    return checksum(pseudo + l4[:at] + b"\0\0" + l4[at + 2 :])


def with_checksums(frame: bytes, l4: bool = True) -> bytes:
    """frame (Ethernet, IPv4 or IPv6 without extension headers) with its IPv4 header
    checksum and, if l4, its TCP/UDP/ICMP checksum filled in (a UDP checksum that comes out
    as 0 as 0xffff, RFC 768)."""
    out = bytearray(frame)
    if struct.unpack("!H", frame[12:14])[0] == ETH_P_IP:
        ihl = (frame[14] & 0xF) * 4
        out[24:26] = b"\0\0"
        out[24:26] = struct.pack("!H", checksum(bytes(out[14 : 14 + ihl])))
    _, off, _, proto = _l4_parts(bytes(out))
    if l4:
        value = _l4_checksum(bytes(out))
        at = off + L4_CSUM_OFF[proto]
        out[at : at + 2] = struct.pack("!H", 0xFFFF if proto == UDP and not value else value)
    return bytes(out)


def l4_checksum_field(frame: bytes) -> int:
    """The TCP/UDP/ICMP checksum frame carries."""
    _, off, _, proto = _l4_parts(frame)
    at = off + L4_CSUM_OFF[proto]
    return struct.unpack("!H", frame[at : at + 2])[0]


def zeroing_tail(frame: bytes) -> bytes:
    """The last two bytes of frame's upper layer (even in length) that make its checksum
    come out as 0: the sum of the rest's complement."""
    return struct.pack("!H", _l4_checksum(frame[:-2] + b"\0\0"))


def checksums_valid(frame: bytes) -> bool:
    """Whether the IPv4 header checksum and the L4 checksum hold (a UDP/IPv4 0: none; a
    UDP/IPv6 0 never does, RFC 8200)."""
    if struct.unpack("!H", frame[12:14])[0] == ETH_P_IP:
        ihl = (frame[14] & 0xF) * 4
        if checksum(frame[14 : 14 + ihl]) != 0:
            return False
    pseudo, _, segment, proto = _l4_parts(frame)
    if proto == UDP and segment[6:8] == b"\0\0":
        return len(pseudo) == 12
    return checksum(pseudo + segment) == 0

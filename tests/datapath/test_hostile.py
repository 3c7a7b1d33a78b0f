"""Hostile and malformed packets against the real programs (BPF_PROG_TEST_RUN: nothing is
sent). Whatever a container or a peer puts on the wire, the program must end in a defined
verdict: dropped and counted under a named reason, or passed and counted at a trace point,
and a flow policy denies stays denied however it is encoded.

The cast: `client` may open TCP port 80 on `server` and nothing else (egress enforced);
`server` admits exactly that (ingress enforced) and may open nothing itself; `other` is
enforced nowhere and admitted by nobody.
"""

import dataclasses
import ipaddress
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from datapath import (
    EGRESS,
    HOST_ID,
    INGRESS,
    WORLD_ID,
    EndpointSpec,
    Outbound,
    PolicyKey,
    loader,
    netlink,
    reasons,
)

from . import packets as pk
from .conftest import ROUTER4, ROUTER6, run

PASS = (pk.TC_ACT_OK, pk.TC_ACT_REDIRECT)
HOST_MAC = "02:00:00:00:00:01"
ETH_P_ARP, ETH_P_8021Q = 0x0806, 0x8100
NS, NA, RS, RA, REDIRECT = 135, 136, 133, 134, 137
AH = 51


@dataclass
class Endpoint:
    spec: EndpointSpec
    ifindex: int

    @property
    def ip6(self) -> ipaddress.IPv6Address:
        return self.spec.ipv6

    @property
    def ip4(self) -> ipaddress.IPv4Address:
        return self.spec.ipv4


@dataclass
class Cast:
    client: Endpoint
    server: Endpoint
    other: Endpoint


@pytest.fixture
def cast(datapath, new_spec):
    made = [new_spec() for _ in range(3)]
    client, server, other = (Endpoint(s, datapath.create_endpoint(s)) for s in made)
    datapath.set_endpoint_policy(
        server.spec, True, True, {PolicyKey(client.spec.identity, 80, pk.TCP, INGRESS)}
    )
    datapath.set_endpoint_policy(
        client.spec, True, True, {PolicyKey(server.spec.identity, 80, pk.TCP, EGRESS)}
    )
    yield Cast(client, server, other)
    for spec in made:
        datapath.delete_endpoint(spec)


def _counters(datapath) -> dict[str, int]:
    return {**datapath.drop_counts(), **datapath.trace_counts()}


def outcome(datapath, program, frame: bytes, ifindex: int, via: int = 0) -> tuple[int, str]:
    """(verdict, the one drop reason or trace point the run counted) of frame on ifindex,
    having come in on via. Fails unless the program counted exactly one and the verdict
    agrees with it."""
    before = _counters(datapath)
    verdict, _ = loader.run_program(program, frame, ifindex, via)
    after = _counters(datapath)
    moved = [name for name in after if after[name] != before[name]]
    assert len(moved) == 1, f"verdict {verdict} counted {moved}"
    name = moved[0]
    if name.startswith("DROP_"):
        assert verdict == pk.TC_ACT_SHOT, f"{name} with verdict {verdict}"
    else:
        assert verdict in PASS, f"{name} with verdict {verdict}"
    return verdict, name


def sent(datapath, ep: Endpoint, l3: bytes, ethertype=pk.ETH_P_IPV6, src_mac=None):
    """The outcome of a frame the container of ep sends (it comes in on ep's host veth)."""
    frame = pk.eth(HOST_MAC, src_mac or ep.spec.mac, ethertype) + l3
    return outcome(datapath, datapath.programs.from_container, frame, ep.ifindex, ep.ifindex)


def received(datapath, ep: Endpoint, l3: bytes, ethertype=pk.ETH_P_IPV6):
    """The outcome of a frame on its way into the container of ep, having come out of the
    veth of the local endpoint its source address names (as the real ones do)."""
    frame = pk.eth(ep.spec.mac, HOST_MAC, ethertype) + l3
    return outcome(datapath, datapath.programs.to_container, frame, ep.ifindex, _via(datapath, l3))


def _via(datapath, l3: bytes) -> int:
    """The host ifindex of the local endpoint owning l3's source address, else 0."""
    version = l3[0] >> 4 if l3 else 0
    if version == 6 and len(l3) >= 24:
        source = ipaddress.IPv6Address(l3[8:24])
    elif version == 4 and len(l3) >= 16:
        source = ipaddress.IPv4Address(l3[12:16])
    else:
        return 0
    owner = datapath.address_map_entries().get(source)
    return owner.ifindex if owner is not None else 0


def ethertype_of(l3: bytes) -> int:
    return pk.ETH_P_IPV6 if l3[0] >> 4 == 6 else pk.ETH_P_IP


def _ipv4(src, dst, payload: bytes, proto: int, options: bytes = b"", ihl=None) -> bytes:
    ihl = ihl if ihl is not None else 5 + len(options) // 4
    head = struct.pack(
        "!BBHHHBBH", 0x40 | ihl, 0, 20 + len(options) + len(payload), 1, 0, 64, proto, 0
    )
    addrs = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed
    return head + addrs + options + payload


def _with_hop_limit(l3: bytes, hop_limit: int) -> bytes:
    return l3[:7] + bytes([hop_limit]) + l3[8:]


def _icmp6(type_: int, body: bytes = b"") -> bytes:
    return struct.pack("!BBHI", type_, 0, 0, 0) + body


def _ndisc(src, dst, type_: int, target=None, hop_limit=255, options=b"") -> bytes:
    body = ipaddress.IPv6Address(target).packed if target is not None else b""
    return _with_hop_limit(pk.ipv6(src, dst, _icmp6(type_, body + options), pk.ICMPV6), hop_limit)


# Truncation: every length of a few frames, both hooks. ---------------------------------


def _frames(cast: Cast) -> dict[str, tuple[Endpoint, bytes, int]]:
    """name -> (sending endpoint, L3 packet, ethertype)."""
    c, s = cast.client, cast.server
    ns = _ndisc(c.ip6, "ff02::1:ff00:1", NS, ROUTER6, options=b"\x01\x01" + pk.mac(c.spec.mac))
    arp = struct.pack("!HHBBH", 1, pk.ETH_P_IP, 6, 4, 1) + pk.mac(c.spec.mac) + c.ip4.packed
    arp += bytes(6) + ROUTER4.packed
    quoted = pk.ipv6(s.ip6, c.ip6, pk.tcp(80, 40000), pk.TCP)[:48]
    return {
        "tcp6": (c, pk.ipv6(c.ip6, s.ip6, pk.tcp(40000, 80), pk.TCP), pk.ETH_P_IPV6),
        "tcp6-exthdrs": (
            c,
            pk.ipv6(c.ip6, s.ip6, pk.tcp(40000, 80), pk.TCP, (pk.HOPOPTS, pk.DSTOPTS)),
            pk.ETH_P_IPV6,
        ),
        "udp6": (c, pk.ipv6(c.ip6, s.ip6, pk.udp(40000, 53), pk.UDP), pk.ETH_P_IPV6),
        "tcp4": (c, _ipv4(c.ip4, s.ip4, pk.tcp(40000, 80), pk.TCP), pk.ETH_P_IP),
        "tcp4-options": (
            c,
            _ipv4(c.ip4, s.ip4, pk.tcp(40000, 80), pk.TCP, options=b"\x01" * 8),
            pk.ETH_P_IP,
        ),
        "echo6-router": (c, pk.ipv6(c.ip6, ROUTER6, pk.icmp(128), pk.ICMPV6), pk.ETH_P_IPV6),
        "echo4-router": (c, _ipv4(c.ip4, ROUTER4, pk.icmp(8), pk.ICMP), pk.ETH_P_IP),
        "ns-router": (c, ns, pk.ETH_P_IPV6),
        "arp-router": (c, arp, ETH_P_ARP),
        "icmp6-error": (
            c,
            pk.ipv6(c.ip6, s.ip6, _icmp6(1) + quoted, pk.ICMPV6),
            pk.ETH_P_IPV6,
        ),
    }


FRAME_NAMES = [
    "tcp6",
    "tcp6-exthdrs",
    "udp6",
    "tcp4",
    "tcp4-options",
    "echo6-router",
    "echo4-router",
    "ns-router",
    "arp-router",
    "icmp6-error",
]


# BPF_PROG_TEST_RUN refuses frames shorter than their IP header; those are sent for real
# below (test_short_frames_sent_for_real).
SHORTEST = {pk.ETH_P_IPV6: 40, pk.ETH_P_IP: 20, ETH_P_ARP: 0}


@pytest.mark.parametrize("name", FRAME_NAMES)
def test_truncated_at_every_length_sent(datapath, cast, name):
    """Cut anywhere, a frame gets a counted verdict; a cut inside the headers the program
    reads is dropped as malformed, never passed."""
    ep, l3, ethertype = _frames(cast)[name]
    full = sent(datapath, ep, l3, ethertype)
    for length in range(SHORTEST[ethertype], len(l3)):
        verdict, reason = sent(datapath, ep, l3[:length], ethertype)
        assert verdict == pk.TC_ACT_SHOT or (verdict, reason) == full, (length, reason)


@pytest.mark.parametrize("name", FRAME_NAMES)
def test_truncated_at_every_length_received(datapath, cast, name):
    _, l3, ethertype = _frames(cast)[name]
    for length in range(SHORTEST[ethertype], len(l3) + 1):
        _, reason = received(datapath, cast.server, l3[:length], ethertype)
        if reason.startswith("TRACE_"):
            # Only the server's one admitted flow, and what policy never sees, get in.
            # NDisc with hop limit 255 can only come from the host: no policy applies.
            admitted = ("tcp6", "tcp6-exthdrs", "tcp4", "tcp4-options", "arp-router", "ns-router")
            assert name in admitted, (
                length,
                reason,
            )


SEND_RAW = r"""
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
for frame in sys.stdin.read().split():
    s.send(bytes.fromhex(frame))
"""


def send_raw(netns: str, frames: list[bytes]) -> None:
    """Send Ethernet frames, as they are, out of eth0 of netns (a packet socket)."""
    subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", SEND_RAW],
        input=" ".join(f.hex() for f in frames),
        text=True,
        check=True,
        timeout=30,
    )


def heard(netns: str, listener: str, args: list[str], meanwhile: Callable[[], None]) -> list[str]:
    """The lines a listener script in netns prints while meanwhile() runs (it prints
    "ready" first, then whatever it hears until its timeout)."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", listener, *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        meanwhile()
        return proc.communicate(timeout=10)[0].split("\n")
    finally:
        proc.kill()
        proc.wait()


def test_short_frames_sent_for_real(datapath, make_container, event_log):
    """Frames cut inside the Ethernet or IP header, from a packet socket in a container:
    each is dropped as malformed (or, with no EtherType, as an unknown L3)."""
    c = make_container()
    head = pk.eth(HOST_MAC, c.spec.mac, 0)[:12]
    v6 = pk.ipv6(c.spec.ipv6, ROUTER6, pk.icmp(128), pk.ICMPV6)
    v4 = _ipv4(c.spec.ipv4, ROUTER4, pk.icmp(8), pk.ICMP)
    frames = [head + struct.pack("!H", pk.ETH_P_IPV6) + v6[:n] for n in range(40)]
    frames += [head + struct.pack("!H", pk.ETH_P_IP) + v4[:n] for n in range(20)]
    frames += [head + struct.pack("!H", ETH_P_ARP) + bytes(n) for n in range(28)]
    send_raw(c.netns, frames)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        mine = [e for e in event_log.events if e.ifindex == c.ifindex and e.kind == "drop"]
        if len(mine) >= len(frames):
            break
        time.sleep(0.05)
    assert [e.reason_name for e in mine] == ["DROP_INVALID_PACKET"] * len(frames)


# Policy bypass attempts: a denied flow stays denied in every encoding. ----------------


def _ext(nexthdr: int, kind: int, length8: int = 0) -> bytes:
    """An extension header of kind, (length8 + 1) * 8 bytes (AH: (length8 + 2) * 4)."""
    if kind == AH:
        return struct.pack("!BBH", nexthdr, length8, 0) + bytes(4 + length8 * 4)
    if kind == pk.FRAGMENT:  # a first fragment
        return pk.fragment_header(nexthdr, 0, True)
    return (
        struct.pack("!BB", nexthdr, length8)
        + bytes([1, 4 + length8 * 8, 0, 0, 0, 0])
        + bytes(length8 * 8)
    )


def _ipv6_chain(src, dst, payload: bytes, proto: int, kinds) -> bytes:
    chain = b""
    for i, kind in enumerate(kinds):
        chain += _ext(kinds[i + 1] if i + 1 < len(kinds) else proto, kind)
    first = kinds[0] if kinds else proto
    head = struct.pack("!IHBB", 6 << 28, len(chain) + len(payload), first, 64)
    return (
        head
        + ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + chain
        + payload
    )


CHAINS = [
    (),
    (pk.HOPOPTS,),
    (pk.ROUTING,),
    (pk.DSTOPTS,),
    (AH,),
    (pk.HOPOPTS, pk.ROUTING, pk.DSTOPTS),
    (pk.HOPOPTS, AH, pk.ROUTING, pk.DSTOPTS),
    (pk.DSTOPTS, pk.DSTOPTS, pk.DSTOPTS, pk.DSTOPTS, pk.DSTOPTS),
    (pk.HOPOPTS,) * 8,
    (pk.DSTOPTS, pk.FRAGMENT),
]


def _chain_id(kinds) -> str:
    names = {pk.HOPOPTS: "hop", pk.ROUTING: "rt", pk.DSTOPTS: "dst", AH: "ah", pk.FRAGMENT: "frag"}
    return "-".join(names[k] for k in kinds) or "none"


@pytest.mark.parametrize("kinds", CHAINS, ids=[_chain_id(k) for k in CHAINS])
@pytest.mark.parametrize("flags", [pk.SYN, 0x10, 0x18, 0x03, 0x06, 0xFF, 0x00])
def test_denied_flows_stay_denied_behind_extension_headers(datapath, cast, kinds, flags):
    c, s, o = cast.client, cast.server, cast.other
    # client -> server:81 (client's egress denies it), other -> server:80 (server's ingress).
    egress = _ipv6_chain(c.ip6, s.ip6, pk.tcp(40000, 81, flags), pk.TCP, kinds)
    ingress = _ipv6_chain(o.ip6, s.ip6, pk.tcp(40000, 80, flags), pk.TCP, kinds)
    assert sent(datapath, c, egress)[0] == pk.TC_ACT_SHOT
    assert received(datapath, s, ingress)[0] == pk.TC_ACT_SHOT
    allowed = _ipv6_chain(c.ip6, s.ip6, pk.tcp(40000, 80, flags), pk.TCP, kinds)
    _, reason = received(datapath, s, allowed)
    if len(kinds) <= 4 and pk.FRAGMENT not in kinds:
        assert reason == "TRACE_TO_CONTAINER"
    else:
        assert reason in ("DROP_INVALID_EXTHDR", "DROP_FRAG_IPV6")


@pytest.mark.parametrize("decoy", [80, 81])
def test_the_port_read_is_the_one_the_kernel_reads(datapath, cast, decoy):
    """A destination options header of 16 bytes whose second half looks like a TCP header:
    policy must look behind the header, where the kernel finds TCP."""
    c, s = cast.client, cast.server
    real = 81 if decoy == 80 else 80
    fake = struct.pack("!HHI", 40000, decoy, 0)
    dstopts = struct.pack("!BB", pk.TCP, 1) + bytes([1, 4, 0, 0, 0, 0]) + fake
    head = struct.pack("!IHBB", 6 << 28, len(dstopts) + 20, pk.DSTOPTS, 64)
    l3 = head + c.ip6.packed + s.ip6.packed + dstopts + pk.tcp(40000, real)
    assert received(datapath, s, l3)[1] == ("TRACE_TO_CONTAINER" if real == 80 else "DROP_POLICY")


@pytest.mark.parametrize("options", [4, 8, 20, 40])
@pytest.mark.parametrize("decoy", [80, 81])
def test_ipv4_options_do_not_hide_the_port(datapath, cast, options, decoy):
    c, s = cast.client, cast.server
    real = 81 if decoy == 80 else 80
    opts = (struct.pack("!HH", 40000, decoy) * 10)[:options]
    l3 = _ipv4(c.ip4, s.ip4, pk.tcp(40000, real), pk.TCP, options=opts)
    assert received(datapath, s, l3, pk.ETH_P_IP)[1] == (
        "TRACE_TO_CONTAINER" if real == 80 else "DROP_POLICY"
    )


@pytest.mark.parametrize("ihl", [0, 1, 4, 15])
def test_bad_ipv4_header_lengths_are_dropped(datapath, cast, ihl):
    c, s = cast.client, cast.server
    l3 = _ipv4(c.ip4, s.ip4, pk.tcp(40000, 80), pk.TCP, ihl=ihl)
    assert sent(datapath, c, l3, pk.ETH_P_IP) == (pk.TC_ACT_SHOT, "DROP_INVALID_PACKET")
    assert received(datapath, s, l3, pk.ETH_P_IP) == (pk.TC_ACT_SHOT, "DROP_INVALID_PACKET")


@pytest.mark.parametrize(
    ("frag_off", "reason"),
    [
        (0x2000, "DROP_FRAG_IPV4"),  # first fragment
        (0x0001, "DROP_FRAG_IPV4"),  # a later one
        (0x2001, "DROP_FRAG_IPV4"),
        (0x1FFF, "DROP_FRAG_IPV4"),
        (0x4000, "TRACE_TO_CONTAINER"),  # don't fragment: a whole packet
    ],
)
def test_ipv4_fragments_never_pass_policy(datapath, cast, frag_off, reason):
    c, s = cast.client, cast.server
    l3 = bytearray(_ipv4(c.ip4, s.ip4, pk.tcp(40000, 80), pk.TCP))
    l3[6:8] = struct.pack("!H", frag_off)
    assert received(datapath, s, bytes(l3), pk.ETH_P_IP)[1] == reason


@pytest.mark.parametrize(
    ("offset", "more"), [(0, True), (0, False), (1, True), (8191, False)], ids=str
)
def test_ipv6_fragments_never_pass_policy(datapath, cast, offset, more):
    c, s = cast.client, cast.server
    payload = pk.fragment_header(pk.TCP, offset, more) + pk.tcp(40000, 80)
    l3 = pk.ipv6(c.ip6, s.ip6, payload, pk.FRAGMENT)
    assert received(datapath, s, l3) == (pk.TC_ACT_SHOT, "DROP_FRAG_IPV6")
    assert sent(datapath, c, l3) == (pk.TC_ACT_SHOT, "DROP_FRAG_IPV6")


@pytest.mark.parametrize("proto", [pk.UDP, 132, 136, 50, 59, 255])
def test_the_allowed_port_with_another_protocol_is_denied(datapath, cast, proto):
    """Policy admits TCP 80; the same port number in UDP, SCTP, UDP-Lite, ESP... is not."""
    c, s = cast.client, cast.server
    l3 = pk.ipv6(c.ip6, s.ip6, pk.udp(40000, 80), proto)
    assert sent(datapath, c, l3) == (pk.TC_ACT_SHOT, "DROP_POLICY")
    assert received(datapath, s, l3) == (pk.TC_ACT_SHOT, "DROP_POLICY")


def _crafted(c: Endpoint, s: Endpoint) -> list[tuple[str, bytes, int]]:
    """(name, l3, ethertype) of the packets the tests above judge at s's to_container,
    from c and from nowhere policy admits: extension header chains, decoy ports, options,
    fragments, TCP flags."""
    out = []
    for kinds in CHAINS:
        for port, flags in ((80, pk.SYN), (81, pk.SYN), (81, 0x10), (81, 0xFF)):
            l3 = _ipv6_chain(c.ip6, s.ip6, pk.tcp(40000, port, flags), pk.TCP, kinds)
            out.append((f"{_chain_id(kinds)}:{port}/{flags:#x}", l3, pk.ETH_P_IPV6))
    for decoy in (80, 81):
        real = 81 if decoy == 80 else 80
        fake = struct.pack("!HHI", 40000, decoy, 0)
        dstopts = struct.pack("!BB", pk.TCP, 1) + bytes([1, 4, 0, 0, 0, 0]) + fake
        head = struct.pack("!IHBB", 6 << 28, len(dstopts) + 20, pk.DSTOPTS, 64)
        l3 = head + c.ip6.packed + s.ip6.packed + dstopts + pk.tcp(40000, real)
        out.append((f"dstopts-decoy-{decoy}", l3, pk.ETH_P_IPV6))
        for size in (4, 40):
            opts = (struct.pack("!HH", 40000, decoy) * 10)[:size]
            l3 = _ipv4(c.ip4, s.ip4, pk.tcp(40000, real), pk.TCP, options=opts)
            out.append((f"options{size}-decoy-{decoy}", l3, pk.ETH_P_IP))
    for frag_off in (0x2000, 0x0001, 0x4000):
        l3 = bytearray(_ipv4(c.ip4, s.ip4, pk.tcp(40000, 80), pk.TCP))
        l3[6:8] = struct.pack("!H", frag_off)
        out.append((f"frag4-{frag_off:#x}", bytes(l3), pk.ETH_P_IP))
    payload = pk.fragment_header(pk.TCP, 0, True) + pk.tcp(40000, 80)
    out.append(("frag6", pk.ipv6(c.ip6, s.ip6, payload, pk.FRAGMENT), pk.ETH_P_IPV6))
    for proto, l4 in ((pk.UDP, pk.udp(40000, 80)), (pk.TCP, pk.tcp(40000, 80))):
        out.append((f"ipv6-{proto}", pk.ipv6(c.ip6, s.ip6, l4, proto), pk.ETH_P_IPV6))
        out.append((f"ipv4-{proto}", _ipv4(c.ip4, s.ip4, l4, proto), pk.ETH_P_IP))
    return out


@pytest.mark.parametrize("sender", ["client", "other"])
def test_a_local_senders_packets_meet_the_destinations_ingress_in_one_pass(datapath, cast, sender):
    """A local endpoint's packet for another goes straight into the destination's
    namespace (lib/local.h): from_container decides the destination's ingress policy. With
    nothing enforced on the way out, every crafted packet gets there the verdict the
    destination's to_container gives it (passed: redirected, TRACE_TO_LXC)."""
    c, s = getattr(cast, sender), cast.server
    datapath.set_endpoint_policy(c.spec, False, False, set())
    for name, l3, ethertype in _crafted(c, s):
        verdict, reason = received(datapath, s, l3, ethertype)
        if reason == "TRACE_TO_CONTAINER":
            verdict, reason = pk.TC_ACT_REDIRECT, "TRACE_TO_LXC"
        assert sent(datapath, c, l3, ethertype) == (verdict, reason), name


def test_a_link_local_source_is_not_the_senders_identity_in_one_pass(datapath, cast):
    """ICMPv6 may leave a container from its link-local address: to the destination's
    ingress policy that address is the world's, not the sender's identity, whether the
    packet comes through the destination's veth or in one pass from the sender's hook."""
    c, s = cast.client, cast.server
    datapath.set_endpoint_policy(c.spec, False, False, set())
    datapath.set_endpoint_policy(s.spec, True, False, {PolicyKey(c.spec.identity, 0, 0, INGRESS)})
    for ident, (src, expected) in enumerate(
        (
            (c.ip6, (pk.TC_ACT_REDIRECT, "TRACE_TO_LXC")),
            ("fe80::1", (pk.TC_ACT_SHOT, "DROP_POLICY")),
        ),
        start=21,
    ):
        l3 = pk.ipv6(src, s.ip6, pk.icmp(128, ident), pk.ICMPV6)
        assert sent(datapath, c, l3) == expected, src


def test_a_hosts_link_local_address_from_a_container_is_no_host(datapath, cast):
    """The host's link-local addresses are in the cidr trie as the host (the driver puts
    them there), and the host is admitted into every endpoint. A container that sends
    ICMPv6 from one of them, which the spoofing check lets through as link-local, is the
    world to the destination's policy, in one pass as through the destination's veth."""
    c, s = cast.client, cast.server
    host_link_local = "fe80::dc:1"
    datapath.set_cidr_identities({f"{host_link_local}/128": HOST_ID})
    try:
        datapath.set_endpoint_policy(c.spec, False, False, set())
        datapath.set_endpoint_policy(s.spec, True, False, {PolicyKey(HOST_ID, 0, 0, INGRESS)})
        l3 = pk.ipv6(host_link_local, s.ip6, pk.icmp(128, 31), pk.ICMPV6)
        assert sent(datapath, c, l3) == (pk.TC_ACT_SHOT, "DROP_POLICY")
    finally:
        datapath.set_cidr_identities({})


def test_a_server_cannot_open_flows_back_through_a_clients_flow(datapath, cast):
    """The reply direction of client -> server:80 admits exactly its reverse tuple."""
    c, s = cast.client, cast.server
    assert sent(datapath, c, pk.ipv6(c.ip6, s.ip6, pk.tcp(40000, 80), pk.TCP))[0] in PASS
    assert received(datapath, s, pk.ipv6(c.ip6, s.ip6, pk.tcp(40000, 80), pk.TCP))[0] in PASS
    reply = pk.ipv6(s.ip6, c.ip6, pk.tcp(80, 40000, 0x12), pk.TCP)
    assert sent(datapath, s, reply)[0] in PASS
    for sport, dport in ((80, 40001), (81, 40000), (22, 22)):
        other = pk.ipv6(s.ip6, c.ip6, pk.tcp(sport, dport, pk.SYN), pk.TCP)
        assert sent(datapath, s, other) == (pk.TC_ACT_SHOT, "DROP_POLICY")


def test_a_local_endpoints_source_from_another_device_is_forged(datapath, cast):
    c, s, o = cast.client, cast.server, cast.other
    program = datapath.programs.to_container
    for l3, ethertype in (
        (pk.ipv6(c.ip6, s.ip6, pk.tcp(40000, 80), pk.TCP), pk.ETH_P_IPV6),
        (_ipv4(c.ip4, s.ip4, pk.tcp(40000, 80), pk.TCP), pk.ETH_P_IP),
    ):
        frame = pk.eth(s.spec.mac, HOST_MAC, ethertype) + l3
        for via in (0, 1, o.ifindex):  # the stack itself, loopback, another container
            assert outcome(datapath, program, frame, s.ifindex, via) == (
                pk.TC_ACT_SHOT,
                "DROP_FORGED_SOURCE",
            )
        assert outcome(datapath, program, frame, s.ifindex, c.ifindex)[1] == "TRACE_TO_CONTAINER"


def test_icmp_errors_get_in_only_for_a_tracked_flow(datapath, cast):
    """An ICMP error passes policy when it quotes a flow conntrack knows and comes from the
    peer the quoted packet was sent to, or from no endpoint at all (as with Linux conntrack
    and Cilium: routers on the way send them). From another endpoint it is a new packet
    like any other: `other`, whom the server's policy denies, may not send the server
    errors about the client's flow (as its own address, or a link-local one out of its
    veth), nor about any other flow; the client, whom policy admits to port 80 alone, may
    send errors about its own flow only."""
    c, s, o = cast.client, cast.server, cast.other
    syn = pk.ipv6(c.ip6, s.ip6, pk.tcp(40000, 80), pk.TCP)
    assert received(datapath, s, syn)[1] == "TRACE_TO_CONTAINER"

    def error_quoting(source, dport: int) -> bytes:
        quoted = pk.ipv6(s.ip6, c.ip6, pk.tcp(80, dport, 0x12), pk.TCP)[:48]
        return pk.ipv6(source, s.ip6, _icmp6(1) + quoted, pk.ICMPV6)

    router = "2001:db8::fe"
    assert received(datapath, s, error_quoting(c.ip6, 40000))[1] == "TRACE_TO_CONTAINER"
    assert received(datapath, s, error_quoting(router, 40000))[1] == "TRACE_TO_CONTAINER"
    assert received(datapath, s, error_quoting(o.ip6, 40000)) == (pk.TC_ACT_SHOT, "DROP_POLICY")
    # Sent by other's container: its hook delivers to the server's ingress in one pass.
    assert sent(datapath, o, error_quoting(o.ip6, 40000)) == (pk.TC_ACT_SHOT, "DROP_POLICY")
    frame = pk.eth(s.spec.mac, HOST_MAC, pk.ETH_P_IPV6) + error_quoting("fe80::5", 40000)
    program = datapath.programs.to_container
    assert outcome(datapath, program, frame, s.ifindex, o.ifindex) == (
        pk.TC_ACT_SHOT,
        "DROP_POLICY",
    )
    for source in (c.ip6, router, o.ip6):
        assert received(datapath, s, error_quoting(source, 40001)) == (
            pk.TC_ACT_SHOT,
            "DROP_POLICY",
        )


def test_icmp_errors_from_another_endpoint_about_a_clients_flow_stay_out(datapath, cast):
    """The same on the client's side, where an error resets the client's socket: the
    server may send the client an error about the client's flow to it (IPv4 and IPv6);
    `other`, whom the client's policy does not know, may not."""
    c, s, o = cast.client, cast.server, cast.other
    for version in (6, 4):
        segment = pk.tcp(40002, 80)
        if version == 6:
            syn = pk.ipv6(c.ip6, s.ip6, segment, pk.TCP)
        else:
            syn = _ipv4(c.ip4, s.ip4, segment, pk.TCP)
        assert sent(datapath, c, syn, ethertype_of(syn))[0] in PASS
        for source, expected in ((s, "TRACE_TO_CONTAINER"), (o, "DROP_POLICY")):
            if version == 6:
                error = pk.ipv6(source.ip6, c.ip6, _icmp6(1, syn[:48]), pk.ICMPV6)
            else:
                icmp = bytes([3, 3, 0, 0, 0, 0, 0, 0]) + syn[:28]
                error = _ipv4(source.ip4, c.ip4, icmp, pk.ICMP)
            assert received(datapath, c, error, ethertype_of(error))[1] == expected, version


# Spoofing. -------------------------------------------------------------------------------


def test_spoofed_sources_are_dropped_by_reason(datapath, cast):
    c, s, o = cast.client, cast.server, cast.other
    tcp = pk.tcp(40000, 80)
    cases = [
        (pk.ipv6(o.ip6, s.ip6, tcp, pk.TCP), pk.ETH_P_IPV6, "DROP_INVALID_SIP6"),
        (pk.ipv6(ROUTER6, s.ip6, tcp, pk.TCP), pk.ETH_P_IPV6, "DROP_INVALID_SIP6"),
        (pk.ipv6("::", s.ip6, tcp, pk.TCP), pk.ETH_P_IPV6, "DROP_INVALID_SIP6"),
        (pk.ipv6("fe80::1", s.ip6, tcp, pk.TCP), pk.ETH_P_IPV6, "DROP_INVALID_SIP6"),
        (pk.ipv6("ff02::1", s.ip6, tcp, pk.TCP), pk.ETH_P_IPV6, "DROP_INVALID_SIP6"),
        (pk.ipv6(f"::ffff:{c.ip4}", s.ip6, tcp, pk.TCP), pk.ETH_P_IPV6, "DROP_INVALID_SIP6"),
        (_ipv4(o.ip4, s.ip4, tcp, pk.TCP), pk.ETH_P_IP, "DROP_INVALID_SIP4"),
        (_ipv4("0.0.0.0", s.ip4, tcp, pk.TCP), pk.ETH_P_IP, "DROP_INVALID_SIP4"),
        (_ipv4(ROUTER4, s.ip4, tcp, pk.TCP), pk.ETH_P_IP, "DROP_INVALID_SIP4"),
        (_ipv4("255.255.255.255", s.ip4, tcp, pk.TCP), pk.ETH_P_IP, "DROP_INVALID_SIP4"),
    ]
    for l3, ethertype, reason in cases:
        assert sent(datapath, c, l3, ethertype) == (pk.TC_ACT_SHOT, reason), l3.hex()


@pytest.mark.parametrize(
    "mac", ["ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00", "01:00:5e:00:00:01", "SERVER"]
)
def test_spoofed_source_macs_are_dropped(datapath, cast, mac):
    c, s = cast.client, cast.server
    mac = s.spec.mac if mac == "SERVER" else mac
    l3 = pk.ipv6(c.ip6, s.ip6, pk.tcp(40000, 80), pk.TCP)
    assert sent(datapath, c, l3, src_mac=mac) == (pk.TC_ACT_SHOT, "DROP_INVALID_SMAC")


def _arp(op: int, sha: str, sip, tip, hrd=1, pro=pk.ETH_P_IP, hln=6, pln=4) -> bytes:
    head = struct.pack("!HHBBH", hrd, pro, hln, pln, op)
    return head + pk.mac(sha) + ipaddress.IPv4Address(sip).packed + bytes(6) + tip.packed


def test_arp_poisoning_and_odd_sizes_are_dropped_by_reason(datapath, cast):
    c, s, o = cast.client, cast.server, cast.other
    mine = c.spec.mac
    cases = [
        (_arp(1, mine, c.ip4, ROUTER4), "TRACE_REPLY"),
        (_arp(2, mine, c.ip4, ROUTER4), "TRACE_TO_STACK"),
        (_arp(1, mine, c.ip4, c.ip4), "TRACE_TO_STACK"),  # gratuitous, its own address
        (_arp(2, mine, o.ip4, o.ip4), "DROP_INVALID_SIP4"),  # claims other's address
        (_arp(1, mine, ROUTER4, s.ip4), "DROP_INVALID_SIP4"),  # claims the router's
        (_arp(1, s.spec.mac, c.ip4, ROUTER4), "DROP_INVALID_SMAC"),
        (_arp(1, mine, c.ip4, ROUTER4, hrd=6), "DROP_INVALID_ARP"),
        (_arp(1, mine, c.ip4, ROUTER4, pro=pk.ETH_P_IPV6), "DROP_INVALID_ARP"),
        (_arp(1, mine, c.ip4, ROUTER4, hln=8), "DROP_INVALID_ARP"),
        (_arp(1, mine, c.ip4, ROUTER4, pln=16), "DROP_INVALID_ARP"),
        (_arp(1, mine, c.ip4, ROUTER4)[:27], "DROP_INVALID_PACKET"),
    ]
    for l3, reason in cases:
        assert sent(datapath, c, l3, ETH_P_ARP)[1] == reason, l3.hex()


def test_tags_left_in_the_frame_are_unknown_l3(datapath, cast):
    c, s = cast.client, cast.server
    inner = pk.ipv6(c.ip6, s.ip6, pk.tcp(40000, 80), pk.TCP)
    for tpid in (ETH_P_8021Q, 0x88A8):
        for vid in (0, 1, 4095):
            tagged = struct.pack("!HH", vid, pk.ETH_P_IPV6) + inner
            assert sent(datapath, c, tagged, tpid) == (pk.TC_ACT_SHOT, "DROP_UNKNOWN_L3")
            assert received(datapath, s, tagged, tpid) == (pk.TC_ACT_SHOT, "DROP_UNKNOWN_L3")


def test_tagged_frames_sent_for_real_are_judged_by_the_packet_inside(
    datapath, make_container, event_log
):
    """The kernel takes one VLAN tag off a frame before the tc hook (skb_vlan_untag): the
    program sees the packet inside, with its spoofing checks and policy. A second tag
    stays in the frame, an unknown L3."""
    c, s = make_container(), make_container()
    datapath.set_endpoint_policy(c.spec, False, True, {PolicyKey(s.identity, 80, pk.TCP, EGRESS)})
    head = pk.eth(HOST_MAC, c.spec.mac, ETH_P_8021Q) + struct.pack("!H", 100)
    denied = pk.ipv6(c.spec.ipv6, s.spec.ipv6, pk.tcp(40000, 81), pk.TCP)
    spoofed = pk.ipv6(s.spec.ipv6, c.spec.ipv6, pk.tcp(40000, 80), pk.TCP)
    frames = [
        head + struct.pack("!H", pk.ETH_P_IPV6) + denied,
        head + struct.pack("!H", pk.ETH_P_IPV6) + spoofed,
        head + struct.pack("!HH", ETH_P_8021Q, 200) + struct.pack("!H", pk.ETH_P_IPV6) + denied,
    ]
    send_raw(c.netns, frames)
    wanted = {
        ("DROP_POLICY", c.spec.ipv6, 81),
        ("DROP_INVALID_SIP6", s.spec.ipv6, 80),
        ("DROP_UNKNOWN_L3", None, 0),
    }
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        seen = {
            (e.reason_name, e.src, e.dport)
            for e in event_log.events
            if e.ifindex == c.ifindex and e.kind == "drop"
        }
        if wanted <= seen:
            break
        time.sleep(0.05)
    assert wanted <= seen


# Neighbour discovery and the router address. ---------------------------------------------


def test_the_router_answers_echo_and_nothing_else(datapath, cast):
    c = cast.client
    assert sent(datapath, c, pk.ipv6(c.ip6, ROUTER6, pk.icmp(128), pk.ICMPV6))[1] == "TRACE_REPLY"
    assert sent(datapath, c, _ipv4(c.ip4, ROUTER4, pk.icmp(8), pk.ICMP), pk.ETH_P_IP)[1] == (
        "TRACE_REPLY"
    )
    # Anything else to the router is a flow to the world, which the client may not open.
    for l3, ethertype in (
        (pk.ipv6(c.ip6, ROUTER6, pk.tcp(40000, 22), pk.TCP), pk.ETH_P_IPV6),
        (pk.ipv6(c.ip6, ROUTER6, pk.udp(40000, 53), pk.UDP), pk.ETH_P_IPV6),
        (pk.ipv6(c.ip6, ROUTER6, pk.icmp(129), pk.ICMPV6), pk.ETH_P_IPV6),
        (_ipv4(c.ip4, ROUTER4, pk.tcp(40000, 22), pk.TCP), pk.ETH_P_IP),
        (_ipv4(c.ip4, ROUTER4, pk.icmp(13), pk.ICMP), pk.ETH_P_IP),
    ):
        assert sent(datapath, c, l3, ethertype) == (pk.TC_ACT_SHOT, "DROP_POLICY")


def test_echo_replies_from_the_router_get_in_only_as_the_datapaths_answer(datapath, cast):
    s = cast.server
    program = datapath.programs.to_container
    for l3, ethertype in (
        (pk.ipv6(ROUTER6, s.ip6, pk.icmp(129), pk.ICMPV6), pk.ETH_P_IPV6),
        (_ipv4(ROUTER4, s.ip4, pk.icmp(0), pk.ICMP), pk.ETH_P_IP),
    ):
        frame = pk.eth(s.spec.mac, HOST_MAC, ethertype) + l3
        assert outcome(datapath, program, frame, s.ifindex)[1] == "DROP_POLICY"
        before = _counters(datapath)
        verdict, _ = loader.run_program(program, frame, s.ifindex, ingress_ifindex=s.ifindex)
        assert verdict == pk.TC_ACT_OK
        assert _counters(datapath)["TRACE_TO_CONTAINER"] == before["TRACE_TO_CONTAINER"] + 1


@pytest.mark.parametrize("options", [b"", b"\x01\x00" + bytes(6), b"\x01\xff" + bytes(6), b"\x63"])
def test_solicitations_with_bogus_options_get_a_well_formed_answer(datapath, cast, options):
    c = cast.client
    l3 = _ndisc(c.ip6, "ff02::1:ff00:1", NS, ROUTER6, options=options)
    frame = pk.eth(HOST_MAC, c.spec.mac, pk.ETH_P_IPV6) + l3
    verdict, out = loader.run_program(datapath.programs.from_container, frame, c.ifindex)
    assert verdict == pk.TC_ACT_REDIRECT and len(out) == 86
    assert out[54] == NA and out[62:78] == ROUTER6.packed
    assert pk.checksum(out[22:54] + struct.pack("!I3xB", 32, 58) + out[54:]) == 0


@pytest.mark.parametrize(
    ("type_", "target"),
    [(RA, None), (REDIRECT, "SERVER"), (NA, "SERVER"), (NA, "ROUTER")],
    ids=["router-advertisement", "redirect", "advert-for-other", "advert-for-router"],
)
def test_neighbour_discovery_a_container_may_not_send(datapath, cast, type_, target):
    c, s = cast.client, cast.server
    target = {"SERVER": s.ip6, "ROUTER": ROUTER6, None: None}[target]
    for src in (c.ip6, "fe80::1"):
        l3 = _ndisc(src, "ff02::1", type_, target)
        verdict, reason = sent(datapath, c, l3)
        assert verdict == pk.TC_ACT_SHOT and reason.startswith("DROP_NDISC"), reason


def test_neighbour_discovery_a_container_may_send(datapath, cast):
    c = cast.client
    cases = [
        (_ndisc(c.ip6, "ff02::1", NA, c.ip6), "TRACE_TO_STACK"),  # its own address
        (_ndisc("fe80::2", "fe80::1", NA, "fe80::2"), "TRACE_TO_STACK"),
        (_ndisc("fe80::2", "ff02::2", RS), "TRACE_TO_STACK"),
        (_ndisc("::", "ff02::1:ff00:1", NS, c.ip6), "TRACE_TO_STACK"),  # DAD
        (_ndisc(c.ip6, "ff02::1:ff00:1", NS, ROUTER6), "TRACE_REPLY"),
    ]
    for l3, reason in cases:
        assert sent(datapath, c, l3)[1] == reason


@pytest.mark.parametrize("type_", [NS, NA, RS, RA, REDIRECT])
def test_neighbour_discovery_that_crossed_a_router_is_not_exempt_from_policy(datapath, cast, type_):
    """NDisc is valid with hop limit 255 only (RFC 4861): one that was forwarded (by the
    host, from another container) is no NDisc and gets no free pass into an endpoint."""
    o, s = cast.other, cast.server
    l3 = _ndisc(o.ip6, s.ip6, type_, s.ip6, hop_limit=254)
    assert received(datapath, s, l3)[0] == pk.TC_ACT_SHOT
    assert sent(datapath, o, _ndisc(o.ip6, s.ip6, type_, o.ip6, hop_limit=64))[0] == (
        pk.TC_ACT_SHOT
    )


# Monitor events. ---------------------------------------------------------------------------


def test_events_of_hostile_packets_are_well_formed(datapath, cast, event_log):
    c, s = cast.client, cast.server
    known = {r.name for r in reasons.drop_reasons()}
    batch = [
        pk.ipv6(c.ip6, s.ip6, pk.tcp(40000, 81), pk.TCP),
        pk.ipv6(c.ip6, s.ip6, pk.tcp(40000, 80), pk.TCP, (pk.DSTOPTS,) * 6),
        pk.ipv6(c.ip6, s.ip6, pk.fragment_header(pk.TCP, 0, True) + pk.tcp(1, 80), 44),
        pk.ipv6(c.ip6, s.ip6, pk.tcp(40000, 80), pk.TCP)[:50],
        pk.ipv6(cast.other.ip6, s.ip6, pk.tcp(40000, 80), pk.TCP),
    ]
    expected = []
    for l3 in batch:
        expected.append(sent(datapath, c, l3)[1])
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        mine = [e for e in event_log.events if e.ifindex == c.ifindex and e.kind == "drop"]
        if len(mine) >= len(batch):
            break
        time.sleep(0.05)
    assert [e.reason_name for e in mine] == expected
    for event in mine:
        assert event.reason_name in known and event.description
        assert (event.endpoint_id, event.direction) == (c.spec.endpoint_id, EGRESS)
        assert event.src in (None, c.ip6, cast.other.ip6)


RAW_LISTEN = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.settimeout(float(sys.argv[1]))
print("ready", flush=True)
try:
    while True:
        data, peer = s.recvfrom(2048)
        if data.endswith(b"smuggled"):
            print("got", data[0], peer[0], flush=True)
except socket.timeout:
    print("done", flush=True)
"""

RAW_SEND = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
target = socket.inet_pton(socket.AF_INET6, sys.argv[2])
for type_ in (133, 134, 135, 136, 137):
    s.sendto(bytes([type_, 0, 0, 0]) + bytes(4) + target + b"smuggled", (sys.argv[1], 0))
"""


def test_neighbour_discovery_carries_nothing_past_policy(datapath, make_container):
    """A container that may not reach another sends it NDisc-typed ICMPv6 messages (with
    data) to its address: the host forwards them, and they must not get in."""
    attacker, victim = make_container(), make_container()
    datapath.set_endpoint_policy(victim.spec, True, False, set())
    received = heard(
        victim.netns,
        RAW_LISTEN,
        ["2"],
        lambda: attacker.exec(
            sys.executable, "-c", RAW_SEND, str(victim.spec.ipv6), str(attacker.spec.ipv6)
        ),
    )
    assert received == ["done", ""], received


OUTSIDE6 = ipaddress.IPv6Network("fdce:1c98::/64")


@pytest.fixture
def outside():
    """A namespace behind the host, standing for a peer outside the node: the host routes
    its packets to the endpoints (fdce:1c98::/64 exists on its veth only)."""
    name = f"dpx{os.getpid() & 0xFFFF:04x}"
    run("ip", "netns", "add", name)
    try:
        run("ip", "link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", name)
        run("ip", "addr", "add", f"{OUTSIDE6[1]}/64", "dev", name, "nodad")
        run("ip", "link", "set", name, "up")
        for args in (
            ("addr", "add", f"{OUTSIDE6[2]}/64", "dev", "eth0", "nodad"),
            ("link", "set", "eth0", "up"),
            ("-6", "route", "add", "default", "via", str(OUTSIDE6[1])),
        ):
            run("ip", "-n", name, *args)
        yield name, netlink.link_mac(netlink.link_index(name))
    finally:
        run("ip", "link", "del", name, check=False)
        run("ip", "netns", "del", name, check=False)


RAW_ECHO_LISTEN = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.settimeout(float(sys.argv[1]))
print("ready", flush=True)
try:
    while True:
        data, peer = s.recvfrom(2048)
        if data[0] == 129 and data.endswith(b"smuggled"):
            print("got", peer[0], flush=True)
except socket.timeout:
    print("done", flush=True)
"""


def test_echo_replies_from_the_router_address_are_the_datapaths_own_only(
    datapath, make_container, outside
):
    """The datapath answers a container's pings to its router itself, and those answers
    skip policy. A peer outside the node that forges the router address as its source
    must not get echo replies (with any payload) past the container's ingress policy."""
    netns, host_mac = outside
    victim = make_container()
    datapath.set_endpoint_policy(victim.spec, True, False, set())
    assert victim.ping(ROUTER6)  # the datapath's own answer still gets in
    reply = pk.with_checksums(
        pk.eth(host_mac, "02:00:00:00:98:02", pk.ETH_P_IPV6)
        + pk.ipv6(ROUTER6, victim.spec.ipv6, pk.icmp(129) + b"smuggled", pk.ICMPV6)
    )
    received = heard(victim.netns, RAW_ECHO_LISTEN, ["2"], lambda: send_raw(netns, [reply]))
    assert received == ["done", ""], received


UDP_LISTEN = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", int(sys.argv[2])))
s.settimeout(float(sys.argv[1]))
print("ready", flush=True)
try:
    while True:
        data, peer = s.recvfrom(2048)
        print("got", peer[0], data.decode(), flush=True)
except socket.timeout:
    print("done", flush=True)
"""


def test_a_local_endpoints_address_from_elsewhere_is_no_identity(datapath, make_container, outside):
    """Identity comes from the source address. A peer beyond the host (or a container on a
    Docker bridge of the same host) that forges the address of a local endpoint must not
    get that endpoint's access: only packets that came out of its veth carry it."""
    netns, host_mac = outside
    client, server = make_container(), make_container()
    datapath.set_endpoint_policy(
        server.spec, True, False, {PolicyKey(client.identity, 5353, pk.UDP, INGRESS)}
    )
    forged = pk.with_checksums(
        pk.eth(host_mac, "02:00:00:00:98:02", pk.ETH_P_IPV6)
        + pk.ipv6(client.spec.ipv6, server.spec.ipv6, pk.udp(40000, 5353, b"forged"), pk.UDP)
    )

    def real_then_forged():
        client.exec(
            sys.executable,
            "-c",
            "import socket,sys; socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)"
            ".sendto(b'real', (sys.argv[1], 5353))",
            str(server.spec.ipv6),
        )
        send_raw(netns, [forged])

    received = heard(server.netns, UDP_LISTEN, ["2", "5353"], real_then_forged)
    assert received == [f"got {client.spec.ipv6} real", "done", ""], received


def test_the_hosts_address_from_beyond_the_host_is_no_host_identity(
    datapath, make_container, outside
):
    """The host may always reach endpoints (a reserved ingress entry). A peer beyond the
    host that forges one of the host's addresses as its source is not the host: it gets
    the identity of the world, which this server does not admit."""
    netns, host_mac = outside
    server = make_container()
    host = OUTSIDE6[1]  # one of the host's own addresses
    datapath.set_cidr_identities({f"{host}/128": HOST_ID})
    try:
        datapath.set_endpoint_policy(server.spec, True, False, {PolicyKey(HOST_ID, 0, 0, INGRESS)})
        forged = pk.with_checksums(
            pk.eth(host_mac, "02:00:00:00:98:02", pk.ETH_P_IPV6)
            + pk.ipv6(host, server.spec.ipv6, pk.udp(40000, 5353, b"forged"), pk.UDP)
        )

        def ping_then_forged():
            assert server.ping(host)  # the host itself (its answer) gets in
            send_raw(netns, [forged])

        received = heard(server.netns, UDP_LISTEN, ["2", "5353"], ping_then_forged)
    finally:
        datapath.set_cidr_identities({})
    assert received == ["done", ""], received


# NAT64: what an endpoint of an IPv6-only network sends to 64:ff9b::/96 is translated to
# IPv4, and every IPv4 packet for it back to IPv6. What the translation cannot carry is
# dropped, and counted, on either side.

NAT64_PEER4 = ipaddress.IPv4Address("198.51.100.7")
NAT64_PEER6 = ipaddress.IPv6Address("64:ff9b::c633:6407")  # 198.51.100.7 under the prefix


@pytest.fixture
def v6only(datapath, new_spec):
    spec = dataclasses.replace(new_spec(), outbound=Outbound.NAT64)
    ep = Endpoint(spec, datapath.create_endpoint(spec))
    yield ep
    datapath.delete_endpoint(spec)


def _nat64_out(ep: Endpoint, payload: bytes, proto: int, exts=()) -> bytes:
    return pk.ipv6(ep.ip6, NAT64_PEER6, payload, proto, exts)


@pytest.mark.parametrize(
    ("l3", "reason"),
    [
        # extension headers: dropped rather than translated without them
        (
            lambda ep: _nat64_out(ep, pk.tcp(40000, 80), pk.TCP, (pk.HOPOPTS,)),
            "DROP_NAT64_UNSUPPORTED",
        ),
        (
            lambda ep: _nat64_out(ep, pk.udp(40000, 53), pk.UDP, (pk.DSTOPTS,)),
            "DROP_NAT64_UNSUPPORTED",
        ),
        (
            lambda ep: _nat64_out(ep, pk.tcp(40000, 80), pk.TCP, (pk.ROUTING,)),
            "DROP_NAT64_UNSUPPORTED",
        ),
        (
            lambda ep: _nat64_out(
                ep, pk.fragment_header(pk.UDP, 0, True) + pk.udp(40000, 53), pk.FRAGMENT
            ),
            "DROP_FRAG_IPV6",
        ),
        (
            lambda ep: _nat64_out(ep, pk.fragment_header(pk.UDP, 8, False) + b"x" * 8, pk.FRAGMENT),
            "DROP_FRAG_IPV6",
        ),
        # truncated upper-layer headers
        (lambda ep: _nat64_out(ep, pk.tcp(40000, 80, length=12), pk.TCP), "DROP_INVALID_PACKET"),
        (lambda ep: _nat64_out(ep, b"\x00\x35", pk.UDP), "DROP_INVALID_PACKET"),
        # an ICMPv6 error quoting less than a header, or a packet that is not the endpoint's
        (lambda ep: _nat64_out(ep, _icmp6(1, b"\x60\0\0\0"), pk.ICMPV6), "DROP_INVALID_PACKET"),
        (
            lambda ep: _nat64_out(
                ep, _icmp6(1, pk.ipv6(ep.ip6, NAT64_PEER6, pk.udp(40000, 53), pk.UDP)), pk.ICMPV6
            ),
            "DROP_NAT64_UNSUPPORTED",
        ),
        # protocols and ICMPv6 types with no IPv4 counterpart here
        (lambda ep: _nat64_out(ep, b"\0" * 16, 132), "DROP_NAT64_UNSUPPORTED"),
        (
            lambda ep: _nat64_out(
                ep, _icmp6(4, pk.ipv6(NAT64_PEER6, ep.ip6, pk.udp(53, 40000), pk.UDP)), pk.ICMPV6
            ),
            "DROP_NAT64_UNSUPPORTED",
        ),
        (lambda ep: _nat64_out(ep, _icmp6(130), pk.ICMPV6), "DROP_NAT64_UNSUPPORTED"),
        # IPv4 of its own: an IPv6-only endpoint has none to send from
        (lambda ep: _ipv4(ep.ip4, NAT64_PEER4, pk.udp(40000, 53), pk.UDP), "DROP_IPV6_ONLY"),
    ],
    ids=[
        "hop-by-hop",
        "dstopts",
        "routing",
        "first-fragment",
        "later-fragment",
        "short-tcp",
        "short-udp",
        "short-quote",
        "foreign-quote",
        "sctp",
        "param-problem",
        "mld-query",
        "own-ipv4",
    ],
)
def test_nat64_refuses_what_it_cannot_translate_out(datapath, v6only, l3, reason):
    frame = l3(v6only)
    assert sent(datapath, v6only, frame, ethertype_of(frame)) == (pk.TC_ACT_SHOT, reason)


def _nat64_in(ep: Endpoint, payload: bytes, proto: int, **fields) -> bytes:
    return _ipv4(NAT64_PEER4, ep.ip4, payload, proto, **fields)


@pytest.mark.parametrize(
    ("l3", "reason"),
    [
        (
            lambda ep: _nat64_in(ep, pk.udp(53, 40000), pk.UDP, options=b"\x01" * 4),
            "DROP_NAT64_UNSUPPORTED",
        ),
        (
            lambda ep: pk.ipv4(NAT64_PEER4, ep.ip4, pk.udp(53, 40000), pk.UDP, 0, True),
            "DROP_FRAG_IPV4",
        ),
        (lambda ep: pk.ipv4(NAT64_PEER4, ep.ip4, b"x" * 8, pk.UDP, 1), "DROP_FRAG_IPV4"),
        # UDP without checksum: IPv6 has no such thing, one would have to be computed
        (lambda ep: _nat64_in(ep, pk.udp(53, 40000), pk.UDP), "DROP_NAT64_UNSUPPORTED"),
        (lambda ep: _nat64_in(ep, b"\x00\x35\x9c", pk.UDP), "DROP_INVALID_PACKET"),
        (lambda ep: _nat64_in(ep, pk.tcp(80, 40000)[:6], pk.TCP), "DROP_INVALID_PACKET"),
        # an ICMP error quoting too little, or a packet the endpoint's IPv4 side never sent
        (
            lambda ep: _nat64_in(ep, struct.pack("!BBHI", 3, 3, 0, 0) + b"\x45\0", pk.ICMP),
            "DROP_INVALID_PACKET",
        ),
        (
            lambda ep: _nat64_in(
                ep,
                struct.pack("!BBHI", 3, 3, 0, 0)
                + _ipv4(NAT64_PEER4, "198.51.100.8", pk.udp(1, 2), pk.UDP),
                pk.ICMP,
            ),
            "DROP_NAT64_UNSUPPORTED",
        ),
        (
            lambda ep: _nat64_in(ep, struct.pack("!BBHI", 13, 0, 0, 0) + b"\0" * 12, pk.ICMP),
            "DROP_NAT64_UNSUPPORTED",
        ),
        (lambda ep: _nat64_in(ep, b"\0" * 20, 47), "DROP_NAT64_UNSUPPORTED"),
        (lambda ep: _nat64_in(ep, b"", pk.TCP, ihl=4), "DROP_INVALID_PACKET"),
    ],
    ids=[
        "options",
        "first-fragment",
        "later-fragment",
        "udp-no-checksum",
        "short-udp",
        "short-tcp",
        "short-quote",
        "foreign-quote",
        "timestamp",
        "gre",
        "ihl-4",
    ],
)
def test_nat64_refuses_what_it_cannot_translate_in(datapath, v6only, l3, reason):
    frame = pk.eth(v6only.spec.mac, HOST_MAC, pk.ETH_P_IP) + l3(v6only)
    program = datapath.programs.to_container
    assert outcome(datapath, program, frame, v6only.ifindex) == (pk.TC_ACT_SHOT, reason)


def test_nat64_policy_and_conntrack_see_the_ipv6_side(datapath, v6only):
    """Egress enforced, only world on UDP 53 allowed: the flow to 64:ff9b:: is admitted as
    IPv6 to world, its IPv4 answer gets back in as the reply of that flow, and TCP is denied."""
    datapath.set_endpoint_policy(v6only.spec, True, True, {PolicyKey(WORLD_ID, 53, pk.UDP, EGRESS)})
    query = pk.with_checksums(
        pk.eth(HOST_MAC, v6only.spec.mac, pk.ETH_P_IPV6)
        + _nat64_out(v6only, pk.udp(40000, 53, b"q"), pk.UDP)
    )
    program = datapath.programs.from_container
    assert outcome(datapath, program, query, v6only.ifindex) == (pk.TC_ACT_OK, "TRACE_TO_STACK")
    answer = pk.with_checksums(
        pk.eth(v6only.spec.mac, HOST_MAC, pk.ETH_P_IP)
        + _nat64_in(v6only, pk.udp(53, 40000, b"a"), pk.UDP)
    )
    program = datapath.programs.to_container
    assert outcome(datapath, program, answer, v6only.ifindex) == (
        pk.TC_ACT_OK,
        "TRACE_TO_CONTAINER",
    )
    denied = _nat64_out(v6only, pk.tcp(40000, 53), pk.TCP)
    assert sent(datapath, v6only, denied) == (pk.TC_ACT_SHOT, "DROP_POLICY")
    unasked = pk.with_checksums(
        pk.eth(v6only.spec.mac, HOST_MAC, pk.ETH_P_IP)
        + _nat64_in(v6only, pk.udp(53, 40001, b"a"), pk.UDP)
    )
    assert outcome(datapath, program, unasked, v6only.ifindex) == (pk.TC_ACT_SHOT, "DROP_POLICY")


# The XDP prefilter: what it cannot parse passes, counted; what it parses is judged. -----

XDP_DROP, XDP_PASS = 1, 2
DENIED_PREFIXES = ("198.51.100.0/24", "2001:db8::/32")
FROM_DENIED = {4: ("198.51.100.7", "203.0.113.1"), 6: ("2001:db8::7", "2001:db8:1::1")}


@pytest.fixture
def prefilter(datapath):
    datapath.set_prefilter(DENIED_PREFIXES)
    yield datapath.prefilter_program()
    datapath.set_prefilter([])


def xdp_outcome(datapath, program, frame: bytes) -> tuple[int, str | None]:
    """(verdict, the one counter the run moved, or None) of frame through the prefilter."""
    before = _counters(datapath)
    verdict, _ = loader.run_xdp(program, frame)
    after = _counters(datapath)
    moved = [name for name in after if after[name] != before[name]]
    assert len(moved) <= 1, f"verdict {verdict} counted {moved}"
    return verdict, moved[0] if moved else None


def _denied_l3(version: int) -> bytes:
    src, dst = FROM_DENIED[version]
    if version == 4:
        return pk.ipv4(src, dst, pk.udp(1000, 9), pk.UDP)
    return pk.ipv6(src, dst, pk.udp(1000, 9), pk.UDP)


@pytest.mark.parametrize("version", [4, 6])
def test_prefilter_passes_truncated_frames_and_drops_whole_ones(datapath, prefilter, version):
    """Cut at every length from the end of the Ethernet header (a test run's minimum): the
    frame passes unparsed until the IP header is whole, and is dropped from then on."""
    l3 = _denied_l3(version)
    header = 20 if version == 4 else 40
    for n in range(len(l3) + 1):
        frame = pk.eth(HOST_MAC, "02:00:00:00:00:02", ethertype_of(l3)) + l3[:n]
        expected = (XDP_DROP, "DROP_PREFILTER")
        if n < header:
            expected = (XDP_PASS, "TRACE_PREFILTER_UNPARSED")
        assert xdp_outcome(datapath, prefilter, frame) == expected, f"{n} bytes of IP"


@pytest.mark.parametrize(
    ("ethertype", "l3"),
    [
        (pk.ETH_P_IP, _ipv4("198.51.100.7", "203.0.113.1", pk.udp(1, 9), pk.UDP, ihl=4)),
        (pk.ETH_P_IP, _ipv4("198.51.100.7", "203.0.113.1", pk.udp(1, 9), pk.UDP, ihl=0)),
        (pk.ETH_P_IP, pk.ipv6("2001:db8::7", "2001:db8:1::1", pk.udp(1, 9), pk.UDP)),
        (pk.ETH_P_IPV6, pk.ipv4("198.51.100.7", "203.0.113.1", pk.udp(1, 9), pk.UDP) + bytes(20)),
    ],
    ids=["ihl-4", "ihl-0", "v6-as-ipv4", "v4-as-ipv6"],
)
def test_prefilter_passes_malformed_headers_counted(datapath, prefilter, ethertype, l3):
    frame = pk.eth(HOST_MAC, "02:00:00:00:00:02", ethertype) + l3
    assert xdp_outcome(datapath, prefilter, frame) == (XDP_PASS, "TRACE_PREFILTER_UNPARSED")


@pytest.mark.parametrize(
    "frame",
    [
        pk.eth(HOST_MAC, "02:00:00:00:00:02", ETH_P_8021Q)
        + struct.pack("!HH", 7, pk.ETH_P_IP)
        + pk.ipv4("198.51.100.7", "203.0.113.1", pk.udp(1, 9), pk.UDP),
        pk.eth(HOST_MAC, "02:00:00:00:00:02", ETH_P_ARP) + bytes(28),
        pk.eth(HOST_MAC, "02:00:00:00:00:02", 0),
        pk.eth(HOST_MAC, "02:00:00:00:00:02", pk.ETH_P_IP)
        + pk.ipv4("203.0.113.7", "198.51.100.1", pk.udp(1, 9), pk.UDP),
        pk.eth(HOST_MAC, "02:00:00:00:00:02", pk.ETH_P_IPV6)
        + pk.ipv6("2001:db9::7", "2001:db8::1", pk.udp(1, 9), pk.UDP),
    ],
    ids=["vlan-tagged", "arp", "no-ethertype", "allowed-v4-to-denied", "allowed-v6-to-denied"],
)
def test_prefilter_passes_what_is_not_a_denied_source_uncounted(datapath, prefilter, frame):
    """Tagged frames are not looked into (VLAN is not supported); only the source counts."""
    assert xdp_outcome(datapath, prefilter, frame) == (XDP_PASS, None)


def test_prefilter_drop_events_are_well_formed(datapath, prefilter, event_log):
    for version in (4, 6):
        l3 = _denied_l3(version)
        loader.run_xdp(prefilter, pk.eth(HOST_MAC, "02:00:00:00:00:02", ethertype_of(l3)) + l3)
        src, dst = (ipaddress.ip_address(a) for a in FROM_DENIED[version])
        event = event_log.wait_for(reason_name="DROP_PREFILTER", src=src)
        assert event is not None, f"no event for IPv{version}"
        assert (event.kind, event.dst, event.protocol) == ("drop", dst, pk.UDP)
        assert (event.endpoint_id, event.direction) == (0, INGRESS)
        assert event.description == "Source in the XDP prefilter's deny list"

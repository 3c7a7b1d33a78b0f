"""Checksum edge values through every rewrite of the datapath, frame by frame.

Rewrites adjust checksums incrementally, and edge values are where that goes wrong: a TCP
or ICMP checksum of 0 is a value like any other (only UDP over IPv4's 0 means "none"), and
a UDP checksum that comes out as 0 is sent as 0xffff (RFC 768, RFC 8200). Each path runs
crafted frames through the loaded programs (BPF_PROG_TEST_RUN): the last two bytes of the
datagram whose checksum it rewrites (the packet itself, or the one an ICMP error quotes)
are chosen so that its checksum is 0 as sent ("in") or as rewritten ("out"); "none" is a
UDP datagram without a checksum, which stays so, or is dropped where it would become IPv6
(which has no such thing). A zero-checksum UDP over IPv6 (RFC 6936, tunnels) is "none" too.
"""

import dataclasses
import ipaddress
import struct
from collections.abc import Callable
from contextlib import ExitStack

import pytest

from datapath import Backend, Datapath, Frontend, Outbound, loader, netlink
from datapath.abi import IP4, WORLD_ID, Addr4PortC, DsrKeyC

from . import packets as pk
from .conftest import make_spec
from .test_hostile import outcome
from .test_nat64 import nat64

ZERO_MAC = "00:00:00:00:00:00"
TAIL = b"\x12\x34"  # the last two bytes of a datagram when no edge is asked for
CLIENT_PORT, FRONT_PORT, BACKEND_PORT, ECHO_ID = 40000, 80, 8080, 7
ECHO_TYPE = {(4, False): 8, (4, True): 0, (6, False): 128, (6, True): 129}
L4_PROTO = {("tcp", 4): pk.TCP, ("tcp", 6): pk.TCP, ("udp", 4): pk.UDP, ("udp", 6): pk.UDP}
L4_PROTO |= {("echo", 4): pk.ICMP, ("echo", 6): pk.ICMPV6}

# Inside the test datapath's service ranges (conftest), apart from test_lb's and test_nat46's.
VIP = {4: ipaddress.ip_address("10.197.3.1"), 6: ipaddress.ip_address("fdce:1c97::3:1")}
VIP_L3 = {4: ipaddress.ip_address("10.197.3.2"), 6: ipaddress.ip_address("fdce:1c97::3:2")}
HAIRPIN = {4: ipaddress.ip_address("10.197.3.3"), 6: ipaddress.ip_address("fdce:1c97::3:3")}
VIP46, VIP46_L3 = ipaddress.ip_address("10.196.3.1"), ipaddress.ip_address("10.196.3.2")
# Addresses of the endpoints' ranges that no endpoint here has: backends the stack would get.
BACKEND = {4: ipaddress.ip_address("10.199.254.1"), 6: ipaddress.ip_address("fdce:1c99::fe01")}
SERVER4 = ipaddress.IPv4Address("203.0.113.2")  # beyond NAT64
CLIENT4 = ipaddress.IPv4Address("198.51.100.2")  # beyond NAT46 and DSR
ROUTER4 = ipaddress.IPv4Address("198.51.100.254")  # sends "fragmentation needed"
ROUTER = {4: ROUTER4, 6: ipaddress.ip_address("2001:db8::fe")}
# (type, code, MTU) of a backend's port unreachable and of a router's "too big".
ERRORS = {
    (4, "backend"): (3, 3, 0),
    (6, "backend"): (1, 4, 0),
    (4, "router"): (3, 4, 1400),
    (6, "router"): (2, 0, 1400),
}
# DSR: a published port of this node (its address 203.0.113.10) whose container lives on
# node 203.0.113.77.
FRONT4, NODE4 = ipaddress.IPv4Address("203.0.113.10"), ipaddress.IPv4Address("203.0.113.77")
REMOTE4, REMOTE_IDENTITY = ipaddress.IPv4Address("10.199.254.2"), 4321


@dataclasses.dataclass
class Ep:
    spec: object
    ifindex: int
    node_mac: str

    def addr(self, version: int):
        return self.spec.ipv6 if version == 6 else self.spec.ipv4


@dataclasses.dataclass
class Env:
    datapath: Datapath
    plain: Ep  # an ordinary endpoint: client of the services, DSR's container
    v6only: Ep  # an endpoint of an IPv6-only network: NAT64, NAT46's backend
    from_netdev: loader.Program


def _services(plain: Ep, v6only: Ep) -> list[tuple[Frontend, list[Backend]]]:
    made = []
    for version in (4, 6):
        for proto in (pk.TCP, pk.UDP):
            made.append(
                (
                    Frontend(VIP[version], FRONT_PORT, proto),
                    [Backend(BACKEND[version], BACKEND_PORT)],
                )
            )
            hairpin = Backend(plain.addr(version), BACKEND_PORT)
            made.append((Frontend(HAIRPIN[version], FRONT_PORT, proto), [hairpin]))
        made.append((Frontend(VIP_L3[version], 0, 0), [Backend(BACKEND[version], 0)]))
    for proto in (pk.TCP, pk.UDP):
        made.append((Frontend(VIP46, FRONT_PORT, proto), [Backend(v6only.spec.ipv4, BACKEND_PORT)]))
    made.append((Frontend(VIP46_L3, 0, 0), [Backend(v6only.spec.ipv4, 0)]))
    return made


def _dsr_key(container: ipaddress.IPv4Address, proto: int) -> DsrKeyC:
    """The flow client -> container that came with the DSR option, as dsr4 has it."""
    return DsrKeyC(
        saddr=IP4(*CLIENT4.packed),
        daddr=IP4(*container.packed),
        sport=CLIENT_PORT,
        dport=BACKEND_PORT,
        protocol=proto,
    )


@pytest.fixture(scope="module")
def env(datapath):
    """Two endpoints without a namespace (numbered far above conftest's), the services of
    every path, and DSR's maps: the tunnel, the remote container and the published port."""
    maps = datapath.maps
    with ExitStack() as undo:
        eps = []
        for n, outbound in ((0xFE10, Outbound.MASQUERADE), (0xFE11, Outbound.NAT64)):
            spec = dataclasses.replace(make_spec(n), outbound=outbound)
            ifindex = datapath.create_endpoint(spec)
            undo.callback(datapath.delete_endpoint, spec)
            eps.append(Ep(spec, ifindex, netlink.link_mac(ifindex)))
        plain, v6only = eps
        for service_id, (frontend, backends) in enumerate(_services(plain, v6only), 700):
            datapath.set_service(service_id, frontend, backends)
            undo.callback(datapath.delete_service, service_id, frontend)
        # The container of the published port is REMOTE4 on NODE4; replies of its flows
        # leave plain (dsr4, as from_overlay records them) from the published port.
        undo.callback(maps.set_tunnel_ifindex, maps.tunnel_ifindex())
        maps.set_tunnel_ifindex(1)  # a redirect is only a verdict in a test run
        maps.put_ipcache(REMOTE4, REMOTE_IDENTITY, NODE4)
        undo.callback(maps.delete_ipcache, REMOTE4)
        dsr4 = maps._maps["dsr4"]
        for proto in (pk.TCP, pk.UDP):
            maps.put_nodeport(FRONT4, FRONT_PORT, proto, REMOTE4, BACKEND_PORT)
            undo.callback(maps.delete_nodeport, FRONT4, FRONT_PORT, proto)
            key = _dsr_key(plain.spec.ipv4, proto)
            dsr4.update(key, Addr4PortC(addr=IP4(*FRONT4.packed), port=FRONT_PORT))
            undo.callback(dsr4.delete, key)
        yield Env(datapath, plain, v6only, datapath.overlay_programs().from_netdev)


@dataclasses.dataclass
class Run:
    sent: bytes
    name: str  # the drop reason or trace point counted
    out: bytes


def _run(env: Env, program: loader.Program, frame: bytes, ifindex: int, via: int = 0) -> Run:
    _, name = outcome(env.datapath, program, frame, ifindex, via)
    return Run(frame, name, loader.run_program(program, frame, ifindex, via)[1])


def _sent(env: Env, ep: Ep, frame: bytes) -> Run:
    return _run(env, env.datapath.programs.from_container, frame, ep.ifindex)


def _received(env: Env, ep: Ep, frame: bytes, via: int = 0) -> Run:
    """frame into ep's container, having come in on via (a local sender's veth)."""
    return _run(env, env.datapath.programs.to_container, frame, ep.ifindex, via)


def _datagram(src, dst, proto: str, sport: int, dport: int, tail: bytes, none=False, reply=False):
    """An Ethernet frame (MACs zero) of src -> dst ending in tail, with its checksums (none:
    the UDP checksum 0). An echo has the id ECHO_ID; a TCP segment is a SYN, a SYN-ACK as a
    reply."""
    version = ipaddress.ip_address(src).version
    if proto == "tcp":
        l4 = pk.tcp(sport, dport, 0x12 if reply else pk.SYN) + tail
    elif proto == "udp":
        l4 = pk.udp(sport, dport, tail)
    else:
        l4 = pk.icmp(ECHO_TYPE[version, reply], ECHO_ID) + tail
    proto_number = L4_PROTO[proto, version]
    if version == 6:
        l3 = pk.ipv6(src, dst, l4, proto_number)
    else:
        l3 = pk.ipv4(src, dst, l4, proto_number)
    ethertype = pk.ETH_P_IPV6 if version == 6 else pk.ETH_P_IP
    frame = pk.with_checksums(pk.eth(ZERO_MAC, ZERO_MAC, ethertype) + l3)
    if none:
        at = len(frame) - len(l4) + 6
        frame = frame[:at] + b"\0\0" + frame[at + 2 :]
    return frame


def _from(ep: Ep, frame: bytes) -> bytes:
    """frame as ep's container sends it: from its MAC."""
    return pk.mac(ep.node_mac) + pk.mac(ep.spec.mac) + frame[12:]


def _error(src, dst, type_: int, code: int, quoted: bytes, mtu: int = 0) -> bytes:
    """An ICMP or ICMPv6 error src -> dst quoting the frame quoted, whole."""
    version = ipaddress.ip_address(src).version
    icmp = struct.pack("!BBHHH", type_, code, 0, 0, mtu) + quoted[14:]
    if version == 6:
        frame = pk.eth(ZERO_MAC, ZERO_MAC, pk.ETH_P_IPV6) + pk.ipv6(src, dst, icmp, pk.ICMPV6)
    else:
        frame = pk.eth(ZERO_MAC, ZERO_MAC, pk.ETH_P_IP) + pk.ipv4(src, dst, icmp, pk.ICMP)
    return pk.with_checksums(frame)


# The paths: (env, proto, tail, none) -> Run. Ports: the client's CLIENT_PORT, the
# frontend's FRONT_PORT, the backend's BACKEND_PORT; an echo's id is ECHO_ID.


def _front(version: int, proto: str):
    return (VIP_L3 if proto == "echo" else VIP)[version], 0 if proto == "echo" else FRONT_PORT


def _lb(version: int) -> Callable[..., Run]:
    """A client's packet to a VIP, to the backend (from_container)."""

    def path(env: Env, proto: str, tail: bytes, none: bool) -> Run:
        vip, port = _front(version, proto)
        ep = env.plain
        frame = _datagram(ep.addr(version), vip, proto, CLIENT_PORT, port, tail, none)
        return _sent(env, ep, _from(ep, frame))

    return path


def _lb_reply(version: int) -> Callable[..., Run]:
    """The backend's reply, from the VIP into the client (to_container)."""

    def path(env: Env, proto: str, tail: bytes, none: bool) -> Run:
        _lb(version)(env, proto, TAIL, False)
        port = 0 if proto == "echo" else BACKEND_PORT
        ep = env.plain
        frame = _datagram(
            BACKEND[version], ep.addr(version), proto, port, CLIENT_PORT, tail, none, True
        )
        return _received(env, ep, frame)

    return path


def _lb_error(version: int) -> Callable[..., Run]:
    """The backend's port unreachable about a client's flow to a VIP, quoting the client's
    packet whole, as the backend got it, into the client: about the flow to the VIP."""

    def path(env: Env, proto: str, tail: bytes, none: bool) -> Run:
        _lb(version)(env, proto, TAIL, False)
        ep = env.plain
        port = 0 if proto == "echo" else BACKEND_PORT
        quoted = _datagram(ep.addr(version), BACKEND[version], proto, CLIENT_PORT, port, tail, none)
        type_, code, _ = ERRORS[version, "backend"]
        return _received(env, ep, _error(BACKEND[version], ep.addr(version), type_, code, quoted))

    return path


def _hairpin(version: int) -> Callable[..., Run]:
    """A client's packet to a VIP whose backend it is: from the VIP to itself."""

    def path(env: Env, proto: str, tail: bytes, none: bool) -> Run:
        ep = env.plain
        frame = _datagram(
            ep.addr(version), HAIRPIN[version], proto, CLIENT_PORT, FRONT_PORT, tail, none
        )
        return _sent(env, ep, _from(ep, frame))

    return path


def _hairpin_reply(version: int) -> Callable[..., Run]:
    """Its reply to the VIP: from the VIP to itself again."""

    def path(env: Env, proto: str, tail: bytes, none: bool) -> Run:
        _hairpin(version)(env, proto, TAIL, False)
        ep = env.plain
        frame = _datagram(
            ep.addr(version), HAIRPIN[version], proto, BACKEND_PORT, CLIENT_PORT, tail, none, True
        )
        return _sent(env, ep, _from(ep, frame))

    return path


def _nat64_out(env: Env, proto: str, tail: bytes, none: bool) -> Run:
    """IPv6 to the prefix leaves as IPv4."""
    ep = env.v6only
    frame = _datagram(ep.spec.ipv6, nat64(SERVER4), proto, CLIENT_PORT, FRONT_PORT, tail, none)
    return _sent(env, ep, _from(ep, frame))


def _nat64_in(env: Env, proto: str, tail: bytes, none: bool) -> Run:
    """IPv4 to the NAT64 side arrives as IPv6."""
    ep = env.v6only
    frame = _datagram(SERVER4, ep.spec.ipv4, proto, FRONT_PORT, CLIENT_PORT, tail, none, True)
    return _received(env, ep, frame)


def _nat46_in(env: Env, proto: str, tail: bytes, none: bool) -> Run:
    """An IPv4 client's packet to a NAT46 VIP arrives at the backend as IPv6."""
    vip, port = (VIP46_L3, 0) if proto == "echo" else (VIP46, FRONT_PORT)
    frame = _datagram(CLIENT4, vip, proto, CLIENT_PORT, port, tail, none)
    return _received(env, env.v6only, frame)


def _nat46_reply(env: Env, proto: str, tail: bytes, none: bool) -> Run:
    """The backend's reply leaves as IPv4 from the VIP."""
    _nat46_in(env, proto, TAIL, False)
    ep = env.v6only
    port = 0 if proto == "echo" else BACKEND_PORT
    frame = _datagram(ep.spec.ipv6, nat64(CLIENT4), proto, port, CLIENT_PORT, tail, none, True)
    return _sent(env, ep, _from(ep, frame))


def _nat64_error_in(env: Env, proto: str, tail: bytes, none: bool) -> Run:
    """Port unreachable for what the NAT64 side sent arrives as ICMPv6, quoting what the
    endpoint sent."""
    ep = env.v6only
    quoted = _datagram(ep.spec.ipv4, SERVER4, proto, CLIENT_PORT, FRONT_PORT, tail, none)
    return _received(env, ep, _error(SERVER4, ep.spec.ipv4, 3, 3, quoted))


def _nat64_error_out(env: Env, proto: str, tail: bytes, none: bool) -> Run:
    """The endpoint's port unreachable leaves as ICMP, quoting what its NAT64 side got."""
    ep = env.v6only
    quoted = _datagram(
        nat64(SERVER4), ep.spec.ipv6, proto, FRONT_PORT, CLIENT_PORT, tail, none, True
    )
    return _sent(env, ep, _from(ep, _error(ep.spec.ipv6, nat64(SERVER4), 1, 4, quoted)))


def _nat46_error_in(env: Env, proto: str, tail: bytes, none: bool) -> Run:
    """ "Fragmentation needed" for a reply from the VIP reaches the backend as "packet too
    big", quoting what the backend sent."""
    _nat46_in(env, proto, TAIL, False)
    quoted = _datagram(VIP46, CLIENT4, proto, FRONT_PORT, CLIENT_PORT, tail, none, True)
    return _received(env, env.v6only, _error(ROUTER4, VIP46, 3, 4, quoted, 1400))


def _nat46_error_out(env: Env, proto: str, tail: bytes, none: bool) -> Run:
    """The backend's port unreachable leaves from the VIP, quoting what the client sent."""
    _nat46_in(env, proto, TAIL, False)
    ep = env.v6only
    quoted = _datagram(nat64(CLIENT4), ep.spec.ipv6, proto, CLIENT_PORT, BACKEND_PORT, tail, none)
    return _sent(env, ep, _from(ep, _error(ep.spec.ipv6, nat64(CLIENT4), 1, 4, quoted)))


def _dsr_in(env: Env, proto: str, tail: bytes, none: bool) -> Run:
    """A client's packet to a published port whose container is on another node goes into
    the tunnel translated, the option added (from_netdev)."""
    frame = _datagram(CLIENT4, FRONT4, proto, CLIENT_PORT, FRONT_PORT, tail, none)
    return _run(env, env.from_netdev, frame, 1)


def _dsr_reply(env: Env, proto: str, tail: bytes, none: bool) -> Run:
    """The container's reply to a flow that came with the option leaves from the frontend."""
    ep = env.plain
    frame = _datagram(ep.spec.ipv4, CLIENT4, proto, BACKEND_PORT, CLIENT_PORT, tail, none, True)
    return _sent(env, ep, _from(ep, frame))


def _router_echo(version: int) -> Callable[..., Run]:
    """The endpoint's echo request to its router address comes back as the reply."""

    def path(env: Env, proto: str, tail: bytes, none: bool) -> Run:
        ep = env.plain
        router = ep.spec.router6 if version == 6 else ep.spec.router4
        return _sent(env, ep, _from(ep, _datagram(ep.addr(version), router, proto, 0, 0, tail)))

    return path


# name: (path, where the rewritten checksum is: the packet's or the quoted one's, protocols)
PATHS = {
    "lb4": (_lb(4), "packet", ("tcp", "udp")),
    "lb4-reply": (_lb_reply(4), "packet", ("tcp", "udp")),
    "lb6": (_lb(6), "packet", ("tcp", "udp", "echo")),
    "lb6-reply": (_lb_reply(6), "packet", ("tcp", "udp", "echo")),
    "lb4-error": (_lb_error(4), "whole quote", ("tcp", "udp")),
    "lb6-error": (_lb_error(6), "whole quote", ("tcp", "udp", "echo")),
    "hairpin4": (_hairpin(4), "packet", ("tcp", "udp")),
    "hairpin4-reply": (_hairpin_reply(4), "packet", ("tcp", "udp")),
    "hairpin6": (_hairpin(6), "packet", ("tcp", "udp")),
    "hairpin6-reply": (_hairpin_reply(6), "packet", ("tcp", "udp")),
    "nat64-out": (_nat64_out, "packet", ("tcp", "udp", "echo")),
    "nat64-in": (_nat64_in, "packet", ("tcp", "udp", "echo")),
    "nat46-in": (_nat46_in, "packet", ("tcp", "udp", "echo")),
    "nat46-reply": (_nat46_reply, "packet", ("tcp", "udp", "echo")),
    "nat64-error-in": (_nat64_error_in, "quote", ("udp", "echo")),
    "nat64-error-out": (_nat64_error_out, "quote", ("udp", "echo")),
    "nat46-error-in": (_nat46_error_in, "quote", ("udp",)),
    "nat46-error-out": (_nat46_error_out, "quote", ("udp",)),
    "dsr-in": (_dsr_in, "packet", ("tcp", "udp")),
    "dsr-reply": (_dsr_reply, "packet", ("tcp", "udp")),
    "router4-echo": (_router_echo(4), "packet", ("echo",)),
    "router6-echo": (_router_echo(6), "packet", ("echo",)),
}
# UDP without a checksum where it would become IPv6: refused.
DROPS = {
    ("nat64-in", "none"): "DROP_NAT64_UNSUPPORTED",
    ("nat46-in", "none"): "DROP_NAT64_UNSUPPORTED",
}
CASES = [
    (path, proto, edge)
    for path, (_, _, protos) in PATHS.items()
    for proto in protos
    for edge in ("in", "out", "none")
    if edge != "none" or proto == "udp"
]


def _checked(frame: bytes, where: str, tail: bytes) -> bytes:
    """The datagram whose checksum the path rewrites, as an Ethernet frame: frame, or the
    one its ICMP error quotes: whole ("whole quote"), or completed with tail (the errors
    keep 8 bytes of it)."""
    if where == "packet":
        return frame
    l4 = 54 if frame[12:14] == b"\x86\xdd" else 14 + (frame[14] & 0xF) * 4
    quote = frame[l4 + 8 :]
    version = quote[0] >> 4
    head = 40 if version == 6 else (quote[0] & 0xF) * 4
    ethertype = pk.ETH_P_IPV6 if version == 6 else pk.ETH_P_IP
    if where == "whole quote":
        return pk.eth(ZERO_MAC, ZERO_MAC, ethertype) + quote
    return pk.eth(ZERO_MAC, ZERO_MAC, ethertype) + quote[: head + 8] + tail


@pytest.mark.parametrize(("path", "proto", "edge"), CASES, ids=["-".join(c) for c in CASES])
def test_rewritten_checksums_hold_at_their_edge_values(env, path, proto, edge):
    run_path, where, _ = PATHS[path]
    tail, udp = TAIL, proto == "udp"
    if edge == "in":
        tail = pk.zeroing_tail(_checked(run_path(env, proto, TAIL, False).sent, where, TAIL))
    elif edge == "out":
        base = run_path(env, proto, TAIL, False)
        assert not base.name.startswith("DROP_"), base.name
        tail = pk.zeroing_tail(_checked(base.out, where, TAIL))
    run = run_path(env, proto, tail, edge == "none")
    sent = _checked(run.sent, where, tail)
    if edge == "in":  # as crafted: a checksum of 0, sent as 0xffff by UDP
        assert pk.l4_checksum_field(sent) == (0xFFFF if udp else 0), sent.hex()
    if (path, edge) in DROPS:
        assert run.name == DROPS[path, edge]
        return
    assert not run.name.startswith("DROP_"), run.name
    out = _checked(run.out, where, tail)
    if edge == "out":  # as crafted: the rewritten datagram's checksum comes out as 0
        assert pk.zeroing_tail(out) == tail, out.hex()
    if where != "packet" or out[12:14] == b"\x08\x00":
        assert pk.checksums_valid(run.out), run.out.hex()  # IPv4 header, ICMP error
    if edge == "none":
        assert pk.l4_checksum_field(out) == 0, out.hex()
        return
    assert pk.checksums_valid(out), out.hex()
    if udp and edge == "out":
        assert pk.l4_checksum_field(out) == 0xFFFF, out.hex()


# (version, protocol, source of the error, bytes of upper layer quoted: None for all)
ERROR_CASES = [
    (version, proto, source, quoted_l4)
    for version in (4, 6)
    for proto in ("tcp", "udp", "udp0", *(("echo",) if version == 6 else ()))
    for source in ("backend", "router")
    for quoted_l4 in (None, 8)
]
# Quoted up to the TCP checksum, and no further.
ERROR_CASES += [(version, "tcp", "backend", 18) for version in (4, 6)]


@pytest.mark.parametrize(
    ("version", "proto", "source", "quoted_l4"),
    ERROR_CASES,
    ids=[f"{v}-{p}-{s}-{n or 'whole'}" for v, p, s, n in ERROR_CASES],
)
def test_an_error_about_a_service_flow_reaches_the_client_about_the_vip(
    env, version, proto, source, quoted_l4
):
    """As Linux's conntrack NAT: the quote becomes the client's packet to the VIP byte for
    byte (header and upper-layer checksums as the client computed them, a UDP/IPv4 0 kept
    as "none"), and the backend's own error comes from the VIP, a router's from the router;
    the ICMP checksum holds. Cut to the header and 8 bytes (or 18 of TCP: up to its
    checksum), the quote is that much of it."""
    ep, none = env.plain, proto == "udp0"  # a UDP checksum of 0
    proto = "udp" if none else proto
    vip, port = _front(version, proto)
    backend_port = 0 if proto == "echo" else BACKEND_PORT
    _sent(env, ep, _from(ep, _datagram(ep.addr(version), vip, proto, CLIENT_PORT, port, TAIL)))
    sent = _datagram(ep.addr(version), vip, proto, CLIENT_PORT, port, TAIL, none)
    quoted = _datagram(
        ep.addr(version), BACKEND[version], proto, CLIENT_PORT, backend_port, TAIL, none
    )
    head = 40 if version == 6 else 20
    keep = len(quoted) if quoted_l4 is None else 14 + head + quoted_l4
    src = BACKEND[version] if source == "backend" else ROUTER[version]
    type_, code, mtu = ERRORS[version, source]
    error = _error(src, ep.addr(version), type_, code, quoted[:keep], mtu)
    run = _received(env, ep, error)
    assert run.name == "TRACE_TO_CONTAINER", run.name
    out = run.out
    assert pk.checksums_valid(out), out.hex()  # the outer IPv4 header, the ICMP checksum
    l4 = 54 if version == 6 else 34
    outer_src = out[22:38] if version == 6 else out[26:30]
    assert ipaddress.ip_address(outer_src) == (vip if source == "backend" else src)
    assert out[l4 : l4 + 2] == error[l4 : l4 + 2]  # type and code
    assert out[l4 + 8 :] == sent[14:keep], out.hex()


# (version, who sends the error): an endpoint of this node, one of another node (ipcache).
BYSTANDERS = [(4, "local"), (6, "local"), (4, "remote")]


@pytest.mark.parametrize(("version", "sender"), BYSTANDERS, ids=[f"{v}-{s}" for v, s in BYSTANDERS])
def test_an_error_about_a_service_flow_from_another_endpoint_is_no_backends(env, version, sender):
    """Only the backend (the peer the client's packet went to, after translation) and
    routers (no endpoint) speak about a service flow: another endpoint's error quoting the
    client's packet to the backend is a new packet, not turned into the VIP's about the VIP.
    Admitted, it goes in as it came; the client's ingress policy, enforced, drops it."""
    ep, datapath = env.plain, env.datapath
    vip, port = _front(version, "udp")
    _sent(env, ep, _from(ep, _datagram(ep.addr(version), vip, "udp", CLIENT_PORT, port, TAIL)))
    quoted = _datagram(ep.addr(version), BACKEND[version], "udp", CLIENT_PORT, BACKEND_PORT, TAIL)
    src = REMOTE4 if sender == "remote" else env.v6only.addr(version)
    via = 0 if sender == "remote" else env.v6only.ifindex
    type_, code, _ = ERRORS[version, "backend"]
    error = _error(src, ep.addr(version), type_, code, quoted)
    run = _received(env, ep, error, via)
    assert run.name == "TRACE_TO_CONTAINER", run.name
    assert run.out[14:] == error[14:], run.out.hex()
    datapath.set_endpoint_policy(ep.spec, True, False, set())
    try:
        assert _received(env, ep, error, via).name == "DROP_POLICY"
    finally:
        datapath.set_endpoint_policy(ep.spec, False, False, set())


def test_an_error_from_another_node_is_a_routers(env):
    """A node's own address is in the ipcache as the world's (set_remote_node), no endpoint:
    its error about a service flow (a "fragmentation needed" on the way to a backend of
    that node) is related, and comes to the client about the VIP."""
    ep, maps = env.plain, env.datapath.maps
    vip, port = _front(4, "udp")
    maps.put_ipcache(NODE4, WORLD_ID, NODE4)
    try:
        _sent(env, ep, _from(ep, _datagram(ep.addr(4), vip, "udp", CLIENT_PORT, port, TAIL)))
        quoted = _datagram(ep.addr(4), BACKEND[4], "udp", CLIENT_PORT, BACKEND_PORT, TAIL)
        type_, code, mtu = ERRORS[4, "router"]
        run = _received(env, ep, _error(NODE4, ep.addr(4), type_, code, quoted, mtu))
        assert run.name == "TRACE_TO_CONTAINER", run.name
        assert run.out[14 + 8 + 20 + 16 : 14 + 8 + 20 + 20] == vip.packed, run.out.hex()
    finally:
        maps.delete_ipcache(NODE4)

"""NAT46: IPv4 clients beyond the endpoints reach IPv6-only endpoints through an IPv4 VIP.

The service's backend slots are the backends' NAT64 sides (the control plane maps the IPv6
backends a user names to them). Real traffic comes from a "client" namespace behind a veth
of the host (198.51.100.0/24, a documentation range) and from the host itself; then frame
by frame (BPF_PROG_TEST_RUN): the translation both ways and hostile inputs.
"""

import dataclasses
import ipaddress
import itertools
import os
import struct
import subprocess
import sys

import pytest

from datapath import INGRESS, WORLD_ID, Backend, Frontend, Outbound, PolicyKey, loader, netlink

from . import packets as pk
from . import traffic
from .conftest import run
from .test_hostile import outcome
from .test_nat64 import BULK, BULK_BYTES, BULK_PORT, TX_CSUM_OFF, _capture, _checked, nat64

TAG = f"{os.getpid() & 0xFFFF:04x}"
CLIENT_NS = f"dpn-{TAG}-client"
HOST_LINK = f"dpn{TAG}"  # not the endpoints' prefix
HOST_SIDE, CLIENT4 = ipaddress.IPv4Address("198.51.100.1"), ipaddress.IPv4Address("198.51.100.2")
VIP_NET4 = ipaddress.IPv4Network("10.196.0.0/24")  # test_lb has 10.197.0.0/24
TCP, UDP = 6, 17
TCP_PORT, UDP_PORT = 8080, 5353

_vips = itertools.count(10)
_ids = itertools.count(400)


@pytest.fixture(scope="module")
def client(datapath):
    """A namespace behind a veth of the host; its default route is the host."""
    run("ip", "netns", "add", CLIENT_NS)
    try:
        run("ip", "link", "add", HOST_LINK, "type", "veth", "peer", "name", f"dpn{TAG}c")
        run("ip", "link", "set", f"dpn{TAG}c", "netns", CLIENT_NS)
        run("ip", "-n", CLIENT_NS, "link", "set", f"dpn{TAG}c", "name", "eth0")
        run("ip", "addr", "add", f"{HOST_SIDE}/24", "dev", HOST_LINK)
        run("ip", "-n", CLIENT_NS, "addr", "add", f"{CLIENT4}/24", "dev", "eth0")
        for prefix in (["ip"], ["ip", "-n", CLIENT_NS]):
            run(*prefix, "link", "set", "eth0" if len(prefix) > 1 else HOST_LINK, "up")
        run("ip", "-n", CLIENT_NS, "link", "set", "lo", "up")
        run("ip", "-n", CLIENT_NS, "route", "add", "default", "via", str(HOST_SIDE))
        yield CLIENT_NS
    finally:
        run("ip", "link", "del", HOST_LINK, check=False)
        run("ip", "netns", "del", CLIENT_NS, check=False)


@pytest.fixture(scope="module")
def vip_route(datapath):
    datapath.add_unreachable_route(str(VIP_NET4))
    yield
    datapath.remove_unreachable_route(str(VIP_NET4))


class Services:
    """Fresh VIPs and service ids; every service set is deleted after the test."""

    def __init__(self, datapath):
        self.datapath = datapath
        self.made: dict[int, Frontend] = {}

    @staticmethod
    def vip() -> ipaddress.IPv4Address:
        return VIP_NET4[next(_vips)]

    def set(self, frontend: Frontend, backends: list[Backend]) -> int:
        ids = {fe: sid for sid, fe in self.made.items()}
        service_id = ids.get(frontend) or next(_ids)
        self.datapath.set_service(service_id, frontend, backends)
        self.made[service_id] = frontend
        return service_id

    def delete(self, frontend: Frontend) -> None:
        service_id = next(sid for sid, fe in self.made.items() if fe == frontend)
        self.datapath.delete_service(service_id, frontend)
        del self.made[service_id]

    def cleanup(self) -> None:
        for service_id, frontend in self.made.items():
            self.datapath.delete_service(service_id, frontend)


@pytest.fixture
def services(datapath, vip_route):
    made = Services(datapath)
    yield made
    made.cleanup()


def _named_v6only(make_container):
    """An IPv6-only container (no IPv4 route, as Join leaves it) with named TCP and UDP
    servers on [::]."""
    c = make_container(outbound=Outbound.NAT64)
    c.ip("-4", "route", "flush", "dev", "eth0")
    for port, proto in ((TCP_PORT, "tcp"), (UDP_PORT, "udp")):
        c.servers.append(traffic.serve_named(c.netns, port, proto, c.netns))
    return c


@pytest.fixture
def backends(make_container):
    return [_named_v6only(make_container) for _ in range(2)]


def _sides(containers, port: int) -> list[Backend]:
    return [Backend(c.spec.ipv4, port) for c in containers]


def _serve_both(services, vip, containers) -> None:
    services.set(Frontend(vip, 80, TCP), _sides(containers, TCP_PORT))
    services.set(Frontend(vip, 53, UDP), _sides(containers, UDP_PORT))


def _ask_from_host(addr, port: int, proto: str, count: int) -> list:
    cmd = [sys.executable, "-c", traffic.ASK_CLIENT, str(addr), str(port), proto, str(count), "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return [tuple(line.split()) if line != "fail" else None for line in done.stdout.splitlines()]


def _route(vip) -> str:
    return run("ip", "-4", "route", "show", "exact", f"{vip}/32").stdout.strip()


@pytest.mark.parametrize("proto,port", [("tcp", 80), ("udp", 53)])
def test_a_client_beyond_the_host_reaches_both_backends_through_the_vip(
    services, client, backends, proto, port
):
    vip = services.vip()
    _serve_both(services, vip, backends)
    answers = traffic.ask(client, vip, port, proto, count=16)
    assert None not in answers, answers
    assert {a[0] for a in answers} == {b.netns for b in backends}
    for _, seen, source in answers:
        # The backend saw the client's IPv6 form; the client, answers from the VIP.
        assert ipaddress.ip_address(seen) == nat64(CLIENT4)
        assert ipaddress.ip_address(source) == vip


@pytest.mark.parametrize("proto,port", [("tcp", 80), ("udp", 53)])
def test_the_host_reaches_the_vip(services, backends, proto, port):
    vip = services.vip()
    _serve_both(services, vip, backends)
    answers = _ask_from_host(vip, port, proto, count=8)
    assert None not in answers, answers
    for _, seen, source in answers:
        assert ipaddress.ip_address(seen) in ipaddress.ip_network("64:ff9b::/96")
        assert ipaddress.ip_address(source) == vip


# test_nat64's bulk server, listening on IPv6 as an IPv6-only container does.
BULK6 = BULK.replace("socket.AF_INET, socket.SOCK_STREAM", "socket.AF_INET6, socket.SOCK_STREAM")
BULK6 = BULK6.replace('s.bind(("0.0.0.0",', 's.bind(("::",')


def test_a_large_transfer_through_another_backends_veth_is_intact(
    datapath, services, client, make_container
):
    """The host routes the VIP to one backend's veth, the flow's backend is the other one:
    16 MiB both ways, hashed end to end, every TCP checksum checked where it arrives."""
    assert BULK6.count("AF_INET6") == 1 and '"::"' in BULK6
    first, second = (_named_v6only(make_container) for _ in range(2))
    vip = services.vip()
    services.set(Frontend(vip, 80, TCP), [Backend(second.spec.ipv4, BULK_PORT)])
    netlink.replace_gateway_route(f"{vip}/32", str(first.spec.ipv4), first.ifindex)
    for netns in (client, second.netns):
        run("ip", "netns", "exec", netns, sys.executable, "-c", TX_CSUM_OFF, "eth0")
    server = subprocess.Popen(
        traffic.netns_cmd(
            second.netns, sys.executable, "-c", BULK6, "server", str(BULK_BYTES), str(BULK_PORT)
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout.readline().strip() == "ready"
        redirected = datapath.trace_counts()["TRACE_TO_LXC"]
        with (
            _capture(second.netns, "eth0", 6) as into_backend,
            _capture(client, "eth0", 4) as into_client,
        ):
            done = run(
                "ip",
                "netns",
                "exec",
                client,
                sys.executable,
                "-c",
                BULK,
                "client",
                str(BULK_BYTES),
                str(vip),
                "80",
            )
            assert done.stdout.split() == ["upload", "ok", "download", "ok"], done.stdout
            assert datapath.trace_counts()["TRACE_TO_LXC"] - redirected >= 100
            for proc in (into_backend, into_client):
                checked, bad = _checked(proc)
                assert checked >= 100 and not bad, (checked, bad)
    finally:
        traffic.stop(server)


def test_port_unreachable_of_a_backend_reaches_the_clients_socket(services, client, backends):
    """The backend's ICMPv6 error comes back from the VIP, quoting the flow to the VIP."""
    vip = services.vip()
    services.set(Frontend(vip, 53, UDP), _sides(backends, UDP_PORT + 1))
    probe = ["ip", "netns", "exec", client, sys.executable, "-c", traffic.UDP_PROBE]
    assert run(*probe, str(vip), "53").stdout.strip() == "refused"


def test_ping_to_an_l3_only_frontend(services, client, backends):
    vip = services.vip()
    services.set(Frontend(vip, 0, 0), _sides(backends, 0))
    done = run("ip", "netns", "exec", client, "ping", "-c", "3", "-W", "2", str(vip), check=False)
    assert done.returncode == 0 and f"from {vip}" in done.stdout, done.stdout


def test_a_container_client_reaches_the_vip_without_the_host_route(
    services, make_container, backends
):
    """Its from-container hook translates the VIP to a NAT64 side like any IPv4 backend;
    the backend sees it as the IPv6 form of its own address."""
    vip = services.vip()
    _serve_both(services, vip, backends)
    caller = make_container()
    answers = traffic.ask(caller.netns, vip, 80, "tcp", count=8)
    assert None not in answers, answers
    assert {ipaddress.ip_address(seen) for _, seen, _ in answers} == {nat64(caller.spec.ipv4)}
    assert {ipaddress.ip_address(source) for _, _, source in answers} == {vip}


def test_the_vip_is_routed_to_a_backend_while_every_backend_is_a_nat64_side(
    services, make_container, backends
):
    vip = services.vip()
    frontend = Frontend(vip, 80, TCP)
    services.set(frontend, _sides(backends, TCP_PORT))
    assert f"via {backends[0].spec.ipv4} dev {backends[0].spec.host_ifname}" in _route(vip)
    services.set(frontend, _sides(backends[1:], TCP_PORT))
    assert f"via {backends[1].spec.ipv4} dev {backends[1].spec.host_ifname}" in _route(vip)
    dual_stack = make_container()
    services.set(frontend, [*_sides(backends, TCP_PORT), Backend(dual_stack.spec.ipv4, 80)])
    assert _route(vip) == ""
    services.set(frontend, _sides(backends, TCP_PORT))
    services.delete(frontend)
    assert _route(vip) == ""


def test_a_removed_backend_gets_no_new_flow_and_the_route_follows(services, client, backends):
    vip = services.vip()
    _serve_both(services, vip, backends)
    session = traffic.Session(client, vip, 80)
    try:
        first = session.request("x").split()[0]
        kept = next(b for b in backends if b.netns != first)
        services.set(Frontend(vip, 80, TCP), _sides([kept], TCP_PORT))
        answers = traffic.ask(client, vip, 80, "tcp", count=8)
        assert {a[0] for a in answers if a} == {kept.netns} and None not in answers
        assert f"dev {kept.spec.host_ifname}" in _route(vip)
        # The flow under way keeps its backend.
        assert session.request("y").split()[0] == first
    finally:
        session.close()


def test_ingress_policy_sees_the_client_as_its_ipv4_identity(datapath, services, client, backends):
    """The client has the identity of its IPv4 address (a CIDR's, else the world's), as
    NAT64 addresses do."""
    vip = services.vip()
    _serve_both(services, vip, backends)
    cidr_id = 0x01000046
    datapath.set_cidr_identities({"198.51.100.0/24": cidr_id})
    try:
        for b in backends:
            datapath.set_endpoint_policy(b.spec, True, False, {PolicyKey(WORLD_ID, 0, 0, INGRESS)})
        before = datapath.drop_counts()["DROP_POLICY"]
        assert traffic.ask(client, vip, 80, "tcp", count=2, timeout=1) == [None, None]
        assert datapath.drop_counts()["DROP_POLICY"] > before
        for b in backends:
            allowed = {PolicyKey(cidr_id, TCP_PORT, TCP, INGRESS)}
            datapath.set_endpoint_policy(b.spec, True, False, allowed)
        assert None not in traffic.ask(client, vip, 80, "tcp", count=4)
        assert traffic.ask(client, vip, 53, "udp", count=1, timeout=1) == [None]
    finally:
        datapath.set_cidr_identities({})


# Frame by frame: two IPv6-only endpoints made with the datapath only.

CLIENT_PORT = 40000


@dataclasses.dataclass
class Side:
    spec: object
    ifindex: int
    node_mac: str


@pytest.fixture
def sides(datapath, new_spec):
    made = []
    for _ in range(2):
        spec = dataclasses.replace(new_spec(), outbound=Outbound.NAT64)
        ifindex = datapath.create_endpoint(spec)
        made.append(Side(spec, ifindex, netlink.link_mac(ifindex)))
    yield made
    for side in made:
        datapath.delete_endpoint(side.spec)


def _to_vip(side: Side, vip, payload: bytes, proto: int) -> bytes:
    frame = pk.eth(side.spec.mac, side.node_mac, pk.ETH_P_IP)
    return pk.with_checksums(frame + pk.ipv4(CLIENT4, vip, payload, proto))


def _into(datapath, side: Side, frame: bytes) -> tuple[str, int, bytes]:
    verdict, name = outcome(datapath, datapath.programs.to_container, frame, side.ifindex)
    _, out = loader.run_program(datapath.programs.to_container, frame, side.ifindex)
    return name, verdict, out


def test_a_frame_for_this_backend_becomes_ipv6_and_its_reply_comes_from_the_vip(
    datapath, services, sides
):
    vip = services.vip()
    services.set(Frontend(vip, 80, TCP), [Backend(sides[0].spec.ipv4, TCP_PORT)])
    name, _, out = _into(datapath, sides[0], _to_vip(sides[0], vip, pk.tcp(CLIENT_PORT, 80), TCP))
    assert name == "TRACE_TO_CONTAINER"
    assert struct.unpack("!H", out[12:14])[0] == pk.ETH_P_IPV6 and pk.checksums_valid(out)
    assert out[22:38] == nat64(CLIENT4).packed and out[38:54] == sides[0].spec.ipv6.packed
    assert struct.unpack("!HH", out[54:58]) == (CLIENT_PORT, TCP_PORT)
    reply = pk.with_checksums(
        pk.eth(sides[0].node_mac, sides[0].spec.mac, pk.ETH_P_IPV6)
        + pk.ipv6(sides[0].spec.ipv6, nat64(CLIENT4), pk.tcp(TCP_PORT, CLIENT_PORT, 0x12), TCP)
    )
    back = loader.run_program(datapath.programs.from_container, reply, sides[0].ifindex)[1]
    assert struct.unpack("!H", back[12:14])[0] == pk.ETH_P_IP and pk.checksums_valid(back)
    assert back[26:30] == vip.packed and back[30:34] == CLIENT4.packed
    assert struct.unpack("!HH", back[34:38]) == (80, CLIENT_PORT)


def test_a_frame_for_another_backend_goes_on_to_its_veth_unchanged(datapath, services, sides):
    vip = services.vip()
    services.set(Frontend(vip, 80, TCP), [Backend(sides[1].spec.ipv4, TCP_PORT)])
    frame = _to_vip(sides[0], vip, pk.tcp(CLIENT_PORT, 80), TCP)
    name, verdict, out = _into(datapath, sides[0], frame)
    assert (name, verdict) == ("TRACE_TO_LXC", pk.TC_ACT_REDIRECT)
    assert out[:12] == pk.mac(sides[1].spec.mac) + pk.mac(sides[1].node_mac)
    assert out[12:] == frame[12:]


def test_fragmentation_needed_for_the_vip_reaches_the_backend_as_packet_too_big(
    datapath, services, sides
):
    """A router on the way to the client cannot forward a reply from the VIP: its error, for
    the VIP, reaches the flow's backend as "packet too big" quoting what it sent, through
    whichever backend's veth the host routes the VIP to."""
    vip = services.vip()
    services.set(Frontend(vip, 80, TCP), [Backend(sides[0].spec.ipv4, TCP_PORT)])
    _into(datapath, sides[0], _to_vip(sides[0], vip, pk.tcp(CLIENT_PORT, 80), TCP))
    reply = pk.with_checksums(
        pk.eth("00:00:00:00:00:00", "00:00:00:00:00:00", pk.ETH_P_IP)
        + pk.ipv4(vip, CLIENT4, pk.tcp(80, CLIENT_PORT, 0x10), TCP)
    )[14:]
    error = struct.pack("!BBHHH", 3, 4, 0, 0, 1400) + reply
    router = ipaddress.IPv4Address("198.51.100.254")
    frame = pk.with_checksums(
        pk.eth(sides[1].spec.mac, sides[1].node_mac, pk.ETH_P_IP)
        + pk.ipv4(router, vip, error, pk.ICMP)
    )
    name, verdict, out = _into(datapath, sides[1], frame)
    assert (name, verdict) == ("TRACE_TO_LXC", pk.TC_ACT_REDIRECT)
    assert out[12:] == frame[12:]
    name, _, out = _into(datapath, sides[0], frame)
    assert name == "TRACE_TO_CONTAINER"
    assert struct.unpack("!H", out[12:14])[0] == pk.ETH_P_IPV6 and pk.checksums_valid(out)
    assert out[22:38] == nat64(router).packed and out[38:54] == sides[0].spec.ipv6.packed
    icmp6 = out[54:]
    assert (icmp6[0], icmp6[1], struct.unpack("!I", icmp6[4:8])[0]) == (2, 0, 1420)
    quoted = icmp6[8:]
    assert quoted[8:24] == sides[0].spec.ipv6.packed and quoted[24:40] == nat64(CLIENT4).packed
    assert struct.unpack("!HH", quoted[40:44]) == (TCP_PORT, CLIENT_PORT)


def _with_option(frame: bytes) -> bytes:
    """The IPv4 header grown by one 4-byte option (end of options list)."""
    head = bytearray(frame[14:34])
    head[0] = 0x46
    head[2:4] = struct.pack("!H", len(frame) - 14 + 4)
    return pk.with_checksums(frame[:14] + bytes(head) + b"\0\0\0\0" + frame[34:])


@pytest.mark.parametrize(
    "case,want",
    [
        ("not a vip", "DROP_NAT46_NO_SERVICE"),
        ("no backend", "DROP_NO_SERVICE_BACKEND"),
        ("backend not a nat64 side", "DROP_NO_SERVICE_BACKEND"),
        ("fragment", "DROP_FRAG_IPV4"),
        ("truncated tcp", "DROP_INVALID_PACKET"),
        ("ip options", "DROP_NAT64_UNSUPPORTED"),
        ("other protocol", "DROP_NAT46_NO_SERVICE"),
        ("error about no flow", "DROP_NAT46_NO_SERVICE"),
        ("error quoting options", "DROP_NAT64_UNSUPPORTED"),
    ],
)
def test_hostile_frames_to_a_vip(datapath, services, sides, case, want):
    vip = services.vip()
    backend = Backend(sides[0].spec.ipv4, TCP_PORT)
    if case == "no backend":
        backend = None
    elif case == "backend not a nat64 side":
        backend = Backend(ipaddress.IPv4Address("10.199.255.254"), TCP_PORT)
    services.set(Frontend(vip, 80, TCP), [backend] if backend else [])
    to = ipaddress.IPv4Address("10.196.1.1") if case == "not a vip" else vip
    syn = pk.tcp(CLIENT_PORT, 80)
    frame = _to_vip(sides[0], to, syn, TCP)
    if case == "fragment":
        frame = pk.with_checksums(
            pk.eth(sides[0].spec.mac, sides[0].node_mac, pk.ETH_P_IP)
            + pk.ipv4(CLIENT4, vip, syn, TCP, more=True)
        )
    elif case == "truncated tcp":
        short = pk.eth(sides[0].spec.mac, sides[0].node_mac, pk.ETH_P_IP)
        frame = pk.with_checksums(short + pk.ipv4(CLIENT4, vip, syn[:10], TCP), l4=False)
    elif case == "ip options":
        frame = _with_option(frame)
    elif case == "other protocol":
        gre = pk.ipv4(CLIENT4, vip, b"\0" * 20, 47)
        frame = pk.with_checksums(frame[:14] + gre, l4=False)
    elif case.startswith("error"):
        zero = "00:00:00:00:00:00"
        quoted = pk.ipv4(vip, CLIENT4, pk.tcp(80, CLIENT_PORT + 1, 0x10), TCP)
        quoted = pk.with_checksums(pk.eth(zero, zero, pk.ETH_P_IP) + quoted)
        if case == "error quoting options":
            quoted = _with_option(quoted)
        error = struct.pack("!BBHHH", 3, 4, 0, 0, 1400) + quoted[14:]
        frame = pk.with_checksums(frame[:14] + pk.ipv4(CLIENT4, vip, error, pk.ICMP))
    name, verdict, _ = _into(datapath, sides[0], frame)
    assert name == want and verdict == pk.TC_ACT_SHOT

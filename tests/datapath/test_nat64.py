"""NAT64: an endpoint of an IPv6-only network reaches IPv4 through 64:ff9b::/96.

First the translation itself, frame by frame (BPF_PROG_TEST_RUN: headers, checksums, ICMP
and the packet an ICMP error quotes); then real traffic from a container without any IPv4
route to servers in the "world" namespace of test_outbound (203.0.113.0/24, which has no
route to the endpoints: an answer comes back only through the masquerade of the translated
flow), and to "far" behind a 1280-byte link for packet too big.
"""

import contextlib
import dataclasses
import ipaddress
import struct
import subprocess
import sys
from collections.abc import Iterator

import pytest

from datapath import EGRESS, INGRESS, WORLD_ID, Outbound, PolicyKey, loader, netlink

from . import packets as pk
from . import test_outbound as outside
from . import traffic
from .conftest import run
from .test_hostile import outcome

# The outside of test_outbound, as fixtures of this module too.
world = outside.world
world_server = outside.world_server

PREFIX = ipaddress.IPv6Network(loader.DEFAULT_NAT64_PREFIX)
SERVER4 = ipaddress.IPv4Address("203.0.113.2")
BULK_PORT = 8090
BULK_BYTES = 16 << 20


def nat64(addr4) -> ipaddress.IPv6Address:
    """The IPv6 form of an IPv4 address under the prefix (RFC 6052, /96)."""
    return ipaddress.IPv6Address(int(PREFIX.network_address) | int(ipaddress.IPv4Address(addr4)))


@dataclasses.dataclass
class Translator:
    """A NAT64 endpoint made with the datapath only (no namespace), for frame tests."""

    spec: object
    ifindex: int
    node_mac: str


@pytest.fixture
def translator(datapath, new_spec):
    spec = dataclasses.replace(new_spec(), outbound=Outbound.NAT64)
    ifindex = datapath.create_endpoint(spec)
    yield Translator(spec, ifindex, netlink.link_mac(ifindex))
    datapath.delete_endpoint(spec)


def from_container(datapath, ep: Translator, l3: bytes) -> tuple[str, bytes]:
    """(counted reason or trace point, frame as left) of l3 sent by ep's container."""
    ethertype = pk.ETH_P_IPV6 if l3[0] >> 4 == 6 else pk.ETH_P_IP
    frame = pk.eth(ep.node_mac, ep.spec.mac, ethertype) + l3
    _, name = outcome(datapath, datapath.programs.from_container, frame, ep.ifindex)
    _, out = loader.run_program(datapath.programs.from_container, frame, ep.ifindex)
    return name, out


def to_container(datapath, ep: Translator, l3: bytes) -> tuple[str, bytes]:
    frame = pk.eth(ep.spec.mac, ep.node_mac, pk.ETH_P_IP) + l3
    _, name = outcome(datapath, datapath.programs.to_container, frame, ep.ifindex)
    _, out = loader.run_program(datapath.programs.to_container, frame, ep.ifindex)
    return name, out


def _ethertype(frame: bytes) -> int:
    return struct.unpack("!H", frame[12:14])[0]


def _v6_out(ep: Translator, payload: bytes, proto: int) -> bytes:
    return pk.with_checksums(
        pk.eth("00:00:00:00:00:00", "00:00:00:00:00:00", pk.ETH_P_IPV6)
        + pk.ipv6(ep.spec.ipv6, nat64(SERVER4), payload, proto)
    )[14:]


def _v4_in(ep: Translator, payload: bytes, proto: int, src=SERVER4) -> bytes:
    frame = pk.eth("00:00:00:00:00:00", "00:00:00:00:00:00", pk.ETH_P_IP)
    return pk.with_checksums(frame + pk.ipv4(src, ep.spec.ipv4, payload, proto))[14:]


@pytest.mark.parametrize(
    "proto,payload",
    [
        (pk.TCP, pk.tcp(40000, 80)),
        (pk.UDP, pk.udp(40000, 53, b"query")),
        (pk.ICMPV6, pk.icmp(128) + b"echo data!"),
    ],
)
def test_ipv6_to_the_prefix_leaves_as_ipv4(datapath, translator, proto, payload):
    name, out = from_container(datapath, translator, _v6_out(translator, payload, proto))
    assert name == "TRACE_TO_STACK"
    assert _ethertype(out) == pk.ETH_P_IP
    assert pk.checksums_valid(out), out.hex()
    assert out[26:30] == translator.spec.ipv4.packed and out[30:34] == SERVER4.packed
    assert out[23] == (pk.ICMP if proto == pk.ICMPV6 else proto)
    assert struct.unpack("!H", out[16:18])[0] == len(out) - 14
    if proto == pk.ICMPV6:
        assert out[34] == 8 and out[38:] == payload[4:]  # echo request, same id, seq, data
    else:
        assert out[34:38] == payload[:4]  # the ports


@pytest.mark.parametrize(
    "proto,payload",
    [
        (pk.TCP, pk.tcp(80, 40000, flags=0x12)),
        (pk.UDP, pk.udp(53, 40000, b"answer")),
        (pk.ICMP, pk.icmp(0) + b"echo data!"),
    ],
)
def test_ipv4_to_the_endpoint_arrives_as_ipv6(datapath, translator, proto, payload):
    name, out = to_container(datapath, translator, _v4_in(translator, payload, proto))
    assert name == "TRACE_TO_CONTAINER"
    assert _ethertype(out) == pk.ETH_P_IPV6
    assert pk.checksums_valid(out), out.hex()
    assert out[22:38] == nat64(SERVER4).packed and out[38:54] == translator.spec.ipv6.packed
    assert out[20] == (pk.ICMPV6 if proto == pk.ICMP else proto)
    assert struct.unpack("!H", out[18:20])[0] == len(out) - 54
    if proto == pk.ICMP:
        assert out[54] == 129 and out[58:] == payload[4:]


def _tcp_whose_checksum_is_zero(ep: Translator) -> bytes:
    """An IPv4 TCP segment whose two payload bytes make its checksum come out as 0."""
    header = pk.tcp(80, 40000, flags=0x18)
    checksum = struct.unpack("!H", _v4_in(ep, header + b"\0\0", pk.TCP)[36:38])[0]
    packet = _v4_in(ep, header + struct.pack("!H", checksum), pk.TCP)
    assert packet[36:38] == b"\0\0"
    return packet


def test_a_tcp_segment_with_checksum_zero_arrives_with_a_valid_checksum(datapath, translator):
    """0 is an ordinary TCP checksum (only UDP's 0 means none), so translation must change it."""
    name, out = to_container(datapath, translator, _tcp_whose_checksum_is_zero(translator))
    assert name == "TRACE_TO_CONTAINER"
    assert pk.checksums_valid(out), out.hex()


def _quoted_udp(src, dst, proto_version: int, sport=40000, dport=9) -> bytes:
    """A whole UDP datagram with no payload, as sent: the error quotes all of it, so the
    quoted checksum can be checked."""
    zero = "00:00:00:00:00:00"
    if proto_version == 4:
        frame = pk.eth(zero, zero, pk.ETH_P_IP) + pk.ipv4(
            src, dst, pk.udp(sport, dport, b""), pk.UDP
        )
    else:
        frame = pk.eth(zero, zero, pk.ETH_P_IPV6) + pk.ipv6(
            src, dst, pk.udp(sport, dport, b""), pk.UDP
        )
    return pk.with_checksums(frame)[14:]


def _quote_checksum_valid(quoted: bytes) -> bool:
    ethertype = pk.ETH_P_IP if quoted[0] >> 4 == 4 else pk.ETH_P_IPV6
    return pk.checksums_valid(pk.eth("00:00:00:00:00:00", "00:00:00:00:00:00", ethertype) + quoted)


@pytest.mark.parametrize(
    "type_,code,mtu,want",
    [
        (3, 3, 0, (1, 4, 0)),  # port unreachable
        (3, 4, 1280, (2, 0, 1300)),  # fragmentation needed -> packet too big, 20 bytes more
        (11, 0, 0, (3, 0, 0)),  # time exceeded in transit
    ],
)
def test_icmp_errors_come_back_as_icmpv6(datapath, translator, type_, code, mtu, want):
    quoted = _quoted_udp(translator.spec.ipv4, SERVER4, 4)
    error = struct.pack("!BBHHH", type_, code, 0, 0, mtu) + quoted
    name, out = to_container(datapath, translator, _v4_in(translator, error, pk.ICMP))
    assert name == "TRACE_TO_CONTAINER"
    assert pk.checksums_valid(out), out.hex()
    icmp6 = out[54:]
    assert (icmp6[0], icmp6[1], struct.unpack("!I", icmp6[4:8])[0]) == want
    inner = icmp6[8:]
    assert inner[8:24] == translator.spec.ipv6.packed and inner[24:40] == nat64(SERVER4).packed
    assert _quote_checksum_valid(inner), inner.hex()


def test_icmpv6_error_of_the_container_leaves_as_icmp(datapath, translator):
    quoted = _quoted_udp(nat64(SERVER4), translator.spec.ipv6, 6, sport=53, dport=40000)
    error = struct.pack("!BBHI", 1, 4, 0, 0) + quoted
    name, out = from_container(datapath, translator, _v6_out(translator, error, pk.ICMPV6))
    assert name == "TRACE_TO_STACK"
    assert pk.checksums_valid(out), out.hex()
    assert (out[34], out[35]) == (3, 3)
    inner = out[42:]
    assert inner[12:16] == SERVER4.packed and inner[16:20] == translator.spec.ipv4.packed
    assert pk.checksum(inner[:20]) == 0
    assert _quote_checksum_valid(inner), inner.hex()


# Real traffic: a container whose only routes are IPv6 ones (as Join gives it).


@pytest.fixture
def v6only(make_container):
    a = make_container(outbound=Outbound.NAT64)
    a.ip("-4", "route", "flush", "dev", "eth0")
    return a


def test_tcp_and_udp_reach_ipv4_through_the_prefix(v6only, world_server):
    host4, world4, _ = outside.HOST_WORLD[4]
    for proto in ("tcp", "udp"):
        answers = traffic.ask(v6only.netns, nat64(world4), outside.PORT, proto, count=2)
        # world saw the host's IPv4 address; the container, the server's IPv6 form.
        assert answers == [("world", host4, str(nat64(world4)))] * 2, proto


def test_ping_through_the_prefix(v6only, world):
    assert v6only.ping(nat64(outside.HOST_WORLD[4][1]))


def test_the_nat64_side_needs_no_address_in_the_container(v6only, world_server):
    """Docker 28's --ipv4=false puts no IPv4 on the interface: the host still delivers the
    answers for the NAT64 side (a permanent neighbour entry, no ARP)."""
    v6only.ip("addr", "del", f"{v6only.spec.ipv4}/32", "dev", "eth0")
    host4, world4, _ = outside.HOST_WORLD[4]
    answers = traffic.ask(v6only.netns, nat64(world4), outside.PORT, "tcp", count=1)
    assert answers == [("world", host4, str(nat64(world4)))]


def test_the_container_has_no_ipv4_of_its_own(v6only, world):
    assert not v6only.ping(outside.HOST_WORLD[4][1], timeout=1)


def test_port_unreachable_reaches_the_socket(v6only, world):
    probe = [sys.executable, "-c", traffic.UDP_PROBE, str(nat64(outside.HOST_WORLD[4][1]))]
    assert v6only.exec(*probe, str(outside.PORT + 1)).stdout.strip() == "refused"


def test_time_exceeded_reaches_the_container(v6only, world):
    """Hop limit 1 becomes TTL 1, which the host will not forward: its "time exceeded"
    comes back translated, from the host's address in the prefix."""
    target = nat64(outside.HOST_WORLD[4][1])
    done = v6only.exec("ping", "-6", "-c", "1", "-W", "2", "-t", "1", str(target), check=False)
    assert "Time exceeded" in done.stdout, done.stdout
    assert f"From {PREFIX.network_address}" in done.stdout, done.stdout


def test_packet_too_big_reaches_the_container(v6only, world):
    """far is behind a 1280-byte IPv4 link: world's "fragmentation needed" comes back as
    "packet too big" for 1300 bytes (the IPv6 packet is 20 bytes larger)."""
    far = nat64(outside.WORLD_FAR[4][1])
    v6only.exec("ping", "-6", "-c", "2", "-W", "1", "-M", "do", "-s", "1400", str(far), check=False)
    route = v6only.exec("ip", "-6", "route", "get", str(far)).stdout
    assert "mtu 1300" in route, route
    assert v6only.ping(far, "-s", "1200")


def test_egress_policy_decides_translated_flows(datapath, v6only, world):
    """Egress enforced with nothing allowed: the translated flow is denied; allowing the
    world (whose address 203.0.113.2 is, as 64:ff9b::203.0.113.2) lets it through."""
    before = datapath.drop_counts()["DROP_POLICY"]
    datapath.set_endpoint_policy(v6only.spec, False, True, set())
    assert not v6only.ping(nat64(outside.HOST_WORLD[4][1]), timeout=1)
    assert datapath.drop_counts()["DROP_POLICY"] > before
    datapath.set_endpoint_policy(v6only.spec, False, True, {PolicyKey(WORLD_ID, 0, 0, EGRESS)})
    assert v6only.ping(nat64(outside.HOST_WORLD[4][1]))


def test_an_ipv4_cidr_identity_covers_its_nat64_form(datapath, v6only, world):
    """A NAT64 address has the identity of the IPv4 address it stands for."""
    cidr_id = 0x01000042
    datapath.set_cidr_identities({"203.0.113.0/25": cidr_id})
    try:
        datapath.set_endpoint_policy(v6only.spec, False, True, {PolicyKey(cidr_id, 0, 0, EGRESS)})
        assert v6only.ping(nat64(outside.HOST_WORLD[4][1]))
        datapath.set_endpoint_policy(v6only.spec, False, True, {PolicyKey(WORLD_ID, 0, 0, EGRESS)})
        assert not v6only.ping(nat64(outside.HOST_WORLD[4][1]), timeout=1)
    finally:
        datapath.set_cidr_identities({})


def test_a_local_endpoint_reaching_the_nat64_side_keeps_its_identity(datapath, make_container):
    """Another container sending IPv4 to an IPv6-only endpoint's NAT64 side arrives as
    64:ff9b::<its address> with its own identity, not the world's: network isolation and
    ingress policy hold."""
    a = make_container(outbound=Outbound.NAT64)
    b = make_container()
    datapath.set_endpoint_policy(a.spec, True, False, {PolicyKey(WORLD_ID, 0, 0, INGRESS)})
    assert not b.ping(a.spec.ipv4, timeout=1)
    datapath.set_endpoint_policy(a.spec, True, False, {PolicyKey(b.identity, 0, 0, INGRESS)})
    assert b.ping(a.spec.ipv4)


# Both ends check every byte (sha256) and the checksums of what arrives (a raw capture,
# with the sender's checksum offload off so that the wire carries complete checksums).
BULK = r"""
import hashlib, socket, sys
mode, size = sys.argv[1], int(sys.argv[2])
block = bytes(range(256)) * 256

def send(conn):
    digest, left = hashlib.sha256(), size
    while left:
        chunk = block[: min(left, len(block))]
        conn.sendall(chunk); digest.update(chunk); left -= len(chunk)
    return digest.hexdigest()

def receive(conn):
    digest, left = hashlib.sha256(), size
    while left:
        data = conn.recv(min(left, 65536))
        if not data:
            raise SystemExit("short")
        digest.update(data); left -= len(data)
    return digest.hexdigest()

if mode == "server":
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[3]))); s.listen(1)
    print("ready", flush=True)
    conn, _ = s.accept()
    got = receive(conn)
    conn.sendall(got.encode()); print(send(conn), flush=True)
    conn.close()
else:
    conn = socket.create_connection((sys.argv[3], int(sys.argv[4])), timeout=30)
    sent = send(conn)
    echoed = b""
    while len(echoed) < 64:
        echoed += conn.recv(64 - len(echoed))
    print("upload", "ok" if echoed.decode() == sent else "bad", flush=True)
    print("download", receive(conn) == sent and "ok" or "bad", flush=True)
"""

# Verify TCP checksums of packets captured on a device: "checked N bad M".
CAPTURE = r"""
import socket, struct, sys, time
dev, family, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])

def csum(data):
    if len(data) % 2: data += b"\0"
    total = sum(struct.unpack(f"!{len(data)//2}H", data))
    while total >> 16: total = (total & 0xffff) + (total >> 16)
    return ~total & 0xffff

s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind((dev, 0)); s.settimeout(0.5)
print("ready", flush=True)
end = time.monotonic() + seconds
checked = 0
while checked < count and time.monotonic() < end:
    try:
        frame, addr = s.recvfrom(70000)
    except TimeoutError:
        continue
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    bad = False
    if family == 6 and frame[12:14] == b"\x86\xdd" and frame[20] == 6:
        seg = frame[54:54 + struct.unpack("!H", frame[18:20])[0]]
        pseudo = frame[22:54] + struct.pack("!I3xB", len(seg), 6)
    elif family == 4 and frame[12:14] == b"\x08\x00" and frame[23] == 6:
        ihl = (frame[14] & 15) * 4
        bad = csum(frame[14:14 + ihl]) != 0
        seg = frame[14 + ihl:14 + struct.unpack("!H", frame[16:18])[0]]
        pseudo = frame[26:34] + struct.pack("!BBH", 0, 6, len(seg))
    else:
        continue
    checked += 1
    if bad or csum(pseudo + seg):
        print("bad", frame[:96].hex(), flush=True)
print("checked", checked, flush=True)
"""

TX_CSUM_OFF = r"""
import fcntl, socket, struct, sys
ETHTOOL_STXCSUM, SIOCETHTOOL = 0x17, 0x8946
value = struct.pack("II", ETHTOOL_STXCSUM, 0)
import array
buf = array.array("B", value)
ifreq = struct.pack("16sQ", sys.argv[1].encode(), buf.buffer_info()[0])
fcntl.ioctl(socket.socket(), SIOCETHTOOL, ifreq)
"""


@contextlib.contextmanager
def _capture(netns: str, dev: str, family: int) -> Iterator[subprocess.Popen]:
    cmd = traffic.netns_cmd(netns, sys.executable, "-c", CAPTURE, dev, str(family), "400", "20")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        traffic.stop(proc)


def _checked(proc: subprocess.Popen) -> tuple[int, list[str]]:
    """How many TCP frames the capture checked, and the start of each bad one in hex."""
    lines = proc.communicate(timeout=30)[0].splitlines()
    return int(lines[-1].split()[1]), [line.split()[1] for line in lines[:-1]]


def test_large_transfer_both_ways_is_intact(v6only, world):
    for netns, dev in ((outside.WORLD, "eth0"), (v6only.netns, "eth0")):
        run("ip", "netns", "exec", netns, sys.executable, "-c", TX_CSUM_OFF, dev)
    server = subprocess.Popen(
        traffic.netns_cmd(
            outside.WORLD, sys.executable, "-c", BULK, "server", str(BULK_BYTES), str(BULK_PORT)
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout.readline().strip() == "ready"
        with (
            _capture(v6only.netns, "eth0", 6) as into_container,
            _capture(outside.WORLD, "eth0", 4) as into_world,
        ):
            world4 = outside.HOST_WORLD[4][1]
            client = v6only.exec(
                sys.executable,
                "-c",
                BULK,
                "client",
                str(BULK_BYTES),
                str(nat64(world4)),
                str(BULK_PORT),
            )
            assert client.stdout.split() == ["upload", "ok", "download", "ok"], client.stdout
            for proc in (into_container, into_world):
                checked, bad = _checked(proc)
                assert checked >= 100 and not bad, (checked, bad)
    finally:
        traffic.stop(server)

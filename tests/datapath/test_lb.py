"""Load balancing of service VIPs with real TCP/UDP/ICMP between namespaces: spreading,
reverse NAT, stickiness, backend removal, hairpin, policy, restart, and the map API."""

import ipaddress
import itertools
import struct
import sys

import pytest

from datapath import INGRESS, Backend, Datapath, DatapathError, Frontend, PolicyKey, loader

from . import packets, traffic
from .conftest import NET4, NET6, run

# VIPs live here; the host has unreachable routes for both during these tests.
VIP_NET6 = ipaddress.IPv6Network("fdce:1c97::/64")
VIP_NET4 = ipaddress.IPv4Network("10.197.0.0/24")
TCP, UDP = 6, 17
LB_MAPS = ("lb_services", "lb_slots", "lb_revnat", "lb_flows")

_vips = itertools.count(10)
_ids = itertools.count(100)


@pytest.fixture(scope="module")
def vip_routes(datapath):
    for net in (VIP_NET6, VIP_NET4):
        datapath.add_unreachable_route(str(net))
    yield
    for net in (VIP_NET6, VIP_NET4):
        datapath.remove_unreachable_route(str(net))


class Services:
    """Fresh VIPs and service ids; every service set is deleted after the test."""

    def __init__(self, datapath):
        self.datapath = datapath
        self.made: dict[int, Frontend] = {}

    def vip(self, version: int):
        n = next(_vips)
        return VIP_NET6[n] if version == 6 else VIP_NET4[n]

    def set(self, frontend: Frontend, backends: list[Backend], service_id: int | None = None):
        if service_id is None:
            ids = {fe: sid for sid, fe in self.made.items()}
            service_id = ids.get(frontend) or next(_ids)
        self.datapath.set_service(service_id, frontend, backends)
        self.made[service_id] = frontend
        return service_id

    def cleanup(self) -> None:
        for service_id, frontend in self.made.items():
            self.datapath.delete_service(service_id, frontend)


@pytest.fixture
def services(datapath, vip_routes):
    made = Services(datapath)
    yield made
    made.cleanup()


def _named(container, port: int, proto: str = "tcp") -> None:
    """A server on port answering with the container's netns name."""
    container.servers.append(traffic.serve_named(container.netns, port, proto, container.netns))


def _ask(container, addr, port, proto="tcp", count=1, timeout=2.0):
    return traffic.ask(container.netns, addr, port, proto, count, timeout)


def _names(answers) -> set[str]:
    return {answer[0] for answer in answers if answer is not None}


def _lb_snapshot(datapath) -> dict[str, dict[bytes, bytes]]:
    """Raw contents of the load balancer maps."""
    snapshot = {}
    for name in LB_MAPS:
        pinned = datapath.maps._maps[name]
        snapshot[name] = {bytes(key): bytes(pinned.lookup(key)) for key in list(pinned.keys())}
    return snapshot


@pytest.mark.parametrize("version", [6, 4])
def test_vip_spreads_new_flows_and_answers_come_from_it(
    datapath, make_container, services, version
):
    client = make_container()
    backends = [make_container() for _ in range(3)]
    for backend in backends:
        _named(backend, 8080)
        _named(backend, 5353, "udp")
    vip = services.vip(version)
    tcp_id = services.set(
        Frontend(vip, 80, TCP), [Backend(b.addr(version), 8080) for b in backends]
    )
    services.set(Frontend(vip, 53, UDP), [Backend(b.addr(version), 5353) for b in backends])

    answers = _ask(client, vip, 80, count=50)
    assert None not in answers
    assert _names(answers) == {b.netns for b in backends}
    assert {seen for _, seen, _ in answers} == {str(client.addr(version))}  # no SNAT

    answers = _ask(client, vip, 53, "udp", count=30)
    assert None not in answers
    assert _names(answers) == {b.netns for b in backends}
    assert {ipaddress.ip_address(source) for _, _, source in answers} == {vip}

    flows = [
        e
        for e in datapath.ct_entries()
        if (e.endpoint_id, e.direction, e.protocol) == (client.spec.endpoint_id, 1, TCP)
    ]
    assert flows and all(e.rev_nat_index == tcp_id and e.dport == 8080 for e in flows)
    assert {e.dst for e in flows} == {b.addr(version) for b in backends}


def test_flow_keeps_its_backend_removed_backends_get_no_new_flows(
    datapath, make_container, services, event_log
):
    client, one, two = make_container(), make_container(), make_container()
    for backend in (one, two):
        _named(backend, 8080)
    frontend = Frontend(services.vip(6), 80, TCP)
    services.set(frontend, [Backend(one.spec.ipv6, 8080), Backend(two.spec.ipv6, 8080)])
    session = client.session(frontend.address, 80)
    try:
        first = session.request("a").split()[0]
        kept, other = (one, two) if first == one.netns else (two, one)

        services.set(frontend, [Backend(other.spec.ipv6, 8080)])
        assert session.request("b").split()[0] == kept.netns
        assert _names(_ask(client, frontend.address, 80, count=20)) == {other.netns}

        services.set(frontend, [])
        before = datapath.drop_counts()["DROP_NO_SERVICE_BACKEND"]
        assert _ask(client, frontend.address, 80, timeout=1) == [None]
        assert datapath.drop_counts()["DROP_NO_SERVICE_BACKEND"] > before
        event = event_log.wait_for(reason_name="DROP_NO_SERVICE_BACKEND", dst=frontend.address)
        assert event is not None and event.dport == 80
        assert event.description == "Service has no backend"
        assert session.request("c").split()[0] == kept.netns  # flows under way go on
    finally:
        session.close()


def test_reply_of_a_service_gone_is_dropped_naming_its_sender(
    datapath, make_container, services, event_log
):
    """A reply skips the source's identity lookup into the client; its drop event (no
    reverse NAT entry left) still carries the backend's identity."""
    client, backend = make_container(), make_container()
    _named(backend, 8080)
    frontend = Frontend(services.vip(6), 80, TCP)
    service_id = services.set(frontend, [Backend(backend.spec.ipv6, 8080)])
    session = client.session(frontend.address, 80)
    try:
        assert session.request("a").split()[0] == backend.netns
        datapath.maps.delete_revnat(service_id)
        session.proc.stdin.write("b\n")
        session.proc.stdin.flush()
        event = event_log.wait_for(
            reason_name="DROP_NO_REV_NAT", endpoint_id=client.spec.endpoint_id
        )
        assert event is not None and event.src == backend.spec.ipv6
        assert (event.src_identity, event.dst_identity) == (backend.identity, client.identity)
    finally:
        session.close()


@pytest.mark.parametrize("version", [6, 4])
def test_l3_only_frontend_keeps_ports_and_answers_pings(
    datapath, make_container, services, version
):
    client, backend = make_container(), make_container()
    _named(backend, 8080)
    _named(backend, 5353, "udp")
    vip = services.vip(version)
    services.set(Frontend(vip, 0, 0), [Backend(backend.addr(version), 0)])

    assert _names(_ask(client, vip, 8080)) == {backend.netns}
    ((name, _, source),) = _ask(client, vip, 5353, "udp")
    assert name == backend.netns and ipaddress.ip_address(source) == vip
    ping = client.exec("ping", "-c", "1", "-W", "2", str(vip), check=False)
    assert ping.returncode == 0 and f"from {vip}" in ping.stdout
    assert "DIFFERENT ADDRESS" not in ping.stdout


@pytest.mark.parametrize("version", [6, 4])
def test_port_unreachable_of_a_backend_reaches_the_clients_socket(
    make_container, services, version
):
    """The backend has no listener: its ICMP error comes back from the VIP, quoting the
    flow to the VIP, so the client's socket, connected to the VIP, is refused."""
    client, backend = make_container(), make_container()
    vip = services.vip(version)
    services.set(Frontend(vip, 53, UDP), [Backend(backend.addr(version), 5353)])
    probe = traffic.netns_cmd(client.netns, sys.executable, "-c", traffic.UDP_PROBE)
    assert run(*probe, str(vip), "53").stdout.strip() == "refused"


@pytest.mark.parametrize("version", [6, 4])
def test_hairpin_client_reaches_itself_through_the_vip(datapath, make_container, services, version):
    client, other = make_container(), make_container()
    for container in (client, other):
        _named(container, 8080)
        _named(container, 5353, "udp")
    vip = services.vip(version)
    tcp = Frontend(vip, 80, TCP)
    services.set(tcp, [Backend(client.addr(version), 8080)])
    services.set(Frontend(vip, 53, UDP), [Backend(client.addr(version), 5353)])

    ((name, seen, _),) = _ask(client, vip, 80)
    assert name == client.netns and ipaddress.ip_address(seen) == vip  # SNAT to the VIP
    ((name, _, source),) = _ask(client, vip, 53, "udp")
    assert name == client.netns and ipaddress.ip_address(source) == vip
    loop = [e for e in datapath.ct_entries() if e.loopback and e.dst == client.addr(version)]
    assert loop and all(e.src == vip for e in loop)

    services.set(tcp, [Backend(client.addr(version), 8080), Backend(other.addr(version), 8080)])
    answers = _ask(client, vip, 80, count=30)
    assert None not in answers
    assert _names(answers) == {client.netns, other.netns}


def test_backend_ingress_policy_applies_through_the_vip(
    datapath, make_container, services, event_log
):
    denied, allowed, backend = make_container(), make_container(), make_container()
    _named(backend, 8080)
    datapath.set_endpoint_policy(
        backend.spec, True, False, {PolicyKey(allowed.identity, 8080, TCP, INGRESS)}
    )
    frontend = Frontend(services.vip(4), 80, TCP)
    services.set(frontend, [Backend(backend.spec.ipv4, 8080)])

    assert _names(_ask(allowed, frontend.address, 80)) == {backend.netns}
    before = datapath.drop_counts()["DROP_POLICY"]
    assert _ask(denied, frontend.address, 80, timeout=1) == [None]
    assert datapath.drop_counts()["DROP_POLICY"] > before
    event = event_log.wait_for(reason_name="DROP_POLICY", src=denied.spec.ipv4)
    assert event is not None
    assert (event.dst, event.dport, event.endpoint_id) == (
        backend.spec.ipv4,
        8080,
        backend.spec.endpoint_id,
    )
    assert (event.src_identity, event.dst_identity) == (denied.identity, backend.identity)


def test_vip_traffic_survives_a_restart(datapath, pin_dir, make_container, services):
    client, backend = make_container(), make_container()
    _named(backend, 8080)
    frontend = Frontend(services.vip(6), 80, TCP)
    services.set(frontend, [Backend(backend.spec.ipv6, 8080)])
    session = client.session(frontend.address, 80)
    restarted = Datapath(
        pin_dir=pin_dir,
        veth_prefix=datapath.veth_prefix,
        service_ranges=datapath.service_ranges,
    )
    try:
        assert session.request("before").startswith(backend.netns)
        restarted.start()
        assert (restarted.compile_count, restarted.reuse_count) == (0, 1)
        assert restarted.services() == datapath.services()
        assert restarted.restore_endpoint(client.spec)
        assert restarted.restore_endpoint(backend.spec)
        assert session.request("after").startswith(backend.netns)
        assert _names(_ask(client, frontend.address, 80, count=5)) == {backend.netns}
    finally:
        session.close()
        restarted.close()


def test_services_dump_weights_and_delete_leaves_nothing(datapath, make_container, services):
    client, one, two = make_container(), make_container(), make_container()
    for backend in (one, two):
        _named(backend, 8080)
    frontend = Frontend(services.vip(6), 80, TCP)
    backends = [Backend(one.spec.ipv6, 8080, weight=3), Backend(two.spec.ipv6, 8080)]
    service_id = services.set(frontend, backends)
    assert datapath.services()[frontend] == (service_id, backends)
    assert datapath.maps.get_service(frontend) == (service_id, 4)
    answers = _ask(client, frontend.address, 80, count=40)
    assert None not in answers
    assert _names(answers) == {one.netns, two.netns}

    datapath.delete_service(service_id, frontend)
    datapath.delete_service(service_id, frontend)
    assert frontend not in datapath.services()
    assert service_id not in datapath.maps.slot_service_ids()
    assert service_id not in datapath.maps.revnat()
    pinned = datapath.maps._maps["lb_flows"]
    assert all(pinned.lookup(key).service_id != service_id for key in list(pinned.keys()))
    assert _ask(client, frontend.address, 80, timeout=1) == [None]


V6, V4 = ipaddress.ip_address("fdce:1c97::ff"), ipaddress.ip_address("10.197.0.255")
B6, B4 = ipaddress.ip_address("fdce:1c99::ff"), ipaddress.ip_address("10.199.0.255")


@pytest.mark.parametrize(
    ("service_id", "frontend", "backends", "message"),
    [
        (0, Frontend(V6, 80, TCP), [], "service id 0 out of range"),
        (70000, Frontend(V6, 80, TCP), [], "out of range"),
        (9, Frontend(V6, 80, TCP), [Backend(B4, 80)], "IPv4, frontend .* is IPv6"),
        (9, Frontend(V6, 0, 0), [Backend(B6, 80)], "backends have port 0"),
        (9, Frontend(V6, 0, TCP), [], "L3-only frontend"),
        (9, Frontend(V6, 80, 1), [], "tcp .* or udp"),
        (9, Frontend(V6, 70000, TCP), [], "port 70000 out of range"),
        (9, Frontend(V4, 80, TCP), [Backend(B4, 80, weight=0)], "weight 0"),
        (9, Frontend(V4, 80, TCP), [Backend(B4, 80, 200), Backend(B4, 81, 57)], "257 slots"),
        (9, Frontend(V4, 80, TCP), [Backend(B4, 80), Backend(B4, 80)], "listed twice"),
        (9, Frontend(V6, 80, TCP), [], "frontend .* is service 8"),
        (8, Frontend(V6, 81, TCP), [], "service id 8 is in use"),
    ],
)
def test_invalid_set_service_changes_nothing(
    datapath, services, service_id, frontend, backends, message
):
    services.set(Frontend(V6, 80, TCP), [Backend(B6, 8080)], service_id=8)
    before = _lb_snapshot(datapath)
    with pytest.raises(DatapathError, match=message):
        datapath.set_service(service_id, frontend, backends)
    assert _lb_snapshot(datapath) == before


@pytest.fixture
def endpoint(datapath, new_spec):
    """An endpoint without a namespace, for BPF_PROG_TEST_RUN."""
    spec = new_spec()
    ifindex = datapath.create_endpoint(spec)
    yield spec, ifindex
    datapath.delete_endpoint(spec)


def _frame(spec, src, dst, l4: bytes, proto: int) -> bytes:
    if src.version == 6:
        return packets.eth(NODE_MAC, spec.mac, packets.ETH_P_IPV6) + packets.ipv6(
            src, dst, l4, proto
        )
    return packets.eth(NODE_MAC, spec.mac, packets.ETH_P_IP) + packets.ipv4(src, dst, l4, proto)


def _l4(proto: int, sport: int, dport: int, reply: bool) -> bytes:
    if proto == TCP:
        return packets.tcp(sport, dport, 0x12 if reply else packets.SYN)
    if proto == UDP:
        return packets.udp(sport, dport)
    echo = {packets.ICMP: (0, 8), packets.ICMPV6: (129, 128)}[proto][not reply]
    return packets.icmp(echo, ident=sport or dport)


def _ends(frame: bytes):
    """(source, destination, sport, dport) of a frame built here."""
    if frame[12:14] == b"\x86\xdd":
        src, dst, l4 = frame[22:38], frame[38:54], frame[54:]
    else:
        src, dst, l4 = frame[26:30], frame[30:34], frame[34:]
    ports = struct.unpack("!HH", l4[:4])
    return ipaddress.ip_address(src), ipaddress.ip_address(dst), *ports


NODE_MAC = "02:00:00:00:00:01"


@pytest.mark.parametrize(
    ("version", "proto", "l4_csum"),
    [
        (6, TCP, True),
        (4, TCP, True),
        (6, UDP, True),
        (4, UDP, True),
        (4, UDP, False),
        (6, packets.ICMPV6, True),
        (4, packets.ICMP, True),
    ],
    ids=["tcp6", "tcp4", "udp6", "udp4", "udp4-no-csum", "echo6", "echo4"],
)
def test_translation_keeps_checksums_right(datapath, endpoint, services, version, proto, l4_csum):
    spec, ifindex = endpoint
    client = spec.ipv6 if version == 6 else spec.ipv4
    backend = B6 if version == 6 else B4  # not local: the stack would get it
    vip = services.vip(version)
    l4_frontend = proto in (TCP, UDP)
    port, backend_port = (80, 8080) if l4_frontend else (0, 0)
    services.set(Frontend(vip, port, proto if l4_frontend else 0), [Backend(backend, backend_port)])
    sport = 40000 if l4_frontend else 7  # the echo id

    request = _frame(spec, client, vip, _l4(proto, sport, port, reply=False), proto)
    verdict, out = loader.run_program(
        datapath.program, packets.with_checksums(request, l4_csum), ifindex
    )
    assert verdict == packets.TC_ACT_OK
    assert packets.checksums_valid(out)
    if l4_frontend:
        assert _ends(out) == (client, backend, sport, backend_port)
    if not l4_csum:
        assert out[40:42] == b"\0\0"  # a UDP/IPv4 checksum of 0 stays "none"

    reply = _frame(spec, backend, client, _l4(proto, backend_port, sport, reply=True), proto)
    verdict, out = loader.run_program(
        datapath.programs.to_container, packets.with_checksums(reply, l4_csum), ifindex
    )
    assert verdict == packets.TC_ACT_OK
    assert packets.checksums_valid(out)
    src, dst = _ends(out)[:2]
    assert (src, dst) == (vip, client)
    if l4_frontend:
        assert _ends(out)[2:] == (port, sport)


@pytest.mark.parametrize("version", [6, 4])
def test_services_are_looked_up_only_inside_the_service_ranges(
    datapath, make_container, services, version
):
    """The programs know the service ranges: set_service refuses a frontend outside them,
    and one written into the maps anyway is never balanced; its packets go on to their
    address (an unused one of the endpoints' range, unreachable on the host)."""
    client, backend = make_container(), make_container()
    _named(backend, 8080)
    outside = (NET6 if version == 6 else NET4)[0xFFF0]
    frontend = Frontend(outside, 80, TCP)
    service_id = next(_ids)
    with pytest.raises(DatapathError, match="outside the service ranges"):
        datapath.set_service(service_id, frontend, [Backend(backend.addr(version), 8080)])
    maps = datapath.maps
    maps.put_revnat(service_id, frontend)
    maps.put_slot(service_id, 0, backend.addr(version), 8080)
    maps.put_service(frontend, service_id, 1)
    try:
        assert _ask(client, outside, 80, timeout=1) == [None]
        inside = Frontend(services.vip(version), 80, TCP)
        services.set(inside, [Backend(backend.addr(version), 8080)])
        assert _names(_ask(client, inside.address, 80)) == {backend.netns}
    finally:
        datapath.delete_service(service_id, frontend)

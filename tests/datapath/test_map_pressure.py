"""Map pressure in the real datapath: configured capacities, a pinned map of another size,
and a conntrack table far smaller than the flows through it."""

import itertools
import os
import shutil

import pytest

from datapath import EGRESS, INGRESS, Datapath, DatapathError, MapSizes, PolicyKey, loader
from datapath.maps import DatapathMaps
from datapath.maps.specs import FLOW_COUNTS_MAP_SIZE

from . import packets as pk
from . import traffic
from .conftest import PREFIX


@pytest.fixture
def scratch_pin_dir():
    path = f"/sys/fs/bpf/pycilium-sizes-{os.getpid()}"
    os.makedirs(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_maps_are_created_with_the_configured_sizes(scratch_pin_dir):
    maps = DatapathMaps.open(scratch_pin_dir, MapSizes(policy=100, conntrack=64, services=32))
    try:
        fill = maps.fill()
        assert fill["policy"] == (0, 100)
        assert fill["conntrack"] == (0, 64)
        assert fill["lb_services"] == (0, 32)
        assert fill["lb_revnat"] == (0, 32)
        assert fill["flow_counts"] == (0, FLOW_COUNTS_MAP_SIZE)  # full: counts lose identities
    finally:
        maps.close()


@pytest.mark.parametrize(
    ("sizes", "name"),
    [
        (MapSizes(policy=128, conntrack=64), "policy"),
        (MapSizes(policy=64, conntrack=128), "conntrack"),
    ],
    ids=["policy", "conntrack"],
)
def test_a_pinned_map_of_another_size_is_refused_and_kept(scratch_pin_dir, sizes, name):
    """Running containers' programs use the pinned maps: a start with other sizes must not
    replace them (an empty policy or conntrack map would cut their traffic)."""
    first = DatapathMaps.open(scratch_pin_dir, MapSizes(policy=64, conntrack=64))
    first.close()
    with pytest.raises(DatapathError, match=f"{name} holds 64 entries, the configuration says 128"):
        DatapathMaps.open(scratch_pin_dir, sizes)
    again = DatapathMaps.open(scratch_pin_dir, MapSizes(policy=64, conntrack=64))
    try:
        assert again.fill()[name] == (0, 64)
    finally:
        again.close()


CT_SIZE = 64
CLIENT_PORT = 41000


@pytest.fixture(scope="module")
def datapath(datapath):
    """A second datapath with a 64-entry conntrack map; the session's one stays started, so
    the forwarding rules and unreachable routes of the test ranges stay in place."""
    pin_dir = f"/sys/fs/bpf/pycilium-ct-{os.getpid()}"
    small = Datapath(pin_dir=pin_dir, veth_prefix=PREFIX, map_sizes=MapSizes(conntrack=CT_SIZE))
    small.start()
    yield small
    small.close()
    shutil.rmtree(pin_dir, ignore_errors=True)


def _client_and_server(datapath, make_container, port):
    """server admits client on port/tcp and port/udp; client admits nothing: what it gets
    in are replies, found in conntrack."""
    server, client = make_container(), make_container()
    keys = {PolicyKey(client.identity, port, proto, INGRESS) for proto in (pk.TCP, pk.UDP)}
    datapath.set_endpoint_policy(server.spec, True, False, keys)
    datapath.set_endpoint_policy(client.spec, True, False, set())
    return client, server


def test_a_full_conntrack_table_evicts_and_flows_keep_passing(datapath, make_container):
    client, server = _client_and_server(datapath, make_container, 8080)
    server.servers.append(traffic.serve_named(server.netns, 8080, "tcp", "server"))
    session = client.session(server.addr(6), 8080)
    try:
        assert session.request("before") == f"server {client.addr(6)} before"
        flows = 5 * CT_SIZE  # each flow takes two entries: client egress, server ingress
        answers = traffic.ask(client.netns, server.addr(6), 8080, "tcp", flows, timeout=3)
        answers += traffic.ask(client.netns, server.addr(4), 8080, "tcp", CT_SIZE, timeout=3)
        assert len(answers) == flows + CT_SIZE and None not in answers
        entries, capacity = datapath.maps.fill()["conntrack"]
        assert capacity == CT_SIZE and entries <= CT_SIZE
        admitted = datapath.policy_entries(server.spec)
        assert admitted[PolicyKey(client.identity, 8080, pk.TCP, INGRESS)][0] >= flows + CT_SIZE
        # The session's entries were evicted long ago; the client speaks first, so its next
        # segment re-creates them (policy admits it) before the server's answer comes back.
        assert session.request("after") == f"server {client.addr(6)} after"
    finally:
        session.close()


def _udp(src, dst, sport, dport):
    return pk.ipv6(src, dst, pk.udp(sport, dport), pk.UDP)


def _run(datapath, program, spec, ifindex, l3, outgoing, via=0):
    src, dst = (spec.mac, "02:00:00:00:00:01") if outgoing else ("02:00:00:00:00:01", spec.mac)
    verdict, _ = loader.run_program(program, pk.eth(dst, src, pk.ETH_P_IPV6) + l3, ifindex, via)
    return verdict


def _tracked(datapath, client, sport) -> bool:
    return any(
        e.endpoint_id == client.spec.endpoint_id and e.sport == sport and e.direction == EGRESS
        for e in datapath.ct_entries()
    )


def test_the_reply_of_an_evicted_flow_is_a_new_flow_to_policy(datapath, make_container):
    """Like Cilium: once the client's conntrack entry is gone, the server's reply is a new
    flow into the client, and the client's ingress policy (nothing admitted) drops it. The
    client's next packet tracks the flow again and the replies pass."""
    client, server = _client_and_server(datapath, make_container, 53)
    programs = datapath.programs
    request = _udp(client.spec.ipv6, server.spec.ipv6, CLIENT_PORT, 53)
    reply = _udp(server.spec.ipv6, client.spec.ipv6, 53, CLIENT_PORT)

    def send(l3):
        return _run(datapath, programs.from_container, client.spec, client.ifindex, l3, True)

    def answer():
        # As it comes: out of the server's veth.
        return _run(
            datapath,
            programs.to_container,
            client.spec,
            client.ifindex,
            reply,
            False,
            server.ifindex,
        )

    assert send(request) == pk.TC_ACT_REDIRECT
    assert answer() == pk.TC_ACT_OK
    # The kernel's LRU gives entries used since they were made a second chance: a flood
    # of one-packet flows pushes out its own kind, not a flow that got its answer.
    flood = itertools.count(CLIENT_PORT + 1)
    for sport in itertools.islice(flood, 10 * CT_SIZE):
        send(_udp(client.spec.ipv6, server.spec.ipv6, sport, 53))
    assert _tracked(datapath, client, CLIENT_PORT)
    # Flows that are used too (two packets each) push it out in the end.
    for sport in itertools.islice(flood, 20 * CT_SIZE):
        if not _tracked(datapath, client, CLIENT_PORT):
            break
        send(_udp(client.spec.ipv6, server.spec.ipv6, sport, 53))
        send(_udp(client.spec.ipv6, server.spec.ipv6, sport, 53))
    assert not _tracked(datapath, client, CLIENT_PORT)
    dropped = datapath.drop_counts()["DROP_POLICY"]
    assert answer() == pk.TC_ACT_SHOT
    assert datapath.drop_counts()["DROP_POLICY"] > dropped
    assert send(request) == pk.TC_ACT_REDIRECT
    assert answer() == pk.TC_ACT_OK

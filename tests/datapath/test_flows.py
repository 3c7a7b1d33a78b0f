"""Flow events (one per new connection) and ended connections, in real traffic."""

import os
import time

import pytest

from datapath import EGRESS, INGRESS, Backend, Frontend, PolicyKey
from datapath.abi import ENDPOINT_KEY_IPV4, ENDPOINT_KEY_IPV6

from .test_lb import VIP_NET6

TCP = 6
SERVICE_ID = 4000  # above the ids test_lb.py gives out


@pytest.fixture
def flows(datapath):
    datapath.set_flow_events(True)
    yield
    datapath.set_flow_events(False)


@pytest.fixture
def vip(datapath):
    datapath.add_unreachable_route(str(VIP_NET6))
    yield VIP_NET6[250]
    datapath.remove_unreachable_route(str(VIP_NET6))


def _flows(event_log, **fields) -> list:
    return [
        e
        for e in list(event_log.events)
        if e.kind == "flow" and all(getattr(e, k) == v for k, v in fields.items())
    ]


def test_flow_events_are_off_by_default(datapath, make_container, event_log):
    a, b = make_container(), make_container()
    b.serve(8080)
    assert a.exchange(b.spec.ipv6, 8080)
    time.sleep(0.3)
    assert event_log.wait_for(timeout=0, kind="flow") is None


@pytest.mark.parametrize("version", [6, 4])
def test_one_flow_event_per_connection_at_each_end(
    datapath, make_container, event_log, flows, version
):
    a, b = make_container(), make_container()
    b.serve(8080)
    datapath.set_endpoint_policy(b.spec, True, False, {PolicyKey(a.identity, 8080, TCP, INGRESS)})
    assert a.exchange(b.addr(version), 8080)

    sent = event_log.wait_for(kind="flow", endpoint_id=a.spec.endpoint_id, direction=EGRESS)
    assert sent is not None
    assert (sent.src, sent.dst, sent.dport, sent.protocol) == (
        a.addr(version),
        b.addr(version),
        8080,
        TCP,
    )
    assert (sent.src_identity, sent.dst_identity) == (a.identity, b.identity)
    assert (sent.reason_name, sent.rev_nat_index) == ("POLICY_MATCH_NONE", 0)
    got = event_log.wait_for(kind="flow", endpoint_id=b.spec.endpoint_id, direction=INGRESS)
    assert got is not None and got.reason_name == "POLICY_MATCH_PEER_PORT"
    time.sleep(0.3)
    # the connection's other packets (handshake, data, FIN) made no record
    assert len(_flows(event_log, endpoint_id=a.spec.endpoint_id)) == 1
    assert len(_flows(event_log, endpoint_id=b.spec.endpoint_id)) == 1


def test_a_denied_connection_is_a_drop_not_a_flow(datapath, make_container, event_log, flows):
    a, b = make_container(), make_container()
    b.serve(8080)
    datapath.set_endpoint_policy(b.spec, True, False, {PolicyKey(0, 9999, TCP, INGRESS)})
    assert not a.exchange(b.spec.ipv6, 8080, timeout=1)
    drop = event_log.wait_for(kind="drop", reason_name="DROP_POLICY", src=a.spec.ipv6)
    assert drop is not None and drop.dport == 8080
    assert _flows(event_log, endpoint_id=b.spec.endpoint_id) == []


def test_a_load_balanced_connection_names_its_service(
    datapath, make_container, event_log, flows, vip
):
    client, backend = make_container(), make_container()
    backend.serve(8080)
    frontend = Frontend(vip, 80, TCP)
    datapath.set_service(SERVICE_ID, frontend, [Backend(backend.spec.ipv6, 8080)])
    try:
        assert client.exchange(vip, 80)
    finally:
        datapath.delete_service(SERVICE_ID, frontend)
    sent = event_log.wait_for(kind="flow", endpoint_id=client.spec.endpoint_id)
    assert sent is not None
    assert (sent.dst, sent.dport, sent.rev_nat_index) == (backend.spec.ipv6, 8080, SERVICE_ID)


def test_ended_connections_come_with_their_counts(datapath, make_container):
    a, b = make_container(), make_container()
    b.serve(8080)
    datapath.ended_flows()  # the first call learns what is live
    assert a.exchange(b.spec.ipv6, 8080)
    ended = []
    deadline = time.monotonic() + 15  # a closed TCP connection's entry lives 10 s
    while time.monotonic() < deadline and len(ended) < 2:
        time.sleep(0.5)
        ended += [e for e in datapath.ended_flows() if e.dst == b.spec.ipv6 and e.dport == 8080]
    assert {(e.endpoint_id, e.direction) for e in ended} == {
        (a.spec.endpoint_id, EGRESS),
        (b.spec.endpoint_id, INGRESS),
    }
    for entry in ended:
        assert entry.packets >= 4 and entry.bytes > 0  # handshake, data, both FINs
        assert entry.src == a.spec.ipv6


def _counted(datapath, endpoint_id: int) -> int:
    return sum(c.count for c in datapath.flow_counts() if c.endpoint_id == endpoint_id)


@pytest.mark.parametrize("version", [6, 4])
def test_above_the_limit_connections_are_counted_and_the_sum_is_exact(
    datapath, make_container, event_log, flows, version
):
    a, b = make_container(), make_container()
    b.serve(8080)
    connections = 30
    datapath.set_flow_limit(1, 2)  # a flow event a second per CPU, 2 after a quiet spell
    started = time.monotonic()
    try:
        for _ in range(connections):
            assert a.exchange(b.addr(version), 8080)
    finally:
        datapath.set_flow_limit(0, 0)
    seconds = time.monotonic() - started

    def tally():
        return {
            end: (len(_flows(event_log, endpoint_id=end)), _counted(datapath, end))
            for end in (a.spec.endpoint_id, b.spec.endpoint_id)
        }

    deadline = time.monotonic() + 5
    while sum(map(sum, tally().values())) < 2 * connections and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)  # nothing more comes
    ends = tally()
    # each end's connections are sent or counted, exactly
    assert all(sent + counted == connections for sent, counted in ends.values()), ends
    # a few were sent (a CPU's bucket serves whichever hook comes first: the client's egress
    # takes a token before the server's ingress sees the connection), the rest counted
    sent = sum(sent for sent, _ in ends.values())
    assert 1 <= sent <= (2 + seconds + 1) * os.cpu_count(), ends
    assert sum(counted for _, counted in ends.values()) >= connections, ends
    kinds = {
        c
        for c in datapath.flow_counts()
        if c.endpoint_id in (a.spec.endpoint_id, b.spec.endpoint_id)
    }
    assert {
        (c.endpoint_id, c.direction, c.src_identity, c.dst_identity, c.dport, c.protocol, c.match)
        for c in kinds
    } == {
        (a.spec.endpoint_id, EGRESS, a.identity, b.identity, 8080, TCP, "POLICY_MATCH_NONE"),
        (b.spec.endpoint_id, INGRESS, a.identity, b.identity, 8080, TCP, "POLICY_MATCH_NONE"),
    }
    family = ENDPOINT_KEY_IPV6 if version == 6 else ENDPOINT_KEY_IPV4
    assert {(c.family, c.rev_nat_index) for c in kinds} == {(family, 0)}


def test_the_counts_of_an_endpoint_that_is_gone_come_once_more_and_leave_the_table(
    datapath, make_container, flows
):
    """flow_counts would otherwise fill up with the kinds of containers long gone, and the
    connections of new ones would only be counted as overflow, without their identities."""
    a, b = make_container(), make_container()
    b.serve(8080)
    datapath.set_flow_limit(1, 1)
    try:
        for _ in range(10):
            assert a.exchange(b.spec.ipv6, 8080)
    finally:
        datapath.set_flow_limit(0, 0)

    def kinds(endpoint) -> set:
        return {c for c in datapath.flow_counts() if c.endpoint_id == endpoint.spec.endpoint_id}

    deadline = time.monotonic() + 5
    while not kinds(a) and time.monotonic() < deadline:
        time.sleep(0.1)
    counted, stays = kinds(a), kinds(b)
    assert counted
    datapath.delete_endpoint(a.spec)
    assert kinds(a) == counted  # the last counts, once more
    assert kinds(a) == set()
    assert kinds(b) == stays

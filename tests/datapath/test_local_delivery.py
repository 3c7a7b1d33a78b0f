"""Delivery between two endpoints of this node: from_container redirects straight into the
destination's namespace (bpf_redirect_peer), deciding the destination's ingress there
(lib/local.h). These tests fail if that pass skips any of to_container's checks, or if
the packets still go out of the destination's host veth."""

from pathlib import Path

import pytest

from datapath import EGRESS, INGRESS, INIT_ID, PolicyKey

from .conftest import run

ICMP = {6: 58, 4: 1}


def _tx_packets(ifname: str) -> int:
    return int(Path(f"/sys/class/net/{ifname}/statistics/tx_packets").read_text())


def _ct(datapath, endpoint_id: int, direction: int, src, dst, dport: int) -> list:
    return [
        e
        for e in datapath.ct_entries()
        if (e.endpoint_id, e.direction, e.src, e.dst, e.dport)
        == (endpoint_id, direction, src, dst, dport)
    ]


@pytest.mark.parametrize("version", [6, 4])
def test_local_packets_skip_the_destination_veth_and_its_checks_still_run(
    datapath, make_container, version
):
    a, b = make_container(), make_container()
    tx = {c.spec.host_ifname: _tx_packets(c.spec.host_ifname) for c in (a, b)}
    traces = datapath.trace_counts()

    assert a.ping(b.addr(version), "-c", "50", "-i", "0.01")

    # The veth would count every request out of b's host side and every reply out of a's;
    # a few stray packets (the host's own NDisc) may leave them.
    for ifname, before in tx.items():
        assert _tx_packets(ifname) - before < 10
    # One verdict per packet, from_container's: to_container ran for none of them (only
    # for the stray ones).
    now = datapath.trace_counts()
    assert now["TRACE_TO_LXC"] - traces["TRACE_TO_LXC"] >= 100
    assert now["TRACE_TO_CONTAINER"] - traces["TRACE_TO_CONTAINER"] < 10


@pytest.mark.parametrize("version", [6, 4])
def test_a_denied_local_flow_stays_denied_in_one_pass(datapath, make_container, event_log, version):
    """b admits a on port 80 only: c and port 81 stay denied, the drop names b's ingress
    as to_container's did, and the admitted flow has b's ingress conntrack entry."""
    a, b, c = make_container(), make_container(), make_container()
    b.serve(80)
    b.serve(81)
    allow = PolicyKey(a.identity, 80, 6, INGRESS)
    datapath.set_endpoint_policy(b.spec, True, False, {allow})

    assert a.exchange(b.addr(version), 80)
    assert not a.exchange(b.addr(version), 81, timeout=1)
    assert not c.exchange(b.addr(version), 80, timeout=1)

    assert datapath.policy_entries(b.spec)[allow][0] >= 1
    admitted = _ct(datapath, b.spec.endpoint_id, INGRESS, a.addr(version), b.addr(version), 80)
    assert admitted and admitted[0].established
    assert _ct(datapath, a.spec.endpoint_id, EGRESS, a.addr(version), b.addr(version), 80)
    assert not _ct(datapath, b.spec.endpoint_id, INGRESS, c.addr(version), b.addr(version), 80)
    assert not _ct(datapath, b.spec.endpoint_id, INGRESS, a.addr(version), b.addr(version), 81)
    # c's egress (unenforced) admitted its SYN; b's ingress then dropped it.
    assert _ct(datapath, c.spec.endpoint_id, EGRESS, c.addr(version), b.addr(version), 80)
    for src, port in ((c, 80), (a, 81)):
        event = event_log.wait_for(reason_name="DROP_POLICY", src=src.addr(version), dport=port)
        assert event is not None
        assert (event.endpoint_id, event.ifindex, event.direction) == (
            b.spec.endpoint_id,
            b.ifindex,
            INGRESS,
        )
        assert (event.src_identity, event.dst_identity) == (src.identity, b.identity)


def test_an_established_local_connection_outlives_its_allow_key(datapath, make_container):
    a, b = make_container(), make_container()
    b.serve(80)
    allow = PolicyKey(a.identity, 80, 6, INGRESS)
    datapath.set_endpoint_policy(b.spec, True, False, {allow})
    session = a.session(b.spec.ipv6, 80)
    try:
        assert session.echo("before")
        datapath.set_endpoint_policy(b.spec, True, False, set())
        assert session.echo("after")
        assert not a.exchange(b.spec.ipv6, 80, timeout=1)
    finally:
        session.close()


@pytest.mark.parametrize("version", [6, 4])
def test_the_stack_path_into_an_endpoint_is_still_guarded(
    datapath, make_container, event_log, version
):
    """The host's packets come through b's host veth, where to_container decides."""
    a, b = make_container(), make_container()
    datapath.set_endpoint_policy(b.spec, True, False, {PolicyKey(a.identity, 0, 0, INGRESS)})
    tx = _tx_packets(b.spec.host_ifname)

    assert a.ping(b.addr(version))
    done = run("ping", "-c", "1", "-W", "1", str(b.addr(version)), check=False)
    assert done.returncode != 0
    assert _tx_packets(b.spec.host_ifname) > tx  # the host's ping reached the veth
    event = event_log.wait_for(
        reason_name="DROP_POLICY", dst=b.addr(version), protocol=ICMP[version]
    )
    assert event is not None and event.src != a.addr(version)
    assert (event.endpoint_id, event.ifindex) == (b.spec.endpoint_id, b.ifindex)

    datapath.set_endpoint_policy(b.spec, False, False, set())
    assert run("ping", "-c", "1", "-W", "2", str(b.addr(version)), check=False).returncode == 0


def test_a_waiting_destination_gets_nothing_from_a_local_endpoint(datapath, make_container):
    a, b = make_container(), make_container(INIT_ID)
    drops = datapath.drop_counts()["DROP_WAITING_FOR_IDENTITY"]
    assert not a.ping(b.spec.ipv6, timeout=1)
    assert not a.ping(b.spec.ipv4, timeout=1)
    assert datapath.drop_counts()["DROP_WAITING_FOR_IDENTITY"] - drops >= 2

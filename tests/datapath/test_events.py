"""Drop and trace events through Datapath.read_events."""

import threading
import time

import pytest

from datapath import EGRESS, HOST_ID, INGRESS, Event, loader
from datapath.events import EventRecord, decode_event

from .conftest import NET6, ROUTER6, run

HOST6 = NET6[0xFFFE]  # an address of the host, on a spare endpoint's veth


@pytest.fixture
def traces(datapath):
    datapath.set_trace_events(True)
    yield
    datapath.set_trace_events(False)


def test_trace_events_are_off_by_default(datapath, make_container, event_log):
    a, b = make_container(), make_container()
    assert a.ping(b.spec.ipv6)
    time.sleep(0.3)
    assert event_log.wait_for(timeout=0, kind="trace", endpoint_id=a.spec.endpoint_id) is None


def test_trace_events_name_the_path(datapath, make_container, event_log, traces):
    a, b = make_container(), make_container()
    assert a.ping(b.spec.ipv6)
    sent = event_log.wait_for(reason_name="TRACE_TO_LXC", endpoint_id=a.spec.endpoint_id)
    assert sent is not None and sent.kind == "trace"
    assert (sent.direction, sent.src, sent.dst) == (EGRESS, a.spec.ipv6, b.spec.ipv6)
    assert (sent.src_identity, sent.dst_identity) == (a.identity, b.identity)
    got = event_log.wait_for(reason_name="TRACE_TO_CONTAINER", endpoint_id=b.spec.endpoint_id)
    assert got is not None and (got.direction, got.ifindex) == (INGRESS, b.ifindex)
    assert a.ping(ROUTER6)
    assert event_log.wait_for(reason_name="TRACE_REPLY", endpoint_id=a.spec.endpoint_id)


def test_trace_events_of_a_known_flow_name_its_sender(datapath, make_container, event_log, traces):
    """A reply (a packet of a known flow) from the stack skips the source's identity lookup
    into its container, but not while trace events, which carry it, are on. (A reply from a
    local endpoint is decided at its sender: tests/datapath/test_local_delivery.py.)"""
    a, spare = make_container(), make_container()
    run("ip", "addr", "add", f"{HOST6}/128", "dev", spare.spec.host_ifname, "nodad")
    datapath.set_cidr_identities({f"{HOST6}/128": HOST_ID})
    try:
        assert a.ping(HOST6)
        reply = event_log.wait_for(
            reason_name="TRACE_TO_CONTAINER", endpoint_id=a.spec.endpoint_id, src=HOST6
        )
    finally:
        datapath.set_cidr_identities({})
    assert reply is not None and reply.direction == INGRESS
    assert (reply.src_identity, reply.dst_identity) == (HOST_ID, a.identity)


def test_unparsed_drop_has_no_addresses(datapath, make_container, event_log):
    a = make_container()
    frame = b"\xff" * 6 + bytes.fromhex(a.spec.mac.replace(":", "")) + b"\x88\xb5" + bytes(46)
    loader.run_program(datapath.program, frame, a.ifindex)
    event = event_log.wait_for(reason_name="DROP_UNKNOWN_L3", endpoint_id=a.spec.endpoint_id)
    assert event is not None
    assert (event.src, event.dst, event.description) == (None, None, "Unknown L3 protocol")


def test_callback_error_ends_the_reader(datapath, make_container):
    """At the first record whose callback fails: the records after it are not handed to a
    reader that has failed."""
    a = make_container()
    frame = b"\xff" * 6 + bytes.fromhex(a.spec.mac.replace(":", "")) + b"\x88\xb5" + bytes(46)
    for _ in range(3):
        loader.run_program(datapath.program, frame, a.ifindex)
    calls = []

    def fail(event: Event) -> None:
        calls.append(event)
        raise ValueError("callback failed")

    with pytest.raises(ValueError, match="callback failed"):
        datapath.read_events(fail, threading.Event())
    assert len(calls) == 1


def test_decode_unknown_code():
    record = EventRecord(kind=1, code=-63, family=0)
    event = decode_event(bytes(record))
    assert (event.kind, event.reason_name) == ("drop", "UNKNOWN_-63")


def test_raw_records_decode_to_the_events(datapath, make_container):
    a = make_container()
    frame = b"\xff" * 6 + bytes.fromhex(a.spec.mac.replace(":", "")) + b"\x88\xb5" + bytes(46)
    records: list[bytes] = []
    stop = threading.Event()
    reader = threading.Thread(
        target=datapath.read_events, args=(records.append, stop), kwargs={"raw": True}
    )
    reader.start()
    try:
        time.sleep(0.2)  # the reader's ring is open
        loader.run_program(datapath.program, frame, a.ifindex)
        deadline = time.monotonic() + 3
        while not records and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        reader.join(5)
    assert records and all(isinstance(r, bytes) for r in records)
    drops = [(e.reason_name, e.endpoint_id) for e in map(decode_event, records)]
    assert ("DROP_UNKNOWN_L3", a.spec.endpoint_id) in drops

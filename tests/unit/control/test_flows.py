"""The flow log: its ring, counters, filters and the records the API shows."""

import ipaddress
import threading
import time

import pytest

from datapath import DatapathError, FlowCount, reasons
from datapath.abi import (
    EGRESS,
    ENDPOINT_KEY_IPV4,
    ENDPOINT_KEY_IPV6,
    EVENT_DROP,
    EVENT_FLOW,
    EVENT_TRACE,
    INGRESS,
    EventRecord,
)
from datapath.maps import CtEntry
from driver.control.flows import (
    Directory,
    FlowFilter,
    FlowLog,
    FlowReader,
    describe,
    follow,
    select,
    service_map,
)
from driver.server.app import create_app

from ..docker_calls import EP, NET
from ..fakes import FakeDatapath

CLIENT = ipaddress.ip_address("198.51.100.7")
WORLD6 = "2001:db8::7"
WORLD_POLICY = """
- endpointSelector: {matchLabels: {app: web}}
  labels: ["name=web-policy"]
  ingress:
  - fromEntities: [world]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""


CODES = {
    code.name: code.value
    for code in (*reasons.policy_matches(), *reasons.drop_reasons(), *reasons.trace_points())
}
KINDS = {"flow": EVENT_FLOW, "drop": EVENT_DROP, "trace": EVENT_TRACE}
DEFAULT_CODES = {"flow": "POLICY_MATCH_PEER_PORT", "drop": "DROP_POLICY", "trace": "TRACE_TO_LXC"}


def event(kind="flow", src=CLIENT, dst="10.0.0.2", dport=80, reason_name=None, **fields) -> bytes:
    """The record of a datapath event, as the ring buffer gives it."""
    src, dst = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    values = {
        "endpoint_id": 5,
        "ifindex": 9,
        "direction": INGRESS,
        "src_identity": 2,
        "dst_identity": 300,
        "protocol": 6,
        "sport": 40000,
        **fields,
    }
    record = EventRecord(
        kind=KINDS[kind],
        code=CODES[reason_name or DEFAULT_CODES[kind]],
        family=ENDPOINT_KEY_IPV6 if src.version == 6 else ENDPOINT_KEY_IPV4,
        dport=dport,
        **values,
    )
    record.saddr[: len(src.packed)] = list(src.packed)
    record.daddr[: len(dst.packed)] = list(dst.packed)
    return bytes(record)


def test_the_ring_keeps_the_newest_records():
    flow_log = FlowLog(3)
    for port in range(5):
        flow_log.add_record(event(dport=port))
    assert [describe(raw, Directory())["destination"]["port"] for raw in flow_log.records()] == [
        2,
        3,
        4,
    ]
    assert flow_log.added == 5 and flow_log.size == 3


def test_trace_events_are_no_flows():
    flow_log = FlowLog(8)
    flow_log.add_record(event(kind="trace"))
    assert flow_log.records() == [] and flow_log.counts() == {}


def test_counters_by_verdict_and_identities_stop_growing_at_their_limit():
    flow_log = FlowLog(8, series_limit=2)
    flow_log.add_record(event())
    flow_log.add_record(event())
    flow_log.add_record(event(kind="drop"))
    flow_log.add_record(event(rev_nat_index=3, src_identity=400))
    flow_log.add_record(event(kind="drop", src_identity=401))
    assert flow_log.counts() == {
        ("FORWARDED", 2, 300): 2,
        ("DROPPED", 2, 300): 1,
        ("TRANSLATED", "other", "other"): 1,
        ("DROPPED", "other", "other"): 1,
    }


def test_a_follower_gets_what_comes_after_it_follows():
    flow_log = FlowLog(8)
    flow_log.add_record(event(dport=1))
    follower = flow_log.follow()
    flow_log.add_record(event(dport=2))
    assert describe(follower.get_nowait(), Directory())["destination"]["port"] == 2
    assert follower.empty()
    flow_log.unfollow(follower)
    flow_log.add_record(event(dport=3))
    assert follower.empty()


DIRECTORY = Directory(
    endpoints={5: {"identity": 300}},
    addresses={"10.0.0.2": {"container": "web", "identity": 300}},
    labels={2: ["reserved:world"], 300: ["app=web", "io.pycilium.network=app"]},
    services={3: "[fd00:5::1]:80/tcp"},
    rules=lambda endpoint, key: ("rule-of", endpoint, key.identity, key.dport, key.protocol),
)


def _record(**fields) -> dict:
    flow_log = FlowLog(8)
    flow_log.add_record(event(**fields))
    return describe(flow_log.records()[0], DIRECTORY)


def test_a_new_flow_names_its_ends_and_the_key_and_rules_that_admitted_it():
    record = _record()
    assert record["verdict"] == "FORWARDED" and record["type"] == "new"
    assert record["source"] == {
        "address": str(CLIENT),
        "port": 40000,
        "identity": 2,
        "labels": ["reserved:world"],
        "container": None,
    }
    assert record["destination"]["container"] == "web"
    assert record["policy"] == {
        "match": "POLICY_MATCH_PEER_PORT",
        "key": {"identity": 2, "port": 80, "protocol": 6},
        "rules": ["rule-of", 5, 2, 80, 6],
    }


def test_a_wildcard_match_names_the_wildcard_key():
    record = _record(reason_name="POLICY_MATCH_ANY_PROTO")
    assert record["policy"]["key"] == {"identity": 0, "port": 0, "protocol": 6}


def test_a_flow_without_policy_has_none():
    assert _record(reason_name="POLICY_MATCH_NONE")["policy"] is None


def test_a_translated_flow_names_its_service():
    record = _record(rev_nat_index=3, direction=EGRESS)
    assert (record["verdict"], record["service"]) == ("TRANSLATED", "[fd00:5::1]:80/tcp")


def test_a_drop_says_why():
    record = _record(kind="drop")
    assert (record["verdict"], record["reason"]) == ("DROPPED", "Policy denied")
    assert "policy" not in record


def test_an_ended_connection_has_counts_and_the_identities_of_its_ends():
    flow_log = FlowLog(8)
    entry = CtEntry(
        family=4,
        src=CLIENT,
        dst=ipaddress.ip_address("10.0.0.2"),
        sport=40000,
        dport=80,
        protocol=6,
        direction=INGRESS,
        endpoint_id=5,
        lifetime_remaining=-1,
        flags=0,
        packets=7,
        bytes=900,
        rev_nat_index=0,
    )
    flow_log.add_ended([entry])
    record = describe(flow_log.records()[0], DIRECTORY)
    assert (record["type"], record["packets"], record["bytes"]) == ("end", 7, 900)
    assert (record["source"]["identity"], record["destination"]["identity"]) == (0, 300)
    assert flow_log.counts() == {}  # the connection was counted when it began


def _records() -> list[dict]:
    flow_log = FlowLog(16)
    flow_log.add_record(event())
    flow_log.add_record(event(kind="drop", dport=22))
    flow_log.add_record(event(protocol=17, dport=53))
    flow_log.add_record(
        event(
            rev_nat_index=3,
            src="10.0.0.2",
            dst=CLIENT,
            direction=EGRESS,
            src_identity=300,
            dst_identity=2,
        )
    )
    return [describe(raw, DIRECTORY) for raw in flow_log.records()]


@pytest.mark.parametrize(
    ("flow_filter", "ports"),
    [
        (FlowFilter(), [80, 22, 53, 80]),
        (FlowFilter(verdict="DROPPED"), [22]),
        (FlowFilter(verdict="TRANSLATED"), [80]),
        (FlowFilter(port=53), [53]),
        (FlowFilter(port=40000), [80, 22, 53, 80]),  # either end's port
        (FlowFilter(protocol="UDP"), [53]),
        (FlowFilter(to_container="web"), [80, 22, 53]),
        (FlowFilter(from_container="web"), [80]),
        (FlowFilter(from_container="nobody"), []),
        (FlowFilter(from_identity=300), [80]),
        (FlowFilter(to_identity=300, verdict="DROPPED"), [22]),
        (FlowFilter(to_labels=("app=web",)), [80, 22, 53]),
        (FlowFilter(to_labels=("app",)), [80, 22, 53]),
        (FlowFilter(to_labels=("app=db",)), []),
        (FlowFilter(from_labels=("reserved:world",), verdict="DROPPED"), [22]),
    ],
)
def test_filters(flow_filter, ports):
    assert [r["destination"]["port"] for r in select(_records(), flow_filter, None)] == ports


# The time is taken when the test runs: a suite takes longer than any margin chosen at
# collection (a whole run once put "a minute from now" 20 minutes in the past).
@pytest.mark.parametrize(("offset", "ports"), [(60, []), (-60, [80, 22, 53, 80])])
def test_since_keeps_the_flows_seen_from_then_on(offset, ports):
    records = _records()
    since = FlowFilter(since=time.time() + offset)
    assert [r["destination"]["port"] for r in select(records, since, None)] == ports


def test_last_takes_the_newest_matching():
    chosen = select(_records(), FlowFilter(to_container="web"), 2)
    assert [r["destination"]["port"] for r in chosen] == [22, 53]


# Through the API, with the in-memory datapath


def test_api_lists_flows_with_the_rule_that_admitted_them(api, web_endpoint):
    web_endpoint.assign_container(EP, NET, "app", "c" * 64, "web", {"app": "web"})
    assert api("PUT", "policy", {"text": WORLD_POLICY, "source": "web.yaml"})[0] == 200
    web = web_endpoint.store.endpoints()[0]
    web_endpoint.flow_log.add_record(
        event(endpoint_id=web.numeric_id, src=WORLD6, dst=web.ipv6, dst_identity=web.identity)
    )
    web_endpoint.flow_log.add_record(event(kind="drop", src=WORLD6, dst=web.ipv6, dport=22))
    status, flows = api("GET", "flows?verdict=forwarded&to-container=web")
    assert status == 200 and len(flows) == 1
    assert flows[0]["destination"]["labels"] == ["app=web", "io.pycilium.network=app"]
    assert flows[0]["policy"]["rules"] == ["web-policy"]
    status, flows = api("GET", "flows?last=1")
    assert [f["verdict"] for f in flows] == ["DROPPED"]


def test_api_lists_aggregated_flows_with_the_container_that_counted_them(
    api, web_endpoint, datapath
):
    web_endpoint.assign_container(EP, NET, "app", "c" * 64, "web", {"app": "web"})
    web = web_endpoint.store.endpoints()[0]
    datapath.counted_flows = [counted(40, dst=web.identity, endpoint=web.numeric_id)]
    deadline = time.monotonic() + 5  # the reader reads the counts every second
    while not web_endpoint.flow_log.records() and time.monotonic() < deadline:
        time.sleep(0.05)
    status, flows = api("GET", "flows?to-container=web&port=80")
    assert status == 200 and [(f["type"], f["count"]) for f in flows] == [("aggregated", 40)]
    assert flows[0]["destination"]["labels"] == ["app=web", "io.pycilium.network=app"]
    status, graph = api("GET", "servicemap")
    assert [(e["source"], e["forwarded"], e["aggregated"]) for e in graph["edges"]] == [(2, 40, 40)]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("verdict=LOST", "unknown verdict"),
        ("protocol=sctp", "unknown protocol"),
        ("port=http", "port must be a number"),
        ("last=-1", "must not be negative"),
    ],
)
def test_api_refuses_bad_filters(api, query, message):
    status, answer = api("GET", f"flows?{query}")
    assert status == 400 and message in answer["Err"]


def test_api_without_a_flow_log(tmp_path, datapath):
    from driver.config import Config
    from driver.server.app import create_app

    config = Config(state_dir=str(tmp_path / "s"), node_id=1, flow_buffer=0).validate()
    app = create_app(config, datapath=datapath, watch_docker=False)
    try:
        response = app.test_client().get("/v1/flows")
        assert response.status_code == 404 and "--flow-buffer 0" in response.get_json()["Err"]
        assert datapath.flow_events is False
    finally:
        app.extensions["pycilium"].close()


def test_the_service_map_counts_each_connection_once_and_every_drop():
    directory = Directory(
        addresses={
            "10.0.0.2": {"container": "web", "identity": 300},
            "10.0.0.3": {"container": "client", "identity": 301},
        },
        labels={
            2: ["reserved:world"],
            300: ["app=web"],
            301: ["com.docker.compose.service=client", "x=y"],
        },
    )
    local = {"src": "10.0.0.3", "dst": "10.0.0.2", "src_identity": 301, "dst_identity": 300}
    flow_log = FlowLog(16)
    flow_log.add_record(event(direction=EGRESS, **local))  # seen leaving the client
    flow_log.add_record(event(direction=INGRESS, **local))  # and arriving at web: once
    flow_log.add_record(event(kind="drop", **local))
    flow_log.add_record(event(kind="drop", **local))
    flow_log.add_record(event())  # from the world, seen where it came in
    records = [describe(raw, directory) for raw in flow_log.records()]
    graph = service_map(records, directory, {300: 2, 301: 1})
    assert [(n["id"], n["name"], n["containers"]) for n in graph["nodes"]] == [
        (2, "world", 0),
        (300, "web", 2),
        (301, "client", 1),
    ]
    edges = {(e["source"], e["target"]): e for e in graph["edges"]}
    assert set(edges) == {(301, 300), (2, 300)}
    assert (edges[301, 300]["forwarded"], edges[301, 300]["dropped"]) == (1, 2)
    assert edges[301, 300]["reasons"] == {"Policy denied": 2}
    assert (edges[2, 300]["forwarded"], edges[2, 300]["dropped"]) == (1, 0)


def test_the_datapath_emits_flow_events_while_the_driver_keeps_a_log(app, datapath):
    assert datapath.flow_events is True
    app.extensions["pycilium"].close()
    assert datapath.flow_events is False


class EndingDatapath:
    def __init__(self, batches, counts=()):
        self.batches = list(batches)
        self.counts = list(counts)  # what flow_counts() returns, one list per call
        self.limit = None

    def ended_flows(self):
        if not self.batches:
            raise RuntimeError("walk failed")  # the thread keeps going
        return self.batches.pop(0)

    def set_flow_limit(self, rate, burst):
        self.limit = (rate, burst)

    def flow_counts(self):
        return self.counts.pop(0) if len(self.counts) > 1 else self.counts[0]


def test_ended_connections_are_added_by_the_walking_thread():
    entry = CtEntry(4, CLIENT, CLIENT, 1, 2, 17, INGRESS, 5, -1, 0, 3, 300, 7)
    flow_log = FlowLog(8)
    reader = FlowReader(EndingDatapath([[entry], []], [[]]), flow_log, 10, interval=0.01)
    try:
        deadline = time.monotonic() + 2
        while not flow_log.records() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        reader.close()
    assert [(r.type, r.verdict, r.item) for r in flow_log.records()] == [
        ("end", "TRANSLATED", entry)
    ]


def counted(count, src=2, dst=300, endpoint=5, direction=INGRESS, service=0, match=None):
    return FlowCount(
        src, dst, endpoint, 80, service, 6, direction, 2, match or "POLICY_MATCH_PEER_PORT", count
    )


def test_counted_connections_become_aggregated_records_of_those_counted_since_the_last_read():
    flow_log = FlowLog(8)
    flow_log.add_counted([counted(5)])  # counted before this log: only learnt
    assert flow_log.records() == [] and flow_log.counts() == {}
    flow_log.add_counted([counted(12), counted(3, service=3)])
    flow_log.add_counted([counted(12), counted(3, service=3)])  # nothing new
    assert [(r.type, r.verdict, r.item.count) for r in flow_log.records()] == [
        ("aggregated", "FORWARDED", 7),
        ("aggregated", "TRANSLATED", 3),
    ]
    assert flow_log.counts() == {("FORWARDED", 2, 300): 7, ("TRANSLATED", 2, 300): 3}


def test_sampled_and_aggregated_connections_add_up_in_the_counters():
    flow_log = FlowLog(8)
    flow_log.add_counted([])
    for _ in range(3):
        flow_log.add_record(event())  # each a flow event while the rate allowed
    flow_log.add_counted([counted(40)])
    flow_log.add_counted([counted(97)])
    assert flow_log.counts() == {("FORWARDED", 2, 300): 100}


def test_a_map_made_again_counts_from_zero():
    flow_log = FlowLog(8)
    flow_log.add_counted([counted(50)])
    flow_log.add_counted([counted(4)])
    assert [r.item.count for r in flow_log.records()] == [4]


def test_an_aggregated_record_names_identities_the_local_container_and_the_rule():
    flow_log = FlowLog(8)
    flow_log.add_counted([])
    flow_log.add_counted([counted(9, service=3)])
    directory = Directory(
        endpoints={5: {"identity": 300, "container": "web"}},
        labels=DIRECTORY.labels,
        services=DIRECTORY.services,
        rules=DIRECTORY.rules,
    )
    record = describe(flow_log.records()[0], directory)
    assert record["type"] == "aggregated" and record["count"] == 9
    assert (record["verdict"], record["direction"], record["protocol"]) == (
        "TRANSLATED",
        "ingress",
        "tcp",
    )
    assert record["source"] == {
        "address": None,
        "port": 0,
        "identity": 2,
        "labels": ["reserved:world"],
        "container": None,
    }
    assert record["destination"]["container"] == "web"  # the endpoint that counted them
    assert (record["destination"]["port"], record["destination"]["identity"]) == (80, 300)
    assert record["service"] == "[fd00:5::1]:80/tcp"
    assert record["policy"] == {
        "match": "POLICY_MATCH_PEER_PORT",
        "key": {"identity": 2, "port": 80, "protocol": 6},
        "rules": ["rule-of", 5, 2, 80, 6],
    }
    assert FlowFilter(to_container="web", port=80, verdict="TRANSLATED").matches(record)
    assert not FlowFilter(from_container="web").matches(record)


def test_the_service_map_counts_aggregated_connections_once_each():
    directory = Directory(
        endpoints={5: {"identity": 300, "container": "web"}, 6: {"identity": 301}},
        labels={2: ["reserved:world"], 300: ["app=web"], 301: ["app=client"]},
    )
    flow_log = FlowLog(16)
    flow_log.add_counted([])
    flow_log.add_counted(
        [
            counted(20, src=301, endpoint=6, direction=EGRESS),  # left the client
            counted(20, src=301),  # and arrived at web: counted once
            counted(7),  # from the world
        ]
    )
    flow_log.add_record(event(direction=INGRESS))  # one from the world sent as an event
    records = [describe(raw, directory) for raw in flow_log.records()]
    edges = {(e["source"], e["target"]): e for e in service_map(records, directory, {})["edges"]}
    assert (edges[301, 300]["forwarded"], edges[301, 300]["aggregated"]) == (20, 20)
    assert (edges[2, 300]["forwarded"], edges[2, 300]["aggregated"]) == (8, 7)


def test_the_reader_sets_the_limit_learns_the_counts_then_reads_what_comes():
    datapath = EndingDatapath([[]] * 100, [[counted(5)], [counted(5)], [counted(8)]])
    flow_log = FlowLog(8)
    reader = FlowReader(datapath, flow_log, 250, interval=0.01)
    try:
        assert datapath.limit == (250, 250)
        deadline = time.monotonic() + 2
        while not flow_log.records() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        reader.close()
    assert [(r.type, r.item.count) for r in flow_log.records()] == [("aggregated", 3)]


def test_the_flow_rate_limit_reaches_the_datapath(app, datapath):
    assert datapath.flow_limit == (1000, 1000)


def test_follow_gives_what_matches_as_it_comes_and_none_when_idle():
    flow_log = FlowLog(8)
    built = []

    def directory():
        built.append(1)
        return DIRECTORY

    flows = follow(flow_log, directory, FlowFilter(verdict="DROPPED"), idle=0.05)
    assert next(flows) is None  # nothing yet: a heartbeat
    flow_log.add_record(event())
    flow_log.add_record(event(kind="drop", dport=22))
    assert next(flows)["destination"]["port"] == 22  # the forwarded one did not match
    flows.close()
    flow_log.add_record(event(kind="drop"))
    assert flow_log._followers == []
    assert len(built) == 1  # an unknown address rebuilds it at most once a second


@pytest.mark.parametrize("rate", [-1, 1_000_001])
def test_the_flow_rate_limit_is_refused_out_of_range(tmp_path, rate):
    from driver.config import Config

    with pytest.raises(ValueError, match="flow rate limit"):
        Config(state_dir=str(tmp_path / "s"), node_id=1, flow_rate_limit=rate).validate()


def test_a_start_that_fails_at_the_monitor_leaves_no_flow_reader_running(config):
    class FlowEventsFail(FakeDatapath):
        def set_flow_events(self, enabled):
            raise DatapathError("the config map is gone")

    with pytest.raises(DatapathError, match="config map"):
        create_app(config, datapath=FlowEventsFail(), watch_docker=False)
    assert not [t for t in threading.enumerate() if t.name == "flow-reader"]

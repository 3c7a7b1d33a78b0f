"""The flow log: who talked to whom, allowed, dropped or translated, and by which rule.

The datapath's events ring carries one flow event per new connection that policy admitted
(lib/flowlog.h) and one drop event per dropped packet; the monitor's reader hands their
records, undecoded, to :meth:`FlowLog.add_record`. Above a rate of flow events per CPU
(--flow-rate-limit) the datapath counts new connections by kind instead of sending each:
the thread of :class:`FlowReader` turns what was counted since its last look into
aggregated records (one per kind, with a count), every second, and adds connections whose
conntrack entry ended, with their counts. So the counters (and the metrics) stay exact
while per-connection records are a sample. The ring keeps the records as
they came, cheap to add (a few microseconds: at a connection rate of tens of thousands a
second, decoding each one would cost a good part of a CPU); they are decoded, and names,
labels, services and rules looked up, when flows are read, from a
:class:`Directory` the control plane builds under its lock (so a rule is the one in force
when the flow is read; a container that went keeps its name while the log remembers it).
"""

import contextlib
import ipaddress
import logging
import queue
import struct
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from datapath import CtEntry, FlowCount
from datapath.abi import (
    DIRECTIONS,
    EVENT_DROP,
    EVENT_FLOW,
    INGRESS,
    PROTOCOL_NAMES,
    RESERVED_IDENTITIES,
    EventRecord,
    PolicyKey,
)
from datapath.events import decode_event
from datapath.interface import DatapathApi

log = logging.getLogger(__name__)

VERDICTS = ("FORWARDED", "DROPPED", "TRANSLATED")
ENDED_INTERVAL = 5.0  # seconds between conntrack walks looking for ended connections
COUNTED_INTERVAL = 1.0  # seconds between reads of the connections the datapath counted
SERIES_LIMIT = 1000  # (verdict, source, destination) counters; more are counted as "other"
REMEMBERED_NAMES = 4096  # addresses of containers that went, for the flows that name them
FOLLOW_QUEUE = 10_000
REBUILD_SECONDS = 1.0
DIRECTORY_SECONDS = 5.0  # a follower's names and rules are this old at most

# enum policy_match (lib/flowlog.h) -> which fields of the policy key were wildcards
_MATCH_SHAPES = {
    "POLICY_MATCH_PEER_PORT": (True, True, True),
    "POLICY_MATCH_PEER_PROTO": (True, False, True),
    "POLICY_MATCH_PEER": (True, False, False),
    "POLICY_MATCH_ANY_PORT": (False, True, True),
    "POLICY_MATCH_ANY_PROTO": (False, False, True),
    "POLICY_MATCH_ANY": (False, False, False),
}


class Raw(NamedTuple):
    """One record of the ring as the datapath gave it: a flow or drop event's record
    (bytes, which decode_event decodes), the CtEntry of a connection that ended, or the
    FlowCount of connections of one kind counted since the last read (its count those)."""

    time: float
    type: str  # "new", "drop", "end" or "aggregated"
    verdict: str  # FORWARDED, DROPPED or TRANSLATED
    item: bytes | CtEntry | FlowCount


# The fields of struct datapath_event a record is counted by when it comes.
_KIND_AT = EventRecord.kind.offset
_REV_NAT = struct.Struct(f"<{EventRecord.rev_nat_index.offset}xH")
_IDENTITIES = struct.Struct(f"<{EventRecord.src_identity.offset}xII")
_TYPES = {EVENT_FLOW: "new", EVENT_DROP: "drop"}


@dataclass
class Directory:
    """What the control plane knows, for naming the ends of flows."""

    # numeric id -> its identity, and its container if known
    endpoints: dict[int, dict] = field(default_factory=dict)
    addresses: dict[str, dict] = field(default_factory=dict)  # address -> container
    labels: dict[int, list[str]] = field(default_factory=dict)  # identity -> labels
    services: dict[int, str] = field(default_factory=dict)  # rev NAT index -> frontend
    # (endpoint numeric id, PolicyKey) -> names of the rules that made the key
    rules: Callable[[int, PolicyKey], tuple[str, ...]] = lambda endpoint, key: ()


class FlowLog:
    """A bounded ring of raw flow records, with counters for the metrics and followers."""

    def __init__(self, size: int, series_limit: int = SERIES_LIMIT):
        self._ring: deque[Raw] = deque(maxlen=size)
        self._lock = threading.Lock()
        self._followers: list[queue.Queue] = []
        self._counts: dict[tuple[str, int | str, int | str], int] = {}
        self._series_limit = series_limit
        self._names: OrderedDict[str, dict] = OrderedDict()
        self._counted: dict[FlowCount, int] | None = None  # kind (count 0) -> count read
        self.added = 0  # records ever added; those beyond the ring's size were overwritten

    @property
    def size(self) -> int:
        return self._ring.maxlen or 0

    def add_record(self, data: bytes) -> None:
        """A datapath event's record from the monitor's reader: flows and drops are kept."""
        kind = _TYPES.get(data[_KIND_AT])
        if kind is None:
            return
        if kind == "drop":
            verdict = "DROPPED"
        else:
            verdict = "TRANSLATED" if _REV_NAT.unpack_from(data)[0] else "FORWARDED"
        src, dst = _IDENTITIES.unpack_from(data)
        self._add(Raw(time.time(), kind, verdict, data), src, dst)

    def add_ended(self, entries: list[CtEntry]) -> None:
        now = time.time()
        for entry in entries:
            verdict = "TRANSLATED" if entry.rev_nat_index else "FORWARDED"
            self._add(Raw(now, "end", verdict, entry), None, None)

    def add_counted(self, counts: list[FlowCount]) -> None:
        """The datapath's counts of connections it did not send as flow events (they only
        grow): an aggregated record for each kind counted since the last call, with that
        many. The first call only learns the counts (those of a driver that ran before)."""
        now, last = time.time(), self._counted
        self._counted = {}
        for counted in counts:
            kind = counted._replace(count=0)
            self._counted[kind] = counted.count
            if last is None:
                continue
            new = counted.count - last.get(kind, 0)
            if new < 0:  # the pinned map was made again: counted from 0
                new = counted.count
            if new:
                verdict = "TRANSLATED" if counted.rev_nat_index else "FORWARDED"
                raw = Raw(now, "aggregated", verdict, counted._replace(count=new))
                self._add(raw, counted.src_identity, counted.dst_identity, new)

    def _add(self, raw: Raw, src: int | None, dst: int | None, connections: int = 1) -> None:
        with self._lock:
            self._ring.append(raw)
            self.added += 1
            if src is not None:
                self._count(raw.verdict, src, dst, connections)
            followers = list(self._followers)
        for follower in followers:
            # a follower too slow loses its own records, nobody else's
            with contextlib.suppress(queue.Full):
                follower.put_nowait(raw)

    def _count(self, verdict: str, src: int, dst: int, connections: int) -> None:
        key = (verdict, src, dst)
        if key not in self._counts and len(self._counts) >= self._series_limit:
            key = (verdict, "other", "other")
        self._counts[key] = self._counts.get(key, 0) + connections

    def counts(self) -> dict[tuple[str, int | str, int | str], int]:
        """(verdict, source identity, destination identity) -> new connections and drops."""
        with self._lock:
            return dict(self._counts)

    def records(self) -> list[Raw]:
        with self._lock:
            return list(self._ring)

    def follow(self) -> queue.Queue:
        follower: queue.Queue = queue.Queue(maxsize=FOLLOW_QUEUE)
        with self._lock:
            self._followers.append(follower)
        return follower

    def unfollow(self, follower: queue.Queue) -> None:
        with self._lock:
            if follower in self._followers:
                self._followers.remove(follower)

    def remember(self, directory: Directory) -> Directory:
        """directory with the addresses of containers that went since earlier ones."""
        with self._lock:
            for address, end in directory.addresses.items():
                self._names[address] = end
                self._names.move_to_end(address)
            while len(self._names) > REMEMBERED_NAMES:
                self._names.popitem(last=False)
            directory.addresses = {**self._names, **directory.addresses}
        return directory


class FlowReader:
    """A thread adding what the datapath keeps to the log: the connections it counted
    instead of sending, every `interval` seconds, and those that ended, every
    `ended_interval`. Made before the datapath's flow events go on: it sets their rate
    limit (flow events a second per CPU, as many at once; 0: none) and learns the counts
    there are, so that every connection counted from then on is read."""

    def __init__(
        self,
        datapath: DatapathApi,
        flow_log: FlowLog,
        rate_limit: int,
        interval: float = COUNTED_INTERVAL,
        ended_interval: float = ENDED_INTERVAL,
    ):
        self.datapath = datapath
        self.flow_log = flow_log
        self.interval = interval
        self.ended_interval = ended_interval
        datapath.set_flow_limit(rate_limit, rate_limit)
        flow_log.add_counted(datapath.flow_counts())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flow-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        walk_at = 0.0
        while True:
            stopping = self._stop.wait(self.interval)
            try:
                self.flow_log.add_counted(self.datapath.flow_counts())
            except Exception:  # tried again at the next interval; the counts keep
                log.exception("reading counted connections failed")
            if stopping:
                return
            if time.monotonic() < walk_at:
                continue
            walk_at = time.monotonic() + self.ended_interval
            try:
                self.flow_log.add_ended(self.datapath.ended_flows())
            except Exception:  # a failed walk is tried again at the next interval
                log.exception("looking for ended connections failed")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# Records as the API shows them


def describe(raw: Raw, directory: Directory) -> dict:
    """A raw record with names, labels, service and rules: JSON-ready."""
    if raw.type == "aggregated":
        return _describe_counted(raw, directory)
    item = decode_event(raw.item) if isinstance(raw.item, bytes) else raw.item
    src, dst = _str(item.src), _str(item.dst)
    if raw.type == "end":
        src_id, dst_id = _identities_of_entry(item, directory)
    else:
        src_id, dst_id = item.src_identity, item.dst_identity
    record = {
        "time": raw.time,
        "type": raw.type,
        "verdict": raw.verdict,
        "direction": DIRECTIONS.get(item.direction, str(item.direction)),
        "endpoint": item.endpoint_id,
        "protocol": PROTOCOL_NAMES.get(item.protocol, str(item.protocol)),
        "source": _end(src, item.sport, src_id, directory),
        "destination": _end(dst, item.dport, dst_id, directory),
        "service": directory.services.get(item.rev_nat_index),
    }
    if raw.type == "drop":
        record["drop_reason"] = item.reason_name
        record["reason"] = item.description
    if raw.type == "new":
        record["policy"] = _policy(item, item.reason_name, directory)
    if raw.type == "end":
        record["packets"], record["bytes"] = item.packets, item.bytes
    return record


def _describe_counted(raw: Raw, directory: Directory) -> dict:
    """An aggregated record: `count` connections of one kind, counted in the datapath above
    its rate limit. Its ends are identities without addresses or source port; the local
    end (the endpoint whose hook counted them) has its container."""
    item = raw.item
    src = _end(None, 0, item.src_identity, directory)
    dst = _end(None, item.dport, item.dst_identity, directory)
    local = dst if item.direction == INGRESS else src
    local["container"] = directory.endpoints.get(item.endpoint_id, {}).get("container")
    return {
        "time": raw.time,
        "type": "aggregated",
        "verdict": raw.verdict,
        "direction": DIRECTIONS.get(item.direction, str(item.direction)),
        "endpoint": item.endpoint_id,
        "protocol": PROTOCOL_NAMES.get(item.protocol, str(item.protocol)),
        "source": src,
        "destination": dst,
        "service": directory.services.get(item.rev_nat_index),
        "policy": _policy(item, item.match, directory),
        "count": item.count,
    }


def _str(address) -> str | None:
    return None if address is None else str(address)


def _end(address: str | None, port: int, identity: int, directory: Directory) -> dict:
    known = directory.addresses.get(address, {}) if address else {}
    return {
        "address": address,
        "port": port,
        "identity": identity,
        "labels": directory.labels.get(identity, []),
        "container": known.get("container"),
    }


def _identities_of_entry(entry, directory: Directory) -> tuple[int, int]:
    """A conntrack entry has no identities: the local end's is its endpoint's, the peer's
    its address's if it is a container's, else 0 (unknown)."""
    own = directory.endpoints.get(entry.endpoint_id, {}).get("identity", 0)
    src = directory.addresses.get(str(entry.src), {}).get("identity", 0)
    dst = directory.addresses.get(str(entry.dst), {}).get("identity", 0)
    return (src, own) if entry.direction == INGRESS else (own, dst)


def _policy(event, match: str, directory: Directory) -> dict | None:
    """The policy key that admitted a new connection (match: enum policy_match's name),
    and the rules that made it."""
    shape = _MATCH_SHAPES.get(match)
    if shape is None:
        return None
    peer = event.src_identity if event.direction == INGRESS else event.dst_identity
    use_peer, use_port, use_proto = shape
    key = PolicyKey(
        peer if use_peer else 0,
        event.dport if use_port else 0,
        event.protocol if use_proto else 0,
        event.direction,
    )
    return {
        "match": match,
        "key": {"identity": key.identity, "port": key.dport, "protocol": key.protocol},
        "rules": list(directory.rules(event.endpoint_id, key)),
    }


# Filters


@dataclass(frozen=True)
class FlowFilter:
    """What `cilium observe` asks for; every given criterion must hold."""

    from_labels: tuple[str, ...] = ()
    to_labels: tuple[str, ...] = ()
    from_container: str | None = None
    to_container: str | None = None
    from_identity: int | None = None
    to_identity: int | None = None
    verdict: str | None = None
    port: int | None = None
    protocol: str | None = None
    since: float | None = None  # seconds since the epoch

    def matches(self, record: dict) -> bool:
        src, dst = record["source"], record["destination"]
        return (
            _has_labels(src["labels"], self.from_labels)
            and _has_labels(dst["labels"], self.to_labels)
            and self.from_container in (None, src["container"])
            and self.to_container in (None, dst["container"])
            and self.from_identity in (None, src["identity"])
            and self.to_identity in (None, dst["identity"])
            and self.verdict in (None, record["verdict"])
            and self.port in (None, src["port"], dst["port"])
            and (self.protocol is None or self.protocol.upper() == record["protocol"].upper())
            and (self.since is None or record["time"] >= self.since)
        )


def _has_labels(labels: list[str], wanted: tuple[str, ...]) -> bool:
    """ "key=value" names a label; "key" alone any label with that key."""
    keys = {label.split("=", 1)[0] for label in labels}
    return all(w in labels or ("=" not in w and w in keys) for w in wanted)


def select(records: list[dict], flow_filter: FlowFilter, last: int | None) -> list[dict]:
    chosen = [r for r in records if flow_filter.matches(r)]
    return chosen[-last:] if last else chosen


def labels_of(labels: Mapping[str, str]) -> list[str]:
    return sorted(f"{k}={v}" if v else k for k, v in labels.items())


def reserved_labels() -> dict[int, list[str]]:
    return {number: [f"reserved:{name}"] for number, name in RESERVED_IDENTITIES.items()}


def follow(
    flow_log: FlowLog, directory: Callable[[], Directory], flow_filter: FlowFilter, idle: float
) -> Iterator[dict | None]:
    """Records as they come, matching flow_filter; None after idle seconds without one.
    The directory is built again every DIRECTORY_SECONDS, and sooner (once a second at
    most) when a record names a private address it does not know: a container that just
    started."""
    follower = flow_log.follow()
    known, built = directory(), time.monotonic()
    try:
        while True:
            try:
                raw = follower.get(timeout=idle)
            except queue.Empty:
                yield None
                continue
            record = describe(raw, known)
            age = time.monotonic() - built
            if age > DIRECTORY_SECONDS or (_unknown_end(record, known) and age > REBUILD_SECONDS):
                known, built = directory(), time.monotonic()
                record = describe(raw, known)
            if flow_filter.matches(record):
                yield record
    finally:
        flow_log.unfollow(follower)


def _unknown_end(record: dict, directory: Directory) -> bool:
    return any(
        address and address not in directory.addresses and ipaddress.ip_address(address).is_private
        for address in (record["source"]["address"], record["destination"]["address"])
    )


# The service map: identities as nodes, flows between them as edges


def service_map(records: list[dict], directory: Directory, containers: dict[int, int]) -> dict:
    """Nodes and edges of the flows in records. containers: identity -> endpoints now.

    A connection between two local containers is seen at both ends (the source's egress
    hook, the destination's ingress hook): it counts once, where it left its source; one
    from beyond the node counts where it came in. Drops count once each, where they were.
    An aggregated record counts as its count of connections; one counted at an ingress
    hook has no source address, so it is from beyond the node if no local container has
    its source identity.
    """
    local = {ep.get("identity") for ep in directory.endpoints.values()}
    edges: dict[tuple[int, int], dict] = {}
    for record in records:
        if not _counts_on_map(record, local):
            continue
        src, dst = record["source"]["identity"], record["destination"]["identity"]
        edge = edges.setdefault((src, dst), _edge(src, dst))
        if record["type"] == "end":
            edge["packets"] += record["packets"]
            edge["bytes"] += record["bytes"]
            continue
        edge[record["verdict"].lower()] += record.get("count", 1)
        if record["type"] == "aggregated":
            edge["aggregated"] += record["count"]
        edge["last"] = max(edge["last"], record["time"])
        if record["type"] == "drop":
            edge["reasons"][record["reason"]] = edge["reasons"].get(record["reason"], 0) + 1
    nodes = {number for edge in edges for number in edge} | set(containers)
    return {
        "nodes": [_node(n, directory, containers.get(n, 0)) for n in sorted(nodes)],
        "edges": [edges[key] for key in sorted(edges)],
    }


def _counts_on_map(record: dict, local: set) -> bool:
    if record["type"] == "drop":
        return True
    if record["direction"] == "egress":
        return True
    if record["type"] == "aggregated":
        return record["source"]["identity"] not in local
    return record["source"]["container"] is None  # from beyond the node


def _edge(src: int, dst: int) -> dict:
    return {
        "id": f"{src}-{dst}",
        "source": src,
        "target": dst,
        "forwarded": 0,
        "translated": 0,
        "dropped": 0,
        "aggregated": 0,  # of the forwarded and translated: counted, not each a record
        "reasons": {},
        "packets": 0,
        "bytes": 0,
        "last": 0.0,
    }


def _node(number: int, directory: Directory, containers: int) -> dict:
    labels = directory.labels.get(number, [])
    return {
        "id": number,
        "name": _name(number, labels),
        "labels": labels,
        "containers": containers,
    }


NAME_LABELS = ("com.docker.compose.service", "app", "name")


def _name(number: int, labels: list[str]) -> str:
    """The label that tells most: a compose service, an app, else the first label."""
    pairs = dict(label.split("=", 1) if "=" in label else (label, "") for label in labels)
    for key in NAME_LABELS:
        if pairs.get(key):
            return pairs[key]
    if number in RESERVED_IDENTITIES:
        return RESERVED_IDENTITIES[number]
    return labels[0] if labels else str(number) if number else "unknown"

"""Endpoints of the cluster: each node publishes its own under its lease, and every node keeps
the others' in its datapath's ipcache (address -> identity and node), fed by a watch.

    pycilium/v1/endpoints/<node>/<endpoint numeric id> -> JSON record, under the node's lease

A node that vanishes takes its endpoints with it: when its lease expires etcd deletes its
keys, and the watch's delete events take the addresses out of every other node's ipcache.
"""

import json
import logging
import threading
from dataclasses import asdict, dataclass, field, fields

from datapath import DatapathError
from datapath.abi import INIT_ID
from datapath.interface import DatapathApi

from .kvstore import Entry, KvStore
from .leased import LeasedKeys
from .nodes import PREFIX
from .session import Session

log = logging.getLogger(__name__)

ENDPOINTS = PREFIX + "endpoints/"


@dataclass(frozen=True)
class EndpointRecord:
    """What other nodes learn of an endpoint (and `cilium endpoint list` could show)."""

    node: str
    node_address: str  # its node's underlay address: where the tunnel sends its packets
    endpoint_id: int  # the numeric id, unique on its node
    ipv6: str
    ipv4: str | None
    identity: int
    container_name: str | None
    aliases: list  # its names on its network besides container_name (--network-alias)
    network_id: str  # Docker's id on the endpoint's node; the name is the cluster's
    network_name: str | None
    # IPv4 ports published on every address of its host, which every other node publishes
    # on its own address too (nodeports.py): [{"proto": "tcp", "host_port": 8080,
    # "container_port": 80}]
    ports: list = field(default_factory=list)

    def addresses(self) -> list[str]:
        return [a for a in (self.ipv6, self.ipv4) if a]


class Publisher:
    """This node's endpoints in etcd, under its lease."""

    def __init__(self, kv: KvStore, session: Session, node: str):
        self.keys = LeasedKeys(kv, session, f"{ENDPOINTS}{node}/", "this node's endpoints")

    def start(self) -> None:
        self.keys.start()

    def close(self) -> None:
        self.keys.close()

    def publish(self, record: EndpointRecord) -> None:
        """The record as it is now. One still waiting for its identity is not published:
        it sends and receives nothing yet, and every other node would write it into its
        ipcache only to write it again a moment later with the identity (a watch event on
        every node per endpoint, for nothing)."""
        if record.identity == INIT_ID:
            self.withdraw(record.endpoint_id)
            return
        value = json.dumps(asdict(record), sort_keys=True)
        self.keys.set(f"{self.keys.prefix}{record.endpoint_id}", value)

    def withdraw(self, endpoint_id: int) -> None:
        self.keys.set(f"{self.keys.prefix}{endpoint_id}", None)


class RemoteEndpoints:
    """Other nodes' endpoints, followed by a watch, in this node's ipcache. Datapath calls
    are made under the control plane's lock (`lock`), as every other one is; an event that
    changes nothing in the datapath (a new name, a record written again) does not wait for
    it, nor holds up the events behind it."""

    def __init__(self, kv: KvStore, node: str, datapath: DatapathApi, lock, node_ports=None):
        self.node = node
        self.datapath = datapath
        self.lock = lock
        self.node_ports = node_ports  # their published ports on this node (nodeports.py)
        # Written only by the watch's thread, under _records (taken after lock, never before).
        self._by_key: dict[str, EndpointRecord] = {}
        self._records = threading.Lock()
        self._listed = False  # until etcd's first listing, _by_key is no view of the cluster
        # Addresses the datapath refused (a full map): the record's next event writes them
        # again. Only the watch thread reads and writes it.
        self._refused: set[str] = set()
        self.watch = kv.watch(ENDPOINTS, self._reset, self._event)

    def close(self) -> None:
        self.watch.stop()

    def sync_ports(self) -> None:
        """The remote endpoints' published ports on this node, after they changed or a
        local container's did (a local one takes a port first). The caller holds the lock."""
        if self.node_ports is not None and self._listed:
            with self._records:
                records = list(self._by_key.values())
            self.node_ports.sync(records)

    def records(self) -> list[EndpointRecord]:
        with self._records:
            return sorted(self._by_key.values(), key=lambda r: (r.node, r.endpoint_id))

    def _reset(self, entries: list[Entry]) -> None:
        """The whole listing (at start, after etcd came back): the ipcache becomes exactly
        it, so entries of endpoints that went while nobody watched go too."""
        found = {e.key: r for e in entries if (r := self._remote(e)) is not None}
        wanted = {a: (r.identity, r.node_address) for r in found.values() for a in r.addresses()}
        with self.lock:
            with self._records:
                self._by_key = found
            self._refused.clear()
            for address in sorted(set(self.datapath.ipcache_entries()) - set(wanted)):
                self.datapath.ipcache_delete(address)
            for address, (identity, node_address) in sorted(wanted.items()):
                self._cache(address, identity, node_address)
            self._listed = True
            self.sync_ports()

    def _event(self, kind: str, entry: Entry, _previous: Entry | None) -> None:
        new = self._remote(entry) if kind == "PUT" else None
        old = self._by_key.get(entry.key)  # this thread is the only writer
        retry = {a for a in _placed(new) if a in self._refused}
        if new == old and not retry:
            return  # this node's own, or written again as it was (a full round)
        # Most endpoints publish no port: theirs need no pass over every record.
        ports = (old is not None and old.ports) or (new is not None and new.ports)
        if not ports and _placed(old) == _placed(new) and not retry:
            self._note(entry.key, new)  # its names changed: nothing for the datapath
            return
        with self.lock:
            self._note(entry.key, new)
            stale = set(old.addresses() if old else ()) - set(new.addresses() if new else ())
            for address in sorted(stale):
                if not self._owned_elsewhere(address):
                    self.datapath.ipcache_delete(address)
            for address, (identity, node_address) in _placed(new).items():
                if address in retry or _placed(old).get(address) != (identity, node_address):
                    self._cache(address, identity, node_address)
            if ports:
                self.sync_ports()

    def _note(self, key: str, record: EndpointRecord | None) -> None:
        with self._records:
            if record is None:
                self._by_key.pop(key, None)
            else:
                self._by_key[key] = record

    def _cache(self, address: str, identity: int, node_address: str) -> None:
        """One ipcache entry; a record the datapath refuses is logged, not raised: it must
        not stop the others (the watch would list again, and fail at it again)."""
        try:
            self.datapath.ipcache_upsert(address, identity, node_address)
        except (DatapathError, ValueError) as exc:
            log.error("other node's endpoint %s not in the ipcache: %s", address, exc)
            self._refused.add(address)
            return
        self._refused.discard(address)

    def _owned_elsewhere(self, address: str) -> bool:
        """An address a later record took over (an endpoint re-made under another id)."""
        with self._records:
            return any(address in r.addresses() for r in self._by_key.values())

    def _remote(self, entry: Entry) -> EndpointRecord | None:
        node = entry.key[len(ENDPOINTS) :].split("/")[0]
        if node == self.node:
            return None
        try:
            # Fields a newer node adds are not this node's business.
            known = {f.name for f in fields(EndpointRecord)}
            value = json.loads(entry.value)
            record = EndpointRecord(**{k: v for k, v in value.items() if k in known})
        except (AttributeError, TypeError, ValueError):
            log.warning("ignoring %s: not an endpoint record", entry.key)
            return None
        if record.node != node:
            log.warning("ignoring %s: it names node %s", entry.key, record.node)
            return None
        return record


def _placed(record: EndpointRecord | None) -> dict[str, tuple[int, str]]:
    """What the ipcache holds for the record: address -> (identity, node address)."""
    if record is None:
        return {}
    return {a: (record.identity, record.node_address) for a in record.addresses()}

"""Nodes of the cluster: ids claimed for good (until a node gone for good is forgotten),
records under each node's lease, and every node's view of the others from a watch."""

import json
import logging
import threading
from dataclasses import asdict, dataclass

from driver.errors import Conflict, DriverError, NotFound

from .kvstore import Entry, KvStore, absent, delete, holds, put
from .session import LeftCluster, Session

log = logging.getLogger(__name__)

PREFIX = "pycilium/v1/"
NODES = PREFIX + "nodes/"
NODE_IDS = PREFIX + "node-ids/"


@dataclass(frozen=True)
class NodeRecord:
    name: str
    node_id: int
    address: str
    ipv6_range: str
    ipv4_range: str


def claim_node_id(kv: KvStore, name: str, wanted: int, limit: int) -> int:
    """This node's id: the one it claimed before, else `wanted` (0: the lowest free id below
    limit), claimed for good in one transaction so no two nodes ever share one."""
    purpose = f"claim a node id for node {name}"
    # A lost race means another node claimed an id: nodes starting at once all get one
    # after at most `limit` attempts, or learn that the cluster is full.
    for _ in range(limit):
        claims, _ = kv.list(NODE_IDS, purpose)
        owners = {int(e.key[len(NODE_IDS) :]): e.value for e in claims}
        held = [number for number, owner in owners.items() if owner == name]
        if held:
            if wanted and held[0] != wanted:
                raise Conflict(f"node {name} holds node id {held[0]} in the cluster, not {wanted}")
            return held[0]
        if wanted and wanted in owners:
            raise Conflict(f"node id {wanted} belongs to node {owners[wanted]}")
        free = [wanted] if wanted else [n for n in range(1, limit) if n not in owners][:1]
        if not free:
            raise DriverError(f"every node id below {limit} is taken: the cluster is full")
        key = NODE_IDS + str(free[0])
        if kv.txn([absent(key)], [put(key, name)], purpose):
            log.info("node %s claimed node id %d", name, free[0])
            return free[0]
    raise DriverError(f"node {name} could not claim a node id: {limit} attempts raced")


def forget_node(kv: KvStore, name: str) -> int:
    """Free the node id of a node gone for good: one with no record in etcd (its lease
    expired). Returns the id. NotFound if the node holds none; Conflict while its record
    lives, checked in the same transaction as the delete."""
    purpose = f"forget node {name}"
    claims, _ = kv.list(NODE_IDS, purpose)
    held = [int(e.key[len(NODE_IDS) :]) for e in claims if e.value == name]
    if not held:
        raise NotFound(f"node {name} holds no node id in the cluster")
    key = NODE_IDS + str(held[0])
    if not kv.txn([absent(NODES + name), holds(key, name)], [delete(key)], purpose):
        raise Conflict(
            f"node {name} is up (its record is in etcd): stop its driver, wait until its "
            "lease expires and it leaves `cilium node list`, then forget it"
        )
    log.info("node %s forgotten: node id %d is free", name, held[0])
    return held[0]


class NodeRegistry:
    """This node's record under its lease, and every node's as the watch last saw it."""

    def __init__(self, kv: KvStore, session: Session, record: NodeRecord):
        self.kv = kv
        self.record = record
        self._nodes: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._register(session.lease)
        session.hold(self._register)
        self.watch = kv.watch(NODES, self._reset, self._event)

    def close(self) -> None:
        self.watch.stop()

    def nodes(self) -> list[dict]:
        with self._lock:
            return [self._nodes[name] for name in sorted(self._nodes)]

    def _register(self, lease: int) -> None:
        """The record, only while the node id is still this node's (LeftCluster if not: it
        was forgotten while this node was cut off from etcd)."""
        name, node_id = self.record.name, self.record.node_id
        value = json.dumps(asdict(self.record), sort_keys=True)
        key = NODE_IDS + str(node_id)
        if not self.kv.txn(
            [holds(key, name)], [put(NODES + name, value, lease)], "register this node"
        ):
            raise LeftCluster(
                f"node id {node_id} is no longer node {name}'s (it was forgotten with `cilium "
                "node forget` and may be another node's now). Its running containers keep "
                "working on this host, but it makes no new networks, endpoints or addresses, "
                "so a container that restarts fails: they would come from ranges another node "
                "may own now. To join again under a new node "
                "id, remove this host's containers and networks of this driver (`docker "
                "network rm` removes them from this host only), then restart the driver"
            )

    def _reset(self, entries: list[Entry]) -> None:
        with self._lock:
            self._nodes = dict(filter(None, map(_node, entries)))

    def _event(self, kind: str, entry: Entry, _previous: Entry | None) -> None:
        name = entry.key[len(NODES) :]
        with self._lock:
            if kind == "DELETE":
                if self._nodes.pop(name, None) is not None:
                    log.info("node %s left the cluster", name)
                return
            found = _node(entry)
            if found is not None:
                if name not in self._nodes:
                    log.info("node %s joined the cluster", name)
                self._nodes[name] = found[1]


def _node(entry: Entry) -> tuple[str, dict] | None:
    try:
        record = json.loads(entry.value)
    except ValueError:
        log.warning("ignoring %s: not a node record", entry.key)
        return None
    return entry.key[len(NODES) :], record

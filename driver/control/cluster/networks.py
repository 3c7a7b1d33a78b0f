"""Networks of the cluster: a cilium network created on one node exists on every node.

    pycilium/v1/networks/<name>              -> JSON NetworkRecord: what it takes to create it
    pycilium/v1/network-users/<name>/<node>  -> "1" while node has endpoints on it (its lease)

The node whose Docker created a network first publishes it (a transaction that puts the
record only if the name is free, so a network this driver created itself because the
cluster had it is never published as new); every node follows the records with a watch and
creates what its Docker lacks, under the same name, through the Docker API. Docker gives
each its own id; the name and the user's subnets are the cluster's. A network is deleted
from the cluster only when no node has endpoints on it: then each node's watch removes it
from its Docker.
"""

import ipaddress
import json
import logging
from dataclasses import asdict, dataclass, field

from driver.errors import Conflict

from ..addressing import node_slice
from ..watcher import STREAM_ERRORS
from .kvstore import Entry, KvStore, KvstoreUnavailable, absent, delete, none_under, put, unchanged
from .leased import LeasedKeys
from .nodes import PREFIX
from .session import Session

log = logging.getLogger(__name__)

NETWORKS = PREFIX + "networks/"
NETWORK_USERS = PREFIX + "network-users/"
OWN_IPAM = "cilium"  # this driver's IPAM, whatever its plugin name on each node
DEFAULT_IPAM = "default"


@dataclass(frozen=True)
class NetworkRecord:
    name: str
    origin: str  # the node whose Docker created it first
    ipam: str  # OWN_IPAM or Docker's DEFAULT_IPAM
    ipv6: bool
    internal: bool
    options: dict = field(default_factory=dict)  # driver options (-o)
    ipam_options: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    # The subnets every node's network has ({"subnet", "ip_range", "gateway"}): a user's,
    # or those Docker's IPAM chose; the blocks this driver's IPAM chooses are each node's.
    subnets: list = field(default_factory=list)


def record_of(network: dict, plugin_name: str, node: str, is_block) -> NetworkRecord:
    """The record of a network as `docker network inspect` shows it on node; is_block(cidr)
    tells this node's own blocks (which other nodes do not share)."""
    ipam = network.get("IPAM") or {}
    subnets = []
    for config in ipam.get("Config") or []:
        subnet = ipaddress.ip_network(config["Subnet"], strict=False)
        if not is_block(subnet):
            # Docker 20.10 shows an IPv6 gateway its IPAM chose with a prefix length; its
            # API takes an address.
            gateway = (config.get("Gateway") or "").split("/")[0]
            subnets.append(
                {
                    "subnet": str(subnet),
                    "ip_range": config.get("IPRange") or None,
                    "gateway": gateway or None,
                }
            )
    return NetworkRecord(
        name=network["Name"],
        origin=node,
        ipam=OWN_IPAM if ipam.get("Driver") == plugin_name else DEFAULT_IPAM,
        ipv6=bool(network.get("EnableIPv6")),
        internal=bool(network.get("Internal")),
        options=network.get("Options") or {},
        ipam_options=ipam.get("Options") or {},
        labels=network.get("Labels") or {},
        subnets=subnets,
    )


def create_request(record: NetworkRecord, plugin_name: str, node_id: int, slots: int) -> dict:
    """The arguments of the Docker API's network create that makes record's network here.
    Docker's own IPAM allocates from the whole subnet it is given: each node but the
    first gets its part (addressing.node_slice) as the range Docker allocates from, so
    no two nodes give the same address (the first node's Docker allocates from the bottom
    of the subnet, which is part 0, no node's part)."""
    pools = []
    for subnet in record.subnets:
        pool = {"Subnet": subnet["subnet"]}
        if subnet["gateway"]:
            pool["Gateway"] = subnet["gateway"]
        ip_range = subnet["ip_range"]
        if record.ipam == DEFAULT_IPAM:
            part = node_slice(ipaddress.ip_network(ip_range or subnet["subnet"]), node_id, slots)
            ip_range = str(part) if part else ip_range
        if ip_range:
            pool["IPRange"] = ip_range
        pools.append(pool)
    ipam_driver = plugin_name if record.ipam == OWN_IPAM else DEFAULT_IPAM
    return {
        "name": record.name,
        "driver": plugin_name,
        "options": record.options,
        "ipam": {"Driver": ipam_driver, "Config": pools, "Options": record.ipam_options},
        "internal": record.internal,
        "labels": record.labels,
        "enable_ipv6": record.ipv6,
    }


class ClusterNetworks:
    def __init__(self, kv: KvStore, session: Session, node: str):
        self.kv = kv
        self.session = session
        self.node = node
        self.users = LeasedKeys(
            kv,
            session,
            NETWORK_USERS,
            "the networks this node uses",
            mine=lambda key: key.endswith("/" + node),
        )
        # Records published while etcd was away: published when it answers.
        self._unpublished: dict[str, NetworkRecord] = {}
        session.when_available(self._publish_late)
        self.watch = None
        self._known: set[str] = set()  # names the watch saw in the cluster
        # Names whose record this node deleted: Docker is removing them here already.
        self._removed_here: set[str] = set()

    def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        self.users.close()

    def use(self, name: str, in_use: bool) -> None:
        """Whether this node has endpoints on network name."""
        self.users.set(f"{NETWORK_USERS}{name}/{self.node}", "1" if in_use else None)

    def publish(self, record: NetworkRecord) -> None:
        """The network in the cluster, unless the name is there already (which is the case
        of a network this driver created because the cluster had it)."""
        key = NETWORKS + record.name
        value = json.dumps(asdict(record), sort_keys=True)
        purpose = f"publish network {record.name}"
        try:
            if self.kv.txn([absent(key)], [put(key, value)], purpose):
                log.info("network %s published to the cluster", record.name)
            self._unpublished.pop(record.name, None)
        except KvstoreUnavailable as exc:
            log.warning("%s (published when etcd answers)", exc)
            self._unpublished[record.name] = record
            self.session.available.clear()  # the keepalive calls _publish_late

    def remove(self, name: str) -> None:
        """Network name leaves the cluster, if no other node has endpoints on it (a
        Conflict names them); this node has none (Docker removes a network only then).
        A node that left the cluster removes it from its own host only: the cluster's
        networks are no longer its to delete."""
        if self.session.left:
            return
        key = NETWORKS + name
        users = f"{NETWORK_USERS}{name}/"
        purpose = f"delete network {name} from the cluster"
        mine = users + self.node
        self._unpublished.pop(name, None)
        self.users.set(mine, None)
        self.kv.delete(mine, purpose)
        entry = self.kv.get(key, purpose)
        if entry is None:
            return  # a node removing it because the cluster did, or never published
        # Before the delete: its event may come before the transaction's answer.
        self._removed_here.add(name)
        deleted = False
        try:
            deleted = self.kv.txn([unchanged(entry), none_under(users)], [delete(key)], purpose)
        finally:
            if not deleted:
                self._removed_here.discard(name)
        if not deleted:
            using, _ = self.kv.list(users, purpose)
            nodes = sorted(e.key[len(users) :] for e in using)
            raise Conflict(
                f"network {name} has endpoints on node(s) {', '.join(nodes) or 'elsewhere'}: "
                "remove them there first"
            )
        log.info("network %s deleted from the cluster", name)

    def follow(self, replicas: "Replicas") -> None:
        """Create every network of the cluster in this node's Docker, remove those the
        cluster deletes."""
        self.watch = self.kv.watch(
            NETWORKS, lambda entries: self._reset(replicas, entries), self._event_to(replicas)
        )

    def _publish_late(self) -> None:
        for record in list(self._unpublished.values()):
            self.publish(record)

    def _reset(self, replicas: "Replicas", entries: list[Entry]) -> None:
        records = dict(filter(None, map(_record, entries)))
        for name in sorted(self._known - set(records)):
            replicas.remove(name)
        self._known = set(records)
        for record in records.values():
            replicas.create(record)

    def _event_to(self, replicas: "Replicas"):
        def on_event(kind: str, entry: Entry, _previous: Entry | None) -> None:
            name = entry.key[len(NETWORKS) :]
            if kind == "DELETE":
                self._known.discard(name)
                if name not in self._removed_here:
                    replicas.remove(name)
                self._removed_here.discard(name)
                return
            found = _record(entry)
            if found is not None:
                self._known.add(name)
                replicas.create(found[1])

        return on_event


class Replicas:
    """This node's Docker, through its API: networks created and removed as the cluster's
    are. `docker` is a docker.APIClient (a stand-in in tests)."""

    def __init__(self, docker, plugin_name: str, node_id: int, slots: int):
        self.docker = docker
        self.plugin_name = plugin_name
        self.node_id = node_id
        self.slots = slots

    def create(self, record: NetworkRecord) -> None:
        request = create_request(record, self.plugin_name, self.node_id, self.slots)
        try:
            if self._local(record.name) is not None:
                return
            self.docker.create_network(**request)
        except STREAM_ERRORS as exc:
            log.error("cannot create network %s of the cluster here: %s", record.name, exc)
            return
        log.info("network %s of the cluster (from node %s) created", record.name, record.origin)

    def remove(self, name: str) -> None:
        try:
            found = self._local(name)
            if found is None:
                return
            self.docker.remove_network(found["Id"])
        except STREAM_ERRORS as exc:
            log.error("network %s left the cluster but stays here: %s", name, exc)
            return
        log.info("network %s left the cluster: removed", name)

    def _local(self, name: str) -> dict | None:
        """This node's network of that name and of this driver."""
        listed = self.docker.networks(names=[name])
        # Docker's name filter matches parts of names too.
        return next(
            (n for n in listed if n["Name"] == name and n.get("Driver") == self.plugin_name),
            None,
        )


def _record(entry: Entry) -> tuple[str, NetworkRecord] | None:
    try:
        return entry.key[len(NETWORKS) :], NetworkRecord(**json.loads(entry.value))
    except (TypeError, ValueError):
        log.warning("ignoring %s: not a network record", entry.key)
        return None

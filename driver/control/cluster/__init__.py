"""Cluster mode: this node's place in a cluster whose shared state lives in etcd
(docs/architecture.md, "Several hosts"). Imported only when --kvstore is set."""

import ipaddress
import logging
import socket
from urllib.parse import urlsplit

from driver.config import Config
from driver.errors import Conflict

from .dns import ClusterDns
from .endpoints import EndpointRecord, Publisher, RemoteEndpoints
from .identities import ClusterAllocator
from .kvstore import KvStore, KvstoreUnavailable
from .networks import ClusterNetworks
from .nodeports import NodePorts
from .nodes import NodeRecord, NodeRegistry, claim_node_id, forget_node
from .session import LeftCluster, Session
from .tunnel import RemoteNodes

__all__ = ["Cluster", "KvstoreUnavailable"]

log = logging.getLogger(__name__)


class Cluster:
    """Joined in steps, as the control plane starts: connect (the lease), claim_node_id,
    register (with the node's ranges), then the identity allocator."""

    def __init__(self, config: Config):
        self.config = config
        self.name = config.node_name or socket.gethostname()
        self.kv = KvStore(config.endpoint_urls)
        self.session = Session(self.kv, config.kvstore_lease_ttl)
        self.registry: NodeRegistry | None = None
        self.allocator: ClusterAllocator | None = None
        self.address = ""  # this node's underlay address
        self.publisher: Publisher | None = None
        self.remote_nodes: RemoteNodes | None = None
        self.remote_endpoints: RemoteEndpoints | None = None
        self.networks: ClusterNetworks | None = None
        self.dns: ClusterDns | None = None

    def node_slots(self) -> int:
        """How many node ids the cluster has: one per block of its IPv4 range."""
        range4 = ipaddress.ip_network(self.config.node_range4)
        return min(1 << (self.config.node_mask4 - range4.prefixlen), 1 << 32)

    def claim_node_id(self) -> int:
        """The node id: the one this node name always had in the cluster."""
        return claim_node_id(self.kv, self.name, self.config.node_id, self.node_slots())

    def forget_node(self, name: str) -> int:
        """Free the node id of node name, gone for good; the id."""
        if name == self.name:
            raise Conflict(f"node {name} is this node: forget it from another one")
        return forget_node(self.kv, name)

    def node_range4(self, node_id: int) -> str:
        """Block node_id of the cluster's IPv4 range."""
        cluster = ipaddress.ip_network(self.config.node_range4)
        size = 1 << (32 - self.config.node_mask4)
        first = cluster.network_address + node_id * size
        return str(ipaddress.ip_network((first, self.config.node_mask4)))

    def register(self, node_id: int, ipv6_range: str, ipv4_range: str) -> None:
        self.address = self.config.node_address or _address_towards(self.config.endpoint_urls[0])
        record = NodeRecord(self.name, node_id, self.address, ipv6_range, ipv4_range)
        self.registry = NodeRegistry(self.kv, self.session, record)
        self.session.start()

    def identity_allocator(self, first: int, limit: int) -> ClusterAllocator:
        self.allocator = ClusterAllocator(self.kv, self.session, self.name, first, limit)
        return self.allocator

    def connect_datapath(
        self,
        datapath,
        lock,
        endpoints: list[EndpointRecord],
        networks_in_use: set[str],
        local_ports,
    ) -> None:
        """The cluster in this node's datapath (its tunnel enabled): other nodes' ranges
        routed through the tunnel, their endpoints in the ipcache and their published ports
        on this node's address (local_ports() the ones local containers have there, which
        win: nodeports.py); and this node's
        endpoints and the networks it uses in etcd, all of them known before the first
        write, so none is withdrawn for a moment."""
        self.publisher = Publisher(self.kv, self.session, self.name)
        for record in endpoints:
            self.publisher.publish(record)
        self.publisher.start()
        self.networks = ClusterNetworks(self.kv, self.session, self.name)
        for name in networks_in_use:
            self.networks.use(name, True)
        self.networks.users.start()
        self.remote_nodes = RemoteNodes(self.kv, self.name, datapath, lock)
        node_ports = NodePorts(datapath, self.address, local_ports)
        self.remote_endpoints = RemoteEndpoints(self.kv, self.name, datapath, lock, node_ports)

    def serve_dns(self, network_of) -> None:
        """Other nodes' container names for Docker's embedded DNS (dns.py), on this node's
        address; network_of(address) names the network of a local endpoint's address. A
        port that cannot be had leaves the rest of the cluster working without it."""
        port = self.config.cluster_dns_port
        if not port:
            return
        try:
            self.dns = ClusterDns(self.address, port, network_of, self.remote_endpoints.records)
        except OSError as exc:
            log.error(
                "no names of other nodes' containers: UDP %s port %d: %s", self.address, port, exc
            )

    def when_available(self, callback) -> None:
        self.session.when_available(callback)

    def lost(self) -> None:
        """A request found etcd away: the keepalive calls when_available's callbacks when
        it answers again."""
        self.session.available.clear()

    def status(self) -> dict:
        return {
            "name": self.name,
            "kvstore": ",".join(self.config.endpoint_urls),
            "connected": self.session.available.is_set(),
            "left": self.session.left or None,  # why this node left the cluster for good
            "nodes": self.registry.nodes() if self.registry else [],
        }

    def refuse_if_left(self) -> None:
        """A node that left the cluster makes nothing new: an address from its ranges may
        be another node's now, and would reach a new container on this host only (the
        session's reason says what to do)."""
        if self.session.left:
            raise LeftCluster(f"node {self.name} left the cluster: {self.session.left}")

    def close(self) -> None:
        parts = (self.dns, self.networks, self.remote_endpoints, self.remote_nodes, self.publisher)
        for part in (*parts, self.allocator, self.registry):
            if part is not None:
                part.close()
        self.session.close()
        self.kv.close()


def _address_towards(url: str) -> str:
    """The local address the host's routes pick for reaching url (no packet is sent)."""
    parts = urlsplit(url)
    family = socket.AF_INET6 if ":" in (parts.hostname or "") else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect((parts.hostname, parts.port or 2379))
        return probe.getsockname()[0]

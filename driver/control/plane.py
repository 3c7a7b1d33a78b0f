"""The control plane: one object owns the state, IPAM, networks, endpoints, policy, services,
published ports, the event monitor and the datapath, behind one lock.

Plugin and API handlers run on several gunicorn threads. Each public method of ControlPlane
is one use case (of Docker's plugin protocol, the management API or the Docker events
watcher) and takes the lock itself, so concurrent calls never interleave and no caller
touches the lock or a component. This file is longer than ~300 lines because it is the one
door into the control plane: forty use cases of a few lines each, and the start that
builds and reconciles the components.
"""

import dataclasses
import functools
import ipaddress
import logging
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from datapath import INIT_ID, Datapath, DatapathError, MapSizes
from datapath.abi import (
    DIRECTIONS,
    ENFORCEMENT_MODES,
    EP_F_EGRESS_ENFORCED,
    EP_F_INGRESS_ENFORCED,
    FIRST_ENDPOINT_IDENTITY,
    PROTOCOL_NUMBERS,
    RESERVED_IDENTITIES,
)
from datapath.interface import DatapathApi
from driver.config import Config
from driver.errors import BadRequest, DriverError, NotFound

from .addressing import NodeAddressing, node_id_from_machine_id
from .cluster.endpoints import EndpointRecord
from .cluster.kvstore import KvstoreUnavailable
from .cluster.networks import Replicas, record_of
from .endpoints import Endpoints, spec_of
from .flows import Directory, FlowFilter, FlowLog, FlowReader, describe, follow, select
from .flows import labels_of as flow_labels
from .flows import reserved_labels as flow_reserved_labels
from .flows import service_map as flow_service_map
from .identities import ENDPOINT_IDENTITY_LIMIT, Allocator, LabelFilter
from .ipam import Ipam
from .loadbalancer import Services
from .monitor import Monitor, Subscription
from .networks import Networks
from .policy.trace import Verdict
from .ports import Ports, cluster_ports, requested_ports
from .prefilter import Prefilter
from .regeneration import Regeneration
from .state import Endpoint, Network, Pool, Store
from .watcher import DockerWatcher, Listener, docker_client

# DatapathError is the kernel refusing something (a full map, a taken name), and the names of
# directions, enforcement modes and protocols are the datapath's vocabulary: the server
# renders it from here, without importing the datapath.
__all__ = [
    "DIRECTIONS",
    "ENFORCEMENT_MODES",
    "PROTOCOL_NUMBERS",
    "ControlPlane",
    "DatapathError",
    "Snapshot",
    "Traffic",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldAtStart:
    """What the state held when the driver started (see ControlPlane.forget_what_docker_lost)."""

    networks: set[str]
    addresses: dict[str, str]  # address -> owner ("pool:<pool id>")
    subnet_pools: dict[str, str]  # pool id -> CIDR, pools of a user's --subnet

    @classmethod
    def of(cls, store: Store) -> "HeldAtStart":
        return cls(
            networks={net.network_id for net in store.networks()},
            addresses={
                a["address"]: a["owner"]
                for a in store.addresses()
                if a["owner"].startswith("pool:")
            },
            subnet_pools={p.pool_id: p.cidr for p in store.pools() if not p.shared},
        )


@dataclass(frozen=True)
class Snapshot:
    """The control plane and datapath in numbers, at one moment: /v1/status and the
    Prometheus metrics both show it."""

    node: NodeAddressing
    networks: int
    endpoints: int
    waiting: int  # endpoints whose container (so identity) is not known yet
    addresses: int
    identities: dict[str, int]  # by kind, the reserved ones included
    policy_revision: int
    policy_mode: str
    policy_rules: int
    map_fill: dict[str, tuple[int, int]]  # map -> (entries, capacity)
    compile_count: int
    compile_seconds: float
    reuse_count: int  # BPF builds reused from an earlier driver process
    drops: dict[str, int]  # drop reason -> packets
    docker_events: bool  # the Docker events watcher is connected
    prefilter: dict  # Prefilter.record(): denied prefixes with drops, devices with XDP mode
    cluster: dict | None = None  # cluster mode: this node's name, etcd, the nodes seen


@dataclass(frozen=True)
class Traffic:
    """Counters only the metrics export: packets passed on by trace point, and conntrack
    totals (flows, packets, bytes) by the direction of the hook tracking them."""

    forwards: dict[str, int]
    conntrack: dict[int, tuple[int, int, int]]


def _locked(method: Callable) -> Callable:
    """A use case, run under the control plane's lock."""

    @functools.wraps(method)
    def run(self: "ControlPlane", *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)

    return run


class ControlPlane:
    @classmethod
    def open(cls, config: Config, datapath: DatapathApi | None = None) -> "ControlPlane":
        """The started control plane over `datapath`, by default the kernel's."""
        if datapath is None:
            sizes = MapSizes(config.policy_map_size, config.ct_map_size, config.service_map_size)
            datapath = Datapath(
                config.bpf_pin_dir,
                config.veth_prefix,
                sizes,
                nat64_prefix=config.nat64_prefix,
                service_mode=config.service_mode,
                service_ranges=(config.service_range6, config.service_range4),
            )
        return cls(config, datapath)

    def __init__(self, config: Config, datapath: DatapathApi):
        """Open the state, start the datapath and make it what the state says."""
        self.config = config
        self.datapath = datapath
        self.lock = threading.RLock()
        self.store = Store(config.state_db)
        self.watcher: DockerWatcher | None = None
        self._closers: list[Callable[[], None]] = []
        self.cluster = None
        # cluster mode: policy and services are etcd's (cluster/policy.py, services.py)
        self.cluster_policy = None
        self.cluster_services = None
        # cluster mode: other nodes' identities, for policy (cluster/remote_identities.py)
        self.remote_identities = None
        # endpoint id -> assign_container's arguments, while etcd cannot give an identity
        self._waiting: dict[str, tuple] = {}
        # cluster mode: endpoint id -> its container's names on its network, for etcd
        self._aliases: dict[str, list[str]] = {}
        ranges = [
            ipaddress.ip_network(config.service_range6),
            ipaddress.ip_network(config.service_range4),
        ]
        self.ports: Ports | None = None
        self._flow_reader: FlowReader | None = None
        with self.lock:
            self.store.open()
            try:
                self._start(config, datapath, ranges)
            except BaseException:
                self._abandon_start()
                raise
        log.info(
            "node %d ready: IPv6 %s router %s, IPv4 %s router %s",
            self.node.node_id,
            self.node.range6,
            self.node.router6,
            self.node.range4,
            self.node.router4,
        )

    def _start(self, config: Config, datapath: DatapathApi, ranges: list) -> None:
        """The parts in order, each made what the state says (and, in cluster mode, etcd)."""
        if config.kvstore:
            self._join_cluster()
        else:
            self.node = NodeAddressing.build(
                config.cluster_prefix6, self._node_id(), config.node_range4
            )
        datapath.start()
        if self.cluster is not None:
            # Before any endpoint is made: their MTU fits the tunnel's from the start.
            datapath.enable_tunnel(self.cluster.address)
        slots = self.cluster.node_slots() if self.cluster is not None else 0
        self.ipam = Ipam(self.store, self.node, datapath, ranges, slots)
        self.networks = Networks(self.store, self.ipam, datapath, config.mtu)
        self.endpoints = Endpoints(
            self.store, self.ipam, datapath, self.node, config.veth_prefix, config.nat64_prefix
        )
        self.regeneration = Regeneration(
            self.store,
            datapath,
            LabelFilter(config.label_prefixes),
            config.policy_enforcement,
            config.saved_policy,
            self._cluster_allocator(),
        )
        if self.cluster is not None:
            self._load_remote_identities()
        self.services = Services(self.store, datapath, ranges)
        self._claim_ranges(ranges)
        self.ports = Ports(self.store, datapath)
        self.endpoints.restore_all()
        self.ports.restore(keep_remote=self.cluster is not None)
        self.regeneration.refresh()
        self.services.sync()
        if self.cluster is not None:
            self._share_policy_and_services()
        self.prefilter = Prefilter(self.store, datapath, config.prefilter_devices)
        self.prefilter.restore()
        if self.cluster is not None:
            self._connect_cluster()
        # What the state held at start, until Docker's first full listing confirms it.
        self._unconfirmed: HeldAtStart | None = HeldAtStart.of(self.store)
        # The flow log's threads start last: a start that fails before leaves none behind.
        # The reader first: it sets the flow events' rate limit before the monitor turns
        # them on (_abandon_start stops it if the monitor fails).
        self.flow_log = FlowLog(config.flow_buffer) if config.flow_buffer else None
        self._flow_reader = (
            FlowReader(datapath, self.flow_log, config.flow_rate_limit) if self.flow_log else None
        )
        self.monitor = Monitor(datapath, self.flow_log.add_record if self.flow_log else None)

    def _abandon_start(self) -> None:
        """A start that failed part way: what runs on its own stops (etcd watches, the
        lease's keepalive, proxies) and the datapath and the state close. What it made in
        the kernel stays, as after a crash, for the next start to take up."""
        while self._closers:
            self._closers.pop()()
        if self._flow_reader is not None:
            self._flow_reader.close()
        if self.ports is not None:
            self.ports.close()
        if self.cluster is not None:
            self.cluster.close()
        self.datapath.close()
        self.store.close()

    def watch_docker(self) -> None:
        listener = Listener(
            self.network_ids,
            self.assign_container,
            self.forget_what_docker_lost,
            self.network_seen,
            self.endpoint_aliases,
        )
        self.watcher = DockerWatcher(listener, self.config.docker_host, self.config.plugin_name)
        self.watcher.start()
        if self.cluster is not None:
            self.replicate_networks(docker_client(self.config.docker_host))

    def on_close(self, closer: Callable[[], None]) -> None:
        """Run closer first in close(): for what serves the control plane (the metrics server)."""
        self._closers.append(closer)

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        if self._flow_reader is not None:
            self._flow_reader.close()
        self.monitor.close()
        self.ports.close()
        if self.cluster is not None:
            self.cluster.close()
        with self.lock:
            self.datapath.close()
            self.store.close()

    # Docker's network driver and IPAM driver

    @_locked
    def create_network(
        self, network_id: str, options: dict, ipv4_data: list, ipv6_data: list
    ) -> None:
        self._refuse_if_left()
        self.networks.create(network_id, options, ipv4_data, ipv6_data)

    @_locked
    def delete_network(self, network_id: str) -> None:
        net = self.store.get_network(network_id)
        if self.cluster is not None and net is not None and net.name:
            self.cluster.networks.remove(net.name)
        self.networks.delete(network_id, self.delete_endpoint)

    @_locked
    def create_endpoint(self, network_id: str, endpoint_id: str, interface: dict) -> dict:
        """The interface fields Docker left empty, filled in."""
        self._refuse_if_left()
        returned = self.endpoints.create(network_id, endpoint_id, interface)
        self._network_use(network_id)
        return returned

    @_locked
    def endpoint_info(self, endpoint_id: str) -> Endpoint | None:
        return self.store.get_endpoint(endpoint_id)

    @_locked
    def delete_endpoint(self, endpoint_id: str) -> None:
        ep = self.store.get_endpoint(endpoint_id)
        if ep is not None:
            self.ports.withdraw(ep)
        self.endpoints.delete(endpoint_id)
        if ep is not None and self.cluster is not None:
            self.cluster.publisher.withdraw(ep.numeric_id)
            self._aliases.pop(endpoint_id, None)
            self._network_use(ep.network_id)
            if ep.ports:
                self.cluster.remote_endpoints.sync_ports()
        self.regeneration.refresh()
        self.services.sync()

    @_locked
    def join(self, network_id: str, endpoint_id: str, sandbox_key: str, options: dict) -> dict:
        requested = requested_ports(options)
        reply = self.endpoints.join(network_id, endpoint_id, sandbox_key)
        if self.ports.publish(self.store.get_endpoint(endpoint_id), requested):
            self._ports_changed(endpoint_id)
        return reply

    @_locked
    def leave(self, network_id: str, endpoint_id: str) -> None:
        """The container is going: its ports close and it stops being a service backend."""
        ep = self.store.get_endpoint(endpoint_id)
        if ep is not None:
            self.ports.withdraw(ep)
            if ep.ports:
                self._ports_changed(endpoint_id)
        self.endpoints.leave(network_id, endpoint_id)
        self.services.sync()

    @_locked
    def request_pool(self, pool: str, sub_pool: str, v6: bool) -> Pool:
        self._refuse_if_left()
        return self.ipam.request_pool(pool, sub_pool, v6)

    @_locked
    def release_pool(self, pool_id: str) -> None:
        self.ipam.release_pool(pool_id)

    @_locked
    def request_address(self, pool_id: str, address: str, options: dict | None) -> str:
        self._refuse_if_left()
        return self.ipam.request_address(pool_id, address, options)

    @_locked
    def release_address(self, pool_id: str, address: str) -> None:
        self.ipam.release_address(pool_id, address)

    # The Docker events watcher

    @_locked
    def network_ids(self) -> set[str]:
        return {net.network_id for net in self.store.networks()}

    def assign_container(
        self,
        endpoint_id: str,
        network_id: str,
        network_name: str,
        container_id: str,
        name: str,
        labels: dict,
    ) -> None:
        """The watcher learnt an endpoint's container: give it the container's identity."""
        with self.lock:
            ep = self.store.get_endpoint(endpoint_id)
            self._waiting.pop(endpoint_id, None)
            if ep is None or ep.network_id != network_id:
                return
            try:
                identity = self.regeneration.assign_container(
                    ep, network_name, container_id, name, labels
                )
            except KvstoreUnavailable as exc:
                # The endpoint stays in init (it sends and receives nothing) until etcd
                # answers: then the cluster calls _assign_waiting.
                log.error("endpoint %d (%s) waits for its identity: %s", ep.numeric_id, name, exc)
                self._waiting[endpoint_id] = (network_id, network_name, container_id, name, labels)
                self.cluster.lost()
                return
            self._publish(endpoint_id)
            self.services.sync()
        log.info("endpoint %d is container %s, identity %d", ep.numeric_id, name, identity)

    @_locked
    def forget_what_docker_lost(
        self, docker_networks: set[str], used_addresses: set[str], docker_subnets: set[str]
    ) -> None:
        """Once, with Docker's first full listing after start: drop the networks, pool
        addresses and subnet pools the state held at start that Docker does not have. A call
        killed after it committed is retried by Docker with an empty body, which fails, so
        Docker never learns of what the first attempt made and never deletes or releases it
        (a leaked subnet pool would refuse every later network with that subnet).
        Networks with endpoints and addresses of endpoints stay: some dockerd uses them,
        even if the watcher reads another one."""
        if self._unconfirmed is None:
            return
        held_at_start, self._unconfirmed = self._unconfirmed, None
        endpoints = self.store.endpoints()
        in_use = {ep.network_id for ep in endpoints}
        held = {ip for ep in endpoints for ip in (ep.ipv6, ep.ipv4) if ip}
        for network_id in sorted(held_at_start.networks - docker_networks - in_use):
            if self.store.get_network(network_id) is not None:
                log.info("forgetting network %s, which Docker does not have", network_id)
                # Not from the cluster: it lost it here only.
                self.networks.delete(network_id, self.delete_endpoint)
        for address, owner in sorted(held_at_start.addresses.items()):
            if address in used_addresses or address in held:
                continue
            if self.store.address_owner(address) == owner:
                log.info("releasing %s, which Docker does not use", address)
                with self.store.transaction():
                    self.store.delete_address(address)
        for pool_id, cidr in sorted(held_at_start.subnet_pools.items()):
            if cidr in docker_subnets or self._pool_holds_any(pool_id, held):
                continue
            log.info("releasing pool %s, which no Docker network uses", cidr)
            self.ipam.release_pool(pool_id)

    # Status and metrics

    def snapshot(self) -> Snapshot:
        with self.lock:
            endpoints = self.store.endpoints()
            identities = {"reserved": len(RESERVED_IDENTITIES), "endpoint": 0, "cidr": 0}
            for identity in self.store.identities():
                identities[identity.kind] = identities.get(identity.kind, 0) + 1
            held = {
                "node": self.node,
                "networks": len(self.store.networks()),
                "endpoints": len(endpoints),
                "waiting": sum(ep.identity == INIT_ID for ep in endpoints),
                "addresses": self.store.address_count(),
                "identities": identities,
                "policy_revision": self.regeneration.revision,
                "policy_mode": self.regeneration.mode,
                "policy_rules": len(self.regeneration.policy.rules()),
                # The policy map's count comes from the datapath's index, which the control
                # plane changes: read it under the lock.
                "map_fill": self.datapath.map_fill(),
                "compile_count": self.datapath.compile_count,
                "compile_seconds": self.datapath.compile_seconds,
                "reuse_count": self.datapath.reuse_count,
                "prefilter": self.prefilter.record(),
            }
        connected = self.watcher is not None and self.watcher.connected.is_set()
        cluster = self.cluster.status() if self.cluster is not None else None
        return Snapshot(
            **held, drops=self.datapath.drop_counts(), docker_events=connected, cluster=cluster
        )

    def traffic(self) -> Traffic:
        """Read without the lock: BPF maps are safe to read while the control plane writes
        them, and walking conntrack (up to its capacity in entries) must not hold up
        plugin calls."""
        return Traffic(self.datapath.trace_counts(), self.datapath.ct_totals())

    # The cluster

    def forget_node(self, name: str) -> dict:
        """Free the node id (so the ranges) of a node gone for good, for a new node to have;
        only etcd changes, so the plane's lock is not taken."""
        if self.cluster is None:
            raise BadRequest("one host: there is no cluster to forget a node from")
        return {"name": name, "node_id": self.cluster.forget_node(name)}

    def list_nodes(self) -> list[dict]:
        """Every node of the cluster as this one sees it; on one host, this node alone."""
        if self.cluster is not None:
            return self.cluster.registry.nodes()
        return [
            {
                "name": socket.gethostname(),
                "node_id": self.node.node_id,
                "address": None,
                "ipv6_range": str(self.node.range6),
                "ipv4_range": str(self.node.range4),
            }
        ]

    # Endpoints and identities

    def list_endpoints(self) -> list[dict]:
        with self.lock:
            endpoints = self.store.endpoints()
            flags = self._endpoint_flags()
        return [
            {**_record(ep), "enforcement": _enforcement(flags.get(ep.numeric_id, 0))}
            for ep in endpoints
        ]

    def get_endpoint(self, ref: str) -> dict:
        """An endpoint by numeric id, container name, or a prefix of its container or
        endpoint id, with the policy entries of its datapath."""
        with self.lock:
            ep = self._find(ref)
            entries = self._policy_entries(ep)
            enforcement = _enforcement(self._endpoint_flags().get(ep.numeric_id, 0))
        policy = {
            "ingress_enforced": enforcement["ingress"],
            "egress_enforced": enforcement["egress"],
            "entries": entries,
        }
        return {**_record(ep), "policy": policy}

    @_locked
    def list_identities(self) -> list[dict]:
        """Reserved, this node's, then those only other nodes' endpoints have ("remote")."""
        reserved = [{**_reserved(number), "labels": {}} for number in RESERVED_IDENTITIES]
        own = [dataclasses.asdict(i) for i in self.store.identities()]
        taken = {i["identity"] for i in own}
        remote = [i for i in self._remote_identities() if i["identity"] not in taken]
        return reserved + own + remote

    def get_identity(self, number: int) -> dict:
        if number in RESERVED_IDENTITIES:
            return _reserved(number)
        with self.lock:
            found = self.store.get_identity(number)
            users = [ep.numeric_id for ep in self.store.endpoints() if ep.identity == number]
            remote = [i for i in self._remote_identities() if i["identity"] == number]
        if found is not None:
            return {**dataclasses.asdict(found), "endpoints": users}
        if remote:
            return {**remote[0], "endpoints": []}
        raise NotFound(f"identity {number} not found")

    def _remote_identities(self) -> list[dict]:
        """Cluster mode: the identities of other nodes' endpoints, with those nodes."""
        return self.remote_identities.records() if self.remote_identities is not None else []

    # Policy

    @_locked
    def get_policy(self) -> dict:
        return {
            "revision": self.regeneration.revision,
            "mode": self.regeneration.mode,
            "rules": self.regeneration.policy.to_json(),
        }

    @_locked
    def import_policy(
        self, files: list[tuple[str, str]], replace: bool = False, dry_run: bool = False
    ) -> dict:
        """The rules of files ((text, source) pairs) added, or with replace put in place of
        the rules with their name labels: {"revision", "warnings"} (rules that select
        nothing yet). A dry run changes nothing and adds what would change: rules_added,
        rules_removed, endpoints."""
        if self.cluster_policy is not None:
            return self.cluster_policy.import_rules(files, replace, dry_run)
        return self.regeneration.import_rules(files, replace, dry_run)

    @_locked
    def delete_policy(self, name: str | None, everything: bool) -> dict:
        if self.cluster_policy is not None:
            return self.cluster_policy.delete_rules(name, everything)
        return self.regeneration.delete_rules(name, everything)

    @_locked
    def set_mode(self, mode: str) -> str:
        """The enforcement mode now in force."""
        self.regeneration.set_mode(mode)
        return self.regeneration.mode

    @_locked
    def trace(self, src: dict, dst: dict, dport: int, protocol: int) -> Verdict:
        """The verdict the rules give a packet between two sets of labels."""
        return self.regeneration.trace(src, dst, dport, protocol)

    # Services

    @_locked
    def list_services(self) -> list[dict]:
        return self.services.records()

    @_locked
    def get_service(self, service_id: int) -> dict:
        found = self.services.get(service_id)
        return found.record(self.services.resolve(found))

    @_locked
    def update_service(self, request: dict) -> dict:
        if self.cluster_services is not None:
            return self.cluster_services.update(request)
        return self.services.update(request)

    @_locked
    def delete_service(self, service_id: int) -> None:
        if self.cluster_services is not None:
            self.cluster_services.delete(service_id)
            return
        self.services.delete(service_id)

    # XDP prefilter

    @_locked
    def prefilter_list(self) -> dict:
        return self.prefilter.record()

    @_locked
    def prefilter_update(self, cidrs: list[str], devices: list[str]) -> dict:
        return self.prefilter.update(cidrs, devices)

    @_locked
    def prefilter_delete(self, cidrs: list[str], devices: list[str]) -> dict:
        return self.prefilter.delete(cidrs, devices)

    # State and datapath tables, as they are

    @_locked
    def list_addresses(self) -> list[dict]:
        """Every address handed out, with its range and owner."""
        return self.store.addresses()

    @_locked
    def list_networks(self) -> list[Network]:
        return self.store.networks()

    @_locked
    def bpf_endpoints(self) -> dict:
        """ifindex -> the endpoint map's entry."""
        return self.datapath.endpoint_map_entries()

    @_locked
    def bpf_policy(self, ref: str) -> list[dict]:
        return self._policy_entries(self._find(ref))

    @_locked
    def bpf_ct(self) -> list:
        """The conntrack table's flows."""
        return self.datapath.ct_entries()

    @_locked
    def bpf_lb(self) -> dict:
        """Frontend -> (service id, backends)."""
        return self.datapath.services()

    # Events

    def events(
        self, kinds: frozenset[str], source: str | None, destination: str | None, idle: float
    ) -> Iterator[dict | None]:
        """Datapath events of these kinds from and to the endpoints named (any, if None),
        until the iterator is closed; None after `idle` seconds without one."""
        with self.lock:
            sources = self._addresses_of(source)
            destinations = self._addresses_of(destination)
        subscription = self.monitor.subscribe(kinds)
        return _feed(subscription, sources, destinations, idle)

    # Flows (the flow log: driver/control/flows.py)

    def flows(self, flow_filter: FlowFilter, last: int | None) -> list[dict]:
        """The flows in the log matching flow_filter, oldest first; the last `last` only."""
        flow_log = self._flow_log()
        directory = self.flow_directory()
        records = [describe(raw, directory) for raw in flow_log.records()]
        return select(records, flow_filter, last)

    def follow_flows(self, flow_filter: FlowFilter, idle: float) -> Iterator[dict | None]:
        """Flows as they come, until the iterator is closed; None after `idle` seconds
        without one."""
        return follow(self._flow_log(), self.flow_directory, flow_filter, idle)

    def service_map(self) -> dict:
        """Identities as nodes (with their containers now), the flows in the log between
        them as edges (counts by verdict, drop reasons, bytes of ended connections)."""
        flow_log = self._flow_log()
        directory = self.flow_directory()
        with self.lock:
            containers: dict[int, int] = {}
            for ep in self.store.endpoints():
                containers[ep.identity] = containers.get(ep.identity, 0) + 1
        records = [describe(raw, directory) for raw in flow_log.records()]
        return flow_service_map(records, directory, containers)

    def flow_counts(self) -> dict:
        """(verdict, source identity, destination identity) -> flows; {} without a log."""
        return self.flow_log.counts() if self.flow_log is not None else {}

    def flow_directory(self) -> Directory:
        """Names, labels, services and rules for describing flows, as they are now."""
        with self.lock:
            endpoints = self.store.endpoints()
            labels = flow_reserved_labels()
            for identity in self.store.identities():
                labels[identity.identity] = flow_labels(identity.labels) or [identity.key]
            for number, remote in self.regeneration.remote.items():
                labels.setdefault(number, flow_labels(remote))
            services = {s.service_id: str(s.frontend) for s in self.services.all()}
            origins = self.regeneration.rule_origins()
        by_id = {ep.numeric_id: ep for ep in endpoints}
        ends = {
            address: {"container": ep.container_name, "identity": ep.identity}
            for ep in endpoints
            for address in (ep.ipv6, ep.ipv4)
            if address
        }

        def rules(endpoint_id: int, key) -> tuple[str, ...]:
            ep = by_id.get(endpoint_id)
            if ep is None:
                return ()
            with self.lock:
                return origins(ep, key)

        directory = Directory(
            endpoints={
                ep.numeric_id: {"identity": ep.identity, "container": ep.container_name}
                for ep in endpoints
            },
            addresses=ends,
            labels=labels,
            services=services,
            rules=rules,
        )
        return self._flow_log().remember(directory)

    def _flow_log(self) -> FlowLog:
        if self.flow_log is None:
            raise NotFound("the flow log is off (--flow-buffer 0)")
        return self.flow_log

    # Helpers, under the lock

    def _find(self, ref: str) -> Endpoint:
        for ep in self.store.endpoints():
            if ref in (str(ep.numeric_id), ep.container_name) or any(
                value and len(ref) >= 4 and value.startswith(ref)
                for value in (ep.container_id, ep.endpoint_id)
            ):
                return ep
        raise NotFound(f"endpoint {ref} not found")

    def _addresses_of(self, ref: str | None) -> set[str]:
        if not ref:
            return set()
        ep = self._find(ref)
        return {a for a in (ep.ipv6, ep.ipv4) if a}

    def _endpoint_flags(self) -> dict[int, int]:
        """Endpoint numeric id -> the flags of its endpoint map entry."""
        return {e.endpoint_id: e.flags for e in self.datapath.endpoint_map_entries().values()}

    def _policy_entries(self, ep: Endpoint) -> list[dict]:
        entries = self.datapath.policy_entries(spec_of(ep))
        return [
            {**key._asdict(), "packets": packets, "bytes": size}
            for key, (packets, size) in sorted(entries.items())
        ]

    def _pool_holds_any(self, pool_id: str, addresses: set[str]) -> bool:
        owner = "pool:" + pool_id
        return any(self.store.address_owner(ip) == owner for ip in addresses)

    def _node_id(self) -> int:
        with self.store.transaction():
            stored = self.store.get_meta("node_id")
            node_id = self.config.node_id or (int(stored) if stored else node_id_from_machine_id())
            self.store.set_meta("node_id", str(node_id))
        return node_id

    def _join_cluster(self) -> None:
        """Cluster mode: the node id (and so the ranges) the cluster gives this node name,
        and this node's record in etcd."""
        from .cluster import Cluster

        self.cluster = Cluster(self.config)
        try:
            node_id = self.cluster.claim_node_id()
            with self.store.transaction():
                stored = self.store.get_meta("node_id")
                if stored and int(stored) != node_id and self.store.networks():
                    raise DriverError(
                        f"the state in {self.config.state_dir} holds networks of node id "
                        f"{stored}, but the cluster gives node {self.cluster.name} id "
                        f"{node_id}: remove them first (make uninstall)"
                    )
                self.store.set_meta("node_id", str(node_id))
            self.node = NodeAddressing.build(
                self.config.cluster_prefix6, node_id, self.cluster.node_range4(node_id)
            )
            self.cluster.register(node_id, str(self.node.range6), str(self.node.range4))
        except BaseException:
            self.cluster.close()
            raise
        self.cluster.when_available(self._assign_waiting)

    def _connect_cluster(self) -> None:
        """Cluster mode, once the endpoints are restored: the other nodes and their
        endpoints in the datapath, this node's endpoints and networks in etcd."""
        endpoints = self.store.endpoints()
        records = [self._endpoint_record(ep) for ep in endpoints]
        names = {net.network_id: net.name for net in self.store.networks() if net.name}
        in_use = {names[ep.network_id] for ep in endpoints if ep.network_id in names}
        address = self.cluster.address
        self.cluster.connect_datapath(
            self.datapath, self.lock, records, in_use, lambda: self.ports.taken_on(address)
        )
        self.cluster.serve_dns(self._network_of_address)

    def _network_of_address(self, address: str) -> str | None:
        """The network name of the local endpoint with that address (a DNS query's
        source), if any."""
        with self.lock:
            for ep in self.store.endpoints():
                if address in (ep.ipv6, ep.ipv4):
                    net = self.store.get_network(ep.network_id)
                    return net.name if net else None
        return None

    def replicate_networks(self, client) -> None:
        """Cluster mode: the cluster's networks made in this node's Docker (client, a
        docker.APIClient), and removed from it when the cluster deletes them."""
        replicas = Replicas(
            client,
            self.config.plugin_name,
            self.node.node_id,
            self.cluster.node_slots(),
        )
        self.cluster.networks.follow(replicas)

    def network_seen(self, network: dict) -> None:
        """The watcher saw a network of this driver created, as `docker network inspect`
        shows it: its name, and in cluster mode the network in the cluster (a network the
        cluster has already stays as it is). Not from a listing: a node that was down
        while the cluster deleted a network would publish it again."""
        with self.lock:
            if self.store.get_network(network["Id"]) is None:
                return
            with self.store.transaction():
                self.store.set_network_name(network["Id"], network["Name"])
            if self.cluster is None:
                return
            self._network_use(network["Id"])
            record = record_of(
                network, self.config.plugin_name, self.cluster.name, self.node.is_block
            )
        self.cluster.networks.publish(record)

    def endpoint_aliases(self, endpoint_id: str, aliases: list[str]) -> None:
        """The watcher learnt the names an endpoint's container has on its network."""
        with self.lock:
            if self.cluster is not None and self._aliases.get(endpoint_id) != aliases:
                self._aliases[endpoint_id] = aliases
                self._publish(endpoint_id)

    def _refuse_if_left(self) -> None:
        """Cluster mode: a node that left the cluster hands out no new network, endpoint or
        address (cluster.refuse_if_left); what it has keeps working and can be removed."""
        if self.cluster is not None:
            self.cluster.refuse_if_left()

    def _network_use(self, network_id: str) -> None:
        """Cluster mode: whether this node has endpoints on the network, for etcd."""
        net = self.store.get_network(network_id)
        if self.cluster is not None and net is not None and net.name:
            self.cluster.networks.use(net.name, bool(self.store.endpoints(network_id)))

    def _publish(self, endpoint_id: str) -> None:
        """Cluster mode: the endpoint as it is now, for the other nodes' ipcache."""
        ep = self.store.get_endpoint(endpoint_id)
        if self.cluster is not None and ep is not None:
            self.cluster.publisher.publish(self._endpoint_record(ep))

    def _ports_changed(self, endpoint_id: str) -> None:
        """Cluster mode: a local endpoint's published ports changed: its record for the
        other nodes, which publish them too, and other nodes' ports here (a local one
        takes a port first)."""
        if self.cluster is not None:
            self._publish(endpoint_id)
            self.cluster.remote_endpoints.sync_ports()

    def _endpoint_record(self, ep: Endpoint) -> EndpointRecord:
        net = self.store.get_network(ep.network_id)
        return EndpointRecord(
            node=self.cluster.name,
            node_address=self.cluster.address,
            endpoint_id=ep.numeric_id,
            ipv6=ep.ipv6,
            ipv4=ep.ipv4,
            identity=ep.identity,
            container_name=ep.container_name,
            aliases=self._aliases.get(ep.endpoint_id, []),
            network_id=ep.network_id,
            network_name=net.name if net else None,
            ports=cluster_ports(ep),
        )

    def _cluster_allocator(self) -> Allocator | None:
        """Cluster mode: identities from etcd, this node's own ones held there again."""
        if self.cluster is None:
            return None
        allocator = self.cluster.identity_allocator(
            FIRST_ENDPOINT_IDENTITY, ENDPOINT_IDENTITY_LIMIT
        )
        for record in self.store.identities("endpoint"):
            allocator.hold(record.identity, record.key)
        return allocator

    def _load_remote_identities(self) -> None:
        """Cluster mode: other nodes' identities read before the first regeneration (as
        Cilium waits for its identity cache), so a restart does not take their entries
        away for a moment; their watches start with the rest of the shared state."""
        from .cluster.remote_identities import RemoteIdentities

        self.remote_identities = RemoteIdentities(
            self.cluster.kv, self.cluster.name, self.lock, self.regeneration.set_remote
        )
        self.regeneration.remote = self.remote_identities.load()

    def _share_policy_and_services(self) -> None:
        """Cluster mode: policy and services are the cluster's, changed through etcd and put
        in force here from watches; the state keeps this node's copy."""
        from .cluster.policy import ClusterPolicy
        from .cluster.services import ClusterServices, RemoteBackends

        self.cluster_policy = ClusterPolicy(self.cluster.kv, self.regeneration, self.lock)
        self.cluster_services = ClusterServices(
            self.cluster.kv, self.services, self.store, self.lock
        )
        remote = RemoteBackends(self.cluster.kv, self.cluster.name, self.services, self.lock)
        for shared in (self.cluster_policy, self.cluster_services, remote, self.remote_identities):
            shared.start()
            self.on_close(shared.close)

    def _assign_waiting(self) -> None:
        """etcd answers again: the endpoints that waited for an identity get one."""
        with self.lock:
            waiting = dict(self._waiting)
        for endpoint_id, (network_id, network_name, container_id, name, labels) in sorted(
            waiting.items()
        ):
            self.assign_container(endpoint_id, network_id, network_name, container_id, name, labels)

    def _claim_ranges(self, service_ranges: list) -> None:
        """Refuse node ranges that the host routes elsewhere; make every owned range unreachable
        so nothing addressed to it leaves the host by accident."""
        for owned in (self.node.range6, self.node.range4, *service_ranges):
            overlaps = self.datapath.host_route_overlaps(str(owned))
            if overlaps:
                raise DriverError(
                    f"range {owned} overlaps host routes {', '.join(overlaps)}; "
                    "choose another cluster prefix, node or service range"
                )
        for owned in self.ipam.owned_ranges():
            self.datapath.add_unreachable_route(str(owned))


def _record(ep: Endpoint) -> dict:
    state = "waiting-for-identity" if ep.identity == INIT_ID else "ready"
    return {**dataclasses.asdict(ep), "state": state}


def _enforcement(flags: int) -> dict:
    return {
        "ingress": bool(flags & EP_F_INGRESS_ENFORCED),
        "egress": bool(flags & EP_F_EGRESS_ENFORCED),
    }


def _reserved(number: int) -> dict:
    return {
        "identity": number,
        "kind": "reserved",
        "key": f"reserved:{RESERVED_IDENTITIES[number]}",
    }


def _feed(
    subscription: Subscription, sources: set[str], destinations: set[str], idle: float
) -> Iterator[dict | None]:
    try:
        while True:
            try:
                event = subscription.events.get(timeout=idle)
            except queue.Empty:
                yield None
                continue
            if sources and event.get("src") not in sources:
                continue
            if destinations and event.get("dst") not in destinations:
                continue
            yield event
    finally:
        subscription.close()

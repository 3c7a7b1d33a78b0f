"""The one owner of the control plane: state, IPAM, networks, endpoints and the datapath.

Plugin and API handlers run on several gunicorn threads; every call that reads or changes
state goes through `with daemon.lock`, so concurrent Docker calls never interleave.
"""

import ipaddress
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from driver.config import Config
from driver.errors import DriverError

from .addressing import NodeAddressing, node_id_from_machine_id
from .endpoints import Endpoints
from .identities import LabelFilter
from .ipam import Ipam
from .loadbalancer import Services
from .monitor import Monitor
from .networks import Networks
from .ports import Ports, requested_ports
from .regeneration import Security
from .state import Store
from .watcher import DockerWatcher, Listener

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeldAtStart:
    """What the state held when the driver started (see Daemon.forget_what_docker_lost)."""

    networks: set[str]
    addresses: dict[str, str]  # address -> owner ("pool:<pool id>")
    subnet_pools: dict[str, str]  # pool id -> CIDR, pools of a user's --subnet


class Daemon:
    def __init__(self, config: Config, datapath):
        self.config = config
        self.datapath = datapath
        self.store = Store(config.state_db)
        self.lock = threading.RLock()
        self.node: NodeAddressing | None = None
        self.ipam: Ipam | None = None
        self.networks: Networks | None = None
        self.endpoints: Endpoints | None = None
        self.security: Security | None = None
        self.services: Services | None = None
        self.ports: Ports | None = None
        self.watcher: DockerWatcher | None = None
        self.monitor: Monitor | None = None
        self._closers: list[Callable[[], None]] = []
        # What the state held at start, until Docker's first full listing confirms it.
        self._unconfirmed: HeldAtStart | None = None

    def start(self) -> None:
        with self.lock:
            self.store.open()
            self.node = NodeAddressing.build(
                self.config.cluster_prefix6, self._node_id(), self.config.node_range4
            )
            self.datapath.start()
            self.ipam = Ipam(self.store, self.node, self.datapath, self.service_ranges())
            self.networks = Networks(
                self.store, self.ipam, self.datapath, self.node, self.config.mtu
            )
            self.endpoints = Endpoints(
                self.store, self.ipam, self.datapath, self.node, self.config.veth_prefix
            )
            self.monitor = Monitor(self.datapath)
            self.security = Security(
                self.store,
                self.datapath,
                LabelFilter(self.config.label_prefixes),
                self.config.policy_enforcement,
            )
            self.services = Services(self.store, self.datapath, self.service_ranges())
            self._claim_ranges()
            self.ports = Ports(self.store, self.datapath)
            self.endpoints.restore_all()
            self.ports.restore()
            self.security.refresh()
            self.services.sync()
            self._unconfirmed = HeldAtStart(
                networks={net.network_id for net in self.store.networks()},
                addresses={
                    a["address"]: a["owner"]
                    for a in self.store.addresses()
                    if a["owner"].startswith("pool:")
                },
                subnet_pools={p.pool_id: p.cidr for p in self.store.pools() if not p.shared},
            )
        log.info(
            "node %d ready: IPv6 %s router %s, IPv4 %s router %s",
            self.node.node_id,
            self.node.range6,
            self.node.router6,
            self.node.range4,
            self.node.router4,
        )

    def watch_docker(self) -> None:
        listener = Listener(self.network_ids, self.assign_container, self.forget_what_docker_lost)
        self.watcher = DockerWatcher(listener, self.config.docker_host, self.config.plugin_name)
        self.watcher.start()

    def on_close(self, closer: Callable[[], None]) -> None:
        """Run closer first in close(): for what serves the daemon (the metrics server)."""
        self._closers.append(closer)

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        if self.monitor is not None:
            self.monitor.close()
        if self.ports is not None:
            self.ports.close()
        with self.lock:
            self.datapath.close()
            self.store.close()

    def service_ranges(self) -> list:
        return [
            ipaddress.ip_network(self.config.service_range6),
            ipaddress.ip_network(self.config.service_range4),
        ]

    def delete_network(self, network_id: str) -> None:
        self.networks.delete(network_id, self.delete_endpoint)

    def join(self, network_id: str, endpoint_id: str, sandbox_key: str, options: dict) -> dict:
        requested = requested_ports(options)
        reply = self.endpoints.join(network_id, endpoint_id, sandbox_key)
        self.ports.publish(self.store.get_endpoint(endpoint_id), requested)
        return reply

    def leave(self, network_id: str, endpoint_id: str) -> None:
        """The container is going: its ports close and it stops being a service backend."""
        ep = self.store.get_endpoint(endpoint_id)
        if ep is not None:
            self.ports.withdraw(ep)
        self.endpoints.leave(network_id, endpoint_id)
        self.services.sync()

    def delete_endpoint(self, endpoint_id: str) -> None:
        ep = self.store.get_endpoint(endpoint_id)
        if ep is not None:
            self.ports.withdraw(ep)
        self.endpoints.delete(endpoint_id)
        self.security.refresh()
        self.services.sync()

    def network_ids(self) -> set[str]:
        with self.lock:
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
        """Called by the Docker events watcher once it knows an endpoint's container."""
        with self.lock:
            ep = self.store.get_endpoint(endpoint_id)
            if ep is None or ep.network_id != network_id:
                return
            identity = self.security.assign_container(ep, network_name, container_id, name, labels)
            self.services.sync()
        log.info("endpoint %d is container %s, identity %d", ep.numeric_id, name, identity)

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
        with self.lock:
            if self._unconfirmed is None:
                return
            held_at_start, self._unconfirmed = self._unconfirmed, None
            endpoints = self.store.endpoints()
            in_use = {ep.network_id for ep in endpoints}
            held = {ip for ep in endpoints for ip in (ep.ipv6, ep.ipv4) if ip}
            for network_id in sorted(held_at_start.networks - docker_networks - in_use):
                if self.store.get_network(network_id) is not None:
                    log.info("forgetting network %s, which Docker does not have", network_id)
                    self.delete_network(network_id)
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

    def _pool_holds_any(self, pool_id: str, addresses: set[str]) -> bool:
        owner = "pool:" + pool_id
        return any(self.store.address_owner(ip) == owner for ip in addresses)

    def _node_id(self) -> int:
        with self.store.transaction():
            stored = self.store.get_meta("node_id")
            node_id = self.config.node_id or (int(stored) if stored else node_id_from_machine_id())
            self.store.set_meta("node_id", str(node_id))
        return node_id

    def _claim_ranges(self) -> None:
        """Refuse node ranges that the host routes elsewhere; make every owned range unreachable
        so nothing addressed to it leaves the host by accident."""
        own = [self.node.range6, self.node.range4, *self.service_ranges()]
        for owned in own:
            overlaps = self.datapath.host_route_overlaps(str(owned))
            if overlaps:
                raise DriverError(
                    f"range {owned} overlaps host routes {', '.join(overlaps)}; "
                    "choose another cluster prefix, node or service range"
                )
        for owned in self.ipam.owned_ranges():
            self.datapath.add_unreachable_route(str(owned))

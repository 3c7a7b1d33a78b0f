"""Published ports (`docker run -p HOSTPORT:PORT`) of endpoints.

Docker hands the port map to the driver in the Join options. Traffic to the host's own
addresses is DNATed in netfilter (so policy sees the real peer: world, or host); loopback
(127.0.0.1, [::1]) goes through a user-space proxy. Docker cannot show a remote driver's
mappings (`docker port` is empty): `cilium endpoint get` shows them.
"""

import ipaddress
import logging
from dataclasses import asdict, dataclass

from datapath import PortMapping
from datapath.abi import PORT_PROTOCOLS, PROTO_TCP, PROTOCOL_NAMES
from datapath.interface import DatapathApi
from datapath.netfilter.proxy import LoopbackProxy
from driver.errors import Conflict, InvalidArgument

from .state import Endpoint, Store

log = logging.getLogger(__name__)

PORTMAP_OPTION = "com.docker.network.portmap"
EPHEMERAL_PORTS = range(49152, 65536)
ANY_HOST = {"": None, "0.0.0.0": 4, "::": 6}
LOOPBACK = {4: "127.0.0.1", 6: "::1"}
# Tags of other nodes' containers' ports published on this node (cluster/nodeports.py).
REMOTE_TAG = "remote:"


@dataclass(frozen=True)
class Published:
    protocol: int
    host_ip: str  # "" every host address; "0.0.0.0" / "::" every address of one family
    host_port: int
    port: int

    def __str__(self) -> str:
        host = f"[{self.host_ip}]" if ":" in self.host_ip else self.host_ip
        return f"{host}:{self.host_port}->{self.port}/{PROTOCOL_NAMES[self.protocol]}"

    def clashes(self, other: "Published") -> bool:
        same_port = (self.protocol, self.host_port) == (other.protocol, other.host_port)
        return same_port and (self.host_ip == other.host_ip or "" in (self.host_ip, other.host_ip))

    def families(self) -> set[int]:
        if self.host_ip in ANY_HOST:
            family = ANY_HOST[self.host_ip]
            return {4, 6} if family is None else {family}
        return {ipaddress.ip_address(self.host_ip).version}


def requested_ports(options: dict) -> list[Published]:
    """The port map of a Join or CreateEndpoint request, validated."""
    requested = []
    for item in (options or {}).get(PORTMAP_OPTION) or []:
        try:
            protocol, port = int(item["Proto"]), int(item["Port"])
            host_port = int(item.get("HostPort") or 0)
            host_end = int(item.get("HostPortEnd") or host_port)
            host_ip = str(item.get("HostIP") or "")
            if host_ip not in ANY_HOST:
                host_ip = str(ipaddress.ip_address(host_ip))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidArgument(f"port mapping {item!r} does not parse: {exc}") from None
        if protocol not in PORT_PROTOCOLS:
            raise InvalidArgument(f"port mapping {item!r}: only tcp and udp can be published")
        if not 1 <= port <= 0xFFFF or not 0 <= host_port <= host_end <= 0xFFFF:
            raise InvalidArgument(f"port mapping {item!r}: port out of range")
        requested.append((Published(protocol, host_ip, host_port, port), host_end))
    return requested


class Ports:
    """Callers hold the control plane's lock."""

    def __init__(self, store: Store, datapath: DatapathApi):
        self.store = store
        self.datapath = datapath
        self._proxies: dict[str, list[LoopbackProxy]] = {}

    def publish(self, ep: Endpoint, requested: list) -> list[Published]:
        """Give the endpoint its host ports: chosen, checked for clashes, installed, saved."""
        taken = [
            p
            for other in self.store.endpoints()
            if other.endpoint_id != ep.endpoint_id
            for p in map(_published, other.ports)
        ]
        chosen = []
        for wanted, host_end in requested:
            published = self._choose(wanted, host_end, taken + chosen)
            chosen.append(published)
        if chosen:
            self.apply(ep, chosen)
            with self.store.transaction():
                self.store.set_ports(ep.endpoint_id, [asdict(p) for p in chosen])
        return chosen

    def withdraw(self, ep: Endpoint) -> None:
        """The container leaves: its ports close and are forgotten."""
        self.unpublish(ep)
        if ep.ports:
            with self.store.transaction():
                self.store.set_ports(ep.endpoint_id, [])

    def apply(self, ep: Endpoint, published: list[Published]) -> None:
        """Install DNAT rules and loopback proxies; all or nothing."""
        tag = _tag(ep)
        self.unpublish(ep)
        if not published:
            return
        self.datapath.publish_ports(tag, [m for p in published for m in _dnat(ep, p)])
        proxies = []
        try:
            for p in published:
                for listen, target in _proxied(ep, p):
                    proxy = LoopbackProxy(listen, target)
                    proxy.start()
                    proxies.append(proxy)
        except OSError as exc:
            for proxy in proxies:
                proxy.stop()
            self.datapath.unpublish_ports(tag)
            raise Conflict(f"cannot publish {p}: {exc.strerror or exc}") from None
        self._proxies[tag] = proxies

    def unpublish(self, ep: Endpoint) -> None:
        """Close the endpoint's ports. Only endpoints that published some have rules: the
        others cost no netfilter round trip (most containers publish nothing)."""
        tag = _tag(ep)
        for proxy in self._proxies.pop(tag, []):
            proxy.stop()
        if ep.ports:
            self.datapath.unpublish_ports(tag)

    def restore(self, keep_remote: bool = False) -> None:
        """After a restart: rules and proxies of joined endpoints again, orphan rules gone
        (in cluster mode, not other nodes' ones: the cluster's watch settles those)."""
        endpoints = self.store.endpoints()
        for ep in endpoints:
            if ep.ports and ep.sandbox_key:
                try:
                    self.apply(ep, [_published(p) for p in ep.ports])
                except Conflict as exc:
                    log.warning("endpoint %d: %s", ep.numeric_id, exc)
        known = {_tag(ep) for ep in endpoints}
        for tag in self.datapath.published_tags() - known:
            if not (keep_remote and tag.startswith(REMOTE_TAG)):
                self.datapath.unpublish_ports(tag)

    def taken_on(self, address: str) -> set[tuple[int, int]]:
        """(protocol, host port) of every IPv4 port local containers publish on address."""
        return {
            (p.protocol, p.host_port)
            for ep in self.store.endpoints()
            if ep.ipv4
            for p in map(_published, ep.ports)
            if p.host_ip in ("", "0.0.0.0", address)
        }

    def close(self) -> None:
        for proxies in self._proxies.values():
            for proxy in proxies:
                proxy.stop()
        self._proxies.clear()

    def _choose(self, wanted: Published, host_end: int, taken: list[Published]) -> Published:
        candidates = range(wanted.host_port, host_end + 1) if wanted.host_port else EPHEMERAL_PORTS
        for port in candidates:
            candidate = Published(wanted.protocol, wanted.host_ip, port, wanted.port)
            if not any(candidate.clashes(t) for t in taken):
                return candidate
        raise Conflict(f"host port {wanted} is already published by another container")


def cluster_ports(ep: Endpoint) -> list[dict]:
    """The endpoint's IPv4 ports published on every host address: the ones every node of a
    cluster publishes on its own address too (its endpoint record's "ports")."""
    if not ep.ipv4:
        return []
    found = {
        (PROTOCOL_NAMES[p.protocol], p.host_port, p.port)
        for p in map(_published, ep.ports)
        if p.host_ip in ("", "0.0.0.0")
    }
    return [
        {"proto": proto, "host_port": host_port, "container_port": port}
        for proto, host_port, port in sorted(found)
    ]


def _tag(ep: Endpoint) -> str:
    return "pycilium-ep-" + ep.endpoint_id[:16]


def _published(record: dict) -> Published:
    return Published(**record)


def _container_address(ep: Endpoint, family: int):
    text = ep.ipv6 if family == 6 else ep.ipv4
    return ipaddress.ip_address(text) if text else None


def _dnat(ep: Endpoint, p: Published) -> list[PortMapping]:
    mappings = []
    for family in sorted(p.families()):
        address = _container_address(ep, family)
        host_ip = None if p.host_ip in ANY_HOST else ipaddress.ip_address(p.host_ip)
        if address is None or (host_ip is not None and host_ip.is_loopback):
            continue
        mappings.append(PortMapping(p.protocol, host_ip, p.host_port, address, p.port))
    return mappings


def _proxied(ep: Endpoint, p: Published) -> list[tuple[tuple[str, int], tuple[str, int]]]:
    """Loopback listeners of a TCP mapping that covers the loopback address."""
    if p.protocol != PROTO_TCP:
        return []
    pairs = []
    for family in sorted(p.families()):
        address = _container_address(ep, family)
        covers_loopback = p.host_ip in ANY_HOST or p.host_ip == LOOPBACK[family]
        if address is not None and covers_loopback:
            pairs.append(((LOOPBACK[family], p.host_port), (str(address), p.port)))
    return pairs

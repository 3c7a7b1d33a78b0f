"""Container endpoints: the veth, addresses and datapath entries of one container on one network."""

import hashlib
import ipaddress
import logging

from datapath import EndpointSpec, Outbound
from datapath.interface import DatapathApi
from driver import failpoints
from driver.errors import Conflict, DriverError, InvalidArgument, NotFound

from .addressing import NodeAddressing
from .ipam import Ipam
from .state import Endpoint, Network, Store

log = logging.getLogger(__name__)

CONNECTED = 1
NEXT_HOP = 0
DEFAULT6_HALVES = ("::/1", "8000::/1")
MAX_NUMERIC_ID = 0xFFFE
NUMERIC_ID_CURSOR = "cursor:endpoint-id"


class Endpoints:
    def __init__(
        self,
        store: Store,
        ipam: Ipam,
        datapath: DatapathApi,
        node: NodeAddressing,
        veth_prefix: str,
        nat64_prefix: str = "64:ff9b::/96",
    ):
        self.store = store
        self.ipam = ipam
        self.datapath = datapath
        self.node = node
        self.veth_prefix = veth_prefix
        self.nat64_prefix = nat64_prefix

    def create(self, network_id: str, endpoint_id: str, interface: dict) -> dict:
        """Make the endpoint; return the Interface fields Docker left empty and we filled."""
        existing = self.store.get_endpoint(endpoint_id)
        if existing is not None:
            if existing.network_id != network_id:
                raise Conflict(f"endpoint {endpoint_id} exists on network {existing.network_id}")
            return existing.returned
        net = self._network(network_id)
        returned = {}
        mac = interface.get("MacAddress") or ""
        if not mac:
            mac = _mac_for(endpoint_id)
            returned["MacAddress"] = mac
        ipv4 = _interface_ip(interface.get("Address"), 4)
        made = False
        try:
            with self.store.transaction():
                if ipv4 is None and net.outbound == Outbound.NAT64.value:
                    # Docker 28's --ipv4=false: the NAT64 side comes from the driver's block,
                    # and Docker never hears of it.
                    block = ipaddress.ip_network(net.pool4)
                    ipv4 = self.ipam.allocate(block, owner="endpoint:" + endpoint_id)
                ipv6 = _interface_ip(interface.get("AddressIPv6"), 6)
                if ipv6 is None:
                    if not net.ipv6_by_driver:
                        raise InvalidArgument("Docker gave no IPv6 address on an IPv6 network")
                    block = ipaddress.ip_network(net.pool6)
                    ipv6 = self.ipam.allocate(block, owner="endpoint:" + endpoint_id)
                    returned["AddressIPv6"] = f"{ipv6}/128"
                ep = Endpoint(
                    endpoint_id=endpoint_id,
                    network_id=network_id,
                    numeric_id=self._free_numeric_id(),
                    host_ifname=self.veth_prefix + endpoint_id[:12],
                    peer_ifname="tmp" + endpoint_id[:12],
                    mac=mac,
                    ipv6=str(ipv6),
                    ipv4=str(ipv4) if ipv4 else None,
                    router6=net.gateway6,
                    router4=net.gateway4,
                    mtu=net.mtu,
                    returned=returned,
                )
                self.store.add_endpoint(ep)
                self.datapath.create_endpoint(spec_of(ep, Outbound(net.outbound)))
                made = True
                failpoints.hit("create_endpoint.after_veth")
        except BaseException:
            if made:
                self.datapath.delete_endpoint(spec_of(ep))
            raise
        return returned

    def delete(self, endpoint_id: str) -> None:
        ep = self.store.get_endpoint(endpoint_id)
        if ep is None:
            return
        self.datapath.delete_endpoint(spec_of(ep))
        failpoints.hit("delete_endpoint.after_datapath")
        self._forget(ep)

    def join(self, network_id: str, endpoint_id: str, sandbox_key: str) -> dict:
        """Routes of this network only: a connected route to its router and, where the
        container's address is a host address, one to its subnet through the router. Every
        network has its own router and subnet, so several on one container never collide.
        The default routes are Docker's to make (it picks one network's Gateway for them,
        and changes them as networks come and go)."""
        ep = self.store.get_endpoint(endpoint_id)
        if ep is None or ep.network_id != network_id:
            raise NotFound(f"endpoint {endpoint_id} not found on network {network_id}")
        net = self._network(network_id)
        routes = _router_routes(ep.router6, self._routed_subnet(net, net.pool6))
        reply = {
            "InterfaceName": {"SrcName": ep.peer_ifname, "DstPrefix": "eth"},
            "GatewayIPv6": ep.router6,
            "DisableGatewayService": True,
        }
        if net.outbound == Outbound.NAT64.value:
            # IPv6-only: no IPv4 gateway and no IPv4 route, so the IPv4 address Docker puts
            # on the interface (the endpoint's NAT64 side) is never used by the container.
            # Docker 20.10 installs ::/0 only for a network that gave an IPv4 gateway; the
            # two halves of ::/0 stand in for it and never collide with a ::/0 that Docker
            # adds for another network of the container (or for this one, on Docker 28).
            routes += [
                {"Destination": dest, "RouteType": NEXT_HOP, "NextHop": ep.router6}
                for dest in (self.nat64_prefix, *DEFAULT6_HALVES)
            ]
            with self.store.transaction():
                self.store.set_sandbox(endpoint_id, sandbox_key)
            return {**reply, "StaticRoutes": routes}
        if ep.router4:
            routes += _router_routes(ep.router4, self._routed_subnet(net, net.pool4))
            reply["Gateway"] = ep.router4
        with self.store.transaction():
            self.store.set_sandbox(endpoint_id, sandbox_key)
        return {**reply, "StaticRoutes": routes}

    def _routed_subnet(self, net: Network, pool: str | None) -> str | None:
        """The subnet the container reaches through the router, or None: Docker's own IPAM
        gives addresses with the subnet's length, so the kernel routes it already, and a
        network made before blocks existed shares the node range with others."""
        if not pool or pool in net.owned_routes:
            return None
        subnet = ipaddress.ip_network(pool)
        if subnet.prefixlen == 0 or subnet == self.node.range_of(subnet.version):
            return None
        return pool

    def leave(self, network_id: str, endpoint_id: str) -> None:
        ep = self.store.get_endpoint(endpoint_id)
        if ep is None or ep.network_id != network_id:
            return
        with self.store.transaction():
            self.store.set_sandbox(endpoint_id, None)

    def restore_all(self) -> list[str]:
        """After a driver restart: re-make the datapath of live endpoints, forget dead ones,
        remove veths and map entries nobody owns. Returns the endpoints forgotten."""
        forgotten = []
        outbound = {net.network_id: Outbound(net.outbound) for net in self.store.networks()}
        for ep in self.store.endpoints():
            if self.datapath.link_exists(ep.peer_ifname):
                # Docker pulled the interface out of a container that stopped while we were down.
                self.datapath.delete_endpoint(spec_of(ep))
                alive = False
            else:
                spec = spec_of(ep, outbound.get(ep.network_id, Outbound.MASQUERADE))
                alive = self.datapath.restore_endpoint(spec)
            if not alive:
                self._forget(ep)
                forgotten.append(ep.endpoint_id)
        known = {ep.host_ifname for ep in self.store.endpoints()}
        removed = self.datapath.remove_orphans(known)
        if forgotten or removed:
            log.info("restore: forgot endpoints %s, removed orphans %s", forgotten, removed)
        return forgotten

    def _forget(self, ep: Endpoint) -> None:
        with self.store.transaction():
            self.store.delete_endpoint(ep.endpoint_id)
            for address in (ep.ipv6, ep.ipv4):
                if address and self.store.address_owner(address) == "endpoint:" + ep.endpoint_id:
                    self.store.delete_address(address)

    def _network(self, network_id: str) -> Network:
        net = self.store.get_network(network_id)
        if net is None:
            raise NotFound(f"network {network_id} not found")
        return net

    def _free_numeric_id(self) -> int:
        """The next free id after the last one given. A deleted endpoint's flows are swept
        in the background, and a new endpoint with its id would wait for that sweep; so ids,
        like addresses, are not reused at once. The caller holds a transaction."""
        used = self.store.used_numeric_ids()
        cursor = int(self.store.get_meta(NUMERIC_ID_CURSOR) or 0)
        for step in range(1, MAX_NUMERIC_ID + 1):
            candidate = (cursor + step - 1) % MAX_NUMERIC_ID + 1
            if candidate not in used:
                self.store.set_meta(NUMERIC_ID_CURSOR, str(candidate))
                return candidate
        raise DriverError("no free endpoint id left on this node")


def spec_of(ep: Endpoint, outbound: Outbound = Outbound.MASQUERADE) -> EndpointSpec:
    """The datapath's view of ep; outbound (its network's) counts where the datapath makes
    or restores the endpoint, and nowhere else."""
    return EndpointSpec(
        endpoint_id=ep.numeric_id,
        host_ifname=ep.host_ifname,
        peer_ifname=ep.peer_ifname,
        mac=ep.mac,
        ipv6=ipaddress.IPv6Address(ep.ipv6),
        ipv4=ipaddress.IPv4Address(ep.ipv4) if ep.ipv4 else None,
        router6=ipaddress.IPv6Address(ep.router6),
        router4=ipaddress.IPv4Address(ep.router4) if ep.router4 else None,
        mtu=ep.mtu,
        identity=ep.identity,
        outbound=outbound,
    )


def _router_routes(router: str, subnet: str | None) -> list[dict]:
    ip = ipaddress.ip_address(router)
    routes = [{"Destination": f"{ip}/{ip.max_prefixlen}", "RouteType": CONNECTED}]
    if subnet:
        routes.append({"Destination": subnet, "RouteType": NEXT_HOP, "NextHop": router})
    return routes


def _interface_ip(text: str | None, version: int):
    if not text:
        return None
    try:
        ip = ipaddress.ip_interface(text).ip
    except ValueError:
        raise InvalidArgument(f"interface address {text!r} does not parse") from None
    if ip.version != version:
        raise InvalidArgument(f"interface address {text!r} is not IPv{version}")
    return ip


def _mac_for(endpoint_id: str) -> str:
    """A locally administered unicast MAC derived from the endpoint id (stable across replays)."""
    digest = hashlib.sha256(endpoint_id.encode()).digest()
    return ":".join(f"{b:02x}" for b in bytes([0x02]) + digest[:5])

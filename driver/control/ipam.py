"""The IPAM driver's logic: pools and addresses, persisted in the state store.

A pool requested without a subnet maps onto this node's range (IPv6 /112; IPv4 handed to
Docker as 0.0.0.0/0 so its overlap check is skipped); every such pool shares the node range,
so two networks never get the same address. A user's --subnet is honoured as its own range.
Endpoint addresses are returned as /128 and /32: containers are routed, not bridged.
"""

import contextlib
import ipaddress
import uuid

from datapath.interface import DatapathApi
from driver import failpoints
from driver.errors import Conflict, DriverError, InvalidArgument, NotFound

from .addressing import NodeAddressing
from .state import Pool, Store

GATEWAY_OPTION = "com.docker.network.gateway"
ADDRESS_TYPE_OPTION = "RequestAddressType"
LOCAL_ADDRESS_SPACE = "CiliumLocal"
GLOBAL_ADDRESS_SPACE = "CiliumGlobal"
ANY4 = ipaddress.IPv4Network("0.0.0.0/0")


@contextlib.contextmanager
def unreachable_routes(datapath: DatapathApi, cidrs):
    """The unreachable routes of cidrs for the block inside, taken away again if the block
    fails: a transaction that does not commit must leave no route of what it would have
    owned. Enter it before the transaction, so that a failed commit is seen here."""
    added = []
    try:
        for cidr in cidrs:
            datapath.add_unreachable_route(cidr)
            added.append(cidr)
        yield
    except BaseException:
        for cidr in added:
            datapath.remove_unreachable_route(cidr)
        raise


class Ipam:
    def __init__(
        self, store: Store, node: NodeAddressing, datapath: DatapathApi, service_ranges=()
    ):
        self.store = store
        self.node = node
        self.datapath = datapath
        self.service_ranges = list(service_ranges)

    def request_pool(self, pool: str, sub_pool: str, v6: bool) -> Pool:
        if not pool:
            if sub_pool:
                raise InvalidArgument("a sub-pool needs an explicit pool")
            return self._add_shared_pool(v6)
        cidr = _parse_network(pool, "pool")
        alloc_range = _parse_network(sub_pool, "sub-pool") if sub_pool else cidr
        if (cidr.version == 6) != v6:
            raise InvalidArgument(f"pool {pool} is not an IPv{6 if v6 else 4} subnet")
        if not alloc_range.subnet_of(cidr):
            raise InvalidArgument(f"sub-pool {sub_pool} is not inside pool {pool}")
        if cidr.num_addresses < 4:
            raise InvalidArgument(f"pool {pool} is too small for a gateway and endpoints")
        self.check_free_range(cidr)
        entry = Pool(
            pool_id=f"{cidr}/{uuid.uuid4().hex[:12]}",
            cidr=str(cidr),
            alloc_range=str(alloc_range),
            version=cidr.version,
            gateway=None,
            shared=False,
        )
        with unreachable_routes(self.datapath, [entry.cidr]), self.store.transaction():
            self.store.add_pool(entry)
        return entry

    def check_free_range(self, cidr) -> None:
        """Refuse a range that overlaps the host's routes or a range this driver already owns."""
        host_routes = self.datapath.host_route_overlaps(str(cidr))
        if host_routes:
            raise Conflict(f"subnet {cidr} overlaps host routes: {', '.join(host_routes)}")
        for owned in self.owned_ranges():
            if owned.version == cidr.version and owned.overlaps(cidr):
                raise Conflict(f"subnet {cidr} overlaps {owned}, which is already in use")

    def owned_ranges(self) -> list:
        """Every range whose unreachable route this driver keeps: node and service ranges,
        user pools and the pools Docker's own IPAM gave to cilium networks."""
        ranges = [self.node.range6, self.node.range4, *self.service_ranges]
        ranges += [ipaddress.ip_network(p.cidr) for p in self.store.pools() if not p.shared]
        for net in self.store.networks():
            ranges += [ipaddress.ip_network(cidr) for cidr in net.owned_routes]
        return ranges

    def _add_shared_pool(self, v6: bool) -> Pool:
        node_range = self.node.range6 if v6 else self.node.range4
        router = self.node.router6 if v6 else self.node.router4
        entry = Pool(
            pool_id=f"node{6 if v6 else 4}/{uuid.uuid4().hex[:12]}",
            cidr=str(node_range if v6 else ANY4),
            alloc_range=str(node_range),
            version=6 if v6 else 4,
            gateway=f"{router}/{router.max_prefixlen}",
            shared=True,
        )
        with self.store.transaction():
            self.store.add_pool(entry)
        return entry

    def release_pool(self, pool_id: str) -> None:
        entry = self.store.get_pool(pool_id)
        if entry is None:
            return
        with self.store.transaction():
            self.store.delete_pool(pool_id)
        # Only once the pool is gone for good: a failed commit keeps pool and route.
        if not entry.shared:
            self.datapath.remove_unreachable_route(entry.cidr)

    def request_address(self, pool_id: str, address: str, options: dict | None) -> str:
        entry = self._pool(pool_id)
        is_gateway = (options or {}).get(ADDRESS_TYPE_OPTION) == GATEWAY_OPTION
        if is_gateway and entry.shared:
            return entry.gateway
        alloc_range = ipaddress.ip_network(entry.alloc_range)
        if address:
            ip = _parse_address(address)
            self._check_in_pool(ip, entry)
            with self.store.transaction():
                self.reserve(ip, alloc_range, owner="pool:" + pool_id)
                failpoints.hit("request_address.before_commit")
        else:
            with self.store.transaction():
                ip = self.allocate(alloc_range, owner="pool:" + pool_id)
                failpoints.hit("request_address.before_commit")
        if is_gateway:
            return f"{ip}/{ipaddress.ip_network(entry.cidr).prefixlen}"
        return f"{ip}/{ip.max_prefixlen}"

    def release_address(self, pool_id: str, address: str) -> None:
        entry = self.store.get_pool(pool_id)
        if entry is None or not address:
            return
        ip = _parse_address(address)
        if self.store.address_owner(str(ip)) == "pool:" + pool_id:
            with self.store.transaction():
                self.store.delete_address(str(ip))

    def reserve(self, ip, alloc_range, owner: str) -> None:
        """Claim one given address; the caller holds a transaction."""
        if ip in self.node.reserved():
            raise Conflict(f"address {ip} is reserved for the router or the host")
        if self.store.address_owner(str(ip)) is not None:
            raise Conflict(f"address {ip} is already in use")
        self.store.add_address(str(ip), str(alloc_range), owner)

    def allocate(self, alloc_range, owner: str):
        """The next free address after the last one handed out, so a released address is not
        reused at once. The caller holds a transaction."""
        used = self.store.used_addresses(str(alloc_range))
        reserved = self.node.reserved()
        first = int(alloc_range.network_address) + 1
        # A /31, /32, /127 or /128 has no network or broadcast address to skip.
        last = int(alloc_range.broadcast_address) - (alloc_range.version == 4)
        if alloc_range.num_addresses <= 2:
            first, last = int(alloc_range.network_address), int(alloc_range.broadcast_address)
        cursor_key = "cursor:" + str(alloc_range)
        cursor = int(self.store.get_meta(cursor_key) or first - 1)
        span = last - first + 1
        for step in range(1, min(span, len(used) + len(reserved) + 1) + 1):
            candidate = first + (cursor - first + step) % span
            ip = ipaddress.ip_address(candidate)
            if str(ip) not in used and ip not in reserved:
                self.store.add_address(str(ip), str(alloc_range), owner)
                self.store.set_meta(cursor_key, str(candidate))
                return ip
        raise DriverError(f"no free address left in {alloc_range}")

    def _pool(self, pool_id: str) -> Pool:
        entry = self.store.get_pool(pool_id)
        if entry is None:
            raise NotFound(f"pool {pool_id} not found")
        return entry

    def _check_in_pool(self, ip, entry: Pool) -> None:
        alloc_range = ipaddress.ip_network(entry.alloc_range)
        if ip.version != alloc_range.version or ip not in alloc_range:
            raise InvalidArgument(f"address {ip} is not in pool {entry.alloc_range}")


def _parse_network(text: str, what: str):
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise InvalidArgument(f"{what} {text!r} is not a valid subnet: {exc}") from exc


def _parse_address(text: str):
    """An address as Docker sends it: a plain IP, sometimes with a prefix length."""
    try:
        return ipaddress.ip_interface(text).ip
    except ValueError as exc:
        raise InvalidArgument(f"{text!r} is not a valid IP address") from exc

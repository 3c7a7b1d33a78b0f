"""The IPAM driver's logic: pools and addresses, persisted in the state store.

A pool requested without a subnet is a block of this node's range (see addressing.py), with
its router as gateway; a user's --subnet is honoured as its own range. Endpoint addresses are
returned as /128 and /32: containers are routed, not bridged.

Docker checks an IPv4 pool it did not name against the host's IPv4 routes and asks again
while it overlaps one, for ever; the node range's unreachable route overlaps every block.
So from the pool request until Docker asks for the block's gateway (at once, after that
check) the block is "pending": unreachable routes cover the node range around it instead of
over it. Pools of networks made before blocks existed ("shared") span the whole node range
(IPv4 shown as 0.0.0.0/0) and keep working; their allocations skip every block.
"""

import contextlib
import ipaddress
import uuid

from datapath.interface import DatapathApi
from driver import failpoints
from driver.errors import Conflict, DriverError, InvalidArgument, NotFound

from .addressing import NodeAddressing, block_router, node_slice
from .state import Pool, Store

GATEWAY_OPTION = "com.docker.network.gateway"
ADDRESS_TYPE_OPTION = "RequestAddressType"
LOCAL_ADDRESS_SPACE = "CiliumLocal"
GLOBAL_ADDRESS_SPACE = "CiliumGlobal"


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
        self,
        store: Store,
        node: NodeAddressing,
        datapath: DatapathApi,
        service_ranges=(),
        cluster_slots: int = 0,
    ):
        self.store = store
        self.node = node
        self.datapath = datapath
        self.service_ranges = list(service_ranges)
        # Cluster mode: the node ids a user's subnet is split for (addressing.node_slice).
        self.cluster_slots = cluster_slots

    def request_pool(self, pool: str, sub_pool: str, v6: bool) -> Pool:
        if not pool:
            if sub_pool:
                raise InvalidArgument("a sub-pool needs an explicit pool")
            return self._add_block_pool(6 if v6 else 4)
        cidr = _parse_network(pool, "pool")
        alloc_range = _parse_network(sub_pool, "sub-pool") if sub_pool else cidr
        if (cidr.version == 6) != v6:
            raise InvalidArgument(f"pool {pool} is not an IPv{6 if v6 else 4} subnet")
        if not alloc_range.subnet_of(cidr):
            raise InvalidArgument(f"sub-pool {sub_pool} is not inside pool {pool}")
        if cidr.num_addresses < 4:
            raise InvalidArgument(f"pool {pool} is too small for a gateway and endpoints")
        if self.cluster_slots:
            alloc_range = node_slice(alloc_range, self.node.node_id, self.cluster_slots)
            if alloc_range is None:
                raise InvalidArgument(
                    f"{sub_pool or pool} is too small to split between "
                    f"{self.cluster_slots} node ids (each node allocates from its own part)"
                )
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
        ranges = [self.node.range6, *self.coverage4(), *self.service_ranges]
        for pool in self.store.pools():
            cidr = ipaddress.ip_network(pool.cidr)
            if not pool.shared and not self.node.is_block(cidr):
                ranges.append(cidr)
        for net in self.store.networks():
            ranges += [ipaddress.ip_network(cidr) for cidr in net.owned_routes]
        return ranges

    def coverage4(self) -> list:
        """The unreachable routes that cover the IPv4 node range: all of it, or, while
        blocks are pending, the parts around them."""
        pools = [p for p in self.store.pools() if p.version == 4 and p.gateway is None]
        blocks = (ipaddress.ip_network(p.cidr) for p in pools)
        return _without(self.node.range4, [b for b in blocks if self.node.is_block(b)])

    def carve(self, version: int):
        """A free block for a new network. The caller holds a transaction."""
        taken = self._blocks_in_use(version)
        node_range = self.node.range_of(version)
        before_blocks = [
            ipaddress.ip_address(a["address"])
            for a in self.store.addresses()
            if a["alloc_range"] == str(node_range)
        ]
        for block in self.node.blocks(version):
            if block not in taken and not any(ip in block for ip in before_blocks):
                return block
        raise DriverError(
            f"no free subnet left in {node_range}: this node has room for "
            f"{len(self.node.blocks(version))} networks"
        )

    def _blocks_in_use(self, version: int) -> set:
        cidrs = [p.cidr for p in self.store.pools()]
        cidrs += [c for net in self.store.networks() for c in (net.pool4, net.pool6) if c]
        networks = (ipaddress.ip_network(c) for c in cidrs)
        return {n for n in networks if n.version == version and self.node.is_block(n)}

    def _add_block_pool(self, version: int) -> Pool:
        before = self.coverage4()
        with self.store.transaction():
            block = self.carve(version)
            entry = Pool(
                pool_id=f"{block}/{uuid.uuid4().hex[:12]}",
                cidr=str(block),
                alloc_range=str(block),
                version=version,
                gateway=None,
                shared=False,
            )
            self.store.add_pool(entry)
        self._cover4(before)
        return entry

    def _cover4(self, before: list) -> None:
        """Move the IPv4 node range's unreachable routes from `before` to what covers it now:
        the new ones first, so nothing but a pending block is uncovered at any moment."""
        after = self.coverage4()
        for cidr in after:
            if cidr not in before:
                self.datapath.add_unreachable_route(str(cidr))
        for cidr in before:
            if cidr not in after:
                self.datapath.remove_unreachable_route(str(cidr))

    def release_pool(self, pool_id: str) -> None:
        entry = self.store.get_pool(pool_id)
        if entry is None:
            return
        before = self.coverage4()
        with self.store.transaction():
            self.store.delete_pool(pool_id)
        # Only once the pool is gone for good: a failed commit keeps pool and route.
        if self.node.is_block(ipaddress.ip_network(entry.cidr)):
            self._cover4(before)
        elif not entry.shared:
            self.datapath.remove_unreachable_route(entry.cidr)

    def request_address(self, pool_id: str, address: str, options: dict | None) -> str:
        entry = self._pool(pool_id)
        is_gateway = (options or {}).get(ADDRESS_TYPE_OPTION) == GATEWAY_OPTION
        if is_gateway and entry.shared:
            return entry.gateway
        alloc_range = ipaddress.ip_network(entry.alloc_range)
        if is_gateway and not address and self.node.is_block(alloc_range):
            return self._block_gateway(entry, alloc_range)
        if is_gateway and not address and self._split(entry):
            # The same gateway on every node: the subnet's first address, in no node's part.
            address = str(ipaddress.ip_network(entry.cidr).network_address + 1)
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

    def _block_gateway(self, entry: Pool, block) -> str:
        """The block's router; Docker has checked the pool by now, so the block is
        covered again."""
        gateway = f"{block_router(block)}/{block.prefixlen}"
        if entry.gateway is None:
            before = self.coverage4()
            with self.store.transaction():
                self.store.set_pool_gateway(entry.pool_id, gateway)
            self._cover4(before)
        return gateway

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
        if ip in self._reserved_in(alloc_range):
            raise Conflict(f"address {ip} is reserved for the router or the host")
        if any(ip in block for block in self._blocks_inside(alloc_range)):
            raise Conflict(f"address {ip} is in another network's subnet")
        if self.store.address_owner(str(ip)) is not None:
            raise Conflict(f"address {ip} is already in use")
        self.store.add_address(str(ip), str(alloc_range), owner)

    def allocate(self, alloc_range, owner: str):
        """The next free address after the last one handed out, so a released address is not
        reused at once. The caller holds a transaction."""
        used = self.store.used_addresses(str(alloc_range))
        reserved = self._reserved_in(alloc_range)
        blocks = self._blocks_inside(alloc_range)
        first = int(alloc_range.network_address) + 1
        # A /31, /32, /127 or /128 has no network or broadcast address to skip.
        last = int(alloc_range.broadcast_address) - (alloc_range.version == 4)
        if alloc_range.num_addresses <= 2:
            first, last = int(alloc_range.network_address), int(alloc_range.broadcast_address)
        cursor_key = "cursor:" + str(alloc_range)
        cursor = int(self.store.get_meta(cursor_key) or first - 1)
        span = last - first + 1
        skipped = len(used) + len(reserved) + sum(b.num_addresses for b in blocks)
        for step in range(1, min(span, skipped + 1) + 1):
            candidate = first + (cursor - first + step) % span
            ip = ipaddress.ip_address(candidate)
            if str(ip) not in used and ip not in reserved and not any(ip in b for b in blocks):
                self.store.add_address(str(ip), str(alloc_range), owner)
                self.store.set_meta(cursor_key, str(candidate))
                return ip
        raise DriverError(f"no free address left in {alloc_range}")

    def _reserved_in(self, alloc_range) -> set:
        reserved = self.node.reserved()
        if self.node.is_block(alloc_range):
            reserved.add(block_router(alloc_range))
        return reserved

    def _blocks_inside(self, alloc_range) -> set:
        """Blocks a shared pool's allocations skip (none for any other range)."""
        if alloc_range != self.node.range_of(alloc_range.version):
            return set()
        return self._blocks_in_use(alloc_range.version)

    def _pool(self, pool_id: str) -> Pool:
        entry = self.store.get_pool(pool_id)
        if entry is None:
            raise NotFound(f"pool {pool_id} not found")
        return entry

    def _split(self, entry: Pool) -> bool:
        """Whether the pool is a user's subnet whose allocations come from this node's part."""
        cidr = ipaddress.ip_network(entry.cidr)
        return bool(self.cluster_slots) and not entry.shared and not self.node.is_block(cidr)

    def _check_in_pool(self, ip, entry: Pool) -> None:
        # A --ip or --gateway of a split subnet may be anywhere in it, as with Docker's IPAM.
        alloc_range = ipaddress.ip_network(entry.cidr if self._split(entry) else entry.alloc_range)
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


def _without(whole, holes: list) -> list:
    """whole minus holes (each inside it), as few CIDRs as it takes."""
    parts = [whole]
    for hole in holes:
        parts = [
            piece
            for part in parts
            for piece in (part.address_exclude(hole) if hole.subnet_of(part) else [part])
        ]
    return sorted(parts)

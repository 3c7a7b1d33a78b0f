"""This node's address ranges, derived from the cluster prefix and the node id.

IPv6: cluster prefix (64 bits) | node id (32) | reserved (16) | endpoint id (16), so the
node's range is a /112. Endpoint id 0 is the router (answered by BPF, never bound) and
0xffff is kept for the host. IPv4: the configured node range, router at its first host address.

Each network gets a block of its own from the node ranges, a 64th of each (IPv6 /118 and IPv4
/22 by default), with its router at the block's first host address: Docker shows the block
as the network's subnet, and a container on several networks gets a router and a route per
network that do not collide. The first and last blocks hold the node's own router and host
(and IPv4 network and broadcast) addresses and are never handed out.
"""

import hashlib
import ipaddress
import socket
from dataclasses import dataclass

HOST_ENDPOINT_ID = 0xFFFF
BLOCK_BITS = 6  # 64 blocks per node range


@dataclass(frozen=True)
class NodeAddressing:
    node_id: int
    range6: ipaddress.IPv6Network
    router6: ipaddress.IPv6Address
    range4: ipaddress.IPv4Network
    router4: ipaddress.IPv4Address

    @classmethod
    def build(cls, cluster_prefix6: str, node_id: int, node_range4: str) -> "NodeAddressing":
        prefix = ipaddress.IPv6Network(cluster_prefix6)
        base = int(prefix.network_address) | (node_id << 32)
        range6 = ipaddress.IPv6Network((base, 112))
        range4 = ipaddress.IPv4Network(node_range4)
        return cls(
            node_id=node_id,
            range6=range6,
            router6=range6.network_address,
            range4=range4,
            router4=range4.network_address + 1,
        )

    def range_of(self, version: int):
        return self.range6 if version == 6 else self.range4

    def blocks(self, version: int) -> list:
        """The blocks networks may take, in order: the node range in 64 parts, without the
        first and last (a small node range gives fewer, larger blocks)."""
        node_range = self.range_of(version)
        bits = max(0, min(BLOCK_BITS, node_range.max_prefixlen - 2 - node_range.prefixlen))
        reserved = self.reserved()
        return [
            block
            for block in node_range.subnets(prefixlen_diff=bits)
            if not any(ip in block for ip in reserved)
        ]

    def is_block(self, cidr) -> bool:
        """Whether cidr is a network's block (not the node range a network made before
        blocks existed shares with the others)."""
        node_range = self.range_of(cidr.version)
        return cidr != node_range and cidr.subnet_of(node_range)

    def reserved(self) -> set:
        """Addresses of the node ranges that are never handed to a container."""
        return {
            self.router6,
            self.range6.network_address + HOST_ENDPOINT_ID,
            self.range4.network_address,
            self.router4,
            self.range4.broadcast_address,
        }


def node_id_from_machine_id(path: str = "/etc/machine-id") -> int:
    """A stable, non-zero 32-bit node id for this host."""
    try:
        with open(path, "rb") as f:
            seed = f.read().strip()
    except OSError:
        seed = b""
    if not seed:
        seed = socket.gethostname().encode()
    return int.from_bytes(hashlib.sha256(seed).digest()[:4], "big") or 1


def block_router(block: ipaddress.IPv4Network | ipaddress.IPv6Network):
    """A block's router: its first host address, as Docker's own IPAM picks a gateway."""
    return block.network_address + 1


def node_slice(subnet, node_id: int, slots: int):
    """Node node_id's part of a subnet every node of a cluster of `slots` node ids shares (a
    user's --subnet): the subnet in `slots` equal parts, so that each node allocates from
    its own and no address is given twice. Part 0 belongs to no node (ids start at 1): it
    holds the gateway. None if a part would hold fewer than 4 addresses."""
    bits = (slots - 1).bit_length()
    prefixlen = subnet.prefixlen + bits
    if prefixlen > subnet.max_prefixlen - 2:
        return None
    size = 1 << (subnet.max_prefixlen - prefixlen)
    first = subnet.network_address + node_id * size
    return ipaddress.ip_network((first, prefixlen))

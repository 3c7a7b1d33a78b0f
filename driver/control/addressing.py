"""This node's address ranges, derived from the cluster prefix and the node id.

IPv6: cluster prefix (64 bits) | node id (32) | reserved (16) | endpoint id (16), so the
node's range is a /112. Endpoint id 0 is the router (answered by BPF, never bound) and
0xffff is kept for the host. IPv4: the configured node range, router at its first host address.
"""

import hashlib
import ipaddress
import socket
from dataclasses import dataclass

HOST_ENDPOINT_ID = 0xFFFF


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

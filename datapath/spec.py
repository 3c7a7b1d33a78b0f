"""What the control plane asks the datapath to build for one endpoint."""

import ipaddress
from dataclasses import dataclass

from .abi import INIT_ID


@dataclass(frozen=True)
class EndpointSpec:
    endpoint_id: int  # 16-bit numeric id, informational (shown by tools)
    host_ifname: str  # host side of the veth pair, e.g. "lxc" + 12 hex chars
    peer_ifname: str  # container side before Docker moves and renames it
    mac: str  # container-side MAC, "aa:bb:cc:dd:ee:ff"
    ipv6: ipaddress.IPv6Address
    ipv4: ipaddress.IPv4Address | None
    router6: ipaddress.IPv6Address  # answered by BPF, bound nowhere
    router4: ipaddress.IPv4Address | None
    mtu: int = 1500
    identity: int = INIT_ID  # security identity; INIT_ID: sends and receives nothing yet

    def addresses(self) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """The endpoint's own addresses, IPv6 first."""
        return [self.ipv6] if self.ipv4 is None else [self.ipv6, self.ipv4]

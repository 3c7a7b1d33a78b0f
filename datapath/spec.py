"""What the control plane asks the datapath to build for one endpoint."""

import enum
import ipaddress
from dataclasses import dataclass

from .abi import EP_F_INTERNAL, EP_F_MASQUERADE, EP_F_NAT64, INIT_ID


class Outbound(enum.Enum):
    """What happens to an endpoint's traffic to addresses beyond the host."""

    MASQUERADE = "masquerade"  # leaves with the host's address, as on Docker's bridge
    ROUTED = "routed"  # leaves with its own address (the network routes the node ranges)
    INTERNAL = "internal"  # dropped: nothing leaves the host
    # IPv6-only: IPv4 is reached through NAT64, from the endpoint's IPv4 address (which the
    # container has no route for), masqueraded
    NAT64 = "nat64"

    @property
    def flags(self) -> int:
        return {
            Outbound.MASQUERADE: EP_F_MASQUERADE,
            Outbound.INTERNAL: EP_F_INTERNAL,
            Outbound.NAT64: EP_F_MASQUERADE | EP_F_NAT64,
        }.get(self, 0)


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
    outbound: Outbound = Outbound.MASQUERADE  # read when the endpoint is made or restored

    def addresses(self) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """The endpoint's own addresses, IPv6 first."""
        return [self.ipv6] if self.ipv4 is None else [self.ipv6, self.ipv4]

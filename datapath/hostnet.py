"""What the host has that the control plane asks about: its own addresses, its routes
that would overlap a network the driver is to own, and the MTU under the tunnel."""

import array
import fcntl
import ipaddress
import socket
import struct

from pyroute2 import IPRoute

from . import netlink
from .errors import DatapathError

IF_INET6 = "/proc/net/if_inet6"
SIOCGIFCONF = 0x8912
IFREQ_SIZE = 40  # struct ifreq: name[16], then the sockaddr_in (address at byte 20)


def _ipv4_host_addresses() -> list[str]:
    """Every IPv4 address of the host (SIOCGIFCONF lists each, secondary ones included)."""
    slots = 256
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        while True:
            buf = array.array("B", bytes(slots * IFREQ_SIZE))
            ifconf = struct.pack("iL", len(buf), buf.buffer_info()[0])
            used, _ = struct.unpack("iL", fcntl.ioctl(sock, SIOCGIFCONF, ifconf))
            if used < len(buf):
                break
            slots *= 2  # it may have filled the buffer exactly: ask again with more room
    raw = buf.tobytes()
    return [
        socket.inet_ntoa(raw[offset + 20 : offset + 24]) for offset in range(0, used, IFREQ_SIZE)
    ]


def host_addresses() -> list[str]:
    """The host's own addresses, both families, link-local included.

    Asked on every endpoint event, so read the kernel's own lists (under a millisecond)
    rather than a netlink dump of every address (about 50 ms with 250 veths)."""
    found = set(_ipv4_host_addresses())
    with open(IF_INET6) as lines:
        for line in lines:
            found.add(str(ipaddress.IPv6Address(bytes.fromhex(line.split()[0]))))
    return sorted(found)


def address_device_mtu(address: str) -> int:
    """The MTU of the host device that has address (the tunnel's underlay)."""
    with IPRoute() as ipr:
        found = ipr.get_addr(address=address)
        if not found:
            raise DatapathError(f"no device of this host has the address {address}")
        (link,) = ipr.get_links(found[0]["index"])
    return link.get_attr("IFLA_MTU")


def address_devices(address: str) -> list[int]:
    """The ifindexes of the host devices that have address (the underlay's)."""
    with IPRoute() as ipr:
        return sorted({found["index"] for found in ipr.get_addr(address=address)})


def route_overlaps(cidr: str, veth_prefix: str) -> list[str]:
    """Destinations of host main-table routes overlapping cidr, except default routes,
    link-local and multicast ones, and the driver's own (unreachable routes, and the host
    routes of endpoints behind veth_prefix* devices)."""
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise DatapathError(f"invalid network {cidr!r}: {exc}") from exc
    family = socket.AF_INET6 if net.version == 6 else socket.AF_INET
    overlaps = []
    for route in netlink.main_routes(family):
        dst = ipaddress.ip_network(route.dst, strict=False)
        if _ignored_route(route, dst, veth_prefix):
            continue
        if dst.overlaps(net):
            overlaps.append(route.dst)
    return overlaps


def _ignored_route(route: netlink.Route, dst, veth_prefix: str) -> bool:
    own_endpoint = (
        dst.prefixlen == dst.max_prefixlen
        and route.ifname is not None
        and route.ifname.startswith(veth_prefix)
    )
    return (
        dst.prefixlen == 0
        or dst.is_link_local
        or dst.is_multicast
        or route.proto == netlink.ROUTE_PROTOCOL
        or own_endpoint
    )

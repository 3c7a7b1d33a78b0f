"""The endpoints map (host ifindex -> endpoint) and endpoint_addrs (local address -> its
endpoint): what lib/lxc.h and lib/local.h look up."""

import ctypes as ct
import ipaddress
from dataclasses import dataclass

from ..abi import INIT_ID, IP4, IP6, MAC, EndpointAddr, EndpointInfo, IPAddress
from .addressing import address_key, decode_address
from .pinned import MapSet


def _mac_bytes(mac: str) -> MAC:
    return MAC(*bytes.fromhex(mac.replace(":", "")))


def _mac_str(raw: MAC) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _ip4_or_none(raw: IP4) -> ipaddress.IPv4Address | None:
    addr = ipaddress.IPv4Address(bytes(raw))
    return None if int(addr) == 0 else addr


@dataclass(frozen=True)
class EndpointEntry:
    """A decoded endpoints map entry."""

    endpoint_id: int
    mac: str
    node_mac: str
    ipv6: ipaddress.IPv6Address
    ipv4: ipaddress.IPv4Address | None
    router6: ipaddress.IPv6Address
    router4: ipaddress.IPv4Address | None
    flags: int = 0  # EP_F_*
    identity: int = INIT_ID

    def to_leaf(self) -> EndpointInfo:
        zero4 = ipaddress.IPv4Address(0)
        return EndpointInfo(
            ipv6=IP6(*self.ipv6.packed),
            router6=IP6(*self.router6.packed),
            ipv4=IP4(*(self.ipv4 or zero4).packed),
            router4=IP4(*(self.router4 or zero4).packed),
            mac=_mac_bytes(self.mac),
            node_mac=_mac_bytes(self.node_mac),
            endpoint_id=self.endpoint_id,
            flags=self.flags,
            identity=self.identity,
        )

    @classmethod
    def from_leaf(cls, leaf: EndpointInfo) -> "EndpointEntry":
        return cls(
            endpoint_id=leaf.endpoint_id,
            mac=_mac_str(leaf.mac),
            node_mac=_mac_str(leaf.node_mac),
            ipv6=ipaddress.IPv6Address(bytes(leaf.ipv6)),
            ipv4=_ip4_or_none(leaf.ipv4),
            router6=ipaddress.IPv6Address(bytes(leaf.router6)),
            router4=_ip4_or_none(leaf.router4),
            flags=leaf.flags,
            identity=leaf.identity,
        )


@dataclass(frozen=True)
class AddressEntry:
    """A decoded endpoint_addrs entry: which local endpoint owns an address."""

    ifindex: int
    endpoint_id: int


class EndpointMaps(MapSet):
    # endpoints: host ifindex -> EndpointEntry

    def put_endpoint(self, ifindex: int, entry: EndpointEntry) -> None:
        self._maps["endpoints"].update(ct.c_uint32(ifindex), entry.to_leaf())

    def get_endpoint(self, ifindex: int) -> EndpointEntry | None:
        leaf = self._maps["endpoints"].lookup(ct.c_uint32(ifindex))
        return None if leaf is None else EndpointEntry.from_leaf(leaf)

    def delete_endpoint(self, ifindex: int) -> bool:
        return self._maps["endpoints"].delete(ct.c_uint32(ifindex))

    def endpoints(self) -> dict[int, EndpointEntry]:
        return {key.value: EndpointEntry.from_leaf(leaf) for key, leaf in self._walk("endpoints")}

    # endpoint_addrs: local address -> AddressEntry

    def put_address(self, ip: IPAddress, ifindex: int, endpoint_id: int) -> None:
        leaf = EndpointAddr(ifindex=ifindex, endpoint_id=endpoint_id)
        self._maps["endpoint_addrs"].update(address_key(ip), leaf)

    def delete_address(self, ip: IPAddress) -> bool:
        return self._maps["endpoint_addrs"].delete(address_key(ip))

    def get_address(self, ip: IPAddress) -> AddressEntry | None:
        leaf = self._maps["endpoint_addrs"].lookup(address_key(ip))
        return None if leaf is None else AddressEntry(leaf.ifindex, leaf.endpoint_id)

    def addresses(self) -> dict[IPAddress, AddressEntry]:
        return {
            decode_address(key.family, key.ip): AddressEntry(leaf.ifindex, leaf.endpoint_id)
            for key, leaf in self._walk("endpoint_addrs")
        }

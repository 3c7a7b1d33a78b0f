"""ipcache (the address of an endpoint on another node -> its identity and that node's
underlay address) and tunnel (the VXLAN device's ifindex): what lib/tunnel.h looks up."""

import ctypes as ct
import ipaddress

from ..abi import IP4, IPAddress, IpcacheEntryC
from .addressing import address_key, decode_address
from .pinned import MapSet


class TunnelMaps(MapSet):
    def put_ipcache(self, ip: IPAddress, identity: int, node: ipaddress.IPv4Address) -> None:
        leaf = IpcacheEntryC(identity=identity, node=IP4(*node.packed))
        self._maps["ipcache"].update(address_key(ip), leaf)

    def get_ipcache(self, ip: IPAddress) -> tuple[int, ipaddress.IPv4Address] | None:
        leaf = self._maps["ipcache"].lookup(address_key(ip))
        return None if leaf is None else (leaf.identity, ipaddress.IPv4Address(bytes(leaf.node)))

    def delete_ipcache(self, ip: IPAddress) -> bool:
        return self._maps["ipcache"].delete(address_key(ip))

    def ipcache(self) -> dict[IPAddress, tuple[int, ipaddress.IPv4Address]]:
        return {
            decode_address(key.family, key.ip): (
                leaf.identity,
                ipaddress.IPv4Address(bytes(leaf.node)),
            )
            for key, leaf in self._walk("ipcache")
        }

    def set_tunnel_ifindex(self, ifindex: int) -> None:
        self._maps["tunnel"].update(ct.c_uint32(0), ct.c_uint32(ifindex))

    def tunnel_ifindex(self) -> int:
        leaf = self._maps["tunnel"].lookup(ct.c_uint32(0))
        return 0 if leaf is None else leaf.value

"""ipcache (the address of an endpoint on another node -> its identity and that node's
underlay address) and tunnel (the VXLAN device's ifindex): what lib/tunnel.h looks up;
nodeport4 (published IPv4 ports) and dsr4 (flows with direct server return), lib/dsr.h's."""

import ctypes as ct
import ipaddress

from ..abi import IP4, Addr4PortC, IPAddress, IpcacheEntryC, NodeportKeyC
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

    @staticmethod
    def _nodeport_key(address: ipaddress.IPv4Address | None, port: int, protocol: int):
        packed = address.packed if address is not None else bytes(4)
        return NodeportKeyC(addr=IP4(*packed), port=port, protocol=protocol)

    def put_nodeport(
        self,
        address: ipaddress.IPv4Address | None,
        port: int,
        protocol: int,
        backend: ipaddress.IPv4Address,
        backend_port: int,
    ) -> None:
        leaf = Addr4PortC(addr=IP4(*backend.packed), port=backend_port)
        self._maps["nodeport4"].update(self._nodeport_key(address, port, protocol), leaf)

    def delete_nodeport(
        self, address: ipaddress.IPv4Address | None, port: int, protocol: int
    ) -> bool:
        return self._maps["nodeport4"].delete(self._nodeport_key(address, port, protocol))

    def clear_nodeports(self) -> None:
        for key, _ in list(self._walk("nodeport4")):
            self._maps["nodeport4"].delete(key)

    def dsr_flows(self) -> list[tuple[tuple, tuple]]:
        """((client, client port, container, container port, protocol), (frontend, port))."""
        return [
            (
                (
                    ipaddress.IPv4Address(bytes(key.saddr)),
                    key.sport,
                    ipaddress.IPv4Address(bytes(key.daddr)),
                    key.dport,
                    key.protocol,
                ),
                (ipaddress.IPv4Address(bytes(leaf.addr)), leaf.port),
            )
            for key, leaf in self._walk("dsr4")
        ]

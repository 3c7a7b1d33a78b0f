"""cidr4 and cidr6: the LPM tries lib/identity.h looks a peer's address up in, prefix ->
identity (the host's own addresses and the CIDRs policy names)."""

import ctypes as ct
import ipaddress

from ..abi import IP4, IP6, Cidr4Key, Cidr6Key
from .pinned import MapSet

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def cidr_key(net: IPNetwork) -> Cidr4Key | Cidr6Key:
    """The LPM trie key of net (cidr4, cidr6 and the prefilter tries share the layout)."""
    if net.version == 6:
        return Cidr6Key(prefixlen=net.prefixlen, addr=IP6(*net.network_address.packed))
    return Cidr4Key(prefixlen=net.prefixlen, addr=IP4(*net.network_address.packed))


def cidr_of(key) -> IPNetwork:
    return ipaddress.ip_network((bytes(key.addr), key.prefixlen))


class IdentityMaps(MapSet):
    def cidr_identities(self) -> dict[IPNetwork, int]:
        found = {}
        for name in ("cidr4", "cidr6"):
            found.update((cidr_of(key), leaf.value) for key, leaf in self._walk(name))
        return found

    def put_cidr(self, net: IPNetwork, identity: int) -> None:
        self._maps[f"cidr{net.version}"].update(cidr_key(net), ct.c_uint32(identity))

    def delete_cidr(self, net: IPNetwork) -> bool:
        return self._maps[f"cidr{net.version}"].delete(cidr_key(net))

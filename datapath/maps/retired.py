"""retired: the control plane's own map (read by no program) of deleted endpoints whose
flows are yet to be swept, endpoint id -> addresses; see datapath.sweeper."""

import ctypes as ct
from collections.abc import Iterable

from ..abi import ENDPOINT_KEY_IPV4, ENDPOINT_KEY_IPV6, IP6, IPAddress, RetiredC
from .addressing import decode_address
from .pinned import MapSet


class RetiredMaps(MapSet):
    def retired(self) -> dict[int, tuple[IPAddress, ...]]:
        found = {}
        for key, leaf in self._maps["retired"].items():
            addresses = [decode_address(ENDPOINT_KEY_IPV6, leaf.ipv6)]
            if leaf.has_ipv4:
                addresses.append(decode_address(ENDPOINT_KEY_IPV4, leaf.ipv4))
            found[key] = tuple(addresses)  # a c_uint32 array yields plain ints
        return found

    def put_retired(self, endpoint_id: int, addresses: Iterable[IPAddress]) -> None:
        leaf = RetiredC()
        for ip in addresses:
            if ip.version == 6:
                leaf.ipv6 = IP6(*ip.packed)
            else:
                leaf.ipv4, leaf.has_ipv4 = IP6(*ip.packed), 1
        self._maps["retired"].update(ct.c_uint32(endpoint_id), leaf)

    def delete_retired(self, endpoint_id: int) -> None:
        self._maps["retired"].delete(ct.c_uint32(endpoint_id))

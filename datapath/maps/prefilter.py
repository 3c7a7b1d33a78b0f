"""prefilter4, prefilter6 and prefilter_drops: the XDP prefilter's deny tries, source
prefix -> prefix id, and the per-CPU drop counters indexed by that id.

The counters are a per-CPU array rather than a counter in the trie's value: an LPM trie
has no per-CPU flavour, and one shared counter would bounce its cache line between the
CPUs of a flood on every packet. An id is zeroed before a prefix gets it, so a prefix
starts at 0 whoever had the id before.
"""

import ctypes as ct

from ..abi import PREFILTER_MAX
from ..errors import DatapathError
from .identity import IPNetwork, cidr_key, cidr_of
from .pinned import MapSet


class PrefilterMaps(MapSet):
    def prefilter_ids(self) -> dict[IPNetwork, int]:
        """Denied prefix -> its prefix id."""
        found = {}
        for name in ("prefilter4", "prefilter6"):
            found.update((cidr_of(key), leaf.value) for key, leaf in self._walk(name))
        return found

    def put_prefilter(self, net: IPNetwork, prefix_id: int) -> None:
        """Deny net, counting its drops from 0 under prefix_id."""
        if not 0 <= prefix_id < PREFILTER_MAX:
            raise DatapathError(f"prefix id {prefix_id} out of range 0..{PREFILTER_MAX - 1}")
        self._maps["prefilter_drops"].zero(ct.c_uint32(prefix_id))
        self._maps[f"prefilter{net.version}"].update(cidr_key(net), ct.c_uint32(prefix_id))

    def delete_prefilter(self, net: IPNetwork) -> bool:
        return self._maps[f"prefilter{net.version}"].delete(cidr_key(net))

    def prefilter_drops(self, prefix_id: int) -> int:
        """Packets dropped under prefix_id, summed over CPUs."""
        per_cpu = self._maps["prefilter_drops"].lookup(ct.c_uint32(prefix_id))
        return 0 if per_cpu is None else sum(count.packets for count in per_cpu)

    def prefilter_map_id(self) -> int:
        """The kernel's id of prefilter4: a program listing it among its maps is ours."""
        return self._maps["prefilter4"].map_id()

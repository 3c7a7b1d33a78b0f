"""The pinned BPF maps, and the only code that touches them.

Maps are created and pinned here (not by the C compile), so their file descriptors exist
before the program is compiled: lib/maps.h references them as ``-D<NAME>_MAP_FD``. A new
driver process opens the same pinned maps, so entries survive restarts.

One module per subject, as bpf/lib/ has one header per subject: :mod:`.endpoints`,
:mod:`.policy`, :mod:`.identity` (CIDR tries), :mod:`.conntrack`, :mod:`.lb`,
:mod:`.counters`, :mod:`.config`, :mod:`.flows`, :mod:`.retired`, :mod:`.prefilter` and
:mod:`.tunnel` (ipcache); :mod:`.pinned` is one map, :mod:`.specs` the list of them. Callers
get typed values (:class:`EndpointEntry`, :class:`AddressEntry`, :class:`~datapath.abi.PolicyKey`,
:class:`CtEntry`); the ctypes layouts are in :mod:`datapath.abi`.
"""

import itertools
from pathlib import Path

from .config import ConfigMaps
from .conntrack import ConntrackMaps, CtEntry
from .counters import CounterMaps
from .endpoints import AddressEntry, EndpointEntry, EndpointMaps
from .flows import FlowMaps
from .identity import IdentityMaps
from .lb import LbMaps
from .pinned import COUNTABLE_MAP_TYPES, PinnedMap
from .policy import PolicyMaps
from .prefilter import PrefilterMaps
from .retired import RetiredMaps
from .specs import DEFAULT_MAP_SIZES, MapSizes, map_specs
from .tunnel import TunnelMaps

__all__ = [
    "DEFAULT_MAP_SIZES",
    "AddressEntry",
    "CtEntry",
    "DatapathMaps",
    "EndpointEntry",
    "MapSizes",
]


class DatapathMaps(
    EndpointMaps,
    PolicyMaps,
    IdentityMaps,
    ConntrackMaps,
    LbMaps,
    CounterMaps,
    ConfigMaps,
    FlowMaps,
    RetiredMaps,
    PrefilterMaps,
    TunnelMaps,
):
    """All maps of the datapath, with the typed accessors of every subject."""

    @classmethod
    def open(cls, pin_dir: str | Path, sizes: MapSizes = DEFAULT_MAP_SIZES) -> "DatapathMaps":
        opened: dict[str, PinnedMap] = {}
        try:
            for spec in map_specs(sizes):
                opened[spec.name] = PinnedMap.open(Path(pin_dir), spec)
        except BaseException:
            for pinned in opened.values():
                pinned.close()
            raise
        return cls(opened)

    def close(self) -> None:
        for pinned in self._maps.values():
            pinned.close()

    def fds(self) -> dict[str, int]:
        return {name: pinned.fd for name, pinned in self._maps.items()}

    def fill(self) -> dict[str, tuple[int, int]]:
        """Map name -> (entries, capacity) of the maps whose keys come and go."""
        found = {}
        for name, pinned in self._maps.items():
            spec = pinned.spec
            if spec.map_type not in COUNTABLE_MAP_TYPES:
                continue
            if name == "policy":
                entries = self.policy_count()
            else:
                # A key deleted mid-walk restarts the walk: never count past the capacity.
                entries = sum(1 for _ in itertools.islice(pinned.keys(), spec.max_entries))
            found[name] = (entries, spec.max_entries)
        return found

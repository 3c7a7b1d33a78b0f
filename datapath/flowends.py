"""Connections that ended, found by comparing walks of the conntrack map.

The datapath never deletes a conntrack entry: it expires (lifetime in the past) and stays
until the LRU map needs its slot or a deleted endpoint's flows are swept. So a connection
has ended when its entry, live at the last walk, is expired or gone at this one, or when
its tuple was taken by a new connection since (the packet count went down). Its counts are
the entry's last ones: final if it expired, those of the last walk if it went. Entries are
compared as packed bytes and only ended ones are decoded, so a walk of a full table is a
few passes of C loops.
"""

import ctypes as ct
import struct
from collections.abc import Iterable

from .abi import CtEntryC, CtKeyC
from .maps.conntrack import CtEntry

KEY_SIZE = ct.sizeof(CtKeyC)
LEAF_SIZE = ct.sizeof(CtEntryC)
# lifetime and packets of struct ct_entry, the two fields a walk reads of every entry
_PACKETS_AT = CtEntryC.packets.offset
_LEAF = struct.Struct(f"<I{_PACKETS_AT - 4}xQ{LEAF_SIZE - _PACKETS_AT - 8}x")


class EndedFlows:
    """Remembers the live entries of the last walk: key bytes -> leaf bytes."""

    def __init__(self):
        self._live: dict[bytes, bytes] | None = None

    def scan(self, batches: Iterable[tuple[bytes, bytes]], now: int) -> list[CtEntry]:
        """The connections that ended since the last scan. batches: (keys, leaves), packed
        as the map's batch walk returns them; now: seconds of CLOCK_MONOTONIC. The first
        scan only learns what is live."""
        before = self._live or {}
        live: dict[bytes, bytes] = {}
        seen: set[bytes] = set()
        ended: list[tuple[bytes, bytes]] = []
        for keys, leaves in batches:
            for index, (lifetime, packets) in enumerate(_LEAF.iter_unpack(leaves)):
                key = keys[index * KEY_SIZE : (index + 1) * KEY_SIZE]
                leaf = leaves[index * LEAF_SIZE : (index + 1) * LEAF_SIZE]
                seen.add(key)
                last = before.get(key)
                if last is not None and _LEAF.unpack(last)[1] > packets:
                    ended.append((key, last))  # a new connection took the tuple
                    last = None
                if lifetime >= now:
                    live[key] = leaf
                elif last is not None:
                    ended.append((key, leaf))
        ended.extend((key, leaf) for key, leaf in before.items() if key not in seen)
        first = self._live is None
        self._live = live
        if first:
            return []
        return [_decode(key, leaf, now) for key, leaf in ended]


def _decode(key: bytes, leaf: bytes, now: int) -> CtEntry:
    return CtEntry.decode(CtKeyC.from_buffer_copy(key), CtEntryC.from_buffer_copy(leaf), now)

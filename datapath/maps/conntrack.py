"""The conntrack map: the flows each endpoint hook has seen (lib/conntrack.h), decoded for
tools and matched as packed bytes for sweeps."""

import ctypes as ct
import struct
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

from ..abi import (
    CT_F_LOOPBACK,
    CT_F_SEEN_REPLY,
    CT_F_TX_CLOSING,
    EGRESS,
    ENDPOINT_KEY_IPV6,
    INGRESS,
    CtEntryC,
    CtKeyC,
    IPAddress,
)
from .addressing import address_key, decode_address
from .pinned import MapSet, record

CT_KEY_SIZE = ct.sizeof(CtKeyC)
# The one field a packed walk decodes of every record: a 16-bit id, and nothing else.
_CT_KEY_ENDPOINT_ID = struct.Struct(
    f"<{CtKeyC.endpoint_id.offset}xH{CT_KEY_SIZE - CtKeyC.endpoint_id.offset - 2}x"
)


def packed_matches(keys: bytes, endpoint_ids: Collection[int], ends: Iterable = ()) -> bytes:
    """The conntrack keys (struct ct_key, packed) of the hooks of endpoint_ids or with a
    source or destination in ends ((family, 16 raw address bytes) pairs), packed the same way."""
    size = CT_KEY_SIZE
    found = set()
    if endpoint_ids:
        ids = _CT_KEY_ENDPOINT_ID.iter_unpack(keys)
        found.update(i for i, (owner,) in enumerate(ids) if owner in endpoint_ids)
    family_at = CtKeyC.family.offset
    for family, raw in ends:
        at = keys.find(raw)
        while at >= 0:
            index, offset = divmod(at, size)
            field = offset in (CtKeyC.saddr.offset, CtKeyC.daddr.offset)
            if field and keys[index * size + family_at] == family:
                found.add(index)
            at = keys.find(raw, at + 1)
    return b"".join(record(keys, size, i) for i in sorted(found))


@dataclass(frozen=True)
class CtEntry:
    """A decoded conntrack entry: a flow as the hook of (endpoint_id, direction) first saw it."""

    family: int  # 4 or 6
    src: IPAddress
    dst: IPAddress
    sport: int  # ICMP echo: the id (requests as sport)
    dport: int
    protocol: int
    direction: int  # INGRESS or EGRESS of endpoint_id
    endpoint_id: int
    lifetime_remaining: int  # seconds; <= 0: expired (the datapath ignores it)
    flags: int  # CT_F_*
    packets: int
    bytes: int
    rev_nat_index: int

    @property
    def tx_closing(self) -> bool:
        return bool(self.flags & CT_F_TX_CLOSING)

    @property
    def established(self) -> bool:
        return bool(self.flags & CT_F_SEEN_REPLY)

    @property
    def loopback(self) -> bool:
        return bool(self.flags & CT_F_LOOPBACK)

    @classmethod
    def decode(cls, key: CtKeyC, leaf: CtEntryC, now: int) -> "CtEntry":
        return cls(
            family=6 if key.family == ENDPOINT_KEY_IPV6 else 4,
            src=decode_address(key.family, key.saddr),
            dst=decode_address(key.family, key.daddr),
            sport=key.sport,
            dport=key.dport,
            protocol=key.protocol,
            direction=key.direction,
            endpoint_id=key.endpoint_id,
            lifetime_remaining=leaf.lifetime - now,
            flags=leaf.flags,
            packets=leaf.packets,
            bytes=leaf.bytes,
            rev_nat_index=leaf.rev_nat_index,
        )


def monotonic_seconds() -> int:
    """The clock of ct_entry.lifetime: bpf_ktime_get_ns() is CLOCK_MONOTONIC."""
    return int(time.clock_gettime(time.CLOCK_MONOTONIC))


class ConntrackMaps(MapSet):
    def _ct_items(self) -> Iterator[tuple[CtKeyC, CtEntryC]]:
        return self._maps["conntrack"].items()

    def ct_totals(self) -> dict[int, tuple[int, int, int]]:
        """Direction -> (flows, packets, bytes) summed over the conntrack entries, undecoded."""
        totals = {INGRESS: [0, 0, 0], EGRESS: [0, 0, 0]}
        for key, leaf in self._ct_items():
            sums = totals.setdefault(key.direction, [0, 0, 0])
            sums[0] += 1
            sums[1] += leaf.packets
            sums[2] += leaf.bytes
        return {direction: tuple(sums) for direction, sums in totals.items()}

    def ct_packed(self) -> Iterator[tuple[bytes, bytes]]:
        """The entries as packed (keys, leaves) batches, undecoded (datapath/flowends.py)."""
        return self._maps["conntrack"].packed_items()

    def ct_entries(self) -> list[CtEntry]:
        now = monotonic_seconds()
        return [CtEntry.decode(key, leaf, now) for key, leaf in self._ct_items()]

    def delete_ct(self, endpoint_ids: Collection[int], addresses: Iterable[IPAddress]) -> int:
        """Delete entries of the hooks of endpoint_ids and entries naming any of addresses."""
        # Matched as bytes in whole batches: decoding every entry of a full table from Python
        # costs seconds, and so does one system call per deleted entry.
        ends = [(key.family, bytes(key.ip)) for key in map(address_key, addresses)]
        conntrack = self._maps["conntrack"]
        stale = [packed_matches(keys, endpoint_ids, ends) for keys, _ in conntrack.packed_items()]
        return conntrack.delete_packed(b"".join(stale))

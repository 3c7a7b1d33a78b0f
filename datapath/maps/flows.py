"""flow_limit, flow_budget and flow_counts: the rate above which new connections are
counted in the kernel instead of each being a flow event (lib/flowlog.h)."""

import ctypes as ct
import functools
from collections.abc import Iterable
from typing import NamedTuple

from .. import reasons
from ..abi import FlowCountKeyC, FlowLimitC
from .pinned import MapSet


class FlowCount(NamedTuple):
    """New connections of one kind that were counted instead of sent as flow events: how
    many so far (a count that only grows), and what their flow records would have said."""

    src_identity: int
    dst_identity: int
    endpoint_id: int
    dport: int
    rev_nat_index: int
    protocol: int
    direction: int
    family: int
    match: str  # enum policy_match's name, as an event's reason_name
    count: int

    @classmethod
    def of(cls, key: FlowCountKeyC, count: int) -> "FlowCount":
        matches = {code: name for name, code in _match_codes().items()}
        return cls(
            key.src_identity,
            key.dst_identity,
            key.endpoint_id,
            key.dport,
            key.rev_nat_index,
            key.protocol,
            key.direction,
            key.family,
            matches.get(key.match, f"UNKNOWN_{key.match}"),
            count,
        )


@functools.cache
def _match_codes() -> dict[str, int]:
    """enum policy_match's names and codes, parsed from lib/flowlog.h once."""
    return {code.name: code.value for code in reasons.policy_matches()}


def _key_of(kind: FlowCount) -> FlowCountKeyC:
    return FlowCountKeyC(
        kind.src_identity,
        kind.dst_identity,
        kind.endpoint_id,
        kind.dport,
        kind.rev_nat_index,
        kind.protocol,
        kind.direction,
        kind.family,
        _match_codes()[kind.match],
    )


class FlowMaps(MapSet):
    def set_flow_limit(self, cost_ns: int, burst_ns: int) -> None:
        self._maps["flow_limit"].update(ct.c_uint32(0), FlowLimitC(cost_ns, burst_ns))

    def flow_counts(self) -> list[FlowCount]:
        """Every counted kind of connection with its count so far, summed over CPUs. The
        counts only grow: no program deletes a key (the driver deletes the kinds of
        endpoints that are gone, delete_flow_counts)."""
        found = self._maps["flow_counts"].items()  # a batch walk: a few system calls
        return [FlowCount.of(key, sum(per_cpu)) for key, per_cpu in found]

    def delete_flow_counts(self, kinds: Iterable[FlowCount]) -> None:
        """Delete these kinds from flow_counts; one that is not there is fine."""
        for kind in kinds:
            self._maps["flow_counts"].delete(_key_of(kind))

    def flow_overflow(self) -> int:
        """Connections counted while flow_counts was full, summed over CPUs."""
        per_cpu = self._maps["flow_budget"].lookup(ct.c_uint32(0))
        return sum(b.overflow for b in per_cpu) if per_cpu is not None else 0

"""drop_counts and trace_counts: per-CPU packet counters of lib/drop.h's reasons and
lib/trace.h's points."""

import ctypes as ct

from .. import reasons
from .pinned import MapSet


class CounterMaps(MapSet):
    def _counter_sums(self, name: str, slots: dict[str, int]) -> dict[str, int]:
        pinned = self._maps[name]
        counts = {}
        for label, slot in slots.items():
            per_cpu = pinned.lookup(ct.c_uint32(slot))
            counts[label] = sum(per_cpu) if per_cpu is not None else 0
        return counts

    def drop_counts(self) -> dict[str, int]:
        """Drop reason name -> packets, summed over CPUs."""
        return self._counter_sums("drop_counts", {r.name: -r.value for r in reasons.drop_reasons()})

    def trace_counts(self) -> dict[str, int]:
        """Trace point name -> packets, summed over CPUs."""
        return self._counter_sums("trace_counts", {t.name: t.value for t in reasons.trace_points()})

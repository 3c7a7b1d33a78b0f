"""The policy map, (endpoint id, PolicyKey) -> (packets, bytes): the allow entries lib/policy.h
looks up, with an index of each endpoint's keys."""

from collections.abc import Iterable

from ..abi import PolicyEntryC, PolicyKey, PolicyKeyC
from .pinned import MapSet, PinnedMap


def _policy_key_c(endpoint_id: int, key: PolicyKey) -> PolicyKeyC:
    return PolicyKeyC(
        endpoint_id=endpoint_id,
        direction=key.direction,
        protocol=key.protocol,
        dport=key.dport,
        identity=key.identity,
    )


def _policy_key(raw: PolicyKeyC) -> PolicyKey:
    return PolicyKey(raw.identity, raw.dport, raw.protocol, raw.direction)


class PolicyMaps(MapSet):
    def __init__(self, maps: dict[str, PinnedMap]):
        super().__init__(maps)
        # endpoint id -> its policy keys; read from the map on first use, then kept in
        # step by this object (the one writer of the policy map).
        self._policy_index: dict[int, set[PolicyKey]] | None = None

    def _policy(self) -> dict[int, set[PolicyKey]]:
        if self._policy_index is None:
            index: dict[int, set[PolicyKey]] = {}
            for raw in list(self._maps["policy"].keys()):
                index.setdefault(raw.endpoint_id, set()).add(_policy_key(raw))
            self._policy_index = index
        return self._policy_index

    def policy_keys(self, endpoint_id: int) -> set[PolicyKey]:
        return set(self._policy().get(endpoint_id, ()))

    def new_policy_keys(self, endpoint_id: int, keys: set[PolicyKey]) -> set[PolicyKey]:
        """Those of keys the endpoint does not have (without copying the ones it has)."""
        return keys - self._policy().get(endpoint_id, set())

    def held_policy_keys(self, endpoint_id: int, keys: set[PolicyKey]) -> set[PolicyKey]:
        """Those of keys the endpoint has."""
        return keys & self._policy().get(endpoint_id, set())

    def policy_capacity(self) -> int:
        return self._maps["policy"].spec.max_entries

    def policy_count(self) -> int:
        return sum(len(keys) for keys in self._policy().values())

    def policy_endpoint_ids(self) -> set[int]:
        return {ep for ep, keys in self._policy().items() if keys}

    def add_policy(self, endpoint_id: int, keys: Iterable[PolicyKey]) -> None:
        """Add keys with zero counters; keys already there keep theirs."""
        pinned, index = self._maps["policy"], self._policy().setdefault(endpoint_id, set())
        for key in keys:
            pinned.insert(_policy_key_c(endpoint_id, key), PolicyEntryC())
            index.add(key)

    def delete_policy(self, endpoint_id: int, keys: Iterable[PolicyKey]) -> None:
        pinned, index = self._maps["policy"], self._policy().setdefault(endpoint_id, set())
        for key in list(keys):
            pinned.delete(_policy_key_c(endpoint_id, key))
            index.discard(key)
        if not index:
            del self._policy()[endpoint_id]

    def policy_counters(self, endpoint_id: int) -> dict[PolicyKey, tuple[int, int]]:
        pinned, counters = self._maps["policy"], {}
        for key in self.policy_keys(endpoint_id):
            leaf = pinned.lookup(_policy_key_c(endpoint_id, key))
            if leaf is not None:
                counters[key] = (leaf.packets, leaf.bytes)
        return counters

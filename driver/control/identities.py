"""Security identities: a container's filtered labels plus its network's name, mapped to a
number. Endpoints with equal labels share an identity; CIDR prefixes named by policy get
identities of their own. Numbers are handed out in increasing order, so a freed number is
not reused at once."""

import json
from typing import Protocol

from datapath.abi import FIRST_CIDR_IDENTITY, FIRST_ENDPOINT_IDENTITY

from .policy import NETWORK_LABEL
from .state import IdentityRecord, Store

ENDPOINT_IDENTITY_LIMIT = FIRST_CIDR_IDENTITY
# kind -> the numbers it takes, [first, limit)
RANGES = {
    "endpoint": (FIRST_ENDPOINT_IDENTITY, ENDPOINT_IDENTITY_LIMIT),
    "cidr": (FIRST_CIDR_IDENTITY, 1 << 32),
}


class LabelFilter:
    """Which Docker labels count for identity: a comma-separated list of label-key prefixes,
    "!" marking exclusions. With no inclusion every label not excluded counts."""

    def __init__(self, spec: str):
        entries = [e.strip() for e in spec.split(",") if e.strip()]
        self.excluded = tuple(e[1:] for e in entries if e.startswith("!"))
        self.included = tuple(e for e in entries if not e.startswith("!"))

    def __call__(self, labels: dict) -> dict:
        return {
            key: value
            for key, value in labels.items()
            if not key.startswith(self.excluded)
            and (not self.included or key.startswith(self.included))
        }


def identity_labels(labels: dict, network_name: str, label_filter: LabelFilter) -> dict:
    return {**label_filter(labels), NETWORK_LABEL: network_name}


class Allocator(Protocol):
    """Where new endpoint identity numbers come from: this node alone (LocalAllocator) or
    the cluster (control/cluster/identities.py). `key` is the label set's canonical JSON."""

    kind: str

    def allocate(self, key: str) -> int: ...

    def release(self, number: int, key: str) -> None: ...


class LocalAllocator:
    """Numbers from this node's state, in increasing order, so a freed number is not reused
    at once."""

    def __init__(self, store: Store, kind: str = "endpoint"):
        self.store = store
        self.kind = kind
        self.first, self.limit = RANGES[kind]

    def allocate(self, key: str) -> int:
        counter = f"next_identity:{self.kind}"
        number = int(self.store.get_meta(counter) or self.first)
        taken = {i.identity for i in self.store.identities(self.kind)}
        for _ in range(self.limit - self.first):
            if number >= self.limit:
                number = self.first
            if number not in taken:
                break
            number += 1
        self.store.set_meta(counter, str(number + 1))
        return number

    def release(self, number: int, key: str) -> None:
        """Nothing to do: the state's row was the whole allocation."""


class Identities:
    """Allocation over the state store, which records the identities this node uses;
    callers hold the control plane's lock. New endpoint identities come from `allocator`;
    CIDR identities are always this node's own."""

    def __init__(self, store: Store, allocator: Allocator | None = None):
        self.store = store
        self.allocator = allocator or LocalAllocator(store)
        self._cidrs = LocalAllocator(store, "cidr")

    def for_labels(self, labels: dict) -> int:
        key = json.dumps(labels, sort_keys=True)
        return self._get_or_add(self.allocator, key, labels)

    def sync_cidrs(self, cidrs: set[str]) -> dict[str, int]:
        """Identities for exactly these prefixes: new ones allocated, unused ones freed."""
        wanted = {f"cidr:{c}" for c in cidrs}
        with self.store.transaction():
            for identity in self.store.identities("cidr"):
                if identity.key not in wanted:
                    self.store.delete_identity(identity.identity)
            return {
                cidr: self._get_or_add(self._cidrs, f"cidr:{cidr}", {"cidr": cidr})
                for cidr in sorted(cidrs)
            }

    def collect_garbage(self) -> list[int]:
        """Free endpoint identities no endpoint refers to any more."""
        unused = [self.store.get_identity(n) for n in self.store.unreferenced_identities()]
        if unused:
            with self.store.transaction():
                for identity in unused:
                    self.store.delete_identity(identity.identity)
            for identity in unused:
                self.allocator.release(identity.identity, identity.key)
        return [identity.identity for identity in unused]

    def _get_or_add(self, allocator, key: str, labels: dict) -> int:
        existing = self.store.identity_by_key(key)
        if existing is not None:
            return existing.identity
        number = allocator.allocate(key)
        self.store.add_identity(IdentityRecord(number, allocator.kind, key, labels))
        return number

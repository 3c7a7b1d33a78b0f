"""Security identities: a container's filtered labels plus its network's name, mapped to a
number. Endpoints with equal labels share an identity; CIDR prefixes named by policy get
identities of their own. Numbers are handed out in increasing order, so a freed number is
not reused at once."""

import json

from datapath.abi import FIRST_ENDPOINT_IDENTITY

from .policy import NETWORK_LABEL
from .state import IdentityRecord, Store

FIRST_CIDR_IDENTITY = 1 << 24
ENDPOINT_IDENTITY_LIMIT = FIRST_CIDR_IDENTITY


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


class Identities:
    """Allocation over the state store; callers hold the control plane's lock."""

    def __init__(self, store: Store):
        self.store = store

    def for_labels(self, labels: dict) -> int:
        key = json.dumps(labels, sort_keys=True)
        return self._get_or_add("endpoint", key, labels, FIRST_ENDPOINT_IDENTITY)

    def sync_cidrs(self, cidrs: set[str]) -> dict[str, int]:
        """Identities for exactly these prefixes: new ones allocated, unused ones freed."""
        wanted = {f"cidr:{c}" for c in cidrs}
        with self.store.transaction():
            for identity in self.store.identities("cidr"):
                if identity.key not in wanted:
                    self.store.delete_identity(identity.identity)
            return {
                cidr: self._get_or_add("cidr", f"cidr:{cidr}", {"cidr": cidr}, FIRST_CIDR_IDENTITY)
                for cidr in sorted(cidrs)
            }

    def collect_garbage(self) -> list[int]:
        """Free endpoint identities no endpoint refers to any more."""
        unused = self.store.unreferenced_identities()
        if unused:
            with self.store.transaction():
                for identity in unused:
                    self.store.delete_identity(identity)
        return unused

    def _get_or_add(self, kind: str, key: str, labels: dict, first: int) -> int:
        existing = self.store.identity_by_key(key)
        if existing is not None:
            return existing.identity
        counter = f"next_identity:{kind}"
        number = int(self.store.get_meta(counter) or first)
        limit = ENDPOINT_IDENTITY_LIMIT if kind == "endpoint" else 1 << 32
        taken = {i.identity for i in self.store.identities(kind)}
        for _ in range(limit - first):
            if number >= limit:
                number = first
            if number not in taken:
                break
            number += 1
        self.store.add_identity(IdentityRecord(number, kind, key, labels))
        self.store.set_meta(counter, str(number + 1))
        return number

"""Policy values: identities and Cilium-format rules as frozen, hashable dataclasses.

Every rule value serializes back to the JSON it was parsed from (canonical form), so
`parse_rules(json.dumps([r.to_json() for r in rules]))` gives equal objects.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

from datapath.abi import RESERVED_IDENTITIES
from driver.errors import DriverError

NETWORK_LABEL = "io.pycilium.network"

ENTITIES = ("all", "cluster", "host", "world", "init", "unmanaged")
# A selector key is Cilium's source:key. On Docker a container's labels are all of source
# container, and "any", "unspec" (which Cilium's selectors read as any) and no source match
# them; "reserved" names a reserved identity and never a container's label.
RESERVED_SOURCE = "reserved"
CONTAINER_SOURCES = ("any", "unspec", "container")
RESERVED_NAMES = tuple(RESERVED_IDENTITIES.values())
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
RULE_PROTOCOLS = ("TCP", "UDP", "ICMP", "ANY")  # toPorts protocols, spelt as Cilium does


class PolicyError(DriverError):
    """A rule that cannot be parsed, or a repository request that cannot be carried out."""

    status = 400


class PolicyNotFound(PolicyError):
    status = 404


def split_key(written: str) -> tuple[str, str]:
    """("", a Docker label key) or (source, key) for any other source."""
    source, sep, key = written.partition(":")
    if not sep:
        return "", written
    if source in CONTAINER_SOURCES:
        return "", key
    return source, key


def _value(labels: Mapping[str, str], reserved: str | None, key: tuple[str, str]):
    """The value a key reads on an identity: a container's labels, or (reserved set) the
    reserved identity of that name, whose only label is reserved:<name> with no value."""
    source, name = key
    if reserved is None:
        return labels.get(name) if not source else None
    return "" if key == (RESERVED_SOURCE, reserved) else None


@dataclass(frozen=True)
class Identity:
    id: int
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Requirement:
    """One matchExpressions entry; values are sorted and unique."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    @cached_property
    def label(self) -> tuple[str, str]:
        return split_key(self.key)

    def admits(self, value: str | None) -> bool:
        """value: the key's value on the identity, None when it has no such label."""
        if self.operator == "Exists":
            return value is not None
        if self.operator == "DoesNotExist":
            return value is None
        found = value is not None and value in self.values
        return found if self.operator == "In" else not found

    def to_json(self) -> dict:
        out = {"key": self.key, "operator": self.operator}
        if self.values:
            out["values"] = list(self.values)
        return out

    def describe(self) -> str:
        if self.operator in ("Exists", "DoesNotExist"):
            return f"{self.key} {self.operator}"
        return f"{self.key} {self.operator} ({','.join(self.values)})"


@dataclass(frozen=True)
class Selector:
    """A label selector; the empty selector matches every endpoint. Keys are kept as
    written (to_json gives them back) and matched by split_key()."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    @cached_property
    def label_pairs(self) -> tuple[tuple[tuple[str, str], str], ...]:
        return tuple((split_key(k), v) for k, v in self.match_labels)

    @cached_property
    def names_reserved(self) -> bool:
        """Whether a key has the reserved source: then it may select reserved identities."""
        keys = [key for key, _ in self.label_pairs] + [r.label for r in self.match_expressions]
        return any(source == RESERVED_SOURCE for source, _ in keys)

    def matches(self, labels: Mapping[str, str], reserved: str | None = None) -> bool:
        """labels: a container's identity labels; reserved: instead, a reserved identity's
        name (so a container's label never reads as a reserved one, whatever its key)."""
        return all(_value(labels, reserved, k) == v for k, v in self.label_pairs) and all(
            r.admits(_value(labels, reserved, r.label)) for r in self.match_expressions
        )

    def to_json(self) -> dict:
        out = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [r.to_json() for r in self.match_expressions]
        return out

    def describe(self) -> str:
        terms = [f"{k}={v}" for k, v in self.match_labels]
        terms += [r.describe() for r in self.match_expressions]
        return ",".join(terms) or "all endpoints"


@dataclass(frozen=True)
class PortProtocol:
    """port 0 = any port; end_port 0 = a single port; protocol one of RULE_PROTOCOLS."""

    port: int = 0
    end_port: int = 0
    protocol: str = "ANY"

    def to_json(self) -> dict:
        out = {"port": str(self.port)} if self.port else {}
        if self.end_port:
            out["endPort"] = self.end_port
        out["protocol"] = self.protocol
        return out


@dataclass(frozen=True)
class PortRule:
    ports: tuple[PortProtocol, ...]

    def to_json(self) -> dict:
        return {"ports": [p.to_json() for p in self.ports]}


@dataclass(frozen=True)
class CIDRSet:
    cidr: str
    excepts: tuple[str, ...] = ()

    def to_json(self) -> dict:
        out = {"cidr": self.cidr}
        if self.excepts:
            out["except"] = list(self.excepts)
        return out


@dataclass(frozen=True)
class PeerRule:
    """One ingress or egress section. A peer field None = its key is absent (the section is
    not restricted by it); () = present and empty, which selects no peer (Cilium 1.15+)."""

    endpoints: tuple[Selector, ...] | None = None
    requires: tuple[Selector, ...] = ()
    cidr: tuple[str, ...] | None = None
    cidr_set: tuple[CIDRSet, ...] | None = None
    entities: tuple[str, ...] | None = None
    to_ports: tuple[PortRule, ...] = ()

    def peer_fields(self) -> tuple:
        return (self.endpoints, self.cidr, self.cidr_set, self.entities)

    def has_peers(self) -> bool:
        return any(f is not None for f in self.peer_fields())

    def selects_no_peer(self) -> bool:
        """An explicitly empty peer list: the whole section selects no peer, whatever the
        other peer fields hold (as Cilium's mergeEndpointSelectors has it)."""
        return any(f == () for f in self.peer_fields())

    def prefixes(self) -> set[str]:
        out = set(self.cidr or ())
        for entry in self.cidr_set or ():
            out.add(entry.cidr)
            out.update(entry.excepts)
        return out

    def to_json(self, side: str) -> dict:
        """side is "from" (ingress) or "to" (egress)."""
        out = {}
        if self.endpoints is not None:
            out[f"{side}Endpoints"] = [s.to_json() for s in self.endpoints]
        if self.requires:
            out[f"{side}Requires"] = [s.to_json() for s in self.requires]
        if self.cidr is not None:
            out[f"{side}CIDR"] = list(self.cidr)
        if self.cidr_set is not None:
            out[f"{side}CIDRSet"] = [c.to_json() for c in self.cidr_set]
        if self.entities is not None:
            out[f"{side}Entities"] = list(self.entities)
        if self.to_ports:
            out["toPorts"] = [p.to_json() for p in self.to_ports]
        return out


@dataclass(frozen=True)
class Rule:
    """ingress/egress None = the key is absent; parse refuses an empty list."""

    endpoint_selector: Selector
    labels: tuple[tuple[str, str], ...] = ()
    description: str = ""
    ingress: tuple[PeerRule, ...] | None = None
    egress: tuple[PeerRule, ...] | None = None

    @property
    def name(self) -> str | None:
        return next((v for k, v in self.labels if k == "name"), None)

    def label_set(self) -> frozenset[tuple[str, str]]:
        return frozenset(self.labels)

    def display(self, index: int) -> str:
        """How compute and trace name the rule: its name label, its labels, or its index."""
        if self.name is not None:
            return self.name
        if self.labels:
            return ",".join(f"{k}={v}" for k, v in self.labels)
        return f"rule {index}"

    @cached_property
    def prefixes(self) -> frozenset[str]:
        """Made once: every policy change compares the prefixes of all rules in force."""
        sections = (self.ingress or ()) + (self.egress or ())
        return frozenset().union(*(s.prefixes() for s in sections))

    @cached_property
    def json_text(self) -> str:
        """to_json() as compact JSON text, made once: the rules in force are saved after
        every change, and a small change to 10,000 rules must not serialize them all."""
        return json.dumps(self.to_json(), separators=(",", ":"))

    def to_json(self) -> dict:
        out = {"endpointSelector": self.endpoint_selector.to_json()}
        if self.labels:
            out["labels"] = [{"key": k, "value": v} for k, v in self.labels]
        if self.description:
            out["description"] = self.description
        if self.ingress is not None:
            out["ingress"] = [s.to_json("from") for s in self.ingress]
        if self.egress is not None:
            out["egress"] = [s.to_json("to") for s in self.egress]
        return out

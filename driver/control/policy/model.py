"""Policy values: identities and Cilium-format rules as frozen, hashable dataclasses.

Every rule value serializes back to the JSON it was parsed from (canonical form), so
`parse_rules(json.dumps([r.to_json() for r in rules]))` gives equal objects.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field

from driver.errors import DriverError

NETWORK_LABEL = "io.pycilium.network"

ENTITIES = ("all", "cluster", "host", "world")
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
RULE_PROTOCOLS = ("TCP", "UDP", "ICMP", "ANY")  # toPorts protocols, spelt as Cilium does


class PolicyError(DriverError):
    """A rule that cannot be parsed, or a repository request that cannot be carried out."""

    status = 400


class PolicyNotFound(PolicyError):
    status = 404


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

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        found = self.key in labels and labels[self.key] in self.values
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
    """A label selector; the empty selector matches every endpoint."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
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
    """One ingress or egress section. endpoints None = no fromEndpoints/toEndpoints key."""

    endpoints: tuple[Selector, ...] | None = None
    requires: tuple[Selector, ...] = ()
    cidr: tuple[str, ...] = ()
    cidr_set: tuple[CIDRSet, ...] = ()
    entities: tuple[str, ...] = ()
    to_ports: tuple[PortRule, ...] = ()

    def has_peers(self) -> bool:
        return self.endpoints is not None or bool(self.cidr or self.cidr_set or self.entities)

    def prefixes(self) -> set[str]:
        out = set(self.cidr)
        for entry in self.cidr_set:
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
        if self.cidr:
            out[f"{side}CIDR"] = list(self.cidr)
        if self.cidr_set:
            out[f"{side}CIDRSet"] = [c.to_json() for c in self.cidr_set]
        if self.entities:
            out[f"{side}Entities"] = list(self.entities)
        if self.to_ports:
            out["toPorts"] = [p.to_json() for p in self.to_ports]
        return out


@dataclass(frozen=True)
class Rule:
    """ingress/egress None = the key is absent; () = present and empty (still enforces)."""

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

    def prefixes(self) -> set[str]:
        sections = (self.ingress or ()) + (self.egress or ())
        return set().union(*(s.prefixes() for s in sections))

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

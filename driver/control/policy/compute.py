"""From the rules selecting one endpoint to the policy map keys its datapath looks up.

The datapath allows a new flow if one of lookup_keys() exists, so the keys here are the most
compact set with that meaning: an L3 allow is (X, 0, 0), "any peer" is identity 0, and a key
that a wider key already covers is dropped.
"""

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from datapath.abi import (
    ANY_ID,
    EGRESS,
    ENFORCEMENT_MODES,
    FIRST_ENDPOINT_IDENTITY,
    HOST_ID,
    INGRESS,
    INIT_ID,
    PORT_PROTOCOLS,
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    RESERVED_IDENTITIES,
    UNMANAGED_ID,
    WORLD_ID,
    PolicyKey,
)

from .model import (
    NETWORK_LABEL,
    Identity,
    PeerRule,
    PolicyError,
    PortProtocol,
    PortRule,
    Requirement,
    Rule,
    Selector,
)

HOST_ACCESS = "host access (health checks)"
ISOLATION = "network isolation (same network, host, world, CIDRs)"
SYNTHETIC = (HOST_ACCESS, ISOLATION)


_RESERVED_BY_NAME = {name: number for number, name in RESERVED_IDENTITIES.items()}


@dataclass(frozen=True)
class EndpointPolicy:
    ingress_enforced: bool
    egress_enforced: bool
    keys: frozenset[PolicyKey]
    rules: tuple[str, ...]


@dataclass(frozen=True)
class Resolved:
    """EndpointPolicy before compaction, with the origins (rule names) of every key."""

    ingress_enforced: bool
    egress_enforced: bool
    origins: Mapping[PolicyKey, tuple[str, ...]]
    rules: tuple[str, ...]

    def policy(self) -> EndpointPolicy:
        keys = compact(self.origins)
        return EndpointPolicy(self.ingress_enforced, self.egress_enforced, keys, self.rules)


def lookup_keys(identity: int, dport: int, protocol: int, direction: int) -> list[PolicyKey]:
    """The keys the datapath probes for a new flow, in its order."""
    shapes = (
        (identity, dport, protocol),
        (identity, 0, protocol),
        (identity, 0, 0),
        (ANY_ID, dport, protocol),
        (ANY_ID, 0, protocol),
        (ANY_ID, 0, 0),
    )
    return [PolicyKey(i, p, pr, direction) for i, p, pr in shapes]


def first_match(keys, identity: int, dport: int, protocol: int, direction: int):
    return next((k for k in lookup_keys(identity, dport, protocol, direction) if k in keys), None)


def compact(keys: Iterable[PolicyKey]) -> frozenset[PolicyKey]:
    keys = set(keys)
    return frozenset(k for k in keys if not _covered(k, keys))


class KeySet:
    """A compacted key set that changes by deltas: the keys of a peer identity that came
    are merged in, those of one that went taken out, each at the cost of the keys it
    touches (a key is indexed by its peer identity), never of the whole set. Each change
    returns what it added to and removed from the set: what the datapath must apply."""

    def __init__(self, compacted: Iterable[PolicyKey]):
        self.keys: set[PolicyKey] = set(compacted)
        # A tuple, not a set, per peer: most peers have one key, and a node has a KeySet
        # per local identity with an entry per peer identity of the cluster.
        grouped = defaultdict(list)
        for key in self.keys:
            grouped[key.identity].append(key)
        self._by_peer: dict[int, tuple[PolicyKey, ...]] = {
            identity: tuple(keys) for identity, keys in grouped.items()
        }

    def drop_peers(self, identities: Iterable[int]) -> set[PolicyKey]:
        """Take away every key of these peer identities. No other key changes: a key only
        covers keys of its own identity (or is ANY_ID's, which is no endpoint's)."""
        removed = set()
        for identity in identities:
            removed.update(self._by_peer.pop(identity, ()))
        self.keys -= removed
        return removed

    def add(self, more: Iterable[PolicyKey]) -> tuple[set[PolicyKey], set[PolicyKey]]:
        """compact(keys | more), as (keys added, keys removed): a new key may be covered by
        one there, or cover some of its own identity's; a new ANY_ID key may cover any."""
        extra = set(more) - self.keys
        if not extra:
            return set(), set()
        if any(k.identity == ANY_ID for k in extra):
            wanted = compact(self.keys | extra)
            added, removed = wanted - self.keys, self.keys - wanted
        else:
            self.keys |= extra  # for the lookups of _covered; the new keys are not indexed
            added = {k for k in extra if not _covered(k, self.keys)}
            removed = {
                k
                for identity in {k.identity for k in added}
                for k in self._by_peer.get(identity, ())
                if _covered(k, self.keys)
            }
            self.keys -= extra
        self.keys |= added
        self.keys -= removed
        came = defaultdict(list)
        for k in added:
            came[k.identity].append(k)
        for identity in came.keys() | {k.identity for k in removed}:
            kept = tuple(k for k in self._by_peer.get(identity, ()) if k not in removed)
            kept += tuple(came.get(identity, ()))
            if kept:
                self._by_peer[identity] = kept
            else:
                self._by_peer.pop(identity, None)
        return added, removed


def _covered(key: PolicyKey, keys) -> bool:
    """Whether keys hold a key that allows every flow `key` allows (never (X, port, 0):
    the datapath skips that shape)."""
    identity, port, proto, direction = key
    for i in (identity, ANY_ID):
        for p in (port, 0):
            for pr in (proto, 0):
                wider = (p == 0 or pr != 0) and (i, p, pr) != (identity, port, proto)
                if wider and (i, p, pr, direction) in keys:
                    return True
    return False


class Peers:
    """The identities a rule can name: known endpoints, reserved ids, CIDR identities."""

    def __init__(self, identities: Iterable[Identity], cidr_identities: Mapping[str, int]):
        self.endpoints = {i.id: i.labels for i in identities if i.id >= FIRST_ENDPOINT_IDENTITY}
        self._by_pair = defaultdict(set)
        self._by_key = defaultdict(set)
        for ident, labels in self.endpoints.items():
            for pair in labels.items():
                self._by_pair[pair].add(ident)
                self._by_key[pair[0]].add(ident)
        self.prefixes = {ipaddress.ip_network(p): ident for p, ident in cidr_identities.items()}
        self._selected = {}
        self._cidr = {}

    def select(self, selector: Selector) -> frozenset[int]:
        """Containers only, unless a key names a reserved identity: then every identity
        whose labels match (a CIDR identity reads as world, as Cilium labels it)."""
        if selector not in self._selected:
            if selector.names_reserved:
                ids = {i for i, labels in self.endpoints.items() if selector.matches(labels)}
                for ident, name in RESERVED_IDENTITIES.items():
                    if selector.matches({}, name):
                        ids.add(ident)
                if selector.matches({}, "world"):
                    ids.update(self.prefixes.values())
            else:
                ids = set(self.endpoints)
                for (_, key), value in selector.label_pairs:
                    ids &= self._by_pair.get((key, value), set())
                for requirement in selector.match_expressions:
                    ids = self._narrow(ids, requirement)
            self._selected[selector] = frozenset(ids)
        return self._selected[selector]

    def _narrow(self, ids: set[int], req: Requirement) -> set[int]:
        _, key = req.label
        if req.operator in ("Exists", "DoesNotExist"):
            having = self._by_key.get(key, set())
        else:
            having = set().union(*(self._by_pair.get((key, v), ()) for v in req.values))
        return ids & having if req.operator in ("In", "Exists") else ids - having

    def cidr(self, prefix: str, excepts: tuple[str, ...] = ()) -> frozenset[int]:
        if (prefix, excepts) not in self._cidr:
            outer = ipaddress.ip_network(prefix)
            holes = [ipaddress.ip_network(e) for e in excepts]
            self._cidr[prefix, excepts] = frozenset(
                ident
                for net, ident in self.prefixes.items()
                if _inside(net, outer) and not any(_inside(net, h) for h in holes)
            )
        return self._cidr[prefix, excepts]

    def entity(self, name: str) -> set[int]:
        if name == "all":
            return {ANY_ID}
        if name == "world":
            return {WORLD_ID, *self.prefixes.values()}
        if name in _RESERVED_BY_NAME:
            return {_RESERVED_BY_NAME[name]}
        return {*self.endpoints, HOST_ID, INIT_ID, UNMANAGED_ID}  # cluster

    def describe(self, ident: int) -> str:
        if ident in self.endpoints:
            return ",".join(f"{k}={v}" for k, v in sorted(self.endpoints[ident].items()))
        names = {ANY_ID: "any peer", **RESERVED_IDENTITIES}
        cidrs = [str(net) for net, i in self.prefixes.items() if i == ident]
        return names.get(ident) or (f"cidr {cidrs[0]}" if cidrs else f"identity {ident}")


def _inside(net, outer) -> bool:
    return net.version == outer.version and net.subnet_of(outer)


def resolve(
    identity: Identity,
    selected: list[tuple[str, Rule]],
    peers: Peers,
    mode: str,
) -> Resolved:
    """selected: (display name, rule) for every rule whose endpointSelector matches identity."""
    if mode not in ENFORCEMENT_MODES:
        modes = ", ".join(ENFORCEMENT_MODES)
        raise PolicyError(f"unknown enforcement mode {mode!r} (expected {modes})")
    names = tuple(name for name, _ in selected)
    if mode == "never":
        return Resolved(False, False, {}, names)
    origins = defaultdict(dict)  # (identity, dport, protocol, direction) -> {origin: None}
    _add_direction(selected, INGRESS, peers, origins)
    _add_direction(selected, EGRESS, peers, origins)
    ingress = mode == "always" or any(r.ingress is not None for _, r in selected)
    egress = mode == "always" or any(r.egress is not None for _, r in selected)
    if ingress:
        origins[HOST_ID, 0, 0, INGRESS][HOST_ACCESS] = None
    else:
        _add_isolation(identity, peers, origins)
    frozen = {PolicyKey(*key): tuple(o) for key, o in origins.items()}
    return Resolved(True, egress, frozen, names)


def _add_direction(selected, direction: int, peers: Peers, origins) -> None:
    attr = "ingress" if direction == INGRESS else "egress"
    sections = [(name, s) for name, rule in selected for s in getattr(rule, attr) or ()]
    allowed = _required(sections, peers)
    for name, section in sections:
        ids = _section_peers(section, peers, allowed)
        for port, proto in _port_specs(section.to_ports):
            for ident in ids:
                origins[ident, port, proto, direction][name] = None


def _required(sections, peers: Peers) -> frozenset[int] | None:
    """fromRequires/toRequires of every selecting rule, ANDed: None when there are none."""
    requirements = {sel for _, section in sections for sel in section.requires}
    if not requirements:
        return None
    return frozenset(set(peers.endpoints).intersection(*map(peers.select, requirements)))


def _section_peers(section: PeerRule, peers: Peers, allowed) -> set[int]:
    if section.selects_no_peer():
        return set()  # an explicitly empty peer list (Cilium 1.15+)
    if not section.has_peers():
        if not section.to_ports:
            return set()  # an empty section allows nothing (Cilium's default-deny idiom)
        return {ANY_ID} if allowed is None else set(allowed)
    ids = set().union(*map(peers.select, section.endpoints or ()))
    if allowed is not None:
        ids &= allowed
    for prefix in section.cidr or ():
        ids |= peers.cidr(prefix)
    for entry in section.cidr_set or ():
        ids |= peers.cidr(entry.cidr, entry.excepts)
    for entity in section.entities or ():
        ids |= peers.entity(entity)
    return ids


def _port_specs(to_ports: tuple[PortRule, ...]) -> set[tuple[int, int]]:
    if not to_ports:
        return {(0, 0)}
    return {spec for rule in to_ports for port in rule.ports for spec in _specs(port)}


def _specs(port: PortProtocol) -> list[tuple[int, int]]:
    if port.protocol == "ICMP":
        return [(0, PROTO_ICMP), (0, PROTO_ICMPV6)]
    if port.protocol == "ANY" and not port.port:
        return [(0, 0)]
    protos = {"TCP": (PROTO_TCP,), "UDP": (PROTO_UDP,), "ANY": PORT_PROTOCOLS}[port.protocol]
    numbers = range(port.port, (port.end_port or port.port) + 1)
    return [(number, proto) for number in numbers for proto in protos]


def _add_isolation(identity: Identity, peers: Peers, origins) -> None:
    """Without ingress rules an endpoint admits its own network, as a Docker bridge does: a
    container on several networks reaches each through its interface there."""
    network = identity.labels.get(NETWORK_LABEL)
    same = {i for i, labels in peers.endpoints.items() if labels.get(NETWORK_LABEL) == network}
    if identity.id >= FIRST_ENDPOINT_IDENTITY:
        same.add(identity.id)
    for ident in same | {HOST_ID, WORLD_ID, *peers.prefixes.values()}:
        origins[ident, 0, 0, INGRESS][ISOLATION] = None

"""Shared test helpers: identities on networks, a repository from YAML, and the datapath."""

from driver.control.policy import NETWORK_LABEL, Identity, PolicyKey, PolicyRepository, parse_rules


def endpoint(ident: int, network: str = "net1", **labels: str) -> Identity:
    return Identity(ident, {**labels, NETWORK_LABEL: network})


def repository(text: str) -> PolicyRepository:
    return PolicyRepository(parse_rules(text, "test.yaml"))


def datapath_allows(keys, peer: int, dport: int, proto: int, direction: int) -> bool:
    """What the BPF program does for a new flow: probe six keys, most specific first."""
    probes = [(peer, dport, proto), (peer, 0, proto), (peer, 0, 0)]
    probes += [(0, dport, proto), (0, 0, proto), (0, 0, 0)]
    return any(PolicyKey(i, p, pr, direction) in keys for i, p, pr in probes)


def keyset(*tuples, direction: int = 0) -> frozenset[PolicyKey]:
    return frozenset(PolicyKey(i, p, pr, direction) for i, p, pr in tuples)

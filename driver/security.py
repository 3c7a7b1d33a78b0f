"""Identities and policy of endpoints, and the regeneration that turns them into map entries.

Everything runs under the control plane's lock. A policy change is validated completely
before anything changes; if the datapath refuses the result (a full policy map), the
previous policy is put back in force.
"""

import ipaddress
import json
import logging

from datapath import HOST_ID, INIT_ID, DatapathError, PolicyKey

from .endpoints import spec_of
from .errors import InvalidArgument
from .identities import Identities, LabelFilter, identity_labels
from .policy import Identity, PolicyRepository, parse_rules
from .state import Endpoint, Store

log = logging.getLogger(__name__)

MODES = ("default", "always", "never")


class Security:
    def __init__(self, store: Store, datapath, label_filter: LabelFilter, default_mode: str):
        self.store = store
        self.datapath = datapath
        self.label_filter = label_filter
        self.identities = Identities(store)
        self.mode = store.get_meta("policy_mode") or default_mode
        saved = store.get_meta("policy_rules")
        self.policy = PolicyRepository(parse_rules(saved, "saved policy") if saved else [])
        self.revision = int(store.get_meta("policy_revision") or 0)

    # endpoints

    def assign_container(
        self, ep: Endpoint, network_name: str, container_id: str, name: str, labels: dict
    ) -> int:
        """Give an endpoint its container's identity; its policy is in place before the
        identity leaves the waiting state, and peers learn the new identity first."""
        wanted = identity_labels(labels, network_name, self.label_filter)
        with self.store.transaction():
            self.store.set_network_name(ep.network_id, network_name)
            identity = self.identities.for_labels(wanted)
            self.store.set_container(ep.endpoint_id, container_id, name, wanted, identity)
        if identity != ep.identity:
            self.regenerate()
            self.datapath.set_endpoint_identity(spec_of(ep), identity)
            self.refresh()
        return identity

    def refresh(self) -> None:
        """After endpoints went away: free identities nobody has, then regenerate the rest."""
        self.identities.collect_garbage()
        self.regenerate()

    def regenerate(self) -> None:
        """Make every endpoint's policy entries what the rules say for today's identities."""
        cidr_identities = self.identities.sync_cidrs(self.policy.cidrs())
        self.datapath.set_cidr_identities({**self._host_prefixes(), **cidr_identities})
        known = [Identity(i.identity, i.labels) for i in self.store.identities("endpoint")]
        endpoints = self.store.endpoints()
        mates = _network_mates(endpoints)
        computed = {}
        for ep in endpoints:
            if ep.identity == INIT_ID:
                continue
            if ep.identity not in computed:
                computed[ep.identity] = self.policy.compute(
                    Identity(ep.identity, ep.labels),
                    known,
                    cidr_identities,
                    self.mode,
                    network_mates=mates.get(ep.network_id, frozenset()),
                )
            result = computed[ep.identity]
            self.datapath.set_endpoint_policy(
                spec_of(ep),
                result.ingress_enforced,
                result.egress_enforced,
                {PolicyKey(k.identity, k.dport, k.protocol, k.direction) for k in result.keys},
            )

    def _host_prefixes(self) -> dict[str, int]:
        return {
            f"{ip}/{ip.max_prefixlen}": HOST_ID
            for ip in map(ipaddress.ip_address, self.datapath.host_addresses())
        }

    # policy

    def import_rules(self, text: str, source: str) -> dict:
        rules = parse_rules(text, source)
        candidate = PolicyRepository(self.policy.rules())
        candidate.add(rules)
        self._switch(candidate)
        known = [Identity(i.identity, i.labels) for i in self.store.identities("endpoint")]
        return {"revision": self.revision, "warnings": candidate.selects_nothing(rules, known)}

    def delete_rules(self, name: str | None, everything: bool) -> dict:
        candidate = PolicyRepository(self.policy.rules())
        candidate.delete(name=name, all=everything)
        self._switch(candidate)
        return {"revision": self.revision}

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise InvalidArgument(f"policy enforcement {mode!r} is not one of {', '.join(MODES)}")
        previous, self.mode = self.mode, mode
        try:
            self.regenerate()
        except DatapathError:
            self.mode = previous
            self.regenerate()
            raise
        with self.store.transaction():
            self.store.set_meta("policy_mode", mode)

    def trace(self, src_labels: dict, dst_labels: dict, dport: int, protocol: int):
        known = [Identity(i.identity, i.labels) for i in self.store.identities("endpoint")]
        return self.policy.trace(
            src_labels, dst_labels, dport, protocol, identities=known, mode=self.mode
        )

    def _switch(self, candidate: PolicyRepository) -> None:
        previous, self.policy = self.policy, candidate
        try:
            self.regenerate()
        except DatapathError:
            self.policy = previous
            self.regenerate()
            raise
        self.revision += 1
        with self.store.transaction():
            self.store.set_meta("policy_rules", json.dumps(candidate.to_json()))
            self.store.set_meta("policy_revision", str(self.revision))
        log.info("policy revision %d in force (%d rules)", self.revision, len(candidate.rules()))


def _network_mates(endpoints: list[Endpoint]) -> dict[str, frozenset[int]]:
    """Per network, the identities of the other endpoints of containers connected to it: a
    container on two networks reaches both, whichever interface its packets leave by."""
    by_sandbox = {}
    for ep in endpoints:
        if ep.sandbox_key:
            by_sandbox.setdefault(ep.sandbox_key, []).append(ep)
    mates: dict[str, set[int]] = {}
    for members in by_sandbox.values():
        for ep in members:
            others = {m.identity for m in members if m is not ep and m.identity != INIT_ID}
            mates.setdefault(ep.network_id, set()).update(others)
    return {network: frozenset(ids) for network, ids in mates.items()}

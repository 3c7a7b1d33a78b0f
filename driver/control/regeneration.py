"""Identities and policy of endpoints, and the regeneration that turns them into map entries.

Everything runs under the control plane's lock. A policy change is validated completely
before anything changes; if the datapath refuses the result (a full policy map), the
previous policy is put back in force.
"""

import dataclasses
import ipaddress
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from datapath import DatapathError
from datapath.abi import ENFORCEMENT_MODES, HOST_ID, INIT_ID
from datapath.interface import DatapathApi
from driver.errors import DriverError, InvalidArgument

from .endpoints import spec_of
from .identities import (
    FIRST_CIDR_IDENTITY,
    Allocator,
    Identities,
    LabelFilter,
    identity_labels,
)
from .policy import (
    EndpointPolicy,
    Identity,
    KeySet,
    Peers,
    PolicyError,
    PolicyKey,
    PolicyRepository,
    parse_rules,
)
from .state import Endpoint, Store

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class _Result:
    """The policy of the endpoints of one identity on one network, kept up to date by
    deltas: generation counts the changes, delta is the last one (keys added, removed)."""

    identity: Identity
    policy: EndpointPolicy  # its enforcement and rules; its keys are in `keys`
    keys: KeySet
    generation: int = 0
    delta: tuple[set[PolicyKey], set[PolicyKey]] = (set(), set())


class Regeneration:
    """Identities, the policy in force and its enforcement mode, and the map entries they
    give every endpoint: recomputed for what a change touches, written to the datapath."""

    def __init__(
        self,
        store: Store,
        datapath: DatapathApi,
        label_filter: LabelFilter,
        default_mode: str,
        saved_policy: str = "load",
        allocator: Allocator | None = None,
    ):
        self.store = store
        self.datapath = datapath
        self.label_filter = label_filter
        self.identities = Identities(store, allocator)
        self.mode = store.get_meta("policy_mode") or default_mode
        self.revision = int(store.get_meta("policy_revision") or 0)
        self.policy = PolicyRepository(self._saved_rules(saved_policy))
        # What the cached results were computed from; None until the first (full) computation.
        self._known: dict[int, Identity] | None = None
        self._cidr_identities: dict[str, int] = {}
        # (identity, network id) -> the policy of its endpoints on that network.
        self._results: dict[tuple[int, str], _Result] = {}
        # endpoint id -> (numeric id, result, its generation) as last written to the datapath.
        self._written: dict[str, tuple[int, _Result, int]] = {}
        self._cidrs_written: dict[str, int] | None = None
        # Cluster mode: identities of other nodes' endpoints (number -> labels), which this
        # node's rules may name as peers (set_remote).
        self.remote: dict[int, dict] = {}

    def _saved_rules(self, saved_policy: str) -> list:
        """The rules in force at the last stop. An earlier version may have saved a rule
        this one refuses (a meaning changed: docs/policy.md): that stops the start, unless
        the operator chose to start without them; either way they are kept in a file."""
        saved = self.store.get_meta("policy_rules")
        if not saved:
            return []
        try:
            return parse_rules(saved, "saved policy")
        except PolicyError as exc:
            # control/uninstall.py knows the name: make uninstall removes it with the state.
            kept = Path(self.store.path).with_name(f"refused-policy-r{self.revision}.json")
            kept.write_text(saved)
            if saved_policy == "discard":
                log.error("started without the saved policy, kept in %s: %s", kept, exc)
                return []
            raise DriverError(
                f"the saved policy (revision {self.revision}) is refused by this version: {exc}. "
                f"It is kept in {kept}. While the driver is stopped the kernel still enforces "
                "it; to start, fix the file, start with --saved-policy discard (no rules are "
                "enforced until you import them again) and import the fixed file"
            ) from None

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
            try:
                self.sync()
                self.datapath.set_endpoint_identity(spec_of(ep), identity)
            except Exception:
                # The datapath keeps the old identity, so the store must too: else a retry
                # finds nothing to change and the endpoint waits for good. The new number,
                # if nobody has it, goes at the next refresh.
                with self.store.transaction():
                    self.store.set_container(
                        ep.endpoint_id, ep.container_id, ep.container_name, ep.labels, ep.identity
                    )
                raise
            self.refresh()
        return identity

    def refresh(self) -> None:
        """After endpoints went away: free identities nobody has, then update the rest."""
        self.identities.collect_garbage()
        self.sync()

    def regenerate(self) -> None:
        """Recompute every endpoint's policy from the rules (after a policy or mode change);
        only entries that differ from what the datapath has are written."""
        self._known = None
        self.sync()

    def set_remote(self, identities: Mapping[int, dict]) -> None:
        """Cluster mode: the identities other nodes' endpoints have now. sync() adds the
        keys of those that came to every cached result, takes away those of those that
        went, and writes only the endpoints whose keys changed."""
        self.remote = dict(identities)
        self.sync()

    def known(self) -> list[Identity]:
        """The endpoint identities policy can name: this node's, then other nodes' (the
        cluster gives equal labels one number, so a number both have means the same)."""
        local = {
            i.identity: Identity(i.identity, i.labels) for i in self.store.identities("endpoint")
        }
        remote = {n: Identity(n, labels) for n, labels in self.remote.items() if n not in local}
        return [*local.values(), *remote.values()]

    def sync(self) -> None:
        """Make every endpoint's policy entries what the rules say for today's identities,
        recomputing only what the identities that changed since the last sync can affect.

        A peer identity's keys in a result depend only on that identity's labels, so an
        identity that appears adds its own keys to each cached result, and one that goes
        takes its keys away; no other key changes. The datapath gets those deltas, not the
        whole key set again (tests/unit/control/test_incremental.py holds them to a full
        recomputation).
        """
        if self._known is None:
            self._cidr_identities = self.identities.sync_cidrs(self.policy.cidrs())
            self._results.clear()
            self._known = {}
        self._write_cidr_identities()
        known = {i.id: i for i in self.known()}
        endpoints = self.store.endpoints()
        added = [i for number, i in known.items() if self._known.get(number) != i]
        removed = {number for number, i in self._known.items() if known.get(number) != i}
        in_use = {(ep.identity, ep.network_id) for ep in endpoints if ep.identity != INIT_ID}
        newcomers = Peers(added, self._cidr_identities)
        shared = {}  # the newcomers' keys, once per group of results (compute_shared)
        for key in list(self._results):
            if key not in in_use or key[0] in removed:
                del self._results[key]
            elif added or removed:
                self._update(self._results[key], newcomers, removed, shared)
        self._known = known
        everyone = None
        for ep in endpoints:
            key = (ep.identity, ep.network_id)
            if key in in_use and key not in self._results:
                everyone = everyone or Peers(known.values(), self._cidr_identities)
                identity = Identity(ep.identity, ep.labels)
                result = self.policy.compute_for(identity, everyone, self.mode)
                # The keys live on in the KeySet only: one copy of a large set.
                policy = dataclasses.replace(result, keys=frozenset())
                self._results[key] = _Result(identity, policy, KeySet(result.keys))
        self._write(endpoints)

    def _update(self, result: _Result, newcomers: Peers, removed: set[int], shared: dict) -> None:
        gone = result.keys.drop_peers(removed)
        came: set[PolicyKey] = set()
        if newcomers.endpoints:
            policy = self.policy.compute_shared(result.identity, newcomers, self.mode, shared)
            more = policy.keys
            came, covered = result.keys.add(more)
            gone |= covered
        # A key that went with an identity whose labels changed may come back with it.
        added, deleted = came - gone, gone - came
        if added or deleted:
            result.generation += 1
            result.delta = (added, deleted)

    def _write(self, endpoints: list[Endpoint]) -> None:
        """Write the policy of the endpoints whose result differs from what they have."""
        present = {ep.endpoint_id for ep in endpoints}
        for endpoint_id in self._written.keys() - present:
            del self._written[endpoint_id]
        for ep in endpoints:
            if ep.identity == INIT_ID:
                continue
            result = self._results[ep.identity, ep.network_id]
            written = self._written.pop(ep.endpoint_id, None)
            if written == (ep.numeric_id, result, result.generation) or _same(written, ep, result):
                pass  # the datapath has it
            elif written == (ep.numeric_id, result, result.generation - 1):
                # Only the last sync changed it: what that sync added and removed.
                self.datapath.update_endpoint_policy(spec_of(ep), *result.delta)
            else:
                self.datapath.set_endpoint_policy(
                    spec_of(ep),
                    result.policy.ingress_enforced,
                    result.policy.egress_enforced,
                    frozenset(result.keys.keys),
                )
            self._written[ep.endpoint_id] = (ep.numeric_id, result, result.generation)

    def _write_cidr_identities(self) -> None:
        wanted = {**self._host_prefixes(), **self._cidr_identities}
        if wanted != self._cidrs_written:
            self._cidrs_written = None
            self.datapath.set_cidr_identities(wanted)
            self._cidrs_written = wanted

    def _host_prefixes(self) -> dict[str, int]:
        return {
            f"{ip}/{ip.max_prefixlen}": HOST_ID
            for ip in map(ipaddress.ip_address, self.datapath.host_addresses())
        }

    # policy

    def import_rules(
        self, files: list[tuple[str, str]], replace: bool = False, dry_run: bool = False
    ) -> dict:
        """files: (text, source) pairs, imported together or not at all. A dry run changes
        nothing and says what the import would change."""
        rules = [rule for text, source in files for rule in parse_rules(text, source)]
        candidate = PolicyRepository(self.policy.rules())
        candidate.add(rules, replace=replace)
        known = self.known()
        warnings = candidate.selects_nothing(rules, known)
        if dry_run:
            return {"revision": self.revision, "warnings": warnings, **self._plan(candidate)}
        self._switch(candidate)
        return {"revision": self.revision, "warnings": warnings}

    def delete_rules(self, name: str | None, everything: bool) -> dict:
        candidate = PolicyRepository(self.policy.rules())
        candidate.delete(name=name, all=everything)
        self._switch(candidate)
        return {"revision": self.revision}

    def set_mode(self, mode: str) -> None:
        if mode not in ENFORCEMENT_MODES:
            modes = ", ".join(ENFORCEMENT_MODES)
            raise InvalidArgument(f"policy enforcement {mode!r} is not one of {modes}")
        previous, self.mode = self.mode, mode
        try:
            self.regenerate()
        except DatapathError:
            self.mode = previous
            self.regenerate()
            raise
        with self.store.transaction():
            self.store.set_meta("policy_mode", mode)

    def rule_origins(self) -> Callable[[Endpoint, PolicyKey], tuple[str, ...]]:
        """(endpoint, policy key) -> the rules that made the key, computed once per
        identity and network for the function's life (one read of the flow log)."""
        known = self.known()
        peers = Peers(known, self._cidr_identities)
        cache: dict[tuple[int, str], Mapping] = {}

        def origins(ep: Endpoint, key: PolicyKey) -> tuple[str, ...]:
            at = (ep.identity, ep.network_id)
            if at not in cache:
                identity = Identity(ep.identity, ep.labels)
                cache[at] = self.policy.origins_for(identity, peers, self.mode)
            return cache[at].get(key, ())

        return origins

    def trace(self, src_labels: dict, dst_labels: dict, dport: int, protocol: int):
        known = self.known()
        return self.policy.trace(
            src_labels, dst_labels, dport, protocol, identities=known, mode=self.mode
        )

    def _plan(self, candidate: PolicyRepository) -> dict:
        """The rules a switch to candidate adds and removes, and the endpoints whose policy
        entries or enforcement it changes, computed aside: no identity is allocated, no
        cached result or map entry touched. A prefix new to the rules gets a stand-in
        identity, and one they no longer name none, as the import would have it."""
        now, then = self.policy.rules(), candidate.rules()
        wanted = candidate.cidrs()
        cidrs = {p: n for p, n in self._cidr_identities.items() if p in wanted}
        taken = [FIRST_CIDR_IDENTITY, *self._cidr_identities.values()]
        for number, prefix in enumerate(sorted(wanted - cidrs.keys()), max(taken) + 1):
            cidrs[prefix] = number
        known = self.known()
        peers_now, peers_then = Peers(known, self._cidr_identities), Peers(known, cidrs)
        endpoints = self.store.endpoints()
        changes = []
        for ep in endpoints:
            if ep.identity == INIT_ID:
                continue
            identity = Identity(ep.identity, ep.labels)
            before = self.policy.compute_for(identity, peers_now, self.mode)
            after = candidate.compute_for(identity, peers_then, self.mode)
            if _entries(before) != _entries(after):
                changes.append(_change(ep, before, after))
        return {
            "rules_added": [r.display(i) for i, r in enumerate(then) if r not in now],
            "rules_removed": [r.display(i) for i, r in enumerate(now) if r not in then],
            "endpoints": changes,
        }

    def adopt(self, candidate: PolicyRepository, revision: int) -> None:
        """Put candidate in force as revision (cluster mode: the rule set etcd holds)."""
        self._switch(candidate, revision)

    def _switch(self, candidate: PolicyRepository, revision: int | None = None) -> None:
        previous, self.policy = self.policy, candidate
        try:
            self._rules_changed(previous)
        except DatapathError:
            self.policy = previous
            self.regenerate()
            raise
        self.revision = self.revision + 1 if revision is None else revision
        with self.store.transaction():
            self.store.set_meta("policy_rules", candidate.json_text())
            self.store.set_meta("policy_revision", str(self.revision))
        log.info("policy revision %d in force (%d rules)", self.revision, len(candidate.rules()))

    def _rules_changed(self, previous: PolicyRepository) -> None:
        """Recompute the endpoints a changed rule selects, and no other: a rule's sections
        (and its requirements) apply only to the endpoints its endpointSelector matches.
        New or dropped prefixes renumber CIDR identities, which every result may name."""
        if self._known is None or previous.cidrs() != self.policy.cidrs():
            self.regenerate()
            return
        selectors = [rule.endpoint_selector for rule in self.policy.changed_since(previous)]
        for key, result in list(self._results.items()):
            if any(selector.matches(result.identity.labels) for selector in selectors):
                del self._results[key]
        self.sync()


def _same(written: tuple[int, _Result, int] | None, ep: Endpoint, result: _Result) -> bool:
    """Whether what was written for ep from another result (one computed before a full
    recomputation) is what result holds."""
    if written is None or written[0] != ep.numeric_id or written[2] != written[1].generation:
        return False
    before = written[1]
    return _entries(before.policy)[:2] == _entries(result.policy)[:2] and (
        before.keys.keys == result.keys.keys
    )


def _entries(policy: EndpointPolicy) -> tuple:
    return policy.ingress_enforced, policy.egress_enforced, policy.keys


def _change(ep: Endpoint, before: EndpointPolicy, after: EndpointPolicy) -> dict:
    return {
        "endpoint": ep.numeric_id,
        "container": ep.container_name,
        "entries_added": len(after.keys - before.keys),
        "entries_removed": len(before.keys - after.keys),
        "ingress_enforced": [before.ingress_enforced, after.ingress_enforced],
        "egress_enforced": [before.egress_enforced, after.egress_enforced],
    }

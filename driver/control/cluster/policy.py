"""Policy as cluster-wide state: the rule set lives in etcd, every node puts it in force from
a watch, and every change is one transaction that bumps a cluster-wide revision.

    pycilium/v1/policy/rules    -> the rule set (JSON, as `cilium policy get` shows it)
    pycilium/v1/policy/revision -> n, written in the same transaction

A change (import, delete) is validated on the node that makes it, against the rule set etcd
holds, and written only if the revision key is still the one read: two nodes changing the
policy at once both land, one after the other, and no revision repeats. The node that wrote
puts the revision in force at once, the others when their watch sees it; a revision below
the newest one a node wrote or saw is skipped (that one contains it). The rule set is one
value, so no node ever sees half of a change. Each node keeps its copy in its state
(SQLite), in force from the start and while etcd is away. Enforcement modes stay each
node's own setting.
"""

import logging
from collections.abc import Callable

from datapath import DatapathError
from driver.errors import DriverError, InvalidArgument

from ..policy import Identity, PolicyError, PolicyRepository, Rule, parse_rules
from ..regeneration import Regeneration
from .kvstore import Entry, KvStore, absent, put, unchanged
from .nodes import PREFIX

log = logging.getLogger(__name__)

POLICY = PREFIX + "policy/"
RULES = POLICY + "rules"
REVISION = POLICY + "revision"
ATTEMPTS = 8
# etcd refuses a request larger than its --max-request-bytes (1.5 MiB by default).
MAX_RULES_BYTES = 1 << 20


class ClusterPolicy:
    """The use cases run under the control plane's lock (their callers hold it); the watch
    takes it."""

    def __init__(self, kv: KvStore, regeneration: Regeneration, lock):
        self.kv = kv
        self.regeneration = regeneration
        self.lock = lock
        self._latest: dict[str, Entry] = {}  # RULES and REVISION as the watch last saw them
        self.known = 0  # the newest cluster revision this node wrote or saw
        self.watch = None

    def start(self) -> None:
        self.watch = self.kv.watch(POLICY, self._reset, self._event)

    def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()

    # use cases

    def import_rules(self, files: list[tuple[str, str]], replace: bool, dry_run: bool) -> dict:
        """As Regeneration.import_rules, for the whole cluster. A dry run is computed against
        the rules in force on this node (the cluster's, once its watch caught up)."""
        if dry_run:
            return self.regeneration.import_rules(files, replace, dry_run=True)
        rules = [rule for text, source in files for rule in parse_rules(text, source)]
        revision, candidate = self._change(
            lambda repository: repository.add(rules, replace=replace), "import policy"
        )
        known = [
            Identity(i.identity, i.labels) for i in self.regeneration.store.identities("endpoint")
        ]
        return {"revision": revision, "warnings": candidate.selects_nothing(rules, known)}

    def delete_rules(self, name: str | None, everything: bool) -> dict:
        revision, _ = self._change(
            lambda repository: repository.delete(name=name, all=everything), "delete policy"
        )
        return {"revision": revision}

    def _change(
        self, edit: Callable[[PolicyRepository], None], purpose: str
    ) -> tuple[int, PolicyRepository]:
        """The rule set etcd holds, edited (which refuses a bad change before anything is
        written), written as the next revision and put in force here."""
        for _ in range(ATTEMPTS):
            entries, _ = self.kv.list(POLICY, purpose)
            found = {e.key: e for e in entries}
            held = found.get(REVISION)
            revision, rules = self._base(held, found.get(RULES))
            candidate = PolicyRepository(rules)
            edit(candidate)
            text = candidate.json_text()
            if len(text.encode()) > MAX_RULES_BYTES:
                raise InvalidArgument(
                    f"the rule set would be {len(text.encode())} bytes: etcd takes at most "
                    f"{MAX_RULES_BYTES} in one value"
                )
            compare = [unchanged(held)] if held is not None else [absent(REVISION)]
            writes = [put(RULES, text), put(REVISION, str(revision + 1))]
            if self.kv.txn(compare, writes, purpose):
                self.known = max(self.known, revision + 1)
                self._put_in_force(revision + 1, candidate)
                return revision + 1, candidate
        raise DriverError(f"could not {purpose}: {ATTEMPTS} attempts raced with other nodes")

    def _base(self, held: Entry | None, rules: Entry | None) -> tuple[int, list[Rule]]:
        """The revision and rules a change starts from: the cluster's, or this node's copy
        if the cluster has none yet (so the first node's policy becomes the cluster's)."""
        in_force = self.regeneration.policy
        if held is None:
            return self.regeneration.revision, in_force.rules()
        revision = int(held.value)
        text = rules.value if rules is not None else "[]"
        if text == in_force.json_text():
            return revision, in_force.rules()
        return revision, _reuse(parse_rules(text, f"the cluster's policy r{revision}"), in_force)

    def _put_in_force(self, revision: int, candidate: PolicyRepository) -> None:
        try:
            self.regeneration.adopt(candidate, revision)
        except DatapathError as exc:
            raise DatapathError(
                f"policy revision {revision} is the cluster's, but this node's datapath "
                f"refused it, so revision {self.regeneration.revision} stays in force here: "
                f"{exc}"
            ) from exc

    # the watch

    def _reset(self, entries: list[Entry]) -> None:
        with self.lock:
            self._latest = {e.key: e for e in entries if e.key in (RULES, REVISION)}
            self._converge(listed=True)

    def _event(self, kind: str, entry: Entry, _previous: Entry | None) -> None:
        if entry.key not in (RULES, REVISION):
            return
        with self.lock:
            if kind == "DELETE":
                self._latest.pop(entry.key, None)
                return
            self._latest[entry.key] = entry
            self._converge(listed=False)

    def _converge(self, listed: bool) -> None:
        """Put the cluster's rule set in force, once both keys of one transaction are seen,
        unless this node already wrote or saw a newer one (a listing taken before this
        node's own change, an event of a change a later one contains). This node's copy is
        replaced whatever its revision (the cluster's is the truth), or, if the cluster has
        none yet, becomes the cluster's."""
        held, rules = self._latest.get(REVISION), self._latest.get(RULES)
        if held is None:
            if listed and (self.regeneration.revision or self.regeneration.policy.rules()):
                self._seed()
            return
        if rules is None or rules.mod_revision != held.mod_revision:
            return  # the rest of the transaction is on its way
        revision = int(held.value)
        if revision < self.known:
            return
        self.known = revision
        in_force = self.regeneration
        if revision == in_force.revision and rules.value == in_force.policy.json_text():
            return
        try:
            parsed = parse_rules(rules.value, f"the cluster's policy r{revision}")
            self._put_in_force(revision, PolicyRepository(_reuse(parsed, in_force.policy)))
        except (PolicyError, DatapathError) as exc:
            log.error("policy revision %d is not in force on this node: %s", revision, exc)
            return
        log.info("policy revision %d from the cluster in force", revision)

    def _seed(self) -> None:
        revision = self.regeneration.revision
        writes = [put(RULES, self.regeneration.policy.json_text()), put(REVISION, str(revision))]
        if self.kv.txn([absent(REVISION)], writes, "give the cluster this node's policy"):
            log.info("the cluster had no policy: this node's revision %d is now its", revision)


def _reuse(parsed: list[Rule], in_force: PolicyRepository) -> list[Rule]:
    """parsed, with each rule equal to one in force replaced by that object: the
    regeneration recomputes only for rules that are not the same objects."""
    pool: dict[Rule, list[Rule]] = {}
    for rule in in_force.rules():
        pool.setdefault(rule, []).append(rule)
    return [pool[rule].pop() if pool.get(rule) else rule for rule in parsed]

"""The set of imported rules and the per-endpoint computation over it.

Not thread-safe by itself: the control plane holds its lock around changes and computes.
"""

from collections import Counter
from collections.abc import Iterable, Mapping

from datapath.abi import FIRST_ENDPOINT_IDENTITY, RESERVED_IDENTITIES, PolicyKey

from .compute import EndpointPolicy, Peers, resolve
from .model import RESERVED_SOURCE, Identity, PolicyError, PolicyNotFound, Rule, split_key
from .trace import Flow, Verdict, trace_flow

_RESERVED_BY_NAME = {name: ident for ident, name in RESERVED_IDENTITIES.items()}


class PolicyRepository:
    def __init__(self, rules: Iterable[Rule] = ()):
        self._rules = list(rules)
        self._index = None

    def add(self, rules: Iterable[Rule], replace: bool = False) -> None:
        """Rules whose label set equals an existing rule's replace it; unlabelled rules that
        equal an existing rule are not added twice. With replace, every rule that has the
        name label of an incoming rule goes."""
        incoming = list(rules)
        replaced = {r.label_set() for r in incoming if r.labels}
        names = {r.name for r in incoming if replace and r.name is not None}
        kept = [
            r
            for r in self._rules
            if not (r.labels and r.label_set() in replaced) and r.name not in names
        ]
        for rule in incoming:
            if rule.labels or rule not in kept:
                kept.append(rule)
        self._replace(kept)

    def delete(self, name: str | None = None, all: bool = False) -> None:
        if all:
            self._replace([])
            return
        if not name:
            raise PolicyError("policy delete needs a rule name or all")
        kept = [r for r in self._rules if not _named(r, name)]
        if len(kept) == len(self._rules):
            raise PolicyNotFound(f"no rule has the name or label {name!r}")
        self._replace(kept)

    def rules(self) -> list[Rule]:
        return list(self._rules)

    def to_json(self) -> list[dict]:
        return [rule.to_json() for rule in self._rules]

    def json_text(self) -> str:
        """to_json() as JSON text, joined from each rule's own (kept) text."""
        return "[" + ",".join(rule.json_text for rule in self._rules) + "]"

    def cidrs(self) -> set[str]:
        return set().union(*(rule.prefixes for rule in self._rules))

    def changed_since(self, earlier: "PolicyRepository") -> list[Rule]:
        """The rules one of the two has and the other has not. A repository is made from
        another's rules, so the rules both hold are the same objects."""
        now = {id(rule) for rule in self._rules}
        then = {id(rule) for rule in earlier._rules}
        return [r for r in self._rules if id(r) not in then] + [
            r for r in earlier._rules if id(r) not in now
        ]

    def selects_nothing(self, rules: Iterable[Rule], identities: Iterable[Identity]) -> list[str]:
        """Warnings for rules whose endpointSelector matches no known endpoint identity."""
        known = [i.labels for i in identities if i.id >= FIRST_ENDPOINT_IDENTITY]
        return [
            f"{_title(rule, i)}: endpointSelector ({rule.endpoint_selector.describe()})"
            " selects no known endpoint"
            for i, rule in enumerate(rules)
            if not any(rule.endpoint_selector.matches(labels) for labels in known)
        ]

    def compute(
        self,
        identity: Identity,
        identities: Iterable[Identity],
        cidr_identities: Mapping[str, int],
        mode: str = "default",
    ) -> EndpointPolicy:
        return self.compute_for(identity, Peers(identities, cidr_identities), mode)

    def compute_for(
        self,
        identity: Identity,
        peers: Peers,
        mode: str = "default",
    ) -> EndpointPolicy:
        """compute() with the peers built once for many endpoints (they cache selections)."""
        selected = self._selecting(identity.labels)
        return resolve(identity, selected, peers, mode).policy()

    def compute_shared(
        self, identity: Identity, peers: Peers, mode: str, shared: dict
    ) -> EndpointPolicy:
        """compute_for() of many identities against the same peers (and rules): those that
        the same rules select get the same keys, unless ingress is not enforced (then
        network isolation admits the identity's own network and itself), so they share
        one computation, kept in `shared` (empty at first, one per set of peers)."""
        selected = self._selecting(identity.labels)
        ingress = mode == "always" or any(r.ingress is not None for _, r in selected)
        if mode == "never" or not ingress:
            return resolve(identity, selected, peers, mode).policy()
        key = tuple(id(rule) for _, rule in selected)
        if key not in shared:
            shared[key] = resolve(identity, selected, peers, mode).policy()
        return shared[key]

    def origins_for(
        self, identity: Identity, peers: Peers, mode: str = "default"
    ) -> Mapping[PolicyKey, tuple[str, ...]]:
        """Every policy key of identity's endpoints, with the names of the rules that made
        it (before compaction, so every key the datapath holds is there)."""
        return resolve(identity, self._selecting(identity.labels), peers, mode).origins

    def trace(
        self,
        src_labels: Mapping[str, str],
        dst_labels: Mapping[str, str],
        dport: int,
        protocol: int,
        identities: Iterable[Identity] = (),
        mode: str = "default",
    ) -> Verdict:
        """Labels are read as selector keys are: "app", "any:app", "container:app" are the
        Docker label app, and a lone "reserved:<name>" names that reserved identity. Labels
        not among identities get a new endpoint identity (as if that container started)."""
        known = list(identities)
        src = _identity_for(src_labels, known)
        dst = _identity_for(dst_labels, known)
        flow = Flow(src, dst, dport, protocol)
        return trace_flow(flow, Peers(known, {}), self._selecting, mode)

    def _replace(self, rules: list[Rule]) -> None:
        self._rules = rules
        self._index = None

    def _selecting(self, labels: Mapping[str, str]) -> list[tuple[str, Rule]]:
        by_pair, unindexed = self._rule_index()
        candidates = set(unindexed)
        for pair in labels.items():
            candidates.update(by_pair.get(pair, ()))
        return [
            (self._rules[i].display(i), self._rules[i])
            for i in sorted(candidates)
            if self._rules[i].endpoint_selector.matches(labels)
        ]

    def _rule_index(self):
        """Rules by the rarest label pair their endpointSelector requires (so a pair that
        thousands of rules share, like app=web beside a per-rule one, does not make every
        one of them a candidate); the rest apart."""
        if self._index is None:
            frequency = Counter(pair for rule in self._rules for pair in _pairs(rule))
            by_pair, unindexed = {}, []
            for i, rule in enumerate(self._rules):
                pairs = _pairs(rule)
                if pairs:
                    by_pair.setdefault(min(pairs, key=frequency.__getitem__), []).append(i)
                else:
                    unindexed.append(i)
            self._index = (by_pair, unindexed)
        return self._index


def _title(rule: Rule, index: int) -> str:
    return f"rule {index} ({rule.display(index)})" if rule.labels else f"rule {index}"


def _named(rule: Rule, name: str) -> bool:
    if ("name", name) in rule.labels:
        return True
    key, sep, value = name.partition("=")
    return bool(sep) and (key, value) in rule.labels


def _pairs(rule: Rule) -> tuple[tuple[str, str], ...]:
    """The Docker label pairs a rule's endpointSelector requires (it names no other)."""
    return tuple((key, value) for (_, key), value in rule.endpoint_selector.label_pairs)


def _identity_for(written: Mapping[str, str], known: list[Identity]) -> Identity:
    labels = {}
    for key, value in written.items():
        source, name = split_key(key)
        if source == RESERVED_SOURCE and name in _RESERVED_BY_NAME and len(written) == 1:
            return Identity(_RESERVED_BY_NAME[name], {})
        if source:
            names = ", ".join(f"reserved:{n}" for n in _RESERVED_BY_NAME)
            raise PolicyError(
                f"trace: {key!r} is neither a Docker label (app, any:app, container:app) nor"
                f" one of {names} given alone"
            )
        labels[name] = value
    for identity in known:
        if dict(identity.labels) == labels:
            return identity
    fresh = Identity(max([FIRST_ENDPOINT_IDENTITY - 1, *(i.id for i in known)]) + 1, labels)
    known.append(fresh)
    return fresh

"""Differential test: the policy engine's verdict against real packets through the datapath.

For random rule sets (a fixed seed; YAML or JSON text through parse_rules) every endpoint
gets compute()'s policy installed with set_endpoint_policy, then random flows between four
endpoints in network namespaces (TCP connect + echo, UDP datagram + reply, ping/ping6)
must pass exactly when trace() says "allowed", and when compute()'s keys allow them.
Before each case's probes the endpoints' conntrack entries are deleted (and every ping has
an echo id of its own), so no flow of an earlier case can admit one of this case. Packets
only go between the namespaces made here, to the endpoints' own addresses.

Fixed cases (FIXED) do the same on the same four endpoints for hand-written rules, one for
each empty-list and label-source reading of docs/policy.md, with every pair of endpoints
probed and each flow's verdict written in the case: it must be trace's and the packets'.

One case is one test (test_trace_matches_datapath[case-17],
test_fixed_case_matches_datapath[any-source]); a failure prints the rules,
the keys of both endpoints (computed and installed, with their packet counters), the
flow, trace's explanation and the drop counters that moved, so it can be replayed alone.
"""

import dataclasses
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from datapath import INIT_ID
from driver.control.policy import PolicyRepository, Verdict, parse_rules

from . import differential_helpers as dh
from . import traffic
from .conftest import Container, _serial, make_spec, run

SEED = 20240611
CASES = 60
PROBE_TIMEOUT = 0.5  # seconds for a denied flow to count as denied
RETRY_TIMEOUT = 2.0  # an expected-allowed flow that failed is tried once more, slower


@dataclass
class Fleet:
    containers: list[Container]
    identities: list  # driver.control.policy.Identity of each container, same order


@pytest.fixture(scope="module")
def fleet(datapath):
    """Four endpoints with dh.ENDPOINT_LABELS and identities FIRST_IDENTITY.., each serving
    dh.SERVICES; built once for all cases (the conftest building blocks, module-scoped)."""
    for tool in ("ip", "ping"):
        assert shutil.which(tool), f"{tool} is needed and not on PATH"
    identities = dh.identities()
    made: list[Container] = []
    try:
        for identity in identities:
            spec = make_spec(next(_serial), INIT_ID)
            ifindex = datapath.create_endpoint(spec)
            container = Container(f"dpt-{os.getpid()}-{spec.endpoint_id}", spec, ifindex)
            made.append(container)
            container.setup()
            datapath.set_endpoint_identity(spec, identity.id)
            container.spec = dataclasses.replace(spec, identity=identity.id)
            for proto, port in dh.SERVICES:
                if proto != "icmp":
                    container.serve(port, proto)
        yield Fleet(made, identities)
    finally:
        for container in made:
            for server in container.servers:
                traffic.stop(server)
            datapath.delete_endpoint(container.spec)
            run("ip", "netns", "del", container.netns, check=False)


def test_cases_cover_both_verdicts_every_protocol_and_mode():
    """The generator is worth its run time: both verdicts often, every kind of flow."""
    ids = dh.identities()
    verdicts, kinds, modes = [], set(), set()
    for number in range(CASES):
        case = dh.make_case(SEED, number)
        repo = PolicyRepository(parse_rules(case.text, case.source))
        modes.add(case.mode)
        for flow in case.flows:
            src, dst = ids[flow.src], ids[flow.dst]
            v = repo.trace(src.labels, dst.labels, flow.port, flow.protocol, ids, case.mode)
            verdicts.append(v.allowed)
            kinds.add((flow.proto, flow.version, v.allowed))
    allowed = sum(verdicts)
    assert 0.25 < allowed / len(verdicts) < 0.75, (allowed, len(verdicts))
    assert len(kinds) == 3 * 2 * 2, sorted(kinds)
    assert modes == set(dh.MODES)


@pytest.mark.parametrize("number", range(CASES), ids=lambda n: f"case-{n}")
def test_trace_matches_datapath(datapath, fleet, number):
    case = dh.make_case(SEED, number)
    repo = PolicyRepository(parse_rules(case.text, case.source))
    about = About(
        f"case {case.number} (seed {SEED}, {case.source})",
        case.text,
        f"test_trace_matches_datapath[case-{case.number}]",
    )
    _differential(datapath, fleet, repo, fleet.identities, case.mode, case.flows, None, about)


# Hand-written cases for the readings issue 13 changed (docs/policy.md, "What the rules
# mean"): each flow's written verdict, trace's and the datapath's must be the same. Endpoints
# ep0 app=a,tier=x; ep1 app=b,tier=x; ep2 app=b,tier=y; ep3 app=c (unless labels says else).
_TCP80 = "toPorts: [{ports: [{port: '80', protocol: TCP}]}]"
_WORLD_LABELLED = (
    dh.ENDPOINT_LABELS[0],
    dh.ENDPOINT_LABELS[1],
    {**dh.ENDPOINT_LABELS[2], "reserved.world": ""},
    {**dh.ENDPOINT_LABELS[3], "reserved:world": ""},
)
FIXED = (
    # An empty peer list selects no peer: before, it allowed every peer on its toPorts.
    dh.FixedCase(
        "fromEndpoints-empty",
        f"""
- endpointSelector: {{matchLabels: {{app: a}}}}
  ingress:
  - fromEndpoints: []
    {_TCP80}
  - fromEndpoints: [{{matchLabels: {{app: c}}}}]
    toPorts: [{{ports: [{{port: '81', protocol: TCP}}]}}]
""",
        blocked=("*>0 tcp/80", "1>0 tcp/81", "2>0 tcp/81"),
        kinds=("tcp/80", "tcp/81"),
    ),
    dh.FixedCase(
        "fromCIDR-empty",
        f"""
- endpointSelector: {{matchLabels: {{app: a}}}}
  ingress: [{{fromCIDR: [], {_TCP80}}}]
""",
        blocked=("*>0",),
    ),
    dh.FixedCase(
        "fromCIDRSet-empty",
        """
- endpointSelector: {matchLabels: {tier: y}}
  ingress: [{fromCIDRSet: [], toPorts: [{ports: [{port: '53', protocol: ANY}]}]}]
""",
        blocked=("*>2",),
        kinds=("tcp/53", "udp/53"),
    ),
    dh.FixedCase(
        "fromEntities-empty",
        """
- endpointSelector: {matchLabels: {app: c}}
  ingress: [{fromEntities: [], toPorts: [{ports: [{protocol: ICMP}]}]}]
""",
        blocked=("*>3",),
        kinds=("icmp", "tcp/80"),
    ),
    # One empty field empties the whole section, whatever the other peer fields select.
    dh.FixedCase(
        "fromEndpoints-beside-empty-fromCIDR",
        """
- endpointSelector: {matchLabels: {app: a}}
  ingress: [{fromEndpoints: [{matchLabels: {app: c}}], fromCIDR: []}]
""",
        blocked=("*>0",),
    ),
    dh.FixedCase(
        "toEndpoints-empty",
        f"""
- endpointSelector: {{matchLabels: {{app: a}}}}
  egress: [{{toEndpoints: [], {_TCP80}}}]
""",
        blocked=("0>*",),
        kinds=("tcp/80", "udp/53"),
    ),
    # Label sources any, container, unspec name the Docker label: before, such a selector
    # selected nobody and left the container unrestricted.
    dh.FixedCase(
        "any-source",
        """
- endpointSelector: {matchLabels: {'any:app': a}}
  ingress: [{fromEndpoints: [{matchLabels: {'any:app': c}}]}]
""",
        blocked=("1>0", "2>0"),
    ),
    dh.FixedCase(
        "container-source",
        """
- endpointSelector: {matchLabels: {'container:tier': y}}
  ingress: [{fromEndpoints: [{matchLabels: {'container:app': a}}]}]
""",
        blocked=("1>2", "3>2"),
    ),
    dh.FixedCase(
        "unspec-source",
        """
- endpointSelector:
    matchExpressions: [{key: 'unspec:app', operator: In, values: [c]}]
  egress: [{toEndpoints: [{matchLabels: {'unspec:tier': x}}]}]
""",
        blocked=("3>2",),
    ),
    # ep2 and ep3 carry Docker labels named like the world's: they never get its access.
    dh.FixedCase(
        "reserved-world-selector-vs-docker-label",
        """
- endpointSelector: {matchLabels: {app: a}}
  ingress: [{fromEndpoints: [{matchLabels: {'reserved:world': ''}}]}]
""",
        blocked=("*>0",),
        labels=_WORLD_LABELLED,
    ),
    dh.FixedCase(
        "world-entity-vs-docker-label",
        """
- endpointSelector: {matchLabels: {app: a}}
  ingress: [{fromEntities: [world]}]
""",
        blocked=("*>0",),
        labels=_WORLD_LABELLED,
    ),
    # ... while a selector for the Docker label (any:KEY when the key has a ':') finds them.
    dh.FixedCase(
        "docker-label-named-reserved-world",
        """
- endpointSelector: {matchLabels: {app: a}}
  ingress:
  - fromEndpoints: [{matchLabels: {'any:reserved:world': ''}}, {matchLabels: {reserved.world: ''}}]
""",
        blocked=("1>0",),
        labels=_WORLD_LABELLED,
    ),
    dh.FixedCase(
        "default-deny",
        """
- endpointSelector: {matchLabels: {app: b}}
  ingress: [{}]
- endpointSelector: {matchLabels: {app: c}}
  egress: [{}]
""",
        blocked=("*>1", "*>2", "3>*"),
        kinds=("tcp/80", "udp/53", "icmp"),
    ),
)


def test_fixed_cases_name_real_flows_and_both_verdicts():
    """A blocked pattern that matches no flow is a typo, a kind no endpoint serves would
    never pass, and a case all of one verdict proves less."""
    for case in FIXED:
        flows = case.flows()
        assert {(f.proto, f.port) for f in flows} <= set(dh.SERVICES), case.name
        for pattern in case.blocked:
            assert any(dh.blocks(pattern, f) for f in flows), (case.name, pattern)
        assert {case.allows(f) for f in flows} == {True, False}, case.name
    assert len({case.name for case in FIXED}) == len(FIXED)


@pytest.mark.parametrize("case", FIXED, ids=lambda c: c.name)
def test_fixed_case_matches_datapath(datapath, fleet, case):
    repo = PolicyRepository(parse_rules(case.text, f"{case.name}.yaml"))
    flows = case.flows()
    written = [case.allows(flow) for flow in flows]
    about = About(
        f"fixed case {case.name}", case.text, f"test_fixed_case_matches_datapath[{case.name}]"
    )
    ids = dh.identities(case.labels)
    _differential(datapath, fleet, repo, ids, "default", flows, written, about)


@dataclass(frozen=True)
class About:
    """What a failure message says of the case: a title, its rules, its test node."""

    title: str
    text: str
    node: str


@dataclass(frozen=True)
class Outcome:
    flow: dh.Flow
    written: bool | None  # the verdict written in a fixed case; None for a random one
    verdict: Verdict  # trace's
    by_keys: bool  # compute()'s keys probed as the BPF program probes them
    passed: bool  # the real packets

    def agrees(self) -> bool:
        claims = {self.verdict.allowed, self.by_keys, self.passed}
        return claims == {self.passed} and self.written in (None, self.passed)


def _differential(datapath, fleet, repo, ids, mode, flows, written, about) -> None:
    """Installs repo's policy on the fleet (given identities ids), sends flows, and fails
    unless trace, compute's keys, the packets and the written verdicts (if any) agree."""
    policies = []
    for container, identity in zip(fleet.containers, ids, strict=True):
        computed = repo.compute(identity, ids, {}, mode)
        keys = {dh.to_datapath_key(k) for k in computed.keys}
        datapath.set_endpoint_policy(
            container.spec, computed.ingress_enforced, computed.egress_enforced, keys
        )
        assert datapath.policy_entries(container.spec).keys() == keys
        policies.append(computed)
    # No conntrack entry of an earlier case may admit a flow of this one.
    for container in fleet.containers:
        datapath.maps.delete_ct({container.spec.endpoint_id}, container.spec.addresses())

    written = written or [None] * len(flows)
    verdicts, by_keys = [], []
    for flow in flows:
        src, dst = dh.trace_labels(ids[flow.src].labels), dh.trace_labels(ids[flow.dst].labels)
        verdicts.append(repo.trace(src, dst, flow.port, flow.protocol, identities=ids, mode=mode))
        by_keys.append(dh.keys_allow(policies[flow.src], policies[flow.dst], ids, flow))

    def send(flow: dh.Flow, timeout: float) -> bool:
        dst = fleet.containers[flow.dst]
        return dh.probe(fleet.containers[flow.src], dst.addr(flow.version), flow, timeout)

    drops_before = datapath.drop_counts()
    with ThreadPoolExecutor(len(flows)) as pool:
        passed = list(pool.map(lambda f: send(f, PROBE_TIMEOUT), flows))
        # A slow first packet must not pass for a deny: retry expected-allowed failures.
        retry = [
            i for i in range(len(flows)) if (verdicts[i].allowed or written[i]) and not passed[i]
        ]
        again = pool.map(lambda i: send(flows[i], RETRY_TIMEOUT), retry)
        for i, ok in zip(retry, again, strict=True):
            passed[i] = ok
    drops = _moved(drops_before, datapath.drop_counts())

    outcomes = map(Outcome, flows, written, verdicts, by_keys, passed)
    problems = [
        _report(about, mode, fleet, ids, policies, datapath, outcome, drops)
        for outcome in outcomes
        if not outcome.agrees()
    ]
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def _moved(before: dict, after: dict) -> dict:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def _report(about, mode, fleet, ids, policies, datapath, outcome: Outcome, drops) -> str:
    def say(allowed: bool) -> str:
        return "allowed" if allowed else "denied"

    flow = outcome.flow
    claims = [] if outcome.written is None else [f"written {say(outcome.written)}"]
    claims += [f"trace {say(outcome.verdict.allowed)}", f"compute keys {say(outcome.by_keys)}"]
    claims.append(f"datapath {'passed' if outcome.passed else 'blocked'}")
    lines = [
        f"{about.title}, mode {mode}:",
        f"flow {flow.describe()}: {', '.join(claims)}",
        "trace:",
        *(f"  {line}" for line in outcome.verdict.reason.splitlines()),
    ]
    for role, index in (("src", flow.src), ("dst", flow.dst)):
        container, identity = fleet.containers[index], ids[index]
        computed = policies[index]
        addr = container.addr(flow.version)
        labels = ",".join(f"{k}={v}" for k, v in sorted(identity.labels.items()))
        lines.append(f"{role} ep{index} id={identity.id} {addr} ({labels}):")
        lines.append(
            f"  ingress enforced {computed.ingress_enforced},"
            f" egress enforced {computed.egress_enforced}, rules {', '.join(computed.rules)}"
        )
        lines += [f"  computed {k}" for k in dh.describe_keys(computed.keys)]
        installed = datapath.policy_entries(container.spec)
        flags = datapath.endpoint_map_entries()[container.ifindex].flags
        lines.append(f"  installed (flags {flags:#x}):")
        counters = {dh.describe_keys([k])[0]: c for k, c in installed.items()}
        lines += [f"    {k} packets={c[0]}" for k, c in sorted(counters.items())]
    lines.append(f"drop counters moved during the case's probes: {drops}")
    lines.append("rules:")
    lines += [f"  {line}" for line in about.text.strip().splitlines()]
    lines.append(f"rerun: pytest 'tests/datapath/test_differential.py::{about.node}'")
    return "\n".join(lines)

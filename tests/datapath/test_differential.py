"""Differential test: the policy engine's verdict against real packets through the datapath.

For random rule sets (a fixed seed; YAML or JSON text through parse_rules) every endpoint
gets compute()'s policy installed with set_endpoint_policy, then random flows between four
endpoints in network namespaces (TCP connect + echo, UDP datagram + reply, ping/ping6)
must pass exactly when trace() says "allowed", and when compute()'s keys allow them.
Before each case's probes the endpoints' conntrack entries are deleted (and every ping has
an echo id of its own), so no flow of an earlier case can admit one of this case. Packets
only go between the namespaces made here, to the endpoints' own addresses.

One case is one test (test_trace_matches_datapath[case-17]); a failure prints the rules,
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
from driver.control.policy import PolicyRepository, parse_rules

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
    ids = fleet.identities

    policies = []
    for container, identity in zip(fleet.containers, ids, strict=True):
        computed = repo.compute(identity, ids, {}, case.mode)
        keys = {dh.to_datapath_key(k) for k in computed.keys}
        datapath.set_endpoint_policy(
            container.spec, computed.ingress_enforced, computed.egress_enforced, keys
        )
        assert datapath.policy_entries(container.spec).keys() == keys
        policies.append(computed)
    # No conntrack entry of an earlier case may admit a flow of this one.
    for container in fleet.containers:
        datapath.maps.delete_ct({container.spec.endpoint_id}, container.spec.addresses())

    expected = []
    for flow in case.flows:
        src, dst = ids[flow.src], ids[flow.dst]
        verdict = repo.trace(
            src.labels, dst.labels, flow.port, flow.protocol, identities=ids, mode=case.mode
        )
        by_keys = dh.keys_allow(policies[flow.src], policies[flow.dst], ids, flow)
        expected.append((verdict, by_keys))

    def send(flow: dh.Flow, timeout: float) -> bool:
        dst = fleet.containers[flow.dst]
        return dh.probe(fleet.containers[flow.src], dst.addr(flow.version), flow, timeout)

    drops_before = datapath.drop_counts()
    with ThreadPoolExecutor(len(case.flows)) as pool:
        passed = list(pool.map(lambda f: send(f, PROBE_TIMEOUT), case.flows))
        # A slow first packet must not pass for a deny: retry expected-allowed failures.
        retry = [i for i, f in enumerate(case.flows) if expected[i][0].allowed and not passed[i]]
        again = pool.map(lambda i: send(case.flows[i], RETRY_TIMEOUT), retry)
        for i, ok in zip(retry, again, strict=True):
            passed[i] = ok
    drops = _moved(drops_before, datapath.drop_counts())

    problems = [
        _report(case, fleet, policies, datapath, flow, verdict, by_keys, passed[i], drops)
        for i, (flow, (verdict, by_keys)) in enumerate(zip(case.flows, expected, strict=True))
        if not verdict.allowed == by_keys == passed[i]
    ]
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


def _moved(before: dict, after: dict) -> dict:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def _report(case, fleet, policies, datapath, flow, verdict, by_keys, passed, drops) -> str:
    def say(allowed: bool) -> str:
        return "allowed" if allowed else "denied"

    lines = [
        f"case {case.number} (seed {SEED}, mode {case.mode}, {case.source}):",
        f"flow {flow.describe()}: trace {say(verdict.allowed)}, compute keys {say(by_keys)},"
        f" datapath {'passed' if passed else 'blocked'}",
        "trace:",
        *(f"  {line}" for line in verdict.reason.splitlines()),
    ]
    for role, index in (("src", flow.src), ("dst", flow.dst)):
        container, identity = fleet.containers[index], fleet.identities[index]
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
    lines += [f"  {line}" for line in case.text.splitlines()]
    lines.append(f"rerun: pytest 'tests/datapath/test_differential.py::{_node(case)}'")
    return "\n".join(lines)


def _node(case) -> str:
    return f"test_trace_matches_datapath[case-{case.number}]"

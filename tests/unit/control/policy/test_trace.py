"""trace: readable explanations, and a verdict equal to what the datapath does with the
keys compute() emits (checked on random rule sets and flows)."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from driver.control.policy import (
    EGRESS,
    INGRESS,
    Identity,
    PolicyError,
    PolicyRepository,
    parse_rules,
)

from .helpers import datapath_allows, endpoint, repository

CLIENT = {"app": "client", "io.pycilium.network": "net1"}
WEB = {"app": "web", "io.pycilium.network": "net1"}
OTHER = {"app": "other", "io.pycilium.network": "net1"}
IDENTITIES = [Identity(256, WEB), Identity(257, CLIENT), Identity(258, OTHER)]
RULES = """
- endpointSelector: {matchLabels: {app: web}}
  labels: [name=web-policy]
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
- endpointSelector: {matchLabels: {app: client}}
  labels: [name=client-out]
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
"""


@pytest.mark.parametrize(
    ("src", "dst", "dport", "proto", "allowed", "lines"),
    [
        (
            CLIENT,
            WEB,
            80,
            6,
            True,
            [
                "egress of src (app=client,io.pycilium.network=net1): rule client-out allows"
                " app=web,io.pycilium.network=net1 on any protocol and port",
                "ingress of dst (app=web,io.pycilium.network=net1): rule web-policy allows"
                " app=client,io.pycilium.network=net1 on TCP/80",
                "verdict: allowed",
            ],
        ),
        (
            CLIENT,
            WEB,
            81,
            6,
            False,
            [
                "egress of src (app=client,io.pycilium.network=net1): rule client-out allows"
                " app=web,io.pycilium.network=net1 on any protocol and port",
                "ingress of dst (app=web,io.pycilium.network=net1): no rule allows"
                " app=client,io.pycilium.network=net1 on TCP/81 (selected by: web-policy)",
                "verdict: denied",
            ],
        ),
        (
            CLIENT,
            OTHER,
            53,
            17,
            False,
            [
                "egress of src (app=client,io.pycilium.network=net1): no rule allows"
                " app=other,io.pycilium.network=net1 on UDP/53 (selected by: client-out)",
                "ingress of dst (app=other,io.pycilium.network=net1): network isolation"
                " (same network, host, world, CIDRs) allows app=client,io.pycilium.network=net1"
                " on any protocol and port",
                "verdict: denied",
            ],
        ),
        (
            {"reserved:host": ""},
            WEB,
            22,
            6,
            True,
            [
                "egress of src (host): not an endpoint, no policy here",
                "ingress of dst (app=web,io.pycilium.network=net1): host access (health checks)"
                " allows host on any protocol and port",
                "verdict: allowed",
            ],
        ),
        (
            OTHER,
            {"app": "new", "io.pycilium.network": "net2"},
            0,
            1,
            False,
            [
                "egress of src (app=other,io.pycilium.network=net1): not enforced"
                " (no rule selecting it has an egress section)",
                "ingress of dst (app=new,io.pycilium.network=net2): no rule allows"
                " app=other,io.pycilium.network=net1 on ICMP",
                "verdict: denied",
            ],
        ),
    ],
)
def test_trace_explains(src, dst, dport, proto, allowed, lines):
    verdict = repository(RULES).trace(src, dst, dport, proto, IDENTITIES)
    assert verdict.reason.splitlines() == lines
    assert verdict.allowed is allowed


def test_trace_names_the_rules_that_allowed():
    verdict = repository(RULES).trace(CLIENT, WEB, 80, 6, IDENTITIES)
    assert verdict.rules == ("client-out", "web-policy")


def test_trace_in_never_mode_allows_everything():
    verdict = repository(RULES).trace(CLIENT, WEB, 81, 6, IDENTITIES, mode="never")
    assert verdict.allowed and "not enforced (mode never)" in verdict.reason


@pytest.mark.parametrize(
    ("dport", "proto", "message"),
    [
        (70000, 6, "trace: 70000 is not a port (0-65535)"),
        (80, 300, "trace: 300 is not an IP protocol number (0-255)"),
    ],
)
def test_trace_refuses_bad_flows(dport, proto, message):
    with pytest.raises(PolicyError) as caught:
        repository(RULES).trace(CLIENT, WEB, dport, proto, IDENTITIES)
    assert str(caught.value) == message


# Random rule sets over a small label space, so selectors often overlap; selector keys carry
# Cilium's label sources, and one container label is named like a reserved identity.
LABEL = st.fixed_dictionaries(
    {"app": st.sampled_from(["a", "b", "c"])},
    optional={"env": st.sampled_from(["prod", "dev"]), "reserved:world": st.just("")},
)
KEY = st.sampled_from(["app", "any:app", "container:app", "unspec:app"])
ENV_KEY = st.sampled_from(["env", "any:env", "container:env"])
EXPRESSION = st.builds(
    lambda key, op, values: {"key": key, "operator": op, **({"values": values} if values else {})},
    KEY | ENV_KEY,
    st.sampled_from(["In", "NotIn"]),
    st.lists(st.sampled_from(["a", "b", "prod"]), min_size=1, max_size=2),
) | st.builds(
    lambda key, op: {"key": key, "operator": op},
    KEY | ENV_KEY,
    st.sampled_from(["Exists", "DoesNotExist"]),
)
MATCH_LABELS = st.builds(
    lambda key, app, more: {key: app, **more},
    KEY,
    st.sampled_from(["a", "b", "c"]),
    st.sampled_from([{}, {"env": "prod"}, {"any:reserved:world": ""}]),
)
SELECTOR = st.fixed_dictionaries(
    {}, optional={"matchLabels": MATCH_LABELS, "matchExpressions": st.lists(EXPRESSION, max_size=2)}
)
RESERVED = st.sampled_from(
    [
        {"matchLabels": {"reserved:world": ""}},
        {"matchLabels": {"reserved:host": ""}},
        {"matchExpressions": [{"key": "reserved:host", "operator": "DoesNotExist"}]},
        {"matchLabels": {"reserved:world": "", "app": "a"}},
    ]
)
PORT = st.sampled_from(
    [
        {"port": "80", "protocol": "TCP"},
        {"port": "53", "protocol": "ANY"},
        {"protocol": "ICMP"},
        {"port": "8000", "endPort": 8002, "protocol": "UDP"},
        {"protocol": "TCP"},
        {"protocol": "ANY"},
    ]
)


def section(side: str):
    return st.fixed_dictionaries(
        {},
        optional={
            f"{side}Endpoints": st.lists(SELECTOR | RESERVED, max_size=2),
            f"{side}CIDR": st.just([]),
            f"{side}Requires": st.lists(SELECTOR, min_size=1, max_size=1),
            f"{side}Entities": st.lists(
                st.sampled_from(["host", "world", "all", "cluster"]), min_size=1, max_size=2
            ),
            "toPorts": st.lists(
                st.builds(lambda p: {"ports": p}, st.lists(PORT, min_size=1, max_size=2)),
                min_size=1,
                max_size=1,
            ),
        },
    ).filter(lambda s: not (s.get(f"{side}Endpoints") and s.get(f"{side}Entities")))


RULE = st.fixed_dictionaries(
    {"endpointSelector": SELECTOR},
    optional={
        "ingress": st.lists(section("from"), min_size=1, max_size=2),
        "egress": st.lists(section("to"), min_size=1, max_size=2),
    },
).filter(lambda rule: "ingress" in rule or "egress" in rule)
ENDPOINTS = st.lists(
    st.tuples(LABEL, st.sampled_from(["net1", "net2"])), min_size=1, max_size=5, unique_by=str
)
FLOW = st.tuples(st.sampled_from([0, 53, 80, 81, 8001]), st.sampled_from([6, 17, 1, 58]))


def written(identity: Identity) -> dict:
    """The labels a user gives trace: a Docker label key with ':' is written any:<key>."""
    if identity.id < 256:
        return dict(identity.labels)
    return {(f"any:{k}" if ":" in k else k): v for k, v in identity.labels.items()}


def expected_verdict(repo, identities, src, dst, dport, proto, mode) -> bool:
    """The datapath: egress keys of src (if an endpoint), then ingress keys of dst."""
    ok = True
    for local, remote, direction in ((src, dst, EGRESS), (dst, src, INGRESS)):
        if local.id < 256:
            continue
        policy = repo.compute(local, identities, {}, mode)
        enforced = policy.egress_enforced if direction == EGRESS else policy.ingress_enforced
        if enforced and not datapath_allows(policy.keys, remote.id, dport, proto, direction):
            ok = False
    return ok


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.lists(RULE, max_size=4),
    ENDPOINTS,
    st.data(),
    FLOW,
    st.sampled_from(["default", "always", "never"]),
)
def test_trace_verdict_is_what_the_datapath_does(rules, endpoints, data, flow, mode):
    repo = PolicyRepository(parse_rules(json.dumps(rules), "random.json"))
    identities = [endpoint(256 + i, net, **labels) for i, (labels, net) in enumerate(endpoints)]
    peers = [*identities, Identity(1, {"reserved:host": ""}), Identity(2, {"reserved:world": ""})]
    src = data.draw(st.sampled_from(peers))
    dst = data.draw(st.sampled_from(identities))
    dport, proto = flow
    verdict = repo.trace(written(src), written(dst), dport, proto, identities, mode)
    assert verdict.allowed == expected_verdict(repo, identities, src, dst, dport, proto, mode)
    assert verdict.reason.endswith("allowed" if verdict.allowed else "denied")

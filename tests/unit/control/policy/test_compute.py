"""compute: rules selecting one endpoint -> the compact keys its datapath looks up."""

import random

import pytest

from driver.control.policy import (
    EGRESS,
    INGRESS,
    EndpointPolicy,
    KeySet,
    PolicyError,
    PolicyKey,
    compact,
)

from .helpers import endpoint, keyset, repository

WEB = endpoint(256, app="web")
CLIENT = endpoint(257, app="client", env="prod")
OTHER = endpoint(258, app="other", env="dev")
ELSEWHERE = endpoint(259, network="net2", app="client", env="prod")
IDENTITIES = [WEB, CLIENT, OTHER, ELSEWHERE]
CIDRS = {"10.0.0.0/8": 1000, "10.1.0.0/16": 1001, "10.2.0.0/16": 1002, "192.168.0.0/16": 1003}
HOST = (1, 0, 0)


def ingress_of_web(section: str, mode: str = "default") -> frozenset[PolicyKey]:
    repo = repository(f"- endpointSelector: {{matchLabels: {{app: web}}}}\n  ingress: [{section}]")
    policy = repo.compute(WEB, IDENTITIES, CIDRS, mode)
    assert policy.ingress_enforced
    return policy.keys


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("{fromEndpoints: [{matchLabels: {app: client}}]}", [(257, 0, 0), (259, 0, 0)]),
        (
            "{fromEndpoints: [{matchLabels: {env: prod}}], toPorts: [{ports: [{port: '80',"
            " protocol: TCP}]}]}",
            [(257, 80, 6), (259, 80, 6)],
        ),
        (
            "{fromEndpoints: [{matchLabels: {env: dev}}], toPorts: [{ports: [{protocol: ICMP}]}]}",
            [(258, 0, 1), (258, 0, 58)],
        ),
        (
            "{fromEndpoints: [{matchLabels: {env: dev}}], toPorts: [{ports: [{port: '53',"
            " protocol: ANY}]}]}",
            [(258, 53, 6), (258, 53, 17)],
        ),
        (
            "{fromEndpoints: [{matchLabels: {env: dev}}], toPorts: [{ports: [{protocol: ANY}]}]}",
            [(258, 0, 0)],
        ),
        (
            "{fromEndpoints: [{matchLabels: {env: dev}}], toPorts: [{ports: [{protocol: TCP}]}]}",
            [(258, 0, 6)],
        ),
        (
            "{fromEndpoints: [{matchLabels: {env: dev}}], toPorts: [{ports: [{port: '8000',"
            " endPort: 8002, protocol: UDP}]}]}",
            [(258, 8000, 17), (258, 8001, 17), (258, 8002, 17)],
        ),
        ("{toPorts: [{ports: [{port: '80', protocol: TCP}]}]}", [(0, 80, 6)]),
        ("{fromEndpoints: [{}]}", [(256, 0, 0), (257, 0, 0), (258, 0, 0), (259, 0, 0)]),
        ("{fromEndpoints: []}", []),
        ("{fromEntities: [host]}", []),
        (
            "{fromEntities: [world]}",
            [(2, 0, 0), (1000, 0, 0), (1001, 0, 0), (1002, 0, 0), (1003, 0, 0)],
        ),
        (
            "{fromEntities: [cluster]}",
            [(256, 0, 0), (257, 0, 0), (258, 0, 0), (259, 0, 0), (3, 0, 0), (4, 0, 0)],
        ),
        ("{fromCIDR: [10.0.0.0/8]}", [(1000, 0, 0), (1001, 0, 0), (1002, 0, 0)]),
        (
            "{fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]}",
            [(1000, 0, 0), (1002, 0, 0)],
        ),
        ("{fromCIDR: ['fd00::/8']}", []),
        ("{}", []),
    ],
)
def test_ingress_keys(section, expected):
    assert ingress_of_web(section) == keyset(HOST, *expected)


def test_entity_all_is_identity_zero_and_absorbs_everything_else():
    assert ingress_of_web("{fromEntities: [all]}") == keyset((0, 0, 0))


def test_a_wider_key_absorbs_narrower_ones():
    keys = ingress_of_web(
        "{fromEndpoints: [{matchLabels: {app: other}}], toPorts: [{ports: [{port: '80',"
        " protocol: TCP}, {protocol: TCP}]}]}, {fromEntities: [all], toPorts: [{ports: [{port:"
        " '443', protocol: TCP}]}]}, {fromEndpoints: [{matchLabels: {app: other}}]}"
    )
    assert keys == keyset(HOST, (258, 0, 0), (0, 443, 6))


def test_from_requires_is_anded_into_every_peer_of_every_selecting_rule():
    repo = repository(
        """
- endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchExpressions: [{key: app, operator: In, values: [client, other]}]}]
  - fromCIDR: [192.168.0.0/16]
  - toPorts: [{ports: [{port: "80", protocol: TCP}]}]
- endpointSelector: {matchLabels: {app: web}}
  ingress: [{fromRequires: [{matchLabels: {env: prod}}]}]
"""
    )
    keys = repo.compute(WEB, IDENTITIES, CIDRS).keys
    assert keys == keyset(HOST, (257, 0, 0), (259, 0, 0), (1003, 0, 0))


def test_egress_keys_and_ingress_isolation_for_an_egress_only_rule():
    repo = repository(
        """
- endpointSelector: {matchLabels: {app: web}}
  egress:
  - toEndpoints: [{matchLabels: {app: other}}]
    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]
  - toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.2.0.0/16]}]
"""
    )
    policy = repo.compute(WEB, IDENTITIES, CIDRS)
    assert policy.egress_enforced and policy.ingress_enforced
    egress = {k for k in policy.keys if k.direction == EGRESS}
    assert egress == keyset((258, 5432, 6), (1000, 0, 0), (1001, 0, 0), direction=EGRESS)
    ingress = {k for k in policy.keys if k.direction == INGRESS}
    assert ingress == keyset(
        (256, 0, 0),
        (257, 0, 0),
        (258, 0, 0),
        (1, 0, 0),
        (2, 0, 0),
        *[(i, 0, 0) for i in CIDRS.values()],
    )


def test_network_isolation_without_rules():
    policy = repository("[]").compute(CLIENT, IDENTITIES, CIDRS)
    expected = keyset(
        (256, 0, 0), (257, 0, 0), (258, 0, 0), HOST, (2, 0, 0), *[(i, 0, 0) for i in CIDRS.values()]
    )
    assert policy == EndpointPolicy(True, False, expected, ())
    assert PolicyKey(259, 0, 0, INGRESS) not in policy.keys  # other network: denied


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("default", EndpointPolicy(True, False, keyset(HOST, (257, 80, 6)), ("web-policy",))),
        ("always", EndpointPolicy(True, True, keyset(HOST, (257, 80, 6)), ("web-policy",))),
        ("never", EndpointPolicy(False, False, frozenset(), ("web-policy",))),
    ],
)
def test_modes_for_a_selected_endpoint(mode, expected):
    repo = repository(
        """
- endpointSelector: {matchLabels: {app: web}}
  labels: [name=web-policy]
  ingress:
  - fromEndpoints: [{matchLabels: {app: client, io.pycilium.network: net1}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""
    )
    assert repo.compute(WEB, IDENTITIES, CIDRS, mode) == expected


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("always", EndpointPolicy(True, True, keyset(HOST), ())),
        ("never", EndpointPolicy(False, False, frozenset(), ())),
    ],
)
def test_modes_for_an_unselected_endpoint(mode, expected):
    assert repository("[]").compute(OTHER, IDENTITIES, CIDRS, mode) == expected


def test_an_empty_ingress_section_enforces_and_only_the_host_gets_in():
    keys = repository("endpointSelector: {}\ningress: [{}]").compute(WEB, IDENTITIES, CIDRS).keys
    assert keys == keyset(HOST)


def test_unknown_mode_is_refused():
    with pytest.raises(PolicyError, match="unknown enforcement mode 'strict'"):
        repository("[]").compute(WEB, IDENTITIES, CIDRS, "strict")


def test_selecting_rules_are_named_in_repository_order():
    repo = repository(
        """
- {endpointSelector: {}, labels: [name=b], egress: [{}]}
- {endpointSelector: {matchLabels: {app: web}}, labels: [team=x, tier=y], egress: [{}]}
- {endpointSelector: {matchLabels: {app: db}}, egress: [{}]}
- {endpointSelector: {matchExpressions: [{key: app, operator: Exists}]}, egress: [{}]}
"""
    )
    assert repo.compute(WEB, IDENTITIES, CIDRS).rules == ("b", "team=x,tier=y", "rule 3")


def random_keys(rng, count: int) -> set[PolicyKey]:
    shapes = [(0, 0), (0, 6), (0, 17), (80, 6), (443, 6), (53, 17)]
    return {
        PolicyKey(rng.choice([0, 1, 256, 257, 258]), *rng.choice(shapes), rng.choice([0, 1]))
        for _ in range(count)
    }


@pytest.mark.parametrize("seed", range(200))
def test_adding_to_a_key_set_equals_compacting_the_union_and_says_what_changed(seed):
    rng = random.Random(seed)
    old, more = random_keys(rng, rng.randint(0, 25)), random_keys(rng, rng.randint(0, 8))
    keys = KeySet(compact(old))
    added, removed = keys.add(more)
    assert keys.keys == compact(old | more)
    assert (added, removed) == (keys.keys - compact(old), compact(old) - keys.keys)


@pytest.mark.parametrize("seed", range(100))
def test_dropping_peers_from_a_key_set_equals_compacting_what_is_left(seed):
    rng = random.Random(seed)
    old = compact(random_keys(rng, rng.randint(0, 25)))
    gone = set(rng.sample([1, 256, 257, 258], rng.randint(0, 4)))
    keys = KeySet(old)
    removed = keys.drop_peers(gone)
    assert keys.keys == compact(k for k in old if k.identity not in gone)
    assert removed == old - keys.keys

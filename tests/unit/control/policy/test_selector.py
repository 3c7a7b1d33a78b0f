"""Label selectors: matchLabels, each matchExpressions operator, the empty selector;
the label index (Peers.select) must agree with Selector.matches."""

import pytest

from driver.control.policy import Identity, parse_rules
from driver.control.policy.compute import Peers

LABELS = [
    {"app": "web", "tier": "front"},
    {"app": "web", "tier": "back"},
    {"app": "db"},
    {},
]


def selector(text: str):
    return parse_rules(f"endpointSelector: {text}\negress: [{{}}]", "s.yaml")[0].endpoint_selector


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", [0, 1, 2, 3]),
        ("{matchLabels: {app: web}}", [0, 1]),
        ("{matchLabels: {app: web, tier: back}}", [1]),
        ("{matchLabels: {app: nope}}", []),
        ("{matchExpressions: [{key: tier, operator: In, values: [front, x]}]}", [0]),
        ("{matchExpressions: [{key: tier, operator: NotIn, values: [front]}]}", [1, 2, 3]),
        ("{matchExpressions: [{key: tier, operator: Exists}]}", [0, 1]),
        ("{matchExpressions: [{key: tier, operator: DoesNotExist}]}", [2, 3]),
        (
            "{matchLabels: {app: web}, matchExpressions: [{key: tier, operator: NotIn, "
            "values: [front]}]}",
            [1],
        ),
    ],
)
def test_selector_matches(text, expected):
    sel = selector(text)
    assert [i for i, labels in enumerate(LABELS) if sel.matches(labels)] == expected
    peers = Peers([Identity(256 + i, labels) for i, labels in enumerate(LABELS)], {})
    assert sorted(peers.select(sel)) == [256 + i for i in expected]


def test_selectors_never_match_reserved_identities():
    peers = Peers([Identity(1, {}), Identity(2, {}), Identity(300, {})], {})
    assert peers.select(selector("{}")) == {300}


def test_equal_selectors_are_equal_values_whatever_the_order():
    a = selector(
        "{matchLabels: {a: '1', b: '2'}, matchExpressions: "
        "[{key: c, operator: In, values: [y, x, x]}]}"
    )
    b = selector(
        "{matchLabels: {b: '2', a: '1'}, matchExpressions: "
        "[{key: c, operator: In, values: [x, y]}]}"
    )
    assert a == b and hash(a) == hash(b)

"""PolicyRepository: add/replace by labels, delete, to_json round trip, cidrs."""

import json

import pytest

from driver.control.policy import (
    PolicyError,
    PolicyNotFound,
    PolicyRepository,
    Selector,
    parse_rules,
)

from .helpers import endpoint

RULES = """
- endpointSelector: {matchLabels: {app: web}}
  labels: [name=web-policy]
  description: web
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}, {}]
    fromRequires: [{matchExpressions: [{key: env, operator: NotIn, values: [dev]}]}]
    toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "8000-8010", protocol: UDP},
                       {protocol: ICMP}, {protocol: ANY}]}]
  - fromCIDR: [10.0.0.0/8, "fd00::/64"]
  - fromCIDRSet: [{cidr: 172.16.0.0/12, except: [172.16.1.0/24]}]
  - fromEntities: [host, world]
  egress: [{}]
- endpointSelector: {matchExpressions: [{key: app, operator: Exists}]}
  labels: [team=a, tier=b]
  egress:
  - toEndpoints: []
    toEntities: [all, cluster]
  - toCIDRSet: [{cidr: 192.168.0.0/16}]
- endpointSelector: {}
  ingress: [{}]
"""


def rules(text: str = RULES):
    return parse_rules(text, "test.yaml")


def named(name: str, app: str):
    selector = f"{{matchLabels: {{app: {app}}}}}"
    return rules(f"- {{endpointSelector: {selector}, labels: [name={name}], egress: [{{}}]}}")


def test_to_json_round_trips():
    repo = PolicyRepository(rules())
    assert parse_rules(json.dumps(repo.to_json()), "get.json") == repo.rules() == rules()
    assert repo.to_json() == json.loads(json.dumps(repo.to_json()))
    assert json.loads(repo.json_text()) == repo.to_json()


def test_rules_are_hashable_values():
    assert len(set(rules() + rules())) == 3


def test_cidrs_lists_every_prefix_including_excepts():
    assert PolicyRepository(rules()).cidrs() == {
        "10.0.0.0/8",
        "fd00::/64",
        "172.16.0.0/12",
        "172.16.1.0/24",
        "192.168.0.0/16",
    }


def test_add_replaces_rules_with_the_same_label_set():
    repo = PolicyRepository()
    repo.add(named("a", "one") + named("b", "two"))
    repo.add(named("a", "three"))
    apps = [dict(r.endpoint_selector.match_labels)["app"] for r in repo.rules()]
    assert apps == ["two", "three"]


def test_replace_removes_every_rule_with_an_incoming_name_label():
    versioned = rules(
        "- {endpointSelector: {matchLabels: {app: one}}, labels: [name=a, v=1], egress: [{}]}\n"
        "- {endpointSelector: {matchLabels: {app: two}}, labels: [name=a, v=2], egress: [{}]}\n"
        "- {endpointSelector: {matchLabels: {app: other}}, labels: [name=b], egress: [{}]}"
    )
    kept, replaced = PolicyRepository(versioned), PolicyRepository(versioned)
    kept.add(named("a", "three"))
    replaced.add(named("a", "three"), replace=True)
    assert [r.name for r in kept.rules()] == ["a", "a", "b", "a"]
    apps = [dict(r.endpoint_selector.match_labels)["app"] for r in replaced.rules()]
    assert apps == ["other", "three"]


def test_unlabelled_rules_are_not_added_twice():
    repo = PolicyRepository()
    repo.add(rules("endpointSelector: {}\negress: [{}]"))
    repo.add(rules("endpointSelector: {}\negress: [{}]"))
    assert len(repo.rules()) == 1


@pytest.mark.parametrize(("name", "left"), [("a", ["b", "c"]), ("team=x", ["a", "b"])])
def test_delete_by_name_or_raw_label(name, left):
    repo = PolicyRepository(named("a", "one") + named("b", "two"))
    repo.add(rules("- {endpointSelector: {}, labels: [name=c, team=x], egress: [{}]}"))
    repo.delete(name)
    assert [r.name for r in repo.rules()] == left


def test_delete_all():
    repo = PolicyRepository(rules())
    repo.delete(all=True)
    assert repo.rules() == [] and repo.cidrs() == set()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"name": "nope"}, PolicyNotFound, "no rule has the name or label 'nope'"),
        ({}, PolicyError, "policy delete needs a rule name or all"),
    ],
)
def test_bad_delete_changes_nothing(kwargs, error, message):
    repo = PolicyRepository(rules())
    with pytest.raises(error) as caught:
        repo.delete(**kwargs)
    assert str(caught.value) == message
    assert repo.rules() == rules()


def test_selects_nothing_warns_per_rule():
    repo = PolicyRepository()
    extra = rules("- {endpointSelector: {matchLabels: {app: nope}}, egress: [{}]}")
    known = [endpoint(256, app="db"), endpoint(1, app="web")]
    assert repo.selects_nothing(rules() + extra, known) == [
        "rule 0 (web-policy): endpointSelector (app=web) selects no known endpoint",
        "rule 3: endpointSelector (app=nope) selects no known endpoint",
    ]


def test_compute_uses_rules_added_after_an_earlier_compute():
    repo = PolicyRepository()
    web = endpoint(256, app="web")
    assert repo.compute(web, [web], {}).rules == ()
    repo.add(named("a", "web"))
    assert repo.compute(web, [web], {}).rules == ("a",)
    repo.delete("a")
    assert repo.compute(web, [web], {}).rules == ()


def test_selection_looks_only_at_rules_indexed_by_a_pair_the_endpoint_has(monkeypatch):
    """Thousands of rules sharing app=web, each with a pair of its own: an endpoint is
    matched against the few rules indexed by its rarest pair, not all of them."""
    text = "".join(
        f"- endpointSelector: {{matchLabels: {{app: web, shard: '{i % 100}'}}}}\n"
        f"  labels: [name=r{i}]\n  egress: [{{}}]\n"
        for i in range(2000)
    )
    repo = PolicyRepository(rules(text))
    examined = []
    original = Selector.matches
    monkeypatch.setattr(
        Selector, "matches", lambda s, labels: examined.append(s) or original(s, labels)
    )
    selected = repo.compute(endpoint(256, app="web", shard="7"), [], {}).rules
    assert selected == tuple(f"r{i}" for i in range(7, 2000, 100))
    assert len(examined) == 20

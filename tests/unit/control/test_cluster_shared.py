"""The pure parts of policy and services as cluster state: a rule set read back from etcd
keeps the objects of the rules in force (so regeneration stays incremental), and a node's
services go to etcd's form and back unchanged. tests/cluster/ runs them against etcd."""

import json

from driver.control.cluster.policy import _reuse
from driver.control.cluster.services import SERVICES, ClusterServices
from driver.control.policy import PolicyRepository, parse_rules


def _rule(name: str, app: str) -> dict:
    return {
        "labels": [{"key": "name", "value": name}],
        "endpointSelector": {"matchLabels": {"app": app}},
        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}]}],
    }


def test_a_rule_set_read_back_keeps_the_rules_in_force():
    in_force = PolicyRepository(parse_rules(json.dumps([_rule("web", "web")]), "first"))
    text = json.dumps([_rule("web", "web"), _rule("db", "db")])
    read_back = PolicyRepository(_reuse(parse_rules(text, "etcd"), in_force))

    assert read_back.rules()[0] is in_force.rules()[0]
    assert [r.name for r in read_back.changed_since(in_force)] == ["db"]
    # Without it every rule counts as changed, and every endpoint is recomputed.
    fresh = PolicyRepository(parse_rules(text, "etcd"))
    assert [r.name for r in fresh.changed_since(in_force)] == ["web", "db", "web"]


def test_a_rule_given_twice_is_reused_once():
    twice = json.dumps([_rule("web", "web")] * 2)
    in_force = PolicyRepository(parse_rules(json.dumps([_rule("web", "web")]), "first"))
    first, second = _reuse(parse_rules(twice, "etcd"), in_force)
    assert first is in_force.rules()[0] and second is not first and second == first


def test_services_to_etcd_and_back(app, api, datapath):
    plane = app.extensions["pycilium"]
    shared = ClusterServices(None, plane.services, plane.store, plane.lock)
    api("PUT", "services", {"frontend": "[fd00:5::10]:80", "backends": ["[fdce::2]:80"], "id": 4})
    api("PUT", "services", {"frontend": "10.96.0.1:53", "protocol": "udp", "selector": {"a": "b"}})
    listed, programmed = api("GET", "services")[1], dict(datapath.lb)

    values = shared._copy()
    assert sorted(values) == [SERVICES + "10.96.0.1:53/udp", SERVICES + "[fd00:5::10]:80/tcp"]
    assert json.loads(values[SERVICES + "[fd00:5::10]:80/tcp"])["id"] == 4
    shared._mirror({})
    assert api("GET", "services")[1] == [] and datapath.lb == {}
    shared._mirror(values)
    assert api("GET", "services")[1] == listed and datapath.lb == programmed

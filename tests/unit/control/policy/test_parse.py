"""parse_rules: JSON and YAML, canonical values, and one precise error per bad input."""

import json

import pytest

from driver.control.policy import PolicyError, parse_rules
from driver.control.policy.model import CIDRSet, PeerRule, PortProtocol, Selector

WEB = """
- endpointSelector: {matchLabels: {app: web}}
  labels: [{key: name, value: web-policy}]
  description: web servers
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""


def ports_of(text: str):
    section = f"{{toPorts: [{{ports: [{text}]}}]}}"
    rule = parse_rules(f"endpointSelector: {{}}\ningress: [{section}]", "p")
    return rule[0].ingress[0].to_ports[0].ports


def test_yaml_and_json_give_equal_rules():
    from_yaml = parse_rules(WEB, "web.yaml")
    from_json = parse_rules(json.dumps([r.to_json() for r in from_yaml]), "web.json")
    assert from_yaml == from_json
    assert from_yaml[0].name == "web-policy"
    assert from_yaml[0].description == "web servers"


def test_a_single_rule_object_is_a_list_of_one():
    assert parse_rules(WEB.replace("- ", "  ", 1), "one.yaml") == parse_rules(WEB, "web.yaml")


def test_label_strings_equal_label_objects():
    text = WEB.replace("[{key: name, value: web-policy}]", '["name=web-policy"]')
    assert parse_rules(text, "s.yaml") == parse_rules(WEB, "web.yaml")


def test_empty_list_is_no_rules():
    assert parse_rules("[]", "empty.json") == []


def test_absent_and_default_deny_sections_differ():
    text = "[{endpointSelector: {}, egress: [{}]}, {endpointSelector: {}, ingress: [{}]}]"
    absent, deny = parse_rules(text, "s")
    assert absent.ingress is None and deny.ingress == (PeerRule(),)


def test_an_empty_peer_list_beside_a_given_one_is_not_a_combination():
    """Cilium counts only non-empty peer fields; the empty one still selects no peer."""
    (rule,) = parse_rules(rule_with("{fromEndpoints: [{}], fromCIDR: []}"), "s")
    assert rule.ingress[0].selects_no_peer()


def test_an_empty_endpoints_list_is_not_the_empty_selector():
    """fromEndpoints: [] selects no endpoint (Cilium 1.15+), [{}] every endpoint."""
    none, every = parse_rules(
        "[{endpointSelector: {}, ingress: [{fromEndpoints: []}]},"
        " {endpointSelector: {}, ingress: [{fromEndpoints: [{}]}]}]",
        "s",
    )
    assert none.ingress[0].endpoints == () and none.ingress[0].selects_no_peer()
    assert every.ingress[0].endpoints == (Selector(),)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{port: "80", protocol: TCP}', PortProtocol(80, 0, "TCP")),
        ("{port: 80, protocol: tcp}", PortProtocol(80, 0, "TCP")),
        ('{port: "8000", endPort: 8010, protocol: UDP}', PortProtocol(8000, 8010, "UDP")),
        ('{port: "8000-8010", protocol: UDP}', PortProtocol(8000, 8010, "UDP")),
        ('{port: "80-80"}', PortProtocol(80, 0, "ANY")),
        ('{port: "0", protocol: ICMP}', PortProtocol(0, 0, "ICMP")),
        ("{protocol: ANY}", PortProtocol(0, 0, "ANY")),
        ('{port: "1-1024"}', PortProtocol(1, 1024, "ANY")),
    ],
)
def test_port_forms(text, expected):
    assert ports_of(text) == (expected,)


def test_cidrs_are_canonical_and_bare_addresses_are_hosts():
    rule = parse_rules(
        "endpointSelector: {}\negress: [{toCIDR: ['fd00:0::/64', 192.0.2.1]},"
        " {toCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]}]",
        "c",
    )[0]
    assert rule.egress[0].cidr == ("fd00::/64", "192.0.2.1/32")
    assert rule.egress[1].cidr_set == (CIDRSet("10.0.0.0/8", ("10.1.0.0/16",)),)


def rule_with(section: str, direction: str = "ingress") -> str:
    return f"- endpointSelector: {{}}\n  labels: [name=web]\n  {direction}: [{section}]\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "a: [b",
            "not JSON or YAML: line 1 column 6: expected ',' or ']', but got '<stream end>'",
        ),
        (
            '[{"endpointSelector": {}',
            "not JSON: Expecting ',' delimiter: line 1 column 25 (char 24)",
        ),
        ("just text", "expected a rule, a list of rules or a CiliumNetworkPolicy, got a string"),
        ("", "expected a rule, a list of rules or a CiliumNetworkPolicy, got null"),
        ("[1]", "rule 0: expected an object, got an integer"),
        ("- ingress: []", "rule 0: missing field 'endpointSelector'"),
        (
            "- endpointSelector: {matchLabels: {app: web}}\n  labels: [name=web]",
            "rule 0 (web): a rule needs ingress or egress (Cilium refuses a rule without either,"
            " as it enforces nothing); write 'ingress: [{}]' for default deny at ingress",
        ),
        (
            rule_with("{fromEndpoints: [{}], fromCIDR: [10.0.0.0/8]}"),
            "rule 0 (web): ingress[0]: combining fromEndpoints and fromCIDR in one section is not"
            " supported (Cilium refuses it too); write one section for each",
        ),
        (
            rule_with("{fromEndpoints: [{}], fromCIDR: 10.0.0.0/8}"),
            "rule 0 (web): ingress[0].fromCIDR: expected a list, got a string",
        ),
        (
            rule_with("{toCIDRSet: [{cidr: 10.0.0.0/8}], toEntities: [world]}", "egress"),
            "rule 0 (web): egress[0]: combining toCIDRSet and toEntities in one section is not"
            " supported (Cilium refuses it too); write one section for each",
        ),
        (
            "- endpointSelector: {}\n  labels: [name=web]\n  ingres: []",
            "rule 0: unknown field 'ingres' (did you mean 'ingress'?)",
        ),
        (
            "- {endpointSelector: {}, egress: [{}]}\n- endpointSelector: {}\n  labels: [name=web]\n"
            "  ingres: []",
            "rule 1: unknown field 'ingres' (did you mean 'ingress'?)",
        ),
        (
            rule_with("{fromEndpoint: [{}]}"),
            "rule 0 (web): ingress[0]: unknown field 'fromEndpoint'"
            " (did you mean 'fromEndpoints'?)",
        ),
        (
            rule_with("{fromEndpoints: [{}]}", "egress"),
            "rule 0 (web): egress[0]: unknown field 'fromEndpoints' (did you mean 'toEndpoints'?)",
        ),
        (
            rule_with("{fromCIDR: [10.0.0.0/33]}"),
            "rule 0 (web): ingress[0].fromCIDR[0]: '10.0.0.0/33' is not a CIDR prefix",
        ),
        (
            rule_with("{fromCIDR: [not-a-cidr]}"),
            "rule 0 (web): ingress[0].fromCIDR[0]: 'not-a-cidr' is not a CIDR prefix",
        ),
        (
            rule_with("{toCIDR: [10.0.0.1/8]}", "egress"),
            "rule 0 (web): egress[0].toCIDR[0]: '10.0.0.1/8' has host bits set"
            " (did you mean 10.0.0.0/8?)",
        ),
        (
            rule_with("{fromCIDRSet: [{cidr: 10.0.0.0/8, except: [192.168.0.0/16]}]}"),
            "rule 0 (web): ingress[0].fromCIDRSet[0].except[0]: 192.168.0.0/16 is not inside"
            " 10.0.0.0/8",
        ),
        (
            rule_with("{toPorts: [{ports: [{port: '99999', protocol: TCP}]}]}"),
            "rule 0 (web): ingress[0].toPorts[0].ports[0].port: '99999' is not a port (1-65535)",
        ),
        (
            rule_with("{toPorts: [{ports: [{port: http}]}]}"),
            "rule 0 (web): ingress[0].toPorts[0].ports[0].port: named port 'http' is not supported"
            " (Docker has no port names)",
        ),
        (
            rule_with("{toPorts: [{ports: [{port: '1', endPort: 2000}]}]}"),
            "rule 0 (web): ingress[0].toPorts[0].ports[0]: range 1-2000 has 2000 ports"
            " (at most 1024)",
        ),
        (
            rule_with("{toPorts: [{ports: [{port: '1-65535'}]}]}"),
            "rule 0 (web): ingress[0].toPorts[0].ports[0]: range 1-65535 has 65535 ports"
            " (at most 1024)",
        ),
        (
            rule_with("{toPorts: [{ports: [{port: '90', endPort: 80}]}]}"),
            "rule 0 (web): ingress[0].toPorts[0].ports[0]: range 90-80 ends before it starts",
        ),
        (
            rule_with("{toPorts: [{ports: [{endPort: 80}]}]}"),
            "rule 0 (web): ingress[0].toPorts[0].ports[0].endPort: endPort needs a port",
        ),
        (
            rule_with("{toPorts: [{ports: [{port: '80', protocol: SCTP}]}]}"),
            "rule 0 (web): ingress[0].toPorts[0].ports[0].protocol: protocol SCTP is not supported"
            " (pycilium enforces TCP, UDP, ICMP and ANY)",
        ),
        (
            rule_with("{toPorts: [{ports: [{port: '8', protocol: ICMP}]}]}"),
            "rule 0 (web): ingress[0].toPorts[0].ports[0].port: ICMP takes no port"
            " (use 0 or leave it out)",
        ),
        (
            rule_with("{toPorts: [{ports: []}]}"),
            "rule 0 (web): ingress[0].toPorts[0].ports: needs at least one port entry",
        ),
        (
            rule_with("{fromEntities: [wrld]}"),
            "rule 0 (web): ingress[0].fromEntities[0]: 'wrld' is not an entity"
            " (all, cluster, host, world, init, unmanaged)",
        ),
        (
            rule_with("{fromEndpoints: [{matchExpressions: [{key: a, operator: Equals}]}]}"),
            "rule 0 (web): ingress[0].fromEndpoints[0].matchExpressions[0].operator: 'Equals'"
            " is not an operator (In, NotIn, Exists, DoesNotExist)",
        ),
        (
            rule_with("{fromEndpoints: [{matchExpressions: [{key: a, operator: In}]}]}"),
            "rule 0 (web): ingress[0].fromEndpoints[0].matchExpressions[0].values: operator In"
            " needs at least one value",
        ),
        (
            rule_with(
                "{fromEndpoints: [{matchExpressions: [{key: a, operator: Exists, values: [x]}]}]}"
            ),
            "rule 0 (web): ingress[0].fromEndpoints[0].matchExpressions[0].values: operator"
            " Exists takes no values",
        ),
        (
            rule_with("{fromEndpoints: [{matchLabels: {enabled: yes}}]}"),
            "rule 0 (web): ingress[0].fromEndpoints[0].matchLabels.enabled: expected a string,"
            " got a boolean (quote it in YAML)",
        ),
        (
            rule_with("{fromEndpoints: {matchLabels: {app: a}}}"),
            "rule 0 (web): ingress[0].fromEndpoints: expected a list, got an object",
        ),
        (
            "- endpointSelector: {}\n  ingress:",
            "rule 0: ingress: expected a list, got null",
        ),
        (
            "- endpointSelector: {matchLabel: {app: a}}",
            "rule 0: endpointSelector: unknown field 'matchLabel' (did you mean 'matchLabels'?)",
        ),
        (
            "- endpointSelector: {matchLabels: {1: x}}",
            "rule 0: endpointSelector.matchLabels: expected a string, got an integer"
            " (quote it in YAML)",
        ),
        (
            "- endpointSelector: {}\n  labels: [{value: x}]",
            "rule 0: labels[0]: missing field 'key'",
        ),
    ],
)
def test_bad_input_names_source_rule_and_field(text, message):
    with pytest.raises(PolicyError) as caught:
        parse_rules(text, "web.yaml")
    assert str(caught.value) == f"web.yaml: {message}"

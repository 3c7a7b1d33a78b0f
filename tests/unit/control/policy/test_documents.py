"""Documents as Cilium users have them: strict JSON and YAML (no duplicate keys, no numbers
that YAML readers disagree on), CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy
documents, several documents in one file, and Kubernetes-only content refused by name."""

import json
import textwrap

import pytest
import yaml

from driver.control.policy import PolicyError, parse_rules
from driver.control.policy.model import PortProtocol

RULE = """\
endpointSelector: {matchLabels: {app: web}}
ingress:
- fromEndpoints: [{matchLabels: {app: client}}]
  toPorts: [{ports: [{port: "443", protocol: TCP}]}]
"""

CNP = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web-policy
spec:
""" + textwrap.indent(RULE, "  ")

CCNP = """\
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: both}
specs:
- endpointSelector: {matchLabels: {app: web}}
  labels: [name=own-name]
  egress: [{toEntities: [world]}]
- endpointSelector: {matchLabels: {app: db}}
  ingress: [{fromEndpoints: [{matchLabels: {app: web}}]}]
"""


def refusal(text: str, source: str = "p.yaml") -> str:
    with pytest.raises(PolicyError) as caught:
        parse_rules(text, source)
    return str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "- endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: '80'}]}]\n"
            "    toPorts: []\n",
            "p.yaml: rule 0: ingress[0]: duplicate key 'toPorts'",
        ),
        (
            "endpointSelector: {matchLabels: {app: a, app: b}}",
            "p.yaml: rule 0: endpointSelector.matchLabels: duplicate key 'app'",
        ),
        ("endpointSelector: {}\nendpointSelector: {}", "p.yaml: rule 0: duplicate key"),
        (
            CNP + "  ingress: []\n",
            "p.yaml: CiliumNetworkPolicy web-policy: spec: duplicate key 'ingress'",
        ),
        (
            CCNP.replace("egress: [{toEntities: [world]}]", "egress: []\n  egress: []"),
            "p.yaml: CiliumClusterwideNetworkPolicy both: specs[0]: duplicate key 'egress'",
        ),
        (CNP.replace("metadata:", "kind: X\nmetadata:"), "p.yaml: duplicate key 'kind'"),
    ],
)
def test_a_duplicate_key_in_yaml_is_refused_with_its_path(text, message):
    assert refusal(text).startswith(message)


def test_a_duplicate_key_in_json_is_refused_with_its_path():
    text = (
        '[{"endpointSelector": {}, "ingress": [{}, {"toPorts": [{"ports": [{"port": "80"}]}],'
        ' "toPorts": []}]}]'
    )
    assert refusal(text, "p.json") == "p.json: rule 0: ingress[1]: duplicate key 'toPorts'"


NOT_DECIMAL = "is a YAML number not written in decimal (quote it, or write it in decimal)"


@pytest.mark.parametrize("number", ["0443", "0x1bb", "0o17", "1_000", "1:30", "00", "0999"])
def test_a_port_not_written_in_decimal_is_refused_not_converted(number):
    text = f"endpointSelector: {{}}\ningress: [{{toPorts: [{{ports: [{{port: {number}}}]}}]}}]"
    assert refusal(text) == (
        f"p.yaml: rule 0: ingress[0].toPorts[0].ports[0].port: {number} {NOT_DECIMAL}"
    )


@pytest.mark.parametrize("number", ["0443", "0x1bb", "1_000"])
def test_any_number_not_written_in_decimal_is_refused(number):
    port = f"{{port: '1', endPort: {number}}}"
    text = f"endpointSelector: {{}}\ningress: [{{toPorts: [{{ports: [{port}]}}]}}]"
    assert refusal(text).endswith(f"ports[0].endPort: {number} {NOT_DECIMAL}")
    label = f"endpointSelector: {{matchLabels: {{version: {number}}}}}"
    assert (
        refusal(label)
        == f"p.yaml: rule 0: endpointSelector.matchLabels.version: {number} {NOT_DECIMAL}"
    )


def test_the_same_digits_quoted_are_a_port_as_cilium_reads_them():
    text = "endpointSelector: {}\ningress: [{toPorts: [{ports: [{port: '0443'}, {port: 443}]}]}]"
    ports = parse_rules(text, "p.yaml")[0].ingress[0].to_ports[0].ports
    assert ports == (PortProtocol(443, 0, "ANY"), PortProtocol(443, 0, "ANY"))


@pytest.mark.parametrize(
    ("port", "message"),
    [
        ("{port: '80', endPort: '90'}", "ports[0].endPort: expected an integer, got a string"),
        ("{port: ' 80'}", "ports[0].port: ' 80' is not a port (1-65535)"),
        ("{port: 80.0}", "ports[0].port: expected a string, got a number"),
        ("{port: '80', protocol: ICMPv6}", "protocol ICMPv6 is not supported"),
    ],
)
def test_ports_and_protocols_are_typed_as_cilium_types_them(port, message):
    text = f"endpointSelector: {{}}\ningress: [{{toPorts: [{{ports: [{port}]}}]}}]"
    assert message in refusal(text)


def test_a_cilium_network_policy_is_its_rule_named_after_it():
    (rule,) = parse_rules(CNP, "web.yaml")
    assert rule == parse_rules(RULE + "labels: [name=web-policy]\n", "plain.yaml")[0]


def test_specs_keep_their_own_name_label_and_the_others_get_the_documents():
    first, second = parse_rules(CCNP, "both.yaml")
    assert first.labels == (("name", "own-name"),)
    assert second.labels == (("name", "both"),)


def test_spec_and_specs_together_give_all_their_rules():
    text = CCNP.replace("specs:", "spec: {endpointSelector: {}, egress: [{}]}\nspecs:")
    assert [r.name for r in parse_rules(text, "p.yaml")] == ["both", "own-name", "both"]


def test_several_documents_in_one_file_and_a_list_of_documents():
    stream = parse_rules(f"{CNP}---\n{CCNP}---\n", "all.yaml")
    assert [r.name for r in stream] == ["web-policy", "own-name", "both"]
    listed = json.dumps([yaml.safe_load(CNP), yaml.safe_load(CCNP)])
    assert parse_rules(listed, "all.json") == stream
    mixed = f"{CNP}---\n- {RULE.replace(chr(10), chr(10) + '  ')}"
    assert [r.name for r in parse_rules(mixed, "mixed.yaml")] == ["web-policy", None]


def test_a_plain_rule_list_still_reads_as_before():
    assert parse_rules(f"- {RULE.replace(chr(10), chr(10) + '  ')}", "p.yaml") == parse_rules(
        RULE, "p.yaml"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("cilium.io/v2", "cilium.io/v1"),
            "apiVersion: 'cilium.io/v1' is not supported (cilium.io/v2)",
        ),
        (
            ("kind: CiliumNetworkPolicy", "kind: NetworkPolicy"),
            "kind: NetworkPolicy is not supported"
            " (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy)",
        ),
        (("  name: web-policy\n", "  namespace: prod\n"), "metadata: namespace is not supported"),
        (("  name: web-policy\n", ""), "metadata: expected an object, got null"),
        (("  name: web-policy\n", "  uid: x\n"), "metadata: unknown field 'uid'"),
        (("spec:", "status: {}\nspec:"), "unknown field 'status'"),
        (("spec:", "spek:"), "unknown field 'spek' (did you mean 'spec'?)"),
        (("spec:\n", "specs: []\nx:\n"), "unknown field 'x'"),
    ],
)
def test_a_document_is_checked_before_its_rules(change, message):
    assert refusal(CNP.replace(*change)).startswith(f"p.yaml: {message}")


def test_a_document_needs_a_rule():
    text = CNP[: CNP.index("spec:")] + "specs: []\n"
    assert refusal(text) == "p.yaml: needs a rule in spec or specs"


UNSUPPORTED = [
    ("  endpointSelector:", "  nodeSelector: {}\n  endpointSelector:", "spec: nodeSelector"),
    ("  ingress:", "  ingressDeny: []\n  ingress:", "spec: ingressDeny"),
    ("  ingress:", "  egressDeny: []\n  ingress:", "spec: egressDeny"),
    ("  ingress:", "  enableDefaultDeny: {}\n  ingress:", "spec: enableDefaultDeny"),
    ("  - fromEndpoints", "  - fromGroups: []\n    fromEndpoints", "ingress[0]: fromGroups"),
    ("  - fromEndpoints", "  - fromNodes: []\n    fromEndpoints", "ingress[0]: fromNodes"),
    ("  - fromEndpoints", "  - icmps: []\n    fromEndpoints", "ingress[0]: icmps"),
    (
        "  - fromEndpoints",
        "  - authentication: {}\n    fromEndpoints",
        "ingress[0]: authentication",
    ),
    ("protocol: TCP}]", "protocol: TCP}], rules: {http: []}", "toPorts[0]: rules"),
    ("protocol: TCP}]", "protocol: TCP}], serverNames: [a]", "toPorts[0]: serverNames"),
    ("protocol: TCP}]", "protocol: TCP}], terminatingTLS: {}", "toPorts[0]: terminatingTLS"),
    ("protocol: TCP}]", "protocol: TCP}], listener: {}", "toPorts[0]: listener"),
    ("protocol: TCP", "protocol: SCTP", "protocol: protocol SCTP"),
]


@pytest.mark.parametrize(("old", "new", "where"), UNSUPPORTED, ids=[u[2] for u in UNSUPPORTED])
def test_kubernetes_only_content_is_refused_by_name(old, new, where):
    message = refusal(CNP.replace(old, new, 1))
    assert message.startswith("p.yaml: CiliumNetworkPolicy web-policy: spec")
    assert f"{where} is not supported (" in message and "did you mean" not in message


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ("{toServices: [{k8sService: {serviceName: a}}]}", "toServices"),
        ("{toFQDNs: [{matchName: example.com}]}", "toFQDNs"),
        ("{toGroups: [{aws: {}}]}", "toGroups"),
        ("{toNodes: []}", "toNodes"),
        ("{toCIDRSet: [{cidrGroupRef: g}]}", "cidrGroupRef"),
    ],
)
def test_egress_only_kubernetes_content_is_refused_by_name(section, field):
    message = refusal(f"endpointSelector: {{}}\negress: [{section}]")
    assert f": {field} is not supported (" in message and "did you mean" not in message

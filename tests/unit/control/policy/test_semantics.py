"""What the rules mean, as Cilium means them on Docker (issue 13): explicitly empty peer
lists, empty sections, label sources, reserved identities, entities. Each case here read
otherwise before, most of them allowing more than Cilium does."""

import pytest

from driver.control.policy import EGRESS, PolicyError, parse_rules

from .helpers import endpoint, keyset, repository

WEB = endpoint(256, app="web")
CLIENT = endpoint(257, app="client")
# A container that names a Docker label like a reserved identity, in both spellings.
IMPOSTOR = endpoint(258, app="impostor", **{"reserved:world": "", "reserved.world": ""})
IDENTITIES = [WEB, CLIENT, IMPOSTOR]
CIDRS = {"10.0.0.0/8": 1000}
HOST = (1, 0, 0)
PORT_80 = "toPorts: [{ports: [{port: '80', protocol: TCP}]}]"


def ingress_of_web(section: str, selector: str = "{matchLabels: {app: web}}"):
    repo = repository(f"- endpointSelector: {selector}\n  ingress: [{section}]")
    return repo.compute(WEB, IDENTITIES, CIDRS)


@pytest.mark.parametrize(
    "section",
    [
        f"{{fromEndpoints: [], {PORT_80}}}",
        f"{{fromCIDR: [], {PORT_80}}}",
        f"{{fromCIDRSet: [], {PORT_80}}}",
        f"{{fromEntities: [], {PORT_80}}}",
        "{fromEndpoints: []}",
        "{fromEntities: []}",
        # One empty list empties the section, whatever the other peer fields hold.
        "{fromEndpoints: [], fromEntities: [all]}",
        "{fromCIDR: [], fromCIDRSet: [{cidr: 10.0.0.0/8}]}",
    ],
)
def test_an_explicitly_empty_peer_list_selects_no_peer(section):
    policy = ingress_of_web(section)
    assert policy.ingress_enforced and policy.keys == keyset(HOST)


@pytest.mark.parametrize("side", ["Endpoints", "CIDR", "CIDRSet", "Entities"])
def test_an_explicitly_empty_egress_peer_list_selects_no_peer(side):
    repo = repository(f"endpointSelector: {{}}\negress: [{{to{side}: [], {PORT_80}}}]")
    policy = repo.compute(WEB, IDENTITIES, CIDRS)
    assert policy.egress_enforced
    assert {k for k in policy.keys if k.direction == EGRESS} == set()


def test_an_empty_list_round_trips_as_an_empty_list():
    text = "endpointSelector: {}\ningress: [{fromCIDR: [], fromEntities: []}]"
    rule = parse_rules(text, "s")[0]
    assert rule.to_json()["ingress"] == [{"fromCIDR": [], "fromEntities": []}]


@pytest.mark.parametrize("key", ["ingress", "egress"])
def test_an_empty_section_list_is_refused(key):
    """Cilium reads `ingress: []` as no ingress rule at all; pycilium read it as default
    deny: either reading would surprise someone, so the file is refused."""
    other = "egress" if key == "ingress" else "ingress"
    with pytest.raises(PolicyError) as caught:
        parse_rules(f"endpointSelector: {{}}\n{key}: []\n{other}: [{{}}]", "web.yaml")
    assert str(caught.value) == (
        f"web.yaml: rule 0: {key}: an empty list enforces nothing in Cilium (the rule does not"
        f" apply at {key}); write '{key}: [{{}}]' for default deny at {key}, or leave {key} out"
    )


@pytest.mark.parametrize("key", ["app", "any:app", "container:app", "unspec:app"])
def test_a_docker_label_is_matched_by_every_source_that_means_it(key):
    policy = ingress_of_web(
        f"{{fromEndpoints: [{{matchLabels: {{'{key}': client}}}}]}}",
        selector=f"{{matchLabels: {{'{key}': web}}}}",
    )
    assert policy.rules and policy.keys == keyset(HOST, (257, 0, 0))


@pytest.mark.parametrize("key", ["any:app", "container:app", "unspec:app"])
def test_sources_in_match_expressions(key):
    policy = ingress_of_web(
        f"{{fromEndpoints: [{{matchExpressions: [{{key: '{key}', operator: In, values:"
        " [client]}]}]}",
        selector=f"{{matchExpressions: [{{key: '{key}', operator: Exists}}]}}",
    )
    assert policy.rules and policy.keys == keyset(HOST, (257, 0, 0))


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("{matchLabels: {'reserved:world': ''}}", [(2, 0, 0), (1000, 0, 0)]),
        ("{matchLabels: {'reserved:host': ''}}", []),
        ("{matchLabels: {'reserved:init': ''}}", [(3, 0, 0)]),
        ("{matchLabels: {'reserved:world': '', app: impostor}}", []),
        # A Docker label of that name is a Docker label, written with a Docker source.
        ("{matchLabels: {'any:reserved:world': ''}}", [(258, 0, 0)]),
        ("{matchLabels: {'reserved.world': ''}}", [(258, 0, 0)]),
        (
            "{matchExpressions: [{key: 'reserved:host', operator: DoesNotExist}]}",
            [(256, 0, 0), (257, 0, 0), (258, 0, 0), (2, 0, 0), (3, 0, 0), (4, 0, 0), (1000, 0, 0)],
        ),
    ],
)
def test_reserved_keys_select_reserved_identities_never_a_docker_label(selector, expected):
    policy = ingress_of_web(f"{{fromEndpoints: [{selector}]}}")
    assert policy.keys == keyset(HOST, *expected)


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        (
            "{matchLabels: {'k8s:app': web}}",
            "endpointSelector.matchLabels.k8s:app: label source 'k8s' is not supported (Docker"
            " containers have no Kubernetes labels; match a Docker label with app or"
            " container:app)",
        ),
        (
            "{matchExpressions: [{key: 'k8s:io.kubernetes.pod.namespace', operator: Exists}]}",
            "endpointSelector.matchExpressions[0]: label source 'k8s' is not supported",
        ),
        (
            "{matchLabels: {'com.example:role': web}}",
            "unknown label source 'com.example' (any, container, reserved; a Docker label key"
            " with ':' is written any:com.example:role)",
        ),
        (
            "{matchLabels: {'reserved:host': ''}}",
            "endpointSelector.matchLabels.reserved:host: reserved:host selects a reserved"
            " identity, not a container (pycilium enforces policy on containers only: host"
            " policies are not supported)",
        ),
    ],
)
def test_an_endpoint_selector_that_cannot_select_a_container_is_refused(selector, message):
    """Selecting nobody would leave the containers it was written for unrestricted."""
    with pytest.raises(PolicyError) as caught:
        parse_rules(f"endpointSelector: {selector}\ningress: [{{}}]", "web.yaml")
    assert str(caught.value).startswith("web.yaml: rule 0: ")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        (
            "{matchLabels: {'reserved:health': ''}}",
            "reserved:health is not supported (there is no such identity here: reserved:host,"
            " reserved:world, reserved:init, reserved:unmanaged)",
        ),
        ("{matchLabels: {'reserved:world': x}}", "reserved:world has no value"),
        ("{matchLabels: {'k8s:k8s-app': kube-dns}}", "label source 'k8s' is not supported"),
    ],
)
def test_peer_selectors_refuse_what_has_no_meaning_here(selector, message):
    with pytest.raises(PolicyError) as caught:
        parse_rules(f"endpointSelector: {{}}\negress: [{{toEndpoints: [{selector}]}}]", "s")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("entity", "expected"), [("init", [(3, 0, 0)]), ("unmanaged", [(4, 0, 0)])]
)
def test_entities_init_and_unmanaged(entity, expected):
    assert ingress_of_web(f"{{fromEntities: [{entity}]}}").keys == keyset(HOST, *expected)


@pytest.mark.parametrize(
    ("entity", "reason"),
    [("kube-apiserver", "the Kubernetes API server"), ("remote-node", "cluster nodes")],
)
def test_kubernetes_entities_are_refused_by_name(entity, reason):
    with pytest.raises(PolicyError, match=f"entity {entity} is not supported \\({reason}"):
        parse_rules(f"endpointSelector: {{}}\negress: [{{toEntities: [{entity}]}}]", "s")


WORLD_ONLY = """
- endpointSelector: {matchLabels: {app: web}}
  ingress: [{fromEndpoints: [{matchLabels: {'reserved:world': ''}}]}]
"""


@pytest.mark.parametrize(
    ("src", "allowed"),
    [
        ({"reserved:world": ""}, True),
        ({"any:reserved:world": "", "reserved.world": "", "app": "impostor"}, False),
        ({"container:app": "client"}, False),
    ],
)
def test_trace_reads_label_sources_as_selectors_do(src, allowed):
    repo = repository(WORLD_ONLY)
    dst = {"app": "web"}
    assert repo.trace(src, dst, 80, 6, IDENTITIES).allowed is allowed


def test_trace_resolves_a_docker_label_with_a_colon_to_its_container():
    repo = repository(WORLD_ONLY)
    written = {"any:reserved:world": "", "reserved.world": "", "app": "impostor"}
    verdict = repo.trace(written, {"app": "web"}, 80, 6, IDENTITIES)
    assert "app=impostor" in verdict.reason and not verdict.allowed


@pytest.mark.parametrize(
    "labels", [{"k8s:app": "web"}, {"reserved:world": "", "app": "web"}, {"reserved:x": ""}]
)
def test_trace_refuses_labels_it_cannot_read(labels):
    with pytest.raises(PolicyError, match="is neither a Docker label"):
        repository(WORLD_ONLY).trace(labels, {"app": "web"}, 80, 6, IDENTITIES)

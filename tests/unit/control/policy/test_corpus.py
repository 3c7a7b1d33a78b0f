"""Real Cilium policy files (corpus/, origins in corpus/README.md): each is accepted, and
then policy trace gives the verdicts listed for a set of peers, or refused for the reason
listed. What the refusals and verdicts show is in docs/policy.md ("What the rules mean")."""

from pathlib import Path

import pytest

from driver.control.policy import Identity, PolicyError, PolicyRepository, parse_rules

CORPUS = Path(__file__).parent / "corpus"

FRONTEND = {"role": "frontend"}
BACKEND = {"role": "backend"}
RESTRICTED = {"role": "restricted"}
VICTIM = {"role": "victim"}
PUBLIC = {"role": "public"}
CRAWLER = {"role": "crawler"}
SERVICE = {"app": "myService"}
PROD = {"env": "prod"}
DEV = {"env": "dev"}
WEB = {"id": "web-server"}
GOOD = {"id": "goodclient"}
CONTAINERS = [FRONTEND, BACKEND, RESTRICTED, VICTIM, PUBLIC, CRAWLER, SERVICE, PROD, DEV]
CONTAINERS += [WEB, GOOD]
WORLD = {"reserved:world": ""}
HOST = {"reserved:host": ""}
TCP, UDP = 6, 17

# file -> (src, dst, port, protocol, allowed) for the files pycilium accepts.
L3 = [
    (FRONTEND, BACKEND, 80, TCP, True),
    (PROD, BACKEND, 80, TCP, False),
    (WORLD, BACKEND, 80, TCP, False),
    (BACKEND, FRONTEND, 80, TCP, True),
]
PUBLIC_FROM_WORLD = [(WORLD, PUBLIC, 80, TCP, True), (FRONTEND, PUBLIC, 80, TCP, False)]
ACCEPTED = {
    "l3.yaml": L3,
    "l3.json": L3,
    "l3_egress.yaml": [
        (FRONTEND, BACKEND, 80, TCP, True),
        (FRONTEND, PROD, 80, TCP, False),
        (FRONTEND, WORLD, 80, TCP, False),
    ],
    "cidr.yaml": [
        (SERVICE, WORLD, 443, TCP, False),
        (SERVICE, BACKEND, 80, TCP, False),
        (FRONTEND, SERVICE, 80, TCP, True),
    ],
    # {} in toEndpoints: every container, not the world (Cilium: every pod).
    "egress-allow-all.yaml": [
        (FRONTEND, BACKEND, 80, TCP, True),
        (FRONTEND, WORLD, 80, TCP, False),
    ],
    "egress-default-deny.yaml": [
        (RESTRICTED, BACKEND, 80, TCP, False),
        (RESTRICTED, WORLD, 53, UDP, False),
        (BACKEND, RESTRICTED, 80, TCP, True),
    ],
    "ingress-allow-all.yaml": [
        (FRONTEND, VICTIM, 80, TCP, True),
        (WORLD, VICTIM, 80, TCP, False),
        (HOST, VICTIM, 80, TCP, True),
    ],
    "entities-host.yaml": [(DEV, HOST, 22, TCP, True), (DEV, BACKEND, 80, TCP, False)],
    "entities-world.yaml": PUBLIC_FROM_WORLD,
    "entities.yaml": [(WORLD, PROD, 80, TCP, True), (FRONTEND, PROD, 80, TCP, False)],
    "requires-endpoints.yaml": [(FRONTEND, PROD, 80, TCP, True), (BACKEND, PROD, 80, TCP, False)],
    "cidr_l4_combined.yaml": [(CRAWLER, WORLD, 80, TCP, False), (CRAWLER, BACKEND, 80, TCP, False)],
    "from_init.yaml": [
        (FRONTEND, SERVICE, 53, UDP, True),
        (FRONTEND, SERVICE, 80, TCP, False),
        (WORLD, SERVICE, 53, UDP, True),
    ],
    "l3-l4-policy.yaml": [
        (GOOD, WEB, 8181, TCP, True),
        (GOOD, WEB, 80, TCP, False),
        (FRONTEND, WEB, 8181, TCP, False),
    ],
}
K8S_LABELS = "label source 'k8s' is not supported"
REFUSED = {
    "and-statement.yaml": f"fromEndpoints[0].matchExpressions[0]: {K8S_LABELS}",
    "or-statement.yaml": f"fromEndpoints[1].matchExpressions[0]: {K8S_LABELS}",
    "fqdn.yaml": f"toEndpoints[0].matchLabels.k8s:io.kubernetes.pod.namespace: {K8S_LABELS}",
    "kubedns-policy.yaml": f"matchLabels.k8s:io.kubernetes.pod.namespace: {K8S_LABELS}",
    "apiserver.yaml": "entity kube-apiserver is not supported (the Kubernetes API server)",
    "from_world_deny.yaml": "ingressDeny is not supported (deny sections)",
    "demo-host-policy.yaml": "nodeSelector is not supported (host policies select Kubernetes",
    "icmp.yaml": "icmps is not supported (ICMP types; use protocol ICMP in toPorts)",
    "l7-policy.yaml": "rules is not supported (L7 rules (HTTP, Kafka, DNS) need Cilium's proxy)",
    "service.yaml": "toServices is not supported (Kubernetes services)",
    # A description beside apiVersion, where Kubernetes keeps no such field.
    "requires.yaml": "requires.yaml: unknown field 'description'",
    "wildcard-from-endpoints.yaml": "unknown field 'description'",
    # YAML null where Cilium's older examples left a list empty.
    "egress-default-deny-old.yaml": "spec: egress: expected a list, got null",
    "ingress-allow-all-old.yaml": "ingress[0].fromEndpoints: expected a list, got null",
}


def test_every_corpus_file_has_an_expectation():
    files = {p.name for p in CORPUS.iterdir() if p.suffix in (".yaml", ".json")}
    assert files == ACCEPTED.keys() | REFUSED.keys()
    assert not ACCEPTED.keys() & REFUSED.keys()


@pytest.mark.parametrize(("name", "reason"), sorted(REFUSED.items()))
def test_refused(name, reason):
    with pytest.raises(PolicyError) as caught:
        parse_rules((CORPUS / name).read_text(), name)
    assert reason in str(caught.value)


@pytest.mark.parametrize(("name", "flows"), sorted(ACCEPTED.items()))
def test_accepted_and_traced(name, flows):
    repo = PolicyRepository(parse_rules((CORPUS / name).read_text(), name))
    known = [Identity(256 + i, labels) for i, labels in enumerate(CONTAINERS)]
    verdicts = [
        repo.trace(src, dst, port, proto, known).allowed for src, dst, port, proto, _ in flows
    ]
    assert verdicts == [allowed for *_, allowed in flows]

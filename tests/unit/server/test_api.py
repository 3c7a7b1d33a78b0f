"""The management API over the control plane, with the in-memory datapath."""

import importlib.metadata

import pytest

from ..docker_calls import EP, NET

WEB_POLICY = """
- endpointSelector: {matchLabels: {app: web}}
  labels: ["name=web-policy"]
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""


def test_version_is_the_installed_package(api):
    assert api("GET", "version") == (200, {"version": importlib.metadata.version("pycilium")})


def test_endpoint_waits_for_identity_until_its_container_is_known(api, web_endpoint, datapath):
    _, listing = api("GET", "endpoints")
    assert [e["state"] for e in listing] == ["waiting-for-identity"]
    assert datapath.identities == {}
    web_endpoint.assign_container(EP, NET, "app", "c" * 64, "web", {"app": "web"})
    _, listing = api("GET", "endpoints")
    assert listing[0]["state"] == "ready"
    assert listing[0]["labels"] == {"app": "web", "io.pycilium.network": "app"}
    identity = listing[0]["identity"]
    assert identity >= 256 and datapath.identities == {"lxc" + EP[:12]: identity}
    # Network isolation: ingress enforced, open to the same network, host and world.
    ingress, egress, keys = datapath.policies["lxc" + EP[:12]]
    assert (ingress, egress) == (True, False)
    assert {k.identity for k in keys} == {identity, 1, 2}
    # The host's own addresses are the host identity.
    assert datapath.cidr_identities == {"192.0.2.2/32": 1, "fd00::2/128": 1}


def test_policy_import_get_delete(api, web_endpoint, datapath):
    web_endpoint.assign_container(EP, NET, "app", "c" * 64, "web", {"app": "web"})
    status, result = api("PUT", "policy", {"text": WEB_POLICY, "source": "web.yaml"})
    assert status == 200 and result["revision"] == 1
    _, keys = datapath.policies["lxc" + EP[:12]][::2]
    assert {(k.identity, k.dport, k.protocol) for k in keys} == {(1, 0, 0)}
    _, policy = api("GET", "policy")
    assert policy["revision"] == 1 and policy["rules"][0]["labels"]
    status, result = api("DELETE", "policy?name=web-policy")
    assert status == 200 and result["revision"] == 2
    assert api("GET", "policy")[1]["rules"] == []
    status, result = api("DELETE", "policy?name=web-policy")
    assert status == 404 and "web-policy" in result["Err"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- endpointSelector: {}\n  ingres: []\n", "bad.yaml: rule 0"),
        ("{", "bad.yaml"),
        ("- endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: '99999'}]}]\n", "port"),
    ],
)
def test_bad_policy_is_refused_and_changes_nothing(api, web_endpoint, text, message):
    api("PUT", "policy", {"text": WEB_POLICY, "source": "web.yaml"})
    before = api("GET", "policy")[1]
    status, result = api("PUT", "policy", {"text": text, "source": "bad.yaml"})
    assert status == 400 and message in result["Err"]
    assert api("GET", "policy")[1] == before


def test_full_policy_map_keeps_the_old_policy(api, web_endpoint, datapath):
    web_endpoint.assign_container(EP, NET, "app", "c" * 64, "web", {"app": "web"})
    before = datapath.policies["lxc" + EP[:12]]
    datapath.policy_capacity = 0
    status, result = api("PUT", "policy", {"text": WEB_POLICY, "source": "web.yaml"})
    assert status == 500 and "policy map full" in result["Err"]
    assert api("GET", "policy")[1]["rules"] == []
    datapath.policy_capacity = None
    assert datapath.policies["lxc" + EP[:12]] == before


def test_trace_and_mode(api, web_endpoint):
    api("PUT", "policy", {"text": WEB_POLICY, "source": "web.yaml"})
    body = {"src": {"app": "client"}, "dst": {"app": "web"}, "dport": 80, "protocol": "tcp"}
    status, verdict = api("POST", "policy/trace", body)
    assert status == 200 and verdict["allowed"] and "web-policy" in verdict["reason"]
    status, verdict = api("POST", "policy/trace", {**body, "dport": 81})
    assert not verdict["allowed"]
    assert api("PUT", "policy/mode", {"mode": "never"}) == (200, {"mode": "never"})
    status, result = api("PUT", "policy/mode", {"mode": "sometimes"})
    assert status == 500 and "not one of" in result["Err"]
    status, result = api("POST", "policy/trace", {**body, "protocol": "sctp"})
    assert status == 400


def test_unknown_endpoint_and_identity_are_404(api):
    assert api("GET", "endpoints/nope")[0] == 404
    assert api("GET", "identities/999")[0] == 404
    assert api("GET", "identities/1")[1]["key"] == "reserved:host"

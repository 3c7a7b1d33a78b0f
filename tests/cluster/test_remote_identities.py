"""Policy on other nodes' identities: a node's rules name the identities of the other nodes'
endpoints as peers (from the endpoint records and identity keys in etcd), and their entries
come and go with those endpoints."""

import json

from datapath import PolicyKey
from datapath.abi import EGRESS, INGRESS

from ..unit.fakes import FakeDatapath
from .conftest import wait_for
from .test_policy import call

WEB, DB, SERVER, CLIENT = {"app": "web"}, {"app": "db"}, {"app": "server"}, {"app": "client"}


def _rule(selected: str, direction: str, peer: str, port: int | None = None) -> str:
    peers = "fromEndpoints" if direction == "ingress" else "toEndpoints"
    section = {peers: [{"matchLabels": {"app": peer}}]}
    if port is not None:
        section["toPorts"] = [{"ports": [{"port": str(port), "protocol": "TCP"}]}]
    return json.dumps(
        [
            {
                "labels": [{"key": "name", "value": f"{selected}-{direction}"}],
                "endpointSelector": {"matchLabels": {"app": selected}},
                direction: [section],
            }
        ]
    )


def _import(node, text: str) -> int:
    status, result = call(node, "PUT", "policy", {"text": text, "source": "test.json"})
    assert status == 200, result
    return result["revision"]


def _entries(node, endpoint_id: str, direction: int) -> set[tuple[int, int]]:
    """(identity, port) of the endpoint's policy entries in that direction."""
    ep = node.plane.endpoint_info(endpoint_id)
    _, _, keys = node.datapath.policies.get(ep.host_ifname, (False, False, set()))
    return {(k.identity, k.dport) for k in keys if k.direction == direction}


def _remote(node) -> dict[int, list[str]]:
    """identity -> nodes, of the identities `cilium identity list` shows as remote."""
    return {i["identity"]: i["nodes"] for i in node.api("identities") if i["kind"] == "remote"}


def test_a_rule_admits_the_other_nodes_identity_it_selects_while_it_is_there(nodes):
    a, b = nodes.start("a"), nodes.start("b")
    server = b.endpoint(1, SERVER)
    revision = _import(b, _rule("server", "ingress", "web"))
    wait_for(lambda: a.api("policy")["revision"] == revision, 5, "a has the rule")

    web_ep, db_ep = a.endpoint(1, WEB), a.endpoint(2, DB)
    web, db = a.identity(web_ep), a.identity(db_ep)
    wait_for(lambda: (web, 0) in _entries(b, server, INGRESS), 5, "b admits a's app=web")
    assert {i for i, _ in _entries(b, server, INGRESS)}.isdisjoint({db}), "app=db not selected"
    wait_for(lambda: _remote(b) == {web: ["a"], db: ["a"]}, 5, "b lists a's identities")
    assert b.api(f"identities/{web}")["labels"] == a.api(f"identities/{web}")["labels"]
    assert _remote(a) == {b.identity(server): ["b"]}, "a's own identities are not remote to it"

    a.remove(web_ep)
    wait_for(lambda: (web, 0) not in _entries(b, server, INGRESS), 5, "the entry goes with it")
    wait_for(lambda: _remote(b) == {db: ["a"]}, 5, "b no longer lists a's app=web")


def test_an_import_on_one_node_is_in_force_on_another_for_the_first_nodes_identities(nodes):
    a = nodes.start("a")
    web_ep = a.endpoint(1, WEB)
    web = a.identity(web_ep)
    b = nodes.start("b")  # after a's endpoint: it learns it from the watches' first listing
    client = b.endpoint(1, CLIENT)
    # No rule yet: like a Docker bridge, the network admits its own containers, on every node.
    wait_for(lambda: (web, 0) in _entries(b, client, INGRESS), 5, "b admits a's container")
    assert not any(i == web for i, _ in _entries(b, client, EGRESS))

    revision = _import(a, _rule("client", "egress", "web", port=80))
    wait_for(lambda: b.api("policy")["revision"] == revision, 5, "b has a's import")
    wait_for(lambda: (web, 80) in _entries(b, client, EGRESS), 5, "b's client may reach a's web")
    assert _entries(b, client, EGRESS) == {(web, 80)}

    a.remove(web_ep)
    wait_for(lambda: _entries(b, client, EGRESS) == set(), 5, "a's web gone from b's policy")


class RecordingDatapath(FakeDatapath):
    """Keeps every policy written, in order, by endpoint interface."""

    def __init__(self):
        super().__init__()
        self.written: dict[str, list[set]] = {}

    def set_endpoint_policy(self, spec, ingress_enforced, egress_enforced, keys):
        super().set_endpoint_policy(spec, ingress_enforced, egress_enforced, keys)
        self.written.setdefault(spec.host_ifname, []).append(set(keys))


def test_a_restarted_node_keeps_the_other_nodes_entries_throughout(nodes):
    """As Cilium waits for its identity cache: the first regeneration after a restart knows
    the other nodes' identities already, so their entries never leave the datapath."""
    a, b = nodes.start("a"), nodes.start("b", RecordingDatapath())
    server = b.endpoint(1, SERVER)
    web = a.identity(a.endpoint(1, WEB))
    _import(a, _rule("server", "ingress", "web"))
    wait_for(lambda: (web, 0) in _entries(b, server, INGRESS), 5, "b admits a's app=web")

    ifname = b.plane.endpoint_info(server).host_ifname
    datapath = nodes.stop("b").datapath
    datapath.written.clear()
    b = nodes.start("b", datapath)
    assert datapath.written[ifname], "the restart wrote the endpoint's policy"
    for keys in datapath.written[ifname]:
        assert PolicyKey(web, 0, 0, INGRESS) in keys

"""Policy as cluster-wide state: imported or deleted on any node, in force on every node at
the same revision; concurrent changes all land; a refused change writes nothing."""

import json
import threading

from driver.control.cluster.kvstore import KvStore
from driver.control.cluster.policy import REVISION, RULES

from .conftest import wait_for

WEB, CLIENT = {"app": "web"}, {"app": "client"}


def _rule(name: str, source: str = "client", port: int = 80) -> str:
    return json.dumps(
        [
            {
                "labels": [{"key": "name", "value": name}],
                "endpointSelector": {"matchLabels": {"app": "web"}},
                "ingress": [
                    {
                        "fromEndpoints": [{"matchLabels": {"app": source}}],
                        "toPorts": [{"ports": [{"port": str(port), "protocol": "TCP"}]}],
                    }
                ],
            }
        ]
    )


def call(node, method: str, path: str, body: dict | None = None, **args):
    data = json.dumps(body).encode() if body is not None else None
    response = node.client.open("/v1/" + path, method=method, data=data, query_string=args)
    return response.status_code, response.get_json(force=True)


def _import(node, text: str):
    return call(node, "PUT", "policy", {"text": text, "source": "test.json"})


def _names(node) -> list[str]:
    return sorted(
        label["value"]
        for rule in node.api("policy")["rules"]
        for label in rule.get("labels", [])
        if label["key"] == "name"
    )


def _ingress(node, endpoint_id: str) -> tuple[bool, list]:
    """Whether the datapath enforces ingress on the endpoint, and its entries' (identity,
    port)."""
    ep = node.plane.endpoint_info(endpoint_id)
    ingress, _, keys = node.plane.datapath.policies.get(ep.host_ifname, (False, False, set()))
    return bool(ingress), sorted((k.identity, k.dport) for k in keys)


def test_imported_on_one_node_in_force_on_every_node(nodes, etcd):
    a, b = nodes.start("a"), nodes.start("b")
    web_b = b.endpoint(1, WEB)
    client = a.identity(a.endpoint(1, CLIENT))
    assert b.identity(b.endpoint(2, CLIENT)) == client
    before = _ingress(b, web_b)
    assert (client, 80) not in before[1]

    status, result = _import(a, _rule("web"))
    assert status == 200, result
    assert result["revision"] == 1
    assert a.api("policy")["revision"] == 1, "the importing node has it at once"
    wait_for(lambda: b.api("policy")["revision"] == 1, 5, "b has revision 1")
    assert b.api("policy")["rules"] == a.api("policy")["rules"]
    enforced, allowed = _ingress(b, web_b)
    assert enforced and (client, 80) in allowed
    assert etcd.keys(REVISION) == {REVISION: "1"}
    assert json.loads(etcd.keys(RULES)[RULES]) == a.api("policy")["rules"]

    status, result = call(b, "DELETE", "policy", name="web")
    assert status == 200, result
    assert result["revision"] == 2
    wait_for(lambda: a.api("policy")["revision"] == 2, 5, "a has revision 2")
    assert a.api("policy")["rules"] == b.api("policy")["rules"] == []
    assert _ingress(b, web_b) == before


def test_concurrent_imports_on_two_nodes_all_land_in_order(nodes, etcd):
    a, b = nodes.start("a"), nodes.start("b")
    revisions: dict[str, int] = {}
    failures = []

    def import_from(node, prefix: str) -> None:
        for i in range(6):
            status, result = _import(node, _rule(f"{prefix}{i}", port=8000 + i))
            if status != 200:
                failures.append(result)
                return
            revisions[f"{prefix}{i}"] = result["revision"]

    threads = [threading.Thread(target=import_from, args=p) for p in ((a, "a"), (b, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sorted(revisions.values()) == list(range(1, 13)), "no revision repeats"
    expected = sorted(revisions)
    for node in (a, b):
        wait_for(lambda n=node: n.api("policy")["revision"] == 12, 5, "revision 12 everywhere")
        assert _names(node) == expected
    assert etcd.keys(REVISION) == {REVISION: "12"}


def test_a_refused_change_writes_nothing(nodes, etcd):
    a, b = nodes.start("a"), nodes.start("b")
    assert _import(a, _rule("web"))[0] == 200
    wait_for(lambda: b.api("policy")["revision"] == 1, 5, "b has revision 1")
    before = {**etcd.keys(RULES), **etcd.keys(REVISION)}

    status, result = _import(b, '[{"endpointSelector": {"matchLabels": {"app": "web"}}, "x": 1}]')
    assert status == 400 and "x" in result["Err"], result
    status, result = _import(b, _rule("other") + "\n" + "[{")
    assert status == 400, result
    status, result = call(b, "DELETE", "policy", name="nosuch")
    assert status == 404, result
    assert {**etcd.keys(RULES), **etcd.keys(REVISION)} == before
    assert a.api("policy")["revision"] == b.api("policy")["revision"] == 1
    assert _names(a) == _names(b) == ["web"]


def test_etcd_away_refuses_changes_and_keeps_the_policy_in_force(nodes, etcd):
    a, b = nodes.start("a"), nodes.start("b")
    web = a.endpoint(1, WEB)
    assert _import(a, _rule("web"))[0] == 200
    wait_for(lambda: b.api("policy")["revision"] == 1, 5, "b has revision 1")
    in_force = _ingress(a, web)
    assert in_force[0]

    etcd.stop()
    status, result = _import(a, _rule("more", port=443))
    assert status == 503, result
    assert etcd.url in result["Err"] and "cannot import policy" in result["Err"]
    status, result = call(a, "DELETE", "policy", name="web")
    assert status == 503 and "cannot delete policy" in result["Err"], result
    assert a.api("policy")["revision"] == 1 and _names(a) == ["web"]
    assert _ingress(a, web) == in_force

    etcd.start()
    wait_for(lambda: _import(a, _rule("more", port=443))[0] == 200, 15, "imports work again")
    assert a.api("policy")["revision"] == 2 and _names(a) == ["more", "web"]
    wait_for(lambda: b.api("policy")["revision"] == 2, 10, "b's watch resumed and has it")
    assert _names(b) == ["more", "web"]


def test_a_restarted_node_catches_up_with_what_changed_while_it_was_down(nodes, etcd):
    a, b = nodes.start("a"), nodes.start("b")
    assert _import(a, _rule("web"))[0] == 200
    wait_for(lambda: b.api("policy")["revision"] == 1, 5, "b has revision 1")
    nodes.stop("b")
    assert _import(a, _rule("more", port=443))[0] == 200

    b = nodes.start("b")
    wait_for(lambda: b.api("policy")["revision"] == 2, 5, "b caught up with revision 2")
    assert _names(b) == ["more", "web"]


def test_the_first_node_gives_an_empty_cluster_its_policy(nodes, etcd, tmp_path):
    """A host that ran alone joins a new cluster with the policy it had."""
    alone = nodes.start("a", kvstore="", kvstore_endpoints="")
    assert _import(alone, _rule("web"))[0] == 200
    assert _import(alone, _rule("more", port=443))[0] == 200
    nodes.stop("a")

    a = nodes.start("a")
    wait_for(lambda: etcd.keys(REVISION) == {REVISION: "2"}, 5, "a's policy is the cluster's")
    b = nodes.start("b")
    wait_for(lambda: b.api("policy")["revision"] == 2, 5, "b has a's policy")
    assert _names(b) == _names(a) == ["more", "web"]


def test_a_cluster_that_lost_its_policy_gets_the_whole_copy_back(nodes, etcd):
    a = nodes.start("a")
    assert _import(a, _rule("web"))[0] == 200
    kv = KvStore([etcd.url])
    for key in (RULES, REVISION):
        kv.delete(key, "lose the cluster's policy")
    kv.close()

    assert _import(a, _rule("more", port=443))[0] == 200
    assert etcd.keys(REVISION) == {REVISION: "2"}
    b = nodes.start("b")
    wait_for(lambda: b.api("policy")["revision"] == 2, 5, "b has revision 2")
    assert _names(b) == ["more", "web"]

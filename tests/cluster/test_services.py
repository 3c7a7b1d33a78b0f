"""Services as cluster-wide state: made on any node, the same list on every node, a VIP
taken on one node refused on the others, ids that mean one service everywhere."""

import ipaddress
import json
import threading

from driver.control.cluster.identities import IDS, REFS, labels_hash
from driver.control.cluster.kvstore import KvStore
from driver.control.cluster.services import ENDPOINTS, REVISION, SERVICES
from driver.control.identities import NETWORK_LABEL

from .conftest import wait_for
from .test_policy import call

WEB = {"app": "web"}


def _update(node, frontend: str, backends: list[str] | None = None, **fields):
    body = {"frontend": frontend, **fields}
    if backends is not None:
        body["backends"] = backends
    return call(node, "PUT", "services", body)


def _programmed(node) -> dict[str, tuple[int, list[str]]]:
    """The fake datapath's services: frontend -> (id, backends)."""
    return {
        str(f): (i, [f"{b.address}:{b.port}" for b in bs])
        for f, (i, bs) in node.plane.datapath.lb.items()
    }


def test_a_service_made_on_one_node_is_on_every_node(nodes, etcd):
    a, b = nodes.start("a"), nodes.start("b")
    status, made = _update(a, "[fd00:5::10]:80", ["[fdce::2]:8080"], name="web")
    assert status == 200, made
    wait_for(lambda: b.api("services") == a.api("services"), 5, "b lists a's service")
    assert b.api("services") == [
        {
            "id": made["id"],
            "name": "web",
            "frontend": "[fd00:5::10]:80/tcp",
            "selector": None,
            "backends": ["[fdce::2]:8080"],
        }
    ]
    assert _programmed(b) == {"[fd00:5::10]:80/tcp": (made["id"], ["fdce::2:8080"])}
    key = SERVICES + "[fd00:5::10]:80/tcp"
    assert json.loads(etcd.keys(key)[key])["id"] == made["id"]
    assert etcd.keys(REVISION) == {REVISION: "1"}

    # b changes it (new backends) and then deletes it; a follows.
    status, changed = _update(b, "[fd00:5::10]:80", ["[fdce::3]:8080"])
    assert status == 200 and changed["id"] == made["id"], changed
    wait_for(lambda: a.api("services") == b.api("services"), 5, "a has b's change")
    assert _programmed(a) == {"[fd00:5::10]:80/tcp": (made["id"], ["fdce::3:8080"])}
    status, result = call(b, "DELETE", f"services/{made['id']}")
    assert status == 200, result
    wait_for(lambda: a.api("services") == [], 5, "the service left a")
    assert _programmed(a) == _programmed(b) == {}
    assert etcd.keys(SERVICES) == {REVISION: "3"}


def test_a_vip_taken_on_one_node_is_refused_on_the_others(nodes, etcd):
    a, b = nodes.start("a"), nodes.start("b")
    status, made = _update(a, "10.96.0.10:53", ["10.213.0.2:53"], protocol="udp", name="dns")
    assert status == 200, made
    before = etcd.keys(SERVICES)

    status, result = _update(b, "10.96.0.10:53", ["10.213.0.3:53"], protocol="udp", id=7)
    assert status == 409 and f"is service {made['id']}" in result["Err"], result
    status, result = _update(b, "10.96.0.11:53", ["10.213.0.3:53"], protocol="udp", name="dns")
    assert status == 409 and "name 'dns'" in result["Err"], result
    status, result = _update(b, "10.96.0.12:80", [])
    assert status == 500 and "empty" in result["Err"], result
    assert etcd.keys(SERVICES) == before
    assert b.api("services") == a.api("services")
    assert _programmed(b) == _programmed(a)


def test_services_made_at_once_on_two_nodes_get_distinct_ids(nodes, etcd):
    a, b = nodes.start("a"), nodes.start("b")
    made, failures = {}, []

    def make(node, prefix: int) -> None:
        for i in range(5):
            frontend = f"10.96.{prefix}.{i + 1}:80"
            status, result = _update(node, frontend, ["10.213.0.2:80"])
            if status != 200:
                failures.append(result)
                return
            made[frontend] = result["id"]

    threads = [threading.Thread(target=make, args=p) for p in ((a, 1), (b, 2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sorted(made.values()) == list(range(1, 11)), "ids are unique in the cluster"
    for node in (a, b):
        wait_for(lambda n=node: len(n.api("services")) == 10, 5, "every service everywhere")
        assert {s["frontend"].removesuffix("/tcp"): s["id"] for s in node.api("services")} == made
    assert etcd.keys(REVISION) == {REVISION: "10"}


def test_a_selector_service_takes_the_endpoints_of_every_node(nodes, etcd):
    """Other nodes' endpoints as they publish them (ENDPOINTS, with the identity's labels
    under IDS); a node's own record is its state's endpoint, not a second backend."""
    a, b = nodes.start("a"), nodes.start("b")
    web = b.endpoint(1, WEB)
    local = b.plane.endpoint_info(web)
    status, made = call(a, "PUT", "services", {"frontend": "10.96.0.20:80", "selector": WEB})
    # b publishes its endpoint as the test runs: a may have it as a backend already.
    assert status == 200 and made["backends"] in ([], [f"{local.ipv4}:80"]), made

    labels = json.dumps({**WEB, NETWORK_LABEL: "app"}, sort_keys=True)
    etcd.put(f"{REFS}{labels_hash(labels)}/c", "4242")  # else the allocator collects it
    etcd.put(f"{IDS}4242", labels)
    for node, number, ipv4, identity in (
        ("b", 1, local.ipv4, local.identity),
        ("c", 7, "10.213.48.7", 4242),
    ):
        record = {"ipv6": f"fdce:1c00::9:0:{number}", "ipv4": ipv4, "identity": identity}
        etcd.put(f"{ENDPOINTS}{node}/{number}", json.dumps(record))
    expected = sorted(
        [f"{local.ipv4}:80", "10.213.48.7:80"], key=lambda b: ipaddress.ip_address(b[:-3])
    )
    for node in (a, b):
        wait_for(
            lambda n=node: [s["backends"] for s in n.api("services")] == [expected],
            5,
            "both nodes' endpoints are backends everywhere",
        )
        # The datapath follows a moment later: a trigger syncs it after a burst of events.
        wait_for(
            lambda n=node: _programmed(n)["10.96.0.20:80/tcp"][1] == expected,
            5,
            "and in every node's datapath",
        )

    kv = KvStore([etcd.url])
    kv.delete(f"{ENDPOINTS}c/7", "take c's endpoint away")
    kv.close()
    for node in (a, b):
        wait_for(
            lambda n=node: n.api("services")[0]["backends"] == [f"{local.ipv4}:80"],
            5,
            "c's endpoint left the backends",
        )


def test_etcd_away_refuses_changes_and_keeps_the_services(nodes, etcd):
    a = nodes.start("a")
    assert _update(a, "[fd00:5::10]:80", ["[fdce::2]:8080"])[0] == 200
    programmed = _programmed(a)

    etcd.stop()
    status, result = _update(a, "[fd00:5::11]:80", ["[fdce::2]:8080"])
    assert status == 503 and etcd.url in result["Err"], result
    assert "cannot update a service" in result["Err"]
    status, result = call(a, "DELETE", "services/1")
    assert status == 503 and "cannot delete service 1" in result["Err"], result
    assert _programmed(a) == programmed
    assert len(a.api("services")) == 1

    etcd.start()
    wait_for(
        lambda: _update(a, "[fd00:5::11]:80", ["[fdce::2]:8080"])[0] == 200, 15, "updates again"
    )
    assert len(a.api("services")) == 2


def test_a_restarted_node_converges_and_a_lone_host_seeds_the_cluster(nodes, etcd):
    alone = nodes.start("a", kvstore="", kvstore_endpoints="")
    assert _update(alone, "[fd00:5::10]:80", ["[fdce::2]:8080"])[0] == 200
    nodes.stop("a")
    a = nodes.start("a")
    wait_for(lambda: etcd.keys(REVISION) == {REVISION: "1"}, 5, "a's service is the cluster's")
    b = nodes.start("b")
    wait_for(lambda: b.api("services") == a.api("services"), 5, "b has a's service")

    nodes.stop("b")
    assert _update(a, "[fd00:5::11]:80", ["[fdce::3]:8080"])[0] == 200
    assert call(a, "DELETE", "services/1")[0] == 200
    b = nodes.start("b")
    wait_for(lambda: b.api("services") == a.api("services"), 5, "b caught up")
    assert [s["frontend"] for s in b.api("services")] == ["[fd00:5::11]:80/tcp"]
    assert list(_programmed(b)) == ["[fd00:5::11]:80/tcp"]


def test_a_cluster_that_lost_its_services_gets_the_whole_copy_back(nodes, etcd):
    """Keys deleted behind the nodes' back (a restore of etcd from an old backup would do
    it too): the next change writes the node's whole copy, not just what it changed."""
    a = nodes.start("a")
    assert _update(a, "[fd00:5::10]:80", ["[fdce::2]:8080"])[0] == 200
    kv = KvStore([etcd.url])
    for key in etcd.keys(SERVICES):
        kv.delete(key, "lose the cluster's services")
    kv.close()

    assert _update(a, "[fd00:5::11]:80", ["[fdce::3]:8080"])[0] == 200
    assert set(etcd.keys(SERVICES)) == {
        REVISION,
        SERVICES + "[fd00:5::10]:80/tcp",
        SERVICES + "[fd00:5::11]:80/tcp",
    }
    b = nodes.start("b")
    wait_for(lambda: b.api("services") == a.api("services"), 5, "b has both")

"""Networks in etcd: created on one node, made on every other by its driver through the
Docker API (a stand-in here), deleted everywhere once no node has endpoints on them."""

import ipaddress
import json

from driver.control.cluster.networks import NETWORK_USERS, NETWORKS

from .conftest import LEASE_TTL, wait_for
from .docker_stand_in import DockerStandIn

WEB = {"app": "web"}
OWN = {"Driver": "cilium", "Config": []}


def _start(nodes, name):
    node = nodes.start(name)
    node.docker = DockerStandIn(node)
    node.plane.replicate_networks(node.docker)
    return node


def _has(node, name) -> bool:
    return any(n["Name"] == name for n in node.docker.networks())


def _state(node, name):
    return next(n for n in node.plane.list_networks() if n.name == name)


def test_a_network_created_on_one_node_is_made_on_every_other(nodes, etcd):
    a, b = _start(nodes, "a"), _start(nodes, "b")
    a.docker.create_network("web", "cilium", {"mtu": "1400"}, OWN, enable_ipv6=True)
    wait_for(lambda: NETWORKS + "web" in etcd.keys(NETWORKS), 5, "web published")
    assert json.loads(etcd.keys(NETWORKS)[NETWORKS + "web"]) == {
        "name": "web",
        "origin": "a",
        "ipam": "cilium",
        "ipv6": True,
        "internal": False,
        "options": {"mtu": "1400"},
        "ipam_options": {},
        "labels": {},
        "subnets": [],  # the blocks are each node's own
    }
    wait_for(lambda: _has(b, "web"), 5, "web made on b")
    assert a.docker.network("web")["Id"] != b.docker.network("web")["Id"]
    mine, theirs = _state(a, "web"), _state(b, "web")
    assert theirs.mtu == 1400
    for pool, node in ((mine.pool6, a), (mine.pool4, a), (theirs.pool6, b), (theirs.pool4, b)):
        assert node.plane.node.is_block(ipaddress.ip_network(pool)), "from the node's own range"
    entry = etcd.entry(NETWORKS + "web")
    assert entry.mod_revision == entry.create_revision, "b did not publish it again"
    assert [c["name"] for c in a.docker.created] == ["web"], "nor did a make it twice"

    c = _start(nodes, "c")
    wait_for(lambda: _has(c, "web"), 5, "a node that joins later makes it at start")


def test_subnet_networks_give_addresses_unique_across_nodes(nodes, etcd):
    a, b = _start(nodes, "a"), _start(nodes, "b")
    subnets = {
        "Driver": "cilium",
        "Config": [{"Subnet": "203.0.113.0/24"}, {"Subnet": "2001:db8:7::/64"}],
    }
    a.docker.create_network("lab", "cilium", {}, subnets, enable_ipv6=True)
    wait_for(lambda: _has(b, "lab"), 5, "lab made on b")
    record = json.loads(etcd.keys(NETWORKS)[NETWORKS + "lab"])
    assert record["subnets"] == [
        {"subnet": "203.0.113.0/24", "ip_range": None, "gateway": "203.0.113.1"},
        {"subnet": "2001:db8:7::/64", "ip_range": None, "gateway": "2001:db8:7::1"},
    ]
    for node in (a, b):
        assert [c["Gateway"] for c in node.docker.network("lab")["IPAM"]["Config"]] == [
            "203.0.113.1",
            "2001:db8:7::1",
        ], "the same gateways on every node"
    given = {}
    for node in (a, b):
        for number in range(3):
            ep = node.plane.endpoint_info(node.docker.run("lab", number, WEB))
            given.setdefault(node.plane.cluster.name, []).extend([ep.ipv4, ep.ipv6])
    everything = given["a"] + given["b"]
    assert len(set(everything)) == len(everything) == 12
    # Each node allocates from its own 16th of the subnets (part = node id).
    for name, node_id in (("a", 1), ("b", 2)):
        parts = (f"203.0.113.{16 * node_id}/28", f"2001:db8:7:0:{node_id:x}000::/68")
        for address in given[name]:
            assert any(ipaddress.ip_address(address) in ipaddress.ip_network(p) for p in parts)


def test_docker_ipam_networks_get_each_nodes_part_as_the_range(nodes, etcd):
    a, b = _start(nodes, "a"), _start(nodes, "b")
    a.docker.create_network("plain", "cilium", {}, {"Driver": "default", "Config": []})
    wait_for(lambda: _has(b, "plain"), 5, "plain made on b")
    subnet = a.docker.network("plain")["IPAM"]["Config"][0]["Subnet"]
    asked = b.docker.created[-1]["ipam"]
    assert asked["Driver"] == "default"
    assert asked["Config"] == [
        {
            "Subnet": subnet,
            "Gateway": str(ipaddress.ip_network(subnet)[1]),
            "IPRange": "198.51.100.8/30",
        }
    ]


def test_a_network_goes_from_every_node_once_no_node_uses_it(nodes, etcd):
    a, b, c = _start(nodes, "a"), _start(nodes, "b"), _start(nodes, "c")
    a.docker.create_network("web", "cilium", {}, OWN, enable_ipv6=True)
    wait_for(lambda: _has(b, "web") and _has(c, "web"), 5, "web everywhere")
    on_b = b.docker.run("web", 1, WEB)
    wait_for(lambda: NETWORK_USERS + "web/b" in etcd.keys(NETWORK_USERS), 5, "b uses web")

    status, reply = a.post(
        "NetworkDriver.DeleteNetwork", {"NetworkID": a.docker.network("web")["Id"]}
    )
    assert status == 500 and "node(s) b" in reply["Err"], reply
    assert _has(a, "web") and NETWORKS + "web" in etcd.keys(NETWORKS)

    b.docker.stop("web", on_b)
    wait_for(lambda: etcd.keys(NETWORK_USERS) == {}, 5, "nobody uses web")
    removed = a.docker.network("web")["Id"]
    a.docker.remove_network(removed)
    assert NETWORKS + "web" not in etcd.keys(NETWORKS)
    for node in (b, c):
        wait_for(lambda n=node: not _has(n, "web"), 5, "web gone everywhere")
        assert node.plane.list_networks() == []
        assert len(node.docker.removed) == 1
    assert a.docker.removed == [removed], "a's own delete is not repeated by its watch"


def test_the_users_of_a_node_whose_lease_expires_go_with_it(nodes, etcd):
    a, b = _start(nodes, "a"), _start(nodes, "b")
    a.docker.create_network("web", "cilium", {}, OWN, enable_ipv6=True)
    wait_for(lambda: _has(b, "web"), 5, "web on b")
    b.docker.run("web", 1, WEB)
    wait_for(lambda: NETWORK_USERS + "web/b" in etcd.keys(NETWORK_USERS), 5, "b uses web")
    nodes.stop("b")
    wait_for(lambda: etcd.keys(NETWORK_USERS) == {}, LEASE_TTL + 5, "b's use gone")
    a.docker.remove_network(a.docker.network("web")["Id"])
    assert etcd.keys(NETWORKS) == {}


def test_a_restarted_node_keeps_its_networks_and_their_users(nodes, etcd):
    a, b = _start(nodes, "a"), _start(nodes, "b")
    a.docker.create_network("web", "cilium", {}, OWN, enable_ipv6=True)
    wait_for(lambda: _has(b, "web"), 5, "web on b")
    b.docker.run("web", 1, WEB)
    wait_for(lambda: NETWORK_USERS + "web/b" in etcd.keys(NETWORK_USERS), 5, "b uses web")
    stand_in = b.docker
    datapath = nodes.stop("b").datapath
    b = nodes.start("b", datapath=datapath)
    stand_in.node = b
    b.docker = stand_in
    b.plane.replicate_networks(stand_in)
    wait_for(
        lambda: etcd.entry(NETWORK_USERS + "web/b").lease == b.plane.cluster.session.lease,
        5,
        "b's use under its new lease",
    )
    assert [c["name"] for c in stand_in.created] == ["web"], "not made again"


def test_a_network_created_while_etcd_is_away_is_published_when_it_answers(nodes, etcd):
    a, b = _start(nodes, "a"), _start(nodes, "b")
    etcd.stop()
    a.docker.create_network("late", "cilium", {}, OWN, enable_ipv6=True)
    assert _has(a, "late"), "a network needs no etcd on its own node"
    etcd.start()
    wait_for(lambda: _has(b, "late"), LEASE_TTL + 10, "published and made once etcd answers")

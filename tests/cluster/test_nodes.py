"""Nodes in etcd: ids claimed for good, records under leases, every node's view from a
watch."""

import ipaddress
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import docker.errors
import pytest

from datapath import INIT_ID, DatapathError
from driver.control.cluster.kvstore import KvStore, KvstoreUnavailable
from driver.control.cluster.networks import NETWORKS
from driver.control.cluster.nodes import NODE_IDS, NODES, claim_node_id
from driver.errors import Conflict

from ..unit.docker_calls import NET
from ..unit.fakes import FakeDatapath
from .conftest import LEASE_TTL, wait_for
from .docker_stand_in import DockerStandIn

OWN_IPAM = {"Driver": "cilium", "Config": []}


def _names(node) -> list[str]:
    return [n["name"] for n in node.api("nodes")]


def _with_docker(nodes, name):
    """A node whose Docker (a stand-in) makes the cluster's networks."""
    node = nodes.start(name)
    node.docker = DockerStandIn(node)
    node.plane.replicate_networks(node.docker)
    return node


def _has(node, network: str) -> bool:
    return any(n["Name"] == network for n in node.docker.networks())


def test_every_node_sees_the_others_and_their_ranges_do_not_overlap(nodes, etcd):
    started = [nodes.start(name) for name in ("a", "b", "c")]
    for node in started:
        wait_for(lambda node=node: _names(node) == ["a", "b", "c"], 5, "every node seen")
    records = started[0].api("nodes")
    assert sorted(r["node_id"] for r in records) == [1, 2, 3]
    for version in ("ipv6_range", "ipv4_range"):
        ranges = [ipaddress.ip_network(r[version]) for r in records]
        assert not any(x.overlaps(y) for i, x in enumerate(ranges) for y in ranges[i + 1 :])
    mine = {r["name"]: r for r in records}["b"]
    status = started[1].api("status")
    assert status["node"]["id"] == mine["node_id"]
    assert status["node"]["ipv4_range"] == mine["ipv4_range"] == "10.213.32.0/20"
    assert status["cluster"]["name"] == "b" and status["cluster"]["connected"]
    assert [n["name"] for n in status["cluster"]["nodes"]] == ["a", "b", "c"]
    assert all(r["address"] == "127.0.0.1" for r in records)
    scraped = started[0].client.get("/metrics").get_data(as_text=True)
    assert "pycilium_cluster_nodes 3.0" in scraped
    assert "pycilium_kvstore_connected 1.0" in scraped
    assert etcd.keys(NODE_IDS) == {
        f"{NODE_IDS}{n}": name for n, name in ((1, "a"), (2, "b"), (3, "c"))
    }


def test_a_node_whose_lease_expires_leaves_every_view(nodes, etcd):
    a, b = nodes.start("a"), nodes.start("b")
    nodes.start("c").endpoint(1, {"app": "only-on-c"})
    wait_for(lambda: _names(a) == _names(b) == ["a", "b", "c"], 5, "c seen")
    # Stopped without a word to etcd, as a killed driver: its lease runs out.
    nodes.stop("c")
    assert _names(a) == ["a", "b", "c"], "c stays while its lease lives"
    wait_for(lambda: _names(a) == _names(b) == ["a", "b"], LEASE_TTL + 5, "c gone")
    assert list(etcd.keys(NODES)) == [NODES + "a", NODES + "b"]
    # What only c used went with its lease: the others collected its identity.
    wait_for(lambda: etcd.keys("pycilium/v1/identities/") == {}, 5, "c's identity freed")


def test_node_ids_never_collide_and_a_restarted_node_keeps_its_id(nodes, etcd, tmp_path):
    first = {name: nodes.start(name).plane.node.node_id for name in ("a", "b", "c")}
    assert len(set(first.values())) == 3
    nodes.stop("b")
    assert nodes.start("b").plane.node.node_id == first["b"], "restarted with its state"
    nodes.stop("b")
    fresh = nodes.start("b", state_dir=str(tmp_path / "b-new"))
    assert fresh.plane.node.node_id == first["b"], "its name, not its state, holds the id"
    assert nodes.start("d").plane.node.node_id not in first.values()


def test_a_node_gone_for_good_is_forgotten_and_its_id_given_again(nodes, etcd):
    a = nodes.start("a")
    gone = nodes.start("c").plane.node.node_id

    def forget(name):
        response = a.client.delete(f"/v1/nodes/{name}")
        return response.status_code, response.get_json()

    status, refusal = forget("c")
    assert status == 409 and "node c is up" in refusal["Err"]
    assert forget("a")[0] == 409, "a node does not forget itself"
    assert forget("nobody")[0] == 404
    nodes.stop("c")
    wait_for(lambda: _names(a) == ["a"], LEASE_TTL + 5, "c's lease expired")
    assert forget("c") == (200, {"name": "c", "node_id": gone})
    assert etcd.keys(NODE_IDS) == {f"{NODE_IDS}{a.plane.node.node_id}": "a"}
    assert nodes.start("d").plane.node.node_id == gone, "the lowest free id"


def _cut_off_and_forgotten(nodes, a, b):
    """b cut off from etcd (its keepalive fails) until its lease expires, forgotten from a,
    its id taken by a new node c; then etcd answers b again and b learns it left. c."""
    session = b.plane.cluster.session
    keepalive = session.kv.keepalive
    cut = threading.Event()
    cut.set()

    def partitioned(lease):
        if cut.is_set():
            raise KvstoreUnavailable("cut off (test)")
        return keepalive(lease)

    session.kv.keepalive = partitioned
    wait_for(lambda: _names(a) == ["a"], LEASE_TTL + 5, "b's lease expired")
    assert a.client.delete("/v1/nodes/b").status_code == 200
    c = nodes.start("c")
    assert c.plane.node.node_id == b.plane.node.node_id, "the lowest free id: b's"
    cut.clear()
    wait_for(lambda: b.api("status")["cluster"]["left"], LEASE_TTL + 5, "b learns it left")
    return c


def test_a_node_forgotten_while_cut_off_leaves_the_cluster_instead_of_sharing_its_id(nodes, etcd):
    """Its record's lease expired while it ran on without etcd, so forgetting it passed;
    another node took the id. When etcd answers again, the node finds its id gone and puts
    nothing back: no two live nodes ever share an id and its ranges."""
    a, b = nodes.start("a"), nodes.start("b")
    on_b = b.endpoint(1, {"app": "on-b"})
    late = b.endpoint(2, {}, learnt=False)
    _cut_off_and_forgotten(nodes, a, b)
    assert "no longer node b's" in b.api("status")["cluster"]["left"]
    b.learn(late, 2, {"app": "after-leaving"})  # its record would claim c's addresses
    time.sleep(1)
    assert not [k for k in etcd.keys("pycilium/v1/endpoints/") if "/b/" in k]
    time.sleep(LEASE_TTL + 1)  # a lease granted on the way would have run out
    assert _names(a) == ["a", "c"]
    assert not [k for k in etcd.keys("pycilium/v1/") if "/b/" in k or k.endswith("/b")]
    assert b.plane.endpoint_info(on_b) is not None, "what b has stays"


def test_a_node_that_left_hands_out_no_address_from_ranges_another_node_may_own(nodes, etcd):
    """New endpoints, addresses and networks are refused with what to do; the endpoints b
    has keep working and go as Docker removes them."""
    a, b = nodes.start("a"), nodes.start("b")
    on_b = b.endpoint(1, {"app": "on-b"})
    _cut_off_and_forgotten(nodes, a, b)
    pool4, pool6 = b.pools
    before = b.plane.list_addresses()

    for call, body in (
        ("IpamDriver.RequestAddress", {"PoolID": pool4["PoolID"], "Address": ""}),
        ("IpamDriver.RequestPool", {"AddressSpace": "CiliumLocal", "Pool": "", "V6": False}),
        (
            "NetworkDriver.CreateEndpoint",
            {"NetworkID": NET, "EndpointID": "f" * 64, "Interface": {}, "Options": {}},
        ),
        ("NetworkDriver.CreateNetwork", {"NetworkID": "d" * 64, "Options": {}}),
    ):
        status, reply = b.post(call, body)
        assert status == 500, (call, reply)
        assert reply["Err"].startswith("node b left the cluster: node id "), reply
        assert "restart the driver" in reply["Err"]
    assert b.plane.list_addresses() == before
    assert b.plane.endpoint_info("f" * 64) is None

    kept = b.plane.endpoint_info(on_b)
    assert kept.identity != INIT_ID and b.datapath.endpoints, "b's endpoint works on"
    b.remove(on_b)  # as Docker removes a container, then its addresses and network
    for pool, address in ((pool4, kept.ipv4), (pool6, kept.ipv6)):
        release = {"PoolID": pool["PoolID"], "Address": address}
        assert b.post("IpamDriver.ReleaseAddress", release)[0] == 200
    assert b.post("NetworkDriver.DeleteNetwork", {"NetworkID": NET})[0] == 200
    for pool in (pool4, pool6):
        assert b.post("IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]})[0] == 200
    assert b.plane.list_networks() == [] and b.plane.list_addresses() == []


def test_a_node_that_left_removes_cluster_networks_from_its_host_only_and_joins_again(nodes, etcd):
    """What the refusal tells the operator: remove the host's containers and networks (the
    cluster keeps them), restart the driver; it joins under a new node id and makes the
    cluster's networks again."""
    a, b = _with_docker(nodes, "a"), _with_docker(nodes, "b")
    a.docker.create_network("web", "cilium", {}, OWN_IPAM, enable_ipv6=True)
    wait_for(lambda: _has(b, "web"), 5, "web made on b")
    on_b = b.docker.run("web", 1, {"app": "on-b"})
    c = _cut_off_and_forgotten(nodes, a, b)
    old_id = b.plane.node.node_id

    with pytest.raises(docker.errors.APIError, match="node b left the cluster"):
        b.docker.create_network("new", "cilium", {}, OWN_IPAM, enable_ipv6=True)
    b.docker.stop("web", on_b)
    b.docker.remove_network(b.docker.network("web")["Id"])
    assert NETWORKS + "web" in etcd.keys(NETWORKS), "still the cluster's"
    assert _has(a, "web")

    stand_in = b.docker
    b = nodes.start("b", datapath=nodes.stop("b").datapath)
    assert b.plane.node.node_id not in (old_id, a.plane.node.node_id, c.plane.node.node_id)
    assert not b.api("status")["cluster"]["left"]
    stand_in.node, b.docker = b, stand_in
    b.plane.replicate_networks(stand_in)
    wait_for(lambda: _has(b, "web"), 5, "web made on b again")
    web = next(n for n in b.plane.list_networks() if n.name == "web")
    assert b.plane.node.is_block(ipaddress.ip_network(web.pool4)), "from its new ranges"
    wait_for(lambda: _names(a) == ["a", "b", "c"], 5, "b seen again")


class PrefilterRefused(FakeDatapath):
    """A datapath that fails the start late: after the lease, the node record and the
    watches of policy, services and other nodes' identities have started."""

    def set_prefilter(self, cidrs):
        raise DatapathError("prefilter map refused")


def test_a_start_that_fails_late_leaves_no_etcd_thread_running(nodes):
    def etcd_threads():
        return {t for t in threading.enumerate() if t.name.startswith(("etcd", "watch "))}

    before = etcd_threads()
    with pytest.raises(DatapathError, match="prefilter map refused"):
        nodes.start("a", datapath=PrefilterRefused())
    wait_for(lambda: etcd_threads() <= before, 10, "the failed start's etcd threads gone")


def test_twenty_nodes_starting_at_once_each_claim_an_id(etcd):
    """Every lost race means another node took an id: a node keeps trying while ids are
    free (bench/cluster.py starts 20 nodes at once; five attempts were too few)."""
    count = 20
    barrier = threading.Barrier(count)
    claimed: dict[str, int] = {}

    def start(name: str) -> None:
        kv = KvStore([etcd.url])
        try:
            barrier.wait()
            claimed[name] = claim_node_id(kv, name, 0, 64)
        finally:
            kv.close()

    with ThreadPoolExecutor(count) as pool:
        list(pool.map(start, [f"n{k}" for k in range(count)]))
    assert sorted(claimed.values()) == list(range(1, count + 1))
    assert etcd.keys(NODE_IDS) == {f"{NODE_IDS}{n}": name for name, n in claimed.items()}


def test_a_node_refused_its_id_says_why(nodes):
    """The start fails with the refusal, not with the lease's keepalive never started."""
    taken = nodes.start("a").plane.node.node_id
    with pytest.raises(Conflict, match=f"node id {taken} belongs to node a"):
        nodes.start("x", node_id=taken)

"""Endpoints in etcd and in every other node's ipcache; nodes' ranges through the tunnel."""

import json
import time

from datapath.abi import INIT_ID
from driver.control.cluster.endpoints import ENDPOINTS
from driver.control.cluster.kvstore import KvStore
from driver.control.cluster.nodes import PREFIX

from ..unit.fakes import FakeDatapath
from .conftest import LEASE_TTL, wait_for

WEB, DB = {"app": "web"}, {"app": "db"}
ADDRESS = {"a": "198.51.100.1", "b": "198.51.100.2", "c": "198.51.100.3"}


def _start(nodes, name, **settings):
    return nodes.start(name, node_address=ADDRESS[name], **settings)


def _key(node, endpoint_id) -> str:
    numeric_id = node.plane.endpoint_info(endpoint_id).numeric_id
    return f"{ENDPOINTS}{node.plane.cluster.name}/{numeric_id}"


def _cached(node, owner, endpoint_id) -> dict:
    """What node's ipcache holds for owner's endpoint's addresses."""
    ep = owner.plane.endpoint_info(endpoint_id)
    return {a: node.datapath.ipcache.get(a) for a in (ep.ipv6, ep.ipv4)}


def _in_cache(node, owner, endpoint_id, identity) -> dict:
    where = ADDRESS[owner.plane.cluster.name]
    ep = owner.plane.endpoint_info(endpoint_id)
    return {ep.ipv6: (identity, where), ep.ipv4: (identity, where)}


def test_an_endpoint_is_published_and_cached_on_every_other_node(nodes, etcd):
    a, b, c = (_start(nodes, name) for name in "abc")
    web = a.endpoint(1, WEB)
    identity = a.identity(web)
    ep = a.plane.endpoint_info(web)
    wait_for(lambda: _key(a, web) in etcd.keys(ENDPOINTS), 5, "a's endpoint in etcd")
    assert json.loads(etcd.keys(ENDPOINTS)[_key(a, web)]) == {
        "node": "a",
        "node_address": ADDRESS["a"],
        "endpoint_id": ep.numeric_id,
        "ipv6": ep.ipv6,
        "ipv4": ep.ipv4,
        "identity": identity,
        "container_name": "c1",
        "aliases": [],
        "network_id": ep.network_id,
        "network_name": "app",
        "ports": [],
    }
    aliases = ["0123456789ab", "www"]
    a.plane.endpoint_aliases(web, aliases)
    wait_for(
        lambda: json.loads(etcd.keys(ENDPOINTS)[_key(a, web)])["aliases"] == aliases,
        5,
        "the aliases the watcher learnt once the container started",
    )
    assert etcd.entry(_key(a, web)).lease == a.plane.cluster.session.lease
    for other in (b, c):
        wanted = _in_cache(other, a, web, identity)
        wait_for(lambda o=other, w=wanted: _cached(o, a, web) == w, 5, "a's endpoint cached")
    assert a.datapath.ipcache == {}, "a node never caches its own endpoints"

    db = b.endpoint(2, DB)
    wanted = _in_cache(a, b, db, b.identity(db))
    wait_for(lambda: _cached(a, b, db) == wanted, 5, "b's endpoint cached on a")
    assert set(c.datapath.ipcache) == {*wanted, *_in_cache(c, a, web, identity)}

    key = _key(b, db)
    b.remove(db)
    wait_for(lambda: key not in etcd.keys(ENDPOINTS), 5, "b's endpoint withdrawn")
    wait_for(lambda: set(a.datapath.ipcache) == set(), 5, "b's endpoint gone from a's ipcache")
    assert set(c.datapath.ipcache) == set(_in_cache(c, a, web, identity))


class CountingDatapath(FakeDatapath):
    def __init__(self):
        super().__init__()
        self.upserts = 0

    def ipcache_upsert(self, address, identity, node_address):
        super().ipcache_upsert(address, identity, node_address)
        self.upserts += 1


def test_an_endpoint_is_one_write_with_its_identity_and_a_new_name_no_ipcache_write(nodes, etcd):
    """Every write of a record is a watch event on every other node: an endpoint waiting
    for its identity is not published, it is published once with it, and its names
    learnt later (the container's start) change the record but no other node's ipcache."""
    a, b = _start(nodes, "a"), _start(nodes, "b", datapath=CountingDatapath())
    seen = []  # (kind, identity) of every change under ENDPOINTS
    kv = KvStore([etcd.url])
    watch = kv.watch(
        ENDPOINTS,
        lambda _entries: None,
        lambda kind, entry, _previous: seen.append(
            (kind, json.loads(entry.value)["identity"] if kind == "PUT" else None)
        ),
    )
    try:
        web = a.endpoint(1, WEB, learnt=False)
        time.sleep(1)  # a's writer would have written it long since
        assert etcd.keys(ENDPOINTS) == {} and seen == [], "not published while waiting"
        a.learn(web, 1, WEB)
        identity = a.identity(web)
        wanted = _in_cache(b, a, web, identity)
        wait_for(lambda: _cached(b, a, web) == wanted, 5, "a's endpoint cached on b")
        wait_for(lambda: seen == [("PUT", identity)], 5, "one write, with the identity")
        assert b.datapath.upserts == 2

        a.plane.endpoint_aliases(web, ["0123456789ab"])
        records = b.plane.cluster.remote_endpoints.records
        wait_for(lambda: records()[0].aliases == ["0123456789ab"], 5, "the new name on b")
        assert seen == [("PUT", identity), ("PUT", identity)]
        assert b.datapath.upserts == 2, "the ipcache has it already"
    finally:
        watch.stop()
        kv.close()


def test_every_node_routes_the_others_through_its_tunnel(nodes):
    a, b = _start(nodes, "a"), _start(nodes, "b")
    ranges = {n["name"]: [n["ipv6_range"], n["ipv4_range"]] for n in a.api("nodes")}
    assert a.datapath.tunnel == ADDRESS["a"] and b.datapath.tunnel == ADDRESS["b"]
    wait_for(lambda: a.datapath.remote_nodes == {ADDRESS["b"]: ranges["b"]}, 5, "b on a")
    c = _start(nodes, "c")
    wait_for(lambda: c.datapath.remote_nodes.keys() == {ADDRESS["a"], ADDRESS["b"]}, 5, "c")
    wait_for(lambda: ADDRESS["c"] in b.datapath.remote_nodes, 5, "c on b")
    assert c.datapath.remote_nodes[ADDRESS["a"]] == ranges["a"]


def test_a_record_the_datapath_refuses_stops_no_other(nodes, etcd):
    """A node record with an IPv6 node address, an endpoint record with an identity no VNI
    holds: each is logged and skipped, and the records listed after them still arrive."""
    etcd.put(
        f"{PREFIX}nodes/aaa",
        json.dumps(
            {
                "name": "aaa",
                "node_id": 9,
                "address": "fd00::9",
                "ipv6_range": "fd00:9::/112",
                "ipv4_range": "10.213.144.0/20",
            }
        ),
    )
    record = {
        "node": "aaa",
        "node_address": "198.51.100.9",
        "endpoint_id": 1,
        "ipv6": "fd00:9::5",
        "ipv4": "10.213.144.5",
        "identity": 1 << 24,
    }
    etcd.put(f"{ENDPOINTS}aaa/1", json.dumps(record))
    a, b = _start(nodes, "a"), _start(nodes, "b")
    web = b.endpoint(1, WEB)
    wait_for(lambda: a.datapath.remote_nodes.keys() == {ADDRESS["b"]}, 5, "b routed on a")
    wait_for(lambda: _cached(a, b, web) == _in_cache(a, b, web, b.identity(web)), 5, "web")
    assert "fd00:9::5" not in a.datapath.ipcache


def test_a_node_whose_lease_expires_takes_its_endpoints_and_routes_along(nodes, etcd):
    a, c = _start(nodes, "a"), _start(nodes, "c")
    gone = c.endpoint(1, WEB)
    wanted = _in_cache(a, c, gone, c.identity(gone))
    wait_for(lambda: a.datapath.ipcache == wanted, 5, "c's endpoint cached on a")
    wait_for(lambda: ADDRESS["c"] in a.datapath.remote_nodes, 5, "c routed")
    nodes.stop("c")  # killed: nothing said to etcd
    assert a.datapath.ipcache == wanted, "c's endpoints stay while its lease lives"
    wait_for(lambda: a.datapath.ipcache == {}, LEASE_TTL + 5, "c's endpoints gone with its lease")
    # The node record goes in the same expiry, seen by a watch of its own.
    wait_for(lambda: a.datapath.remote_nodes == {}, 5, "c not routed any more")
    assert etcd.keys(ENDPOINTS) == {}


def test_a_restarted_node_republishes_without_renumbering_or_a_gap(nodes, etcd):
    a, b = _start(nodes, "a"), _start(nodes, "b")
    kept, lost = b.endpoint(1, WEB), b.endpoint(2, DB)
    wanted = {**_in_cache(a, b, kept, b.identity(kept)), **_in_cache(a, b, lost, b.identity(lost))}
    wait_for(lambda: a.datapath.ipcache == wanted, 5, "b's endpoints cached on a")
    before = {ep: b.plane.endpoint_info(ep) for ep in (kept, lost)}
    created = etcd.entry(_key(b, kept)).create_revision

    datapath = nodes.stop("b").datapath
    # The container of `lost` went while b's driver was down: its veth with it.
    del datapath.endpoints[before[lost].host_ifname]
    b = _start(nodes, "b", datapath=datapath)
    assert b.plane.endpoint_info(kept) == before[kept], "same numeric id, addresses, identity"
    assert b.plane.endpoint_info(lost) is None
    wait_for(lambda: _key(b, kept) in etcd.keys(ENDPOINTS), 5, "kept republished")
    wait_for(lambda: len(etcd.keys(ENDPOINTS)) == 1, 5, "lost withdrawn")
    entry = etcd.entry(_key(b, kept))
    assert entry.create_revision == created, "never withdrawn in between"
    assert entry.lease == b.plane.cluster.session.lease, "under the new lease"
    ep = before[kept]
    wait_for(lambda: set(a.datapath.ipcache) == {ep.ipv6, ep.ipv4}, 5, "lost gone from a")
    # The old lease runs out: what was put back under the new one stays.
    time.sleep(LEASE_TTL + 1)
    assert etcd.entry(_key(b, kept)).create_revision == created
    assert set(a.datapath.ipcache) == {ep.ipv6, ep.ipv4}
    assert b.datapath.ipcache == {}


def test_etcd_away_an_endpoint_is_published_when_it_answers(nodes, etcd):
    a, b = _start(nodes, "a"), _start(nodes, "b")
    etcd.stop()
    waiting = a.endpoint(1, WEB)
    assert a.identity(waiting) == INIT_ID
    etcd.start()
    wait_for(lambda: a.identity(waiting) != INIT_ID, 15, "identity once etcd answers")
    wanted = _in_cache(b, a, waiting, a.identity(waiting))
    wait_for(lambda: b.datapath.ipcache == wanted, 10, "published and cached")


def test_etcd_restarted_the_ipcache_keeps_its_entries_and_converges(nodes, etcd):
    a, b = _start(nodes, "a"), _start(nodes, "b")
    first = b.endpoint(1, WEB)
    wanted = _in_cache(a, b, first, b.identity(first))
    wait_for(lambda: a.datapath.ipcache == wanted, 5, "b's endpoint cached on a")
    etcd.stop()
    time.sleep(LEASE_TTL)
    assert a.datapath.ipcache == wanted, "while etcd is away, the ipcache keeps what it has"
    second = b.endpoint(2, WEB)  # an identity b holds: made without etcd, published later
    etcd.start()
    wanted.update(_in_cache(a, b, second, b.identity(second)))
    wait_for(lambda: a.datapath.ipcache == wanted, 15, "both cached once etcd is back")
    assert sorted(etcd.keys(ENDPOINTS)) == sorted([_key(b, first), _key(b, second)])

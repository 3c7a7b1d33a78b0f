"""etcd stopped and started again with its data: what needs it waits with a clear message,
what a node holds keeps working, and everything converges with nothing lost or doubled."""

import logging

import pytest

from datapath.abi import INIT_ID
from driver.control.cluster import KvstoreUnavailable
from driver.control.cluster.identities import IDS, REFS
from driver.control.cluster.nodes import NODE_IDS, NODES

from .conftest import LEASE_TTL, wait_for

WEB, DB, NEW = {"app": "web"}, {"app": "db"}, {"app": "new"}


def _names(node) -> list[str]:
    return [n["name"] for n in node.api("nodes")]


def _connected(node) -> bool:
    return node.api("status")["cluster"]["connected"]


def test_etcd_away_and_back(nodes, etcd, caplog):
    a = nodes.start("a")
    web = a.identity(a.endpoint(1, WEB))
    db_endpoint = a.endpoint(2, DB)
    before = {prefix: etcd.keys(prefix) for prefix in (NODE_IDS, IDS)}

    etcd.stop()
    with caplog.at_level(logging.ERROR):
        again = a.endpoint(3, WEB)
        waiting = a.endpoint(4, NEW)
    assert a.identity(again) == web, "an identity the node holds needs no etcd"
    assert a.identity(waiting) == INIT_ID, "a new one waits for etcd"
    message = next(r.getMessage() for r in caplog.records if "waits for its identity" in r.message)
    assert etcd.url in message and "cannot allocate a new identity" in message
    with pytest.raises(KvstoreUnavailable, match=f"{etcd.url}.*cannot allocate a new identity"):
        a.plane.regeneration.identities.allocator.allocate('{"app": "x"}')
    wait_for(lambda: not _connected(a), LEASE_TTL + 5, "status says etcd is away")
    assert "pycilium_kvstore_connected 0.0" in a.client.get("/metrics").get_data(as_text=True)
    a.remove(db_endpoint)  # its release waits for etcd

    etcd.start()
    wait_for(lambda: a.identity(waiting) != INIT_ID, 15, "the waiting endpoint got an identity")
    assert _connected(a)
    new = a.identity(waiting)
    wait_for(lambda: len(etcd.keys(IDS)) == 2, 5, "db's identity released late")
    assert etcd.keys(NODE_IDS) == before[NODE_IDS]
    assert etcd.keys(IDS) == {
        f"{IDS}{web}": before[IDS][f"{IDS}{web}"],
        f"{IDS}{new}": '{"app": "new", "io.pycilium.network": "app"}',
    }
    assert sorted(etcd.keys(REFS).values()) == sorted([str(web), str(new)])
    assert list(etcd.keys(NODES)) == [NODES + "a"]
    b = nodes.start("b")
    assert b.identity(b.endpoint(1, NEW)) == new
    wait_for(lambda: _names(a) == ["a", "b"], 5, "a's watch of the nodes resumed")


def test_a_driver_does_not_start_without_etcd(nodes, etcd):
    etcd.stop()
    with pytest.raises(KvstoreUnavailable, match=f"{etcd.url}.*cannot join the cluster"):
        nodes.start("a")

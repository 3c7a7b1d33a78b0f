"""Identities across nodes sharing one etcd: one number per label set cluster-wide,
released with the last node that used it."""

import json

from datapath.abi import FIRST_ENDPOINT_IDENTITY
from driver.control.cluster.identities import IDS, REFS, labels_hash
from driver.control.identities import ENDPOINT_IDENTITY_LIMIT, NETWORK_LABEL

from .conftest import wait_for

WEB = {"app": "web"}
DB = {"app": "db"}


def _key(labels: dict) -> str:
    return json.dumps({**labels, NETWORK_LABEL: "app"}, sort_keys=True)


def test_same_labels_same_identity_on_every_node(nodes, etcd):
    a, b, c = (nodes.start(name) for name in ("a", "b", "c"))
    web_a = a.identity(a.endpoint(1, WEB))
    web_b = b.identity(b.endpoint(1, WEB))
    db_c = c.identity(c.endpoint(1, DB))
    web_c = c.identity(c.endpoint(2, WEB))
    assert web_a == web_b == web_c
    assert db_c != web_a
    assert all(FIRST_ENDPOINT_IDENTITY <= n < ENDPOINT_IDENTITY_LIMIT for n in (web_a, db_c))
    assert etcd.keys(IDS) == {f"{IDS}{web_a}": _key(WEB), f"{IDS}{db_c}": _key(DB)}
    refs = etcd.keys(REFS + labels_hash(_key(WEB)) + "/")
    assert refs == {f"{REFS}{labels_hash(_key(WEB))}/{n}": str(web_a) for n in "abc"}
    listed = {i["identity"]: i["labels"] for i in c.api("identities") if i["kind"] == "endpoint"}
    assert listed == {web_a: {**WEB, NETWORK_LABEL: "app"}, db_c: {**DB, NETWORK_LABEL: "app"}}


def test_an_identity_goes_with_the_last_node_that_uses_it(nodes, etcd):
    a, b = nodes.start("a"), nodes.start("b")
    on_a, on_b = a.endpoint(1, WEB), b.endpoint(1, WEB)
    number = a.identity(on_a)
    a.remove(on_a)
    assert etcd.keys(IDS) == {f"{IDS}{number}": _key(WEB)}, "b still uses it"
    assert a.plane.store.get_identity(number) is None
    b.remove(on_b)
    assert etcd.keys(IDS) == {}
    assert etcd.keys(REFS) == {}


def test_a_starting_node_collects_identities_nobody_refers_to(nodes, etcd):
    """Their last user's lease expired while no node was watching."""
    etcd.put(IDS + "4242", _key({"app": "gone"}))
    nodes.start("a")
    wait_for(lambda: etcd.keys(IDS) == {}, 5, "the orphan identity collected")

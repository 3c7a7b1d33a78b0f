"""Identities across nodes sharing one etcd: one number per label set cluster-wide,
released with the last node that used it."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

from datapath.abi import FIRST_ENDPOINT_IDENTITY
from driver.control.cluster.identities import IDS, INDEX, REFS, ClusterAllocator, labels_hash
from driver.control.cluster.kvstore import KvStore
from driver.control.cluster.session import Session
from driver.control.identities import ENDPOINT_IDENTITY_LIMIT, NETWORK_LABEL

from .conftest import LEASE_TTL, wait_for

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
    index = {INDEX + labels_hash(_key(WEB)): str(web_a), INDEX + labels_hash(_key(DB)): str(db_c)}
    assert etcd.keys(INDEX) == index
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
    assert etcd.keys(INDEX) == {INDEX + labels_hash(_key(WEB)): str(number)}
    b.remove(on_b)
    assert etcd.keys(IDS) == {}
    assert etcd.keys(INDEX) == {}
    assert etcd.keys(REFS) == {}


def test_a_starting_node_collects_identities_nobody_refers_to(nodes, etcd):
    """Their last user's lease expired while no node was watching."""
    etcd.put(IDS + "4242", _key({"app": "gone"}))
    nodes.start("a")
    wait_for(lambda: etcd.keys(IDS) == {}, 5, "the orphan identity collected")


def test_the_index_names_each_identity_and_goes_with_it(nodes, etcd):
    """One read finds a label set's number: the index key is written with the id key and
    deleted with it."""
    a = nodes.start("a")
    on_a = a.endpoint(1, WEB)
    number = a.identity(on_a)
    assert etcd.keys(INDEX) == {INDEX + labels_hash(_key(WEB)): str(number)}
    a.remove(on_a)
    assert etcd.keys(IDS) == {}
    assert etcd.keys(INDEX) == {}


class _Meeting:
    """A KvStore of one node whose first transaction waits for the other node's, so both
    decide from the same etcd before either writes."""

    def __init__(self, url: str, barrier: threading.Barrier):
        self._kv = KvStore([url])
        self._barrier = barrier
        self._met = False

    def txn_else_get(self, *args):
        if not self._met:
            self._met = True
            self._barrier.wait(timeout=10)
        return self._kv.txn_else_get(*args)

    def __getattr__(self, name):
        return getattr(self._kv, name)


def _racing_allocators(etcd, count: int = 2) -> list[ClusterAllocator]:
    barrier = threading.Barrier(count)
    allocators = []
    for k in range(count):
        kv = _Meeting(etcd.url, barrier)
        session = Session(kv, 30)
        first, limit = FIRST_ENDPOINT_IDENTITY, ENDPOINT_IDENTITY_LIMIT
        allocators.append(ClusterAllocator(kv, session, f"n{k}", first, limit))
    return allocators


def _race(allocators: list[ClusterAllocator], keys: list[str]) -> list[int]:
    try:
        with ThreadPoolExecutor(len(allocators)) as pool:
            pairs = zip(allocators, keys, strict=True)
            return list(pool.map(lambda ak: ak[0].allocate(ak[1]), pairs))
    finally:
        for allocator in allocators:
            allocator.close()
            allocator.kv.close()


def test_nodes_that_allocate_the_same_labels_at_once_get_one_number(etcd):
    """Both try to create a number for the labels at once: the loser's transaction fails
    on the index (and the winner's reference) and it takes the winner's."""
    key = _key(WEB)
    numbers = _race(_racing_allocators(etcd), [key, key])
    assert numbers[0] == numbers[1]
    assert etcd.keys(IDS) == {f"{IDS}{numbers[0]}": key}
    assert etcd.keys(INDEX) == {INDEX + labels_hash(key): str(numbers[0])}
    assert set(etcd.keys(REFS + labels_hash(key) + "/").values()) == {str(numbers[0])}


def _first(number: int, free):
    """A _free that picks number the first time, then as it would."""
    picks = iter([number])
    return lambda taken: next(picks, None) or free(taken)


def test_nodes_that_pick_the_same_number_at_once_give_it_to_one_label_set(etcd):
    allocators = _racing_allocators(etcd)
    for allocator in allocators:
        allocator._free = _first(4242, allocator._free)
    numbers = _race(allocators, [_key(WEB), _key(DB)])
    assert 4242 in numbers and numbers[0] != numbers[1]
    assert etcd.keys(IDS) == {f"{IDS}{numbers[0]}": _key(WEB), f"{IDS}{numbers[1]}": _key(DB)}
    assert etcd.keys(INDEX) == {
        INDEX + labels_hash(_key(WEB)): str(numbers[0]),
        INDEX + labels_hash(_key(DB)): str(numbers[1]),
    }


def test_identities_written_before_the_index_keep_their_numbers(nodes, etcd):
    """An etcd of an older version: id keys and references, no index. A starting node
    indexes them, and the labels keep their number on it."""
    web, db = _key(WEB), _key(DB)
    etcd.put(IDS + "4242", web)
    etcd.put(REFS + labels_hash(web) + "/old", "4242")
    etcd.put(IDS + "4343", db)
    etcd.put(REFS + labels_hash(db) + "/old", "4343")
    a = nodes.start("a")
    assert etcd.keys(INDEX) == {INDEX + labels_hash(web): "4242", INDEX + labels_hash(db): "4343"}
    assert a.identity(a.endpoint(1, WEB)) == 4242


def test_an_index_that_does_not_hold_gives_no_wrong_number(nodes, etcd):
    """An index naming a number that now means other labels (written by hand, or left by
    an older version's release) is replaced, not trusted."""
    web, db = _key(WEB), _key(DB)
    etcd.put(IDS + "4242", db)
    etcd.put(REFS + labels_hash(db) + "/old", "4242")
    etcd.put(INDEX + labels_hash(web), "4242")
    a = nodes.start("a")
    number = a.identity(a.endpoint(1, WEB))
    assert number != 4242
    assert etcd.keys(IDS) == {f"{IDS}4242": db, f"{IDS}{number}": web}
    assert etcd.keys(INDEX) == {
        INDEX + labels_hash(web): str(number),
        INDEX + labels_hash(db): "4242",
    }


def test_a_restarted_node_keeps_its_number_even_if_the_cluster_dropped_it(nodes, etcd):
    """Its lease expired while it was down and a node collected the identity: the restart
    puts back the id key and its index with the number it had."""
    a, b = nodes.start("a"), nodes.start("b")
    number = a.identity(a.endpoint(1, WEB))
    datapath = nodes.stop("a").datapath
    wait_for(lambda: etcd.keys(IDS) == {}, LEASE_TTL + 5, "b collected a's identity")
    assert etcd.keys(INDEX) == {}
    nodes.start("a", datapath=datapath)
    assert etcd.keys(IDS) == {f"{IDS}{number}": _key(WEB)}
    assert etcd.keys(INDEX) == {INDEX + labels_hash(_key(WEB)): str(number)}
    assert b.identity(b.endpoint(1, WEB)) == number

"""Other nodes' identities as peers of this node's rules: which ones count (IdentityUse and the
watch callbacks of RemoteIdentities, without etcd), and that regeneration adds and removes
their keys where rules select them and nowhere else, equal to a full recomputation."""

import json
import random
import threading

import pytest

from datapath import DatapathError, PolicyKey
from datapath.abi import FIRST_ENDPOINT_IDENTITY, INIT_ID
from driver.control.cluster.endpoints import ENDPOINTS
from driver.control.cluster.identities import IDS
from driver.control.cluster.kvstore import Entry
from driver.control.cluster.remote_identities import IdentityUse, RemoteIdentities
from driver.control.policy import Identity, repository
from driver.control.policy.compute import resolve
from driver.control.policy.model import NETWORK_LABEL

from .test_regeneration import WEB_POLICY, Host, policy_writes, random_step

REMOTE = 50_000  # remote identity numbers here: far above what the local allocator gives


@pytest.fixture
def host(tmp_path):
    host = Host(tmp_path)
    yield host
    host.store.close()


def expected(host, remote: dict[int, dict]) -> dict:
    """Every endpoint's policy from scratch, with the remote identities among the peers."""
    known = {i.identity: Identity(i.identity, i.labels) for i in host.store.identities("endpoint")}
    for number, labels in remote.items():
        known.setdefault(number, Identity(number, labels))
    cidrs = {i.labels["cidr"]: i.identity for i in host.store.identities("cidr")}
    found = {}
    for ep in host.store.endpoints():
        if ep.identity == INIT_ID:
            continue
        result = host.regeneration.policy.compute(
            Identity(ep.identity, ep.labels), known.values(), cidrs, host.regeneration.mode
        )
        keys = {PolicyKey(*k) for k in result.keys}
        found[ep.host_ifname] = (result.ingress_enforced, result.egress_enforced, keys)
    return found


def test_a_remote_identity_is_written_only_to_the_endpoints_whose_rules_select_it(host):
    host.regeneration.import_rules([(WEB_POLICY, "web.yaml")])
    web = [host.add("a", {"app": "web", "replica": str(i)}) for i in range(5)]
    for i in range(30):
        host.add("b", {"app": "other", "replica": str(i)})
    host.datapath.take()
    # A client on another node, on a network none of these endpoints is on.
    client = {REMOTE: {"app": "client", NETWORK_LABEL: "c"}}
    host.regeneration.set_remote(client)
    assert sorted(policy_writes(host.datapath.take())) == sorted(map(host.ifname, web))
    for ep in web:
        assert PolicyKey(REMOTE, 0, 0, 0) in host.datapath.policies[host.ifname(ep)][2]
    assert host.datapath.policies == expected(host, client)

    host.regeneration.set_remote({REMOTE + 1: {"app": "db", NETWORK_LABEL: "c"}})
    assert sorted(policy_writes(host.datapath.take())) == sorted(map(host.ifname, web))
    assert host.datapath.policies == expected(host, {}) == host.expected()


def test_a_remote_identity_is_evaluated_alone_once_per_set_of_selecting_rules(host, monkeypatch):
    """Its arrival costs one computation with it as the only peer, not a recomputation
    against every identity of the cluster, and one for all the local identities that the
    same rules select (with ingress enforced); an unruled one (network isolation admits
    itself too) has its own."""
    host.regeneration.import_rules([(WEB_POLICY, "web.yaml")])
    for i in range(20):
        host.add("a", {"app": "web", "replica": str(i)})
    host.add("a", {"app": "unruled"})
    host.regeneration.set_remote({REMOTE + i: {"app": "other", "n": str(i)} for i in range(50)})
    peers_seen = []

    def counting(identity, selected, peers, mode):
        peers_seen.append(sorted(peers.endpoints))
        return resolve(identity, selected, peers, mode)

    monkeypatch.setattr(repository, "resolve", counting)
    remote = dict(host.regeneration.remote)
    remote[REMOTE + 99] = {"app": "client", NETWORK_LABEL: "a"}
    host.regeneration.set_remote(remote)
    assert peers_seen == [[REMOTE + 99]] * 2
    assert host.datapath.policies == expected(host, remote)


def test_a_remote_identity_on_a_network_is_admitted_by_its_unruled_endpoints(host):
    """Without ingress rules a network admits its own containers, those of other nodes too."""
    on_a = [host.add("a", {"app": "web", "replica": str(i)}) for i in range(3)]
    host.add("b", {"app": "web"})
    host.datapath.take()
    remote = {REMOTE: {"app": "db", NETWORK_LABEL: "a"}}
    host.regeneration.set_remote(remote)
    assert sorted(policy_writes(host.datapath.take())) == sorted(map(host.ifname, on_a))
    assert host.datapath.policies == expected(host, remote)


def test_an_identity_this_node_has_too_changes_nothing(host):
    ep = host.add("a", {"app": "web"})
    identity = host.store.get_endpoint(ep).identity
    labels = host.store.get_identity(identity).labels
    host.datapath.take()
    host.regeneration.set_remote({identity: labels})
    assert host.datapath.take() == []
    assert [i.id for i in host.regeneration.known()] == [identity]
    host.remove(ep)
    # Its last local endpoint went: the identity stays a peer while the other node has it.
    assert [i.id for i in host.regeneration.known()] == [identity]


@pytest.mark.parametrize("seed", range(8))
def test_incremental_result_with_remote_identities_equals_a_full_recomputation(host, seed):
    rng = random.Random(seed)
    remote: dict[int, dict] = {}
    values = {"app": ["web", "db", "client"], NETWORK_LABEL: ["a", "b", "c"]}
    for step in range(60):
        if rng.random() < 0.3:
            number = REMOTE + rng.randrange(6)
            if number in remote:
                del remote[number]
            else:
                remote[number] = {k: rng.choice(v) for k, v in values.items()}
            host.regeneration.set_remote(remote)
        else:
            random_step(host, rng)
        assert host.datapath.policies == expected(host, remote), f"seed {seed} step {step}"


def test_identity_use_counts_endpoints_and_needs_labels():
    use = IdentityUse()
    use.set_endpoints({"k1": ("a", REMOTE), "k2": ("b", REMOTE)})
    assert use.identities() == {}, "no labels known yet"
    use.set_labels({REMOTE: {"app": "web"}, REMOTE + 1: {"app": "db"}})
    assert use.identities() == {REMOTE: {"app": "web"}}
    assert use.nodes() == {REMOTE: ["a", "b"]}
    # What each call returns: whether identities() may have changed (the trigger's pull).
    assert use.endpoint("k3", ("a", REMOTE + 1)), "an identity came"
    assert not use.endpoint("k1", None), "REMOTE keeps a user"
    assert not use.endpoint("k3", ("a", REMOTE + 1)), "written again, or a new name"
    assert use.identities() == {REMOTE: {"app": "web"}, REMOTE + 1: {"app": "db"}}
    assert use.endpoint("k2", ("b", REMOTE + 1)), "relabelled: REMOTE loses its last user"
    assert use.identities() == {REMOTE + 1: {"app": "db"}}
    assert use.nodes() == {REMOTE + 1: ["a", "b"]}
    assert not use.label(REMOTE + 2, {"app": "new"}), "no endpoint has it yet"
    assert not use.label(REMOTE + 1, {"app": "db"}), "the labels it had"
    assert use.label(REMOTE + 1, None)
    assert use.identities() == {}
    assert use.endpoint("k4", ("c", REMOTE + 2)), "the labels noted before come with it"
    assert use.identities() == {REMOTE + 2: {"app": "new"}}


def _record(node: str, number: int, identity: int) -> Entry:
    value = json.dumps({"node": node, "identity": identity})
    return Entry(f"{ENDPOINTS}{node}/{number}", value, 1, 1, 0)


def _id_key(number: int, labels: dict) -> Entry:
    return Entry(f"{IDS}{number}", json.dumps(labels, sort_keys=True), 1, 1, 0)


def test_remote_identities_tell_changes_only_and_skip_this_nodes_own():
    told = []
    remote = RemoteIdentities(None, "b", threading.RLock(), told.append)
    remote._reset_labels([_id_key(REMOTE, {"app": "web"}), _id_key(FIRST_ENDPOINT_IDENTITY, {})])
    remote._reset_endpoints([_record("b", 1, FIRST_ENDPOINT_IDENTITY)])
    remote.tell()
    assert told == [], "this node's own endpoint is not remote"
    remote._endpoint_event("PUT", _record("a", 1, REMOTE), None)
    remote.tell()
    remote._endpoint_event("PUT", _record("a", 2, REMOTE), None)
    remote._endpoint_event("PUT", _record("a", 3, INIT_ID), None)
    remote.tell()
    assert told == [{REMOTE: {"app": "web"}}], "once, for the first endpoint"
    remote._endpoint_event("DELETE", _record("a", 1, REMOTE), None)
    remote.tell()
    assert len(told) == 1
    remote._endpoint_event("DELETE", _record("a", 2, REMOTE), None)
    remote.tell()
    assert told[-1] == {}, "the last one takes it away"
    assert remote.records() == []


def test_a_burst_of_events_is_told_once_with_all_of_them():
    told = []
    remote = RemoteIdentities(None, "b", threading.RLock(), told.append)
    remote._reset_labels([])
    remote._reset_endpoints([])
    for n in range(20):
        remote._label_event("PUT", _id_key(REMOTE + n, {"idx": str(n)}), None)
        remote._endpoint_event("PUT", _record("a", n, REMOTE + n), None)
    remote._endpoint_event("DELETE", _record("a", 7, REMOTE + 7), None)
    remote.tell()
    wanted = {REMOTE + n: {"idx": str(n)} for n in range(20) if n != 7}
    assert told == [wanted]


def test_the_trigger_tells_what_the_watches_noted():
    told = threading.Event()
    remote = RemoteIdentities(None, "b", threading.RLock(), lambda now: told.set())
    remote.trigger.start()  # what start() does before it opens the watches
    try:
        remote._reset_labels([_id_key(REMOTE, {"app": "web"})])
        remote._endpoint_event("PUT", _record("a", 1, REMOTE), None)
        assert told.wait(5), "the trigger did not tell"
    finally:
        remote.close()
    assert not remote.trigger.alive()


def test_remote_identities_learn_labels_that_come_after_the_endpoint():
    told = []
    remote = RemoteIdentities(None, "b", threading.RLock(), told.append)
    remote._reset_labels([])
    remote._endpoint_event("PUT", _record("a", 1, REMOTE), None)
    remote.tell()
    assert told == []
    remote._label_event("PUT", _id_key(REMOTE, {"app": "web"}), None)
    remote.tell()
    assert told == [{REMOTE: {"app": "web"}}]
    assert remote.records() == [
        {
            "identity": REMOTE,
            "kind": "remote",
            "key": '{"app": "web"}',
            "labels": {"app": "web"},
            "nodes": ["a"],
        }
    ]
    remote._label_event("DELETE", Entry(f"{IDS}{REMOTE}", "", 1, 1, 0), None)
    remote.tell()
    assert told[-1] == {}


def test_a_datapath_refusal_is_logged_not_raised_into_the_watch(caplog):
    def refuse(_identities):
        raise DatapathError("policy map is full")

    remote = RemoteIdentities(None, "b", threading.RLock(), refuse)
    remote._reset_labels([_id_key(REMOTE, {"app": "web"})])
    remote._endpoint_event("PUT", _record("a", 1, REMOTE), None)
    remote.tell()
    assert "policy map is full" in caplog.text

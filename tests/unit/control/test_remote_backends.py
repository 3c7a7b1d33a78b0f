"""Selector services' view of other nodes' endpoints (cluster/services.py, RemoteBackends):
what the watches note, and when they pull the trigger whose run syncs the services under
the control plane's lock."""

import json
import threading

from datapath.abi import FIRST_ENDPOINT_IDENTITY
from driver.control.cluster.endpoints import ENDPOINTS
from driver.control.cluster.identities import IDS
from driver.control.cluster.kvstore import Entry
from driver.control.cluster.services import RemoteBackends

WEB = FIRST_ENDPOINT_IDENTITY + 7


def _record(number: int, identity: int, aliases=()) -> Entry:
    value = {
        "node": "a",
        "identity": identity,
        "ipv6": f"fd00::{number}",
        "ipv4": f"10.0.0.{number}",
        "aliases": list(aliases),
    }
    return Entry(f"{ENDPOINTS}a/{number}", json.dumps(value), 1, 1, 0)


def _id_key(number: int, labels: dict) -> Entry:
    return Entry(f"{IDS}{number}", json.dumps(labels, sort_keys=True), 1, 1, 0)


def test_only_a_change_in_what_selector_services_see_pulls_the_trigger():
    remote = RemoteBackends(None, "b", None, threading.RLock())
    pulls = []
    remote.trigger.pull = lambda: pulls.append(1)
    remote._reset_labels([])
    remote._reset_endpoints([])
    assert len(pulls) == 2, "a listing always does"

    remote._labels_event("PUT", _id_key(WEB, {"app": "web"}), None)
    assert len(pulls) == 2, "a new identity no record names yet"
    remote._endpoint_event("PUT", _record(1, WEB), None)
    assert len(pulls) == 3 and remote.endpoints() == [({"app": "web"}, "fd00::1", "10.0.0.1")]
    remote._endpoint_event("PUT", _record(1, WEB, aliases=["0123456789ab"]), None)
    remote._endpoint_event("PUT", _record(1, WEB, aliases=["0123456789ab"]), None)
    assert len(pulls) == 3, "a new name, or the record written again"
    remote._labels_event("DELETE", _id_key(WEB, {}), None)
    assert len(pulls) == 4 and remote.endpoints() == [], "the labels of a named identity"
    remote._endpoint_event("DELETE", _record(1, WEB), None)
    assert len(pulls) == 5
    remote._labels_event("PUT", _id_key(WEB, {"app": "web"}), None)
    assert len(pulls) == 5, "nobody has it any more"

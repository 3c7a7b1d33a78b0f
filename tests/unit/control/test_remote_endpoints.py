"""The ipcache watch (cluster/endpoints.py's RemoteEndpoints) on its own: an entry the
datapath refused is written again when its record comes again, although the record is
unchanged or changed only in its names (events that otherwise write nothing)."""

import json
import threading

from datapath import DatapathError
from datapath.abi import FIRST_ENDPOINT_IDENTITY
from driver.control.cluster.endpoints import ENDPOINTS, RemoteEndpoints
from driver.control.cluster.kvstore import Entry

from ..fakes import FakeDatapath

IDENTITY = FIRST_ENDPOINT_IDENTITY + 7


class FullIpcache(FakeDatapath):
    """An ipcache that refuses every write while full."""

    full = False

    def ipcache_upsert(self, address, identity, node_address):
        if self.full:
            raise DatapathError("ipcache full")
        super().ipcache_upsert(address, identity, node_address)


class NoWatch:
    def watch(self, prefix, reset, event):
        return None


def record(aliases=()) -> Entry:
    value = {
        "node": "a",
        "node_address": "192.0.2.1",
        "endpoint_id": 1,
        "ipv6": "fd00::1",
        "ipv4": "10.0.0.1",
        "identity": IDENTITY,
        "container_name": "c1",
        "aliases": list(aliases),
        "network_id": "n",
        "network_name": "app",
        "ports": [],
    }
    return Entry(f"{ENDPOINTS}a/1", json.dumps(value), 1, 1, 0)


def refused_once() -> tuple[FullIpcache, RemoteEndpoints]:
    datapath = FullIpcache()
    remote = RemoteEndpoints(NoWatch(), "b", datapath, threading.RLock())
    remote._reset([])
    datapath.full = True
    remote._event("PUT", record(), None)
    assert datapath.ipcache == {}
    datapath.full = False  # other endpoints went: there is room again
    return datapath, remote


def test_a_refused_entry_is_written_when_its_record_is_written_again_unchanged():
    datapath, remote = refused_once()
    remote._event("PUT", record(), None)  # the other node's full round
    assert datapath.ipcache == {a: (IDENTITY, "192.0.2.1") for a in ("fd00::1", "10.0.0.1")}


def test_a_refused_entry_is_written_when_only_its_names_change():
    datapath, remote = refused_once()
    remote._event("PUT", record(aliases=["web"]), None)  # its container started
    assert set(datapath.ipcache) == {"fd00::1", "10.0.0.1"}

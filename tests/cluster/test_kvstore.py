"""Watches of one prefix share one etcd stream: each follower gets the listing, then every
change in order, on its own thread; one that comes later starts from the listing as it is
then; one whose callback fails gets the listing again; the last one to stop ends the
stream. A transaction that fails returns the key its caller would have read, and requests
of two threads do not wait for each other. A leased key is written only when what is
wanted of it changes."""

import base64
import http.server
import json
import threading
import time

from driver.control.cluster.kvstore import KvStore, absent, holds, put
from driver.control.cluster.leased import LeasedKeys
from driver.control.cluster.session import Session

from .conftest import wait_for

PREFIX = "pycilium/v1/test/"


class Follower:
    def __init__(self, fail_on: str | None = None):
        self.state: dict[str, str] = {}
        self.resets = 0
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def reset(self, entries) -> None:
        with self.lock:
            self.resets += 1
            self.state = {e.key: e.value for e in entries}

    def event(self, kind, entry, _previous) -> None:
        if entry.value == self.fail_on:
            self.fail_on = None  # once
            raise RuntimeError("a follower's bug")
        with self.lock:
            if kind == "DELETE":
                self.state.pop(entry.key, None)
            else:
                self.state[entry.key] = entry.value


def test_followers_of_a_prefix_share_one_stream_and_see_the_same(etcd):
    kv = KvStore([etcd.url])
    etcd.put(PREFIX + "a", "1")
    first, failing, late = Follower(), Follower(fail_on="3"), Follower()
    watches = [kv.watch(PREFIX, f.reset, f.event) for f in (first, failing)]
    try:
        assert list(kv._streams) == [PREFIX], "one stream for both"
        wait_for(lambda: first.state == failing.state == {PREFIX + "a": "1"}, 5, "listings")
        etcd.put(PREFIX + "b", "2")
        etcd.put(PREFIX + "b", "3")  # the failing follower's callback raises on this one
        kv.delete(PREFIX + "a", "test")
        wanted = {PREFIX + "b": "3"}
        wait_for(lambda: first.state == wanted, 5, "the first follower follows")
        wait_for(lambda: failing.state == wanted, 5, "the failing one gets the listing again")
        assert failing.resets == 2 and first.resets == 1
        watches.append(kv.watch(PREFIX, late.reset, late.event))
        wait_for(lambda: late.state == wanted, 5, "a late follower starts from the listing")
        etcd.put(PREFIX + "c", "4")
        for follower in (first, failing, late):
            wait_for(lambda f=follower: f.state.get(PREFIX + "c") == "4", 5, "all follow")
        assert len(kv._streams) == 1
        stream = watches[0].stream
        for watch in watches[:-1]:
            watch.stop()
        assert kv._streams == {PREFIX: stream}, "the stream lives while a follower does"
        watches[-1].stop()
        assert kv._streams == {}
        assert not stream._thread.is_alive()
    finally:
        for watch in watches:
            watch.stop()
        kv.close()


def test_a_failed_transaction_returns_the_key_it_was_asked_for(etcd):
    kv = KvStore([etcd.url])
    key = PREFIX + "index"
    try:
        create = ([absent(key)], [put(key, "7")])
        assert kv.txn_else_get(*create, key, "test") == (True, None)
        done, entry = kv.txn_else_get(*create, key, "test")
        assert not done and (entry.key, entry.value) == (key, "7")
        assert kv.txn_else_get([holds(key, "8")], [], key, "test")[0] is False
        kv.delete(key, "test")
        assert kv.txn_else_get([holds(key, "7")], [], key, "test") == (False, None)
    finally:
        kv.close()


class _Gateway(http.server.BaseHTTPRequestHandler):
    """etcd's gateway as far as a range goes; a range of key "slow" answers only when the
    server's `release` is set."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if base64.b64decode(body["key"]) == b"slow":
            self.server.release.wait(10)
        answer = json.dumps({"header": {"revision": "1"}, "kvs": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *_args):
        pass


def test_a_request_does_not_wait_for_another_threads_request():
    """An identity's allocation (under the control plane's lock) must not queue behind a
    publisher's write that etcd is slow to answer."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    server.release = threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kv = KvStore([f"http://127.0.0.1:{server.server_address[1]}"])
    slow = threading.Thread(target=kv.get, args=("slow", "test"))
    try:
        slow.start()
        time.sleep(0.2)  # the slow request is in the server
        started = time.monotonic()
        assert kv.get("fast", "test") is None
        assert time.monotonic() - started < 2, "the request waited for the slow one"
        assert slow.is_alive()
    finally:
        server.release.set()
        slow.join(10)
        kv.close()
        server.shutdown()
        server.server_close()


def test_a_leased_key_set_to_what_it_holds_is_not_written_again(etcd):
    """Each endpoint says its node uses the network: only the first says it to etcd."""
    kv = KvStore([etcd.url])
    keys = LeasedKeys(kv, Session(kv, 30), PREFIX, "test keys")
    try:
        keys.set(PREFIX + "network", "1")
        keys.start()
        wait_for(lambda: etcd.entry(PREFIX + "network") is not None, 5, "written")
        written = etcd.entry(PREFIX + "network").mod_revision
        keys.set(PREFIX + "network", "1")
        keys.set(PREFIX + "later", "1")  # the same writer, in key order: after a rewrite
        wait_for(lambda: etcd.entry(PREFIX + "later") is not None, 5, "the later one")
        assert etcd.entry(PREFIX + "network").mod_revision == written
    finally:
        keys.close()
        kv.close()

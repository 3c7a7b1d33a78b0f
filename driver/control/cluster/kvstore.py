"""A thin wrapper over etcd3gw (etcd's v3 JSON gateway): ranges with their revision,
transactions, leases and prefix watches that resume after etcd comes back.

Every request has a timeout; a failure to reach etcd is a KvstoreUnavailable that names the
endpoints and what cannot happen without them. etcd3gw is imported only here and only when
the kvstore is configured, so the single-host driver never loads it.
"""

import base64
import contextlib
import json
import logging
import queue
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

from driver.errors import DriverError

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 5.0
POOL_SIZE = 32  # connections to one etcd endpoint kept open: the watches' and requests'
# Between attempts to reopen a watch, and the longest wait.
WATCH_RETRY = (0.2, 0.5, 1.0, 2.0)


class KvstoreUnavailable(DriverError):
    """etcd does not answer: the message says which endpoints and what had to wait."""

    status = 503


@dataclass(frozen=True)
class Entry:
    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int


def encode(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def decode(text: str | None) -> str:
    return base64.b64decode(text or "").decode()


def prefix_end(prefix: str) -> str:
    """The first key after every key that starts with prefix (etcd's range_end)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _entry(kv: dict) -> Entry:
    return Entry(
        key=decode(kv["key"]),
        value=decode(kv.get("value")),
        create_revision=int(kv.get("create_revision", 0)),
        mod_revision=int(kv.get("mod_revision", 0)),
        lease=int(kv.get("lease", 0)),
    )


# Transaction parts, in the gateway's JSON form.


def absent(key: str) -> dict:
    return {"key": encode(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}


def none_under(prefix: str) -> dict:
    """No key starts with prefix."""
    return {**absent(prefix), "range_end": encode(prefix_end(prefix))}


def unchanged(entry: Entry) -> dict:
    return {
        "key": encode(entry.key),
        "target": "MOD",
        "result": "EQUAL",
        "mod_revision": entry.mod_revision,
    }


def holds(key: str, value: str) -> dict:
    """The key exists and has this value."""
    return {"key": encode(key), "target": "VALUE", "result": "EQUAL", "value": encode(value)}


def put(key: str, value: str, lease: int = 0) -> dict:
    request = {"key": encode(key), "value": encode(value)}
    if lease:
        request["lease"] = lease
    return {"request_put": request}


def delete(key: str) -> dict:
    return {"request_delete_range": {"key": encode(key)}}


class KvStore:
    """etcd at one of `urls`; each method says in `purpose` what it is for, which the error
    names when etcd cannot be reached."""

    def __init__(self, urls: list[str], timeout: float = REQUEST_TIMEOUT):
        from etcd3gw.client import Etcd3Client
        from etcd3gw.exceptions import Etcd3Exception

        self.urls = urls
        self.timeout = timeout
        self._errors = Etcd3Exception
        self._clients = []
        for url in urls:
            parts = urlsplit(url)
            self._clients.append(
                Etcd3Client(
                    host=parts.hostname,
                    port=parts.port or 2379,
                    protocol=parts.scheme,
                    timeout=timeout,
                    api_path="/v3/",  # etcd 3.4's gateway; the client's default is older
                )
            )
            # Each watch stream (one per prefix, about eight) holds one of the session's
            # connections for its life, and requests from several threads at once take one
            # each: a pool of requests' default 10 would leave few for them.
            self._clients[-1].session.mount(
                f"{parts.scheme}://", requests.adapters.HTTPAdapter(pool_maxsize=POOL_SIZE)
            )
        self._current = 0
        self._streams: dict[str, Stream] = {}  # prefix -> the one stream its watches share
        self._streams_lock = threading.Lock()

    def close(self) -> None:
        for client in self._clients:
            client.session.close()

    def _post(self, path: str, body: dict, purpose: str) -> dict:
        """One request, to the endpoint that answered last, else to the next ones."""
        failures = []
        for step in range(len(self._clients)):
            index = (self._current + step) % len(self._clients)
            client = self._clients[index]
            try:
                # No lock around it: the session's pool is thread-safe, and a request on the
                # path from a Join to policy elsewhere (an identity's allocation, under the
                # control plane's lock) must not queue behind the publishers' writes.
                answer = client.post(client.get_url(path), json=body, timeout=self.timeout)
            except self._errors as exc:
                failures.append(f"{self.urls[index]}: {_short(exc)}")
                continue
            self._current = index
            return answer
        raise KvstoreUnavailable(
            f"etcd is unreachable ({'; '.join(failures)}): cannot {purpose} until it answers"
        )

    def get(self, key: str, purpose: str) -> Entry | None:
        kvs = self._post("/kv/range", {"key": encode(key)}, purpose).get("kvs", [])
        return _entry(kvs[0]) if kvs else None

    def list(self, prefix: str, purpose: str) -> tuple[list[Entry], int]:
        """Every entry under prefix, in key order, and the store's revision they are of."""
        body = {"key": encode(prefix), "range_end": encode(prefix_end(prefix))}
        answer = self._post("/kv/range", body, purpose)
        revision = int(answer["header"]["revision"])
        return [_entry(kv) for kv in answer.get("kvs", [])], revision

    def txn(self, compare: list, success: list, purpose: str) -> bool:
        """Whether every comparison held, so the success requests were carried out."""
        body = {"compare": compare, "success": success, "failure": []}
        return bool(self._post("/kv/txn", body, purpose).get("succeeded"))

    def txn_else_get(
        self, compare: list, success: list, key: str, purpose: str
    ) -> tuple[bool, Entry | None]:
        """txn(), and if a comparison failed, key's entry as of then (None if absent): what
        the caller would have read first, in the same request."""
        failure = [{"request_range": {"key": encode(key)}}]
        body = {"compare": compare, "success": success, "failure": failure}
        answer = self._post("/kv/txn", body, purpose)
        if answer.get("succeeded"):
            return True, None
        kvs = answer["responses"][0]["response_range"].get("kvs", [])
        return False, _entry(kvs[0]) if kvs else None

    def put(self, key: str, value: str, purpose: str, lease: int = 0) -> None:
        self._post("/kv/put", put(key, value, lease)["request_put"], purpose)

    def delete(self, key: str, purpose: str) -> None:
        self._post("/kv/deleterange", {"key": encode(key)}, purpose)

    def grant(self, ttl: int, purpose: str) -> int:
        return int(self._post("/lease/grant", {"TTL": ttl, "ID": 0}, purpose)["ID"])

    def keepalive(self, lease: int) -> int:
        """The lease's new TTL; 0 or less when it has expired."""
        answer = self._post("/lease/keepalive", {"ID": lease}, "keep this node's lease alive")
        return int(answer.get("result", {}).get("TTL", -1))

    def watch(self, prefix: str, on_reset: Callable, on_event: Callable) -> "Watch":
        """Follow prefix: on_reset(entries), then on_event(kind, entry, previous) for each
        change, on a thread of the watch's own. Watches of one prefix share one stream."""
        with self._streams_lock:
            stream = self._streams.get(prefix)
            if stream is None:
                stream = self._streams[prefix] = Stream(self, prefix)
                stream.start()
            watch = Watch(stream, on_reset, on_event)
            watch.start()
        return watch

    def _unwatch(self, watch: "Watch") -> None:
        """The watch stopped: its stream too, if it was the last one on it."""
        with self._streams_lock:
            stream = watch.stream
            if stream.remove(watch) == 0 and self._streams.get(stream.prefix) is stream:
                del self._streams[stream.prefix]
                stream.stop()

    def stream(self, prefix: str, revision: int):
        """The open HTTP stream of a watch of prefix from revision (etcd3gw's session)."""
        client = self._clients[self._current]
        body = {
            "create_request": {
                "key": encode(prefix),
                "range_end": encode(prefix_end(prefix)),
                "start_revision": revision,
                "prev_kv": True,
            }
        }
        return client.session.post(
            client.get_url("/watch"), json=body, stream=True, timeout=(self.timeout, None)
        )


def _interrupt(response) -> None:
    """Wake the thread blocked reading a stream: closing the response alone does not."""
    connection = getattr(response.raw, "_connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    response.close()


def _short(exc: Exception) -> str:
    text = (getattr(exc, "detail_text", None) or str(exc)).strip().splitlines()
    return text[-1][:200] if text else type(exc).__name__


class Stream:
    """One etcd watch of a prefix for every Watch of it in this process: it lists, then
    follows the stream, and keeps the listing up to date (so a Watch that comes later
    starts from it). When the stream breaks (etcd went away) it lists again and every
    Watch gets the new listing once etcd answers, so none misses a change, even one
    compacted away. Each Watch gets what the stream sees in order, through a queue."""

    def __init__(self, kv: KvStore, prefix: str):
        self.kv = kv
        self.prefix = prefix
        self._lock = threading.Lock()  # the listing and the watches; no callback under it
        self._listing: dict[str, Entry] | None = None  # None until the first listing
        self._watches: list[Watch] = []
        self._stop = threading.Event()
        self._response = None
        self._thread = threading.Thread(target=self._run, name=f"watch {prefix}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            _interrupt(response)
        self._thread.join(timeout=5)

    def add(self, watch: "Watch") -> None:
        with self._lock:
            if self._listing is not None:
                watch.queue.put(("reset", self._entries()))
            self._watches.append(watch)

    def remove(self, watch: "Watch") -> int:
        """How many watches are left."""
        with self._lock:
            if watch in self._watches:
                self._watches.remove(watch)
            return len(self._watches)

    def relist(self, watch: "Watch") -> None:
        """The listing again for one watch (whose callback failed)."""
        with self._lock:
            if self._listing is not None:
                watch.queue.put(("reset", self._entries()))

    def _entries(self) -> list[Entry]:
        return sorted(self._listing.values(), key=lambda e: e.key)

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                entries, revision = self.kv.list(self.prefix, f"follow {self.prefix}")
                with self._lock:
                    self._listing = {e.key: e for e in entries}
                    for watch in self._watches:
                        watch.queue.put(("reset", list(entries)))
                self._response = self.kv.stream(self.prefix, revision + 1)
                # stop() sets the flag before it looks for a stream to cut: one of the two
                # sees the other.
                if self._stop.is_set():
                    break
                attempt = 0
                self._follow(self._response)
            except Exception as exc:
                # Whatever broke the stream (etcd away, the stream cut by stop()), the
                # watch lives on until stopped: nobody else would notice it died.
                if self._stop.is_set():
                    break
                expected = (KvstoreUnavailable, requests.RequestException, ValueError)
                if not isinstance(exc, expected):
                    log.exception("watch of %s failed; retrying", self.prefix)
                else:
                    log.warning("watch of %s: %s; retrying", self.prefix, _short(exc))
            finally:
                if self._response is not None:
                    self._response.close()
                    self._response = None
            self._stop.wait(WATCH_RETRY[min(attempt, len(WATCH_RETRY) - 1)])
            attempt += 1

    def _follow(self, response) -> None:
        for line in response.iter_lines():
            if not line.strip():
                continue
            result = json.loads(line).get("result", {})
            if result.get("canceled"):
                raise ValueError(f"etcd cancelled the watch: {result.get('cancel_reason')}")
            events = [
                (
                    event.get("type", "PUT"),
                    _entry(event["kv"]),
                    _entry(event["prev_kv"]) if "prev_kv" in event else None,
                )
                for event in result.get("events", [])
            ]
            with self._lock:
                for kind, entry, _ in events:
                    if kind == "DELETE":
                        self._listing.pop(entry.key, None)
                    else:
                        self._listing[entry.key] = entry
                for watch in self._watches:
                    for event in events:
                        watch.queue.put(("event", *event))


class Watch:
    """One follower of a Stream: on_reset(entries) with the whole listing, then
    on_event(kind, entry, previous) for each change ("PUT" or "DELETE"), on a thread of
    its own, so a follower that waits (for the control plane's lock) holds up no other.
    A callback that fails gets the listing again (on_reset) after a pause, as a broken
    stream does."""

    def __init__(self, stream: Stream, on_reset: Callable, on_event: Callable):
        self.stream = stream
        self.prefix = stream.prefix
        self.on_reset = on_reset
        self.on_event = on_event
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"follow {stream.prefix}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        self.stream.add(self)

    def stop(self) -> None:
        self._stopped.set()
        self.stream.kv._unwatch(self)
        self.queue.put(None)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        failures = 0
        while (item := self.queue.get()) is not None:
            if failures and item[0] != "reset":
                continue  # the listing it waits for covers these
            try:
                if item[0] == "reset":
                    self.on_reset(item[1])
                else:
                    self.on_event(*item[1:])
                failures = 0
            except Exception as exc:
                if isinstance(exc, (KvstoreUnavailable, requests.RequestException, ValueError)):
                    log.warning("follower of %s: %s; retrying", self.prefix, _short(exc))
                else:
                    log.exception("follower of %s failed; retrying", self.prefix)
                if self._stopped.wait(WATCH_RETRY[min(failures, len(WATCH_RETRY) - 1)]):
                    break
                failures += 1
                self.stream.relist(self)

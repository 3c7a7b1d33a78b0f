"""Keys this node keeps in etcd under its lease, written by a thread of their own."""

import logging
import threading
from collections.abc import Callable

from .kvstore import KvStore, KvstoreUnavailable
from .session import Session

log = logging.getLogger(__name__)


class LeasedKeys:
    """Plugin calls only change what should be in etcd (set); the thread writes it, so no
    plugin call waits for etcd, and whatever etcd missed while away is written when it
    answers again. A full round (at start, after a new lease, when etcd answers again)
    also deletes this node's keys under `prefix` that it no longer wants (what went while
    the driver was down); `mine` tells this node's keys from others' under the prefix.
    Set what is wanted before start(): the first round deletes everything else."""

    def __init__(
        self,
        kv: KvStore,
        session: Session,
        prefix: str,
        what: str,
        mine: Callable[[str], bool] = lambda _key: True,
    ):
        self.kv = kv
        self.session = session
        self.prefix = prefix
        self.what = what
        self.mine = mine
        self._wanted: dict[str, str] = {}  # key -> value
        self._dirty: set[str] = set()
        self._full = True
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        session.hold(self._put_back)
        session.when_available(self._put_back)
        self._thread = threading.Thread(target=self._run, name=f"etcd {what}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def set(self, key: str, value: str | None) -> None:
        """key should hold value under the lease; None: key should not be. What is wanted
        already is not written again: each endpoint would otherwise rewrite its node's use
        of the network (an etcd write, and a watch event on every node), and a full round
        puts back whatever etcd lost."""
        with self._lock:
            if self._wanted.get(key) == value:
                return
            if value is None:
                self._wanted.pop(key, None)
            else:
                self._wanted[key] = value
            self._dirty.add(key)
        self._wake.set()

    def _put_back(self, _lease: int | None = None) -> None:
        with self._lock:
            self._full = True
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._write()
            except KvstoreUnavailable as exc:
                # The keepalive notices too and calls _put_back when etcd answers again.
                log.warning("%s (written when etcd answers)", exc)
                self.session.available.clear()
            except Exception:
                log.exception("writing %s to etcd; retrying", self.what)
                self._stop.wait(1)
                self._wake.set()

    def _write(self) -> None:
        if self.session.left:  # its keys would claim addresses of another node's ranges
            return
        with self._lock:
            full, dirty, self._full, self._dirty = self._full, self._dirty, False, set()
            wanted = dict(self._wanted)
        try:
            if full:
                present, _ = self.kv.list(self.prefix, f"publish {self.what}")
                dirty = set(wanted) | {e.key for e in present if self.mine(e.key)}
            for key in sorted(dirty):
                if key in wanted:
                    self.kv.put(key, wanted[key], f"publish {self.what}", self.session.lease)
                else:
                    self.kv.delete(key, f"withdraw {self.what}")
        except BaseException:
            with self._lock:
                self._full |= full
                self._dirty |= dirty
            raise

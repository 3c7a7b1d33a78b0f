"""This node's lease in etcd: every key that dies with the node (its node record, its
references to identities) lives under it."""

import logging
import threading
from collections.abc import Callable

from driver.errors import DriverError

from .kvstore import KvStore, KvstoreUnavailable

log = logging.getLogger(__name__)


class LeftCluster(DriverError):
    """From a holder that must not put its keys back under a new lease: the session ends."""


class Session:
    """Granted at start and kept alive three times per TTL. If it was lost anyway (etcd
    answered again only after the TTL), a new lease is granted and every holder puts its
    keys back under it. Closing stops the keepalive without revoking: the keys live out
    the TTL, so a driver that restarts at once keeps its place, and one that does not
    disappears from every other node when the lease expires."""

    def __init__(self, kv: KvStore, ttl: int):
        self.kv = kv
        self.ttl = ttl
        self.lease = kv.grant(ttl, "join the cluster (grant this node's lease)")
        self.available = threading.Event()
        self.available.set()
        self._holders: list[Callable[[int], None]] = []
        self._on_available: list[Callable[[], None]] = []
        self._restore = False
        self._stop = threading.Event()
        self.left = ""  # why the node left the cluster for good, if it did
        self._thread = threading.Thread(target=self._run, name="etcd lease", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        # A start that failed before start() (no node id) closes it too.
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def hold(self, put_back: Callable[[int], None]) -> None:
        """put_back(lease) puts a holder's keys under a new lease."""
        self._holders.append(put_back)

    def when_available(self, callback: Callable[[], None]) -> None:
        """callback() runs (on the keepalive thread) each time etcd answers again."""
        self._on_available.append(callback)

    def _run(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self._keep()
            except KvstoreUnavailable as exc:
                if self.available.is_set():
                    log.warning("%s", exc)
                self.available.clear()
                continue
            except Exception:
                # Never the end of the keepalive: the node would leave the cluster.
                log.exception("keeping lease %x", self.lease)
                continue
            if self.left:
                return
            if not self.available.is_set():
                log.info("etcd answers again (lease %x)", self.lease)
                self.available.set()
                for callback in self._on_available:
                    _run_safely(callback)

    def _keep(self) -> None:
        if self.kv.keepalive(self.lease) <= 0:
            self.lease = self.kv.grant(self.ttl, "rejoin the cluster (grant a new lease)")
            log.warning("the node's lease expired; its keys go back under lease %x", self.lease)
            self._restore = True
        if self._restore:
            try:
                for put_back in self._holders:
                    put_back(self.lease)
            except LeftCluster as exc:
                # The node record's holder comes first: nothing is back under the new lease,
                # which runs out with the keepalive stopped.
                log.error("%s", exc)
                self.left = str(exc)
                self._stop.set()
                return
            self._restore = False


def _run_safely(callback: Callable[[], None]) -> None:
    """A callback that fails must not stop the keepalive: the node would leave the cluster."""
    try:
        callback()
    except Exception:
        log.exception("after etcd came back")

"""Fan-out of datapath events (drops, traces) to every `cilium monitor` that listens, and
of every event to the flow log.

One reader thread drains the datapath's event ring while at least one subscriber exists,
or always with a flow log (the sink), which also turns the datapath's flow events on;
each subscriber has a bounded queue, so a slow reader loses its own events, nobody else's.
"""

import dataclasses
import ipaddress
import logging
import queue
import threading
from collections.abc import Callable

from datapath.events import decode_event
from datapath.interface import DatapathApi

log = logging.getLogger(__name__)

QUEUE_SIZE = 10_000


class Subscription:
    def __init__(self, monitor: "Monitor", kinds: frozenset[str]):
        self.monitor = monitor
        self.kinds = kinds
        self.events: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self.lost = 0

    def offer(self, event: dict) -> None:
        if event["kind"] not in self.kinds:
            return
        try:
            self.events.put_nowait(event)
        except queue.Full:
            self.lost += 1

    def close(self) -> None:
        self.monitor.unsubscribe(self)


class Monitor:
    def __init__(self, datapath: DatapathApi, sink: Callable[[bytes], None] | None = None):
        """sink(record): called in the reader thread with every event's undecoded record
        (bytes), if given; only subscribers' events are decoded."""
        self.datapath = datapath
        self._sink = sink
        self._subscribers: list[Subscription] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.datapath.set_flow_events(sink is not None)
        if sink is not None:
            with self._lock:
                self._update()

    def subscribe(self, kinds: frozenset[str]) -> Subscription:
        subscription = Subscription(self, kinds)
        with self._lock:
            self._subscribers.append(subscription)
            self._update()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscribers:
                self._subscribers.remove(subscription)
            self._update()

    def close(self) -> None:
        with self._lock:
            self._subscribers.clear()
            if self._sink is not None:
                self._sink = None
                self.datapath.set_flow_events(False)
            self._update()

    def _update(self) -> None:
        """Run the reader while anyone listens; trace events only while someone wants them."""
        wants_trace = any("trace" in s.kinds for s in self._subscribers)
        self.datapath.set_trace_events(wants_trace)
        wanted = bool(self._subscribers) or self._sink is not None
        if wanted and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._read, name="monitor", daemon=True)
            self._thread.start()
        elif not wanted and self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._thread = None

    def _read(self) -> None:
        try:
            self.datapath.read_events(self._publish, self._stop, raw=True)
        except Exception:
            log.exception("monitor: reading datapath events failed")

    def _publish(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None:
            sink(data)
        with self._lock:
            subscribers = list(self._subscribers)
        if not subscribers:
            return
        record = event_record(decode_event(data))
        for subscription in subscribers:
            subscription.offer(record)


def event_record(event) -> dict:
    """An event as JSON-friendly values."""
    record = dataclasses.asdict(event)
    for key, value in record.items():
        if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
            record[key] = str(value)
    return record

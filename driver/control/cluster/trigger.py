"""One thread that runs a function after it is pulled, for work a burst of watch events
should do once (Cilium's trigger): pulls that come while it runs make one more run, not
one each, and the watch that pulls never waits for the control plane's lock.

The function runs holding that lock, and not at all once the trigger is closed: close()
gives up waiting after a while (its caller may hold the lock), and a run that got the lock
only after that must not write into a datapath closed meanwhile."""

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Trigger:
    def __init__(self, name: str, run: Callable[[], None], lock: threading.RLock):
        self.name = name
        self._run = run
        self._lock = lock
        self._pulled = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def pull(self) -> None:
        self._pulled.set()

    def close(self) -> None:
        self._stop.set()
        self._pulled.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        while True:
            self._pulled.wait()
            if self._stop.is_set():
                return
            self._pulled.clear()
            try:
                with self._lock:
                    if self._stop.is_set():
                        return
                    self._run()
            except Exception:
                # Nobody else would notice the thread died: log, and run at the next pull.
                log.exception("%s failed", self.name)

"""Deleting the conntrack and lb_flows entries of deleted endpoints, off the request path.

A full conntrack table takes a walk of a quarter of a second to clean; DeleteEndpoint
should not wait for it, and neither should every other plugin call behind the control
plane's lock. So a deleted endpoint's id and addresses are "retired": recorded in the pinned
map ``retired`` (a driver restart finishes the job from there) and swept by one thread, many
endpoints per walk. Until its sweep is done, nothing may take over a retired id or address
(:meth:`FlowSweeper.wait_until_swept`): an endpoint that did would inherit established flows,
its predecessor's or its peers', past policy.
"""

import logging
import threading
import time
from collections.abc import Iterable

from .abi import IPAddress
from .errors import DatapathError
from .maps import DatapathMaps

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0  # after a failed sweep (the maps stay usable; it is tried again)


class FlowSweeper:
    def __init__(self, maps: DatapathMaps):
        self._maps = maps
        self._changed = threading.Condition()
        self._pending: dict[int, tuple[IPAddress, ...]] = maps.retired()
        self._sweeping: dict[int, tuple[IPAddress, ...]] = {}
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="flow-sweeper", daemon=True)
        self._thread.start()

    def retire(self, endpoint_id: int, addresses: Iterable[IPAddress]) -> None:
        """Sweep the flows of endpoint_id's hooks and those naming addresses, soon."""
        addresses = tuple(addresses)
        try:
            self._maps.put_retired(endpoint_id, addresses)
        except DatapathError as exc:
            # The record only matters if the driver dies before the sweep; the sweep itself
            # runs from memory, so a full map must not fail the deletion.
            log.warning("endpoint %d retired without a pinned record: %s", endpoint_id, exc)
        with self._changed:
            self._pending[endpoint_id] = addresses
            self._changed.notify_all()

    def wait_until_swept(
        self, endpoint_id: int, addresses: Iterable[IPAddress], timeout: float
    ) -> None:
        """Return once no retired endpoint still to be swept has endpoint_id or any of
        addresses; DatapathError after timeout seconds."""
        wanted = set(addresses)

        def clear() -> bool:
            for retired in (self._pending, self._sweeping):
                if endpoint_id in retired:
                    return False
                if any(wanted.intersection(a) for a in retired.values()):
                    return False
            return True

        with self._changed:
            if not self._changed.wait_for(clear, timeout):
                raise DatapathError(
                    f"the flows of a deleted endpoint with id {endpoint_id} or an address of "
                    f"{sorted(map(str, wanted))} were not swept within {timeout:g} s"
                )

    def wait_until_idle(self, timeout: float) -> None:
        """Return once every sweep asked for so far is done; DatapathError after timeout."""
        with self._changed:
            if not self._changed.wait_for(lambda: not (self._pending or self._sweeping), timeout):
                raise DatapathError(f"flow sweeps still pending after {timeout:g} s")

    def close(self) -> None:
        """Finish the sweeps asked for so far, then stop the thread."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending or self._stopping)
                if not self._pending:
                    return
                self._sweeping, self._pending = self._pending, {}
            batch = self._sweeping
            try:
                self._sweep(batch)
            except Exception:  # the thread must outlive a failed sweep; it is tried again
                log.exception("sweeping the flows of endpoints %s failed", sorted(batch))
                with self._changed:
                    self._pending = {**batch, **self._pending}
                    self._sweeping = {}
                time.sleep(RETRY_SECONDS)
                continue
            with self._changed:
                self._sweeping = {}
                self._changed.notify_all()

    def _sweep(self, batch: dict[int, tuple[IPAddress, ...]]) -> None:
        addresses = {ip for retired in batch.values() for ip in retired}
        flows = self._maps.delete_ct(batch.keys(), addresses)
        picks = self._maps.delete_lb_flows(endpoint_ids=batch.keys())
        for endpoint_id in batch:
            self._maps.delete_retired(endpoint_id)
        log.debug("swept %d flows, %d backend picks of endpoints %s", flows, picks, sorted(batch))

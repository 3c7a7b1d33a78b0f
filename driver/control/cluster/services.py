"""Services as cluster-wide state: every service lives in etcd under its frontend, and every
node mirrors them into its state (SQLite) and its datapath from a watch.

    pycilium/v1/services/<frontend>  -> {"id": n, "name", "frontend", "backends", "selector",
                                         "backend_port"} (the state's record, with its id)
    pycilium/v1/services/revision    -> n, written last in every transaction

A change is made on the node that asks for it the way one host makes it (Services: parse,
refuse a taken frontend, id or name, program the datapath), after that node's copy was made
the cluster's; what it changed in its copy is then written in a transaction that holds only
if the revision is still the one read. If it does not (another node wrote meanwhile), the
copy goes back to the cluster's and the change is made again on top: so a VIP taken on any
node is refused on every other one, and ids mean one service on every node. A selector
service's backends are the endpoints of every node that its selector matches: this node's
from its state, the others' from what they publish (RemoteBackends).
"""

import ipaddress
import json
import logging
import threading
from collections.abc import Callable

from datapath import DatapathError
from driver.errors import DriverError

from ..loadbalancer import Services
from ..state import Store
from .endpoints import ENDPOINTS
from .identities import IDS, identity_number, labels_of
from .identities_in_use import IdentitiesInUse
from .kvstore import Entry, KvStore, KvstoreUnavailable, absent, delete, put, unchanged
from .nodes import PREFIX
from .trigger import Trigger

log = logging.getLogger(__name__)

SERVICES = PREFIX + "services/"
REVISION = SERVICES + "revision"  # no frontend is called that: they start with [ or a digit
ATTEMPTS = 8
META = "service:"  # the state's key of a service: service:<id>
# Where each node publishes its endpoints: <node>/<endpoint id> -> JSON with "ipv6", "ipv4"
# and "identity" (cluster/endpoints.py writes them).


class ClusterServices:
    """The use cases run under the control plane's lock (their callers hold it); the watch
    takes it."""

    def __init__(self, kv: KvStore, services: Services, store: Store, lock):
        self.kv = kv
        self.services = services
        self.store = store
        self.lock = lock
        self.revision = 0  # the newest cluster revision this node wrote or saw
        self._latest: dict[str, Entry] = {}
        self.watch = None

    def start(self) -> None:
        self.watch = self.kv.watch(SERVICES, self._reset, self._event)

    def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()

    # use cases

    def update(self, request: dict) -> dict:
        return self._change(lambda: self.services.update(request), "update a service")

    def delete(self, service_id: int) -> None:
        self._change(lambda: self.services.delete(service_id), f"delete service {service_id}")

    def _change(self, edit: Callable[[], dict | None], purpose: str):
        for _ in range(ATTEMPTS):
            entries, _ = self.kv.list(SERVICES, purpose)
            cluster = {e.key: e.value for e in entries}
            held = next((e for e in entries if e.key == REVISION), None)
            cluster.pop(REVISION, None)
            if held is not None:  # else this node's copy becomes the cluster's
                self._mirror(cluster)
            before = self._copy()
            result = edit()
            after = self._copy()
            revision = int(held.value) + 1 if held is not None else 1
            writes = [delete(key) for key in cluster.keys() - after.keys()]
            writes += [put(k, v) for k, v in sorted(after.items()) if cluster.get(k) != v]
            writes.append(put(REVISION, str(revision)))
            compare = [unchanged(held)] if held is not None else [absent(REVISION)]
            try:
                written = self.kv.txn(compare, writes, purpose)
            except KvstoreUnavailable:
                self._mirror(before)
                raise
            if written:
                self.revision = revision
                return result
            self._mirror(before)
        raise DriverError(f"could not {purpose}: {ATTEMPTS} attempts raced with other nodes")

    # this node's copy

    def _copy(self) -> dict[str, str]:
        """The services of this node's state, as etcd keys and values."""
        copy = {}
        for service in self.services.all():
            record = json.loads(self.store.get_meta(f"{META}{service.service_id}"))
            value = json.dumps({"id": service.service_id, **record}, sort_keys=True)
            copy[SERVICES + str(service.frontend)] = value
        return copy

    def _mirror(self, values: dict[str, str]) -> None:
        """Make this node's services (state and datapath) the ones values holds."""
        if values == self._copy():
            return
        wanted = {}
        for value in values.values():
            record = json.loads(value)
            wanted[f"{META}{record.pop('id')}"] = json.dumps(record)
        with self.store.transaction():
            for key, _ in self.store.meta_with_prefix(META):
                if key not in wanted:
                    self.store.delete_meta(key)
            for key, value in wanted.items():
                self.store.set_meta(key, value)
        self.services.sync()

    # the watch

    def _reset(self, entries: list[Entry]) -> None:
        with self.lock:
            self._latest = {e.key: e for e in entries}
            self._converge(listed=True)

    def _event(self, kind: str, entry: Entry, _previous: Entry | None) -> None:
        with self.lock:
            if kind == "DELETE":
                self._latest.pop(entry.key, None)
                return
            self._latest[entry.key] = entry
            # etcd reports a transaction's changes in their order: the revision comes last.
            if entry.key == REVISION:
                self._converge(listed=False)

    def _converge(self, listed: bool) -> None:
        """Mirror the cluster's services, unless this node already wrote or saw a newer
        revision (a listing taken before this node's own change). After a full listing of
        a cluster without services, this node's become the cluster's."""
        values = {key: e.value for key, e in self._latest.items() if key != REVISION}
        held = self._latest.get(REVISION)
        if held is None:
            copy = self._copy()
            if listed and copy and not values:
                writes = [put(k, v) for k, v in sorted(copy.items())] + [put(REVISION, "1")]
                if self.kv.txn([absent(REVISION)], writes, "give the cluster this node's services"):
                    log.info("the cluster had no services: this node's %d are now its", len(copy))
            return
        revision = int(held.value)
        if revision < self.revision:
            return
        self.revision = revision
        try:
            self._mirror(values)
        except (DatapathError, ValueError, KeyError) as exc:
            log.error("services revision %d are not all in force on this node: %s", revision, exc)


class RemoteBackends:
    """Other nodes' endpoints as selector services see them: the addresses and identity each
    node publishes under ENDPOINTS, with the labels of that identity from the allocator's
    keys, both followed by watches. The watches take note under a lock of their own and pull
    a trigger that syncs the services (under the control plane's lock) if one has a
    selector: once per burst of events, and no watch waits for the control plane."""

    def __init__(self, kv: KvStore, node: str, services: Services, lock):
        self.kv = kv
        self.node = node
        self.services = services
        self.lock = lock
        self._endpoints: dict[str, tuple[int, str | None, str | None]] = {}
        self._identities = IdentitiesInUse()  # of _endpoints' records
        self._labels: dict[int, dict] = {}
        self._noted = threading.Lock()  # guards the three above; taken after self.lock
        self.trigger = Trigger("selector services", self._sync, lock)
        self.watches = []

    def start(self) -> None:
        self.services.remote_endpoints = self.endpoints
        self.trigger.start()
        self.watches = [
            self.kv.watch(IDS, self._reset_labels, self._labels_event),
            self.kv.watch(ENDPOINTS, self._reset_endpoints, self._endpoint_event),
        ]

    def close(self) -> None:
        for watch in self.watches:
            watch.stop()
        self.trigger.close()

    def endpoints(self) -> list[tuple[dict, str | None, str | None]]:
        """(labels, IPv6, IPv4) of each other node's endpoint whose identity is known."""
        with self._noted:
            return [
                (self._labels[identity], ipv6, ipv4)
                for identity, ipv6, ipv4 in self._endpoints.values()
                if identity in self._labels
            ]

    def _reset_labels(self, entries: list[Entry]) -> None:
        labels = dict(filter(None, map(labels_of, entries)))
        with self._noted:
            self._labels = labels
        self.trigger.pull()

    def _labels_event(self, kind: str, entry: Entry, _previous: Entry | None) -> None:
        """As _endpoint_event; and a new identity's labels come before any record names it:
        noted, and synced with that record."""
        found = labels_of(entry) if kind != "DELETE" else None
        number = found[0] if found else identity_number(entry)
        with self._noted:
            before = self._labels.get(number)
            if found is None:
                self._labels.pop(number, None)
            else:
                self._labels[number] = found[1]
            used = number in self._identities
        if used and before != (found[1] if found else None):
            self.trigger.pull()

    def _reset_endpoints(self, entries: list[Entry]) -> None:
        endpoints = dict(filter(None, map(self._endpoint, entries)))
        with self._noted:
            self._endpoints = endpoints
            self._identities = IdentitiesInUse(identity for identity, _, _ in endpoints.values())
        self.trigger.pull()

    def _endpoint_event(self, kind: str, entry: Entry, _previous: Entry | None) -> None:
        """The trigger (a sync under the control plane's lock) only when what endpoints()
        gives changed: not for a record that changed only its names."""
        found = self._endpoint(entry) if kind != "DELETE" else None
        with self._noted:
            old = self._endpoints.pop(entry.key, None)
            if found is not None:
                self._endpoints[entry.key] = found[1]
            self._identities.replace(old[0] if old else None, found[1][0] if found else None)
        if old != (found[1] if found else None):
            self.trigger.pull()

    def _sync(self) -> None:
        with self.lock:
            self._changed()

    def _endpoint(self, entry: Entry) -> tuple[str, tuple] | None:
        if entry.key[len(ENDPOINTS) :].split("/")[0] == self.node:
            return None  # this node's own: the state has them
        try:
            record = json.loads(entry.value)
            addresses = [record.get("ipv6"), record.get("ipv4")]
            for address in filter(None, addresses):
                ipaddress.ip_address(address)
            return entry.key, (int(record["identity"]), *addresses)
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring %s: not an endpoint record", entry.key)
            return None

    def _changed(self) -> None:
        if not any(s.selector is not None for s in self.services.all()):
            return
        try:
            self.services.sync()
        except DatapathError as exc:
            log.error("selector services after other nodes' endpoints changed: %s", exc)

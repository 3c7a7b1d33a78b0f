"""The identities of other nodes' endpoints, with their labels, for this node's policy: a rule
here that selects app=web as a peer must allow the app=web container on another node, whose
packets arrive with its identity in the VNI (and whose address the ipcache maps to it).

An identity is remote while at least one other node's endpoint record (`endpoints/<node>/<id>`)
names it and its labels are known (`identities/id/<n>`); both are followed by watches. The
labels of a number never change while its key exists (the allocator deletes the key before
the number can mean other labels), so they are read once per key, never polled.
"""

import json
import logging
import threading
from collections.abc import Callable, Mapping

from datapath import DatapathError
from datapath.abi import FIRST_ENDPOINT_IDENTITY

from .endpoints import ENDPOINTS
from .identities import IDS, identity_number, labels_of
from .identities_in_use import IdentitiesInUse
from .kvstore import Entry, KvStore
from .trigger import Trigger

log = logging.getLogger(__name__)


class IdentityUse:
    """Which identities other nodes' endpoints have, counted per endpoint record, and the
    labels of every identity of the cluster. Pure bookkeeping; callers serialise calls."""

    def __init__(self):
        self._users: dict[str, tuple[str, int]] = {}  # endpoint key -> (node, identity)
        self._in_use = IdentitiesInUse()
        self._labels: dict[int, dict] = {}

    def set_endpoints(self, users: Mapping[str, tuple[str, int]]) -> None:
        self._users = dict(users)
        self._in_use = IdentitiesInUse(identity for _, identity in self._users.values())

    def endpoint(self, key: str, user: tuple[str, int] | None) -> bool:
        """The endpoint record under key now names user's (node, identity), or is gone.
        Whether the identities other nodes' endpoints have changed (one came or went)."""
        old = self._users.pop(key, None)
        if user is not None:
            self._users[key] = user
        return self._in_use.replace(old[1] if old else None, user[1] if user else None)

    def set_labels(self, labels: Mapping[int, dict]) -> None:
        self._labels = dict(labels)

    def label(self, number: int, labels: dict | None) -> bool:
        """Whether identities() changed: only an identity some endpoint has counts."""
        before = self._labels.get(number)
        if labels is None:
            self._labels.pop(number, None)
        else:
            self._labels[number] = labels
        return before != labels and number in self._in_use

    def identities(self) -> dict[int, dict]:
        """number -> labels of every identity some other node's endpoint has."""
        return {n: self._labels[n] for n in self._in_use if n in self._labels}

    def nodes(self) -> dict[int, list[str]]:
        """number -> the other nodes whose endpoints have it, sorted."""
        found: dict[int, set[str]] = {}
        for node, identity in self._users.values():
            found.setdefault(identity, set()).add(node)
        return {n: sorted(names) for n, names in found.items()}


class RemoteIdentities:
    """IdentityUse fed by watches of endpoint records and identity keys. When the set of
    remote identities (or their labels) changes, changed(identities) is called under the
    control plane's lock, as every datapath write is.

    The watches only take note (under a lock of their own) and pull a trigger that tells:
    events that come while a regeneration runs are told together in the next one, one
    regeneration per burst, and a watch never queues behind the control plane's lock (the
    ipcache's watch waits for at most one regeneration)."""

    def __init__(self, kv: KvStore, node: str, lock, changed: Callable[[dict[int, dict]], None]):
        self.kv = kv
        self.node = node
        self.lock = lock
        self.changed = changed
        self.use = IdentityUse()
        self._noted = threading.Lock()  # guards use; taken after self.lock, never before
        self._told: dict[int, dict] = {}
        self.trigger = Trigger("remote identities", self.tell, lock)
        self.watches = []

    def load(self) -> dict[int, dict]:
        """The remote identities now (number -> labels), read once, before start()."""
        ids, _ = self.kv.list(IDS, "read the cluster's identities")
        endpoints, _ = self.kv.list(ENDPOINTS, "read other nodes' endpoints")
        with self.lock, self._noted:
            self.use.set_labels(dict(filter(None, map(labels_of, ids))))
            self.use.set_endpoints(dict(filter(None, map(self._user, endpoints))))
            self._told = self.use.identities()
            return dict(self._told)

    def start(self) -> None:
        self.trigger.start()
        self.watches = [
            self.kv.watch(IDS, self._reset_labels, self._label_event),
            self.kv.watch(ENDPOINTS, self._reset_endpoints, self._endpoint_event),
        ]

    def close(self) -> None:
        for watch in self.watches:
            watch.stop()
        self.trigger.close()

    def records(self) -> list[dict]:
        """The remote identities as `cilium identity list` shows them, with their nodes."""
        with self.lock, self._noted:
            nodes = self.use.nodes()
            return [
                {
                    "identity": number,
                    "kind": "remote",
                    "key": json.dumps(labels, sort_keys=True),
                    "labels": labels,
                    "nodes": nodes.get(number, []),
                }
                for number, labels in sorted(self._told.items())
            ]

    def _reset_labels(self, entries: list[Entry]) -> None:
        with self._noted:
            self.use.set_labels(dict(filter(None, map(labels_of, entries))))
        self.trigger.pull()

    def _label_event(self, kind: str, entry: Entry, _previous: Entry | None) -> None:
        """As _endpoint_event: the trigger (and so the control plane's lock) only for a
        change tell() would act on. A new identity's labels come before any record names
        it: they are noted, and told with the first record."""
        found = labels_of(entry) if kind == "PUT" else None
        number = found[0] if found else identity_number(entry)
        if number is not None:
            with self._noted:
                changed = self.use.label(number, found[1] if found else None)
            if changed:
                self.trigger.pull()

    def _reset_endpoints(self, entries: list[Entry]) -> None:
        with self._noted:
            self.use.set_endpoints(dict(filter(None, map(self._user, entries))))
        self.trigger.pull()

    def _endpoint_event(self, kind: str, entry: Entry, _previous: Entry | None) -> None:
        """Only an identity that came or went pulls the trigger: most records name one that
        other endpoints have, or change only their names."""
        found = self._user(entry) if kind == "PUT" else None
        with self._noted:
            changed = self.use.endpoint(entry.key, found[1] if found else None)
        if changed:
            self.trigger.pull()

    def _user(self, entry: Entry) -> tuple[str, tuple[str, int]] | None:
        """(key, (node, identity)) of another node's endpoint record with an endpoint
        identity; None for this node's own, one waiting for its identity, or garbage."""
        node = entry.key[len(ENDPOINTS) :].split("/")[0]
        if node == self.node:
            return None
        try:
            identity = int(json.loads(entry.value)["identity"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring %s: not an endpoint record", entry.key)
            return None
        if identity < FIRST_ENDPOINT_IDENTITY:
            return None
        return entry.key, (node, identity)

    def tell(self) -> None:
        """Tell what changed since the last call, if anything: what the trigger does for
        every event noted since it last ran."""
        with self.lock:
            with self._noted:
                now = self.use.identities()
            if now == self._told:
                return
            self._told = now
            try:
                self.changed(now)
            except DatapathError as exc:
                # The results are cached already: the next change writes what is missing.
                log.error("policy for other nodes' identities not all in force: %s", exc)

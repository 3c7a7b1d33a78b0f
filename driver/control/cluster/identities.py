"""The cluster-wide identity allocator, after Cilium's kvstore allocator: the same label set
gets the same number on every node.

    pycilium/v1/identities/id/<n>                     -> the labels (canonical JSON)
    pycilium/v1/identities/value/<labels hash>/<node> -> <n>, under the node's lease

An id key is created only in the transaction that also puts the creator's reference, and
only if no id key holds those labels yet and nobody refers to them; a node that reuses one
puts its reference only if the id key is unchanged. The id key goes in a transaction that
checks no reference is left, when a node releases its own or sees another's deleted (a
node whose lease expired). So no two numbers ever mean the same labels at once.
"""

import hashlib
import json
import logging
import random
import threading

from driver.errors import DriverError

from .kvstore import Entry, KvStore, KvstoreUnavailable, absent, delete, none_under, put, unchanged
from .nodes import PREFIX
from .session import Session

log = logging.getLogger(__name__)

IDS = PREFIX + "identities/id/"
REFS = PREFIX + "identities/value/"
ATTEMPTS = 8


def labels_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class ClusterAllocator:
    """Numbers in [first, limit) from etcd; `key` is a label set's canonical JSON."""

    kind = "endpoint"

    def __init__(self, kv: KvStore, session: Session, node: str, first: int, limit: int):
        self.kv = kv
        self.session = session
        self.node = node
        self.first = first
        self.limit = limit
        self._lock = threading.Lock()
        self.held: dict[int, str] = {}  # number -> key, referred to by this node
        self._unreleased: dict[int, str] = {}  # released while etcd did not answer
        session.hold(self._put_back)
        session.when_available(self._release_late)
        self.watch = kv.watch(REFS, self._sweep, self._ref_event)

    def close(self) -> None:
        self.watch.stop()

    def allocate(self, key: str) -> int:
        purpose = f"allocate a new identity for labels {key}"
        refs = REFS + labels_hash(key) + "/"
        for _ in range(ATTEMPTS):
            ids, _ = self.kv.list(IDS, purpose)
            same = [e for e in ids if e.value == key]
            if same:
                number = _number(same[0])
                ok = self.kv.txn([unchanged(same[0])], [self._ref(number, key)], purpose)
            else:
                number = self._free({_number(e) for e in ids})
                ok = self.kv.txn(
                    [absent(IDS + str(number)), none_under(refs)],
                    [put(IDS + str(number), key), self._ref(number, key)],
                    purpose,
                )
            if ok:
                with self._lock:
                    self.held[number] = key
                    self._unreleased.pop(number, None)
                return number
        raise DriverError(f"could not {purpose}: {ATTEMPTS} attempts raced with other nodes")

    def hold(self, number: int, key: str) -> None:
        """Refer again to an identity this node had before it restarted; it keeps its number
        (recreated if the cluster dropped it meanwhile) unless the cluster gave the labels
        or the number to something else, which is a Conflict."""
        purpose = f"keep identity {number} ({key})"
        ids, _ = self.kv.list(IDS, purpose)
        owners = {_number(e): e for e in ids}
        other = [n for n, e in owners.items() if e.value == key and n != number]
        entry = owners.get(number)
        if other or (entry is not None and entry.value != key):
            raise DriverError(
                f"identity {number} ({key}) changed in the cluster while this node was away: "
                f"the labels are now {other or 'free'}, number {number} is "
                f"{entry.value if entry else 'free'}"
            )
        if entry is None:
            compare, success = [absent(IDS + str(number))], [put(IDS + str(number), key)]
        else:
            compare, success = [unchanged(entry)], []
        if not self.kv.txn(compare, [*success, self._ref(number, key)], purpose):
            raise DriverError(f"could not {purpose}: it changed meanwhile, retry")
        with self._lock:
            self.held[number] = key

    def release(self, number: int, key: str) -> None:
        """This node no longer uses the identity; the last reference takes the number with
        it. Without etcd the release waits until it answers (the reference stays)."""
        with self._lock:
            self.held.pop(number, None)
        try:
            self.kv.delete(self._ref_key(key), f"release identity {number}")
            self._collect(number)
        except KvstoreUnavailable as exc:
            log.warning("%s (done when etcd answers)", exc)
            with self._lock:
                self._unreleased[number] = key
            self.session.available.clear()

    def _ref(self, number: int, key: str) -> dict:
        return put(self._ref_key(key), str(number), self.session.lease)

    def _ref_key(self, key: str) -> str:
        return REFS + labels_hash(key) + "/" + self.node

    def _free(self, taken: set[int]) -> int:
        """A random free number: a freed one is unlikely to come back soon."""
        if len(taken) >= self.limit - self.first:
            raise DriverError(f"every identity in [{self.first}, {self.limit}) is taken")
        while True:
            number = random.randrange(self.first, self.limit)
            if number not in taken:
                return number

    def _collect(self, number: int) -> None:
        """Delete identity number's key if no node refers to its labels any more."""
        entry = self.kv.get(IDS + str(number), f"collect identity {number}")
        if entry is None:
            return
        refs = REFS + labels_hash(entry.value) + "/"
        if self.kv.txn([unchanged(entry), none_under(refs)], [delete(entry.key)], "collect"):
            log.info("identity %d (%s) is used by no node any more: freed", number, entry.value)

    def _put_back(self, _lease: int) -> None:
        with self._lock:
            held = dict(self.held)
        for number, key in held.items():
            try:
                self.hold(number, key)
            except KvstoreUnavailable:
                raise
            except DriverError as exc:
                log.error("%s", exc)

    def _release_late(self) -> None:
        with self._lock:
            late, self._unreleased = self._unreleased, {}
        for number, key in late.items():
            self.release(number, key)

    def _sweep(self, refs: list[Entry]) -> None:
        """With every reference listed (at start, and when the watch resumes): collect the
        id keys nobody refers to, whose last user's lease expired while no node watched."""
        used = {e.key[len(REFS) :].split("/")[0] for e in refs}
        ids, _ = self.kv.list(IDS, "collect identities no node uses")
        for entry in ids:
            if labels_hash(entry.value) not in used:
                self._collect(_number(entry))

    def _ref_event(self, kind: str, _entry: Entry, previous: Entry | None) -> None:
        if kind != "DELETE" or previous is None:
            return
        try:
            self._collect(int(previous.value))
        except (KvstoreUnavailable, ValueError) as exc:
            log.warning("identity collection after %s went: %s", previous.key, exc)


def _number(entry: Entry) -> int:
    return int(entry.key[len(IDS) :])


def identity_number(entry: Entry) -> int | None:
    """The number of an `identities/id/<n>` key, or None."""
    try:
        return int(entry.key[len(IDS) :])
    except ValueError:
        return None


def labels_of(entry: Entry) -> tuple[int, dict] | None:
    """(number, labels) of an identity key, or None (logged) if it is not one."""
    number = identity_number(entry)
    try:
        labels = json.loads(entry.value)
    except ValueError:
        labels = None
    if number is None or not isinstance(labels, dict):
        log.warning("ignoring %s: not an identity", entry.key)
        return None
    return number, labels

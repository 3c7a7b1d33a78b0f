"""The cluster-wide identity allocator, after Cilium's kvstore allocator: the same label set
gets the same number on every node.

    pycilium/v1/identities/id/<n>                     -> the labels (canonical JSON)
    pycilium/v1/identities/labels/<labels hash>       -> <n>: the index of the id keys
    pycilium/v1/identities/value/<labels hash>/<node> -> <n>, under the node's lease

An id key and its index key are created and deleted together, in one transaction, so
finding a label set's number takes no listing of every id key. A new id key is
created only in the transaction that also puts its index and the creator's reference, and
only if neither the index nor the number exists yet and nobody refers to the labels; a node
that reuses one puts its reference only if the index is unchanged and the id key still
holds those labels. The id key and its index go in a transaction that checks no reference
is left, when a node releases its own or sees another's deleted (a node whose lease
expired). So no two numbers ever mean the same labels at once, and no number two label
sets.

An etcd written before the index existed has id keys without it: a starting node indexes
them before it allocates, and an index that does not hold (missing, or naming a number that
is gone or means other labels) only sends an allocation down the slow path, which lists
the id keys as before and writes the index it found missing.
"""

import hashlib
import json
import logging
import random
import threading

from driver.errors import DriverError

from .kvstore import (
    Entry,
    KvStore,
    KvstoreUnavailable,
    absent,
    delete,
    holds,
    none_under,
    put,
    unchanged,
)
from .nodes import PREFIX
from .session import Session

log = logging.getLogger(__name__)

IDS = PREFIX + "identities/id/"
INDEX = PREFIX + "identities/labels/"
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
        self._index_missing()
        session.hold(self._put_back)
        session.when_available(self._release_late)
        self.watch = kv.watch(REFS, self._sweep, self._ref_event)

    def close(self) -> None:
        self.watch.stop()

    def allocate(self, key: str) -> int:
        """The labels' number. The first attempt creates it as if the labels were new, in
        one request that returns their index if they are not: the number it names is then
        reused with one more transaction. Only a race with another node, or an index that
        does not hold, sends an allocation down the slow path that lists the id keys."""
        purpose = f"allocate a new identity for labels {key}"
        index_key = INDEX + labels_hash(key)
        with self._lock:
            mine = set(self.held)
        number = self._free(mine)
        compare, success = self._create(key, number, None)
        created, index = self.kv.txn_else_get(
            compare, [*success, self._ref(number, key)], index_key, purpose
        )
        if created:
            return self._allocated(number, key)
        for attempt in range(1, ATTEMPTS):
            if attempt > 1:
                index = self.kv.get(index_key, purpose)
            number = _indexed(index)
            if attempt == 1 and number is not None:
                compare, success = [unchanged(index), holds(IDS + str(number), key)], []
            else:
                number, compare, success = self._slow(key, index, purpose)
            if self.kv.txn(compare, [*success, self._ref(number, key)], purpose):
                return self._allocated(number, key)
        raise DriverError(f"could not {purpose}: {ATTEMPTS} attempts raced with other nodes")

    def _allocated(self, number: int, key: str) -> int:
        with self._lock:
            self.held[number] = key
            self._unreleased.pop(number, None)
        return number

    def _slow(self, key: str, index: Entry | None, purpose: str) -> tuple[int, list, list]:
        """With every id key listed: the index's number if it holds, else an id key with
        these labels (indexed now), else a new number."""
        ids, _ = self.kv.list(IDS, purpose)
        owners = {_number(e): e for e in ids}
        number = _indexed(index)
        if number in owners and owners[number].value == key:
            return number, [unchanged(index), unchanged(owners[number])], []
        same = [e for e in ids if e.value == key]
        if same:
            number = _number(same[0])
            return (
                number,
                [unchanged(same[0]), _as_seen(index, INDEX + labels_hash(key))],
                [put(INDEX + labels_hash(key), str(number))],
            )
        number = self._free(set(owners))
        return number, *self._create(key, number, index)

    def _create(self, key: str, number: int, index: Entry | None) -> tuple[list, list]:
        """A new id key with its index: only if the number is free, the index is as read
        (absent, or one that does not hold) and nobody refers to the labels."""
        index_key = INDEX + labels_hash(key)
        compare = [
            absent(IDS + str(number)),
            _as_seen(index, index_key),
            none_under(REFS + labels_hash(key) + "/"),
        ]
        return compare, [put(IDS + str(number), key), put(index_key, str(number))]

    def hold(self, number: int, key: str) -> None:
        """Refer again to an identity this node had before it restarted; it keeps its number
        (recreated if the cluster dropped it meanwhile) unless the cluster gave the labels
        or the number to something else, which is a Conflict."""
        purpose = f"keep identity {number} ({key})"
        index_key = INDEX + labels_hash(key)
        index = self.kv.get(index_key, purpose)
        entry = self.kv.get(IDS + str(number), purpose)
        other = _indexed(index)
        if other is not None and other != number:
            named = self.kv.get(IDS + str(other), purpose)
            if named is None or named.value != key:
                other = None  # an index that does not hold: replaced below
        if other not in (None, number) or (entry is not None and entry.value != key):
            raise DriverError(
                f"identity {number} ({key}) changed in the cluster while this node was away: "
                f"the labels are now {other or 'free'}, number {number} is "
                f"{entry.value if entry else 'free'}"
            )
        compare, success = [_as_seen(index, index_key)], []
        if entry is None:
            compare.append(absent(IDS + str(number)))
            success.append(put(IDS + str(number), key))
        else:
            compare.append(unchanged(entry))
        if other is None:
            success.append(put(index_key, str(number)))
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
        """Delete identity number's key, and its index, if no node refers to its labels."""
        entry = self.kv.get(IDS + str(number), f"collect identity {number}")
        if entry is None:
            return
        refs = REFS + labels_hash(entry.value) + "/"
        compare, success = [unchanged(entry), none_under(refs)], [delete(entry.key)]
        index = self.kv.get(INDEX + labels_hash(entry.value), f"collect identity {number}")
        if _indexed(index) == number:
            compare.append(unchanged(index))
            success.append(delete(index.key))
        if self.kv.txn(compare, success, "collect"):
            log.info("identity %d (%s) is used by no node any more: freed", number, entry.value)

    def _index_missing(self) -> None:
        """Index the id keys an etcd written before the index has (once, at start): until
        then the slow path would find them, but only once a fast one had raced them."""
        purpose = "index the cluster's identities"
        ids, _ = self.kv.list(IDS, purpose)
        indexed = {e.key: e for e in self.kv.list(INDEX, purpose)[0]}
        by_number = {_number(e): e for e in ids}
        for entry in ids:
            index = indexed.get(INDEX + labels_hash(entry.value))
            named = by_number.get(_indexed(index))
            if named is not None and named.value == entry.value:
                continue
            compare = [unchanged(entry), _as_seen(index, INDEX + labels_hash(entry.value))]
            success = [put(INDEX + labels_hash(entry.value), str(_number(entry)))]
            if self.kv.txn(compare, success, purpose):
                log.info("identity %d (%s) indexed", _number(entry), entry.value)

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


def _indexed(index: Entry | None) -> int | None:
    """The number an index key names, or None (no index, or not a number)."""
    try:
        return None if index is None else int(index.value)
    except ValueError:
        return None


def _as_seen(entry: Entry | None, key: str) -> dict:
    """Key is still as read: absent, or unchanged."""
    return absent(key) if entry is None else unchanged(entry)


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

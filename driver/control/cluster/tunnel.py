"""Other nodes' ranges routed through this node's VXLAN tunnel, following the node records
in etcd with a watch of their own: a node that joins is routed, one whose lease expires is
not any more."""

import json
import logging

from datapath import DatapathError
from datapath.interface import DatapathApi

from .kvstore import Entry, KvStore
from .nodes import NODES

log = logging.getLogger(__name__)


class RemoteNodes:
    """Datapath calls are made under the control plane's lock (`lock`), as every other one."""

    def __init__(self, kv: KvStore, node: str, datapath: DatapathApi, lock):
        self.node = node
        self.datapath = datapath
        self.lock = lock
        self._routed: dict[str, tuple[str, list[str]]] = {}  # name -> address, prefixes
        self.watch = kv.watch(NODES, self._reset, self._event)

    def close(self) -> None:
        self.watch.stop()

    def _reset(self, entries: list[Entry]) -> None:
        wanted = dict(filter(None, map(self._remote, entries)))
        with self.lock:
            for name in sorted(set(self._routed) | set(wanted)):
                self._route(name, wanted.get(name))

    def _event(self, kind: str, entry: Entry, _previous: Entry | None) -> None:
        found = self._remote(entry) if kind == "PUT" else None
        name = entry.key[len(NODES) :]
        with self.lock:
            self._route(name, found[1] if found else None)

    def _route(self, name: str, wanted: tuple[str, list[str]] | None) -> None:
        """Node name's ranges through the tunnel to its address (none: not any more)."""
        routed = self._routed.get(name)
        if routed == wanted:
            return
        if routed is not None:
            self.datapath.remove_remote_node(*routed)
            del self._routed[name]
            log.info("node %s (%s) is not routed any more", name, routed[0])
        if wanted is not None:
            try:
                self.datapath.set_remote_node(*wanted)
            except (DatapathError, ValueError) as exc:
                # One bad record must not stop the others being routed (the watch would
                # list again, and fail at it again).
                log.error("node %s cannot be routed: %s", name, exc)
                return
            self._routed[name] = wanted
            log.info("node %s: %s through the tunnel to %s", name, wanted[1], wanted[0])

    def _remote(self, entry: Entry) -> tuple[str, tuple[str, list[str]]] | None:
        name = entry.key[len(NODES) :]
        if name == self.node:
            return None
        try:
            record = json.loads(entry.value)
            return name, (record["address"], [record["ipv6_range"], record["ipv4_range"]])
        except (KeyError, TypeError, ValueError):
            log.warning("ignoring %s: not a node record", entry.key)
            return None

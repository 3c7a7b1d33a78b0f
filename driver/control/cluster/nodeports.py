"""Other nodes' published ports on this node's address too, as a cluster's NodePort: a port a
container publishes with `docker run -p 8080:80` on any host answers on every host's node
address.

Each node's endpoint records carry their containers' IPv4 ports published on every address
of their host ("ports" in endpoints.py). This node DNATs the same host ports on its node
(underlay) address alone, not on the host's other addresses, to the remote container
(`publish_ports`, one tag per remote endpoint); the datapath takes such connections into the
tunnel (DSR or SNAT, docs/architecture.md). A port a local container publishes on that
address wins; between remote endpoints, the one that has the port here keeps it, and a new
clash goes to the first by (node, endpoint id).
"""

import ipaddress
import logging
from collections.abc import Callable, Iterable

from datapath import PortMapping
from datapath.abi import PROTOCOL_NAMES
from datapath.errors import DatapathError
from datapath.interface import DatapathApi

from ..ports import REMOTE_TAG
from .endpoints import EndpointRecord

log = logging.getLogger(__name__)

PROTOCOLS = {name: number for number, name in PROTOCOL_NAMES.items()}


def remote_tag(record: EndpointRecord) -> str:
    return f"{REMOTE_TAG}{record.node}/{record.endpoint_id}"


class NodePorts:
    """Callers hold the control plane's lock. local_ports() gives the (protocol, host port)
    pairs local containers publish on this node's address."""

    def __init__(
        self,
        datapath: DatapathApi,
        node_address: str,
        local_ports: Callable[[], set[tuple[int, int]]],
    ):
        self.datapath = datapath
        self.address = ipaddress.IPv4Address(node_address)
        self.local_ports = local_ports
        self._published: dict[str, tuple[PortMapping, ...]] = {}
        self._skipped: set[tuple[str, int, int]] = set()  # warned of once, while it lasts
        # Rules an earlier run left (a restart keeps them, so flows keep going until the
        # first listing of etcd replaces or removes them).
        self._inherited = {t for t in datapath.published_tags() if t.startswith(REMOTE_TAG)}

    def sync(self, records: Iterable[EndpointRecord]) -> None:
        """Publish exactly what the remote records ask for, less what clashes."""
        wanted = self._wanted({remote_tag(r): r for r in records})
        for tag in sorted((set(self._published) | self._inherited) - set(wanted)):
            self.datapath.unpublish_ports(tag)
            self._published.pop(tag, None)
            log.info("published ports of %s closed on %s", tag, self.address)
        for tag, mappings in sorted(wanted.items()):
            if tag not in self._inherited and self._published.get(tag) == mappings:
                continue
            self.datapath.unpublish_ports(tag)
            self._published.pop(tag, None)
            try:
                self.datapath.publish_ports(tag, list(mappings))
            except (DatapathError, OSError) as exc:
                log.error("cannot publish the ports of %s on %s: %s", tag, self.address, exc)
                continue
            self._published[tag] = mappings
            log.info("published ports of %s on %s: %s", tag, self.address, _show(mappings))
        self._inherited.clear()

    def _wanted(self, records: dict[str, EndpointRecord]) -> dict[str, tuple[PortMapping, ...]]:
        local = self.local_ports()
        order = sorted(
            records,
            key=lambda t: (t not in self._published, records[t].node, records[t].endpoint_id),
        )
        taken: set[tuple[int, int]] = set()
        skipped: set[tuple[str, int, int]] = set()
        wanted = {}
        for tag in order:
            mappings = []
            for mapping in self._mappings(tag, records[tag]):
                port = (mapping.protocol, mapping.host_port)
                if port in local or port in taken:
                    skipped.add((tag, *port))
                    if (tag, *port) not in self._skipped:
                        holder = "a container of this node" if port in local else "another node"
                        log.warning(
                            "host port %d/%s of %s is not published on %s: %s has it",
                            mapping.host_port,
                            PROTOCOL_NAMES[mapping.protocol],
                            tag,
                            self.address,
                            holder,
                        )
                    continue
                taken.add(port)
                mappings.append(mapping)
            if mappings:
                wanted[tag] = tuple(mappings)
        self._skipped = skipped
        return wanted

    def _mappings(self, tag: str, record: EndpointRecord) -> list[PortMapping]:
        if not record.ipv4:
            return []
        try:
            container = ipaddress.IPv4Address(record.ipv4)
            return [
                PortMapping(
                    PROTOCOLS[item["proto"]],
                    self.address,
                    _port(item["host_port"]),
                    container,
                    _port(item["container_port"]),
                )
                for item in record.ports
            ]
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring the ports of %s: %r: %s", tag, record.ports, exc)
            return []


def _port(value) -> int:
    if not isinstance(value, int) or not 1 <= value <= 0xFFFF:
        raise ValueError(f"{value!r} is not a port")
    return value


def _show(mappings: tuple[PortMapping, ...]) -> str:
    return ", ".join(
        f"{m.host_port}/{PROTOCOL_NAMES[m.protocol]}->{m.address}:{m.port}" for m in mappings
    )

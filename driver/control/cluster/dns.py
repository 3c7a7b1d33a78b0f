"""Names of containers on other nodes, for Docker's embedded DNS.

Docker's embedded DNS answers the names of containers on the same network and host, and
forwards every other query, from inside the container's network namespace, to the
container's DNS servers (`docker run --dns`, or dockerd's `dns` setting). Given this
node's underlay address as the first of them, a query reaches this small server with the
asking container's address as its source: the answer is the addresses of the other
nodes' containers that have the name (container name or alias, or `NAME.NETWORK`) on the
asker's network, from the ipcache's records. A name it does not know gets SERVFAIL, on
which Docker asks its next server (the real resolver), so names outside the cluster keep
working. Only A and AAAA queries over UDP are answered.
"""

import ipaddress
import logging
import socket
import struct
import threading
from collections.abc import Callable

from .endpoints import EndpointRecord

log = logging.getLogger(__name__)

DNS_PORT = 53
TTL = 5  # seconds: containers come and go
TYPE_A, TYPE_AAAA, CLASS_IN = 1, 28, 1
RCODE_SERVFAIL, RCODE_NOTIMP = 2, 4
QR, OPCODE_MASK, AA, RD, RA = 0x8000, 0x7800, 0x0400, 0x0100, 0x0080
MAX_QUERY = 4096


class Query:
    """The one question of a query: its id, flags, name (lower case, without the final
    dot), type, and the question's bytes as they came."""

    def __init__(self, data: bytes):
        if len(data) < 12:
            raise ValueError("shorter than a DNS header")
        self.id, self.flags, qdcount = struct.unpack("!HHH", data[:6])
        if self.flags & QR or qdcount != 1:
            raise ValueError("not a query with one question")
        labels, offset = [], 12
        while True:
            if offset >= len(data):
                raise ValueError("name runs past the end")
            length = data[offset]
            offset += 1
            if length == 0:
                break
            if length > 63:
                raise ValueError("compressed or bad label in a question")
            labels.append(data[offset : offset + length].decode("ascii", "replace").lower())
            offset += length
        if offset + 4 > len(data):
            raise ValueError("question runs past the end")
        self.qtype, self.qclass = struct.unpack("!HH", data[offset : offset + 4])
        self.name = ".".join(labels)
        self.question = data[12 : offset + 4]

    def answer(self, addresses: list[str]) -> bytes:
        records = b"".join(
            struct.pack("!HHHIH", 0xC00C, self.qtype, CLASS_IN, TTL, len(packed)) + packed
            for packed in (ipaddress.ip_address(a).packed for a in addresses)
        )
        return self._reply(0, len(addresses)) + self.question + records

    def fail(self, rcode: int) -> bytes:
        return self._reply(rcode, 0) + self.question

    def _reply(self, rcode: int, count: int) -> bytes:
        flags = QR | (self.flags & (OPCODE_MASK | RD)) | AA | RA | rcode
        return struct.pack("!HHHHHH", self.id, flags, 1, count, 0, 0)


def respond(
    data: bytes,
    source: str,
    network_of: Callable[[str], str | None],
    records: Callable[[], list[EndpointRecord]],
) -> bytes | None:
    """The reply to one datagram from source; None for what is not a query."""
    try:
        query = Query(data)
    except ValueError:
        return None
    if query.qtype not in (TYPE_A, TYPE_AAAA) or query.qclass != CLASS_IN:
        return query.fail(RCODE_NOTIMP)
    network = network_of(source)
    if network is None:
        return query.fail(RCODE_SERVFAIL)
    version = 4 if query.qtype == TYPE_A else 6
    found = []
    for record in records():
        if record.network_name != network:
            continue
        names = {n.lower() for n in (record.container_name, *record.aliases) if n}
        if query.name in names or query.name in {f"{n}.{network.lower()}" for n in names}:
            address = record.ipv4 if version == 4 else record.ipv6
            found += [address] if address else []
    if not found:
        return query.fail(RCODE_SERVFAIL)
    return query.answer(sorted(found))


class ClusterDns:
    """The server on (address, port): one thread reading one UDP socket."""

    def __init__(
        self,
        address: str,
        port: int,
        network_of: Callable[[str], str | None],
        records: Callable[[], list[EndpointRecord]],
    ):
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self.sock.bind((address, port))
        except OSError:
            self.sock.close()
            raise
        self.sock.settimeout(0.5)
        self.network_of = network_of
        self.records = records
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster dns", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(MAX_QUERY)
            except TimeoutError:
                continue
            except OSError as exc:
                log.warning("cluster DNS: %s", exc)
                continue
            try:
                reply = respond(data, peer[0], self.network_of, self.records)
                if reply is not None:
                    self.sock.sendto(reply, peer)
            except Exception:
                # One bad query must not end the server.
                log.exception("cluster DNS: query from %s", peer[0])

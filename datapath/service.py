"""Services: frontends, backends and their validation, the vocabulary of the load balancer.

A service is one frontend (VIP, port, protocol) and a list of backends. The datapath spreads
new flows over backend *slots* by a hash of the flow; a backend's weight is its number of
slots, in the order given (so a slot list decodes back into the same backends).
"""

import ipaddress
from dataclasses import dataclass

from .abi import PORT_PROTOCOLS, PROTOCOL_NAMES, IPAddress
from .errors import DatapathError

MAX_SERVICE_ID = 0xFFFF
MAX_SLOTS = 256  # backend slots of one service: the sum of its backends' weights


@dataclass(frozen=True)
class Frontend:
    """Where clients send: a VIP and port. port 0 (protocol 0) is the VIP's L3-only frontend,
    used for any TCP/UDP port and ICMP echo that has no L4 frontend of its own."""

    address: IPAddress
    port: int  # 0 = L3-only frontend
    protocol: int  # 6 tcp, 17 udp; 0 with port 0

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        proto = PROTOCOL_NAMES[self.protocol] if self.protocol in PORT_PROTOCOLS else "any"
        return f"{host}:{self.port}/{proto}"

    def validate(self) -> None:
        if not isinstance(self.address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise DatapathError(f"frontend address {self.address!r} is not an IP address")
        if not isinstance(self.port, int) or not 0 <= self.port <= 0xFFFF:
            raise DatapathError(f"frontend {self}: port {self.port!r} out of range")
        if self.port == 0 and self.protocol != 0:
            raise DatapathError(f"frontend {self}: an L3-only frontend (port 0) has protocol 0")
        if self.port != 0 and self.protocol not in PORT_PROTOCOLS:
            raise DatapathError(f"frontend {self}: protocol must be tcp (6) or udp (17)")


@dataclass(frozen=True)
class Backend:
    """Where a flow to a frontend goes. port 0 keeps the client's destination port (the only
    choice with an L3-only frontend)."""

    address: IPAddress
    port: int
    weight: int = 1

    def validate(self, frontend: Frontend) -> None:
        if not isinstance(self.address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            raise DatapathError(f"backend address {self.address!r} is not an IP address")
        if self.address.version != frontend.address.version:
            raise DatapathError(
                f"backend {self.address} is IPv{self.address.version}, "
                f"frontend {frontend} is IPv{frontend.address.version}"
            )
        if not isinstance(self.port, int) or not 0 <= self.port <= 0xFFFF:
            raise DatapathError(f"backend {self.address}: port {self.port!r} out of range")
        if frontend.port == 0 and self.port != 0:
            raise DatapathError(
                f"backend {self.address}:{self.port}: an L3-only frontend keeps the client's "
                "port, its backends have port 0"
            )
        if not isinstance(self.weight, int) or self.weight < 1:
            raise DatapathError(f"backend {self.address}: weight {self.weight!r} must be >= 1")


def validate_service(service_id: int, frontend: Frontend, backends: list[Backend]) -> None:
    validate_service_id(service_id)
    frontend.validate()
    seen = set()
    for backend in backends:
        backend.validate(frontend)
        if (backend.address, backend.port) in seen:
            raise DatapathError(f"backend {backend.address} port {backend.port} listed twice")
        seen.add((backend.address, backend.port))
    slots = sum(backend.weight for backend in backends)
    if slots > MAX_SLOTS:
        raise DatapathError(
            f"service {service_id}: weights add up to {slots} slots, at most {MAX_SLOTS}"
        )


def validate_service_id(service_id: int) -> None:
    if not isinstance(service_id, int) or not 0 < service_id <= MAX_SERVICE_ID:
        raise DatapathError(f"service id {service_id!r} out of range 1..{MAX_SERVICE_ID}")


def slots_of(backends: list[Backend]) -> list[tuple[IPAddress, int]]:
    """The slot list: each backend (address, port) weight times, in order."""
    return [(b.address, b.port) for b in backends for _ in range(b.weight)]


def backends_of(slots: list[tuple[IPAddress, int]]) -> list[Backend]:
    """The backends a slot list was made of (weights = slot counts, first-seen order)."""
    weights: dict[tuple[IPAddress, int], int] = {}
    for slot in slots:
        weights[slot] = weights.get(slot, 0) + 1
    return [Backend(address, port, weight) for (address, port), weight in weights.items()]

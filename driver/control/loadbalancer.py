"""Services: a VIP frontend in front of explicit backends, or of every endpoint whose labels
match a selector (those backends follow containers as they come and go).

VIPs come from the configured service ranges, which the driver keeps unreachable on the
host, so a VIP never collides with an endpoint address and nothing sent to one leaks out.

NAT46: an IPv4 frontend takes IPv6 backends when each is an endpoint of an IPv6-only network
on this host. The datapath gets their NAT64 sides (the endpoints' IPv4 addresses) as
backends, routes the VIP from the host to them and translates (datapath/bpf/lib/nat46.h);
a backend that is gone is left out, so new flows go to the others.
"""

import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from datapath import INIT_ID, Backend, DatapathError, Frontend, Outbound
from datapath.abi import PORT_PROTOCOLS, PROTOCOL_NUMBERS
from datapath.interface import DatapathApi
from driver.errors import Conflict, InvalidArgument, NotFound

from .state import Endpoint, Store

MAX_SERVICE_ID = 0xFFFF
ADDRESS_PORT = re.compile(
    r"^\[(?P<v6>[0-9a-fA-F:.]+)\](?::(?P<p6>\d+))?$|^(?P<v4>[0-9.]+)(?::(?P<p4>\d+))?$"
)


@dataclass(frozen=True)
class Service:
    service_id: int
    name: str | None
    frontend: Frontend
    backends: tuple[Backend, ...]  # explicit backends; empty for a selector service
    selector: dict | None  # labels every backend endpoint carries
    backend_port: int  # port of selector backends; 0 keeps the frontend's port

    def record(self, resolved: list[Backend]) -> dict:
        """Explicit backends as given (a NAT46 service's are IPv6), a selector's as found."""
        shown = resolved if self.selector is not None else self.backends
        return {
            "id": self.service_id,
            "name": self.name,
            "frontend": str(self.frontend),
            "selector": self.selector,
            "backends": [_backend_text(b) for b in shown],
        }


def parse_address_port(text: str, what: str) -> tuple[ipaddress._BaseAddress, int]:
    """ "[fd00::1]:80", "10.0.0.1:80", or without the port (0)."""
    match = ADDRESS_PORT.match(text.strip())
    try:
        if not match:
            raise ValueError("expected [IPv6]:PORT or IPv4:PORT")
        address = ipaddress.ip_address(match["v6"] or match["v4"])
        port = int(match["p6"] or match["p4"] or 0)
    except ValueError as exc:
        raise InvalidArgument(f"{what} {text!r} does not parse: {exc}") from None
    if not 0 <= port <= 0xFFFF:
        raise InvalidArgument(f"{what} {text!r}: port {port} is out of range (1-65535)")
    return address, port


def parse_frontend(text: str, protocol: str) -> Frontend:
    address, port = parse_address_port(text, "frontend")
    number = PROTOCOL_NUMBERS.get(protocol.lower())
    if number not in PORT_PROTOCOLS:
        raise InvalidArgument(f"protocol {protocol!r} is not one of tcp, udp")
    return Frontend(address, port, number if port else 0)


def parse_backend(text: str) -> Backend:
    """ "ADDRESS:PORT" with an optional weight: "10.0.0.1:80@3"."""
    spec, _, weight = text.strip().partition("@")
    address, port = parse_address_port(spec, "backend")
    try:
        weight_value = int(weight) if weight else 1
    except ValueError:
        raise InvalidArgument(f"backend {text!r}: weight {weight!r} is not a number") from None
    return Backend(address, port, weight_value)


def _backend_text(b: Backend) -> str:
    host = f"[{b.address}]" if b.address.version == 6 else str(b.address)
    return f"{host}:{b.port}" + (f"@{b.weight}" if b.weight != 1 else "")


class Services:
    """Callers hold the control plane's lock."""

    def __init__(self, store: Store, datapath: DatapathApi, ranges: list):
        self.store = store
        self.datapath = datapath
        self.ranges = ranges
        # Cluster mode: other nodes' endpoints, (labels, IPv6, IPv4) each, which selector
        # services take as backends too (cluster/services.py sets it).
        self.remote_endpoints: Callable[[], list[tuple[dict, str, str | None]]] | None = None

    def update(self, request: dict) -> dict:
        service = self._parse(request)
        existing = {s.service_id: s for s in self.all()}
        for other in existing.values():
            if other.frontend == service.frontend and other.service_id != service.service_id:
                raise Conflict(f"frontend {service.frontend} is service {other.service_id}")
            if (
                service.name
                and other.name == service.name
                and other.service_id != service.service_id
            ):
                raise Conflict(f"service name {service.name!r} is service {other.service_id}")
        previous = existing.get(service.service_id)
        resolved = self.resolve(service)
        warnings = []
        if service.selector is not None and not resolved:
            warnings.append(f"selector {_labels(service.selector)} matches no endpoint yet")
        moved = previous is not None and previous.frontend != service.frontend
        if moved:
            # An id names one frontend in the datapath (it is the reverse-NAT key).
            self.datapath.delete_service(previous.service_id, previous.frontend)
        try:
            self.datapath.set_service(service.service_id, service.frontend, resolved)
        except DatapathError:
            if moved:  # refused whole: the previous frontend stays in force
                self.datapath.set_service(
                    previous.service_id, previous.frontend, self.resolve(previous)
                )
            raise
        with self.store.transaction():
            self.store.set_meta(f"service:{service.service_id}", _encode(service))
        return {**service.record(resolved), "warnings": warnings}

    def delete(self, service_id: int) -> None:
        service = self.get(service_id)
        self.datapath.delete_service(service.service_id, service.frontend)
        with self.store.transaction():
            self.store.delete_meta(f"service:{service_id}")

    def get(self, service_id: int) -> Service:
        raw = self.store.get_meta(f"service:{service_id}")
        if raw is None:
            raise NotFound(f"service {service_id} not found")
        return _decode(service_id, raw)

    def all(self) -> list[Service]:
        return [
            _decode(int(key.split(":", 1)[1]), value)
            for key, value in self.store.meta_with_prefix("service:")
        ]

    def records(self) -> list[dict]:
        return [s.record(self.resolve(s)) for s in sorted(self.all(), key=lambda s: s.service_id)]

    def sync(self) -> None:
        """Make the datapath's services what the state says: selector backends follow the
        endpoints that are ready now. Called after endpoints come, go or change identity."""
        services = self.all()
        wanted = {(s.service_id, s.frontend) for s in services}
        for frontend, (service_id, _) in self.datapath.services().items():
            if (service_id, frontend) not in wanted:
                self.datapath.delete_service(service_id, frontend)
        for service in services:
            try:
                self.datapath.set_service(
                    service.service_id, service.frontend, self.resolve(service)
                )
            except DatapathError as exc:
                raise DatapathError(f"service {service.service_id}: {exc}") from exc

    def resolve(self, service: Service) -> list[Backend]:
        """The backends the datapath gets: IPv6 ones of an IPv4 frontend as their NAT64
        sides, those whose endpoint is gone left out."""
        if service.selector is None:
            given = (self._datapath_backend(service.frontend, b) for b in service.backends)
            return [b for b in given if b is not None]
        port = service.backend_port or service.frontend.port
        found = [(ep.labels, ep.ipv6, ep.ipv4) for ep in self.store.endpoints() if _ready(ep)]
        if self.remote_endpoints is not None:
            found += self.remote_endpoints()
        backends = []
        for labels, ipv6, ipv4 in found:
            if not all(labels.get(k) == v for k, v in service.selector.items()):
                continue
            address = ipv6 if service.frontend.address.version == 6 else ipv4
            if address:
                backends.append(Backend(ipaddress.ip_address(address), port))
        if self.remote_endpoints is not None:
            backends.sort(key=lambda b: b.address)  # the same on every node
        return backends

    def _parse(self, request: dict) -> Service:
        frontend = parse_frontend(
            str(request.get("frontend", "")), str(request.get("protocol") or "tcp")
        )
        if not any(frontend.address in r for r in self.ranges):
            ranges = ", ".join(map(str, self.ranges))
            raise InvalidArgument(
                f"VIP {frontend.address} is outside the service ranges ({ranges})"
            )
        backends = request.get("backends")
        selector = request.get("selector")
        if (backends is None) == (selector is None):
            raise InvalidArgument("a service needs either backends or a selector")
        parsed = ()
        if backends is not None:
            if not isinstance(backends, list) or not backends:
                raise InvalidArgument("the backend list is empty")
            parsed = tuple(parse_backend(str(b)) for b in backends)
            for backend in parsed:
                self._check_backend(frontend, backend)
        elif not isinstance(selector, dict) or not selector:
            raise InvalidArgument("a selector needs at least one label, e.g. app=web")
        backend_port = _int(request.get("port", 0), "backend port")
        if not 0 <= backend_port <= 0xFFFF or (backend_port and not frontend.port):
            raise InvalidArgument(
                f"backend port {backend_port} is out of range or needs an L4 frontend"
            )
        name = request.get("name") or None
        return Service(
            service_id=self._service_id(request.get("id"), frontend),
            name=str(name) if name else None,
            frontend=frontend,
            backends=parsed,
            selector={str(k): str(v) for k, v in selector.items()} if selector else None,
            backend_port=backend_port,
        )

    def _datapath_backend(self, frontend: Frontend, backend: Backend) -> Backend | None:
        if frontend.address.version == 4 and backend.address.version == 6:
            return self._nat64_side(backend)
        return backend

    def _nat64_side(self, backend: Backend) -> Backend | None:
        """The IPv6 backend as its endpoint's NAT64 side, or None if it is no local endpoint
        of an IPv6-only network."""
        for ep in self.store.endpoints():
            if ep.ipv6 and ipaddress.ip_address(ep.ipv6) == backend.address and ep.ipv4:
                net = self.store.get_network(ep.network_id)
                if net is not None and net.outbound == Outbound.NAT64.value:
                    return Backend(ipaddress.ip_address(ep.ipv4), backend.port, backend.weight)
        return None

    def _check_backend(self, frontend: Frontend, backend: Backend) -> None:
        if frontend.address.version == 4 and backend.address.version == 6:
            side = self._nat64_side(backend)
            if side is None:
                raise InvalidArgument(
                    f"backend {backend.address} is IPv6, frontend {frontend} is IPv4: NAT46 "
                    "takes only IPv6 backends that are endpoints of an IPv6-only network "
                    "(-o ipv4=false) on this host"
                )
            backend = side
        try:
            backend.validate(frontend)
        except DatapathError as exc:
            raise InvalidArgument(str(exc)) from None
        if any(backend.address in r for r in self.ranges):
            raise InvalidArgument(f"backend {backend.address} is a VIP address")

    def _service_id(self, wanted, frontend: Frontend) -> int:
        if wanted not in (None, "", 0):
            number = _int(wanted, "service id")
            if not 1 <= number <= MAX_SERVICE_ID:
                raise InvalidArgument(f"service id {number} must be 1-{MAX_SERVICE_ID}")
            return number
        services = self.all()
        for service in services:
            if service.frontend == frontend:
                return service.service_id
        used = {s.service_id for s in services}
        return next(n for n in range(1, MAX_SERVICE_ID + 1) if n not in used)


def _ready(ep: Endpoint) -> bool:
    return ep.identity != INIT_ID and bool(ep.sandbox_key)


def _labels(labels: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _int(value, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidArgument(f"{what} {value!r} is not a number") from None


def _encode(service: Service) -> str:
    return json.dumps(
        {
            "name": service.name,
            "frontend": [
                str(service.frontend.address),
                service.frontend.port,
                service.frontend.protocol,
            ],
            "backends": [[str(b.address), b.port, b.weight] for b in service.backends],
            "selector": service.selector,
            "backend_port": service.backend_port,
        }
    )


def _decode(service_id: int, raw: str) -> Service:
    data = json.loads(raw)
    address, port, protocol = data["frontend"]
    return Service(
        service_id=service_id,
        name=data["name"],
        frontend=Frontend(ipaddress.ip_address(address), port, protocol),
        backends=tuple(Backend(ipaddress.ip_address(a), p, w) for a, p, w in data["backends"]),
        selector=data["selector"],
        backend_port=data["backend_port"],
    )

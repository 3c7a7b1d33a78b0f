"""Fixtures for datapath tests: a real Datapath on a per-session pin dir, and "containers"
made of network namespaces configured the way Docker configures them.

These tests need root, bpffs and kernel headers. They never skip: without root they fail.
Traffic stays between namespaces made here; the host gets unreachable routes for the test
ranges so nothing addressed to them can leave the machine.
"""

import dataclasses
import ipaddress
import itertools
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field

import pytest

from datapath import Datapath, EndpointSpec, Outbound
from datapath.netfilter import firewall, portmap

from . import traffic

PREFIX = "dpt"  # host veths of test endpoints; never "lxc", which the driver owns
NET6 = ipaddress.IPv6Network("fdce:1c99::/64")
NET4 = ipaddress.IPv4Network("10.199.0.0/16")
# The test datapath's service ranges: test_lb's VIPs (fdce:1c97::/64, 10.197.0.0/24) and
# test_nat46's (10.196.0.0/24); the endpoints' addresses are outside them.
SERVICE_RANGES = ("fdce:1c97::/64", "10.196.0.0/15")
ROUTER6 = NET6[1]
ROUTER4 = NET4[1]

_serial = itertools.count(16)


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=30)


def make_spec(n: int, identity: int | None = None) -> EndpointSpec:
    """Spec number n; its identity is 1000 + n unless given (INIT_ID: waiting)."""
    tag = f"{os.getpid() & 0xFFFF:04x}{n:08x}"
    return EndpointSpec(
        endpoint_id=n,
        host_ifname=f"{PREFIX}{tag}",
        peer_ifname=f"dpp{tag}",
        mac=f"02:dc:00:00:{n >> 8 & 0xFF:02x}:{n & 0xFF:02x}",
        ipv6=NET6[n],
        ipv4=NET4[n],
        router6=ROUTER6,
        router4=ROUTER4,
        identity=1000 + n if identity is None else identity,
    )


@dataclass
class Container:
    """A network namespace holding the peer of an endpoint, named and addressed like Docker."""

    netns: str
    spec: EndpointSpec
    ifindex: int
    servers: list = field(default_factory=list)

    @property
    def identity(self) -> int:
        return self.spec.identity

    def addr(self, version: int):
        return self.spec.ipv6 if version == 6 else self.spec.ipv4

    def serve(self, port: int, proto: str = "tcp") -> None:
        """Echo server on port, for both families, until the container goes."""
        self.servers.append(traffic.serve(self.netns, port, proto))

    def exchange(self, addr, port: int, proto: str = "tcp", timeout: float = 2) -> bool:
        return traffic.exchange(self.netns, addr, port, proto, timeout)

    def session(self, addr, port: int, proto: str = "tcp") -> traffic.Session:
        return traffic.Session(self.netns, addr, port, proto)

    def exec(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", self.netns, *args, check=check)

    def ip(self, *args: str) -> subprocess.CompletedProcess:
        return run("ip", "-n", self.netns, *args)

    def ping(self, addr, *extra: str, timeout: int = 2) -> bool:
        cmd = ["ping", "-c", "1", "-W", str(timeout), *extra, str(addr)]
        return self.exec(*cmd, check=False).returncode == 0

    def neighbour_mac(self, addr) -> str | None:
        words = self.ip("neigh", "show", str(addr), "dev", "eth0").stdout.split()
        return words[words.index("lladdr") + 1] if "lladdr" in words else None

    def setup(self) -> None:
        spec = self.spec
        run("ip", "netns", "add", self.netns)
        run("ip", "link", "set", spec.peer_ifname, "netns", self.netns)
        self.ip("link", "set", spec.peer_ifname, "name", "eth0")
        self.ip("link", "set", "lo", "up")
        self.ip("link", "set", "eth0", "up")
        self.ip("-6", "addr", "add", f"{spec.ipv6}/128", "dev", "eth0", "nodad")
        self.ip("addr", "add", f"{spec.ipv4}/32", "dev", "eth0")
        self.ip("-6", "route", "add", str(spec.router6), "dev", "eth0")
        self.ip("-6", "route", "add", "default", "via", str(spec.router6), "dev", "eth0")
        self.ip("route", "add", f"{spec.router4}/32", "dev", "eth0")
        self.ip("route", "add", "default", "via", str(spec.router4), "dev", "eth0")


@pytest.fixture(scope="session")
def pin_dir():
    path = f"/sys/fs/bpf/pycilium-test-{os.getpid()}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def datapath(pin_dir):
    dp = Datapath(pin_dir=pin_dir, veth_prefix=PREFIX, service_ranges=SERVICE_RANGES)
    dp.start()
    dp.add_unreachable_route(str(NET6))
    dp.add_unreachable_route(str(NET4))
    yield dp
    dp.remove_unreachable_route(str(NET6))
    dp.remove_unreachable_route(str(NET4))
    dp.close()
    # What Datapath.start() put into netfilter for this prefix.
    firewall.remove_forwarding(PREFIX)
    firewall.remove_masquerade(PREFIX)
    portmap.teardown(PREFIX)


@pytest.fixture
def new_spec():
    """Factory of endpoint specs with fresh names and addresses."""
    return lambda identity=None: make_spec(next(_serial), identity)


@pytest.fixture
def make_container(datapath, new_spec):
    """Factory: create an endpoint with the datapath and put its peer in a new netns."""
    made: list[Container] = []

    def make(identity: int | None = None, outbound: Outbound = Outbound.MASQUERADE) -> Container:
        spec = dataclasses.replace(new_spec(identity), outbound=outbound)
        ifindex = datapath.create_endpoint(spec)
        container = Container(f"dpt-{os.getpid()}-{spec.endpoint_id}", spec, ifindex)
        made.append(container)
        container.setup()
        return container

    yield make
    for container in made:
        for server in container.servers:
            traffic.stop(server)
        datapath.delete_endpoint(container.spec)
        run("ip", "netns", "del", container.netns, check=False)


class EventLog:
    """Events read by Datapath.read_events in a background thread."""

    def __init__(self):
        self.events = []

    def wait_for(self, timeout: float = 3, **fields):
        """The first event whose attributes equal fields, waiting up to timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for event in list(self.events):
                if all(getattr(event, name) == value for name, value in fields.items()):
                    return event
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)


@pytest.fixture
def event_log(datapath):
    log = EventLog()
    stop = threading.Event()
    reader = threading.Thread(
        target=datapath.read_events, args=(log.events.append, stop), daemon=True
    )
    reader.start()
    yield log
    stop.set()
    reader.join(5)
    assert not reader.is_alive()

"""Simulated hosts for the tunnel tests: each a network namespace with its own Datapath
(in a child process that entered the namespace, since the datapath works on the namespace
it runs in), joined to the others by a veth underlay in 198.51.100.0/24, with endpoint
namespaces of its own.
"""

import contextlib
import dataclasses
import ipaddress
import multiprocessing
import os
import threading
import traceback

from pyroute2.netns import setns

from datapath import Datapath, EndpointSpec
from datapath.abi import HOST_ID
from datapath.datapath import SERVICE_MODE_DSR

from . import traffic
from .conftest import Container, run

UNDERLAY = ipaddress.IPv4Network("198.51.100.0/24")
CLUSTER6 = ipaddress.IPv6Network("fdce:1c9a::/32")
CLUSTER4 = ipaddress.IPv4Network("10.198.0.0/16")
# The hosts' service ranges: the VIPs of test_tunnel.py, inside the cluster ranges' last parts.
SERVICE_RANGES = ("fdce:1c9a:ffff::/48", "10.198.255.0/24")


# What ends a host's child. Not the end of its pipe: the children forked after it hold
# copies of the parent's end, so it would see no EOF until they exit.
CLOSE = "close"


def _serve(netns: str, pin_dir: str, veth_prefix: str, service_mode: str, conn) -> None:
    """The child: a Datapath in netns, running the calls conn sends until CLOSE."""
    setns(netns)
    dp = Datapath(
        pin_dir=pin_dir,
        veth_prefix=veth_prefix,
        service_mode=service_mode,
        service_ranges=SERVICE_RANGES,
    )
    events: list = []
    stop = threading.Event()
    while True:
        try:
            name, args, kwargs = conn.recv()
        except EOFError:
            break
        if name == CLOSE:
            break
        try:
            if name == "start_events":
                threading.Thread(
                    target=dp.read_events, args=(events.append, stop), daemon=True
                ).start()
                result = None
            elif name == "events":
                result = list(events)
            else:
                result = getattr(dp, name)(*args, **kwargs)
            conn.send(("ok", result))
        except Exception as exc:  # handed to the test, which raises it
            conn.send(("error", f"{exc!r}\n{traceback.format_exc()}"))
    stop.set()
    dp.close()


def _call_in(netns: str, conn, function, args) -> None:
    setns(netns)
    try:
        conn.send(("ok", function(*args)))
    except Exception as exc:
        conn.send(("error", f"{exc!r}\n{traceback.format_exc()}"))


def call_in_netns(netns: str, function, *args):
    """function(*args) in a child process in netns (only the network namespace: the BPF
    filesystem stays, where `ip netns exec` would remount /sys without it)."""
    ours, theirs = multiprocessing.Pipe()
    child = multiprocessing.get_context("fork").Process(
        target=_call_in, args=(netns, theirs, function, args)
    )
    child.start()
    status, result = ours.recv()
    child.join(30)
    if status != "ok":
        raise RuntimeError(f"{function.__name__} in {netns} failed: {result}")
    return result


class HostDatapath:
    """Calls on the Datapath of a host's child process, by name: host.dp.create_endpoint(...)."""

    def __init__(self, netns: str, pin_dir: str, veth_prefix: str, service_mode: str):
        self._conn, theirs = multiprocessing.Pipe()
        self._child = multiprocessing.get_context("fork").Process(
            target=_serve, args=(netns, pin_dir, veth_prefix, service_mode, theirs), daemon=True
        )
        self._child.start()
        theirs.close()

    def __getattr__(self, name: str):
        def call(*args, **kwargs):
            self._conn.send((name, args, kwargs))
            status, result = self._conn.recv()
            if status != "ok":
                raise RuntimeError(f"{name} in the host failed: {result}")
            return result

        return call

    def stop(self) -> None:
        with contextlib.suppress(BrokenPipeError):  # a child that died has said why already
            self._conn.send((CLOSE, (), {}))
        self._conn.close()
        self._child.join(30)

    def kill(self) -> None:
        """As a driver killed with -9: nothing is closed or undone."""
        self._child.kill()
        self._child.join(30)
        self._conn.close()


@dataclasses.dataclass
class Host:
    """One simulated host: its namespace, underlay address, node ranges and datapath."""

    name: str
    index: int
    netns: str
    underlay: ipaddress.IPv4Address
    range6: ipaddress.IPv6Network
    range4: ipaddress.IPv4Network
    pin_dir: str
    prefix: str
    service_mode: str = SERVICE_MODE_DSR
    dp: HostDatapath | None = None
    endpoints: list = dataclasses.field(default_factory=list)
    serial: int = 16

    @property
    def prefixes(self) -> list[str]:
        return [str(self.range6), str(self.range4)]

    def ip(self, *args: str, check: bool = True):
        return run("ip", "-n", self.netns, *args, check=check)

    def exec(self, *args: str, check: bool = True):
        return run("ip", "netns", "exec", self.netns, *args, check=check)

    def start(self) -> None:
        """The datapath, as a driver starts it (or restarts: all of it is idempotent):
        unreachable cluster ranges, the host's addresses as the host identity, the tunnel."""
        self.dp = HostDatapath(self.netns, self.pin_dir, self.prefix, self.service_mode)
        self.dp.start()
        self.dp.add_unreachable_route(str(CLUSTER6))
        self.dp.add_unreachable_route(str(CLUSTER4))
        self.dp.set_cidr_identities(
            {f"{a}/{ipaddress.ip_address(a).max_prefixlen}": HOST_ID for a in self.addresses()}
        )
        self.dp.enable_tunnel(str(self.underlay))
        self.dp.start_events()

    def addresses(self) -> list[str]:
        return self.dp.host_addresses()

    def spec(self, identity: int, mtu: int = 1500) -> EndpointSpec:
        n = self.serial
        self.serial += 1
        tag = f"{os.getpid() & 0xFFFF:04x}{self.name}{n:06x}"
        return EndpointSpec(
            endpoint_id=n,
            host_ifname=f"{self.prefix}{tag}"[:15],
            peer_ifname=f"tnp{tag}"[:15],
            mac=f"02:dd:00:{self.index:02x}:{n >> 8 & 0xFF:02x}:{n & 0xFF:02x}",
            ipv6=self.range6[n],
            ipv4=self.range4[n],
            router6=self.range6[1],
            router4=self.range4[1],
            mtu=mtu,
            identity=identity,
        )

    def endpoint(self, identity: int, mtu: int = 1500) -> Container:
        """An endpoint of this host in a namespace of its own, configured as Docker does."""
        spec = self.spec(identity, mtu)
        ifindex = self.dp.create_endpoint(spec)
        container = Container(f"{self.netns}-{spec.endpoint_id}", spec, ifindex)
        self.endpoints.append(container)
        run("ip", "netns", "add", container.netns)
        self.ip("link", "set", spec.peer_ifname, "netns", container.netns)
        container.ip("link", "set", spec.peer_ifname, "name", "eth0")
        container.ip("link", "set", "lo", "up")
        container.ip("link", "set", "eth0", "up")
        container.ip("-6", "addr", "add", f"{spec.ipv6}/128", "dev", "eth0", "nodad")
        container.ip("addr", "add", f"{spec.ipv4}/32", "dev", "eth0")
        container.ip("-6", "route", "add", str(spec.router6), "dev", "eth0")
        container.ip("-6", "route", "add", "default", "via", str(spec.router6), "dev", "eth0")
        container.ip("route", "add", f"{spec.router4}/32", "dev", "eth0")
        container.ip("route", "add", "default", "via", str(spec.router4), "dev", "eth0")
        return container

    def remove_endpoints(self) -> None:
        for container in self.endpoints:
            for server in container.servers:
                traffic.stop(server)
            self.dp.delete_endpoint(container.spec)
            run("ip", "netns", "del", container.netns, check=False)
        self.endpoints.clear()


def make_hosts(count: int, tag: str, service_mode: str = SERVICE_MODE_DSR) -> list[Host]:
    """count hosts in namespaces, each with a veth to a bridge-less underlay: host 1 is
    joined to every other host by a veth pair (enough for the tests' two or three)."""
    pid = os.getpid()
    hosts = [
        Host(
            name=f"{tag}{k}",
            index=k,
            netns=f"tn{pid}{tag}{k}",
            underlay=UNDERLAY[k],
            range6=ipaddress.IPv6Network(f"fdce:1c9a:{k}::/64"),
            range4=ipaddress.IPv4Network(f"10.198.{k}.0/24"),
            pin_dir=f"/sys/fs/bpf/pycilium-tunnel-{pid}-{tag}{k}",
            prefix="tnl",
            service_mode=service_mode,
        )
        for k in range(1, count + 1)
    ]
    for host in hosts:
        run("ip", "netns", "add", host.netns)
        host.ip("link", "set", "lo", "up")
    first = hosts[0]
    for other in hosts[1:]:
        near, far = f"u{other.name}", f"u{first.name}"
        first.ip("link", "add", near, "type", "veth", "peer", "name", far, "netns", other.netns)
        first.ip("addr", "add", f"{first.underlay}/32", "dev", near)
        first.ip("link", "set", near, "up")
        first.ip("route", "add", f"{other.underlay}/32", "dev", near)
        other.ip("addr", "add", f"{other.underlay}/32", "dev", far)
        other.ip("link", "set", far, "up")
        other.ip("route", "add", f"{first.underlay}/32", "dev", far)
    return hosts


OUTSIDE = UNDERLAY[200]


def add_outside_client(hosts: list[Host], tag: str) -> str:
    """A namespace outside the cluster at OUTSIDE, on the underlay of every host (a veth to
    each, as a router would join them, carrying the host's underlay address: made before
    the hosts start, so it is one of their underlay devices): it reaches host 1's address
    through host 1, and each host routes OUTSIDE to it directly, so a reply may come from
    any host. Its name; remove_hosts(hosts) does not remove it, remove_outside_client does."""
    netns = f"tn{os.getpid()}{tag}out"
    run("ip", "netns", "add", netns)
    run("ip", "-n", netns, "link", "set", "lo", "up")
    for host in hosts:
        near, far = f"o{host.name}", f"h{host.name}"
        host.ip("link", "add", near, "type", "veth", "peer", "name", far, "netns", netns)
        host.ip("addr", "add", f"{host.underlay}/32", "dev", near)
        host.ip("link", "set", near, "up")
        host.ip("route", "add", f"{OUTSIDE}/32", "dev", near)
        run("ip", "-n", netns, "addr", "add", f"{OUTSIDE}/32", "dev", far)
        run("ip", "-n", netns, "link", "set", far, "up")
    run("ip", "-n", netns, "route", "add", f"{hosts[0].underlay}/32", "dev", f"h{hosts[0].name}")
    return netns


def remove_outside_client(netns: str) -> None:
    run("ip", "netns", "del", netns, check=False)


def remove_hosts(hosts: list[Host]) -> None:
    for host in hosts:
        if host.dp is not None:
            host.remove_endpoints()
            host.dp.stop()
        run("ip", "netns", "del", host.netns, check=False)
        run("rm", "-rf", host.pin_dir, check=False)

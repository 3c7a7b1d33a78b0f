"""The datapath facade the control plane calls: endpoints, routes, counters.

Methods are idempotent "make it so" operations. They are not thread-safe among
themselves: the caller serialises them (the control plane holds one lock).
"""

import ipaddress
import socket
from contextlib import ExitStack
from pathlib import Path

from . import bpffs, loader, netlink
from .errors import DatapathError, VethExistsError
from .maps import AddressEntry, DatapathMaps, EndpointEntry, IPAddress
from .spec import EndpointSpec

DEFAULT_PIN_DIR = "/sys/fs/bpf/pycilium"


def _host_cidr(ip: IPAddress) -> str:
    return f"{ip}/{ip.max_prefixlen}"


class Datapath:
    """Owner of the pinned maps and the loaded program of one driver process."""

    def __init__(self, pin_dir: str = DEFAULT_PIN_DIR, veth_prefix: str = "lxc"):
        self.pin_dir = Path(pin_dir)
        self.veth_prefix = veth_prefix
        self.compile_count = 0
        self._maps: DatapathMaps | None = None
        self._program: loader.Program | None = None

    # lifecycle

    def start(self) -> None:
        """Open (or create) the pinned maps, compile and load the program, enable forwarding."""
        if self._program is not None:
            return
        bpffs.ensure_pin_dir(self.pin_dir)
        maps = DatapathMaps.open(self.pin_dir)
        try:
            program = loader.load_program(maps.fds())
        except BaseException:
            maps.close()
            raise
        self.compile_count += 1
        self._maps, self._program = maps, program
        netlink.enable_forwarding()

    def close(self) -> None:
        """Release the program and map fds. Attached programs and pinned maps stay."""
        if self._program is not None:
            self._program.close()
            self._program = None
        if self._maps is not None:
            self._maps.close()
            self._maps = None

    @property
    def maps(self) -> DatapathMaps:
        if self._maps is None:
            raise DatapathError("the datapath is not started")
        return self._maps

    @property
    def program(self) -> loader.Program:
        if self._program is None:
            raise DatapathError("the datapath is not started")
        return self._program

    # endpoints

    def create_endpoint(self, spec: EndpointSpec) -> int:
        """Build the endpoint's veth, routes, map entries and program; returns the host ifindex.

        Raises VethExistsError (changing nothing) if spec.host_ifname exists. A failure
        midway removes everything this call made.
        """
        program = self.program
        if netlink.link_index(spec.host_ifname) is not None:
            raise VethExistsError(f"interface {spec.host_ifname} already exists")
        with ExitStack() as undo:
            ifindex = netlink.create_veth(spec.host_ifname, spec.peer_ifname, spec.mac, spec.mtu)
            undo.callback(netlink.delete_link, spec.host_ifname)
            self._install(spec, ifindex, undo)
            loader.attach_ingress(ifindex, program)
            undo.pop_all()
        return ifindex

    def delete_endpoint(self, spec: EndpointSpec) -> None:
        """Remove map entries, routes and the veth of spec; whatever is missing is fine."""
        self._forget(spec)
        for ip in spec.addresses():
            netlink.delete_route(_host_cidr(ip))
        netlink.delete_link(spec.host_ifname)

    def restore_endpoint(self, spec: EndpointSpec) -> bool:
        """Make an existing endpoint right again after a driver restart.

        If the host veth exists: routes, map entries and program are replaced, True.
        If it is gone: its map entries are removed, False.
        """
        ifindex = netlink.link_index(spec.host_ifname)
        if ifindex is None:
            self._forget(spec)
            return False
        self._forget(spec, keep_ifindex=ifindex)
        # A repair, not a transaction: nothing is undone if a step fails.
        self._install(spec, ifindex, ExitStack())
        loader.attach_ingress(ifindex, self.program)
        return True

    def link_exists(self, ifname: str) -> bool:
        """Whether a link of that name is in the host namespace (a veth peer Docker pulled
        back out of a stopped container shows up here)."""
        return netlink.link_index(ifname) is not None

    def remove_orphans(self, known_host_ifnames: set[str]) -> list[str]:
        """Delete veth_prefix* links not known, and map entries of no known endpoint."""
        removed = []
        for name in netlink.links_with_prefix(self.veth_prefix):
            if name not in known_host_ifnames and netlink.delete_link(name):
                removed.append(name)
        links = netlink.links_with_prefix("")
        live = {links[name] for name in known_host_ifnames if name in links}
        for ifindex in self.maps.endpoints():
            if ifindex not in live and self.maps.delete_endpoint(ifindex):
                removed.append(f"endpoint map entry {ifindex}")
        for ip, entry in self.maps.addresses().items():
            if entry.ifindex not in live and self.maps.delete_address(ip):
                removed.append(f"address map entry {ip}")
        return removed

    def _install(self, spec: EndpointSpec, ifindex: int, undo: ExitStack) -> None:
        """Host-side settings, routes and map entries; registers their removal on undo."""
        netlink.configure_host_veth(spec.host_ifname, ifindex)
        for ip in spec.addresses():
            netlink.replace_device_route(_host_cidr(ip), ifindex)
            undo.callback(netlink.delete_route, _host_cidr(ip))
        self.maps.put_endpoint(ifindex, self._entry(spec, netlink.link_mac(ifindex)))
        undo.callback(self.maps.delete_endpoint, ifindex)
        for ip in spec.addresses():
            self.maps.put_address(ip, ifindex, spec.endpoint_id)
            undo.callback(self.maps.delete_address, ip)

    def _forget(self, spec: EndpointSpec, keep_ifindex: int | None = None) -> None:
        """Remove map entries of spec, except those under keep_ifindex."""
        for ifindex, entry in self.maps.endpoints().items():
            if entry.ipv6 == spec.ipv6 and ifindex != keep_ifindex:
                self.maps.delete_endpoint(ifindex)
        addresses = self.maps.addresses()
        for ip in spec.addresses():
            owner = addresses.get(ip)
            if owner is not None and owner.ifindex != keep_ifindex:
                self.maps.delete_address(ip)

    @staticmethod
    def _entry(spec: EndpointSpec, node_mac: str) -> EndpointEntry:
        return EndpointEntry(
            endpoint_id=spec.endpoint_id,
            mac=spec.mac.lower(),
            node_mac=node_mac,
            ipv6=spec.ipv6,
            ipv4=spec.ipv4,
            router6=spec.router6,
            router4=spec.router4,
        )

    # routes

    def add_unreachable_route(self, cidr: str) -> None:
        netlink.add_unreachable_route(cidr)

    def remove_unreachable_route(self, cidr: str) -> None:
        netlink.remove_unreachable_route(cidr)

    def host_route_overlaps(self, cidr: str) -> list[str]:
        """Destinations of host main-table routes overlapping cidr, except default routes,
        link-local and multicast ones, and our own (unreachable and endpoint routes)."""
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise DatapathError(f"invalid network {cidr!r}: {exc}") from exc
        family = socket.AF_INET6 if net.version == 6 else socket.AF_INET
        overlaps = []
        for route in netlink.main_routes(family):
            dst = ipaddress.ip_network(route.dst, strict=False)
            if self._ignored_route(route, dst):
                continue
            if dst.overlaps(net):
                overlaps.append(route.dst)
        return overlaps

    def _ignored_route(self, route: netlink.Route, dst) -> bool:
        own_endpoint = (
            dst.prefixlen == dst.max_prefixlen
            and route.ifname is not None
            and route.ifname.startswith(self.veth_prefix)
        )
        return (
            dst.prefixlen == 0
            or dst.is_link_local
            or dst.is_multicast
            or route.proto == netlink.ROUTE_PROTOCOL
            or own_endpoint
        )

    def sandbox_route_destinations(self, sandbox_key: str) -> set[str]:
        return netlink.sandbox_route_destinations(sandbox_key)

    # introspection

    def drop_counts(self) -> dict[str, int]:
        """Drop reason name -> packets, summed over CPUs."""
        return self.maps.drop_counts()

    def trace_counts(self) -> dict[str, int]:
        """Trace point name (TRACE_TO_STACK, TRACE_TO_LXC, TRACE_REPLY) -> packets."""
        return self.maps.trace_counts()

    def endpoint_map_entries(self) -> dict[int, EndpointEntry]:
        """Host ifindex -> decoded endpoints map entry."""
        return self.maps.endpoints()

    def address_map_entries(self) -> dict[IPAddress, AddressEntry]:
        """Endpoint address -> owning host ifindex and endpoint id."""
        return self.maps.addresses()

"""The datapath facade the control plane calls: endpoints, identities, policy, routes,
counters, conntrack, events, and the tunnel to other hosts with its ipcache.

Methods are idempotent "make it so" operations. They are not thread-safe among
themselves: the caller serialises them (the control plane holds one lock). The one
exception is :meth:`Datapath.read_events`, which shares no state with the others and may
run in a thread of its own.

Longer than 300 lines because it is the one place that orders the steps of each use case
across netlink, the maps, the sweeper and netfilter (what is made first, what is undone on
failure, which write comes before which so that no packet sees a half-made state); the
steps themselves live in those modules.
"""

import dataclasses
import ipaddress
import os
import threading
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path

from . import bpffs, events, hostnet, loader, netlink, xdp
from .abi import (
    CONFIG_FLOW_EVENTS,
    CONFIG_TRACE_EVENTS,
    DEFAULT_SERVICE_RANGES,
    EP_F_EGRESS_ENFORCED,
    EP_F_INGRESS_ENFORCED,
    EP_F_NAT64,
    EP_F_OUTBOUND,
    INGRESS,
    PREFILTER_MAX,
    WORLD_ID,
    IPAddress,
    PolicyKey,
    validate_identity,
)
from .errors import DatapathError, VethExistsError
from .flowends import EndedFlows
from .maps import DEFAULT_MAP_SIZES, AddressEntry, CtEntry, DatapathMaps, EndpointEntry, MapSizes
from .maps.conntrack import monotonic_seconds
from .maps.flows import FlowCount
from .netfilter import firewall, portmap
from .service import Backend, Frontend, backends_of, slots_of, validate_service, validate_service_id
from .spec import EndpointSpec, Outbound
from .sweeper import FlowSweeper

DEFAULT_PIN_DIR = "/sys/fs/bpf/pycilium"
PROGRAM_STORE_DIR = "programs"  # under the pin dir: the loaded programs, for the next process
SWEEP_WAIT_SECONDS = 30.0  # a new endpoint waits this long at most for a predecessor's sweep
TUNNEL_DEVICE = "cilium_vxlan"  # the node's one VXLAN device (other tools know the name)
# How a published port reaches a container on another node (docs/architecture.md): its
# reply straight from that node (direct server return) or back through this one (SNAT).
SERVICE_MODE_DSR, SERVICE_MODE_SNAT = "dsr", "snat"
SERVICE_MODES = (SERVICE_MODE_DSR, SERVICE_MODE_SNAT)
NS_PER_SECOND = 1_000_000_000


def _host_cidr(ip: IPAddress) -> str:
    return f"{ip}/{ip.max_prefixlen}"


def _parse_address(address: str) -> IPAddress:
    try:
        return ipaddress.ip_address(address)
    except ValueError as exc:
        raise DatapathError(f"invalid address {address!r}: {exc}") from exc


def _node_address(address: str) -> ipaddress.IPv4Address:
    """A node's underlay address: the tunnel runs over IPv4."""
    ip = _parse_address(address)
    if ip.version != 4:
        raise DatapathError(f"a node's underlay address is IPv4, not {address}")
    return ip


class Datapath:
    """Owner of the pinned maps and the loaded program of one driver process."""

    def __init__(
        self,
        pin_dir: str = DEFAULT_PIN_DIR,
        veth_prefix: str = "lxc",
        map_sizes: MapSizes = DEFAULT_MAP_SIZES,
        nat64_prefix: str = loader.DEFAULT_NAT64_PREFIX,
        service_mode: str = SERVICE_MODE_DSR,
        service_ranges: tuple[str, str] = DEFAULT_SERVICE_RANGES,
    ):
        if service_mode not in SERVICE_MODES:
            raise DatapathError(f"service mode {service_mode!r} must be one of {SERVICE_MODES}")
        self.pin_dir = Path(pin_dir)
        self.service_mode = service_mode
        self.veth_prefix = veth_prefix
        self.map_sizes = map_sizes
        self.nat64_prefix = nat64_prefix
        # (IPv6, IPv4): the programs look up services only for destinations inside them
        self.service_ranges = service_ranges
        self._store = loader.ProgramStore(self.pin_dir / PROGRAM_STORE_DIR)
        self._maps: DatapathMaps | None = None
        self._programs: loader.Programs | None = None
        self._sweeper: FlowSweeper | None = None
        self._ended = EndedFlows()
        self._xdp: loader.Program | None = None  # compiled when a device first needs it
        self._overlay: loader.OverlayPrograms | None = None  # compiled on first use
        self._tunnel_mtu: int | None = None  # of the tunnel device, once enabled

    # lifecycle

    def start(self) -> None:
        """Open (or create) the pinned maps, compile and load the programs, enable forwarding
        and masquerading."""
        if self._programs is not None:
            return
        bpffs.ensure_pin_dir(self.pin_dir)
        maps = DatapathMaps.open(self.pin_dir, self.map_sizes)
        try:
            self._store.prune_for_maps(maps.fds())
            programs = loader.load_programs(
                maps.fds(), self.nat64_prefix, self.service_ranges, self._store
            )
        except BaseException:
            maps.close()
            raise
        self._maps, self._programs = maps, programs
        self._sweeper = FlowSweeper(maps)
        netlink.enable_forwarding()
        firewall.accept_forwarding(self.veth_prefix)
        portmap.setup(self.veth_prefix)
        firewall.masquerade_outbound(self.veth_prefix)

    def close(self) -> None:
        """Finish the flow sweeps asked for, release the program and map fds. Attached
        programs and pinned maps stay."""
        if self._sweeper is not None:
            self._sweeper.close()
            self._sweeper = None
        if self._programs is not None:
            self._programs.close()
            self._programs = None
        if self._xdp is not None:
            os.close(self._xdp.fd)
            self._xdp = None
        if self._overlay is not None:
            self._overlay.close()
            self._overlay = None
        if self._maps is not None:
            self._maps.close()
            self._maps = None

    @property
    def compile_count(self) -> int:
        """BPF sources compiled by this instance."""
        return self._store.compile_count

    @property
    def compile_seconds(self) -> float:
        """Compiling and loading, over every compile."""
        return self._store.compile_seconds

    @property
    def reuse_count(self) -> int:
        """Builds reused from an earlier process instead of compiled."""
        return self._store.reuse_count

    @property
    def maps(self) -> DatapathMaps:
        if self._maps is None:
            raise DatapathError("the datapath is not started")
        return self._maps

    @property
    def programs(self) -> loader.Programs:
        if self._programs is None:
            raise DatapathError("the datapath is not started")
        return self._programs

    @property
    def program(self) -> loader.Program:
        """The from-container program (tc ingress of the host veth)."""
        return self.programs.from_container

    # endpoints

    def create_endpoint(self, spec: EndpointSpec) -> int:
        """Build the endpoint's veth, routes, map entries and program; returns the host ifindex.

        Raises VethExistsError (changing nothing) if spec.host_ifname exists. A failure
        midway removes everything this call made. If a deleted endpoint with the same id or
        an address of spec still has flows to sweep, waits for that sweep first.
        """
        programs = self.programs
        validate_identity(spec.identity)
        if netlink.link_index(spec.host_ifname) is not None:
            raise VethExistsError(f"interface {spec.host_ifname} already exists")
        self._sweeper.wait_until_swept(spec.endpoint_id, spec.addresses(), SWEEP_WAIT_SECONDS)
        with ExitStack() as undo:
            mtu = spec.mtu if self._tunnel_mtu is None else min(spec.mtu, self._tunnel_mtu)
            ifindex = netlink.create_veth(spec.host_ifname, spec.peer_ifname, spec.mac, mtu)
            undo.callback(netlink.delete_link, spec.host_ifname)
            self._install(spec, ifindex, undo, flags=0)
            self._attach(ifindex, programs)
            undo.pop_all()
        return ifindex

    def delete_endpoint(self, spec: EndpointSpec) -> None:
        """Remove map entries, routes and the veth of spec and its policy entries, and retire
        its id and addresses: the conntrack entries of its hooks and addresses are swept in
        the background (datapath.sweeper). Whatever is missing is fine."""
        self._forget(spec)
        for ip in spec.addresses():
            netlink.delete_route(_host_cidr(ip))
        netlink.delete_link(spec.host_ifname)
        self._forget_flows(spec)

    def restore_endpoint(self, spec: EndpointSpec) -> bool:
        """Make an existing endpoint right again after a driver restart.

        If the host veth exists: routes, map entries and programs are replaced, True; the
        identity is spec.identity and the outbound mode spec.outbound, the policy
        enforcement flags stay as they were (policy entries are untouched: call
        set_endpoint_policy to make them exact).
        If it is gone: its map entries, policy and conntrack entries are removed, False.
        """
        validate_identity(spec.identity)
        ifindex = netlink.link_index(spec.host_ifname)
        if ifindex is None:
            self._forget(spec)
            self._forget_flows(spec)
            return False
        old = self.maps.get_endpoint(ifindex)
        flags = old.flags if old is not None and old.endpoint_id == spec.endpoint_id else 0
        self._forget(spec, keep_ifindex=ifindex)
        # A repair, not a transaction: nothing is undone if a step fails.
        self._install(spec, ifindex, ExitStack(), flags=flags)
        self._attach(ifindex, self.programs)
        return True

    @staticmethod
    def _attach(ifindex: int, programs: loader.Programs) -> None:
        loader.attach_egress(ifindex, programs.to_container)
        loader.attach_ingress(ifindex, programs.from_container)

    # published ports

    def publish_ports(self, tag: str, mappings: list[portmap.PortMapping]) -> None:
        """DNAT host ports to an endpoint (tag names it); all or nothing. In DSR mode the
        IPv4 ones also go to nodeport4, where from_netdev serves those whose container is
        on another node (lib/dsr.h)."""
        portmap.publish(self.veth_prefix, tag, mappings)
        if self.service_mode != SERVICE_MODE_DSR:
            return
        try:
            for m in mappings:
                if m.address.version == 4:
                    self.maps.put_nodeport(m.host_ip, m.host_port, m.protocol, m.address, m.port)
        except BaseException:
            self.unpublish_ports(tag)
            raise

    def unpublish_ports(self, tag: str) -> None:
        for m in portmap.mappings_of(self.veth_prefix, tag):
            if m.address.version == 4:
                self.maps.delete_nodeport(m.host_ip, m.host_port, m.protocol)
        portmap.unpublish(self.veth_prefix, tag)

    def dsr_flows(self) -> list[tuple[tuple, tuple]]:
        """The flows this node's containers answer from another node's frontend:
        ((client, port, container, port, protocol), (frontend, port))."""
        return self.maps.dsr_flows()

    def published_tags(self) -> set[str]:
        return portmap.published_tags(self.veth_prefix)

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
        live_ids = {entry.endpoint_id for entry in self.maps.endpoints().values()}
        for endpoint_id in self.maps.policy_endpoint_ids() - live_ids:
            self.maps.delete_policy(endpoint_id, self.maps.policy_keys(endpoint_id))
            removed.append(f"policy entries of endpoint {endpoint_id}")
        for ip, entry in self.maps.addresses().items():
            if entry.ifindex not in live and self.maps.delete_address(ip):
                removed.append(f"address map entry {ip}")
        return removed

    def _install(self, spec: EndpointSpec, ifindex: int, undo: ExitStack, flags: int) -> None:
        """Host-side settings, routes and map entries; registers their removal on undo."""
        netlink.configure_host_veth(spec.host_ifname, ifindex)
        for ip in spec.addresses():
            netlink.replace_device_route(_host_cidr(ip), ifindex)
            undo.callback(netlink.delete_route, _host_cidr(ip))
        if spec.outbound is Outbound.NAT64 and spec.ipv4 is not None:
            # The NAT64 side may be on no interface of the container (Docker 28's
            # --ipv4=false), so nothing would answer the host's ARP for it.
            netlink.replace_permanent_neighbour(str(spec.ipv4), spec.mac, ifindex)
        entry = self._entry(spec, netlink.link_mac(ifindex), flags)
        self.maps.put_endpoint(ifindex, entry)
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

    def _forget_flows(self, spec: EndpointSpec) -> None:
        """Remove spec's policy entries now and its flows soon, so that an endpoint reusing
        its id or addresses inherits nothing."""
        self.maps.delete_policy(spec.endpoint_id, self.maps.policy_keys(spec.endpoint_id))
        self._sweeper.retire(spec.endpoint_id, spec.addresses())

    def wait_for_sweeps(self, timeout: float = SWEEP_WAIT_SECONDS) -> None:
        """Return once every flow sweep asked for so far is done (DatapathError after timeout)."""
        self._sweeper.wait_until_idle(timeout)

    @staticmethod
    def _entry(spec: EndpointSpec, node_mac: str, flags: int) -> EndpointEntry:
        """The map entry of spec: its outbound bits from spec.outbound, the rest from flags."""
        return EndpointEntry(
            endpoint_id=spec.endpoint_id,
            mac=spec.mac.lower(),
            node_mac=node_mac,
            ipv6=spec.ipv6,
            ipv4=spec.ipv4,
            router6=spec.router6,
            router4=spec.router4,
            flags=(flags & ~EP_F_OUTBOUND) | spec.outbound.flags,
            identity=spec.identity,
        )

    def _endpoint(self, spec: EndpointSpec) -> tuple[int, EndpointEntry]:
        """The host ifindex and endpoints map entry of spec; DatapathError if it has none."""
        ifindex = netlink.link_index(spec.host_ifname)
        entry = None if ifindex is None else self.maps.get_endpoint(ifindex)
        if entry is None or entry.ipv6 != spec.ipv6:
            raise DatapathError(f"endpoint {spec.endpoint_id} ({spec.host_ifname}) does not exist")
        return ifindex, entry

    # identities and policy

    def set_endpoint_identity(self, spec: EndpointSpec, identity: int) -> None:
        """Give the endpoint a security identity: one write of its endpoints map entry.
        INIT_ID puts it (back) in the waiting state."""
        validate_identity(identity)
        ifindex, entry = self._endpoint(spec)
        self.maps.put_endpoint(ifindex, dataclasses.replace(entry, identity=identity))

    def set_endpoint_policy(
        self,
        spec: EndpointSpec,
        ingress_enforced: bool,
        egress_enforced: bool,
        keys: Iterable[PolicyKey],
    ) -> None:
        """Make the endpoint's policy exactly keys, enforced in the given directions.

        Order: add new keys (kept keys keep their counters), turn off enforcement that
        goes off, delete stale keys, turn on enforcement that goes on. So a flow allowed
        before and after never sees a gap, and nothing is allowed that neither allows.
        Raises DatapathError before any change if the keys would not fit in the map.
        """
        wanted = set(keys)
        for key in wanted:
            key.validate()
        ifindex, entry = self._endpoint(spec)
        maps = self.maps
        old = maps.policy_keys(spec.endpoint_id)
        new = wanted - old
        room = maps.policy_capacity() - maps.policy_count()
        if len(new) > room:
            raise DatapathError(
                f"policy map full: endpoint {spec.endpoint_id} needs {len(new)} new entries, "
                f"{room} of {maps.policy_capacity()} are free; its policy is unchanged"
            )
        flags = (EP_F_INGRESS_ENFORCED if ingress_enforced else 0) | (
            EP_F_EGRESS_ENFORCED if egress_enforced else 0
        )
        maps.add_policy(spec.endpoint_id, new)
        relaxed = entry.flags & (flags | ~(EP_F_INGRESS_ENFORCED | EP_F_EGRESS_ENFORCED))
        if relaxed != entry.flags:
            entry = dataclasses.replace(entry, flags=relaxed)
            maps.put_endpoint(ifindex, entry)
        maps.delete_policy(spec.endpoint_id, old - wanted)
        final = (entry.flags & ~(EP_F_INGRESS_ENFORCED | EP_F_EGRESS_ENFORCED)) | flags
        if final != entry.flags:
            maps.put_endpoint(ifindex, dataclasses.replace(entry, flags=final))

    def update_endpoint_policy(
        self, spec: EndpointSpec, added: Iterable[PolicyKey], removed: Iterable[PolicyKey]
    ) -> None:
        """Add keys to and take keys from the endpoint's policy, its enforcement unchanged:
        the delta a peer identity that came or went makes, written without reading or
        rewriting the endpoint's other keys. Added first, so a flow that both the key set
        before and after allow never sees a gap. A key in both is kept (with its counters).
        Raises DatapathError before any change if the new keys would not fit in the map.
        """
        added, removed = set(added), set(removed)
        for key in added:
            key.validate()
        self._endpoint(spec)
        maps = self.maps
        new = maps.new_policy_keys(spec.endpoint_id, added)
        room = maps.policy_capacity() - maps.policy_count()
        if len(new) > room:
            raise DatapathError(
                f"policy map full: endpoint {spec.endpoint_id} needs {len(new)} new entries, "
                f"{room} of {maps.policy_capacity()} are free; its policy is unchanged"
            )
        maps.add_policy(spec.endpoint_id, new)
        stale = maps.held_policy_keys(spec.endpoint_id, removed - added)
        maps.delete_policy(spec.endpoint_id, stale)

    def policy_entries(
        self, spec_or_endpoint_id: EndpointSpec | int
    ) -> dict[PolicyKey, tuple[int, int]]:
        """The endpoint's policy keys -> (packets, bytes) of the new flows each admitted."""
        if isinstance(spec_or_endpoint_id, EndpointSpec):
            spec_or_endpoint_id = spec_or_endpoint_id.endpoint_id
        return self.maps.policy_counters(spec_or_endpoint_id)

    def set_cidr_identities(self, mapping: dict[str, int]) -> None:
        """Make the CIDR tries exactly mapping ("10.0.0.0/8" -> identity, host addresses as
        /32 and /128 -> HOST_ID). Validated whole before any change."""
        wanted = {}
        for cidr, identity in mapping.items():
            try:
                net = ipaddress.ip_network(cidr, strict=False)
            except ValueError as exc:
                raise DatapathError(f"invalid CIDR {cidr!r}: {exc}") from exc
            validate_identity(identity)
            wanted[net] = identity
        current = self.maps.cidr_identities()
        for net, identity in wanted.items():
            if current.get(net) != identity:
                self.maps.put_cidr(net, identity)
        for net in current.keys() - wanted.keys():
            self.maps.delete_cidr(net)

    def host_addresses(self) -> list[str]:
        """The host's own addresses, both families, link-local included: the control plane
        maps each (as /32 or /128) to HOST_ID in set_cidr_identities."""
        return hostnet.host_addresses()

    def cidr_identities(self) -> dict[str, int]:
        return {str(net): identity for net, identity in self.maps.cidr_identities().items()}

    # services

    def set_service(self, service_id: int, frontend: Frontend, backends: list[Backend]) -> None:
        """Make service_id exactly frontend -> backends (a backend gets weight slots).

        Validated whole, map room included, before any write. Then: the reverse NAT entry,
        slots 0..n-1, the service entry with the new count, and the surplus slots go; so a
        packet meets the old service or the new one and every slot it can pick is a backend.
        Flows under way keep the backend they have; new flows only pick listed backends.
        """
        backends = list(backends)
        validate_service(service_id, frontend, backends)
        if not any(frontend.address in ipaddress.ip_network(r) for r in self.service_ranges):
            raise DatapathError(
                f"VIP {frontend.address} is outside the service ranges "
                f"({', '.join(self.service_ranges)}): the programs would never balance it"
            )
        maps = self.maps
        current = maps.services()
        self._check_service_ids(service_id, frontend, current)
        slots = slots_of(backends)
        old_count = current[frontend][1] if frontend in current else 0
        used = sum(count for _, count in current.values())
        if len(slots) - old_count > maps.slot_capacity() - used:
            raise DatapathError(
                f"service {service_id}: {len(slots)} backend slots do not fit, "
                f"{maps.slot_capacity() - used} of {maps.slot_capacity()} are free"
            )
        if frontend not in current and len(current) >= maps.service_capacity():
            raise DatapathError(f"service map full ({maps.service_capacity()} frontends)")
        maps.put_revnat(service_id, frontend)
        for slot, (address, port) in enumerate(slots):
            maps.put_slot(service_id, slot, address, port)
        maps.put_service(frontend, service_id, len(slots))
        maps.delete_slots(service_id, range(len(slots), old_count))
        self._route_vip(frontend.address)

    @staticmethod
    def _check_service_ids(
        service_id: int, frontend: Frontend, current: dict[Frontend, tuple[int, int]]
    ) -> None:
        """A frontend has one service id and a service id one frontend (its reverse NAT)."""
        if frontend in current and current[frontend][0] != service_id:
            raise DatapathError(f"frontend {frontend} is service {current[frontend][0]}")
        for other, (other_id, _) in current.items():
            if other_id == service_id and other != frontend:
                raise DatapathError(f"service id {service_id} is in use by frontend {other}")

    def delete_service(self, service_id: int, frontend: Frontend) -> None:
        """Remove the service: frontend entry first (no new flows), then its slots, its
        reverse NAT entry and its flows' backend picks. Removing what is not there is fine.
        """
        validate_service_id(service_id)
        frontend.validate()
        maps = self.maps
        entry = maps.get_service(frontend)
        if entry is not None and entry[0] != service_id:
            raise DatapathError(f"frontend {frontend} is service {entry[0]}, not {service_id}")
        maps.delete_service(frontend)
        self._route_vip(frontend.address)
        if any(other_id == service_id for other_id, _ in maps.services().values()):
            return  # the id belongs to another frontend now
        maps.delete_slots(service_id)
        maps.delete_revnat(service_id)
        maps.delete_lb_flows(service_id=service_id)

    def _route_vip(self, vip: IPAddress) -> None:
        """NAT46 (bpf/lib/nat46.h): an IPv4 VIP whose frontends' backends are all NAT64 sides
        of local IPv6-only endpoints is routed from the host to the first one, whose
        to-container hook picks each flow's backend; any other VIP has no route of ours
        (the unreachable route of the service range covers it)."""
        if vip.version != 4:
            return
        maps = self.maps
        slots = [
            address
            for frontend, (service_id, count) in sorted(
                maps.services().items(), key=lambda item: item[1][0]
            )
            if frontend.address == vip
            for address, _ in maps.slots(service_id, count, 4)
        ]
        sides = [self._nat64_side_ifindex(address) for address in slots]
        if sides and None not in sides:
            netlink.replace_gateway_route(_host_cidr(vip), str(slots[0]), sides[0])
        else:
            netlink.delete_route(_host_cidr(vip), type="unicast")

    def _nat64_side_ifindex(self, address: IPAddress) -> int | None:
        """The veth of the local IPv6-only endpoint whose NAT64 side address is, or None."""
        owner = self.maps.get_address(address)
        entry = self.maps.get_endpoint(owner.ifindex) if owner else None
        if entry is None or not entry.flags & EP_F_NAT64 or entry.ipv4 != address:
            return None
        return owner.ifindex

    def services(self) -> dict[Frontend, tuple[int, list[Backend]]]:
        """Frontend -> (service id, backends with their weights), decoded from the maps."""
        return {
            frontend: (
                service_id,
                backends_of(self.maps.slots(service_id, count, frontend.address.version)),
            )
            for frontend, (service_id, count) in self.maps.services().items()
        }

    # conntrack and events

    def ct_entries(self) -> list[CtEntry]:
        """Every conntrack entry, decoded (expired ones have lifetime_remaining <= 0)."""
        return self.maps.ct_entries()

    def set_trace_events(self, enabled: bool) -> None:
        """Emit trace events (forwarded, delivered, answered) besides drop events."""
        self.maps.set_config_flag(CONFIG_TRACE_EVENTS, enabled)

    def set_flow_events(self, enabled: bool) -> None:
        """Emit a flow event for every new connection policy admits (lib/flowlog.h)."""
        self.maps.set_config_flag(CONFIG_FLOW_EVENTS, enabled)

    def set_flow_limit(self, rate: int, burst: int) -> None:
        """Flow events a second each CPU may send, up to burst at once after a quiet spell;
        the new connections beyond are counted in the kernel (flow_counts). 0: no limit."""
        cost = NS_PER_SECOND // rate if rate else 0
        self.maps.set_flow_limit(cost, cost * max(burst, 1))

    def flow_counts(self) -> list[FlowCount]:
        """The new connections counted instead of sent as flow events, by kind; counts only
        grow. The connections counted while the table of kinds was full are a kind with
        identities, endpoint, port and protocol 0 (flow_overflow in the kernel).

        The kinds of an endpoint that is gone (no longer in the endpoints map, so its hooks
        count nothing more) come one last time and leave the table, which so holds the
        kinds of the endpoints there are and does not fill up as containers come and go."""
        live = {entry.endpoint_id for entry in self.maps.endpoints().values()}
        counts = self.maps.flow_counts()
        self.maps.delete_flow_counts(c for c in counts if c.endpoint_id not in live)
        overflow = self.maps.flow_overflow()
        if overflow:
            counts.append(FlowCount(0, 0, 0, 0, 0, 0, INGRESS, 0, "POLICY_MATCH_NONE", overflow))
        return counts

    def ended_flows(self) -> list[CtEntry]:
        """The conntrack entries of connections that ended since the last call (expired,
        evicted or their tuple reused), with their last counts; the first call only looks."""
        return self._ended.scan(self.maps.ct_packed(), monotonic_seconds())

    def read_events(
        self,
        callback: Callable[[events.Event], None] | Callable[[bytes], None],
        stop: threading.Event,
        timeout_ms: int = 100,
        raw: bool = False,
    ) -> None:
        """Call callback(Event) for each drop/trace/flow event until stop is set; with raw,
        callback(bytes) with the record undecoded (events.decode_event decodes it). Blocks
        the calling thread; safe to run next to the other methods (it opens its own fd of
        the pinned ring buffer). One reader at a time: a ring buffer has one read position."""
        events.read_events(self.pin_dir / "events", callback, stop, timeout_ms, raw)

    # XDP prefilter

    def set_prefilter(self, cidrs: Iterable[str]) -> None:
        """Make the deny tries exactly cidrs (source prefixes, "198.51.100.0/24" or
        "2001:db8::/32"). Validated whole before any change. A new prefix gets an unused
        prefix id, its counter zeroed; kept prefixes keep theirs. New prefixes go in before
        the gone ones go out, so no address covered before and after passes in between."""
        wanted = set()
        for cidr in cidrs:
            try:
                wanted.add(ipaddress.ip_network(cidr))
            except ValueError as exc:
                raise DatapathError(f"invalid prefilter CIDR {cidr!r}: {exc}") from exc
        if len(wanted) > PREFILTER_MAX:
            raise DatapathError(f"the prefilter holds {PREFILTER_MAX} prefixes, not {len(wanted)}")
        maps = self.maps
        current = maps.prefilter_ids()
        new = sorted(wanted - current.keys(), key=str)
        free = sorted(set(range(PREFILTER_MAX)) - set(current.values()))
        if len(new) > len(free):  # no room for both at once: the gone ones go first
            for net in current.keys() - wanted:
                maps.delete_prefilter(net)
            current = {net: i for net, i in current.items() if net in wanted}
            free = sorted(set(range(PREFILTER_MAX)) - set(current.values()))
        for net, prefix_id in zip(new, free, strict=False):
            maps.put_prefilter(net, prefix_id)
        for net in current.keys() - wanted:
            maps.delete_prefilter(net)

    def prefilter_drops(self) -> dict[str, int]:
        """Denied prefix -> packets dropped since it was added, summed over CPUs."""
        maps = self.maps
        return {str(net): maps.prefilter_drops(i) for net, i in maps.prefilter_ids().items()}

    def attach_prefilter(self, device: str) -> str:
        """Attach the prefilter to device: native XDP if its driver can, generic if not; a
        device that has it already gets the program of this process in the mode it has
        (one atomic replace). Returns the mode. Refuses a device with another XDP program."""
        ifindex = netlink.link_index(device)
        if ifindex is None:
            raise DatapathError(f"no device {device} on this host")
        program = self.prefilter_program()
        present = xdp.attached_programs().get(device)
        if present is not None:
            if self.maps.prefilter_map_id() not in xdp.program_map_ids(present.prog_id):
                raise DatapathError(
                    f"{device} has another XDP program (id {present.prog_id}); remove it first"
                )
            xdp.attach(ifindex, program.fd, present.mode)
            return present.mode
        try:
            xdp.attach(ifindex, program.fd, xdp.NATIVE)
        except DatapathError:
            xdp.attach(ifindex, program.fd, xdp.GENERIC)
            return xdp.GENERIC
        return xdp.NATIVE

    def detach_prefilter(self, device: str) -> bool:
        """Take the prefilter off device; False if it was not there."""
        found = xdp.ours(self.maps.prefilter_map_id()).get(device)
        return found is not None and xdp.detach(found.ifindex, found.mode)

    def prefilter_devices(self) -> dict[str, str]:
        """Device -> XDP mode (native, generic), of every device the prefilter is on."""
        return {name: a.mode for name, a in xdp.ours(self.maps.prefilter_map_id()).items()}

    def prefilter_program(self) -> loader.Program:
        """The loaded XDP program of bpf_xdp.c, compiled on first use (tests run it)."""
        if self._xdp is None:
            self._xdp = loader.load_xdp(self.maps.fds(), self._store)
        return self._xdp

    # routes

    def add_unreachable_route(self, cidr: str) -> None:
        netlink.add_unreachable_route(cidr)

    def remove_unreachable_route(self, cidr: str) -> None:
        netlink.remove_unreachable_route(cidr)

    def host_route_overlaps(self, cidr: str) -> list[str]:
        """Destinations of host main-table routes overlapping cidr, except default routes,
        link-local and multicast ones, and our own (unreachable and endpoint routes)."""
        return hostnet.route_overlaps(cidr, self.veth_prefix)

    # introspection

    def drop_counts(self) -> dict[str, int]:
        """Drop reason name -> packets, summed over CPUs."""
        return self.maps.drop_counts()

    def trace_counts(self) -> dict[str, int]:
        """Trace point name (TRACE_TO_STACK, TRACE_TO_LXC, TRACE_REPLY) -> packets."""
        return self.maps.trace_counts()

    def map_fill(self) -> dict[str, tuple[int, int]]:
        """Map name -> (entries, capacity) of every map with keys to count (hash, LRU and
        LPM maps; not the counter arrays or the ring buffer). Walks each map's keys."""
        return self.maps.fill()

    def ct_totals(self) -> dict[int, tuple[int, int, int]]:
        """Direction (INGRESS, EGRESS) -> (flows, packets, bytes) of the conntrack table now."""
        return self.maps.ct_totals()

    def endpoint_map_entries(self) -> dict[int, EndpointEntry]:
        """Host ifindex -> decoded endpoints map entry."""
        return self.maps.endpoints()

    def address_map_entries(self) -> dict[IPAddress, AddressEntry]:
        """Endpoint address -> owning host ifindex and endpoint id."""
        return self.maps.addresses()

    # several hosts

    def enable_tunnel(self, underlay_address: str) -> str:
        """Make the node's VXLAN device (external mode, UDP 8472, from underlay_address; MTU
        the underlay device's less the VXLAN overhead) with from_overlay and to_overlay on
        it, and point the programs at it; its name. Idempotent. Endpoints made from now on
        get the tunnel's MTU if theirs is larger, so that their packets fit it."""
        node = _node_address(underlay_address)
        mtu = hostnet.address_device_mtu(str(node)) - netlink.VXLAN_OVERHEAD
        overlay = self.overlay_programs()
        ifindex = netlink.ensure_vxlan(TUNNEL_DEVICE, str(node), mtu)
        loader.attach_ingress(ifindex, overlay.from_overlay)
        loader.attach_egress(ifindex, overlay.to_overlay)
        self.maps.set_tunnel_ifindex(ifindex)
        self._tunnel_mtu = mtu
        # What netfilter DNATs into the tunnel: every published port in SNAT mode; in DSR
        # mode the host's own and its containers' connections (from_netdev sees only what
        # comes from the network).
        portmap.snat_into_tunnel(self.veth_prefix, TUNNEL_DEVICE, str(node))
        if self.service_mode == SERVICE_MODE_SNAT:
            # An earlier DSR run's entries would still take the packets from_netdev sees.
            self.maps.clear_nodeports()
        # In both modes: from_netdev also decapsulates the other nodes' packets for local
        # endpoints, past the VXLAN device (lib/tunnel.h, vxlan_decap).
        for device in hostnet.address_devices(str(node)):
            loader.attach_ingress(device, overlay.from_netdev)
        return TUNNEL_DEVICE

    def overlay_programs(self) -> loader.OverlayPrograms:
        """The loaded programs of bpf_overlay.c, compiled on first use (enable_tunnel attaches
        them; tests run them)."""
        if self._overlay is None:
            self._overlay = loader.load_overlay(
                self.maps.fds(), self.nat64_prefix, self.service_ranges, self._store
            )
        return self._overlay

    def _tunnel_ifindex(self) -> int:
        ifindex = netlink.link_index(TUNNEL_DEVICE)
        if ifindex is None or self._tunnel_mtu is None:
            raise DatapathError("the tunnel is not enabled (enable_tunnel first)")
        return ifindex

    def set_remote_node(self, node_address: str, prefixes: list[str]) -> None:
        """Route prefixes (the node's IPv6 and IPv4 ranges) into the tunnel, where to_overlay
        keys each packet for the node the ipcache names; and put the node's own address in
        the ipcache (identity world: another host is not this one), so that an endpoint's
        reply to that host goes back through the tunnel, not masqueraded."""
        node = _node_address(node_address)
        nets = [netlink.network(cidr) for cidr in prefixes]
        ifindex = self._tunnel_ifindex()
        self.maps.put_ipcache(node, WORLD_ID, node)
        for net in nets:
            netlink.replace_device_route(str(net), ifindex)

    def remove_remote_node(self, node_address: str, prefixes: list[str]) -> None:
        """Undo set_remote_node; whatever is missing is fine."""
        node = _node_address(node_address)
        nets = [netlink.network(cidr) for cidr in prefixes]
        ifindex = netlink.link_index(TUNNEL_DEVICE)
        for net in nets if ifindex is not None else []:  # no device: its routes went with it
            netlink.delete_device_route(str(net), ifindex)
        if self.maps.get_ipcache(node) == (WORLD_ID, node):
            self.maps.delete_ipcache(node)

    def ipcache_upsert(self, address: str, identity: int, node_address: str) -> None:
        """address (an endpoint of another node) has identity and lives on node_address."""
        ip = _parse_address(address)
        validate_identity(identity)
        self.maps.put_ipcache(ip, identity, _node_address(node_address))

    def ipcache_delete(self, address: str) -> None:
        self.maps.delete_ipcache(_parse_address(address))

    def ipcache_entries(self) -> dict[str, tuple[int, str]]:
        """Address -> (identity, node address) of every remote endpoint; the nodes' own
        entries (set_remote_node's) are not listed."""
        return {
            str(ip): (identity, str(node))
            for ip, (identity, node) in self.maps.ipcache().items()
            if ip != node
        }

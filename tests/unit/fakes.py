"""An in-memory stand-in for datapath.Datapath, for tests of control-plane logic only; it has
the face of datapath.interface.DatapathApi (tests/unit/datapath/test_interface.py checks)."""

import ipaddress

from datapath import DatapathError


class FakeDatapath:
    def __init__(self):
        self.compile_count = 0
        self.compile_seconds = 0.0
        self.reuse_count = 0
        self.drops = {}
        self.traces = {}
        # Map name -> (entries, capacity), as Datapath.map_fill() reports them.
        self.fill = {"endpoints": (0, 16384), "conntrack": (0, 262144)}
        self.ct = {0: (0, 0, 0), 1: (0, 0, 0)}
        self.endpoints = {}
        self.unreachable = set()
        self.host_routes = []
        self.host_links = set()
        self.fail_create = None
        self.identities = {}
        self.policies = {}
        self.cidr_identities = {}
        self.host_ips = ["192.0.2.2", "fd00::2"]
        self.trace_events = False
        self.flow_events = False
        self.flow_limit = (0, 0)  # (rate, burst)
        self.counted_flows = []  # what flow_counts() returns: FlowCounts, counts growing
        self.policy_capacity = None
        self.lb = {}
        self.published = {}
        self.unpublish_calls = 0
        self.prefilter = {}  # denied prefix -> drops
        self.xdp = {}  # device -> mode
        self.xdp_capable = {"eth0": "native", "eth1": "generic"}  # devices that exist
        self.tunnel = None
        self.remote_nodes = {}  # node_address -> list of prefixes
        self.ipcache = {}  # address -> (identity, node_address)

    def start(self):
        self.compile_count = 1
        self.compile_seconds = 0.5

    def close(self):
        pass

    def create_endpoint(self, spec):
        if self.fail_create:
            raise self.fail_create
        self.endpoints[spec.host_ifname] = spec
        return len(self.endpoints)

    def delete_endpoint(self, spec):
        self.endpoints.pop(spec.host_ifname, None)

    def restore_endpoint(self, spec):
        if spec.host_ifname not in self.endpoints:
            return False
        self.endpoints[spec.host_ifname] = spec
        return True

    def remove_orphans(self, known_host_ifnames):
        orphans = sorted(set(self.endpoints) - set(known_host_ifnames))
        for name in orphans:
            del self.endpoints[name]
        return orphans

    def link_exists(self, ifname):
        return ifname in self.host_links

    def add_unreachable_route(self, cidr):
        self.unreachable.add(cidr)

    def remove_unreachable_route(self, cidr):
        self.unreachable.discard(cidr)

    def host_route_overlaps(self, cidr):
        net = ipaddress.ip_network(cidr)
        return [
            r
            for r in self.host_routes
            if ipaddress.ip_network(r).version == net.version
            and ipaddress.ip_network(r).overlaps(net)
        ]

    def drop_counts(self):
        return dict(self.drops)

    def trace_counts(self):
        return dict(self.traces)

    def map_fill(self):
        return dict(self.fill)

    def ct_totals(self):
        return dict(self.ct)

    def set_endpoint_identity(self, spec, identity):
        self.identities[spec.host_ifname] = identity

    def set_endpoint_policy(self, spec, ingress_enforced, egress_enforced, keys):
        if self.policy_capacity is not None and len(keys) > self.policy_capacity:
            raise DatapathError("policy map full")
        self.policies[spec.host_ifname] = (ingress_enforced, egress_enforced, set(keys))

    def update_endpoint_policy(self, spec, added, removed):
        keys = self.policies[spec.host_ifname][2]
        added, removed = set(added), set(removed)
        if self.policy_capacity is not None and len(keys | added) > self.policy_capacity:
            raise DatapathError("policy map full")
        # In place: a delta costs its own size, as in the real map (bench/cluster_node.py).
        keys |= added
        keys -= removed - added

    def policy_entries(self, spec_or_endpoint_id):
        """The control plane passes a spec."""
        policy = self.policies.get(spec_or_endpoint_id.host_ifname, (0, 0, set()))
        return {key: (0, 0) for key in policy[2]}

    def set_cidr_identities(self, mapping):
        self.cidr_identities = dict(mapping)

    def host_addresses(self):
        return list(self.host_ips)

    def ct_entries(self):
        return []

    def set_trace_events(self, enabled):
        self.trace_events = enabled

    def read_events(self, callback, stop, timeout_ms=100, raw=False):
        stop.wait()

    def set_flow_events(self, enabled):
        self.flow_events = enabled

    def ended_flows(self):
        return []

    def set_flow_limit(self, rate, burst):
        self.flow_limit = (rate, burst)

    def flow_counts(self):
        return list(self.counted_flows)

    def set_service(self, service_id, frontend, backends):
        for backend in backends:
            backend.validate(frontend)
        for other, (other_id, _) in self.lb.items():
            if other_id == service_id and other != frontend:
                raise DatapathError(f"service id {service_id} belongs to frontend {other}")
        self.lb[frontend] = (service_id, list(backends))

    def delete_service(self, service_id, frontend):
        self.lb.pop(frontend, None)

    def services(self):
        return dict(self.lb)

    def publish_ports(self, tag, mappings):
        self.published[tag] = list(mappings)

    def unpublish_ports(self, tag):
        self.unpublish_calls += 1
        self.published.pop(tag, None)

    def published_tags(self):
        return set(self.published)

    def endpoint_map_entries(self):
        return {}

    def set_prefilter(self, cidrs):
        nets = [ipaddress.ip_network(c) for c in cidrs]  # ValueError as the real one's check
        self.prefilter = {str(n): self.prefilter.get(str(n), 0) for n in nets}

    def prefilter_drops(self):
        return dict(self.prefilter)

    def attach_prefilter(self, device):
        if device not in self.xdp_capable:
            raise DatapathError(f"no device {device} on this host")
        self.xdp[device] = self.xdp_capable[device]
        return self.xdp[device]

    def detach_prefilter(self, device):
        return self.xdp.pop(device, None) is not None

    def prefilter_devices(self):
        return dict(self.xdp)

    # several hosts
    def enable_tunnel(self, underlay_address):
        self.tunnel = underlay_address
        return "cilium_vxlan"

    def set_remote_node(self, node_address, prefixes):
        # As the kernel's: node (underlay) addresses are IPv4.
        if ipaddress.ip_address(node_address).version != 4:
            raise DatapathError(f"node address {node_address} is not IPv4")
        self.remote_nodes[node_address] = list(prefixes)

    def remove_remote_node(self, node_address, prefixes):
        self.remote_nodes.pop(node_address, None)

    def ipcache_upsert(self, address, identity, node_address):
        if not 0 < identity < 1 << 24 or ipaddress.ip_address(node_address).version != 4:
            raise DatapathError(f"ipcache entry {address}: {identity}, {node_address} refused")
        self.ipcache[address] = (identity, node_address)

    def ipcache_delete(self, address):
        self.ipcache.pop(address, None)

    def ipcache_entries(self):
        return dict(self.ipcache)

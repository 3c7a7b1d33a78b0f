"""An in-memory stand-in for datapath.Datapath, for tests of control-plane logic only."""

import ipaddress


class FakeDatapath:
    def __init__(self):
        self.compile_count = 0
        self.endpoints = {}
        self.unreachable = set()
        self.host_routes = []
        self.sandbox_routes = {}
        self.host_links = set()
        self.fail_create = None

    def start(self):
        self.compile_count = 1

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
        return spec.host_ifname in self.endpoints

    def remove_orphans(self, known):
        orphans = sorted(set(self.endpoints) - set(known))
        for name in orphans:
            del self.endpoints[name]
        return orphans

    def link_exists(self, name):
        return name in self.host_links

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

    def sandbox_route_destinations(self, sandbox_key):
        return set(self.sandbox_routes.get(sandbox_key, ()))

    def drop_counts(self):
        return {}

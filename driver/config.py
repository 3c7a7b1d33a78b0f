"""Settings of one driver instance: command-line options or CILIUM_<OPTION> variables."""

import ipaddress
import os
from dataclasses import dataclass

# Defined with the API client, which the `cilium` command imports without the driver.
from datapath.abi import DEFAULT_SERVICE_RANGES, ENFORCEMENT_MODES
from driver.cli.client import DEFAULT_API_SOCKET

MAX_MAP_SIZE = 1 << 24
MAX_FLOW_BUFFER = 1 << 20
MAX_FLOW_RATE_LIMIT = 1_000_000  # flow events a second per CPU

# Labels that differ between replicas of one service or change with every deploy: they
# would give every container an identity of its own.
DEFAULT_LABEL_PREFIXES = ",".join(
    "!" + prefix
    for prefix in (
        "com.docker.compose.config-hash",
        "com.docker.compose.container-number",
        "com.docker.compose.oneoff",
        "com.docker.compose.project.config_files",
        "com.docker.compose.project.working_dir",
        "com.docker.compose.version",
        "org.opencontainers.",
    )
)


@dataclass(frozen=True)
class Config:
    plugin_name: str = "cilium"
    plugin_dir: str = "/run/docker/plugins"
    api_socket: str = DEFAULT_API_SOCKET
    state_dir: str = "/var/lib/pycilium"
    bpf_pin_dir: str = "/sys/fs/bpf/pycilium"
    veth_prefix: str = "lxc"
    # IPv6 layout: cluster prefix (/64) | node id (32) | reserved (16) | endpoint id (16).
    cluster_prefix6: str = "fdce:1c00::/64"
    # 0 means derived from /etc/machine-id on first start, then kept in the state database.
    node_id: int = 0
    node_range4: str = "10.213.0.0/16"
    # Service VIPs come from these ranges; the driver keeps them unreachable on the host.
    service_range6: str = DEFAULT_SERVICE_RANGES[0]
    service_range4: str = DEFAULT_SERVICE_RANGES[1]
    mtu: int = 1500
    threads: int = 8
    # Above Docker's 30 s plugin timeout: Docker gives up first and never sees a killed worker.
    worker_timeout: int = 120
    log_level: str = "info"
    docker_host: str = "unix:///var/run/docker.sock"
    # Comma-separated label-key prefixes that count for identity; "!" excludes.
    label_prefixes: str = DEFAULT_LABEL_PREFIXES
    policy_enforcement: str = "default"
    # "load": enforce the policy saved in the state database; "discard": start without it
    # (after a version change refused a saved rule, see docs/policy.md).
    saved_policy: str = "load"
    # Empty: /metrics only on the API socket. Else also on this loopback HOST:PORT.
    metrics_address: str = ""
    # Capacities of the pinned maps (datapath.MapSizes has the same defaults; not imported
    # here, so the `cilium` command starts without the datapath). A start refuses pinned
    # maps of another size.
    policy_map_size: int = 262144
    ct_map_size: int = 262144
    service_map_size: int = 8192
    # IPv6-only networks reach IPv4 address a.b.c.d as <prefix>::a.b.c.d (RFC 6052 form).
    nat64_prefix: str = "64:ff9b::/96"
    # Host devices the XDP prefilter is attached to at start (--prefilter-device, repeated).
    prefilter_devices: tuple[str, ...] = ()
    # Flow records kept in the driver's ring for `cilium observe` and the service map;
    # 0: no flow log (the datapath emits no flow events).
    flow_buffer: int = 4096
    # Flow events a second each CPU sends (as many at once after a quiet spell); the new
    # connections beyond are counted in the kernel and read as aggregated records. The
    # driver's one reader spends ~2 µs on an event that wakes it no more (docs/benchmarks.md:
    # 0.04 s per 10,000 connections, two events each), so 1000 a CPU costs it ~0.2% of a
    # CPU per CPU. 0: no limit, every new connection an event.
    flow_rate_limit: int = 1000
    # Empty: the service map only on the API socket. Else also on this loopback HOST:PORT.
    ui_address: str = ""
    # Where setup put cytoscape.js for the service map (driver/server/uiassets.py).
    ui_assets: str = "/var/cache/pycilium/ui"
    # Cluster mode (docs/architecture.md, "Several hosts"): off unless kvstore is "etcd".
    kvstore: str = ""
    # Comma-separated etcd client URLs, e.g. http://192.0.2.10:2379.
    kvstore_endpoints: str = ""
    # Seconds a node's lease lives without keepalive: how long a dead node stays visible.
    kvstore_lease_ttl: int = 15
    # Empty: the host name.
    node_name: str = ""
    # The underlay address other nodes reach this one at; empty: the address this host
    # uses towards the first etcd endpoint.
    node_address: str = ""
    # With the kvstore on, node_range4 is the cluster's IPv4 range and node N takes its
    # N-th block of this prefix length (the default /16 and /20: 15 nodes, a /26 per
    # network on each).
    node_mask4: int = 20
    # Cluster mode: the UDP port on the node address where other nodes' containers' names
    # are answered for Docker's embedded DNS (docs/architecture.md); 0: not answered.
    cluster_dns_port: int = 53
    # Cluster mode: how a published port reaches a container on another node: "dsr" (its
    # node answers the client directly) or "snat" (the reply comes back through this node,
    # for underlays that drop asymmetric traffic). docs/architecture.md.
    service_mode: str = "dsr"

    @property
    def plugin_socket(self) -> str:
        return os.path.join(self.plugin_dir, f"{self.plugin_name}.sock")

    @property
    def state_db(self) -> str:
        return os.path.join(self.state_dir, "state.db")

    def validate(self) -> "Config":
        prefix = ipaddress.ip_network(self.cluster_prefix6)
        if prefix.version != 6 or prefix.prefixlen != 64:
            raise ValueError(f"cluster prefix {self.cluster_prefix6} must be an IPv6 /64")
        range4 = ipaddress.ip_network(self.node_range4)
        if range4.version != 4 or not 8 <= range4.prefixlen <= 24:
            raise ValueError(f"node IPv4 range {self.node_range4} must be IPv4 /8 to /24")
        for name, version in (("service_range6", 6), ("service_range4", 4)):
            if ipaddress.ip_network(getattr(self, name)).version != version:
                raise ValueError(f"{name} {getattr(self, name)} must be an IPv{version} range")
        if not 0 <= self.node_id < 2**32:
            raise ValueError(f"node id {self.node_id} must fit in 32 bits")
        if not 1280 <= self.mtu <= 65535:
            raise ValueError(f"MTU {self.mtu} must be between 1280 and 65535")
        if not self.veth_prefix.isalnum() or len(self.veth_prefix) > 3:
            raise ValueError(f"veth prefix {self.veth_prefix!r} must be 1-3 letters or digits")
        if self.policy_enforcement not in ENFORCEMENT_MODES:
            raise ValueError(
                f"policy enforcement {self.policy_enforcement!r} must be default, always or never"
            )
        if self.saved_policy not in ("load", "discard"):
            raise ValueError(f"saved policy {self.saved_policy!r} must be load or discard")
        if self.metrics_address:
            loopback_address(self.metrics_address)
        if not 0 <= self.flow_buffer <= MAX_FLOW_BUFFER:
            raise ValueError(f"flow buffer {self.flow_buffer} must be 0 to {MAX_FLOW_BUFFER}")
        if not 0 <= self.flow_rate_limit <= MAX_FLOW_RATE_LIMIT:
            raise ValueError(
                f"flow rate limit {self.flow_rate_limit} must be 0 to {MAX_FLOW_RATE_LIMIT}"
            )
        if self.ui_address:
            loopback_address(self.ui_address)
        nat64 = ipaddress.ip_network(self.nat64_prefix)
        if nat64.version != 6 or nat64.prefixlen != 96:
            raise ValueError(f"NAT64 prefix {self.nat64_prefix} must be an IPv6 /96")
        for name in ("policy_map_size", "ct_map_size", "service_map_size"):
            if not 16 <= getattr(self, name) <= MAX_MAP_SIZE:
                raise ValueError(f"{name.replace('_', ' ')} must be between 16 and {MAX_MAP_SIZE}")
        for device in self.prefilter_devices:
            if not 0 < len(device) < 16 or "/" in device or any(c.isspace() for c in device):
                raise ValueError(f"prefilter device {device!r} is not a device name")
        if self.service_mode not in ("dsr", "snat"):
            raise ValueError(f"service mode {self.service_mode!r} must be dsr or snat")
        if self.kvstore:
            self._validate_cluster()
        return self

    def _validate_cluster(self) -> None:
        if self.kvstore != "etcd":
            raise ValueError(f"kvstore {self.kvstore!r} must be etcd (or empty: one host)")
        if not self.kvstore_endpoints.strip():
            raise ValueError("--kvstore etcd needs --kvstore-endpoints, e.g. http://HOST:2379")
        for url in self.endpoint_urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"kvstore endpoint {url!r} must be an http:// or https:// URL")
        if not 2 <= self.kvstore_lease_ttl <= 3600:
            raise ValueError("kvstore lease TTL must be between 2 and 3600 seconds")
        range4 = ipaddress.ip_network(self.node_range4)
        if not range4.prefixlen < self.node_mask4 <= 26:
            raise ValueError(
                f"node mask {self.node_mask4} must be longer than the cluster's IPv4 range "
                f"{self.node_range4} and at most 26"
            )
        if self.node_address:
            ipaddress.ip_address(self.node_address)
        if not 0 <= self.cluster_dns_port <= 65535:
            raise ValueError(f"cluster DNS port {self.cluster_dns_port} is not a port (0: off)")

    @property
    def endpoint_urls(self) -> list[str]:
        return [u.strip() for u in self.kvstore_endpoints.split(",") if u.strip()]


def loopback_address(address: str) -> tuple[str, int]:
    """(host, port) of "127.0.0.1:PORT" or "[::1]:PORT"; ValueError for anything else:
    metrics are never offered beyond the host itself."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"metrics address {address!r} must be HOST:PORT, e.g. 127.0.0.1:9962")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is None or not ip.is_loopback:
        raise ValueError(
            f"metrics address {address!r} is not a loopback address: serve metrics on "
            "127.0.0.1:PORT or [::1]:PORT, or scrape /metrics on the API socket"
        )
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"metrics port {port} must be between 1 and 65535")
    return str(ip), port


def env_name(option: str) -> str:
    return "CILIUM_" + option.upper()

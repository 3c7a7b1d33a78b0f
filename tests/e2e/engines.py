"""The Docker engines the end-to-end tests run against (`pytest --engine NAME`): the host's
(Docker 20.10, docker-compose 1.29) and Docker 26 with compose v2 (scripts/engine.sh up 26).

Both engines share the host's network namespace. Each has a driver instance of its own and
its own addresses for everything a test puts on the host (network subnets, namespaces), so a
run against one engine never touches a run against the other and both can go at once."""

import ipaddress
import os
from dataclasses import dataclass

from .docker_cli import DOCKER
from .driver_process import TEST_SETTINGS

ENV_DIR = "/run/pycilium/engines"


@dataclass(frozen=True)
class HostAddresses:
    """Host-wide addresses and ports the tests pick themselves; distinct per engine."""

    user: tuple[str, str]  # --subnet of a network (IPv6, IPv4)
    pool: tuple[str, str]  # another network's --subnet
    compose: tuple[str, str]  # a compose file's ipam config
    routed4: str  # a host route a network's subnet may not overlap
    external: tuple[str, str]  # the `external` namespace's ranges (IPv6 /48, IPv4 /16)
    # The outbound tests' "world" link (IPv4, IPv6): documentation addresses the host does not
    # use (192.0.2.0/24 may be its own LAN; the datapath tests take 203.0.113.0/24).
    world: tuple[str, str]
    host_port: int  # the first of two host ports the tests publish


@dataclass(frozen=True)
class Engine:
    name: str
    docker: str  # the client
    docker_host: str
    pidfile: str  # dockerd's, for its goroutine stacks when it wedges
    compose: tuple[str, ...]  # the compose command line (before -p/-f)
    addresses: HostAddresses

    @property
    def settings(self) -> dict:
        """The session's driver instance."""
        return self.instance(TEST_SETTINGS)

    def instance(self, settings: dict) -> dict:
        """A driver instance's settings (written for the host's engine) for this engine."""
        return settings if self.name == "20.10" else moved(settings, self.name, self.docker_host)

    def range(self, cidr: str) -> str:
        """A range written for the host's engine's instances, for this engine's."""
        return cidr if self.name == "20.10" else moved_range(cidr)

    @property
    def compose_v2(self) -> bool:
        return self.name != "20.10"

    @property
    def compose_separator(self) -> str:
        """Of the container names compose gives: PROJECT-SERVICE-1 (v2), PROJECT_SERVICE_1."""
        return "-" if self.compose_v2 else "_"


def host_engine() -> Engine:
    return Engine(
        name="20.10",
        docker=DOCKER,
        docker_host="unix:///var/run/docker.sock",
        pidfile="/var/run/docker.pid",
        compose=("/usr/bin/docker-compose",),
        addresses=HostAddresses(
            user=("fdce:77::/64", "10.77.0.0/24"),
            pool=("fdce:78::/64", "10.78.0.0/24"),
            compose=("fdce:79::/64", "10.79.0.0/24"),
            routed4="10.99.0.0/24",
            external=("fdce:1c02::/48", "10.216.0.0/16"),
            world=("198.51.100.0/25", "2001:db8:100::/64"),
            host_port=18080,
        ),
    )


def engine_26() -> Engine:
    env = read_env(os.path.join(ENV_DIR, "26.env"))
    return Engine(
        name="26",
        docker=env["DOCKER"],
        docker_host=env["DOCKER_HOST"],
        pidfile=os.path.join(ENV_DIR, "26", "dockerd.pid"),
        compose=(env["COMPOSE"],),
        addresses=HostAddresses(
            user=("fdce:177::/64", "10.177.0.0/24"),
            pool=("fdce:178::/64", "10.178.0.0/24"),
            compose=("fdce:179::/64", "10.179.0.0/24"),
            routed4="10.189.0.0/24",
            external=("fdce:1c22::/48", "10.236.0.0/16"),
            world=("198.51.100.128/25", "2001:db8:126::/64"),
            host_port=18260,
        ),
    )


def moved(settings: dict, tag: str, docker_host: str) -> dict:
    """A driver instance's settings moved aside for another engine, so that it shares nothing
    with the host engine's instance: name and paths tagged (pycilium-test -> pycilium-test26),
    veth prefix lx? -> ly?, IPv4 ranges 20 /16s up (10.214 -> 10.234), IPv6 ones 0x20 up
    (fdce:1c01:: -> fdce:1c21::), node id 20 up; and the watcher on that engine's events."""
    name = settings["plugin_name"]
    out = {k: v.replace(name, name + tag) for k, v in settings.items()}
    out["veth_prefix"] = settings["veth_prefix"].replace("x", "y", 1)
    for key in ("cluster_prefix6", "node_range4", "service_range6", "service_range4"):
        out[key] = moved_range(settings[key])
    out["node_id"] = str(int(settings["node_id"]) + 20)
    out["docker_host"] = docker_host
    return out


def moved_range(cidr: str) -> str:
    network = ipaddress.ip_network(cidr)
    step = 20 << 16 if network.version == 4 else 0x20 << 96
    return str(ipaddress.ip_network((int(network.network_address) + step, network.prefixlen)))


def read_env(path: str) -> dict[str, str]:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise RuntimeError(
            f"{path} is missing: start the engine with scripts/engine.sh up 26"
        ) from None
    return dict(line.split("=", 1) for line in lines if "=" in line)


ENGINES = {"20.10": host_engine, "26": engine_26}
_selected: list[Engine] = []


def select(name: str) -> Engine:
    """Called once, before collection, with the value of --engine."""
    _selected[:] = [ENGINES[name]()]
    return _selected[0]


def current() -> Engine:
    """The engine of this run (the host's when --engine was not given)."""
    if not _selected:
        _selected.append(host_engine())
    return _selected[0]


def address(network: str, index: int) -> str:
    """The index-th address of a subnet, e.g. address("10.77.0.0/24", 50) == "10.77.0.50"."""
    return str(ipaddress.ip_network(network)[index])

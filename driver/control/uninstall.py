"""Take one driver instance off the host: what it added and nothing else.

Refuses while the instance still answers on a socket, or while Docker still has networks
of it (their containers depend on what would go). The ranges whose routes go are the
configured ones and those the state database records (Docker-assigned pools of its
networks, a user's --subnet pools), so it must be read before it is removed.
"""

import contextlib
import glob
import ipaddress
import os
import socket
import stat

import docker
import docker.errors

from datapath.uninstall import remove_from_host
from driver.config import Config
from driver.errors import Conflict

from .state import Store

# The files of the state database (SQLite in WAL mode) and the saved policies a start
# refused (control/regeneration.py); nothing else of the driver lives in state_dir.
STATE_FILES = ("state.db", "state.db-wal", "state.db-shm", "state.db-journal")
REFUSED_POLICIES = "refused-policy-r*.json"


def uninstall(config: Config, docker_client) -> list[str]:
    """Remove everything of the instance `config` describes; one line per thing removed.
    docker_client (engine(), a docker.DockerClient) is asked for the instance's networks;
    None when there is no engine left to ask."""
    sockets = (config.plugin_socket, config.api_socket)
    answering = [path for path in sockets if _answers(path)]
    if answering:
        raise Conflict(
            f"the driver still answers on {', '.join(answering)}: stop it first (make stop)"
        )
    if docker_client is not None:
        networks = docker_networks(docker_client, config.plugin_name)
        if networks:
            raise Conflict(
                f"Docker still has networks of the {config.plugin_name} driver: "
                f"{', '.join(networks)}; remove them first (docker network rm)"
            )
    removed = remove_from_host(config.bpf_pin_dir, config.veth_prefix, owned_ranges(config))
    removed += remove_state(config.state_dir)
    for path in sockets:
        if _is_socket(path):
            os.unlink(path)
            removed.append(f"socket {path}")
    return removed


def docker_networks(client, plugin_name: str) -> list[str]:
    """Names of the networks whose network or IPAM driver is plugin_name."""
    try:
        networks = client.networks.list()
    except docker.errors.DockerException as exc:
        raise Conflict(
            f"cannot ask Docker which networks use {plugin_name} ({exc}); start the engine, "
            "or say there is none left to ask (--without-docker)"
        ) from None
    return sorted(
        net.name
        for net in networks
        if plugin_name in (net.attrs.get("Driver"), (net.attrs.get("IPAM") or {}).get("Driver"))
    )


def owned_ranges(config: Config) -> list[str]:
    """The configured ranges and those the state database records."""
    ranges = [config.cluster_prefix6, config.node_range4]
    ranges += [config.service_range6, config.service_range4]
    if not os.path.exists(config.state_db):
        return ranges
    store = Store(config.state_db)
    store.open()
    try:
        ranges += [pool.cidr for pool in store.pools() if not pool.shared]
        for net in store.networks():
            ranges += net.owned_routes
    finally:
        store.close()
    return [str(ipaddress.ip_network(r)) for r in ranges]


def remove_state(state_dir: str) -> list[str]:
    """The state database's files, then state_dir if that leaves it empty."""
    removed = []
    refused = sorted(glob.glob(os.path.join(glob.escape(state_dir), REFUSED_POLICIES)))
    for path in [os.path.join(state_dir, name) for name in STATE_FILES] + refused:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            removed.append(f"state {path}")
    with contextlib.suppress(OSError):  # gone already, or holds what is not ours
        os.rmdir(state_dir)
        removed.append(f"state directory {state_dir}")
    return removed


def engine(docker_host: str) -> docker.DockerClient:
    return docker.DockerClient(base_url=docker_host, timeout=30)


def _answers(path: str) -> bool:
    if not _is_socket(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except FileNotFoundError:
        return False

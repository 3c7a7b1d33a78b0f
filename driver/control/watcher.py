"""Background watcher of Docker's event stream: it learns which container owns each endpoint,
and its labels, without ever calling Docker from inside a plugin request.

`docker run` emits `container create` (with every label), then `network connect` once Join
has returned, some 200 ms before the container's process starts. On the connect event the
watcher looks the endpoint up with a network inspect (which, unlike a container inspect,
does not wait for the container's start) and hands it to the control plane.
"""

import ipaddress
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import docker
import docker.errors
import requests.exceptions

log = logging.getLogger(__name__)

RECONNECT_DELAYS = (0.5, 1, 2, 5)
STREAM_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


@dataclass(frozen=True)
class Listener:
    """What the watcher needs of the control plane: which networks are ours, and where to
    report what it learns."""

    network_ids: Callable[[], set[str]]
    # endpoint id, network id, network name, container id, container name, labels
    assign_container: Callable[[str, str, str, str, str, dict], None]
    # Docker's networks, the addresses it uses, its subnets of our IPAM
    forget_what_docker_lost: Callable[[set[str], set[str], set[str]], None]
    # a network of this driver created, as `docker network inspect` shows it
    network_seen: Callable[[dict], None]
    # endpoint id, the names its container has on the endpoint's network
    endpoint_aliases: Callable[[str, list[str]], None]


def docker_client(docker_host: str) -> docker.APIClient:
    return docker.APIClient(base_url=docker_host, timeout=30)


class DockerWatcher:
    def __init__(self, listener: Listener, docker_host: str, plugin_name: str):
        self.listener = listener
        self.docker_host = docker_host
        self.plugin_name = plugin_name
        self._labels: dict[str, tuple[str, dict]] = {}
        self._stop = threading.Event()
        self._stream = None
        self._thread = threading.Thread(target=self._run, name="docker-events", daemon=True)
        self.connected = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                client = docker_client(self.docker_host)
                self._stream = client.events(
                    decode=True, filters={"type": ["container", "network"]}
                )
                self.resync(client)
                self.connected.set()
                attempt = 0
                for event in self._stream:
                    self._dispatch(client, event)
            except STREAM_ERRORS as exc:
                if self._stop.is_set():
                    break
                log.warning("docker events: %s; reconnecting", exc)
            finally:
                self.connected.clear()
                if self._stream is not None:
                    self._stream.close()
                    self._stream = None
            delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
            attempt += 1
            self._stop.wait(delay)

    def resync(self, client) -> None:
        """Match every endpoint of our networks to its container from a full listing; then
        let the control plane drop what Docker does not have."""
        ours = self.plugin_name
        docker_networks, used_addresses, docker_subnets = set(), set(), set()
        containers = set()
        for listed in client.networks():
            docker_networks.add(listed["Id"])
            ipam = listed.get("IPAM") or {}
            if ipam.get("Driver") == ours:
                docker_subnets |= _subnets(ipam)
            if ours not in (listed.get("Driver"), ipam.get("Driver")):
                continue
            try:
                network = client.inspect_network(listed["Id"])
            except docker.errors.NotFound:
                continue
            used_addresses |= _addresses_in_use(network)
            if listed["Id"] not in self.listener.network_ids():
                continue
            for container_id, info in (network.get("Containers") or {}).items():
                self._assign(client, network, container_id, info.get("EndpointID"))
                containers.add(container_id)
        for container_id in sorted(containers):
            self._aliases(client, container_id)
        self.listener.forget_what_docker_lost(docker_networks, used_addresses, docker_subnets)

    def _dispatch(self, client, event: dict) -> None:
        actor = event.get("Actor") or {}
        attributes = actor.get("Attributes") or {}
        kind, action = event.get("Type"), event.get("Action")
        if kind == "container" and action == "create":
            labels = {k: v for k, v in attributes.items() if k not in ("name", "image")}
            self._labels[actor.get("ID")] = (attributes.get("name", ""), labels)
        elif kind == "container" and action == "destroy":
            self._labels.pop(actor.get("ID"), None)
        elif kind == "container" and action == "start":
            self._aliases(client, actor.get("ID", ""))
        elif kind == "network" and action == "create":
            if attributes.get("type") != self.plugin_name:
                return
            try:
                network = client.inspect_network(actor["ID"])
            except docker.errors.NotFound:
                return
            self._seen(network)
        elif kind == "network" and action == "connect":
            if actor.get("ID") not in self.listener.network_ids():
                return
            try:
                network = client.inspect_network(actor["ID"])
            except docker.errors.NotFound:
                return
            container_id = attributes.get("container", "")
            info = (network.get("Containers") or {}).get(container_id) or {}
            self._assign(client, network, container_id, info.get("EndpointID"))

    def _seen(self, network: dict) -> None:
        try:
            self.listener.network_seen(network)
        except Exception:
            # As for _assign: the watcher lives on; the next resync tries again.
            log.exception("network %s (%s) not taken in", network.get("Name"), network["Id"])

    def _aliases(self, client, container_id: str) -> None:
        """A started container's names on our networks: its --network-alias ones and those
        Docker adds (the short container id). Inspected only once it started, as an
        inspect before the start waits for it."""
        try:
            data = client.inspect_container(container_id)
        except docker.errors.NotFound:
            return
        ours = self.listener.network_ids()
        for settings in ((data.get("NetworkSettings") or {}).get("Networks") or {}).values():
            if settings.get("NetworkID") not in ours or not settings.get("EndpointID"):
                continue
            try:
                aliases = sorted(settings.get("Aliases") or [])
                self.listener.endpoint_aliases(settings["EndpointID"], aliases)
            except Exception:
                # As for _assign: one endpoint's failure does not end the watcher.
                log.exception("container %s: aliases not taken in", container_id)

    def _assign(self, client, network: dict, container_id: str, endpoint_id: str | None) -> None:
        if not endpoint_id:
            return
        name, labels = self._labels.get(container_id) or self._inspect_labels(client, container_id)
        try:
            self.listener.assign_container(
                endpoint_id, network["Id"], network["Name"], container_id, name, labels
            )
        except Exception:
            # One endpoint's failure (a full map, a refused write) must not end the watcher:
            # every later container's identity depends on it. This endpoint stays waiting
            # for its identity; the next resync (after a reconnect) tries it again.
            log.exception("container %s (endpoint %s): no identity assigned", name, endpoint_id)

    def _inspect_labels(self, client, container_id: str) -> tuple[str, dict]:
        try:
            data = client.inspect_container(container_id)
        except docker.errors.NotFound:
            return "", {}
        name = data.get("Name", "").lstrip("/")
        labels = (data.get("Config") or {}).get("Labels") or {}
        self._labels[container_id] = (name, labels)
        return name, labels


def _subnets(ipam: dict) -> set[str]:
    """The subnets of a network's IPAM configuration, written as the driver's pools are."""
    subnets = set()
    for config in ipam.get("Config") or []:
        try:
            subnets.add(str(ipaddress.ip_network(config.get("Subnet", ""), strict=False)))
        except ValueError:
            continue
    return subnets


def _addresses_in_use(network: dict) -> set[str]:
    """The addresses Docker holds on a network: gateways, auxiliary and container addresses."""
    used = set()
    for config in (network.get("IPAM") or {}).get("Config") or []:
        used.add(config.get("Gateway", ""))
        used.update((config.get("AuxiliaryAddresses") or {}).values())
    for info in (network.get("Containers") or {}).values():
        used.update((info.get("IPv4Address", ""), info.get("IPv6Address", "")))
    return {text.split("/")[0] for text in used if text}

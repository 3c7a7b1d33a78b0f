"""A stand-in for one node's dockerd, for bench/cluster.py: the part of the Docker Engine API
the driver's events watcher and network replication read (events, network list, create,
inspect and remove, container inspect), served on a unix socket, and `docker network
create` / `docker run` made as dockerd makes them: the driver's plugin calls in Docker's
order, then the events dockerd emits. No containers, namespaces or veths exist: the
driver runs with a datapath stand-in (bench/cluster_node.py)."""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import re
import socketserver
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

from driver.cli.client import ApiClient, ApiError

GATEWAY = {"RequestAddressType": "com.docker.network.gateway"}
# What `docker version` of Debian's docker.io 20.10 answers, as far as the SDK reads it.
VERSION = {"Version": "20.10.24", "ApiVersion": "1.41", "MinAPIVersion": "1.12"}
PATH = re.compile(r"^(?:/v[0-9.]+)?(/[^?]*)")


class DockerStandIn:
    def __init__(self, socket_path: str, plugin_socket: str, plugin_name: str):
        self.socket_path = socket_path
        self.plugin = ApiClient(plugin_socket, timeout=60)
        self.plugin_name = plugin_name
        self.lock = threading.Lock()
        self.networks: dict[str, dict] = {}  # id -> inspect form (Containers included)
        self.pools: dict[str, dict[int, str]] = {}  # network id -> {4|6: pool id}
        self.containers: dict[str, dict] = {}  # id -> inspect form
        self.subscribers: list[queue.Queue] = []
        self.server = _Server(socket_path, _handler(self))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        with self.lock:
            for q in self.subscribers:
                q.put(None)
        self.server.shutdown()
        self.server.server_close()
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

    def call(self, name: str, body: dict) -> dict:
        return self.plugin.request("POST", "/" + name, body)

    def emit(self, kind: str, action: str, actor_id: str, attributes: dict) -> None:
        now = time.time()
        event = {
            "Type": kind,
            "Action": action,
            "Actor": {"ID": actor_id, "Attributes": attributes},
            "time": int(now),
            "timeNano": int(now * 1e9),
        }
        with self.lock:
            for q in self.subscribers:
                q.put(event)

    # What a user does: `docker network create` and `docker run`

    def create_network(self, name: str, ipam: dict, enable_ipv6: bool, **_ignored) -> str:
        """`docker network create -d <driver> --ipam-driver <driver> [--ipv6]` (this
        driver's IPAM only: that is what the benchmark uses and replicates)."""
        if ipam.get("Driver") != self.plugin_name:
            raise ApiError(f"the stand-in makes only networks of {self.plugin_name}'s IPAM")
        with self.lock:
            if any(n["Name"] == name for n in self.networks.values()):
                raise ApiError(f"network with name {name} already exists")
        network_id = uuid.uuid4().hex * 2
        configs = {4: {}, 6: {}}
        for pool in ipam.get("Config") or []:
            configs[ipaddress.ip_network(pool["Subnet"]).version] = pool
        data, pool_ids, inspect_configs = {}, {}, []
        for version in (4, 6) if enable_ipv6 else (4,):
            pool_ids[version], data[version] = self._pool(version, configs[version])
            inspect_configs.append(
                {"Subnet": data[version]["Pool"], "Gateway": data[version]["Gateway"]}
            )
        self.call(
            "NetworkDriver.CreateNetwork",
            {
                "NetworkID": network_id,
                "Options": {
                    "com.docker.network.enable_ipv6": enable_ipv6,
                    "com.docker.network.generic": {},
                },
                "IPv4Data": [data[4]],
                "IPv6Data": [data[6]] if 6 in data else [],
            },
        )
        network = {
            "Id": network_id,
            "Name": name,
            "Driver": self.plugin_name,
            "EnableIPv6": enable_ipv6,
            "Internal": False,
            "Options": {},
            "Labels": {},
            "IPAM": {"Driver": self.plugin_name, "Options": {}, "Config": inspect_configs},
            "Containers": {},
        }
        with self.lock:
            self.networks[network_id] = network
            self.pools[network_id] = pool_ids
        self.emit("network", "create", network_id, {"name": name, "type": self.plugin_name})
        return network_id

    def _pool(self, version: int, config: dict) -> tuple[str, dict]:
        request = {
            "AddressSpace": "CiliumLocal",
            "Pool": config.get("Subnet", ""),
            "SubPool": config.get("IPRange", ""),
            "V6": version == 6,
        }
        pool = self.call("IpamDriver.RequestPool", request)
        gateway = pool["Data"].get("com.docker.network.gateway")
        if gateway is None:
            body = {"PoolID": pool["PoolID"], "Address": "", "Options": GATEWAY}
            gateway = self.call("IpamDriver.RequestAddress", body)["Address"]
        return pool["PoolID"], {
            "AddressSpace": "CiliumLocal",
            "Pool": pool["Pool"],
            "Gateway": gateway,
        }

    def network_named(self, name: str) -> dict | None:
        with self.lock:
            return next((n for n in self.networks.values() if n["Name"] == name), None)

    def run(self, name: str, network_name: str, labels: dict) -> tuple[str, float]:
        """`docker run -d --name <name> --net <network> --label ...`: the container's
        endpoint id and the monotonic time Join returned (Docker then connects the
        container and reports `network connect`, then starts it)."""
        network = self.network_named(network_name)
        container_id = uuid.uuid4().hex * 2
        endpoint_id = uuid.uuid4().hex * 2
        self.emit("container", "create", container_id, {"name": name, "image": "none", **labels})
        interface = {"MacAddress": ""}
        addresses = {}
        for version, field in ((4, "Address"), (6, "AddressIPv6")):
            pool_id = self.pools[network["Id"]].get(version)
            if pool_id is not None:
                body = {"PoolID": pool_id, "Address": "", "Options": None}
                interface[field] = addresses[version] = self.call(
                    "IpamDriver.RequestAddress", body
                )["Address"]
        ids = {"NetworkID": network["Id"], "EndpointID": endpoint_id}
        self.call("NetworkDriver.CreateEndpoint", {**ids, "Interface": interface, "Options": {}})
        sandbox = f"/var/run/docker/netns/{container_id[:12]}"
        self.call("NetworkDriver.Join", {**ids, "SandboxKey": sandbox, "Options": {}})
        joined = time.monotonic()
        with self.lock:
            network["Containers"][container_id] = {
                "Name": name,
                "EndpointID": endpoint_id,
                "MacAddress": "",
                "IPv4Address": addresses.get(4, ""),
                "IPv6Address": addresses.get(6, ""),
            }
            self.containers[container_id] = {
                "Id": container_id,
                "Name": "/" + name,
                "Config": {"Labels": labels},
                "NetworkSettings": {
                    "Networks": {
                        network_name: {
                            "NetworkID": network["Id"],
                            "EndpointID": endpoint_id,
                            "Aliases": [container_id[:12]],
                        }
                    }
                },
            }
        self.emit(
            "network",
            "connect",
            network["Id"],
            {"container": container_id, "name": network_name, "type": self.plugin_name},
        )
        self.emit("container", "start", container_id, {"name": name, "image": "none", **labels})
        return endpoint_id, joined

    # The Engine API the driver reads

    def list_networks(self, query: dict) -> list[dict]:
        names = json.loads(query.get("filters", ["{}"])[0]).get("name", [])
        with self.lock:
            listed = [_listed(n) for n in self.networks.values()]
        return [n for n in listed if not names or any(part in n["Name"] for part in names)]

    def remove_network(self, network_id: str) -> None:
        self.call("NetworkDriver.DeleteNetwork", {"NetworkID": network_id})
        with self.lock:
            network = self.networks.pop(network_id)
            pools = self.pools.pop(network_id)
        for pool_id in pools.values():
            self.call("IpamDriver.ReleasePool", {"PoolID": pool_id})
        self.emit(
            "network", "destroy", network_id, {"name": network["Name"], "type": self.plugin_name}
        )


def _listed(network: dict) -> dict:
    """A network as `GET /networks` lists it (without its containers)."""
    return {k: v for k, v in network.items() if k != "Containers"}


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, handler):
        if os.path.exists(path):
            os.unlink(path)
        super().__init__(path, handler)


def _handler(docker: DockerStandIn):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def address_string(self):
            return docker.socket_path

        def _reply(self, status: int, body=None) -> None:
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _not_found(self, what: str) -> None:
            self._reply(404, {"message": f"{what} not found"})

        def do_GET(self):
            url = urlsplit(self.path)
            path = PATH.match(url.path).group(1)
            query = parse_qs(url.query)
            if path == "/version":
                self._reply(200, VERSION)
            elif path == "/events":
                self._events()
            elif path == "/networks":
                self._reply(200, docker.list_networks(query))
            elif path.startswith("/networks/"):
                with docker.lock:
                    network = docker.networks.get(path.split("/")[2])
                    body = json.loads(json.dumps(network)) if network else None
                self._reply(200, body) if body else self._not_found("network")
            elif path.startswith("/containers/") and path.endswith("/json"):
                with docker.lock:
                    container = docker.containers.get(path.split("/")[2])
                    body = json.loads(json.dumps(container)) if container else None
                self._reply(200, body) if body else self._not_found("container")
            else:
                self._not_found(path)

        def do_POST(self):
            path = PATH.match(urlsplit(self.path).path).group(1)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if path != "/networks/create":
                return self._not_found(path)
            try:
                network_id = docker.create_network(
                    body["Name"], body.get("IPAM") or {}, bool(body.get("EnableIPv6"))
                )
            except ApiError as exc:
                return self._reply(409, {"message": str(exc)})
            self._reply(201, {"Id": network_id, "Warning": ""})

        def do_DELETE(self):
            path = PATH.match(urlsplit(self.path).path).group(1)
            network_id = path.split("/")[2] if path.startswith("/networks/") else ""
            if network_id not in docker.networks:
                return self._not_found("network")
            try:
                docker.remove_network(network_id)
            except ApiError as exc:
                return self._reply(403, {"message": str(exc)})
            self._reply(204)

        def _events(self) -> None:
            """Chunked JSON objects until the stand-in closes, as dockerd streams them."""
            q: queue.Queue = queue.Queue()
            with docker.lock:
                docker.subscribers.append(q)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            try:
                while (event := q.get()) is not None:
                    data = json.dumps(event).encode() + b"\n"
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            except OSError:
                pass
            finally:
                with docker.lock:
                    docker.subscribers.remove(q)

    return Handler

"""A driver of the tests' own (in-process, the real datapath, settings nobody else uses)
with containers made the way Docker makes them: plugin calls, then the peer moved into a
network namespace; identities given as the Docker events watcher would. Root only; never
skips. Everything made here is removed afterwards."""

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field

import pytest

from datapath.uninstall import remove_from_host
from driver.config import Config
from driver.control.uninstall import owned_ranges
from driver.server import uiassets
from driver.server.app import create_app

from ..datapath import traffic
from ..ports import free_port
from ..unit.docker_calls import NET, create_endpoint, join, make_ipam_network

PREFIX = "uim"  # host veths; neither the driver's "lxc" nor the e2e instance's "lxt"


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=30)


@dataclass
class Container:
    name: str
    endpoint_id: str
    netns: str
    ipv6: str
    ipv4: str
    servers: list = field(default_factory=list)

    def serve(self, port: int) -> None:
        self.servers.append(traffic.serve(self.netns, port))

    def exchange(self, address: str, port: int, timeout: float = 2) -> bool:
        return traffic.exchange(self.netns, address, port, "tcp", timeout)


class Driver:
    def __init__(self, tmp_path):
        pid = os.getpid()
        self.ui_address = f"127.0.0.1:{free_port()}"
        self.config = Config(
            plugin_name=f"pycilium-ui-{pid}",
            api_socket=str(tmp_path / "api.sock"),
            state_dir=str(tmp_path / "state"),
            bpf_pin_dir=f"/sys/fs/bpf/pycilium-ui-{pid}",
            veth_prefix=PREFIX,
            cluster_prefix6="fdce:1c60::/64",
            node_range4="10.160.0.0/16",
            service_range6="fdce:1c61::/64",
            service_range4="10.161.0.0/16",
            node_id=7,
            ui_address=self.ui_address,
        ).validate()
        assert uiassets.path_in(self.config.ui_assets).is_file(), "run `make setup` first"
        self.app = create_app(self.config, watch_docker=False)
        self.plane = self.app.extensions["pycilium"]
        self.client = self.app.test_client()
        self.pools = make_ipam_network(self.post)
        self.containers: list[Container] = []

    def post(self, path, body=None):
        response = self.client.post("/" + path, data=json.dumps(body or {}).encode())
        return response.status_code, response.get_json(force=True)

    def api(self, method: str, path: str, body=None):
        response = self.client.open("/v1/" + path, method=method, json=body)
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    def container(self, name: str, labels: dict) -> Container:
        endpoint_id = f"{len(self.containers) + 1:02x}" * 32
        status, reply = create_endpoint(self.post, self.pools, endpoint_id)
        assert status == 200, reply
        status, reply = join(self.post, endpoint_id)
        assert status == 200, reply
        ep = self.plane.store.get_endpoint(endpoint_id)
        made = Container(name, endpoint_id, f"uim-{os.getpid()}-{name}", ep.ipv6, ep.ipv4)
        self.containers.append(made)
        _plug(made.netns, ep)
        self.plane.assign_container(endpoint_id, NET, "app", endpoint_id, name, labels)
        return made

    def close(self) -> None:
        for container in self.containers:
            for server in container.servers:
                traffic.stop(server)
            run("ip", "netns", "del", container.netns, check=False)
        self.plane.close()
        remove_from_host(self.config.bpf_pin_dir, PREFIX, owned_ranges(self.config))
        shutil.rmtree(self.config.state_dir, ignore_errors=True)


def _plug(netns: str, ep) -> None:
    """What Docker does with the peer of a joined endpoint."""
    run("ip", "netns", "add", netns)
    run("ip", "link", "set", ep.peer_ifname, "netns", netns)

    def ip(*args):
        run("ip", "-n", netns, *args)

    ip("link", "set", ep.peer_ifname, "name", "eth0")
    ip("link", "set", "lo", "up")
    ip("link", "set", "eth0", "up")
    ip("-6", "addr", "add", f"{ep.ipv6}/128", "dev", "eth0", "nodad")
    ip("addr", "add", f"{ep.ipv4}/32", "dev", "eth0")
    ip("-6", "route", "add", ep.router6, "dev", "eth0")
    ip("-6", "route", "add", "default", "via", ep.router6, "dev", "eth0")
    ip("route", "add", f"{ep.router4}/32", "dev", "eth0")
    ip("route", "add", "default", "via", ep.router4, "dev", "eth0")


@pytest.fixture
def driver(tmp_path):
    made = Driver(tmp_path)
    yield made
    made.close()

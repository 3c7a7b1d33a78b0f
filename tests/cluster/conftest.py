"""A real etcd (Debian's etcd-server) on 127.0.0.1 for each test, and control planes of
several "nodes" in this process sharing it. The datapath is the unit tests' fake: these
tests are about the state the nodes share, not about packets."""

import json
import shutil
import subprocess
import time
import urllib.request

import pytest

from driver.config import Config
from driver.control.cluster.kvstore import KvStore
from driver.server.app import create_app

from ..ports import free_port
from ..unit.docker_calls import NET, create_endpoint, join, make_ipam_network
from ..unit.fakes import FakeDatapath

ETCD = shutil.which("etcd")
LEASE_TTL = 2


class Etcd:
    """One etcd member; stop() and start() again keep its data directory and ports."""

    def __init__(self, data_dir):
        self.data_dir = data_dir
        self.client_port, self.peer_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.log = data_dir.parent / "etcd.log"
        self.process = None

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        command = [
            ETCD,
            "--name=test",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=test={peer}",
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"etcd did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1) as answer:
                return json.load(answer).get("health") == "true"
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None

    def keys(self, prefix: str) -> dict[str, str]:
        """Every key under prefix and its value, read straight from etcd's gateway."""
        entries, _ = self._client(lambda kv: kv.list(prefix, "read what the test checks"))
        return {e.key: e.value for e in entries}

    def entry(self, key: str):
        """The key's entry (with its revisions and lease), or None."""
        return self._client(lambda kv: kv.get(key, "read what the test checks"))

    def put(self, key: str, value: str) -> None:
        self._client(lambda kv: kv.put(key, value, "set up the test"))

    def _client(self, use):
        kv = KvStore([self.url])
        try:
            return use(kv)
        finally:
            kv.close()


@pytest.fixture
def etcd(tmp_path):
    # Installed by make setup (scripts/setup-host.sh): a missing binary fails, never skips.
    assert ETCD, "no etcd binary on PATH: install Debian's etcd-server (make setup)"
    server = Etcd(tmp_path / "etcd")
    server.start()
    yield server
    server.stop()


class Node:
    """One driver's control plane (fake datapath) in cluster mode, driven through the
    plugin protocol as Docker drives it. A node restarted with the datapath it had finds
    its endpoints there, as a driver finds its pinned maps and veths."""

    def __init__(self, config: Config, datapath: FakeDatapath):
        self.config = config
        self.app = create_app(config, datapath=datapath, watch_docker=False)
        self.plane = self.app.extensions["pycilium"]
        self.datapath = datapath
        self.client = self.app.test_client()
        self.pools = None

    def post(self, path: str, body: dict):
        response = self.client.post("/" + path, data=json.dumps(body).encode())
        return response.status_code, response.get_json(force=True)

    def api(self, path: str):
        response = self.client.get("/v1/" + path)
        assert response.status_code == 200, response.get_json(force=True)
        return response.get_json()

    def endpoint(
        self, number: int, labels: dict, options: dict | None = None, learnt: bool = True
    ) -> str:
        """A container's endpoint on network NET ("app"), joined with options (its port
        map), its labels learnt as the Docker events watcher learns them (unless not
        `learnt`: then learn() does it later); its endpoint id."""
        if self.pools is None:
            self.pools = make_ipam_network(self.post)
        endpoint_id = f"{number:04x}"[::-1] + "e" * 60
        assert create_endpoint(self.post, self.pools, endpoint_id)[0] == 200
        assert join(self.post, endpoint_id, options)[0] == 200
        if learnt:
            self.learn(endpoint_id, number, labels)
        return endpoint_id

    def learn(self, endpoint_id: str, number: int, labels: dict) -> None:
        self.plane.assign_container(endpoint_id, NET, "app", endpoint_id, f"c{number}", labels)

    def identity(self, endpoint_id: str) -> int:
        return self.plane.endpoint_info(endpoint_id).identity

    def remove(self, endpoint_id: str) -> None:
        body = {"NetworkID": NET, "EndpointID": endpoint_id}
        assert self.post("NetworkDriver.Leave", body)[0] == 200
        assert self.post("NetworkDriver.DeleteEndpoint", body)[0] == 200

    def close(self) -> None:
        self.plane.close()


@pytest.fixture
def nodes(etcd, tmp_path):
    """start(name) starts a node (again, with its state, after stop(name)); stop(name)
    returns it, so that its datapath can be given to the next start."""
    running: dict[str, Node] = {}

    class Nodes:
        def start(self, name: str, datapath: FakeDatapath | None = None, **settings) -> Node:
            defaults = {
                "state_dir": str(tmp_path / name),
                "kvstore": "etcd",
                "kvstore_endpoints": etcd.url,
                "kvstore_lease_ttl": LEASE_TTL,
                "node_name": name,
                # Every node here has 127.0.0.1 as its address: a test that wants the
                # DNS server gives it a port of its own.
                "cluster_dns_port": 0,
            }
            config = Config(**{**defaults, **settings}).validate()
            running[name] = Node(config, datapath or FakeDatapath())
            return running[name]

        def stop(self, name: str) -> Node:
            node = running.pop(name)
            node.close()
            return node

    yield Nodes()
    for node in running.values():
        node.close()


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(0.05)

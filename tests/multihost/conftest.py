"""A cluster of simulated hosts for the multi-host tests, made by scripts/cluster.sh (what
`make cluster` runs) with names, underlay and etcd port of its own, so a `make cluster` a
user left up is never touched. One cluster of three hosts serves the whole session: the
largest point to prove (hosts 1 and 2 serve, host 3 is the client) needs three, and bringing
one up costs seconds, not the minutes three clusters would.

Hosts are driven as a user drives them: the docker CLI with the host's DOCKER_HOST and the
`cilium` command with its CILIUM_API_SOCKET, both read from /run/pycilium/<cluster>/nodeK.env.
A missing prerequisite (root, etcd, dockerd, the venv) fails the session, never skips it."""

import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from ..ports import free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "cluster.sh"
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")
CILIUM = str(Path(sys.executable).parent / "cilium")
IMAGE = "pycilium/busybox"
NODES = 3
LEASE_TTL = 5
# Beside `make cluster`'s (cluster, pcnode, pcbr0, 198.18.0.0/24): a cluster of its own.
NAME = "mhtest"
SETTINGS = {
    "CLUSTER": NAME,
    "NETNS_PREFIX": "pcmh",
    "BRIDGE": "pcmhbr0",
    "UNDERLAY": "198.18.1.0/24",
    "NODES": str(NODES),
    "VENV": sys.prefix,
    "DOCKER": DOCKER,
    # Not the caller's (make exports DRIVER_ARGS for `make run`): the tests' own settings. A
    # dead node leaves the others' views within 5 s, not the default 15 (test_faults.py).
    "DRIVER_ARGS": f"--kvstore-lease-ttl {LEASE_TTL}",
}
ENV_DIR = Path("/run/pycilium") / NAME
LABEL = "pycilium.multihost"


def wait_for(condition, timeout: float, what: str, interval: float = 0.2):
    """condition()'s first true value; fails the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(interval)


def read_env(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and " " not in line)


@dataclass
class Host:
    number: int
    env: dict[str, str]

    @property
    def name(self) -> str:
        return self.env["NODE_NAME"]

    def docker(self, *args, check=True, timeout=120) -> subprocess.CompletedProcess:
        environment = {**os.environ, "DOCKER_HOST": self.env["DOCKER_HOST"]}
        done = subprocess.run(
            [DOCKER, *args], env=environment, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"host {self.number}: docker {' '.join(args)} ({done.returncode}): {done.stderr}"
            )
        return done

    def cilium(self, *args, stdin=None, check=True, timeout=60) -> subprocess.CompletedProcess:
        environment = {**os.environ, "CILIUM_API_SOCKET": self.env["CILIUM_API_SOCKET"]}
        done = subprocess.run(
            [CILIUM, *args],
            env=environment,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"host {self.number}: cilium {' '.join(args)}: {done.stdout}{done.stderr}"
            )
        return done

    def cilium_json(self, *args):
        return json.loads(self.cilium(*args, "-o", "json").stdout)

    def run(self, name: str, network: str, *command, labels=(), publish=()) -> str:
        """A detached container (publish: `-p` specs); its name."""
        label_args = [arg for label in (LABEL, *labels) for arg in ("--label", label)]
        publish_args = [arg for spec in publish for arg in ("-p", spec)]
        self.docker(
            "run", "-d", "--pull", "never", "--name", name, "--net", network, *label_args,
            *publish_args, IMAGE, *(command or ("sleep", "1d")),
        )  # fmt: skip
        return name

    def web(self, name: str, network: str, page: str, labels=(), publish=()) -> str:
        """A container serving `page` over HTTP on port 80."""
        script = f"echo {page} > /www/index.html && exec httpd -f -p 80 -h /www"
        return self.run(name, network, "sh", "-c", script, labels=labels, publish=publish)

    def in_netns(self, *command, check=True) -> subprocess.CompletedProcess:
        """A command in the host's network namespace (its iptables, its devices)."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.env["NODE_NETNS"], *command],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"host {self.number}: {' '.join(command)}: {done.stderr}")
        return done

    def addresses(self, container: str, network: str) -> tuple[str, str]:
        """(IPv6, IPv4) of container on network."""
        found = self.docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", container)
        settings = json.loads(found.stdout)[network]
        return settings["GlobalIPv6Address"], settings["IPAddress"]

    def exec(self, container: str, *command, timeout=30) -> subprocess.CompletedProcess:
        return self.docker("exec", container, *command, check=False, timeout=timeout)

    def ping(self, container: str, address: str) -> bool:
        tool = "ping6" if ":" in address else "ping"
        return self.exec(container, tool, "-c1", "-W1", address).returncode == 0

    def fetch(self, container: str, address: str, port: int = 80) -> str | None:
        """The page at address:port, or None (busybox wget -T crashes: timeout limits it)."""
        host = f"[{address}]" if ":" in address else address
        command = ("timeout", "3", "wget", "-q", "-O", "-", f"http://{host}:{port}/")
        done = self.exec(container, *command)
        return done.stdout.strip() if done.returncode == 0 else None

    def fetched_bytes(self, container: str, address: str, path: str) -> int | None:
        """How many bytes of http://address/path arrived, or None when the fetch failed."""
        host = f"[{address}]" if ":" in address else address
        script = f"timeout 10 wget -q -O - http://{host}/{path} | wc -c"
        done = self.exec(container, "sh", "-o", "pipefail", "-c", script)
        return int(done.stdout) if done.returncode == 0 else None

    def endpoint(self, container: str) -> dict:
        """The driver's endpoint record of a container of this host."""
        for endpoint in self.cilium_json("endpoint", "list"):
            if endpoint.get("container_name") == container:
                return endpoint
        raise AssertionError(f"host {self.number} has no endpoint of {container}")

    def monitor(self, *args) -> "Monitor":
        return Monitor(self, args)


class Monitor:
    """`cilium monitor -o json` on a host, read by a thread, for a `with` block."""

    def __init__(self, host: Host, args: tuple):
        environment = {**os.environ, "CILIUM_API_SOCKET": host.env["CILIUM_API_SOCKET"]}
        self.process = subprocess.Popen(
            [CILIUM, "monitor", *args, "-o", "json"],
            env=environment,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.events: queue.Queue = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            if line.strip():
                self.events.put(json.loads(line))

    def first(self, match, timeout: float) -> dict | None:
        """The first event match(event) accepts within timeout seconds, or None."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                return None
            if match(event):
                return event
        return None

    def __enter__(self):
        time.sleep(0.5)  # the stream is open before the traffic it should see
        return self

    def __exit__(self, *_):
        self.process.terminate()
        self.process.wait(timeout=10)
        self.reader.join(timeout=10)
        self.process.stdout.close()


class Cluster:
    def __init__(self, hosts: list[Host]):
        self.hosts = hosts

    def __getitem__(self, number: int) -> Host:
        return self.hosts[number - 1]

    def script(self, *args) -> str:
        """scripts/cluster.sh with this cluster's settings; its output."""
        done = _script(*args)
        assert done.returncode == 0, f"cluster.sh {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    def node(self, seen_by: Host, name: str) -> dict | None:
        """Node `name` as host `seen_by` lists it, or None."""
        return next((n for n in seen_by.cilium_json("node", "list") if n["name"] == name), None)


def _script(*args, timeout=300) -> subprocess.CompletedProcess:
    environment = {**os.environ, **SETTINGS}
    return subprocess.run(
        [str(SCRIPT), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def cluster():
    assert os.geteuid() == 0, "the multi-host tests make namespaces and start dockerd: run as root"
    SETTINGS["ETCD_PORT"] = str(free_port(count=2))  # etcd's peer port is the next one
    _script("down")  # what a killed earlier run left
    up = _script("up")
    if up.returncode != 0:
        down = _script("down")
        pytest.fail(
            f"scripts/cluster.sh up failed ({up.returncode}):\n{up.stdout}{up.stderr}\n"
            f"down: {down.stdout}{down.stderr}"
        )
    hosts = [Host(k, read_env(ENV_DIR / f"node{k}.env")) for k in range(1, NODES + 1)]
    yield Cluster(hosts)
    down = _script("down")
    assert down.returncode == 0, f"scripts/cluster.sh down: {down.stdout}{down.stderr}"


@dataclass
class Outside:
    """A client outside the cluster: a network namespace on the cluster's underlay bridge."""

    netns: str
    address: str

    def fetch(self, address: str, port: int) -> str | None:
        """The page at http://address:port/, or None."""
        script = (
            "import sys, urllib.request\n"
            "with urllib.request.urlopen(sys.argv[1], timeout=3) as answer:\n"
            "    print(answer.read().decode().strip())\n"
        )
        url = f"http://{address}:{port}/"
        done = subprocess.run(
            ["ip", "netns", "exec", self.netns, sys.executable, "-c", script, url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return done.stdout.strip() if done.returncode == 0 else None


def _ip(*args) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def outside(cluster):
    """A namespace with a veth on the cluster's bridge and an address of its underlay (.200,
    above the hosts'), no route beyond it: a client that is no host of the cluster. Removed
    after the test (its veth with it)."""
    netns = SETTINGS["NETNS_PREFIX"] + "out"
    address = SETTINGS["UNDERLAY"].rsplit(".", 1)[0] + ".200"
    length = SETTINGS["UNDERLAY"].split("/")[1]
    subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30)
    _ip("netns", "add", netns)
    try:
        _ip("link", "add", netns, "type", "veth", "peer", "name", "eth0", "netns", netns)
        _ip("link", "set", netns, "master", SETTINGS["BRIDGE"], "up")
        _ip("-n", netns, "addr", "add", f"{address}/{length}", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        yield Outside(netns, address)
    finally:
        _ip("netns", "del", netns)


@pytest.fixture
def names():
    """Unique names for a test's objects, so a failed test's leftovers never meet the next."""
    tag = uuid.uuid4().hex[:6]
    return lambda what: f"mh-{what}-{tag}"


@pytest.fixture
def clean(cluster):
    """After the test: its containers, networks, policy and services are gone on every host."""
    yield
    for host in cluster.hosts:
        ids = host.docker("ps", "-aq", "--filter", f"label={LABEL}", check=False).stdout.split()
        if ids:
            host.docker("rm", "-f", *ids, check=False)
    for host in cluster.hosts:
        ids = host.docker("network", "ls", "-q", "--filter", "name=mh-", check=False).stdout
        if ids.split():
            host.docker("network", "rm", *ids.split(), check=False)
    cluster[1].cilium("policy", "delete", "--all", check=False)
    cluster[1].cilium("service", "delete", "--all", check=False)


@pytest.fixture
def network(cluster, names, clean):
    """A cilium network (IPAM form, IPv6 and IPv4) made on host 1, once every host has it."""
    name = names("net")
    cluster[1].docker(
        "network", "create", "--ipv6", "-d", "cilium", "--ipam-driver", "cilium", name
    )
    for host in cluster.hosts[1:]:
        wait_for(
            lambda host=host: host.docker("network", "inspect", name, check=False).returncode == 0,
            15,
            f"network {name} made on host 1 exists on host {host.number}",
        )
    return name

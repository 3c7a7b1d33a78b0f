"""Containers reach the outside world, masqueraded, as on Docker's bridge; not from an
internal network, not with `-o masquerade=false`, and not against an egress policy.

"The outside" is a namespace joined to the host by a veth, with documentation addresses
only (per engine, tests/e2e/engines.py; the datapath tests use others) and no route to
the node ranges: a container gets an answer from it only if its flow was masqueraded.
Test traffic never goes to a real outside address.
"""

import subprocess
import sys
import threading
import time
import uuid

import pytest

from . import engines

LINK4, LINK6 = engines.current().addresses.world
WORLD4, HOST4 = engines.address(LINK4, 2), engines.address(LINK4, 1)
WORLD6, HOST6 = engines.address(LINK6, 2), engines.address(LINK6, 1)
PORT = 8000
PAGE = "hello from world"

NO_WORLD_POLICY = """
- endpointSelector: {matchLabels: {app: out}}
  labels: [{key: name, value: outbound-policy}]
  egress:
  - toEntities: [host]
"""
WORLD_POLICY = """
- endpointSelector: {matchLabels: {app: out}}
  labels: [{key: name, value: outbound-policy}]
  egress:
  - toEntities: [world]
"""


def _ip(*args: str, netns: str | None = None, check: bool = True) -> None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    subprocess.run([*prefix, "ip", *args], check=check, capture_output=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The world namespace with an HTTP server on [::]:PORT, both families."""
    name = f"pcw{uuid.uuid4().hex[:6]}"
    root = tmp_path_factory.mktemp("world")
    (root / "index.html").write_text(PAGE + "\n")
    _ip("netns", "add", name)
    server = None
    try:
        _ip("link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", name)
        _ip("addr", "add", f"{HOST4}/{LINK4.split('/')[1]}", "dev", name)
        _ip("addr", "add", f"{HOST6}/{LINK6.split('/')[1]}", "dev", name, "nodad")
        _ip("link", "set", name, "up")
        for args in (
            ("addr", "add", f"{WORLD4}/{LINK4.split('/')[1]}", "dev", "eth0"),
            ("addr", "add", f"{WORLD6}/{LINK6.split('/')[1]}", "dev", "eth0", "nodad"),
            ("link", "set", "eth0", "up"),
            ("link", "set", "lo", "up"),
        ):
            _ip(*args, netns=name)
        command = [sys.executable, "-m", "http.server", "--bind", "::", str(PORT)]
        server = subprocess.Popen(
            ["ip", "netns", "exec", name, *command, "--directory", str(root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_listening(name)
        yield name
    finally:
        if server is not None:
            server.kill()
            server.wait()
        _ip("link", "del", name, check=False)
        _ip("netns", "del", name, check=False)


def _wait_listening(netns: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listening = subprocess.run(
            ["ip", "netns", "exec", netns, "ss", "-Htln", f"sport = :{PORT}"],
            capture_output=True,
            text=True,
        ).stdout
        if listening.strip():
            return
        time.sleep(0.1)
    raise RuntimeError("the world's HTTP server did not start")


def fetch(docker, container, address, timeout=3) -> str | None:
    """The page at address, or None. busybox wget -T crashes: the limit is timeout's."""
    host = f"[{address}]" if ":" in address else address
    command = ("timeout", str(timeout), "wget", "-q", "-O", "-", f"http://{host}:{PORT}/")
    done = docker.exec(container, *command, check=False, timeout=30)
    return done.stdout.strip() if done.returncode == 0 else None


def first_drop(driver, docker, container, address) -> str:
    """The first drop line `cilium monitor` shows for container's flow to address while the
    container fetches from it ("" if none comes within 10 s)."""
    cli = [driver.cli_path(), "--socket", driver.settings["api_socket"]]
    command = [*cli, "monitor", "--type", "drop", "--from", container]
    monitor = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    deadline = threading.Timer(10, monitor.terminate)
    deadline.start()
    try:
        time.sleep(0.5)
        assert fetch(docker, container, address, timeout=2) is None
        # Earlier drops of the container may come first (multicast, an earlier fetch).
        return next((line for line in monitor.stdout if f"[{address}]:{PORT}" in line), "")
    finally:
        deadline.cancel()
        monitor.terminate()
        monitor.wait(timeout=10)
        monitor.stdout.close()


@pytest.fixture
def network(docker, driver):
    """Factory: a network of the test driver in the given form, removed afterwards."""
    made = []

    def make(form: str, *options: str) -> str:
        if form == "ipam":
            name = docker.cilium_network(driver.name, *options, prefix="o-")
        else:
            name = docker.network_create(f"o-{uuid.uuid4().hex[:8]}", "-d", driver.name, *options)
        made.append(name)
        return name

    yield make
    for name in made:
        docker.remove_network(name)


@pytest.mark.parametrize("form", ["ipam", "plain"])
@pytest.mark.parametrize("address", [WORLD4, WORLD6])
def test_a_container_fetches_a_page_from_the_world(docker, world, network, form, address):
    """Both create forms give IPv4 and IPv6 (the plain form's IPv6 is the driver's)."""
    container = docker.container(network(form))
    assert fetch(docker, container, address) == PAGE


@pytest.mark.parametrize("form", ["ipam", "plain"])
def test_an_internal_network_reaches_nothing_beyond_the_host(docker, driver, world, network, form):
    net = network(form, "--internal")
    container = docker.container(net)
    peer = docker.container(net)
    line = first_drop(driver, docker, container, WORLD6)
    assert "internal network" in line, line
    assert fetch(docker, container, WORLD4) is None
    # The network itself works: its containers reach each other.
    _, peer4 = docker.addresses(peer, net)
    assert docker.exec(container, "ping", "-c1", "-W1", peer4, check=False).returncode == 0


@pytest.mark.parametrize("address", [WORLD4, WORLD6])
def test_with_masquerade_off_nothing_comes_back(docker, world, network, address):
    """`-o masquerade=false`: the container's own address leaves, and the world has no
    route back to it (a network routing the node ranges would)."""
    container = docker.container(network("ipam", "-o", "masquerade=false"))
    assert fetch(docker, container, address) is None


def test_egress_to_the_world_is_governed_by_policy(docker, driver, cilium, world, network):
    container = docker.container(network("ipam"), "--label", "app=out")
    cilium("policy", "import", "-", stdin=NO_WORLD_POLICY)
    line = first_drop(driver, docker, container, WORLD4)
    assert "olicy" in line and "-> 2:" in line, line
    assert fetch(docker, container, WORLD6) is None
    cilium("policy", "import", "-", stdin=WORLD_POLICY)
    assert fetch(docker, container, WORLD4) == PAGE
    assert fetch(docker, container, WORLD6) == PAGE

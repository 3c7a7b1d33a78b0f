"""End-to-end fixtures: the real dockerd (started by `make test`), the real docker CLI, and
a test instance of the driver started here, so tests can kill and restart it."""

import subprocess
import uuid

import pytest

from .docker_cli import IMAGE, Docker
from .driver_process import running


@pytest.fixture(scope="session")
def docker():
    d = Docker()
    info = d.run("info", check=False)
    assert info.returncode == 0, f"no dockerd answers (make test starts one): {info.stderr}"
    assert d.run("image", "inspect", IMAGE, check=False).returncode == 0, (
        f"image {IMAGE} is missing: make test builds it (scripts/build-image.sh)"
    )
    d.remove_all()
    yield d
    d.remove_all()


@pytest.fixture(scope="session")
def driver(docker, tmp_path_factory):
    """One driver instance for the session; tests that kill it start it again."""
    with running(docker, str(tmp_path_factory.mktemp("driver") / "driver.log")) as process:
        yield process


@pytest.fixture
def net(docker, driver):
    """A fresh IPAM-form IPv6 network, removed with its containers after the test."""
    with docker.fresh_network(driver.name) as name:
        yield name


@pytest.fixture
def cilium(driver):
    """The `cilium` command line against the test driver."""
    run = driver.cli
    yield run
    run("policy", "delete", "--all", check=False)
    run("policy", "mode", "default", check=False)
    run("service", "delete", "--all", check=False)


@pytest.fixture
def external():
    """A network namespace behind the host, standing for a peer outside the node: it reaches
    containers through the host's routing, so they see it as world or a CIDR identity."""
    name = f"pcext{uuid.uuid4().hex[:6]}"
    # Unreachable routes wider than the namespace's own subnets, which must win over them.
    ranges = ("fdce:1c02::/48", "10.216.0.0/16")

    def ip(*args, netns=None):
        prefix = ["ip", "netns", "exec", netns] if netns else []
        subprocess.run([*prefix, "ip", *args], check=True)

    for cidr in ranges:
        ip("route", "add", "unreachable", cidr)
    ip("netns", "add", name)
    try:
        ip("link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", name)
        ip("addr", "add", "fdce:1c02::1/64", "dev", name, "nodad")
        ip("addr", "add", "10.216.0.1/24", "dev", name)
        ip("link", "set", name, "up")
        for args in (
            ("addr", "add", "fdce:1c02::2/64", "dev", "eth0", "nodad"),
            ("addr", "add", "10.216.0.2/24", "dev", "eth0"),
            ("link", "set", "eth0", "up"),
            ("link", "set", "lo", "up"),
            ("-6", "route", "add", "default", "via", "fdce:1c02::1"),
            ("route", "add", "default", "via", "10.216.0.1"),
        ):
            ip(*args, netns=name)
        yield {"netns": name, "v6": "fdce:1c02::2", "v4": "10.216.0.2"}
    finally:
        subprocess.run(["ip", "link", "del", name], check=False)
        subprocess.run(["ip", "netns", "del", name], check=False)
        for cidr in ranges:
            subprocess.run(["ip", "route", "del", "unreachable", cidr], check=False)


def connects_from(netns, address, port=80):
    code = (
        "import socket,sys\n"
        f"try: socket.create_connection(({address!r}, {port}), timeout=1.5).close()\n"
        "except OSError: sys.exit(1)\n"
    )
    command = ["ip", "netns", "exec", netns, "/usr/bin/python3", "-c", code]
    return subprocess.run(command, capture_output=True, timeout=30).returncode == 0

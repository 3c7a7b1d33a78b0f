"""End-to-end fixtures: the real dockerd of the engine under test (--engine; started by `make
test`), its docker CLI, and a test instance of the driver started here for that engine, so
tests can kill and restart it."""

import ipaddress
import subprocess
import uuid

import pytest

from . import engines
from .docker_cli import IMAGE, Docker
from .driver_process import running


@pytest.fixture(scope="session")
def engine():
    return engines.current()


@pytest.fixture(scope="session")
def docker(engine):
    d = Docker(engine.docker, engine.pidfile)
    info = d.run("info", check=False)
    assert info.returncode == 0, f"no dockerd answers (make test starts one): {info.stderr}"
    assert d.run("image", "inspect", IMAGE, check=False).returncode == 0, (
        f"image {IMAGE} is missing: make test builds it (scripts/build-image.sh)"
    )
    d.remove_all()
    yield d
    d.remove_all()


@pytest.fixture(scope="session")
def driver(engine, docker, tmp_path_factory):
    """One driver instance for the session; tests that kill it start it again."""
    log = str(tmp_path_factory.mktemp("driver") / "driver.log")
    with running(docker, log, engine.settings) as process:
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
def external(engine):
    """A network namespace behind the host, standing for a peer outside the node: it reaches
    containers through the host's routing, so they see it as world or a CIDR identity."""
    name = f"pcext{uuid.uuid4().hex[:6]}"
    # Unreachable routes wider than the namespace's own subnets, which must win over them.
    ranges = engine.addresses.external
    link6 = next(ipaddress.ip_network(ranges[0]).subnets(new_prefix=64))
    link4 = next(ipaddress.ip_network(ranges[1]).subnets(new_prefix=24))
    host6, peer6 = str(link6[1]), str(link6[2])
    host4, peer4 = str(link4[1]), str(link4[2])

    def ip(*args, netns=None):
        prefix = ["ip", "netns", "exec", netns] if netns else []
        subprocess.run([*prefix, "ip", *args], check=True)

    for cidr in ranges:
        ip("route", "add", "unreachable", cidr)
    ip("netns", "add", name)
    try:
        ip("link", "add", name, "type", "veth", "peer", "name", "eth0", "netns", name)
        ip("addr", "add", f"{host6}/64", "dev", name, "nodad")
        ip("addr", "add", f"{host4}/24", "dev", name)
        ip("link", "set", name, "up")
        for args in (
            ("addr", "add", f"{peer6}/64", "dev", "eth0", "nodad"),
            ("addr", "add", f"{peer4}/24", "dev", "eth0"),
            ("link", "set", "eth0", "up"),
            ("link", "set", "lo", "up"),
            ("-6", "route", "add", "default", "via", host6),
            ("route", "add", "default", "via", host4),
        ):
            ip(*args, netns=name)
        yield {"netns": name, "v6": peer6, "v4": peer4, "host6": host6, "host4": host4}
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

"""End-to-end fixtures: the real dockerd (started by `make test`), the real docker CLI, and
a test instance of the driver started here, so tests can kill and restart it."""

import json
import os
import signal
import subprocess
import uuid

import pytest

from .driver_process import DriverProcess

DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")
IMAGE = "pycilium/busybox"
LABEL = "pycilium.test"


class Docker:
    """The docker CLI, as users type it. Everything created carries a label for clean-up."""

    # Set once the main dockerd stopped answering: every later call fails at once instead of
    # waiting out its own timeout, so a wedged engine costs a failed run, not hours.
    wedged = ""

    def run(self, *args, check=True, timeout=120) -> subprocess.CompletedProcess:
        main_engine = args[:1] != ("-H",)
        if main_engine and Docker.wedged:
            raise AssertionError(Docker.wedged)
        try:
            result = subprocess.run(
                [DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            if main_engine and not engine_answers():
                Docker.wedged = wedged_engine(args)
            raise
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
            )
        return result

    def out(self, *args, **kwargs) -> str:
        return self.run(*args, **kwargs).stdout.strip()

    def network_create(self, name, *args):
        self.run("network", "create", "--label", LABEL, *args, name)
        return name

    def cilium_network(self, driver_name, *args, prefix="n-"):
        """A new network in the IPAM form (`-d X --ipam-driver X --ipv6`) of driver_name."""
        name = prefix + uuid.uuid4().hex[:8]
        ipam_form = ("-d", driver_name, "--ipam-driver", driver_name, "--ipv6")
        return self.network_create(name, *ipam_form, *args)

    def container(self, network, *args, name=None, command=("sleep", "1d")):
        name = name or "t-" + uuid.uuid4().hex[:8]
        self.run(
            "run", "-d", "--label", LABEL, "--net", network, "--name", name, *args, IMAGE, *command
        )
        return name

    def exec(self, container, *command, check=True, timeout=60):
        return self.run("exec", container, *command, check=check, timeout=timeout)

    def addresses(self, container, network):
        data = json.loads(self.out("inspect", container))[0]
        net = data["NetworkSettings"]["Networks"][network]
        return net["GlobalIPv6Address"], net["IPAddress"]

    def remove_network(self, name):
        """Remove every container on a network, then the network (which must succeed)."""
        ids = self.out("ps", "-aq", "--filter", f"network={name}").split()
        if ids:
            self.run("rm", "-f", *ids, check=False)
        self.run("network", "rm", name)

    def remove_all(self):
        ids = self.out("ps", "-aq", "--filter", f"label={LABEL}").split()
        if ids:
            self.run("rm", "-f", *ids, check=False)
        nets = self.out("network", "ls", "-q", "--filter", f"label={LABEL}").split()
        for net in nets:
            self.run("network", "rm", net, check=False)


def engine_answers() -> bool:
    try:
        return subprocess.run([DOCKER, "info"], capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def wedged_engine(args) -> str:
    """Ask dockerd for its goroutine stacks and say what happened."""
    try:
        with open("/var/run/docker.pid") as f:
            os.kill(int(f.read()), signal.SIGUSR1)
        stacks = "goroutine stacks: /var/run/docker/goroutine-stacks-*.log"
    except (OSError, ValueError) as exc:
        stacks = f"no goroutine stacks ({exc})"
    return (
        f"dockerd stopped answering during `docker {' '.join(args)}` and `docker info`; "
        f"later docker calls fail at once ({stacks}). Docker 20.10 can deadlock in "
        "libnetwork under heavy container churn (moby/moby#46661)."
    )


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
    process = DriverProcess(str(tmp_path_factory.mktemp("driver") / "driver.log"))
    process.purge()
    process.start()
    yield process
    docker.remove_all()
    process.stop()
    leftovers = veths(process.settings["veth_prefix"])
    process.purge()
    assert not leftovers, f"veths left behind: {leftovers}"


@pytest.fixture
def net(docker, driver):
    """A fresh IPAM-form IPv6 network, removed with its containers after the test."""
    name = docker.cilium_network(driver.name)
    yield name
    docker.remove_network(name)


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


def veths(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return [n for n in names if n.startswith(prefix)]

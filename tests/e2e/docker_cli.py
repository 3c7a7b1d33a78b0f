"""The docker CLI as the end-to-end and fault tests type it, against the main dockerd,
another engine's client (tests/e2e/engines.py), or (with -H) another dockerd."""

import contextlib
import json
import os
import signal
import subprocess
import uuid

DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")
IMAGE = "pycilium/busybox"
LABEL = "pycilium.test"


class Docker:
    """The docker CLI, as users type it. Everything created carries a label for clean-up."""

    # Set once the main dockerd stopped answering: every later call fails at once instead of
    # waiting out its own timeout, so a wedged engine costs a failed run, not hours.
    wedged = ""

    def __init__(self, client: str = DOCKER, pidfile: str = "/var/run/docker.pid"):
        self.client = client
        self.pidfile = pidfile

    def run(self, *args, check=True, timeout=120) -> subprocess.CompletedProcess:
        main_engine = args[:1] != ("-H",)
        if main_engine and Docker.wedged:
            raise AssertionError(Docker.wedged)
        try:
            result = subprocess.run(
                [self.client, *args], capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            if main_engine and not engine_answers(self.client):
                Docker.wedged = wedged_engine(args, self.pidfile)
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

    @contextlib.contextmanager
    def fresh_network(self, driver_name, prefix="n-"):
        """A new network of driver_name (IPAM form), removed with its containers afterwards."""
        name = self.cilium_network(driver_name, prefix=prefix)
        yield name
        self.remove_network(name)

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


def engine_answers(client: str) -> bool:
    try:
        return subprocess.run([client, "info"], capture_output=True, timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def wedged_engine(args, pidfile: str) -> str:
    """Ask dockerd for its goroutine stacks and say what happened."""
    try:
        with open(pidfile) as f:
            os.kill(int(f.read()), signal.SIGUSR1)
        stacks = "goroutine stacks: goroutine-stacks-*.log in its exec root (/var/run/docker)"
    except (OSError, ValueError) as exc:
        stacks = f"no goroutine stacks ({exc})"
    return (
        f"dockerd stopped answering during `docker {' '.join(args)}` and `docker info`; "
        f"later docker calls fail at once ({stacks}). Docker 20.10 can deadlock in "
        "libnetwork under heavy container churn (moby/moby#46661)."
    )

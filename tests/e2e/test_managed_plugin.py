"""The driver as a Docker managed (v2) plugin: built by `make plugin` (no registry), enabled
instead of the host service, the basic scenario with `-d NAME:TAG`, `docker plugin disable`
refused while a network uses it, and a clear refusal without bpffs.

The plugin instance has a name, ranges, pin directory, veth prefix and sockets of its own,
so it runs beside the suite's `pycilium-test` instance and any `make run` driver. The first
build makes a Debian rootfs with debootstrap (about 1.5 minutes here, cached afterwards under
/var/cache/pycilium/plugin)."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from datapath.netfilter import firewall, portmap
from driver.config import Config, env_name

from .docker_cli import DOCKER, IMAGE, Docker
from .driver_process import veths

REPO = Path(__file__).resolve().parents[2]
CONFIG_JSON = REPO / "plugin" / "config.json"
PLUGIN = "pycilium-ptest:latest"
RUN_DIR = "/run/pycilium-ptest"
STATE_SOURCE = f"{RUN_DIR}/state"
NO_BPFFS = f"{RUN_DIR}/no-bpffs"
VETH_PREFIX = "lxp"
SETTINGS = {
    "CILIUM_VETH_PREFIX": VETH_PREFIX,
    "CILIUM_CLUSTER_PREFIX6": "fdce:1c06::/64",
    "CILIUM_NODE_RANGE4": "10.218.0.0/16",
    "CILIUM_SERVICE_RANGE6": "fdce:1c07::/64",
    "CILIUM_SERVICE_RANGE4": "10.219.0.0/16",
    "CILIUM_BPF_PIN_DIR": "/sys/fs/bpf/pycilium-ptest",
    "CILIUM_API_SOCKET": f"{RUN_DIR}/api.sock",
    "CILIUM_NODE_ID": "43",
}
OWNED_RANGES = (
    "CILIUM_CLUSTER_PREFIX6",
    "CILIUM_NODE_RANGE4",
    "CILIUM_SERVICE_RANGE6",
    "CILIUM_SERVICE_RANGE4",
)
BUILD_TIMEOUT = 1800  # a cold build (debootstrap + apt + pip) takes about 1.5 minutes here


def docker_cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def plugin_info() -> dict | None:
    result = docker_cli("plugin", "inspect", PLUGIN)
    return json.loads(result.stdout)[0] if result.returncode == 0 else None


def make_plugin() -> float:
    """`make plugin` for the test plugin, left disabled; returns the seconds it took."""
    env = dict(os.environ, PLUGIN=PLUGIN, PLUGIN_ENABLE="0")
    env.pop("MAKEFLAGS", None)
    env.pop("MAKELEVEL", None)
    started = time.monotonic()
    result = subprocess.run(
        ["make", "-C", str(REPO), "--no-print-directory", "plugin"],
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"make plugin failed:\n{result.stdout}\n{result.stderr}"
    return time.monotonic() - started


def purge() -> None:
    """Remove everything the plugin instance may leave: its networks and their containers,
    the plugin, its state and pinned maps, its netfilter rules, the unreachable routes of its
    ranges (see DriverProcess.purge)."""
    if plugin_info() is not None:
        for net in docker_cli("network", "ls", "-q", "--filter", f"driver={PLUGIN}").stdout.split():
            ids = docker_cli("ps", "-aq", "--filter", f"network={net}").stdout.split()
            if ids:
                docker_cli("rm", "-f", *ids)
            docker_cli("network", "rm", net)
        docker_cli("plugin", "disable", "-f", PLUGIN)
        docker_cli("plugin", "rm", "-f", PLUGIN)
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    shutil.rmtree(SETTINGS["CILIUM_BPF_PIN_DIR"], ignore_errors=True)
    firewall.remove_forwarding(VETH_PREFIX)
    firewall.remove_masquerade(VETH_PREFIX)
    portmap.teardown(VETH_PREFIX)
    for key in OWNED_RANGES:
        cidr = SETTINGS[key]
        family = "-6" if ":" in cidr else "-4"
        subprocess.run(["ip", family, "route", "flush", "root", cidr, "proto", "206"], check=True)


class DockerdLog:
    """dockerd's log (where a managed plugin's output goes), from a point in time on."""

    def __init__(self):
        pid = Path("/var/run/docker.pid").read_text().strip()
        self.path = os.readlink(f"/proc/{pid}/fd/2")
        self.since = time.strftime("%Y-%m-%d %H:%M:%S")
        self.offset = os.path.getsize(self.path) if os.path.isfile(self.path) else 0

    def text(self) -> str:
        if os.path.isfile(self.path):
            with open(self.path, errors="replace") as f:
                f.seek(self.offset)
                return f.read()
        # dockerd under systemd: its output is in the journal.
        result = subprocess.run(
            ["journalctl", "-u", "docker", "--since", self.since, "--no-pager", "-o", "cat"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, f"cannot read dockerd's log ({self.path}): {result.stderr}"
        return result.stdout


def test_config_json_env_defaults_are_the_drivers():
    """The plugin's env defaults are the driver's own, and the socket Docker looks for
    (interface.socket) is the one the driver serves (<plugin_name>.sock)."""
    config = json.loads(CONFIG_JSON.read_text())
    env = {e["name"]: e["value"] for e in config["env"]}
    for name, field in Config.__dataclass_fields__.items():
        if env_name(name) in env and name != "state_dir":
            assert env[env_name(name)] == str(field.default), name
    assert config["interface"]["socket"] == env["CILIUM_PLUGIN_NAME"] + ".sock"
    assert env["CILIUM_PLUGIN_DIR"] == "/run/docker/plugins"
    state = next(m for m in config["mounts"] if m["name"] == "state")
    assert state["destination"] == env["CILIUM_STATE_DIR"]
    settable = {e["name"] for e in config["env"] if "value" in e.get("settable", [])}
    assert set(SETTINGS) <= settable
    assert set(config["interface"]["types"]) == {
        "docker.networkdriver/1.0",
        "docker.ipamdriver/1.0",
    }


@pytest.fixture(scope="module")
def plugin_docker():
    """The docker CLI, with no test plugin before or after. Not the session `docker` fixture:
    this test touches only what it creates (its network's containers), so it can run beside
    another session's containers."""
    assert os.geteuid() == 0, "the managed plugin test needs root"
    assert shutil.which("make"), "make is missing"
    d = Docker()
    info = d.run("info", check=False)
    assert info.returncode == 0, f"no dockerd answers (make test starts one): {info.stderr}"
    assert d.run("image", "inspect", IMAGE, check=False).returncode == 0, f"{IMAGE} is missing"
    purge()
    yield d
    purge()


def test_managed_plugin(plugin_docker):
    docker = plugin_docker
    timings = {}

    # Built with no registry, then a second build of the same tree reuses the plugin.
    timings["make plugin"] = make_plugin()
    first = plugin_info()
    assert first is not None, f"make plugin did not create {PLUGIN}"
    assert not first["Enabled"]
    timings["make plugin again"] = make_plugin()
    assert plugin_info()["Id"] == first["Id"], "an unchanged tree rebuilt the plugin"
    assert timings["make plugin again"] < 60, timings

    # Without bpffs at /sys/fs/bpf (here: an empty directory mounted there instead), the
    # plugin does not start and says why, in dockerd's log.
    os.makedirs(NO_BPFFS)
    assert docker_cli("plugin", "set", PLUGIN, f"bpffs.source={NO_BPFFS}").returncode == 0
    log = DockerdLog()
    refused = docker_cli("plugin", "enable", "--timeout", "30", PLUGIN)
    assert refused.returncode != 0, "the plugin started without bpffs"
    assert not plugin_info()["Enabled"]
    text = log.text()
    assert "no BPF filesystem (bpffs) at /sys/fs/bpf" in text, text[-3000:]
    assert "mount -t bpf bpf /sys/fs/bpf" in text

    # Its own ranges, prefix, pin directory and sockets; enabled instead of the host service.
    os.makedirs(STATE_SOURCE)
    settings = [f"{k}={v}" for k, v in SETTINGS.items()]
    result = docker_cli(
        "plugin",
        "set",
        PLUGIN,
        "bpffs.source=/sys/fs/bpf",
        f"state.source={STATE_SOURCE}",
        *settings,
    )
    assert result.returncode == 0, result.stderr
    started = time.monotonic()
    result = docker_cli("plugin", "enable", "--timeout", "120", PLUGIN)
    timings["docker plugin enable"] = time.monotonic() - started
    assert result.returncode == 0, f"docker plugin enable: {result.stderr}"

    # The foundation's scenario, with the full NAME:TAG.
    net = docker.cilium_network(PLUGIN, prefix="pn-")
    a = docker.container(net)
    b = docker.container(net)
    a6, a4 = docker.addresses(a, net)
    b6, b4 = docker.addresses(b, net)
    assert a6.startswith("fdce:1c06:") and b6.startswith("fdce:1c06:"), (a6, b6)
    assert a4.startswith("10.218.") and b4.startswith("10.218."), (a4, b4)
    assert veths(VETH_PREFIX), "no host-side veth with the plugin's prefix"
    docker.exec(a, "ping6", "-c", "2", "-W", "2", b6)
    docker.exec(b, "ping6", "-c", "2", "-W", "2", a6)
    docker.exec(a, "ping", "-c", "2", "-W", "2", b4)
    docker.exec(b, "ping", "-c", "2", "-W", "2", a4)

    # The management API is reachable from the host.
    cli = shutil.which("cilium") or str(REPO / ".venv" / "bin" / "cilium")
    listing = subprocess.run(
        [cli, "--socket", SETTINGS["CILIUM_API_SOCKET"], "endpoint", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listing.returncode == 0, listing.stderr
    for name in (a, b):
        line = next((ln for ln in listing.stdout.splitlines() if f" {name} " in ln), "")
        assert line.rstrip().endswith("ready"), listing.stdout

    # Docker refuses to disable a plugin a network uses.
    refused = docker_cli("plugin", "disable", PLUGIN)
    assert refused.returncode != 0, "docker plugin disable succeeded while a network uses it"
    assert "in use" in refused.stderr, refused.stderr
    assert plugin_info()["Enabled"]
    docker.exec(a, "ping6", "-c", "1", "-W", "2", b6)

    # Clean removal: containers and network first, then the plugin goes.
    docker.remove_network(net)
    assert not veths(VETH_PREFIX), veths(VETH_PREFIX)
    result = docker_cli("plugin", "disable", PLUGIN)
    assert result.returncode == 0, result.stderr
    result = docker_cli("plugin", "rm", PLUGIN)
    assert result.returncode == 0, result.stderr
    assert plugin_info() is None
    print("managed plugin timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))

"""docker run -p on a cilium network: from the host over loopback and its own addresses, and
from another namespace through the host's address; closed when the container stops."""

import subprocess

from .conftest import connects_from
from .docker_cli import IMAGE, LABEL
from .engines import current
from .test_policy import SERVE_HTTP, WEB_POLICY

HOST_PORT = current().addresses.host_port


def host_get(address: str, port: int = HOST_PORT) -> bool:
    host = f"[{address}]" if ":" in address else address
    command = ["curl", "-s", "-o", "/dev/null", "-m", "3", "-f", f"http://{host}:{port}/"]
    return subprocess.run(command, capture_output=True, timeout=30).returncode == 0


def test_published_port_reachable_from_host_and_outside(docker, driver, cilium, net, external):
    pub = docker.container(net, "-p", f"{HOST_PORT}:80", "--label", "app=web", command=SERVE_HTTP)
    host4, host6 = external["host4"], external["host6"]
    for address in ("127.0.0.1", "::1", host4, host6):
        assert host_get(address), address
    assert connects_from(external["netns"], host4, HOST_PORT)
    assert connects_from(external["netns"], host6, HOST_PORT)
    ports = cilium("endpoint", "get", pub).stdout
    assert f"*:{HOST_PORT}->80/tcp" in ports
    # Ingress policy applies to published ports: the outside is world.
    cilium("policy", "import", "-", stdin=WEB_POLICY)
    assert not connects_from(external["netns"], host4, HOST_PORT)
    cilium("policy", "delete", "--all")
    docker.run("stop", "-t", "1", pub)
    assert not host_get("127.0.0.1") and not host_get(host4)
    rules = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout
    assert f"--dport {HOST_PORT}" not in rules


def test_a_taken_host_port_is_a_clear_error(docker, driver, net):
    docker.container(net, "-p", f"{HOST_PORT + 1}:80", command=SERVE_HTTP)
    result = docker.run(
        "run",
        "-d",
        "--label",
        LABEL,
        "--net",
        net,
        "-p",
        f"{HOST_PORT + 1}:80",
        IMAGE,
        "sleep",
        "1d",
        check=False,
    )
    assert result.returncode != 0 and "already published" in result.stderr

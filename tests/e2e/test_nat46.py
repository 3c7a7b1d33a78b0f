"""NAT46: IPv4 clients (the host, a namespace beyond it) reach containers of an IPv6-only
network through an IPv4 VIP whose backends are the containers' IPv6 addresses."""

import subprocess

import pytest

from . import test_outbound as outbound
from .engines import address, current
from .test_services import serve

network = outbound.network

VIP4 = address(current().settings["service_range4"], 46)

HOST_ONLY_POLICY = """
- endpointSelector: {matchLabels: {app: v6web}}
  labels: [{key: name, value: nat46-policy}]
  ingress:
  - fromEntities: [host]
"""

# Each GET a new connection; one line per answer, "FAILED" for none.
FETCH = r"""
import sys, urllib.request
for _ in range(int(sys.argv[2])):
    try:
        print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode().strip())
    except OSError:
        print("FAILED")
"""


def fetch(count: int, netns: str | None = None) -> list[str]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    command = [*prefix, "/usr/bin/python3", "-c", FETCH, f"http://{VIP4}/", str(count)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120).stdout.split()


@pytest.fixture
def v6webs(docker, network):
    net = network("ipam", "-o", "ipv4=false")
    names = {}
    for name in ("v6web1", "v6web2"):
        names[name] = docker.container(net, "--label", "app=v6web", command=serve(name))
    return net, names


def _backends(docker, net, names) -> str:
    return ",".join(f"[{docker.addresses(c, net)[0]}]:80" for c in names.values())


def test_the_host_and_the_world_reach_ipv6_only_containers_through_an_ipv4_vip(
    docker, driver, cilium, v6webs, external
):
    net, names = v6webs
    result = cilium(
        "service", "update", "--frontend", f"{VIP4}:80", "--backends", _backends(docker, net, names)
    )
    assert VIP4 in result.stdout
    assert sorted(set(fetch(30))) == ["v6web1", "v6web2"]
    assert sorted(set(fetch(30, external["netns"]))) == ["v6web1", "v6web2"]
    # Ingress policy sees the host as host and the namespace as world.
    cilium("policy", "import", "-", stdin=HOST_ONLY_POLICY)
    assert set(fetch(5)) <= {"v6web1", "v6web2"}
    assert fetch(3, external["netns"]) == ["FAILED"] * 3


def test_a_removed_backend_gets_no_new_flows(docker, driver, cilium, v6webs):
    net, names = v6webs
    cilium(
        "service", "update", "--frontend", f"{VIP4}:80", "--backends", _backends(docker, net, names)
    )
    docker.run("rm", "-f", names["v6web1"])
    assert set(fetch(20)) == {"v6web2"}


def test_ipv6_backends_of_a_dual_stack_network_are_refused(docker, driver, cilium, net):
    container = docker.container(net, command=serve("dual"))
    backend = f"[{docker.addresses(container, net)[0]}]:80"
    done = cilium(
        "service", "update", "--frontend", f"{VIP4}:80", "--backends", backend, check=False
    )
    assert done.returncode != 0 and "NAT46" in done.stdout + done.stderr

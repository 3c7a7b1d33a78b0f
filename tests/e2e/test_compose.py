"""Compose against the real engine, with the driver's networks: Debian's docker-compose 1.29
with the host's engine, compose v2 with Docker 26 (tests/e2e/engines.py)."""

import ipaddress
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from . import engines
from .driver_process import veths

REPO = Path(__file__).resolve().parents[2]


class Compose:
    """The engine's compose command for one project."""

    def __init__(self, driver, directory: Path, compose_file: Path):
        self.project = "pc" + uuid.uuid4().hex[:8]
        self.env = {**os.environ, "CILIUM_DRIVER": driver.name}
        self.directory = directory
        self.file = compose_file
        self.command = engines.current().compose

    def __call__(self, *args, check=True, timeout=180):
        result = subprocess.run(
            [*self.command, "-p", self.project, "-f", str(self.file), *args],
            cwd=self.directory,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)}:\n{result.stderr}")
        return result

    def exec(self, service, *command, index=1):
        return self("exec", "-T", "--index", str(index), service, *command, check=False, timeout=60)


@pytest.fixture
def demo(driver, docker):
    compose = Compose(driver, REPO, REPO / "docker-compose.yml")
    yield compose
    compose("down", check=False)


def fetch(compose, service, url):
    return compose.exec(service, "timeout", "2", "wget", "-qO-", url)


def test_demo_stack_scales_resolves_names_follows_policy_and_leaves_nothing(
    demo, driver, docker, cilium
):
    baseline = driver.api("/v1/status")
    demo("up", "-d", "--scale", "api=5")
    assert len(demo("ps", "-q", "api").stdout.split()) == 5
    again = demo("up", "-d", "--scale", "api=5")
    # 1.29 says "Recreating", compose v2 "Recreate" and "Recreated".
    assert "recreat" not in again.stderr.lower()
    # Docker's embedded DNS answers for the driver's endpoints.
    assert fetch(demo, "frontend", "http://api/").returncode == 0
    assert (
        fetch(
            demo,
            "api",
            "http://db:5432/",
        ).stdout.strip()
        == "db"
    )
    cilium("policy", "import", str(REPO / "demo" / "policy.yaml"))
    assert fetch(demo, "frontend", "http://api/").returncode == 0
    assert fetch(demo, "api", "http://db:5432/").returncode == 0
    assert fetch(demo, "frontend", "http://db:5432/").returncode != 0
    assert fetch(demo, "db", "http://api/").returncode != 0
    identities = {i["key"] for i in driver.api("/v1/identities")}
    assert any("com.docker.compose.service" in key and "api" in key for key in identities)
    # Replicas of one service share an identity (the per-replica labels are filtered out).
    api_identities = {
        e["identity"]
        for e in driver.api("/v1/endpoints")
        if e["labels"].get("com.docker.compose.service") == "api"
    }
    assert len(api_identities) == 1

    demo("down")
    assert docker.out("network", "ls", "-q", "--filter", f"name={demo.project}") == ""
    assert veths(driver.settings["veth_prefix"]) == []
    status = driver.api("/v1/status")
    assert status["endpoints"] == 0 and status["identities"] == 0
    assert status["addresses"] == baseline["addresses"]
    assert driver.api("/v1/bpf/endpoints") == []


FORMAT_24 = """
version: "2.4"
services:
  one: {{image: pycilium/busybox, command: sleep 1d, networks: [net]}}
  two: {{image: pycilium/busybox, command: sleep 1d, networks: [net]}}
networks:
  net:
    driver: ${{CILIUM_DRIVER}}
    enable_ipv6: true
    ipam:
      driver: ${{CILIUM_DRIVER}}
      config:
        - subnet: {subnet6}
        - subnet: {subnet4}
"""

FORMAT_3 = """
version: "3.8"
services:
  one: {image: pycilium/busybox, command: sleep 1d, networks: [net]}
  two: {image: pycilium/busybox, command: sleep 1d, networks: [net]}
networks:
  net:
    driver: ${CILIUM_DRIVER}
"""

BAD_OPTION = """
version: "2.4"
services:
  one: {image: pycilium/busybox, command: sleep 1d, networks: [net]}
networks:
  net:
    driver: ${CILIUM_DRIVER}
    driver_opts: {colour: blue}
"""


@pytest.mark.parametrize("form", ["2.4", "3.8"])
def test_compose_formats(driver, docker, engine, tmp_path, form):
    subnet6, subnet4 = engine.addresses.compose
    if form == "2.4":
        text = FORMAT_24.format(subnet6=subnet6, subnet4=subnet4)
    else:
        text, subnet6 = FORMAT_3, driver.settings["cluster_prefix6"]
    (tmp_path / "docker-compose.yml").write_text(text)
    compose = Compose(driver, tmp_path, tmp_path / "docker-compose.yml")
    try:
        compose("up", "-d")
        assert compose("up", "-d").returncode == 0
        two6 = (
            compose.exec("two", "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global")
            .stdout.split()[3]
            .split("/")[0]
        )
        assert ipaddress.ip_address(two6) in ipaddress.ip_network(subnet6)
        assert compose.exec("one", "ping6", "-c1", "-W2", two6).returncode == 0
        assert compose.exec("one", "ping", "-c1", "-W2", "two").returncode == 0
    finally:
        compose("down", check=False)
    assert veths(driver.settings["veth_prefix"]) == []


def test_unsupported_driver_option_is_named(driver, tmp_path):
    (tmp_path / "docker-compose.yml").write_text(BAD_OPTION)
    compose = Compose(driver, tmp_path, tmp_path / "docker-compose.yml")
    try:
        result = compose("up", "-d", check=False)
        assert result.returncode != 0 and "unknown driver option colour" in result.stderr
    finally:
        compose("down", check=False)

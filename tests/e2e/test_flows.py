"""Flow records of real containers through `cilium observe`: an allowed connection with the
rule that allowed it, a dropped one with its reason, a load-balanced one with its service."""

import json
import time

import pytest

from .engines import address, current
from .test_policy import SERVE_HTTP, WEB_POLICY, wget

# In the service range of the instance under test (Docker 26's instance has its own).
VIP = address(current().settings["service_range6"], 0xF10)


@pytest.fixture
def trio(docker, net):
    web = docker.container(net, "--label", "app=web", command=SERVE_HTTP)
    client = docker.container(net, "--label", "app=client")
    other = docker.container(net, "--label", "app=other")
    web6, _ = docker.addresses(web, net)
    return {"web": web, "client": client, "other": other, "web6": web6}


def observe(cilium, *args, wanted, timeout=10.0) -> list[dict]:
    """`cilium observe -o json ARGS` until a flow satisfies wanted(flow)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = cilium("observe", "-o", "json", *args).stdout.splitlines()
        flows = [json.loads(line) for line in lines]
        if any(wanted(f) for f in flows) or time.monotonic() > deadline:
            return flows
        time.sleep(0.5)


def test_allowed_dropped_and_translated_connections_are_flows(docker, driver, cilium, trio):
    cilium("policy", "import", "-", stdin=WEB_POLICY)
    assert wget(docker, trio["client"], trio["web6"])
    assert not wget(docker, trio["other"], trio["web6"])

    def allowed(f):
        return f["type"] == "new" and f["direction"] == "ingress"

    flows = observe(
        cilium, "--from-container", trio["client"], "--verdict", "FORWARDED", wanted=allowed
    )
    admitted = [f for f in flows if allowed(f)]
    assert admitted, flows
    assert admitted[-1]["destination"]["container"] == trio["web"]
    assert admitted[-1]["destination"]["port"] == 80
    assert admitted[-1]["policy"]["rules"] == ["web-policy"]
    assert "app=web" in admitted[-1]["destination"]["labels"]

    drops = observe(
        cilium, "--from-label", "app=other", "--verdict", "DROPPED", wanted=lambda f: True
    )
    assert drops and all(f["reason"] == "Policy denied" for f in drops)
    assert {f["destination"]["container"] for f in drops} == {trio["web"]}

    cilium("policy", "delete", "--all")
    cilium("service", "update", "--frontend", f"[{VIP}]:80", "--selector", "app=web")
    assert wget(docker, trio["client"], VIP)
    flows = observe(
        cilium, "--verdict", "TRANSLATED", "--from-container", trio["client"], wanted=lambda f: True
    )
    assert flows, "no translated flow"
    assert flows[-1]["service"] == f"[{VIP}]:80/tcp"
    assert flows[-1]["destination"]["container"] == trio["web"]

    human = cilium("observe", "--last", "1", "--verdict", "TRANSLATED").stdout
    assert f"via [{VIP}]:80/tcp" in human and "TRANSLATED" in human

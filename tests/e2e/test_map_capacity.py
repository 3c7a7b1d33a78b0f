"""Full maps in a real driver: a policy import or a service that does not fit is refused with
a clear error and the policy and services in force stay in force, as real traffic shows.

A driver instance of its own (other name, ranges, pin directory and small maps than the
session's test instance), so the maps can be filled without touching other tests.
"""

import json
import os
import shutil

import pytest

from . import engines
from .driver_process import DriverProcess, _body, running, unix_http
from .test_policy import SERVE_HTTP, WEB_POLICY, wget

POLICY_MAP_SIZE = 24
SERVICE_MAP_SIZE = 16

SETTINGS = engines.current().instance({
    "plugin_name": "pycilium-maps",
    "api_socket": "/run/pycilium-maps/api.sock",
    "state_dir": "/run/pycilium-maps/state",
    "bpf_pin_dir": "/sys/fs/bpf/pycilium-maps",
    "veth_prefix": "lxm",
    "cluster_prefix6": "fdce:1c0b::/64",
    "node_range4": "10.223.0.0/16",
    "service_range6": "fdce:1c0c::/64",
    "service_range4": "10.224.0.0/16",
    "node_id": "45",
    "policy_map_size": str(POLICY_MAP_SIZE),
    "ct_map_size": "64",
    "service_map_size": str(SERVICE_MAP_SIZE),
})  # fmt: skip
VIPS = SETTINGS["service_range4"]


def vip(n: int) -> str:
    return engines.address(VIPS, n)


# web opens 40 more ports to client: more policy entries than the whole map holds.
WIDE_PORTS = ", ".join(f'{{port: "{p}", protocol: TCP}}' for p in range(8000, 8040))
WIDE_POLICY = f"""
- endpointSelector: {{matchLabels: {{app: web}}}}
  labels: [{{key: name, value: wide-policy}}]
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: client}}}}]
    toPorts: [{{ports: [{WIDE_PORTS}]}}]
"""


@pytest.fixture(scope="module")
def driver(docker, tmp_path_factory):
    try:
        with running(docker, str(tmp_path_factory.mktemp("maps") / "driver.log"), SETTINGS) as p:
            yield p
    finally:
        shutil.rmtree(os.path.dirname(SETTINGS["api_socket"]), ignore_errors=True)


@pytest.fixture(scope="module")
def cilium(driver):
    return driver.cli


@pytest.fixture(scope="module")
def trio(docker, driver):
    net = docker.cilium_network(driver.name, prefix="m-")
    web = docker.container(net, "--label", "app=web", command=SERVE_HTTP)
    client = docker.container(net, "--label", "app=client")
    other = docker.container(net, "--label", "app=other")
    web6, web4 = docker.addresses(web, net)
    yield {"web": web, "client": client, "other": other, "web6": web6, "web4": web4}
    docker.remove_network(net)


def policy_fill(driver) -> tuple[int, int]:
    fill = driver.api("/v1/status")["datapath"]["maps"]["policy"]
    return fill["entries"], fill["capacity"]


def test_policy_import_that_does_not_fit_is_refused_and_the_old_policy_holds(
    docker, driver, cilium, trio
):
    cilium("policy", "import", "-", stdin=WEB_POLICY)
    assert wget(docker, trio["client"], trio["web6"])
    assert not wget(docker, trio["other"], trio["web6"], timeout=1)
    before = driver.api("/v1/policy")
    used, capacity = policy_fill(driver)
    assert capacity == POLICY_MAP_SIZE and used < capacity

    refused = cilium("policy", "import", "-", stdin=WIDE_POLICY, check=False)

    assert refused.returncode != 0
    assert "policy map full" in refused.stderr, refused.stderr
    assert f"of {POLICY_MAP_SIZE} are free" in refused.stderr
    assert driver.api("/v1/policy") == before
    assert policy_fill(driver)[0] == used
    # The old policy is what the datapath enforces: client on 80 yes, other no.
    assert wget(docker, trio["client"], trio["web6"])
    assert wget(docker, trio["client"], trio["web4"])
    assert not wget(docker, trio["other"], trio["web6"], timeout=1)
    assert not wget(docker, trio["other"], trio["web4"], timeout=1)
    cilium("policy", "delete", "--all")
    assert wget(docker, trio["other"], trio["web6"])


def test_policy_import_refused_over_the_api_with_an_error_body(driver, cilium):
    cilium("policy", "import", "-", stdin=WEB_POLICY)
    before = driver.api("/v1/policy")
    body = json.dumps({"text": WIDE_POLICY, "source": "test"}).encode()
    request = (
        "PUT /v1/policy HTTP/1.1\r\nHost: api\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    status, reply = _body(unix_http(SETTINGS["api_socket"], request))
    assert status >= 400
    assert "policy map full" in reply["Err"]
    assert driver.api("/v1/policy") == before
    cilium("policy", "delete", "--all")


def test_a_service_that_does_not_fit_is_refused_and_the_others_stay(docker, driver, cilium, trio):
    for n in range(SERVICE_MAP_SIZE):
        cilium("service", "update", "--frontend", f"{vip(n + 1)}:80", "--selector", "app=web")
    refused = cilium(
        "service", "update", "--frontend", f"{vip(257)}:80", "--selector", "app=web", check=False
    )
    assert refused.returncode != 0
    assert f"service map full ({SERVICE_MAP_SIZE} frontends)" in refused.stderr, refused.stderr
    listing = cilium("service", "list").stdout
    assert vip(257) not in listing
    for n in range(SERVICE_MAP_SIZE):
        assert f"{vip(n + 1)}:80" in listing
    assert wget(docker, trio["client"], vip(1))
    assert wget(docker, trio["client"], vip(SERVICE_MAP_SIZE))
    cilium("service", "delete", "--all")


def test_a_start_with_other_map_sizes_is_refused_and_containers_keep_working(docker, driver, trio):
    driver.stop()
    resized = DriverProcess(driver.log_path, {**SETTINGS, "ct_map_size": "128"})
    with pytest.raises(
        RuntimeError, match="conntrack holds 64 entries, the configuration says 128"
    ):
        resized.start()
    assert wget(docker, trio["client"], trio["web6"])
    driver.start()
    assert wget(docker, trio["other"], trio["web6"])

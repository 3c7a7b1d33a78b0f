"""Identities and L3/L4 policy with real containers (early Cilium's scenarios 3-10 and more)."""

import ipaddress
import json
import subprocess
import threading
import time

import pytest

from .conftest import connects_from
from .docker_cli import IMAGE, LABEL
from .driver_process import http_get

# busybox httpd answers 404 without an index page: give it one.
SERVE_HTTP = ("sh", "-c", "echo web > /www/index.html && exec httpd -f -p 80 -h /www")

WEB_POLICY = """
- endpointSelector: {matchLabels: {app: web}}
  labels: [{key: name, value: web-policy}]
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""


@pytest.fixture
def trio(docker, net):
    """web (httpd on 80), client and other, on one network."""
    web = docker.container(net, "--label", "app=web", command=SERVE_HTTP)
    client = docker.container(net, "--label", "app=client")
    other = docker.container(net, "--label", "app=other")
    web6, web4 = docker.addresses(web, net)
    return {"web": web, "client": client, "other": other, "web6": web6, "web4": web4, "net": net}


def wget(docker, container, address, port=80, timeout=2):
    """An HTTP GET that gives up after `timeout` seconds. Debian's busybox 1.35 wget crashes
    whenever -T is given, so the time limit comes from busybox's timeout applet."""
    host = f"[{address}]" if ":" in address else address
    url = f"http://{host}:{port}/"
    command = ("timeout", str(timeout), "wget", "-q", "-O", "/dev/null", url)
    return docker.exec(container, *command, check=False, timeout=30).returncode == 0


def ping(docker, container, address):
    tool = "ping6" if ":" in address else "ping"
    return docker.exec(container, tool, "-c1", "-W1", address, check=False).returncode == 0


def test_no_policy_everyone_on_a_network_reaches_everyone(docker, driver, trio):
    for source in ("client", "other"):
        assert wget(docker, trio[source], trio["web6"])
        assert ping(docker, trio[source], trio["web4"])


def test_networks_are_isolated_by_default(docker, driver, trio):
    elsewhere = docker.cilium_network(driver.name, prefix="i-")
    try:
        stranger = docker.container(elsewhere, "--label", "app=client")
        assert not ping(docker, stranger, trio["web6"])
        assert not wget(docker, stranger, trio["web4"])
        assert ping(docker, trio["client"], trio["web6"])
    finally:
        docker.run("rm", "-f", stranger, check=False)
        docker.run("network", "rm", elsewhere)


def test_l4_policy_allows_client_on_port_80_only(docker, driver, cilium, trio):
    cilium("policy", "import", "-", stdin=WEB_POLICY)
    assert wget(docker, trio["client"], trio["web6"])
    assert wget(docker, trio["client"], trio["web4"])
    assert not wget(docker, trio["other"], trio["web6"])
    assert not wget(docker, trio["other"], trio["web4"])
    assert not ping(docker, trio["client"], trio["web6"])
    assert not ping(docker, trio["client"], trio["web4"])
    # The host may always reach endpoints.
    assert subprocess.run(["ping", "-c1", "-W1", trio["web4"]], capture_output=True).returncode == 0
    cilium("policy", "delete", "--all")
    assert wget(docker, trio["other"], trio["web6"])
    assert ping(docker, trio["client"], trio["web6"])


def test_drops_show_in_the_monitor_with_identities(docker, driver, cilium, trio):
    cilium("policy", "import", "-", stdin=WEB_POLICY)
    other = driver.api(f"/v1/endpoints/{trio['other']}")
    web = driver.api(f"/v1/endpoints/{trio['web']}")
    proc = subprocess.Popen(
        [
            driver.cli_path(),
            "--socket",
            driver.settings["api_socket"],
            "monitor",
            "--type",
            "drop",
            "--from",
            trio["other"],
            "--to",
            trio["web"],
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        assert not wget(docker, trio["other"], trio["web6"], timeout=1)
        line = proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()
    assert "drop" in line and "olicy" in line
    assert f"identity {other['identity']} -> {web['identity']}" in line
    assert f"[{other['ipv6']}]" in line and f"[{trio['web6']}]:80" in line


def test_stateful_replies_pass_but_reverse_connections_do_not(docker, driver, cilium, trio):
    # client accepts nothing from other endpoints; its own connections' replies still arrive.
    cilium(
        "policy",
        "import",
        "-",
        stdin="""
- endpointSelector: {matchLabels: {app: client}}
  ingress: [{}]
""",
    )
    assert wget(docker, trio["client"], trio["web6"])
    client6, _ = docker.addresses(trio["client"], trio["net"])
    docker.exec(trio["client"], "sh", "-c", "echo c > /www/index.html && httpd -p 8080 -h /www")
    assert not wget(docker, trio["web"], client6, port=8080)
    assert wget(docker, trio["client"], trio["web4"])


def test_egress_policy(docker, driver, cilium, trio):
    cilium(
        "policy",
        "import",
        "-",
        stdin="""
- endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
""",
    )
    assert wget(docker, trio["client"], trio["web6"])
    assert not ping(docker, trio["client"], trio["web6"])
    other6, _ = docker.addresses(trio["other"], trio["net"])
    assert not ping(docker, trio["client"], other6)
    assert ping(docker, trio["other"], trio["web6"])


def test_trace_gives_the_verdict_the_datapath_enforces(docker, driver, cilium, trio):
    cilium("policy", "import", "-", stdin=WEB_POLICY)
    allowed = cilium(
        "policy",
        "trace",
        "--src",
        "app=client",
        "--dst",
        "app=web",
        "--dport",
        "80/tcp",
        check=False,
    )
    denied = cilium(
        "policy",
        "trace",
        "--src",
        "app=other",
        "--dst",
        "app=web",
        "--dport",
        "80/tcp",
        check=False,
    )
    assert allowed.returncode == 0 and "ALLOWED" in allowed.stdout
    assert denied.returncode == 3 and "DENIED" in denied.stdout
    assert wget(docker, trio["client"], trio["web6"])
    assert not wget(docker, trio["other"], trio["web6"])


def test_identity_is_in_place_before_the_first_packet(docker, driver, cilium, trio):
    cilium("policy", "import", "-", stdin=WEB_POLICY)
    result = docker.run(
        "run",
        "--rm",
        "--label",
        LABEL,
        "--label",
        "app=client",
        "--net",
        trio["net"],
        IMAGE,
        "timeout",
        "3",
        "wget",
        "-q",
        "-O",
        "/dev/null",
        f"http://[{trio['web6']}]/",
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_enforcement_modes(docker, driver, cilium, trio):
    cilium("policy", "mode", "always")
    assert not ping(docker, trio["client"], trio["web6"])
    cilium("policy", "mode", "never")
    assert ping(docker, trio["client"], trio["web6"])
    cilium("policy", "mode", "default")
    assert ping(docker, trio["client"], trio["web6"])


def test_policy_updates_restart_nothing_and_keep_connections(docker, driver, cilium, trio):
    started = {
        n: docker.out("inspect", "-f", "{{.State.StartedAt}}", trio[n]) for n in ("web", "client")
    }
    chunks, chunk = 250, 65536
    # The sender trickles its bytes out over ~6 s; the client's stdin stays open meanwhile
    # (busybox nc stops reading when its stdin closes).
    send = f"for i in $(seq {chunks}); do head -c {chunk} /dev/zero; sleep 0.04; done"
    docker.run("exec", "-d", trio["web"], "sh", "-c", f"({send}) | nc -l -p 9000")
    received = {}

    def receive():
        command = f"sleep 16 | nc {trio['web6']} 9000 | wc -c"
        out = docker.exec(trio["client"], "sh", "-c", command, check=False, timeout=60)
        received["bytes"] = out.stdout.strip()

    receiver = threading.Thread(target=receive)
    time.sleep(0.3)
    receiver.start()
    for i in range(50):
        cilium(
            "policy",
            "import",
            "-",
            stdin=f"""
- endpointSelector: {{matchLabels: {{app: web}}}}
  labels: ["name=update-{i % 2}"]
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: client}}}}]
    toPorts: [{{ports: [{{port: "{9000 + i % 2}", protocol: TCP}}]}}]
  - fromEndpoints: [{{matchLabels: {{app: client}}}}]
    toPorts: [{{ports: [{{port: "9000", protocol: TCP}}]}}]
""",
        )
    # All 50 updates happened while the transfer was still running.
    assert receiver.is_alive()
    receiver.join()
    assert received["bytes"] == str(chunks * chunk)
    assert started == {
        n: docker.out("inspect", "-f", "{{.State.StartedAt}}", trio[n]) for n in ("web", "client")
    }


def test_policy_survives_a_driver_restart_and_holds_while_down(docker, driver, cilium, trio):
    cilium("policy", "import", "-", stdin=WEB_POLICY)
    driver.kill9()
    try:
        assert wget(docker, trio["client"], trio["web6"])
        assert not wget(docker, trio["other"], trio["web6"])
    finally:
        driver.start()
    assert not wget(docker, trio["other"], trio["web6"])
    assert wget(docker, trio["client"], trio["web6"])
    assert "web-policy" in json.dumps(driver.api("/v1/policy"))


def test_bad_policy_changes_nothing(docker, driver, cilium, trio):
    cilium("policy", "import", "-", stdin=WEB_POLICY)
    before = driver.api("/v1/policy")
    for bad in ("- endpointSelector: {matchLabels: {app: web}}\n  ingres: []\n", "{", "[1, 2]"):
        result = cilium("policy", "import", "-", stdin=bad, check=False)
        assert result.returncode == 1 and "Error:" in result.stderr
    assert driver.api("/v1/policy") == before
    assert not wget(docker, trio["other"], trio["web6"])


def test_endpoint_list_shows_identities(docker, driver, cilium, trio):
    listing = cilium("endpoint", "list").stdout
    assert "app=web" in listing and "ready" in listing and "on/off" in listing
    status = cilium("status")
    assert status.returncode == 0 and "Docker events: connected" in status.stdout
    assert "bpf_jit" in status.stdout
    assert http_get(driver.settings["api_socket"], "/v1/identities")


def test_cidr_rules_for_an_external_peer(docker, driver, engine, cilium, trio, external):
    range4 = engine.addresses.external[1]
    link4 = next(ipaddress.ip_network(range4).subnets(new_prefix=24))
    # No policy: the outside may reach containers, like a published service.
    assert connects_from(external["netns"], trio["web6"])
    cilium(
        "policy",
        "import",
        "-",
        stdin=f"""
- endpointSelector: {{matchLabels: {{app: web}}}}
  ingress:
  - fromCIDR: ["{external["v6"]}/128"]
  - fromCIDRSet: [{{cidr: "{range4}", except: ["{link4}"]}}]
""",
    )
    assert connects_from(external["netns"], trio["web6"])
    assert not connects_from(external["netns"], trio["web4"])
    assert not wget(docker, trio["client"], trio["web6"])
    cilium(
        "policy",
        "import",
        "-",
        stdin=f"""
- endpointSelector: {{matchLabels: {{app: web}}}}
  labels: ["name=v4"]
  ingress:
  - fromCIDR: ["{external["v4"]}/32"]
""",
    )
    assert connects_from(external["netns"], trio["web4"])
    identities = {i["key"] for i in driver.api("/v1/identities")}
    assert {f"cidr:{external['v6']}/128", f"cidr:{external['v4']}/32"} <= identities


def test_identities_are_released_when_containers_go(docker, driver, trio):
    web = driver.api(f"/v1/endpoints/{trio['web']}")["identity"]
    docker.run("rm", "-f", trio["web"])
    assert web not in {i["identity"] for i in driver.api("/v1/identities")}

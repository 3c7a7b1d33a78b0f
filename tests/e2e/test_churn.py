"""Churn: 30 replicas started in parallel by docker-compose, up and down again ROUNDS times.

Every round: no error, unique addresses, every replica reachable as the policy says. After the
last `down`: nothing grew (veths, addresses, identities, BPF map entries, the driver's memory)."""

import json
import os
import time

from . import engines
from .driver_process import veths
from .test_compose import Compose
from .test_metrics import by_label, scrape
from .test_races import log_problems

ROUNDS = 10
REPLICAS = 30
# Measured: 0.7 MiB from round 1 to round 10 (Python's allocator keeps its arenas). 4 MiB over
# the 270 endpoints made meanwhile still catches a leak of 15 kB per endpoint.
RSS_GROWTH_LIMIT = 4 * 1024 * 1024

COMPOSE_FILE = """
version: "2.4"
services:
  client:
    image: pycilium/busybox
    command: sh -c 'echo client > /www/index.html && exec httpd -f -p 80 -h /www'
    labels: {tier: churn-client, pycilium.test: ""}
    stop_signal: SIGKILL
    networks: [net]
  web:
    image: pycilium/busybox
    command: sh -c 'echo web > /www/index.html && exec httpd -f -p 80 -h /www'
    labels: {tier: churn-web, pycilium.test: ""}
    # httpd as PID 1 ignores SIGTERM: `down` would wait 10 s for each replica.
    stop_signal: SIGKILL
    networks: [net]
networks:
  net:
    driver: ${CILIUM_DRIVER}
    enable_ipv6: true
    ipam:
      driver: ${CILIUM_DRIVER}
"""

# The client may reach the web tier on port 80; web replicas may not reach each other. The
# client is selected by no rule, so anyone may reach it.
POLICY = """
- endpointSelector: {matchLabels: {tier: churn-web}}
  labels: ["name=churn-web"]
  ingress:
  - fromEndpoints: [{matchLabels: {tier: churn-client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""

# Each address fetched from inside a container, all at once: "ok <address>" or "no <address>".
FETCH_ALL = """
for a in "$@"; do
  (timeout "$SECONDS_EACH" wget -qO- "http://$a/" >/dev/null 2>&1 && echo "ok $a" || echo "no $a") &
done
wait
"""


def fetch_all(docker, container, addresses, seconds) -> dict[str, bool]:
    urls = [f"[{a}]" if ":" in a else a for a in addresses]
    result = docker.exec(
        container, "env", f"SECONDS_EACH={seconds}", "sh", "-c", FETCH_ALL, "sh", *urls,
        timeout=60,
    )  # fmt: skip
    answers = dict(line.split(" ", 1)[::-1] for line in result.stdout.splitlines())
    return {a: answers.get(u) == "ok" for a, u in zip(addresses, urls, strict=True)}


def driver_rss(driver) -> int:
    """Resident bytes of every process of the driver service (gunicorn master and worker)."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) != driver.proc.pid:
                continue
            with open(f"/proc/{pid}/status") as f:
                rss = next(line for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue  # gone meanwhile, or a kernel thread
        total += int(rss.split()[1]) * 1024
    return total


def resources(driver) -> dict:
    """Everything a round could leak: compared before the first and after the last round."""
    # The flows of deleted endpoints are swept in the background: wait for the sweeper (the
    # retired map empty), so that what is compared is what stays.
    deadline = time.monotonic() + 30
    while True:
        found = scrape(driver.settings["api_socket"])
        maps = by_label(found, "pycilium_bpf_map_entries", "map")
        if maps["retired"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # Finished flows stay in the LRU conntrack table until they age out: that is no leak. The
    # CIDR maps hold the host's own addresses, link-local ones of every veth on this host
    # included, which other drivers on the host change too.
    for name in ("conntrack", "cidr4", "cidr6"):
        maps.pop(name)
    return {
        "veths": veths(driver.settings["veth_prefix"]),
        "endpoints": driver.api("/v1/endpoints"),
        "addresses": driver.api("/v1/addresses"),
        "identities": [i["key"] for i in driver.api("/v1/identities")],
        "bpf_endpoints": driver.api("/v1/bpf/endpoints"),
        "map_entries": maps,
    }


def wait_ready(driver, addresses: set[str], timeout=30.0) -> None:
    """Until the watcher gave every endpoint its identity (before that, policy drops all)."""
    deadline = time.monotonic() + timeout
    while True:
        states = {e["ipv6"]: e["state"] for e in driver.api("/v1/endpoints")}
        waiting = [a for a in addresses if states.get(a) != "ready"]
        if not waiting:
            return
        assert time.monotonic() < deadline, f"endpoints without identity: {waiting}"
        time.sleep(0.2)


def addresses_of(docker, ids, network) -> dict[str, tuple[str, str]]:
    """Container name -> (IPv6, IPv4) on the network, from one `docker inspect`."""
    found = {}
    for c in json.loads(docker.out("inspect", *ids)):
        assert c["State"]["Running"], c["Name"]
        net = c["NetworkSettings"]["Networks"][network]
        found[c["Name"].lstrip("/")] = (net["GlobalIPv6Address"], net["IPAddress"])
    return found


def check_round(compose, docker, driver, round_index) -> None:
    ids = compose("ps", "-q").stdout.split()
    assert len(ids) == REPLICAS + 1
    found = addresses_of(docker, ids, f"{compose.project}_net")
    for family in (0, 1):
        unique = {pair[family] for pair in found.values()}
        assert "" not in unique and len(unique) == len(found), found
    wait_ready(driver, {six for six, _ in found.values()})

    sep = engines.current().compose_separator
    client = next(name for name in found if f"{sep}client{sep}" in name)
    webs = sorted(name for name in found if f"{sep}web{sep}" in name)
    web_addresses = [a for name in webs for a in found[name]]
    reached = fetch_all(docker, client, web_addresses, seconds=5)
    assert all(reached.values()), [a for a, ok in reached.items() if not ok]

    # One web replica (another each round): it reaches the client, which no rule selects,
    # and none of a few other replicas.
    source = webs[round_index % len(webs)]
    peers = [webs[(round_index + k) % len(webs)] for k in (1, 2, 3)]
    expected = {a: True for a in found[client]}
    expected.update({a: False for name in peers for a in found[name]})
    assert fetch_all(docker, source, list(expected), seconds=2) == expected


def down(compose, docker, driver) -> bool:
    """`docker-compose down`; False if Docker kept the network because it lost count of its
    endpoints (Docker 20.10 under parallel endpoint changes, moby/moby#42119) while neither
    Docker nor the driver holds an endpoint on it. Any other failure fails the test."""
    network = json.loads(docker.out("network", "inspect", f"{compose.project}_net"))[0]
    result = compose("down", check=False)
    if result.returncode == 0:
        return True
    held = [e for e in driver.api("/v1/endpoints") if e["network_id"] == network["Id"]]
    attached = json.loads(docker.out("network", "inspect", network["Id"]))[0]["Containers"]
    assert "has active endpoints" in result.stderr, result.stderr[-400:]
    assert (held, attached) == ([], {}), result.stderr[-400:]
    return False


def test_compose_churn_leaks_nothing(driver, docker, cilium, tmp_path):
    (tmp_path / "docker-compose.yml").write_text(COMPOSE_FILE)
    (tmp_path / "policy.yaml").write_text(POLICY)
    cilium("policy", "import", str(tmp_path / "policy.yaml"))
    baseline = resources(driver)
    log_start = os.path.getsize(driver.log_path)
    rss, stuck = [], []
    for round_index in range(ROUNDS):
        # A project of its own each round: a network Docker failed to remove stays behind.
        compose = Compose(driver, tmp_path, tmp_path / "docker-compose.yml")
        started = time.monotonic()
        try:
            compose("up", "-d", "--scale", f"web={REPLICAS}")
            up = time.monotonic() - started
            check_round(compose, docker, driver, round_index)
            checked = time.monotonic() - started
        except BaseException:
            compose("down", check=False)
            raise
        if not down(compose, docker, driver):
            stuck.append(compose.project)
        assert veths(driver.settings["veth_prefix"]) == baseline["veths"]
        rss.append(driver_rss(driver))
        print(
            f"round {round_index + 1}: up {up:.1f} s, checked {checked:.1f} s, "
            f"all {time.monotonic() - started:.1f} s, driver RSS {rss[-1] / 2**20:.1f} MiB"
        )
    if stuck:
        print(f"Docker kept the networks of {stuck} with no endpoint (moby/moby#42119)")
    after = resources(driver)
    for what, before in baseline.items():
        assert after[what] == before, what
    assert rss[-1] - rss[0] < RSS_GROWTH_LIMIT, rss
    assert log_problems(driver, log_start) == []

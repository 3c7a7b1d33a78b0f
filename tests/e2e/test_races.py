"""Containers killed and removed while policy imports and mode flips regenerate endpoints.

Regenerations interleave with Leave/DeleteEndpoint of dying containers and with the events
watcher giving identities to containers that may already be gone. No call fails, and
afterwards the driver's state matches the containers that live: endpoints, veths, addresses,
map entries, identities; the driver logged no error."""

import json
import os
import random
import threading
import time

from .driver_process import unix_http, veths
from .test_metrics import by_label, scrape

CONTAINERS = 6
# Each churn worker replaces this many containers, killing or removing the old one.
REPLACEMENTS = 8
WORKERS = 2

POLICY = """
- endpointSelector: {{matchLabels: {{app: race-web}}}}
  labels: ["name=race"]
  ingress:
  - fromEndpoints: [{{matchLabels: {{app: race-client}}}}]
    toPorts: [{{ports: [{{port: "{port}", protocol: TCP}}]}}]
"""


def api(driver, method: str, path: str, body: dict) -> tuple[int, dict]:
    payload = json.dumps(body).encode()
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: api\r\nConnection: close\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    head, _, reply = unix_http(driver.settings["api_socket"], request).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(reply)


def regenerate_until(driver, stop: threading.Event, failures: list, count: list) -> None:
    """Policy imports and enforcement mode flips, back to back: each regenerates endpoints."""
    steps = [
        ("PUT", "/v1/policy", {"text": POLICY.format(port=80), "source": "race"}),
        ("PUT", "/v1/policy/mode", {"mode": "always"}),
        ("PUT", "/v1/policy", {"text": POLICY.format(port=8080), "source": "race"}),
        ("PUT", "/v1/policy/mode", {"mode": "default"}),
    ]
    while not stop.is_set():
        for method, path, body in steps:
            status, reply = api(driver, method, path, body)
            count.append(path)
            if status != 200:
                failures.append((path, status, reply))


def replace_containers(docker, net, mine: list[str], rng: random.Random) -> None:
    """Kill or remove one of this worker's containers, start two, and kill or remove one of
    those at once (most likely before the watcher gave it an identity); over and over."""
    for n in range(REPLACEMENTS):
        end = ("kill",) if n % 2 else ("rm", "-f")
        docker.run(*end, mine.pop(rng.randrange(len(mine))))
        short_lived = docker.container(net, "--label", "app=race-web")
        mine.append(docker.container(net, "--label", "app=race-web"))
        docker.run(*end, short_lived)


def log_problems(driver, start: int) -> list[str]:
    """Errors, warnings and tracebacks the driver logged after byte offset start."""
    with open(driver.log_path, "rb") as log:
        log.seek(start)
        lines = log.read().decode(errors="replace").splitlines()
    return [line for line in lines if any(w in line for w in (" ERROR ", " WARNING ", "Traceback"))]


def live_endpoints(docker, net) -> dict[str, str]:
    """Endpoint id -> container name, as Docker sees the network."""
    containers = json.loads(docker.out("network", "inspect", net))[0]["Containers"]
    return {c["EndpointID"]: c["Name"] for c in containers.values()}


def test_kill_and_remove_during_regeneration_leave_consistent_state(docker, driver, net, cilium):
    log_start = os.path.getsize(driver.log_path)
    baseline_addresses = {a["address"] for a in driver.api("/v1/addresses")}
    client = docker.container(net, "--label", "app=race-client")
    workers_containers = [
        [docker.container(net, "--label", "app=race-web") for _ in range(CONTAINERS // WORKERS)]
        for _ in range(WORKERS)
    ]
    stop, failures, regenerations = threading.Event(), [], []
    regenerator = threading.Thread(
        target=regenerate_until, args=(driver, stop, failures, regenerations)
    )
    churners = [
        threading.Thread(target=replace_containers, args=(docker, net, mine, random.Random(n)))
        for n, mine in enumerate(workers_containers)
    ]
    started = time.monotonic()
    regenerator.start()
    for t in churners:
        t.start()
    for t in churners:
        t.join()
    stop.set()
    regenerator.join()
    print(f"{len(regenerations)} regenerations in {time.monotonic() - started:.1f} s")
    assert failures == []

    # Driver and Docker agree on this network's endpoints; everything the driver holds
    # (veths, map entries, addresses, identities) belongs to an endpoint it knows.
    live = live_endpoints(docker, net)
    endpoints = driver.api("/v1/endpoints")
    network_id = json.loads(docker.out("network", "inspect", net))[0]["Id"]
    mine = {
        e["endpoint_id"]: e["container_name"] for e in endpoints if e["network_id"] == network_id
    }
    assert mine == live
    own_veths = veths(driver.settings["veth_prefix"])
    assert sorted(own_veths) == sorted(e["host_ifname"] for e in endpoints)
    assert sorted(e["endpoint_id"] for e in driver.api("/v1/bpf/endpoints")) == sorted(
        e["numeric_id"] for e in endpoints
    )
    addresses = {a["address"] for a in driver.api("/v1/addresses")} - baseline_addresses
    assert addresses == {e["ipv6"] for e in endpoints} | {e["ipv4"] for e in endpoints}
    policy_entries = sum(
        len(driver.api(f"/v1/endpoints/{e['numeric_id']}")["policy"]["entries"]) for e in endpoints
    )
    maps = by_label(scrape(driver.settings["api_socket"]), "pycilium_bpf_map_entries", "map")
    assert maps["policy"] == policy_entries
    identities = {i["identity"] for i in driver.api("/v1/identities") if i["kind"] == "endpoint"}
    assert identities == {e["identity"] for e in endpoints}

    # The last policy is in force: web replicas take only TCP 8080 from the client (no ping);
    # the client, which no rule selects, takes anything.
    web = next(name for name in live.values() if name != client)
    web6, _ = docker.addresses(web, net)
    client6, _ = docker.addresses(client, net)
    assert docker.exec(client, "ping6", "-c1", "-W2", web6, check=False).returncode != 0
    assert docker.exec(web, "ping6", "-c1", "-W2", client6, check=False).returncode == 0

    assert log_problems(driver, log_start) == []

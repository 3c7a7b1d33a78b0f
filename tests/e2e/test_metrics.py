"""Prometheus metrics of the real driver, scraped over its management socket while
containers run, and `cilium status` on the same instance. (The loopback TCP server is
tested in tests/unit/test_metrics.py on a real port: no second driver instance here.)"""

from prometheus_client.parser import text_string_to_metric_families

from datapath import reasons

from .driver_process import unix_http


def scrape(sock: str) -> dict[tuple[str, tuple], float]:
    """GET /metrics over the unix socket: (sample name, sorted labels) -> value."""
    request = b"GET /metrics HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n"
    head, _, body = unix_http(sock, request).partition(b"\r\n\r\n")
    assert head.split(b" ", 2)[1] == b"200", head
    assert b"content-type: text/plain" in head.lower(), head
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def value(found, name, **labels):
    return found[(name, tuple(sorted(labels.items())))]


def by_label(found, name, label):
    return {dict(labels)[label]: v for (n, labels), v in found.items() if n == name}


def test_metrics_follow_containers_and_traffic(docker, driver, net):
    sock = driver.settings["api_socket"]
    before = scrape(sock)
    a = docker.container(net)
    b = docker.container(net)
    b6, b4 = docker.addresses(b, net)
    for address, tool in ((b6, "ping6"), (b4, "ping")):
        docker.exec(a, tool, "-c2", "-W2", address)
    found = scrape(sock)

    assert value(found, "pycilium_endpoints", state="ready") >= 2
    assert value(found, "pycilium_endpoints", state="waiting-for-identity") == 0
    assert value(found, "pycilium_networks") >= 1
    assert value(found, "pycilium_identities", kind="endpoint") >= 1
    assert value(found, "pycilium_docker_events_connected") == 1
    # One build of the programs per process: compiled, or an earlier process's reused.
    compiled = value(found, "pycilium_bpf_compile_duration_seconds_count")
    assert compiled + value(found, "pycilium_bpf_reused_builds_total") == 1
    assert (value(found, "pycilium_bpf_compile_duration_seconds_sum") > 0) == (compiled == 1)

    # Map fill from the pinned maps: two endpoints, an IPv6 and an IPv4 address each.
    entries = by_label(found, "pycilium_bpf_map_entries", "map")
    capacity = by_label(found, "pycilium_bpf_map_capacity", "map")
    assert set(entries) == set(capacity)
    assert {"endpoints", "endpoint_addrs", "policy", "conntrack", "lb_services"} <= set(entries)
    assert "drop_counts" not in entries and "events" not in entries
    assert entries["endpoints"] >= 2 and entries["endpoint_addrs"] >= 4
    assert entries["policy"] > 0 and entries["conntrack"] > 0
    assert capacity["conntrack"] == 262144 and capacity["endpoints"] == 16384
    assert all(entries[name] <= capacity[name] for name in entries)

    # Counters from the datapath: every drop reason, and the pings delivered locally.
    drops = by_label(found, "pycilium_drop_packets_total", "reason")
    assert set(drops) == {r.name for r in reasons.drop_reasons()}
    forwards = by_label(found, "pycilium_forward_packets_total", "point")
    old_forwards = by_label(before, "pycilium_forward_packets_total", "point")
    assert forwards["TRACE_TO_LXC"] - old_forwards["TRACE_TO_LXC"] >= 8
    assert value(found, "pycilium_conntrack_packets", direction="egress") > 0
    assert value(found, "pycilium_conntrack_bytes", direction="ingress") > 0

    # Docker's plugin calls to make the two containers, timed by call.
    count = "pycilium_plugin_call_duration_seconds_count"
    calls = by_label(found, count, "call")
    old_calls = by_label(before, count, "call")
    for call in ("NetworkDriver.CreateEndpoint", "NetworkDriver.Join", "IpamDriver.RequestAddress"):
        assert calls[call] - old_calls.get(call, 0) >= 2, call
    assert value(found, "pycilium_plugin_call_duration_seconds_sum", call="NetworkDriver.Join") > 0


def test_status_summarises_map_fill_and_metrics(driver, cilium):
    result = cilium("status")
    assert result.returncode == 0
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines())
    assert lines["BPF maps"].strip().split()[1:3] == ["ok,", "fullest"]
    assert lines["Metrics"].strip() == "/metrics on the API socket"
    assert driver.api("/v1/status")["metrics"] == {"address": None}

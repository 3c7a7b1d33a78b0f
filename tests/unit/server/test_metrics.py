"""Prometheus metrics: /metrics through the Flask test client with the in-memory datapath,
the loopback TCP server on a real port, and what `cilium status` makes of map fill."""

import json
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from driver.cli import main as cli
from driver.config import Config, loopback_address
from driver.server import main as service_module
from driver.server.app import create_app

from ...ports import free_port
from ..control.test_flows import event
from ..docker_calls import EP, NET

DASHBOARD = Path(__file__).resolve().parents[3] / "contrib" / "grafana" / "pycilium-dashboard.json"

WEB_POLICY = """
- endpointSelector: {matchLabels: {app: web}}
  labels: ["name=web-policy"]
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
"""


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted label pairs) -> value of every sample in an exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    assert int(response.headers["Content-Length"]) == len(response.get_data())
    return samples(response.get_data(as_text=True))


def value(found, name, **labels):
    return found[(name, tuple(sorted(labels.items())))]


def test_metric_names_and_labels(client):
    found = scrape(client)
    names = {name for name, _ in found}
    for name in (
        "pycilium_endpoints",
        "pycilium_networks",
        "pycilium_identities",
        "pycilium_policy_rules",
        "pycilium_policy_revision",
        "pycilium_policy_enforcement_mode",
        "pycilium_docker_events_connected",
        "pycilium_bpf_map_entries",
        "pycilium_bpf_map_capacity",
        "pycilium_conntrack_packets",
        "pycilium_conntrack_bytes",
        "pycilium_bpf_compile_duration_seconds_count",
        "pycilium_bpf_compile_duration_seconds_sum",
        "pycilium_process_resident_memory_bytes",
    ):
        assert name in names, name
    assert value(found, "pycilium_endpoints", state="ready") == 0
    assert value(found, "pycilium_endpoints", state="waiting-for-identity") == 0
    assert value(found, "pycilium_identities", kind="reserved") == 4
    assert value(found, "pycilium_policy_enforcement_mode", mode="default") == 1
    assert value(found, "pycilium_policy_enforcement_mode", mode="always") == 0
    assert value(found, "pycilium_bpf_map_capacity", map="conntrack") == 262144
    assert value(found, "pycilium_bpf_compile_duration_seconds_count") == 1
    assert value(found, "pycilium_bpf_compile_duration_seconds_sum") == 0.5
    assert value(found, "pycilium_conntrack_bytes", direction="egress") == 0
    assert all(name.startswith("pycilium_") for name in names)


def test_openmetrics_when_the_scraper_asks_for_it(client):
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.content_type.startswith("application/openmetrics-text")
    assert response.get_data(as_text=True).endswith("# EOF\n")


def test_plugin_calls_count_in_the_latency_histogram(client, post):
    count = "pycilium_plugin_call_duration_seconds_count"
    assert (count, (("call", "Plugin.Activate"),)) not in scrape(client)
    post("Plugin.Activate")
    post("Plugin.Activate")
    post("NetworkDriver.CreateNetwork", {})  # no NetworkID: a 400
    found = scrape(client)
    assert value(found, count, call="Plugin.Activate") == 2
    assert value(found, count, call="NetworkDriver.CreateNetwork") == 1
    assert value(found, "pycilium_plugin_call_failures_total", call="NetworkDriver.CreateNetwork")
    assert (
        "pycilium_plugin_call_failures_total",
        (("call", "Plugin.Activate"),),
    ) not in found
    bucket = value(
        found, "pycilium_plugin_call_duration_seconds_bucket", call="Plugin.Activate", le="+Inf"
    )
    assert bucket == 2
    # The management API and /metrics itself are not plugin calls.
    client.get("/v1/status")
    calls = {dict(labels).get("call") for name, labels in scrape(client) if name == count}
    assert calls == {"Plugin.Activate", "NetworkDriver.CreateNetwork"}


def test_endpoints_identities_and_policy(client, api, web_endpoint):
    found = scrape(client)
    assert value(found, "pycilium_endpoints", state="waiting-for-identity") == 1
    assert value(found, "pycilium_networks") == 1
    web_endpoint.assign_container(EP, NET, "app", "c" * 64, "web", {"app": "web"})
    api("PUT", "policy", {"text": WEB_POLICY, "source": "web.yaml"})
    found = scrape(client)
    assert value(found, "pycilium_endpoints", state="ready") == 1
    assert value(found, "pycilium_endpoints", state="waiting-for-identity") == 0
    assert value(found, "pycilium_identities", kind="endpoint") == 1
    assert value(found, "pycilium_policy_rules") == 1
    assert value(found, "pycilium_policy_revision") == 1


def test_datapath_counters_and_map_fill(client, datapath):
    datapath.drops = {"DROP_POLICY": 7, "DROP_INVALID_SMAC": 0}
    datapath.traces = {"TRACE_TO_LXC": 40, "TRACE_TO_STACK": 2}
    datapath.fill = {"endpoints": (3, 16384), "policy": (12, 262144)}
    datapath.ct = {0: (2, 10, 1500), 1: (3, 30, 4000)}
    found = scrape(client)
    assert value(found, "pycilium_drop_packets_total", reason="DROP_POLICY") == 7
    assert value(found, "pycilium_drop_packets_total", reason="DROP_INVALID_SMAC") == 0
    assert value(found, "pycilium_forward_packets_total", point="TRACE_TO_LXC") == 40
    assert value(found, "pycilium_bpf_map_entries", map="policy") == 12
    assert value(found, "pycilium_bpf_map_capacity", map="endpoints") == 16384
    assert value(found, "pycilium_conntrack_packets", direction="ingress") == 10
    assert value(found, "pycilium_conntrack_bytes", direction="egress") == 4000


def test_every_app_has_its_own_registry(config, datapath, tmp_path, client, post):
    post("Plugin.Activate")
    other = create_app(
        Config(state_dir=str(tmp_path / "other"), node_id=7).validate(),
        datapath=type(datapath)(),
        watch_docker=False,
    )
    try:
        found = scrape(other.test_client())
        assert not any(name.startswith("pycilium_plugin_call") for name, _ in found)
        count = "pycilium_plugin_call_duration_seconds_count"
        assert value(scrape(client), count, call="Plugin.Activate") == 1
    finally:
        other.extensions["pycilium"].close()


@pytest.mark.parametrize(
    "address",
    ["0.0.0.0:9962", "[::]:9962", "192.0.2.1:9962", "localhost:9962", "127.0.0.1", "[::1]:x"],
)
def test_non_loopback_metrics_addresses_are_refused(address, tmp_path):
    with pytest.raises(ValueError, match="metrics"):
        Config(state_dir=str(tmp_path), metrics_address=address).validate()


def test_loopback_metrics_addresses():
    assert loopback_address("127.0.0.1:9962") == ("127.0.0.1", 9962)
    assert loopback_address("[::1]:9962") == ("::1", 9962)
    with pytest.raises(ValueError, match="between 1 and 65535"):
        loopback_address("127.0.0.1:0")


def test_service_refuses_a_non_loopback_address_at_start():
    result = CliRunner().invoke(service_module.main, ["--metrics-address", "0.0.0.0:9962"])
    assert result.exit_code == 2
    assert "not a loopback address" in result.output


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_metrics_on_a_loopback_port(host, tmp_path, datapath):
    port = free_port(host)
    shown = f"[{host}]" if ":" in host else host
    config = Config(
        state_dir=str(tmp_path / "state"), node_id=9, metrics_address=f"{shown}:{port}"
    ).validate()
    app = create_app(config, datapath=datapath, watch_docker=False)
    try:
        app.test_client().post("/Plugin.Activate", data=b"")
        status, content_type, text = _get(f"http://{shown}:{port}/metrics")
        assert status == 200 and content_type.startswith("text/plain")
        found = samples(text)
        assert value(found, "pycilium_endpoints", state="ready") == 0
        count = "pycilium_plugin_call_duration_seconds_count"
        assert value(found, count, call="Plugin.Activate") == 1
        # Only /metrics: never the management API or the plugin protocol.
        assert _get(f"http://{shown}:{port}/v1/status")[0] == 404
        assert _get(f"http://{shown}:{port}/Plugin.Activate")[0] == 404
        status_reply = app.test_client().get("/v1/status").get_json()
        assert status_reply["metrics"] == {"address": f"{shown}:{port}"}
    finally:
        app.extensions["pycilium"].close()
    with pytest.raises(urllib.error.URLError):
        _get(f"http://{shown}:{port}/metrics")


def test_a_taken_metrics_port_fails_the_start_before_the_datapath(tmp_path, datapath):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = Config(
            state_dir=str(tmp_path / "state"), metrics_address=f"127.0.0.1:{port}"
        ).validate()
        with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            create_app(config, datapath=datapath, watch_docker=False)
    assert datapath.compile_count == 0


class _TestClientApi:
    """cli's ApiClient, answered by the Flask test client."""

    def __init__(self, client):
        self.client = client

    def request(self, method, path, body=None):
        data = json.dumps(body) if body is not None else None
        return self.client.open(path, method=method, data=data).get_json(force=True)


def _status(client, monkeypatch):
    monkeypatch.setattr(cli, "ApiClient", lambda _path: _TestClientApi(client))
    return CliRunner().invoke(cli.main, ["status"])


def test_status_shows_map_fill_and_where_metrics_are(client, datapath, app, monkeypatch):
    app.extensions["pycilium"].watcher = _ConnectedWatcher()
    datapath.fill = {"endpoints": (3, 16384), "conntrack": (26214, 262144)}
    result = _status(client, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "BPF maps:      2 ok, fullest conntrack 26214/262144 (10%)" in result.output
    assert "Metrics:       /metrics on the API socket" in result.output


def test_status_exits_3_when_a_map_is_nearly_full(client, datapath, app, monkeypatch):
    app.extensions["pycilium"].watcher = _ConnectedWatcher()
    datapath.fill = {"endpoints": (3, 16384), "policy": (240000, 262144)}
    result = _status(client, monkeypatch)
    assert result.exit_code == 3, result.output
    assert "WARNING nearly full: policy 240000/262144 (92%)" in result.output


def test_status_exit_2_wins_over_a_full_map(client, datapath, monkeypatch):
    datapath.fill = {"policy": (262144, 262144)}
    result = _status(client, monkeypatch)
    assert result.exit_code == 2, result.output


class _ConnectedWatcher:
    class connected:
        @staticmethod
        def is_set():
            return True

    def stop(self):
        pass


def test_flows_by_verdict_and_identities(client, app):
    flow_log = app.extensions["pycilium"].flow_log
    flow_log.add_record(event())
    flow_log.add_record(event())
    flow_log.add_record(event(kind="drop", src_identity=400))
    found = scrape(client)
    ends = {"source_identity": "2", "destination_identity": "300"}
    assert value(found, "pycilium_flows_total", verdict="FORWARDED", **ends) == 2
    dropped = {"source_identity": "400", "destination_identity": "300"}
    assert value(found, "pycilium_flows_total", verdict="DROPPED", **dropped) == 1


def test_the_grafana_dashboard_reads_metrics_the_driver_exports(client, app, post, datapath):
    datapath.drops = {"DROP_POLICY": 7}
    datapath.traces = {"TRACE_TO_LXC": 40}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\bpycilium_\w+", expr)}
    app.extensions["pycilium"].flow_log.add_record(event())
    post("Plugin.Activate")
    exported = {name for name, _ in scrape(client)}
    assert used and used <= exported, used - exported
    assert "pycilium_flows_total" in used

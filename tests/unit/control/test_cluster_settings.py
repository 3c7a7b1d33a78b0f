"""Cluster mode is off unless asked for, and then its settings are checked before anything
starts; the single-host driver never loads the etcd client."""

import subprocess
import sys
from pathlib import Path

import pytest

from driver.config import Config

REPO = Path(__file__).resolve().parents[3]
CLUSTER = {"kvstore": "etcd", "kvstore_endpoints": "http://192.0.2.1:2379"}


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"kvstore": "consul"}, "must be etcd"),
        ({"kvstore": "etcd"}, "needs --kvstore-endpoints"),
        ({**CLUSTER, "kvstore_endpoints": "192.0.2.1:2379"}, "http:// or https://"),
        ({**CLUSTER, "kvstore_lease_ttl": 1}, "lease TTL"),
        ({**CLUSTER, "node_mask4": 16}, "node mask 16"),
        ({**CLUSTER, "node_address": "not-an-address"}, "does not appear to be"),
        ({**CLUSTER, "service_mode": "nat"}, "must be dsr or snat"),
    ],
)
def test_bad_cluster_settings_are_refused(settings, error):
    with pytest.raises(ValueError, match=error):
        Config(**settings).validate()


def test_endpoints_are_a_comma_separated_list():
    config = Config(**{**CLUSTER, "kvstore_endpoints": " http://a:2379, http://b:2379 "})
    assert config.validate().endpoint_urls == ["http://a:2379", "http://b:2379"]


def test_one_host_never_loads_the_etcd_client(tmp_path):
    code = (
        "import sys\n"
        "from driver.config import Config\n"
        "from driver.server.app import create_app\n"
        "from tests.unit.fakes import FakeDatapath\n"
        "config = Config(state_dir=sys.argv[1], node_id=7).validate()\n"
        "app = create_app(config, datapath=FakeDatapath(), watch_docker=False)\n"
        "app.extensions['pycilium'].close()\n"
        "print(sorted(m for m in sys.modules if m.startswith('etcd3gw')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"


def test_on_one_host_the_node_list_is_this_node(api):
    _, nodes = api("GET", "nodes")
    assert [(n["node_id"], n["address"]) for n in nodes] == [(0x0A0B0C0D, None)]
    assert nodes[0]["ipv6_range"] == "fdce:1c00::a0b:c0d:0:0/112"
    _, status = api("GET", "status")
    assert status["cluster"] is None

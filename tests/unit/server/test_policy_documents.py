"""`cilium policy` against the real API and control plane (Flask's test client, the in-memory
datapath): a backup restores, a dry run and validate change nothing, --replace replaces."""

import copy
import json

import pytest
import yaml
from click.testing import CliRunner

from driver.cli import main as cli
from driver.cli.client import ApiError

from ..docker_calls import EP, NET

IFNAME = "lxc" + EP[:12]

POLICIES = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web}
specs:
- endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "8000", endPort: 8010}]}]
  - fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}]
- endpointSelector: {matchExpressions: [{key: app, operator: In, values: [web, db]}]}
  labels: [{key: name, value: egress}, {key: team, value: blue}]
  egress: [{toCIDR: [192.0.2.0/24]}, {toEntities: [world]}]
---
- endpointSelector: {}
  description: an unnamed rule
  ingress: [{fromEntities: [host]}]
"""


class FlaskApi:
    """The CLI's ApiClient, answered by the Flask test client."""

    def __init__(self, client):
        self.client = client

    def request(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        response = self.client.open(path, method=method, data=data)
        answer = response.get_json(force=True)
        if response.status_code >= 400:
            raise ApiError(answer["Err"])
        return answer


@pytest.fixture
def cilium(client, monkeypatch):
    monkeypatch.setattr(cli, "ApiClient", lambda _path: FlaskApi(client))

    def run(*args, stdin=None):
        return CliRunner().invoke(cli.main, list(args), input=stdin)

    return run


@pytest.fixture
def web(web_endpoint):
    web_endpoint.assign_container(EP, NET, "app", "c" * 64, "web", {"app": "web"})
    return web_endpoint


def entries(datapath) -> dict:
    """The endpoint's policy map entries with CIDR identities as their prefixes (a restore
    allocates them again, under new numbers)."""
    prefixes = {number: prefix for prefix, number in datapath.cidr_identities.items()}
    ingress, egress, keys = datapath.policies[IFNAME]
    named = {key._replace(identity=prefixes.get(key.identity, key.identity)) for key in keys}
    return {"ingress": ingress, "egress": egress, "keys": named}


def state(api, datapath) -> tuple:
    """Everything a policy import can change: the API's policy, the endpoint's policy map
    entries, the CIDR identities and the identities."""
    return (
        api("GET", "policy")[1],
        copy.deepcopy(datapath.policies),
        dict(datapath.cidr_identities),
        api("GET", "identities")[1],
    )


@pytest.mark.parametrize("output", ["json", "yaml"])
def test_a_backup_restores_the_same_rules_and_entries(cilium, api, web, datapath, tmp_path, output):
    policies = tmp_path / "policies.yaml"
    policies.write_text(POLICIES)
    assert cilium("policy", "import", str(policies)).exit_code == 0
    before = api("GET", "policy")[1]
    entries_before = entries(datapath)
    assert len(before["rules"]) == 3

    backup = tmp_path / f"backup.{output}"
    got = cilium("policy", "get", "-o", output)
    assert got.exit_code == 0 and got.stderr == f"Revision: {before['revision']}\n"
    backup.write_text(got.stdout)
    assert cilium("policy", "delete", "--all").exit_code == 0
    assert api("GET", "policy")[1]["rules"] == []
    restored = cilium("policy", "import", str(backup))
    assert restored.exit_code == 0, restored.output

    after = api("GET", "policy")[1]
    assert after["rules"] == before["rules"]
    assert after["revision"] == before["revision"] + 2
    assert entries(datapath) == entries_before


def test_validate_and_dry_run_change_nothing_and_say_what_import_would(
    cilium, api, web, datapath, tmp_path
):
    policies = tmp_path / "policies.yaml"
    policies.write_text(POLICIES)
    assert cilium("policy", "import", str(policies)).exit_code == 0
    change = tmp_path / "change.json"
    rule = {
        "endpointSelector": {"matchLabels": {"app": "web"}},
        "labels": ["name=web"],
        "ingress": [{"fromCIDR": ["198.51.100.0/24"]}],
    }
    change.write_text(json.dumps([rule]))
    before = state(api, datapath)

    validated = cilium("policy", "validate", "--replace", str(change), "-o", "json")
    dry_run = cilium("policy", "import", "--replace", "--dry-run", str(change))
    assert validated.exit_code == 0 and dry_run.exit_code == 0, validated.output + dry_run.output
    assert state(api, datapath) == before

    plan = json.loads(validated.stdout)
    assert plan["rules_added"] == ["web"] and plan["rules_removed"] == ["web"]
    (endpoint,) = plan["endpoints"]
    assert dry_run.stdout.startswith("Would add 1 rule(s): web\nWould remove 1 rule(s): web\n")
    assert f"+{endpoint['entries_added']} -{endpoint['entries_removed']}" in dry_run.stdout

    # The plan's counts are what the import then writes.
    keys = before[1][IFNAME][2]
    assert cilium("policy", "import", "--replace", str(change)).exit_code == 0
    written = datapath.policies[IFNAME][2]
    assert len(written - keys) == endpoint["entries_added"] > 0
    assert len(keys - written) == endpoint["entries_removed"] > 0
    assert [r.get("labels", []) for r in api("GET", "policy")[1]["rules"]] == [
        [{"key": "name", "value": "egress"}, {"key": "team", "value": "blue"}],
        [],
        [{"key": "name", "value": "web"}],
    ]


def test_a_refused_file_among_several_imports_none(cilium, api, web, tmp_path):
    (tmp_path / "a.yaml").write_text(POLICIES)
    (tmp_path / "b.yaml").write_text("endpointSelector: {}\negress: [{toServices: []}]\n")
    before = api("GET", "policy")[1]
    result = cilium("policy", "import", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {tmp_path / 'b.yaml'}: rule 0: egress[0]: toServices is not supported"
        " (Kubernetes services)\n"
    )
    assert api("GET", "policy")[1] == before


def test_without_replace_rules_with_other_labels_stay(cilium, api, web):
    assert cilium("policy", "import", "-", stdin=POLICIES).exit_code == 0
    text = yaml.safe_dump([{"endpointSelector": {}, "labels": ["name=web", "v=2"], "egress": [{}]}])
    assert cilium("policy", "import", "-", stdin=text).exit_code == 0
    rules = api("GET", "policy")[1]["rules"]
    names = [r["labels"][0]["value"] for r in rules if r.get("labels")]
    assert names == ["web", "egress", "web"]


@pytest.mark.parametrize(
    "body", [{"files": "x"}, {"files": [{"source": "a"}]}, {"files": [1]}, {"text": 1}]
)
def test_import_needs_text(api, body):
    status, reply = api("PUT", "policy", body)
    assert status == 400 and "'text'" in reply["Err"]

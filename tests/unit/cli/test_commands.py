"""The `cilium` command against a fake API client: the human tables, the JSON, the requests
it sends and its exit codes."""

import copy
import importlib.metadata
import json

import click
import pytest
import yaml
from click.testing import CliRunner

from driver.cli import main as cli
from driver.cli.client import ApiError

from .api_answers import ANSWERS, EVENTS, NODES, STATUS


class FakeApi:
    """Answers from api_answers (or the test's own), and the requests it was sent."""

    def __init__(self, answers: dict, events: list):
        self.answers = answers
        self.events = events
        self.calls = []

    def request(self, method, path, body=None):
        self.calls.append((method, path, body))
        answer = self.answers[(method, path)]
        if isinstance(answer, Exception):
            raise answer
        return copy.deepcopy(answer)

    def stream(self, path):
        self.calls.append(("STREAM", path, None))
        for event in self.events:
            if isinstance(event, BaseException):
                raise event
            yield event


@pytest.fixture
def api(monkeypatch):
    fake = FakeApi(dict(ANSWERS), list(EVENTS))
    monkeypatch.setattr(cli, "ApiClient", lambda _path: fake)
    return fake


def cilium(*args, stdin=None):
    return CliRunner().invoke(cli.main, list(args), input=stdin)


READS = {
    ("status",): ("GET", "/v1/status"),
    ("node", "list"): ("GET", "/v1/nodes"),
    ("endpoint", "list"): ("GET", "/v1/endpoints"),
    ("endpoint", "get", "web-1"): ("GET", "/v1/endpoints/web-1"),
    ("identity", "list"): ("GET", "/v1/identities"),
    ("identity", "get", "256"): ("GET", "/v1/identities/256"),
    ("bpf", "endpoint"): ("GET", "/v1/bpf/endpoints"),
    ("bpf", "endpoint", "list"): ("GET", "/v1/bpf/endpoints"),
    ("bpf", "lb", "list"): ("GET", "/v1/bpf/lb"),
    ("bpf", "policy", "list", "web-1"): ("GET", "/v1/bpf/policy/web-1"),
    ("bpf", "policy", "get", "web-1"): ("GET", "/v1/bpf/policy/web-1"),
    ("bpf", "ct", "list"): ("GET", "/v1/bpf/ct"),
    ("service", "list"): ("GET", "/v1/services"),
    ("service", "get", "1"): ("GET", "/v1/services/1"),
    ("network", "list"): ("GET", "/v1/networks"),
    ("prefilter", "list"): ("GET", "/v1/prefilter"),
}

TABLES = {
    ("status",): """\
Driver:        ok
Docker events: connected
Kernel:        6.1.0-18-amd64 (bpf_jit, no btf)
Node:          0a0b0c0d
IPv6 range:    fdce:1c00:a0b:c0d::/96 (router fdce:1c00:a0b:c0d::1)
IPv4 range:    10.213.0.0/24 (router 10.213.0.1)
Networks:      1
Endpoints:     2 (1 waiting for identity)
Identities:    4
Policy:        revision 3, 2 rules, default
BPF builds:    5 compiled, 1 reused
Drops:         POLICY_DENIED 4, CT_FULL 1
BPF maps:      2 ok, fullest conntrack 26214/262144 (10%)
Metrics:       /metrics on the API socket and http://127.0.0.1:9962/metrics
Flows:         12 seen, the last 4096 kept; service map http://127.0.0.1:12000/ui/
Prefilter:     2 prefixes on eth0 (native), eth9 (NOT attached)
Cluster:       off (one host)
""",
    ("prefilter", "list"): """\
PREFIX           DROPPED
198.51.100.0/24  1234
2001:db8::/32    0

DEVICE  XDP MODE
eth0    native
eth9    not attached: no device eth9 on this host
""",
    ("node", "list"): """\
NAME   ID  ADDRESS     IPv6 RANGE           IPv4 RANGE
node1  1   192.0.2.11  fdce:1c00:0:1::/112  10.213.1.0/24
node2  2   192.0.2.12  fdce:1c00:0:2::/112  10.213.2.0/24
""",
    ("endpoint", "list"): """\
ENDPOINT  CONTAINER  IDENTITY  LABELS               IPv6                  IPv4        POLICY IN/OUT  STATE
7         web-1      256       app=web, tier=front  fdce:1c00:a0b:c0d::7  10.213.0.7  on/off         ready
8         client-1   5                              fdce:1c00:a0b:c0d::7              off/on         waiting-for-identity
""",  # noqa: E501
    ("endpoint", "get", "web-1"): """\
Endpoint:       7
Container:      web-1 (c0ffeec0ffee)
Network:        4e74e74e74e7
Identity:       256
Labels:         app=web, tier=front
IPv6:           fdce:1c00:a0b:c0d::7
IPv4:           10.213.0.7
Interface:      lxc7
Ports:          *:8080->80/tcp, [::1]:5353->53/udp
State:          ready
Ingress policy: enforced
Egress policy:  not enforced
DIRECTION  IDENTITY  PORT  PROTOCOL  PACKETS  BYTES
ingress    257       80    TCP       3        180
egress     any       any   ANY       0        0
""",
    ("identity", "list"): """\
IDENTITY  KIND                   LABELS
2         reserved               reserved:world
256       endpoint               app=web
70123     remote (node1, node3)  app=db
""",
    ("identity", "get", "256"): """\
Identity:   256 (endpoint)
Labels:     app=web
Endpoints:  7, 9
""",
    ("identity", "get", "2"): """\
Identity:   2 (reserved)
Labels:     reserved:world
Endpoints:  none
""",
    ("bpf", "endpoint"): """\
IFINDEX  ENDPOINT  IDENTITY  MAC                IPv6                  IPv4
12       7         256       02:00:00:00:00:07  fdce:1c00:a0b:c0d::7
""",
    ("bpf", "lb", "list"): """\
FRONTEND             ID  BACKEND                  WEIGHT
[fd00:5::10]:80/tcp  1   fdce:1c00:a0b:c0d::7:80  1
                         fdce:1c00:a0b:c0d::8:80  2
10.96.0.10:53/udp    2   (none):
""",
    ("bpf", "policy", "list", "web-1"): """\
DIRECTION  IDENTITY  PORT  PROTOCOL  PACKETS  BYTES
ingress    257       80    TCP       3        180
egress     any       any   ANY       0        0
""",
    ("bpf", "ct", "list"): """\
PROTO  SOURCE                        DESTINATION                DIRECTION  ENDPOINT  EXPIRES  FLAGS
TCP    [fdce:1c00:a0b:c0d::8]:40000  [fdce:1c00:a0b:c0d::7]:80  ingress    7         21590    SYN ACK
132    [10.213.0.8]:None             [10.213.0.7]:None          9
""",  # noqa: E501
    ("service", "list"): """\
ID  NAME  FRONTEND         SELECTOR  BACKEND
1   web   [fd00:5::10]:80  app=web   [fdce:1c00:a0b:c0d::7]:80
                                     [fdce:1c00:a0b:c0d::8]:80
2         10.96.0.10:53              (none)
""",
    ("service", "get", "1"): """\
ID  NAME  FRONTEND         SELECTOR  BACKEND
1   web   [fd00:5::10]:80  app=web   [fdce:1c00:a0b:c0d::7]:80
                                     [fdce:1c00:a0b:c0d::8]:80
""",
    ("network", "list"): """\
NETWORK       NAME  IPv6 POOL               IPv6 GATEWAY          IPv4 POOL      IPv4 GATEWAY  MTU
4e74e74e74e7  demo  fdce:1c00:a0b:c0d::/96  fdce:1c00:a0b:c0d::1  10.213.0.0/24  10.213.0.1    1500
""",
}


# Cilium's names beside pycilium's first ones: the same request, the same table.
TABLES[("bpf", "endpoint", "list")] = TABLES[("bpf", "endpoint")]
TABLES[("bpf", "policy", "get", "web-1")] = TABLES[("bpf", "policy", "list", "web-1")]


@pytest.mark.parametrize("args", TABLES, ids=" ".join)
def test_human_tables(api, args):
    result = cilium(*args)
    assert result.exit_code == 0, result.output
    assert result.stdout == TABLES[args]


@pytest.mark.parametrize("args", READS, ids=" ".join)
def test_json_is_the_api_answer(api, args):
    result = cilium(*args, "-o", "json")
    assert result.exit_code == 0, result.output
    assert result.stdout == json.dumps(ANSWERS[READS[args]], indent=2) + "\n"
    assert api.calls == [(*READS[args], None)]


@pytest.mark.parametrize("args", READS, ids=" ".join)
def test_yaml_is_the_api_answer(api, args):
    result = cilium(*args, "--output", "yaml")
    assert result.exit_code == 0, result.output
    assert result.stdout == yaml.safe_dump(ANSWERS[READS[args]], sort_keys=False)
    assert yaml.safe_load(result.stdout) == ANSWERS[READS[args]]


def test_policy_get_prints_the_rules_as_a_document_import_reads(api):
    """Only the rules on stdout (the revision on stderr), so `policy get > backup.json`
    is a file `policy import` takes."""
    rules = ANSWERS[("GET", "/v1/policy")]["rules"]
    result = cilium("policy", "get")
    assert result.stdout == json.dumps(rules, indent=2) + "\n"
    assert result.stderr == "Revision: 3\n"
    assert yaml.safe_load(cilium("policy", "get", "-o", "yaml").stdout) == rules
    assert cilium("policy", "get", "-o", "table").exit_code == 2


def _commands(command, path=()):
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield path, command


def test_every_command_that_shows_an_answer_has_the_same_output_option():
    """Every command but the few that only report a revision or a deletion."""
    printers = {}
    for path, command in _commands(cli.main):
        options = [p for p in command.params if p.name == "output"]
        if options:
            option = options[0]
            printers[path] = (tuple(option.opts), tuple(option.type.choices), option.default)
    everything = (("-o", "--output"), ("table", "json", "yaml"), "table")
    assert printers.pop(("policy", "get")) == (("-o", "--output"), ("json", "yaml"), "json")
    assert set(printers.values()) == {everything}
    assert sorted(" ".join(path) for path in printers) == [
        "bpf ct list",
        "bpf endpoint list",
        "bpf lb list",
        "bpf policy get",
        "bpf policy list",
        "endpoint get",
        "endpoint list",
        "identity get",
        "identity list",
        "monitor",
        "network list",
        "node list",
        "observe",
        "policy trace",
        "policy validate",
        "prefilter delete",
        "prefilter list",
        "prefilter update",
        "service get",
        "service list",
        "service update",
        "status",
        "version",
    ]


def test_prefilter_update_sends_the_lists_split_at_commas(api):
    result = cilium(
        "prefilter", "update", "--cidr", "198.51.100.0/24,2001:db8::/32", "--device", "eth0"
    )
    assert result.exit_code == 0, result.output
    assert api.calls == [
        (
            "PUT",
            "/v1/prefilter",
            {"cidrs": ["198.51.100.0/24", "2001:db8::/32"], "devices": ["eth0"]},
        )
    ]
    assert result.stdout.startswith("PREFIX           DROPPED\n198.51.100.0/24  1234\n")


def test_prefilter_delete_sends_every_cidr_and_device_in_the_query(api):
    result = cilium(
        "prefilter",
        "delete",
        "--cidr",
        "203.0.113.0/24",
        "--cidr",
        "2001:db8::/32",
        "--device",
        "eth1",
        "-o",
        "json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["prefixes"] == [{"cidr": "198.51.100.0/24", "drops": 1234}]


@pytest.mark.parametrize("command", ["update", "delete"])
def test_prefilter_changes_want_a_cidr_or_a_device(api, command):
    result = cilium("prefilter", command)
    assert result.exit_code == 2 and "--cidr or --device" in result.output
    assert api.calls == []


def test_status_without_prefilter_devices(api):
    api.answers[("GET", "/v1/status")] = {**STATUS, "prefilter": {"devices": [], "prefixes": 0}}
    assert "Prefilter:     no device\n" in cilium("status").stdout


def _maps(**maps) -> dict:
    """STATUS's datapath with these map fills."""
    return {
        **STATUS["datapath"],
        "maps": {
            name: dict(zip(("entries", "capacity"), fill, strict=True))
            for name, fill in maps.items()
        },
    }


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"docker_events": False}, 2),
        ({"datapath": _maps(policy=(240000, 262144))}, 3),
        ({"docker_events": False, "datapath": _maps(policy=(9, 9))}, 2),
    ],
)
def test_status_exit_codes(api, change, code):
    api.answers[("GET", "/v1/status")] = {**STATUS, **change}
    result = cilium("status")
    assert result.exit_code == code, result.output
    assert result.stdout.startswith("Driver:        ok\n")


def test_status_names_every_nearly_full_map(api):
    maps = {
        "policy": {"entries": 240000, "capacity": 262144},
        "conntrack": {"entries": 262144, "capacity": 262144},
        "endpoints": {"entries": 1, "capacity": 16384},
    }
    api.answers[("GET", "/v1/status")] = {
        **STATUS,
        "datapath": {**STATUS["datapath"], "maps": maps},
    }
    result = cilium("status")
    assert (
        "BPF maps:      WARNING nearly full: conntrack 262144/262144 (100%), "
        "policy 240000/262144 (92%)\n"
    ) in result.stdout
    assert "Drops:         POLICY_DENIED 4, CT_FULL 1\n" in result.stdout


def test_status_shows_the_cluster_and_its_nodes(api):
    cluster = {
        "name": "node1",
        "kvstore": "http://192.0.2.1:2379",
        "connected": False,
        "left": None,
        "nodes": NODES,
    }
    api.answers[("GET", "/v1/status")] = {**STATUS, "cluster": cluster}
    result = cilium("status")
    assert (
        "Cluster:       node node1, etcd http://192.0.2.1:2379 NOT connected; nodes: node1, node2\n"
    ) in result.stdout


def test_status_says_why_a_node_left_the_cluster(api):
    cluster = {"name": "node1", "kvstore": "http://192.0.2.1:2379", "connected": False}
    left = "node id 2 is no longer node node1's"
    api.answers[("GET", "/v1/status")] = {**STATUS, "cluster": {**cluster, "left": left}}
    result = cilium("status")
    assert f"Cluster:       node node1 LEFT the cluster: {left}\n" in result.stdout


def test_an_unreachable_driver_is_one_line_and_exit_1(api):
    api.answers[("GET", "/v1/endpoints")] = ApiError("cannot reach the driver at /x: gone")
    result = cilium("endpoint", "list")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "Error: cannot reach the driver at /x: gone\n"


def test_policy_import_sends_the_text_and_prints_warnings(api, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("- endpointSelector: {}\n")
    result = cilium("policy", "import", str(rules))
    assert result.exit_code == 0
    assert result.stdout == "Revision: 4\n"
    assert result.stderr == "Warning: rule 1 selects nothing\n"
    files = [{"text": "- endpointSelector: {}\n", "source": str(rules)}]
    assert api.calls == [("PUT", "/v1/policy", {"files": files})]


def test_policy_import_from_stdin(api):
    result = cilium("policy", "import", "-", stdin="[]")
    assert result.exit_code == 0
    assert api.calls == [("PUT", "/v1/policy", {"files": [{"text": "[]", "source": "<stdin>"}]})]


def test_policy_import_reads_files_directories_and_stdin_in_one_request(api, tmp_path):
    for name in ("b.yml", "a.json", "c.yaml", "notes.txt"):
        (tmp_path / name).write_text(name)
    (tmp_path / "sub.yaml").mkdir()
    one = tmp_path / "one.txt"
    one.write_text("one")
    api.answers[("PUT", "/v1/policy?replace=1")] = {"revision": 9}
    result = cilium("policy", "import", str(one), str(tmp_path), "-", "--replace", stdin="[]")
    assert result.exit_code == 0, result.output
    sources = [f["source"] for f in api.calls[0][2]["files"]]
    listed = [str(tmp_path / name) for name in ("a.json", "b.yml", "c.yaml")]
    assert sources == [str(one), *listed, "<stdin>"]
    assert api.calls[0][1] == "/v1/policy?replace=1"
    assert result.stdout == "Revision: 9\n"


def test_policy_import_refuses_a_directory_without_policy_files(api, tmp_path):
    result = cilium("policy", "import", str(tmp_path))
    assert result.exit_code == 1 and "no .json, .yaml, .yml file" in result.stderr
    assert api.calls == []


PLAN = {
    "revision": 3,
    "warnings": [],
    "rules_added": ["web"],
    "rules_removed": [],
    "endpoints": [
        {
            "endpoint": 7,
            "container": "web-1",
            "entries_added": 2,
            "entries_removed": 1,
            "ingress_enforced": [False, True],
            "egress_enforced": [False, False],
        }
    ],
}


@pytest.mark.parametrize(
    "args", [("import", "--dry-run"), ("validate",), ("import", "--replace", "--dry-run")]
)
def test_dry_run_and_validate_ask_for_a_dry_run_and_show_the_plan(api, tmp_path, args):
    rules = tmp_path / "web.yaml"
    rules.write_text("[]")
    query = "?replace=1&dry_run=1" if "--replace" in args else "?dry_run=1"
    api.answers[("PUT", "/v1/policy" + query)] = PLAN
    result = cilium("policy", *args, str(rules))
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "Would add 1 rule(s): web\n"
        "Endpoints whose policy would change:\n"
        "ENDPOINT  CONTAINER  ENTRIES  INGRESS  EGRESS\n"
        "7         web-1      +2 -1    off->on  off\n"
        "Revision: 3 (unchanged)\n"
    )
    assert [c[1] for c in api.calls] == ["/v1/policy" + query]


@pytest.mark.parametrize(
    ("args", "path", "revision"),
    [(("web",), "/v1/policy?name=web", 5), (("--all",), "/v1/policy?all=true", 6)],
)
def test_policy_delete(api, args, path, revision):
    result = cilium("policy", "delete", *args)
    assert result.stdout == f"Revision: {revision}\n"
    assert api.calls == [("DELETE", path, None)]


@pytest.mark.parametrize("args", [(), ("web", "--all")])
def test_policy_delete_wants_a_name_or_all(api, args):
    result = cilium("policy", "delete", *args)
    assert result.exit_code == 2
    assert "give a rule name or --all" in result.stderr
    assert api.calls == []


def test_policy_mode(api):
    result = cilium("policy", "mode", "always")
    assert result.stdout == "Policy enforcement: always\n"
    assert api.calls == [("PUT", "/v1/policy/mode", {"mode": "always"})]


@pytest.mark.parametrize(
    ("allowed", "code", "verdict"), [(True, 0, "ALLOWED"), (False, 3, "DENIED")]
)
def test_policy_trace(api, allowed, code, verdict):
    answer = {"allowed": allowed, "reason": "the reason"}
    api.answers[("POST", "/v1/policy/trace")] = answer
    args = ("policy", "trace", "--src", "app=client, x=", "--dst", "app=web", "--dport", "53/udp")
    result = cilium(*args)
    assert result.exit_code == code
    assert result.stdout == f"the reason\nFinal verdict: {verdict}\n"
    body = {
        "src": {"app": "client", "x": ""},
        "dst": {"app": "web"},
        "dport": "53",
        "protocol": "udp",
    }
    assert api.calls == [("POST", "/v1/policy/trace", body)]
    result = cilium(*args, "-o", "json")
    assert result.exit_code == code
    assert result.stdout == json.dumps(answer, indent=2) + "\n"


@pytest.mark.parametrize(
    "args",
    [
        ("-s", "app=client", "-s", "x=", "-d", "app=web"),
        ("--src", "app=client,x=", "--dst", "app=web"),
        ("-s", "app=client, x=", "-d", "app=web"),
    ],
)
def test_policy_trace_takes_ciliums_repeatable_label_flags(api, args):
    """Cilium's -s/-d are string slices: repeated, comma-separated, or both."""
    assert cilium("policy", "trace", *args).exit_code == 0
    assert api.calls[0][2]["src"] == {"app": "client", "x": ""}
    assert api.calls[0][2]["dst"] == {"app": "web"}


@pytest.mark.parametrize(
    ("number", "labels"),
    [
        ("256", {"app": "web"}),
        ("2", {"reserved:world": ""}),
        # A prefix's key, which trace refuses with its message: never its labels read as
        # the Docker label "cidr".
        ("16777216", {"cidr:10.0.0.0/8": ""}),
    ],
)
def test_policy_trace_resolves_identities_to_their_labels(api, number, labels):
    result = cilium("policy", "trace", "--src-identity", number, "--dst-identity", "256")
    assert result.exit_code == 0, result.output
    assert api.calls[:2] == [
        ("GET", f"/v1/identities/{number}", None),
        ("GET", "/v1/identities/256", None),
    ]
    assert api.calls[2][2]["src"] == labels
    assert api.calls[2][2]["dst"] == {"app": "web"}


def test_policy_trace_mixes_labels_and_an_identity(api):
    result = cilium("policy", "trace", "-s", "reserved:host", "--dst-identity", "256")
    assert result.exit_code == 0
    assert api.calls[-1][2]["src"] == {"reserved:host": ""}
    assert api.calls[-1][2]["dst"] == {"app": "web"}


@pytest.mark.parametrize(
    ("args", "side"),
    [
        (("-d", "a=b"), "src"),
        (("-s", "a=b", "--src-identity", "2", "-d", "a=b"), "src"),
        (("-s", "a=b"), "dst"),
        (("-s", "a=b", "-d", "a=b", "--dst-identity", "256"), "dst"),
    ],
)
def test_policy_trace_wants_one_form_a_side(api, args, side):
    result = cilium("policy", "trace", *args)
    assert result.exit_code == 2
    assert f"give one of --{side} or --{side}-identity" in result.stderr
    assert api.calls == []


def test_policy_trace_errors_are_not_denials(api):
    """1 for an error (here an unknown identity), 3 for denied, 2 for a usage error."""
    api.answers[("GET", "/v1/identities/999")] = ApiError("identity 999 not found")
    result = cilium("policy", "trace", "--src-identity", "999", "-d", "app=web")
    assert result.exit_code == 1
    assert result.stderr == "Error: identity 999 not found\n"
    api.answers[("POST", "/v1/policy/trace")] = ApiError("trace: 'k8s:app' is neither ...")
    assert cilium("policy", "trace", "-s", "k8s:app=x", "-d", "app=web").exit_code == 1


def test_policy_trace_port_defaults(api):
    cilium("policy", "trace", "--src", "a=b", "--dst", "c=d", "--dport", "8080")
    cilium("policy", "trace", "--src", "a=b", "--dst", "c=d")
    assert [call[2]["dport"] for call in api.calls] == ["8080", "0"]
    assert [call[2]["protocol"] for call in api.calls] == ["tcp", "tcp"]


def test_monitor_lines(api):
    result = cilium("monitor", "--type", "drop", "--from", "7")
    assert result.exit_code == 0
    assert result.stdout == (
        "xx drop (Policy denied) endpoint 7 ingress: identity 5 -> 256: "
        "TCP [fdce:1c00:a0b:c0d::8]:40000 -> [fdce:1c00:a0b:c0d::7]:80\n"
        "-> trace (TO_ENDPOINT) endpoint 8 egress: identity 256 -> 5: "
        "ICMPv6 fdce:1c00:a0b:c0d::7 -> fdce:1c00:a0b:c0d::8\n"
    )
    assert api.calls == [("STREAM", "/v1/monitor?type=drop&from=7", None)]


def test_monitor_line_of_a_host_device_hook_names_the_device():
    """The XDP prefilter's drops happen before any endpoint or identity is known."""
    event = {"kind": "drop", "description": "Source in the XDP prefilter's deny list"}
    event |= {"endpoint_id": 0, "ifindex": 1, "protocol": 1}
    line = cli.format_event({**event, "src": "203.0.113.2", "dst": "203.0.113.1"})
    assert line == (
        "xx drop (Source in the XDP prefilter's deny list) device lo: ICMP 203.0.113.2 ->"
        " 203.0.113.1"
    )
    assert "device ifindex 999999" in cli.format_event({**event, "ifindex": 999999})


def test_monitor_json_is_one_event_a_line(api):
    result = cilium("monitor", "-o", "json", "--to", "8")
    assert result.stdout == "".join(json.dumps(e) + "\n" for e in EVENTS)
    assert api.calls == [("STREAM", "/v1/monitor?type=drop&type=trace&to=8", None)]


def test_monitor_yaml_is_one_document_an_event(api):
    result = cilium("monitor", "-o", "yaml")
    assert list(yaml.safe_load_all(result.stdout)) == EVENTS
    assert result.stdout.count("---") == len(EVENTS)


def test_monitor_ends_with_the_stream_or_an_error(api):
    api.events.append(ApiError("cannot reach the driver"))
    result = cilium("monitor")
    assert result.exit_code == 1
    assert result.stdout.count("\n") == 2
    assert result.stderr == "Error: cannot reach the driver\n"
    api.events[-1] = KeyboardInterrupt()
    assert cilium("monitor").exit_code == 0


def test_service_update_sends_the_service_and_prints_warnings(api):
    result = cilium(
        "service",
        "update",
        "--frontend",
        "[fd00:5::10]:80",
        "--backends",
        "[fd00::2]:80, ,[fd00::3]:80@2",
    )
    assert result.exit_code == 0
    assert result.stdout == TABLES[("service", "get", "1")]
    assert result.stderr == "Warning: no endpoint matches app=web yet\n"
    body = {
        "frontend": "[fd00:5::10]:80",
        "protocol": "tcp",
        "port": 0,
        "id": None,
        "name": None,
        "backends": ["[fd00::2]:80", "[fd00::3]:80@2"],
    }
    assert api.calls == [("PUT", "/v1/services", body)]


def test_service_update_by_selector_as_json(api):
    args = (
        "--selector",
        "app=web",
        "--port",
        "8080",
        "--protocol",
        "udp",
        "--id",
        "4",
        "--name",
        "w",
    )
    result = cilium("service", "update", "--frontend", "10.96.0.1:80", *args, "-o", "json")
    assert json.loads(result.stdout) == ANSWERS[("GET", "/v1/services/1")]
    body = {"frontend": "10.96.0.1:80", "protocol": "udp", "port": 8080, "id": 4, "name": "w"}
    assert api.calls == [("PUT", "/v1/services", {**body, "selector": {"app": "web"}})]


@pytest.mark.parametrize(
    ("args", "deleted"), [(("--all",), [1, 2]), (("web",), [1]), (("2",), [2])]
)
def test_service_delete(api, args, deleted):
    result = cilium("service", "delete", *args)
    assert result.exit_code == 0
    assert result.stdout == "".join(f"Deleted service {n}\n" for n in deleted)
    assert api.calls[1:] == [("DELETE", f"/v1/services/{n}", None) for n in deleted]


def test_node_forget_quotes_the_name(api):
    result = cilium("node", "forget", "old/host")
    assert result.exit_code == 0
    assert result.stdout == "Forgot node old/host: node id 7 is free\n"
    assert api.calls == [("DELETE", "/v1/nodes/old%2Fhost", None)]


def test_service_delete_of_an_unknown_name(api):
    result = cilium("service", "delete", "nope")
    assert result.exit_code == 1
    assert result.stderr == "Error: no service named nope\n"
    assert api.calls == [("GET", "/v1/services", None)]


@pytest.mark.parametrize("args", [(), ("web", "--all")])
def test_service_delete_wants_a_ref_or_all(api, args):
    result = cilium("service", "delete", *args)
    assert result.exit_code == 2
    assert "give a service id or name, or --all" in result.stderr


def _every_command(command=cli.main, path=()):
    """Every command and group, as a user can type it."""
    yield path
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _every_command(sub, (*path, name))


@pytest.mark.parametrize("path", list(_every_command()), ids=" ".join)
def test_h_is_help_everywhere(api, path):
    short, long = cilium(*path, "-h"), cilium(*path, "--help")
    assert short.exit_code == 0, short.output
    assert short.stdout.startswith(f"Usage: {' '.join(('main', *path))} ")
    assert short.stdout == long.stdout
    assert api.calls == []


CLIENT_VERSION = importlib.metadata.version("pycilium")


def test_version_flag_is_the_client_alone(api):
    result = cilium("--version")
    assert result.exit_code == 0
    assert result.stdout == f"Client: {CLIENT_VERSION}\n"
    assert api.calls == []


def test_version_adds_the_drivers(api):
    result = cilium("version")
    assert result.exit_code == 0
    assert result.stdout == f"Client: {CLIENT_VERSION}\nDaemon: 0.0.9\n"
    assert api.calls == [("GET", "/v1/version", None)]
    result = cilium("version", "-o", "json")
    assert json.loads(result.stdout) == {"client": CLIENT_VERSION, "daemon": "0.0.9"}
    result = cilium("version", "-o", "yaml")
    assert yaml.safe_load(result.stdout) == {"client": CLIENT_VERSION, "daemon": "0.0.9"}


def test_version_without_a_driver_still_names_the_client(api):
    api.answers[("GET", "/v1/version")] = ApiError("cannot reach the driver at /x: gone")
    result = cilium("version")
    assert result.exit_code == 1
    assert result.stdout == f"Client: {CLIENT_VERSION}\n"
    assert result.stderr == "Error: cannot reach the driver at /x: gone\n"


def test_bash_completion_script_and_answers():
    """What README tells users to source: click's completion for the `cilium` entry point."""
    runner = CliRunner()
    script = runner.invoke(
        cli.main, [], prog_name="cilium", env={"_CILIUM_COMPLETE": "bash_source"}
    )
    assert script.exit_code == 0
    assert "complete -o nosort -F _cilium_completion cilium" in script.stdout
    words = runner.invoke(
        cli.main,
        [],
        prog_name="cilium",
        env={
            "_CILIUM_COMPLETE": "bash_complete",
            "COMP_WORDS": "cilium bpf endpoint ",
            "COMP_CWORD": "3",
        },
    )
    assert words.stdout.split() == ["plain,list"]


FLOW = {
    "time": 1764960000.25,
    "type": "new",
    "verdict": "FORWARDED",
    "direction": "ingress",
    "endpoint": 7,
    "protocol": "tcp",
    "source": {
        "address": "fdce:1c00:a0b:c0d::8",
        "port": 40000,
        "identity": 300,
        "labels": ["app=client"],
        "container": "client",
    },
    "destination": {
        "address": "10.213.0.7",
        "port": 80,
        "identity": 256,
        "labels": ["app=web"],
        "container": "web",
    },
    "service": None,
    "policy": {"match": "POLICY_MATCH_PEER_PORT", "key": {}, "rules": ["web-policy"]},
}
DROP = {k: v for k, v in FLOW.items() if k != "policy"} | {
    "type": "drop",
    "verdict": "DROPPED",
    "reason": "Policy denied",
    "source": FLOW["source"] | {"container": None, "labels": ["reserved:world"]},
}
FLOWS_PATH = (
    "/v1/flows?from-label=app%3Dclient&to-container=web&verdict=DROPPED&protocol=tcp&last=5"
)


def test_observe_lines_say_who_what_and_why(api):
    api.answers[("GET", FLOWS_PATH)] = [FLOW, DROP]
    result = cilium(
        "observe",
        "--from-label",
        "app=client",
        "--to-container",
        "web",
        "--verdict",
        "dropped",
        "--protocol",
        "tcp",
        "--last",
        "5",
    )
    assert result.exit_code == 0, result.output
    lines = [line.split("  ", 1)[1] for line in result.stdout.splitlines()]
    assert lines == [
        "client [fdce:1c00:a0b:c0d::8]:40000 -> web 10.213.0.7:80  TCP  FORWARDED by web-policy"
        " [ingress 7]",
        "reserved:world [fdce:1c00:a0b:c0d::8]:40000 -> web 10.213.0.7:80  TCP  DROPPED"
        " (Policy denied) [ingress 7]",
    ]


AGGREGATED = FLOW | {
    "type": "aggregated",
    "source": FLOW["source"] | {"address": None, "port": 0, "container": None},
    "destination": FLOW["destination"] | {"address": None},
    "count": 250,
}


def test_observe_marks_aggregated_flows_and_their_count(api):
    api.answers[("GET", "/v1/flows?")] = [AGGREGATED]
    result = cilium("observe")
    assert result.exit_code == 0, result.output
    assert result.stdout.split("  ", 1)[1] == (
        "app=client -> web:80  TCP  FORWARDED by web-policy AGGREGATED 250 connections"
        " [ingress 7]\n"
    )


def test_observe_json_is_one_flow_a_line(api):
    api.answers[("GET", "/v1/flows?")] = [FLOW, DROP]
    result = cilium("observe", "-o", "json")
    assert [json.loads(line) for line in result.stdout.splitlines()] == [FLOW, DROP]


def test_observe_follow_streams(api):
    api.events[:] = [FLOW]
    result = cilium("observe", "--follow", "--port", "80", "-o", "json")
    assert json.loads(result.stdout) == FLOW
    assert api.calls == [("STREAM", "/v1/flows?port=80&follow=1", None)]


def test_observe_since_takes_a_duration_or_a_time(api, monkeypatch):
    monkeypatch.setattr(cli.time, "time", lambda: 1000.0)
    api.answers[("GET", "/v1/flows?since=700.0")] = []
    assert cilium("observe", "--since", "5m").exit_code == 0
    api.answers[("GET", "/v1/flows?since=0.0")] = []
    assert cilium("observe", "--since", "1970-01-01T00:00:00+00:00").exit_code == 0
    result = cilium("observe", "--since", "yesterday")
    assert result.exit_code == 2 and "neither a duration" in result.output

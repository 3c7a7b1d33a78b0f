"""Fuzzed and adversarial policy and service documents through the management API.

A policy import is applied (200) or refused (400 with a message); a refusal leaves the
policy in force, the datapath's policy entries and the store as they were. A service update
is applied (200) or refused with {"Err"}; a refusal leaves the load balancer as it was.
No document makes the driver raise an exception it did not expect (see test_fuzz_plugin).
"""

import ipaddress
import json
import logging
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datapath.service import validate_service
from driver.config import Config
from driver.control.policy import PolicyError, parse_rules
from driver.control.policy.load import MAX_NODES
from driver.server.app import MAX_BODY_BYTES, create_app

from ..docker_calls import EP, NET, create_endpoint, join, make_ipam_network
from ..fakes import FakeDatapath
from .test_fuzz_plugin import (
    _UnexpectedErrors,
    check_reply,
    json_values,
    running_app,
    snapshot,
)

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class ValidatingDatapath(FakeDatapath):
    """The fake, refusing services the way the real Datapath.set_service does (validated
    whole before any write: duplicate backends, more than MAX_SLOTS weight slots)."""

    def set_service(self, service_id, frontend, backends):
        validate_service(service_id, frontend, list(backends))
        super().set_service(service_id, frontend, backends)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One app with a ready endpoint (labels app=web), so imports regenerate real entries."""
    with running_app(tmp_path_factory.mktemp("fuzz-docs")) as (app, datapath, errors):
        client = app.test_client()

        def post(path, body=None):
            response = client.post("/" + path, data=json.dumps(body).encode())
            return response.status_code, response.get_json(force=True)

        create_endpoint(post, make_ipam_network(post))
        join(post)
        app.extensions["pycilium"].assign_container(EP, NET, "app", "c" * 64, "web", {"app": "web"})
        assert datapath.policies
        yield app, datapath, errors


def import_policy(app, errors, text, source="fuzz.yaml"):
    response = app.test_client().put("/v1/policy", json={"text": text, "source": source})
    return response.status_code, check_reply(response, errors)


def assert_applied_or_refused(app, datapath, errors, text):
    """Import text; return the status. A refusal is a 400 with a message and changes nothing."""
    before = snapshot(app, datapath)
    status, reply = import_policy(app, errors, text)
    assert status in (200, 400), (status, reply)
    if status == 400:
        assert reply["Err"]
        assert snapshot(app, datapath) == before
    else:
        assert reply["revision"] == before["revision"] + 1
        reset = app.test_client().delete("/v1/policy?all=true")
        assert reset.status_code == 200
    return status, reply


# --- rule documents -----------------------------------------------------------------------

# A ':' in a key names a label source (any:app, reserved:host): keys here are plain.
label_key = st.text(max_size=8).filter(lambda key: ":" not in key)
labels = st.dictionaries(label_key, st.text(max_size=8), max_size=3)
requirement = st.one_of(
    st.fixed_dictionaries(
        {
            "key": label_key,
            "operator": st.sampled_from(["In", "NotIn"]),
            "values": st.lists(st.text(max_size=8), min_size=1, max_size=3),
        }
    ),
    st.fixed_dictionaries(
        {"key": label_key, "operator": st.sampled_from(["Exists", "DoesNotExist"])}
    ),
)
selector = st.fixed_dictionaries(
    {},
    optional={
        "matchLabels": labels,
        "matchExpressions": st.lists(requirement, max_size=2),
    },
)
cidr = st.one_of(
    st.builds(
        lambda a, p: str(ipaddress.ip_network((a, p), strict=False)),
        st.integers(0, 2**32 - 1),
        st.integers(0, 32),
    ),
    st.builds(
        lambda a, p: str(ipaddress.ip_network((a, p), strict=False)),
        st.integers(0, 2**128 - 1),
        st.integers(0, 128),
    ),
)
port = st.one_of(
    st.fixed_dictionaries(
        {"port": st.integers(1, 65535).map(str), "protocol": st.sampled_from(["TCP", "UDP", "ANY"])}
    ),
    st.just({"protocol": "ICMP"}),
)
port_rule = st.fixed_dictionaries({"ports": st.lists(port, min_size=1, max_size=3)})


def section(side):
    return st.fixed_dictionaries(
        {},
        optional={
            side + "Endpoints": st.lists(selector, max_size=2),
            side + "CIDR": st.lists(cidr, max_size=2),
            side + "Entities": st.lists(
                st.sampled_from(["all", "cluster", "host", "world"]), max_size=2
            ),
            "toPorts": st.lists(port_rule, max_size=2),
        },
    ).filter(lambda s: sum(bool(s.get(side + f)) for f in ("Endpoints", "CIDR", "Entities")) < 2)


rule = st.fixed_dictionaries(
    {"endpointSelector": selector},
    optional={
        "labels": st.lists(st.text(min_size=1, max_size=8).map(lambda s: "name=" + s), max_size=1),
        "description": st.text(max_size=20),
        "ingress": st.lists(section("from"), min_size=1, max_size=2),
        "egress": st.lists(section("to"), min_size=1, max_size=2),
    },
).filter(lambda r: "ingress" in r or "egress" in r)
documents = st.lists(rule, min_size=1, max_size=3)


def _paths(value, prefix=()):
    """Every place in a document: (path, value) pairs, the document itself first."""
    yield prefix, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*prefix, index))


@st.composite
def slightly_broken(draw, document):
    """One place in the document replaced by any JSON value, or an unknown field added."""
    places = list(_paths(document))
    path, _ = draw(st.sampled_from(places))
    new = draw(json_values)
    if not path:
        return new
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    if isinstance(parent, dict) and draw(st.booleans()):
        parent[draw(st.text(max_size=10))] = new
    else:
        parent[path[-1]] = new
    return document


def _text(document, as_yaml):
    return yaml.safe_dump(document) if as_yaml else json.dumps(document)


@FUZZ
@given(document=documents, as_yaml=st.booleans())
def test_valid_rule_documents_are_applied(shared, document, as_yaml):
    """Generated rules in the Cilium format, as JSON or YAML: applied, and in force."""
    app, datapath, errors = shared
    status, reply = assert_applied_or_refused(app, datapath, errors, _text(document, as_yaml))
    assert status == 200, reply


@FUZZ
@given(data=st.data(), as_yaml=st.booleans())
def test_slightly_broken_rule_documents(shared, data, as_yaml):
    """One field of a valid document mistyped, replaced or unknown: applied if still valid,
    else refused with a 400 that changes nothing; the API agrees with parse_rules."""
    app, datapath, errors = shared
    document = data.draw(documents.flatmap(slightly_broken), label="document")
    text = _text(document, as_yaml)
    try:
        parse_rules(text, "fuzz.yaml")
    except PolicyError as error:
        expected = (400, str(error))
    else:
        expected = (200, None)
    status, reply = assert_applied_or_refused(app, datapath, errors, text)
    assert (status, reply.get("Err")) == expected


@FUZZ
@given(text=st.one_of(st.text(max_size=200), json_values.map(json.dumps)))
def test_random_text_is_applied_or_refused(shared, text):
    app, datapath, errors = shared
    assert_applied_or_refused(app, datapath, errors, text)


# --- adversarial documents ------------------------------------------------------------------

DEEP = 10_000


@pytest.mark.parametrize(
    "text",
    [
        "[" * DEEP + "]" * DEEP,
        '{"a":' * DEEP + "1" + "}" * DEEP,
        "- " * DEEP + "x",
        "a:\n" + "".join("  " * i + "a:\n" for i in range(1, 900)),
        "[" * DEEP,
        "{a: " * DEEP,
    ],
    ids=["json-lists", "json-dicts", "yaml-lists", "yaml-dicts-900", "unclosed-json", "yaml-flow"],
)
def test_deep_nesting_is_refused(shared, text):
    """10,000 nested lists or objects: json.loads and yaml.safe_load raise RecursionError,
    which was an unexpected 500; now a 400 ("nested too deeply") and nothing changes."""
    app, datapath, errors = shared
    status, _ = assert_applied_or_refused(app, datapath, errors, text)
    assert status == 400


def test_nesting_below_the_recursion_limit_is_a_type_error(shared):
    app, datapath, errors = shared
    text = json.dumps([{"endpointSelector": {"matchLabels": {"a": [[[[[[[["x"]]]]]]]]}}}])
    status, reply = assert_applied_or_refused(app, datapath, errors, text)
    assert status == 400 and "expected a string, got a list" in reply["Err"]


def test_huge_file_over_the_body_limit_is_413(shared):
    """A several-MB policy never reaches the parser: the body limit (1 MiB) refuses it."""
    app, datapath, errors = shared
    rules = [{"endpointSelector": {"matchLabels": {"app": f"a{i}"}}} for i in range(100_000)]
    text = json.dumps(rules)
    assert len(text) > 4 * MAX_BODY_BYTES
    before = snapshot(app, datapath)
    status, reply = import_policy(app, errors, text)
    assert status == 413 and reply["Err"]
    assert snapshot(app, datapath) == before


def test_huge_file_parses_in_bounded_time():
    """parse_rules itself on a 3.4 MB document (a rule with 100,000 selectors): ~1 s.
    The same document in YAML takes ~23 s (PyYAML's pure-Python loader); the body limit
    keeps such a file from the API, so the YAML form is not run here."""
    selectors = [{"matchLabels": {"k": f"v{i}"}} for i in range(100_000)]
    text = json.dumps({"endpointSelector": {}, "ingress": [{"fromEndpoints": selectors}]})
    assert len(text) > 3_000_000
    start = time.perf_counter()
    (parsed,) = parse_rules(text, "huge.json")
    assert len(parsed.ingress[0].endpoints) == 100_000
    assert time.perf_counter() - start < 20


@pytest.mark.parametrize("count", [20_000])
def test_many_selectors_in_one_rule_through_the_api(shared, count):
    """One rule whose fromEndpoints has `count` distinct selectors, imported through the
    API with a ready endpoint (so the policy is computed and written). Measured: 20,000
    (0.77 MB) 0.27 s; 100,000 (3.9 MB, over the 1 MiB body limit, so only through
    Regeneration.import_rules) 1.6 s. CI runs 20,000; 100,000 bare {} selectors go through the
    API in the next test."""
    app, datapath, errors = shared
    selectors = [{"matchLabels": {"app": f"peer{i}"}} for i in range(count)]
    text = json.dumps(
        {
            "endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"fromEndpoints": selectors}],
        }
    )
    assert len(text) < MAX_BODY_BYTES
    status, reply = assert_applied_or_refused(app, datapath, errors, text)
    assert status == 200, reply


def test_hundred_thousand_empty_selectors_through_the_api(shared):
    """100,000 bare selectors ({} selects every endpoint) in one rule, ~0.5 MB."""
    app, datapath, errors = shared
    text = json.dumps(
        {
            "endpointSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"fromEndpoints": [{}] * 100_000}],
        }
    )
    status, reply = assert_applied_or_refused(app, datapath, errors, text)
    assert status == 200, reply


def _bomb(n: int) -> str:
    """A YAML "billion laughs" in the rule format: n rules x n sections x n selectors x
    n requirements x n values, written with anchors and aliases in about 100*n bytes."""
    values = ",".join(f"v{i}" for i in range(n))
    requirements = ",".join([f"&r {{key: k, operator: In, values: [{values}]}}"] + ["*r"] * (n - 1))
    selectors = ",".join(["{matchExpressions: *m}"] * n)
    return (
        f"- endpointSelector: {{matchExpressions: &m [{requirements}]}}\n"
        f"  ingress: &i\n  - &s {{fromEndpoints: [{selectors}]}}\n"
        + "  - *s\n" * (n - 1)
        + "- {endpointSelector: {matchExpressions: *m}, ingress: *i}\n" * (n - 1)
    )


def test_yaml_bomb_is_refused(shared):
    """yaml.safe_load builds aliases as shared references (cheap), but parse_rules walked
    every use: 2.9 KB (n=30) took 16 s and grew as n**5, and the stored policy JSON with it.
    Now a document whose aliases expand past MAX_NODES values is refused, in well under 1 s."""
    app, datapath, errors = shared
    text = _bomb(60)
    assert len(text) < 10_000
    start = time.perf_counter()
    status, reply = assert_applied_or_refused(app, datapath, errors, text)
    assert status == 400 and f"more than {MAX_NODES} values" in reply["Err"]
    assert time.perf_counter() - start < 5


def test_modest_aliases_are_still_applied(shared):
    app, datapath, errors = shared
    status, reply = assert_applied_or_refused(app, datapath, errors, _bomb(4))
    assert status == 200, reply


def test_self_referencing_alias_is_refused(shared):
    app, datapath, errors = shared
    text = "- endpointSelector: {}\n  ingress: &i [{fromEndpoints: [{matchLabels: *i}]}]\n"
    status, _ = assert_applied_or_refused(app, datapath, errors, text)
    assert status == 400


# --- service documents ----------------------------------------------------------------------

frontends = st.one_of(
    st.sampled_from(
        [
            "[fd00:5::10]:80",
            "[fd00:5::11]",
            "10.96.0.10:53",
            "10.96.0.11",
            "[fdce::1]:80",
            "10.96.0.12:99999",
            "fd00:5::10:80",
            "[fd00:5::10]:0",
            " 10.96.0.13:8080 ",
        ]
    ),
    json_values,
)
backends = st.one_of(
    st.sampled_from(
        [
            "[fdce::2]:8080",
            "[fdce::3]:8080@2",
            "10.0.0.5:53",
            "10.0.0.6",
            "[fdce::4]:80@0",
            "[fdce::5]:80@300",
            "[fd00:5::12]:80",
            "[fdce::2]:8080@x",
            "[fdce::6]",
        ]
    ),
    json_values,
)
service_documents = st.fixed_dictionaries(
    {},
    optional={
        "frontend": frontends,
        "protocol": st.one_of(st.sampled_from(["tcp", "udp", "UDP", "sctp", ""]), json_values),
        "backends": st.one_of(st.lists(backends, max_size=4), json_values),
        "selector": st.one_of(st.just({"app": "web"}), json_values),
        "id": st.one_of(st.integers(-2, 70_000), st.sampled_from([1, 2, "3", 1e999]), json_values),
        "port": st.one_of(st.integers(-1, 70_000), json_values),
        "name": st.one_of(st.text(max_size=10), json_values),
    },
)


@pytest.fixture(scope="module")
def services_app(tmp_path_factory):
    """An app whose datapath validates services like the real one, with a ready endpoint
    (app=web) for selector services."""
    datapath = ValidatingDatapath()
    config = Config(
        state_dir=str(tmp_path_factory.mktemp("fuzz-services") / "state"), node_id=0x0A0B0C0D
    ).validate()
    app = create_app(config, datapath=datapath, watch_docker=False)
    client = app.test_client()

    def post(path, body=None):
        response = client.post("/" + path, data=json.dumps(body).encode())
        return response.status_code, response.get_json(force=True)

    create_endpoint(post, make_ipam_network(post))
    join(post)
    app.extensions["pycilium"].assign_container(EP, NET, "app", "c" * 64, "web", {"app": "web"})
    yield app, datapath
    app.extensions["pycilium"].close()


def _lb(datapath):
    return {str(f): (i, [repr(b) for b in bs]) for f, (i, bs) in datapath.lb.items()}


@FUZZ
@given(existing=st.lists(service_documents, max_size=2), document=service_documents)
def test_service_documents_are_applied_or_refused_whole(services_app, existing, document):
    """Fuzzed frontends, backends, selectors, ids, ports and names, on top of zero to two
    services already in place: 200 and in force, or a clean {"Err"} with the load balancer
    and the stored services exactly as they were (no half-applied service)."""
    app, datapath = services_app
    errors = _UnexpectedErrors()
    logging.getLogger("driver.server.app").addHandler(errors)
    client = app.test_client()
    try:
        for body in existing:
            check_reply(client.put("/v1/services", data=json.dumps(body)), errors)
        before = (_lb(datapath), client.get("/v1/services").get_json())
        response = client.put("/v1/services", data=json.dumps(document))
        reply = check_reply(response, errors)
        after = (_lb(datapath), client.get("/v1/services").get_json())
        if response.status_code == 200:
            assert after[0][reply["frontend"]][0] == reply["id"]
            stored = client.get(f"/v1/services/{reply['id']}").get_json()
            assert stored["frontend"] == reply["frontend"]
        else:
            assert response.status_code in (400, 409, 500), reply
            assert after == before, reply
        # The datapath and the stored services agree.
        stored = {s["frontend"]: s["id"] for s in after[1]}
        assert {f: i for f, (i, _) in after[0].items()} == stored
    finally:
        for service in client.get("/v1/services").get_json():
            client.delete(f"/v1/services/{service['id']}")
        logging.getLogger("driver.server.app").removeHandler(errors)
    assert datapath.lb == {}


def test_moving_an_id_to_a_new_frontend_that_the_datapath_refuses_keeps_the_old(services_app):
    """Service 7 on frontend A, then service 7 on frontend B with weights the datapath
    refuses (more than MAX_SLOTS): the update deleted A from the datapath before B failed,
    leaving the stored service 7 (A) with no frontend in the load balancer."""
    app, datapath = services_app
    client = app.test_client()
    first = {"frontend": "[fd00:5::10]:80", "backends": ["[fdce::2]:80"], "id": 7}
    assert client.put("/v1/services", json=first).status_code == 200
    before = (_lb(datapath), client.get("/v1/services").get_json())
    moved = {"frontend": "[fd00:5::20]:80", "backends": ["[fdce::2]:80@300"], "id": 7}
    response = client.put("/v1/services", json=moved)
    assert response.status_code == 500 and "slots" in response.get_json()["Err"]
    assert (_lb(datapath), client.get("/v1/services").get_json()) == before
    client.delete("/v1/services/7")
    assert datapath.lb == {}

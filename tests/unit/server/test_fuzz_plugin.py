"""Property-based fuzzing of every plugin and management endpoint.

The contract driver/server/app.py implements: every reply is JSON; a failure is exactly
{"Err": <non-empty message>} with 400 (a body that is not JSON or not the call's shape),
404, 405, 413 (a body over MAX_BODY_BYTES) or 500 (a DriverError or DatapathError: a
well-formed request the driver could not carry out). An exception the driver did not
expect also becomes a 500, logged by driver.server.app with its traceback: the tests count those
and require none. A refused call changes neither the datapath nor the store.
"""

import contextlib
import dataclasses
import json
import logging
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driver.config import Config
from driver.server.app import MAX_BODY_BYTES, create_app

from ..docker_calls import EP, NET, SANDBOX
from ..fakes import FakeDatapath

FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ERROR_STATUSES = {400, 404, 405, 409, 413, 500}  # 409: the management API's conflicts

# JSON values of every kind, nested a little.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
url_text = st.text(st.characters(codec="utf-8", exclude_characters="/?#%"), min_size=1, max_size=30)

POOL_ID = "fd00::/64/0123456789ab"
PLUGIN_BODIES = {
    "Plugin.Activate": None,
    "NetworkDriver.GetCapabilities": None,
    "IpamDriver.GetCapabilities": None,
    "IpamDriver.GetDefaultAddressSpaces": None,
    "NetworkDriver.CreateNetwork": {
        "NetworkID": NET,
        "Options": {"com.docker.network.enable_ipv6": True, "com.docker.network.generic": {}},
        "IPv4Data": [
            {"AddressSpace": "CiliumLocal", "Pool": "10.20.0.0/16", "Gateway": "10.20.0.1/16"}
        ],
        "IPv6Data": [{"AddressSpace": "CiliumLocal", "Pool": "fd01::/64", "Gateway": "fd01::1/64"}],
    },
    "NetworkDriver.DeleteNetwork": {"NetworkID": NET},
    "NetworkDriver.CreateEndpoint": {
        "NetworkID": NET,
        "EndpointID": EP,
        "Interface": {"Address": "10.20.0.5/16", "AddressIPv6": "fd01::5/64", "MacAddress": ""},
        "Options": {},
    },
    "NetworkDriver.EndpointOperInfo": {"NetworkID": NET, "EndpointID": EP},
    "NetworkDriver.DeleteEndpoint": {"NetworkID": NET, "EndpointID": EP},
    "NetworkDriver.Join": {
        "NetworkID": NET,
        "EndpointID": EP,
        "SandboxKey": SANDBOX,
        "Options": {},
    },
    "NetworkDriver.Leave": {"NetworkID": NET, "EndpointID": EP},
    "NetworkDriver.ProgramExternalConnectivity": {
        "NetworkID": NET,
        "EndpointID": EP,
        "Options": {},
    },
    "NetworkDriver.RevokeExternalConnectivity": {"NetworkID": NET, "EndpointID": EP},
    "NetworkDriver.DiscoverNew": {"DiscoveryType": 1, "DiscoveryData": {}},
    "NetworkDriver.DiscoverDelete": {"DiscoveryType": 1, "DiscoveryData": {}},
    "NetworkDriver.AllocateNetwork": {"NetworkID": NET, "Options": {}},
    "NetworkDriver.FreeNetwork": {"NetworkID": NET},
    "IpamDriver.RequestPool": {"AddressSpace": "CiliumLocal", "Pool": "", "V6": True},
    "IpamDriver.ReleasePool": {"PoolID": POOL_ID},
    "IpamDriver.RequestAddress": {"PoolID": POOL_ID, "Address": "", "Options": None},
    "IpamDriver.ReleaseAddress": {"PoolID": POOL_ID, "Address": "fd00::5"},
}
# Calls that read no body: anything goes, and the reply is the fixed one.
NO_BODY = {path for path, body in PLUGIN_BODIES.items() if body is None}
# Calls that may succeed on a random body without a network to act on, and so change state.
MAY_CHANGE_STATE = {"IpamDriver.RequestPool"}


class _UnexpectedErrors(logging.Handler):
    """driver.server.app logs an unexpected exception (only that) at ERROR with its traceback."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@contextlib.contextmanager
def running_app(tmp_dir):
    datapath = FakeDatapath()
    config = Config(state_dir=str(tmp_dir / "state"), node_id=0x0A0B0C0D).validate()
    app = create_app(config, datapath=datapath, watch_docker=False)
    errors = _UnexpectedErrors()
    logger = logging.getLogger("driver.server.app")
    logger.addHandler(errors)
    try:
        yield app, datapath, errors
    finally:
        logger.removeHandler(errors)
        app.extensions["pycilium"].close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One app for the module: the refusal tests leave it as they found it."""
    with running_app(tmp_path_factory.mktemp("fuzz-plugin")) as running:
        yield running


def snapshot(app, datapath) -> dict:
    """Everything a call could change: the fake datapath's tables and the whole store."""
    d = app.extensions["pycilium"]
    store = d.store
    return {
        "endpoints": {k: repr(v) for k, v in datapath.endpoints.items()},
        "unreachable": set(datapath.unreachable),
        "lb": {str(f): (i, list(map(repr, b))) for f, (i, b) in datapath.lb.items()},
        "published": {k: list(map(repr, v)) for k, v in datapath.published.items()},
        "policies": {k: repr(v) for k, v in datapath.policies.items()},
        "identities": dict(datapath.identities),
        "cidr_identities": dict(datapath.cidr_identities),
        "networks": [dataclasses.asdict(n) for n in store.networks()],
        "store_endpoints": [dataclasses.asdict(e) for e in store.endpoints()],
        "addresses": store.addresses(),
        "pools": [repr(p) for p in store.pools()],
        "store_identities": [dataclasses.asdict(i) for i in store.identities()],
        "meta": store.meta_with_prefix(""),
        "revision": d.regeneration.revision,
        "mode": d.regeneration.mode,
    }


def check_reply(response, errors) -> object:
    """The reply decodes as JSON; a failure is exactly {"Err": str}; nothing unexpected raised."""
    unexpected = [r.getMessage() for r in errors.records]
    errors.records.clear()
    assert not unexpected, unexpected
    body = json.loads(response.get_data())
    assert response.status_code == 200 or response.status_code in ERROR_STATUSES, (
        response.status_code
    )
    if response.status_code != 200:
        assert isinstance(body, dict) and set(body) == {"Err"}, body
        assert isinstance(body["Err"], str) and body["Err"]
    return body


# --- body generators -------------------------------------------------------------------


def _dumps(value) -> bytes:
    return json.dumps(value).encode()


@st.composite
def one_field_changed(draw, body: dict) -> bytes:
    """The valid body with one field's value replaced (another type), or one field removed."""
    key = draw(st.sampled_from(sorted(body)))
    changed = dict(body)
    if draw(st.booleans()):
        del changed[key]
    else:
        changed[key] = draw(json_values)
    return _dumps(changed)


@st.composite
def huge(draw, body: dict) -> bytes:
    """The valid body with one field a huge string: just under and over MAX_BODY_BYTES."""
    key = draw(st.sampled_from(sorted(body)))
    size = draw(st.sampled_from([300, 70_000, MAX_BODY_BYTES - 200, MAX_BODY_BYTES + 10]))
    return _dumps({**body, key: "a" * size})


def bodies(valid: dict | None):
    """Random JSON, random bytes, truncations and single-field mutations of a valid body."""
    choices = [
        json_values.map(_dumps),
        st.binary(max_size=64),
        st.sampled_from(
            [b"", b" ", b"null", b"[]", b"{", b"\xff", b"[" * 50_000, b'{"a":' * 50_000]
        ),
    ]
    if valid:
        raw = _dumps(valid)
        choices += [
            st.integers(0, len(raw) - 1).map(lambda n: raw[:n]),
            one_field_changed(valid),
            huge(valid),
        ]
    return st.one_of(choices)


# --- plugin calls ----------------------------------------------------------------------


@FUZZ
@given(data=st.data())
@pytest.mark.parametrize("path", sorted(PLUGIN_BODIES))
def test_plugin_call_with_any_body(shared, path, data):
    """Any body: a JSON reply, {"Err"} on failure, 400 for a body that is not the call's
    shape, and a refused call changes nothing."""
    app, datapath, errors = shared
    raw = data.draw(bodies(PLUGIN_BODIES[path]), label="body")
    before = snapshot(app, datapath)
    response = app.test_client().post("/" + path, data=raw)
    body = check_reply(response, errors)
    status = response.status_code
    if path in NO_BODY:
        assert status == 200
        return
    assert isinstance(body, dict)
    if len(raw) > MAX_BODY_BYTES:
        assert status == 413
    try:
        decoded = json.loads(raw)
    except (ValueError, RecursionError):
        assert status in (400, 413), body
    else:
        if not isinstance(decoded, dict):
            assert status == 400, body
    if status != 200 or path not in MAY_CHANGE_STATE:
        after = snapshot(app, datapath)
        if status != 200:
            assert after == before, f"{path} {status} {body} changed state"


@FUZZ
@given(
    net=st.text(min_size=1, max_size=64),
    ep=st.from_regex(r"\A[0-9a-f]{12,64}\Z"),
    pool=st.text(min_size=1, max_size=80),
    address=st.sampled_from(["", "10.0.0.1", "fd00::1", "nope"]),
)
def test_unknown_ids_are_clean_errors_or_no_ops(shared, net, ep, pool, address):
    """Well-shaped calls naming networks, endpoints and pools that do not exist: a clean
    reply (a no-op 200 where Docker retries, an {"Err"} otherwise), never a state change."""
    app, datapath, errors = shared
    client = app.test_client()
    calls = [
        ("NetworkDriver.DeleteNetwork", {"NetworkID": net}),
        ("NetworkDriver.CreateEndpoint", {"NetworkID": net, "EndpointID": ep, "Interface": {}}),
        ("NetworkDriver.EndpointOperInfo", {"NetworkID": net, "EndpointID": ep}),
        ("NetworkDriver.DeleteEndpoint", {"NetworkID": net, "EndpointID": ep}),
        ("NetworkDriver.Join", {"NetworkID": net, "EndpointID": ep, "SandboxKey": SANDBOX}),
        ("NetworkDriver.Leave", {"NetworkID": net, "EndpointID": ep}),
        ("IpamDriver.ReleasePool", {"PoolID": pool}),
        ("IpamDriver.RequestAddress", {"PoolID": pool, "Address": address}),
        ("IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": address}),
    ]
    for path, body in calls:
        before = snapshot(app, datapath)
        response = client.post("/" + path, data=_dumps(body))
        check_reply(response, errors)
        assert snapshot(app, datapath) == before, path


# --- management API --------------------------------------------------------------------

API_READS = [
    "healthz",
    "status",
    "endpoints",
    "identities",
    "policy",
    "addresses",
    "networks",
    "bpf/endpoints",
    "bpf/ct",
    "services",
    "bpf/lb",
]
API_WRITES = {
    ("PUT", "policy"): {
        "text": "- endpointSelector: {matchLabels: {app: x}}\n",
        "source": "f.yaml",
    },
    ("PUT", "policy/mode"): {"mode": "default"},
    ("POST", "policy/trace"): {
        "src": {"a": "b"},
        "dst": {"c": "d"},
        "dport": 80,
        "protocol": "tcp",
    },
    ("PUT", "services"): {"frontend": "[fd00:5::10]:80", "backends": ["[fdce::2]:80"], "id": 7},
}


@FUZZ
@given(data=st.data())
@pytest.mark.parametrize(("method", "path"), sorted(API_WRITES))
def test_api_write_with_any_body(shared, method, path, data):
    """Random, truncated, mistyped and oversized bodies on every call that takes one."""
    app, datapath, errors = shared
    raw = data.draw(bodies(API_WRITES[(method, path)]), label="body")
    before = snapshot(app, datapath)
    response = app.test_client().open("/v1/" + path, method=method, data=raw)
    body = check_reply(response, errors)
    status = response.status_code
    if len(raw) > MAX_BODY_BYTES:
        assert status == 413
    try:
        decoded = json.loads(raw)
    except (ValueError, RecursionError):
        decoded = None
    if not isinstance(decoded, dict):
        assert status in (400, 413), body
    if status != 200:
        assert snapshot(app, datapath) == before, f"{method} {path} {status} {body} changed state"
    elif path != "policy/trace":
        _undo(app, method, path)


def _undo(app, method, path):
    """Put the shared app back after a fuzzed write that was accepted."""
    client = app.test_client()
    if path == "policy":
        client.delete("/v1/policy?all=true")
    elif path == "policy/mode":
        client.put("/v1/policy/mode", data=_dumps({"mode": "default"}))
    elif path == "services":
        for service in client.get("/v1/services").get_json():
            client.delete(f"/v1/services/{service['id']}")


@FUZZ
@given(
    method=st.sampled_from(["GET", "PUT", "POST", "DELETE", "PATCH"]),
    path=st.sampled_from(API_READS + [w[1] for w in API_WRITES]),
    raw=bodies(None),
)
def test_any_method_on_any_api_path(shared, method, path, raw):
    """Reads ignore the body; a method a path does not have is a JSON 405."""
    app, datapath, errors = shared
    before = snapshot(app, datapath)
    response = app.test_client().open("/v1/" + path, method=method, data=raw)
    check_reply(response, errors)
    if response.status_code != 200:
        assert snapshot(app, datapath) == before
    elif (method, path) in API_WRITES or (method, path) == ("DELETE", "policy"):
        _undo(app, method, path)


@FUZZ
@given(ref=url_text, number=st.integers(min_value=-5, max_value=2**70), query=url_text)
def test_unknown_ids_in_api_paths(shared, ref, number, query):
    """Endpoints, identities, services and policy names that do not exist: 404 (or 400,
    or a 404 from routing for a number that is not a path integer), never a change."""
    app, datapath, errors = shared
    client = app.test_client()
    quoted = urllib.parse.quote(ref, safe="")
    requests = [
        ("GET", f"endpoints/{quoted}"),
        ("GET", f"bpf/policy/{quoted}"),
        ("GET", f"identities/{number}"),
        ("GET", f"services/{number}"),
        ("DELETE", f"services/{number}"),
        ("DELETE", f"policy?name={urllib.parse.quote(query)}"),
        ("DELETE", "policy"),
        ("GET", f"monitor?type=x{urllib.parse.quote(query)}"),
        ("GET", f"monitor?type=drop&from={quoted}"),
    ]
    for method, path in requests:
        before = snapshot(app, datapath)
        response = client.open("/v1/" + path, method=method)
        check_reply(response, errors)
        assert response.status_code in (200, 400, 404), (path, response.status_code)
        if path.startswith("identities/") and 0 < number < 256:
            continue  # reserved identities exist
        assert response.status_code != 200, path
        assert snapshot(app, datapath) == before, path


# --- replays ---------------------------------------------------------------------------


def _endpoint_id(i: int) -> str:
    return f"{i:x}" * 12 + "0" * 52


@st.composite
def replayed_sequences(draw):
    count = draw(st.integers(1, 3), label="endpoints")
    repeats = st.integers(1, 3)
    teardown = []
    for i in range(count):
        teardown += [("leave", i), ("delete_endpoint", i), ("release", i)]
    teardown += [("delete_network", None), ("release_pools", None)]
    order = draw(st.permutations(teardown), label="teardown order")
    return {
        "count": count,
        "repeat": {
            step: draw(repeats, label=str(step))
            for step in ["create_network", "create_endpoint", "join", *order]
        },
        "teardown": order,
    }


@settings(FUZZ, max_examples=25)
@given(plan=replayed_sequences())
def test_replayed_and_reordered_calls_stay_consistent(tmp_path_factory, plan):
    """The Docker sequence with every call repeated and the teardown reordered: replies are
    clean, addresses stay unique, and once Docker's teardown has run nothing is left."""
    with running_app(tmp_path_factory.mktemp("replay")) as (app, datapath, errors):
        empty = snapshot(app, datapath)
        client = app.test_client()

        def post(path, body, expect_ok=False):
            response = client.post("/" + path, data=_dumps(body))
            reply = check_reply(response, errors)
            if expect_ok:
                assert response.status_code == 200, (path, reply)
            return response.status_code, reply

        def repeated(step, path, body):
            results = [post(path, body) for _ in range(plan["repeat"].get(step, 1))]
            return results

        _, pool4 = post("IpamDriver.RequestPool", {"Pool": "", "V6": False}, True)
        _, pool6 = post("IpamDriver.RequestPool", {"Pool": "", "V6": True}, True)
        gateways = {}
        for pool in (pool4, pool6):
            gw = pool["Data"].get("com.docker.network.gateway")
            if gw is None:
                options = {"RequestAddressType": "com.docker.network.gateway"}
                _, reply = post(
                    "IpamDriver.RequestAddress",
                    {"PoolID": pool["PoolID"], "Options": options},
                    True,
                )
                gw = reply["Address"]
            gateways[pool["PoolID"]] = gw
        network = {
            "NetworkID": NET,
            "Options": {"com.docker.network.enable_ipv6": True},
            "IPv4Data": [
                {
                    "AddressSpace": "CiliumLocal",
                    "Pool": pool4["Pool"],
                    "Gateway": gateways[pool4["PoolID"]],
                }
            ],
            "IPv6Data": [
                {
                    "AddressSpace": "CiliumLocal",
                    "Pool": pool6["Pool"],
                    "Gateway": gateways[pool6["PoolID"]],
                }
            ],
        }
        first, *_ = repeated("create_network", "NetworkDriver.CreateNetwork", network)
        assert first[0] == 200, first
        addresses = {}
        for i in range(plan["count"]):
            _, a4 = post("IpamDriver.RequestAddress", {"PoolID": pool4["PoolID"]}, True)
            _, a6 = post("IpamDriver.RequestAddress", {"PoolID": pool6["PoolID"]}, True)
            addresses[i] = (a4["Address"], a6["Address"])
            interface = {"Address": a4["Address"], "AddressIPv6": a6["Address"]}
            body = {"NetworkID": NET, "EndpointID": _endpoint_id(i), "Interface": interface}
            first, *_ = repeated("create_endpoint", "NetworkDriver.CreateEndpoint", body)
            assert first[0] == 200, first
            join = {"NetworkID": NET, "EndpointID": _endpoint_id(i), "SandboxKey": SANDBOX + str(i)}
            first, *_ = repeated("join", "NetworkDriver.Join", join)
            assert first[0] == 200, first
        flat = [a for pair in addresses.values() for a in pair]
        assert len(set(flat)) == len(flat), flat
        store = app.extensions["pycilium"].store
        assert len(store.endpoints()) == plan["count"] == len(datapath.endpoints)
        owned = [a for ep in store.endpoints() for a in (ep.ipv4, ep.ipv6)]
        assert len(set(owned)) == len(owned)

        def teardown(step, replays):
            kind, i = step
            for _ in range(replays):
                if kind == "leave":
                    post("NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": _endpoint_id(i)})
                elif kind == "delete_endpoint":
                    body = {"NetworkID": NET, "EndpointID": _endpoint_id(i)}
                    post("NetworkDriver.DeleteEndpoint", body)
                elif kind == "release":
                    for pool, address in zip((pool4, pool6), addresses[i], strict=True):
                        body = {"PoolID": pool["PoolID"], "Address": address.split("/")[0]}
                        post("IpamDriver.ReleaseAddress", body)
                elif kind == "delete_network":
                    post("NetworkDriver.DeleteNetwork", {"NetworkID": NET})
                else:
                    for pool in (pool4, pool6):
                        gw = gateways[pool["PoolID"]].split("/")[0]
                        post("IpamDriver.ReleaseAddress", {"PoolID": pool["PoolID"], "Address": gw})
                        post("IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]})

        for step in plan["teardown"]:
            teardown(step, plan["repeat"][step])
        # Whatever the order refused, Docker's own order afterwards leaves nothing behind.
        for i in range(plan["count"]):
            for kind in ("leave", "delete_endpoint", "release"):
                teardown((kind, i), 1)
        teardown(("delete_network", None), 1)
        teardown(("release_pools", None), 1)
        after = snapshot(app, datapath)
        # Allocation cursors stay (addresses are not handed out again right away).
        after["meta"] = [(k, v) for k, v in after["meta"] if not k.startswith("cursor:")]
        assert after == empty


# --- regressions the fuzzing found ---------------------------------------------------------


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"a":' * 100_000, b"[" * 5_000 + b"]" * 5_000])
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/NetworkDriver.CreateNetwork"), ("POST", "/IpamDriver.RequestPool")]
    + [(method, "/v1/" + path) for method, path in API_WRITES],
)
def test_deeply_nested_body_is_400(shared, method, path, raw):
    """json.loads raises RecursionError (not a ValueError) past ~1,000 levels: it was an
    unexpected 500 with a traceback on every plugin call and every management write."""
    app, _, errors = shared
    response = app.test_client().open(path, method=method, data=raw)
    assert check_reply(response, errors) == {"Err": "request body is nested too deeply"}
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("policy/trace", b'{"src": {}, "dst": {}, "dport": 1e999}', 400),
        (
            "services",
            b'{"frontend": "[fd00:5::10]:80", "backends": ["[fdce::2]:80"], "port": 1e999}',
            500,
        ),
        (
            "services",
            b'{"frontend": "[fd00:5::10]:80", "backends": ["[fdce::2]:80"], "id": -1e999}',
            500,
        ),
    ],
)
def test_infinite_numbers_are_refused_cleanly(shared, path, body, status):
    """JSON's 1e999 decodes to float('inf'); int(inf) raises OverflowError, which was an
    unexpected 500. Now the refusal the call gives any other non-number (trace: 400; a
    service's unusable value: InvalidArgument, 500)."""
    app, datapath, errors = shared
    before = snapshot(app, datapath)
    method = "POST" if path == "policy/trace" else "PUT"
    response = app.test_client().open("/v1/" + path, method=method, data=body)
    reply = check_reply(response, errors)
    assert response.status_code == status and "is not a number" in reply["Err"]
    assert snapshot(app, datapath) == before

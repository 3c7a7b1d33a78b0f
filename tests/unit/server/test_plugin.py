"""The plugin protocol's shapes, as Docker 20.10 expects them, through the Flask test client."""

import dataclasses
import ipaddress

import pytest

from datapath import DatapathError, Outbound
from driver.server.app import create_app

from ..docker_calls import (
    EP,
    NET,
    SANDBOX,
    create_endpoint,
    make_ipam_network,
    request_address,
)


def test_activate_names_both_interfaces(post):
    assert post("Plugin.Activate") == (200, {"Implements": ["NetworkDriver", "IpamDriver"]})


def test_capabilities_have_exact_fields_and_types(post):
    assert post("NetworkDriver.GetCapabilities") == (
        200,
        {"Scope": "local", "ConnectivityScope": "local"},
    )
    status, reply = post("IpamDriver.GetCapabilities")
    assert status == 200
    assert reply == {"RequiresMACAddress": False, "RequiresRequestReplay": False}
    assert all(type(v) is bool for v in reply.values())
    status, reply = post("IpamDriver.GetDefaultAddressSpaces")
    assert set(reply) == {"LocalDefaultAddressSpace", "GlobalDefaultAddressSpace"}


def test_replies_carry_the_plugin_content_type(client):
    response = client.post("/Plugin.Activate", data=b"")
    assert response.mimetype == "application/vnd.docker.plugins.v1+json"


def test_unknown_path_is_a_json_404(client):
    response = client.post("/NetworkDriver.Frobnicate", data=b"{}")
    assert response.status_code == 404
    assert "Err" in response.get_json(force=True)


def test_wrong_method_is_a_json_405(client):
    response = client.get("/NetworkDriver.CreateNetwork")
    assert response.status_code == 405
    assert "Err" in response.get_json(force=True)


@pytest.mark.parametrize(
    ("path", "raw", "message"),
    [
        ("NetworkDriver.CreateNetwork", b"", "empty request body"),
        ("NetworkDriver.CreateNetwork", b"   ", "empty request body"),
        ("NetworkDriver.CreateNetwork", b"{not json", "not JSON"),
        ("NetworkDriver.CreateNetwork", b"\xff\xfe", "not JSON"),
        ("NetworkDriver.CreateNetwork", b"[]", "is not of type 'object'"),
        ("NetworkDriver.CreateNetwork", b"{}", "'NetworkID' is a required property"),
        ("NetworkDriver.CreateNetwork", b'{"NetworkID": 7}', "NetworkID: 7 is not of type"),
        ("NetworkDriver.CreateEndpoint", b'{"NetworkID": "n", "EndpointID": "x"}', "EndpointID"),
        (
            "NetworkDriver.Join",
            b'{"NetworkID": "n", "EndpointID": "' + EP.encode() + b'"}',
            "Sandbox",
        ),
        ("IpamDriver.RequestPool", b'{"Pool": "", "V6": "yes"}', "V6: 'yes' is not of type"),
        ("IpamDriver.RequestAddress", b'{"PoolID": ""}', "PoolID"),
        ("IpamDriver.ReleasePool", b"null", "is not of type 'object'"),
    ],
)
def test_bad_bodies_get_400_with_err(post, path, raw, message):
    status, reply = post(path, raw=raw)
    assert status == 400
    assert message in reply["Err"]


def test_oversized_body_is_refused_as_json(post):
    status, reply = post("NetworkDriver.CreateNetwork", raw=b"{" + b" " * (2 << 20) + b"}")
    assert status == 413
    assert "Err" in reply


def test_ipam_network_lifecycle(post, datapath, config):
    pool4, pool6 = make_ipam_network(post)
    # A block of the node ranges each, the gateway asked for as Docker does when Data has none.
    range4 = ipaddress.ip_network(pool4["Pool"])
    assert range4.prefixlen == 22 and range4.subnet_of(ipaddress.ip_network(config.node_range4))
    range6 = ipaddress.ip_network(pool6["Pool"])
    assert range6.prefixlen == 118
    assert range6.subnet_of(ipaddress.ip_network(config.cluster_prefix6))
    assert pool4["Data"] == {} and pool6["Data"] == {}
    router4, router6 = range4.network_address + 1, range6.network_address + 1

    addr4 = request_address(post, pool4)
    addr6 = request_address(post, pool6)
    assert addr4.endswith("/32") and addr6.endswith("/128")
    assert ipaddress.ip_interface(addr6).ip != range6.network_address

    status, reply = post(
        "NetworkDriver.CreateEndpoint",
        {
            "NetworkID": NET,
            "EndpointID": EP,
            "Interface": {"Address": addr4, "AddressIPv6": addr6, "MacAddress": ""},
            "Options": {"com.docker.network.endpoint.exposedports": []},
        },
    )
    assert status == 200
    assert set(reply) == {"Interface"}
    assert set(reply["Interface"]) == {"MacAddress"}
    mac = reply["Interface"]["MacAddress"]
    assert int(mac.split(":")[0], 16) & 0b11 == 0b10  # locally administered, unicast
    spec = datapath.endpoints["lxc" + EP[:12]]
    assert (spec.mac, str(spec.ipv6), str(spec.ipv4)) == (
        mac,
        addr6.split("/")[0],
        addr4.split("/")[0],
    )

    status, reply = post(
        "NetworkDriver.Join",
        {"NetworkID": NET, "EndpointID": EP, "SandboxKey": SANDBOX, "Options": {}},
    )
    assert status == 200
    assert reply == {
        "InterfaceName": {"SrcName": "tmp" + EP[:12], "DstPrefix": "eth"},
        "Gateway": str(router4),
        "GatewayIPv6": str(router6),
        "StaticRoutes": [
            {"Destination": f"{router6}/128", "RouteType": 1},
            {"Destination": str(range6), "RouteType": 0, "NextHop": str(router6)},
            {"Destination": f"{router4}/32", "RouteType": 1},
            {"Destination": str(range4), "RouteType": 0, "NextHop": str(router4)},
        ],
        "DisableGatewayService": True,
    }
    assert all(type(r["RouteType"]) is int for r in reply["StaticRoutes"])

    status, reply = post("NetworkDriver.EndpointOperInfo", {"NetworkID": NET, "EndpointID": EP})
    assert status == 200 and not any(k.startswith("com.docker") for k in reply["Value"])

    for call in ("Leave", "DeleteEndpoint", "DeleteEndpoint"):
        assert post(f"NetworkDriver.{call}", {"NetworkID": NET, "EndpointID": EP}) == (200, {})
    assert datapath.endpoints == {}
    for pool, addr in ((pool4, addr4), (pool6, addr6)):
        body = {"PoolID": pool["PoolID"], "Address": addr.split("/")[0]}
        assert post("IpamDriver.ReleaseAddress", body) == (200, {})
        assert post("IpamDriver.ReleasePool", {"PoolID": pool["PoolID"]}) == (200, {})
    assert post("NetworkDriver.DeleteNetwork", {"NetworkID": NET}) == (200, {})
    assert post("NetworkDriver.DeleteNetwork", {"NetworkID": NET}) == (200, {})


def test_docker_given_mac_is_not_echoed(post):
    pools = make_ipam_network(post)
    assert create_endpoint(post, pools, mac="02:42:ac:11:00:09") == (200, {})


def test_repeated_create_endpoint_replays_the_same_reply(post, datapath):
    pool4, pool6 = make_ipam_network(post)
    interface = {
        "Address": request_address(post, pool4),
        "AddressIPv6": request_address(post, pool6),
        "MacAddress": "",
    }
    body = {"NetworkID": NET, "EndpointID": EP, "Interface": interface, "Options": {}}
    first = post("NetworkDriver.CreateEndpoint", body)
    assert first[0] == 200
    assert post("NetworkDriver.CreateEndpoint", body) == first
    assert len(datapath.endpoints) == 1


def test_plain_docker_ipam_network_gets_ipv6_from_the_driver(post, datapath, app):
    body = {
        "NetworkID": NET,
        "Options": {"com.docker.network.enable_ipv6": False, "com.docker.network.generic": {}},
        "IPv4Data": [
            {"AddressSpace": "LocalDefault", "Pool": "172.18.0.0/16", "Gateway": "172.18.0.1/16"}
        ],
        "IPv6Data": [],
    }
    assert post("NetworkDriver.CreateNetwork", body) == (200, {})
    assert "172.18.0.0/16" in datapath.unreachable
    interface = {"Address": "172.18.0.2/16", "AddressIPv6": "", "MacAddress": ""}
    status, reply = post(
        "NetworkDriver.CreateEndpoint",
        {"NetworkID": NET, "EndpointID": EP, "Interface": interface, "Options": {}},
    )
    assert status == 200
    assert set(reply["Interface"]) == {"MacAddress", "AddressIPv6"}
    ipv6 = ipaddress.ip_interface(reply["Interface"]["AddressIPv6"])
    node = app.extensions["pycilium"].node
    assert ipv6.network.prefixlen == 128 and ipv6.ip in node.range6

    _, join = post(
        "NetworkDriver.Join",
        {"NetworkID": NET, "EndpointID": EP, "SandboxKey": SANDBOX, "Options": {}},
    )
    # Docker gave 172.18.0.2/16: the kernel routes the subnet, Docker the default via Gateway.
    assert join["Gateway"] == "172.18.0.1"
    assert join["StaticRoutes"][2:] == [{"Destination": "172.18.0.1/32", "RouteType": 1}]
    assert post("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP}) == (200, {})
    # The driver's own IPv6 address is free again: the next endpoint may take it explicitly.
    store = app.extensions["pycilium"].store
    assert store.address_owner(str(ipv6.ip)) is None
    assert post("NetworkDriver.DeleteNetwork", {"NetworkID": NET}) == (200, {})
    assert "172.18.0.0/16" not in datapath.unreachable


def test_create_endpoint_on_unknown_network_is_a_500(post):
    status, reply = post(
        "NetworkDriver.CreateEndpoint",
        {"NetworkID": NET, "EndpointID": EP, "Interface": {}, "Options": {}},
    )
    assert status == 500
    assert reply == {"Err": f"network {NET} not found"}


def test_join_of_unknown_endpoint_is_a_500(post):
    make_ipam_network(post)
    status, reply = post(
        "NetworkDriver.Join",
        {"NetworkID": NET, "EndpointID": EP, "SandboxKey": SANDBOX, "Options": {}},
    )
    assert status == 500
    assert "not found" in reply["Err"]


def test_unknown_ids_on_deletes_are_fine(post):
    assert post("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP}) == (200, {})
    assert post("NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": EP}) == (200, {})
    assert post("IpamDriver.ReleasePool", {"PoolID": "nope"}) == (200, {})
    assert post("IpamDriver.ReleaseAddress", {"PoolID": "nope", "Address": "10.0.0.1"}) == (
        200,
        {},
    )


def test_datapath_failure_leaves_nothing_behind(post, datapath, app):
    body = {
        "NetworkID": NET,
        "Options": {},
        "IPv4Data": [
            {"AddressSpace": "LocalDefault", "Pool": "172.18.0.0/16", "Gateway": "172.18.0.1/16"}
        ],
        "IPv6Data": [],
    }
    post("NetworkDriver.CreateNetwork", body)
    datapath.fail_create = DatapathError("veth lxceeeeeeeeeeee already exists")
    interface = {"Address": "172.18.0.2/16", "AddressIPv6": "", "MacAddress": ""}
    status, reply = post(
        "NetworkDriver.CreateEndpoint",
        {"NetworkID": NET, "EndpointID": EP, "Interface": interface, "Options": {}},
    )
    assert status == 500
    assert "already exists" in reply["Err"]
    store = app.extensions["pycilium"].store
    assert store.endpoints() == []
    assert store.address_count() == 0


def test_unknown_driver_option_is_refused(post):
    body = {
        "NetworkID": NET,
        "Options": {"com.docker.network.generic": {"colour": "blue"}},
        "IPv4Data": [],
        "IPv6Data": [],
    }
    status, reply = post("NetworkDriver.CreateNetwork", body)
    assert status == 500
    assert "unknown driver option colour" in reply["Err"]


def test_mtu_option_reaches_the_endpoint(post, datapath):
    body = {
        "NetworkID": NET,
        "Options": {"com.docker.network.generic": {"com.docker.network.driver.mtu": "1400"}},
        "IPv4Data": [
            {"AddressSpace": "LocalDefault", "Pool": "172.18.0.0/16", "Gateway": "172.18.0.1/16"}
        ],
        "IPv6Data": [],
    }
    assert post("NetworkDriver.CreateNetwork", body) == (200, {})
    interface = {"Address": "172.18.0.2/16", "AddressIPv6": "", "MacAddress": ""}
    post(
        "NetworkDriver.CreateEndpoint",
        {"NetworkID": NET, "EndpointID": EP, "Interface": interface, "Options": {}},
    )
    assert datapath.endpoints["lxc" + EP[:12]].mtu == 1400


def _plain_network(post, options: dict) -> tuple[int, dict]:
    body = {
        "NetworkID": NET,
        "Options": options,
        "IPv4Data": [
            {"AddressSpace": "LocalDefault", "Pool": "172.18.0.0/16", "Gateway": "172.18.0.1/16"}
        ],
        "IPv6Data": [],
    }
    return post("NetworkDriver.CreateNetwork", body)


@pytest.mark.parametrize(
    ("options", "outbound"),
    [
        ({}, Outbound.MASQUERADE),
        ({"com.docker.network.generic": {"masquerade": "true"}}, Outbound.MASQUERADE),
        ({"com.docker.network.generic": {"masquerade": "false"}}, Outbound.ROUTED),
        ({"com.docker.network.generic": {"masquerade": "0"}}, Outbound.ROUTED),
        # What Docker sends for `docker network create --internal` (20.10 and 26 alike).
        ({"com.docker.network.internal": True}, Outbound.INTERNAL),
        (
            {
                "com.docker.network.internal": True,
                "com.docker.network.generic": {"masquerade": "true"},
            },
            Outbound.INTERNAL,
        ),
    ],
)
def test_outbound_mode_of_the_network_reaches_the_endpoint(post, datapath, options, outbound):
    assert _plain_network(post, options) == (200, {})
    interface = {"Address": "172.18.0.2/16", "AddressIPv6": "", "MacAddress": ""}
    post(
        "NetworkDriver.CreateEndpoint",
        {"NetworkID": NET, "EndpointID": EP, "Interface": interface, "Options": {}},
    )
    assert datapath.endpoints["lxc" + EP[:12]].outbound == outbound


@pytest.mark.parametrize("internal", [{}, {"com.docker.network.internal": True}])
def test_a_masquerade_option_not_true_or_false_is_refused(post, app, internal):
    generic = {"com.docker.network.generic": {"masquerade": "maybe"}}
    status, reply = _plain_network(post, {**internal, **generic})
    assert status == 500
    assert "masquerade='maybe' is not true or false" in reply["Err"]
    assert app.extensions["pycilium"].store.networks() == []


def test_a_restart_restores_endpoints_with_their_networks_outbound_mode(
    post, datapath, config, app
):
    _plain_network(post, {"com.docker.network.internal": True})
    interface = {"Address": "172.18.0.2/16", "AddressIPv6": "", "MacAddress": ""}
    post(
        "NetworkDriver.CreateEndpoint",
        {"NetworkID": NET, "EndpointID": EP, "Interface": interface, "Options": {}},
    )
    app.extensions["pycilium"].close()
    datapath.endpoints["lxc" + EP[:12]] = dataclasses.replace(
        datapath.endpoints["lxc" + EP[:12]], outbound=Outbound.MASQUERADE
    )
    restarted = create_app(config, datapath=datapath, watch_docker=False)
    try:
        assert datapath.endpoints["lxc" + EP[:12]].outbound == Outbound.INTERNAL
    finally:
        restarted.extensions["pycilium"].close()


def test_a_deleted_endpoints_id_is_not_reused_at_once(post, datapath):
    """Its flows are swept in the background: the next endpoint takes the next id."""
    pools = make_ipam_network(post)
    first, second, third = (f"{n}" * 64 for n in "abc")
    assert create_endpoint(post, pools, endpoint_id=first)[0] == 200
    (taken,) = [spec.endpoint_id for spec in datapath.endpoints.values()]
    assert post("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": first})[0] == 200
    assert create_endpoint(post, pools, endpoint_id=second)[0] == 200
    assert create_endpoint(post, pools, endpoint_id=third)[0] == 200
    ids = sorted(spec.endpoint_id for spec in datapath.endpoints.values())
    assert ids == [taken + 1, taken + 2]


# IPv6-only networks (`-o ipv4=false`): NAT64 for IPv4 destinations.


def _ipv6_only_network(post, generic: dict, ipv4_data: list, enable_ipv4=None) -> tuple:
    options = {"com.docker.network.enable_ipv6": True, "com.docker.network.generic": generic}
    if enable_ipv4 is not None:
        options["com.docker.network.enable_ipv4"] = enable_ipv4
    body = {"NetworkID": NET, "Options": options, "IPv4Data": ipv4_data, "IPv6Data": []}
    return post("NetworkDriver.CreateNetwork", body)


IPV4_DATA = [{"AddressSpace": "LocalDefault", "Pool": "172.18.0.0/16", "Gateway": "172.18.0.1/16"}]


def test_ipv6_only_network_on_docker_20_10_uses_dockers_ipv4_as_the_nat64_side(post, datapath):
    """Docker 20.10 insists on an IPv4 address: it becomes the endpoint's NAT64 side, and
    Join gives the container no IPv4 gateway or route, only IPv6 ones (NAT64 prefix too)."""
    assert _ipv6_only_network(post, {"ipv4": "false"}, IPV4_DATA) == (200, {})
    interface = {"Address": "172.18.0.2/16", "AddressIPv6": "", "MacAddress": ""}
    body = {"NetworkID": NET, "EndpointID": EP, "Interface": interface, "Options": {}}
    assert post("NetworkDriver.CreateEndpoint", body)[0] == 200
    spec = datapath.endpoints["lxc" + EP[:12]]
    assert spec.outbound == Outbound.NAT64
    assert spec.ipv4 == ipaddress.IPv4Address("172.18.0.2")
    status, reply = post(
        "NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP, "SandboxKey": SANDBOX}
    )
    assert status == 200
    assert "Gateway" not in reply
    routes = reply["StaticRoutes"]
    assert all(ipaddress.ip_network(r["Destination"]).version == 6 for r in routes)
    router6 = str(spec.router6)
    assert {"Destination": "64:ff9b::/96", "RouteType": 0, "NextHop": router6} in routes
    for half in ("::/1", "8000::/1"):  # ::/0, without colliding with Docker's own
        assert {"Destination": half, "RouteType": 0, "NextHop": router6} in routes


def test_ipv6_only_network_without_an_ipv4_pool_gets_the_nat64_side_from_the_driver(
    post, datapath, app
):
    """Docker 28's `--ipv4=false`: no IPv4 pool and no IPv4 address; the driver gives the
    endpoint one from an IPv4 block of its own, and takes it back with the endpoint."""
    assert _ipv6_only_network(post, {}, [], enable_ipv4=False) == (200, {})
    interface = {"Address": "", "AddressIPv6": "", "MacAddress": ""}
    body = {"NetworkID": NET, "EndpointID": EP, "Interface": interface, "Options": {}}
    status, reply = post("NetworkDriver.CreateEndpoint", body)
    assert status == 200
    assert "Address" not in reply["Interface"]
    spec = datapath.endpoints["lxc" + EP[:12]]
    assert spec.outbound == Outbound.NAT64 and spec.ipv4 is not None
    store = app.extensions["pycilium"].store
    assert store.address_owner(str(spec.ipv4)) == "endpoint:" + EP
    assert post("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP})[0] == 200
    assert store.address_owner(str(spec.ipv4)) is None


@pytest.mark.parametrize(
    "options",
    [
        {"com.docker.network.internal": True},
        {"com.docker.network.generic": {"ipv4": "false", "masquerade": "false"}},
    ],
)
def test_ipv6_only_network_that_cannot_translate_is_refused(post, app, options):
    generic = {"ipv4": "false", **options.pop("com.docker.network.generic", {})}
    body = {
        "NetworkID": NET,
        "Options": {**options, "com.docker.network.generic": generic},
        "IPv4Data": IPV4_DATA,
        "IPv6Data": [],
    }
    status, reply = post("NetworkDriver.CreateNetwork", body)
    assert status == 500 and "IPv6-only" in reply["Err"]
    assert app.extensions["pycilium"].store.networks() == []


def test_an_ipv4_option_not_true_or_false_is_refused(post, app):
    status, reply = _ipv6_only_network(post, {"ipv4": "none"}, IPV4_DATA)
    assert status == 500 and "ipv4='none' is not true or false" in reply["Err"]

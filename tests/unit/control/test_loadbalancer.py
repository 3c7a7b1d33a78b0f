"""Service model and validation through the management API, with the in-memory datapath."""

import ipaddress
import json

import pytest

from datapath import Backend, Frontend
from driver.server.app import create_app

from ..docker_calls import EP, NET, create_endpoint, join, make_ipam_network


def frontends(datapath):
    return {
        str(f): (i, [f"{b.address}:{b.port}" for b in bs]) for f, (i, bs) in datapath.lb.items()
    }


def test_explicit_backends(api, datapath):
    status, result = api(
        "PUT",
        "services",
        {"frontend": "[fd00:5::10]:80", "backends": ["[fdce::2]:8080", "[fdce::3]:8080@2"]},
    )
    assert status == 200, result
    assert result["id"] == 1 and result["frontend"] == "[fd00:5::10]:80/tcp"
    assert result["backends"] == ["[fdce::2]:8080", "[fdce::3]:8080@2"]
    assert frontends(datapath) == {"[fd00:5::10]:80/tcp": (1, ["fdce::2:8080", "fdce::3:8080"])}
    # Updating the same frontend keeps its id.
    status, result = api(
        "PUT", "services", {"frontend": "[fd00:5::10]:80", "backends": ["[fdce::4]:80"]}
    )
    assert result["id"] == 1 and len(api("GET", "services")[1]) == 1


def test_ipv4_udp_and_l3_only_frontends(api, datapath):
    api(
        "PUT",
        "services",
        {"frontend": "10.96.0.10:53", "protocol": "udp", "backends": ["10.0.0.5:53"]},
    )
    api("PUT", "services", {"frontend": "10.96.0.11", "backends": ["10.0.0.6"]})
    assert set(frontends(datapath)) == {"10.96.0.10:53/udp", "10.96.0.11:0/any"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"frontend": "fd00:5::10:80", "backends": ["[fdce::2]:80"]}, "does not parse"),
        ({"frontend": "[fd00:5::10]:99999", "backends": ["[fdce::2]:80"]}, "out of range"),
        ({"frontend": "[fd00:5::10]:80", "protocol": "sctp", "backends": ["[fdce::2]:80"]}, "sctp"),
        ({"frontend": "[fdce::10]:80", "backends": ["[fdce::2]:80"]}, "outside the service ranges"),
        ({"frontend": "[fd00:5::10]:80", "backends": []}, "backend list is empty"),
        ({"frontend": "[fd00:5::10]:80", "backends": ["10.0.0.1:80"]}, "is IPv4"),
        ({"frontend": "[fd00:5::10]:80", "backends": ["[fdce::2]:80@0"]}, "weight"),
        ({"frontend": "[fd00:5::10]:80", "backends": ["[fd00:5::11]:80"]}, "is a VIP"),
        ({"frontend": "[fd00:5::10]:80"}, "either backends or a selector"),
        ({"frontend": "[fd00:5::10]:80", "selector": {}}, "at least one label"),
        ({"frontend": "[fd00:5::10]:80", "backends": ["x"], "id": 70000}, "does not parse"),
        ({"frontend": "[fd00:5::10]:80", "backends": ["[fdce::2]:80"], "id": 70000}, "1-65535"),
    ],
)
def test_bad_services_are_refused_and_change_nothing(api, datapath, body, message):
    status, result = api("PUT", "services", body)
    assert status == 500 and message in result["Err"], result
    assert datapath.lb == {} and api("GET", "services")[1] == []


def test_conflicting_frontend_is_refused(api, datapath):
    api("PUT", "services", {"frontend": "[fd00:5::10]:80", "backends": ["[fdce::2]:80"], "id": 7})
    status, result = api(
        "PUT", "services", {"frontend": "[fd00:5::10]:80", "backends": ["[fdce::3]:80"], "id": 8}
    )
    assert status == 409 and "is service 7" in result["Err"]
    assert frontends(datapath) == {"[fd00:5::10]:80/tcp": (7, ["fdce::2:80"])}


def test_selector_backends_follow_endpoints(api, web_endpoint, datapath, post):
    status, result = api(
        "PUT", "services", {"frontend": "[fd00:5::10]:80", "selector": {"app": "web"}}
    )
    assert status == 200 and result["warnings"] == ["selector app=web matches no endpoint yet"]
    assert frontends(datapath)["[fd00:5::10]:80/tcp"] == (1, [])
    web_endpoint.assign_container(EP, NET, "app", "c" * 64, "web", {"app": "web"})
    ipv6 = web_endpoint.store.get_endpoint(EP).ipv6
    assert frontends(datapath)["[fd00:5::10]:80/tcp"] == (1, [f"{ipv6}:80"])
    post("NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": EP})
    assert frontends(datapath)["[fd00:5::10]:80/tcp"] == (1, [])


def test_services_survive_a_restart(api, app, config, datapath):
    api("PUT", "services", {"frontend": "10.96.0.10:80", "backends": ["10.0.0.5:80"]})
    app.extensions["pycilium"].close()
    datapath.lb.clear()
    again = create_app(config, datapath=datapath, watch_docker=False)
    try:
        assert frontends(datapath) == {"10.96.0.10:80/tcp": (1, ["10.0.0.5:80"])}
        listing = json.loads(again.test_client().get("/v1/services").data)
        assert listing[0]["backends"] == ["10.0.0.5:80"]
    finally:
        again.extensions["pycilium"].close()


def test_delete(api, datapath):
    api("PUT", "services", {"frontend": "10.96.0.10:80", "backends": ["10.0.0.5:80"]})
    assert api("DELETE", "services/1") == (200, {})
    assert datapath.lb == {}
    assert api("DELETE", "services/1")[0] == 404


def test_service_ranges_are_unreachable_and_pools_may_not_overlap_them(datapath, post):
    assert {"fd00:5::/64", "10.96.0.0/16"} <= datapath.unreachable
    status, reply = post(
        "IpamDriver.RequestPool", {"AddressSpace": "CiliumLocal", "Pool": "10.96.5.0/24"}
    )
    assert status == 500 and "overlaps 10.96.0.0/16" in reply["Err"]
    assert ipaddress.ip_network("fd00:5::/64")


def test_moving_a_service_to_another_frontend(api, datapath):
    api("PUT", "services", {"frontend": "10.96.0.10:80", "backends": ["10.0.0.5:80"], "id": 4})
    status, result = api(
        "PUT", "services", {"frontend": "10.96.0.11:80", "backends": ["10.0.0.5:80"], "id": 4}
    )
    assert status == 200, result
    assert set(frontends(datapath)) == {"10.96.0.11:80/tcp"}


def test_sync_removes_datapath_services_the_state_does_not_have(api, app, datapath):
    stale = Frontend(ipaddress.ip_address("10.96.0.99"), 80, 6)
    datapath.lb[stale] = (77, [Backend(ipaddress.ip_address("10.0.0.9"), 80)])
    with app.extensions["pycilium"].lock:
        app.extensions["pycilium"].services.sync()
    assert stale not in datapath.lb


# NAT46: an IPv4 frontend in front of endpoints of an IPv6-only network.

V6ONLY_POOL = [
    {"AddressSpace": "LocalDefault", "Pool": "172.18.0.0/16", "Gateway": "172.18.0.1/16"}
]


def _ipv6_only_endpoints(post, datapath, count: int) -> list:
    """count endpoints of an IPv6-only network (Docker 20.10's form: Docker's IPv4 address
    is the NAT64 side); their specs."""
    options = {
        "com.docker.network.enable_ipv6": True,
        "com.docker.network.generic": {"ipv4": "false"},
    }
    body = {"NetworkID": NET, "Options": options, "IPv4Data": V6ONLY_POOL, "IPv6Data": []}
    assert post("NetworkDriver.CreateNetwork", body) == (200, {})
    specs = []
    for n in range(count):
        endpoint_id = f"{n + 1}" * 64
        interface = {"Address": f"172.18.0.{n + 2}/16", "AddressIPv6": "", "MacAddress": ""}
        body = {"NetworkID": NET, "EndpointID": endpoint_id, "Interface": interface, "Options": {}}
        assert post("NetworkDriver.CreateEndpoint", body)[0] == 200
        specs.append(datapath.endpoints["lxc" + endpoint_id[:12]])
    return specs


def test_an_ipv4_frontend_takes_ipv6_only_endpoints_as_their_nat64_sides(api, datapath, post):
    a, b = _ipv6_only_endpoints(post, datapath, 2)
    body = {"frontend": "10.96.0.20:80", "backends": [f"[{a.ipv6}]:8080", f"[{b.ipv6}]:8080@2"]}
    status, result = api("PUT", "services", body)
    assert status == 200, result
    assert result["backends"] == [f"[{a.ipv6}]:8080", f"[{b.ipv6}]:8080@2"]
    _, backends = datapath.lb[Frontend(ipaddress.ip_address("10.96.0.20"), 80, 6)]
    assert backends == [Backend(a.ipv4, 8080), Backend(b.ipv4, 8080, 2)]


def test_a_gone_nat46_backend_is_left_out(api, datapath, post):
    a, b = _ipv6_only_endpoints(post, datapath, 2)
    body = {"frontend": "10.96.0.20:80", "backends": [f"[{a.ipv6}]:80", f"[{b.ipv6}]:80"]}
    assert api("PUT", "services", body)[0] == 200
    post("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": "1" * 64})
    assert frontends(datapath)["10.96.0.20:80/tcp"] == (1, [f"{b.ipv4}:80"])
    assert api("GET", "services/1")[1]["backends"] == [f"[{a.ipv6}]:80", f"[{b.ipv6}]:80"]


def test_ipv6_backends_that_are_no_ipv6_only_endpoint_are_refused(api, datapath, post):
    create_endpoint(post, make_ipam_network(post))
    dual_stack = next(iter(datapath.endpoints.values()))
    for address in (dual_stack.ipv6, "fdce::99"):
        body = {"frontend": "10.96.0.20:80", "backends": [f"[{address}]:80"]}
        status, result = api("PUT", "services", body)
        assert status == 500 and "NAT46 takes only IPv6 backends" in result["Err"], result
    assert datapath.lb == {}


def test_a_selector_of_an_ipv4_frontend_picks_ipv6_only_endpoints_as_nat64_sides(
    api, app, datapath, post
):
    (a,) = _ipv6_only_endpoints(post, datapath, 1)
    endpoint_id = "1" * 64
    join(post, endpoint_id=endpoint_id)
    plane = app.extensions["pycilium"]
    plane.assign_container(endpoint_id, NET, "v6only", "c" * 64, "v6web", {"app": "v6web"})
    body = {"frontend": "10.96.0.21:80", "selector": {"app": "v6web"}}
    assert api("PUT", "services", body)[0] == 200
    assert frontends(datapath)["10.96.0.21:80/tcp"] == (1, [f"{a.ipv4}:80"])

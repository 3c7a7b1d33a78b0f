"""IPAM through the protocol: subnets, static addresses, reuse, overlaps, concurrency."""

import ipaddress
import json
import threading

import pytest

from driver.server.app import create_app


def pool(post, subnet, v6=False, sub_pool=""):
    status, reply = post(
        "IpamDriver.RequestPool",
        {"AddressSpace": "CiliumLocal", "Pool": subnet, "SubPool": sub_pool, "V6": v6},
    )
    return status, reply


def address(post, pool_id, wanted="", gateway=False):
    options = {"RequestAddressType": "com.docker.network.gateway"} if gateway else None
    return post(
        "IpamDriver.RequestAddress", {"PoolID": pool_id, "Address": wanted, "Options": options}
    )


def test_user_subnet_is_honoured_and_gets_an_unreachable_route(post, datapath):
    status, reply = pool(post, "fd00:cafe::/64", v6=True)
    assert status == 200
    assert reply["Pool"] == "fd00:cafe::/64" and reply["Data"] == {}
    assert "fd00:cafe::/64" in datapath.unreachable
    assert address(post, reply["PoolID"], gateway=True) == (
        200,
        {"Address": "fd00:cafe::1/64", "Data": {}},
    )
    assert address(post, reply["PoolID"]) == (200, {"Address": "fd00:cafe::2/128", "Data": {}})
    assert post("IpamDriver.ReleasePool", {"PoolID": reply["PoolID"]}) == (200, {})
    assert "fd00:cafe::/64" not in datapath.unreachable


def test_static_addresses_are_honoured_once(post):
    _, v6 = pool(post, "fd00:cafe::/64", v6=True)
    assert address(post, v6["PoolID"], "fd00:cafe::99")[1]["Address"] == "fd00:cafe::99/128"
    status, reply = address(post, v6["PoolID"], "fd00:cafe::99")
    assert status == 500 and reply["Err"] == "address fd00:cafe::99 is already in use"
    _, v4 = pool(post, "10.77.0.0/24")
    assert address(post, v4["PoolID"], "10.77.0.7")[1]["Address"] == "10.77.0.7/32"


@pytest.mark.parametrize(
    ("subnet", "v6", "message"),
    [
        ("not-a-subnet", False, "is not a valid subnet"),
        ("10.77.0.1/24", False, "has host bits set"),
        ("fd00:cafe::/64", False, "is not an IPv4 subnet"),
        ("10.77.0.0/31", False, "too small"),
    ],
)
def test_bad_pools_are_refused(post, subnet, v6, message):
    status, reply = pool(post, subnet, v6=v6)
    assert status == 500
    assert message in reply["Err"]


def test_static_address_outside_the_pool_is_refused(post):
    _, v6 = pool(post, "fd00:cafe::/64", v6=True)
    status, reply = address(post, v6["PoolID"], "fd00:beef::1")
    assert (status, reply) == (500, {"Err": "address fd00:beef::1 is not in pool fd00:cafe::/64"})


def test_router_address_is_never_handed_out(post):
    _, v6 = pool(post, "", v6=True)
    router = ipaddress.ip_network(v6["Pool"]).network_address + 1
    status, reply = address(post, v6["PoolID"], str(router))
    assert status == 500 and "reserved" in reply["Err"]
    handed = {address(post, v6["PoolID"])[1]["Address"] for _ in range(5)}
    assert f"{router}/128" not in handed
    assert address(post, v6["PoolID"], gateway=True)[1]["Address"] == f"{router}/118"


def test_overlap_with_host_routes_or_own_pools_is_refused(post, datapath):
    datapath.host_routes = ["192.0.2.0/24"]
    status, reply = pool(post, "192.0.2.0/25")
    assert status == 500 and "overlaps host routes: 192.0.2.0/24" in reply["Err"]
    assert pool(post, "10.77.0.0/24")[0] == 200
    status, reply = pool(post, "10.77.0.0/16")
    assert status == 500 and "overlaps 10.77.0.0/24" in reply["Err"]
    status, reply = pool(post, "10.213.5.0/24")
    assert status == 500 and "overlaps 10.213.0.0/16" in reply["Err"]


def test_sub_pool_limits_allocation(post):
    _, v4 = pool(post, "10.77.0.0/16", sub_pool="10.77.5.0/24")
    assert address(post, v4["PoolID"])[1]["Address"] == "10.77.5.1/32"
    status, reply = pool(post, "10.78.0.0/16", sub_pool="10.79.0.0/24")
    assert status == 500 and "not inside pool" in reply["Err"]


def test_released_addresses_are_reusable_but_not_at_once(post):
    _, v4 = pool(post, "10.77.0.0/29")
    first = address(post, v4["PoolID"])[1]["Address"]
    assert post("IpamDriver.ReleaseAddress", {"PoolID": v4["PoolID"], "Address": first}) == (
        200,
        {},
    )
    second = address(post, v4["PoolID"])[1]["Address"]
    assert second != first
    assert address(post, v4["PoolID"], first.split("/")[0])[0] == 200


def test_exhausted_pool_says_so(post):
    _, v4 = pool(post, "10.77.0.0/29")  # 6 usable addresses
    for _ in range(6):
        assert address(post, v4["PoolID"])[0] == 200
    status, reply = address(post, v4["PoolID"])
    assert (status, reply) == (500, {"Err": "no free address left in 10.77.0.0/29"})


def test_shared_node_range_never_gives_two_networks_the_same_address(post):
    pools = [pool(post, "", v6=True)[1]["PoolID"] for _ in range(2)]
    handed = [address(post, pools[i % 2])[1]["Address"] for i in range(20)]
    assert len(set(handed)) == 20


def raw_post(client, path, body):
    return client.post("/" + path, data=json.dumps(body).encode()).get_json(force=True)


def test_concurrent_requests_get_unique_addresses(app):
    v6 = raw_post(
        app.test_client(),
        "IpamDriver.RequestPool",
        {"AddressSpace": "CiliumLocal", "Pool": "", "V6": True},
    )
    results = []

    def worker():
        client = app.test_client()
        for _ in range(10):
            body = {"PoolID": v6["PoolID"], "Address": "", "Options": None}
            results.append(raw_post(client, "IpamDriver.RequestAddress", body))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    addresses = [r["Address"] for r in results]
    assert len(addresses) == 80 and len(set(addresses)) == 80


def test_state_survives_a_restart(config, datapath, post, app):
    _, v6 = pool(post, "fd00:cafe::/64", v6=True)
    taken = address(post, v6["PoolID"])[1]["Address"]
    app.extensions["pycilium"].close()

    again = create_app(config, datapath=datapath, watch_docker=False)
    try:
        client = again.test_client()
        body = {"PoolID": v6["PoolID"], "Address": taken.split("/")[0], "Options": None}
        assert "already in use" in raw_post(client, "IpamDriver.RequestAddress", body)["Err"]
        body = {"PoolID": v6["PoolID"], "Address": "", "Options": None}
        following = raw_post(client, "IpamDriver.RequestAddress", body)["Address"]
        assert ipaddress.ip_interface(following).ip > ipaddress.ip_interface(taken).ip
    finally:
        again.extensions["pycilium"].close()

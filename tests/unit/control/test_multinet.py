"""Networks of their own: a block of the node ranges each, routes that never collide on a
container joined to several, IPv4 blocks Docker's overlap check accepts, and networks made
before blocks existed."""

import ipaddress

from driver.control.state import Network, Pool

from ..docker_calls import SANDBOX

GATEWAY = {"RequestAddressType": "com.docker.network.gateway"}
NODE4 = ipaddress.ip_network("10.213.0.0/16")


def request_pool(post, v6):
    status, reply = post(
        "IpamDriver.RequestPool", {"AddressSpace": "CiliumLocal", "Pool": "", "V6": v6}
    )
    assert status == 200, reply
    return reply


def request_address(post, pool_id, options=None):
    body = {"PoolID": pool_id, "Address": "", "Options": options}
    status, reply = post("IpamDriver.RequestAddress", body)
    assert status == 200, reply
    return reply["Address"]


def ipam_network(post, network_id):
    """`docker network create -d cilium --ipam-driver cilium --ipv6`, in Docker's order."""
    data = {}
    for v6 in (False, True):
        pool = request_pool(post, v6)
        gateway = request_address(post, pool["PoolID"], GATEWAY)
        data[v6] = [{"AddressSpace": "CiliumLocal", "Pool": pool["Pool"], "Gateway": gateway}]
        data[v6][0]["PoolID"] = pool["PoolID"]
    create_network(post, network_id, data[False], data[True])
    return data[False][0], data[True][0]


def plain_network(post, network_id, subnet4):
    """`docker network create -d cilium`: Docker's own IPAM, IPv4 only."""
    gateway = f"{ipaddress.ip_network(subnet4).network_address + 1}/16"
    data = [{"AddressSpace": "LocalDefault", "Pool": subnet4, "Gateway": gateway}]
    create_network(post, network_id, data, [])


def create_network(post, network_id, ipv4_data, ipv6_data):
    options = {"com.docker.network.enable_ipv6": bool(ipv6_data), "com.docker.network.generic": {}}
    body = {
        "NetworkID": network_id,
        "Options": options,
        "IPv4Data": [{k: v for k, v in d.items() if k != "PoolID"} for d in ipv4_data],
        "IPv6Data": [{k: v for k, v in d.items() if k != "PoolID"} for d in ipv6_data],
    }
    assert post("NetworkDriver.CreateNetwork", body) == (200, {})


def attach(post, network_id, endpoint_id, address4, address6=""):
    interface = {"Address": address4, "AddressIPv6": address6, "MacAddress": ""}
    body = {"NetworkID": network_id, "EndpointID": endpoint_id, "Interface": interface}
    status, reply = post("NetworkDriver.CreateEndpoint", {**body, "Options": {}})
    assert status == 200, reply
    body = {"NetworkID": network_id, "EndpointID": endpoint_id, "SandboxKey": SANDBOX}
    status, reply = post("NetworkDriver.Join", {**body, "Options": {}})
    assert status == 200, reply
    return reply


def test_each_ipam_network_gets_its_own_subnets_and_gateways(post, config):
    a4, a6 = ipam_network(post, "a" * 64)
    b4, b6 = ipam_network(post, "b" * 64)
    for pool in (a4, b4):
        subnet = ipaddress.ip_network(pool["Pool"])
        assert subnet.prefixlen == 22 and subnet.subnet_of(NODE4)
        assert pool["Gateway"] == f"{subnet.network_address + 1}/22"
    for pool in (a6, b6):
        subnet = ipaddress.ip_network(pool["Pool"])
        assert subnet.prefixlen == 118
        assert subnet.subnet_of(ipaddress.ip_network(config.cluster_prefix6))
        assert pool["Gateway"] == f"{subnet.network_address + 1}/118"
    assert a4["Pool"] != b4["Pool"] and a6["Pool"] != b6["Pool"]


def test_routes_of_several_networks_on_one_container_never_collide(post):
    a4, a6 = ipam_network(post, "a" * 64)
    b4, b6 = ipam_network(post, "b" * 64)
    plain_network(post, "p" * 64, "172.18.0.0/16")
    plain_network(post, "q" * 64, "172.19.0.0/16")
    replies = [
        attach(
            post, net, ep, request_address(post, p4["PoolID"]), request_address(post, p6["PoolID"])
        )
        for net, ep, p4, p6 in (("a" * 64, "1" * 64, a4, a6), ("b" * 64, "2" * 64, b4, b6))
    ]
    replies.append(attach(post, "p" * 64, "3" * 64, "172.18.0.2/16"))
    replies.append(attach(post, "q" * 64, "4" * 64, "172.19.0.2/16"))
    destinations = [r["Destination"] for reply in replies for r in reply["StaticRoutes"]]
    assert len(destinations) == len(set(destinations))
    assert not {"0.0.0.0/0", "::/0"} & set(destinations)
    # Docker makes the default routes through the Gateway of the network it picks.
    assert len({reply["Gateway"] for reply in replies}) == 4
    assert len({reply["GatewayIPv6"] for reply in replies}) == 4


def test_plain_networks_take_an_ipv6_block_each(post, app):
    plain_network(post, "p" * 64, "172.18.0.0/16")
    plain_network(post, "q" * 64, "172.19.0.0/16")
    store = app.extensions["pycilium"].store
    p, q = store.get_network("p" * 64), store.get_network("q" * 64)
    assert p.pool6 != q.pool6
    reply = attach(post, "p" * 64, "1" * 64, "172.18.0.2/16")
    ipv6 = ipaddress.ip_address(store.get_endpoint("1" * 64).ipv6)
    assert ipv6 in ipaddress.ip_network(p.pool6)
    assert reply["GatewayIPv6"] == str(ipaddress.ip_network(p.pool6).network_address + 1)
    assert {"Destination": p.pool6, "RouteType": 0, "NextHop": reply["GatewayIPv6"]} in reply[
        "StaticRoutes"
    ]
    # The block goes with the network: the next one may take it.
    assert post("NetworkDriver.DeleteNetwork", {"NetworkID": "p" * 64}) == (200, {})
    plain_network(post, "r" * 64, "172.20.0.0/16")
    assert store.get_network("r" * 64).pool6 == p.pool6


def covered(unreachable):
    return [
        n for n in map(ipaddress.ip_network, unreachable) if n.version == 4 and n.subnet_of(NODE4)
    ]


def test_a_pending_ipv4_block_is_left_out_of_the_unreachable_routes_until_its_gateway(
    post, datapath
):
    assert covered(datapath.unreachable) == [NODE4]
    pool = request_pool(post, v6=False)
    block = ipaddress.ip_network(pool["Pool"])
    # What Docker's overlap check sees: no route over the block, every other part covered.
    around = covered(datapath.unreachable)
    assert not any(n.overlaps(block) for n in around)
    assert sum(n.num_addresses for n in around) + block.num_addresses == NODE4.num_addresses
    request_address(post, pool["PoolID"], GATEWAY)
    assert covered(datapath.unreachable) == [NODE4]
    # A pool Docker gives back before asking for its gateway (its overlap loop) is covered too.
    pending = request_pool(post, v6=False)
    assert covered(datapath.unreachable) != [NODE4]
    assert post("IpamDriver.ReleasePool", {"PoolID": pending["PoolID"]}) == (200, {})
    assert covered(datapath.unreachable) == [NODE4]


def test_two_pending_blocks_are_both_left_out(post, datapath):
    first = ipaddress.ip_network(request_pool(post, v6=False)["Pool"])
    second = ipaddress.ip_network(request_pool(post, v6=False)["Pool"])
    around = covered(datapath.unreachable)
    assert not any(n.overlaps(first) or n.overlaps(second) for n in around)
    total = sum(n.num_addresses for n in around) + first.num_addresses + second.num_addresses
    assert total == NODE4.num_addresses


def test_blocks_run_out_with_a_clear_message(post):
    for _ in range(62):
        request_pool(post, v6=True)
    status, reply = post(
        "IpamDriver.RequestPool", {"AddressSpace": "CiliumLocal", "Pool": "", "V6": True}
    )
    assert status == 500 and "room for 62 networks" in reply["Err"]


def test_networks_made_before_blocks_keep_their_addresses_apart(app, post):
    """State of an earlier version: a pool and a plain network spanning the node range."""
    plane = app.extensions["pycilium"]
    node = plane.node
    legacy = Pool("node6/old", str(node.range6), str(node.range6), 6, f"{node.router6}/128", True)
    old_net = Network(
        "o" * 64,
        "172.18.0.0/16",
        "172.18.0.1",
        str(node.range6),
        str(node.router6),
        True,
        1500,
        ("172.18.0.0/16",),
    )
    with plane.store.transaction():
        plane.store.add_pool(legacy)
        plane.store.add_network(old_net)
        # An old container's address where the first block would be.
        plane.store.add_address(
            str(node.blocks(6)[0].network_address + 9), str(node.range6), "pool:node6/old"
        )
    pool = request_pool(post, v6=True)
    block = ipaddress.ip_network(pool["Pool"])
    assert block != node.blocks(6)[0]
    handed = [ipaddress.ip_interface(request_address(post, "node6/old")).ip for _ in range(5)]
    assert not any(ip in block for ip in handed)
    # The old network still joins, without a route over the whole node range.
    reply = attach(post, "o" * 64, "1" * 64, "172.18.0.2/16")
    assert reply["GatewayIPv6"] == str(node.router6)
    assert str(node.range6) not in [r["Destination"] for r in reply["StaticRoutes"]]

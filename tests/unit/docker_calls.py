"""Plugin calls in the order Docker makes them, for tests that need networks and endpoints."""

NET = "n" * 64
EP = "e" * 12 + "0" * 52
SANDBOX = "/var/run/docker/netns/0123456789ab"


def make_ipam_network(post, subnet6="", subnet4=""):
    """What `docker network create -d cilium --ipam-driver cilium --ipv6` sends, in order."""
    _, pool4 = post(
        "IpamDriver.RequestPool", {"AddressSpace": "CiliumLocal", "Pool": subnet4, "V6": False}
    )
    _, pool6 = post(
        "IpamDriver.RequestPool", {"AddressSpace": "CiliumLocal", "Pool": subnet6, "V6": True}
    )
    gateways = {}
    for pool in (pool4, pool6):
        gw = pool["Data"].get("com.docker.network.gateway")
        if gw is None:
            _, reply = post(
                "IpamDriver.RequestAddress",
                {
                    "PoolID": pool["PoolID"],
                    "Address": "",
                    "Options": {"RequestAddressType": "com.docker.network.gateway"},
                },
            )
            gw = reply["Address"]
        gateways[pool["PoolID"]] = gw
    status, reply = post(
        "NetworkDriver.CreateNetwork",
        {
            "NetworkID": NET,
            "Options": {"com.docker.network.enable_ipv6": True, "com.docker.network.generic": {}},
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
        },
    )
    assert (status, reply) == (200, {})
    return pool4, pool6


def request_address(post, pool, address=""):
    status, reply = post(
        "IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": address, "Options": None}
    )
    assert status == 200, reply
    return reply["Address"]


def create_endpoint(post, pools, endpoint_id=EP, mac=""):
    """Addresses from both pools, then CreateEndpoint, as `docker run` does."""
    pool4, pool6 = pools
    interface = {
        "Address": request_address(post, pool4),
        "AddressIPv6": request_address(post, pool6),
        "MacAddress": mac,
    }
    body = {"NetworkID": NET, "EndpointID": endpoint_id, "Interface": interface, "Options": {}}
    return post("NetworkDriver.CreateEndpoint", body)


def join(post, endpoint_id=EP, options=None):
    body = {"NetworkID": NET, "EndpointID": endpoint_id, "SandboxKey": SANDBOX}
    return post("NetworkDriver.Join", {**body, "Options": options or {}})

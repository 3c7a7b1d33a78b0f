"""A stand-in for one node's Docker, as far as cluster networks need it: network create
calls the node's driver as dockerd does (IPAM pools and gateways, then CreateNetwork) and
reports the new network as the events watcher would; remove calls DeleteNetwork and fails
as Docker does when the driver refuses. Containers are endpoints made through the plugin
protocol with their container learnt as the watcher learns it."""

import ipaddress
import threading
import uuid

import docker.errors

GATEWAY = {"RequestAddressType": "com.docker.network.gateway"}


class DockerStandIn:
    def __init__(self, node, plugin_name: str = "cilium"):
        self.node = node
        self.plugin_name = plugin_name
        self.networks_by_id: dict[str, dict] = {}
        self.pools: dict[str, dict] = {}  # network id -> {4: pool id, 6: pool id}
        self.created: list[dict] = []  # create_network's arguments, in order
        self.removed: list[str] = []  # remove_network's network ids, in order
        self.lock = threading.Lock()
        self.next_default = 0

    # The Docker API calls the driver makes

    def networks(self, names=None):
        with self.lock:
            listed = list(self.networks_by_id.values())
        return [n for n in listed if not names or any(name in n["Name"] for name in names)]

    def create_network(
        self, name, driver, options, ipam, internal=False, labels=None, enable_ipv6=False
    ):
        self.created.append({"name": name, "ipam": ipam, "options": options})
        if any(n["Name"] == name for n in self.networks()):
            raise docker.errors.APIError(f"network with name {name} already exists")
        network_id = uuid.uuid4().hex * 2
        ours = ipam["Driver"] == self.plugin_name
        configs = {4: None, 6: None}
        for pool in ipam.get("Config") or []:
            configs[ipaddress.ip_network(pool["Subnet"]).version] = pool
        data, pool_ids, inspect_configs = {}, {}, []
        for version in (4, 6) if enable_ipv6 else (4,):
            config = configs[version] or {}
            if ours:
                pool_ids[version], data[version] = self._own_pool(version, config)
            elif version == 4:
                data[4] = self._default_pool(config)
            else:
                continue
            inspect_configs.append(
                {
                    "Subnet": data[version]["Pool"],
                    "Gateway": data[version]["Gateway"].split("/")[0],
                    **({"IPRange": config["IPRange"]} if config.get("IPRange") else {}),
                }
            )
        body = {
            "NetworkID": network_id,
            "Options": {
                "com.docker.network.enable_ipv6": enable_ipv6,
                "com.docker.network.generic": options or {},
                **({"com.docker.network.internal": True} if internal else {}),
            },
            "IPv4Data": [data[4]],
            "IPv6Data": [data[6]] if 6 in data else [],
        }
        status, reply = self.node.post("NetworkDriver.CreateNetwork", body)
        if status != 200:
            raise docker.errors.APIError(reply["Err"])
        network = {
            "Id": network_id,
            "Name": name,
            "Driver": driver,
            "EnableIPv6": enable_ipv6,
            "Internal": internal,
            "Options": options or {},
            "Labels": labels or {},
            "IPAM": {
                "Driver": ipam["Driver"],
                "Options": ipam.get("Options") or {},
                "Config": inspect_configs,
            },
        }
        with self.lock:
            self.networks_by_id[network_id] = network
            self.pools[network_id] = pool_ids
        # The events watcher's `network create`.
        self.node.plane.network_seen(network)
        return {"Id": network_id}

    def remove_network(self, network_id):
        self.removed.append(network_id)
        status, reply = self.node.post("NetworkDriver.DeleteNetwork", {"NetworkID": network_id})
        if status != 200:
            raise docker.errors.APIError(reply["Err"])
        with self.lock:
            del self.networks_by_id[network_id]

    # What a user does

    def network(self, name: str) -> dict:
        return next(n for n in self.networks() if n["Name"] == name)

    def run(self, name: str, number: int, labels: dict) -> str:
        """A container on network name (this driver's IPAM): its endpoint id."""
        network = self.network(name)
        pools = self.pools[network["Id"]]
        endpoint_id = uuid.uuid4().hex * 2
        interface = {"MacAddress": ""}
        for version, field in ((4, "Address"), (6, "AddressIPv6")):
            if version in pools:
                body = {"PoolID": pools[version], "Address": "", "Options": None}
                status, reply = self.node.post("IpamDriver.RequestAddress", body)
                assert status == 200, reply
                interface[field] = reply["Address"]
        body = {"NetworkID": network["Id"], "EndpointID": endpoint_id, "Interface": interface}
        assert self.node.post("NetworkDriver.CreateEndpoint", {**body, "Options": {}})[0] == 200
        join = {"NetworkID": network["Id"], "EndpointID": endpoint_id, "SandboxKey": "/x"}
        assert self.node.post("NetworkDriver.Join", {**join, "Options": {}})[0] == 200
        self.node.plane.assign_container(
            endpoint_id, network["Id"], name, endpoint_id, f"c{number}", labels
        )
        return endpoint_id

    def stop(self, name: str, endpoint_id: str) -> None:
        body = {"NetworkID": self.network(name)["Id"], "EndpointID": endpoint_id}
        assert self.node.post("NetworkDriver.Leave", body)[0] == 200
        assert self.node.post("NetworkDriver.DeleteEndpoint", body)[0] == 200

    def _own_pool(self, version: int, config: dict) -> tuple[str, dict]:
        request = {
            "AddressSpace": "CiliumLocal",
            "Pool": config.get("Subnet", ""),
            "SubPool": config.get("IPRange", ""),
            "V6": version == 6,
        }
        status, pool = self.node.post("IpamDriver.RequestPool", request)
        if status != 200:
            raise docker.errors.APIError(pool["Err"])
        gateway = pool["Data"].get("com.docker.network.gateway")
        if gateway is None:
            body = {"PoolID": pool["PoolID"], "Address": config.get("Gateway", "")}
            status, reply = self.node.post(
                "IpamDriver.RequestAddress", {**body, "Options": GATEWAY}
            )
            if status != 200:
                raise docker.errors.APIError(reply["Err"])
            gateway = reply["Address"]
        data = {"AddressSpace": "CiliumLocal", "Pool": pool["Pool"], "Gateway": gateway}
        return pool["PoolID"], data

    def _default_pool(self, config: dict) -> dict:
        """Docker's own IPAM: the subnet asked for, else one of its own."""
        subnet = config.get("Subnet") or f"198.51.100.{64 * self.next_default}/26"
        self.next_default += 1
        network = ipaddress.ip_network(subnet)
        gateway = config.get("Gateway") or str(network.network_address + 1)
        return {
            "AddressSpace": "LocalDefault",
            "Pool": subnet,
            "Gateway": f"{gateway}/{network.prefixlen}",
        }

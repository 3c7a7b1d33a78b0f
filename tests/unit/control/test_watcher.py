"""The Docker events watcher reports what it learns through its Listener alone."""

from datapath import DatapathError
from driver.control.watcher import DockerWatcher, Listener

from ..docker_calls import EP, NET

CONTAINER = "c" * 64


class FakeDocker:
    """Docker's answers for one network of ours, with one container, and one of another driver."""

    def networks(self):
        ipam = {"Driver": "cilium", "Config": [{"Subnet": "10.1.0.0/24"}]}
        return [{"Id": NET, "Driver": "cilium", "IPAM": ipam}, {"Id": "b" * 64, "Driver": "bridge"}]

    def inspect_network(self, network_id):
        assert network_id == NET
        return {
            "Id": NET,
            "Name": "app",
            "IPAM": {"Config": [{"Subnet": "10.1.0.0/24", "Gateway": "10.1.0.1"}]},
            "Containers": {CONTAINER: {"EndpointID": EP, "IPv4Address": "10.1.0.2/24"}},
        }

    def inspect_container(self, container_id):
        assert container_id == CONTAINER
        networks = {
            "app": {"NetworkID": NET, "EndpointID": EP, "Aliases": ["www", "0123456789ab"]},
            "bridge": {"NetworkID": "b" * 64, "EndpointID": "f" * 64, "Aliases": None},
        }
        return {
            "Name": "/web",
            "Config": {"Labels": {"app": "web"}},
            "NetworkSettings": {"Networks": networks},
        }


def test_resync_reports_containers_then_what_docker_has():
    heard = []
    listener = Listener(
        network_ids=lambda: {NET},
        assign_container=lambda *args: heard.append(("assign", args)),
        forget_what_docker_lost=lambda *args: heard.append(("forget", args)),
        network_seen=lambda network: heard.append(("seen", network["Name"])),
        endpoint_aliases=lambda *args: heard.append(("aliases", args)),
    )
    DockerWatcher(listener, "unix:///nowhere.sock", "cilium").resync(FakeDocker())
    assert heard == [
        ("assign", (EP, NET, "app", CONTAINER, "web", {"app": "web"})),
        ("aliases", (EP, ["0123456789ab", "www"])),
        ("forget", ({NET, "b" * 64}, {"10.1.0.1", "10.1.0.2"}, {"10.1.0.0/24"})),
    ]


class TwoContainers(FakeDocker):
    def inspect_network(self, network_id):
        network = super().inspect_network(network_id)
        network["Containers"] = {
            "d" * 64: {"EndpointID": "e" * 64, "IPv4Address": "10.1.0.3/24"},
            **network["Containers"],
        }
        return network

    def inspect_container(self, container_id):
        if container_id == "d" * 64:
            return {"Name": "/broken", "Config": {"Labels": {}}}
        return super().inspect_container(container_id)


def test_one_endpoint_that_cannot_be_assigned_does_not_stop_the_others():
    """An error assigning one container's identity (say a full policy map) used to end
    the resync, and with it the watcher thread: no later container got an identity."""
    heard = []

    def assign(endpoint_id, *args):
        if endpoint_id == "e" * 64:
            raise DatapathError("policy map is full")
        heard.append(("assign", endpoint_id))

    listener = Listener(
        network_ids=lambda: {NET},
        assign_container=assign,
        forget_what_docker_lost=lambda *args: heard.append(("forget", args[0])),
        network_seen=lambda network: None,
        endpoint_aliases=lambda *args: None,
    )
    DockerWatcher(listener, "unix:///nowhere.sock", "cilium").resync(TwoContainers())
    assert heard == [("assign", EP), ("forget", {NET, "b" * 64})]


def test_a_network_of_this_driver_created_is_seen_with_its_name():
    """A network's name (and, in cluster mode, its record in etcd) comes from the event."""
    seen = []
    listener = Listener(
        network_ids=lambda: {NET},
        assign_container=lambda *args: None,
        forget_what_docker_lost=lambda *args: None,
        network_seen=lambda network: seen.append(network["Name"]),
        endpoint_aliases=lambda *args: None,
    )
    watcher = DockerWatcher(listener, "unix:///nowhere.sock", "cilium")
    for driver in ("bridge", "cilium"):
        event = {
            "Type": "network",
            "Action": "create",
            "Actor": {"ID": NET, "Attributes": {"name": "app", "type": driver}},
        }
        watcher._dispatch(FakeDocker(), event)
    assert seen == ["app"], "only this driver's network"


def test_a_started_containers_aliases_on_our_networks_are_reported():
    heard = []
    listener = Listener(
        network_ids=lambda: {NET},
        assign_container=lambda *args: None,
        forget_what_docker_lost=lambda *args: None,
        network_seen=lambda network: None,
        endpoint_aliases=lambda *args: heard.append(args),
    )
    event = {"Type": "container", "Action": "start", "Actor": {"ID": CONTAINER}}
    DockerWatcher(listener, "unix:///nowhere.sock", "cilium")._dispatch(FakeDocker(), event)
    assert heard == [(EP, ["0123456789ab", "www"])], "not the bridge network's"

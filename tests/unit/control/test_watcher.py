"""The Docker events watcher reports what it learns through its Listener alone."""

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
        return {"Name": "/web", "Config": {"Labels": {"app": "web"}}}


def test_resync_reports_containers_then_what_docker_has():
    heard = []
    listener = Listener(
        network_ids=lambda: {NET},
        assign_container=lambda *args: heard.append(("assign", args)),
        forget_what_docker_lost=lambda *args: heard.append(("forget", args)),
    )
    DockerWatcher(listener, "unix:///nowhere.sock", "cilium").resync(FakeDocker())
    assert heard == [
        ("assign", (EP, NET, "app", CONTAINER, "web", {"app": "web"})),
        ("forget", ({NET, "b" * 64}, {"10.1.0.1", "10.1.0.2"}, {"10.1.0.0/24"})),
    ]

"""The control plane: every use case takes its lock, one snapshot serves /v1/status and the
metrics, and the Docker events watcher is handed use cases, not the plane."""

import threading

import pytest

from driver.control import plane as plane_module
from driver.control.watcher import Listener

from ..docker_calls import EP, NET


def test_one_snapshot_for_status_and_metrics(web_endpoint, api, client):
    before = web_endpoint.snapshot()
    assert (before.networks, before.endpoints, before.waiting) == (1, 1, 1)
    assert before.identities == {"reserved": 4, "endpoint": 0, "cidr": 0}
    web_endpoint.assign_container(EP, NET, "app", "c" * 64, "web", {"app": "web"})
    after = web_endpoint.snapshot()
    assert (after.waiting, after.identities["endpoint"]) == (0, 1)
    _, status = api("GET", "status")
    assert (status["endpoints"], status["waiting"], status["identities"]) == (1, 0, 1)
    scraped = client.get("/metrics").get_data(as_text=True)
    assert 'pycilium_identities{kind="endpoint"} 1.0' in scraped


@pytest.mark.parametrize(
    ("use_case", "args"),
    [
        ("snapshot", ()),
        ("network_ids", ()),
        ("endpoint_info", (EP,)),
        ("list_endpoints", ()),
        ("get_endpoint", ("1",)),
        ("list_identities", ()),
        ("bpf_policy", ("1",)),
        ("bpf_lb", ()),
        ("get_policy", ()),
        ("list_services", ()),
        ("list_addresses", ()),
        ("list_networks", ()),
        ("bpf_ct", ()),
    ],
)
def test_use_cases_wait_for_the_lock(web_endpoint, use_case, args):
    done = threading.Event()

    def call():
        try:
            getattr(web_endpoint, use_case)(*args)
        finally:
            done.set()

    with web_endpoint.lock:
        thread = threading.Thread(target=call)
        thread.start()
        assert not done.wait(0.05)
    thread.join(timeout=5)
    assert done.is_set()


class _Watcher:
    def __init__(self, listener, docker_host, plugin_name):
        self.made_with = (listener, docker_host, plugin_name)
        self.connected = threading.Event()
        self.stopped = False

    def start(self):
        pass

    def stop(self):
        self.stopped = True


def test_the_watcher_gets_use_cases_of_the_plane(app, config, monkeypatch):
    plane = app.extensions["pycilium"]
    monkeypatch.setattr(plane_module, "DockerWatcher", _Watcher)
    plane.watch_docker()
    watcher = plane.watcher
    listener, docker_host, plugin_name = watcher.made_with
    assert isinstance(listener, Listener)
    assert (docker_host, plugin_name) == (config.docker_host, config.plugin_name)
    assert listener.network_ids() == set()
    plane.close()
    assert watcher.stopped

"""driver.control.uninstall: when it refuses, and what it takes away. The host side
(datapath.uninstall.remove_from_host) is recorded here; tests/e2e/test_uninstall.py runs it."""

import os
import socket
from types import SimpleNamespace

import docker.errors
import pytest

from driver.config import Config
from driver.control import uninstall as module
from driver.control.state import Network, Pool, Store
from driver.errors import Conflict


@pytest.fixture
def config(tmp_path):
    return Config(
        plugin_name="pycilium-unit",
        plugin_dir=str(tmp_path / "plugins"),
        api_socket=str(tmp_path / "api" / "api.sock"),
        state_dir=str(tmp_path / "state"),
        bpf_pin_dir=str(tmp_path / "pins"),
        veth_prefix="lxq",
    )


@pytest.fixture
def host(monkeypatch):
    """What uninstall asked of the host: (pin dir, veth prefix, ranges) per call."""
    calls = []

    def remove_from_host(pin_dir, veth_prefix, ranges):
        calls.append((pin_dir, veth_prefix, ranges))
        return ["route 10.213.0.0/16"]

    monkeypatch.setattr(module, "remove_from_host", remove_from_host)
    return calls


class FakeDocker:
    def __init__(self, *networks, error=None):
        self.error = error
        self.listed = [
            SimpleNamespace(name=name, attrs={"Driver": driver, "IPAM": {"Driver": ipam}})
            for name, driver, ipam in networks
        ]
        self.networks = self

    def list(self):
        if self.error:
            raise self.error
        return self.listed


def unix_socket(path, listening):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    if listening:
        sock.listen()
    return sock


@pytest.mark.parametrize("which", ["plugin_socket", "api_socket"])
def test_refuses_while_the_driver_answers(config, host, which):
    path = getattr(config, which)
    with (
        unix_socket(path, listening=True),
        pytest.raises(Conflict, match=f"still answers on {path}"),
    ):
        module.uninstall(config, FakeDocker())
    assert host == []


def test_refuses_while_docker_has_networks_of_the_driver_and_names_them(config, host):
    client = FakeDocker(
        ("web", "pycilium-unit", "pycilium-unit"),
        ("db", "bridge", "pycilium-unit"),
        ("other", "bridge", "default"),
        ("cilium-net", "cilium", "cilium"),
    )
    with pytest.raises(Conflict, match=r"networks of the pycilium-unit driver: db, web;"):
        module.uninstall(config, client)
    assert host == []


def test_refuses_when_docker_cannot_be_asked(config, host):
    client = FakeDocker(error=docker.errors.DockerException("connection refused"))
    with pytest.raises(Conflict, match="--without-docker"):
        module.uninstall(config, client)
    assert host == []


def test_removes_the_ranges_of_config_and_state_the_state_and_stale_sockets(config, host):
    store = Store(config.state_db)
    store.open()
    with store.transaction():
        store.add_pool(Pool("p", "10.50.0.0/24", "10.50.0.0/24", 4, None, False))
        store.add_pool(Pool("n", "0.0.0.0/0", "10.213.0.0/16", 4, None, True))
        store.add_network(
            Network("n1", "172.30.0.0/16", None, None, None, True, 1500, ("172.30.0.0/16",))
        )
    store.close()
    stale = [
        unix_socket(path, listening=False) for path in (config.plugin_socket, config.api_socket)
    ]
    for sock in stale:
        sock.close()

    removed = module.uninstall(config, None)

    ((pin_dir, prefix, ranges),) = host
    assert (pin_dir, prefix) == (config.bpf_pin_dir, "lxq")
    assert sorted(ranges) == sorted(
        [
            "fdce:1c00::/64",
            "10.213.0.0/16",
            "fd00:5::/64",
            "10.96.0.0/16",
            "10.50.0.0/24",
            "172.30.0.0/16",
        ]
    )
    assert not os.path.exists(config.state_dir)
    assert not os.path.exists(config.plugin_socket) and not os.path.exists(config.api_socket)
    assert f"socket {config.plugin_socket}" in removed
    assert f"state directory {config.state_dir}" in removed


def test_leaves_what_is_not_its_own_in_the_state_directory(config, host):
    os.makedirs(config.state_dir)
    open(config.state_db, "w").close()
    mine = os.path.join(config.state_dir, "notes.txt")
    open(mine, "w").close()
    module.uninstall(config, None)
    assert os.listdir(config.state_dir) == ["notes.txt"]


def test_a_second_uninstall_finds_nothing_but_the_host_side(config, host):
    module.uninstall(config, None)
    assert module.uninstall(config, None) == ["route 10.213.0.0/16"]


def test_removes_the_saved_policies_a_start_refused(config, host):
    os.makedirs(config.state_dir)
    open(config.state_db, "w").close()
    refused = os.path.join(config.state_dir, "refused-policy-r7.json")
    open(refused, "w").close()
    removed = module.uninstall(config, None)
    assert f"state {refused}" in removed
    assert not os.path.exists(config.state_dir)

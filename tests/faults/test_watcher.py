"""The driver's Docker events watcher losing its connection: what happened meanwhile is
learned from a full listing when it reconnects, and identities end up right.

The watcher reads faultd through a proxy the test can cut, so the gap is certain: plugin calls
still reach the driver directly, Docker's events do not."""

import contextlib
import os
import socket
import threading
import time
import uuid

import pytest

from tests.e2e.driver_process import DriverProcess

from .conftest import FAULT_SETTINGS, FAULTD_SOCKET, assert_consistent

PROXY_SOCKET = "/run/pycilium-fault/docker-proxy.sock"


class SocketProxy:
    """Forwards unix-socket connections to faultd until cut: then every connection drops and
    new ones are refused, until restored."""

    def __init__(self, path: str, target: str):
        self.path, self.target = path, target
        self._open: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def restore(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen()
        listener.settimeout(0.2)
        self._stop.clear()
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()

    def cut(self) -> None:
        self._stop.set()
        self._thread.join()
        for s in self._open:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        with listener:
            while not self._stop.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                client.settimeout(None)
                upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                upstream.connect(self.target)
                self._open += [client, upstream]
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=_pump, args=(a, b), daemon=True).start()
        os.unlink(self.path)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass


@pytest.fixture
def proxied_driver(driver_up, tmp_path):
    """The fault driver, its events watcher reading faultd through a SocketProxy."""
    proxy = SocketProxy(PROXY_SOCKET, FAULTD_SOCKET.removeprefix("unix://"))
    proxy.restore()
    settings = {**FAULT_SETTINGS, "docker_host": "unix://" + PROXY_SOCKET}
    process = DriverProcess(str(tmp_path / "driver.log"), settings)
    driver_up.stop()
    process.start()
    yield process, proxy
    process.stop()
    proxy.cut()
    # Back before the network fixture removes its network: that needs the driver.
    driver_up.start()


def docker_events(driver) -> bool:
    return driver.api("/v1/status")["docker_events"]


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.2)


def endpoint_of(docker, driver, container: str, network: str) -> dict:
    """The driver's record of a container's endpoint, found by the id Docker gives it."""
    template = f"{{{{(index .NetworkSettings.Networks {network!r}).EndpointID}}}}"
    endpoint_id = docker.out("inspect", "-f", template.replace("'", '"'), container)
    found = [e for e in driver.api("/v1/endpoints") if e["endpoint_id"] == endpoint_id]
    assert found, f"the driver has no endpoint {endpoint_id} of {container}"
    return found[0]


def test_events_missed_while_disconnected_are_resynchronised(docker, net, proxied_driver):
    driver, proxy = proxied_driver
    wait_until(lambda: docker_events(driver), 30, "the watcher connects")
    early = docker.container(net, "--label", "app=early")
    wait_until(lambda: endpoint_of(docker, driver, early, net)["state"] == "ready", 30, "identity")

    proxy.cut()
    wait_until(lambda: not docker_events(driver), 30, "the watcher notices the cut")
    # While the watcher is away: a new labelled container, and a new network connection.
    late = docker.container(net, "--label", "app=late")
    other = docker.network_create(
        "f-" + uuid.uuid4().hex[:8], "-d", driver.name, "--ipam-driver", driver.name, "--ipv6"
    )
    try:
        docker.run("network", "connect", other, early)
        assert endpoint_of(docker, driver, late, net)["state"] == "waiting-for-identity"
        assert not docker_events(driver), "the gap closed before the test could use it"

        proxy.restore()
        wait_until(lambda: docker_events(driver), 30, "the watcher reconnects")
        for container, network, label in ((late, net, "late"), (early, other, "early")):
            ep = endpoint_of(docker, driver, container, network)
            assert ep["state"] == "ready" and ep["container_name"] == container, ep
            identity = driver.api(f"/v1/identities/{ep['identity']}")
            assert identity["labels"].get("app") == label, identity
        assert_consistent(docker, driver)
        docker.run("rm", "-f", early, late)
    finally:
        docker.remove_network(other)

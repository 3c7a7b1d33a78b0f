"""dockerd restarts: with and without live-restore, and with the driver not running when
dockerd starts. Containers with --restart always come back with connectivity and policy."""

import time

import pytest

from tests.e2e.driver_process import plugin_call
from tests.e2e.test_policy import SERVE_HTTP, WEB_POLICY, wget

from .conftest import assert_consistent

# busybox as PID 1 ignores SIGTERM: a short stop timeout keeps dockerd's shutdown quick.
RESTARTING = ("--restart", "always", "--stop-timeout", "1")
UNKNOWN_ENDPOINT = "0123456789ab" * 4 + "0123456789abcdef"


@pytest.fixture
def plain_faultd(faultd):
    """faultd without live restore: its stop stops the containers."""
    if faultd.live_restore:
        faultd.restart(live_restore=False)
    return faultd


@pytest.fixture
def trio(request, docker, net, cilium):
    """web, client and other; only client may reach web, on port 80. Docker restarts web, and
    the other two unless the test asks for them to have no restart policy ("web-only")."""
    others = RESTARTING if getattr(request, "param", "all") == "all" else RESTARTING[2:]
    web = docker.container(net, *RESTARTING, "--label", "app=web", command=SERVE_HTTP)
    client = docker.container(net, *others, "--label", "app=client")
    other = docker.container(net, *others, "--label", "app=other")
    cilium("policy", "import", "-", stdin=WEB_POLICY)
    return {"web": web, "client": client, "other": other, "net": net}


def eventually(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.5)


def running(docker, *names) -> bool:
    states = docker.out("inspect", "-f", "{{.State.Running}}", *names, check=False)
    return states.split() == ["true"] * len(names)


def assert_policy_holds(docker, driver, trio) -> None:
    """Connectivity as the policy says, once Docker runs the containers and the driver knows
    their identities (the allowed connection first: until then, every packet is dropped)."""
    eventually(lambda: running(docker, trio["web"], trio["client"], trio["other"]), 60, "running")
    web6, web4 = docker.addresses(trio["web"], trio["net"])
    eventually(lambda: wget(docker, trio["client"], web6), 30, "client reaches web")
    assert wget(docker, trio["client"], web4)
    waiting = [e for e in driver.api("/v1/endpoints") if e["state"] != "ready"]
    assert not waiting, f"endpoints without an identity: {waiting}"
    assert not wget(docker, trio["other"], web6)
    assert not wget(docker, trio["other"], web4)


def failed_calls(driver) -> list[str]:
    with open(driver.log_path, errors="replace") as f:
        return [line for line in f if "Driver." in line and " failed: " in line]


@pytest.mark.parametrize("live_restore", [False, True], ids=["plain", "live-restore"])
def test_dockerd_restart(faultd, docker, driver_up, trio, live_restore):
    if live_restore:
        # Live restore keeps containers only if dockerd ran with it when it stopped.
        faultd.restart(live_restore=True)
        assert_policy_holds(docker, driver_up, trio)
    before = failed_calls(driver_up)
    pid = docker.out("inspect", "-f", "{{.State.Pid}}", trio["web"])
    faultd.restart(live_restore=live_restore)
    assert_policy_holds(docker, driver_up, trio)
    kept = docker.out("inspect", "-f", "{{.State.Pid}}", trio["web"]) == pid
    assert kept == live_restore, "live restore decides whether containers keep running"
    assert failed_calls(driver_up) == before, "a call Docker replayed after its restart failed"
    for call in ("NetworkDriver.Leave", "NetworkDriver.DeleteEndpoint"):
        body = {"NetworkID": "f" * 64, "EndpointID": UNKNOWN_ENDPOINT}
        assert plugin_call(driver_up.plugin_socket, call, body) == {}
    assert_consistent(docker, driver_up)


# dockerd waits ~15 s for the plugin of each container it restarts: one is enough here.
@pytest.mark.parametrize("trio", ["web-only"], indirect=True)
def test_driver_down_when_dockerd_starts(plain_faultd, docker, driver_up, trio):
    """A boot in the wrong order: dockerd stopped, then the driver; dockerd starts first."""
    faultd = plain_faultd
    faultd.stop()
    driver_up.stop()
    answered = faultd.start(timeout=60)
    print(f"faultd answered {answered:.1f} s after its start, without the driver")
    driver_up.start()
    # Containers Docker could not start without the driver are started by hand.
    stopped = [c for c in (trio["web"], trio["client"], trio["other"]) if not running(docker, c)]
    if stopped:
        docker.run("start", *stopped)
    assert_policy_holds(docker, driver_up, trio)
    newcomer = docker.container(trio["net"], "--label", "app=client")
    web6, _ = docker.addresses(trio["web"], trio["net"])
    eventually(lambda: wget(docker, newcomer, web6), 30, "a new container reaches web")
    assert_consistent(docker, driver_up)

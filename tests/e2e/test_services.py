"""Service VIPs with real containers: distribution, selectors that follow containers,
removal, policy through a VIP, hairpin, restart."""

import pytest

from .engines import address, current
from .test_policy import WEB_POLICY

VIP6 = address(current().settings["service_range6"], 0x10)
VIP4 = address(current().settings["service_range4"], 10)


def serve(name: str) -> tuple:
    return ("sh", "-c", f"echo {name} > /www/index.html && exec httpd -f -p 80 -h /www")


def fetch(docker, container, address, count=1):
    """The bodies of `count` HTTP GETs, each a new connection, each given 2 s."""
    host = f"[{address}]" if ":" in address else address
    script = f"for i in $(seq {count}); do timeout 2 wget -qO- http://{host}/ || echo FAILED; done"
    return docker.exec(container, "sh", "-c", script, timeout=120).stdout.split()


@pytest.fixture
def webs(docker, net):
    names = {}
    for name in ("web1", "web2"):
        names[name] = docker.container(net, "--label", "app=web", command=serve(name))
    return names


def test_selector_service_spreads_and_follows_containers(docker, driver, cilium, net, webs):
    client = docker.container(net, "--label", "app=client")
    result = cilium("service", "update", "--frontend", f"[{VIP6}]:80", "--selector", "app=web")
    assert VIP6 in result.stdout
    bodies = fetch(docker, client, VIP6, 50)
    assert sorted(set(bodies)) == ["web1", "web2"], bodies
    web3 = docker.container(net, "--label", "app=web", command=serve("web3"))
    assert "web3" in fetch(docker, client, VIP6, 30)
    docker.run("rm", "-f", webs["web1"])
    after = fetch(docker, client, VIP6, 30)
    assert "FAILED" not in after and "web1" not in after and set(after) == {"web2", "web3"}
    listing = cilium("service", "list").stdout
    assert f"[{VIP6}]:80/tcp" in listing and "app=web" in listing
    docker.run("rm", "-f", web3)
    cilium("service", "delete", "--all")


def test_explicit_ipv4_backends_and_policy_through_the_vip(docker, driver, cilium, net, webs):
    client = docker.container(net, "--label", "app=client")
    other = docker.container(net, "--label", "app=other")
    backends = ",".join(f"{docker.addresses(w, net)[1]}:80" for w in webs.values())
    cilium("service", "update", "--frontend", f"{VIP4}:80", "--backends", backends)
    assert sorted(set(fetch(docker, client, VIP4, 30))) == ["web1", "web2"]
    lb = cilium("bpf", "lb", "list").stdout
    assert f"{VIP4}:80/tcp" in lb
    cilium("policy", "import", "-", stdin=WEB_POLICY)
    assert set(fetch(docker, client, VIP4, 10)) <= {"web1", "web2"}
    assert fetch(docker, other, VIP4, 3) == ["FAILED"] * 3
    cilium("service", "delete", "--all")


def test_hairpin_a_backend_reaches_its_own_vip(docker, driver, cilium, net, webs):
    cilium("service", "update", "--frontend", f"[{VIP6}]:80", "--selector", "app=web")
    bodies = fetch(docker, webs["web1"], VIP6, 20)
    assert "FAILED" not in bodies and "web1" in bodies
    cilium("service", "delete", "--all")


def test_services_keep_working_while_the_driver_is_down(docker, driver, cilium, net, webs):
    client = docker.container(net, "--label", "app=client")
    cilium("service", "update", "--frontend", f"[{VIP6}]:80", "--selector", "app=web", "--id", "9")
    driver.kill9()
    try:
        assert set(fetch(docker, client, VIP6, 10)) <= {"web1", "web2"}
    finally:
        driver.start()
    assert set(fetch(docker, client, VIP6, 10)) <= {"web1", "web2"}
    assert "9" in cilium("service", "get", "9").stdout
    cilium("service", "delete", "9")


def test_bad_service_requests_are_clear(driver, cilium):
    result = cilium(
        "service",
        "update",
        "--frontend",
        "[fd00:99::1]:80",
        "--backends",
        "[fdce::1]:80",
        check=False,
    )
    assert result.returncode == 1 and "outside the service ranges" in result.stderr
    result = cilium(
        "service", "update", "--frontend", f"[{VIP6}]:80", "--backends", "", check=False
    )
    assert result.returncode == 1 and "backend list is empty" in result.stderr

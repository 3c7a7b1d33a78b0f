"""kill -9 of the driver: traffic goes on while it is down; after a restart nothing is lost."""

import subprocess
import threading
import time

from .driver_process import veths


def test_kill9_and_restart_keeps_traffic_and_state(docker, driver, net):
    a, b = docker.container(net), docker.container(net)
    b6, b4 = docker.addresses(b, net)
    result = {}

    def ping_through_the_restart():
        result["ping"] = docker.exec(
            a, "ping6", "-i", "0.2", "-c", "40", "-W", "1", b6, check=False, timeout=60
        )

    pinger = threading.Thread(target=ping_through_the_restart)
    pinger.start()
    time.sleep(1)
    driver.kill9()
    # What a crash can leave: a veth nobody owns.
    prefix = driver.settings["veth_prefix"]
    orphan = prefix + "0badc0ffee0"
    subprocess.run(
        ["ip", "link", "add", orphan, "type", "veth", "peer", "name", "t" + orphan],
        check=True,
    )
    time.sleep(2)
    driver.start()
    pinger.join()
    built = driver.api("/v1/status")["datapath"]
    assert (built["compile_count"], built["reuse_count"]) == (0, 1)  # the killed one's build

    output = result["ping"].stdout
    assert "40 packets transmitted, 40 packets received" in output, output
    assert orphan not in veths(prefix)

    c = docker.container(net)
    c6, _ = docker.addresses(c, net)
    assert docker.exec(c, "ping6", "-c1", "-W2", b6, check=False).returncode == 0
    assert docker.exec(c, "ping", "-c1", "-W2", b4, check=False).returncode == 0
    assert c6 not in (docker.addresses(a, net)[0], b6)

    docker.run("rm", "-f", b)
    assert len(veths(prefix)) == 2
    assert {e["ipv6"] for e in driver.api("/v1/endpoints")} == {
        docker.addresses(a, net)[0],
        c6,
    }

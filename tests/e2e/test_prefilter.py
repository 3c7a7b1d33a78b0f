"""`cilium prefilter` against the real driver: a peer behind a host veth (the `external`
namespace) is cut off at XDP when its prefix is denied and reaches the host again when it
is deleted; drops show in `prefilter list` (every output form), the metrics and `cilium
status`; bad input changes nothing; the list and the device survive a kill -9 and restart;
the CLI's delete takes the device off."""

import ipaddress
import json
import subprocess

import yaml

from .test_metrics import by_label, scrape


def pings(netns: str, address: str, count: int = 3) -> bool:
    tool = "ping6" if ":" in address else "ping"
    command = ["ip", "netns", "exec", netns, tool, "-c", str(count), "-W", "1", address]
    return subprocess.run(command, capture_output=True, timeout=30).returncode == 0


def prefix_of(address: str, length: int) -> str:
    return str(ipaddress.ip_network(f"{address}/{length}", strict=False))


def listed(cilium) -> dict:
    return json.loads(cilium("prefilter", "list", "-o", "json").stdout)


def test_prefilter_cli_drops_a_denied_peer_counts_it_and_survives_a_restart(
    driver, cilium, external
):
    device, netns = external["netns"], external["netns"]
    deny4, deny6 = prefix_of(external["v4"], 30), prefix_of(external["v6"], 126)
    assert pings(netns, external["host4"]) and pings(netns, external["host6"])
    try:
        cilium("prefilter", "update", "--cidr", f"{deny4},{deny6}", "--device", device)
        assert not pings(netns, external["host4"])
        assert not pings(netns, external["host6"])
        found = listed(cilium)
        drops = {p["cidr"]: p["drops"] for p in found["prefixes"]}
        assert drops[deny4] >= 3 and drops[deny6] >= 1  # IPv6 ND is dropped too
        assert found["devices"] == [{"device": device, "mode": "native", "error": None}]
        assert yaml.safe_load(cilium("prefilter", "list", "-o", "yaml").stdout) == found
        table = cilium("prefilter", "list").stdout
        assert deny4 in table and "native" in table
        metrics = scrape(driver.settings["api_socket"])
        counted = by_label(metrics, "pycilium_prefilter_drop_packets_total", "prefix")
        assert counted[deny4] >= 3
        status = json.loads(cilium("status", "-o", "json").stdout)
        assert status["prefilter"]["devices"][0]["mode"] == "native"
        assert "DROP_PREFILTER" in status["datapath"]["drops"]

        bad = cilium("prefilter", "update", "--cidr", "198.51.100.1/24", check=False)
        assert bad.returncode == 1 and "198.51.100.1/24" in bad.stderr
        missing = cilium("prefilter", "delete", "--cidr", "203.0.113.0/24", check=False)
        assert missing.returncode == 1 and "not in the prefilter" in missing.stderr
        assert [p["cidr"] for p in listed(cilium)["prefixes"]] == [deny4, deny6]

        driver.kill9()
        assert not pings(netns, external["host4"])  # the program stays while it is down
        driver.start()
        after = listed(cilium)
        assert {p["cidr"] for p in after["prefixes"]} == {deny4, deny6}
        assert after["devices"] == found["devices"]
        assert not pings(netns, external["host4"])

        cilium("prefilter", "delete", "--cidr", deny4)
        assert pings(netns, external["host4"]) and not pings(netns, external["host6"])
    finally:
        for what in (("--cidr", deny4), ("--cidr", deny6), ("--device", device)):
            cilium("prefilter", "delete", *what, check=False)
    assert pings(netns, external["host6"])
    assert listed(cilium) == {"prefixes": [], "devices": []}
    xdp = subprocess.run(["ip", "-j", "link", "show", device], capture_output=True, text=True)
    assert "xdp" not in json.loads(xdp.stdout)[0]

"""Issue 14's "Done when" on a cluster of three simulated hosts (conftest.py): every node sees
the others, networks exist on every host, containers on different hosts reach each other over
the VXLAN underlay, policy imported on one host is enforced on another (the drop in the
receiving host's monitor), and a VIP balances over backends on two other hosts."""

import ipaddress

import pytest

from .conftest import wait_for

WEB_POLICY = """
- endpointSelector: {matchLabels: {app: mhweb}}
  labels: [{key: name, value: multihost-web}]
  ingress:
  - fromEndpoints: [{matchLabels: {app: mhgood}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"""


def test_every_node_sees_every_other(cluster):
    expected = {host.name: host.env["NODE_ADDR"] for host in cluster.hosts}

    def listed(host):
        nodes = host.cilium_json("node", "list")
        return nodes if {n["name"]: n["address"] for n in nodes} == expected else None

    for host in cluster.hosts:
        nodes = wait_for(
            lambda host=host: listed(host), 20, f"host {host.number} lists the nodes {expected}"
        )
        ranges6 = [ipaddress.ip_network(n["ipv6_range"]) for n in nodes]
        ranges4 = [ipaddress.ip_network(n["ipv4_range"]) for n in nodes]
        for ranges in (ranges6, ranges4):
            assert not any(a.overlaps(b) for i, a in enumerate(ranges) for b in ranges[i + 1 :]), (
                f"node ranges overlap: {nodes}"
            )
        assert len({n["node_id"] for n in nodes}) == len(nodes)


@pytest.mark.parametrize("form", ["ipam", "plain"])
def test_a_network_made_on_one_host_exists_on_every_host_until_removed(cluster, names, clean, form):
    name = names("net")
    # The plain form (`-d cilium` alone) takes IPv4 from Docker's IPAM and IPv6 from the driver.
    ipam = ("--ipv6", "--ipam-driver", "cilium") if form == "ipam" else ()
    cluster[1].docker("network", "create", "-d", "cilium", *ipam, name)
    for host in cluster.hosts[1:]:
        driver = wait_for(
            lambda host=host: host.docker(
                "network", "inspect", "-f", "{{.Driver}}", name, check=False
            ).stdout.strip(),
            15,
            f"network {name} made on host 1 exists on host {host.number}",
        )
        assert driver == "cilium"
    cluster[1].docker("network", "rm", name)
    for host in cluster.hosts[1:]:
        wait_for(
            lambda host=host: host.docker("network", "inspect", name, check=False).returncode,
            15,
            f"network {name} removed on host 1 is gone from host {host.number}",
        )


def test_subnet_network_addresses_are_unique_across_hosts(cluster, names, clean):
    name = names("subnet")
    cluster[1].docker(
        "network", "create", "--ipv6", "-d", "cilium", "--ipam-driver", "cilium",
        "--subnet", "fdce:f14::/64", "--subnet", "10.114.0.0/24", name,
    )  # fmt: skip
    seen: dict[str, str] = {}
    for host in cluster.hosts:
        wait_for(
            lambda host=host: host.docker("network", "inspect", name, check=False).returncode == 0,
            15,
            f"network {name} exists on host {host.number}",
        )
        for i in range(2):
            container = host.run(names(f"s{host.number}{i}"), name)
            for address in host.addresses(container, name):
                assert ipaddress.ip_address(address) in ipaddress.ip_network(
                    "fdce:f14::/64" if ":" in address else "10.114.0.0/24"
                )
                assert address not in seen, f"{address}: {container} and {seen.get(address)}"
                seen[address] = container


@pytest.mark.parametrize("family", [6, 4])
def test_containers_on_hosts_1_and_3_reach_each_other(cluster, names, network, family):
    one, three = cluster[1], cluster[3]
    a = one.web(names("a"), network, "from-host-1")
    b = three.web(names("b"), network, "from-host-3")
    a_address = one.addresses(a, network)[0 if family == 6 else 1]
    b_address = three.addresses(b, network)[0 if family == 6 else 1]
    wait_for(lambda: one.ping(a, b_address), 15, f"{a} on host 1 pings {b} at {b_address}")
    assert three.ping(b, a_address), f"{b} on host 3 does not ping {a} at {a_address}"
    assert one.fetch(a, b_address) == "from-host-3"
    assert three.fetch(b, a_address) == "from-host-1"
    # Full-size segments through the tunnel: the containers' MTU leaves room for VXLAN's
    # 50 bytes (a too large one would lose every full segment, not small pages).
    three.exec(b, "dd", "if=/dev/zero", "of=/www/big", "bs=1024", "count=1024")
    assert one.fetched_bytes(a, b_address, "big") == 1024 * 1024


def test_containers_on_hosts_1_and_3_find_each_other_through_docker_dns(cluster, names, network):
    one, three = cluster[1], cluster[3]
    a = one.run(names("a"), network)
    b = three.run(names("b"), network)
    wait_for(lambda: one.ping(a, three.addresses(b, network)[0]), 15, f"{a} reaches {b}")
    assert one.exec(a, "ping", "-c1", "-W1", b).returncode == 0


def _sent_to(event: dict, source: str, destination: str) -> bool:
    return (
        event.get("kind") == "drop"
        and ipaddress.ip_address(event.get("src", "::")) == ipaddress.ip_address(source)
        and ipaddress.ip_address(event.get("dst", "::")) == ipaddress.ip_address(destination)
        and int(event.get("dport") or 0) == 80
    )


@pytest.mark.parametrize("family", [6, 4])
def test_policy_imported_on_host_2_is_enforced_across_hosts(cluster, names, network, family):
    one, two, three = cluster[1], cluster[2], cluster[3]
    pick = 0 if family == 6 else 1
    web = one.web(names("web"), network, "hello", labels=("app=mhweb",))
    good = three.run(names("good"), network, labels=("app=mhgood",))
    bad = three.run(names("bad"), network, labels=("app=mhbad",))
    web_address = one.addresses(web, network)[pick]
    bad_address = three.addresses(bad, network)[pick]
    # Without a rule both reach web: what the policy drops later is the policy's doing.
    wait_for(lambda: three.fetch(bad, web_address) == "hello", 15, f"{bad} reaches {web}")

    two.cilium("policy", "import", "-", stdin=WEB_POLICY)
    for host in cluster.hosts:
        wait_for(
            lambda host=host: "multihost-web" in str(host.cilium_json("policy", "get")),
            15,
            f"the policy imported on host 2 is in force on host {host.number}",
        )
    rules = [host.cilium_json("policy", "get") for host in cluster.hosts]
    assert rules[0] == rules[1] == rules[2], f"`cilium policy get` differs between hosts: {rules}"
    assert three.fetch(good, web_address) == "hello"
    with one.monitor("--type", "drop") as monitor:
        assert three.fetch(bad, web_address) is None, f"{bad} still reaches {web}"
        drop = monitor.first(lambda e: _sent_to(e, bad_address, web_address), timeout=10)
    assert drop, f"host 1's monitor shows no drop of {bad_address} -> {web_address}:80"
    # The receiving host knows the sender's identity from the tunnel: the same number the
    # sender's host gave it.
    assert drop["src_identity"] == three.endpoint(bad)["identity"]
    assert drop["dst_identity"] == one.endpoint(web)["identity"]


def test_a_vip_balances_over_backends_on_hosts_1_and_2_for_a_client_on_host_3(
    cluster, names, network
):
    one, two, three = cluster[1], cluster[2], cluster[3]
    backends = [
        one.web(names("b1"), network, "backend-on-host-1", labels=("app=mhsvc",)),
        two.web(names("b2"), network, "backend-on-host-2", labels=("app=mhsvc",)),
    ]
    client = three.run(names("client"), network)
    v4 = [one.addresses(backends[0], network)[1], two.addresses(backends[1], network)[1]]
    # Explicit backends (IPv4) made on host 1, a selector (IPv6) made on host 2.
    one.cilium("service", "update", "--frontend", "10.96.0.214:80",
               "--backends", ",".join(f"{a}:80" for a in v4))  # fmt: skip
    two.cilium("service", "update", "--frontend", "[fd00:5::214]:80", "--selector", "app=mhsvc")
    for host in cluster.hosts:
        wait_for(
            lambda host=host: len(host.cilium_json("service", "list")) == 2,
            15,
            f"host {host.number} lists both services",
        )
    assert (
        one.cilium_json("service", "list")
        == two.cilium_json("service", "list")
        == three.cilium_json("service", "list")
    )
    expected = {"backend-on-host-1", "backend-on-host-2"}
    for vip in ("10.96.0.214", "fd00:5::214"):
        first = wait_for(lambda vip=vip: three.fetch(client, vip), 15, f"{vip} answers host 3")
        # From then on every request is answered, by one backend or the other.
        answers = {first}
        for _ in range(40):
            answers.add(three.fetch(client, vip))
            if expected <= answers:
                break
        assert answers == expected, f"{vip} from host 3 answered {answers}"


# Rules that only count, in host 1's netfilter, packets to the outside client: a reply that
# went back through host 1 (as in SNAT mode) would pass both.
REPLY_COUNTERS = [
    ("mangle", "POSTROUTING", "-d"),
    ("mangle", "FORWARD", "-d"),
]
COUNTER_TAG = ["-m", "comment", "--comment", "multihost-reply-counter"]


def _counted(host, table: str, chain: str) -> int:
    listing = host.in_netns("iptables", "-t", table, "-L", chain, "-v", "-n", "-x").stdout
    (line,) = [line for line in listing.splitlines() if "multihost-reply-counter" in line]
    return int(line.split()[0])


def test_a_port_published_on_host_2_answers_an_outside_client_on_host_1_directly_from_host_2(
    cluster, names, network, outside
):
    one, two = cluster[1], cluster[2]
    two.web(names("web"), network, "published-on-host-2", publish=("8080:80",))
    for table, chain, option in REPLY_COUNTERS:
        one.in_netns("iptables", "-t", table, "-I", chain, option, outside.address, *COUNTER_TAG)
    try:
        # Every host publishes the port on its node address, host 1 included.
        for host in (one, cluster[3]):
            page = wait_for(
                lambda host=host: outside.fetch(host.env["NODE_ADDR"], 8080),
                20,
                f"the port published on host 2 answers on host {host.number}'s address",
            )
            assert page == "published-on-host-2"
        # DSR: host 2 answered the client itself; host 1 sent it nothing.
        assert [_counted(one, table, chain) for table, chain, _ in REPLY_COUNTERS] == [0, 0]
        # The counter counts what host 1 does send the client.
        one.in_netns("ping", "-c1", "-W1", outside.address)
        assert _counted(one, "mangle", "POSTROUTING") >= 1
    finally:
        for table, chain, option in REPLY_COUNTERS:
            one.in_netns(
                "iptables", "-t", table, "-D", chain, option, outside.address, *COUNTER_TAG,
                check=False,
            )  # fmt: skip

"""Issue 14's fault cases that concern a host: its driver killed with -9, and the host gone
altogether. Hosts are hurt through scripts/cluster.sh (driver-kill, driver-start, host-crash)
and brought back by it, so the session's cluster has three working hosts again afterwards."""

import time

from .conftest import LEASE_TTL, wait_for


def test_a_killed_driver_keeps_its_node_and_resumes_it_unchanged(cluster, names, clean):
    one, two = cluster[1], cluster[2]
    # A container on host 2 alone (its own network): it keeps its addresses and identity.
    local = names("local")
    two.docker("network", "create", "--ipv6", "-d", "cilium", "--ipam-driver", "cilium", local)
    container = two.run(names("c"), local)
    endpoint = wait_for(
        lambda: (e := two.endpoint(container))["state"] == "ready" and e, 15, "endpoint ready"
    )
    before = wait_for(lambda: cluster.node(one, "node2"), 15, "host 1 lists node2")

    cluster.script("driver-kill", "2")
    killed = time.monotonic()
    # Its lease lives on: the other hosts keep the node (and its endpoints) meanwhile.
    assert cluster.node(one, "node2") == before
    assert time.monotonic() - killed < LEASE_TTL, "the check came too late to mean anything"

    cluster.script("driver-start", "2")
    assert wait_for(lambda: cluster.node(one, "node2"), 15, "node2 back") == before
    assert wait_for(lambda: cluster.node(two, "node2"), 15, "host 2 lists itself") == before
    after = two.endpoint(container)
    for key in ("identity", "ipv6", "ipv4", "state"):
        assert after[key] == endpoint[key], f"{key}: {endpoint[key]} before, {after[key]} after"


def test_traffic_between_hosts_flows_while_a_driver_is_dead(cluster, names, network):
    one, two = cluster[1], cluster[2]
    a = one.run(names("a"), network)
    b = two.run(names("b"), network)
    b_addresses = two.addresses(b, network)
    for address in b_addresses:
        wait_for(lambda address=address: one.ping(a, address), 15, f"{a} pings {address}")
    cluster.script("driver-kill", "2")
    try:
        for address in b_addresses:
            assert one.ping(a, address), f"{a} on host 1 lost {address} when host 2's driver died"
    finally:
        cluster.script("driver-start", "2")
    for address in b_addresses:
        assert one.ping(a, address), f"{a} on host 1 lost {address} after host 2's driver restart"


def test_a_host_that_disappears_leaves_every_view_and_comes_back_as_itself(cluster):
    one, two = cluster[1], cluster[2]
    before = wait_for(lambda: cluster.node(one, "node3"), 15, "host 1 lists node3")
    try:
        cluster.script("host-crash", "3")
        for host in (one, two):
            wait_for(
                lambda host=host: cluster.node(host, "node3") is None,
                LEASE_TTL + 10,
                f"node3, gone, leaves host {host.number}'s view when its lease expires",
            )
    finally:
        cluster.script("up")  # host 3 again, for whatever runs next
    # A fresh host of the same name gets its node id back from etcd, and so its ranges.
    assert wait_for(lambda: cluster.node(one, "node3"), 15, "node3 back on host 1") == before


def test_an_etcd_outage_keeps_traffic_and_identities_and_the_cluster_converges_after(
    cluster, names, network
):
    one, two = cluster[1], cluster[2]
    a = one.run(names("a"), network)
    b = two.run(names("b"), network)
    b_addresses = two.addresses(b, network)
    for address in b_addresses:
        wait_for(lambda address=address: one.ping(a, address), 15, f"{a} pings {address}")
    identities = {a: one.endpoint(a)["identity"], b: two.endpoint(b)["identity"]}
    cluster.script("etcd-stop")
    try:
        # Longer than the nodes' lease TTL: etcd's leases outlive an etcd that is down.
        deadline = time.monotonic() + 2 * LEASE_TTL
        while time.monotonic() < deadline:
            for address in b_addresses:
                assert one.ping(a, address), f"{a} lost {address} while etcd was down"
            time.sleep(0.5)
        assert one.endpoint(a)["identity"] == identities[a]
        assert two.endpoint(b)["identity"] == identities[b]
    finally:
        cluster.script("etcd-start")
    expected = {host.name for host in cluster.hosts}
    for host in cluster.hosts:
        wait_for(
            lambda host=host: {n["name"] for n in host.cilium_json("node", "list")} == expected,
            LEASE_TTL + 15,
            f"host {host.number} lists every node again after etcd came back",
        )
    # A label set nobody had before needs etcd: it works again, across hosts.
    c = two.run(names("c"), network, labels=(f"app={names('new')}",))
    c_address = two.addresses(c, network)[0]
    wait_for(lambda: one.ping(a, c_address), 20, f"{a} on host 1 pings the new {c} on host 2")

"""Cluster networks, the pure parts: a user's subnet split between node ids, the record of a
network as Docker shows it, and the Docker API request that makes it on another node."""

import ipaddress

import pytest

from driver.control.addressing import node_slice
from driver.control.cluster.networks import NetworkRecord, create_request, record_of

net = ipaddress.ip_network


@pytest.mark.parametrize(
    ("subnet", "node_id", "slots", "part"),
    [
        ("10.50.0.0/16", 1, 16, "10.50.16.0/20"),
        ("10.50.0.0/16", 15, 16, "10.50.240.0/20"),
        ("10.50.0.0/16", 3, 15, "10.50.48.0/20"),  # 15 ids take 4 bits too
        ("2001:db8::/64", 2, 16, "2001:db8:0:0:2000::/68"),
        ("203.0.113.0/26", 1, 16, "203.0.113.4/30"),
    ],
)
def test_each_node_id_gets_its_part_of_a_subnet(subnet, node_id, slots, part):
    assert node_slice(net(subnet), node_id, slots) == net(part)


def test_a_subnet_too_small_for_the_cluster_has_no_parts():
    assert node_slice(net("203.0.113.0/27"), 1, 16) is None


def test_parts_of_different_nodes_never_overlap_and_part_zero_holds_the_gateway():
    subnet = net("10.50.0.0/16")
    parts = [node_slice(subnet, n, 16) for n in range(16)]
    assert len(set(parts)) == 16 and all(p.subnet_of(subnet) for p in parts)
    assert subnet[1] in parts[0]


def _inspect(ipam_driver, configs, **more):
    return {
        "Id": "1" * 64,
        "Name": "lab",
        "Driver": "cilium",
        "EnableIPv6": True,
        "Internal": False,
        "Options": {"mtu": "1400"},
        "Labels": {"team": "x"},
        "IPAM": {"Driver": ipam_driver, "Options": None, "Config": configs},
        **more,
    }


def test_the_record_keeps_a_users_subnets_but_not_the_nodes_own_blocks():
    blocks = net("10.213.16.0/20"), net("fd00:100:0:1::/112")
    configs = [
        {"Subnet": "10.213.16.64/26", "Gateway": "10.213.16.65"},
        {"Subnet": "2001:db8:7::/64", "IPRange": "2001:db8:7::/80", "Gateway": "2001:db8:7::1/64"},
    ]
    record = record_of(
        _inspect("cilium", configs, Internal=True),
        "cilium",
        "a",
        lambda cidr: any(cidr.version == b.version and cidr.subnet_of(b) for b in blocks),
    )
    assert record == NetworkRecord(
        name="lab",
        origin="a",
        ipam="cilium",
        ipv6=True,
        internal=True,
        options={"mtu": "1400"},
        ipam_options={},
        labels={"team": "x"},
        subnets=[
            {"subnet": "2001:db8:7::/64", "ip_range": "2001:db8:7::/80", "gateway": "2001:db8:7::1"}
        ],
    )


def test_another_node_asks_its_own_driver_and_ipam_by_their_names_there():
    record = record_of(_inspect("pycilium:latest", []), "pycilium:latest", "a", lambda cidr: False)
    assert create_request(record, "cilium", 2, 16) == {
        "name": "lab",
        "driver": "cilium",
        "options": {"mtu": "1400"},
        "ipam": {"Driver": "cilium", "Config": [], "Options": {}},
        "internal": False,
        "labels": {"team": "x"},
        "enable_ipv6": True,
    }


def test_dockers_own_ipam_allocates_from_the_nodes_part_elsewhere():
    configs = [{"Subnet": "172.30.0.0/16", "Gateway": "172.30.0.1"}]
    record = record_of(_inspect("default", configs), "cilium", "a", lambda cidr: False)
    assert record.ipam == "default"
    assert create_request(record, "cilium", 3, 16)["ipam"]["Config"] == [
        {"Subnet": "172.30.0.0/16", "Gateway": "172.30.0.1", "IPRange": "172.30.48.0/20"}
    ]

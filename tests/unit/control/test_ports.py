"""Published ports: the port map Docker sends, host port choice and clashes, DNAT mappings."""

import pytest

from driver.control.ports import Published, requested_ports
from driver.errors import InvalidArgument

from ..docker_calls import NET, create_endpoint, join, make_ipam_network

OTHER_EP = "a" * 64


def portmap(*entries):
    return {"com.docker.network.portmap": list(entries)}


def entry(host_port, port=80, proto=6, host_ip="", end=None):
    return {
        "Proto": proto,
        "IP": "",
        "Port": port,
        "HostIP": host_ip,
        "HostPort": host_port,
        "HostPortEnd": end if end is not None else host_port,
    }


def test_port_map_parses():
    assert requested_ports(portmap(entry(8080), entry(53, 53, 17, "127.0.0.1"))) == [
        (Published(6, "", 8080, 80), 8080),
        (Published(17, "127.0.0.1", 53, 53), 53),
    ]
    assert requested_ports({}) == []


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (entry(8080, proto=132), "only tcp and udp"),
        (entry(8080, port=0), "out of range"),
        (entry(70000), "out of range"),
        (entry(8080, host_ip="not-an-ip"), "does not parse"),
        ({"Proto": 6}, "does not parse"),
    ],
)
def test_bad_port_maps_are_refused(bad, message):
    with pytest.raises(InvalidArgument, match=message):
        requested_ports(portmap(bad))


def publish(post, endpoint_id, pools, options):
    create_endpoint(post, pools, endpoint_id)
    return join(post, endpoint_id, options)


def test_published_ports_dnat_both_families_and_close_on_leave(post, datapath, app):
    pools = make_ipam_network(post)
    # A specific host address: DNAT only, no loopback proxy.
    status, reply = publish(post, "b" * 64, pools, portmap(entry(48080, host_ip="192.0.2.2")))
    assert status == 200, reply
    (mappings,) = datapath.published.values()
    assert [(str(m.host_ip), m.host_port, m.port, m.address.version) for m in mappings] == [
        ("192.0.2.2", 48080, 80, 4)
    ]
    ep = app.extensions["pycilium"].store.get_endpoint("b" * 64)
    assert ep.ports == [{"protocol": 6, "host_ip": "192.0.2.2", "host_port": 48080, "port": 80}]
    post("NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": "b" * 64})
    assert datapath.published == {}


def test_host_port_zero_is_chosen_and_clashes_are_refused(post, datapath, app):
    pools = make_ipam_network(post)
    assert publish(post, "b" * 64, pools, portmap(entry(48081, host_ip="192.0.2.2")))[0] == 200
    status, reply = publish(post, OTHER_EP, pools, portmap(entry(48081, host_ip="192.0.2.2")))
    assert status == 500 and "already published" in reply["Err"]
    status, reply = publish(post, "c" * 64, pools, portmap(entry(0, 53, 17, "192.0.2.2")))
    assert status == 200, reply
    chosen = app.extensions["pycilium"].store.get_endpoint("c" * 64).ports[0]
    assert 49152 <= chosen["host_port"] <= 65535 and chosen["port"] == 53


def test_containers_without_ports_cost_no_netfilter_calls(post, datapath):
    pools = make_ipam_network(post)
    assert publish(post, "d" * 64, pools, {})[0] == 200
    post("NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": "d" * 64})
    post("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": "d" * 64})
    assert datapath.unpublish_calls == 0


def test_ports_are_closed_once_when_the_container_leaves(post, datapath, app):
    pools = make_ipam_network(post)
    publish(post, "e" * 64, pools, portmap(entry(48090, host_ip="192.0.2.2")))
    post("NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": "e" * 64})
    post("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": "e" * 64})
    assert datapath.published == {} and datapath.unpublish_calls == 1

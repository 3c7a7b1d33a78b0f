"""A port published on one node is published on every other node's address too (NodePort):
endpoint records carry the ports, the other nodes DNAT them to the remote container."""

import ipaddress
import json

from datapath import PortMapping
from datapath.abi import PROTO_TCP, PROTO_UDP
from driver.control.cluster.endpoints import ENDPOINTS

from .conftest import wait_for

WEB = {"app": "web"}
ADDRESS = {"a": "198.51.100.1", "b": "198.51.100.2", "c": "198.51.100.3"}


def _start(nodes, name, **settings):
    return nodes.start(name, node_address=ADDRESS[name], **settings)


def _ports(*mappings) -> dict:
    """A Join's port map: (protocol, host ip, host port, container port) each."""
    items = [
        {"Proto": proto, "HostIP": host_ip, "HostPort": host_port, "Port": port}
        for proto, host_ip, host_port, port in mappings
    ]
    return {"com.docker.network.portmap": items}


def _tag(owner, endpoint_id) -> str:
    return f"remote:{owner.plane.cluster.name}/{owner.plane.endpoint_info(endpoint_id).numeric_id}"


def _remote(node) -> dict:
    """What node publishes for other nodes' containers."""
    return {t: m for t, m in node.datapath.published.items() if t.startswith("remote:")}


def _on(node, owner, endpoint_id, *ports) -> dict:
    """owner's endpoint's ports (protocol, host port, container port) on node's address."""
    container = ipaddress.ip_address(owner.plane.endpoint_info(endpoint_id).ipv4)
    here = ipaddress.ip_address(ADDRESS[node.plane.cluster.name])
    mappings = [PortMapping(proto, here, host, container, port) for proto, host, port in ports]
    return {_tag(owner, endpoint_id): mappings}


def test_a_published_port_is_published_on_every_other_nodes_address(nodes, etcd):
    a, b, c = (_start(nodes, name) for name in "abc")
    # A TCP port covers loopback, which a's proxy listens on in this process: a rare one.
    options = _ports(
        (PROTO_TCP, "", 47080, 80),
        (PROTO_UDP, "0.0.0.0", 5353, 53),
        (PROTO_UDP, "127.0.0.1", 9000, 90),  # one address of a's: a's alone
    )
    web = a.endpoint(1, WEB, options)
    key = f"{ENDPOINTS}a/{a.plane.endpoint_info(web).numeric_id}"
    wait_for(lambda: key in etcd.keys(ENDPOINTS), 5, "a's endpoint in etcd")
    assert json.loads(etcd.keys(ENDPOINTS)[key])["ports"] == [
        {"proto": "tcp", "host_port": 47080, "container_port": 80},
        {"proto": "udp", "host_port": 5353, "container_port": 53},
    ]
    for node in (b, c):
        wanted = _on(node, a, web, (PROTO_TCP, 47080, 80), (PROTO_UDP, 5353, 53))
        wait_for(lambda n=node, w=wanted: _remote(n) == w, 5, "a's ports on the other nodes")
    assert _remote(a) == {}, "a node publishes its own containers' ports as local ones"

    a.remove(web)
    for node in (b, c):
        wait_for(lambda n=node: _remote(n) == {}, 5, "a's ports closed on the other nodes")
        assert node.datapath.published == {}


def test_a_local_container_keeps_its_port_and_the_remote_one_gets_it_when_it_goes(nodes):
    # UDP: two nodes in one process cannot both proxy a TCP port on loopback.
    a, b = _start(nodes, "a"), _start(nodes, "b")
    local = b.endpoint(1, WEB, _ports((PROTO_UDP, "", 8080, 80)))
    web = a.endpoint(2, WEB, _ports((PROTO_UDP, "", 8080, 80), (PROTO_UDP, "", 8081, 81)))
    wanted = _on(b, a, web, (PROTO_UDP, 8081, 81))
    wait_for(lambda: _remote(b) == wanted, 5, "a's free port on b, not the one b's has")
    assert _remote(a) == {}, "a's container has the port b's asks for on a"

    b.remove(local)
    wanted = _on(b, a, web, (PROTO_UDP, 8080, 80), (PROTO_UDP, 8081, 81))
    wait_for(lambda: _remote(b) == wanted, 5, "a's port on b once b's container went")
    # A local container that publishes the port later takes it back.
    b.endpoint(3, WEB, _ports((PROTO_UDP, "", 8080, 80)))
    assert _remote(b) == _on(b, a, web, (PROTO_UDP, 8081, 81))


def test_a_restarted_node_keeps_other_nodes_ports_and_drops_the_stale_ones(nodes):
    # UDP, as above.
    a, b = _start(nodes, "a"), _start(nodes, "b")
    kept = a.endpoint(1, WEB, _ports((PROTO_UDP, "", 8080, 80)))
    gone = a.endpoint(2, WEB, _ports((PROTO_UDP, "", 8081, 80)))
    wanted = {**_on(b, a, kept, (PROTO_UDP, 8080, 80)), **_on(b, a, gone, (PROTO_UDP, 8081, 80))}
    wait_for(lambda: _remote(b) == wanted, 5, "a's ports on b")
    stale = _tag(a, gone)

    datapath = nodes.stop("b").datapath
    a.remove(gone)
    b = _start(nodes, "b", datapath=datapath)
    wait_for(lambda: stale not in _remote(b), 5, "the port of a container gone meanwhile closed")
    assert _remote(b) == _on(b, a, kept, (PROTO_UDP, 8080, 80))
